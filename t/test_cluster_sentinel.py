"""The cluster link through Redis Sentinel: `ipc_cluster redis+sentinel://`
and `replicas=N` (README: "Cluster", "Failover"; lib/ngx/ipc/cluster/dial.lua
and writer.lua).

A real primary, replica and three Sentinels on 127.0.0.1 free ports
(t/redis_sentinel.py, down-after-milliseconds 1000), and real nginx nodes.
The primary is SIGKILLed in the middle of a flood of cluster broadcasts from
both nodes; the Sentinels promote the replica; the agents must follow, and
what they promised must hold: with replicas=1 every broadcast that returned
true is handled once by every worker of both nodes, in order; without it,
whatever a node missed is told by its gap hook. Every wait is a bounded
poll; the times measured are printed (pytest -s) for the closing note.
"""

import os
import signal
import time

import pytest

from conftest import start_fails
from harness import digest, pattern, wait_for
from redis_sentinel import sentinel_set  # noqa: F401 (the fixture)
from redis_server import free_port
from test_cluster_tls import certs  # noqa: F401 (the fixture)
from test_cluster import (FLOOD, LOCAL, RECORD, REDIS_TROUBLE,
                          assert_exactly_once_in_order, assert_local_ipc_works,
                          cluster_state, count_lines, handled, seqs, wait_all,
                          wait_linked)
from test_status import STATUS, status_json, status_prometheus, promtool_check

PASSWORD = "data-sesame"
SENTINEL_PASSWORD = "sentinel-sesame"
FOLLOW_BOUND = 10.0   # seconds from the promotion to both agents on the new
                      # primary: the reconnect backoff (5 s at most) + a dial
COUNT = 1500          # broadcasts per node in the flood
FAILOVER_TROUBLE = REDIS_TROUBLE + [r"\[warn\].*ngx_ipc cluster: "]


def node(nginx, s, name, extra="", allow_log=(), **kwargs):
    return nginx(workers=2,
                 main=f"ipc_cluster {s.url()} stream=t node={name} "
                      f"sentinel_password={SENTINEL_PASSWORD} {extra};",
                 init_worker=RECORD + LOCAL, locations=STATUS,
                 allow_log=FAILOVER_TROUBLE + list(allow_log), **kwargs)


def redis_of(n):
    return status_json(n)["cluster"]["redis"]


def flood_done(n, tag):
    return n.lua(f'return T.get("flood-done:{tag}")')[0]


def fail_over_mid_flood(s, a, b):
    """Floods from both nodes, kills the primary in the middle, and returns
    (old server, new server, seconds to promote, seconds to follow)."""
    wait_linked(a, b)
    old_addr = f"127.0.0.1:{s.primary().port}"
    assert redis_of(a) == redis_of(b) == old_addr
    # about 3 s of flood each: a pause of 0.1 s every 50
    assert a.lua(FLOOD % ("f", COUNT, 0.1), worker=1) == [True]
    assert b.lua(FLOOD % ("g", COUNT, 0.1), worker=0) == [True]
    wait_for(lambda: cluster_state(a)["added"] >= 200 and cluster_state(b)["added"] >= 200,
             what="the flood under way")
    old = s.kill_primary()
    new, promoted = s.wait_failover(old.port)
    new_addr = f"127.0.0.1:{new.port}"
    t0 = time.monotonic()
    wait_for(lambda: redis_of(a) == redis_of(b) == new_addr
             and cluster_state(a)["connected"] and cluster_state(b)["connected"],
             timeout=FOLLOW_BOUND + 20, what="both agents on the new primary")
    followed = time.monotonic() - t0
    print(f"\npromoted {promoted:.2f} s after the kill; both agents on it "
          f"{followed:.2f} s later")
    assert followed < FOLLOW_BOUND, followed
    return old, new, promoted, followed


BIG_COUNT, BIG_SIZE = 100, 128 * 1024   # 12.5 MiB: less than the outbox
# a stopped reader's XREAD times out when it resumes
STOPPED_TROUBLE = [r"\[error\].*lua tcp socket read timed out"]


