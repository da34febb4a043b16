"""Reloads without blind spots: while the workers of an old configuration
drain, broadcasts reach every worker of every generation that runs, exactly
once each, in each sender's order; sends and calls cross generations by PID
(the reload bridge, docs/ARCHITECTURE.md §12).

Old workers are kept alive the way real ones are: a held request (the first
test), or a Lua light thread that sleeps until the test lets its generation
go (HOLD, the others), with `worker_shutdown_timeout` longer than any test.

Every broadcast carries a number from the shared counter "seq", taken just
before the broadcast by its sender.  Each worker records the counter's value
right after it attached ("start:<pid>"), so a broadcast whose number is
above it was sent after the worker started; the receivers check each
sender's numbers rise (no duplicate, no reordering) and the test checks that
every broadcast sent after a worker started reached it.
"""

import glob
import json
import os
import socket
import re
import signal
import threading
import time

import pytest

from conftest import start_fails
from harness import Nginx, NginxError, pattern, wait_for
from redis_server import redis_server  # noqa: F401 (the fixture)
from test_cluster import cluster_main, wait_linked
from test_reload import assert_footprint_returns, fd_count, master_footprint, shared_maps

SHUTDOWN = "worker_shutdown_timeout 120s;"

# reloads in the overlap test (make soak: 60, about 120 workers at once)
OVERLAP_RELOADS = int(os.environ.get("NGX_IPC_OVERLAP_RELOADS", "20"))

# Purge and answer: the handlers of the first test.
PURGE = """
    local dict = ngx.shared.results
    ipc.receive("purge", function(data)
        dict:set("purge:" .. ngx.worker.pid(), data .. " from " .. tostring(ipc.sender))
        assert(ipc.send(ipc.sender, "purged", ngx.worker.pid() .. " " .. data))
    end)
    ipc.receive("purged", function(data)
        T.push("acks:" .. ngx.worker.pid(), tostring(ipc.sender) .. " " .. data)
    end)
    ipc.receive("echo", function(data)
        return "echo " .. data .. " by " .. ngx.worker.pid()
    end)
    ipc.receive("probe", function(data)
        T.push("probe:" .. ngx.worker.pid(), tostring(ipc.sender) .. " " .. data)
    end)
    T.set("gen:" .. IPC_GEN .. ":" .. ngx.worker.id(), ngx.worker.pid())
"""

# A request that an old worker holds through the reload: it says its PID,
# waits for a purge, then answers with what it got, every PID it can reach
# and the answer of an ipc.call to the purge's sender (a new worker).
HOLD_LOCATION = """
    location = /hold {
        content_by_lua_block {
            local ipc = require "ngx.ipc"
            local dict = ngx.shared.results
            local pid = ngx.worker.pid()
            ngx.say(pid)
            ngx.flush(true)
            local deadline = ngx.now() + 30
            while not dict:get("purge:" .. pid) and ngx.now() < deadline do
                ngx.sleep(0.01)
            end
            local got = dict:get("purge:" .. pid) or "timeout"
            ngx.say(got)
            local all = {}
            for i, p in ipairs(ipc.pids({ all = true })) do
                all[i] = tostring(p)
            end
            ngx.say(table.concat(all, ","))
            local sender = tonumber(got:match("from (%d+)$"))
            local res, err = ipc.call(sender or 0, "echo", "old->new", 5)
            ngx.say(tostring(res or err))
            ngx.say("dropped ", ipc.stats().dropped)
            ngx.flush(true)
        }
    }
"""


class HeldRequest:
    """A chunked GET held open by the worker that took it; read line by line."""

    def __init__(self, port, path):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        self.f = self.sock.makefile("rb")
        for _ in range(50):
            line = self.f.readline()
            if line in (b"\r\n", b""):
                break
        self.pending = b""

    def line(self):
        for _ in range(100):
            if b"\n" in self.pending:
                out, _, self.pending = self.pending.partition(b"\n")
                return out
            size = int(self.f.readline().strip() or b"0", 16)
            if size == 0:
                raise EOFError("the held request ended")
            self.pending += self.f.read(size)
            self.f.readline()
        raise AssertionError("no line in 100 chunks")

    def close(self):
        self.sock.close()


def gen_init(gen):
    return f"IPC_GEN = {gen}"


