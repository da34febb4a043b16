"""The Redis topologies that cluster tests build on, checked against the real
processes: a TLS redis-server (t/redis_server.py, t/tls_certs.py) and a
Sentinel set with a primary, a replica and three Sentinels
(t/redis_sentinel.py) that fails over and takes the old primary back.
"""

import ssl

import pytest

from redis_sentinel import poll, sentinel_set  # noqa: F401 (the fixture)
from redis_server import RedisReplyError, RespClient, redis_server  # noqa: F401
from tls_certs import tls_certs  # noqa: F401 (the fixture)

FAILOVER_BOUND = 20.0  # seconds; with down-after 1000 ms it takes about 2-6 s
# Sentinel waits 8 s (SENTINEL_PUBLISH_PERIOD * 4, not configurable) after it
# sees the old primary back before it makes it a replica, and looks every 10 s.
REJOIN_BOUND = 40.0


def test_tls_server_is_verified_with_its_ca(redis_server, tls_certs):
    r = redis_server(tls=tls_certs)
    assert r.tls_port not in (None, r.port)
    assert r.url(tls=True) == f"rediss://127.0.0.1:{r.tls_port}"
    assert r.url() == f"redis://127.0.0.1:{r.port}"
    assert r.command("PING") == "PONG"  # the plain port stays, for the harness
    with r.tls_client() as c:  # verifies the chain and the name redis.test
        assert c.command("PING") == "PONG"
        assert c._sock.version() in ("TLSv1.2", "TLSv1.3")
    with r.tls_client(server_hostname="127.0.0.1") as c:  # the IP SAN
        assert c.command("PING") == "PONG"
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer|"
                       "self.signed certificate in certificate chain"):
        r.tls_client(ca=tls_certs.wrong_ca).command("PING")
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        r.tls_client(server_hostname="other.test").command("PING")
    # restart() keeps both ports
    tls_port = r.tls_port
    r.kill()
    r.restart()
    assert r.tls_port == tls_port
    assert r.tls_client().command("PING") == "PONG"


def test_tls_auth_clients_yes_wants_a_client_certificate(redis_server, tls_certs):
    r = redis_server(tls=tls_certs, tls_auth_clients="yes", password="s3cret")
    assert r.url(tls=True) == f"rediss://default:s3cret@127.0.0.1:{r.tls_port}"
    c = r.tls_client(cert=tls_certs.client_cert, key=tls_certs.client_key)
    assert c.command("PING") == "PONG"
    c.close()
    # TLS 1.3: the client's handshake ends before the server checks, so the
    # refusal comes at the first read, as an alert, an EOF or a reset (it
    # races with AUTH); the server's log says why
    refused = (ssl.SSLError, ConnectionError)
    with pytest.raises(refused):
        r.tls_client().command("PING")
    poll(lambda: "peer did not return a certificate" in r.log(), 5.0,
         "the server to log the missing certificate", r.log_tail)
    with pytest.raises(refused):
        r.tls_client(cert=tls_certs.wrong_client_cert,
                     key=tls_certs.wrong_client_key).command("PING")
    poll(lambda: "certificate verify failed" in r.log(), 5.0,
         "the server to log the unknown CA", r.log_tail)
    assert r.command("PING") == "PONG"  # the plain port needs no certificate


def test_sentinel_set_fails_over_and_takes_the_old_primary_back(sentinel_set):
    s = sentinel_set()
    first, second = s.servers
    assert first.role() == "master" and second.role() == "slave"
    assert s.primary() is first
    for i in range(len(s.sentinels)):
        assert s.master_addr(i) == ("127.0.0.1", first.port)
    hosts = ",".join(f"127.0.0.1:{x.port}" for x in s.sentinels)
    assert len(s.sentinels) == 3
    assert s.url() == f"redis+sentinel://{hosts}/ngxipc"
    assert s.url(db=2) == f"redis+sentinel://{hosts}/ngxipc/2"

    ids = [first.command("XADD", "s", "*", "seq", i) for i in range(50)]
    poll(lambda: second.command("XLEN", "s") == 50, 10.0,
         "the replica to have the 50 entries", s.describe)

    old = s.kill_primary()
    assert old is first and not old.running()
    new, seconds = s.wait_failover(old.port)
    print(f"failover: {seconds:.2f} s")
    assert new is second
    assert seconds < FAILOVER_BOUND, s.describe()
    assert new.role() == "master"
    assert s.primary() is new
    assert [e[0] for e in new.command("XRANGE", "s", "-", "+")] == ids
    assert all(s.master_addr(i) == ("127.0.0.1", new.port) for i in range(3))

    seconds = s.restart_old(old)
    print(f"old primary back as a replica: {seconds:.2f} s")
    assert seconds < REJOIN_BOUND, s.describe()
    assert old.role() == "slave"
    assert old.info()["master_port"] == str(new.port)
    with pytest.raises(RedisReplyError, match="^READONLY"):
        old.command("XADD", "s", "*", "seq", "to the old one")
    last = new.command("XADD", "s", "*", "seq", "after")
    poll(lambda: old.command("XRANGE", "s", "-", "+")[-1][0] == last, 10.0,
         "the old primary to replicate a new entry", s.describe)
    assert s.primary() is new


def test_sentinel_set_over_tls_with_passwords(sentinel_set, tls_certs):
    s = sentinel_set(tls=tls_certs, password="data-pw", sentinel_password="sentinel-pw")
    first, second = s.servers
    # Sentinel knows the data servers by their TLS ports
    assert s.master_addr() == ("127.0.0.1", first.tls_port)
    assert first.info()["connected_slaves"] == "1"
    assert f"port={second.tls_port}," in first.info()["slave0"]
    # ... and the Sentinels each other by theirs
    peers = s.sentinels[0].sentinel("sentinels", "ngxipc")
    ports = sorted(int(dict(zip(p[0::2], p[1::2]))[b"port"]) for p in peers)
    assert ports == sorted(x.tls_port for x in s.sentinels[1:])

    hosts = ",".join(f"127.0.0.1:{x.port}" for x in s.sentinels)
    tls_hosts = ",".join(f"127.0.0.1:{x.tls_port}" for x in s.sentinels)
    assert s.url(tls=True) == f"rediss+sentinel://default:data-pw@{hosts}/ngxipc"
    assert s.url(tls=True, sentinel_tls=True, user="app", db=1) == \
        f"rediss+sentinel://app:data-pw@{tls_hosts}/ngxipc/1"

    with pytest.raises(RedisReplyError, match="NOAUTH"):
        RespClient(s.sentinels[0].port).command("SENTINEL", "masters")
    with s.sentinels[1].tls_client() as c:  # a Sentinel over TLS
        assert c.command("SENTINEL", "get-master-addr-by-name", "ngxipc")[1] == \
            str(first.tls_port).encode()
    with first.tls_client() as c:  # the address Sentinel gives, over TLS
        assert c.command("XADD", "s", "*", "k", "v")
    poll(lambda: second.command("XLEN", "s") == 1, 10.0,
         "the replica to replicate over TLS", s.describe)

    old = s.kill_primary()
    new, seconds = s.wait_failover(old.tls_port)
    print(f"failover over TLS: {seconds:.2f} s")
    assert new is second and seconds < FAILOVER_BOUND, s.describe()
    assert s.master_addr(2) == ("127.0.0.1", new.tls_port)
    with new.tls_client() as c:
        assert c.command("XLEN", "s") == 1
