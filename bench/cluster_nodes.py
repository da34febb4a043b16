"""The processes of the cluster benchmark (bench/cluster.py): the systems,
each system's Redis, and its three nginx nodes.

Owns: SYSTEMS (what each system runs), Backend (one system's redis-server,
its TLS certificates or its replica), Node (one nginx node rendered from a
template), starting and stopping them, and waiting until they are linked.

Every wait is a bounded poll; every process is started here and stopped by
its PID (nginx: SIGQUIT then SIGKILL, by bench/run.py's Nginx; redis-server:
SIGTERM then SIGKILL, by t/redis_server.py). Temporary directories (nginx
prefixes, Redis's, the certificates') are removed on the way out.
"""

import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "t"))
import harness  # noqa: E402  t/harness.py

import run as bench_run  # noqa: E402  bench/run.py: its Nginx launcher
from redis_server import HOST, RedisReplyError, RedisServer, free_port  # noqa: E402
from tls_certs import make_certs  # noqa: E402

bench_run.MODULE = os.environ.get("NGX_IPC_MODULE", bench_run.MODULE)

NGX_IPC_CONF = os.path.join(HERE, "ngx_ipc", "cluster.conf")
PUBSUB_CONF = os.path.join(HERE, "baselines", "redis_pubsub", "cluster.conf")

# name -> the template and what the system adds to a plain redis:// link
SYSTEMS = {
    "ngx_ipc": {"template": NGX_IPC_CONF},
    "ngx_ipc_secret": {"template": NGX_IPC_CONF, "secret": True},
    "ngx_ipc_tls": {"template": NGX_IPC_CONF, "tls": True},
    "ngx_ipc_replicas": {"template": NGX_IPC_CONF, "replicas": 1},
    "redis_pubsub": {"template": PUBSUB_CONF},
}
ALIASES = {"baseline": "redis_pubsub"}   # --only baseline
NODES = ("A", "B", "C")
WORKERS = 2
LINK_TIMEOUT = 15.0     # s for every node to be linked and pass a probe
REPLICA_TIMEOUT = 15.0  # s for a replica to be in step with its primary
DEADLINE = 120          # s, bound of every bench request on the nginx side
# Redis 7 waits 5 s before a diskless full sync by default
REPLICA_ARGS = ("--repl-diskless-sync-delay", "0")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def poll(predicate, timeout, what):
    """Bounded poll: predicate()'s first true value; RuntimeError on timeout
    (t/harness.py's wait_for raises AssertionError: callers here catch
    RuntimeError, like every other failure of a step)."""
    try:
        return harness.wait_for(predicate, timeout=timeout, what=what)
    except AssertionError as e:
        raise RuntimeError(str(e)) from None


