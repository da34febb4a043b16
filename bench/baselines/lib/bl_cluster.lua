-- Cluster benchmark endpoints (bench/cluster.py), written once against a
-- transport so that ngx_ipc's cluster broadcast and the Redis pub/sub
-- baseline are measured by the same code:
--   T.publish(name, data)        -> true | nil, err: every worker of every
--                                   node, this node's included
--   T.publish_many(name, list)   -> (optional) the same for a batch, all or none
--   T.on(name, handler)          -- handler(data, origin_node)
--   T.state()                    -> table of the link's state, for /state
--   T.done()                     -- (optional) end of a request's publishing
--
-- Endpoints (each bounded by &deadline=SECONDS, default 60; a failure is a
-- line `error <text>`; latency and flood take &pid=P to run in that worker):
--   /bench/cluster/latency?run=R&n=N    n pings, one at a time: this worker
--       publishes "lping" (payload: run and CLOCK_MONOTONIC us, 16 bytes);
--       every worker of every node records now - sent (one-way, same clock:
--       all nodes run on this machine); worker 0 of the responder node
--       answers "lpong"; this worker waits for it before the next ping.
--       Prints rtt_p50_us, rtt_p99_us, timeouts.
--   /bench/cluster/flood?run=R&n=N[&rate=MSGS_PER_S][&batch=B]   n 16-byte
--       "s" messages "<run 3><worker 1><seq 12>"; a refused publish is retried
--       (the message is then late, never skipped). Prints worker, pid, accepted,
--       retries, t0_us, t1_us, first_error.
--   /bench/cluster/result?run=R   what this node's workers received in run R:
--       recv <worker> <origin> <publisher worker> <count> <highest seq>
--            <duplicates or out of order> <jumps past a missing seq>
--            <t_first_us> <t_last_us>
--       lat <worker> <one-way us,...>
--   /bench/cluster/state          node, workers, then T.state() as lines
--
-- Receivers keep their counters in worker-local tables and copy them to the
-- shared dict every 20 ms (a per-message dict write would be measured too).
local ffi = require "ffi"
pcall(ffi.cdef, [[
    typedef struct { long tv_sec; long tv_nsec; } bl_timespec_t;
    int clock_gettime(int clk, bl_timespec_t *ts);
]])
local semaphore = require "ngx.semaphore"

local ngx = ngx
local fmt, concat, tonumber, tostring = string.format, table.concat, tonumber, tostring
local floor = math.floor

local ts = ffi.new("bl_timespec_t")
local function now_us()            -- CLOCK_MONOTONIC, microseconds, machine-wide
    ffi.C.clock_gettime(1, ts)
    return tonumber(ts.tv_sec) * 1e6 + tonumber(ts.tv_nsec) / 1e3
end

local WRAP = 1e13                   -- the 13 timestamp digits of a ping
local FLUSH_S = 0.02
local YIELD_EVERY = 500             -- a flood yields this often (the agent may be here)

local M = { now_us = now_us }
local T, res, node, responder
local wid

local recv = {}                     -- "run|origin|pubwid" -> state
local lat = {}                      -- run -> { one-way us, ... }
local dirty = false

local pp = { sema = semaphore.new(0), expect = nil }

local function flush(premature)
    if not dirty then return end
    dirty = false
    for key, s in pairs(recv) do
        if s.dirty then
            s.dirty = false
            res:set(fmt("r|%s|%d", key, wid),
                    fmt("%d %d %d %d %.0f %.0f", s.n, s.last, s.dup, s.jumps,
                        s.t_first, s.t_last))
        end
    end
    for run, samples in pairs(lat) do
        if samples.dirty then
            samples.dirty = false
            res:set(fmt("l|%s|%d", run, wid), concat(samples, ","))
        end
    end
end