def reload(n, gen, workers=None, main=None, timeout=20):
    """SIGHUP with generation `gen`'s configuration; wait for its workers
    (each wait bounded by `timeout` seconds)."""
    if workers is not None:
        n.workers = workers
    if main is not None:
        n.main = main
    n.init = gen_init(gen)
    old = set(n.worker_pids())
    (n.prefix / "conf" / "nginx.conf").write_text(n.config())
    os.kill(n.master_pid, signal.SIGHUP)

    def started():
        try:
            (pids,) = n.lua(f"""
                local out = {{}}
                for i = 0, {n.workers} - 1 do
                    out[#out + 1] = T.get("gen:{gen}:" .. i) or false
                end
                return out
            """)
        except ConnectionResetError:
            return None   # a reuseport socket the reload closed (Broadcaster)
        return pids if all(pids) and set(pids) <= set(n.worker_pids()) else None

    n.pids = wait_for(started, timeout=timeout, what=f"the workers of generation {gen}")
    assert not set(n.pids) & old

    # until an old worker closed its listening socket it may still take a
    # new connection: wait for it to say so (or to have exited)
    def closed():
        log = n.error_log()
        return all(f"{p}#{p}: gracefully shutting down" in log or not live(p)
                   for p in old)

    wait_for(closed, timeout=timeout, what="the old workers to stop listening")
    return old


def status_json(n):
    status, body = n.get("/ipc_status?format=json")
    assert status == 200, body
    return json.loads(body)


def test_held_old_worker_handles_a_purge_from_a_new_one(nginx):
    n = nginx(workers=2, main=SHUTDOWN, init=gen_init(1), init_worker=PURGE,
              locations=HOLD_LOCATION + """
                  location = /ipc_status { ipc_status; }
              """)
    held = HeldRequest(n.port, "/hold")
    try:
        old_pid = int(held.line())
        assert old_pid in n.pids
        sibling = [p for p in n.pids if p != old_pid][0]
        reload(n, 2)
        new = list(n.pids)
        # nothing holds the other old worker: it exits
        wait_for(lambda: not live(sibling), timeout=20, what="the idle old worker to exit")

        # the new workers list the old one as still running, apart
        (pids,) = n.lua("return ipc.pids()")
        assert pids == new
        (everyone,) = wait_for(lambda: (lambda r: r if len(r[0]) == 3 else None)(
                                   n.lua("return ipc.pids({ all = true })")),
                               what="the exited old worker to leave the list")
        assert everyone == new + [old_pid], everyone
        page = status_json(n)
        assert page["config"]["generation"] == 2
        olds = {(w["generation"], w["pid"]) for w in page["other_generations"]}
        assert (1, old_pid) in olds, page["other_generations"]
        status, text = n.get("/ipc_status")
        assert re.search(rb'ngx_ipc_other_generation_worker_pid\{generation="1",'
                         rb'worker="\d"\} %d\n' % old_pid, text), text
        with pytest.raises(Exception, match="table expected"):
            n.lua('return ipc.pids("all")')

        # a new worker calls the old one by PID
        (answer,) = n.lua(f'return ipc.call({old_pid}, "echo", "new->old", 5)')
        assert answer == f"echo new->old by {old_pid}"

        # include_self = false leaves out the caller only, across generations
        assert n.lua('return ipc.broadcast("probe", "not me", '
                     '{ include_self = false })', worker=0) == [True]
        assert n.lua('return ipc.broadcast("probe", "fence")', worker=0) == [True]
        for pid in (old_pid, new[1]):
            assert n.wait_results(f"probe:{pid}", 2) == \
                [b"%d not me" % new[0], b"%d fence" % new[0]], pid
        assert n.wait_results(f"probe:{new[0]}", 1) == [b"%d fence" % new[0]]
        # a message many times the bridge's 16 KiB rings arrives whole
        assert n.lua('return ipc.broadcast("probe", T.pattern(300000, 3))',
                     worker=1) == [True]
        got = n.wait_results(f"probe:{old_pid}", 3)[2]
        assert got == b"%d " % new[1] + pattern(300000, 3)

        # the purge, from a new worker, reaches the held old worker ...
        (ok,) = n.lua('return ipc.broadcast("purge", "key\\00042")', worker=0)
        assert ok is True
        purger = new[0]
        assert held.line() == b"key\x0042 from %d" % purger
        reachable = held.line().decode().split(",")
        assert str(purger) in reachable and str(new[1]) in reachable, reachable
        # ... and the old worker's call to the new one is answered
        assert held.line() == f"echo old->new by {purger}".encode()

        # every worker of both generations answered the purger, once
        acks = n.wait_results(f"acks:{purger}", len(everyone))
        senders = sorted(int(a.split()[0]) for a in acks)
        assert senders == sorted(set(everyone) - {False}), acks
        for a in acks:
            sender, pid, data = a.split(b" ", 2)
            assert sender == pid and data == b"key\x0042", a
    finally:
        held.close()

    # the old worker exits once its request is over: nothing lists it now,
    # and a send to it says so
    wait_for(lambda: n.worker_pids() == sorted(n.pids), timeout=20,
             what="the old workers to exit")
    wait_for(lambda: n.lua("return ipc.pids({ all = true })")[0] == n.pids,
             what="the old PIDs to leave ipc.pids({ all = true })")
    assert n.lua(f'return ipc.send({old_pid}, "purge", "x")') == [None, "no such worker"]
    assert n.lua(f'return ipc.call({sibling}, "echo", "x", 1)') == [None, "no such worker"]
    assert status_json(n)["other_generations"] == []


