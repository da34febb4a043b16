"""The recipe examples/stream-table, run as shipped by example_runner
(placeholders filled in, every worker up before a test starts, stopped by
PID). Traffic goes to 127.0.0.1 only; every loop is bounded in count and
time.
"""

import hashlib
import http.client
import os
import re
import signal

import pytest

from example_runner import EXAMPLES, each_worker, examples_fixture
from harness import wait_for


def pinned(ex, avoid=()):
    """A kept-alive connection and the PID of the worker that serves it
    (none of `avoid`; asked with stream-table's /results): requests on it
    go to that worker, never to a stopped worker's socket."""
    for _ in range(50):
        conn = http.client.HTTPConnection("127.0.0.1", ex.port, timeout=30)
        pid = int(get(conn, "/results")[2])
        if pid not in avoid:
            return conn, pid
        conn.close()
    raise AssertionError(f"every connection went to {avoid}")


def get(conn, path):
    conn.request("GET", path)
    response = conn.getresponse()
    return response.status, response.read(), response.getheader("X-Worker-Pid")


# -- examples/stream-table ----------------------------------------------------


STREAM = EXAMPLES / "stream-table" / "nginx.conf"
# ready: every worker is in ipc.pids() (its slot says running)
stream = examples_fixture(STREAM, ready=lambda ex: len(results(ex)) == ex.workers)

ROWS = 100000


def table_md5(rows):
    """What recipe.digest() computes for recipe.build(rows)."""
    md5 = hashlib.md5()
    for i in range(1, rows + 1):
        md5.update(f"{i}\trow-{i}\t{i * 7919 % 1000}\tt{i % 7}\tu{i % 11}\t".encode()
                   + bytes([97 + i % 26]) * (100 + i % 300) + b"\n")
    return md5.hexdigest()


def results(ex):
    """/results -> {worker id: (pid, verdict)}"""
    status, body, _ = ex.request("/results")
    assert status == 200, body
    return {int(w): (int(pid), text) for w, pid, text in
            re.findall(r"^worker (\d+) \(pid (\d+)\): (.*)$", body.decode(), re.M)}


SENT = re.compile(rb"^transfer (\d+\.\d+): (\d+) rows, (\d+) bytes in (\d+) chunks, "
                  rb"md5 ([0-9a-f]{32})\n$")


@pytest.mark.parametrize("workers,ring", [(2, "64k"), (2, "1m"), (4, "64k")])
def test_table_reaches_every_other_worker_equal(stream, workers, ring):
    """A 30 MiB table, broadcast in 100 chunks with wait through 64 KiB
    inboxes and a 1 MiB queue limit, arrives whole in every other worker."""
    ex = stream(workers, RING_SIZE=ring)
    status, body, headers = ex.request("/send?to=all", timeout=120)
    assert status == 200, body
    transfer, rows, size, chunks, md5 = SENT.match(body).groups()
    assert (int(rows), int(chunks), md5.decode()) == (ROWS, 100, table_md5(ROWS))
    assert int(size) > 25 << 20
    sender = int(headers["X-Worker-Pid"])
    assert transfer.decode().startswith(f"{sender}.")

    ok = f"{transfer.decode()} ok {ROWS} rows md5 {md5.decode()}"
    want = {w: (pid, "-" if pid == sender else ok) for w, (pid, _) in results(ex).items()}
    assert len(want) == workers and sender in ex.pids
    wait_for(lambda: results(ex) == want, timeout=60, what=f"{want}, not {results(ex)}")

    # every worker holds the same table (the sender its own copy)
    for i in (1, 54321, ROWS):
        got = each_worker(ex, f"/row/{i}", ex.pids)
        assert set(got.values()) == {(200, f"{i} row-{i} {i * 7919 % 1000} t{i % 7} "
                                      f"u{i % 11} {100 + i % 300} of {ROWS}\n".encode())}


def test_without_wait_a_full_inbox_refuses_and_the_receiver_drops_it(stream):
    ex = stream(4, RING_SIZE="64k")
    conn, sender = pinned(ex)
    target = next(w for w, (pid, _) in results(ex).items() if pid != sender)
    try:
        status, body, _ = get(conn, f"/send?to={target}&wait=0")
        # the inbox holds 64 KiB and the backlog 1 MiB: a few 300 KiB chunks
        m = re.fullmatch(rb"transfer (\S+) stopped at chunk (\d+) of 100: queue full\n",
                         body)
        assert status == 503 and m, body
        transfer, seq = m.group(1).decode(), int(m.group(2))
        assert 2 <= seq <= 8, seq
        wait_for(lambda: results(ex)[target][1] == f"{transfer} aborted by the sender "
                 f"at chunk {seq} of 100", what="the abort")

        # then with wait: the next transfer to the same worker arrives whole
        status, body, _ = get(conn, f"/send?to={target}&rows=20000")
    finally:
        conn.close()
    assert status == 200, body
    transfer, rows, _, chunks, md5 = SENT.match(body).groups()
    assert (int(rows), int(chunks), md5.decode()) == (20000, 20, table_md5(20000))
    wait_for(lambda: results(ex)[target][1] ==
             f"{transfer.decode()} ok 20000 rows md5 {md5.decode()}", what="the copy")

    for query in ("to=9", "to=all&rows=0", "to=all&wait=-1"):
        assert ex.request(f"/send?{query}")[0] == 400, query


stream_killed = examples_fixture(STREAM, ready=lambda ex: len(results(ex)) == ex.workers,
                                 allowed=[r"\[alert\].* exited on signal 9"])


def test_a_stuck_receiver_then_a_dead_sender(stream_killed):
    """The receiver stopped (SIGSTOP): the sender waits 0.5 s for room,
    gives up with "timeout", and its abort cannot get through either; the
    receiver keeps the partial transfer until the next one begins, which
    drops it once its sender is gone (SIGKILL)."""
    ex = stream_killed(2, RING_SIZE="64k")
    conn, sender = pinned(ex)
    target, stuck = next((w, pid) for w, (pid, _) in results(ex).items() if pid != sender)
    os.kill(stuck, signal.SIGSTOP)
    try:
        status, body, _ = get(conn, f"/send?to={target}&rows=20000&wait=0.5")
    finally:
        os.kill(stuck, signal.SIGCONT)
        conn.close()
    assert status == 503 and re.fullmatch(
        rb"transfer %d\.1 stopped at chunk \d+ of 20: timeout; abort not sent: timeout\n"
        % sender, body), body
    # what was queued before arrives: the receiver holds the partial transfer
    wait_for(lambda: results(ex)[target][1] == f"{sender}.1 receiving",
             what="the partial transfer in the receiver")

    os.kill(sender, signal.SIGKILL)
    wait_for(lambda: len(results(ex)) == 2 and sender not in
             [pid for pid, _ in results(ex).values()], what="the sender respawned")
    ex.pids = sorted(pid for pid, _ in results(ex).values())
    conn, respawned = pinned(ex, avoid=(stuck,))
    try:
        status, body, _ = get(conn, f"/send?to={target}&rows=1000")
    finally:
        conn.close()
    assert status == 200 and body.startswith(f"transfer {respawned}.1: 1000 rows".encode())
    wait_for(lambda: results(ex)[target][1] ==
             f"{respawned}.1 ok 1000 rows md5 {table_md5(1000)}", what="the new transfer")
    assert f"transfer {sender}.1 dropped: its sender is gone" in ex.error_log()


# -- examples/cluster-purge ---------------------------------------------------
