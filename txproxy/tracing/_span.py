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

import os
import platform
import time
import weakref
from types import MappingProxyType
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from txproxy.tracing._context import (
    _TEMPLATE,
    LINE_SIZE,
    Sampler,
    _validTraceparent,
    fillIdLines,
    idLines,
    newSpanId,
    newTraceId,
    parseTracestate,
)

__all__ = [
    "AttributeBlock",
    "Span",
    "RecordingSpan",
    "Tracer",
    "hasTraceFields",
    "SPAN_KIND_SERVER",
    "SPAN_KIND_CLIENT",
    "STATUS_ERROR",
]

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
_TRACE_FIELDS = frozenset([_TRACEPARENT, _TRACESTATE])
_TRACE_SIZES = frozenset([11, 10])
_ZERO_TRACE = b"0" * 32
_ZERO_SPAN = b"0" * 16
_MASK64 = (1 << 64) - 1
#: Lines per draw of the id pool (see L{idLines}).
POOL_LINES = 256
_new = object.__new__
_ODD = frozenset(b"13579bdf")
#: Whether the pool is one buffer drawn into in place (PyPy), rather than
#: a new C{bytes} block per draw (CPython).  PyPy's JIT makes the slice of
#: a block that stays the same object nearly free, and one that is
#: replaced every 256 requests costs about 1 µs a request
#: (C{bench/README.md}); on CPython the C{bytes} of a slice of a
#: C{bytearray} would be one more copy.
_IN_PLACE = platform.python_implementation() == "PyPy"
#: Tracers whose id pools a forked child must not reuse.
_tracers: "weakref.WeakSet[Tracer]" = weakref.WeakSet()


def _forked() -> None:
    for tracer in list(_tracers):
        tracer._next = tracer._end


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


class AttributeBlock:
    """
    Attributes encoded once for the spans that share them (a connection's,
    a route's): C{pairs}, the C{(key, value)} pairs, and C{encoded}, their
    OTLP C{KeyValue} fields (L{txproxy.tracing._otlp.attributeBlock}).
    """

    __slots__ = ("pairs", "encoded")

    def __init__(self, pairs: Tuple[Tuple[str, AttributeValue], ...], encoded: bytes) -> None:
        self.pairs = pairs
        self.encoded = encoded


def _fieldOf(traceId: bytes, spanId: bytes, sampled: bool) -> bytes:
    """
    The C{traceparent} header line of a span.
    """
    return b"".join((b"traceparent: 00-", traceId, b"-", spanId, b"-01\r\n" if sampled else b"-00\r\n"))


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
    # --trace-sample 0, and must cost next to nothing.  The ids are slices
    # of the traceparent line, made when read.)
    __slots__ = ("parentId", "traceState", "_replaces", "_field")

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
        self.parentId = parentId
        self.traceState = traceState
        #: Whether the request had trace fields of its own to replace.
        self._replaces = replaces
        #: The traceparent header line (CRLF included): the ids are its
        #: slices.
        self._field = _fieldOf(traceId, spanId, self.sampled)

    @property
    def traceId(self) -> bytes:
        """
        The trace id, 32 lower-case hex digits.
        """
        return self._field[16:48]

    @property
    def spanId(self) -> bytes:
        """
        This span's id, 16 lower-case hex digits.
        """
        return self._field[49:65]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {self.traceIdText}/{self.spanIdText}>"

    @property
    def traceIdText(self) -> str:
        """
        The trace id as a string (what the access log carries).
        """
        return self._field[16:48].decode("ascii")

    @property
    def spanIdText(self) -> str:
        """
        This span's id as a string.
        """
        return self._field[49:65].decode("ascii")

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
        return self._field[13:68]

    def traceField(self) -> bytes:
        """
        The C{traceparent} header line (C{traceparent: ...} and CRLF), for
        a request head serialized without trace fields of its own.
        """
        return self._field

    def propagate(self, headers: Sequence[Tuple[bytes, bytes]]) -> Tuple[Tuple[bytes, bytes], ...]:
        """
        C{headers} with their C{traceparent} and C{tracestate} fields
        replaced by this span's: the request carries the trace on.
        """
        value = self.traceparent()
        if not self._replaces:
            # (The common case: the request came without trace fields.)
            return (*headers, (_TRACEPARENT, value))
        out = [pair for pair in headers if len(pair[0]) not in _TRACE_SIZES or pair[0].lower() not in _TRACE_FIELDS]
        out.append((_TRACEPARENT, value))
        if self.traceState:
            out.append((_TRACESTATE, self.traceState))
        return tuple(out)


