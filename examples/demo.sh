#!/usr/bin/env bash
# Starts (or stops) the demo: examples/kv/nginx.conf with the module just
# built, on 127.0.0.1 only, in build/demo/. Usage: demo.sh start [PORT] | stop
# Another nginx: NGX_IPC_NGINX (its binary) and NGX_IPC_LUA_MODULES (the
# directory of its ndk and lua modules, or `none` when they are built in),
# as for the tests (t/conftest.py).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
nginx=${NGX_IPC_NGINX:-/usr/sbin/nginx}
prefix=$root/build/demo
pidfile=$prefix/logs/nginx.pid

stop() {
  [ -f "$pidfile" ] || return 0
  local pid
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -QUIT "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$pidfile"
  echo "demo stopped"
}

case "${1:-}" in
stop)
  stop
  ;;
start)
  port=${2:-8080}
  stop >/dev/null
  mkdir -p "$prefix/conf" "$prefix/logs"
  load=$("$root/scripts/load-modules.sh" "$root/build/ngx_ipc_module.so")
  sed -e "s#^@LOAD_MODULES@\$#$load#" -e "s#@PORT@#$port#" \
      -e "s#@WORKERS@#4#" "$root/examples/kv/nginx.conf" > "$prefix/conf/nginx.conf"
  "$nginx" -p "$prefix/" -c conf/nginx.conf
  url=http://127.0.0.1:$port
  for _ in $(seq 50); do curl -fs "$url/stats" >/dev/null 2>&1 && break; sleep 0.1; done
  curl -fs "$url/stats" >/dev/null || { echo "demo failed to start: $prefix/logs/error.log"; exit 1; }

  echo "ngx_ipc demo: nginx with 4 workers on $url (sharded counters over ipc.call)"
  echo
  for i in 1 2 3; do
    echo "\$ curl -i '$url/kv/apple?op=incr'"
    curl -si "$url/kv/apple?op=incr" | grep -E '^(X-|[0-9])' | tr -d '\r'
  done
  echo "\$ curl '$url/kv/apple'"
  curl -s "$url/kv/apple"
  echo "\$ curl '$url/purge'"
  curl -s "$url/purge"
  echo
  echo "Try the same key from many clients: every incr is counted exactly once."
  echo "Stats of one worker: curl $url/stats ; log: $prefix/logs/error.log"
  echo "Stop the demo: make demo-stop"
  ;;
*)
  echo "usage: $0 start [PORT] | stop" >&2
  exit 2
  ;;
esac
