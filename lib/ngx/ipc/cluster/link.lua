-- ngx.ipc.cluster.link: the cluster link of this worker, one object: the
-- node's settings (from the ipc_cluster directive), the zone's counters
-- and texts, its log lines at a bounded rate, and what the agent's reader
-- and writer share (whether the agent runs, delivery to this node's
-- workers, gap reports).

local ffi = require "ffi"
local dial = require "ngx.ipc.cluster.dial"
local errors = require "ngx.ipc.errors"
local limiter = require "ngx.ipc.limiter"

local C = ffi.C
local concat = table.concat
local ffi_new = ffi.new
local ffi_string = ffi.string
local math_floor = math.floor
local math_max = math.max
local math_min = math.min
local setmetatable = setmetatable
local str_gsub = string.gsub
local tonumber = tonumber
local tostring = tostring
local ngx = ngx
local ngx_log = ngx.log
local ngx_ERR = ngx.ERR
local ngx_WARN = ngx.WARN
local ngx_sleep = ngx.sleep
local worker_exiting = ngx.worker.exiting


local LOG_PERIOD = 10           -- seconds between two lines of one kind
local READ_BUDGET = 64 * 1024 * 1024   -- bytes an XREAD may bring, at most
local ENTRY_SLACK = 128 * 1024  -- an entry's bytes beyond 2 max_message:
                                -- a last name (64 KiB) and 1024 headers
local TIMEOUT_MS = 2000         -- socket timeouts
local GAP_NAME = "ipc:cluster_gap"  -- the user's hook
local IN_NAME = "ipc:cluster:in"    -- the local message that carries an
                                    -- entry of another node

local _M = { GAP_NAME = GAP_NAME, IN_NAME = IN_NAME }
local mt = { __index = _M }

local text_buf = ffi_new("char[?]", C.NGX_IPC_FFI_CLUSTER_TEXT_MAX)
local link_state = ffi_new("ngx_ipc_cluster_link_t")


-- The link of this worker, or nil without ipc_cluster. api: what ngx.ipc
-- lends (broadcast_local(name, data) -> true, or nil and an errors code;
-- new_sema()).
function _M.new(api)
    local info = ffi_new("ngx_ipc_cluster_info_t")
    if C.ngx_ipc_ffi_cluster_info(info) ~= errors.OK then
        return nil
    end

    local cfg = {
        host = ffi_string(info.host, info.host_len),
        port = info.port,
        db = info.db,
        user = ffi_string(info.user, info.user_len),
        password = ffi_string(info.password, info.password_len),
        stream = ffi_string(info.stream, info.stream_len),
        node = ffi_string(info.node, info.node_len),
        maxlen = tonumber(info.maxlen),
        max_message = tonumber(info.max_message),
        epoch = (str_gsub(tostring(info.epoch), "ULL$", "")),
        secret = info.secret ~= 0,
        timeout_ms = TIMEOUT_MS,
        where = ffi_string(info.where, info.where_len),
        tls = info.tls ~= 0,
        replicas = info.replicas,
        master = ffi_string(info.master, info.master_len),
        sentinel_password = ffi_string(info.sentinel_password,
                                       info.sentinel_password_len),
        tls_name = ffi_string(info.tls_name, info.tls_name_len),
        tls_cert = ffi_string(info.tls_cert, info.tls_cert_len),
        tls_key = ffi_string(info.tls_key, info.tls_key_len),
    }
    if info.sentinels_len > 0 then
        cfg.sentinel_list = dial.sentinels(ffi_string(info.sentinels,
                                                      info.sentinels_len))
    end
    cfg.entry_bytes = 2 * cfg.max_message + ENTRY_SLACK
    cfg.read_count = math_min(512, math_max(1, math_floor(READ_BUDGET
                                                       / cfg.entry_bytes)))
    cfg.nodes_key = cfg.stream .. ":nodes"
    cfg.client_name = "ngx_ipc:" .. str_gsub(cfg.node, "[^%w%.%-_:]", "_")
                      .. ":"

    return setmetatable({
        cfg = cfg,
        api = api,
        counters = C.ngx_ipc_ffi_cluster_counters(),
        agent = false,           -- this worker runs the agent's threads
        sentinel_state = {},     -- dial.lua's: the Sentinel to ask first
        lines = limiter.new(LOG_PERIOD, 1),  -- a line per kind per period
    }, mt)
end


-- Whether the agent's threads should go on.
function _M.active(self)
    return self.agent and not worker_exiting()
end


function _M.count(self, which, n)
    C.ngx_ipc_ffi_cluster_count(which, n or 1)
end


function _M.gauge(self, which, v)
    C.ngx_ipc_ffi_cluster_gauge(which, v)
end


