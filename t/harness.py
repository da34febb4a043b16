"""Drive a real nginx from pytest: start it, talk to it, stop it, check its log.

`Nginx` writes a configuration under a fresh temporary prefix, starts
`nginx -p PREFIX/ -c conf/nginx.conf` with `daemon off` as a child process,
waits until every worker answers, and on `stop()` sends SIGQUIT to the master
(SIGKILL by PID after a bounded wait).  Tests reach it over HTTP on 127.0.0.1
only.  The fixtures in conftest.py create and clean up instances; this file
holds the machinery and the small helpers that tests import.

Talking to one chosen worker
----------------------------
The server listens with `reuseport`, so nginx gives every worker its own
listening socket and the kernel spreads new connections over them by a hash
of the client address and port.  Every request that carries `?worker=K` is
checked in the access phase (a server-level `access_by_lua_block`): a worker
other than K answers 409 at once, before any content handler runs, so nothing
happens there.  `Nginx.request(..., worker=K)` opens a new connection per
attempt (a new source port, so a new hash) until worker K answers, bounded by
count and time.  With 4 workers the chance that 400 attempts all miss is
below 1e-49.  A location that defines its own `access_by_lua*` loses the
check: keep such code in the eval endpoint instead.

Running Lua in a worker
-----------------------
`Nginx.lua(code, worker=K)` POSTs a Lua chunk to `/_h/eval` and returns the
chunk's return values as a list, decoded from JSON (strings map bytes 0-255
one to one onto code points 0-255, so `s.encode("latin-1")` gives the exact
bytes back).  A Lua error comes back as a raised `LuaError` carrying the
message.  The chunk sees `ipc` (the `ngx.ipc` module, when loaded), `T` (the
Lua helpers of t/lua/harness.lua) and the globals; globals it assigns
persist in that worker across calls.  Mind Lua's rule that only the last
call in a `return` list keeps all its values: `return ipc.send(...), x`
returns one value of send, not two.

The reload bridge's directory
-----------------------------
The master makes a private directory for the reload bridge's sockets and
says where in its error log; it removes it when it exits.  `stop()` reports
a master that exited by itself and left it; `cleanup()` removes what a
killed master left (the path its own log names, nothing else).

Collecting what arrived
-----------------------
Handlers record what they receive with `T.push(key, value)`: the value (a
string, exact bytes) is appended to the list `key` in the `results` shared
dict.  `Nginx.results(key)` returns that list as Python bytes; compare it
byte for byte.  `T.digest(s)` gives "<length>:<md5>" for big payloads, and
`T.pattern(size, seed)` builds payloads that `pattern()` rebuilds here.
"""

import functools
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import quote_from_bytes

REPO = Path(__file__).resolve().parent.parent
T_DIR = Path(__file__).resolve().parent
LUA_DIR = T_DIR / "lua"


def _env(*names, default=None):
    """The first of the environment variables `names` that is set."""
    for name in names:
        if os.environ.get(name):
            return os.environ[name]
    return default


# Which nginx to test (see conftest.py for the whole list).
NGINX_BIN = _env("NGX_IPC_NGINX", "NGINX_BIN", default="/usr/sbin/nginx")
IPC_MODULE = Path(_env("NGX_IPC_MODULE", default=REPO / "build" / "ngx_ipc_module.so"))
LUA_MODULES = _env("NGX_IPC_LUA_MODULES", "NGINX_MODULES_DIR")
EXTRA_LUA_PATH = _env("NGX_IPC_LUA_PACKAGE_PATH", default="")

WAIT_TIMEOUT = 10.0  # seconds, default bound of every wait
LOG_SIZE_LIMIT = 200 * 1024 * 1024  # an error log past this is a runaway

# The master's notice naming the reload bridge's directory.
BRIDGE_DIR_LINE = re.compile(r'ngx_ipc: the reload bridge\'s sockets are in "([^"]+)"')

# Log lines that fail a test unless it opts out with allow_log().
BAD_LOG_LINE = re.compile(
    r"\[(alert|emerg|crit|error)\]|segfault|signal 11|exited on signal"
)


class LuaError(Exception):
    """A Lua error raised by a chunk run through Nginx.lua()."""


class NginxError(Exception):
    """nginx failed to start, to answer, or to stop."""


