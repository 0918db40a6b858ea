# -*- test-case-name: tests.test_testing -*-
"""
Public helpers for testing txproxy protocols, and your subclasses of them,
with trial and no sockets.

    from twisted.trial.unittest import SynchronousTestCase
    from txproxy.forward import ForwardProxyProtocol
    from txproxy.hooks import Refuse
    from txproxy.testing import FakeConnector, connect, forwardFactory

    class MyProxy(ForwardProxyProtocol):
        def allowTunnel(self, request):
            if request.target.host == "blocked.test":
                raise Refuse(403, "blocked")
            return True

    class MyProxyTests(SynchronousTestCase):
        def test_blocked(self):
            connector = FakeConnector({"blocked.test": ["192.0.2.1"]})
            factory = forwardFactory(connector=connector, protocol=MyProxy)
            proto, transport = connect(factory)
            proto.dataReceived(b"CONNECT blocked.test:443 HTTP/1.1\\r\\nHost: blocked.test\\r\\n\\r\\n")
            self.assertIn(b" 403 ", transport.value())
            self.assertEqual(connector.attempts, [])

One factory helper per mode (L{forwardFactory}, L{reverseFactory},
L{tcpFactory}, L{transparentFactory}, L{sniFactory}) builds the mode's real
factory from option names, with a L{FakeConnector} and a L{Clock}.
L{FakeConnector} I{is} a L{txproxy.connector.Connector}, on a fake reactor
whose C{connectTCP} records a L{ConnectAttempt} and whose name resolver
reads a fixed host map: name resolution, C{connect}, endpoints and
endpoint descriptions all run txproxy's and Twisted's own code, and only
the socket is fake.

Everything here is built on Twisted's L{StringTransport} and L{Clock}; the
names below are the stable surface (Twisted's C{iosim} carries no
compatibility promise, so it is wrapped rather than re-exported).
"""

from __future__ import annotations

import struct
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import attr
from twisted.internet import defer, error
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import (
    IConnector,
    IHalfCloseableProtocol,
    IHostnameResolver,
    IHostResolution,
    IReactorPluggableNameResolver,
    IReactorTCP,
    IReactorTime,
)
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from txproxy import config
from txproxy.auth import checkBcrypt
from txproxy.config import RouteConfig
from txproxy.connector import Connector, isIPLiteral
from txproxy.forward import ForwardProxyFactory
from txproxy.interfaces import IUpstreamConnector
from txproxy.reverse import ReverseProxyFactory
from txproxy.router import RouterService
from txproxy.stream.sni import SNIRouterFactory
from txproxy.stream.tcp import TCPProxyFactory, TransparentFactory

__all__ = [
    "Clock",
    "FakeTransport",
    "FakeConnector",
    "ConnectAttempt",
    "connect",
    "clientHello",
    "listenerConfig",
    "forwardFactory",
    "reverseFactory",
    "tcpFactory",
    "transparentFactory",
    "sniFactory",
    "FakePasswordVerifier",
]


def _address(host: str, port: int) -> Any:
    return IPv6Address("TCP", host, port) if ":" in host else IPv4Address("TCP", host, port)


