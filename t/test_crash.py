"""A worker killed with SIGKILL at any moment (README: "Reloads, crashes and
bad input", and delivery rules 3 and 4).

The master logs "worker process N exited on signal 9" as an alert when a
worker is killed: these tests allow exactly that line.

NGX_IPC_KILLS (default 5) sets how many workers test_random_kills kills.
"""

import os
import random
import signal
import time
from concurrent.futures import ThreadPoolExecutor

from harness import NginxError, child_pids, digest, pattern, wait_for
from ipc_lua import GATED, RECORDERS, stats, wait_received

KILLS = int(os.environ.get("NGX_IPC_KILLS", "5"))

KILLED = r"exited on signal 9"

# Traffic between workers, with every message checked on arrival.
#
# Names carry what the receiver checks: "u:<seq>:<target pid>:<seed>:<size>"
# for unicasts, "b:<seq>:<seed>:<size>" for broadcasts; the data must be
# T.pattern(size, seed) exactly (compared as Lua strings, byte for byte).
# Per sender, sequence numbers must arrive as 1, 2, 3, ...; a respawned
# worker may join a sender's broadcast stream anywhere, then it must go on
# without a gap.  A unicast must be handled by the very process it was sent
# to.  Problems go to the "problems" list; everything else stays in the
# worker's own Lua state (T.state), so that a worker killed while it holds
# the lock of a shared dict cannot wedge the others' handlers.
#
# Workers with id >= 1 run a light thread that sends, every 10 ms, a unicast
# to every worker and a broadcast, of random sizes up to 32 MiB (unicasts)
# and 1 MiB (broadcasts), until T.state.stop.  Worker 0 only receives (and
# does what the test asks).
TRAFFIC = RECORDERS + """
    local S = T.state
    local mypid = ngx.worker.pid()
    S.rx_u, S.rx_b, S.sent_u, S.sent_b = {}, {}, {}, 0
    S.probes = {}
    local respawned = ngx.shared.harness:incr("started:" .. me, 1, 0) > 1

    local patterns = {}
    local function pat(size, seed)
        local key = size .. ":" .. seed
        local p = patterns[key]
        if not p then
            p = T.pattern(size, seed)
            patterns[key] = p
        end
        return p
    end

    local function problem(msg)
        T.push("problems", "worker " .. me .. " (" .. mypid .. "): " .. msg)
    end

    local function check(name, data)
        local sender = ipc.sender
        local kind = name:sub(1, 1)
        local seq, target, seed, size
        if kind == "u" then
            seq, target, seed, size = name:match("^u:(%d+):(%d+):(%d+):(%d+)$")
            if tonumber(target) ~= mypid then
                problem(name .. " from " .. sender .. " handed to the wrong process")
            end
        else
            seq, seed, size = name:match("^b:(%d+):(%d+):(%d+)$")
        end
        if not seq then
            return problem("unexpected message " .. name:sub(1, 100))
        end
        seq, seed, size = tonumber(seq), tonumber(seed), tonumber(size)
        if data ~= pat(size, seed) then
            problem(name .. " from " .. sender .. ": wrong bytes (" .. #data .. ")")
        end
        local rx = kind == "u" and S.rx_u or S.rx_b
        local prev = rx[sender]
        if prev == nil and (kind == "u" or not respawned) then
            prev = 0
        end
        if prev ~= nil and seq ~= prev + 1 then
            problem(name .. " from " .. sender .. " after seq " .. prev)
        end
        rx[sender] = seq
    end
    ipc.default_handler = check

    ipc.receive("probe", function(data)
        S.probes[#S.probes + 1] = data
    end)
    ipc.receive("ping", function(data)
        return "pong " .. mypid .. " " .. data
    end)

    local SIZES = { 0, 1, 100, 4000, 70000, 1048576, 3145745, 33554432 }
    local WEIGHTS = { 20, 20, 20, 15, 10, 6, 5, 4 }   -- percent

    local function random_size(max_index)
        local r, i = math.random(100), 1
        while r > WEIGHTS[i] do
            r = r - WEIGHTS[i]
            i = i + 1
        end
        return SIZES[math.min(i, max_index)]
    end

    local function traffic(premature)
        if premature then
            return
        end
        math.randomseed(mypid)
        for _ = 1, 100000 do
            if S.stop or ngx.worker.exiting() then
                break
            end
            for _, pid in ipairs(ipc.pids()) do
                if pid then
                    local seq = (S.sent_u[pid] or 0) + 1
                    local size, seed = random_size(#SIZES), seq % 4
                    local ok = ipc.send(pid, "u:" .. seq .. ":" .. pid .. ":" .. seed
                                             .. ":" .. size, pat(size, seed))
                    if ok then
                        S.sent_u[pid] = seq
                    end
                end
            end
            local seq = S.sent_b + 1
            local size, seed = random_size(6), seq % 4
            if ipc.broadcast("b:" .. seq .. ":" .. seed .. ":" .. size, pat(size, seed)) then
                S.sent_b = seq
            end
            ngx.sleep(0.01)
        end
        S.stopped = true
    end
    if me >= 1 then
        assert(ngx.timer.at(0, traffic))
    end
"""

