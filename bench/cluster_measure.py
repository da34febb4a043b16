"""The measurements of the cluster benchmark (bench/cluster.py) and its table.

Owns: what is measured on three linked nodes A, B, C (2 workers each) and
how it is printed. Both kinds of system serve bench/baselines/lib/
bl_cluster.lua's endpoints, so one code path measures all of them:

  latency  A publishes a 16-byte ping carrying CLOCK_MONOTONIC; every worker
           of B and C records now - sent when its handler runs: one-way
           delivery latency, node to node (one clock: one machine). Worker 0 of
           B answers with a pong to the cluster; A sends the next ping only then,
           so one ping is in flight at a time. p50/p99 over all the one-way
           samples of B's and C's workers; A's round trip / 2 is shown beside.
  flood    A's worker publishes N 16-byte messages as fast as it can (a refused
           publish is retried; the baseline pipelines PUBLISH 100 at a time);
           every worker of B and C checks count and order per publisher and
           reports over HTTP. Rate = N / (last arrival at B or C - first send).
           Verified means every one of the 4 receiving workers got all N,
           in order, no duplicate. The publisher is a worker of A that is not
           its ngx_ipc agent (the agent holds the node's link: publishing
           there competes with it); for ngx_ipc the flood is then repeated
           from the agent worker. Latency and loss runs use the first one.
  loss     the same at a paced rate (one publish at a time); when B and C have
           a quarter of it, the (primary) redis-server is SIGKILLed and
           restarted on the same port(s) with the same AOF; a replica, if
           any, keeps running and reconnects by itself. Lost = accepted by
           A's publisher (a publish that returned success, after any retries)
           minus received, summed over the 4 workers of B and C. ngx_ipc
           should lose 0.

What ngx_ipc delivers is read from the primary: with replicas=1 a reader
sees an entry once the primary has it, and WAIT gates only the writer's next
batch, so the latency rows are delivery, not replication, latency.
"""

import threading
import time

from cluster_nodes import DEADLINE, WORKERS, poll

SETTLE_TIMEOUT = 30.0   # s for receivers to report what they will get
QUIET_S = 1.5           # s without progress after which a receiver is done

RUN_LATENCY, RUN_FLOOD, RUN_LOSS, RUN_FLOOD_AGENT = 1, 2, 3, 4


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))] if values else None


def publishers(node):
    """(a worker of A that is not its agent, A's agent or None): ngx_ipc's
    agent holds the node's link, so publishing there competes with it."""
    agent = node.state().get("agent")
    agent = int(agent) if agent and agent.isdigit() and int(agent) > 0 else None
    others = [pid for pid in node.ngx.worker_pids() if pid != agent]
    if not others:
        raise RuntimeError("node %s: no worker found besides the agent %s" % (node.name, agent))
    return others[0], agent


def measure_latency(nodes, n, pid):
    a, remote = nodes[0], nodes[1:]
    v = a.measure("/bench/cluster/latency?run=%d&n=%d&deadline=%d" % (RUN_LATENCY, n, DEADLINE),
                  pid)
    got = n - int(v["timeouts"])

    def samples():
        out = []
        for node in remote:
            _, lat = node.result(RUN_LATENCY)
            if len(lat) < WORKERS or any(len(s) < n for s in lat.values()):
                return None
            for s in lat.values():
                out += s
        return out
    try:
        one_way = poll(samples, SETTLE_TIMEOUT, "latency samples at B and C")
    except RuntimeError:  # what came: a timed-out ping has fewer samples
        one_way = []
        for node in remote:
            for s in node.result(RUN_LATENCY)[1].values():
                one_way += s
    return {"latency p50 (us)": pct(one_way, 0.50), "latency p99 (us)": pct(one_way, 0.99),
            "rtt/2 p50 (us)": float(v["rtt_p50_us"]) / 2, "latency samples": len(one_way),
            "latency pings answered": got, "latency pings": n}


def remote_counts(nodes, run, publisher):
    """{(node, worker): recv dict} for the workers of B and C, messages from A."""
    out = {}
    for node in nodes[1:]:
        recv, _ = node.result(run)
        for w in range(WORKERS):
            out[(node.name, w)] = recv.get((w, "A", publisher))
    return out


