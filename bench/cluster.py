#!/usr/bin/python3
"""Cluster benchmark: ngx_ipc's `ipc_cluster` against Redis pub/sub, on loopback.

    /usr/bin/python3 bench/cluster.py [--quick] [--only ngx_ipc|baseline]
                                      [--json FILE]

Starts one private redis-server (t/redis_server.py: 127.0.0.1, free port, own
dir, AOF with appendfsync always) and, for each system in turn, three nginx
nodes A, B and C (own prefixes and ports, 2 workers each) from a template:

  ngx_ipc       bench/ngx_ipc/cluster.conf: the module (NGX_IPC_MODULE, default
                build/ngx_ipc_module.so) with `ipc_cluster` on that Redis
  ngx_ipc_secret  the same with `secret=` (every entry carries an
                HMAC-SHA256 that every node checks): what authenticity costs
  redis_pubsub  bench/baselines/redis_pubsub/cluster.conf: every worker
                SUBSCRIBEs on its own with lua-resty-redis; PUBLISH to send

Both serve bl_cluster.lua's endpoints (bench/baselines/lib/), so one code
path measures both. The nodes are launched by bench/run.py's Nginx (the same
launcher and placeholders as `make bench`); this runner fills in the cluster
placeholders (@NODE@, @REDIS_*@, @STREAM@) first. Measured, per system:

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
           a quarter of it, redis-server is SIGKILLed and restarted on the same
           port with the same AOF. Lost = accepted by A's publisher (a publish
           that returned success, after any retries) minus received, summed
           over the 4 workers of B and C. ngx_ipc should lose 0.

Prints a markdown table; --json FILE also writes the figures. Every wait is a
bounded poll; every process is started here and stopped by its PID (nginx:
SIGQUIT then SIGKILL; redis-server: SIGTERM then SIGKILL).
"""

import argparse
import contextlib
import datetime
import json
import os
import signal
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "t"))
import harness  # noqa: E402  t/harness.py

import run as bench_run  # noqa: E402  bench/run.py: its Nginx launcher
from redis_server import RedisServer, free_port  # noqa: E402

bench_run.MODULE = os.environ.get("NGX_IPC_MODULE", bench_run.MODULE)

SYSTEMS = {
    "ngx_ipc": os.path.join(HERE, "ngx_ipc", "cluster.conf"),
    "ngx_ipc_secret": os.path.join(HERE, "ngx_ipc", "cluster.conf"),
    "redis_pubsub": os.path.join(HERE, "baselines", "redis_pubsub", "cluster.conf"),
}
ALIASES = {"baseline": "redis_pubsub"}   # --only baseline
NODES = ("A", "B", "C")
WORKERS = 2
LINK_TIMEOUT = 15.0     # s for every node to be linked and pass a probe
SETTLE_TIMEOUT = 30.0   # s for receivers to report what they will get
QUIET_S = 1.5           # s without progress after which a receiver is done
DEADLINE = 120          # s, bound of every bench request on the nginx side

RUN_LATENCY, RUN_FLOOD, RUN_LOSS, RUN_FLOOD_AGENT = 1, 2, 3, 4


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def poll(predicate, timeout, what):
    """Bounded poll: predicate()'s first true value (t/harness.py's)."""
    return harness.wait_for(predicate, timeout=timeout, what=what)


# ----------------------------------------------------------------- nodes ----

