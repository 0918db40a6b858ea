# -*- test-case-name: tests.test_sni -*-
"""
Tests for L{txproxy.stream.sni}: routing TLS connections by the ClientHello's
server name, on fake transports, a fake connector and a fake clock, with
ClientHellos captured from OpenSSL and Python (C{tests/fixtures}).
"""

from __future__ import annotations

from typing import Any, List, Tuple

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from tests.test_clienthello import FIXTURES, helloBody, helloRecord, sniExtension
from txproxy.accesslog import AccessRecord
from txproxy.hooks import StreamRequest, Target
from txproxy.proxyprotocol import formatV2
from txproxy.stream.sni import UNRECOGNIZED_NAME_ALERT, SNIRouterFactory, SNIRouterProtocol
from txproxy.testing import FakeConnector, FakeTransport, connect, listenerConfig

HELLO_A = FIXTURES["openssl-sni.bin"]  # a.test
HELLO_B = FIXTURES["python-sni-tls12.bin"]  # b.test
HELLO_MULTI = FIXTURES["openssl-multirecord.bin"]  # multi.a.test, 3 records
HELLO_NOSNI = FIXTURES["openssl-nosni.bin"]


class _Log:
    def __init__(self) -> None:
        self.records: List[AccessRecord] = []

    def log(self, record: AccessRecord) -> None:
        self.records.append(record)


class SNITestCase(SynchronousTestCase):
    routes = [
        "a.test=tcp://192.0.2.1:9443",
        "*.a.test=tcp://192.0.2.2:9443",
        "b.test=tcp://192.0.2.3:9443,tcp://192.0.2.4:9443",
    ]

    def setUp(self) -> None:
        self.clock = Clock()
        self.connector = FakeConnector({"backend.test": ["192.0.2.9"]})
        self.log = _Log()

    def factory(self, protocol: Any = None, routes: Any = None, **options: Any) -> SNIRouterFactory:
        listener = listenerConfig(mode="sni", route=routes or self.routes, header_timeout="5", **options)
        factory = SNIRouterFactory(listener, self.connector, self.clock, accessLog=self.log)
        if protocol is not None:
            factory.protocol = protocol
        return factory

    def open(self, factory: Any = None, peer: Tuple[str, int] = ("127.0.0.1", 40000)) -> Tuple[Any, FakeTransport]:
        return connect(factory if factory is not None else self.factory(), peer)


