# -*- test-case-name: tests.test_http_parser -*-
"""
Sans-IO HTTP/1.1 message heads: finding where a head ends, parsing request
and response heads strictly (RFC 9112), and serializing them back.

Nothing here touches a transport: bytes go in, immutable values (or
L{HTTPError}) come out.  The parser is plain Python built on C-level
C{bytes} methods and precompiled regular expressions, so it runs the same
(and fast) on CPython and PyPy; C{bench/bench_http_parser.py} compares it
with httptools (llhttp).

Choices made where RFC 9112 leaves room, all of them strict because a proxy
that accepts what its peers would read differently invites request
smuggling:

  - Lines must end in CRLF.  A bare LF (or a bare CR) anywhere in a head is
    an error (C{400} for requests, C{502} for responses); L{findHeadEnd}
    reports a head that ends in a bare-LF blank line as complete so that
    the error is raised at once instead of waiting for a CRLFCRLF that may
    never come.
  - Empty lines (CRLF) before a request line are ignored, any number of
    them (RFC 9112 section 2.2 says a server SHOULD ignore at least one);
    they count towards the head size limit.  Empty lines before a status
    line are an error.
  - The request line is exactly C{method SP target SP version}: one space
    each, no other whitespace (section 3 lets a server accept more; we do
    not).  Only C{HTTP/1.0} and C{HTTP/1.1} are accepted; any other
    well-formed version (including C{HTTP/1.2}, which section 2.3 would let
    us treat as 1.1) is C{505}.
  - The target must be printable ASCII.  Origin-form (C{/...}) and
    absolute-form (C{scheme://...}) are accepted for every method,
    authority-form (C{host:port}) only for C{CONNECT} (which requires it),
    asterisk-form (C{*}) only for C{OPTIONS}.
  - Header names are tokens followed at once by a colon; values are
    C{HTAB}, C{SP}, visible ASCII and obs-text (bytes 0x80-0xFF), stripped
    of surrounding whitespace.  obs-fold, NUL and other control characters
    are errors.  Responses get the same treatment: RFC 9112 section 5.2
    lets a proxy answer C{502} to a folded response header.
  - A status line may omit the reason phrase (C{HTTP/1.1 200} with or
    without the trailing space), as many servers do.  Status codes must
    be 100-599.
  - HTTP/1.1 requests need exactly one C{Host} with a valid value (an
    empty value is valid, as RFC 9112 section 3.2 allows); HTTP/1.0
    requests may omit it but not repeat it.  See L{parseHostHeader} for
    what a valid value is.
"""

from __future__ import annotations

import platform
import re
from typing import Any, Dict, FrozenSet, Iterable, List, Optional, Sequence, Tuple

import attr
from mypy_extensions import mypyc_attr

from ._errors import HTTPError
from ._scan import _TCHAR, _badHeaders, _badRequestLine, _scanHeaders, _scanRequestLine
from ._uri import _checkHostValue, parseAuthority

Header = Tuple[bytes, bytes]
Headers = Tuple[Header, ...]

DEFAULT_MAX_HEAD_SIZE = 65536
DEFAULT_MAX_HEADERS = 256

_VALUE_CHAR = rb"\t\x20-\x7e\x80-\xff"
_VALUE_VCHAR = rb"\x21-\x7e\x80-\xff"


