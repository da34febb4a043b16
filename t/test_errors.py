"""Errors: programmer errors raise, runtime failures return nil, err.

Runtime failures must have no side effect: nothing is queued or delivered,
only stats().refused grows.
"""

import os
import subprocess

import pytest

from harness import LuaError, digest, pattern, wait_for
from ipc_lua import GATED, RECORDERS, WORKERS, received, stats, wait_received

HANDLERS = RECORDERS + """
    ipc.receive("msg", record("msg"))
"""

# (Lua statement, substrings the error message must contain)
PROGRAMMER_ERRORS = [
    ('ipc.send(PID, {}, "x")', ["bad argument #2 to 'send'", "string expected, got table"]),
    ('ipc.send(PID, nil, "x")', ["bad argument #2 to 'send'", "got nil"]),
    ('ipc.send(PID, "", "x")', ["bad argument #2 to 'send'"]),
    ('ipc.send(PID, "n", {})', ["bad argument #3 to 'send'", "got table"]),
    ('ipc.send(PID, "n", true)', ["bad argument #3 to 'send'", "got boolean"]),
    ('ipc.send(PID, "n", print)', ["bad argument #3 to 'send'", "got function"]),
    ('ipc.send(nil, "n", "x")', ["bad argument #1 to 'send'", "got nil"]),
    ('ipc.send({}, "n", "x")', ["bad argument #1 to 'send'", "got table"]),
    ('ipc.send("abc", "n", "x")', ["bad argument #1 to 'send'"]),
    ('ipc.broadcast({}, "x")', ["bad argument #1 to 'broadcast'", "string expected, got table"]),
    ('ipc.broadcast(nil, "x")', ["bad argument #1 to 'broadcast'", "got nil"]),
    ('ipc.broadcast("", "x")', ["bad argument #1 to 'broadcast'"]),
    ('ipc.broadcast("n", {})', ["bad argument #2 to 'broadcast'", "got table"]),
    ('ipc.broadcast("n", "x", "opts")', ["bad argument #3 to 'broadcast'", "got string"]),
    ('ipc.receive(true, function() end)', ["bad argument #1 to 'receive'"]),
    ('ipc.receive("", function() end)', ["bad argument #1 to 'receive'"]),
    ('ipc.receive("n", "not a function")', ["bad argument #2 to 'receive'", "got string"]),
    ('ipc.reply("n", "x")', ["reply"]),
]


def programmer_error_messages(n, pid):
    """(code, message or None) for each of PROGRAMMER_ERRORS, run in worker 0."""
    out = []
    for statement, expected in PROGRAMMER_ERRORS:
        code = statement.replace("PID", str(pid))
        try:
            n.lua(code, worker=0)
            out.append((code, expected, None))
        except LuaError as e:
            out.append((code, expected, str(e)))
    return out


def test_programmer_errors_raise_lua_errors(nginx):
    n = nginx(workers=2, init_worker=HANDLERS)
    pid = n.pids[1]
    mismatches = []
    for code, expected, message in programmer_error_messages(n, pid):
        if message is None:
            mismatches.append(f"{code}: no error raised")
            continue
        missing = [s for s in expected if s not in message]
        if missing:
            mismatches.append(f"{code}: {message!r} lacks {missing}")
    assert not mismatches, "\n".join(mismatches)

    # Raising is not refusing: nothing was sent, queued or counted as refused.
    counters = stats(n, 0)
    assert counters["sent"] == 0 and counters["refused"] == 0, counters
    n.lua(f'assert(ipc.send({pid}, "msg", "fence"))', worker=0)
    assert wait_received(n, "msg", 1, 1) == [(n.pids[0], b"fence")]


def test_programmer_errors_blame_the_callers_line(nginx):
    """error(msg, 2): the position in the message is the caller's ("eval:1:"
    for a chunk run by the harness), not a line inside the library."""
    n = nginx(workers=1, init_worker=HANDLERS)
    wrong = [f"{code}: {message!r}"
             for code, _, message in programmer_error_messages(n, n.pids[0])
             if message is not None and not message.startswith("eval:1: ")]
    assert not wrong, "\n".join(wrong)


