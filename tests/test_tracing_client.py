"""
Tests for L{txproxy.tracing._client}: the response reader (fed at every
split) and the persistent OTLP/HTTP poster on a fake endpoint and clock.
"""

from __future__ import annotations

from typing import Any, List

from twisted.internet import defer
from twisted.internet.error import ConnectError, ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from txproxy.tracing import PostFailed, tracingFor
from txproxy.tracing._client import (
    BACKOFF_MAX,
    BACKOFF_MIN,
    BadResponse,
    HTTPPoster,
    ResponseReader,
)


def _feedSplit(test: SynchronousTestCase, response: bytes, status: int, keepAlive: bool) -> None:
    """
    C{response} read whole and split at every position gives the same
    answer, and completes exactly at its last byte.
    """
    for i in range(len(response) + 1):
        reader = ResponseReader()
        first = reader.feed(response[:i])
        test.assertEqual(first, i == len(response) and bool(response), (i, response))
        if not first:
            test.assertTrue(reader.feed(response[i:]), (i, response))
        test.assertEqual((reader.status, reader.keepAlive, reader.extra), (status, keepAlive, b""))


class ResponseReaderTests(SynchronousTestCase):
    """
    L{ResponseReader}: the end of a response, by its framing.
    """

    def test_contentLength(self) -> None:
        _feedSplit(self, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", 200, True)

    def test_emptyBody(self) -> None:
        _feedSplit(self, b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", 200, True)

    def test_chunked(self) -> None:
        _feedSplit(
            self,
            b"HTTP/1.1 400 Bad\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\nA\r\n0123456789\r\n0\r\nT: v\r\n\r\n",
            400,
            True,
        )

    def test_interimSkipped(self) -> None:
        _feedSplit(self, b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\n{}", 202, True)

    def test_noBody(self) -> None:
        _feedSplit(self, b"HTTP/1.1 204 No Content\r\n\r\n", 204, True)

    def test_connectionClose(self) -> None:
        _feedSplit(self, b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx", 200, False)
        _feedSplit(self, b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx", 200, False)
        _feedSplit(self, b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 1\r\n\r\nx", 200, True)

    def test_untilClose(self) -> None:
        """
        Without framing the body ends with the connection, which is not
        reused.
        """
        reader = ResponseReader()
        self.assertFalse(reader.feed(b"HTTP/1.1 200 OK\r\n\r\nsome body"))
        self.assertFalse(reader.feed(b"more"))
        self.assertTrue(reader.closed())
        self.assertEqual((reader.status, reader.keepAlive), (200, False))

    def test_closedEarly(self) -> None:
        reader = ResponseReader()
        self.assertFalse(reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc"))
        self.assertFalse(reader.closed())

    def test_extra(self) -> None:
        reader = ResponseReader()
        self.assertTrue(reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxJUNK"))
        self.assertEqual(reader.extra, b"JUNK")

    def test_malformed(self) -> None:
        for response in [
            b"FOO 200 OK\r\n\r\n",
            b"HTTP/1.1 2x0 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nNoColon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nxy\r\n",
        ]:
            self.assertRaises(BadResponse, ResponseReader().feed, response)

    def test_headBound(self) -> None:
        reader = ResponseReader()
        reader.feed(b"HTTP/1.1 200 OK\r\n")
        self.assertRaises(BadResponse, reader.feed, b"X: " + b"y" * 70000)


class _Endpoint:
    """
    A fake client endpoint: each connect is a Deferred the test fires.
    """

    def __init__(self) -> None:
        self.attempts: List[defer.Deferred] = []
        self.transports: List[StringTransport] = []
        self.protocols: List[Any] = []

    def connect(self, factory: Any) -> "defer.Deferred[Any]":
        d: defer.Deferred[Any] = defer.Deferred()
        self.attempts.append(d)
        self.factory = factory
        return d

    def succeed(self) -> Any:
        proto = self.factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        self.transports.append(transport)
        self.protocols.append(proto)
        self.attempts[-1].callback(proto)
        return proto, transport


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


class HTTPPosterTests(SynchronousTestCase):
    """
    L{HTTPPoster}: one kept-alive connection, one request at a time.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.endpoint = _Endpoint()
        self.post = HTTPPoster(self.clock, "http://collector.test:4318/v1/traces?x=1", endpoint=self.endpoint)

    def test_request(self) -> None:
        """
        The request is a POST of the body with its length and content type,
        written as the head and the body; a 2xx answer fires the Deferred.
        """
        d = self.post(b"BODY")
        self.assertNoResult(d)
        proto, transport = self.endpoint.succeed()
        self.assertEqual(
            transport.value(),
            b"POST /v1/traces?x=1 HTTP/1.1\r\nHost: collector.test:4318\r\nContent-Type: application/x-protobuf\r\n"
            b"User-Agent: txproxy/" + __import__("txproxy").__version__.encode() + b"\r\n"
            b"Content-Length: 4\r\n\r\nBODY",
        )
        proto.dataReceived(OK)
        self.assertEqual(self.successResultOf(d), 200)

    def test_keptAlive(self) -> None:
        """
        The next batch goes on the same connection.
        """
        d = self.post(b"a")
        proto, transport = self.endpoint.succeed()
        proto.dataReceived(OK)
        self.successResultOf(d)
        transport.clear()
        d = self.post(b"bb")
        self.assertEqual(len(self.endpoint.attempts), 1)
        self.assertTrue(transport.value().endswith(b"Content-Length: 2\r\n\r\nbb"))
        proto.dataReceived(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        self.assertNoResult(d)
        proto.dataReceived(b"0\r\n\r\n")
        self.successResultOf(d)
        self.assertEqual(self.post.connections, 1)

    def test_errorStatus(self) -> None:
        """
        A status other than 2xx fails the post; the connection stays.
        """
        d = self.post(b"a")
        proto, transport = self.endpoint.succeed()
        proto.dataReceived(b"HTTP/1.1 503 Busy\r\nContent-Length: 4\r\n\r\nbusy")
        self.failureResultOf(d, PostFailed)
        self.assertFalse(transport.disconnecting)
        self.post(b"b")
        self.assertEqual(len(self.endpoint.attempts), 1)

    def test_connectionCloseReconnects(self) -> None:
        """
        A response saying C{Connection: close} ends the connection; the next
        batch opens another.
        """
        d = self.post(b"a")
        proto, transport = self.endpoint.succeed()
        proto.dataReceived(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
        self.successResultOf(d)
        self.assertTrue(transport.disconnected or transport.disconnecting)
        proto.connectionLost(Failure(ConnectionDone()))
        d = self.post(b"b")
        self.assertEqual(len(self.endpoint.attempts), 2)
        proto2, _ = self.endpoint.succeed()
        proto2.dataReceived(OK)
        self.successResultOf(d)

    def test_untilClose(self) -> None:
        d = self.post(b"a")
        proto, transport = self.endpoint.succeed()
        proto.dataReceived(b"HTTP/1.1 200 OK\r\n\r\nwhatever")
        self.assertNoResult(d)
        proto.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(d)

    def test_lostMidResponse(self) -> None:
        d = self.post(b"a")
        proto, transport = self.endpoint.succeed()
        proto.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab")
        proto.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(d, ConnectionDone)

    def test_malformedDropsConnection(self) -> None:
        d = self.post(b"a")
        proto, transport = self.endpoint.succeed()
        proto.dataReceived(b"nonsense\r\n\r\n")
        self.failureResultOf(d, BadResponse)
        self.assertTrue(transport.disconnected)

    def test_unsolicitedBytes(self) -> None:
        d = self.post(b"a")
        proto, transport = self.endpoint.succeed()
        proto.dataReceived(OK)
        self.successResultOf(d)
        proto.dataReceived(b"HTTP/1.1 200 OK\r\n")
        self.assertTrue(transport.disconnected)

    def test_cancelDropsConnection(self) -> None:
        """
        A cancelled post (the exporter's timeout) closes the connection; the
        next one reconnects.
        """
        d = self.post(b"a")
        proto, transport = self.endpoint.succeed()
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertTrue(transport.disconnected)
        proto.connectionLost(Failure(ConnectionDone()))
        self.post(b"b")
        self.assertEqual(len(self.endpoint.attempts), 2)

    def test_cancelWhileConnecting(self) -> None:
        d = self.post(b"a")
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertTrue(self.endpoint.attempts[0].called)

    def test_backoff(self) -> None:
        """
        A failed connection makes posts fail at once until the backoff
        (doubling, bounded) has passed; a connection resets it.
        """
        d = self.post(b"a")
        self.endpoint.attempts[-1].errback(ConnectError(string="refused"))
        self.failureResultOf(d, ConnectError)
        self.failureResultOf(self.post(b"b"), ConnectError)
        self.assertEqual(len(self.endpoint.attempts), 1)
        self.clock.advance(BACKOFF_MIN)
        d = self.post(b"c")
        self.assertEqual(len(self.endpoint.attempts), 2)
        self.endpoint.attempts[-1].errback(ConnectError(string="refused"))
        self.failureResultOf(d, ConnectError)
        self.clock.advance(BACKOFF_MIN)
        self.failureResultOf(self.post(b"d"), ConnectError)
        self.clock.advance(BACKOFF_MIN)
        d = self.post(b"e")
        self.assertEqual(len(self.endpoint.attempts), 3)
        for _ in range(20):
            self.endpoint.attempts[-1].errback(ConnectError(string="refused"))
            self.failureResultOf(d, ConnectError)
            self.clock.advance(BACKOFF_MAX)
            d = self.post(b"f")
        self.assertEqual(self.post._backoff, BACKOFF_MAX)
        proto, _ = self.endpoint.succeed()
        self.assertEqual(self.post._backoff, 0.0)
        proto.dataReceived(OK)
        self.successResultOf(d)

    def test_close(self) -> None:
        d = self.post(b"a")
        proto, transport = self.endpoint.succeed()
        proto.dataReceived(OK)
        self.successResultOf(d)
        self.post.close()
        self.assertTrue(transport.disconnecting)
        proto.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(self.post(b"b"), ConnectError)

    def test_badURL(self) -> None:
        self.assertRaises(ValueError, HTTPPoster, self.clock, "https://x/v1/traces")
        self.assertRaises(ValueError, HTTPPoster, self.clock, "http:///v1/traces")


class ServiceChoiceTests(SynchronousTestCase):
    """
    L{tracingFor} uses L{HTTPPoster} for C{http://} and Twisted's Agent
    for C{https://}.
    """

    def _service(self, url: str) -> Any:
        class Config:
            traceOtlp = url
            traceSample = 1.0

        return tracingFor(Config(), Clock())

    def test_http(self) -> None:
        self.assertIsInstance(self._service("http://127.0.0.1:4318/v1/traces").exporter.post, HTTPPoster)

    def test_https(self) -> None:
        post = self._service("https://127.0.0.1:4318/v1/traces").exporter.post
        self.assertNotIsInstance(post, HTTPPoster)
        self.assertTrue(hasattr(post, "pool"))
