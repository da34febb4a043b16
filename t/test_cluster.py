"""Cluster broadcasts between nginx nodes through one Redis stream
(ipc_cluster; README: "Cluster"; docs/ARCHITECTURE.md: "The cluster link").

Every test starts its own redis-server (t/redis_server.py: 127.0.0.1, a free
port, its own directory, AOF with appendfsync always) and its own nginx
nodes (separate prefixes and ports). Handlers record, per process, what they
handled: "<sender_node> <sender> <data>"; tests compare it byte for byte.
"""

import os
import re
import signal
import time

import pytest

from conftest import start_fails
from harness import LuaError, digest, wait_for
from redis_server import redis_server  # noqa: F401 (the fixture)

# Each process records under its PID, so generations (reloads) stay apart.
RECORD = """
    local me = ngx.worker.pid()
    ipc.receive("c", function(data)
        T.push("c:" .. me, tostring(ipc.sender_node) .. " "
                           .. tostring(ipc.sender) .. " " .. data)
    end)
    ipc.receive("big", function(data)
        T.push("big:" .. me, tostring(ipc.sender_node) .. " " .. T.digest(data))
    end)
    ipc.receive("ipc:cluster_gap", function(data)
        T.push("gap:" .. me, data)
    end)
"""

# What a Redis that goes away, or refuses us, makes nodes log: our lines,
# and lua-nginx-module's own for its cosockets (lua_socket_log_errors).
REDIS_TROUBLE = [r"\[error\].*ngx_ipc cluster: ",
                 r"\[error\].* (connect|recv|send|writev)\(\) failed \(\d+: "]

# A flood: n broadcasts of "<tag> <i>", in a timer so that it runs while
# the test kills things; it pauses a little every 50 messages, and retries
# a "queue full" (the outbox fills while Redis is away) after 1 ms.
FLOOD = """
    local tag, n, spread = %r, %d, %r
    local ok, err = ngx.timer.at(0, function()
        local i = 1
        local deadline = ngx.now() + 60
        while i <= n and ngx.now() < deadline do
            local ok, err = ipc.broadcast("c", tag .. " " .. i, { scope = "cluster" })
            if ok then
                i = i + 1
                if i %% 50 == 0 then ngx.sleep(spread) end
            elseif err == "queue full" then
                ngx.sleep(0.001)
            else
                T.push("flood-error", err)
                return
            end
        end
        T.set("flood-done:" .. tag, i - 1)
    end)
    assert(ok, err)
    return true
"""


def cluster_main(r, node, extra=""):
    return f"ipc_cluster {r.url()} stream=t node={node} {extra};"


def start_node(nginx, r, node, workers=2, extra="", allow_log=(), **kwargs):
    return nginx(workers=workers, main=cluster_main(r, node, extra),
                 init_worker=RECORD + kwargs.pop("init_worker", ""),
                 allow_log=list(allow_log), **kwargs)


def cluster_state(n, worker=0):
    return n.lua("return ipc.cluster()", worker=worker)[0]


def wait_linked(*nodes, timeout=10):
    """Until each node's agent is connected and reading the stream."""
    for n in nodes:
        wait_for(lambda: cluster_state(n)["connected"], timeout=timeout,
                 what=f"the cluster link of {n.prefix}")


def handled(n, pid, kind="c"):
    """[(sender_node, sender, data), ...] that process pid handled."""
    out = []
    for item in n.results(f"{kind}:{pid}"):
        node, sender, data = item.split(b" ", 2)
        out.append((node.decode(), sender.decode(), data))
    return out


def seqs(items, node, tag):
    """The sequence numbers of `tag` from `node` in handled() items."""
    prefix = tag.encode() + b" "
    return [int(d[len(prefix):].split(b" ", 1)[0]) for n, _, d in items
            if n == node and d.startswith(prefix)]


def wait_all(nodes, node, tag, count, timeout=30):
    """Until every worker of every node handled `count` of `tag` from node."""
    for n in nodes:
        for pid in n.pids:
            wait_for(lambda: len(seqs(handled(n, pid), node, tag)) >= count,
                     timeout=timeout,
                     what=f"{count} '{tag}' from {node} in {pid} "
                          f"(has {len(seqs(handled(n, pid), node, tag))})")


