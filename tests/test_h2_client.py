# -*- test-case-name: tests.test_h2_client -*-
"""
Tests for L{txproxy.h2._client}, L{txproxy.h2._stream} and
L{txproxy.h2._clientpool}: HTTP/2 to backends, against an in-memory
server-side C{h2} connection on fake transports; and the reverse proxy's
C{h2c://} routes end to end on fake transports.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import h2.events
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from hpack import Encoder  # (h2's own dependencies, to frame what h2 would refuse to send)
from hyperframe.frame import GoAwayFrame, HeadersFrame
from twisted.internet import defer, error
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from txproxy import config
from txproxy.errors import ConfigError
from txproxy.h2._client import H2ClientConnection, H2DialError
from txproxy.h2._clientpool import H2ClientPool
from txproxy.h2._stream import H2StreamTransport
from txproxy.reverse import ReverseProxyFactory
from txproxy.router import RouterService
from txproxy.router._health import _CheckFactory, _H2CheckProtocol
from txproxy.testing import FakeConnector, FakeTransport, connect
from txproxy.upstream import UpstreamHTTPProtocol


class _Owner:
    """
    Plays the HTTP core for an L{UpstreamHTTPProtocol}.
    """

    def __init__(self) -> None:
        self.received = b""
        self.ended: List[Optional[Failure]] = []

    def _responseData(self, data: bytes) -> None:
        self.received += data

    def _upstreamEnded(self, upstream: Any, reason: Optional[Failure]) -> None:
        self.ended.append(reason)


class _Producer:
    paused = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        pass


class _Backend:
    """
    An in-memory HTTP/2 server on the other side of an
    L{H2ClientConnection}'s fake transport.
    """

    def __init__(self, maxStreams: int = 100, window: Optional[int] = None) -> None:
        self.h2 = H2Connection(config=H2Configuration(client_side=False, header_encoding=None))
        settings: Dict[int, int] = {SettingCodes.MAX_CONCURRENT_STREAMS: maxStreams}
        self.h2.initiate_connection()
        self.h2.update_settings(settings)
        self.events: List[Any] = []
        self.transport: Optional[FakeTransport] = None
        self.client: Optional[H2ClientConnection] = None

    def attach(self, client: H2ClientConnection, transport: Optional[FakeTransport] = None) -> None:
        self.client = client
        self.transport = transport or FakeTransport()
        self.transport.protocol = client
        client.makeConnection(self.transport)

    def pump(self) -> List[Any]:
        """
        Move bytes both ways until both are quiet; return the server's new
        events.
        """
        new: List[Any] = []
        assert self.transport is not None and self.client is not None
        for _ in range(50):
            sent = self.transport.value()
            self.transport.clear()
            if sent:
                new.extend(self.h2.receive_data(sent))
            out = self.h2.data_to_send()
            if out:
                self.client.dataReceived(out)
            if not sent and not out:
                break
        self.events.extend(new)
        return new

    def of(self, kind: Any, events: Optional[List[Any]] = None) -> List[Any]:
        return [e for e in (self.events if events is None else events) if isinstance(e, kind)]

    def respond(self, streamId: int, headers: List[Tuple[bytes, bytes]], body: bytes = b"",
                trailers: Optional[List[Tuple[bytes, bytes]]] = None) -> None:
        self.h2.send_headers(streamId, headers, end_stream=not body and not trailers)
        if body:
            self.h2.send_data(streamId, body, end_stream=not trailers)
        if trailers:
            self.h2.send_headers(streamId, trailers, end_stream=True)


def _connected(clock: Clock, backend: _Backend, **kw: Any) -> H2ClientConnection:
    conn = H2ClientConnection(clock, **kw)
    backend.attach(conn)
    backend.pump()
    return conn


def _request(conn: H2ClientConnection) -> Tuple[UpstreamHTTPProtocol, H2StreamTransport, _Owner]:
    proto = UpstreamHTTPProtocol()
    owner = _Owner()
    proto.owner = owner  # type: ignore[assignment]
    stream = conn.newStream(proto)
    return proto, stream, owner


class ConnectionTests(SynchronousTestCase):
    """
    One L{H2ClientConnection} and its virtual transports against an
    in-memory h2 server.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.backend = _Backend()
        self.conn = _connected(self.clock, self.backend)

    def test_readyAfterSettings(self) -> None:
        """
        The connection is ready once the backend's SETTINGS arrived; it
        takes the backend's stream limit.
        """
        clock = Clock()
        backend = _Backend(maxStreams=7)
        conn = H2ClientConnection(clock)
        backend.attach(conn)
        self.assertNoResult(conn.ready)
        self.assertTrue(backend.transport.value().startswith(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"))  # type: ignore[union-attr]
        backend.pump()
        self.assertIs(self.successResultOf(conn.ready), conn)
        self.assertEqual(conn.maxStreams, 7)
        self.assertTrue(conn.available)

    def test_get(self) -> None:
        """
        A GET written as HTTP/1.1 becomes one HEADERS frame that ends the
        stream; the h2 response comes back as HTTP/1.1 bytes; the stream is
        then over, the protocol marked lost (never pooled by the core) and
        its connection free for the next request.
        """
        proto, stream, owner = _request(self.conn)
        stream.write(b"GET /p?q=1 HTTP/1.1\r\nHost: a.test\r\nX-A: 1\r\n\r\n")
        events = self.backend.pump()
        [req] = self.backend.of(h2.events.RequestReceived, events)
        self.assertEqual(req.stream_id, 1)
        headers = dict(req.headers)
        self.assertEqual(headers[b":method"], b"GET")
        self.assertEqual(headers[b":path"], b"/p?q=1")
        self.assertEqual(headers[b":authority"], b"a.test")
        self.assertEqual(headers[b":scheme"], b"http")
        self.assertEqual(headers[b"x-a"], b"1")
        self.assertTrue(self.backend.of(h2.events.StreamEnded, events))
        self.backend.respond(1, [(b":status", b"200"), (b"content-length", b"5")], b"hello")
        self.backend.pump()
        self.assertTrue(owner.received.startswith(b"HTTP/1.1 200 OK\r\n"), owner.received)
        self.assertIn(b"content-length: 5\r\n", owner.received.lower())
        self.assertTrue(owner.received.endswith(b"\r\n\r\nhello"))
        self.assertTrue(proto.lost)
        self.assertFalse(stream.connected)
        self.assertEqual(self.conn.active, 0)
        self.assertTrue(self.conn.available)
        # A finished exchange: closing it sends nothing.
        stream.loseConnection()
        self.assertEqual(self.backend.transport.value(), b"")  # type: ignore[union-attr]

    def test_idleConnectionClosed(self) -> None:
        """
        With no stream open for its idle timeout, the connection says
        GOAWAY and closes.
        """
        conn = _connected(self.clock, _Backend(), idleTimeout=5.0)
        backend = _Backend()
        conn = H2ClientConnection(self.clock, idleTimeout=5.0)
        backend.attach(conn)
        backend.pump()
        proto, stream, owner = _request(conn)
        stream.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        backend.pump()
        backend.respond(1, [(b":status", b"204")])
        backend.pump()
        self.clock.advance(4)
        self.assertFalse(backend.transport.disconnecting)  # type: ignore[union-attr]
        self.clock.advance(1)
        backend.pump()
        self.assertTrue(backend.of(h2.events.ConnectionTerminated))
        self.assertTrue(backend.transport.disconnecting)  # type: ignore[union-attr]

    def test_postFlowControlBothWays(self) -> None:
        """
        A request body larger than the backend's window is sent as the
        window allows: the rest is kept and the request's producer paused
        until WINDOW_UPDATE lets it go.  A response larger than the window
        is not acknowledged while the core pauses the stream, so the
        backend cannot send more; resuming opens the window again.
        """
        size = 300000
        body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
        proto, stream, owner = _request(self.conn)
        producer = _Producer()
        stream.registerProducer(producer, True)
        stream.write(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % size)
        stream.write(body)
        self.assertTrue(producer.paused)
        events = self.backend.pump()
        got = b"".join(e.data for e in self.backend.of(h2.events.DataReceived, events))
        self.assertEqual(len(got), 65535)  # the initial window
        received = got
        for _ in range(20):
            self.backend.h2.acknowledge_received_data(len(got), 1) if got else None
            events = self.backend.pump()
            got = b"".join(e.data for e in self.backend.of(h2.events.DataReceived, events))
            received += got
            if self.backend.of(h2.events.StreamEnded, events):
                break
        self.assertEqual(received, body)
        self.assertFalse(producer.paused)
        stream.unregisterProducer()
        # The response: paused, the backend's window for the stream closes.
        self.backend.h2.increment_flow_control_window(10 * 1024 * 1024)
        self.backend.h2.send_headers(1, [(b":status", b"200"), (b"content-length", b"%d" % size)])
        stream.pauseProducing()
        self.backend.pump()
        sendable = self.backend.h2.local_flow_control_window(1)
        for i in range(0, sendable, 16384):
            self.backend.h2.send_data(1, body[i:min(i + 16384, sendable)])
        self.backend.pump()
        self.assertEqual(self.backend.h2.local_flow_control_window(1), 0)
        stream.resumeProducing()
        self.backend.pump()
        self.assertGreater(self.backend.h2.local_flow_control_window(1), 0)
        sent = sendable
        while sent < size:
            n = min(self.backend.h2.local_flow_control_window(1), self.backend.h2.max_outbound_frame_size, size - sent)
            self.assertGreater(n, 0)
            self.backend.h2.send_data(1, body[sent:sent + n], end_stream=sent + n == size)
            sent += n
            self.backend.pump()
        self.assertTrue(owner.received.endswith(b"\r\n\r\n" + body))
        self.assertTrue(proto.lost)

    def test_responseTrailersChunked(self) -> None:
        """
        A response without content-length whose stream ends with trailers
        is relayed chunked, the trailers as the chunked trailer section.
        """
        proto, stream, owner = _request(self.conn)
        stream.write(b"GET / HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\n")
        self.backend.pump()
        self.backend.respond(1, [(b":status", b"200"), (b"content-type", b"application/grpc")], b"abc",
                             trailers=[(b"grpc-status", b"0"), (b"grpc-message", b"ok")])
        self.backend.pump()
        head, _, body = owner.received.partition(b"\r\n\r\n")
        self.assertIn(b"transfer-encoding: chunked", head.lower())
        self.assertEqual(body, b"3\r\nabc\r\n0\r\ngrpc-status: 0\r\ngrpc-message: ok\r\n\r\n")

    def test_requestTrailersSent(self) -> None:
        """
        A chunked request body's trailers go out as a trailing HEADERS
        frame that ends the stream.
        """
        proto, stream, owner = _request(self.conn)
        stream.write(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        stream.write(b"0\r\nx-sum: 42\r\n\r\n")
        events = self.backend.pump()
        self.assertEqual(b"".join(e.data for e in self.backend.of(h2.events.DataReceived, events)), b"abc")
        [trailers] = self.backend.of(h2.events.TrailersReceived, events)
        self.assertEqual(trailers.headers, [(b"x-sum", b"42")])

    def test_resetBeforeResponseIsLoss(self) -> None:
        """
        RST_STREAM from the backend before a response is the protocol's
        connectionLost (the core answers 502, as for a closed HTTP/1.1
        upstream); the connection's other streams go on.
        """
        proto, stream, owner = _request(self.conn)
        proto2, stream2, owner2 = _request(self.conn)
        stream.write(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n")
        stream2.write(b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
        self.backend.pump()
        self.backend.h2.reset_stream(1, ErrorCodes.INTERNAL_ERROR)
        self.backend.pump()
        [reason] = owner.ended
        self.assertIsNotNone(reason)
        self.assertIsInstance(reason.value, error.ConnectionLost)  # type: ignore[union-attr]
        self.assertIn("INTERNAL_ERROR", reason.getErrorMessage())  # type: ignore[union-attr]
        self.backend.respond(3, [(b":status", b"200"), (b"content-length", b"0")])
        self.backend.pump()
        self.assertTrue(owner2.received.startswith(b"HTTP/1.1 200 "))
        # (Closed cleanly once complete: the core has let it go by then.)
        self.assertEqual([f.type for f in owner2.ended], [error.ConnectionDone])  # type: ignore[union-attr]

    def test_loseConnectionMidResponseCancels(self) -> None:
        """
        The core closing a stream whose response is not over resets it
        with CANCEL; the connection stays up for other streams.
        """
        proto, stream, owner = _request(self.conn)
        stream.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.backend.pump()
        self.backend.h2.send_headers(1, [(b":status", b"200")])
        self.backend.h2.send_data(1, b"partial")
        self.backend.pump()
        proto.owner = None
        stream.loseConnection()
        events = self.backend.pump()
        [reset] = self.backend.of(h2.events.StreamReset, events)
        self.assertEqual(reset.error_code, ErrorCodes.CANCEL)
        self.assertTrue(proto.lost)
        self.assertFalse(self.backend.transport.disconnecting)  # type: ignore[union-attr]
        self.assertTrue(self.conn.available)

    def test_goaway(self) -> None:
        """
        GOAWAY: streams past its last stream id are lost, earlier ones
        finish; nothing new starts there, and it closes once they are
        over.
        """
        pool = H2ClientPool(self.clock)
        self.conn.key = "k"
        pool._add(self.conn)
        proto, stream, owner = _request(self.conn)
        proto2, stream2, owner2 = _request(self.conn)
        stream.write(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n")
        stream2.write(b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
        self.backend.pump()
        goaway = GoAwayFrame(0)
        goaway.last_stream_id = 1
        self.conn.dataReceived(goaway.serialize())
        self.assertTrue(self.conn.goingAway)
        self.assertFalse(self.conn.available)
        self.assertEqual(pool.connections("k"), [])
        self.assertEqual(len(owner2.ended), 1)
        self.assertEqual(owner.ended, [])
        self.assertFalse(self.backend.transport.disconnecting)  # type: ignore[union-attr]
        self.backend.respond(1, [(b":status", b"200"), (b"content-length", b"2")], b"ok")
        self.backend.pump()
        self.assertTrue(owner.received.endswith(b"ok"))
        self.assertTrue(self.backend.transport.disconnecting)  # type: ignore[union-attr]

    def test_connectionLostFailsEveryStream(self) -> None:
        """
        The connection's loss is every open stream's connectionLost.
        """
        proto, stream, owner = _request(self.conn)
        stream.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.backend.pump()
        self.conn.connectionLost(Failure(error.ConnectionDone()))
        self.assertEqual(len(owner.ended), 1)
        self.assertTrue(proto.lost)

    def test_badResponseIsLoss(self) -> None:
        """
        A malformed response head (a C{:status} that is no number) resets the
        stream and reads as a loss.
        """
        proto, stream, owner = _request(self.conn)
        stream.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.backend.pump()
        # h2 itself refuses to send one; frame it by hand.
        frame = HeadersFrame(1)
        frame.data = Encoder().encode([(b":status", b"20x")])
        frame.flags.add("END_HEADERS")
        self.conn.dataReceived(frame.serialize())
        events = self.backend.pump()
        [reset] = self.backend.of(h2.events.StreamReset, events)
        self.assertEqual(reset.error_code, ErrorCodes.PROTOCOL_ERROR)
        self.assertEqual(len(owner.ended), 1)
        self.assertIn("bad HTTP/2 response", owner.ended[0].getErrorMessage())  # type: ignore[union-attr]
        self.assertEqual(owner.received, b"")

    def test_alpnOtherThanH2FailsTheDial(self) -> None:
        """
        Over TLS, a backend that selects another protocol than h2 fails
        the dial with a 502 naming it, and the connection is aborted.
        """
        conn = H2ClientConnection(self.clock, b"https", tls=True, address="b.test:443")
        transport = FakeTransport()
        transport.negotiatedProtocol = b"http/1.1"  # type: ignore[attr-defined]
        conn.makeConnection(transport)
        conn.handshakeCompleted()
        f = self.failureResultOf(conn.ready, H2DialError)
        self.assertEqual(f.value.status, 502)
        self.assertEqual("the backend did not select ALPN h2 (it selected http/1.1)", f.value.reason)
        self.assertTrue(transport.aborted)  # type: ignore[attr-defined]

    def test_notHTTP2FailsTheDial(self) -> None:
        """
        An HTTP/1.1 server answering the preface fails the dial.
        """
        conn = H2ClientConnection(self.clock)
        conn.makeConnection(FakeTransport())
        conn.dataReceived(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        self.assertTrue(conn.transport.aborted)  # type: ignore[union-attr]
        f = self.failureResultOf(conn.ready, H2DialError)
        self.assertIn("does not speak HTTP/2", f.value.reason)

    def test_unsendableRequestIsLossLater(self) -> None:
        """
        Request bytes that cannot be carried by HTTP/2 (a transfer coding
        other than chunked) reset nothing that was opened and are reported
        as a loss on the next turn, not from inside write.
        """
        proto, stream, owner = _request(self.conn)
        stream.write(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")
        self.assertEqual(owner.ended, [])
        self.clock.advance(0)
        self.assertEqual(len(owner.ended), 1)
        self.assertEqual(self.conn.active, 0)


class PoolTests(SynchronousTestCase):
    """
    L{H2ClientPool}: one connection while it has streams free, a second
    only when it is full; waiters share a dial.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.pool = H2ClientPool(self.clock)
        self.dials: List[Tuple[defer.Deferred, H2ClientConnection]] = []

    def dial(self) -> defer.Deferred:
        conn = H2ClientConnection(self.clock)
        d: defer.Deferred = defer.Deferred()
        self.dials.append((d, conn))
        return d

    def test_concurrencyUpToMaxStreamsThenSecondConnection(self) -> None:
        """
        Requests arriving together share the one dial; the backend allows
        2 streams, so the third request dials a second connection; later
        requests reuse a connection with a stream free.
        """
        protos = [UpstreamHTTPProtocol() for _ in range(3)]
        ds = [self.pool.stream("k", p, self.dial) for p in protos]
        self.assertEqual(len(self.dials), 1)
        d, conn = self.dials[0]
        backend = _Backend(maxStreams=2)
        backend.attach(conn)
        backend.pump()
        d.callback(conn)
        self.assertEqual([self.successResultOf(x) for x in ds[:2]], protos[:2])
        self.assertNoResult(ds[2])
        self.assertEqual(len(self.dials), 2)
        d2, conn2 = self.dials[1]
        backend2 = _Backend(maxStreams=2)
        backend2.attach(conn2)
        backend2.pump()
        d2.callback(conn2)
        self.assertIs(self.successResultOf(ds[2]), protos[2])
        self.assertIs(protos[2].transport._conn, conn2)  # type: ignore[union-attr]
        # Streams free again on the first: reused, no new dial.
        protos[0].transport.loseConnection()  # type: ignore[union-attr]
        p = UpstreamHTTPProtocol()
        self.successResultOf(self.pool.stream("k", p, self.dial))
        self.assertIs(p.transport._conn, conn)  # type: ignore[union-attr]
        self.assertEqual(len(self.dials), 2)

    def test_cancelWhileWaitingForASecondConnection(self) -> None:
        """
        A request that waits for a second connection (the first had no
        room) and gives up abandons that dial too.
        """
        cancelled: List[bool] = []
        conns: List[Tuple[defer.Deferred, H2ClientConnection]] = []

        def dial() -> defer.Deferred:
            d: defer.Deferred = defer.Deferred(lambda d: cancelled.append(True))
            conns.append((d, H2ClientConnection(self.clock)))
            return d

        ds = [self.pool.stream("k", UpstreamHTTPProtocol(), dial) for _ in range(2)]
        d, conn = conns[0]
        backend = _Backend(maxStreams=1)
        backend.attach(conn)
        backend.pump()
        d.callback(conn)
        self.successResultOf(ds[0])
        self.assertEqual(len(conns), 2)
        ds[1].cancel()
        self.failureResultOf(ds[1], defer.CancelledError)
        self.assertEqual(cancelled, [True])

    def test_dialFailureFailsWaiters(self) -> None:
        """
        A failed dial fails every request waiting for it.
        """
        ds = [self.pool.stream("k", UpstreamHTTPProtocol(), self.dial) for _ in range(2)]
        self.dials[0][0].errback(H2DialError("nope"))
        for d in ds:
            self.failureResultOf(d, H2DialError)

    def test_cancelLastWaiterCancelsDial(self) -> None:
        """
        When every request waiting for a dial gives up, the dial is
        cancelled.
        """
        cancelled: List[bool] = []

        def dial() -> defer.Deferred:
            return defer.Deferred(lambda d: cancelled.append(True))

        ds = [self.pool.stream("k", UpstreamHTTPProtocol(), dial) for _ in range(2)]
        ds[0].cancel()
        self.assertEqual(cancelled, [])
        ds[1].cancel()
        self.assertEqual(cancelled, [True])
        for d in ds:
            self.failureResultOf(d, defer.CancelledError)

    def test_retireAll(self) -> None:
        """
        Retiring closes idle connections at once, busy ones after their
        last stream.
        """
        d = self.pool.stream("k", UpstreamHTTPProtocol(), self.dial)
        dial, conn = self.dials[0]
        backend = _Backend()
        backend.attach(conn)
        backend.pump()
        dial.callback(conn)
        proto = self.successResultOf(d)
        self.pool.retireAll()
        self.assertFalse(backend.transport.disconnecting)  # type: ignore[union-attr]
        self.assertEqual(self.pool.connections("k"), [])
        proto.transport.loseConnection()
        self.assertTrue(backend.transport.disconnecting)  # type: ignore[union-attr]


def _listener(*routes: str) -> Any:
    return config.fromFlags(["tcp:0"], [("mode", "reverse"), ("name", "web")] + [("route", r) for r in routes]).listeners[0]


class ReverseH2Tests(SynchronousTestCase):
    """
    The reverse proxy to C{h2c://} backends, on fake transports: the
    whole HTTP core in front of the HTTP/2 shim.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.connector = FakeConnector()
        listener = _listener("*=h2c://192.0.2.1:8080")
        router = RouterService([listener], self.connector, self.clock)
        self.factory = ReverseProxyFactory(listener, self.connector, self.clock, router=router)

    def _serve(self) -> _Backend:
        attempt = self.connector.last
        transport = attempt.succeed()
        backend = _Backend()
        backend.client = attempt.protocol
        backend.transport = transport
        backend.pump()
        return backend

    def test_manyClientsOneConnection(self) -> None:
        """
        Requests from several clients reach the backend as streams of one
        connection, and each client gets its answer as HTTP/1.1.
        """
        clients = []
        for i in range(3):
            proto, client = connect(self.factory, ("203.0.113.9", 5000 + i))
            proto.dataReceived(b"GET /%d HTTP/1.1\r\nHost: a.test\r\n\r\n" % i)
            clients.append(client)
        self.assertEqual(len(self.connector.attempts), 1)
        backend = self._serve()
        requests = backend.of(h2.events.RequestReceived)
        self.assertEqual(sorted(dict(r.headers)[b":path"] for r in requests), [b"/0", b"/1", b"/2"])
        for r in requests:
            self.assertIn(b"x-forwarded-for", dict(r.headers))
            path = dict(r.headers)[b":path"]
            backend.respond(r.stream_id, [(b":status", b"200"), (b"content-length", b"2")], path[1:] * 2)
        backend.pump()
        for i, client in enumerate(clients):
            self.assertTrue(client.value().startswith(b"HTTP/1.1 200 OK\r\n"), client.value())
            self.assertTrue(client.value().endswith(b"%d%d" % (i, i)))
        # A later request reuses the connection.
        proto, client = connect(self.factory)
        proto.dataReceived(b"GET /again HTTP/1.1\r\nHost: a.test\r\n\r\n")
        self.assertEqual(len(self.connector.attempts), 1)
        events = backend.pump()
        self.assertEqual(len(backend.of(h2.events.RequestReceived, events)), 1)

    def test_resetIs502(self) -> None:
        """
        A stream the backend resets before answering gets the client a
        502, and the client connection stays usable.
        """
        proto, client = connect(self.factory)
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        backend = self._serve()
        backend.h2.reset_stream(1, ErrorCodes.REFUSED_STREAM)
        backend.pump()
        self.assertTrue(client.value().startswith(b"HTTP/1.1 502 "), client.value())

    def test_clientGoneMidResponseCancelsStream(self) -> None:
        """
        A client that leaves while its response streams gets its stream
        reset with CANCEL; the backend connection stays.
        """
        proto, client = connect(self.factory)
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        backend = self._serve()
        backend.h2.send_headers(1, [(b":status", b"200")])
        backend.h2.send_data(1, b"some")
        backend.pump()
        self.assertIn(b"some", client.value())
        proto.connectionLost(Failure(error.ConnectionLost()))
        events = backend.pump()
        [reset] = backend.of(h2.events.StreamReset, events)
        self.assertEqual(reset.error_code, ErrorCodes.CANCEL)
        self.assertFalse(backend.transport.disconnecting)  # type: ignore[union-attr]

    def test_stopFactoryRetires(self) -> None:
        """
        Stopping the factory closes idle HTTP/2 backend connections.
        """
        proto, client = connect(self.factory)
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        backend = self._serve()
        backend.respond(1, [(b":status", b"204")])
        backend.pump()
        self.assertFalse(backend.transport.disconnecting)  # type: ignore[union-attr]
        self.factory.stopFactory()
        self.assertTrue(backend.transport.disconnecting)  # type: ignore[union-attr]


class ConfigTests(SynchronousTestCase):
    """
    C{h2c://} and C{h2://} route URLs.
    """

    def test_reverseRoutes(self) -> None:
        """
        Reverse routes take h2c:// and h2:// URLs, default ports 80 and 443.
        """
        listener = _listener("a.test=h2c://10.0.0.1:8080,h2://b.test", "c.test=h2c://c.test")
        urls = [str(u) for r in listener.routes for u in r.upstreams]
        self.assertEqual(urls, ["h2c://10.0.0.1:8080", "h2://b.test:443", "h2c://c.test:80"])

    def test_sniRoutesRefuseThem(self) -> None:
        """
        sni mode routes take tcp:// only.
        """
        e = self.assertRaises(ConfigError, config.fromFlags, ["tcp:0"], [("mode", "sni"), ("route", "a.test=h2c://10.0.0.1:1")])
        self.assertIn("not allowed in mode sni", str(e))


class HealthCheckTests(SynchronousTestCase):
    """
    The C{http} check of an C{h2c://} backend speaks HTTP/2.
    """

    def _check(self) -> Tuple[_H2CheckProtocol, FakeTransport, H2Connection]:
        factory = _CheckFactory(config.HealthCheck(kind="http", path="/healthz"), config.UpstreamURL("h2c", "10.0.0.1", 8080))
        proto = factory.buildProtocol(None)
        assert isinstance(proto, _H2CheckProtocol)
        transport = FakeTransport()
        proto.makeConnection(transport)
        server = H2Connection(config=H2Configuration(client_side=False, header_encoding=None))
        server.initiate_connection()
        return proto, transport, server

    def test_status2xxPasses(self) -> None:
        """
        A 200 to the check's GET passes; the request named the path and
        authority.
        """
        proto, transport, server = self._check()
        [req] = [e for e in server.receive_data(transport.value()) if isinstance(e, h2.events.RequestReceived)]
        self.assertEqual(dict(req.headers)[b":path"], b"/healthz")
        self.assertEqual(dict(req.headers)[b":authority"], b"10.0.0.1:8080")
        server.send_headers(1, [(b":status", b"200")], end_stream=True)
        proto.dataReceived(server.data_to_send())
        self.assertEqual(self.successResultOf(proto.result), 200)

    def test_status5xxFails(self) -> None:
        """
        A 503 fails the check.
        """
        proto, transport, server = self._check()
        server.receive_data(transport.value())
        server.send_headers(1, [(b":status", b"503")], end_stream=True)
        proto.dataReceived(server.data_to_send())
        self.failureResultOf(proto.result)
