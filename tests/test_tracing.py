"""
Tests for L{txproxy.tracing}: spans and the tracer, the OTLP encoding
(decoded with C{opentelemetry-proto}), and the batch exporter's queue,
timer, timeout and drops, on a fake clock.
"""

from __future__ import annotations

import re
from typing import Any, List

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from txproxy.tracing import (
    SPAN_KIND_SERVER,
    BatchExporter,
    PostFailed,
    RecordingSpan,
    Span,
    Tracer,
    TracingService,
    encodeSpans,
    tracingFor,
)
from txproxy.tracing._context import LINE_SIZE, TraceParent, idLines, parseTraceparent
from txproxy.tracing._otlp import attributeBlock
from txproxy.tracing._span import POOL_LINES, _forked

TRACE = b"12345678901234567890123456789012"
PARENT = b"1234567890123456"
INCOMING = [(b"Host", b"x"), (b"TraceParent", b"00-" + TRACE + b"-" + PARENT + b"-01"), (b"tracestate", b"a=1, b=2")]


class _Collect:
    def __init__(self) -> None:
        self.spans: List[Span] = []

    def add(self, span: Span) -> None:
        self.spans.append(span)


def _decode(body: bytes) -> Any:
    message = ExportTraceServiceRequest()
    message.ParseFromString(body)
    return message


