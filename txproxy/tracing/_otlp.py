# -*- test-case-name: tests.test_tracing -*-
"""
OTLP/HTTP protobuf encoding of spans, by hand: an
C{ExportTraceServiceRequest} (opentelemetry-proto,
C{opentelemetry/proto/collector/trace/v1/trace_service.proto}) holding one
C{ResourceSpans} with one C{ScopeSpans}.

Only the fields txproxy fills are written.  Hand encoding keeps protobuf
and the OpenTelemetry SDK off the proxy's path (see C{docs/tracing.rst}
for the measurements); the tests decode the output with
C{opentelemetry-proto} to check it.
"""

from __future__ import annotations

import struct
from binascii import unhexlify
from typing import Any, Dict, Iterable, List, Mapping, Sequence, Tuple

from txproxy.tracing._span import AttributeBlock, Span

__all__ = ["encodeSpans", "encodeSpanField", "encodeRequest", "attributeBlock", "CONTENT_TYPE"]

#: The content type of OTLP/HTTP protobuf bodies.
CONTENT_TYPE = b"application/x-protobuf"

_pack_d = struct.Struct("<d").pack
_pack_Q = struct.Struct("<Q").pack
_pack_I = struct.Struct("<I").pack

# Span.flags (OTLP 1.1+): the low byte is the W3C trace flags; these two say
# whether the parent was remote.
_FLAG_HAS_IS_REMOTE = 0x100
_FLAG_IS_REMOTE = 0x200


#: Varints of 0..127: one byte each.
_V1 = [bytes((i,)) for i in range(128)]
#: Varints of 128..16383 (two bytes each), by value (a span's length).
_V2 = [b""] * 128 + [bytes(((i & 0x7F) | 0x80, i >> 7)) for i in range(128, 0x4000)]


def _varint(n: int) -> bytes:
    if n < 0x80:
        return _V1[n]
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _ld(tag: bytes, payload: bytes) -> bytes:
    """
    A length-delimited field (C{tag} already encoded, wire type 2).
    """
    n = len(payload)
    return tag + (_V1[n] if n < 0x80 else _varint(n)) + payload


# Tags (field number << 3 | wire type), encoded.
_T1_LD = b"\x0a"
_T2_LD = b"\x12"
_T3_LD = b"\x1a"
_T4_LD = b"\x22"
_T5_LD = b"\x2a"
_T9_LD = b"\x4a"
_T11_LD = b"\x5a"
_T15_LD = b"\x7a"
_T1_F64 = b"\x09"
_T2_VAR = b"\x10"
_T3_VAR = b"\x18"
_T4_F64 = b"\x21"
_T6_VAR = b"\x30"

# Fixed parts of a Span: ids (with their lengths), the two timestamps in
# one struct, the flags.
_TRACE_ID = b"\x0a\x10"
_SPAN_ID = b"\x12\x08"
_PARENT_ID = b"\x22\x08"
_TIMES = struct.Struct("<BQBQ").pack
_FLAGS_ROOT = b"\x85\x01" + _pack_I(0x01 | _FLAG_HAS_IS_REMOTE)
_FLAGS_REMOTE_PARENT = b"\x85\x01" + _pack_I(0x01 | _FLAG_HAS_IS_REMOTE | _FLAG_IS_REMOTE)


def _anyValue(value: Any) -> bytes:
    """
    An encoded C{AnyValue}.
    """
    if value is True or value is False:
        return _T2_VAR + (b"\x01" if value else b"\x00")
    if isinstance(value, int):
        return _T3_VAR + _varint(value & 0xFFFFFFFFFFFFFFFF)
    if isinstance(value, float):
        return _T4_F64 + _pack_d(value)
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return _ld(_T1_LD, str(value).encode("utf-8", "replace"))


# Encoded pieces that repeat from span to span (attribute keys, string
# attributes such as the method, the route or the client address, span
# names), kept until there are too many: the encoder then does a
# dictionary lookup where it would build bytes.
_CACHE_LIMIT = 4096
_keys: Dict[str, bytes] = {}
_fields: Dict[Tuple[str, Any], bytes] = {}
_names: Dict[str, bytes] = {}