def assert_exactly_once_in_order(nodes, node, tag, count):
    for n in nodes:
        for pid in n.pids:
            got = seqs(handled(n, pid), node, tag)
            assert got == list(range(1, count + 1)), \
                f"{pid}: {len(got)} items, first wrong at " + \
                str(next((i for i, (a, b) in enumerate(zip(got, range(1, count + 1)))
                          if a != b), len(got)))


def test_every_worker_of_every_node_once_in_order(redis_server, nginx):
    r = redis_server()
    a = start_node(nginx, r, "a", workers=2)
    b = start_node(nginx, r, "b", workers=3)
    c = start_node(nginx, r, "c", workers=4)
    nodes = [a, b, c]
    wait_linked(*nodes)
    for n, name in zip(nodes, "abc"):
        for w in range(len(n.pids)):
            n.lua(f"""
                for i = 1, 100 do
                    assert(ipc.broadcast("c", "{name}{w} " .. i, {{ scope = "cluster" }}))
                end
            """, worker=w)
    for n, name in zip(nodes, "abc"):
        for w in range(len(n.pids)):
            wait_all(nodes, name, f"{name}{w}", 100)
            assert_exactly_once_in_order(nodes, name, f"{name}{w}", 100)

    # the local part came through the local path, with the sender's PID;
    # the remote ones name their node and have no local sender
    items = handled(b, b.pids[0])
    assert {s for n, s, d in items if n == "b"} <= {str(p) for p in b.pids}
    assert {s for n, s, d in items if n != "b"} == {"nil"}
    total = sum(len(n.pids) for n in nodes) * 100
    for n in nodes:
        st = cluster_state(n)
        assert st["published"] == len(n.pids) * 100
        assert st["received"] == total - len(n.pids) * 100, st
        assert st["gaps"] == 0 and st["errors"] == 0, st
    # a stream entry holds a batch of one node's messages, c of them
    entries = r.command("XRANGE", "t", "-", "+")
    counts = [int(dict(zip(f[::2], f[1::2]))[b"c"]) for _, f in entries]
    assert sum(counts) == total and len(entries) <= total


def test_payloads_arrive_byte_exact(redis_server, nginx):
    r = redis_server()
    a = start_node(nginx, r, "a", workers=2)
    b = start_node(nginx, r, "b", workers=2, extra="max_message=2m")
    wait_linked(a, b)
    sizes = [0, 1, 255, 4096, 65536, 1024 * 1024 - 2]  # + 2 bytes: 1 MiB, the default limit
    a.lua("""
        local sizes = { %s }
        for i, size in ipairs(sizes) do
            local s = T.pattern(size, i) .. "\\0\\255"
            assert(ipc.broadcast("big", s, { scope = "cluster" }))
        end
    """ % ", ".join(map(str, sizes)), worker=1)
    want = [digest(pattern_bytes(s, i + 1)) for i, s in enumerate(sizes)]
    for n in (a, b):
        for pid in n.pids:
            wait_for(lambda: len(n.results(f"big:{pid}")) == len(sizes),
                     what=f"{len(sizes)} payloads in {pid}")
            assert [i.split(b" ", 1)[1] for i in n.results(f"big:{pid}")] == want
    # over max_message (1m by default on a): refused, nothing delivered
    assert a.lua("""
        return ipc.broadcast("big", string.rep("x", 1024 * 1024 + 1), { scope = "cluster" })
    """) == [None, "message too large"]
    assert cluster_state(a)["refused"] == 1


def pattern_bytes(size, seed):
    from harness import pattern
    return pattern(size, seed) + b"\0\xff"


def test_include_self_false_leaves_out_only_the_caller(redis_server, nginx):
    r = redis_server()
    a = start_node(nginx, r, "a", workers=2)
    b = start_node(nginx, r, "b", workers=2)
    wait_linked(a, b)
    a.lua('assert(ipc.broadcast("c", "x 1", { scope = "cluster", include_self = false }))',
          worker=0)
    wait_all([b], "a", "x", 1)
    wait_for(lambda: seqs(handled(a, a.pids[1]), "a", "x") == [1], what="a's other worker")
    assert handled(a, a.pids[0]) == []


