"""Bad input from Lua and misbehaving handlers (README: API, delivery rule 5).

Every argument of every function gets wrong types and bad values; each
gets the documented error or behaviour, and the worker keeps serving
(HTTP and messages) afterwards.
"""

import os
import re
import time

import pytest

from harness import LuaError, digest, lua_quote, pattern, wait_for
from ipc_lua import RECORDERS, received, stats, wait_received

HANDLERS = RECORDERS + """
    ipc.receive("msg", record("msg"))
    ipc.receive("echo", function(data) return data end)
"""

# Lua expressions of each type, for the wrong-type matrix.
VALUES = {
    "nil": "nil",
    "boolean": "true",
    "number": "42",
    "string": '"7"',
    "table": "{}",
    "function": "print",
    "userdata": "ngx.null",
    "cdata": 'require("ffi").new("int", 7)',
    "thread": "coroutine.create(function() end)",
}

# function -> (valid arguments, types each argument accepts). As in
# ngx_lua_ipc, a PID may be a numeric string (from ngx.var) and a name a
# number (its string form); BAD_VALUES has the strings that are no number.
SIGNATURES = {
    "send": (["PID", '"msg"', '"x"'],
             [{"number", "string"}, {"string", "number"}, {"string", "number", "nil"}]),
    "broadcast": (['"msg"', '"x"', "nil"],
                  [{"string", "number"}, {"string", "number", "nil"}, {"table", "nil"}]),
    "receive": (['"msg"', "function() end"],
                [{"string", "number", "table"}, {"function", "nil"}]),
    "call": (["PID", '"echo"', '"x"', "1"],
             [{"number", "string"}, {"string", "number"}, {"string", "number", "nil"},
              {"number", "nil"}]),
    "reply": (['"msg"', '"x"'],
              [{"string", "number"}, {"string", "number", "nil"}]),
}

# Values of an accepted type that are still programmer errors.
BAD_VALUES = {
    "send": {1: ['"abc"', '""', '"12 pids"'], 2: ['""']},
    "broadcast": {1: ['""']},
    "receive": {1: ['""', '{ [true] = print }', '{ [""] = print }', '{ x = 1 }']},
    "call": {1: ['"abc"', '""'], 2: ['""'], 4: ["0", "-1", "-math.huge"]},
    "reply": {1: ['""']},
}


def wrong_argument_cases(fname):
    """(Lua call, argument number, type name or None) for fname."""
    valid, accepted = SIGNATURES[fname]
    cases = []
    for i, types in enumerate(accepted):
        for type_name, expr in VALUES.items():
            if type_name in types:
                continue
            if fname == "receive" and i == 1 and type_name == "nil":
                continue
            args = list(valid)
            args[i] = expr
            cases.append((f"ipc.{fname}({', '.join(args)})", i + 1, type_name))
        for expr in BAD_VALUES.get(fname, {}).get(i + 1, []):
            args = list(valid)
            args[i] = expr
            if expr.startswith("{"):
                args[1] = "nil"  # receive({ ... }): a table of handlers alone
            cases.append((f"ipc.{fname}({', '.join(args)})", i + 1, None))
    if fname == "receive":
        cases.append(("ipc.receive({ msg = print }, print)", 2, "function"))
    return cases


RUN_CASES = """
    local cases = { %s }
    local out = {}
    for i, code in ipairs(cases) do
        local fn = assert(loadstring("return " .. code, "=case"))
        setfenv(fn, setmetatable({ ipc = ipc, PID = PID }, { __index = _G }))
        local ok, err = pcall(fn)
        out[i] = ok and "no error" or tostring(err)
    end
    return out
"""


def lua_list(items):
    return ", ".join("[==[" + item + "]==]" for item in items)


