# -*- test-case-name: tests.test_tracing -*-
"""
Exporting spans: a bounded queue, batches on a timer, one OTLP/HTTP POST at
a time from the reactor with a timeout.

Nothing here can delay traffic: L{BatchExporter.add} is a length check, the
span's encoding and an append.  Spans are encoded as they end, so the queue
holds one C{bytes} per span rather than the span's objects (less for the
garbage collector to walk, and a size that is known).  When the queue is full (the collector is slow, dead, or keeps
failing) the span is dropped and counted; a batch whose POST fails or times
out is dropped and counted too.  Memory is bounded by the queue plus the one
batch in flight.
"""

from __future__ import annotations

import os
from collections import deque
from typing import Any, Callable, Deque, Dict, Optional

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseFailed, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from txproxy import __version__
from txproxy.tracing._otlp import CONTENT_TYPE, encodeRequest, encodeSpanField, resourceAttributes
from txproxy.tracing._span import Span

__all__ = ["BatchExporter", "agentPoster", "PostFailed"]

log = Logger(namespace="txproxy.tracing")

#: A function that POSTs one encoded batch and returns a Deferred that
#: fires (with anything) when the collector accepted it, or fails.
Poster = Callable[[bytes], "defer.Deferred[Any]"]


class PostFailed(Exception):
    """
    The collector answered a batch with a status other than 2xx.
    """


@implementer(IBodyProducer)
class _BytesProducer:
    """
    A request body that is one C{bytes}.
    """

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.length = len(body) if body else UNKNOWN_LENGTH

    def startProducing(self, consumer: Any) -> "defer.Deferred[None]":
        consumer.write(self.body)
        return defer.succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


def agentPoster(reactor: Any, url: str, connectTimeout: float = 5.0) -> Poster:
    """
    A L{Poster} sending to C{url} with Twisted's HTTP client, over one
    persistent connection.

    @param reactor: the reactor to connect with.
    @param url: the collector's OTLP/HTTP traces URL
        (C{http://127.0.0.1:4318/v1/traces}).
    """
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 1
    pool.retryAutomatically = False
    agent = Agent(reactor, connectTimeout=connectTimeout, pool=pool)
    headers = Headers({b"Content-Type": [CONTENT_TYPE], b"User-Agent": [b"txproxy/" + __version__.encode()]})
    target = url.encode("ascii")

    def post(body: bytes) -> "defer.Deferred[Any]":
        d = agent.request(b"POST", target, headers, _BytesProducer(body))

        def answered(response: Any) -> Any:
            code = response.code
            d = readBody(response)
            if not 200 <= code < 300:
                d.addBoth(lambda _: Failure(PostFailed(f"collector answered {code}")))
            return d

        return d.addCallback(answered)

    post.pool = pool  # type: ignore[attr-defined]
    return post


