-- ngx.ipc.cluster.agent: which worker of the node holds the Redis link.
--
-- Every worker asks for the lease four times a second
-- (ngx_ipc_ffi_cluster_lease), so that a dead or hung agent is replaced
-- within a second. The worker that holds it runs two light threads, each
-- with its own Redis connection: the writer (writer.lua) and the reader
-- (reader.lua). When one of them ends, the other stops too and the lease is
-- given back; the next lease check starts the agent afresh.

local ffi = require "ffi"
local reader = require "ngx.ipc.cluster.reader"
local writer = require "ngx.ipc.cluster.writer"

local C = ffi.C
local ffi_new = ffi.new
local pcall = pcall
local ngx = ngx
local ngx_log = ngx.log
local ngx_ERR = ngx.ERR
local ngx_NOTICE = ngx.NOTICE
local timer_at = ngx.timer.at
local timer_every = ngx.timer.every
local worker_exiting = ngx.worker.exiting


local LEASE_PERIOD = 0.25      -- seconds between two lease checks

local K_CONNECTED = C.NGX_IPC_FFI_CLUSTER_CONNECTED

local _M = {}

local agent_pid = ffi_new("int[1]")


-- A light thread of the agent: runs fn(link); when it ends, however it
-- ends, the agent stops.
local function thread(link, fn)
    return function(premature)
        if premature then
            return
        end

        link.threads = link.threads + 1
        local ok, err = pcall(fn, link)
        link.threads = link.threads - 1
        if not ok then
            link:log(ngx_ERR, "thread", "agent thread failed: ", err)
        end

        link.agent = false

        if link.threads == 0 then
            link:gauge(K_CONNECTED, 0)
            C.ngx_ipc_ffi_cluster_release()
            ngx_log(ngx_NOTICE, "ngx_ipc cluster: this worker is no longer ",
                    "the agent of node \"", link.cfg.node, "\"",
                    worker_exiting() and " (it is shutting down)" or "")
        end
    end
end


local function start(link)
    local cfg = link.cfg
    link.agent = true
    ngx_log(ngx_NOTICE, "ngx_ipc cluster: this worker is the agent of node \"",
            cfg.node, "\" (", cfg.where, ", stream \"", cfg.stream, "\")")

    local ok, err = timer_at(0, thread(link, reader.run))
    if ok then
        ok, err = timer_at(0, thread(link, writer.run))
    end

    if not ok then
        link:log(ngx_ERR, "start", "cannot start the agent: ", err)
    end
end


-- Starts asking for the lease; nil, err if it cannot.
function _M.start(link)
    link.threads = 0

    local function tick(premature)
        if premature then
            return
        end

        local mine = C.ngx_ipc_ffi_cluster_lease(agent_pid)
        if mine == 1 and not link.agent and link.threads == 0 then
            start(link)

        elseif mine ~= 1 and link.agent then
            link.agent = false       -- another took over (we hung): stop
        end
    end

    local ok, err = timer_every(LEASE_PERIOD, tick)
    if ok then
        ok, err = timer_at(0, tick)
    end
    return ok, err
end


-- The agent's writer: a broadcast found it asleep.
function _M.kick(link)
    if link.agent and link.kick_sema then
        link.kick_sema:post(1)
    end
end


return _M
