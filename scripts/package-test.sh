#!/usr/bin/env bash
# The package as a user gets it: libnginx-mod-http-ipc built for one
# Debian release, installed with apt-get into a clean root of that release,
# used by its stock nginx, tested by t/, then purged.
#
#   scripts/package-test.sh DIST     DIST: bookworm (Debian 12) or trixie (13)
#
# 1. `make deb`: on this machine when it runs DIST, otherwise in a build
#    root build/roots/DIST/build (kept; only missing packages are added).
# 2. A fresh copy of the release's debootstrap (build/roots/DIST/installed):
#    `apt-get install ./libnginx-mod-http-ipc_*.deb` pulls nginx, the lua
#    module and resty.core from deb.debian.org, as on a user's machine.
# 3. `nginx -t` with the stock /etc/nginx/nginx.conf (modules-enabled
#    loads ndk, lua, then ipc); that nginx started with one site on a free
#    127.0.0.1 port (the default site, on port 80, removed): a broadcast
#    must reach every worker the master started.
# 4. t/ against /usr/lib/nginx/modules/ngx_ipc_module.so, with t/'s tools
#    (install-deps.sh --installed-tests) added after the checks above.
# 5. `apt-get purge`: the module and its modules-enabled link gone, and
#    nginx -t and a start still pass.
#
# Needs root (sudo otherwise). Processes it starts are stopped by PID.
# PYTEST_ADDOPTS passes through to t/.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
dist=${1:-}
case "$dist" in
bookworm | trixie) ;;
*)
  sed -n 's/^#   //p' "$0" >&2
  exit 2
  ;;
esac

if [ "$(id -u)" -ne 0 ]; then
  exec sudo --preserve-env=PYTEST_ADDOPTS,NGX_IPC_ROOTS_DIR,DEBIAN_MIRROR,DEBIAN_SECURITY_MIRROR "$0" "$@"
fi

# shellcheck source=scripts/debroot-lib.sh
. "$repo/scripts/debroot-lib.sh"
# shellcheck source=scripts/package-checks.sh
. "$repo/scripts/package-checks.sh"

log() { echo "package-test $dist: $*"; }
step() { echo "package-test $dist: # $*"; }

# 1. the package
host_dist=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
if [ "$host_dist" = "$dist" ]; then
  debdir=$repo/build/deb
  log "make deb on this machine"
  make -C "$repo" --no-print-directory deb
else
  build=$roots/$dist/build
  debdir=$build/src/build/deb
  ensure_root "$dist" "$build"
  copy_source "$build"
  mount_root "$dist" "$build"
  log "make deb in $build (log: $roots/$dist/build.log)"
  in_root "$build" sh -c 'apt-get update -q && apt-get upgrade -y -q &&
    /src/scripts/install-deps.sh --deb && make -C /src deb' \
    > "$roots/$dist/build.log" 2>&1 || {
    tail -40 "$roots/$dist/build.log"
    exit 1
  }
  grep -A20 '^deb: lintian' "$roots/$dist/build.log" || true
  unmount_root "$build"
fi
deb=$(find "$debdir" -maxdepth 1 -name 'libnginx-mod-http-ipc_*.deb' | sort | tail -1)
[ -n "$deb" ] || { log "no package in $debdir"; exit 1; }

# 2. a clean root, and the package installed the way a user would
inst=$roots/$dist/installed
log "a fresh $dist root in $inst"
fresh_root "$dist" "$inst"
mount_root "$dist" "$inst"
trap 'stop_nginx; unmount_all_roots' EXIT
copy_source "$inst"   # t/ and install-deps.sh; nothing is installed from it
mkdir -p "$inst/tmp/pkg"
cp "$deb" "$inst/tmp/pkg/"
in_root "$inst" apt-get update -q > "$roots/$dist/apt.log" 2>&1
step "apt-get install ./$(basename "$deb")"
in_root "$inst" sh -c "cd /tmp/pkg && apt-get install -y -q ./$(basename "$deb")" \
  >> "$roots/$dist/apt.log" 2>&1 || {
  tail -30 "$roots/$dist/apt.log"
  exit 1
}
sed -n '/^The following NEW packages/,/^[0-9]* upgraded/p' "$roots/$dist/apt.log" | sed 's/^/  /'
in_root "$inst" dpkg-query -W -f='  ${Package} ${Version}\n' nginx-common \
  libnginx-mod-http-lua lua-resty-core libnginx-mod-http-ipc

# 3. the stock nginx
check_stock_nginx "$inst"

# 4. t/ against the installed module
log "t/'s tools (apt log: $roots/$dist/apt.log)"
in_root "$inst" /src/scripts/install-deps.sh --installed-tests \
  >> "$roots/$dist/apt.log" 2>&1 || {
  tail -30 "$roots/$dist/apt.log"
  exit 1
}
step "t/ against /usr/lib/nginx/modules/ngx_ipc_module.so"
in_root "$inst" sh -c 'cd /src && exec env \
  NGX_IPC_MODULE=/usr/lib/nginx/modules/ngx_ipc_module.so \
  /usr/bin/python3 -m pytest -q -p no:cacheprovider t/'

# 5. purged, nginx still works
check_purge "$inst"
log "passed"
