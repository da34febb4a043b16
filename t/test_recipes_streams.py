"""The recipes examples/stream-table, examples/cluster-purge and
examples/prometheus, each run as shipped by example_runner (placeholders
filled in, every worker up before a test starts, stopped by PID). Traffic
goes to 127.0.0.1 only; every loop is bounded in count and time.
"""

import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from example_runner import EXAMPLES, examples_fixture
from harness import free_port, wait_for
from redis_server import redis_server  # noqa: F401 (the fixture)
from test_status import PROM_TYPE, parse_prometheus, promtool_check

# -- helpers ----------------------------------------------------------------


def each_worker(ex, path, pids, want=lambda status, body, headers: True, timeout=30):
    """GET `path` on new connections until every PID in `pids` answered
    (listen ... reuseport spreads them; X-Worker-Pid names the worker) with
    an answer `want` accepts. -> {pid: (status, body)}"""
    got = {}
    deadline = time.monotonic() + timeout
    for _ in range(2000):
        status, body, headers = ex.request(path)
        pid = int(headers["X-Worker-Pid"])
        if pid in pids and want(status, body, headers):
            got[pid] = (status, body)
        if set(got) == set(pids):
            return got
        assert time.monotonic() < deadline, \
            f"{path}: no wanted answer from {set(pids) - set(got)} in {timeout} s"
    raise AssertionError(f"{path}: workers {set(pids) - set(got)} never answered")


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

PROM = EXAMPLES / "prometheus"
# ready: every worker's slot says running (ipc.pids() lists it)
prom = examples_fixture(
    PROM / "nginx.conf",
    ready=lambda ex: scrape(ex).count(b'state="running"} 1\n') == ex.workers,
    allowed=[r"\[error\].* access forbidden by rule, client: 127\.0\.0\.2,"])
HELLO, ECHO = 5, 3   # the known load: broadcasts of "hi", calls of "abc"


def known_load(ex):
    for _ in range(HELLO):
        assert ex.request("/hello?data=hi")[:2] == (200, b"sent\n")
    for _ in range(ECHO):
        assert ex.request("/echo?data=abc")[:2] == (200, b"abc\n")


def scrape(ex):
    status, body, headers = ex.request("/metrics")
    assert (status, headers["Content-Type"]) == (200, PROM_TYPE), body
    return body


def settled(ex):
    """The page once every message is counted by its sender and its
    receiver and its inbox space freed (a sender counts a message just
    after it wrote it, so its receiver may count it first)."""
    def done():
        samples, _ = parse_prometheus(scrape(ex).decode())

        def total(metric):
            return sum(v for (name, _), v in samples.items() if name == metric)
        want = (HELLO * ex.workers + 2 * ECHO,) * 2 + (0,)
        got = tuple(total(f"ngx_ipc_{m}") for m in ("sent_total", "received_total",
                                                     "inbox_used_bytes"))
        return samples if got == want else None
    return wait_for(done, what="every message counted")


