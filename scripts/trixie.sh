#!/usr/bin/env bash
# The second platform: a Debian 13 (trixie) root under build/trixie/, a
# copy of the debootstrap of scripts/debroot-lib.sh, where the module is built against
# trixie's nginx-dev and tested with trixie's nginx, lua module and
# resty.core (the packages of `scripts/install-deps.sh --nginx-tests`).
#
#   scripts/trixie.sh test         copy the source in, make test-nginx there
#   scripts/trixie.sh bench        copy the source in, make bench there (table only)
#   scripts/trixie.sh run CMD...   copy the source in, run CMD in /src there
#   scripts/trixie.sh versions     the nginx, lua module and LuaJIT it tests
#   scripts/trixie.sh umount       unmount what a killed run left mounted
#                                  (in build/roots/ too)
#
# Needs root (sudo otherwise). The root is made once and kept: a later run
# only tops up missing packages and copies the source (everything but
# build/ and .git) to /src in it. The module is built in /src/build there.
# /proc, /sys (read-only) and /dev/shm are mounted in the root for the run
# and unmounted when it ends, however it ends. PYTEST_ADDOPTS passes through
# (e.g. PYTEST_ADDOPTS="-k kv" scripts/trixie.sh test).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
base=${NGX_IPC_TRIXIE_DIR:-$repo/build/trixie}
root=$base/root

if [ "$(id -u)" -ne 0 ]; then
  exec sudo --preserve-env=PYTEST_ADDOPTS,NGX_IPC_TRIXIE_DIR,NGX_IPC_ROOTS_DIR,DEBIAN_MIRROR,DEBIAN_SECURITY_MIRROR \
    "$0" "$@"
fi

# shellcheck source=scripts/debroot-lib.sh
. "$repo/scripts/debroot-lib.sh"

log() { echo "trixie: $*"; }

prepare() {
  ensure_root trixie "$root"
  copy_source "$root"
  mount_root trixie "$root"
  log "packages (apt log: $base/apt.log)"
  in_root "$root" /src/scripts/install-deps.sh --nginx-tests > "$base/apt.log" 2>&1 || {
    tail -30 "$base/apt.log"
    exit 1
  }
}

versions() {
  log "testing these Debian 13 packages:"
  in_root "$root" dpkg-query -W -f='${Package} ${Version}\n' nginx libnginx-mod-http-lua \
    libnginx-mod-http-ndk lua-resty-core lua-resty-lrucache libluajit-5.1-2
}

case "${1:-}" in
test)
  prepare
  versions
  in_root "$root" make -C /src test-nginx
  ;;
bench)
  # prints the table; docs/ (BENCHMARKS.md, the chart) stays Debian 12's
  prepare
  versions
  in_root "$root" make -C /src build/ngx_ipc_module.so
  in_root "$root" sh -c 'cd /src && exec /usr/bin/python3 bench/run.py --no-doc'
  ;;
run)
  shift
  prepare
  in_root "$root" sh -c 'cd /src && exec "$@"' sh "$@"
  ;;
versions)
  [ -x "$root/bin/bash" ] || { log "no root yet at $root"; exit 1; }
  versions
  ;;
umount)
  unmount_root "$root"
  for dir in "${NGX_IPC_ROOTS_DIR:-$repo/build/roots}"/*/*/; do unmount_root "${dir%/}"; done
  ;;
*)
  sed -n 's/^#   //p' "$0" >&2
  exit 2
  ;;
esac
