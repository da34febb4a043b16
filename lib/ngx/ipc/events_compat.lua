-- ngx.ipc.events_compat: the public API of `resty.events.compat` (the
-- lua-resty-worker-events 1.0 style functions of Kong/lua-resty-events)
-- over ngx.ipc.events.
--
--   local ev = require "ngx.ipc.events_compat"
--   ev.configure(opts)                -- init_worker_by_lua*: new + init_worker
--   ev.register(cb, source, event1, event2, ...)  -- nil source/event: "*"
--   ev.post(source, event, data, unique)  -- "done", or nil, err
--   ev.post_local(source, event, data)    -- "done", or nil, err
--   ev.unregister(cb); ev.poll(); ev.configured(); ev.run()
--
-- Owns: the mapping of these functions onto one ngx.ipc.events instance,
-- and each callback's subscription ids (for unregister).

local events = require "ngx.ipc.events"

local ipairs = ipairs

local ngx = ngx
local log = ngx.log
local DEBUG = ngx.DEBUG
local sleep = ngx.sleep


local ev            -- the instance, made by configure()
local handlers = {} -- [callback] = { id, ... }
local configured


local _M = {
    _VERSION = events._VERSION,
}


-- Events arrive by themselves; kept for code written for worker-events.
function _M.poll()
    sleep(0.002)

    log(DEBUG, "worker-events: emulate poll method")

    return "done"
end


function _M.configure(opts)
    ev = events.new(opts)

    local ok, err = ev:init_worker()
    if not ok then
        return nil, err
    end

    configured = true

    return true
end


function _M.configured()
    return configured
end


function _M.run()
    return ev:run()
end


function _M.post(source, event, data, unique)
    local ok, err = ev:publish(unique or "all", source, event, data)
    if not ok then
        return nil, err
    end

    return "done"
end


function _M.post_local(source, event, data)
    local ok, err = ev:publish("current", source, event, data)
    if not ok then
        return nil, err
    end

    return "done"
end


function _M.register(callback, source, event, ...)
    local ids = handlers[callback]
    if not ids then
        ids = {}
        handlers[callback] = ids
    end

    for _, e in ipairs({ event or "*", ... }) do
        ids[#ids + 1] = ev:subscribe(source or "*", e or "*", callback)
    end
end


_M.register_weak = _M.register


-- Removes every subscription of callback.
function _M.unregister(callback)
    local ids = handlers[callback]
    if not ids then
        return
    end

    handlers[callback] = nil

    for _, id in ipairs(ids) do
        ev:unsubscribe(id)
    end
end


return _M
