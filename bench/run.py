#!/usr/bin/python3
"""ngx_ipc benchmark: floors, ngx_ipc and every baseline, on this machine, in one go.

    /usr/bin/python3 bench/run.py [--quick] [--repeats N] [--no-doc]

Builds the floors (bench/floor/*.cpp, g++ -O2) into build/bench/, runs them,
then starts nginx for ngx_ipc (bench/ngx_ipc/nginx.conf) and for each
bench/baselines/<name>/nginx.conf under a temporary prefix, asks the contract
endpoints (/bench/pingpong, /bench/stream, /bench/broadcast, /bench/call) for
figures, repeats every measurement (3 times by default) and keeps medians.
Prints one table and writes docs/BENCHMARKS.md and docs/benchmarks.png
(gnuplot). Templates hold the placeholders @MODULE@, @PORT@, @WORKERS@ and
@PREFIX@; daemon, master_process, pid and error_log are added here. nginx is
started and stopped by t/harness.py's launcher (Nginx below extends it): only
nginx processes started here are stopped, by PID.
"""

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "t"))
import harness  # noqa: E402  t/harness.py: the one nginx launcher

NGINX = harness.NGINX_BIN
MODULE = os.path.join(ROOT, "build", "ngx_ipc_module.so")
BIN = os.path.join(ROOT, "build", "bench")
DOC = os.path.join(ROOT, "docs", "BENCHMARKS.md")
PNG = os.path.join(ROOT, "docs", "benchmarks.png")
PORT = 18190
HTTP_TIMEOUT = 300          # seconds per request; the endpoints bound themselves
START_POLLS = 200           # x 0.05 s for nginx to answer
METHOD_BEGIN = "<!-- BEGIN METHOD (hand-written, kept by bench/run.py) -->"
METHOD_END = "<!-- END METHOD -->"

KiB, MiB = 1024, 1024 * 1024
STREAM_SIZES = [16, KiB, 64 * KiB, MiB]
BROADCAST_WORKERS = [2, 4, 8, 16]
BASELINE_BROADCAST_WORKERS = [2, 4]

# ngx_ipc again with `ipc_busy_poll off;`: every message wakes its receiver
# through the eventfd, the pure push path
POLL_OFF = "ngx_ipc_poll_off"

# slact/ngx_lua_ipc's published broadcast benchmark (seconds for 100000 round trips)
SLACT = {2: (2.1, 2.3), 4: (0.43, 0.50)}

# The method section of docs/BENCHMARKS.md is written by hand and kept from
# one run to the next; this stands in only if that file or section is gone.
DEFAULT_METHOD = """## Method

(Hand-written: see git history of docs/BENCHMARKS.md.)
"""


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- floors ----

def build_floors():
    os.makedirs(BIN, exist_ok=True)
    src = os.path.join(ROOT, "core", "src")
    core = sorted(os.path.join(src, f) for f in os.listdir(src) if f.endswith(".cpp"))
    jobs = {
        "eventfd_pingpong": [os.path.join(ROOT, "bench", "floor", "eventfd_pingpong.cpp")],
        "core_throughput": [os.path.join(ROOT, "bench", "floor", "core_throughput.cpp")] + core,
    }
    for name, srcs in jobs.items():
        out = os.path.join(BIN, name)
        if os.path.exists(out) and all(os.path.getmtime(s) < os.path.getmtime(out) for s in srcs):
            continue
        log("building", out)
        subprocess.run(["g++", "-O2", "-std=c++17", "-I" + os.path.join(ROOT, "core", "include"),
                        "-o", out] + srcs, check=True, timeout=300)


def parse_lines(text):
    vals, err = {}, None
    for line in text.splitlines():
        parts = line.split(None, 1)
        if len(parts) != 2:
            continue
        if parts[0] == "error":
            err = parts[1]
            continue
        try:
            vals[parts[0]] = float(parts[1])
        except ValueError:
            pass
    return vals, err


