"""ipc.call: request/reply between workers (README: API, `call`).

Responses, the runtime errors ("timeout", "no such worker", "no handler",
"handler error: ...", "would deadlock"), where call may run, argument errors,
many concurrent calls, and the counters (calls, call_timeouts, dropped,
handler_errors).
"""

import os
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from harness import LuaError, digest, lua_quote, pattern, wait_for
from ipc_lua import stats

# Handlers every test gets, in every worker.
HANDLERS = """
    local me = ngx.worker.id()
    ipc.receive({
        echo = function(data) return data end,
        -- returns the value the Lua expression `data` evaluates to
        value = function(data) return assert(loadstring("return " .. data))() end,
        nothing = function() end,
        two = function() return "first", "second" end,
        big = function(data) return T.pattern(tonumber(data), 5) end,
        digest = function(data) return T.digest(data) end,
        boom = function(data) error("boom: " .. data) end,
        boom_table = function() error({}) end,
        table = function() return {} end,
        -- sleeps `data` seconds, then answers
        slow = function(data)
            ngx.sleep(tonumber(data))
            T.push("slow-done:" .. me, data)
            return "late " .. data
        end,
        -- calls `data` = "<pid> <name> <payload>" from inside a handler
        relay = function(data)
            local pid, name, payload = data:match("^(%d+) (%S+) (.*)$")
            local res, err = ipc.call(tonumber(pid), name, payload, 3)
            return res and ("relayed " .. res) or ("error " .. tostring(err))
        end,
        -- a call to this very worker, from inside its handler
        self_call = function(data)
            local res, err = ipc.call(ngx.worker.pid(), "echo", data, 1)
            return tostring(res) .. "|" .. tostring(err)
        end,
        -- the same, from a coroutine the handler resumes and waits for
        self_call_in_coroutine = function(data)
            local co = coroutine.wrap(function()
                return ipc.call(ngx.worker.pid(), "echo", data, 1)
            end)
            local res, err = co()
            return tostring(res) .. "|" .. tostring(err)
        end,
    })
"""


