#!/usr/bin/python3
"""ngx_ipc with many workers: memory, broadcast time and CPU (issue 19).

    /usr/bin/python3 bench/scale.py [--quick] [--repeats N] [--no-doc]
                                    [--module OTHER.so] [--workers 8,32]

Two tables, on this machine, in one run:

1. At 8, 32, 128 and 512 workers: the configuration's shared mapping (its
   size, from the master's log) and how much of it the machine's shared
   memory grew by (/proc/meminfo Shmem) after the issue's load, every worker
   broadcasting one 40 KiB message (/bench/fanout); the time that load
   took; and the broadcast round trip (/bench/bcast_rtt: one 16-byte
   broadcast, until every other worker replied; median of 50).
2. ngx_lua_ipc's broadcast benchmark (50,000 round trips between one
   broadcaster and all the others, /bench/broadcast) at 4, 16, 64, 150 and
   256 workers, for ngx_ipc with busy polling (its default), ngx_ipc with
   `ipc_busy_poll off`, and slact/ngx_lua_ipc when NGX_LUA_IPC_MODULE points
   at a build of it (made by hand from its public source, never kept
   here): seconds, and the CPU seconds all workers spent per 100,000
   messages (utime + stime from /proc/<pid>/stat; a round trip is two
   messages).

3. What writing a broadcast's payload into every inbox costs against the
   copies every design pays (bench/floor/broadcast_copy.cpp, no nginx): at
   8, 128 and 1024 workers, 16 B and 40 KiB.

Medians of --repeats runs (3; --quick: 1 run, fewer worker counts). Writes
docs/BENCHMARKS_SCALE.md (unless --no-doc) and build/bench/scale.json.
"""

import argparse
import datetime
import json
import os
import platform
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  bench/run.py: the benchmark nginx and its helpers
import subprocess  # noqa: E402

ROOT = run.ROOT
DOC = os.path.join(ROOT, "docs", "BENCHMARKS_SCALE.md")
NGX_IPC_CONF = os.path.join(ROOT, "bench", "ngx_ipc", "nginx.conf")
LUA_IPC_CONF = os.path.join(ROOT, "bench", "ngx_lua_ipc", "nginx.conf")  # not a bench/baselines/*: run.py would run it
PORT = 18290
START_TIMEOUT = 180      # seconds for nginx to answer with every worker
CLK_TCK = os.sysconf("SC_CLK_TCK")
MiB = 1024 * 1024


def log(*a):
    print(*a, file=sys.stderr, flush=True)


class Nginx(run.Nginx):
    """run.py's benchmark nginx, with a start-up bound for hundreds of
    workers, the master's log at info (ngx_ipc says its mapping's size
    there) and ngx_lua_ipc's module path filled in."""

    def config(self):
        conf = super().config().replace("error_log logs/error.log notice;",
                                        "error_log logs/error.log info;")
        return conf.replace("@LUA_IPC_MODULE@", os.environ.get("NGX_LUA_IPC_MODULE", ""))

    def _wait_ready(self):
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("nginx exited: %s" % self.log_tail(20)[-2000:])
            code, body = self.get("/bench/ready", timeout=5)
            m = re.match(r"ready (\d+)", body) if code == 200 else None
            # at least: ngx_lua_ipc lists one PID too many at 256 workers
            if m and int(m.group(1)) >= self.workers \
                    and len(self.worker_pids()) == self.workers:
                self.pids = self.worker_pids()
                return
            time.sleep(0.1)
        raise RuntimeError("nginx not ready with %d workers after %d s"
                           % (self.workers, START_TIMEOUT))

    def stop(self):
        self.stop_timeout = START_TIMEOUT
        super().stop()

    def cpu_seconds(self):
        """utime + stime of every worker, in seconds."""
        ticks = 0
        for pid in self.pids:
            try:
                with open("/proc/%d/stat" % pid) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            ticks += int(fields[11]) + int(fields[12])
        return ticks / CLK_TCK

    def mapped_bytes(self):
        m = re.findall(r"ngx_ipc: \d+ worker slots, .* shared memory (\d+) bytes",
                       self.error_log())
        return int(m[-1]) if m else None


def shmem_bytes():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Shmem:"):
                return int(line.split()[1]) * 1024
    return 0


def memory_table(cfg, out):
    for w in cfg.memory_workers:
        log("memory and broadcast round trip, %d workers" % w)
        before = shmem_bytes()
        ngx = Nginx(NGX_IPC_CONF, w, PORT)
        try:
            ngx.start()
            fan = ngx.measure("/bench/fanout?size=40960")["seconds"]
            touched = shmem_bytes() - before
            rtt = run.median_of(lambda: ngx.measure("/bench/bcast_rtt?n=50"), cfg.repeats)
            out.append({"workers": w, "mapped": ngx.mapped_bytes(), "touched": touched,
                        "fanout_s": fan, "rtt_p50_us": rtt["p50_us"],
                        "rtt_p99_us": rtt["p99_us"]})
        except Exception as e:
            out.append({"workers": w, "error": str(e)})
            log("  failed:", e)
        finally:
            ngx.stop()


