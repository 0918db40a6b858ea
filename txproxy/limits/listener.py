# -*- test-case-name: tests.test_limiter -*-
"""
L{ListenerLimits}: what a listener's factory and protocols call to admit a
connection or a request, against the process's limiter, with the listener's
rate, burst and caps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional, Union

from twisted.internet.defer import Deferred, succeed

from txproxy.interfaces import ILimiter
from txproxy.limits._decision import (
    ALLOWED,
    Decision,
    escapeScope,
)

if TYPE_CHECKING:  # pragma: no cover
    from txproxy.config import ListenerConfig


__all__ = ["ListenerLimits"]


class ListenerLimits:
    """
    One listener's limits, as its factory and protocols ask for them.

    Token buckets are keyed by C{scope} and client (L{bucketKey}) and
    connection caps are counted in C{scope}, so listeners with different
    scopes never share a bucket or a cap.

    @ivar limiter: the L{ILimiter} asked (usually the L{LimiterService}).
    @ivar scope: the namespace of this listener's buckets and caps.
    @ivar rate: tokens per second, or L{None} when no C{--rate} is set.
    @ivar burst: the bucket size (C{ListenerConfig.effectiveBurst}).
    @ivar maxConns: C{--max-conns} or L{None}.
    @ivar maxConnsPerClient: C{--max-conns-per-client} or L{None}.
    """

    def __init__(self, limiter: ILimiter, listener: "ListenerConfig", scope: str) -> None:
        self.limiter = limiter
        self.scope = scope
        self.rate: Optional[float] = listener.rate.perSecond if listener.rate is not None else None
        self.burst = listener.effectiveBurst
        self.maxConns: Optional[int] = listener.maxConns
        self.maxConnsPerClient: Optional[int] = listener.maxConnsPerClient
        self._prefix = escapeScope(scope) + "|"
        self._capped = self.maxConns is not None or self.maxConnsPerClient is not None
        # The synchronous forms (ILimiter): a Decision when known at once.
        self._take: Callable[..., Any] = limiter.takeNowOrLater
        self._acquire: Callable[..., Any] = limiter.acquireNowOrLater

    def checkConnection(self, client: str, countRate: bool) -> "Union[Decision, Deferred[Decision]]":
        """
        L{admitConnection}, answered synchronously when the limiter can:
        a L{Decision}, or a L{Deferred} firing with one.  With no limits
        configured, the shared L{ALLOWED}.
        """
        rated = countRate and self.rate is not None
        if not self._capped:
            if not rated:
                return ALLOWED
            return self._take(self._prefix + client, self.rate, self.burst)  # type: ignore[no-any-return]
        if not rated:
            return self._acquire(  # type: ignore[no-any-return]
                self.scope, client, self.maxConns, self.maxConnsPerClient
            )
        decision = self._take(self._prefix + client, self.rate, self.burst)
        if decision.__class__ is Decision:
            return self._thenAcquire(decision, client)  # type: ignore[no-any-return]
        return decision.addCallback(self._thenAcquire, client)  # type: ignore[no-any-return]

    def admitConnection(self, client: str, countRate: bool) -> "Deferred[Decision]":
        """
        Decide whether a new connection from C{client} is admitted.  Call it
        once per accepted connection, before reading from it.

        The token bucket is checked first (when C{countRate}), then the caps
        (per client, then total); a connection denied by the rate never
        holds a lease, and one denied by a cap has spent its token.

        @param client: the client address (the PROXY header's, when the
            listener is C{haproxy:}).
        @param countRate: whether this connection costs a token: true in the
            TCP modes (one token per connection), false in the HTTP modes
            (which call L{admitRequest} per request instead).
        @return: a Deferred firing with a L{Decision}; when it is allowed
            and a cap is configured, its C{lease} must be released when the
            connection closes.  With no limits configured, an already fired
            Deferred of the shared L{ALLOWED} decision.  (L{checkConnection}
            gives the same answer without a Deferred when it is known at
            once.)
        """
        result = self.checkConnection(client, countRate)
        if result.__class__ is Decision:
            return succeed(result)
        return result  # type: ignore[return-value]

    def _thenAcquire(self, decision: Decision, client: str) -> Any:
        if not decision.allowed:
            return decision
        return self._acquire(self.scope, client, self.maxConns, self.maxConnsPerClient)

    def checkRequest(self, client: str) -> "Union[Decision, Deferred[Decision]]":
        """
        L{admitRequest}, answered synchronously when the limiter can (from
        memory, or from tokens the Redis backend holds): a L{Decision} (the
        shared L{ALLOWED} when admitted), or a L{Deferred} firing with one
        when Redis has to be asked.  What protocols call per request.
        """
        if self.rate is None:
            return ALLOWED
        return self._take(self._prefix + client, self.rate, self.burst)  # type: ignore[no-any-return]

    def admitRequest(self, client: str) -> "Deferred[Decision]":
        """
        Decide whether one request from C{client} may proceed: one token (a
        C{CONNECT} is one request).  HTTP modes call it per request.

        @return: a Deferred firing with a L{Decision} (never with a lease);
            with no C{--rate}, an already fired Deferred of L{ALLOWED}.
            (L{checkRequest} gives the same answer without a Deferred when
            it is known at once.)
        """
        result = self.checkRequest(client)
        if result.__class__ is Decision:
            return succeed(result)
        return result  # type: ignore[return-value]
