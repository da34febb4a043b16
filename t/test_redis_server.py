"""The private redis-server helper (t/redis_server.py) that cluster tests use."""

import pytest

from redis_server import RedisReplyError, RespClient, redis_server  # noqa: F401 (fixture)


def test_start_answers_ping_on_loopback(redis_server):
    r = redis_server()
    assert r.command("PING") == "PONG"
    assert r.command("CONFIG", "GET", "bind") == [b"bind", b"127.0.0.1"]
    assert r.command("CONFIG", "GET", "appendfsync") == [b"appendfsync", b"always"]
    # replies of every RESP2 kind
    assert r.command("SET", "k", b"a\x00b") == "OK"
    assert r.command("GET", "k") == b"a\x00b"
    assert r.command("GET", "missing") is None
    assert r.command("INCR", "n") == 1
    with pytest.raises(RedisReplyError, match="WRONGTYPE"):
        r.command("LPUSH", "k", "x")
    assert r.command("PING") == "PONG"  # the connection survives an error reply


def test_kill_and_restart_keep_the_aof(redis_server):
    r = redis_server()
    ids = [r.command("XADD", "s", "*", "seq", str(i)) for i in range(100)]
    pid, port = r.pid, r.port
    r.kill()
    assert not r.running()
    with pytest.raises(OSError):
        RespClient(port, timeout=1).command("PING")
    r.restart()
    assert r.pid != pid and r.port == port
    entries = r.command("XRANGE", "s", "-", "+")
    assert [e[0] for e in entries] == ids
    assert [e[1] for e in entries] == [[b"seq", str(i).encode()] for i in range(100)]


def test_requirepass_refuses_a_wrong_password(redis_server):
    r = redis_server(password="s3cret")
    assert r.command("PING") == "PONG"  # the helper authenticates
    assert r.url() == f"redis://default:s3cret@127.0.0.1:{r.port}"
    with pytest.raises(RedisReplyError, match="WRONGPASS|invalid"):
        r.client(password="wrong").command("PING")
    with pytest.raises(RedisReplyError, match="NOAUTH"):
        r.client(password=None).command("PING")
    assert RespClient(r.port, username="default", password="s3cret").command("PING") == "PONG"
