# -*- test-case-name: tests.test_tracing -*-
"""
The tracing service: one L{Tracer} and its exporter for the process,
started and stopped with the proxy.
"""

from __future__ import annotations

from typing import Any, Iterator, List, Optional

from prometheus_client.core import CounterMetricFamily, Metric
from twisted.application.service import Service
from twisted.internet import defer

from txproxy.tracing._client import HTTPPoster
from txproxy.tracing._export import BatchExporter, agentPoster
from txproxy.tracing._span import Tracer

__all__ = ["TracingService", "tracingFor", "TracingCollector"]

#: Longest a stopping proxy waits for its last spans to reach the collector.
STOP_FLUSH_TIMEOUT = 3.0


class TracingService(Service):
    """
    Holds the process's L{Tracer}; when stopped, sends the spans still
    queued (for at most L{STOP_FLUSH_TIMEOUT} seconds).

    @ivar tracer: the L{Tracer} the listener factories share.
    @ivar exporter: its L{BatchExporter}.
    """

    name = "tracing"  # type: ignore[assignment]

    def __init__(self, tracer: Tracer, exporter: BatchExporter) -> None:
        self.tracer = tracer
        self.exporter = exporter

    def stopService(self) -> "defer.Deferred[Any]":
        Service.stopService(self)
        d = self.exporter.flush()
        d.addTimeout(STOP_FLUSH_TIMEOUT, self.exporter.clock)
        d.addErrback(lambda _: None)
        close = getattr(self.exporter.post, "close", None)
        if close is not None:
            d.addBoth(lambda _: close())
        pool = getattr(self.exporter.post, "pool", None)
        if pool is not None:
            d.addBoth(lambda _: pool.closeCachedConnections())
        return d


class TracingCollector:
    """
    The exporter's counters as Prometheus series, read at scrape time:
    C{txproxy_trace_spans_dropped_total} (the queue was full, or the batch
    failed or timed out) and C{txproxy_trace_spans_exported_total}, with
    the C{worker} label.  Registered on the process's
    L{txproxy.metrics.Metrics} registry when both exist.
    """

    def __init__(self, exporter: BatchExporter, worker: str = "0") -> None:
        self.exporter = exporter
        self.worker = worker

    def describe(self) -> List[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        for name, value, doc in (
            ("txproxy_trace_spans_dropped", self.exporter.dropped,
             "Spans dropped: the export queue was full, or their batch failed or timed out."),
            ("txproxy_trace_spans_exported", self.exporter.exported, "Spans the collector accepted."),
        ):
            family = CounterMetricFamily(name, doc, labels=["worker"])
            family.add_metric([self.worker], value)
            yield family


def tracingFor(config: Any, reactor: Any) -> Optional[TracingService]:
    """
    The L{TracingService} for C{config} (C{traceOtlp}, C{traceSample}), or
    L{None} when tracing is off (no C{--trace-otlp}).
    """
    url = getattr(config, "traceOtlp", None)
    if not url:
        return None
    # Our own persistent HTTP/1.1 client for http:// collectors (cheaper per
    # batch); Twisted's Agent for https://.
    post: Any = HTTPPoster(reactor, url) if url.lower().startswith("http://") else agentPoster(reactor, url)
    exporter = BatchExporter(post, reactor)
    tracer = Tracer(config.traceSample, exporter)
    return TracingService(tracer, exporter)
