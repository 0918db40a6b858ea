"""
Tests for L{txproxy.intercept}: host patterns, the configuration, the
interception decision (C{--intercept}, C{--no-intercept},
C{shouldIntercept}) and the decrypted connection layer, on fake
transports with TLS in memory on both sides.
"""

from __future__ import annotations

import base64
import os
import shutil
import ssl
import tempfile
from typing import Any, List, Optional, Tuple

from cryptography.hazmat.primitives import serialization
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from tests.procs import TestCA
from tests.test_intercept_ca import sharedCA, writeCA
from txproxy.accesslog import AccessRecord
from txproxy.config import fromFlags
from txproxy.errors import ConfigError
from txproxy.forward import ForwardProxyProtocol
from txproxy.hooks import TunnelRequest
from txproxy.http import RequestHead, replaceHeader
from txproxy.intercept import HostPatterns, InterceptPolicy, interceptedClass
from txproxy.testing import FakeConnector, connect, forwardFactory

CONNECT = b"CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\n"
_ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"


class HostPatternTests(SynchronousTestCase):
    """
    L{HostPatterns} and L{InterceptPolicy}.
    """

    def test_exact(self) -> None:
        """
        A name matches itself, whatever its case and trailing dot, and
        nothing else.
        """
        p = HostPatterns(["example.com"])
        self.assertTrue(p.matches("example.com"))
        self.assertTrue(p.matches("EXAMPLE.com."))
        self.assertFalse(p.matches("www.example.com"))
        self.assertFalse(p.matches("badexample.com"))

    def test_wildcard(self) -> None:
        """
        C{*.example.com} matches names below it, at any depth, not the
        name itself nor names merely ending alike.
        """
        p = HostPatterns(["*.example.com"])
        self.assertTrue(p.matches("www.example.com"))
        self.assertTrue(p.matches("a.b.Example.COM"))
        self.assertFalse(p.matches("example.com"))
        self.assertFalse(p.matches("badexample.com"))

    def test_addresses(self) -> None:
        """
        IP addresses match in any spelling; C{*} matches everything.
        """
        p = HostPatterns(["2001:db8::1", "192.0.2.1"])
        self.assertTrue(p.matches("[2001:DB8:0::1]"))
        self.assertTrue(p.matches("192.0.2.1"))
        self.assertFalse(p.matches("192.0.2.2"))
        self.assertTrue(HostPatterns(["*"]).matches("anything.test"))
        self.assertFalse(HostPatterns([]))

    def test_policy(self) -> None:
        """
        No C{--intercept}: everything; C{--no-intercept} wins.
        """
        everything = InterceptPolicy((), ("bank.test", "*.bank.test"))
        self.assertTrue(everything.intercepts("example.test"))
        self.assertFalse(everything.intercepts("bank.test"))
        self.assertFalse(everything.intercepts("www.bank.test"))
        some = InterceptPolicy(("*.example.test",), ("secret.example.test",))
        self.assertTrue(some.intercepts("www.example.test"))
        self.assertFalse(some.intercepts("secret.example.test"))
        self.assertFalse(some.intercepts("other.test"))


class ConfigTests(SynchronousTestCase):
    """
    The options, checked as on the command line.
    """

    def test_options(self) -> None:
        """
        C{--intercept} and C{--no-intercept} repeat; patterns are
        normalized.
        """
        config = fromFlags(
            ["tcp:0"],
            [("intercept-ca", "ca.pem"), ("intercept", "*.Example.COM."), ("intercept", "[::1]"), ("no-intercept", "x.test")],
        )
        listener = config.listeners[0]
        self.assertEqual(listener.interceptCA, "ca.pem")
        self.assertEqual(listener.intercept, ("*.example.com", "::1"))
        self.assertEqual(listener.noIntercept, ("x.test",))

    def test_toml(self) -> None:
        """
        The TOML keys are C{intercept_ca}, C{intercept}, C{no_intercept}.
        """
        from txproxy.config import fromTOML

        c = fromTOML({"listeners": [{"listen": ["tcp:1"], "intercept_ca": "ca.pem", "intercept": ["a.test"], "no_intercept": ["b.test"]}]})
        self.assertEqual((c.listeners[0].intercept, c.listeners[0].noIntercept), (("a.test",), ("b.test",)))

    def test_errors(self) -> None:
        """
        Patterns without a CA, a CA outside forward mode and malformed
        patterns are refused with one line naming the option.
        """
        for options, fragment in [
            ([("intercept", "a.test")], "--intercept needs --intercept-ca"),
            ([("no-intercept", "a.test")], "--no-intercept needs --intercept-ca"),
            ([("mode", "reverse"), ("route", "a=http://b:1"), ("intercept-ca", "ca.pem")], "only for mode forward"),
            ([("intercept-ca", "ca.pem"), ("intercept", "a b")], "bad host pattern"),
            ([("intercept-ca", "ca.pem"), ("intercept", "*.*.a")], "bad host pattern"),
            ([("intercept-ca", "ca.pem"), ("intercept", "*.192.0.2.1")], "bad host pattern"),
        ]:
            e = self.assertRaises(ConfigError, fromFlags, ["tcp:0"], options)
            self.assertIn(fragment, str(e))
            self.assertNotIn("\n", str(e))

    def test_startupChecksTheKeyFile(self) -> None:
        """
        At start-up a CA file readable by others is an error (one line).
        """
        from txproxy.runtime.tap import parseCommandLine

        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory, True)
        path = writeCA(directory, *sharedCA(), mode=0o644)
        e = self.assertRaises(ConfigError, parseCommandLine, ["--listen", "tcp:0", "--intercept-ca", path])
        self.assertIn("group or others", str(e))
        os.chmod(path, 0o600)
        self.assertEqual(parseCommandLine(["--listen", "tcp:0", "--intercept-ca", path]).listeners[0].interceptCA, path)

    def test_help(self) -> None:
        """
        The options are in C{--help}.
        """
        from txproxy.runtime.tap import Options

        text = str(Options())
        for option in ("--intercept-ca=", "--intercept=", "--no-intercept="):
            self.assertIn(option, text)