def run_floor(args):
    p = subprocess.run([os.path.join(BIN, args[0])] + [str(a) for a in args[1:]],
                       capture_output=True, text=True, timeout=120)
    vals, err = parse_lines(p.stdout)
    if p.returncode != 0 or err:
        raise RuntimeError("%s: %s %s" % (args, err or p.returncode, p.stderr.strip()))
    # eventfd_pingpong names its lines floor_eventfd_pingpong_*
    return {k.replace("floor_eventfd_pingpong_", ""): v for k, v in vals.items()}


# ----------------------------------------------------------------- nginx ----

class Nginx(harness.Nginx):
    """A benchmark nginx: t/harness.py's launcher (temporary prefix, spawn,
    runaway-log watchdog, SIGQUIT then SIGKILL by PID) with the configuration
    rendered from a template instead of the test one, on a given port."""

    def __init__(self, template, workers, port, main_extra=""):
        super().__init__(workers=workers, start_timeout=START_POLLS * 0.05)
        self.template, self.port = template, port
        self.main_extra = main_extra    # main-context directives, appended
        self.prefix = Path(tempfile.mkdtemp(prefix="ngx_ipc_bench_"))
        os.chmod(self.prefix, 0o755)   # workers run as nginx's user: unix sockets here

    def config(self):
        with open(self.template) as f:
            conf = f.read()
        for k, v in (("@MODULE@", MODULE), ("@PORT@", str(self.port)),
                     ("@WORKERS@", str(self.workers)), ("@PREFIX@", str(self.prefix)),
                     ("@BASELINES@", os.path.join(ROOT, "bench", "baselines"))):
            conf = conf.replace(k, v)
        return ("daemon off; master_process on; pid logs/nginx.pid;\n"
                "error_log logs/error.log notice;\n" + conf + self.main_extra)

    def start(self):
        for sub in ("conf", "logs"):
            os.makedirs(os.path.join(self.prefix, sub), exist_ok=True)
        with open(os.path.join(self.prefix, "conf", "nginx.conf"), "w") as f:
            f.write(self.config())
        self._spawn()
        self._wait_ready()
        return self

    def _wait_ready(self):
        for _ in range(START_POLLS):
            if self.proc.poll() is not None:
                raise RuntimeError("nginx exited: %s" % self.log_tail(20)[-2000:])
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError("nginx did not listen on %d" % self.port)
        # all workers up (ngx_ipc answers /bench/ready; baselines may not have it)
        for _ in range(START_POLLS):
            code, body = self.get("/bench/ready", timeout=5)
            if code != 200 or body.startswith("ready"):
                break
            time.sleep(0.05)
        if len(self.worker_pids()) < self.workers:
            time.sleep(0.5)
        self.pids = self.worker_pids()  # what stop() kills if they outlive the master

    def get(self, path, timeout=HTTP_TIMEOUT):
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d%s" % (self.port, path),
                                        timeout=timeout) as r:
                return r.status, r.read().decode(errors="replace")
        except urllib.error.HTTPError as e:
            return e.code, ""
        except OSError as e:
            return 0, str(e)

    def measure(self, path):
        code, body = self.get(path)
        vals, err = parse_lines(body)
        if code != 200 or err or not vals:
            raise RuntimeError("%s: HTTP %s %s" % (path, code, err or body.strip()[:300]))
        return vals

    def stop(self):
        if self.proc is not None:
            self.pids = sorted(set(self.pids) | set(self.worker_pids()))
            problem = super().stop()
            if problem:
                log("  nginx:", problem)
            bad = [l for l in self.error_log().splitlines()
                   if re.search(r"\[(alert|crit|emerg)\]", l)]
            for l in bad[:5]:
                log("  nginx:", l.rstrip())
        self.cleanup()


# ------------------------------------------------------------ measurement ----

class Results:
    def __init__(self):
        self.values = {}    # (system, row) -> float
        self.ns = {}        # (system, row) -> N used
        self.notes = []
        self.cluster = []   # bench/cluster.py runs: {appendfsync, command, output}

    def put(self, system, row, value, n=None):
        self.values[(system, row)] = value
        if n is not None:
            self.ns[(system, row)] = n

    def get(self, system, row):
        return self.values.get((system, row))


