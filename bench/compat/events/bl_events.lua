-- The bench transport (bench/baselines/lib/bl_bench.lua's send, broadcast,
-- on) over resty.events' API: ngx.ipc.events loaded by its Kong name
-- (`ipc_events_compat on;`, nginx.conf), or Kong's lua-resty-events itself
-- when it is first on lua_package_path (theirs.conf).
--
-- Addressing. That API publishes to "all" workers, "current" (this one) or
-- a unique hash (some one worker, deduplicated): none is a given worker. So
-- every event goes to "all" and its source says whom it is for:
-- "bench.all", or "bench.<worker id>" that only that worker subscribes to,
-- as a resty.events user addressing one worker would write it. The
-- library's dispatch (by source and event) filters; the sender is the wid.
--
-- Flow control. publish() pushes back ("queue overflow") only on the way
-- to the broker; past it, the broker drops what its outbox or a worker's
-- queue cannot hold (max_queue_len), as lua-resty-events' broker does, and
-- a 50,000-event stream loses events. So each worker acknowledges what it
-- got from each sender (an "ack" event every ACK_N events or ACK_BYTES
-- bytes, cumulative counts) and send() says "queue full" (bl_bench sleeps
-- 1 ms and retries) while WIN_N events or WIN_BYTES bytes to that worker
-- are unacknowledged. Ping-pong and broadcast never have that many in
-- flight; only streams wait. Broadcasts are not counted.
local events = require "resty.events"

local M = {}
local ev
local my_id, my_source
local find, match, tonumber = string.find, string.match, tonumber

local WIN_N, WIN_BYTES = 4096, 8 * 1024 * 1024   -- below max_queue_len (10240)
local ACK_N, ACK_BYTES = 1024, 2 * 1024 * 1024   -- a quarter of the window

local sent_n, sent_b = {}, {}       -- [to]: events, bytes sent to `to`
local acked_n, acked_b = {}, {}     -- [to]: of those, acknowledged
local got_n, got_b = {}, {}         -- [from]: events, bytes got from `from`
local told_n, told_b = {}, {}       -- [from]: what our last ack to it said

local function ack(from)
    local n, b = got_n[from], got_b[from]
    local ok = ev:publish("all", "bench." .. from, "ack", n .. " " .. b)
    if ok then                      -- lost: the next ack carries the counts
        told_n[from], told_b[from] = n, b
    end
end

local function on_ack(data, _, _, from)
    local n, b = match(data, "^(%d+) (%d+)$")
    acked_n[from], acked_b[from] = tonumber(n), tonumber(b)
end

local function counted(handler)
    return function(data, _, source, from)
        if source == my_source then
            local n, b = (got_n[from] or 0) + 1, (got_b[from] or 0) + #data
            got_n[from], got_b[from] = n, b
            if n - (told_n[from] or 0) >= ACK_N
               or b - (told_b[from] or 0) >= ACK_BYTES
            then
                ack(from)
            end
        end
        handler(data, from)
    end
end

function M.init()
    ev = events.new({
        -- above the 1 MiB stream's payload and its encoding (default 64 KiB)
        max_payload_len = 2 * 1024 * 1024,
        -- lua-resty-events itself needs its broker's unix socket (theirs.conf
        -- sets it); on ngx_ipc it is optional and unused
        listening = rawget(_G, "BL_EVENTS_LISTENING"),
    })
    assert(ev:init_worker())
    my_id = ngx.worker.id()
    my_source = "bench." .. my_id
    ev:subscribe(my_source, "ack", on_ack)
end

-- lua-resty-events' broker socket's handler (theirs.conf)
function M.run()
    ev:run()
end

function M.on(name, handler)
    local cb = counted(handler)
    ev:subscribe("bench.all", name, cb)
    ev:subscribe(my_source, name, cb)
end

local function publish(source, name, data)
    local ok, err = ev:publish("all", source, name, data)
    if not ok and find(err, "queue overflow", 1, true) then
        return nil, "queue full"        -- bl_bench retries
    end
    return ok, err
end

function M.send(to, name, data)
    local n, b = sent_n[to] or 0, sent_b[to] or 0
    if n - (acked_n[to] or 0) >= WIN_N or b - (acked_b[to] or 0) >= WIN_BYTES then
        return nil, "queue full"
    end
    local ok, err = publish("bench." .. to, name, data)
    if ok then
        sent_n[to], sent_b[to] = n + 1, b + #data
    end
    return ok, err
end

function M.broadcast(name, data)
    return publish("bench.all", name, data)
end

return M
