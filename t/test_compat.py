"""Drop-in for slact/ngx_lua_ipc: the forms its README and sample
configuration use, run against ngx_ipc (README: "Migrating from
ngx_lua_ipc"; each row of that table names its test here).

The Lua below is written in ngx_lua_ipc's style, with its idioms (a PID from
an nginx variable, ipc.sender in a format string, ipc.reply to it,
get_other_worker_pids()[1], a table of handlers), and checked for what
arrived, byte for byte.
"""

import os
import re
import signal

import pytest

from harness import LuaError, wait_for
from ipc_lua import RECORDERS, WORKERS, received, stats, wait_received

# ngx_lua_ipc's README example: its init_worker handlers and its two
# locations, as a user copies them (only the listen line differs, which the
# harness writes).
README_INIT_WORKER = """
    local ipc = require "ngx.ipc"
    ipc.receive("hello", function(data)
      ngx.log(ngx.ALERT, "sender" .. ipc.sender .. " says " .. data)

      ipc.reply("reply", "hello to you too. you said " .. data)

    end)

    ipc.receive("reply", function(data)
      ngx.log(ngx.ALERT, tostring(ipc.sender) .. " replied " .. data)
    end)
"""

README_LOCATIONS = """
    location ~ /send/(\\d+)/(.*)$ {
      set $dst_pid $1;
      set $data $2;
      content_by_lua_block {
        local ipc = require "ngx.ipc"
        local ok, err = ipc.send(ngx.var.dst_pid, "hello", ngx.var.data)
        if ok then
          ngx.say("Sent alert to pid " .. ngx.var.dst_pid);
        else
          ngx.status = 500
          ngx.say(err)
        end
      }
    }

    location ~ /broadcast/(.*)$ {
      set $data $1;
      content_by_lua_block {
        local ipc = require "ngx.ipc"
        ipc.broadcast("hello", ngx.var.data)
      }
    }
"""

# what the README's handlers log at alert level
README_LOG = [r"\[alert\].*(sender\d+ says|\d+ replied hello to you too)"]
SAYS = re.compile(r"\[alert\] (\d+)#\d+: .*sender(\d+) says (.*?), context")
REPLIED = re.compile(r"\[alert\] (\d+)#\d+: .* (\d+) replied hello to you too\. "
                     r"you said (.*?), context")


def log_events(n, regex):
    return sorted((int(a), int(b), c) for a, b, c in regex.findall(n.error_log()))


@pytest.mark.parametrize("workers", [2, 4])
def test_readme_example_runs_unchanged(nginx, workers):
    """Migration rows: send with a PID from ngx.var, ipc.sender, ipc.reply,
    broadcast (the sender included)."""
    n = nginx(workers=workers, init_worker=README_INIT_WORKER,
              locations=README_LOCATIONS, allow_log=README_LOG)
    src, dst = n.pids[0], n.pids[-1]

    status, body = n.request("GET", f"/send/{dst}/howdy", worker=0)
    assert (status, body) == (200, f"Sent alert to pid {dst}\n".encode())
    wait_for(lambda: log_events(n, REPLIED), what="the reply")
    assert log_events(n, SAYS) == [(dst, src, "howdy")]
    assert log_events(n, REPLIED) == [(src, dst, "howdy")]

    # every worker hears the broadcast, and each one's reply reaches the sender
    status, _ = n.request("GET", "/broadcast/all-of-you", worker=0)
    assert status == 200
    wait_for(lambda: len(log_events(n, REPLIED)) == 1 + workers, what="the replies")
    says = [e for e in log_events(n, SAYS) if e[2] == "all-of-you"]
    assert says == sorted((pid, src, "all-of-you") for pid in n.pids)
    replied = [e for e in log_events(n, REPLIED) if e[2] == "all-of-you"]
    assert replied == sorted((src, pid, "all-of-you") for pid in n.pids)

    # a PID that is no worker: the example's own error branch
    status, body = n.request("GET", "/send/1/nobody", worker=0)
    assert (status, body) == (500, b"no such worker\n")


