# Owns: the Debian roots that scripts/trixie.sh and scripts/package-test.sh
# run in: one pristine debootstrap (minbase) per release, made once and
# copied for each root; the mounts a root needs while a run uses it; a
# command run inside it. Sourced, as root, with $repo set.
#
#   base_root DIST           make build/roots/DIST/base once (debootstrap)
#   fresh_root DIST DIR      DIR becomes a fresh copy of that base
#   ensure_root DIST DIR     the same, only when DIR holds no root yet
#   mount_root DIST DIR      /proc, /sys (read-only), /dev/shm and the
#                            release's shared apt cache; unmounted at exit;
#                            apt's sources: DIST, DIST-updates, DIST-security
#   unmount_root DIR         (also: what a killed run left mounted)
#   in_root DIR CMD...       CMD in DIR, with a clean environment
#   copy_source DIR          the source tree (committed or not, without
#                            build/ and .git) to DIR/src
#
# Every root gets /usr/sbin/policy-rc.d refusing to start services: a
# package's postinst must not start a daemon (nginx on port 80, redis) on
# the host's network from inside a root.

roots=${NGX_IPC_ROOTS_DIR:-$repo/build/roots}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
security_mirror=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
root_mounts=(proc sys dev/shm var/cache/apt/archives)
mounted_roots=()

unmount_root() {
  local dir=$1 i m
  for ((i = ${#root_mounts[@]} - 1; i >= 0; i--)); do
    m=$dir/${root_mounts[i]}
    if mountpoint -q "$m"; then
      umount "$m" 2>/dev/null || umount -l "$m"
    fi
  done
}

unmount_all_roots() {
  local dir
  for dir in "${mounted_roots[@]}"; do unmount_root "$dir"; done
}

# debootstrap into a side directory, renamed when whole: a run killed
# half-way leaves nothing that a later run would take for a root
base_root() {
  local dist=$1 dir=$roots/$1
  [ -x "$dir/base/bin/bash" ] && return 0
  command -v debootstrap > /dev/null || {
    echo "debroot: installing debootstrap"
    apt-get install -y -q --no-install-recommends debootstrap > /dev/null
  }
  echo "debroot: debootstrap $dist from $mirror into $dir/base"
  rm -rf --one-file-system "$dir/base.new"
  mkdir -p "$dir"
  debootstrap --variant=minbase "$dist" "$dir/base.new" "$mirror" \
    > "$dir/debootstrap.log" 2>&1 || {
    tail -20 "$dir/debootstrap.log"
    return 1
  }
  printf '#!/bin/sh\n# no service starts inside this root\nexit 101\n' \
    > "$dir/base.new/usr/sbin/policy-rc.d"
  chmod 755 "$dir/base.new/usr/sbin/policy-rc.d"
  mv "$dir/base.new" "$dir/base"
}

fresh_root() {
  local dist=$1 dir=$2
  base_root "$dist"
  unmount_root "$dir"
  rm -rf --one-file-system "$dir"
  mkdir -p "$(dirname "$dir")"
  cp -a "$roots/$dist/base" "$dir"
}

ensure_root() {
  [ -x "$2/bin/bash" ] || fresh_root "$1" "$2"
  # a root made before policy-rc.d was part of the base
  [ -x "$2/usr/sbin/policy-rc.d" ] || {
    printf '#!/bin/sh\n# no service starts inside this root\nexit 101\n' \
      > "$2/usr/sbin/policy-rc.d"
    chmod 755 "$2/usr/sbin/policy-rc.d"
  }
}

mount_root() {
  local dist=$1 dir=$2
  mounted_roots+=("$dir")
  trap unmount_all_roots EXIT
  cp /etc/resolv.conf "$dir/etc/resolv.conf"
  # what a Debian install uses: the release, its updates, its security fixes
  printf 'deb %s %s main\ndeb %s %s-updates main\ndeb %s %s-security main\n' \
    "$mirror" "$dist" "$mirror" "$dist" "$security_mirror" "$dist" \
    > "$dir/etc/apt/sources.list"
  mountpoint -q "$dir/proc" || mount -t proc proc "$dir/proc"
  mountpoint -q "$dir/sys" || mount -t sysfs -o ro sysfs "$dir/sys"
  mkdir -p "$dir/dev/shm"
  mountpoint -q "$dir/dev/shm" || mount -t tmpfs -o mode=1777,size=1g tmpfs "$dir/dev/shm"
  # the release's packages are downloaded once for all its roots
  mkdir -p "$roots/$dist/archives/partial" "$dir/var/cache/apt/archives"
  mountpoint -q "$dir/var/cache/apt/archives" ||
    mount --bind "$roots/$dist/archives" "$dir/var/cache/apt/archives"
}

in_root() {
  local dir=$1
  shift
  chroot "$dir" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root LANG=C.UTF-8 TERM=dumb DEBIAN_FRONTEND=noninteractive \
    NGX_IPC_REQUIRE_MODULE=1 PYTEST_ADDOPTS="${PYTEST_ADDOPTS:-}" "$@"
}

copy_source() {
  local dir=$1
  mkdir -p "$dir/src"
  find "$dir/src" -mindepth 1 -maxdepth 1 ! -name build -exec rm -rf {} +
  tar -C "$repo" --exclude=./build --exclude=./.git --exclude=__pycache__ \
    --exclude=.pytest_cache -cf - . | tar -C "$dir/src" -xf -
}
