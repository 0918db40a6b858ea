# -*- test-case-name: tests.test_h2_server -*-
"""
HTTP/2 from clients: one L{H2ServerConnection} per client connection that
opened with the HTTP/2 preface (prior knowledge, or ALPN C{h2} on TLS).

Each stream is served by its own instance of the listener's protocol class
(the user's L{txproxy.httpproxy.HTTPProxyProtocol} subclass, hooks and
all), connected to a L{H2Stream} as its transport.  The stream hands that
protocol the request as HTTP/1.1 bytes (L{txproxy.h2._translate}) and turns
the HTTP/1.1 response it writes back into C{HEADERS}, C{DATA} and trailers.
So policy, hooks, limits, routing, status codes, the access log and metrics
are the HTTP/1.1 ones, shared rather than copied; this module owns only
what is HTTP/2's own:

  - framing and HPACK (python-hyper's C{h2});
  - flow control, mapped onto producers as the relay does for TCP: a
    stream's protocol pausing its transport stops the stream's window
    updates (the client's window closes), and a stream whose send window is
    exhausted pauses the producer registered on it (the upstream
    connection); the client connection's own write buffer pauses every
    stream's producer;
  - C{SETTINGS_MAX_CONCURRENT_STREAMS} (C{--h2-max-streams}), enforced with
    C{RST_STREAM(REFUSED_STREAM)}; C{SETTINGS_MAX_HEADER_LIST_SIZE}
    (C{--max-head-size}), enforced by HPACK with C{GOAWAY};
  - the floods of RFC 9113 §10.5 and CVE-2023-44487 (see L{FloodGuard});
  - the connection's idle timer and C{GOAWAY} on drain.

Why this module is long: it is the HTTP/2 connection and its stream
transport, two classes that share one flow-control design and are only
correct together.
"""

from __future__ import annotations

import logging
import struct
from typing import Any, Dict, List, Optional, Tuple

import hpack.hpack
import hpack.table
from h2.config import H2Configuration
from h2.connection import AllowedStreamIDs, ConnectionInputs, ConnectionState, H2Connection, _decode_headers
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    PingReceived,
    PriorityUpdated,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import (
    FlowControlError,
    ProtocolError,
    StreamClosedError,
    StreamIDTooLowError,
    TooManyStreamsError,
)
from h2.settings import SettingCodes
from h2.stream import H2Stream as _LibStream
from h2.stream import StreamInputs
from h2.utilities import is_informational_response
from hyperframe.frame import GoAwayFrame, HeadersFrame
from twisted.internet import error
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txproxy._loop import afterEventsOf
from txproxy._timers import TimerGroup
from txproxy.h2._closed import ClosedStreams
from txproxy.h2._hpack import cachingCodecs
from txproxy.h2._settings import CompactSettings
from txproxy.h2._translate import (
    Data,
    End,
    Head,
    MessageReader,
    StreamError,
    Trailers,
    chunk,
    h2ResponseFields,
    lastChunk,
    requestFromH2,
)
from txproxy.http import RequestHead, ResponseHead
from txproxy.relay import fastSender

__all__ = ["PREFACE", "FloodGuard", "H2ServerConnection", "H2Stream"]

log = Logger()

#: What an HTTP/2 client sends first (RFC 9113 §3.4).
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

#: Bytes queued on one stream (its send window exhausted) above which the
#: producer registered on it is paused, and below which it is resumed.
HIGH_WATER = 65536
LOW_WATER = 16384

#: The connection-level receive window we open at start (the stream windows
#: keep the 65,535 default): what many concurrent uploads may have in flight.
CONNECTION_WINDOW = 1 << 20

_CONNECTION_DONE = Failure(error.ConnectionDone())


class _NoDebug:
    """
    Stands for one of HPACK's module loggers, whose C{debug} calls (some
    twenty per request, each a C{logging} call that finds DEBUG disabled)
    are dropped: C{"".format} takes any arguments and does nothing with
    them, at the cost of one call into C.  Everything else reaches the
    logger.
    """

    debug = "".format

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger

    def __getattr__(self, name: str) -> Any:
        return getattr(self._logger, name)


def _quietHPACK() -> None:
    """
    Drop HPACK's debug logging, unless DEBUG was enabled for it when this
    module was imported (tests.test_h2_server.InternalsTests).
    """
    for module in (hpack.hpack, hpack.table):
        logger = getattr(module, "log", None)
        if isinstance(logger, logging.Logger) and not logger.isEnabledFor(logging.DEBUG):
            module.log = _NoDebug(logger)  # type: ignore[attr-defined]


_quietHPACK()


#: What L{_AdvertisedSettings} tells C{h2} the stream limit is (none).
_UNLIMITED = 2**31 - 1


class _AdvertisedSettings(CompactSettings):
    """
    Our local settings, as C{h2} sends them, except that C{h2} must not
    enforce C{MAX_CONCURRENT_STREAMS} itself: it would make the stream over
    the limit a connection error, where RFC 9113 §5.1.2 and the contract
    want C{RST_STREAM(REFUSED_STREAM)} (L{H2ServerConnection} does that).
    """

    @property  # type: ignore[misc]
    def max_concurrent_streams(self) -> int:
        return _UNLIMITED


def _informational(headers: Any) -> bool:
    """
    h2's C{is_informational_response} for a header list of C{bytes} (what
    a connection without header decoding receives): whether its
    pseudo-header fields, read up to the first other field, include a
    C{1xx} C{:status}.
    """
    for name, value in headers:
        if name[:1] != b":":
            return False
        if name == b":status":
            return value[:1] == b"1"  # type: ignore[no-any-return]
    return False