# The forms of ngx_lua_ipc's sample configuration (its dev/nginx.conf):
# a table of handlers with ipc.sender in "%d" formats, sends to
# get_other_worker_pids()[1], a flood, a long message checked number by
# number, and a broadcast ping-pong.
SAMPLE_INIT_WORKER = """
    local ipc = require "ngx.ipc"
    ipc.receive({
      hello = function(data)
        T.push("hello", ("%d says %s"):format(ipc.sender, data))
        ipc.reply("reply", ("kthx (you said %s)"):format(data))
      end,
      check_long = function(data)
        local i = 1
        for n in data:gmatch("%d+") do
          if tonumber(n) ~= i then
            T.push("long", ("long alert doesn't check out at %d (saw %s)"):format(i, n))
            return
          end
          i = i + 1
        end
        T.push("long", ("%d sent %d numbers that check out"):format(ipc.sender, i - 1))
        ipc.reply("reply", "kthx")
      end,
      reply = function(data)
        T.push("reply", ("%d has replied %s"):format(ipc.sender, data))
      end,
      flood_test = function(data)
        T.push("flood", data)
      end,
      benchmark_ping = function(data)
        if ipc.sender ~= ngx.worker.pid() then
          ipc.reply("benchmark_pong", data)
        end
      end,
    })
"""

SAMPLE_LOCATIONS = """
    location ~ /send/any/(.*)$ {
      set $data $1;
      content_by_lua_block {
        local ipc = require "ngx.ipc"
        local dst_pid = ipc.get_other_worker_pids()[1]
        local ok, err = ipc.send(dst_pid, "hello", ngx.var.data)
        if ok then ngx.say("Sent alert to pid " .. dst_pid)
        else ngx.status = 500; ngx.say(err) end
      }
    }

    location ~ /send/flood/(\\d+)$ {
      set $n $1;
      content_by_lua_block {
        local ipc = require "ngx.ipc"
        local dst_pid = ipc.get_other_worker_pids()[1]
        for i = 0, tonumber(ngx.var.n) do
          assert(ipc.send(dst_pid, "flood_test", i))
        end
        ngx.say("Sent ", ngx.var.n, " alerts to pid ", dst_pid)
      }
    }

    location ~ /send/long/(\\d+)$ {
      set $n $1;
      content_by_lua_block {
        local ipc = require "ngx.ipc"
        local dst_pid = ipc.get_other_worker_pids()[1]
        local t = {}
        for i = 1, tonumber(ngx.var.n) do t[i] = tostring(i) end
        local ok, err = ipc.send(dst_pid, "check_long", table.concat(t, " "))
        if ok then ngx.say("Sent alert to pid " .. dst_pid)
        else ngx.status = 500; ngx.say(err) end
      }
    }

    location ~ /pids$ {
      content_by_lua_block {
        local ipc = require "ngx.ipc"
        ngx.say(table.concat(ipc.get_other_worker_pids(), " "))
      }
    }

    location = /broadcast_bench {
      content_by_lua_block {
        local ipc = require "ngx.ipc"
        local count, enough = 0, tonumber(ngx.var.arg_n)
        ipc.receive("benchmark_pong", function(data)
          count = count + 1
          if count >= enough then
            require("harness").set("bench", ("got %d responses"):format(count))
          else
            ipc.reply("benchmark_ping", data)
          end
        end)
        local ok, err = ipc.broadcast("benchmark_ping", ("%f %s"):format(ngx.now(), "b"))
        if ok then ngx.say("Benchmark begin.")
        else ngx.status = 500; ngx.say(err) end
      }
    }
"""


def test_sample_configuration_forms(nginx):
    """Migration rows: get_other_worker_pids()[1] as a destination, numbers as
    data, a table of handlers, a long message, the broadcast ping-pong."""
    n = nginx(workers=4, init_worker=SAMPLE_INIT_WORKER, locations=SAMPLE_LOCATIONS)
    me, others = n.pids[1], [p for p in n.pids if p != n.pids[1]]
    first = others[0]

    assert n.request("GET", "/pids", worker=1) == (200, " ".join(map(str, others)).encode() + b"\n")

    assert n.request("GET", "/send/any/hi", worker=1) == (200, f"Sent alert to pid {first}\n".encode())
    assert n.wait_results("hello", 1) == [f"{me} says hi".encode()]
    assert n.wait_results("reply", 1) == [f"{first} has replied kthx (you said hi)".encode()]

    assert n.request("GET", "/send/flood/1000", worker=1) == \
        (200, f"Sent 1000 alerts to pid {first}\n".encode())
    assert n.wait_results("flood", 1001) == [str(i).encode() for i in range(1001)]

    assert n.request("GET", "/send/long/100000", worker=1)[0] == 200
    assert n.wait_results("long", 1) == [f"{me} sent 100000 numbers that check out".encode()]
    wait_for(lambda: len(n.results("reply")) == 2, what="the long message's reply")
    assert n.results("reply")[1] == f"{first} has replied kthx".encode()

    assert n.request("GET", "/broadcast_bench?n=3000", worker=1) == (200, b"Benchmark begin.\n")
    # three chains of ping-pong, one per other worker, each with one message
    # in flight: the one that makes the count 3000 stops, and the two others
    # stop at their next pong
    wait_for(lambda: n.lua('return T.get("bench")', worker=1) == ["got 3002 responses"],
             what="3000 ping-pong round trips")


