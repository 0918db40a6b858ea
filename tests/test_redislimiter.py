# -*- test-case-name: tests.test_redislimiter -*-
"""
Tests for L{txproxy.limits.redis} against a real C{redis-server} that each
test starts on a free loopback port (L{tests.redisserver}; never skipped).

The shared behaviour suite runs with the scripts' time taken from the test's
fake clock (C{overrideRedisTime}; see the module docstring of
L{txproxy.limits.redis} for why that is safe), so it needs no sleeping.  The
tests of real Redis time, real lease expiry and of the outage policy wait on
real I/O, briefly.
"""

from __future__ import annotations

import socket
import time
from typing import Any, Callable, Dict, List

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks, succeed
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from tests.procs import Twistd, freePort
from tests.redisserver import RedisServer
from tests.test_limiter import LimiterBehaviourMixin
from txproxy.limits.service import ALLOWED, Decision, LimiterService
from txproxy.limits._redisio import TEST_TTL_SLACK_MS
from txproxy.limits.redis import REFILL_MIN_BATCH, RedisLimiter, RedisUnavailable, _Local


def startRedis(case: unittest.TestCase) -> RedisServer:
    server = RedisServer().start()
    case.addCleanup(server.cleanup)
    return server


def sleep(seconds: float) -> "Deferred[None]":
    return deferLater(reactor, seconds, lambda: None)  # type: ignore[arg-type]


