"""The example configuration examples/kv/nginx.conf, as shipped: run by
example_runner (rendered under a temporary prefix, every worker's keys
answering before a test starts, stopped by PID). Traffic goes to 127.0.0.1
only.
"""

import random
import re
import threading
import time
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from example_runner import EXAMPLES, examples_fixture
from harness import wait_for

EXAMPLE = EXAMPLES / "kv" / "nginx.conf"


def owner_of(key, workers):
    """The example's owner: ngx.crc32_long(key) % #pids (worker id)."""
    return zlib.crc32(key.encode()) % workers


def probe_key(owner, workers):
    """/kv/<key> for a key (never set) that worker `owner` owns."""
    for i in range(1000):
        key = f"probe-{i}"
        if owner_of(key, workers) == owner:
            return f"/kv/{key}"
    raise AssertionError("no probe key")


def every_owner_answers(kv):
    """Every worker owns a key that answers: 404 (unknown) once its owner
    is in ipc.pids() of the worker serving the request."""
    return all(kv.request(probe_key(owner, kv.workers), timeout=2.0)[0] == 404
               for owner in range(kv.workers))


example = examples_fixture(EXAMPLE, ready=every_owner_answers)


KEYS = [f"key{i:02d}" for i in range(20)]
INCRS = {key: 5 + 10 * i for i, key in enumerate(KEYS)}  # 2000 in all
CLIENTS = 8


@pytest.mark.parametrize("workers", [2, 4])
def test_concurrent_incr_counts_exactly(example, workers):
    kv = example(workers)
    assert sum(INCRS.values()) == 2000

    jobs = [key for key, count in INCRS.items() for _ in range(count)]
    random.Random(workers).shuffle(jobs)
    lock = threading.Lock()
    next_job = [0]
    deadline = time.monotonic() + 40

    def client():
        """Takes jobs until none is left; one new connection per request."""
        out = []
        while time.monotonic() < deadline:
            with lock:
                if next_job[0] >= len(jobs):
                    break
                key = jobs[next_job[0]]
                next_job[0] += 1
            status, body, headers = kv.request(f"/kv/{key}?op=incr", timeout=10)
            out.append((key, status, body, headers.get("X-Owner-Worker"),
                        headers.get("X-Served-By-Worker")))
        return out

    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        futures = [pool.submit(client) for _ in range(CLIENTS)]
        answers = [a for f in futures for a in f.result(timeout=60)]
    assert len(answers) == len(jobs), "clients ran out of time"

    bad = [a for a in answers if a[1] != 200]
    assert not bad, bad[:10]
    # every incr answers the new value: per key, exactly 1..count
    values = {key: sorted(int(a[2]) for a in answers if a[0] == key) for key in KEYS}
    wrong = {key: v for key, v in values.items() if v != list(range(1, INCRS[key] + 1))}
    assert not wrong, {k: v[:5] + ["..."] for k, v in wrong.items()}
    # one owner per key, the one the example's hash names
    owners = {key: {a[3] for a in answers if a[0] == key} for key in KEYS}
    assert owners == {key: {str(owner_of(key, workers))} for key in KEYS}
    # the requests were spread, and many were served by a worker that is not
    # the key's owner (a call to another worker)
    served = Counter(a[4] for a in answers)
    assert len(served) >= 2, served
    assert sum(a[3] != a[4] for a in answers) > 100

    for key, count in INCRS.items():
        status, body, headers = kv.request(f"/kv/{key}")
        assert (status, body) == (200, b"%d\n" % count), key
        assert headers["X-Owner-Worker"] == str(owner_of(key, workers))


@pytest.mark.parametrize("workers", [2, 4])
def test_set_get_unknown_and_purge(example, workers):
    kv = example(workers)
    for i in range(3 * workers):
        key = f"s{i}"
        value = f"value-{i}-{'x' * i}"
        assert kv.request(f"/kv/{key}?op=set&value={value}")[:2] == \
            (200, value.encode() + b"\n")
        # read back on new connections: from whichever worker serves it
        for _ in range(4):
            status, body, headers = kv.request(f"/kv/{key}")
            assert (status, body) == (200, value.encode() + b"\n")
            assert headers["X-Owner-Worker"] == str(owner_of(key, workers))
    assert kv.request("/kv/s0?op=set&value=replaced")[:2] == (200, b"replaced\n")
    assert kv.request("/kv/s0")[:2] == (200, b"replaced\n")
    assert kv.request("/kv/s0?op=incr")[:2] == (200, b"1\n")  # not a number: restarts

    status, body, headers = kv.request("/kv/never-set")
    assert (status, body) == (404, b"\n")
    assert headers["X-Owner-Worker"] == str(owner_of("never-set", workers))

    assert kv.request("/purge")[:2] == (200, b"purge sent to every worker\n")
    wait_for(lambda: all(kv.request(f"/kv/s{i}")[0] == 404 for i in range(3 * workers)),
             timeout=10, what="every shard purged")
    wait_for(lambda: len(re.findall(r"purged its shard", kv.error_log())) == workers,
             timeout=10, what="every worker logged its purge")

    status, body, _ = kv.request("/stats")
    assert status == 200 and body.startswith(b"worker ")
    assert re.search(rb"^  calls = \d+$", body, re.M)
