"""Bad messages under the compatibility modules' names.

ngx.ipc.worker_events and ngx.ipc.events take their events as ngx.ipc
messages ("ngx.ipc.worker_events", "resty.events#1", "resty.events#1:pub"),
which any Lua code of any worker can send too, by mistake or not. A message
that is not what the modules send must be logged and dropped, cost nothing
later (no wait for ids that were never taken, no stuck handler thread), and
the events posted after it must arrive as usual.
"""

import pytest

from test_compat_events import start as start_events, wait_got
from test_compat_worker_events import post, start as start_we, wait_events

WE_BAD = [
    "garbage",                       # no id
    "abc {}",                        # id not a number
    "1.5 {}",                        # not an integer
    "-3 {}",                         # not a taken id
    "0 {}",
    "inf {}",
    "99999999999 {}",                # far past the counter: no wait for the ids between
    "2 not json",                    # a plausible id with bad data
]


def send_all(n, name, payloads, worker=0):
    """ipc.broadcast(name, p) for each p, from `worker`."""
    lua = "local ipc = require 'ngx.ipc'\n" + "\n".join(
        f"assert(ipc.broadcast({name!r}, {p!r}))" for p in payloads)
    n.lua(lua, worker=worker)


@pytest.mark.parametrize("workers", [1, 2])
def test_worker_events_drop_what_they_did_not_send(nginx, workers):
    n = start_we(nginx, workers, allow_log=[r"worker-events: malformed event message",
                                            r"worker-events: dropping event",
                                            r"worker-events: failed to decode"])
    send_all(n, "ngx.ipc.worker_events", WE_BAD)
    # the next real events come at once, in every worker, in order
    assert post(n, 0, "after", "e1", "one") == [True]
    assert post(n, workers - 1, "after", "e2", "two") == [True]
    for w in range(workers):
        got = wait_events(n, w, 2, "after", timeout=3)
        assert [(e["e"], e["d"]) for e in got] == [("e1", "one"), ("e2", "two")]
    assert "malformed event message" in n.error_log()


@pytest.mark.parametrize("suffix", ["", ":pub"])
def test_resty_events_drop_what_they_did_not_send(nginx, suffix):
    n = start_events(nginx, workers=2,
                     allow_log=[r"failed to decode event data",
                                r"event worker failed|failed to (store|publish) event"])
    name = "resty.events#1" + suffix
    # strings that do not decode, and string.buffer values of the wrong shape
    n.lua(f"""
        local ipc = require "ngx.ipc"
        local buffer = require "string.buffer"
        local enc = buffer.new({{ dict = {{ "spec", "data", "source", "event",
                                            "wid", "unique" }} }})
        local bad = {{ "garbage", "",
            enc:reset():encode(42):get(),
            enc:reset():encode({{}}):get(),
            enc:reset():encode({{ spec = 1, data = {{}} }}):get(),
            enc:reset():encode({{ source = {{}}, event = 7, data = "x" }}):get(),
            enc:reset():encode({{ spec = {{ unique = {{}} }}, data = "x" }}):get(),
        }}
        for _, b in ipairs(bad) do assert(ipc.broadcast("{name}", b)) end
    """, worker=1)
    assert n.lua('return ev:publish("all", "src", "evt", "after")', worker=0) == [True]
    for w in range(2):
        assert wait_got(n, w, 1)[-1] == "src|evt|after|0"