def dead_pid():
    """The PID of a process that has exited and been reaped."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def timed_call(pid, name, data, timeout=None):
    """Lua chunk: call, and return res, err, elapsed seconds."""
    args = f"{pid}, {name!r}, {data}" + (f", {timeout}" if timeout is not None else "")
    return f"""
        ngx.update_time()
        local t0 = ngx.now()
        local res, err = ipc.call({args})
        ngx.update_time()
        return res, err, ngx.now() - t0
    """


# -- responses ---------------------------------------------------------------

@pytest.mark.parametrize("workers", [2, 4])
def test_string_responses_are_byte_exact(nginx, workers):
    n = nginx(workers=workers, init_worker=HANDLERS)
    nul = b"\0a\0\0b\xff\x00\x80" + bytes(range(256)) + b"\0"
    for caller in range(workers):
        for callee in range(workers):
            pid = n.pids[callee]
            got = n.lua(f"""
                local a = ipc.call({pid}, "echo", {lua_quote(nul)})
                local b = ipc.call({pid}, "echo", "")
                local c = ipc.call({pid}, "echo", "plain")
                return a, b, c
            """, worker=caller)
            assert [v.encode("latin-1") for v in got] == [nul, b"", b"plain"], \
                (caller, callee)


@pytest.mark.parametrize("workers", [2, 4])
def test_big_responses_and_requests(nginx, workers):
    n = nginx(workers=workers, init_worker=HANDLERS)
    callee = workers - 1
    pid = n.pids[callee]
    mib = 1 << 20
    # a 1 MiB response; then a 4 MiB request echoed back (bigger than a ring)
    got = n.lua(f"""
        local a, a_err = ipc.call({pid}, "big", {mib})
        local b, b_err = ipc.call({pid}, "echo", T.pattern({4 * mib}, 9))
        local c, c_err = ipc.call({pid}, "digest", T.pattern({mib} + 3, 1))
        return a and T.digest(a), a_err, b and T.digest(b), b_err, c, c_err
    """, worker=0)
    assert got == [digest(pattern(mib, 5)).decode(), None,
                   digest(pattern(4 * mib, 9)).decode(), None,
                   digest(pattern(mib + 3, 1)).decode(), None]


@pytest.mark.parametrize("workers", [2, 4])
def test_number_nil_and_first_value_responses(nginx, workers):
    n = nginx(workers=workers, init_worker=HANDLERS)
    pid = n.pids[workers - 1]
    got = n.lua(f"""
        local out = {{}}
        local function c(name, data) out[#out + 1] = ipc.call({pid}, name, data) end
        c("value", "42")
        c("value", "-7")
        c("value", "1.5")
        c("value", "0.1")
        c("value", "1e300")
        c("value", "2^53")
        c("value", "nil")
        c("nothing", "x")
        c("two", "x")
        c("value", '"s\\0s"')
        -- number and nil data go as their string form and ""
        out[#out + 1] = ipc.call({pid}, "echo", 42)
        out[#out + 1] = ipc.call({pid}, "echo", -0.25)
        out[#out + 1] = ipc.call({pid}, "echo", nil)
        out[#out + 1] = ipc.call({pid}, "echo")
        return out, tostring(2^53)
    """, worker=0)
    values, big = got  # big: LuaJIT's string form of 2^53, "9.007199254741e+15"
    assert values == ["42", "-7", "1.5", "0.1", "1e+300", big, "", "",
                      "first", "s\0s", "42", "-0.25", "", ""]


@pytest.mark.parametrize("workers", [2, 4])
def test_call_to_own_worker_from_a_request(nginx, workers):
    n = nginx(workers=workers, init_worker=HANDLERS)
    for worker in range(workers):
        assert n.lua('return ipc.call(ngx.worker.pid(), "echo", "me " .. ngx.worker.id())',
                     worker=worker) == [f"me {worker}"]


@pytest.mark.parametrize("workers", [2, 4])
def test_call_from_a_handler_to_another_worker(nginx, workers):
    n = nginx(workers=workers, init_worker=HANDLERS)
    # worker 0 asks worker 1 to relay a call to every worker (itself
    # included: that one is "would deadlock"); the relayed call's reply
    # reaches worker 1 while its handler waits for it.
    for target in range(workers):
        expected = ("error would deadlock" if target == 1 else
                    f"relayed hop {target}")
        assert n.lua(f"""
            return ipc.call({n.pids[1]}, "relay", "{n.pids[target]} echo hop {target}")
        """, worker=0) == [expected], target


def test_call_from_a_timer(nginx):
    n = nginx(workers=2, init_worker=HANDLERS)
    n.lua(f"""
        assert(ngx.timer.at(0, function()
            local res, err = ipc.call({n.pids[1]}, "echo", "from a timer")
            T.push("timer", tostring(res) .. "|" .. tostring(err))
        end))
    """, worker=0)
    assert n.wait_results("timer", 1) == [b"from a timer|nil"]


# -- runtime errors ----------------------------------------------------------

@pytest.mark.parametrize("workers", [2, 4])
def test_no_such_worker(nginx, workers):
    n = nginx(workers=workers, init_worker=HANDLERS)
    for pid in [4194305, os.getpid(), dead_pid(), n.master_pid, 1, 0, -3, 1.5]:
        assert n.lua(timed_call(pid, "echo", '"x"', 2), worker=0)[:2] == \
            [None, "no such worker"], pid
    counters = stats(n, 0)
    assert counters["calls"] == 0 and counters["sent"] == 0, counters
    assert counters["call_timeouts"] == 0


@pytest.mark.parametrize("workers", [2, 4])
def test_no_handler(nginx, workers):
    n = nginx(workers=workers, init_worker=HANDLERS)
    pid = n.pids[workers - 1]
    assert n.lua(f'return ipc.call({pid}, "nobody", "x")', worker=0) == [None, "no handler"]
    # a handler removed is no handler either
    n.lua('ipc.receive("echo", nil)', worker=workers - 1)
    assert n.lua(f'return ipc.call({pid}, "echo", "x")', worker=0) == [None, "no handler"]
    assert n.lua(f'return ipc.call({n.pids[0]}, "echo", "x")', worker=0) == ["x"]
    assert stats(n, workers - 1)["handler_errors"] == 0


@pytest.mark.parametrize("workers", [2, 4])
def test_handler_error_is_returned_counted_and_logged(nginx, workers):
    n = nginx(workers=workers, init_worker=HANDLERS,
              allow_log=[r'\[error\].*ngx_ipc: handler for message "(boom|boom_table|table)" failed'])
    caller, callee = 0, workers - 1
    pid = n.pids[callee]
    before = stats(n, callee)
    res, err = n.lua(f'return ipc.call({pid}, "boom", "kaput 17")', worker=caller)
    assert res is None
    assert err.startswith("handler error: ") and err.endswith("boom: kaput 17"), err
    # error() with a non-string value, and a response that is no string
    res, err = n.lua(f'return ipc.call({pid}, "boom_table", "")', worker=caller)
    assert (res, err) == (None, "handler error: (error object is a table value)"), err
    res, err = n.lua(f'return ipc.call({pid}, "table", "")', worker=caller)
    assert res is None and err.startswith("handler error: "), err

    after = stats(n, callee)
    assert after["handler_errors"] == before["handler_errors"] + 3
    assert stats(n, caller)["handler_errors"] == (3 if caller == callee else 0)
    # the callee goes on answering
    assert n.lua(f'return ipc.call({pid}, "echo", "still here")', worker=caller) == ["still here"]

    lines = wait_for(lambda: [line for line in n.error_log().splitlines()
                              if "[error]" in line and "kaput 17" in line],
                     what="the handler error in the log")
    assert len(lines) == 1
    assert f"{pid}#" in lines[0]
    assert 'ngx_ipc: handler for message "boom" failed' in lines[0]


@pytest.mark.parametrize("workers", [2, 4])
def test_would_deadlock_only_for_own_worker(nginx, workers):
    n = nginx(workers=workers, init_worker=HANDLERS)
    for callee in range(workers):
        for caller in range(workers):
            res, err, elapsed = n.lua(timed_call(n.pids[callee], "self_call", '"d"'),
                                      worker=caller)
            assert (res, err) == ("nil|would deadlock", None), (caller, callee)
            assert elapsed < 0.5  # refused at once, not after the 1 s timeout


def test_would_deadlock_from_a_coroutine_inside_the_handler(nginx):
    """The handler waits for its coroutine: a call from there to the same
    worker can never be answered, exactly like one from the handler itself."""
    n = nginx(workers=2, init_worker=HANDLERS)
    res, err, elapsed = n.lua(timed_call(n.pids[1], "self_call_in_coroutine", '"d"', 3),
                              worker=0)
    assert (res, err) == ("nil|would deadlock", None), (res, err, elapsed)
    assert elapsed < 0.5


# -- timeouts and late replies -----------------------------------------------

@pytest.mark.parametrize("timeout", [0.3, 1.0])
def test_timeout_is_accurate(nginx, timeout):
    n = nginx(workers=2, init_worker=HANDLERS)
    res, err, elapsed = n.lua(timed_call(n.pids[1], "slow", timeout + 0.4, timeout),
                              worker=0)
    assert (res, err) == (None, "timeout")
    assert timeout * 0.8 <= elapsed <= timeout * 1.2, elapsed
    # let the late reply come in before nginx stops
    wait_for(lambda: stats(n, 0)["dropped"] == 1, what="the late reply")


@pytest.mark.parametrize("workers", [2, 4])
def test_late_reply_is_dropped_and_counted(nginx, workers):
    n = nginx(workers=workers, init_worker=HANDLERS)
    caller, callee = 0, workers - 1
    pid = n.pids[callee]
    assert n.lua(f'return ipc.call({pid}, "echo", "warm")', worker=caller) == ["warm"]
    before = stats(n, caller)
    assert before["calls"] == 1 and before["call_timeouts"] == 0 and before["dropped"] == 0

    assert n.lua(timed_call(pid, "slow", 0.8, 0.2), worker=caller)[:2] == [None, "timeout"]
    now = stats(n, caller)
    assert now["calls"] == 2 and now["call_timeouts"] == 1
    assert now["dropped"] == 0  # the handler still sleeps: no reply yet

    n.wait_results(f"slow-done:{callee}", 1)
    wait_for(lambda: stats(n, caller)["dropped"] == 1, what="the late reply dropped")
    # the late reply is not taken for the answer to a later call
    assert n.lua(f'return ipc.call({pid}, "echo", "next")', worker=caller) == ["next"]
    after = stats(n, caller)
    assert after["dropped"] == 1
    assert after["calls"] == 3 and after["call_timeouts"] == 1
    callee_stats = stats(n, callee)
    assert callee_stats["handler_errors"] == 0
    if callee != caller:
        assert callee_stats["dropped"] == 0 and callee_stats["calls"] == 0


def test_call_queued_behind_a_busy_handler_times_out(nginx):
    """The timeout counts from the call, even while the callee is busy with
    another message; the request is handled later and its reply dropped."""
    n = nginx(workers=2, init_worker=HANDLERS)
    pid = n.pids[1]
    assert n.lua(f'return ipc.send({pid}, "slow", "0.6")', worker=0) == [True]
    res, err, elapsed = n.lua(timed_call(pid, "echo", '"queued"', 0.3), worker=0)
    assert (res, err) == (None, "timeout")
    assert 0.24 <= elapsed <= 0.36
    wait_for(lambda: stats(n, 0)["dropped"] == 1, what="the late reply dropped")
    assert n.lua(f'return ipc.call({pid}, "echo", "after")', worker=0) == ["after"]
    assert stats(n, 0)["call_timeouts"] == 1


# -- where call may run ------------------------------------------------------

def push_call_error(phase):
    return f"""
        local ok, err = pcall(require("ngx.ipc").call, ngx.worker.pid(), "echo", "x")
        require("harness").push("phase", "{phase} " .. tostring(ok) .. " " .. tostring(err))
    """


NOT_YIELDABLE = f"""
    location = /header_filter {{
        header_filter_by_lua_block {{ {push_call_error("header_filter")} }}
        content_by_lua_block {{ ngx.say("ok") }}
    }}
    location = /body_filter {{
        body_filter_by_lua_block {{
            if ngx.arg[2] then {push_call_error("body_filter")} end
        }}
        content_by_lua_block {{ ngx.say("ok") }}
    }}
    location = /log {{
        log_by_lua_block {{ {push_call_error("log")} }}
        content_by_lua_block {{ ngx.say("ok") }}
    }}
    location = /set {{
        set_by_lua_block $unused {{ {push_call_error("set")} return "" }}
        content_by_lua_block {{ ngx.say("ok") }}
    }}
"""


def test_call_where_it_cannot_yield_raises(nginx):
    n = nginx(workers=2, init_worker=HANDLERS + """
        if ngx.worker.id() == 0 then
    """ + push_call_error("init_worker") + """
        end
    """, init=push_call_error("init"), locations=NOT_YIELDABLE)
    for path in ("/header_filter", "/body_filter", "/log", "/set"):
        # no worker=K here: a 409 from another worker would run these phases too
        assert n.get(path) == (200, b"ok\n")
    got = n.wait_results("phase", 6)
    assert len(got) == 6
    by_phase = dict(item.decode().split(" ", 1) for item in got)
    assert sorted(by_phase) == sorted(["init", "init_worker", "header_filter",
                                       "body_filter", "log", "set"])
    for phase, outcome in by_phase.items():
        assert outcome.startswith("false "), (phase, outcome)
        assert "ipc.call" in outcome and re.search(rf"\b{phase}\b", outcome), \
            (phase, outcome)
    # nothing was sent
    for worker in range(2):
        counters = stats(n, worker)
        assert counters["sent"] == 0 and counters["calls"] == 0, counters


# -- argument errors ---------------------------------------------------------

BAD_ARGUMENTS = [
    ('ipc.call("abc", "echo", "x")', "bad argument #1 to 'call' (number expected, got string)"),
    ('ipc.call(nil, "echo", "x")', "bad argument #1 to 'call' (number expected, got nil)"),
    ('ipc.call(PID, {}, "x")', "bad argument #2 to 'call' (string expected, got table)"),
    ('ipc.call(PID, nil, "x")', "bad argument #2 to 'call' (string expected, got nil)"),
    ('ipc.call(PID, "", "x")', "bad argument #2 to 'call' (non-empty string expected)"),
    ('ipc.call(PID, "echo", {})', "bad argument #3 to 'call' (string expected, got table)"),
    ('ipc.call(PID, "echo", true)', "bad argument #3 to 'call' (string expected, got boolean)"),
    ('ipc.call(PID, "echo", "x", "1")', "bad argument #4 to 'call' (number expected, got string)"),
    ('ipc.call(PID, "echo", "x", {})', "bad argument #4 to 'call' (number expected, got table)"),
    ('ipc.call(PID, "echo", "x", 0)', "bad argument #4 to 'call' (positive number expected)"),
    ('ipc.call(PID, "echo", "x", -1)', "bad argument #4 to 'call' (positive number expected)"),
    ('ipc.call(PID, "echo", "x", -math.huge)', "bad argument #4 to 'call' (positive number expected)"),
]


def test_bad_arguments_raise(nginx):
    n = nginx(workers=2, init_worker=HANDLERS)
    wrong = []
    for statement, expected in BAD_ARGUMENTS:
        code = statement.replace("PID", str(n.pids[1]))
        try:
            n.lua(code, worker=0)
            wrong.append(f"{code}: no error")
        except LuaError as e:
            if str(e) != "eval:1: " + expected:
                wrong.append(f"{code}: {str(e)!r}")
    assert not wrong, "\n".join(wrong)
    counters = stats(n, 0)
    assert counters["sent"] == 0 and counters["calls"] == 0, counters


def test_nan_timeout_raises(nginx):
    """NaN is no positive number: a programmer error, not a call that is sent
    and then reported as timed out."""
    n = nginx(workers=2, init_worker=HANDLERS)
    with pytest.raises(LuaError) as e:
        n.lua(f'ipc.call({n.pids[1]}, "echo", "x", 0/0)', worker=0)
    assert str(e.value) == "eval:1: bad argument #4 to 'call' (positive number expected)"
    assert stats(n, 0)["sent"] == 0


@pytest.mark.parametrize("timeout", ["math.huge", "1e7"])
def test_huge_timeout_waits_for_the_reply(nginx, timeout):
    """A timeout too long to matter (math.huge, 115 days) waits for the reply
    like any other; it is never an immediate "timeout" (a refusal with a
    bad-argument error would be acceptable too)."""
    n = nginx(workers=2, init_worker=HANDLERS)
    try:
        got = n.lua(timed_call(n.pids[1], "slow", 0.2, timeout), worker=0)
    except LuaError as e:
        assert "bad argument #4 to 'call'" in str(e)
        return
    finally:
        wait_for(lambda: n.results("slow-done:1") or stats(n, 0)["sent"] == 0,
                 what="the slow handler done")
    res, err, elapsed = got
    assert (res, err) == ("late 0.2", None), got
    assert 0.15 <= elapsed < 2


# -- many calls at once ------------------------------------------------------

CONCURRENT = """
    location = /c {
        content_by_lua_block {
            local ipc = require "ngx.ipc"
            local s = require("harness").state
            local want = tonumber(ngx.var.arg_n)
            -- hold every request until all have arrived, then call at once
            s.arrived = (s.arrived or 0) + 1
            if s.arrived == want then
                s.gate:post(want)
            end
            s.gate:wait(20)
            s.inflight = (s.inflight or 0) + 1
            s.max_inflight = math.max(s.max_inflight or 0, s.inflight)
            local pids = ipc.pids()
            local to = tonumber(ngx.var.arg_i) % #pids + 1
            local res, err = ipc.call(pids[to], "echo", ngx.var.arg_i, 20)
            s.inflight = s.inflight - 1
            ngx.print(res or ("error " .. tostring(err)))
        }
    }
"""

GATE = """
    T.state.gate = require("ngx.semaphore").new(0)
"""


@pytest.mark.parametrize("workers", [2, 4])
def test_500_concurrent_calls_from_concurrent_requests(nginx, workers):
    count = 500
    n = nginx(workers=workers, init_worker=HANDLERS + GATE, locations=CONCURRENT)
    caller = 0

    def one(i):
        return n.get(f"/c?i={i}&n={count}", worker=caller, timeout=40)

    with ThreadPoolExecutor(max_workers=count) as pool:
        replies = list(pool.map(one, range(count), timeout=60))
    wrong = [(i, r) for i, r in enumerate(replies) if r != (200, str(i).encode())]
    assert not wrong, wrong[:10]
    counters = stats(n, caller)
    assert counters["calls"] == count and counters["call_timeouts"] == 0
    assert counters["dropped"] == 0
    assert n.lua("return T.state.arrived, T.state.inflight", worker=caller) == [count, 0]
    (max_inflight,) = n.lua("return T.state.max_inflight", worker=caller)
    assert max_inflight == count
    for worker in range(1, workers):
        assert stats(n, worker)["received"] == count // workers


@pytest.mark.parametrize("workers", [2, 4])
def test_500_concurrent_calls_from_light_threads(nginx, workers):
    n = nginx(workers=workers, init_worker=HANDLERS)
    (result,) = n.lua("""
        local pids = ipc.pids()
        local threads, wrong = {}, {}
        for i = 1, 500 do
            threads[i] = ngx.thread.spawn(function()
                return ipc.call(pids[i % #pids + 1], "echo", "n" .. i, 20)
            end)
        end
        for i = 1, 500 do
            local ok, res, err = ngx.thread.wait(threads[i])
            if not ok or res ~= "n" .. i then
                wrong[#wrong + 1] = i .. ": " .. tostring(res) .. " " .. tostring(err)
            end
        end
        return {wrong = wrong, stats = ipc.stats()}
    """, worker=0)
    assert result["wrong"] in ([], {}), result["wrong"]
    assert result["stats"]["calls"] == 500
    assert result["stats"]["call_timeouts"] == 0
