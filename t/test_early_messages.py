"""Messages that reach a worker before its Lua first calls ngx.ipc.

A worker attaches to its inbox when it starts, but its Lua code may start
ngx.ipc later: from a timer, after a fetch, at its first request (Kong's
lua-resty-events test "slow client on node start won't miss the events"
calls init_worker() 5 s late). `ipc_early_messages TIME [SIZE]` (default
30s 16m): for TIME after the worker started, what arrives is copied out
of the inbox into the worker's memory, up to SIZE bytes (each message
charged its bytes plus a small fixed overhead), and handed to the Lua
dispatcher first, in order, when it starts. The senders never notice:
nothing stays in the inbox, so neither their backlogs nor broadcasts are
held up. Past SIZE, or once TIME is up, or with `off`, messages are
dropped, counted in "unhandled" and logged once at warn.

Here the harness's workers load ngx.ipc in init_worker_by_lua but call
nothing of it: worker 1's first API call (ipc.receive) is what starts it.
"""

import re

import pytest

from conftest import start_fails
from harness import lua_quote, pattern, wait_for
from test_reload_bridge import SHUTDOWN, HeldRequest, gen_init, reload

KEPT_FULL = r"does not fit in what this worker keeps until its Lua calls ngx.ipc"
DROPPED = r"messages arrived in a worker whose Lua has not called ngx.ipc"

START_RECORDING = """
    ipc.receive("early", function(data)
        T.push("got", data)
    end)
    return true
"""


def unhandled(n, worker):
    """Worker `worker`'s "unhandled" counter, read by worker 0 (the slot's
    counters are in shared memory: worker `worker`'s Lua is not touched)."""
    (all_stats,) = n.lua('return ipc.stats("all")', worker=0)
    return all_stats[worker]["unhandled"]


def send_to_worker1(n, count, size, name="early"):
    """Worker 0 sends `count` messages of `size` bytes (pattern(size, i))
    to worker 1, each waiting (up to 10 s) for room in worker 0's backlog:
    every send must return true."""
    n.lua(f"""
        local pids = ipc.pids()
        for i = 0, {count - 1} do
            local data = T.pattern({size}, i)
            local ok, err = ipc.send(pids[2], {lua_quote(name)}, data,
                                     {{ wait = 10 }})
            assert(ok, err)
        end
    """, worker=0)


def received_by(n, worker):
    (all_stats,) = n.lua('return ipc.stats("all")', worker=0)
    return all_stats[worker]["received"]


def test_a_late_start_gets_what_came_before_in_order(nginx):
    # an inbox of 64k and a backlog of 64k: 2 MiB sent before worker 1's
    # Lua starts ngx.ipc could only be accepted if worker 1 keeps reading
    n = nginx(workers=2, main="ipc_ring_size 64k; ipc_queue_limit 64k;")
    send_to_worker1(n, 64, 32 * 1024)
    # and a broadcast, from the same sender, after them
    n.lua('assert(ipc.broadcast("early", "last"))', worker=0)
    wait_for(lambda: received_by(n, 1) == 65, what="worker 1 took all 65 from its inbox")
    assert unhandled(n, 1) == 0

    assert n.lua(START_RECORDING, worker=1) == [True]
    got = n.wait_results("got", 65)
    assert got == [pattern(32 * 1024, i) for i in range(64)] + [b"last"]
    # and what comes after the start goes through as before
    send_to_worker1(n, 3, 100)
    got = n.wait_results("got", 68)
    assert got[65:] == [pattern(100, i) for i in range(3)]
    assert unhandled(n, 1) == 0
    assert not re.search(DROPPED, n.error_log())


def test_a_call_made_before_the_start_is_answered(nginx):
    n = nginx(workers=2)
    # worker 0 calls worker 1 from a timer (a call yields); worker 1's Lua
    # registers the handler only later
    n.lua("""
        local pids = ipc.pids()
        assert(ngx.timer.at(0, function()
            local res, err = ipc.call(pids[2], "sum", "2 3", 10)
            T.push("answer", tostring(res) .. "/" .. tostring(err))
        end))
    """, worker=0)
    wait_for(lambda: received_by(n, 1) == 1, what="the request reached worker 1")
    n.lua("""
        ipc.receive("sum", function(data)
            local a, b = data:match("(%d+) (%d+)")
            return tostring(a + b)
        end)
    """, worker=1)
    assert n.wait_results("answer", 1) == [b"5/nil"]


def test_kept_past_the_time_are_dropped_counted_and_logged(nginx):
    n = nginx(workers=2, main="ipc_early_messages 1s;",
              allow_log=[DROPPED])
    send_to_worker1(n, 5, 10)
    wait_for(lambda: re.search(DROPPED, n.error_log()),
             what="the drop logged once the hold is over")
    wait_for(lambda: unhandled(n, 1) == 5, what="5 counted in unhandled")
    # the line names the first one and the directive's time
    line = next(l for l in n.error_log().splitlines() if re.search(DROPPED, l))
    assert '"early"' in line and "1000 ms" in line and "[warn]" in line

    # later messages wait for no hold: a worker that starts now gets what
    # comes now, and nothing of before
    assert n.lua(START_RECORDING, worker=1) == [True]
    send_to_worker1(n, 2, 7)
    assert n.wait_results("got", 2) == [pattern(7, 0), pattern(7, 1)]
    assert unhandled(n, 1) == 5


