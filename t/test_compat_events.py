"""resty.events (Kong/lua-resty-events) over ngx.ipc: ngx.ipc.events and
ngx.ipc.events_compat, checked against real nginx with several workers for
what lua-resty-events' users rely on: who gets an event and with which wid,
the order of the handlers and of the events (one order in every worker),
local events ahead of earlier broadcasts, unique events once per
unique_timeout, handlers one at a time, payload limits and their error
texts, its DEBUG lines, a broker that crashes, and bad arguments.

Every worker records what its handlers got with T.push("ev:<worker id>",
"<source>|<event>|<data>|<wid>").
"""

import os
import re
import signal

import pytest

import harness
from harness import LuaError, wait_for

DEBUG_LOG = "error_log logs/debug.log debug;"

RECORD = """
    local me = ngx.worker.id()
    local function rec(tag)
        return function(data, event, source, wid)
            T.push(tag .. ":" .. me, source .. "|" .. event .. "|"
                   .. tostring(data) .. "|" .. tostring(wid))
        end
    end
"""


def start(nginx, workers=2, opts="{}", init_worker="", subscribe=True, **kw):
    """nginx with `ev` made in init_by_lua from opts, init_worker() called,
    and (subscribe) one "*"/"*" recorder under "ev"."""
    sub = 'ev:subscribe("*", "*", rec("ev"))' if subscribe else ""
    return nginx(workers=workers, main=DEBUG_LOG + kw.pop("main", ""),
                 init=f'ev = require("ngx.ipc.events").new({opts})',
                 init_worker=RECORD + f"""
                     assert(ev:init_worker())
                     {sub}
                     {init_worker}
                 """, **kw)


def debug_log(n):
    return (n.prefix / "logs" / "debug.log").read_text(errors="replace")


def got(n, worker, tag="ev"):
    return [x.decode() for x in n.results(f"{tag}:{worker}")]


def wait_got(n, worker, count, tag="ev"):
    return [x.decode() for x in n.wait_results(f"{tag}:{worker}", count)]


def test_broadcast_reaches_every_worker_with_the_publisher_wid(nginx):
    n = start(nginx, workers=4)
    assert n.lua('return ev:publish("all", "src", "evt", "hello")', worker=2) == [True]
    for w in range(4):
        assert wait_got(n, w, 1) == ["src|evt|hello|2"]
    wait_for(lambda: "event published to 4 workers" in debug_log(n),
             what="the broker's DEBUG line")


def test_current_is_local_async_and_ahead_of_earlier_broadcasts(nginx):
    n = start(nginx, workers=2)
    # in the call: nothing ran yet (asynchronous), even for "current"
    assert n.lua("""
        assert(ev:publish("all", "s", "one", "1"))
        assert(ev:publish("current", "s", "two", "2"))
        assert(ev:publish("all", "s", "three", "3"))
        return #T.list("ev:1")
    """, worker=1) == [0]
    assert wait_got(n, 1, 3) == ["s|two|2|nil", "s|one|1|1", "s|three|3|1"]
    assert wait_got(n, 0, 2) == ["s|one|1|1", "s|three|3|1"]
    log = debug_log(n)
    assert "worker-events: handling event; source=s, event=two, wid=nil" in log
    assert re.search(r"worker-events: handling event; source=s, event=one, wid=1", log)


def test_is_ready_after_init_worker_phase(nginx):
    n = start(nginx, init_worker="T.state.ready_in_init = ev:is_ready() or false")
    for w in range(2):
        assert n.lua("return T.state.ready_in_init, ev:is_ready()", worker=w) == [False, True]


def test_handler_call_order_and_unsubscribe(nginx):
    n = start(nginx, subscribe=False, init_worker="""
        local function tag(t)
            return function(data, event, source) T.push("order:" .. me, t .. " " .. event) end
        end
        ids = {}
        ids.se = ev:subscribe("s", "e", tag("s/e"))
        ids.s = ev:subscribe("s", "*", tag("s/*"))
        ids.all = ev:subscribe("*", "*", tag("*/*"))
        ids.all2 = ev:subscribe("*", "*", tag("*/*2"))
    """)
    n.lua('ev:publish("all", "s", "e", "x")', worker=0)
    assert wait_got(n, 1, 4, "order") == ["*/* e", "*/*2 e", "s/* e", "s/e e"]
    n.lua('ev:publish("all", "s", "f", "x")', worker=0)
    assert wait_got(n, 1, 7, "order")[4:] == ["*/* f", "*/*2 f", "s/* f"]
    n.lua('ev:unsubscribe(ids.all); ev:unsubscribe(ids.se)', worker=1)
    n.lua('ev:publish("all", "s", "e", "x")', worker=0)
    assert wait_got(n, 1, 9, "order")[7:] == ["*/*2 e", "s/* e"]
    assert len(wait_got(n, 0, 11, "order")) == 11    # worker 0 kept all four