def test_broadcast_from_a_phase_that_cannot_yield(redis_server, nginx):
    """init_worker and log phases: the call queues and returns."""
    r = redis_server()
    b = start_node(nginx, r, "b", workers=2)
    wait_linked(b)
    a = start_node(nginx, r, "a", workers=1, init_worker="""
        assert(ipc.broadcast("c", "init 1", { scope = "cluster" }))
    """, locations="""
        location = /logged {
            return 200;
            log_by_lua_block {
                require("ngx.ipc").broadcast("c", "log 1", { scope = "cluster" })
            }
        }
    """)
    assert a.get("/logged")[0] == 200
    wait_all([b], "a", "log", 1)
    wait_all([a], "a", "init", 1)


def test_redis_killed_mid_flood_loses_nothing(redis_server, nginx):
    """SIGKILL redis-server mid-flood and start it again on the same AOF:
    every entry of the surviving publisher arrives once, in order."""
    r = redis_server()
    a = start_node(nginx, r, "a", allow_log=REDIS_TROUBLE)
    b = start_node(nginx, r, "b", allow_log=REDIS_TROUBLE)
    c = start_node(nginx, r, "c", allow_log=REDIS_TROUBLE)
    wait_linked(a, b, c)
    assert a.lua(FLOOD % ("f", 3000, 0.002), worker=0) == [True]
    wait_for(lambda: len(seqs(handled(b, b.pids[0]), "a", "f")) >= 500,
             what="the flood to get going")
    r.kill()
    time.sleep(0.3)  # Redis is away a while: the flood waits in the outbox
    r.restart()
    wait_all([a, b, c], "a", "f", 3000, timeout=60)
    assert_exactly_once_in_order([a, b, c], "a", "f", 3000)
    for n in (b, c):
        st = cluster_state(n)
        assert st["connected"] and st["reconnects"] >= 1 and st["gaps"] == 0, st


def agent_of(n):
    pid = wait_for(lambda: cluster_state(n)["agent"], what="an agent")
    assert pid in n.pids
    return pid


def test_agent_killed_mid_flood_is_replaced_and_loses_nothing(redis_server, nginx):
    r = redis_server()
    # a worker killed while it held the lock of the tests' shared dict makes
    # the master say so as it frees it
    kill_lines = [r"exited on signal 9", r'shared memory zone "results" was locked by \d+']
    a = start_node(nginx, r, "a", workers=3, allow_log=kill_lines)
    b = start_node(nginx, r, "b", workers=3, allow_log=kill_lines)
    wait_linked(a, b)
    # the flood runs in a worker that is not a's agent
    agent_a, agent_b = agent_of(a), agent_of(b)
    w = next(k for k, p in enumerate(a.pids) if p != agent_a)
    assert a.lua(FLOOD % ("f", 4000, 0.002), worker=w) == [True]
    wait_for(lambda: len(seqs(handled(b, b.pids[0]), "a", "f")) >= 300, what="the flood")
    os.kill(agent_a, signal.SIGKILL)  # the publisher's agent ...
    killed = time.monotonic()
    wait_for(lambda: cluster_state(a, worker=w)["agent"] not in (0, agent_a),
             what="a new agent on node a")
    assert time.monotonic() - killed < 1.5
    wait_for(lambda: len(seqs(handled(b, b.pids[0]), "a", "f")) >= 1500, what="more flood")
    os.kill(agent_b, signal.SIGKILL)  # ... and then the receiver's
    wait_for(lambda: set(a.worker_pids()) == set(a.pids) - {agent_a} | set(a.worker_pids())
             and len(a.worker_pids()) == 3, what="a's respawn")
    wait_for(lambda: len(b.worker_pids()) == 3 and agent_b not in b.worker_pids(),
             what="b's respawn")
    # the survivors got everything exactly once, in order
    survivors_a = [p for p in a.pids if p != agent_a]
    survivors_b = [p for p in b.pids if p != agent_b]
    for n, pids in ((a, survivors_a), (b, survivors_b)):
        for pid in pids:
            wait_for(lambda: len(seqs(handled(n, pid), "a", "f")) >= 4000, timeout=30,
                     what=f"the whole flood in {pid}")
            assert seqs(handled(n, pid), "a", "f") == list(range(1, 4001)), pid
    # b's respawned worker handles what came after it started, in order
    newcomer = (set(b.worker_pids()) - set(b.pids)).pop()
    got = seqs(handled(b, newcomer), "a", "f")
    assert got == list(range(got[0], 4001)) if got else True