def median_of(fn, repeats):
    runs = [fn() for _ in range(repeats)]
    return {k: statistics.median(r[k] for r in runs) for k in runs[0] if all(k in r for r in runs)}


def pick_n(ngx, path_fmt, full_n, min_n, budget_s, probe_n):
    """N for a slow system: double N (or more) from probe_n while a run takes
    less than half of budget_s, so that a polling delay does not dominate
    (bounded: 10 probes, 4 budgets of time); scaled down if one ran over."""
    n, t_stop = probe_n, time.monotonic() + 4 * budget_s
    for _ in range(10):
        t0 = time.monotonic()
        ngx.measure(path_fmt % n)
        took = max(time.monotonic() - t0, 1e-3)
        if took >= budget_s / 2 or n >= full_n or time.monotonic() > t_stop:
            break
        n = min(full_n, int(n * max(2.0, min(10.0, budget_s / 2 / took))))
    if took > budget_s:
        n = int(n * budget_s / took)
    return max(min_n, min(full_n, n))


def size_label(s):
    return "%d MiB" % (s // MiB) if s >= MiB else "%d KiB" % (s // KiB) if s >= KiB else "%d B" % s


def guarded(res, system, keep_going, row, server):
    """Runs row(); with keep_going, a row that fails is noted in res, with
    what server()'s error log says of dropped events, and the caller goes on
    with the next (a library that loses events: a finding)."""
    if not keep_going:
        return row()
    try:
        row()
    except RuntimeError as e:
        try:
            drops = [l for l in server().error_log().splitlines() if "drop" in l.lower()]
            said = "its error log: %d lines about dropped events%s" % (
                len(drops), (", the first: " + drops[0][:300]) if drops else "")
        except OSError:     # that nginx is gone, and its log
            said = "its error log is gone"
        note = "%s: %s (%s)" % (system, e, said)
        res.notes.append(note)
        log("  " + note)


def bench_system(res, system, template, cfg, baseline, main_extra="", keep_going=False):
    """Runs the contract endpoints of one system; fills res."""
    reps = cfg.repeats

    def sized(path_fmt, full_n, min_n, probe_n):
        if not baseline:
            return full_n
        return pick_n(ngx, path_fmt, full_n, min_n, cfg.budget, probe_n)

    ngx = Nginx(template, 2, PORT, main_extra)
    try:
        ngx.start()
        if not baseline:    # the probes of sized() warm a baseline up
            ngx.measure("/bench/pingpong?n=100")
        n = sized("/bench/pingpong?n=%d", cfg.pp_n, 3, 3)
        log("  %s pingpong n=%d" % (system, n))
        m = median_of(lambda: ngx.measure("/bench/pingpong?n=%d" % n), reps)
        res.put(system, "pingpong p50 (us)", m["p50_us"], n)
        res.put(system, "pingpong p99 (us)", m["p99_us"], n)
        if not baseline:
            log("  %s call n=%d" % (system, cfg.call_n))
            m = median_of(lambda: ngx.measure("/bench/call?n=%d" % cfg.call_n), reps)
            res.put(system, "call p50 (us)", m["p50_us"], cfg.call_n)
            res.put(system, "call p99 (us)", m["p99_us"], cfg.call_n)
        def stream_row(size):
            full = cfg.stream_n[size]
            fmt = "/bench/stream?size=%d&n=%%d" % size
            n = sized(fmt, full, 10, 20)
            log("  %s stream %s n=%d" % (system, size_label(size), n))

            def one():
                v = ngx.measure(fmt % n)
                if int(v.get("verified", -1)) != n:
                    raise RuntimeError("stream %d: verified %s of %d" % (size, v.get("verified"), n))
                return v
            m = median_of(one, reps)
            res.put(system, "stream %s msgs/s" % size_label(size), m["msgs_per_s"], n)
            res.put(system, "stream %s MB/s" % size_label(size), m["bytes_per_s"] / 1e6, n)
            if not baseline:
                # the same stream with ipc.send(..., { wait = ... })
                wfmt = fmt + "&wait=1"
                log("  %s stream %s with wait n=%d" % (system, size_label(size), n))

                def one_wait():
                    v = ngx.measure(wfmt % n)
                    if int(v.get("verified", -1)) != n:
                        raise RuntimeError("stream %d with wait: verified %s of %d"
                                           % (size, v.get("verified"), n))
                    return v
                m = median_of(one_wait, reps)
                res.put(system, "stream %s wait msgs/s" % size_label(size), m["msgs_per_s"], n)
                res.put(system, "stream %s wait MB/s" % size_label(size),
                        m["bytes_per_s"] / 1e6, n)

        for size in STREAM_SIZES:
            guarded(res, system, keep_going, lambda: stream_row(size), lambda: ngx)
    finally:
        ngx.stop()

    def broadcast_row(w):
        nonlocal ngx
        ngx = Nginx(template, w, PORT, main_extra)
        try:
            ngx.start()
            if not baseline:
                ngx.measure("/bench/broadcast?n=1000")   # warm-up
            n = sized("/bench/broadcast?n=%d", cfg.bc_n, 3, 3)
            log("  %s broadcast %d workers n=%d" % (system, w, n))
            m = median_of(lambda: ngx.measure("/bench/broadcast?n=%d" % n), reps)
            # seconds for 100000 round trips (scaled when a smaller N was used)
            res.put(system, "broadcast %d workers s/100k" % w, m["seconds"] * 100000 / n, n)
            # alerts = 2*N (ping + pong), computed here from the seconds
            res.put(system, "broadcast %d workers alerts/s" % w, 2 * n / m["seconds"], n)
        finally:
            ngx.stop()

    for w in (BASELINE_BROADCAST_WORKERS if baseline else cfg.broadcast_workers):
        guarded(res, system, keep_going, lambda: broadcast_row(w), lambda: ngx)


def run_floors(res, cfg):
    build_floors()
    log("floor: eventfd ping-pong n=%d" % cfg.floor_pp_n)
    m = median_of(lambda: run_floor(["eventfd_pingpong", cfg.floor_pp_n]), cfg.repeats)
    res.put("floor", "pingpong p50 (us)", m["p50_us"], cfg.floor_pp_n)
    res.put("floor", "pingpong p99 (us)", m["p99_us"], cfg.floor_pp_n)
    for size, n in ((16, cfg.core16_n), (MiB, cfg.core1m_n)):
        log("floor: core throughput %s n=%d" % (size_label(size), n))

        def one():
            v = run_floor(["core_throughput", size, n])
            if int(v["verified"]) != n:
                raise RuntimeError("core_throughput: verified %s of %d" % (v["verified"], n))
            return v
        m = median_of(one, cfg.repeats)
        res.put("floor", "stream %s msgs/s" % size_label(size), m["msgs_per_s"], n)
        res.put("floor", "stream %s MB/s" % size_label(size), m["bytes_per_s"] / 1e6, n)


# --------------------------------------------------------------- report -----

LOWER_IS_BETTER = ("(us)", "s/100k")


def lower_better(row):
    return any(row.endswith(s) for s in LOWER_IS_BETTER)


def fmt(v):
    if v is None:
        return "-"
    if v >= 1e6:
        return "%.2fM" % (v / 1e6)
    if v >= 1e4:
        return "%.0fk" % (v / 1e3)
    if v >= 100:
        return "%.0f" % v
    if v >= 1:
        return "%.2f" % v
    return "%.4f" % v


def rows_of(res, systems):
    rows = []
    for (s, r) in res.values:
        if r not in rows:
            rows.append(r)
    order = ["pingpong", "call", "stream", "broadcast"]
    sizes = [size_label(x) for x in STREAM_SIZES]

    def key(r):
        w = r.split()
        sub = 0
        if w[0] == "stream":
            sub = sizes.index(" ".join(w[1:3])) if " ".join(w[1:3]) in sizes else 99
        elif w[0] == "broadcast":
            sub = int(w[1])
        return (order.index(w[0]), sub, rows.index(r))
    return sorted(rows, key=key)


def table(res, systems):
    rows = rows_of(res, systems)
    head = ["measurement"] + systems
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([r] + [fmt(res.get(s, r)) for s in systems]) + " |")
    return "\n".join(lines)


