#!/usr/bin/env bash
# Prints the load_module lines for a configuration template's @LOAD_MODULES@
# line, as one line with literal "\n" between them (for sed): the ndk and
# lua modules from NGX_IPC_LUA_MODULES (a directory, default
# /usr/lib/nginx/modules, or `none` when they are built into nginx, as in
# OpenResty), then the ngx_ipc module given as $1. The demos use it; the
# tests have the same rule in t/harness.py.
set -euo pipefail

lua_modules=${NGX_IPC_LUA_MODULES:-/usr/lib/nginx/modules}
load=""
if [ "$lua_modules" != none ]; then
  if [ -f "$lua_modules/ndk_http_module.so" ]; then
    load+="load_module $lua_modules/ndk_http_module.so;\\n"
  fi
  load+="load_module $lua_modules/ngx_http_lua_module.so;\\n"
fi
printf '%s\n' "${load}load_module $1;"
