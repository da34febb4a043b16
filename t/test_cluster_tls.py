"""The cluster link over TLS: `ipc_cluster rediss://...` (README: "Cluster",
"TLS"; lib/ngx/ipc/cluster/dial.lua; src/ngx_ipc_cluster_tls.cpp).

Real nginx nodes and a private redis-server with `tls-port`, certificates
made by `openssl` in the test (t/tls_certs.py: a CA, a server certificate
for redis.test and 127.0.0.1, a client certificate, and an unrelated CA).
The server keeps a plain port for the test's own commands; the nodes use
the TLS port only, which CLIENT LIST shows (laddr). Every wait is a bounded
poll.
"""

import re
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from conftest import start_fails
from harness import wait_for
from redis_server import redis_server  # noqa: F401 (the fixture)
from test_cluster import (FLOOD, LOCAL, RECORD, REDIS_TROUBLE,
                          assert_exactly_once_in_order, assert_local_ipc_works,
                          cluster_state, count_lines, handled, wait_all,
                          wait_linked)
from tls_certs import make_certs

PASSWORD = "tls-sesame"
# lua-nginx-module's own line for a refused handshake, beside ours
# (with TLS 1.3 a refused client certificate shows at the first write or read)
TLS_TROUBLE = REDIS_TROUBLE + [r"\[error\].*lua ssl certificate",
                               r"\[(error|crit)\].*SSL_(do_handshake|write|read)\(\) failed"]


@pytest.fixture
def certs():
    """The certificates, in a directory nginx's workers can read: they load
    lua_ssl_trusted_certificate themselves, after dropping to `user`
    (pytest's tmp_path is root's only). The keys stay 0600: tls_key= is
    read by the master."""
    where = Path(tempfile.mkdtemp(prefix="ngx-ipc-certs-"))
    where.chmod(0o755)
    made = make_certs(where)
    for ca in (made.ca, made.wrong_ca):
        Path(ca).chmod(0o644)
    yield made
    shutil.rmtree(where, ignore_errors=True)


def tls_node(nginx, r, certs, node, ca=None, extra="tls_name=redis.test",
             workers=2, allow_log=(), **kwargs):
    url = f"rediss://default:{PASSWORD}@127.0.0.1:{r.tls_port}"
    return nginx(workers=workers,
                 main=f"ipc_cluster {url} stream=t node={node} {extra};",
                 http=f"lua_ssl_trusted_certificate {ca or certs.ca};",
                 init_worker=RECORD + LOCAL + kwargs.pop("init_worker", ""),
                 allow_log=list(allow_log), **kwargs)


def tls_clients(r, node):
    """The local ports (laddr) of node's connections, from CLIENT LIST."""
    listing = r.command("CLIENT", "LIST")
    listing = listing.decode() if isinstance(listing, bytes) else listing
    return [int(re.search(r"\bladdr=[\d.]+:(\d+)", line).group(1))
            for line in listing.splitlines() if f"name=ngx_ipc:{node}:" in line]


def test_a_flood_over_tls_arrives_once_in_order_byte_exact(redis_server, nginx, certs):
    r = redis_server(password=PASSWORD, tls=certs)
    a = tls_node(nginx, r, certs, "a")
    b = tls_node(nginx, r, certs, "b")
    wait_linked(a, b)
    count = 2000
    assert a.lua(FLOOD % ("f", count, 0.001), worker=1) == [True]
    wait_all([a, b], "a", "f", count)
    assert_exactly_once_in_order([a, b], "a", "f", count)
    # a's reader and writer are on the TLS port, none on the plain one
    assert sorted(tls_clients(r, "a")) == [r.tls_port] * 2, tls_clients(r, "a")

    # binary payloads up to the 1 MiB default, byte for byte
    sizes = [0, 1, 255, 65536, 1024 * 1024 - 2]
    a.lua("""
        for i, size in ipairs({ %s }) do
            assert(ipc.broadcast("big", T.pattern(size, i) .. "\\0\\255",
                                 { scope = "cluster" }))
        end
    """ % ", ".join(map(str, sizes)))
    from harness import digest, pattern
    want = [digest(pattern(s, i + 1) + b"\0\xff") for i, s in enumerate(sizes)]
    for pid in b.pids:
        wait_for(lambda: len(b.results(f"big:{pid}")) == len(sizes),
                 what=f"{len(sizes)} payloads in {pid}")
        assert [i.split(b" ", 1)[1] for i in b.results(f"big:{pid}")] == want
    assert PASSWORD not in a.error_log() + b.error_log()