def kill_primary_behind_a_cut_off_replica(s, a, b, added):
    """The replica is cut off from the primary (REPLICAOF to a port where
    nothing listens: it keeps its data and answers Sentinel as before) and
    every process of node b is stopped (SIGSTOP) while node a publishes;
    the primary is killed once it holds `added` of a's messages, b resumes
    (SIGCONT), and the Sentinels promote the replica, which lacks them.
    Returns the old primary, the new one and how many of a's the new one
    kept."""
    replica = next(x for x in s.servers if x is not s.primary())
    replica.command("REPLICAOF", "127.0.0.1", str(free_port()))
    for pid in b.pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        assert a.lua("""
            for i = 1, %d do
                local data = T.pattern(%d, i)
                local deadline = ngx.now() + 30
                while true do
                    local ok, err = ipc.broadcast("big", data, { scope = "cluster" })
                    if ok then break end
                    assert(err == "queue full" and ngx.now() < deadline, err)
                    ngx.sleep(0.005)
                end
            end
            return true
        """ % (BIG_COUNT, BIG_SIZE), timeout=60) == [True]
        primary = s.primary()
        wait_for(lambda: in_stream(primary) >= added, timeout=30,
                 what=f"{added} of a's in the primary")
        old = s.kill_primary()
    finally:
        for pid in b.pids:
            os.kill(pid, signal.SIGCONT)
    new, _ = s.wait_failover(old.port)
    return old, new, in_stream(new)


def in_stream(server):
    """Messages in stream t of server (the entries' counts)."""
    return sum(int(dict(zip(f[::2], f[1::2]))[b"c"])
               for _, f in server.command("XRANGE", "t", "-", "+"))


def big_handled(n, pid):
    order = {digest(pattern(BIG_SIZE, i)): i for i in range(1, BIG_COUNT + 1)}
    assert len(order) == BIG_COUNT
    return [order[item.split(b" ", 1)[1]] for item in n.results(f"big:{pid}")]


def test_failover_with_replicas_1_loses_nothing(sentinel_set, nginx):
    s = sentinel_set(password=PASSWORD, sentinel_password=SENTINEL_PASSWORD)
    a = node(nginx, s, "a", "replicas=1")
    b = node(nginx, s, "b", "replicas=1", allow_log=STOPPED_TROUBLE)
    wait_linked(a, b)
    # a batch is not added while its replica does not have it
    old, new, kept = kill_primary_behind_a_cut_off_replica(s, a, b, 1)
    assert cluster_state(a)["added"] < BIG_COUNT
    assert kept < BIG_COUNT, "the promoted replica has them all: no loss was made"
    wait_for(lambda: redis_of(a) == redis_of(b) == f"127.0.0.1:{new.port}",
             timeout=FOLLOW_BOUND + 20, what="both agents on the new primary")
    # the new primary has no replica until the old one comes back as one:
    # until then the outbox holds what it has not added
    rejoined = s.restart_old(old)
    print(f"\nold primary back as a replica in {rejoined:.2f} s")
    assert old.role() == "slave"
    a.lua('for i = 1, 10 do assert(ipc.broadcast("c", "p " .. i, { scope = "cluster" })) end')
    wait_all([b], "a", "p", 10, timeout=60)
    for n in (a, b):
        for pid in n.pids:
            wait_for(lambda: len(big_handled(n, pid)) >= BIG_COUNT, timeout=30,
                     what=f"every message in {pid}")
            assert big_handled(n, pid) == list(range(1, BIG_COUNT + 1))
            # no message is missing; a node whose position the new primary
            # never had may be told a trim it cannot rule out (README: the
            # gap rule may fire once too many, never once too few)
            for gap in n.results(f"gap:{pid}"):
                assert b"missing" not in gap and b"trimmed past" in gap, gap
    assert_exactly_once_in_order([b], "a", "p", 10)
    wait_for(lambda: cluster_state(a)["added"] == BIG_COUNT + 10, what="all added")
    print(f"replicas=1: the promoted replica had {kept} of {BIG_COUNT}; "
          f"all {BIG_COUNT} arrived, in order, once")
    # nobody writes to the old primary, now a replica: no client of ours on it
    assert [c for c in old.command("CLIENT", "LIST").decode().splitlines()
            if "name=ngx_ipc:" in c] == []
    assert PASSWORD not in a.error_log() + b.error_log()
    assert SENTINEL_PASSWORD not in a.error_log() + b.error_log()
    promtool_check(status_prometheus(a))