def better(res, row, a, b):
    """How many times a is better than b on row (None if either is missing)."""
    va, vb = res.get(a, row), res.get(b, row)
    if not va or not vb:
        return None
    return vb / va if lower_better(row) else va / vb


def targets(res, baselines):
    out = []

    def verdict(ok):
        return "**met**" if ok else "**not met**"
    pp, fl = res.get("ngx_ipc", "pingpong p50 (us)"), res.get("floor", "pingpong p50 (us)")
    if pp and fl:
        out.append("- ping-pong p50 <= 3x the floor: %.1f us vs %.1f us = %.2fx: %s"
                   % (pp, fl, pp / fl, verdict(pp <= 3 * fl)))
    s16, c16 = res.get("ngx_ipc", "stream 16 B msgs/s"), res.get("floor", "stream 16 B msgs/s")
    if s16:
        out.append("- 16-byte stream >= 2.5 M msgs/s: %s msgs/s: %s" % (fmt(s16), verdict(s16 >= 2.5e6)))
    if s16 and c16:
        out.append("- 16-byte stream within 4x of the raw core (%s msgs/s): %.2fx: %s"
                   % (fmt(c16), c16 / s16, verdict(c16 / s16 <= 4)))
    s1m = res.get("ngx_ipc", "stream 1 MiB MB/s")
    if s1m:
        out.append("- 1 MiB stream >= 2.5 GB/s: %.2f GB/s: %s" % (s1m / 1e3, verdict(s1m >= 2500)))
    for w, (lo, hi) in SLACT.items():
        v = res.get("ngx_ipc", "broadcast %d workers s/100k" % w)
        if v:
            out.append("- broadcast benchmark, %d workers, >= 5x faster than slact's %.2f-%.2f s: "
                       "%.4f s = %.1fx faster than %.2f s: %s"
                       % (w, lo, hi, v, lo / v, lo, verdict(v * 5 <= lo)))
    for b in baselines:
        worst = None
        for r in rows_of(res, []):
            x = better(res, r, "ngx_ipc", b)
            if x is not None and (worst is None or x < worst[0]):
                worst = (x, r)
        if worst:
            out.append("- every figure >= 10x better than %s: worst is %s, %.1fx: %s"
                       % (b, worst[1], worst[0], verdict(worst[0] >= 10)))
        else:
            out.append("- every figure >= 10x better than %s: no figures (baseline failed)" % b)
    if not baselines:
        out.append("- every figure >= 10x better than both baselines: **not measured** "
                   "(no bench/baselines/*/nginx.conf)")
    return "\n".join(out)