def settle(nodes, run, publisher, want, expect_all):
    """Poll B's and C's counters until every worker has `want` messages, or
    (when not all are expected) nothing moved for QUIET_S; bounded."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    last, quiet_since = None, time.monotonic()
    interval = 0.02
    while True:
        counts = remote_counts(nodes, run, publisher)
        totals = {k: (v["n"] if v else 0) for k, v in counts.items()}
        if all(t >= want for t in totals.values()):
            return counts
        now = time.monotonic()
        if totals != last:
            last, quiet_since = totals, now
        elif not expect_all and now - quiet_since >= QUIET_S:
            return counts
        if now >= deadline:
            return counts
        time.sleep(interval)
        interval = min(interval * 1.5, 0.2)


def verdict(counts, accepted):
    """Per-worker verification against `accepted` messages 1..accepted."""
    ok, lost, dup = 0, 0, 0
    for v in counts.values():
        n, d, last = (v["n"], v["dup"], v["last"]) if v else (0, 0, 0)
        lost += max(accepted - (n - d), 0)
        dup += d
        if v and n == accepted and d == 0 and last == accepted:
            ok += 1
    return ok, lost, dup


def measure_flood(nodes, system, n, pid, run=RUN_FLOOD, label="flood"):
    batch = 100 if system == "redis_pubsub" else 1
    agent = nodes[0].state().get("agent")  # ngx_ipc: the worker holding A's link
    v = nodes[0].measure("/bench/cluster/flood?run=%d&n=%d&batch=%d&deadline=%d"
                         % (run, n, batch, DEADLINE), pid)
    accepted, t0 = int(v["accepted"]), float(v["t0_us"])
    counts = settle(nodes, run, int(v["worker"]), accepted, expect_all=True)
    ok, lost, dup = verdict(counts, accepted)
    t_last = max((c["t_last"] for c in counts.values() if c), default=None)
    rate = accepted / ((t_last - t0) / 1e6) if t_last and t_last > t0 else None
    t1 = float(v["t1_us"])
    figures = {
        "msgs/s": rate,
        "publish msgs/s": accepted / ((t1 - t0) / 1e6) if t1 > t0 else None,
        "verified workers": ok, "receiving workers": len(counts), "n": n, "lost": lost,
        "duplicated": dup, "publish retries": int(v["retries"]),
        "publisher is the agent": v.get("pid") == agent if agent else None}
    return {"%s %s" % (label, k): x for k, x in figures.items()}


def measure_loss(nodes, system, redis, rate, seconds, pid):
    """The paced run across a SIGKILL and restart of `redis` (a RedisServer:
    the primary)."""
    n = int(rate * seconds)
    box = {}

    def publish():
        try:
            box["v"] = nodes[0].measure("/bench/cluster/flood?run=%d&n=%d&rate=%d&deadline=%d"
                                        % (RUN_LOSS, n, rate, DEADLINE), pid)
        except Exception as e:
            box["error"] = e
    thread = threading.Thread(target=publish, daemon=True)
    thread.start()

    def quarter():
        for node in nodes[1:]:
            recv, _ = node.result(RUN_LOSS)
            if sum(v["n"] for k, v in recv.items() if k[1] == "A") < WORKERS * n / 4:
                return False
        return True
    try:
        poll(quarter, max(10.0, 2 * seconds), "a quarter of the loss run at B and C")
    except RuntimeError:
        thread.join(DEADLINE + 30)
        raise
    t_kill = time.monotonic()
    redis.kill()
    redis.restart()
    down_ms = (time.monotonic() - t_kill) * 1e3
    thread.join(DEADLINE + 30)
    if thread.is_alive():
        raise RuntimeError("the loss-run publisher did not finish within %d s" % (DEADLINE + 30))
    if "error" in box:
        raise box["error"]
    v = box["v"]
    accepted = int(v["accepted"])
    # ngx_ipc must deliver all: wait for it (bounded), through any reconnect
    # backoff; what pub/sub lost never comes, so stop when nothing moves
    counts = settle(nodes, RUN_LOSS, int(v["worker"]), accepted,
                    expect_all=system.startswith("ngx_ipc"))
    ok, lost, dup = verdict(counts, accepted)
    return {"loss accepted": accepted, "loss lost": lost, "loss duplicated": dup,
            "loss complete workers": ok, "loss receiving workers": len(counts),
            "loss publish retries": int(v["retries"]), "loss redis down (ms)": down_ms,
            "loss rate": rate}


# ----------------------------------------------------------------- table ----

def fmt(v):
    """Counts exact; measured figures rounded (1234567.8 -> 1235k)."""
    if v is None:
        return "-"
    if isinstance(v, (str, int)):
        return str(v)
    if v >= 1e4:
        return "%.0fk" % (v / 1e3)
    if v >= 100:
        return "%.0f" % v
    return "%.1f" % v


def table(results, systems):
    def get(s, k):
        return results.get(s, {}).get(k)

    def frac(s, a, b):
        x, y = get(s, a), get(s, b)
        return None if x is None or y is None else "%d/%d" % (x, y)

    rows = [
        ("one-way latency p50, 16 B, A to B/C workers (us)", lambda s: get(s, "latency p50 (us)")),
        ("one-way latency p99 (us)", lambda s: get(s, "latency p99 (us)")),
        ("round trip / 2, p50 (us)", lambda s: get(s, "rtt/2 p50 (us)")),
        ("broadcasts/s A to B and C, 16 B (publisher: not the agent)",
         lambda s: get(s, "flood msgs/s")),
        ("flood: workers of B, C with all N in order",
         lambda s: frac(s, "flood verified workers", "flood receiving workers")),
        ("... the same, published by A's agent worker",
         lambda s: get(s, "agent flood msgs/s")),
        ("... workers with all N in order",
         lambda s: frac(s, "agent flood verified workers", "agent flood receiving workers")),
        ("Redis SIGKILL + restart: accepted at A", lambda s: get(s, "loss accepted")),
        ("... lost (sum over the 4 workers of B, C)", lambda s: get(s, "loss lost")),
        ("... duplicated or out of order", lambda s: get(s, "loss duplicated")),
        ("... workers with every message", lambda s: frac(s, "loss complete workers",
                                                          "loss receiving workers")),
        ("... Redis down (ms)", lambda s: get(s, "loss redis down (ms)")),
    ]
    lines = ["| measurement | " + " | ".join(systems) + " |", "|---" * (len(systems) + 1) + "|"]
    for label, value in rows:
        lines.append("| %s | %s |" % (label, " | ".join(fmt(value(s)) for s in systems)))
    return "\n".join(lines)
