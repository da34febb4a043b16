-- ngx.ipc.worker_events: the public API of Kong/lua-resty-worker-events
-- (`resty.worker.events` 2.0.1) over ngx.ipc, for code that uses it
-- unchanged: configure, configured, post, post_local, register,
-- register_weak, unregister, poll, event_list, events.
--
-- Owns: this worker's event order: the local queue (post_local), the
-- events received and not yet handled (by id), the id of the last one
-- handled, the gap being waited for, the interval timer.
--
-- How an event travels. post() encodes { source, event, data, unique, pid }
-- with cjson as the library does, takes the next id from the counter the
-- library keeps in its shared dict ("events-last", one incr), and
-- broadcasts "<id> <json>" to every worker, itself included. Each worker
-- handles the events by id, one after the other: an event that arrives
-- ahead of a smaller id waits for it, at most `wait_max` seconds, then the
-- missing one is dropped with the library's log line. So every worker
-- handles every publisher's events in one order, the counter's; one
-- publisher's order is ngx.ipc's already, and the counter adds one shm
-- increment per post. Nothing polls: the ipc handler runs the callbacks.
-- The `interval` timer only watches the counter for ids that were taken
-- and never broadcast (then also read from "events-data:<id>" in the dict,
-- where the library would have put them) and posts `stopping` at exit.
-- post_local() events are handled at the next poll, ahead of the received
-- ones; a zero-delay timer makes that poll when no one else does.

local ipc = require "ngx.ipc"
local handlers = require "ngx.ipc.worker_events.handlers"
local order = require "ngx.ipc.worker_events.order"
local options = require "ngx.ipc.worker_events.options"
local wire = require "ngx.ipc.worker_events.wire"

local assert = assert
local tonumber = tonumber
local tostring = tostring
local type = type
local find = string.find
local sub = string.sub
local traceback = debug.traceback
local ngx = ngx
local log = ngx.log
local ERR = ngx.ERR
local get_pid = ngx.worker.pid
local get_phase = ngx.get_phase
local new_timer = ngx.timer.at

-- the library's keys in the shared dict
local KEY_LAST_ID = "events-last"   -- id of the last event posted
local KEY_DATA    = "events-data:"  -- "" there: an id its poster gave up

local GIVEN_UP_TTL = 60   -- seconds a given-up id's mark stays in the dict

local MESSAGE = "ngx.ipc.worker_events"   -- the ipc message name

local _dict             -- the shared dict (nil: not configured)
local _pid = get_pid()
local _opts = {}        -- configure()'s options in force (wait_interval and
                        -- shm_retries are checked and kept, as the library
                        -- does, and unused: nothing polls, nothing is
                        -- stored in the dict)
local _callbacks = handlers.new()
local _order            -- ngx.ipc.worker_events.order, once configured
local _local_queue = {}
local _local_timer      -- a timer to handle the local queue is pending
local _timer_running    -- the interval timer is armed
local _busy             -- events are being handled (callbacks may yield)
local _receiving        -- the ipc handler is registered in this process

local _M = { _VERSION = "2.0.1" }


local function get_event_id()
    return _dict:get(KEY_LAST_ID) or 0
end


local function handle_json(id, json)
    local d = wire.decode(json, id, _dict, _pid, _opts.unique_timeout)
    if d then
        return handlers.run(_callbacks, d.source, d.event, d.data, d.pid)
    end
end


-- Handles what is ready: the local queue first, whenever it holds
-- something, then the received events in id order. One caller at a time:
-- while a callback yields, the others only add to the queues.
local function drain()
    if _busy then
        return "recursive"
    end

    _busy = true
    while true do
        if _local_queue[1] then
            local queue = _local_queue
            _local_queue = {}
            for i = 1, #queue do
                local e = queue[i]
                handlers.run(_callbacks, e.source, e.event, e.data, nil)
            end

        elseif not _order then
            break

        else
            local json, id = _order:next()
            if not json then
                break
            end
            if json ~= "" then
                handle_json(id, json)
            end
        end
    end
    _busy = nil

    return "done"
end


-- the ipc handler: "<id> <json>"
local function on_message(data)
    if not _order then
        return      -- posted before this worker configured: not its event
    end

    -- Only an id the counter gave out can be waited for: any other (a
    -- message this module did not send) would hold every later event up,
    -- wait_max per id up to it.
    local sp = find(data, " ", 1, true)
    local id = sp and tonumber(sub(data, 1, sp - 1))
    if not id or id < 1 or id % 1 ~= 0
       or id > (_dict:get(KEY_LAST_ID) or 0)
    then
        return log(ERR, "worker-events: malformed event message")
    end

    if _order:add(id, sub(data, sp + 1)) then
        drain()
    end
end


local function receive()
    if not _receiving and get_phase() ~= "init" then
        ipc.receive(MESSAGE, on_message)
        _receiving = true
    end
