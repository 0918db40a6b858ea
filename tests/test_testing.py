# -*- test-case-name: tests.test_testing -*-
"""
Tests for L{txproxy.testing}: the fakes themselves (L{FakeTransport},
L{FakeConnector} and its attempts, L{clientHello}), and one factory helper
per mode, each driven end to end on fake transports.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

from twisted.internet import defer, error
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import (
    IConnector,
    IHalfCloseableProtocol,
    IHostnameResolver,
    IReactorPluggableNameResolver,
    IReactorTCP,
    IReactorTime,
)
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from txproxy import testing
from txproxy.accesslog import AccessRecord
from txproxy.stream.clienthello import ClientHelloReader
from txproxy.config import RouteConfig, UpstreamURL
from txproxy.connector import Connector, dialerFor, directDial
from txproxy.errors import ResolveError
from txproxy.forward import ForwardProxyFactory, ForwardProxyProtocol
from txproxy.hooks import Refuse, Target
from txproxy.interfaces import IUpstreamConnector
from txproxy.reverse import ReverseProxyFactory, ReverseProxyProtocol
from txproxy.router import RouterService
from txproxy.stream.sni import UNRECOGNIZED_NAME_ALERT, SNIRouterFactory, SNIRouterProtocol
from txproxy.stream._upstream import _Dial
from txproxy.stream.tcp import TCPProxyFactory, TCPProxyProtocol, TransparentFactory
from txproxy.testing import (
    ConnectAttempt,
    FakeConnector,
    FakeTransport,
    clientHello,
    connect,
    forwardFactory,
    listenerConfig,
    reverseFactory,
    sniFactory,
    tcpFactory,
    transparentFactory,
)

CONNECT = b"CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\n"


class _Log:
    def __init__(self) -> None:
        self.records: List[AccessRecord] = []

    def log(self, record: AccessRecord) -> None:
        self.records.append(record)


class _Recorder(Protocol):
    """
    A protocol that records what happens to it.
    """

    def __init__(self) -> None:
        self.events: List[Any] = []

    def connectionMade(self) -> None:
        self.events.append("made")

    def dataReceived(self, data: bytes) -> None:
        self.events.append(("data", data))

    def connectionLost(self, reason: Failure = Failure(error.ConnectionDone())) -> None:
        self.events.append(("lost", reason.type))


@implementer(IHalfCloseableProtocol)
class _HalfCloseableRecorder(_Recorder):
    def readConnectionLost(self) -> None:
        self.events.append("readLost")

    def writeConnectionLost(self) -> None:
        self.events.append("writeLost")


class _RecordingClientFactory(ClientFactory):
    """
    A client factory that records the calls a connector makes on it.
    """

    noisy = False

    def __init__(self) -> None:
        self.events: List[Any] = []
        self.built: List[_Recorder] = []

    def doStart(self) -> None:
        self.events.append("doStart")

    def doStop(self) -> None:
        self.events.append("doStop")

    def startedConnecting(self, connector: Any) -> None:
        self.events.append(("startedConnecting", connector))

    def buildProtocol(self, addr: Any) -> _Recorder:
        self.events.append(("buildProtocol", addr.host, addr.port))
        proto = _Recorder()
        self.built.append(proto)
        return proto

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.events.append(("failed", reason.type))

    def clientConnectionLost(self, connector: Any, reason: Failure) -> None:
        self.events.append(("lost", reason.type))


def _status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


class ExportTests(SynchronousTestCase):
    def test_allNamesExist(self) -> None:
        """
        Every name in C{__all__} exists, and every public helper of the
        module is in C{__all__}.
        """
        for name in testing.__all__:
            self.assertTrue(hasattr(testing, name), name)
        for name in ("reverseFactory", "tcpFactory", "transparentFactory", "sniFactory", "clientHello"):
            self.assertIn(name, testing.__all__)

    def test_clockIsTwistedClock(self) -> None:
        """
        C{txproxy.testing.Clock} is Twisted's L{Clock}.
        """
        self.assertIs(testing.Clock, Clock)


class FakeTransportTests(SynchronousTestCase):
    def connected(self, proto: Optional[Protocol] = None) -> Tuple[Any, FakeTransport]:
        proto = proto if proto is not None else _Recorder()
        transport = FakeTransport(peer=("192.0.2.7", 1234))
        transport.protocol = proto
        proto.makeConnection(transport)
        return proto, transport

    def test_addresses(self) -> None:
        """
        C{getPeer} and C{getHost} are TCP addresses of the given kind.
        """
        transport = FakeTransport(peer=("2001:db8::5", 1000), host=("127.0.0.1", 3128))
        self.assertEqual((transport.getPeer().type, transport.getPeer().host), ("TCP", "2001:db8::5"))
        self.assertEqual(type(transport.getPeer()).__name__, "IPv6Address")
        self.assertEqual((transport.getHost().host, transport.getHost().port), ("127.0.0.1", 3128))

    def test_loseConnectionRunsConnectionLostOnce(self) -> None:
        """
        C{loseConnection} runs the protocol's C{connectionLost} with
        L{error.ConnectionDone} before it returns; a second call does
        nothing.
        """
        proto, transport = self.connected()
        transport.loseConnection()
        transport.loseConnection()
        self.assertEqual(proto.events, ["made", ("lost", error.ConnectionDone)])
        self.assertTrue(transport.closed)
        self.assertTrue(transport.disconnecting)
        self.assertFalse(transport.aborted)

    def test_abortConnection(self) -> None:
        """
        C{abortConnection} loses the connection with
        L{error.ConnectionAborted} and records C{aborted}; after a clean
        close it changes nothing more.
        """
        proto, transport = self.connected()
        transport.abortConnection()
        self.assertEqual(proto.events[-1], ("lost", error.ConnectionAborted))
        self.assertTrue(transport.aborted)
        other, closed = self.connected()
        closed.loseConnection()
        closed.abortConnection()
        self.assertEqual(other.events, ["made", ("lost", error.ConnectionDone)])

    def test_loseWriteConnectionIsAHalfClose(self) -> None:
        """
        C{loseWriteConnection} records C{writeClosed} and tells a
        half-closeable protocol (once); the connection stays open.
        """
        proto, transport = self.connected(_HalfCloseableRecorder())
        transport.loseWriteConnection()
        transport.loseWriteConnection()
        self.assertTrue(transport.writeClosed)
        self.assertFalse(transport.closed)
        self.assertEqual(proto.events, ["made", "writeLost"])

    def test_peerHalfClosed(self) -> None:
        """
        The peer's FIN is C{readConnectionLost} for a half-closeable
        protocol; any other protocol loses the connection.
        """
        halfCloseable, transport = self.connected(_HalfCloseableRecorder())
        transport.peerHalfClosed()
        self.assertEqual(halfCloseable.events, ["made", "readLost"])
        self.assertFalse(transport.closed)
        plain, transport = self.connected()
        transport.peerHalfClosed()
        self.assertEqual(plain.events, ["made", ("lost", error.ConnectionDone)])
        self.assertTrue(transport.closed)

    def test_peerClosedWithReason(self) -> None:
        """
        The peer closing with a reason (a reset) gives that reason to
        C{connectionLost}, once.
        """
        proto, transport = self.connected()
        transport.peerClosed(error.ConnectionLost())
        transport.peerClosed()
        self.assertEqual(proto.events, ["made", ("lost", error.ConnectionLost)])
        self.assertTrue(transport.disconnecting)

    def test_pausedFollowsPauseAndResume(self) -> None:
        """
        C{paused} is true between C{pauseProducing} and C{resumeProducing}.
        """
        proto, transport = self.connected()
        self.assertFalse(transport.paused)
        transport.pauseProducing()
        self.assertTrue(transport.paused)
        transport.resumeProducing()
        self.assertFalse(transport.paused)

    def test_closingStopsTheRegisteredProducer(self) -> None:
        """
        A streaming producer registered on the transport (the relay's other
        side) is stopped when the connection closes.
        """
        proto, transport = self.connected()
        producer = FakeTransport()
        transport.registerProducer(producer, True)
        transport.loseConnection()
        self.assertEqual(producer.producerState, "stopped")
        self.assertIsNone(transport.producer)

    def test_connect(self) -> None:
        """
        L{connect} builds a protocol for the client's address and connects
        it to a L{FakeTransport} whose peer is that client.
        """
        seen: List[Any] = []

        class F(Factory):
            protocol = _Recorder

            def buildProtocol(self, addr: Any) -> Any:
                seen.append((addr.host, addr.port))
                return Factory.buildProtocol(self, addr)

        proto, transport = connect(F(), ("198.51.100.2", 999))
        self.assertEqual(seen, [("198.51.100.2", 999)])
        self.assertIs(transport.protocol, proto)
        self.assertIs(proto.transport, transport)
        self.assertEqual(proto.events, ["made"])
        self.assertEqual((transport.getPeer().host, transport.getPeer().port), ("198.51.100.2", 999))


class FakeConnectorTests(SynchronousTestCase):
    """
    L{FakeConnector} is the real connector on a fake reactor.
    """

    def test_interfaces(self) -> None:
        """
        The connector, its reactor, the reactor's resolver and an attempt
        provide their interfaces.
        """
        connector = FakeConnector()
        verifyObject(IUpstreamConnector, connector)
        verifyObject(IReactorTCP, connector.reactor)
        verifyObject(IReactorTime, connector.reactor)
        verifyObject(IReactorPluggableNameResolver, connector.reactor)
        verifyObject(IHostnameResolver, connector.reactor.nameResolver)
        attempt = connector.reactor.connectTCP("192.0.2.1", 80, _RecordingClientFactory())
        verifyObject(IConnector, attempt)

    def test_productionMethods(self) -> None:
        """
        Resolving, connecting and building endpoints are L{Connector}'s own
        code; the fake reactor is dialled with its C{connectTCP}, as a
        reactor that is not a real one is.
        """
        connector = FakeConnector()
        self.assertIsInstance(connector, Connector)
        for name in ("resolve", "connect", "endpointFor"):
            self.assertIs(getattr(FakeConnector, name), getattr(Connector, name), name)
        self.assertEqual(dialerFor(connector.reactor), connector.reactor.connectTCP)

    def test_directDialTakesTheFake(self) -> None:
        """
        L{directDial} lets a L{FakeConnector} dial IP literals directly, as
        it does the stock L{Connector}, so the tcp, transparent and sni
        modes and the forward proxy's plain C{CONNECT} take the production
        dial path in tests (the fake reactor's C{connectTCP} standing in
        for L{txproxy._dial.dialTCP}, which needs a real reactor).
        """
        connector = FakeConnector()
        dial, bind = directDial(connector)
        self.assertIsNotNone(dial)
        self.assertEqual(dial, connector.reactor.connectTCP)
        self.assertEqual(dial, dialerFor(connector.reactor))
        self.assertIsNone(bind)
        self.assertEqual(directDial(FakeConnector(bindAddress="127.0.0.2"))[1], ("127.0.0.2", 0))


class ResolveTests(SynchronousTestCase):
    def test_mappedName(self) -> None:
        """
        A mapped name resolves, in any case, through L{Connector.resolve}
        (so IPv4 addresses come first, as with a real resolver).
        """
        connector = FakeConnector({"Example.Test": ["2001:db8::1", "192.0.2.1"]})
        self.assertEqual(self.successResultOf(connector.resolve("EXAMPLE.test", 443)), ["192.0.2.1", "2001:db8::1"])

    def test_ipLiteral(self) -> None:
        """
        IP literals resolve to themselves.
        """
        connector = FakeConnector()
        self.assertEqual(self.successResultOf(connector.resolve("192.0.2.5", 80)), ["192.0.2.5"])
        self.assertEqual(self.successResultOf(connector.resolve("2001:db8::5", 80)), ["2001:db8::5"])

    def test_unknownName(self) -> None:
        """
        A name not in the map fails with L{ResolveError}.
        """
        self.failureResultOf(FakeConnector().resolve("nowhere.test", 80), ResolveError)

    def test_pendingResolve(self) -> None:
        """
        A name in C{pendingResolves} resolves when its Deferred fires with
        addresses; one that fails resolves nothing (L{ResolveError}), as a
        resolver that found nothing.
        """
        connector = FakeConnector()
        later: "defer.Deferred[List[str]]" = defer.Deferred()
        connector.pendingResolves["slow.test"] = later
        d = connector.resolve("slow.test", 80)
        self.assertNoResult(d)
        later.callback(["192.0.2.9"])
        self.assertEqual(self.successResultOf(d), ["192.0.2.9"])
        self.assertEqual(self.successResultOf(connector.resolve("slow.test", 80)), ["192.0.2.9"])
        broken: "defer.Deferred[List[str]]" = defer.Deferred()
        connector.pendingResolves["broken.test"] = broken
        d = connector.resolve("broken.test", 80)
        broken.errback(error.DNSLookupError("broken.test"))
        self.failureResultOf(d, ResolveError)

    def test_twistedEndpointsUseTheHostMap(self) -> None:
        """
        Twisted's own C{HostnameEndpoint} on the fake reactor resolves from
        the host map (no threads) and dials the address.
        """
        connector = FakeConnector({"example.test": ["192.0.2.20"]})
        d = HostnameEndpoint(connector.reactor, "example.test", 8080).connect(Factory.forProtocol(_Recorder))
        self.assertEqual((connector.last.host, connector.last.port), ("192.0.2.20", 8080))
        connector.last.succeed()
        self.assertIsInstance(self.successResultOf(d), _Recorder)


class ConnectAttemptTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.connector = FakeConnector({"db.test": ["192.0.2.30"]}, clock=self.clock)
        self.factory = _RecordingClientFactory()

    def dial(self, host: str = "192.0.2.1", port: int = 80, timeout: Optional[float] = 30) -> ConnectAttempt:
        attempt: ConnectAttempt = self.connector.reactor.connectTCP(host, port, self.factory, timeout, ("127.0.0.1", 0))
        return attempt

    def test_connectTCPRecordsAnAttempt(self) -> None:
        """
        C{connectTCP} records an attempt with its arguments, connecting,
        and starts the factory as a reactor's connector does.
        """
        attempt = self.dial()
        self.assertEqual(self.connector.attempts, [attempt])
        self.assertIs(self.connector.last, attempt)
        self.assertEqual(
            (attempt.host, attempt.port, attempt.factory, attempt.timeout, attempt.bindAddress, attempt.state),
            ("192.0.2.1", 80, self.factory, 30, ("127.0.0.1", 0), "connecting"),
        )
        self.assertEqual(self.factory.events, ["doStart", ("startedConnecting", attempt)])
        self.assertEqual((attempt.getDestination().host, attempt.getDestination().port), ("192.0.2.1", 80))

    def test_succeed(self) -> None:
        """
        C{succeed} builds the factory's protocol for the address dialled and
        connects it to a fresh transport, which it returns; the connect
        timeout is cancelled.
        """
        attempt = self.dial()
        transport = attempt.succeed()
        self.assertEqual(attempt.state, "connected")
        self.assertEqual(self.factory.events[-1], ("buildProtocol", "192.0.2.1", 80))
        (proto,) = self.factory.built
        self.assertIs(attempt.protocol, proto)
        self.assertIs(attempt.transport, transport)
        self.assertIs(proto.transport, transport)
        self.assertEqual(proto.events, ["made"])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        assert proto.transport is not None
        proto.transport.write(b"to the server")
        self.assertEqual(transport.value(), b"to the server")

    def test_succeedToAMappedName(self) -> None:
        """
        An attempt given a name reaches the name's first mapped address.
        """
        attempt = self.dial("db.test", 5432)
        transport = attempt.succeed()
        self.assertEqual(attempt.host, "db.test")
        self.assertEqual((transport.getPeer().host, transport.getPeer().port), ("192.0.2.30", 5432))

    def test_fail(self) -> None:
        """
        C{fail} tells the factory the connect failed (refused by default),
        then stops it.
        """
        self.dial().fail()
        self.assertEqual(self.factory.events[-2:], [("failed", error.ConnectionRefusedError), "doStop"])
        self.dial().fail(error.TimeoutError())
        self.assertEqual(self.factory.events[-2], ("failed", error.TimeoutError))
        self.assertEqual(self.connector.last.state, "disconnected")

    def test_outcomeIsDecidedOnce(self) -> None:
        """
        An attempt that connected or failed cannot succeed or fail again.
        """
        attempt = self.dial()
        attempt.succeed()
        self.assertRaises(RuntimeError, attempt.succeed)
        self.assertRaises(RuntimeError, attempt.fail)
        failed = self.dial()
        failed.fail()
        self.assertRaises(RuntimeError, failed.succeed)

    def test_stopConnecting(self) -> None:
        """
        C{stopConnecting} abandons the attempt: C{cancelled}, and the
        factory hears L{error.UserError}, as from a reactor's connector;
        stopping twice is L{error.NotConnectingError}.
        """
        attempt = self.dial()
        attempt.stopConnecting()
        self.assertTrue(attempt.cancelled)
        self.assertFalse(attempt.timedOut)
        self.assertEqual(self.factory.events[-2:], [("failed", error.UserError), "doStop"])
        self.assertRaises(error.NotConnectingError, attempt.stopConnecting)

    def test_connectTimeout(self) -> None:
        """
        The C{timeout} given to C{connectTCP} runs on the connector's clock:
        when it expires the factory hears L{error.TimeoutError}.
        """
        attempt = self.dial(timeout=5)
        self.clock.advance(4.9)
        self.assertEqual(attempt.state, "connecting")
        self.clock.advance(0.1)
        self.assertTrue(attempt.timedOut)
        self.assertTrue(attempt.cancelled)
        self.assertEqual(self.factory.events[-2], ("failed", error.TimeoutError))
        untimed = self.dial(timeout=None)
        self.clock.advance(1000)
        self.assertEqual(untimed.state, "connecting")

    def test_connectionLostAfterConnecting(self) -> None:
        """
        Once connected, losing the connection tells the factory
        (C{clientConnectionLost}) and the attempt is disconnected;
        C{disconnect} closes it.
        """
        attempt = self.dial()
        transport = attempt.succeed()
        transport.peerClosed()
        self.assertEqual(self.factory.events[-2:], [("lost", error.ConnectionDone), "doStop"])
        self.assertEqual(attempt.state, "disconnected")
        other = self.dial()
        otherTransport = other.succeed()
        other.disconnect()
        self.assertTrue(otherTransport.closed)

    def test_reconnect(self) -> None:
        """
        C{connect} on a disconnected attempt tries again, recorded again.
        """
        attempt = self.dial()
        self.assertRaises(RuntimeError, attempt.connect)
        attempt.fail()
        attempt.connect()
        self.assertEqual(attempt.state, "connecting")
        self.assertEqual(self.connector.attempts, [attempt, attempt])

    def test_autoConnect(self) -> None:
        """
        With C{autoConnect}, attempts connect at once.
        """
        connector = FakeConnector(autoConnect=True)
        attempt = connector.reactor.connectTCP("192.0.2.1", 80, self.factory)
        self.assertEqual(attempt.state, "connected")
        self.assertIsNotNone(attempt.transport)

    def test_connectorConnect(self) -> None:
        """
        L{Connector.connect} (how the reverse proxy and the forward proxy
        dial an address) dials through the fake reactor; the Deferred fires
        with the protocol once it is connected, and cancelling it stops the
        attempt.
        """

        class Upstream(_Recorder):
            onConnected: Any = None

            def connectionMade(self) -> None:
                _Recorder.connectionMade(self)
                self.onConnected(self)

        proto = Upstream()
        d = self.connector.connect("192.0.2.40", 8080, proto)
        self.assertNoResult(d)
        self.assertEqual((self.connector.last.host, self.connector.last.port), ("192.0.2.40", 8080))
        self.connector.last.succeed()
        self.assertIs(self.successResultOf(d), proto)
        d = self.connector.connect("192.0.2.41", 8080, Upstream())
        d.cancel()
        self.assertTrue(self.connector.last.cancelled)
        self.failureResultOf(d)

    def test_endpoints(self) -> None:
        """
        C{endpointFor} and C{endpointForDescription} give Twisted's
        endpoints on the fake reactor; the attempt's C{protocol} is the one
        the caller's factory built, not the endpoint's wrapper.
        """
        d = self.connector.endpointFor("192.0.2.50", 25).connect(Factory.forProtocol(_Recorder))
        attempt = self.connector.last
        self.assertEqual((attempt.host, attempt.port, attempt.timeout), ("192.0.2.50", 25, 10.0))
        attempt.succeed()
        self.assertIs(self.successResultOf(d), attempt.protocol)
        attempt.protocol.transport.write(b"HELO")
        assert attempt.transport is not None
        self.assertEqual(attempt.transport.value(), b"HELO")
        d = self.connector.endpointForDescription("tcp:host=db.test:port=5432:timeout=3").connect(
            Factory.forProtocol(_Recorder)
        )
        self.assertEqual(self.connector.descriptions, ["tcp:host=db.test:port=5432:timeout=3"])
        self.assertEqual((self.connector.last.host, self.connector.last.timeout), ("db.test", 3))
        self.clock.advance(3)
        self.failureResultOf(d, error.TimeoutError)


class WiringTests(SynchronousTestCase):
    def test_helperSharesItsClock(self) -> None:
        """
        A helper gives the connector it builds the factory's clock and the
        listener's connect timeout, as the proxy's service does.
        """
        clock = Clock()
        factory = tcpFactory("tcp:192.0.2.1:22", clock=clock, connect_timeout="4")
        self.assertIs(factory.connector.clock, clock)
        self.assertEqual(factory.connector.connectTimeout, 4)

    def test_connectWiresAnUnwiredConnector(self) -> None:
        """
        A factory built directly with a L{FakeConnector} made without
        C{clock=} gets the factory's clock and connect timeout on
        L{connect}; one made with them keeps its own.
        """
        clock = Clock()
        connector = FakeConnector()
        factory = TCPProxyFactory(listenerConfig(mode="tcp", upstream="tcp:192.0.2.1:22", connect_timeout="4"), connector, clock)
        connect(factory)
        self.assertIs(connector.clock, clock)
        self.assertEqual(connector.connectTimeout, 4)
        own = Clock()
        explicit = FakeConnector(clock=own, connectTimeout=9)
        connect(forwardFactory(explicit, clock))
        self.assertIs(explicit.clock, own)
        self.assertEqual(explicit.connectTimeout, 9)


class ForwardFactoryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.connector = FakeConnector({"example.test": ["192.0.2.10"], "blocked.test": ["192.0.2.66"]})

    def test_tunnel(self) -> None:
        """
        A C{CONNECT} through a helper-built forward proxy dials the resolved
        address; once connected the client gets C{200} and bytes flow both
        ways.
        """
        factory = forwardFactory(self.connector)
        self.assertIsInstance(factory, ForwardProxyFactory)
        proto, client = connect(factory)
        proto.dataReceived(CONNECT)
        attempt = self.connector.last
        self.assertEqual((attempt.host, attempt.port), ("192.0.2.10", 443))
        upstream = attempt.succeed()
        self.assertEqual(client.value(), b"HTTP/1.1 200 Connection established\r\n\r\n")
        client.clear()
        proto.dataReceived(b"client hello")
        attempt.protocol.dataReceived(b"server hello")
        self.assertEqual(upstream.value(), b"client hello")
        self.assertEqual(client.value(), b"server hello")

    def test_subclassAndOptions(self) -> None:
        """
        C{protocol=} installs a subclass whose hook refuses; C{**options}
        set the listener's policy (here, the ports C{CONNECT} may reach).
        """

        class NoBlocked(ForwardProxyProtocol):
            def allowTunnel(self, request: Any) -> bool:
                if request.target.host == "blocked.test":
                    raise Refuse(403, "blocked")
                return True

        factory = forwardFactory(self.connector, protocol=NoBlocked, connect_ports="443,8443")
        self.assertEqual(str(factory.listener.connectPorts), "443,8443")
        proto, client = connect(factory)
        proto.dataReceived(b"CONNECT blocked.test:443 HTTP/1.1\r\nHost: blocked.test:443\r\n\r\n")
        self.assertEqual(_status(client.value()), 403)
        self.assertEqual(self.connector.attempts, [])
        proto, client = connect(factory)
        proto.dataReceived(b"CONNECT example.test:8443 HTTP/1.1\r\nHost: example.test:8443\r\n\r\n")
        self.assertEqual(self.connector.last.port, 8443)

    def test_connectTimeoutOnTheSharedClock(self) -> None:
        """
        The factory and the connector share the helper's clock: advancing it
        past C{--connect-timeout} answers C{504}.
        """
        clock = Clock()
        factory = forwardFactory(self.connector, clock, connect_timeout="5")
        proto, client = connect(factory)
        proto.dataReceived(CONNECT)
        clock.advance(5)
        self.assertEqual(_status(client.value()), 504)
        self.assertTrue(self.connector.last.cancelled)

    def test_listener(self) -> None:
        """
        C{listener=} is used as given.
        """
        listener = listenerConfig(name="given")
        self.assertIs(forwardFactory(listener=listener).listener, listener)


class ReverseFactoryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.connector = FakeConnector()

    def get(self, factory: Any, host: bytes, path: bytes = b"/") -> Tuple[Any, FakeTransport]:
        proto, client = connect(factory, ("203.0.113.9", 5000))
        proto.dataReceived(b"GET " + path + b" HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
        return proto, client

    def test_routesAsAMapping(self) -> None:
        """
        Routes given as a mapping reach their backends: the backend gets the
        request with forwarded headers, and its response goes back to the
        client.
        """
        factory = reverseFactory({"www.example.com": ["http://127.0.0.1:8001"]}, self.connector)
        self.assertIsInstance(factory, ReverseProxyFactory)
        proto, client = self.get(factory, b"www.example.com", b"/index.html")
        attempt = self.connector.last
        self.assertEqual((attempt.host, attempt.port), ("127.0.0.1", 8001))
        upstream = attempt.succeed()
        sent = upstream.value()
        self.assertTrue(sent.startswith(b"GET /index.html HTTP/1.1\r\n"), sent)
        self.assertIn(b"Host: www.example.com\r\n", sent)
        self.assertIn(b"X-Forwarded-For: 203.0.113.9\r\n", sent)
        attempt.protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
        self.assertTrue(client.value().startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertTrue(client.value().endswith(b"\r\n\r\nhello"))

    def test_routeRulesAndRouteConfigs(self) -> None:
        """
        Routes may be C{--route} rules and L{RouteConfig} values, whose
        other settings (here C{stripPrefix}) are kept; a Host no route
        matches is C{404} and dials nothing.
        """
        api = RouteConfig(
            host="a.test", prefix="/api", upstreams=(UpstreamURL("http", "192.0.2.2", 8002),), stripPrefix=True
        )
        factory = reverseFactory(["a.test=http://192.0.2.1:8001", api], self.connector)
        self.get(factory, b"a.test", b"/api/v1")
        self.assertEqual(self.connector.last.port, 8002)
        self.assertTrue(self.connector.last.succeed().value().startswith(b"GET /v1 HTTP/1.1\r\n"))
        self.get(factory, b"a.test", b"/other")
        self.assertEqual(self.connector.last.port, 8001)
        attempts = len(self.connector.attempts)
        proto, client = self.get(factory, b"nope.test")
        self.assertEqual(_status(client.value()), 404)
        self.assertEqual(len(self.connector.attempts), attempts)

    def test_backendByName(self) -> None:
        """
        A backend named by host name is resolved from the connector's map
        and dialled through an endpoint.
        """
        connector = FakeConnector({"app.internal": ["192.0.2.77"]})
        factory = reverseFactory({"a.test": "http://app.internal:8080"}, connector)
        self.get(factory, b"a.test")
        self.assertEqual((connector.last.host, connector.last.port), ("192.0.2.77", 8080))
        self.assertIn(b"GET / HTTP/1.1\r\n", connector.last.succeed().value())

    def test_subclass(self) -> None:
        """
        C{protocol=} installs a subclass whose C{chooseBackend} picks the
        last backend of the route's pool.
        """

        class Last(ReverseProxyProtocol):
            def chooseBackend(self, request: Any, route: Any) -> Any:
                return route.pool.backends[-1]

        factory = reverseFactory({"a.test": ["http://192.0.2.1:1", "http://192.0.2.2:2"]}, self.connector, protocol=Last)
        for _ in range(2):
            self.get(factory, b"a.test")
            self.assertEqual(self.connector.last.port, 2)

    def test_listenerAndRouter(self) -> None:
        """
        C{listener=} and C{router=} are used as given; a listener and routes
        together, or neither, are a L{TypeError}.
        """
        listener = listenerConfig(mode="reverse", route="a.test=http://192.0.2.1:80", name="web")
        router = RouterService([listener], self.connector, Clock())
        factory = reverseFactory(listener=listener, router=router)
        self.assertIs(factory.listener, listener)
        self.assertIs(factory.router, router)
        self.assertRaises(TypeError, reverseFactory)
        self.assertRaises(TypeError, reverseFactory, {"a.test": "http://192.0.2.1:80"}, listener=listener)


class TCPFactoryTests(SynchronousTestCase):
    UPSTREAMS = ["tcp:192.0.2.10:6379", "tcp:192.0.2.11:6379"]

    def test_relay(self) -> None:
        """
        A connection to a helper-built tcp proxy is relayed to the first
        upstream: bytes both ways, and a half-close is passed on.
        """
        connector = FakeConnector()
        factory = tcpFactory(self.UPSTREAMS, connector)
        self.assertIsInstance(factory, TCPProxyFactory)
        proto, client = connect(factory)
        self.assertTrue(client.paused)
        proto.dataReceived(b"PING\r\n")
        attempt = connector.last
        self.assertEqual((attempt.host, attempt.port), ("192.0.2.10", 6379))
        upstream = attempt.succeed()
        self.assertFalse(client.paused)
        attempt.protocol.dataReceived(b"+PONG\r\n")
        self.assertEqual(upstream.value(), b"PING\r\n")
        self.assertEqual(client.value(), b"+PONG\r\n")
        client.peerHalfClosed()
        self.assertTrue(upstream.writeClosed)

    def test_roundRobinAndRetry(self) -> None:
        """
        Connections go round robin; a refused connect is retried on the
        other upstream.
        """
        connector = FakeConnector()
        factory = tcpFactory(self.UPSTREAMS, connector)
        connect(factory)
        connect(factory)
        self.assertEqual([a.host for a in connector.attempts], ["192.0.2.10", "192.0.2.11"])
        connect(factory)
        first = connector.last.host
        connector.last.fail()
        self.assertEqual(len(connector.attempts), 4)
        self.assertNotEqual(connector.last.host, first)

    def test_subclassAndOptions(self) -> None:
        """
        C{protocol=} installs a subclass whose C{chooseUpstream} sends one
        client elsewhere; C{**options} reach the listener (here, a PROXY
        header upstream).
        """

        class Special(TCPProxyProtocol):
            def chooseUpstream(self, request: Any) -> Any:
                if request.client.host == "198.51.100.1":
                    return Target("192.0.2.99", 6380)
                return None

        connector = FakeConnector()
        factory = tcpFactory("tcp:192.0.2.10:6379", connector, protocol=Special, proxy_protocol_send="v1")
        connect(factory, ("198.51.100.1", 5555))
        self.assertEqual((connector.last.host, connector.last.port), ("192.0.2.99", 6380))
        upstream = connector.last.succeed()
        self.assertEqual(upstream.value(), b"PROXY TCP4 198.51.100.1 127.0.0.1 5555 3128\r\n")
        connect(factory, ("198.51.100.2", 5555))
        self.assertEqual(connector.last.host, "192.0.2.10")

    def test_connectTimeout(self) -> None:
        """
        The helper's clock runs the connect timeout: both upstreams timing
        out closes the client, recorded as C{504}.
        """
        # IP-literal upstreams are dialled directly in production, with
        # connectTCP's own timeout (a TimeoutError: retried, then 504); the
        # fake takes that path too.
        clock = Clock()
        log = _Log()
        factory = tcpFactory(self.UPSTREAMS, clock=clock, connect_timeout="3")
        factory.accessLog = log
        self.assertIsNotNone(directDial(factory.connector)[0])
        proto, client = connect(factory)
        # Dialled with the protocol's own client factory, not through an
        # endpoint's wrapper.
        self.assertIs(type(factory.connector.last.factory), _Dial)
        self.assertEqual(factory.connector.last.timeout, 3)
        clock.advance(3)
        clock.advance(3)
        self.assertTrue(client.closed)
        self.assertEqual([r.status for r in log.records], [504])
        self.assertEqual(len(factory.connector.attempts), 2)

    def test_arguments(self) -> None:
        """
        Upstreams (or a listener) are needed, not both.
        """
        self.assertRaises(TypeError, tcpFactory)
        listener = listenerConfig(mode="tcp", upstream="tcp:192.0.2.1:22")
        self.assertIs(tcpFactory(listener=listener).listener, listener)
        self.assertRaises(TypeError, tcpFactory, "tcp:192.0.2.1:22", listener=listener)


class TransparentFactoryTests(SynchronousTestCase):
    def test_relaysToTheOriginalDestination(self) -> None:
        """
        Every connection goes to the fixed original destination; the access
        record names it.
        """
        connector = FakeConnector()
        log = _Log()
        factory = transparentFactory(("203.0.113.5", 80), connector)
        self.assertIsInstance(factory, TransparentFactory)
        factory.accessLog = log
        proto, client = connect(factory)
        attempt = connector.last
        self.assertEqual((attempt.host, attempt.port), ("203.0.113.5", 80))
        upstream = attempt.succeed()
        proto.dataReceived(b"GET / HTTP/1.1\r\n\r\n")
        attempt.protocol.dataReceived(b"HTTP/1.1 204 No Content\r\n\r\n")
        self.assertEqual(upstream.value(), b"GET / HTTP/1.1\r\n\r\n")
        self.assertEqual(client.value(), b"HTTP/1.1 204 No Content\r\n\r\n")
        client.peerClosed()
        (record,) = log.records
        self.assertEqual((record.mode, record.target, record.status), ("transparent", "203.0.113.5:80", 200))

    def test_destinationPerConnection(self) -> None:
        """
        A callable gives each accepted connection its destination; L{None}
        means not redirected, closed with C{400}.
        """
        connector = FakeConnector()
        log = _Log()

        def destination(transport: Any) -> Optional[Tuple[str, int]]:
            return ("203.0.113.6", 443) if transport.getPeer().host == "10.0.0.5" else None

        factory = transparentFactory(destination, connector)
        factory.accessLog = log
        connect(factory, ("10.0.0.5", 1000))
        self.assertEqual((connector.last.host, connector.last.port), ("203.0.113.6", 443))
        proto, client = connect(factory, ("10.0.0.6", 1000))
        self.assertTrue(client.closed)
        self.assertEqual(log.records[-1].status, 400)
        self.assertEqual(len(connector.attempts), 1)

    def test_loopGuard(self) -> None:
        """
        A destination that is the proxy's own listener (the accepted
        connection's address) is refused with C{403}, without reading the
        host's networks.
        """
        connector = FakeConnector()
        log = _Log()
        factory = transparentFactory(("127.0.0.1", 3128), connector)
        factory.accessLog = log
        proto, client = connect(factory)
        self.assertTrue(client.closed)
        self.assertEqual(connector.attempts, [])
        self.assertEqual(log.records[0].status, 403)
        self.assertEqual(factory.localAddresses(), ("127.0.0.0/8", "::1/128"))

    def test_subclass(self) -> None:
        """
        C{protocol=} installs a subclass; its C{relayOpened} hears the
        address dialled.
        """
        opened: List[str] = []

        class Watch(TCPProxyProtocol):
            def relayOpened(self, request: Any, upstreamAddress: str) -> None:
                opened.append(upstreamAddress)

        factory = transparentFactory(("2001:db8::80", 80), protocol=Watch)
        connect(factory)
        factory.connector.last.succeed()
        self.assertEqual(opened, ["[2001:db8::80]:80"])


class SNIFactoryTests(SynchronousTestCase):
    ROUTES = {"a.test": "tcp://192.0.2.1:9443", "*.b.test": ["tcp://192.0.2.2:9443", "tcp://192.0.2.3:9443"]}

    def test_routesByServerName(self) -> None:
        """
        The ClientHello's server name picks the route; the hello is replayed
        upstream unchanged, then bytes flow both ways.
        """
        connector = FakeConnector()
        factory = sniFactory(self.ROUTES, connector)
        self.assertIsInstance(factory, SNIRouterFactory)
        proto, client = connect(factory)
        hello = clientHello("x.b.test")
        proto.dataReceived(hello)
        attempt = connector.last
        self.assertEqual((attempt.host, attempt.port), ("192.0.2.2", 9443))
        upstream = attempt.succeed()
        self.assertEqual(upstream.value(), hello)
        attempt.protocol.dataReceived(b"server hello")
        self.assertEqual(client.value(), b"server hello")

    def test_unknownNameAndNoName(self) -> None:
        """
        A name no route matches gets a TLS C{unrecognized_name} alert and
        is closed; a hello without SNI is closed; nothing is dialled.
        """
        connector = FakeConnector()
        factory = sniFactory(["a.test=tcp://192.0.2.1:9443"], connector)
        proto, client = connect(factory)
        proto.dataReceived(clientHello("other.test"))
        self.assertEqual(client.value(), UNRECOGNIZED_NAME_ALERT)
        self.assertTrue(client.closed)
        proto, client = connect(factory)
        proto.dataReceived(clientHello(None))
        self.assertTrue(client.closed)
        self.assertEqual(connector.attempts, [])

    def test_helloTimeout(self) -> None:
        """
        The helper's clock runs C{--header-timeout}: a client that sends no
        ClientHello in time is closed.
        """
        clock = Clock()
        factory = sniFactory(self.ROUTES, clock=clock, header_timeout="5")
        proto, client = connect(factory)
        clock.advance(5)
        self.assertTrue(client.closed)

    def test_subclass(self) -> None:
        """
        C{protocol=} installs a subclass whose C{chooseUpstream} routes by
        the ClientHello's ALPN.
        """

        class ByALPN(SNIRouterProtocol):
            def chooseUpstream(self, request: Any) -> Any:
                if "h2" in request.hello.alpn:
                    return Target("192.0.2.20", 9443)
                return None

        connector = FakeConnector()
        factory = sniFactory(self.ROUTES, connector, protocol=ByALPN)
        proto, client = connect(factory)
        proto.dataReceived(clientHello("a.test", alpn=["h2", "http/1.1"]))
        self.assertEqual(connector.last.host, "192.0.2.20")
        proto, client = connect(factory)
        proto.dataReceived(clientHello("a.test", alpn=["http/1.1"]))
        self.assertEqual(connector.last.host, "192.0.2.1")


class ClientHelloTests(SynchronousTestCase):
    def test_read(self) -> None:
        """
        L{clientHello} gives one TLS record that txproxy's reader reads,
        whole or one byte at a time, with the server name and ALPN given.
        """
        data = clientHello("Www.Example.COM", alpn=("h2", "http/1.1"))
        self.assertEqual(data[:1], b"\x16")
        hello = ClientHelloReader().feed(data)
        assert hello is not None
        self.assertEqual((hello.serverName, hello.alpn), ("www.example.com", ("h2", "http/1.1")))
        self.assertEqual(hello.supportedVersions, (0x0304, 0x0303))
        self.assertEqual(hello.raw, data)
        reader = ClientHelloReader()
        results = [reader.feed(data[i : i + 1]) for i in range(len(data))]
        self.assertEqual(results[:-1], [None] * (len(data) - 1))
        self.assertEqual(results[-1], hello)

    def test_noServerName(self) -> None:
        """
        Without a name there is no SNI extension.
        """
        hello = ClientHelloReader().feed(clientHello())
        assert hello is not None
        self.assertIsNone(hello.serverName)
        self.assertEqual(hello.alpn, ())