class TracerTests(SynchronousTestCase):
    """
    L{Tracer}: continuing or starting traces, sampling, ending.
    """

    def test_continues(self) -> None:
        """
        A valid incoming parent is continued: same trace id, its span as the
        parent, its tracestate kept, its sampled flag obeyed even at ratio 0.
        """
        span = Tracer(0.0).startSpan("GET", INCOMING)
        self.assertEqual(span.traceId, TRACE)
        self.assertEqual(span.parentId, PARENT)
        self.assertNotEqual(span.spanId, PARENT)
        self.assertEqual(span.traceState, b"a=1,b=2")
        self.assertTrue(span.sampled)

    def test_unsampledParent(self) -> None:
        """
        A parent with the sampled flag clear is not recorded even at ratio 1,
        and its upstream traceparent says so.
        """
        headers = [(b"traceparent", b"00-" + TRACE + b"-" + PARENT + b"-00")]
        span = Tracer(1.0).startSpan("GET", headers)
        self.assertFalse(span.sampled)
        self.assertEqual(span.traceparent(), b"00-" + TRACE + b"-" + span.spanId + b"-00")

    def test_replacesInvalid(self) -> None:
        """
        An invalid parent (upper-case hex) starts a new trace, and its
        tracestate is dropped.
        """
        headers = [(b"traceparent", b"00-" + TRACE.upper() + b"-" + PARENT + b"-01"), (b"tracestate", b"a=1")]
        headers[0] = (b"traceparent", b"00-" + b"ABCDEF" + TRACE[6:] + b"-" + PARENT + b"-01")
        span = Tracer(1.0).startSpan("GET", headers)
        self.assertNotEqual(span.traceId, TRACE)
        self.assertIsNone(span.parentId)
        self.assertIsNone(span.traceState)
        self.assertTrue(span.sampled)

    def test_headSampling(self) -> None:
        """
        New traces follow the ratio: 0 records none, 1 all.
        """
        self.assertFalse(any(Tracer(0.0).startSpan("x").sampled for _ in range(50)))
        self.assertTrue(all(Tracer(1.0).startSpan("x").sampled for _ in range(50)))

    def test_decisionMatchesSampler(self) -> None:
        """
        A new trace is recorded exactly when L{Sampler.sampleNew} says so
        for its trace id (the tracer decides on the id as an int); the ids
        are the draw's high 128 and low 64 bits; an unsampled span's
        traceparent line is made with its ids.
        """
        for ratio in (0.0, 0.25, 0.5, 1.0):
            draws = iter([(7 << 64) | 5, (2**127 + 2**63) << 64 | 9, ((2**64 - 1) << 64) | 1])
            tracer = Tracer(ratio, randbits=lambda bits, draws=draws: next(draws))
            for _ in range(3):
                span = tracer.startSpan("x")
                self.assertEqual(span.sampled, tracer.sampler.sampleNew(span.traceId), (ratio, span))
                self.assertEqual(len(span.traceId), 32)
                self.assertEqual(len(span.spanId), 16)
                self.assertEqual(span.traceField(), b"traceparent: " + span.traceparent() + b"\r\n")
        span = Tracer(0.0, randbits=lambda bits: (7 << 64) | 5).startSpan("x")
        self.assertEqual((span.traceId, span.spanId), (b"%032x" % 7, b"%016x" % 5))

    def test_zeroDrawsRedrawn(self) -> None:
        """
        An all-zero trace or span id from the draw is drawn again.
        """
        draws = iter([0, 3, 4])
        span = Tracer(0.0, randbits=lambda bits: next(draws)).startSpan("x")
        self.assertEqual((span.spanId, span.traceId), (b"%016x" % 3, b"%032x" % 4))

    def test_propagate(self) -> None:
        """
        L{Span.propagate} replaces the incoming fields with this span's.
        """
        span = Tracer(1.0).startSpan("GET", INCOMING)
        out = span.propagate(INCOMING)
        self.assertEqual(
            out,
            ((b"Host", b"x"), (b"traceparent", b"00-" + TRACE + b"-" + span.spanId + b"-01"), (b"tracestate", b"a=1,b=2")),
        )

    def test_endOnce(self) -> None:
        """
        A sampled span is queued once when ended; an unsampled one never,
        and takes no attributes.
        """
        sink = _Collect()
        times = iter([10.0, 11.5, 12.0])
        tracer = Tracer(1.0, sink, wallClock=lambda: next(times))
        span = tracer.startSpan("GET")
        span.setAttribute("k", 1)
        tracer.endSpan(span)
        tracer.endSpan(span)
        self.assertEqual(sink.spans, [span])
        self.assertEqual((span.start, span.end), (10.0, 11.5))
        quiet = Tracer(0.0, sink).startSpan("GET")
        quiet.setAttribute("k", 1)
        quiet.addEvent("e")
        Tracer(0.0, sink).endSpan(quiet)
        self.assertEqual(dict(quiet.attributes), {})
        self.assertFalse(quiet.events)
        self.assertNotIsInstance(quiet, RecordingSpan)
        self.assertIsNone(quiet.end)
        self.assertEqual(sink.spans, [span])

    def test_setAttributeNoneRemoves(self) -> None:
        """
        Setting an attribute to L{None} removes it.
        """
        span = Tracer(1.0).startSpan("x")
        span.setAttribute("a", "b")
        span.setAttribute("a", None)
        self.assertEqual(span.attributes, {})


