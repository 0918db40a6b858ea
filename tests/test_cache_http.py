"""
Tests for L{txproxy.cache._http}: the cache in the HTTP core, on fake
transports and a fake clock (reverse and forward mode, HTTP/1.1); and
L{txproxy.cache._service}.
"""

from __future__ import annotations

import sys
from email.utils import formatdate
from typing import Any, List, Optional, Tuple

from twisted.internet import defer, error
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests.test_cache_memory import entry
from tests.test_h2_server import Client
from txproxy import config
from txproxy.cache import CacheService, HTTPCache, purgeKey
from txproxy.cache._metrics import cacheMetricFamilies
from txproxy.cache._request import isPlain
from txproxy.errors import ConfigError
from txproxy.http import RequestHead
from txproxy.reverse import ReverseProxyFactory
from txproxy.router import RouterService
from txproxy.testing import (
    FakeConnector,
    FakeRedisTier,
    FakeTransport,
    connect,
    forwardFactory,
    reverseFactory,
)

T0 = 1_700_000_000.0


def _listener(*routes: str, **options: Any) -> Any:
    opts: List[Tuple[str, Any]] = [("mode", "reverse"), ("name", "web")]
    opts += [("route", r) for r in routes]
    for key, value in options.items():
        opts.append((key.replace("_", "-"), str(value)))
    return config.fromFlags(["tcp:0"], opts).listeners[0]


def response(body: bytes = b"hello", status: bytes = b"200 OK", *headers: bytes) -> bytes:
    # (Connection: close: each upstream request is one dial to count.)
    head = b"HTTP/1.1 " + status + b"\r\nConnection: close\r\n" + b"".join(h + b"\r\n" for h in headers)
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


def field(data: bytes, name: bytes) -> Optional[bytes]:
    """
    The value of the header C{name} of the last response in C{data}.
    """
    head = data[data.rfind(b"HTTP/1.1 "):].split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n")[1:]:
        n, _, v = line.partition(b":")
        if n.strip().lower() == name.lower():
            return v.strip()
    return None


class CacheTestCase(SynchronousTestCase):
    size = 1 << 20
    maxObject = 8388608

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(T0)
        self.connector = FakeConnector()
        self.records: List[Any] = []
        self.factory = self.makeFactory("a.test=http://192.0.2.1:8001")

    def makeFactory(self, *routes: str, listener: Any = None) -> Any:
        listener = listener or _listener(*routes)
        router = RouterService([listener], self.connector, self.clock)
        f = ReverseProxyFactory(listener, self.connector, self.clock, router=router)
        f.accessLog = self
        f.cache = self.cache = HTTPCache(self.size, self.maxObject, self.clock)
        return f

    def log(self, record: Any) -> None:
        self.records.append(record)

    def date(self, offset: float = 0.0) -> bytes:
        return b"Date: " + formatdate(self.clock.seconds() + offset, usegmt=True).encode()

    def request(self, path: bytes = b"/x", *headers: bytes, method: bytes = b"GET", host: bytes = b"a.test",
                proto: Any = None) -> Tuple[Any, FakeTransport]:
        if proto is None:
            proto, client = connect(self.factory, ("203.0.113.9", 5000))
        else:
            client = proto.transport
        proto.dataReceived(method + b" " + path + b" HTTP/1.1\r\nHost: " + host + b"\r\n"
                           + b"".join(h + b"\r\n" for h in headers) + b"\r\n")
        return proto, client

    def upstreamAnswers(self, data: bytes) -> FakeTransport:
        """
        The last dial succeeds and its upstream answers C{data}; what was
        sent upstream is returned.
        """
        attempt = self.connector.last
        if attempt.transport is None:
            attempt.succeed()
        sent: FakeTransport = attempt.transport
        attempt.protocol.dataReceived(data)
        return sent

    def fill(self, path: bytes = b"/x", body: bytes = b"hello", *headers: bytes) -> bytes:
        """
        A miss for C{path} answered C{body} with C{headers} (default
        C{max-age=60}); the client's bytes.
        """
        _, client = self.request(path)
        self.upstreamAnswers(response(body, b"200 OK", self.date(), *(headers or (b"Cache-Control: max-age=60",))))
        return client.value()