class FakeTransport(StringTransport):
    """
    A L{StringTransport} that behaves like a TCP connection for a proxy:
    closing calls the protocol's C{connectionLost}, half-close is recorded
    (and reported to an L{IHalfCloseableProtocol}), and reading can be
    paused and resumed.

    Closing is synchronous: C{loseConnection} and C{abortConnection} run
    the protocol's C{connectionLost} before they return (a reactor runs it
    on a later turn, once the buffer is flushed).

    @ivar protocol: the connected protocol.
    @ivar writeClosed: whether C{loseWriteConnection} was called.
    @ivar aborted: whether C{abortConnection} was called.
    @ivar closed: whether the protocol's C{connectionLost} has run.
    """

    protocol: Any = None
    writeClosed = False
    aborted = False
    closed = False
    #: Told the reason once C{connectionLost} has run (the attempt that
    #: made an upstream connection reports the loss to its client factory,
    #: as a reactor's connector does).
    _onLost: Optional[Callable[[Failure], None]] = None

    def __init__(self, peer: Tuple[str, int] = ("127.0.0.1", 40000), host: Tuple[str, int] = ("127.0.0.1", 3128)):
        """
        @param peer: the C{(host, port)} of the other end (C{getPeer()}).
        @param host: the C{(host, port)} of this end (C{getHost()}).
        """
        super().__init__(hostAddress=_address(*host), peerAddress=_address(*peer))

    def loseConnection(self) -> None:
        """
        Close the connection: the protocol's C{connectionLost} runs with
        L{error.ConnectionDone}.  Repeated calls do nothing.
        """
        if self.disconnecting:
            return
        super().loseConnection()
        self._lose(error.ConnectionDone())

    def abortConnection(self) -> None:
        """
        Reset the connection: the protocol's C{connectionLost} runs with
        L{error.ConnectionAborted} (unless it already ran).
        """
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
        failure = Failure(reason)
        if self.protocol is not None:
            self.protocol.connectionLost(failure)
        onLost, self._onLost = self._onLost, None
        if onLost is not None:
            onLost(failure)

    def peerClosed(self, reason: Optional[Exception] = None) -> None:
        """
        Simulate the peer closing the connection (or resetting it).

        @param reason: the exception C{connectionLost} gets (default
            L{error.ConnectionDone}, a clean close).
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
    to a L{FakeTransport}, as a listening port does with an accepted
    connection.

    A L{FakeConnector} made without C{clock=} (or C{connectTimeout=}) that
    is the factory's C{connector} takes the factory's C{clock} (and its
    listener's connect timeout), as C{twistd txproxy} gives a listener's
    factory and connector one reactor: C{clock.advance()} then fires the
    connect timeouts of direct dials too.

    @param factory: any server factory (a mode's factory, or yours).
    @param peer: the client's C{(host, port)}.
    @return: C{(protocol, transport)}: feed the client's bytes to
        C{protocol.dataReceived}; C{transport.value()} is what the proxy
        wrote back.
    """
    connector = getattr(factory, "connector", None)
    if isinstance(connector, FakeConnector):
        connector._wire(getattr(factory, "clock", None), getattr(factory, "listener", None))
    transport = FakeTransport(peer)
    proto = factory.buildProtocol(transport.getPeer())
    transport.protocol = proto
    proto.makeConnection(transport)
    return proto, transport


# -- the connector ----------------------------------------------------------


