# Owns: the checks of scripts/package-test.sh on a root where the package
# is installed: the stock nginx loads the module and a broadcast reaches
# every worker; after a purge the module is gone and nginx still starts.
# Sourced; needs in_root (debroot-lib.sh), log and step. Every wait is a
# bounded poll; the nginx it starts is stopped by its master's PID.

nginx_master=""
smoke_port=""

free_port() {
  /usr/bin/python3 -c 'import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# curl from this machine (the root shares its network): body on stdout
get() { curl -sS --max-time 5 "http://127.0.0.1:$smoke_port$1"; }

# start the root's nginx as installed (it daemonizes; pid /run/nginx.pid)
start_nginx() {
  local dir=$1 i
  rm -f "$dir/run/nginx.pid"
  in_root "$dir" nginx
  for ((i = 0; i < 100; i++)); do
    [ -s "$dir/run/nginx.pid" ] && break
    sleep 0.1
  done
  nginx_master=$(cat "$dir/run/nginx.pid" 2> /dev/null || true)
  [ -n "$nginx_master" ] || { log "nginx wrote no pid file"; return 1; }
  for ((i = 0; i < 100; i++)); do
    get /ping > /dev/null 2>&1 && return 0
    sleep 0.1
  done
  log "nginx does not answer on 127.0.0.1:$smoke_port"
  tail -20 "$dir/var/log/nginx/error.log"
  return 1
}

# SIGQUIT to the master we started, SIGKILL to it and its workers after 10 s
stop_nginx() {
  [ -n "$nginx_master" ] || return 0
  local pid=$nginx_master i workers
  nginx_master=""
  workers=$(ps -o pid= --ppid "$pid" 2> /dev/null || true)
  kill -QUIT "$pid" 2> /dev/null || return 0
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2> /dev/null || return 0
    sleep 0.1
  done
  log "nginx $pid did not quit within 10 s: SIGKILL"
  kill -KILL "$pid" $workers 2> /dev/null || true
}

workers_of() { ps -o pid= --ppid "$1" | tr -d ' ' | sort -n | tr '\n' ' '; }

check_stock_nginx() {
  local dir=$1 nonce want seen i
  step "ls /etc/nginx/modules-enabled/"
  ls -l "$dir/etc/nginx/modules-enabled/" | sed -n 's/^.* \([0-9]*-mod-.*\)$/  \1/p'
  [ -L "$dir/etc/nginx/modules-enabled/60-mod-http-ipc.conf" ] ||
    { log "60-mod-http-ipc.conf is not enabled"; return 1; }
  step "nginx -t   (the stock /etc/nginx/nginx.conf)"
  in_root "$dir" nginx -t 2>&1 | sed 's/^/  /'

  # one site on 127.0.0.1 instead of the default one on port 80
  smoke_port=$(free_port)
  rm -f "$dir/etc/nginx/sites-enabled/default"
  sed "s/@PORT@/$smoke_port/" > "$dir/etc/nginx/conf.d/ipc-smoke.conf" <<'EOF'
# every worker records the broadcasts it receives; /seen lists who got one
lua_shared_dict ipc_smoke 1m;
init_worker_by_lua_block {
    require("ngx.ipc").receive("hello", function(data)
        ngx.shared.ipc_smoke:set(data .. " " .. ngx.worker.pid(), true)
    end)
}
server {
    listen 127.0.0.1:@PORT@;
    location = /ping { return 200 "pong\n"; }
    location = /broadcast {
        content_by_lua_block {
            local ok, err = require("ngx.ipc").broadcast("hello", ngx.var.arg_nonce)
            ngx.say(ok and "sent" or ("refused: " .. err))
        }
    }
    location = /seen {
        content_by_lua_block {
            local pids = {}
            for _, key in ipairs(ngx.shared.ipc_smoke:get_keys(0)) do
                local nonce, pid = key:match("^(%S+) (%d+)$")
                if nonce == ngx.var.arg_nonce then pids[#pids + 1] = tonumber(pid) end
            end
            table.sort(pids)
            ngx.say(table.concat(pids, " "))
        }
    }
}
EOF
  step "nginx -t && nginx   (with conf.d/ipc-smoke.conf on 127.0.0.1:$smoke_port)"
  in_root "$dir" nginx -t 2>&1 | sed 's/^/  /'
  start_nginx "$dir"
  want=$(workers_of "$nginx_master")
  log "master $nginx_master, workers: $want"
  nonce=n$RANDOM$RANDOM
  step "curl 127.0.0.1:$smoke_port/broadcast?nonce=$nonce"
  get "/broadcast?nonce=$nonce" | sed 's/^/  /'
  for ((i = 0; i < 100; i++)); do
    seen=$(get "/seen?nonce=$nonce" | tr '\n' ' ' || true)
    [ "$seen" = "$want" ] && break
    sleep 0.1
  done
  log "the workers that received it: $seen"
  [ "$seen" = "$want" ] || { log "not every worker ($want) received it"; return 1; }
  [ -f "$dir/var/log/nginx/error.log" ] || { log "no error.log"; return 1; }
  if grep -E '\[(alert|crit|emerg)\]' "$dir/var/log/nginx/error.log"; then
    log "bad lines in error.log"
    return 1
  fi
  stop_nginx
}

check_purge() {
  local dir=$1
  step "apt-get purge -y libnginx-mod-http-ipc"
  in_root "$dir" apt-get purge -y -q libnginx-mod-http-ipc 2>&1 | grep -E '^(Removing|Purging)' |
    sed 's/^/  /'
  if [ -e "$dir/usr/lib/nginx/modules/ngx_ipc_module.so" ] ||
    [ -L "$dir/etc/nginx/modules-enabled/60-mod-http-ipc.conf" ] ||
    [ -L "$dir/etc/nginx/modules-enabled/60-mod-http-ipc.conf.removed" ]; then
    log "the purge left the module or its link behind"
    return 1
  fi
  # the site's Lua used ngx.ipc: a user drops it with the module
  rm -f "$dir/etc/nginx/conf.d/ipc-smoke.conf"
  sed "s/@PORT@/$smoke_port/" > "$dir/etc/nginx/conf.d/plain.conf" <<'EOF'
server {
    listen 127.0.0.1:@PORT@;
    location = /ping { return 200 "pong\n"; }
}
EOF
  step "nginx -t && nginx   (after the purge)"
  in_root "$dir" nginx -t 2>&1 | sed 's/^/  /'
  start_nginx "$dir"
  log "curl /ping: $(get /ping)"
  stop_nginx
}