class _TLSPeer:
    """
    One end of a TLS connection in memory (the stdlib's C{ssl}).
    """

    def __init__(self, context: ssl.SSLContext, server: bool, serverName: Optional[str] = None) -> None:
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = context.wrap_bio(self.incoming, self.outgoing, server_side=server, server_hostname=serverName)
        self.received = b""
        self.error: Optional[BaseException] = None
        self.closed = False
        self.handshaken = False

    def pump(self, data: bytes = b"") -> bytes:
        """
        Take C{data} from the peer; return the bytes to send to it.
        """
        if data:
            self.incoming.write(data)
        try:
            self.obj.do_handshake()
            self.handshaken = True
            while True:
                chunk = self.obj.read(65536)
                if not chunk:
                    self.closed = True
                    break
                self.received += chunk
        except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
            pass
        except ssl.SSLError as e:
            if self.error is None:
                self.error = e
        return self.outgoing.read()

    def send(self, data: bytes) -> bytes:
        self.obj.write(data)
        return self.outgoing.read()


class _Records:
    def __init__(self) -> None:
        self.records: List[AccessRecord] = []

    def log(self, record: AccessRecord) -> None:
        self.records.append(record)


class InterceptTestCase(SynchronousTestCase):
    """
    A forward factory with C{--intercept-ca} on fakes; the client and the
    origin speak TLS in memory.
    """

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="txproxy-intercept-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        caCert, caKey = sharedCA()
        self.caPath = writeCA(self.dir, caCert, caKey)
        self.caPEM = caCert.public_bytes(serialization.Encoding.PEM).decode("ascii")
        self.origin = _originCA()
        self.clock = Clock()
        self.connector = FakeConnector({"example.test": ["192.0.2.10"], "other.test": ["192.0.2.20"]})
        self.log = _Records()

    def factory(self, trustOrigin: bool = True, protocol: Any = None, **options: Any) -> Any:
        options.setdefault("intercept_ca", self.caPath)
        if trustOrigin:
            options.setdefault("upstream_ca", self.origin.caPath)
        f = forwardFactory(self.connector, self.clock, protocol=protocol, **options)
        f.accessLog = self.log
        return f

    def clientTLS(self, serverName: Optional[str] = "example.test", alpn: Tuple[str, ...] = ("http/1.1",)) -> _TLSPeer:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cadata=self.caPEM)
        ctx.set_alpn_protocols(list(alpn))
        return _TLSPeer(ctx, False, serverName)

    def open(
        self, factory: Any = None, connect_: bytes = CONNECT, extra: bytes = b"", alpn: Tuple[str, ...] = ("http/1.1",)
    ) -> Tuple[Any, Any, _TLSPeer]:
        """
        CONNECT and the TLS handshake: return the protocol, the client
        transport (cleared) and the client's TLS end.
        """
        proto, transport = connect(factory or self.factory())
        proto.dataReceived(connect_ + extra)
        self.assertTrue(transport.value().startswith(_ESTABLISHED), transport.value())
        tls = self.clientTLS(alpn=alpn)
        self.exchange(proto, transport, tls, b"")
        self.assertIsNone(tls.error)
        return proto, transport, tls

    def exchange(self, proto: Any, transport: Any, tls: _TLSPeer, plaintext: bytes) -> bytes:
        """
        Send C{plaintext} (once the handshake is over) and pump both ways
        until quiet; return what the client decrypted meanwhile.
        """
        before = len(tls.received)
        pending = plaintext
        for _ in range(30):
            data = transport.value()
            transport.clear()
            if data.startswith(_ESTABLISHED):
                data = data[len(_ESTABLISHED):]
            out = tls.pump(data)
            if pending and tls.handshaken:
                out += tls.send(pending)
                pending = b""
            if out:
                proto.dataReceived(out)
            elif not data:
                break
        return tls.received[before:]

    def originServe(self, attempt: Any, response: bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok") -> Tuple[_TLSPeer, Any]:
        """
        Complete the origin connection of C{attempt}, do its TLS handshake
        and answer the request with C{response} once it has arrived.
        """
        upstream = attempt.succeed()
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.origin.serverPath)
        self.originNames: List[Optional[str]] = []
        ctx.sni_callback = lambda obj, name, c: self.originNames.append(name)  # type: ignore[assignment,func-returns-value]
        server = _TLSPeer(ctx, True)
        answered = False
        for _ in range(20):
            data = upstream.value()
            upstream.clear()
            out = server.pump(data)
            if not answered and b"\r\n\r\n" in server.received:
                out += server.send(response)
                answered = True
            if out:
                attempt.protocol.dataReceived(out)
            if not out and not data:
                break
        return server, upstream


_ORIGIN: List[Any] = []


def _originCA() -> Any:
    """
    The origin's own CA and a certificate for example.test (one for the
    module).
    """
    if not _ORIGIN:
        ca = TestCA()
        ca.serverPath = ca.issue(["example.test"], "origin.pem")  # type: ignore[attr-defined]
        _ORIGIN.append(ca)
    return _ORIGIN[0]


