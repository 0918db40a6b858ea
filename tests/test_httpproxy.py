# -*- test-case-name: tests.test_httpproxy -*-
"""
Tests for the HTTP proxy core (L{txproxy.httpproxy}) through the forward
proxy: absolute-URI requests, bodies, keep-alive, the upstream pool,
errors and hooks, on fake transports and a fake clock.
"""

from __future__ import annotations

import errno
import re
import socket
from typing import Any, List, Tuple

from twisted.internet import defer, error
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.trial.unittest import SynchronousTestCase

from txproxy.forward import ForwardProxyProtocol
from txproxy.http import RequestHead, ResponseHead, replaceHeader
from txproxy.httpproxy import HTTPRequest
from txproxy.testing import FakeConnector, FakeTransport, connect, forwardFactory, listenerConfig
from txproxy.upstream import closedUnseen, keepAliveLimit

GET = b"GET http://origin.test/path?q=1 HTTP/1.1\r\nHost: origin.test\r\nProxy-Connection: keep-alive\r\nUser-Agent: t\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello"


def _heads(data: bytes) -> List[bytes]:
    return re.findall(rb"HTTP/1\.1 \d{3} ", data)


class ProxyTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.connector = FakeConnector({"origin.test": ["192.0.2.20"]})
        self.records: List[Any] = []

    def factory(self, **options: Any) -> Any:
        protocol = options.pop("protocol", None)
        f = forwardFactory(self.connector, self.clock, protocol=protocol, **options)
        f.accessLog = self
        return f

    def log(self, record: Any) -> None:
        self.records.append(record)

    def open(self, factory: Any = None) -> Tuple[Any, FakeTransport]:
        return connect(factory or self.factory())

    def request(self, data: bytes = GET, factory: Any = None) -> Tuple[Any, FakeTransport, FakeTransport]:
        proto, client = self.open(factory)
        proto.dataReceived(data)
        upstream = self.connector.last.succeed()
        return proto, client, upstream

    def respond(self, data: bytes) -> None:
        self.connector.last.protocol.dataReceived(data)


