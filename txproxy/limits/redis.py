# -*- test-case-name: tests.test_redislimiter,tests.test_limiter -*-
"""
The Redis backend of L{txproxy.interfaces.ILimiter}: limits shared by every
txproxy process that names the same Redis (C{--redis redis://host:port/db}).

Every decision Redis makes is one atomic Lua script run with C{EVALSHA}; a
C{NOSCRIPT} answer (Redis restarted, or C{SCRIPT FLUSH}) loads the script
again and retries once.  Time is Redis's C{TIME}, read inside the script, so
proxies' clocks never mix.  The scripts, the pool and URL parsing are in
L{txproxy.limits._redisio}.

Why this module is long: it is one class, L{RedisLimiter}, and the local
token cache and leases its take, acquire and refresh paths share; split
apart, each piece would reach into the others' state.

Data model (C{P} is the key prefix, C{txproxy:} by default):

  - C{P tb:<scope>|<client>}: a string, the bucket's GCRA "theoretical
    arrival time" (Redis time, in seconds) at which the bucket is full
    again.  The script sets it with C{PX} so the key expires exactly when
    the bucket has refilled: a missing key is a full bucket.
  - C{P cc:<scope>}: a sorted set of the scope's open lease ids, each scored
    by the Redis time it expires at.
  - C{P cc:<scope>|<client>}: the same for one client.

  (C{<scope>} is escaped so that it holds no C{|}.)  A lease is added to
  both sets by the acquire script, which first prunes expired members and
  checks the caps (per client, then total); the holder refreshes its leases'
  scores every C{leaseTTL / 3} seconds (a L{LoopingCall} on the injected
  clock, one script call per 256 leases) and removes them on release.  Both
  sets are given a C{PEXPIRE} no shorter than the latest member's expiry,
  so they vanish once empty.  A process that dies stops refreshing: its
  leases expire within C{leaseTTL} (30 s by default) and are pruned by the
  next acquire.  Nothing can leak for longer.

Local token batching.  Asking Redis for every request would cost a round
trip each; instead a process asks for up to C{k} tokens at once and spends
them locally.  C{k} adapts per key: it starts at 1, doubles (up to C{kMax})
whenever the tokens of the previous grant were spent while still valid, and
halves when they expired unspent, so a quiet key never hoards.  A denial is
also remembered locally until its C{retryAfter} (exact: other processes can
only make the wait longer).

  - C{kMax = max(1, min(batchSize, floor(burst * batchFraction)))} (32 and
    0.1 by default): no batching at all for a burst under 20.
  - Locally held tokens are valid for C{tau = burst * batchFraction / rate}
    seconds after the request that fetched them was sent, then dropped.
  - A take answered from a held token is answered at once: the shared
    L{ALLOWED}, no Deferred (L{RedisLimiter.takeNowOrLater}; C{take} wraps
    it in an already fired Deferred).
  - A busy key (batches of at least L{REFILL_MIN_BATCH} tokens) is
    refilled ahead of need: the process measures C{lead}, the tokens its
    takes ask for during one round trip to Redis, and fetches the next
    batch in the background as soon as the tokens it holds or has in
    flight fall to C{lead + k / 2} (several batches when a round trip needs
    more, up to L{REFILL_MAX_LEAD} C{kMax} of lead).  Grants are held
    apart, each with its own C{tau} (L{_Local.addGrant} never extends a
    token's validity), so the bound below is unchanged.
  - A take that finds no token while fetches are in flight that asked for
    enough waits for them, and waiting takes are served in order from the
    grants as they come; only demand beyond what is in flight sends a new
    fetch.

I{Over-admission bound}: across I{all} processes sharing a bucket, the
requests admitted in any window of C{w} seconds are at most
C{burst + rate * w + rate * tau}, i.e. at most C{burst * batchFraction}
(10% of the burst by default) more than one exact bucket would admit,
whatever the number of processes or of decisions in flight.  Proof sketch: tokens held
locally at time C{a} were granted during C{(a - tau, a]}; the bucket's level
at C{a} plus those grants is at most C{burst + rate * tau} (since the last
time in that interval the bucket was full, level plus grants only grew by
the refill); admissions in C{[a, a + w]} are at most that plus the refill
C{rate * w}.  (Network latency adds its own C{rate * rtt}, as for any remote
limiter.)  Batching also lets a process hold tokens another process then
cannot use: under-admission, bounded the same way and lasting at most
C{tau}; refilling ahead keeps at most C{lead + 3k / 2} tokens held or in
flight per busy key (beyond what its waiting takes ask for).

Tests only: C{overrideRedisTime} makes the scripts take "now" from an
argument instead of C{TIME} so that the shared behaviour suite can run on a
fake clock against a real Redis.  It selects a I{different} script text
(with a different SHA): the production scripts have no time argument at
all, so no caller can feed them a proxy's clock by mistake.  Because keys
still expire in Redis's real time, the test scripts stretch every TTL by
L{TEST_TTL_SLACK_MS} (harmless: an outlived key reads as a full bucket or an
expired lease).  Real-time behaviour, exact TTLs included, is tested
separately with small real waits.
"""

