"""
Integration tests for TLS interception: a real C{twistd} forward proxy with
C{--intercept-ca}, a local TLS origin with its own CA (given as
C{--upstream-ca}), and real clients (curl, Python's urllib, headless
Chromium) over loopback sockets.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from typing import Any, Dict, List

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.trial.unittest import SynchronousTestCase

from tests.procs import (
    TestCA,
    ThreadedServer,
    Twistd,
    childPythonPath,
    connectThrough,
    freePort,
    twistdPath,
    waitForPort,
)
from tests.test_intercept_ca import makeCA, writeCA

_CA_NAME = "txproxy integration interception CA"


def _originHandler(conn: socket.socket) -> None:
    """
    An HTTP/1.1 origin with keep-alive: answers each request with what it
    saw (method, path, the X-Rewritten field).
    """
    conn.settimeout(10)
    buf = b""
    while True:
        while b"\r\n\r\n" not in buf:
            data = conn.recv(65536)
            if not data:
                return
            buf += data
        head, _, buf = buf.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        method, path, _ = lines[0].split(b" ", 2)
        fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:])}
        body = b"origin saw " + method + b" " + path + b" x-rewritten=" + fields.get(b"x-rewritten", b"-") + b"\n"
        if path == b"/page":
            body = b"<html><body><p id='origin'>intercepted page</p></body></html>"
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


class _InterceptTestCase(SynchronousTestCase):
    """
    The interception CA (files in a private folder), the origin's CA and a
    TLS origin on loopback whose certificate names localhost and
    127.0.0.1.
    """

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="txproxy-intercept-it-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        cert, key = makeCA(name=_CA_NAME)
        self.caPath = writeCA(self.dir, cert, key)
        self.caCertPath = os.path.join(self.dir, "ca.crt")
        with open(self.caCertPath, "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
        self.originCA = TestCA()
        self.addCleanup(shutil.rmtree, self.originCA.dir, True)
        pem = self.originPem = self.originCA.issue(["localhost", "127.0.0.1"], "origin.pem")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(pem)
        self.origin = ThreadedServer(_originHandler, wrap=lambda conn: ctx.wrap_socket(conn, server_side=True))
        self.addCleanup(self.origin.stop)
        self.authPath = os.path.join(self.dir, "htpasswd")
        with open(self.authPath, "w") as f:
            f.write("alice:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=\n")

    def proxy(self, *extra: str, trustOrigin: bool = True, origin: Any = None) -> Twistd:
        port = freePort()
        args = [
            "--listen", f"tcp:{port}:interface=127.0.0.1",
            "--intercept-ca", self.caPath,
            "--connect-ports", str((origin or self.origin).port),
            "--access-log", "access.log", "--access-log-format", "json",
            *extra,
        ]
        if trustOrigin:
            args += ["--upstream-ca", self.originCA.caPath]
        proxy = Twistd(args, port=port)
        proxy.start()
        self.addCleanup(proxy.stop)
        return proxy

    def records(self, proxy: Twistd, count: int) -> List[Dict[str, Any]]:
        path = os.path.join(proxy.cwd, "access.log")
        deadline = time.monotonic() + 10
        lines: List[Dict[str, Any]] = []
        while time.monotonic() < deadline:
            if os.path.exists(path):
                with open(path) as f:
                    lines = [json.loads(line) for line in f if line.strip()]
                if len(lines) >= count:
                    return lines
            time.sleep(0.05)
        raise AssertionError(f"expected {count} access-log records, got {lines}")

    def curl(self, proxy: Twistd, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["curl", "-sS", "--max-time", "20", "--proxy", f"http://127.0.0.1:{proxy.port}", *args],
            capture_output=True,
            timeout=30,
        )


class CurlTests(_InterceptTestCase):
    def test_curlThroughInterception(self) -> None:
        """
        curl trusting only the interception CA fetches two URLs from the
        origin on one kept-alive intercepted connection; the JSON access
        log has each inner request with the user and the full https:// URL.
        """
        proxy = self.proxy("--auth", self.authPath)
        base = f"https://localhost:{self.origin.port}"
        result = self.curl(proxy, "--proxy-user", "alice:secret", "--cacert", self.caCertPath, f"{base}/one", f"{base}/two?x=1")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout, b"origin saw GET /one x-rewritten=-\norigin saw GET /two?x=1 x-rewritten=-\n")
        self.assertEqual(proxy.stop(), 0)
        records = self.records(proxy, 3)
        inner = [r for r in records if r["method"] == "GET"]
        self.assertEqual([r["target"] for r in inner], [f"https://localhost:{self.origin.port}/one", f"https://localhost:{self.origin.port}/two?x=1"])
        self.assertEqual({r["user"] for r in records}, {"alice"})
        self.assertEqual({r["status"] for r in records}, {200})
        (connect,) = [r for r in records if r["method"] == "CONNECT"]
        self.assertEqual(connect["reason"], "intercepted")
        self.assertEqual(self.origin.accepted, 1)
        self.assertNotIn("Traceback", proxy.stdout() + proxy.stderr())

    def test_servedCertificate(self) -> None:
        """
        The certificate served inside the tunnel is issued by the
        interception CA for the CONNECT host, names it only in its
        subjectAltName, and comes with the CA after it.
        """
        proxy = self.proxy()
        sock, status, _ = connectThrough(proxy.port, f"127.0.0.1:{self.origin.port}")
        self.addCleanup(sock.close)
        self.assertEqual(status, 200)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(self.caCertPath)
        with ctx.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
            cert = x509.load_der_x509_certificate(tls.getpeercert(True))
            self.assertEqual(tls.selected_alpn_protocol(), None)
        issuer = cert.issuer.rfc4514_string()
        self.assertIn(_CA_NAME, issuer)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual([str(a) for a in san.get_values_for_type(x509.IPAddress)], ["127.0.0.1"])
        self.assertEqual(len(cert.subject), 0)

    def test_noInterceptKeepsTheOriginsCertificate(self) -> None:
        """
        A host matched by --no-intercept is tunnelled as before: the client
        sees the origin's own certificate, and curl trusting the origin's
        CA succeeds.
        """
        proxy = self.proxy("--no-intercept", "localhost")
        result = self.curl(proxy, "--cacert", self.originCA.caPath, f"https://localhost:{self.origin.port}/plain")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout, b"origin saw GET /plain x-rewritten=-\n")
        result = self.curl(proxy, "--cacert", self.caCertPath, f"https://localhost:{self.origin.port}/plain")
        self.assertNotEqual(result.returncode, 0)
        records = self.records(proxy, 2)
        self.assertEqual(proxy.stop(), 0)
        self.assertEqual({r["method"] for r in records}, {"CONNECT"})
        self.assertEqual({r["reason"] for r in records} & {"intercepted"}, set())

    def test_untrustedOriginIs502(self) -> None:
        """
        Without --upstream-ca the origin's certificate does not verify: the
        client gets 502 inside the decrypted connection naming the reason,
        the log has one line, and the origin never sees a request.
        """
        proxy = self.proxy(trustOrigin=False)
        result = self.curl(proxy, "--cacert", self.caCertPath, "-w", "%{http_code}", f"https://localhost:{self.origin.port}/x")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertTrue(result.stdout.endswith(b"502"), result.stdout)
        self.assertIn(b"TLS verification of the upstream failed: certificate verify failed", result.stdout)
        self.assertEqual(proxy.stop(), 0)
        lines = [line for line in proxy.stdout().splitlines() if "TLS verification failed" in line]
        self.assertEqual(len(lines), 1, proxy.stdout())
        self.assertNotIn("Traceback", proxy.stdout() + proxy.stderr())


class CurlHTTP2Tests(_InterceptTestCase):
    """
    ALPN inside the tunnel follows the origin: curl (which offers h2 and
    http/1.1) speaks HTTP/2 to the proxy when the origin selects h2, and
    HTTP/1.1 when it does not.
    """

    def h2Origin(self) -> ThreadedServer:
        """
        A TLS origin selecting ALPN h2 when offered (http/1.1 otherwise),
        serving HTTP/1.1 (which is what the proxy sends it).
        """
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.originPem)
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        origin = ThreadedServer(_originHandler, wrap=lambda conn: ctx.wrap_socket(conn, server_side=True))
        self.addCleanup(origin.stop)
        return origin

    def test_curlGetsHTTP2(self) -> None:
        """
        The origin selects h2: curl --http2 gets HTTP/2 for the inner
        responses (two URLs, one connection), logged as HTTP/2.0 with the
        user and the https:// URL; the probe sent nothing, so the origin
        saw only the proxy's requests.
        """
        origin = self.h2Origin()
        proxy = self.proxy("--auth", self.authPath, origin=origin)
        base = f"https://localhost:{origin.port}"
        result = self.curl(
            proxy, "--http2", "--proxy-user", "alice:secret", "--cacert", self.caCertPath,
            "-w", "[%{http_version} %{http_code}]\n", f"{base}/one", f"{base}/two?x=1",
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(
            result.stdout,
            b"origin saw GET /one x-rewritten=-\n[2 200]\norigin saw GET /two?x=1 x-rewritten=-\n[2 200]\n",
        )
        self.assertEqual(proxy.stop(), 0)
        records = self.records(proxy, 3)
        inner = [r for r in records if r["method"] == "GET"]
        self.assertEqual([r["target"] for r in inner], [f"{base}/one", f"{base}/two?x=1"])
        self.assertEqual({r["version"] for r in inner}, {"HTTP/2.0"})
        self.assertEqual({r["user"] for r in records}, {"alice"})
        self.assertEqual({r["status"] for r in records}, {200})
        self.assertNotIn("Traceback", proxy.stdout() + proxy.stderr())

    def test_curlGetsHTTP11FromAnHTTP11Origin(self) -> None:
        """
        The origin selects no h2: curl --http2 gets HTTP/1.1, and the
        connection that asked the origin carried the request (one
        connection to the origin in all).
        """
        proxy = self.proxy()
        result = self.curl(
            proxy, "--http2", "--cacert", self.caCertPath, "-w", "[%{http_version} %{http_code}]\n",
            f"https://localhost:{self.origin.port}/one",
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout, b"origin saw GET /one x-rewritten=-\n[1.1 200]\n")
        self.assertEqual(self.origin.accepted, 1)
        self.assertEqual(proxy.stop(), 0)
        (inner,) = [r for r in self.records(proxy, 2) if r["method"] == "GET"]
        self.assertEqual(inner["version"], "HTTP/1.1")

    def test_http2OffGivesHTTP11(self) -> None:
        """
        With --http2 off the proxy offers http/1.1 only, whatever the
        origin speaks.
        """
        origin = self.h2Origin()
        proxy = self.proxy("--http2", "off", origin=origin)
        result = self.curl(
            proxy, "--http2", "--cacert", self.caCertPath, "-w", "[%{http_version}]",
            f"https://localhost:{origin.port}/one",
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertTrue(result.stdout.endswith(b"[1.1]"), result.stdout)
        self.assertEqual(proxy.stop(), 0)


class UrllibTests(_InterceptTestCase):
    def test_urllib(self) -> None:
        """
        Python's urllib through the proxy, trusting the interception CA.
        """
        proxy = self.proxy()
        ctx = ssl.create_default_context(cafile=self.caCertPath)
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({"https": f"http://127.0.0.1:{proxy.port}"}),
            urllib.request.HTTPSHandler(context=ctx),
        )
        with opener.open(f"https://localhost:{self.origin.port}/from-urllib", timeout=20) as response:
            self.assertEqual(response.status, 200)
            self.assertEqual(response.read(), b"origin saw GET /from-urllib x-rewritten=-\n")
        records = self.records(proxy, 1)
        self.assertEqual(records[0]["target"], f"https://localhost:{self.origin.port}/from-urllib")


_TAC = '''
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import Application
from twisted.internet import reactor

from txproxy.accesslog import openAccessLog
from txproxy.config import fromFlags
from txproxy.connector import Connector
from txproxy.forward import ForwardProxyFactory, ForwardProxyProtocol
from txproxy.http import RequestHead, replaceHeader
from txproxy.runtime.service import serverEndpoint


class RewritingProxy(ForwardProxyProtocol):
    def rewriteRequest(self, request, head):
        if request.scheme == "https":
            headers = replaceHeader(head.headers, b"X-Rewritten", b"inside-https")
            return RequestHead(head.method, head.target, head.version, headers)
        return head


LISTEN = "tcp:{port}:interface=127.0.0.1"
listener = fromFlags([LISTEN], [
    ("intercept-ca", {ca!r}), ("upstream-ca", {upstreamCA!r}), ("connect-ports", "*"),
]).listeners[0]
factory = ForwardProxyFactory(listener, Connector(reactor), reactor, accessLog=openAccessLog("access.log", "json"))
factory.protocol = RewritingProxy
application = Application("txproxy-intercept-test")
StreamServerEndpointService(serverEndpoint(reactor, LISTEN), factory).setServiceParent(application)
'''


class SubclassTests(_InterceptTestCase):
    def test_subclassRewritesInsideHTTPS(self) -> None:
        """
        A ForwardProxyProtocol subclass run from a .tac rewrites a header of
        requests inside an intercepted tunnel.
        """
        port = freePort()
        tac = os.path.join(self.dir, "proxy.tac")
        with open(tac, "w") as f:
            f.write(_TAC.format(port=port, ca=self.caPath, upstreamCA=self.originCA.caPath))
        env = dict(os.environ)
        env["PYTHONPATH"] = childPythonPath(env.get("PYTHONPATH", ""))
        out = open(os.path.join(self.dir, "tac.log"), "wb")
        self.addCleanup(out.close)
        proc = subprocess.Popen([twistdPath(), "-n", "--pidfile=", "-y", tac], cwd=self.dir, env=env, stdout=out, stderr=out,
                                stdin=subprocess.DEVNULL)

        def stop() -> None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

        self.addCleanup(stop)
        waitForPort(port, proc=proc)
        result = subprocess.run(
            ["curl", "-sS", "--max-time", "20", "--proxy", f"http://127.0.0.1:{port}", "--cacert", self.caCertPath,
             f"https://localhost:{self.origin.port}/r"],
            capture_output=True, timeout=30)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout, b"origin saw GET /r x-rewritten=inside-https\n")


class ChromiumTests(_InterceptTestCase):
    def test_chromiumLoadsAPage(self) -> None:
        """
        Headless Chromium through the proxy, trusting the interception
        CA's certificates (by the public key they all carry), loads a page
        from the TLS origin; the access log has it as an https:// request.
        """
        exe = shutil.which("chromium") or shutil.which("chromium-browser")
        if exe is None:
            raise AssertionError("chromium is not installed (scripts/test installs it); this test is never skipped")
        proxy = self.proxy()
        # Chromium trusts a certificate by the hash of its public key; every
        # minted certificate carries the proxy process's one key: read it
        # from one served certificate.
        sock, status, _ = connectThrough(proxy.port, f"localhost:{self.origin.port}")
        self.assertEqual(status, 200)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(self.caCertPath)
        with ctx.wrap_socket(sock, server_hostname="localhost") as tls:
            cert = x509.load_der_x509_certificate(tls.getpeercert(True))
        spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        pin = base64.b64encode(hashlib.sha256(spki).digest()).decode("ascii")
        profile = tempfile.mkdtemp(prefix="txproxy-chromium-")
        self.addCleanup(shutil.rmtree, profile, True)
        result = subprocess.run(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", f"--proxy-server=http://127.0.0.1:{proxy.port}",
             "--proxy-bypass-list=<-loopback>", f"--ignore-certificate-errors-spki-list={pin}",
             "--dump-dom", f"https://localhost:{self.origin.port}/page"],
            capture_output=True, timeout=90)
        dom = result.stdout.decode("utf-8", "replace")
        self.assertIn("intercepted page", dom, result.stderr[-2000:])
        records = self.records(proxy, 2)
        targets = [r["target"] for r in records if r["method"] == "GET"]
        self.assertIn(f"https://localhost:{self.origin.port}/page", targets)


