#!/usr/bin/python3
"""Two builds of ngx_ipc, alternated on one machine: make bench's 2 to 16
worker figures, before and after a change.

    /usr/bin/python3 bench/ab.py --before OLD.so [--after NEW.so] [--rounds N]
        [--broadcast-workers 4,8,16] [--broadcast-n 100000] [--no-streams]
        [--extra "ipc_busy_poll off;"]

OLD.so is a build of the code before the change (for example
`git worktree add /tmp/before <commit> && make -C /tmp/before`); NEW.so is
build/ngx_ipc_module.so by default. Each round starts nginx with one build,
then the other (the order flips every round, so a drift of the machine
weighs on both alike), and measures with bench/ngx_ipc/nginx.conf: the
64 KiB, 1 MiB and 16-byte streams and the ping-pong at 2 workers, and
slact's broadcast benchmark (100,000 round trips) at 4, 8 and 16 workers
(or the counts and round trips given).
Prints the medians and every run's figure, as a markdown table.
"""

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  bench/run.py: the benchmark nginx and its helpers

CONF = os.path.join(run.ROOT, "bench", "ngx_ipc", "nginx.conf")
PORT = 18391
STREAMS = [(2, "/bench/stream?size=65536&n=30000", "msgs_per_s", "64 KiB stream, msgs/s"),
           (2, "/bench/stream?size=1048576&n=2000", "msgs_per_s", "1 MiB stream, msgs/s"),
           (2, "/bench/stream?size=16&n=1000000", "msgs_per_s", "16 B stream, msgs/s"),
           (2, "/bench/pingpong?n=20000", "p50_us", "ping-pong p50, µs")]


def measure(module, tests, res, name, extra):
    run.MODULE = module
    for w in sorted(set(t[0] for t in tests)):
        ngx = run.Nginx(CONF, w, PORT, "\n%s\n" % extra if extra else "")
        ngx.stop_timeout = 120   # hundreds of workers take a while to exit
        try:
            ngx.start()
            ngx.measure("/bench/pingpong?n=200")   # warm-up
            for tw, path, key, _ in tests:
                if tw == w:
                    res.setdefault((tw, path, name), []).append(ngx.measure(path)[key])
        finally:
            ngx.stop()


def fmt(v):
    return "%.3g" % v if v < 1000 else "{:,.0f}".format(v)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", required=True, help="the build before the change")
    ap.add_argument("--after", default=run.MODULE, help="the build after (build/)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--broadcast-workers", default="4,8,16",
                    help="worker counts of the broadcast benchmark")
    ap.add_argument("--broadcast-n", type=int, default=100000)
    ap.add_argument("--no-streams", action="store_true", help="the broadcasts only")
    ap.add_argument("--extra", default="", help='main-context directives for both, '
                    'e.g. "ipc_busy_poll off;"')
    cfg = ap.parse_args()
    tests = [] if cfg.no_streams else list(STREAMS)
    for w in (int(x) for x in cfg.broadcast_workers.split(",") if x):
        if not 2 <= w <= 1024:
            sys.exit("--broadcast-workers: 2 to 1024")
        tests.append((w, "/bench/broadcast?n=%d" % cfg.broadcast_n, "seconds",
                      "broadcast, %d workers, s" % w))
    for m in (cfg.before, cfg.after):
        if not os.path.isfile(m):
            sys.exit("%s missing" % m)
    if not 1 <= cfg.rounds <= 20:
        sys.exit("--rounds: 1 to 20")
    res = {}
    for r in range(cfg.rounds):
        order = [("before", cfg.before), ("after", cfg.after)]
        for name, module in (order if r % 2 == 0 else order[::-1]):
            measure(module, tests, res, name, cfg.extra)
        print("round %d of %d" % (r + 1, cfg.rounds), file=sys.stderr, flush=True)
    print("| measurement | before (median) | after (median) | after / before "
          "| before, each run | after, each run |")
    print("|---|---:|---:|---:|---|---|")
    for tw, path, _, label in tests:
        b, a = res[(tw, path, "before")], res[(tw, path, "after")]
        mb, ma = statistics.median(b), statistics.median(a)
        print("| %s | %s | %s | %.2f | %s | %s |" % (
            label, fmt(mb), fmt(ma), ma / mb, " ".join(fmt(x) for x in b),
            " ".join(fmt(x) for x in a)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