class _LenientStream(_LibStream):
    """
    C{h2}'s stream without its C{content-length} checks, which raise
    connection errors: L{H2Stream} makes the same checks as stream errors
    (RFC 9113 §8.1.1: a malformed request is a stream error).
    """

    def _initialize_content_length(self, headers: Any) -> None:
        pass

    def _track_content_length(self, length: int, end_stream: bool) -> None:
        pass

    def receive_headers(self, headers: Any, end_stream: bool, header_encoding: Any) -> Any:
        # C{h2}'s (4.3 and 4.4 alike), without the header processing a
        # connection configured as L{H2ServerConnection}'s does not do (no
        # normalizing, no validation, no decoding to text: the list as it
        # came).  tests.test_h2_server.ReceiveTests compares the events.
        config = self.config
        if config.normalize_inbound_headers or config.validate_inbound_headers or isinstance(header_encoding, str):
            return super().receive_headers(headers, end_stream, header_encoding)
        if _informational(headers):
            if end_stream:
                raise ProtocolError("Cannot set END_STREAM on informational responses")
            input_ = StreamInputs.RECV_INFORMATIONAL_HEADERS
        else:
            input_ = StreamInputs.RECV_HEADERS
        machine = self.state_machine
        events = machine.process_input(input_)
        event: Any = events[0]
        if end_stream:
            ended = machine.process_input(StreamInputs.RECV_END_STREAM)
            event.stream_ended = ended[0]
            events += ended
        if isinstance(event, TrailersReceived) and not end_stream:
            raise ProtocolError("Trailers must have END_STREAM set")
        event.headers = list(headers)
        return [], events

    def send_headers(self, headers: Any, encoder: Any, end_stream: bool = False) -> Any:
        # C{h2}'s (4.3 and 4.4 alike), without two passes over the header
        # list that a server sending bytes needs not: C{utf8_encode_headers}
        # (L{H2Stream} sends bytes only) and C{extract_method_header} (its
        # C{request_method} serves only the content-length checks removed
        # above).  tests.test_h2_server.InternalsTests names what it uses.
        input_ = StreamInputs.SEND_HEADERS
        if is_informational_response(headers):
            if end_stream:
                raise ProtocolError("Cannot set END_STREAM on informational responses.")
            input_ = StreamInputs.SEND_INFORMATIONAL_HEADERS
        machine = self.state_machine
        events = machine.process_input(input_)
        frames = self._build_headers_frames(
            headers, encoder, HeadersFrame(self.stream_id), self._build_hdr_validation_flags(events)
        )
        if end_stream:
            machine.process_input(StreamInputs.SEND_END_STREAM)
            frames[0].flags.add("END_STREAM")
        if machine.trailers_sent and not end_stream:
            raise ProtocolError("Trailers must have END_STREAM set.")
        return frames

    def headerBytes(self, headers: Any, encoder: Any, end_stream: bool) -> bytes:
        """
        As L{send_headers}, but the frames as bytes: one C{HEADERS}, and
        C{CONTINUATION} frames when the block is over the peer's maximum
        frame size (outbound header validation must be off, as it is for
        L{H2ServerConnection}, and the fields C{bytes}).
        """
        input_ = StreamInputs.SEND_HEADERS
        if _informational(headers):
            if end_stream:
                raise ProtocolError("Cannot set END_STREAM on informational responses.")
            input_ = StreamInputs.SEND_INFORMATIONAL_HEADERS
        machine = self.state_machine
        machine.process_input(input_)
        block = encoder.encode(headers)
        if end_stream:
            machine.process_input(StreamInputs.SEND_END_STREAM)
        if machine.trailers_sent and not end_stream:
            raise ProtocolError("Trailers must have END_STREAM set.")
        sid = self.stream_id
        flags = _END_STREAM if end_stream else 0
        size: int = self.max_outbound_frame_size or 16384
        if len(block) <= size:
            return _frame(_HEADERS, flags | _END_HEADERS, sid, block)
        parts = [_frame(_HEADERS, flags, sid, block[:size])]
        for start in range(size, len(block), size):
            last = start + size >= len(block)
            parts.append(_frame(_CONTINUATION, _END_HEADERS if last else 0, sid, block[start:start + size]))
        return b"".join(parts)


#: A frame's 9-byte head: the payload's length (24 bits, as a byte and a
#: 16-bit half), type, flags, stream id (RFC 9113 §4.1).
_FRAME_HEAD = struct.Struct(">BHBBL")
_DATA, _HEADERS, _CONTINUATION = 0x0, 0x1, 0x9
_END_STREAM, _END_HEADERS = 0x1, 0x4


#: The state of a server connection's state machine after the prefaces:
#: there, C{h2}'s transitions for RECV_HEADERS, SEND_HEADERS and SEND_DATA
#: lead back to it with no event (4.3 and 4.4 alike;
#: tests.test_h2_server.InternalsTests checks the table).
_OPEN = ConnectionState.SERVER_OPEN


def _frame(kind: int, flags: int, streamID: int, payload: bytes) -> bytes:
    n = len(payload)
    return _FRAME_HEAD.pack(n >> 16, n & 0xFFFF, kind, flags, streamID) + payload


