# -*- test-case-name: tests.test_cache_memory -*-
"""
A stored variant (L{Entry}) and its versioned serialization, the form it
takes in a shared tier (Redis).  The blob starts with L{MAGIC}; a blob of
another layout (a process of another version sharing the tier) is never
decoded: L{deserialize} returns L{None} and the tier's copy is a miss.

Layout after the magic (all integers unsigned big-endian)::

    !dddI   requestTime, responseTime, initialAge, status
    then length-prefixed (!I) byte strings: urlKey, variantKey, reason,
    version, the Vary names joined by b"\\n", the headers (each name and
    value length-prefixed, their count first), and the body.
"""

from __future__ import annotations

import struct
from typing import List, Optional, Tuple

import attr

from txproxy.cache._policy import StoredResponse
from txproxy.http import ResponseHead

__all__ = ["ENTRY_OVERHEAD", "MAGIC", "Entry", "deserialize", "serialize"]

#: The first bytes of every serialized entry: the layout's version.
MAGIC = b"TXC1"

#: Bytes counted per entry beyond its keys, head and body: an estimate of
#: the Python objects that hold it (so that many tiny entries cannot hold
#: much more memory than the bound says).
ENTRY_OVERHEAD = 512

_FIXED = struct.Struct("!dddI")
_LEN = struct.Struct("!I")


@attr.s(slots=True, eq=False, auto_attribs=True)
class Entry:
    """
    One stored variant of a URL.

    @ivar urlKey: the URL key (L{txproxy.cache._policy.urlKey}).
    @ivar variantKey: its variant key (L{txproxy.cache._policy.varyKey}
        over C{vary}).
    @ivar vary: the request fields the response varies on.
    @ivar stored: the head and its times.
    @ivar body: the body.
    """

    urlKey: bytes
    variantKey: bytes
    vary: Tuple[bytes, ...]
    stored: StoredResponse
    body: bytes

    @property
    def size(self) -> int:
        """
        The bytes this entry is counted for.
        """
        return entrySize(self.urlKey, self.variantKey, self.stored.head) + len(self.body)


def headSize(head: ResponseHead) -> int:
    """
    The bytes a stored head is counted for.
    """
    return 32 + len(head.reason) + sum(len(n) + len(v) + 4 for n, v in head.headers)


def entrySize(urlKey: bytes, variantKey: bytes, head: ResponseHead) -> int:
    """
    The bytes counted for an entry without its body.
    """
    return ENTRY_OVERHEAD + len(urlKey) + len(variantKey) + headSize(head)


def _pack(parts: List[bytes], value: bytes) -> None:
    parts.append(_LEN.pack(len(value)))
    parts.append(value)


def serialize(entry: Entry) -> bytes:
    """
    The blob of C{entry} (see the module docstring).
    """
    stored = entry.stored
    head = stored.head
    parts = [MAGIC, _FIXED.pack(stored.requestTime, stored.responseTime, stored.initialAge, head.status)]
    for value in (entry.urlKey, entry.variantKey, head.reason, head.version, b"\n".join(entry.vary)):
        _pack(parts, value)
    parts.append(_LEN.pack(len(head.headers)))
    for name, value in head.headers:
        _pack(parts, name)
        _pack(parts, value)
    _pack(parts, entry.body)
    return b"".join(parts)


class _Reader:
    def __init__(self, data: bytes, offset: int) -> None:
        self.data = data
        self.offset = offset

    def take(self, n: int) -> bytes:
        end = self.offset + n
        if end > len(self.data):
            raise ValueError("truncated")
        value = self.data[self.offset : end]
        self.offset = end
        return value

    def count(self) -> int:
        value: int = _LEN.unpack(self.take(4))[0]
        return value

    def string(self) -> bytes:
        return self.take(self.count())


def deserialize(blob: bytes) -> Optional[Entry]:
    """
    The entry a blob holds, or L{None} when it is not one of this layout
    (another version's, truncated, or garbage).
    """
    if blob[:4] != MAGIC:
        return None
    try:
        reader = _Reader(blob, 4)
        requestTime, responseTime, initial, status = _FIXED.unpack(reader.take(_FIXED.size))
        urlKey, variantKey, reason, version, vary = (reader.string() for _ in range(5))
        headers = []
        for _ in range(reader.count()):
            name = reader.string()
            headers.append((name, reader.string()))
        body = reader.string()
        if reader.offset != len(blob) or not 100 <= status <= 999:
            return None
        head = ResponseHead(version, status, reason, tuple(headers))
    except (ValueError, struct.error):
        return None
    stored = StoredResponse(head, requestTime, responseTime, initial, len(body))
    return Entry(urlKey, variantKey, tuple(vary.split(b"\n")) if vary else (), stored, body)
