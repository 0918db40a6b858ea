# -*- test-case-name: tests.test_http_parser -*-
"""
Message body framing (RFC 9112 section 6) and sans-IO body readers.

Choices made where the RFC leaves room:

  - A request with both C{Transfer-Encoding} and C{Content-Length}, a
    C{Transfer-Encoding} on an HTTP/1.0 request, one whose final coding is
    not C{chunked}, or C{chunked} applied twice: C{400}.
  - A request whose codings end in C{chunked} but include another coding
    (C{gzip, chunked}, or a token we do not know): C{501}, as RFC 9112
    section 6.1 suggests.  Transfer codings with parameters: C{400}.
    Empty list elements (C{chunked,}, C{, chunked}, an empty value) are
    C{400} too: RFC 9110 section 5.6.1 says to skip them, but other parsers
    (llhttp) read C{chunked,} as not ending in C{chunked}, and on this
    header any disagreement is a smuggling risk.
  - Several C{Content-Length} values (separate lines or a comma list) are
    accepted when they are byte for byte the same (RFC 9110 section 8.6
    allows reading them as one), and are C{400} otherwise, even when they
    are the same number spelt differently (C{5} and C{05}).  A value must
    be digits only and below 10**18.  Forward a single normalized value
    (L{applyFraming} does): llhttp, for one, refuses repeated values.
  - Responses: C{Transfer-Encoding} together with C{Content-Length}, or in
    an HTTP/1.0 response, or with C{chunked} not last, is C{502} (RFC 9112
    section 6.1 says such a message "ought to be handled as an error");
    codings not ending in C{chunked} make the body close-delimited; other
    codings before C{chunked} are fine (the body is relayed as it is, and
    L{Framing.codings} says what to put back in C{Transfer-Encoding}).
  - Chunk-size lines: 1 to 16 hex digits (value below 2**63), optional
    extensions with the BWS of RFC 9112 section 7.1.1, nothing else (no
    whitespace after the size), CRLF only, at most
    L{ChunkedReader.maxLineLength} bytes.  Trailer lines follow the header
    rules; the trailer section is capped at L{ChunkedReader.maxTrailerSize}.
"""

from __future__ import annotations

import re
from typing import List, Optional, Tuple

import attr
from mypy_extensions import mypyc_attr

from ._errors import HTTPError
from ._parser import _HEADER_LINE, _HTTP10, Headers, RequestHead, ResponseHead
from ._scan import _TCHAR, _TOKEN

_CHUNK_SIZE_LINE = re.compile(
    rb"([0-9A-Fa-f]{1,16})"
    rb"(?:[ \t]*;[ \t]*[" + _TCHAR + rb"]+"
    rb"(?:[ \t]*=[ \t]*(?:[" + _TCHAR + rb"]+"
    rb"|\"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*\"))?)*"
    rb"\r\n"
)
_MAX_CONTENT_LENGTH_DIGITS = 18
_MAX_CHUNK_SIZE = 2**63 - 1


# Compiled with mypyc, an attrs class must stay a Python class (mypyc's own
# attrs classes lose the generated __eq__, __repr__ and frozenness).
@mypyc_attr(native_class=False)
@attr.s(frozen=True, slots=True, auto_attribs=True)
class Framing:
    """
    How a message body is delimited.

    @ivar kind: C{"none"} (no body at all), C{"length"} (exactly L{length}
        bytes), C{"chunked"} (chunked transfer coding, read it with
        L{ChunkedReader}) or C{"close"} (a response body that ends when the
        server closes the connection).
    @ivar length: the body length for C{"length"}, C{0} for C{"none"},
        L{None} otherwise.
    @ivar codings: the transfer codings from C{Transfer-Encoding},
        lower-cased, in order (empty without one).
    """

    kind: str
    length: Optional[int] = None
    codings: Tuple[bytes, ...] = ()


NO_BODY = Framing("none", 0)
CHUNKED = Framing("chunked", None, (b"chunked",))
UNTIL_CLOSE = Framing("close")


def _framingHeaders(headers: Headers) -> Tuple[List[bytes], List[bytes]]:
    """
    The values of C{Transfer-Encoding} and of C{Content-Length}.
    """
    te: List[bytes] = []
    cl: List[bytes] = []
    for name, value in headers:
        size = len(name)
        if size == 17:
            if name.lower() == b"transfer-encoding":
                te.append(value)
        elif size == 14:
            if name.lower() == b"content-length":
                cl.append(value)
    return te, cl