def mismatches(cases, messages, fname):
    wrong = []
    for (code, argn, type_name), message in zip(cases, messages):
        want = [f"bad argument #{argn} to '{fname}'"]
        if type_name is not None and not (fname == "receive" and "{ msg" in code):
            want.append(f"got {type_name}")
        if not all(w in message for w in want):
            wrong.append(f"{code}: {message!r}, wanted {want}")
    return wrong


def assert_serving(n, worker):
    """The worker answers HTTP, and handles a message sent to itself."""
    token = f"alive {time.monotonic()}"
    assert n.lua(f'return ipc.send(ngx.worker.pid(), "msg", "{token}")',
                 worker=worker, timeout=5) == [True]
    wait_for(lambda: (n.pids[worker], token.encode()) in received(n, "msg", worker),
             timeout=5, what=f"worker {worker} to handle a message to itself")


@pytest.mark.parametrize("fname", ["send", "broadcast", "receive", "call"])
def test_every_argument_wrong_type_raises(nginx, fname):
    n = nginx(workers=2, init_worker=HANDLERS)
    cases = wrong_argument_cases(fname)
    messages = n.lua(f"PID = {n.pids[1]}\n" + RUN_CASES % lua_list([c[0] for c in cases]),
                     worker=0)[0]
    assert not mismatches(cases, messages, fname), "\n".join(mismatches(cases, messages, fname))
    counters = stats(n, 0)
    assert counters["sent"] == 0 and counters["refused"] == 0, counters
    for worker in range(2):
        assert_serving(n, worker)
    # nothing was sent by the cases: only the two health checks arrived
    assert [d[:5] for _, d in wait_received(n, "msg", 1, 1)] == [b"alive"]


def test_reply_arguments_inside_a_handler(nginx):
    cases = wrong_argument_cases("reply")
    n = nginx(workers=2, init_worker=HANDLERS + """
        ipc.receive("run", function(code)
            local fn = assert(loadstring(code, "=run"))
            setfenv(fn, setmetatable({ ipc = ipc, T = T }, { __index = _G }))
            local out = fn()
            for _, message in ipairs(out) do
                T.push("reply-cases", message)
            end
        end)
    """)
    code = RUN_CASES % lua_list([c[0] for c in cases])
    n.lua(f"assert(ipc.send({n.pids[1]}, 'run', {lua_quote(code)}))", worker=0)
    messages = [m.decode() for m in n.wait_results("reply-cases", len(cases))]
    assert not mismatches(cases, messages, "reply"), "\n".join(mismatches(cases, messages, "reply"))
    # outside a handler reply is a programmer error too
    with pytest.raises(LuaError, match="reply"):
        n.lua('ipc.reply("msg", "x")', worker=0)
    for worker in range(2):
        assert_serving(n, worker)


def test_pids_and_stats_ignore_extra_arguments(nginx):
    n = nginx(workers=2, init_worker=HANDLERS)
    assert n.lua("""
        local p1, p2 = ipc.pids(), ipc.pids({}, "x", 42, print)
        local s1, s2 = ipc.stats(), ipc.stats(nil, true, ngx.null)
        return p1, p2, type(s1), type(s2)
    """, worker=0) == [n.pids, n.pids, "table", "table"]
    for worker in range(2):
        assert_serving(n, worker)


