"""Delivery rules 1-7 of the README, payload bytes and sizes, master_process off."""

from concurrent.futures import ThreadPoolExecutor

import pytest

from harness import assert_idle, digest, lua_quote, pattern
from ipc_lua import RECORDERS, WORKERS, stats, wait_received

# Sizes mixed on purpose: small after big after small (rule 2).
MIXED_SIZES = [0, 1, 16, 4096, 65537, 1 << 20, 3, 300000, 255, 2 << 20, 17, 1000]

# Handlers "m0".."m<count-1>" record "<sender> m<i> <len>:<md5>" under
# "seq:<worker>"; "fence" records "<sender> fence".
SEQ_HANDLERS = RECORDERS + """
    local handlers = {}
    for i = 0, %(count)d - 1 do
        handlers["m" .. i] = function(data)
            T.push("seq:" .. me, tostring(ipc.sender) .. " m" .. i .. " " .. T.digest(data))
        end
    end
    handlers.fence = function()
        T.push("seq:" .. me, tostring(ipc.sender) .. " fence")
    end
    ipc.receive(handlers)
"""

SEND_TO_ALL = """
    local sizes = { %(sizes)s }
    local pids = ipc.pids()
    for i = 0, #sizes - 1 do
        local data = T.pattern(sizes[i + 1], i * 3 + ngx.worker.id())
        for _, pid in ipairs(pids) do
            local ok, err = ipc.send(pid, "m" .. i, data)
            if not ok then
                error("m" .. i .. " to " .. pid .. ": " .. tostring(err))
            end
        end
    end
    for _, pid in ipairs(pids) do
        assert(ipc.send(pid, "fence", ""))
    end
"""


def seq_expected(sender, sizes):
    """What one receiver must hold from one sender, in order."""
    return [b"m%d %s" % (i, digest(pattern(size, i * 3 + sender)))
            for i, size in enumerate(sizes)] + [b"fence"]


def check_per_sender(n, workers, sizes):
    """Each receiver got, from each sender, exactly seq_expected(), in order."""
    per_receiver = workers * (len(sizes) + 1)
    for receiver in range(workers):
        items = n.wait_results(f"seq:{receiver}", per_receiver)
        assert len(items) == per_receiver, f"worker {receiver}: duplicates"
        for sender in range(workers):
            prefix = b"%d " % n.pids[sender]
            from_sender = [i[len(prefix):] for i in items if i.startswith(prefix)]
            assert from_sender == seq_expected(sender, sizes), \
                f"worker {receiver} from worker {sender}"


@pytest.mark.parametrize("workers", WORKERS)
def test_send_order_exactly_once_mixed_sizes(nginx, workers):
    """Every worker sends to every worker at once; each pair stays in order."""
    n = nginx(workers=workers,
              init_worker=SEQ_HANDLERS % {"count": len(MIXED_SIZES)})
    code = SEND_TO_ALL % {"sizes": ", ".join(map(str, MIXED_SIZES))}
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda w: n.lua(code, worker=w), range(workers)))
    # The fence was sent last by each sender: once all fences are in, any
    # duplicate or reordering would already show.
    check_per_sender(n, workers, MIXED_SIZES)


@pytest.mark.parametrize("workers", WORKERS)
def test_broadcast_order_exactly_once_from_every_worker(nginx, workers):
    sizes = [0, 5, 100, 4096, 70000, 1, 300000, 7] * 2
    n = nginx(workers=workers, init_worker=SEQ_HANDLERS % {"count": len(sizes)})
    code = """
        local sizes = { %s }
        for i = 0, #sizes - 1 do
            local data = T.pattern(sizes[i + 1], i * 3 + ngx.worker.id())
            assert(ipc.broadcast("m" .. i, data))
        end
        assert(ipc.broadcast("fence"))
    """ % ", ".join(map(str, sizes))
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda w: n.lua(code, worker=w), range(workers)))
    check_per_sender(n, workers, sizes)