def ratios(res, baselines):
    lines = []
    rows = rows_of(res, [])
    for other in ["floor"] + baselines:
        parts = []
        for r in rows:
            x = better(res, r, "ngx_ipc", other)
            if x is not None:
                if other == "floor":
                    parts.append("| %s | %.2fx %s |" % (r, 1 / x, "slower" if x < 1 else "of the floor"))
                else:
                    parts.append("| %s | %.1fx |" % (r, x))
        if not parts:
            continue
        if other == "floor":
            lines.append("\nngx_ipc vs the floor (floor figure / ngx_ipc figure, as a cost factor; "
                         "1.00x = as fast as the floor):\n")
            lines.append("| measurement | ngx_ipc costs |\n|---|---|")
        else:
            lines.append("\nngx_ipc vs %s (times better):\n" % other)
            lines.append("| measurement | ngx_ipc better by |\n|---|---|")
        lines.extend(parts)
    return "\n".join(lines)


def machine():
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    v = subprocess.run([NGINX, "-v"], capture_output=True, text=True).stderr.strip()
    return {"nproc": str(os.cpu_count()), "cpu": cpu, "kernel": platform.release(),
            "nginx": v.replace("nginx version: ", "")}


def machine_section():
    """The report's "## Machine" lines (a list), for every report."""
    mach = machine()
    return ["## Machine", "",
            "- nproc: %s" % mach["nproc"], "- CPU: %s" % mach["cpu"],
            "- kernel (`uname -r`): %s" % mach["kernel"], "- nginx: %s" % mach["nginx"], ""]


