# -*- test-case-name: tests.test_limiter -*-
"""
Tests for L{txproxy.limits.service}: the behaviour every L{ILimiter} backend shares
(L{LimiterBehaviourMixin}, also run against Redis by
L{tests.test_redislimiter}), the memory backend's own guarantees, the
L{LimiterService} outage policy, and L{ListenerLimits}.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial import unittest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from txproxy.config import ListenerConfig, ProxyConfig, parseRate
from txproxy.interfaces import ILimiter
from txproxy.limits.service import (
    ALLOWED,
    HTTP_STATUS,
    Decision,
    ILease,
    LimiterService,
    ListenerLimits,
    MemoryLimiter,
    bucketKey,
)


class LimiterBehaviourMixin:
    """
    The semantics every L{ILimiter} backend must have.

    Mixed into a trial C{TestCase} that sets C{self.clock} (a L{Clock} that
    drives the backend's notion of time) and C{self.limiter} in C{setUp},
    and provides:

      - C{settle()}: a Deferred that fires once the backend has finished
        any work the clock started (lease refreshes);
      - C{crashAndSurvive()}: simulate the crash of C{self.limiter} (it
        stops refreshing its leases and never releases them) and return a
        Deferred firing with a new limiter that sees the same shared state;
      - C{assertBucketExpires(key, seconds)}: a Deferred checking that the
        state of bucket C{key} disappears by itself within C{seconds};
      - C{leaseTTL}: the seconds a lease survives its holder.
    """

    clock: Clock
    limiter: Any
    leaseTTL: float

    def settle(self) -> "Deferred[Any]":
        raise NotImplementedError()

    def crashAndSurvive(self) -> "Deferred[Any]":
        raise NotImplementedError()

    def assertBucketExpires(self, key: str, seconds: float) -> "Deferred[Any]":
        raise NotImplementedError()

    @inlineCallbacks
    def takeMany(self, n: int, key: str, rate: float, burst: float) -> Any:
        results = []
        for _ in range(n):
            results.append((yield self.limiter.take(key, rate, burst)))
        return results

    def assertDenied(self, decision: Decision, reason: str, retryAfter: float = 0.0) -> None:
        self: Any
        self.assertFalse(decision.allowed)
        self.assertEqual(decision.reason, reason)
        self.assertAlmostEqual(decision.retryAfter, retryAfter, places=6)
        self.assertIsNone(decision.lease)

    def test_providesILimiter(self) -> None:
        """
        The backend provides L{ILimiter}.
        """
        self: Any
        self.assertTrue(verifyObject(ILimiter, self.limiter))

    @inlineCallbacks
    def test_burstThenDenied(self) -> Any:
        """
        A new bucket is full: C{burst} takes succeed at once, the next is
        denied for C{"rate"} with C{retryAfter} the time one token takes.
        """
        self: Any
        allowed = yield self.takeMany(3, "k", 2.0, 3)
        self.assertEqual(allowed, [ALLOWED] * 3)
        denied = yield self.limiter.take("k", 2.0, 3)
        self.assertDenied(denied, "rate", 0.5)

    @inlineCallbacks
    def test_refill(self) -> Any:
        """
        Tokens come back at C{rate} per second, lazily: after half a token's
        time the wait is halved, after a whole one a take succeeds.
        """
        self: Any
        yield self.takeMany(2, "k", 1.0, 2)
        self.assertDenied((yield self.limiter.take("k", 1.0, 2)), "rate", 1.0)
        self.clock.advance(0.5)
        self.assertDenied((yield self.limiter.take("k", 1.0, 2)), "rate", 0.5)
        self.clock.advance(0.5)
        self.assertEqual((yield self.limiter.take("k", 1.0, 2)), ALLOWED)
        self.assertDenied((yield self.limiter.take("k", 1.0, 2)), "rate", 1.0)

    @inlineCallbacks
    def test_fractionalRate(self) -> Any:
        """
        A rate of C{0.5/s} gives one token every two seconds.
        """
        self: Any
        self.assertEqual((yield self.limiter.take("k", 0.5, 1)), ALLOWED)
        self.assertDenied((yield self.limiter.take("k", 0.5, 1)), "rate", 2.0)
        self.clock.advance(1.5)
        self.assertDenied((yield self.limiter.take("k", 0.5, 1)), "rate", 0.5)
        self.clock.advance(0.5)
        self.assertEqual((yield self.limiter.take("k", 0.5, 1)), ALLOWED)

    @inlineCallbacks
    def test_refillStopsAtBurst(self) -> Any:
        """
        However long a bucket rests, it never holds more than C{burst}.
        """
        self: Any
        yield self.takeMany(2, "k", 1.0, 2)
        self.clock.advance(3600)
        decisions = yield self.takeMany(3, "k", 1.0, 2)
        self.assertEqual(decisions[:2], [ALLOWED, ALLOWED])
        self.assertDenied(decisions[2], "rate", 1.0)

    @inlineCallbacks
    def test_cost(self) -> Any:
        """
        A take of C{cost} tokens needs that many; a denied take consumes
        nothing, so a cheaper one may still succeed.
        """
        self: Any
        self.assertEqual((yield self.limiter.take("k", 1.0, 3, 2.0)), ALLOWED)
        self.assertDenied((yield self.limiter.take("k", 1.0, 3, 2.0)), "rate", 1.0)
        self.assertEqual((yield self.limiter.take("k", 1.0, 3, 1.0)), ALLOWED)
        self.assertDenied((yield self.limiter.take("k", 1.0, 3, 1.0)), "rate", 1.0)

    @inlineCallbacks
    def test_keysAreIndependent(self) -> Any:
        """
        Draining one key leaves every other key full.
        """
        self: Any
        yield self.takeMany(1, "a", 1.0, 1)
        self.assertDenied((yield self.limiter.take("a", 1.0, 1)), "rate", 1.0)
        self.assertEqual((yield self.limiter.take("b", 1.0, 1)), ALLOWED)

    @inlineCallbacks
    def test_largeBurstExact(self) -> Any:
        """
        A large bucket (where the Redis backend batches tokens locally)
        admits exactly C{burst} at once, then one per token time.
        """
        self: Any
        decisions = yield self.takeMany(41, "k", 10.0, 40)
        self.assertEqual(decisions[:40], [ALLOWED] * 40)
        self.assertDenied(decisions[40], "rate", 0.1)
        self.clock.advance(0.1)
        self.assertEqual((yield self.limiter.take("k", 10.0, 40)), ALLOWED)
        self.assertDenied((yield self.limiter.take("k", 10.0, 40)), "rate", 0.1)

    @inlineCallbacks
    def test_idleBucketExpires(self) -> Any:
        """
        A bucket's state disappears by itself once it has refilled
        (C{burst / rate} seconds after the last take at most).
        """
        self: Any
        yield self.takeMany(3, "k", 1.0, 3)
        yield self.assertBucketExpires("k", 3.0)

    @inlineCallbacks
    def test_badParameters(self) -> Any:
        """
        A rate that is not positive, or a cost above the burst, is a
        programming error: L{ValueError}, before any I/O.
        """
        self: Any
        self.assertRaises(ValueError, self.limiter.take, "k", 0.0, 1)
        self.assertRaises(ValueError, self.limiter.take, "k", 1.0, 1, 2.0)
        yield succeed(None)

    @inlineCallbacks
    def test_totalCap(self) -> Any:
        """
        C{maxTotal} leases may be open in a scope; one more is denied
        C{"max-conns"}; a release makes room.
        """
        self: Any
        first = yield self.limiter.acquire("s", "c1", 2, None)
        second = yield self.limiter.acquire("s", "c2", 2, None)
        self.assertTrue(first.allowed and second.allowed)
        self.assertTrue(verifyObject(ILease, first.lease))
        self.assertDenied((yield self.limiter.acquire("s", "c3", 2, None)), "max-conns")
        yield first.lease.release()
        third = yield self.limiter.acquire("s", "c3", 2, None)
        self.assertTrue(third.allowed)
        self.assertEqual(third.reason, None)
        self.assertEqual(third.retryAfter, 0.0)

    @inlineCallbacks
    def test_perClientCap(self) -> Any:
        """
        C{maxPerClient} leases may be open per client in a scope; one more
        is denied C{"max-conns-per-client"}; other clients are unaffected.
        """
        self: Any
        self.assertTrue((yield self.limiter.acquire("s", "c1", None, 1)).allowed)
        self.assertDenied((yield self.limiter.acquire("s", "c1", None, 1)), "max-conns-per-client")
        self.assertTrue((yield self.limiter.acquire("s", "c2", None, 1)).allowed)

    @inlineCallbacks
    def test_perClientCheckedFirst(self) -> Any:
        """
        When both caps are reached, the denial names the client's cap.
        """
        self: Any
        self.assertTrue((yield self.limiter.acquire("s", "c1", 1, 1)).allowed)
        self.assertDenied((yield self.limiter.acquire("s", "c1", 1, 1)), "max-conns-per-client")
        self.assertDenied((yield self.limiter.acquire("s", "c2", 1, 1)), "max-conns")

    @inlineCallbacks
    def test_scopesAreIndependent(self) -> Any:
        """
        Leases count only in their own scope.
        """
        self: Any
        self.assertTrue((yield self.limiter.acquire("s1", "c", 1, 1)).allowed)
        self.assertTrue((yield self.limiter.acquire("s2", "c", 1, 1)).allowed)

    @inlineCallbacks
    def test_noCaps(self) -> Any:
        """
        With neither cap, C{acquire} admits and still hands out a lease.
        """
        self: Any
        for _ in range(5):
            decision = yield self.limiter.acquire("s", "c", None, None)
            self.assertTrue(decision.allowed)
            self.assertIsNotNone(decision.lease)

    @inlineCallbacks
    def test_releaseIsIdempotent(self) -> Any:
        """
        Releasing a lease twice frees one slot, not two.
        """
        self: Any
        a = yield self.limiter.acquire("s", "c", 2, None)
        b = yield self.limiter.acquire("s", "c", 2, None)
        yield a.lease.release()
        yield a.lease.release()
        self.assertTrue((yield self.limiter.acquire("s", "c", 2, None)).allowed)
        self.assertDenied((yield self.limiter.acquire("s", "c", 2, None)), "max-conns")
        yield b.lease.release()

    @inlineCallbacks
    def test_leaseHeldWhileHolderLives(self) -> Any:
        """
        A lease whose holder is alive lasts as long as the connection, far
        beyond C{leaseTTL}.
        """
        self: Any
        held = yield self.limiter.acquire("s", "c", 1, None)
        self.assertTrue(held.allowed)
        for _ in range(12):
            self.clock.advance(self.leaseTTL / 4)
            yield self.settle()
        self.assertDenied((yield self.limiter.acquire("s", "other", 1, None)), "max-conns")

    @inlineCallbacks
    def test_leaseExpiresAfterHolderCrash(self) -> Any:
        """
        Leases of a holder that crashed (stopped refreshing, never released)
        stop counting within C{leaseTTL}: caps cannot leak.
        """
        self: Any
        self.assertTrue((yield self.limiter.acquire("s", "c", 1, 1)).allowed)
        survivor = yield self.crashAndSurvive()
        self.clock.advance(self.leaseTTL + 1)
        decision = yield survivor.acquire("s", "c", 1, 1)
        self.assertTrue(decision.allowed)


class FakeTime:
    """
    A clock cheaper than L{Clock} for a million decisions: C{seconds()}
    returns C{now}, which the test sets.
    """

    def __init__(self) -> None:
        self.now = 0.0

    def seconds(self) -> float:
        return self.now


class MemoryLimiterBehaviourTests(LimiterBehaviourMixin, unittest.TestCase):
    """
    The shared behaviour, on L{MemoryLimiter} with a fake clock.
    """

    leaseTTL = 30.0

    def setUp(self) -> None:
        self.clock = Clock()
        self.limiter = MemoryLimiter(self.clock)

    def settle(self) -> "Deferred[Any]":
        return succeed(None)

    def crashAndSurvive(self) -> "Deferred[Any]":
        # The state of a memory limiter dies with its process.
        return succeed(MemoryLimiter(self.clock))

    def assertBucketExpires(self, key: str, seconds: float) -> "Deferred[Any]":
        self.assertEqual(self.limiter.bucketCount, 1)
        self.clock.advance(seconds)
        self.limiter.takeNow("another key", 1.0, 1)
        self.assertEqual(self.limiter.bucketCount, 1)
        self.assertNotIn(key, self.limiter._buckets)
        return succeed(None)


class MemoryLimiterTests(unittest.SynchronousTestCase):
    """
    Guarantees of L{MemoryLimiter} beyond the shared behaviour.
    """

    def test_answersAtOnce(self) -> None:
        """
        C{take} and C{acquire} return Deferreds that have already fired.
        """
        limiter = MemoryLimiter(Clock())
        self.assertIs(self.successResultOf(limiter.take("k", 1.0, 1)), ALLOWED)
        self.assertTrue(self.successResultOf(limiter.acquire("s", "c", 1, 1)).allowed)

    def test_defaultClockIsTheReactor(self) -> None:
        """
        Without a clock, the global reactor keeps time.
        """
        from twisted.internet import reactor

        self.assertIs(MemoryLimiter().clock, reactor)

    def test_millionClientsBoundedMemory(self) -> None:
        """
        A million distinct clients, one request each, one every
        millisecond, with buckets that refill in C{burst / rate = 1}
        second: the limiter never holds more than the clients of the last
        second (1000) plus one, and each decision swept at most two
        buckets.
        """
        time = FakeTime()
        limiter = MemoryLimiter(time)  # type: ignore[arg-type]
        take = limiter.takeNow
        buckets = limiter._buckets
        largest = 0
        for i in range(1000000):
            time.now = i * 0.001
            take(str(i), 1.0, 1)
            if not i % 997:
                largest = max(largest, len(buckets))
        self.assertLessEqual(largest, 1001)
        self.assertLessEqual(limiter.bucketCount, 1001)
        self.assertGreater(largest, 900)

    def test_hotKeysDoNotBlockExpiry(self) -> None:
        """
        A key taken from over and over moves to the back of the line, so it
        never shields idle buckets from the sweep.
        """
        clock = Clock()
        limiter = MemoryLimiter(clock)
        limiter.takeNow("hot", 1000.0, 1000)
        for i in range(100):
            limiter.takeNow(f"idle{i}", 1.0, 1)
        for _ in range(200):
            clock.advance(0.01)
            limiter.takeNow("hot", 1000.0, 1000)
        self.assertEqual(limiter.bucketCount, 1)

    def test_leaseBookkeepingEmpties(self) -> None:
        """
        Once every lease is released the limiter holds nothing for the scope
        or its clients.
        """
        limiter = MemoryLimiter(Clock())
        leases = [limiter.acquireNow("s", f"c{i % 3}", None, None).lease for i in range(9)]
        self.assertEqual(limiter.leaseCount, 9)
        for lease in leases:
            lease.release()
            lease.release()
        self.assertEqual(limiter.leaseCount, 0)
        self.assertEqual(limiter._scopes, {})


class DecisionTests(unittest.SynchronousTestCase):
    """
    L{Decision} and the key helpers.
    """

    def test_retryAfterSeconds(self) -> None:
        """
        C{retryAfterSeconds} rounds up, is at least 1 for a denial and 0 when
        allowed.
        """
        self.assertEqual(ALLOWED.retryAfterSeconds, 0)
        self.assertEqual(Decision(False, "rate", 0.01).retryAfterSeconds, 1)
        self.assertEqual(Decision(False, "rate", 2.0).retryAfterSeconds, 2)
        self.assertEqual(Decision(False, "rate", 2.2).retryAfterSeconds, 3)
        self.assertEqual(Decision(False, "max-conns").retryAfterSeconds, 1)

    def test_httpStatus(self) -> None:
        """
        Rate and per-client denials are 429, the total cap 503.
        """
        self.assertEqual(
            HTTP_STATUS, {"rate": 429, "max-conns-per-client": 429, "max-conns": 503}
        )

    def test_frozen(self) -> None:
        """
        Decisions are immutable: the shared L{ALLOWED} cannot be changed.
        """
        import attr

        self.assertRaises(attr.exceptions.FrozenInstanceError, setattr, ALLOWED, "allowed", False)

    def test_bucketKeyUnambiguous(self) -> None:
        """
        A scope holding the separator cannot collide with another scope's
        client.
        """
        self.assertEqual(bucketKey("web", "10.0.0.1"), "web|10.0.0.1")
        self.assertNotEqual(bucketKey("a|b", "c"), bucketKey("a", "b|c"))
        self.assertEqual(bucketKey("a|b%", "c"), "a%7Cb%25|c")


# ---------------------------------------------------------------------------
# LimiterService


@implementer(ILimiter)
class FakeSharedBackend:
    """
    A stand-in for the Redis backend whose answers the test gives.

    @ivar calls: C{(method, args, Deferred)} for each decision asked.
    @ivar pings: the Deferred of each C{ping()}.
    """

    def __init__(self) -> None:
        self.calls: List[Tuple[str, Tuple[Any, ...], Deferred]] = []
        self.pings: List[Deferred] = []
        self.started = 0
        self.stopped = 0
        self.raiseOnCall: Optional[Exception] = None

    def _call(self, name: str, *args: Any) -> Deferred:
        if self.raiseOnCall is not None:
            raise self.raiseOnCall
        d: Deferred = Deferred()
        self.calls.append((name, args, d))
        return d

    def take(self, key: str, rate: float, burst: float, cost: float = 1.0) -> Deferred:
        return self._call("take", key, rate, burst, cost)

    def acquire(self, scope: str, client: str, maxTotal: Any, maxPerClient: Any) -> Deferred:
        return self._call("acquire", scope, client, maxTotal, maxPerClient)

    def takeNowOrLater(self, key: str, rate: float, burst: float, cost: float = 1.0) -> Any:
        # Never known at once: always asks (through take, which a test may
        # replace).
        return self.take(key, rate, burst, cost)

    def acquireNowOrLater(self, scope: str, client: str, maxTotal: Any, maxPerClient: Any) -> Any:
        return self.acquire(scope, client, maxTotal, maxPerClient)

    def ping(self) -> Deferred:
        d: Deferred = Deferred()
        self.pings.append(d)
        return d

    def start(self) -> None:
        self.started += 1

    def stop(self) -> Deferred:
        self.stopped += 1
        return succeed(None)


@implementer(ILease)
class FakeLease:
    def __init__(self) -> None:
        self.released = 0

    def release(self) -> Deferred:
        self.released += 1
        return succeed(None)


class LimiterServiceTests(unittest.SynchronousTestCase):
    """
    L{LimiterService}: memory by default, Redis with a fallback.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.backend = FakeSharedBackend()
        self.service = LimiterService(self.backend, clock=self.clock)
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.service.startService()
        self.addCleanup(self.service.stopService)

    def messages(self, level: Optional[LogLevel] = None) -> List[str]:
        from twisted.logger import formatEvent

        return [
            formatEvent(e)
            for e in self.events
            if e.get("log_namespace", "").startswith("txproxy.limits")
            and (level is None or e["log_level"] == level)
        ]

    def test_providesILimiter(self) -> None:
        """
        The service is an L{ILimiter}, with or without Redis.
        """
        self.assertTrue(verifyObject(ILimiter, self.service))
        self.assertTrue(verifyObject(ILimiter, LimiterService(clock=self.clock)))

    def test_memoryOnly(self) -> None:
        """
        Without Redis, decisions come from memory at once and are counted.
        """
        clock = Clock()
        service = LimiterService(clock=clock)
        service.startService()
        self.assertIs(self.successResultOf(service.take("k", 1.0, 1)), ALLOWED)
        self.assertEqual(self.successResultOf(service.take("k", 1.0, 1)).reason, "rate")
        lease = self.successResultOf(service.acquire("s", "c", 1, None)).lease
        self.assertEqual(self.successResultOf(service.acquire("s", "c", 1, None)).reason, "max-conns")
        lease.release()
        self.assertEqual(
            service.decisions, {"allowed": 2, "rate": 1, "max-conns": 1, "max-conns-per-client": 0}
        )
        self.assertEqual(clock.getDelayedCalls(), [])
        service.stopService()

    def test_redisAnswers(self) -> None:
        """
        With Redis healthy, its answer is the decision, and no timer is left
        behind.
        """
        d = self.service.take("k", 1.0, 2)
        self.assertNoResult(d)
        self.assertEqual(self.backend.calls[0][:2], ("take", ("k", 1.0, 2, 1.0)))
        self.backend.calls[0][2].callback(Decision(False, "rate", 0.7))
        self.assertEqual(self.successResultOf(d), Decision(False, "rate", 0.7))
        self.assertEqual(self.service.decisions["rate"], 1)
        self.assertFalse(self.service.usingFallback)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)  # only the prober

    def test_timeoutFallsBack(self) -> None:
        """
        A decision Redis does not answer within C{redisTimeout} is answered
        from memory at the timeout; the service logs the switch once and
        sends later decisions straight to memory.
        """
        d = self.service.take("k", 1.0, 1)
        self.clock.advance(0.2)
        self.assertNoResult(d)
        self.clock.advance(0.05)
        self.assertIs(self.successResultOf(d), ALLOWED)
        self.assertTrue(self.service.usingFallback)
        self.assertEqual((self.service.fallbacks, self.service.redisTimeouts, self.service.redisErrors), (1, 1, 1))
        later = self.service.take("k", 1.0, 1)
        self.assertEqual(self.successResultOf(later).reason, "rate")
        self.assertEqual(len(self.backend.calls), 1)
        warnings = self.messages(LogLevel.warn)
        self.assertEqual(len(warnings), 1)
        self.assertIn("falling back", warnings[0])

    def test_errorFallsBack(self) -> None:
        """
        A failed Redis decision is answered from memory at once.
        """
        d = self.service.acquire("s", "c", 1, 1)
        self.backend.calls[0][2].errback(ConnectionError("gone"))
        decision = self.successResultOf(d)
        self.assertTrue(decision.allowed)
        self.assertEqual(self.service.memory.leaseCount, 1)
        self.assertTrue(self.service.usingFallback)
        self.assertEqual(self.clock.getDelayedCalls()[0].getTime(), 1.0)  # the prober only

    def test_synchronousErrorFallsBack(self) -> None:
        """
        A backend that raises instead of failing a Deferred is survived too.
        """
        self.backend.raiseOnCall = RuntimeError("boom")
        self.assertIs(self.successResultOf(self.service.take("k", 1.0, 1)), ALLOWED)
        self.assertTrue(self.service.usingFallback)
        self.assertEqual(len(self.messages(LogLevel.warn)), 1)

    def test_concurrentFailuresLogOnce(self) -> None:
        """
        Many decisions failing together make one fallback and one log line.
        """
        ds = [self.service.take(f"k{i}", 1.0, 1) for i in range(5)]
        for _, _, d in self.backend.calls:
            d.errback(ConnectionError("gone"))
        for d in ds:
            self.assertIs(self.successResultOf(d), ALLOWED)
        self.assertEqual((self.service.fallbacks, self.service.redisErrors), (1, 5))
        self.assertEqual(len(self.messages(LogLevel.warn)), 1)

    def test_probeAndRecover(self) -> None:
        """
        During an outage Redis is pinged every C{probeInterval}; a failed or
        slow ping changes nothing, the first answer switches back to Redis
        (logged once).
        """
        self.backend.calls.append(("x", (), Deferred()))
        self.service.take("k", 1.0, 1)
        self.backend.calls[-1][2].errback(ConnectionError("gone"))
        self.assertEqual(self.backend.pings, [])
        self.clock.advance(1.0)
        self.assertEqual(len(self.backend.pings), 1)
        self.backend.pings[0].errback(ConnectionError("still gone"))
        self.clock.advance(1.0)
        self.assertEqual(len(self.backend.pings), 2)
        self.clock.advance(0.25)  # this one hangs: timed out, no harm
        self.assertTrue(self.service.usingFallback)
        self.clock.advance(0.75)
        self.assertEqual(len(self.backend.pings), 3)
        self.backend.pings[2].callback("PONG")
        self.assertFalse(self.service.usingFallback)
        self.assertEqual(self.service.recoveries, 1)
        self.backend.pings[1].callback("PONG")  # late: ignored
        self.assertEqual(self.service.recoveries, 1)
        infos = [m for m in self.messages(LogLevel.info) if "reachable again" in m]
        self.assertEqual(len(infos), 1)
        before = len(self.backend.calls)
        d = self.service.take("k", 1.0, 1)
        self.assertEqual(len(self.backend.calls), before + 1)
        self.backend.calls[-1][2].callback(ALLOWED)
        self.assertIs(self.successResultOf(d), ALLOWED)
        self.clock.advance(5.0)
        self.assertEqual(len(self.backend.pings), 3)  # no probes while healthy

    def test_lateLeaseIsReleased(self) -> None:
        """
        A lease Redis grants after the decision timed out (and was made from
        memory) is released at once: it must not hold a slot nobody uses.
        """
        d = self.service.acquire("s", "c", 1, 1)
        self.clock.advance(0.25)
        self.assertTrue(self.successResultOf(d).allowed)
        late = FakeLease()
        self.backend.calls[0][2].callback(Decision(True, None, 0.0, late))
        self.assertEqual(late.released, 1)

    def test_lateFailureIsSwallowed(self) -> None:
        """
        A Redis failure after its decision timed out is only counted.
        """
        d = self.service.take("k", 1.0, 1)
        self.clock.advance(0.25)
        self.successResultOf(d)
        self.backend.calls[0][2].errback(ConnectionError("late"))
        self.assertEqual(self.service.redisErrors, 2)
        self.flushLoggedErrors()

    def test_denialsLoggedAtBoundedRate(self) -> None:
        """
        Denials are all counted but logged at most once per
        C{denialLogInterval}; the next line says how many went unlogged.
        """
        service = LimiterService(clock=self.clock)
        for _ in range(50):
            service.take("k", 1.0, 1)
        self.assertEqual(service.decisions["rate"], 49)
        self.assertEqual(len(self.messages(LogLevel.info)), 1)
        self.clock.advance(service.denialLogInterval)
        service.take("k2", 1.0, 1)
        service.take("k2", 1.0, 1)
        lines = self.messages(LogLevel.info)
        self.assertEqual(len(lines), 2)
        self.assertIn("48 other denials", lines[1])

    def test_startAndStopBackend(self) -> None:
        """
        Starting and stopping the service starts and stops the backend and
        the prober.
        """
        self.assertEqual(self.backend.started, 1)
        self.service.stopService()
        self.assertEqual(self.backend.stopped, 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_fromConfigMemory(self) -> None:
        """
        A config without C{redis} gives a memory-only service.
        """
        config = ProxyConfig(listeners=(ListenerConfig(listen=("tcp:3128",)),))
        service = LimiterService.fromConfig(config, reactor=self.clock)
        self.assertIsNone(service.redis)
        self.assertIs(service.memory.clock, self.clock)

    def test_fromConfigRedis(self) -> None:
        """
        A config with C{redis} gives a service over a
        L{txproxy.limits.redis.RedisLimiter} for that URL, not yet
        connected.
        """
        from txproxy.limits.redis import RedisLimiter

        config = ProxyConfig(listeners=(ListenerConfig(listen=("tcp:3128",)),), redis="redis://10.1.2.3:6380/2")
        service = LimiterService.fromConfig(config, reactor=self.clock, redisTimeout=0.1)
        self.assertIsInstance(service.redis, RedisLimiter)
        self.assertEqual((service.redis._client.host, service.redis._client.port), ("10.1.2.3", 6380))
        self.assertEqual(service.redisTimeout, 0.1)
        self.assertFalse(service.redis._client.connected)


class ConnectingBackend(FakeSharedBackend):
    """
    A shared backend that is still connecting: C{whenConnected()} returns
    C{connected}, which the test fires.
    """

    def __init__(self) -> None:
        super().__init__()
        self.connected: Deferred = Deferred()

    def whenConnected(self) -> Deferred:
        return self.connected


class LimiterServiceStartupTests(unittest.SynchronousTestCase):
    """
    L{LimiterService} between start-up and Redis's first connection.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.backend = ConnectingBackend()
        self.service = LimiterService(self.backend, clock=self.clock)
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.service.startService()
        self.addCleanup(self.service.stopService)

    def warnings(self) -> List[str]:
        from twisted.logger import formatEvent

        return [formatEvent(e) for e in self.events if e["log_level"] == LogLevel.warn]

    def test_decisionWaitsForFirstConnection(self) -> None:
        """
        A decision made while Redis is still connecting waits for the
        connection and is then made by Redis, within the one
        C{redisTimeout} overall; nothing is logged as an outage.
        """
        d = self.service.take("k", 1.0, 1)
        self.clock.advance(0.1)
        self.assertNoResult(d)
        self.assertEqual(self.backend.calls, [])
        self.backend.connected.callback(None)
        self.assertEqual(len(self.backend.calls), 1)
        self.clock.advance(0.14)
        self.assertNoResult(d)
        self.clock.advance(0.01)  # 0.25s after the decision was asked for
        self.assertIs(self.successResultOf(d), ALLOWED)
        self.assertEqual(self.service.redisTimeouts, 1)

    def test_connectedThenRedisAnswers(self) -> None:
        """
        Once connected, the waiting decision is Redis's and later ones go to
        Redis directly; the connection is logged (info), no fallback.
        """
        d = self.service.acquire("s", "c", 1, 1)
        self.backend.connected.callback(None)
        lease = FakeLease()
        self.backend.calls[0][2].callback(Decision(True, None, 0.0, lease))
        self.assertIs(self.successResultOf(d).lease, lease)
        self.service.take("k", 1.0, 1)
        self.assertEqual(len(self.backend.calls), 2)
        self.assertEqual((self.service.fallbacks, self.service.usingFallback), (0, False))
        self.assertEqual(self.warnings(), [])

    def test_notConnectedInTimeUsesMemory(self) -> None:
        """
        A decision still waiting after C{redisTimeout} is answered from
        memory; start-up is not counted as an outage.
        """
        d = self.service.take("k", 1.0, 1)
        self.clock.advance(0.25)
        self.assertIs(self.successResultOf(d), ALLOWED)
        self.assertEqual(self.backend.calls, [])
        self.assertEqual((self.service.fallbacks, self.service.redisErrors), (0, 0))
        self.assertEqual(self.warnings(), [])

    def test_startupGraceExpires(self) -> None:
        """
        Redis still unreachable C{startupGrace} seconds after start-up is an
        outage: logged once, counted, probed; a late connection changes
        nothing until a probe succeeds.
        """
        self.clock.advance(self.service.startupGrace)
        self.assertEqual((self.service.fallbacks, self.service.usingFallback), (1, True))
        self.assertEqual(len(self.warnings()), 1)
        self.clock.advance(1.0)
        self.assertEqual(len(self.backend.pings), 1)
        self.backend.connected.callback(None)
        self.assertTrue(self.service.usingFallback)
        self.backend.pings[0].callback("PONG")
        self.assertFalse(self.service.usingFallback)

    def test_stopWhileWaiting(self) -> None:
        """
        Stopping the service answers waiting decisions from memory and leaves
        no timer behind.
        """
        d = self.service.take("k", 1.0, 1)
        self.service.stopService()
        self.assertIs(self.successResultOf(d), ALLOWED)
        self.assertEqual(self.clock.getDelayedCalls(), [])


# ---------------------------------------------------------------------------
# ListenerLimits


@implementer(ILimiter)
class ExplodingLimiter:
    """
    An L{ILimiter} that must not be asked.
    """

    def take(self, key: str, rate: float, burst: float, cost: float = 1.0) -> Deferred:
        raise AssertionError("take called")

    def acquire(self, scope: str, client: str, maxTotal: Any, maxPerClient: Any) -> Deferred:
        raise AssertionError("acquire called")

    def takeNowOrLater(self, key: str, rate: float, burst: float, cost: float = 1.0) -> Any:
        raise AssertionError("takeNowOrLater called")

    def acquireNowOrLater(self, scope: str, client: str, maxTotal: Any, maxPerClient: Any) -> Any:
        raise AssertionError("acquireNowOrLater called")


def listener(**kwargs: Any) -> ListenerConfig:
    if "rate" in kwargs:
        kwargs["rate"] = parseRate(kwargs["rate"])
    return ListenerConfig(listen=("tcp:3128",), **kwargs)


class ListenerLimitsTests(unittest.SynchronousTestCase):
    """
    L{ListenerLimits}: the adapter protocols call.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.memory = MemoryLimiter(self.clock)

    def test_nothingConfigured(self) -> None:
        """
        With no limits, both questions answer the shared L{ALLOWED} at once
        without asking the limiter.
        """
        limits = ListenerLimits(ExplodingLimiter(), listener(), "l")  # type: ignore[arg-type]
        self.assertIs(self.successResultOf(limits.admitRequest("c")), ALLOWED)
        self.assertIs(self.successResultOf(limits.admitConnection("c", True)), ALLOWED)
        self.assertIs(self.successResultOf(limits.admitConnection("c", False)), ALLOWED)

    def test_rateOnlyHTTPConnection(self) -> None:
        """
        In HTTP modes (C{countRate} false) a rate alone costs a connection
        nothing.
        """
        limits = ListenerLimits(ExplodingLimiter(), listener(rate="1/s"), "l")  # type: ignore[arg-type]
        self.assertIs(self.successResultOf(limits.admitConnection("c", False)), ALLOWED)

    def test_admitRequest(self) -> None:
        """
        Each request takes one token from the client's bucket in the scope;
        the burst defaults to one second's worth.
        """
        limits = ListenerLimits(self.memory, listener(rate="2/s"), "l")
        self.assertEqual(limits.burst, 2)
        self.assertIs(self.successResultOf(limits.admitRequest("c")), ALLOWED)
        self.assertIs(self.successResultOf(limits.admitRequest("c")), ALLOWED)
        denied = self.successResultOf(limits.admitRequest("c"))
        self.assertEqual((denied.reason, denied.retryAfter), ("rate", 0.5))
        self.assertIs(self.successResultOf(limits.admitRequest("d")), ALLOWED)
        self.assertIn(bucketKey("l", "c"), self.memory._buckets)

    def test_fractionalRateAndBurst(self) -> None:
        """
        C{0.5/s} with C{--burst 3}: three at once, then one per two seconds.
        """
        limits = ListenerLimits(self.memory, listener(rate="0.5/s", burst=3), "l")
        for _ in range(3):
            self.assertTrue(self.successResultOf(limits.admitRequest("c")).allowed)
        self.assertEqual(self.successResultOf(limits.admitRequest("c")).retryAfter, 2.0)

    def test_scopesDoNotShareBuckets(self) -> None:
        """
        Two listeners' buckets for one client are separate.
        """
        a = ListenerLimits(self.memory, listener(rate="1/s"), "a")
        b = ListenerLimits(self.memory, listener(rate="1/s"), "b")
        self.assertTrue(self.successResultOf(a.admitRequest("c")).allowed)
        self.assertFalse(self.successResultOf(a.admitRequest("c")).allowed)
        self.assertTrue(self.successResultOf(b.admitRequest("c")).allowed)

    def test_tcpConnectionCostsAToken(self) -> None:
        """
        In TCP modes (C{countRate} true) each connection takes a token.
        """
        limits = ListenerLimits(self.memory, listener(rate="1/s"), "l")
        self.assertIs(self.successResultOf(limits.admitConnection("c", True)), ALLOWED)
        self.assertEqual(self.successResultOf(limits.admitConnection("c", True)).reason, "rate")

    def test_caps(self) -> None:
        """
        Connection caps hand out leases; the per-client cap and the total cap
        deny with their reasons; closing releases.
        """
        limits = ListenerLimits(self.memory, listener(maxConns=2, maxConnsPerClient=1), "l")
        first = self.successResultOf(limits.admitConnection("c", False))
        self.assertTrue(first.allowed)
        self.assertEqual(self.successResultOf(limits.admitConnection("c", False)).reason, "max-conns-per-client")
        self.assertTrue(self.successResultOf(limits.admitConnection("d", False)).allowed)
        self.assertEqual(self.successResultOf(limits.admitConnection("e", False)).reason, "max-conns")
        first.lease.release()
        self.assertTrue(self.successResultOf(limits.admitConnection("e", False)).allowed)

    def test_rateDenialHoldsNoLease(self) -> None:
        """
        With a rate and caps, a connection denied by the rate never takes a
        lease.
        """
        limits = ListenerLimits(self.memory, listener(rate="1/s", maxConnsPerClient=5), "l")
        allowed = self.successResultOf(limits.admitConnection("c", True))
        self.assertIsNotNone(allowed.lease)
        denied = self.successResultOf(limits.admitConnection("c", True))
        self.assertEqual(denied.reason, "rate")
        self.assertEqual(self.memory.leaseCount, 1)

    def test_capDenialAfterToken(self) -> None:
        """
        A connection denied by a cap has spent its token (attempts count).
        """
        limits = ListenerLimits(self.memory, listener(rate="10/s", burst=2, maxConnsPerClient=1), "l")
        self.assertTrue(self.successResultOf(limits.admitConnection("c", True)).allowed)
        self.assertEqual(self.successResultOf(limits.admitConnection("c", True)).reason, "max-conns-per-client")
        self.assertEqual(self.successResultOf(limits.admitConnection("c", True)).reason, "rate")

    def test_limitsFor(self) -> None:
        """
        L{LimiterService.limitsFor} scopes by the listener's name by default.
        """
        service = LimiterService(clock=self.clock)
        limits = service.limitsFor(listener(name="web", rate="1/s"))
        self.assertEqual((limits.scope, limits.limiter), ("web", service))
        self.assertEqual(service.limitsFor(listener(), "x").scope, "x")


class OutagePolicyTests(unittest.SynchronousTestCase):
    """
    --redis-outage: what answers while Redis is unreachable.
    """

    def service(self, policy: str) -> "LimiterService":
        from twisted.internet.defer import fail
        from twisted.internet.task import Clock

        class DeadRedis:
            def take(self, *a: object) -> object:
                return fail(ConnectionRefusedError())

            def acquire(self, *a: object) -> object:
                return fail(ConnectionRefusedError())

            takeNowOrLater = take
            acquireNowOrLater = acquire

            def ping(self) -> object:
                return fail(ConnectionRefusedError())

        svc = LimiterService(redis=DeadRedis(), clock=Clock(), outagePolicy=policy)
        svc.usingFallback = True
        return svc

    def test_memoryPolicy(self) -> None:
        """
        memory (the default): the process's own bucket answers.
        """
        svc = self.service("memory")
        self.assertTrue(self.successResultOf(svc.take("k", 1.0, 1)).allowed)
        self.assertFalse(self.successResultOf(svc.take("k", 1.0, 1)).allowed)

    def test_openPolicy(self) -> None:
        """
        open: everything is admitted while Redis is down.
        """
        svc = self.service("open")
        for _ in range(5):
            self.assertTrue(self.successResultOf(svc.take("k", 1.0, 1)).allowed)
        decision = self.successResultOf(svc.acquire("s", "c", 1, 1))
        self.assertTrue(decision.allowed)
        decision.lease.release()

    def test_closedPolicy(self) -> None:
        """
        closed: everything is refused while Redis is down.
        """
        svc = self.service("closed")
        self.assertFalse(self.successResultOf(svc.take("k", 1.0, 100)).allowed)
        self.assertEqual(self.successResultOf(svc.acquire("s", "c", 10, 10)).reason, "max-conns")

    def test_noRedisIgnoresPolicy(self) -> None:
        """
        Without Redis the policy has no effect: memory limits apply.
        """
        from twisted.internet.task import Clock

        svc = LimiterService(clock=Clock(), outagePolicy="open")
        self.assertTrue(self.successResultOf(svc.take("k", 1.0, 1)).allowed)
        self.assertFalse(self.successResultOf(svc.take("k", 1.0, 1)).allowed)

    def test_fromConfig(self) -> None:
        """
        --redis-outage reaches the service.
        """
        from txproxy.config import fromFlags

        config = fromFlags([], [("redis", "redis://127.0.0.1:1/0"), ("redis-outage", "closed")])
        self.assertEqual(LimiterService.fromConfig(config).outagePolicy, "closed")


# ---------------------------------------------------------------------------
# The synchronous fast path


@implementer(ILimiter)
class LocalFirstBackend(FakeSharedBackend):
    """
    A shared backend that, like the Redis one, answers some takes at once:
    C{takeNowOrLater} returns the decisions queued in C{local} first (a
    L{Decision}, not a Deferred), then asks like L{FakeSharedBackend}.
    """

    def __init__(self) -> None:
        super().__init__()
        self.local: List[Decision] = []

    def takeNowOrLater(self, key: str, rate: float, burst: float, cost: float = 1.0) -> Any:
        if self.local:
            return self.local.pop(0)
        return self.take(key, rate, burst, cost)


class SynchronousAnswerTests(unittest.SynchronousTestCase):
    """
    Decisions known at once are handed over as L{Decision}s, without a
    L{Deferred}: C{takeNowOrLater}, C{acquireNowOrLater},
    L{ListenerLimits.checkRequest} and L{ListenerLimits.checkConnection};
    the Deferred forms give the same answers.
    """

    def setUp(self) -> None:
        self.clock = Clock()

    def test_memoryServiceTakeIsTheSharedConstant(self) -> None:
        """
        From memory an admission is the shared L{ALLOWED} itself, a denial
        a L{Decision}; both are counted, and no timer is started.
        """
        service = LimiterService(clock=self.clock)
        self.assertIs(service.takeNowOrLater("k", 1.0, 2), ALLOWED)
        self.assertIs(service.takeNowOrLater("k", 1.0, 2), ALLOWED)
        denied = service.takeNowOrLater("k", 1.0, 2)
        self.assertIsInstance(denied, Decision)
        self.assertEqual((denied.reason, denied.retryAfter), ("rate", 1.0))  # type: ignore[union-attr]
        admitted = service.acquireNowOrLater("s", "c", 1, None)
        self.assertIsInstance(admitted, Decision)
        self.assertIsNotNone(admitted.lease)  # type: ignore[union-attr]
        self.assertEqual(service.acquireNowOrLater("s", "c", 1, None).reason, "max-conns")  # type: ignore[union-attr]
        self.assertEqual(
            service.decisions, {"allowed": 3, "rate": 1, "max-conns": 1, "max-conns-per-client": 0}
        )
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_decisionsIsACopy(self) -> None:
        """
        C{decisions} is a snapshot: changing it changes no count.
        """
        service = LimiterService(clock=self.clock)
        service.takeNowOrLater("k", 1.0, 1)
        counts = service.decisions
        counts["allowed"] = 100
        self.assertEqual(service.decisions["allowed"], 1)

    def test_memoryClockReplaced(self) -> None:
        """
        A memory limiter reads the clock it is given, also when replaced.
        """
        limiter = MemoryLimiter(self.clock)
        other = Clock()
        other.advance(100)
        limiter.clock = other
        self.assertIs(limiter.clock, other)
        self.assertIs(limiter.takeNow("k", 1.0, 1), ALLOWED)
        self.assertEqual(limiter._buckets["k"], 101.0)

    def test_redisLocalAnswerWithoutDeferred(self) -> None:
        """
        A Redis backend's local answer (C{takeNowOrLater} returning a
        L{Decision}) is handed over as is and counted, with no timer; a take
        it must ask Redis for is a L{Deferred} bounded by the timeout.
        """
        backend = LocalFirstBackend()
        service = LimiterService(backend, clock=self.clock)
        backend.local = [ALLOWED, Decision(False, "rate", 0.5)]
        self.assertIs(service.takeNowOrLater("k", 1.0, 2), ALLOWED)
        denied = service.takeNowOrLater("k", 1.0, 2)
        self.assertEqual(denied, Decision(False, "rate", 0.5))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        d = service.takeNowOrLater("k", 1.0, 2)
        self.assertIsInstance(d, Deferred)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        backend.calls[0][2].callback(ALLOWED)
        self.assertIs(self.successResultOf(d), ALLOWED)  # type: ignore[arg-type]
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(service.decisions["allowed"], 2)
        self.assertEqual(service.decisions["rate"], 1)
        # The Deferred form of the same answers.
        backend.local = [ALLOWED]
        self.assertIs(self.successResultOf(service.take("k", 1.0, 2)), ALLOWED)

    def test_alreadyFiredAnswerIsHandedOver(self) -> None:
        """
        A backend answering with a Deferred that has already fired (or
        failed) gives a L{Decision} at once too: no Deferred, no timer.
        """
        from twisted.internet.defer import fail

        backend = FakeSharedBackend()
        backend.take = lambda *a: succeed(Decision(False, "rate", 2.0))  # type: ignore[method-assign]
        service = LimiterService(backend, clock=self.clock)
        self.assertEqual(service.takeNowOrLater("k", 1.0, 1), Decision(False, "rate", 2.0))
        backend.take = lambda *a: fail(ConnectionError("gone"))  # type: ignore[method-assign]
        service.redis = backend  # its methods are looked up when it is set
        self.assertIs(service.takeNowOrLater("k", 1.0, 1), ALLOWED)  # from memory
        self.assertTrue(service.usingFallback)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_plainBackendStillWorks(self) -> None:
        """
        A backend whose C{takeNowOrLater} always answers later is asked
        through it, and its Deferred handed over.
        """
        backend = FakeSharedBackend()
        service = LimiterService(backend, clock=self.clock)
        d = service.takeNowOrLater("k", 1.0, 1)
        self.assertEqual(backend.calls[0][:2], ("take", ("k", 1.0, 1, 1.0)))
        backend.calls[0][2].callback(ALLOWED)
        self.assertIs(self.successResultOf(d), ALLOWED)  # type: ignore[arg-type]
        service.redis = LocalFirstBackend()
        service.redis.local = [ALLOWED]
        self.assertIs(service.takeNowOrLater("k", 1.0, 1), ALLOWED)

    def test_listenerLimitsSynchronous(self) -> None:
        """
        L{ListenerLimits.checkRequest} and C{checkConnection} answer a
        memory limiter's decisions as such; with a limiter whose
        now-or-later forms always answer later they give its Deferreds.
        """
        service = LimiterService(clock=self.clock)
        limits = ListenerLimits(service, listener(rate="1/s", maxConnsPerClient=1), "l")
        self.assertIs(limits.checkRequest("c"), ALLOWED)
        self.assertEqual(limits.checkRequest("c").reason, "rate")  # type: ignore[union-attr]
        admitted = limits.checkConnection("d", False)
        self.assertIsInstance(admitted, Decision)
        self.assertIsNotNone(admitted.lease)  # type: ignore[union-attr]
        self.assertEqual(limits.checkConnection("c", True).reason, "rate")  # type: ignore[union-attr]
        self.assertEqual(limits.checkConnection("d", True).reason, "max-conns-per-client")  # type: ignore[union-attr]
        self.assertIs(ListenerLimits(service, listener(), "l").checkRequest("c"), ALLOWED)
        self.assertIs(ListenerLimits(service, listener(), "l").checkConnection("c", True), ALLOWED)
        backend = FakeSharedBackend()
        deferredOnly = ListenerLimits(backend, listener(rate="1/s", maxConnsPerClient=1), "l")  # type: ignore[arg-type]
        d = deferredOnly.checkConnection("c", True)
        self.assertIsInstance(d, Deferred)
        backend.calls[0][2].callback(ALLOWED)
        self.assertEqual(backend.calls[1][:2], ("acquire", ("l", "c", None, 1)))
        lease = FakeLease()
        backend.calls[1][2].callback(Decision(True, None, 0.0, lease))
        self.assertIs(self.successResultOf(d).lease, lease)  # type: ignore[arg-type]

    def test_protocolFastPath(self) -> None:
        """
        A forward proxy with a memory limiter decides a request's policy at
        once: C{checkPolicy} returns L{None} (no Deferred to wait for), and
        the refusal past the burst is immediate too.
        """
        from txproxy.hooks import Refuse
        from txproxy.http import parseRequestHead
        from txproxy.testing import FakeConnector, connect, forwardFactory

        factory = forwardFactory(FakeConnector(), self.clock, rate="2/s", max_conns_per_client=5)
        service = LimiterService(clock=self.clock)
        factory.limits = ListenerLimits(service, factory.listener, "t")
        proto, transport = connect(factory)
        self.assertIsInstance(proto._admission, Decision)
        head = parseRequestHead(b"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n")
        self.assertIsNone(proto.checkPolicy(head))
        self.assertIsNone(proto.checkPolicy(head))
        with self.assertRaises(Refuse) as caught:
            proto.checkPolicy(head)
        self.assertEqual(caught.exception.status, 429)
        self.assertEqual(service.decisions["allowed"], 3)  # the connection and two requests
