"""Sends that wait for room: ipc.send/broadcast(..., { wait = seconds })
(issue 11, part 2).

A producer faster than its consumer streams 10 million small messages and
2,000 of 1 MiB with `wait`: all arrive, in order, the sender's memory stays
bounded, and the log holds no warning (no ngx.sleep(0) loop).  Several
light threads of one worker waiting at once go out in arrival order; a
wait that runs out returns "timeout" with no side effect.

The receivers check order and content themselves and keep counters in
their own Lua state, which the test reads over HTTP at the end: nothing is
pushed per message.
"""

import re
import time

from harness import wait_for
from ipc_lua import GATED

# Worker 0 receives; "s" carries 16 bytes, its sequence number in decimal;
# "big" carries 1 MiB: the sequence number in 8 decimal digits, then BODY.
RECEIVER = """
    local S = T.state
    S.s_n, S.s_bad, S.big_n, S.big_bad = 0, 0, 0, 0
    local body = ("0123456789abcdef"):rep(65536):sub(9)
    S.body = body
    ipc.receive("s", function(data)
        local n = S.s_n + 1
        S.s_n = n
        if #data ~= 16 or tonumber(data) ~= n then
            S.s_bad = S.s_bad + 1
        end
    end)
    ipc.receive("big", function(data)
        local n = S.big_n + 1
        S.big_n = n
        if #data ~= 1048576 or tonumber(data:sub(1, 8)) ~= n
           or data:sub(9) ~= body then
            S.big_bad = S.big_bad + 1
        end
    end)
"""


