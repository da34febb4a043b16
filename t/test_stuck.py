"""A stuck worker holds up only what is addressed to it (README: "A stuck
worker", issue 19).

A worker stopped with SIGSTOP cannot read its inbox. The others go on
messaging each other; what they send to it waits in its inbox and in their
backlogs up to ipc_queue_limit, then `send` to it and every `broadcast` (all
or nothing) say "queue full". Once it runs again, it handles everything
that was accepted, in each sender's order.

With reuseport a connection may land on the stopped worker's listening
socket and wait there: requests here are short attempts, retried.
"""

import os
import signal
import socket

from harness import NginxError, wait_for

RECORD = """
    ipc.receive("m", function(data) T.push("m:" .. ngx.worker.id(), data) end)
"""


def retried(fn):
    """fn(), retried while its connection lands on the stopped worker
    (bounded: 60 attempts of at most 0.5 s)."""
    for _ in range(60):
        try:
            return fn()
        except (socket.timeout, TimeoutError, ConnectionError, NginxError):
            continue
    raise AssertionError("no worker answered")


def lua_at(n, code, worker):
    return retried(lambda: n.lua(code, worker=worker, timeout=0.5))


def results(n, key, count):
    """The list `key` once it has `count` entries (bounded poll)."""
    got = wait_for(lambda: (lambda r: r if len(r) >= count else None)(
        retried(lambda: n.lua(f'return T.list("{key}")', worker=0, timeout=0.5)[0])),
        timeout=20, what=f"{count} entries in {key}")
    return [g.encode("latin-1") for g in got]


def test_a_stopped_worker_holds_up_only_its_own_messages(nginx):
    workers = 4
    n = nginx(workers=workers, main="ipc_ring_size 64k; ipc_queue_limit 64k;",
              init_worker=RECORD)
    stopped = n.pids[3]
    os.kill(stopped, signal.SIGSTOP)
    try:
        # the others' traffic among themselves flows
        for sender in range(3):
            lua_at(n, f"""
                local pids = ipc.pids()
                for to = 1, 3 do
                    for i = 1, 50 do
                        assert(ipc.send(pids[to], "m", "{sender}:" .. i))
                    end
                end
            """, sender)
        for receiver in range(3):
            got = results(n, f"m:{receiver}", 150)
            for sender in range(3):
                mine = [g for g in got if g.startswith(b"%d:" % sender)]
                assert mine == [b"%d:%d" % (sender, i) for i in range(1, 51)]

        # broadcasts are accepted until the stopped worker's inbox and each
        # sender's backlog for it are full, then refused, whole
        (sent, err) = lua_at(n, """
            local ok, err, sent = true, nil, 0
            for i = 1, 1000 do
                ok, err = ipc.broadcast("m", "b" .. i .. ":" .. ("x"):rep(1000))
                if not ok then break end
                sent = i
            end
            return sent, err
        """, 0)
        assert err == "queue full" and 50 < sent < 1000, (sent, err)
        assert lua_at(n, f'return ipc.send({stopped}, "m", "late")', 1) == [True]
        # ... and the others still talk
        lua_at(n, 'assert(ipc.send(ipc.pids()[3], "m", "still"))', 1)
        assert b"still" in results(n, "m:2", 150 + sent + 1)
    finally:
        os.kill(stopped, signal.SIGCONT)

    # everything accepted arrives, in each sender's order
    got = n.wait_results("m:3", sent + 1, timeout=30)
    assert [g for g in got if g.startswith(b"b")] == \
        [b"b%d:" % i + b"x" * 1000 for i in range(1, sent + 1)]
    assert b"late" in got
    for receiver in range(3):
        assert len([g for g in n.results(f"m:{receiver}") if g.startswith(b"b")]) == sent
