# -*- test-case-name: tests.test_interfaces -*-
"""
The interfaces that txproxy's collaborators implement.

Protocols and factories never reach for a global; they are handed an
L{IUpstreamConnector} (how to reach a destination), an L{ILimiter} (whether to
admit a connection or a request) and, for routed modes, an L{IRouter} (which
route and pool a request or connection goes to).  Tests hand them the fakes
in L{txproxy.testing}.

Each interface declares every method txproxy calls on its collaborator, so
C{zope.interface.verify.verifyObject} on an implementation (see
C{tests.test_interfaces}) tells whether it can stand in for the stock one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Optional, Sequence, Union

from zope.interface import Attribute, Interface

if TYPE_CHECKING:  # pragma: no cover
    from twisted.internet.defer import Deferred

    from txproxy.config import ListenerConfig
    from txproxy.limits._decision import Decision
    from txproxy.router import Pool, Route, RouteTable


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

    def connect(host: str, port: int, proto: Any) -> "Deferred[Any]":
        """
        Connect the protocol instance C{proto} to the IP address C{host} on
        C{port} (plain TCP; the connect timeout is the connector's), without
        a factory of the caller's: L{txproxy.connector.connectProtocol}
        calls this for the forward proxy's upstreams and the reverse
        proxy's plain-TCP backends.  C{proto} calls its C{onConnected}
        attribute with itself from C{connectionMade} (as
        L{txproxy.relay.RelayedProtocol} does); an implementation may rely
        on that or on its endpoint's Deferred.

        @return: a Deferred firing with C{proto} once it is connected, or
            failing with the connect error; cancelling it abandons the
            attempt.
        """


class ILimiter(Interface):
    """
    Token buckets and connection caps.  Implementations: the in-memory
    backend, the Redis backend and the service that chooses between them
    (L{txproxy.limits.service.LimiterService}).

    Each question has two forms: C{take} and C{acquire} always answer with
    a Deferred (the memory backend's has already fired);
    C{takeNowOrLater} and C{acquireNowOrLater}, which the protocols call
    once per request or connection, hand over a decision known at once
    as a plain L{Decision}, without allocating a Deferred, and answer
    with a Deferred only when the answer must wait (a Redis round trip).
    Both forms give the same decisions and have the same effects; an
    implementation that can never answer at once returns its Deferred
    from the now-or-later form.
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

    def takeNowOrLater(
        key: str, rate: float, burst: int, cost: float = 1.0
    ) -> "Union[Decision, Deferred[Decision]]":
        """
        L{take}, answered synchronously when the answer is known at once.

        @return: a L{txproxy.limits.service.Decision} when the answer is
            known at once (an admission is then usually the shared
            C{ALLOWED}), else a Deferred firing with one.  The Deferred
            does not fail for a backend outage when the implementation has
            a fallback (the service answers from memory).
        @raise ValueError: on bucket parameters no bucket could honour (see
            L{txproxy.limits._decision.checkBucket}).
        """

    def acquireNowOrLater(
        scope: str, client: str, maxTotal: Optional[int], maxPerClient: Optional[int]
    ) -> "Union[Decision, Deferred[Decision]]":
        """
        L{acquire}, answered synchronously when the answer is known at once.

        @return: a L{txproxy.limits.service.Decision} (with its C{lease}
            when admitted) when the answer is known at once, else a
            Deferred firing with one, as L{takeNowOrLater}.
        """


class IRouter(Interface):
    """
    Which route and pool a request or connection goes to, for every
    listener of a process, swapped atomically on reload.  The stock
    implementation is L{txproxy.router.RouterService} (also an
    C{IService}: it runs the active health checks).

    The modes ask it once per request (reverse: L{routeFor}) or connection
    (sni: L{tableFor}; tcp: L{poolFor}) and never keep the answer, since a
    reload replaces tables and pools.  Pools pick and connect backends
    (C{Pool.connect}); see L{txproxy.router}.
    """

    listeners = Attribute(
        "The listener configurations currently in force: a tuple of "
        "L{txproxy.config.ListenerConfig}."
    )

    def tableFor(listenerName: str) -> "RouteTable":
        """
        The current route table of the reverse or sni listener named
        C{listenerName}; its C{match(host, path)} gives a route or L{None}.

        @raise KeyError: when there is no such routed listener.
        """

    def poolFor(listenerName: str) -> "Pool":
        """
        The current backend pool of the tcp-mode listener named
        C{listenerName}.

        @raise KeyError: when there is no such tcp listener.
        """

    def routeFor(listenerName: str, host: str, path: str = "") -> "Optional[Route]":
        """
        The route of the listener named C{listenerName} matching C{host}
        and C{path} (C{tableFor(listenerName).match(host, path)}), or
        L{None} when none does (reverse mode answers C{404}).

        @raise KeyError: when there is no such routed listener.
        """

    def setListeners(listeners: "Sequence[ListenerConfig]") -> None:
        """
        Reload: build tables and pools for C{listeners} and swap them in at
        once (listeners of modes without routing are ignored).  Backends
        that stay keep their health and counters.

        @raise txproxy.errors.ConfigError: on a configuration the router
            cannot use; nothing is changed then.
        """

    def snapshot() -> "Dict[str, Any]":
        """
        Plain data (dicts, lists, strings, numbers, booleans, None) about
        every listener's routes and backends and every health check, for
        the status page, the admin API and metrics.
        """


class IAccessLog(Interface):
    """
    Receives one record per finished request or tunnel.
    """

    def log(record: object) -> None:
        """
        Write C{record} (an L{txproxy.accesslog.AccessRecord}).
        """


