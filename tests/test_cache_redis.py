# -*- test-case-name: tests.test_cache_redis -*-
"""
Tests for L{txproxy.cache.redis.RedisTier}, the cache's shared second tier.

The storage contract every tier keeps (L{tests.cachecontract}, which the
memory tier runs too), with what only the Redis tier keeps (expiry by ttl,
counters: L{RedisTierContractMixin}), runs against a real C{redis-server}
that each test starts on a free loopback port (L{tests.redisserver}; never
skipped) and against L{txproxy.testing.FakeRedisTier} on a fake clock.  The outage tests (Redis
down at start, killed, frozen with SIGSTOP) wait on real I/O, briefly and
always with a bound.
"""

from __future__ import annotations

import time
from typing import Any, List, Optional

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest
from twisted.trial.unittest import SynchronousTestCase

from tests.cachecontract import RedisTierContractMixin
from tests.redisserver import RedisServer
from tests.test_redislimiter import sleep, startRedis, waitFor
from txproxy.cache.redis import DEFAULT_PREFIX, MAX_TTL, RedisTier, RedisUnavailable
from txproxy.limits._redisio import _eagerProtocol
from txproxy.testing import Clock, FakeRedisTier

#: The lookup bound the tests give the real tier.
TIMEOUT = 0.05
#: How much later than TIMEOUT a bounded lookup may fire on a loaded CI box.
SLACK = 0.5

EVERY_BYTE = bytes(range(256))


class RealRedisTierTests(RedisTierContractMixin, unittest.TestCase):
    """
    The contract on L{RedisTier} and a real Redis.
    """

    timeout = 20

    @inlineCallbacks
    def setUp(self) -> Any:
        self.server = startRedis(self)
        self.tier = yield makeTier(self, self.server)

    def settle(self) -> "Deferred[Any]":
        # One connection: PING is answered after every store sent before it.
        return self.tier.ping()

    def elapse(self, seconds: float) -> "Deferred[Any]":
        return sleep(seconds)