def test_an_old_worker_drops_what_is_over_its_own_limit(nginx):
    """A newer configuration with a larger ipc_max_message: its bigger
    broadcast is dropped and counted by an old worker with the smaller
    limit (not taken for a corrupt ring), what follows arrives."""
    n = nginx(workers=2, main=SHUTDOWN + "ipc_max_message 1k;", init=gen_init(1),
              init_worker=PURGE, locations=HOLD_LOCATION)
    n.allow_log(r"a message over this worker's ipc_max_message was dropped")
    held = HeldRequest(n.port, "/hold")
    try:
        old_pid = int(held.line())
        reload(n, 2, main=SHUTDOWN + "ipc_max_message 64k;")
        assert n.lua('return ipc.broadcast("probe", T.pattern(20000, 7))',
                     worker=0) == [True]
        assert n.lua('return ipc.broadcast("purge", "after")', worker=0) == [True]
        assert held.line() == b"after from %d" % n.pids[0]
        held.line()                                   # the PIDs
        assert held.line().startswith(b"echo old->new")
        assert held.line() == b"dropped 1"
        for pid in n.pids:                            # the new ones take it
            (got,) = n.wait_results(f"probe:{pid}", 1)
            assert len(got) == len(b"%d " % n.pids[0]) + 20000
        log = n.error_log()
        assert f"{old_pid}#{old_pid}: ngx_ipc: a message over this worker's " \
               "ipc_max_message was dropped" in log, n.log_tail()
        assert "corrupt record" not in log
    finally:
        held.close()


# Every worker: a handler that checks each sender's numbers rise and keeps
# what it got; a light thread that holds the worker until the test lets its
# generation go ("release" >= its generation), broadcasting every 100 ms
# (old workers' broadcasts must reach the new ones too) and writing what it
# got to the shared dict.
HOLD = """
    local dict = ngx.shared.results
    local mypid, gen = ngx.worker.pid(), IPC_GEN
    local got, last, dirty = {}, {}, false
    ipc.receive("b", function(data)
        local seq = tonumber(data)
        local s = ipc.sender
        if last[s] and seq <= last[s] then
            T.push("problems", mypid .. " got " .. seq .. " from " .. s
                   .. " after " .. last[s])
        end
        last[s] = seq
        got[#got + 1] = seq
        dirty = true
    end)
    dict:set("start:" .. mypid, dict:get("seq") or 0)
    dict:set("gen:" .. mypid, gen)
    T.set("gen:" .. gen .. ":" .. ngx.worker.id(), mypid)

    local function flush()
        if dirty then
            dict:set("got:" .. mypid, table.concat(got, ","))
            dirty = false
        end
    end

    local function bcast()
        local seq = dict:incr("seq", 1, 0)
        dict:set("try:" .. seq, mypid)
        local ok, err = ipc.broadcast("b", tostring(seq))
        if ok then
            dict:set("sent:" .. seq, mypid)
        else
            dict:set("fail:" .. seq, mypid .. " " .. tostring(err))
        end
        return seq
    end
    BCAST = bcast

    assert(ngx.timer.at(0, function()
        local deadline = ngx.now() + 100
        local next_bcast = 0
        while (dict:get("release") or 0) < gen and ngx.now() < deadline do
            if dict:get("bcast") and ngx.now() >= next_bcast then
                bcast()
                next_bcast = ngx.now() + 0.1
            end
            flush()
            ngx.sleep(0.02)
        end
        flush()
    end))
"""