@pytest.mark.parametrize("fname", ["send", "call"])
def test_pids_that_are_no_worker(nginx, fname):
    n = nginx(workers=2, init_worker=HANDLERS)
    live = n.pids[1]
    bad = ["0", "-1", "-0.0", f"-{live}", "0.5", "1.5", f"{live} + 0.5", f"{live} - 0.25",
           f"{live} + 2^32", f"{live} - 2^32", f"{live} + 2^31", "2^31", "2^31 - 1",
           "-2^31", "2^53", "2^64", "1e308", "math.huge", "-math.huge", "0/0",
           str(n.master_pid), "1", str(os.getpid()), "4194305"]
    args = '"msg", "x"' if fname == "send" else '"echo", "x", 0.5'
    results = n.lua("""
        local out = {}
        for i, pid in ipairs({ %s }) do
            local ok, err = ipc.%s(pid, %s)
            out[i] = tostring(ok) .. " " .. tostring(err)
        end
        return out
    """ % (", ".join(bad), fname, args), worker=0)[0]
    wrong = [f"{expr}: {result}" for expr, result in zip(bad, results)
             if result != "nil no such worker"]
    assert not wrong, wrong
    counters = stats(n, 0)
    assert counters["refused"] == len(bad) and counters["sent"] == 0, counters
    assert stats(n, 1)["received"] == 0

    # the caller itself is allowed: self-send (and self-call) work
    if fname == "send":
        assert n.lua('return ipc.send(ngx.worker.pid(), "msg", "self")', worker=0) == [True]
        assert wait_received(n, "msg", 0, 1) == [(n.pids[0], b"self")]
    else:
        assert n.lua('return ipc.call(ngx.worker.pid(), "echo", "self")', worker=0) == ["self"]
        assert n.lua(f'return ipc.call({live}, "echo", "other")', worker=0) == ["other"]
    for worker in range(2):
        assert_serving(n, worker)


def test_names_and_sizes_at_and_past_the_limits(nginx):
    n = nginx(workers=2, main="ipc_max_message 1m;", init_worker=HANDLERS + """
        ipc.receive(string.rep("n", 65535), record("long"))
        ipc.receive("big", record_digest("big"))
        ipc.receive("reply-limits", function()
            local a, a_err = ipc.reply(string.rep("n", 65536), "x")
            local b, b_err = ipc.reply("big", T.pattern(1024 * 1024 + 1, 1))
            T.push("reply-limits", tostring(a) .. " " .. a_err)
            T.push("reply-limits", tostring(b) .. " " .. b_err)
        end)
    """)
    pid = n.pids[1]
    assert n.lua(f"""
        local long, huge = string.rep("n", 65536), T.pattern(1024 * 1024 + 1, 1)
        local out = {{}}
        local function add(ok, err) out[#out + 1] = tostring(ok) .. " " .. tostring(err) end
        add(ipc.send({pid}, long, "x"))
        add(ipc.broadcast(long, "x"))
        add(ipc.call({pid}, long, "x"))
        add(ipc.send({pid}, "big", huge))
        add(ipc.broadcast("big", huge))
        add(ipc.call({pid}, "echo", huge))
        add(ipc.send({pid}, "big", T.pattern(8 * 1024 * 1024, 1)))
        return out
    """, worker=0) == [["nil name too long"] * 3 + ["nil message too large"] * 4]
    assert stats(n, 0)["refused"] == 7 and stats(n, 0)["sent"] == 0
    n.lua(f"assert(ipc.send({pid}, 'reply-limits', ''))", worker=0)
    assert n.wait_results("reply-limits", 2) == [b"nil name too long", b"nil message too large"]

    # at the limits everything goes through
    assert n.lua(f"""
        return ipc.send({pid}, string.rep("n", 65535), "at"),
               ipc.send({pid}, "big", T.pattern(1024 * 1024, 3))
    """, worker=0) == [True, True]
    assert wait_received(n, "long", 1, 1) == [(n.pids[0], b"at")]
    assert wait_received(n, "big", 1, 1) == [(n.pids[0], digest(pattern(1 << 20, 3)))]
    for worker in range(2):
        assert_serving(n, worker)


def test_default_max_message_is_enforced(nginx):
    n = nginx(workers=2, init_worker=HANDLERS)
    assert n.lua(f"""
        local huge = T.pattern(64 * 1024 * 1024 + 1, 1)
        return ipc.send({n.pids[1]}, "msg", huge)
    """, worker=0) == [None, "message too large"]
    assert_serving(n, 1)


