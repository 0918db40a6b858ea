# -*- test-case-name: tests.test_h2_server -*-
"""
Tests for L{txproxy.h2._server}: HTTP/2 from clients, on fake transports
and a fake clock, with python-hyper's C{h2} as the client.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import weakref
from typing import Any, Dict, List, Optional, Tuple

import attr
import hpack
import hpack.hpack
import hpack.table
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    InformationalResponseReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes
from h2.stream import H2Stream as LibStream
from hyperframe.frame import ContinuationFrame, ExtensionFrame, Frame, HeadersFrame
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests.refcycles import assertFreed, collectorOff
from txproxy.h2._server import PREFACE, FloodGuard, _AdvertisedSettings, _Connection, _NoDebug
from txproxy._loop import AfterEvents
from txproxy.reverse import ReverseProxyProtocol
from txproxy.testing import FakeConnector, connect, forwardFactory, reverseFactory


#: H2ServerConnection's configuration of h2, for comparing with h2's own.
SERVER_CONFIG: Dict[str, Any] = dict(
    client_side=False, header_encoding=None, validate_inbound_headers=False, normalize_inbound_headers=False,
    validate_outbound_headers=False, normalize_outbound_headers=False,
)


class Client:
    """
    An HTTP/2 client (C{h2}) talking to a proxy protocol over a
    L{FakeTransport}.
    """

    def __init__(self, proto: Any, transport: Any) -> None:
        self.proto = proto
        self.transport = transport
        self.h2 = H2Connection(H2Configuration(client_side=True, header_encoding=None, validate_outbound_headers=False,
                                                normalize_outbound_headers=False))
        self.h2.initiate_connection()
        self.events: List[Any] = []
        self.bodies: Dict[int, bytes] = {}
        self.heads: Dict[int, List[Tuple[bytes, bytes]]] = {}
        self.interim: Dict[int, List[List[Tuple[bytes, bytes]]]] = {}
        self.trailers: Dict[int, List[Tuple[bytes, bytes]]] = {}
        self.ended: List[int] = []
        self.resets: Dict[int, int] = {}
        self.goaway: Optional[ConnectionTerminated] = None

    def send(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self.proto.dataReceived(data)
        self.read()

    def read(self) -> None:
        data = self.transport.value()
        self.transport.clear()
        if not data:
            return
        for event in self.h2.receive_data(data):
            self.events.append(event)
            if isinstance(event, ResponseReceived):
                self.heads[event.stream_id] = event.headers
            elif isinstance(event, InformationalResponseReceived):
                self.interim.setdefault(event.stream_id, []).append(event.headers)
            elif isinstance(event, DataReceived):
                self.bodies[event.stream_id] = self.bodies.get(event.stream_id, b"") + event.data
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, TrailersReceived):
                self.trailers[event.stream_id] = event.headers
            elif isinstance(event, StreamEnded):
                self.ended.append(event.stream_id)
            elif isinstance(event, StreamReset):
                self.resets[event.stream_id] = event.error_code
            elif isinstance(event, ConnectionTerminated):
                self.goaway = event
        out = self.h2.data_to_send()
        if out:
            self.proto.dataReceived(out)

    def request(self, path: bytes = b"/", method: bytes = b"GET", authority: bytes = b"a.test",
                extra: Optional[List[Tuple[bytes, bytes]]] = None, body: Optional[bytes] = None,
                end: bool = True, scheme: bytes = b"http") -> int:
        sid = self.h2.get_next_available_stream_id()
        headers = [(b":method", method), (b":scheme", scheme), (b":authority", authority), (b":path", path)]
        headers += extra or []
        self.h2.send_headers(sid, headers, end_stream=end and body is None)
        if body is not None:
            self.h2.send_data(sid, body, end_stream=end)
        self.send()
        return sid

    def status(self, sid: int) -> int:
        return int(dict(self.heads[sid])[b":status"])


def parseFrames(data: bytes) -> Any:
    """
    The frames in C{data}.
    """
    while data:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9:9 + length]))
        yield frame
        data = data[9 + length:]


def respond(connector: FakeConnector, index: int, response: bytes) -> Any:
    attempt = connector.attempts[index]
    if attempt.transport is None:
        attempt.succeed()
    attempt.protocol.dataReceived(response)
    return attempt


class H2TestCase(SynchronousTestCase):
    peer = ("203.0.113.9", 5000)

    def setUp(self) -> None:
        self.clock = Clock()
        self.connector = FakeConnector()
        self.records: List[Any] = []

    def log(self, record: Any) -> None:
        self.records.append(record)

    def reverse(self, **options: Any) -> Any:
        f = reverseFactory({"*": "http://192.0.2.1:8080"}, connector=self.connector, clock=self.clock, **options)
        f.accessLog = self
        return f

    def open(self, factory: Any = None) -> Client:
        proto, transport = connect(factory if factory is not None else self.reverse(), self.peer)
        client = Client(proto, transport)
        client.send()
        return client

    def upstreamSent(self, index: int = -1) -> bytes:
        attempt = self.connector.attempts[index]
        if attempt.transport is None:
            attempt.succeed()
        return attempt.transport.value()  # type: ignore[no-any-return]


class PrefaceTests(H2TestCase):
    def test_priorKnowledgeGet(self) -> None:
        """
        A connection opening with the preface is served HTTP/2: the request
        reaches the upstream as HTTP/1.1, the response comes back on the
        stream, and the access record says HTTP/2.0.
        """
        client = self.open()
        sid = client.request(b"/x?y=1", extra=[(b"user-agent", b"t/1")])
        sent = self.upstreamSent()
        self.assertTrue(sent.startswith(b"GET /x?y=1 HTTP/1.1\r\n"), sent)
        self.assertIn(b"\r\nHost: a.test\r\n", sent.replace(b"host:", b"Host:"))
        respond(self.connector, 0, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello")
        client.read()
        self.assertEqual(client.status(sid), 200)
        self.assertEqual(client.bodies[sid], b"hello")
        self.assertIn(sid, client.ended)
        self.assertIn((b"x-a", b"b"), client.heads[sid])
        self.assertEqual([r.version for r in self.records], ["HTTP/2.0"])
        self.assertEqual(self.records[0].status, 200)

    def test_prefaceSplitAtEveryByte(self) -> None:
        """
        The preface and the first HEADERS arrive in two pieces, split at
        every position: the request is served the same.
        """
        probe = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        probe.initiate_connection()
        probe.send_headers(1, [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a.test"),
                               (b":path", b"/")], end_stream=True)
        wire = probe.data_to_send()
        self.assertTrue(wire.startswith(PREFACE))
        for cut in range(1, len(wire)):
            connector = self.connector = FakeConnector()
            proto, transport = connect(self.reverse(), self.peer)
            proto.dataReceived(wire[:cut])
            proto.dataReceived(wire[cut:])
            self.assertEqual(len(connector.attempts), 1, cut)
            self.assertTrue(self.upstreamSent().startswith(b"GET / HTTP/1.1\r\n"), cut)
            self.assertFalse(transport.disconnecting, cut)

    def test_continuationSplitAtEveryByte(self) -> None:
        """
        A header block in HEADERS + CONTINUATION frames, the bytes split
        at every position: one request, with every field.
        """
        probe = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        probe.initiate_connection()
        preface = probe.data_to_send()
        block = probe.encoder.encode([(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a.test"),
                                      (b":path", b"/c"), (b"x-one", b"1" * 40), (b"x-two", b"2" * 40)])
        first = HeadersFrame(1, data=block[:20])
        first.flags.add("END_STREAM")
        second = ContinuationFrame(1, data=block[20:50])
        third = ContinuationFrame(1, data=block[50:])
        third.flags.add("END_HEADERS")
        frames = first.serialize() + second.serialize() + third.serialize()
        for cut in range(0, len(frames) + 1):
            connector = self.connector = FakeConnector()
            proto, transport = connect(self.reverse(), self.peer)
            proto.dataReceived(preface)
            proto.dataReceived(frames[:cut])
            proto.dataReceived(frames[cut:])
            self.assertEqual(len(connector.attempts), 1, cut)
            sent = self.upstreamSent()
            self.assertIn(b"x-one: " + b"1" * 40, sent, cut)
            self.assertIn(b"x-two: " + b"2" * 40, sent, cut)

    def test_http11StillServed(self) -> None:
        """
        A connection that starts with an HTTP/1.1 request is served as
        before.
        """
        proto, transport = connect(self.reverse(), self.peer)
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        self.assertTrue(self.upstreamSent().startswith(b"GET / HTTP/1.1\r\n"))

    def test_settingsAdvertised(self) -> None:
        """
        Our SETTINGS carry --h2-max-streams and --max-head-size.
        """
        client = self.open(self.reverse(max_head_size="8192"))
        settings = client.h2.remote_settings
        self.assertEqual(settings[SettingCodes.MAX_CONCURRENT_STREAMS], 100)
        self.assertEqual(settings[SettingCodes.MAX_HEADER_LIST_SIZE], 8192)
        self.assertEqual(settings[SettingCodes.ENABLE_PUSH], 0)


class ExchangeTests(H2TestCase):
    def test_postWithContentLength(self) -> None:
        client = self.open()
        sid = client.request(b"/up", b"POST", extra=[(b"content-length", b"6")], body=b"abcdef")
        sent = self.upstreamSent()
        head, _, body = sent.partition(b"\r\n\r\n")
        self.assertIn(b"content-length: 6", head.lower())
        self.assertEqual(body, b"abcdef")
        respond(self.connector, 0, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
        client.read()
        self.assertEqual(client.status(sid), 201)
        self.assertIn(sid, client.ended)

    def test_postWithoutLengthIsChunkedUpstream(self) -> None:
        client = self.open()
        sid = client.request(b"/up", b"POST", body=b"abc", end=False)
        client.h2.send_data(sid, b"defg", end_stream=True)
        client.send()
        sent = self.upstreamSent()
        head, _, body = sent.partition(b"\r\n\r\n")
        self.assertIn(b"transfer-encoding: chunked", head.lower())
        self.assertEqual(body, b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n")

    def test_requestTrailersBecomeChunkedTrailers(self) -> None:
        client = self.open()
        sid = client.request(b"/up", b"POST", extra=[(b"te", b"trailers")], body=b"abc", end=False)
        client.h2.send_headers(sid, [(b"x-checksum", b"42")], end_stream=True)
        client.send()
        body = self.upstreamSent().partition(b"\r\n\r\n")[2]
        self.assertEqual(body, b"3\r\nabc\r\n0\r\nx-checksum: 42\r\n\r\n")

    def test_teTrailersReachesTheUpstream(self) -> None:
        """
        "te: trailers" (gRPC servers want it) travels to an HTTP/1.1
        upstream as the TE connection option; other requests carry no TE.
        """
        client = self.open()
        client.request(b"/rpc", b"POST", extra=[(b"te", b"trailers")], body=b"x")
        head = self.upstreamSent(0).partition(b"\r\n\r\n")[0]
        self.assertIn(b"\r\nTE: trailers\r\n", head)
        self.assertIn(b"\r\nConnection: TE\r\n", head)
        client.request(b"/plain")
        head = self.upstreamSent(1).partition(b"\r\n\r\n")[0]
        self.assertNotIn(b"TE:", head)
        self.assertNotIn(b"Connection:", head)

    def test_responseTrailers(self) -> None:
        """
        A chunked response's trailer section arrives as HTTP/2 trailers.
        """
        client = self.open()
        sid = client.request()
        respond(self.connector, 0, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: grpc-status\r\n\r\n"
                                   b"5\r\nhello\r\n0\r\ngrpc-status: 0\r\n\r\n")
        client.read()
        self.assertEqual(client.bodies[sid], b"hello")
        self.assertEqual(client.trailers[sid], [(b"grpc-status", b"0")])
        self.assertIn(sid, client.ended)

    def test_interimResponses(self) -> None:
        client = self.open()
        sid = client.request()
        respond(self.connector, 0, b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n"
                                   b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        client.read()
        self.assertEqual(client.interim[sid][0][0], (b":status", b"103"))
        self.assertEqual(client.status(sid), 200)
        self.assertEqual(client.bodies[sid], b"ok")

    def test_concurrentStreams(self) -> None:
        """
        Streams are served at once, each its own exchange; answers may come
        back in any order.
        """
        client = self.open()
        sids = [client.request(b"/%d" % i) for i in range(3)]
        self.assertEqual(len(self.connector.attempts), 3)
        for index in (2, 0, 1):
            respond(self.connector, index, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n%d" % index)
        client.read()
        for index, sid in enumerate(sids):
            self.assertEqual(client.bodies[sid], b"%d" % index)
        self.assertEqual(len(self.records), 3)

    def test_pooledUpstreamNotLeftPaused(self) -> None:
        """
        A response that ends while the client connection's write buffer is
        full (every stream's producer paused) returns its upstream
        connection to the pool reading, not paused: the next request that
        reuses it gets its answer.  (It used to stay paused, and the next
        stream on it hung: found by nghttp with 60 concurrent downloads.)
        """
        client = self.open()
        sid = client.request(b"/a")
        client.proto._h2conn.pauseProducing()
        attempt = respond(self.connector, 0, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")
        self.assertEqual(attempt.transport.producerState, "paused")
        attempt.protocol.dataReceived(b"ok")
        self.assertEqual(attempt.transport.producerState, "producing")
        client.proto._h2conn.resumeProducing()
        client.read()
        self.assertEqual(client.bodies[sid], b"ok")
        sid2 = client.request(b"/b")
        self.assertEqual(len(self.connector.attempts), 1)
        self.assertEqual(attempt.transport.producerState, "producing")
        attempt.protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
        client.read()
        self.assertEqual(client.bodies[sid2], b"hi")

    def test_upstreamRefusedIs502(self) -> None:
        client = self.open()
        sid = client.request()
        self.connector.attempts[0].fail()
        client.read()
        self.assertEqual(client.status(sid), 502)
        self.assertIn(sid, client.ended)
        # The connection goes on.
        sid2 = client.request(b"/again")
        respond(self.connector, 1, b"HTTP/1.1 204 No Content\r\n\r\n")
        client.read()
        self.assertEqual(client.status(sid2), 204)

    def test_upstreamBrokenMidResponseResetsOnlyThatStream(self) -> None:
        client = self.open()
        sid = client.request()
        other = client.request(b"/other")
        attempt = respond(self.connector, 0, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        attempt.transport.loseConnection()
        client.read()
        self.assertIn(sid, client.resets)
        respond(self.connector, 1, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        client.read()
        self.assertEqual(client.bodies[other], b"ok")

    def test_clientResetCancelsUpstream(self) -> None:
        """
        RST_STREAM from the client abandons the upstream request: its
        connection is closed, not pooled, and the record says 499.
        """
        client = self.open()
        sid = client.request()
        upstream = self.connector.attempts[0].succeed()
        client.h2.reset_stream(sid, ErrorCodes.CANCEL)
        client.send()
        self.assertTrue(upstream.disconnecting or upstream.closed)
        self.assertEqual(self.records[-1].status, 499)

    def test_largeResponseRespectsWindowAndPausesUpstream(self) -> None:
        """
        A response larger than the client's window: what the window allows
        is sent, the rest is queued, the upstream is paused; the client's
        WINDOW_UPDATE lets the rest through and resumes the upstream.
        """
        client = self.open()
        sid = client.request()
        body = bytes(range(256)) * 1024  # 256 KiB
        attempt = respond(self.connector, 0, b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
        # Don't acknowledge: feed data without reading the client side.
        attempt.protocol.dataReceived(body[:131072])
        self.assertEqual(attempt.transport.producerState, "paused")
        attempt.protocol.dataReceived(body[131072:])
        data = client.transport.value()
        client.transport.clear()
        events = client.h2.receive_data(data)
        got = b"".join(e.data for e in events if isinstance(e, DataReceived))
        self.assertEqual(len(got), 65535)
        # The upstream's response is over: its connection is pooled, and
        # reading again (the rest waits in the stream for the window).
        self.assertEqual(attempt.transport.producerState, "producing")
        # Now read everything, acknowledging as we go.
        client.bodies[sid] = got
        client.h2.acknowledge_received_data(len(got), sid)
        client.send()
        for _ in range(20):
            client.read()
        self.assertEqual(hashlib.sha256(client.bodies[sid]).hexdigest(), hashlib.sha256(body).hexdigest())
        self.assertIn(sid, client.ended)

    def test_slowUpstreamHoldsClientWindow(self) -> None:
        """
        The upstream connection's write buffer is full (it pauses the
        stream): the stream stops opening the client's window, so the
        client cannot send more than one window's worth.
        """
        client = self.open()
        sid = client.request(b"/up", b"POST", extra=[(b"content-length", b"200000")], end=False)
        upstream = self.connector.attempts[0].succeed()
        stream = client.proto._h2conn.streams[sid]
        stream.protocol.transport.pauseProducing()
        for _ in range(4):
            client.h2.send_data(sid, b"x" * 15000)
        client.send()
        self.assertEqual(upstream.value().partition(b"\r\n\r\n")[2], b"")
        self.assertLess(client.h2.local_flow_control_window(sid), 6000)
        stream.protocol.transport.resumeProducing()
        client.read()
        self.assertEqual(len(upstream.value().partition(b"\r\n\r\n")[2]), 60000)
        self.assertGreater(client.h2.local_flow_control_window(sid), 40000)

    def test_smallResponseInAShortWindow(self) -> None:
        """
        A body of one frame's size that the client's stream window cannot
        take whole: what fits is sent, the rest (with the end of the
        stream) once the window opens.
        """
        client = self.open()
        client.h2.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 5})
        client.send()
        sid = client.request()
        respond(self.connector, 0, b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nhello world\n")
        client.read()
        self.assertEqual(client.bodies[sid], b"hello")
        self.assertNotIn(sid, client.ended)
        for _ in range(5):
            client.send()
        self.assertEqual(client.bodies[sid], b"hello world\n")
        self.assertIn(sid, client.ended)
        self.assertNotIn(sid, client.resets)

    def test_responseEndWaitsForWindow(self) -> None:
        """
        The protocol closes the stream while its end still waits for the
        client's window: the rest is sent when the window opens, then the
        stream ends normally (not reset).
        """
        client = self.open()
        sid = client.request()
        body = b"z" * 100000
        respond(self.connector, 0, b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        for _ in range(10):
            client.read()
        self.assertEqual(client.bodies[sid], body)
        self.assertIn(sid, client.ended)
        self.assertNotIn(sid, client.resets)

    def test_closedWindowTimesOut(self) -> None:
        """
        A client that never opens its window again: the stream is reset
        after the idle timeout, and the protocol learns the connection is
        gone.
        """
        client = self.open(self.reverse(idle_timeout="10"))
        sid = client.request()
        respond(self.connector, 0, b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"z" * 100000)
        stream = client.proto._h2conn.streams[sid]
        self.clock.advance(11)
        self.assertTrue(stream.closed)
        self.assertNotIn(sid, client.proto._h2conn.streams)


class StreamHookTests(H2TestCase):
    """
    A protocol subclass's hooks are called for every HTTP/2 stream (each
    stream's protocol takes what its connection's owner worked out about
    the class).
    """

    def test_subclassHooksPerStream(self) -> None:
        seen: List[Any] = []

        class Watch(ReverseProxyProtocol):
            def requestBodyData(self, request: Any, data: bytes) -> None:
                seen.append(("up", request.path, data))

            def responseBodyData(self, request: Any, data: bytes) -> None:
                seen.append(("down", request.path, data))

            def exchangeEnded(self, record: Any) -> None:
                seen.append(("ended", record.target, record.status))

        client = self.open(reverseFactory({"*": "http://192.0.2.1:8080"}, connector=self.connector,
                                          clock=self.clock, protocol=Watch))
        first = client.request(b"/1", b"POST", extra=[(b"content-length", b"2")], body=b"hi")
        second = client.request(b"/2")
        respond(self.connector, 0, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na")
        respond(self.connector, 1, b"HTTP/1.1 404 Not Found\r\nContent-Length: 1\r\n\r\nb")
        client.read()
        self.assertEqual((client.status(first), client.status(second)), (200, 404))
        self.assertEqual(seen, [("up", b"/1", b"hi"), ("down", b"/1", b"a"), ("ended", "http://a.test:80/1", 200),
                                ("down", b"/2", b"b"), ("ended", "http://a.test:80/2", 404)])

    def test_peerAskedOnce(self) -> None:
        """
        Every stream's protocol is given the client's address, asked of
        the connection's transport once.
        """
        client = self.open()
        asked: List[Any] = []
        getPeer = client.transport.getPeer

        def counting() -> Any:
            asked.append(1)
            return getPeer()

        client.transport.getPeer = counting
        client.proto._h2conn._peer = None
        client.request(b"/a")
        client.request(b"/b")
        streams = list(client.proto._h2conn.streams.values())
        self.assertEqual([s.getPeer() for s in streams], [getPeer(), getPeer()])
        self.assertEqual([s.protocol.client.host for s in streams], [self.peer[0]] * 2)
        self.assertEqual(len(asked), 1)

    def test_repeatedRequestTranslatedOnce(self) -> None:
        """
        A request whose header list repeats the previous one's shares its
        translation; another list, or the same one ending differently, is
        translated anew; an invalid list is refused every time.
        """
        client = self.open()
        streams = client.proto._h2conn.streams
        first = client.request(b"/same")
        second = client.request(b"/same")
        self.assertIs(streams[first].request, streams[second].request)
        third = client.request(b"/other")
        self.assertEqual(streams[third].request.target, b"/other")
        fourth = client.request(b"/same", b"POST", body=b"x")
        self.assertTrue(streams[fourth].request.chunked)
        self.assertFalse(streams[first].request.chunked)
        for _ in range(2):
            bad = client.request(extra=[(b"connection", b"close")])
            client.read()
            self.assertEqual(client.resets.get(bad), ErrorCodes.PROTOCOL_ERROR)
        self.assertEqual(len(self.connector.attempts), 4)

    def test_factoryHookPerStream(self) -> None:
        """
        A listener factory's C{exchangeEnded} override hears every stream.
        """
        factory = self.reverse()
        seen: List[Any] = []

        class Factory(type(factory)):  # type: ignore[misc]
            def exchangeEnded(self, proto: Any, record: Any) -> None:
                seen.append((type(proto).__name__, record.target))
                super().exchangeEnded(proto, record)

        factory.__class__ = Factory
        client = self.open(factory)
        client.request(b"/a")
        client.request(b"/b")
        respond(self.connector, 0, b"HTTP/1.1 204 No Content\r\n\r\n")
        respond(self.connector, 1, b"HTTP/1.1 204 No Content\r\n\r\n")
        self.assertEqual(seen, [("ReverseProxyProtocol", "http://a.test:80/a"),
                                ("ReverseProxyProtocol", "http://a.test:80/b")])


class HeadAsValueTests(H2TestCase):
    """
    A stream hands its protocol the request head as a value, and takes the
    response head as one: what the protocol would see and write as
    HTTP/1.1 bytes, without writing and parsing them.
    """

    def test_overriddenDataReceivedSeesHTTP11(self) -> None:
        """
        A protocol class that overrides C{dataReceived} is given the
        request as HTTP/1.1 bytes, as before.
        """
        seen: List[bytes] = []

        class Watching(ReverseProxyProtocol):
            def dataReceived(self, data: bytes) -> None:
                if self._h2stream is not None:  # (not the connection's own bytes)
                    seen.append(data)
                super().dataReceived(data)

        client = self.open(self.reverse(protocol=Watching))
        sid = client.request(b"/w", extra=[(b"te", b"trailers"), (b"x-a", b"1")])
        self.assertEqual(
            seen,
            [b"GET /w HTTP/1.1\r\nHost: a.test\r\nte: trailers\r\nx-a: 1\r\nConnection: close, te\r\n\r\n"],
        )
        self.assertTrue(self.upstreamSent().startswith(b"GET /w HTTP/1.1\r\n"))
        respond(self.connector, 0, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        client.read()
        self.assertEqual((client.status(sid), client.bodies[sid]), (200, b"ok"))

    def test_tooManyFields(self) -> None:
        """
        C{--max-headers} applies to a stream's request as to an HTTP/1.1
        head (the C{Host} and C{Connection} fields the translation adds
        count): 431, nothing sent upstream.
        """
        client = self.open(self.reverse(max_headers="4"))
        ok = client.request(b"/", extra=[(b"x-a", b"1"), (b"x-b", b"2")])
        refused = client.request(b"/", extra=[(b"x-a", b"1"), (b"x-b", b"2"), (b"x-c", b"3")])
        client.read()
        self.assertEqual(client.status(refused), 431)
        self.assertEqual(len(self.connector.attempts), 1)
        respond(self.connector, 0, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        client.read()
        self.assertEqual(client.status(ok), 200)

    def test_rewriteResponseHook(self) -> None:
        """
        C{rewriteResponse} still sees and changes a stream's response head.
        """

        class Rewriting(ReverseProxyProtocol):
            def rewriteResponse(self, request: Any, head: Any) -> Any:
                return attr.evolve(head, headers=head.headers + ((b"X-Rewritten", b"yes"),))

        client = self.open(self.reverse(protocol=Rewriting))
        sid = client.request(b"/")
        respond(self.connector, 0, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        client.read()
        self.assertIn((b"x-rewritten", b"yes"), client.heads[sid])
        self.assertEqual(client.bodies[sid], b"ok")

    def test_bodyAfterHead(self) -> None:
        """
        A response whose body comes after its head, in pieces, ends when
        its length is reached.
        """
        client = self.open()
        sid = client.request(b"/")
        attempt = respond(self.connector, 0, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        client.read()
        self.assertEqual(client.bodies[sid], b"abc")
        self.assertNotIn(sid, client.ended)
        attempt.protocol.dataReceived(b"defghij")
        client.read()
        self.assertEqual(client.bodies[sid], b"abcdefghij")
        self.assertIn(sid, client.ended)


class ValidationTests(H2TestCase):
    def assertStreamError(self, client: Client, sid: int, code: int = ErrorCodes.PROTOCOL_ERROR) -> None:
        client.read()
        self.assertEqual(client.resets.get(sid), code)
        self.assertEqual(self.connector.attempts, [])
        self.assertFalse(client.transport.disconnecting)

    def test_uppercaseName(self) -> None:
        client = self.open()
        self.assertStreamError(client, client.request(extra=[(b"X-Upper", b"1")]))

    def test_connectionSpecificField(self) -> None:
        client = self.open()
        self.assertStreamError(client, client.request(extra=[(b"connection", b"keep-alive")]))

    def test_missingPath(self) -> None:
        client = self.open()
        sid = client.h2.get_next_available_stream_id()
        client.h2.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a.test")],
                               end_stream=True)
        client.send()
        self.assertStreamError(client, sid)

    def test_authorityCheckedAfterAnother(self) -> None:
        """
        A valid C{:authority} repeated by the next streams, then an invalid
        one: that stream is reset; the valid one is served again after it.
        """
        client = self.open()
        client.request(authority=b"a.test")
        client.request(authority=b"a.test")
        self.assertEqual(len(self.connector.attempts), 2)
        bad = client.request(authority=b"user@a.test")
        client.read()
        self.assertEqual(client.resets.get(bad), ErrorCodes.PROTOCOL_ERROR)
        client.request(authority=b"a.test")
        self.assertEqual(len(self.connector.attempts), 3)

    def test_authorityHostConflict(self) -> None:
        client = self.open()
        self.assertStreamError(client, client.request(extra=[(b"host", b"b.test")]))

    def test_contentLengthLongerThanData(self) -> None:
        client = self.open()
        sid = client.request(b"/", b"POST", extra=[(b"content-length", b"10")], body=b"abc")
        client.read()
        self.assertEqual(client.resets.get(sid), ErrorCodes.PROTOCOL_ERROR)
        self.assertFalse(client.transport.disconnecting)

    def test_contentLengthShorterThanData(self) -> None:
        client = self.open()
        sid = client.request(b"/", b"POST", extra=[(b"content-length", b"2")], body=b"abcdef")
        client.read()
        self.assertEqual(client.resets.get(sid), ErrorCodes.PROTOCOL_ERROR)
        self.assertFalse(client.transport.disconnecting)

    def test_otherStreamsUnaffected(self) -> None:
        client = self.open()
        bad = client.request(extra=[(b"X-Upper", b"1")])
        good = client.request(b"/fine")
        respond(self.connector, 0, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        client.read()
        self.assertIn(bad, client.resets)
        self.assertEqual(client.bodies[good], b"ok")


class LimitTests(H2TestCase):
    def test_streamsOverTheLimitRefused(self) -> None:
        client = self.open(self.reverse(h2_max_streams="2"))
        # A client that ignores our SETTINGS.
        client.h2.remote_settings._settings[SettingCodes.MAX_CONCURRENT_STREAMS] = collections.deque([10])
        sids = [client.request(b"/%d" % i) for i in range(3)]
        client.read()
        self.assertEqual(client.resets.get(sids[2]), ErrorCodes.REFUSED_STREAM)
        self.assertEqual(len(self.connector.attempts), 2)
        self.assertFalse(client.transport.disconnecting)

    def test_headerListOverMaxHeadSize(self) -> None:
        """
        A header list larger than --max-head-size (an HPACK bomb among
        them): GOAWAY and close.
        """
        client = self.open(self.reverse(max_head_size="4096"))
        client.h2.remote_settings.update({SettingCodes.MAX_HEADER_LIST_SIZE: 1 << 20})
        client.request(extra=[(b"x-big", b"a" * 5000)])
        self.assertIsNotNone(client.goaway)
        self.assertTrue(client.transport.disconnecting or client.transport.closed)
        self.assertEqual(self.connector.attempts, [])

    def test_rapidReset(self) -> None:
        client = self.open()
        for _ in range(150):
            sid = client.h2.get_next_available_stream_id()
            client.h2.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a.test"),
                                         (b":path", b"/")], end_stream=True)
            client.h2.reset_stream(sid, ErrorCodes.CANCEL)
        client.send()
        self.assertIsNotNone(client.goaway)
        self.assertEqual(client.goaway.error_code, ErrorCodes.ENHANCE_YOUR_CALM)
        self.assertTrue(client.transport.closed)

    def test_pingFlood(self) -> None:
        client = self.open()
        for i in range(60):
            client.h2.ping(b"%08d" % i)
        client.send()
        self.assertEqual(client.goaway.error_code, ErrorCodes.ENHANCE_YOUR_CALM)  # type: ignore[union-attr]
        self.assertTrue(client.transport.closed)

    def test_pingsSpreadOutAreFine(self) -> None:
        client = self.open()
        for i in range(200):
            client.h2.ping(b"%08d" % i)
            client.send()
            self.clock.advance(0.1)
        self.assertIsNone(client.goaway)

    def test_settingsFlood(self) -> None:
        client = self.open()
        for _ in range(60):
            client.h2.update_settings({SettingCodes.HEADER_TABLE_SIZE: 4096})
        client.send()
        self.assertEqual(client.goaway.error_code, ErrorCodes.ENHANCE_YOUR_CALM)  # type: ignore[union-attr]

    def test_emptyDataFlood(self) -> None:
        client = self.open()
        sid = client.request(b"/", b"POST", end=False)
        for _ in range(120):
            client.h2.send_data(sid, b"")
        client.send()
        self.assertEqual(client.goaway.error_code, ErrorCodes.ENHANCE_YOUR_CALM)  # type: ignore[union-attr]

    def test_continuationFlood(self) -> None:
        """
        CONTINUATION frames that never end the block: a protocol error
        (GOAWAY) once C{h2}'s backlog is passed, nothing reaches upstream.
        """
        client = self.open()
        frames = HeadersFrame(1, data=b"").serialize()
        frames += b"".join(ContinuationFrame(1, data=b"\x20").serialize() for _ in range(100))
        client.proto.dataReceived(frames)
        client.read()
        self.assertIsNotNone(client.goaway)
        self.assertTrue(client.transport.closed)
        self.assertEqual(self.connector.attempts, [])

    def test_guardWindow(self) -> None:
        guard = FloodGuard(100)
        self.assertFalse(any(guard.count("ping", 0.0) for _ in range(50)))
        self.assertTrue(guard.count("ping", 0.5))
        self.assertFalse(guard.count("ping", 1.6))


class LifecycleTests(H2TestCase):
    def test_idleConnectionClosed(self) -> None:
        factory = self.reverse(idle_timeout="10")
        client = self.open(factory)
        self.clock.advance(11)
        client.read()
        self.assertIsNotNone(client.goaway)
        self.assertTrue(client.transport.closed)

    def test_busyConnectionNotIdle(self) -> None:
        factory = self.reverse(idle_timeout="10", response_timeout="60")
        client = self.open(factory)
        client.request()
        self.connector.attempts[0].succeed()
        self.clock.advance(9)
        self.assertFalse(client.transport.closed)

    def test_idleCountsFromLastStream(self) -> None:
        """
        The idle timeout runs from the end of the last stream, not from
        when the connection was last idle before it: the timer the first
        idle period armed is not cancelled when a stream opens, so this
        checks that it re-arms for the rest of the timeout, and closes
        then.
        """
        factory = self.reverse(idle_timeout="10", response_timeout="60")
        client = self.open(factory)
        self.clock.advance(4)
        sid = client.request()
        self.clock.advance(8)  # the first period's timer fired, busy
        self.assertFalse(client.transport.closed)
        respond(self.connector, 0, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        client.read()
        self.assertEqual(client.status(sid), 200)
        self.clock.advance(9.5)
        self.assertFalse(client.transport.closed)
        self.clock.advance(0.6)
        client.read()
        self.assertIsNotNone(client.goaway)
        self.assertTrue(client.transport.closed)

    def test_answeredStreamFreedWithoutCollector(self) -> None:
        """
        Once its stream is answered, the protocol that served it (and the
        stream) are freed by reference counting: the stream no longer
        refers to the protocol that refers to it, and the fresh upstream
        dial left no cycle either (tests/refcycles.py says why it matters).
        """
        client = self.open()
        with collectorOff():
            sid = client.request(b"/")
            conn = client.proto._h2conn
            stream = conn.streams[sid]
            streamRef = weakref.ref(stream)
            protoRef = weakref.ref(stream.protocol)
            respond(self.connector, 0, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            client.read()
            self.assertEqual(client.bodies[sid], b"ok")
            self.assertNotIn(sid, conn.streams)
            self.assertIsNone(stream.protocol)
            del stream
            assertFreed(self, protoRef, "the stream's protocol")
            assertFreed(self, streamRef, "the stream")

    def test_closedConnectionFreedWithoutCollector(self) -> None:
        """
        Once an HTTP/2 connection is closed, its protocol (and with it the
        transport) is freed by reference counting: the connection's HTTP/2
        state no longer refers back to it.
        """
        with collectorOff():
            client = self.open()
            sid = client.request(b"/")
            respond(self.connector, 0, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            client.read()
            self.assertEqual(client.bodies[sid], b"ok")
            proto = client.proto
            client.transport.peerClosed()
            self.assertIsNone(proto._h2conn)
            # (As Twisted's TCP transports do once the connection is lost.)
            client.transport.protocol = None
            ref = weakref.ref(proto)
            del proto, client
            assertFreed(self, ref, "the closed HTTP/2 connection's protocol")

    def test_streamTimersApply(self) -> None:
        """
        Each stream runs the HTTP/1.1 core's timers: a dial that never
        completes gets 504 after --connect-timeout, an upstream that never
        answers 504 after --response-timeout; the connection goes on.
        """
        client = self.open(self.reverse(connect_timeout="3", response_timeout="5"))
        dialling = client.request(b"/dial")
        answering = client.request(b"/answer")
        self.connector.attempts[1].succeed()
        self.clock.advance(3.1)
        client.read()
        self.assertEqual(client.status(dialling), 504)
        self.assertNotIn(answering, client.heads)
        self.clock.advance(2.0)
        client.read()
        self.assertEqual(client.status(answering), 504)
        self.assertFalse(client.transport.closed)
        self.assertEqual(client.proto._h2conn.streams, {})

    def test_streamTimersShareOneCall(self) -> None:
        """
        The timers of a connection's streams are one call on the clock
        (L{txproxy._timers.TimerGroup}), however many streams wait; each
        still fires at its time, and the call goes with the connection.
        """
        client = self.open(self.reverse(response_timeout="5"))
        client.request(b"/0")
        self.connector.attempts[0].succeed()
        calls = len(self.clock.getDelayedCalls())
        self.clock.advance(1)
        later = [client.request(b"/%d" % (n,)) for n in range(1, 6)]
        for attempt in self.connector.attempts[1:]:
            attempt.succeed()
        self.assertEqual(len(self.clock.getDelayedCalls()), calls)
        self.assertEqual(len(client.proto._h2conn.timers), 6)
        self.clock.advance(4)
        client.read()
        self.assertEqual([sid for sid in later if sid in client.heads], [])
        self.clock.advance(1)
        client.read()
        self.assertEqual([client.status(sid) for sid in later], [504] * 5)
        group = client.proto._h2conn.timers
        client.proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual((len(group), group._call), (0, None))

    def test_drainSendsGoawayAndLetsStreamsFinish(self) -> None:
        factory = self.reverse()
        client = self.open(factory)
        sid = client.request()
        client.proto.drain()
        client.read()
        self.assertEqual(client.goaway.error_code, 0)  # type: ignore[union-attr]
        self.assertEqual(client.goaway.last_stream_id, sid)  # type: ignore[union-attr]
        self.assertFalse(client.transport.closed)
        respond(self.connector, 0, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        # (h2's client state machine stops at any GOAWAY; nghttp2 and
        # browsers read on, as RFC 9113 §6.8 wants: read the frames.)
        frames = list(parseFrames(client.transport.value()))
        kinds = [(type(f).__name__, f.stream_id, sorted(f.flags)) for f in frames]
        self.assertEqual(kinds, [("HeadersFrame", sid, ["END_HEADERS"]), ("DataFrame", sid, ["END_STREAM"])])
        self.assertEqual(frames[1].data, b"ok")
        self.assertTrue(client.transport.closed)

    def test_reloadSendsGoaway(self) -> None:
        """
        A reload (SIGHUP): HTTP/2 connections get GOAWAY(NO_ERROR), their
        open streams finish, then they close; new requests come on new
        connections with the new settings.
        """
        factory = self.reverse()
        client = self.open(factory)
        sid = client.request()
        factory.reloadListener(factory.listener)
        client.read()
        self.assertEqual(client.goaway.error_code, 0)  # type: ignore[union-attr]
        self.assertFalse(client.transport.closed)
        respond(self.connector, 0, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        frames = list(parseFrames(client.transport.value()))
        self.assertEqual([type(f).__name__ for f in frames], ["HeadersFrame", "DataFrame"])
        self.assertEqual(frames[0].stream_id, sid)
        self.assertTrue(client.transport.closed)

    def test_clientGoneClosesStreams(self) -> None:
        client = self.open()
        client.request()
        upstream = self.connector.attempts[0].succeed()
        client.transport.loseConnection()
        self.assertTrue(upstream.disconnecting or upstream.closed)
        self.assertEqual(self.records[-1].status, 499)

    def test_connectionCountedOnce(self) -> None:
        factory = self.reverse()
        client = self.open(factory)
        for i in range(3):
            client.request(b"/%d" % i)
        self.assertEqual(len(factory.protocols), 1)


class CoalescedWriteTests(H2TestCase):
    """
    With the lean loop's L{AfterEvents}, what the connection has to write
    during a poll's dispatch leaves once, after the poll's events; outside
    a dispatch, and before a close, it leaves at once.
    """

    def openBatched(self, factory: Any = None) -> Any:
        client = self.open(factory)
        after = AfterEvents()
        client.proto._h2conn._after = after
        client.transport.clear()
        return client, after

    def test_responsesOfOnePollInOneWrite(self) -> None:
        """
        Two streams answered by two upstream responses in one poll: nothing
        is written until the poll's events are over, then both responses
        in one write.
        """
        client, after = self.openBatched()
        first = client.request(b"/1")
        second = client.request(b"/2")
        writes: List[bytes] = []
        transport = client.transport
        write = transport.write

        def counting(data: bytes) -> None:
            writes.append(data)
            write(data)

        transport.write = counting
        client.proto._h2conn._write = counting
        after.dispatching = True
        respond(self.connector, 0, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na")
        respond(self.connector, 1, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb")
        self.assertEqual(writes, [])
        self.assertEqual(len(after.pending), 1)
        after.run()
        self.assertEqual(len(writes), 1)
        client.read()
        self.assertEqual((client.bodies[first], client.bodies[second]), (b"a", b"b"))
        self.assertEqual(client.ended, [first, second])

    def test_outsideDispatchAtOnce(self) -> None:
        """
        A response that arrives outside a poll's dispatch (a timer, a
        reactor without the lean loop) is written at once.
        """
        client, after = self.openBatched()
        sid = client.request()
        respond(self.connector, 0, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.assertEqual(after.pending, [])
        client.read()
        self.assertEqual(client.bodies[sid], b"ok")

    def test_requestsAnsweredInTheirOwnPoll(self) -> None:
        """
        The connection's own answers to the client's frames (here a
        C{SETTINGS} acknowledgement) wait for the end of the poll too.
        """
        client, after = self.openBatched()
        client.h2.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 1000})
        after.dispatching = True
        client.proto.dataReceived(client.h2.data_to_send())
        self.assertEqual(client.transport.value(), b"")
        after.run()
        frames = list(parseFrames(client.transport.value()))
        self.assertEqual([type(f).__name__ for f in frames], ["SettingsFrame"])
        self.assertIn("ACK", frames[0].flags)

    def test_closeWritesWhatIsPending(self) -> None:
        """
        A connection closed (here for a flood) while an answer waits for
        the end of the poll writes that answer before its C{GOAWAY}, then
        closes.
        """
        client, after = self.openBatched()
        sid = client.request()
        after.dispatching = True
        respond(self.connector, 0, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.assertEqual(client.transport.value(), b"")
        client.proto._h2conn.goAway(ErrorCodes.ENHANCE_YOUR_CALM, close=True)
        client.read()
        self.assertEqual(client.bodies[sid], b"ok")
        self.assertIsNotNone(client.goaway)
        self.assertTrue(client.transport.disconnecting)
        after.run()
        self.assertEqual(client.transport.value(), b"")

    def test_lastStreamOfAClosingConnection(self) -> None:
        """
        The client half-closed: the answer to its last stream, given during
        a poll's dispatch, closes the connection, and is written before the
        close.
        """
        client, after = self.openBatched()
        sid = client.request()
        client.proto._h2conn.clientReadLost()
        self.assertFalse(client.transport.disconnecting)
        after.dispatching = True
        respond(self.connector, 0, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.assertTrue(client.transport.disconnecting)
        client.read()
        self.assertEqual(client.bodies[sid], b"ok")
        self.assertEqual(client.ended, [sid])
        after.run()


class ForwardTests(H2TestCase):
    def test_absoluteFormUpstream(self) -> None:
        connector = self.connector = FakeConnector({"example.test": ["192.0.2.5"]})
        factory = forwardFactory(connector=connector, clock=self.clock, allow="0.0.0.0/0")
        client = self.open(factory)
        sid = client.request(b"/p", authority=b"example.test")
        sent = self.upstreamSent()
        self.assertTrue(sent.startswith(b"GET /p HTTP/1.1\r\n"), sent)
        respond(connector, 0, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        client.read()
        self.assertEqual(client.bodies[sid], b"ok")

    def test_connectStreamIsATunnel(self) -> None:
        connector = self.connector = FakeConnector({"example.test": ["192.0.2.5"]})
        factory = forwardFactory(connector=connector, clock=self.clock, allow="0.0.0.0/0")
        client = self.open(factory)
        sid = client.h2.get_next_available_stream_id()
        client.h2.send_headers(sid, [(b":method", b"CONNECT"), (b":authority", b"example.test:443")])
        client.send()
        upstream = connector.attempts[0].succeed()
        client.read()
        self.assertEqual(client.status(sid), 200)
        client.h2.send_data(sid, b"client hello")
        client.send()
        self.assertEqual(upstream.value(), b"client hello")
        connector.attempts[0].protocol.dataReceived(b"server hello")
        client.read()
        self.assertEqual(client.bodies[sid], b"server hello")
        # The client ends its side: FIN upstream.
        client.h2.end_stream(sid)
        client.send()
        self.assertTrue(upstream.writeClosed)


class WholeResponseTests(H2TestCase):
    """
    L{H2Stream.writeWholeResponse} (a whole response, the protocol's
    common path) sends what L{H2Stream.writeResponse} sends for the same
    response through the message reader: the same bytes, the same stream
    state, the same frames after the client's window opens.
    """

    def _serve(self, method: bytes, status: int, fields: List[Tuple[bytes, bytes]], body: bytes, whole: bool,
             interim: bool = False) -> Any:
        from txproxy.http import ResponseHead

        client = self.open()
        sid = client.request(b"/", method=method)
        client.read()
        stream = client.proto._h2conn.streams[sid]
        if interim:
            stream.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n")
        if whole:
            stream.writeWholeResponse(status, b"Reason", list(fields), body)
        else:
            stream.writeResponse(ResponseHead(b"HTTP/1.1", status, b"Reason", tuple(fields)), body)
        first = client.transport.value()
        state = (stream.headSent, stream.responseEnded, stream.queued, stream.endQueued, stream.closed,
                 stream.producerPaused)
        later = []
        for _ in range(8):
            client.read()  # acknowledges the DATA: the windows open
            later.append(client.transport.value())
        return (first, state, later, client.heads.get(sid), client.interim.get(sid), client.bodies.get(sid),
                sid in client.ended, client.resets.get(sid))

    def assertSame(self, method: bytes, status: int, fields: List[Tuple[bytes, bytes]], body: bytes,
                   interim: bool = False) -> Any:
        whole = self._serve(method, status, fields, body, True, interim)
        read = self._serve(method, status, fields, body, False, interim)
        self.assertEqual(whole, read, (method, status, fields, len(body)))
        return whole

    def test_sameAsReader(self) -> None:
        """
        Bodies in one frame, in two, and over the stream's window; no body;
        answers that have none whatever they announce (C{204}, C{304},
        C{HEAD}); after an interim response.
        """
        def length(n: int) -> List[Tuple[bytes, bytes]]:
            return [(b"Content-Type", b"text/plain"), (b"Content-Length", b"%d" % n), (b"Via", b"1.1 txproxy")]

        for size in (2, 0, 16384, 20000, 65535, 70000, 200000):
            body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
            result = self.assertSame(b"GET", 200, length(size), body)
            self.assertEqual((result[5] or b"", result[6]), (body, True))
        self.assertSame(b"GET", 404, length(9), b"not found")
        self.assertSame(b"POST", 201, length(2), b"ok")
        self.assertSame(b"GET", 204, [(b"Server", b"x")], b"")
        self.assertSame(b"GET", 304, [(b"ETag", b'"a"'), (b"Content-Length", b"9")], b"")
        self.assertSame(b"HEAD", 200, length(9), b"")
        result = self.assertSame(b"GET", 200, length(2), b"ok", interim=True)
        self.assertEqual(result[4], [[(b":status", b"103"), (b"link", b"</a>")]])

    def test_commonPathReadsNothing(self) -> None:
        """
        The protocol hands a response with its whole body to
        C{writeWholeResponse}, which makes no message reader; a chunked one
        goes through the reader.
        """
        from txproxy.h2 import _server

        made: List[Any] = []
        real = _server.MessageReader

        def counting(*args: Any) -> Any:
            made.append(args)
            return real(*args)

        self.patch(_server, "MessageReader", counting)
        client = self.open()
        sid = client.request(b"/")
        respond(self.connector, 0, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        client.read()
        self.assertEqual((client.status(sid), client.bodies[sid], sid in client.ended, made), (200, b"ok", True, []))
        sid = client.request(b"/")
        respond(self.connector, 0, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")
        client.read()
        self.assertEqual((client.status(sid), client.bodies[sid], sid in client.ended, len(made)), (200, b"ok", True, 1))


class FramingTests(SynchronousTestCase):
    """
    L{_Connection}'s own C{send_headers} and C{send_data} (frame bytes
    written directly) against C{h2}'s: the same calls on two server
    connections in the same state queue the same bytes, leave the same
    windows and stream states, and raise the same errors.
    """

    def pair(self, windowSize: int = 65535, maxFrame: int = 16384) -> Any:
        ours = _Connection(config=H2Configuration(**SERVER_CONFIG))
        theirs = H2Connection(config=H2Configuration(**SERVER_CONFIG))
        client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        client.initiate_connection()
        client.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: windowSize, SettingCodes.MAX_FRAME_SIZE: maxFrame})
        for sid in (1, 3, 5):
            client.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a"),
                                      (b":path", b"/%d" % sid)], end_stream=True)
        data = client.data_to_send()
        for conn in (ours, theirs):
            conn.initiate_connection()
            conn.receive_data(data)
            conn.data_to_send()
        return ours, theirs

    def same(self, ours: Any, theirs: Any, call: str, *args: Any, **kw: Any) -> None:
        results = []
        for conn in (ours, theirs):
            try:
                getattr(conn, call)(*args, **kw)
                results.append(None)
            except Exception as e:  # the same class of error, from both
                results.append(type(e))
        self.assertEqual(results[0], results[1], (call, args))
        self.assertEqual(ours.data_to_send(), theirs.data_to_send(), (call, args))
        self.assertEqual(ours.outbound_flow_control_window, theirs.outbound_flow_control_window)
        for sid in (1, 3, 5):
            a, b = ours.streams.get(sid), theirs.streams.get(sid)
            self.assertEqual(a is None, b is None)
            if a is not None:
                self.assertEqual(a.state_machine.state, b.state_machine.state, sid)
                self.assertEqual(a.outbound_flow_control_window, b.outbound_flow_control_window, sid)

    def test_responses(self) -> None:
        """
        Interim and final heads, DATA (bytes and a memoryview), END_STREAM
        on DATA, on a head and on trailers; informational heads and
        trailers without END_STREAM refused alike.
        """
        ours, theirs = self.pair()
        head = [(b":status", b"200"), (b"content-type", b"text/plain"), (b"server", b"origin")]
        self.same(ours, theirs, "send_headers", 1, [(b":status", b"103"), (b"link", b"</a>; rel=preload")])
        self.same(ours, theirs, "send_headers", 1, [(b":status", b"100")], end_stream=True)
        self.same(ours, theirs, "send_headers", 1, head)
        self.same(ours, theirs, "send_data", 1, b"hello ")
        self.same(ours, theirs, "send_data", 1, memoryview(b"world"))
        self.same(ours, theirs, "send_data", 1, b"", end_stream=True)
        self.same(ours, theirs, "send_data", 1, b"late")
        self.same(ours, theirs, "send_headers", 3, [(b":status", b"204")], end_stream=True)
        self.same(ours, theirs, "send_headers", 5, head)
        self.same(ours, theirs, "send_data", 5, b"x" * 100)
        self.same(ours, theirs, "send_headers", 5, [(b"grpc-status", b"0")])
        self.same(ours, theirs, "send_headers", 5, [(b"grpc-status", b"0")], end_stream=True)
        self.same(ours, theirs, "send_headers", 7, head)
        self.same(ours, theirs, "send_data", 9, b"no such stream")

    def test_windowsAndFrameSize(self) -> None:
        """
        DATA over a stream's window or the connection's is refused alike
        and changes nothing; DATA over the peer's frame size is C{h2}'s.
        """
        ours, theirs = self.pair(windowSize=10)
        self.same(ours, theirs, "send_headers", 1, [(b":status", b"200")])
        self.same(ours, theirs, "send_data", 1, b"a" * 11)
        self.same(ours, theirs, "send_data", 1, b"a" * 10)
        self.same(ours, theirs, "send_data", 1, b"a")
        self.same(ours, theirs, "send_data", 1, b"", end_stream=True)
        ours, theirs = self.pair(windowSize=100000)
        self.same(ours, theirs, "send_headers", 3, [(b":status", b"200")])
        self.same(ours, theirs, "send_data", 3, b"b" * 16385)
        for _ in range(3):
            self.same(ours, theirs, "send_data", 3, b"c" * 16384)
        self.same(ours, theirs, "send_data", 3, b"d" * 16384)  # past the connection's window
        self.assertEqual(ours.outbound_flow_control_window, 65535 - 3 * 16384)

    def test_continuation(self) -> None:
        """
        A header block over the peer's maximum frame size: HEADERS and
        CONTINUATION frames, cut at the same places, END_STREAM on the
        HEADERS frame and END_HEADERS on the last.
        """
        def exactly(blockSize: int) -> int:
            # The value's size that makes the block exactly blockSize.
            prefix = len(hpack.Encoder().encode([(b":status", b"200"), (b"x-big", b"z" * blockSize)], huffman=False))
            return blockSize - (prefix - blockSize)

        for size in (16300, 16384 * 2 - 20, exactly(16384 * 2), 16384 * 2 + 50):
            ours, theirs = self.pair()
            for conn in (ours, theirs):
                # Without Huffman coding (pure Python, slow on 30 kB), on
                # both sides alike: the block is the value's size plus a
                # few bytes.
                conn.encoder.encode = functools.partial(conn.encoder.encode, huffman=False)
            big = [(b":status", b"200"), (b"x-big", b"z" * size)]
            self.same(ours, theirs, "send_headers", 1, big)
            self.same(ours, theirs, "send_headers", 3, big, end_stream=True)

    def test_priorityAndPaddingAreH2s(self) -> None:
        """
        What the direct path does not do (priority on a head, padding) is
        C{h2}'s, with its answers.
        """
        ours, theirs = self.pair()
        self.same(ours, theirs, "send_headers", 1, [(b":status", b"200")], priority_weight=16)
        self.same(ours, theirs, "send_headers", 1, [(b":status", b"200")])
        self.same(ours, theirs, "send_data", 1, b"abc", pad_length=4)
        self.same(ours, theirs, "send_data", 1, b"abc", end_stream=True, pad_length=2)


class ReceiveTests(SynchronousTestCase):
    """
    L{_Connection.receive_data} (request heads taken without C{h2}'s frame
    buffer) against C{h2}'s: the same bytes, cut at every position, give
    the same events, the same bytes to send, the same streams and the same
    errors.
    """

    def connections(self, maxStreams: Optional[int] = None) -> Any:
        made = []
        for cls in (_Connection, H2Connection):
            conn = cls(config=H2Configuration(**SERVER_CONFIG))
            if maxStreams is None:
                conn.local_settings = _AdvertisedSettings(client=False, initial_values={})
            else:
                conn.local_settings.max_concurrent_streams = maxStreams
            conn.initiate_connection()
            conn.data_to_send()
            made.append(conn)
        return made

    def describe(self, event: Any) -> Any:
        """
        An event's class and attributes (its repr leaves some out).
        """
        names = ("stream_id", "headers", "stream_ended", "priority_updated", "data", "flow_controlled_length",
                 "error_code", "delta", "changed_settings", "ping_data")
        return (type(event).__name__,) + tuple(repr(getattr(event, name, None)) for name in names)

    def outcome(self, conn: Any, chunks: List[bytes]) -> Any:
        events: List[Any] = []
        error = None
        for chunk in chunks:
            try:
                events += [self.describe(e) for e in conn.receive_data(chunk)]
            except Exception as e:
                error = (type(e), getattr(e, "error_code", None))
                break
        streams = {sid: (s.state_machine.state, s.inbound_flow_control_window) for sid, s in conn.streams.items()
                   if not s.closed}
        return events, error, conn.data_to_send(), streams, conn.highest_inbound_stream_id

    def compare(self, data: bytes, maxStreams: Optional[int] = None, step: int = 1, direct: bool = True) -> None:
        """
        The client's preface (its own chunk, then C{data}), C{data} whole,
        cut in two at every C{step}-th position, and byte by byte; and the
        preface and C{data} in one chunk.  With C{direct}, C{data} must
        have taken the direct path at least once.
        """
        cuts = [[data], [data[i:i + 1] for i in range(len(data))]]
        cuts += [[data[:i], data[i:]] for i in range(1, len(data), step)]
        taken: List[int] = []
        for chunks in [[self.preface + data]] + [[self.preface] + c for c in cuts]:
            ours, theirs = self.connections(maxStreams)
            requestHead = ours._requestHead

            def counted(*args: Any, requestHead: Any = requestHead) -> Any:
                taken.append(args[0])
                return requestHead(*args)

            ours._requestHead = counted
            self.assertEqual(self.outcome(ours, chunks), self.outcome(theirs, chunks), [len(c) for c in chunks])
        self.assertEqual(bool(taken), direct)

    def client(self) -> Any:
        client = H2Connection(H2Configuration(client_side=True, header_encoding=None, validate_outbound_headers=False,
                                              normalize_outbound_headers=False))
        client.initiate_connection()
        self.preface = client.data_to_send()
        return client

    def head(self, path: bytes) -> List[Tuple[bytes, bytes]]:
        return [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"a.test"), (b":path", path),
                (b"user-agent", b"test")]

    def test_requests(self) -> None:
        """
        Request heads with and without END_STREAM, a body, a block cut
        into CONTINUATION frames, priority, padding, window updates, a
        ping and a reset, in one stream of bytes.
        """
        client = self.client()
        client.send_headers(1, self.head(b"/a"), end_stream=True)
        client.send_headers(3, self.head(b"/b"))
        client.send_data(3, b"body", end_stream=True)
        client.send_headers(5, self.head(b"/c"), end_stream=True, priority_weight=20)
        client.send_headers(7, self.head(b"/d"), end_stream=True)
        client.increment_flow_control_window(1000)
        client.ping(b"12345678")
        client.send_headers(9, self.head(b"/e"))
        client.send_data(9, b"x", pad_length=3)
        client.reset_stream(9)
        client.send_headers(11, self.head(b"/f"), end_stream=True)
        data = client.data_to_send()
        # A block over one frame, by hand: HEADERS without END_HEADERS,
        # then a CONTINUATION.
        block = hpack.Encoder().encode(self.head(b"/g"))
        half = len(block) // 2
        data += (HeadersFrame(13, data=block[:half], flags=["END_STREAM"]).serialize()
                 + ContinuationFrame(13, data=block[half:], flags=["END_HEADERS"]).serialize())
        client.send_headers(15, self.head(b"/h"), end_stream=True)
        # Trailers, and trailers without END_STREAM (refused).
        client.send_headers(17, self.head(b"/t"))
        client.send_data(17, b"abc")
        client.send_headers(17, [(b"x-checksum", b"1")], end_stream=True)
        data += client.data_to_send()
        self.compare(data)
        client = self.client()
        client.send_headers(1, self.head(b"/u"))
        tail = client.data_to_send() + HeadersFrame(1, data=hpack.Encoder().encode([(b"x-t", b"1")]),
                                                    flags=["END_HEADERS"]).serialize()
        self.compare(tail, step=3)
        # Each kind of request head first, and after a direct one.
        block = hpack.Encoder().encode(self.head(b"/i"))
        first = HeadersFrame(1, data=block, flags=["END_HEADERS", "END_STREAM"]).serialize()
        for frame, direct in ((HeadersFrame(3, data=block, flags=["END_HEADERS", "PADDED"], pad_length=4), False),
                              (HeadersFrame(3, data=block, flags=["END_HEADERS", "PRIORITY", "END_STREAM"],
                                            stream_weight=5), False),
                              (HeadersFrame(3, data=block, flags=["END_STREAM"]), False),
                              # (refused by h2's own stream set-up, as h2 would)
                              (HeadersFrame(2, data=block, flags=["END_HEADERS"]), True),
                              # Other frame types with the same flags bits.
                              (ContinuationFrame(3, data=block, flags=["END_HEADERS"]), False),
                              (ExtensionFrame(0xB, 3, flag_byte=0x5, body=block), False)):
            self.compare(frame.serialize(), step=5, direct=direct)
            self.compare(first + frame.serialize(), step=5)

    def test_errors(self) -> None:
        """
        Request heads h2 refuses are refused alike: a stream id going
        backwards, an even one, a block HPACK cannot decode, a head over
        the stream limit when one is set.
        """
        client = self.client()
        client.send_headers(5, self.head(b"/a"), end_stream=True)
        start = client.data_to_send()
        good = hpack.Encoder().encode(self.head(b"/b"))
        for sid, block in ((3, good), (5, good), (4, good), (7, b"\xff\xff\xff\xff"), (7, b"\x8f")):
            frame = HeadersFrame(sid, data=block, flags=["END_HEADERS", "END_STREAM"]).serialize()
            self.compare(start + frame, step=7)
        # Over the largest frame the connection takes.
        frame = HeadersFrame(7, data=b"\x00" * 16385, flags=["END_HEADERS"]).serialize()
        self.compare(start + frame, step=4001)
        client = self.client()
        for sid in (1, 3, 5):
            client.send_headers(sid, self.head(b"/x"))
        self.compare(client.data_to_send(), maxStreams=2, step=5)

    def test_closedStreamsForgotten(self) -> None:
        """
        With no stream limit, the streams that closed are forgotten from
        time to time (h2 forgets them at every new stream): the table stays
        bounded by the open ones.
        """
        ours, _ = self.connections()
        client = self.client()
        ours.receive_data(self.preface)
        for sid in range(1, 2000, 2):
            client.send_headers(sid, self.head(b"/"), end_stream=True)
            ours.receive_data(client.data_to_send())
            ours.send_headers(sid, [(b":status", b"204")], end_stream=True)
            ours.data_to_send()
            self.assertLessEqual(len(ours.streams), 64)
        self.assertEqual(ours.highest_inbound_stream_id, 1999)


class InformationalTests(SynchronousTestCase):
    def test_asH2(self) -> None:
        """
        L{_informational} answers as h2's C{is_informational_response} for
        byte header lists.
        """
        from h2.utilities import is_informational_response

        from txproxy.h2._server import _informational

        cases = [
            [],
            [(b":status", b"100")],
            [(b":status", b"200")],
            [(b":method", b"GET"), (b":status", b"103")],
            [(b":method", b"GET"), (b"a", b"b"), (b":status", b"103")],
            [(b"a", b"b")],
            [(b":status", b"")],
            [(b":path", b"/"), (b":method", b"GET")],
        ]
        for headers in cases:
            self.assertEqual(_informational(headers), is_informational_response(headers), headers)


class InternalsTests(SynchronousTestCase):
    """
    The library internals that L{txproxy.h2._server} relies on for speed.
    """

    def test_dataToSendBuffer(self) -> None:
        """
        L{H2ServerConnection.flush} looks at C{H2Connection._data_to_send}
        before calling C{data_to_send()}: it is empty (false) when nothing
        is queued, non-empty when something is.
        """
        conn = H2Connection(H2Configuration(client_side=False))
        self.assertFalse(conn._data_to_send)
        conn.initiate_connection()
        self.assertTrue(conn._data_to_send)
        data = conn.data_to_send()
        self.assertTrue(data)
        self.assertFalse(conn._data_to_send)

    def test_hpackLoggersQuiet(self) -> None:
        """
        HPACK's module loggers are replaced by ones whose C{debug} takes
        any arguments and does nothing, and which forward the rest.
        """
        for module in (hpack.hpack, hpack.table):
            log = module.log
            self.assertIsInstance(log, _NoDebug)
            self.assertEqual(log.debug("Adding %s=%s, %s, %s", b"a", b"b", False, True), "")
            self.assertEqual(log.name, module.__name__)
        encoder = hpack.Encoder()
        self.assertEqual(hpack.Decoder().decode(encoder.encode([(b"a", b"b")]), raw=True), [(b"a", b"b")])


    def serverWithRequest(self, config: Any) -> Any:
        """
        A L{_Connection} with C{config} that received a client's preface
        and a GET on stream 1 (END_STREAM), and that client (C{h2}'s).
        """
        server = _Connection(config)
        client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        client.initiate_connection()
        client.send_headers(1, [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a"),
                                (b":path", b"/")], end_stream=True)
        server.initiate_connection()
        server.receive_data(client.data_to_send())
        return server, client

    def test_openConnectionInputsChangeNothing(self) -> None:
        """
        L{txproxy.h2._server._Connection} skips the connection state
        machine for RECV_HEADERS, SEND_HEADERS and SEND_DATA in
        C{SERVER_OPEN}: in C{h2}'s table each leads back there, with no
        event; in every other state the machine is asked, and an input it
        refuses is still refused.
        """
        from h2.connection import ConnectionInputs, ConnectionState, H2ConnectionStateMachine

        from txproxy.h2._server import _OPEN

        self.assertIs(_OPEN, ConnectionState.SERVER_OPEN)
        for input_ in (ConnectionInputs.RECV_HEADERS, ConnectionInputs.SEND_HEADERS, ConnectionInputs.SEND_DATA):
            self.assertEqual(H2ConnectionStateMachine._transitions[(_OPEN, input_)], (None, _OPEN))
        server, _ = self.serverWithRequest(H2Configuration(**SERVER_CONFIG))
        self.assertIn(1, server.streams)
        server.close_connection()
        self.assertIs(server.state_machine.state, ConnectionState.CLOSED)
        self.assertRaises(ProtocolError, server.send_headers, 1, [(b":status", b"200")])
        self.assertRaises(ProtocolError, server.send_data, 1, b"x")

    def test_streamSendHeadersInternals(self) -> None:
        """
        L{txproxy.h2._server._LenientStream.send_headers} rewrites C{h2}'s
        with its helpers: they exist, and a server stream sends an
        informational head, the response head and trailers through it (the
        frames decoded by a client).
        """
        for name in ("_build_headers_frames", "_build_hdr_validation_flags"):
            self.assertTrue(callable(getattr(LibStream, name)))
        server, client = self.serverWithRequest(H2Configuration(client_side=False, header_encoding=None))
        self.assertFalse(server.streams[1].request_method)
        server.send_headers(1, [(b":status", b"103"), (b"link", b"</a>")])
        self.assertRaises(ProtocolError, server.send_headers, 1, [(b":status", b"100")], end_stream=True)
        server.send_headers(1, [(b":status", b"200"), (b"content-type", b"text/plain")])
        server.send_data(1, b"hi")
        server.send_headers(1, [(b"grpc-status", b"0")], end_stream=True)
        events = client.receive_data(server.data_to_send())
        heads = [e.headers for e in events if hasattr(e, "headers")]
        self.assertEqual(heads, [[(b":status", b"103"), (b"link", b"</a>")],
                                 [(b":status", b"200"), (b"content-type", b"text/plain")],
                                 [(b"grpc-status", b"0")]])
        self.assertIn(StreamEnded, [type(e) for e in events])