def test_handlers_run_one_at_a_time_and_may_yield(nginx):
    n = start(nginx, subscribe=False, init_worker="""
        ev:subscribe("*", "*", function(data, event)
            T.push("run:" .. me, "start " .. event)
            ngx.sleep(0.05)
            T.push("run:" .. me, "end " .. event)
        end)
    """)
    n.lua("""
        ev:publish("current", "s", "a")
        ev:publish("all", "s", "b")
        ev:publish("current", "s", "c")
    """, worker=0)
    assert wait_got(n, 0, 6, "run") == ["start a", "end a", "start c", "end c",
                                        "start b", "end b"]


def test_unique_handled_by_one_worker_once_per_timeout(nginx):
    n = start(nginx, workers=4, opts="{ unique_timeout = 0.3 }")
    for w in range(4):
        assert n.lua(f'return ev:publish("hash1", "s", "u", "from{w}")', worker=w) == [True]

    def total():
        return sum(len(got(n, w)) for w in range(4))

    wait_for(lambda: total() >= 1, what="the unique event")
    wait_for(lambda: debug_log(n).count("unique event is duplicate on worker #") >= 3,
             what="three duplicates dropped by the broker")
    assert total() == 1
    # after the timeout the same hash goes through again, once
    wait_for(lambda: n.lua('return ev:publish("hash1", "s", "u", "again")', worker=1)
             and total() == 2, timeout=5, what="the hash again, once expired")
    events = sorted(e for w in range(4) for e in got(n, w))
    assert len(events) == 2 and events[0] == "s|u|again|1"
    assert "event published to 1 workers" in debug_log(n)


def test_every_worker_sees_one_order_of_all_publishers(nginx):
    per, workers = 200, 4
    n = start(nginx, workers=workers)
    for w in range(workers):
        n.lua(f"""
            ngx.timer.at(0, function()
                for i = 1, {per} do
                    assert(ev:publish("all", "w{w}", "e", tostring(i)))
                    if i % 7 == 0 then ngx.sleep(0.001) end
                end
            end)
        """, worker=w)
    seqs = [wait_got(n, w, per * workers) for w in range(workers)]
    assert all(s == seqs[0] for s in seqs), "workers saw different orders"
    for w in range(workers):   # each publisher's own order is kept
        mine = [int(e.split("|")[2]) for e in seqs[0] if e.startswith(f"w{w}|")]
        assert mine == list(range(1, per + 1))
    # 800 events per worker's handler thread, which visits the event loop
    # every 100 without ngx.sleep(0) (a warning each time on stock nginx)
    assert "ngx.sleep(0) called" not in n.error_log()


def test_events_published_before_init_worker_are_kept(nginx):
    # worker 1 publishes in init_worker_by_lua before its init_worker(),
    # worker 0 (the broker) rebroadcasts as soon as it runs
    n = nginx(workers=2, main=DEBUG_LOG,
              init='ev = require("ngx.ipc.events").new({})',
              init_worker=RECORD + """
                  assert(ev:publish("all", "early", "e", "w" .. me))
                  assert(ev:init_worker())
                  ev:subscribe("*", "*", rec("ev"))
              """)
    for w in range(2):
        assert sorted(wait_got(n, w, 2)) == ["early|e|w0|0", "early|e|w1|1"]


def test_a_slow_worker_that_starts_late_misses_nothing(nginx):
    # lua-resty-events' "slow client on node start": worker 1 calls
    # init_worker() only later, from a timer. Meanwhile worker 0 publishes
    # (its event reaches worker 1 before worker 1's Lua uses ngx.ipc: kept
    # for it, ipc_early_messages), and so does worker 1 itself (kept in its
    # outbox until its init_worker(), as lua-resty-events' queue keeps it).
    n = nginx(workers=2, main=DEBUG_LOG,
              init='ev = require("ngx.ipc.events").new({})',
              init_worker=RECORD + """
                  _G.rec = rec
                  if me == 0 then
                      assert(ev:init_worker())
                      ev:subscribe("*", "*", rec("ev"))
                  end
              """)
    assert n.lua('return ev:publish("all", "s", "from0", "a")', worker=0) == [True]
    assert wait_got(n, 0, 1) == ["s|from0|a|0"]
    wait_for(lambda: n.lua('return ipc.stats("all")[2].received', worker=0) == [1],
             what="the event reached worker 1's inbox")
    assert n.lua('return ev:publish("all", "s", "from1", "b")', worker=1) == [True]
    n.lua("""
        assert(ngx.timer.at(0, function()
            assert(ev:init_worker())
            ev:subscribe("*", "*", _G.rec("ev"))
        end))
    """, worker=1)
    assert wait_got(n, 1, 2) == ["s|from0|a|0", "s|from1|b|1"]
    assert wait_got(n, 0, 2) == ["s|from0|a|0", "s|from1|b|1"]


