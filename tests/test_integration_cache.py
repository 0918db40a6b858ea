# -*- test-case-name: tests.test_integration_cache -*-
"""
Integration tests of the cache: a real C{twistd -n txproxy --mode reverse
--cache SIZE} in front of a real origin on loopback: hit and miss,
revalidation, collapsing of concurrent misses, stale-while-revalidate,
stale-if-error, purge through the admin endpoint, a hit for an HTTP/2
client (curl), and the memory bound while ten times SIZE of objects pass
through.
"""

from __future__ import annotations

import http.server
import platform
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from typing import Any, Dict, List, Optional, Tuple

from twisted.trial.unittest import SynchronousTestCase

from tests.procs import Twistd, freePort, waitForPort


class _Origin(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    counts: Dict[str, int] = {}
    conditionals: List[str] = []
    failing = False
    lock = threading.Lock()

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, *headers: Tuple[str, str]) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:
        path = self.path
        with self.lock:
            n = self.counts[path] = self.counts.get(path, 0) + 1
            if self.headers.get("If-None-Match"):
                self.conditionals.append(path)
        if path.startswith("/slow"):
            time.sleep(0.5)
            self._send(200, b"slow %d" % n, ("Cache-Control", "max-age=60"))
        elif path.startswith("/swr"):
            if self.headers.get("If-None-Match") == '"v1"':
                self._send(304, b"", ("Cache-Control", "max-age=1, stale-while-revalidate=30"), ("ETag", '"v1"'))
                return
            self._send(200, b"swr %d" % n, ("Cache-Control", "max-age=1, stale-while-revalidate=30"), ("ETag", '"v1"'))
        elif path.startswith("/sie"):
            if type(self).failing:
                self._send(503, b"down")
                return
            self._send(200, b"sie %d" % n, ("Cache-Control", "max-age=1, stale-if-error=60"))
        elif path.startswith("/big/"):
            size = int(path.split("/")[2])
            self._send(200, b"b" * size, ("Cache-Control", "max-age=600"))
        else:
            self._send(200, b"body %s %d" % (path.encode(), n), ("Cache-Control", "max-age=60"))

    do_HEAD = do_GET


