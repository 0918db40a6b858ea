# -*- test-case-name: tests.test_h2_translate -*-
"""
Sans-IO translation between HTTP/2 streams (RFC 9113) and HTTP/1.1
messages (RFC 9112), for the shims that run txproxy's HTTP/1.1 core over
HTTP/2.  No Twisted here: header lists and bytes in, bytes, values, events
or L{StreamError} out.  Header lists are C{(bytes, bytes)} pairs, as
C{h2.connection.H2Connection} gives them with C{header_encoding=None}.

Downstream (an HTTP/2 client, the HTTP/1.1 core as its server):

  - L{requestFromH2}: a stream's request header list, validated (RFC 9113
    sections 8.1.1, 8.2, 8.3), becomes an HTTP/1.1 request head
    (L{H1Request}).  C{:method} and C{:path} make the request line
    (origin-form, or absolute-form C{scheme://authority/path} for a
    forward proxy; C{CONNECT authority} for a tunnel, section 8.5);
    C{:authority} (else C{Host}) becomes the first field, C{Host}
    (section 8.3.1); C{cookie} fields are joined with C{"; "} (section
    8.2.3).  A body whose length the headers do not give is chunk-encoded
    by the caller with L{chunk} and ended with L{lastChunk}, which also
    carries the HTTP/2 trailers.
  - L{MessageReader}C{(isResponse=True)} turns the HTTP/1.1 response bytes
    the core writes into events (L{Head}, L{Data}, L{Trailers}, L{End})
    whose headers are the HTTP/2 form (L{h2ResponseHeaders}).

Upstream (the core as an HTTP/1.1 client, an HTTP/2 origin):

  - L{MessageReader}C{(isResponse=False)} turns the request bytes the core
    writes into events (L{h2RequestHeaders} form).
  - L{responseFromH2}: the origin's response header list, validated,
    becomes an HTTP/1.1 response head; a body of unknown length is
    chunk-encoded (L{chunk}, L{lastChunk} with the trailers).

Validation is ours, not left to the C{h2} library, so that C{h2} 4.3 (on
Python 3.9) and 4.4 refuse the same messages: among others the checks 4.4
added, conflicting C{content-length} values and a repeated C{Host}.  A
malformed message raises L{StreamError} (reset the stream, forward
nothing) with a precise reason.  Anything accepted translates to a head
that L{txproxy.http.parseRequestHead} or
L{txproxy.http.parseResponseHead} accepts.
"""

from __future__ import annotations

from typing import Iterable, List, Optional, Sequence, Tuple

from txproxy.http import (
    HTTPError,
    parseAuthority,
    parseHostHeader,
    serializeTrustedHead,
    statusPhrase,
)

from ._fields import (
    CONNECTION_SPECIFIC,
    INTERNAL_ERROR,
    PROTOCOL_ERROR,
    TARGET_OK,
    TCHAR,
    TCHAR_LOWER,
    VALUE_OK,
    Header,
    HeaderList,
    StreamError,
    checkField,
    checkScheme,
    fieldError,
    h2RequestHeaders,
    h2ResponseFields,
    h2ResponseHeaders,
    h2Trailers,
    headerListSize,
)
from ._reader import Data, End, Event, Head, MessageReader, Trailers

__all__ = [
    "INTERNAL_ERROR",
    "PROTOCOL_ERROR",
    "Data",
    "End",
    "Event",
    "H1Request",
    "Head",
    "Header",
    "HeaderList",
    "MessageReader",
    "StreamError",
    "Trailers",
    "chunk",
    "h2RequestHeaders",
    "h2ResponseFields",
    "h2ResponseHeaders",
    "h2Trailers",
    "headerListSize",
    "lastChunk",
    "requestFromH2",
    "responseFromH2",
]

_MAX_CONTENT_LENGTH_DIGITS = 18

_METHOD = 0
_SCHEME = 1
_AUTHORITY = 2
_PATH = 3
_REQUEST_PSEUDO = {
    b":method": _METHOD,
    b":scheme": _SCHEME,
    b":authority": _AUTHORITY,
    b":path": _PATH,
}
_PSEUDO_NAMES = (":method", ":scheme", ":authority", ":path")

# What a regular field needs beyond checkField.
_FORBIDDEN = 0
_TE = 1
_HOST = 2
_COOKIE = 3
_LENGTH = 4
_SPECIAL = dict.fromkeys(CONNECTION_SPECIFIC, _FORBIDDEN)
_SPECIAL.update({b"te": _TE, b"host": _HOST, b"cookie": _COOKIE, b"content-length": _LENGTH})