def test_data_types_are_serialized_like_string_buffer(nginx):
    n = start(nginx, subscribe=False, init_worker="""
        ev:subscribe("t", "*", function(data, event)
            T.push("types:" .. me, event .. "=" .. require("cjson").encode(data))
        end)
    """)
    n.lua("""
        ev:publish("all", "t", "table", { a = 1, b = { "x", "y" }, [3] = true })
        ev:publish("all", "t", "number", 1.5)
        ev:publish("all", "t", "bool", false)
        ev:publish("all", "t", "nil")
    """, worker=0)
    out = wait_got(n, 1, 4, "types")
    assert out[1:] == ["number=1.5", "bool=false", "nil=null"]
    assert out[0].startswith("table=") and '"b":["x","y"]' in out[0]


def test_payload_limits_and_their_errors(nginx):
    n = start(nginx, opts="{ max_payload_len = 200 }")
    assert n.lua("""
        local a = { ev:publish("all", "s", "big", string.rep("a", 200)) }
        local b = { ev:publish("hash", "s", "big", string.rep("a", 200)) }
        local c = { ev:publish("all", "s", "small", "x") }
        local d = { ev:publish("current", "s", "local-big", string.rep("a", 1000)) }
        return a[2], b[2], c[1], d[1]
    """, worker=1) == ["failed to publish event: payload exceeds the limitation (200)",
                       "failed to publish event: payload exceeds the limitation (200)",
                       True, True]
    assert wait_got(n, 0, 1) == ["s|small|x|1"]


def test_default_limit_64k_and_large_limit(nginx):
    n = start(nginx)
    assert n.lua('return select(2, ev:publish("all", "s", "e", string.rep("a", 65537)))',
                 worker=0) == ["failed to publish event: payload exceeds the limitation (65536)"]
    m = start(nginx, opts="{ max_payload_len = 4 * 1024 * 1024 }", subscribe=False,
              init_worker='ev:subscribe("*", "*", function(d) T.push("big:" .. me, T.digest(d)) end)')
    m.lua('assert(ev:publish("all", "s", "e", T.pattern(3 * 1024 * 1024, 7)))', worker=0)
    want = harness.digest(harness.pattern(3 * 1024 * 1024, 7))
    assert m.wait_results("big:1", 1) == [want]


def test_bad_arguments_raise_the_library_errors(nginx):
    n = start(nginx)

    def err(code):
        with pytest.raises(LuaError) as e:
            n.lua(code, worker=0)
        return str(e.value)

    assert "target is required" in err('ev:publish(nil, "s", "e")')
    assert "target is required" in err('ev:publish("", "s", "e")')
    assert "source is required" in err('ev:publish("all", 1, "e")')
    assert "event is required" in err('ev:publish("all", "s", {})')
    assert "source is required" in err('ev:subscribe("", "e", print)')
    assert "expected function, got: string" in err('ev:subscribe("s", "e", "f")')
    assert "id is required" in err('ev:unsubscribe(1)')
    assert "cannot serialize 'function'" in err('ev:publish("all", "s", "e", print)')
    new = 'require("ngx.ipc.events").new'
    assert '"broker_id" option must be a number' in err(new + '({ broker_id = "1" })')
    assert '"broker_id" option is invalid' in err(new + '({ broker_id = 2 })')
    assert '"listening" option must start with unix:' in err(new + '({ listening = "/x" })')
    assert '"unique_timeout" must be greater than 0' in err(new + '({ unique_timeout = 0 })')
    assert '"max_queue_len" option is invalid' in err(new + '({ max_queue_len = -1 })')
    assert '"max_payload_len" option is invalid' in err(new + '({ max_payload_len = 2^24 + 1 })')
    assert '"enable_privileged_agent" option must be a boolean' in \
        err(new + '({ enable_privileged_agent = 1 })')
    # nothing broke: events still flow
    n.lua('ev:publish("all", "s", "after", "ok")', worker=0)
    assert wait_got(n, 1, 1) == ["s|after|ok|0"]


