-- ngx.ipc.cluster: the link between this nginx and the others of a cluster,
-- through one Redis stream (the ipc_cluster directive). Loaded by ngx.ipc;
-- this file is what ngx.ipc sees of it.
--
-- One worker per node, the agent (cluster/agent.lua), holds the link: its
-- writer (cluster/writer.lua) adds this node's cluster broadcasts to the
-- stream, its reader (cluster/reader.lua) reads the other nodes' entries
-- (cluster/entry.lua: the format, and the checks every entry passes) and
-- fans each one out to this node's workers, whole, as one local message.
-- Each worker then runs the handlers of that entry's messages (each()),
-- dropping a sequence number it has handled from that node and epoch, so
-- that a message sent twice (by an agent that died before it could
-- commit) is handled once. Redis is spoken by cluster/resp.lua. See
-- docs/ARCHITECTURE.md §11 and README, "Cluster" and "Security".

local ffi = require "ffi"
local agent = require "ngx.ipc.cluster.agent"
local entry = require "ngx.ipc.cluster.entry"
local linkmod = require "ngx.ipc.cluster.link"
local seqs = require "ngx.ipc.cluster.seqs"

local C = ffi.C
local pairs = pairs
local str_find = string.find
local str_sub = string.sub
local tonumber = tonumber
local ngx = ngx
local ngx_log = ngx.log
local ngx_ERR = ngx.ERR


local KEYS = 1024               -- (node, epoch) pairs a worker remembers

local K = {
    published = C.NGX_IPC_FFI_CLUSTER_PUBLISHED,
    refused = C.NGX_IPC_FFI_CLUSTER_REFUSED,
    added = C.NGX_IPC_FFI_CLUSTER_ADDED,
    received = C.NGX_IPC_FFI_CLUSTER_RECEIVED,
    gaps = C.NGX_IPC_FFI_CLUSTER_GAPS,
    reconnects = C.NGX_IPC_FFI_CLUSTER_RECONNECTS,
    errors = C.NGX_IPC_FFI_CLUSTER_ERRORS,
    node_clashes = C.NGX_IPC_FFI_CLUSTER_NODE_CLASHES,
    malformed = C.NGX_IPC_FFI_CLUSTER_MALFORMED,
    unauthenticated = C.NGX_IPC_FFI_CLUSTER_UNAUTHENTICATED,
}
local K_CONNECTED = C.NGX_IPC_FFI_CLUSTER_CONNECTED
local K_LAG_MS = C.NGX_IPC_FFI_CLUSTER_LAG_MS

local _M = { IN_NAME = linkmod.IN_NAME, RESERVED = entry.RESERVED }

local link          -- this worker's (cluster/link.lua), once init() ran


-- Called by ngx.ipc at its start in a worker. api: broadcast_local(name,
-- data) -> true, or nil and an errors code; new_sema() -> an
-- ngx.semaphore. Returns the node's
-- settings, or nil without ipc_cluster.
function _M.init(api)
    link = linkmod.new(api)
    if not link then
        return nil
    end

    link.seen = seqs.new(KEYS)     -- per (node, epoch): highest handled
    link.kick_sema = api.new_sema()

    local ok, err = agent.start(link)
    if not ok then
        ngx_log(ngx_ERR, "ngx_ipc cluster: cannot start: ", err)
    end

    return link.cfg
end


-- A cluster broadcast (ngx.ipc checked the arguments): an errors code;
-- kick[0]: the agent to wake, or 0.
function _M.broadcast(name, data, include_self, kick)
    return C.ngx_ipc_ffi_cluster_broadcast(name, #name, data, #data,
                                           include_self and 1 or 0, kick)
end


-- The agent's writer: a broadcast found it asleep.
function _M.kick()
    if link then
        agent.kick(link)
    end
end


-- Runs dispatch(name, data, nil, node) for each message of an IN_NAME
-- message (a stream entry of another node, checked by the agent's reader)
-- that this worker has not handled yet, and pace() after each.
function _M.each(packed, dispatch, pace)
    local p1 = str_find(packed, "\n", 1, true)
    local p2 = p1 and str_find(packed, "\n", p1 + 1, true)
    if not p2 then
        return
    end

    local node = str_sub(packed, 1, p1 - 1)
    local key = node .. "/" .. str_sub(packed, p1 + 1, p2 - 1)
    local seen = link.seen

    entry.scan(packed, link.cfg.max_message,
               function(seq, name_at, name_len, data_at, data_len)
        if seq > (seen:get(key) or 0) then
            -- (a number not above the last one: sent twice, handled)
            seen:set(key, seq)
            dispatch(str_sub(packed, name_at, name_at + name_len - 1),
                     str_sub(packed, data_at, data_at + data_len - 1), nil,
                     node)
            pace()
        end
    end, p2 + 1)
end


function _M.state()
    local cfg, counters = link.cfg, link.counters
    local t = {
        enabled = true,
        node = cfg.node,
        stream = cfg.stream,
        redis = cfg.where,
        secret = cfg.secret,
        connected = counters[K_CONNECTED] ~= 0,
        agent = C.ngx_ipc_ffi_cluster_agent(),   -- 0: none now
        last_id = link:get_text(C.NGX_IPC_FFI_CLUSTER_LAST_ID),
        lag_ms = tonumber(counters[K_LAG_MS]),
        queued_bytes = tonumber(C.ngx_ipc_ffi_cluster_queued()),
    }

    for name, i in pairs(K) do
        t[name] = tonumber(counters[i])
    end

    -- last_error (nil: none), its time, whether the link connected since
    -- (last_error_old), and the last connection's time
    t.last_error, t.last_error_at, t.last_error_old, t.connected_at =
        link:link_state()

    return t
end


return _M
