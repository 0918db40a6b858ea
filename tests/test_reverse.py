# -*- test-case-name: tests.test_reverse -*-
"""
Tests for L{txproxy.reverse}: routing by Host and path, load balancing
and failover, forwarded headers, statuses; on fake transports.
"""

from __future__ import annotations

from typing import Any, List, Tuple

from twisted.internet import error
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from txproxy import config
from txproxy.reverse import ReverseProxyFactory, ReverseProxyProtocol, forwardedHeaders
from txproxy.router import RouterService
from txproxy.testing import FakeConnector, FakeTransport, connect


def _listener(*routes: str, **options: Any) -> Any:
    opts: List[Tuple[str, Any]] = [("mode", "reverse"), ("name", "web")]
    opts += [("route", r) for r in routes]
    for key, value in options.items():
        values = value if isinstance(value, list) else [value]
        opts += [(key.replace("_", "-"), str(v)) for v in values]
    return config.fromFlags(["tcp:0"], opts).listeners[0]


class ReverseTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.connector = FakeConnector()
        self.records: List[Any] = []

    def factory(self, *routes: str, protocol: Any = None, **options: Any) -> Any:
        listener = _listener(*routes, **options)
        router = RouterService([listener], self.connector, self.clock)
        f = ReverseProxyFactory(listener, self.connector, self.clock, router=router)
        f.accessLog = self
        if protocol is not None:
            f.protocol = protocol
        return f

    def log(self, record: Any) -> None:
        self.records.append(record)

    def get(self, factory: Any, host: bytes = b"a.test", path: bytes = b"/", extra: bytes = b"",
            peer: Tuple[str, int] = ("203.0.113.9", 5000)) -> Tuple[Any, FakeTransport]:
        proto, client = connect(factory, peer)
        proto.dataReceived(b"GET " + path + b" HTTP/1.1\r\nHost: " + host + b"\r\n" + extra + b"\r\n")
        return proto, client

    def respond(self, body: bytes = b"ok") -> None:
        self.connector.last.protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


class RoutingTests(ReverseTestCase):
    def test_routeByHostAndPrefix(self) -> None:
        """
        Exact host, longest prefix, wildcard and default routes each reach
        their backend.
        """
        factory = self.factory(
            "a.test=http://192.0.2.1:8001",
            "a.test/api=http://192.0.2.2:8002",
            "*.b.test=http://192.0.2.3:8003",
            "*=http://192.0.2.4:8004",
        )
        cases = [(b"a.test", b"/", 8001), (b"a.test:80", b"/api/x", 8002), (b"x.b.test", b"/", 8003),
                 (b"other.test", b"/", 8004)]
        for host, path, port in cases:
            self.get(factory, host, path)
            self.assertEqual(self.connector.last.port, port, (host, path))

    def test_noRouteIs404(self) -> None:
        """
        A Host no route matches is 404, and nothing is dialled.
        """
        proto, client = self.get(self.factory("a.test=http://192.0.2.1:8001"), b"nope.test")
        self.assertTrue(client.value().startswith(b"HTTP/1.1 404 "))
        self.assertEqual(self.connector.attempts, [])

    def test_requestForwardedToBackend(self) -> None:
        """
        The backend gets the origin-form request with the original Host,
        forwarded headers and Via; the response comes back.
        """
        factory = self.factory("a.test=http://192.0.2.1:8001")
        proto, client = self.get(factory, path=b"/p?q")
        upstream = self.connector.last.succeed()
        sent = upstream.value()
        self.assertTrue(sent.startswith(b"GET /p?q HTTP/1.1\r\n"))
        self.assertIn(b"Host: a.test\r\n", sent)
        self.assertIn(b"X-Forwarded-For: 203.0.113.9\r\n", sent)
        self.assertIn(b"X-Forwarded-Proto: http\r\n", sent)
        self.assertIn(b'Forwarded: for=203.0.113.9;proto=http;host="a.test"\r\n', sent)
        self.respond(b"hello")
        self.assertTrue(client.value().endswith(b"hello"))
        self.assertEqual(self.records[0].status, 200)

    def test_stripPrefixAndHostRewrite(self) -> None:
        """
        TOML routes can strip their prefix and rewrite Host.
        """
        route = config.RouteConfig(host="a.test", prefix="/api", upstreams=(config.UpstreamURL("http", "192.0.2.1", 80),),
                                   stripPrefix=True, hostRewrite="internal.test")
        listener = config.ListenerConfig(listen=("tcp:0",), mode="reverse", name="web", routes=(route,))
        router = RouterService([listener], self.connector, self.clock)
        factory = ReverseProxyFactory(listener, self.connector, self.clock, router=router)
        self.get(factory, path=b"/api/v1/x")
        sent = self.connector.last.succeed().value()
        self.assertTrue(sent.startswith(b"GET /v1/x HTTP/1.1"), sent)
        self.assertIn(b"Host: internal.test\r\n", sent)


