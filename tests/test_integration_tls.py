# -*- test-case-name: tests.test_integration_tls -*-
"""
Real-socket tests of L{txproxy.tls}: a TLS listener built by
L{txproxy.tls.tlsServerEndpoint} in a subprocess (this module run as a
script: a tiny HTTP server answering with the certificate names it served,
C{421} for a Host outside them, reloading its certificates on C{SIGHUP}),
probed with C{openssl s_client}, C{curl} and Python's C{ssl}.

The reverse proxy that will use this listener is not part of this module;
once C{twistd txproxy --mode reverse} exists, its own integration tests
cover the whole path.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from typing import Any, Optional, Sequence

from twisted.trial.unittest import SynchronousTestCase

from tests.procs import REPO, TestCA

_TIMEOUT = 20.0


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise AssertionError(f"{tool} is not installed (scripts/test installs it); this test is never skipped")
    return path


class TLSServerProcess:
    """
    This module run as a TLS HTTP server in a subprocess.

    @ivar port: its listening port, once started.
    """

    def __init__(self, description: str, certsDir: Optional[str], clientCA: Optional[str] = None) -> None:
        self.description = description
        self.certsDir = certsDir
        self.clientCA = clientCA
        self.dir = tempfile.mkdtemp(prefix="txproxy-tls-server-")
        self.stdoutPath = os.path.join(self.dir, "stdout.log")
        self.stderrPath = os.path.join(self.dir, "stderr.log")
        self.proc: Optional[subprocess.Popen] = None
        self.port = 0

    def start(self) -> "TLSServerProcess":
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
        args = [sys.executable, "-m", "tests.test_integration_tls", self.description, self.certsDir or "", self.clientCA or ""]
        with open(self.stdoutPath, "wb") as out, open(self.stderrPath, "wb") as err:
            self.proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        line = self.waitForLine(r"^listening (\d+)$")
        self.port = int(line.split()[1])
        return self

    def output(self) -> str:
        with open(self.stdoutPath, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def waitForLine(self, pattern: str, after: int = 0) -> str:
        """
        Wait for a line of output matching C{pattern}, among the lines past
        the first C{after}.
        """
        assert self.proc is not None
        deadline = time.monotonic() + _TIMEOUT
        while time.monotonic() < deadline:
            for line in self.output().splitlines()[after:]:
                if re.match(pattern, line):
                    return line
            if self.proc.poll() is not None:
                with open(self.stderrPath, "rb") as f:
                    err = f.read().decode("utf-8", "replace")
                raise RuntimeError(f"TLS server exited with {self.proc.returncode}: {err[-2000:]}")
            time.sleep(0.05)
        raise RuntimeError(f"no line matching {pattern!r} in {self.output()!r}")

    def reload(self) -> str:
        """
        Send C{SIGHUP}; return the server's report (C{reloaded} or
        C{reload failed: ...}).
        """
        assert self.proc is not None
        before = len(self.output().splitlines())
        os.kill(self.proc.pid, signal.SIGHUP)
        return self.waitForLine(r"^reload", before)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        shutil.rmtree(self.dir, True)


def sClient(port: int, serverName: Optional[str], caPath: str, extra: Sequence[str] = ()) -> "subprocess.CompletedProcess[str]":
    """
    Run C{openssl s_client} against the server; return its result.
    """
    args = [_need("openssl"), "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", caPath, "-verify_return_error"]
    args += ["-servername", serverName] if serverName else ["-noservername"]
    args += list(extra)
    return subprocess.run(args, input="", capture_output=True, text=True, timeout=_TIMEOUT)


def subjectCN(output: str) -> Optional[str]:
    """
    The leaf certificate's CN in C{openssl s_client} output.
    """
    m = re.search(r"^subject=.*?CN ?= ?([^,\n/]+)", output, re.MULTILINE)
    return m.group(1).strip() if m else None


def curl(port: int, name: str, caPath: str, extra: Sequence[str] = ()) -> "subprocess.CompletedProcess[str]":
    """
    C{curl https://NAME:PORT/} with NAME resolved to the loopback address,
    printing the body then the status code.  Over HTTP/1.1 (C{--http1.1}):
    these tests are about TLS (certificates, SNI, C{421}); HTTP/2 over TLS
    has its own tests, and curl would otherwise pick C{h2}, which a reverse
    listener offers by default.
    """
    args = [_need("curl"), "-sS", "--max-time", "10", "--http1.1", "--resolve", f"{name}:{port}:127.0.0.1", "--cacert", caPath]
    args += ["-w", "\n%{http_code}\n", *extra, f"https://{name}:{port}/"]
    return subprocess.run(args, capture_output=True, text=True, timeout=_TIMEOUT)


class TLSListenerIntegrationTests(SynchronousTestCase):
    """
    A real listener: C{ssl:} with its own certificate (own.test) plus a
    C{--certs} folder with a.test and b.test.
    """

    def setUp(self) -> None:
        _need("openssl")
        _need("curl")
        self.ca = TestCA()
        self.addCleanup(shutil.rmtree, self.ca.dir, True)
        self.certs = tempfile.mkdtemp(prefix="txproxy-certs-")
        self.addCleanup(shutil.rmtree, self.certs, True)
        self.ca.issue(["a.test"], os.path.join(self.certs, "a.pem"))
        self.ca.issue(["b.test", "*.b.test"], os.path.join(self.certs, "b.pem"))
        own = self.ca.issue(["own.test"], "own.pem")
        self.server = TLSServerProcess(f"ssl:0:privateKey={own}:interface=127.0.0.1", self.certs)
        self.addCleanup(self.server.stop)
        self.server.start()

    def test_sClientSeesCertificateBySNI(self) -> None:
        """
        C{openssl s_client -servername} gets the certificate for that name,
        verified against the test CA, with ALPN C{http/1.1}.
        """
        for name, cn in (("a.test", "a.test"), ("b.test", "b.test"), ("x.b.test", "b.test"), ("own.test", "own.test")):
            result = sClient(self.server.port, name, self.ca.caPath, ["-alpn", "h2,http/1.1"])
            self.assertEqual(subjectCN(result.stdout), cn, result.stdout + result.stderr)
            self.assertIn("Verify return code: 0 (ok)", result.stdout)
            self.assertIn("ALPN protocol: http/1.1", result.stdout)

    def test_sClientDefaultCertificate(self) -> None:
        """
        Without SNI, or with an unknown name, the listener's own certificate
        is served.
        """
        for name in (None, "unknown.test"):
            result = sClient(self.server.port, name, self.ca.caPath, ["-verify_return_error"])
            self.assertEqual(subjectCN(result.stdout), "own.test", result.stdout + result.stderr)

    def test_oldProtocolsRefused(self) -> None:
        """
        TLS 1.1 is refused; TLS 1.2 and 1.3 are accepted.
        """
        old = sClient(self.server.port, "a.test", self.ca.caPath, ["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"])
        self.assertNotEqual(old.returncode, 0)
        self.assertIsNone(subjectCN(old.stdout))
        for flag, version in (("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")):
            result = sClient(self.server.port, "a.test", self.ca.caPath, [flag])
            self.assertIn(f"New, {version}, Cipher", result.stdout, result.stderr)

    def test_curl(self) -> None:
        """
        curl with C{--resolve} and the test CA reaches each name and the
        server learns which certificate it served.
        """
        for name, names in (("a.test", "a.test"), ("b.test", "*.b.test,b.test"), ("x.b.test", "*.b.test,b.test")):
            result = curl(self.server.port, name, self.ca.caPath)
            self.assertEqual(result.returncode, 0, result.stderr)
            body, code = result.stdout.rstrip("\n").rsplit("\n", 1)
            self.assertEqual(code, "200")
            self.assertIn(f"names={names} ", body)
            self.assertIn(f"sni={name} ", body)
            self.assertIn("alpn=http/1.1", body)

    def test_domainFronting421(self) -> None:
        """
        A request whose Host is not a name of the certificate served on its
        connection gets C{421}.
        """
        result = curl(self.server.port, "a.test", self.ca.caPath, ["-H", "Host: b.test"])
        self.assertEqual(result.stdout.rstrip("\n").rsplit("\n", 1)[1], "421")
        result = curl(self.server.port, "x.b.test", self.ca.caPath, ["-H", "Host: y.b.test"])
        self.assertEqual(result.stdout.rstrip("\n").rsplit("\n", 1)[1], "200")

    def test_reloadOnSIGHUP(self) -> None:
        """
        After C{SIGHUP} new connections see a certificate added to the
        folder, a connection opened before keeps working, and a broken file
        makes the reload fail while the old certificates stay in use.
        """
        context = ssl.create_default_context(cafile=self.ca.caPath)
        raw = socket.create_connection(("127.0.0.1", self.server.port), timeout=_TIMEOUT)
        old = context.wrap_socket(raw, server_hostname="a.test")
        self.addCleanup(old.close)
        self.assertTrue(_request(old, "a.test").startswith(b"HTTP/1.1 200"))

        self.ca.issue(["c.test"], os.path.join(self.certs, "c.pem"))
        self.assertEqual(self.server.reload(), "reloaded")
        result = sClient(self.server.port, "c.test", self.ca.caPath)
        self.assertEqual(subjectCN(result.stdout), "c.test", result.stdout + result.stderr)
        response = _request(old, "a.test")
        self.assertTrue(response.startswith(b"HTTP/1.1 200"), response)
        self.assertIn(b"names=a.test ", response)

        with open(os.path.join(self.certs, "d.pem"), "w") as f:
            f.write("not a certificate\n")
        report = self.server.reload()
        self.assertTrue(report.startswith("reload failed: "), report)
        self.assertIn("d.pem", report)
        for name in ("a.test", "c.test"):
            result = sClient(self.server.port, name, self.ca.caPath)
            self.assertEqual(subjectCN(result.stdout), name, result.stdout + result.stderr)


class ClientCertificateIntegrationTests(SynchronousTestCase):
    """
    A C{tcp:} listener with C{--certs} and a client CA.
    """

    def test_clientCertificate(self) -> None:
        """
        curl without a client certificate fails; with one from the CA it
        gets through.
        """
        _need("curl")
        ca = TestCA()
        self.addCleanup(shutil.rmtree, ca.dir, True)
        certs = tempfile.mkdtemp(prefix="txproxy-certs-")
        self.addCleanup(shutil.rmtree, certs, True)
        ca.issue(["a.test"], os.path.join(certs, "a.pem"))
        client = ca.issue(["client.test"], "client.pem")
        server = TLSServerProcess("tcp:0:interface=127.0.0.1", certs, ca.caPath)
        self.addCleanup(server.stop)
        server.start()
        refused = curl(server.port, "a.test", ca.caPath)
        self.assertNotEqual(refused.returncode, 0)
        accepted = curl(server.port, "a.test", ca.caPath, ["--cert", client, "--key", client])
        self.assertEqual(accepted.returncode, 0, accepted.stderr)
        self.assertIn("names=a.test ", accepted.stdout)


def _backendHandler(conn: socket.socket) -> None:
    """
    A backend answering each request with its request line.
    """
    data = b""
    while True:
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
        head, _, data = data.partition(b"\r\n\r\n")
        body = b"backend saw " + head.split(b"\r\n")[0] + b"\n"
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


class ReverseProxyTLSIntegrationTests(SynchronousTestCase):
    """
    C{twistd -n txproxy --mode reverse} on an C{ssl:} listener (its own
    certificate, a.test): TLS ends at the listener, a Host outside the
    certificate's names gets C{421}.
    """

    def setUp(self) -> None:
        from tests.procs import ThreadedServer, Twistd, freePort

        _need("curl")
        _need("openssl")
        self.ca = TestCA()
        self.addCleanup(shutil.rmtree, self.ca.dir, True)
        cert = self.ca.issue(["a.test", "*.a.test"], "a.pem")
        self.backend = ThreadedServer(_backendHandler)
        self.addCleanup(self.backend.stop)
        self.port = freePort()
        upstream = f"http://127.0.0.1:{self.backend.port}"
        self.proxy = Twistd(
            [
                "--mode", "reverse",
                "--listen", f"ssl:{self.port}:privateKey={cert}:interface=127.0.0.1",
                "--route", f"a.test={upstream}",
                "--route", f"x.a.test={upstream}",
                "--route", f"b.test={upstream}",
            ],
            port=self.port,
        )
        self.proxy.start()
        self.addCleanup(self.proxy.stop)

    def test_requestsAnd421(self) -> None:
        """
        curl reaches the backend through the TLS listener with ALPN
        C{http/1.1}; a Host the certificate does not name gets C{421}; the
        proxy logs no error.
        """
        result = curl(self.port, "a.test", self.ca.caPath, ["-v"])
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("backend saw GET / HTTP/1.1", result.stdout)
        self.assertTrue(result.stdout.rstrip().endswith("200"), result.stdout)
        self.assertIn("ALPN: server accepted http/1.1", result.stderr)
        result = curl(self.port, "x.a.test", self.ca.caPath)
        self.assertTrue(result.stdout.rstrip().endswith("200"), result.stdout)
        result = curl(self.port, "a.test", self.ca.caPath, ["-H", "Host: b.test"])
        self.assertTrue(result.stdout.rstrip().endswith("421"), result.stdout)
        result = sClient(self.port, "a.test", self.ca.caPath, ["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"])
        self.assertNotEqual(result.returncode, 0)
        self.assertEqual(self.proxy.stop(), 0)
        log = self.proxy.stdout() + self.proxy.stderr()
        self.assertNotIn("Traceback", log)
        self.assertNotIn("Unhandled", log)

    def test_hostCheckedOnEveryRequest(self) -> None:
        """
        On one keep-alive TLS connection, every request's Host is checked
        against the certificate, also after requests with another Host were
        let through: a repeated Host, a second name the certificate covers,
        then one it does not (C{421}).
        """
        import socket
        import ssl

        ctx = ssl.create_default_context(cafile=self.ca.caPath)
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="a.test") as sock:
                for host, status in [("a.test", b" 200 "), ("a.test", b" 200 "), ("x.a.test", b" 200 "), ("b.test", b" 421 ")]:
                    response = _request(sock, host)
                    self.assertIn(status, response.split(b"\r\n", 1)[0], (host, response))


class HTTPSBackendIntegrationTests(SynchronousTestCase):
    """
    C{twistd -n txproxy --mode reverse} to C{https://} backends (a Python
    TLS server with a certificate from a test CA): verified against the
    route's C{ca_bundle} and the backend's name, refused (C{502}) for a
    name the certificate does not carry, reached anyway with
    C{tls_verify = false}.
    """

    def setUp(self) -> None:
        from tests.procs import ThreadedServer, Twistd, freePort

        self.ca = TestCA()
        self.addCleanup(shutil.rmtree, self.ca.dir, True)
        pem = self.ca.issue(["localhost", "127.0.0.1"], "backend.pem")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(pem)
        self.backend = ThreadedServer(_backendHandler, wrap=lambda conn: ctx.wrap_socket(conn, server_side=True))
        self.addCleanup(self.backend.stop)
        self.port = freePort()
        back = self.backend.port
        path = os.path.join(self.ca.dir, "proxy.toml")
        with open(path, "w") as f:
            f.write(f"""\
[[listeners]]
listen = ["tcp:{self.port}:interface=127.0.0.1"]
mode = "reverse"

  [[listeners.routes]]
  host = "name.test"
  upstreams = ["https://localhost:{back}"]
  ca_bundle = "{self.ca.caPath}"

  [[listeners.routes]]
  host = "ip.test"
  upstreams = ["https://127.0.0.1:{back}"]
  ca_bundle = "{self.ca.caPath}"

  [[listeners.routes]]
  host = "untrusted.test"
  upstreams = ["https://localhost:{back}"]

  [[listeners.routes]]
  host = "unchecked.test"
  upstreams = ["https://localhost:{back}"]
  tls_verify = false
""")
        self.proxy = Twistd(["--config", path], port=self.port)
        self.proxy.start()
        self.addCleanup(self.proxy.stop)

    def test_backends(self) -> None:
        """
        Verified by name and by IP address: 200 with the backend's answer;
        a CA the proxy does not trust: 502; verification off: 200.  The
        proxy logs no traceback.
        """
        for host, status in [("name.test", b" 200 "), ("ip.test", b" 200 "), ("untrusted.test", b" 502 "),
                             ("unchecked.test", b" 200 "), ("name.test", b" 200 ")]:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
                response = _request(sock, host)
            self.assertIn(status, response.split(b"\r\n", 1)[0], (host, response))
            if status == b" 200 ":
                self.assertIn(b"backend saw GET / HTTP/1.1", response)
        self.assertEqual(self.proxy.stop(), 0)
        log = self.proxy.stdout() + self.proxy.stderr()
        self.assertNotIn("Traceback", log)
        self.assertNotIn("Unhandled", log)


def _request(sock: Any, host: str) -> bytes:
    """
    Send one keep-alive request on C{sock}; return the whole response.
    """
    sock.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def _serve(description: str, certsDir: Optional[str], clientCA: Optional[str]) -> None:
    """
    The subprocess: listen with L{tlsServerEndpoint} and answer every
    request with what the HTTP layer can learn about its TLS connection.
    """
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory, Protocol

    from txproxy.tls import hostMatchesNames, requestedServerName, servedNames, tlsServerEndpoint

    class Responder(Protocol):
        buffer = b""

        def dataReceived(self, data: bytes) -> None:
            self.buffer += data
            while b"\r\n\r\n" in self.buffer:
                head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
                host = ""
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"host":
                        host = value.strip().decode("latin-1")
                names = servedNames(self.transport)
                if hostMatchesNames(host, names):
                    status = b"200 OK"
                else:
                    status = b"421 Misdirected Request"
                alpn = getattr(self.transport, "negotiatedProtocol", None) or b"-"
                body = (
                    f"names={','.join(sorted(names))} sni={requestedServerName(self.transport)} alpn={alpn.decode()}\n"
                ).encode()
                self.transport.write(
                    b"HTTP/1.1 " + status + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
                )

    endpoint = tlsServerEndpoint(reactor, description, certsDir or None, clientCA or None)

    def listening(port: Any) -> None:
        print(f"listening {port.getHost().port}", flush=True)

    def failed(f: Any) -> None:
        print(f"failed {f.getErrorMessage()}", flush=True)
        reactor.stop()

    def reload() -> None:
        try:
            endpoint.reload()
        except Exception as e:
            print(f"reload failed: {e}", flush=True)
        else:
            print("reloaded", flush=True)

    signal.signal(signal.SIGHUP, lambda *a: reactor.callFromThread(reload))
    endpoint.listen(Factory.forProtocol(Responder)).addCallbacks(listening, failed)
    reactor.run()


if __name__ == "__main__":
    _serve(sys.argv[1], sys.argv[2], sys.argv[3])


class ReverseProxyCertsDirTests(SynchronousTestCase):
    """
    C{twistd -n txproxy --mode reverse --certs DIR} with a plain and a TLS
    listener: certificates chosen by SNI from the folder, plain HTTP on the
    other listener unaffected, certificates re-read on SIGHUP.
    """

    def setUp(self) -> None:
        from tests.procs import ThreadedServer, Twistd, freePort

        _need("curl")
        self.ca = TestCA()
        self.addCleanup(shutil.rmtree, self.ca.dir, True)
        self.certs = tempfile.mkdtemp(prefix="txproxy-certs-")
        self.addCleanup(shutil.rmtree, self.certs, True)
        shutil.copy(self.ca.issue(["a.test"], "a.pem"), os.path.join(self.certs, "a.pem"))
        shutil.copy(self.ca.issue(["b.test"], "b.pem"), os.path.join(self.certs, "b.pem"))
        self.backend = ThreadedServer(_backendHandler)
        self.addCleanup(self.backend.stop)
        self.tlsPort, self.plainPort = freePort(), freePort()
        upstream = f"http://127.0.0.1:{self.backend.port}"
        fd, self.config = tempfile.mkstemp(suffix=".toml")
        os.close(fd)
        self.addCleanup(os.remove, self.config)
        with open(self.config, "w") as f:
            f.write(f"""
[[listeners]]
name = "tls"
mode = "reverse"
listen = ["tcp:{self.tlsPort}:interface=127.0.0.1"]
certs = "{self.certs}"
routes = [{{host = "*", upstreams = ["{upstream}"]}}]

[[listeners]]
name = "plain"
mode = "reverse"
listen = ["tcp:{self.plainPort}:interface=127.0.0.1"]
routes = [{{host = "*", upstreams = ["{upstream}"]}}]
""")
        self.proxy = Twistd(["--config", self.config], port=self.plainPort)
        self.proxy.start()
        from tests.procs import waitForPort

        waitForPort(self.tlsPort)
        self.addCleanup(self.proxy.stop)

    def test_sniAndReload(self) -> None:
        """
        a.test and b.test each get their certificate; the plain listener
        serves HTTP (no 421); after adding c.test's certificate and SIGHUP,
        c.test is served without a restart.
        """
        for name in ("a.test", "b.test"):
            result = curl(self.tlsPort, name, self.ca.caPath)
            self.assertTrue(result.stdout.rstrip().endswith("200"), (name, result.stdout, result.stderr))
        plain = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Host: c.test",
                                f"http://127.0.0.1:{self.plainPort}/"], capture_output=True, text=True, timeout=30)
        self.assertEqual(plain.stdout, "200")
        result = curl(self.tlsPort, "c.test", self.ca.caPath)
        self.assertNotEqual(result.returncode, 0)
        shutil.copy(self.ca.issue(["c.test"], "c.pem"), os.path.join(self.certs, "c.pem"))
        self.proxy.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "reloaded configuration" not in self.proxy.stdout() and time.monotonic() < deadline:
            time.sleep(0.05)
        result = curl(self.tlsPort, "c.test", self.ca.caPath)
        self.assertTrue(result.stdout.rstrip().endswith("200"), (result.stdout, result.stderr))


class IPAddressCertificateIntegrationTests(SynchronousTestCase):
    """
    C{twistd -n txproxy --mode reverse --certs DIR} where one certificate
    carries C{subjectAltName=IP:127.0.0.1}: C{https://127.0.0.1/} (curl
    sends no SNI for an address) is served that certificate and reaches the
    backend instead of C{421}; a Host naming another address gets C{421}.
    """

    def test_httpsToAnIPAddress(self) -> None:
        from tests.procs import ThreadedServer, Twistd, freePort

        _need("curl")
        ca = TestCA()
        self.addCleanup(shutil.rmtree, ca.dir, True)
        certs = tempfile.mkdtemp(prefix="txproxy-certs-")
        self.addCleanup(shutil.rmtree, certs, True)
        shutil.copy(ca.issue(["a.test"], "a.pem"), os.path.join(certs, "default.pem"))
        shutil.copy(ca.issue(["ip.test", "127.0.0.1"], "ip.pem"), os.path.join(certs, "ip.pem"))
        backend = ThreadedServer(_backendHandler)
        self.addCleanup(backend.stop)
        port = freePort()
        proxy = Twistd(
            ["--mode", "reverse", "--listen", f"tcp:{port}:interface=127.0.0.1", "--certs", certs,
             "--route", f"*=http://127.0.0.1:{backend.port}"],
            port=port,
        )
        proxy.start()
        self.addCleanup(proxy.stop)
        result = curl(port, "127.0.0.1", ca.caPath)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("backend saw GET / HTTP/1.1", result.stdout)
        self.assertTrue(result.stdout.rstrip().endswith("200"), result.stdout)
        result = curl(port, "127.0.0.1", ca.caPath, ["-H", "Host: 127.0.0.2"])
        self.assertTrue(result.stdout.rstrip().endswith("421"), result.stdout)
        # The certificate for a name is still chosen by SNI.
        result = curl(port, "a.test", ca.caPath)
        self.assertTrue(result.stdout.rstrip().endswith("200"), result.stdout)
        self.assertEqual(proxy.stop(), 0)
        self.assertNotIn("Traceback", proxy.stdout() + proxy.stderr())


def _selfSigned(path: str, names: Sequence[str]) -> str:
    """
    Write a self-signed certificate (its own issuer) for C{names} and its
    key to C{path}.
    """
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    sans: list = []
    for n in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    with open(path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    return path


class UpstreamVerificationIntegrationTests(SynchronousTestCase):
    """
    C{twistd -n txproxy --mode reverse} to a self-signed C{https://}
    backend: without C{--upstream-ca} the client gets C{502} naming the
    verification failure and the log says it once; with C{--upstream-ca}
    naming the backend's certificate it gets C{200}; a name the
    certificate does not carry is a C{502} naming the mismatch.
    """

    def setUp(self) -> None:
        from tests.procs import ThreadedServer

        self.dir = tempfile.mkdtemp(prefix="txproxy-upstream-ca-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.pem = _selfSigned(os.path.join(self.dir, "backend.pem"), ["127.0.0.1"])
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.pem)
        self.backend = ThreadedServer(_backendHandler, wrap=lambda conn: ctx.wrap_socket(conn, server_side=True))
        self.addCleanup(self.backend.stop)

    def proxy(self, *extra: str) -> Any:
        from tests.procs import Twistd, freePort

        port = freePort()
        proxy = Twistd(
            ["--mode", "reverse", "--listen", f"tcp:{port}:interface=127.0.0.1",
             "--route", f"ip.test=https://127.0.0.1:{self.backend.port}",
             "--route", f"name.test=https://localhost:{self.backend.port}", *extra],
            port=port,
        )
        proxy.start()
        self.addCleanup(proxy.stop)
        return proxy

    def get(self, proxy: Any, host: str) -> bytes:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
            return _request(sock, host)

    def test_selfSignedWithoutCA(self) -> None:
        """
        Without C{--upstream-ca}: C{502} whose body names OpenSSL's reason,
        and one log line naming the backend and the reason.
        """
        proxy = self.proxy()
        response = self.get(proxy, "ip.test")
        self.assertIn(b" 502 ", response.split(b"\r\n", 1)[0], response)
        self.assertIn(b"certificate verify failed: self-signed certificate", response)
        self.assertEqual(proxy.stop(), 0)
        log = proxy.stdout()
        lines = [line for line in log.splitlines() if "TLS verification failed" in line]
        self.assertEqual(len(lines), 1, log)
        self.assertIn("self-signed certificate", lines[0])
        self.assertIn(f"127.0.0.1:{self.backend.port}", lines[0])
        self.assertNotIn("Traceback", log + proxy.stderr())

    def test_upstreamCA(self) -> None:
        """
        With C{--upstream-ca} holding the backend's certificate: C{200};
        a route naming the backend by a name the certificate lacks: C{502}
        naming the mismatch.
        """
        proxy = self.proxy("--upstream-ca", self.pem)
        response = self.get(proxy, "ip.test")
        self.assertIn(b" 200 ", response.split(b"\r\n", 1)[0], response)
        self.assertIn(b"backend saw GET / HTTP/1.1", response)
        response = self.get(proxy, "name.test")
        self.assertIn(b" 502 ", response.split(b"\r\n", 1)[0], response)
        self.assertIn(b"hostname mismatch: the certificate is not valid for localhost", response)
        self.assertEqual(proxy.stop(), 0)
        self.assertNotIn("Traceback", proxy.stdout() + proxy.stderr())
