"""The recipes of docs/RECIPES.md that work between the workers of one
nginx, each run as shipped by example_runner: examples/cache-purge,
examples/sharding and examples/init-worker-call. Traffic goes to 127.0.0.1
only; the only processes signalled are this test's own nginx workers, by
PID (SIGCONT in a finally after every SIGSTOP).
"""

import contextlib
import http.client
import itertools
import os
import re
import signal
import threading
import time
import zlib

import pytest

from example_runner import EXAMPLES, examples_fixture
from harness import child_pids, wait_for


def by_worker(ex, path, each=2, attempts=400, timeout=30.0):
    """GET `path` on new connections (reuseport spreads them over the
    workers) until every worker answered `each` times, bounded by count and
    time -> {pid: [(status, body, headers)]}."""
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


def replace_worker(ex, victim):
    """SIGKILL one of ex's workers by PID -> the PID the master started in
    its place (ex.pids updated)."""
    before = set(ex.pids)
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: len(set(child_pids(ex.proc.pid)) - {victim}) == ex.workers,
             timeout=10, what=f"worker {victim} replaced")
    ex.pids = child_pids(ex.proc.pid)
    (replacement,) = set(ex.pids) - before
    return replacement


# --- cache-purge ----------------------------------------------------------

cache_purge = examples_fixture(  # ready once every worker confirms a purge
    EXAMPLES / "cache-purge" / "nginx.conf",
    ready=lambda ex: ex.request("/purge", timeout=3.0)[:2]
    == (200, b"purged everything in %d workers\n" % ex.workers))


def store(ex, key, value):
    """Writes the recipe's stand-in database (which does not purge)."""
    assert ex.request(f"/origin/{key}", method="POST", body=value)[:2] == (200, b"stored\n")


def assert_cached_everywhere(ex, key, value):
    """In every worker: the first answer a MISS, the later ones HITs, all
    `value`."""
    for pid, answers in by_worker(ex, f"/item/{key}").items():
        got = [(status, headers["X-Cache"], body) for status, body, headers in answers]
        assert got == [(200, "MISS", value + b"\n")] + \
            [(200, "HIT", value + b"\n")] * (len(got) - 1), pid


def purge_avoiding_stopped(ex, query, attempts=10):
    """/purge on a connection a running worker took: the stopped worker's
    socket never answers, so it times out and a new connection is tried."""
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
    store(ex, "apple", b"red")
    assert_cached_everywhere(ex, "apple", b"red")

    # the origin changes: the workers keep serving their cached copy ...
    store(ex, "apple", b"green")
    for pid, answers in by_worker(ex, "/item/apple", each=1).items():
        assert {(a[1], a[2]["X-Cache"]) for a in answers} == {(b"red\n", "HIT")}, pid
    # ... until a purge, confirmed by every worker before it answers
    assert ex.request("/purge?key=apple")[:2] == \
        (200, b"purged apple in %d workers\n" % workers)
    assert_cached_everywhere(ex, "apple", b"green")

    # a key that needs escaping: the purge's ?key= is decoded as the path is
    store(ex, "big%20apple", b"huge")
    assert_cached_everywhere(ex, "big%20apple", b"huge")
    store(ex, "big%20apple", b"bigger")
    assert ex.request("/purge?key=big%20apple")[:2] == \
        (200, b"purged big apple in %d workers\n" % workers)
    assert_cached_everywhere(ex, "big%20apple", b"bigger")

    # purge everything
    store(ex, "pear", b"yellow")
    assert_cached_everywhere(ex, "pear", b"yellow")
    assert ex.request("/purge")[:2] == (200, b"purged everything in %d workers\n" % workers)
    assert_cached_everywhere(ex, "apple", b"green")
    assert_cached_everywhere(ex, "pear", b"yellow")


@pytest.mark.parametrize("workers", [2, 4])
def test_cache_purge_with_a_stopped_worker(cache_purge, workers):
    ex = cache_purge(workers)
    store(ex, "plum", b"blue")
    assert_cached_everywhere(ex, "plum", b"blue")
    store(ex, "plum", b"purple")

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


# --- sharding -------------------------------------------------------------

def owner_of(key, workers):
    """The recipe's owner: ngx.crc32_long(key) % #pids, a worker id."""
    return zlib.crc32(key.encode()) % workers


def keys_owned(workers, per_worker, prefix):
    """`per_worker` keys owned by each worker id, in turn."""
    keys = {w: [] for w in range(workers)}
    for i in range(100 * workers * per_worker):
        key = f"{prefix}{i}"
        if len(keys[owner_of(key, workers)]) < per_worker:
            keys[owner_of(key, workers)].append(key)
    return [key for turn in zip(*keys.values()) for key in turn]


def every_owner_serves(ex):
    """A key of each worker answers (404: never set) once its owner runs
    and has retired the older generations."""
    return all(ex.request(f"/kv/{key}", timeout=3.0)[0] == 404
               for key in keys_owned(ex.workers, 1, "probe-"))