def test_handler_error_is_logged_and_delivery_goes_on(nginx):
    n = start(nginx, subscribe=False, init_worker="""
        ev:subscribe("*", "*", function() error("boom") end)
        ev:subscribe("*", "*", rec("ev"))
    """, allow_log=[r"worker-events: event callback failed; source=s, event=e"])
    n.lua('ev:publish("all", "s", "e", "d")', worker=0)
    assert wait_got(n, 1, 1) == ["s|e|d|0"]
    wait_for(lambda: "event callback failed; source=s, event=e, wid=0 error='" in n.error_log(),
             what="the handler's error in the log")


def test_listening_socket_and_run_are_harmless(nginx):
    path = f"/tmp/ngx-ipc-events-{os.getpid()}.sock"
    sock = f"unix:{path}"
    n = start(nginx, opts=f'{{ listening = "{sock}" }}',
              http=f"""server {{
                  listen {sock};
                  location / {{ content_by_lua_block {{ ev:run() }} }}
              }}""")
    n.lua('ev:publish("all", "s", "e", "d")', worker=1)
    for w in range(2):
        assert wait_got(n, w, 1) == ["s|e|d|1"]
    n.stop()
    if os.path.exists(path):
        os.unlink(path)


def test_testing_mode_handles_in_the_call(nginx):
    n = start(nginx, opts="{ testing = true }")
    assert n.lua('ev:publish("all", "s", "e", "d"); return #T.list("ev:0")', worker=0) == [1]
    assert got(n, 0) == ["s|e|d|nil"] and got(n, 1) == []


def test_broker_crash_keeps_what_publishers_hold(nginx):
    n = start(nginx, workers=3, allow_log=[r"exited on signal 9"])
    broker = n.pids[0]
    # worker 2 publishes 1..300, one every 2 ms, while the broker is killed
    n.lua("""
        ngx.timer.at(0, function()
            for i = 1, 300 do
                local ok, err = ev:publish("all", "s", "e", i)
                if not ok then T.push("failed", err) end
                ngx.sleep(0.002)
            end
        end)
    """, worker=2)
    wait_for(lambda: len(got(n, 1)) >= 20, what="the first events")
    os.kill(broker, signal.SIGKILL)
    seqs = [wait_for(lambda w=w: (s := got(n, w)) and s[-1] == "s|e|300|2" and s,
                     what=f"the last event in worker {w}") for w in (1, 2)]
    assert seqs[0] == seqs[1]
    numbers = [int(e.split("|")[2]) for e in seqs[0]]
    # in order, none twice; what the dead broker had accepted and not yet
    # rebroadcast is lost (as in lua-resty-events), what publishers held
    # while no broker ran is not
    assert numbers == sorted(set(numbers))
    assert len(numbers) >= 250, f"lost {300 - len(numbers)}"
    assert n.results("failed") == []
    assert n.lua("return ipc.pids()[1]", worker=1) != [broker]


def test_compat_module(nginx):
    n = nginx(workers=2, main=DEBUG_LOG,
              init='ev = require("ngx.ipc.events_compat")',
              init_worker=RECORD + """
                  assert(ev.configure({ unique_timeout = 5 }))
                  assert(ev.configured())
                  ev.register(rec("ev"))
                  handler2 = rec("two")
                  ev.register(handler2, "s", "a", "b")
              """)
    assert n.lua("""
        local r1 = ev.post("s", "a", "1")
        local r2 = ev.post_local("s", "b", "2")
        local r3 = ev.post("s", "c", "3", "uniq")
        local r4 = { ev.post("s", "d", string.rep("x", 70000)) }
        return r1, r2, r3, r4[2], ev.poll()
    """, worker=1) == ["done", "done", "done",
                       "failed to publish event: payload exceeds the limitation (65536)",
                       "done"]
    assert wait_got(n, 1, 2, "two") == ["s|b|2|nil", "s|a|1|1"]
    wait_for(lambda: sum(len(got(n, w)) for w in range(2)) == 4, what="4 events")
    n.lua("ev.unregister(handler2)", worker=0)
    n.lua('ev.post("s", "b", "x")', worker=0)
    wait_for(lambda: "s|b|x|0" in got(n, 0), what="the event after unregister")
    assert got(n, 0, "two") == ["s|a|1|1"]
