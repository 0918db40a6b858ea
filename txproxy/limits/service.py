# -*- test-case-name: tests.test_limiter -*-
"""
Rate limits and connection caps: the service that chooses between the
in-memory backend (L{txproxy.limits.memory}) and the Redis one
(L{txproxy.limits.redis}), and the small adapter protocols call
(L{txproxy.limits.listener}).

Three layers:

  - L{MemoryLimiter}: an L{ILimiter} over process memory.  Token buckets are
    kept in GCRA form (one float per key, the "theoretical arrival time"):
    refill is computed lazily from the clock, a bucket that has refilled is
    indistinguishable from a missing one and is dropped by an amortised sweep.
  - L{LimiterService}: the L{ILimiter} the rest of txproxy is handed.  It
    wraps the in-memory backend and, when C{--redis} is given, a
    L{txproxy.limits.redis.RedisLimiter}; it implements the outage policy
    (never wait more than C{redisTimeout} on Redis, fall back to memory, go
    back when Redis answers again) and keeps the counters the metrics use.
  - L{ListenerLimits}: what a listener's factory and protocols call:
    L{ListenerLimits.admitConnection} and L{ListenerLimits.admitRequest}.

Decisions known at once are handed over without a L{Deferred}: next to
C{take} and C{acquire} (which return Deferreds), every L{ILimiter} (the
service and the backends) has C{takeNowOrLater} and C{acquireNowOrLater},
and
L{ListenerLimits} has L{ListenerLimits.checkRequest} and
L{ListenerLimits.checkConnection}, which return a L{Decision} when the
answer is known (always from memory; from Redis when the process holds a
token or remembers a denial) and a Deferred only when Redis must be asked.
An admission is then the shared L{ALLOWED}: a request admitted from memory
or from a locally held token allocates nothing.  The protocols call these
once per request and per connection.

Token bucket semantics, shared by both backends (see L{ILimiter.take}): a
bucket holds at most C{burst} tokens and refills at C{rate} tokens per
second; a take of C{cost} tokens succeeds when at least C{cost} tokens are
there, and otherwise fails with C{retryAfter} set to the seconds until they
will be (assuming nobody else takes any).  A denied take consumes nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple, Union

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txproxy.interfaces import ILimiter
from txproxy.limits._decision import (
    _DENIED_MAX_CONNS,
    ALLOWED,
    HTTP_STATUS,
    REASON_MAX_CONNS,
    REASON_MAX_CONNS_PER_CLIENT,
    REASON_RATE,
    Decision,
    ILease,
    bucketKey,
    checkBucket,
)
from txproxy.limits.listener import ListenerLimits
from txproxy.limits.memory import MemoryLimiter
from txproxy.limits.redis import RedisLimiter

if TYPE_CHECKING:  # pragma: no cover
    from txproxy.config import ListenerConfig, ProxyConfig

__all__ = [
    "ALLOWED",
    "Decision",
    "HTTP_STATUS",
    "ILease",
    "LimiterService",
    "ListenerLimits",
    "MemoryLimiter",
    "REASON_MAX_CONNS",
    "REASON_MAX_CONNS_PER_CLIENT",
    "REASON_RATE",
    "bucketKey",
    "checkBucket",
]


# ---------------------------------------------------------------------------
# The in-memory backend


# ---------------------------------------------------------------------------
# The service: backend choice and the outage policy


#: The choices for C{--redis-outage}.
OUTAGE_POLICIES = ("memory", "open", "closed")


class _NoLease:
    def release(self) -> "Deferred[None]":
        return succeed(None)


def _admitAll(key: str, rate: float, burst: float, cost: float = 1.0) -> Decision:
    return ALLOWED


def _leaseAll(scope: str, client: str, maxTotal: Optional[int], maxPerClient: Optional[int]) -> Decision:
    return Decision(True, None, 0.0, _NoLease())


def _refuseRate(key: str, rate: float, burst: float, cost: float = 1.0) -> Decision:
    return Decision(False, REASON_RATE, 1.0)


def _refuseConnection(scope: str, client: str, maxTotal: Optional[int], maxPerClient: Optional[int]) -> Decision:
    return _DENIED_MAX_CONNS


class RedisTimeout(Exception):
    """
    Redis did not answer a limiter decision within the service's timeout.
    """


@implementer(ILimiter)
class LimiterService(Service):
    """
    The process's limiter: an L{ILimiter} and a service.

    Without a Redis backend every decision is answered by the in-memory
    L{MemoryLimiter} at once.  With one, decisions go to Redis, and the
    outage policy applies:

      - no decision waits on Redis more than C{redisTimeout} seconds;
      - a decision that fails or times out is answered by the memory
        limiter instead, and the service switches to I{fallback}: later
        decisions go straight to memory (no queue builds up behind a dead
        Redis).  The switch is logged once (a warning) and counted
        (L{fallbacks});
      - while in fallback, Redis is probed (C{PING}) every C{probeInterval}
        seconds; the first answer switches back (logged once, counted in
        L{recoveries});
      - an answer that arrives after its decision timed out is dropped, and
        if it carried a lease, the lease is released at once.

    Leases taken from memory during an outage stay with memory until they
    are released; Redis does not count them, so just after Redis returns the
    shared caps may admit up to the fallback's open connections too many,
    for as long as those connections last.

    Counters, for the metrics (plain attributes, only ever incremented):

    @ivar decisions: decisions answered, by outcome: C{"allowed"} and each
        denial reason (a property: a new dict of the counts).
    @ivar redisErrors: Redis calls that failed (timeouts included).
    @ivar redisTimeouts: Redis calls that timed out.
    @ivar fallbacks: switches from Redis to memory.
    @ivar recoveries: switches back from memory to Redis.
    @ivar usingFallback: whether decisions currently go to memory although a
        Redis backend is configured.
    @ivar memory: the in-memory backend.
    @ivar redis: the Redis backend, or L{None}.
    """

    # (Twisted's Service.name is None: mypy infers its type from that.)
    name = "limiter"  # type: ignore[assignment]
    log = Logger()

    #: Seconds between two logged denials (others are only counted).
    denialLogInterval = 10.0

    #: Seconds Redis has to accept the first connection after start-up
    #: before its absence counts (and is logged) as an outage.
    startupGrace = 2.0

    def __init__(
        self,
        redis: Optional[Any] = None,
        clock: Optional[IReactorTime] = None,
        memory: Optional[MemoryLimiter] = None,
        redisTimeout: float = 0.25,
        probeInterval: float = 1.0,
        outagePolicy: str = "memory",
    ) -> None:
        """
        @param redis: the shared backend, usually a
            L{txproxy.limits.redis.RedisLimiter}: an L{ILimiter} with a
            C{ping()} method returning a Deferred, and optionally C{start()}
            and C{stop()} (called by L{startService} and L{stopService}).
            L{None}: memory only.
        @param clock: for timeouts, probes and denial logging; the global
            reactor when L{None}.
        @param memory: the in-memory backend; a new one on C{clock} when
            L{None}.
        @param redisTimeout: the most seconds a decision waits on Redis.
        @param probeInterval: seconds between probes of Redis during an
            outage.
        """
        if clock is None:
            from twisted.internet import reactor as clock
        self._clock: IReactorTime = clock  # type: ignore[assignment]
        self.memory = memory if memory is not None else MemoryLimiter(self._clock)
        self.redis = redis
        self.redisTimeout = redisTimeout
        self.probeInterval = probeInterval
        self.usingFallback = False
        if outagePolicy not in OUTAGE_POLICIES:
            raise ValueError(f"unknown Redis outage policy {outagePolicy!r}")
        #: What answers while Redis is unreachable: C{"memory"} (this
        #: process's own limits), C{"open"} (admit everything) or
        #: C{"closed"} (refuse everything).
        self.outagePolicy = outagePolicy
        if redis is None:
            # No Redis, no outage: memory answers, whatever the policy says.
            self._fallbackTake = self.memory.takeNow
            self._fallbackAcquire = self.memory.acquireNow
        elif outagePolicy == "open":
            self._fallbackTake = _admitAll
            self._fallbackAcquire = _leaseAll
        elif outagePolicy == "closed":
            self._fallbackTake = _refuseRate
            self._fallbackAcquire = _refuseConnection
        else:
            self._fallbackTake = self.memory.takeNow
            self._fallbackAcquire = self.memory.acquireNow
        self._memoryTake = self.memory.takeNow
        self._allowed = 0
        self._denied: Dict[str, int] = {
            REASON_RATE: 0,
            REASON_MAX_CONNS: 0,
            REASON_MAX_CONNS_PER_CLIENT: 0,
        }
        self.redisErrors = 0
        self.redisTimeouts = 0
        self.fallbacks = 0
        self.recoveries = 0
        self._probing = False
        self._prober: Optional[LoopingCall] = None
        self._starting = False
        self._startupTimer: Optional[IDelayedCall] = None
        self._waiters: Dict[int, Tuple[Callable[[], None], Callable[[], None], IDelayedCall]] = {}
        self._nextDenialLog = 0.0
        self._unloggedDenials = 0

    @property
    def redis(self) -> Optional[Any]:
        """
        The shared backend, or L{None}.
        """
        return self._redis

    @redis.setter
    def redis(self, redis: Optional[Any]) -> None:
        self._redis = redis
        if redis is None:
            self._redisTake: Any = None
            return
        # Looked up once: a backend that can answer at once (RedisLimiter:
        # from the tokens it holds) does so from takeNowOrLater.
        self._redisTake = redis.takeNowOrLater

    @property
    def decisions(self) -> Dict[str, int]:
        """
        Decisions answered, by outcome: C{"allowed"} and each denial reason
        (a copy: the counts live in plain attributes, cheaper to bump).
        """
        counts = {"allowed": self._allowed}
        counts.update(self._denied)
        return counts

    @classmethod
    def fromConfig(
        cls, config: "ProxyConfig", reactor: Optional[Any] = None, **kwargs: Any
    ) -> "LimiterService":
        """
        Build the service C{config} asks for: memory only, or Redis (with
        the memory fallback) when C{config.redis} is set.  Nothing connects
        until the service starts.

        @param reactor: the reactor (clock and TCP); the global one when
            L{None}.
        @param kwargs: passed to the constructor (C{redisTimeout},
            C{probeInterval}).
        """
        redis = None
        if config.redis:
            redis = RedisLimiter.fromURL(config.redis, reactor=reactor)
        kwargs.setdefault("outagePolicy", getattr(config, "redisOutage", "memory"))
        return cls(redis=redis, clock=reactor, **kwargs)

    def limitsFor(self, listener: "ListenerConfig", scope: Optional[str] = None) -> "ListenerLimits":
        """
        The L{ListenerLimits} of C{listener}, with buckets and caps in
        C{scope} (default: the listener's name).
        """
        return ListenerLimits(self, listener, scope if scope is not None else listener.name)

    # -- Service

    def startService(self) -> None:
        """
        Start the Redis backend (it connects) and the prober.

        Until the first connection is up, a decision waits for it (at most
        C{redisTimeout} in all, then it is answered from memory, without
        counting a fallback or logging); if Redis is still not reachable
        C{startupGrace} seconds after start-up, that becomes an ordinary
        fallback (logged once, probed).
        """
        Service.startService(self)
        if self.redis is None:
            return
        start = getattr(self.redis, "start", None)
        if start is not None:
            start()
        self._prober = LoopingCall(self._probe)
        self._prober.clock = self._clock
        self._prober.start(self.probeInterval, now=False)
        whenConnected = getattr(self.redis, "whenConnected", None)
        if whenConnected is None:
            return
        connected = whenConnected()
        if connected.called:
            connected.addErrback(lambda f: None)
            return
        self.usingFallback = True
        self._starting = True
        timer = self._clock.callLater(self.startupGrace, self._startupTimedOut)

        def up(_: object) -> None:
            if timer.active():
                timer.cancel()
            if self._starting:
                self._starting = False
                self.usingFallback = False
                self.log.info("connected to Redis: limits are shared")
                self._releaseWaiters(True)

        connected.addCallbacks(up, lambda f: None)
        self._startupTimer = timer

    def _startupTimedOut(self) -> None:
        if not self._starting:  # pragma: no cover
            return
        self._starting = False
        self.usingFallback = False
        self._releaseWaiters(False)
        self._redisFailed(Failure(RedisTimeout(f"not connected {self.startupGrace:g}s after start-up")))

    def stopService(self) -> "Optional[Deferred[None]]":
        Service.stopService(self)
        if self._prober is not None and self._prober.running:
            self._prober.stop()
        self._prober = None
        self._starting = False
        self._releaseWaiters(False)
        if self._startupTimer is not None and self._startupTimer.active():
            self._startupTimer.cancel()
        self._startupTimer = None
        if self.redis is not None:
            stop = getattr(self.redis, "stop", None)
            if stop is not None:
                result: "Optional[Deferred[None]]" = stop()
                return result
        return None

    # -- ILimiter

    def take(self, key: str, rate: float, burst: float, cost: float = 1.0) -> "Deferred[Decision]":
        """
        See L{ILimiter.take}.
        """
        result = self.takeNowOrLater(key, rate, burst, cost)
        if result.__class__ is Decision:
            return succeed(result)
        return result  # type: ignore[return-value]

    def takeNowOrLater(
        self, key: str, rate: float, burst: float, cost: float = 1.0
    ) -> "Union[Decision, Deferred[Decision]]":
        """
        L{take}, answered synchronously when the answer is known at once:
        always from memory, and from Redis when the backend answers locally
        (tokens it holds, a denial it remembers).  Protocols call this, once
        per request: an admission then costs no L{Deferred} and no
        allocation (it is the shared L{ALLOWED}).

        @return: a L{Decision}, or a L{Deferred} firing with one (never
            failing) when Redis has to be asked.
        """
        if self._redis is None:
            decision = self._memoryTake(key, rate, burst, cost)
            if decision is ALLOWED:
                self._allowed += 1
                return decision
            return self._count(decision)
        if self.usingFallback:
            if self._starting:
                checkBucket(rate, burst, cost)
                return self._afterConnecting(self._redisTake, self._fallbackTake, (key, rate, burst, cost))
            return self._count(self._fallbackTake(key, rate, burst, cost))
        if not (rate > 0 and 0 < cost <= burst):
            checkBucket(rate, burst, cost)
        try:
            answer = self._redisTake(key, rate, burst, cost)
        except Exception:
            self._redisFailed(Failure())
            return self._count(self._fallbackTake(key, rate, burst, cost))
        if answer is ALLOWED:
            self._allowed += 1
            return answer
        return self._answered(answer, self._fallbackTake, (key, rate, burst, cost))

    def acquire(
        self, scope: str, client: str, maxTotal: Optional[int], maxPerClient: Optional[int]
    ) -> "Deferred[Decision]":
        """
        See L{ILimiter.acquire}.
        """
        result = self.acquireNowOrLater(scope, client, maxTotal, maxPerClient)
        if result.__class__ is Decision:
            return succeed(result)
        return result  # type: ignore[return-value]

    def acquireNowOrLater(
        self, scope: str, client: str, maxTotal: Optional[int], maxPerClient: Optional[int]
    ) -> "Union[Decision, Deferred[Decision]]":
        """
        L{acquire}, answered synchronously when the answer is known at once
        (from memory: no Redis, or during an outage), else a L{Deferred}
        (never failing), as L{takeNowOrLater}.
        """
        if self._redis is None:
            return self._count(self.memory.acquireNow(scope, client, maxTotal, maxPerClient))
        args = (scope, client, maxTotal, maxPerClient)
        if self.usingFallback:
            if self._starting:
                return self._afterConnecting(self._redis.acquire, self._fallbackAcquire, args)
            return self._count(self._fallbackAcquire(*args))
        return self._viaRedis(self._redis.acquire, self._fallbackAcquire, args)

    # -- internals

    def _count(self, decision: Decision) -> Decision:
        reason = decision.reason
        if reason is None:
            self._allowed += 1
            return decision
        self._denied[reason] = self._denied.get(reason, 0) + 1
        now = self._clock.seconds()
        if now < self._nextDenialLog:
            self._unloggedDenials += 1
            return decision
        self._nextDenialLog = now + self.denialLogInterval
        self.log.info(
            "limiter denied admission ({reason}, retry after {retryAfter:.3f}s); "
            "{unlogged} other denials since the last one logged",
            reason=reason,
            retryAfter=decision.retryAfter,
            unlogged=self._unloggedDenials,
        )
        self._unloggedDenials = 0
        return decision

    def _afterConnecting(
        self,
        call: Callable[..., Any],
        fallback: Callable[..., Decision],
        args: Tuple[Any, ...],
    ) -> "Deferred[Decision]":
        # Start-up: wait for the first connection, but never longer than
        # redisTimeout in all.
        result: "Deferred[Decision]" = Deferred()
        started = self._clock.seconds()

        def proceed() -> None:
            timer.cancel()
            left = self.redisTimeout - (self._clock.seconds() - started)
            answer = self._viaRedis(call, fallback, args, max(0.0, left))
            if answer.__class__ is Decision:
                result.callback(answer)
            else:
                answer.chainDeferred(result)  # type: ignore[union-attr]

        def expire() -> None:
            self._waiters.pop(id(result), None)
            result.callback(self._count(fallback(*args)))

        timer = self._clock.callLater(self.redisTimeout, expire)
        self._waiters[id(result)] = (proceed, expire, timer)
        return result

    def _releaseWaiters(self, connected: bool) -> None:
        waiters, self._waiters = self._waiters, {}
        for proceed, expire, timer in waiters.values():
            if connected:
                proceed()
            else:
                timer.cancel()
                expire()

    def _viaRedis(
        self,
        call: Callable[..., Any],
        fallback: Callable[..., Decision],
        args: Tuple[Any, ...],
        timeout: Optional[float] = None,
    ) -> "Union[Decision, Deferred[Decision]]":
        try:
            answer = call(*args)
        except Exception:
            self._redisFailed(Failure())
            return self._count(fallback(*args))
        return self._answered(answer, fallback, args, timeout)

    def _answered(
        self,
        answer: Any,
        fallback: Callable[..., Decision],
        args: Tuple[Any, ...],
        timeout: Optional[float] = None,
    ) -> "Union[Decision, Deferred[Decision]]":
        """
        What Redis answered, as a decision now when it is one already (or a
        Deferred that has fired), else as a Deferred bounded by the
        timeout.
        """
        if answer.__class__ is Decision:
            # Answered locally (a batched token, a remembered denial).
            return self._count(answer)
        d: "Deferred[Decision]" = answer
        result: "Deferred[Decision]" = Deferred()
        if d.called:
            # Answered or failed at once (not connected): no timer needed,
            # and the decision is handed over as such when it is there.
            d.addBoth(self._redisAnswered, result, None, fallback, args)
            if result.called:
                box: List[Decision] = []
                result.addCallback(box.append)
                return box[0]
            return result
        timer = self._clock.callLater(
            self.redisTimeout if timeout is None else timeout, self._timedOut, result, fallback, args
        )
        d.addBoth(self._redisAnswered, result, timer, fallback, args)
        return result

    def _redisAnswered(
        self,
        answer: Any,
        result: "Deferred[Decision]",
        timer: Optional[IDelayedCall],
        fallback: Callable[..., Decision],
        args: Tuple[Any, ...],
    ) -> None:
        if result.called:
            # Too late: the decision was already made from memory.
            if isinstance(answer, Failure):
                self.redisErrors += 1
            elif answer.lease is not None:
                answer.lease.release()
            return None
        if timer is not None:
            timer.cancel()
        if isinstance(answer, Failure):
            self._redisFailed(answer)
            result.callback(self._count(fallback(*args)))
        else:
            result.callback(self._count(answer))
        return None

    def _timedOut(
        self, result: "Deferred[Decision]", fallback: Callable[..., Decision], args: Tuple[Any, ...]
    ) -> None:
        self.redisTimeouts += 1
        self._redisFailed(Failure(RedisTimeout(f"no answer from Redis in {self.redisTimeout:g}s")))
        result.callback(self._count(fallback(*args)))

    def _redisFailed(self, why: Failure) -> None:
        self.redisErrors += 1
        if self.usingFallback:
            return
        self.usingFallback = True
        self.fallbacks += 1
        self.log.warn(
            "Redis limiter unavailable ({why}); falling back to per-process limits in memory",
            why=why.getErrorMessage(),
        )

    def _probe(self) -> "Optional[Deferred[None]]":
        if not self.usingFallback or self._probing or self._starting or self.redis is None:
            return None
        self._probing = True
        done: "Deferred[None]" = Deferred()

        def answered(answer: Any) -> None:
            if done.called:
                if isinstance(answer, Failure):
                    self.redisErrors += 1
                return None
            timer.cancel()
            self._probing = False
            if isinstance(answer, Failure):
                self.redisErrors += 1
            elif self.usingFallback:
                self.usingFallback = False
                self.recoveries += 1
                self.log.info("Redis limiter reachable again; using the shared limits")
            done.callback(None)
            return None

        def timedOut() -> None:
            self._probing = False
            self.redisErrors += 1
            self.redisTimeouts += 1
            done.callback(None)

        timer = self._clock.callLater(self.redisTimeout, timedOut)
        try:
            d = self.redis.ping()
        except Exception:
            d = Deferred()
            d.errback(Failure())
        d.addBoth(answered)
        return done


# ---------------------------------------------------------------------------
# The adapter protocols call


