"""
Tests for the cache's operations: C{POST /cache/purge} on the admin
endpoint, the cache on C{/status} and in C{/metrics}, the cache options
and a reload that resizes the cache (L{txproxy.runtime.service}).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from tests.test_admin import get
from tests.test_cache_memory import entry
from txproxy.config import ConfigError, fromFlags, loadFile, parseSize
from txproxy.runtime.admin import renderStatusHTML
from txproxy.runtime.service import ProxyService
from txproxy.runtime.workers import SupervisorAdminSource, WorkerSupervisor
from txproxy.testing import FakeTransport


class CacheOptionTests(SynchronousTestCase):
    def test_sizes(self) -> None:
        """
        Sizes take K, M and G suffixes (powers of 1024).
        """
        self.assertEqual(parseSize("512K"), 512 * 1024)
        self.assertEqual(parseSize("64m"), 64 * 1024**2)
        self.assertEqual(parseSize("1G"), 1024**3)
        self.assertEqual(parseSize("1000"), 1000)
        self.assertEqual(parseSize("2MiB"), 2 * 1024**2)
        for bad in ("", "0", "1T", "-5", "5.5M", "M"):
            self.assertRaises(ConfigError, parseSize, bad)

    def test_flags(self) -> None:
        """
        --cache, --cache-max-object and --cache-redis reach the listener.
        """
        config = fromFlags(["tcp:0"], [("cache", "64M"), ("cache-max-object", "1M"),
                                       ("cache-redis", "redis://127.0.0.1:6379/2")])
        listener = config.listeners[0]
        self.assertEqual((listener.cache, listener.cacheMaxObject, listener.cacheRedis),
                         (64 * 1024**2, 1024**2, "redis://127.0.0.1:6379/2"))

    def test_defaults(self) -> None:
        """
        No cache by default; 8 MiB largest object.
        """
        listener = fromFlags(["tcp:0"], []).listeners[0]
        self.assertEqual((listener.cache, listener.cacheMaxObject, listener.cacheRedis), (None, 8388608, None))

    def test_errors(self) -> None:
        """
        Precise errors: a bad size, a bad Redis URL, the companions without
        --cache, --cache in a TCP mode.
        """
        cases = [
            ([("cache", "lots")], "--cache: bad size"),
            ([("cache", "1M"), ("cache-redis", "http://x")], "bad Redis URL"),
            ([("cache-redis", "redis://127.0.0.1:6379/0")], "--cache-redis needs --cache"),
            ([("cache-max-object", "1M")], "--cache-max-object needs --cache"),
            ([("mode", "tcp"), ("upstream", "tcp:127.0.0.1:1"), ("cache", "1M")], "--cache is only for modes"),
        ]
        for options, message in cases:
            e = self.assertRaises(ConfigError, fromFlags, ["tcp:0"], options)
            self.assertIn(message, str(e))

    def test_toml(self) -> None:
        """
        The file takes cache, cache_max_object, cache_redis per listener
        and cache = false per route.
        """
        fd, path = tempfile.mkstemp(suffix=".toml")
        os.write(fd, b"""
[[listeners]]
name = "web"
mode = "reverse"
listen = ["tcp:0"]
cache = "1G"
cache_max_object = 1048576

[[listeners.routes]]
host = "a.test"
upstreams = ["http://127.0.0.1:8001"]

