# -*- test-case-name: tests.test_h2_client -*-
"""
HTTP/2 to backends (C{h2c://} and C{h2://} routes), as a shim under the
HTTP/1.1 core.

L{H2ClientConnection} is one connection to a backend, carrying many
streams at once.  Each request gets an L{H2StreamTransport}: a virtual
transport to which an ordinary L{txproxy.upstream.UpstreamHTTPProtocol} is
connected.  The core writes HTTP/1.1 request bytes to it, exactly as to a
TCP connection; they are parsed (L{txproxy.h2._translate.MessageReader})
into HEADERS, DATA and trailers on a new stream.  The stream's response is
turned back into HTTP/1.1 bytes (L{responseFromH2}, L{chunk},
L{lastChunk}) and fed to the protocol's C{dataReceived}.  A reset stream or
a lost connection is the protocol's C{connectionLost}, so the core answers
C{502} or aborts exactly as for an HTTP/1.1 upstream that closed.  Policy,
hooks, timers and the access log are the core's own.

One virtual transport serves one request (one stream), never a sequence:
the connection-level reuse is L{txproxy.h2._clientpool.H2ClientPool}'s,
which hands out a stream on a connection with room, while the core's
L{txproxy.upstream.UpstreamPool} never holds a virtual transport (the
protocol is marked C{lost} before the last bytes of its response are
delivered, so the core closes it instead of pooling it, and closing a
finished stream does nothing).  A stream carried by a transport that
outlived its request would have to move to another connection when its own
filled up or went away, and the two pools would disagree about capacity.

Flow control, both ways, is the producer/consumer pairing of the core:

  - response: the core registers the virtual transport as the client
    transport's producer; while paused, the bytes DATA frames bring are
    not acknowledged, so the backend's window for the stream closes and at
    most one stream window is buffered.  The connection window is opened
    to L{H2ClientConnection.connectionWindow} so that paused streams never
    starve the others.
  - request: DATA goes out as the stream's and the connection's send
    windows allow; the rest is kept, and the registered producer (the
    client transport) is paused while more than L{SEND_BUFFER} bytes are
    kept, and resumed when a C{WINDOW_UPDATE} lets them go.  The TCP (or
    TLS) transport's own back-pressure holds all DATA back the same way.
"""

from __future__ import annotations

import ssl
from typing import Any, Dict, Optional, Set

import h2.events as ev
from h2.config import H2Configuration
from h2.connection import ConnectionState, H2Connection
from h2.errors import ErrorCodes
from h2.exceptions import H2Error, ProtocolError
from h2.settings import SettingCodes
from twisted.internet import defer, error
from twisted.internet.interfaces import IHandshakeListener, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txproxy.h2._closed import ClosedStreams
from txproxy.h2._hpack import cachingCodecs
from txproxy.h2._settings import CompactSettings
from txproxy.h2._stream import CONNECTION_DONE, SEND_BUFFER, H2StreamTransport, codeName
from txproxy.http import HTTPError
from txproxy.tls import verificationFailure

__all__ = ["H2ClientConnection", "H2DialError", "H2StreamTransport", "SEND_BUFFER"]

log = Logger(namespace="txproxy.h2")


class H2DialError(HTTPError, error.ConnectError):
    """
    A backend connection that cannot carry HTTP/2: TLS did not select ALPN
    C{h2}, the backend's certificate was refused, or the backend does not
    speak HTTP/2.  A C{502} naming the reason (an L{HTTPError}) that counts
    as an unreachable upstream (a C{ConnectError}: C{upstreamFailed} runs).
    """

    def __init__(self, reason: str) -> None:
        HTTPError.__init__(self, 502, reason)

    def __str__(self) -> str:
        return self.reason


class _GracefulH2Connection(ClosedStreams, H2Connection):
    """
    C{h2}'s connection, except that a C{GOAWAY} received does not end it:
    C{h2} refuses every frame after one as a protocol error, so the streams
    the backend promised to finish (those up to its last stream id) could
    not.  The C{GOAWAY} is still reported (C{ConnectionTerminated}) and
    L{H2ClientConnection} opens no stream after it.
    """

    def __init__(self, config: Any = None) -> None:
        super().__init__(config=config)
        # The same settings without a deque per setting (txproxy.h2._settings).
        self.local_settings = CompactSettings(client=self.config.client_side, initial_values=dict(self.local_settings))
        self.remote_settings = CompactSettings(client=not self.config.client_side)
        # How closed streams ended, without a record per stream (txproxy.h2._closed).
        self._keepClosedStreams()

    def _begin_new_stream(self, stream_id: int, allowed_ids: Any) -> Any:
        self._noteNewStream(stream_id)
        return super()._begin_new_stream(stream_id, allowed_ids)

    def _receive_goaway_frame(self, frame: Any) -> Any:
        wasOpen = self.state_machine.state is ConnectionState.CLIENT_OPEN
        result = super()._receive_goaway_frame(frame)
        if wasOpen and self.state_machine.state is ConnectionState.CLOSED:
            self.state_machine.state = ConnectionState.CLIENT_OPEN
        return result


