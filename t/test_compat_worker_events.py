"""resty.worker.events' API over ngx.ipc (lib/ngx/ipc/worker_events.lua),
checked against real nginx with several workers: what Kong's
lua-resty-worker-events promises its users, written from that behaviour.

Every worker registers one global callback that records
{source, event, pid, data} (as JSON) in the results list "ev:<worker id>",
and configures with interval = 0: no timer polls, so what arrives was pushed.
"""

import json

import pytest

from harness import LuaError, wait_for

HTTP = "lua_shared_dict we 1m;"

RECORD = """
    local we = require "ngx.ipc.worker_events"
    local cjson = require "cjson"
    local me = ngx.worker.id()
    local function record(tag)
        return function(data, event, source, pid)
            T.push(tag .. ":" .. me, cjson.encode({ s = source, e = event,
                   p = pid or "nil", d = data == nil and "nil" or data }))
        end
    end
"""

INIT_WORKER = RECORD + """
    we.register(record("ev"))
    assert(we.configure{ shm = "we", interval = 0, timeout = 0.5 })
"""

WE = ('local we = require "ngx.ipc.worker_events" '
      # what a call returned, as one string: "nil|err", "true|nil"
      'local function R(a, b) return tostring(a) .. "|" .. tostring(b) end ')


def start(nginx, workers, init_worker=INIT_WORKER, **kw):
    return nginx(workers=workers, http=HTTP + kw.pop("http", ""),
                 init_worker=init_worker, **kw)


def events(n, worker, tag="ev", source=None):
    got = [json.loads(x) for x in n.results(f"{tag}:{worker}")]
    return [e for e in got if source is None or e["s"] == source]


def wait_events(n, worker, count, source, tag="ev", timeout=10):
    found = []

    def enough():
        found[:] = events(n, worker, tag, source)
        return len(found) >= count
    wait_for(enough, timeout, what=f"{count} {source} events in worker {worker}")
    return found


def post(n, worker, *args):
    """we.post(*args) in that worker (args: JSON values, none null)."""
    return n.lua(WE + 'local args = require("cjson").decode([==[' + json.dumps(args)
                 + ']==]) return we.post(unpack(args))', worker=worker)


@pytest.mark.parametrize("workers", [1, 3])
def test_post_reaches_every_worker_with_data_event_source_pid(nginx, workers):
    n = start(nginx, workers)
    data = {"list": [1, 2, 3], "nested": {"ok": True}, "text": "x\u00e9\0y"}
    assert post(n, workers - 1, "src", "ev1", data) == [True]
    assert post(n, 0, "src", "ev2", "plain") == [True]
    for w in range(workers):
        got = wait_events(n, w, 2, "src")
        assert got == [
            {"s": "src", "e": "ev1", "p": n.pids[workers - 1], "d": data},
            {"s": "src", "e": "ev2", "p": n.pids[0], "d": "plain"},
        ]
    assert n.lua(WE + "return we.configured()") == [True]


def test_started_event_and_debug_lines(nginx):
    n = start(nginx, 2, main="error_log logs/debug.log debug;")
    assert post(n, 1, "src", "dbg", 1) == [True]
    for w in range(2):
        wait_events(n, w, 1, "src")
    # every worker handled its own "started" (a worker configured after
    # another one's started was posted does not see that one, as in the
    # library: it starts at the counter it found)
    for w in range(2):
        own = [e for e in events(n, w, source="resty-worker-events")
               if e["p"] == n.pids[w]]
        assert [e["e"] for e in own] == ["started"]
    log = (n.prefix / "logs" / "debug.log").read_text()
    for pid in n.pids:
        assert (f"worker-events: handling event; source=src, event=dbg, "
                f"pid={n.pids[1]}") in log
        assert f"worker-events: handling event; source=resty-worker-events, " \
               f"event=started, pid={pid}" in log


