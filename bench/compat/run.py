#!/usr/bin/python3
"""ngx_ipc's own API beside its two compatibility APIs, in one run.

    /usr/bin/python3 bench/compat/run.py [--quick] [--repeats N] [--no-doc]
                                         [--only SYSTEM,...]

Runs the events benchmark's contract endpoints (pingpong, stream 16 B ..
1 MiB, broadcast to 2 and 4 workers) for three systems, all on this build's
module:

  ngx_ipc                   bench/ngx_ipc/nginx.conf (ngx.ipc itself)
  resty_events_on_ngx_ipc   bench/compat/events/nginx.conf
                            (require "resty.events", ipc_events_compat on)
  worker_events_on_ngx_ipc  bench/compat/worker_events/nginx.conf
                            (ngx.ipc.worker_events)

with bench/run.py's launcher and measurement (bench_system), every system
through the same path (baseline=True: the same N-picking rule capped at the
same N, broadcast to 2 and 4 workers, medians of the same repeats), and
writes docs/BENCHMARKS_COMPAT.md: medians, the ratio of each compat system
to ngx_ipc, the N used, the machine, the date and the command.
"""

import argparse
import datetime
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
import run  # noqa: E402  bench/run.py

DOC = os.path.join(run.ROOT, "docs", "BENCHMARKS_COMPAT.md")
# not bench/run.py's 18190: a `make bench` running beside this one keeps it
PORT = 18290

OWN = "ngx_ipc"
SYSTEMS = [
    (OWN, os.path.join(run.ROOT, "bench", "ngx_ipc", "nginx.conf")),
    ("resty_events_on_ngx_ipc", os.path.join(HERE, "events", "nginx.conf")),
    ("worker_events_on_ngx_ipc", os.path.join(HERE, "worker_events", "nginx.conf")),
]

# What the issue quotes for the real libraries (lua-resty-events over its
# unix-socket broker, lua-resty-worker-events over its shdict), measured with
# this harness on this kind of machine in an earlier session, not by this run.
REAL_16B = [("lua-resty-events", "resty_events_on_ngx_ipc", 2000),
            ("lua-resty-worker-events", "worker_events_on_ngx_ipc", 138000)]

# the rows of the short table: (row, label)
SUMMARY = [
    ("stream 16 B msgs/s", "stream 16 B (events/s)"),
    ("stream 1 KiB msgs/s", "stream 1 KiB (events/s)"),
    ("stream 64 KiB msgs/s", "stream 64 KiB (events/s)"),
    ("stream 1 MiB msgs/s", "stream 1 MiB (events/s)"),
    ("stream 1 MiB MB/s", "stream 1 MiB (MB/s)"),
    ("broadcast 2 workers s/100k", "broadcast, 2 workers (s per 100k round trips)"),
    ("broadcast 4 workers s/100k", "broadcast, 4 workers (s per 100k round trips)"),
    ("pingpong p50 (us)", "ping-pong p50 (us)"),
    ("pingpong p99 (us)", "ping-pong p99 (us)"),
]


def settings(cfg):
    """bench/run.py's N and budgets (its main()), for --quick or not."""
    q = cfg.quick
    cfg.repeats = cfg.repeats or (1 if q else 3)
    cfg.pp_n = 2000 if q else 20000
    cfg.call_n = cfg.pp_n           # unused: call is ngx_ipc's alone
    cfg.stream_n = ({16: 200000, run.KiB: 50000, 64 * run.KiB: 2000, run.MiB: 200} if q else
                    {16: 1000000, run.KiB: 500000, 64 * run.KiB: 30000, run.MiB: 2000})
    cfg.bc_n = 10000 if q else 100000
    cfg.broadcast_workers = run.BASELINE_BROADCAST_WORKERS
    cfg.budget = 1.0 if q else 3.0  # seconds per run of a slow system
    cfg.command = "/usr/bin/python3 bench/compat/run.py" + (" --quick" if q else "")
    if cfg.repeats != (1 if q else 3):
        cfg.command += " --repeats %d" % cfg.repeats
    cfg.date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def summary(res, systems):
    lines = ["| measurement | " + " | ".join(systems) + " |", "|" + "---|" * (len(systems) + 1)]
    for row, label in SUMMARY:
        lines.append("| %s | %s |" % (label, " | ".join(run.fmt(res.get(s, row)) for s in systems)))
    return "\n".join(lines)


def ratios(res, compats):
    """How many times ngx_ipc's own figure is better than each compat one."""
    lines = ["| measurement | " + " | ".join(compats) + " |", "|" + "---|" * (len(compats) + 1)]
    for row in run.rows_of(res, []):
        if row.endswith("MB/s") or row.endswith("alerts/s"):
            continue        # the same ratio as the row's msgs/s or s/100k
        xs = [run.better(res, row, OWN, c) for c in compats]
        if all(x is None for x in xs):
            continue
        lines.append("| %s | %s |" % (row, " | ".join("-" if x is None else "%.2fx" % x
                                                      for x in xs)))
    return "\n".join(lines)