def _origin() -> Tuple[http.server.ThreadingHTTPServer, type]:
    handler = type("Origin", (_Origin,), {"counts": {}, "conditionals": [], "failing": False,
                                          "lock": threading.Lock()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, handler


def _get(port: int, path: str, headers: Optional[Dict[str, str]] = None) -> Tuple[int, Dict[str, str], bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Host": "site.test", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def _rssKiB(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


class CacheIntegrationTests(SynchronousTestCase):
    size = "4M"

    def setUp(self) -> None:
        self.origin, self.handler = _origin()
        self.addCleanup(self.origin.shutdown)
        self.port = freePort()
        self.admin = freePort()
        self.proxy = Twistd([
            "--mode", "reverse", "--listen", f"tcp:{self.port}:interface=127.0.0.1",
            "--route", f"*=http://127.0.0.1:{self.origin.server_address[1]}",
            "--cache", self.size, "--cache-max-object", "1M",
            "--admin", f"tcp:{self.admin}:interface=127.0.0.1",
        ], port=self.port).start(wait=False)
        self.addCleanup(self.proxy.stop)
        # (A generous bound: PyPy starts slowly on a busy machine.)
        waitForPort(self.port, timeout=60, proc=self.proxy.proc)
        waitForPort(self.admin, timeout=60, proc=self.proxy.proc)

    def count(self, path: str) -> int:
        return self.handler.counts.get(path, 0)  # type: ignore[attr-defined,no-any-return]

    def test_missHitAndHead(self) -> None:
        """
        The first GET goes to the origin; the second is a hit with Age and
        Cache-Status; a HEAD is answered from the stored GET.
        """
        status, headers, body = _get(self.port, "/a")
        self.assertEqual((status, body), (200, b"body /a 1"))
        self.assertIn("fwd=uri-miss", headers["cache-status"])
        status, headers, body = _get(self.port, "/a")
        self.assertEqual((status, body), (200, b"body /a 1"))
        self.assertTrue(headers["cache-status"].startswith("txproxy; hit"), headers)
        self.assertIn("age", headers)
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/a", method="HEAD", headers={"Host": "site.test"})
        with urllib.request.urlopen(request, timeout=10) as r:
            self.assertEqual(r.headers["Content-Length"], "9")
            self.assertTrue(r.headers["Cache-Status"].startswith("txproxy; hit"))
        self.assertEqual(self.count("/a"), 1)

    def test_collapsing(self) -> None:
        """
        Twenty concurrent misses for one URL reach the origin once.
        """
        results: List[Tuple[int, Dict[str, str], bytes]] = []

        def one() -> None:
            results.append(_get(self.port, "/slow"))

        threads = [threading.Thread(target=one) for _ in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(15)
        self.assertEqual([r[2] for r in results], [b"slow 1"] * 20)
        self.assertEqual(self.count("/slow"), 1)

    def test_staleWhileRevalidate(self) -> None:
        """
        Past max-age, within stale-while-revalidate: the stale response at
        once, and a conditional request to the origin behind it.
        """
        self.assertEqual(_get(self.port, "/swr")[2], b"swr 1")
        time.sleep(1.3)
        status, headers, body = _get(self.port, "/swr")
        self.assertEqual((status, body), (200, b"swr 1"))
        self.assertIn("stale-while-revalidate", headers["cache-status"])
        deadline = time.time() + 5
        while self.count("/swr") < 2 and time.time() < deadline:
            time.sleep(0.05)
        self.assertEqual(self.handler.conditionals, ["/swr"])  # type: ignore[attr-defined]

    def test_staleIfError(self) -> None:
        """
        Past max-age with the origin failing (503): the stale response
        within stale-if-error.
        """
        self.assertEqual(_get(self.port, "/sie")[2], b"sie 1")
        time.sleep(1.3)
        self.handler.failing = True  # type: ignore[attr-defined]
        status, headers, body = _get(self.port, "/sie")
        self.assertEqual((status, body), (200, b"sie 1"))
        self.assertIn("stale-if-error", headers["cache-status"])
        self.assertEqual(self.count("/sie"), 2)

    def test_purge(self) -> None:
        """
        POST /cache/purge?url=URL on the admin endpoint removes it: 200
        with the count, and the next request goes to the origin.
        """
        _get(self.port, "/p?x=1")
        url = urllib.parse.quote("http://site.test/p?x=1", safe="")
        request = urllib.request.Request(f"http://127.0.0.1:{self.admin}/cache/purge?url={url}", method="POST")
        with urllib.request.urlopen(request, timeout=10) as r:
            self.assertEqual((r.status, r.read()), (200, b"1"))
        self.assertEqual(_get(self.port, "/p?x=1")[2], b"body /p?x=1 2")

    def test_http2Hit(self) -> None:
        """
        An HTTP/2 client (curl with prior knowledge) gets hits too.
        """
        def curl() -> Tuple[str, str]:
            out = subprocess.run(
                ["curl", "-sS", "--http2-prior-knowledge", "-D", "-", "-H", "Host: site.test", "--max-time", "10",
                 f"http://127.0.0.1:{self.port}/h2"], capture_output=True, timeout=20)
            self.assertEqual(out.returncode, 0, out.stderr)
            text = out.stdout.decode()
            head, _, body = text.partition("\r\n\r\n")
            return head, body

        head, body = curl()
        self.assertTrue(head.startswith("HTTP/2 200"), head)
        head, body = curl()
        self.assertTrue(head.startswith("HTTP/2 200"), head)
        self.assertIn("cache-status: txproxy; hit", head.lower())
        self.assertEqual(body, "body /h2 1")
        self.assertEqual(self.count("/h2"), 1)


class CacheMemoryBoundTests(SynchronousTestCase):
    """
    The memory bound: ten times SIZE of distinct cacheable objects pass
    through; the process's RSS grows by at most SIZE plus a stated margin,
    and txproxy_cache_bytes never exceeds SIZE.
    """

    size = 8 * 1024 * 1024

    def bound(self) -> float:
        """
        How much RSS may grow (stated in docs/cache.rst): on CPython, SIZE
        plus 16 MiB (the allocator's slack, the responses in flight); on
        PyPy, whose garbage collector frees old objects only when its heap
        has grown by 1.82 times what survived the last major collection,
        2.5 times SIZE plus 64 MiB.
        """
        if platform.python_implementation() == "PyPy":
            return 2.5 * self.size + 64 * 1024 * 1024
        return self.size + 16 * 1024 * 1024

    def test_rssBounded(self) -> None:
        origin, handler = _origin()
        self.addCleanup(origin.shutdown)
        port, admin = freePort(), freePort()
        proxy = Twistd([
            "--mode", "reverse", "--listen", f"tcp:{port}:interface=127.0.0.1",
            "--route", f"*=http://127.0.0.1:{origin.server_address[1]}",
            "--cache", str(self.size), "--admin", f"tcp:{admin}:interface=127.0.0.1",
        ], port=port).start(wait=False)
        self.addCleanup(proxy.stop)
        waitForPort(port, timeout=60, proc=proxy.proc)
        waitForPort(admin, timeout=60, proc=proxy.proc)
        objectSize = 256 * 1024
        # Warm up (imports, buffers) before the baseline.
        for i in range(4):
            _get(port, f"/big/{objectSize - i}")
        baseline = _rssKiB(proxy.pid) * 1024
        peak = 0
        total = 0
        i = 0
        while total < 10 * self.size:
            status, _, body = _get(port, f"/big/{objectSize + i}")
            self.assertEqual((status, len(body)), (200, objectSize + i))
            total += len(body)
            i += 1
            if i % 8 == 0:
                peak = max(peak, _rssKiB(proxy.pid) * 1024)
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10) as r:
            metrics = r.read().decode()
        stored = [float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("txproxy_cache_bytes{")]
        self.assertEqual(len(stored), 1)
        self.assertLessEqual(stored[0], self.size)
        self.assertGreater(stored[0], self.size / 2)
        growth = peak - baseline
        self.assertLessEqual(growth, self.bound(),
                             f"RSS grew {growth / 2**20:.1f} MiB for a {self.size / 2**20:.0f} MiB cache")