@pytest.mark.parametrize("workers", WORKERS)
def test_get_other_worker_pids(nginx, workers):
    """Migration row: get_other_worker_pids(), every running worker but the
    caller, in worker id order, from any phase that has a worker."""
    n = nginx(workers=workers, init_worker="""
        OTHERS_AT_START = ipc.get_other_worker_pids()
    """)
    for k in range(workers):
        others = [p for p in n.pids if p != n.pids[k]]
        assert n.lua("return table.concat(ipc.get_other_worker_pids(), ' ')",
                     worker=k) == [" ".join(map(str, others))]
        # at init_worker, workers that had not started yet are missing
        (at_start,) = n.lua("return OTHERS_AT_START", worker=k)
        assert set(at_start or []) <= set(others), at_start


def test_get_other_worker_pids_single_process(nginx):
    n = nginx(master_process=False)
    assert n.lua("return #ipc.get_other_worker_pids()") == [0]


def test_get_other_worker_pids_after_a_crash(nginx):
    """A killed worker's PID leaves the list; its replacement's joins it."""
    n = nginx(workers=2)
    dead = n.pids[1]
    os.kill(dead, signal.SIGKILL)
    n.allow_log(r"exited on signal 9")

    def replaced():
        (others,) = n.lua("return ipc.get_other_worker_pids()", worker=0)
        return others if others and others[0] != dead else None

    (new,) = wait_for(replaced, what="the respawned worker in the list")
    assert new != dead and new in n.worker_pids()


HANDLERS_TABLE = RECORDERS + """
    ipc.receive("a", record("a"))
    ipc.handlers.b = record("b")              -- stored directly, as in ngx_lua_ipc
"""


def test_handlers_table(nginx):
    """Migration row: ipc.handlers is the table of handlers by name, and the
    one messages are dispatched through."""
    n = nginx(workers=2, init_worker=HANDLERS_TABLE)
    me = n.pids[0]
    assert n.lua("""
        local names = {}
        for name, fn in pairs(ipc.handlers) do names[#names + 1] = name .. "=" .. type(fn) end
        table.sort(names)
        return table.concat(names, " ")
    """, worker=1) == ["a=function b=function"]

    n.lua(f'assert(ipc.send({n.pids[1]}, "a", "1")) assert(ipc.send({n.pids[1]}, "b", "2"))', worker=0)
    assert wait_received(n, "a", 1, 1) == [(me, b"1")]
    assert wait_received(n, "b", 1, 1) == [(me, b"2")]

    # receive(name, nil) removes the entry; assigning nil removes it too
    assert n.lua('ipc.receive("a", nil) ipc.handlers.b = nil return next(ipc.handlers)',
                 worker=1) == [None]
    # a whole new table is what dispatches from then on
    n.lua('ipc.handlers = { c = function(d) T.push("c", d) end }', worker=1)
    before = stats(n, 1)["unhandled"]
    n.lua(f'assert(ipc.send({n.pids[1]}, "a", "x")) assert(ipc.send({n.pids[1]}, "c", "3"))', worker=0)
    assert n.wait_results("c", 1) == [b"3"]
    assert received(n, "a", 1) == [(me, b"1")]
    assert stats(n, 1)["unhandled"] == before + 1
    # receive() registers into the table now in place
    assert n.lua('ipc.receive("d", print) return ipc.handlers.d == print and ipc.handlers.c ~= nil',
                 worker=1) == [True]


