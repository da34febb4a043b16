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

import time

import pytest

from conftest import start_fails
from harness import wait_for
from redis_sentinel import sentinel_set  # noqa: F401 (the fixture)
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


def node(nginx, s, name, extra="", **kwargs):
    return nginx(workers=2,
                 main=f"ipc_cluster {s.url()} stream=t node={name} "
                      f"sentinel_password={SENTINEL_PASSWORD} {extra};",
                 init_worker=RECORD + LOCAL, locations=STATUS,
                 allow_log=FAILOVER_TROUBLE, **kwargs)


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


def test_failover_with_replicas_1_loses_nothing(sentinel_set, nginx):
    s = sentinel_set(password=PASSWORD, sentinel_password=SENTINEL_PASSWORD)
    a = node(nginx, s, "a", "replicas=1")
    b = node(nginx, s, "b", "replicas=1")
    old, new, _, _ = fail_over_mid_flood(s, a, b)

    # the new primary has no replica until the old one comes back: a batch
    # is not "added" before a replica has it, so the outbox holds it
    rejoined = s.restart_old(old)
    print(f"old primary back as a replica in {rejoined:.2f} s")
    assert old.role() == "slave"

    wait_for(lambda: flood_done(a, "f") == COUNT and flood_done(b, "g") == COUNT,
             timeout=60, what="both floods to finish")
    wait_all([a, b], "a", "f", COUNT, timeout=60)
    wait_all([a, b], "b", "g", COUNT, timeout=60)
    assert_exactly_once_in_order([a, b], "a", "f", COUNT)
    assert_exactly_once_in_order([a, b], "b", "g", COUNT)
    for n in (a, b):
        wait_for(lambda: cluster_state(n)["added"] == COUNT, what="all added")
        for pid in n.pids:
            assert n.results(f"gap:{pid}") == [], (pid, n.results(f"gap:{pid}"))

    # nobody writes to the old primary, now a replica: no client of ours on it
    assert [c for c in old.command("CLIENT", "LIST").decode().splitlines()
            if "name=ngx_ipc:" in c] == []
    assert PASSWORD not in a.error_log() + b.error_log()
    assert SENTINEL_PASSWORD not in a.error_log() + b.error_log()
    promtool_check(status_prometheus(a))


def test_failover_without_replicas_reports_what_was_lost(sentinel_set, nginx):
    s = sentinel_set(password=PASSWORD, sentinel_password=SENTINEL_PASSWORD)
    a = node(nginx, s, "a")
    b = node(nginx, s, "b")
    fail_over_mid_flood(s, a, b)
    wait_for(lambda: flood_done(a, "f") == COUNT and flood_done(b, "g") == COUNT,
             timeout=60, what="both floods to finish")
    # each node's own broadcasts reach its own workers at once, all of them
    for n, tag in ((a, "f"), (b, "g")):
        for pid in n.pids:
            assert seqs(handled(n, pid), n is a and "a" or "b", tag) == \
                list(range(1, COUNT + 1))
    # across nodes: in order, each once; whatever is missing was told
    lost = 0
    for n, other, tag in ((a, "b", "g"), (b, "a", "f")):
        wait_for(lambda: cluster_state(n)["received"] > 0, what="entries read")
        # the last one always comes (it was added after the failover)
        wait_all([n], other, tag, 1)
        for pid in n.pids:
            wait_for(lambda: seqs(handled(n, pid), other, tag)[-1:] == [COUNT],
                     timeout=60, what=f"the last of {tag} in {pid}")
            got = seqs(handled(n, pid), other, tag)
            assert got == sorted(set(got)), "out of order or twice"
            missing = COUNT - len(got)
            lost = max(lost, missing)
            if missing:
                assert n.results(f"gap:{pid}"), (pid, missing)
    print(f"\nwithout replicas=: {lost} broadcasts lost in the failover (told)")


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