@pytest.mark.parametrize("workers", WORKERS)
def test_send_and_broadcast_never_run_a_handler_inline(nginx, workers):
    n = nginx(workers=workers, init_worker=RECORDERS + """
        ipc.receive("flag", function(data)
            T.state.flag = T.state.flag + 1
            T.push("flag:" .. me, data)
        end)
        T.state.flag = 0
    """)
    sender = workers - 1
    assert n.lua("""
        local ok1 = ipc.send(ngx.worker.pid(), "flag", "self")
        local after_send = T.state.flag
        local ok2 = ipc.broadcast("flag", "all")
        local after_broadcast = T.state.flag
        return ok1, after_send, ok2, after_broadcast
    """, worker=sender) == [True, 0, True, 0]
    assert n.wait_results(f"flag:{sender}", 2) == [b"self", b"all"]
    assert n.lua("return T.state.flag", worker=sender) == [2]
    for other in range(workers - 1):
        assert n.wait_results(f"flag:{other}", 1) == [b"all"]


@pytest.mark.parametrize("workers", WORKERS)
def test_messages_sent_from_init_worker_reach_init_worker_handlers(nginx, workers):
    """Rule 7, and rule 4 for workers that have not started yet."""
    n = nginx(workers=workers, init_worker=RECORDERS + """
        ipc.receive("hello", record("hello"))
        assert(ipc.broadcast("hello", tostring(me)))
        assert(ipc.send(ngx.worker.pid(), "hello", "self"))
    """)
    for worker in range(workers):
        got = wait_received(n, "hello", worker, workers + 1)
        assert sorted(got) == sorted(
            [(n.pids[s], str(s).encode()) for s in range(workers)]
            + [(n.pids[worker], b"self")])
        own = [data for pid, data in got if pid == n.pids[worker]]
        assert own == [str(worker).encode(), b"self"]


@pytest.mark.parametrize("workers", WORKERS)
def test_handler_error_is_logged_and_delivery_goes_on(nginx, workers):
    n = nginx(workers=workers, init_worker=RECORDERS + """
        ipc.receive("explode", function(data) error("kaboom " .. data) end)
        ipc.receive("msg", record("msg"))
    """, allow_log=[r"kaboom e\d"])
    sender, target = 0, workers - 1
    n.lua(f"""
        for i = 1, 3 do
            assert(ipc.send({n.pids[target]}, "explode", "e" .. i))
            assert(ipc.send({n.pids[target]}, "msg", "m" .. i))
        end
    """, worker=sender)
    spid = n.pids[sender]
    assert wait_received(n, "msg", target, 3) == [(spid, b"m1"), (spid, b"m2"), (spid, b"m3")]
    assert stats(n, target)["handler_errors"] == 3
    log = n.error_log().splitlines()
    for i in (1, 2, 3):
        lines = [line for line in log if f"kaboom e{i}" in line]
        assert len(lines) == 1, f"kaboom e{i}: {lines}"
        assert "[error]" in lines[0] and "explode" in lines[0]


@pytest.mark.parametrize("workers", WORKERS)
def test_yielding_handler_holds_later_messages_in_order(nginx, workers):
    n = nginx(workers=workers, init_worker="""
        local key = "y:" .. ngx.worker.id()
        ipc.receive({
            slow = function(data)
                T.push(key, "slow-start " .. data)
                ngx.sleep(0.2)
                T.push(key, "slow-end " .. data)
            end,
            fast = function(data) T.push(key, "fast " .. data) end,
        })
    """)
    sender, target = 0, workers - 1
    n.lua(f"""
        local pid = {n.pids[target]}
        for i, name in ipairs({{"slow", "fast", "fast", "slow", "fast"}}) do
            assert(ipc.send(pid, name, tostring(i)))
        end
    """, worker=sender)
    assert n.wait_results(f"y:{target}", 7) == [
        b"slow-start 1", b"slow-end 1", b"fast 2", b"fast 3",
        b"slow-start 4", b"slow-end 4", b"fast 5"]


@pytest.mark.parametrize("workers", WORKERS)
def test_message_without_handler_is_counted_as_unhandled(nginx, workers):
    n = nginx(workers=workers, init_worker=RECORDERS + """
        ipc.receive("msg", record("msg"))
    """)
    sender, target = 0, workers - 1
    n.lua(f"""
        assert(ipc.send({n.pids[target]}, "nobody", "x"))
        assert(ipc.broadcast("nobody", "y"))
        assert(ipc.broadcast("msg", "fence"))
    """, worker=sender)
    for worker in range(workers):
        wait_received(n, "msg", worker, 1)
        counters = stats(n, worker)
        assert counters["unhandled"] == (2 if worker == target else 1), counters
        assert counters["dropped"] == 0 and counters["handler_errors"] == 0, counters