class _Connection(ClosedStreams, H2Connection):
    """
    C{h2}'s connection, with its C{send_headers} and C{send_data} for a
    stream that exists writing the frames' bytes directly, not through
    frame objects serialized afterwards: the same state machines are
    driven with the same inputs, the same windows counted, the same bytes
    queued (tests.test_h2_server.FramingTests checks them against
    C{h2}'s own).  Anything else (a new stream, priority, padding, a frame
    over the peer's maximum, header validation switched on) is C{h2}'s.
    """

    def __init__(self, config: Any = None) -> None:
        super().__init__(config=config)
        # (Made afresh, as h2 made it: nothing has been received yet.)
        self.remote_settings = CompactSettings(client=not self.config.client_side)
        self._keepClosedStreams()
        cachingCodecs(self)
        self._ownFrames = not (self.config.validate_outbound_headers or self.config.normalize_outbound_headers)

    def receive_data(self, data: Any) -> List[Any]:
        """
        C{h2}'s, with the common frame taken without C{h2}'s frame buffer:
        a request head in one C{HEADERS} frame (C{END_HEADERS}, no padding,
        no priority) opening a new stream, when nothing is buffered.  Its
        block is decoded, the connection's and the new stream's state
        machines are given the same inputs, and the same events come out,
        in the same order as C{h2}'s frame by frame; at the first other
        frame (or a partial one) the rest of the bytes go to C{h2}
        (tests.test_h2_server.ReceiveTests compares the two, the bytes
        split at every position).
        """
        buffer = self.incoming_buffer
        if buffer._preamble_len or buffer._data or buffer._headers_buffer:
            return super().receive_data(data)
        events: List[Any] = []
        at, size = 0, len(data)
        limit = self.max_inbound_frame_size
        try:
            while size - at >= 9:
                length = (data[at] << 16) | (data[at + 1] << 8) | data[at + 2]
                end = at + 9 + length
                flags = data[at + 4]
                if data[at + 3] != _HEADERS or (flags | _END_STREAM) != _END_HEADERS | _END_STREAM or end > size or length > limit:
                    break
                sid = int.from_bytes(data[at + 5 : at + 9], "big") & 0x7FFFFFFF
                if sid <= self.highest_inbound_stream_id:
                    break
                events.extend(self._requestHead(sid, data[at + 9 : end], bool(flags & _END_STREAM)))
                at = end
        except ProtocolError as e:
            # As h2's receive_data: GOAWAY queued, then the error raised.
            self._terminate_connection(e.error_code)
            raise
        if at < size:
            events.extend(super().receive_data(data[at:] if at else data))
        return events

    #: Streams kept (open or closed) before closed ones are forgotten.
    _forgetAt = 32

    def _requestHead(self, sid: int, block: bytes, endStream: bool) -> List[Any]:
        """
        What C{h2}'s C{_receive_headers_frame} does for a new inbound
        stream's C{HEADERS} frame.
        """
        limit = self.local_settings.max_concurrent_streams
        streams = self.streams
        if limit < _UNLIMITED or len(streams) >= self._forgetAt:
            # h2 counts the open streams (and forgets the closed ones) for
            # every new stream; with no limit to enforce, forgetting them
            # now and then keeps the table as small.
            count = self.open_inbound_streams
            self._forgetAt = 2 * len(streams) + 32
            if count + 1 > limit:
                raise TooManyStreamsError(f"Max inbound streams is {limit}, {count} open")
        headers = _decode_headers(self.decoder, block)
        machine = self.state_machine
        # (In SERVER_OPEN, RECV_HEADERS, SEND_HEADERS and SEND_DATA change
        # nothing and give no event: the lookup is skipped, see _OPEN.)
        events: List[Any] = [] if machine.state is _OPEN else machine.process_input(ConnectionInputs.RECV_HEADERS)
        stream = self._begin_new_stream(sid, AllowedStreamIDs.ODD)
        frames, streamEvents = stream.receive_headers(headers, endStream, self.config.header_encoding)
        self._prepare_for_sending(frames)
        return events + list(streamEvents)

    def send_headers(
        self,
        stream_id: int,
        headers: Any,
        end_stream: bool = False,
        priority_weight: Any = None,
        priority_depends_on: Any = None,
        priority_exclusive: Any = None,
    ) -> None:
        stream = self.streams.get(stream_id)
        if (
            stream is None
            or not self._ownFrames
            or priority_weight is not None
            or priority_depends_on is not None
            or priority_exclusive is not None
        ):
            super().send_headers(stream_id, headers, end_stream, priority_weight, priority_depends_on, priority_exclusive)
            return
        machine = self.state_machine
        if machine.state is not _OPEN:
            machine.process_input(ConnectionInputs.SEND_HEADERS)
        self._data_to_send += stream.headerBytes(headers, self.encoder, end_stream)  # type: ignore[attr-defined]

    def send_data(self, stream_id: int, data: Any, end_stream: bool = False, pad_length: Any = None) -> None:
        stream = self.streams.get(stream_id)
        size = len(data)
        if stream is None or pad_length is not None or size > self.max_outbound_frame_size:
            super().send_data(stream_id, data, end_stream, pad_length)
            return
        window = min(self.outbound_flow_control_window, stream.outbound_flow_control_window)
        if size > window:
            raise FlowControlError(f"Cannot send {size} bytes, flow control window is {window}")
        if self.state_machine.state is not _OPEN:
            self.state_machine.process_input(ConnectionInputs.SEND_DATA)
        machine = stream.state_machine
        machine.process_input(StreamInputs.SEND_DATA)
        if end_stream:
            machine.process_input(StreamInputs.SEND_END_STREAM)
        if data.__class__ is not bytes:
            data = bytes(data)
        stream.outbound_flow_control_window -= size
        self.outbound_flow_control_window -= size
        self._data_to_send += _frame(_DATA, _END_STREAM if end_stream else 0, stream_id, data)

    def _begin_new_stream(self, stream_id: int, allowed_ids: Any) -> Any:
        # h2's (4.3 and 4.4 alike), making a _LenientStream (rather than
        # h2's class, changed afterwards), without its three debug lines.
        outbound = self._stream_id_is_outbound(stream_id)
        highest = self.highest_outbound_stream_id if outbound else self.highest_inbound_stream_id
        if stream_id <= highest:
            raise StreamIDTooLowError(stream_id, highest)
        if (stream_id % 2) != int(allowed_ids):
            raise ProtocolError("Invalid stream ID for peer.")
        self._noteNewStream(stream_id)
        stream = _LenientStream(
            stream_id,
            config=self.config,
            inbound_window_size=self.local_settings.initial_window_size,
            outbound_window_size=self.remote_settings.initial_window_size,
        )
        stream.max_outbound_frame_size = self.max_outbound_frame_size
        self.streams[stream_id] = stream
        if outbound:
            self.highest_outbound_stream_id = stream_id
        else:
            self.highest_inbound_stream_id = stream_id
        return stream


