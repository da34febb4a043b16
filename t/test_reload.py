"""Delivery rule 8 of the README: reload (SIGHUP) under a steady stream of messages.

Every worker runs TRAFFIC: a light thread that every few ms broadcasts a
counter and sends another counter to the next worker (by id), and handlers
that check each message on arrival.  Messages carry the configuration
generation (the global IPC_GEN, which the test writes into init_by_lua and
bumps at each reload), so the test tells the generations apart.  The handlers check, per (sender, kind),
that sequence numbers arrive as 1, 2, 3, ... (no loss, no duplicate, no
reordering while both ends live); a broadcast of another generation (the
reload bridge, t/test_reload_bridge.py tests it in depth) arrives in order
from the first one heard, and no unicast crosses generations; at the end
the last generation's counters must match exactly.

NGX_IPC_RELOADS (default 10) sets how many reloads the main test does.
"""

import os
import signal
import time

import pytest

from harness import digest, pattern, wait_for
from ipc_lua import RECORDERS, stats, wait_received

RELOADS = int(os.environ.get("NGX_IPC_RELOADS", "10"))

# Seconds an old worker goes on sending after it sees ngx.worker.exiting().
EXIT_TAIL = 0.3

# Every worker announces itself under its generation: reload() waits for it.
ANNOUNCE = """
    T.set("gen:" .. IPC_GEN .. ":" .. ngx.worker.id(), ngx.worker.pid())
"""

TRAFFIC = ANNOUNCE + RECORDERS + """
    local gen, mypid = IPC_GEN, ngx.worker.pid()
    local dict = ngx.shared.results

    local last = {}   -- "<kind> <sender>" -> last sequence number handled
    local function check(kind)
        return function(data)
            local g, seq = data:match("^(%d+) (%d+)$")
            g, seq = tonumber(g), tonumber(seq)
            local key = kind .. " " .. tostring(ipc.sender)
            if g ~= gen then
                -- another generation's broadcast (the reload bridge): from
                -- the first one heard on, in order; a unicast never crosses
                if kind == "u" then
                    dict:incr("crossgen", 1, 0)
                    T.push("problems", "gen " .. gen .. " got " .. data)
                end
                local prev = last[key] or seq - 1
                if seq ~= prev + 1 then
                    dict:incr("bad_seq", 1, 0)
                    T.push("problems", "gen " .. gen .. " worker " .. me .. ": "
                           .. key .. " seq " .. seq .. " after " .. prev
                           .. " (from gen " .. g .. ")")
                end
                last[key] = seq
                dict:incr("rx_other:" .. gen, 1, 0)
                return
            end
            local prev = last[key] or 0
            if seq ~= prev + 1 then
                dict:incr("bad_seq", 1, 0)
                T.push("problems", "gen " .. gen .. " worker " .. me .. ": " .. key
                       .. " seq " .. seq .. " after " .. prev)
            end
            last[key] = seq
            dict:set("rx:" .. gen .. ":" .. me .. ":" .. key, seq)
            dict:set("rxtime:" .. gen .. ":" .. me, ngx.now())
            if ngx.worker.exiting() then
                dict:incr("rx_exiting:" .. gen, 1, 0)
            end
        end
    end
    ipc.receive({ u = check("u"), b = check("b") })

    local function traffic(premature)
        if premature then
            return
        end
        local bseq, useq, exit_at = 0, {}, nil
        for _ = 1, 100000 do   -- bounded: 100000 * 4 ms
            if dict:get("stop") then
                break
            end
            if ngx.worker.exiting() then
                exit_at = exit_at or ngx.now()
                if ngx.now() - exit_at > EXIT_TAIL then
                    break
                end
                dict:incr("tx_exiting:" .. gen, 1, 0)
            end

            local ok, err = ipc.broadcast("b", gen .. " " .. bseq + 1)
            if ok then
                bseq = bseq + 1
                dict:set("bsent:" .. gen .. ":" .. mypid, bseq)
            else
                dict:incr("refused:" .. gen .. ":" .. err, 1, 0)
            end

            local pids = ipc.pids()
            local target = pids[(me + 1) % #pids + 1]
            if target then
                local s = (useq[target] or 0) + 1
                ok, err = ipc.send(target, "u", gen .. " " .. s)
                if ok then
                    useq[target] = s
                    dict:set("usent:" .. gen .. ":" .. mypid .. ":" .. target, s)
                elseif not (exit_at and err == "no such worker") then
                    dict:incr("refused:" .. gen .. ":" .. err, 1, 0)
                end
            end
            ngx.sleep(0.004)
        end
    end
    assert(ngx.timer.at(0, traffic))
""".replace("EXIT_TAIL", str(EXIT_TAIL))