def _contentLength(values: List[bytes], status: int) -> int:
    """
    The one length that the C{Content-Length} values agree on.

    @raise HTTPError: C{status}, if they are invalid or disagree.
    """
    first: Optional[bytes] = None
    if len(values) == 1 and values[0].isdigit():
        # The usual case: one plain value.
        first = values[0]
    else:
        for value in values:
            for item in value.split(b","):
                item = item.strip(b" \t")
                if first is None:
                    first = item
                elif item != first:
                    # Byte for byte: "5" and "05" are the same number, but
                    # a peer that reads the field as received (or in
                    # octal) might not think so.
                    raise HTTPError(status, "Conflicting Content-Length values")
        if first is None or not first.isdigit():
            raise HTTPError(status, "Invalid Content-Length")
    if len(first.lstrip(b"0")) > _MAX_CONTENT_LENGTH_DIGITS:
        raise HTTPError(status, "Content-Length too large")
    return int(first)


def _codings(values: List[bytes], status: int) -> Tuple[bytes, ...]:
    """
    The lower-cased transfer codings listed by C{Transfer-Encoding}.

    @raise HTTPError: C{status}, for an invalid or empty list.
    """
    codings = []
    for value in values:
        for item in value.split(b","):
            item = item.strip(b" \t")
            if not item:
                # RFC 9110 section 5.6.1 would have us skip empty list
                # elements, but llhttp reads "chunked," as not ending in
                # chunked: refuse rather than disagree on framing.
                raise HTTPError(status, "Empty element in Transfer-Encoding")
            if not _TOKEN.fullmatch(item):
                raise HTTPError(status, "Invalid Transfer-Encoding")
            codings.append(item.lower())
    return tuple(codings)


def requestFraming(head: RequestHead) -> Framing:
    """
    How the body of a request is delimited (RFC 9112 section 6.3), refusing
    every ambiguous case (see the module docstring).

    @param head: a parsed request head.
    @return: L{NO_BODY}, a C{"length"} framing, or a C{"chunked"} framing.
    @raise HTTPError: C{400} for an ambiguous or malformed framing,
        C{501} for a transfer coding other than C{chunked}.
    """
    te, cl = _framingHeaders(head.headers)
    if te:
        if head.version == _HTTP10:
            raise HTTPError(400, "Transfer-Encoding in an HTTP/1.0 request")
        if cl:
            raise HTTPError(400, "Both Transfer-Encoding and Content-Length")
        codings = _codings(te, 400)
        if codings == (b"chunked",):
            return CHUNKED
        if codings[-1] != b"chunked":
            raise HTTPError(400, "Request Transfer-Encoding must end with chunked")
        if b"chunked" in codings[:-1]:
            raise HTTPError(400, "chunked applied more than once")
        raise HTTPError(501, "Transfer coding not implemented")
    if cl:
        length = _contentLength(cl, 400)
        return Framing("length", length)
    return NO_BODY


def responseFraming(requestMethod: bytes, head: ResponseHead) -> Framing:
    """
    How the body of a response is delimited (RFC 9112 section 6.3).

    Responses to C{HEAD}, C{1xx} (including C{101}), C{204} and C{304}
    responses, and C{2xx} responses to C{CONNECT} have no body (after the
    last two kinds the connection carries a tunnel).

    @param requestMethod: the method of the request this answers.
    @param head: the parsed response head.
    @return: the framing.
    @raise HTTPError: C{502} for an ambiguous or malformed framing.
    """
    status = head.status
    if status < 200 or status == 204 or status == 304 or requestMethod == b"HEAD":
        return NO_BODY
    if requestMethod == b"CONNECT" and status < 300:
        return NO_BODY
    te, cl = _framingHeaders(head.headers)
    if te:
        if cl:
            raise HTTPError(502, "Upstream sent both Transfer-Encoding and Content-Length")
        if head.version == _HTTP10:
            raise HTTPError(502, "Upstream sent Transfer-Encoding in HTTP/1.0")
        codings = _codings(te, 502)
        if codings == (b"chunked",):
            return CHUNKED
        if b"chunked" in codings[:-1]:
            raise HTTPError(502, "Upstream applied chunked before another coding")
        if codings[-1] == b"chunked":
            return Framing("chunked", None, codings)
        return Framing("close", None, codings)
    if cl:
        return Framing("length", _contentLength(cl, 502))
    return UNTIL_CLOSE