class H1Request:
    """
    An HTTP/2 request translated to HTTP/1.1.

    @ivar head: the HTTP/1.1 request head, ending with C{b"\\r\\n\\n"}
        (serialized when first asked for: a protocol that takes the head
        as a value never needs it).
    @ivar method: the method.
    @ivar authority: C{:authority}, else the C{Host} field, else C{b""}.
    @ivar contentLength: the C{content-length} value, L{None} without one.
    @ivar chunked: whether the body that follows must be chunk-encoded by
        the caller (L{chunk}, then L{lastChunk}): no C{content-length} and
        the stream did not end with the headers.
    @ivar connect: whether this is a C{CONNECT} request (RFC 9113 section
        8.5): after a 2xx answer the stream is a tunnel.
    @ivar target: the request target of C{head}.
    @ivar fields: the header fields of C{head} (for a caller that takes
        them as values rather than parsing C{head} again).
    @ivar trailers: whether the request said C{te: trailers}.

    Two are equal when their head, method, authority, length, framing and
    C{CONNECT}-ness are.
    """

    __slots__ = ("_head", "method", "authority", "contentLength", "chunked", "connect", "target", "fields", "trailers")

    def __init__(
        self,
        head: Optional[bytes],
        method: bytes,
        authority: bytes,
        contentLength: Optional[int],
        chunked: bool,
        connect: bool,
        target: bytes = b"",
        fields: Optional[HeaderList] = None,
        trailers: bool = False,
    ) -> None:
        self._head = head
        self.method = method
        self.authority = authority
        self.contentLength = contentLength
        self.chunked = chunked
        self.connect = connect
        self.target = target
        self.fields: HeaderList = [] if fields is None else fields
        self.trailers = trailers

    @property
    def head(self) -> bytes:
        head = self._head
        if head is None:
            head = self._head = serializeTrustedHead(self.method + b" " + self.target + b" HTTP/1.1\r\n", self.fields)
        return head

    def _key(self) -> Tuple[object, ...]:
        return (self.head, self.method, self.authority, self.contentLength, self.chunked, self.connect)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, H1Request):
            return NotImplemented
        return self._key() == other._key()

    def __ne__(self, other: object) -> bool:
        result = self.__eq__(other)
        return result if result is NotImplemented else not result

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"H1Request(head={self.head!r}, method={self.method!r}, authority={self.authority!r},"
            f" contentLength={self.contentLength!r}, chunked={self.chunked!r}, connect={self.connect!r})"
        )


def _checkLength(value: bytes, first: Optional[bytes]) -> bytes:
    """
    Check one C{content-length} value against the first one seen.

    @return: the value to remember (the first).
    @raise StreamError: for a value other than digits, a huge one, or one
        that differs from C{first}.
    """
    if first is None:
        if not value.isdigit():
            raise StreamError("Invalid content-length")
        if len(value.lstrip(b"0")) > _MAX_CONTENT_LENGTH_DIGITS:
            raise StreamError("content-length too large")
        return value
    if value != first:
        # Byte for byte, as txproxy.http does ("5" and "05" disagree).
        raise StreamError("Conflicting content-length values")
    return first


def _checkHost(value: bytes, what: str, connect: bool) -> None:
    """
    Check an authority: C{host[:port]}, or C{host:port} for C{CONNECT}.
    """
    if b"@" in value:
        raise StreamError(f"{what} must not include userinfo")
    try:
        if connect:
            parseAuthority(value)
        else:
            parseHostHeader(value)
    except HTTPError as e:
        raise StreamError(f"Invalid {what}: {e.reason}") from None