from __future__ import annotations

import itertools
import os
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txproxy.interfaces import ILimiter
from txproxy.limits._decision import (
    ALLOWED,
    EPSILON,
    REASON_MAX_CONNS,
    REASON_MAX_CONNS_PER_CLIENT,
    REASON_RATE,
    Decision,
    ILease,
    checkBucket,
    escapeScope,
)
from txproxy.limits._redisio import (
    _PRODUCTION_SCRIPTS,
    RedisUnavailable,
    _parseURL,
    _PoolClient,
    _Script,
    _scripts,
    _text,
)

__all__ = ["RedisLimiter", "RedisUnavailable"]

_DENIED_MAX_CONNS = Decision(False, REASON_MAX_CONNS)
_DENIED_MAX_CONNS_PER_CLIENT = Decision(False, REASON_MAX_CONNS_PER_CLIENT)
_REFRESH_CHUNK = 256


@implementer(ILease)
class _RedisLease:
    """
    One connection's lease: an id in its scope's and its client's sets.
    """

    __slots__ = ("_limiter", "id", "keys", "_released")

    def __init__(self, limiter: RedisLimiter, leaseId: str, keys: Tuple[str, str]) -> None:
        self._limiter = limiter
        self.id = leaseId
        self.keys = keys
        self._released = False

    def release(self) -> "Deferred[None]":
        if self._released:
            return succeed(None)
        self._released = True
        return self._limiter._release(self)


