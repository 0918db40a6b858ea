# -*- test-case-name: tests.test_testing -*-
"""
Public helpers for testing txproxy protocols, and your subclasses of them,
with trial and no sockets.

    from twisted.internet.task import Clock
    from twisted.trial.unittest import SynchronousTestCase
    from txproxy.testing import FakeConnector, connect, forwardFactory

    class MyProxyTests(SynchronousTestCase):
        def test_blocked(self):
            connector = FakeConnector({"example.com": ["192.0.2.1"]})
            factory = forwardFactory(connector=connector, protocol=MyProxy)
            proto, transport = connect(factory)
            proto.dataReceived(b"CONNECT blocked.test:443 HTTP/1.1\\r\\nHost: blocked.test\\r\\n\\r\\n")
            self.assertIn(b" 403 ", transport.value())

Everything here is built on Twisted's L{StringTransport} and L{Clock}; the
names below are the stable surface (Twisted's C{iosim} carries no
compatibility promise, so it is wrapped rather than re-exported).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import attr
from twisted.internet import defer, error
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IHalfCloseableProtocol, IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from txproxy.errors import ResolveError
from txproxy.interfaces import IUpstreamConnector

__all__ = [
    "Clock",
    "FakeTransport",
    "FakeConnector",
    "ConnectAttempt",
    "connect",
    "forwardFactory",
    "listenerConfig",
]


def _address(host: str, port: int) -> Any:
    return IPv6Address("TCP", host, port) if ":" in host else IPv4Address("TCP", host, port)


class FakeTransport(StringTransport):
    """
    A L{StringTransport} that behaves like a TCP connection for a proxy:
    closing calls the protocol's C{connectionLost}, half-close is recorded
    (and reported to an L{IHalfCloseableProtocol}), and reading can be
    paused and resumed.

    @ivar protocol: the connected protocol.
    @ivar writeClosed: whether C{loseWriteConnection} was called.
    @ivar aborted: whether C{abortConnection} was called.
    @ivar closed: whether the protocol's C{connectionLost} has run.
    """

    protocol: Any = None
    writeClosed = False
    aborted = False
    closed = False

    def __init__(self, peer: Tuple[str, int] = ("127.0.0.1", 40000), host: Tuple[str, int] = ("127.0.0.1", 3128)):
        super().__init__(hostAddress=_address(*host), peerAddress=_address(*peer))

    def loseConnection(self) -> None:
        if self.disconnecting:
            return
        super().loseConnection()
        self._lose(error.ConnectionDone())

    def abortConnection(self) -> None:
        self.aborted = True
        if not self.disconnecting:
            super().loseConnection()
        self._lose(error.ConnectionAborted())

    def loseWriteConnection(self) -> None:
        """
        Shut down writing (a FIN); the protocol's C{writeConnectionLost}
        runs, as Twisted's TCP transport does once its buffer is flushed.
        """
        if self.writeClosed:
            return
        self.writeClosed = True
        p = IHalfCloseableProtocol(self.protocol, None)
        if p is not None:
            p.writeConnectionLost()

    def _lose(self, reason: Exception) -> None:
        if self.closed:
            return
        self.closed = True
        if self.producer is not None:
            producer, self.producer = self.producer, None
            producer.stopProducing()
        if self.protocol is not None:
            self.protocol.connectionLost(Failure(reason))

    def peerClosed(self, reason: Optional[Exception] = None) -> None:
        """
        Simulate the peer closing the connection (or resetting it).
        """
        if self.closed:
            return
        self.disconnecting = True
        self._lose(reason or error.ConnectionDone())

    def peerHalfClosed(self) -> None:
        """
        Simulate the peer's FIN: C{readConnectionLost} for a half-closeable
        protocol, else the connection is lost.
        """
        p = IHalfCloseableProtocol(self.protocol, None)
        if p is not None:
            p.readConnectionLost()
        else:
            self.peerClosed()

    @property
    def paused(self) -> bool:
        """
        Whether reading from this transport is paused.
        """
        return self.producerState == "paused"


def connect(factory: Any, peer: Tuple[str, int] = ("127.0.0.1", 40000)) -> Tuple[Any, FakeTransport]:
    """
    Build a protocol from C{factory} for a client at C{peer} and connect it
    to a L{FakeTransport}.

    @return: C{(protocol, transport)}.
    """
    transport = FakeTransport(peer)
    proto = factory.buildProtocol(transport.getPeer())
    transport.protocol = proto
    proto.makeConnection(transport)
    return proto, transport


@attr.s(auto_attribs=True, eq=False)
class ConnectAttempt:
    """
    One connection attempt made through a L{FakeConnector}.  The test
    decides its outcome with L{succeed} or L{fail}.

    @ivar host: the address dialled.
    @ivar port: the port dialled.
    @ivar factory: the client factory passed to C{connect}.
    @ivar deferred: what C{connect} returned.
    @ivar protocol: the upstream protocol, once L{succeed} ran.
    @ivar transport: its L{FakeTransport}, once L{succeed} ran.
    """

    host: str
    port: int
    factory: Any
    deferred: defer.Deferred
    protocol: Any = None
    transport: Optional[FakeTransport] = None
    cancelled: bool = False

    def succeed(self) -> FakeTransport:
        """
        Complete the connection: build the protocol, connect it to a fresh
        L{FakeTransport} and fire the Deferred.

        @return: the upstream side's transport (its C{value()} is what the
            proxy sent upstream).
        """
        transport = FakeTransport(peer=(self.host, self.port), host=("127.0.0.1", 50000))
        proto = self.factory.buildProtocol(transport.getPeer())
        transport.protocol = proto
        proto.makeConnection(transport)
        self.protocol, self.transport = proto, transport
        self.deferred.callback(proto)
        return transport

    def fail(self, reason: Optional[Exception] = None) -> None:
        """
        Fail the connection (default: connection refused).
        """
        self.deferred.errback(Failure(reason or error.ConnectionRefusedError()))


@implementer(IStreamClientEndpoint)
@attr.s(auto_attribs=True)
class _FakeEndpoint:
    connector: "FakeConnector"
    host: str
    port: int

    def connect(self, factory: Any) -> defer.Deferred:
        attempt: ConnectAttempt

        def cancel(d: defer.Deferred) -> None:
            attempt.cancelled = True
            d.errback(Failure(defer.CancelledError()))

        d: defer.Deferred = defer.Deferred(cancel)
        attempt = ConnectAttempt(self.host, self.port, factory, d)
        self.connector.attempts.append(attempt)
        if self.connector.autoConnect:
            attempt.succeed()
        return d


@implementer(IUpstreamConnector)
class FakeConnector:
    """
    An L{IUpstreamConnector} with a fixed host map and recorded connection
    attempts, for tests without a resolver or sockets.

    @ivar hosts: maps a name to its addresses; IP literals resolve to
        themselves; other names fail with L{ResolveError}.
    @ivar attempts: every L{ConnectAttempt}, in order.
    @ivar autoConnect: when true, attempts succeed at once.
    @ivar pendingResolves: names whose resolution the test controls: map a
        name to a Deferred here and C{resolve} returns it.
    """

    def __init__(self, hosts: Optional[Dict[str, Sequence[str]]] = None, autoConnect: bool = False) -> None:
        self.hosts: Dict[str, List[str]] = {k.lower(): list(v) for k, v in (hosts or {}).items()}
        self.attempts: List[ConnectAttempt] = []
        self.autoConnect = autoConnect
        self.pendingResolves: Dict[str, defer.Deferred] = {}
        self.descriptions: List[str] = []

    def resolve(self, host: str, port: int) -> defer.Deferred:
        from txproxy.connector import isIPLiteral

        if host in self.pendingResolves:
            return self.pendingResolves[host]
        if isIPLiteral(host):
            return defer.succeed([host])
        addresses = self.hosts.get(host.lower())
        if not addresses:
            return defer.fail(ResolveError(f"cannot resolve {host}"))
        return defer.succeed(list(addresses))

    def endpointFor(self, host: str, port: int) -> Any:
        return _FakeEndpoint(self, host, port)

    def endpointForDescription(self, description: str) -> Any:
        self.descriptions.append(description)
        from twisted.internet.endpoints import _parseClientTCP  # type: ignore[attr-defined]

        kind, _, rest = description.partition(":")
        args: List[str] = []
        kwargs: Dict[str, str] = {}
        for part in rest.split(":"):
            if "=" in part:
                k, _, v = part.partition("=")
                kwargs[k] = v
            else:
                args.append(part)
        parsed = _parseClientTCP(*args, **kwargs)
        return _FakeEndpoint(self, parsed["host"], int(parsed["port"]))

    @property
    def last(self) -> ConnectAttempt:
        """
        The most recent attempt.
        """
        return self.attempts[-1]


def listenerConfig(**kwargs: Any) -> Any:
    """
    A L{txproxy.config.ListenerConfig} with test-friendly defaults, built
    from long option names (C{listenerConfig(connect_ports="*")}).
    """
    from txproxy import config

    options: List[Tuple[str, Any]] = []
    for key, value in kwargs.items():
        name = key.replace("_", "-")
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            options.append((name, str(v) if not isinstance(v, str) else v))
    return config.fromFlags(["tcp:0"], options).listeners[0]


def forwardFactory(
    connector: Optional[FakeConnector] = None,
    clock: Optional[Clock] = None,
    listener: Any = None,
    protocol: Any = None,
    **options: Any,
) -> Any:
    """
    A L{txproxy.forward.ForwardProxyFactory} wired to fakes: a
    L{FakeConnector}, a L{Clock}, and a listener built from C{options}.

    @param protocol: a L{ForwardProxyProtocol} subclass to use.
    """
    from txproxy.forward import ForwardProxyFactory

    factory = ForwardProxyFactory(
        listener if listener is not None else listenerConfig(**options),
        connector if connector is not None else FakeConnector(),
        clock if clock is not None else Clock(),
    )
    if protocol is not None:
        factory.protocol = protocol
    return factory
