"""A local user of another uid against the reload bridge (docs/ARCHITECTURE.md
§12, "What holds"): it cannot take the bridge's slots from nginx's workers,
nor reach their sockets, nor make them spend CPU.

The attacker is a child forked by the test that drops to an unused uid and
gid (ATTACKER, no /etc/passwd entry) before it acts, so the tests need root
(and nginx's workers then run as `nobody`).  What the attacker may know, the
test finds for it as root: the names /proc/net/unix lists for this nginx's
workers (abstract "@ngx_ipc/<master>/<nonce>/<k>" in the build before the
private directory, pathnames "<dir>/<generation>.<pid>" since), matched to
the workers' fds.  The attacker records the errno of every attempt; the
tests print the figures (`-s` shows them) before they assert.

Old workers are held through the reload by t/test_reload_bridge.py's HOLD
light thread; the new workers broadcast with its BCAST().
"""

import collections
import errno
import json
import os
import select
import signal
import socket
import time

import pytest

from harness import cpu_ticks, wait_for
from test_reload_bridge import (BCAST_LOCATION, HOLD, SHUTDOWN, check_delivery,
                                gen_init, reload)

ATTACKER = 54321          # uid and gid of no account
REFUSED = {"EACCES", "EPERM"}
FLOOD_SECONDS = 5.0
TICK_MARGIN = 3           # CPU ticks (10 ms) a flood may add to a worker

# sockets the attacker's child keeps bound until the test lets it go
_held = []


def require_root():
    if os.geteuid() != 0:
        pytest.skip("needs root: the attacker is a child that drops to "
                    f"uid {ATTACKER}")


def unix_names(pids):
    """{name: pid} of the unix sockets that processes pids hold bound, as
    /proc/net/unix lists them ("@..." abstract, "/..." pathname)."""
    inodes = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes[link[8:-1]] = pid
    names = {}
    with open("/proc/net/unix") as f:
        for line in f.read().splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 8 and fields[6] in inodes:
                names[fields[7]] = inodes[fields[6]]
    return names


def abstract_names(master):
    """The abstract names of this nginx's bridge that anyone can read in
    /proc/net/unix (the build before the private directory)."""
    prefix = f"@ngx_ipc/{master}/"
    with open("/proc/net/unix") as f:
        return sorted({fields[7] for fields in
                       (line.split() for line in f.read().splitlines()[1:])
                       if len(fields) >= 8 and fields[7].startswith(prefix)})


def targets(n, pids):
    """Every name an attacker could aim at: the abstract names listed for
    this master, and the pathname sockets of the workers pids."""
    found = set(abstract_names(n.master_pid))
    found |= {name for name in unix_names(pids) if name.startswith("/")}
    return sorted(found)


def address(name):
    return "\0" + name[1:] if name.startswith("@") else name


class Attacker:
    """action(*args) run in a forked child once it dropped to uid and gid
    ATTACKER; its JSON result comes back through a pipe.  The child then
    keeps what it holds (_held) until stop(), or `linger` seconds."""

    def __init__(self, action, *args, linger=60):
        results_r, results_w = os.pipe()
        release_r, release_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            try:
                os.close(results_r)
                os.close(release_w)
                os.setgroups([])
                os.setgid(ATTACKER)
                os.setuid(ATTACKER)
                payload = {"result": action(*args)}
            except BaseException as e:  # the child reports, never raises
                payload = {"error": f"{type(e).__name__}: {e}"}
            try:
                data = json.dumps(payload).encode()
                while data:
                    data = data[os.write(results_w, data):]
                os.close(results_w)
                select.select([release_r], [], [], linger)
            finally:
                os._exit(0)
        os.close(results_w)
        os.close(release_r)
        self._results, self._release = results_r, release_w

    def result(self, timeout=30):
        deadline = time.monotonic() + timeout
        data = b""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"the attacker said nothing in {timeout} s")
            ready, _, _ = select.select([self._results], [], [], left)
            if ready:
                chunk = os.read(self._results, 65536)
                if not chunk:
                    break
                data += chunk
        os.close(self._results)
        payload = json.loads(data)
        if "error" in payload:
            raise AssertionError(f"the attacker failed: {payload['error']}")
        return payload["result"]

    def stop(self):
        os.close(self._release)
        for _ in range(100):
            pid, _ = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return
            time.sleep(0.05)
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)