function _M.get_text(self, which)
    local n = C.ngx_ipc_ffi_cluster_get_text(which, text_buf,
                                             C.NGX_IPC_FFI_CLUSTER_TEXT_MAX)
    if n <= 0 then
        return ""
    end

    return ffi_string(text_buf, n)
end


function _M.set_text(self, which, s)
    C.ngx_ipc_ffi_cluster_set_text(which, s, #s)
end


-- The agent made a connection to Redis (its reader or its writer): the
-- zone notes when, and that the last error, if any, came before it.
function _M.connected(self)
    C.ngx_ipc_ffi_cluster_connected()
end


-- The last error and the last connection, as ipc.cluster() shows them:
-- the error's text (nil: none), when it was set and when the agent last
-- connected (unix seconds, with milliseconds; nil: not yet), and whether
-- the link is up again since that error (it is then history).
function _M.link_state(self)
    if C.ngx_ipc_ffi_cluster_link(link_state, text_buf,
                                  C.NGX_IPC_FFI_CLUSTER_TEXT_MAX) ~= errors.OK
    then
        return nil, nil, false, nil
    end

    local s = link_state
    local err = s.error_len > 0 and ffi_string(text_buf, s.error_len) or nil
    local err_at = s.error_ms ~= 0 and tonumber(s.error_ms) / 1000 or nil
    local conn_at = s.connect_ms ~= 0 and tonumber(s.connect_ms) / 1000 or nil
    return err, err and err_at, err ~= nil and s.error_old ~= 0, conn_at
end


-- A line logged at most once per LOG_PERIOD per kind (a small, fixed set
-- of kinds: limiter.lua), with a count of the ones not logged.
function _M.log(self, level, kind, ...)
    local ok, skipped = self.lines:allow(kind)
    if not ok then
        return
    end

    local text = concat({ ... })
    if skipped > 0 then
        ngx_log(level, "ngx_ipc cluster: ", text, " (", skipped,
                " more since the last such line)")
    else
        ngx_log(level, "ngx_ipc cluster: ", text)
    end
end


-- A failure of the link: counted, kept as the last error, logged (at most
-- one line per LOG_PERIOD of each kind: "reader", "writer", and dial.lua's
-- "connect", "tls" and "sentinel", which the reader and writer share).
function _M.fail(self, kind, msg)
    self:count(C.NGX_IPC_FFI_CLUSTER_ERRORS)
    self:set_text(C.NGX_IPC_FFI_CLUSTER_LAST_ERROR, msg)
    self:log(ngx_ERR, kind, msg, " (", self.cfg.where, ")")
end


-- A connection to the primary for the agent's reader or writer (`role`):
-- conn, or nil after logging why (dial.lua).
function _M.dial(self, role)
    local conn, err, kind = dial.primary(self, self.cfg.client_name .. role)
    if not conn then
        self:fail(kind or role, err)
        return nil
    end
    return conn
end


-- An entry skipped: counted by kind ("malformed" or "unauthenticated"),
-- logged at a bounded rate.
function _M.skip(self, kind, id, why)
    self:count(kind == "unauthenticated"
               and C.NGX_IPC_FFI_CLUSTER_UNAUTHENTICATED
               or C.NGX_IPC_FFI_CLUSTER_MALFORMED)
    self:log(ngx_WARN, kind, "entry ", id, " of stream \"", self.cfg.stream,
             "\" skipped: ", why)
end


-- Waits `seconds` before a retry, in slices, so that a worker that shuts
-- down is not held by the agent's backoff.
function _M.pause(self, seconds)
    while seconds > 0 and self:active() do
        local slice = math_min(seconds, 0.25)
        ngx_sleep(slice)
        seconds = seconds - slice
    end
end


-- Delivers a message to every worker of this node through the local path,
-- waiting while a worker's queue is full (nothing may be lost here): true,
-- or nil and the error's text.
function _M.deliver(self, name, data)
    while true do
        local ok, code = self.api.broadcast_local(name, data)
        if ok then
            return true
        end

        if code ~= errors.QUEUE_FULL or not self:active() then
            return nil, errors.text(code)
        end

        ngx_sleep(0.001)
    end
end


-- Entries were missed: counted, logged, and told to the "ipc:cluster_gap"
-- handlers of this node.
function _M.report_gap(self, reason)
    self:count(C.NGX_IPC_FFI_CLUSTER_GAPS)
    self:log(ngx_WARN, "gap", "this node missed entries of stream \"",
             self.cfg.stream, "\": ", reason, "; \"", GAP_NAME,
             "\" handlers are told")
    local ok, err = self:deliver(GAP_NAME, reason)
    if not ok then
        ngx_log(ngx_ERR, "ngx_ipc cluster: cannot tell the gap: ", err)
    end
end


return _M
