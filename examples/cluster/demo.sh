#!/usr/bin/env bash
# Starts (or stops) the cluster demo: a redis-server and two nginx nodes
# (examples/cluster/nginx.conf, 2 workers each) linked by ipc_cluster, all on
# 127.0.0.1, under build/demo-cluster/. A purge sent to one node reaches every
# worker of both.
# Usage: demo.sh start [PORT1 PORT2 [REDIS_PORT]] | stop | redis-kill | redis-start
# Defaults: nodes on 8081 and 8082; Redis on 6390, or a free port if taken.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
prefix=$root/build/demo-cluster
module=${NGX_IPC_MODULE:-$root/build/ngx_ipc_module.so}
# another nginx: as for examples/demo.sh and the tests (t/conftest.py)
nginx=${NGX_IPC_NGINX:-/usr/sbin/nginx}
redis_pidfile=$prefix/redis/redis.pid

listening() {  # is something accepting on 127.0.0.1:$1 ?
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

stop_pid() {  # stop_pid PIDFILE SIGNAL NAME: signal, wait 10 s, then SIGKILL
  local pidfile=$1 sig=$2 name=$3 pid
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill "-$sig" "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "$name (pid $pid) did not exit on SIG$sig: killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$pidfile"
}

stop() {
  local any=
  for node in "$prefix"/node*; do
    [ -f "$node/logs/nginx.pid" ] || continue
    stop_pid "$node/logs/nginx.pid" QUIT "nginx $(basename "$node")"
    any=1
  done
  [ -f "$redis_pidfile" ] && any=1
  stop_pid "$redis_pidfile" TERM redis-server
  [ -z "$any" ] || echo "cluster demo stopped"
}

start_redis() {  # on the recorded port, with the same dir and AOF as before
  local redis_port
  redis_port=$(cat "$prefix/redis/port")
  /usr/bin/redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$prefix/redis" \
      --appendonly yes --appendfsync always --save "" --daemonize no \
      --logfile "$prefix/redis/redis.log" </dev/null >/dev/null 2>&1 &
  echo $! > "$redis_pidfile"
  for _ in $(seq 100); do
    [ "$(redis-cli -h 127.0.0.1 -p "$redis_port" ping 2>/dev/null)" = PONG ] && return 0
    kill -0 "$(cat "$redis_pidfile")" 2>/dev/null || break
    sleep 0.05
  done
  echo "redis-server failed to start: $prefix/redis/redis.log"
  return 1
}

status_has() {  # status_has URL KEY: every worker of that node purged KEY
  local body
  body=$(curl -fs "$1/status") || return 1
  [ "$(grep -c '^  worker ' <<<"$body")" -ge 2 ] || return 1
  ! grep '^  worker ' <<<"$body" | grep -vq "$2 "
}

case "${1:-}" in
stop)
  stop
  ;;
redis-kill)   # a Redis crash: SIGKILL by the recorded PID
  [ -f "$redis_pidfile" ] || { echo "no demo redis-server running"; exit 1; }
  kill -KILL "$(cat "$redis_pidfile")" 2>/dev/null || true
  rm -f "$redis_pidfile"
  echo "redis-server killed; cluster purges now wait in each node's queue"
  ;;
redis-start)  # the same Redis again: same port, dir and AOF
  [ -f "$prefix/redis/port" ] || { echo "start the demo first"; exit 1; }
  [ ! -f "$redis_pidfile" ] || { echo "redis-server already running"; exit 1; }
  start_redis
  echo "redis-server back on 127.0.0.1:$(cat "$prefix/redis/port")"
  ;;
start)
  port1=${2:-8081} port2=${3:-8082} redis_port=${4:-6390}
  [ -f "$module" ] || { echo "$module missing: run make"; exit 1; }
  stop >/dev/null
  if listening "$redis_port"; then
    [ -z "${4:-}" ] || { echo "port $redis_port is taken"; exit 1; }
    redis_port=$(free_port)
  fi
  for p in "$port1" "$port2"; do
    if listening "$p"; then echo "port $p is taken: demo.sh start PORT1 PORT2"; exit 1; fi
  done

  mkdir -p "$prefix/redis"
  echo "$redis_port" > "$prefix/redis/port"
  start_redis || { stop >/dev/null; exit 1; }

  load=$("$root/scripts/load-modules.sh" "$module")

  n=0
  for port in "$port1" "$port2"; do
    n=$((n + 1))
    node=$prefix/node$n
    mkdir -p "$node/conf" "$node/logs"
    sed -e "s#^@LOAD_MODULES@\$#$load#" -e "s#@PORT@#$port#" -e "s#@WORKERS@#2#" \
        -e "s#@REDIS_URL@#redis://127.0.0.1:$redis_port#" -e "s#@NODE@#node$n#" \
        "$root/examples/cluster/nginx.conf" > "$node/conf/nginx.conf"
    "$nginx" -p "$node/" -c conf/nginx.conf ||
      { echo "node$n failed to start: $node/logs/error.log"; stop >/dev/null; exit 1; }
  done

  url1=http://127.0.0.1:$port1 url2=http://127.0.0.1:$port2
  for url in "$url1" "$url2"; do
    for _ in $(seq 100); do
      curl -fs "$url/status" 2>/dev/null | grep -q 'connected=true' && break
      sleep 0.1
    done
    curl -fs "$url/status" | grep -q 'connected=true' ||
      { echo "$url is not linked to Redis (left running to look at:" \
             "$prefix/node*/logs/error.log; stop with $0 stop)"; exit 1; }
  done

  echo "ngx_ipc cluster demo: redis-server on 127.0.0.1:$redis_port,"
  echo "nodes node1 on $url1 and node2 on $url2, 2 workers each"
  echo
  echo "\$ curl '$url1/purge?key=apple'"
  curl -s "$url1/purge?key=apple"
  for _ in $(seq 50); do
    status_has "$url1" apple && status_has "$url2" apple && break
    sleep 0.1
  done
  echo "\$ curl '$url1/status'"
  curl -s "$url1/status"
  echo "\$ curl '$url2/status'"
  curl -s "$url2/status"
  echo
  echo "Every worker of both nodes purged apple; node2's workers got it through Redis"
  echo "(no pid: the sender is on another node). Try:"
  echo "  curl '$url2/purge?key=pear'; curl '$url1/status'"
  echo "A Redis crash loses nothing:"
  echo "  $0 redis-kill; curl '$url1/purge?key=plum'   # queued"
  echo "  $0 redis-start; curl '$url2/status'          # plum arrived"
  echo "Logs: $prefix/node1/logs/error.log, $prefix/node2/logs/error.log"
  echo "Stop the demo: examples/cluster/demo.sh stop"
  ;;
*)
  echo "usage: $0 start [PORT1 PORT2 [REDIS_PORT]] | stop | redis-kill | redis-start" >&2
  exit 2
  ;;
esac