BCAST_LOCATION = """
    location = /bcast {
        content_by_lua_block { ngx.say(BCAST()) }
    }
"""

# What the test checks, read in one request: every worker's start, its
# generation and what it got, and every broadcast sent (or refused).
COLLECT = """
    local dict = ngx.shared.results
    local out = { workers = {}, sent = {}, failed = {}, tried = {} }
    for _, key in ipairs(dict:get_keys(0)) do
        local pid = key:match("^start:(%d+)$")
        if pid then
            out.workers[pid] = { start = dict:get(key),
                                 gen = dict:get("gen:" .. pid),
                                 got = dict:get("got:" .. pid) or "" }
        end
        local seq = key:match("^sent:(%d+)$")
        if seq then
            out.sent[#out.sent + 1] = { tonumber(seq), dict:get(key) }
        end
        seq = key:match("^try:(%d+)$")
        if seq then
            out.tried[#out.tried + 1] = tonumber(seq)
        end
        seq = key:match("^fail:(%d+)$")
        if seq then
            out.failed[#out.failed + 1] = dict:get(key)
        end
    end
    return out
"""


class Broadcaster(threading.Thread):
    """The client: broadcasts through HTTP (a new worker sends each one)
    until stopped; bounded in count and time."""

    def __init__(self, n, limit=20000, seconds=120):
        super().__init__(daemon=True)
        self.n, self.limit, self.seconds = n, limit, seconds
        self.stop_event = threading.Event()
        self.count = 0
        self.resets = 0
        self.errors = []

    def run(self):
        deadline = time.monotonic() + self.seconds
        while not self.stop_event.is_set() and self.count < self.limit \
                and time.monotonic() < deadline:
            try:
                status, body = self.n.get("/bcast", timeout=5)
                if status == 200:
                    self.count += 1
                else:
                    self.errors.append((status, body[:200]))
            except ConnectionResetError:
                # a reload that lowers worker_processes closes reuseport
                # sockets, and what waited in their queues is reset (nginx's
                # way, not ngx_ipc's); the checks count what the workers
                # sent, so a lost request loses nothing
                self.resets += 1
            except (OSError, NginxError) as e:
                self.errors.append(repr(e))
            time.sleep(0.002)

    def stop(self):
        self.stop_event.set()
        self.join(30)


def live(pid):
    return os.path.exists(f"/proc/{pid}")


def bridge_sockets(n):
    """{pid: generation} of the names in the reload bridge's directory
    ("<generation>.<pid>"; the test runs as root, or as the workers' user)."""
    out = {}
    for name in os.listdir(n.bridge_dir()):
        gen, pid = name.split(".")
        out[int(pid)] = int(gen)
    return out


def check_delivery(n, killed=()):
    """Every broadcast sent after a (surviving) worker started reached it,
    once, in each sender's order; returns (workers, generations, checked)."""
    problems = n.results("problems")
    assert problems == [], problems[:10]

    def complete():
        data = n.lua(COLLECT)[0]
        for key in ("sent", "failed", "tried"):
            if isinstance(data[key], dict):   # an empty Lua table
                data[key] = list(data[key].values())
        sent = {int(seq): int(pid) for seq, pid in data["sent"]}
        tried = set(data["tried"])
        missing = {}
        for pid, w in data["workers"].items():
            # those killed, and generation 1 of the first test, let go
            # before the broadcasts began (a crash would be in the log)
            if int(pid) in killed or not live(int(pid)):
                continue
            got = [int(x) for x in w["got"].split(",") if x]
            dups = len(got) - len(set(got))
            want = {s for s in sent if s > w["start"]}
            lost = want - set(got)
            extra = set(got) - tried
            if dups or lost or extra:
                missing[pid] = (f"gen {w['gen']}: {len(lost)} lost (e.g. "
                                f"{sorted(lost)[:5]}), {dups} twice, "
                                f"{len(extra)} never sent")
        complete.data, complete.missing = data, missing
        return not missing

    try:
        wait_for(complete, timeout=30, interval=0.2, what="every broadcast")
    except AssertionError:
        raise AssertionError(f"{complete.missing}") from None
    data = complete.data
    assert data["failed"] == [], data["failed"][:10]
    assert n.results("problems") == []
    workers = {pid: w for pid, w in data["workers"].items()
               if int(pid) not in killed and live(int(pid))}
    checked = sum(len([x for x in w["got"].split(",") if x]) for w in workers.values())
    return workers, data, checked


