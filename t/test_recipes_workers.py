"""The recipes of docs/RECIPES.md that work between the workers of one
nginx, each run as shipped by example_runner: examples/cache-purge,
examples/sharding and examples/init-worker-call. Traffic goes to 127.0.0.1
only; the only processes signalled are this test's own nginx workers, by
PID (SIGCONT in a finally after every SIGSTOP).
"""

import os
import signal
import time

import pytest

from example_runner import EXAMPLES, examples_fixture
from harness import wait_for


def by_worker(ex, path, each=2, attempts=400, timeout=30.0):
    """GET `path` on new connections until every worker of `ex` answered
    it `each` times (the recipes listen with reuseport: the kernel spreads
    connections by their source port) -> {pid: [(status, body, headers)]}.
    Bounded by count and time."""
    seen = {pid: [] for pid in ex.pids}
    deadline = time.monotonic() + timeout
    for _ in range(attempts):
        if all(len(answers) >= each for answers in seen.values()) or \
                time.monotonic() > deadline:
            break
        status, body, headers = ex.request(path)
        pid = int(headers["X-Worker-Pid"])
        assert pid in seen, (pid, ex.pids)
        seen[pid].append((status, body, headers))
    missing = {pid: len(a) for pid, a in seen.items() if len(a) < each}
    assert not missing, f"workers not reached {each} times: {missing}"
    return seen


# --- cache-purge ----------------------------------------------------------

def purge_confirmed(ex):
    """/purge is answered once every worker confirmed it (ready)."""
    status, body, _ = ex.request("/purge", timeout=3.0)
    return (status, body) == (200, b"purged everything in %d workers\n" % ex.workers)


cache_purge = examples_fixture(EXAMPLES / "cache-purge" / "nginx.conf",
                               ready=purge_confirmed)


def assert_cached_everywhere(ex, key, value):
    """In every worker: the first answer a MISS, the later ones HITs, all
    `value`."""
    for pid, answers in by_worker(ex, f"/item/{key}").items():
        got = [(status, headers["X-Cache"], body) for status, body, headers in answers]
        assert got == [(200, "MISS", value + b"\n")] + \
            [(200, "HIT", value + b"\n")] * (len(got) - 1), pid


def purge_avoiding_stopped(ex, query, attempts=10):
    """/purge on a connection that a running worker accepted: one that the
    stopped worker's socket takes is never answered, so it times out and
    a new connection (a new hash) is tried. -> (status, body)."""
    for _ in range(attempts):
        try:
            return ex.request(f"/purge{query}", timeout=5.0)[:2]
        except OSError:  # TimeoutError: landed on the stopped worker
            continue
    raise AssertionError(f"/purge{query} not answered in {attempts} connections")


@pytest.mark.parametrize("workers", [2, 4])
def test_cache_purge_reaches_every_worker(cache_purge, workers):
    ex = cache_purge(workers)
    status, _, headers = ex.request("/item/apple")  # not in the origin: nginx's 404 page
    assert (status, headers.get("X-Cache")) == (404, None)
    assert ex.request("/origin/apple", method="POST", body=b"red")[:2] == (200, b"stored\n")
    assert_cached_everywhere(ex, "apple", b"red")

    # the origin changes: the workers keep serving their cached copy ...
    assert ex.request("/origin/apple", method="POST", body=b"green")[:2] == \
        (200, b"stored\n")
    for pid, answers in by_worker(ex, "/item/apple", each=1).items():
        assert {(a[1], a[2]["X-Cache"]) for a in answers} == {(b"red\n", "HIT")}, pid
    # ... until a purge, confirmed by every worker before it answers
    assert ex.request("/purge?key=apple")[:2] == \
        (200, b"purged apple in %d workers\n" % workers)
    assert_cached_everywhere(ex, "apple", b"green")

    # a key that needs escaping: the purge's ?key= is decoded as the path is
    assert ex.request("/origin/big%20apple", method="POST", body=b"huge")[:2] == \
        (200, b"stored\n")
    assert_cached_everywhere(ex, "big%20apple", b"huge")
    assert ex.request("/origin/big%20apple", method="POST", body=b"bigger")[:2] == \
        (200, b"stored\n")
    assert ex.request("/purge?key=big%20apple")[:2] == \
        (200, b"purged big apple in %d workers\n" % workers)
    assert_cached_everywhere(ex, "big%20apple", b"bigger")

    # purge everything
    assert ex.request("/origin/pear", method="POST", body=b"yellow")[:2] == \
        (200, b"stored\n")
    assert_cached_everywhere(ex, "pear", b"yellow")
    assert ex.request("/purge")[:2] == (200, b"purged everything in %d workers\n" % workers)
    assert_cached_everywhere(ex, "apple", b"green")
    assert_cached_everywhere(ex, "pear", b"yellow")


@pytest.mark.parametrize("workers", [2, 4])
def test_cache_purge_with_a_stopped_worker(cache_purge, workers):
    ex = cache_purge(workers)
    assert ex.request("/origin/plum", method="POST", body=b"blue")[:2] == (200, b"stored\n")
    assert_cached_everywhere(ex, "plum", b"blue")
    assert ex.request("/origin/plum", method="POST", body=b"purple")[:2] == \
        (200, b"stored\n")

    stopped = ex.pids[-1]
    os.kill(stopped, signal.SIGSTOP)
    try:
        # the broadcast is queued for the stopped worker too; its
        # confirmation times out (2 s) and the answer names it
        assert purge_avoiding_stopped(ex, "?key=plum") == (
            202, b"purged plum in %d workers; not confirmed by pid %d (timeout): "
                 b"it drops it when it handles its messages again\n" % (workers - 1, stopped))
    finally:
        os.kill(stopped, signal.SIGCONT)

    # once it runs again it handles the purge it was sent (no new purge here):
    # its answers turn from the stale copy to a fresh MISS, then HITs
    seen = []

    def fresh_in_stopped():
        status, body, headers = ex.request("/item/plum")
        if int(headers["X-Worker-Pid"]) == stopped:
            seen.append((status, body, headers["X-Cache"]))
        return seen and seen[-1][1] == b"purple\n"
    wait_for(fresh_in_stopped, timeout=20, what="the resumed worker to serve the new value")
    # a request taken in the instant before it handled its messages may
    # still see the old copy; the first new one is a MISS
    assert seen[-1] == (200, b"purple\n", "MISS")
    assert set(seen[:-1]) <= {(200, b"blue\n", "HIT")}, seen
    for pid, answers in by_worker(ex, "/item/plum").items():
        assert {a[1] for a in answers} == {b"purple\n"}, pid
        assert {a[2]["X-Cache"] for a in answers[1:]} == {"HIT"}, pid
    # every worker confirms purges again
    assert ex.request("/purge")[:2] == (200, b"purged everything in %d workers\n" % workers)