def n_table(res, systems):
    lines = ["| measurement | " + " | ".join(systems) + " |", "|" + "---|" * (len(systems) + 1)]
    for r in rows_of(res, systems):
        if r.endswith("p99 (us)") or r.endswith("MB/s") or r.endswith("alerts/s"):
            continue
        lines.append("| %s | %s |" % (r.replace(" p50 (us)", "").replace(" msgs/s", "")
                                      .replace(" s/100k", ""),
                                      " | ".join(str(res.ns.get((s, r), "-")) for s in systems)))
    return "\n".join(lines)


def chart(res, systems):
    if not shutil.which("gnuplot"):
        res.notes.append("gnuplot not installed: no chart (apt-get install gnuplot-nox)")
        return False
    panels = [("pingpong p50 (us)", "ping-pong p50, us (lower is better)"),
              ("stream 16 B msgs/s", "16-byte stream, msgs/s"),
              ("stream 1 MiB MB/s", "1 MiB stream, MB/s"),
              ("broadcast 2 workers alerts/s", "broadcast benchmark, 2 workers, alerts/s")]
    tmp = tempfile.mkdtemp(prefix="ngx_ipc_chart_")
    try:
        script = ['set terminal pngcairo size 1400,420 font ",10"' if _has_cairo() else
                  "set terminal png size 1400,420",
                  'set output "%s"' % PNG, "set multiplot layout 1,%d" % len(panels),
                  "set style fill solid 0.8 border -1", "set boxwidth 0.6", "set logscale y",
                  "set grid ytics", "unset key", "set xtics rotate by -30",
                  "set termoption noenhanced"]
        for i, (row, title) in enumerate(panels):
            path = os.path.join(tmp, "p%d.dat" % i)
            with open(path, "w") as f:
                k = 0
                for s in systems:
                    v = res.get(s, row)
                    if v:
                        color = {"ngx_ipc": "0xc0392b", POLL_OFF: "0xe6928a", "floor": "0x7f7f7f"}.get(s, "0x4472c4")
                        f.write('%d "%s" %g "%s" %s\n' % (k, s, v, fmt(v), color))
                        k += 1
            if k == 0:
                script.append('set title "%s (no data)"' % title)
                script.append("plot 1/0")
                continue
            script.append('set title "%s"' % title)
            script.append("set xrange [-0.5:%g]" % (k - 0.5))
            script.append('plot "%s" using 1:3:5:xtic(2) with boxes lc rgb variable, '
                          '"" using 1:3:4 with labels offset 0,0.7' % path)
        script.append("unset multiplot")
        p = subprocess.run(["gnuplot"], input="\n".join(script), text=True,
                           capture_output=True, timeout=60)
        if p.returncode != 0:
            res.notes.append("gnuplot failed: " + p.stderr.strip()[:300])
            return False
        return True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _has_cairo():
    p = subprocess.run(["gnuplot", "-e", "set terminal"], capture_output=True, text=True)
    return "pngcairo" in (p.stdout + p.stderr)


def kept_method():
    try:
        with open(DOC) as f:
            text = f.read()
    except OSError:
        return DEFAULT_METHOD.strip()
    m = re.search(re.escape(METHOD_BEGIN) + r"\n(.*?)\n" + re.escape(METHOD_END), text, re.S)
    return m.group(1).strip() if m else DEFAULT_METHOD.strip()