local function on_s(data, origin)
    local run, pub, seq = data:sub(1, 3), data:sub(4, 4), tonumber(data:sub(5))
    local key = run .. "|" .. tostring(origin) .. "|" .. pub
    local s = recv[key]
    local t = now_us()
    if not s then
        s = { n = 0, last = 0, dup = 0, jumps = 0, t_first = t }
        recv[key] = s
    end
    s.n = s.n + 1
    if not seq or seq <= s.last then
        s.dup = s.dup + 1           -- a duplicate, or out of order
    else
        if seq > s.last + 1 then s.jumps = s.jumps + 1 end  -- some missing before it
        s.last = seq
    end
    s.t_last = t
    s.dirty, dirty = true, true
end

local function on_lping(data, origin)
    local run, sent = data:sub(1, 3), tonumber(data:sub(4))
    local d = now_us() % WRAP - sent
    if d < 0 then d = d + WRAP end
    local samples = lat[run]
    if not samples then
        samples = {}
        lat[run] = samples
    end
    samples[#samples + 1] = fmt("%.1f", d)
    samples.dirty, dirty = true, true
    if node == responder and wid == 0 then
        local ok, err = T.publish("lpong", data)
        if not ok then ngx.log(ngx.ERR, "lpong publish failed: ", err) end
    end
end

local function on_lpong(data)
    if data == pp.expect then pp.sema:post(1) end
end

-- in init_worker: transport, this node's name, results dict name, and
-- opts.responder: the node whose worker 0 answers pings (default "B")
function M.init(transport, node_name, dict_name, opts)
    T, node, res = transport, node_name, ngx.shared[dict_name]
    responder = opts and opts.responder or "B"
    wid = ngx.worker.id()
    T.on("s", on_s)
    T.on("lping", on_lping)
    T.on("lpong", on_lpong)
    T.on("hello", function(data, origin)    -- warm-up probe: count per worker
        res:incr(fmt("h|%s|%d", data, wid), 1, 0)
    end)
    local ok, err = ngx.timer.every(FLUSH_S, flush)
    if not ok then ngx.log(ngx.ERR, "bl_cluster: timer.every failed: ", err) end
end

-- &pid=P: only the worker with that PID may run it, others answer 409 at
-- once (the runner retries on a new connection; the listen has reuseport)
local function args()
    local a = ngx.req.get_uri_args()
    if a.pid and tonumber(a.pid) ~= ngx.worker.pid() then
        return ngx.exit(409)
    end
    local deadline = tonumber(a.deadline) or 60
    return a, now_us() + deadline * 1e6
end

local function done()
    if T.done then T.done() end
end

-- publish, retrying a refusal (queue full, Redis down) until the deadline
local function publish_retry(name, data, dl, stats)
    while true do
        local ok, err = T.publish(name, data)
        if ok then return true end
        stats.retries = stats.retries + 1
        stats.first_error = stats.first_error or err
        if now_us() > dl then return nil, "deadline while publishing: " .. tostring(err) end
        ngx.sleep(0.001)
    end
end

local function pct(sorted, p)
    return sorted[math.min(#sorted, floor(#sorted * p) + 1)]
end

function M.latency()
    local a, dl = args()
    local n, run = tonumber(a.n) or 1000, fmt("%03d", (tonumber(a.run) or 0) % 1000)
    local timeout = tonumber(a.timeout) or 1
    local stats, rtts, timeouts = { retries = 0 }, {}, 0
    while pp.sema:count() > 0 do pp.sema:wait(0) end   -- stale posts
    for i = 1, n do
        local t0 = now_us()
        local payload = fmt("%s%013d", run, floor(t0 % WRAP))
        pp.expect = payload
        local ok, err = publish_retry("lping", payload, dl, stats)
        if not ok then done() ngx.say("error ", err) return end
        ok = pp.sema:wait(timeout)
        if ok then
            rtts[#rtts + 1] = now_us() - t0
        else
            timeouts = timeouts + 1
            if timeouts > n / 10 + 3 then
                done() ngx.say("error ", timeouts, " pings of ", i, " got no pong") return
            end
        end
        if now_us() > dl then done() ngx.say("error deadline after ", i, " pings") return end
    end
    pp.expect = nil
    done()
    table.sort(rtts)
    ngx.say(fmt("rtt_p50_us %.1f", pct(rtts, 0.50) or -1))
    ngx.say(fmt("rtt_p99_us %.1f", pct(rtts, 0.99) or -1))
    ngx.say("timeouts ", timeouts)
    ngx.say("retries ", stats.retries)
end

function M.flood()
    local a, dl = args()
    local n, run = tonumber(a.n) or 1000, (tonumber(a.run) or 0) % 1000
    local rate, batch = tonumber(a.rate) or 0, tonumber(a.batch) or 1
    local stats = { retries = 0 }
    local prefix = fmt("%03d%1d", run, wid % 10)
    local seq, t0 = 0, now_us()
    local since_yield = 0
    local many = batch > 1 and T.publish_many
    while seq < n do
        if rate > 0 and seq >= rate * (now_us() - t0) / 1e6 then
            ngx.sleep(0.002)
            since_yield = 0
        else
            local ok, err
            if many then
                local list, k = {}, math.min(batch, n - seq)
                for j = 1, k do list[j] = fmt("%s%012d", prefix, seq + j) end
                while true do
                    ok, err = T.publish_many("s", list)
                    if ok then break end
                    stats.retries = stats.retries + 1
                    stats.first_error = stats.first_error or err
                    if now_us() > dl then break end
                    ngx.sleep(0.001)
                end
                if ok then seq = seq + k end
                since_yield = since_yield + k
            else
                ok, err = publish_retry("s", fmt("%s%012d", prefix, seq + 1), dl, stats)
                if ok then seq = seq + 1 end
                since_yield = since_yield + 1
            end
            if not ok then
                done()
                ngx.say("error after ", seq, " accepted: ", err or stats.first_error)
                return
            end
            if since_yield >= YIELD_EVERY then
                ngx.sleep(0.001)
                since_yield = 0
            end
        end
        if now_us() > dl then done() ngx.say("error deadline after ", seq, " accepted") return end
    end
    local t1 = now_us()
    done()
    ngx.say("worker ", wid)
    ngx.say("pid ", ngx.worker.pid())
    ngx.say("accepted ", seq)
    ngx.say("retries ", stats.retries)
    ngx.say(fmt("t0_us %.0f", t0))
    ngx.say(fmt("t1_us %.0f", t1))
    ngx.say("first_error ", stats.first_error or "-")
end

function M.result()
    local run = fmt("%03d", (tonumber(ngx.var.arg_run) or 0) % 1000)
    local out = {}
    for _, key in ipairs(res:get_keys(0)) do
        local kind, krun, rest = key:match("^(%a)|(%d%d%d)|(.*)$")
        if krun == run and kind == "r" then
            local origin, pub, w = rest:match("^(.*)|(%d)|(%d+)$")
            out[#out + 1] = fmt("recv %s %s %s %s", w, origin, pub, res:get(key))
        elseif krun == run and kind == "l" then
            out[#out + 1] = fmt("lat %s %s", rest, res:get(key))
        end
    end
    table.sort(out)
    out[#out + 1] = ""
    ngx.print(concat(out, "\n"))
end

function M.state()
    ngx.say("node ", node)
    ngx.say("workers ", ngx.worker.count())
    local st = T.state()
    local keys = {}
    for k in pairs(st) do keys[#keys + 1] = k end
    table.sort(keys)
    for _, k in ipairs(keys) do ngx.say(k, " ", tostring(st[k])) end
    -- warm-up probes seen here: hello <probe> <worker> <count>
    for _, key in ipairs(res:get_keys(0)) do
        local probe, w = key:match("^h|(.*)|(%d+)$")
        if probe then ngx.say("hello ", probe, " ", w, " ", res:get(key)) end
    end
end

-- /bench/cluster/hello?probe=P: one warm-up broadcast
function M.hello()
    local ok, err = T.publish("hello", ngx.var.arg_probe or "0")
    done()
    ngx.say(ok and "ok" or ("error " .. tostring(err)))
end

return M
