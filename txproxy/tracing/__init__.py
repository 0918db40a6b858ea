# -*- test-case-name: tests.test_tracing_context,tests.test_tracing -*-
"""
Distributed tracing: W3C Trace Context propagation and OpenTelemetry spans
exported over OTLP/HTTP (C{--trace-otlp}, C{--trace-sample};
C{docs/tracing.rst}).

  - L{txproxy.tracing._context}: sans-IO C{traceparent}/C{tracestate}
    parsing and generation, parent-based sampling;
  - L{Span} and L{Tracer}: spans kept on the protocol that serves the
    request (never in a context variable);
  - L{BatchExporter}: a bounded queue, batches, one POST at a time with a
    timeout, drops counted;
  - L{encodeSpans}: the OTLP protobuf encoding, by hand.
"""

from __future__ import annotations

from txproxy.tracing._client import HTTPPoster, ResponseReader
from txproxy.tracing._context import (
    MAX_TRACESTATE_MEMBERS,
    Sampler,
    TraceParent,
    contextFromHeaders,
    newSpanId,
    newTraceId,
    parseTraceparent,
    parseTracestate,
)
from txproxy.tracing._export import BatchExporter, PostFailed, agentPoster
from txproxy.tracing._otlp import encodeSpans
from txproxy.tracing._semconv import connectionAttributes, encodeHTTPSpan, endSpan, startHTTPSpan, startStreamSpan
from txproxy.tracing._service import TracingCollector, TracingService, tracingFor
from txproxy.tracing._span import (
    SPAN_KIND_CLIENT,
    SPAN_KIND_SERVER,
    STATUS_ERROR,
    STATUS_UNSET,
    RecordingSpan,
    Span,
    Tracer,
)

__all__ = [
    "MAX_TRACESTATE_MEMBERS",
    "Sampler",
    "TraceParent",
    "contextFromHeaders",
    "newSpanId",
    "newTraceId",
    "parseTraceparent",
    "parseTracestate",
    "BatchExporter",
    "PostFailed",
    "agentPoster",
    "HTTPPoster",
    "ResponseReader",
    "encodeSpans",
    "connectionAttributes",
    "endSpan",
    "encodeHTTPSpan",
    "startHTTPSpan",
    "startStreamSpan",
    "TracingCollector",
    "TracingService",
    "tracingFor",
    "SPAN_KIND_CLIENT",
    "SPAN_KIND_SERVER",
    "STATUS_ERROR",
    "STATUS_UNSET",
    "RecordingSpan",
    "Span",
    "Tracer",
]