class BalancingTests(ReverseTestCase):
    def test_roundRobinAcrossRequests(self) -> None:
        """
        Requests alternate between two backends; keep-alive connections to
        each are reused.
        """
        factory = self.factory("a.test=http://192.0.2.1:1,http://192.0.2.2:2")
        ports = []
        for _ in range(4):
            proto, client = self.get(factory)
            if self.connector.last.transport is None:
                self.connector.last.succeed()
            (busy,) = [a for a in self.connector.attempts if a.protocol.owner is not None]
            ports.append(busy.port)
            busy.protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            self.assertIn(b"200 OK", client.value())
        self.assertEqual(ports, [1, 2, 1, 2])
        self.assertEqual(len(self.connector.attempts), 2)

    def test_failedConnectRetriedOnOtherBackend(self) -> None:
        """
        A refused connect is retried once on the other backend, and the
        refusing backend is reported.
        """
        factory = self.factory("a.test=http://192.0.2.1:1,http://192.0.2.2:2")
        proto, client = self.get(factory)
        first = self.connector.last
        first.fail(error.ConnectionRefusedError())
        second = self.connector.last
        self.assertNotEqual(first.port, second.port)
        second.succeed()
        self.respond()
        self.assertIn(b"200 OK", client.value())

    def test_allBackendsDownIs503(self) -> None:
        """
        When every backend is ejected, requests get 503 without a dial.
        """
        factory = self.factory("a.test=http://192.0.2.1:1")
        pool = factory.router.routeFor("web", "a.test", "/").pool
        for backend in pool.backends:
            backend.healthy = False
        proto, client = self.get(factory)
        self.assertTrue(client.value().startswith(b"HTTP/1.1 503 "))
        self.assertEqual(self.connector.attempts, [])

    def test_activeConnectionsCounted(self) -> None:
        """
        A backend counts a request while it is in flight, and not after.
        """
        factory = self.factory("a.test=http://192.0.2.1:1")
        backend = factory.router.routeFor("web", "a.test", "/").pool.backends[0]
        self.get(factory)
        self.assertEqual(backend.activeConnections, 1)
        self.connector.last.succeed()
        self.respond()
        self.assertEqual(backend.activeConnections, 0)


class ForwardedHeaderTests(SynchronousTestCase):
    def test_untrustedClientHeadersReplaced(self) -> None:
        """
        From an untrusted client, X-Forwarded-* and Forwarded are replaced.
        """
        headers = ((b"X-Forwarded-For", b"6.6.6.6"), (b"Forwarded", b"for=6.6.6.6"), (b"X-Forwarded-Proto", b"https"),
                   (b"Accept", b"*/*"))
        out = dict(forwardedHeaders(headers, "10.0.0.1", "http", b"a.test", trusted=False))
        self.assertEqual(out[b"X-Forwarded-For"], b"10.0.0.1")
        self.assertEqual(out[b"X-Forwarded-Proto"], b"http")
        self.assertEqual(out[b"Forwarded"], b'for=10.0.0.1;proto=http;host="a.test"')
        self.assertEqual(out[b"Accept"], b"*/*")

    def test_trustedClientChainExtended(self) -> None:
        """
        From a trusted proxy, the chains are kept and extended; IPv6 is
        bracketed and quoted in Forwarded.
        """
        headers = ((b"X-Forwarded-For", b"198.51.100.1"), (b"Forwarded", b"for=198.51.100.1"),
                   (b"X-Forwarded-Proto", b"https"))
        out = dict(forwardedHeaders(headers, "2001:db8::1", "http", b"a.test", trusted=True))
        self.assertEqual(out[b"X-Forwarded-For"], b"198.51.100.1, 2001:db8::1")
        self.assertEqual(out[b"X-Forwarded-Proto"], b"https")
        self.assertTrue(out[b"Forwarded"].startswith(b'for=198.51.100.1, for="[2001:db8::1]"'))

    def test_trustedProxiesOption(self) -> None:
        """
        --trusted-proxies decides whose headers are kept, end to end.
        """
        clock = Clock()
        connector = FakeConnector()
        listener = _listener("a.test=http://192.0.2.1:1", trusted_proxies="10.0.0.0/8")
        factory = ReverseProxyFactory(listener, connector, clock, router=RouterService([listener], connector, clock))
        for peer, expected in [(("10.1.1.1", 1), b"1.2.3.4, 10.1.1.1"), (("192.0.2.99", 1), b"192.0.2.99")]:
            proto, client = connect(factory, peer)
            proto.dataReceived(b"GET / HTTP/1.1\r\nHost: a.test\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n")
            attempt = connector.last
            sent = attempt.succeed().value() if attempt.transport is None else attempt.transport.value()
            self.assertIn(b"X-Forwarded-For: " + expected + b"\r\n", sent)


