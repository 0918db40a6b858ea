# -*- test-case-name: tests.test_h2_translate -*-
"""
HTTP/2 field rules shared by both directions of L{txproxy.h2._translate}:
the stream error, the byte tables of RFC 9113 section 8.2, the check of one
received field, and the HTTP/1.1 to HTTP/2 header lists (request, response,
trailers).

HTTP/1.1 to HTTP/2 (RFC 9113 sections 8.2.2, 8.3.1):

  - names are lower-cased (HTTP/2 forbids upper case);
  - the connection-specific fields (L{CONNECTION_SPECIFIC}) and every field
    that C{Connection} names are dropped; C{TE} survives as C{te: trailers}
    when it lists C{trailers}, and is dropped otherwise;
  - C{Host} becomes C{:authority} (an absolute-form target's authority
    wins, as RFC 9112 section 3.2.2 has a proxy ignore C{Host} then), with
    any userinfo removed;
  - C{Content-Length} is kept (HTTP/2 uses it as a check on the DATA).

Values parsed by L{txproxy.http} are already valid HTTP/2 values: no CR,
LF or NUL, no surrounding whitespace.
"""

from __future__ import annotations

import re
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from txproxy.http import RequestHead, ResponseHead

Header = Tuple[bytes, bytes]
HeaderList = List[Header]

#: RST_STREAM error codes (RFC 9113 section 7).
PROTOCOL_ERROR = 1
INTERNAL_ERROR = 2


class StreamError(Exception):
    """
    A stream-level error (RFC 9113 section 5.4.2): reset the stream with
    C{code}, never forward the message.

    @ivar reason: a short plain-text explanation, safe to log or send (it
        never quotes the offending bytes).
    @ivar code: the RST_STREAM error code: C{1} (PROTOCOL_ERROR) for a
        malformed message from the peer, C{2} (INTERNAL_ERROR) for bytes the
        proxy or an HTTP/1.1 upstream produced that cannot be translated.
    """

    def __init__(self, reason: str, code: int = PROTOCOL_ERROR) -> None:
        """
        @param reason: the explanation.
        @param code: the RST_STREAM error code.
        """
        super().__init__(reason, code)
        self.reason = reason
        self.code = code

    def __str__(self) -> str:
        return self.reason

    def __repr__(self) -> str:
        return f"StreamError({self.reason!r}, {self.code!r})"


def headerListSize(headers: Iterable[Sequence[bytes]]) -> int:
    """
    The size of a header list as C{SETTINGS_MAX_HEADER_LIST_SIZE} counts it
    (RFC 9113 section 6.5.2): name and value lengths plus 32 per field.

    @param headers: C{(name, value)} pairs.
    """
    return sum([len(name) + len(value) + 32 for name, value in headers])


#: Field-name bytes HTTP/2 accepts and HTTP/1.1 can carry: lower-case
#: tchar (RFC 9110 section 5.6.2, RFC 9113 section 8.2.1).
TCHAR_LOWER = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"
TCHAR = TCHAR_LOWER + b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"
#: Field-value bytes HTTP/1.1 can carry (HTAB, SP, VCHAR, obs-text).
#: RFC 9113 section 8.2.1 only forbids NUL, CR and LF; the other control
#: characters would make the translated HTTP/1.1 head invalid, so they are
#: refused too.
VALUE_OK = bytes([9]) + bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100))
#: Request-target bytes (printable ASCII, no space).
TARGET_OK = bytes(range(0x21, 0x7F))