def test_post_local_stays_local_and_goes_ahead_of_earlier_posts(nginx):
    n = start(nginx, 2)
    assert n.lua(WE + """
        return we.post("s", "a", 1), we.post_local("s", "b", { 2 }),
               we.post("s", "c", 3)""", worker=0) == [True, True, True]
    got = wait_events(n, 0, 3, "s")
    assert [(e["e"], e["p"]) for e in got] == [
        ("b", "nil"), ("a", n.pids[0]), ("c", n.pids[0])]
    assert got[0]["d"] == [2]
    assert [e["e"] for e in wait_events(n, 1, 2, "s")] == ["a", "c"]
    # the fence: a later post reaches worker 1 after anything local would have
    assert post(n, 0, "s", "fence", 0) == [True]
    assert [e["e"] for e in wait_events(n, 1, 3, "s")] == ["a", "c", "fence"]


LOAD = INIT_WORKER + """
    ipc.receive("go", function(count)
        for i = 1, tonumber(count) do
            assert(we.post("load", tostring(i), ngx.worker.id()))
            if i % 7 == 0 then ngx.sleep(0) end
        end
    end)
"""


@pytest.mark.parametrize("workers", [2, 4])
def test_every_worker_sees_all_publishers_in_one_order(nginx, workers):
    n = start(nginx, workers, init_worker=LOAD)
    per = 300
    assert n.lua(f'return ipc.broadcast("go", "{per}")') == [True]
    seqs = [wait_events(n, w, per * workers, "load", timeout=30)
            for w in range(workers)]
    first = [(e["d"], e["e"]) for e in seqs[0]]
    assert len(first) == per * workers
    for w in range(1, workers):
        assert [(e["d"], e["e"]) for e in seqs[w]] == first
    for publisher in range(workers):     # each one's own order, whole
        assert [int(e) for d, e in first if d == publisher] == \
            list(range(1, per + 1))


ORDER = RECORD + """
    local function cb(name)
        return function(data, event, source)
            T.push("order:" .. me, name .. " " .. event)
        end
    end
    -- registered in the reverse of the order they run in
    local weak = { cb("weak-event"), cb("weak-global") }
    T.state.weak = weak        -- kept alive: only the lists are weak
    we.register(cb("event"), "src", "e1", "e2")
    we.register_weak(weak[1], "src", "e1")
    we.register(cb("source"), "src")
    we.register(cb("global"))
    we.register_weak(weak[2])
    assert(we.configure{ shm = "we", interval = 0 })
"""


def test_call_order_global_then_source_then_event(nginx):
    n = start(nginx, 2, init_worker=ORDER)
    for event in [("src", "e1"), ("src", "e2"), ("other", "e1"), ("other", "end")]:
        assert post(n, 0, *event, 1) == [True]
    for w in range(2):
        got = []

        def ended():
            got[:] = [g.decode() for g in n.results(f"order:{w}")]
            return "global end" in got
        wait_for(ended, what=f"the last event in worker {w}")
        got = [g for g in got if not g.endswith(" started")]
        # each level: its weak list, then its strong one
        assert got == ["weak-global e1", "global e1", "source e1",
                       "weak-event e1", "event e1",
                       "weak-global e2", "global e2", "source e2", "event e2",
                       "weak-global e1", "global e1",
                       "weak-global end", "global end"]


def test_unregister_and_weak_callbacks(nginx):
    n = start(nginx, 1)
    assert n.lua(WE + """
        local calls = {}
        local function g() calls[#calls + 1] = "g" end
        local function s() calls[#calls + 1] = "s" end
        we.register(g)
        we.register(s, "u", "x")
        local weak = { function() calls[#calls + 1] = "w" end }
        we.register_weak(weak[1], "u")
        local r = {}
        r[1] = we.unregister(g)
        r[2] = we.unregister(g)                 -- no longer there
        r[3] = we.unregister(s, "u", "y", "x")  -- one of the events
        r[4] = we.register(g)                   -- returns nothing
        we.post_local("u", "x")
        assert(we.poll() == "done")
        r[5] = table.concat(calls, ",")
        calls = {}
        weak = nil
        collectgarbage() collectgarbage()
        we.post_local("u", "x")
        assert(we.poll() == "done")
        r[6] = table.concat(calls, ",")
        return r[1], r[2], r[3], r[4] == nil, r[5], r[6]
    """) == [True, False, True, True, "g,w", "g"]