sharding = examples_fixture(EXAMPLES / "sharding" / "nginx.conf",
                            ready=every_owner_serves, allowed=[r"exited on signal 9"])


@contextlib.contextmanager
def incr_clients(ex, keys, clients=8):
    """`clients` threads incr the keys in turn, on new connections, until
    the block ends (60 s at most) -> [(key, status, body, headers)]."""
    answers, stop, deadline = [], threading.Event(), time.monotonic() + 60

    def client(offset):
        for n in itertools.count(offset):
            if stop.is_set() or time.monotonic() > deadline:
                return
            key = keys[n % len(keys)]
            try:
                answers.append((key, *ex.request(f"/kv/{key}?op=incr")))
            except (OSError, http.client.HTTPException) as e:
                answers.append((key, None, repr(e).encode(), {}))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    try:
        yield answers
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)


def owners(answers, workers):
    """{worker id: owner PIDs seen}, checking each key's owner id is the
    recipe's."""
    seen = {}
    for key, _, _, headers in answers:
        assert headers["X-Owner-Worker"] == str(owner_of(key, workers)), key
        seen.setdefault(owner_of(key, workers), set()).add(int(headers["X-Owner-Pid"]))
    return seen


def assert_each_incr_once(ex, answers, keys):
    """Every incr answered 200 with a value no other one got: per key
    exactly 1..N, and the key now reads N."""
    assert [a[:3] for a in answers if a[1] != 200] == []
    for key in keys:
        values = sorted(int(a[2]) for a in answers if a[0] == key)
        assert values == list(range(1, len(values) + 1)), key
        assert ex.request(f"/kv/{key}")[:2] == (200, b"%d\n" % len(values)), key


@pytest.mark.parametrize("workers", [2, 4])
def test_sharding_counts_exactly_under_concurrency(sharding, workers):
    ex = sharding(workers)
    keys = keys_owned(workers, 3, "count-")
    with incr_clients(ex, keys) as answers:
        wait_for(lambda: len(answers) >= 600, timeout=60, what="600 incrs")
    assert_each_incr_once(ex, answers, keys)
    # one owner per worker id, each a worker of this nginx
    seen = owners(answers, workers)
    assert sorted(pid for pids in seen.values() for pid in pids) == sorted(ex.pids)
    # most requests were taken by a worker that is not the key's owner
    assert sum(a[3]["X-Owner-Pid"] != a[3]["X-Worker-Pid"] for a in answers) \
        > len(answers) // 4


@pytest.mark.parametrize("workers", [2, 4])
def test_sharding_state_survives_reload_and_crash(sharding, workers):
    ex = sharding(workers)
    keys = keys_owned(workers, 2, "keep-")
    expect = {key: b"value %d %s\n" % (i, b"x" * i) for i, key in enumerate(keys)}
    for key, value in expect.items():
        query = value[:-1].replace(b" ", b"%20").decode()
        assert ex.request(f"/kv/{key}?op=set&value={query}")[:2] == (200, value)
    for n in (1, 2, 3):
        assert ex.request(f"/kv/{keys[1]}?op=incr")[:2] == (200, b"%d\n" % n)
    expect[keys[1]] = b"3\n"
    assert ex.request(f"/kv/{keys[0]}?op=set&value=")[:2] == (404, b"\n")  # deleted
    expect[keys[0]] = None

    def assert_kept(pids):
        """Every key as it was; -> {key: owner PID}, each one of `pids`."""
        got = {}
        for key in keys:
            status, body, headers = ex.request(f"/kv/{key}")
            assert (status, body) == ((404, b"\n") if expect[key] is None
                                      else (200, expect[key])), key
            got[key] = int(headers["X-Owner-Pid"])
            assert got[key] in pids, key
        return got

    old = set(ex.pids)
    assert_kept(old)
    ex.reload()
    assert not old & set(ex.pids) and len(ex.pids) == workers
    owner_pids = assert_kept(set(ex.pids))  # the new generation owns them
    assert ex.request(f"/kv/{keys[1]}?op=incr")[:2] == (200, b"4\n")
    expect[keys[1]] = b"4\n"

    # a crash: the master starts another worker in the owner's place
    replacement = replace_worker(ex, owner_pids[keys[1]])
    wait_for(lambda: every_owner_serves(ex), timeout=10, what="every owner serving")
    assert assert_kept(set(ex.pids))[keys[1]] == replacement  # a new owner, same values
    assert "exited on signal 9" in ex.error_log()


