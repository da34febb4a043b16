-- ngx.ipc.worker: this worker's ngx.ipc, one object made by the first API
-- call in a worker process (never in the master: init_by_lua* makes none).
-- It attaches the worker to the module (ngx_ipc_ffi_start), links the
-- cluster if ipc_cluster is set, and holds the objects of each concern:
--
--   queue       messages taken from the inbox, not handled yet (queue.lua)
--   ctx         the handler context: ipc.sender and the rest (context.lua)
--   sending     sends through the C ABI (sending.lua)
--   waiting     sends that wait for room (waiting.lua)
--   calls       ipc.call's requests and answers (calls.lua)
--   dispatcher  runs a message's handler (dispatch.lua)
--   delivery    the reader and runner light threads (delivery.lua)
--
-- and what the module shares with it: the semaphores it posts, the Lua
-- counters in the worker's slot, the exit state.

local ffi = require "ffi"
local base = require "resty.core.base"
local calls = require "ngx.ipc.calls"
local context = require "ngx.ipc.context"
local delivery = require "ngx.ipc.delivery"
local dispatch = require "ngx.ipc.dispatch"
local queue = require "ngx.ipc.queue"
local semaphore = require "ngx.semaphore"
local sending = require "ngx.ipc.sending"
local waiting = require "ngx.ipc.waiting"

local C = ffi.C
local ffi_new = ffi.new
local ffi_string = ffi.string
local setmetatable = setmetatable
local ngx_log = ngx.log
local ngx_ERR = ngx.ERR
local FFI_OK = base.FFI_OK


local _M = {}
local mt = { __index = _M }

local errmsg = ffi_new("char *[1]")


-- Makes this worker's object and starts its light threads. api: the public
-- table (ipc.handlers, ipc.default_handler). Returns the object, or nil
-- and why (then nothing is kept: a later call tries again).
function _M.new(api)
    -- the module keeps pointers to them: the object keeps them from the GC
    local inbox_sema = semaphore.new(0)

    if C.ngx_ipc_ffi_start(inbox_sema.sem, errmsg) ~= FFI_OK then
        return nil, ffi_string(errmsg[0])
    end

    local self = setmetatable({
        inbox_sema = inbox_sema,    -- the module posts it: messages came
        work_sema = semaphore.new(0),   -- the reader posts it: queued
        yield_sema = semaphore.new(0),  -- posted on the event loop's next pass
        counts = C.ngx_ipc_ffi_lua_counters(),
        exit_state = C.ngx_ipc_ffi_exit_state(),
        queue = queue.new(),
        ctx = context.new(),
        cluster = false,
        node = nil,
    }, mt)

    local counts = self.counts
    local sender = sending.new(counts, false)
    self.sending = sender
    self.waiting = waiting.new(counts)
    self.calls = calls.new(counts, function(pid, name, data, flags, id)
        return sender:send(pid, name, data, flags, id)
    end)

    local mod = require "ngx.ipc.cluster"
    local cfg = mod.init({
        broadcast_local = function(name, data)
            return sender:broadcast_local(name, data)
        end,
        new_sema = semaphore.new,
    })
    if cfg then
        -- the link delivers through the sender, which sends to the link:
        -- the sender learns of it once both exist
        self.cluster = mod
        self.node = cfg.node
        sender.cluster = mod
    end

    self.dispatcher = dispatch.new(api, self.ctx, counts, self.calls,
                                   self.cluster, self.node)
    self.delivery = delivery.new(self)

    self:start()
    return self
end


-- Starts the light threads that do not run (each once; a timer that could
-- not be made is tried again at the next API call).
function _M.start(self)
    local ok, err = self.delivery:start()
    if not ok then
        ngx_log(ngx_ERR, "ngx_ipc: cannot start: ", err)
    end
    return ok, err
end


return _M
