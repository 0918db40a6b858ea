# -*- test-case-name: tests.test_integration_http -*-
"""
Integration tests of HTTP forwarding: a real C{twistd -n txproxy} forward
proxy, a real origin server, and real clients: curl, urllib, headless
Chromium.
"""

from __future__ import annotations

import atexit
import http.server
import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.request
from typing import Any, Dict, List

from twisted.trial.unittest import SynchronousTestCase

from tests.procs import TestCA, ThreadedServer, Twistd, freePort

_shared: Dict[str, Any] = {}


class _Origin(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    connections: List[Any] = []

    def log_message(self, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        _Origin.connections.append(self.client_address)

    def do_GET(self) -> None:
        if self.path.startswith("/big/"):
            size = int(self.path.split("/")[2])
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            block = b"x" * (1 << 20)
            left = size
            try:
                while left:
                    n = min(left, len(block))
                    self.wfile.write(block[:n])
                    left -= n
            except OSError:
                pass
            return
        if self.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b"chunk-one;", b"chunk-two"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
            return
        body = (
            b"<html><head><title>txproxy test page</title></head>"
            b"<body><p id='x'>served through txproxy: " + self.headers.get("Via", "").encode() + b"</p></body></html>"
        )
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        data = self.rfile.read(length)
        body = json.dumps({"received": len(data), "head": data[:20].decode("latin-1")}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def origin() -> Any:
    if "origin" not in _shared:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Origin)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        _shared["origin"] = server
    return _shared["origin"]


def proxy() -> Twistd:
    if "proxy" not in _shared:
        port = freePort()
        _shared["proxy"] = Twistd(
            ["--listen", f"tcp:{port}:interface=127.0.0.1", "--connect-ports", "*", "--access-log", "access.log",
             "--access-log-format", "json"],
            port,
        ).start()
    return _shared["proxy"]


@atexit.register
def _stop() -> None:
    if "proxy" in _shared:
        _shared["proxy"].stop()
    if "origin" in _shared:
        _shared["origin"].shutdown()


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class CurlTests(SynchronousTestCase):
    def curl(self, *args: str, input: bytes = b"") -> subprocess.CompletedProcess:
        return subprocess.run(["curl", "-sS", "--max-time", "20", "-x", f"http://127.0.0.1:{proxy().port}", *args],
                              capture_output=True, input=input, timeout=60)

    def test_get(self) -> None:
        """
        curl fetches a page through the proxy; the origin saw a Via.
        """
        result = self.curl(f"http://127.0.0.1:{origin().server_port}/page")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(b"served through txproxy: 1.1 txproxy", result.stdout)

    def test_postBody(self) -> None:
        """
        A request body arrives whole.
        """
        result = self.curl("--data-binary", "@-", f"http://127.0.0.1:{origin().server_port}/post", input=b"hello body")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(json.loads(result.stdout), {"received": 10, "head": "hello body"})

    def test_postLargeBody(self) -> None:
        """
        A 5 MB request body arrives whole (streamed with flow control).
        """
        data = os.urandom(5 * 1024 * 1024)
        result = subprocess.run(
            ["curl", "-sS", "--max-time", "30", "-x", f"http://127.0.0.1:{proxy().port}", "--data-binary", "@-",
             "-H", "Content-Type: application/octet-stream", f"http://127.0.0.1:{origin().server_port}/post"],
            input=data, capture_output=True, timeout=60,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(json.loads(result.stdout)["received"], len(data))

    def test_chunked(self) -> None:
        """
        A chunked response is relayed intact.
        """
        result = self.curl(f"http://127.0.0.1:{origin().server_port}/chunked")
        self.assertEqual(result.stdout, b"chunk-one;chunk-two")

    def test_keepAliveReusesConnections(self) -> None:
        """
        Two URLs in one curl run use one client connection and one upstream
        connection.
        """
        before = len(_Origin.connections)
        result = self.curl("-w", "%{num_connects}\\n", "-o", "/dev/null", "-o", "/dev/null",
                           f"http://127.0.0.1:{origin().server_port}/a", f"http://127.0.0.1:{origin().server_port}/b")
        self.assertEqual(result.stdout.split(), [b"1", b"0"])
        self.assertLessEqual(len(_Origin.connections) - before, 1)

    def test_urllib(self) -> None:
        """
        Python's urllib with a proxy handler works through the proxy.
        """
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": f"http://127.0.0.1:{proxy().port}"}))
        with opener.open(f"http://127.0.0.1:{origin().server_port}/page", timeout=20) as response:
            self.assertEqual(response.status, 200)
            self.assertIn(b"served through txproxy", response.read())

    def test_badRequestLeavesProxyServing(self) -> None:
        """
        Smuggling attempts get 400 and the proxy keeps serving.
        """
        s = socket.create_connection(("127.0.0.1", proxy().port), timeout=10)
        s.sendall(b"POST http://127.0.0.1:1/ HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n")
        self.assertTrue(s.recv(100).startswith(b"HTTP/1.1 400 "))
        s.close()
        self.test_get()


class FlowControlTests(SynchronousTestCase):
    def test_slowClientKeepsMemoryFlat(self) -> None:
        """
        A 1 GiB download to a client that reads slowly at first keeps the
        proxy's memory flat: backpressure stops reading from the origin
        instead of buffering.
        """
        p = proxy()
        size = 1 << 30
        s = socket.create_connection(("127.0.0.1", p.port), timeout=30)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        baseline = _rss(p.pid)
        s.sendall(f"GET http://127.0.0.1:{origin().server_port}/big/{size} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        peak = baseline
        got = 0
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            got += len(s.recv(4096))
            time.sleep(0.05)
            peak = max(peak, _rss(p.pid))
        while got < size:
            data = s.recv(1 << 20)
            if not data:
                break
            got += len(data)
            peak = max(peak, _rss(p.pid)) if got % (64 << 20) < (1 << 20) else peak
        s.close()
        self.assertGreater(got, size)  # head + body
        self.assertLess(peak - baseline, 48 << 20, f"RSS grew by {(peak - baseline) >> 20} MiB")


class ChromiumTests(SynchronousTestCase):
    def chromium(self, url: str, *extra: str) -> str:
        exe = shutil.which("chromium") or shutil.which("chromium-browser")
        if exe is None:
            raise AssertionError("chromium is not installed (scripts/test installs it)")
        profile = tempfile.mkdtemp(prefix="txproxy-chromium-")
        result = subprocess.run(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", f"--proxy-server=http://127.0.0.1:{proxy().port}",
             "--proxy-bypass-list=<-loopback>", *extra, "--dump-dom", url],
            capture_output=True, timeout=120,
        )
        shutil.rmtree(profile, ignore_errors=True)
        return result.stdout.decode("utf-8", "replace")

    def test_httpPage(self) -> None:
        """
        Headless Chromium loads a local HTTP page through the proxy.
        """
        dom = self.chromium(f"http://127.0.0.1:{origin().server_port}/page")
        self.assertIn("served through txproxy: 1.1 txproxy", dom)

    def test_httpsPageThroughConnect(self) -> None:
        """
        Headless Chromium loads a local HTTPS page through a CONNECT tunnel
        (the test certificate's CA is not in Chromium's store, so the
        certificate error is ignored; the tunnel is what is tested).
        """
        ca = TestCA()
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(ca.issue(["localhost", "127.0.0.1"], "s.pem"))

        def handler(conn: socket.socket) -> None:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                data += chunk
            body = b"<html><body><p>secret page over tls</p></body></html>"
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                         % (len(body), body))

        server = ThreadedServer(handler, wrap=lambda s: ctx.wrap_socket(s, server_side=True))
        self.addCleanup(server.stop)
        before = len(open(os.path.join(proxy().cwd, "access.log")).read()) if os.path.exists(
            os.path.join(proxy().cwd, "access.log")) else 0
        dom = self.chromium(f"https://localhost:{server.port}/", "--ignore-certificate-errors")
        self.assertIn("secret page over tls", dom)
        with open(os.path.join(proxy().cwd, "access.log")) as f:
            f.seek(before)
            records = [json.loads(line) for line in f if line.strip()]
        self.assertTrue(any(r["method"] == "CONNECT" and r["target"] == f"localhost:{server.port}" for r in records),
                        records)
