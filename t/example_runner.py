"""A whole example nginx.conf from examples/, run as shipped.

An example is a complete nginx.conf with its own listen, pid and error_log
lines, so it does not fit harness.Nginx: ExampleNginx renders it under a
temporary prefix, filling in only @LOAD_MODULES@, @PORT@ and @WORKERS@
(and any placeholders a test names), runs `nginx -p PREFIX/ -c
conf/nginx.conf -g "daemon off;"` itself, waits (bounded) until every worker
runs and the test's readiness check passes, and stops it by PID (SIGQUIT,
then SIGKILL) before deleting the prefix. Traffic goes to 127.0.0.1 only.

    examples_fixture(path, ready)   a pytest fixture factory: start(workers,
                                    **placeholders) -> a running ExampleNginx;
                                    at teardown it is stopped, its error log
                                    checked for bad lines, its prefix removed
"""

import http.client
import os
import shutil
import time
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import require_ipc_module
from harness import (BAD_LOG_LINE, EXTRA_LUA_PATH, NGINX_BIN, REPO, child_pids,
                     read_logs, is_nginx_worker, kill_pid, load_module_lines,
                     free_port, wait_for)

KEEP = os.environ.get("NGX_TEST_KEEP") == "1"
EXAMPLES = REPO / "examples"


