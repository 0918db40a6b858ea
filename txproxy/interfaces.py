# -*- test-case-name: tests.test_interfaces -*-
"""
The interfaces that txproxy's collaborators implement.

Protocols and factories never reach for a global; they are handed an
L{IUpstreamConnector} (how to reach a destination), an L{ILimiter} (whether to
admit a connection or a request) and, for routed modes, a router.  Tests hand
them the fakes in L{txproxy.testing}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from zope.interface import Interface

if TYPE_CHECKING:  # pragma: no cover
    from twisted.internet.defer import Deferred

    from txproxy.limits._decision import Decision


class IUpstreamConnector(Interface):
    """
    Resolves destination names and builds client endpoints to reach them.

    The forward proxy resolves first and connects second so that policy
    (C{--deny-dest}) is checked on the address actually dialled, never on a
    name that could resolve differently a moment later.
    """

    def resolve(host: str, port: int) -> "Deferred[list[str]]":
        """
        Resolve C{host} to a list of IP address strings, in the order they
        should be tried.  An IP literal resolves to itself without a lookup.

        @return: a Deferred firing with a non-empty list, or failing with
            L{txproxy.errors.ResolveError} when the name does not resolve.
        """

    def endpointFor(host: str, port: int) -> object:
        """
        Return an L{IStreamClientEndpoint} that connects to the IP address
        C{host} on C{port} (plain TCP; the connect timeout is the connector's).
        """

    def endpointForDescription(description: str) -> object:
        """
        Return an L{IStreamClientEndpoint} for a Twisted client endpoint
        string such as C{tcp:host=10.0.0.5:port=22}.
        """


class ILimiter(Interface):
    """
    Token buckets and connection caps.  Implementations: the in-memory
    backend and the Redis backend; both answer with Deferreds (the memory
    backend's have already fired).
    """

    def take(key: str, rate: float, burst: int, cost: float = 1.0) -> "Deferred[Decision]":
        """
        Take C{cost} tokens from the bucket C{key}, which refills at C{rate}
        tokens per second up to C{burst}.

        @return: a Deferred firing with a L{txproxy.limits.service.Decision}.
        """

    def acquire(
        scope: str, client: str, maxTotal: Optional[int], maxPerClient: Optional[int]
    ) -> "Deferred[Decision]":
        """
        Open a connection lease in C{scope} for C{client}, unless that would
        exceed C{maxTotal} leases in the scope or C{maxPerClient} leases for
        the client (either may be L{None}: no cap).

        @return: a Deferred firing with a L{txproxy.limits.service.Decision} whose
            C{lease} has a C{release()} method when the connection is allowed.
        """


class IAccessLog(Interface):
    """
    Receives one record per finished request or tunnel.
    """

    def log(record: object) -> None:
        """
        Write C{record} (an L{txproxy.accesslog.AccessRecord}).
        """


