"""The example configuration examples/kv/nginx.conf, as shipped.

The example is a whole nginx.conf with its own listen, pid and error_log
lines, so it does not fit harness.Nginx: this file renders it (filling in
@LOAD_MODULES@, @PORT@ and @WORKERS@ only) under a temporary prefix, runs
`nginx -p PREFIX/ -c conf/nginx.conf -g "daemon off;"` itself, waits
(bounded) until every worker answers, and stops it by PID (SIGQUIT, then
SIGKILL) before deleting the prefix.  Traffic goes to 127.0.0.1 only.
"""

import http.client
import os
import random
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import require_ipc_module
from harness import (BAD_LOG_LINE, EXTRA_LUA_PATH, NGINX_BIN, REPO, child_pids,
                     read_logs, is_nginx_worker, kill_pid, load_module_lines,
                     free_port, wait_for)

EXAMPLE = REPO / "examples" / "kv" / "nginx.conf"
KEEP = os.environ.get("NGX_TEST_KEEP") == "1"


class Example:
    """examples/kv/nginx.conf running under a temporary prefix."""

    def __init__(self, workers):
        self.workers = workers
        self.prefix = Path(tempfile.mkdtemp(prefix="ngx-ipc-kv-"))
        self.prefix.chmod(0o755)  # workers may run as another user
        for sub in ("conf", "logs"):
            (self.prefix / sub).mkdir()
        self.port = None
        self.proc = None
        self.pids = []

    def start(self, timeout=10.0):
        for attempt in range(3):  # another process may take the free port
            self.port = free_port()
            text = EXAMPLE.read_text()
            for placeholder in ("@LOAD_MODULES@", "@PORT@", "@WORKERS@"):
                assert placeholder in text, placeholder
            text = (text.replace("\n@LOAD_MODULES@\n", f"\n{load_module_lines()}\n")
                    .replace("@PORT@", str(self.port))
                    .replace("@WORKERS@", str(self.workers)))
            if EXTRA_LUA_PATH:  # where this nginx finds resty.core
                text = text.replace("\nhttp {\n", "\nhttp {\n    lua_package_path "
                                    f'"{EXTRA_LUA_PATH.rstrip(";")};;";\n', 1)
            (self.prefix / "conf" / "nginx.conf").write_text(text)
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
        """Every worker runs and every worker owns a key that answers."""
        deadline = time.monotonic() + timeout

        def ready():
            assert self.proc.poll() is None, \
                f"nginx exited with status {self.proc.returncode}:\n{self.log_tail()}"
            self.pids = child_pids(self.proc.pid)
            if len(self.pids) != self.workers:
                return False
            # a key owned by each worker: 404 (unknown) once its owner is in
            # ipc.pids() of the worker serving the request
            for owner in range(self.workers):
                try:
                    status, _, _ = self.request(probe_key(owner, self.workers),
                                                timeout=max(deadline - time.monotonic(), 0.1))
                except (OSError, http.client.HTTPException):
                    return False
                if status != 404:
                    return False
            return True

        try:
            wait_for(ready, timeout, what="the kv example to answer")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.log_tail()}") from None

    def request(self, path, timeout=10.0):
        """GET on a new connection -> (status, body, headers)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path, headers={"Connection": "close"})
            response = conn.getresponse()
            return response.status, response.read(), dict(response.getheaders())
        finally:
            conn.close()

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




def owner_of(key, workers):
    """The example's owner: ngx.crc32_long(key) % #pids (worker id)."""
    return zlib.crc32(key.encode()) % workers


def probe_key(owner, workers):
    """/kv/<key> for a key (never set) that worker `owner` owns."""
    for i in range(1000):
        key = f"probe-{i}"
        if owner_of(key, workers) == owner:
            return f"/kv/{key}"
    raise AssertionError("no probe key")


@pytest.fixture
def example(request):
    """Factory: example(workers) starts the kv example and returns it."""
    started = []

    def start(workers):
        require_ipc_module()
        instance = Example(workers)
        started.append(instance)
        return instance.start()

    yield start

    problems = []
    for instance in started:
        problem = instance.stop()
        if problem:
            problems.append(problem)
        bad = [line for line in instance.error_log().splitlines()
               if BAD_LOG_LINE.search(line)]
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


