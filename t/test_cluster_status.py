"""The cluster link on the ipc_status page (README: "Status page" and
"Cluster"; src/ngx_ipc_status_cluster.cpp).

Real nginx nodes and a private redis-server (t/redis_server.py: 127.0.0.1,
a free port, stopped by PID). Both formats are read from real nginx: the
JSON "cluster" object and the ngx_ipc_cluster_* families, compared with each
other, with ipc.cluster() and with a known load; `promtool check metrics`
runs on the text (skipped without promtool). Every wait is a bounded poll.
"""

import json
import re
import time

from harness import wait_for
from redis_server import redis_server  # noqa: F401 (the fixture)
from test_cluster import (REDIS_TROUBLE, cluster_state, handled, reload_node,
                          seqs, start_node, wait_all, wait_linked)
from test_status import (STATUS, fetch, parse_prometheus, promtool_check,
                         status_json, status_prometheus)

# the zone's counters, as the JSON names them (Prometheus adds _total)
COUNTERS = ["published", "added", "received", "refused", "gaps", "reconnects",
            "errors", "malformed", "unauthenticated", "node_clashes"]

KEYS = ["enabled", "connected", "agent_pid", "node", "redis", "stream",
        "lag_ms", "outbox_bytes", "outbox_capacity_bytes"] + COUNTERS + \
       ["last_id", "last_error", "last_error_at", "last_error_old",
        "connected_at"]

QUEUE = 16 << 20   # ipc_cluster's default queue=


def node(nginx, r, name, workers=2, **kwargs):
    return start_node(nginx, r, name, workers=workers, locations=STATUS,
                      **kwargs)


def cluster_json(n):
    return status_json(n)["cluster"]


def cluster_prometheus(n):
    """-> (text, samples, types) of the page, its cluster families checked
    for HELP and TYPE by parse_prometheus."""
    text = status_prometheus(n)
    samples, types = parse_prometheus(text.decode())
    return text, samples, types


def sample(samples, name, **labels):
    return samples[(name, frozenset(labels.items()))]


def stamp(ms_or_seconds):
    """A timestamp of either format, as integer milliseconds."""
    return round(ms_or_seconds * 1000)


def check_same(js, samples, types):
    """The JSON object and the Prometheus families say the same (read at two
    moments: only for a quiet link)."""
    assert set(js) == set(KEYS), set(js) ^ set(KEYS)
    assert sample(samples, "ngx_ipc_cluster_enabled") == 1
    assert sample(samples, "ngx_ipc_cluster_info", node=js["node"],
                  redis=js["redis"], stream=js["stream"]) == 1
    assert sample(samples, "ngx_ipc_cluster_connected") == int(js["connected"])
    assert sample(samples, "ngx_ipc_cluster_agent_pid") == (js["agent_pid"] or 0)
    assert stamp(sample(samples, "ngx_ipc_cluster_lag_seconds")) == js["lag_ms"]
    assert sample(samples, "ngx_ipc_cluster_outbox_bytes") == js["outbox_bytes"]
    assert sample(samples, "ngx_ipc_cluster_outbox_capacity_bytes") == \
        js["outbox_capacity_bytes"]
    for key in COUNTERS:
        name = f"ngx_ipc_cluster_{key}_total"
        assert types[name] == "counter"
        assert sample(samples, name) == js[key], key
    for name, key in (("connected_timestamp_seconds", "connected_at"),
                      ("last_error_timestamp_seconds", "last_error_at")):
        assert types[f"ngx_ipc_cluster_{name}"] == "gauge"
        got = sample(samples, f"ngx_ipc_cluster_{name}")
        assert stamp(got) == (stamp(js[key]) if js[key] is not None else 0), key
    assert sample(samples, "ngx_ipc_cluster_last_error_old") == \
        int(js["last_error_old"])
    errors = [k for k in samples if k[0] == "ngx_ipc_cluster_last_error_info"]
    if js["last_error"] is None:
        assert errors == []
    else:
        assert errors == [("ngx_ipc_cluster_last_error_info",
                           frozenset({("error", js["last_error"])}))]