def wait_for(predicate, timeout=WAIT_TIMEOUT, interval=0.01, what="condition"):
    """Poll predicate() until it returns a true value, and return that value.

    Fails with AssertionError after `timeout` seconds.  The interval grows
    from `interval` up to 0.1 s so that long waits do not spin.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
        interval = min(interval * 1.5, 0.1)


def pattern(size, seed=0):
    """The bytes T.pattern(size, seed) builds in Lua: 0..255 rotated by seed, repeated."""
    block = bytes((i + seed) % 256 for i in range(256))
    return (block * (size // 256 + 1))[:size]


def digest(data):
    """What T.digest(data) returns in Lua: b"<length>:<md5 hex>"."""
    return b"%d:%s" % (len(data), hashlib.md5(data).hexdigest().encode())


def lua_quote(data):
    """A Lua string literal for arbitrary bytes (or str, taken as latin-1)."""
    if isinstance(data, str):
        data = data.encode("latin-1")
    return '"' + "".join(f"\\{b:03d}" for b in data) + '"'


@functools.lru_cache(maxsize=None)
def lua_module_files():
    """The .so files to load before ngx_ipc: ndk and lua, or none at all when
    this nginx has them built in (as OpenResty has).

    NGX_IPC_LUA_MODULES is `none`, a directory (its ndk_http_module.so, if
    there, then ngx_http_lua_module.so) or a ':'-separated list of files.
    Unset: none if NGINX_BIN accepts a lua directive without load_module,
    else /usr/lib/nginx/modules.
    """
    setting = LUA_MODULES
    if setting is None:
        setting = "none" if lua_built_in() else "/usr/lib/nginx/modules"
    if setting == "none":
        return []
    if ":" in setting or setting.endswith(".so"):
        return [Path(f) for f in setting.split(":") if f]
    directory = Path(setting)
    ndk = directory / "ndk_http_module.so"
    return ([ndk] if ndk.is_file() else []) + [directory / "ngx_http_lua_module.so"]


def lua_built_in():
    """Does this nginx binary know lua directives with no load_module?  A
    feature check (`nginx -t` on a four-line configuration), not a guess from
    its name, version or `nginx -V`."""
    prefix = Path(tempfile.mkdtemp(prefix="ngx-ipc-probe-"))
    try:
        (prefix / "logs").mkdir()
        (prefix / "nginx.conf").write_text(
            "error_log logs/error.log;\npid logs/nginx.pid;\n"
            "events {}\nhttp { lua_package_path \"/nonexistent/?.lua;;\"; }\n")
        probe = subprocess.run(
            [NGINX_BIN, "-p", f"{prefix}/", "-c", "nginx.conf", "-t", "-q"],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
        # with the lua module built in but resty.core not found, -t fails
        # too, and the tests must then say that, not "unknown directive"
        return b'unknown directive "lua_package_path"' not in probe.stderr
    except OSError:
        return False  # no such nginx: the tests say so when they start it
    finally:
        shutil.rmtree(prefix, ignore_errors=True)


def load_module_lines(ipc=True):
    """The load_module lines of a test configuration: ndk and lua when they
    are dynamic modules, then ngx_ipc."""
    files = lua_module_files() + ([IPC_MODULE] if ipc else [])
    return "\n".join(f"load_module {f};" for f in files)


def lua_package_path():
    """lua_package_path for the tests: t/lua, then NGX_IPC_LUA_PACKAGE_PATH
    (e.g. where resty.core lives when nginx does not find it by default),
    then nginx's default."""
    extra = EXTRA_LUA_PATH.rstrip(";")
    return f"{LUA_DIR}/?.lua;" + (f"{extra};" if extra else "") + ";"


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_pids(ppid):
    """PIDs of the live processes whose parent is ppid, from /proc."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # exited meanwhile
        # Field 2 (comm) is parenthesised and may hold spaces: split after it.
        fields = stat[stat.rindex(")") + 2 :].split()
        state, parent = fields[0], int(fields[1])
        if parent == ppid and state != "Z":
            pids.append(int(entry))
    return sorted(pids)


def cpu_ticks(pid):
    """utime + stime of a process, in clock ticks, from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat(5)


def context_switches(pid):
    """Voluntary + involuntary context switches of a process so far: how often
    it went to sleep or was preempted; an idle nginx worker sits in
    epoll_wait() and makes none."""
    count = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
            count += int(line.split()[1])
    return count


def assert_idle(pids, what):
    """Over one measured second, no process of pids uses CPU or wakes up.
    A tick is 10 ms of CPU: an idle process uses none; 2 are allowed for
    noise. Each wake-up from epoll_wait() is a context switch: polling even
    every 10 ms shows as ~100, and a busy poll thousands; a few are allowed."""
    ticks = {pid: cpu_ticks(pid) for pid in pids}
    switches = {pid: context_switches(pid) for pid in pids}
    time.sleep(1.0)  # the measured window itself, not a wait for a condition
    ticks = {pid: cpu_ticks(pid) - ticks[pid] for pid in pids}
    switches = {pid: context_switches(pid) - switches[pid] for pid in pids}
    assert all(t <= 2 for t in ticks.values()), f"CPU ticks in 1 s {what}: {ticks}"
    assert all(s <= 5 for s in switches.values()), \
        f"context switches in 1 s {what}: {switches}"


