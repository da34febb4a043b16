-- ngx.ipc.events: the public API of Kong/lua-resty-events (`resty.events`
-- 0.3.x) over ngx.ipc, for code that uses it unchanged.
--
--   local ev = require("ngx.ipc.events").new(opts)  -- init_by_lua* or later
--   ev:init_worker()                                -- init_worker_by_lua*
--   id = ev:subscribe(source, event, cb)            -- "*" matches any
--   ok, err = ev:publish(target, source, event, data)
--        -- target: "all", "current" or a unique hash
--   ev:unsubscribe(id); ev:is_ready(); ev:run()
--
-- Owns: the options, the instance's two message names, publishing, and the
-- broker's part. The queue of events waiting for this worker's handlers
-- and the thread that runs them: ngx.ipc.events_queue.
--
-- One order for every worker: lua-resty-events sends every event to one
-- broker worker over a unix socket, which then writes it to every worker;
-- each worker thus sees every publisher's events in the broker's order.
-- ngx.ipc orders messages per sender only (README, delivery rule 2), so
-- publish sends the event to the broker (opts.broker_id, worker 0 by
-- default) with ipc.send, and the broker rebroadcasts it with one
-- ipc.broadcast: every worker gets it from one sender, in that sender's
-- order. The broker's own events skip the first hop. A "current" event
-- never leaves the worker: it goes straight to the queue, ahead of any
-- broadcast published before it, as in lua-resty-events.
--
-- The broker is a worker like any other; no socket, no connection. While
-- it is not running (crashed, not respawned yet) publishers keep their
-- events (ngx.ipc.events_outbox) and send them to the new process. Events
-- it had accepted and not yet rebroadcast die with it, as they do in
-- lua-resty-events.

local callback = require "ngx.ipc.events_callback"
local outbox = require "ngx.ipc.events_outbox"
local check_options = require "ngx.ipc.events_options"
local lrucache = require "resty.lrucache"
local events_queue = require "ngx.ipc.events_queue"
local cjson = require "cjson.safe"

local type = type
local assert = assert
local pcall = pcall
local select = select
local tostring = tostring
local setmetatable = setmetatable

local ngx = ngx
local log = ngx.log
local ERR = ngx.ERR
local INFO = ngx.INFO
local DEBUG = ngx.DEBUG
local timer_at = ngx.timer.at
local get_phase = ngx.get_phase
local ngx_worker_id = ngx.worker.id
local worker_count = ngx.worker.count


local FRAME_MAX_PAYLOAD_LEN = 2^24 - 1          -- their frame's 3-byte length
local MAX_UNIQUE_EVENTS = 1024


local _M = {
    _VERSION = "0.3.1",
}
local _MT = { __index = _M }


-- the serialization of lua-resty-events (its codec.lua): string.buffer
-- with the same dictionary, cjson where LuaJIT lacks string.buffer
local encode, decode
do
    local ok, buffer = pcall(require, "string.buffer")
    if ok then
        local options = {
            dict = { "spec", "data", "source", "event", "wid", "unique" },
        }
        local buf_enc = buffer.new(options)
        local buf_dec = buffer.new(options)
        encode = function(obj) return buf_enc:reset():encode(obj):get() end
        decode = function(str) return buf_dec:set(str):decode() end

    else
        encode, decode = cjson.encode, cjson.decode
    end
end


local function get_worker_id()
    return ngx_worker_id() or -1    -- -1: the privileged agent
end




-- ipc handler of every worker: an event the broker (re)sent.
-- Any worker's Lua can send under these names: what is not an event as
-- post_event makes it is logged and dropped, never handed to a handler.
local function on_event(self, str)
    local ok, ev = pcall(decode, str)
    if not ok or type(ev) ~= "table" or type(ev.source) ~= "string"
       or type(ev.event) ~= "string"
       or (ev.wid ~= nil and type(ev.wid) ~= "number")
    then
        log(ERR, "failed to decode event data: ",
            ok and "not an event" or tostring(ev))
        return
    end

    local _, err = self._queue:push(ev)
    if err then
        log(ERR, "failed to store event: ", err, ". data is: ",
            cjson.encode(ev))
    end
end


-- The broker's part: a published event (their payload: spec and the
-- encoded event), from this worker or through ipc from another.
local function broker_accept(self, str)
    local ok, payload = pcall(decode, str)
    if not ok or type(payload) ~= "table" or type(payload.spec) ~= "table"
       or type(payload.data) ~= "string"
       or (payload.spec.unique ~= nil and type(payload.spec.unique) ~= "string")
    then
        log(ERR, "failed to decode event data: ",
            ok and "not an event" or tostring(payload))
        return
    end

    local unique = payload.spec.unique
    if unique then
        if self._uniques:get(unique) then
            local dok, ev = pcall(decode, payload.data)
            local wid = dok and type(ev) == "table" and ev.wid
            log(DEBUG, "unique event is duplicate on ",
                wid == -1 and "privileged agent" or "worker #" .. tostring(wid),
                ": ", unique)
            return
        end

        self._uniques:set(unique, 1, self.opts.unique_timeout)
    end

    local _, err = self._outbox:push(unique and "one" or "all", self._name_ev,
                                     payload.data)
    if err then
        log(ERR, "failed to publish event to ",
            unique and "a worker" or "all workers", ": ", err,
            ". data is: ", cjson.encode(select(2, pcall(decode, payload.data))))
        return
    end

    log(DEBUG, "event published to ", unique and 1 or worker_count(),
        " workers")
