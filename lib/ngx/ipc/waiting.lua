-- ngx.ipc.waiting: sends and broadcasts with { wait = s }, which wait for
-- room when a destination's backlog is full, one object per worker.
--
-- They go first come, first served: only the first one tries, and the
-- module wakes it when a receiver frees space (ngx_ipc_ffi_wait_space: no
-- polling); the others wait for their turn, each on its own semaphore. A
-- waiting send whose light thread was killed while it waited (so it never
-- leaves) is passed over once it is overdue.

local ffi = require "ffi"
local errors = require "ngx.ipc.errors"
local semaphore = require "ngx.semaphore"

local C = ffi.C
local setmetatable = setmetatable
local ngx_now = ngx.now


local OK = errors.OK
local QUEUE_FULL = errors.QUEUE_FULL

local _M = {}
local mt = { __index = _M }


-- counts: this worker's Lua counters
function _M.new(counts)
    return setmetatable({ counts = counts, fifo = {}, first = 1, last = 0,
                          space = semaphore.new(0) }, mt)
end


-- Takes `me` out of the FIFO once it is done, and lets the next one try.
function _M.leave(self, me)
    me.done = true

    local fifo = self.fifo
    if fifo[self.first] ~= me then
        return              -- the first one is still waiting: nothing moves
    end

    while self.first <= self.last and fifo[self.first].done do
        fifo[self.first] = nil
        self.first = self.first + 1
    end

    if self.first <= self.last then
        fifo[self.first].sema:post(1)

    else
        self.first, self.last = 1, 0
    end
end


-- try(a, b, c) -> errors code, until it is not QUEUE_FULL or `timeout`
-- seconds passed (then errors.TIMEOUT). Returns the code, or text when the
-- semaphore failed.
function _M.send(self, timeout, try, a, b, c)
    local counts = self.counts

    if self.first > self.last then
        local rc = try(a, b, c)
        if rc ~= QUEUE_FULL then
            return rc
        end

        counts.refused = counts.refused - 1   -- not refused yet: it waits
    end

    local fifo = self.fifo
    local deadline = ngx_now() + timeout
    local me = { sema = semaphore.new(0), done = false, deadline = deadline }
    self.last = self.last + 1
    fifo[self.last] = me

    local rc
    local counted = false   -- a refusal the send itself counted
    while true do
        local head = fifo[self.first]
        if head ~= me and ngx_now() > head.deadline + 1 then
            -- its light thread was killed while it waited (it would have
            -- left by itself by now): it must not hold up the others
            self:leave(head)
        end

        if fifo[self.first] == me then
            rc = try(a, b, c)
            if rc ~= QUEUE_FULL then
                counted = true
                break
            end

            counts.refused = counts.refused - 1
        end

        -- (a semaphore wait under 1 ms returns at once without yielding,
        -- and ngx.now() would not move: that would spin)
        local left = deadline - ngx_now()
        if left < 0.001 then
            rc = errors.TIMEOUT
            break
        end

        local ok, err
        if fifo[self.first] == me then
            C.ngx_ipc_ffi_wait_space(self.space.sem)
            ok, err = self.space:wait(left)

        else
            -- until our turn, or until the first one is overdue
            local overdue = fifo[self.first].deadline + 1.001 - ngx_now()
            ok, err = me.sema:wait(overdue < left and overdue > 0.001
                                   and overdue or left)
        end

        if not ok and err ~= "timeout" then
            rc = err
            break
        end
    end

    if fifo[self.first] == me then
        C.ngx_ipc_ffi_wait_space(nil)
    end

    self:leave(me)

    if rc ~= OK and not counted then
        counts.refused = counts.refused + 1
    end

    return rc
end


return _M