def reload_node(n, timeout=10):
    """SIGHUP the master, wait until all new workers announced themselves."""
    old = set(n.worker_pids())
    os.kill(n.master_pid, signal.SIGHUP)

    def new_workers():
        status, body = n.request("GET", "/_h/workers", timeout=1, retry_wrong_worker=False)
        if status != 200:
            return None
        pids = [int(line.split()[1]) for line in body.decode().splitlines()]
        return pids if len(pids) == n.workers and not set(pids) & old \
            and set(pids) <= set(n.worker_pids()) else None

    n.pids = wait_for(new_workers, timeout=timeout, what="the new generation")
    return old


def test_reload_mid_flood_loses_nothing(redis_server, nginx):
    """Reload the publishing node and a receiving node mid-flood: the zone
    (outbox, position) outlives the reload; the receiver's new workers get
    every entry after their start, the old ones those before."""
    r = redis_server()
    a = start_node(nginx, r, "a")
    b = start_node(nginx, r, "b")
    wait_linked(a, b)
    assert a.lua(FLOOD % ("f", 3000, 0.003), worker=0) == [True]
    wait_for(lambda: len(seqs(handled(b, b.pids[0]), "a", "f")) >= 400, what="the flood")
    old_b = reload_node(b)
    wait_for(lambda: len(seqs(handled(b, b.pids[0]), "a", "f")) >= 200, what="after b's reload")
    reload_node(a)   # the flood's timer goes on in the old worker until done
    wait_linked(a, b)
    for pid in b.pids:
        wait_for(lambda: seqs(handled(b, pid), "a", "f")[-1:] == [3000], timeout=60,
                 what=f"the end of the flood in {pid}")
        got = seqs(handled(b, pid), "a", "f")
        assert got == list(range(got[0], 3001)), pid
    # old and new together saw every entry, each in order
    for pid in old_b:
        got = seqs(handled(b, pid), "a", "f")
        assert got == list(range(1, len(got) + 1)), pid
    first_new = min(seqs(handled(b, pid), "a", "f")[0] for pid in b.pids)
    last_old = min(len(seqs(handled(b, pid), "a", "f")) for pid in old_b)
    assert first_new <= last_old + 1
    assert cluster_state(b)["gaps"] == 0


def test_restarted_node_starts_at_the_end_and_reports_a_gap(redis_server, nginx):
    """A node's shared memory does not outlive nginx: started again, it
    cannot know what it missed. It starts at the stream's end and tells
    ipc:cluster_gap, once, if entries came after its last recorded
    position; a node that never ran before reports nothing."""
    r = redis_server()
    a = start_node(nginx, r, "a")
    c = start_node(nginx, r, "c")
    wait_linked(a, c)
    a.lua('assert(ipc.broadcast("c", "x 1", { scope = "cluster" }))')
    wait_all([c], "a", "x", 1)
    wait_for(lambda: r.command("HGET", "t:nodes", "c") is not None, what="c's position")
    c.stop()
    a.lua('for i = 2, 11 do assert(ipc.broadcast("c", "x " .. i, { scope = "cluster" })) end')
    c2 = start_node(nginx, r, "c")
    fresh = start_node(nginx, r, "d")   # never ran before: no gap
    wait_linked(c2, fresh)
    for pid in c2.pids:
        gaps = wait_for(lambda: handled_gap(c2, pid), what=f"the gap in {pid}")
        assert len(gaps) == 1 and b"were not seen" in gaps[0], gaps
        assert seqs(handled(c2, pid), "a", "x") == []
    a.lua('assert(ipc.broadcast("c", "x 12", { scope = "cluster" }))')
    wait_all([c2, fresh], "a", "x", 1)
    assert cluster_state(c2)["gaps"] == 1
    assert cluster_state(fresh)["gaps"] == 0
    assert all(fresh.results(f"gap:{pid}") == [] for pid in fresh.pids)


def handled_gap(n, pid):
    return n.results(f"gap:{pid}")