def test_call_timeouts_that_are_not_sane(nginx):
    """NaN and infinite timeouts are programmer errors or behave as a
    timeout; a call never hangs for longer than asked."""
    n = nginx(workers=2, init_worker=HANDLERS + """
        ipc.receive("slow", function() ngx.sleep(1) return "late" end)
    """)
    pid = n.pids[1]
    for expr in ["0/0", "math.huge", "2^40"]:
        started = time.monotonic()
        try:
            result = n.lua(f'return ipc.call({pid}, "slow", "x", {expr})',
                           worker=0, timeout=8)
        except LuaError as e:
            assert "bad argument #4 to 'call'" in str(e), (expr, str(e))
            continue
        elapsed = time.monotonic() - started
        # not a programmer error: then it is a very long timeout, and the
        # answer comes when the handler is done
        assert result == ["late"] and elapsed >= 0.9, (expr, result, elapsed)
    assert n.lua(f'return ipc.call({pid}, "slow", "x", 1e-9)', worker=0) == [None, "timeout"]
    for worker in range(2):
        assert_serving(n, worker)


def test_call_in_a_context_that_cannot_yield_raises(nginx):
    n = nginx(workers=2, init_worker=HANDLERS + """
        local ok, err = pcall(ipc.call, ngx.worker.pid(), "echo", "x")
        T.push("init-call:" .. me, tostring(ok) .. " " .. tostring(err))
        ipc.receive("call-self", function()
            local res, err = ipc.call(ngx.worker.pid(), "echo", "x")
            T.push("self-call", tostring(res) .. " " .. tostring(err))
        end)
    """)
    for worker in range(2):
        (line,) = n.results(f"init-call:{worker}")
        assert line.startswith(b"false ") and b"not allowed" in line, line
    n.lua(f'assert(ipc.send({n.pids[1]}, "call-self", ""))', worker=0)
    assert n.wait_results("self-call", 1) == [b"nil would deadlock"]
    for worker in range(2):
        assert_serving(n, worker)


HANDLER_ERRORS = RECORDERS + """
    ipc.receive("msg", record("msg"))
    ipc.receive("err-string", function(d) error("abuse string " .. d) end)
    ipc.receive("err-table", function(d) error({ d }) end)
    ipc.receive("err-nil", function() error() end)
    ipc.receive("err-number", function() error(42) end)
    ipc.receive("err-deep", function()
        local function f(k) if k == 0 then error("abuse deep") end f(k - 1) end
        f(100)
    end)
    ipc.receive("err-huge", function() error("abuse huge " .. string.rep("x", 100000)) end)
    ipc.receive("err-after-yield", function() ngx.sleep(0.01) error("abuse after yield") end)
    ipc.receive("bad-default", function() ipc.default_handler = "not a function" end)
"""


def test_handlers_that_raise_are_logged_counted_and_delivery_goes_on(nginx):
    names = ["err-string", "err-table", "err-nil", "err-number", "err-deep",
             "err-huge", "err-after-yield"]
    n = nginx(workers=2, init_worker=HANDLER_ERRORS,
              allow_log=[r'ngx_ipc: handler for message "(err-|no-handler)'])
    sender, target = 0, 1
    n.lua(f"""
        local pid = {n.pids[target]}
        for i, name in ipairs({{ {", ".join(f'"{x}"' for x in names)} }}) do
            assert(ipc.send(pid, name, "e" .. i))
            assert(ipc.send(pid, "msg", "m" .. i))
        end
        -- a default_handler that is no function is an error per message too
        assert(ipc.send(pid, "bad-default", ""))
        assert(ipc.send(pid, "no-handler", "x"))
        assert(ipc.send(pid, "msg", "last"))
    """, worker=sender)
    spid = n.pids[sender]
    expected = [(spid, b"m%d" % i) for i in range(1, len(names) + 1)] + [(spid, b"last")]
    assert wait_received(n, "msg", target, len(expected)) == expected
    counters = stats(n, target)
    assert counters["handler_errors"] == len(names) + 1, counters
    log = n.error_log()
    for name in names + ["no-handler"]:
        lines = [line for line in log.splitlines() if f'message "{name}" failed' in line]
        assert len(lines) == 1 and "[error]" in lines[0], (name, lines)
    assert "abuse deep" in log and "abuse after yield" in log
    assert_serving(n, target)


