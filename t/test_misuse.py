"""Misuse is told where it happens, and nothing is dropped unsaid (README:
API, delivery rule 7).

- Every public function raises its misuse errors at its caller's line
  (`eval:2: bad argument ...`, where line 2 of the chunk called it),
  whichever check found the fault.
- A message no handler takes is counted in `stats().unhandled` (not in
  `dropped`) and logged at warn once per name per worker, with its sender;
  past 64 names, one line says that further names are only counted.
- A worker that loaded ngx.ipc but registered nothing says so.
- `ipc.call` where it cannot yield names the way out of init_worker_by_lua*.
"""

import re

import pytest

from harness import LuaError, wait_for

# Each misuse is made on line 2 of a function defined there and called on
# line 4: the error must name line 2, the caller of the ipc function.
MISUSES = [
    ('ipc.send({}, "n", "d")', "bad argument #1 to 'send' (number expected, got table)"),
    ('ipc.send(1, {}, "d")', "bad argument #2 to 'send' (string expected, got table)"),
    ('ipc.send(1, "", "d")', "bad argument #2 to 'send' (non-empty string expected)"),
    ('ipc.send(1, "n", {})', "bad argument #3 to 'send' (string expected, got table)"),
    ('ipc.send(1, "n", "d", 5)', "bad argument #4 to 'send' (table expected, got number)"),
    ('ipc.send(1, "n", "d", { wait = "x" })',
     "bad argument #4 to 'send' (wait: number expected, got string)"),
    ('ipc.broadcast({}, "d")', "bad argument #1 to 'broadcast' (string expected, got table)"),
    ('ipc.broadcast("n", true)', "bad argument #2 to 'broadcast' (string expected, got boolean)"),
    ('ipc.broadcast("n", "d", 1)', "bad argument #3 to 'broadcast' (table expected, got number)"),
    ('ipc.broadcast("n", "d", { scope = "planet" })',
     "bad argument #3 to 'broadcast' (scope \"local\" or \"cluster\" expected, got planet)"),
    ('ipc.broadcast("n", "d", { wait = -1 })',
     "bad argument #3 to 'broadcast' (wait: non-negative number expected)"),
    ('ipc.broadcast("ipc:cluster_gap", "d", { scope = "cluster" })',
     "bad argument #1 to 'broadcast' (names that start with \"ipc:cluster\" are kept for ngx_ipc)"),
    ('ipc.receive({}, 5)', "bad argument #2 to 'receive' (nil expected with a table of handlers, got number)"),
    ('ipc.receive({ [""] = print })', "bad argument #1 to 'receive' (table keys must be non-empty strings, got string)"),
    ('ipc.receive({ n = 5 })', "bad argument #1 to 'receive' (function expected for \"n\", got number)"),
    ('ipc.receive("n", 5)', "bad argument #2 to 'receive' (function expected, got number)"),
    ('ipc.receive(true, print)', "bad argument #1 to 'receive' (string expected, got boolean)"),
    ('ipc.reply("n", "d")', "ipc.reply called outside an ipc handler"),
    ('ipc.call({}, "n")', "bad argument #1 to 'call' (number expected, got table)"),
    ('ipc.call(1, "n", "d", -1)', "bad argument #4 to 'call' (positive number expected)"),
    ('ipc.pids(5)', "bad argument #1 to 'pids' (table expected, got number)"),
    ('ipc.stats({})', "bad argument #1 to 'stats' (number or \"all\" expected, got table)"),
]


@pytest.mark.parametrize("expr, message", MISUSES, ids=[m[0] for m in MISUSES])
def test_misuse_names_the_callers_line(nginx, expr, message):
    n = nginx(workers=1)
    with pytest.raises(LuaError) as e:
        n.lua(f"local function misuse()\n    {expr}\nend\nmisuse()\n")
    assert str(e.value) == f"eval:2: {message}"


HANDLERS = """
    ipc.receive("known", function(data) T.push("known:" .. ngx.worker.pid(), data) end)
"""


def unhandled_lines(n, name):
    return re.findall(r'\[warn\].*ngx_ipc: no handler for message "' + re.escape(name)
                      + r'" \(from ([^)]*)\)', n.error_log())


STATUS_LOCATION = "location = /ipc_status { ipc_status; }"


def test_a_name_nobody_handles_is_counted_apart_and_told_once(nginx):
    n = nginx(workers=2, init_worker=HANDLERS, locations=STATUS_LOCATION)
    sender = n.pids[0]
    for _ in range(3):
        assert n.lua('return ipc.broadcast("purg", "typo")', worker=0) == [True]
    assert n.lua('return ipc.broadcast("known", "fence")', worker=0) == [True]
    for w, pid in enumerate(n.pids):
        n.wait_results(f"known:{pid}", 1)
        counters = wait_for(lambda: (lambda s: s if s["unhandled"] == 3 else None)(
            n.lua("return ipc.stats()", worker=w)[0]), what=f"3 unhandled in {pid}")
        assert counters["dropped"] == 0, counters
    # once per worker, naming the sender
    lines = unhandled_lines(n, "purg")
    assert lines == [f"worker {sender}"] * 2, lines
    # the status page counts them too
    status, body = n.get("/ipc_status?format=json")
    assert status == 200, body
    assert b'"unhandled": 3' in body or b'"unhandled":3' in body, body[:500]


def test_names_without_a_handler_are_told_up_to_64_then_counted(nginx):
    n = nginx(workers=2, init_worker=HANDLERS)
    target = n.pids[1]
    n.lua(f"""
        for i = 1, 100 do
            assert(ipc.send({target}, "nobody" .. i, "x"))
        end
        assert(ipc.send({target}, "known", "fence"))
    """, worker=0)
    n.wait_results(f"known:{target}", 1)
    wait_for(lambda: n.lua("return ipc.stats()", worker=1)[0]["unhandled"] == 100,
             what="100 unhandled")
    told = re.findall(r'no handler for message "nobody\d+"', n.error_log())
    assert len(told) == 64, len(told)
    assert len(re.findall(r"64 names without a handler were logged in this worker",
                          n.error_log())) == 1


NO_HANDLERS_LOCATION = """
    location = /just_pids {
        content_by_lua_block {
            local ipc = require "ngx.ipc"
            ngx.say(#ipc.pids())
        }
    }
"""


def test_a_worker_that_registered_nothing_says_so(nginx):
    """ngx.ipc loaded in a request, no handler registered: what arrives is
    counted as unhandled, and the log says the worker registered none."""
    n = nginx(workers=2, locations=NO_HANDLERS_LOCATION)
    assert n.get("/just_pids", worker=1)[0] == 200
    n.lua(f'assert(ipc.send({n.pids[1]}, "hello", "x"))', worker=0)
    wait_for(lambda: n.lua("return ipc.stats()", worker=1)[0]["unhandled"] == 1,
             what="the unhandled message")
    assert re.search(r'no handler for message "hello" .*this worker registered no handler '
                     r'at all \(register them with ipc.receive in init_worker_by_lua\*\)',
                     n.error_log()), n.log_tail()


def test_call_in_init_worker_names_the_way_out(nginx):
    n = nginx(workers=1, init_worker="""
        local ok, err = pcall(ipc.call, ngx.worker.pid(), "x", "y")
        T.set("init_worker_call", tostring(err))
    """)
    err = n.lua('return ngx.shared.results:get("init_worker_call")')[0]
    assert err.endswith("ipc.call is not allowed in the context of init_worker (it must be "
                        "able to yield, like ngx.sleep; from init_worker_by_lua*, call it in "
                        "a timer: ngx.timer.at(0, function() ... end))"), err