def is_nginx(pid):
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read().startswith(b"nginx")
    except OSError:
        return False


def gen_init(gen):
    return f"IPC_GEN = {gen}"


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def maps(pid):
    return open(f"/proc/{pid}/maps").read().splitlines()


def shared_maps(pid):
    """Anonymous shared mappings and SysV / anon_inode entries of a process."""
    return [line for line in maps(pid)
            if "/dev/zero" in line or "SYSV" in line or "anon_inode" in line]


def eventfd_count(pid):
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:[eventfd]"
        except OSError:
            pass
    return count


def master_footprint(n):
    pid = n.master_pid
    shared = shared_maps(pid)
    size = 0
    for line in shared:
        start, end = line.split()[0].split("-")
        size += int(end, 16) - int(start, 16)
    return {"fds": fd_count(pid), "eventfds": eventfd_count(pid),
            "maps": len(maps(pid)), "shared maps": len(shared),
            "shared bytes": size}


# The master's private anonymous mappings (its Lua VM is made anew at each
# reload) may land so that two of them merge or not: the line count wobbles
# by one from reload to reload.  Everything else must be exactly the same.
MAPS_SLACK = 2


def same_footprint(now, baseline):
    return (abs(now["maps"] - baseline["maps"]) <= MAPS_SLACK
            and {k: v for k, v in now.items() if k != "maps"}
            == {k: v for k, v in baseline.items() if k != "maps"})


def assert_footprint_returns(n, baseline, timeout=10):
    """The master's footprint comes back to baseline within timeout. A
    worker leaves the live children as it exits, but the master closes its
    channel only when its main loop reaps it, a moment later (under load,
    several): so a bounded wait, not one look. A leak never comes back."""
    seen = []

    def back():
        seen[:] = [master_footprint(n)]
        return same_footprint(seen[0], baseline)

    try:
        wait_for(back, timeout=timeout, what="the master's footprint")
    except AssertionError:
        raise AssertionError(f"master: {seen[0]}, baseline: {baseline}") from None


def gen_pids(n, gen, workers):
    """PIDs the workers of generation `gen` announced, by id; None if not all."""
    (pids,) = n.lua(f"""
        local out = {{}}
        for i = 0, {workers} - 1 do
            out[#out + 1] = T.get("gen:{gen}:" .. i) or false
        end
        return out
    """)
    if not all(pids):
        return None
    return pids


def reload(n, gen, workers=None, main=None):
    """Rewrite nginx.conf for generation `gen` (and new settings), send SIGHUP
    to the master, wait until every worker of the new generation runs.
    Returns (the time the HUP was sent, the previous worker PIDs)."""
    old = set(n.worker_pids())
    if workers is not None:
        n.workers = workers
    if main is not None:
        n.main = main
    n.init = gen_init(gen)
    (n.prefix / "conf" / "nginx.conf").write_text(n.config())
    hup = time.time()
    os.kill(n.master_pid, signal.SIGHUP)

    def started():
        pids = gen_pids(n, gen, n.workers)
        return pids if pids and set(pids) <= set(n.worker_pids()) else None

    n.pids = wait_for(started, what=f"the workers of generation {gen}")
    assert not set(n.pids) & old
    return hup, old


def wait_old_workers_gone(n, timeout=10):
    """Bounded wait until the master's only children are the current workers."""
    wait_for(lambda: n.worker_pids() == sorted(n.pids), timeout=timeout,
             what=f"old workers to exit (running {n.worker_pids()}, "
                  f"current {sorted(n.pids)})")