@implementer(IHandshakeListener, IPushProducer)
class H2ClientConnection(Protocol):
    """
    One HTTP/2 connection to a backend, many streams at once.

    @ivar ready: fires with this connection once the backend's SETTINGS
        arrived (and, over TLS, ALPN selected C{h2}); fails if it never
        does.  Cancelling it aborts the connection.
    @ivar key: the pool key.
    @ivar pool: the L{txproxy.h2._clientpool.H2ClientPool} it is in.
    @ivar maxStreams: streams it may carry at once: the backend's
        C{SETTINGS_MAX_CONCURRENT_STREAMS}, at most L{maxStreamsCap}.
    @ivar goingAway: set once no new stream may start here (C{GOAWAY}
        from the backend, idle, retired by a reload or stop).
    @ivar lost: set once the connection is closed.
    """

    #: Streams used at most, whatever the backend allows.
    maxStreamsCap = 256
    #: The connection's receive window, opened at once: enough for every
    #: stream's window, so that paused streams do not starve the others.
    connectionWindow = 16 * 1024 * 1024
    #: Assumed until the backend's SETTINGS say (RFC 9113 section 6.5.2
    #: recommends at least 100).
    maxStreams = 100

    key = ""
    pool: Any = None
    goingAway = False
    lost = False
    _ready = False
    _writePaused = False
    _receiving = False
    _idleCall: Any = None

    def __init__(self, clock: IReactorTime, scheme: bytes = b"http", tls: bool = False, idleTimeout: float = 30.0,
                 address: str = "") -> None:
        """
        @param clock: for the idle timer.
        @param scheme: the C{:scheme} of its requests (C{https} for C{h2://}).
        @param tls: whether it runs over TLS (ALPN is then checked).
        @param idleTimeout: seconds it is kept with no stream open.
        @param address: the backend as logs show it.
        """
        self.clock = clock
        self.scheme = scheme
        self.tls = tls
        self.idleTimeout = idleTimeout
        self.address = address
        self.streams: Dict[int, H2StreamTransport] = {}
        self.reserved: Set[H2StreamTransport] = set()
        self._blocked: Dict[int, H2StreamTransport] = {}
        self._conn = _GracefulH2Connection(config=H2Configuration(client_side=True, header_encoding=None))
        cachingCodecs(self._conn)
        self.ready: defer.Deferred = defer.Deferred(self._cancelReady)

    # -- capacity

    @property
    def available(self) -> bool:
        """
        Whether a new stream may be started here now.
        """
        return self._ready and not self.goingAway and not self.lost and len(self.streams) + len(self.reserved) < self.maxStreams

    @property
    def active(self) -> int:
        """
        Streams open or handed out.
        """
        return len(self.streams) + len(self.reserved)

    def newStream(self, protocol: Any) -> H2StreamTransport:
        """
        Connect C{protocol} (an L{txproxy.upstream.UpstreamHTTPProtocol}) to
        a new stream of this connection; the stream opens when the request
        head is written.
        """
        self._cancelIdle()
        stream = H2StreamTransport(self, protocol)
        self.reserved.add(stream)
        protocol.makeConnection(stream)
        return stream

    def retire(self) -> None:
        """
        Start no new stream here; close once the open ones are over.
        """
        if self.lost:
            return
        if not self.goingAway:
            self.goingAway = True
            if self.pool is not None:
                self.pool.remove(self)
        if not self.streams and not self.reserved:
            self._close()

    # -- Protocol

    def connectionMade(self) -> None:
        conn = self._conn
        conn.initiate_connection()
        conn.update_settings({SettingCodes.ENABLE_PUSH: 0})
        conn.increment_flow_control_window(self.connectionWindow)
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]
        self._flush()

    def handshakeCompleted(self) -> None:
        selected = getattr(self.transport, "negotiatedProtocol", None)
        if selected != b"h2":
            name = selected.decode("ascii", "replace") if selected else "none"
            self._dialFailed(f"the backend did not select ALPN h2 (it selected {name})")

    def dataReceived(self, data: bytes) -> None:
        if self.lost:
            return
        if not self._ready and data[:5] == b"HTTP/":
            # (h2 would wait for the rest of a "frame" megabytes long.)
            self._dialFailed("the backend does not speak HTTP/2 (it answered in HTTP/1)")
            return
        try:
            events = self._conn.receive_data(data)
        except (ProtocolError, H2Error) as e:
            if not self._ready:
                self._dialFailed(f"the backend does not speak HTTP/2 ({e.__class__.__name__})")
            else:
                log.warn("HTTP/2 backend {backend} broke the protocol: {error}", backend=self.address, error=str(e))
                self._flush()
                self.transport.loseConnection()  # type: ignore[union-attr]
            return
        self._receiving = True
        try:
            for event in events:
                self._event(event)
        finally:
            self._receiving = False
        self._flush()

    def connectionLost(self, reason: Failure = CONNECTION_DONE) -> None:
        self.lost = True
        self._cancelIdle()
        if self.pool is not None:
            self.pool.remove(self)
        if not self.ready.called:
            detail = verificationFailure(reason.value)
            if detail is not None:
                self._dialFailed(f"TLS verification of the upstream failed: {detail}")
            elif isinstance(reason.value, ssl.SSLError):
                text = reason.getErrorMessage()
                if "NO_APPLICATION_PROTOCOL" in text.upper():
                    self._dialFailed("the backend did not select ALPN h2 (TLS alert no_application_protocol)")
                else:
                    self._dialFailed(f"TLS handshake with the backend failed: {text}")
            else:
                self.ready.errback(Failure(error.ConnectionLost(
                    f"the backend closed the connection before its HTTP/2 SETTINGS ({reason.getErrorMessage()})")))
        lost = Failure(error.ConnectionLost(f"the HTTP/2 connection to the backend was lost ({reason.getErrorMessage()})"))
        for stream in list(self.streams.values()) + list(self.reserved):
            stream._lost(lost)

    # -- IPushProducer: the TCP/TLS transport's back-pressure on DATA

    def pauseProducing(self) -> None:
        self._writePaused = True

    def resumeProducing(self) -> None:
        self._writePaused = False
        self._sendBlocked()
        self._flush()

    def stopProducing(self) -> None:
        self._writePaused = True

    # -- events

    def _event(self, event: Any) -> None:
        kind = type(event)
        if kind is ev.DataReceived:
            stream = self.streams.get(event.stream_id)
            if stream is None:
                self._conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            else:
                stream._data(event.data or b"", event.flow_controlled_length)
        elif kind is ev.ResponseReceived:
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream._headers(event.headers, event.stream_ended is not None)
        elif kind is ev.StreamEnded:
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream._ended()
        elif kind is ev.WindowUpdated:
            self._sendBlocked()
        elif kind is ev.InformationalResponseReceived:
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream._interim(event.headers)
        elif kind is ev.TrailersReceived:
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream._trailersReceived(event.headers)
                if event.stream_ended is None:
                    stream._ended()  # (h2 always ends a stream with its trailers)
        elif kind is ev.StreamReset:
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream._reset(event.error_code)
        elif kind is ev.RemoteSettingsChanged:
            remote = self._conn.remote_settings.max_concurrent_streams
            self.maxStreams = max(0, min(remote, self.maxStreamsCap))
            if SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
                self._sendBlocked()
            if not self._ready:
                self._ready = True
                if not self.ready.called:
                    self.ready.callback(self)
            elif self.pool is not None:
                self.pool.capacityChanged(self)
        elif kind is ev.ConnectionTerminated:
            self._goaway(event.last_stream_id, event.error_code)
        elif kind is ev.PushedStreamReceived:
            self._conn.reset_stream(event.pushed_stream_id, ErrorCodes.REFUSED_STREAM)

    def _goaway(self, lastStreamId: Optional[int], code: int) -> None:
        """
        C{GOAWAY}: streams past C{lastStreamId} were never processed; the
        others finish; nothing new starts here.
        """
        if not self._ready:
            self._dialFailed(f"the backend refused HTTP/2 ({codeName(code)})")
            return
        self.goingAway = True
        if self.pool is not None:
            self.pool.remove(self)
        last = lastStreamId if lastStreamId is not None else 2 ** 31
        reason = Failure(error.ConnectionLost(f"the backend sent GOAWAY ({codeName(code)}) before this stream"))
        for sid, stream in list(self.streams.items()):
            if sid > last:
                stream._lost(reason)
        if code != ErrorCodes.NO_ERROR:
            log.info("HTTP/2 backend {backend} sent GOAWAY ({code})", backend=self.address, code=codeName(code))
        if not self.streams and not self.reserved:
            self._close()

    def _dialFailed(self, why: str) -> None:
        log.warn("HTTP/2 backend {backend}: {why}", backend=self.address or "?", why=why)
        self.goingAway = True
        if not self.ready.called:
            self.ready.errback(Failure(H2DialError(why)))
        if self.transport is not None and not self.lost:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def _cancelReady(self, d: defer.Deferred) -> None:
        self.goingAway = True
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    # -- streams (called by H2StreamTransport)

    def _openStream(self, stream: H2StreamTransport, headers: Any, endStream: bool) -> bool:
        self.reserved.discard(stream)
        if self.lost:
            stream._refused("the HTTP/2 connection to the backend is closed")
            return False
        conn = self._conn
        try:
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, headers, end_stream=endStream)
        except (H2Error, ValueError) as e:
            stream._refused(f"cannot open an HTTP/2 stream to the backend: {e}")
            return False
        stream.streamId = sid
        self.streams[sid] = stream
        self._flush()
        return True

    def _sendPending(self, stream: H2StreamTransport) -> None:
        """
        Send what C{stream} keeps, as far as the windows allow.
        """
        sid = stream.streamId
        if sid is None or self.lost:
            return
        conn = self._conn
        out = stream._out
        while out and not self._writePaused:
            window = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
            if window <= 0:
                break
            piece = out.popleft()
            if len(piece) > window:
                out.appendleft(piece[window:])
                piece = piece[:window]
            stream._outBytes -= len(piece)
            conn.send_data(sid, piece)
        if out:
            self._blocked[sid] = stream
            stream._blocked()
            return
        self._blocked.pop(sid, None)
        pending, stream._endPending = stream._endPending, None
        if pending is True:
            conn.end_stream(sid)
            stream._requestDone = True
        elif pending is not None:
            conn.send_headers(sid, pending, end_stream=True)
            stream._requestDone = True
        stream._sent()
        if stream._requestDone and stream._responseDone and not stream._closed:
            stream._close(CONNECTION_DONE)

    def _sendBlocked(self) -> None:
        for stream in list(self._blocked.values()):
            if self._writePaused:
                break
            self._sendPending(stream)
        if not self._receiving:
            self._flush()

    def _ack(self, stream: H2StreamTransport, flush: bool = True) -> None:
        n, stream._unacked = stream._unacked, 0
        if n and stream.streamId is not None and not self.lost:
            self._conn.acknowledge_received_data(n, stream.streamId)
            if flush and not self._receiving:
                self._flush()

    def _reset(self, stream: H2StreamTransport, code: int) -> None:
        sid = stream.streamId
        if sid is None or self.lost:
            return
        if stream._unacked:
            self._ack(stream, flush=False)
        try:
            self._conn.reset_stream(sid, code)
        except H2Error:
            pass  # closed already (both ends ended)
        if not self._receiving:
            self._flush()

    def _streamClosed(self, stream: H2StreamTransport) -> None:
        self.reserved.discard(stream)
        sid = stream.streamId
        if sid is not None:
            self.streams.pop(sid, None)
            self._blocked.pop(sid, None)
        if self.lost:
            return
        if self.streams or self.reserved:
            if self.pool is not None and self.available:
                self.pool.capacityChanged(self)
            return
        if self.goingAway:
            self._close()
            return
        if self.pool is not None:
            self.pool.capacityChanged(self)
        self._idleCheck()

    # -- closing

    def _idleCheck(self) -> None:
        """
        Start the idle timer if no stream is open or handed out.
        """
        if not self.streams and not self.reserved and not self.lost and self._idleCall is None:
            self._idleCall = self.clock.callLater(self.idleTimeout, self._idle)

    def _idle(self) -> None:
        self._idleCall = None
        if not self.streams and not self.reserved:
            self.retire()

    def _cancelIdle(self) -> None:
        call, self._idleCall = self._idleCall, None
        if call is not None and call.active():
            call.cancel()

    def _close(self) -> None:
        """
        Say C{GOAWAY} and close (no stream is open).
        """
        self.goingAway = True
        self._cancelIdle()
        if self.lost or self.transport is None:
            return
        try:
            self._conn.close_connection()
        except H2Error:
            pass
        self._flush()
        self.transport.loseConnection()

    def _flush(self) -> None:
        data = self._conn.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)