class Nginx:
    """One nginx instance under a temporary prefix.

    workers         worker_processes (ignored, 1, when master_process=False)
    main            directives for the main context (e.g. "ipc_queue_limit 1m;")
    http            directives for the http block (e.g. extra lua_shared_dict)
    init            Lua for init_by_lua_block (after the harness module loads)
    init_worker     Lua for init_worker_by_lua_block; it sees locals `T` and,
                    with ipc=True, `ipc`
    locations       location blocks added to the server
    ipc             load the ngx_ipc module
    allow_log       regexes of log lines that must not fail the test
    """

    def __init__(self, workers=2, main="", http="", init="", init_worker="",
                 locations="", master_process=True, ipc=True,
                 results_size="64m", allow_log=(), start_timeout=WAIT_TIMEOUT,
                 stop_timeout=WAIT_TIMEOUT):
        self.workers = workers if master_process else 1
        self.main = main
        self.http = http
        self.init = init
        self.init_worker = init_worker
        self.locations = locations
        self.master_process = master_process
        self.ipc = ipc
        self.results_size = results_size
        self.allowed_log = [re.compile(p) for p in allow_log]
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.prefix = None
        self.port = None
        self.proc = None
        self.pids = []  # worker PIDs, indexed by ngx.worker.id()
        self.log_overflow = False
        self._monitor = None
        self._stopping = threading.Event()
        self._kill_lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------

    def start(self):
        """Write the configuration, start nginx, wait until every worker runs."""
        self.prefix = Path(tempfile.mkdtemp(prefix="ngx-ipc-t-"))
        self.prefix.chmod(0o755)  # workers may run as another user
        for sub in ("conf", "logs", "tmp"):
            (self.prefix / sub).mkdir()

        for attempt in range(3):  # another process may take the free port
            self.port = free_port()
            (self.prefix / "conf" / "nginx.conf").write_text(self.config())
            self._spawn()
            try:
                self._wait_ready()
                return self
            except NginxError:
                if self.proc.poll() is not None and attempt < 2 and \
                        "Address already in use" in self.error_log():
                    self._stopping.set()
                    self._monitor.join()
                    self.error_log_path.unlink()
                    continue
                self.kill()
                raise

    def _spawn(self):
        with open(self.prefix / "logs" / "stderr.log", "ab") as err:
            self.proc = subprocess.Popen(
                [NGINX_BIN, "-p", f"{self.prefix}/", "-c", "conf/nginx.conf"],
                stdin=subprocess.DEVNULL, stdout=err, stderr=err,
            )
        self._stopping.clear()
        self._monitor = threading.Thread(target=self._watch_log, daemon=True)
        self._monitor.start()

    def _wait_ready(self):
        """Bounded poll: HTTP answers and every worker has announced its PID."""
        deadline = time.monotonic() + self.start_timeout
        problem = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise NginxError(
                    f"nginx exited with status {self.proc.returncode} while "
                    f"starting:\n{self.log_tail()}")
            try:
                status, body = self.request("GET", "/_h/workers", timeout=1,
                                            retry_wrong_worker=False)
            except (OSError, http.client.HTTPException) as e:
                status, body, problem = None, b"", repr(e)
            if status == 200:
                announced = dict(line.split() for line in body.decode().splitlines())
                pids = [int(announced.get(str(i), 0)) for i in range(self.workers)]
                running = self.worker_pids()
                if 0 not in pids and sorted(pids) == running:
                    self.pids = pids
                    return
                problem = f"workers announced {pids}, running {running}"
            elif status is not None:
                problem = f"HTTP {status}"
            time.sleep(0.02)
        raise NginxError(f"nginx not ready after {self.start_timeout} s "
                         f"({problem}):\n{self.log_tail()}")

    def stop(self, timeout=None):
        """SIGQUIT the master and wait; SIGKILL by PID after `timeout`
        (default: the instance's stop_timeout).

        Returns None on a clean exit, else a description of what went wrong.
        """
        problem = None
        timeout = self.stop_timeout if timeout is None else timeout
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                status = self.proc.wait(timeout)
                if status != 0:
                    problem = f"nginx exited with status {status}"
            except subprocess.TimeoutExpired:
                self.kill()
                problem = f"nginx did not exit within {timeout} s of SIGQUIT"
        elif self.proc is not None and self.proc.returncode not in (0, None) \
                and not self.log_overflow:
            problem = f"nginx had exited with status {self.proc.returncode}"
        self._stopping.set()
        if self._monitor is not None:
            self._monitor.join()
        orphans = self._kill_orphans()
        if orphans:
            problem = (f"{problem}; " if problem else "") + \
                f"worker(s) {orphans} outlived the master: killed"
        if self.log_overflow:
            problem = (f"error log passed {LOG_SIZE_LIMIT >> 20} MiB: "
                       f"nginx was killed")
        left = self.bridge_dir()
        if problem is None and self.proc is not None and self.proc.returncode == 0 \
                and left is not None and left.exists():
            problem = f"the master exited and left its reload bridge directory {left}"
        return problem

    def kill(self):
        """SIGKILL the master and its children, by PID only."""
        with self._kill_lock:  # the log watchdog may call it too
            if self.proc is None or self.proc.poll() is not None:
                return
            master = self.proc.pid
            if self.master_process:
                os.kill(master, signal.SIGSTOP)  # no respawn while we collect
                for pid in child_pids(master):
                    kill_pid(pid)
            self.proc.kill()
            self.proc.wait(WAIT_TIMEOUT)
        self._kill_orphans()

    def _kill_orphans(self):
        """SIGKILL the workers we knew that outlived their master (it crashed)."""
        if not self.master_process:
            return []
        orphans = [pid for pid in self.pids if is_nginx_worker(pid)]
        for pid in orphans:
            kill_pid(pid)
        return orphans

    def cleanup(self):
        if self.prefix is not None:
            self._remove_bridge_dir()
            shutil.rmtree(self.prefix, ignore_errors=True)

    def _remove_bridge_dir(self):
        """What a killed master left of its bridge directory: only once it is
        gone, and only the directory its log names, under its own PID."""
        left = self.bridge_dir()
        if left is None or self.proc is None or self.proc.poll() is None:
            return
        if re.fullmatch(rf"/tmp/ngx_ipc\.{self.proc.pid}\.\w{{6}}", str(left)):
            shutil.rmtree(left, ignore_errors=True)

    def _watch_log(self):
        while not self._stopping.wait(0.2):
            try:
                size = self.error_log_path.stat().st_size
            except OSError:
                continue
            if size > LOG_SIZE_LIMIT:
                self.log_overflow = True
                self.kill()
                return

    # -- configuration -----------------------------------------------------

    def config(self):
        main, init, init_worker = self.main, self.init, ""
        http = f"lua_shared_dict results {self.results_size};\n{self.http}"
        if self.ipc:
            init_worker = 'local ipc = require "ngx.ipc"'
        return CONFIG_TEMPLATE.format(
            master_process="on" if self.master_process else "off",
            workers=self.workers,
            load_modules=load_module_lines(self.ipc),
            main=main,
            lua_path=lua_package_path(),
            http=http,
            init=init,
            harness_init_worker=init_worker,
            init_worker=self.init_worker,
            port=self.port,
            locations=self.locations,
        )

    # -- talking to nginx --------------------------------------------------

    def request(self, method, path, body=None, worker=None, timeout=WAIT_TIMEOUT,
                retry_wrong_worker=True):
        """One HTTP request to 127.0.0.1 -> (status, body bytes).

        With worker=K the request is retried on new connections until worker
        K answers (see the module docstring); bounded by 400 attempts and
        `timeout` seconds.
        """
        if worker is not None:
            path += ("&" if "?" in path else "?") + f"worker={worker}"
        deadline = time.monotonic() + timeout
        for _ in range(400):
            conn = http.client.HTTPConnection("127.0.0.1", self.port,
                                              timeout=max(deadline - time.monotonic(), 0.1))
            try:
                conn.request(method, path, body=body, headers={"Connection": "close"})
                response = conn.getresponse()
                status, data = response.status, response.read()
            finally:
                conn.close()
            if status != 409 or worker is None or not retry_wrong_worker:
                return status, data
            if time.monotonic() >= deadline:
                break
        raise NginxError(f"worker {worker} did not answer {path} within "
                         f"{timeout} s / 400 connections")

    def get(self, path, worker=None, timeout=WAIT_TIMEOUT):
        return self.request("GET", path, worker=worker, timeout=timeout)

    def lua(self, code, worker=None, timeout=WAIT_TIMEOUT):
        """Run a Lua chunk in a worker (any, or the one with ngx.worker.id()
        == worker) and return its return values as a list.  Raises LuaError."""
        status, body = self.request("POST", "/_h/eval", body=code.encode(),
                                    worker=worker, timeout=timeout)
        if status != 200:
            raise NginxError(f"/_h/eval answered HTTP {status}: {body[:500]!r}")
        reply = json.loads(body)
        if not reply["ok"]:
            raise LuaError(reply["error"])
        return reply["values"]

    def results(self, key):
        """The list T.push(key, ...) built, as a list of bytes."""
        if isinstance(key, str):
            key = key.encode("latin-1")
        status, body = self.get("/_h/list?key=" + quote_from_bytes(key, safe=""))
        if status != 200:
            raise NginxError(f"/_h/list answered HTTP {status}")
        items, pos = [], 0
        while pos < len(body):
            newline = body.index(b"\n", pos)
            length = int(body[pos:newline])
            items.append(body[newline + 1 : newline + 1 + length])
            pos = newline + 1 + length
        return items

    def wait_results(self, key, count, timeout=WAIT_TIMEOUT):
        """Wait until list `key` holds at least `count` items; return it."""
        found = []

        def enough():
            found[:] = self.results(key)
            return len(found) >= count

        try:
            wait_for(enough, timeout, what=f"{count} results under {key!r}")
        except AssertionError as e:
            raise AssertionError(f"{e}; got {len(found)}: {_preview(found)}") from None
        return found

    # -- looking at nginx --------------------------------------------------

    @property
    def master_pid(self):
        return self.proc.pid

    def worker_pids(self):
        """PIDs of the running worker processes, sorted (from /proc)."""
        if not self.master_process:
            return [self.proc.pid] if self.proc.poll() is None else []
        return child_pids(self.proc.pid)

    def bridge_dir(self):
        """The reload bridge's directory the master made (its notice in the
        error log), or None: no bridge (master_process off), or a build
        without one."""
        found = BRIDGE_DIR_LINE.findall(self.error_log())
        return Path(found[-1]) if found else None

    @property
    def error_log_path(self):
        return self.prefix / "logs" / "error.log"

    def error_log(self):
        return read_logs(self.prefix)

    def log_tail(self, lines=60):
        return "\n".join(self.error_log().splitlines()[-lines:])

    def allow_log(self, *patterns):
        """Let log lines matching these regexes pass the after-test check."""
        self.allowed_log += [re.compile(p) for p in patterns]

    def bad_log_lines(self):
        return [line for line in self.error_log().splitlines()
                if BAD_LOG_LINE.search(line)
                and not any(p.search(line) for p in self.allowed_log)]