@contextlib.contextmanager
def uninterrupted():
    """SIGTERM and Ctrl-C wait (pending) until the block is done: a cleanup
    is not cut short; the signal then unwinds as usual."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


# ----------------------------------------------------------------- Redis ----

class Backend:
    """One system's Redis: a fresh primary (AOF on, `appendfsync`), over TLS
    too for a `tls` system (its certificates in a directory nginx's workers
    can read: they load lua_ssl_trusted_certificate after dropping to
    nginx's user), with one replica for a `replicas` system."""

    def __init__(self, system, appendfsync):
        self.spec = SYSTEMS[system]
        self.appendfsync = appendfsync
        self.certs_dir = self.certs = self.replica = None
        self.primary = None

    def start(self):
        try:
            extra = REPLICA_ARGS if self.spec.get("replicas") else ()
            if self.spec.get("tls"):
                self.certs_dir = tempfile.mkdtemp(prefix="ngx_ipc_bench_certs_")
                os.chmod(self.certs_dir, 0o755)
                self.certs = make_certs(self.certs_dir)
                os.chmod(self.certs.ca, 0o644)
            self.primary = RedisServer(appendfsync=self.appendfsync, tls=self.certs,
                                       extra=extra)
            self.primary.start()
            if self.spec.get("replicas"):
                self.replica = RedisServer(appendfsync=self.appendfsync, extra=extra,
                                           replicaof=(HOST, self.primary.port))
                self.replica.start()
                self.wait_replica()
        except BaseException:
            self.cleanup()
            raise
        return self

    def wait_replica(self, stream=None):
        """The replica's link to the primary is up (and, given a stream, it
        holds as many entries as the primary): True, or False after
        REPLICA_TIMEOUT."""
        def in_step():
            try:  # a replica loading what the primary sent answers -LOADING
                if self.replica.info().get("master_link_status") != "up":
                    return False
                return stream is None or (self.replica.command("XLEN", stream) ==
                                          self.primary.command("XLEN", stream))
            except (OSError, RedisReplyError):
                return False
        try:
            poll(in_step, REPLICA_TIMEOUT, "the replica in step with the primary")
            return True
        except RuntimeError:
            return False

    def wait_calls(self):
        """How many WAITs the primary has run since it started (replicas=N
        sends one per batch: 0 would mean the setting did nothing)."""
        stats = self.primary.info("commandstats").get("cmdstat_wait", "")
        fields = dict(f.split("=", 1) for f in stats.split(",") if "=" in f)
        return int(fields.get("calls", 0))

    def describe(self):
        p = self.primary
        text = "redis-server %s on %s:%d" % (p.pid, HOST, p.port)
        if p.tls_port:
            text += " (TLS on %d)" % p.tls_port
        if self.replica:
            text += ", replica %s on %d" % (self.replica.pid, self.replica.port)
        return text

    def subs(self):
        """The cluster placeholders this Redis fills in."""
        p, extra, http_extra = self.primary, [], ""
        if self.spec.get("secret"):
            # the key every node shares, in Redis's private directory (read
            # by each master at configuration time)
            key = os.path.join(str(p.dir), "cluster.key")
            with open(key, "w") as f:
                f.write(os.urandom(32).hex() + "\n")
            os.chmod(key, 0o600)
            extra.append("secret=" + key)
        if self.certs:
            extra.append("tls_name=" + self.certs.server_name)
            http_extra = "lua_ssl_trusted_certificate %s;" % self.certs.ca
        if self.spec.get("replicas"):
            extra.append("replicas=%d" % self.spec["replicas"])
        return {"REDIS_HOST": HOST, "REDIS_PORT": p.port,
                "REDIS_URL": p.url(tls=self.certs is not None),
                "EXTRA": " ".join(extra), "HTTP_EXTRA": http_extra}

    def cleanup(self):
        with uninterrupted():
            for server in (self.replica, self.primary):
                if server is not None:
                    problem = server.cleanup()
                    if problem:
                        log("  " + problem)
            if self.certs_dir:
                shutil.rmtree(self.certs_dir, ignore_errors=True)


# ----------------------------------------------------------------- nodes ----

class Node:
    """One nginx node: the template with the cluster placeholders filled in,
    then started by bench/run.py's Nginx (which fills in the rest)."""

    def __init__(self, name, template, subs):
        self.name = name
        self.ngx = bench_run.Nginx(None, WORKERS, free_port())
        rendered = os.path.join(self.ngx.prefix, "cluster.conf.in")
        with open(template) as f:
            text = f.read()
        for key, value in dict(subs, NODE=name).items():
            text = text.replace("@%s@" % key, str(value))
        with open(rendered, "w") as f:
            f.write(text)
        self.ngx.template = rendered

    def start(self):
        self.ngx.start()
        return self

    def stop(self):
        self.ngx.stop()

    def get(self, path, timeout=10):
        code, body = self.ngx.get(path, timeout=timeout)
        if code != 200:
            raise RuntimeError("node %s %s: HTTP %s %s" % (self.name, path, code, body[:300]))
        return body

    def measure(self, path, pid=None):
        """A bench request: its `key value` lines, `error` lines raise.
        With pid, retried on new connections (bounded) until that worker
        takes it: the others answer 409 (bl_cluster.lua)."""
        if pid is not None:
            path += "&pid=%d" % pid
        deadline = time.monotonic() + 30
        for _ in range(400):
            code, body = self.ngx.get(path, timeout=DEADLINE + 30)
            if code != 409 or time.monotonic() > deadline:
                break
        if code != 200:
            raise RuntimeError("node %s %s: HTTP %s %s" % (self.name, path, code, body[:300]))
        vals, err = {}, None
        for line in body.splitlines():
            parts = line.split(None, 1)
            if len(parts) != 2:
                continue
            if parts[0] == "error":
                err = parts[1]
            else:
                vals[parts[0]] = parts[1]
        if err:
            raise RuntimeError("node %s %s: %s" % (self.name, path.split("?")[0], err))
        return vals

    def state(self):
        out = {"hello": {}}
        for line in self.get("/bench/cluster/state", timeout=5).splitlines():
            parts = line.split()
            if len(parts) == 4 and parts[0] == "hello":
                out["hello"].setdefault(parts[1], {})[int(parts[2])] = int(parts[3])
            elif len(parts) >= 2:
                out[parts[0]] = " ".join(parts[1:])
        return out

    def result(self, run):
        """{(worker, origin, publisher): {...}}, {worker: [one-way us]}"""
        recv, lat = {}, {}
        for line in self.get("/bench/cluster/result?run=%d" % run, timeout=10).splitlines():
            parts = line.split()
            if parts[:1] == ["recv"] and len(parts) == 10:
                n, last, dup, jumps, t_first, t_last = (float(x) for x in parts[4:])
                recv[(int(parts[1]), parts[2], int(parts[3]))] = {
                    "n": int(n), "last": int(last), "dup": int(dup), "jumps": int(jumps),
                    "t_first": t_first, "t_last": t_last}
            elif parts[:1] == ["lat"] and len(parts) == 3:
                lat[int(parts[1])] = [float(x) for x in parts[2].split(",") if x]
        return recv, lat


def start_nodes(system, backend, stream):
    subs = dict(backend.subs(), STREAM=stream)
    nodes = []
    try:
        for name in NODES:
            node = Node(name, SYSTEMS[system]["template"], subs)
            nodes.append(node)  # stopped and its prefix removed even if start fails
            node.start()
    except BaseException:
        stop_nodes(nodes)
        raise
    return nodes


def stop_nodes(nodes):
    with uninterrupted():
        for node in nodes:
            try:
                node.stop()
            except Exception as e:  # keep stopping the others
                log("  stopping node %s: %s" % (node.name, e))


def wait_linked(nodes, redis, system):
    """Every node says it is linked, then a probe from A reaches every worker
    of every node (a new probe every second: one sent before a link was
    really reading may be lost)."""
    poll(lambda: all(n.state().get("connected") == "true" for n in nodes),
         LINK_TIMEOUT, "every node to report connected")
    if system == "redis_pubsub":
        poll(lambda: redis.command("PUBSUB", "NUMSUB", "bl_pubsub")[1] == len(nodes) * WORKERS,
             LINK_TIMEOUT, "%d subscribers" % (len(nodes) * WORKERS))
    deadline = time.monotonic() + LINK_TIMEOUT
    for probe in range(1, 100):
        nodes[0].get("/bench/cluster/hello?probe=%d" % probe)
        try:
            poll(lambda: all(len(n.state()["hello"].get(str(probe), {})) == WORKERS
                             for n in nodes), 1.0, "probe")
            return
        except RuntimeError:
            if time.monotonic() > deadline:
                raise RuntimeError("a probe from A did not reach every worker of %s within "
                                   "%.0f s" % ("/".join(NODES), LINK_TIMEOUT))