def two_nodes_after_x1(redis_server, nginx):
    """Redis, nodes a and b linked, and "x 1" from a handled by b."""
    r = redis_server()
    a = start_node(nginx, r, "a", allow_log=REDIS_TROUBLE)
    b = start_node(nginx, r, "b", allow_log=REDIS_TROUBLE)
    wait_linked(a, b)
    a.lua('assert(ipc.broadcast("c", "x 1", { scope = "cluster" }))')
    wait_all([b], "a", "x", 1)
    return r, a, b


def test_trimmed_past_a_cut_off_node_fires_the_gap_hook_once(redis_server, nginx):
    r, a, b = two_nodes_after_x1(redis_server, nginx)
    # cut b off: new connections need a password b does not have
    with cut_off(r, "b") as admin:
        wait_for(lambda: not cluster_state(b)["connected"], what="b cut off")
        a.lua('for i = 2, 50 do assert(ipc.broadcast("c", "x " .. i, { scope = "cluster" })) end')
        wait_for(lambda: cluster_state(a)["added"] >= 50, what="a's entries in Redis")
        admin.command("XTRIM", "t", "MAXLEN", "0")
        admin.command("CONFIG", "SET", "requirepass", "")
    wait_linked(b, timeout=15)
    for pid in b.pids:
        gaps = wait_for(lambda: handled_gap(b, pid), what=f"the gap in {pid}")
        assert len(gaps) == 1 and b"trimmed" in gaps[0], gaps
        assert seqs(handled(b, pid), "a", "x") == [1]
    a.lua('assert(ipc.broadcast("c", "x 51", { scope = "cluster" }))')
    wait_for(lambda: all(seqs(handled(b, p), "a", "x") == [1, 51] for p in b.pids),
             what="delivery after the gap")
    assert cluster_state(b)["gaps"] == 1
    assert all(len(handled_gap(b, p)) == 1 for p in b.pids)


def cut_off(r, node, password="sesame"):
    """Until undo(): new connections need a password the node does not have,
    and its connections are closed. Returns an admin client."""
    r.command("CONFIG", "SET", "requirepass", password)
    admin = r.client(password=password)
    for cid in client_ids_with(admin, node):
        admin.command("CLIENT", "KILL", "ID", cid)
    return admin


def test_messages_missing_from_the_stream_fire_the_gap_hook(redis_server, nginx):
    """A node numbers its messages: one missing from the stream (Redis lost
    it, or it was deleted), seen by a node that read the one before, is a
    gap too."""
    r, a, b = two_nodes_after_x1(redis_server, nginx)
    admin = cut_off(r, "b")
    try:
        wait_for(lambda: not cluster_state(b)["connected"], what="b cut off")
        for i in (2, 3, 4):   # one stream entry each
            a.lua(f'assert(ipc.broadcast("c", "x {i}", {{ scope = "cluster" }}))')
            wait_for(lambda: cluster_state(a)["added"] >= i, what=f"x {i} in Redis")
        # the stream as if Redis had lost the entry of "x 3"
        entries = admin.command("XRANGE", "t", "-", "+")
        admin.command("DEL", "t")
        for entry_id, fields in entries:
            if b"x 3" not in fields[fields.index(b"m") + 1]:
                admin.command("XADD", "t", entry_id, *fields)
        admin.command("CONFIG", "SET", "requirepass", "")
    finally:
        admin.close()
    wait_linked(b, timeout=15)
    for pid in b.pids:
        wait_for(lambda: seqs(handled(b, pid), "a", "x") == [1, 2, 4],
                 what=f"x 1, 2, 4 in {pid}")
        gaps = wait_for(lambda: handled_gap(b, pid), what=f"the gap in {pid}")
        assert gaps == [b"messages 3 to 3 of node a are missing from the stream"], gaps
    assert cluster_state(b)["gaps"] == 1


def client_ids_with(client, node):
    listing = client.command("CLIENT", "LIST")
    listing = listing.decode() if isinstance(listing, bytes) else listing
    return [re.search(r"\bid=(\d+)", line).group(1) for line in listing.splitlines()
            if f"name=ngx_ipc:{node}:" in line]


