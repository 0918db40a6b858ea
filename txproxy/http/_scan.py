# -*- test-case-name: tests.test_http_parser -*-
"""
Reading a head byte by byte: the readers of request lines and header lines
PyPy uses, and what explains a head that does not parse.

PyPy's regular expressions allocate as they backtrack: matching a
200-byte response head's header lines took about 21 KB of young objects,
a third of all a proxied request allocated, so the garbage collector's
minor collections (each copying everything in flight) came that much
sooner.  These loops, which PyPy's JIT compiles, allocate the fields
only.  They give exactly what L{txproxy.http._parser}'s expressions give;
that module picks them on PyPy (C{_SCAN_HEADERS}) and keeps the
expressions on CPython, where they are the faster.  tests.test_http_parser
compares the two on every one-byte mutation of its valid heads.
"""

from __future__ import annotations

import re
from typing import List, Optional, Tuple

from ._errors import HTTPError

#: The bytes of a token (RFC 9110 section 5.6.2), as a character class.
_TCHAR = rb"!#$%&'*+\-.^_`|~0-9A-Za-z"
_TOKEN = re.compile(rb"[" + _TCHAR + rb"]+")

#: Per byte value: 1 for a token character (a header name's), 2 for a
#: byte a header value may hold (HTAB, SP, VCHAR, obs-text), 3 for both.
_BYTE_CLASS = bytes(
    (1 if _TOKEN.fullmatch(bytes([b])) else 0)
    | (2 if (b == 9 or 0x20 <= b <= 0x7E or b >= 0x80) else 0)
    for b in range(256)
)


def _scanHeaders(data: bytes, start: int, end: int) -> Optional[List[Tuple[bytes, bytes]]]:
    """
    What C{_HEADER_LINE.findall(data, start, end)} gives when every line
    between C{start} and C{end} (each ending with CRLF) matches, one byte
    at a time; L{None} when one does not.

    PyPy's regular expressions allocate as they backtrack: the C{findall}
    took about 21 KB of young objects for a 200-byte response head, a
    third of all a proxied request allocated, so collections came that
    much sooner.  This loop, which PyPy's JIT compiles, allocates the
    fields only.  On CPython the C{findall} is faster (L{_parseHeaders}
    picks; tests.test_http_parser checks the two agree).
    """
    classes = _BYTE_CLASS
    headers: List[Tuple[bytes, bytes]] = []
    at = start
    while at < end:
        i = at
        while i < end and classes[data[i]] & 1:
            i += 1
        if i == at or i >= end or data[i] != 58:  # ":"
            return None
        name = data[at:i]
        i += 1
        while i < end and (data[i] == 32 or data[i] == 9):
            i += 1
        first = last = i
        while i < end:
            c = data[i]
            if c == 13:
                break
            if not classes[c] & 2:
                return None
            i += 1
            if c != 32 and c != 9:
                last = i
        if i + 1 >= end or data[i + 1] != 10:
            return None
        headers.append((name, data[first:last]))
        at = i + 2
    return headers


def _scanRequestLine(data: bytes, start: int) -> Optional[Tuple[bytes, bytes, bytes, int]]:
    """
    What C{_REQUEST_LINE.match(data, start)} gives (its three groups and
    where it ends), one byte at a time, for PyPy as L{_scanHeaders}; L{None}
    when it does not match.
    """
    classes = _BYTE_CLASS
    size = len(data)
    i = start
    while i < size and classes[data[i]] & 1:
        i += 1
    if i == start or i >= size or data[i] != 32:
        return None
    method = data[start:i]
    i += 1
    first = i
    while i < size and 0x21 <= data[i] <= 0x7E:
        i += 1
    if i == first or i >= size or data[i] != 32:
        return None
    target = data[first:i]
    i += 1
    if (
        i + 10 > size
        or data[i : i + 5] != b"HTTP/"
        or not 48 <= data[i + 5] <= 57
        or data[i + 6] != 46  # "."
        or not 48 <= data[i + 7] <= 57
        or data[i + 8] != 13
        or data[i + 9] != 10
    ):
        return None
    return method, target, data[i : i + 8], i + 10


def _badRequestLine(data: bytes, start: int) -> HTTPError:
    """
    Explain why the request line at C{start} did not match.
    """
    eol = data.find(b"\n", start)
    # No LF: up to the last byte, as data[start:-1] would be.  (Written out:
    # mypyc's bytes slice fails when the end falls before the start.)
    line = data[start : eol if eol >= 0 else max(len(data) - 1, start)]
    if not line.endswith(b"\r") or b"\r" in line[:-1]:
        return HTTPError(400, "Request line must end with CRLF")
    parts = line[:-1].split(b" ")
    if len(parts) != 3:
        return HTTPError(400, "Malformed request line")
    method, target, version = parts
    if not _TOKEN.fullmatch(method):
        return HTTPError(400, "Invalid method")
    if not re.fullmatch(rb"HTTP/[0-9]\.[0-9]", version):
        return HTTPError(400, "Invalid HTTP version")
    return HTTPError(400, "Invalid request target")


def _badHeaders(data: bytes, start: int, end: int, status: int) -> HTTPError:
    """
    Explain why a header section did not parse.
    """
    for line in data[start:end].split(b"\n"):
        if not line:
            continue
        if not line.endswith(b"\r") or b"\r" in line[:-1]:
            return HTTPError(status, "Header lines must end with CRLF")
        line = line[:-1]
        if line[:1] in (b" ", b"\t"):
            return HTTPError(status, "Obsolete line folding is not allowed")
        colon = line.find(b":")
        if colon < 0:
            return HTTPError(status, "Header line without a colon")
        name = line[:colon]
        if name[-1:] in (b" ", b"\t"):
            return HTTPError(status, "Whitespace before a header colon")
        if not _TOKEN.fullmatch(name):
            return HTTPError(status, "Invalid header name")
        if re.search(rb"[\x00-\x08\x0a-\x1f\x7f]", line):
            return HTTPError(status, "Control character in header value")
    return HTTPError(status, "Malformed header section")
