# -*- test-case-name: tests.test_tcp -*-
"""
Tests for L{txproxy.stream.tcp}: C{--mode tcp} and C{--mode transparent} on fake
transports, a fake connector (or a memory reactor) and a fake clock.
"""

from __future__ import annotations

import struct
from typing import Any, List, Optional, Tuple

from twisted.internet import defer, error
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock, StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from txproxy.accesslog import AccessRecord
from txproxy.connector import Connector
from txproxy.hooks import StreamRequest, Target
from txproxy.proxyprotocol import V2_SIGNATURE, formatV2
from txproxy.stream._upstream import parseTCPDescription
from txproxy.stream.tcp import TCPProxyFactory, TCPProxyProtocol, TransparentFactory
from txproxy.testing import FakeConnector, FakeTransport, connect, listenerConfig

UP1 = "tcp:192.0.2.10:6379"
UP2 = "tcp:host=192.0.2.11:port=6380"


class _Log:
    def __init__(self) -> None:
        self.records: List[AccessRecord] = []

    def log(self, record: AccessRecord) -> None:
        self.records.append(record)


class TCPTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.connector = FakeConnector()
        self.log = _Log()

    def factory(self, cls: Any = TCPProxyFactory, protocol: Any = None, **options: Any) -> Any:
        options.setdefault("mode", "tcp")
        if options["mode"] == "tcp":
            options.setdefault("upstream", [UP1, UP2])
        factory = cls(listenerConfig(**options), self.connector, self.clock, accessLog=self.log)
        if protocol is not None:
            factory.protocol = protocol
        return factory

    def open(self, factory: Any = None, peer: Tuple[str, int] = ("127.0.0.1", 40000)) -> Tuple[Any, FakeTransport]:
        return connect(factory if factory is not None else self.factory(), peer)