LOCAL = """
    ipc.receive("l", function(data) T.push("l:" .. ngx.worker.pid(), data) end)
"""


def assert_local_ipc_works(n):
    n.lua(f'assert(ipc.broadcast("l", "local ok"))', worker=0)
    for pid in n.pids:
        assert n.wait_results(f"l:{pid}", 1) == [b"local ok"]
    n.lua(f'assert(ipc.send({n.pids[-1]}, "l", "unicast ok"))', worker=0)
    assert n.wait_results(f"l:{n.pids[-1]}", 2)[1] == b"unicast ok"


def count_lines(n, pattern):
    return len(re.findall(pattern, n.error_log()))


@pytest.mark.parametrize("case", ["wrong port", "wrong password", "redis errors"])
def test_bad_redis_is_logged_clearly_and_local_ipc_goes_on(redis_server, nginx, case):
    r = redis_server(password="right-one")
    if case == "wrong port":
        from redis_server import free_port
        url = f"redis://127.0.0.1:{free_port()}"
        want = (r"cannot connect to 127\.0\.0\.1:\d+: connection refused "
                r"\(redis://127\.0\.0\.1:\d+/0\)")
    elif case == "wrong password":
        url = f"redis://wrong-one@127.0.0.1:{r.port}"
        want = r"authentication failed: WRONGPASS"
    else:
        url = f"redis://right-one@127.0.0.1:{r.port}"
        with r.client(password="right-one") as admin:
            admin.command("SET", "t", "not a stream")
        want = r"(XREAD failed|cannot resume): WRONGTYPE"
    n = nginx(workers=2, main=f"ipc_cluster {url} stream=t node=a;",
              init_worker=RECORD + LOCAL, allow_log=REDIS_TROUBLE)
    wait_for(lambda: count_lines(n, want) >= 1, what=f"the log line for {case}")
    assert "right-one" not in n.error_log() and "wrong-one" not in n.error_log()
    assert_local_ipc_works(n)
    # the cluster part is queued, and its local part delivered at once
    assert n.lua('return ipc.broadcast("c", "q 1", { scope = "cluster" })') == [True]
    wait_all([n], "a", "q", 1)
    st = cluster_state(n)
    assert not st["connected"] and st["errors"] >= 1 and st["queued_bytes"] > 0, st
    # a bounded rate: one line per 10 s per kind, whatever the retries
    time.sleep(1.5)
    assert count_lines(n, r"\[error\].*ngx_ipc cluster: ") <= 4, n.error_log()
    # the agent's retries (backoff up to 5 s) do not hold up a shutdown
    t0 = time.monotonic()
    assert n.stop(timeout=5) is None
    assert time.monotonic() - t0 < 2, "nginx took %.1f s to stop" % (time.monotonic() - t0)


def test_two_nodes_with_one_name_are_logged(redis_server, nginx):
    r = redis_server()
    clash = [r"\[error\].*another nginx uses this node's name \"same\""]
    a = start_node(nginx, r, "same", allow_log=clash)
    b = start_node(nginx, r, "same", allow_log=clash)
    wait_linked(a, b)
    a.lua('assert(ipc.broadcast("c", "x 1", { scope = "cluster" }))')
    wait_all([b], "same", "x", 1)   # delivered all the same
    assert re.search(clash[0], b.error_log())
    assert cluster_state(b)["node_clashes"] == 1


def test_without_ipc_cluster(nginx):
    n = nginx(workers=2, init_worker=LOCAL)
    assert n.lua('return ipc.broadcast("l", "x", { scope = "cluster" })') == \
        [None, "no ipc_cluster in this configuration"]
    assert n.lua("return ipc.cluster()") == [{"enabled": False, "connected": False}]
    with pytest.raises(LuaError, match=r"bad argument #3 to 'broadcast' \(scope \"local\" "
                                       r"or \"cluster\" expected, got planet\)"):
        n.lua('ipc.broadcast("l", "x", { scope = "planet" })')
    # a cluster broadcast does not wait: the outbox drains at Redis's pace
    with pytest.raises(LuaError, match=r"bad argument #3 to 'broadcast' \(wait is not "
                                       r"available with scope \"cluster\""):
        n.lua('ipc.broadcast("l", "x", { scope = "cluster", wait = 1 })')
    # sender_node is nil without a cluster; local scope is the default
    n.lua('assert(ipc.broadcast("l", "y", { scope = "local" }))')
    for pid in n.pids:
        assert n.wait_results(f"l:{pid}", 1) == [b"y"]