# One header line; the value excludes surrounding whitespace.  Used with
# findall() under MULTILINE so that every match starts at a line start;
# comparing the number of matches with the number of LFs proves that every
# line matched (a line that does not match contributes an LF but no match,
# and a bare CR or LF can never be inside a match).
#
# The value starts and ends with a visible character, and the trailing
# whitespace is only tried right after a visible character (the
# lookbehind): so no two whitespace runs can trade characters, and a
# failing line costs linear time, not quadratic (Python 3.9 has no
# possessive quantifiers).  The value group always participates in the
# match: PyPy's findall() gives str '' for a group that does not.
_HEADER_LINE = re.compile(
    rb"^([" + _TCHAR + rb"]+):[ \t]*((?:[" + _VALUE_VCHAR + rb"](?:[" + _VALUE_CHAR + rb"]*["
    + _VALUE_VCHAR + rb"])?)?)(?:(?<=[" + _VALUE_VCHAR + rb"])[ \t]+)?\r\n",
    re.MULTILINE,
)
_REQUEST_LINE = re.compile(
    rb"([" + _TCHAR + rb"]+) ([\x21-\x7e]+) (HTTP/[0-9]\.[0-9])\r\n"
)
_STATUS_LINE = re.compile(
    rb"(HTTP/[0-9]\.[0-9]) ([0-9]{3})(?: ([" + _VALUE_CHAR + rb"]*))?\r\n"
)
_TOKEN_LIST = re.compile(rb"[" + _TCHAR + rb"]+(?: [" + _TCHAR + rb"]+)*")
# Bytes allowed inside a line of a head: HTAB, SP, VCHAR, obs-text.
_LINE_OK = bytes([9]) + bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100))
_CRLF = b"\r\n"
_ABSOLUTE_FORM = re.compile(rb"[A-Za-z][A-Za-z0-9+.\-]*://")

_HTTP11 = b"HTTP/1.1"
_HTTP10 = b"HTTP/1.0"
_VERSIONS = frozenset([_HTTP11, _HTTP10])


def _tupleOfPairs(headers: Iterable[Sequence[bytes]]) -> Headers:
    """
    Convert C{headers} to a tuple of C{(name, value)} tuples.
    """
    if type(headers) is tuple:
        # Parsed heads already hold tuples of tuples (findall's output).
        return headers
    return tuple((name, value) for name, value in headers)


def _get(headers: Headers, name: bytes) -> Optional[bytes]:
    """
    The first value of C{name} (case-insensitive), or L{None}.
    """
    name = name.lower()
    size = len(name)
    for n, v in headers:
        if len(n) == size and n.lower() == name:
            return v
    return None


def _getAll(headers: Headers, name: bytes) -> List[bytes]:
    """
    Every value of C{name} (case-insensitive), in order.
    """
    name = name.lower()
    size = len(name)
    return [v for n, v in headers if len(n) == size and n.lower() == name]


_NO_TOKENS: FrozenSet[bytes] = frozenset()


def _connectionTokens(headers: Headers) -> FrozenSet[bytes]:
    """
    The lower-cased options of every C{Connection} field.
    """
    tokens = None
    for n, v in headers:
        if len(n) == 10 and n.lower() == b"connection":
            if tokens is None:
                tokens = []
            for item in v.lower().split(b","):
                item = item.strip(b" \t")
                if item:
                    tokens.append(item)
    return _NO_TOKENS if tokens is None else frozenset(tokens)


def _keepAlive(version: bytes, headers: Headers) -> bool:
    """
    Whether C{Connection} and the version leave the connection open.
    """
    tokens = _connectionTokens(headers)
    if version == _HTTP11:
        return b"close" not in tokens
    return b"keep-alive" in tokens and b"close" not in tokens


