-- ngx.ipc: named messages ("alerts") between nginx worker processes.
--
-- The Lua API over ngx_ipc_module's C ABI (src/ngx_ipc_ffi.cpp). Messages
-- travel through shared memory; each worker runs one dispatcher light thread
-- (in a timer) that sleeps on a semaphore, is woken by the module's event
-- handler when its inbox has messages, and runs the handlers one at a time,
-- in arrival order. See README.md and docs/ARCHITECTURE.md.

local ffi = require "ffi"
local semaphore = require "ngx.semaphore"

local C = ffi.C
local ffi_new = ffi.new
local ffi_string = ffi.string
local co_running = coroutine.running
local error = error
local pairs = pairs
local pcall = pcall
local rawget = rawget
local select = select
local setmetatable = setmetatable
local str_sub = string.sub
local tonumber = tonumber
local tostring = tostring
local type = type
local ngx = ngx
local ngx_log = ngx.log
local ngx_ERR = ngx.ERR
local ngx_WARN = ngx.WARN
local ngx_now = ngx.now
local get_phase = ngx.get_phase
local timer_at = ngx.timer.at
local worker_exiting = ngx.worker.exiting


local FFI_VERSION = 1      -- NGX_IPC_FFI_VERSION in src/ngx_ipc_module.h
local NGX_OK = 0
local NGX_ERROR = -1
local BATCH = 64           -- messages taken from the inbox per FFI call
local MAX_SLOTS = 128      -- ngx_ipc::kMaxSlots
local IDLE_WAIT = 3600     -- seconds; the dispatcher is woken by messages
local LOG_BURST = 10       -- handler-error log lines per second, at most


ffi.cdef[[
typedef struct {
    const unsigned char  *name;
    const unsigned char  *data;
    uint64_t              data_len;
    uint32_t              name_len;
    int32_t               sender_pid;
    uint32_t              flags;
    uint32_t              call_id;
} ngx_ipc_msg_t;

typedef struct {
    uint64_t  sent;
    uint64_t  received;
    uint64_t  sent_bytes;
    uint64_t  received_bytes;
    uint64_t  dropped;
    uint64_t  refused;
    uint64_t  handler_errors;
    uint64_t  calls;
    uint64_t  call_timeouts;
    uint64_t  queued_bytes;
    uint64_t  resets;
} ngx_ipc_stats_t;

int ngx_ipc_ffi_version(void);
int ngx_ipc_ffi_start(void *sema, char **err);
int ngx_ipc_ffi_send(int pid, const unsigned char *name, size_t name_len,
    const unsigned char *data, size_t data_len, int flags, uint32_t call_id,
    char **err);
int ngx_ipc_ffi_broadcast(const unsigned char *name, size_t name_len,
    const unsigned char *data, size_t data_len, int include_self,
    char **err);
int ngx_ipc_ffi_recv(ngx_ipc_msg_t *out, int max);
void ngx_ipc_ffi_recv_done(void);
int ngx_ipc_ffi_pids(int *out, int max);
ngx_ipc_stats_t *ngx_ipc_ffi_stats(void);
]]


do
    local ok, version = pcall(function() return C.ngx_ipc_ffi_version() end)
    if not ok then
        error("ngx.ipc needs ngx_ipc_module: add "
              .. "\"load_module modules/ngx_ipc_module.so;\" to nginx.conf", 2)
    end

    if version ~= FFI_VERSION then
        error("ngx.ipc: this Lua library speaks C ABI version " .. FFI_VERSION
              .. " but ngx_ipc_module.so speaks version " .. version
              .. "; install matching versions", 2)
    end
end


local _M = { version = "0.1.0" }

local handlers = {}
local errmsg = ffi_new("char *[1]")
local msgs = ffi_new("ngx_ipc_msg_t[?]", BATCH)
local pids_buf = ffi_new("int[?]", MAX_SLOTS)
local names, datas, senders = {}, {}, {}

local stats             -- ngx_ipc_stats_t *, once started
local sema              -- the dispatcher sleeps on it; C posts it
local started = false
local dispatcher        -- the dispatcher's coroutine
local current_sender    -- sender of the message being handled


