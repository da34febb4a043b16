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

and, when their checkouts are named (nothing of them is in this repository),
Kong's libraries themselves, without ngx_ipc:

  lua-resty-events          bench/compat/events/theirs.conf
                            (NGX_IPC_BENCH_RESTY_EVENTS=<its checkout>,
                            NGX_IPC_BENCH_RESTY_EVENTS_MODULE=<its C helper
                            built as a dynamic module, which its workers
                            need>)
  lua-resty-worker-events   bench/compat/worker_events/theirs.conf
                            (NGX_IPC_BENCH_WORKER_EVENTS=<its checkout>)

with bench/run.py's launcher and measurement (bench_system), every system
through the same path (baseline=True: the same N-picking rule capped at the
same N, broadcast to 2 and 4 workers, medians of the same repeats), and
writes docs/BENCHMARKS_COMPAT.md: medians, the ratio of each compat system
to ngx_ipc, the N used, the machine, the date and the command.
"""

import argparse
import os
import shutil
import sys
import tempfile
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

# Kong's libraries themselves: (system, environment variable naming a
# checkout, template, the checkout's file that must be there, variable
# naming a dynamic module it needs or None)
THEIRS = [
    ("lua-resty-events", "NGX_IPC_BENCH_RESTY_EVENTS",
     os.path.join(HERE, "events", "theirs.conf"), "lualib/resty/events/init.lua",
     "NGX_IPC_BENCH_RESTY_EVENTS_MODULE"),
    ("lua-resty-worker-events", "NGX_IPC_BENCH_WORKER_EVENTS",
     os.path.join(HERE, "worker_events", "theirs.conf"), "lib/resty/worker/events.lua",
     None),
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
    """bench/run.py's N and budgets, for --quick or not; the command names
    the checkouts of Kong's libraries when they are set."""
    run.settings(cfg, "bench/compat/run.py")
    env = " ".join("%s=%s" % (v, os.environ[v]) for t in THEIRS for v in (t[1], t[4])
                   if v and os.environ.get(v))
    if env:
        cfg.command = env + " " + cfg.command
    cfg.broadcast_workers = run.BASELINE_BROADCAST_WORKERS
    if cfg.repeats != (1 if cfg.quick else 3):
        cfg.command += " --repeats %d" % cfg.repeats


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


def their_systems(tmp):
    """[(system, template)] for the libraries whose checkout is named and
    there, with @THEIRS@ filled in (in tmp); and notes on the others."""
    systems, notes = [], []
    for system, var, template, probe, module_var in THEIRS:
        path = os.environ.get(var)
        if not path:
            continue
        path = os.path.abspath(path)
        if not os.path.isfile(os.path.join(path, probe)):
            notes.append("%s: %s=%s has no %s" % (system, var, path, probe))
            continue
        module = os.environ.get(module_var, "") if module_var else ""
        if module_var and not os.path.isfile(module):
            notes.append("%s: %s must name its C helper's dynamic module" % (system, module_var))
            continue
        with open(template) as f:
            text = f.read().replace("@THEIRS@", path).replace("@THEIRS_MODULE@", module)
        filled = os.path.join(tmp, system + ".conf")
        with open(filled, "w") as f:
            f.write(text)
        systems.append((system, filled))
    return systems, notes


def real_context(res):
    lines = []
    for lib, system, rate in REAL_16B:
        v = res.get(system, "stream 16 B msgs/s")
        here = ("; %s streamed %s in this run (%.1fx that; across two runs: indicative only)"
                % (system, run.fmt(v), v / rate)) if v else ""
        lines.append("- %s: about %s 16-byte events/s%s" % (lib, "{:,}".format(rate), here))
    return "\n".join(lines)


def compat_systems(systems):
    """The compat APIs on ngx_ipc among systems."""
    return [s for s, _ in SYSTEMS if s != OWN and s in systems]


def their_ratios(res, systems):
    """ngx_ipc and the compat API on ngx_ipc against each library measured."""
    pairs = [(lib, compat) for lib, compat, _ in REAL_16B if lib in systems]
    cols = []
    for lib, compat in pairs:
        cols += [(OWN, lib), (compat, lib)]
    lines = ["| measurement | " + " | ".join("%s vs %s" % c for c in cols) + " |",
             "|" + "---|" * (len(cols) + 1)]
    for row in run.rows_of(res, []):
        if row.endswith("MB/s") or row.endswith("alerts/s"):
            continue
        xs = [run.better(res, row, a, b) for a, b in cols]
        if all(x is None for x in xs):
            continue
        lines.append("| %s | %s |" % (row, " | ".join("-" if x is None else "%.1fx" % x
                                                      for x in xs)))
    return "\n".join(lines)


def write_doc(res, systems, cfg, took):
    compats = compat_systems(systems)
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
    ] + run.machine_section() + [
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
    ]
    theirs = [t[0] for t in THEIRS if t[0] in systems]
    if theirs:
        doc += [
            "### Kong's libraries, in this run", "",
            "The same contract through %s themselves (bench/compat/*/theirs.conf, "
            "no ngx_ipc loaded; lua-resty-events: its broker in worker 0 on a unix "
            "socket; lua-resty-worker-events: a 64 MiB shared dict polled every "
            "1 ms). How many times ngx_ipc's own API, and each compat API on "
            "ngx_ipc, is better than the library whose API it offers. A \"-\": the "
            "row failed for the library (Notes, below, say how): a stream fails "
            "when the receiver has not got every event 60 s after the last was "
            "sent, i.e. events were lost; the library's other rows still ran. "
            "On Debian's nginx (no OpenResty patches) lua-resty-events logs a "
            "warning at each `ngx.sleep(0)` it makes (\"called without delayed "
            "events patch\"): part of its cost here, as for its users on that nginx."
            % " and ".join(theirs), "",
            their_ratios(res, systems), "",
        ]
    else:
        doc += [
            "### The real libraries, for context", "",
            "Not measured by this run (set NGX_IPC_BENCH_RESTY_EVENTS and "
            "NGX_IPC_BENCH_WORKER_EVENTS to checkouts of them to run them here): "
            "the figures the issue quotes for Kong's libraries on this kind of "
            "machine (2 cores), measured with the same harness in an earlier session.", "",
            real_context(res), "",
        ]
    doc += [
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
    tmp = tempfile.mkdtemp(prefix="ngx-ipc-bench-compat-")
    theirs, notes = their_systems(tmp)
    res.notes += notes
    ours_failed = False
    try:
        for system, conf in SYSTEMS + theirs:
            if only and system not in only:
                continue
            run.log(system)
            ours = (system, conf) in SYSTEMS
            try:
                # a library of theirs that loses events in one row is a
                # finding: noted, and its other rows are measured
                run.bench_system(res, system, conf, cfg, baseline=True,
                                 keep_going=not ours)
            except Exception as e:   # report what was measured
                res.notes.append("%s: %s" % (system, e))
                run.log(system, "failed:", e)
                ours_failed = ours_failed or ours
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    took = time.monotonic() - t_start
    systems = [s for s, _ in SYSTEMS + theirs if any(k[0] == s for k in res.values)]
    print(summary(res, systems))
    print()
    print(ratios(res, compat_systems(systems)))
    for n in res.notes:
        print("note:", n)
    if not cfg.no_doc:
        write_doc(res, systems, cfg, took)
        run.log("wrote", DOC)
    run.log("took %.0f s" % took)
    return 1 if ours_failed else 0


if __name__ == "__main__":
    sys.exit(main())