def running_generations(n, workers):
    return sorted({w["gen"] for pid, w in workers.items() if live(int(pid))})


# worker_processes and the ipc_* directives of each reload, in turn
CONFIGS = [
    (2, ""),
    (3, "ipc_ring_size 64k; ipc_busy_poll off;"),
    (1, "ipc_queue_limit 1m; ipc_max_message 1m;"),
    (2, "ipc_ring_size 1m; ipc_busy_poll 20us;"),
]


def test_twenty_reloads_overlapping_generations_hear_every_broadcast(nginx):
    """OVERLAP_RELOADS (20) reloads, every generation held: each broadcast
    of any worker reaches every worker started before it, once, in order."""
    n = nginx(workers=2, main=SHUTDOWN, init=gen_init(1), init_worker=HOLD,
              locations=BCAST_LOCATION)
    master = n.master_pid

    # Baseline: after one reload whose old workers are gone.
    reload(n, 2)
    n.lua('ngx.shared.results:set("release", 1)')
    wait_for(lambda: n.worker_pids() == sorted(n.pids), timeout=20,
             what="generation 1 to exit")
    baseline = master_footprint(n)

    def worker_footprint():
        return [(fd_count(p), len(shared_maps(p))) for p in n.pids]

    # a request's connection may not be closed yet in the worker that took it
    worker_baseline = wait_for(lambda: len(set(worker_footprint())) == 1
                               and worker_footprint(),
                               what="the workers to hold the same fds")

    n.lua('ngx.shared.results:set("bcast", true)')
    client = Broadcaster(n)
    client.start()
    try:
        gen = 2
        for i in range(OVERLAP_RELOADS):
            gen = 3 + i
            # the last one is the baseline's configuration again
            workers, extra = CONFIGS[(i + 1 + (4 - OVERLAP_RELOADS % 4)) % len(CONFIGS)]
            reload(n, gen, workers=workers, main=SHUTDOWN + extra)
            # let a few broadcasts go in this generation
            seq = n.lua('return ngx.shared.results:get("seq") or 0')[0]
            wait_for(lambda: n.lua('return ngx.shared.results:get("seq") or 0')[0] >= seq + 10,
                     what="broadcasts after the reload")
    finally:
        client.stop()
    assert client.errors == [], client.errors[:5]
    assert client.count > 0
    n.lua('ngx.shared.results:set("bcast", false)')

    workers, data, checked = check_delivery(n)
    gens = running_generations(n, workers)
    assert len(gens) >= 3, gens
    assert len(data["sent"]) > 100
    print(f"\n{len(gens)} generations overlapped ({len(workers)} workers, "
          f"{len(data['sent'])} broadcasts, {checked} deliveries checked); "
          f"master before: {baseline}")

    # let every old generation go: fds and mappings back to the baseline
    n.lua(f'ngx.shared.results:set("release", {gen - 1})')
    wait_for(lambda: n.worker_pids() == sorted(n.pids), timeout=30,
             what="the old generations to exit")
    assert n.master_pid == master
    assert_footprint_returns(n, baseline)
    print(f"master after: {master_footprint(n)}")
    # a worker of the last generation (the baseline's configuration again)
    # holds what one of the baseline's held: its fds, one bridge socket
    # among them, and its shared mappings, the bridge among them
    try:
        wait_for(lambda: worker_footprint() == worker_baseline,
                 what="the workers' fds and shared mappings")
    finally:
        print(f"workers (fds, shared maps) before: {worker_baseline}, "
              f"after: {worker_footprint()}")
    wait_for(lambda: n.lua("return ipc.pids({ all = true })")[0] == n.pids,
             what="the old PIDs to leave ipc.pids({ all = true })")
    # the bridge's directory holds the running workers' names, no more: each
    # worker that exited removed its own
    want = {pid: gen for pid in n.pids}
    try:
        wait_for(lambda: bridge_sockets(n) == want,
                 what="the bridge directory to hold the running workers' names")
    finally:
        print(f"bridge directory: {sorted(os.listdir(n.bridge_dir()))}")
    n.lua(f'ngx.shared.results:set("release", {gen})')