def write_doc(res, systems, baselines, cfg, took, has_chart):
    doc = ["# Benchmarks", "",
           "Generated by `%s` on %s (took %.0f s). Do not edit outside the method section: "
           "the next run rewrites it." % (cfg.command, cfg.date, took), "",
           METHOD_BEGIN, kept_method(), METHOD_END, ""] + machine_section() + [
           "## Results", "",
           "Medians of %d runs. us = microseconds (lower is better); msgs/s, MB/s "
           "(10^6 bytes/s) and alerts/s: higher is better; broadcast s/100k: seconds for "
           "100000 round trips, lower is better. Floor rows: eventfd ping-pong and the raw "
           "core (16 B and 1 MiB only)." % cfg.repeats, "",
           table(res, systems), ""]
    if has_chart:
        doc += ["![benchmarks](benchmarks.png)", ""]
    doc += ["## Ratios", ratios(res, baselines), "",
            "## Targets (from the issue)", "", targets(res, baselines), "",
            "## N used", "", n_table(res, systems), ""]
    if res.notes:
        doc += ["## Notes", ""] + ["- " + n for n in res.notes] + [""]
    if res.cluster:
        doc += ["## Cluster: node to node through Redis", "",
                "`bench/cluster.py`, run by `make bench` once per Redis durability "
                "setting: three nginx nodes (A, B, C, 2 workers each) and, per "
                "system, a fresh redis-server on 127.0.0.1; ngx_ipc's "
                "`ipc_cluster` over plain TCP (`ngx_ipc`), the same with "
                "`secret=` (every entry signed and checked: `ngx_ipc_secret`), "
                "over TLS (`rediss://`: `ngx_ipc_tls`) and with `replicas=1` "
                "and one replica attached (`WAIT 1 1000` after every batch: "
                "`ngx_ipc_replicas`; readers see an entry once the primary has "
                "it: WAIT holds back the writer's next batch, not the readers), "
                "beside `redis_pubsub`, what users build today (every worker "
                "SUBSCRIBEs with lua-resty-redis, bench/baselines/redis_pubsub). "
                "Goals (issue 12): p50 under 300 us, p99 under 2 ms, at least "
                "100,000 messages/s from one node to two others.", ""]
        for run in res.cluster:
            when = " (%s)" % run["date"] if run.get("date") else ""
            doc += ["### appendfsync %s" % run["appendfsync"], "",
                    "`%s`%s" % (run["command"], when), "", run["output"].strip(), ""]
    with open(DOC, "w") as f:
        f.write("\n".join(doc))


# ----------------------------------------------------------------- main -----

