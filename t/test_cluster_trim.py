"""The stream trimmed before a node read it (ipc_cluster; README: "Cluster",
the gap rule; docs/ARCHITECTURE.md section 11, "Reading").

Node b is stopped (SIGSTOP on its master and workers) once its reader's
XREAD BLOCK (500 ms) has run out, so that Redis sends it nothing more; node
a publishes meanwhile and the stream "t" is trimmed (XTRIM MAXLEN); then b
resumes (SIGCONT) on its open connections. Whatever was in the stream after
b's position and is gone before b read it must be told: every worker of b
handles ipc:cluster_gap once, naming b's position, how many entries were
lost and where they end, and `gaps` counts one. What b had read already,
or what is still there, is no gap.

One broadcast of a is one stream entry here (each waits for the one before
to be in Redis), so "entries" and "messages of a" count the same. Redis
7.0's XINFO STREAM says how many entries the stream ever had
(entries-added), which is what lets b count exactly.
"""

import os
import re
import signal
import time
from contextlib import contextmanager

import pytest

from harness import wait_for
from redis_server import redis_server  # noqa: F401 (the fixture)
from test_cluster import (cluster_state, handled, handled_gap, seqs, start_node,
                          wait_all, wait_linked)

def reader_blocked(r, node):
    """Whether node's reader connection is blocked in XREAD in Redis."""
    listing = r.command("CLIENT", "LIST").decode()
    for line in listing.splitlines():
        if f"name=ngx_ipc:{node}:reader " in line:
            return "b" in re.search(r"\bflags=(\S+)", line).group(1)
    return False


def process_state(pid):
    """The state letter of /proc/<pid>/stat ("T": stopped)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


@contextmanager
def stopped(r, n, node):
    """Node n stopped (master and workers, by PID) while the block runs,
    once its reader's pending XREAD ran out (seen twice, the second look
    sent after the first's reply: a request it wrote just before it
    stopped is in Redis by then); continued whatever happens. Fails if
    another worker took the agent's lease over meanwhile (3 s without a
    heartbeat): its reader would have started afresh."""
    agent = cluster_state(n)["agent"]
    pids = [n.master_pid] + n.pids
    began = time.monotonic()
    looks = []

    def ran_out():
        looks.append(not reader_blocked(r, node))
        return looks[-2:] == [True, True]

    try:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        wait_for(lambda: all(process_state(pid) == "T" for pid in pids),
                 timeout=5, what=f"node {node} stopped")
        wait_for(ran_out, timeout=5, what=f"the XREAD of node {node} to run out")
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    took = time.monotonic() - began
    assert cluster_state(n)["agent"] == agent, \
        f"node {node} was stopped {took:.1f} s: its agent's lease was taken over"


def publish(a, first, last):
    """x first .. x last from a, one stream entry each."""
    for i in range(first, last + 1):
        before = cluster_state(a)["added"]
        a.lua(f'assert(ipc.broadcast("c", "x {i}", {{ scope = "cluster" }}))')
        wait_for(lambda: cluster_state(a)["added"] > before, what=f"x {i} in Redis")


def entry_ids(r, after):
    """Ids of the stream's entries after id `after`."""
    return [eid.decode() for eid, _ in r.command("XRANGE", "t", "(" + after, "+")]


def position(n):
    return cluster_state(n)["last_id"] or "0-0"


def id_key(entry_id):
    ms, seq = entry_id.split("-")
    return int(ms), int(seq)


def trimmed_text(pos, lost, up_to=None, before=None):
    """What the gap hook is told when `lost` entries after `pos` are gone."""
    where = f"up to {up_to}" if up_to else f"before {before}"
    return (f"the stream was trimmed past {pos} before this node read what "
            f"followed: {lost} entries after it, {where}, are gone").encode()


def assert_gap_told(b, text):
    for pid in b.pids:
        wait_for(lambda: handled_gap(b, pid), what=f"the gap in {pid}")
        assert handled_gap(b, pid) == [text], pid
    assert cluster_state(b)["gaps"] == 1


def assert_no_gap(b):
    assert cluster_state(b)["gaps"] == 0
    for pid in b.pids:
        assert handled_gap(b, pid) == [], pid


def nodes_with_history(redis_server, nginx, history):
    """Redis, and nodes a and b linked to it, where b has not read from a:
    "fresh", nothing was ever published (no stream: b's position is 0-0);
    "late", a published x 1 to 3 before b started (b starts at the
    stream's end: a's numbers go on from 4 where b first sees them);
    "emptied", the same and the stream then trimmed to nothing (b's
    position is an id no entry has). Returns r, a, b and a's next number."""
    r = redis_server()
    a = start_node(nginx, r, "a")
    wait_linked(a)
    nxt = 1
    if history in ("late", "emptied"):
        publish(a, 1, 3)
        nxt = 4
        if history == "emptied":
            assert r.command("XTRIM", "t", "MAXLEN", "0") == 3
    b = start_node(nginx, r, "b")
    wait_linked(b)
    return r, a, b, nxt