local function arg_error(n, fname, expected, got)
    error("bad argument #" .. n .. " to '" .. fname .. "' (" .. expected
          .. " expected, got " .. type(got) .. ")", 3)
end


local function check_name(name, fname, n)
    if type(name) ~= "string" then
        arg_error(n, fname, "string", name)
    end

    if name == "" then
        error("bad argument #" .. n .. " to '" .. fname
              .. "' (non-empty string expected)", 3)
    end
end


-- data: a string, a number (sent as its string form), or nil (sent as "").
local function check_data(data, fname, n)
    local t = type(data)
    if t == "string" then
        return data
    end

    if t == "number" then
        return tostring(data)
    end

    if data == nil then
        return ""
    end

    arg_error(n, fname, "string", data)
end


local function not_available()
    error("ngx.ipc is only available in nginx worker processes (not in "
          .. get_phase() .. ")", 3)
end


local log_second, log_count, log_suppressed = 0, 0, 0

local function log_handler_error(name, err)
    local now = ngx_now()
    if now - log_second >= 1 then
        if log_suppressed > 0 then
            ngx_log(ngx_ERR, "ngx_ipc: ", log_suppressed,
                    " more handler errors not logged")
        end

        log_second, log_count, log_suppressed = now, 0, 0
    end

    if log_count >= LOG_BURST then
        log_suppressed = log_suppressed + 1
        return
    end

    log_count = log_count + 1

    if #name > 256 then
        name = str_sub(name, 1, 256) .. "..."
    end

    ngx_log(ngx_ERR, "ngx_ipc: handler for alert \"", name, "\" failed: ",
            tostring(err))
end


-- Runs the handler of one message, in the dispatcher's light thread.
local function handle(name, data, sender)
    local ok, err
    local handler = handlers[name]

    current_sender = sender

    if handler then
        ok, err = pcall(handler, data)

    else
        local default = rawget(_M, "default_handler")
        if default then
            ok, err = pcall(default, name, data)

        else
            ok = true
            stats.dropped = stats.dropped + 1
        end
    end

    current_sender = nil

    if not ok then
        stats.handler_errors = stats.handler_errors + 1
        log_handler_error(name, err)
    end
end


local function dispatch(premature)
    if premature then
        return
    end

    dispatcher = co_running()

    while true do
        local n = C.ngx_ipc_ffi_recv(msgs, BATCH)

        if n > 0 then
            -- copy the batch out of shared memory, give the space back, then
            -- run the handlers (which may yield)
            for i = 0, n - 1 do
                local m = msgs[i]
                names[i + 1] = ffi_string(m.name, m.name_len)
                datas[i + 1] = ffi_string(m.data, m.data_len)
                senders[i + 1] = m.sender_pid
            end

            C.ngx_ipc_ffi_recv_done()

            for i = 1, n do
                local name, data = names[i], datas[i]
                names[i], datas[i] = nil, nil
                handle(name, data, senders[i])
            end

        elseif n == 0 then
            if worker_exiting() then
                break
            end

            local ok, err = sema:wait(IDLE_WAIT)
            if not ok and err ~= "timeout" then
                ngx_log(ngx_ERR, "ngx_ipc: dispatcher stopped: ", err)
                break
            end

        else
            ngx_log(ngx_ERR, "ngx_ipc: dispatcher stopped: receive failed")
            break
        end
    end

    dispatcher = nil
end


-- Attaches this worker and starts its dispatcher, once per worker. Does
-- nothing in the master (init_by_lua*): the first call in a worker does it.
local function start()
    if started then
        return true
    end

    if get_phase() == "init" then
        return nil
    end

    local s = semaphore.new(0)
    if C.ngx_ipc_ffi_start(s.sem, errmsg) ~= NGX_OK then
        return nil, ffi_string(errmsg[0])
    end

    sema = s    -- a reference, so the GC keeps the semaphore alive
    stats = C.ngx_ipc_ffi_stats()

    local ok, err = timer_at(0, dispatch)
    if not ok then
        ngx_log(ngx_ERR, "ngx_ipc: cannot start the dispatcher: ", err)
        return nil, err
    end

    started = true
    return true
