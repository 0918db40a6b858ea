# -*- test-case-name: tests.test_integration_cache_redis -*-
"""
Integration tests of the cache's shared Redis tier with real processes:
two C{twistd -n txproxy --mode reverse --cache 16M --cache-redis URL}
processes in front of one origin, sharing one C{redis-server}.  What one
proxy stores the other serves without the origin; a purge on one reaches
Redis; Redis killed, both keep serving (memory and origin) within a bound
and say so in C{/metrics}, then share again once it is back; a C{SIGHUP}
reload keeps the cache's entries and its tier.

Both proxies are sent the same C{Host} (C{site.test}), so that the key is
the same.  Every wait polls with a deadline.
"""

from __future__ import annotations

import os
import signal
import tempfile
import time
import urllib.parse
import urllib.request
from typing import Any, Callable, Dict, List, Tuple

from twisted.trial.unittest import SynchronousTestCase

from tests.procs import Twistd, freePort, waitForPort
from tests.redisserver import RedisServer
from tests.test_integration_cache import _get, _origin

#: The longest a request may take while Redis is down (the tier's own
#: bound is 50 ms; this leaves room for a loaded CI machine).
BOUND = 1.0
#: How long a poll waits for something that should happen.
DEADLINE = 15.0
#: The URL key of C{/path} through either proxy.
SITE = "http://site.test"