STATE = """
    local S = T.state
    return { pid = ngx.worker.pid(), rx_u = S.rx_u, rx_b = S.rx_b,
             sent_u = S.sent_u, sent_b = S.sent_b, stopped = S.stopped,
             probes = S.probes, stats = ipc.stats() }
"""


def worker_state(n, worker):
    (state,) = n.lua(STATE, worker=worker)
    assert state["pid"] == n.pids[worker]
    state.setdefault("stopped", False)
    state.setdefault("probes", [])
    # tables keyed by PIDs come back as JSON objects (string keys); empty
    # ones as []
    for key in ("rx_u", "rx_b", "sent_u"):
        state[key] = {int(k): v for k, v in (state[key] or {}).items()}
    return state


def wait_respawn(n, slot, dead, timeout=10):
    """Wait for the master to replace worker `slot` (PID `dead`); return the
    new PID once it has announced itself."""
    def respawned():
        fresh = set(child_pids(n.master_pid)) - set(n.pids) - {dead}
        if len(fresh) != 1:
            return None
        (pid,) = fresh
        announced = n.lua(f'return ngx.shared.harness:get("worker:{slot}")')[0]
        return pid if announced == pid else None

    pid = wait_for(respawned, timeout=timeout, what=f"a new worker {slot}")
    n.pids[slot] = pid
    return pid


def check_problems(n):
    problems = n.results("problems")
    assert problems == [], problems[:20]


def lua_retry(n, code, worker, attempts=40, timeout=0.5):
    """n.lua() while the master is stopped: connections that the kernel
    hands to the dead worker's listening socket (reuseport) wait until its
    successor runs, so give each attempt a short time and retry."""
    for attempt in range(attempts):
        try:
            return n.lua(code, worker=worker, timeout=timeout)
        except (TimeoutError, NginxError):
            if attempt == attempts - 1:
                raise
    return None


def kill_with_master_stopped(n, slot, probe):
    """SIGKILL worker `slot` while the master is stopped, so that it cannot
    respawn it yet; meanwhile run `probe(dead_pid)`.  Returns the dead PID."""
    dead = n.pids[slot]
    os.kill(n.master_pid, signal.SIGSTOP)
    try:
        os.kill(dead, signal.SIGKILL)
        wait_for(lambda: open(f"/proc/{dead}/stat").read().split(") ")[1][0] == "Z",
                 what=f"worker {dead} to die")
        probe(dead)
    finally:
        os.kill(n.master_pid, signal.SIGCONT)
    return dead