def five_trimmed_while_stopped(r, a, b, pos, first, keep):
    """b stopped, a publishes x first..first+4, the stream trimmed to `keep`
    entries: the gap text b must tell from position `pos`."""
    with stopped(r, b, "b"):
        publish(a, first, first + 4)
        ids = entry_ids(r, pos)
        assert len(ids) == 5
        r.command("XTRIM", "t", "MAXLEN", str(keep))
    if keep:
        return trimmed_text(pos, 5 - keep, before=ids[5 - keep])
    return trimmed_text(pos, 5, up_to=ids[-1])


@pytest.mark.parametrize("keep", [0, 2])
@pytest.mark.parametrize("history", ["fresh", "late"])
def test_trim_before_a_stopped_node_read_anything_of_a(redis_server, nginx, history, keep):
    """The case first reported: b never read from a; stopped, a publishes
    five, the stream keeps `keep` of them; resumed, b tells the loss
    exactly, then takes what is left and what comes after."""
    r, a, b, nxt = nodes_with_history(redis_server, nginx, history)
    pos = position(b)
    assert pos == ("0-0" if history == "fresh" else entry_ids(r, "0-0")[-1])
    text = five_trimmed_while_stopped(r, a, b, pos, nxt, keep)
    assert_gap_told(b, text)
    kept = list(range(nxt + 5 - keep, nxt + 5))
    publish(a, nxt + 5, nxt + 5)
    for pid in b.pids:
        wait_for(lambda: seqs(handled(b, pid), "a", "x") == kept + [nxt + 5],
                 what=f"what was left, and x {nxt + 5}, in {pid}")
    assert_gap_told(b, text)   # still once


@pytest.mark.parametrize("keep", [0, 2])
def test_trim_after_a_stopped_node_read_some_of_a(redis_server, nginx, keep):
    """b read x 1 to 3 of a; stopped, a publishes 4 to 8, the stream keeps
    `keep` entries; resumed, b tells 5 - keep entries lost past x 3's."""
    r, a, b, _ = nodes_with_history(redis_server, nginx, "fresh")
    publish(a, 1, 3)
    wait_all([b], "a", "x", 3)
    wait_for(lambda: position(b) == entry_ids(r, "0-0")[-1], what="b's position at x 3")
    pos = position(b)
    text = five_trimmed_while_stopped(r, a, b, pos, 4, keep)
    assert_gap_told(b, text)
    publish(a, 9, 9)
    want = [1, 2, 3] + list(range(9 - keep, 9)) + [9]
    for pid in b.pids:
        wait_for(lambda: seqs(handled(b, pid), "a", "x") == want,
                 what=f"x {want} in {pid}")
    assert_gap_told(b, text)   # a's numbers jump, and that was told already


@pytest.mark.parametrize("history", ["fresh", "emptied", "read"])
def test_no_gap_when_nothing_unread_was_trimmed(redis_server, nginx, history):
    """b stopped while a publishes x 1 to 5 ("read": b read them first,
    and a publishes 6 to 8 while the stream is trimmed down to those, so
    what b had read is gone). Nothing b had not read is gone: no gap, and
    b gets everything, in order. With "emptied" and "read", b's position
    is no longer in the stream while entries follow it: only the count of
    entries ever added tells that none was lost."""
    if history == "read":
        r, a, b, _ = nodes_with_history(redis_server, nginx, "fresh")
        publish(a, 1, 5)
        wait_all([b], "a", "x", 5)
        first, last = 6, 8
    else:
        r, a, b, first = nodes_with_history(redis_server, nginx, history)
        last = first + 4
    pos = position(b)
    with stopped(r, b, "b"):
        publish(a, first, last)
        if history == "read":
            assert r.command("XTRIM", "t", "MAXLEN", "3") == 5
            assert id_key(entry_ids(r, "0-0")[0]) > id_key(pos)
    want = list(range(1, last + 1)) if history == "read" else list(range(first, last + 1))
    for pid in b.pids:
        wait_for(lambda: seqs(handled(b, pid), "a", "x") == want,
                 what=f"x {want[0]} to {want[-1]} in {pid}")
    wait_for(lambda: position(b) == entry_ids(r, "0-0")[-1], what="b at the end")
    assert_no_gap(b)
