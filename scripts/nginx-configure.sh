#!/usr/bin/env bash
# Runs nginx's configure with this module as a dynamic module, in a copy of
# an nginx source tree (configure writes objs/ into the tree it runs in).
#
#   scripts/nginx-configure.sh SRC DEST
#
# The configure flags must be those of the nginx that will load the module
# (or both built --with-compat). The first of these that applies:
#   NGX_CONF_FLAGS    set: these words ("--with-compat --with-threads")
#   SRC/conf_flags    Debian's nginx-dev: its bash array NGX_CONF_FLAGS
#   NGX_IPC_NGINX     set: the flags `$NGX_IPC_NGINX -V` shows, but its own
#                     --add-module / --add-dynamic-module (lua, ndk, ...)
#   otherwise         --with-compat
set -euo pipefail

src=$1 dest=$2
repo=$(cd "$(dirname "$0")/.." && pwd)

flags=()
if [ -n "${NGX_CONF_FLAGS:-}" ]; then
  eval "flags=($NGX_CONF_FLAGS)"
  from="NGX_CONF_FLAGS"
elif [ -f "$src/conf_flags" ]; then
  NGX_CONF_FLAGS=()
  source "$src/conf_flags"
  flags=("${NGX_CONF_FLAGS[@]}")
  from="$src/conf_flags"
elif [ -n "${NGX_IPC_NGINX:-}" ]; then
  args=$("$NGX_IPC_NGINX" -V 2>&1 | sed -n 's/^configure arguments: //p')
  eval "all=($args)"
  for f in ${all[@]+"${all[@]}"}; do
    case "$f" in
    --add-module=* | --add-dynamic-module=*) ;;
    *) flags+=("$f") ;;
    esac
  done
  from="$NGX_IPC_NGINX -V"
else
  flags=(--with-compat)
  from="default"
fi

if [ -x "$src/configure" ]; then
  configure=./configure             # a release tarball
elif [ -f "$src/auto/configure" ]; then
  configure=auto/configure          # a clone of github.com/nginx/nginx
else
  echo "$src: no nginx source tree (no configure, no auto/configure)" >&2
  exit 1
fi

rm -rf "$dest"
mkdir -p "$(dirname "$dest")"
cp -r "$src/." "$dest"
cd "$dest"
echo "configure flags from $from: ${flags[*]+${flags[*]}}"
"$configure" ${flags[@]+"${flags[@]}"} --add-dynamic-module="$repo"
