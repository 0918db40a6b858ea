# -*- test-case-name: tests.test_reverse -*-
"""
Tests for L{txproxy.reverse}: routing by Host and path, load balancing
and failover, forwarded headers, statuses; on fake transports.
"""

from __future__ import annotations

import weakref
from typing import Any, List, Tuple

from twisted.internet import error
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.refcycles import assertFreed, collectorOff
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


def _hostFields(sent: bytes) -> List[bytes]:
    """
    The values of the C{Host} fields in the request head C{sent}.
    """
    head = sent.split(b"\r\n\r\n", 1)[0]
    return [line[5:].strip() for line in head.split(b"\r\n")[1:] if line[:5].lower() == b"host:"]


class HostTests(ReverseTestCase):
    """
    The one C{Host} every request sent to a backend carries.
    """

    def send(self, factory: Any, data: bytes) -> bytes:
        """
        Send C{data} from a new client and connect the backend it dials.

        @return: what the backend received.
        """
        proto, client = connect(factory, ("203.0.113.9", 5000))
        proto.dataReceived(data)
        return self.connector.last.succeed().value()  # type: ignore[no-any-return]

    def test_absoluteFormHostIsTheURIAuthority(self) -> None:
        """
        An absolute-form request is routed by its URI's authority, and the
        received C{Host} is replaced by that authority in the request sent
        (RFC 9112 section 3.2.2), in C{X-Forwarded-Host} and in
        C{Forwarded}'s C{host=} too.
        """
        factory = self.factory("a.test=http://192.0.2.1:8001", "b.test=http://192.0.2.2:8002")
        sent = self.send(factory, b"GET https://a.test/p HTTP/1.1\r\nHost: b.test\r\n\r\n")
        self.assertEqual(self.connector.last.port, 8001)
        self.assertTrue(sent.startswith(b"GET /p HTTP/1.1\r\n"), sent)
        self.assertEqual(_hostFields(sent), [b"a.test"])
        self.assertIn(b"X-Forwarded-Host: a.test\r\n", sent)
        self.assertIn(b'Forwarded: for=203.0.113.9;proto=http;host="a.test"\r\n', sent)
        self.assertNotIn(b"b.test", sent)
        sent = self.send(factory, b"GET http://a.test:8080/p HTTP/1.1\r\nHost: b.test\r\n\r\n")
        self.assertEqual(_hostFields(sent), [b"a.test:8080"])

    def test_absoluteFormHostRewriteWins(self) -> None:
        """
        A route's C{host_rewrite} still sets the C{Host} of an absolute-form
        request; C{X-Forwarded-Host} names the URI's authority.
        """
        route = config.RouteConfig(host="a.test", upstreams=(config.UpstreamURL("http", "192.0.2.1", 80),),
                                   hostRewrite="internal.test")
        listener = config.ListenerConfig(listen=("tcp:0",), mode="reverse", name="web", routes=(route,))
        factory = ReverseProxyFactory(listener, self.connector, self.clock,
                                      router=RouterService([listener], self.connector, self.clock))
        sent = self.send(factory, b"GET http://a.test/ HTTP/1.1\r\nHost: b.test\r\n\r\n")
        self.assertEqual(_hostFields(sent), [b"internal.test"])
        self.assertIn(b"X-Forwarded-Host: a.test\r\n", sent)

    def test_hostKeptWhenConnectionListsIt(self) -> None:
        """
        A client whose C{Connection} lists C{host} (HTTP/1.1 or 1.0) still
        has its C{Host} sent to the backend, once.
        """
        factory = self.factory("a.test=http://192.0.2.1:8001")
        for version in [b"HTTP/1.1", b"HTTP/1.0"]:
            sent = self.send(factory, b"GET / " + version + b"\r\nHost: a.test\r\nConnection: host\r\n\r\n")
            self.assertEqual(_hostFields(sent), [b"a.test"], version)

    def test_http10WithoutHostNamesTheBackend(self) -> None:
        """
        An HTTP/1.0 request without C{Host} (with or without
        C{Connection: host}) is sent as HTTP/1.1 with the backend's
        authority as C{Host}: the port left out when it is the scheme's
        default, an IPv6 address in brackets.  No C{X-Forwarded-Host} is
        made up.
        """
        self.connector.hosts["backend.internal"] = ["192.0.2.7"]
        cases = [
            ("http://192.0.2.1:8001", b"192.0.2.1:8001"),
            ("http://192.0.2.1", b"192.0.2.1"),
            ("http://[2001:db8::1]:8001", b"[2001:db8::1]:8001"),
            ("http://backend.internal:8001", b"backend.internal:8001"),
        ]
        for backend, expected in cases:
            factory = self.factory("*=" + backend)
            for extra in [b"", b"Connection: host\r\n"]:
                sent = self.send(factory, b"GET /p HTTP/1.0\r\n" + extra + b"\r\n")
                self.assertTrue(sent.startswith(b"GET /p HTTP/1.1\r\n"), sent)
                self.assertEqual(_hostFields(sent), [expected], (backend, extra))
                self.assertNotIn(b"X-Forwarded-Host", sent)

    def test_http10WithoutHostRetryNamesTheBackendReached(self) -> None:
        """
        When the first backend refuses, the request sent to the other one
        names that other one in C{Host}.
        """
        factory = self.factory("*=http://192.0.2.1:1,http://192.0.2.2:2")
        proto, client = connect(factory)
        proto.dataReceived(b"GET / HTTP/1.0\r\n\r\n")
        self.connector.last.fail(error.ConnectionRefusedError())
        sent = self.connector.last.succeed().value()
        self.assertEqual(_hostFields(sent), [b"192.0.2.2:2"])

    def test_http10WithoutHostKeepsHookHost(self) -> None:
        """
        A C{Host} that a C{rewriteRequest} hook put on a request that had
        none is the one sent.
        """
        from txproxy.http import replaceHeader

        class SetHost(ReverseProxyProtocol):
            def rewriteRequest(self, request: Any, head: Any) -> Any:
                return type(head)(head.method, head.target, head.version,
                                  replaceHeader(head.headers, b"Host", b"hook.test"))

        factory = self.factory("*=http://192.0.2.1:8001", protocol=SetHost)
        sent = self.send(factory, b"GET / HTTP/1.0\r\n\r\n")
        self.assertEqual(_hostFields(sent), [b"hook.test"])

    def test_optionsWithEmptyPathIsAsteriskForm(self) -> None:
        """
        C{OPTIONS http://host} (no path, no query) reaches the backend as
        C{OPTIONS *} (RFC 9112 section 3.2.4); with a C{/} path, or with
        another method, the backend gets C{/}.
        """
        factory = self.factory("a.test=http://192.0.2.1:8001")
        cases = [
            (b"OPTIONS http://a.test HTTP/1.1", b"OPTIONS * HTTP/1.1\r\n"),
            (b"OPTIONS https://a.test:8443 HTTP/1.1", b"OPTIONS * HTTP/1.1\r\n"),
            (b"OPTIONS http://a.test/ HTTP/1.1", b"OPTIONS / HTTP/1.1\r\n"),
            (b"GET http://a.test HTTP/1.1", b"GET / HTTP/1.1\r\n"),
        ]
        for line, expected in cases:
            sent = self.send(factory, line + b"\r\nHost: a.test\r\n\r\n")
            self.assertTrue(sent.startswith(expected), (line, sent))


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

    #: A client's forwarding fields, in dash and underscore spellings.
    CLAIMS = (
        (b"X-Forwarded-For", b"6.6.6.6"),
        (b"X_Forwarded_For", b"7.7.7.7"),
        (b"x-forwarded_host", b"evil.test"),
        (b"X_FORWARDED_PROTO", b"https"),
        (b"X-Real-IP", b"6.6.6.6"),
        (b"X_Real_IP", b"7.7.7.7"),
        (b"Client-IP", b"6.6.6.6"),
        (b"True-Client-IP", b"6.6.6.6"),
        (b"X-Forwarded-Port", b"443"),
        (b"Forwarded", b"for=6.6.6.6"),
        (b"Forwarded_", b"x"),
        (b"X-Custom_Name", b"kept"),
    )

    def test_underscoreSpellingsDroppedFromEveryone(self) -> None:
        """
        A field whose name reads as a forwarding field with C{_} taken for
        C{-} (as CGI and WSGI read it) is dropped, from trusted proxies
        too; other underscore names pass.  From an untrusted client the
        dash spellings of the whole set (C{X-Real-IP}, C{Client-IP},
        C{X-Forwarded-Port}, ...) are dropped as well; a trusted one's are
        kept.
        """
        untrusted = forwardedHeaders(self.CLAIMS, "10.0.0.1", "http", b"a.test", trusted=False)
        trusted = forwardedHeaders(self.CLAIMS, "10.0.0.1", "http", b"a.test", trusted=True)
        for out in [untrusted, trusted]:
            names = [n for n, _ in out]
            self.assertFalse([n for n in names if b"_" in n and n != b"X-Custom_Name" and n != b"Forwarded_"],
                             names)
            self.assertIn((b"X-Custom_Name", b"kept"), out)
            self.assertNotIn(b"7.7.7.7", b"".join(v for _, v in out))
            self.assertNotIn(b"evil.test", b"".join(v for _, v in out))
        self.assertEqual(dict(untrusted)[b"X-Forwarded-For"], b"10.0.0.1")
        for name in [b"X-Real-IP", b"Client-IP", b"True-Client-IP", b"X-Forwarded-Port"]:
            self.assertNotIn(name, dict(untrusted))
            self.assertEqual(dict(trusted)[name], b"443" if name == b"X-Forwarded-Port" else b"6.6.6.6")
        self.assertEqual(dict(trusted)[b"X-Forwarded-For"], b"6.6.6.6, 10.0.0.1")

    def test_underscoreSpellingReachesNoBackend(self) -> None:
        """
        End to end: C{X_Forwarded_For} sent to a reverse listener does not
        reach the backend, from an untrusted or a trusted client, so a
        WSGI backend's C{HTTP_X_FORWARDED_FOR} is only the proxy's.
        """
        clock = Clock()
        connector = FakeConnector()
        listener = _listener("a.test=http://192.0.2.1:1", trusted_proxies="10.0.0.0/8")
        factory = ReverseProxyFactory(listener, connector, clock, router=RouterService([listener], connector, clock))
        for peer, expected in [(("10.1.1.1", 1), b"X-Forwarded-For: 10.1.1.1\r\n"),
                               (("192.0.2.99", 1), b"X-Forwarded-For: 192.0.2.99\r\n")]:
            proto, client = connect(factory, peer)
            proto.dataReceived(b"GET / HTTP/1.1\r\nHost: a.test\r\nX_Forwarded_For: 1.2.3.4\r\n"
                               b"X-Real-IP: 1.2.3.4\r\n\r\n")
            sent = connector.last.succeed().value()
            self.assertIn(expected, sent)
            self.assertNotIn(b"1.2.3.4", sent.replace(b"X-Real-IP: 1.2.3.4\r\n", b""))
            self.assertNotIn(b"_Forwarded", sent)
            self.assertEqual(b"X-Real-IP: 1.2.3.4" in sent, peer[0] == "10.1.1.1")

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
        from txproxy.limits.service import ListenerLimits, MemoryLimiter

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
            from txproxy.http import RequestHead

            head = RequestHead(b"GET", b"/", b"HTTP/1.1", ((b"Host", host),))
            request = proto.routeRequest(head)
            proto._pickUpstream(request)  # chooseBackend; poolKey chooses nothing
            keys.append(proto.poolKey(request))
        self.assertNotEqual(keys[0], keys[1])


