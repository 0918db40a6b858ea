# -*- test-case-name: tests.test_tracing -*-
"""
Spans and the tracer that starts them.

A L{Span} is a plain object kept on the protocol that serves the request,
tunnel or connection (never in a context variable: Twisted does not carry
those across Deferred callbacks).  The protocol starts it when the request
head is parsed (or the connection is accepted), adds attributes and events
as the exchange goes, and ends it once, with the access record.  An ended
span that is recorded (sampled) goes to the exporter's bounded queue; an
unsampled one still has ids, so the trace is propagated and logged, but
costs no attribute and is never queued.
"""

from __future__ import annotations

import time
from types import MappingProxyType
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from txproxy.tracing._context import (
    Sampler,
    TraceParent,
    _getrandbits,
    contextFromHeaders,
    newSpanId,
    newTraceId,
)

__all__ = ["Span", "RecordingSpan", "Tracer", "SPAN_KIND_SERVER", "SPAN_KIND_CLIENT", "STATUS_ERROR"]

#: OpenTelemetry's SpanKind values (as OTLP numbers them).
SPAN_KIND_INTERNAL = 1
SPAN_KIND_SERVER = 2
SPAN_KIND_CLIENT = 3

#: OpenTelemetry's status codes (as OTLP numbers them).
STATUS_UNSET = 0
STATUS_ERROR = 2

#: An attribute value: what OTLP's AnyValue carries that txproxy uses.
AttributeValue = Any

_TRACEPARENT = b"traceparent"
_TRACESTATE = b"tracestate"
_ZERO_TRACE = b"0" * 32
_ZERO_SPAN = b"0" * 16
_MASK64 = (1 << 64) - 1


class Span:
    """
    One span: a request, a tunnel or a relayed connection, as seen by
    txproxy.  A span of this class is I{not recorded} (its trace was not
    sampled): it has ids, so the trace is propagated and logged, but it
    takes no attribute or event and is never exported.  Recorded spans are
    L{RecordingSpan}s.

    @ivar traceId: the trace id, 32 lower-case hex digits (C{bytes}).
    @ivar spanId: this span's id, 16 lower-case hex digits (C{bytes}).
    @ivar parentId: the parent span's id (the incoming C{traceparent}'s
        parent-id), or L{None} for the root of a new trace.
    @ivar traceState: the C{tracestate} propagated, or L{None}.
    @ivar sampled: whether this span is recorded and exported.
    @ivar name: the span name (C{"GET /api"}, C{"CONNECT"}, C{"tcp"});
        C{""} on a span that is not recorded.
    @ivar kind: L{SPAN_KIND_SERVER} (or another OTLP span kind).
    @ivar start: wall-clock start, POSIX seconds.
    @ivar end: wall-clock end, POSIX seconds, once ended.
    @ivar attributes: the attributes, by name (OpenTelemetry semantic
        convention names); read-only and empty when not recorded.
    @ivar events: C{(POSIX time, name, attributes)} tuples.
    @ivar statusCode: L{STATUS_UNSET} or L{STATUS_ERROR}.
    @ivar statusMessage: why, for an error.
    """

    # (Few slots: a span that is not recorded is made for every request at
    # --trace-sample 0, and must cost next to nothing.)
    __slots__ = ("traceId", "spanId", "parentId", "traceState", "_replaces", "_field")

    sampled = False
    name = ""
    kind = SPAN_KIND_SERVER
    start = 0.0
    end: Optional[float] = None
    attributes: Mapping[str, AttributeValue] = MappingProxyType({})
    events: Sequence[Tuple[float, str, Dict[str, AttributeValue]]] = ()
    statusCode = STATUS_UNSET
    statusMessage = ""

    def __init__(
        self,
        traceId: bytes,
        spanId: bytes,
        parentId: Optional[bytes] = None,
        traceState: Optional[bytes] = None,
        replaces: bool = True,
    ) -> None:
        self.traceId = traceId
        self.spanId = spanId
        self.parentId = parentId
        self.traceState = traceState
        #: Whether the request had trace fields of its own to replace.
        self._replaces = replaces
        #: The traceparent header line, when made with the ids.
        self._field: Optional[bytes] = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {self.traceIdText}/{self.spanIdText}>"

    @property
    def traceIdText(self) -> str:
        """
        The trace id as a string (what the access log carries).
        """
        return self.traceId.decode("ascii")

    @property
    def spanIdText(self) -> str:
        """
        This span's id as a string.
        """
        return self.spanId.decode("ascii")

    def setAttribute(self, key: str, value: AttributeValue) -> None:
        """
        Set an attribute (a C{str}, C{bool}, C{int}, C{float} or C{bytes}
        value; L{None} removes it).  Ignored on a span that is not recorded.
        """

    def addEvent(self, name: str, attributes: Optional[Dict[str, AttributeValue]] = None,
                 when: Optional[float] = None) -> None:
        """
        Record an event (a moment in the span, with attributes).  Ignored on
        a span that is not recorded.

        @param when: POSIX seconds; now when L{None}.
        """

    def setError(self, message: str) -> None:
        """
        Mark the span failed (OpenTelemetry status C{ERROR}).  Ignored on a
        span that is not recorded.
        """

    def traceparent(self) -> bytes:
        """
        The C{traceparent} to send upstream: this trace, with this span as
        the parent.
        """
        return b"00-" + self.traceId + b"-" + self.spanId + (b"-01" if self.sampled else b"-00")

    def traceField(self) -> bytes:
        """
        The C{traceparent} header line (C{traceparent: ...} and CRLF), for
        a request head serialized without trace fields of its own.
        """
        field = self._field
        if field is None:
            field = self._field = b"traceparent: " + self.traceparent() + b"\r\n"
        return field

    def propagate(self, headers: Sequence[Tuple[bytes, bytes]]) -> Tuple[Tuple[bytes, bytes], ...]:
        """
        C{headers} with their C{traceparent} and C{tracestate} fields
        replaced by this span's: the request carries the trace on.
        """
        if not self._replaces:
            # (The common case: the request came without trace fields.)
            return tuple(headers) + ((b"traceparent", self.traceparent()),)
        out = [(n, v) for n, v in headers if not (len(n) in (10, 11) and n.lower() in (_TRACEPARENT, _TRACESTATE))]
        out.append((b"traceparent", self.traceparent()))
        if self.traceState:
            out.append((b"tracestate", self.traceState))
        return tuple(out)


