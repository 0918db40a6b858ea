"""
Tests for tracing in the protocols (L{txproxy.tracing._semconv} and its
calls in the HTTP core and the TCP modes): propagation upstream, one span
per request, HTTP/2 stream, tunnel and relayed connection, their
attributes, the access record's ids, the hook; and that with tracing off
nothing changes.  Fake transports and clocks.
"""

from __future__ import annotations

import json
import re
from typing import Any, List

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from twisted.internet import defer, error
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.test_h2_server import Client, respond
from txproxy.accesslog import AccessRecord, formatJSON
from txproxy.forward import ForwardProxyProtocol
from txproxy.reverse import ReverseProxyProtocol
from txproxy.stream.tcp import TCPProxyFactory, TCPProxyProtocol
from txproxy.testing import FakeConnector, connect, forwardFactory, listenerConfig, reverseFactory
from txproxy.http import parseRequestHead
from txproxy.tracing import (
    STATUS_ERROR,
    BatchExporter,
    Span,
    Tracer,
    connectionAttributes,
    encodeHTTPSpan,
    encodeSpans,
    endSpan,
    startHTTPSpan,
)
from txproxy.tracing._otlp import encodeSpanField

TRACE = b"4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = b"00f067aa0ba902b7"
SAMPLED = b"00-" + TRACE + b"-" + PARENT + b"-01"


class _Sink:
    def __init__(self) -> None:
        self.spans: List[Span] = []

    def add(self, span: Span) -> None:
        self.spans.append(span)


def _header(sent: bytes, name: bytes) -> List[bytes]:
    head = sent.split(b"\r\n\r\n")[0]
    out = []
    for line in head.split(b"\r\n")[1:]:
        n, _, v = line.partition(b":")
        if n.strip().lower() == name:
            out.append(v.strip())
    return out


class TracingTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.connector = FakeConnector()
        self.sink = _Sink()
        self.records: List[AccessRecord] = []

    def log(self, record: AccessRecord) -> None:
        self.records.append(record)

    def reverse(self, ratio: float = 1.0, tracing: bool = True, protocol: Any = None) -> Any:
        f = reverseFactory({"a.test/api": "http://192.0.2.1:8080", "*": "http://192.0.2.2:8080"},
                           connector=self.connector, clock=self.clock, protocol=protocol)
        f.accessLog = self
        if tracing:
            f.tracer = Tracer(ratio, self.sink)
        return f

    def get(self, factory: Any, extra: bytes = b"", path: bytes = b"/api/users/7?x=1") -> Any:
        proto, client = connect(factory, ("203.0.113.9", 5000))
        proto.dataReceived(b"GET " + path + b" HTTP/1.1\r\nHost: a.test\r\nUser-Agent: t/1\r\n" + extra + b"\r\n")
        return proto, client

    def respond(self, body: bytes = b"hello") -> None:
        self.connector.last.protocol.dataReceived(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


class PropagationTests(TracingTestCase):
    """
    What the upstream request carries.
    """

    def test_continued(self) -> None:
        """
        A valid traceparent is continued: the upstream gets the same trace
        id with txproxy's span as parent, the sampled flag, and the
        tracestate; the one span is exported with the incoming parent.
        """
        self.get(self.reverse(), b"traceparent: " + SAMPLED + b"\r\ntracestate: congo=t61rcWkgMzE, rojo=00f0\r\n")
        sent = self.connector.last.succeed().value()
        self.respond()
        [span] = self.sink.spans
        self.assertEqual(_header(sent, b"traceparent"), [b"00-" + TRACE + b"-" + span.spanId + b"-01"])
        self.assertEqual(_header(sent, b"tracestate"), [b"congo=t61rcWkgMzE,rojo=00f0"])
        self.assertEqual((span.traceId, span.parentId), (TRACE, PARENT))
        self.assertNotEqual(span.spanId, PARENT)

    def test_fieldNamesInAnyCase(self) -> None:
        """
        Field names in any case are found (the raw head is searched without
        regard to case before the fields are).
        """
        for name in (b"TRACEPARENT", b"TraceParent"):
            self.get(self.reverse(), name + b": " + SAMPLED + b"\r\n")
            sent = self.connector.last.succeed().value()
            [value] = _header(sent, b"traceparent")
            self.assertTrue(value.startswith(b"00-" + TRACE + b"-"), value)

    def test_invalidReplaced(self) -> None:
        """
        An invalid traceparent (upper-case hex, all-zero ids, version ff,
        wrong length) is replaced by a new trace; its tracestate is
        dropped; exactly one traceparent goes upstream.
        """
        for bad in (b"00-" + TRACE.upper() + b"-" + PARENT + b"-01", b"00-" + b"0" * 32 + b"-" + PARENT + b"-01",
                    b"ff" + SAMPLED[2:], SAMPLED[:-1]):
            self.get(self.reverse(), b"traceparent: " + bad + b"\r\ntracestate: a=1\r\n")
            sent = self.connector.last.succeed().value()
            [value] = _header(sent, b"traceparent")
            self.assertNotIn(TRACE, value.lower(), bad)
            self.assertEqual(len(value), 55)
            self.assertEqual(_header(sent, b"tracestate"), [])

    def test_newTrace(self) -> None:
        """
        Without a traceparent, a new trace is started and sent upstream.
        """
        self.get(self.reverse())
        sent = self.connector.last.succeed().value()
        self.respond()
        [span] = self.sink.spans
        self.assertIsNone(span.parentId)
        self.assertEqual(_header(sent, b"traceparent"), [b"00-" + span.traceId + b"-" + span.spanId + b"-01"])

    def test_off(self) -> None:
        """
        With tracing off neither field is added or changed, valid or not.
        """
        bad = b"00-" + TRACE.upper() + b"-" + PARENT + b"-01"
        self.get(self.reverse(tracing=False), b"traceparent: " + bad + b"\r\ntracestate: a=1 , b=2\r\n")
        sent = self.connector.last.succeed().value()
        self.assertEqual(_header(sent, b"traceparent"), [bad])
        self.assertEqual(_header(sent, b"tracestate"), [b"a=1 , b=2"])
        self.get(self.reverse(tracing=False))
        self.assertEqual(_header(self.connector.last.succeed().value(), b"traceparent"), [])
        self.respond()
        self.assertEqual(self.records[-1].traceId, "")
        self.assertNotIn("trace_id", json.loads(formatJSON(self.records[-1])))

    def test_sampleZero(self) -> None:
        """
        At ratio 0 a new trace is propagated unsampled and not exported; a
        sampled parent is still recorded (parent-based).
        """
        factory = self.reverse(ratio=0.0)
        self.get(factory)
        sent = self.connector.last.succeed().value()
        self.respond()
        [value] = _header(sent, b"traceparent")
        self.assertTrue(value.endswith(b"-00"), value)
        self.assertEqual(self.sink.spans, [])
        self.get(factory, b"traceparent: " + SAMPLED + b"\r\n")
        self.respond()  # (on the pooled connection)
        self.assertEqual([s.traceId for s in self.sink.spans], [TRACE])

    def test_sampleZeroFieldAtSerialization(self) -> None:
        """
        At ratio 0 (no trace fields in the request, no hook) the
        traceparent line is added as the head is serialized: the upstream
        head is the request's with one last field, a new trace per
        request on one connection, and the access record has its ids.
        """
        factory = self.reverse(ratio=0.0)
        proto, client = self.get(factory)
        upstream = self.connector.last.succeed()
        self.respond()
        proto.dataReceived(b"GET /api/b HTTP/1.1\r\nHost: a.test\r\n\r\n")
        self.respond()
        heads = upstream.value().split(b"\r\n\r\n")[:2]
        values = []
        for head, record in zip(heads, self.records):
            lines = head.split(b"\r\n")
            name, _, value = lines[-1].partition(b": ")
            self.assertEqual(name, b"traceparent")
            self.assertEqual(value, b"00-%s-%s-00" % (record.traceId.encode(), record.spanId.encode()))
            self.assertEqual(sum(1 for line in lines if line.lower().startswith(b"traceparent:")), 1)
            values.append(value)
        self.assertEqual(len(values), 2)
        self.assertNotEqual(values[0][3:35], values[1][3:35])
        self.assertIsNone(proto._traceField)

    def test_rewriteHookSeesTraceparent(self) -> None:
        """
        With a rewriteRequest hook the traceparent is in the head the hook
        gets (and sent once).
        """
        seen = []

        class Rewriting(ReverseProxyProtocol):
            def rewriteRequest(self, request: Any, head: Any) -> Any:
                seen.append(head.get(b"traceparent"))
                return head

        self.get(self.reverse(ratio=0.0, protocol=Rewriting))
        sent = self.connector.last.succeed().value()
        [value] = _header(sent, b"traceparent")
        self.assertEqual(seen, [value])

    def test_sampleZeroSpanMadeWhenRead(self) -> None:
        """
        At ratio 0 a request without trace fields keeps only its
        traceparent line until C{self.span} is read (here by
        C{allowRequest}): then an unrecorded L{Span} with those ids, the
        ones sent upstream and logged; the next request gets a new trace.
        """
        seen: List[Any] = []

        class Reading(ReverseProxyProtocol):
            def allowRequest(self, request: Any) -> Any:
                seen.append((self._span, self.span, self.span))
                return super().allowRequest(request)

        proto, client = self.get(self.reverse(ratio=0.0, protocol=Reading))
        upstream = self.connector.last.succeed()
        self.respond()
        [(before, span, again)] = seen
        self.assertIsNone(before)
        self.assertIs(span, again)
        self.assertIsInstance(span, Span)
        self.assertFalse(span.sampled)
        self.assertIsNone(span.parentId)
        [value] = _header(upstream.value(), b"traceparent")
        self.assertEqual(value, span.traceparent())
        self.assertEqual((self.records[0].traceId, self.records[0].spanId), (span.traceIdText, span.spanIdText))
        self.assertIsNone(proto.span)
        proto.dataReceived(b"GET /api/b HTTP/1.1\r\nHost: a.test\r\n\r\n")
        self.respond()
        self.assertNotEqual(seen[1][1].traceId, span.traceId)
        self.assertEqual(self.sink.spans, [])

    def test_sampleZeroLineUnusedByRefusal(self) -> None:
        """
        At ratio 0 a request refused before any upstream still logs its
        ids, and no line is left for the connection's next request.
        """

        class Refusing(ReverseProxyProtocol):
            def allowRequest(self, request: Any) -> Any:
                return request.path != b"/api/no"

        factory = self.reverse(ratio=0.0, protocol=Refusing)
        proto, client = self.get(factory, path=b"/api/no")
        self.assertIn(b" 403 ", client.value().split(b"\r\n")[0])
        [record] = self.records
        self.assertEqual((len(record.traceId), len(record.spanId)), (32, 16))
        self.assertIsNone(proto._quickLine)
        self.assertIsNone(proto._traceField)
        self.assertIsNone(proto.span)

    def test_unsampledParentAtRatioOne(self) -> None:
        """
        An unsampled parent is obeyed at ratio 1: propagated with flag 00,
        not exported.
        """
        self.get(self.reverse(), b"traceparent: " + SAMPLED[:-2] + b"00\r\n")
        sent = self.connector.last.succeed().value()
        self.respond()
        self.assertTrue(_header(sent, b"traceparent")[0].startswith(b"00-" + TRACE + b"-"))
        self.assertTrue(_header(sent, b"traceparent")[0].endswith(b"-00"))
        self.assertEqual(self.sink.spans, [])


class HTTPSpanTests(TracingTestCase):
    """
    The span of each HTTP request.
    """

    def test_attributes(self) -> None:
        """
        The span carries the HTTP and network semantic conventions: method,
        route template (not the path), status, addresses, bytes; its name is
        method and route; the access record has its ids.
        """
        self.clock.advance(10)
        self.get(self.reverse())
        self.connector.last.succeed()
        self.clock.advance(0.25)
        self.respond(b"hello")
        [span] = self.sink.spans
        a = span.attributes
        self.assertEqual(span.name, "GET /api")
        self.assertEqual(span.kind, 2)
        self.assertEqual(a["http.request.method"], "GET")
        self.assertEqual(a["http.route"], "/api")
        self.assertEqual(a["txproxy.route"], "a.test/api")
        self.assertEqual(a["url.path"], "/api/users/7")
        self.assertEqual(a["url.scheme"], "http")
        self.assertEqual(a["http.response.status_code"], 200)
        self.assertEqual((a["server.address"], a["client.address"]), ("a.test", "203.0.113.9"))
        self.assertEqual((a["network.peer.address"], a["network.peer.port"]), ("203.0.113.9", 5000))
        self.assertEqual(a["network.protocol.version"], "1.1")
        self.assertEqual(a["user_agent.original"], "t/1")
        self.assertEqual(a["txproxy.upstream.address"], "192.0.2.1:8080")
        self.assertEqual(a["txproxy.bytes_down"], 5)
        self.assertNotIn("error.type", a)
        self.assertAlmostEqual(span.end - span.start, 0.25, places=6)  # type: ignore[operator]
        self.assertEqual([e[1] for e in span.events], ["upstream.connected"])
        record = self.records[0]
        self.assertEqual((record.traceId, record.spanId), (span.traceIdText, span.spanIdText))
        line = json.loads(formatJSON(record))
        self.assertEqual((line["trace_id"], line["span_id"]), (span.traceIdText, span.spanIdText))

    def test_keepAliveSpanPerRequest(self) -> None:
        """
        Two requests on one connection are two spans with their own ids,
        each propagated with its own parent id.
        """
        factory = self.reverse()
        proto, client = self.get(factory)
        upstream = self.connector.last.succeed()
        self.respond()
        proto.dataReceived(b"GET /api/b HTTP/1.1\r\nHost: a.test\r\n\r\n")
        self.respond()
        self.assertEqual(len(self.sink.spans), 2)
        first, second = self.sink.spans
        self.assertNotEqual(first.spanId, second.spanId)
        sent = upstream.value()
        self.assertIn(first.spanId, sent)
        self.assertIn(second.spanId, sent)
        self.assertEqual(second.name, "GET /api")
        self.assertEqual(second.attributes["url.path"], "/api/b")

    def test_stalePooledConnectionEvent(self) -> None:
        """
        A request with a body, for which a pooled connection is found
        already closed by the upstream, has an C{upstream.stale} event
        before the C{upstream.connected} of the fresh connection.
        """
        factory = self.reverse()
        proto, client = self.get(factory)
        upstream = self.connector.last.succeed()
        self.respond()
        upstream.peerClosedUnseen()
        proto.dataReceived(b"POST /api/b HTTP/1.1\r\nHost: a.test\r\nContent-Length: 1\r\n\r\nz")
        self.connector.last.succeed()
        self.respond()
        first, second = self.sink.spans
        self.assertEqual([e[1] for e in second.events], ["upstream.stale", "upstream.connected"])
        self.assertEqual(second.attributes["http.response.status_code"], 200)

    def test_refusalIsError(self) -> None:
        """
        A status txproxy produced (a 404: no route) carries error.type and
        the reason; only a 5xx sets the span's status to ERROR.
        """
        f = reverseFactory({"a.test": "http://192.0.2.1:8080"}, connector=self.connector, clock=self.clock)
        f.tracer = Tracer(1.0, self.sink)
        proto, client = connect(f)
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: other.test\r\n\r\n")
        [span] = self.sink.spans
        self.assertEqual(span.attributes["http.response.status_code"], 404)
        self.assertEqual(span.attributes["error.type"], "404")
        self.assertIn("no route", span.attributes["txproxy.reason"])
        self.assertEqual(span.statusCode, 0)

    def test_upstreamUnreachable(self) -> None:
        """
        An unreachable upstream: 502, status ERROR, a connect_failed event.
        """
        self.get(self.reverse())
        self.connector.last.fail(error.ConnectionRefusedError())
        [span] = self.sink.spans
        self.assertEqual(span.attributes["http.response.status_code"], 502)
        self.assertEqual(span.attributes["error.type"], "502")
        self.assertEqual(span.statusCode, STATUS_ERROR)
        self.assertIn("upstream.connect_failed", [e[1] for e in span.events])

    def test_clientGoneWhileDialling(self) -> None:
        """
        A client that leaves while its upstream is being dialled still ends
        its span (499), once.
        """
        proto, client = self.get(self.reverse())
        client.peerClosed()
        self.assertEqual([s.attributes["http.response.status_code"] for s in self.sink.spans], [499])

    def test_hook(self) -> None:
        """
        spanStarted lets a subclass add attributes and read the trace id,
        and later hooks can still add to C{self.span}.
        """
        seen: List[str] = []

        class Tenanted(ReverseProxyProtocol):
            def spanStarted(self, span: Span) -> None:
                span.setAttribute("tenant.id", "acme")
                seen.append(span.traceIdText)

            def rewriteResponse(self, request: Any, head: Any) -> Any:
                self.span.setAttribute("route.name", "users")
                return head

        self.get(self.reverse(protocol=Tenanted), b"traceparent: " + SAMPLED + b"\r\n")
        self.connector.last.succeed()
        self.respond()
        [span] = self.sink.spans
        self.assertEqual(seen, [TRACE.decode()])
        self.assertEqual(span.attributes["tenant.id"], "acme")
        self.assertEqual(span.attributes["route.name"], "users")

    def test_hookOverridesEncodedAttributes(self) -> None:
        """
        An attribute txproxy keeps encoded (the connection's, the route's)
        that a hook sets is exported once: the hook's value for one set at
        the start, txproxy's for one it sets at the end (as for any
        attribute); the others as txproxy set them.
        """

        class Hooked(ReverseProxyProtocol):
            def spanStarted(self, span: Span) -> None:
                span.setAttribute("client.address", "198.51.100.1")

            def rewriteResponse(self, request: Any, head: Any) -> Any:
                self.span.setAttribute("txproxy.mode", "custom")
                return head

        factory = self.reverse(protocol=Hooked)
        proto, _ = self.get(factory)
        self.connector.last.succeed()
        self.respond()
        proto.dataReceived(b"GET /api/b HTTP/1.1\r\nHost: a.test\r\n\r\n")
        self.respond()
        plain, _ = self.get(self.reverse())
        self.connector.last.succeed()
        self.respond()
        message = ExportTraceServiceRequest()
        message.ParseFromString(encodeSpans(self.sink.spans, {}))
        spans = message.resource_spans[0].scope_spans[0].spans
        self.assertEqual(len(spans), 3)
        for s, hooked in zip(spans, (True, True, False)):
            keys = [a.key for a in s.attributes]
            self.assertEqual(len(keys), len(set(keys)), keys)
            attrs = {a.key: a.value.string_value for a in s.attributes}
            self.assertEqual(attrs["client.address"], "198.51.100.1" if hooked else "203.0.113.9")
            self.assertEqual(attrs["txproxy.mode"], "reverse")
            self.assertEqual((attrs["txproxy.listener"], attrs["txproxy.route"], attrs["http.route"]),
                             (self.sink.spans[0].attributes["txproxy.listener"], "a.test/api", "/api"))
            self.assertEqual(attrs["network.peer.address"], "203.0.113.9")

    def test_hookNotCalledWhenOff(self) -> None:
        """
        With tracing off the hook never runs and C{span} stays L{None}.
        """
        called: List[Any] = []

        class Hooked(ReverseProxyProtocol):
            def spanStarted(self, span: Span) -> None:
                called.append(span)

        proto, _ = self.get(self.reverse(tracing=False, protocol=Hooked))
        self.assertIsNone(proto.span)
        self.assertEqual(called, [])


class H2SpanTests(TracingTestCase):
    """
    HTTP/2 streams run the same protocol class: a span each.
    """

    def twoStreams(self, factory: Any) -> None:
        """
        Two streams on one HTTP/2 connection, the first with a sampled
        traceparent, each answered.
        """
        proto, transport = connect(factory, ("203.0.113.9", 5000))
        client = Client(proto, transport)
        client.send()
        client.request(b"/api/a", extra=[(b"traceparent", SAMPLED)])
        client.request(b"/b")
        respond(self.connector, 0, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        respond(self.connector, 1, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        client.read()

    def test_spanPerStream(self) -> None:
        """
        Two streams, two spans, each propagated upstream, HTTP version 2.
        """
        factory = self.reverse()
        self.twoStreams(factory)
        self.assertEqual(len(self.sink.spans), 2)
        byName = {s.name: s for s in self.sink.spans}
        self.assertEqual(set(byName), {"GET /api", "GET /"})
        self.assertEqual(byName["GET /api"].traceId, TRACE)
        for span in self.sink.spans:
            self.assertEqual(span.attributes["network.protocol.version"], "2")
        sent = [a.transport.value() for a in self.connector.attempts]
        self.assertIn(b"00-" + TRACE + b"-" + byName["GET /api"].spanId + b"-01", sent[0])
        self.assertEqual([r.traceId for r in self.records].count(TRACE.decode()), 1)

    def test_sampleZeroStreams(self) -> None:
        """
        At ratio 0, a stream without trace fields gets a new unsampled
        trace (its line, no span made), and one with a sampled parent in
        the fields is continued and recorded: the fields of a stream,
        which has no raw head, are looked through instead.
        """
        factory = self.reverse(ratio=0.0)
        self.twoStreams(factory)
        [span] = self.sink.spans
        self.assertEqual((span.name, span.traceId), ("GET /api", TRACE))
        sent = [_header(a.transport.value(), b"traceparent") for a in self.connector.attempts]
        self.assertEqual(sent[0], [b"00-" + TRACE + b"-" + span.spanId + b"-01"])
        [fresh] = sent[1]
        self.assertTrue(fresh.endswith(b"-00"), fresh)
        self.assertNotIn(TRACE, fresh)
        self.assertEqual(sorted(r.traceId for r in self.records), sorted([TRACE.decode(), fresh[3:35].decode()]))


class TunnelSpanTests(TracingTestCase):
    """
    A CONNECT tunnel is one span, ended when the tunnel closes.
    """

    def test_absoluteFormScheme(self) -> None:
        """
        A forward proxy's absolute-form request has the target's scheme.
        """
        connector = FakeConnector({"site.test": ["192.0.2.8"]})
        factory = forwardFactory(connector=connector, clock=self.clock, protocol=ForwardProxyProtocol)
        factory.tracer = Tracer(1.0, self.sink)
        proto, client = connect(factory)
        proto.dataReceived(b"GET HTTP://site.test/x?y HTTP/1.1\r\nHost: site.test\r\n\r\n")
        connector.last.succeed()
        connector.last.protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        [span] = self.sink.spans
        self.assertEqual((span.attributes["url.scheme"], span.attributes["url.path"]), ("http", "/x"))

    def test_connect(self) -> None:
        """
        The span is named CONNECT, names the authority, counts the tunnel's
        bytes, and ends when the tunnel does.
        """
        connector = FakeConnector({"secure.test": ["192.0.2.7"]})
        factory = forwardFactory(connector=connector, clock=self.clock, protocol=ForwardProxyProtocol)
        factory.tracer = Tracer(1.0, self.sink)
        proto, client = connect(factory)
        proto.dataReceived(b"CONNECT secure.test:443 HTTP/1.1\r\nHost: secure.test:443\r\n\r\n")
        upstream = connector.last.succeed()
        self.assertEqual(self.sink.spans, [])
        proto.dataReceived(b"hello")
        connector.last.protocol.dataReceived(b"world!")
        self.assertEqual(upstream.value(), b"hello")
        upstream.peerClosed()
        [span] = self.sink.spans
        self.assertEqual(span.name, "CONNECT")
        a = span.attributes
        self.assertEqual((a["server.address"], a["server.port"]), ("secure.test", 443))
        self.assertEqual(a["http.response.status_code"], 200)
        self.assertEqual((a["txproxy.bytes_up"], a["txproxy.bytes_down"]), (5, 6))
        self.assertNotIn("url.path", a)
        self.assertNotIn("url.scheme", a)


class StreamSpanTests(TracingTestCase):
    """
    The TCP modes: a span per relayed connection.
    """

    def factory(self, protocol: Any = None) -> Any:
        listener = listenerConfig(mode="tcp", upstream=["tcp:192.0.2.10:6379", "tcp:192.0.2.11:6380"])
        f = TCPProxyFactory(listener, self.connector, self.clock, accessLog=self)
        f.tracer = Tracer(1.0, self.sink)
        if protocol is not None:
            f.protocol = protocol
        return f

    def test_spanPerConnection(self) -> None:
        """
        A relayed connection is one span (a new trace), with a retry event
        when the first pool member refused, the bytes each way, and the ids
        in the access record.
        """
        proto, client = connect(self.factory(), ("198.51.100.4", 41000))
        self.connector.last.fail(error.ConnectionRefusedError())
        upstream = self.connector.last.succeed()
        proto.dataReceived(b"PING\r\n")
        self.connector.last.protocol.dataReceived(b"+PONG\r\n")
        self.assertEqual(self.sink.spans, [])
        upstream.peerClosed()
        client.peerClosed()
        [span] = self.sink.spans
        self.assertEqual(span.name, "tcp")
        self.assertIsNone(span.parentId)
        a = span.attributes
        self.assertEqual((a["client.address"], a["client.port"]), ("198.51.100.4", 41000))
        self.assertEqual(a["txproxy.upstream.address"], "192.0.2.11:6380")
        self.assertEqual((a["txproxy.bytes_up"], a["txproxy.bytes_down"]), (6, 7))
        self.assertNotIn("http.response.status_code", a)
        self.assertEqual([e[1] for e in span.events], ["upstream.connect_failed", "upstream.retry", "upstream.connected"])
        self.assertEqual(self.records[0].traceId, span.traceIdText)

    def test_refusedConnection(self) -> None:
        """
        A connection no upstream takes ends its span with error.type.
        """
        proto, client = connect(self.factory())
        self.connector.last.fail(error.ConnectionRefusedError())
        self.connector.last.fail(error.ConnectionRefusedError())
        [span] = self.sink.spans
        self.assertEqual(span.attributes["error.type"], "502")
        self.assertEqual(span.statusCode, STATUS_ERROR)

    def test_hook(self) -> None:
        """
        The relay protocols have the same spanStarted hook.
        """

        class Tagged(TCPProxyProtocol):
            def spanStarted(self, span: Span) -> None:
                span.setAttribute("tenant.id", "acme")

        proto, client = connect(self.factory(protocol=Tagged))
        self.connector.last.succeed()
        client.peerClosed()
        self.connector.last.transport.peerClosed()
        [span] = self.sink.spans
        self.assertEqual(span.attributes["tenant.id"], "acme")


class _Route:
    def __init__(self, name: str, prefix: str) -> None:
        self.name = name
        self.prefix = prefix


class QuickSpanTests(TracingTestCase):
    """
    At ratio 1, a request without trace fields keeps only its traceparent
    line and its span is encoded from the request as it ends
    (L{encodeHTTPSpan}): the same bytes as the span made, ended and
    encoded; anything else (a hook, an event, an error) makes the span.
    """

    def test_sameBytesAsTheSpan(self) -> None:
        """
        For the same line and times, L{encodeHTTPSpan} gives byte for byte
        what L{startHTTPSpan}, L{endSpan} and C{encodeSpanField} give, for
        heads of several kinds, routes or none, HTTP/1.x and HTTP/2.
        """
        tracer = Tracer(1.0)
        proto, _ = connect(self.reverse(), ("203.0.113.9", 5000))
        base = connectionAttributes(proto.client, proto.transport, True)
        heads = [
            b"GET /api/users/7?x=1 HTTP/1.1\r\nHost: a.test\r\nUser-Agent: t/1\r\n\r\n",
            b"POST /b HTTP/1.1\r\nhost: b.test:8443\r\ncontent-length: 0\r\n\r\n",
            b"GET / HTTP/1.0\r\n\r\n",
            b"GET http://c.test:81/x/y?q HTTP/1.0\r\n\r\n",
            b"GET /u HTTP/1.1\r\nHost: a.test\r\nUser-Agent: " + b"u" * 300 + b"\r\n\r\n",
            b"BREW /pot HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n",
        ]
        routes = [None, _Route("a.test/api", "/api"), _Route("*", "")]
        checked = 0
        for raw in heads:
            head = parseRequestHead(raw)
            for route in routes:
                for h2 in (False, True):
                    for status, up, down in ((200, 0, 5), (404, 1234567, 0), (304, 300, 70000)):
                        line = tracer.quickLine()
                        quick = encodeHTTPSpan(line, 1.7e9, 1.7e9 + 0.25, head, h2, base, route, "192.0.2.1:8080",
                                               "tcp:8080", "reverse", status, up, down)
                        span = startHTTPSpan(tracer, head, proto.client, proto.transport, h2, 1.7e9, None, base, line)
                        endSpan(tracer, span, status, "", up, down, "192.0.2.1:8080", "tcp:8080", "reverse",
                                1.7e9 + 0.25, route)
                        if len(raw) > 300:
                            # (A user agent too long to keep encoded: the
                            # span is made.)
                            self.assertIsNone(quick)
                            continue
                        self.assertEqual(quick, encodeSpanField(span), (raw, route, h2, status))
                        checked += 1
        self.assertEqual(checked, 5 * 3 * 2 * 3)

    def test_connectNotEncodedDirectly(self) -> None:
        """
        A C{CONNECT} is not of the kind L{encodeHTTPSpan} encodes.
        """
        proto, _ = connect(self.reverse(), ("203.0.113.9", 5000))
        base = connectionAttributes(proto.client, proto.transport, True)
        head = parseRequestHead(b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n")
        self.assertIsNone(encodeHTTPSpan(Tracer(1.0).quickLine(), 1.7e9, 1.7e9, head, False, base, None, "", "l",
                                         "forward", 200, 0, 0))

    def exported(self, protocol: Any = None, requests: int = 1, status: bytes = b"200 OK") -> Any:
        """
        Serve C{requests} requests on one connection at ratio 1 with a
        L{BatchExporter}, and decode what it posts.
        """
        posted: List[bytes] = []

        def post(body: bytes) -> Any:
            posted.append(body)
            return defer.succeed(None)

        factory = self.reverse(protocol=protocol)
        factory.tracer = Tracer(1.0, BatchExporter(post, self.clock))
        proto, client = self.get(factory)
        self.connector.last.succeed()
        for i in range(requests):
            if i:
                proto.dataReceived(b"GET /api/b HTTP/1.1\r\nHost: a.test\r\n\r\n")
            self.connector.last.protocol.dataReceived(b"HTTP/1.1 " + status + b"\r\nContent-Length: 2\r\n\r\nok")
        self.clock.advance(1.0)
        spans = []
        for body in posted:
            message = ExportTraceServiceRequest()
            message.ParseFromString(body)
            spans.extend(message.resource_spans[0].scope_spans[0].spans)
        return proto, spans

    def test_exportedWithoutSpan(self) -> None:
        """
        Requests at ratio 1 are exported with no Span made (but for the
        first, whose new upstream connection is an event), with the ids
        sent upstream, and the same fields as when a hook had each span
        made as its request started.
        """
        import txproxy.httpproxy as module

        made = []
        real = module.startHTTPSpan

        def counting(*args: Any, **kwargs: Any) -> Any:
            made.append(args)
            return real(*args, **kwargs)

        self.patch(module, "startHTTPSpan", counting)

        class Hooked(ReverseProxyProtocol):
            def spanStarted(self, span: Span) -> None:
                pass

        proto, quick = self.exported(requests=3)
        self.assertEqual(len(made), 1)
        sent = self.connector.last.transport.value()
        self.assertEqual(
            re.findall(rb"\r\ntraceparent: 00-([0-9a-f]{32})-([0-9a-f]{16})-01\r\n", sent),
            [(s.trace_id.hex().encode(), s.span_id.hex().encode()) for s in quick],
        )
        del made[:]
        _, eager = self.exported(Hooked, requests=3)
        self.assertEqual(len(made), 3)
        self.assertEqual(len(quick), 3)

        def stripped(span: Any) -> Any:
            for name in ("trace_id", "span_id", "start_time_unix_nano", "end_time_unix_nano"):
                span.ClearField(name)
            for event in span.events:
                event.ClearField("time_unix_nano")
            return span

        self.assertEqual([stripped(s) for s in quick], [stripped(s) for s in eager])
        self.assertEqual([s.name for s in quick], ["GET /api"] * 3)
        self.assertEqual([len(s.events) for s in quick], [1, 0, 0])

    def test_eventMakesTheSpan(self) -> None:
        """
        An event (a new upstream connection) makes the span, which is
        exported with it.
        """
        proto, [span] = self.exported()
        self.assertEqual([e.name for e in span.events], ["upstream.connected"])

    def test_errorMakesTheSpan(self) -> None:
        """
        A 5xx ends a span made for it: status ERROR and C{error.type}.
        """
        proto, [span] = self.exported(status=b"503 Service Unavailable")
        self.assertEqual(span.status.code, STATUS_ERROR)
        self.assertIn("error.type", [a.key for a in span.attributes])