@pytest.mark.parametrize("args, message", [
    ("http://127.0.0.1:6379", "invalid ipc_cluster address"),
    ("redis://", "invalid ipc_cluster address"),
    ("redis://127.0.0.1:0", "invalid ipc_cluster address"),
    ("redis://127.0.0.1:70000", "invalid ipc_cluster address"),
    ("redis://127.0.0.1:6379/x", "invalid ipc_cluster address"),
    ("redis://127.0.0.1 color=blue", 'invalid ipc_cluster parameter "color=blue"'),
    ("redis://127.0.0.1 maxlen=0", 'invalid ipc_cluster parameter "maxlen=0"'),
    ("redis://127.0.0.1 max_message=1m queue=1m", "must hold twice"),
])
def test_bad_directive_refuses_to_start(args, message):
    log = start_fails(f"ipc_cluster {args};")
    assert "[emerg]" in log and message in log, log


def test_duplicate_directive_refuses_to_start():
    log = start_fails("ipc_cluster redis://127.0.0.1;\nipc_cluster redis://127.0.0.1;")
    assert '"ipc_cluster" directive is duplicate' in log, log


def test_outbox_is_bounded_while_redis_is_down_and_drains_after(redis_server, nginx):
    """Broadcasts made while Redis is away wait in the outbox, up to queue=;
    past it `nil, "queue full"` (counted, nothing delivered anywhere), and
    what was accepted goes out, in order, once Redis is back."""
    r = redis_server()
    small = "max_message=1k queue=160k"
    a = start_node(nginx, r, "a", extra=small, allow_log=REDIS_TROUBLE)
    b = start_node(nginx, r, "b", extra=small, allow_log=REDIS_TROUBLE)
    wait_linked(a, b)
    r.kill()
    wait_for(lambda: not cluster_state(a)["connected"], what="a to notice")
    accepted, err = a.lua("""
        local data = string.rep("d", 1000)
        for i = 1, 10000 do
            local ok, err = ipc.broadcast("c", "f " .. i .. " " .. data, { scope = "cluster" })
            if not ok then return i - 1, err end
        end
        return 10000, nil
    """, worker=0)
    assert err == "queue full" and 100 < accepted < 160, (accepted, err)
    st = cluster_state(a)
    assert st["refused"] == 1 and st["queued_bytes"] <= 160 * 1024, st
    # the accepted ones reach every local worker (their handlers run a
    # moment later), the refused one none
    for pid in a.pids:
        wait_for(lambda: len(seqs(handled(a, pid), "a", "f")) >= accepted,
                 what=f"the {accepted} accepted in {pid}")
        assert seqs(handled(a, pid), "a", "f") == list(range(1, accepted + 1))
    r.restart()
    wait_all([b], "a", "f", accepted, timeout=30)
    assert_exactly_once_in_order([b], "a", "f", accepted)
    wait_for(lambda: cluster_state(a)["queued_bytes"] == 0, what="the outbox to drain")


def test_handler_that_ends_its_thread_mid_batch_loses_no_later_message(redis_server, nginx):
    """A stream entry carries a batch: a handler that calls ngx.exit() in the
    middle of one ends the runner's light thread, and the rest of the batch
    is still handled, once, in order."""
    r = redis_server()
    exits = """
        ipc.receive("e", function(data)
            T.push("c:" .. ngx.worker.pid(), tostring(ipc.sender_node) .. " nil " .. data)
            if data == "e 100" then
                ngx.exit(ngx.OK)
            end
        end)
    """
    a = start_node(nginx, r, "a")
    b = start_node(nginx, r, "b", init_worker=exits)
    wait_linked(a, b)
    a.lua('for i = 1, 200 do assert(ipc.broadcast("e", "e " .. i, { scope = "cluster" })) end')
    wait_all([b], "a", "e", 200)
    assert_exactly_once_in_order([b], "a", "e", 200)
    assert re.search(r'the handler for message "e" ended its light thread', b.error_log())