def attempt(tally, kind, call):
    """Runs call(), counting "ok" or the errno's name under kind."""
    try:
        call()
        tally[kind]["ok"] += 1
        return True
    except OSError as e:
        tally[kind][errno.errorcode.get(e.errno, str(e.errno))] += 1
        return False


def squat(master, nonce, paths):
    """In the attacker: everything it can do to the bridge's names."""
    tally = collections.defaultdict(collections.Counter)
    if nonce is not None:
        # the old build: bind every slot's abstract name, and keep them
        for k in range(256):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            if attempt(tally, "abstract bind", lambda: s.bind(f"\0ngx_ipc/{master}/{nonce}/{k}")):
                _held.append(s)
            else:
                s.close()
    for path in paths:
        directory = os.path.dirname(path)
        base = os.path.basename(path)
        gen, pid = base.split(".")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            # the name the next generation's worker with this PID would use
            attempt(tally, "bind in the directory",
                    lambda: s.bind(f"{directory}/{int(gen) + 1}.{pid}"))
        attempt(tally, "create a file in the directory",
                lambda: os.close(os.open(f"{directory}/squat", os.O_CREAT | os.O_WRONLY)))
        attempt(tally, "list the directory", lambda: os.listdir(directory))
        attempt(tally, "unlink a name", lambda: os.unlink(path))
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            attempt(tally, "connect", lambda: s.connect(path))
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            attempt(tally, "sendto", lambda: s.sendto(b"", path))
    return {kind: dict(counts) for kind, counts in tally.items()}