def test_number_names_and_data(nginx):
    """Migration row: a number as the name is its string form, in every
    function that takes a name; numbers as data likewise."""
    n = nginx(workers=2, init_worker=RECORDERS + """
        ipc.receive(42, record("n42"))
        ipc.receive({ [7] = record("n7") })
        ipc.receive("1.5", record("n1.5"))
        ipc.receive("square", function(data) return tonumber(data) ^ 2 end)
        ipc.receive(5, function(data) return "five:" .. data end)
        ipc.receive("ask", function(data) ipc.reply(13, data) end)
        ipc.receive("13", record("n13"))
    """)
    me, dst = n.pids[0], n.pids[1]
    assert n.lua(f"""
        assert(ipc.send({dst}, 42, 100))
        assert(ipc.send("{dst}", "42", "str"))
        assert(ipc.broadcast(7, -3))
        assert(ipc.send({dst}, 1.5, 0.25))
        assert(ipc.send({dst}, "ask", "back"))
        return ipc.call({dst}, 5, 9), ipc.call("{dst}", "square", 12)
    """, worker=0) == ["five:9", "144"]
    assert wait_received(n, "n42", 1, 2) == [(me, b"100"), (me, b"str")]
    assert wait_received(n, "n7", 0, 1) == [(me, b"-3")]
    assert wait_received(n, "n7", 1, 1) == [(me, b"-3")]
    assert wait_received(n, "n1.5", 1, 1) == [(me, b"0.25")]
    assert wait_received(n, "n13", 0, 1) == [(dst, b"back")]
    assert n.lua("return ipc.handlers['42'] ~= nil, ipc.handlers['7'] ~= nil", worker=1) == [True, True]


@pytest.mark.parametrize("form", ['"{pid}"', '" {pid} "', '"{pid}.0"', '"0x{pid:x}"'])
def test_numeric_string_pids(nginx, form):
    """Migration row: a PID as a string converts as luaL_checknumber does."""
    n = nginx(workers=2, init_worker=RECORDERS + 'ipc.receive("m", record("m"))')
    arg = form.format(pid=n.pids[1])
    assert n.lua(f'return ipc.send({arg}, "m", "via string")', worker=0) == [True]
    assert wait_received(n, "m", 1, 1) == [(n.pids[0], b"via string")]


def test_non_numeric_pid_strings_raise(nginx):
    n = nginx(workers=1)
    for arg in ['"abc"', '""', '"12abc"']:
        for fn in ("send", "call"):
            with pytest.raises(LuaError, match=rf"bad argument #1 to '{fn}' \(number expected, got string\)"):
                n.lua(f'ipc.{fn}({arg}, "m", "x")')
    assert stats(n, 0)["sent"] == 0


EXIT_HANDLERS = """
    ipc.receive("exit", function(data)
        T.push("exit-ran", data)
        ngx.exit(ngx.OK)
    end)
    ipc.receive("coroutine", function(data)
        local co = coroutine.wrap(function() error("inside a coroutine") end)
        co()
    end)
    ipc.receive("echo", function(data) return data end)
"""


@pytest.mark.parametrize("name", ["exit", "coroutine"])
def test_call_to_a_handler_that_ends_its_thread_answers_at_once(nginx, name):
    """ngx.exit() in a handler (or an error in a coroutine it ran) ends the
    runner's light thread: the caller learns it at once, not at its timeout."""
    n = nginx(workers=2, init_worker=EXIT_HANDLERS,
              allow_log=[r"\[error\].*inside a coroutine", r"lua entry thread aborted"])
    callee = n.pids[1]
    (res, err, elapsed) = n.lua(f"""
        ngx.update_time()
        local t0 = ngx.now()
        local res, err = ipc.call({callee}, "{name}", "x", 5)
        ngx.update_time()
        return res, err, ngx.now() - t0
    """, worker=0)
    assert res is None
    assert err == ("handler error: the handler ended its light thread (ngx.exit(), "
                   "or an error in a coroutine it ran) before it returned"), err
    assert elapsed < 0.1, elapsed
    # delivery goes on, and it was counted as a handler error
    assert n.lua(f'return ipc.call({callee}, "echo", "still here", 1)', worker=0) == ["still here"]
    assert stats(n, 1)["handler_errors"] == 1
    assert stats(n, 0)["call_timeouts"] == 0


