# -*- test-case-name: tests.test_limiter -*-
"""
The limiter's values, shared by every backend: a L{Decision}, the reasons a
request or connection is refused and the HTTP status each maps to, a lease
on a connection slot, and the naming of bucket keys.  A leaf: it imports
nothing of txproxy.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import attr
from twisted.internet.defer import Deferred
from zope.interface import Interface

__all__ = [
    "ALLOWED",
    "Decision",
    "EPSILON",
    "HTTP_STATUS",
    "ILease",
    "REASON_MAX_CONNS",
    "REASON_MAX_CONNS_PER_CLIENT",
    "REASON_RATE",
    "bucketKey",
    "checkBucket",
    "escapeScope",
]

REASON_RATE = "rate"
REASON_MAX_CONNS = "max-conns"
REASON_MAX_CONNS_PER_CLIENT = "max-conns-per-client"

#: The HTTP status a denial maps to (CLI.md): the rate limit and the
#: per-client cap are the client's fault (429), the total cap is ours (503).
HTTP_STATUS: Dict[str, int] = {
    REASON_RATE: 429,
    REASON_MAX_CONNS_PER_CLIENT: 429,
    REASON_MAX_CONNS: 503,
}

#: Tolerance, in tokens, for floating-point error in bucket arithmetic.  The
#: Redis scripts use the same value so that both backends decide alike.
EPSILON = 1e-9


class ILease(Interface):
    """
    An admitted connection's hold on a slot of the connection caps.

    (Defined here rather than in L{txproxy.interfaces} only because this
    module introduced it; it may move there without changing its name.)
    """

    def release() -> "Deferred[None]":
        """
        Give the slot back.  Idempotent: only the first call counts.  Call it
        when the connection closes, however it closes.

        @return: a Deferred that fires with L{None} once the release has been
            recorded by the backend (at once for the memory backend).  It
            never fails: a release that cannot reach Redis is counted and
            the lease then expires by itself.
        """


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Decision:
    """
    The answer to one admission question.

    @ivar allowed: whether the connection or request may proceed.
    @ivar reason: L{None} when allowed; otherwise C{"rate"} (token bucket
        empty), C{"max-conns"} (the scope's total cap) or
        C{"max-conns-per-client"} (the client's cap).  L{HTTP_STATUS} maps
        each to the status an HTTP mode answers.
    @ivar retryAfter: seconds until enough tokens will be available, for a
        C{"rate"} denial; C{0} otherwise (including cap denials: nobody
        knows when a connection will close).
    @ivar lease: an L{ILease} when C{acquire} admitted a connection, else
        L{None}.  Whoever receives it must call C{release()} when the
        connection closes.
    """

    allowed: bool
    reason: Optional[str] = None
    retryAfter: float = 0.0
    lease: Optional[Any] = None

    @property
    def retryAfterSeconds(self) -> int:
        """
        C{retryAfter} rounded up to whole seconds for a C{Retry-After}
        header: at least 1 for any denial, 0 when allowed.
        """
        if self.allowed:
            return 0
        whole = int(self.retryAfter)
        if whole < self.retryAfter:
            whole += 1
        return max(1, whole)


#: The one allowed decision without a lease; shared, never copied.
ALLOWED = Decision(True)


_DENIED_MAX_CONNS = Decision(False, REASON_MAX_CONNS)


_DENIED_MAX_CONNS_PER_CLIENT = Decision(False, REASON_MAX_CONNS_PER_CLIENT)


def checkBucket(rate: float, burst: float, cost: float) -> None:
    """
    Reject token bucket parameters that no bucket could honour.

    @raise ValueError: unless C{0 < cost <= burst} and C{rate > 0}.
    """
    if not rate > 0:
        raise ValueError(f"rate must be positive, not {rate!r}")
    if not 0 < cost <= burst:
        raise ValueError(f"cost must be positive and at most burst ({burst!r}), not {cost!r}")


def escapeScope(scope: str) -> str:
    """
    Escape C{scope} so that it contains no C{|}: keys built as
    C{scope|client} are then unambiguous whatever the client string holds.
    """
    if "%" in scope or "|" in scope:
        return scope.replace("%", "%25").replace("|", "%7C")
    return scope


def bucketKey(scope: str, client: str) -> str:
    """
    The token bucket key of C{client} in C{scope}: C{<escaped scope>|<client>}.
    """
    return escapeScope(scope) + "|" + client