def get(n, key):
    return n.lua(f'return T.get("{key}")')[0]


def stop_traffic_and_check(n, gen):
    """Stop the stream; the last generation's counters must match exactly:
    every broadcast of every worker handled once by every worker, every
    unicast once by its target."""
    n.lua('T.set("stop", true)')
    # Give the light threads time to see the flag: their counters settle.
    wait_for(lambda: n.lua(f"""
        local before = {{}}
        for _, pid in ipairs({{ {", ".join(map(str, n.pids))} }}) do
            before[#before + 1] = T.get("bsent:{gen}:" .. pid) or 0
        end
        ngx.sleep(0.05)
        for i, pid in ipairs({{ {", ".join(map(str, n.pids))} }}) do
            if (T.get("bsent:{gen}:" .. pid) or 0) ~= before[i] then
                return false
            end
        end
        return true
    """)[0], what="the traffic to stop")

    def counters_match():
        (mismatch,) = n.lua(f"""
            local pids = {{ {", ".join(map(str, n.pids))} }}
            local out = {{}}
            for r = 0, #pids - 1 do
                for s = 0, #pids - 1 do
                    local spid = pids[s + 1]
                    local sent = T.get("bsent:{gen}:" .. spid) or 0
                    local got = T.get("rx:{gen}:" .. r .. ":b " .. spid) or 0
                    if sent == 0 or got ~= sent then
                        out[#out + 1] = "b " .. s .. "->" .. r .. ": sent "
                                        .. sent .. " handled " .. got
                    end
                end
                local spid = pids[(r - 1) % #pids + 1]
                local sent = T.get("usent:{gen}:" .. spid .. ":" .. pids[r + 1]) or 0
                local got = T.get("rx:{gen}:" .. r .. ":u " .. spid) or 0
                if sent == 0 or got ~= sent then
                    out[#out + 1] = "u -> " .. r .. ": sent " .. sent .. " handled " .. got
                end
            end
            return table.concat(out, "; ")
        """)
        counters_match.last = mismatch
        return mismatch == ""

    try:
        wait_for(counters_match, what="every message of the last generation")
    except AssertionError:
        raise AssertionError(f"generation {gen}: {counters_match.last}") from None


def check_no_problems(n):
    problems = n.results("problems")
    assert problems == [], problems[:20]
    assert get(n, "crossgen") is None
    assert get(n, "bad_seq") is None


def check_workers_healthy(n):
    """Each current worker answers HTTP and none saw a corrupt record."""
    for worker in range(n.workers):
        counters = stats(n, worker)
        assert counters["resets"] == 0, (worker, counters)
        assert counters["handler_errors"] == 0, (worker, counters)


def broadcast_reaches_everyone_once(n, tag):
    """A broadcast from each current worker reaches each current worker,
    once (a second one as a fence)."""
    for sender in range(n.workers):
        n.lua(f"""
            assert(ipc.broadcast("probe", "{tag} from {sender}"))
            assert(ipc.broadcast("probe", "{tag} fence {sender}"))
        """, worker=sender)
    for receiver in range(n.workers):
        got = wait_received(n, f"probe-{tag}", receiver, 2 * n.workers)
        for sender in range(n.workers):
            own = [data for pid, data in got if pid == n.pids[sender]]
            assert own == [b"%s from %d" % (tag.encode(), sender),
                           b"%s fence %d" % (tag.encode(), sender)], (receiver, sender, got)


PROBE = """
    ipc.receive("probe", function(data)
        T.push("probe-" .. data:match("^(%S+)") .. ":" .. me,
               tostring(ipc.sender) .. " " .. data)
    end)
"""