def settings(cfg, script):
    """The N, repeats and budget every system is measured with (--quick or
    not), the command line and the date; bench/compat/run.py uses them too."""
    q = cfg.quick
    cfg.repeats = cfg.repeats or (1 if q else 3)
    cfg.pp_n = 2000 if q else 20000
    cfg.call_n = 2000 if q else 20000
    cfg.stream_n = ({16: 200000, KiB: 50000, 64 * KiB: 2000, MiB: 200} if q else
                    {16: 1000000, KiB: 500000, 64 * KiB: 30000, MiB: 2000})
    cfg.bc_n = 10000 if q else 100000
    cfg.budget = 1.0 if q else 3.0     # seconds per run of a slow baseline
    cfg.command = "/usr/bin/python3 " + script + (" --quick" if q else "")
    cfg.date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small N, 1 repeat, for iterating")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--no-doc", action="store_true", help="print only; do not write docs/")
    ap.add_argument("--only", default=None, help="comma list of systems: floor,ngx_ipc,%s,<baseline>,cluster" % POLL_OFF)
    ap.add_argument("--report-only", action="store_true",
                    help="re-render table, doc and chart from the last run's results")
    cfg = ap.parse_args()
    if cfg.report_only:
        return rerender(cfg)
    q = cfg.quick
    settings(cfg, "bench/run.py")
    cfg.floor_pp_n = 20000 if q else 100000
    cfg.core16_n = 500000 if q else 2000000
    cfg.core1m_n = 300 if q else 2000
    cfg.broadcast_workers = [2, 4] if q else BROADCAST_WORKERS
    only = set(cfg.only.split(",")) if cfg.only else None
    t_start = time.monotonic()

    if not os.path.exists(MODULE):
        sys.exit("%s missing: run make" % MODULE)
    res = Results()
    baselines = sorted(d for d in os.listdir(os.path.join(ROOT, "bench", "baselines"))
                       if os.path.isfile(os.path.join(ROOT, "bench", "baselines", d, "nginx.conf"))) \
        if os.path.isdir(os.path.join(ROOT, "bench", "baselines")) else []
    if only:
        baselines = [b for b in baselines if b in only]
    if not baselines:
        res.notes.append("no baseline ran (none under bench/baselines/*/nginx.conf)")
        log("note: no baselines found under bench/baselines/*/nginx.conf: skipped")

    if not only or "floor" in only:
        run_floors(res, cfg)
    ngx_ipc_conf = os.path.join(ROOT, "bench", "ngx_ipc", "nginx.conf")
    for system, main_extra in (("ngx_ipc", ""), (POLL_OFF, "\nipc_busy_poll off;\n")):
        if only and system not in only:
            continue
        log(system)
        try:
            bench_system(res, system, ngx_ipc_conf, cfg, baseline=False, main_extra=main_extra)
        except Exception as e:   # report what was measured
            res.notes.append("%s: %s" % (system, e))
            log(system, "failed:", e)
    for b in baselines:
        log("baseline", b)
        try:
            bench_system(res, b, os.path.join(ROOT, "bench", "baselines", b, "nginx.conf"),
                         cfg, baseline=True)
        except Exception as e:
            res.notes.append("baseline %s: %s" % (b, e))
            log("baseline %s failed: %s" % (b, e))

    if not only or "cluster" in only:
        res.cluster = run_cluster(cfg)

    systems = [s for s in ["floor", "ngx_ipc", POLL_OFF] + baselines if any(k[0] == s for k in res.values)]
    took = time.monotonic() - t_start
    os.makedirs(BIN, exist_ok=True)
    with open(os.path.join(BIN, "results.json"), "w") as f:
        json.dump({"values": [[s, r, v] for (s, r), v in res.values.items()],
                   "ns": [[s, r, v] for (s, r), v in res.ns.items()], "notes": res.notes,
                   "systems": systems, "baselines": baselines, "took": took,
                   "cluster": res.cluster,
                   "command": cfg.command, "date": cfg.date, "repeats": cfg.repeats}, f)
    report(res, systems, baselines, cfg, took)
    return 0


def run_cluster(cfg):
    """bench/cluster.py under each Redis durability setting; its tables."""
    runs = []
    for fsync in ("everysec", "always"):
        cmd = ["/usr/bin/python3", "bench/cluster.py", "--appendfsync", fsync] + \
            (["--quick"] if cfg.quick else [])
        log("cluster, appendfsync", fsync)
        try:
            p = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, timeout=600,
                               universal_newlines=True, env=dict(os.environ, NGX_IPC_MODULE=MODULE))
            out = p.stdout
        except subprocess.TimeoutExpired as e:
            out = (e.stdout or "") + "\n(timed out after 600 s)"
        runs.append({"appendfsync": fsync, "command": " ".join(cmd), "output": out,
                     "date": datetime.datetime.now(datetime.timezone.utc)
                     .strftime("%Y-%m-%d %H:%M UTC")})
        print(out)
    return runs


def report(res, systems, baselines, cfg, took):
    print(table(res, systems))
    print(ratios(res, baselines))
    print()
    print(targets(res, baselines))
    for n in res.notes:
        print("note:", n)
    if not cfg.no_doc:
        has_chart = chart(res, systems)
        write_doc(res, systems, baselines, cfg, took, has_chart)
        log("wrote", DOC, "and", PNG if has_chart else "(no chart)")
    log("took %.0f s" % took)


def rerender(cfg):
    """--report-only: the table, doc and chart again from build/bench/results.json."""
    with open(os.path.join(BIN, "results.json")) as f:
        d = json.load(f)
    res = Results()
    for s, r, v in d["values"]:
        res.values[(s, r)] = v
    for s, r, v in d["ns"]:
        res.ns[(s, r)] = v
    res.notes = d["notes"]
    res.cluster = d.get("cluster", [])
    cfg.command, cfg.date, cfg.repeats = d["command"], d["date"], d["repeats"]
    report(res, d["systems"], d["baselines"], cfg, d["took"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