class SNIRoutingTests(SNITestCase):
    def test_routesByName(self) -> None:
        """
        The ClientHello's server name picks the route; the buffered bytes
        are replayed upstream unchanged, then the connection is relayed.
        """
        proto, client = self.open()
        self.assertFalse(client.paused)
        proto.dataReceived(HELLO_A)
        self.assertTrue(client.paused)
        attempt = self.connector.last
        self.assertEqual((attempt.host, attempt.port), ("192.0.2.1", 9443))
        upstream = attempt.succeed()
        self.assertEqual(upstream.value(), HELLO_A)
        self.assertFalse(client.paused)
        attempt.protocol.dataReceived(b"server hello")
        self.assertEqual(client.value(), b"server hello")
        proto.dataReceived(b"finished")
        self.assertEqual(upstream.value(), HELLO_A + b"finished")

    def test_wildcardRoute(self) -> None:
        """
        A name under C{*.a.test} goes to the wildcard route.
        """
        proto, client = self.open()
        proto.dataReceived(HELLO_MULTI)
        self.assertEqual(self.connector.last.host, "192.0.2.2")

    def test_helloSplitAtEveryByte(self) -> None:
        """
        A ClientHello arriving in two pieces, cut anywhere, is routed once
        complete, and every byte is replayed.
        """
        for hello in (HELLO_A, HELLO_MULTI):
            for cut in range(1, len(hello)):
                self.connector.attempts.clear()
                proto, client = self.open()
                proto.dataReceived(hello[:cut])
                self.assertEqual(self.connector.attempts, [], cut)
                proto.dataReceived(hello[cut:])
                upstream = self.connector.last.succeed()
                self.assertEqual(upstream.value(), hello)

    def test_helloOneByteAtATime(self) -> None:
        """
        A ClientHello spread over several TLS records, one byte per segment,
        is routed and replayed.
        """
        proto, client = self.open()
        for i in range(len(HELLO_MULTI)):
            proto.dataReceived(HELLO_MULTI[i : i + 1])
        upstream = self.connector.last.succeed()
        self.assertEqual(upstream.value(), HELLO_MULTI)

    def test_bytesAfterHelloKept(self) -> None:
        """
        Bytes following the ClientHello (early data) and bytes arriving while
        connecting are replayed too.
        """
        proto, client = self.open()
        proto.dataReceived(HELLO_A + b"early")
        proto.dataReceived(b"-while-connecting")
        upstream = self.connector.last.succeed()
        self.assertEqual(upstream.value(), HELLO_A + b"early-while-connecting")

    def test_poolRetry(self) -> None:
        """
        A route's pool is balanced and a refused backend is retried once on
        the next member.
        """
        proto, client = self.open()
        proto.dataReceived(HELLO_B)
        self.assertEqual(self.connector.last.host, "192.0.2.3")
        self.connector.last.fail()
        self.assertEqual(self.connector.last.host, "192.0.2.4")
        upstream = self.connector.last.succeed()
        self.assertEqual(upstream.value(), HELLO_B)

    def test_hostnameBackendResolved(self) -> None:
        """
        A backend named by host name is resolved by the connector.
        """
        factory = self.factory(routes=["a.test=tcp://backend.test:443"])
        proto, client = self.open(factory)
        proto.dataReceived(HELLO_A)
        self.assertEqual((self.connector.last.host, self.connector.last.port), ("192.0.2.9", 443))

    def test_accessRecord(self) -> None:
        """
        The record names the server name as its target, the mode and the
        backend dialled.
        """
        proto, client = self.open()
        proto.dataReceived(HELLO_A)
        self.connector.last.succeed()
        client.peerClosed()
        (record,) = self.log.records
        self.assertEqual((record.status, record.mode, record.method), (200, "sni", "TLS"))
        self.assertEqual((record.target, record.upstream), ("a.test", "192.0.2.1:9443"))
        self.assertEqual(record.bytesUp, len(HELLO_A))

    def test_proxyHeaderPerRoute(self) -> None:
        """
        A route's own C{proxy_protocol_send} is written before the replayed
        hello; the listener's applies to the other routes.
        """
        from txproxy.config import fromTOML

        config = fromTOML(
            {
                "listeners": [
                    {
                        "listen": ["tcp:0"],
                        "mode": "sni",
                        "proxy_protocol_send": "v1",
                        "routes": [
                            {"host": "a.test", "upstreams": ["tcp://192.0.2.1:9443"], "proxy_protocol_send": "v2"},
                            {"host": "b.test", "upstreams": ["tcp://192.0.2.3:9443"]},
                        ],
                    }
                ]
            }
        )
        factory = SNIRouterFactory(config.listeners[0], self.connector, self.clock)
        proto, client = self.open(factory, ("198.51.100.7", 5555))
        proto.dataReceived(HELLO_A)
        upstream = self.connector.last.succeed()
        self.assertEqual(upstream.value(), formatV2(("198.51.100.7", 5555), ("127.0.0.1", 3128)) + HELLO_A)
        proto, client = self.open(factory, ("198.51.100.7", 5556))
        proto.dataReceived(HELLO_B)
        upstream = self.connector.last.succeed()
        self.assertEqual(upstream.value(), b"PROXY TCP4 198.51.100.7 127.0.0.1 5556 3128\r\n" + HELLO_B)


    def test_proxyHeaderPerUpstream(self) -> None:
        """
        In one route, an upstream with its own C{proxy_protocol_send} gets
        that header and the other upstream the route's; a route's C{"none"}
        turns the listener's off.
        """
        from txproxy.config import fromTOML

        config = fromTOML(
            {
                "listeners": [
                    {
                        "listen": ["tcp:0"],
                        "mode": "sni",
                        "proxy_protocol_send": "v1",
                        "routes": [
                            {
                                "host": "b.test",
                                "proxy_protocol_send": "none",
                                "upstreams": [
                                    {"url": "tcp://192.0.2.3:9443", "proxy_protocol_send": "v2"},
                                    "tcp://192.0.2.4:9443",
                                ],
                            },
                        ],
                    }
                ]
            }
        )
        factory = SNIRouterFactory(config.listeners[0], self.connector, self.clock)
        proto, client = self.open(factory, ("198.51.100.7", 5555))
        proto.dataReceived(HELLO_B)
        self.assertEqual(self.connector.last.host, "192.0.2.3")
        upstream = self.connector.last.succeed()
        self.assertEqual(upstream.value(), formatV2(("198.51.100.7", 5555), ("127.0.0.1", 3128)) + HELLO_B)
        proto, client = self.open(factory, ("198.51.100.7", 5556))
        proto.dataReceived(HELLO_B)
        self.assertEqual(self.connector.last.host, "192.0.2.4")
        upstream = self.connector.last.succeed()
        self.assertEqual(upstream.value(), HELLO_B)


