"""A private redis-server for tests and benchmarks, and a tiny RESP client.

    from redis_server import RedisServer, redis_server  # noqa: F401 (fixture)

    def test_example(redis_server):
        r = redis_server()                      # started, answers PING
        r.command("XADD", "s", "*", "k", "v")   # -> b"1700000000000-0"
        r.kill()                                # SIGKILL by PID, mid-anything
        r.restart()                             # same port, same dir, same AOF

    def test_tls(redis_server, tls_certs):      # tls_certs.py's fixture
        r = redis_server(tls=tls_certs)         # also on r.tls_port, over TLS
        r.tls_client().command("PING")          # verifies with tls_certs.ca

`RedisServer` runs /usr/bin/redis-server in the foreground as a child process,
bound to 127.0.0.1 on a free port, with its own temporary directory as
`--dir` and the append-only file on (`--appendfsync always` by default, so
that a write Redis acknowledged survives SIGKILL), no RDB snapshots.  It is
stopped by its PID only: SIGTERM, then SIGKILL after a bounded wait.
With `tls=` (a tls_certs.TlsCerts) it also listens TLS on `tls_port`; the
plain `port` stays, for the harness's own commands.  With `replicaof=` it
starts as a replica (redis_sentinel.py builds Sentinel sets from these).

The `redis_server` fixture is a factory, like conftest.py's `nginx`: each call
starts one more server; at teardown every server it started is stopped by PID
and its directory deleted (kept when NGX_TEST_KEEP=1), whether the test passed
or not.  pytest loads fixtures only from conftest.py and the test module, so a
test module imports the fixture by name.

The RESP client (`RespClient`, `RedisServer.command`) is resp_client.py's:
RESP2 over a plain socket or TLS, no redis-py; an error reply raises
`RedisReplyError`.

Also usable without pytest (bench/cluster.py imports it): pytest is optional.
"""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

# the client lives in resp_client.py; these names stay importable from here
from resp_client import (RedisReplyError, RedisServerError, RespClient,  # noqa: F401
                         encode_command)

try:
    import pytest
except ImportError:  # benchmarks run with the standard library only
    pytest = None

