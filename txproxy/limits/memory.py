# -*- test-case-name: tests.test_limiter -*-
"""
L{MemoryLimiter}: an L{ILimiter} over process memory.  Token buckets are kept
in GCRA form (one float per key, the "theoretical arrival time"): refill is
computed lazily from the clock, a bucket that has refilled is
indistinguishable from a missing one and is dropped by an amortised sweep.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Dict, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from txproxy.interfaces import ILimiter
from txproxy.limits._decision import (
    _DENIED_MAX_CONNS,
    _DENIED_MAX_CONNS_PER_CLIENT,
    ALLOWED,
    EPSILON,
    REASON_RATE,
    Decision,
    ILease,
    checkBucket,
)

__all__ = ["MemoryLimiter"]


@implementer(ILease)
class _MemoryLease:
    """
    A slot in a L{MemoryLimiter}'s connection counts.
    """

    __slots__ = ("_limiter", "_scope", "_client", "_released")

    def __init__(self, limiter: MemoryLimiter, scope: str, client: str) -> None:
        self._limiter = limiter
        self._scope = scope
        self._client = client
        self._released = False

    def release(self) -> "Deferred[None]":
        if not self._released:
            self._released = True
            self._limiter._release(self._scope, self._client)
        return succeed(None)


class _ScopeCount:
    """
    Open leases in one scope: the total and per client (clients with none
    are absent).
    """

    __slots__ = ("total", "clients")

    def __init__(self) -> None:
        self.total = 0
        self.clients: Dict[str, int] = {}


@implementer(ILimiter)
class MemoryLimiter:
    """
    Token buckets and connection caps in process memory.

    Buckets are stored in GCRA form: for each key, the time C{tat} at which
    the bucket will be full again (a bucket with C{tat <= now} is full).  So a
    bucket is one float, refill needs no timer, and a full bucket carries no
    information: it is dropped.  Keys live in an L{OrderedDict} in
    least-recently-used order; every L{take} moves its key to the end and
    removes at most two full buckets from the front.  Hence the memory
    bound, with C{W} the longest time any bucket takes to refill
    (C{burst / rate} over the configured limits): the limiter never holds
    more than I{(keys taken from during the last C{W} seconds) + 1} buckets,
    however many distinct clients came before (see
    C{MemoryLimiterTests.test_millionClientsBoundedMemory}).  Each decision
    costs O(1); nothing is ever scanned.

    Connection counts hold one small entry per scope and per client with an
    open lease, so they are bounded by the open connections.

    @ivar clock: where time comes from.
    """

    def __init__(self, clock: Optional[IReactorTime] = None) -> None:
        """
        @param clock: the time source; the global reactor when L{None}.
        """
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock  # type: ignore[assignment]
        self._buckets: "OrderedDict[str, float]" = OrderedDict()
        self._scopes: Dict[str, _ScopeCount] = {}

    @property
    def clock(self) -> IReactorTime:
        """
        Where time comes from (its C{seconds()} is read once per decision).
        """
        return self._clock

    @clock.setter
    def clock(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._seconds = clock.seconds

    @property
    def bucketCount(self) -> int:
        """
        How many buckets are held (full buckets are not held, once swept).
        """
        return len(self._buckets)

    @property
    def leaseCount(self) -> int:
        """
        How many leases are open, in all scopes.
        """
        return sum(s.total for s in self._scopes.values())

    def take(self, key: str, rate: float, burst: float, cost: float = 1.0) -> "Deferred[Decision]":
        """
        See L{ILimiter.take}.  The Deferred has already fired.
        """
        return succeed(self.takeNow(key, rate, burst, cost))

    def takeNow(self, key: str, rate: float, burst: float, cost: float = 1.0) -> Decision:
        """
        L{take}, answered synchronously.  An admission is the shared
        L{ALLOWED} (nothing is allocated for it).

        @raise ValueError: on parameters no bucket could honour (see
            L{checkBucket}).
        """
        if not (rate > 0 and 0 < cost <= burst):
            checkBucket(rate, burst, cost)
        now = self._seconds()
        buckets = self._buckets
        tat = buckets.get(key)
        if tat is None:
            # A full bucket: cost <= burst, so the take succeeds.
            buckets[key] = now + cost / rate
            decision = ALLOWED
        elif tat <= now:
            buckets[key] = now + cost / rate
            buckets.move_to_end(key)
            decision = ALLOWED
        else:
            available = burst - (tat - now) * rate
            if available + EPSILON < cost:
                decision = Decision(False, REASON_RATE, (cost - available) / rate)
            else:
                buckets[key] = tat + cost / rate
                buckets.move_to_end(key)
                decision = ALLOWED
        # Amortised expiry: the least recently used buckets sit in front;
        # drop up to two full ones (unrolled: this runs for every request).
        # The bucket just taken from is never full, so there is at least
        # one bucket.
        front = next(iter(buckets))
        if buckets[front] <= now:
            del buckets[front]
            if buckets:
                front = next(iter(buckets))
                if buckets[front] <= now:
                    del buckets[front]
        return decision

    #: L{takeNow}: the memory backend always answers at once
    #: (L{ILimiter.takeNowOrLater}).
    takeNowOrLater = takeNow

    def acquire(
        self, scope: str, client: str, maxTotal: Optional[int], maxPerClient: Optional[int]
    ) -> "Deferred[Decision]":
        """
        See L{ILimiter.acquire}.  The Deferred has already fired.
        """
        return succeed(self.acquireNow(scope, client, maxTotal, maxPerClient))

    def acquireNow(
        self, scope: str, client: str, maxTotal: Optional[int], maxPerClient: Optional[int]
    ) -> Decision:
        """
        L{acquire}, answered synchronously.  The per-client cap is checked
        before the total cap, as in the Redis backend.
        """
        counts = self._scopes.get(scope)
        if counts is None:
            total = perClient = 0
        else:
            total = counts.total
            perClient = counts.clients.get(client, 0)
        if maxPerClient is not None and perClient >= maxPerClient:
            return _DENIED_MAX_CONNS_PER_CLIENT
        if maxTotal is not None and total >= maxTotal:
            return _DENIED_MAX_CONNS
        if counts is None:
            counts = self._scopes[scope] = _ScopeCount()
        counts.total += 1
        counts.clients[client] = perClient + 1
        return Decision(True, None, 0.0, _MemoryLease(self, scope, client))

    #: L{acquireNow}: answered at once (L{ILimiter.acquireNowOrLater}).
    acquireNowOrLater = acquireNow

    def _release(self, scope: str, client: str) -> None:
        counts = self._scopes.get(scope)
        if counts is None:  # pragma: no cover (a lease is released once)
            return
        counts.total -= 1
        left = counts.clients.get(client, 1) - 1
        if left > 0:
            counts.clients[client] = left
        else:
            counts.clients.pop(client, None)
        if counts.total <= 0:
            del self._scopes[scope]
