"""Throw-away certificates for the TLS tests, made with the openssl command.

    from tls_certs import tls_certs  # noqa: F401 (fixture)

    def test_example(tls_certs, redis_server):
        r = redis_server(tls=tls_certs)          # plain port and TLS port
        r.tls_client().command("PING")           # verifies with tls_certs.ca

`make_certs(dir)` (or `TlsCerts(dir)`) writes into `dir`:

    ca, ca_key                  the test CA (CN "ngx_ipc test CA")
    server_cert, server_key     signed by ca: CN and subjectAltName
                                DNS:redis.test and IP:127.0.0.1, serverAuth
    client_cert, client_key     signed by ca: CN "ngx_ipc test client", clientAuth
    wrong_ca, wrong_ca_key      a second, unrelated CA (the "wrong CA" tests)
    wrong_client_cert, wrong_client_key
                                a client certificate signed by wrong_ca

Keys are EC P-256, certificates last 2 days.  Every openssl run is bounded by
OPENSSL_TIMEOUT and a failure raises TlsCertsError with openssl's output.  The
`tls_certs` fixture makes one set per test session.
"""

import os
import ssl
import subprocess
from pathlib import Path

try:
    import pytest
except ImportError:  # benchmarks run with the standard library only
    pytest = None

OPENSSL_BIN = os.environ.get("OPENSSL_BIN", "/usr/bin/openssl")
OPENSSL_TIMEOUT = 30.0  # seconds for one openssl command
DAYS = "2"
SERVER_NAME = "redis.test"  # the name to verify the server certificate against

# Our own configuration, so that the system's openssl.cnf adds nothing.
OPENSSL_CNF = """\
[ req ]
distinguished_name = dn
prompt = no
[ dn ]
CN = unused
[ ca ]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[ server ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:{name}, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[ client ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
""".format(name=SERVER_NAME)


class TlsCertsError(Exception):
    """openssl failed or did not finish in time."""


def openssl(*args, cwd):
    """Run one openssl command in `cwd`, bounded; its output on success."""
    try:
        done = subprocess.run([OPENSSL_BIN, *args], cwd=cwd, stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=OPENSSL_TIMEOUT)
    except subprocess.TimeoutExpired as e:
        raise TlsCertsError(f"openssl {args[0]} did not finish within "
                            f"{OPENSSL_TIMEOUT} s") from e
    if done.returncode != 0:
        raise TlsCertsError(f"openssl {' '.join(args)} exited with status "
                            f"{done.returncode}:\n{done.stderr.decode(errors='replace')}")
    return done.stdout


class TlsCerts:
    """A CA, a server and a client certificate it signed, and a wrong CA,
    all under `dir` (created if missing); attributes are file paths."""

    def __init__(self, dir):
        self.dir = Path(dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.server_name = SERVER_NAME
        self._cnf = self.dir / "openssl.cnf"
        self._cnf.write_text(OPENSSL_CNF)
        self._serial = 0x1000
        self.ca, self.ca_key = self._ca("ca", "ngx_ipc test CA")
        self.server_cert, self.server_key = self._leaf(
            "server", SERVER_NAME, "server", self.ca, self.ca_key)
        self.client_cert, self.client_key = self._leaf(
            "client", "ngx_ipc test client", "client", self.ca, self.ca_key)
        self.wrong_ca, self.wrong_ca_key = self._ca("wrong-ca", "ngx_ipc wrong CA")
        self.wrong_client_cert, self.wrong_client_key = self._leaf(
            "wrong-client", "ngx_ipc wrong client", "client",
            self.wrong_ca, self.wrong_ca_key)

    def _key(self, name):
        key = self.dir / f"{name}.key"
        openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-out", str(key), cwd=self.dir)
        key.chmod(0o600)
        return key

    def _ca(self, name, cn):
        key, cert = self._key(name), self.dir / f"{name}.crt"
        self._serial += 1
        openssl("req", "-config", str(self._cnf), "-new", "-x509", "-key", str(key),
                "-subj", f"/CN={cn}", "-days", DAYS, "-sha256", "-extensions", "ca",
                "-set_serial", str(self._serial), "-out", str(cert), cwd=self.dir)
        return cert, key

    def _leaf(self, name, cn, kind, ca, ca_key):
        key, cert = self._key(name), self.dir / f"{name}.crt"
        csr = self.dir / f"{name}.csr"
        self._serial += 1
        openssl("req", "-config", str(self._cnf), "-new", "-key", str(key),
                "-subj", f"/CN={cn}", "-out", str(csr), cwd=self.dir)
        openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
                "-set_serial", str(self._serial), "-days", DAYS, "-sha256",
                "-extfile", str(self._cnf), "-extensions", kind, "-out", str(cert),
                cwd=self.dir)
        return cert, key

    def redis_config(self, tls_port, auth_clients="optional", replication=False):
        """The TLS directives for a redis-server or Sentinel on `tls_port`, as
        (name, value) pairs: this server certificate, the client one for its
        own outgoing links (replication, Sentinel), this CA to verify both."""
        return [("tls-port", str(tls_port)),
                ("tls-cert-file", str(self.server_cert)),
                ("tls-key-file", str(self.server_key)),
                ("tls-client-cert-file", str(self.client_cert)),
                ("tls-client-key-file", str(self.client_key)),
                ("tls-ca-cert-file", str(self.ca)),
                ("tls-auth-clients", auth_clients),
                ("tls-replication", "yes" if replication else "no")]

    def client_context(self, ca=None, cert=None, key=None):
        """An ssl.SSLContext that verifies servers with `ca` (default: this CA)
        and, given `cert` and `key`, presents that client certificate."""
        ctx = ssl.create_default_context(cafile=str(ca or self.ca))
        if cert is not None:
            ctx.load_cert_chain(str(cert), str(key))
        return ctx

    def text(self, cert):
        """openssl x509 -text of one certificate (for failure messages)."""
        return openssl("x509", "-in", str(cert), "-noout", "-text",
                       cwd=self.dir).decode(errors="replace")


def make_certs(dir):
    """Write a fresh set of certificates into `dir` and return its TlsCerts."""
    return TlsCerts(dir)


if pytest is not None:
    @pytest.fixture(scope="session")
    def tls_certs(tmp_path_factory):
        """One TlsCerts per test session (pytest removes its directory)."""
        return make_certs(tmp_path_factory.mktemp("ngx-ipc-tls"))