UNIQUE = INIT_WORKER.replace("timeout = 0.5", "timeout = 0.3")


def test_unique_event_is_handled_by_one_worker_per_timeout(nginx):
    workers = 3
    n = start(nginx, workers, init_worker=UNIQUE)

    def handled(event):
        return sum(1 for w in range(workers)
                   for e in events(n, w, source="u") if e["e"] == event)

    def fence(name):
        assert post(n, 0, "f", name, 0) == [True]
        for w in range(workers):
            wait_events(n, w, int(name), "f")

    # from every worker at once (one eval each, in turn), the same key
    for w in range(workers):
        assert post(n, w, "u", "first", w, "key") == [True]
    fence("1")
    assert handled("first") == 1
    # once the key expired (timeout = 0.3), the next one is handled once more
    deadline = n.lua('return ngx.shared.we:ttl("events-one:key")')[0]
    assert 0 < deadline <= 0.3
    wait_for(lambda: n.lua('return ngx.shared.we:get("events-one:key") == nil')[0],
             timeout=5, what="the unique key to expire")
    assert post(n, 1, "u", "second", 1, "key") == [True]
    assert post(n, 2, "u", "second", 2, "key") == [True]
    fence("2")
    assert handled("second") == 1


SLOW = INIT_WORKER + """
    we.register(function(data, event)
        T.push("slow:" .. me, "enter " .. event)
        T.push("slow:" .. me, "poll " .. tostring(we.poll()))
        ngx.sleep(0.02)
        T.push("slow:" .. me, "leave " .. event)
    end, "slow")
"""


def test_callbacks_run_one_at_a_time_and_poll_is_recursive_inside(nginx):
    n = start(nginx, 2, init_worker=SLOW)
    assert n.lua(WE + """
        for i = 1, 4 do assert(we.post("slow", tostring(i))) end
        assert(we.post_local("slow", "local"))
        return true""", worker=1) == [True]
    # from outside any callback, with nothing pending (in worker 0)
    expected = []
    for e in ["local", "1", "2", "3", "4"]:
        expected += [f"enter {e}", "poll recursive", f"leave {e}"]
    got = n.wait_results("slow:1", 15)
    assert [g.decode() for g in got] == expected
    got = n.wait_results("slow:0", 12)
    assert [g.decode() for g in got] == expected[3:]
    wait_for(lambda: n.lua(WE + "return we.poll()", worker=0) == ["done"],
             what='poll() == "done" outside callbacks')


def test_a_failing_callback_is_logged_and_the_others_run(nginx):
    n = start(nginx, 2, init_worker=INIT_WORKER + """
        we.register(function() error("boom in callback") end, "bad")
        we.register(record("after"), "bad")
    """, allow_log=[r"worker-events: event callback failed; source=bad, "
                    r"event=e, pid=\d+ error='.*boom in callback"])
    assert post(n, 0, "bad", "e", {"k": 1}) == [True]
    for w in range(2):
        assert len(wait_events(n, w, 1, "bad", tag="after")) == 1
    wait_for(lambda: n.error_log().count("boom in callback") >= 2,
             what="the callback errors in the log")
    assert 'data={"k":1}' in n.error_log()