def requestFromH2(
    headers: Iterable[Sequence[bytes]], endStream: bool, absoluteForm: bool, checked: Optional[bytes] = None
) -> H1Request:
    """
    Validate an HTTP/2 request header list and translate it to HTTP/1.1.

    Malformed (RFC 9113 section 8.1.1), and so a L{StreamError}: a field
    name that is not a lower-case token, a value with NUL, CR, LF (or
    another control character but HTAB) or surrounding whitespace (8.2.1);
    a connection-specific field, C{te} other than C{trailers} (8.2.2); an
    unknown, repeated, misplaced or response pseudo-header field, a missing
    C{:method}, C{:scheme} or C{:path}, an empty or invalid C{:path}
    (C{*} only for C{OPTIONS}), C{:scheme} or C{:path} on C{CONNECT},
    C{CONNECT} without C{:authority} (8.3, 8.5); userinfo or an invalid
    host in C{:authority} or C{Host}, more than one C{Host}, a C{Host} that
    differs from C{:authority} (8.3.1); invalid or conflicting
    C{content-length} values, or a non-zero one on a stream that ended
    with its headers (8.1.1), or one on C{CONNECT}.

    @param headers: the request header list.
    @param endStream: whether the HEADERS frame ended the stream.
    @param absoluteForm: write the target as C{scheme://authority/path}
        (for a forward proxy) instead of origin-form.
    @param checked: an authority known to pass the host checks (the
        C{authority} of an earlier request on the connection that was not
        C{CONNECT}): a request repeating it is not checked again.
    @return: the translation.
    @raise StreamError: for a malformed request.
    """
    pseudo: List[Optional[bytes]] = [None, None, None, None]
    # The Host field goes first; its value is known at the end.
    fields: HeaderList = [(b"Host", b"")]
    host: Optional[bytes] = None
    cookies: Optional[List[bytes]] = None
    cookieAt = 0
    length: Optional[bytes] = None
    regular = False
    trailers = False
    for name, value in headers:
        if name[:1] == b":":
            if regular:
                raise StreamError("Pseudo-header field after a regular field")
            index = _REQUEST_PSEUDO.get(name)
            if index is None:
                if name == b":status":
                    raise StreamError("Response pseudo-header field :status in a request")
                raise StreamError("Unknown pseudo-header field")
            if pseudo[index] is not None:
                raise StreamError(f"Repeated {_PSEUDO_NAMES[index]}")
            pseudo[index] = value
            continue
        regular = True
        if (
            not name
            or name.translate(None, TCHAR_LOWER)
            or value.translate(None, VALUE_OK)
            or value.strip(b" \t") != value
        ):
            raise fieldError(name, value)
        kind = _SPECIAL.get(name)
        if kind is None:
            fields.append((name, value))
        elif kind == _COOKIE:
            if cookies is None:
                cookies = []
                cookieAt = len(fields)
                fields.append((name, value))
            if value:
                cookies.append(value)
        elif kind == _LENGTH:
            if length is None:
                fields.append((name, value))
            length = _checkLength(value, length)
        elif kind == _HOST:
            if host is not None:
                raise StreamError("More than one Host field")
            host = value
        elif kind == _TE:
            if value.lower() != b"trailers":
                raise StreamError("te field other than trailers")
            fields.append((name, value))
            trailers = True
        else:
            raise StreamError(f"Connection-specific field {name.decode('ascii')}")

    method, scheme, authority, path = pseudo
    if method is None:
        raise StreamError("Missing :method")
    if not method or method.translate(None, TCHAR):
        raise StreamError("Invalid :method")
    connect = method == b"CONNECT"
    if connect:
        if scheme is not None:
            raise StreamError("CONNECT with :scheme")
        if path is not None:
            raise StreamError("CONNECT with :path")
        if authority is None:
            raise StreamError("CONNECT without :authority")
        _checkHost(authority, ":authority", True)
        if length is not None:
            raise StreamError("content-length in a CONNECT request")
        target = hostValue = authority
    else:
        if scheme is None:
            raise StreamError("Missing :scheme")
        checkScheme(scheme)
        if path is None:
            raise StreamError("Missing :path")
        if path[:1] != b"/":
            if not path:
                raise StreamError("Empty :path")
            if path != b"*":
                raise StreamError("Invalid :path")
            if method != b"OPTIONS":
                raise StreamError(":path * is only for OPTIONS")
        if path.translate(None, TARGET_OK):
            raise StreamError("Invalid :path")
        if authority is not None:
            if not authority:
                raise StreamError("Empty :authority")
            if authority != checked:
                _checkHost(authority, ":authority", False)
            hostValue = authority
        elif host:
            if host != checked:
                _checkHost(host, "Host", False)
            hostValue = host
        else:
            hostValue = b""
        if absoluteForm:
            if not hostValue:
                raise StreamError("No :authority or Host for an absolute-form target")
            target = scheme + b"://" + hostValue + (b"" if path == b"*" else path)
        else:
            target = path
    if host is not None and authority is not None and host.lower() != authority.lower():
        raise StreamError("Host differs from :authority")
    contentLength = None if length is None else int(length)
    if endStream and contentLength:
        raise StreamError("Non-zero content-length on a request without DATA")
    chunked = not (endStream or connect or length is not None)
    fields[0] = (b"Host", hostValue)
    if cookies is not None:
        if cookies:
            fields[cookieAt] = (b"cookie", b"; ".join(cookies))
        else:
            del fields[cookieAt]
    if chunked:
        fields.append((b"Transfer-Encoding", b"chunked"))
    return H1Request(None, method, hostValue, contentLength, chunked, connect, target, fields, trailers)