# Compiled with mypyc, an attrs class must stay a Python class (mypyc's own
# attrs classes lose the generated __eq__, __repr__ and frozenness).
@mypyc_attr(native_class=False)
@attr.s(frozen=True, slots=True, auto_attribs=True)
class RequestHead:
    """
    A parsed (or built) HTTP/1.x request head.

    @ivar method: the method, case preserved (methods are case-sensitive).
    @ivar target: the request-target exactly as received.
    @ivar version: C{b"HTTP/1.1"} or C{b"HTTP/1.0"}.
    @ivar headers: the header fields in order, names as received, values
        without surrounding whitespace.
    """

    method: bytes
    target: bytes
    version: bytes
    headers: Headers = attr.ib(default=(), converter=_tupleOfPairs)

    def get(self, name: bytes) -> Optional[bytes]:
        """
        The value of the first header called C{name}.

        @param name: a header name, compared case-insensitively.
        @return: the value, or L{None} when there is no such header.
        """
        return _get(self.headers, name)

    def getAll(self, name: bytes) -> List[bytes]:
        """
        Every value of the headers called C{name}, in order.

        @param name: a header name, compared case-insensitively.
        @return: the values (an empty list when there is none).
        """
        return _getAll(self.headers, name)

    @property
    def keepAlive(self) -> bool:
        """
        Whether the client asks to keep the connection open after this
        exchange: HTTP/1.1 unless C{Connection: close}; HTTP/1.0 only with
        C{Connection: keep-alive}.  (C{Proxy-Connection} is ignored.)
        """
        return _keepAlive(self.version, self.headers)

    @property
    def expectsContinue(self) -> bool:
        """
        Whether this is an HTTP/1.1 request with C{Expect: 100-continue}.
        """
        if self.version != _HTTP11:
            return False
        for value in _getAll(self.headers, b"expect"):
            if value.lower() == b"100-continue":
                return True
        return False


# Compiled with mypyc, an attrs class must stay a Python class (mypyc's own
# attrs classes lose the generated __eq__, __repr__ and frozenness).
@mypyc_attr(native_class=False)
@attr.s(frozen=True, slots=True, auto_attribs=True)
class ResponseHead:
    """
    A parsed (or built) HTTP/1.x response head.

    @ivar version: C{b"HTTP/1.1"} or C{b"HTTP/1.0"}.
    @ivar status: the status code, 100-599.
    @ivar reason: the reason phrase (possibly empty).
    @ivar headers: the header fields in order, names as received, values
        without surrounding whitespace.
    """

    version: bytes
    status: int
    reason: bytes
    headers: Headers = attr.ib(default=(), converter=_tupleOfPairs)

    def get(self, name: bytes) -> Optional[bytes]:
        """
        The value of the first header called C{name}.

        @param name: a header name, compared case-insensitively.
        @return: the value, or L{None} when there is no such header.
        """
        return _get(self.headers, name)

    def getAll(self, name: bytes) -> List[bytes]:
        """
        Every value of the headers called C{name}, in order.

        @param name: a header name, compared case-insensitively.
        @return: the values (an empty list when there is none).
        """
        return _getAll(self.headers, name)

    @property
    def keepAlive(self) -> bool:
        """
        Whether the server lets the connection stay open after this
        response (as far as the headers go; a close-delimited body also
        ends the connection): HTTP/1.1 unless C{Connection: close};
        HTTP/1.0 only with C{Connection: keep-alive}.
        """
        return _keepAlive(self.version, self.headers)


def findHeadEnd(buffer: bytes, start: int = 0) -> int:
    """
    Find the end of the message head that begins at C{start}.

    Empty lines (CRLF) at C{start} are skipped (RFC 9112 section 2.2).  The
    head ends with the first CRLFCRLF after them.  If a bare-LF blank line
    (C{LF LF}) comes first, its end is returned instead, so that the parser
    rejects the head at once rather than the caller waiting for more.  (So
    the answer never depends on how many bytes past the head have arrived,
    and L{HeadReader} agrees with this function however input is split.)

    This rescans from C{start} on every call; to feed a head in pieces
    without rescanning use L{HeadReader}.

    @param buffer: received bytes.
    @param start: where the head begins (for example just past the
        previous message in a pipelined buffer).
    @return: the index just past the head's final blank line, or C{-1} if
        the head is not complete yet.
    """
    while buffer.startswith(b"\r\n", start):
        start += 2
    end = buffer.find(b"\r\n\r\n", start)
    if end < 0:
        bare = buffer.find(b"\n\n", start)
        return -1 if bare < 0 else bare + 2
    bare = buffer.find(b"\n\n", start, end + 1)
    if bare >= 0:
        return bare + 2
    return end + 4