def test_bad_arguments_get_the_library_errors(nginx):
    n = start(nginx, 1, allow_log=[r"worker-events: failed posting event"])
    assert n.lua(WE + """
        return R(we.post(nil, "e")), R(we.post("", "e")), R(we.post("s", 1)),
               R(we.post_local("s", "")), R(we.post("s", "e", { f = print })),
               R(we.post("s", "e", { [1] = 1, [1000] = 2 }))""") == [
        "nil|source is required", "nil|source is required",
        "nil|event is required", "nil|event is required",
        'nil|failed posting event "e" by "s"; '
        "Cannot serialise function: type not supported",
        'nil|failed posting event "e" by "s"; '
        "Cannot serialise table: excessively sparse array",
    ]
    for code, message in [
        ("we.register(nil)", "expected function, got: nil"),
        ("we.register_weak('x', 's')", "expected function, got: string"),
        ("we.unregister(42)", "expected function, got: number"),
        ("we.configure('shm')", "Expected a table, got string"),
        ("return we.events.nosuch", "event 'nosuch' is an unknown event"),
    ]:
        with pytest.raises(LuaError, match=message):
            n.lua(WE + code)
    # once started, the library takes no other shm and (as it does) finds
    # none when none is given: its options cannot be changed
    assert n.lua(WE + """
        local ev = we.event_list("my", "a", "b")
        return R(we.configure({ shm = "we" })), R(we.configure({ timeout = 1 })),
               ev._source, ev.a, ev.b, we.events._source, we.events.started,
               we.events.stopping""") == [
        "nil|Already started, cannot change shm", 'nil|shm "nil" not found',
        "my", "a", "b", "resty-worker-events", "started", "stopping"]
    # nothing broke: the worker still handles events
    assert post(n, 0, "s", "after", 1) == [True]
    wait_events(n, 0, 1, "s")


def test_configure_needs_an_existing_shm_first(nginx):
    n = start(nginx, 1, init_worker=RECORD)
    assert n.lua(WE + """
        local r = { R(we.configure({})), R(we.configure({ shm = "nope" })) }
        for _, opts in ipairs({
            { timeout = "1" }, { timeout = 0 }, { interval = -1 },
            { wait_max = -1 }, { wait_interval = -1 }, { shm_retries = -1 },
            { interval = "x" },
        }) do
            opts.shm = "we"
            r[#r + 1] = R(we.configure(opts))
        end
        return r, we.configured()""") == [[
        'nil|"shm" option required to start', 'nil|shm "nope" not found',
        'nil|optional "timeout" option must be a number',
        'nil|"timeout" must be greater than 0',
        'nil|"interval" must be greater than or equal to 0',
        'nil|"wait_max" must be greater than or equal to 0',
        'nil|"wait_interval" must be greater than or equal to 0',
        'nil|"shm_retries" must be 0 or greater',
        'nil|optional "interval" option must be a number',
    ], False]


def test_oversize_payload_is_refused_and_the_next_is_not_held(nginx):
    n = start(nginx, 2, main="ipc_max_message 64k;",
              allow_log=[r"worker-events: failed posting event"])
    assert n.lua(WE + """
        return R(we.post("big", "e", string.rep("x", 70000))),
               R(we.post("big", "ok", string.rep("y", 60000)))""", worker=0) == [
        'nil|failed posting event "e" by "big"; message too large', "true|nil"]
    for w in range(2):
        got = wait_events(n, w, 1, "big")
        assert [(e["e"], len(e["d"])) for e in got] == [("ok", 60000)]
    assert "dropping event" not in n.error_log()


def test_an_id_taken_and_never_posted_is_dropped_after_wait_max(nginx):
    n = start(nginx, 2, init_worker=INIT_WORKER.replace(
        "interval = 0,", "interval = 0, wait_max = 0.1,"),
        allow_log=[r"worker-events: dropping event; waiting for event data "
                   r"timed out, id: \d+"])
    (lost,) = n.lua('return ngx.shared.we:incr("events-last", 1)')
    assert post(n, 1, "s", "after", 1) == [True]
    for w in range(2):
        assert [e["e"] for e in wait_events(n, w, 1, "s")] == ["after"]
    assert n.error_log().count(
        f"dropping event; waiting for event data timed out, id: {lost}") == 2
