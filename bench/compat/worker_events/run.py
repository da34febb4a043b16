#!/usr/bin/python3
"""worker_events_on_ngx_ipc: the events benchmark through resty.worker.events'
API on ngx_ipc (bench/compat/worker_events/nginx.conf), this system only.

    /usr/bin/python3 bench/compat/worker_events/run.py [--quick] [--repeats N]

Uses bench/run.py's launcher and measurement (bench_system, as a baseline:
the contract endpoints pingpong, stream 16 B .. 1 MiB, broadcast 2 and 4
workers) and prints its rows; writes nothing under docs/.
"""

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))
import run  # noqa: E402  bench/run.py

SYSTEM = "worker_events_on_ngx_ipc"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=None)
    cfg = ap.parse_args()
    q = cfg.quick
    cfg.repeats = cfg.repeats or (1 if q else 3)
    cfg.pp_n = 2000 if q else 20000
    cfg.stream_n = ({16: 200000, run.KiB: 50000, 64 * run.KiB: 2000, run.MiB: 200} if q else
                    {16: 1000000, run.KiB: 500000, 64 * run.KiB: 30000, run.MiB: 2000})
    cfg.bc_n = 10000 if q else 100000
    cfg.budget = 1.0 if q else 3.0
    res = run.Results()
    run.bench_system(res, SYSTEM, os.path.join(HERE, "nginx.conf"), cfg, baseline=True)
    for (system, row), value in sorted(res.values.items()):
        print("%-40s %14.1f  (n=%s)" % (row, value, res.ns.get((system, row))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