@inlineCallbacks
def waitFor(predicate: Callable[[], Any], timeout: float = 3.0) -> Any:
    """
    Poll C{predicate} every 5 ms of real time until it is true.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"still false after {timeout}s: {predicate}")
        yield sleep(0.005)


class RedisCase(unittest.TestCase):
    """
    Each test gets its own redis-server and a way to make limiters on it.
    """

    timeout = 20
    leaseTTL = 10.0

    def setUp(self) -> "Deferred[Any]":
        self.server = startRedis(self)
        self.clock = Clock()
        return self._setLimiter()

    @inlineCallbacks
    def _setLimiter(self) -> Any:
        self.limiter = yield self.makeLimiter()

    @inlineCallbacks
    def makeLimiter(self, fakeTime: bool = True, **kwargs: Any) -> Any:
        """
        A started, connected L{RedisLimiter} on the test's server: on the fake
        clock and with the scripts' time overridden by it, unless
        C{fakeTime} is false (then real reactor and Redis C{TIME}).
        """
        if fakeTime:
            kwargs.setdefault("clock", self.clock)
            kwargs.setdefault("overrideRedisTime", self.clock.seconds)
        kwargs.setdefault("leaseTTL", self.leaseTTL)
        limiter = RedisLimiter.fromURL(self.server.url, **kwargs)
        limiter.start()
        self.addCleanup(limiter.stop)
        yield waitFor(lambda: limiter._client.connected)
        yield limiter.loadScripts()
        return limiter


class RedisLimiterBehaviourTests(LimiterBehaviourMixin, RedisCase):
    """
    The shared behaviour, on L{RedisLimiter} and a real Redis.
    """

    def settle(self) -> "Deferred[Any]":
        # One connection: a PING is answered after everything sent before.
        return self.limiter.ping()

    @inlineCallbacks
    def crashAndSurvive(self) -> Any:
        yield self.limiter.stop()
        survivor = yield self.makeLimiter()
        return survivor

    def assertBucketExpires(self, key: str, seconds: float) -> "Deferred[Any]":
        # In fake time every TTL is stretched by TEST_TTL_SLACK_MS of real
        # time (see redislimiter); the production TTL is checked in
        # RedisLimiterTests.test_productionScriptsUseRedisTime.
        pttl = self.server.command("PTTL", "txproxy:tb:" + key) - TEST_TTL_SLACK_MS
        self.assertGreater(pttl, 0)
        self.assertLessEqual(pttl, seconds * 1000)
        return succeed(None)


class RedisLimiterTests(RedisCase):
    """
    Guarantees of the Redis backend beyond the shared behaviour.
    """

    @inlineCallbacks
    def test_crashedLeaseCountsUntilTTL(self) -> Any:
        """
        A crashed holder's lease still counts for other processes until it
        expires, then it is pruned from both sets.
        """
        self.assertTrue((yield self.limiter.acquire("s", "c", 1, None)).allowed)
        yield self.limiter.stop()
        survivor = yield self.makeLimiter()
        self.clock.advance(self.leaseTTL - 1)
        self.assertEqual((yield survivor.acquire("s", "d", 1, None)).reason, "max-conns")
        self.clock.advance(2)
        decision = yield survivor.acquire("s", "d", 1, None)
        self.assertTrue(decision.allowed)
        self.assertEqual(self.server.command("ZRANGE", "txproxy:cc:s", 0, -1), [decision.lease.id])
        # c's own set is pruned when c next asks, or expires by itself.
        self.assertLessEqual(
            self.server.command("PTTL", "txproxy:cc:s|c") - TEST_TTL_SLACK_MS, self.leaseTTL * 1000
        )

    @inlineCallbacks
    def test_dataModel(self) -> Any:
        """
        A lease is one member of the scope's and the client's sorted sets,
        scored by its expiry; both sets expire by themselves; release
        removes it; bucket keys carry a TTL.
        """
        self.clock.advance(100)
        decision = yield self.limiter.acquire("s", "10.0.0.1", 5, 5)
        lease = decision.lease
        members = self.server.command("ZRANGE", "txproxy:cc:s", 0, -1, "WITHSCORES")
        self.assertEqual(members, [lease.id, "110"])
        self.assertEqual(self.server.command("ZRANGE", "txproxy:cc:s|10.0.0.1", 0, -1), [lease.id])
        for key in ("txproxy:cc:s", "txproxy:cc:s|10.0.0.1"):
            self.assertGreater(self.server.command("PTTL", key) - TEST_TTL_SLACK_MS, 9000)
            self.assertLessEqual(self.server.command("PTTL", key) - TEST_TTL_SLACK_MS, 10000)
        yield lease.release()
        self.assertEqual(self.server.command("EXISTS", "txproxy:cc:s"), 0)
        self.assertEqual(self.limiter.leaseCount, 0)
        yield self.limiter.take("web|10.0.0.1", 1.0, 5)
        self.assertEqual(self.server.command("GET", "txproxy:tb:web|10.0.0.1"), "101")
        self.assertLessEqual(self.server.command("PTTL", "txproxy:tb:web|10.0.0.1") - TEST_TTL_SLACK_MS, 1000)

    @inlineCallbacks
    def test_refreshLoop(self) -> Any:
        """
        The holder's L{LoopingCall}, on the injected clock, pushes its
        leases' expiry forward every C{leaseTTL / 3}.
        """
        lease = (yield self.limiter.acquire("s", "c", None, None)).lease
        self.clock.advance(self.leaseTTL / 3)
        yield self.limiter.ping()
        score = self.server.command("ZSCORE", "txproxy:cc:s", lease.id)
        self.assertAlmostEqual(float(score), self.leaseTTL / 3 + self.leaseTTL)

    @inlineCallbacks
    def test_batchingSavesRoundTrips(self) -> Any:
        """
        A busy key fetches growing batches (up to C{kMax}), so a thousand
        takes cost a few dozen round trips, and still exactly C{burst} are
        admitted.
        """
        self.assertEqual(self.limiter.maxBatch(1000), 32)
        admitted = 0
        for _ in range(1001):
            decision = yield self.limiter.take("k", 1000.0, 1000)
            admitted += decision.allowed
        self.assertEqual(admitted, 1000)
        self.assertLess(self.limiter.redisCalls, 45)
        self.assertGreater(self.limiter.localHits, 950)

    @inlineCallbacks
    def test_noBatchingForSmallBursts(self) -> Any:
        """
        Under a burst of 20 (with the default fraction 0.1) every token is
        fetched on its own: the limit is exact.
        """
        self.assertEqual(self.limiter.maxBatch(19), 1)
        for _ in range(5):
            yield self.limiter.take("k", 1.0, 19)
        self.assertEqual(self.limiter.redisCalls, 5)

    @inlineCallbacks
    def test_deniedUntilRetryAfterLocally(self) -> Any:
        """
        After a denial, takes until C{retryAfter} are denied locally (other
        processes can only make the wait longer), with a shrinking wait.
        """
        yield self.limiter.take("k", 1.0, 1)
        yield self.limiter.take("k", 1.0, 1)
        calls = self.limiter.redisCalls
        self.clock.advance(0.25)
        decision = yield self.limiter.take("k", 1.0, 1)
        self.assertEqual((decision.reason, decision.retryAfter), ("rate", 0.75))
        self.assertEqual(self.limiter.redisCalls, calls)
        self.clock.advance(0.75)
        self.assertIs((yield self.limiter.take("k", 1.0, 1)), ALLOWED)
        self.assertEqual(self.limiter.redisCalls, calls + 1)

    @inlineCallbacks
    def test_overAdmissionBound(self) -> Any:
        """
        Two processes sharing a bucket, both asking for six times the rate:
        over any window of C{w} seconds they admit at most
        C{burst + rate * w + burst * batchFraction} together, and not much less than
        C{burst + rate * w} over the whole run; each alone would have been
        admitted more than the shared limit.
        """
        rate, burst = 100.0, 100
        a, b = self.limiter, (yield self.makeLimiter())
        bound = rate * a.holdFor(rate, burst)
        self.assertEqual(bound, 10)
        admitted: List[float] = []
        attempts = 0
        step = 0.01
        for _ in range(300):
            self.clock.advance(step)
            for limiter in (a, b, a, b, a, b):
                attempts += 1
                if (yield limiter.take("k", rate, burst)).allowed:
                    admitted.append(self.clock.seconds())
        duration = 300 * step
        self.assertLessEqual(len(admitted), burst + rate * duration + bound)
        self.assertGreaterEqual(len(admitted), 0.9 * (burst + rate * duration))
        self.assertGreater(attempts / 2, burst + rate * duration)
        for start in range(len(admitted)):
            for end in range(start, len(admitted)):
                window = admitted[end] - admitted[start]
                self.assertLessEqual(end - start + 1, burst + rate * window + bound + 1e-6)

    @inlineCallbacks
    def test_overAdmissionBoundConcurrent(self) -> Any:
        """
        The same bound with takes in flight together (as a busy proxy has
        them): each step, two processes each get eight takes at once, so
        that takes wait for fetches in flight, batches are refilled ahead
        and grants are shared among waiting takes.  Over any window of
        C{w} seconds the two admit at most C{burst + rate * w + burst *
        batchFraction}; every take is answered.
        """
        rate, burst = 200.0, 400
        a, b = self.limiter, (yield self.makeLimiter())
        bound = rate * a.holdFor(rate, burst)
        self.assertEqual((bound, a.maxBatch(burst)), (40, 32))
        admitted: List[float] = []
        step = 0.01
        for _ in range(200):
            self.clock.advance(step)
            now = self.clock.seconds()
            decisions = yield gatherResults([limiter.take("k", rate, burst) for limiter in (a, b) for _ in range(8)])
            admitted.extend(now for d in decisions if d.allowed)
        duration = 200 * step
        self.assertLessEqual(len(admitted), burst + rate * duration + bound)
        self.assertGreaterEqual(len(admitted), 0.9 * (burst + rate * duration))
        self.assertGreater(a.refills + b.refills, 0)
        self.assertGreater(a.joinedFetches + b.joinedFetches, 0)
        for start in range(len(admitted)):
            for end in range(start, len(admitted)):
                window = admitted[end] - admitted[start]
                self.assertLessEqual(end - start + 1, burst + rate * window + bound + 1e-6)

    @inlineCallbacks
    def test_noscriptReloads(self) -> Any:
        """
        After C{SCRIPT FLUSH} (as after a restart), a decision gets
        C{NOSCRIPT}, loads the script and still answers.
        """
        yield self.limiter.take("k", 1.0, 1)
        self.assertEqual(self.limiter.scriptLoads, 0)
        self.assertEqual(self.server.command("SCRIPT", "FLUSH"), "OK")
        self.assertEqual((yield self.limiter.take("k", 1.0, 1)).reason, "rate")
        self.assertTrue((yield self.limiter.acquire("s", "c", 1, 1)).allowed)
        self.assertEqual(self.limiter.scriptLoads, 2)
        self.assertTrue((yield self.limiter.acquire("s", "d", 2, 2)).allowed)
        self.assertEqual(self.limiter.scriptLoads, 2)

    @inlineCallbacks
    def test_notConnectedFailsFast(self) -> Any:
        """
        With no open connection a decision fails at once with
        L{RedisUnavailable}: nothing queues behind a dead Redis.  Refreshes
        and releases that cannot reach Redis are counted, never raised.
        """
        held = (yield self.limiter.acquire("s", "c", None, None)).lease
        other = (yield self.limiter.acquire("s", "d", None, None)).lease
        self.server.kill()
        yield waitFor(lambda: not self.limiter._client.connected)
        d = self.limiter.take("k", 1.0, 1)
        self.failureResultOf(d, RedisUnavailable)
        self.failureResultOf(self.limiter.acquire("s", "c", 1, 1), RedisUnavailable)
        self.failureResultOf(self.limiter.ping(), RedisUnavailable)
        self.assertIsNone(self.successResultOf(self.limiter.refreshLeases()))
        self.assertEqual(self.limiter.refreshErrors, 1)
        self.assertIsNone(self.successResultOf(other.release()))
        self.assertEqual(self.limiter.releaseErrors, 1)
        self.assertEqual(self.limiter.leaseCount, 1)
        yield held.release()

    @inlineCallbacks
    def test_leasesSurviveRedisRestart(self) -> Any:
        """
        A Redis restarted empty learns the holder's open leases again at the
        next refresh (which re-adds them), so the caps count them again.
        """
        held = (yield self.limiter.acquire("s", "c", 1, None)).lease
        self.server.restart()
        yield waitFor(lambda: not self.limiter._client.connected)
        yield waitFor(lambda: self.limiter._client.connected, timeout=5.0)
        self.assertEqual(self.server.command("EXISTS", "txproxy:cc:s"), 0)
        yield self.limiter.refreshLeases()
        self.assertEqual(self.server.command("ZRANGE", "txproxy:cc:s", 0, -1), [held.id])
        self.assertEqual((yield self.limiter.acquire("s", "d", 1, None)).reason, "max-conns")

    @inlineCallbacks
    def test_productionScriptsUseRedisTime(self) -> Any:
        """
        Without the test override the scripts read C{TIME} and take no time
        argument: a bucket refills in real time.
        """
        limiter = yield self.makeLimiter(fakeTime=False)
        self.assertNotEqual(limiter._scripts["take"].sha, self.limiter._scripts["take"].sha)
        self.assertIn("redis.call('TIME')", limiter._scripts["take"].source)
        self.assertNotIn("ARGV[#ARGV]", limiter._scripts["take"].source)
        self.assertIs((yield limiter.take("rt", 20.0, 1)), ALLOWED)
        self.assertLessEqual(self.server.command("PTTL", "txproxy:tb:rt"), 50)
        denied = yield limiter.take("rt", 20.0, 1)
        self.assertEqual(denied.reason, "rate")
        self.assertGreater(denied.retryAfter, 0.0)
        self.assertLessEqual(denied.retryAfter, 0.05)
        yield sleep(denied.retryAfter + 0.01)
        self.assertIs((yield limiter.take("rt", 20.0, 1)), ALLOWED)
        # The stored value is Redis time: a slow bucket (full again in 2 s)
        # keeps its key long enough to read it on a loaded machine.
        self.assertIs((yield limiter.take("slow", 0.5, 1)), ALLOWED)
        stored = float(self.server.command("GET", "txproxy:tb:slow"))
        redisNow = self.server.command("TIME")
        self.assertLess(abs(stored - 2.0 - (float(redisNow[0]) + float(redisNow[1]) / 1e6)), 1.0)

    @inlineCallbacks
    def test_realLeaseExpiryAfterCrash(self) -> Any:
        """
        In real time: a holder refreshing its leases keeps them past
        C{leaseTTL}; once it crashes they lapse within C{leaseTTL}.
        """
        holder = yield self.makeLimiter(fakeTime=False, leaseTTL=0.3)
        other = yield self.makeLimiter(fakeTime=False, leaseTTL=0.3)
        self.assertTrue((yield holder.acquire("s", "c", 1, None)).allowed)
        self.assertLessEqual(self.server.command("PTTL", "txproxy:cc:s"), 300)
        yield sleep(0.5)
        self.assertEqual((yield other.acquire("s", "d", 1, None)).reason, "max-conns")
        yield holder.stop()
        yield sleep(0.35)
        self.assertTrue((yield other.acquire("s", "d", 1, None)).allowed)


class ScriptedRedis:
    """
    A fake Redis client for L{RedisLimiter}: every script call is recorded
    and left unanswered; the test answers the take script's calls
    (C{granted retryAfter}, as the script does) or fails them.

    @ivar takes: C{(want, cost, Deferred)} for each call of the take
        script, in order.
    """

    def __init__(self) -> None:
        self.takes: List[Any] = []
        self.other: List[Any] = []

    def execute(self, *args: Any) -> "Deferred[Any]":
        d: "Deferred[Any]" = Deferred()
        if args[0] == "EVALSHA" and args[2] == 1:
            # The take script: one key; ARGV rate, burst, cost, want.
            self.takes.append((float(args[7]), float(args[6]), d))
        else:
            self.other.append((args, d))
        return d

    def pending(self) -> List[int]:
        return [i for i, (_, _, d) in enumerate(self.takes) if not d.called]

    def grant(self, i: int, granted: Any = None) -> None:
        want, _, d = self.takes[i]
        d.callback(f"{want if granted is None else granted!r} 0")

    def deny(self, i: int, retryAfter: float) -> None:
        self.takes[i][2].callback(f"0 {retryAfter!r}")

    def fail(self, i: int) -> None:
        self.takes[i][2].errback(ConnectionError("gone"))


class LocalTokenTests(unittest.SynchronousTestCase):
    """
    How L{RedisLimiter} spends, waits for and refills the tokens it holds,
    on a fake clock and a L{ScriptedRedis}: a take answered from a held
    token is the shared L{ALLOWED} itself, at once; a busy key's next batch
    is fetched ahead of need; takes that find no token wait for a fetch in
    flight rather than each sending one.

    Bucket: C{rate} 1000/s, C{burst} 1000: C{kMax} 32, tokens valid 0.1 s.
    """

    rate, burst = 1000.0, 1000

    def setUp(self) -> None:
        self.clock = Clock()
        self.redis = ScriptedRedis()
        self.limiter = RedisLimiter(self.redis, clock=self.clock)

    def take(self) -> Any:
        return self.limiter.takeNowOrLater("k", self.rate, self.burst)

    def warm(self) -> None:
        """
        Take until the batch is at least L{REFILL_MIN_BATCH}, granting every
        fetch in full: the key's next refill is then due.
        """
        state = None
        while state is None or state.batch < REFILL_MIN_BATCH or state.refillAt < 0:
            result = self.take()
            for i in self.redis.pending():
                self.redis.grant(i)
            if isinstance(result, Deferred):
                self.assertIs(self.successResultOf(result), ALLOWED)
            state = self.limiter._local["k"]

    def spendUntilRefill(self) -> int:
        """
        Take from the held tokens until the refill goes out; its index in
        C{self.redis.takes}.
        """
        refills = self.limiter.refills
        while self.limiter.refills == refills:
            self.assertIs(self.take(), ALLOWED)
        return len(self.redis.takes) - 1

    def test_heldTokensAnswerAtOnce(self) -> None:
        """
        Once a key is busy, takes are answered by the shared L{ALLOWED}, not
        a Deferred, and Redis is asked once per batch, ahead of need: no
        take waits.
        """
        results = []
        for _ in range(1000):
            results.append(self.take())
            for i in self.redis.pending():  # Redis answers at once
                self.redis.grant(i)
        waited = [r for r in results if r is not ALLOWED]
        self.assertEqual(len(waited), 3)  # batches of 1, 2 and 4: then refilled ahead
        for d in waited:
            self.assertIs(self.successResultOf(d), ALLOWED)
        self.assertLess(len(self.redis.takes), 1000 / 32 + 8)
        self.assertEqual(max(want for want, _, _ in self.redis.takes), 32)
        self.assertGreater(self.limiter.refills, 25)
        self.assertEqual(self.limiter.localHits, 997)

    def test_serviceHandsOverHeldTokens(self) -> None:
        """
        Through L{LimiterService} too a held token is the shared L{ALLOWED}
        at once, with no timeout timer.
        """
        service = LimiterService(self.limiter, clock=self.clock)
        self.warm()
        self.assertIs(service.takeNowOrLater("k", self.rate, self.burst), ALLOWED)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(service.decisions["allowed"], 1)

    def test_refillAhead(self) -> None:
        """
        When half of a batch is spent the next, doubled, batch is fetched;
        it is held apart (its own validity) and spent once the current one
        runs out.
        """
        self.warm()
        state = self.limiter._local["k"]
        batch, fetches = state.batch, len(self.redis.takes)
        self.assertEqual(state.refillAt, batch / 2)
        while state.tokens > state.refillAt + 1:
            self.assertIs(self.take(), ALLOWED)
        self.assertEqual(len(self.redis.takes), fetches)
        self.assertIs(self.take(), ALLOWED)  # half spent: the refill goes out
        self.assertEqual(len(self.redis.takes), fetches + 1)
        self.assertEqual(self.redis.takes[-1][0], 2 * batch)
        self.assertLess(state.refillAt, state.tokens)  # that is enough in flight
        self.redis.grant(fetches)
        self.assertEqual((state.spare, state.spareUntil), (2 * batch, 0.1))
        left = state.tokens
        for _ in range(int(left) + 2 * batch):
            self.assertIs(self.take(), ALLOWED)
        self.assertEqual(len(self.redis.takes), fetches + 2)  # the next refill, at half of 2 * batch
        self.assertEqual(self.limiter.refills, 2 + (batch > REFILL_MIN_BATCH))

    def test_tokensKeepTheirOwnValidity(self) -> None:
        """
        A refilled batch is valid for C{tau} after its own request, the
        current one for C{tau} after its own: once the current has lapsed
        the refill is spent, and once that has lapsed too Redis is asked.
        """
        self.warm()
        state = self.limiter._local["k"]
        # The current batch was fetched at 0 and expires at 0.1; the refill
        # goes out at 0.05.
        self.clock.advance(0.05)
        refill = self.spendUntilRefill()
        self.redis.grant(refill)
        self.assertAlmostEqual(state.spareUntil, 0.15)
        self.clock.advance(0.06)  # t = 0.11: the current batch has lapsed
        self.assertIs(self.take(), ALLOWED)
        self.assertAlmostEqual(state.validUntil, 0.15)
        self.clock.advance(0.05)  # t = 0.16: so has the refill
        fetches = len(self.redis.takes)
        self.assertIsInstance(self.take(), Deferred)
        self.assertEqual(len(self.redis.takes), fetches + 1)

    def test_waitForTheFetchInFlight(self) -> None:
        """
        Takes that find no token while a fetch is in flight wait for it
        rather than each sending one, and are served in order from the
        grants as they come; a partial grant serves the first ones.  Takes
        waiting show that the key holds too little for a round trip: one
        more batch is fetched (a top-up), not one per take.
        """
        self.warm()
        state = self.limiter._local["k"]
        refill = self.spendUntilRefill()
        want = self.redis.takes[refill][0]
        while state.tokens >= 1:
            self.assertIs(self.take(), ALLOWED)
        fetches = len(self.redis.takes)
        waiting = [self.take() for _ in range(int(want))]
        self.assertEqual(self.limiter.joinedFetches, want)
        self.assertEqual(len(self.redis.takes), fetches + 1)  # the top-up
        topUp = self.redis.takes[-1][0]
        for d in waiting:
            self.assertNoResult(d)
        self.redis.grant(refill, want - 2)  # a partial grant
        for d in waiting[:-2]:
            self.assertIs(self.successResultOf(d), ALLOWED)
        for d in waiting[-2:]:
            self.assertNoResult(d)
        self.redis.grant(fetches)
        for d in waiting[-2:]:
            self.assertIs(self.successResultOf(d), ALLOWED)
        self.assertEqual(state.tokens, topUp - 2)
        self.assertEqual((state.waiters, state.waitingCost), (None, 0.0))
        # The takes that waited made the lead grow: the next refill is due.
        self.assertGreaterEqual(state.lead, want)

    def test_leadGrowsWithSlowAnswers(self) -> None:
        """
        When Redis answers only after many takes (a slow network, a busy
        event loop), the lead (the tokens a round trip needs) grows, and
        enough is fetched ahead, in several batches at once, for takes not
        to wait: after a warm-up, every take is answered at once.
        """
        delay = 80  # takes between a fetch and its answer
        sent: List[int] = []
        results = []
        for i in range(3000):
            results.append(self.take())
            while len(sent) < len(self.redis.takes):
                sent.append(i)
            for j in self.redis.pending():
                if sent[j] + delay <= i or isinstance(results[-1], Deferred) and not results[-1].called:
                    # Due, or the take just made waits: time passes until
                    # the answers come.
                    self.redis.grant(j)
        waits = [i for i, r in enumerate(results) if r is not ALLOWED]
        self.assertTrue(waits)
        self.assertLess(max(waits), 1000)
        state = self.limiter._local["k"]
        self.assertGreaterEqual(state.lead, delay * 0.8)
        self.assertLess(len(self.redis.takes), 3000 / 32 + 40)
        self.assertLessEqual(max(want for want, _, _ in self.redis.takes), 32)

    def test_denialAnswersTheWaitingTakes(self) -> None:
        """
        A denial answers every take waiting for that fetch, and is then
        remembered: later takes are denied locally until its C{retryAfter}.
        """
        waiting = [self.take() for _ in range(4)]
        # Cold takes together: each fetch asks for twice as much, and a
        # take joins a fetch when those in flight asked for enough.
        self.assertEqual([want for want, _, _ in self.redis.takes], [1, 2, 4])
        self.assertEqual(self.limiter.joinedFetches, 1)
        self.redis.deny(0, 0.25)
        for d in waiting:
            self.assertEqual(self.successResultOf(d), Decision(False, "rate", 0.25))
        self.redis.deny(1, 0.25)
        self.redis.deny(2, 0.25)
        self.clock.advance(0.2)
        denied = self.take()
        self.assertEqual((denied.reason, round(denied.retryAfter, 9)), ("rate", 0.05))
        self.assertEqual(len(self.redis.takes), 3)
        self.clock.advance(0.05)
        self.assertIsInstance(self.take(), Deferred)
        self.assertEqual(len(self.redis.takes), 4)

    def test_rememberedDenialTolerance(self) -> None:
        """
        A remembered denial ends with the scripts' tolerance: float noise in
        Redis's C{retryAfter} does not deny a take the bucket admits.
        """
        first = self.take()
        self.redis.deny(0, 0.1 + 1.4e-15)
        self.successResultOf(first)
        self.clock.advance(0.1)
        self.assertIsInstance(self.take(), Deferred)
        self.assertEqual(len(self.redis.takes), 2)

    def test_failedFetchFailsTheWaitingTakes(self) -> None:
        """
        A fetch that fails fails every take waiting for it (the service then
        answers from its fallback); the key's state is ready to ask again.
        """
        first = self.take()
        second = self.take()
        self.redis.fail(0)
        for d in (first, second):
            self.failureResultOf(d, ConnectionError)
        self.redis.fail(1)
        self.assertEqual(self.limiter.fetchErrors, 2)
        state = self.limiter._local["k"]
        self.assertEqual((state.inflight, state.inflightWant, state.waiters), (0, 0.0, None))
        self.assertIsInstance(self.take(), Deferred)
        self.assertEqual(len(self.redis.takes), 3)

    def test_failedRefill(self) -> None:
        """
        A refill that fails is counted (no take was waiting for it), and no
        refill goes out again before a fetch succeeds: the held tokens are
        spent, then a take asks Redis itself.
        """
        self.warm()
        state = self.limiter._local["k"]
        refill = self.spendUntilRefill()
        self.redis.fail(refill)
        self.assertEqual(self.limiter.fetchErrors, 1)
        fetches = len(self.redis.takes)
        while state.tokens >= 1:
            self.assertIs(self.take(), ALLOWED)
        self.assertEqual(len(self.redis.takes), fetches)
        d = self.take()
        self.assertEqual(len(self.redis.takes), fetches + 1)
        self.redis.grant(fetches)
        self.assertIs(self.successResultOf(d), ALLOWED)

    def test_idleStateIsSwept(self) -> None:
        """
        The local state of a key with nothing held, in flight or remembered
        is dropped by later takes of other keys; a key with a fetch in
        flight is kept.
        """
        d = self.take()
        self.redis.grant(0, 1)
        self.successResultOf(d)
        self.limiter.takeNowOrLater("busy", self.rate, self.burst)
        self.clock.advance(1.0)
        self.limiter.takeNowOrLater("x", self.rate, self.burst)
        self.assertNotIn("k", self.limiter._local)
        self.assertIn("busy", self.limiter._local)  # its fetch is in flight

    def test_grantsAreNeverExtended(self) -> None:
        """
        L{_Local.addGrant} keeps at most two grants, each with its own
        deadline; a third is merged with the earlier deadline of the two.
        """
        state = _Local()
        state.addGrant(4, 1.0, 0.0)
        state.addGrant(8, 2.0, 0.0)
        self.assertEqual((state.tokens, state.validUntil, state.spare, state.spareUntil), (4, 1.0, 8, 2.0))
        state.addGrant(2, 3.0, 0.0)
        self.assertEqual((state.tokens, state.validUntil, state.spare, state.spareUntil), (4, 1.0, 10, 2.0))
        state.addGrant(1, 0.5, 0.0)
        self.assertEqual((state.tokens, state.validUntil, state.spare, state.spareUntil), (11, 0.5, 4, 1.0))
        state.addGrant(3, 5.0, 1.5)  # both held grants have lapsed
        self.assertEqual((state.tokens, state.validUntil, state.spare, state.spareUntil), (3, 5.0, 0.0, 0.0))
        other = _Local()
        other.addGrant(4, 2.0, 0.0)
        other.addGrant(8, 1.0, 0.0)  # an earlier deadline is spent first
        self.assertEqual((other.tokens, other.validUntil, other.spare, other.spareUntil), (8, 1.0, 4, 2.0))


class LimiterServiceRedisTests(unittest.TestCase):
    """
    L{LimiterService} over a real Redis that dies, freezes and comes back.
    """

    timeout = 20

    @inlineCallbacks
    def setUp(self) -> Any:
        self.server = startRedis(self)
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.redis = RedisLimiter.fromURL(self.server.url)
        self.service = LimiterService(self.redis, redisTimeout=0.25, probeInterval=0.2)
        self.service.startService()
        self.addCleanup(self.service.stopService)
        yield waitFor(lambda: self.redis._client.connected)

    def lines(self, text: str) -> List[str]:
        return [formatEvent(e) for e in self.events if text in formatEvent(e)]

    @inlineCallbacks
    def timed(self, d: "Deferred[Any]") -> Any:
        started = time.monotonic()
        result = yield d
        return result, time.monotonic() - started

    @inlineCallbacks
    def test_killAndRestart(self) -> Any:
        """
        Redis killed mid-run: the next decision is answered from memory well
        within the timeout, the switch is logged once; after a restart (all
        scripts gone: NOSCRIPT) the service goes back to Redis, logged once.
        """
        self.assertIs((yield self.service.take("k", 1.0, 1)), ALLOWED)
        self.assertEqual(self.server.command("EXISTS", "txproxy:tb:k"), 1)
        loads = self.redis.scriptLoads
        self.server.kill()
        decision, elapsed = yield self.timed(self.service.take("k", 1.0, 1))
        self.assertIs(decision, ALLOWED)  # memory's own bucket
        self.assertLess(elapsed, 0.3)
        self.assertTrue(self.service.usingFallback)
        for _ in range(20):
            yield self.service.acquire("s", "c", 1, 1)
        self.assertEqual(self.service.fallbacks, 1)
        self.assertEqual(len(self.lines("falling back")), 1)
        self.server.start()
        yield waitFor(lambda: not self.service.usingFallback, timeout=5.0)
        self.assertEqual(len(self.lines("reachable again")), 1)
        self.assertIs((yield self.service.take("k2", 1.0, 1)), ALLOWED)
        self.assertEqual(self.server.command("EXISTS", "txproxy:tb:k2"), 1)
        self.assertEqual(self.redis.scriptLoads, loads + 1)
        self.assertEqual((self.service.fallbacks, self.service.recoveries), (1, 1))

    @inlineCallbacks
    def test_outageLogsOneLine(self) -> Any:
        """
        Through a Redis outage with several reconnection attempts, the log
        has txproxy's one C{falling back} line and none of Twisted's
        C{Scheduling retry N to connect ...} lines (the attempts are
        counted instead); Twisted's other lines still get through.
        """
        from twisted.application.internet import ClientService
        from twisted.logger import Logger

        client = self.redis._client
        self.server.kill()
        yield self.service.take("k", 1.0, 1)
        yield waitFor(lambda: client.retriesScheduled >= 3, timeout=5.0)
        self.assertEqual(self.lines("Scheduling retry"), [])
        self.assertEqual(len(self.lines("falling back")), 1)
        self.assertEqual([e for e in self.events if "txredisapi" in formatEvent(e)], [])
        # Only our pools' services were made quiet: the class logger is back.
        self.assertIsInstance(ClientService.__dict__["_log"], Logger)
        self.assertIs(ClientService._log.observer, globalLogPublisher)

    @inlineCallbacks
    def test_frozenRedisTimesOut(self) -> Any:
        """
        A Redis that accepts but does not answer costs one decision at most
        C{redisTimeout}; the late answer is dropped (its lease released);
        when Redis thaws the service goes back to it.
        """
        self.assertTrue((yield self.service.acquire("s", "warm", 5, 5)).allowed)
        self.server.pause()
        try:
            decision, elapsed = yield self.timed(self.service.acquire("s", "c", 5, 5))
        finally:
            self.server.resume()
        self.assertTrue(decision.allowed)
        self.assertGreaterEqual(elapsed, 0.2)
        self.assertLess(elapsed, 0.5)
        self.assertEqual(self.service.redisTimeouts, 1)
        self.assertTrue(self.service.usingFallback)
        yield waitFor(lambda: not self.service.usingFallback, timeout=5.0)
        yield self.redis.ping()
        # The acquire Redis answered late was released: only "warm" is left.
        self.assertEqual(self.server.command("ZCARD", "txproxy:cc:s|c"), 0)
        self.assertEqual(self.server.command("ZCARD", "txproxy:cc:s"), 1)
        self.assertEqual(len(self.lines("falling back")), 1)
        self.assertEqual(len(self.lines("reachable again")), 1)


def _status(port: int, dead: int) -> int:
    """
    One forward-proxy request through the proxy on C{port} to a closed
    port: C{502} when the limiter admitted it, C{429} when it did not.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            f"GET http://127.0.0.1:{dead}/ HTTP/1.1\r\nHost: 127.0.0.1:{dead}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        data = b""
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return int(data.split(b" ", 2)[1])