@pytest.mark.parametrize("workers", [2, 4])
def test_sharding_reloads_under_traffic_keep_one_writer(sharding, workers):
    """incrs run while nginx reloads, three times: the old owners are
    retired before the new ones write, so no value is answered twice or
    skipped, and the answers come from each generation's owners in turn."""
    ex = sharding(workers)
    keys = keys_owned(workers, 1, "busy-")
    generations = [set(ex.pids)]

    def fifty_owned_by_the_last(answers):
        return lambda: sum(int(a[3].get("X-Owner-Pid", 0)) in generations[-1]
                           for a in answers) >= 50
    with incr_clients(ex, keys) as answers:
        wait_for(fifty_owned_by_the_last(answers), timeout=30, what="50 incrs")
        for _ in range(3):
            ex.reload()
            generations.append(set(ex.pids))
            wait_for(fifty_owned_by_the_last(answers), timeout=30,
                     what="50 incrs owned by the new generation")
    assert_each_incr_once(ex, answers, keys)
    seen = owners(answers, workers)
    for a, b in zip(generations, generations[1:]):
        assert not a & b
    # every generation owned each worker id's keys in turn
    for pids in seen.values():
        assert all(pids & generation for generation in generations), (seen, generations)


# --- init-worker-call -----------------------------------------------------

init_worker_call = examples_fixture(
    EXAMPLES / "init-worker-call" / "nginx.conf", allowed=[r"exited on signal 9"],
    ready=lambda ex: ex.request("/snapshot", timeout=3.0)[0] == 200)

BUILT = re.compile(rb"built by worker 0 \(pid (\d+)\) at \d+\.\d{3}\n")
ROUTES = b"".join(b"route-%d backend-%d\n" % (i, i * 7 % 13) for i in range(1, 101))


def one_snapshot(ex, started):
    """Waits (bounded) until every worker serves a snapshot; checks they
    all serve the same one, copied from another worker except where it was
    built -> (its text, the PID that built it)."""
    def every_worker_has_one():
        seen = by_worker(ex, "/snapshot", each=1)
        return seen if all(a[-1][0] == 200 for a in seen.values()) else None
    seen = wait_for(every_worker_has_one, timeout=20, what="a snapshot in every worker")

    texts = {answers[-1][1] for answers in seen.values()}
    assert len(texts) == 1, texts
    text = texts.pop()
    built = BUILT.fullmatch(text[:-len(ROUTES)])
    assert built and text.endswith(ROUTES), text[:200]
    builder = int(built.group(1))
    assert builder in started
    for pid, answers in seen.items():
        source = answers[-1][2]["X-Snapshot-From"]
        assert source == "built here" if pid == builder else \
            int(source) in started - {pid}, (pid, source, started)
    return text, builder


@pytest.mark.parametrize("workers", [2, 4])
def test_init_worker_call_every_worker_gets_the_snapshot(init_worker_call, workers):
    ex = init_worker_call(workers)
    started = set(ex.pids)
    text, builder = one_snapshot(ex, started)
    assert ex.request("/route/route-7")[:2] == (200, b"backend-10\n")
    assert ex.request("/route/route-999")[0] == 404

    # a worker killed, then worker 0 (the builder) itself: each replacement
    # copies the snapshot from a worker still running, none builds one
    for victim in ([p for p in ex.pids if p != builder][0], builder):
        started.add(replace_worker(ex, victim))
        assert one_snapshot(ex, started) == (text, builder)

    # a reload: the new generation's worker 0 builds a new one, and the
    # other new workers copy it
    old = set(ex.pids)
    ex.reload()
    assert not old & set(ex.pids)
    new_text, new_builder = one_snapshot(ex, set(ex.pids))
    assert new_text != text and new_builder in ex.pids
    assert ex.request("/route/route-7")[:2] == (200, b"backend-10\n")


@pytest.mark.parametrize("workers", [2, 4])
def test_init_worker_call_retries_while_peers_do_not_answer(init_worker_call, workers):
    """Worker 0 killed while every other worker is stopped: its replacement
    cannot tell whether they hold a snapshot (their calls time out), so it
    builds none and asks again until they answer."""
    ex = init_worker_call(workers)
    started = set(ex.pids)
    text, builder = one_snapshot(ex, started)
    others = [pid for pid in ex.pids if pid != builder]
    for pid in others:
        os.kill(pid, signal.SIGSTOP)
    try:
        replacement = replace_worker(ex, builder)
        # every stopped worker was asked once, and did not answer
        timed_out = [re.compile(rf"#{replacement}: .*snapshot: worker pid {pid} did "
                                r"not answer: timeout") for pid in others]
        wait_for(lambda: all(t.search(ex.error_log()) for t in timed_out), timeout=20,
                 what="the replacement's calls to the stopped workers to time out")
    finally:
        for pid in others:
            os.kill(pid, signal.SIGCONT)
    assert one_snapshot(ex, started | {replacement}) == (text, builder)
    status, _, headers = by_worker(ex, "/snapshot", each=1)[replacement][-1]
    assert status == 200 and int(headers["X-Snapshot-Attempts"]) >= 2
    assert int(headers["X-Snapshot-From"]) in others