def responseFromH2(
    headers: Iterable[Sequence[bytes]], requestMethod: bytes, endStream: bool
) -> Tuple[bytes, bool]:
    """
    Validate an HTTP/2 response header list and translate it to an HTTP/1.1
    response head.

    Malformed, and so a L{StreamError}: a missing, repeated, misplaced or
    non-3-digit C{:status} (or one outside 100-599, or C{101}, which
    HTTP/2 does not have: RFC 9113 section 8.6), any other pseudo-header
    field, the field rules of L{requestFromH2}, invalid or conflicting
    C{content-length} values, a non-zero one on a stream that ended with
    its headers where the response has a body, and an interim response
    that ends the stream.

    Framing of the HTTP/1.1 head: a response without a body (to C{HEAD},
    C{204}, C{304}) keeps its C{content-length}; a 2xx answer to
    C{CONNECT} gets no framing fields (the caller relays the tunnel's
    bytes as they come); otherwise a C{content-length} is kept, a stream
    that ended with the headers gets C{Content-Length: 0}, and anything
    else C{Transfer-Encoding: chunked}.

    @param headers: the response header list.
    @param requestMethod: the method of the request it answers.
    @param endStream: whether the HEADERS frame ended the stream.
    @return: the head, and whether the caller must chunk-encode the DATA
        (L{chunk}) and end it with L{lastChunk}.
    @raise StreamError: (PROTOCOL_ERROR) for a malformed response.
    """
    status: Optional[bytes] = None
    fields: HeaderList = []
    length: Optional[bytes] = None
    regular = False
    for name, value in headers:
        if name[:1] == b":":
            if regular:
                raise StreamError("Pseudo-header field after a regular field")
            if name != b":status":
                if name in _REQUEST_PSEUDO:
                    raise StreamError("Request pseudo-header field in a response")
                raise StreamError("Unknown pseudo-header field")
            if status is not None:
                raise StreamError("Repeated :status")
            status = value
            continue
        regular = True
        checkField(name, value)
        kind = _SPECIAL.get(name)
        if kind is None or kind == _HOST or kind == _COOKIE:
            fields.append((name, value))
        elif kind == _LENGTH:
            if length is None:
                fields.append((name, value))
            length = _checkLength(value, length)
        elif kind == _TE:
            if value.lower() != b"trailers":
                raise StreamError("te field other than trailers")
            fields.append((name, value))
        else:
            raise StreamError(f"Connection-specific field {name.decode('ascii')}")
    if status is None:
        raise StreamError("Missing :status")
    if len(status) != 3 or not status.isdigit() or not b"100" <= status <= b"599":
        raise StreamError("Invalid :status")
    code = int(status)
    line = b"HTTP/1.1 " + status + b" " + statusPhrase(code) + b"\r\n"
    chunked = False
    if code < 200:
        if code == 101:
            raise StreamError("101 Switching Protocols in HTTP/2")
        if endStream:
            raise StreamError("Interim response ends the stream")
    elif requestMethod == b"CONNECT" and code < 300:
        if length is not None:
            fields = [pair for pair in fields if pair[0] != b"content-length"]
    elif requestMethod != b"HEAD" and code != 204 and code != 304:
        if length is not None:
            if endStream and int(length):
                raise StreamError("Non-zero content-length on a response without DATA")
        elif endStream:
            fields.append((b"Content-Length", b"0"))
        else:
            fields.append((b"Transfer-Encoding", b"chunked"))
            chunked = True
    return serializeTrustedHead(line, fields), chunked


def chunk(data: bytes) -> bytes:
    """
    One HTTP/1.1 chunk (RFC 9112 section 7.1) holding C{data}.

    @param data: a piece of the body.
    @return: the chunk, or C{b""} for empty C{data} (the zero-size chunk
        ends the body: that is L{lastChunk}'s).
    """
    if not data:
        return b""
    return b"%x\r\n" % (len(data),) + data + b"\r\n"


def lastChunk(trailers: Optional[Iterable[Sequence[bytes]]] = None) -> bytes:
    """
    The end of a chunked body: the zero-size chunk, the trailer section and
    the final CRLF.

    @param trailers: the HTTP/2 trailer fields, or L{None}.  They follow
        the rules of regular fields (RFC 9113 sections 8.1, 8.2): no
        pseudo-header field, no connection-specific field.
    @return: the bytes to write.
    @raise StreamError: for an invalid trailer field.
    """
    if not trailers:
        return b"0\r\n\r\n"
    lines = [b"0\r\n"]
    for name, value in trailers:
        if name[:1] == b":":
            raise StreamError("Pseudo-header field in trailers")
        checkField(name, value)
        if name in CONNECTION_SPECIFIC:
            raise StreamError(f"Connection-specific field {name.decode('ascii')}")
        if name == b"te" and value.lower() != b"trailers":
            raise StreamError("te field other than trailers")
        lines.append(name + b": " + value + b"\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)
