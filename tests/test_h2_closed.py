"""
Tests for L{txproxy.h2._closed}: how closed streams ended, without a record
per stream, against C{h2}'s own connection.
"""

from __future__ import annotations

from typing import Any, List, Tuple

import hpack
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.stream import StreamClosedBy
from hyperframe.frame import DataFrame, HeadersFrame, PriorityFrame, RstStreamFrame, SettingsFrame, WindowUpdateFrame
from twisted.trial.unittest import SynchronousTestCase

from tests.test_h2_server import SERVER_CONFIG
from txproxy.h2._client import _GracefulH2Connection
from txproxy.h2._closed import MAX_SKIPPED
from txproxy.h2._server import PREFACE, _Connection

REQUEST = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a.test"), (b":path", b"/")]


class Frames:
    """
    A client's frames as bytes, HPACK-coded in order (so that every
    connection fed them decodes the same blocks).
    """

    def __init__(self) -> None:
        self.encoder = hpack.Encoder()

    def headers(self, sid: int, end: bool = True) -> bytes:
        frame = HeadersFrame(sid, self.encoder.encode(REQUEST))
        frame.flags.add("END_HEADERS")
        if end:
            frame.flags.add("END_STREAM")
        return frame.serialize()  # type: ignore[no-any-return]

    def data(self, sid: int, end: bool = False) -> bytes:
        frame = DataFrame(sid, b"x")
        if end:
            frame.flags.add("END_STREAM")
        return frame.serialize()  # type: ignore[no-any-return]


def other(sid: int) -> List[Tuple[str, bytes]]:
    """
    Every kind of frame a client may send on stream C{sid}, but HEADERS.
    """
    return [
        ("data", DataFrame(sid, b"x").serialize()),
        ("window_update", WindowUpdateFrame(sid, window_increment=10).serialize()),
        ("rst_stream", RstStreamFrame(sid, error_code=8).serialize()),
        ("priority", PriorityFrame(sid, depends_on=0, stream_weight=16).serialize()),
    ]