end


local function refuse(err)
    if stats then
        stats.refused = stats.refused + 1
    end

    return nil, err
end


local function send(fname, pid, name, data, flags, call_id)
    if type(pid) ~= "number" then
        arg_error(1, fname, "number", pid)
    end

    check_name(name, fname, 2)
    data = check_data(data, fname, 3)
    start()

    if pid <= 0 or pid > 0x7fffffff or pid % 1 ~= 0 then
        return refuse("no such worker")
    end

    local rc = C.ngx_ipc_ffi_send(pid, name, #name, data, #data,
                                  flags or 0, call_id or 0, errmsg)
    if rc == NGX_OK then
        return true
    end

    if rc == NGX_ERROR then
        not_available()
    end

    return nil, ffi_string(errmsg[0])
end


function _M.send(pid, name, data)
    return send("send", pid, name, data)
end


function _M.broadcast(name, data, opts)
    check_name(name, "broadcast", 1)
    data = check_data(data, "broadcast", 2)

    local include_self = true
    if opts ~= nil then
        if type(opts) ~= "table" then
            arg_error(3, "broadcast", "table", opts)
        end

        if opts.include_self ~= nil then
            include_self = opts.include_self and true or false
        end
    end

    start()

    local rc = C.ngx_ipc_ffi_broadcast(name, #name, data, #data,
                                       include_self and 1 or 0, errmsg)
    if rc == NGX_OK then
        return true
    end

    if rc == NGX_ERROR then
        not_available()
    end

    return nil, ffi_string(errmsg[0])
end


-- receive(name, handler), receive(name, nil), receive({ name = handler })
function _M.receive(name, handler)
    if type(name) == "table" then
        if select("#", handler) > 0 and handler ~= nil then
            error("bad argument #2 to 'receive' (nil expected with a table "
                  .. "of handlers, got " .. type(handler) .. ")", 2)
        end

        for k, v in pairs(name) do
            if type(k) ~= "string" or k == "" then
                error("bad argument #1 to 'receive' (table keys must be "
                      .. "non-empty strings, got " .. type(k) .. ")", 2)
            end

            if type(v) ~= "function" then
                error("bad argument #1 to 'receive' (function expected for \""
                      .. k .. "\", got " .. type(v) .. ")", 2)
            end
        end

        for k, v in pairs(name) do
            handlers[k] = v
        end

    else
        check_name(name, "receive", 1)

        if handler ~= nil and type(handler) ~= "function" then
            arg_error(2, "receive", "function", handler)
        end

        handlers[name] = handler
    end

    start()
    return true
end


function _M.reply(name, data)
    if current_sender == nil or co_running() ~= dispatcher then
        error("ipc.reply called outside an ipc handler", 2)
    end

    check_name(name, "reply", 1)
    return send("reply", current_sender, name, data)
end


function _M.pids()
    start()

    local n = C.ngx_ipc_ffi_pids(pids_buf, MAX_SLOTS)
    if n < 0 then
        not_available()
    end

    local t = {}
    for i = 1, n do
        local pid = pids_buf[i - 1]
        t[i] = pid ~= 0 and pid or false
    end

    return t
end


function _M.stats()
    start()

    local s = C.ngx_ipc_ffi_stats()
    if s == nil then
        not_available()
    end

    return {
        sent = tonumber(s.sent),
        received = tonumber(s.received),
        sent_bytes = tonumber(s.sent_bytes),
        received_bytes = tonumber(s.received_bytes),
        dropped = tonumber(s.dropped),
        refused = tonumber(s.refused),
        handler_errors = tonumber(s.handler_errors),
        calls = tonumber(s.calls),
        call_timeouts = tonumber(s.call_timeouts),
        queued_bytes = tonumber(s.queued_bytes),
        resets = tonumber(s.resets),
    }
end


-- ipc.sender: the sender's PID while a handler runs (in the dispatcher's
-- light thread), nil anywhere else.
return setmetatable(_M, {
    __index = function(_, key)
        if key == "sender" and co_running() == dispatcher then
            return current_sender
        end
    end
})