class ExampleNginx:
    """examples/<name>/nginx.conf running under a temporary prefix.

    ready(example) -> bool is called (bounded, repeatedly) once all the
    workers run; start() returns when it is true."""

    def __init__(self, conf, workers, ready=None, placeholders=None):
        self.conf = Path(conf)
        self.workers = workers
        self.ready = ready or (lambda example: True)
        self.placeholders = dict(placeholders or {})
        self.prefix = Path(tempfile.mkdtemp(prefix="ngx-ipc-example-"))
        self.prefix.chmod(0o755)  # workers may run as another user
        for sub in ("conf", "logs"):
            (self.prefix / sub).mkdir()
        self.port = None
        self.proc = None
        self.pids = []

    def render(self):
        text = self.conf.read_text()
        for placeholder in ("@LOAD_MODULES@", "@PORT@", "@WORKERS@", *self.placeholders):
            assert placeholder in text, placeholder
        text = (text.replace("\n@LOAD_MODULES@\n", f"\n{load_module_lines()}\n")
                .replace("@PORT@", str(self.port))
                .replace("@WORKERS@", str(self.workers)))
        for placeholder, value in self.placeholders.items():
            text = text.replace(placeholder, str(value))
        if EXTRA_LUA_PATH:  # where this nginx finds resty.core
            text = text.replace("\nhttp {\n", "\nhttp {\n    lua_package_path "
                                f'"{EXTRA_LUA_PATH.rstrip(";")};;";\n', 1)
        return text

    def start(self, timeout=10.0):
        for attempt in range(3):  # another process may take the free port
            self.port = free_port()
            (self.prefix / "conf" / "nginx.conf").write_text(self.render())
            with open(self.prefix / "logs" / "stderr.log", "ab") as err:
                self.proc = subprocess.Popen(
                    [NGINX_BIN, "-p", f"{self.prefix}/", "-c", "conf/nginx.conf",
                     "-g", "daemon off;"],
                    stdin=subprocess.DEVNULL, stdout=err, stderr=err)
            try:
                self._wait_ready(timeout)
                return self
            except AssertionError:
                if self.proc.poll() is not None and attempt < 2 and \
                        "Address already in use" in self.error_log():
                    (self.prefix / "logs" / "error.log").unlink(missing_ok=True)
                    continue
                raise

    def _wait_ready(self, timeout):
        def ready():
            assert self.proc.poll() is None, \
                f"nginx exited with status {self.proc.returncode}:\n{self.log_tail()}"
            self.pids = child_pids(self.proc.pid)
            if len(self.pids) != self.workers:
                return False
            try:
                return self.ready(self)
            except (OSError, http.client.HTTPException):
                return False

        try:
            wait_for(ready, timeout, what=f"{self.conf.parent.name} to answer")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.log_tail()}") from None

    def request(self, path, timeout=10.0, method="GET", body=None):
        """One request on a new connection -> (status, body, headers)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers={"Connection": "close"})
            response = conn.getresponse()
            return response.status, response.read(), dict(response.getheaders())
        finally:
            conn.close()

    def reload(self, timeout=10.0):
        """SIGHUP; returns once a new set of workers runs and is ready."""
        old = set(self.pids)
        self.proc.send_signal(signal.SIGHUP)

        def renewed():
            pids = child_pids(self.proc.pid)
            return len(pids) == self.workers and not old & set(pids) \
                and self.ready(self)

        wait_for(renewed, timeout, what=f"{self.conf.parent.name} reloaded")
        self.pids = child_pids(self.proc.pid)

    def stop(self, timeout=10.0):
        """SIGQUIT the master, SIGKILL by PID after `timeout`; -> problem or None."""
        if self.proc is None:
            return None
        problem = None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                status = self.proc.wait(timeout)
                if status != 0:
                    problem = f"nginx exited with status {status}"
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGSTOP)  # no respawn meanwhile
                for pid in child_pids(self.proc.pid):
                    kill_pid(pid)
                self.proc.kill()
                self.proc.wait(timeout)
                problem = f"nginx did not exit within {timeout} s of SIGQUIT"
        elif self.proc.returncode != 0:
            problem = f"nginx had exited with status {self.proc.returncode}"
        for pid in self.pids:  # workers that outlived their master
            if is_nginx_worker(pid):
                kill_pid(pid)
                problem = (problem or "") + f"; worker {pid} outlived the master"
        return problem

    def error_log(self):
        return read_logs(self.prefix)

    def log_tail(self, lines=40):
        return "\n".join(self.error_log().splitlines()[-lines:])

    def cleanup(self):
        shutil.rmtree(self.prefix, ignore_errors=True)


def examples_fixture(conf, ready=None, allowed=()):
    """A pytest fixture: start(workers, **placeholders) runs `conf`.

    `allowed`: regular expressions of error-log lines that are expected."""
    import re
    allowed = [re.compile(a) for a in allowed]

    @pytest.fixture
    def fixture():
        started = []

        def start(workers, timeout=10.0, **placeholders):
            require_ipc_module()
            instance = ExampleNginx(conf, workers, ready,
                                    {f"@{k}@": v for k, v in placeholders.items()})
            started.append(instance)
            return instance.start(timeout)

        yield start

        problems = []
        for instance in started:
            problem = instance.stop()
            if problem:
                problems.append(problem)
            bad = [line for line in instance.error_log().splitlines()
                   if BAD_LOG_LINE.search(line) and not any(a.search(line) for a in allowed)]
            if bad:
                problems.append(f"{len(bad)} bad line(s) in the error log, first:\n"
                                + "\n".join(bad[:20]))
            if problems or KEEP:
                print(f"--- {instance.prefix}/logs (last lines) ---\n{instance.log_tail()}")
            if KEEP:
                print(f"kept {instance.prefix}")
            else:
                instance.cleanup()
        if problems:
            pytest.fail("\n".join(problems), pytrace=False)

    return fixture


def each_worker(ex, path, pids, want=lambda status, body, headers: True, timeout=30):
    """GET `path` on new connections until every PID in `pids` answered
    (listen ... reuseport spreads them; X-Worker-Pid names the worker) with
    an answer `want` accepts. -> {pid: (status, body)}"""
    got = {}
    deadline = time.monotonic() + timeout
    for _ in range(2000):
        status, body, headers = ex.request(path)
        pid = int(headers["X-Worker-Pid"])
        if pid in pids and want(status, body, headers):
            got[pid] = (status, body)
        if set(got) == set(pids):
            return got
        assert time.monotonic() < deadline, \
            f"{path}: no wanted answer from {set(pids) - set(got)} in {timeout} s"
    raise AssertionError(f"{path}: workers {set(pids) - set(got)} never answered")
