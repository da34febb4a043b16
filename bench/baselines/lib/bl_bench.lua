-- Benchmark logic shared by the baselines (bench/baselines/*/nginx.conf).
-- It is written against a tiny transport interface, implemented by
-- bl_shdict.lua (shared-dict polling, the lua-resty-worker-events way) and
-- bl_broker.lua (unix-socket broker, the lua-resty-events way):
--   T.send(worker_id, name, data)  -> true | nil, err ("queue full"/"no memory" = retry later)
--   T.broadcast(name, data)        -> every worker, the sender included
--   T.on(name, handler)            -- handler(data, sender_worker_id)
local ffi = require "ffi"
pcall(ffi.cdef, [[
    typedef struct { long tv_sec; long tv_nsec; } bl_timespec_t;
    int clock_gettime(int clk, bl_timespec_t *ts);
]])
local ts = ffi.new("bl_timespec_t")
local function now_us()            -- CLOCK_MONOTONIC, microseconds
    ffi.C.clock_gettime(1, ts)
    return tonumber(ts.tv_sec) * 1e6 + tonumber(ts.tv_nsec) / 1e3
end

local semaphore = require "ngx.semaphore"
local fmt = string.format

local M = { now_us = now_us }
local T, res

local PING16 = "0123456789abcdef"

local bodies = {}
local function body(size)          -- the deterministic stream payload
    local b = bodies[size]
    if not b then
        b = string.rep(PING16, math.ceil(size / 16)):sub(1, size)
        bodies = { [size] = b }     -- keep only the latest size
    end
    return b
end

-- per-worker state touched by handlers
local pp_sema = semaphore.new(0)
local pp_expect, pp_seq = nil, 0            -- 16-byte payload = sequence number
local st = { got = 0, ok = 0, want = -1, body = "", run = "" }
local bc = { run = nil, count = 0, want = 0, sema = nil }

-- send with retry while the transport pushes back; bounded by deadline
local function send_retry(to, name, data, deadline_us)
    while true do
        local ok, err = T.send(to, name, data)
        if ok then return true end
        if err ~= "queue full" and err ~= "no memory" then return nil, err end
        if now_us() > deadline_us then return nil, "deadline while sending: " .. err end
        ngx.sleep(0.001)
    end
end

function M.init(transport, results_dict)
    T = transport
    res = ngx.shared[results_dict]

    -- ping-pong
    T.on("ping", function(data, from) T.send(from, "pong", data) end)
    T.on("pong", function(data)                 -- only the awaited one counts
        if data == pp_expect then pp_sema:post(1) end
    end)

    -- stream: "ss" carries "run n size", then n "s" messages
    T.on("ss", function(data)
        local run, n, size = data:match("^(%S+) (%d+) (%d+)$")
        st.run, st.want, st.got, st.ok = run, tonumber(n), 0, 0
        st.body = body(tonumber(size))
        if st.want == 0 then res:set("st_end:" .. run, now_us()) end
    end)
    T.on("s", function(data)
        st.got = st.got + 1
        if data == st.body then st.ok = st.ok + 1 end
        if st.got == st.want then
            res:set("st_ok:" .. st.run, st.ok)
            res:set("st_end:" .. st.run, now_us())
        end
    end)

    -- broadcast: data is the run id
    T.on("bping", function(data, from)
        if from ~= ngx.worker.id() then T.send(from, "bpong", data) end
    end)
    T.on("bpong", function(data, from)
        if data ~= bc.run then return end           -- late pong of an old run
        bc.count = bc.count + 1
        if bc.count == bc.want then
            bc.t1 = now_us()
            bc.sema:post(1)
        elseif bc.count < bc.want then
            T.send(from, "bping", data)
        end
    end)
end

local function args()
    local a = ngx.req.get_uri_args()
    local deadline = tonumber(a.deadline) or 60
    return a, now_us() + deadline * 1e6, deadline
end

local function other()
    return (ngx.worker.id() + 1) % ngx.worker.count()
end

local function pct(sorted, p)
    return sorted[math.min(#sorted, math.floor(#sorted * p) + 1)]
end

function M.pingpong()
    local a, dl = args()
    local n = tonumber(a.n) or 1000
    if n < 1 then ngx.say("error n must be >= 1") return end
    local to, rtts = other(), {}
    while pp_sema:count() > 0 do pp_sema:wait(0) end  -- stale posts
    for i = 1, n do
        pp_seq = pp_seq + 1
        pp_expect = string.format("%016d", pp_seq)
        local t0 = now_us()
        local ok, err = send_retry(to, "ping", pp_expect, dl)
        if not ok then ngx.say("error ", err) return end
        local left = (dl - now_us()) / 1e6
        if left <= 0 then ngx.say("error deadline after ", i - 1, " round trips") return end
        ok = pp_sema:wait(left)
        if not ok then ngx.say("error deadline after ", i - 1, " round trips") return end
        rtts[i] = now_us() - t0
    end
    table.sort(rtts)
    ngx.say(fmt("p50_us %.1f", pct(rtts, 0.50)))
    ngx.say(fmt("p99_us %.1f", pct(rtts, 0.99)))
end

function M.stream()
    local a, dl = args()
    local n, size = tonumber(a.n) or 1000, tonumber(a.size) or 16
    if n < 1 or size < 0 then ngx.say("error bad n or size") return end
    local to, b = other(), body(size)
    local run = ngx.worker.pid() .. "-" .. math.floor(now_us())
    local ok, err = send_retry(to, "ss", fmt("%s %d %d", run, n, size), dl)
    if not ok then ngx.say("error ", err) return end
    local t0 = now_us()
    for _ = 1, n do
        ok, err = send_retry(to, "s", b, dl)
        if not ok then ngx.say("error ", err) return end
    end
    local t1
    while true do
        t1 = res:get("st_end:" .. run)
        if t1 then break end
        if now_us() > dl then ngx.say("error deadline before the receiver got all messages") return end
        ngx.sleep(0.001)
    end
    local verified = res:get("st_ok:" .. run) or 0
    res:delete("st_end:" .. run) res:delete("st_ok:" .. run)
    local secs = math.max(t1 - t0, 1) / 1e6
    ngx.say(fmt("msgs_per_s %.1f", n / secs))
    ngx.say(fmt("bytes_per_s %.1f", n * size / secs))
    ngx.say(fmt("verified %d", verified))
end

function M.broadcast()
    local a, dl = args()
    local n = tonumber(a.n) or 1000
    if n < 1 then ngx.say("error n must be >= 1") return end
    if ngx.worker.count() < 2 then ngx.say("error needs at least 2 workers") return end
    if bc.run then ngx.say("error a broadcast run is already active in this worker") return end
    local run = ngx.worker.pid() .. "-" .. math.floor(now_us())
    bc.run, bc.count, bc.want, bc.sema, bc.t1 = run, 0, n, semaphore.new(0), nil
    local t0 = now_us()
    local ok, err = T.broadcast("bping", run)
    if not ok then bc.run = nil ngx.say("error ", err) return end
    ok = bc.sema:wait((dl - now_us()) / 1e6)
    local count = bc.count
    bc.run = nil
    if not ok then ngx.say("error deadline after ", count, " round trips") return end
    local secs = (bc.t1 - t0) / 1e6
    ngx.say(fmt("seconds %.6f", secs))
    ngx.say(fmt("alerts_per_s %.1f", 2 * n / secs))  -- ping + pong per round trip
end

return M
