"""The recipes examples/stream-table, examples/cluster-purge and
examples/prometheus, each run as shipped by example_runner (placeholders
filled in, every worker up before a test starts, stopped by PID). Traffic
goes to 127.0.0.1 only; every loop is bounded in count and time.
"""

import hashlib
import os
import re
import signal
import time

import pytest

from example_runner import EXAMPLES, examples_fixture
from harness import wait_for

# -- helpers ----------------------------------------------------------------


def each_worker(ex, path, pids, want=lambda status, body: True, timeout=30):
    """GET `path` on new connections until every PID in `pids` answered
    (listen ... reuseport spreads them; X-Worker-Pid names the worker) with
    an answer `want` accepts. -> {pid: (status, body)}"""
    got = {}
    deadline = time.monotonic() + timeout
    for _ in range(2000):
        status, body, headers = ex.request(path)
        pid = int(headers["X-Worker-Pid"])
        if pid in pids and want(status, body):
            got[pid] = (status, body)
        if set(got) == set(pids):
            return got
        assert time.monotonic() < deadline, \
            f"{path}: no wanted answer from {set(pids) - set(got)} in {timeout} s"
    raise AssertionError(f"{path}: workers {set(pids) - set(got)} never answered")


# -- examples/stream-table ----------------------------------------------------

STREAM = EXAMPLES / "stream-table" / "nginx.conf"
stream = examples_fixture(STREAM, ready=lambda ex: ex.request("/results")[0] == 200)

ROWS = 100000


def row_line(i):
    return (f"{i}\trow-{i}\t{i * 7919 % 1000}\tt{i % 7}\tu{i % 11}\t"
            + chr(97 + i % 26) * (100 + i % 300) + "\n")


def table_md5(rows):
    """What recipe.digest() computes for recipe.build(rows)."""
    md5 = hashlib.md5()
    for i in range(1, rows + 1):
        md5.update(row_line(i).encode())
    return md5.hexdigest()


def row_answer(i, rows):
    """/row/<i> of a worker holding the table of `rows` rows."""
    return (f"{i} row-{i} {i * 7919 % 1000} t{i % 7} u{i % 11} "
            f"{100 + i % 300} of {rows}\n").encode()


def results(ex):
    """/results -> {worker id: (pid, verdict)}"""
    status, body, _ = ex.request("/results")
    assert status == 200
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
        assert set(got.values()) == {(200, row_answer(i, ROWS))}, got


def send_to_another(ex, query, timeout=60):
    """/send?to=<a worker that is not the one serving the request>&query
    -> (target worker id, status, body)."""
    for attempt in range(40):
        target = 1 + attempt % (ex.workers - 1)
        status, body, _ = ex.request(f"/send?to={target}&{query}", timeout=timeout)
        if status != 400:
            return target, status, body
    raise AssertionError("every /send was served by its own target")


def test_without_wait_a_full_inbox_refuses_and_the_receiver_drops_it(stream):
    ex = stream(4, RING_SIZE="64k")
    target, status, body = send_to_another(ex, "wait=0")
    # the inbox holds 64 KiB and the backlog 1 MiB: a few 300 KiB chunks
    m = re.fullmatch(rb"transfer (\S+) stopped at chunk (\d+) of 100: queue full\n", body)
    assert status == 503 and m, body
    transfer, seq = m.group(1).decode(), int(m.group(2))
    assert 2 <= seq <= 8, seq
    wait_for(lambda: results(ex)[target][1] == f"{transfer} aborted by the sender "
             f"at chunk {seq} of 100", what="the abort")

    # then with wait: the next transfer to the same worker arrives whole
    target, status, body = send_to_another(ex, "rows=20000")
    assert status == 200, body
    transfer, rows, _, chunks, md5 = SENT.match(body).groups()
    assert (int(rows), int(chunks), md5.decode()) == (20000, 20, table_md5(20000))
    wait_for(lambda: results(ex)[target][1] ==
             f"{transfer.decode()} ok 20000 rows md5 {md5.decode()}", what="the copy")

    for query in ("to=9", "to=all&rows=0", "to=all&wait=-1"):
        assert ex.request(f"/send?{query}")[0] == 400, query


def test_a_stuck_receiver_times_the_sender_out(stream):
    """Worker 1 stopped (SIGSTOP): the sender waits 0.5 s for room, gives
    up with "timeout", and its abort cannot get through either."""
    ex = stream(2, RING_SIZE="64k")
    stuck = results(ex)[1][0]
    os.kill(stuck, signal.SIGSTOP)
    try:
        # connections that land on the stopped worker's socket wait there
        deadline = time.monotonic() + 60
        for attempt in range(20):
            assert time.monotonic() < deadline, "worker 0 never took /send"
            try:
                status, body, _ = ex.request("/send?to=1&rows=20000&wait=0.5", timeout=8)
                break
            except TimeoutError:
                continue
        else:
            raise AssertionError("worker 0 never took /send")
    finally:
        os.kill(stuck, signal.SIGCONT)
    m = re.fullmatch(rb"transfer (\S+) stopped at chunk \d+ of 20: timeout; "
                     rb"abort not sent: timeout\n", body)
    assert status == 503 and m, body
    # what was queued before arrives: worker 1 holds the partial transfer
    wait_for(lambda: results(ex)[1][1] == f"{m.group(1).decode()} receiving",
             what="the partial transfer in worker 1")