def check_lua_same(n, js):
    """ipc.cluster() says what the page says."""
    st = cluster_state(n)
    st["last_id"] = st["last_id"] or None      # "" before the first entry
    for key in COUNTERS + ["connected", "node", "stream", "last_id", "lag_ms",
                           "last_error_old"]:
        assert st[key] == js[key], key
    assert st["agent"] == (js["agent_pid"] or 0)
    assert st["queued_bytes"] == js["outbox_bytes"]
    for key in ("last_error", "last_error_at", "connected_at"):
        want = js[key]
        got = st.get(key)       # a nil leaves no key in the eval's JSON
        if isinstance(want, float):
            assert stamp(got) == stamp(want), key
        else:
            assert got == want, key


def test_exact_cluster_counters_after_a_known_load(redis_server, nginx):
    """N cluster broadcasts from a; every worker of b handles them; the pages
    of a and b count them exactly, in both formats, and ipc.cluster() agrees."""
    count = 120
    r = redis_server()
    a = node(nginx, r, "a", workers=2)
    b = node(nginx, r, "b", workers=3)
    wait_linked(a, b)
    t0 = time.time()
    a.lua(f"""
        for i = 1, {count} do
            assert(ipc.broadcast("c", "s " .. i, {{ scope = "cluster" }}))
        end
    """, worker=0)
    wait_all([a, b], "a", "s", count)
    for n in (a, b):
        for pid in n.pids:
            assert seqs(handled(n, pid), "a", "s") == list(range(1, count + 1))

    ja = wait_for(lambda: (js := cluster_json(a))["added"] == count and js,
                  what="a's entries acknowledged")
    jb = wait_for(lambda: (js := cluster_json(b))["received"] == count and js,
                  what="b's count of what it read")

    for js, n, name in ((ja, a, "a"), (jb, b, "b")):
        assert js["enabled"] is True and js["connected"] is True
        assert js["agent_pid"] in n.pids
        assert js["node"] == name and js["stream"] == "t"
        assert js["redis"] == f"127.0.0.1:{r.port}"
        assert js["outbox_bytes"] == 0
        assert js["outbox_capacity_bytes"] == QUEUE
        assert js["last_error"] is None and js["last_error_at"] is None
        assert js["last_error_old"] is False
        assert t0 - 60 < js["connected_at"] <= time.time() + 1
        assert re.fullmatch(r"\d+-\d+", js["last_id"]), js["last_id"]
        for key in ("refused", "gaps", "reconnects", "errors", "malformed",
                    "unauthenticated", "node_clashes"):
            assert js[key] == 0, (name, key)
    assert (ja["published"], ja["added"], ja["received"]) == (count, count, 0)
    assert (jb["published"], jb["added"], jb["received"]) == (0, 0, count)
    # both read the stream to its end: the same last id
    assert ja["last_id"] == jb["last_id"]

    for n in (a, b):
        text, samples, types = cluster_prometheus(n)
        promtool_check(text)
        js = cluster_json(n)
        check_same(js, samples, types)
        check_lua_same(n, js)


def test_redis_stopped_then_back(redis_server, nginx):
    """Redis stopped: not connected, the last error with its time. Started
    again on the same port: connected, and that error marked old."""
    r = redis_server()
    n = node(nginx, r, "a", allow_log=REDIS_TROUBLE)
    wait_linked(n)
    js = cluster_json(n)
    assert js["connected"] and js["last_error"] is None, js

    t0 = time.time()
    r.stop()
    down = wait_for(lambda: (js := cluster_json(n))["last_error"] is not None
                    and not js["connected"] and js,
                    timeout=15, what="the link down, with its error")
    assert t0 - 1 <= down["last_error_at"] <= time.time() + 1, (t0, down)
    assert down["last_error_old"] is False and down["errors"] >= 1
    # a cluster broadcast meanwhile waits in the outbox
    n.lua('assert(ipc.broadcast("c", "w 1", { scope = "cluster" }))')
    down = wait_for(lambda: (js := cluster_json(n))["outbox_bytes"] > 0 and js,
                    what="the broadcast in the outbox")
    text, samples, types = cluster_prometheus(n)
    promtool_check(text)
    assert sample(samples, "ngx_ipc_cluster_connected") == 0
    assert sample(samples, "ngx_ipc_cluster_last_error_old") == 0
    assert sample(samples, "ngx_ipc_cluster_last_error_timestamp_seconds") >= t0 - 1
    assert sample(samples, "ngx_ipc_cluster_outbox_bytes") > 0
    assert [k for k in samples if k[0] == "ngx_ipc_cluster_last_error_info"]
    st = cluster_state(n)
    assert not st["connected"] and st["last_error"] and \
        st["last_error_old"] is False and st["last_error_at"] >= t0 - 1, st

    r.restart()   # the reader's backoff is 5 s at most
    up = wait_for(lambda: (js := cluster_json(n))["connected"]
                  and js["last_error_old"] and js["outbox_bytes"] == 0 and js,
                  timeout=30, what="the link up again, its error old")
    assert up["last_error"] is not None
    assert up["connected_at"] >= up["last_error_at"] >= t0 - 1
    assert up["reconnects"] >= 1 and up["added"] == 1
    text, samples, types = cluster_prometheus(n)
    promtool_check(text)
    js = cluster_json(n)
    check_same(js, samples, types)
    check_lua_same(n, js)
    assert js["last_error_old"] is True