def dead_pid():
    """The PID of a process that has exited and been reaped."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


@pytest.mark.parametrize("workers", WORKERS)
def test_send_to_a_pid_that_is_no_worker(nginx, workers):
    n = nginx(workers=workers, init_worker=HANDLERS)
    not_workers = [4194305,  # above any pid_max
                   os.getpid(),  # alive, not nginx
                   dead_pid()]
    for pid in not_workers:
        assert n.lua(f'return ipc.send({pid}, "msg", "x")', worker=0) == \
            [None, "no such worker"], pid
    counters = stats(n, 0)
    assert counters["refused"] == len(not_workers) and counters["sent"] == 0
    n.lua('assert(ipc.broadcast("msg", "fence"))', worker=0)
    for worker in range(workers):
        assert wait_received(n, "msg", worker, 1) == [(n.pids[0], b"fence")]


@pytest.mark.parametrize("workers", WORKERS)
def test_name_length_limit(nginx, workers):
    n = nginx(workers=workers, init_worker=RECORDERS + """
        ipc.receive(string.rep("n", 65535), record("long"))
    """)
    sender, target = 0, workers - 1
    assert n.lua(f"""
        local ok = string.rep("n", 65535)
        local long = string.rep("n", 65536)
        local pid = {n.pids[target]}
        local a, a_err = ipc.send(pid, long, "x")
        local b, b_err = ipc.broadcast(long, "x")
        local c, c_err = ipc.broadcast(long, "x", {{include_self = false}})
        return a, a_err, b, b_err, c, c_err,
               ipc.send(pid, ok, "unicast"), ipc.broadcast(ok, "broadcast")
    """, worker=sender) == [None, "name too long", None, "name too long",
                            None, "name too long", True, True]
    spid = n.pids[sender]
    assert wait_received(n, "long", target, 2) == [(spid, b"unicast"), (spid, b"broadcast")]
    for worker in range(workers):
        if worker != target:
            assert wait_received(n, "long", worker, 1) == [(spid, b"broadcast")]
    assert stats(n, sender)["refused"] == 3


@pytest.mark.parametrize("workers", WORKERS)
def test_max_message(nginx, workers):
    n = nginx(workers=workers, main="ipc_max_message 1m;", init_worker=RECORDERS + """
        ipc.receive("big", record_digest("big"))
    """)
    sender, target = 0, workers - 1
    assert n.lua(f"""
        local pid = {n.pids[target]}
        local a, a_err = ipc.send(pid, "big", T.pattern(1024 * 1024 + 1, 1))
        local b, b_err = ipc.send(pid, "big", T.pattern(2 * 1024 * 1024, 1))
        local c, c_err = ipc.broadcast("big", T.pattern(2 * 1024 * 1024, 1))
        return a, a_err, b, b_err, c, c_err,
               ipc.send(pid, "big", T.pattern(1024 * 1024, 2)),
               ipc.broadcast("big", T.pattern(1024 * 1024, 3))
    """, worker=sender) == [None, "message too large", None, "message too large",
                            None, "message too large", True, True]
    spid = n.pids[sender]
    unicast = (spid, digest(pattern(1 << 20, 2)))
    broadcast = (spid, digest(pattern(1 << 20, 3)))
    assert wait_received(n, "big", target, 2) == [unicast, broadcast]
    for worker in range(workers):
        if worker != target:
            assert wait_received(n, "big", worker, 1) == [broadcast]
    assert stats(n, sender)["refused"] == 3


QUEUE_LIMIT = 1 << 20
QUEUE_CONFIG = "ipc_ring_size 1m;\nipc_queue_limit 1m;"

# Send 64 KiB messages T.pattern(65536, first), T.pattern(65536, first + 1),
# ... to PID until one is refused; report what happened.
FILL_QUEUE = """
    local pid, first = %(pid)d, %(first)d
    local accepted, max_queued = 0, 0
    for i = first, first + 1023 do
        local ok, err = ipc.send(pid, "q", T.pattern(65536, i))
        if not ok then
            return accepted, err, max_queued, ipc.stats().queued_bytes
        end
        accepted = accepted + 1
        max_queued = math.max(max_queued, ipc.stats().queued_bytes)
    end
    return accepted, "never refused", max_queued