def _keyField(key: str) -> bytes:
    field = _keys.get(key)
    if field is None:
        if len(_keys) >= _CACHE_LIMIT:
            _keys.clear()
        field = _keys[key] = _ld(_T1_LD, key.encode("utf-8", "replace"))
    return field


def _spanAttribute(item: Tuple[str, Any]) -> bytes:
    """
    One span attribute's KeyValue field; an C{int} one, or a C{str} one of
    up to 256 characters, is kept for the next span that has it.  (Only those two types share the cache, so
    C{True} never finds the field of C{1}: the lookup checks the type
    first.)
    """
    value = item[1]
    field = _ld(_T9_LD, _keyField(item[0]) + _ld(_T2_LD, _anyValue(value)))
    cls = value.__class__
    if cls is int or (cls is str and len(value) <= 256):
        if len(_fields) >= _CACHE_LIMIT:
            _fields.clear()
        _fields[item] = field
    return field


def _attributes(tag: bytes, attributes: Mapping[str, Any]) -> List[bytes]:
    return [_ld(tag, _keyField(key) + _ld(_T2_LD, _anyValue(value))) for key, value in attributes.items()]


#: Value classes whose (key, value) fields the cache holds (a bool or a
#: float equal to a cached int must not find its field).
_CACHED_CLASSES = frozenset([str, int])
_fieldsGet = _fields.get
_type = type


def _encodedAttributes(attributes: Mapping[str, Any]) -> bytes:
    """
    The KeyValue fields of a span's attributes, joined: the fields of the
    usual values come from the cache by C{map} (no Python loop).
    """
    items = attributes.items()
    found = list(map(_fieldsGet, items))
    if None in found or not _CACHED_CLASSES.issuperset(map(_type, attributes.values())):
        # Something new (or a bool or a float): field by field.
        fields = _fields
        found = []
        append = found.append
        for item in items:
            cls = item[1].__class__
            field = fields.get(item) if cls is str or cls is int else None
            append(field if field is not None else _spanAttribute(item))
    return b"".join(found)  # type: ignore[arg-type]


def attributeBlock(pairs: Sequence[Tuple[str, Any]]) -> AttributeBlock:
    """
    An L{AttributeBlock}: C{pairs} and their KeyValue fields, encoded now.
    """
    pairs = tuple(pairs)
    return AttributeBlock(pairs, b"".join([_ld(_T9_LD, _keyField(key) + _ld(_T2_LD, _anyValue(value)))
                                           for key, value in pairs]))


def _nanos(seconds: float) -> int:
    # Microseconds are what a float of POSIX seconds holds exactly.
    return max(0, int(seconds * 1e6 + 0.5) * 1000)


def encodeSpan(span: Any) -> bytes:
    """
    One encoded C{Span} message, of a L{RecordingSpan}.
    """
    name = _names.get(span.name)
    if name is None:
        name = nameField(span.name)
    field = span._field
    parentId = span.parentId
    start = span.start
    end = span.end
    if end is None:
        end = start
    # (POSIX microseconds, as nanoseconds; never negative.)
    startNanos = int(start * 1e6 + 0.5) * 1000
    endNanos = int(end * 1e6 + 0.5) * 1000
    times = _TIMES(0x39, startNanos if startNanos > 0 else 0, 0x41, endNanos if endNanos > 0 else 0)
    parts = [
        _TRACE_ID,
        unhexlify(field[16:48]),
        _SPAN_ID,
        unhexlify(field[49:65]),
        _ld(_T3_LD, span.traceState) if span.traceState else b"",
        _PARENT_ID + unhexlify(parentId) if parentId is not None else b"",
        name,
        _V1[span.kind],
        times,
    ]
    attributes = span._attrs
    if len(attributes) > 4:
        parts.append(_encodedAttributes(attributes))
    elif attributes:
        # (A few: the request's own, beside its encoded blocks.)
        append = parts.append
        fields = _fields
        for item in attributes.items():
            cls = item[1].__class__
            known = fields.get(item) if cls is str or cls is int else None
            append(known if known is not None else _spanAttribute(item))
    blocks = span._blocks
    if blocks:
        for block in blocks:
            parts.append(block.encoded)
    events = span._events
    if events:
        for when, eventName, attributes in events:
            event = [_T1_F64 + _pack_Q(_nanos(when)), _ld(_T2_LD, eventName.encode("utf-8", "replace"))]
            event.extend(_attributes(_T3_LD, attributes))
            parts.append(_ld(_T11_LD, b"".join(event)))
    if span.statusCode:
        status = _T3_VAR + _varint(span.statusCode)
        if span.statusMessage:
            status = _ld(_T2_LD, span.statusMessage.encode("utf-8", "replace")) + status
        parts.append(_ld(_T15_LD, status))
    parts.append(_FLAGS_REMOTE_PARENT if parentId is not None else _FLAGS_ROOT)
    return b"".join(parts)