def test_past_the_size_the_newest_are_dropped(nginx):
    # 10 of 16 KiB into 64 KiB: 3 fit (each costs a little more than 16 KiB)
    n = nginx(workers=2, main="ipc_early_messages 30s 64k;",
              allow_log=[KEPT_FULL])
    send_to_worker1(n, 10, 16 * 1024)
    wait_for(lambda: unhandled(n, 1) == 7, what="7 of 10 counted in unhandled")
    log = n.error_log()
    assert re.search(r'\[warn\].*ngx_ipc: message "early" \(16384 bytes\) does not fit '
                     r"in what this worker keeps until its Lua calls ngx.ipc "
                     r"\(ipc_early_messages: 65536 bytes, 49\d\d\d used\): it is "
                     r'dropped and counted in "unhandled"', log), log[-2000:]

    assert n.lua(START_RECORDING, worker=1) == [True]
    assert n.wait_results("got", 3) == [pattern(16 * 1024, i) for i in range(3)]
    # nothing else arrives: a message sent now comes right after them
    send_to_worker1(n, 1, 1, name="early")
    assert n.wait_results("got", 4)[3] == pattern(1, 0)


def test_a_flood_of_empty_messages_is_bounded_by_their_overhead(nginx):
    # 20000 messages of 0 bytes: the bound counts each message's overhead,
    # so a flood of tiny ones cannot cost the worker more than SIZE
    count = 20000
    n = nginx(workers=2, main="ipc_early_messages 30s 64k;",
              allow_log=[KEPT_FULL])
    send_to_worker1(n, count, 0)
    wait_for(lambda: received_by(n, 1) == count, what="worker 1 took them all")
    dropped = unhandled(n, 1)
    kept = count - dropped
    # 5 bytes of name and at least 16 bytes of overhead each
    assert 0 < kept <= 65536 // (5 + 16), kept

    assert n.lua(START_RECORDING, worker=1) == [True]
    got = n.wait_results("got", kept)
    assert got == [b""] * kept
    assert unhandled(n, 1) == dropped


def test_off_drops_at_once(nginx):
    n = nginx(workers=2, main="ipc_early_messages off;", allow_log=[DROPPED])
    send_to_worker1(n, 4, 10)
    wait_for(lambda: unhandled(n, 1) == 4, what="4 counted in unhandled")
    assert re.search(DROPPED, n.error_log())
    assert n.lua(START_RECORDING, worker=1) == [True]
    send_to_worker1(n, 1, 3)
    assert n.wait_results("got", 1) == [pattern(3, 0)]


def test_a_worker_that_never_starts_holds_up_no_sender(nginx):
    # worker 1 never calls ngx.ipc: broadcasts from worker 0 keep being
    # accepted far past worker 1's inbox and worker 0's backlog for it
    n = nginx(workers=2, main="ipc_ring_size 64k; ipc_queue_limit 64k; "
                             "ipc_early_messages 30s 256k;",
              allow_log=[KEPT_FULL])
    n.lua("""
        for i = 1, 200 do
            local ok, err = ipc.broadcast("early", T.pattern(8192, i),
                                          { wait = 10 })
            assert(ok, err)
        end
    """, worker=0)
    wait_for(lambda: received_by(n, 1) == 200, what="worker 1 took all 200")
    assert unhandled(n, 1) > 0


# an old worker holds this request through a reload, then broadcasts
# "early" when the test sets "go": it reaches the new generation through
# the reload bridge
HOLD_AND_BROADCAST = """
    location = /hold_and_broadcast {
        content_by_lua_block {
            local ipc = require "ngx.ipc"
            ngx.say(ngx.worker.pid())
            ngx.flush(true)
            local deadline = ngx.now() + 30
            while not T.get("go") and ngx.now() < deadline do
                ngx.sleep(0.01)
            end
            ngx.say(tostring(ipc.broadcast("early", "from the old generation")))
            ngx.flush(true)
        }
    }
"""


def test_kept_when_it_comes_from_another_generation(nginx):
    # reload() waits for each worker to say its generation. The first
    # generation starts ngx.ipc at once (lua-nginx-module logs an [alert] at
    # exit for a worker whose first zero-delay timer, here ngx.ipc's
    # dispatcher, came after its graceful shutdown began); the second does
    # not call it.
    n = nginx(workers=2, main=SHUTDOWN, init=gen_init(1),
              init_worker="""
                  T.set("gen:" .. IPC_GEN .. ":" .. ngx.worker.id(), ngx.worker.pid())
                  if IPC_GEN == 1 then
                      ipc.receive("other", function() end)
                  end
              """,
              locations=HOLD_AND_BROADCAST.replace("T.get", 'require("harness").get'))
    held = HeldRequest(n.port, "/hold_and_broadcast")
    try:
        old_pid = int(held.line())
        reload(n, 2)
        n.lua('T.set("go", true)')
        assert held.line() == b"true"
    finally:
        held.close()
    # the new workers' Lua has not called ngx.ipc: worker 0 looks (its own
    # copy goes to no handler), worker 1's is kept
    wait_for(lambda: received_by(n, 1) == 1, what="the broadcast in new worker 1")
    assert n.pids[1] != old_pid
    assert n.lua(START_RECORDING, worker=1) == [True]
    assert n.wait_results("got", 1) == [b"from the old generation"]
    assert unhandled(n, 1) == 0


@pytest.mark.parametrize("value, error", [
    ("2h", r'invalid time "2h" in "ipc_early_messages" \(off, or a time up to 1h\)'),
    ("soon", r'invalid time "soon" in "ipc_early_messages"'),
    ("10s 0", r'invalid size "0" in "ipc_early_messages"'),
    ("10s lots", r'invalid size "lots" in "ipc_early_messages"'),
    ("off 1m", r'"ipc_early_messages" directive takes no size after "off"'),
])
def test_bad_values_are_refused(value, error):
    out = start_fails(main=f"ipc_early_messages {value};")
    assert re.search(error, out), out