def applyFraming(headers: Headers, framing: Framing) -> Headers:
    """
    Make C{Content-Length} and C{Transfer-Encoding} say what C{framing}
    says, for forwarding a message whose body is relayed as received.

    Call it after L{removeHopByHop} (which drops C{Transfer-Encoding}, and
    whatever C{Connection} lists, possibly C{Content-Length}).  For
    C{"length"} a single normalized C{Content-Length} is written; for
    C{"chunked"} C{Transfer-Encoding} lists L{Framing.codings} and any
    C{Content-Length} is dropped; for C{"close"} the codings (if any) are
    kept and C{Content-Length} is dropped; for C{"none"} C{Content-Length}
    is left alone (a response to C{HEAD} or a C{304} may carry one) and
    C{Transfer-Encoding} is dropped.

    @param headers: the headers to forward.
    @param framing: the framing of the body that will follow.
    @return: the new headers, the framing headers placed last.
    """
    kept = tuple(
        (name, value)
        for name, value in headers
        if not (
            (len(name) == 17 and name.lower() == b"transfer-encoding")
            or (framing.kind != "none" and len(name) == 14 and name.lower() == b"content-length")
        )
    )
    kind = framing.kind
    if kind == "length":
        assert framing.length is not None
        return kept + ((b"Content-Length", b"%d" % (framing.length,)),)
    if framing.codings and kind != "none":
        return kept + ((b"Transfer-Encoding", b", ".join(framing.codings)),)
    return kept


class LengthReader:
    """
    Splits off a body of known length from a byte stream.

    @ivar remaining: how many body bytes are still expected.
    @ivar ended: whether the whole body has been seen.
    @ivar leftover: once ended, the bytes that followed the body (the next
        message); later L{feed} calls append to it.
    """

    def __init__(self, length: int) -> None:
        """
        @param length: the body length (C{Content-Length}).
        """
        self.remaining = length
        self.ended = length == 0
        self.leftover = b""

    def feed(self, data: bytes) -> bytes:
        """
        Take the next bytes of the stream.

        @param data: received bytes.
        @return: the part of C{data} that belongs to the body.
        """
        if self.ended:
            self.leftover += data
            return b""
        remaining = self.remaining
        if len(data) < remaining:
            self.remaining = remaining - len(data)
            return data
        self.remaining = 0
        self.ended = True
        if len(data) == remaining:
            return data
        self.leftover = data[remaining:]
        return data[:remaining]


_SIZE = 0
_DATA = 1
_DATA_END = 2
_TRAILER = 3
_DONE = 4