def test_without_ipc_cluster(nginx):
    n = nginx(workers=2, locations=STATUS)
    assert status_json(n)["cluster"] == {"enabled": False}
    text = status_prometheus(n)
    promtool_check(text)
    lines = [line for line in text.decode().splitlines()
             if "ngx_ipc_cluster" in line and not line.startswith("#")]
    assert lines == ["ngx_ipc_cluster_enabled 0"]


def test_password_never_on_the_page(redis_server, nginx):
    secret = "pw-Never-Shown-42"
    r = redis_server(password=secret)
    n = node(nginx, r, "a")
    assert secret in (n.prefix / "conf" / "nginx.conf").read_text()
    wait_linked(n)
    pages = [fetch(n, path)[2] for path in ("/ipc_status",
                                            "/ipc_status?format=json",
                                            "/s/ipc_status?format=prometheus")]
    pages.append(fetch(n, headers={"Accept": "application/json"})[2])
    for body in pages:
        assert secret.encode() not in body
        assert b"default:" not in body and b"redis://" not in body
    assert json.loads(pages[1])["cluster"]["redis"] == f"127.0.0.1:{r.port}"
    assert secret not in json.dumps(cluster_state(n))


def test_texts_are_escaped(redis_server, nginx):
    """Node and stream (from the configuration) and the last error (from
    Redis) may hold quotes, backslashes, newlines, control characters and
    bytes that are not UTF-8: JSON still parses, promtool still passes."""
    r = redis_server()
    n = node(nginx, r, 'n"1\\2', extra=r"""'stream=s"t\\x'""")
    wait_linked(n)
    # as the agent would store a Redis error; the link is up, so the agent
    # writes no error meanwhile
    n.lua(r"""
        local ffi = require "ffi"
        local s = "bad \"reply\" \\ \n\1 caf\195\169 \255 end"
        ffi.C.ngx_ipc_ffi_cluster_set_text(ffi.C.NGX_IPC_FFI_CLUSTER_LAST_ERROR,
                                           s, #s)
    """)
    js = cluster_json(n)
    assert js["node"] == 'n"1\\2' and js["stream"] == 's"t\\x'
    assert js["last_error"] == 'bad "reply" \\ \n\x01 caf\u00e9 \ufffd end'
    assert js["last_error_old"] is False

    text = status_prometheus(n)
    promtool_check(text)
    lines = text.decode().splitlines()
    assert 'ngx_ipc_cluster_info{node="n\\"1\\\\2",redis="127.0.0.1:%d",' \
           'stream="s\\"t\\\\x"} 1' % r.port in lines
    assert 'ngx_ipc_cluster_last_error_info{error="bad \\"reply\\" \\\\ \\n' \
           '\ufffd caf\u00e9 \ufffd end"} 1' in lines


def test_figures_outlive_a_reload(redis_server, nginx):
    """A reload keeps the cluster zone (same sizes): its figures go on."""
    r = redis_server()
    a = node(nginx, r, "a")
    wait_linked(a)
    a.lua('for i = 1, 5 do assert(ipc.broadcast("c", "r " .. i, { scope = "cluster" })) end')
    wait_for(lambda: cluster_json(a)["added"] == 5, what="the entries in Redis")
    reload_node(a)
    # the old agent holds the lease until it exits, then a new worker's
    js = wait_for(lambda: (js := cluster_json(a))["agent_pid"] in a.pids
                  and js["connected"] and js, what="a new worker as the agent")
    assert (js["published"], js["added"]) == (5, 5)
