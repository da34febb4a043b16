"""ipc_busy_poll: after a worker moved messages it watches its inbox from the
event loop for a while instead of sleeping on its eventfd.

The directive's values and errors; delivery byte for byte and in order with
polling off, by default and at its maximum; the poll ends (an idle nginx
again uses no CPU); a message that lands as a window ends is still found;
the poll is really on (in a ping-pong no sender writes an eventfd and no
worker sleeps); and workers shutting down while they poll exit promptly.

What a worker does shows in /proc: voluntary context switches (it slept),
CPU ticks, and read/write system calls (the wake-up eventfds are read() and
write(); sockets go through recv()/send(), which are not counted there).
"""

import os
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import start_fails
from harness import assert_idle, cpu_ticks, digest, pattern, wait_for
from ipc_lua import stats

INVALID = 'has an invalid value: use "off" or a time such as "50us" or "1ms"'
AT_MOST = "must be at most 10ms"

# None: the directive left out (the default, 50us)
SETTINGS = ["off", None, "10ms"]


def busy_poll(value):
    return "" if value is None else f"ipc_busy_poll {value};"


def voluntary_switches(pid):
    """How often a process went to sleep (blocked in a system call) so far.
    sched_yield() and preemption count as involuntary switches, not here."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    raise AssertionError(f"no voluntary_ctxt_switches in /proc/{pid}/status")


def syscalls(pid):
    """(read-type, write-type) system calls of a process so far, from
    /proc/<pid>/io."""
    fields = dict(line.split(": ") for line in
                  Path(f"/proc/{pid}/io").read_text().splitlines())
    return int(fields["syscr"]), int(fields["syscw"])


def get(n, key):
    """T.get(key), read through any worker."""
    return n.lua(f'return T.get("{key}")')[0]


# -- the directive -----------------------------------------------------------

# Every worker records the broadcasts it gets: proof that it runs and
# receives with this setting.
HELLO = """
    ipc.receive("hello", function(data)
        T.push("hello:" .. ngx.worker.id(), tostring(ipc.sender) .. " " .. data)
    end)
