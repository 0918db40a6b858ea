# -*- test-case-name: tests.test_tracing_context -*-
"""
Distributed tracing: W3C Trace Context propagation and OpenTelemetry spans
exported over OTLP/HTTP.
"""

from __future__ import annotations

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

__all__ = [
    "MAX_TRACESTATE_MEMBERS",
    "Sampler",
    "TraceParent",
    "contextFromHeaders",
    "newSpanId",
    "newTraceId",
    "parseTraceparent",
    "parseTracestate",
]
