-- ngx.ipc.workers: what ipc.pids() and ipc.stats() read of the workers,
-- from the module's slots in shared memory: their PIDs (this
-- configuration's, and through the reload bridge the other generations'
-- still running), their state and their counters. Loads only: reading
-- costs the workers nothing (docs/ARCHITECTURE.md §9).

local ffi = require "ffi"
local base = require "resty.core.base"

local C = ffi.C
local ffi_new = ffi.new
local sort = table.sort
local tonumber = tonumber
local FFI_OK = base.FFI_OK


local MAX_SLOTS = C.NGX_IPC_FFI_MAX_SLOTS
local BRIDGE_SLOTS = C.NGX_IPC_BRIDGE_SLOTS
-- ngx_ipc::WorkerState
local STATES = { [0] = "not_started", "running", "exited", "dead" }

local _M = {}

local pids_buf = ffi_new("int[?]", MAX_SLOTS)
local peers_buf = ffi_new("ngx_ipc_peer_t[?]", BRIDGE_SLOTS)
local wstatus = ffi_new("ngx_ipc_worker_status_t")
local own_stats = ffi_new("ngx_ipc_stats_t")


local function by_generation(a, b)
    if a[1] ~= b[1] then
        return a[1] < b[1]
    end
    return a[2] < b[2]
end


-- The PIDs of this configuration's workers (entry i is worker i - 1),
-- false where none runs now; with `all`, then the other generations'
-- running workers, by generation, then worker id. nil if this process has
-- no ngx.ipc (not a worker).
function _M.pids(all)
    local n = C.ngx_ipc_ffi_pids(pids_buf, MAX_SLOTS)
    if n < 0 then
        return nil
    end

    local t = {}
    for i = 1, n do
        local pid = pids_buf[i - 1]
        t[i] = pid ~= 0 and pid or false
    end

    if all then
        local m = C.ngx_ipc_ffi_peers(peers_buf, BRIDGE_SLOTS)
        local others = {}
        for i = 1, m do
            local p = peers_buf[i - 1]
            others[i] = { tonumber(p.generation), tonumber(p.worker),
                          tonumber(p.pid) }
        end

        sort(others, by_generation)

        for i = 1, m do
            t[n + i] = others[i][3]
        end
    end

    return t
end


local function counters(s)
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
        unhandled = tonumber(s.unhandled),
    }
end


-- A worker's counters as read from shared memory, plus who it is.
local function worker_stats(ws)
    local t = counters(ws.stats)
    t.worker = tonumber(ws.slot)
    t.pid = ws.pid ~= 0 and tonumber(ws.pid) or false
    t.incarnation = tonumber(ws.incarnation)
    t.state = STATES[ws.state] or "unknown"
    t.busy_poll_seconds = tonumber(ws.busy_poll_ns) / 1e9
    t.queued_messages = tonumber(ws.queued_msgs)
    return t
end


-- This worker's counters; nil if this process has no ngx.ipc.
function _M.own()
    if C.ngx_ipc_ffi_stats(own_stats) ~= FFI_OK then
        return nil
    end
    return counters(own_stats)
end


-- Every worker's counters (pid nil: an array by worker id), or those of
-- the worker with that PID (false if none of this configuration has it);
-- nil if this process has no ngx.ipc.
function _M.of(pid)
    local n = C.ngx_ipc_ffi_worker_status(-1, wstatus)
    if n < 0 then
        return nil
    end

    local all = {}
    for i = 0, n - 1 do
        C.ngx_ipc_ffi_worker_status(i, wstatus)

        if not pid then
            all[i + 1] = worker_stats(wstatus)

        elseif wstatus.pid == pid and pid > 0 then
            return worker_stats(wstatus)
        end
    end

    return pid == nil and all or false
end


return _M
