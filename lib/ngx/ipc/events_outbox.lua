-- ngx.ipc.events_outbox: the sends of one resty.events instance in one
-- worker, in order, held while their destination cannot take them.
--
-- Owns: where a send goes ("broker": the broker worker's current process;
-- "all": every worker, by ipc.broadcast; "one": one running worker chosen
-- at random), the cached ipc.pids() and when to refresh it, and the
-- backlog: a send that finds the broker not running (between its crash and
-- its respawn, or before it started) or its destination's queue full is
-- kept, and so is every later one (order is kept), up to max_queue_len,
-- and a timer retries them (ipc's `wait` where it can). This is what
-- lua-resty-events' publish queue and its broker's per-worker queues do
-- while a connection is down. Sends made before init_worker() are kept
-- the same way until it (start()): lua-resty-events queues them until its
-- worker connects, and sending would start ngx.ipc in this worker before
-- its handlers are there.

local random = math.random
local setmetatable = setmetatable

local ngx = ngx
local log = ngx.log
local ERR = ngx.ERR
local sleep = ngx.sleep
local exiting = ngx.worker.exiting
local timer_at = ngx.timer.at
local worker_count = ngx.worker.count

-- ngx.ipc, required in a worker on first use (not in init_by_lua*)
local send, broadcast, ipc_pids

local function load_ipc()
    local ipc = require "ngx.ipc"
    send, broadcast, ipc_pids = ipc.send, ipc.broadcast, ipc.pids
end


local RETRY_DELAY = 0.002       -- first pause when the broker is away
local RETRY_DELAY_MAX = 0.05    -- longest pause
local WAIT_OPTS = { wait = 1 }  -- a flush waits for room up to 1 s a try


local _M = {}
local _MT = { __index = _M }


-- broker_slot: the broker's ngx.worker.id(); max_len: how many sends the
-- backlog may hold.
function _M.new(broker_slot, max_len)
    return setmetatable({
        broker_slot = broker_slot,
        max_len = max_len,
        pids = nil,         -- ipc.pids(), refreshed when it proved stale
        first = 1,          -- the backlog: kinds[i], names[i], datas[i]
        last = 0,
        kinds = {},
        names = {},
        datas = {},
        flushing = false,
        started = false,    -- init_worker() ran: sends may go out
    }, _MT)
end


local function pids(self, fresh)
    local p = self.pids
    if fresh or not p then
        p = ipc_pids()
        self.pids = p
    end
    return p
end


-- A random running worker's PID, or nil.
local function any_pid(p)
    local n = #p
    local start = random(1, n)
    for k = 0, n - 1 do
        local pid = p[(start + k - 1) % n + 1]
        if pid then
            return pid
        end
    end
    return nil
end


-- One try: true, or nil and the error (retryable or not), and whether a
-- retry may succeed.
local function try(self, kind, name, data, opts)
    if not send then
        load_ipc()
    end

    if kind == "all" then
        local ok, err = broadcast(name, data, opts)
        return ok, err, err == "queue full" or err == "timeout"
    end

    for attempt = 1, 2 do
        local p = pids(self, attempt == 2)
        local pid
        if kind == "broker" then
            pid = p[self.broker_slot + 1]
        else
            pid = any_pid(p)
        end

        if pid then
            local ok, err = send(pid, name, data, opts)
            if ok or err ~= "no such worker" then
                return ok, err, err == "queue full" or err == "timeout"
            end
        end
    end

    return nil, "no such worker", true
end


local flush


local function start_flush(self)
    if self.flushing or exiting() then
        return
    end

    local ok, err = timer_at(0, flush, self)
    if not ok then
        log(ERR, "resty.events: failed to start the retry timer: ", err)
        return
    end

    self.flushing = true
end


-- Sends kind/name/data after what is held: true, or nil and the error.
function _M:push(kind, name, data)
    if self.first > self.last and self.started then
        local ok, err, retry = try(self, kind, name, data)
        if ok or not retry then
            return ok, err
        end
    end

    if self.last - self.first + 1 >= self.max_len then
        return nil, "queue overflow"
    end

    local i = self.last + 1
    self.last = i
    self.kinds[i], self.names[i], self.datas[i] = kind, name, data
    if self.started then
        start_flush(self)
    end
    return true
end


-- init_worker(): what was kept before goes out, in order.
function _M:start()
    self.started = true
    if self.first <= self.last then
        start_flush(self)
    end
end


-- How many sends are held.
function _M:held()
    return self.last - self.first + 1
end


flush = function(premature, self)
    if premature then
        self.flushing = false
        return
    end

    local delay = RETRY_DELAY
    while self.first <= self.last and not exiting() do
        local i = self.first
        local kind, name, data = self.kinds[i], self.names[i], self.datas[i]
        local ok, err, retry = try(self, kind, name, data, WAIT_OPTS)

        if ok or not retry then
            if not ok then
                log(ERR, "resty.events: failed to send event (", err, ")")
            end
            self.kinds[i], self.names[i], self.datas[i] = nil, nil, nil
            self.first = i + 1
            delay = RETRY_DELAY

        elseif err ~= "timeout" then
            -- the destination is away (or the queue full while `wait`
            -- could not be used): pause, bounded, then look again
            sleep(delay)
            delay = delay * 2 < RETRY_DELAY_MAX and delay * 2
                    or RETRY_DELAY_MAX
        end
    end

    self.flushing = false       -- one flush at a time: order is kept
end


-- How many workers a broadcast is addressed to.
function _M.workers()
    return worker_count()
end


return _M