@implementer(IConnector)
class ConnectAttempt:
    """
    One connection attempt made through a L{FakeConnector}: what the fake
    reactor's C{connectTCP} returns, an C{IConnector} like a real reactor's.
    The test decides its outcome with L{succeed} or L{fail}; until then it
    is I{connecting}.

    @ivar host: the address dialled (as given to C{connectTCP}: a name when
        an endpoint was given one).
    @ivar port: the port dialled.
    @ivar factory: the client factory given to C{connectTCP}.
    @ivar timeout: the connect timeout given to C{connectTCP}, or L{None}.
    @ivar bindAddress: the local address asked for, or L{None}.
    @ivar state: C{"connecting"}, C{"connected"} or C{"disconnected"}, as
        L{twisted.internet.base.BaseConnector.state}.
    @ivar protocol: the upstream protocol, once L{succeed} ran: the proxy's
        own (not the wrapper an endpoint puts around it), so its
        C{dataReceived} plays the server.
    @ivar transport: its L{FakeTransport}, once L{succeed} ran.
    @ivar cancelled: whether the proxy gave up on the attempt before it
        connected (C{stopConnecting}: the client left, or a timeout fired),
        or its own connect timeout expired.
    @ivar timedOut: whether the attempt's own connect timeout (the
        C{timeout} given to C{connectTCP}) expired.
    """

    def __init__(
        self,
        connector: "FakeConnector",
        host: str,
        port: int,
        factory: Any,
        timeout: Optional[float],
        bindAddress: Optional[Tuple[str, int]],
    ) -> None:
        self.host = host
        self.port = port
        self.factory = factory
        self.timeout = timeout
        self.bindAddress = bindAddress
        self.state = "disconnected"
        self.protocol: Any = None
        self.transport: Optional[FakeTransport] = None
        self.cancelled = False
        self.timedOut = False
        self._connector = connector
        self._timeoutCall: Any = None

    def __repr__(self) -> str:
        return f"<ConnectAttempt to {self.host}:{self.port} {self.state}>"

    def _start(self) -> None:
        # What twisted.internet.base.BaseConnector.connect does.
        self.state = "connecting"
        self.protocol = self.transport = None
        self.cancelled = self.timedOut = False
        self._connector.attempts.append(self)
        self.factory.doStart()
        if self.timeout:
            self._timeoutCall = self._connector.clock.callLater(self.timeout, self._timedOut)
        self.factory.startedConnecting(self)

    def _cancelTimeout(self) -> None:
        call, self._timeoutCall = self._timeoutCall, None
        if call is not None and call.active():
            call.cancel()

    def _checkConnecting(self) -> None:
        if self.state != "connecting":
            raise RuntimeError(f"{self!r} is not connecting")

    def succeed(self) -> FakeTransport:
        """
        Complete the connection: the client factory builds its protocol,
        which is connected to a fresh L{FakeTransport}.

        @return: the upstream side's transport (its C{value()} is what the
            proxy sent upstream).
        @raise RuntimeError: if the attempt is no longer connecting.
        """
        self._checkConnecting()
        self._cancelTimeout()
        self.state = "connected"
        peer = self._connector._addressOf(self.host)
        transport = FakeTransport(peer=(peer, self.port), host=("::1" if ":" in peer else "127.0.0.1", 50000))
        self.transport = transport
        proto = self.factory.buildProtocol(transport.getPeer())
        if proto is None:
            # The factory declined: the reactor closes the socket.
            transport.disconnecting = True
            transport.closed = True
            self._lost(Failure(error.ConnectionDone()))
            return transport
        transport.protocol = proto
        transport._onLost = self._lost
        self.protocol = _unwrapped(proto)
        proto.makeConnection(transport)
        return transport

    def fail(self, reason: Optional[Exception] = None) -> None:
        """
        Fail the connection: the client factory's C{clientConnectionFailed}
        runs with C{reason}.

        @param reason: default L{error.ConnectionRefusedError} (so C{502}).
        @raise RuntimeError: if the attempt is no longer connecting.
        """
        self._checkConnecting()
        self._failWith(reason or error.ConnectionRefusedError())

    def _timedOut(self) -> None:
        self._timeoutCall = None
        self.timedOut = self.cancelled = True
        self._failWith(error.TimeoutError())

    def _failWith(self, reason: Exception) -> None:
        # BaseConnector.connectionFailed.
        self._cancelTimeout()
        self.state = "disconnected"
        self.factory.clientConnectionFailed(self, Failure(reason))
        if self.state == "disconnected":
            self.factory.doStop()

    def _lost(self, reason: Failure) -> None:
        # BaseConnector.connectionLost.
        self.state = "disconnected"
        self.factory.clientConnectionLost(self, reason)
        if self.state == "disconnected":
            self.factory.doStop()

    # -- IConnector

    def stopConnecting(self) -> None:
        """
        Abandon the attempt: C{clientConnectionFailed} runs with
        L{error.UserError}, and L{cancelled} is set.

        @raise error.NotConnectingError: if it is not connecting.
        """
        if self.state != "connecting":
            raise error.NotConnectingError("we're not trying to connect")
        self.cancelled = True
        self._failWith(error.UserError())

    def disconnect(self) -> None:
        """
        Stop connecting, or close the connection once connected.
        """
        if self.state == "connecting":
            self.stopConnecting()
        elif self.state == "connected" and self.transport is not None:
            self.transport.loseConnection()

    def connect(self) -> None:
        """
        Try again (a reconnecting client factory does this after a
        failure): the attempt is recorded again, connecting.

        @raise RuntimeError: unless it is disconnected.
        """
        if self.state != "disconnected":
            raise RuntimeError("can't connect in this state")
        self._start()

    def getDestination(self) -> Any:
        """
        The address dialled, as an C{IPv4Address} or C{IPv6Address}.
        """
        return _address(self.host, self.port)


def _unwrapped(proto: Any) -> Any:
    """
    The protocol an endpoint's wrapper (Twisted's C{_WrappingProtocol})
    carries, else C{proto}.
    """
    from twisted.internet.endpoints import _WrappingProtocol

    while isinstance(proto, _WrappingProtocol):
        proto = proto._wrappedProtocol
    return proto