class RecordingSpan(Span):
    """
    A span that is recorded (its trace is sampled): it takes attributes and
    events and is exported once ended.

    txproxy's own attributes that repeat from span to span (the
    connection's, the route's) are kept as L{AttributeBlock}s, encoded
    once; reading L{attributes} (or setting one) merges them into the
    dictionary first, so the span reads and changes as one dictionary.
    """

    __slots__ = ("name", "kind", "start", "end", "_attrs", "_blocks", "_events", "statusCode", "statusMessage")

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
        self.parentId = parentId
        self.traceState = traceState
        self._replaces = replaces
        self._field = _fieldOf(traceId, spanId, True)
        self.name = name
        self.kind = kind
        self.start = start
        self.end = None
        #: The attributes not in L{_blocks}.
        self._attrs: Dict[str, AttributeValue] = {}
        #: Encoded attributes (no key of them in L{_attrs}), or L{None}
        #: once merged into L{_attrs}.
        self._blocks: Optional[List[AttributeBlock]] = None
        #: The events, or L{None} while there is none.
        self._events: Optional[List[Tuple[float, str, Dict[str, AttributeValue]]]] = None
        self.statusCode = STATUS_UNSET
        self.statusMessage = ""

    @property  # type: ignore[override]
    def events(self) -> List[Tuple[float, str, Dict[str, AttributeValue]]]:
        """
        The events, C{(POSIX time, name, attributes)} tuples, in order (a
        list: changes to it are the span's).
        """
        events = self._events
        if events is None:
            events = self._events = []
        return events

    @events.setter
    def events(self, value: List[Tuple[float, str, Dict[str, AttributeValue]]]) -> None:
        self._events = value

    @property  # type: ignore[override]
    def attributes(self) -> Dict[str, AttributeValue]:
        """
        The attributes, by name (a dictionary: changes to it are the
        span's).
        """
        blocks = self._blocks
        if blocks is not None:
            merged: Dict[str, AttributeValue] = {}
            for block in blocks:
                merged.update(block.pairs)
            merged.update(self._attrs)
            self._attrs = merged
            self._blocks = None
        return self._attrs

    @attributes.setter
    def attributes(self, value: Dict[str, AttributeValue]) -> None:
        self._attrs = value
        self._blocks = None

    def setAttribute(self, key: str, value: AttributeValue) -> None:
        attributes = self._attrs if self._blocks is None else self.attributes
        if value is None:
            attributes.pop(key, None)
        else:
            attributes[key] = value

    def addEvent(self, name: str, attributes: Optional[Dict[str, AttributeValue]] = None,
                 when: Optional[float] = None) -> None:
        events = self._events
        if events is None:
            events = self._events = []
        events.append((time.time() if when is None else when, name, attributes or {}))

    def setError(self, message: str) -> None:
        self.statusCode = STATUS_ERROR
        self.statusMessage = message