def nameField(name: str) -> bytes:
    """
    A span's encoded C{name} field and the tag of its C{kind} (the kind's
    value follows).
    """
    field = _names.get(name)
    if field is None:
        if len(_names) >= _CACHE_LIMIT:
            _names.clear()
        field = _names[name] = _ld(_T5_LD, name.encode("utf-8", "replace")) + _T6_VAR
    return field


def spanField(body: bytes) -> bytes:
    """
    An encoded C{Span} message as a field of C{ScopeSpans}.
    """
    n = len(body)
    if 0x80 <= n < 0x4000:
        # (The usual size: a two-byte length.)
        return b"".join((_T2_LD, _V2[n], body))
    return _ld(_T2_LD, body)


def encodeSpanField(span: Span) -> bytes:
    """
    One span as a field of C{ScopeSpans} (what L{encodeRequest} joins).
    """
    return spanField(encodeSpan(span))


def encodeRequest(
    spanFields: Sequence[bytes],
    resource: Mapping[str, Any],
    scope: Tuple[str, str] = ("txproxy", ""),
) -> bytes:
    """
    An encoded C{ExportTraceServiceRequest} carrying spans already encoded
    by L{encodeSpanField}.

    @param resource: the resource's attributes (C{service.name}, ...).
    @param scope: the instrumentation scope's name and version.
    """
    name, version = scope
    scopeMessage = _ld(_T1_LD, name.encode("utf-8"))
    if version:
        scopeMessage += _ld(_T2_LD, version.encode("utf-8"))
    # The spans are the bulk (hundreds of kilobytes): the nested lengths
    # are added up instead of wrapping message after message, so the body
    # is built by one join (one large allocation, not four).
    scopeHead = _ld(_T1_LD, scopeMessage)
    scopeSize = len(scopeHead) + sum(map(len, spanFields))
    resourceField = _ld(_T1_LD, b"".join(_attributes(_T1_LD, resource)))
    scopeTag = _T2_LD + _varint(scopeSize)
    resourceSpansSize = len(resourceField) + len(scopeTag) + scopeSize
    parts = [_T1_LD + _varint(resourceSpansSize) + resourceField + scopeTag + scopeHead]
    parts.extend(spanFields)
    return b"".join(parts)


def encodeSpans(
    spans: Iterable[Span],
    resource: Mapping[str, Any],
    scope: Tuple[str, str] = ("txproxy", ""),
) -> bytes:
    """
    An encoded C{ExportTraceServiceRequest} carrying C{spans}.

    @param resource: the resource's attributes (C{service.name}, ...).
    @param scope: the instrumentation scope's name and version.
    """
    return encodeRequest([encodeSpanField(span) for span in spans], resource, scope)


def resourceAttributes(serviceName: str, version: str, extra: Sequence[Tuple[str, Any]] = ()) -> Dict[str, Any]:
    """
    The resource attributes of txproxy's spans.
    """
    out: Dict[str, Any] = {"service.name": serviceName, "service.version": version}
    out.update(extra)
    return out