class _Local:
    """
    What a process knows about one bucket.

    Tokens granted to it and not yet spent, in at most two grants, each
    valid until its own deadline (local clock): C{tokens} until
    C{validUntil} (the grant spent first, the one that lapses first) and
    C{spare} until C{spareUntil} (usually grants fetched ahead of need).
    C{grantUntil} is the deadline of the latest grant, spent or not: a
    take that finds no token before it is due to a busy key.

    Also: the size of the last batch asked for; when to refill ahead
    (C{refillAt}: fetch the next batch once C{tokens} falls to it, C{-1}
    when no refill is due); the fetches in flight and the tokens they asked
    for; the takes waiting for them; the tokens ever received
    (C{received}) and C{lead}, the tokens asked for locally during a
    fetch's round trip (so much must be held or in flight when a refill
    goes out for no take to wait); and a remembered denial.
    """

    __slots__ = (
        "tokens", "validUntil", "spare", "spareUntil", "grantUntil", "batch", "refillAt",
        "inflight", "inflightWant", "waiters", "waitingCost", "received", "lead", "refillOff",
        "deniedUntil", "deniedCost",
    )

    def __init__(self) -> None:
        self.tokens = 0.0
        self.validUntil = 0.0
        self.spare = 0.0
        self.spareUntil = 0.0
        self.grantUntil = 0.0
        self.batch = 1
        self.refillAt = -1.0
        self.inflight = 0
        self.inflightWant = 0.0
        self.waiters: Optional[List[Tuple[float, "Deferred[Decision]", float]]] = None
        self.waitingCost = 0.0
        self.received = 0.0
        self.lead = 0.0
        self.refillOff = False
        self.deniedUntil = 0.0
        self.deniedCost = 0.0

    def held(self, now: float) -> float:
        """
        The valid tokens held.
        """
        held = self.tokens if self.validUntil > now else 0.0
        if self.spareUntil > now:
            held += self.spare
        return held

    def asked(self, now: float) -> float:
        """
        The tokens asked for locally so far: received and no longer held
        (spent, or lapsed), plus what the waiting takes want.
        """
        return self.received - self.held(now) + self.waitingCost

    def promote(self) -> None:
        """
        The spare grant becomes the current one (what is left of the
        current one, less than a take needs or lapsed, is dropped).
        """
        self.tokens, self.validUntil = self.spare, self.spareUntil
        self.spare = 0.0
        self.spareUntil = 0.0

    def addGrant(self, tokens: float, validUntil: float, now: float) -> None:
        """
        Hold C{tokens} more, valid until C{validUntil}.  No token's validity
        is ever extended: a third grant is merged into the spare one with
        the earlier of the two deadlines.
        """
        if self.validUntil <= now or self.tokens <= EPSILON:
            self.promote()
            if self.validUntil <= now or self.tokens <= EPSILON:
                self.tokens, self.validUntil = tokens, validUntil
                self.spare = self.spareUntil = 0.0
                return
        if self.spareUntil <= now or self.spare <= EPSILON:
            if validUntil >= self.validUntil:
                self.spare, self.spareUntil = tokens, validUntil
            else:
                self.spare, self.spareUntil = self.tokens, self.validUntil
                self.tokens, self.validUntil = tokens, validUntil
            return
        self.spare += tokens
        if validUntil < self.spareUntil:
            self.spareUntil = validUntil
        if self.spareUntil < self.validUntil:
            self.tokens, self.spare = self.spare, self.tokens
            self.validUntil, self.spareUntil = self.spareUntil, self.validUntil


#: The smallest batch that is refilled ahead of need.  Smaller ones belong
#: to keys too quiet to be worth a speculative round trip.
REFILL_MIN_BATCH = 4

#: The most a key refills ahead, in batches of C{kMax}, however many of its
#: takes come during one round trip.
REFILL_MAX_LEAD = 4


# ---------------------------------------------------------------------------
# The backend