def _v2(source: Tuple[str, int], destination: Tuple[str, int]) -> bytes:
    """
    A PROXY v2 header for two IPv4 addresses, built by hand (not by the
    code under test).
    """
    import socket
    import struct

    from txproxy.proxyprotocol import V2_SIGNATURE

    body = socket.inet_aton(source[0]) + socket.inet_aton(destination[0]) + struct.pack("!HH", source[1], destination[1])
    return V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", len(body)) + body


class ProxyProtocolSendTests(ReverseTestCase):
    """
    C{--proxy-protocol-send} in reverse mode: the header opens each new
    backend connection, and a connection that carried one is private to
    its client connection.
    """

    CLIENT = ("203.0.113.9", 5000)
    # FakeTransport's local address of the client connection.
    PROXY_ADDRESS = ("127.0.0.1", 3128)
    V1 = b"PROXY TCP4 203.0.113.9 127.0.0.1 5000 3128\r\n"

    def tomlFactory(self, listener: Any, *routes: Any) -> Any:
        table = dict(listener, mode="reverse", name="web", listen=["tcp:0"], routes=list(routes))
        listenerConfig = config.fromTOML({"listeners": [table]}).listeners[0]
        router = RouterService([listenerConfig], self.connector, self.clock)
        return ReverseProxyFactory(listenerConfig, self.connector, self.clock, router=router)

    def again(self, proto: Any, path: bytes = b"/2") -> None:
        proto.dataReceived(b"GET " + path + b" HTTP/1.1\r\nHost: a.test\r\n\r\n")

    def test_v1HeaderFirst(self) -> None:
        """
        With v1, a new backend connection starts with a text header naming
        the client's address and the address it reached, then the request.
        """
        factory = self.factory("a.test=http://192.0.2.1:8001", proxy_protocol_send="v1")
        proto, client = self.get(factory, peer=self.CLIENT)
        sent = self.connector.last.succeed().value()
        self.assertEqual(sent[: len(self.V1)], self.V1)
        self.assertTrue(sent[len(self.V1):].startswith(b"GET / HTTP/1.1\r\n"), sent)
        self.respond()
        self.assertIn(b"200 OK", client.value())

    def test_v2HeaderFirst(self) -> None:
        """
        With v2, the binary header comes first.
        """
        factory = self.factory("a.test=http://192.0.2.1:8001", proxy_protocol_send="v2")
        self.get(factory, peer=self.CLIENT)
        sent = self.connector.last.succeed().value()
        header = _v2(self.CLIENT, self.PROXY_ADDRESS)
        self.assertEqual(sent[: len(header)], header)
        self.assertTrue(sent[len(header):].startswith(b"GET / HTTP/1.1\r\n"), sent)

    def test_hostnameBackendGetsHeaderFirst(self) -> None:
        """
        A backend named by a host name (dialled through an endpoint) gets
        the header first too.
        """
        self.connector.hosts["backend.internal"] = ["192.0.2.7"]
        factory = self.factory("a.test=http://backend.internal:8001", proxy_protocol_send="v1")
        self.get(factory, peer=self.CLIENT)
        sent = self.connector.last.succeed().value()
        self.assertTrue(sent.startswith(self.V1 + b"GET / HTTP/1.1\r\n"), sent)

    def test_noHeaderByDefault(self) -> None:
        """
        Without the setting nothing precedes the request, and connections
        are shared by client connections as before.
        """
        factory = self.factory("a.test=http://192.0.2.1:8001")
        self.get(factory, peer=self.CLIENT)
        upstream = self.connector.last.succeed()
        self.assertTrue(upstream.value().startswith(b"GET / HTTP/1.1\r\n"))
        self.respond()
        self.get(factory, peer=("198.51.100.2", 6000))
        self.assertEqual(len(self.connector.attempts), 1)

    def test_sameClientConnectionReuses(self) -> None:
        """
        A later request on the same client connection reuses the backend
        connection, with no second header.
        """
        factory = self.factory("a.test=http://192.0.2.1:8001", proxy_protocol_send="v1")
        proto, client = self.get(factory, peer=self.CLIENT)
        upstream = self.connector.last.succeed()
        self.respond(b"one")
        self.again(proto)
        self.assertEqual(len(self.connector.attempts), 1)
        self.respond(b"two")
        sent = upstream.value()
        self.assertEqual(sent.count(b"PROXY "), 1)
        self.assertIn(b"GET /2 HTTP/1.1\r\n", sent)
        self.assertTrue(client.value().endswith(b"two"))

    def test_otherClientConnectionDoesNotReuse(self) -> None:
        """
        A request from another client connection (even from the same
        address) gets its own backend connection and its own header; the
        first one stays idle for its own client.
        """
        factory = self.factory("a.test=http://192.0.2.1:8001", proxy_protocol_send="v1")
        first, _ = self.get(factory, peer=self.CLIENT)
        upstream1 = self.connector.last.succeed()
        self.respond()
        self.assertEqual(len(factory.pool), 1)
        for peer in [("198.51.100.2", 6000), self.CLIENT]:
            attempts = len(self.connector.attempts)
            proto, client = self.get(factory, peer=peer)
            self.assertEqual(len(self.connector.attempts), attempts + 1)
            sent = self.connector.last.succeed().value()
            self.assertTrue(sent.startswith(b"PROXY TCP4 %s 127.0.0.1 %d 3128\r\nGET " % (peer[0].encode(), peer[1])),
                            sent)
            self.respond()
        self.assertFalse(upstream1.closed)
        self.assertEqual(upstream1.value().count(b"PROXY "), 1)
        # The first client's connection is still its own.
        self.again(first)
        self.assertEqual(self.connector.attempts[0].protocol.owner, first)

    def test_pooledConnectionClosedWithItsClient(self) -> None:
        """
        When the client connection closes, its idle backend connections
        are closed and leave the pool; other clients' stay.
        """
        factory = self.factory("a.test=http://192.0.2.1:8001", proxy_protocol_send="v1")
        proto1, client1 = self.get(factory, peer=self.CLIENT)
        upstream1 = self.connector.last.succeed()
        self.respond()
        proto2, client2 = self.get(factory, peer=("198.51.100.2", 6000))
        upstream2 = self.connector.last.succeed()
        self.respond()
        self.assertEqual(len(factory.pool), 2)
        client1.peerClosed()
        self.assertTrue(upstream1.closed)
        self.assertFalse(upstream2.closed)
        self.assertEqual(len(factory.pool), 1)
        client2.loseConnection()
        self.assertTrue(upstream2.closed)
        self.assertEqual(len(factory.pool), 0)

    def test_connectionInUseClosedWithItsClient(self) -> None:
        """
        A client that leaves while its request is in flight takes its
        backend connection with it (nothing is pooled for nobody).
        """
        factory = self.factory("a.test=http://192.0.2.1:8001", proxy_protocol_send="v1")
        proto, client = self.get(factory, peer=self.CLIENT)
        upstream = self.connector.last.succeed()
        client.peerClosed()
        self.assertTrue(upstream.closed)
        self.assertEqual(len(factory.pool), 0)

    def test_perBackendAndRouteOverrideListener(self) -> None:
        """
        An upstream's own proxy_protocol_send wins over its route's, which
        wins over the listener's; "none" sends nothing, and a backend that
        gets no header keeps sharing its connections between clients.
        """
        factory = self.tomlFactory(
            {"proxy_protocol_send": "v1"},
            {"host": "a.test", "upstreams": [
                {"url": "http://192.0.2.1:1", "proxy_protocol_send": "v2"},
                {"url": "http://192.0.2.2:2", "proxy_protocol_send": "none"},
                "http://192.0.2.3:3",
            ]},
            {"host": "b.test", "proxy_protocol_send": "v2", "upstreams": ["http://192.0.2.4:4"]},
        )
        sent = {}
        for host in (b"a.test", b"a.test", b"a.test", b"b.test"):
            proto, client = self.get(factory, host=host, peer=self.CLIENT)
            attempt = self.connector.last
            sent[attempt.port] = attempt.succeed().value()
            self.respond()
        self.assertTrue(sent[1].startswith(_v2(self.CLIENT, self.PROXY_ADDRESS) + b"GET "))
        self.assertTrue(sent[2].startswith(b"GET "))
        self.assertTrue(sent[3].startswith(self.V1 + b"GET "))
        self.assertTrue(sent[4].startswith(_v2(self.CLIENT, self.PROXY_ADDRESS) + b"GET "))
        # Round robin comes back to the "none" backend: its idle connection
        # is reused by another client connection.
        attempts = len(self.connector.attempts)
        for _ in range(3):
            self.get(factory, peer=("198.51.100.2", 6000))
            if len(self.connector.attempts) > attempts:
                attempts = len(self.connector.attempts)
                self.connector.last.succeed()
                self.respond()
            else:
                self.assertIsNotNone(self.connector.attempts[1].protocol.owner)
                self.connector.attempts[1].protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(len(self.connector.attempts), 6)

    def test_retryOnOtherBackendSendsItsHeader(self) -> None:
        """
        When the first backend refuses, the one actually reached gets its
        own header, and the connection is pooled as that backend's.
        """
        factory = self.tomlFactory(
            {},
            {"host": "a.test", "upstreams": [
                {"url": "http://192.0.2.1:1", "proxy_protocol_send": "v1"},
                {"url": "http://192.0.2.2:2", "proxy_protocol_send": "v2"},
            ]},
        )
        proto, client = self.get(factory, peer=self.CLIENT)
        first = self.connector.last
        self.assertEqual(first.port, 1)
        first.fail(error.ConnectionRefusedError())
        second = self.connector.last
        self.assertEqual(second.port, 2)
        sent = second.succeed().value()
        self.assertTrue(sent.startswith(_v2(self.CLIENT, self.PROXY_ADDRESS) + b"GET "), sent)
        self.respond()
        self.assertIn("http://192.0.2.2:2|proxy=v2|", second.protocol.key)
        self.assertIn(b"200 OK", client.value())

    def test_retryWithoutHeaderPooledUnderReachedBackend(self) -> None:
        """
        Without PROXY headers too, a connection reached on the retry is
        pooled as the backend it reached, not the one that refused.
        """
        factory = self.factory("a.test=http://192.0.2.1:1,http://192.0.2.2:2")
        self.get(factory)
        self.connector.last.fail(error.ConnectionRefusedError())
        second = self.connector.last
        second.succeed()
        self.respond()
        self.assertEqual(second.protocol.key, "http://192.0.2.2:2")

    def test_retriedDialLeavesNoCycle(self) -> None:
        """
        A client connection whose request was retried on a second backend
        is freed by reference counting once closed: the dial and its retry
        leave no reference cycle holding the protocol.
        """
        factory = self.factory("a.test=http://192.0.2.1:1,http://192.0.2.2:2")
        with collectorOff():
            proto, client = self.get(factory)
            self.connector.last.fail(error.ConnectionRefusedError())
            self.connector.last.succeed()
            self.respond()
            self.assertIn(b"200 OK", client.value())
            client.peerClosed()
            # (As Twisted's TCP transports do once the connection is lost.)
            client.protocol = None
            ref = weakref.ref(proto)
            del proto, client
            assertFreed(self, ref, "the closed client protocol")

    def test_upgradeTunnelStartsWithHeader(self) -> None:
        """
        A WebSocket upgrade's backend connection starts with the header,
        and after 101 the relay carries bytes both ways.
        """
        factory = self.factory("a.test=http://192.0.2.1:8001", proxy_protocol_send="v2")
        proto, client = self.get(
            factory, peer=self.CLIENT,
            extra=b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: x\r\nSec-WebSocket-Version: 13\r\n")
        upstream = self.connector.last.succeed()
        header = _v2(self.CLIENT, self.PROXY_ADDRESS)
        sent = upstream.value()
        self.assertTrue(sent.startswith(header + b"GET / HTTP/1.1\r\n"), sent)
        self.assertIn(b"Upgrade: websocket\r\n", sent)
        self.connector.last.protocol.dataReceived(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        self.assertIn(b"101 Switching Protocols", client.value())
        upstream.clear()
        proto.dataReceived(b"frame")
        self.assertEqual(upstream.value(), b"frame")

    def test_haproxyListenerAddress(self) -> None:
        """
        On a C{haproxy:} listener the header names the address the received
        PROXY header carried (the peer the protocol sees), not the load
        balancer's.
        """
        from twisted.protocols.haproxy._wrapper import HAProxyWrappingFactory

        factory = self.factory("a.test=http://192.0.2.1:8001", proxy_protocol_send="v1")
        wrapping = HAProxyWrappingFactory(factory)
        transport = FakeTransport(("10.0.0.2", 40000), ("10.0.0.1", 8080))
        wrapper = wrapping.buildProtocol(transport.getPeer())
        transport.protocol = wrapper
        wrapper.makeConnection(transport)
        wrapper.dataReceived(b"PROXY TCP4 198.51.100.7 192.0.2.80 6000 80\r\nGET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        sent = self.connector.last.succeed().value()
        self.assertTrue(sent.startswith(b"PROXY TCP4 198.51.100.7 192.0.2.80 6000 80\r\nGET / HTTP/1.1\r\n"), sent)