@pytest.mark.parametrize("workers", [2, 4])
def test_the_page_passes_promtool_and_counts_a_known_load(prom, workers):
    ex = prom(workers)
    known_load(ex)
    samples = settled(ex)
    promtool_check(scrape(ex))

    def value(name, worker=None, **labels):
        if worker is not None:
            labels["worker"] = str(worker)
        return samples[(name, frozenset(labels.items()))]

    def total(name):
        return sum(value(name, w) for w in range(workers))

    assert value("ngx_ipc_workers") == workers
    assert value("ngx_ipc_generation") == 1
    assert value("ngx_ipc_cluster_enabled") == 0
    assert sorted(value("ngx_ipc_worker_pid", w) for w in range(workers)) == ex.pids
    # each broadcast reaches every worker; a call is a request and a reply
    assert total("ngx_ipc_sent_total") == HELLO * workers + 2 * ECHO
    assert total("ngx_ipc_sent_bytes_total") == total("ngx_ipc_received_bytes_total") \
        == HELLO * workers * 2 + 2 * ECHO * 3
    assert total("ngx_ipc_calls_total") == ECHO
    for w in range(workers):
        assert value("ngx_ipc_worker_state", w, state="running") == 1
        assert value("ngx_ipc_received_total", w) == \
            HELLO + value("ngx_ipc_calls_total", w) + (ECHO if w == 0 else 0)
        for name in ("refused", "dropped", "handler_errors", "unhandled",
                     "call_timeouts", "resets"):
            assert value(f"ngx_ipc_{name}_total", w) == 0, name
        assert value("ngx_ipc_queued_bytes", w) == value("ngx_ipc_waiting_messages", w) == 0

    # GET and HEAD only; 127.0.0.1 only (a client from 127.0.0.2 is refused)
    assert ex.request("/metrics", method="POST")[0] == 405
    conn = http.client.HTTPConnection("127.0.0.1", ex.port, timeout=10,
                                      source_address=("127.0.0.2", 0))
    try:
        conn.request("GET", "/metrics")
        assert conn.getresponse().status == 403
    finally:
        conn.close()

    # a reload: a new configuration, its counters from zero (a counter reset)
    ex.reload()
    samples, _ = parse_prometheus(scrape(ex).decode())
    assert samples[("ngx_ipc_generation", frozenset())] == 2
    assert {v for (name, _), v in samples.items() if name == "ngx_ipc_received_total"} == {0}


def test_prometheus_scrapes_it_with_the_shipped_job(prom, tmp_path):
    """A real Prometheus, with examples/prometheus/prometheus.yml (its
    target's port and a 1 s interval swapped in), scrapes the page; the
    queries in nginx.conf's comment run."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus not installed (Debian package prometheus)")
    ex = prom(2)
    known_load(ex)
    settled(ex)
    conf = (PROM / "prometheus.yml").read_text()
    assert '["127.0.0.1:8080"]' in conf and "scrape_interval: 15s" in conf
    (tmp_path / "prometheus.yml").write_text(
        conf.replace("127.0.0.1:8080", f"127.0.0.1:{ex.port}").replace("15s", "1s"))
    check = subprocess.run(["promtool", "check", "config", tmp_path / "prometheus.yml"],
                           capture_output=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    port = free_port()   # Prometheus's own, on 127.0.0.1 too
    with open(tmp_path / "prometheus.log", "wb") as log:
        server = subprocess.Popen(
            [binary, f"--config.file={tmp_path}/prometheus.yml",
             f"--storage.tsdb.path={tmp_path}/data", f"--web.listen-address=127.0.0.1:{port}",
             "--log.level=warn"], stdin=subprocess.DEVNULL, stdout=log, stderr=log)

    def query(expr):
        url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=5) as r:
            answer = json.load(r)
        assert answer["status"] == "success", answer
        return {tuple(sorted((k, v) for k, v in s["metric"].items() if k != "__name__")):
                float(s["value"][1]) for s in answer["data"]["result"]}

    def scraped(expr, want):
        try:
            return query(expr) == want
        except OSError:   # not listening yet
            assert server.poll() is None, (tmp_path / "prometheus.log").read_text()
            return False

    instance = ("instance", f"127.0.0.1:{ex.port}")
    try:
        wait_for(lambda: scraped('up{job="ngx_ipc"}', {(instance, ("job", "ngx_ipc")): 1}),
                 timeout=30, what="Prometheus scraping the page")
        assert query("sum by (instance) (ngx_ipc_received_total)") == \
            {(instance,): HELLO * 2 + 2 * ECHO}
        assert query("ngx_ipc_inbox_capacity_bytes") == {
            (instance, ("job", "ngx_ipc"), ("worker", str(w))): 8 << 20 for w in (0, 1)}
        comment = (PROM / "nginx.conf").read_text().split("a few queries to start with")[1]
        queries = re.findall(r"^#   (\S.*)$", comment.split("\n#\n# A")[0], re.M)
        assert len(queries) == 4, queries
        for expr in queries:
            query(expr)
    finally:   # by its PID
        server.kill()
        server.wait(10)