class Tracer:
    """
    Starts and ends spans: parses the incoming context, decides sampling
    (parent-based; C{--trace-sample} for new traces) and hands recorded
    spans to the exporter.

    Ids come from a pool of ready-made C{traceparent} lines (L{idLines}: one
    C{os.urandom} call and one formatting pass per L{POOL_LINES} spans), so
    a new trace's ids and header line are one slice; the pool is dropped in
    a forked child.

    @ivar sampler: the L{Sampler}.
    @ivar exporter: what ended recorded spans go to (an object with
        C{add(span)}, such as L{txproxy.tracing.BatchExporter}), or L{None}.
    """

    def __init__(
        self,
        sampleRatio: float = 1.0,
        exporter: Any = None,
        wallClock: Callable[[], float] = time.time,
        randbits: Optional[Callable[[int], int]] = None,
    ) -> None:
        """
        @param randbits: draws the ids of each span (C{randbits(192)}: the
            trace id is the high 128 bits, the span id the low 64), in
            place of the pool; for tests.
        """
        self.sampler = sampler = Sampler(sampleRatio)
        #: The exporter's C{addEncoded} (an encoded span in), or L{None}
        #: when it has none (set with L{exporter}).
        self.addEncoded: Optional[Callable[[bytes], None]] = None
        self.exporter = exporter
        self._wall = wallClock
        self._randbits = randbits
        bound = sampler._bound
        #: Every new trace recorded (ratio 1), none (ratio 0), or decided
        #: on the trace id (None).
        self._newSampled: Optional[bool] = True if bound >= 2**64 else False if bound <= 0 else None
        # The pool's lines carry the flag most new traces get.
        self._poolFlags = b"01" if self._newSampled else b"00"
        #: Whether the pool's lines decide new traces (ratio 0 or 1, no
        #: C{randbits}): L{quickLine}.
        self.quickLines = self._newSampled is not None and randbits is None
        self._block = b""
        #: The pool drawn into in place (when _IN_PLACE).
        self._buffer = bytearray()
        self._next = self._end = 0
        _tracers.add(self)

    @property
    def exporter(self) -> Any:
        """
        What ended recorded spans go to (C{add(span)}; with
        C{addEncoded(bytes)}, spans encoded by the HTTP core too), or
        L{None}.
        """
        return self._exporter

    @exporter.setter
    def exporter(self, value: Any) -> None:
        self._exporter = value
        self.addEncoded = getattr(value, "addEncoded", None)

    def _refill(self) -> bytes:
        self._block = block = idLines(POOL_LINES, self._poolFlags)
        self._end = len(block)
        return block

    def _line(self) -> bytes:
        """
        A new C{traceparent} line: new random trace and span ids, the flags
        of the pool.
        """
        randbits = self._randbits
        if randbits is not None:
            n = randbits(192)
            high = n >> 64
            low = n & _MASK64
            if not low:
                low = int(newSpanId(randbits), 16)
            if not high:
                high = int(newTraceId(randbits), 16)
            return b"traceparent: 00-%032x-%016x-%s\r\n" % (high, low, self._poolFlags)
        return self.quickLine()

    def _quickLineSliced(self) -> bytes:
        i = self._next
        if i >= self._end:
            block = self._refill()
            i = 0
        else:
            block = self._block
        self._next = i + LINE_SIZE
        return block[i:i + LINE_SIZE]

    def _quickLineInPlace(self) -> bytes:
        i = self._next
        buffer = self._buffer
        if i >= self._end:
            if not buffer:
                buffer = self._buffer = bytearray((_TEMPLATE % self._poolFlags) * POOL_LINES)
            fillIdLines(buffer)
            self._end = len(buffer)
            i = 0
        self._next = i + LINE_SIZE
        return bytes(buffer[i:i + LINE_SIZE])

    _quickLineSliced.__doc__ = _quickLineInPlace.__doc__ = """
        The next C{traceparent} line of the pool (one slice): a new trace,
        its sampled flag set at ratio 1.  When L{quickLines} (ratio 0 or 1,
        no C{randbits}) that line decides the trace, so a protocol may keep
        just the line for a request without trace fields, and make its span
        with L{rootSpan} only if needed.  (One of two forms, by
        interpreter: see C{_IN_PLACE}.)
        """

    quickLine = _quickLineInPlace if _IN_PLACE else _quickLineSliced

    def rootSpan(self, line: bytes, start: float) -> Span:
        """
        The span of a new trace whose C{traceparent} line is C{line} (from
        L{quickLine}): a L{RecordingSpan} (no name or attributes yet) when
        its sampled flag is set, else an unrecorded L{Span}.
        """
        span: Any = _newRecording("", SPAN_KIND_SERVER, start) if line[67] == 49 else _new(Span)
        span.parentId = span.traceState = None
        span._replaces = False
        span._field = line
        return span  # type: ignore[no-any-return]

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
        line = self._line()
        if headers is not None and scan:
            # One pass: the trace fields, if any (names of 11 and 10
            # bytes; others of those lengths are compared in lower case).
            parents: Optional[List[bytes]] = None
            states: Optional[List[bytes]] = None
            for header in headers:
                field = header[0]
                size = len(field)
                if size == 11:
                    if field.lower() == _TRACEPARENT:
                        if parents is None:
                            parents = [header[1]]
                        else:
                            parents.append(header[1])
                elif size == 10 and field.lower() == _TRACESTATE:
                    if states is None:
                        states = [header[1]]
                    else:
                        states.append(header[1])
            if parents is not None or states is not None:
                valid = _validTraceparent(parents[0]) if parents is not None and len(parents) == 1 else None
                if valid is not None:
                    return self._continued(line, valid, parseTracestate(states) if states else None, name, kind,
                                           start)
                return self._new(line, name, kind, start, True)
        return self._new(line, name, kind, start, False)

    def startRequest(self, headers: Sequence[Tuple[bytes, bytes]], start: float, scan: bool) -> Span:
        """
        C{startSpan("", headers, SPAN_KIND_SERVER, start, scan)}, with the
        common case (no trace fields to look for, ratio 0 or 1) in fewer
        steps.
        """
        sampled = self._newSampled
        if scan or sampled is None or self._randbits is not None:
            return self.startSpan("", headers, SPAN_KIND_SERVER, start, scan)
        return self.rootSpan(self.quickLine(), start)

    def _new(self, line: bytes, name: str, kind: int, start: Optional[float], replaces: bool) -> Span:
        """
        The span of a new trace, its ids and C{traceparent} line in C{line}.
        """
        sampled = self._newSampled
        if sampled is None:
            # The sampler's TraceIdRatioBased rule, on the trace id's low
            # 64 bits.
            sampled = int(line[32:48], 16) < self.sampler._bound
            if sampled:
                line = line[:67] + b"1\r\n"
        if not sampled:
            span = _new(Span)
            span.parentId = span.traceState = None
        else:
            span = _newRecording(name, kind, self._wall() if start is None else start)
            span.parentId = span.traceState = None
        span._replaces = replaces
        span._field = line
        return span

    def _continued(self, line: bytes, parent: bytes, state: Optional[bytes], name: str, kind: int,
                   start: Optional[float]) -> Span:
        """
        The span continuing the trace of a valid C{traceparent} (C{parent},
        55 bytes), with this span's id from C{line}.
        """
        traceId = parent[3:35]
        if parent[54] in _ODD:
            span = _newRecording(name, kind, self._wall() if start is None else start)
            flags = b"-01\r\n"
        else:
            span = _new(Span)
            flags = b"-00\r\n"
        span.parentId = parent[36:52]
        span.traceState = state
        span._replaces = True
        span._field = b"".join((b"traceparent: 00-", traceId, b"-", line[49:65], flags))
        return span  # type: ignore[no-any-return]

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


def hasTraceFields(headers: Sequence[Tuple[bytes, bytes]]) -> bool:
    """
    Whether C{headers} (a request's fields, names in any case) hold a
    C{traceparent} or C{tracestate} field.
    """
    for header in headers:
        field = header[0]
        if len(field) in _TRACE_SIZES and field.lower() in _TRACE_FIELDS:
            return True
    return False


def _newRecording(name: str, kind: int, start: float) -> Any:
    """
    A L{RecordingSpan} without its ids (the caller sets them), made without
    calling its C{__init__}.
    """
    span = _new(RecordingSpan)
    span.name = name
    span.kind = kind
    span.start = start
    span.end = None
    span._attrs = {}
    span._blocks = None
    span._events = None
    span.statusCode = STATUS_UNSET
    span.statusMessage = ""
    return span
