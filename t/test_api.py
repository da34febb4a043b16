"""The Lua API of the README, call by call (all but `call`)."""

import pytest

from ipc_lua import (RECORDERS, STAT_KEYS, WORKERS, received, stats,
                     wait_received)

HANDLERS = RECORDERS + """
    ipc.receive("msg", record("msg"))
"""


def last(workers):
    return workers - 1


@pytest.mark.parametrize("workers", WORKERS)
def test_pids_lists_workers_by_id(nginx, workers):
    n = nginx(workers=workers)
    for worker in range(workers):
        assert n.lua("return ipc.pids()", worker=worker) == [n.pids]


@pytest.mark.parametrize("workers", WORKERS)
def test_send_reaches_each_worker_from_each_worker(nginx, workers):
    n = nginx(workers=workers, init_worker=HANDLERS)
    for sender in range(workers):
        assert n.lua("""
            local results = {}
            for i, pid in ipairs(ipc.pids()) do
                results[i] = ipc.send(pid, "msg", "from " .. ngx.worker.id())
            end
            return results
        """, worker=sender) == [[True] * workers]
    for target in range(workers):
        got = wait_received(n, "msg", target, workers)
        assert sorted(got) == sorted((n.pids[s], b"from %d" % s) for s in range(workers))


@pytest.mark.parametrize("workers", WORKERS)
def test_broadcast_reaches_every_worker_once_sender_included(nginx, workers):
    n = nginx(workers=workers, init_worker=HANDLERS)
    sender = last(workers)
    assert n.lua('return ipc.broadcast("msg", "hello")', worker=sender) == [True]
    # A second broadcast as a fence: once it is in, a duplicate of the first
    # would have had to arrive before it (rule 2) or not at all.
    assert n.lua('return ipc.broadcast("msg", "fence")', worker=sender) == [True]
    expected = [(n.pids[sender], b"hello"), (n.pids[sender], b"fence")]
    for target in range(workers):
        assert wait_received(n, "msg", target, 2) == expected
    assert all(received(n, "msg", t) == expected for t in range(workers))


@pytest.mark.parametrize("workers", WORKERS)
def test_broadcast_include_self_false_skips_only_the_sender(nginx, workers):
    n = nginx(workers=workers, init_worker=HANDLERS)
    sender = last(workers)
    assert n.lua('return ipc.broadcast("msg", "others", {include_self = false})',
                 worker=sender) == [True]
    assert n.lua('return ipc.broadcast("msg", "fence", {include_self = true})',
                 worker=sender) == [True]
    pid = n.pids[sender]
    for target in range(workers):
        if target == sender:
            assert wait_received(n, "msg", target, 1) == [(pid, b"fence")]
        else:
            assert wait_received(n, "msg", target, 2) == [(pid, b"others"), (pid, b"fence")]
    assert received(n, "msg", sender) == [(pid, b"fence")]


@pytest.mark.parametrize("workers", WORKERS)
def test_receive_forms_replace_and_remove(nginx, workers):
    n = nginx(workers=workers, init_worker=RECORDERS)
    target, sender = last(workers), 0
    assert n.lua("""
        local one = ipc.receive("one", function(d) T.push("forms", "one " .. d) end)
        local many = ipc.receive({
            two = function(d) T.push("forms", "two " .. d) end,
            three = function(d) T.push("forms", "three " .. d) end,
        })
        return one, many
    """, worker=target) == [True, True]

    send_all = """
        local pid = ipc.pids()[%d]
        for _, name in ipairs({"one", "two", "three"}) do
            assert(ipc.send(pid, name, "%s"))
        end
    """
    n.lua(send_all % (target + 1, "a"), worker=sender)
    assert n.wait_results("forms", 3) == [b"one a", b"two a", b"three a"]

    # A second receive() for a name replaces its handler; nil removes it.
    n.lua("""
        ipc.receive("one", function(d) T.push("forms", "new one " .. d) end)
        ipc.receive("two", nil)
    """, worker=target)
    n.lua(send_all % (target + 1, "b"), worker=sender)
    assert n.wait_results("forms", 5)[3:] == [b"new one b", b"three b"]
    # "two b" was taken (unhandled) before "three b": rule 2.
    assert stats(n, target)["unhandled"] == 1 and stats(n, target)["dropped"] == 0
    assert len(n.results("forms")) == 5