KEYS = [f"key{i:02d}" for i in range(20)]
INCRS = {key: 5 + 10 * i for i, key in enumerate(KEYS)}  # 2000 in all
CLIENTS = 8


@pytest.mark.parametrize("workers", [2, 4])
def test_concurrent_incr_counts_exactly(example, workers):
    kv = example(workers)
    assert sum(INCRS.values()) == 2000

    jobs = [key for key, count in INCRS.items() for _ in range(count)]
    random.Random(workers).shuffle(jobs)
    lock = threading.Lock()
    next_job = [0]
    deadline = time.monotonic() + 40

    def client():
        """Takes jobs until none is left; one new connection per request."""
        out = []
        while time.monotonic() < deadline:
            with lock:
                if next_job[0] >= len(jobs):
                    break
                key = jobs[next_job[0]]
                next_job[0] += 1
            status, body, headers = kv.request(f"/kv/{key}?op=incr", timeout=10)
            out.append((key, status, body, headers.get("X-Owner-Worker"),
                        headers.get("X-Served-By-Worker")))
        return out

    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        futures = [pool.submit(client) for _ in range(CLIENTS)]
        answers = [a for f in futures for a in f.result(timeout=60)]
    assert len(answers) == len(jobs), "clients ran out of time"

    bad = [a for a in answers if a[1] != 200]
    assert not bad, bad[:10]
    # every incr answers the new value: per key, exactly 1..count
    values = {key: sorted(int(a[2]) for a in answers if a[0] == key) for key in KEYS}
    wrong = {key: v for key, v in values.items() if v != list(range(1, INCRS[key] + 1))}
    assert not wrong, {k: v[:5] + ["..."] for k, v in wrong.items()}
    # one owner per key, the one the example's hash names
    owners = {key: {a[3] for a in answers if a[0] == key} for key in KEYS}
    assert owners == {key: {str(owner_of(key, workers))} for key in KEYS}
    # the requests were spread, and many were served by a worker that is not
    # the key's owner (a call to another worker)
    served = Counter(a[4] for a in answers)
    assert len(served) >= 2, served
    assert sum(a[3] != a[4] for a in answers) > 100

    for key, count in INCRS.items():
        status, body, headers = kv.request(f"/kv/{key}")
        assert (status, body) == (200, b"%d\n" % count), key
        assert headers["X-Owner-Worker"] == str(owner_of(key, workers))


@pytest.mark.parametrize("workers", [2, 4])
def test_set_get_unknown_and_purge(example, workers):
    kv = example(workers)
    for i in range(3 * workers):
        key = f"s{i}"
        value = f"value-{i}-{'x' * i}"
        assert kv.request(f"/kv/{key}?op=set&value={value}")[:2] == \
            (200, value.encode() + b"\n")
        # read back on new connections: from whichever worker serves it
        for _ in range(4):
            status, body, headers = kv.request(f"/kv/{key}")
            assert (status, body) == (200, value.encode() + b"\n")
            assert headers["X-Owner-Worker"] == str(owner_of(key, workers))
    assert kv.request("/kv/s0?op=set&value=replaced")[:2] == (200, b"replaced\n")
    assert kv.request("/kv/s0")[:2] == (200, b"replaced\n")
    assert kv.request("/kv/s0?op=incr")[:2] == (200, b"1\n")  # not a number: restarts

    status, body, headers = kv.request("/kv/never-set")
    assert (status, body) == (404, b"\n")
    assert headers["X-Owner-Worker"] == str(owner_of("never-set", workers))

    assert kv.request("/purge")[:2] == (200, b"purge sent to every worker\n")
    wait_for(lambda: all(kv.request(f"/kv/s{i}")[0] == 404 for i in range(3 * workers)),
             timeout=10, what="every shard purged")
    wait_for(lambda: len(re.findall(r"purged its shard", kv.error_log())) == workers,
             timeout=10, what="every worker logged its purge")

    status, body, _ = kv.request("/stats")
    assert status == 200 and body.startswith(b"worker ")
    assert re.search(rb"^  calls = \d+$", body, re.M)