def test_handler_raising_inside_a_coroutine_does_not_stop_delivery(nginx):
    """Rule 5 for an error raised in a coroutine the handler resumes
    (coroutine.wrap, as many Lua libraries do): in lua-nginx-module it
    propagates past pcall and aborts the light thread that ran the handler;
    delivery must go on all the same."""
    n = nginx(workers=2, init_worker=RECORDERS + """
        ipc.receive("msg", record("msg"))
        ipc.receive("err-coroutine", function(d)
            coroutine.wrap(function() error("abuse in a coroutine " .. d) end)()
        end)
    """, allow_log=[r"abuse in a coroutine"])
    n.lua(f"""
        local pid = {n.pids[1]}
        assert(ipc.send(pid, "msg", "before"))
        assert(ipc.send(pid, "err-coroutine", "1"))
        assert(ipc.send(pid, "msg", "after"))
    """, worker=0)
    spid = n.pids[0]
    assert wait_received(n, "msg", 1, 2, timeout=3) == [(spid, b"before"), (spid, b"after")]
    assert "abuse in a coroutine 1" in n.error_log()
    assert_serving(n, 1)


def test_handler_that_calls_ngx_exit_does_not_stop_delivery(nginx):
    """OpenResty code ends request handlers with `return ngx.exit(ngx.OK)`;
    in an ipc handler it must end that handler only, not every later
    delivery in the worker."""
    n = nginx(workers=2, init_worker=RECORDERS + """
        ipc.receive("msg", record("msg"))
        ipc.receive("exit", function() return ngx.exit(ngx.OK) end)
    """)
    n.lua(f"""
        local pid = {n.pids[1]}
        assert(ipc.send(pid, "msg", "before"))
        assert(ipc.send(pid, "exit", ""))
        assert(ipc.send(pid, "msg", "after"))
    """, worker=0)
    spid = n.pids[0]
    assert wait_received(n, "msg", 1, 2, timeout=3) == [(spid, b"before"), (spid, b"after")]
    assert_serving(n, 1)


def test_handler_that_yields_long_holds_later_messages_only(nginx):
    n = nginx(workers=2, init_worker=RECORDERS + """
        ipc.receive("slow", function(data)
            T.push("order", "slow-start " .. data)
            ngx.sleep(2)
            T.push("order", "slow-end " .. data)
        end)
        ipc.receive("fast", function(data) T.push("order", "fast " .. data) end)
        ipc.receive("msg", record("msg"))
    """)
    n.lua(f"""
        local pid = {n.pids[1]}
        assert(ipc.send(pid, "slow", "1"))
        for i = 2, 5 do assert(ipc.send(pid, "fast", tostring(i))) end
    """, worker=0)
    n.wait_results("order", 1)
    # meanwhile the worker serves HTTP at once, and takes more sends
    for i in range(5):
        started = time.monotonic()
        assert n.lua("return ngx.worker.id()", worker=1) == [1]
        assert time.monotonic() - started < 1
        n.lua(f'assert(ipc.send({n.pids[1]}, "fast", "{6 + i}"))', worker=0)
    assert n.results("order") == [b"slow-start 1"]
    assert n.wait_results("order", 11) == [b"slow-start 1", b"slow-end 1"] + \
        [b"fast %d" % i for i in range(2, 11)]
    assert_serving(n, 1)