def test_failover_mid_flood_is_followed_by_both_agents(sentinel_set, nginx):
    s = sentinel_set(password=PASSWORD, sentinel_password=SENTINEL_PASSWORD)
    a = node(nginx, s, "a")
    b = node(nginx, s, "b")
    fail_over_mid_flood(s, a, b)
    wait_for(lambda: flood_done(a, "f") == COUNT and flood_done(b, "g") == COUNT,
             timeout=60, what="both floods to finish")
    # the last messages come after the failover: every worker gets them, in
    # order, once, and anything before them is there or told
    for n, other, tag in ((a, "b", "g"), (b, "a", "f")):
        for pid in n.pids:
            wait_for(lambda: seqs(handled(n, pid), other, tag)[-1:] == [COUNT],
                     timeout=60, what=f"the last of {tag} in {pid}")
            got = seqs(handled(n, pid), other, tag)
            assert got == sorted(set(got)), "out of order or twice"
            assert len(got) == COUNT or n.results(f"gap:{pid}")


def test_failover_without_replicas_reports_what_was_lost(sentinel_set, nginx):
    s = sentinel_set(password=PASSWORD, sentinel_password=SENTINEL_PASSWORD)
    a = node(nginx, s, "a")
    b = node(nginx, s, "b", allow_log=STOPPED_TROUBLE)
    wait_linked(a, b)
    old, new, kept = kill_primary_behind_a_cut_off_replica(s, a, b, BIG_COUNT)
    assert kept < BIG_COUNT, "the promoted replica has them all: no loss was made"
    wait_for(lambda: redis_of(a) == redis_of(b) == f"127.0.0.1:{new.port}",
             timeout=FOLLOW_BOUND + 20, what="both agents on the new primary")
    a.lua('for i = 1, 10 do assert(ipc.broadcast("c", "p " .. i, { scope = "cluster" })) end')
    wait_all([b], "a", "p", 10, timeout=30)
    assert_exactly_once_in_order([b], "a", "p", 10)
    # a's own workers have every one (the local path); b lacks what was lost
    for pid in a.pids:
        assert big_handled(a, pid) == list(range(1, BIG_COUNT + 1))
    for pid in b.pids:
        got = big_handled(b, pid)
        assert got == sorted(set(got)), "out of order or twice"
        assert len(got) < BIG_COUNT
        gaps = b.results(f"gap:{pid}")
        assert gaps, (pid, BIG_COUNT - len(got))
    assert cluster_state(b)["gaps"] >= 1
    print(f"\nwithout replicas=: the promoted replica kept {kept} of {BIG_COUNT}; "
          f"b lost {BIG_COUNT - len(got)}, told to its gap hook ({gaps[0].decode()!r})")


