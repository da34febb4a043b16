#!/bin/sh
# Test helper: render a baseline config into a temp prefix and start nginx.
# usage: render_test.sh <baseline-dir-name> <prefix> <port> <workers>
# prints the master PID.
B=$(cd "$(dirname "$0")" && pwd)
name=$1 prefix=$2 port=$3 workers=$4
mkdir -p "$prefix/conf" "$prefix/logs"
sed -e "s|@PORT@|$port|g" -e "s|@WORKERS@|$workers|g" -e "s|@PREFIX@|$prefix|g" \
    -e "s|@BASELINES@|$B|g" -e "s|@MODULE@|/nonexistent|g" \
    "$B/$name/nginx.conf" > "$prefix/conf/nginx.conf"
/usr/sbin/nginx -p "$prefix/" -c conf/nginx.conf \
    -g "daemon off; master_process on; pid logs/nginx.pid; error_log logs/error.log notice;" \
    > "$prefix/logs/stdout" 2>&1 &
echo $!