ERROR_HANDLERS = """
    ipc.receive("table", function() error({ code = 1 }) end)
    ipc.receive("tostring", function()
        error(setmetatable({ code = 2 }, { __tostring = function(e) return "E" .. e.code end }))
    end)
    ipc.receive("nil", function() error(nil) end)
    ipc.receive("bool", function() error(false) end)
    ipc.receive("number", function() error(404) end)
    ipc.receive("bad_tostring", function()
        error(setmetatable({}, { __tostring = function() error("no") end }))
    end)
    -- a metatable whose own __index raises: reading mt.__tostring raises
    ipc.receive("hostile_index", function()
        local mt = setmetatable({}, { __index = function() error("gotcha") end })
        error(setmetatable({}, mt))
    end)
    ipc.receive("tostring_table", function()
        error(setmetatable({}, { __tostring = function() return {} end }))
    end)
    ipc.receive("fine", function(data) return "fine " .. data end)
"""

ERROR_TEXTS = {
    "table": "(error object is a table value)",
    "tostring": "E2",
    "nil": "(error object is a nil value)",
    "bool": "(error object is a boolean value)",
    "number": "404",          # error() adds the position to a number
    "bad_tostring": "(error object is a table value)",
    "hostile_index": "(error object is a table value)",
    "tostring_table": "(error object is a table value)",
}


def test_error_objects_become_text_as_lua_says_them(nginx):
    """A table error gives its __tostring, else Lua's own words, to the caller
    and to the log. No error object, however hostile (a metatable whose
    __index raises, a __tostring that raises or returns a table), stops the
    handlers: the caller hears at once, and the next message is handled."""
    n = nginx(workers=2, init_worker=ERROR_HANDLERS,
              allow_log=[r'\[error\].*ngx_ipc: handler for message "\w+" failed'])
    got = {}
    for name in ERROR_TEXTS:
        res, err, took = n.lua(f"""
            local t0 = ngx.now()
            local res, err = ipc.call({n.pids[1]}, "{name}", "", 2)
            ngx.update_time()
            return res, err, ngx.now() - t0
        """, worker=0)
        assert res is None
        assert took < 0.5, f"{name}: the caller waited {took} s"
        got[name] = err
        assert n.lua(f'return ipc.call({n.pids[1]}, "fine", "{name}", 2)', worker=0) == \
            [f"fine {name}"]
    want = {k: "handler error: " + v for k, v in ERROR_TEXTS.items()}
    assert got.pop("number").endswith(": 404") and want.pop("number")
    assert got == want
    log = n.error_log()
    for name, text in ERROR_TEXTS.items():
        assert re.search(f'handler for message "{name}" failed: (.*: )?{re.escape(text)}, context',
                         log), name
    assert "table: 0x" not in log


CODE_CACHE_LOCATIONS = """
    location = /cache-off {
        lua_code_cache off;
        content_by_lua_block {
            local ipc = require "ngx.ipc"
            ngx.say("loaded")
        }
    }
    location = /cache-off-pcall {
        lua_code_cache off;
        content_by_lua_block {
            local ok, err = pcall(require, "ngx.ipc")
            ngx.say(tostring(ok), ": ", err)
        }
    }
"""

CODE_CACHE_ERROR = ('ngx.ipc does not work with "lua_code_cache off": each request then runs '
                    'in a Lua VM of its own, and ngx.ipc needs the one VM of its worker; '
                    'remove "lua_code_cache off" (or set it on) where ngx.ipc is used')


def test_lua_code_cache_off_is_refused_at_require(nginx):
    """Migration row: with lua_code_cache off, require names the directive;
    where the cache is on (and in init_worker), ngx.ipc works as usual."""
    # each cache-off request VM runs init_by_lua again, in the worker: the
    # harness's Lua files must be readable there (a checkout in a mode-0700
    # directory is not, for nginx's default worker user)
    n = nginx(workers=2, init_worker=RECORDERS + 'ipc.receive("m", record("m"))',
              main="user root;" if os.geteuid() == 0 else "",
              locations=CODE_CACHE_LOCATIONS,
              allow_log=[r"lua_code_cache is off", r"\[error\].*lua_code_cache off"])
    status, body = n.get("/cache-off")
    assert status == 500
    assert CODE_CACHE_ERROR in n.error_log()
    assert n.get("/cache-off-pcall") == (200, f"false: {CODE_CACHE_ERROR}\n".encode())
    assert n.lua(f'return ipc.send({n.pids[1]}, "m", "cache on here")', worker=0) == [True]
    assert wait_received(n, "m", 1, 1) == [(n.pids[0], b"cache on here")]