class FakeRedisTierTests(RedisTierContractMixin, unittest.TestCase):
    """
    The contract on L{FakeRedisTier}, on a fake clock.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.tier = FakeRedisTier(self.clock)
        self.tier.start()

    def settle(self) -> "Deferred[Any]":
        return succeed(None)

    def elapse(self, seconds: float) -> "Deferred[Any]":
        self.clock.advance(seconds)
        return succeed(None)

    def test_unavailable(self) -> None:
        """
        While C{available} is false, lookups answer nothing at once, stores
        are skipped and purges fail with L{RedisUnavailable}.
        """
        self.tier.put(b"u", b"v", b"x", 30)
        self.tier.available = False
        self.assertIsNone(self.successResultOf(self.tier.get(b"u", b"v")))
        self.assertEqual(self.successResultOf(self.tier.variants(b"u")), [])
        self.tier.put(b"u", b"w", b"y", 30)
        self.failureResultOf(self.tier.purge(b"u"), RedisUnavailable)
        self.assertEqual(self.tier.skipped, 3)
        self.tier.available = True
        self.assertEqual(self.successResultOf(self.tier.variants(b"u")), [b"v"])

    def test_stalled(self) -> None:
        """
        While C{stalled}, a lookup answers nothing after C{timeout} seconds
        of the clock, counted as a timeout.
        """
        self.tier.put(b"u", b"v", b"x", 30)
        self.tier.stalled = True
        d = self.tier.get(b"u", b"v")
        self.assertNoResult(d)
        self.clock.advance(self.tier.timeout)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.tier.timeouts, 1)


@inlineCallbacks
def makeTier(case: unittest.TestCase, server: RedisServer, connect: bool = True, **kwargs: Any) -> Any:
    """
    A started L{RedisTier} on C{server} (connected, unless C{connect} is
    false), stopped in cleanup.
    """
    kwargs.setdefault("timeout", TIMEOUT)
    tier = RedisTier(server.url, reactor, **kwargs)
    tier.start()
    case.addCleanup(tier.stop)
    if connect:
        yield waitFor(lambda: tier.available)
    return tier


@inlineCallbacks
def timed(d: "Deferred[Any]") -> Any:
    """
    C{(result, seconds)} of a Deferred.
    """
    started = time.monotonic()
    result = yield d
    return result, time.monotonic() - started


class RedisLayoutTests(unittest.TestCase):
    """
    How the tier lays out its keys in Redis.
    """

    timeout = 20

    @inlineCallbacks
    def setUp(self) -> Any:
        self.server = startRedis(self)
        self.tier = yield makeTier(self, self.server)

    @inlineCallbacks
    def test_keyNamesAndExpiry(self) -> Any:
        """
        Names start with the versioned prefix and hash the keys (never the
        raw URL); a variant expires with its ttl, the index with the
        longest ttl stored so far (a shorter one does not shorten it).
        """
        url = b"http://a.test/" + b"x" * 5000
        self.tier.put(url, b"v1", b"x", 30)
        self.tier.put(url, b"v2", b"x", 5)
        yield self.tier.ping()
        keys = sorted(self.server.command("KEYS", "*"))
        self.assertEqual(len(keys), 3)
        for key in keys:
            self.assertTrue(key.startswith("txproxy:cache:v1:{"), key)
            self.assertLess(len(key), 200)
        index = self.tier.indexName(url).decode()
        self.assertIn(index, keys)
        self.assertEqual(self.server.command("TYPE", index), "hash")
        self.assertTrue(29000 < self.server.command("PTTL", index) <= 30000)
        v2 = self.tier.variantName(url, b"v2").decode()
        self.assertTrue(4000 < self.server.command("PTTL", v2) <= 5000)
        # URL digest as a hash tag: a URL's keys share a Cluster slot.
        self.assertEqual(len({k.split("}")[0] for k in keys}), 1)

    @inlineCallbacks
    def test_prefixSeparatesVersions(self) -> Any:
        """
        Tiers with different prefixes (layout versions) never see each
        other's entries.
        """
        other = yield makeTier(self, self.server, prefix=b"txproxy:cache:v2:")
        self.tier.put(b"u", b"v", b"v1 blob", 30)
        yield self.tier.ping()
        self.assertIsNone((yield other.get(b"u", b"v")))
        self.assertEqual((yield other.variants(b"u")), [])
        self.assertEqual((yield other.purge(b"u")), 0)
        self.assertEqual((yield self.tier.get(b"u", b"v")), b"v1 blob")
        self.assertEqual(DEFAULT_PREFIX, b"txproxy:cache:v1:")

    @inlineCallbacks
    def test_scriptsReloadedAfterFlush(self) -> Any:
        """
        After C{SCRIPT FLUSH} (or a Redis restart: no script cached)
        stores, listings and purges still work.
        """
        self.tier.put(b"u", b"v", b"x", 30)
        yield self.tier.ping()
        self.server.command("SCRIPT", "FLUSH")
        self.assertEqual((yield self.tier.variants(b"u")), [b"v"])
        self.server.command("SCRIPT", "FLUSH")
        self.tier.put(b"u", b"w", b"y", 30)
        yield self.tier.ping()
        self.assertEqual((yield self.tier.get(b"u", b"w")), b"y")
        self.server.command("SCRIPT", "FLUSH")
        self.assertEqual((yield self.tier.purge(b"u")), 2)
        self.assertEqual(self.tier.errors, 0)

    @inlineCallbacks
    def test_sharedBetweenTiers(self) -> Any:
        """
        What one tier (process) stores, another on the same Redis serves
        and can purge.
        """
        other = yield makeTier(self, self.server)
        self.tier.put(b"u", b"v", b"shared", 30)
        yield self.tier.ping()
        self.assertEqual((yield other.get(b"u", b"v")), b"shared")
        self.assertEqual((yield other.purge(b"u")), 1)
        self.assertIsNone((yield self.tier.get(b"u", b"v")))

    @inlineCallbacks
    def test_errorReplyIsNotAnOutage(self) -> Any:
        """
        An error reply (a key of the wrong type where a blob should be) is
        counted in C{errors}, answers "nothing", and leaves the tier
        available.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        name = self.tier.variantName(b"u", b"v").decode()
        self.server.command("HSET", name, "f", "v")
        self.assertIsNone((yield self.tier.get(b"u", b"v")))
        logged = [formatEvent(e) for e in events]
        self.assertEqual([m for m in logged if "unavailable" in m], [])
        self.assertEqual(len([m for m in logged if "error reply WRONGTYPE" in m]), 1, logged)
        self.assertEqual((self.tier.errors, self.tier.timeouts), (1, 0))
        self.assertTrue(self.tier.available)
        self.tier.put(b"u", b"w", b"x", 30)
        yield self.tier.ping()
        self.assertEqual((yield self.tier.get(b"u", b"w")), b"x")
        # Logged once, not once per error.
        for _ in range(3):
            yield self.tier.get(b"u", b"v")
        self.assertEqual(self.tier.errors, 4)
        logged = [formatEvent(e) for e in events]
        self.assertEqual(len([m for m in logged if "error reply" in m]), 1, logged)

    @inlineCallbacks
    def test_maxTTL(self) -> Any:
        """
        A ttl past C{MAX_TTL} is stored for C{MAX_TTL}.
        """
        self.tier.put(b"u", b"v", b"x", 1e12)
        yield self.tier.ping()
        pttl = self.server.command("PTTL", self.tier.variantName(b"u", b"v").decode())
        self.assertTrue(MAX_TTL * 1000 - 60000 < pttl <= MAX_TTL * 1000, pttl)

    def test_badURL(self) -> None:
        """
        A URL that is not C{redis://} is refused when the tier is made.
        """
        self.assertRaises(ValueError, RedisTier, "http://127.0.0.1:6379", reactor)
        self.assertRaises(ValueError, RedisTier, "redis://", reactor)