@pytest.mark.parametrize("workers", WORKERS)
def test_default_handler_gets_unhandled_names(nginx, workers):
    n = nginx(workers=workers, init_worker=RECORDERS + """
        ipc.receive("known", record("known"))
        ipc.default_handler = function(name, data)
            T.push("default:" .. me, name .. "|" .. data .. "|" .. tostring(ipc.sender))
        end
    """)
    target, sender = last(workers), 0
    pid = n.pids[target]
    n.lua(f"""
        assert(ipc.send({pid}, "known", "k1"))
        assert(ipc.send({pid}, "unknown", "u1"))
        assert(ipc.send({pid}, "odd\\0name\\255", "u2"))
    """, worker=sender)
    spid = n.pids[sender]
    assert wait_received(n, "known", target, 1) == [(spid, b"k1")]
    assert n.wait_results(f"default:{target}", 2) == [
        b"unknown|u1|%d" % spid, b"odd\0name\xff|u2|%d" % spid]

    n.lua('ipc.receive("known", nil)', worker=target)
    n.lua(f'assert(ipc.send({pid}, "known", "k2"))', worker=sender)
    assert n.wait_results(f"default:{target}", 3)[2] == b"known|k2|%d" % spid
    assert received(n, "known", target) == [(spid, b"k1")]
    assert stats(n, target)["dropped"] == 0 and stats(n, target)["unhandled"] == 0


@pytest.mark.parametrize("workers", WORKERS)
def test_sender_is_set_only_while_a_handler_runs(nginx, workers):
    n = nginx(workers=workers, init_worker=HANDLERS)
    target = last(workers)
    for worker in range(workers):
        assert n.lua("return ipc.sender", worker=worker) == [None]
        n.lua(f'assert(ipc.send(ipc.pids()[{target + 1}], "msg", "x"))', worker=worker)
    got = wait_received(n, "msg", target, workers)
    assert sorted(pid for pid, _ in got) == sorted(n.pids)
    assert n.lua("return ipc.sender", worker=target) == [None]


@pytest.mark.parametrize("workers", WORKERS)
def test_reply_goes_back_to_the_sender(nginx, workers):
    n = nginx(workers=workers, init_worker=RECORDERS + """
        ipc.receive("ping", function(data)
            T.push("reply-result:" .. me, tostring(ipc.reply("pong", data .. "!")))
        end)
        ipc.receive("pong", record("pong"))
    """)
    asker, answerer = 0, last(workers)
    n.lua(f'assert(ipc.send({n.pids[answerer]}, "ping", "p1"))', worker=asker)
    assert wait_received(n, "pong", asker, 1) == [(n.pids[answerer], b"p1!")]
    assert n.results(f"reply-result:{answerer}") == [b"true"]


@pytest.mark.parametrize("workers", WORKERS)
def test_number_and_nil_data(nginx, workers):
    n = nginx(workers=workers, init_worker=HANDLERS)
    target = last(workers)
    pid = n.pids[target]
    assert n.lua(f"""
        return ipc.send({pid}, "msg", 42), ipc.send({pid}, "msg", -7),
               ipc.send({pid}, "msg", 1.5), ipc.send({pid}, "msg", nil),
               ipc.send({pid}, "msg")
    """, worker=0) == [True] * 5
    assert n.lua('return ipc.broadcast("msg", 7), ipc.broadcast("msg")',
                 worker=0) == [True, True]
    got = [data for _, data in wait_received(n, "msg", target, 7)]
    assert got == [b"42", b"-7", b"1.5", b"", b"", b"7", b""]


@pytest.mark.parametrize("workers", WORKERS)
def test_stats_counters(nginx, workers):
    n = nginx(workers=workers, init_worker=HANDLERS + """
        ipc.receive("boom", function() error("counted") end)
    """, allow_log=[r"counted"])
    sender, target = 0, last(workers)
    before = stats(n, sender)
    assert set(STAT_KEYS) <= set(before)
    assert all(isinstance(before[k], (int, float)) for k in STAT_KEYS)
    assert all(before[k] == 0 for k in STAT_KEYS), before

    pid = n.pids[target]
    results = n.lua(f"""
        local sent = ipc.send({pid}, "msg", "a") and ipc.send({pid}, "msg", "bb")
                     and ipc.send({pid}, "msg", T.pattern(4096, 1))
        local ok, err = ipc.send({pid}, string.rep("n", 65536), "refused")
        sent = sent and ipc.send({pid}, "boom", "e") and ipc.send({pid}, "msg", "fence")
        return sent, ok, err
    """, worker=sender)
    assert results == [True, None, "name too long"]
    wait_received(n, "msg", target, 4)  # the fence is last: all is handled

    out = stats(n, sender)
    inbound = stats(n, target)
    assert out["sent"] == 5
    assert out["refused"] == 1
    assert out["sent_bytes"] >= 1 + 2 + 4096 + 1 + 5
    assert inbound["received"] == 5
    assert inbound["received_bytes"] == out["sent_bytes"]
    assert inbound["handler_errors"] == 1
    assert inbound["dropped"] == 0
    if target != sender:
        assert inbound["sent"] == 0 and out["received"] == 0
    for counters in (out, inbound):
        assert counters["calls"] == 0 and counters["call_timeouts"] == 0
        # everything sent has been handled, so nothing can be held back
        assert counters["queued_bytes"] == 0
