# -*- test-case-name: tests.test_h2_closed -*-
"""
How a closed HTTP/2 stream ended, without a record per stream
(L{ClosedStreams}, mixed into the C{h2} connections of both sides).

C{h2} answers a frame for a stream it no longer holds by how that stream
ended: after a C{RST_STREAM}, a frame still in flight is a stream error
(reset again, the connection goes on); after C{END_STREAM} both ways, it is
a connection error (C{STREAM_CLOSED}); for an id the peer skipped (a stream
never opened, closed implicitly), a connection error (C{PROTOCOL_ERROR}).
To tell them apart it records every closed stream, up to 65,536 per
connection: about 7.9 MB on CPython (tracemalloc) for a long-lived
connection that carried that many streams, such as a gRPC channel, on the
client side and on the backend side alike.

Nearly every stream ends with C{END_STREAM}, and peers open stream ids in
order.  So L{ClosedStreams} keeps C{h2}'s record only for streams that ended
otherwise (resets: few, and limited by L{txproxy.h2._server.FloodGuard} on
the client side), remembers the ranges of ids a peer skipped (none, from
a usual peer; at most L{MAX_SKIPPED} ranges), and infers the rest: an id
at or below the highest opened, neither recorded nor skipped, ended with
C{END_STREAM}.  C{h2} reads the answer through C{_stream_closed_by} only,
and only to tell those three cases apart, which stay as they were
(tests.test_h2_closed compares the frames sent with C{h2}'s own).  One
difference: C{h2} forgets the oldest of its 65,536 records, and then calls
such a stream skipped; here it is still known to have ended.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

from h2.stream import StreamClosedBy
from h2.utilities import SizeLimitDict

__all__ = ["MAX_SKIPPED", "ClosedStreams"]

#: Ranges of skipped stream ids kept per connection (and direction); the
#: oldest are forgotten beyond this, and their ids then count as ended.
MAX_SKIPPED = 256

_BY_END = (StreamClosedBy.SEND_END_STREAM, StreamClosedBy.RECV_END_STREAM)


class _EndedOtherwise(SizeLimitDict):
    """
    C{h2}'s record of closed streams, without the streams that ended with
    C{END_STREAM}.
    """

    def __setitem__(self, key: Any, value: Any) -> None:
        if value not in _BY_END:
            super().__setitem__(key, value)


class ClosedStreams:
    """
    Mixed into a subclass of L{h2.connection.H2Connection} (before it):
    call L{_keepClosedStreams} once constructed, and L{_noteNewStream}
    before C{h2} begins a stream.
    """

    _skipped: List[Tuple[int, int]]

    def _keepClosedStreams(self) -> None:
        conn: Any = self
        conn._closed_streams = _EndedOtherwise(size_limit=conn.MAX_CLOSED_STREAMS)
        self._skipped = []

    def _noteNewStream(self, stream_id: int) -> None:
        """
        A stream is about to begin: remember the ids its peer skipped.
        """
        conn: Any = self
        outbound = conn._stream_id_is_outbound(stream_id)
        highest = conn.highest_outbound_stream_id if outbound else conn.highest_inbound_stream_id
        expected = highest + 2 if highest else 2 - stream_id % 2
        if stream_id > expected and stream_id % 2 == expected % 2:
            skipped = self._skipped
            skipped.append((expected, stream_id - 2))
            if len(skipped) > MAX_SKIPPED:
                del skipped[0]

    def _stream_closed_by(self, stream_id: int) -> Optional[StreamClosedBy]:
        conn: Any = self
        stream = conn.streams.get(stream_id)
        if stream is not None:
            return stream.closed_by  # type: ignore[no-any-return]
        closed = conn._closed_streams
        if stream_id in closed:
            return closed[stream_id]  # type: ignore[no-any-return]
        outbound = conn._stream_id_is_outbound(stream_id)
        highest = conn.highest_outbound_stream_id if outbound else conn.highest_inbound_stream_id
        if 0 < stream_id <= highest:
            for low, high in self._skipped:
                if low <= stream_id <= high and (stream_id - low) % 2 == 0:
                    return None
            return StreamClosedBy.SEND_END_STREAM
        return None
