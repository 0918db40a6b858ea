# -*- test-case-name: tests.test_h2_client -*-
"""
The virtual transport of one request to an HTTP/2 backend
(L{H2StreamTransport}): one stream of an
L{txproxy.h2._client.H2ClientConnection}, to which the HTTP/1.1 core's
L{txproxy.upstream.UpstreamHTTPProtocol} is connected.  See
L{txproxy.h2._client} for the design.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, Deque, Iterable, Optional

from h2.errors import ErrorCodes
from twisted.internet import error
from twisted.internet.interfaces import IConsumer, IPushProducer, ITransport
from twisted.python.failure import Failure
from zope.interface import implementer

from txproxy.h2._translate import (
    Data,
    Head,
    MessageReader,
    StreamError,
    Trailers,
    chunk,
    lastChunk,
    responseFromH2,
)
from txproxy.http import HTTPError

if TYPE_CHECKING:  # pragma: no cover
    from txproxy.h2._client import H2ClientConnection

__all__ = ["H2StreamTransport", "SEND_BUFFER", "codeName"]

#: Request body bytes kept per stream (waiting for the backend's window)
#: before the request's producer is paused.
SEND_BUFFER = 65536

CONNECTION_DONE = Failure(error.ConnectionDone())


def codeName(code: Any) -> str:
    """
    The name of an HTTP/2 error code (C{CANCEL}), or C{error N}.
    """
    try:
        return ErrorCodes(code).name
    except ValueError:
        return f"error {code}"


@implementer(ITransport, IPushProducer, IConsumer)
class H2StreamTransport:
    """
    The transport of one request's L{txproxy.upstream.UpstreamHTTPProtocol}:
    one stream of an L{H2ClientConnection}.

    @ivar streamId: the stream's id once its HEADERS went out, else L{None}.
    @ivar producer: the request body's producer (the client transport),
        registered by the core.
    @ivar disconnecting: set once the core closed it.
    @ivar connected: cleared once the stream is over.
    """

    streamId: Optional[int] = None
    producer: Any = None
    disconnecting = False
    connected = True
    #: Whether this stream's request and response are both complete.
    _requestDone = False
    _responseDone = False
    _gotHead = False
    _chunked = False
    _paused = False
    _producerPaused = False
    _unacked = 0
    _trailers: Any = None
    _endPending: Any = None  # True, or the trailers, once the request ended
    _closed = False

    def __init__(self, connection: "H2ClientConnection", protocol: Any) -> None:
        self._conn = connection
        self._proto = protocol
        self._reader = MessageReader(False, scheme=connection.scheme)
        self._method = b"GET"
        self._out: Deque[bytes] = deque()
        self._outBytes = 0

    # -- ITransport, as the core uses it

    def write(self, data: bytes) -> None:
        """
        Take HTTP/1.1 request bytes: the head opens the stream, the body is
        sent as DATA (as the windows allow), its end ends the stream.
        """
        if self._closed or self.disconnecting or not data:
            return
        try:
            events = self._reader.feed(data)
        except (StreamError, HTTPError) as e:
            self._refused(f"the request cannot be sent over HTTP/2: {getattr(e, 'reason', e)}")
            return
        conn = self._conn
        for event in events:
            if isinstance(event, Data):
                if event.data:
                    self._out.append(event.data)
                    self._outBytes += len(event.data)
            elif isinstance(event, Head):
                if self.streamId is not None or self._requestDone:
                    self._refused("a second request on one HTTP/2 stream")
                    return
                self._method = _methodOf(event.headers)
                if event.endStream:
                    self._requestDone = True
                if not conn._openStream(self, event.headers, event.endStream):
                    return
            elif isinstance(event, Trailers):
                self._endPending = list(event.headers)
            elif self._endPending is None and not self._requestDone:
                self._endPending = True
        if self.streamId is not None and (self._out or self._endPending is not None):
            conn._sendPending(self)
            conn._flush()

    def writeSequence(self, iovec: Iterable[bytes]) -> None:
        self.write(b"".join(iovec))

    def loseConnection(self) -> None:
        """
        The core is done with this request: reset the stream
        (C{CANCEL}) if its exchange is not complete, else nothing.
        """
        if self.disconnecting or self._closed:
            return
        self.disconnecting = True
        self._cancel()
        self._close(CONNECTION_DONE)

    def abortConnection(self) -> None:
        """
        As L{loseConnection}: a stream has no gentler close than a reset.
        """
        if self._closed:
            return
        self.disconnecting = True
        self._cancel()
        self._close(Failure(error.ConnectionAborted()))

    def getPeer(self) -> Any:
        return self._conn.transport.getPeer()  # type: ignore[union-attr]

    def getHost(self) -> Any:
        return self._conn.transport.getHost()  # type: ignore[union-attr]

    # -- IPushProducer: the client transport's back-pressure on the response

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        if self._unacked:
            self._conn._ack(self)

    def stopProducing(self) -> None:
        self.abortConnection()

    # -- IConsumer: the request body's producer

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer
        if self._outBytes > SEND_BUFFER and not self._producerPaused:
            self._producerPaused = True
            producer.pauseProducing()

    def unregisterProducer(self) -> None:
        producer, self.producer = self.producer, None
        if self._producerPaused:
            # Nothing else would resume it (the core pauses and resumes
            # its client on its own account).
            self._producerPaused = False
            if producer is not None:
                producer.resumeProducing()

    # -- from the connection

    def _sent(self) -> None:
        """
        Some buffered request bytes went out: resume the producer once
        few are kept.
        """
        if self._producerPaused and self._outBytes <= SEND_BUFFER // 2:
            self._producerPaused = False
            if self.producer is not None:
                self.producer.resumeProducing()

    def _blocked(self) -> None:
        if self._outBytes > SEND_BUFFER and not self._producerPaused and self.producer is not None:
            self._producerPaused = True
            self.producer.pauseProducing()

    def _headers(self, headers: Any, endStream: bool) -> None:
        try:
            head, chunked = responseFromH2(headers, self._method, endStream)
        except (StreamError, HTTPError) as e:
            self._conn._reset(self, ErrorCodes.PROTOCOL_ERROR)
            reason = getattr(e, "reason", str(e))
            self._lost(Failure(error.ConnectionLost(f"bad HTTP/2 response from the backend: {reason}")))
            return
        self._gotHead = True
        self._chunked = chunked
        if endStream:
            self._endResponse(head)
        else:
            self._deliver(head)

    def _interim(self, headers: Any) -> None:
        try:
            head, _ = responseFromH2(headers, self._method, False)
        except (StreamError, HTTPError):
            return  # a bad 1xx is dropped, as h2 itself treats none as final
        self._deliver(head)

    def _data(self, data: bytes, flowLength: int) -> None:
        self._unacked += flowLength
        if data and not self._responseDone:
            self._deliver(chunk(data) if self._chunked else data)
        if not self._paused and self._unacked and not self._closed:
            self._conn._ack(self, flush=False)

    def _trailersReceived(self, headers: Any) -> None:
        self._trailers = headers

    def _ended(self) -> None:
        if self._responseDone or self._closed:
            return
        if not self._gotHead:
            self._conn._reset(self, ErrorCodes.PROTOCOL_ERROR)
            self._lost(Failure(error.ConnectionLost("the backend ended a stream without a response")))
            return
        self._endResponse(lastChunk(self._trailers) if self._chunked else b"")

    def _endResponse(self, last: bytes) -> None:
        self._responseDone = True
        proto = self._proto
        # Not for the core's UpstreamPool: a stream carries one request.
        proto.lost = True
        if last:
            self._deliver(last)
        if self._requestDone and not self._closed:
            self._close(CONNECTION_DONE)

    def _deliver(self, data: bytes) -> None:
        if not self._closed:
            self._proto.dataReceived(data)

    def _reset(self, code: int) -> None:
        """
        The backend reset the stream.
        """
        self._requestDone = True  # nothing more may be sent
        if self._responseDone:
            self._close(CONNECTION_DONE)
            return
        self._lost(Failure(error.ConnectionLost(f"the backend reset the stream ({codeName(code)})")))

    def _lost(self, reason: Failure) -> None:
        if not self._closed:
            self._requestDone = True
            self._close(reason)

    def _refused(self, why: str) -> None:
        """
        The stream cannot be opened, or the core's bytes cannot be sent:
        reset, and report the loss on the next turn (never from inside
        the core's own C{write}).
        """
        self.disconnecting = True
        self._cancel()
        reason = Failure(error.ConnectionLost(why))
        self._conn.clock.callLater(0, self._lost, reason)

    def _cancel(self) -> None:
        if self.streamId is not None and not (self._requestDone and self._responseDone):
            self._conn._reset(self, ErrorCodes.CANCEL)
        self._requestDone = True

    def _close(self, reason: Failure) -> None:
        self._closed = True
        self.connected = False
        self._out.clear()
        self._outBytes = 0
        self._conn._streamClosed(self)
        producer, self.producer = self.producer, None
        if self._producerPaused:
            self._producerPaused = False
            if producer is not None:
                producer.resumeProducing()
        self._proto.connectionLost(reason)


def _methodOf(headers: Any) -> bytes:
    for name, value in headers:
        if name == b":method":
            return value  # type: ignore[no-any-return]
    return b"GET"
