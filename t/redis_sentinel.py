"""A private Redis Sentinel set for failover tests: a primary, a replica and
three Sentinels, every one a child process on 127.0.0.1 on a free port.

    from redis_sentinel import sentinel_set  # noqa: F401 (fixture)

    def test_example(sentinel_set):
        s = sentinel_set()                      # discovered, replicating
        s.url()          # redis+sentinel://127.0.0.1:S1,...:S3/ngxipc
        old = s.kill_primary()                  # SIGKILL by PID
        new, seconds = s.wait_failover(old.port)
        s.restart_old(old)                      # comes back as a replica

The data servers are redis_server.RedisServer (appendfsync always, their own
directories); the Sentinels are /usr/bin/redis-sentinel with a config file of
their own, which Sentinel rewrites.  `start()` returns once every Sentinel
names the primary, knows the replica and the other Sentinels, and the replica
is in sync: a failover needs Sentinels that found each other.

With `tls=` (a tls_certs.TlsCerts) the data servers listen on a plain port
and a TLS port and replicate over TLS, so Sentinel knows them by their TLS
ports (get-master-addr-by-name answers a TLS port); the Sentinels then must
talk TLS too (`tls-replication yes`, Sentinel's only switch for that), so each
also listens TLS on `tls_port` besides its plain `port`.  The harness's own
commands always use the plain ports.

Every wait is a bounded poll; everything is stopped by PID (SIGTERM, then
SIGKILL); directories are removed unless NGX_TEST_KEEP=1.
"""

import collections
import os
import shutil
import time

from redis_server import (HOST, KEEP, RedisReplyError, RedisServer, RedisServerError,
                          pytest)

SENTINEL_BIN = os.environ.get("REDIS_SENTINEL_BIN", "/usr/bin/redis-sentinel")
MASTER_NAME = "ngxipc"
DISCOVERY_TIMEOUT = 30.0  # seconds for Sentinels to find everything at start
FAILOVER_TIMEOUT = 30.0  # seconds for wait_failover()
REJOIN_TIMEOUT = 60.0  # seconds for restart_old() (Sentinel waits 8 s by itself)
BAD_FLAGS = {"s_down", "o_down", "disconnected"}


def poll(predicate, timeout, what, detail=lambda: ""):
    """Call predicate() until it returns a true value, and return that value.

    Bounded in time and in count; the interval grows from 5 ms to 100 ms.
    OSError and RedisReplyError count as "not yet".  On timeout raises
    RedisServerError naming `what`, the last outcome and detail()."""
    deadline = time.monotonic() + timeout
    interval, last = 0.005, None
    for _ in range(int(timeout / 0.005) + 2):
        try:
            value = predicate()
            if value:
                return value
            last = repr(value)
        except (OSError, RedisReplyError) as e:
            last = repr(e)
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
        interval = min(interval * 1.5, 0.1)
    raise RedisServerError(f"timed out after {timeout} s waiting for {what} "
                           f"(last: {last})\n{detail()}")


def _str(value):
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _records(reply):
    """SENTINEL replicas/sentinels: a list of flat [key, value, ...] arrays."""
    return [{_str(k): _str(v) for k, v in zip(r[0::2], r[1::2])} for r in reply]


def _healthy(record):
    return not BAD_FLAGS & set(record.get("flags", "").split(","))


class Sentinel(RedisServer):
    """One redis-sentinel child process monitoring `master_name`.

    The RedisServer machinery (free port, start, stop by PID, log) with a
    config file `sentinel.conf` in its directory instead of arguments; the
    file is written at the first start and left to Sentinel after that."""

    def __init__(self, master_name, master_port, quorum=2, password=None, auth_pass=None,
                 tls=None, down_after_ms=1000, failover_timeout_ms=5000,
                 start_timeout=10.0):
        super().__init__(appendfsync=None, password=password, tls=tls,
                         tls_replication=tls is not None, start_timeout=start_timeout)
        self.master_name, self.master_port, self.quorum = master_name, master_port, quorum
        self.auth_pass = auth_pass
        self.down_after_ms, self.failover_timeout_ms = down_after_ms, failover_timeout_ms
        self._conf_port = None

    @property
    def conf(self):
        return self.dir / "sentinel.conf"

    def args(self):
        return [SENTINEL_BIN, str(self.conf)]

    def config_text(self):
        name = self.master_name
        lines = [f"port {self.port}", f"bind {HOST}", "daemonize no",
                 f"dir {self.dir}", 'logfile ""', "loglevel notice"]
        if self.password is not None:
            lines.append(f"requirepass {self.password}")
        if self.tls is not None:
            lines += [f"{k} {v}" for k, v in self.tls.redis_config(self.tls_port,
                                                                   replication=True)]
        lines += [f"sentinel monitor {name} {HOST} {self.master_port} {self.quorum}",
                  f"sentinel down-after-milliseconds {name} {self.down_after_ms}",
                  f"sentinel failover-timeout {name} {self.failover_timeout_ms}",
                  f"sentinel parallel-syncs {name} 1"]
        if self.auth_pass is not None:
            lines.append(f"sentinel auth-pass {name} {self.auth_pass}")
        return "\n".join(lines) + "\n"

    def _spawn(self):
        if self._conf_port != self.port:  # first start, or a retry on a new port
            self.conf.write_text(self.config_text())
            self._conf_port = self.port
        super()._spawn()

    def sentinel(self, *args):
        """SENTINEL <args...> on the kept connection."""
        return self.command("SENTINEL", *args)

    def master_addr(self):
        """(host, port) that this Sentinel names as the master now (None if
        it names none)."""
        reply = self.sentinel("get-master-addr-by-name", self.master_name)
        return None if reply is None else (_str(reply[0]), int(reply[1]))