def first_alert(ngx):
    """The first alert of nginx's log (a worker that crashed: the master
    logs it once it reaped the worker, so up to a second later), or ''."""
    for _ in range(10):
        try:
            lines = [ln for ln in ngx.error_log().splitlines()
                     if re.search(r"\[(alert|crit|emerg)\]", ln)]
        except OSError:
            return ""
        if lines:
            return "; nginx: " + lines[0].split("] ", 1)[-1]
        time.sleep(0.1)
    return ""


def broadcast_table(cfg, out):
    systems = [("ngx_ipc", NGX_IPC_CONF, ""),
               ("ngx_ipc, ipc_busy_poll off", NGX_IPC_CONF, "\nipc_busy_poll off;\n")]
    lua_ipc = os.environ.get("NGX_LUA_IPC_MODULE")
    if lua_ipc and os.path.isfile(lua_ipc):
        systems.append(("ngx_lua_ipc", LUA_IPC_CONF, ""))
    n = cfg.bc_n
    for w in cfg.broadcast_workers:
        for system, template, extra in systems:
            log("broadcast benchmark, %s, %d workers, n=%d" % (system, w, n))
            ngx = Nginx(template, w, PORT, extra)
            try:
                ngx.start()
                ngx.measure("/bench/broadcast?n=%d" % min(n, 1000))   # warm-up

                def one():
                    c0 = ngx.cpu_seconds()
                    s = ngx.measure("/bench/broadcast?n=%d" % n)["seconds"]
                    cpu = ngx.cpu_seconds() - c0
                    return {"seconds": s, "cpu_per_100k": cpu / (2 * n) * 100000}
                m = run.median_of(one, cfg.repeats)
                out.append({"system": system, "workers": w, "n": n, **m})
            except Exception as e:
                out.append({"system": system, "workers": w, "n": n,
                            "error": str(e) + first_alert(ngx)})
                log("  failed:", e)
            finally:
                ngx.stop()


def copy_table(cfg, out):
    src = [os.path.join(ROOT, "bench", "floor", "broadcast_copy.cpp")] + sorted(
        os.path.join(ROOT, "core", "src", f) for f in os.listdir(os.path.join(ROOT, "core", "src"))
        if f.endswith(".cpp"))
    exe = os.path.join(run.BIN, "broadcast_copy")
    os.makedirs(run.BIN, exist_ok=True)
    subprocess.run(["g++", "-O2", "-std=c++17", "-I" + os.path.join(ROOT, "core", "include"),
                    "-o", exe] + src, check=True, timeout=300)
    for w in cfg.copy_workers:
        for size in (16, 40960):
            log("broadcast copy, %d workers, %d bytes" % (w, size))
            vals, err = run.parse_lines(subprocess.run(
                [exe, str(w), str(size), "50" if w > 256 else "200"], capture_output=True,
                text=True, timeout=300).stdout)
            out.append({"workers": w, "size": size, **vals} if not err else
                       {"workers": w, "size": size, "error": err})


def mib(b):
    return "-" if b is None else "%.1f" % (b / MiB)