class Node:
    """One nginx node: the template with the cluster placeholders filled in,
    then started by bench/run.py's Nginx (which fills in the rest)."""

    def __init__(self, name, template, subs):
        self.name = name
        self.ngx = bench_run.Nginx(None, WORKERS, free_port())
        rendered = os.path.join(self.ngx.prefix, "cluster.conf.in")
        with open(template) as f:
            text = f.read()
        for key, value in dict(subs, NODE=name).items():
            text = text.replace("@%s@" % key, str(value))
        with open(rendered, "w") as f:
            f.write(text)
        self.ngx.template = rendered

    def start(self):
        self.ngx.start()
        return self

    def stop(self):
        self.ngx.stop()

    def get(self, path, timeout=10):
        code, body = self.ngx.get(path, timeout=timeout)
        if code != 200:
            raise RuntimeError("node %s %s: HTTP %s %s" % (self.name, path, code, body[:300]))
        return body

    def measure(self, path, pid=None):
        """A bench request: its `key value` lines, `error` lines raise.
        With pid, retried on new connections (bounded) until that worker
        takes it: the others answer 409 (bl_cluster.lua)."""
        if pid is not None:
            path += "&pid=%d" % pid
        deadline = time.monotonic() + 30
        for _ in range(400):
            code, body = self.ngx.get(path, timeout=DEADLINE + 30)
            if code != 409 or time.monotonic() > deadline:
                break
        if code != 200:
            raise RuntimeError("node %s %s: HTTP %s %s" % (self.name, path, code, body[:300]))
        vals, err = {}, None
        for line in body.splitlines():
            parts = line.split(None, 1)
            if len(parts) != 2:
                continue
            if parts[0] == "error":
                err = parts[1]
            else:
                vals[parts[0]] = parts[1]
        if err:
            raise RuntimeError("node %s %s: %s" % (self.name, path.split("?")[0], err))
        return vals

    def state(self):
        out = {"hello": {}}
        for line in self.get("/bench/cluster/state", timeout=5).splitlines():
            parts = line.split()
            if len(parts) == 4 and parts[0] == "hello":
                out["hello"].setdefault(parts[1], {})[int(parts[2])] = int(parts[3])
            elif len(parts) >= 2:
                out[parts[0]] = " ".join(parts[1:])
        return out

    def result(self, run):
        """{(worker, origin, publisher): {...}}, {worker: [one-way us]}"""
        recv, lat = {}, {}
        for line in self.get("/bench/cluster/result?run=%d" % run, timeout=10).splitlines():
            parts = line.split()
            if parts[:1] == ["recv"] and len(parts) == 10:
                n, last, dup, jumps, t_first, t_last = (float(x) for x in parts[4:])
                recv[(int(parts[1]), parts[2], int(parts[3]))] = {
                    "n": int(n), "last": int(last), "dup": int(dup), "jumps": int(jumps),
                    "t_first": t_first, "t_last": t_last}
            elif parts[:1] == ["lat"] and len(parts) == 3:
                lat[int(parts[1])] = [float(x) for x in parts[2].split(",") if x]
        return recv, lat


def start_nodes(system, redis, stream):
    subs = {"REDIS_HOST": "127.0.0.1", "REDIS_PORT": redis.port,
            "REDIS_URL": redis.url(), "STREAM": stream, "EXTRA": ""}
    if system == "ngx_ipc_secret":
        # the key every node shares, in redis's private directory (read by
        # each master at configuration time)
        key = os.path.join(str(redis.dir), "cluster.key")
        with open(key, "w") as f:
            f.write(os.urandom(32).hex() + "\n")
        os.chmod(key, 0o600)
        subs["EXTRA"] = "secret=" + key
    nodes = []
    try:
        for name in NODES:
            node = Node(name, SYSTEMS[system], subs)
            nodes.append(node)  # stopped and its prefix removed even if start fails
            node.start()
    except Exception:
        stop_nodes(nodes)
        raise
    return nodes