class HeadReader:
    """
    Collects a message head fed in pieces, without rescanning or copying
    what it has already seen, and enforces a size limit.

    Feed it bytes with L{feed} until it returns the complete head (to give
    to L{parseRequestHead} or L{parseResponseHead}); the bytes received
    past the head are then in L{leftover}.  A reader is used for one head;
    make a new one (or call L{reset}) for the next.

    @ivar maxSize: the largest head accepted, in bytes (leading empty
        lines included).
    @ivar leftover: after L{feed} returned a head, the bytes that followed
        it.
    """

    def __init__(self, maxSize: int = DEFAULT_MAX_HEAD_SIZE, tooLargeStatus: int = 431) -> None:
        """
        @param maxSize: the largest head accepted, in bytes.
        @param tooLargeStatus: the status of the L{HTTPError} raised when the
            head grows past C{maxSize}: C{431} for requests, C{502} for
            responses.
        """
        self.maxSize = maxSize
        self._tooLargeStatus = tooLargeStatus
        self.reset()

    def reset(self) -> None:
        """
        Forget everything and wait for a new head.
        """
        self._chunks: List[bytes] = []
        self._size = 0
        self._tail = b""
        self._pendingCR = False
        self.leftover = b""

    @property
    def bufferedSize(self) -> int:
        """
        How many bytes of an incomplete head are held.
        """
        return self._size

    def _tooLarge(self) -> HTTPError:
        if self._tooLargeStatus == 431:
            return HTTPError(431, "Request header fields too large")
        return HTTPError(self._tooLargeStatus, "Message head too large")

    def feed(self, data: bytes) -> Optional[bytes]:
        """
        Add received bytes.

        @param data: the next bytes of the stream.
        @return: the complete head (leading empty lines removed, final
            CRLFCRLF or bare-LF blank line included), or L{None} if more
            bytes are needed.
        @raise HTTPError: if the head grows larger than L{maxSize}.
        """
        if not self._chunks:
            # Skip empty lines before the head (RFC 9112 section 2.2).
            if self._pendingCR:
                data = b"\r" + data
                self._pendingCR = False
                self._size -= 1
            skip = 0
            while data.startswith(b"\r\n", skip):
                skip += 2
            if skip:
                self._size += skip
                data = data[skip:]
            if data == b"\r":
                self._pendingCR = True
                self._size += 1
            if self._size > self.maxSize:
                raise self._tooLarge()
            if not data or self._pendingCR:
                return None
        tail = self._tail
        window = tail + data if tail else data
        end = window.find(b"\r\n\r\n")
        # As in findHeadEnd, a bare-LF blank line that comes first ends the
        # head, so that the parser rejects it at once.
        bare = window.find(b"\n\n", 0, len(window) if end < 0 else end + 1)
        if bare >= 0:
            end = bare + 2
        elif end >= 0:
            end += 4
        if end < 0:
            self._chunks.append(data)
            self._size += len(data)
            if self._size > self.maxSize:
                raise self._tooLarge()
            self._tail = window[-3:]
            return None
        cut = end - len(tail)
        size = self._size + cut
        if size > self.maxSize:
            raise self._tooLarge()
        if cut == len(data):
            piece, leftover = data, b""
        else:
            piece, leftover = data[:cut], data[cut:]
        chunks = self._chunks
        head = b"".join(chunks + [piece]) if chunks else piece
        self.reset()
        self.leftover = leftover
        return head


#: Whether request lines and header lines are read by L{_scanRequestLine}
#: and L{_scanHeaders} rather than the regular expressions: on PyPy (see
#: L{_scanHeaders}).
_SCAN_HEADERS = platform.python_implementation() == "PyPy"