class FloodGuard:
    """
    Per-connection counts of the frames a hostile client repeats to make a
    server work for nothing, over one-second windows (HAProxy calls them
    glitches): once any passes its limit the connection gets
    C{GOAWAY(ENHANCE_YOUR_CALM)}.

      - C{reset}: streams the client reset before their response ended
        (CVE-2023-44487, "rapid reset");
      - C{refused}: streams opened beyond C{SETTINGS_MAX_CONCURRENT_STREAMS};
      - C{ping}, C{settings}: each makes us send an acknowledgement;
      - C{empty_data}: C{DATA} frames with no payload and no C{END_STREAM};
      - C{window_update}, C{priority}: frames that change nothing we send.

    (C{CONTINUATION} floods and oversized header blocks are bounded by
    C{h2} and HPACK, which raise protocol errors: see
    L{H2ServerConnection}.)
    """

    def __init__(self, maxStreams: int) -> None:
        self.limits: Dict[str, int] = {
            "reset": max(100, maxStreams),
            "refused": max(100, maxStreams),
            "ping": 50,
            "settings": 50,
            "empty_data": 100,
            "window_update": 5000,
            "priority": 1000,
        }
        self.counts: Dict[str, int] = {}
        self.windowStart = 0.0

    def count(self, kind: str, now: float) -> bool:
        """
        Count one C{kind} frame at C{now}; C{True} when over the limit.
        """
        if now - self.windowStart >= 1.0:
            self.windowStart = now
            self.counts = {}
        n = self.counts.get(kind, 0) + 1
        self.counts[kind] = n
        return n > self.limits[kind]