class ChunkedReader:
    """
    Validates a chunked body (RFC 9112 section 7.1) as it streams past and
    hands back its raw bytes, so a proxy can relay it verbatim.

    Feed it whatever arrives with L{feed}; each call returns the raw bytes
    (chunk-size lines, data, CRLFs, trailers, final CRLF) that are now known
    to be valid and belong to this message.  Chunk data is returned as soon
    as it arrives; a size line or trailer line is held back until it is
    complete and checked.  Once the final blank line has been returned,
    L{ended} is true and the bytes past the body are in L{leftover}.  After
    an L{HTTPError} the reader is spent: close the connection.

    Holding back incomplete lines means a relay never forwards a chunk-size
    line or trailer it has not checked, so a malformed body is cut off
    before the malformed part (the connection is then closed) instead of
    reaching the peer.

    @cvar maxLineLength: the longest chunk-size line (extensions included).
    @cvar maxTrailerSize: the largest trailer section.
    @ivar ended: whether the whole body has been seen.
    @ivar leftover: once ended, the bytes that followed the body; later
        L{feed} calls append to it.
    @ivar bodySize: the number of chunk-data bytes seen so far.
    """

    maxLineLength = 4096
    maxTrailerSize = 16384
    _decode = False

    def __init__(self, errorStatus: int = 400) -> None:
        """
        @param errorStatus: the status of the L{HTTPError} raised for a
            malformed body: C{400} for a request body, C{502} for a response
            body.
        """
        self._errorStatus = errorStatus
        self._state = _SIZE
        self._remaining = 0
        self._pending = b""
        self._trailerSize = 0
        self._pieces: List[bytes] = []
        self.trailers: List[Tuple[bytes, bytes]] = []
        self.bodySize = 0
        self.ended = False
        self.leftover = b""

    def _error(self, reason: str) -> HTTPError:
        return HTTPError(self._errorStatus, reason)

    def _consume(self, buf: bytes) -> int:
        """
        Run the state machine over C{buf}; return how much of it is valid
        and belongs to this message.  Anything after that is an incomplete
        line (or, once ended, the next message).
        """
        pos = 0
        size = len(buf)
        state = self._state
        decode = self._decode
        while pos < size:
            if state == _DATA:
                remaining = self._remaining
                available = size - pos
                if available < remaining:
                    if decode:
                        self._pieces.append(buf[pos:] if pos else buf)
                    self._remaining = remaining - available
                    self.bodySize += available
                    pos = size
                    break
                if decode:
                    self._pieces.append(buf[pos : pos + remaining])
                self.bodySize += remaining
                pos += remaining
                self._remaining = 0
                state = _DATA_END
            elif state == _DATA_END:
                if buf[pos : pos + 2] == b"\r\n":
                    pos += 2
                    state = _SIZE
                elif buf[pos : pos + 2] != b"\r" or size - pos >= 2:
                    raise self._error("Chunk data not followed by CRLF")
                else:
                    break
            elif state == _SIZE:
                eol = buf.find(b"\n", pos, pos + self.maxLineLength + 1)
                if eol < 0:
                    if size - pos > self.maxLineLength:
                        raise self._error("Chunk size line too long")
                    break
                match = _CHUNK_SIZE_LINE.match(buf, pos, eol + 1)
                if match is None or match.end() != eol + 1:
                    raise self._error("Malformed chunk size line")
                chunkSize = int(match.group(1), 16)
                if chunkSize > _MAX_CHUNK_SIZE:
                    raise self._error("Chunk size too large")
                pos = eol + 1
                if chunkSize:
                    self._remaining = chunkSize
                    state = _DATA
                else:
                    state = _TRAILER
            elif state == _TRAILER:
                eol = buf.find(b"\n", pos)
                if eol < 0:
                    if self._trailerSize + size - pos > self.maxTrailerSize:
                        raise self._error("Trailer section too large")
                    break
                lineEnd = eol + 1
                self._trailerSize += lineEnd - pos
                if self._trailerSize > self.maxTrailerSize:
                    raise self._error("Trailer section too large")
                if lineEnd - pos == 2 and buf[pos] == 13:
                    pos = lineEnd
                    state = _DONE
                    break
                fields = _HEADER_LINE.findall(buf, pos, lineEnd)
                if len(fields) != 1 or buf[eol - 1] != 13:
                    raise self._error("Malformed trailer field")
                if decode:
                    self.trailers.append(fields[0])
                pos = lineEnd
            else:
                break
        self._state = state
        return pos

    def feed(self, data: bytes) -> bytes:
        """
        Take the next bytes of the stream.

        @param data: received bytes.
        @return: the raw bytes, from this call or held back from earlier
            ones, now known to belong to the body.
        @raise HTTPError: with the status given to the constructor, for a
            malformed body.
        """
        if self.ended:
            self.leftover += data
            return b""
        pending = self._pending
        buf = pending + data if pending else data
        pos = self._consume(buf)
        if self._state == _DONE:
            self.ended = True
            self.leftover = buf[pos:]
            self._pending = b""
        else:
            self._pending = buf[pos:] if pos < len(buf) else b""
        if pos == len(buf):
            return buf
        return buf[:pos]


class ChunkedDecoder(ChunkedReader):
    """
    Like L{ChunkedReader}, but L{feed} returns the decoded chunk data (for
    hooks that want the body itself), and the trailer fields are collected
    in L{trailers}.

    @ivar trailers: the trailer fields seen so far, as C{(name, value)}
        pairs.
    """

    _decode = True

    def feed(self, data: bytes) -> bytes:
        """
        Take the next bytes of the stream.

        @param data: received bytes.
        @return: the chunk data decoded from them (possibly empty).
        @raise HTTPError: with the status given to the constructor, for a
            malformed body.
        """
        ChunkedReader.feed(self, data)
        pieces = self._pieces
        if not pieces:
            return b""
        self._pieces = []
        if len(pieces) == 1:
            return pieces[0]
        return b"".join(pieces)
