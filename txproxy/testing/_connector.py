# -*- test-case-name: tests.test_testing -*-
"""
L{connect}, which builds a protocol from a factory and connects it to a
L{FakeTransport}; and L{FakeConnector}: the production L{txproxy.connector.Connector} on a fake
reactor, with a fixed resolver and a record of every connection attempt
(L{ConnectAttempt}) for the test to succeed or fail.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import attr
from twisted.internet import defer, error
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import (
    IConnector,
    IHostnameResolver,
    IHostResolution,
    IReactorPluggableNameResolver,
    IReactorTCP,
    IReactorTime,
)
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface import implementer

from txproxy.connector import Connector, isIPLiteral
from txproxy.interfaces import IUpstreamConnector
from txproxy.testing._transport import FakeTransport, _address


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