def test_random_kills_during_big_traffic(nginx):
    workers = 3
    n = nginx(workers=workers, init_worker=TRAFFIC, allow_log=[KILLED])
    rng = random.Random(int(os.environ.get("NGX_IPC_SEED", time.time())))
    observer = 0

    # The traffic flows: the observer hears from both senders.
    wait_for(lambda: len(worker_state(n, observer)["rx_b"]) == 2, what="traffic")

    latencies = []
    for kill in range(KILLS):
        slot = 1 + kill % (workers - 1)
        time.sleep(rng.uniform(0.1, 0.8))

        def probe(dead):
            # Addressed to the dead process: accepted (its slot still holds
            # its PID), and its successor must drop it, never handle it.
            assert lua_retry(n, f'return ipc.send({dead}, "u:1:{dead}:0:5", T.pattern(5, 0))',
                             worker=observer) == [True]

        dead = kill_with_master_stopped(n, slot, probe)
        new = wait_respawn(n, slot, dead)

        # The successor receives broadcasts at once.
        started = time.monotonic()
        n.lua(f'assert(ipc.broadcast("probe", "kill {kill}"))', worker=observer)
        wait_for(lambda: f"kill {kill}" in worker_state(n, slot)["probes"],
                 what=f"worker {new} to handle a broadcast")
        latencies.append(time.monotonic() - started)

        # What was addressed to its predecessor is dropped and counted.
        wait_for(lambda: worker_state(n, slot)["stats"]["dropped"] >= 1,
                 what=f"worker {new} to drop its predecessor's messages")

        # Nobody read a corrupt record, and nobody is wedged: every worker
        # goes on handling messages from every live sender.
        before = [worker_state(n, w) for w in range(workers)]
        for worker, state in enumerate(before):
            assert state["stats"]["resets"] == 0, (worker, state["stats"])

        def progress():
            now = [worker_state(n, w) for w in range(workers)]
            return all(now[r]["rx_b"].get(n.pids[s], 0) > before[r]["rx_b"].get(n.pids[s], 0)
                       for r in range(workers) for s in range(1, workers))

        wait_for(progress, what="every worker to handle more broadcasts")
        check_problems(n)

    # Stop the traffic; every message between live processes arrives once.
    for worker in range(1, workers):
        n.lua("T.state.stop = true", worker=worker)
    wait_for(lambda: all(worker_state(n, w)["stopped"] for w in range(1, workers)),
             what="the traffic to stop")
    wait_for(lambda: all(worker_state(n, w)["stats"]["queued_bytes"] == 0
                         for w in range(workers)), what="the backlogs to drain")

    def all_arrived():
        states = [worker_state(n, w) for w in range(workers)]
        missing = []
        for s in states[1:]:
            for r in states:
                sent_u = s["sent_u"].get(r["pid"], 0)
                got_u = r["rx_u"].get(s["pid"], 0)
                if sent_u != got_u:
                    missing.append(f"u {s['pid']}->{r['pid']}: sent {sent_u}, got {got_u}")
                got_b = r["rx_b"].get(s["pid"], 0)
                if s["sent_b"] != got_b:
                    missing.append(f"b {s['pid']}->{r['pid']}: sent {s['sent_b']}, got {got_b}")
        all_arrived.missing = missing
        return not missing

    try:
        wait_for(all_arrived, what="every message between live workers")
    except AssertionError:
        raise AssertionError("; ".join(all_arrived.missing)) from None
    check_problems(n)
    for worker in range(workers):
        counters = stats(n, worker)
        assert counters["resets"] == 0 and counters["handler_errors"] == 0, counters
        for other in range(workers):
            assert n.lua(f'return ipc.call({n.pids[other]}, "ping", "end")', worker=worker) \
                == [f"pong {n.pids[other]} end"]
    assert max(latencies) < 5, latencies
    assert len(n.error_log().split(KILLED)) - 1 == KILLS



SIZE = 200000  # fragmented in a 64 KiB ring


def test_sender_killed_with_a_backlog(nginx):
    """The receiver gets only whole messages, in order, then traffic from the
    sender's successor goes on."""
    n = nginx(workers=2, main="ipc_ring_size 64k; ipc_queue_limit 1m;",
              init_worker=GATED, allow_log=[KILLED])
    sender, receiver = 0, 1
    accepted, err, queued = n.lua(f"""
        local pid = {n.pids[receiver]}
        for i = 1, 1000 do
            local ok, err = ipc.send(pid, "q", T.pattern({SIZE}, i))
            if not ok then
                return i - 1, err, ipc.stats().queued_bytes
            end
        end
    """, worker=sender)
    assert err == "queue full" and queued >= 1 << 20
    # On a busy machine the receiver may not have run during that loop: let
    # it take at least one message whole (the sender flushes as it frees
    # room), or the kill would rightly leave nothing to check.
    wait_for(lambda: stats(n, receiver)["received"] >= 1,
             what="the receiver to take a first whole message")

    dead = n.pids[sender]
    os.kill(dead, signal.SIGKILL)
    new = wait_respawn(n, sender, dead)
    n.lua('T.set("gate", true)')
    assert n.lua(f'return ipc.send({n.pids[receiver]}, "msg", "after")',
                 worker=sender) == [True]
    assert wait_received(n, "msg", receiver, 1) == [(new, b"after")]

    got = [data for _, data in wait_received(n, "q", receiver, 1)]
    # whole messages only, a prefix of what was sent, in order
    assert got == [digest(pattern(SIZE, i)) for i in range(1, len(got) + 1)]
    # usually fewer (the backlog died with the sender), all if it had been
    # flushed before the kill
    assert len(got) <= accepted
    senders = {pid for pid, _ in wait_received(n, "q", receiver, 1)}
    assert senders == {dead}
    counters = stats(n, receiver)
    assert counters["resets"] == 0 and counters["handler_errors"] == 0, counters
    assert counters["dropped"] <= 1, counters  # at most the one cut short

    # and the pair keeps working both ways, with big messages too
    n.lua(f'assert(ipc.send({n.pids[receiver]}, "q", T.pattern({SIZE}, 7)))', worker=sender)
    n.lua(f'assert(ipc.send({new}, "msg", T.pattern(3000000, 9)))', worker=receiver)
    assert wait_received(n, "q", receiver, len(got) + 1)[-1] == (new, digest(pattern(SIZE, 7)))
    assert wait_received(n, "msg", sender, 1) == [(n.pids[receiver], pattern(3000000, 9))]


