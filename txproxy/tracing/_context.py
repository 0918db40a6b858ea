# -*- test-case-name: tests.test_tracing_context -*-
"""
W3C Trace Context level 1, sans-IO: parsing and generating the
C{traceparent} and C{tracestate} request header fields, and the sampling
decision for a request.

Everything here works on the C{bytes} of header values and returns plain
values; nothing touches a socket or a clock.  Identifiers are kept as
lower-case hexadecimal C{bytes} (what goes on the wire), and turned into raw
bytes only when spans are encoded for export.

The rules (U{https://www.w3.org/TR/trace-context/}):

  - C{traceparent} is C{version-traceid-parentid-flags}: 2, 32, 16 and 2
    lower-case hex digits.  Upper-case hex, other lengths, an all-zero
    trace id or parent id and version C{ff} make it invalid; version C{00}
    is exactly 55 characters.  A I{future} version (C{01} to C{fe}) is read
    as version C{00} from its first 55 characters, provided the 56th (if
    any) is a C{-}; only the C{sampled} flag is kept.  Optional white space
    (space, tab) around the value is ignored.  Two C{traceparent} fields in
    one request make it invalid.
  - C{tracestate} is a comma-separated list of C{key=value} members, over
    any number of fields (joined in order).  Empty members and optional
    white space around members are skipped.  Any member that breaks the
    key or value grammar, or a key given twice, makes the whole list
    invalid: it is dropped, not repaired.  More than 32 members are
    trimmed to the first 32 (the spec lets a participant remove members
    from the end).  A C{tracestate} without a valid C{traceparent} is
    dropped.
"""

from __future__ import annotations

import os
import random
import re
from binascii import hexlify
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

import attr

__all__ = [
    "TraceParent",
    "MAX_TRACESTATE_MEMBERS",
    "parseTraceparent",
    "parseTracestate",
    "contextFromHeaders",
    "newTraceId",
    "newSpanId",
    "Sampler",
    "idLines",
    "fillIdLines",
    "LINE_SIZE",
]

#: The most C{tracestate} members propagated (the spec's limit).
MAX_TRACESTATE_MEMBERS = 32

_OWS = b" \t"
_ZERO_TRACE = b"0" * 32
_ZERO_SPAN = b"0" * 16

_KEYCHARS = rb"[a-z0-9_\-*/]"
_MEMBER = re.compile(
    rb"(?:[a-z]" + _KEYCHARS + rb"{0,255}"
    rb"|[a-z0-9]" + _KEYCHARS + rb"{0,240}@[a-z]" + _KEYCHARS + rb"{0,13})"
    rb"=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
)


@attr.s(frozen=True, slots=True, auto_attribs=True)
class TraceParent:
    """
    A parsed (or generated) C{traceparent}.

    @ivar traceId: 32 lower-case hex digits, not all zero.
    @ivar spanId: 16 lower-case hex digits, not all zero (the parent-id
        field: the span of the sender).
    @ivar flags: the trace flags; bit 0 is C{sampled}.
    """

    traceId: bytes
    spanId: bytes
    flags: int = 0

    @property
    def sampled(self) -> bool:
        """
        Whether the sender may have recorded its span (the C{sampled} flag).
        """
        return bool(self.flags & 1)

    def header(self) -> bytes:
        """
        The C{traceparent} value, version C{00}.
        """
        return b"00-" + self.traceId + b"-" + self.spanId + (b"-01" if self.flags & 1 else b"-00")


#: The digits of a C{traceparent}'s fields (lower-case hex).
_HEX_DIGITS = b"0123456789abcdef"
#: Last hex digits of the flags field whose bit 0 (C{sampled}) is set.
_ODD_DIGITS = frozenset(b"13579bdf")


def _validTraceparent(value: bytes) -> Optional[bytes]:
    """
    The first 55 bytes of a valid C{traceparent} value (white space around
    it removed), or L{None}: slices and one C{translate}, no regular
    expression (this runs for every request that carries the field).
    """
    value = value.strip(_OWS)
    size = len(value)
    if size < 55:
        return None
    if size > 55:
        # Version 00 has nothing after the flags; a future version may
        # have more fields, each after a dash.
        if value[:2] == b"00" or value[55:56] != b"-":
            return None
        value = value[:55]
    # Only hex digits and three dashes, at 2, 35 and 52; not version ff
    # (102 is "f"); not all-zero ids (looked for only when there are
    # sixteen zeros in a row).
    if (value.translate(None, _HEX_DIGITS) != b"---" or value[2] != 45 or value[35] != 45 or value[52] != 45
            or (value[0] == 102 and value[1] == 102)):
        return None
    if _ZERO_SPAN in value and (value.startswith(_ZERO_TRACE, 3) or value.startswith(_ZERO_SPAN, 36)):
        return None
    return value


def parseTraceparent(value: bytes) -> Optional[TraceParent]:
    """
    Parse one C{traceparent} field value.

    @return: the L{TraceParent}, or L{None} when the value is invalid.
    """
    valid = _validTraceparent(value)
    if valid is None:
        return None
    # Of the flags, level 1 defines only "sampled"; a future version's other
    # bits are not ours to pass on.
    return TraceParent(valid[3:35], valid[36:52], 1 if valid[54] in _ODD_DIGITS else 0)