def test_many_reloads_under_traffic(nginx):
    workers = 2
    n = nginx(workers=workers, init=gen_init(1), init_worker=TRAFFIC + PROBE)
    master = n.master_pid
    wait_for(lambda: get(n, "bsent:1:%d" % n.pids[0]), what="traffic to flow")

    hups, old_pids = {}, set()

    def reload_after_some_traffic(gen):
        # Let the previous generation exchange a little before it ends.
        prev = gen - 1
        wait_for(lambda: get(n, f"rxtime:{prev}:0") and get(n, f"rxtime:{prev}:1"),
                 what=f"generation {prev} to exchange messages")
        hups[prev], old = reload(n, gen)
        old_pids.update(old)

    # The master keeps a channel (socketpair) per old worker until it exits:
    # compare footprints when only the current workers run.  The first
    # reload may allocate things once: the baseline is taken after it.
    reload_after_some_traffic(2)
    wait_old_workers_gone(n)
    baseline = master_footprint(n)
    gen = 2
    for gen in range(3, RELOADS + 2):
        reload_after_some_traffic(gen)   # the old ones may not have exited yet
    wait_old_workers_gone(n, timeout=10 + EXIT_TAIL * RELOADS)
    assert n.proc.poll() is None and n.master_pid == master
    assert len(old_pids) == RELOADS * workers
    assert not [pid for pid in old_pids if is_nginx(pid)], "old workers still run"
    assert_footprint_returns(n, baseline)

    # The old generations kept talking after the HUP that ended them.
    late = []
    for g, hup in hups.items():
        last_rx = max(get(n, f"rxtime:{g}:{w}") or 0 for w in range(workers))
        if last_rx <= hup:
            late.append((g, last_rx - hup))
    assert not late, f"generations with no message handled after their HUP: {late}"

    stop_traffic_and_check(n, gen)
    check_no_problems(n)
    refused = n.lua("""
        local out = {}
        for _, key in ipairs(ngx.shared.results:get_keys(0)) do
            if key:find("^refused:") then
                out[key] = ngx.shared.results:get(key)
            end
        end
        return out
    """)[0]
    assert not refused, refused
    check_workers_healthy(n)
    broadcast_reaches_everyone_once(n, "final")


def test_old_workers_keep_receiving_while_shutting_down(nginx):
    """Rule 8: workers of the old configuration keep exchanging messages
    among themselves until they exit.  Each old worker here stays alive for
    EXIT_TAIL s after the HUP, sending to the other one: messages sent while
    both are still alive must be handled, not only those in flight at the
    HUP."""
    n = nginx(workers=2, init=gen_init(1), init_worker=TRAFFIC)
    wait_for(lambda: get(n, "rxtime:1:0") and get(n, "rxtime:1:1"),
             what="traffic to flow")
    reload(n, 2)
    wait_old_workers_gone(n)
    sent_exiting = get(n, "tx_exiting:1") or 0
    handled_exiting = get(n, "rx_exiting:1") or 0
    # Both old workers sent ~3 messages every 4 ms for EXIT_TAIL s while
    # shutting down; most of them must have been handled.
    assert sent_exiting > 20, sent_exiting
    assert handled_exiting >= sent_exiting, \
        (f"old workers sent {sent_exiting} rounds while shutting down but "
         f"handled only {handled_exiting} messages")
    stop_traffic_and_check(n, 2)
    check_no_problems(n)


def test_worker_count_changes_across_reloads(nginx):
    n = nginx(workers=2, init=gen_init(1), init_worker=TRAFFIC + PROBE)
    broadcast_reaches_everyone_once(n, "g1")
    master = n.master_pid
    for gen, workers in [(2, 4), (3, 1), (4, 3), (5, 2)]:
        reload(n, gen, workers=workers)
        wait_old_workers_gone(n)
        assert n.master_pid == master
        for worker in range(workers):
            assert n.lua("return ipc.pids()", worker=worker) == [n.pids]
        broadcast_reaches_everyone_once(n, f"g{gen}")
        # unicast between every pair, itself included
        for sender in range(workers):
            n.lua(f"""
                for _, pid in ipairs(ipc.pids()) do
                    assert(ipc.send(pid, "probe", "u{gen} from {sender}"))
                end
            """, worker=sender)
        for receiver in range(workers):
            got = wait_received(n, f"probe-u{gen}", receiver, workers)
            assert sorted(got) == sorted(
                (n.pids[s], b"u%d from %d" % (gen, s)) for s in range(workers))
        check_workers_healthy(n)
    stop_traffic_and_check(n, 5)
    check_no_problems(n)