def flood(names, seconds, limit=50_000_000):
    """In the attacker: empty datagrams to every name, round robin, as fast
    as it can for `seconds` (and at most `limit`)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.setblocking(False)
    sent, errors = 0, collections.Counter()
    addresses = [address(name) for name in names]
    deadline = time.monotonic() + seconds
    count = 0
    while addresses and count < limit and time.monotonic() < deadline:
        for a in addresses:
            try:
                s.sendto(b"", a)
                sent += 1
            except OSError as e:
                errors[errno.errorcode.get(e.errno, str(e.errno))] += 1
        count += len(addresses)
    s.close()
    return {"sent": sent, "errors": dict(errors)}


def received(n, pid):
    """The broadcast numbers worker pid handled, in order (HOLD's "got")."""
    (got,) = n.lua(f'return ngx.shared.results:get("got:{pid}") or ""')
    return [int(x) for x in got.split(",") if x]


def test_a_local_user_cannot_take_the_bridges_slots(nginx):
    """The attacker binds what it can before a reload (every old-style
    abstract name it can work out; a name in the workers' directory) and
    tries the workers' sockets. After the reload the new workers hold
    slots, the held old ones hear every broadcast of a new one, in order,
    and the attacker got EACCES for everything it tried."""
    require_root()
    n = nginx(workers=2, main=SHUTDOWN, init=gen_init(1), init_worker=HOLD,
              locations=BCAST_LOCATION)
    old = list(n.pids)
    master = n.master_pid
    listed = abstract_names(master)
    nonce = listed[0].split("/")[2] if listed else None
    paths = [name for name in unix_names(old) if name.startswith("/")]

    attacker = Attacker(squat, master, nonce, paths)
    try:
        tries = attacker.result()
        reload(n, 2)
        new = list(n.pids)
        sent = n.lua("""
            local s = {}
            for i = 1, 20 do s[i] = BCAST() end
            return s
        """, worker=0)[0]
        got = {}

        def everything():
            got.update({pid: received(n, pid) for pid in old})
            return all(set(sent) <= set(g) for g in got.values())

        try:
            wait_for(everything, timeout=10, what="the broadcasts in the old workers")
        except AssertionError:
            pass                                     # the figures say what came
        (everyone,) = n.lua("return ipc.pids({ all = true })", worker=0)
        log = n.error_log()
        held = "slots are all held" in log
        print(f"\nsquat: listed abstract names {len(listed)}, pathname sockets "
              f"{len(paths)}; attacker: {tries}")
        print(f"squat: {len(sent)} broadcasts from new worker {new[0]}; the held "
              f"old workers got " + ", ".join(
                  f"{pid}: {len([s for s in g if s in sent])}" for pid, g in got.items())
              + f"; ipc.pids({{ all = true }}) = {everyone}; "
              f"\"slots are all held\" logged: {held}")

        assert not held, [l for l in log.splitlines() if "slots are all held" in l]
        for pid in old:
            assert [s for s in got[pid] if s in sent] == sent, (pid, got[pid])
        assert n.results("problems") == []
        assert everyone[:2] == new and sorted(everyone[2:]) == sorted(old), everyone
        attempts = {kind: c for kind, c in tries.items() if kind != "abstract bind"}
        assert paths and attempts, "no pathname socket found to attack"
        for kind, counts in attempts.items():
            assert set(counts) <= REFUSED, (kind, counts)
    finally:
        attacker.stop()
        n.lua('ngx.shared.results:set("release", 2)')


def test_a_flood_from_a_local_user_costs_the_workers_nothing(nginx):
    """While two generations run, the attacker sends empty datagrams as
    fast as it can for FLOOD_SECONDS to every name it can find. Each
    worker's CPU over the flood stays within TICK_MARGIN of an equal quiet
    window before it (both with the same broadcasts going on), and every
    broadcast sent meanwhile, across generations too, arrives."""
    require_root()
    n = nginx(workers=2, main=SHUTDOWN, init=gen_init(1), init_worker=HOLD,
              locations=BCAST_LOCATION)
    old = reload(n, 2)
    workers = sorted(old) + n.pids
    names = targets(n, workers)

    def window(attack):
        """CPU ticks per worker over FLOOD_SECONDS of broadcasts (every
        worker broadcasts every 100 ms), with the attacker's flood or not."""
        seq = n.lua('ngx.shared.results:set("bcast", true) '
                    'return ngx.shared.results:get("seq") or 0')[0]
        # the broadcasts are under way in every worker
        wait_for(lambda: n.lua('return ngx.shared.results:get("seq") or 0')[0]
                 >= seq + 2 * len(workers), what="broadcasts")
        before = {pid: cpu_ticks(pid) for pid in workers}
        attacker = Attacker(flood, names, FLOOD_SECONDS) if attack else None
        try:
            # the measured window itself, not a wait for a condition
            time.sleep(FLOOD_SECONDS)
            ticks = {pid: cpu_ticks(pid) - before[pid] for pid in workers}
            figures = attacker.result(timeout=FLOOD_SECONDS + 30) if attack else None
        finally:
            if attacker is not None:
                attacker.stop()
            n.lua('ngx.shared.results:set("bcast", false)')
        return ticks, figures

    try:
        quiet, _ = window(attack=False)
        flooded, figures = window(attack=True)
        print(f"\nflood: {len(names)} names {names}; attacker: {figures}")
        print(f"flood: CPU ticks per worker over {FLOOD_SECONDS:g} s, quiet "
              f"{quiet}, flood {flooded}")

        workers_seen, data, checked = check_delivery(n)
        assert set(workers) <= {int(p) for p in workers_seen}
        print(f"flood: {len(data['sent'])} broadcasts, {checked} deliveries "
              f"checked, none lost")
        for pid in workers:
            assert flooded[pid] <= quiet[pid] + TICK_MARGIN, (pid, quiet, flooded)
        paths = [name for name in names if name.startswith("/")]
        assert paths, "no pathname socket found to flood"
        assert figures["sent"] == 0 and set(figures["errors"]) <= REFUSED, figures
    finally:
        n.lua('ngx.shared.results:set("release", 2)')