def _parseHeaders(data: bytes, start: int, status: int, maxHeaders: int) -> Headers:
    """
    Parse and validate the header lines between C{start} and the final CRLF.
    """
    end = len(data) - 2
    # (end < 2: data[end - 2:end] would be empty; mypyc's bytes slice fails
    # when the end falls before the start.)
    if data[-2:] != b"\r\n" or (end != start and (end < 2 or data[end - 2 : end] != b"\r\n")):
        raise HTTPError(status, "Message head must end with CRLFCRLF")
    if _SCAN_HEADERS:
        scanned = _scanHeaders(data, start, end)
        if scanned is None:
            raise _badHeaders(data, start, end, status)
        headers: Any = scanned
    else:
        headers = _HEADER_LINE.findall(data, start, end)
        if len(headers) != data.count(b"\n", start, end):
            raise _badHeaders(data, start, end, status)
    if len(headers) > maxHeaders:
        if status == 400:
            raise HTTPError(431, "Too many header fields")
        raise HTTPError(status, "Too many header fields")
    return tuple(headers)


def parseRequestHead(data: bytes, maxHeaders: int = DEFAULT_MAX_HEADERS) -> RequestHead:
    """
    Parse a complete request head, strictly (see the module docstring for
    the rules).

    @param data: the head, from the request line (optionally preceded by
        empty lines) through the final CRLFCRLF, as returned by
        L{HeadReader.feed} or cut at L{findHeadEnd}.
    @param maxHeaders: the most header fields accepted.
    @return: the parsed head.
    @raise HTTPError: C{400} for a malformed request line, header section,
        request target or C{Host}; C{505} for an HTTP version other than
        1.0 and 1.1; C{431} for too many header fields.
    """
    start = 0
    if data[:1] == b"\r":
        while data.startswith(b"\r\n", start):
            start += 2
    if _SCAN_HEADERS:
        line = _scanRequestLine(data, start)
        if line is None:
            raise _badRequestLine(data, start)
        method, target, version, end = line
    else:
        match = _REQUEST_LINE.match(data, start)
        if match is None:
            raise _badRequestLine(data, start)
        method, target, version = match.groups()
        end = match.end()
    if version not in _VERSIONS:
        raise HTTPError(505, "HTTP version not supported")
    if end == len(data):
        raise HTTPError(400, "Message head must end with CRLFCRLF")
    headers = _parseHeaders(data, end, 400, maxHeaders)

    first = target[:1]
    if first != b"/":
        if method == b"CONNECT":
            parseAuthority(target)
        elif target == b"*":
            if method != b"OPTIONS":
                raise HTTPError(400, "Asterisk-form target is only for OPTIONS")
        elif not _ABSOLUTE_FORM.match(target):
            raise HTTPError(400, "Invalid request target")
    elif method == b"CONNECT":
        raise HTTPError(400, "CONNECT needs an authority-form target")

    host = None
    for name, value in headers:
        if len(name) == 4 and name.lower() == b"host":
            if host is not None:
                raise HTTPError(400, "More than one Host header")
            host = value
    if host is None:
        if version == _HTTP11:
            raise HTTPError(400, "Missing Host header")
    elif host:
        _checkHostValue(host)
    return RequestHead(method, target, version, headers)


#: Status lines found valid (each through its CRLF: the version, code and
#: reason), at most L{_KNOWN_LINES} of them: an origin answers with a
#: handful, and a dictionary lookup is cheaper than the match, much
#: cheaper on PyPy, where the match allocates about 2.5 KB.  Only a line
#: the expression accepted is ever kept, whole, so a line found here is
#: one the expression accepts, with the same groups.
_STATUS_LINES: Dict[bytes, Tuple[bytes, int, bytes]] = {}
_KNOWN_LINES = 64