class SNIRefusalTests(SNITestCase):
    def assertClosed(self, client: FakeTransport, status: int, reasonPart: str) -> None:
        self.assertTrue(client.closed)
        self.assertEqual(self.connector.attempts, [])
        (record,) = self.log.records
        self.assertEqual(record.status, status)
        self.assertIn(reasonPart, record.reason)

    def test_noSNI(self) -> None:
        """
        A ClientHello without SNI is closed (even with a C{*} route).
        """
        proto, client = self.open(self.factory(routes=["*=tcp://192.0.2.1:1"]))
        proto.dataReceived(HELLO_NOSNI)
        self.assertClosed(client, 400, "no SNI")

    def test_noRoute(self) -> None:
        """
        A name no route matches is closed after a TLS C{unrecognized_name}
        alert.
        """
        hello = helloRecord(helloBody([sniExtension(b"other.test")]))
        proto, client = self.open()
        proto.dataReceived(hello)
        self.assertEqual(client.value(), UNRECOGNIZED_NAME_ALERT)
        self.assertClosed(client, 404, "no route for other.test")

    def test_nonASCIIName(self) -> None:
        """
        An SNI name that is not ASCII is closed after a TLS
        C{unrecognized_name} alert, with one log line and no traceback
        (even with a C{*} route: no route can match it).
        """
        from twisted.logger import formatEvent, globalLogPublisher

        events: List[Any] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        hello = helloRecord(helloBody([sniExtension(b"caf\xc3\xa9.test")]))
        proto, client = self.open(self.factory(routes=["*=tcp://192.0.2.1:1"]))
        proto.dataReceived(hello)
        self.assertEqual(client.value(), UNRECOGNIZED_NAME_ALERT)
        self.assertClosed(client, 400, "not ASCII")
        lines = [formatEvent(e) for e in events if e.get("log_namespace", "").startswith("txproxy")]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("host_name is not ASCII", lines[0])
        self.assertFalse([e for e in events if e.get("log_failure") is not None])

    def test_defaultRoute(self) -> None:
        """
        A C{*} route takes names nothing else matches.
        """
        hello = helloRecord(helloBody([sniExtension(b"other.test")]))
        proto, client = self.open(self.factory(routes=["a.test=tcp://192.0.2.1:1", "*=tcp://192.0.2.7:2"]))
        proto.dataReceived(hello)
        self.assertEqual(self.connector.last.host, "192.0.2.7")

    def test_garbage(self) -> None:
        """
        Bytes that are not a TLS ClientHello (a plain HTTP request) are
        closed at once, and the reason is logged.
        """
        proto, client = self.open()
        proto.dataReceived(b"GET / HTTP/1.1\r\n")
        self.assertClosed(client, 400, "bad ClientHello")

    def test_tooLarge(self) -> None:
        """
        A ClientHello larger than the size cap is refused.
        """

        class Small(SNIRouterFactory):
            maxHelloSize = 64

        listener = listenerConfig(mode="sni", route=self.routes)
        factory = Small(listener, self.connector, self.clock, accessLog=self.log)
        proto, client = self.open(factory)
        proto.dataReceived(HELLO_A)
        self.assertClosed(client, 400, "limit")

    def test_helloTimeout(self) -> None:
        """
        A ClientHello not complete within C{--header-timeout} is closed.
        """
        proto, client = self.open()
        proto.dataReceived(HELLO_A[:10])
        self.clock.advance(4.9)
        self.assertFalse(client.closed)
        self.clock.advance(0.1)
        self.assertClosed(client, 408, "in time")

    def test_timerCancelledOnceRouted(self) -> None:
        """
        The hello timer stops once the hello is read.
        """
        proto, client = self.open()
        proto.dataReceived(HELLO_A)
        self.connector.last.succeed()
        self.clock.advance(10)
        self.assertFalse(client.closed)
        self.assertEqual(self.log.records, [])

    def test_clientFinBeforeHello(self) -> None:
        """
        A client that half-closes before a complete hello is closed.
        """
        proto, client = self.open()
        proto.dataReceived(HELLO_A[:10])
        client.peerHalfClosed()
        self.assertTrue(client.closed)

    def test_denied(self) -> None:
        """
        C{--deny} closes the client before anything is read.
        """
        proto, client = self.open(self.factory(deny="127.0.0.0/8"))
        self.assertClosed(client, 403, "not allowed")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_drainClosesSilentConnections(self) -> None:
        """
        Draining closes a connection that sent nothing yet and leaves one
        that is mid-hello.
        """
        silent, silentTransport = self.open()
        busy, busyTransport = self.open()
        busy.dataReceived(HELLO_A[:10])
        silent.drain()
        busy.drain()
        self.assertTrue(silentTransport.closed)
        self.assertFalse(busyTransport.closed)