class BatchExporter:
    """
    A bounded queue of ended spans, sent in batches.

    A batch goes when C{batchSize} spans are queued or C{interval} seconds
    after the first span of a batch was queued, whichever comes first; only
    one batch is in flight at a time, and each POST is cancelled after
    C{timeout} seconds.

    @ivar dropped: spans dropped (queue full, or their batch failed).
    @ivar exported: spans the collector accepted.
    @ivar failedBatches: batches that failed or timed out.
    """

    def __init__(
        self,
        post: Poster,
        clock: IReactorTime,
        maxQueue: int = 2048,
        batchSize: int = 512,
        interval: float = 1.0,
        timeout: float = 10.0,
        resource: Optional[Dict[str, Any]] = None,
    ) -> None:
        if batchSize < 1 or maxQueue < batchSize:
            raise ValueError("need 1 <= batchSize <= maxQueue")
        self.post = post
        self.clock = clock
        self.maxQueue = maxQueue
        self.batchSize = batchSize
        self.interval = interval
        self.timeout = timeout
        if resource is None:
            resource = resourceAttributes(os.environ.get("OTEL_SERVICE_NAME") or "txproxy", __version__)
        self.resource = resource
        self._queue: Deque[bytes] = deque()
        self._timer: Any = None
        self._inFlight: Optional[defer.Deferred] = None
        self._failing = False
        self._stopped = False
        self.dropped = 0
        self.exported = 0
        self.failedBatches = 0

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, span: Span) -> None:
        """
        Queue an ended span (or drop it, counted, when the queue is full).
        """
        queue = self._queue
        if len(queue) >= self.maxQueue or self._stopped:
            self.dropped += 1
            return
        try:
            queue.append(encodeSpanField(span))
        except Exception:
            # (An attribute value a hook set that cannot be encoded.)
            self.dropped += 1
            log.failure("tracing: could not encode span {span!r}", span=span)
            return
        self._queued(queue)

    def addEncoded(self, field: bytes) -> None:
        """
        Queue an ended span already encoded as a C{ScopeSpans} field
        (L{txproxy.tracing.encodeHTTPSpan}), or drop it, counted, when the
        queue is full.
        """
        queue = self._queue
        if len(queue) >= self.maxQueue or self._stopped:
            self.dropped += 1
            return
        queue.append(field)
        # (_queued, in place: this runs for every recorded request.)
        if self._timer is None and self._inFlight is None:
            self._timer = self.clock.callLater(self.interval if len(queue) < self.batchSize else 0, self._send)
        elif len(queue) == self.batchSize and self._inFlight is None:
            self._timer.reset(0)

    def _queued(self, queue: Deque[bytes]) -> None:
        if self._timer is None and self._inFlight is None:
            delay = self.interval if len(queue) < self.batchSize else 0
            self._timer = self.clock.callLater(delay, self._send)
        elif len(queue) == self.batchSize and self._inFlight is None:
            self._timer.reset(0)

    def _send(self) -> None:
        self._timer = None
        if self._inFlight is not None or not self._queue:
            return
        queue = self._queue
        n = min(len(queue), self.batchSize)
        batch = [queue.popleft() for _ in range(n)]
        try:
            body = encodeRequest(batch, self.resource, ("txproxy", __version__))
            d = self.post(body)
        except Exception:
            log.failure("tracing: could not send a batch of {n} spans", n=n)
            self._batchFailed(n)
            self._next()
            return
        d.addTimeout(self.timeout, self.clock)
        self._inFlight = d
        d.addCallbacks(lambda _: self._sent(n), lambda f: self._failed(f, n))
        d.addErrback(lambda f: log.failure("tracing: unexpected error", f))

    def _sent(self, n: int) -> None:
        self._inFlight = None
        self.exported += n
        if self._failing:
            self._failing = False
            log.info("tracing: the collector accepts spans again")
        self._next()

    def _failed(self, f: Failure, n: int) -> None:
        self._inFlight = None
        self._batchFailed(n)
        if not self._failing:
            self._failing = True
            reason = "timed out" if f.check(defer.TimeoutError, defer.CancelledError) else _describe(f)
            log.warn(
                "tracing: sending spans to the collector failed ({reason}); spans are dropped and counted "
                "in txproxy_trace_spans_dropped_total until it works again (logged once)",
                reason=reason,
            )
        self._next()

    def _batchFailed(self, n: int) -> None:
        self.failedBatches += 1
        self.dropped += n

    def _next(self) -> None:
        queue = self._queue
        if queue and self._timer is None and not self._stopped:
            self._timer = self.clock.callLater(0 if len(queue) >= self.batchSize else self.interval, self._send)

    def flush(self) -> "defer.Deferred[None]":
        """
        Send what is queued now (one batch at a time) and stop; fires when
        done or when the last batch failed or timed out.  Spans added after
        this are dropped.
        """
        self._stopped = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        done: defer.Deferred[None] = defer.Deferred()

        def step(_: Any = None) -> None:
            if self._inFlight is not None:
                self._inFlight.addBoth(lambda r: (self.clock.callLater(0, step), r)[1])
                return
            if not self._queue:
                done.callback(None)
                return
            self._send()
            step()

        step()
        return done


def _describe(f: Failure) -> str:
    if f.check(ResponseFailed):
        reasons = getattr(f.value, "reasons", None) or []
        return "; ".join(str(r.value) for r in reasons) or "response failed"
    return str(f.value) or type(f.value).__name__
