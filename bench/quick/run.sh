#!/usr/bin/env bash
# Quick figures between two nginx workers: 16-byte one-way stream rate and
# ping-pong round trip and ipc.call round trip (median, p99).
# Usage: bench/quick/run.sh [N]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
n=${1:-1000000}
port=18090
prefix=$(mktemp -d)
trap 'kill -QUIT "$(cat "$prefix/logs/nginx.pid" 2>/dev/null)" 2>/dev/null || true; sleep 0.5; rm -rf "$prefix"' EXIT
mkdir -p "$prefix/conf" "$prefix/logs"
sed -e "s#@MODULE@#$root/build/ngx_ipc_module.so#" -e "s#@PORT@#$port#" \
    "$root/bench/quick/nginx.conf" > "$prefix/conf/nginx.conf"
/usr/sbin/nginx -p "$prefix/" -c conf/nginx.conf
for _ in $(seq 50); do curl -fs "http://127.0.0.1:$port/pingpong?n=10" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fs --max-time 120 "http://127.0.0.1:$port/stream?n=$n"
curl -fs --max-time 120 "http://127.0.0.1:$port/pingpong?n=20000"
curl -fs --max-time 120 "http://127.0.0.1:$port/call?n=20000"
