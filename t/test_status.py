"""The ipc_status page and ipc.stats(pid | "all") (issue 11, part 1).

Every worker's counters live in its slot of the shared mapping; the page
reads them in C from whichever worker takes the request.  These tests parse
both formats (Prometheus text and JSON) from real nginx, check the figures
against a known load exactly, run `promtool check metrics` on the text, kill
a worker and look at its successor, and scrape while the workers are busy.
"""

import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import time

import pytest

from harness import child_pids, wait_for
from ipc_lua import GATED, WORKERS

STATUS = """
    location = /ipc_status { ipc_status; }
    location = /s/ipc_status { ipc_status; }
"""

# the counters of ipc.stats(), as the JSON names them
COUNTERS = ["sent", "received", "sent_bytes", "received_bytes", "dropped",
            "refused", "handler_errors", "calls", "call_timeouts",
            "queued_bytes", "resets", "unhandled"]

PROM_TYPE = "text/plain; version=0.0.4; charset=utf-8"

KILLED = r"exited on signal 9"

# "c" only counts what it gets, in the worker's own Lua state
COUNTING = """
    local S = T.state
    S.c = 0
    ipc.receive("c", function(data) S.c = S.c + 1 end)
"""

PROMTOOL = shutil.which("promtool")


def fetch(n, path="/ipc_status", method="GET", headers=None, worker=None,
          timeout=10):
    """One request -> (status, headers dict with lower-case names, body)."""
    if worker is not None:
        path += ("&" if "?" in path else "?") + f"worker={worker}"
    deadline = time.monotonic() + timeout
    for _ in range(400):
        conn = http.client.HTTPConnection("127.0.0.1", n.port,
                                          timeout=max(deadline - time.monotonic(), 0.1))
        try:
            conn.request(method, path, headers={"Connection": "close",
                                                **(headers or {})})
            r = conn.getresponse()
            status, hdrs, body = r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()
        if status != 409 or worker is None:
            return status, hdrs, body
        assert time.monotonic() < deadline, f"worker {worker} did not answer"
    raise AssertionError(f"worker {worker} did not answer {path}")


def status_json(n, worker=None):
    status, hdrs, body = fetch(n, "/ipc_status?format=json", worker=worker)
    assert status == 200, body
    assert hdrs["content-type"] == "application/json"
    return json.loads(body)


SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})? (\S+)$')