@implementer(IPushProducer)
class H2ServerConnection:
    """
    HTTP/2 on one client connection.  The L{HTTPProxyProtocol} that
    accepted the connection (its C{owner}: admitted, counted, drained)
    passes it every byte once it saw the preface.

    @ivar streams: open streams by id.
    """

    def __init__(self, owner: Any) -> None:
        self.owner = owner
        self.factory = owner.factory
        self.transport = owner.transport
        #: Writes to the client: straight to the socket when it is plain
        #: TCP with nothing buffered (L{txproxy.relay.fastSender}).
        self._write = fastSender(self.transport)
        self.clock = self.factory.clock
        #: The reactor's L{txproxy._loop.AfterEvents}, if it has them.
        self._after = afterEventsOf(self.clock)
        listener = self.factory.listener
        self.maxStreams: int = listener.h2MaxStreams
        self.maxHeadSize: int = listener.maxHeadSize
        self.idleTimeout: float = self.factory.keepAliveTimeout
        self.absoluteForm = owner.mode == "forward"
        #: Makes the protocol serving a stream (given the peer address):
        #: the listener factory's, unless the owner has its own
        #: (C{_h2StreamProtocol}: the decrypted side of an intercepted
        #: tunnel, whose streams are that tunnel's requests).
        self.buildStream: Any = getattr(owner, "_h2StreamProtocol", None) or self.factory.buildProtocol
        self.streams: Dict[int, H2Stream] = {}
        self.guard = FloodGuard(self.maxStreams)
        self.paused = False  # the client connection's write buffer is full
        self.closed = False
        self.goingAway = False
        self._timer: Any = None
        self._idleSince = 0.0
        self._flushing = False
        #: The last C{:authority} (or C{Host}) a request's passed
        #: L{requestFromH2}'s checks with: the next streams repeat it.
        self._checkedAuthority: Optional[bytes] = None
        #: The last request's header list, END_STREAM, and translation.
        self._lastRequest: Optional[Tuple[Any, bool, Any]] = None
        config = H2Configuration(
            client_side=False,
            header_encoding=None,
            validate_inbound_headers=False,
            normalize_inbound_headers=False,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        conn = self.h2 = _Connection(config=config)
        conn.local_settings = _AdvertisedSettings(
            client=False,
            initial_values={
                SettingCodes.MAX_CONCURRENT_STREAMS: self.maxStreams,
                SettingCodes.MAX_HEADER_LIST_SIZE: self.maxHeadSize,
                SettingCodes.ENABLE_PUSH: 0,
            },
        )
        conn.decoder.max_header_list_size = self.maxHeadSize

    # -- the connection

    def start(self, received: bytes) -> None:
        """
        Send our preface (C{SETTINGS}) and take the bytes received so far
        (starting with the client's preface).
        """
        conn = self.h2
        conn.initiate_connection()
        conn.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self.transport.registerProducer(self, True)
        self._idle()
        self.dataReceived(received)

    def dataReceived(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            events: List[Any] = self.h2.receive_data(data)
        except ProtocolError as e:
            code = getattr(e, "error_code", None) or ErrorCodes.PROTOCOL_ERROR
            self._abuse("protocol_error", str(e) or e.__class__.__name__, code)
            return
        for event in events:
            kind = type(event)
            if kind is DataReceived:
                self._data(event)
            elif kind is RequestReceived:
                self._request(event)
            elif kind is StreamEnded:
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream.clientEnded()
            elif kind is WindowUpdated:
                if self._flood("window_update"):
                    return
                self._windowOpened(event.stream_id)
            elif kind is TrailersReceived:
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream.trailersReceived(event.headers)
            elif kind is StreamReset:
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    if not stream.responseEnded and self._flood("reset"):
                        return
                    stream.resetByClient(event.error_code)
            elif kind is PingReceived:
                if self._flood("ping"):
                    return
            elif kind is RemoteSettingsChanged:
                if self._flood("settings"):
                    return
                self._windowOpened(0)
            elif kind is PriorityUpdated:
                if self._flood("priority"):
                    return
            elif kind is ConnectionTerminated:
                self.goingAway = True
                self._closeIfDone()
            if self.closed:
                return
        self.flush()

    def flush(self) -> None:
        """
        Write what C{h2} has queued: after the events of the reactor's
        current poll when it has the lean loop
        (L{txproxy._loop.AfterEvents}), so that every stream answered in
        that poll (each response arrives on its own upstream connection)
        leaves in one C{send} and, over TLS, one record; otherwise now.
        """
        # C{h2}'s buffer, looked at before asking for a copy of it: most
        # calls find it empty (tests.test_h2_server.InternalsTests).
        if self.h2._data_to_send and not self._flushing:
            after = self._after
            if after is not None and after.add(self._flushLater):
                self._flushing = True
                return
            self.flushNow()

    _timers: Optional[TimerGroup] = None

    @property
    def timers(self) -> TimerGroup:
        """
        The timers of the protocols serving this connection's streams: one
        clock call for all of them (L{txproxy._timers}), made with the first
        stream (an idle connection keeps no group).
        """
        timers = self._timers
        if timers is None:
            timers = self._timers = TimerGroup(self.clock)
        return timers

    _peer: Any = None

    def peer(self) -> Any:
        """
        The client's address (asked of the transport once: every stream's
        protocol is given it).
        """
        peer = self._peer
        if peer is None:
            peer = self._peer = self.transport.getPeer()
        return peer

    def _flushLater(self) -> None:
        self._flushing = False
        self.flushNow()

    def flushNow(self) -> None:
        """
        Write what C{h2} has queued, now (before a frame written by hand,
        and before closing).
        """
        if self.h2._data_to_send:
            data = self.h2.data_to_send()
            if not self.closed:
                self._write(data)

    def _flood(self, kind: str) -> bool:
        if self.guard.count(kind, self.clock.seconds()):
            self._abuse(kind, f"{kind.replace('_', ' ')} flood", ErrorCodes.ENHANCE_YOUR_CALM)
            return True
        return False

    def _abuse(self, kind: str, reason: str, code: int) -> None:
        """
        A connection error: C{GOAWAY(code)}, then close.
        """
        log.info(
            "HTTP/2 connection from {client} closed: {reason}",
            client=self.owner.client.host,
            reason=reason,
        )
        metrics = self.factory.metrics
        if metrics is not None:
            counter = getattr(metrics, "h2ConnectionError", None)
            if counter is not None:
                counter(self.factory.listener, kind)
        self.goAway(code, close=True)

    def goAway(self, code: int = 0, close: bool = False) -> None:
        """
        Send C{GOAWAY(code)} (once).  With C{close}, or when no stream is
        open, close the connection after it; otherwise open streams finish.
        """
        if self.closed:
            return
        if not self.goingAway:
            self.goingAway = True
            if close:
                try:
                    self.h2.close_connection(error_code=code, last_stream_id=self.h2.highest_inbound_stream_id)
                except ProtocolError:
                    pass
                self.flushNow()
            else:
                # Graceful: written by hand, since C{h2}'s close_connection
                # would end the connection's state machine and with it the
                # open streams, which must be allowed to finish.
                self.flushNow()
                frame = GoAwayFrame(0, last_stream_id=self.h2.highest_inbound_stream_id, error_code=code)
                self._write(frame.serialize())
        if close:
            self._close(abort=code != 0)
        else:
            self._closeIfDone()

    def _close(self, abort: bool = False) -> None:
        if self.closed:
            return
        self.flushNow()
        self.closed = True
        self._cancelTimer()
        self.owner._h2closing()
        self.transport.loseConnection()

    def _closeIfDone(self) -> None:
        if self.goingAway and not self.streams and not self.closed:
            self._close()

    def drain(self) -> None:
        """
        The proxy is stopping: C{GOAWAY(NO_ERROR)}; open streams finish.
        """
        self.goAway(0)

    def clientReadLost(self) -> None:
        """
        The client half-closed: no new streams can come; close once the
        open ones are answered.
        """
        self.goingAway = True
        self._closeIfDone()

    def connectionLost(self, reason: Failure) -> None:
        self.closed = True
        self._cancelTimer()
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            stream.connectionLost(reason)
        if self._timers is not None:
            self._timers.stop()

    # -- the idle timer: runs while no stream is open

    # The timer is not cancelled when a stream opens, nor reset when the
    # last one ends (a cancel and a callLater per request): it checks, when
    # it fires, whether the connection is still idle, and since when.

    def _idle(self) -> None:
        if self.idleTimeout and not self.closed:
            self._idleSince = self.clock.seconds()
            if self._timer is None:
                self._timer = self.clock.callLater(self.idleTimeout, self._idleTimedOut)

    def _cancelTimer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _idleTimedOut(self) -> None:
        self._timer = None
        if self.streams or self.closed:
            # Busy: the last stream to end starts the timer again.
            return
        remaining = self._idleSince + self.idleTimeout - self.clock.seconds()
        if remaining > 1e-6:
            self._timer = self.clock.callLater(remaining, self._idleTimedOut)
            return
        self.goAway(0, close=True)

    # -- IPushProducer, for the client connection's write buffer

    def pauseProducing(self) -> None:
        self.paused = True
        for stream in list(self.streams.values()):
            stream._pauseProducer()

    def resumeProducing(self) -> None:
        self.paused = False
        for stream in list(self.streams.values()):
            if stream.queued < HIGH_WATER:
                stream._resumeProducer()

    def stopProducing(self) -> None:
        pass

    # -- streams

    def _request(self, event: RequestReceived) -> None:
        sid = event.stream_id
        endStream = event.stream_ended is not None
        if self.goingAway:
            self._reset(sid, ErrorCodes.REFUSED_STREAM)
            return
        if len(self.streams) >= self.maxStreams:
            self._reset(sid, ErrorCodes.REFUSED_STREAM)
            self._flood("refused")
            return
        headers = event.headers
        last = self._lastRequest
        try:
            if last is not None and last[1] is endStream and last[0] == headers:
                # The same header list as the last request (a client's
                # requests repeat theirs): the same translation, which its
                # streams only read.
                request = last[2]
            else:
                request = requestFromH2(headers, endStream, self.absoluteForm, self._checkedAuthority)
                self._lastRequest = (headers, endStream, request)
        except StreamError as e:
            log.info(
                "HTTP/2 stream {stream} from {client} reset: {reason}",
                stream=sid,
                client=self.owner.client.host,
                reason=e.reason,
            )
            self._reset(sid, e.code)
            return
        if not request.connect:
            self._checkedAuthority = request.authority
        stream = H2Stream(self, sid, request, endStream)
        self.streams[sid] = stream
        stream.start()

    def _data(self, event: DataReceived) -> None:
        sid = event.stream_id
        stream = self.streams.get(sid)
        if stream is None:
            # A stream we refused or already ended: give the window back.
            if event.flow_controlled_length:
                try:
                    self.h2.acknowledge_received_data(event.flow_controlled_length, sid)
                except (ProtocolError, StreamClosedError):
                    pass
            return
        if not event.data and event.stream_ended is None and self._flood("empty_data"):
            return
        stream.dataReceived(event.data, event.flow_controlled_length)

    def _reset(self, sid: int, code: int) -> None:
        try:
            self.h2.reset_stream(sid, code)
        except (ProtocolError, StreamClosedError):
            pass

    def _windowOpened(self, sid: int) -> None:
        if sid:
            stream = self.streams.get(sid)
            if stream is not None and stream.queued:
                stream._drain()
        else:
            for stream in list(self.streams.values()):
                if stream.queued:
                    stream._drain()

    def streamEnded(self, stream: "H2Stream") -> None:
        """
        C{stream} is over (answered, reset or lost): forget it.
        """
        if self.streams.get(stream.streamID) is stream:
            del self.streams[stream.streamID]
            if not self.streams:
                if self.goingAway:
                    self._closeIfDone()
                else:
                    self._idle()


class H2Stream:
    """
    One HTTP/2 stream, as the transport of the protocol that serves it.

    Writes are HTTP/1.1 response bytes, read back by a
    L{txproxy.h2._translate.MessageReader} into frames; after a C{2xx}
    answer to C{CONNECT} (or a C{101}) they are tunnel bytes, sent as
    C{DATA}.  C{loseWriteConnection} ends the stream from our side
    (C{END_STREAM}); C{loseConnection} after a complete response closes it
    quietly (C{RST_STREAM(NO_ERROR)} if the client is still sending, RFC
    9113 §8.1), and before one resets it.
    """

    disconnecting = False
    producer: Any = None
    _closeWhenSent: Any = None
    streaming = True
    connected = True

    def __init__(self, conn: H2ServerConnection, streamID: int, request: Any, endStream: bool) -> None:
        self.conn = conn
        self.streamID = streamID
        self.request = request
        self.clientDone = False  # END_STREAM received (and delivered)
        self._clientEndPending = endStream
        self.responseEnded = False  # END_STREAM sent
        self.headSent = False
        self.closed = False
        self.readPaused = False
        self.producerPaused = False
        self.inbox: List[Tuple[bytes, int]] = []
        self.queue: List[bytes] = []
        self.queued = 0
        self.endQueued = False
        self.trailersQueued: Optional[List[Tuple[bytes, bytes]]] = None
        self.received = 0
        self.protocol: Any = None

    _reader: Optional[MessageReader] = None

    @property
    def reader(self) -> MessageReader:
        """
        The reader of the response the protocol writes as bytes, made when
        first needed (a whole response given to L{writeWholeResponse}
        needs none).
        """
        reader = self._reader
        if reader is None:
            reader = self._reader = MessageReader(True, self.request.method, self.conn.maxHeadSize)
        return reader

    # -- the protocol

    def start(self) -> None:
        proto = self.conn.buildStream(self.getPeer())
        proto._h2stream = self
        self.protocol = proto
        proto.makeConnection(self)
        request = self.request
        # The stream is one request: "Connection: close" makes the protocol
        # close (end the stream) once it is answered, as HTTP/1.1 would.
        # "te: trailers", the only TE HTTP/2 allows, is passed on as the
        # connection option HTTP/1.1 makes of it.
        if getattr(proto, "_takesStreamHeads", False):
            # The head as a value: no HTTP/1.1 bytes written and parsed again.
            connection = (b"Connection", b"close, te" if request.trailers else b"close")
            proto._streamRequest(
                RequestHead(request.method, request.target, b"HTTP/1.1", (*request.fields, connection))
            )
        else:
            close = b"Connection: close, te\r\n\r\n" if request.trailers else b"Connection: close\r\n\r\n"
            proto.dataReceived(request.head[:-2] + close)
        if self._clientEndPending and not self.closed:
            self._clientEndPending = False
            self.clientEnded()

    def dataReceived(self, data: bytes, flowLength: int) -> None:
        if self.closed or self.clientDone:
            self._ack(flowLength)
            return
        request = self.request
        length = request.contentLength
        self.received += len(data)
        if length is not None and self.received > length:
            self._malformed("more DATA than content-length")
            self._ack(flowLength)
            return
        if request.chunked:
            data = chunk(data)
        if self.readPaused or self.inbox:
            self.inbox.append((data, flowLength))
            return
        if data:
            self.protocol.dataReceived(data)
        self._ack(flowLength)

    def trailersReceived(self, headers: List[Tuple[bytes, bytes]]) -> None:
        self._end(headers)

    def clientEnded(self) -> None:
        """
        C{END_STREAM} from the client (after its trailers, if any).
        """
        if self.clientDone or self.closed:
            return
        self._end(None)

    def _end(self, trailers: Optional[List[Tuple[bytes, bytes]]]) -> None:
        if self.clientDone or self.closed:
            return
        request = self.request
        if request.contentLength is not None and self.received != request.contentLength and not request.connect:
            self._malformed("DATA shorter than content-length")
            return
        if request.chunked:
            try:
                tail = lastChunk(trailers)
            except StreamError as e:
                self._malformed(e.reason)
                return
        else:
            tail = b""
        self.clientDone = True
        if self.readPaused or self.inbox:
            self.inbox.append((tail, -1))
            return
        self._deliverEnd(tail)

    def _deliverEnd(self, tail: bytes) -> None:
        if tail:
            self.protocol.dataReceived(tail)
        if not self.closed:
            self.protocol.readConnectionLost()

    def _ack(self, flowLength: int) -> None:
        if flowLength > 0:
            try:
                self.conn.h2.acknowledge_received_data(flowLength, self.streamID)
            except (ProtocolError, StreamClosedError):
                pass

    def _malformed(self, reason: str) -> None:
        log.info(
            "HTTP/2 stream {stream} from {client} reset: {reason}",
            stream=self.streamID,
            client=self.conn.owner.client.host,
            reason=reason,
        )
        self._resetStream(ErrorCodes.PROTOCOL_ERROR, Failure(error.ConnectionLost(reason)))

    # -- ITransport (the protocol's side)

    def write(self, data: bytes) -> None:
        if self.closed or self.responseEnded:
            return
        try:
            events: List[Any] = self.reader.feed(data)
        except StreamError as e:
            self._unreadable(e)
            return
        self._sendEvents(events)

    def writeResponse(self, response: Any, body: bytes) -> None:
        """
        Take a response head as a value (a
        L{txproxy.http.ResponseHead}, its fields valid) and the first bytes
        of its body: as L{write} with them serialized, without parsing the
        head again (the protocol's common path).
        """
        if self.closed or self.responseEnded:
            return
        try:
            events: List[Any] = self.reader.startResponse(response, body)
        except StreamError as e:
            self._unreadable(e)
            return
        self._sendEvents(events)

    def writeWholeResponse(self, status: int, reason: bytes, fields: List[Tuple[bytes, bytes]], body: bytes) -> None:
        """
        Take a whole response: its status and fields (valid, with one
        C{Content-Length} that is C{len(body)}: what the protocol made for
        the client) and all of its body.  As L{writeResponse}, but when the
        stream has written nothing yet and the answer has the body it
        announces (not C{1xx}, C{204}, C{304}, or an answer to C{HEAD} or
        C{CONNECT}), it goes out as one C{HEADERS} and one C{DATA} frame
        (as the windows allow) without the message reader's events: the
        protocol's common path.  C{tests.test_h2_server.WholeResponseTests}
        compares the two.
        """
        if self.closed or self.responseEnded:
            return
        method = self.request.method
        if (
            self._reader is not None
            or status < 200
            or status == 204
            or status == 304
            or method == b"HEAD"
            or method == b"CONNECT"
        ):
            self.writeResponse(ResponseHead(b"HTTP/1.1", status, reason, fields), body)
            return
        conn = self.conn
        end = not body
        try:
            conn.h2.send_headers(self.streamID, h2ResponseFields(status, fields), end_stream=end)
        except (ProtocolError, StreamClosedError) as e:
            self._resetStream(ErrorCodes.INTERNAL_ERROR, Failure(error.ConnectionLost(str(e))))
            return
        self.headSent = True
        if end or not self._sendNow(body, True):
            self._responseDone()
        else:
            # A window is short: the rest waits in the queue, and the end
            # after it (as _sendEvents queues a body's last DATA).
            rest = self._rest
            self.queue.append(rest)
            self.queued += len(rest)
            self._checkHigh()
            self.endQueued = True
            self._drain()
        conn.flush()

    def _unreadable(self, e: StreamError) -> None:
        log.warn("HTTP/2 stream {stream}: unreadable response: {reason}", stream=self.streamID, reason=e.reason)
        self._resetStream(ErrorCodes.INTERNAL_ERROR, Failure(error.ConnectionLost(e.reason)))

    def _sendEvents(self, events: List[Any]) -> None:
        conn = self.conn
        last = len(events) - 1
        for index, event in enumerate(events):
            kind = type(event)
            if kind is Data:
                if index < last and type(events[index + 1]) is End and not self.queue:
                    # The last bytes and the end: END_STREAM on the last
                    # DATA frame rather than an empty one of its own.
                    if not self._sendNow(event.data, True):
                        self._responseDone()
                        break
                    self.queue.append(self._rest)
                    self.queued += len(self._rest)
                    self._checkHigh()
                else:
                    self._send(event.data)
            elif kind is Head:
                self._sendHead(event)
            elif kind is Trailers:
                self.trailersQueued = list(event.headers)
                self.endQueued = True
                self._drain()
            elif kind is End:
                self.endQueued = True
                self._drain()
        conn.flush()

    def writeSequence(self, data: List[bytes]) -> None:
        self.write(b"".join(data))

    def _sendHead(self, event: Any) -> None:
        conn = self.conn
        end = event.endStream and not event.interim
        try:
            conn.h2.send_headers(self.streamID, event.headers, end_stream=end)
        except (ProtocolError, StreamClosedError) as e:
            self._resetStream(ErrorCodes.INTERNAL_ERROR, Failure(error.ConnectionLost(str(e))))
            return
        if not event.interim:
            self.headSent = True
            if end:
                self._responseDone()

    def _send(self, data: bytes) -> None:
        if self.queue:
            self.queue.append(data)
            self.queued += len(data)
            self._checkHigh()
            return
        rest = self._sendNow(data)
        if rest:
            self.queue.append(rest)
            self.queued += len(rest)
            self._checkHigh()

    _rest = b""

    def _sendNow(self, data: bytes, end: bool = False) -> bytes:
        """
        Send what the windows allow of C{data} (with C{END_STREAM} on the
        last frame when C{end} and it all fits); return the rest.
        """
        h2 = self.conn.h2
        sid = self.streamID
        if 0 < len(data) <= 16384:
            # The usual case, one frame (no peer allows less than 16,384
            # bytes in one) in open windows: send_data checks the windows
            # itself, before it changes anything, so they are looked at
            # once rather than twice.
            try:
                h2.send_data(sid, data, end_stream=end)
                self._rest = b""
                return b""
            except FlowControlError:
                pass  # (a window is short: what fits is sent below)
            except (ProtocolError, StreamClosedError):
                return b""
        try:
            window = h2.local_flow_control_window(sid)
        except (ProtocolError, StreamClosedError):
            return b""
        frame = h2.max_outbound_frame_size
        while data and window > 0:
            size = min(window, frame, len(data))
            final = end and size == len(data)
            h2.send_data(sid, data[:size], end_stream=final)
            data = data[size:]
            window -= size
        self._rest = data
        if data or not end:
            return data
        return b""

    def _drain(self) -> None:
        """
        Send what is queued as far as the windows allow, then the end of
        the stream when it was asked for.
        """
        if self.closed or self.responseEnded:
            return
        queue = self.queue
        while queue:
            rest = self._sendNow(queue[0])
            if rest:
                self.queued -= len(queue[0]) - len(rest)
                queue[0] = rest
                break
            self.queued -= len(queue.pop(0))
        if not queue:
            self.queued = 0
            if self.endQueued:
                h2 = self.conn.h2
                try:
                    if self.trailersQueued is not None:
                        h2.send_headers(self.streamID, self.trailersQueued, end_stream=True)
                    else:
                        h2.end_stream(self.streamID)
                except (ProtocolError, StreamClosedError):
                    pass
                self._responseDone()
                return
        if self.producerPaused and self.queued < LOW_WATER and not self.conn.paused:
            self._resumeProducer()
        self.conn.flush()

    def _checkHigh(self) -> None:
        if self.queued >= HIGH_WATER:
            self._pauseProducer()

    def _pauseProducer(self) -> None:
        if not self.producerPaused:
            self.producerPaused = True
            producer = self.producer
            if producer is not None:
                producer.pauseProducing()

    def _resumeProducer(self) -> None:
        if self.producerPaused:
            self.producerPaused = False
            producer = self.producer
            if producer is not None:
                producer.resumeProducing()

    def _responseDone(self) -> None:
        self.responseEnded = True
        if self._closeWhenSent is not None:
            self._closeQuietly()
        else:
            self.conn.flush()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer
        self.streaming = streaming
        if self.producerPaused or self.conn.paused:
            self.producerPaused = True
            producer.pauseProducing()

    def unregisterProducer(self) -> None:
        self.producer = None

    def loseWriteConnection(self) -> None:
        """
        End the stream from our side (C{END_STREAM}), after what is queued.
        """
        if self.closed or self.responseEnded:
            return
        if not self.headSent:
            # Nothing answered at all: there is no response to end.
            self._resetStream(ErrorCodes.INTERNAL_ERROR, _CONNECTION_DONE)
            return
        self.endQueued = True
        self._drain()

    def loseConnection(self) -> None:
        if self.closed or self._closeWhenSent is not None:
            return
        if not self.responseEnded:
            if self.headSent and not self.endQueued and not self.reader.tunnel:
                # A close-delimited body ends here; anything else is cut.
                try:
                    ended = any(type(event) is End for event in self.reader.eof())
                except StreamError:
                    ended = False
                if ended:
                    self.endQueued = True
            if self.headSent and (self.reader.tunnel or self.endQueued):
                # A complete response (or a tunnel its upstream closed)
                # whose end waits for the client's window: close once sent,
                # like TCP's loseConnection after its buffer, bounded by
                # the idle timeout.
                self.endQueued = True
                self.disconnecting = True
                self._closeWhenSent = self.conn.clock.callLater(
                    self.conn.idleTimeout or 60.0, self._sendStalled
                )
                self._drain()
                return
            self._resetStream(
                ErrorCodes.CONNECT_ERROR if self.request.connect else ErrorCodes.INTERNAL_ERROR,
                _CONNECTION_DONE,
            )
            return
        self._closeQuietly()

    def _sendStalled(self) -> None:
        self._closeWhenSent = None
        self._resetStream(ErrorCodes.CANCEL, Failure(error.TimeoutError("the client's window stayed closed")))

    def _closeQuietly(self) -> None:
        timer, self._closeWhenSent = self._closeWhenSent, None
        if timer is not None and timer.active():
            timer.cancel()
        if not self.clientDone:
            # A complete response before the end of the request: ask the
            # client to stop sending (RFC 9113 §8.1).
            self.conn._reset(self.streamID, ErrorCodes.NO_ERROR)
        self._closed(_CONNECTION_DONE)

    def abortConnection(self) -> None:
        if not self.closed:
            self._resetStream(ErrorCodes.CANCEL, Failure(error.ConnectionAborted()))

    def _resetStream(self, code: int, reason: Failure) -> None:
        if self.closed:
            return
        self.conn._reset(self.streamID, code)
        self._closed(reason)

    def resetByClient(self, code: int) -> None:
        """
        C{RST_STREAM} from the client: the protocol loses its connection
        (the upstream request is abandoned).
        """
        self.clientDone = True
        self._closed(Failure(error.ConnectionLost(f"stream reset by the client (error code {code})")))

    def _closed(self, reason: Failure) -> None:
        if self.closed:
            return
        self.closed = True
        timer, self._closeWhenSent = self._closeWhenSent, None
        if timer is not None and timer.active():
            timer.cancel()
        self.connected = False
        self.disconnecting = True
        self.inbox = []
        self.queue = []
        self.queued = 0
        conn = self.conn
        conn.streamEnded(self)
        conn.flush()
        proto = self.protocol
        if proto is not None:
            proto.connectionLost(reason)
            # The protocol and this stream refer to each other: break the
            # cycle, or every stream is garbage only the cyclic collector
            # frees (on CPython, gen-2 collections over every live stream:
            # 12% of an h2 request's CPU; bench/README.md).
            self.protocol = None

    def connectionLost(self, reason: Failure) -> None:
        """
        The client connection is gone.
        """
        self._closed(reason)

    # -- IPushProducer (the protocol pausing its input)

    def pauseProducing(self) -> None:
        self.readPaused = True

    def resumeProducing(self) -> None:
        if not self.readPaused:
            return
        self.readPaused = False
        inbox, self.inbox = self.inbox, []
        while inbox and not self.closed:
            data, flowLength = inbox.pop(0)
            if flowLength == -1:
                self._deliverEnd(data)
            else:
                if data:
                    self.protocol.dataReceived(data)
                self._ack(flowLength)
            if self.readPaused:
                self.inbox = inbox + self.inbox
                break
        self.conn.flush()

    def stopProducing(self) -> None:
        self.abortConnection()

    # -- the rest of ITransport

    def getPeer(self) -> Any:
        return self.conn.peer()

    def getHost(self) -> Any:
        return self.conn.transport.getHost()

    def getHandle(self) -> Any:
        getHandle = getattr(self.conn.transport, "getHandle", None)
        return getHandle() if getHandle is not None else None
