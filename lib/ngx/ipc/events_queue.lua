-- ngx.ipc.events_queue: the events waiting for one worker's handlers (of
-- one ngx.ipc.events instance) and the light thread that runs them, one at
-- a time, in queue order (lua-resty-events' queue.lua and its event loop).
--
--   local q = queue.new(max_len, do_event)  -- do_event(ev) runs the handlers
--   ok, err = q:push(ev)                    -- nil, "queue overflow" when full
--   q:start()                               -- the thread (init_worker)
--
-- Owns: the bounded FIFO, the semaphore the thread waits on, and the
-- thread's visits to the event loop.

local semaphore = require "ngx.semaphore"

local assert = assert
local setmetatable = setmetatable

local ngx = ngx
local log = ngx.log
local ERR = ngx.ERR
local exiting = ngx.worker.exiting
local timer_at = ngx.timer.at


local POP_LIMIT = 2000   -- events per timer, then a new one
local YIELD_EVERY = 100  -- events between two visits to the event loop


local _M = {}
local _MT = { __index = _M }


function _M.new(max_len, do_event)
    return setmetatable({
        max_len = max_len,
        do_event = do_event,
        items = {},
        first = 1,
        last = 0,
        sema = assert(semaphore.new()),
        yield_sema = assert(semaphore.new()),
    }, _MT)
end


function _M:push(item)
    local last = self.last
    if last - self.first + 1 >= self.max_len then
        return nil, "queue overflow"
    end

    last = last + 1
    self.last = last
    self.items[last] = item
    self.sema:post()
    return true
end


local function pop(self)
    local ok, err = self.sema:wait(1)
    if not ok then
        return nil, err
    end

    local first = self.first
    if first > self.last then
        return nil, "queue is empty"
    end

    local item = self.items[first]
    self.items[first] = nil
    self.first = first + 1
    return item
end


-- One pass of the event loop for requests and timers: a zero-delay timer
-- posts the semaphore this thread waits on. (Not ngx.sleep(0): without
-- OpenResty's delayed-events patch it logs a warning every time.)
local function yield_to_loop(self)
    local sema = self.yield_sema
    if timer_at(0, function() sema:post() end) then
        sema:wait(1)
    end
end


local run

function _M:start()
    if exiting() then
        return
    end
    assert(timer_at(0, run, self))
end


run = function(premature, self)
    if premature then
        return
    end

    local count = 0
    while not exiting() do
        local ev, err = pop(self)
        if ev then
            self.do_event(ev)
            count = count + 1
            if count >= POP_LIMIT then
                break
            end
            if count % YIELD_EVERY == 0 then
                yield_to_loop(self)
            end

        elseif err ~= "timeout" then
            log(ERR, "event worker failed to process events (", err, ")")
            break
        end
    end

    self:start()
end


return _M