@implementer(IHostResolution)
@attr.s(auto_attribs=True)
class _Resolution:
    name: str

    def cancel(self) -> None:
        pass


@implementer(IHostnameResolver)
class _FixedResolver:
    """
    The fake reactor's name resolver: answers from the connector's host map
    (and C{pendingResolves}), synchronously.
    """

    def __init__(self, connector: "FakeConnector") -> None:
        self._connector = connector

    def resolveHostName(
        self,
        resolutionReceiver: Any,
        hostName: str,
        portNumber: int = 0,
        addressTypes: Optional[Sequence[type]] = None,
        transportSemantics: str = "TCP",
    ) -> Any:
        resolution = _Resolution(hostName)
        resolutionReceiver.resolutionBegan(resolution)
        wanted = tuple(addressTypes) if addressTypes else (IPv4Address, IPv6Address)

        def deliver(addresses: Sequence[str]) -> None:
            for host in addresses:
                address = _address(host, portNumber)
                if isinstance(address, wanted):
                    resolutionReceiver.addressResolved(address)
            resolutionReceiver.resolutionComplete()

        pending = self._connector.pendingResolves.get(hostName)
        if pending is None:
            deliver(self._connector._lookup(hostName))
            return resolution

        def fired(result: Any) -> Any:
            # A failure means "no addresses", as with a real resolver; the
            # result stays on the test's Deferred for a later resolution.
            if isinstance(result, Failure):
                deliver(())
                return None
            deliver(list(result or ()))
            return result

        pending.addBoth(fired)
        return resolution


