-- ngx.ipc: named messages between nginx worker processes ("alerts" in
-- ngx_lua_ipc's words): the public API.
--
-- This file checks the arguments, raises the errors of misuse at the
-- caller's line (each public function raises them itself: error(msg, 2)),
-- and turns the modules' result codes into `nil, err` (ngx.ipc.errors).
-- The work is done by one object per worker (ngx.ipc.worker), made by the
-- first call in a worker process: its reader and runner light threads
-- deliver the messages (ngx.ipc.delivery, ngx.ipc.dispatch), and its sends
-- go through the module's C ABI (src/ngx_ipc_ffi.h). The map of the files
-- and the state each owns is in docs/ARCHITECTURE.md §1; the rules in
-- README.md.

local ffi = require "ffi"
local args = require "ngx.ipc.args"
local errors = require "ngx.ipc.errors"
local workers = require "ngx.ipc.workers"
local workermod = require "ngx.ipc.worker"

local C = ffi.C
local error = error
local ipairs = ipairs
local pairs = pairs
local rawset = rawset
local setmetatable = setmetatable
local tostring = tostring
local type = type
local ngx = ngx
local get_phase = ngx.get_phase
local worker_pid = ngx.worker.pid


local CALL_TIMEOUT = 5     -- seconds
local MAX_NAME = C.NGX_IPC_FFI_MAX_NAME
local OK = errors.OK
local text = errors.text


do
    local ok, version = pcall(function() return C.ngx_ipc_ffi_version() end)
    if not ok then
        error("ngx.ipc needs ngx_ipc_module: add "
              .. "\"load_module modules/ngx_ipc_module.so;\" to nginx.conf", 2)
    end

    -- the version this library's declarations were made from (the header
    -- the module embeds) against the one the module was compiled with
    if version ~= C.NGX_IPC_FFI_VERSION then
        error("ngx.ipc: this Lua library speaks C ABI version "
              .. C.NGX_IPC_FFI_VERSION .. " but ngx_ipc_module.so speaks "
              .. "version " .. version .. "; install matching versions", 2)
    end
end


-- handlers: the registered handlers by name, public as in ngx_lua_ipc
-- (ipc.handlers), which dispatches through it too: a handler stored there
-- directly, or a whole new table assigned to it, is what runs.
local _M = { version = "0.1.0", handlers = {} }

local worker        -- this worker's (ngx.ipc.worker), once made


local function not_available()
    return "ngx.ipc is only available in nginx worker processes (not in "
           .. get_phase() .. ")"
end


-- This worker's object, made on the first call in a worker process; nil
-- in the master (init_by_lua*), and nil, err if the module refused to
-- start here.
local function attach()
    if worker then
        if worker.delivery.failed then
            worker:start()
        end
        return worker
    end

    if get_phase() == "init" then
        return nil
    end

    local err
    worker, err = workermod.new(_M)
    return worker, err
end


-- What a send returns to the caller: true, or nil and the error's text.
local function result(rc)
    if rc == OK then
        return true
    end

    return nil, type(rc) == "number" and text(rc) or rc
end


local function try_send(pid, name, data)
    return worker.sending:send(pid, name, data)
end


function _M.send(pid, name, data, opts)
    local err
    pid, err = args.pid(pid, 1, "send")
    if err then error(err, 2) end
    name, err = args.name(name, 2, "send")
    if err then error(err, 2) end
    data, err = args.data(data, 3, "send")
    if err then error(err, 2) end

    local timeout = false
    if opts ~= nil then
        local _
        _, err = args.type(opts, "table", 4, "send")
        if err then error(err, 2) end
        timeout, err = args.wait(opts, 4, "send")
        if err then error(err, 2) end
    end

    local w
    w, err = attach()
    if not w then
        error(err or not_available(), 2)
    end

    if timeout then
        return result(w.waiting:send(timeout, try_send, pid, name, data))
    end

    return result(w.sending:send(pid, name, data))
end


local function try_broadcast(name, data, include_self)
    return worker.sending:broadcast(name, data, include_self)
end


function _M.broadcast(name, data, opts)
    local err
    name, err = args.name(name, 1, "broadcast")
    if err then error(err, 2) end
    data, err = args.data(data, 2, "broadcast")
    if err then error(err, 2) end

    local include_self, scope, timeout = true, nil, false
    if opts ~= nil then
        include_self, scope, timeout, err = args.broadcast_opts(opts, name)
        if err then error(err, 2) end
    end

    local w
    w, err = attach()
    if not w then
        error(err or not_available(), 2)
    end

    if scope == "cluster" then
        return result(w.sending:cluster_broadcast(name, data, include_self))
    end

    if timeout then
        return result(w.waiting:send(timeout, try_broadcast, name, data,
                                     include_self))
    end

    return result(w.sending:broadcast(name, data, include_self))
end