class ClosedStreamsTests(SynchronousTestCase):
    def describe(self, event: Any) -> Any:
        names = ("stream_id", "headers", "data", "error_code", "delta")
        return (type(event).__name__,) + tuple(repr(getattr(event, name, None)) for name in names)

    def outcome(self, cls: Any, steps: List[Any]) -> List[Any]:
        conn = cls(config=H2Configuration(**SERVER_CONFIG))
        conn.initiate_connection()
        conn.data_to_send()
        out: List[Any] = []
        for step in steps:
            kind = step[0]
            events = None
            try:
                if kind == "recv":
                    events = [self.describe(e) for e in conn.receive_data(step[1])]
                elif kind == "respond":
                    conn.send_headers(step[1], [(b":status", b"200")], end_stream=True)
                elif kind == "reset":
                    conn.reset_stream(step[1], ErrorCodes.CANCEL)
                else:  # "forget": h2 drops its closed streams as it counts the open ones
                    conn.open_inbound_streams
                error = None
            except Exception as e:
                error = (type(e).__name__, getattr(e, "error_code", None))
            out.append((kind, events, error, conn.data_to_send()))
            if error is not None:
                break
        return out

    def compare(self, steps: List[Any]) -> List[Any]:
        ours = self.outcome(_Connection, steps)
        self.assertEqual(ours, self.outcome(H2Connection, steps), [step[0] for step in steps])
        return ours

    def test_sameAsH2(self) -> None:
        """
        A frame for a stream that ended with END_STREAM both ways, that was
        reset by either side, or whose id the client skipped: the same
        events, errors and frames sent as C{h2}'s, before and after C{h2}
        drops the stream from its table.
        """
        errors = set()
        for forget in (False, True):
            for late, frame in other(1) + [("headers", b"")]:
                f = Frames()
                start = PREFACE + SettingsFrame(0).serialize()
                scenarios = {
                    "ended": [("recv", start + f.headers(1)), ("respond", 1)],
                    "reset by us": [("recv", start + f.headers(1, end=False)), ("reset", 1)],
                    "reset by the client": [("recv", start + f.headers(1, end=False)),
                                            ("recv", RstStreamFrame(1, error_code=8).serialize())],
                }
                for name, steps in scenarios.items():
                    steps = steps + [("recv", f.headers(5)), ("respond", 5)]
                    if forget:
                        steps.append(("forget",))
                    last = frame if late != "headers" else f.headers(1)
                    result = self.compare(steps + [("recv", last)])
                    errors.add((name, late, result[-1][2]))
        # Some of these are connection errors and some are not: both kinds
        # were compared.
        self.assertIn(None, {error for _, _, error in errors})
        self.assertTrue({error for _, _, error in errors} - {None})

    def test_skippedIds(self) -> None:
        """
        Stream 3 was never opened (the client went from 1 to 7): a frame on
        it is what C{h2} makes of an implicitly closed stream, and a frame
        on stream 1 (ended) what it makes of an ended one.
        """
        outcomes = set()
        for forget in (False, True):
            for sid in (1, 3, 5, 7):
                for late, frame in other(sid) + [("headers", b"")]:
                    f = Frames()
                    steps: List[Any] = [
                        ("recv", PREFACE + SettingsFrame(0).serialize() + f.headers(1)),
                        ("respond", 1),
                        ("recv", f.headers(7)),
                        ("respond", 7),
                    ]
                    if forget:
                        steps.append(("forget",))
                    steps.append(("recv", frame if late != "headers" else f.headers(sid)))
                    outcomes.add((sid, late, str(self.compare(steps)[-1][2])))
        # Stream 3 and stream 1 are told apart (PROTOCOL_ERROR against
        # STREAM_CLOSED for a HEADERS frame).
        self.assertNotEqual(
            {o for o in outcomes if o[0] == 1 and o[1] == "headers"},
            {(1, "headers", o[2]) for o in outcomes if o[0] == 3 and o[1] == "headers"},
        )

    def test_noRecordOfEndedStreams(self) -> None:
        """
        After thousands of streams ended with END_STREAM, the connection
        keeps no record of them (C{h2} keeps one each), and still knows how
        they ended; a reset stream is recorded.
        """
        ours, theirs = _Connection(config=H2Configuration(**SERVER_CONFIG)), H2Connection(
            config=H2Configuration(**SERVER_CONFIG))
        f = Frames()
        heads = [f.headers(sid) for sid in range(1, 6001, 2)]
        for conn in (ours, theirs):
            conn.initiate_connection()
            conn.receive_data(PREFACE + SettingsFrame(0).serialize())
            for sid, head in zip(range(1, 6001, 2), heads):
                conn.receive_data(head)
                conn.send_headers(sid, [(b":status", b"200")], end_stream=True)
            conn.open_inbound_streams
        self.assertEqual((len(theirs._closed_streams), len(ours._closed_streams)), (3000, 0))
        self.assertTrue(ours._stream_is_closed_by_end(1))
        self.assertTrue(ours._stream_is_closed_by_end(5999))
        self.assertFalse(ours._stream_is_closed_by_end(6001))
        ours.receive_data(Frames().headers(6001, end=False))  # (a new encoder: the table is not used)
        ours.reset_stream(6001, ErrorCodes.CANCEL)
        ours.open_inbound_streams
        self.assertEqual(dict(ours._closed_streams), {6001: StreamClosedBy.SEND_RST_STREAM})
        self.assertTrue(ours._stream_is_closed_by_reset(6001))

    def test_skippedRangesBounded(self) -> None:
        """
        A client that skips an id before every stream leaves at most
        L{MAX_SKIPPED} ranges behind; the oldest skipped ids then count as
        ended.
        """
        conn = _Connection(config=H2Configuration(**SERVER_CONFIG))
        conn.initiate_connection()
        f = Frames()
        conn.receive_data(PREFACE + SettingsFrame(0).serialize())
        for sid in range(3, 4 * (MAX_SKIPPED + 10), 4):
            conn.receive_data(f.headers(sid))
            conn.send_headers(sid, [(b":status", b"200")], end_stream=True)
        self.assertEqual(len(conn._skipped), MAX_SKIPPED)
        self.assertIsNone(conn._stream_closed_by(4 * (MAX_SKIPPED + 9) - 3))
        self.assertIs(conn._stream_closed_by(1), StreamClosedBy.SEND_END_STREAM)

    def test_clientSide(self) -> None:
        """
        The backend side's connection keeps no record of its ended streams
        either.
        """
        conn = _GracefulH2Connection(config=H2Configuration(client_side=True, header_encoding=None))
        conn.initiate_connection()
        server = H2Connection(config=H2Configuration(**SERVER_CONFIG))
        server.initiate_connection()
        server.receive_data(conn.data_to_send())
        conn.receive_data(server.data_to_send())
        for _ in range(50):
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, REQUEST, end_stream=True)
            server.receive_data(conn.data_to_send())
            server.send_headers(sid, [(b":status", b"204")], end_stream=True)
            conn.receive_data(server.data_to_send())
        conn.open_outbound_streams
        self.assertEqual((len(conn._closed_streams), len(conn.streams), conn._skipped), (0, 0, []))
        self.assertTrue(conn._stream_is_closed_by_end(1))
        self.assertIsNone(conn._stream_closed_by(2))