def test_receiver_killed_mid_message(nginx):
    """A receiver killed while 32 MiB messages stream to it: its successor
    drops the rest (counted), never hands it to a handler, and gets what is
    sent to it afterwards; the sender does not wedge."""
    n = nginx(workers=2, main="ipc_ring_size 64k; ipc_queue_limit 100m;",
              init_worker=RECORDERS + """
        ipc.receive("big", function(data)
            T.push("big", ngx.worker.pid() .. " " .. T.digest(data))
        end)
        ipc.receive("msg", record("msg"))
    """, allow_log=[KILLED])
    sender, receiver = 0, 1
    dead = n.pids[receiver]
    n.lua(f"""
        for i = 0, 2 do
            assert(ipc.send({dead}, "big", T.pattern(32 * 1024 * 1024, i)))
        end
    """, worker=sender)
    # it is streaming: the sender still holds most of it
    assert stats(n, sender)["queued_bytes"] > 0
    os.kill(dead, signal.SIGKILL)
    new = wait_respawn(n, receiver, dead)

    assert n.lua(f'return ipc.send({dead}, "msg", "to the dead")', worker=sender) == \
        [None, "no such worker"]
    n.lua(f'assert(ipc.send({new}, "msg", "to the new"))', worker=sender)
    n.lua('assert(ipc.broadcast("msg", "to all"))', worker=sender)
    assert wait_received(n, "msg", receiver, 2) == \
        [(n.pids[sender], b"to the new"), (n.pids[sender], b"to all")]
    wait_for(lambda: stats(n, sender)["queued_bytes"] == 0, what="the backlog to drain")
    counters = stats(n, receiver)
    assert counters["dropped"] >= 1 and counters["resets"] == 0, counters
    assert counters["received"] == 2, counters  # "to the new" and "to all"
    # only the dead one handled "big" messages, whole and in order
    big = n.results("big")
    assert big == [b"%d %s" % (dead, digest(pattern(32 << 20, i))) for i in range(len(big))]


def test_callee_killed_during_a_call(nginx):
    """ipc.call to a worker that dies before it replies returns "timeout"
    when its timeout expires, not later; then the successor answers."""
    n = nginx(workers=2, init_worker="""
        ipc.receive("slow", function(data)
            ngx.sleep(30)
            return "too late"
        end)
        ipc.receive("ping", function(data) return "pong " .. ngx.worker.pid() end)
    """, allow_log=[KILLED])
    caller, callee = 0, 1
    dead = n.pids[callee]
    code = f'return ipc.call({dead}, "slow", "x", 2)'
    with ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        pending = pool.submit(n.lua, code, worker=caller)
        time.sleep(0.5)
        os.kill(dead, signal.SIGKILL)
        assert pending.result(timeout=10) == [None, "timeout"]
        elapsed = time.monotonic() - started
    assert 1.9 <= elapsed < 4, elapsed
    new = wait_respawn(n, callee, dead)
    assert n.lua(f'return ipc.call({dead}, "ping")', worker=caller) == [None, "no such worker"]
    assert n.lua(f'return ipc.call({new}, "ping")', worker=caller) == [f"pong {new}"]
    counters = stats(n, caller)
    assert counters["call_timeouts"] == 1 and counters["resets"] == 0, counters