class RedisOutageTests(unittest.TestCase):
    """
    Redis down, killed, or frozen: lookups answer nothing within the bound,
    the tier says it is unavailable, and it recovers by itself.
    """

    timeout = 30

    def setUp(self) -> None:
        self.events = EventLoggingObserver()
        globalLogPublisher.addObserver(self.events)
        self.addCleanup(globalLogPublisher.removeObserver, self.events)

    def logged(self, text: str) -> List[str]:
        return [m for m in (formatEvent(e) for e in self.events) if text in m]

    @inlineCallbacks
    def assertWorks(self, tier: RedisTier, blob: bytes = b"ok") -> Any:
        tier.put(b"u", b"v", blob, 30)
        yield tier.ping()
        self.assertEqual((yield tier.get(b"u", b"v")), blob)

    @inlineCallbacks
    def test_downAtStart(self) -> Any:
        """
        With no Redis listening, the tier starts anyway; lookups answer
        nothing at once (no timer, no wait), stores are skipped, a purge
        fails with L{RedisUnavailable}; once Redis starts, the tier
        connects and works, with one log line for the outage.
        """
        server = RedisServer()
        self.addCleanup(server.cleanup)
        tier = yield makeTier(self, server, connect=False, initialDelay=0.05, maxDelay=0.2)
        self.assertFalse(tier.available)
        get = tier.get(b"u", b"v")
        self.assertIsNone(self.successResultOf(get))
        self.assertEqual(self.successResultOf(tier.variants(b"u")), [])
        tier.put(b"u", b"v", b"x", 30)
        yield self.assertFailure(tier.purge(b"u"), RedisUnavailable)
        self.assertGreaterEqual(tier.skipped, 3)
        self.assertEqual(tier.timeouts, 0)
        server.start()
        yield waitFor(lambda: tier.available, timeout=5)
        self.assertIsNone((yield tier.get(b"u", b"v")))
        yield self.assertWorks(tier)
        self.assertEqual(len(self.logged("unavailable")), 1)
        self.assertEqual(len(self.logged("answers again")), 1)

    @inlineCallbacks
    def test_killedMidRun(self) -> Any:
        """
        Redis killed while the tier runs: a lookup answers nothing within
        the bound, the tier turns unavailable, and it recovers when Redis
        comes back on the same address (empty: nothing stale is served).
        """
        server = startRedis(self)
        tier = yield makeTier(self, server, initialDelay=0.05, maxDelay=0.2)
        yield self.assertWorks(tier)
        server.kill()
        result, took = yield timed(tier.get(b"u", b"v"))
        self.assertIsNone(result)
        self.assertLess(took, TIMEOUT + SLACK)
        yield waitFor(lambda: not tier.available, timeout=5)
        result, took = yield timed(tier.get(b"u", b"v"))
        self.assertIsNone(result)
        self.assertLess(took, TIMEOUT + SLACK)
        server.start()
        yield waitFor(lambda: tier.available, timeout=5)
        self.assertIsNone((yield tier.get(b"u", b"v")))
        yield self.assertWorks(tier, b"again")

    @inlineCallbacks
    def test_stalled(self) -> Any:
        """
        A frozen Redis (SIGSTOP: connected, silent): the first lookup
        answers nothing after C{timeout}, counted; the tier is then
        unavailable and later lookups and stores skip Redis at once; after
        SIGCONT a probe finds it and it serves again.
        """
        server = startRedis(self)
        tier = yield makeTier(self, server)
        yield self.assertWorks(tier)
        server.pause()
        self.addCleanup(server.resume)
        result, took = yield timed(tier.get(b"u", b"v"))
        self.assertIsNone(result)
        self.assertGreaterEqual(took, TIMEOUT * 0.9)
        self.assertLess(took, TIMEOUT + SLACK)
        self.assertEqual(tier.timeouts, 1)
        self.assertFalse(tier.available)
        skipped = tier.skipped
        self.assertIsNone(self.successResultOf(tier.get(b"u", b"v")))
        self.assertEqual(self.successResultOf(tier.variants(b"u")), [])
        tier.put(b"u", b"v", b"x", 30)
        self.assertEqual(tier.skipped, skipped + 3)
        self.assertEqual(tier.timeouts, 1)
        server.resume()
        yield waitFor(lambda: tier.available, timeout=5)
        yield self.assertWorks(tier, b"thawed")
        self.assertEqual(len(self.logged("unavailable")), 1)
        self.assertEqual(len(self.logged("answers again")), 1)

    @inlineCallbacks
    def test_variantsBounded(self) -> Any:
        """
        C{variants} on a frozen Redis answers C{[]} within the bound too.
        """
        server = startRedis(self)
        tier = yield makeTier(self, server)
        tier.put(b"u", b"v", b"x", 30)
        yield tier.ping()
        server.pause()
        self.addCleanup(server.resume)
        result, took = yield timed(tier.variants(b"u"))
        self.assertEqual(result, [])
        self.assertLess(took, TIMEOUT + SLACK)
        self.assertEqual(tier.timeouts, 1)

    @inlineCallbacks
    def test_pendingStoresBounded(self) -> Any:
        """
        Stores waiting on a slow Redis are capped: past
        C{maxPendingStores}, new ones are dropped and counted; the waiting
        ones complete once Redis answers.
        """
        server = startRedis(self)
        tier = yield makeTier(self, server)
        tier.maxPendingStores = 2
        server.pause()
        for v in (b"a", b"b", b"c"):
            tier.put(b"u", v, v, 30)
        self.assertEqual((tier.stores, tier.dropped), (2, 1))
        server.resume()
        yield tier.ping()
        self.assertEqual(sorted((yield tier.variants(b"u"))), [b"a", b"b"])

    @inlineCallbacks
    def test_stopWhileStalled(self) -> Any:
        """
        Stopping a stalled tier cancels its probe timer (trial would
        report a pending call).
        """
        server = startRedis(self)
        tier = RedisTier(server.url, reactor, timeout=TIMEOUT)
        tier.start()
        yield waitFor(lambda: tier.available)
        server.pause()
        self.addCleanup(server.resume)
        yield tier.get(b"u", b"v")
        self.assertFalse(tier.available)
        yield tier.stop()
        pending: Optional[Any] = tier._probe
        self.assertIsNone(pending)