def test_the_sentinels_asked_in_turn_and_a_wrong_master_name(sentinel_set, nginx):
    s = sentinel_set(password=PASSWORD, sentinel_password=SENTINEL_PASSWORD)
    # the first Sentinel is down: the next one answers
    s.sentinels[0].kill()
    a = node(nginx, s, "a")
    wait_linked(a)
    assert redis_of(a) == f"127.0.0.1:{s.primary().port}"
    # a master name no Sentinel knows: one clear line, local IPC goes on
    url = s.url().replace(f"/{s.master_name}", "/nosuch")
    n = nginx(workers=2,
              main=f"ipc_cluster {url} stream=t node=b sentinel_password={SENTINEL_PASSWORD};",
              init_worker=RECORD + LOCAL, locations=STATUS, allow_log=FAILOVER_TROUBLE)
    ours = r'ngx_ipc cluster: no Sentinel gave the primary of "nosuch" \('
    wait_for(lambda: count_lines(n, ours) >= 1, what="the Sentinel log line")
    assert "does not know it" in n.error_log()
    assert_local_ipc_works(n)
    assert status_json(n)["cluster"]["redis"] == ""
    # a wrong Sentinel password is said as such
    url = s.url()
    m = nginx(workers=1, main=f"ipc_cluster {url} stream=t node=c sentinel_password=nope;",
              init_worker=RECORD, allow_log=FAILOVER_TROUBLE)
    wait_for(lambda: count_lines(m, r"no Sentinel gave the primary of \"ngxipc\" \(.*"
                                    r"127\.0\.0\.1:\d+ authentication failed: WRONGPASS") >= 1,
             what="the wrong Sentinel password")
    assert "nope" not in m.error_log()


@pytest.mark.parametrize("args, message", [
    ("redis+sentinel://127.0.0.1:26379", "invalid ipc_cluster address"),
    ("redis+sentinel://127.0.0.1:26379/", "invalid ipc_cluster address"),
    ("redis+sentinel://127.0.0.1:0/m", "invalid ipc_cluster address"),
    ("redis+sentinel://127.0.0.1:1,,127.0.0.1:2/m", "invalid ipc_cluster address"),
    ("redis+sentinel://127.0.0.1:1/m/x", "invalid ipc_cluster address"),
    ("redis+sentinel://" + ",".join(f"h{i}:1" for i in range(17)) + "/m",
     "invalid ipc_cluster address"),
    ("rediss+sentinel://127.0.0.1/m sentinel_password=", "takes a password"),
    ("redis://127.0.0.1 sentinel_password=x", "needs redis+sentinel://"),
])
def test_bad_sentinel_directive_refuses_to_start(args, message):
    log = start_fails(f"ipc_cluster {args};")
    assert "[emerg]" in log and message in log, log


def test_rediss_sentinel_follows_a_failover_over_tls(sentinel_set, nginx, certs):
    """rediss+sentinel://: the Sentinels and the primary all over TLS,
    verified as redis.test; a failover is followed the same way."""
    s = sentinel_set(password=PASSWORD, sentinel_password=SENTINEL_PASSWORD, tls=certs)
    url = s.url(tls=True, sentinel_tls=True)
    assert url.startswith("rediss+sentinel://")

    def tls_node(name):
        return nginx(workers=2,
                     main=f"ipc_cluster {url} stream=t node={name} tls_name=redis.test "
                          f"sentinel_password={SENTINEL_PASSWORD};",
                     http=f"lua_ssl_trusted_certificate {certs.ca};",
                     init_worker=RECORD + LOCAL, locations=STATUS,
                     allow_log=FAILOVER_TROUBLE)

    a, b = tls_node("a"), tls_node("b")
    wait_linked(a, b)
    assert redis_of(a) == f"127.0.0.1:{s.primary().tls_port}"
    a.lua('for i = 1, 100 do assert(ipc.broadcast("c", "t " .. i, { scope = "cluster" })) end')
    wait_all([a, b], "a", "t", 100)
    old = s.kill_primary()
    new, _ = s.wait_failover(old.port)
    wait_for(lambda: redis_of(a) == f"127.0.0.1:{new.tls_port}"
             and cluster_state(a)["connected"] and cluster_state(b)["connected"],
             timeout=FOLLOW_BOUND + 20, what="both agents on the new primary")
    a.lua('for i = 101, 200 do assert(ipc.broadcast("c", "t " .. i, { scope = "cluster" })) end')
    wait_all([a, b], "a", "t", 200)
    assert_exactly_once_in_order([a, b], "a", "t", 200)
    assert PASSWORD not in a.error_log() and SENTINEL_PASSWORD not in a.error_log()
