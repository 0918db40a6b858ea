# -*- test-case-name: tests.test_integration_h2_upstream -*-
"""
Integration tests: a real C{twistd -n txproxy --mode reverse} routing
HTTP/1.1 clients to HTTP/2 origins (L{tests.h2origin}) over C{h2c://}
(prior knowledge) and C{h2://} (TLS, ALPN C{h2}, verified with the test
CA), on loopback sockets.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

from twisted.trial.unittest import SynchronousTestCase

from tests.procs import REPO, TestCA, ThreadedServer, Twistd, childPythonPath, freePort, waitForPort


def _readUntilClosed(sock: socket.socket) -> None:
    sock.settimeout(30)
    while sock.recv(65536):
        pass


class _Origin:
    """
    A L{tests.h2origin} subprocess, stopped by its PID.
    """

    def __init__(self, port: int, *extra: str) -> None:
        self.port = port
        self.outPath = os.path.join(REPO, "_trial_temp_h2origin_%d.log" % port)
        env = dict(os.environ)
        env["PYTHONPATH"] = childPythonPath(env.get("PYTHONPATH", ""))
        self._out = open(self.outPath, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.h2origin", str(port), *extra], cwd=REPO, env=env,
                                     stdout=self._out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        waitForPort(port, proc=self.proc)

    def output(self) -> str:
        with open(self.outPath, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._out.close()
        if os.path.exists(self.outPath):
            os.remove(self.outPath)


def _request(port: int, host: str, method: str = "GET", path: str = "/", body: bytes = b"",
             headers: Optional[Dict[str, str]] = None) -> Tuple[int, Dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        h = {"Host": host}
        h.update(headers or {})
        conn.request(method, path, body=body or None, headers=h)
        response = conn.getresponse()
        data = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data
    finally:
        conn.close()


class H2UpstreamIntegrationTests(SynchronousTestCase):
    """
    HTTP/1.1 clients through txproxy to HTTP/2 origins.
    """

    def setUp(self) -> None:
        self.ca = TestCA()
        self.addCleanup(shutil.rmtree, self.ca.dir, True)
        pem = self.ca.issue(["localhost", "127.0.0.1"], "origin.pem")
        self.h2c = _Origin(freePort())
        self.addCleanup(self.h2c.stop)
        self.h2 = _Origin(freePort(), pem)
        self.addCleanup(self.h2.stop)
        # An HTTPS server without ALPN (as HTTP/1.1-only servers often are).
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(pem)
        self.http1 = ThreadedServer(_readUntilClosed, wrap=lambda conn: ctx.wrap_socket(conn, server_side=True))
        self.addCleanup(self.http1.stop)
        self.port = freePort()
        path = os.path.join(self.ca.dir, "proxy.toml")
        with open(path, "w") as f:
            f.write(f"""\
[[listeners]]
listen = ["tcp:{self.port}:interface=127.0.0.1"]
mode = "reverse"

  [[listeners.routes]]
  host = "c.test"
  upstreams = ["h2c://127.0.0.1:{self.h2c.port}"]

  [[listeners.routes]]
  host = "t.test"
  upstreams = ["h2://localhost:{self.h2.port}"]
  ca_bundle = "{self.ca.caPath}"

  [[listeners.routes]]
  host = "untrusted.test"
  upstreams = ["h2://localhost:{self.h2.port}"]

  [[listeners.routes]]
  host = "alpn.test"
  upstreams = ["h2://localhost:{self.http1.port}"]
  ca_bundle = "{self.ca.caPath}"
""")
        self.proxy = Twistd(["--config", path], port=self.port).start()
        self.addCleanup(self.proxy.stop)

    def _concurrent(self, host: str, count: int) -> List[Tuple[int, Dict[str, str], bytes]]:
        results: List[Any] = [None] * count
        barrier = threading.Barrier(count)

        def run(i: int) -> None:
            barrier.wait(10)
            try:
                results[i] = _request(self.port, host, "POST", f"/r/{i}", b"x" * i)
            except Exception as e:  # reported below
                results[i] = e

        threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        return results

    def test_concurrentRequestsOneConnection(self) -> None:
        """
        50 concurrent HTTP/1.1 requests to an h2c route and to an h2 route
        are all answered (each its own path and body), all on one
        connection to the origin, which saw no other (but the probe that
        waited for it to listen).
        """
        for host, origin, scheme in [("c.test", self.h2c, "http"), ("t.test", self.h2, "https")]:
            results = self._concurrent(host, 50)
            conns = set()
            for i, result in enumerate(results):
                self.assertIsInstance(result, tuple, (host, i, result))
                status, headers, body = result
                self.assertEqual(status, 200, (host, i, body))
                echo = json.loads(body)
                self.assertEqual(echo["path"], f"/r/{i}")
                self.assertEqual(echo["method"], "POST")
                self.assertEqual(echo["scheme"], scheme)
                self.assertEqual(echo["authority"], host)
                self.assertEqual(echo["length"], i)
                conns.add(headers["x-conn"])
            self.assertEqual(len(conns), 1, conns)
            self.assertEqual(origin.output().count("connections "), 2, origin.output())

    def test_largeBodiesBothWays(self) -> None:
        """
        A 6 MB upload and a 6 MB download, over h2c and h2: sha256 checked
        at the far end of each.
        """
        size = 6 * 1024 * 1024
        upload = os.urandom(size)
        for host in ("c.test", "t.test"):
            status, headers, body = _request(self.port, host, "PUT", "/up", upload)
            self.assertEqual(status, 200)
            echo = json.loads(body)
            self.assertEqual((echo["length"], echo["sha256"]), (size, hashlib.sha256(upload).hexdigest()))
            status, headers, body = _request(self.port, host, "GET", "/down", headers={"X-Size": str(size)})
            self.assertEqual(status, 200)
            self.assertEqual(len(body), size)
            self.assertEqual(hashlib.sha256(body).hexdigest(), headers["x-sha256"])

    def test_trailersReachHTTP11Client(self) -> None:
        """
        Trailers the origin sends reach an HTTP/1.1 client as the chunked
        trailer section.
        """
        body = b"hello trailers"
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as sock:
            sock.sendall(b"POST /t HTTP/1.1\r\nHost: c.test\r\nTE: trailers\r\nX-Trailers: 1\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            data = b""
            deadline = time.monotonic() + 30
            while not data.endswith(b"\r\n\r\n") or b"\r\n0\r\n" not in data:
                chunk = sock.recv(65536)
                if not chunk or time.monotonic() > deadline:
                    break
                data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        self.assertIn(b"transfer-encoding: chunked", head.lower())
        digest = hashlib.sha256(body).hexdigest().encode()
        self.assertTrue(rest.endswith(b"\r\n0\r\ngrpc-status: 0\r\nx-body-sha256: " + digest + b"\r\n\r\n"), rest[-200:])

    def test_verificationAndALPN(self) -> None:
        """
        An h2 origin whose certificate the proxy does not trust, and one
        that does not select ALPN h2, each get the client a 502; the log
        says why, with no traceback.
        """
        for host, why in [("untrusted.test", "TLS verification of the upstream failed"),
                          ("alpn.test", "did not select ALPN h2")]:
            status, headers, body = _request(self.port, host)
            self.assertEqual(status, 502, (host, body))
            self.assertIn(why.encode(), body)
        self.assertEqual(self.proxy.stop(), 0)
        log = self.proxy.stdout() + self.proxy.stderr()
        self.assertIn("did not select ALPN h2", log)
        self.assertNotIn("Traceback", log)
        self.assertNotIn("Unhandled", log)