class TCPModeTests(TCPTestCase):
    def test_relaysToPoolMember(self) -> None:
        """
        An accepted connection pauses the client, dials the first pool
        member, and once connected relays both ways and resumes the client.
        """
        proto, client = self.open()
        self.assertTrue(client.paused)
        attempt = self.connector.last
        self.assertEqual((attempt.host, attempt.port), ("192.0.2.10", 6379))
        upstream = attempt.succeed()
        self.assertFalse(client.paused)
        proto.dataReceived(b"PING\r\n")
        attempt.protocol.dataReceived(b"+PONG\r\n")
        self.assertEqual(upstream.value(), b"PING\r\n")
        self.assertEqual(client.value(), b"+PONG\r\n")

    def test_bytesBeforeConnectAreNotLost(self) -> None:
        """
        Bytes the client sent before the upstream was connected are sent
        upstream first, in order.
        """
        proto, client = self.open()
        proto.dataReceived(b"one ")
        proto.dataReceived(b"two ")
        upstream = self.connector.last.succeed()
        proto.dataReceived(b"three")
        self.assertEqual(upstream.value(), b"one two three")

    def test_roundRobin(self) -> None:
        """
        Successive connections go to successive pool members.
        """
        factory = self.factory()
        for _ in range(4):
            self.open(factory)
        self.assertEqual([a.port for a in self.connector.attempts], [6379, 6380, 6379, 6380])

    def test_refusedIsRetriedOnNextMember(self) -> None:
        """
        A refused connect is retried once on the next pool member; the bytes
        the client sent meanwhile still arrive.
        """
        proto, client = self.open()
        proto.dataReceived(b"early")
        self.connector.last.fail(error.ConnectionRefusedError())
        self.assertEqual(len(self.connector.attempts), 2)
        self.assertEqual(self.connector.last.port, 6380)
        upstream = self.connector.last.succeed()
        self.assertEqual(upstream.value(), b"early")
        self.assertFalse(client.disconnecting)

    def test_connectTimeoutIsRetried(self) -> None:
        """
        A connect that takes longer than C{--connect-timeout} is abandoned
        and retried on the next member.
        """
        factory = self.factory(connect_timeout="3")
        proto, client = self.open(factory)
        first = self.connector.last
        self.clock.advance(3)
        self.assertTrue(first.cancelled)
        self.assertEqual(len(self.connector.attempts), 2)
        self.connector.last.succeed()
        self.assertFalse(client.disconnecting)

    def test_secondFailureClosesClient(self) -> None:
        """
        When the retry fails too, the client is closed and the access record
        says why (502 refused); the backends' connection counts are back to
        zero.
        """
        factory = self.factory()
        proto, client = self.open(factory)
        self.connector.last.fail()
        self.connector.last.fail()
        self.assertEqual(len(self.connector.attempts), 2)
        self.assertTrue(client.closed)
        (record,) = self.log.records
        self.assertEqual((record.status, record.mode, record.method), (502, "tcp", "TCP"))
        self.assertIn("refused", record.reason)
        pool = factory.router.poolFor(factory.listener.name)
        self.assertEqual([b.activeConnections for b in pool.backends], [0, 0])
        self.assertEqual(factory.protocols, set())

    def test_timeoutTwiceIs504(self) -> None:
        """
        Two connect timeouts close the client with a 504 record.
        """
        self.open(self.factory(connect_timeout="2"))
        self.clock.advance(2)
        self.clock.advance(2)
        (record,) = self.log.records
        self.assertEqual(record.status, 504)

    def test_singleMemberIsNotRetried(self) -> None:
        """
        A pool of one is tried once: there is no next member.
        """
        proto, client = self.open(self.factory(upstream=UP1))
        self.connector.last.fail()
        self.assertEqual(len(self.connector.attempts), 1)
        self.assertTrue(client.closed)

    def test_clientHalfCloseIsForwarded(self) -> None:
        """
        The client's FIN becomes a write shutdown upstream; the upstream's
        answer still reaches the client; the upstream's FIN then closes both.
        """
        proto, client = self.open()
        attempt = self.connector.last
        upstream = attempt.succeed()
        proto.dataReceived(b"request")
        client.peerHalfClosed()
        self.assertTrue(upstream.writeClosed)
        self.assertFalse(client.closed)
        attempt.protocol.dataReceived(b"response")
        self.assertEqual(client.value(), b"response")
        upstream.peerHalfClosed()
        self.assertTrue(client.closed)
        self.assertTrue(upstream.closed)

    def test_upstreamHalfCloseIsForwarded(self) -> None:
        """
        The upstream's FIN becomes a write shutdown toward the client, which
        may still send.
        """
        proto, client = self.open()
        attempt = self.connector.last
        upstream = attempt.succeed()
        upstream.peerHalfClosed()
        self.assertTrue(client.writeClosed)
        proto.dataReceived(b"more")
        self.assertEqual(upstream.value(), b"more")
        self.assertFalse(upstream.closed)

    def test_halfCloseBeforeConnect(self) -> None:
        """
        A client that sends and half-closes before the upstream answers has
        its bytes and then its FIN forwarded.
        """
        proto, client = self.open()
        proto.dataReceived(b"all of it")
        client.peerHalfClosed()
        upstream = self.connector.last.succeed()
        self.assertEqual(upstream.value(), b"all of it")
        self.assertTrue(upstream.writeClosed)

    def test_upstreamSpeaksFirst(self) -> None:
        """
        A server that speaks first (an SSH banner) is relayed at once.
        """
        proto, client = self.open()
        attempt = self.connector.last
        attempt.succeed()
        attempt.protocol.dataReceived(b"SSH-2.0-test\r\n")
        self.assertEqual(client.value(), b"SSH-2.0-test\r\n")

    def test_idleTimeout(self) -> None:
        """
        A pair silent for C{--idle-timeout} seconds is closed; traffic keeps
        it open.
        """
        proto, client = self.open(self.factory(idle_timeout="10"))
        upstream = self.connector.last.succeed()
        self.clock.pump([2.5] * 3)
        proto.dataReceived(b"x")
        self.clock.pump([2.5] * 3)
        self.assertFalse(client.closed)
        self.clock.pump([2.5] * 4)
        self.assertTrue(client.closed)
        self.assertTrue(upstream.closed)
        (record,) = self.log.records
        self.assertEqual((record.status, record.reason), (200, "idle"))

    def test_accessRecord(self) -> None:
        """
        One access record per connection: client, target, upstream dialled,
        bytes each way, duration.
        """
        proto, client = self.open(peer=("198.51.100.7", 5555))
        attempt = self.connector.last
        attempt.succeed()
        proto.dataReceived(b"12345")
        attempt.protocol.dataReceived(b"abc")
        self.clock.advance(2)
        client.peerClosed()
        (record,) = self.log.records
        self.assertEqual(record.client, "198.51.100.7")
        self.assertEqual(record.target, UP1)
        self.assertEqual(record.upstream, "192.0.2.10:6379")
        self.assertEqual((record.bytesUp, record.bytesDown, record.duration), (5, 3, 2))
        self.assertEqual((record.status, record.mode), (200, "tcp"))

    def test_clientLeavesWhileConnecting(self) -> None:
        """
        A client that leaves while the upstream is being dialled cancels the
        dial; the record says 499 and the backend is not left counted.
        """
        factory = self.factory()
        proto, client = self.open(factory)
        client.peerClosed()
        self.assertTrue(self.connector.last.cancelled)
        (record,) = self.log.records
        self.assertEqual(record.status, 499)
        pool = factory.router.poolFor(factory.listener.name)
        self.assertEqual(pool.backends[0].activeConnections, 0)

    def test_backendCountedWhileRelaying(self) -> None:
        """
        The pool counts a relayed connection until it closes (for
        C{leastconn}).
        """
        factory = self.factory()
        proto, client = self.open(factory)
        self.connector.last.succeed()
        backend = factory.router.poolFor(factory.listener.name).backends[0]
        self.assertEqual(backend.activeConnections, 1)
        client.peerClosed()
        self.assertEqual(backend.activeConnections, 0)

    def test_protocolsTracked(self) -> None:
        """
        The factory's C{protocols} holds open connections only, and
        C{drain} leaves a relayed connection open.
        """
        factory = self.factory()
        proto, client = self.open(factory)
        self.connector.last.succeed()
        self.assertEqual(factory.protocols, {proto})
        proto.drain()
        self.assertFalse(client.closed)
        client.peerClosed()
        self.assertEqual(factory.protocols, set())

    def test_denied(self) -> None:
        """
        A client outside C{--allow} (or inside C{--deny}) is closed without
        dialling, with a 403 record.
        """
        factory = self.factory(allow="10.0.0.0/8", deny="10.9.0.0/16")
        proto, client = self.open(factory, ("192.0.2.1", 1))
        self.assertTrue(client.closed)
        proto, client = self.open(factory, ("10.9.1.1", 1))
        self.assertTrue(client.closed)
        proto, client = self.open(factory, ("10.1.1.1", 1))
        self.assertFalse(client.closed)
        self.assertEqual(len(self.connector.attempts), 1)
        self.assertEqual([r.status for r in self.log.records], [403, 403])

    def test_reloadAppliesNewACL(self) -> None:
        """
        A reload that adds C{--deny} applies it to new connections.
        """
        factory = self.factory()
        factory.reloadListener(listenerConfig(mode="tcp", upstream=UP1, deny="127.0.0.0/8"), dryRun=True)
        proto, client = self.open(factory)
        self.assertFalse(client.closed)
        factory.reloadListener(listenerConfig(mode="tcp", upstream=UP1, deny="127.0.0.0/8"))
        proto, client = self.open(factory)
        self.assertTrue(client.closed)

    def test_proxyHeaderV1First(self) -> None:
        """
        With C{--proxy-protocol-send v1}, the upstream receives the header,
        naming the client and the address it connected to, before any byte
        the client sent, in one write.
        """
        proto, client = self.open(self.factory(proxy_protocol_send="v1"), ("198.51.100.7", 5555))
        proto.dataReceived(b"early")
        upstream = self.connector.last.succeed()
        self.assertEqual(upstream.value(), b"PROXY TCP4 198.51.100.7 127.0.0.1 5555 3128\r\nearly")

    def test_proxyHeaderV2First(self) -> None:
        """
        The same with the binary version 2 header.
        """
        proto, client = self.open(self.factory(proxy_protocol_send="v2"), ("198.51.100.7", 5555))
        upstream = self.connector.last.succeed()
        proto.dataReceived(b"data")
        header = formatV2(("198.51.100.7", 5555), ("127.0.0.1", 3128))
        self.assertEqual(upstream.value(), header + b"data")

    def tomlFactory(self, **keys: Any) -> Any:
        from txproxy.config import fromTOML

        listener = fromTOML({"listeners": [dict({"listen": ["tcp:0"], "mode": "tcp"}, **keys)]}).listeners[0]
        return TCPProxyFactory(listener, self.connector, self.clock, accessLog=self.log)

    def test_proxyHeaderPerUpstream(self) -> None:
        """
        An upstream written as a table with its own C{proxy_protocol_send}
        gets that header; another upstream of the same pool without the
        setting gets none (no listener default).
        """
        factory = self.tomlFactory(upstreams=[{"endpoint": UP1, "proxy_protocol_send": "v2"}, UP2])
        proto, client = self.open(factory, ("198.51.100.7", 5555))
        self.assertEqual(self.connector.last.host, "192.0.2.10")
        upstream = self.connector.last.succeed()
        proto.dataReceived(b"one")
        self.assertEqual(upstream.value(), formatV2(("198.51.100.7", 5555), ("127.0.0.1", 3128)) + b"one")
        proto, client = self.open(factory, ("198.51.100.7", 5556))
        self.assertEqual(self.connector.last.host, "192.0.2.11")
        upstream = self.connector.last.succeed()
        proto.dataReceived(b"two")
        self.assertEqual(upstream.value(), b"two")

    def test_proxyHeaderPerUpstreamOverridesListener(self) -> None:
        """
        With a listener-wide C{proxy_protocol_send}, an upstream's own
        setting wins (C{"none"}: no header); the others get the listener's.
        """
        factory = self.tomlFactory(
            proxy_protocol_send="v1",
            upstreams=[{"endpoint": UP1, "proxy_protocol_send": "none"}, UP2],
        )
        proto, client = self.open(factory, ("198.51.100.7", 5555))
        upstream = self.connector.last.succeed()
        proto.dataReceived(b"one")
        self.assertEqual(upstream.value(), b"one")
        proto, client = self.open(factory, ("198.51.100.7", 5556))
        upstream = self.connector.last.succeed()
        proto.dataReceived(b"two")
        self.assertEqual(upstream.value(), b"PROXY TCP4 198.51.100.7 127.0.0.1 5556 3128\r\ntwo")

    def test_proxyHeaderOfRetriedUpstream(self) -> None:
        """
        When the first upstream refuses and the next one is tried, the
        header is the one of the upstream actually connected.
        """
        factory = self.tomlFactory(upstreams=[{"endpoint": UP1, "proxy_protocol_send": "v2"},
                                              {"endpoint": UP2, "proxy_protocol_send": "v1"}])
        proto, client = self.open(factory, ("198.51.100.7", 5555))
        self.connector.last.fail(error.ConnectionRefusedError())
        self.assertEqual(self.connector.last.port, 6380)
        upstream = self.connector.last.succeed()
        self.assertEqual(upstream.value(), b"PROXY TCP4 198.51.100.7 127.0.0.1 5555 3128\r\n")

    def test_unresolvableDescriptionUsesEndpoint(self) -> None:
        """
        Upstreams named by host name go through the connector's endpoint for
        the description.
        """
        self.open(self.factory(upstream="tcp:redis.internal:6379"))
        self.assertEqual(self.connector.descriptions, ["tcp:redis.internal:6379"])


