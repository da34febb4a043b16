"""The recipe examples/cluster-purge: two nodes and a real redis-server,
run as shipped by example_runner. Traffic goes to 127.0.0.1 only; every
loop is bounded in count and time.
"""

import json
import os
import re
import signal

from example_runner import EXAMPLES, each_worker, examples_fixture
from harness import wait_for
from redis_server import redis_server  # noqa: F401 (the fixture)


PURGE = EXAMPLES / "cluster-purge" / "nginx.conf"
# a stopped agent's XREAD may time out when it resumes; Redis away: our
# lines and lua-nginx-module's own for its cosockets
TROUBLE = [r"\[error\].*lua tcp socket read timed out",
           r"\[error\].*ngx_ipc cluster: ",
           r"\[error\].* (connect|recv|send|writev)\(\) failed \(\d+: "]


def cluster_status(ex):
    status, body, _ = ex.request("/ipc_status?format=json")
    assert status == 200, body
    return json.loads(body)["cluster"]


purge = examples_fixture(PURGE, ready=lambda ex: cluster_status(ex)["connected"],
                         allowed=TROUBLE)


def two_nodes(redis_server, purge):
    """Redis and nodes a (2 workers) and b (3), each worker of each holding
    apple=red and pear=green in its cache (served from it: X-Cache HIT)."""
    r = redis_server()
    nodes = [purge(2, REDIS_URL=r.url(), NODE="a"), purge(3, REDIS_URL=r.url(), NODE="b")]
    for ex in nodes:
        for key, value in (("apple", b"red"), ("pear", b"green")):
            assert ex.request(f"/origin/{key}", method="POST", body=value)[:2] == \
                (200, b"stored\n")
            assert_each_worker_says(ex, key, value, "HIT")
    return r, *nodes


def assert_each_worker_says(ex, key, value, cache=None):
    """Until every worker of ex answered /item/key with value (and X-Cache)."""
    each_worker(ex, f"/item/{key}", ex.pids,
                want=lambda status, body, headers: (status, body) == (200, value + b"\n")
                and cache in (None, headers["X-Cache"]))


def change_origin(nodes, **values):
    for ex in nodes:
        for key, value in values.items():
            assert ex.request(f"/origin/{key}", method="POST", body=value)[0] == 200


def test_a_purge_on_one_node_reaches_every_worker_of_both(redis_server, purge):
    r, a, b = two_nodes(redis_server, purge)
    change_origin([a, b], apple=b"blue")
    for ex in (a, b):   # stale until the purge: every worker still says red
        assert set(each_worker(ex, "/item/apple", ex.pids).values()) == {(200, b"red\n")}

    assert a.request("/purge?key=apple")[:2] == \
        (200, b"purge of apple queued for every worker of every node\n")
    for ex in (a, b):
        assert_each_worker_says(ex, "apple", b"blue")
        assert_each_worker_says(ex, "pear", b"green", "HIT")   # not purged
    assert [cluster_status(ex)["gaps"] for ex in (a, b)] == [0, 0]

    # no key: everything, everywhere
    change_origin([a, b], pear=b"yellow")
    assert b.request("/purge")[:2] == \
        (200, b"purge of everything queued for every worker of every node\n")
    for ex in (a, b):
        assert_each_worker_says(ex, "pear", b"yellow")
        flushed = re.compile(rb"worker \d: 1 flushes, last: purge of everything from b\n")
        each_worker(ex, "/cache", ex.pids, want=lambda status, body, headers:
                    status == 200 and flushed.fullmatch(body))


def test_purges_lost_from_the_stream_flush_the_whole_cache(redis_server, purge):
    """Node b stopped (its master and workers, SIGSTOP) while a purges
    apple and pear, and the stream trimmed meanwhile: b never sees those
    purges. Its gap hook drops everything in every worker; a's caches only
    lose what was purged."""
    r, a, b = two_nodes(redis_server, purge)
    change_origin([a, b], apple=b"blue", pear=b"yellow")
    # b reads one message of a first: it has a position and knows a's
    # numbers, so it can tell what it missed, whichever way it notices
    assert a.request("/purge?key=fig")[0] == 200
    wait_for(lambda: cluster_status(b)["received"] == 1, what="b read a purge")
    stopped = [b.proc.pid] + b.pids
    for pid in stopped:
        os.kill(pid, signal.SIGSTOP)
    try:
        # one stream entry each: b's pending XREAD may take the first only
        for i, key in enumerate(("fig", "apple", "pear"), 2):
            assert a.request(f"/purge?key={key}")[0] == 200
            wait_for(lambda: cluster_status(a)["added"] >= i, what=f"purge {i} in Redis")
        assert r.command("XTRIM", "cache_purge", "MAXLEN", "0") == 4
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
    # a message after the gap lets b see its numbers skip, if the agent it
    # resumed with did not find the trim first
    assert a.request("/purge?key=fig")[0] == 200

    flushed = re.compile(rb"worker \d: 1 flushes, last: cluster gap: .+\n")
    each_worker(b, "/cache", b.pids, want=lambda status, body, headers:
                status == 200 and flushed.fullmatch(body))
    assert_each_worker_says(b, "apple", b"blue", "MISS")
    assert_each_worker_says(b, "pear", b"yellow", "MISS")
    assert cluster_status(b)["gaps"] == 1
    # a purged both itself and lost nothing
    assert set(each_worker(a, "/cache", a.pids).values()) == \
        {(200, f"worker {w}: 0 flushes, last: -\n".encode()) for w in (0, 1)}
    assert cluster_status(a)["gaps"] == 0
    assert_each_worker_says(a, "apple", b"blue")


def test_a_purge_while_redis_is_down_waits_in_the_outbox(redis_server, purge):
    r, a, b = two_nodes(redis_server, purge)
    change_origin([a, b], apple=b"blue")
    r.kill()
    wait_for(lambda: not cluster_status(a)["connected"], what="a's link down")
    assert a.request("/purge?key=apple")[:2] == \
        (200, b"purge of apple queued for every worker of every node\n")
    assert_each_worker_says(a, "apple", b"blue")            # local: at once
    assert cluster_status(a)["outbox_bytes"] > 0
    assert set(each_worker(b, "/item/apple", b.pids).values()) == {(200, b"red\n")}
    r.restart()
    assert_each_worker_says(b, "apple", b"blue")
    assert [cluster_status(ex)["gaps"] for ex in (a, b)] == [0, 0]


# -- examples/prometheus ------------------------------------------------------