def real_context(res):
    lines = []
    for lib, system, rate in REAL_16B:
        v = res.get(system, "stream 16 B msgs/s")
        here = ("; %s streamed %s in this run (%.1fx that; across two runs: indicative only)"
                % (system, run.fmt(v), v / rate)) if v else ""
        lines.append("- %s: about %s 16-byte events/s%s" % (lib, "{:,}".format(rate), here))
    return "\n".join(lines)


def write_doc(res, systems, cfg, took):
    mach = run.machine()
    compats = [s for s in systems if s != OWN]
    doc = [
        "# Benchmarks: the compatibility APIs", "",
        "Generated by `%s` on %s (took %.0f s); the next run rewrites this file. "
        "The method and ngx_ipc's full table are in [BENCHMARKS.md](BENCHMARKS.md)."
        % (cfg.command, cfg.date, took), "",
        "## What runs", "",
        "The events benchmark's contract (pingpong, stream 16 B .. 1 MiB, broadcast "
        "to 2 and 4 workers: bench/run.py, bench/baselines/README.md) on this "
        "build's module, through three APIs:", "",
        "- `ngx_ipc`: ngx.ipc itself (bench/ngx_ipc/nginx.conf): `ipc.send` to the "
        "other worker, `ipc.broadcast`.",
        "- `resty_events_on_ngx_ipc`: lua-resty-events' API, `require \"resty.events\"` "
        "with `ipc_events_compat on;` (bench/compat/events/): every event is published "
        "to \"all\" (through the broker worker, as in lua-resty-events) and its source "
        "(`bench.all` or `bench.<worker id>`) says who acts on it. Past the broker "
        "the API does not push back (the broker drops what a worker's queue cannot "
        "hold, as lua-resty-events' does), so the transport keeps a window: every "
        "1024 events (or 2 MiB) the receiver publishes an ack, and the sender waits "
        "(1 ms sleeps) while 4096 events (or 8 MiB) are unacknowledged.",
        "- `worker_events_on_ngx_ipc`: lua-resty-worker-events' API, "
        "`ngx.ipc.worker_events` (bench/compat/worker_events/): every event is posted "
        "to all workers and the addressed one acts on it.", "",
        "The three go through one path of bench/run.py's `bench_system` "
        "(`baseline=True`): N doubles from a small probe while a run takes less "
        "than half of %.0f s, capped at the same N for every system (the N used are "
        "below), then the median of %d runs. The compat systems use "
        "bench/baselines/lib/bl_bench.lua's endpoints; ngx_ipc its own "
        "(bench/ngx_ipc/nginx.conf), so the ratios include that difference in the "
        "benchmark code as well as the API's cost." % (cfg.budget, cfg.repeats), "",
        "## Machine", "",
        "- nproc: %s" % mach["nproc"], "- CPU: %s" % mach["cpu"],
        "- kernel (`uname -r`): %s" % mach["kernel"], "- nginx: %s" % mach["nginx"], "",
        "## Results", "",
        "Medians of %d runs. events/s and MB/s (10^6 bytes/s): higher is better; "
        "broadcast: seconds for 100000 round trips, and us (microseconds): lower "
        "is better." % cfg.repeats, "",
        summary(res, systems), "",
        "### Ratios", "",
        "How many times ngx_ipc's own API is better than each compat system "
        "(figure divided by figure, the right way round for each row: 1.00x = as "
        "fast, 10x = the compat system has a tenth of the throughput or ten times "
        "the time).", "",
        ratios(res, compats), "",
        "### The real libraries, for context", "",
        "Not measured by this run: the figures the issue quotes for Kong's libraries "
        "on this kind of machine (2 cores), measured with the same harness in an "
        "earlier session.", "",
        real_context(res), "",
        "### Every row", "",
        run.table(res, systems), "",
        "### N used", "",
        run.n_table(res, systems), "",
    ]
    if res.notes:
        doc += ["## Notes", ""] + ["- " + n for n in res.notes] + [""]
    with open(DOC, "w") as f:
        f.write("\n".join(doc))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small N, 1 repeat, for iterating")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--no-doc", action="store_true", help="print only; do not write docs/")
    ap.add_argument("--only", default=None,
                    help="comma list of systems: " + ",".join(s for s, _ in SYSTEMS))
    cfg = ap.parse_args()
    settings(cfg)
    only = set(cfg.only.split(",")) if cfg.only else None
    if not os.path.exists(run.MODULE):
        sys.exit("%s missing: run make" % run.MODULE)
    run.PORT = PORT
    t_start = time.monotonic()
    res = run.Results()
    for system, conf in SYSTEMS:
        if only and system not in only:
            continue
        run.log(system)
        try:
            run.bench_system(res, system, conf, cfg, baseline=True)
        except Exception as e:   # report what was measured
            res.notes.append("%s: %s" % (system, e))
            run.log(system, "failed:", e)
    took = time.monotonic() - t_start
    systems = [s for s, _ in SYSTEMS if any(k[0] == s for k in res.values)]
    print(summary(res, systems))
    print()
    print(ratios(res, [s for s in systems if s != OWN]))
    for n in res.notes:
        print("note:", n)
    if not cfg.no_doc:
        write_doc(res, systems, cfg, took)
        run.log("wrote", DOC)
    run.log("took %.0f s" % took)
    return 1 if res.notes else 0


if __name__ == "__main__":
    sys.exit(main())