def test_kill_an_old_and_a_new_worker_mid_broadcast(nginx):
    n = nginx(workers=2, main=SHUTDOWN, init=gen_init(1), init_worker=HOLD,
              locations=BCAST_LOCATION)
    n.allow_log(r"exited on signal 9", r"shared memory zone .* was locked by")
    n.lua('ngx.shared.results:set("bcast", true)')
    client = Broadcaster(n)
    client.start()
    try:
        old = sorted(reload(n, 2))
        # a third generation, so that the bridge links three at once
        reload(n, 3)
        seq = n.lua('return ngx.shared.results:get("seq") or 0')[0]
        wait_for(lambda: n.lua('return ngx.shared.results:get("seq") or 0')[0] >= seq + 20,
                 what="broadcasts during the overlap")
        victim_old, victim_new = old[0], n.pids[1]
        os.kill(victim_old, signal.SIGKILL)
        os.kill(victim_new, signal.SIGKILL)
        # the master respawns the new one (same worker id, new PID)
        wait_for(lambda: n.lua('return ipc.pids()', worker=0)[0][1]
                 not in (victim_new, False), timeout=20,
                 what="the new worker's respawn")
        seq = n.lua('return ngx.shared.results:get("seq") or 0')[0]
        wait_for(lambda: n.lua('return ngx.shared.results:get("seq") or 0')[0] >= seq + 30,
                 what="broadcasts after the kills")
    finally:
        client.stop()
    n.lua('ngx.shared.results:set("bcast", false)')
    # a request the killed new worker was serving is cut, nothing else
    assert len(client.errors) <= 2 and not any(
        isinstance(e, tuple) for e in client.errors), client.errors[:5]

    workers, data, checked = check_delivery(n, killed={victim_old, victim_new})
    assert len(running_generations(n, workers)) == 3
    # the dead are listed nowhere; every survivor is
    (everyone,) = n.lua("return ipc.pids({ all = true })", worker=0)
    assert victim_old not in everyone and victim_new not in everyone, everyone
    survivors = sorted(int(p) for p in workers if live(int(p)))
    assert sorted(p for p in everyone if p) == survivors
    # nothing wedged: one more broadcast reaches everyone who runs
    n.lua("BCAST()")
    check_delivery(n, killed={victim_old, victim_new})
    # a killed worker's name stays (only its holder removes a name) until
    # the master exits; each survivor holds its own
    assert set(bridge_sockets(n)) == set(survivors) | {victim_old, victim_new}
    n.lua('ngx.shared.results:set("release", 2)')
    n.pids = [p for p in everyone[:2]]
    wait_for(lambda: n.worker_pids() == sorted(n.pids), timeout=30,
             what="the old generations to exit")
    n.lua('ngx.shared.results:set("release", 3)')
    # the master removes what is left, and the directory, when it exits
    directory = n.bridge_dir()
    assert directory.is_dir()
    assert n.stop() is None
    assert not directory.exists(), sorted(os.listdir(directory))


def test_without_a_master_process_nothing_changes(nginx):
    """master_process off: one process, no bridge; a reload keeps it."""
    n = nginx(master_process=False, init=gen_init(1), init_worker=PURGE)
    assert n.lua("return ipc.pids({ all = true })") == [n.pids]
    assert n.lua('return ipc.broadcast("purge", "k")') == [True]
    assert n.wait_results(f"acks:{n.pids[0]}", 1) == [b"%d %d k" % (n.pids[0], n.pids[0])]