end


local instances = 0     -- this VM's instances, for their message names


function _M.new(opts)
    assert(check_options(opts))

    instances = instances + 1
    local name = "resty.events#" .. instances

    local uniques = assert(lrucache.new(MAX_UNIQUE_EVENTS))

    local self = setmetatable({
        opts = opts,
        _name_ev = name,            -- broker -> workers: encoded event
        _name_pub = name .. ":pub", -- workers -> broker: encoded payload
        _callback = callback.new(),
        _outbox = outbox.new(opts.broker_id, opts.max_queue_len),
        _uniques = uniques,
        _worker_id = nil,
        _connected = nil,
        _started = false,
    }, _MT)
    local cb = self._callback
    self._queue = events_queue.new(opts.max_queue_len,
                                   function(ev) cb:do_event(ev) end)

    -- ngx.ipc is for workers: required there only (a preload of the
    -- module is not there yet when init_by_lua* runs)
    self._handlers = {
        [self._name_ev] = function(data) on_event(self, data) end,
        [self._name_pub] = function(data) broker_accept(self, data) end,
    }
    if get_phase() ~= "init" and get_worker_id() ~= -1 then
        require("ngx.ipc").receive(self._handlers)
    end

    return self
end


local function connected(premature, self)
    if not premature then
        self._connected = true
    end
end


function _M:init_worker()
    local worker_id = get_worker_id()

    if worker_id == -1 and self.opts.enable_privileged_agent == false then
        return true
    end

    if self._started then
        return true
    end
    self._started = true
    self._worker_id = worker_id

    if worker_id ~= -1 then
        -- what reached this worker before its Lua first called ngx.ipc
        -- was kept for it (ipc_early_messages): delivered from now on
        require("ngx.ipc").receive(self._handlers)
    end

    -- ready once this phase is over (lua-resty-events: once connected)
    assert(timer_at(0, connected, self))
    self._queue:start()
    self._outbox:start()

    return true
end


-- The handler of lua-resty-events' unix socket: nothing connects to it
-- here. A client that does is closed.
function _M:run()
    log(INFO, "resty.events over ngx.ipc has no broker socket: closing")
    return ngx.exit(444)
end


local EMPTY_T = {}
local EVENT_T = { source = "", event = "", data = "", wid = "" }
local SPEC_T = { unique = "" }
local PAYLOAD_T = { spec = EMPTY_T, data = "" }


local function post_event(self, source, event, data, unique)
    EVENT_T.source = source
    EVENT_T.event = event
    EVENT_T.data = data
    EVENT_T.wid = self._worker_id or get_worker_id()

    local str = encode(EVENT_T)

    SPEC_T.unique = unique
    PAYLOAD_T.spec = SPEC_T
    PAYLOAD_T.data = str
    str = encode(PAYLOAD_T)
    EVENT_T.data = nil

    local len = #str
    if len > FRAME_MAX_PAYLOAD_LEN then
        return nil, "payload too big"
    end
    if len > self.opts.max_payload_len then
        return nil, "payload exceeds the limitation " ..
                    "(" .. self.opts.max_payload_len .. ")"
    end

    local wid = get_worker_id()
    if wid == -1 then
        return nil, "ngx.ipc reaches worker processes only (not the "
                    .. "privileged agent, nor init_by_lua*)"
    end

    if wid == self.opts.broker_id then
        broker_accept(self, str)
        return true
    end

    return self._outbox:push("broker", self._name_pub, str)
end


function _M:publish(target, source, event, data)
    assert(type(target) == "string" and target ~= "", "target is required")
    assert(type(source) == "string" and source ~= "", "source is required")
    assert(type(event) == "string" and event ~= "", "event is required")

    -- testing: local events only, handled in the call
    if self.opts.testing == true then
        log(DEBUG, "event published to 1 workers")
        self._callback:do_event({ source = source, event = event, data = data })
        return true
    end

    local ok, err
    if target == "current" then
        ok, err = self._queue:push({ source = source, event = event,
                                     data = data })
    else
        ok, err = post_event(self, source, event, data,
                             target ~= "all" and target or nil)
    end

    if not ok then
        return nil, "failed to publish event: " .. err
    end

    return true
end


function _M:subscribe(source, event, cb)
    assert(type(source) == "string" and source ~= "", "source is required")
    assert(type(event) == "string" and event ~= "", "event is required")
    assert(type(cb) == "function", "expected function, got: " .. type(cb))

    return self._callback:subscribe(source, event, cb)
end


function _M:unsubscribe(id)
    assert(type(id) == "string" and id ~= "", "id is required")

    return self._callback:unsubscribe(id)
end


function _M:is_ready()
    return self._connected
end


return _M
