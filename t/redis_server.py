"""A private redis-server for tests and benchmarks, and a tiny RESP client.

    from redis_server import RedisServer, redis_server  # noqa: F401 (fixture)

    def test_example(redis_server):
        r = redis_server()                      # started, answers PING
        r.command("XADD", "s", "*", "k", "v")   # -> b"1700000000000-0"
        r.kill()                                # SIGKILL by PID, mid-anything
        r.restart()                             # same port, same dir, same AOF

`RedisServer` runs /usr/bin/redis-server in the foreground as a child process,
bound to 127.0.0.1 on a free port, with its own temporary directory as
`--dir` and the append-only file on (`--appendfsync always` by default, so
that a write Redis acknowledged survives SIGKILL), no RDB snapshots.  It is
stopped by its PID only: SIGTERM, then SIGKILL after a bounded wait.

The `redis_server` fixture is a factory, like conftest.py's `nginx`: each call
starts one more server; at teardown every server it started is stopped by PID
and its directory deleted (kept when NGX_TEST_KEEP=1), whether the test passed
or not.  pytest loads fixtures only from conftest.py and the test module, so a
test module imports the fixture by name.

The RESP client (`RespClient`, `RedisServer.command`) speaks RESP2 over a plain
socket: no redis-py.  Replies come back as Python values: simple strings as
str, bulk strings as bytes (None for a null bulk), integers as int, arrays as
lists; an error reply raises `RedisReplyError` carrying Redis's message.

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

try:
    import pytest
except ImportError:  # benchmarks run with the standard library only
    pytest = None

REDIS_BIN = os.environ.get("REDIS_SERVER_BIN", "/usr/bin/redis-server")
HOST = "127.0.0.1"
START_TIMEOUT = 10.0  # seconds for redis-server to answer PING
STOP_TIMEOUT = 10.0  # seconds between SIGTERM and SIGKILL
KEEP = os.environ.get("NGX_TEST_KEEP") == "1"


class RedisReplyError(Exception):
    """Redis answered with an error reply (-ERR ..., -NOAUTH ..., -WRONGPASS ...)."""


class RedisServerError(Exception):
    """redis-server failed to start, to answer or to stop."""


def _encode(arg):
    if isinstance(arg, bytes):
        return arg
    if isinstance(arg, str):
        return arg.encode()
    if isinstance(arg, (int, float)):
        return str(arg).encode()
    raise TypeError(f"cannot send {type(arg).__name__} to Redis")


def encode_command(*args):
    """The RESP2 array of bulk strings for one command."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = _encode(arg)
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class RespClient:
    """One connection to a Redis server, one command at a time.

    Every socket operation is bounded by `timeout` seconds.  After an error
    reply the connection stays usable; after a socket error it is closed and
    the next command reconnects.
    """

    def __init__(self, port, host=HOST, password=None, username=None, timeout=5.0):
        self.host, self.port = host, port
        self.password, self.username = password, username
        self.timeout = timeout
        self._sock = None
        self._buf = b""

    def connect(self):
        self.close()
        self._sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        self._buf = b""
        if self.password is not None:
            auth = ("AUTH", self.username, self.password) if self.username \
                else ("AUTH", self.password)
            self.command(*auth)
        return self

    def close(self):
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    def command(self, *args):
        """Send one command, return its parsed reply (raises RedisReplyError)."""
        if self._sock is None:
            self.connect()
        try:
            self._sock.sendall(encode_command(*args))
            reply = self._read_reply()
        except OSError:
            self.close()
            raise
        if isinstance(reply, RedisReplyError):
            raise reply
        return reply

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- RESP2 parsing -----------------------------------------------------

    def _fill(self):
        data = self._sock.recv(65536)
        if not data:
            raise ConnectionError("Redis closed the connection")
        self._buf += data

    def _line(self):
        while True:
            end = self._buf.find(b"\r\n")
            if end >= 0:
                line, self._buf = self._buf[:end], self._buf[end + 2:]
                return line
            self._fill()

    def _exact(self, size):
        while len(self._buf) < size + 2:
            self._fill()
        data, self._buf = self._buf[:size], self._buf[size + 2:]
        return data

    def _read_reply(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            # returned, not raised, so that an error inside an array is kept
            return RedisReplyError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            return None if size < 0 else self._exact(size)
        if kind == b"*":
            count = int(rest)
            return None if count < 0 else [self._read_reply() for _ in range(count)]
        raise RedisServerError(f"unexpected RESP line {line[:80]!r}")


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
    """

    def __init__(self, appendfsync="always", password=None, extra=(),
                 start_timeout=START_TIMEOUT):
        self.appendfsync = appendfsync
        self.password = password
        self.extra = tuple(extra)
        self.start_timeout = start_timeout
        self.dir = None
        self.port = None
        self.proc = None
        self._client = None

    # -- lifecycle ---------------------------------------------------------

    def start(self):
        """Make the directory, start redis-server, wait until it answers PING."""
        self.dir = Path(tempfile.mkdtemp(prefix="ngx-ipc-redis-"))
        for attempt in range(3):  # another process may take the free port
            self.port = free_port()
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

    def url(self, db=None):
        """The address for `ipc_cluster`: redis://[default:PASSWORD@]127.0.0.1:PORT[/DB]."""
        auth = f"default:{self.password}@" if self.password is not None else ""
        return f"redis://{auth}{HOST}:{self.port}" + (f"/{db}" if db is not None else "")

    def client(self, password=..., timeout=5.0):
        """A new RespClient (connected on first command); password defaults to
        the server's own."""
        if password is ...:
            password = self.password
        return RespClient(self.port, password=password, timeout=timeout)

    def command(self, *args):
        """One command on a kept connection (reconnects after kill/restart)."""
        if self._client is None:
            self._client = self.client()
        return self._client.command(*args)

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

        kwargs are those of RedisServer: appendfsync, password, extra.  Every
        server is stopped by PID and its directory removed after the test."""
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