end


-- Handles the local events, then the received ones, in order. "done", or
-- "recursive" when called while events are being handled (from a
-- callback, or while one yields).
_M.poll = function()
    if _busy then
        return "recursive"
    end

    if _order then
        _order:see(get_event_id())  -- ids taken and not broadcast
    end

    return drain()
end


local function on_local_timer()
    _local_timer = nil
    drain()
end


_M.post = function(source, event, data, unique)
    local named, err = options.check_names(source, event)
    if not named then
        return nil, err
    end

    local json
    json, err = wire.encode(source, event, data, unique, _pid)

    local id
    if json then
        if not _dict then
            err = "not configured"
        else
            id, err = _dict:incr(KEY_LAST_ID, 1, 0)
        end
    end

    if id then
        local ok
        ok, err = ipc.broadcast(MESSAGE, id .. " " .. json)
        if ok then
            return true
        end
        -- the id is taken: tell the others not to wait for it, through the
        -- dict (their queues may be what is full); if even this fails,
        -- they wait wait_max and log that they drop it
        _dict:set(KEY_DATA .. id, "", GIVEN_UP_TTL)
    end

    err = 'failed posting event "' .. event .. '" by "' .. source .. '"; '
          .. tostring(err)
    log(ERR, "worker-events: ", traceback(err))
    return nil, err
end


_M.post_local = function(source, event, data)
    local named, err = options.check_names(source, event)
    if not named then
        return nil, err
    end

    _local_queue[#_local_queue + 1] = {
        source = source, event = event, data = data,
    }

    if not _local_timer and not _busy then
        _local_timer = new_timer(0, on_local_timer)
    end

    return true
end


-- register(callback, source?, event...): nothing returned, as the library
_M.register = function(callback, source, ...)
    handlers.register(_callbacks, callback, "strong", source, ...)
end


_M.register_weak = function(callback, source, ...)
    handlers.register(_callbacks, callback, "weak", source, ...)
end


-- true if the callback was removed at least once
_M.unregister = function(callback, source, ...)
    return handlers.unregister(_callbacks, callback, source, ...)
end


local function on_interval(premature)
    if premature then
        _timer_running = nil
        _M.post(_M.events._source, _M.events.stopping)
        return
    end

    local res, err = _M.poll()
    if not res then
        log(ERR, "worker-events: timer-poll returned: ", err)
    end

    if _opts.interval == 0 then
        _timer_running = nil
        return
    end

    local ok
    ok, err = new_timer(_opts.interval, on_interval)
    if not ok then
        _timer_running = nil
        if err ~= "process exiting" then
            log(ERR, "worker-events: failed to create timer: ", err)
        end
    end
end


-- configure(opts): shm (required the first time), timeout, interval,
-- wait_interval, wait_max, shm_retries, debug; the library's checks, in
-- its order, with its messages. true, or nil, err.
_M.configure = function(opts)
    assert(type(opts) == "table", "Expected a table, got " .. type(opts))

    local started = _dict ~= nil

    if get_pid() ~= _pid then
        -- a forked process (required in init_by_lua): start again
        _pid = get_pid()
        _opts = {}
        _callbacks = handlers.new()
        started = nil
    end

    local shm = opts.shm
    if shm and _dict ~= nil then
        return nil, "Already started, cannot change shm"
    end
    if not (shm or _dict) then
        return nil, '"shm" option required to start'
    end

    local dict = ngx.shared[shm]
    if not dict then
        return nil, 'shm "' .. tostring(shm) .. '" not found'
    end

    local checked, err = options.check(opts, _opts)
    if not checked then
        return nil, err
    end

    _opts = checked
    _dict = dict

    if not _order then
        _order = order.new(dict, _opts.wait_max, drain)
        _order:start(get_event_id())
    else
        _order.wait_max = _opts.wait_max
    end

    receive()

    if not started then
        -- we're live, let's celebrate it with an event (the library's words)
        local posted
        posted, err = _M.post(_M.events._source, _M.events.started)
        if not posted then
            return nil, err
        end
    end

    if not _timer_running and _opts.interval > 0 then
        local armed
        armed, err = new_timer(_opts.interval, on_interval)
        if not armed then
            if err == "process exiting" then
                _M.post(_M.events._source, _M.events.stopping)
            end
            err = "failed to create timer: " .. tostring(err)
            log(ERR, "worker-events: ", err)
            return nil, err
        end
        _timer_running = true
    end

    _M.poll()

    if opts.debug then
        _M._callbacks = _callbacks
    end

    return true
end


-- true once configured, ready to post and receive events
_M.configured = function()
    return _dict ~= nil
end


_M.event_list = options.event_list


_M.events = _M.event_list(
    "resty-worker-events",      -- the source of this module's own events
    "started",                  -- posted by configure()
    "stopping")                 -- posted when the worker exits


receive()

return _M