#: A stream of replies of every kind the tier meets, and what each decodes
#: to with no charset: bulk (with CRLF and RESP-like bytes inside), empty
#: bulk, nil, status, integer, error, an array of bulks (EVAL's variants),
#: an empty array, and a big bulk.
_BIG = EVERY_BYTE * 300
_REPLIES = [
    (b"$10\r\nab\r\n$3\r\ncd\r\n", b"ab\r\n$3\r\ncd"),
    (b"$0\r\n\r\n", b""),
    (b"$-1\r\n", None),
    (b"+PONG\r\n", "PONG"),
    (b":42\r\n", 42),
    (b"-ERR wrong\r\n", "error"),
    (b"*3\r\n$1\r\nx\r\n$0\r\n\r\n$4\r\n\x00\r\n\xff\r\n", [b"x", b"", b"\x00\r\n\xff"]),
    (b"*0\r\n", []),
    (b"$%d\r\n%s\r\n" % (len(_BIG), _BIG), _BIG),
]


class EagerProtocolTests(SynchronousTestCase):
    """
    The parser the Redis tier runs on (L{txproxy.limits._redisio._eagerProtocol}):
    every reply received is delivered before C{dataReceived} returns,
    however the bytes are split, through txredisapi's own reply handling.
    """

    def setUp(self) -> None:
        import txredisapi

        self.txredisapi = txredisapi
        self.cls = _eagerProtocol()

    def connected(self) -> Any:
        proto = self.cls(charset=None, convertNumbers=False)
        proto.makeConnection(StringTransport())
        return proto

    def send(self, proto: Any, n: int) -> List["Deferred[Any]"]:
        return [proto.execute_command("GET", b"k%d" % i) for i in range(n)]

    def check(self, calls: List["Deferred[Any]"]) -> None:
        for d, (_, expected) in zip(calls, _REPLIES):
            if expected == "error":
                self.failureResultOf(d, self.txredisapi.ResponseError)
            else:
                got = self.successResultOf(d)
                self.assertEqual(got, expected)
                if isinstance(expected, bytes):
                    self.assertIsInstance(got, bytes)

    def test_reliesOn(self) -> None:
        """
        The txredisapi names the parser relies on are there and behave as
        it expects: a bulk header line switches C{line_mode} off and sets
        C{bulk_length} to the body's length with its CRLF.
        """
        base = self.txredisapi.BaseRedisProtocol
        for name in ("lineReceived", "bulkDataReceived", "lineLengthExceeded", "MAX_LENGTH", "paused"):
            self.assertTrue(hasattr(base, name), name)
        self.assertTrue(issubclass(self.cls, base))
        proto = self.connected()
        self.assertEqual(proto.line_mode, 1)
        proto.lineReceived("$3")
        self.assertEqual((proto.line_mode, proto.bulk_length), (0, 5))

    def test_allAtOnce(self) -> None:
        """
        Every reply of one chunk is delivered at once, with no reactor
        iteration (txredisapi's own parser defers each one after a bulk).
        """
        proto = self.connected()
        calls = self.send(proto, len(_REPLIES))
        proto.dataReceived(b"".join(r for r, _ in _REPLIES))
        self.check(calls)

    def test_everySplit(self) -> None:
        """
        Split in two at every position, the stream gives the same replies.
        """
        stream = b"".join(r for r, _ in _REPLIES[:-1])
        for i in range(len(stream) + 1):
            proto = self.connected()
            calls = self.send(proto, len(_REPLIES) - 1)
            proto.dataReceived(stream[:i])
            proto.dataReceived(stream[i:])
            self.check(calls)

    def test_byteByByte(self) -> None:
        """
        Fed one byte at a time, the stream gives the same replies.
        """
        stream = b"".join(r for r, _ in _REPLIES)
        proto = self.connected()
        calls = self.send(proto, len(_REPLIES))
        for i in range(len(stream)):
            proto.dataReceived(stream[i : i + 1])
        self.check(calls)

    def test_manyPipelined(self) -> None:
        """
        A thousand pipelined bulk replies in one chunk all arrive.
        """
        proto = self.connected()
        calls = [proto.execute_command("GET", b"k") for _ in range(1000)]
        proto.dataReceived(b"".join(b"$4\r\n%04d\r\n" % i for i in range(1000)))
        self.assertEqual([self.successResultOf(d) for d in calls], [b"%04d" % i for i in range(1000)])

    def test_lineTooLong(self) -> None:
        """
        A line longer than txredisapi's limit drops the connection, as
        txredisapi does.
        """
        proto = self.connected()
        proto.dataReceived(b"+" + b"x" * (proto.MAX_LENGTH + 10))
        self.assertTrue(proto.transport.disconnecting)
