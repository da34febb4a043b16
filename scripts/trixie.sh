#!/usr/bin/env bash
# The second platform: a Debian 13 (trixie) root under build/trixie/, made
# with debootstrap from deb.debian.org, where the module is built against
# trixie's nginx-dev and tested with trixie's nginx, lua module and
# resty.core (the packages of `scripts/install-deps.sh --nginx-tests`).
#
#   scripts/trixie.sh test         copy the source in, make test-nginx there
#   scripts/trixie.sh bench        copy the source in, make bench there (table only)
#   scripts/trixie.sh run CMD...   copy the source in, run CMD in /src there
#   scripts/trixie.sh versions     the nginx, lua module and LuaJIT it tests
#   scripts/trixie.sh umount       unmount what a killed run left mounted
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
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
mounts=(proc sys dev/shm)

if [ "$(id -u)" -ne 0 ]; then
  exec sudo --preserve-env=PYTEST_ADDOPTS,NGX_IPC_TRIXIE_DIR,DEBIAN_MIRROR "$0" "$@"
fi

log() { echo "trixie: $*"; }

unmount_all() {
  local i m
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
    m=$root/${mounts[i]}
    if mountpoint -q "$m"; then
      umount "$m" 2>/dev/null || umount -l "$m"
    fi
  done
}

mount_all() {
  trap unmount_all EXIT
  mountpoint -q "$root/proc" || mount -t proc proc "$root/proc"
  mountpoint -q "$root/sys" || mount -t sysfs -o ro sysfs "$root/sys"
  mkdir -p "$root/dev/shm"
  mountpoint -q "$root/dev/shm" || mount -t tmpfs -o mode=1777,size=1g tmpfs "$root/dev/shm"
}

# debootstrap into a side directory, renamed when whole: a run killed
# half-way leaves nothing that a later run would take for a root
make_root() {
  [ -x "$root/bin/bash" ] && return 0
  command -v debootstrap >/dev/null || {
    log "installing debootstrap"
    apt-get install -y -q --no-install-recommends debootstrap >/dev/null
  }
  log "debootstrap trixie from $mirror into $root"
  rm -rf --one-file-system "$base/root.new"
  mkdir -p "$base"
  debootstrap --variant=minbase trixie "$base/root.new" "$mirror" \
    > "$base/debootstrap.log" 2>&1 || {
    tail -20 "$base/debootstrap.log"
    exit 1
  }
  mv "$base/root.new" "$root"
}

# the source tree as it is (committed or not), without build outputs
copy_source() {
  mkdir -p "$root/src"
  find "$root/src" -mindepth 1 -maxdepth 1 ! -name build -exec rm -rf {} +
  tar -C "$repo" --exclude=./build --exclude=./.git --exclude=__pycache__ \
    --exclude=.pytest_cache -cf - . | tar -C "$root/src" -xf -
}

in_root() {
  chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root LANG=C.UTF-8 TERM=dumb DEBIAN_FRONTEND=noninteractive \
    NGX_IPC_REQUIRE_MODULE=1 PYTEST_ADDOPTS="${PYTEST_ADDOPTS:-}" "$@"
}

prepare() {
  make_root
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  copy_source
  mount_all
  log "packages (apt log: $base/apt.log)"
  in_root /src/scripts/install-deps.sh --nginx-tests > "$base/apt.log" 2>&1 || {
    tail -30 "$base/apt.log"
    exit 1
  }
}

versions() {
  log "testing these Debian 13 packages:"
  in_root dpkg-query -W -f='${Package} ${Version}\n' nginx libnginx-mod-http-lua \
    libnginx-mod-http-ndk lua-resty-core lua-resty-lrucache libluajit-5.1-2
}

case "${1:-}" in
test)
  prepare
  versions
  in_root make -C /src test-nginx
  ;;
bench)
  # prints the table; docs/ (BENCHMARKS.md, the chart) stays Debian 12's
  prepare
  versions
  in_root make -C /src build/ngx_ipc_module.so
  in_root sh -c 'cd /src && exec /usr/bin/python3 bench/run.py --no-doc'
  ;;
run)
  shift
  prepare
  in_root sh -c 'cd /src && exec "$@"' sh "$@"
  ;;
versions)
  [ -x "$root/bin/bash" ] || { log "no root yet at $root"; exit 1; }
  versions
  ;;
umount)
  unmount_all
  ;;
*)
  sed -n 's/^#   //p' "$0" >&2
  exit 2
  ;;
esac