class DirectDialTests(SynchronousTestCase):
    """
    With the stock L{Connector}, IP-literal upstreams are dialled with
    C{connectTCP} directly (no endpoint, no Deferred).
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.log = _Log()
        listener = listenerConfig(mode="tcp", upstream=[UP1, UP2], connect_timeout="4")
        self.factory = TCPProxyFactory(listener, Connector(self.reactor), self.reactor, accessLog=self.log)

    def upstreamConnects(self, index: int) -> Tuple[Any, FakeTransport]:
        host, port, clientFactory, timeout, bind = self.reactor.tcpClients[index]
        transport = FakeTransport(peer=(host, port))
        proto = clientFactory.buildProtocol(transport.getPeer())
        transport.protocol = proto
        proto.makeConnection(transport)
        return proto, transport

    def test_connectTCP(self) -> None:
        """
        The pool member's address, port and C{--connect-timeout} go to
        C{connectTCP}; the connected protocol is joined to the client.
        """
        proto, client = connect(self.factory)
        self.assertEqual(self.reactor.tcpClients[0][:2], ("192.0.2.10", 6379))
        self.assertEqual(self.reactor.tcpClients[0][3], 4)
        proto.dataReceived(b"hello")
        upProto, upTransport = self.upstreamConnects(0)
        self.assertEqual(upTransport.value(), b"hello")
        upProto.dataReceived(b"world")
        self.assertEqual(client.value(), b"world")

    def test_failedConnectRetries(self) -> None:
        """
        C{clientConnectionFailed} retries on the next member.
        """
        proto, client = connect(self.factory)
        self.reactor.tcpClients[0][2].clientConnectionFailed(None, Failure(error.ConnectionRefusedError()))
        self.assertEqual(self.reactor.tcpClients[1][:2], ("192.0.2.11", 6380))

    def test_clientLeavesStopsConnecting(self) -> None:
        """
        A client that leaves while connecting stops the connector.
        """
        proto, client = connect(self.factory)
        connector = self.reactor.connectors[0]
        client.peerClosed()
        self.assertEqual(connector.stoppedConnecting, True)


class ParseDescriptionTests(SynchronousTestCase):
    def test_forms(self) -> None:
        """
        Simple C{tcp:} descriptions with IP literals are read; everything
        else is left to endpoints.
        """
        self.assertEqual(parseTCPDescription("tcp:10.0.0.5:22"), ("10.0.0.5", 22, None))
        self.assertEqual(parseTCPDescription("tcp:host=10.0.0.5:port=22:timeout=3"), ("10.0.0.5", 22, 3.0))
        self.assertIsNone(parseTCPDescription("tcp:example.com:22"))
        self.assertIsNone(parseTCPDescription("unix:/tmp/s"))
        self.assertIsNone(parseTCPDescription("tcp:10.0.0.5:22:bindAddress=10.0.0.1"))
        self.assertIsNone(parseTCPDescription("tcp:10.0.0.5:99999"))
        self.assertIsNone(parseTCPDescription("tcp6:\\:\\:1:22"))


class HookTests(TCPTestCase):
    def test_chooseUpstreamByClient(self) -> None:
        """
        C{chooseUpstream} sees the client (in its L{StreamRequest}) and may name a L{Target} or an
        endpoint description; L{None} keeps the pool.
        """

        class ByClient(TCPProxyProtocol):
            def chooseUpstream(self, request: StreamRequest) -> Any:
                client = request.client
                if client.host.startswith("10."):
                    return Target("192.0.2.99", 22)
                if client.host.startswith("172."):
                    return "tcp:192.0.2.98:23"
                return None

        factory = self.factory(protocol=ByClient)
        self.open(factory, ("10.0.0.1", 1))
        self.open(factory, ("172.16.0.1", 1))
        self.open(factory, ("192.168.0.1", 1))
        self.assertEqual(
            [(a.host, a.port) for a in self.connector.attempts],
            [("192.0.2.99", 22), ("192.0.2.98", 23), ("192.0.2.10", 6379)],
        )

    def test_chooseUpstreamAsynchronous(self) -> None:
        """
        C{chooseUpstream} may return a Deferred; the client stays paused and
        its bytes are kept until the upstream is connected.
        """
        later: defer.Deferred[Any] = defer.Deferred()

        class Later(TCPProxyProtocol):
            def chooseUpstream(self, request: StreamRequest) -> Any:
                return later

        proto, client = self.open(self.factory(protocol=Later))
        proto.dataReceived(b"kept")
        self.assertEqual(self.connector.attempts, [])
        later.callback(Target("192.0.2.50", 9))
        upstream = self.connector.last.succeed()
        self.assertEqual(upstream.value(), b"kept")

    def test_chooseUpstreamFailureCloses(self) -> None:
        """
        An exception from C{chooseUpstream} closes the client (and is
        logged).
        """

        class Broken(TCPProxyProtocol):
            def chooseUpstream(self, request: StreamRequest) -> Any:
                raise RuntimeError("no")

        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        proto, client = self.open(self.factory(protocol=Broken))
        self.assertTrue(client.closed)
        (event,) = [e for e in events if e.get("log_namespace") == "txproxy.tcp"]
        self.assertIn("RuntimeError: no", event["error"])
        self.assertNotIn("log_failure", event)

    def test_dataFilters(self) -> None:
        """
        Overridden C{clientData}/C{upstreamData} see and rewrite every chunk;
        not overriding them leaves the relay's unfiltered handlers in place.
        """

        class Upper(TCPProxyProtocol):
            def clientData(self, data: bytes) -> bytes:
                return data.upper()

            def upstreamData(self, data: bytes) -> bytes:
                return data[::-1]

        proto, client = self.open(self.factory(protocol=Upper))
        attempt = self.connector.last
        upstream = attempt.succeed()
        proto.dataReceived(b"abc")
        attempt.protocol.dataReceived(b"xyz")
        self.assertEqual(upstream.value(), b"ABC")
        self.assertEqual(client.value(), b"zyx")
        plain, _ = self.open()
        self.connector.last.succeed()
        assert plain.relay is not None
        self.assertIsNone(plain.relay._filterUp)
        self.assertIsNone(plain.relay._filterDown)

    def test_upstreamFailedAndExchangeEnded(self) -> None:
        """
        C{upstreamFailed} runs once when no member could be reached;
        C{exchangeEnded} runs once per connection with its record.
        """
        seen: List[Any] = []

        class Watch(TCPProxyProtocol):
            def upstreamFailed(self, request: StreamRequest, reason: Failure) -> None:
                seen.append(("failed", reason.type))

            def relayOpened(self, request: StreamRequest, upstreamAddress: str) -> None:
                seen.append(("opened", upstreamAddress))

            def exchangeEnded(self, record: AccessRecord) -> None:
                seen.append(("ended", record.status))

        factory = self.factory(protocol=Watch)
        self.open(factory)
        self.connector.last.fail()
        self.connector.last.fail()
        proto, client = self.open(factory)
        self.connector.last.succeed()
        client.peerClosed()
        self.assertEqual(
            seen,
            [
                ("failed", error.ConnectionRefusedError),
                ("ended", 502),
                ("opened", "192.0.2.11:6380"),
                ("ended", 200),
            ],
        )


class ConnectionPathErrorTests(TCPTestCase):
    """
    An exception anywhere on the way to relaying (a hook's bad choice, an
    endpoint that cannot be built, a failing hook called while dialling)
    closes that client connection, records it, and logs exactly one line.
    """

    def setUp(self) -> None:
        super().setUp()
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def assertClosedWithOneLine(self, client: FakeTransport, needle: str, status: int = 500) -> None:
        self.assertTrue(client.closed)
        self.assertEqual(self.log.records[-1].status, status)
        lines = [e for e in self.events if e.get("log_namespace") == "txproxy.tcp" and e.get("log_level").name != "debug"]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn(needle, lines[0]["error"])
        self.assertNotIn("log_failure", lines[0])
        self.assertNotIn("\n", lines[0]["error"])

    def test_hookChoosesBadDescription(self) -> None:
        """
        A C{chooseUpstream} that names an endpoint type Twisted does not
        know (C{bogus:xx}) closes the connection (it used to stay open,
        paused, for ever).
        """

        class Bogus(TCPProxyProtocol):
            def chooseUpstream(self, request: StreamRequest) -> Any:
                return "bogus:xx"

        proto, client = self.open(self.factory(protocol=Bogus))
        self.assertClosedWithOneLine(client, "Unknown endpoint type")

    def test_hookChoosesBadDescriptionLater(self) -> None:
        """
        The same when the choice arrives through a Deferred.
        """
        later: defer.Deferred[Any] = defer.Deferred()

        class Later(TCPProxyProtocol):
            def chooseUpstream(self, request: StreamRequest) -> Any:
                return later

        proto, client = self.open(self.factory(protocol=Later))
        self.assertFalse(client.closed)
        later.callback("bogus:xx")
        self.assertClosedWithOneLine(client, "Unknown endpoint type")

    def test_transparentHookChoosesBadDescription(self) -> None:
        """
        In transparent mode too.
        """

        class Bogus(TCPProxyProtocol):
            def chooseUpstream(self, request: StreamRequest) -> Any:
                return "bogus:xx"

        factory = self.factory(TransparentFactory, protocol=Bogus, mode="transparent")
        factory.originalDestination = lambda transport: ("203.0.113.5", 80)
        factory.localAddresses = lambda: ["192.0.2.1"]
        proto, client = self.open(factory)
        self.assertClosedWithOneLine(client, "Unknown endpoint type")

    def test_poolEndpointRaises(self) -> None:
        """
        A pool member whose endpoint cannot be built closes the connection
        and gives the backend's connection count back.
        """

        class Raising(FakeConnector):
            def endpointForDescription(self, description: str) -> Any:
                raise ValueError("cannot build " + description)

        self.connector = Raising()
        factory = self.factory(upstream="unix:/nonexistent")
        proto, client = self.open(factory)
        self.assertClosedWithOneLine(client, "ValueError: cannot build unix:/nonexistent")
        (backend,) = factory.router.poolFor(factory.listener.name).backends
        self.assertEqual(backend.activeConnections, 0)

    def test_upstreamFailedHookRaises(self) -> None:
        """
        An exception from the C{upstreamFailed} hook, called while the
        dial is failing, still closes the client.
        """

        class Broken(TCPProxyProtocol):
            def upstreamFailed(self, request: StreamRequest, reason: Failure) -> None:
                raise RuntimeError("hook broke")

        proto, client = self.open(self.factory(protocol=Broken, upstream=UP1))
        self.connector.last.fail()
        self.assertTrue(client.closed)
        self.assertClosedWithOneLine(client, "RuntimeError: hook broke")

    def test_relayOpenedRaises(self) -> None:
        """
        An exception from C{relayOpened} closes the client and the upstream
        connection.
        """

        class Broken(TCPProxyProtocol):
            def relayOpened(self, request: StreamRequest, upstreamAddress: str) -> None:
                raise RuntimeError("hook broke")

        proto, client = self.open(self.factory(protocol=Broken))
        upstream = self.connector.last.succeed()
        self.assertTrue(upstream.closed)
        self.assertClosedWithOneLine(client, "RuntimeError: hook broke")


class TransparentTests(TCPTestCase):
    def transparent(self, destination: Optional[Tuple[str, int]], **options: Any) -> Any:
        factory = self.factory(TransparentFactory, mode="transparent", **options)
        factory.originalDestination = lambda transport: destination
        factory.localAddresses = lambda: ["127.0.0.0/8", "192.0.2.1"]
        return factory

    def test_relaysToOriginalDestination(self) -> None:
        """
        The connection goes to its original destination.
        """
        proto, client = self.open(self.transparent(("203.0.113.5", 80)))
        attempt = self.connector.last
        self.assertEqual((attempt.host, attempt.port), ("203.0.113.5", 80))
        upstream = attempt.succeed()
        proto.dataReceived(b"GET /")
        self.assertEqual(upstream.value(), b"GET /")
        client.peerClosed()
        (record,) = self.log.records
        self.assertEqual((record.mode, record.target, record.status), ("transparent", "203.0.113.5:80", 200))

    def test_notRedirected(self) -> None:
        """
        A connection with no original destination is closed (400).
        """
        proto, client = self.open(self.transparent(None))
        self.assertTrue(client.closed)
        self.assertEqual(self.log.records[0].status, 400)

    def test_loopGuard(self) -> None:
        """
        A connection whose original destination is the proxy's own listener
        (directly, or a local address on the listener's port) is closed.
        """
        proto, client = self.open(self.transparent(("127.0.0.1", 3128)))
        self.assertTrue(client.closed)
        self.assertEqual(self.connector.attempts, [])
        self.assertEqual(self.log.records[0].status, 403)

    def test_proxyHeaderNamesOriginalDestination(self) -> None:
        """
        A PROXY header sent upstream names the original destination.
        """
        proto, client = self.open(self.transparent(("203.0.113.5", 80), proxy_protocol_send="v1"), ("192.0.2.33", 999))
        upstream = self.connector.last.succeed()
        self.assertEqual(upstream.value(), b"PROXY TCP4 192.0.2.33 203.0.113.5 999 80\r\n")

    def test_noRetry(self) -> None:
        """
        There is one destination: a refused connect closes the client.
        """
        proto, client = self.open(self.transparent(("203.0.113.5", 80)))
        self.connector.last.fail()
        self.assertEqual(len(self.connector.attempts), 1)
        self.assertTrue(client.closed)
        self.assertEqual(self.log.records[0].status, 502)


class TransparentDenyDestTests(TCPTestCase):
    def transparent(self, destination: Tuple[str, int], **options: Any) -> Any:
        factory = self.factory(TransparentFactory, mode="transparent", **options)
        factory.originalDestination = lambda transport: destination
        factory.localAddresses = lambda: ["192.0.2.1"]
        return factory

    def test_denyDestRefusesOriginalDestination(self) -> None:
        """
        In transparent mode --deny-dest applies to the original destination:
        a denied one is closed with a 403 record, never dialled; others are
        relayed.
        """
        proto, client = self.open(self.transparent(("10.1.2.3", 80), deny_dest="10.0.0.0/8"))
        self.assertTrue(client.closed)
        self.assertEqual(self.connector.attempts, [])
        self.assertEqual(self.log.records[0].status, 403)
        self.open(self.transparent(("203.0.113.5", 80), deny_dest="10.0.0.0/8"))
        self.assertEqual(self.connector.last.host, "203.0.113.5")

    def test_denyDestUnspecifiedIsLoopback(self) -> None:
        """
        The unspecified addresses count as loopback for --deny-dest.
        """
        for destination in [("0.0.0.0", 80), ("::", 80), ("::ffff:0.0.0.0", 80)]:
            proto, client = self.open(self.transparent(destination, deny_dest=["127.0.0.0/8", "::1"]))
            self.assertTrue(client.closed, destination)
        self.assertEqual(self.connector.attempts, [])
        self.assertEqual([r.status for r in self.log.records], [403, 403, 403])

    def test_denyDestAppliesToHookTargets(self) -> None:
        """
        A C{chooseUpstream} hook's L{Target} (checked on its resolved
        addresses) and C{tcp:} IP description are checked too.
        """
        self.connector.hosts["inside.test"] = ["10.9.9.9"]
        for choice in [Target("inside.test", 22), Target("10.0.0.1", 22), "tcp:10.0.0.2:22"]:

            class Elsewhere(TCPProxyProtocol):
                def chooseUpstream(self, request: StreamRequest, choice: Any = choice) -> Any:
                    return choice

            factory = self.transparent(("203.0.113.5", 80), deny_dest="10.0.0.0/8")
            factory.protocol = Elsewhere
            proto, client = self.open(factory)
            self.assertTrue(client.closed, choice)
        self.assertEqual(self.connector.attempts, [])
        self.assertEqual([r.status for r in self.log.records], [403, 403, 403])


class HAProxyListenerTests(TCPTestCase):
    """
    Behind a C{haproxy:} listener, the client is the one the PROXY header
    names, for the ACL, the record and the header sent on.
    """

    def wrapped(self, factory: Any) -> Tuple[Any, StringTransport]:
        from txproxy.proxyaccept import HalfCloseableHAProxyFactory

        wrapping = HalfCloseableHAProxyFactory(factory)
        transport = FakeTransport(peer=("127.0.0.1", 1111))
        proto = wrapping.buildProtocol(transport.getPeer())
        transport.protocol = proto
        proto.makeConnection(transport)
        return proto, transport

    def test_headerAddressIsTheClient(self) -> None:
        """
        Nothing is dialled before the header; the record, the ACL and the
        PROXY header sent upstream use the address it carried.
        """
        factory = self.factory(allow="198.51.100.0/24", proxy_protocol_send="v1")
        wrapper, transport = self.wrapped(factory)
        self.assertEqual(self.connector.attempts, [])
        wrapper.dataReceived(b"PROXY TCP4 198.51.100.7 203.0.113.1 5555 443\r\nhello")
        upstream = self.connector.last.succeed()
        self.assertEqual(upstream.value(), b"PROXY TCP4 198.51.100.7 203.0.113.1 5555 443\r\nhello")
        transport.peerClosed()
        self.assertEqual(self.log.records[0].client, "198.51.100.7")

    def test_headerAddressDenied(self) -> None:
        """
        The ACL applies to the carried address, not the peer's.
        """
        factory = self.factory(deny="198.51.100.0/24")
        wrapper, transport = self.wrapped(factory)
        wrapper.dataReceived(b"PROXY TCP4 198.51.100.7 203.0.113.1 5555 443\r\n")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.connector.attempts, [])
        self.assertEqual(self.log.records[0].status, 403)

    def test_headerSplitAtEveryByte(self) -> None:
        """
        A version 2 header arriving in pieces connects the protocol once,
        when complete; the bytes after it are relayed.
        """
        for header in [
            formatV2(("198.51.100.7", 5555), ("203.0.113.1", 443)),
            b"PROXY TCP4 198.51.100.7 203.0.113.1 5555 443\r\n",
        ]:
            # Split anywhere: inside the signature or C{PROX} / C{Y TCP4 ...}.
            for cut in range(1, len(header)):
                self.connector.attempts.clear()
                factory = self.factory()
                wrapper, transport = self.wrapped(factory)
                wrapper.dataReceived(header[:cut])
                self.assertFalse(transport.disconnecting, cut)
                self.assertEqual(self.connector.attempts, [])
                wrapper.dataReceived(header[cut:] + b"data")
                upstream = self.connector.last.succeed()
                self.assertEqual(upstream.value(), b"data")
                (proto,) = factory.protocols
                self.assertEqual(proto.client.host, "198.51.100.7")

    def test_finBeforeHeaderCloses(self) -> None:
        """
        A client that half-closes before a complete header is closed; no
        protocol was made.
        """
        factory = self.factory()
        wrapper, transport = self.wrapped(factory)
        wrapper.dataReceived(b"PROXY TCP4 198.51")
        wrapper.readConnectionLost()
        self.assertTrue(transport.disconnecting)
        self.assertEqual(factory.protocols, set())

    def test_noHeaderNeverReachesProtocol(self) -> None:
        """
        A connection without a valid header is closed before the protocol
        is made.
        """
        factory = self.factory()
        wrapper, transport = self.wrapped(factory)
        wrapper.dataReceived(b"GET / HTTP/1.1\r\n\r\n")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.log.records, [])
        self.assertEqual(factory.protocols, set())


class HAProxyListenerGuardTests(TCPTestCase):
    """
    A C{haproxy:} listener bounds a connection from accept: the PROXY
    header must come within C{--header-timeout}, the connection counts
    toward C{--max-conns} before it, and a header whose addresses are not
    IP addresses closes the connection with one log line.
    """

    def setUp(self) -> None:
        super().setUp()
        from twisted.logger import globalLogPublisher

        self.events: List[Any] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def limited(self, **options: Any) -> Any:
        from txproxy.limits.memory import MemoryLimiter
        from txproxy.limits.service import ListenerLimits

        factory = self.factory(**options)
        self.limiter = MemoryLimiter(self.clock)
        factory.limits = ListenerLimits(self.limiter, factory.listener, "tcp")
        return factory

    def wrapped(self, factory: Any, peer: Tuple[str, int] = ("127.0.0.1", 1111)) -> Tuple[Any, FakeTransport]:
        from txproxy.proxyaccept import HalfCloseableHAProxyFactory

        wrapping = getattr(factory, "_wrapping", None)
        if wrapping is None:
            wrapping = factory._wrapping = HalfCloseableHAProxyFactory(factory)
        transport = FakeTransport(peer=peer)
        proto = wrapping.buildProtocol(transport.getPeer())
        transport.protocol = proto
        proto.makeConnection(transport)
        return proto, transport

    def lines(self) -> List[str]:
        from twisted.logger import formatEvent

        return [formatEvent(e) for e in self.events if "PROXY header" in formatEvent(e)]

    def test_silentConnectionTimesOut(self) -> None:
        """
        A connection that sends nothing, or part of a header, is closed
        after C{--header-timeout}, with one log line each; a complete
        header in time stops the timer.
        """
        factory = self.factory(header_timeout=5)
        silent = self.wrapped(factory)[1]
        _, partial = self.wrapped(factory)
        partial.protocol.dataReceived(b"PROXY TCP4 198.51")
        _, complete = self.wrapped(factory)
        complete.protocol.dataReceived(b"PROXY TCP4 198.51.100.7 203.0.113.1 5555 443\r\n")
        self.clock.advance(4.9)
        self.assertFalse(silent.disconnecting or partial.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(silent.closed and partial.closed)
        self.assertFalse(complete.disconnecting)
        lines = self.lines()
        self.assertEqual(len(lines), 2, lines)
        self.assertIn("--header-timeout", lines[0])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(factory.protocols), 1)

    def test_countsTowardMaxConnsFromAccept(self) -> None:
        """
        Connections without a header yet hold slots of C{--max-conns}: one
        over it is closed at once; closing one frees its slot; and once the
        header arrives the slot passes to the connection (still one slot).
        """
        factory = self.limited(max_conns=2)
        _, first = self.wrapped(factory)
        _, second = self.wrapped(factory)
        self.assertEqual(self.limiter.leaseCount, 2)
        _, third = self.wrapped(factory)
        self.assertTrue(third.closed)
        self.assertEqual(self.limiter.leaseCount, 2)
        first.peerClosed()
        self.assertEqual(self.limiter.leaseCount, 1)
        _, fourth = self.wrapped(factory)
        self.assertFalse(fourth.disconnecting)
        fourth.protocol.dataReceived(b"PROXY TCP4 198.51.100.7 203.0.113.1 5555 443\r\n")
        self.assertEqual(self.limiter.leaseCount, 2)
        self.assertEqual([p.client.host for p in factory.protocols], ["198.51.100.7"])
        _, fifth = self.wrapped(factory)
        self.assertTrue(fifth.closed)
        # Timed out connections give their slots back too.
        self.clock.advance(factory.listener.headerTimeout)
        self.assertTrue(second.closed)
        self.assertEqual(self.limiter.leaseCount, 1)
        fourth.peerClosed()
        self.assertEqual(self.limiter.leaseCount, 0)

    def test_perClientCapOnHeaderAddress(self) -> None:
        """
        C{--max-conns-per-client} counts the address the header carries,
        not the load balancer's: two clients behind one peer each get
        their own cap.
        """
        factory = self.limited(max_conns_per_client=1)
        opened = []
        for client in ["198.51.100.7", "198.51.100.8", "198.51.100.7"]:
            _, transport = self.wrapped(factory)
            transport.protocol.dataReceived(b"PROXY TCP4 %s 203.0.113.1 5555 443\r\n" % (client.encode(),))
            opened.append(transport)
        self.assertEqual([t.closed for t in opened], [False, False, True])

    def test_capAnsweredLater(self) -> None:
        """
        When the limiter answers later (Redis), a header that arrives
        first waits for the answer (reading paused); the slot held since
        accept is released once the protocol has its own.
        """
        from txproxy.limits._decision import Decision
        from txproxy.limits.service import ListenerLimits

        asked: List[Any] = []
        released: List[str] = []

        class Lease:
            def __init__(self, client: str) -> None:
                self.client = client

            def release(self) -> Any:
                released.append(self.client)
                return defer.succeed(None)

        class SlowLimiter:
            def take(self, key: str, rate: float, burst: float, cost: float = 1.0) -> Any:
                raise AssertionError("no --rate here")

            def acquire(self, scope: str, client: str, maxTotal: Any, maxPerClient: Any) -> Any:
                d: defer.Deferred[Any] = defer.Deferred()
                asked.append((client, maxTotal, maxPerClient, d))
                return d

            takeNowOrLater = take
            acquireNowOrLater = acquire

        factory = self.factory(max_conns=5, max_conns_per_client=2)
        factory.limits = ListenerLimits(SlowLimiter(), factory.listener, "tcp")  # type: ignore[arg-type]
        _, transport = self.wrapped(factory)
        ((client, total, perClient, d),) = asked
        self.assertEqual((total, perClient), (5, None))
        transport.protocol.dataReceived(b"PROXY TCP4 198.51.100.7 203.0.113.1 5555 443\r\nhel")
        transport.protocol.dataReceived(b"lo")
        self.assertTrue(transport.paused)
        self.assertEqual(factory.protocols, set())
        d.callback(Decision(True, lease=Lease("pending")))
        self.assertFalse(transport.paused)
        self.assertEqual(released, ["pending"])
        ((client, total, perClient, d2),) = asked[1:]
        self.assertEqual((client, total, perClient), ("198.51.100.7", 5, 2))
        d2.callback(Decision(True, lease=Lease("client")))
        upstream = self.connector.last.succeed()
        self.assertEqual(upstream.value(), b"hello")
        transport.peerClosed()
        self.assertEqual(released, ["pending", "client"])

    def test_badAddressesClosed(self) -> None:
        """
        A header carrying C{not-an-ip}, C{999.1.1.1}, a NUL or a UNIX
        address closes the connection with one log line; the protocol is
        never made, nothing is dialled.
        """
        unixBody = b"/tmp/a".ljust(108, b"\x00") + b"/tmp/b".ljust(108, b"\x00")
        headers = [
            b"PROXY TCP4 not-an-ip 203.0.113.1 5555 443\r\n",
            b"PROXY TCP4 999.1.1.1 203.0.113.1 5555 443\r\n",
            b"PROXY TCP4 198.51.100.7\x00 203.0.113.1 5555 443\r\n",
            V2_SIGNATURE + b"\x21\x31" + struct.pack("!H", len(unixBody)) + unixBody,
        ]
        factory = self.limited(max_conns=10)
        for header in headers:
            _, transport = self.wrapped(factory)
            transport.protocol.dataReceived(header)
            self.assertTrue(transport.closed)
        self.assertEqual(factory.protocols, set())
        self.assertEqual(self.connector.attempts, [])
        self.assertEqual(self.limiter.leaseCount, 0)
        self.assertEqual(len(self.lines()), len(headers))
        self.assertIn("bad PROXY header", self.lines()[0])


class ServiceTests(SynchronousTestCase):
    def test_factoriesByMode(self) -> None:
        """
        The service builds each TCP mode's factory, sharing its router.
        """
        from txproxy.runtime.service import ProxyService
        from txproxy.runtime.tap import parseCommandLine
        from txproxy.stream.sni import SNIRouterFactory

        reactor = MemoryReactorClock()
        for args, cls in [
            (["--mode", "tcp", "--upstream", UP1], TCPProxyFactory),
            (["--mode", "transparent"], TransparentFactory),
            (["--mode", "sni", "--route", "a.test=tcp://127.0.0.1:9443"], SNIRouterFactory),
        ]:
            config = parseCommandLine(["--listen", "tcp:0"] + args)
            service = ProxyService(config, reactor)
            (factory,) = service.factories.values()
            self.assertIsInstance(factory, cls)
            self.assertIs(factory.router, service.router)


class _Metrics:
    def __init__(self) -> None:
        self.events: List[Any] = []

    def connectionOpened(self, listener: Any) -> None:
        self.events.append("opened")

    def connectionClosed(self, listener: Any) -> None:
        self.events.append("closed")

    def upstreamConnected(self, listener: Any, seconds: float) -> None:
        self.events.append(("connected", seconds))

    def requestFinished(self, listener: Any, record: AccessRecord) -> None:
        self.events.append(("finished", record.status, record.bytesUp))


class MetricsTests(TCPTestCase):
    def test_metricsEvents(self) -> None:
        """
        The factory reports each connection's opening, its upstream connect
        time, its record and its closing to the metrics.
        """
        factory = self.factory()
        factory.metrics = metrics = _Metrics()
        proto, client = self.open(factory)
        self.clock.advance(0.25)
        self.connector.last.succeed()
        proto.dataReceived(b"abc")
        client.peerClosed()
        self.assertEqual(metrics.events, ["opened", ("connected", 0.25), ("finished", 200, 3), "closed"])


class TCPLimitTests(SynchronousTestCase):
    """
    The limiter in TCP modes: refused connections are closed at once.
    """

    def setUp(self) -> None:
        from twisted.internet.task import Clock

        from txproxy.limits.service import ListenerLimits, MemoryLimiter
        from txproxy.stream.tcp import TCPProxyFactory
        from txproxy.testing import FakeConnector, listenerConfig

        self.clock = Clock()
        self.connector = FakeConnector()
        self.makeFactory = lambda **kw: self._factory(TCPProxyFactory, ListenerLimits, MemoryLimiter, listenerConfig, **kw)

    def _factory(self, cls, ListenerLimits, MemoryLimiter, listenerConfig, **options):  # type: ignore[no-untyped-def]
        listener = listenerConfig(mode="tcp", upstream="tcp:192.0.2.1:22", **options)
        factory = cls(listener, self.connector, self.clock)
        factory.limits = ListenerLimits(MemoryLimiter(self.clock), listener, "tcp")
        return factory

    def test_rateClosesAtOnce(self) -> None:
        """
        Over --rate/--burst a connection is closed without dialling.
        """
        from txproxy.testing import connect

        factory = self.makeFactory(rate="1/m", burst="1")
        proto, transport = connect(factory)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(len(self.connector.attempts), 1)
        proto, transport = connect(factory)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(self.connector.attempts), 1)

    def test_maxConnsLeaseReleased(self) -> None:
        """
        --max-conns closes the connection over the cap; closing one frees
        its slot.
        """
        from txproxy.testing import connect

        factory = self.makeFactory(max_conns="1")
        first, firstT = connect(factory)
        second, secondT = connect(factory)
        self.assertTrue(secondT.disconnecting)
        firstT.peerClosed()
        third, thirdT = connect(factory)
        self.assertFalse(thirdT.disconnecting)