CLUSTER_RECORD = """
    ipc.receive("c", function(data)
        T.push("c:" .. ngx.worker.pid(), tostring(ipc.sender_node) .. " " .. data)
    end)
"""


def agent_pid(n):
    """The PID of the last worker that said it became the node's agent."""
    found = re.findall(r"(\d+)#\d+: .*this worker is the agent of node", n.error_log())
    return int(found[-1]) if found else None


@pytest.mark.parametrize("queue", ["", "queue=4m"], ids=["zone-kept", "zone-changed"])
def test_old_workers_hear_other_nodes_once(redis_server, nginx, queue):
    """The cluster agent's deliveries reach the old workers too, once.
    While the ipc_cluster zone is kept, one agent serves every generation;
    a reload that changes it restarts the node's link, and once the old
    agent stopped the new one serves every generation."""
    r = redis_server()
    a = nginx(workers=2, main=SHUTDOWN + cluster_main(r, "a"), init=gen_init(1),
              init_worker=HOLD + CLUSTER_RECORD, locations=BCAST_LOCATION)
    b = nginx(workers=1, main=cluster_main(r, "b"), init=gen_init(1),
              init_worker=CLUSTER_RECORD)
    wait_linked(a, b)
    first = wait_for(lambda: agent_pid(a), what="node a's agent")
    old = sorted(reload(a, 2, main=SHUTDOWN + cluster_main(r, "a", queue)))
    assert first in old
    # the old agent stops (its worker is shutting down), a new one takes over
    wait_for(lambda: re.search(rf"{first}#\d+: .*no longer the agent of node "
                               rf'"a" \(it is shutting down\)', a.error_log()),
             what="the old agent to stop")
    wait_for(lambda: agent_pid(a) in a.pids, what="a new agent")
    wait_linked(a)
    b.lua("""
        for i = 1, 50 do
            assert(ipc.broadcast("c", "x " .. i, { scope = "cluster" }))
        end
        assert(ipc.broadcast("c", "fence", { scope = "cluster" }))
    """)
    want = [b"b x %d" % i for i in range(1, 51)] + [b"b fence"]
    for pid in old + a.pids:
        got = a.wait_results(f"c:{pid}", 51, timeout=20)
        assert got == want, (pid, pid in old, got[:5], len(got))
    assert all(live(p) for p in old)
    # nothing more comes: no second agent delivers the entries again
    b.lua('assert(ipc.broadcast("c", "end", { scope = "cluster" }))')
    for pid in old + a.pids:
        got = a.wait_results(f"c:{pid}", 52, timeout=20)
        assert got == want + [b"b end"], (pid, pid in old, got[51:])
    a.lua('ngx.shared.results:set("release", 2)')
    wait_for(lambda: a.worker_pids() == sorted(a.pids), timeout=30,
             what="the old generation to exit")


# Holds a worker until the test lets its generation go, waking 5 times a
# second only (two generations of 128 workers share two vCPUs).
LINGER = """
    local dict = ngx.shared.results
    assert(ngx.timer.at(0, function()
        local deadline = ngx.now() + 100
        while (dict:get("release") or 0) < IPC_GEN and ngx.now() < deadline do
            ngx.sleep(0.2)
        end
    end))
"""