"""


@pytest.mark.parametrize("value", ["off", "0", "0us", "0ms", "20us", "1ms",
                                   "10ms", "10000us"])
def test_valid_values_start_nginx(nginx, value):
    n = nginx(workers=2, main=f"ipc_busy_poll {value};", init_worker=HELLO)
    for sender in range(2):
        n.lua(f'assert(ipc.broadcast("hello", "from {sender}"))', worker=sender)
    for receiver in range(2):
        got = n.wait_results(f"hello:{receiver}", 2)
        assert sorted(got) == sorted(b"%d from %d" % (n.pids[s], s) for s in range(2))


@pytest.mark.parametrize("value, message", [
    ("abc", INVALID),
    ("-5us", INVALID),
    ("us", INVALID),
    ("1.5ms", INVALID),
    ("OFF", INVALID),
    ("99999999999999999999us", INVALID),  # overflows: no wrap to a small value
    ("11ms", AT_MOST),
    ("20000us", AT_MOST),
    ("10001us", AT_MOST),
    ("1s", AT_MOST),
    ("5", AT_MOST),  # a bare number is seconds, as for every nginx time
    ("100000000000ms", AT_MOST),
])
def test_invalid_values_refuse_to_start(value, message):
    log = start_fails(main=f"ipc_busy_poll {value};")
    assert re.search(r'\[emerg\] .*"ipc_busy_poll" directive '
                     + re.escape(message) + r' in \S+/conf/nginx\.conf:\d+', log), log


def test_duplicate_directive_refuses_to_start():
    log = start_fails(main="ipc_busy_poll 1ms;\nipc_busy_poll 1ms;")
    assert re.search(r'\[emerg\] .*"ipc_busy_poll" directive is duplicate in '
                     r'\S+/conf/nginx\.conf:\d+', log), log


def test_directive_outside_the_main_context_refuses_to_start():
    log = start_fails(http="ipc_busy_poll 1ms;")
    assert '"ipc_busy_poll" directive is not allowed here' in log, log


# -- delivery ----------------------------------------------------------------

# Every worker w pings worker w + 1 (by id); the ping handler answers with a
# pong carrying the same data, the pong handler sends the next ping, PP.n in
# all. Every worker also broadcasts a storm. Each handler records who sent
# what (a digest of the data) under "<kind>:<worker id>", and the time
# (ngx.now()) under "last:<worker id>".
PING_SIZES = [16, 0, 100, 3000, 16, 70000, 5]
STORM_SIZES = [0, 5, 100, 4096, 70000, 1, 20000, 7]

TRAFFIC = """
    local me = ngx.worker.id()
    local PING_SIZES = { %(ping_sizes)s }
    local STORM_SIZES = { %(storm_sizes)s }
    PP = { i = 0, n = 0 }

    -- "<seq>:" then T.pattern(size, seed): one seq, one payload
    function ping_data(i, w)
        return i .. ":" .. T.pattern(PING_SIZES[i %% #PING_SIZES + 1], i + 7 * w)
    end
    function storm_data(i, w)
        return i .. ":" .. T.pattern(STORM_SIZES[i %% #STORM_SIZES + 1], 3 * i + w)
    end

    local function record(kind, data)
        T.push(kind .. ":" .. me, tostring(ipc.sender) .. " " .. T.digest(data))
        T.set("last:" .. me, ngx.now())
    end

    ipc.receive({
        ping = function(data)
            record("ping", data)
            assert(ipc.reply("pong", data))
        end,
        pong = function(data)
            record("pong", data)
            local i = PP.i + 1
            PP.i = i
            if i < PP.n then
                assert(ipc.send(ipc.sender, "ping", ping_data(i, me)))
            else
                T.push("ppdone:" .. me, tostring(i))
            end
        end,
        storm = function(data) record("storm", data) end,
    })
""" % {"ping_sizes": ", ".join(map(str, PING_SIZES)),
       "storm_sizes": ", ".join(map(str, STORM_SIZES))}

# Run in worker w: start its ping-pong chain, then broadcast the storm,
# visiting the event loop every 10 broadcasts so that the chain runs too.
START_TRAFFIC = """
    local me = ngx.worker.id()
    local pids = ipc.pids()
    PP.i, PP.n = 0, %(pings)d
    assert(ipc.send(pids[(me + 1) %% #pids + 1], "ping", ping_data(0, me)))
    for i = 0, %(storm)d - 1 do
        local ok, err = ipc.broadcast("storm", storm_data(i, me))
        if not ok then
            error("storm " .. i .. ": " .. err)
        end
        if i %% 10 == 9 then
            ngx.sleep(0.001)
        end
    end
"""


def ping_data(i, w):
    return b"%d:" % i + pattern(PING_SIZES[i % len(PING_SIZES)], i + 7 * w)


def storm_data(i, w):
    return b"%d:" % i + pattern(STORM_SIZES[i % len(STORM_SIZES)], 3 * i + w)


def run_traffic(n, workers, pings, storm):
    """Every worker's ping-pong chain and storm at once; waits until all is in."""
    code = START_TRAFFIC % {"pings": pings, "storm": storm}
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda w: n.lua(code, worker=w), range(workers)))
    for w in range(workers):
        n.wait_results(f"ppdone:{w}", 1, timeout=20)
        n.wait_results(f"storm:{w}", storm * workers, timeout=20)


def check_traffic(n, workers, pings, storm):
    """Each worker got exactly what was sent to it, byte for byte, in order."""
    pids = n.pids
    for r in range(workers):
        prev, nxt = (r - 1) % workers, (r + 1) % workers
        # the pings of worker r - 1, then the pongs to r's own pings
        assert n.results(f"ping:{r}") == [
            b"%d %s" % (pids[prev], digest(ping_data(i, prev))) for i in range(pings)], \
            f"pings handled by worker {r}"
        assert n.results(f"pong:{r}") == [
            b"%d %s" % (pids[nxt], digest(ping_data(i, r))) for i in range(pings)], \
            f"pongs handled by worker {r}"
        assert n.results(f"ppdone:{r}") == [b"%d" % pings]

        got = n.results(f"storm:{r}")
        assert len(got) == storm * workers, f"worker {r}: duplicates"
        for s in range(workers):
            prefix = b"%d " % pids[s]
            from_s = [item[len(prefix):] for item in got if item.startswith(prefix)]
            assert from_s == [digest(storm_data(i, s)) for i in range(storm)], \
                f"storm from worker {s} to worker {r}"

        counters = stats(n, r)
        assert counters["received"] == 2 * pings + storm * workers, counters
        assert counters["dropped"] == 0 and counters["handler_errors"] == 0, counters
        assert counters["resets"] == 0 and counters["queued_bytes"] == 0, counters


@pytest.mark.parametrize("workers", [2, 4])
@pytest.mark.parametrize("setting", SETTINGS, ids=["off", "default", "10ms"])
def test_delivery_exact_with_busy_polling(nginx, setting, workers):
    n = nginx(workers=workers, main=busy_poll(setting), init_worker=TRAFFIC)
    pings, storm = 300, 150
    run_traffic(n, workers, pings, storm)
    check_traffic(n, workers, pings, storm)


# -- the poll ends -------------------------------------------------------------

@pytest.mark.parametrize("workers", [2, 4])
def test_poll_ends_nginx_idles_after_a_burst(nginx, workers):
    """After the longest poll there is (10ms) and a burst of messages, the
    workers go back to sleep: as idle as test_idle_nginx_uses_no_cpu."""
    n = nginx(workers=workers, main="ipc_busy_poll 10ms;", init_worker=TRAFFIC)
    run_traffic(n, workers, 200, 100)
    # Every poll window (10 ms, extended while the worker sends) has ended
    # long before 0.3 s after the last message was handled.
    last_message = max(get(n, f"last:{w}") for w in range(workers))
    time.sleep(min(0.3, max(0.0, last_message + 0.3 - time.time())))

    # The same bounds as test_idle_nginx_uses_no_cpu: a poll still running
    # would use ~100 ticks a second, and yield thousands of times.
    assert_idle([n.master_pid] + n.pids, "after the burst")
    check_traffic(n, workers, 200, 100)


# -- the end of a window ----------------------------------------------------------

# Worker 0 sends to worker 1, which only receives, at random gaps of 0 to
# 3 windows: many messages land just as a window ends, when the slot is
# armed again. One that lands unseen between the last look and the rearm
# must still be found (or worker 1, which never sends, would sleep forever).
CLOCK = """
    local ffi = require "ffi"
    ffi.cdef[[
        typedef struct { long tv_sec; long tv_nsec; } t_busy_poll_timespec_t;
        int clock_gettime(int clk, t_busy_poll_timespec_t *ts);
    ]]
"""

GAPS = """
    local ffi = require "ffi"
    local ts = ffi.new("t_busy_poll_timespec_t")
    local function now_us()      -- CLOCK_MONOTONIC
        ffi.C.clock_gettime(1, ts)
        return tonumber(ts.tv_sec) * 1e6 + tonumber(ts.tv_nsec) / 1e3
    end
    local pid = ipc.pids()[2]
    math.randomseed(%(seed)d)
    for i = 1, %(count)d do
        assert(ipc.send(pid, "g", tostring(i)))
        local t = now_us() + math.random() * %(max_gap)d
        while now_us() < t do end
    end
"""

COUNT_GAPS = """
    local last = 0
    ipc.receive("g", function(data)
        local i = tonumber(data)
        if i ~= last + 1 then
            T.push("problems", "got " .. data .. " after " .. last)
        end
        last = i
        T.set("g:last", i)
    end)
"""


@pytest.mark.parametrize("setting, window_us", [(None, 50), ("20us", 20)],
                         ids=["default", "20us"])
def test_messages_landing_as_a_window_ends_are_found(nginx, setting, window_us):
    """A receiver that never sends: only the end of its window (rearm) or a
    wake-up can find what came. 12000 messages, none may stay unhandled."""
    n = nginx(workers=2, main=busy_poll(setting), init=CLOCK, init_worker=COUNT_GAPS)
    count = 12000
    n.lua(GAPS % {"seed": 1, "count": count, "max_gap": 3 * window_us}, worker=0,
          timeout=30)

    def all_handled():
        all_handled.last = get(n, "g:last")
        return all_handled.last == count

    try:
        wait_for(all_handled, timeout=3, what=f"message {count}")
    except AssertionError:
        raise AssertionError(f"worker 1 stopped at message {all_handled.last} of "
                             f"{count}: a wake-up was lost") from None
    assert n.results("problems") == []


# -- the poll is on --------------------------------------------------------------

# Worker 0 runs ROUNDS sequential round trips with worker 1 from one request;
# each side checks the sequence numbers.
PINGPONG = """
    PP = { i = 0, n = 0 }
    ipc.receive({
        ping = function(data)
            assert(ipc.reply("pong", data))
        end,
        pong = function(data)
            if tonumber(data) ~= PP.i then
                T.push("problems", "pong " .. data .. ", expected " .. PP.i)
            end
            PP.i = PP.i + 1
            if PP.i < PP.n then
                assert(ipc.send(ipc.sender, "ping", tostring(PP.i)))
            else
                PP.sema:post(1)
            end
        end,
    })
"""

RUN_PINGPONG = """
    PP.i, PP.n, PP.sema = 0, %d, require("ngx.semaphore").new(0)
    assert(ipc.send(ipc.pids()[2], "ping", "0"))
    local ok, err = PP.sema:wait(30)
    return ok, PP.i
"""

ROUNDS = 2000


def pingpong_costs(n):
    """What ROUNDS round trips cost both workers: voluntary context switches,
    read and write system calls (each a list by worker id)."""
    n.lua(RUN_PINGPONG % 10, worker=0)  # warm up: Lua code compiled, paths hot
    switches = [voluntary_switches(pid) for pid in n.pids]
    io = [syscalls(pid) for pid in n.pids]
    t0 = time.monotonic()
    assert n.lua(RUN_PINGPONG % ROUNDS, worker=0, timeout=40) == [True, ROUNDS]
    elapsed = time.monotonic() - t0
    switches = [voluntary_switches(pid) - s for pid, s in zip(n.pids, switches)]
    io = [[now - then for now, then in zip(syscalls(pid), before)]
          for pid, before in zip(n.pids, io)]
    assert n.results("problems") == []
    reads, writes = [r for r, _ in io], [w for _, w in io]
    print(f"{ROUNDS} round trips in {elapsed:.3f} s: voluntary switches "
          f"{switches}, reads {reads}, writes {writes}")
    return switches, reads, writes


def test_busy_poll_spares_wakeups(nginx):
    """With ipc_busy_poll 10ms the answer to each message comes long before
    the window ends: senders skip the eventfd write (the slot is disarmed),
    and neither worker sleeps between messages. The only eventfd writes left
    are the dispatcher's own visits to the event loop (one per 128 handlers)."""
    n = nginx(workers=2, main="ipc_busy_poll 10ms;", init_worker=PINGPONG)
    seen = []
    for _ in range(6):  # polling gives way while other processes want the
        costs = pingpong_costs(n)   # CPUs (the VM's host too): one run of
        if all(sum(c) < ROUNDS // 10 for c in costs):   # 6 with none, asked
            return
        seen.append(costs)
    raise AssertionError("voluntary switches, eventfd reads, writes while "
                         f"polling, in each of 6 runs: {seen}")


def test_busy_poll_off_wakes_per_message(nginx):
    """The control: with polling off every message is an eventfd write by its
    sender and a read by its receiver (~ROUNDS of each per worker; half of
    that asked), which sleeps in epoll_wait() for it unless the message was
    quicker (~ROUNDS per worker when idle, ~2/3 of that seen on a loaded
    VM; a quarter asked)."""
    n = nginx(workers=2, main="ipc_busy_poll off;", init_worker=PINGPONG)
    switches, reads, writes = pingpong_costs(n)
    assert sum(writes) >= ROUNDS, f"eventfd writes without polling: {writes}"
    assert sum(reads) >= ROUNDS, f"eventfd reads without polling: {reads}"
    assert sum(switches) >= ROUNDS // 2, f"voluntary switches without polling: {switches}"


# -- shutdown while polling --------------------------------------------------------

# Each worker sends a counter to the next worker (by id) every millisecond
# until it exits (or while "pause:<gen>" is set, waits), and checks the
# counters it gets: in order, none lost, none from another generation
# (IPC_GEN, set in init_by_lua at each reload).
STREAM = """
    local gen, me = IPC_GEN, ngx.worker.id()
    local dict = ngx.shared.results
    T.set("gen:" .. gen .. ":" .. me, ngx.worker.pid())
    local last = {}
    ipc.receive("t", function(data)
        local g, seq = data:match("^(%d+) (%d+)$")
        local from = tostring(ipc.sender)
        seq = tonumber(seq)
        if tonumber(g) ~= gen or seq ~= (last[from] or 0) + 1 then
            T.push("problems", "gen " .. gen .. " worker " .. me .. " got " .. data
                   .. " after " .. tostring(last[from]))
        end
        last[from] = seq
        dict:set("rx:" .. gen .. ":" .. me, seq)
    end)
    local function stream(premature)
        if premature then
            return
        end
        local seq = 0
        for _ = 1, 100000 do   -- bounded: at least 100 s
            if ngx.worker.exiting() then
                break
            end
            local pids = ipc.pids()
            local target = pids[(me + 1) % #pids + 1]
            if target and not dict:get("pause:" .. gen) then
                local ok, err = ipc.send(target, "t", gen .. " " .. seq + 1)
                if ok then
                    seq = seq + 1
                    dict:set("tx:" .. gen .. ":" .. me, seq)
                elseif err ~= "no such worker" then  -- the target is exiting
                    T.push("problems", "gen " .. gen .. " send: " .. err)
                end
            end
            ngx.sleep(0.001)
        end
    end
    assert(ngx.timer.at(0, stream))
"""


def wait_stream(n, gen, workers, above):
    """Until every worker of generation gen has handled more than above[w]."""
    wait_for(lambda: all((get(n, f"rx:{gen}:{w}") or 0) > above[w] for w in range(workers)),
             what=f"generation {gen} to exchange messages")


def check_polling(n, what):
    """A message every millisecond keeps each worker inside its 10 ms window:
    it does not sleep (it would ~500 times in 0.5 s, once per message).
    Unless other processes want the CPUs (here: this test): then a worker
    stops polling for 100 ms (~100 sleeps); half the messages is asked, in
    one of four windows (a machine shared with other work has quieter ones)."""
    seen = []
    for _ in range(4):  # a window where nothing else wanted the CPUs, of 4
        switches = [voluntary_switches(pid) for pid in n.pids]
        ticks = [cpu_ticks(pid) for pid in n.pids]
        time.sleep(0.5)  # a measured window
        switches = [voluntary_switches(pid) - s for pid, s in zip(n.pids, switches)]
        ticks = [cpu_ticks(pid) - t for pid, t in zip(n.pids, ticks)]
        print(f"{what}: voluntary switches {switches}, CPU ticks {ticks} in 0.5 s")
        if all(s < 250 for s in switches):
            return
        seen.append(switches)
    raise AssertionError(f"{what}: not polling in any of 4 windows: {seen}")


def test_workers_exit_promptly_while_polling(nginx):
    workers = 2
    n = nginx(workers=workers, main="ipc_busy_poll 10ms;", init="IPC_GEN = 1",
              init_worker=STREAM)
    wait_stream(n, 1, workers, above=[50] * workers)
    check_polling(n, "generation 1")

    # Reload (SIGHUP): the old workers get SIGQUIT while they poll.
    old = n.worker_pids()
    n.init = "IPC_GEN = 2"
    (n.prefix / "conf" / "nginx.conf").write_text(n.config())
    hup = time.monotonic()
    os.kill(n.master_pid, signal.SIGHUP)
    wait_for(lambda: not set(old) & set(n.worker_pids()), timeout=3,
             what=f"old workers {old} to exit within 3 s of the HUP")
    print(f"old workers gone {time.monotonic() - hup:.3f} s after the HUP")

    def announced():
        pids = [get(n, f"gen:2:{w}") for w in range(workers)]
        return pids if all(pids) and sorted(pids) == n.worker_pids() else None

    n.pids = wait_for(announced, what="the workers of generation 2")
    wait_stream(n, 2, workers, above=[50] * workers)
    check_polling(n, "generation 2")

    # Paused, generation 2's counters match exactly: each message handled once.
    n.lua('T.set("pause:2", true)')

    def settled():
        tx = [get(n, f"tx:2:{w}") for w in range(workers)]
        rx = [get(n, f"rx:2:{(w + 1) % workers}") for w in range(workers)]
        settled.last = (tx, rx)
        return tx == rx

    try:
        wait_for(settled, what="every message of generation 2")
    except AssertionError:
        raise AssertionError(f"sent, handled: {settled.last}") from None
    assert n.results("problems") == []

    # Streaming again: stop nginx (SIGQUIT) while its workers poll.
    n.lua('T.set("pause:2", nil)')
    wait_stream(n, 2, workers, above=[get(n, f"rx:2:{w}") + 50 for w in range(workers)])
    t0 = time.monotonic()
    assert n.stop(timeout=3) is None
    print(f"nginx stopped {time.monotonic() - t0:.3f} s after SIGQUIT")


# -- other processes want the CPUs -------------------------------------------

HOG = "import time\nt = time.monotonic() + 60\nwhile time.monotonic() < t: pass"


def test_polling_gives_way_to_other_processes(nginx):
    """With every CPU wanted by a busy process, a polling worker that yields
    waits for a whole time slice (ms) to run again, while the eventfd would
    have woken it at once. The poll must notice and give way to push: a
    ping-pong then stays near push's speed (~0.1 ms per round trip here)
    instead of a time slice per round trip (1.5-6 ms, measured before the
    fix). The bound is loose on purpose: 1 ms per round trip on average."""
    import subprocess
    import sys
    n = nginx(workers=2, init_worker=PINGPONG)
    n.lua(RUN_PINGPONG % 10, worker=0)
    hogs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(os.cpu_count())]
    try:
        # running: each has used CPU (a tick is 10 ms)
        wait_for(lambda: all(cpu_ticks(h.pid) >= 2 for h in hogs), timeout=5,
                 what="the CPU hogs to run")
        rounds = 300
        t0 = time.monotonic()
        assert n.lua(RUN_PINGPONG % rounds, worker=0, timeout=40) == [True, rounds]
        per_round = (time.monotonic() - t0) / rounds
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    print(f"{per_round * 1e6:.0f} us per round trip with {len(hogs)} CPU hogs")
    assert per_round < 1e-3, f"{per_round * 1e6:.0f} us per round trip with CPU hogs"
