-- ngx.ipc.events_callback: the subscriptions of one resty.events instance
-- in one worker, and the call of the handlers of an event, as
-- lua-resty-events' callback.lua does it.
--
-- Owns: subscribe/unsubscribe bookkeeping (ids are "1", "2", ... per
-- instance), the order of the calls ("*"/"*", then source/"*", then
-- source/event; within one pair, the order of subscription), the DEBUG
-- line "worker-events: handling event; ..." and the ERR line of a handler
-- that raised.

local cjson = require "cjson.safe"

local pairs = pairs
local type = type
local tostring = tostring
local setmetatable = setmetatable
local xpcall = xpcall
local traceback = debug.traceback

local ngx = ngx
local log = ngx.log
local ERR = ngx.ERR
local DEBUG = ngx.DEBUG

local encode = cjson.encode


local _M = {}
local _MT = { __index = _M }


function _M.new()
    return setmetatable({
        _lists = {},        -- [source][event] = { id, id, ... } in order
        _funcs = {},        -- [id] = handler, nil once unsubscribed
        _counter = 0,
        _dead = 0,          -- unsubscribed ids still in the lists
        _running = 0,       -- do_event calls in progress
    }, _MT)
end


-- Drops the ids of unsubscribed handlers from the lists, once they are
-- many and no handler runs (a list walked by a yielding handler keeps its
-- indexes).
local function compact(self)
    local funcs = self._funcs
    for _, by_source in pairs(self._lists) do
        for _, list in pairs(by_source) do
            local kept = 0
            local n = #list
            for i = 1, n do
                local id = list[i]
                if funcs[id] then
                    kept = kept + 1
                    list[kept] = id
                end
            end
            for i = kept + 1, n do
                list[i] = nil
            end
        end
    end
    self._dead = 0
end


function _M:subscribe(source, event, callback)
    local by_source = self._lists[source]
    if not by_source then
        by_source = {}
        self._lists[source] = by_source
    end

    local list = by_source[event]
    if not list then
        list = {}
        by_source[event] = list
    end

    if self._running == 0 and self._dead >= 64 then
        compact(self)
    end

    local count = self._counter + 1
    self._counter = count

    local id = tostring(count)
    self._funcs[id] = callback
    list[#list + 1] = id

    return id
end


function _M:unsubscribe(id)
    id = tostring(id)
    if self._funcs[id] then
        self._funcs[id] = nil
        self._dead = self._dead + 1
    end
end




local function describe(data)
    if type(data) == "table" then
        local str, err = encode(data)
        return str or tostring(err)
    end

    return tostring(data)
end


local function run_list(self, list, source, event, data, wid)
    if not list then
        return
    end

    local funcs = self._funcs

    -- what the list held when the event came (subscribe only appends and
    -- compacts no list while handlers run)
    for i = 1, #list do
        local handler = funcs[list[i]]
        if handler then
            local ok, err = xpcall(handler, traceback, data, event, source, wid)
            if not ok then
                log(ERR, "worker-events: event callback failed; source=",
                    source, ", event=", event, ", wid=", wid, " error='",
                    tostring(err), "', data=", describe(data))
            end
        end
    end
end


local function get_list(self, source, event)
    local by_source = self._lists[source]
    return by_source and by_source[event]
end


-- ev: { source =, event =, data =, wid = } (wid nil for a local event)
function _M:do_event(ev)
    local source, event, data, wid = ev.source, ev.event, ev.data, ev.wid

    log(DEBUG, "worker-events: handling event; source=", source,
        ", event=", event, ", wid=", wid)

    self._running = self._running + 1
    run_list(self, get_list(self, "*", "*"), source, event, data, wid)
    run_list(self, get_list(self, source, "*"), source, event, data, wid)
    run_list(self, get_list(self, source, event), source, event, data, wid)
    self._running = self._running - 1
end


return _M