class HookTests(ReverseTestCase):
    def test_chooseBackendHook(self) -> None:
        """
        chooseBackend can pin requests to a backend (here by a header).
        """

        class Pin(ReverseProxyProtocol):
            def chooseBackend(self, request: Any, route: Any) -> Any:
                want = request.head.get(b"x-backend")
                for backend in route.pool.backends:
                    if want and backend.key.endswith(want.decode()):
                        return backend
                return None

        factory = self.factory("a.test=http://192.0.2.1:1,http://192.0.2.2:2", protocol=Pin)
        self.get(factory, extra=b"X-Backend: 2\r\n")
        self.assertEqual(self.connector.last.port, 2)
        proto, client = self.get(factory, extra=b"X-Backend: 9\r\n")
        self.assertTrue(client.value().startswith(b"HTTP/1.1 503 "))


class RateKeyTests(ReverseTestCase):
    def test_rateByRoute(self) -> None:
        """
        With --rate-key route, all clients of a route share one bucket, and
        another route has its own.
        """
        from txproxy.limiter import ListenerLimits, MemoryLimiter

        factory = self.factory("a.test=http://192.0.2.1:1", "b.test=http://192.0.2.2:2", rate="1/m", burst="1",
                               rate_key="route")
        factory.limits = ListenerLimits(MemoryLimiter(self.clock), factory.listener, "web")
        proto, client = self.get(factory, peer=("10.0.0.1", 1))
        self.assertEqual(client.value(), b"")
        proto, client = self.get(factory, peer=("10.0.0.2", 1))
        self.assertTrue(client.value().startswith(b"HTTP/1.1 429 "))
        proto, client = self.get(factory, host=b"b.test", peer=("10.0.0.2", 1))
        self.assertEqual(client.value(), b"")


class ConnectFailureTests(ReverseTestCase):
    def test_connectTimeoutRetriedAndCounted(self) -> None:
        """
        A connect that times out is retried on the other backend within the
        request's budget and counts toward passive ejection.
        """
        factory = self.factory("a.test=http://192.0.2.1:1,http://192.0.2.2:2", connect_timeout="5")
        proto, client = self.get(factory)
        first = self.connector.last
        first.fail(error.TimeoutError())
        second = self.connector.last
        self.assertNotEqual(first.port, second.port)
        second.succeed()
        self.respond()
        self.assertIn(b"200 OK", client.value())
        backends = {b.url.port: b for b in factory.router.routeFor("web", "a.test", "/").pool.backends}
        self.assertEqual(backends[first.port].consecutiveFailures, 1)

    def test_httpsPoolKeyIncludesTLSSettings(self) -> None:
        """
        Pooled https connections are keyed by the route's verification
        settings too, so routes that verify differently never share one.
        """
        route = lambda verify: config.RouteConfig(  # noqa: E731
            host="a.test" if verify else "b.test", upstreams=(config.UpstreamURL("https", "192.0.2.9", 443),),
            tlsVerify=verify)
        listener = config.ListenerConfig(listen=("tcp:0",), mode="reverse", name="web", routes=(route(True), route(False)))
        router = RouterService([listener], self.connector, self.clock)
        factory = ReverseProxyFactory(listener, self.connector, self.clock, router=router)
        keys = []
        for host in (b"a.test", b"b.test"):
            proto, client = connect(factory)
            proto._head = None
            from txproxy.httpproxy import HTTPRequest
            from txproxy.hooks import Target
            from txproxy.http import RequestHead

            head = RequestHead(b"GET", b"/", b"HTTP/1.1", ((b"Host", host),))
            request = proto.routeRequest(head)
            keys.append(proto.poolKey(request))
        self.assertNotEqual(keys[0], keys[1])