class HitMissTests(CacheTestCase):
    def test_missThenHit(self) -> None:
        """
        The first request goes upstream and is stored (Cache-Status says
        so); the second is answered from the cache with no upstream, with
        Age and a hit Cache-Status.
        """
        first = self.fill(body=b"stored body")
        self.assertTrue(first.endswith(b"stored body"))
        self.assertEqual(field(first, b"cache-status"), b"txproxy; fwd=uri-miss; stored; fwd-status=200")
        self.assertEqual(len(self.connector.attempts), 1)
        self.clock.advance(5)
        _, client = self.request()
        data = client.value()
        self.assertTrue(data.startswith(b"HTTP/1.1 200 OK\r\n"), data)
        self.assertTrue(data.endswith(b"\r\n\r\nstored body"))
        self.assertEqual(field(data, b"age"), b"5")
        self.assertEqual(field(data, b"cache-status"), b"txproxy; hit; ttl=55")
        self.assertEqual(field(data, b"content-length"), b"11")
        self.assertEqual(len(self.connector.attempts), 1)
        self.assertEqual(self.cache.results["hit"], 1)
        self.assertEqual(self.cache.results["miss"], 1)
        self.assertEqual([r.status for r in self.records], [200, 200])
        self.assertFalse(client.disconnecting)

    def test_dateAddedWhenMissing(self) -> None:
        """
        A stored response without Date gets the time it was received, so
        Expires and heuristic freshness work for it.
        """
        _, client = self.request()
        self.upstreamAnswers(response(b"x", b"200 OK", b"Last-Modified: "
                                      + formatdate(self.clock.seconds() - 1000, usegmt=True).encode()))
        self.clock.advance(50)
        _, client = self.request()
        self.assertEqual(field(client.value(), b"cache-status"), b"txproxy; hit; ttl=50")
        self.assertEqual(field(client.value(), b"date"), formatdate(T0, usegmt=True).encode())

    def test_keepAliveHitsThenMiss(self) -> None:
        """
        Hits on a keep-alive connection leave it ready for the next
        request, which may be a miss.
        """
        self.fill()
        proto, client = self.request()
        self.request(proto=proto)
        self.assertEqual(client.value().count(b"hello"), 2)
        self.request(b"/other", proto=proto)
        self.upstreamAnswers(response(b"other", b"200 OK", b"Cache-Control: no-store"))
        self.assertTrue(client.value().endswith(b"other"))
        self.assertEqual(len(self.connector.attempts), 2)

    def test_pipelinedHits(self) -> None:
        """
        Many pipelined requests that are all hits are answered in order in
        one go (in a loop, not recursively).
        """
        self.fill(body=b"p")
        proto, client = connect(self.factory, ("203.0.113.9", 5000))
        proto.dataReceived(b"GET /x HTTP/1.1\r\nHost: a.test\r\n\r\n" * 3000)
        self.assertEqual(client.value().count(b"HTTP/1.1 200 OK"), 3000)
        self.assertEqual(self.cache.results["hit"], 3000)

    def test_pipelinedMissThenHits(self) -> None:
        """
        A miss followed by pipelined requests for the same URL: once the
        miss is answered and stored, the others are hits, in order.
        """
        proto, client = connect(self.factory, ("203.0.113.9", 5000))
        proto.dataReceived(b"GET /x HTTP/1.1\r\nHost: a.test\r\n\r\n" * 3)
        self.upstreamAnswers(response(b"one", b"200 OK", b"Cache-Control: max-age=60"))
        data = client.value()
        self.assertEqual(data.count(b"HTTP/1.1 200 OK"), 3)
        self.assertEqual(data.count(b"Cache-Status: txproxy; hit"), 2)
        self.assertTrue(data.endswith(b"one"))
        self.assertEqual(len(self.connector.attempts), 1)

    def test_chunkedStored(self) -> None:
        """
        A chunked response is stored decoded and served with a length.
        """
        self.request()
        self.upstreamAnswers(b"HTTP/1.1 200 OK\r\nConnection: close\r\nCache-Control: max-age=60\r\nTransfer-Encoding: chunked\r\n\r\n"
                             b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
        _, client = self.request()
        data = client.value()
        self.assertEqual(field(data, b"content-length"), b"5")
        self.assertTrue(data.endswith(b"\r\n\r\nabcde"))

    def test_staleForwarded(self) -> None:
        """
        Once stale, a response without validators is fetched again.
        """
        self.fill(b"/x", b"v1", b"Cache-Control: max-age=10")
        self.clock.advance(11)
        _, client = self.request()
        sent = self.upstreamAnswers(response(b"v2", b"200 OK", b"Cache-Control: max-age=10"))
        self.assertNotIn(b"If-None-Match", sent.value())
        self.assertTrue(client.value().endswith(b"v2"))
        self.assertIn(b"fwd=stale", field(client.value(), b"cache-status") or b"")
        _, again = self.request()
        self.assertTrue(again.value().endswith(b"v2"))

    def test_head(self) -> None:
        """
        HEAD is answered from a stored GET: its head, no body.
        """
        self.fill(body=b"0123456789")
        _, client = self.request(method=b"HEAD")
        data = client.value()
        self.assertTrue(data.endswith(b"\r\n\r\n"), data)
        self.assertEqual(field(data, b"content-length"), b"10")
        self.assertEqual(len(self.connector.attempts), 1)

    def test_headMissNotStored(self) -> None:
        """
        A HEAD miss goes upstream and stores nothing.
        """
        self.request(method=b"HEAD")
        self.upstreamAnswers(b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 4\r\n\r\n")
        self.assertEqual(len(self.cache.store), 0)

    def test_range(self) -> None:
        """
        A single byte range of a stored response is answered 206 from it;
        several ranges get the whole response.
        """
        self.fill(body=b"0123456789")
        _, client = self.request(b"/x", b"Range: bytes=2-4")
        data = client.value()
        self.assertTrue(data.startswith(b"HTTP/1.1 206 Partial Content\r\n"), data)
        self.assertEqual(field(data, b"content-range"), b"bytes 2-4/10")
        self.assertTrue(data.endswith(b"\r\n\r\n234"))
        _, client = self.request(b"/x", b"Range: bytes=0-1,4-5")
        self.assertTrue(client.value().endswith(b"\r\n\r\n0123456789"))
        self.assertEqual(len(self.connector.attempts), 1)

    def test_clientConditional(self) -> None:
        """
        A client's If-None-Match matching the stored ETag gets a 304 from
        the cache.
        """
        self.fill(b"/x", b"body", b"Cache-Control: max-age=60", b'ETag: "v1"')
        _, client = self.request(b"/x", b'If-None-Match: "v1"')
        data = client.value()
        self.assertTrue(data.startswith(b"HTTP/1.1 304 Not Modified\r\n"), data)
        self.assertTrue(data.endswith(b"\r\n\r\n"))

    def test_emptyBodyLooksUp(self) -> None:
        """
        A GET with Content-Length: 0 is looked up; one with a body is not.
        """
        self.fill()
        _, client = self.request(b"/x", b"Content-Length: 0")
        self.assertIn(b"Cache-Status: txproxy; hit", client.value())
        proto, client = connect(self.factory, ("203.0.113.9", 5000))
        proto.dataReceived(b"GET /x HTTP/1.1\r\nHost: a.test\r\nContent-Length: 2\r\n\r\nab")
        self.assertEqual(len(self.connector.attempts), 2)

    def test_onlyIfCached(self) -> None:
        """
        only-if-cached on a miss is a 504 from the cache, nothing goes
        upstream, and the connection stays open.
        """
        _, client = self.request(b"/x", b"Cache-Control: only-if-cached")
        data = client.value()
        self.assertTrue(data.startswith(b"HTTP/1.1 504 "), data)
        self.assertEqual(self.connector.attempts, [])
        self.assertFalse(client.disconnecting)

    def test_tooLargeStreamsThrough(self) -> None:
        """
        A body over the largest object streams to the client whole and is
        not stored.
        """
        self.cache.store.maxObject = 100
        body = b"x" * 1000
        self.assertTrue(self.fill(body=body).endswith(body))
        self.assertEqual((len(self.cache.store), self.cache.store.bytes), (0, 0))

    def test_streamedBeforeComplete(self) -> None:
        """
        The body reaches the client as it arrives (nothing is held back
        while it is stored); it is visible to others only once complete.
        """
        _, client = self.request()
        self.upstreamAnswers(b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 10\r\n\r\n01234")
        self.assertTrue(client.value().endswith(b"01234"))
        self.assertEqual(len(self.cache.store), 0)
        self.connector.last.protocol.dataReceived(b"56789")
        self.assertEqual(len(self.cache.store), 1)

    def test_brokenBodyNotStored(self) -> None:
        """
        A response whose upstream closes mid-body is not stored.
        """
        _, client = self.request()
        self.upstreamAnswers(b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 10\r\n\r\n01234")
        self.connector.last.protocol.connectionLost(Failure(Exception("gone")))
        self.assertEqual((len(self.cache.store), self.cache.store.bytes), (0, 0))

    def test_routeCacheFalse(self) -> None:
        """
        A route with cache = false is neither looked up nor stored: bypass.
        """
        route = config.RouteConfig(host="a.test", upstreams=(config.UpstreamURL("http", "192.0.2.1", 80),),
                                   cache=False)
        listener = config.ListenerConfig(listen=("tcp:0",), mode="reverse", name="web", routes=(route,))
        self.factory = self.makeFactory(listener=listener)
        first = self.fill()
        self.assertEqual(field(first, b"cache-status"), b'txproxy; fwd=bypass; detail="route"; fwd-status=200')
        self.request()
        self.assertEqual(len(self.connector.attempts), 2)
        self.assertEqual(self.cache.results["bypass"], 2)

    def test_errorResponsesCarryCacheStatus(self) -> None:
        """
        The proxy's own error responses on a caching listener carry
        Cache-Status too.
        """
        _, client = self.request(host=b"nope.test")
        self.assertTrue(client.value().startswith(b"HTTP/1.1 404 "))
        self.assertEqual(field(client.value(), b"cache-status"), b"txproxy; fwd=bypass")


class FastPathTests(CacheTestCase):
    def test_isPlain(self) -> None:
        """
        A request is plain when none of its fields (any case) can change
        the lookup or the served response.
        """
        plain = RequestHead(b"GET", b"/", b"HTTP/1.1", ((b"Host", b"a"), (b"Accept", b"*/*")))
        self.assertTrue(isPlain(plain))
        for name in (b"Cache-Control", b"PRAGMA", b"If-None-Match", b"if-modified-since", b"Range",
                     b"If-Range", b"X-Original-URL", b"x-rewrite-url"):
            self.assertFalse(isPlain(RequestHead(b"GET", b"/", b"HTTP/1.1", ((b"Host", b"a"), (name, b"x")))))

    def test_sameAnswerBothPaths(self) -> None:
        """
        A plain request's hit (the fast path) is byte for byte the answer
        the full lookup gives (a request with a field that changes
        nothing, so not plain).
        """
        self.fill(b"/x", b"body", b"Cache-Control: max-age=60", b"ETag: \"e\"", b"X-Other: 1")
        self.clock.advance(7)
        _, fast = self.request(b"/x")
        _, slow = self.request(b"/x", b"Pragma: something-else")
        self.assertEqual(fast.value(), slow.value())
        self.assertEqual(field(fast.value(), b"cache-status"), b"txproxy; hit; ttl=53")
        self.assertEqual(field(fast.value(), b"age"), b"7")
        self.assertEqual(self.cache.results["hit"], 2)
        self.assertEqual(len(self.connector.attempts), 1)

    def test_headFastPath(self) -> None:
        """
        A plain HEAD hit has the stored length and no body.
        """
        self.fill(b"/x", b"body")
        _, client = self.request(b"/x", method=b"HEAD")
        data = client.value()
        self.assertTrue(data.endswith(b"\r\n\r\n"), data)
        self.assertEqual(field(data, b"content-length"), b"4")
        self.assertEqual(field(data, b"cache-status"), b"txproxy; hit; ttl=60")

    def test_staleNotFast(self) -> None:
        """
        A plain request for a stale stored response still goes upstream.
        """
        self.fill(b"/x", b"body", b"Cache-Control: max-age=5")
        self.clock.advance(6)
        self.request(b"/x")
        self.assertEqual(len(self.connector.attempts), 2)

    def test_noCacheStoredNotFast(self) -> None:
        """
        A plain request for a stored no-cache response revalidates.
        """
        self.fill(b"/x", b"body", b"Cache-Control: no-cache, max-age=60", b"ETag: \"e\"")
        self.request(b"/x")
        self.assertEqual(len(self.connector.attempts), 2)
        self.assertIn(b"If-None-Match: \"e\"", self.upstreamAnswers(response(b"", b"304 Not Modified")).value())


class RevalidationTests(CacheTestCase):
    def test_304Refreshes(self) -> None:
        """
        A stale response with validators is revalidated with a conditional
        request; the 304 refreshes the stored head and the client gets the
        stored body.
        """
        self.fill(b"/x", b"body", b"Cache-Control: max-age=10", b'ETag: "v1"', b"X-Version: 1")
        self.clock.advance(11)
        _, client = self.request()
        sent = self.upstreamAnswers(b"HTTP/1.1 304 Not Modified\r\nConnection: close\r\nCache-Control: max-age=100\r\nX-Version: 2\r\n"
                                    b"Set-Cookie: s=1\r\n" + self.date() + b"\r\n\r\n")
        self.assertIn(b'If-None-Match: "v1"\r\n', sent.value())
        data = client.value()
        self.assertTrue(data.startswith(b"HTTP/1.1 200 OK\r\n"), data)
        self.assertTrue(data.endswith(b"\r\n\r\nbody"))
        self.assertEqual(field(data, b"x-version"), b"2")
        self.assertEqual(field(data, b"set-cookie"), b"s=1")
        self.assertEqual(field(data, b"cache-status"), b"txproxy; fwd=stale; fwd-status=304")
        self.assertEqual(self.cache.results["revalidated"], 1)
        self.assertEqual(self.records[-1].status, 200)
        # Fresh again for 100 s.
        self.clock.advance(50)
        _, again = self.request()
        self.assertEqual(field(again.value(), b"cache-status"), b"txproxy; hit; ttl=50")
        self.assertIsNone(field(again.value(), b"set-cookie"))
        self.assertEqual(len(self.connector.attempts), 2)

    def test_304IntegrityFieldsKept(self) -> None:
        """
        A 304 does not replace the fields the stored body depends on
        (Content-Encoding, Content-Range, Content-MD5, ETag) in what is
        served then and later; other fields it carries are taken.
        """
        self.fill(b"/x", b"body", b"Cache-Control: max-age=10", b'ETag: "v1"', b"Content-Encoding: gzip",
                  b"Content-MD5: one", b"Content-Range: bytes 0-3/4", b"X-Version: 1")
        self.clock.advance(11)
        _, client = self.request()
        self.upstreamAnswers(b"HTTP/1.1 304 Not Modified\r\nConnection: close\r\nCache-Control: max-age=100\r\n"
                             b"Content-Encoding: br\r\nContent-MD5: two\r\nContent-Range: bytes 0-9/10\r\n"
                             b"X-Version: 2\r\n" + self.date() + b"\r\n\r\n")
        self.clock.advance(1)
        _, again = self.request()
        for data in (client.value(), again.value()):
            self.assertTrue(data.endswith(b"\r\n\r\nbody"), data)
            self.assertEqual(field(data, b"content-encoding"), b"gzip")
            self.assertEqual(field(data, b"content-md5"), b"one")
            self.assertEqual(field(data, b"content-range"), b"bytes 0-3/4")
            self.assertEqual(field(data, b"etag"), b'"v1"')
            self.assertEqual(field(data, b"x-version"), b"2")
        self.assertEqual(field(again.value(), b"cache-status"), b"txproxy; hit; ttl=99")
        self.assertEqual(len(self.connector.attempts), 2)

    def test_304OtherETag(self) -> None:
        """
        A 304 to the cache's own conditional request that carries another
        ETag never reaches the client (whose request was not conditional):
        the stored response is served and refreshed, keeping its ETag.
        """
        self.fill(b"/x", b"body", b"Cache-Control: max-age=2", b'ETag: "abcdef"')
        self.clock.advance(3)
        _, client = self.request()
        sent = self.upstreamAnswers(b"HTTP/1.1 304 Not Modified\r\nConnection: close\r\nCache-Control: max-age=2\r\n"
                                    b'ETag: "ghijkl"\r\n' + self.date() + b"\r\n\r\n")
        self.assertIn(b'If-None-Match: "abcdef"\r\n', sent.value())
        data = client.value()
        self.assertTrue(data.startswith(b"HTTP/1.1 200 OK\r\n"), data)
        self.assertTrue(data.endswith(b"\r\n\r\nbody"))
        self.assertEqual(field(data, b"etag"), b'"abcdef"')
        self.assertEqual(self.records[-1].status, 200)
        _, again = self.request()
        self.assertEqual(field(again.value(), b"etag"), b'"abcdef"')
        self.assertEqual(field(again.value(), b"cache-status"), b"txproxy; hit; ttl=2")
        self.assertEqual(len(self.connector.attempts), 2)

    def test_304LastModifiedMismatch(self) -> None:
        """
        Likewise a 304 with another Last-Modified: the client gets the
        stored 200, never a 304 it did not ask for.
        """
        lm = b"Last-Modified: " + formatdate(T0 - 1000, usegmt=True).encode()
        self.fill(b"/x", b"body", b"Cache-Control: max-age=2", lm)
        self.clock.advance(3)
        _, client = self.request()
        self.upstreamAnswers(b"HTTP/1.1 304 Not Modified\r\nConnection: close\r\nCache-Control: max-age=2\r\n"
                             b"Last-Modified: " + formatdate(T0, usegmt=True).encode() + b"\r\n"
                             + self.date() + b"\r\n\r\n")
        data = client.value()
        self.assertTrue(data.startswith(b"HTTP/1.1 200 OK\r\n"), data)
        self.assertTrue(data.endswith(b"\r\n\r\nbody"))

    def test_ageListFirstMember(self) -> None:
        """
        Two Age lines: the first counts (RFC 9111 section 5.1).  An old
        first one makes the stored response stale: the next request goes
        upstream (conditional, as it has an ETag) and is answered normally.
        """
        self.fill(b"/x", b"body", b"Cache-Control: max-age=3600", b'ETag: "e"', b"Age: 7200", b"Age: 0")
        _, client = self.request()
        self.assertEqual(len(self.connector.attempts), 2)
        sent = self.upstreamAnswers(response(b"new", b"200 OK", self.date(), b"Cache-Control: max-age=3600",
                                             b'ETag: "f"', b"Age: 5", b"Age: 7200"))
        self.assertIn(b'If-None-Match: "e"\r\n', sent.value())
        self.assertTrue(client.value().startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertTrue(client.value().endswith(b"new"))
        _, again = self.request()
        self.assertTrue(again.value().endswith(b"new"))
        self.assertEqual(field(again.value(), b"age"), b"5")
        self.assertEqual(len(self.connector.attempts), 2)

    def test_invalidAgeIgnored(self) -> None:
        """
        An invalid Age is ignored: the response is fresh for its lifetime
        (and is served with the cache's own Age); a list with an old first
        member is stale and forwarded again.
        """
        for age in (b"abc", b"-7200", b"7200.0", b"7200;a=b"):
            path = b"/" + age.replace(b";", b"_")
            self.fill(path, b"body", b"Cache-Control: max-age=3600", b"Age: " + age)
            before = len(self.connector.attempts)
            _, client = self.request(path)
            self.assertEqual(len(self.connector.attempts), before, age)
            self.assertEqual(field(client.value(), b"age"), b"0", age)
        self.fill(b"/list", b"body", b"Cache-Control: max-age=3600", b"Age: 7200, 0")
        before = len(self.connector.attempts)
        _, client = self.request(b"/list")
        self.assertEqual(len(self.connector.attempts), before + 1)
        self.upstreamAnswers(response(b"again", b"200 OK", self.date(), b"Cache-Control: max-age=3600"))
        self.assertTrue(client.value().endswith(b"again"))

    def test_200Replaces(self) -> None:
        """
        A revalidation answered 200 replaces the stored response.
        """
        self.fill(b"/x", b"old", b"Cache-Control: max-age=10", b'ETag: "v1"')
        self.clock.advance(11)
        _, client = self.request()
        self.upstreamAnswers(response(b"new", b"200 OK", b"Cache-Control: max-age=10", b'ETag: "v2"'))
        self.assertTrue(client.value().endswith(b"new"))
        _, again = self.request()
        self.assertTrue(again.value().endswith(b"new"))

    def test_requestNoCache(self) -> None:
        """
        A request with no-cache revalidates a fresh response.
        """
        self.fill(b"/x", b"body", b"Cache-Control: max-age=100", b"Last-Modified: Mon, 01 Jan 2024 00:00:00 GMT")
        _, client = self.request(b"/x", b"Cache-Control: no-cache")
        sent = self.upstreamAnswers(b"HTTP/1.1 304 Not Modified\r\nConnection: close\r\n\r\n")
        self.assertIn(b"If-Modified-Since: Mon, 01 Jan 2024 00:00:00 GMT\r\n", sent.value())
        self.assertTrue(client.value().endswith(b"body"))
        self.assertEqual(field(client.value(), b"cache-status"), b"txproxy; fwd=request; fwd-status=304")

    def test_staleWhileRevalidate(self) -> None:
        """
        Within stale-while-revalidate the stale response is served at once
        and the same exchange revalidates in the background; its 304
        refreshes the stored response and nothing more reaches the client.
        """
        self.fill(b"/x", b"body", b"Cache-Control: max-age=10, stale-while-revalidate=60", b'ETag: "v1"')
        self.clock.advance(20)
        proto, client = self.request()
        data = client.value()
        self.assertTrue(data.endswith(b"\r\n\r\nbody"))
        self.assertIn(b"stale-while-revalidate", field(data, b"cache-status") or b"")
        self.assertEqual(len(self.connector.attempts), 2)
        sent = self.upstreamAnswers(b"HTTP/1.1 304 Not Modified\r\nConnection: close\r\nCache-Control: max-age=100\r\n\r\n")
        self.assertIn(b'If-None-Match: "v1"', sent.value())
        self.assertEqual(client.value(), data)
        _, again = self.request()
        self.assertEqual(field(again.value(), b"cache-status"), b"txproxy; hit; ttl=100")
        # The connection goes on.
        self.request(proto=proto)
        self.assertEqual(client.value().count(b"body"), 2)

    def test_staleWhileRevalidateNew200(self) -> None:
        """
        A background revalidation answered 200 stores the new response;
        the client saw only the stale one.
        """
        self.fill(b"/x", b"old", b"Cache-Control: max-age=10, stale-while-revalidate=60", b'ETag: "v1"')
        self.clock.advance(20)
        _, client = self.request()
        self.upstreamAnswers(response(b"new", b"200 OK", b"Cache-Control: max-age=100"))
        self.assertTrue(client.value().endswith(b"old"))
        self.assertNotIn(b"new", client.value())
        _, again = self.request()
        self.assertTrue(again.value().endswith(b"new"))

    def test_staleIfErrorResponse(self) -> None:
        """
        A 503 from the upstream is replaced by the stale response within
        stale-if-error.
        """
        self.fill(b"/x", b"body", b"Cache-Control: max-age=10, stale-if-error=60", b'ETag: "v1"')
        self.clock.advance(20)
        _, client = self.request()
        self.upstreamAnswers(response(b"down", b"503 Service Unavailable"))
        data = client.value()
        self.assertTrue(data.startswith(b"HTTP/1.1 200 OK"), data)
        self.assertTrue(data.endswith(b"\r\n\r\nbody"))
        self.assertNotIn(b"down", data)
        self.assertIn(b"stale-if-error", field(data, b"cache-status") or b"")
        self.assertEqual(self.cache.results["stale"], 1)

    def test_staleIfErrorWithoutValidators(self) -> None:
        """
        stale-if-error applies to a stale response without validators too
        (forwarded unconditionally, answered 500).
        """
        self.fill(b"/x", b"body", b"Cache-Control: max-age=10, stale-if-error=60")
        self.clock.advance(20)
        _, client = self.request()
        sent = self.upstreamAnswers(response(b"oops", b"500 Internal Server Error"))
        self.assertNotIn(b"If-", sent.value())
        self.assertTrue(client.value().endswith(b"\r\n\r\nbody"), client.value())
        self.assertEqual(self.cache.results, {"hit": 0, "miss": 1, "stale": 1, "revalidated": 0, "bypass": 0})

    def test_staleIfErrorUnreachable(self) -> None:
        """
        An upstream that cannot be reached: the stale response within
        stale-if-error, instead of a 502.
        """
        self.fill(b"/x", b"body", b"Cache-Control: max-age=10, stale-if-error=60", b'ETag: "v1"')
        self.clock.advance(20)
        _, client = self.request()
        self.connector.last.fail(error.ConnectionRefusedError())
        data = client.value()
        self.assertTrue(data.startswith(b"HTTP/1.1 200 OK"), data)
        self.assertTrue(data.endswith(b"body"))

    def test_noStaleIfErrorIs502(self) -> None:
        """
        Without stale-if-error an unreachable upstream is a 502.
        """
        self.fill(b"/x", b"body", b"Cache-Control: max-age=10", b'ETag: "v1"')
        self.clock.advance(20)
        _, client = self.request()
        self.connector.last.fail(error.ConnectionRefusedError())
        self.assertTrue(client.value().startswith(b"HTTP/1.1 502 "), client.value())


class CollapsingTests(CacheTestCase):
    def test_concurrentMissesCollapse(self) -> None:
        """
        Concurrent misses for one URL make one upstream request; the others
        are answered from what it stored.
        """
        clients = [self.request()[1] for _ in range(5)]
        self.assertEqual(len(self.connector.attempts), 1)
        self.upstreamAnswers(response(b"shared", b"200 OK", b"Cache-Control: max-age=60"))
        for client in clients:
            self.assertTrue(client.value().endswith(b"shared"), client.value())
        self.assertEqual(len(self.connector.attempts), 1)
        statuses = [field(c.value(), b"cache-status") for c in clients[1:]]
        self.assertEqual(statuses, [b"txproxy; hit; ttl=60; collapsed"] * 4)

    def test_uncacheableReleasesWaiters(self) -> None:
        """
        When the first response is not storable, the waiters go upstream
        themselves at once (no serialisation behind an uncacheable URL).
        """
        clients = [self.request()[1] for _ in range(3)]
        self.upstreamAnswers(response(b"private", b"200 OK", b"Cache-Control: private"))
        self.assertEqual(len(self.connector.attempts), 3)
        for i, attempt in enumerate(self.connector.attempts[1:]):
            attempt.succeed()
            attempt.protocol.dataReceived(response(b"mine%d" % i, b"200 OK", b"Cache-Control: private"))
        self.assertTrue(clients[0].value().endswith(b"private"))
        self.assertTrue(clients[1].value().endswith(b"mine0"))
        self.assertTrue(clients[2].value().endswith(b"mine1"))

    def test_tooLargeReleasesWaitersAtOnce(self) -> None:
        """
        A first response whose Content-Length is over the largest object
        releases the waiters as soon as its head arrives.
        """
        self.cache.store.maxObject = 10
        _, first = self.request()
        self.request()
        self.upstreamAnswers(b"HTTP/1.1 200 OK\r\nConnection: close\r\nCache-Control: max-age=60\r\n"
                             b"Content-Length: 100\r\n\r\n0123")
        self.assertEqual(len(self.connector.attempts), 2)
        self.assertIn(b'detail="too large"', field(first.value(), b"cache-status") or b"")

    def test_waitersBounded(self) -> None:
        """
        A waiter goes upstream itself after half the connect timeout.
        """
        self.request()
        _, waiter = self.request()
        self.clock.advance(5.1)
        self.assertEqual(len(self.connector.attempts), 2)
        self.connector.last.succeed()
        self.connector.last.protocol.dataReceived(response(b"own", b"200 OK", b"Cache-Control: max-age=60"))
        self.assertTrue(waiter.value().endswith(b"own"))

    def test_staleFlightNotJoined(self) -> None:
        """
        A request upstream for longer than STALE_FLIGHT is not waited for by
        new requests; when it lands it does not release a newer flight.
        """
        self.factory.listener = _listener("a.test=http://192.0.2.1:8001", connect_timeout=100,
                                          response_timeout=100)
        _, first = self.request()
        self.clock.advance(31)
        _, second = self.request()
        self.assertEqual(len(self.connector.attempts), 2)
        _, third = self.request()
        self.assertEqual(len(self.connector.attempts), 2)
        self.connector.attempts[0].succeed()
        self.connector.attempts[0].protocol.dataReceived(response(b"old", b"200 OK", b"Cache-Control: no-store"))
        self.assertEqual(len(self.connector.attempts), 2)
        self.upstreamAnswers(response(b"new", b"200 OK", b"Cache-Control: max-age=60"))
        self.assertTrue(third.value().endswith(b"new"))

    def test_tierAnswerAfterClientLeft(self) -> None:
        """
        A shared tier answering after the client left starts nothing (no
        flight is left behind for the URL).
        """
        tier = FakeTier()
        pending: defer.Deferred = defer.Deferred()
        tier.get = lambda u, v: pending  # type: ignore[method-assign]
        self.cache.tier = tier
        proto, _ = self.request()
        proto.connectionLost(Failure(Exception("bye")))
        pending.callback(None)
        self.assertEqual(self.connector.attempts, [])
        self.assertEqual(self.cache._flights, {})

    def test_leaderGoneReleasesWaiters(self) -> None:
        """
        The first client going away releases the waiters upstream.
        """
        leader, _ = self.request()
        _, waiter = self.request()
        leader.transport.loseConnection()
        leader.connectionLost(Failure(Exception("bye")))
        self.assertEqual(len(self.connector.attempts), 2)


class VaryTests(CacheTestCase):
    def test_variants(self) -> None:
        """
        Each set of selecting headers gets its variant.
        """
        _, a = self.request(b"/v", b"Accept: text/a")
        self.upstreamAnswers(response(b"A", b"200 OK", b"Cache-Control: max-age=60", b"Vary: Accept"))
        _, b = self.request(b"/v", b"Accept: text/b")
        self.assertEqual(len(self.connector.attempts), 2)
        self.assertEqual(field(b.value(), b"cache-status"), None)
        self.upstreamAnswers(response(b"B", b"200 OK", b"Cache-Control: max-age=60", b"Vary: Accept"))
        self.assertIn(b"fwd=vary-miss", field(b.value(), b"cache-status") or b"")
        _, a2 = self.request(b"/v", b"Accept: text/a")
        _, b2 = self.request(b"/v", b"Accept: text/b")
        self.assertTrue(a2.value().endswith(b"A"))
        self.assertTrue(b2.value().endswith(b"B"))
        self.assertEqual(len(self.connector.attempts), 2)

    def test_varyStarNeverServed(self) -> None:
        """
        A response with Vary: * is never served from the cache.
        """
        self.fill(b"/x", b"star", b"Cache-Control: max-age=60", b"Vary: *")
        self.request()
        self.assertEqual(len(self.connector.attempts), 2)


class InvalidationTests(CacheTestCase):
    def test_postInvalidates(self) -> None:
        """
        A successful POST invalidates its target and same-origin Location.
        """
        self.fill(b"/x")
        self.fill(b"/y")
        self.assertEqual(len(self.cache.store), 2)
        proto, client = connect(self.factory, ("203.0.113.9", 5000))
        proto.dataReceived(b"POST /x HTTP/1.1\r\nHost: a.test\r\nContent-Length: 1\r\n\r\nz")
        self.upstreamAnswers(response(b"", b"201 Created", b"Location: /y"))
        self.assertEqual(len(self.cache.store), 0)
        self.assertIn(b"fwd=bypass", field(client.value(), b"cache-status") or b"")

    def test_failedPostKeeps(self) -> None:
        """
        An error response to an unsafe method invalidates nothing.
        """
        self.fill(b"/x")
        proto, _ = connect(self.factory, ("203.0.113.9", 5000))
        proto.dataReceived(b"DELETE /x HTTP/1.1\r\nHost: a.test\r\n\r\n")
        self.upstreamAnswers(response(b"no", b"500 Internal Server Error"))
        self.assertEqual(len(self.cache.store), 1)


class SafetyTests(CacheTestCase):
    def test_privateNotStored(self) -> None:
        """
        A private response is not served to the next client.
        """
        self.fill(b"/x", b"mine", b"Cache-Control: private, max-age=60")
        self.request()
        self.assertEqual(len(self.connector.attempts), 2)

    def test_setCookieNotStored(self) -> None:
        """
        A response setting a cookie is not stored without public/s-maxage.
        """
        self.fill(b"/x", b"mine", b"Cache-Control: max-age=60", b"Set-Cookie: session=secret")
        self.request()
        self.assertEqual(len(self.connector.attempts), 2)

    def test_setCookieNeverShared(self) -> None:
        """
        A public response with Set-Cookie is stored, but the cookie goes
        only to the client whose request fetched it.
        """
        first = self.fill(b"/x", b"pub", b"Cache-Control: public, max-age=60", b"Set-Cookie: session=secret")
        self.assertIn(b"Set-Cookie: session=secret", first)
        _, client = self.request()
        self.assertTrue(client.value().endswith(b"pub"))
        self.assertNotIn(b"session=secret", client.value())
        self.assertEqual(len(self.connector.attempts), 1)

    def test_connectionListedNotServed(self) -> None:
        """
        The fields an upstream response's Connection lists are not stored
        (nor sent to the first client); the others are served from the
        cache.
        """
        first = self.fill(b"/x", b"body", b"Cache-Control: max-age=60", b"Connection: a, b", b"a: 1", b"b: 2",
                          b"c: 3")
        self.assertIsNone(field(first, b"a"))
        _, client = self.request()
        data = client.value()
        self.assertEqual(field(data, b"cache-status"), b"txproxy; hit; ttl=60")
        self.assertIsNone(field(data, b"a"))
        self.assertIsNone(field(data, b"b"))
        self.assertEqual(field(data, b"c"), b"3")

    def test_mustUnderstandUnknownStatus(self) -> None:
        """
        must-understand with a status the cache does not understand: not
        stored, passed on.
        """
        _, client = self.request()
        self.upstreamAnswers(response(b"odd", b"599 Odd", self.date(), b"Cache-Control: max-age=3600, must-understand"))
        self.assertTrue(client.value().startswith(b"HTTP/1.1 599 Odd\r\n"))
        self.assertIn(b'detail="must-understand"', field(client.value(), b"cache-status") or b"")
        self.request()
        self.assertEqual(len(self.connector.attempts), 2)

    def test_mustUnderstandNoStore(self) -> None:
        """
        must-understand with an understood status overrides no-store.
        """
        self.fill(b"/x", b"body", b"Cache-Control: max-age=60, must-understand, no-store")
        _, client = self.request()
        self.assertEqual(field(client.value(), b"cache-status"), b"txproxy; hit; ttl=60")
        self.assertEqual(len(self.connector.attempts), 1)

    def test_authorization(self) -> None:
        """
        A response to a request with Authorization is not served to others
        unless it says public.
        """
        self.request(b"/x", b"Authorization: Basic dTpw")
        self.upstreamAnswers(response(b"alice", b"200 OK", b"Cache-Control: max-age=60"))
        _, client = self.request()
        self.assertEqual(len(self.connector.attempts), 2)
        self.upstreamAnswers(response(b"anon", b"200 OK", b"Cache-Control: max-age=60"))
        self.assertTrue(client.value().endswith(b"anon"))

    def test_xForwardedHostNotInKey(self) -> None:
        """
        X-Forwarded-Host from a client is neither part of the key nor what
        the origin sees: a response stored for it is the one for the Host.
        """
        _, attacker = self.request(b"/x", b"X-Forwarded-Host: evil.test")
        sent = self.upstreamAnswers(response(b"page", b"200 OK", b"Cache-Control: max-age=60"))
        self.assertNotIn(b"evil.test", sent.value())
        self.assertIn(b"X-Forwarded-Host: a.test\r\n", sent.value())
        _, victim = self.request()
        self.assertTrue(victim.value().endswith(b"page"))
        self.assertEqual(len(self.connector.attempts), 1)

    def test_xOriginalURLBypasses(self) -> None:
        """
        A request with X-Original-URL or X-Rewrite-URL is never answered
        from nor stored in the cache (an origin that honours them would
        otherwise poison the entry of another URL).
        """
        self.fill(b"/x", b"public page")
        for name in (b"X-Original-URL", b"X-Rewrite-URL"):
            _, client = self.request(b"/x", name + b": /admin")
            self.upstreamAnswers(response(b"admin page", b"200 OK", b"Cache-Control: max-age=60"))
            self.assertTrue(client.value().endswith(b"admin page"))
        _, victim = self.request()
        self.assertTrue(victim.value().endswith(b"public page"))
        self.assertEqual(len(self.connector.attempts), 3)

    def test_hostCaseAndPort(self) -> None:
        """
        Host spellings of one origin (case, explicit default port) share
        one entry.
        """
        self.fill(b"/x", b"one")
        for host in (b"A.TEST", b"a.test:80", b"A.Test:80"):
            _, client = self.request(host=host)
            self.assertTrue(client.value().endswith(b"one"), host)
        self.assertEqual(len(self.connector.attempts), 1)

    def test_otherPortOtherKey(self) -> None:
        """
        Another port is another origin.
        """
        self.factory = self.makeFactory("a.test=http://192.0.2.1:8001")
        self.fill(b"/x", b"one")
        self.request(host=b"a.test:8080")
        self.assertEqual(len(self.connector.attempts), 2)


class SurrogateTests(CacheTestCase):
    """
    A reverse-mode cache (C{surrogate}) follows Surrogate-Control and
    removes it from what it passes on.
    """

    def setUp(self) -> None:
        super().setUp()
        self.cache.surrogate = True

    def test_noStoreWins(self) -> None:
        """
        Surrogate-Control: no-store is not stored, whatever Cache-Control
        and Expires say; the field is not passed on.
        """
        first = self.fill(b"/x", b"body", b"Surrogate-Control: no-store", b"Cache-Control: max-age=3600",
                          b"Expires: " + formatdate(T0 + 3600, usegmt=True).encode())
        self.assertIsNone(field(first, b"surrogate-control"))
        self.assertEqual(field(first, b"cache-control"), b"max-age=3600")
        self.assertIn(b'detail="no-store"', field(first, b"cache-status") or b"")
        self.request()
        self.assertEqual(len(self.connector.attempts), 2)

    def test_maxAgeOverridesNoStore(self) -> None:
        """
        Surrogate-Control: max-age is the freshness this cache uses, even
        with Cache-Control: no-store, which hits still carry to the client
        (it is for the caches after this one); stale after that max-age.
        """
        first = self.fill(b"/x", b"body", b"Surrogate-Control: max-age=100", b"Cache-Control: no-store")
        self.assertIsNone(field(first, b"surrogate-control"))
        self.clock.advance(10)
        _, client = self.request()
        data = client.value()
        self.assertEqual(field(data, b"cache-status"), b"txproxy; hit; ttl=90")
        self.assertEqual(field(data, b"cache-control"), b"no-store")
        self.assertIsNone(field(data, b"surrogate-control"))
        self.assertNotIn(b":surrogate-control", data.lower())
        self.assertEqual(len(self.connector.attempts), 1)
        self.clock.advance(91)
        self.request()
        self.assertEqual(len(self.connector.attempts), 2)

    def test_privateStillWins(self) -> None:
        """
        Cache-Control: private keeps a response out of the cache even with
        Surrogate-Control: max-age.
        """
        self.fill(b"/x", b"mine", b"Surrogate-Control: max-age=100", b"Cache-Control: private")
        self.request()
        self.assertEqual(len(self.connector.attempts), 2)

    def test_targetedIgnored(self) -> None:
        """
        A directive targeted at a named surrogate is not for this cache:
        Cache-Control decides (here: not stored); the field is removed all
        the same.
        """
        first = self.fill(b"/x", b"body", b"Surrogate-Control: max-age=100;edge", b"Cache-Control: no-store")
        self.assertIsNone(field(first, b"surrogate-control"))
        self.request()
        self.assertEqual(len(self.connector.attempts), 2)

    def test_capabilityAnnounced(self) -> None:
        """
        Requests going upstream announce Surrogate-Capability (misses and
        revalidations alike); a directive targeted at this cache is
        followed, one targeted at another device is not.
        """
        _, client = self.request()
        sent = self.upstreamAnswers(response(b"body", b"200 OK", self.date(), b'ETag: "v"', b"Cache-Control: no-store",
                                             b"Surrogate-Control: max-age=10;txproxy, max-age=1000;other"))
        self.assertIn(b'\r\nSurrogate-Capability: txproxy="Surrogate/1.0"\r\n', sent.value())
        self.assertIsNone(field(client.value(), b"surrogate-control"))
        self.clock.advance(5)
        _, hit = self.request()
        self.assertEqual(field(hit.value(), b"cache-status"), b"txproxy; hit; ttl=5")
        self.clock.advance(10)
        self.request()
        self.assertEqual(len(self.connector.attempts), 2)
        attempt = self.connector.last
        if attempt.transport is None:
            attempt.succeed()
        revalidation = attempt.transport.value()
        self.assertIn(b'If-None-Match: "v"\r\n', revalidation)
        self.assertIn(b'Surrogate-Capability: txproxy="Surrogate/1.0"\r\n', revalidation)

    def test_cdnCacheControl(self) -> None:
        """
        CDN-Cache-Control (RFC 9213) decides ahead of Cache-Control, and
        goes on to the client (unlike Surrogate-Control).
        """
        first = self.fill(b"/x", b"body", b"CDN-Cache-Control: max-age=100", b"Cache-Control: no-store")
        self.assertEqual(field(first, b"cdn-cache-control"), b"max-age=100")
        self.clock.advance(10)
        _, client = self.request()
        self.assertEqual(field(client.value(), b"cache-status"), b"txproxy; hit; ttl=90")
        self.assertEqual(field(client.value(), b"cdn-cache-control"), b"max-age=100")
        self.assertEqual(field(client.value(), b"cache-control"), b"no-store")
        self.fill(b"/y", b"body", b"CDN-Cache-Control: no-store", b"Cache-Control: max-age=100")
        self.request(b"/y")
        self.assertEqual(len(self.connector.attempts), 3)

    def test_graceIsStaleIfError(self) -> None:
        """
        max-age=N+M: fresh for N, then served for M more when the origin
        fails.
        """
        self.fill(b"/x", b"body", b"Surrogate-Control: max-age=10+100")
        self.clock.advance(20)
        _, client = self.request()
        self.upstreamAnswers(response(b"down", b"503 Service Unavailable", self.date()))
        self.assertTrue(client.value().endswith(b"\r\n\r\nbody"), client.value())

    def test_304Updates(self) -> None:
        """
        A 304's Surrogate-Control refreshes the stored one (and never
        reaches the client).
        """
        self.fill(b"/x", b"body", b"Surrogate-Control: max-age=10", b'ETag: "v"', b"Cache-Control: no-store")
        self.clock.advance(11)
        _, client = self.request()
        self.upstreamAnswers(b"HTTP/1.1 304 Not Modified\r\nConnection: close\r\nSurrogate-Control: max-age=500\r\n"
                             + self.date() + b"\r\n\r\n")
        self.assertTrue(client.value().endswith(b"body"))
        self.assertIsNone(field(client.value(), b"surrogate-control"))
        self.clock.advance(100)
        _, again = self.request()
        self.assertEqual(field(again.value(), b"cache-status"), b"txproxy; hit; ttl=400")

    def test_routeWithoutCachePassesItOn(self) -> None:
        """
        On a route with cache = false the cache does nothing: the field
        goes on.
        """
        route = config.RouteConfig(host="a.test", upstreams=(config.UpstreamURL("http", "192.0.2.1", 80),),
                                   cache=False)
        listener = config.ListenerConfig(listen=("tcp:0",), mode="reverse", name="web", routes=(route,))
        self.factory = self.makeFactory(listener=listener)
        self.cache.surrogate = True
        _, client = self.request()
        sent = self.upstreamAnswers(response(b"body", b"200 OK", self.date(), b"Surrogate-Control: max-age=100"))
        self.assertNotIn(b"surrogate-capability", sent.value().lower())
        self.assertEqual(field(client.value(), b"surrogate-control"), b"max-age=100")

    def test_forwardModeIgnoresIt(self) -> None:
        """
        Not a surrogate (forward mode): Surrogate-Control is neither
        followed nor removed.
        """
        self.cache.surrogate = False
        _, first_ = self.request()
        sent = self.upstreamAnswers(response(b"body", b"200 OK", self.date(), b"Surrogate-Control: no-store",
                                             b"Cache-Control: max-age=60"))
        self.assertNotIn(b"surrogate-capability", sent.value().lower())
        first = first_.value()
        self.assertNotIn(b"surrogate-capability", sent.value().lower())
        self.assertEqual(field(first, b"surrogate-control"), b"no-store")
        _, client = self.request()
        self.assertEqual(field(client.value(), b"surrogate-control"), b"no-store")
        self.assertEqual(len(self.connector.attempts), 1)


class ForwardModeTests(SynchronousTestCase):
    def test_forwardHit(self) -> None:
        """
        A forward proxy with a cache answers a repeated absolute-URI
        request from it, the key normalised like the reverse proxy's.
        """
        clock = Clock()
        clock.advance(T0)
        connector = FakeConnector({"origin.test": ["192.0.2.7"]})
        factory = forwardFactory(connector=connector, clock=clock)
        factory.cache = HTTPCache(1 << 20, clock=clock)
        proto, client = connect(factory, ("127.0.0.1", 4000))
        proto.dataReceived(b"GET http://origin.test/p HTTP/1.1\r\nHost: origin.test\r\n\r\n")
        attempt = connector.last
        attempt.succeed()
        attempt.protocol.dataReceived(response(b"fwd", b"200 OK", b"Cache-Control: max-age=60"))
        proto2, client2 = connect(factory, ("127.0.0.1", 4001))
        proto2.dataReceived(b"GET http://ORIGIN.test:80/p HTTP/1.1\r\nHost: origin.test\r\n\r\n")
        self.assertTrue(client2.value().endswith(b"fwd"))
        self.assertIn(b"Cache-Status: txproxy; hit", client2.value())
        self.assertEqual(len(connector.attempts), 1)


class CacheServiceTests(SynchronousTestCase):
    def listener(self, **options: Any) -> Any:
        return _listener("a.test=http://192.0.2.1:8001", **options)

    def test_keptAcrossReloads(self) -> None:
        """
        A listener's cache is kept by name; a smaller size evicts to fit.
        """
        service = CacheService(Clock())
        cache = service.cacheFor(self.listener(cache="1M"))
        assert cache is not None
        for i in range(100):
            cache.store.insert(entry(url=b"http://a/%d" % i, body=b"x" * 1000))
        again = service.cacheFor(self.listener(cache="20K"))
        self.assertIs(again, cache)
        self.assertLessEqual(cache.store.bytes, 20 * 1024)
        self.assertGreater(len(cache.store), 0)
        self.assertIsNone(service.cacheFor(self.listener()))
        self.assertEqual(service.caches, {})

    def test_surrogateInReverseModeOnly(self) -> None:
        """
        A reverse listener's cache is a surrogate, a forward one's is not
        (also when a reload keeps the cache).
        """
        service = CacheService(Clock())
        cache = service.cacheFor(self.listener(cache="1M"))
        assert cache is not None
        self.assertTrue(cache.surrogate)
        forward = config.fromFlags(["tcp:0"], [("mode", "forward"), ("name", "web"), ("cache", "1M")]).listeners[0]
        again = service.cacheFor(forward)
        self.assertIs(again, cache)
        self.assertFalse(cache.surrogate)

    def test_purge(self) -> None:
        """
        A purge by URL removes every variant and counts them.
        """
        service = CacheService(Clock())
        cache = service.cacheFor(self.listener(cache="1M"))
        assert cache is not None
        cache.store.insert(entry(url=b"http://a.test/x", variant=b"1"))
        cache.store.insert(entry(url=b"http://a.test/x", variant=b"2"))
        self.assertEqual(self.successResultOf(service.purge("http://A.test:80/x")), 2)
        self.assertEqual(self.successResultOf(service.purge("http://a.test/x")), 0)
        self.assertRaises(ValueError, service.purge, "not a url")
        self.assertEqual(purgeKey("https://a.test:443/p?q=1"), b"https://a.test/p?q=1")

    def test_redisTierMissing(self) -> None:
        """
        --cache-redis without the tier's module is a configuration error,
        never a traceback.
        """
        saved = sys.modules.get("txproxy.cache.redis")
        sys.modules["txproxy.cache.redis"] = None  # type: ignore[assignment]
        try:
            service = CacheService(Clock())
            self.assertRaises(ConfigError, service.cacheFor, self.listener(cache="1M", cache_redis="redis://127.0.0.1:1/0"))
        finally:
            if saved is None:
                del sys.modules["txproxy.cache.redis"]
            else:
                sys.modules["txproxy.cache.redis"] = saved


class FakeTier:
    """
    The shared tier's interface in memory (the contract of
    C{txproxy.cache.redis.RedisTier}).
    """

    def __init__(self) -> None:
        self.data: dict = {}
        self.available = True
        self.puts: List[Tuple[bytes, bytes, float]] = []

    def get(self, urlKey: bytes, variantKey: bytes) -> defer.Deferred:
        return defer.succeed(self.data.get((urlKey, variantKey)))

    def variants(self, urlKey: bytes) -> defer.Deferred:
        return defer.succeed([v for (u, v) in self.data if u == urlKey])

    def put(self, urlKey: bytes, variantKey: bytes, blob: bytes, ttl: float) -> None:
        self.puts.append((urlKey, variantKey, ttl))
        self.data[(urlKey, variantKey)] = blob

    def purge(self, urlKey: bytes) -> defer.Deferred:
        keys = [k for k in self.data if k[0] == urlKey]
        for k in keys:
            del self.data[k]
        return defer.succeed(len(keys))


class SharedTierTests(CacheTestCase):
    def test_storedInTierAndServedFromIt(self) -> None:
        """
        A stored response is put in the shared tier with the time it may
        still be served; another process's memory miss is served from the
        tier without the origin.
        """
        tier = FakeTier()
        self.cache.tier = tier
        self.fill(b"/x", b"shared", b"Cache-Control: max-age=60, stale-if-error=30")
        self.assertEqual(tier.puts, [(b"http://a.test/x", b"", 90.0)])
        # Another process: empty memory, same tier.
        self.factory = self.makeFactory("a.test=http://192.0.2.1:8001")
        self.cache.tier = tier
        self.clock.advance(10)
        _, client = self.request()
        self.assertTrue(client.value().endswith(b"shared"))
        self.assertEqual(field(client.value(), b"age"), b"10")
        self.assertEqual(len(self.connector.attempts), 1)
        self.assertEqual(self.cache.tierHits, 1)

    def test_tierVariants(self) -> None:
        """
        A variant stored under a Vary key is found in the tier.
        """
        tier = FakeTier()
        self.cache.tier = tier
        self.request(b"/v", b"Accept: text/a")
        self.upstreamAnswers(response(b"A", b"200 OK", b"Cache-Control: max-age=60", b"Vary: Accept"))
        self.factory = self.makeFactory("a.test=http://192.0.2.1:8001")
        self.cache.tier = tier
        _, client = self.request(b"/v", b"Accept: text/a")
        self.assertTrue(client.value().endswith(b"A"))
        self.assertEqual(len(self.connector.attempts), 1)

    def test_tierUnavailable(self) -> None:
        """
        While the tier is unavailable it is not asked.
        """
        tier = FakeTier()
        tier.available = False
        self.cache.tier = tier
        self.fill()
        self.assertEqual(tier.puts, [])

    def test_tierOutageCounted(self) -> None:
        """
        While the tier is unavailable, each memory miss not looked up in it
        and each response not shared is counted; with the tier's own
        timeouts, errors and dropped stores, /metrics has them all and
        whether the tier is available.
        """
        tier = FakeRedisTier(self.clock)
        tier.start()
        self.cache.tier = tier
        tier.available = False
        self.fill()
        self.assertEqual(len(self.connector.attempts), 1)
        self.assertEqual((self.cache.tierSkipped["lookup"], self.cache.tierSkipped["store"]), (1, 1))
        self.assertEqual(tier.data, {})
        # A hit from memory does not need the tier: nothing more skipped.
        self.request()
        self.assertEqual(self.cache.tierSkipped["lookup"], 1)
        tier.timeouts, tier.errors, tier.dropped = 2, 3, 4
        self.cache.tierErrors = 1
        samples = {(s.name, s.labels.get("operation")): s.value
                   for family in cacheMetricFamilies([("web", "reverse", self.cache)], "0")
                   for s in family.samples}
        self.assertEqual(samples[("txproxy_cache_redis_available", None)], 0.0)
        self.assertEqual(samples[("txproxy_cache_redis_skipped_total", "lookup")], 1.0)
        self.assertEqual(samples[("txproxy_cache_redis_skipped_total", "store")], 1.0)
        self.assertEqual(samples[("txproxy_cache_redis_timeouts_total", None)], 2.0)
        self.assertEqual(samples[("txproxy_cache_redis_errors_total", None)], 4.0)
        self.assertEqual(samples[("txproxy_cache_redis_dropped_total", None)], 4.0)
        self.assertEqual(samples[("txproxy_cache_redis_hits_total", None)], 0.0)
        # Back: looked up and shared again, and counted as available.
        tier.available = True
        self.fill(b"/y")
        self.assertEqual(self.cache.tierSkipped, {"lookup": 1, "store": 1})
        self.assertIn((b"http://a.test/y", b""), tier.data)
        samples = {(s.name, s.labels.get("operation")): s.value
                   for family in cacheMetricFamilies([("web", "reverse", self.cache)], "0")
                   for s in family.samples}
        self.assertEqual(samples[("txproxy_cache_redis_available", None)], 1.0)

    def test_noTierNoTierMetrics(self) -> None:
        """
        Without a shared tier there is no Redis metric and nothing is
        counted as skipped.
        """
        self.fill()
        self.assertEqual(self.cache.tierSkipped, {"lookup": 0, "store": 0})
        names = {s.name for family in cacheMetricFamilies([("web", "reverse", self.cache)], "0")
                 for s in family.samples}
        self.assertEqual({n for n in names if "redis" in n}, set())

    def test_tierGarbageIgnored(self) -> None:
        """
        A blob of another layout in the tier is a miss.
        """
        tier = FakeTier()
        tier.data[(b"http://a.test/x", b"")] = b"TXC9garbage"
        self.cache.tier = tier
        self.request()
        self.assertEqual(len(self.connector.attempts), 1)

    def test_purgeBothTiers(self) -> None:
        """
        A purge removes the URL from memory and the tier.
        """
        tier = FakeTier()
        self.cache.tier = tier
        self.fill()
        self.assertEqual(self.successResultOf(self.cache.purge(b"http://a.test/x")), 1)
        self.assertEqual((len(self.cache.store), tier.data), (0, {}))


class HTTP2Tests(SynchronousTestCase):
    """
    HTTP/2 clients: each stream runs the same protocol class, so the cache
    works for them unchanged.
    """

    def test_streamsHitAndCollapse(self) -> None:
        """
        Concurrent streams for one URL collapse into one upstream request;
        a later stream is a hit with Age and Cache-Status; HEAD too.
        """
        clock = Clock()
        clock.advance(T0)
        connector = FakeConnector()
        factory = reverseFactory({"*": "http://192.0.2.1:8080"}, connector=connector, clock=clock)
        factory.cache = cache = HTTPCache(1 << 20, clock=clock)
        proto, transport = connect(factory, ("203.0.113.9", 5000))
        client = Client(proto, transport)
        client.send()
        first, second = client.request(b"/x"), client.request(b"/x")
        self.assertEqual(len(connector.attempts), 1)
        attempt = connector.last
        attempt.succeed()
        attempt.protocol.dataReceived(response(b"over h2", b"200 OK", b"Cache-Control: max-age=60"))
        client.read()
        self.assertEqual((client.bodies[first], client.bodies[second]), (b"over h2", b"over h2"))
        clock.advance(3)
        third = client.request(b"/x")
        head = client.request(b"/x", method=b"HEAD")
        client.read()
        headers = dict(client.heads[third])
        self.assertEqual(client.bodies[third], b"over h2")
        self.assertEqual(headers[b"age"], b"3")
        self.assertEqual(headers[b"cache-status"], b"txproxy; hit; ttl=57")
        self.assertEqual(dict(client.heads[head])[b"content-length"], b"7")
        self.assertNotIn(head, client.bodies)
        self.assertIn(third, client.ended)
        self.assertEqual(len(connector.attempts), 1)
        self.assertEqual(cache.results["hit"], 3)


class StalePooledConnectionTests(CacheTestCase):
    """
    The cache's own upstream requests (revalidations) and the unsafe
    requests that invalidate, on a pooled keep-alive connection the server
    had just closed.
    """

    def keptAlive(self, *headers: bytes, body: bytes = b"body") -> FakeTransport:
        """
        A miss for /x answered on a keep-alive connection, now idle in the
        pool; that connection.
        """
        self.request()
        head = b"HTTP/1.1 200 OK\r\n" + b"".join(h + b"\r\n" for h in headers) + self.date() + b"\r\n"
        upstream = self.upstreamAnswers(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        self.assertEqual(len(self.factory.pool), 1)
        return upstream

    def test_revalidationRetriedOnFreshConnection(self) -> None:
        """
        A conditional request the cache sends on a reused connection that
        the server closes before answering is sent again, still
        conditional, on a fresh connection; its 304 serves the stored body.
        """
        upstream = self.keptAlive(b"Cache-Control: max-age=10", b'ETag: "v1"')
        self.clock.advance(11)
        _, client = self.request()
        self.assertEqual(len(self.connector.attempts), 1)
        self.assertIn(b'If-None-Match: "v1"\r\n', upstream.value())
        upstream.peerHalfClosed()
        self.assertEqual(len(self.connector.attempts), 2)
        sent = self.upstreamAnswers(b"HTTP/1.1 304 Not Modified\r\nCache-Control: max-age=100\r\n" + self.date() + b"\r\n\r\n")
        self.assertIn(b'If-None-Match: "v1"\r\n', sent.value())
        data = client.value()
        self.assertTrue(data.startswith(b"HTTP/1.1 200 OK\r\n"), data)
        self.assertTrue(data.endswith(b"\r\n\r\nbody"))
        self.assertEqual(self.cache.results["revalidated"], 1)

    def test_revalidationAfterResetRetried(self) -> None:
        """
        The same when the server resets the connection instead.
        """
        upstream = self.keptAlive(b"Cache-Control: max-age=10", b'ETag: "v1"')
        self.clock.advance(11)
        _, client = self.request()
        upstream.peerClosed(error.ConnectionLost("Connection reset by peer"))
        self.upstreamAnswers(b"HTTP/1.1 304 Not Modified\r\n" + self.date() + b"\r\n\r\n")
        self.assertTrue(client.value().endswith(b"\r\n\r\nbody"))
        self.assertEqual(self.records[-1].status, 200)

    def test_invalidatingPostNotLostOnClosedConnection(self) -> None:
        """
        A C{POST} (with a body: never sent twice) does not go on a pooled
        connection whose close the kernel already has: a fresh one carries
        it, its 201 invalidates the stored response.
        """
        upstream = self.keptAlive(b"Cache-Control: max-age=60")
        self.assertEqual(len(self.cache.store), 1)
        upstream.peerClosedUnseen()
        proto, client = connect(self.factory, ("203.0.113.9", 5000))
        proto.dataReceived(b"POST /x HTTP/1.1\r\nHost: a.test\r\nContent-Length: 1\r\n\r\nz")
        self.assertNotIn(b"POST", upstream.value())
        self.assertEqual(len(self.connector.attempts), 2)
        sent = self.upstreamAnswers(response(b"", b"201 Created"))
        self.assertTrue(sent.value().startswith(b"POST /x HTTP/1.1\r\n"))
        self.assertTrue(client.value().startswith(b"HTTP/1.1 201 Created\r\n"))
        self.assertEqual(len(self.cache.store), 0)