def parse_prometheus(text):
    """-> ({(name, frozenset(labels.items())): value}, {name: type})"""
    samples, types = {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
            continue
        if line.startswith("#") or not line:
            continue
        m = SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        name, labels, value = m.groups()
        assert name in types, f"{name} has no # TYPE before it"
        labels = dict(re.findall(r'(\w+)="([^"]*)"', labels or ""))
        key = (name, frozenset(labels.items()))
        assert key not in samples, f"duplicate sample {line!r}"
        samples[key] = float(value)
    return samples, types


def status_prometheus(n, worker=None):
    status, hdrs, body = fetch(n, worker=worker)
    assert status == 200, body
    assert hdrs["content-type"] == PROM_TYPE
    return body


def promtool_check(text):
    if PROMTOOL is None:
        pytest.skip("promtool not installed (Debian package prometheus)")
    r = subprocess.run([PROMTOOL, "check", "metrics"], input=text,
                       capture_output=True, timeout=30)
    assert r.returncode == 0, (r.stdout + r.stderr).decode()[:2000]


def prom_worker(samples, name, worker):
    return samples[(name, frozenset({("worker", str(worker))}))]


def check_same_figures(js, samples, types):
    """The two formats say the same (counters read at two moments: only
    for a quiet nginx)."""
    cfg = js["config"]
    assert samples[("ngx_ipc_workers", frozenset())] == cfg["workers"]
    assert samples[("ngx_ipc_ring_size_bytes", frozenset())] == cfg["ring_size"]
    assert samples[("ngx_ipc_queue_limit_bytes", frozenset())] == cfg["queue_limit"]
    assert samples[("ngx_ipc_max_message_bytes", frozenset())] == cfg["max_message"]
    assert samples[("ngx_ipc_generation", frozenset())] == cfg["generation"]
    assert samples[("ngx_ipc_shared_memory_bytes", frozenset())] == \
        cfg["shared_memory_bytes"]
    for w in js["workers"]:
        i = w["worker"]
        assert prom_worker(samples, "ngx_ipc_worker_pid", i) == w["pid"]
        assert prom_worker(samples, "ngx_ipc_worker_incarnation", i) == w["incarnation"]
        state = samples[("ngx_ipc_worker_state",
                         frozenset({("worker", str(i)), ("state", w["state"])}))]
        assert state == 1
        for key in COUNTERS:
            name = f"ngx_ipc_{key}" + ("" if key == "queued_bytes" else "_total")
            assert types[name] == ("gauge" if key == "queued_bytes" else "counter")
            assert prom_worker(samples, name, i) == w[key], (name, i)
        assert prom_worker(samples, "ngx_ipc_queued_messages", i) == w["queued_messages"]
        assert types["ngx_ipc_queued_messages"] == "gauge"
    for box in js["inboxes"]:
        labels = frozenset({("worker", str(box["worker"]))})
        for key, metric in (("used_bytes", "inbox_used_bytes"),
                            ("capacity_bytes", "inbox_capacity_bytes"),
                            ("waiting_messages", "waiting_messages")):
            assert samples[(f"ngx_ipc_{metric}", labels)] == box[key]


@pytest.mark.parametrize("workers", WORKERS)
def test_exact_counts_after_a_known_load(nginx, workers):
    n = nginx(workers=workers, init_worker=COUNTING, locations=STATUS)
    # worker i sends (i + 1) messages of 10 * (j + 1) bytes to each worker
    # j (itself included), one broadcast of 7 bytes, and one send that is
    # refused ("no such worker")
    for i in range(workers):
        n.lua(f"""
            local pids = ipc.pids()
            for j = 1, #pids do
                for k = 1, {i + 1} do
                    assert(ipc.send(pids[j], "c", ("x"):rep(10 * j)))
                end
            end
            assert(ipc.broadcast("c", "1234567"))
            local ok, err = ipc.send(1, "c", "refused")
            assert(err == "no such worker", err)
        """, worker=i)

    want_rx = sum(i + 1 for i in range(workers)) + workers

    def all_received():
        # a worker counts a batch when it takes it and frees its inbox space
        # when it asks for the next one: the page may show the space between
        js = status_json(n)
        done = all(w["received"] == want_rx for w in js["workers"]) \
            and all(box["used_bytes"] == 0 for box in js["inboxes"])
        return js if done else None

    js = wait_for(all_received, what="every message received and its space freed")

    assert js["config"] == {"workers": workers, "ring_size": js["config"]["ring_size"],
                            "max_message": 64 << 20, "queue_limit": 16 << 20,
                            "busy_poll_us": 50, "generation": 1,
                            "shared_memory_bytes": js["config"]["shared_memory_bytes"]}
    # n inboxes and what the slots need beside them
    assert workers * js["config"]["ring_size"] < js["config"]["shared_memory_bytes"] \
        <= workers * (js["config"]["ring_size"] + 4096) + 4096
    assert [w["worker"] for w in js["workers"]] == list(range(workers))
    for w in js["workers"]:
        i = w["worker"]
        assert w["pid"] == n.pids[i]
        assert w["state"] == "running"
        assert w["incarnation"] == 1
        assert w["sent"] == (i + 1) * workers + workers
        assert w["sent_bytes"] == sum((i + 1) * 10 * (j + 1) for j in range(workers)) \
            + 7 * workers
        assert w["received"] == want_rx
        assert w["received_bytes"] == sum((s + 1) * 10 * (i + 1) for s in range(workers)) \
            + 7 * workers
        assert w["refused"] == 1
        for key in ("dropped", "handler_errors", "calls", "call_timeouts",
                    "queued_bytes", "resets"):
            assert w[key] == 0, key
        assert w["queued_messages"] == 0
        assert w["busy_poll_seconds"] >= 0
    # every inbox carried traffic, and all of it has been read
    assert [box["worker"] for box in js["inboxes"]] == list(range(workers))
    for box in js["inboxes"]:
        assert box["used_bytes"] == 0
        assert box["waiting_messages"] == 0
        assert box["capacity_bytes"] == js["config"]["ring_size"]

    # the handlers ran for every message (the status counts what the core saw)
    for i in range(workers):
        assert n.lua("return T.state.c", worker=i) == [want_rx]

    text = status_prometheus(n)
    promtool_check(text)
    samples, types = parse_prometheus(text.decode())
    js2 = status_json(n)
    for w in js2["workers"]:
        w.pop("busy_poll_seconds")  # moves with every poll
    check_same_figures(js2, samples, types)

    # ipc.stats("all") and ipc.stats(pid) from Lua say the same
    (all_stats,) = n.lua('return ipc.stats("all")', worker=0)
    assert [s["worker"] for s in all_stats] == list(range(workers))
    for s, w in zip(all_stats, js2["workers"]):
        for key in COUNTERS + ["pid", "incarnation", "state"]:
            assert s[key] == w[key], key
    last = workers - 1
    (one,) = n.lua(f"return ipc.stats({n.pids[last]})", worker=0)
    assert one["worker"] == last and one["sent"] == js2["workers"][last]["sent"]
    (mine,) = n.lua("return ipc.stats()", worker=0)
    assert set(mine) == set(COUNTERS)
    assert mine["sent"] == js2["workers"][0]["sent"]


def test_backlog_and_waiting_messages(nginx):
    # Worker 1 handles nothing until the gate opens: its reader's queue
    # fills (4 MiB), then its 64 KiB inbox, then worker 0's backlog. Every
    # message is then received, in the inbox (waiting) or in the backlog
    # (queued: a message partly in the inbox counts there, not as waiting).
    n = nginx(workers=2, main="ipc_ring_size 64k;", init_worker=GATED,
              locations=STATUS)
    total = 100
    n.lua(f"""
        local pid = ipc.pids()[2]
        local data = ("d"):rep(100 * 1024)
        for i = 1, {total} do assert(ipc.send(pid, "q", data)) end
    """, worker=0)

    def settled():
        js = status_json(n)
        w0, w1 = js["workers"]
        box = {b["worker"]: b for b in js["inboxes"]}.get(1)
        # (used > 0: the sender refilled the inbox the reader last freed;
        # until the reader's queue is full it may free it again at any
        # moment, so the text page is read in the same poll)
        if not (box and w1["received"] + box["waiting_messages"] + w0["queued_messages"]
                == total and box["used_bytes"] > 0):
            return None
        samples, _ = parse_prometheus(status_prometheus(n).decode())
        if samples[("ngx_ipc_inbox_used_bytes", frozenset({("worker", "1")}))] > 0:
            return js, box, samples
        return None

    js, box, samples = wait_for(settled, what="a stable backlog")
    w0 = js["workers"][0]
    assert w0["queued_bytes"] > 1 << 20
    assert w0["queued_messages"] > 10
    assert 0 < box["used_bytes"] <= 64 * 1024
    assert box["capacity_bytes"] == 64 * 1024
    assert samples[("ngx_ipc_queued_messages", frozenset({("worker", "0")}))] > 10

    n.lua('T.set("gate", true)')

    def drained():
        js = status_json(n)
        box = {b["worker"]: b for b in js["inboxes"]}[1]
        return js if js["workers"][1]["received"] == total \
            and box["waiting_messages"] == 0 and box["used_bytes"] == 0 \
            and js["workers"][0]["queued_messages"] == 0 else None

    js = wait_for(drained, what="the backlog to drain")
    assert js["workers"][0]["queued_bytes"] == 0
    n.wait_results("q:1", total)


def test_respawned_worker(nginx):
    n = nginx(workers=2, init_worker=COUNTING, locations=STATUS,
              allow_log=[KILLED])
    n.lua('local p = ipc.pids()[1] for i = 1, 5 do assert(ipc.send(p, "c", "abc")) end',
          worker=1)
    wait_for(lambda: status_json(n)["workers"][0]["received"] == 5,
             what="5 messages received")
    dead = n.pids[1]
    os.kill(dead, signal.SIGKILL)

    def respawned():
        w = status_json(n, worker=0)["workers"][1]
        return w if w["pid"] not in (dead, 0) and w["state"] == "running" else None

    w = wait_for(respawned, what="worker 1 respawned")
    assert w["pid"] in child_pids(n.master_pid)
    assert w["incarnation"] == 2
    for key in COUNTERS:
        assert w[key] == 0, key
    n.pids[1] = w["pid"]
    wait_for(lambda: n.lua('return ngx.shared.harness:get("worker:1")')[0] == w["pid"],
             what="the new worker 1 to announce itself")

    n.lua('local p = ipc.pids()[1] for i = 1, 3 do assert(ipc.send(p, "c", "abcd")) end',
          worker=1)
    js = wait_for(lambda: (lambda js: js if js["workers"][0]["received"] == 8 else None)(
        status_json(n)), what="3 more messages")
    w0, w1 = js["workers"]
    assert (w1["sent"], w1["sent_bytes"], w1["incarnation"]) == (3, 12, 2)
    assert (w0["incarnation"], w0["received"], w0["received_bytes"]) == (1, 8, 27)
    samples, _ = parse_prometheus(status_prometheus(n).decode())
    assert prom_worker(samples, "ngx_ipc_worker_pid", 1) == w1["pid"]
    assert prom_worker(samples, "ngx_ipc_worker_incarnation", 1) == 2
    assert prom_worker(samples, "ngx_ipc_sent_total", 1) == 3
    # the old PID is no worker any more
    assert n.lua(f"return ipc.stats({dead})", worker=0) == [None, "no such worker"]


FLOOD = COUNTING + """
    ipc.receive("flood", function(data)
        S.c = S.c + 1
        if S.c % 20000 == 0 then ngx.sleep(0.001) end  -- a busy, yielding handler
    end)
"""


def test_served_while_workers_are_busy(nginx):
    n = nginx(workers=2, init_worker=FLOOD, locations=STATUS)
    # worker 1 floods worker 0 for at most 4 s (or 3 million messages) from
    # a timer, giving way to the event loop every 1000 sends
    n.lua("""
        ngx.timer.at(0, function()
            local pid = ipc.pids()[1]
            local deadline = ngx.now() + 4
            local sent = 0
            while sent < 3000000 and ngx.now() < deadline do
                for i = 1, 1000 do
                    if ipc.send(pid, "flood", "0123456789abcdef") then
                        sent = sent + 1
                    end
                end
                ngx.sleep(0.001)
            end
            T.set("flood_sent", sent)
        end)
    """, worker=1)
    prev = None
    scrapes = 0
    deadline = time.monotonic() + 10
    while n.lua('return T.get("flood_sent")')[0] is None and scrapes < 40:
        assert time.monotonic() < deadline
        worker = scrapes % 2
        started = time.monotonic()
        js = status_json(n, worker=worker)
        text = status_prometheus(n, worker=worker)
        assert time.monotonic() - started < 2, "a scrape took too long"
        samples, _ = parse_prometheus(text.decode())
        if scrapes % 8 == 0:
            promtool_check(text)
        now = (js["workers"][1]["sent"], js["workers"][0]["received"])
        if prev is not None:
            assert now[0] >= prev[0] and now[1] >= prev[1], (prev, now)
        assert prom_worker(samples, "ngx_ipc_sent_total", 1) >= now[0]
        prev = now
        scrapes += 1
    assert scrapes >= 4
    assert prev[1] > 0, "the flood was seen moving"
    sent = wait_for(lambda: n.lua('return T.get("flood_sent")')[0], what="the flood's end")
    js = wait_for(lambda: (lambda js: js if js["workers"][0]["received"] == sent else None)(
        status_json(n)), what="the flood received")
    assert js["workers"][1]["sent"] == sent
    assert js["workers"][1]["sent_bytes"] == 16 * sent
    assert n.lua("return T.state.c", worker=0) == [sent]


def test_requests_like_stub_status(nginx):
    n = nginx(workers=1, locations=STATUS)
    for method in ("POST", "PUT", "DELETE"):
        status, _, _ = fetch(n, method=method)
        assert status == 405, method
    status, hdrs, body = fetch(n, method="HEAD")
    assert status == 200 and body == b""
    assert hdrs["content-type"] == PROM_TYPE
    status, _, body = fetch(n, "/ipc_status?format=xml")
    assert status == 400
    status, hdrs, body = fetch(n, "/ipc_status?format=prometheus")
    assert status == 200 and hdrs["content-type"] == PROM_TYPE
    assert int(hdrs["content-length"]) == len(body)
    status, hdrs, body = fetch(n, headers={"Accept": "text/html, application/json;q=0.9"})
    assert status == 200 and hdrs["content-type"] == "application/json"
    assert json.loads(body)["config"]["workers"] == 1
    status, hdrs, _ = fetch(n, "/ipc_status?format=text",
                            headers={"Accept": "application/json"})
    assert hdrs["content-type"] == PROM_TYPE, "format= wins over Accept"
    status, hdrs, body = fetch(n, "/s/ipc_status?format=JSON")
    assert status == 200 and hdrs["content-type"] == "application/json"
    promtool_check(status_prometheus(n))


def test_single_process(nginx):
    n = nginx(master_process=False, init_worker=COUNTING, locations=STATUS)
    n.lua('assert(ipc.send(ngx.worker.pid(), "c", "hi"))')
    js = wait_for(lambda: (lambda js: js if js["workers"][0]["received"] == 1 else None)(
        status_json(n)), what="one message")
    assert js["config"]["workers"] == 1
    assert js["workers"][0]["pid"] == n.proc.pid
    assert js["workers"][0]["sent"] == 1
    promtool_check(status_prometheus(n))


def test_lua_stats_arguments(nginx):
    n = nginx(workers=2, locations=STATUS)
    pid = n.pids[1]
    (one,) = n.lua(f'return ipc.stats("{pid}")', worker=0)
    assert one["pid"] == pid and one["worker"] == 1 and one["state"] == "running"
    assert n.lua("return ipc.stats(1)") == [None, "no such worker"]
    assert n.lua("return ipc.stats(0)") == [None, "no such worker"]
    for arg, got in (("{}", "got table"), ('"foo"', 'got "foo"'), ("true", "got boolean")):
        (err,) = n.lua(f"local ok, err = pcall(ipc.stats, {arg}) return err")
        assert "bad argument #1 to 'stats' (number or \"all\" expected, " + got in err, err
    (all_stats,) = n.lua('return ipc.stats("all")')
    assert [s["pid"] for s in all_stats] == n.pids


def test_generation_counts_reloads(nginx):
    n = nginx(workers=2, init_worker=COUNTING, locations=STATUS)
    old = set(n.pids)
    n.lua('assert(ipc.send(ipc.pids()[1], "c", "x"))', worker=1)
    assert status_json(n)["config"]["generation"] == 1
    os.kill(n.master_pid, signal.SIGHUP)

    def reloaded():
        js = status_json(n)  # an old worker may still answer, for its own
        pids = {w["pid"] for w in js["workers"]}
        return js if js["config"]["generation"] == 2 and not pids & old \
            and all(w["state"] == "running" for w in js["workers"]) else None

    js = wait_for(reloaded, what="the new generation's status")
    n.pids = [w["pid"] for w in js["workers"]]
    for w in js["workers"]:
        assert w["incarnation"] == 1, "a new configuration has new slots"
        assert w["sent"] == 0 and w["received"] == 0
    assert js["inboxes"] == []
    wait_for(lambda: set(n.worker_pids()) == set(n.pids), what="the old workers to exit")
    samples, _ = parse_prometheus(status_prometheus(n).decode())
    assert samples[("ngx_ipc_generation", frozenset())] == 2


@pytest.mark.parametrize("poll", ["50us", "off"])
def test_busy_poll_time(nginx, poll):
    n = nginx(workers=2, main=f"ipc_busy_poll {poll};", init_worker=COUNTING,
              locations=STATUS)
    n.lua('local p = ipc.pids()[2] for i = 1, 100 do assert(ipc.send(p, "c", "x")) end',
          worker=0)
    js = wait_for(lambda: (lambda js: js if js["workers"][1]["received"] == 100 else None)(
        status_json(n)), what="100 messages")
    assert js["config"]["busy_poll_us"] == (50 if poll == "50us" else 0)
    polled = [w["busy_poll_seconds"] for w in js["workers"]]
    if poll == "off":
        assert polled == [0, 0]
    else:
        # the receiver watched its inbox after the messages, for about
        # 50 us per burst: more than nothing, far less than the test took.
        # Its time is counted when its window ends, after the last message
        # (and a window given way to other processes counts none): another
        # burst until it shows, bounded
        def polled_some():
            js = status_json(n)
            if js["workers"][1]["busy_poll_seconds"] > 0:
                return js
            n.lua('assert(ipc.send(ipc.pids()[2], "c", "x"))', worker=0)
            return None

        js = wait_for(polled_some, what="busy polling time in the counters")
        polled = [w["busy_poll_seconds"] for w in js["workers"]]
        assert 0 < polled[1] < 1, polled
    samples, _ = parse_prometheus(status_prometheus(n).decode())
    assert samples[("ngx_ipc_busy_poll_limit_seconds", frozenset())] == \
        (0.00005 if poll == "50us" else 0)
