"""A tiny Redis client for tests and benchmarks: RESP2 over a plain socket,
or over TLS given an `ssl.SSLContext`; no redis-py.

Replies come back as Python values: simple strings as str, bulk strings as
bytes (None for a null bulk), integers as int, arrays as lists; an error
reply raises `RedisReplyError` carrying Redis's message.  redis_server.py
starts the servers it talks to (and re-exports these names).
"""

import socket

HOST = "127.0.0.1"

class RedisReplyError(Exception):
    """Redis answered with an error reply (-ERR ..., -NOAUTH ..., -WRONGPASS ...)."""


class RedisServerError(Exception):
    """redis-server failed to start, to answer or to stop."""


def _encode(arg):
    if isinstance(arg, bytes):
        return arg
    if isinstance(arg, str):
        return arg.encode()
    if isinstance(arg, (int, float)):
        return str(arg).encode()
    raise TypeError(f"cannot send {type(arg).__name__} to Redis")


def encode_command(*args):
    """The RESP2 array of bulk strings for one command."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = _encode(arg)
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class RespClient:
    """One connection to a Redis server, one command at a time.

    Every socket operation is bounded by `timeout` seconds.  After an error
    reply the connection stays usable; after a socket error it is closed and
    the next command reconnects.
    """

    def __init__(self, port, host=HOST, password=None, username=None, timeout=5.0,
                 ssl_context=None, server_hostname=None):
        self.host, self.port = host, port
        self.password, self.username = password, username
        self.timeout = timeout
        self.ssl_context, self.server_hostname = ssl_context, server_hostname
        self._sock = None
        self._buf = b""

    def connect(self):
        self.close()
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        if self.ssl_context is not None:
            try:  # the handshake, bounded by the socket's timeout
                sock = self.ssl_context.wrap_socket(
                    sock, server_hostname=self.server_hostname or self.host)
            except BaseException:
                sock.close()
                raise
        self._sock = sock
        self._buf = b""
        if self.password is not None:
            auth = ("AUTH", self.username, self.password) if self.username \
                else ("AUTH", self.password)
            self.command(*auth)
        return self

    def close(self):
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    def command(self, *args):
        """Send one command, return its parsed reply (raises RedisReplyError)."""
        if self._sock is None:
            self.connect()
        try:
            self._sock.sendall(encode_command(*args))
            reply = self._read_reply()
        except OSError:
            self.close()
            raise
        if isinstance(reply, RedisReplyError):
            raise reply
        return reply

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- RESP2 parsing -----------------------------------------------------

    def _fill(self):
        data = self._sock.recv(65536)
        if not data:
            raise ConnectionError("Redis closed the connection")
        self._buf += data

    def _line(self):
        while True:
            end = self._buf.find(b"\r\n")
            if end >= 0:
                line, self._buf = self._buf[:end], self._buf[end + 2:]
                return line
            self._fill()

    def _exact(self, size):
        while len(self._buf) < size + 2:
            self._fill()
        data, self._buf = self._buf[:size], self._buf[size + 2:]
        return data

    def _read_reply(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            # returned, not raised, so that an error inside an array is kept
            return RedisReplyError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            return None if size < 0 else self._exact(size)
        if kind == b"*":
            count = int(rest)
            return None if count < 0 else [self._read_reply() for _ in range(count)]
        raise RedisServerError(f"unexpected RESP line {line[:80]!r}")