def waitUntil(check: Callable[[], Any], what: str, timeout: float = DEADLINE) -> Any:
    """
    Poll C{check} every 20 ms until it returns something true, and return
    it; fail after C{timeout} seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def metrics(admin: int) -> Dict[Tuple[str, str], float]:
    """
    The C{txproxy_cache_*} samples of an admin endpoint's C{/metrics}, by
    name and C{operation} label (C{""} without one).
    """
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10) as r:
        text = r.read().decode()
    samples: Dict[Tuple[str, str], float] = {}
    for line in text.splitlines():
        if not line.startswith("txproxy_cache_"):
            continue
        name, _, rest = line.partition("{")
        labels, _, value = rest.rpartition("}")
        operation = ""
        for pair in labels.split(","):
            if pair.startswith("operation="):
                operation = pair.split("=", 1)[1].strip('"')
        samples[(name, operation)] = float(value)
    return samples


def purge(admin: int, url: str) -> Tuple[int, bytes]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{admin}/cache/purge?url={urllib.parse.quote(url, safe='')}", method="POST", data=b"")
    with urllib.request.urlopen(request, timeout=10) as r:
        return r.status, r.read()


class Proxy:
    """
    One proxy process: its port, its admin port, and the process.
    """

    def __init__(self, case: SynchronousTestCase, args: List[str], port: int, admin: int) -> None:
        self.port = port
        self.admin = admin
        self.process = Twistd(args, port=port).start(wait=False)
        case.addCleanup(self.process.stop)
        # (A generous bound: PyPy starts slowly on a busy machine.)
        waitForPort(port, timeout=60, proc=self.process.proc)
        waitForPort(admin, timeout=60, proc=self.process.proc)

    def get(self, path: str) -> Tuple[int, Dict[str, str], bytes, float]:
        """
        C{(status, headers, body, seconds taken)} of a GET of C{path}.
        """
        started = time.monotonic()
        status, headers, body = _get(self.port, path)
        return status, headers, body, time.monotonic() - started

    def metrics(self) -> Dict[Tuple[str, str], float]:
        return metrics(self.admin)

    def available(self) -> float:
        return self.metrics()[("txproxy_cache_redis_available", "")]


def isHit(headers: Dict[str, str]) -> bool:
    return headers.get("cache-status", "").startswith("txproxy; hit")


class SharedRedisTierTests(SynchronousTestCase):
    """
    Two proxies, one origin, one Redis.
    """

    def setUp(self) -> None:
        self.origin, self.handler = _origin()
        self.addCleanup(self.origin.shutdown)
        self.redis = RedisServer().start()
        self.addCleanup(self.redis.cleanup)
        self.a = self.proxy()
        self.b = self.proxy()
        self.waitAvailable(1.0)

    def waitAvailable(self, value: float) -> None:
        """
        Wait until both proxies' C{txproxy_cache_redis_available} is
        C{value}.
        """
        for proxy in (self.a, self.b):
            waitUntil(lambda p=proxy: p.available() == value, f"txproxy_cache_redis_available {value}")

    def proxy(self) -> Proxy:
        port, admin = freePort(), freePort()
        return Proxy(self, [
            "--mode", "reverse", "--listen", f"tcp:{port}:interface=127.0.0.1",
            "--route", f"*=http://127.0.0.1:{self.origin.server_address[1]}",
            "--cache", "16M", "--cache-redis", self.redis.url,
            "--admin", f"tcp:{admin}:interface=127.0.0.1",
        ], port, admin)

    def count(self, path: str) -> int:
        return self.handler.counts.get(path, 0)  # type: ignore[attr-defined,no-any-return]

    def keys(self) -> List[str]:
        return list(self.redis.command("KEYS", "*"))

    def stored(self, n: int) -> None:
        """
        Wait until Redis holds C{n} keys (a stored response is its variant
        and its URL's index: two keys).
        """
        waitUntil(lambda: len(self.keys()) == n, f"{n} keys in Redis")

    def test_storedThroughAHitThroughB(self) -> None:
        """
        A response stored through proxy A is a hit through proxy B (with
        A's body, counted as a Redis hit) without reaching the origin.
        """
        status, headers, body, _ = self.a.get("/shared")
        self.assertEqual((status, body), (200, b"body /shared 1"))
        self.assertIn("fwd=uri-miss", headers["cache-status"])
        self.stored(2)
        status, headers, body, _ = self.b.get("/shared")
        self.assertEqual((status, body), (200, b"body /shared 1"))
        self.assertTrue(isHit(headers), headers)
        self.assertEqual(self.count("/shared"), 1)
        self.assertEqual(self.b.metrics()[("txproxy_cache_redis_hits_total", "")], 1.0)
        self.assertEqual(self.a.metrics()[("txproxy_cache_redis_hits_total", "")], 0.0)

    def test_purgeOnAReachesRedis(self) -> None:
        """
        A purge on A's admin endpoint removes the URL from A and from
        Redis: B, which never served it, then misses and goes to the
        origin.  B's own memory tier keeps what B already served (a purge
        reaches one process and the shared tier, as docs/cache.rst says).
        """
        self.a.get("/gone")
        self.a.get("/kept")
        self.stored(4)
        _, headers, body, _ = self.b.get("/kept")
        self.assertTrue(isHit(headers), headers)
        self.assertEqual(self.count("/kept"), 1)
        for path in ("/gone", "/kept"):
            self.assertEqual(purge(self.a.admin, SITE + path), (200, b"1"))
        self.assertEqual(self.keys(), [])
        # B never served /gone: a miss, to the origin.
        status, headers, body, _ = self.b.get("/gone")
        self.assertEqual((status, body), (200, b"body /gone 2"))
        self.assertFalse(isHit(headers), headers)
        self.assertEqual(self.count("/gone"), 2)
        # B served /kept before the purge: still in its memory tier.
        _, headers, body, _ = self.b.get("/kept")
        self.assertEqual(body, b"body /kept 1")
        self.assertTrue(isHit(headers), headers)
        # A purged its memory too.
        _, headers, body, _ = self.a.get("/kept")
        self.assertEqual(body, b"body /kept 2")
        self.assertFalse(isHit(headers), headers)
        self.assertEqual(self.count("/kept"), 2)

    def test_redisKilledAndRestarted(self) -> None:
        """
        Redis killed: both proxies keep serving, from memory and the
        origin, each request within L{BOUND}; /metrics says the tier is
        unavailable and counts the lookups and stores that skipped it.
        Redis started again on the same port (empty): the tier is
        available again and sharing resumes.
        """
        self.a.get("/warm")
        self.stored(2)
        self.assertTrue(isHit(self.b.get("/warm")[1]))
        port = self.redis.port
        self.redis.kill()
        for p in (self.a, self.b):
            # At once, before the proxy may have noticed: a memory hit.
            status, headers, body, took = p.get("/warm")
            self.assertEqual((status, body), (200, b"body /warm 1"))
            self.assertTrue(isHit(headers), headers)
            self.assertLess(took, BOUND)
            # A memory miss at once: Redis is asked (or known down), the
            # origin answers, within the bound.
            status, headers, body, took = p.get("/racing")
            self.assertEqual(status, 200)
            self.assertFalse(isHit(headers), headers)
            self.assertLess(took, BOUND)
        self.assertEqual(self.count("/racing"), 2)
        self.waitAvailable(0.0)
        for i, p in enumerate((self.a, self.b)):
            # A memory miss goes to the origin, without waiting on Redis;
            # then it is a memory hit.
            status, headers, body, took = p.get("/down")
            self.assertEqual((status, body), (200, b"body /down %d" % (i + 1)))
            self.assertFalse(isHit(headers), headers)
            self.assertLess(took, BOUND)
            status, headers, body, took = p.get("/down")
            self.assertTrue(isHit(headers), headers)
            self.assertLess(took, BOUND)
            samples = p.metrics()
            self.assertGreaterEqual(samples[("txproxy_cache_redis_skipped_total", "lookup")], 1.0)
            self.assertGreaterEqual(samples[("txproxy_cache_redis_skipped_total", "store")], 1.0)
        self.assertEqual(self.count("/down"), 2)
        self.assertEqual(self.count("/warm"), 1)
        self.redis.start()
        self.assertEqual(self.redis.port, port)
        self.waitAvailable(1.0)
        self.a.get("/after")
        self.stored(2)
        status, headers, body, _ = self.b.get("/after")
        self.assertEqual((status, body), (200, b"body /after 1"))
        self.assertTrue(isHit(headers), headers)
        self.assertEqual(self.count("/after"), 1)


class ReloadTests(SynchronousTestCase):
    """
    A C{SIGHUP} reload of C{--config} keeps the cache's entries and its
    Redis tier.
    """

    def test_reloadKeepsEntries(self) -> None:
        """
        A response stored before a reload is a hit after it, from the
        memory tier (Redis flushed meanwhile), and the tier still stores.
        """
        origin, handler = _origin()
        self.addCleanup(origin.shutdown)
        redis = RedisServer().start()
        self.addCleanup(redis.cleanup)
        port, admin = freePort(), freePort()
        directory = tempfile.mkdtemp(prefix="txproxy-reload-")
        path = os.path.join(directory, "proxy.toml")

        def write(timeout: str) -> None:
            with open(path, "w") as f:
                f.write(
                    f'admin = "tcp:{admin}:interface=127.0.0.1"\n'
                    f'[[listeners]]\nname = "web"\nlisten = ["tcp:{port}:interface=127.0.0.1"]\n'
                    f'mode = "reverse"\ncache = "16M"\ncache_redis = "{redis.url}"\n'
                    f'idle_timeout = {timeout}\n'
                    f'[[listeners.routes]]\nhost = "*"\n'
                    f'upstreams = ["http://127.0.0.1:{origin.server_address[1]}"]\n'
                )

        write("60")
        proxy = Proxy(self, ["--config", path], port, admin)
        waitUntil(lambda: proxy.available() == 1.0, "the Redis tier to connect")
        _, headers, body, _ = proxy.get("/r")
        self.assertFalse(isHit(headers), headers)
        waitUntil(lambda: len(redis.command("KEYS", "*")) == 2, "the response in Redis")
        redis.command("FLUSHALL")
        write("61")
        proxy.process.signal(signal.SIGHUP)
        waitUntil(lambda: "reloaded configuration" in proxy.process.stdout(), "the reload")
        _, headers, body, _ = proxy.get("/r")
        self.assertEqual(body, b"body /r 1")
        self.assertTrue(isHit(headers), headers)
        self.assertEqual(handler.counts.get("/r"), 1)  # type: ignore[attr-defined]
        self.assertEqual(proxy.available(), 1.0)
        proxy.get("/s")
        waitUntil(lambda: len(redis.command("KEYS", "*")) == 2, "a response stored after the reload")