class SNIHookTests(SNITestCase):
    def test_badChoiceClosesWithOneLine(self) -> None:
        """
        A C{chooseUpstream} naming an endpoint Twisted cannot build
        (C{bogus:xx}) closes the client connection, records it as C{500}
        and logs one line (no traceback); so does an exception while
        routing the ClientHello.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

        class Bogus(SNIRouterProtocol):
            def chooseUpstream(self, request: StreamRequest) -> Any:
                return "bogus:xx"

        proto, client = self.open(self.factory(protocol=Bogus))
        proto.dataReceived(HELLO_A)
        self.assertTrue(client.closed)
        self.assertEqual(self.log.records[-1].status, 500)

        factory = self.factory()

        class BrokenTable:
            def match(self, name: str) -> Any:
                raise KeyError(name)

        factory.router.tableFor = lambda name: BrokenTable()  # type: ignore[method-assign]
        proto, client = self.open(factory)
        proto.dataReceived(HELLO_A)
        self.assertTrue(client.closed)
        self.assertEqual(self.log.records[-1].status, 500)
        lines = [e for e in events if e.get("log_namespace") == "txproxy.tcp"]
        self.assertEqual(len(lines), 2, lines)
        self.assertIn("Unknown endpoint type", lines[0]["error"])
        self.assertIn("KeyError", lines[1]["error"])
        self.assertFalse([e for e in events if "log_failure" in e])

    def test_chooseUpstream(self) -> None:
        """
        C{chooseUpstream} sees the client and the parsed ClientHello in its
        L{StreamRequest} (and the matched route) and may pick another
        destination.
        """
        seen: List[Any] = []

        class ByALPN(SNIRouterProtocol):
            def chooseUpstream(self, request: StreamRequest) -> Any:
                assert request.hello is not None
                seen.append((request.client.host, request.hello.serverName, self.route.config.host))
                return defer.succeed(Target("192.0.2.77", 8443))

        proto, client = self.open(self.factory(protocol=ByALPN))
        proto.dataReceived(HELLO_A)
        self.assertEqual(seen, [("127.0.0.1", "a.test", "a.test")])
        self.assertEqual((self.connector.last.host, self.connector.last.port), ("192.0.2.77", 8443))
        upstream = self.connector.last.succeed()
        self.assertEqual(upstream.value(), HELLO_A)