REDIS_BIN = os.environ.get("REDIS_SERVER_BIN", "/usr/bin/redis-server")
HOST = "127.0.0.1"
START_TIMEOUT = 10.0  # seconds for redis-server to answer PING
STOP_TIMEOUT = 10.0  # seconds between SIGTERM and SIGKILL
KEEP = os.environ.get("NGX_TEST_KEEP") == "1"


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class RedisServer:
    """One redis-server child process on 127.0.0.1 with its own directory.

    appendfsync   "always" (default: an acknowledged write survives SIGKILL),
                  "everysec" or "no"; None turns the append-only file off
    password      set `requirepass` (clients then AUTH as the default user)
    extra         more command-line arguments, e.g. ("--maxmemory", "10mb")
    tls           a tls_certs.TlsCerts: also listen TLS on `tls_port` with
                  its server certificate (and its client one for replication)
    tls_auth_clients  "optional" (default: a client certificate, if any, must
                  verify with the CA), "yes" (required) or "no"
    tls_replication   replicate over TLS, and announce the TLS port to the
                  primary (so that Sentinel knows the server by its TLS port)
    replicaof     (host, port): start as a replica of that server
    """

    def __init__(self, appendfsync="always", password=None, extra=(),
                 start_timeout=START_TIMEOUT, tls=None, tls_auth_clients="optional",
                 tls_replication=False, replicaof=None):
        self.appendfsync = appendfsync
        self.password = password
        self.extra = tuple(extra)
        self.start_timeout = start_timeout
        self.tls, self.tls_auth_clients = tls, tls_auth_clients
        self.tls_replication = tls_replication
        self.replicaof = replicaof
        self.dir = None
        self.port = None
        self.tls_port = None
        self.proc = None
        self._client = None

    # -- lifecycle ---------------------------------------------------------

    def start(self):
        """Make the directory, start redis-server, wait until it answers PING."""
        self.dir = Path(tempfile.mkdtemp(prefix="ngx-ipc-redis-"))
        for attempt in range(3):  # another process may take the free port
            self.port = free_port()
            if self.tls is not None:
                self.tls_port = free_port()
            self._spawn()
            try:
                self._wait_ready()
                return self
            except RedisServerError:
                if self.proc.poll() is not None and attempt < 2 and \
                        "Address already in use" in self.log():
                    continue
                self.kill()
                raise

    def restart(self):
        """Start again on the same port with the same directory (and AOF).

        A server still running is stopped first (SIGTERM, then SIGKILL);
        call kill() before to simulate a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.stop()
        self._spawn()
        try:
            self._wait_ready()
        except RedisServerError:
            self.kill()
            raise
        return self

    def args(self):
        args = [REDIS_BIN,
                "--port", str(self.port), "--bind", HOST,
                "--dir", str(self.dir), "--daemonize", "no",
                "--save", "", "--logfile", "", "--loglevel", "notice"]
        if self.appendfsync is None:
            args += ["--appendonly", "no"]
        else:
            args += ["--appendonly", "yes", "--appendfsync", self.appendfsync]
        if self.password is not None:
            args += ["--requirepass", self.password]
        if self.tls is not None:
            for name, value in self.tls.redis_config(
                    self.tls_port, self.tls_auth_clients, self.tls_replication):
                args += ["--" + name, value]
        if self.replicaof is not None:
            args += ["--replicaof", str(self.replicaof[0]), str(self.replicaof[1])]
        return args + list(self.extra)

    def _spawn(self):
        if self._client is not None:
            self._client.close()
        with open(self.dir / "redis.log", "ab") as out:
            self.proc = subprocess.Popen(self.args(), stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=out, cwd=self.dir)

    def _wait_ready(self):
        """Bounded poll: PING answers PONG (not -LOADING while the AOF loads)."""
        deadline = time.monotonic() + self.start_timeout
        interval, problem = 0.005, "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RedisServerError(
                    f"redis-server exited with status {self.proc.returncode} "
                    f"while starting:\n{self.log_tail()}")
            try:
                with self.client(timeout=1.0) as c:
                    if c.command("PING") == "PONG":
                        return
            except (OSError, RedisReplyError) as e:
                problem = repr(e)
            time.sleep(interval)
            interval = min(interval * 1.5, 0.1)
        raise RedisServerError(f"redis-server not ready after {self.start_timeout} s "
                               f"({problem}):\n{self.log_tail()}")

    def kill(self):
        """SIGKILL by PID (a crash: what the last fsync kept is what survives)."""
        if self._client is not None:
            self._client.close()
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.kill()
        self.proc.wait(STOP_TIMEOUT)

    def stop(self, timeout=STOP_TIMEOUT):
        """SIGTERM by PID and wait; SIGKILL after `timeout`.  Returns None on a
        clean exit, else what went wrong."""
        if self._client is not None:
            self._client.close()
        if self.proc is None or self.proc.poll() is not None:
            return None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
            return None
        except subprocess.TimeoutExpired:
            self.kill()
            return f"redis-server did not exit within {timeout} s of SIGTERM: killed"

    def cleanup(self):
        """Stop (if running) and delete the directory."""
        problem = self.stop()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
        return problem

    # -- talking to it -----------------------------------------------------

    @property
    def pid(self):
        return self.proc.pid if self.proc is not None else None

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def url(self, db=None, tls=False):
        """The address for `ipc_cluster`: redis://[default:PASSWORD@]127.0.0.1:PORT[/DB],
        or rediss://...:TLS_PORT with tls=True."""
        auth = f"default:{self.password}@" if self.password is not None else ""
        scheme, port = ("rediss", self.tls_port) if tls else ("redis", self.port)
        return f"{scheme}://{auth}{HOST}:{port}" + (f"/{db}" if db is not None else "")

    @property
    def announced_port(self):
        """The port a primary (so Sentinel) knows this server by."""
        return self.tls_port if self.tls_replication else self.port

    def client(self, password=..., timeout=5.0):
        """A new RespClient (connected on first command); password defaults to
        the server's own."""
        if password is ...:
            password = self.password
        return RespClient(self.port, password=password, timeout=timeout)

    def tls_client(self, ca=None, cert=None, key=None, server_hostname=...,
                   password=..., timeout=5.0):
        """A new RespClient to `tls_port` verifying the server with `ca` (the
        TlsCerts CA by default) against `server_hostname` ("redis.test" by
        default); `cert`/`key`: a client certificate to present."""
        ctx = self.tls.client_context(ca, cert, key)
        if server_hostname is ...:
            server_hostname = self.tls.server_name
        if password is ...:
            password = self.password
        return RespClient(self.tls_port, password=password, timeout=timeout,
                          ssl_context=ctx, server_hostname=server_hostname)

    def command(self, *args):
        """One command on a kept connection (reconnects after kill/restart)."""
        if self._client is None:
            self._client = self.client()
        return self._client.command(*args)

    def role(self):
        """The first element of ROLE: "master", "slave" (or "sentinel")."""
        role = self.command("ROLE")[0]
        return role.decode() if isinstance(role, bytes) else role

    def info(self, section="replication"):
        """INFO <section> as a dict of str (e.g. info()["master_link_status"])."""
        text = self.command("INFO", section).decode(errors="replace")
        return dict(line.split(":", 1) for line in text.splitlines()
                    if ":" in line and not line.startswith("#"))

    def log(self):
        try:
            return (self.dir / "redis.log").read_text(errors="replace")
        except (OSError, TypeError):
            return ""

    def log_tail(self, lines=30):
        return "\n".join(self.log().splitlines()[-lines:])


if pytest is not None:
    @pytest.fixture
    def redis_server():
        """Factory: redis_server(**kwargs) starts and returns a RedisServer.

        kwargs are those of RedisServer: appendfsync, password, extra, tls,
        tls_auth_clients, tls_replication, replicaof.  Every server is stopped
        by PID and its directory removed after the test."""
        servers = []

        def start(**kwargs):
            server = RedisServer(**kwargs)
            servers.append(server)
            return server.start()

        yield start

        problems = []
        for server in servers:
            problem = server.stop()
            if problem:
                problems.append(problem)
            if KEEP:
                print(f"kept {server.dir}")
            elif server.dir is not None:
                shutil.rmtree(server.dir, ignore_errors=True)
        if problems:
            pytest.fail("\n".join(problems), pytrace=False)