class RecordingSpan(Span):
    """
    A span that is recorded (its trace is sampled): it takes attributes and
    events and is exported once ended.
    """

    __slots__ = ("name", "kind", "start", "end", "attributes", "events", "statusCode", "statusMessage")

    sampled = True

    def __init__(
        self,
        traceId: bytes,
        spanId: bytes,
        parentId: Optional[bytes],
        traceState: Optional[bytes],
        name: str,
        kind: int,
        start: float,
        replaces: bool = True,
    ) -> None:
        self.traceId = traceId
        self.spanId = spanId
        self.parentId = parentId
        self.traceState = traceState
        self._replaces = replaces
        self._field = None
        self.name = name
        self.kind = kind
        self.start = start
        self.end = None
        self.attributes: Dict[str, AttributeValue] = {}
        self.events: List[Tuple[float, str, Dict[str, AttributeValue]]] = []
        self.statusCode = STATUS_UNSET
        self.statusMessage = ""

    def setAttribute(self, key: str, value: AttributeValue) -> None:
        if value is None:
            self.attributes.pop(key, None)
        else:
            self.attributes[key] = value

    def addEvent(self, name: str, attributes: Optional[Dict[str, AttributeValue]] = None,
                 when: Optional[float] = None) -> None:
        self.events.append((time.time() if when is None else when, name, attributes or {}))

    def setError(self, message: str) -> None:
        self.statusCode = STATUS_ERROR
        self.statusMessage = message


class Tracer:
    """
    Starts and ends spans: parses the incoming context, decides sampling
    (parent-based; C{--trace-sample} for new traces) and hands recorded
    spans to the exporter.

    @ivar sampler: the L{Sampler}.
    @ivar exporter: what ended recorded spans go to (an object with
        C{add(span)}, such as L{txproxy.tracing.BatchExporter}), or L{None}.
    """

    def __init__(
        self,
        sampleRatio: float = 1.0,
        exporter: Any = None,
        wallClock: Callable[[], float] = time.time,
        randbits: Callable[[int], int] = _getrandbits,
    ) -> None:
        self.sampler = Sampler(sampleRatio)
        self.exporter = exporter
        self._wall = wallClock
        self._randbits = randbits

    def startSpan(
        self,
        name: str,
        headers: Optional[Sequence[Tuple[bytes, bytes]]] = None,
        kind: int = SPAN_KIND_SERVER,
        start: Optional[float] = None,
        scan: bool = True,
    ) -> Span:
        """
        Start a span, continuing the trace of C{headers} (a request's
        header fields) when they carry a valid C{traceparent}, else
        starting a new trace.

        @param start: POSIX seconds; now when L{None}.
        @param scan: whether C{headers} may hold trace fields (C{False}
            when the caller checked the raw head: the fields are not
            looked for).
        @return: a L{RecordingSpan} when the trace is sampled, else a
            L{Span} (not recorded).
        """
        parent: Optional[TraceParent] = None
        state: Optional[bytes] = None
        replaces = False
        if headers is not None and scan:
            for header in headers:
                size = len(header[0])
                if size == 11 or size == 10:
                    # A traceparent or tracestate (or another name of
                    # that length): parse properly.
                    parent, state = contextFromHeaders(headers)
                    replaces = True
                    break
        # One draw for both ids (the span id is the low 64 bits).
        n = self._randbits(192)
        high = n >> 64
        low = n & _MASK64
        if not low:
            low = int(newSpanId(self._randbits), 16)
        if parent is None:
            if not high:
                high = int(newTraceId(self._randbits), 16)
            # The sampler's TraceIdRatioBased rule, on the trace id's low
            # 64 bits as an int (what Sampler.sampleNew reads from the hex).
            if (high & _MASK64) >= self.sampler._bound:
                # The common unsampled case: one formatting operation makes
                # the traceparent line the upstream request gets, and the
                # ids are its slices.
                field = b"traceparent: 00-%032x-%016x-00\r\n" % (high, low)
                span = Span(field[16:48], field[49:65], None, None, False)
                span._field = field
                return span
            return RecordingSpan(b"%032x" % high, b"%016x" % low, None, None, name, kind,
                                 self._wall() if start is None else start, replaces)
        spanId = b"%016x" % low
        if parent.sampled:
            return RecordingSpan(parent.traceId, spanId, parent.spanId, state, name, kind,
                                 self._wall() if start is None else start, replaces)
        return Span(parent.traceId, spanId, parent.spanId, state, replaces)

    def endSpan(self, span: Span, end: Optional[float] = None) -> None:
        """
        End C{span} (once; later calls do nothing) and, when it is
        recorded, queue it for export.

        @param end: POSIX seconds; now when L{None}.
        """
        if not span.sampled or span.end is not None:
            return
        assert isinstance(span, RecordingSpan)
        span.end = self._wall() if end is None else end
        if self.exporter is not None:
            self.exporter.add(span)
