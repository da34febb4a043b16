-- ngx.ipc.worker_events.order: the events a worker received, given back in
-- the order of their ids, the order every worker handles them in.
--
-- Owns: the received events not yet handled (by id), the id of the last
-- one given back, the highest id known to be taken, and the gap being
-- waited for. The ids come from one counter in the shared dict (post()
-- increments it, then broadcasts), so an event may arrive ahead of a
-- smaller id that another worker took a moment earlier: it waits for it.
-- A missing id is also looked up where the library would have stored it
-- ("events-data:<id>" in the dict; "" there: its poster gave it up, as
-- post() marks an id it could not broadcast); after `wait_max` seconds it is dropped
-- with the library's log line, and the next one goes on.

local setmetatable = setmetatable
local ngx = ngx
local log = ngx.log
local ERR = ngx.ERR
local now = ngx.now
local new_timer = ngx.timer.at

local KEY_DATA = "events-data:"

local _M = {}
local mt = { __index = _M }


-- wake(): called when a gap's wait is over, to handle what follows it
function _M.new(dict, wait_max, wake)
    return setmetatable({
        dict = dict, wait_max = wait_max, wake = wake,
        received = {}, last = 0, max_seen = 0,
        gap_id = nil, gap_deadline = 0, gap_expired = false,
    }, mt)
end


-- From now on, ids up to `last` are not this worker's (taken before it
-- configured).
function _M.start(self, last)
    self.last = last
    if last > self.max_seen then
        self.max_seen = last
    end
end


-- An id known to be taken, whose event may not have arrived.
function _M.see(self, id)
    if id > self.max_seen then
        self.max_seen = id
    end
end


-- A received event. False when its id is already behind.
function _M.add(self, id, json)
    if id <= self.last then
        return false
    end

    self.received[id] = json
    if id > self.max_seen then
        self.max_seen = id
    end
    return true
end


local function on_gap_timer(premature, self, id)
    if self.gap_id == id then
        self.gap_expired = true
    end
    if not premature then
        self.wake()
    end
end


-- The next event in id order: json, id ("" for an id given up or dropped),
-- or nil while the next id is awaited or there is none.
function _M.next(self)
    local id = self.last + 1
    if id > self.max_seen then
        return nil
    end

    local json = self.received[id]
    if json then
        self.received[id] = nil
    else
        json = self.dict:get(KEY_DATA .. id)
    end

    if json then
        self.last, self.gap_id = id, nil
        return json, id
    end

    if self.gap_id ~= id then
        self.gap_id, self.gap_expired = id, false
        self.gap_deadline = now() + self.wait_max
        new_timer(self.wait_max, on_gap_timer, self, id)
        return nil
    end

    if self.gap_expired or now() > self.gap_deadline then
        log(ERR, "worker-events: dropping event; waiting for event data ",
            "timed out, id: ", id)
        self.last, self.gap_id = id, nil
        return "", id
    end
end


return _M