# Each handler does ~0.1 ms of work (an MD5 of 64 KiB), so that 10000 of
# them take about a second: long enough to see whether HTTP is served
# meanwhile.
SELF_LOOP = RECORDERS + """
    ipc.receive("msg", record("msg"))
    local S = T.state
    S.chain, S.loop, S.bad = 0, 0, 0
    local blob = string.rep("w", 65536)
    ipc.receive("chain", function(data)
        ngx.md5(blob)
        local i = tonumber(data)
        if i ~= S.chain + 1 then S.bad = S.bad + 1 end
        S.chain = i
        if i < 10000 then
            assert(ipc.send(ngx.worker.pid(), "chain", i + 1))
        end
    end)
    ipc.receive("loop", function(data)
        ngx.md5(blob)
        local i = tonumber(data)
        if i ~= S.loop + 1 then S.bad = S.bad + 1 end
        S.loop = i
    end)
    ipc.receive("start-loop", function()
        for i = 1, 10000 do
            assert(ipc.send(ngx.worker.pid(), "loop", i))
        end
    end)
"""


@pytest.mark.parametrize("kind", ["chain", "loop"])
def test_handler_sending_to_itself_10000_times(nginx, kind):
    """A handler chain that sends to its own worker 10000 times (each handler
    sends the next), or one handler that sends 10000 messages to itself in a
    loop: bounded, in order, and the worker serves HTTP meanwhile (every
    request answered within 0.5 s, several while the handlers run)."""
    n = nginx(workers=2, init_worker=SELF_LOOP)
    start = "chain" if kind == "chain" else "start-loop"
    arg = "1" if kind == "chain" else ""
    n.lua(f'assert(ipc.send(ngx.worker.pid(), "{start}", "{arg}"))', worker=1)
    seen, waits = [], []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        started = time.monotonic()
        (count,) = n.lua(f"return T.state.{kind}", worker=1)
        waits.append(time.monotonic() - started)
        seen.append(count)
        if count == 10000:
            break
    assert seen[-1] == 10000, seen[-10:]
    assert n.lua("return T.state.bad", worker=1) == [0]
    assert n.lua("return ipc.stats().handler_errors", worker=1) == [0]
    during = [c for c in seen if 0 < c < 10000]
    assert max(waits) < 0.5 and len(during) >= 3, \
        (f"HTTP requests waited up to {max(waits):.2f} s; answers seen while "
         f"the handlers ran: {during}")
    assert_serving(n, 1)
    assert_serving(n, 0)


def test_storm_of_handler_errors_writes_few_log_lines(nginx):
    n = nginx(workers=2, init_worker=RECORDERS + """
        ipc.receive("msg", record("msg"))
        ipc.receive("boom", function(d) error("storm " .. d) end)
    """, allow_log=[r'handler for message "boom" failed: .*storm (\d+|last)',
                    r"more handler errors not logged"])
    before = len(n.error_log().splitlines())
    started = time.monotonic()
    n.lua(f"""
        local pid = {n.pids[1]}
        for i = 1, 10000 do
            assert(ipc.send(pid, "boom", i))
        end
        assert(ipc.send(pid, "msg", "fence"))
    """, worker=0)
    wait_received(n, "msg", 1, 1)
    storm = time.monotonic() - started
    assert stats(n, 1)["handler_errors"] == 10000

    # One more error a second later: the library reports what it skipped.
    time.sleep(1.1)
    n.lua(f'assert(ipc.send({n.pids[1]}, "boom", "last"))', worker=0)
    wait_for(lambda: stats(n, 1)["handler_errors"] == 10001, what="the last error")
    wait_for(lambda: "storm last" in n.error_log(), what="the last error's log line")

    new = n.error_log().splitlines()[before:]
    logged = [line for line in new if re.search(r"storm (\d+|last)", line)]
    summaries = [int(m.group(1)) for line in new
                 for m in [re.search(r"(\d+) more handler errors not logged", line)] if m]
    assert len(logged) + len(summaries) <= 50, \
        f"{len(logged)} + {len(summaries)} log lines for a {storm:.2f} s storm"
    assert summaries, "no summary of the errors not logged"
    assert len(logged) + sum(summaries) == 10001, (len(logged), summaries)
    assert_serving(n, 1)