@implementer(IReactorTCP, IReactorTime, IReactorPluggableNameResolver)
class _FakeReactor:
    """
    The reactor under a L{FakeConnector}: C{connectTCP} records a
    L{ConnectAttempt}, time is the connector's clock, names come from its
    host map.  It is not a real reactor, so L{txproxy.connector.dialerFor}
    picks its C{connectTCP}.
    """

    def __init__(self, connector: "FakeConnector") -> None:
        self._connector = connector
        self.nameResolver: Any = _FixedResolver(connector)

    def installNameResolver(self, resolver: Any) -> Any:
        old, self.nameResolver = self.nameResolver, resolver
        return old

    def connectTCP(
        self,
        host: str,
        port: int,
        factory: Any,
        timeout: Optional[float] = 30,
        bindAddress: Optional[Tuple[str, int]] = None,
    ) -> ConnectAttempt:
        attempt = ConnectAttempt(self._connector, host, port, factory, timeout, bindAddress)
        attempt._start()
        if self._connector.autoConnect and attempt.state == "connecting":
            attempt.succeed()
        return attempt

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        raise error.CannotListenError(interface, port, NotImplementedError("a FakeConnector cannot listen"))

    def callLater(self, delay: float, callable: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        return self._connector.clock.callLater(delay, callable, *args, **kw)

    def seconds(self) -> float:
        return self._connector.clock.seconds()

    def getDelayedCalls(self) -> Any:
        return self._connector.clock.getDelayedCalls()


@implementer(IUpstreamConnector)
class FakeConnector(Connector):
    """
    The real L{Connector} on a fake reactor, for tests without a resolver or
    sockets: its C{resolve}, C{connect}, C{endpointFor} and
    C{endpointForDescription} (the whole L{IUpstreamConnector}) are the
    production code; only the reactor under them is fake.  Every
    C{connectTCP} (direct, or from an endpoint) is recorded as a
    L{ConnectAttempt} whose outcome the test decides.
    L{txproxy.connector.directDial} accepts it as it does the stock
    connector, so the modes dial IP literals without an endpoint, as in
    production.

    The factory helpers of this module give a connector they build (or one
    made without C{clock=} and C{connectTimeout=}) the factory's clock and
    the listener's connect timeout, as C{twistd txproxy} gives the real
    connector its reactor and the listener's C{--connect-timeout}.

    @ivar hosts: maps a lower-case name to its addresses; IP literals
        resolve to themselves; other names do not resolve (the connector's
        C{resolve} fails with L{txproxy.errors.ResolveError}).
    @ivar attempts: every L{ConnectAttempt}, in order.
    @ivar autoConnect: when true, attempts succeed at once, inside
        C{connectTCP} (a real reactor never connects before C{connectTCP}
        returns: prefer calling L{ConnectAttempt.succeed}).
    @ivar pendingResolves: names whose resolution the test controls: map a
        name to a Deferred here and the name resolves when it fires (with a
        list of addresses; a failure, or an empty list, resolves nothing).
    @ivar descriptions: every endpoint description given to
        C{endpointForDescription}, in order.
    @ivar clock: the L{Clock} of connect timeouts (the attempts' own:
        callers add their own Deferred timeouts on their clock).
    """

    def __init__(
        self,
        hosts: Optional[Mapping[str, Sequence[str]]] = None,
        autoConnect: bool = False,
        clock: Optional[Clock] = None,
        connectTimeout: Optional[float] = None,
        bindAddress: Optional[str] = None,
    ) -> None:
        """
        @param hosts: the host map (see L{hosts}).
        @param autoConnect: see L{autoConnect}.
        @param clock: the clock of the attempts' connect timeouts; when
            L{None}, a factory helper gives its own, else a new one is made.
        @param connectTimeout: seconds each connect may take (the
            C{timeout} given to C{connectTCP}); when L{None}, a factory
            helper gives the listener's, else 10.
        @param bindAddress: the local address to connect from.
        """
        super().__init__(_FakeReactor(self), 10.0 if connectTimeout is None else connectTimeout, bindAddress)
        self.hosts: Dict[str, List[str]] = {k.lower(): list(v) for k, v in (hosts or {}).items()}
        self.attempts: List[ConnectAttempt] = []
        self.autoConnect = autoConnect
        self.pendingResolves: Dict[str, "defer.Deferred[Any]"] = {}
        self.descriptions: List[str] = []
        self._clock = clock
        self._timeoutGiven = connectTimeout is not None

    @property
    def clock(self) -> Clock:
        """
        The clock of the attempts' connect timeouts.
        """
        if self._clock is None:
            self._clock = Clock()
        return self._clock

    def _wire(self, clock: Any, listener: Any) -> None:
        """
        Take a factory's clock and listener connect timeout, unless given
        ones at construction (see the class docstring).
        """
        if self._clock is None and clock is not None:
            self._clock = clock
        if not self._timeoutGiven and listener is not None:
            self.connectTimeout = listener.connectTimeout
            self._timeoutGiven = True

    def _lookup(self, host: str) -> List[str]:
        if isIPLiteral(host):
            return [host]
        return list(self.hosts.get(host.lower().rstrip("."), ()))

    def _addressOf(self, host: str) -> str:
        """
        The address a C{connectTCP} to C{host} reaches: C{host} itself, or
        the first address of a mapped name (an unmapped name is kept).
        """
        found = self._lookup(host)
        return found[0] if found else host

    def endpointForDescription(self, description: str) -> Any:
        """
        Record C{description} in L{descriptions}, then build its endpoint
        on the fake reactor as L{Connector} does (C{clientFromString}).
        """
        self.descriptions.append(description)
        return super().endpointForDescription(description)

    @property
    def last(self) -> ConnectAttempt:
        """
        The most recent attempt.

        @raise IndexError: when nothing was dialled.
        """
        return self.attempts[-1]


# -- listener configuration and factories ---------------------------------


def listenerConfig(**kwargs: Any) -> Any:
    """
    A L{txproxy.config.ListenerConfig} with test-friendly defaults, built
    from long option names with underscores for dashes, validated as on the
    command line (C{listenerConfig(connect_ports="*")}).  A list value
    repeats the option (C{route=[...]}).  The listen address is C{tcp:0}.

    @raise txproxy.errors.ConfigError: for an unknown option or bad value.
    """
    options: List[Tuple[str, Any]] = []
    for key, value in kwargs.items():
        name = key.replace("_", "-")
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            options.append((name, str(v) if not isinstance(v, str) else v))
    return config.fromFlags(["tcp:0"], options).listeners[0]


def _fakes(connector: Any, clock: Any, listener: Any) -> Tuple[Any, Any]:
    """
    The connector and clock of a helper-built factory: new fakes where none
    were given; a L{FakeConnector} takes the clock and connect timeout.
    """
    if clock is None:
        clock = Clock()
    if connector is None:
        connector = FakeConnector(clock=clock, connectTimeout=listener.connectTimeout)
    elif isinstance(connector, FakeConnector):
        connector._wire(clock, listener)
    return connector, clock


def _finish(factory: Any, protocol: Any) -> Any:
    if protocol is not None:
        factory.protocol = protocol
    return factory


def forwardFactory(
    connector: Optional[Any] = None,
    clock: Optional[Any] = None,
    listener: Any = None,
    protocol: Any = None,
    **options: Any,
) -> Any:
    """
    A L{txproxy.forward.ForwardProxyFactory} wired to fakes.

    @param connector: the upstream connector (default: a new
        L{FakeConnector}).
    @param clock: the clock of every timer (default: a new L{Clock}).
    @param listener: the listener configuration (default: one built from
        C{options} with L{listenerConfig}).
    @param protocol: a L{ForwardProxyProtocol} subclass to use.
    @param options: listener options (C{connect_ports="*"}, ...).
    """
    listener = listener if listener is not None else listenerConfig(**options)
    connector, clock = _fakes(connector, clock, listener)
    return _finish(ForwardProxyFactory(listener, connector, clock), protocol)


_Routes = Union[Mapping[str, Union[str, Sequence[str]]], Sequence[Any], str, None]


def _routeOptions(routes: _Routes) -> Tuple[List[str], List[Any]]:
    """
    The C{--route} rules of C{routes}, and the L{RouteConfig} values among
    them (in order; L{None} for a rule given as text).
    """
    if routes is None:
        return [], []
    if isinstance(routes, str):
        routes = [routes]
    rules: List[str] = []
    configs: List[Any] = []
    if isinstance(routes, Mapping):
        for key, urls in routes.items():
            urls = [urls] if isinstance(urls, str) else list(urls)
            rules.append(f"{key}={','.join(urls)}")
            configs.append(None)
        return rules, configs
    for item in routes:
        if isinstance(item, RouteConfig):
            # Validated as a rule with the same host, prefix and upstreams;
            # its other settings are kept.
            rules.append(f"{item.host}{item.prefix}={','.join(str(u) for u in item.upstreams)}")
            configs.append(item)
        else:
            rules.append(str(item))
            configs.append(None)
    return rules, configs


def _routedListener(mode: str, routes: _Routes, listener: Any, options: Dict[str, Any]) -> Any:
    if listener is not None:
        if routes is not None or options:
            raise TypeError("give either listener= or routes and options, not both")
        return listener
    if routes is None:
        raise TypeError(f"{mode}: routes (or listener=) are needed")
    rules, configs = _routeOptions(routes)
    listener = listenerConfig(mode=mode, route=rules, **options)
    if any(c is not None for c in configs):
        listener = attr.evolve(
            listener, routes=tuple(c if c is not None else r for c, r in zip(configs, listener.routes))
        )
    return listener


def _router(router: Any, listener: Any, connector: Any, clock: Any) -> Any:
    if router is not None:
        return router
    return RouterService([listener], connector, clock)


def reverseFactory(
    routes: _Routes = None,
    connector: Optional[Any] = None,
    clock: Optional[Any] = None,
    listener: Any = None,
    protocol: Any = None,
    router: Any = None,
    **options: Any,
) -> Any:
    """
    A L{txproxy.reverse.ReverseProxyFactory} wired to fakes, with a router
    holding C{routes}.

    @param routes: a mapping of C{"HOST[/PREFIX]"} to one upstream URL or a
        list of them (C{{"www.example.com": ["http://127.0.0.1:8001"]}});
        or a list of C{--route} rules (C{"a.test/api=http://192.0.2.1:80"})
        and L{txproxy.config.RouteConfig} values (for settings with no
        flag, such as C{stripPrefix}); or one rule.
    @param connector: the upstream connector (default: a new
        L{FakeConnector}).
    @param clock: the clock of every timer (default: a new L{Clock}).
    @param listener: a whole listener configuration instead of C{routes}
        and C{options}.
    @param protocol: a L{ReverseProxyProtocol} subclass to use.
    @param router: a L{txproxy.router.RouterService} that knows the
        listener (default: a new one for it, not started: active health
        checks run once you call its C{startService}).
    @param options: listener options (C{connect_timeout="3"}, ...).
    """
    listener = _routedListener("reverse", routes, listener, options)
    connector, clock = _fakes(connector, clock, listener)
    factory = ReverseProxyFactory(listener, connector, clock, router=_router(router, listener, connector, clock))
    return _finish(factory, protocol)


def tcpFactory(
    upstreams: Union[str, Sequence[str], None] = None,
    connector: Optional[Any] = None,
    clock: Optional[Any] = None,
    listener: Any = None,
    protocol: Any = None,
    router: Any = None,
    **options: Any,
) -> Any:
    """
    A L{txproxy.stream.tcp.TCPProxyFactory} (C{--mode tcp}) wired to fakes.

    @param upstreams: one client endpoint description or a list of them,
        as C{--upstream} takes (C{"tcp:192.0.2.10:6379"}).
    @param connector: the upstream connector (default: a new
        L{FakeConnector}).
    @param clock: the clock of every timer (default: a new L{Clock}).
    @param listener: a whole listener configuration instead of
        C{upstreams} and C{options}.
    @param protocol: a L{TCPProxyProtocol} subclass to use.
    @param router: a L{txproxy.router.RouterService} that knows the
        listener (default: the factory's own).
    @param options: listener options (C{balance="leastconn"}, ...).
    """
    if listener is None:
        if upstreams is None:
            raise TypeError("tcpFactory: upstreams (or listener=) are needed")
        listener = listenerConfig(mode="tcp", upstream=upstreams, **options)
    elif upstreams is not None or options:
        raise TypeError("give either listener= or upstreams and options, not both")
    connector, clock = _fakes(connector, clock, listener)
    return _finish(TCPProxyFactory(listener, connector, clock, router=router), protocol)


_Destination = Union[Tuple[str, int], Callable[[Any], Optional[Tuple[str, int]]], None]


def transparentFactory(
    destination: _Destination,
    connector: Optional[Any] = None,
    clock: Optional[Any] = None,
    listener: Any = None,
    protocol: Any = None,
    localAddresses: Sequence[str] = ("127.0.0.0/8", "::1/128"),
    **options: Any,
) -> Any:
    """
    A L{txproxy.stream.tcp.TransparentFactory} (C{--mode transparent}) wired to
    fakes, whose original-destination lookup is C{destination} instead of
    C{SO_ORIGINAL_DST}: no iptables rule, no real socket.

    The loop guard still runs: a destination equal to the accepted
    connection's own address (L{FakeTransport}'s C{127.0.0.1:3128} by
    default) is refused with C{403}.

    @param destination: the C{(host, port)} every connection was meant
        for; or a callable taking the accepted transport and returning one
        (or L{None}: not redirected, C{400}); or L{None}.
    @param connector: the upstream connector (default: a new
        L{FakeConnector}).
    @param clock: the clock of every timer (default: a new L{Clock}).
    @param listener: a whole listener configuration instead of C{options}.
    @param protocol: a L{TCPProxyProtocol} subclass to use.
    @param localAddresses: this host's networks for the loop guard, instead
        of reading them from C{/proc}.
    @param options: listener options (C{proxy_protocol_send="v1"}, ...).
    """
    if listener is None:
        listener = listenerConfig(mode="transparent", **options)
    elif options:
        raise TypeError("give either listener= or options, not both")
    connector, clock = _fakes(connector, clock, listener)
    factory = TransparentFactory(listener, connector, clock)
    lookup: Callable[[Any], Optional[Tuple[str, int]]]
    if callable(destination):
        lookup = destination
    else:
        fixed = (destination[0], destination[1]) if destination is not None else None

        def lookup(transport: Any) -> Optional[Tuple[str, int]]:
            return fixed

    # TransparentFactory's documented seams for tests: the lookup, and the
    # host's networks (read from /proc otherwise).
    factory.originalDestination = lookup  # type: ignore[assignment]
    local = tuple(localAddresses)
    factory.localAddresses = lambda: local  # type: ignore[method-assign]
    return _finish(factory, protocol)


def sniFactory(
    routes: _Routes = None,
    connector: Optional[Any] = None,
    clock: Optional[Any] = None,
    listener: Any = None,
    protocol: Any = None,
    router: Any = None,
    **options: Any,
) -> Any:
    """
    A L{txproxy.stream.sni.SNIRouterFactory} (C{--mode sni}) wired to fakes, with a
    router holding C{routes}.  Drive it with L{clientHello}.

    @param routes: a mapping of server name (exact, C{*.suffix} or C{*}) to
        one C{tcp://host:port} URL or a list of them
        (C{{"a.test": "tcp://192.0.2.1:443"}}); or a list of C{--route}
        rules and L{txproxy.config.RouteConfig} values; or one rule.
    @param connector: the upstream connector (default: a new
        L{FakeConnector}).
    @param clock: the clock of every timer (default: a new L{Clock}).
    @param listener: a whole listener configuration instead of C{routes}
        and C{options}.
    @param protocol: a L{SNIRouterProtocol} subclass to use.
    @param router: a L{txproxy.router.RouterService} that knows the
        listener (default: the factory's own).
    @param options: listener options (C{header_timeout="5"}, ...).
    """
    listener = _routedListener("sni", routes, listener, options)
    connector, clock = _fakes(connector, clock, listener)
    return _finish(SNIRouterFactory(listener, connector, clock, router=router), protocol)


def clientHello(serverName: Optional[str] = None, alpn: Sequence[str] = ()) -> bytes:
    """
    The bytes a TLS client sends first: one TLS record holding a
    ClientHello (TLS 1.3 and 1.2 offered) with C{serverName} as its SNI, to
    feed an C{sni} listener's protocol.

    @param serverName: the server name, or L{None} for no SNI extension.
    @param alpn: ALPN protocol names to offer (C{("h2", "http/1.1")}).
    @return: the record.
    """

    def extension(kind: int, data: bytes) -> bytes:
        return struct.pack("!HH", kind, len(data)) + data

    extensions = b""
    if serverName is not None:
        name = serverName.encode("idna")
        entry = struct.pack("!BH", 0, len(name)) + name
        extensions += extension(0, struct.pack("!H", len(entry)) + entry)
    if alpn:
        names = b"".join(struct.pack("!B", len(n)) + n for n in (p.encode("latin-1") for p in alpn))
        extensions += extension(16, struct.pack("!H", len(names)) + names)
    extensions += extension(43, b"\x04\x03\x04\x03\x03")
    suites = b"\x13\x01\x13\x02\xc0\x2f"
    body = (
        b"\x03\x03"
        + b"\x42" * 32
        + b"\x20"
        + b"\x01" * 32
        + struct.pack("!H", len(suites))
        + suites
        + b"\x01\x00"
        + struct.pack("!H", len(extensions))
        + extensions
    )
    message = b"\x01" + len(body).to_bytes(3, "big") + body
    return struct.pack("!BHH", 22, 0x0301, len(message)) + message


class FakePasswordVerifier:
    """
    A stand-in for the thread pool that checks C{--auth}'s bcrypt hashes
    (L{txproxy.auth.Htpasswd.verifier}, or a factory's
    C{passwordVerifier}): each check is recorded and waits until the test
    fires it, on the test's thread.

    @ivar calls: the C{(password, hashed, deferred)} of every check, in
        order.
    """

    def __init__(self) -> None:
        self.calls: List[Tuple[bytes, bytes, "defer.Deferred[bool]"]] = []

    def __call__(self, password: bytes, hashed: bytes) -> "defer.Deferred[bool]":
        d: defer.Deferred[bool] = defer.Deferred()
        self.calls.append((password, hashed, d))
        return d

    @property
    def pending(self) -> int:
        """
        How many checks have not been fired yet.
        """
        return sum(1 for _, _, d in self.calls if not d.called)

    def fire(self, index: int = -1) -> bool:
        """
        Check call C{index} for real (bcrypt, on this thread) and fire its
        Deferred with the result.

        @return: the result.
        """
        password, hashed, d = self.calls[index]
        result = checkBcrypt(password, hashed)
        d.callback(result)
        return result

    def fireAll(self) -> None:
        """
        Fire every check not fired yet, in order.
        """
        for index, (_, _, d) in enumerate(list(self.calls)):
            if not d.called:
                self.fire(index)