def vm_kib(pid, field):
    """VmRSS / VmHWM of a process, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


def no_warnings(n, allow=()):
    """No [warn] line but the expected ones (regexes)."""
    warns = [l for l in n.error_log().splitlines() if "[warn]" in l
             and not any(re.search(p, l) for p in allow)]
    assert warns == [], warns[:10]


def run_stream(n, code, timeout):
    """Runs `code` in a timer of worker 1 (the sender) and waits for it to
    store its result in "stream_done"."""
    n.lua(f"""
        ngx.timer.at(0, function()
            local ok, err = pcall(function() {code} end)
            T.set("stream_done", ok and "ok" or tostring(err))
        end)
    """, worker=1)
    return wait_for(lambda: n.lua('return T.get("stream_done")')[0], timeout=timeout,
                    interval=0.2, what="the stream to end")


def test_stream_10_million_small_messages(nginx):
    count = 10_000_000
    n = nginx(workers=2, main="ipc_queue_limit 256k; ipc_ring_size 64k;",
              init_worker=RECEIVER)
    sender = n.pids[1]
    rss_before = vm_kib(sender, "VmRSS")

    # Without wait the producer outruns the consumer: "queue full".
    (refused,) = n.lua("""
        local pid, refused = ipc.pids()[1], 0
        for i = 1, 200000 do
            local ok, err = ipc.send(pid, "s", "0123456789abcdef")
            if not ok then
                assert(err == "queue full", err)
                refused = refused + 1
            end
        end
        return refused
    """, worker=1)
    assert refused > 0, "the limit was never reached: the test proves nothing"
    wait_for(lambda: n.lua("return T.state.s_n", worker=0)[0] == 200000 - refused,
             timeout=30, what="the probe received")
    n.lua("T.state.s_n, T.state.s_bad = 0, 0", worker=0)
    (refused_before,) = n.lua("return ipc.stats().refused", worker=1)

    started = time.monotonic()
    result = run_stream(n, f"""
        local pid = ipc.pids()[1]
        local fmt = string.format
        local stats = ipc.stats
        local send = ipc.send
        local opts = {{ wait = 10 }}
        local max_queued = 0
        for i = 1, {count} do
            local ok, err = send(pid, "s", fmt("%016d", i), opts)
            if not ok then error("send " .. i .. ": " .. err) end
            if i % 100000 == 0 then
                local q = stats().queued_bytes
                if q > max_queued then max_queued = q end
            end
        end
        T.set("max_queued", max_queued)
    """, timeout=180)
    assert result == "ok", result

    def received():
        (got,) = n.lua("return T.state.s_n", worker=0)
        return got == count

    wait_for(received, timeout=60, interval=0.2, what=f"{count} messages")
    elapsed = time.monotonic() - started
    (bad,) = n.lua("return T.state.s_bad", worker=0)
    assert bad == 0, f"{bad} messages out of order or wrong"
    (st,) = n.lua("return ipc.stats()", worker=1)
    assert st["refused"] == refused_before, "a waiting send counted as refused"
    assert st["queued_bytes"] == 0
    (max_queued,) = n.lua('return T.get("max_queued")')
    # the backlog holds at most the limit plus one message (plus its header)
    assert max_queued <= 256 * 1024 + 64, max_queued
    rss_after = vm_kib(sender, "VmHWM")
    assert rss_after - rss_before < 96 * 1024, \
        f"sender's peak RSS grew by {(rss_after - rss_before) >> 10} MiB"
    no_warnings(n)
    print(f"10M x 16 B with wait: {elapsed:.1f} s, "
          f"{count / elapsed / 1e6:.2f} M msgs/s end to end")


def test_stream_2000_messages_of_1_mib(nginx):
    count = 2000
    n = nginx(workers=2, main="ipc_queue_limit 2m; ipc_ring_size 1m;",
              init_worker=RECEIVER)
    sender = n.pids[1]
    rss_before = vm_kib(sender, "VmRSS")
    result = run_stream(n, f"""
        local pid = ipc.pids()[1]
        local body = T.state.body
        local max_queued = 0
        for i = 1, {count} do
            local ok, err = ipc.send(pid, "big", string.format("%08d", i) .. body,
                                     {{ wait = 10 }})
            if not ok then error("send " .. i .. ": " .. err) end
            local q = ipc.stats().queued_bytes
            if q > max_queued then max_queued = q end
            if i % 64 == 0 then collectgarbage("step", 4096) end
        end
        T.set("max_queued", max_queued)
    """, timeout=120)
    assert result == "ok", result
    wait_for(lambda: n.lua("return T.state.big_n", worker=0)[0] == count,
             timeout=60, interval=0.1, what=f"{count} big messages")
    assert n.lua("return T.state.big_bad", worker=0) == [0]
    (max_queued,) = n.lua('return T.get("max_queued")')
    assert 0 < max_queued <= 2 * 1024 * 1024 + (1 << 20) + 64, max_queued
    (st,) = n.lua("return ipc.stats()", worker=1)
    assert st["refused"] == 0 and st["sent"] == count
    growth = vm_kib(sender, "VmHWM") - rss_before
    assert growth < 160 * 1024, f"sender's peak RSS grew by {growth >> 10} MiB"
    no_warnings(n)


def test_broadcast_waits_too(nginx):
    n = nginx(workers=2, main="ipc_queue_limit 64k; ipc_ring_size 64k;",
              init_worker=RECEIVER)
    count = 20000
    result = run_stream(n, f"""
        local data = ("x"):rep(1000)
        for i = 1, {count} do
            local ok, err = ipc.broadcast("b", data, {{ include_self = false, wait = 10 }})
            if not ok then error("broadcast " .. i .. ": " .. err) end
        end
    """, timeout=60)
    assert result == "ok", result
    (st,) = n.lua("return ipc.stats()", worker=1)
    assert st["refused"] == 0 and st["sent"] == count
    # worker 0 has no handler for "b": each one is counted there (unhandled)
    wait_for(lambda: n.lua("return ipc.stats().unhandled", worker=0)[0] == count,
             timeout=30, what="the broadcasts received")
    no_warnings(n, allow=[r'ngx_ipc: no handler for message "b"'])


# Worker 0 is a gated receiver (see ipc_lua.GATED); worker 1 fills its
# backlog for worker 0 until "queue full", then starts light threads that
# each send one message with wait, one after the other.
FILL = """
    -- until "queue full" holds after a pause: by then the receiver's reader
    -- has stopped taking messages (its queue for the gated handler is full)
    local pid = ipc.pids()[1]
    local data = ("f"):rep(16 * 1024)
    local total, added, rounds = 0, -1, 0
    while added ~= 0 do
        added = 0
        while true do
            local ok, err = ipc.send(pid, "q", data)
            if not ok then assert(err == "queue full", err) break end
            added = added + 1
            assert(added < 100000, "the backlog never filled")
        end
        total, rounds = total + added, rounds + 1
        assert(rounds < 200, "the receiver never stopped taking messages")
        ngx.sleep(0.02)
    end
    return total