def test_receive_in_init_by_lua_raises(nginx):
    """Migration row: as in ngx_lua_ipc, handlers cannot be registered in the
    master (init_by_lua*): no worker would run them."""
    n = nginx(workers=1, init="""
        local ok, err = pcall(require("ngx.ipc").receive, "x", print)
        INIT_RECEIVE = tostring(ok) .. " " .. tostring(err)
    """)
    (got,) = n.lua("return INIT_RECEIVE")
    assert got.startswith("false ") and "ipc.receive cannot be used in init_by_lua*" in got, got
    assert "init_worker_by_lua*" in got


def test_default_handler_gets_name_and_data(nginx):
    """Migration row: default_handler(name, data), as in ngx_lua_ipc. Setting
    it is enough to start this worker's delivery (ngx_lua_ipc needs a
    receive() call for that)."""
    n = nginx(workers=2, init_worker="""
        ipc.default_handler = function(name, data)
            T.push("default", name .. "=" .. data .. " from " .. ipc.sender)
        end
    """)
    n.lua(f'assert(ipc.send({n.pids[1]}, "whatever", "d"))', worker=0)
    assert n.wait_results("default", 1) == [f"whatever=d from {n.pids[0]}".encode()]


def test_reply_outside_a_handler_raises_and_sender_is_nil(nginx):
    """Migration rows: ipc.sender is nil outside a handler; ipc.reply raises."""
    n = nginx(workers=1)
    assert n.lua("return ipc.sender == nil") == [True]
    with pytest.raises(LuaError, match="ipc.reply called outside an ipc handler"):
        n.lua('ipc.reply("r", "x")')


def test_self_send_never_runs_the_handler_inside_send(nginx):
    """Migration row: ngx_lua_ipc may run a handler inside send() to itself;
    ngx_ipc never does (rule 6)."""
    n = nginx(workers=1, init_worker='ipc.receive("me", function(d) T.push("me", d) end)')
    assert n.lua("""
        assert(ipc.send(ngx.worker.pid(), "me", "later"))
        return #T.list("me")
    """) == [0]
    assert n.wait_results("me", 1) == [b"later"]


def test_long_names_and_nil_data(nginx):
    """Migration rows: names up to 65535 bytes (ngx_lua_ipc: 254), nil data
    as "" (ngx_lua_ipc: an error), too long a name refused with nil, err."""
    n = nginx(workers=2, init_worker=RECORDERS + """
        ipc.receive(string.rep("n", 65535), record("long"))
        ipc.receive("nil", record("nil"))
    """)
    dst = n.pids[1]
    assert n.lua(f"""
        assert(ipc.send({dst}, string.rep("n", 65535), "x"))
        assert(ipc.send({dst}, "nil", nil))
        assert(ipc.send({dst}, "nil"))
        return ipc.send({dst}, string.rep("n", 65536), "x")
    """, worker=0) == [None, "name too long"]
    assert wait_received(n, "long", 1, 1) == [(n.pids[0], b"x")]
    assert wait_received(n, "nil", 1, 2) == [(n.pids[0], b""), (n.pids[0], b"")]


def test_a_raising_handler_does_not_stop_delivery(nginx):
    """Migration row: in ngx_lua_ipc a handler error stops later alerts; here
    it is logged and counted, and the next message is handled."""
    n = nginx(workers=2, init_worker=RECORDERS + """
        ipc.receive("boom", function() error("kaboom") end)
        ipc.receive("m", record("m"))
    """, allow_log=[r'\[error\].*handler for message "boom" failed'])
    dst = n.pids[1]
    n.lua(f'assert(ipc.send({dst}, "boom", "")) assert(ipc.send({dst}, "m", "after"))', worker=0)
    assert wait_received(n, "m", 1, 1) == [(n.pids[0], b"after")]
    assert stats(n, 1)["handler_errors"] == 1