def test_a_wrong_ca_is_refused_with_one_line_at_a_bounded_rate(redis_server, nginx, certs):
    r = redis_server(password=PASSWORD, tls=certs)
    n = tls_node(nginx, r, certs, "a", ca=certs.wrong_ca, allow_log=TLS_TROUBLE)
    ours = r"\[error\].*ngx_ipc cluster: TLS with 127\.0\.0\.1:\d+ \(name \"redis\.test\"\) failed: "
    wait_for(lambda: count_lines(n, ours) >= 1, what="the TLS log line")
    assert re.search(ours + r".*(certificate|self.signed)", n.error_log()), n.error_log()
    st = cluster_state(n)
    assert not st["connected"] and "TLS with" in st["last_error"], st
    assert tls_clients(r, "a") == []
    # local IPC goes on, a cluster broadcast waits in the outbox
    assert_local_ipc_works(n)
    assert n.lua('return ipc.broadcast("c", "q 1", { scope = "cluster" })') == [True]
    wait_all([n], "a", "q", 1)
    # the reader and the writer retry (backoff 0.1 s doubling): one line of
    # ours per 10 s for both, however many handshakes fail
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        assert count_lines(n, ours) == 1, n.error_log()
        time.sleep(0.2)
    assert cluster_state(n)["errors"] >= 4
    assert PASSWORD not in n.error_log()


def test_a_wrong_name_is_refused(redis_server, nginx, certs):
    r = redis_server(password=PASSWORD, tls=certs)
    n = tls_node(nginx, r, certs, "a", extra="tls_name=other.test", allow_log=TLS_TROUBLE)
    wait_for(lambda: "host mismatch" in (cluster_state(n)["last_error"] or ""),
             what="the host mismatch")
    assert not cluster_state(n)["connected"]
    assert 'name "other.test"' in cluster_state(n)["last_error"]


def test_a_client_certificate_when_the_server_asks_for_one(redis_server, nginx, certs):
    r = redis_server(password=PASSWORD, tls=certs, tls_auth_clients="yes")
    without = tls_node(nginx, r, certs, "a", allow_log=TLS_TROUBLE)
    wait_for(lambda: (cluster_state(without)["errors"] or 0) >= 2,
             what="the refused handshakes")
    assert not cluster_state(without)["connected"]
    extra = f"tls_name=redis.test tls_cert={certs.client_cert} tls_key={certs.client_key}"
    n = tls_node(nginx, r, certs, "b", extra=extra)
    wait_linked(n)
    assert n.lua('return ipc.broadcast("c", "m 1", { scope = "cluster" })') == [True]
    wait_all([n], "b", "m", 1)
    wait_for(lambda: cluster_state(n)["added"] == 1, what="the entry in Redis")
    assert r.command("XLEN", "t") == 1


def test_tls_directive_errors_refuse_to_start(certs, tmp_path):
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    cases = [
        ("redis://127.0.0.1 tls_name=redis.test", "need TLS: rediss://"),
        (f"rediss://127.0.0.1 tls_cert={certs.client_cert}", "go together"),
        (f"rediss://127.0.0.1 tls_cert={not_pem} tls_key={certs.client_key}",
         "holds no PEM certificate"),
        (f"rediss://127.0.0.1 tls_cert={certs.client_cert} tls_key={certs.client_cert}",
         "holds no PEM private key"),
        (f"rediss://127.0.0.1 tls_cert={tmp_path}/missing.pem tls_key={certs.client_key}",
         "cannot open tls_cert file"),
        ("redis://127.0.0.1 replicas=65", "replicas=65: expected 0 to 64"),
        ("redis://127.0.0.1 sentinel_password=x", "needs redis+sentinel://"),
    ]
    for args, message in cases:
        log = start_fails(f"ipc_cluster {args};")
        assert "[emerg]" in log and message in log, (args, log)