@contextlib.contextmanager
def uninterrupted():
    """SIGTERM and Ctrl-C wait (pending) until the block is done: a cleanup
    is not cut short; the signal then unwinds as usual."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def stop_nodes(nodes):
    with uninterrupted():
        for node in nodes:
            try:
                node.stop()
            except Exception as e:  # keep stopping the others
                log("  stopping node %s: %s" % (node.name, e))


def wait_linked(nodes, redis, system):
    """Every node says it is linked, then a probe from A reaches every worker
    of every node (a new probe every second: one sent before a link was
    really reading may be lost)."""
    poll(lambda: all(n.state().get("connected") == "true" for n in nodes),
         LINK_TIMEOUT, "every node to report connected")
    if system == "redis_pubsub":
        poll(lambda: redis.command("PUBSUB", "NUMSUB", "bl_pubsub")[1] == len(nodes) * WORKERS,
             LINK_TIMEOUT, "%d subscribers" % (len(nodes) * WORKERS))
    deadline = time.monotonic() + LINK_TIMEOUT
    for probe in range(1, 100):
        nodes[0].get("/bench/cluster/hello?probe=%d" % probe)
        try:
            poll(lambda: all(len(n.state()["hello"].get(str(probe), {})) == WORKERS
                             for n in nodes), 1.0, "probe")
            return
        except RuntimeError:
            if time.monotonic() > deadline:
                raise RuntimeError("a probe from A did not reach every worker of %s within "
                                   "%.0f s" % ("/".join(NODES), LINK_TIMEOUT))


# ------------------------------------------------------------ measurement ----

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
    except RuntimeError:
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


def bench_system(system, redis, cfg):
    figures, notes = {}, []
    stream = "ngx_ipc_bench_%d" % int(time.time())
    log("%s: starting nodes %s" % (system, "/".join(NODES)))
    nodes = start_nodes(system, redis, stream)
    try:
        wait_linked(nodes, redis, system)
        if system.startswith("ngx_ipc"):
            st = nodes[0].state()
            log("  node A: agent %s, node name %s" % (st.get("agent"), st.get("node")))
        pid, agent = publishers(nodes[0])
        steps = [("latency", lambda: measure_latency(nodes, cfg.latency_n, pid)),
                 ("flood", lambda: measure_flood(nodes, system, cfg.flood_n, pid)),
                 ("loss", lambda: measure_loss(nodes, system, redis, cfg.loss_rate,
                                               cfg.loss_seconds, pid))]
        if agent is not None:
            steps.insert(2, ("flood from the agent", lambda: measure_flood(
                nodes, system, cfg.flood_n, agent, RUN_FLOOD_AGENT, "agent flood")))
        for step, fn in steps:
            log("  %s %s" % (system, step))
            try:
                figures.update(fn())
            except Exception as e:  # report what was measured
                notes.append("%s %s: %s" % (system, step, e))
                log("  %s %s failed: %s" % (system, step, e))
                if not redis.running():
                    redis.restart()
        for node in nodes:  # the link's own view, for the JSON
            st = node.state()
            st.pop("hello", None)
            figures["state %s" % node.name] = st
            for key in ("gaps", "gap_hooks", "remote_with_sender"):
                if st.get(key, "0") != "0":
                    notes.append("%s node %s: %s is %s (0 expected)"
                                 % (system, node.name, key, st[key]))
    finally:
        stop_nodes(nodes)
    return figures, notes


# --------------------------------------------------------------- report -----

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


def on_sigterm(signum, frame):
    """SIGTERM unwinds like Ctrl-C: the finally blocks stop what was started
    (inside uninterrupted(); further signals are ignored meanwhile)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small N, for iterating")
    ap.add_argument("--only", default=None,
                    help="comma list of systems: %s (default: both; "
                         "baseline = redis_pubsub)" % ",".join(SYSTEMS))
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    ap.add_argument("--latency-n", type=int, default=None)
    ap.add_argument("--flood-n", type=int, default=None)
    ap.add_argument("--loss-rate", type=int, default=None, help="msgs/s of the loss run")
    ap.add_argument("--loss-seconds", type=float, default=None)
    ap.add_argument("--appendfsync", default="always", choices=["always", "everysec"],
                    help="the Redis AOF setting (always: an acknowledged write survives "
                         "a Redis crash; everysec: Redis's usual setting)")
    cfg = ap.parse_args()
    q = cfg.quick
    cfg.latency_n = cfg.latency_n or (300 if q else 2000)
    cfg.flood_n = cfg.flood_n or (20000 if q else 100000)
    cfg.loss_rate = cfg.loss_rate or (2000 if q else 5000)
    cfg.loss_seconds = cfg.loss_seconds or (2.0 if q else 4.0)
    systems = [ALIASES.get(s, s) for s in cfg.only.split(",")] if cfg.only else list(SYSTEMS)
    for s in systems:
        if s not in SYSTEMS:
            ap.error("unknown system %r (choose from %s)" % (s, ", ".join(SYSTEMS)))
    for tool in (bench_run.NGINX, "/usr/bin/redis-server"):
        if not os.path.exists(tool):
            sys.exit("%s missing" % tool)

    signal.signal(signal.SIGTERM, on_sigterm)
    t_start = time.monotonic()
    results, notes = {}, []
    redis = RedisServer(appendfsync=cfg.appendfsync)
    try:
        redis.start()
        log("redis-server %s on 127.0.0.1:%d, dir %s" % (redis.pid, redis.port, redis.dir))
        for system in systems:
            if system.startswith("ngx_ipc") and not os.path.exists(bench_run.MODULE):
                notes.append("%s: %s missing: run make" % (system, bench_run.MODULE))
                continue
            try:
                results[system], system_notes = bench_system(system, redis, cfg)
                notes += system_notes
            except Exception as e:
                notes.append("%s: %s" % (system, e))
                log("%s failed: %s" % (system, e))
            if not redis.running():
                redis.restart()
    finally:
        with uninterrupted():
            redis.cleanup()
    took = time.monotonic() - t_start

    print(table(results, systems))
    print()
    print("N: latency %d pings, flood %d messages, loss run %d msgs/s for %.1f s; "
          "2 workers per node, nodes A, B, C and redis-server on 127.0.0.1 "
          "(appendonly yes, appendfsync %s)."
          % (cfg.latency_n, cfg.flood_n, cfg.loss_rate, cfg.loss_seconds, cfg.appendfsync))
    for n in notes:
        print("note:", n)
    log("took %.0f s" % took)
    if cfg.json:
        with open(cfg.json, "w") as f:
            json.dump({"date": datetime.datetime.now(datetime.timezone.utc)
                       .strftime("%Y-%m-%d %H:%M UTC"),
                       "command": " ".join(["/usr/bin/python3", "bench/cluster.py"] + sys.argv[1:]),
                       "config": {"latency_n": cfg.latency_n, "flood_n": cfg.flood_n,
                                  "loss_rate": cfg.loss_rate, "loss_seconds": cfg.loss_seconds,
                                  "workers_per_node": WORKERS, "nodes": list(NODES)},
                       "results": results, "notes": notes, "took_s": took}, f, indent=1)
    failed = [s for s in systems if s not in results]
    return 1 if failed or notes else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # everything started was stopped on the way out
        log("interrupted")
        sys.exit(130)
