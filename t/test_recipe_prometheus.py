"""The recipe examples/prometheus: promtool on the page, exact counters
after a known load, and a real Prometheus scraping it with the shipped
job. Traffic goes to 127.0.0.1 only; every loop is bounded in count and
time.
"""

import http.client
import json
import re
import shutil
import subprocess
import urllib.parse
import urllib.request

import pytest

from example_runner import EXAMPLES, examples_fixture
from harness import free_port, wait_for
from test_status import PROM_TYPE, parse_prometheus, promtool_check


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