BINARY_PAYLOADS = [
    bytes(range(256)),
    bytes(range(255, -1, -1)) * 4,
    b"\0",
    b"\0" * 1000,
    b"\0abc\0",
    b"\r\n\r\n" + b"\xff" * 10,
    b"x",
]


@pytest.mark.parametrize("workers", WORKERS)
def test_binary_payloads_and_names_arrive_exactly(nginx, workers):
    name = bytes(range(256))  # every byte value, NUL included
    n = nginx(workers=workers, init_worker=RECORDERS + f"""
        ipc.receive("bin", record("bin"))
        ipc.receive({lua_quote(name)}, record("binname"))
    """)
    sender, target = 0, workers - 1
    pid = n.pids[target]
    sends = "\n".join(f'assert(ipc.send({pid}, "bin", {lua_quote(p)}))'
                      for p in BINARY_PAYLOADS)
    n.lua(sends + f"\nassert(ipc.send({pid}, {lua_quote(name)}, {lua_quote(name)}))",
          worker=sender)
    spid = n.pids[sender]
    assert wait_received(n, "bin", target, len(BINARY_PAYLOADS)) == \
        [(spid, p) for p in BINARY_PAYLOADS]
    assert wait_received(n, "binname", target, 1) == [(spid, name)]


@pytest.mark.parametrize("workers", WORKERS)
@pytest.mark.parametrize("size", [0, 1, 16, 4096, 1 << 20, 32 << 20],
                         ids=["0", "1", "16", "4k", "1m", "32m"])
def test_payload_sizes(nginx, workers, size):
    """One message of `size` to every worker, then one broadcast of it."""
    n = nginx(workers=workers, init_worker=RECORDERS + """
        ipc.receive("small", record("got"))
        ipc.receive("big", record_digest("got"))
    """)
    name = "small" if size <= 4096 else "big"
    data = pattern(size, 42)
    expected = data if name == "small" else digest(data)
    spid = n.pids[0]

    n.lua(f"""
        local data = T.pattern({size}, 42)
        for _, pid in ipairs(ipc.pids()) do
            local ok, err = ipc.send(pid, "{name}", data)
            if not ok then error("send: " .. err) end
        end
    """, worker=0)
    for worker in range(workers):
        assert wait_received(n, "got", worker, 1) == [(spid, expected)]

    # Broadcast only once the sends are through: the queue limit (16m by
    # default) may refuse a second 32m message while the first is queued.
    assert n.lua(f'return ipc.broadcast("{name}", T.pattern({size}, 42))',
                 worker=0) == [True]
    for worker in range(workers):
        assert wait_received(n, "got", worker, 2) == [(spid, expected)] * 2


def test_master_process_off_messages_itself(nginx):
    n = nginx(master_process=False, init_worker=RECORDERS + """
        ipc.receive("msg", function(data)
            T.state.handled = (T.state.handled or 0) + 1
            T.push("msg:0", tostring(ipc.sender) .. " " .. data)
        end)
        assert(ipc.broadcast("msg", "from init_worker"))
    """)
    pid = n.master_pid
    assert n.lua("return ipc.pids()") == [[pid]]
    assert wait_received(n, "msg", 0, 1) == [(pid, b"from init_worker")]
    assert n.lua(f"""
        local handled = T.state.handled
        local a = ipc.send({pid}, "msg", "send")
        local b = ipc.broadcast("msg", "broadcast")
        local c = ipc.broadcast("msg", "not me", {{include_self = false}})
        local d = ipc.send({pid}, "msg", "fence")
        return a, b, c, d, T.state.handled - handled
    """) == [True, True, True, True, 0]
    assert wait_received(n, "msg", 0, 4) == [
        (pid, b"from init_worker"), (pid, b"send"), (pid, b"broadcast"), (pid, b"fence")]
    counters = stats(n, 0)
    assert counters["received"] == 4 and counters["dropped"] == 0


@pytest.mark.parametrize("workers", WORKERS)
def test_idle_nginx_uses_no_cpu(nginx, workers):
    """Rule 1: with nothing to deliver, no process wakes up to poll."""
    n = nginx(workers=workers, init_worker=RECORDERS + """
        ipc.receive("msg", record("msg"))
    """)
    n.lua('assert(ipc.broadcast("msg", "warm up"))', worker=0)
    for worker in range(workers):
        wait_received(n, "msg", worker, 1)

    assert_idle([n.master_pid] + n.pids, "idle")