def render(cfg, mem, bc, copies, took):
    lines = ["# ngx_ipc with many workers", "",
             "Written by `%s` on %s (%s, %d vCPUs, %s), %.0f s; medians of %d run(s)."
             % (cfg.command, cfg.date, platform.node(), os.cpu_count(),
                platform.processor() or platform.machine(), took, cfg.repeats), "",
             "## Shared memory and broadcast round trip", "",
             "Mapped: the configuration's mapping (inboxes and slots; the reload "
             "bridge's mapping, one per master, is apart). Touched: how much the "
             "machine's `Shmem` grew from before nginx started to after every worker "
             "broadcast one 40 KiB message (nginx's own zones included). Fan-out: how "
             "long that load took. Round trip: one 16-byte broadcast until every other "
             "worker replied.", "",
             "| workers | mapped (MiB) | touched (MiB) | fan-out 40 KiB (s) "
             "| broadcast round trip p50 (µs) | p99 (µs) |",
             "|---:|---:|---:|---:|---:|---:|"]
    for r in mem:
        if "error" in r:
            lines.append("| %d | error: %s | | | | |" % (r["workers"], r["error"][:80]))
            continue
        lines.append("| %d | %s | %s | %.3f | %.0f | %.0f |"
                     % (r["workers"], mib(r["mapped"]), mib(r["touched"]), r["fanout_s"],
                        r["rtt_p50_us"], r["rtt_p99_us"]))
    lines += ["", "## ngx_lua_ipc's broadcast benchmark", "",
              "%d round trips between one broadcaster and all the other workers "
              "(slact/ngx_lua_ipc's own benchmark); CPU: seconds all workers spent "
              "per 100,000 messages (user + system)." % cfg.bc_n, ""]
    systems = []
    for r in bc:
        if r["system"] not in systems:
            systems.append(r["system"])
    lines.append("| workers | " + " | ".join("%s s | CPU s/100k" % s for s in systems) + " |")
    lines.append("|---:|" + "---:|---:|" * len(systems))
    for w in cfg.broadcast_workers:
        cells = []
        for s in systems:
            r = next((x for x in bc if x["system"] == s and x["workers"] == w), None)
            if r is None or "error" in r:
                cells += ["error" if r else "-", ""]
            else:
                cells += ["%.3f" % r["seconds"], "%.2f" % r["cpu_per_100k"]]
        lines.append("| %d | %s |" % (w, " | ".join(cells)))
    errors = [r for r in bc if "error" in r]
    if errors:
        lines += ["", "Errors:", ""] + ["- %s, %d workers: %s" % (r["system"], r["workers"],
                                                                  r["error"][:300])
                                        for r in errors]
    if "ngx_lua_ipc" in systems:
        lines += ["", "Ratios (ngx_lua_ipc seconds / ngx_ipc seconds):", ""]
        for w in cfg.broadcast_workers:
            get = {x["system"]: x for x in bc if x["workers"] == w and "error" not in x}
            if "ngx_lua_ipc" in get:
                lines.append("- %d workers: busy poll %s, busy poll off %s" % (w, *(
                    "%.1fx" % (get["ngx_lua_ipc"]["seconds"] / get[s]["seconds"])
                    if s in get else "-" for s in systems[:2])))
    else:
        lines += ["", "(ngx_lua_ipc not measured: NGX_LUA_IPC_MODULE unset.)"]
    lines += ["", "## A broadcast's copies", "",
              "`bench/floor/broadcast_copy.cpp`, the core alone in one process (no "
              "nginx, no wake-up): per broadcast, the sender's `broadcast()` (a lock, "
              "a header and a copy of the payload per inbox), the payload copied "
              "workers - 1 times and nothing else (what writing it once would save at "
              "most), and the receivers taking it and copying it out, as every "
              "receiver's Lua does in any design. Medians, µs.", "",
              "| workers | size | broadcast() | payload copies alone | receivers |",
              "|---:|---:|---:|---:|---:|"]
    for r in copies:
        if "error" in r:
            lines.append("| %d | %d | error: %s | | |" % (r["workers"], r["size"], r["error"]))
        else:
            lines.append("| %d | %d B | %.1f | %.1f | %.1f |" % (
                r["workers"], r["size"], r["send_us"], r["memcpy_us"], r["receive_us"]))
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int)
    ap.add_argument("--no-doc", action="store_true")
    ap.add_argument("--module", help="another build of ngx_ipc (a before figure; "
                    "implies --no-doc)")
    ap.add_argument("--workers", help="worker counts for both tables, e.g. 8,32")
    cfg = ap.parse_args()
    if cfg.module:
        run.MODULE = os.path.abspath(cfg.module)
        cfg.no_doc = True
    q = cfg.quick
    cfg.repeats = cfg.repeats or (1 if q else 3)
    cfg.memory_workers = [8, 32] if q else [8, 32, 128, 512]
    cfg.broadcast_workers = [4, 16] if q else [4, 16, 64, 150, 256]
    cfg.bc_n = 5000 if q else 50000
    cfg.copy_workers = [8, 128] if q else [8, 128, 1024]
    if cfg.workers:
        ws = [int(x) for x in cfg.workers.split(",")]
        if not all(1 <= x <= 1024 for x in ws):
            sys.exit("--workers: 1 to 1024")
        cfg.memory_workers = cfg.broadcast_workers = ws
    cfg.command = " ".join(["/usr/bin/python3 bench/scale.py"] + sys.argv[1:])
    cfg.date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    if not os.path.exists(run.MODULE):
        sys.exit("%s missing: run make" % run.MODULE)
    t0 = time.monotonic()
    mem, bc, copies = [], [], []
    if not cfg.module:   # the core of this tree, not of that build
        copy_table(cfg, copies)
    memory_table(cfg, mem)
    broadcast_table(cfg, bc)
    took = time.monotonic() - t0
    os.makedirs(run.BIN, exist_ok=True)
    with open(os.path.join(run.BIN, "scale-other.json" if cfg.module else "scale.json"),
              "w") as f:
        json.dump({"memory": mem, "broadcast": bc, "copies": copies, "command": cfg.command,
                   "date": cfg.date, "repeats": cfg.repeats, "took": took}, f, indent=1)
    text = render(cfg, mem, bc, copies, took)
    print(text)
    if not cfg.no_doc:
        with open(DOC, "w") as f:
            f.write(text)
        log("wrote", DOC)
    return 0 if all("error" not in r for r in mem + bc + copies) else 1


if __name__ == "__main__":
    sys.exit(main())