class InterceptedRequestTests(InterceptTestCase):
    """
    The decrypted side: each request is an https:// request to the CONNECT
    host, through the HTTP core.
    """

    def test_requestReachesTheOriginOverVerifiedTLS(self) -> None:
        """
        The client verifies the minted certificate; its request reaches
        the CONNECT host over TLS (SNI example.test) in origin form with
        the Host of the origin; the response comes back; the access record
        has the full https:// URL.
        """
        proto, transport, tls = self.open()
        self.assertEqual(tls.obj.selected_alpn_protocol(), "http/1.1")
        self.assertEqual(self.connector.attempts, [])
        self.exchange(proto, transport, tls, b"GET /a?b=1 HTTP/1.1\r\nHost: example.test\r\nUser-Agent: t\r\n\r\n")
        attempt = self.connector.last
        self.assertEqual((attempt.host, attempt.port), ("192.0.2.10", 443))
        server, _ = self.originServe(attempt)
        self.assertIsNone(server.error)
        self.assertEqual(self.originNames, ["example.test"])
        head = server.received.split(b"\r\n\r\n")[0]
        self.assertTrue(head.startswith(b"GET /a?b=1 HTTP/1.1\r\n"), head)
        self.assertIn(b"\r\nHost: example.test\r\n", head + b"\r\n")
        got = self.exchange(proto, transport, tls, b"")
        self.assertTrue(got.startswith(b"HTTP/1.1 200 OK\r\n"), got)
        self.assertTrue(got.endswith(b"\r\n\r\nok"))
        (record,) = self.log.records
        self.assertEqual((record.method, record.target, record.status), ("GET", "https://example.test:443/a?b=1", 200))
        self.assertEqual(record.upstream, "192.0.2.10:443")

    def test_metricsCountInnerRequests(self) -> None:
        """
        Each request inside is counted in the metrics, with its status, and
        the connection once.
        """
        from txproxy.metrics import Metrics

        factory = self.factory()
        factory.metrics = Metrics(processMetrics=False)
        proto, transport, tls = self.open(factory)
        self.exchange(proto, transport, tls, b"GET / HTTP/1.1\r\nHost: example.test\r\n\r\n")
        self.originServe(self.connector.last)
        self.exchange(proto, transport, tls, b"")
        self.exchange(proto, transport, tls, b"GET / HTTP/1.1\r\nHost: other.test\r\n\r\n")
        text = factory.metrics.exposition().decode()
        requests = [line for line in text.splitlines() if line.startswith("txproxy_requests_total{")]
        self.assertTrue(any('code="200"' in line and line.endswith(" 1.0") for line in requests), requests)
        self.assertTrue(any('code="421"' in line and line.endswith(" 1.0") for line in requests), requests)
        opened = [line for line in text.splitlines() if line.startswith("txproxy_connections_total{")]
        self.assertTrue(opened and opened[0].endswith(" 1.0"), opened)

    def test_keepAliveAndPipelining(self) -> None:
        """
        Two pipelined requests are both answered, in order, on one pooled
        origin connection.
        """
        proto, transport, tls = self.open()
        request = b"GET /%d HTTP/1.1\r\nHost: example.test\r\n\r\n"
        self.exchange(proto, transport, tls, (request % 1) + (request % 2))
        attempt = self.connector.last
        server, upstream = self.originServe(attempt, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1")
        self.exchange(proto, transport, tls, b"")
        # The second request went on the same origin connection.
        self.assertEqual(len(self.connector.attempts), 1)
        self.assertIn(b"GET /2 HTTP/1.1", server.received)
        attempt.protocol.dataReceived(server.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2"))
        got = self.exchange(proto, transport, tls, b"")
        self.assertEqual(got.count(b"HTTP/1.1 200 OK"), 1)
        self.assertEqual([r.target for r in self.log.records], ["https://example.test:443/1", "https://example.test:443/2"])

    def test_cachedUnderHTTPSKeys(self) -> None:
        """
        On a caching listener the requests inside are cached like any
        other, under C{https://} keys: a second request is a hit answered
        inside the decrypted connection without reaching the origin, and a
        purge of the C{https://} URL removes it.
        """
        from txproxy.cache import HTTPCache

        factory = self.factory()
        factory.cache = cache = HTTPCache(1 << 20, clock=self.clock)
        proto, transport, tls = self.open(factory)
        request = b"GET /c HTTP/1.1\r\nHost: example.test\r\n\r\n"
        self.exchange(proto, transport, tls, request)
        server, upstream = self.originServe(
            self.connector.last, b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 2\r\n\r\nok")
        first = self.exchange(proto, transport, tls, b"")
        self.assertIn(b"\r\nCache-Status: txproxy; fwd=uri-miss; stored", first)
        seen = server.received
        self.clock.advance(5)
        second = self.exchange(proto, transport, tls, request)
        self.assertTrue(second.startswith(b"HTTP/1.1 200 OK\r\n"), second)
        self.assertIn(b"\r\nCache-Status: txproxy; hit", second)
        self.assertIn(b"\r\nAge: 5\r\n", second)
        self.assertTrue(second.endswith(b"\r\n\r\nok"), second)
        self.assertEqual(server.received, seen)
        self.assertEqual(len(self.connector.attempts), 1)
        self.assertEqual(self.successResultOf(cache.purge(b"http://example.test/c")), 0)
        self.assertEqual(self.successResultOf(cache.purge(b"https://example.test/c")), 1)
        self.assertEqual([r.target for r in self.log.records], ["https://example.test:443/c"] * 2)

    def test_untrustedOriginIs502(self) -> None:
        """
        An origin whose certificate does not verify gets the client a 502
        inside the decrypted connection, naming the reason; nothing of the
        request reaches it.
        """
        proto, transport, tls = self.open(self.factory(trustOrigin=False))
        self.exchange(proto, transport, tls, b"GET / HTTP/1.1\r\nHost: example.test\r\n\r\n")
        server, _ = self.originServe(self.connector.last)
        self.assertEqual(server.received, b"")
        got = self.exchange(proto, transport, tls, b"")
        self.assertTrue(got.startswith(b"HTTP/1.1 502 "), got)
        self.assertIn(b"certificate verify failed", got)
        (record,) = self.log.records
        self.assertEqual(record.status, 502)

    def test_misdirectedHostIs421(self) -> None:
        """
        A request naming another host than the tunnel's gets 421 and never
        reaches an origin.
        """
        proto, transport, tls = self.open()
        got = self.exchange(proto, transport, tls, b"GET / HTTP/1.1\r\nHost: other.test\r\n\r\n")
        self.assertTrue(got.startswith(b"HTTP/1.1 421 "), got)
        self.assertEqual(self.connector.attempts, [])

    def test_notHTTPIsClosedWithOneLogLine(self) -> None:
        """
        A client speaking something else than HTTP after the handshake is
        closed, with one log line naming the tunnel.
        """
        events: List[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        proto, transport, tls = self.open()
        got = self.exchange(proto, transport, tls, b"\x00\x01binary stuff\r\n\r\n")
        self.assertEqual(got, b"")
        self.assertTrue(transport.disconnecting)
        lines = [e for e in events if e.get("log_namespace") == "txproxy.intercept"]
        self.assertEqual(len(lines), 1)
        self.assertEqual(lines[0]["target"], "example.test:443")

    def test_websocketUpgradeRelayed(self) -> None:
        """
        An Upgrade inside the decrypted connection is relayed: the 101
        reaches the client, then bytes flow both ways, encrypted on both
        legs.
        """
        proto, transport, tls = self.open()
        self.exchange(
            proto, transport, tls,
            b"GET /ws HTTP/1.1\r\nHost: example.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        attempt = self.connector.last
        server, upstream = self.originServe(
            attempt,
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
        )
        self.assertIn(b"Upgrade: websocket", server.received)
        got = self.exchange(proto, transport, tls, b"")
        self.assertTrue(got.startswith(b"HTTP/1.1 101 "), got)
        self.exchange(proto, transport, tls, b"frame-from-client")
        server.pump(upstream.value())
        upstream.clear()
        self.assertTrue(server.received.endswith(b"\r\n\r\nframe-from-client"), server.received)
        attempt.protocol.dataReceived(server.send(b"frame-from-origin"))
        self.assertEqual(self.exchange(proto, transport, tls, b""), b"frame-from-origin")

    def test_untrustingClientLogged(self) -> None:
        """
        A client that does not trust the CA fails the handshake: one log
        line names the tunnel and the alert, and so does the CONNECT's
        record.
        """
        events: List[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        proto, transport = connect(self.factory())
        proto.dataReceived(CONNECT)
        tls = _TLSPeer(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), False, "example.test")
        self.exchange(proto, transport, tls, b"")
        self.assertIsInstance(tls.error, ssl.SSLCertVerificationError)
        self.assertTrue(transport.disconnecting)
        if not transport.closed:
            transport.peerClosed()
        lines = [e for e in events if e.get("log_namespace") == "txproxy.intercept"]
        self.assertEqual(len(lines), 1)
        self.assertIn("unknown ca", lines[0]["detail"])
        (record,) = self.log.records
        self.assertEqual(record.method, "CONNECT")
        self.assertIn("TLS handshake failed: tlsv1 alert unknown ca", record.reason)

    def test_connectInsideIs405(self) -> None:
        """
        No tunnel in a tunnel.
        """
        proto, transport, tls = self.open()
        got = self.exchange(proto, transport, tls, b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n")
        self.assertTrue(got.startswith(b"HTTP/1.1 405 "), got)

    def test_userCarriedOverAndRateLimit(self) -> None:
        """
        The tunnel's authenticated user is every inner request's (no second
        407); each inner request takes a token of the rate limit.
        """
        from txproxy.limits.memory import MemoryLimiter
        from txproxy.limits.service import ListenerLimits

        fd, path = tempfile.mkstemp(dir=self.dir)
        os.write(fd, b"alice:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=\n")
        os.close(fd)
        factory = self.factory(auth=path, rate="1/h", burst=3)
        factory.limits = ListenerLimits(MemoryLimiter(self.clock), factory.listener, "test")
        creds = base64.b64encode(b"alice:secret")
        connect_ = b"CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\nProxy-Authorization: Basic " + creds + b"\r\n\r\n"
        proto, transport, tls = self.open(factory, connect_)
        request = b"GET / HTTP/1.1\r\nHost: example.test\r\n\r\n"
        self.exchange(proto, transport, tls, request)
        attempt = self.connector.last
        server, upstream = self.originServe(attempt)
        got = self.exchange(proto, transport, tls, b"")
        self.assertTrue(got.startswith(b"HTTP/1.1 200 "), got)
        self.assertEqual(self.log.records[-1].user, "alice")
        # The second request (on the pooled origin connection) takes the
        # last token; CONNECT took the first.
        self.exchange(proto, transport, tls, request)
        server.pump(upstream.value())
        upstream.clear()
        attempt.protocol.dataReceived(server.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
        got = self.exchange(proto, transport, tls, b"")
        self.assertTrue(got.startswith(b"HTTP/1.1 200 "), got)
        # The third is over the limit.
        got = self.exchange(proto, transport, tls, request)
        self.assertIn(b"HTTP/1.1 429 ", got)
        self.assertEqual(len(self.connector.attempts), 1)
        users = [r.user for r in self.log.records if r.method == "GET"]
        self.assertEqual(users, ["alice"] * len(users))

    def test_drainClosesBetweenRequests(self) -> None:
        """
        When the proxy stops, an intercepted connection between requests is
        closed (TLS close_notify, then the socket), as any HTTP
        connection; the drain timeout's abort closes it at once.
        """
        proto, transport, tls = self.open()
        self.exchange(proto, transport, tls, b"GET / HTTP/1.1\r\nHost: example.test\r\n\r\n")
        self.originServe(self.connector.last)
        self.exchange(proto, transport, tls, b"")
        self.assertFalse(transport.disconnecting)
        proto.drain()
        self.exchange(proto, transport, tls, b"")
        self.assertTrue(tls.closed)
        self.assertTrue(transport.disconnecting)
        proto2, transport2, _ = self.open()
        proto2.relay.abort("drain")
        self.assertTrue(transport2.disconnecting)

    def test_connectRecordedOnClose(self) -> None:
        """
        The CONNECT itself gets one record, when the connection closes.
        """
        proto, transport, tls = self.open()
        transport.peerClosed()
        (record,) = self.log.records
        self.assertEqual((record.method, record.status, record.reason), ("CONNECT", 200, "intercepted"))


class DecisionTests(InterceptTestCase):
    """
    Which tunnels are intercepted.
    """

    def assertOpaque(self, factory: Any, connect_: bytes = CONNECT) -> None:
        proto, transport = connect(factory)
        proto.dataReceived(connect_)
        self.assertEqual(transport.value(), b"")
        upstream = self.connector.last.succeed()
        self.assertEqual(transport.value(), _ESTABLISHED)
        proto.dataReceived(b"raw client hello")
        self.assertEqual(upstream.value(), b"raw client hello")

    def test_noInterceptStaysOpaque(self) -> None:
        """
        A host matched by C{--no-intercept} is relayed as today.
        """
        self.assertOpaque(self.factory(no_intercept="*.test"))

    def test_interceptPatterns(self) -> None:
        """
        With C{--intercept}, only matching hosts are decrypted.
        """
        self.assertOpaque(self.factory(intercept="other.test"))
        self.open(self.factory(intercept="example.test"))

    def test_withoutCAEverythingIsOpaque(self) -> None:
        """
        Without C{--intercept-ca} nothing changes.
        """
        f = forwardFactory(self.connector, self.clock)
        self.assertIsNone(f.interceptor)
        self.assertOpaque(f)

    def test_hookDecides(self) -> None:
        """
        C{shouldIntercept} decides per tunnel, with the tunnel request
        (and may answer with a Deferred).
        """
        asked: List[TunnelRequest] = []
        later: List[defer.Deferred] = []

        class Proxy(ForwardProxyProtocol):
            def shouldIntercept(self, request: TunnelRequest) -> Any:
                asked.append(request)
                if request.target.host == "example.test":
                    d: defer.Deferred = defer.Deferred()
                    later.append(d)
                    return d
                return False

        factory = self.factory(protocol=Proxy)
        self.assertOpaque(factory, b"CONNECT other.test:443 HTTP/1.1\r\nHost: other.test:443\r\n\r\n")
        proto, transport = connect(factory)
        proto.dataReceived(CONNECT)
        self.assertEqual(transport.value(), b"")
        later[0].callback(True)
        self.assertEqual(transport.value(), _ESTABLISHED)
        self.assertEqual([r.target.host for r in asked], ["other.test", "example.test"])

    def test_denyDestAtConnect(self) -> None:
        """
        An intercepted tunnel to a denied destination is refused at
        CONNECT (403), before any TLS.
        """
        proto, transport = connect(self.factory(deny_dest="192.0.2.0/24"))
        proto.dataReceived(CONNECT)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 403 "), transport.value())

    def test_ipLiteralIntercepted(self) -> None:
        """
        A CONNECT to an IP literal (which plain tunnels dial at once) is
        intercepted too: no dial, a certificate naming the address.
        """
        proto, transport = connect(self.factory())
        proto.dataReceived(b"CONNECT 192.0.2.10:443 HTTP/1.1\r\nHost: 192.0.2.10:443\r\n\r\n")
        self.assertEqual(transport.value(), _ESTABLISHED)
        self.assertEqual(self.connector.attempts, [])
        tls = self.clientTLS("192.0.2.10")
        self.exchange(proto, transport, tls, b"")
        self.assertIsNone(tls.error)
        self.assertTrue(tls.handshaken)

    def test_connectPortsStillApply(self) -> None:
        """
        C{--connect-ports} is checked before interception.
        """
        proto, transport = connect(self.factory())
        proto.dataReceived(b"CONNECT example.test:8443 HTTP/1.1\r\nHost: example.test:8443\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 403 "), transport.value())


class SubclassHookTests(InterceptTestCase):
    """
    The listener's protocol class, hooks included, serves the decrypted
    requests.
    """

    def test_rewriteRequestInsideHTTPS(self) -> None:
        """
        A subclass's C{rewriteRequest} and C{allowRequest} see the https
        request; the origin gets the rewritten head.
        """
        seen: List[Any] = []

        class Proxy(ForwardProxyProtocol):
            def allowRequest(self, request: Any) -> bool:
                seen.append((request.scheme, str(request.target), request.path))
                return request.path != b"/forbidden"

            def rewriteRequest(self, request: Any, head: RequestHead) -> RequestHead:
                return RequestHead(head.method, head.target, head.version, replaceHeader(head.headers, b"X-Intercepted", b"yes"))

        proto, transport, tls = self.open(self.factory(protocol=Proxy))
        self.assertIsInstance(proto, Proxy)
        got = self.exchange(proto, transport, tls, b"GET /forbidden HTTP/1.1\r\nHost: example.test\r\n\r\n")
        self.assertTrue(got.startswith(b"HTTP/1.1 403 "), got)
        proto, transport, tls = self.open(self.factory(protocol=Proxy))
        self.exchange(proto, transport, tls, b"GET / HTTP/1.1\r\nHost: example.test\r\n\r\n")
        server, _ = self.originServe(self.connector.last)
        self.assertIn(b"\r\nX-Intercepted: yes\r\n", server.received)
        self.assertEqual(seen, [("https", "example.test:443", b"/forbidden"), ("https", "example.test:443", b"/")])

    def test_classMadeOnce(self) -> None:
        """
        The decrypted side's class is the listener's class with the mixin,
        made once per class.
        """
        cls = interceptedClass(ForwardProxyProtocol)
        self.assertIs(interceptedClass(ForwardProxyProtocol), cls)
        self.assertTrue(issubclass(cls, ForwardProxyProtocol))


class ReloadTests(InterceptTestCase):
    """
    C{SIGHUP}: the CA file is read again when it changed; one that no
    longer loads fails the reload, and the old CA stays.
    """

    def test_reload(self) -> None:
        """
        The same file keeps the same CA (and its cache); a file made
        readable by others is refused, dry run or not, and the old CA
        stays; a changed file is a new CA.
        """
        from txproxy.testing import listenerConfig

        factory = self.factory()
        first = factory.interceptor.ca
        factory.reloadListener(listenerConfig(intercept_ca=self.caPath, upstream_ca=self.origin.caPath))
        self.assertIs(factory.interceptor.ca, first)
        os.chmod(self.caPath, 0o644)
        bad = listenerConfig(intercept_ca=self.caPath)
        e = self.assertRaises(ConfigError, factory.reloadListener, bad, True)
        self.assertIn("group or others", str(e))
        self.assertRaises(ConfigError, factory.reloadListener, bad)
        self.assertIs(factory.interceptor.ca, first)
        from tests.test_intercept_ca import makeCA

        writeCA(self.dir, *makeCA(name="renewed CA"))
        factory.reloadListener(listenerConfig(intercept_ca=self.caPath))
        self.assertIn("renewed CA", factory.interceptor.ca.certificate.subject.rfc4514_string())


class HTTP2ConnectTests(InterceptTestCase):
    """
    A CONNECT sent as an HTTP/2 stream is intercepted too: TLS runs in the
    stream's DATA frames.
    """

    def test_connectStreamIntercepted(self) -> None:
        """
        The stream gets 200, the TLS handshake and a request inside it
        complete, and the request reaches the origin as an https request.
        """
        from tests.test_h2_server import Client

        proto, transport = connect(self.factory(), ("127.0.0.1", 40000))
        client = Client(proto, transport)
        client.send()
        sid = client.h2.get_next_available_stream_id()
        client.h2.send_headers(sid, [(b":method", b"CONNECT"), (b":authority", b"example.test:443")])
        client.send()
        self.assertEqual(client.status(sid), 200)
        tls = self.clientTLS()
        seen = 0
        pending = b"GET /h2 HTTP/1.1\r\nHost: example.test\r\n\r\n"
        for _ in range(20):
            data = client.bodies.get(sid, b"")[seen:]
            seen += len(data)
            out = tls.pump(data)
            if pending and tls.handshaken:
                out += tls.send(pending)
                pending = b""
            if not out and not data:
                break
            if out:
                client.h2.send_data(sid, out)
                client.send()
        self.assertIsNone(tls.error)
        server, _ = self.originServe(self.connector.last)
        self.assertIn(b"GET /h2 HTTP/1.1", server.received)
        client.read()
        tls.pump(client.bodies.get(sid, b"")[seen:])
        self.assertTrue(tls.received.startswith(b"HTTP/1.1 200 OK"), tls.received)
        self.assertEqual(self.log.records[-1].target, "https://example.test:443/h2")


class _H2OverTLS:
    """
    An HTTP/2 client (C{h2}) inside the client's TLS end of an
    intercepted tunnel.
    """

    def __init__(self, case: "InterceptTestCase", proto: Any, transport: Any, tls: _TLSPeer) -> None:
        from h2.config import H2Configuration
        from h2.connection import H2Connection

        self.case, self.proto, self.transport, self.tls = case, proto, transport, tls
        self.h2 = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.h2.initiate_connection()
        self.seen = 0
        self.heads: dict = {}
        self.bodies: dict = {}
        self.ended: List[int] = []

    def pump(self) -> None:
        from h2.events import DataReceived, ResponseReceived, StreamEnded

        for _ in range(10):
            out = self.h2.data_to_send()
            self.case.exchange(self.proto, self.transport, self.tls, out)
            data = self.tls.received[self.seen:]
            self.seen += len(data)
            if not data and not out:
                return
            for event in self.h2.receive_data(data):
                if isinstance(event, ResponseReceived):
                    self.heads[event.stream_id] = dict(event.headers)
                elif isinstance(event, DataReceived):
                    self.bodies[event.stream_id] = self.bodies.get(event.stream_id, b"") + event.data
                    self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, StreamEnded):
                    self.ended.append(event.stream_id)

    def get(self, path: bytes, authority: bytes = b"example.test") -> int:
        sid: int = self.h2.get_next_available_stream_id()
        self.h2.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", authority), (b":path", path)], end_stream=True)
        self.pump()
        return sid


class OriginALPNTests(InterceptTestCase):
    """
    ALPN towards the client follows the origin: C{h2} only when the client
    offers it, the listener serves HTTP/2 and the origin selected it.
    """

    H2 = ("h2", "http/1.1")

    def connectAndHello(self, factory: Any = None, connect_: bytes = CONNECT) -> Tuple[Any, Any, _TLSPeer]:
        """
        CONNECT, then the client's ClientHello (offering h2): return the
        protocol, its transport and the client's TLS end.
        """
        proto, transport = connect(factory or self.factory())
        proto.dataReceived(connect_)
        self.assertEqual(transport.value(), _ESTABLISHED)
        transport.clear()
        tls = self.clientTLS(alpn=self.H2)
        proto.dataReceived(tls.pump())
        return proto, transport, tls

    def originHandshake(self, attempt: Any, alpn: Tuple[str, ...]) -> _TLSPeer:
        """
        Complete the probe connection of C{attempt}: the origin's TLS
        handshake, offering C{alpn}.
        """
        upstream = attempt.succeed()
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.origin.serverPath)
        ctx.set_alpn_protocols(list(alpn))
        server = _TLSPeer(ctx, True)
        for _ in range(10):
            data = upstream.value()
            upstream.clear()
            out = server.pump(data)
            if out:
                attempt.protocol.dataReceived(out)
            if not out and not data:
                break
        self.probeTransport = upstream
        return server

    def finishClient(self, proto: Any, transport: Any, tls: _TLSPeer) -> None:
        self.exchange(proto, transport, tls, b"")
        self.assertIsNone(tls.error)
        self.assertTrue(tls.handshaken)

    def test_originSelectsH2(self) -> None:
        """
        The client's handshake waits for the origin's: a verified TLS
        connection offering h2 and http/1.1, with SNI, sending nothing and
        closed once it answered.  The origin selects h2, so does the
        client; a request over HTTP/2 inside reaches the origin as an
        https request (over HTTP/1.1) by the tunnel's user and its
        response comes back on the stream.
        """
        fd, path = tempfile.mkstemp(dir=self.dir)
        os.write(fd, b"alice:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=\n")
        os.close(fd)
        creds = base64.b64encode(b"alice:secret")
        connect_ = CONNECT[:-2] + b"Proxy-Authorization: Basic " + creds + b"\r\n\r\n"
        proto, transport, tls = self.connectAndHello(self.factory(auth=path), connect_)
        self.assertEqual(transport.value(), b"", "the client's handshake waits for the origin's answer")
        probe = self.connector.last
        self.assertEqual((probe.host, probe.port), ("192.0.2.10", 443))
        server = self.originHandshake(probe, ("h2", "http/1.1"))
        self.assertIsNone(server.error)
        self.assertEqual(server.obj.selected_alpn_protocol(), "h2")
        self.assertEqual(server.received, b"")
        self.assertTrue(self.probeTransport.disconnecting)
        self.finishClient(proto, transport, tls)
        self.assertEqual(tls.obj.selected_alpn_protocol(), "h2")
        client = _H2OverTLS(self, proto, transport, tls)
        sid = client.get(b"/over/h2?x=1")
        origin, _ = self.originServe(self.connector.last, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-O: 1\r\n\r\nhello")
        self.assertEqual(self.originNames, ["example.test"])
        head = origin.received.split(b"\r\n\r\n")[0]
        self.assertTrue(head.startswith(b"GET /over/h2?x=1 HTTP/1.1\r\n"), head)
        self.assertIn(b"\r\nHost: example.test", head)
        client.pump()
        self.assertEqual(client.heads[sid][b":status"], b"200")
        self.assertEqual(client.heads[sid][b"x-o"], b"1")
        self.assertEqual(client.bodies[sid], b"hello")
        self.assertIn(sid, client.ended)
        record = self.log.records[-1]
        self.assertEqual((record.method, record.target, record.status, record.user), ("GET", "https://example.test:443/over/h2?x=1", 200, "alice"))
        self.assertEqual(record.version, "HTTP/2.0")

    def test_h2StreamMisdirected(self) -> None:
        """
        A stream for another authority gets 421 on the stream.
        """
        factory = self.factory()
        self.cacheH2(factory)
        proto, transport, tls = self.connectAndHello(factory)
        self.finishClient(proto, transport, tls)
        self.assertEqual(tls.obj.selected_alpn_protocol(), "h2")
        client = _H2OverTLS(self, proto, transport, tls)
        sid = client.get(b"/", b"other.test")
        self.assertEqual(client.heads[sid][b":status"], b"421")
        self.assertEqual(self.connector.attempts, [])

    def test_h2OriginFailureIs502OnStream(self) -> None:
        """
        With h2 negotiated, an origin whose certificate does not verify
        when a request dials it: a 502 on the stream naming the reason,
        nothing sent to the origin; the connection serves the next stream.
        """
        factory = self.factory(trustOrigin=False)
        self.cacheH2(factory)
        proto, transport, tls = self.connectAndHello(factory)
        self.finishClient(proto, transport, tls)
        client = _H2OverTLS(self, proto, transport, tls)
        sid = client.get(b"/x")
        origin, _ = self.originServe(self.connector.last)
        self.assertEqual(origin.received, b"")
        client.pump()
        self.assertEqual(client.heads[sid][b":status"], b"502")
        self.assertIn(b"certificate verify failed", client.bodies[sid])
        self.assertEqual(self.log.records[-1].status, 502)
        second = client.get(b"/y")
        self.assertEqual(len(self.connector.attempts), 2)
        self.assertNotEqual(second, sid)

    def cacheH2(self, factory: Any) -> None:
        factory.interceptor.originProtocols.put(("example.test", 443, "example.test"), True, self.clock.seconds())

    def test_originSelectsHTTP11(self) -> None:
        """
        An origin that selects http/1.1 (or nothing): the client gets
        http/1.1, and the probe connection (verified) carries the first
        request: no second connection.
        """
        for offered in [("http/1.1",), ()]:
            self.log.records.clear()
            factory = self.factory()
            proto, transport, tls = self.connectAndHello(factory)
            probe = self.connector.last
            server = self.originHandshake(probe, offered)
            self.assertFalse(self.probeTransport.disconnecting)
            self.finishClient(proto, transport, tls)
            self.assertEqual(tls.obj.selected_alpn_protocol(), "http/1.1")
            self.assertEqual(factory.interceptor.originProtocols.get(("example.test", 443, "example.test"), 0), False)
            self.exchange(proto, transport, tls, b"GET /one HTTP/1.1\r\nHost: example.test\r\n\r\n")
            self.assertIs(self.connector.last, probe)
            server.pump(self.probeTransport.value())
            self.probeTransport.clear()
            self.assertTrue(server.received.startswith(b"GET /one HTTP/1.1\r\n"), server.received)
            probe.protocol.dataReceived(server.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
            got = self.exchange(proto, transport, tls, b"")
            self.assertTrue(got.startswith(b"HTTP/1.1 200 OK\r\n"), got)
            record = self.log.records[-1]
            self.assertEqual((record.target, record.upstream), ("https://example.test:443/one", "192.0.2.10:443"))

    def test_clientWithoutH2IsNotDelayed(self) -> None:
        """
        A client that does not offer h2: no probe, the handshake answers
        at once with http/1.1.
        """
        proto, transport = connect(self.factory())
        proto.dataReceived(CONNECT)
        transport.clear()
        tls = self.clientTLS(alpn=("http/1.1",))
        proto.dataReceived(tls.pump())
        self.assertNotEqual(transport.value(), b"")
        self.finishClient(proto, transport, tls)
        self.assertEqual(self.connector.attempts, [])
        self.assertEqual(tls.obj.selected_alpn_protocol(), "http/1.1")

    def test_http2OffIsNotProbed(self) -> None:
        """
        With C{--http2 off} a client offering h2 gets http/1.1 at once.
        """
        proto, transport = connect(self.factory(http2=False))
        proto.dataReceived(CONNECT)
        transport.clear()
        tls = self.clientTLS(alpn=self.H2)
        proto.dataReceived(tls.pump())
        self.finishClient(proto, transport, tls)
        self.assertEqual(self.connector.attempts, [])
        self.assertEqual(tls.obj.selected_alpn_protocol(), "http/1.1")

    def test_helloInPieces(self) -> None:
        """
        The ClientHello split at every position (with the CONNECT in the
        same segment as its first byte) still leads to the probe.
        """
        factory = self.factory()
        self.cacheH2(factory)
        size = len(self.clientTLS(alpn=self.H2).pump())
        for cut in range(size + 1):
            peer = self.clientTLS(alpn=self.H2)
            proto, transport = connect(factory)
            hello = peer.pump()
            proto.dataReceived(CONNECT + hello[:cut])
            proto.dataReceived(hello[cut:])
            self.finishClient(proto, transport, peer)
            self.assertEqual(peer.obj.selected_alpn_protocol(), "h2", cut)
        self.assertEqual(self.connector.attempts, [])

    def test_answerCached(self) -> None:
        """
        The origin's answer is kept per host, port and server name: the
        next tunnel is not probed; after ten minutes it is again.
        """
        factory = self.factory()
        proto, transport, tls = self.connectAndHello(factory)
        self.originHandshake(self.connector.last, ("h2", "http/1.1"))
        self.finishClient(proto, transport, tls)
        self.assertEqual(len(self.connector.attempts), 1)
        proto, transport, tls = self.connectAndHello(factory)
        self.finishClient(proto, transport, tls)
        self.assertEqual(tls.obj.selected_alpn_protocol(), "h2")
        self.assertEqual(len(self.connector.attempts), 1)
        self.clock.advance(601)
        proto, transport, tls = self.connectAndHello(factory)
        self.assertEqual(len(self.connector.attempts), 2)
        self.originHandshake(self.connector.last, ("http/1.1",))
        self.finishClient(proto, transport, tls)
        self.assertEqual(tls.obj.selected_alpn_protocol(), "http/1.1")

    def test_untrustedOriginDuringProbe(self) -> None:
        """
        An origin whose certificate does not verify during the probe: the
        client's handshake completes with http/1.1, nothing is cached, and
        its request gets the 502 naming the reason.
        """
        factory = self.factory(trustOrigin=False)
        proto, transport, tls = self.connectAndHello(factory)
        server = self.originHandshake(self.connector.last, ("h2", "http/1.1"))
        self.assertEqual(server.received, b"")
        self.finishClient(proto, transport, tls)
        self.assertEqual(tls.obj.selected_alpn_protocol(), "http/1.1")
        self.assertEqual(len(factory.interceptor.originProtocols), 0)
        self.exchange(proto, transport, tls, b"GET / HTTP/1.1\r\nHost: example.test\r\n\r\n")
        origin, _ = self.originServe(self.connector.last)
        self.assertEqual(origin.received, b"")
        got = self.exchange(proto, transport, tls, b"")
        self.assertTrue(got.startswith(b"HTTP/1.1 502 "), got)
        self.assertIn(b"certificate verify failed", got)

    def test_unreachableOrDeniedOrigin(self) -> None:
        """
        An origin that refuses the connection, or never answers within
        the connect timeout: http/1.1 (the requests then get their 502).
        """
        from twisted.internet.error import ConnectionRefusedError

        proto, transport, tls = self.connectAndHello()
        self.connector.last.fail(ConnectionRefusedError())
        self.finishClient(proto, transport, tls)
        self.assertEqual(tls.obj.selected_alpn_protocol(), "http/1.1")
        proto, transport, tls = self.connectAndHello()
        self.connector.last.succeed()
        self.assertEqual(transport.value(), b"")
        self.clock.advance(self.factory().listener.connectTimeout)
        self.finishClient(proto, transport, tls)
        self.assertEqual(tls.obj.selected_alpn_protocol(), "http/1.1")

    def test_clientLeavesDuringProbe(self) -> None:
        """
        The client leaving while the origin is asked: the probe is closed,
        the CONNECT logged once.
        """
        proto, transport, tls = self.connectAndHello()
        probe = self.connector.last
        upstream = probe.succeed()
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        proto.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(upstream.disconnecting or upstream.disconnected)
        (record,) = self.log.records
        self.assertEqual(record.method, "CONNECT")
        self.assertIn("TLS handshake failed", record.reason)

    def test_incompleteHelloTimesOut(self) -> None:
        """
        A client that does not complete its ClientHello within the header
        timeout: TLS starts anyway (no probe), as without HTTP/2.
        """
        factory = self.factory()
        proto, transport = connect(factory)
        proto.dataReceived(CONNECT)
        hello = self.clientTLS(alpn=self.H2).pump()
        proto.dataReceived(hello[:20])
        self.assertIsNone(proto.relay.tls)
        self.clock.advance(factory.listener.headerTimeout - 0.1)
        self.assertIsNone(proto.relay.tls)
        self.clock.advance(0.1)
        self.assertIsNotNone(proto.relay.tls)
        self.assertEqual(self.connector.attempts, [])

    def test_clientPausedWhileWaiting(self) -> None:
        """
        A client sending more than it should while the origin is asked is
        paused; what it sent is kept and goes to TLS once it starts (here,
        junk after the hello: TLS fails the connection).
        """
        proto, transport, tls = self.connectAndHello()
        self.assertFalse(transport.paused)
        proto.dataReceived(b"x" * 1000)
        self.assertFalse(transport.paused)
        proto.dataReceived(b"x" * 70000)
        self.assertTrue(transport.paused)
        self.originHandshake(self.connector.last, ("h2", "http/1.1"))
        self.assertIsNotNone(proto.relay.tls)
        self.assertIsNotNone(proto.relay.tls._reason)
        self.assertTrue(transport.disconnecting)

    def test_priorKnowledgeWithoutALPNIsClosed(self) -> None:
        """
        The HTTP/2 preface inside a tunnel that negotiated http/1.1 is
        still closed (one log line).
        """
        proto, transport, tls = self.open()
        self.exchange(proto, transport, tls, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        self.assertTrue(transport.disconnecting or tls.closed)


class OriginProtocolsTests(SynchronousTestCase):
    """
    L{OriginProtocols}: the cache of origins' answers.
    """

    def test_ttlAndBound(self) -> None:
        from txproxy.intercept import OriginProtocols

        cache = OriginProtocols(ttl=10, maxSize=2)
        cache.put(("a", 443, "a"), True, 0)
        self.assertIs(cache.get(("a", 443, "a"), 9.9), True)
        self.assertIsNone(cache.get(("a", 443, "a"), 10))
        cache.put(("a", 443, "a"), True, 0)
        cache.put(("b", 443, "b"), False, 0)
        cache.put(("c", 443, "c"), True, 0)
        self.assertEqual(len(cache), 2)
        self.assertIsNone(cache.get(("a", 443, "a"), 1))
        self.assertIs(cache.get(("b", 443, "b"), 1), False)
        self.assertIsNone(cache.get(("b", 8443, "b"), 1))