def parseTracestate(values: Iterable[bytes]) -> Optional[bytes]:
    """
    Parse and normalise the C{tracestate} field values of one request, in
    order.

    @return: the list to propagate (members joined with C{,}, white space
        removed, at most L{MAX_TRACESTATE_MEMBERS} of them), or L{None} when
        there is none or it is invalid.
    """
    members: List[bytes] = []
    keys = set()
    for value in values:
        for member in value.split(b","):
            member = member.strip(_OWS)
            if not member:
                continue
            if _MEMBER.fullmatch(member) is None:
                return None
            key = member[: member.index(b"=")]
            if key in keys:
                return None
            keys.add(key)
            members.append(member)
    if not members:
        return None
    return b",".join(members[:MAX_TRACESTATE_MEMBERS])


def contextFromHeaders(headers: Sequence[Tuple[bytes, bytes]]) -> Tuple[Optional[TraceParent], Optional[bytes]]:
    """
    The trace context a request carries.

    @param headers: the request's header fields, as (name, value) pairs
        (names in any case).
    @return: C{(parent, tracestate)}: the valid parent or L{None} (absent,
        invalid, or given twice), and the C{tracestate} to propagate or
        L{None} (always L{None} without a valid parent).
    """
    parents: List[bytes] = []
    states: List[bytes] = []
    for name, value in headers:
        size = len(name)
        if size == 11 or size == 10:
            lowered = name.lower()
            if lowered == b"traceparent":
                parents.append(value)
            elif lowered == b"tracestate":
                states.append(value)
    if len(parents) != 1:
        return None, None
    parent = parseTraceparent(parents[0])
    if parent is None:
        return None, None
    return parent, parseTracestate(states) if states else None


_getrandbits = random.getrandbits


def newTraceId(randbits: Callable[[int], int] = _getrandbits) -> bytes:
    """
    A new random trace id: 32 lower-case hex digits, never all zero.
    """
    n = randbits(128)
    while not n:
        n = randbits(128)
    return b"%032x" % n


def newSpanId(randbits: Callable[[int], int] = _getrandbits) -> bytes:
    """
    A new random span id: 16 lower-case hex digits, never all zero.
    """
    n = randbits(64)
    while not n:
        n = randbits(64)
    return b"%016x" % n


#: The length of a C{traceparent} header line as L{idLines} makes them:
#: C{traceparent: 00-<32 hex>-<16 hex>-<2 hex>} and CRLF.
LINE_SIZE = 70
#: Where the trace id, the span id and the flags are in such a line.
TRACE_ID_AT = slice(16, 48)
SPAN_ID_AT = slice(49, 65)
_TEMPLATE = b"traceparent: 00-" + b"x" * 32 + b"-" + b"x" * 16 + b"-%s\r\n"
_ZERO_RUN = b"0" * 16


def idLines(count: int, flags: bytes = b"00", urandom: Callable[[int], bytes] = os.urandom) -> bytes:
    """
    C{count} C{traceparent} header lines (L{LINE_SIZE} bytes each, CRLF
    included) with new random ids, none of them all zero, and C{flags}:
    the ids of C{count} spans, drawn and formatted in one go (one
    C{urandom} call, one C{hexlify}, 48 slice assignments), so that a
    request takes its ids and its C{traceparent} line with one slice.

    @param flags: the flags field, C{b"00"} or C{b"01"}.
    """
    block = bytearray((_TEMPLATE % flags) * count)
    fillIdLines(block, urandom)
    return bytes(block)


def fillIdLines(block: bytearray, urandom: Callable[[int], bytes] = os.urandom) -> None:
    """
    Draw new ids into C{block}, lines as L{idLines} makes them, in place
    (their flags and the rest of each line kept).
    """
    count = len(block) // LINE_SIZE
    while True:
        digits = hexlify(urandom(24 * count))
        # Column by column: digit c of every line's trace id, then of its
        # span id.
        for column in range(32):
            block[16 + column::LINE_SIZE] = digits[column::48]
        for column in range(16):
            block[49 + column::LINE_SIZE] = digits[32 + column::48]
        # Sixteen zero digits in a row anywhere (an all-zero span id, or
        # part of an all-zero trace id; the fixed parts have no such run):
        # drawn again, with a probability of about count * 2**-60.
        if _ZERO_RUN not in block:
            return


def _always(traceId: bytes) -> bool:
    return True


def _never(traceId: bytes) -> bool:
    return False


class Sampler:
    """
    Parent-based sampling with a ratio for new traces.

    A request with a valid C{traceparent} is recorded when its C{sampled}
    flag is set and not otherwise: the caller decided for the whole trace.
    A new trace is recorded with probability C{ratio}, decided from its
    trace id (the same id gets the same answer, as OpenTelemetry's
    C{TraceIdRatioBased} does: the low 64 bits below C{ratio * 2**64}).

    @ivar ratio: from 0 (no new trace is recorded) to 1 (every one is).
    """

    def __init__(self, ratio: float) -> None:
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"sampling ratio must be from 0 to 1, got {ratio!r}")
        self.ratio = ratio
        self._bound = bound = round(ratio * 2**64)
        if bound >= 2**64:
            self.sampleNew = _always  # type: ignore[method-assign]
        elif bound <= 0:
            self.sampleNew = _never  # type: ignore[method-assign]

    def sampleNew(self, traceId: bytes) -> bool:
        """
        Whether to record a new trace with id C{traceId} (32 hex digits).
        """
        return int(traceId[16:], 16) < self._bound

    def sample(self, parent: Optional[TraceParent], traceId: bytes) -> bool:
        """
        The decision for a request whose valid parent is C{parent} (or
        L{None}) and whose trace id is C{traceId}.
        """
        if parent is not None:
            return parent.sampled
        return self.sampleNew(traceId)