#: Fields HTTP/2 forbids (RFC 9113 section 8.2.2); C{te} is allowed with
#: the value C{trailers} only.
CONNECTION_SPECIFIC = frozenset(
    [b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"]
)

_SCHEME = re.compile(rb"[A-Za-z][A-Za-z0-9+.\-]*")
_ABSOLUTE = re.compile(rb"([A-Za-z][A-Za-z0-9+.\-]*)://([^/?#]*)([^#]*)")


def fieldError(name: bytes, value: bytes) -> StreamError:
    """
    Explain why a regular field breaks RFC 9113 section 8.2.1 (or cannot be
    carried by HTTP/1.1).  Called once the fast check has failed.
    """
    if not name:
        return StreamError("Empty field name")
    if name.translate(None, TCHAR_LOWER):
        if not name.lower().translate(None, TCHAR_LOWER):
            return StreamError("Uppercase field name")
        return StreamError("Invalid field name")
    bad = value.translate(None, VALUE_OK)
    if bad:
        if b"\x00" in bad or b"\r" in bad or b"\n" in bad:
            return StreamError("NUL, CR or LF in field value")
        return StreamError("Control character in field value")
    return StreamError("Whitespace around field value")


def checkField(name: bytes, value: bytes) -> None:
    """
    Check one regular field (RFC 9113 section 8.2.1): a non-empty lower-case
    token for a name; a value without control characters (HTAB aside) and
    without leading or trailing whitespace.

    @raise StreamError: if it breaks a rule.
    """
    if (
        not name
        or name.translate(None, TCHAR_LOWER)
        or value.translate(None, VALUE_OK)
        or value.strip(b" \t") != value
    ):
        raise fieldError(name, value)


def checkScheme(scheme: bytes) -> None:
    """
    Check a C{:scheme} value (RFC 3986 section 3.1).

    @raise StreamError: if it is not a scheme.
    """
    if scheme != b"https" and scheme != b"http" and not _SCHEME.fullmatch(scheme):
        raise StreamError("Invalid :scheme")


_DROP = 0
_TE = 1
_CONNECTION = 2

_REQUEST_SPECIAL: Dict[bytes, int] = dict.fromkeys(CONNECTION_SPECIFIC, _DROP)
_REQUEST_SPECIAL[b"connection"] = _CONNECTION
_REQUEST_SPECIAL[b"te"] = _TE
_REQUEST_SPECIAL[b"host"] = _DROP
_RESPONSE_SPECIAL = dict(_REQUEST_SPECIAL)
del _RESPONSE_SPECIAL[b"host"]


def _tokens(values: List[bytes]) -> List[bytes]:
    """
    The lower-cased, non-empty elements of comma-separated lists.
    """
    return [t for t in (t.strip(b" \t").lower() for v in values for t in v.split(b",")) if t]


def _convertFields(
    headers: Iterable[Header], special: Dict[bytes, int], out: HeaderList
) -> HeaderList:
    """
    Append the HTTP/2 form of HTTP/1.1 fields to C{out}: names lower-cased,
    C{special} names handled, fields named by C{Connection} removed.
    """
    start = len(out)
    connection: Optional[List[bytes]] = None
    te = False
    for name, value in headers:
        lower = name.lower()
        kind = special.get(lower)
        if kind is None:
            out.append((lower, value))
        elif kind == _CONNECTION:
            if connection is None:
                connection = []
            connection.append(value)
        elif kind == _TE and not te and b"trailers" in _tokens([value]):
            te = True
            out.append((b"te", b"trailers"))
    if connection is not None:
        named = frozenset(_tokens(connection))
        # Like txproxy.http.removeHopByHop: a request keeps its authority.
        out[start:] = [pair for pair in out[start:] if pair[0] not in named or pair[0] == b"te"]
    return out


def _absoluteTarget(method: bytes, target: bytes) -> Tuple[bytes, bytes, bytes]:
    """
    Split an absolute-form target into C{:scheme}, C{:authority} (without
    userinfo) and C{:path} (RFC 9113 section 8.3.1).
    """
    match = _ABSOLUTE.match(target)
    if match is None:
        raise StreamError("Request target is not an absolute URI", INTERNAL_ERROR)
    scheme, authority, path = match.groups()
    at = authority.rfind(b"@")
    if at >= 0:
        authority = authority[at + 1 :]
    if not path:
        path = b"*" if method == b"OPTIONS" else b"/"
    elif path[:1] == b"?":
        path = b"/" + path
    return scheme.lower(), authority, path


def h2RequestHeaders(head: RequestHead, scheme: bytes) -> HeaderList:
    """
    The HTTP/2 header list for an HTTP/1.1 request (see the module
    docstring for the mapping).

    C{CONNECT} gives C{:method} and C{:authority} (the target) only;
    otherwise C{:method}, C{:scheme}, C{:authority} (omitted when there is
    neither an absolute-form authority nor a non-empty C{Host}) and
    C{:path}.  An absolute-form target gives its own scheme, authority and
    path; an asterisk-form target (C{OPTIONS *}) gives C{:path *}.

    @param head: a request head parsed by L{txproxy.http.parseRequestHead}.
    @param scheme: the C{:scheme} of an origin-form request (C{b"http"} for
        C{h2c}, C{b"https"} for C{h2}).
    @return: the header list, pseudo-header fields first.
    @raise StreamError: (INTERNAL_ERROR) for a target that cannot be
        translated.
    """
    method = head.method
    target = head.target
    out: HeaderList
    if method == b"CONNECT":
        out = [(b":method", method), (b":authority", target)]
    else:
        if target[:1] == b"/" or target == b"*":
            authority = head.get(b"host")
            path = target
        else:
            scheme, authority, path = _absoluteTarget(method, target)
        out = [(b":method", method), (b":scheme", scheme)]
        if authority:
            out.append((b":authority", authority))
        out.append((b":path", path))
    return _convertFields(head.headers, _REQUEST_SPECIAL, out)


#: The last response translated: its fields (a tuple, or a copy of a
#: list), status and header list.
_lastResponse: List[Any] = [None, 0, None]


def h2ResponseHeaders(head: ResponseHead) -> HeaderList:
    """
    The HTTP/2 header list for an HTTP/1.1 response: C{:status}, then the
    fields with names lower-cased, without the connection-specific ones and
    those C{Connection} names (C{Content-Length} kept).

    @param head: a parsed response head.
    @return: the header list, as L{h2ResponseFields}.
    """
    return h2ResponseFields(head.status, head.headers)


def h2ResponseFields(status: int, fields: Sequence[Header]) -> HeaderList:
    """
    L{h2ResponseHeaders} of a head given as its status and its valid
    fields (a head's tuple, or the list the proxy made for the client),
    without a L{ResponseHead} made of them.

    @return: the header list.  Fields equal to the previous call's (of the
        same kind, tuple or list), with the same status, get the same
        header list (a backend's responses repeat theirs): callers must
        not change it.
    """
    last = _lastResponse
    if last[1] == status and last[0] == fields:
        return last[2]  # type: ignore[no-any-return]
    out = _convertFields(fields, _RESPONSE_SPECIAL, [(b":status", b"%d" % (status,))])
    last[0], last[1], last[2] = fields if fields.__class__ is tuple else list(fields), status, out
    return out


def h2Trailers(fields: Iterable[Header]) -> HeaderList:
    """
    The HTTP/2 form of the trailer fields of a chunked HTTP/1.1 body: names
    lower-cased, connection-specific ones (and C{te}, C{host}) dropped.

    @param fields: the trailer fields, as L{txproxy.http.ChunkedDecoder}
        collects them.
    @return: the header list.
    """
    out: HeaderList = []
    for name, value in fields:
        lower = name.lower()
        if lower not in _REQUEST_SPECIAL:
            out.append((lower, value))
    return out