@implementer(ILimiter)
class RedisLimiter:
    """
    Token buckets and connection caps in Redis, shared by processes.

    See the module docstring for the data model, batching and its bound.

    @ivar redisCalls: script calls sent to Redis (decisions, refreshes and
        releases).
    @ivar localHits: takes answered from locally held tokens or a
        remembered denial, without a round trip.
    @ivar refills: batches fetched ahead of need (half of the previous
        batch spent).
    @ivar fetchErrors: token fetches that failed (the takes waiting for one
        fail with it; after a failed refill, the next take that finds no
        token asks Redis itself).
    @ivar joinedFetches: takes that found no token and waited for a fetch
        already in flight instead of sending their own.
    @ivar scriptLoads: C{NOSCRIPT} answers that made us load a script.
    @ivar refreshErrors: lease refreshes that failed (the leases' scores
        then lapse until the next refresh succeeds).
    @ivar releaseErrors: releases that could not reach Redis (those leases
        expire by themselves within C{leaseTTL}).
    """

    log = Logger()
    _sweepPerTake = 2

    def __init__(
        self,
        client: Any,
        clock: Optional[IReactorTime] = None,
        prefix: str = "txproxy:",
        leaseTTL: float = 30.0,
        batchSize: int = 32,
        batchFraction: float = 0.1,
        overrideRedisTime: Optional[Callable[[], float]] = None,
    ) -> None:
        """
        @param client: the connection: an object with C{execute(*args)}
            returning a Deferred of the reply, and optionally C{start()}
            and C{stop()}.  L{RedisLimiter.fromURL} builds one.
        @param clock: for local token validity, denials and lease refresh;
            the global reactor when L{None}.
        @param prefix: prepended to every key.
        @param leaseTTL: seconds a lease lives in Redis without a refresh.
        @param batchSize: the most tokens fetched at once (C{1} disables
            batching).
        @param batchFraction: the over-admission bound, as a fraction of the
            burst; also caps the tokens fetched at once (C{kMax}).
        @param overrideRedisTime: B{tests only}: when given, the scripts take
            "now" from this callable instead of Redis C{TIME} (different
            script texts).  Never set it in production: processes would mix
            clocks.
        """
        if clock is None:
            from twisted.internet import reactor as clock
        self._clock: IReactorTime = clock  # type: ignore[assignment]
        self._client = client
        self.prefix = prefix
        self.leaseTTL = leaseTTL
        self.batchSize = max(1, int(batchSize))
        self.batchFraction = batchFraction
        self._now = overrideRedisTime
        self._scripts = _scripts(True) if overrideRedisTime is not None else _PRODUCTION_SCRIPTS
        self._local: "OrderedDict[str, _Local]" = OrderedDict()
        self._leases: Dict[str, _RedisLease] = {}
        self._processId = os.urandom(6).hex()
        self._ids = itertools.count(1)
        self._refresher: Optional[LoopingCall] = None
        self._seconds = self._clock.seconds
        self.redisCalls = 0
        self.localHits = 0
        self.refills = 0
        self.fetchErrors = 0
        self.joinedFetches = 0
        self.scriptLoads = 0
        self.refreshErrors = 0
        self.releaseErrors = 0

    @classmethod
    def fromURL(
        cls,
        url: str,
        reactor: Optional[Any] = None,
        poolSize: int = 1,
        connectTimeout: float = 1.0,
        replyTimeout: float = 2.0,
        initialDelay: float = 0.1,
        maxDelay: float = 2.0,
        **kwargs: Any,
    ) -> "RedisLimiter":
        """
        A limiter on the Redis at C{url} (C{redis://[user:password@]host[:port][/db]}).
        Nothing connects before L{start}.

        @param reactor: for TCP and time; the global reactor when L{None}.
        @param poolSize: connections to keep open.  One is plenty: commands
            are pipelined and Redis runs them one at a time anyway.
        @param connectTimeout: seconds a connection attempt may take.
        @param replyTimeout: seconds after which a connection whose reply
            is overdue is dropped and reconnected (a hung Redis).
        @param initialDelay: seconds before the first reconnection attempt.
        @param maxDelay: the longest wait between reconnection attempts.
        @param kwargs: passed to the constructor (C{clock} defaults to
            C{reactor}).
        """
        host, port, dbid, password, username = _parseURL(url)
        client = _PoolClient(
            host, port, dbid, password, username, reactor, poolSize,
            connectTimeout, replyTimeout, initialDelay, maxDelay,
        )
        kwargs.setdefault("clock", reactor)
        return cls(client, **kwargs)

    # -- life cycle

    def start(self) -> None:
        """
        Connect, and refresh held leases every C{leaseTTL / 3} seconds.
        """
        start = getattr(self._client, "start", None)
        if start is not None:
            start()
        if self._refresher is None:
            self._refresher = LoopingCall(self.refreshLeases)
            self._refresher.clock = self._clock
            self._refresher.start(self.leaseTTL / 3.0, now=False)

    def stop(self) -> "Deferred[None]":
        """
        Stop refreshing and disconnect.  Leases still held are not released:
        they expire in Redis within C{leaseTTL}.  (This is also what a crash
        looks like to the other processes.)
        """
        if self._refresher is not None:
            if self._refresher.running:
                self._refresher.stop()
            self._refresher = None
        stop = getattr(self._client, "stop", None)
        if stop is None:
            return succeed(None)
        result: "Deferred[None]" = stop()
        return result

    def whenConnected(self) -> "Deferred[None]":
        """
        A Deferred firing once Redis is first reachable after L{start} (at
        once if it is now).  L{LimiterService} uses it to tell start-up from
        an outage.
        """
        whenConnected = getattr(self._client, "whenConnected", None)
        if whenConnected is None:
            return succeed(None)
        result: "Deferred[None]" = whenConnected()
        return result

    def ping(self) -> "Deferred[Any]":
        """
        Send C{PING}; the Deferred fails when Redis is not reachable.
        """
        return self._client.execute("PING")  # type: ignore[no-any-return]

    def loadScripts(self) -> "Deferred[None]":
        """
        Load every script into Redis now (C{SCRIPT LOAD}).  Optional: a
        script missing when it is needed is loaded then (one extra round
        trip, counted in L{scriptLoads}).
        """
        calls = [self._client.execute("SCRIPT", "LOAD", script.source) for script in self._scripts.values()]
        return gatherResults(calls, consumeErrors=True).addCallback(lambda _: None)

    # -- script calls

    def _eval(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> "Deferred[Any]":
        script = self._scripts[name]
        if self._now is not None:
            args = list(args) + [repr(float(self._now()))]
        self.redisCalls += 1
        d: Deferred[Any] = self._client.execute("EVALSHA", script.sha, len(keys), *keys, *args)
        d.addErrback(self._noScript, script, keys, args)
        return d

    def _noScript(self, failure: Failure, script: _Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        if not str(failure.value).startswith("NOSCRIPT"):
            return failure
        self.scriptLoads += 1
        d = self._client.execute("SCRIPT", "LOAD", script.source)
        d.addCallback(lambda _: self._client.execute("EVALSHA", script.sha, len(keys), *keys, *args))
        return d

    # -- ILimiter: token buckets

    def maxBatch(self, burst: float) -> int:
        """
        C{kMax} for a bucket of C{burst} tokens: the most tokens fetched at
        once.
        """
        return max(1, min(self.batchSize, int(burst * self.batchFraction)))

    def holdFor(self, rate: float, burst: float) -> float:
        """
        C{tau}: how long tokens fetched for a bucket stay valid locally.
        C{rate * tau} bounds the over-admission of all processes together.
        """
        return burst * self.batchFraction / rate

    def take(self, key: str, rate: float, burst: float, cost: float = 1.0) -> "Deferred[Decision]":
        """
        See L{ILimiter.take}.  Answered locally (an already fired Deferred)
        from tokens this process holds or a denial it remembers; otherwise
        by the script (see L{takeNowOrLater}).
        """
        result = self.takeNowOrLater(key, rate, burst, cost)
        if result.__class__ is Decision:
            return succeed(result)
        return result  # type: ignore[return-value]

    def takeNowOrLater(
        self, key: str, rate: float, burst: float, cost: float = 1.0
    ) -> "Union[Decision, Deferred[Decision]]":
        """
        L{take}, answered synchronously when this process can: the shared
        L{ALLOWED} when it holds a valid token (the common case for a busy
        key: no round trip, no Deferred, nothing allocated), a denial when
        it remembers one.  Otherwise a L{Deferred}: the take waits for a
        fetch from Redis, one already in flight when that asked for enough
        tokens, else a new one.

        A busy key (batches of L{REFILL_MIN_BATCH} tokens or more) is
        refilled ahead of need: once the tokens it holds or has in flight
        fall to what a round trip needs (C{lead}, measured) plus half a
        batch, the next batch is fetched in the background (several when a
        round trip needs more), so that takes seldom wait for Redis.
        """
        if not (rate > 0 and 0 < cost <= burst):
            checkBucket(rate, burst, cost)
        now = self._seconds()
        local = self._local
        state = local.get(key)
        if state is None:
            state = local[key] = _Local()
        else:
            local.move_to_end(key)
            if now < state.validUntil and state.tokens + EPSILON >= cost:
                state.tokens -= cost
                self.localHits += 1
                if state.tokens <= state.refillAt:
                    self._topUp(key, state, rate, burst, cost, now)
                return ALLOWED
            if now < state.spareUntil and state.spare + EPSILON >= cost:
                state.promote()
                state.tokens -= cost
                self.localHits += 1
                self._setRefill(state, now, self.maxBatch(burst))
                if state.tokens <= state.refillAt:
                    self._topUp(key, state, rate, burst, cost, now)
                return ALLOWED
            # A remembered denial, with the scripts' tolerance (EPSILON
            # tokens): float noise in the stored time never denies a take
            # the bucket would admit.
            if now + EPSILON / rate < state.deniedUntil and cost >= state.deniedCost:
                self.localHits += 1
                return Decision(False, REASON_RATE, state.deniedUntil - now)
        waiter: "Deferred[Decision]" = Deferred()
        if state.waiters is None:
            state.waiters = [(cost, waiter, now)]
        else:
            state.waiters.append((cost, waiter, now))
        state.waitingCost += cost
        kMax = self.maxBatch(burst)
        if state.inflight and state.waitingCost <= state.inflightWant:
            # Fetches in flight asked for enough: wait for them (and top up
            # what a busy key holds or has in flight, if that runs short).
            self.joinedFetches += 1
            self._setRefill(state, now, kMax)
            if state.tokens <= state.refillAt:
                self._topUp(key, state, rate, burst, cost, now)
            return waiter
        if now < state.grantUntil or state.inflight:
            # The last grant was spent before it lapsed: a busy key.
            state.batch = min(kMax, state.batch * 2)
        else:
            state.batch = max(1, min(kMax, state.batch // 2))
        for _ in range(self._sweepPerTake):
            front = next(iter(local))
            entry = local[front]
            if (
                front == key
                or entry.inflight
                or entry.validUntil > now
                or entry.spareUntil > now
                or entry.deniedUntil > now
            ):
                break
            del local[front]
        self._fetch(key, state, rate, burst, cost, max(cost, float(state.batch)), now)
        return waiter

    def _setRefill(self, state: _Local, now: float, kMax: float) -> None:
        # Refill ahead once fewer tokens are held or in flight than a round
        # trip needs (lead) plus half a batch; only for batches big enough,
        # while no denial is remembered (the bucket is empty: what is held
        # is spent first, then a take asks again) and not after a failed
        # fetch (until one succeeds).  The hot path only compares the
        # current grant's tokens with refillAt, so the spare grant and what
        # is in flight are taken off here; this runs whenever they change.
        if state.batch >= REFILL_MIN_BATCH and state.deniedUntil <= now and not state.refillOff:
            spare = state.spare if state.spareUntil > now else 0.0
            level = min(state.lead, REFILL_MAX_LEAD * kMax) + state.batch / 2.0
            state.refillAt = level - spare - state.inflightWant + state.waitingCost
        else:
            state.refillAt = -1.0

    def _topUp(self, key: str, state: _Local, rate: float, burst: float, cost: float, now: float) -> None:
        # Spent down to the refill level while valid: a busy key.  Fetch the
        # next, bigger, batch now, so that it is there before this one runs
        # out; more than one when a round trip needs more (each fetch
        # recomputes refillAt).
        kMax = self.maxBatch(burst)
        for _ in range(REFILL_MAX_LEAD + 2):
            state.batch = min(kMax, state.batch * 2)
            self.refills += 1
            self._fetch(key, state, rate, burst, cost, max(cost, float(state.batch)), now)
            if state.tokens > state.refillAt:
                break

    def _fetch(
        self, key: str, state: _Local, rate: float, burst: float, cost: float, want: float, now: float
    ) -> None:
        """
        Ask Redis for C{want} tokens (at least C{cost}) of bucket C{key};
        the answer serves the waiting takes first, and the rest is held.
        """
        mark = state.asked(now)
        state.inflight += 1
        state.inflightWant += want
        self._setRefill(state, now, self.maxBatch(burst))
        try:
            d = self._eval(
                "take",
                [self.prefix + "tb:" + key],
                [repr(float(rate)), repr(float(burst)), repr(float(cost)), repr(want)],
            )
        except Exception:
            d = fail()
        d.addCallbacks(
            self._fetched,
            self._fetchFailed,
            callbackArgs=(key, state, rate, burst, cost, want, now, mark),
            errbackArgs=(state, want),
        )

    def _fetched(
        self, reply: Any, key: str, state: _Local, rate: float, burst: float, cost: float, want: float,
        sentAt: float, mark: float,
    ) -> None:
        state.inflight -= 1
        state.inflightWant -= want
        grantedText, retryText = _text(reply).split(" ", 1)
        granted = float(grantedText)
        now = self._seconds()
        # The tokens asked for during this round trip: the lead a refill
        # needs.  A bigger need counts at once; a smaller one lowers it
        # slowly (by an eighth per answer: with several fetches in flight
        # the later ones see only part of a round trip).
        lead = state.asked(now) - mark
        decayed = state.lead * 0.875
        state.lead = lead if lead > decayed else decayed
        state.received += granted
        waiters = state.waiters
        answer: Decision = ALLOWED
        answered: List["Deferred[Decision]"] = []
        if granted <= 0:
            retryAfter = float(retryText)
            state.deniedUntil = sentAt + retryAfter
            state.deniedCost = cost
            if waiters:
                # The answer to every waiting take of this cost or more that
                # came before the denial's end (as a remembered denial
                # would be); one that came later, while the fetch was on
                # its way, asks again.
                answer = Decision(False, REASON_RATE, retryAfter)
                until = state.deniedUntil - EPSILON / rate
                waiting = []
                for w in waiters:
                    if w[0] >= cost and w[2] < until:
                        answered.append(w[1])
                        state.waitingCost -= w[0]
                    else:
                        waiting.append(w)
                state.waiters = waiting or None
        else:
            leftover = granted
            if waiters:
                # Waiting takes are served first, in order, from this grant
                # (each asked before it came).
                served = 0
                for c, _, _ in waiters:
                    if leftover + EPSILON < c:
                        break
                    leftover -= c
                    state.waitingCost -= c
                    served += 1
                answered = [w[1] for w in waiters[:served]]
                state.waiters = waiters[served:] or None
            validUntil = sentAt + self.holdFor(rate, burst)
            if validUntil > state.grantUntil:
                state.grantUntil = validUntil
            if leftover > EPSILON:
                state.addGrant(leftover, validUntil, now)
            state.deniedUntil = 0.0
            state.refillOff = False
        if not state.waiters:
            state.waitingCost = 0.0  # (no float drift)
        if state.validUntil <= now:
            # The current grant has lapsed: the refill level compares the
            # tokens of the one spent next.
            state.promote()
            if state.validUntil <= now:
                state.tokens = 0.0
        self._setRefill(state, now, self.maxBatch(burst))
        if state.waiters:
            # Takes still waiting (a partial grant, or takes cheaper than
            # the denied cost): ask for more unless enough is in flight.
            if not state.inflight or state.waitingCost > state.inflightWant:
                first = state.waiters[0][0]
                self._fetch(key, state, rate, burst, first, max(first, float(state.batch)), now)
        if state.tokens <= state.refillAt:
            # A busy key that holds, or has in flight, too little for a
            # round trip (takes are waiting, or the lead grew).
            self._topUp(key, state, rate, burst, cost, now)
        # Last: a waiting take's continuation may take again, re-entrantly.
        for d in answered:
            d.callback(answer)
        return None

    def _fetchFailed(self, failure: Failure, state: _Local, want: float) -> None:
        state.inflight -= 1
        state.inflightWant -= want
        state.refillOff = True  # no refill ahead again before a fetch succeeds
        state.refillAt = -1.0
        self.fetchErrors += 1
        waiters, state.waiters = state.waiters, None
        state.waitingCost = 0.0
        for _, d, _ in waiters or ():
            d.errback(failure)
        return None

    @property
    def localStateCount(self) -> int:
        """
        How many buckets this process holds local state for.
        """
        return len(self._local)

    # -- ILimiter: connection caps

    def _leaseKeys(self, scope: str, client: str) -> Tuple[str, str]:
        total = self.prefix + "cc:" + escapeScope(scope)
        return total, total + "|" + client

    def acquire(
        self, scope: str, client: str, maxTotal: Optional[int], maxPerClient: Optional[int]
    ) -> "Deferred[Decision]":
        """
        See L{ILimiter.acquire}.  The per-client cap is checked before the
        total cap.
        """
        leaseId = f"{self._processId}:{next(self._ids)}"
        keys = self._leaseKeys(scope, client)
        d = self._eval(
            "acquire",
            keys,
            [leaseId, repr(float(self.leaseTTL)), str(maxTotal or 0), str(maxPerClient or 0)],
        )
        d.addCallback(self._acquired, leaseId, keys)
        return d

    def acquireNowOrLater(
        self, scope: str, client: str, maxTotal: Optional[int], maxPerClient: Optional[int]
    ) -> "Union[Decision, Deferred[Decision]]":
        """
        See L{ILimiter.acquireNowOrLater}.  A lease is always counted in
        Redis, so this is never known at once: L{acquire}'s Deferred.
        """
        return self.acquire(scope, client, maxTotal, maxPerClient)

    def _acquired(self, reply: Any, leaseId: str, keys: Tuple[str, str]) -> Decision:
        status = _text(reply)
        if status == REASON_MAX_CONNS_PER_CLIENT:
            return _DENIED_MAX_CONNS_PER_CLIENT
        if status == REASON_MAX_CONNS:
            return _DENIED_MAX_CONNS
        lease = _RedisLease(self, leaseId, keys)
        self._leases[leaseId] = lease
        return Decision(True, None, 0.0, lease)

    def _release(self, lease: _RedisLease) -> "Deferred[None]":
        self._leases.pop(lease.id, None)
        d = self._eval("release", lease.keys, [lease.id])

        def done(result: Any) -> None:
            if isinstance(result, Failure):
                self.releaseErrors += 1
            return None

        d.addBoth(done)
        return d

    @property
    def leaseCount(self) -> int:
        """
        How many leases this process holds.
        """
        return len(self._leases)

    def refreshLeases(self) -> "Deferred[None]":
        """
        Push back the expiry of every lease this process holds to
        C{leaseTTL} from now.  Called every C{leaseTTL / 3} seconds once
        L{start}ed; the Deferred never fails.
        """
        leases = list(self._leases.values())
        if not leases:
            return succeed(None)
        calls: List["Deferred[Any]"] = []
        for i in range(0, len(leases), _REFRESH_CHUNK):
            chunk = leases[i : i + _REFRESH_CHUNK]
            keys: List[str] = []
            for lease in chunk:
                keys.extend(lease.keys)
            d = self._eval("refresh", keys, [repr(float(self.leaseTTL))] + [lease.id for lease in chunk])
            d.addErrback(self._refreshFailed)
            calls.append(d)
        return gatherResults(calls).addCallback(lambda _: None)

    def _refreshFailed(self, failure: Failure) -> None:
        self.refreshErrors += 1
        return None