class ForwardingTests(ProxyTestCase):
    def test_requestRewrittenForOrigin(self) -> None:
        """
        The upstream receives an origin-form request line, HTTP/1.1, the
        Host of the URI, a Via, and no hop-by-hop or proxy headers.
        """
        proto, client, upstream = self.request(
            b"GET http://origin.test:8080/a?b HTTP/1.0\r\nHost: wrong.test\r\nProxy-Connection: keep-alive\r\n"
            b"Connection: x-hop\r\nX-Hop: 1\r\nKeep-Alive: 5\r\nProxy-Authorization: Basic eDp5\r\nAccept: */*\r\n\r\n"
        )
        self.assertEqual((self.connector.last.host, self.connector.last.port), ("192.0.2.20", 8080))
        sent = upstream.value()
        self.assertTrue(sent.startswith(b"GET /a?b HTTP/1.1\r\n"), sent)
        self.assertIn(b"Host: origin.test:8080\r\n", sent)
        self.assertIn(b"Via: 1.0 txproxy\r\n", sent)
        self.assertIn(b"Accept: */*\r\n", sent)
        for gone in [b"wrong.test", b"Proxy-Connection", b"X-Hop", b"Keep-Alive", b"Proxy-Authorization", b"Connection:"]:
            self.assertNotIn(gone, sent)

    def test_xForwardedForOptional(self) -> None:
        """
        With --x-forwarded-for on, the client address is sent in
        X-Forwarded-For, extending the received chain only from
        --trusted-proxies; by default nothing is added.
        """
        proto, client, upstream = self.request()
        self.assertNotIn(b"X-Forwarded-For", upstream.value())
        forged = GET.replace(b"User-Agent", b"X-Forwarded-For: 10.9.9.9\r\nUser-Agent")
        proto, client, upstream = self.request(forged, self.factory(x_forwarded_for="on"))
        self.assertIn(b"X-Forwarded-For: 127.0.0.1\r\n", upstream.value())
        proto, client, upstream = self.request(forged, self.factory(x_forwarded_for="on", trusted_proxies="127.0.0.0/8"))
        self.assertIn(b"X-Forwarded-For: 10.9.9.9, 127.0.0.1\r\n", upstream.value())

    def test_responseRelayed(self) -> None:
        """
        The response comes back with Via added and its body intact, and is
        logged with status and bytes.
        """
        proto, client, upstream = self.request()
        self.respond(OK)
        out = client.value()
        self.assertTrue(out.startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertIn(b"Via: 1.1 txproxy\r\n", out)
        self.assertTrue(out.endswith(b"\r\n\r\nhello"))
        (record,) = self.records
        self.assertEqual((record.status, record.method, record.bytesDown), (200, "GET", 5))
        self.assertEqual(record.target, "http://origin.test:80/path?q=1")

    def test_keepAliveReusesUpstream(self) -> None:
        """
        A second request on the same client connection reuses the pooled
        upstream connection: no new connection attempt.
        """
        proto, client, upstream = self.request()
        self.respond(OK)
        upstream.clear()
        proto.dataReceived(GET)
        self.assertEqual(len(self.connector.attempts), 1)
        self.assertTrue(upstream.value().startswith(b"GET /path?q=1 HTTP/1.1"))
        self.respond(OK)
        self.assertEqual(len(_heads(client.value())), 2)
        self.assertFalse(client.disconnecting)

    def test_upstreamSenderKeptForTheConnection(self) -> None:
        """
        What writes to an upstream connection is made once, by the first
        exchange on it, and the next exchange on the pooled connection
        uses the same one (a new one per request, kept on the long-lived
        client protocol, is garbage a generational collector must copy).
        """
        proto, client, upstream = self.request()
        pooled = proto._upstream
        sender = pooled.sender
        self.assertIsNotNone(sender)
        self.assertIs(proto._toUpstream, sender)
        self.respond(OK)
        proto.dataReceived(GET)
        self.assertIs(proto._upstream, pooled)
        self.assertIs(pooled.sender, sender)
        self.assertIs(proto._toUpstream, sender)
        self.respond(OK)
        self.assertEqual(len(_heads(client.value())), 2)

    def test_poolSharedAcrossClients(self) -> None:
        """
        Another client connection to the same origin reuses the idle
        upstream connection.
        """
        factory = self.factory()
        proto, client, upstream = self.request(factory=factory)
        self.respond(OK)
        other, otherClient = self.open(factory)
        other.dataReceived(GET)
        self.assertEqual(len(self.connector.attempts), 1)
        self.respond(OK)
        self.assertIn(b"hello", otherClient.value())

    def test_pipelinedAnsweredInOrder(self) -> None:
        """
        Pipelined requests are forwarded one at a time and answered in order.
        """
        proto, client = self.open()
        proto.dataReceived(GET.replace(b"/path", b"/one") + GET.replace(b"/path", b"/two"))
        upstream = self.connector.last.succeed()
        self.assertIn(b"/one", upstream.value())
        self.assertNotIn(b"/two", upstream.value())
        self.respond(OK.replace(b"hello", b"first"))
        self.assertIn(b"/two", upstream.value())
        self.respond(OK.replace(b"hello", b"secnd"))
        out = client.value()
        self.assertLess(out.index(b"first"), out.index(b"secnd"))

    def test_clientConnectionClose(self) -> None:
        """
        Connection: close from the client: the response says close and the
        connection closes after it; the upstream stays pooled.
        """
        factory = self.factory()
        proto, client, upstream = self.request(GET.replace(b"User-Agent", b"Connection: close\r\nUser-Agent"), factory)
        self.respond(OK)
        self.assertIn(b"Connection: close\r\n", client.value())
        self.assertTrue(client.disconnecting)
        self.assertEqual(len(factory.pool), 1)

    def test_upstreamConnectionCloseNotPooled(self) -> None:
        """
        An upstream that says Connection: close is not reused.
        """
        factory = self.factory()
        proto, client, upstream = self.request(factory=factory)
        self.respond(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
        self.assertTrue(upstream.disconnecting)
        self.assertEqual(len(factory.pool), 0)
        self.assertNotIn(b"Connection: close", client.value())

    def test_http10ClientKeepAlive(self) -> None:
        """
        An HTTP/1.0 client asking for keep-alive gets Connection: keep-alive;
        one that does not is closed after the response.
        """
        proto, client, upstream = self.request(b"GET http://origin.test/ HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        self.respond(OK)
        self.assertIn(b"Connection: keep-alive\r\n", client.value())
        self.assertFalse(client.disconnecting)
        proto, client, upstream = self.request(b"GET http://origin.test/ HTTP/1.0\r\n\r\n")
        self.respond(OK)
        self.assertTrue(client.disconnecting)


class BodyTests(ProxyTestCase):
    def test_requestBodyContentLength(self) -> None:
        """
        A Content-Length request body is streamed upstream as it arrives,
        including bytes that came with the head.
        """
        proto, client = self.open()
        proto.dataReceived(b"POST http://origin.test/up HTTP/1.1\r\nHost: origin.test\r\nContent-Length: 10\r\n\r\n0123")
        upstream = self.connector.last.succeed()
        proto.dataReceived(b"456789")
        sent = upstream.value()
        self.assertIn(b"Content-Length: 10\r\n", sent)
        self.assertTrue(sent.endswith(b"\r\n\r\n0123456789"))
        self.respond(OK)
        self.assertEqual(self.records[0].bytesUp, 10)

    def test_clientResumedWhenBodySentWhilePaused(self) -> None:
        """
        The upstream's full write buffer paused the client; the body's last
        bytes still went out: once the request is sent and the client no
        longer feeds the upstream, reading from the client resumes (else a
        keep-alive client's next request would wait until a timeout).
        """
        proto, client = self.open()
        proto.dataReceived(b"POST http://origin.test/up HTTP/1.1\r\nHost: origin.test\r\nContent-Length: 10\r\n\r\n01")
        upstream = self.connector.last.succeed()
        self.assertIs(upstream.producer, client)
        upstream.producer.pauseProducing()
        self.assertEqual(client.producerState, "paused")
        proto.dataReceived(b"23456789")
        self.assertIsNone(upstream.producer)
        self.assertEqual(client.producerState, "producing")
        self.respond(OK)
        proto.dataReceived(GET)
        self.assertEqual(len(self.connector.attempts), 1)
        self.assertIn(b"\r\n\r\n0123456789GET /", upstream.value())

    def test_contentLengthNormalized(self) -> None:
        """
        A repeated or listed Content-Length that framing accepted travels on
        as one normalized value, in both directions.
        """
        proto, client = self.open()
        proto.dataReceived(b"POST http://origin.test/ HTTP/1.1\r\nHost: o\r\nContent-Length: 3, 3\r\n"
                           b"Content-Length: 3\r\n\r\nabc")
        upstream = self.connector.last.succeed()
        self.assertEqual(upstream.value().count(b"Content-Length"), 1)
        self.assertIn(b"Content-Length: 3\r\n", upstream.value())
        self.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok")
        self.assertEqual(client.value().count(b"Content-Length"), 1)
        self.assertIn(b"Content-Length: 2\r\n", client.value())

    def test_requestBodyChunked(self) -> None:
        """
        A chunked request body is relayed verbatim, trailers included, and
        the next request after it is recognised.
        """
        body = b"5\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n"
        proto, client = self.open()
        proto.dataReceived(b"POST http://origin.test/ HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked\r\n\r\n")
        upstream = self.connector.last.succeed()
        for i in range(len(body)):
            proto.dataReceived(body[i : i + 1])
        self.assertIn(b"Transfer-Encoding: chunked\r\n", upstream.value())
        self.assertTrue(upstream.value().endswith(b"\r\n\r\n" + body))
        proto.dataReceived(GET)
        self.respond(OK)
        self.assertIn(b"GET /path", upstream.value())

    def test_chunkedResponseToHTTP11(self) -> None:
        """
        A chunked response is relayed as chunked to an HTTP/1.1 client,
        across several segments, and the upstream is pooled after the last
        chunk.
        """
        factory = self.factory()
        proto, client, upstream = self.request(factory=factory)
        self.respond(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        self.assertEqual(len(factory.pool), 0)
        self.respond(b"0\r\n\r\n")
        out = client.value()
        self.assertIn(b"Transfer-Encoding: chunked\r\n", out)
        self.assertTrue(out.endswith(b"3\r\nabc\r\n0\r\n\r\n"))
        self.assertEqual(len(factory.pool), 1)

    def test_chunkedResponseToHTTP10(self) -> None:
        """
        An HTTP/1.0 client gets a chunked response decoded and
        close-delimited.
        """
        proto, client, upstream = self.request(b"GET http://origin.test/ HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        self.respond(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
        out = client.value()
        self.assertNotIn(b"chunked", out)
        self.assertTrue(out.endswith(b"\r\n\r\nabc"))
        self.assertIn(b"Connection: close", out)
        self.assertTrue(client.disconnecting)

    def test_closeDelimitedResponse(self) -> None:
        """
        A response without length ends when the upstream closes; the client
        connection closes after it.
        """
        proto, client, upstream = self.request()
        self.respond(b"HTTP/1.1 200 OK\r\n\r\npart1")
        self.respond(b"part2")
        self.assertFalse(client.disconnecting)
        upstream.peerClosed()
        self.assertTrue(client.value().endswith(b"part1part2"))
        self.assertTrue(client.disconnecting)
        self.assertEqual(self.records[0].status, 200)

    def test_noBodyResponses(self) -> None:
        """
        HEAD, 204 and 304 responses have no body, whatever their headers say.
        """
        factory = self.factory()
        proto, client, upstream = self.request(GET.replace(b"GET", b"HEAD"), factory)
        self.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
        self.assertIn(b"Content-Length: 100", client.value())
        self.assertEqual(len(factory.pool), 1)
        client.clear()
        proto.dataReceived(GET)
        self.respond(b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n")
        self.assertTrue(client.value().startswith(b"HTTP/1.1 304"))
        self.assertFalse(client.disconnecting)

    def test_continueForwarded(self) -> None:
        """
        Expect: 100-continue goes upstream; the upstream's 100 Continue comes
        back before the final response.
        """
        proto, client = self.open()
        proto.dataReceived(b"PUT http://origin.test/x HTTP/1.1\r\nHost: o\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
        upstream = self.connector.last.succeed()
        self.assertIn(b"Expect: 100-continue", upstream.value())
        self.respond(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.assertEqual(client.value(), b"HTTP/1.1 100 Continue\r\n\r\n")
        proto.dataReceived(b"abc")
        self.respond(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
        self.assertIn(b"HTTP/1.1 201 Created", client.value())

    def test_responseCutMidBody(self) -> None:
        """
        An upstream that closes mid-body makes the proxy close the client
        connection instead of inventing an end.
        """
        proto, client, upstream = self.request()
        self.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this")
        upstream.peerClosed()
        self.assertTrue(client.disconnecting)
        self.assertTrue(client.value().endswith(b"only this"))

    def test_upgradeBecomesTunnel(self) -> None:
        """
        A WebSocket upgrade keeps its Upgrade/Connection headers upstream;
        after 101 the connection is relayed both ways.
        """
        proto, client = self.open()
        proto.dataReceived(b"GET http://origin.test/ws HTTP/1.1\r\nHost: o\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        upstream = self.connector.last.succeed()
        self.assertIn(b"Upgrade: websocket", upstream.value())
        self.assertIn(b"Connection: upgrade", upstream.value())
        self.respond(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nframe1")
        self.assertIn(b"101 Switching Protocols", client.value())
        self.assertTrue(client.value().endswith(b"frame1"))
        upstream.clear()
        proto.dataReceived(b"frame2")
        self.assertEqual(upstream.value(), b"frame2")
        self.assertIsNotNone(proto.relay)


class ErrorTests(ProxyTestCase):
    def assertStatus(self, client: FakeTransport, status: int) -> None:
        self.assertTrue(client.value().startswith(b"HTTP/1.1 %d " % status), client.value())

    def test_smuggling(self) -> None:
        """
        Ambiguous framing is 400 and never reaches an upstream.
        """
        for bad in [
            b"POST http://o/ HTTP/1.1\r\nHost: o\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST http://o/ HTTP/1.1\r\nHost: o\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            b"POST http://o/ HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"POST http://o/ HTTP/1.1\r\nHost: o\r\nContent-Length: -1\r\n\r\n",
            b"GET http://o/ HTTP/1.1\r\nHost : o\r\n\r\n",
            b"GET http://o/ HTTP/1.1\r\nHost: o\r\n folded\r\n\r\n",
        ]:
            proto, client = self.open()
            proto.dataReceived(bad)
            self.assertStatus(client, 400)
        self.assertEqual(self.connector.attempts, [])

    def test_badChunkInRequestBody(self) -> None:
        """
        A malformed chunk size in a request body is 400 and the upstream is
        dropped.
        """
        proto, client = self.open()
        proto.dataReceived(b"POST http://origin.test/ HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked\r\n\r\n")
        upstream = self.connector.last.succeed()
        proto.dataReceived(b"zz\r\n")
        self.assertStatus(client, 400)
        self.assertTrue(upstream.aborted)

    def test_originFormAndHttpsAre400(self) -> None:
        """
        An origin-form target or an https:// absolute URI is not something a
        forward proxy forwards: 400.
        """
        for bad in [b"GET / HTTP/1.1\r\nHost: o\r\n\r\n", b"GET https://o/ HTTP/1.1\r\nHost: o\r\n\r\n"]:
            proto, client = self.open()
            proto.dataReceived(bad)
            self.assertStatus(client, 400)

    def test_refusedIs502(self) -> None:
        """
        An origin refusing the connection is 502.
        """
        proto, client = self.open()
        proto.dataReceived(GET)
        self.connector.last.fail(error.ConnectionRefusedError())
        self.assertStatus(client, 502)

    def test_responseTimeoutIs504(self) -> None:
        """
        No response head within --response-timeout is 504 and the upstream
        is closed.
        """
        proto, client, upstream = self.request(factory=self.factory(response_timeout="5"))
        self.clock.advance(4.9)
        self.assertEqual(client.value(), b"")
        self.clock.advance(0.2)
        self.assertStatus(client, 504)
        self.assertTrue(upstream.disconnecting)

    def test_badResponseIs502(self) -> None:
        """
        A malformed response head is 502.
        """
        proto, client, upstream = self.request()
        self.respond(b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n")
        self.assertStatus(client, 502)

    def test_staleConnectionRetried(self) -> None:
        """
        A pooled connection closed by the server before answering is retried
        once on a fresh connection for an idempotent request.
        """
        proto, client, upstream = self.request()
        self.respond(OK)
        proto.dataReceived(GET)
        upstream.peerClosed()
        self.assertEqual(len(self.connector.attempts), 2)
        fresh = self.connector.last.succeed()
        self.assertIn(b"GET /path", fresh.value())
        self.respond(OK)
        self.assertEqual(len(_heads(client.value())), 2)

    def test_deniedDestination(self) -> None:
        """
        --deny-dest applies to absolute-URI requests, on the resolved address.
        """
        proto, client = self.open(self.factory(deny_dest="192.0.2.0/24"))
        proto.dataReceived(GET)
        self.assertStatus(client, 403)

    def test_deniedUnspecifiedDestination(self) -> None:
        """
        With loopback in --deny-dest, C{GET http://0:P/} (C{0} resolves to
        0.0.0.0, which reaches this host) and C{GET http://[::]:P/} are 403,
        nothing dialled.
        """
        self.connector.hosts["0"] = ["0.0.0.0"]
        for uri in [b"http://0:8080/", b"http://0.0.0.0:8080/", b"http://[::]:8080/"]:
            proto, client = self.open(self.factory(deny_dest=["127.0.0.0/8", "::1"]))
            proto.dataReceived(b"GET " + uri + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            self.assertStatus(client, 403)
        self.assertEqual(self.connector.attempts, [])

    def test_idleKeepAliveClosed(self) -> None:
        """
        A keep-alive connection with no new request is closed quietly after
        the keep-alive timeout (bounded by --idle-timeout).
        """
        proto, client, upstream = self.request(factory=self.factory(idle_timeout="20"))
        self.respond(OK)
        self.clock.advance(19)
        self.assertFalse(client.disconnecting)
        self.clock.advance(2)
        self.assertTrue(client.disconnecting)

    def test_keepAliveSecondHeadInPiecesTimesOut(self) -> None:
        """
        On a keep-alive connection, a next request head that arrives in
        pieces and stalls gets 408 after --header-timeout (the keep-alive
        timeout, longer, does not apply any more).
        """
        proto, client, upstream = self.request(factory=self.factory(header_timeout="5", idle_timeout="60"))
        self.respond(OK)
        client.clear()
        self.clock.advance(1)
        proto.dataReceived(b"GET http://origin.test/ HTTP/1.1\r\nHost: ori")
        self.clock.advance(4.9)
        self.assertEqual(client.value(), b"")
        self.clock.advance(0.2)
        self.assertStatus(client, 408)

    def test_keepAliveWholeSecondHeadWaitsForConnect(self) -> None:
        """
        A next request head that arrives whole on a keep-alive connection is
        bounded by the connect timeout while its upstream is dialled, not by
        the keep-alive or header timeouts.
        """
        factory = self.factory(header_timeout="2", idle_timeout="3", connect_timeout="10")
        proto, client, upstream = self.request(factory=factory)
        # (The upstream closes: the next request dials a new one.)
        self.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        client.clear()
        proto.dataReceived(GET)
        self.assertEqual(len(self.connector.attempts), 2)
        self.clock.advance(9.5)
        self.assertEqual(client.value(), b"")
        self.assertFalse(client.disconnecting)
        self.clock.advance(1)
        self.assertStatus(client, 504)

    def test_stalledBodyClosedByIdleTimeout(self) -> None:
        """
        A response body that stops flowing is cut after --idle-timeout.
        """
        proto, client, upstream = self.request(factory=self.factory(idle_timeout="8"))
        self.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nsome")
        self.clock.pump([1] * 7)
        self.assertFalse(client.disconnecting)
        self.clock.pump([1] * 4)
        self.assertTrue(client.disconnecting)
        self.assertTrue(upstream.aborted)


class HTTPHookTests(ProxyTestCase):
    def test_allowRequestFalseIs403(self) -> None:
        """
        allowRequest returning False answers 403 without dialling.
        """

        class Deny(ForwardProxyProtocol):
            def allowRequest(self, request: HTTPRequest) -> bool:
                return request.target.host != "origin.test"

        proto, client = self.open(self.factory(protocol=Deny))
        proto.dataReceived(GET)
        self.assertTrue(client.value().startswith(b"HTTP/1.1 403"))
        self.assertEqual(self.connector.attempts, [])

    def test_rewriteHeadsAndObserveBody(self) -> None:
        """
        rewriteRequest and rewriteResponse change what is sent; the body
        observer sees decoded bytes of a chunked response.
        """
        seen: List[bytes] = []

        class Rewrite(ForwardProxyProtocol):
            def rewriteRequest(self, request: HTTPRequest, head: RequestHead) -> RequestHead:
                return RequestHead(head.method, head.target, head.version, replaceHeader(head.headers, b"X-Added", b"1"))

            def rewriteResponse(self, request: HTTPRequest, head: ResponseHead) -> ResponseHead:
                return ResponseHead(head.version, head.status, head.reason, replaceHeader(head.headers, b"X-Seen", b"yes"))

            def responseBodyData(self, request: HTTPRequest, data: bytes) -> None:
                seen.append(data)

        proto, client, upstream = self.request(factory=self.factory(protocol=Rewrite))
        self.assertIn(b"X-Added: 1\r\n", upstream.value())
        self.respond(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
        self.assertIn(b"X-Seen: yes\r\n", client.value())
        self.assertEqual(b"".join(seen), b"abcde")


class MetricsTests(ProxyTestCase):
    def test_requestCountedAndTimed(self) -> None:
        """
        With metrics and no access log, a forwarded request is counted by
        method and status, and its connect and response-head times are
        observed (on the fake clock).
        """
        from prometheus_client.parser import text_string_to_metric_families

        from txproxy.metrics import Metrics

        factory = self.factory()
        factory.accessLog = None
        factory.metrics = metrics = Metrics()
        proto, client = self.open(factory)
        proto.dataReceived(GET)
        self.clock.advance(0.25)
        upstream = self.connector.last.succeed()
        self.clock.advance(0.5)
        self.respond(OK)
        families = {f.name: f for f in text_string_to_metric_families(metrics.exposition().decode())}
        requests = [s for s in families["txproxy_requests"].samples if s.name == "txproxy_requests_total"]
        self.assertEqual([(s.labels["method"], s.labels["code"], s.value) for s in requests], [("GET", "200", 1.0)])
        sums = {s.name: s.value for f in families.values() for s in f.samples if s.name.endswith("_sum")}
        self.assertIn(0.25, [v for k, v in sums.items() if "connect" in k])
        self.assertIn(0.5, [v for k, v in sums.items() if "head" in k or "response" in k])


class MaxForwardsTests(ProxyTestCase):
    def test_maxForwardsZeroAnsweredHere(self) -> None:
        """
        OPTIONS with Max-Forwards: 0 is answered by the proxy (200), never
        forwarded; a positive value is decremented.
        """
        proto, client = self.open()
        proto.dataReceived(b"OPTIONS http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\nMax-Forwards: 0\r\n\r\n")
        self.assertTrue(client.value().startswith(b"HTTP/1.1 200 "), client.value())
        self.assertEqual(self.connector.attempts, [])
        proto, client, upstream = self.request(
            b"OPTIONS http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\nMax-Forwards: 3\r\n\r\n")
        self.assertIn(b"Max-Forwards: 2\r\n", upstream.value())


class ExchangeTimerTests(ProxyTestCase):
    """
    The defects the sans-IO exchange fixed (issue #12), each through the
    whole HTTP/1.1 connection layer.
    """

    def assertStatus(self, client: FakeTransport, status: int) -> None:
        self.assertIn(b"HTTP/1.1 %d " % status, client.value())

    def test_manyInterimResponsesAre502(self) -> None:
        """
        A run of interim responses is read in a loop, not by recursion: the
        first ten are relayed, the eleventh makes the request fail with 502,
        and nothing is logged as an error.
        """
        proto, client, upstream = self.request()
        self.respond(b"HTTP/1.1 100 Continue\r\n\r\n" * 600)
        out = client.value()
        self.assertEqual(out.count(b"100 Continue"), 10)
        self.assertIn(b"HTTP/1.1 502 ", out)
        self.assertIn(b"interim", out)
        self.assertTrue(upstream.disconnecting)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_tenInterimResponsesAreFine(self) -> None:
        """
        Ten interim responses, then the final one: all relayed in order.
        """
        proto, client, upstream = self.request()
        self.respond(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n" * 10 + OK)
        out = client.value()
        self.assertEqual(out.count(b"103 Early Hints"), 10)
        self.assertIn(b"Link: </a.css>; rel=preload", out)
        self.assertTrue(out.endswith(b"hello"))

    def test_responseTimeoutAfterPartialHead(self) -> None:
        """
        An upstream that sends part of a response head and stalls still
        gets the response timeout: 504, and the upstream is closed.
        """
        proto, client, upstream = self.request(factory=self.factory(response_timeout="5"))
        self.respond(b"HTTP/1.1 200 OK\r\n")
        self.clock.advance(5.1)
        self.assertStatus(client, 504)
        self.assertTrue(upstream.disconnecting)

    def test_responseTimeoutNotStoppedByInterim(self) -> None:
        """
        A 100 Continue does not stop the response timeout: an upstream that
        then stalls gets 504.
        """
        proto, client, upstream = self.request(factory=self.factory(response_timeout="5"))
        self.clock.advance(3)
        self.respond(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.clock.advance(2.1)
        self.assertStatus(client, 504)
        self.assertTrue(upstream.disconnecting)

    def test_responseTimeoutStartsAfterUpload(self) -> None:
        """
        The response timeout starts once the whole request body was sent:
        an upload slower than the timeout, but never idle, is not cut.
        """
        factory = self.factory(response_timeout="5", idle_timeout="3")
        proto, client = self.open(factory)
        proto.dataReceived(b"POST http://origin.test/up HTTP/1.1\r\nHost: origin.test\r\nContent-Length: 10\r\n\r\n")
        upstream = self.connector.last.succeed()
        for _ in range(10):
            self.clock.advance(1)
            proto.dataReceived(b"x")
        self.assertEqual(client.value(), b"")
        self.assertTrue(upstream.value().endswith(b"\r\n\r\nxxxxxxxxxx"))
        self.clock.advance(4.9)
        self.assertEqual(client.value(), b"")
        self.clock.advance(0.5)
        self.assertStatus(client, 504)

    def test_stalledUploadCutByIdleTimeout(self) -> None:
        """
        A request body that stops arriving (slow-body attack) is cut by
        --idle-timeout with 408, though the response timeout is longer.
        """
        factory = self.factory(response_timeout="60", idle_timeout="3")
        proto, client = self.open(factory)
        proto.dataReceived(b"POST http://origin.test/up HTTP/1.1\r\nHost: origin.test\r\nContent-Length: 1000\r\n\r\nab")
        upstream = self.connector.last.succeed()
        self.clock.pump([1] * 2)
        self.assertEqual(client.value(), b"")
        self.clock.pump([1] * 3)
        self.assertStatus(client, 408)
        self.assertTrue(upstream.aborted)

    def test_slowBodyCutByIdleTimeout(self) -> None:
        """
        A byte every 5 seconds does not keep a request alive past an idle
        timeout of 3 seconds.
        """
        factory = self.factory(response_timeout="60", idle_timeout="3")
        proto, client = self.open(factory)
        proto.dataReceived(b"POST http://origin.test/up HTTP/1.1\r\nHost: origin.test\r\nContent-Length: 1000\r\n\r\n")
        self.connector.last.succeed()
        for _ in range(3):
            if client.value():
                break
            self.clock.pump([1] * 5)
            proto.dataReceived(b"x")
        self.assertStatus(client, 408)

    def test_clientHalfCloseMidBodyIs400(self) -> None:
        """
        A client that half-closes before the end of its request body gets
        400 (the request can never complete), and the upstream is closed.
        """
        proto, client = self.open()
        proto.dataReceived(b"POST http://origin.test/up HTTP/1.1\r\nHost: origin.test\r\nContent-Length: 10\r\n\r\nabc")
        upstream = self.connector.last.succeed()
        proto.readConnectionLost()
        self.assertStatus(client, 400)
        self.assertTrue(upstream.aborted)

    def test_connectTimeoutIs504(self) -> None:
        """
        A dial that does not complete within --connect-timeout is 504, the
        attempt is cancelled and upstreamFailed runs.
        """
        failures: List[Any] = []

        class Hooked(ForwardProxyProtocol):
            def upstreamFailed(self, request: Any, reason: Any) -> None:
                failures.append(reason)

        proto, client = self.open(self.factory(connect_timeout="4", protocol=Hooked))
        proto.dataReceived(GET)
        self.clock.advance(3.9)
        self.assertEqual(client.value(), b"")
        self.clock.advance(0.2)
        self.assertStatus(client, 504)
        self.assertEqual(len(failures), 1)

    def test_slowDecisionIs504(self) -> None:
        """
        The connect timer also bounds a decision that waits (a hook
        returning a Deferred that never fires): 504 after --connect-timeout,
        and nothing is dialled.
        """
        class Slow(ForwardProxyProtocol):
            def allowRequest(self, request: Any) -> Any:
                return defer.Deferred()

        proto, client = self.open(self.factory(connect_timeout="4", protocol=Slow))
        proto.dataReceived(GET)
        self.clock.advance(3.9)
        self.assertEqual(client.value(), b"")
        self.clock.advance(0.2)
        self.assertStatus(client, 504)
        self.assertEqual(self.connector.attempts, [])

    def test_pooledConnectionNotReusedAfterDenyDestReload(self) -> None:
        """
        A pooled keep-alive connection to a destination that a reloaded
        --deny-dest now denies is closed, not reused: the request is 403.
        """
        factory = self.factory()
        proto, client, upstream = self.request(factory=factory)
        self.respond(OK)
        self.assertEqual(len(factory.pool), 1)
        factory.reloadListener(listenerConfig(deny_dest="192.0.2.0/24"))
        client.clear()
        proto.dataReceived(GET)
        self.assertStatus(client, 403)
        self.assertTrue(upstream.disconnecting)
        self.assertEqual(len(factory.pool), 0)


PUT = b"PUT http://origin.test/config HTTP/1.1\r\nHost: origin.test\r\nContent-Length: 5\r\n\r\nabcde"
CREATED = b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nOK"


class StalePooledConnectionTests(ProxyTestCase):
    """
    A pooled keep-alive connection the server closed (its keep-alive
    timeout, Node's 5 s) just before the proxy reuses it: an idempotent
    request without a body is sent again once on a fresh connection; one
    that cannot be sent again is never put on a connection whose close the
    kernel already has.
    """

    def pooled(self) -> Tuple[Any, FakeTransport, FakeTransport]:
        """
        A first GET answered: its upstream connection is idle in the pool.
        """
        proto, client, upstream = self.request()
        self.respond(OK)
        self.assertEqual(len(self.proto_pool(proto)), 1)
        return proto, client, upstream

    def proto_pool(self, proto: Any) -> Any:
        return proto.factory.pool

    def test_finBeforeResponseRetried(self) -> None:
        """
        The server's FIN (a half-close) after the request was sent on a
        reused connection, before any response byte: the C{GET} is sent
        once more on a fresh connection and answered.
        """
        proto, client, upstream = self.pooled()
        proto.dataReceived(GET)
        self.assertEqual(upstream.value().count(b"GET /path"), 2)
        upstream.peerHalfClosed()
        self.assertEqual(len(self.connector.attempts), 2)
        fresh = self.connector.last.succeed()
        self.assertTrue(fresh.value().startswith(b"GET /path?q=1 HTTP/1.1\r\n"))
        self.respond(OK)
        self.assertEqual(_heads(client.value()), [b"HTTP/1.1 200 ", b"HTTP/1.1 200 "])

    def test_resetBeforeResponseRetried(self) -> None:
        """
        A reset (C{ECONNRESET}, the server closed with our request unread)
        instead of a FIN: retried the same way.
        """
        proto, client, upstream = self.pooled()
        proto.dataReceived(GET)
        upstream.peerClosed(error.ConnectionLost("Connection reset by peer"))
        self.assertEqual(len(self.connector.attempts), 2)
        self.connector.last.succeed()
        self.respond(OK)
        self.assertEqual(_heads(client.value()), [b"HTTP/1.1 200 ", b"HTTP/1.1 200 "])

    def test_closedUnseenBodyRequestGoesFresh(self) -> None:
        """
        A C{PUT} with a body cannot be sent again: when the pooled
        connection's FIN is already in the kernel (the event loop was busy),
        that connection is dropped and the request goes on a fresh one, so
        it is answered instead of C{502}.
        """
        proto, client, upstream = self.pooled()
        upstream.peerClosedUnseen()
        proto.dataReceived(PUT)
        self.assertEqual(upstream.value().count(b"PUT"), 0)
        self.assertTrue(upstream.aborted)
        self.assertEqual(len(self.proto_pool(proto)), 0)
        self.assertEqual(len(self.connector.attempts), 2)
        fresh = self.connector.last.succeed()
        self.assertTrue(fresh.value().startswith(b"PUT /config HTTP/1.1\r\n"))
        self.assertTrue(fresh.value().endswith(b"\r\n\r\nabcde"))
        self.respond(CREATED)
        self.assertEqual(_heads(client.value()), [b"HTTP/1.1 200 ", b"HTTP/1.1 201 "])
        self.assertEqual([r.status for r in self.records], [200, 201])

    def test_resetUnseenPostGoesFresh(self) -> None:
        """
        The same for a reset the reactor has not reported, and a C{POST}
        without a body (not idempotent: never sent twice).
        """
        proto, client, upstream = self.pooled()
        upstream.peerClosedUnseen(reset=True)
        proto.dataReceived(b"POST http://origin.test/p HTTP/1.1\r\nHost: origin.test\r\n\r\n")
        self.assertNotIn(b"POST", upstream.value())
        self.assertEqual(len(self.connector.attempts), 2)
        self.assertIn(b"POST /p ", self.connector.last.succeed().value())
        self.respond(OK)
        self.assertEqual(_heads(client.value()), [b"HTTP/1.1 200 ", b"HTTP/1.1 200 "])

    def test_unsolicitedBytesUnseenGoesFresh(self) -> None:
        """
        Bytes waiting on an idle plain connection (a server's C{408} before
        it closes) would be read as the answer to the next request: that
        connection is not reused for a request that cannot be retried.
        """
        proto, client, upstream = self.pooled()
        upstream.peerClosedUnseen(data=b"HTTP/1.1 408 Request Timeout\r\n\r\n")
        proto.dataReceived(PUT)
        self.assertNotIn(b"PUT", upstream.value())
        self.connector.last.succeed()
        self.respond(CREATED)
        self.assertEqual(_heads(client.value()), [b"HTTP/1.1 200 ", b"HTTP/1.1 201 "])

    def test_openPooledConnectionReusedForBody(self) -> None:
        """
        A pooled connection that is still open (nothing in the kernel)
        carries the C{PUT}: no new dial.
        """
        proto, client, upstream = self.pooled()
        upstream.peerClosedUnseen()
        upstream.socket.pending = None  # (EAGAIN: open and idle)
        proto.dataReceived(PUT)
        self.assertIn(b"PUT /config ", upstream.value())
        self.assertEqual(len(self.connector.attempts), 1)
        self.respond(CREATED)
        self.assertEqual(_heads(client.value()), [b"HTTP/1.1 200 ", b"HTTP/1.1 201 "])

    def test_retryableRequestNotChecked(self) -> None:
        """
        A C{GET} on such a connection is not checked (no system call on the
        common path): it is sent, and retried once the close is reported.
        """
        proto, client, upstream = self.pooled()
        upstream.peerClosedUnseen()
        proto.dataReceived(GET)
        self.assertEqual(upstream.value().count(b"GET /path"), 2)
        upstream.peerHalfClosed()
        self.assertEqual(len(self.connector.attempts), 2)
        self.connector.last.succeed()
        self.respond(OK)
        self.assertEqual(_heads(client.value()), [b"HTTP/1.1 200 ", b"HTTP/1.1 200 "])

    def test_closeWhileSendingBodyIs502NotRetried(self) -> None:
        """
        The close arriving while a reused connection still carries the
        request body (part of it already sent): C{502}, and the request is
        never sent again (RFC 9110 section 9.2.2).
        """
        proto, client, upstream = self.pooled()
        proto.dataReceived(PUT[:-3])
        self.assertTrue(upstream.value().endswith(b"ab"))
        upstream.peerHalfClosed()
        self.assertEqual(len(self.connector.attempts), 1)
        self.assertEqual(_heads(client.value()), [b"HTTP/1.1 200 ", b"HTTP/1.1 502 "])

    def test_closeAfterBodyRequestSentIs502NotRetried(self) -> None:
        """
        A C{PUT} whose whole body went on a connection that looked open,
        closed before any response byte: C{502}, not sent twice.
        """
        proto, client, upstream = self.pooled()
        proto.dataReceived(PUT)
        upstream.peerHalfClosed()
        self.assertEqual(len(self.connector.attempts), 1)
        self.assertEqual(_heads(client.value()), [b"HTTP/1.1 200 ", b"HTTP/1.1 502 "])

    def test_keepAliveTimeoutHonoured(self) -> None:
        """
        A server that says C{Keep-Alive: timeout=5} (Node) gets its pooled
        connection reused for 4 s of idleness, never later (it closes at
        any moment after 5 s): then a fresh one is dialled and the stale
        one closed.
        """
        proto, client, upstream = self.request()
        self.respond(b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nContent-Length: 5\r\n\r\nhello")
        self.clock.advance(3.9)
        proto.dataReceived(PUT)
        self.assertEqual(len(self.connector.attempts), 1)
        self.respond(b"HTTP/1.1 201 Created\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nContent-Length: 2\r\n\r\nOK")
        self.clock.advance(4.0)
        proto.dataReceived(PUT)
        self.assertEqual(len(self.connector.attempts), 2)
        self.assertTrue(upstream.disconnecting)
        self.assertEqual(upstream.value().count(b"PUT"), 1)
        self.connector.last.succeed()
        self.respond(CREATED)
        self.assertEqual(_heads(client.value()), [b"HTTP/1.1 200 ", b"HTTP/1.1 201 ", b"HTTP/1.1 201 "])

    def test_noKeepAliveTimeoutPoolBound(self) -> None:
        """
        Without the field, only the pool's own idle bound applies.
        """
        proto, client, upstream = self.request()
        self.respond(OK)
        self.clock.advance(20)
        proto.dataReceived(PUT)
        self.assertEqual(len(self.connector.attempts), 1)
        self.assertIn(b"PUT /config", upstream.value())

    def test_keepAliveLimit(self) -> None:
        """
        One second less than the server's timeout, half of it under two
        seconds (a timeout of 0: never reused).
        """
        self.assertEqual([keepAliveLimit(t) for t in (0, 1, 2, 5, 75)], [0.0, 0.5, 1.0, 4.0, 74.0])

    def test_retriedDialFailingIs502(self) -> None:
        """
        The one retry's fresh dial refused: C{502} naming the refusal, and
        no third attempt.
        """
        proto, client, upstream = self.pooled()
        proto.dataReceived(GET)
        upstream.peerHalfClosed()
        self.connector.last.fail(error.ConnectionRefusedError())
        self.assertEqual(len(self.connector.attempts), 2)
        self.assertEqual(_heads(client.value()), [b"HTTP/1.1 200 ", b"HTTP/1.1 502 "])


class _Sock:
    def __init__(self, result: Any) -> None:
        self.result = result
        self.calls: List[Tuple[int, int]] = []

    def recv(self, size: int, flags: int) -> bytes:
        self.calls.append((size, flags))
        if isinstance(self.result, BaseException):
            raise self.result
        return self.result


class _Holder:
    def __init__(self, sock: Any) -> None:
        self.socket = sock


class ClosedUnseenTests(SynchronousTestCase):
    """
    L{closedUnseen} peeks at the socket under a transport, without reading
    or waiting.
    """

    def check(self, result: Any, tls: bool = False) -> bool:
        sock = _Sock(result)
        transport: Any = _Holder(sock)
        wrapper = ProtocolWrapper(WrappingFactory(Factory()), Protocol())
        wrapper.transport = transport
        transport = wrapper
        if tls:
            outer = TLSMemoryBIOProtocol.__new__(TLSMemoryBIOProtocol)
            outer.transport = transport
            transport = outer
        found = closedUnseen(transport)
        self.assertEqual(sock.calls, [(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)])
        return found

    def test_openIdle(self) -> None:
        """
        Nothing to read (C{EAGAIN}): open.
        """
        self.assertFalse(self.check(BlockingIOError(errno.EAGAIN, "again")))
        self.assertFalse(self.check(BlockingIOError(errno.EAGAIN, "again"), tls=True))

    def test_fin(self) -> None:
        """
        End of file (the server's FIN): closed, under TLS too.
        """
        self.assertTrue(self.check(b""))
        self.assertTrue(self.check(b"", tls=True))

    def test_reset(self) -> None:
        """
        C{ECONNRESET} (or any other error): closed.
        """
        self.assertTrue(self.check(ConnectionResetError(errno.ECONNRESET, "reset")))
        self.assertTrue(self.check(OSError(errno.ETIMEDOUT, "timed out"), tls=True))

    def test_bytes(self) -> None:
        """
        Bytes on an idle plain connection: unusable; under TLS (a session
        ticket, say) left to the TLS layer.
        """
        self.assertTrue(self.check(b"H"))
        self.assertFalse(self.check(b"\x17", tls=True))

    def test_noSocket(self) -> None:
        """
        A transport with no socket under it (a fake, a memory transport)
        cannot be checked: taken as open.
        """
        self.assertFalse(closedUnseen(FakeTransport()))
        self.assertFalse(closedUnseen(object()))