class EncodingTests(SynchronousTestCase):
    """
    The hand-made OTLP protobuf, decoded by opentelemetry-proto.
    """

    def test_roundTrip(self) -> None:
        """
        Every field txproxy writes decodes to what the span held.
        """
        span = RecordingSpan(TRACE, PARENT[::-1], PARENT, b"a=1", "GET /api", SPAN_KIND_SERVER, 1700000000.25)
        span.end = 1700000000.75
        span.attributes.update(
            {"http.request.method": "GET", "http.response.status_code": 502, "ok": True, "ratio": 0.5,
             "neg": -3, "raw": b"caf\xe9", "unicode": "caf\u00e9"}
        )
        span.addEvent("upstream.retry", {"server.address": "10.0.0.1"}, when=1700000000.5)
        span.setError("bad gateway")
        message = _decode(encodeSpans([span], {"service.name": "txproxy"}, ("txproxy", "1.0")))
        [rs] = message.resource_spans
        self.assertEqual({a.key: a.value.string_value for a in rs.resource.attributes}, {"service.name": "txproxy"})
        [ss] = rs.scope_spans
        self.assertEqual((ss.scope.name, ss.scope.version), ("txproxy", "1.0"))
        [s] = ss.spans
        self.assertEqual(s.trace_id.hex(), TRACE.decode())
        self.assertEqual(s.span_id.hex(), PARENT[::-1].decode())
        self.assertEqual(s.parent_span_id.hex(), PARENT.decode())
        self.assertEqual(s.trace_state, "a=1")
        self.assertEqual(s.name, "GET /api")
        self.assertEqual(s.kind, 2)
        self.assertEqual(s.start_time_unix_nano, 1700000000250000000)
        self.assertEqual(s.end_time_unix_nano, 1700000000750000000)
        attrs = {a.key: a.value for a in s.attributes}
        self.assertEqual(attrs["http.request.method"].string_value, "GET")
        self.assertEqual(attrs["http.response.status_code"].int_value, 502)
        self.assertEqual(attrs["ok"].bool_value, True)
        self.assertEqual(attrs["ratio"].double_value, 0.5)
        self.assertEqual(attrs["neg"].int_value, -3)
        self.assertEqual(attrs["raw"].string_value, "caf\u00e9")
        self.assertEqual(attrs["unicode"].string_value, "caf\u00e9")
        [event] = s.events
        self.assertEqual(event.name, "upstream.retry")
        self.assertEqual(event.time_unix_nano, 1700000000500000000)
        self.assertEqual(event.attributes[0].key, "server.address")
        self.assertEqual(s.status.code, 2)
        self.assertEqual(s.status.message, "bad gateway")
        self.assertEqual(s.flags, 0x301)

    def test_rootSpan(self) -> None:
        """
        A root span has no parent id, no tracestate, an unset status, and
        its flags say the (absent) parent is not remote.
        """
        span = Tracer(1.0).startSpan("tcp")
        span.end = span.start
        [s] = _decode(encodeSpans([span, ], {})).resource_spans[0].scope_spans[0].spans
        self.assertEqual(s.parent_span_id, b"")
        self.assertEqual(s.trace_state, "")
        self.assertEqual(s.status.code, 0)
        self.assertEqual(s.flags, 0x101)

    def test_many(self) -> None:
        """
        Several spans go in one request, in order.
        """
        tracer = Tracer(1.0)
        spans = [tracer.startSpan(f"s{i}") for i in range(300)]
        decoded = _decode(encodeSpans(spans, {})).resource_spans[0].scope_spans[0].spans
        self.assertEqual([s.name for s in decoded], [f"s{i}" for i in range(300)])


class _Post:
    """
    A fake collector: each POST returns a Deferred the test fires.
    """

    def __init__(self) -> None:
        self.calls: List[defer.Deferred] = []
        self.bodies: List[bytes] = []

    def __call__(self, body: bytes) -> "defer.Deferred[Any]":
        d: defer.Deferred[Any] = defer.Deferred()
        self.calls.append(d)
        self.bodies.append(body)
        return d

    def names(self, index: int) -> List[str]:
        return [s.name for s in _decode(self.bodies[index]).resource_spans[0].scope_spans[0].spans]


def _spans(n: int) -> List[Span]:
    tracer = Tracer(1.0)
    out = []
    for i in range(n):
        span = tracer.startSpan(f"s{i}")
        span.end = span.start
        out.append(span)
    return out


