# -*- test-case-name: tests.test_connector -*-
"""
The default L{IUpstreamConnector}: resolves names with the reactor's name
resolver and connects with plain TCP client endpoints.
"""

from __future__ import annotations

from functools import partial
from typing import Any, List, Optional

from twisted.internet import defer
from twisted.internet.abstract import isIPv6Address
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, clientFromString
from twisted.internet.interfaces import IResolutionReceiver
from twisted.internet.protocol import ClientFactory
from zope.interface import implementer

from txproxy._common import isIPLiteral
from txproxy._dial import dialTCP
from txproxy.errors import ResolveError
from txproxy.interfaces import IUpstreamConnector

__all__ = ["Connector", "connectProtocol", "dialerFor", "directDial", "isIPLiteral"]


@implementer(IResolutionReceiver)
class _Collector:
    def __init__(self) -> None:
        self.addresses: List[str] = []
        self.done: defer.Deferred[List[str]] = defer.Deferred()

    def resolutionBegan(self, resolution: Any) -> None:
        pass

    def addressResolved(self, address: Any) -> None:
        if isinstance(address, (IPv4Address, IPv6Address)) and address.host not in self.addresses:
            self.addresses.append(address.host)

    def resolutionComplete(self) -> None:
        self.done.callback(self.addresses)


class _DialFactory(ClientFactory):
    """
    Connects one pre-built protocol and fires a Deferred with it once its
    C{connectionMade} has run (the protocol calls C{onConnected}).
    """

    noisy = False

    def __init__(self, proto: Any) -> None:
        self.proto = proto
        self.connector: Any = None
        self.deferred: defer.Deferred = defer.Deferred(self._cancel)
        proto.onConnected = self._connected

    def _connected(self, proto: Any) -> None:
        if not self.deferred.called:
            self.deferred.callback(proto)

    def _cancel(self, d: defer.Deferred) -> None:
        connector = self.connector
        if connector is None:
            return
        state = connector.state
        # Fail d first: stopping the connector reports UserError (a
        # ConnectError) synchronously, which would otherwise read as a
        # refused connect (dialTarget tries the next address; addTimeout
        # passes it on instead of its TimeoutError).
        d.errback(defer.CancelledError())
        if state == "connecting":
            connector.stopConnecting()
        elif state == "connected" and connector.transport is not None:
            connector.transport.abortConnection()

    def buildProtocol(self, addr: Any) -> Any:
        return self.proto

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        if not self.deferred.called:
            self.deferred.errback(reason)


def connectProtocol(connector: Any, host: str, port: int, proto: Any) -> "defer.Deferred[Any]":
    """
    Connect C{proto} to C{host}:C{port} through C{connector}, an
    L{IUpstreamConnector}: its C{connect} (for the stock L{Connector}, no
    endpoint wrapper between the socket and the protocol).

    @return: a Deferred firing with C{proto} once connected; cancelling it
        abandons the attempt.
    """
    return connector.connect(host, port, proto)  # type: ignore[no-any-return]


@implementer(IUpstreamConnector)
class Connector:
    """
    Connects to upstreams over TCP.

    @ivar connectTimeout: seconds a TCP connect may take.
    @ivar bindAddress: optional local address to connect from.
    """

    def __init__(self, reactor: Any = None, connectTimeout: float = 10.0, bindAddress: Optional[str] = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.reactor = reactor
        self.connectTimeout = connectTimeout
        self.bindAddress = bindAddress

    def resolve(self, host: str, port: int) -> "defer.Deferred[List[str]]":
        """
        Resolve C{host}; IPv4 addresses are tried first, then IPv6.
        """
        if isIPLiteral(host):
            return defer.succeed([host])
        collector = _Collector()
        self.reactor.nameResolver.resolveHostName(collector, host, port)

        def check(addresses: List[str]) -> List[str]:
            if not addresses:
                raise ResolveError(f"cannot resolve {host}")
            return sorted(addresses, key=lambda a: ":" in a)

        return collector.done.addCallback(check)

    def endpointFor(self, host: str, port: int) -> Any:
        bind = (self.bindAddress, 0) if self.bindAddress else None
        if isIPv6Address(host):
            return TCP6ClientEndpoint(self.reactor, host, port, timeout=self.connectTimeout, bindAddress=bind)
        return TCP4ClientEndpoint(self.reactor, host, port, timeout=self.connectTimeout, bindAddress=bind)

    def endpointForDescription(self, description: str) -> Any:
        return clientFromString(self.reactor, description)

    def connect(self, host: str, port: int, proto: Any) -> "defer.Deferred[Any]":
        """
        Connect C{proto} (which calls its C{onConnected} attribute from
        C{connectionMade}, as L{txproxy.relay.RelayedProtocol} does) to the
        IP address C{host}, straight through C{connectTCP}: one protocol
        object per connection, no endpoint wrapper on the data path.
        """
        dial = _DialFactory(proto)
        bind = (self.bindAddress, 0) if self.bindAddress else None
        dial.connector = dialerFor(self.reactor)(host, port, dial, self.connectTimeout, bind)
        return dial.deferred


def directDial(connector: Any) -> Any:
    """
    Whether IP literals may be dialled directly (no endpoint, no Deferred):
    only through a L{Connector} whose C{connect} and C{endpointFor} are
    L{Connector}'s own, on a reactor with C{connectTCP}: the stock one, and
    L{txproxy.testing.FakeConnector} (so tests take the production path).
    Other L{IUpstreamConnector}s are asked through their methods.

    @return: C{(dial, bindAddress)}, C{dial} taking C{connectTCP}'s
        arguments (see L{dialerFor}); C{(None, None)} when not.
    """
    cls = type(connector)
    if (
        isinstance(connector, Connector)
        and cls.connect is Connector.connect
        and cls.endpointFor is Connector.endpointFor
        and hasattr(connector.reactor, "connectTCP")
    ):
        bind = (connector.bindAddress, 0) if connector.bindAddress else None
        return dialerFor(connector.reactor), bind
    return None, None


def dialerFor(reactor: Any) -> Any:
    """
    The C{connectTCP}-like callable to dial IP literals with on C{reactor}:
    L{txproxy._dial.dialTCP} on a real POSIX reactor, else the reactor's own
    C{connectTCP} (memory reactors in tests).
    """
    from twisted.internet.posixbase import PosixReactorBase

    if isinstance(reactor, PosixReactorBase):
        return partial(dialTCP, reactor)
    return reactor.connectTCP