[[listeners.routes]]
host = "b.test"
upstreams = ["http://127.0.0.1:8002"]
cache = false
""")
        os.close(fd)
        self.addCleanup(os.unlink, path)
        listener = loadFile(path).listeners[0]
        self.assertEqual((listener.cache, listener.cacheMaxObject), (1024**3, 1048576))
        self.assertEqual([r.cache for r in listener.routes], [True, False])


class CacheAdminTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.reactor.advance(1_700_000_000)
        config = fromFlags(["tcp:3128"], [("admin", "tcp:9901:interface=127.0.0.1"), ("name", "web"),
                                          ("cache", "1M")])
        self.service = ProxyService(config, self.reactor)
        self.service.installSignalHandlers = False
        self.service.startService()
        self.addCleanup(self._stop)
        self.cache = self.service.factories["web"].cache

    def _stop(self) -> None:
        if self.service.running:
            self.service.stopService()
            self.reactor.advance(10)

    def site(self) -> Any:
        (admin,) = [f for (port, f, backlog, iface) in self.reactor.tcpServers if port == 9901]
        return admin

    def test_purge(self) -> None:
        """
        POST /cache/purge?url=URL (percent-encoded) removes every variant
        of URL and answers 200 with their number.
        """
        self.cache.store.insert(entry(url=b"http://a.test/x?y=1", variant=b"1"))
        self.cache.store.insert(entry(url=b"http://a.test/x?y=1", variant=b"2"))
        self.cache.store.insert(entry(url=b"http://a.test/other"))
        status, _, body = get(self.site(), b"/cache/purge?url=http%3A%2F%2Fa.test%2Fx%3Fy%3D1", method=b"POST")
        self.assertEqual((status, body), (200, b"2"))
        self.assertEqual(len(self.cache.store), 1)
        status, _, body = get(self.site(), b"/cache/purge?url=http%3A%2F%2Fa.test%2Fx%3Fy%3D1", method=b"POST")
        self.assertEqual((status, body), (200, b"0"))

    def test_purgeErrors(self) -> None:
        """
        A missing or bad URL is a 400 saying why; GET is a 405.
        """
        status, _, body = get(self.site(), b"/cache/purge", method=b"POST")
        self.assertEqual(status, 400)
        self.assertIn(b"url", body)
        status, _, body = get(self.site(), b"/cache/purge?url=ftp%3A%2F%2Fx%2F", method=b"POST")
        self.assertEqual(status, 400)
        self.assertIn(b"not an absolute http or https URL", body)
        status, headers, _ = get(self.site(), b"/cache/purge?url=http%3A%2F%2Fa%2F")
        self.assertEqual((status, headers.get("allow")), (405, "POST"))

    def test_statusAndMetrics(self) -> None:
        """
        /status shows the cache's entries, bytes and hit ratio; /metrics has
        txproxy_cache_requests_total by result and txproxy_cache_bytes.
        """
        factory = self.service.factories["web"]
        proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = FakeTransport()
        proto.makeConnection(transport)
        self.cache.store.insert(entry(url=b"http://a.test/x", at=self.reactor.seconds()))
        proto.dataReceived(b"GET http://a.test/x HTTP/1.1\r\nHost: a.test\r\n\r\n")
        self.assertIn(b"Cache-Status: txproxy; hit", transport.value())
        status, _, body = get(self.site(), b"/status?format=json")
        data = json.loads(body)
        cache = data["listeners"][0]["cache"]
        self.assertEqual((cache["entries"], cache["requests"]["hit"], cache["hitRatio"]), (1, 1, 1.0))
        self.assertEqual(cache["bytes"], self.cache.store.bytes)
        self.assertIn("<h2>Caches</h2>", renderStatusHTML(data))
        _, _, text = get(self.site(), b"/metrics")
        samples = {(s.name, s.labels.get("result")): s.value
                   for f in text_string_to_metric_families(text.decode()) for s in f.samples
                   if s.name.startswith("txproxy_cache")}
        self.assertEqual(samples[("txproxy_cache_requests_total", "hit")], 1.0)
        self.assertEqual(samples[("txproxy_cache_requests_total", "miss")], 0.0)
        self.assertEqual(samples[("txproxy_cache_bytes", None)], float(self.cache.store.bytes))

    def test_reloadKeepsAndShrinks(self) -> None:
        """
        A reload keeps the cache (the same object, its entries) and, when
        the size shrinks, evicts to fit.
        """
        for i in range(50):
            self.cache.store.insert(entry(url=b"http://a.test/%d" % i, body=b"x" * 1000))
        self.service._apply(fromFlags(["tcp:3128"], [("admin", "tcp:9901:interface=127.0.0.1"), ("name", "web"),
                                                     ("cache", "10K")]))
        cache = self.service.factories["web"].cache
        self.assertIs(cache, self.cache)
        self.assertLessEqual(cache.store.bytes, 10 * 1024)
        self.assertGreater(len(cache.store), 0)
        self.service._apply(fromFlags(["tcp:3128"], [("admin", "tcp:9901:interface=127.0.0.1"), ("name", "web")]))
        self.assertIsNone(self.service.factories["web"].cache)

    def test_reloadWithoutRedisTierRejected(self) -> None:
        """
        A reload naming --cache-redis while the tier is not installed is
        refused before anything changes.
        """
        saved = sys.modules.get("txproxy.cache.redis")
        sys.modules["txproxy.cache.redis"] = None  # type: ignore[assignment]
        self.addCleanup(lambda: sys.modules.pop("txproxy.cache.redis") if saved is None
                        else sys.modules.__setitem__("txproxy.cache.redis", saved))
        new = fromFlags(["tcp:3128"], [("admin", "tcp:9901:interface=127.0.0.1"), ("name", "web"),
                                       ("cache", "10K"), ("cache-redis", "redis://127.0.0.1:1/0")])
        self.assertRaises(ConfigError, self.service._apply, new)
        self.assertEqual(self.cache.store.maxBytes, 1024**2)
        self.assertIs(self.service.factories["web"].cache, self.cache)

    def test_noCacheIs404(self) -> None:
        """
        Purging on a process with no cache is a 404.
        """
        self.service._apply(fromFlags(["tcp:3128"], [("admin", "tcp:9901:interface=127.0.0.1"), ("name", "web")]))
        status, _, _ = get(self.site(), b"/cache/purge?url=http%3A%2F%2Fa%2F", method=b"POST")
        self.assertEqual(status, 404)


class SupervisorPurgeTests(SynchronousTestCase):
    def test_fansOut(self) -> None:
        """
        With --workers the supervisor POSTs the purge to every worker and
        sums their counts.
        """
        config = fromFlags(["tcp:3128"], [("workers", "2"), ("cache", "1M")])
        supervisor = WorkerSupervisor(config, MemoryReactorClock())
        asked = []

        def fromWorkers(path: bytes, method: bytes = b"GET") -> Any:
            asked.append((path, method))
            return defer.succeed({1: b"2", 2: b"1", 3: None})

        supervisor._fromWorkers = fromWorkers  # type: ignore[method-assign]
        source = SupervisorAdminSource(supervisor)
        self.assertEqual(self.successResultOf(source.purgeCache("http://a.test/x?y")), 3)
        self.assertEqual(asked, [(b"/cache/purge?url=http%3A%2F%2Fa.test%2Fx%3Fy", b"POST")])
        self.assertRaises(ValueError, source.purgeCache, "nope")