class BatchExporterTests(SynchronousTestCase):
    """
    L{BatchExporter}: bounded queue, batches, timer, timeout, drops.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.post = _Post()
        self.exporter = BatchExporter(self.post, self.clock, maxQueue=8, batchSize=4, interval=1.0, timeout=5.0,
                                      resource={"service.name": "t"})

    def test_interval(self) -> None:
        """
        A partial batch goes C{interval} seconds after its first span.
        """
        for span in _spans(2):
            self.exporter.add(span)
        self.clock.advance(0.9)
        self.assertEqual(self.post.calls, [])
        self.clock.advance(0.1)
        self.assertEqual(self.post.names(0), ["s0", "s1"])
        self.post.calls[0].callback(None)
        self.assertEqual(self.exporter.exported, 2)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_fullBatchGoesAtOnce(self) -> None:
        """
        A full batch goes on the next turn of the loop, not after the
        interval.
        """
        for span in _spans(4):
            self.exporter.add(span)
        self.clock.advance(0)
        self.assertEqual(self.post.names(0), ["s0", "s1", "s2", "s3"])

    def test_oneInFlight(self) -> None:
        """
        While a batch is in flight no other is sent; the next goes once it
        is answered.
        """
        spans = _spans(8)
        for span in spans[:4]:
            self.exporter.add(span)
        self.clock.advance(0)
        for span in spans[4:]:
            self.exporter.add(span)
        self.clock.advance(2)
        self.assertEqual(len(self.post.calls), 1)
        self.post.calls[0].callback(None)
        self.clock.advance(0)
        self.assertEqual(self.post.names(1), ["s4", "s5", "s6", "s7"])

    def test_queueBoundDrops(self) -> None:
        """
        Past C{maxQueue} queued spans, new ones are dropped and counted:
        memory stays bounded whatever the collector does.
        """
        spans = _spans(20)
        for span in spans[:4]:
            self.exporter.add(span)
        self.clock.advance(0)  # 4 in flight, never answered
        for span in spans[4:]:
            self.exporter.add(span)
        self.assertEqual(len(self.exporter), 8)
        self.assertEqual(self.exporter.dropped, 8)

    def test_timeout(self) -> None:
        """
        A collector that never answers: the POST is cancelled after
        C{timeout} seconds, its spans counted as dropped, and the next batch
        goes.
        """
        for span in _spans(6):
            self.exporter.add(span)
        self.clock.advance(0)
        self.clock.advance(5)
        self.assertEqual(self.exporter.dropped, 4)
        self.assertEqual(self.exporter.failedBatches, 1)
        self.assertTrue(self.post.calls[0].called)
        self.clock.advance(1)
        self.assertEqual(self.post.names(1), ["s4", "s5"])

    def test_failure(self) -> None:
        """
        A failed POST (a refused connection, a 500) drops its batch, counted,
        and logs once.
        """
        for span in _spans(4):
            self.exporter.add(span)
        self.clock.advance(0)
        self.post.calls[0].errback(Failure(PostFailed("collector answered 500")))
        self.assertEqual(self.exporter.dropped, 4)
        self.assertEqual(self.exporter.exported, 0)

    def test_synchronousPostError(self) -> None:
        """
        A poster that raises loses its batch (counted), not the reactor.
        """
        def boom(body: bytes) -> Any:
            raise RuntimeError("boom")

        exporter = BatchExporter(boom, self.clock, maxQueue=8, batchSize=4)
        for span in _spans(4):
            exporter.add(span)
        self.clock.advance(0)
        self.assertEqual(exporter.dropped, 4)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_flush(self) -> None:
        """
        L{BatchExporter.flush} sends everything queued, batch after batch,
        then drops (and counts) what comes later.
        """
        for span in _spans(6):
            self.exporter.add(span)
        d = self.exporter.flush()
        self.assertNoResult(d)
        self.post.calls[0].callback(None)
        self.clock.advance(0)
        self.post.calls[1].callback(None)
        self.clock.advance(0)
        self.successResultOf(d)
        self.assertEqual(self.exporter.exported, 6)
        self.exporter.add(_spans(1)[0])
        self.assertEqual(self.exporter.dropped, 1)

    def test_badSizes(self) -> None:
        """
        A batch larger than the queue is refused.
        """
        self.assertRaises(ValueError, BatchExporter, self.post, self.clock, maxQueue=2, batchSize=4)


class ServiceTests(SynchronousTestCase):
    """
    L{tracingFor} and L{TracingService}.
    """

    def test_off(self) -> None:
        """
        No URL, no tracing service.
        """

        class Config:
            traceOtlp = None
            traceSample = 1.0

        self.assertIsNone(tracingFor(Config(), Clock()))

    def test_stopFlushesWithinBound(self) -> None:
        """
        Stopping sends what is queued, and gives up after the stop bound
        when the collector does not answer.
        """
        clock = Clock()
        post = _Post()
        exporter = BatchExporter(post, clock, maxQueue=8, batchSize=4, timeout=60.0)
        service = TracingService(Tracer(1.0, exporter), exporter)
        service.startService()
        exporter.add(_spans(1)[0])
        d = service.stopService()
        self.assertEqual(len(post.calls), 1)
        self.assertNoResult(d)
        clock.advance(3.0)
        self.successResultOf(d)


class IdPoolTests(SynchronousTestCase):
    """
    The pool of ready-made C{traceparent} lines new traces take their ids
    from (L{idLines}).
    """

    def test_lines(self) -> None:
        """
        Each line is a valid version 00 C{traceparent} field with the flags
        asked for; no two ids repeat.
        """
        block = idLines(64, b"01")
        self.assertEqual(len(block), 64 * LINE_SIZE)
        lines = [block[i:i + LINE_SIZE] for i in range(0, len(block), LINE_SIZE)]
        for line in lines:
            name, _, value = line.partition(b": ")
            self.assertEqual(name, b"traceparent")
            self.assertTrue(value.endswith(b"-01\r\n"), line)
            self.assertEqual(parseTraceparent(value[:-2]), TraceParent(line[16:48], line[49:65], 1))
        self.assertEqual(len({line[16:48] for line in lines}), 64)
        self.assertEqual(len({line[49:65] for line in lines}), 64)

    def test_zeroRunDrawnAgain(self) -> None:
        """
        A draw that would give an all-zero id (sixteen zero digits in a row)
        is drawn again.
        """
        draws = [b"\x00" * 48, bytes(range(1, 49))]
        block = idLines(2, b"00", urandom=lambda n: draws.pop(0)[:n])
        self.assertEqual(draws, [])
        self.assertEqual(block[16:48], bytes(range(1, 17)).hex().encode())
        self.assertEqual(block[49:65], bytes(range(17, 25)).hex().encode())

    def test_tracerSpans(self) -> None:
        """
        A tracer's new traces have distinct, valid ids from the pool, their
        traceparent line their own; a sampled one's flag is set whatever
        the ratio.
        """
        for ratio in (0.0, 0.5, 1.0):
            tracer = Tracer(ratio)
            spans = [tracer.startSpan("x") for _ in range(POOL_LINES + 10)]
            self.assertEqual(len({s.traceId for s in spans}), len(spans))
            self.assertEqual(len({s.spanId for s in spans}), len(spans))
            for span in spans:
                self.assertEqual(span.traceField(), b"traceparent: " + span.traceparent() + b"\r\n")
                parsed = parseTraceparent(span.traceparent())
                self.assertEqual(parsed, TraceParent(span.traceId, span.spanId, int(span.sampled)))
                self.assertEqual(span.sampled, tracer.sampler.sampleNew(span.traceId))

    def test_forkedChildDrawsAgain(self) -> None:
        """
        After a fork, the child does not reuse the ids its parent had drawn.
        """
        tracer = Tracer(0.0)
        tracer.startSpan("x")
        pool = bytes(tracer._block) + bytes(tracer._buffer)
        self.assertEqual(len(pool), POOL_LINES * LINE_SIZE)
        _forked()
        span = tracer.startSpan("x")
        self.assertNotIn(span.traceId, pool)
        self.assertNotIn(span.spanId, pool)

    def test_bothPoolForms(self) -> None:
        """
        The pool's two forms (a new block per draw, and one buffer drawn
        into in place: each interpreter uses one) give valid, distinct
        lines with the tracer's flags, past a draw, and the in-place one
        keeps its buffer.
        """
        for ratio, flags in ((0.0, b"-00\r\n"), (1.0, b"-01\r\n")):
            for take in (Tracer._quickLineSliced, Tracer._quickLineInPlace):
                tracer = Tracer(ratio)
                lines = [take(tracer) for _ in range(POOL_LINES * 2 + 3)]
                self.assertEqual({type(line) for line in lines}, {bytes})
                self.assertEqual(len({line[16:65] for line in lines}), len(lines))
                for line in lines:
                    self.assertTrue(line.startswith(b"traceparent: 00-") and line.endswith(flags), line)
                    self.assertIsNotNone(parseTraceparent(line[13:68]))
                if take is Tracer._quickLineInPlace:
                    self.assertEqual(len(tracer._buffer), POOL_LINES * LINE_SIZE)


class ParsingEquivalenceTests(SynchronousTestCase):
    """
    The slice-based C{traceparent} parser accepts exactly what the W3C
    grammar (as a regular expression) does.
    """

    def test_mutations(self) -> None:
        """
        Every one-byte change, deletion and insertion of valid values
        parses as the grammar says.
        """
        grammar = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")

        def expected(value: bytes) -> Any:
            value = value.strip(b" \t")
            if len(value) < 55 or (len(value) > 55 and (value[:2] == b"00" or value[55:56] != b"-")):
                return None
            m = grammar.fullmatch(value, 0, 55)
            if m is None or m.group(1) == b"ff" or m.group(2) == b"0" * 32 or m.group(3) == b"0" * 16:
                return None
            return TraceParent(m.group(2), m.group(3), int(m.group(4), 16) & 1)

        bases = [b"00-" + TRACE + b"-" + PARENT + b"-01", b"cc-" + TRACE + b"-" + PARENT + b"-08-what"]
        values = []
        for base in bases:
            values.append(base)
            for i in range(len(base) + 1):
                values.append(base[:i] + base[i + 1:])
                for c in b"0aF-g \t":
                    values.append(base[:i] + bytes([c]) + base[i + 1:])
                    values.append(base[:i] + bytes([c]) + base[i:])
        for value in values:
            self.assertEqual(parseTraceparent(value), expected(value), value)


class AttributeBlockTests(SynchronousTestCase):
    """
    Attributes kept encoded (L{AttributeBlock}s) read, change and encode
    as one dictionary with the others.
    """

    def _span(self) -> Any:
        span = Tracer(1.0).startSpan("x")
        span.end = span.start
        span._blocks = [attributeBlock([("a", "1"), ("n", 7)]), attributeBlock([("b", "2")])]
        span._attrs["c"] = 3
        return span

    def _encoded(self, span: Any) -> Any:
        [s] = _decode(encodeSpans([span], {})).resource_spans[0].scope_spans[0].spans
        return sorted((a.key, a.value.string_value or a.value.int_value) for a in s.attributes)

    def test_encoded(self) -> None:
        """
        A span with blocks encodes their attributes and its own.
        """
        self.assertEqual(self._encoded(self._span()), [("a", "1"), ("b", "2"), ("c", 3), ("n", 7)])

    def test_read(self) -> None:
        """
        C{attributes} holds all of them, and changes to it are the span's.
        """
        span = self._span()
        self.assertEqual(span.attributes, {"a": "1", "n": 7, "b": "2", "c": 3})
        span.attributes["a"] = "changed"
        del span.attributes["b"]
        self.assertEqual(self._encoded(span), [("a", "changed"), ("c", 3), ("n", 7)])

    def test_setAttributeOverrides(self) -> None:
        """
        Setting (or removing) an attribute a block holds replaces it: the
        key is encoded once.
        """
        span = self._span()
        span.setAttribute("a", "hook")
        span.setAttribute("n", None)
        self.assertEqual(self._encoded(span), [("a", "hook"), ("b", "2"), ("c", 3)])