def test_past_the_bridges_slots_a_worker_says_so_and_keeps_its_own(nginx):
    """The bridge links ipc_bridge_slots running workers at most (2048 by
    default: two generations of nginx's largest worker count; 256 here).
    With two generations of 128 workers running, a third generation's
    workers log a warning and reach their own configuration only; once the
    first generation exits, the next one is linked to the second as
    before. A reload that changes ipc_bridge_slots says it waits for a
    restart."""
    main = SHUTDOWN + "ipc_bridge_slots 256;"
    n = nginx(workers=128, main=main, init=gen_init(1),
              init_worker=PURGE + LINGER, start_timeout=60, stop_timeout=60)
    n.allow_log(r"the reload bridge's 256 slots are all held")
    first = list(n.pids)
    reload(n, 2, main=SHUTDOWN + "ipc_bridge_slots 300;", timeout=60)
    assert '"ipc_bridge_slots 300" takes effect when nginx starts again; ' \
        "the reload bridge keeps its 256 slots" in n.error_log()
    second = list(n.pids)
    (everyone,) = n.lua("return ipc.pids({ all = true })")
    assert sorted(everyone) == sorted(first + second)
    assert len(bridge_sockets(n)) == 256

    reload(n, 3, workers=2, main=main, timeout=60)
    log = n.error_log()
    for pid in n.pids:
        assert f"{pid}#{pid}: ngx_ipc: the reload bridge's 256 slots are all held" in log
    # the new workers reach each other, not the older ones
    assert n.lua("return ipc.pids({ all = true })") == [n.pids]
    assert n.lua(f'return ipc.send({second[0]}, "purge", "x")') == [None, "no such worker"]
    assert n.lua('return ipc.broadcast("probe", "own")', worker=0) == [True]
    for pid in n.pids:
        assert n.wait_results(f"probe:{pid}", 1) == [b"%d own" % n.pids[0]]

    # the first generation exits: its slots are free, generation 4 is
    # linked to the second again
    n.lua('ngx.shared.results:set("release", 1)')
    wait_for(lambda: not any(live(p) for p in first), timeout=60,
             what="the first generation to exit")
    reload(n, 4, workers=2, timeout=60)
    (everyone,) = n.lua("return ipc.pids({ all = true })")
    assert everyone[:2] == n.pids and sorted(everyone[2:]) == sorted(second), everyone[:8]
    assert n.lua('return ipc.broadcast("purge", "again")', worker=0) == [True]
    for pid in (second[5], second[-1]):
        wait_for(lambda: n.lua(f'return ngx.shared.results:get("purge:{pid}")')[0]
                 == f"again from {n.pids[0]}", what="the purge in the second generation")
    n.lua('ngx.shared.results:set("release", 4)')


@pytest.mark.parametrize("value, message", [
    ("1", '"ipc_bridge_slots" must be between 2 and 2048'),
    ("2049", '"ipc_bridge_slots" must be between 2 and 2048'),
    ("many", '"ipc_bridge_slots" directive invalid number'),
])
def test_bad_bridge_slots_refuse_to_start(value, message):
    log = start_fails(main=f"ipc_bridge_slots {value};")
    assert "[emerg]" in log and message in log, log


def test_a_start_that_fails_leaves_no_directory(nginx):
    """A first configuration that nginx gives up after ngx_ipc made the
    bridge (here: an access_log it cannot open) leaves no directory."""
    n = Nginx(workers=1, locations="""
        location = /x { access_log /nonexistent/ngx_ipc/access.log; }
    """)
    try:
        with pytest.raises(NginxError, match="exited with status 1 while starting"):
            n.start()
        assert "/nonexistent/ngx_ipc/access.log" in n.error_log()
        assert glob.glob(f"/tmp/ngx_ipc.{n.master_pid}.*") == []
    finally:
        n.stop()
        n.cleanup()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: workers of two users")
def test_a_reload_that_changes_user_runs_without_the_bridge(nginx):
    """The bridge's directory belongs to the workers' user of the master's
    first configuration. A reload that changes "user" makes workers that
    cannot bind a name there: each says so in one line and reaches its own
    configuration only. A reload back to the first user links again."""
    n = nginx(workers=2, main=SHUTDOWN, init=gen_init(1),
              init_worker=PURGE + LINGER)
    n.allow_log(r"the reload bridge's directory belongs to the user")
    first = list(n.pids)
    reload(n, 2, main=SHUTDOWN + "user daemon daemon;")
    log = n.error_log()
    for pid in n.pids:
        line = [l for l in log.splitlines()
                if f"{pid}#{pid}: ngx_ipc: " in l and "failed" in l]
        assert len(line) == 1 and "[error]" in line[0] and "restarted" in line[0], line
    assert n.lua("return ipc.pids({ all = true })") == [n.pids]
    assert n.lua('return ipc.broadcast("probe", "own")', worker=0) == [True]
    for pid in n.pids:
        assert n.wait_results(f"probe:{pid}", 1) == [b"%d own" % n.pids[0]]

    reload(n, 3, main=SHUTDOWN)
    (everyone,) = n.lua("return ipc.pids({ all = true })")
    assert everyone[:2] == n.pids and sorted(everyone[2:]) == sorted(first), everyone
    n.lua('ngx.shared.results:set("release", 3)')