"""


def test_waiting_light_threads_go_first_come_first_served(nginx):
    n = nginx(workers=2, main="ipc_queue_limit 64k; ipc_ring_size 16k;",
              init_worker=GATED)
    (filled,) = n.lua(FILL, worker=1)
    # 8 threads, started in order; each waits (the backlog is full)
    n.lua("""
        local pid = ipc.pids()[1]
        T.state.done, T.state.started = {}, 0
        for k = 1, 8 do
            ngx.timer.at(0, function()
                T.state.started = T.state.started + 1
                local ok, err = ipc.send(pid, "msg", "t" .. k, { wait = 20 })
                table.insert(T.state.done, k .. ":" .. tostring(ok or err))
            end)
        end
    """, worker=1)
    wait_for(lambda: n.lua("return T.state.started", worker=1) == [8],
             what="the 8 light threads to start")
    # they all wait: nothing is done while the gate is shut
    assert n.lua("return #T.state.done", worker=1) == [0]
    # a plain send meanwhile is refused, a short wait times out
    (timeout_res,) = n.lua("""
        local pid = ipc.pids()[1]
        local before = ipc.stats().refused
        local ok, err = ipc.send(pid, "msg", "late", { wait = 0.05 })
        return { ok = ok or false, err = err, refused = ipc.stats().refused - before }
    """, worker=1)
    assert timeout_res == {"ok": False, "err": "timeout", "refused": 1}

    n.lua('T.set("gate", true)')
    got = n.wait_results("msg:0", 8, timeout=30)
    assert [item.split(b" ")[1] for item in got] == [b"t%d" % k for k in range(1, 9)]
    (done,) = n.lua("return T.state.done", worker=1)
    assert done == [f"{k}:true" for k in range(1, 9)]
    n.wait_results("q:0", filled, timeout=30)
    assert all(b"late" not in item for item in n.results("msg:0"))
    no_warnings(n)


def test_wait_arguments_and_context(nginx):
    n = nginx(workers=1, locations="""
        location = /set {
            set_by_lua_block $res {
                local ipc = require "ngx.ipc"
                local ok, err = pcall(ipc.send, ngx.worker.pid(), "x", "y", { wait = 1 })
                return err
            }
            return 200 $res;
        }
    """)
    status, body = n.get("/set")
    assert status == 200
    assert re.search(r"ipc.send with wait is not allowed in the context of set "
                     r"\(it must be able to yield, like ngx.sleep\)", body.decode()), body
    cases = [
        ('ipc.send(pid, "x", "y", { wait = "1" })',
         "bad argument #4 to 'send' (wait: number expected, got string)"),
        ('ipc.send(pid, "x", "y", { wait = -1 })',
         "bad argument #4 to 'send' (wait: non-negative number expected)"),
        ('ipc.send(pid, "x", "y", 5)',
         "bad argument #4 to 'send' (table expected, got number)"),
        ('ipc.broadcast("x", "y", { wait = 0/0 })',
         "bad argument #3 to 'broadcast' (wait: non-negative number expected)"),
    ]
    for code, want in cases:
        (err,) = n.lua(f"local pid = ngx.worker.pid() "
                       f"local ok, err = pcall(function() return {code} end) return err")
        assert want in err, (code, err)
    # wait = 0 and a wait with room to spare behave like a plain send
    assert n.lua('return ipc.send(ngx.worker.pid(), "x", "y", { wait = 0 })') == [True]
    assert n.lua('return ipc.broadcast("x", "y", { wait = 1 })') == [True]
