#!/usr/bin/env bash
# Builds the Debian package libnginx-mod-http-ipc (debian/) for the nginx
# of the machine it runs on, into build/deb/: the .deb, its -dbgsym .deb,
# the .buildinfo and the .changes. `make deb` runs it.
#
#   scripts/deb.sh [OUTDIR]      default OUTDIR: build/deb
#
# Installs the build dependencies that are missing (install-deps.sh --deb),
# then runs dpkg-buildpackage -b in a copy of the source tree (everything
# but build/ and .git, committed or not) under build/deb-src/, so the tree
# itself gets no debian/ build files. Then lintian on the .changes, when
# lintian is installed: an error fails the build, warnings are printed.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$repo/build/deb}
work=$repo/build/deb-src
log() { echo "deb: $*"; }

"$repo/scripts/install-deps.sh" --deb

base_version=$(dpkg-parsechangelog -l "$repo/debian/changelog" -S Version)
source=$(dpkg-parsechangelog -l "$repo/debian/changelog" -S Source)
tree=$work/$source-${base_version%-*}

# The nginx ABI it is built for goes into the version (0.1.0+nginx1.22.1.7-1):
# a build for another nginx is another version, which apt installs over the
# old one instead of answering "already the newest version".
abi=$(sed -n 's/^nginx:abi=nginx-abi-//p' /usr/share/nginx/src/debian/libnginx-mod.abisubstvars)
[ -n "$abi" ] || { log "no nginx ABI in nginx-dev's libnginx-mod.abisubstvars"; exit 1; }
version=${base_version%-*}+nginx${abi//-/.}-${base_version##*-}

rm -rf --one-file-system "$work"
mkdir -p "$tree"
tar -C "$repo" --exclude=./build --exclude=./.git --exclude=__pycache__ \
  --exclude=.pytest_cache -cf - . | tar -C "$tree" -xf -
sed -i "1s/($base_version)/($version)/" "$tree/debian/changelog"

log "dpkg-buildpackage $source $version for $(dpkg --print-architecture)," \
  "$(dpkg-query -W -f='nginx-dev ${Version}' nginx-dev) (log: $work/build.log)"
(cd "$tree" && dpkg-buildpackage -b -us -uc) > "$work/build.log" 2>&1 || {
  tail -40 "$work/build.log"
  exit 1
}

changes=${source}_${version}_$(dpkg --print-architecture).changes
rm -rf --one-file-system "$out"
mkdir -p "$out"
# the files the .changes lists, and the .changes itself
sed -n '/^Files:/,/^[^ ]/s/^ [0-9a-f]\{32\} [0-9]* [^ ]* [^ ]* //p' \
  "$work/$changes" | while read -r f; do mv "$work/$f" "$out/"; done
mv "$work/$changes" "$out/"
ls -l "$out"

if command -v lintian > /dev/null; then
  log "lintian $changes"
  lintian --fail-on error "$out/$changes"
else
  log "lintian not installed: not checked"
fi
