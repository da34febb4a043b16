-- ngx.ipc.cluster.dial: how the agent's reader and writer reach the
-- Redis primary. With redis:// and rediss:// it is the URL's host; with
-- redis+sentinel:// the Sentinels are asked for it (SENTINEL
-- get-master-addr-by-name), in turn from the last one that answered, and
-- the server found must say it is the primary (ROLE) before the link uses
-- it. A failover is followed by dialing again: the reader and the writer
-- do after a connection error, a -READONLY reply, or a WAIT that falls
-- short while the Sentinels name another primary (writer.lua).
--
-- With rediss:// every connection (Sentinels included) is TLS, verified:
-- the CA is lua_ssl_trusted_certificate (lua-nginx-module's, http{}), the
-- name checked and sent as SNI is tls_name= or else the host dialed, and
-- tls_cert=/tls_key= (read by the master) make a client certificate.
--
-- Errors name hosts and ports only, never the user or the password, and
-- come with a kind for link:log's rate ("connect", "tls", "sentinel").

local ffi = require "ffi"
local resp = require "ngx.ipc.cluster.resp"

local C = ffi.C
local concat = table.concat
local math_min = math.min
local pcall = pcall
local str_gmatch = string.gmatch
local str_match = string.match
local tonumber = tonumber
local tostring = tostring
local type = type
local ngx_socket_tcp = ngx.socket.tcp


local SENTINEL_TIMEOUT_MS = 1000  -- per Sentinel asked
local SENTINEL_LIMITS = { bulk = 256, elements = 4 }
local ROLE_LIMITS = { bulk = 256, elements = 8 }

local T_PRIMARY = C.NGX_IPC_FFI_CLUSTER_PRIMARY

local _M = {}


-- The Sentinels of the URL, { { host, port }, ... } (validated by the
-- module at start).
function _M.sentinels(list)
    local out = {}
    for item in str_gmatch(list, "[^,]+") do
        local host, port = str_match(item, "^([^:]+):?(%d*)$")
        out[#out + 1] = { host = host, port = tonumber(port) or 26379 }
    end
    return out
end


-- The client certificate and key, parsed once per worker: cert, key, or
-- nil, err.
local function client_cert(cfg)
    if cfg.tls_cert == "" then
        return nil
    end

    if not cfg.tls_cert_obj then
        local ssl = require "ngx.ssl"
        local cert, err = ssl.parse_pem_cert(cfg.tls_cert)
        if not cert then
            return nil, nil, "bad tls_cert: " .. tostring(err)
        end
        local key
        key, err = ssl.parse_pem_priv_key(cfg.tls_key)
        if not key then
            return nil, nil, "bad tls_key: " .. tostring(err)
        end
        cfg.tls_cert_obj, cfg.tls_key_obj = cert, key
    end

    return cfg.tls_cert_obj, cfg.tls_key_obj
end


-- A connection to host:port, through TLS if the link uses it: a resp.lua
-- connection, or nil, err, kind.
function _M.open(cfg, host, port, timeout_ms)
    local where = host .. ":" .. port
    local sock = ngx_socket_tcp()
    sock:settimeouts(timeout_ms, timeout_ms, timeout_ms)

    local ok, err = sock:connect(host, port)
    if not ok then
        return nil, "cannot connect to " .. where .. ": " .. tostring(err),
               "connect"
    end

    if cfg.tls then
        local cert, key, cerr = client_cert(cfg)
        if cerr then
            sock:close()
            return nil, cerr, "tls"
        end
        if cert then
            ok, err = sock:setclientcert(cert, key)
            if not ok then
                sock:close()
                return nil, "client certificate refused: " .. tostring(err),
                       "tls"
            end
        end

        -- lua-resty-core before 0.1.32 asserts (raises) where a handshake
        -- that ended at once failed its verification (its issue #499): a
        -- refusal too, whose reason lua-nginx-module has logged
        local name = cfg.tls_name ~= "" and cfg.tls_name or host
        local done, sess, herr = pcall(sock.sslhandshake, sock, nil, name,
                                       true)
        ok, err = done and sess, done and herr
                                  or "certificate verification failed"
        if not ok then
            sock:close()
            return nil, "TLS with " .. where .. " (name \"" .. name
                        .. "\") failed: " .. tostring(err)
                        .. " (the CA is lua_ssl_trusted_certificate)", "tls"
        end
    end

    return resp.wrap(sock)
end


-- Asks the Sentinels for the primary of cfg.master: host, port, or nil,
-- err, kind. state.first: the Sentinel to ask first (the last that
-- answered), kept across calls.
function _M.ask_sentinels(cfg, state)
    local list = cfg.sentinel_list
    local n = #list
    local first = state.first or 1
    local why = {}

    for k = 0, n - 1 do
        local i = (first - 1 + k) % n + 1
        local s = list[i]
        local conn, err, kind = _M.open(cfg, s.host, s.port,
                                        math_min(cfg.timeout_ms,
                                                 SENTINEL_TIMEOUT_MS))
        if conn and cfg.sentinel_password ~= "" then
            conn, err = conn:login("", cfg.sentinel_password, 0, nil)
        end

        local res
        if conn then
            res, err = conn:command_limited(SENTINEL_LIMITS, "SENTINEL",
                                            "get-master-addr-by-name",
                                            cfg.master)
            conn:close()
        end

        local host = type(res) == "table" and res[1]
        local port = type(res) == "table" and tonumber(res[2])
        if type(host) == "string" and #host > 0 and #host <= 253
           and not str_match(host, "[%s%c,/]")
           and port and port >= 1 and port <= 65535 and port % 1 == 0
        then
            state.first = i
            return host, port
        end

        if kind == "tls" then
            return nil, err, kind
        end

        why[#why + 1] = kind and err    -- it names the Sentinel
                        or s.host .. ":" .. s.port .. " "
                           .. (res == resp.NULL and "does not know it"
                               or res and "answered no address"
                               or tostring(err))
    end

    return nil, "no Sentinel gave the primary of \"" .. cfg.master .. "\" ("
                .. concat(why, "; ") .. ")", "sentinel"
end


-- A connection to the primary, logged in and named `name`: conn, or nil,
-- err, kind. The primary's address goes to the zone (ipc_status's
-- "redis").
function _M.primary(link, name)
    local cfg = link.cfg
    local host, port = cfg.host, cfg.port
    local err, kind

    if cfg.sentinel_list then
        host, port, kind = _M.ask_sentinels(cfg, link.sentinel_state)
        if not host then
            return nil, port, kind
        end
    end

    local conn
    conn, err, kind = _M.open(cfg, host, port, cfg.timeout_ms)
    if not conn then
        return nil, err, kind
    end

    conn, err = conn:login(cfg.user, cfg.password, cfg.db, name)
    if not conn then
        return nil, err .. " (" .. host .. ":" .. port .. ")", "connect"
    end

    if cfg.sentinel_list then
        local res, rerr = conn:command_limited(ROLE_LIMITS, "ROLE")
        local role = type(res) == "table" and res[1]
        if role ~= "master" then
            conn:close()
            return nil, host .. ":" .. port .. ", named by the Sentinels, is "
                        .. "not the primary (ROLE: "
                        .. tostring(role or rerr) .. ")", "sentinel"
        end
    end

    conn.where = host .. ":" .. port
    link:set_text(T_PRIMARY, conn.where)
    return conn
end


-- Whether the Sentinels now name a primary other than conn's (false
-- without Sentinels, or when none answers).
function _M.moved(link, conn)
    local cfg = link.cfg
    if not cfg.sentinel_list then
        return false
    end

    local host, port = _M.ask_sentinels(cfg, link.sentinel_state)
    return host ~= nil and host .. ":" .. port ~= conn.where
end


return _M