class TwoProcessesShareRedisTests(unittest.SynchronousTestCase):
    """
    Two real C{twistd -n txproxy} processes naming the same Redis share one
    limit; without C{--redis} each keeps its own.
    """

    burst = 6

    def _proxies(self, redis: bool, count: int = 2) -> List[Twistd]:
        procs = []
        for _ in range(count):
            port = freePort()
            args = ["--listen", f"tcp:{port}:interface=127.0.0.1", "--rate", "1/m", "--burst", str(self.burst)]
            if redis:
                args += ["--redis", self.server.url]
            proc = Twistd(args, port=port)
            self.addCleanup(proc.stop)
            procs.append(proc.start(wait=False))
        return procs

    def _admitted(self, procs: List[Twistd], each: int) -> Dict[int, int]:
        from tests.procs import waitForPort

        for proc in procs:
            assert proc.port is not None
            waitForPort(proc.port, proc=proc.proc)
        dead = freePort()
        admitted = {proc.port or 0: 0 for proc in procs}
        for _ in range(each):
            for proc in procs:
                status = _status(proc.port or 0, dead)
                self.assertIn(status, (502, 429))
                admitted[proc.port or 0] += status == 502
        return admitted

    def test_sharedLimit(self) -> None:
        """
        Asked twice the burst each (rate 1/m: no refill to speak of), two
        processes sharing Redis admit C{burst} together (the batching bound
        is zero for a burst under 20), so each fewer than C{burst}; a process
        without Redis, asked as much, admits C{burst} alone.
        """
        self.server = startRedis(self)  # type: ignore[arg-type]
        shared = self._proxies(redis=True)
        alone = self._proxies(redis=False, count=1)
        started = time.monotonic()
        together = self._admitted(shared, self.burst)
        elapsed = time.monotonic() - started
        self.assertLessEqual(sum(together.values()), self.burst + elapsed / 60.0)
        self.assertGreaterEqual(sum(together.values()), self.burst)
        for n in together.values():
            self.assertLess(n, self.burst)
        separately = self._admitted(alone, 2 * self.burst)
        self.assertEqual(list(separately.values()), [self.burst])
        for proc in shared:
            self.assertIn("connected to Redis", proc.stdout() + proc.stderr())
            self.assertNotIn("falling back", proc.stdout() + proc.stderr())
