#!/usr/bin/python3
"""Cluster benchmark: ngx_ipc's `ipc_cluster` against Redis pub/sub, on loopback.

    /usr/bin/python3 bench/cluster.py [--quick] [--only SYSTEM,...]
                                      [--json FILE] [--appendfsync always|everysec]

Owns: the command line and the order of things; what each system runs is
bench/cluster_nodes.py's, what is measured and printed bench/cluster_measure.py's.

For each system in turn it starts a fresh private redis-server
(t/redis_server.py: 127.0.0.1, free port, own dir, AOF with --appendfsync)
and three nginx nodes A, B and C (own prefixes and ports, 2 workers each)
from a template:

  ngx_ipc        bench/ngx_ipc/cluster.conf: the module (NGX_IPC_MODULE, default
                 build/ngx_ipc_module.so) with `ipc_cluster redis://...`
  ngx_ipc_secret the same with `secret=` (every entry carries an
                 HMAC-SHA256 that every node checks): what authenticity costs
  ngx_ipc_tls    the same over TLS: `rediss://` to the server's TLS port,
                 `tls_name=` and lua_ssl_trusted_certificate (throw-away
                 certificates from t/tls_certs.py): what encryption costs
  ngx_ipc_replicas  the same with `replicas=1` and one replica attached to
                 the primary: the writer sends `WAIT 1 1000` after every batch
                 and counts it as added only once the replica has it
  redis_pubsub   bench/baselines/redis_pubsub/cluster.conf: every worker
                 SUBSCRIBEs on its own with lua-resty-redis; PUBLISH to send
                 (--only baseline)

and measures node-to-node latency, a flood's rate and what a SIGKILL and
restart of redis-server loses (bench/cluster_measure.py says how; for
ngx_ipc_replicas only the primary is killed, the replica stays). The nodes
are launched by bench/run.py's Nginx (the same launcher and placeholders as
`make bench`); this runner fills in the cluster placeholders (@NODE@,
@REDIS_*@, @STREAM@, @EXTRA@, @HTTP_EXTRA@) first.

Prints a markdown table, an `N:` line and `note:` lines (bench/run.py puts
them in docs/BENCHMARKS.md as printed); --json FILE also writes the figures.
Exit status 1 if a system or a step failed, or a check did not hold.
"""

import argparse
import datetime
import json
import os
import signal
import sys
import time

from cluster_measure import (RUN_FLOOD_AGENT, measure_flood, measure_latency,
                             measure_loss, publishers, table)
from cluster_nodes import (ALIASES, NODES, REPLICA_TIMEOUT, SYSTEMS, WORKERS, Backend,
                           bench_run, log, start_nodes, stop_nodes, wait_linked)


def bench_system(system, cfg):
    figures, notes = {}, []
    stream = "ngx_ipc_bench_%d" % int(time.time())
    backend = Backend(system, cfg.appendfsync).start()
    try:
        log("%s: %s; starting nodes %s" % (system, backend.describe(), "/".join(NODES)))
        redis = backend.primary
        nodes = start_nodes(system, backend, stream)
        try:
            wait_linked(nodes, redis, system)
            if system.startswith("ngx_ipc"):
                st = nodes[0].state()
                log("  node A: agent %s, node name %s, redis %s"
                    % (st.get("agent"), st.get("node"), st.get("redis")))
            pid, agent = publishers(nodes[0])
            steps = [("latency", lambda: measure_latency(nodes, cfg.latency_n, pid)),
                     ("flood", lambda: measure_flood(nodes, system, cfg.flood_n, pid)),
                     ("loss", lambda: measure_loss(nodes, system, redis, cfg.loss_rate,
                                                   cfg.loss_seconds, pid))]
            if agent is not None:
                steps.insert(2, ("flood from the agent", lambda: measure_flood(
                    nodes, system, cfg.flood_n, agent, RUN_FLOOD_AGENT, "agent flood")))
            if backend.replica is not None:  # before the loss run restarts the primary
                steps.insert(-1, ("WAIT count", lambda: {"WAIT calls": backend.wait_calls()}))
            for step, fn in steps:
                log("  %s %s" % (system, step))
                try:
                    figures.update(fn())
                except Exception as e:  # report what was measured
                    notes.append("%s %s: %s" % (system, step, e))
                    log("  %s %s failed: %s" % (system, step, e))
                    if not redis.running():
                        redis.restart()
            if backend.replica is not None:  # the replica was asked, and has it all?
                if not figures.get("WAIT calls"):
                    notes.append("%s: the primary ran no WAIT (replicas=1 did nothing?)"
                                 % system)
                figures["replica in step after"] = backend.wait_replica(stream)
                if not figures["replica in step after"]:
                    notes.append("%s: the replica was not in step with the primary (link "
                                 "up, same XLEN) within %.0f s of the end"
                                 % (system, REPLICA_TIMEOUT))
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
    finally:
        backend.cleanup()
    return figures, notes


def on_sigterm(signum, frame):
    """SIGTERM unwinds like Ctrl-C: the finally blocks stop what was started
    (inside uninterrupted(); further signals are ignored meanwhile)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def options():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small N, for iterating")
    ap.add_argument("--only", default=None,
                    help="comma list of systems: %s (default: all; "
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
    cfg.systems = [ALIASES.get(s, s) for s in cfg.only.split(",")] if cfg.only \
        else list(SYSTEMS)
    for s in cfg.systems:
        if s not in SYSTEMS:
            ap.error("unknown system %r (choose from %s)" % (s, ", ".join(SYSTEMS)))
    return cfg


def main():
    cfg = options()
    systems = cfg.systems
    for tool in (bench_run.NGINX, "/usr/bin/redis-server", "/usr/bin/openssl"):
        if not os.path.exists(tool):
            sys.exit("%s missing" % tool)

    signal.signal(signal.SIGTERM, on_sigterm)
    t_start = time.monotonic()
    results, notes = {}, []
    for system in systems:
        if system.startswith("ngx_ipc") and not os.path.exists(bench_run.MODULE):
            notes.append("%s: %s missing: run make" % (system, bench_run.MODULE))
            continue
        try:
            results[system], system_notes = bench_system(system, cfg)
            notes += system_notes
        except Exception as e:
            notes.append("%s: %s" % (system, e))
            log("%s failed: %s" % (system, e))
    took = time.monotonic() - t_start

    print(table(results, systems))
    print()
    print("N: latency %d pings, flood %d messages, loss run %d msgs/s for %.1f s; "
          "2 workers per node, nodes A, B, C and a fresh redis-server per system on "
          "127.0.0.1 (appendonly yes, appendfsync %s; ngx_ipc_replicas: its replica too)."
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
                                  "appendfsync": cfg.appendfsync,
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