class SentinelSet:
    """A primary, a replica and `sentinels` Sentinels (quorum `quorum`).

    password           requirepass (and masterauth) on the data servers,
                       `sentinel auth-pass` on the Sentinels
    sentinel_password  requirepass on the Sentinels
    tls                a tls_certs.TlsCerts: TLS as the module docstring says
    down_after_ms, failover_timeout_ms   the Sentinels' settings

    failover-timeout is 5 s rather than the 10 s one might write: a Sentinel
    retries a failover that did not happen (a split vote) only after twice
    that, so 10 s would let one unlucky election take over 20 s; every step
    of a failover here takes well under 5 s.
    """

    def __init__(self, master_name=MASTER_NAME, password=None, sentinel_password=None,
                 tls=None, sentinels=3, quorum=2, down_after_ms=1000,
                 failover_timeout_ms=5000, start_timeout=DISCOVERY_TIMEOUT):
        self.master_name = master_name
        self.password, self.sentinel_password = password, sentinel_password
        self.tls = tls
        self.start_timeout = start_timeout
        self._sentinel_kwargs = dict(quorum=quorum, password=sentinel_password,
                                     auth_pass=password, tls=tls,
                                     down_after_ms=down_after_ms,
                                     failover_timeout_ms=failover_timeout_ms)
        self._sentinel_count = sentinels
        self.servers = []  # the data servers: [first primary, first replica]
        self.sentinels = []
        self._killed_at = {}

    # -- lifecycle ---------------------------------------------------------

    def _data_server(self, replicaof=None):
        extra = ["--repl-diskless-sync-delay", "0"]  # Redis 7 waits 5 s by default
        if self.password is not None:
            extra += ["--masterauth", self.password]  # any of them may become a replica
        server = RedisServer(appendfsync="always", password=self.password, extra=extra,
                             tls=self.tls, tls_replication=self.tls is not None,
                             replicaof=replicaof)
        self.servers.append(server)
        return server.start()

    def start(self):
        """Start everything and wait until Sentinel could fail over.  On an
        error the processes are stopped (directories stay until stop())."""
        try:
            primary = self._data_server()
            replica = self._data_server(replicaof=(HOST, primary.announced_port))
            for _ in range(self._sentinel_count):
                sentinel = Sentinel(self.master_name, primary.announced_port,
                                    **self._sentinel_kwargs)
                self.sentinels.append(sentinel)
                sentinel.start()
            poll(lambda: self._discovered(primary, replica), self.start_timeout,
                 "Sentinels to find the primary, the replica and each other",
                 self.describe)
        except BaseException:
            self._stop_processes()
            raise
        return self

    def _discovered(self, primary, replica):
        if replica.info().get("master_link_status") != "up":
            return False
        for s in self.sentinels:
            if s.master_addr() != (HOST, primary.announced_port):
                return False
            replicas = _records(s.sentinel("replicas", self.master_name))
            if not any(int(r["port"]) == replica.announced_port and _healthy(r)
                       for r in replicas):
                return False
            others = _records(s.sentinel("sentinels", self.master_name))
            if len(others) != len(self.sentinels) - 1 or not all(map(_healthy, others)):
                return False
        return True

    def _stop_processes(self):
        problems = []
        for process in self.sentinels + self.servers:  # Sentinels first: no failover
            problem = process.stop()
            if problem:
                problems.append(f"{process.args()[0]} on port {process.port}: {problem}")
        return problems

    def stop(self, keep=KEEP):
        """Stop every process by PID, then remove the directories (unless
        `keep`).  Returns the list of problems (empty when all exited)."""
        problems = self._stop_processes()
        for process in self.sentinels + self.servers:
            if keep:
                print(f"kept {process.dir}")
            elif process.dir is not None:
                shutil.rmtree(process.dir, ignore_errors=True)
        return problems

    # -- who is where ------------------------------------------------------

    def server_at(self, port):
        """The data server known by `port` (its plain or its TLS port), or None."""
        for server in self.servers:
            if port in (server.port, server.tls_port):
                return server
        return None

    def master_addr(self, sentinel_index=0):
        """(host, port) that Sentinel `sentinel_index` names as the master."""
        return self.sentinels[sentinel_index].master_addr()

    def primary(self):
        """The data server whose ROLE is master now (if two are, after an old
        primary restarted, the one the Sentinels name)."""
        masters = []
        for server in self.servers:
            try:
                if server.running() and server.role() == "master":
                    masters.append(server)
            except (OSError, RedisReplyError):
                pass
        if len(masters) > 1:
            named = self.server_at(self._majority_port())
            masters = [named] if named in masters else []
        if len(masters) != 1:
            raise RedisServerError(f"no single primary:\n{self.describe()}")
        return masters[0]

    def _majority_port(self, exclude=None):
        """The master port that a majority of Sentinels name (not `exclude`)."""
        addrs = []
        for s in self.sentinels:
            try:
                addrs.append(s.master_addr())
            except (OSError, RedisReplyError):
                pass
        counts = collections.Counter(a[1] for a in addrs if a and a[1] != exclude)
        if counts:
            port, votes = counts.most_common(1)[0]
            if votes > len(self.sentinels) // 2:
                return port
        return None

    def url(self, db=None, tls=False, user=None, password=..., sentinel_tls=False):
        """The module's form: redis+sentinel://[user:password@]127.0.0.1:S1,
        127.0.0.1:S2,127.0.0.1:S3/<master_name>[/db]; rediss+sentinel:// with
        tls=True.  password defaults to the data servers' (user "default");
        sentinel_tls=True lists the Sentinels' TLS ports instead."""
        if password is ...:
            password = self.password
        auth = ""
        if password is not None:
            auth = f"{user or 'default'}:{password}@"
        elif user is not None:
            auth = f"{user}@"
        hosts = ",".join(f"{HOST}:{s.tls_port if sentinel_tls else s.port}"
                         for s in self.sentinels)
        scheme = "rediss+sentinel" if tls else "redis+sentinel"
        return (f"{scheme}://{auth}{hosts}/{self.master_name}"
                + (f"/{db}" if db is not None else ""))

    # -- failover ----------------------------------------------------------

    def kill_primary(self):
        """SIGKILL the current primary by PID; returns that RedisServer."""
        server = self.primary()
        server.kill()
        self._killed_at[server.announced_port] = time.monotonic()
        return server

    def wait_failover(self, old_port, timeout=FAILOVER_TIMEOUT):
        """Wait until a majority of Sentinels name a master other than
        `old_port` (plain or TLS port) and that server's ROLE is master.
        Returns (that RedisServer, seconds since kill_primary() killed the
        old one, or since this call)."""
        old = self.server_at(old_port)
        old_port = old.announced_port if old is not None else old_port
        since = self._killed_at.get(old_port, time.monotonic())

        def promoted():
            server = self.server_at(self._majority_port(exclude=old_port))
            if server is not None and server.running() and server.role() == "master":
                return server
            return None

        server = poll(promoted, timeout, f"a failover away from port {old_port}",
                      self.describe)
        seconds = time.monotonic() - since
        self._hold_still()
        return server, seconds

    def _hold_still(self):
        """Once a test's failover is done, Sentinels call a server down after
        10 s: a new primary that stalls a second after its promotion (on a
        loaded machine) would be failed over again, back to the old one."""
        for sentinel in self.sentinels:
            if sentinel.running():
                sentinel.sentinel("SET", self.master_name,
                                  "down-after-milliseconds", "10000")

    def restart_old(self, server, timeout=REJOIN_TIMEOUT):
        """Restart a killed data server (same port, directory and AOF; it comes
        back as a primary) and wait until Sentinel has made it a replica of
        the new primary, in sync.  Returns the seconds that took."""
        since = time.monotonic()
        server.restart()

        def rejoined():
            role = server.command("ROLE")
            return (_str(role[0]) == "slave" and int(role[2]) == self._majority_port()
                    and server.info().get("master_link_status") == "up")

        poll(rejoined, timeout, f"port {server.port} to rejoin as a replica",
             self.describe)
        return time.monotonic() - since

    # -- failure messages --------------------------------------------------

    def describe(self, lines=15):
        """Roles, each Sentinel's view and every log tail, for failure messages."""
        out = []
        for server in self.servers:
            try:
                state = repr(server.command("ROLE"))
            except (OSError, RedisReplyError) as e:
                state = repr(e)
            out.append(f"--- data server {server.port}/{server.tls_port} "
                       f"pid {server.pid} ROLE {state}\n{server.log_tail(lines)}")
        for s in self.sentinels:
            try:
                view = f"master {s.master_addr()}"
            except (OSError, RedisReplyError) as e:
                view = repr(e)
            out.append(f"--- sentinel {s.port}/{s.tls_port} pid {s.pid} {view}\n"
                       f"{s.log_tail(lines)}")
        return "\n".join(out)

    def log(self):
        return self.describe(lines=60)


if pytest is not None:
    @pytest.fixture
    def sentinel_set():
        """Factory: sentinel_set(**kwargs) starts and returns a SentinelSet.

        kwargs are those of SentinelSet.  Every process is stopped by PID and
        every directory removed after the test (kept when NGX_TEST_KEEP=1)."""
        sets = []

        def start(**kwargs):
            s = SentinelSet(**kwargs)
            sets.append(s)
            return s.start()

        yield start

        problems = []
        for s in sets:
            problems += s.stop()
        if problems:
            pytest.fail("\n".join(problems), pytrace=False)