-- receive(name, handler), receive(name, nil), receive({ name = handler })
function _M.receive(name, handler)
    if get_phase() == "init" then
        -- the master's VM: no worker would run them (as ngx_lua_ipc says)
        error("ipc.receive cannot be used in init_by_lua*: register "
              .. "handlers in init_worker_by_lua*", 2)
    end

    local handlers, err, code
    if type(name) == "table" then
        handlers, err, code = args.handlers(name, handler)
        if err then error(err, 2) end
        if code then
            return nil, text(code)
        end

    else
        name, err = args.name(name, 1, "receive")
        if err then error(err, 2) end

        if handler ~= nil then
            local _
            _, err = args.type(handler, "function", 2, "receive")
            if err then error(err, 2) end
        end

        if #name > MAX_NAME then
            return nil, text(errors.NAME_TOO_LONG)  -- no message carries it
        end

    end

    local t = _M.handlers
    if type(t) ~= "table" then
        -- a user replaced ipc.handlers with something that is not a table
        t = {}
        _M.handlers = t
    end

    if handlers then
        for k, v in pairs(handlers) do
            t[k] = v
        end
    else
        t[name] = handler       -- nil removes it
    end

    attach()
    return true
end


-- True in the runner's light thread and in what its handlers start.
local function in_runner()
    return get_phase() == "timer" and ngx.ctx.ngx_ipc_runner == true
end


-- ipc.reply(name, data): a new message to the sender of the message being
-- handled, as in ngx_lua_ipc: ipc.send(ipc.sender, name, data). It is not
-- the answer to an ipc.call (that is the handler's return value); the name
-- "reply" is kept for compatibility.
function _M.reply(name, data)
    local ctx = worker and in_runner() and worker.ctx
    if not ctx or ctx.sender == nil then
        if ctx and ctx.name then
            error("ipc.reply cannot answer a message from another node "
                  .. "(ipc.sender_node is " .. tostring(ctx.node) .. ")", 2)
        end
        error("ipc.reply called outside an ipc handler", 2)
    end

    local err
    name, err = args.name(name, 1, "reply")
    if err then error(err, 2) end
    data, err = args.data(data, 2, "reply")
    if err then error(err, 2) end

    return result(worker.sending:send(ctx.sender, name, data))
end


function _M.call(pid, name, data, timeout)
    local err
    pid, err = args.pid(pid, 1, "call")
    if err then error(err, 2) end
    name, err = args.name(name, 2, "call")
    if err then error(err, 2) end
    data, err = args.data(data, 3, "call")
    if err then error(err, 2) end
    timeout, err = args.timeout(timeout, CALL_TIMEOUT)
    if err then error(err, 2) end

    local yields, phase = args.can_yield()
    if not yields then
        error("ipc.call is not allowed in the context of " .. phase
              .. " (it must be able to yield, like ngx.sleep"
              .. (phase == "init_worker"
                  and "; from init_worker_by_lua*, call it in a timer: "
                      .. "ngx.timer.at(0, function() ... end)"
                  or "") .. ")", 2)
    end

    local w
    w, err = attach()
    if not w then
        error(err or not_available(), 2)
    end

    if pid == worker_pid() and in_runner() then
        return nil, text(w.sending:refuse(errors.WOULD_DEADLOCK))
    end

    local res
    res, err = w.calls:call(pid, name, data, timeout)
    if res == nil then
        return result(err)
    end

    return res
end


-- pids(): the PIDs of this configuration's workers (entry i is worker
-- i - 1), false where none runs now. pids({ all = true }): the same, then
-- the PIDs of the other configurations' workers that still run (the old
-- ones draining after a reload, or, seen from an old worker, the new
-- ones), by generation, then worker id.
function _M.pids(opts)
    if opts ~= nil and type(opts) ~= "table" then
        error("bad argument #1 to 'pids' (table expected, got "
              .. type(opts) .. ")", 2)
    end

    attach()

    local t = workers.pids(opts and opts.all)
    if not t then
        error(not_available(), 2)
    end
    return t
end


-- The cluster link's state, { enabled = false } without ipc_cluster.
function _M.cluster()
    local w = attach()
    if not w or not w.cluster then
        return { enabled = false, connected = false }
    end

    return w.cluster.state()
end


-- ngx_lua_ipc's: the PIDs of the other running workers of this
-- configuration, in worker id order.
function _M.get_other_worker_pids()
    attach()

    local all = workers.pids(false)
    if not all then
        error(not_available(), 2)
    end

    local me = worker_pid()
    local t, n = {}, 0
    for _, pid in ipairs(all) do
        if pid and pid ~= me then
            n = n + 1
            t[n] = pid
        end
    end

    return t
end


-- stats(): this worker's counters. stats(pid): those of the worker with
-- that PID (nil, "no such worker" if none of this configuration has it).
-- stats("all"): an array of every worker's, ordered by ngx.worker.id()
-- (entry i is worker i - 1).
function _M.stats(which)
    local pid, err = args.which(which)
    if err then error(err, 2) end

    attach()

    local res
    if which == nil then
        res = workers.own()
    else
        res = workers.of(pid)
    end

    if res == nil then
        error(not_available(), 2)
    end

    if res == false then
        return nil, text(errors.NO_SUCH_WORKER)
    end

    return res
end


-- ipc.sender: the sender's PID while a handler runs (in the runner's light
-- thread; nil for a message from another node), nil anywhere else.
-- ipc.sender_node: the node the message came from (this node's name for a
-- local one), with ipc_cluster; nil anywhere else. Setting
-- ipc.default_handler starts this worker's delivery, as receive() does.
return setmetatable(_M, {
    __index = function(_, key)
        if (key == "sender" or key == "sender_node") and worker
           and in_runner()
        then
            local ctx = worker.ctx
            if key == "sender" then
                return ctx.sender
            end
            return ctx.node
        end
    end,

    __newindex = function(t, key, value)
        rawset(t, key, value)
        if key == "default_handler" and value ~= nil then
            attach()
        end
    end,
})