def test_ipc_directives_change_across_reloads(nginx):
    """ipc_ring_size and ipc_max_message take effect on reload, and
    messaging works after each."""
    settings = [
        ("ipc_ring_size 64k; ipc_max_message 1m;", 64 << 10, 1 << 20),
        ("ipc_ring_size 1m; ipc_max_message 3m;", 1 << 20, 3 << 20),
        ("ipc_ring_size 4k; ipc_max_message 100k;", 4 << 10, 100 << 10),
        ("", 8 << 20, 64 << 20),  # the defaults for 2 workers
    ]
    n = nginx(workers=2, init=gen_init(1), main=settings[0][0],
              init_worker=ANNOUNCE + RECORDERS + PROBE + """
                  ipc.receive("big", record_digest("big"))
              """)
    for gen, (main, ring, max_message) in enumerate(settings, 1):
        if gen > 1:
            reload(n, gen, main=main)
            wait_old_workers_gone(n)
        lines = [line for line in n.error_log().splitlines()
                 if "ngx_ipc: 2 worker slots" in line]
        assert len(lines) == gen and f"inbox {ring} bytes each" in lines[-1], lines

        # the "message too large" threshold is the new ipc_max_message
        assert n.lua(f"""
            local pid = ipc.pids()[2]
            local a, a_err = ipc.send(pid, "big", T.pattern({max_message + 1}, 1))
            local b, b_err = ipc.broadcast("big", T.pattern({max_message + 1}, 1))
            return a, a_err, b, b_err, ipc.send(pid, "big", T.pattern({max_message}, {gen}))
        """, worker=0) == [None, "message too large", None, "message too large", True]
        assert wait_received(n, "big", 1, gen)[-1] == \
            (n.pids[0], digest(pattern(max_message, gen)))
        broadcast_reaches_everyone_once(n, f"g{gen}")
        check_workers_healthy(n)


@pytest.mark.parametrize("bad", [
    ("ipc_ring_size 1k;", None, r'"ipc_ring_size" must be at least'),
    ("", 1025, r"ngx_ipc supports at most 1024 worker processes, not 1025"),
], ids=["ring-too-small", "1025-workers"])
def test_refused_reload_keeps_nginx_and_its_workers(nginx, bad):
    """A reload whose configuration ngx_ipc refuses is an error message: the
    master and the running workers carry on, messaging included, and a
    later good reload works."""
    main, workers, message = bad
    n = nginx(workers=2, init=gen_init(1), init_worker=TRAFFIC + PROBE,
              allow_log=[message])
    master, pids = n.master_pid, list(n.pids)
    wait_for(lambda: get(n, "rxtime:1:0") and get(n, "rxtime:1:1"), what="traffic")
    before = master_footprint(n)

    n.main, n.init = main, gen_init(2)
    if workers is not None:
        n.workers = workers
    (n.prefix / "conf" / "nginx.conf").write_text(n.config())
    os.kill(master, signal.SIGHUP)
    wait_for(lambda: message in n.error_log() or n.proc.poll() is not None,
             what="the reload to be refused")
    time.sleep(0.3)  # the master would have exited or started workers by now
    assert n.proc.poll() is None, f"the master exited with status {n.proc.returncode}"
    assert n.worker_pids() == sorted(pids)
    assert get(n, "gen:2:0") is None

    # generation 1 goes on exchanging messages
    seen = get(n, "rx:1:1:b %d" % pids[0])
    wait_for(lambda: get(n, "rx:1:1:b %d" % pids[0]) > seen, what="more messages")
    assert same_footprint(master_footprint(n), before), (master_footprint(n), before)

    n.main, n.workers = "", 2
    reload(n, 2)
    wait_old_workers_gone(n)
    stop_traffic_and_check(n, 2)
    check_no_problems(n)
    broadcast_reaches_everyone_once(n, "after")