def parseResponseHead(data: bytes, maxHeaders: int = DEFAULT_MAX_HEADERS) -> ResponseHead:
    """
    Parse a complete response head from an upstream server, strictly (see
    the module docstring for the rules).

    @param data: the head, from the status line through the final
        CRLFCRLF.
    @param maxHeaders: the most header fields accepted.
    @return: the parsed head.
    @raise HTTPError: C{502} for anything malformed or unsupported (the
        proxy answers its client with C{502 Bad Gateway}).
    """
    end = data.find(b"\r\n") + 2
    known = _STATUS_LINES.get(data[:end]) if end > 1 else None
    if known is None:
        match = _STATUS_LINE.match(data)
        if match is None:
            raise HTTPError(502, "Malformed status line from upstream")
        version, status, reason = match.groups()
        if version not in _VERSIONS:
            raise HTTPError(502, "Unsupported HTTP version from upstream")
        code = int(status)
        if code < 100 or code > 599:
            raise HTTPError(502, "Invalid status code from upstream")
        end = match.end()
        known = (version, code, reason or b"")
        if len(_STATUS_LINES) >= _KNOWN_LINES:
            _STATUS_LINES.clear()
        _STATUS_LINES[data[:end]] = known
    if end == len(data):
        raise HTTPError(502, "Message head must end with CRLFCRLF")
    headers = _parseHeaders(data, end, 502, maxHeaders)
    return ResponseHead(known[0], known[1], known[2], headers)


def _serializeHeaders(headers: Headers) -> bytes:
    """
    One C{name: value CRLF} line per header.
    """
    return b"".join([name + b": " + value + b"\r\n" for name, value in headers])


def _checkSerialized(data: bytes, headers: Headers, what: str) -> None:
    """
    Check the header part of a serialized head (its first line has been
    checked already): no control characters but the expected CRLFs (so no
    line break was injected through a value), and every name a token.
    """
    if data.translate(None, _LINE_OK) != _CRLF * (len(headers) + 2):
        raise ValueError(f"{what} has a control character or line break in a field")
    if headers:
        # Names joined by a space: one space fewer than names means no
        # name holds a space, and the pattern makes each a non-empty token.
        names = b" ".join([pair[0] for pair in headers])
        if names.count(b" ") != len(headers) - 1 or not _TOKEN_LIST.fullmatch(names):
            raise ValueError(f"{what} has an invalid header name")


def serializeRequestHead(head: RequestHead, validate: bool = True) -> bytes:
    """
    Serialize a request head as C{method SP target SP version CRLF}, one
    C{name: value CRLF} line per header, and a final CRLF.

    @param head: the head to write.
    @param validate: check that the result is a well-formed head, so a
        hook cannot inject a line break or an invalid name; turn off only
        for heads known to be valid.
    @return: the bytes to send.
    @raise ValueError: if C{validate} and the head cannot be written as a
        valid HTTP/1.1 head.
    """
    line = head.method + b" " + head.target + b" " + head.version + b"\r\n"
    data = line + _serializeHeaders(head.headers) + b"\r\n"
    if validate:
        match = _REQUEST_LINE.match(data)
        if match is None or match.end() != len(line):
            raise ValueError("Request head has an invalid request line")
        _checkSerialized(data, head.headers, "Request head")
    return data


def serializeResponseHead(head: ResponseHead, validate: bool = True) -> bytes:
    """
    Serialize a response head as C{version SP status SP reason CRLF}, one
    C{name: value CRLF} line per header, and a final CRLF.

    @param head: the head to write.
    @param validate: check that the result is a well-formed head, so a
        hook cannot inject a line break or an invalid name.
    @return: the bytes to send.
    @raise ValueError: if C{validate} and the head cannot be written as a
        valid HTTP/1.1 head.
    """
    line = b"%s %d %s\r\n" % (head.version, head.status, head.reason)
    data = line + _serializeHeaders(head.headers) + b"\r\n"
    if validate:
        match = _STATUS_LINE.match(data)
        if match is None or match.end() != len(line) or not 100 <= head.status <= 599:
            raise ValueError("Response head has an invalid status line")
        _checkSerialized(data, head.headers, "Response head")
    return data
