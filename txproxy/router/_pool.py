# -*- test-case-name: tests.test_router -*-
"""
Backends, their state, and pools that choose among them.

Public names are re-exported by L{txproxy.router}; import them from there.

A protocol uses a pool like this (or lets L{Pool.connect} do it)::

    backend = pool.pick(clientIP)          # None: answer 503 / close
    backend.connectionStarted()            # counted while connecting too
    d = endpoint.connect(factory)
    # on success:  pool.reportConnectSuccess(backend)
    # on failure:  backend.connectionFinished()
    #              pool.reportConnectFailure(backend)
    #              retry once: pool.pick(clientIP, exclude=(backend,))
    # when the upstream connection closes: backend.connectionFinished()
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from functools import reduce
from math import gcd
from typing import Any, Callable, Container, Dict, List, Optional, Sequence, Tuple, TypeVar, cast

from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from txproxy.config import BALANCE_POLICIES, RouteConfig, UpstreamURL
from txproxy.errors import ConfigError, NoHealthyBackend

__all__ = ["Backend", "HealthState", "NoHealthyBackend", "Pool", "VIRTUAL_NODES"]

T = TypeVar("T")

#: Ring points per unit of weight for consistent hashing.  160 (as in
#: ketama) keeps each backend's share within a few percent of its weight.
VIRTUAL_NODES = 160

_log = Logger(namespace="txproxy.router")


class HealthState:
    """
    The active health-check verdict on one backend address under one check.
    Shared by every L{Backend} that names the same address with the same
    L{HealthCheck}, so a check runs once however many routes use it.

    A backend starts I{unchecked} and counted as healthy.  The first check
    result settles it at once (one failure marks it down, one success keeps it
    up); after that it takes C{rise} consecutive successes to come up and
    C{fall} consecutive failures to go down.

    @ivar healthy: whether the backend may be picked.
    @ivar checked: whether any check has finished yet.
    @ivar consecutiveSuccesses: active-check successes in a row.
    @ivar consecutiveFailures: active-check failures in a row.
    @ivar lastCheckAt: clock time of the last result, or L{None}.
    @ivar lastError: why the last failed check failed, or L{None}.
    """

    __slots__ = (
        "healthy",
        "checked",
        "consecutiveSuccesses",
        "consecutiveFailures",
        "lastCheckAt",
        "lastError",
    )

    def __init__(self) -> None:
        self.healthy = True
        self.checked = False
        self.consecutiveSuccesses = 0
        self.consecutiveFailures = 0
        self.lastCheckAt: Optional[float] = None
        self.lastError: Optional[str] = None

    def record(
        self, ok: bool, now: float, rise: int, fall: int, error: Optional[str] = None
    ) -> bool:
        """
        Record one check result.

        @return: C{True} when C{healthy} changed.
        """
        first = not self.checked
        self.checked = True
        self.lastCheckAt = now
        before = self.healthy
        if ok:
            self.lastError = None
            self.consecutiveFailures = 0
            self.consecutiveSuccesses += 1
            if not self.healthy and self.consecutiveSuccesses >= rise:
                self.healthy = True
        else:
            self.lastError = error
            self.consecutiveSuccesses = 0
            self.consecutiveFailures += 1
            if self.healthy and (first or self.consecutiveFailures >= fall):
                self.healthy = False
        return before != self.healthy


class Backend:
    """
    One backend of one pool, with its state.  The same object is kept by the
    new pool when a reload keeps the backend (same C{key} in the same route),
    so counters held by in-flight connections stay right.

    @ivar key: identifies the backend across reloads: the URL
        (C{http://10.0.0.5:8080}) or, in tcp mode, the endpoint description
        as written.
    @ivar url: the L{UpstreamURL}, or L{None} in tcp mode.
    @ivar description: the client endpoint description in tcp mode, else
        L{None}.
    @ivar weight: a positive integer; relative share of new connections.
    @ivar health: the shared L{HealthState} (always healthy when the route
        has no active check).
    @ivar activeConnections: connections started and not yet finished
        (connect attempts included).
    @ivar totalConnections: connections ever started.
    @ivar consecutiveFailures: connect failures in a row (passive health).
    @ivar totalFailures: connect failures ever reported.
    @ivar ejectedUntil: clock time until which passive ejection keeps the
        backend out, or L{None}.
    @ivar ejections: how many times it was ejected.
    @ivar proxyProtocol: the PROXY header this backend gets (tcp and sni
        modes), overriding its route's and listener's: C{"v1"}, C{"v2"},
        C{""} for none, or L{None} to use theirs.  Set from the
        upstream's own C{proxy_protocol_send} at every (re)load.
    """

    __slots__ = (
        "key",
        "url",
        "description",
        "weight",
        "health",
        "activeConnections",
        "totalConnections",
        "consecutiveFailures",
        "totalFailures",
        "ejectedUntil",
        "ejections",
        "proxyProtocol",
    )

    def __init__(
        self,
        key: str,
        url: Optional[UpstreamURL] = None,
        description: Optional[str] = None,
        weight: int = 1,
        health: Optional[HealthState] = None,
        proxyProtocol: Optional[str] = None,
    ) -> None:
        if weight < 1:
            raise ConfigError(f"backend {key}: weight must be at least 1, got {weight!r}")
        self.key = key
        self.url = url
        self.description = description
        self.weight = weight
        self.health = health if health is not None else HealthState()
        self.activeConnections = 0
        self.totalConnections = 0
        self.consecutiveFailures = 0
        self.totalFailures = 0
        self.ejectedUntil: Optional[float] = None
        self.ejections = 0
        self.proxyProtocol = proxyProtocol

    @classmethod
    def fromURL(cls, url: UpstreamURL, weight: int = 1) -> Backend:
        """
        A backend named by a route URL; its key is C{str(url)}.
        """
        return cls(str(url), url=url, weight=weight)

    @classmethod
    def fromDescription(cls, description: str, weight: int = 1) -> Backend:
        """
        A tcp-mode backend named by a client endpoint description; its key is
        the description, stripped.
        """
        description = description.strip()
        return cls(description, description=description, weight=weight)

    @property
    def healthy(self) -> bool:
        """
        The active health-check verdict (C{True} without active checks).
        """
        return self.health.healthy

    @healthy.setter
    def healthy(self, value: bool) -> None:
        self.health.healthy = value

    def isEjected(self, now: float) -> bool:
        """
        Whether passive ejection keeps the backend out at time C{now}.
        """
        return self.ejectedUntil is not None and now < self.ejectedUntil

    def isAvailable(self, now: float) -> bool:
        """
        Whether the backend may be picked at time C{now}: healthy and not
        ejected.
        """
        return self.health.healthy and (self.ejectedUntil is None or now >= self.ejectedUntil)

    def connectionStarted(self) -> None:
        """
        Count a connection (or connect attempt) to this backend.  Call it
        when you start connecting; pair it with exactly one
        L{connectionFinished}.
        """
        self.activeConnections += 1
        self.totalConnections += 1

    def connectionFinished(self) -> None:
        """
        Uncount a connection: its connect failed, or it closed.
        """
        if self.activeConnections > 0:
            self.activeConnections -= 1

    def snapshot(self, now: float) -> Dict[str, Any]:
        """
        Plain data for status pages and metrics.
        """
        h = self.health
        return {
            "key": self.key,
            "address": str(self.url) if self.url is not None else self.description,
            "weight": self.weight,
            "healthy": h.healthy,
            "checked": h.checked,
            "lastCheckAt": h.lastCheckAt,
            "lastCheckError": h.lastError,
            "ejected": self.isEjected(now),
            "ejectedUntil": self.ejectedUntil if self.isEjected(now) else None,
            "ejections": self.ejections,
            "available": self.isAvailable(now),
            "activeConnections": self.activeConnections,
            "totalConnections": self.totalConnections,
            "consecutiveFailures": self.consecutiveFailures,
            "totalFailures": self.totalFailures,
        }

    def __repr__(self) -> str:
        return f"<Backend {self.key} weight={self.weight}>"


def _hash64(text: str) -> int:
    """
    A hash that is the same in every process (unlike C{hash()}), so all
    workers of one txproxy map a client to the same backend.
    """
    return int.from_bytes(hashlib.md5(text.encode("utf-8")).digest()[:8], "big")


class Pool:
    """
    A set of backends and a policy for choosing among them.

    Policies:
      - C{roundrobin}: smooth weighted round robin (nginx's): over any run of
        picks each available backend gets its weight's share, interleaved
        rather than in bursts.
      - C{leastconn}: the available backend with the fewest
        C{(activeConnections + 1) / weight}; ties go round robin.
      - C{hash}: consistent hashing of C{clientKey} (the client address) on a
        ring of L{VIRTUAL_NODES} points per unit of weight.  When a backend
        joins or leaves only about 1/N of the clients move; a backend that is
        down hands its clients to the next points on the ring and gets them
        back when it returns.  An empty C{clientKey} falls back to round
        robin.  The ring is built on the first hashed pick; weights are
        divided by their greatest common divisor first.

    Passive health: L{reportConnectFailure} counts failures in a row; at
    C{ejectAfter} (C{0}: never) the backend is ejected for C{ejectFor}
    seconds.  The count is not reset by the ejection, so once the time is up
    the backend is on probation: one more failure ejects it again, one
    success (L{reportConnectSuccess}, or a passing active check) clears it.

    @ivar backends: the backends, in configuration order.
    @ivar balance: the policy name.
    """

    def __init__(
        self,
        backends: Sequence[Backend],
        balance: str = "roundrobin",
        clock: Optional[IReactorTime] = None,
        ejectAfter: int = 3,
        ejectFor: float = 30.0,
        name: str = "",
    ) -> None:
        """
        @param clock: for ejection times; the global reactor when L{None}.
        @param name: for logs and L{snapshot}.
        @raise ConfigError: on an unknown policy or an empty pool.
        """
        if balance not in BALANCE_POLICIES:
            raise ConfigError(
                f"unknown balance policy {balance!r}: expected {', '.join(BALANCE_POLICIES)}"
            )
        if not backends:
            raise ConfigError(f"pool {name or '?'}: no backends")
        self.backends: Tuple[Backend, ...] = tuple(backends)
        self.balance = balance
        self.ejectAfter = ejectAfter
        self.ejectFor = ejectFor
        self.name = name
        self._clock = clock
        self._current = [0] * len(self.backends)
        self._next = 0
        self._ring: Optional[Tuple[List[int], List[int]]] = None
        self._pick: Callable[[str, Container[Backend]], Optional[Backend]] = {
            "roundrobin": self._pickRoundRobin,
            "leastconn": self._pickLeastConn,
            "hash": self._pickHash,
        }[balance]

    @classmethod
    def fromRoute(cls, route: RouteConfig, clock: Optional[IReactorTime] = None) -> Pool:
        """
        A pool of fresh backends for C{route} (its weights, policy and
        ejection settings).  Duplicate URLs are merged, their weights added.
        """
        weights = route.weights or (1,) * len(route.upstreams)
        merged: Dict[str, Backend] = {}
        for url, weight in zip(route.upstreams, weights):
            key = str(url)
            if key in merged:
                merged[key].weight += weight
            else:
                merged[key] = Backend.fromURL(url, weight)
        return cls(
            list(merged.values()),
            route.balance,
            clock,
            route.ejectAfter,
            route.ejectFor,
            name=f"{route.host}{route.prefix}",
        )

    def _now(self) -> float:
        clock = self._clock
        if clock is None:
            from twisted.internet import reactor

            clock = self._clock = cast(IReactorTime, reactor)
        assert clock is not None
        return clock.seconds()

    # -- choosing ---------------------------------------------------------

    def pick(self, clientKey: str = "", exclude: Container[Backend] = ()) -> Optional[Backend]:
        """
        Choose a backend for a new connection or request.  Does not count
        the connection: call L{Backend.connectionStarted} on the result.

        @param clientKey: the client address for the C{hash} policy (other
            policies ignore it).
        @param exclude: backends not to return (those already tried for this
            request, to retry a failed connect elsewhere).
        @return: a L{Backend}, or L{None} when every backend is down,
            ejected or excluded.
        """
        return self._pick(clientKey, exclude)

    def _pickRoundRobin(self, clientKey: str, exclude: Container[Backend]) -> Optional[Backend]:
        now = self._now()
        current = self._current
        best = -1
        bestWeight = 0
        total = 0
        for i, b in enumerate(self.backends):
            if not b.health.healthy or (b.ejectedUntil is not None and now < b.ejectedUntil):
                continue
            if exclude and b in exclude:
                continue
            w = b.weight
            cw = current[i] + w
            current[i] = cw
            total += w
            if best < 0 or cw > bestWeight:
                best = i
                bestWeight = cw
        if best < 0:
            return None
        current[best] -= total
        return self.backends[best]

    def _pickLeastConn(self, clientKey: str, exclude: Container[Backend]) -> Optional[Backend]:
        now = self._now()
        backends = self.backends
        n = len(backends)
        start = self._next
        self._next = (start + 1) % n
        best: Optional[Backend] = None
        bestScore = 0.0
        for j in range(n):
            b = backends[(start + j) % n]
            if not b.health.healthy or (b.ejectedUntil is not None and now < b.ejectedUntil):
                continue
            if exclude and b in exclude:
                continue
            score = (b.activeConnections + 1) / b.weight
            if best is None or score < bestScore:
                best = b
                bestScore = score
        return best

    def _buildRing(self) -> Tuple[List[int], List[int]]:
        # Weights 2:4 make the same ring as 1:2, with half the points.
        unit = reduce(gcd, (b.weight for b in self.backends))
        points: List[Tuple[int, int]] = []
        for i, b in enumerate(self.backends):
            for v in range(b.weight // unit * VIRTUAL_NODES):
                points.append((_hash64(f"{b.key}#{v}"), i))
        points.sort()
        return [p for p, _ in points], [i for _, i in points]

    def _pickHash(self, clientKey: str, exclude: Container[Backend]) -> Optional[Backend]:
        if not clientKey:
            return self._pickRoundRobin(clientKey, exclude)
        ring = self._ring
        if ring is None:
            ring = self._ring = self._buildRing()
        points, owners = ring
        now = self._now()
        backends = self.backends
        size = len(points)
        pos = bisect_left(points, _hash64(clientKey))
        seen = set()
        for step in range(size):
            i = owners[(pos + step) % size]
            if i in seen:
                continue
            b = backends[i]
            if b.health.healthy and (b.ejectedUntil is None or now >= b.ejectedUntil):
                if not (exclude and b in exclude):
                    return b
            seen.add(i)
            if len(seen) == len(backends):
                break
        return None

    def availableBackends(self) -> List[Backend]:
        """
        The backends that may be picked now.
        """
        now = self._now()
        return [b for b in self.backends if b.isAvailable(now)]

    # -- passive health ---------------------------------------------------

    def reportConnectFailure(self, backend: Backend) -> None:
        """
        Record a failed connect to C{backend} (refused, unreachable, timed
        out), ejecting it after C{ejectAfter} failures in a row.  Call it for
        connect failures only, not for errors after the connection was made.
        """
        backend.consecutiveFailures += 1
        backend.totalFailures += 1
        if self.ejectAfter and backend.consecutiveFailures >= self.ejectAfter:
            wasEjected = backend.isEjected(self._now())
            backend.ejectedUntil = self._now() + self.ejectFor
            if not wasEjected:
                backend.ejections += 1
                _log.warn(
                    "backend {backend} of {pool} ejected for {seconds}s after {count} connect failures",
                    backend=backend.key,
                    pool=self.name,
                    seconds=self.ejectFor,
                    count=backend.consecutiveFailures,
                )

    def reportConnectSuccess(self, backend: Backend) -> None:
        """
        Record a successful connect: clears the failure count and any
        ejection.
        """
        backend.consecutiveFailures = 0
        backend.ejectedUntil = None

    # -- pick, connect, report, retry ---------------------------------------

    def connect(
        self,
        connectTo: Callable[[Backend], "Deferred[T]"],
        clientKey: str = "",
        attempts: int = 2,
    ) -> "Deferred[Tuple[Backend, T]]":
        """
        Pick a backend and connect to it, retrying a failed connect on
        another backend, up to C{attempts} backends in all.

        Each attempt counts the connection (L{Backend.connectionStarted});
        a failed attempt uncounts it and is reported
        (L{reportConnectFailure}).  On success the connect is reported
        (L{reportConnectSuccess}) and the connection B{stays counted}: call
        C{backend.connectionFinished()} when it closes.  Only use this before
        any request byte was sent upstream.

        @param connectTo: called with a L{Backend}; returns a Deferred that
            fires when connected (for example C{endpoint.connect(factory)}).
        @param clientKey: the client address, for the C{hash} policy.
        @param attempts: how many backends to try (C{2}: one retry).
        @return: a Deferred firing with C{(backend, result of connectTo)}, or
            failing with L{NoHealthyBackend} when no backend could be picked
            at all, or with the last connect failure.  Cancelling it cancels
            the connect in progress.
        """
        tried: List[Backend] = []
        inFlight: List[Optional[Deferred[Any]]] = [None]
        cancelled = [False]

        def cancel(d: Deferred[Tuple[Backend, T]]) -> None:
            cancelled[0] = True
            if inFlight[0] is not None:
                inFlight[0].cancel()

        result: Deferred[Tuple[Backend, T]] = Deferred(cancel)

        def attempt(lastFailure: Optional[Failure]) -> None:
            backend = self.pick(clientKey, exclude=tried) if len(tried) < attempts else None
            if backend is None:
                if lastFailure is None:
                    result.errback(NoHealthyBackend(f"no healthy backend in {self.name or 'pool'}"))
                else:
                    result.errback(lastFailure)
                return
            tried.append(backend)
            backend.connectionStarted()
            d = maybeDeferred(connectTo, backend)
            inFlight[0] = d
            d.addCallbacks(succeeded, failed, callbackArgs=(backend,), errbackArgs=(backend,))

        def succeeded(value: T, backend: Backend) -> None:
            inFlight[0] = None
            if result.called:
                backend.connectionFinished()
                return
            self.reportConnectSuccess(backend)
            result.callback((backend, value))

        def failed(f: Failure, backend: Backend) -> None:
            inFlight[0] = None
            backend.connectionFinished()
            if result.called:
                return
            if cancelled[0] or isinstance(f.value, CancelledError):
                result.errback(f)
                return
            self.reportConnectFailure(backend)
            attempt(f)

        attempt(None)
        return result

    def snapshot(self, now: Optional[float] = None) -> Dict[str, Any]:
        """
        Plain data: policy, ejection settings and each backend's state.
        """
        if now is None:
            now = self._now()
        return {
            "name": self.name,
            "balance": self.balance,
            "ejectAfter": self.ejectAfter,
            "ejectFor": self.ejectFor,
            "backends": [b.snapshot(now) for b in self.backends],
        }

    def __repr__(self) -> str:
        return f"<Pool {self.name} {self.balance} {[b.key for b in self.backends]}>"