def kill_pid(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def is_nginx_worker(pid):
    """Is pid (still) a live nginx worker?  Guards against PID reuse."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return cmdline.startswith(b"nginx: worker process")


def read_logs(prefix):
    """nginx's stderr and error log under prefix/logs, as one text."""
    text = ""
    for name in ("stderr.log", "error.log"):
        try:
            text += (Path(prefix) / "logs" / name).read_text(errors="replace")
        except FileNotFoundError:
            pass
    return text


def _preview(items, limit=8):
    shown = [item[:80] for item in items[:limit]]
    return f"{shown}{' ...' if len(items) > limit else ''}"


CONFIG_TEMPLATE = """\
daemon off;
master_process {master_process};
worker_processes {workers};
pid logs/nginx.pid;
error_log logs/error.log info;

{load_modules}

{main}

events {{
    worker_connections 1024;
}}

http {{
    access_log off;
    log_not_found off;
    client_body_temp_path tmp/client_body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;

    lua_package_path "{lua_path}";
    lua_shared_dict harness 1m;
    {http}

    init_by_lua_block {{
        require "harness"
        {init}
    }}

    init_worker_by_lua_block {{
        local T = require "harness"
        {harness_init_worker}
        do
            {init_worker}
        end
        T.worker_started()
    }}

    server {{
        listen 127.0.0.1:{port} reuseport;
        client_max_body_size 1m;
        client_body_buffer_size 1m;
        add_header X-Worker-Pid $pid always;

        # ?worker=K: only worker K may serve this request (see harness.py).
        access_by_lua_block {{
            local want = ngx.var.arg_worker
            if want and tonumber(want) ~= ngx.worker.id() then
                return ngx.exit(409)
            end
        }}

        location = /_h/eval {{
            content_by_lua_block {{ require("harness").eval() }}
        }}

        location = /_h/list {{
            content_by_lua_block {{ require("harness").serve_list() }}
        }}

        location = /_h/workers {{
            content_by_lua_block {{ require("harness").serve_workers() }}
        }}

        {locations}
    }}
}}
"""