"""


def fill_queue(n, sender, target, first=1):
    """Send 64 KiB messages until "queue full"; return how many were accepted."""
    accepted, err, max_queued, queued = n.lua(
        FILL_QUEUE % {"pid": n.pids[target], "first": first}, worker=sender)
    assert err == "queue full"
    # Bounded: refused once the backlog holds the limit, so it never holds
    # more than the limit plus one message (plus that message's framing).
    bound = QUEUE_LIMIT + 65536 + 1024
    assert max_queued < bound and queued < bound, (max_queued, queued)
    assert queued >= QUEUE_LIMIT
    return accepted


def check_gated_arrivals(n, sender, target, sizes):
    """Open the gate; the target must get T.pattern(sizes[i - 1], i), in order."""
    n.lua('T.set("gate", true)')
    spid = n.pids[sender]
    expected = [(spid, digest(pattern(size, i))) for i, size in enumerate(sizes, 1)]
    assert wait_received(n, "q", target, len(expected)) == expected


@pytest.mark.parametrize("workers", [1, 2])
def test_queue_full_is_bounded_and_loses_nothing(nginx, workers):
    n = nginx(workers=workers, main=QUEUE_CONFIG, init_worker=GATED)
    sender, target = 0, workers - 1
    accepted = fill_queue(n, sender, target)
    assert accepted >= 1
    # The receiver may read ahead a bounded amount once the sender's event
    # loop runs again; the backlog must fill up again all the same.
    accepted += fill_queue(n, sender, target, first=accepted + 1)
    assert accepted * 65536 < 64 * QUEUE_LIMIT, "the slow receiver buffers without bound"
    if sender != target:
        # the limit is per destination: the sender can still reach itself
        assert n.lua('return ipc.send(ngx.worker.pid(), "msg", "self")',
                     worker=sender) == [True]

    check_gated_arrivals(n, sender, target, [65536] * accepted)
    wait_for(lambda: stats(n, sender)["queued_bytes"] == 0, what="backlog drained")
    assert stats(n, sender)["refused"] == 2
    # and the destination takes messages again
    assert n.lua(f'return ipc.send({n.pids[target]}, "msg", "after")', worker=sender) == [True]
    assert wait_received(n, "msg", target, 1)[-1] == (n.pids[sender], b"after")
    assert len(received(n, "q", target)) == accepted  # refused ones never arrive


def test_queue_limit_admits_a_big_message_below_the_limit(nginx):
    """Below the limit any size up to ipc_max_message is accepted."""
    n = nginx(workers=2, main=QUEUE_CONFIG, init_worker=GATED)
    assert n.lua(f"""
        local pid = {n.pids[1]}
        local a = ipc.send(pid, "q", T.pattern(4 * 1024 * 1024, 1))
        local b, b_err = ipc.send(pid, "q", "x")
        return a, b, b_err
    """, worker=0) == [True, None, "queue full"]
    check_gated_arrivals(n, 0, 1, [4 << 20])


@pytest.mark.parametrize("workers", [2, 4])
def test_broadcast_is_all_or_nothing(nginx, workers):
    n = nginx(workers=workers, main=QUEUE_CONFIG, init_worker=GATED)
    sender, slow = 0, 1
    accepted = fill_queue(n, sender, slow)
    # Fill again and broadcast in the same chunk, right on "queue full", so
    # that no read-ahead by the receiver can make room in between.
    more, *results = n.lua(f"""
        local accepted = 0
        for i = {accepted + 1}, {accepted + 1024} do
            if not ipc.send({n.pids[slow]}, "q", T.pattern(65536, i)) then
                break
            end
            accepted = accepted + 1
        end
        local a, a_err = ipc.broadcast("msg", "to all")
        local b, b_err = ipc.broadcast("msg", "to others", {{include_self = false}})
        return accepted, a, a_err, b, b_err
    """, worker=sender)
    assert results == [None, "queue full", None, "queue full"]
    accepted += more

    # Fences to the workers that were not full: the refused broadcasts, had
    # they been queued there, would have arrived before them.
    spid = n.pids[sender]
    fast = [w for w in range(workers) if w != slow]
    for worker in fast:
        n.lua(f'assert(ipc.send({n.pids[worker]}, "msg", "fence"))', worker=sender)
    for worker in fast:
        assert wait_received(n, "msg", worker, 1) == [(spid, b"fence")]

    check_gated_arrivals(n, sender, slow, [65536] * accepted)
    wait_for(lambda: stats(n, sender)["queued_bytes"] == 0, what="backlog drained")
    n.lua(f'assert(ipc.send({n.pids[slow]}, "msg", "fence"))', worker=sender)
    assert wait_received(n, "msg", slow, 1) == [(spid, b"fence")]
    assert stats(n, sender)["refused"] == 4
