# -*- test-case-name: tests.test_http_parser -*-
"""
Header helpers for proxies, and short plain-text error responses.

Every helper takes and returns headers as a tuple of C{(name, value)}
pairs and compares names case-insensitively.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import FrozenSet, Iterable, List, Optional, Tuple

from ._parser import _NO_TOKENS, Header, Headers, ResponseHead, _connectionTokens, _get, serializeResponseHead

#: Fields a proxy removes before forwarding, whether or not C{Connection}
#: lists them.  RFC 9110 section 7.6.1 names C{Proxy-Connection},
#: C{Keep-Alive}, C{TE}, C{Transfer-Encoding} and C{Upgrade} (besides
#: C{Connection} itself); C{Proxy-Authorization} and C{Proxy-Authenticate}
#: are meant for this proxy (sections 11.7.1 and 11.7.2).  C{Trailer} is
#: not here: RFC 9110 section 6.6.2 makes it an end-to-end field (RFC 2616
#: listed it by mistake), and a chunked body relayed verbatim keeps its
#: trailers.  Pass C{extra=(b"trailer",)} to drop it anyway.
HOP_BY_HOP = frozenset(
    [
        b"connection",
        b"proxy-connection",
        b"keep-alive",
        b"te",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-authenticate",
    ]
)
_HOP_BY_HOP_SIZES = frozenset(len(name) for name in HOP_BY_HOP)
#: Fields that C{Connection} cannot make hop-by-hop: a request forwarded
#: without C{Host} is invalid HTTP/1.1 (RFC 9112 section 3.2), so
#: C{Connection: host} is ignored rather than obeyed.
PROTECTED = frozenset([b"host"])
_HOP_BY_HOP_CLOSE = HOP_BY_HOP | frozenset([b"close"])
_HOP_BY_HOP_CLOSE_SIZES = frozenset(len(name) for name in _HOP_BY_HOP_CLOSE)
#: The lengths of the names L{endToEnd} looks at.
_END_TO_END_SIZES = _HOP_BY_HOP_SIZES | frozenset([len(b"content-length")])

_STATUS_PHRASES = {
    100: b"Continue",
    101: b"Switching Protocols",
    200: b"OK",
    400: b"Bad Request",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    407: b"Proxy Authentication Required",
    408: b"Request Timeout",
    411: b"Length Required",
    413: b"Content Too Large",
    421: b"Misdirected Request",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
}

#: The interim response to an C{Expect: 100-continue} request.
CONTINUE_RESPONSE = b"HTTP/1.1 100 Continue\r\n\r\n"


def statusPhrase(status: int) -> bytes:
    """
    The standard reason phrase of a status code.

    @param status: an HTTP status code.
    @return: its reason phrase (RFC 9110), or C{b"Unknown"}.
    """
    phrase = _STATUS_PHRASES.get(status)
    if phrase is None:
        try:
            phrase = HTTPStatus(status).phrase.encode("ascii")
        except ValueError:
            phrase = b"Unknown"
    return phrase


def connectionTokens(headers: Headers) -> FrozenSet[bytes]:
    """
    The connection options listed by every C{Connection} header.

    @param headers: the headers.
    @return: the options, lower-cased (for example C{b"close"},
        C{b"keep-alive"}, C{b"upgrade"}, or names of hop-by-hop fields).
    """
    return _connectionTokens(headers)


def removeHopByHop(
    headers: Headers, keep: Iterable[bytes] = (), extra: Iterable[bytes] = ()
) -> Headers:
    """
    Remove the hop-by-hop fields: L{HOP_BY_HOP} and every field that
    C{Connection} lists (RFC 9110 section 7.6.1).

    C{Connection} may list C{Content-Length}; the body framing is then
    gone from the result, so always finish with L{applyFraming} when a body
    follows.

    @param headers: the received headers.
    @param keep: lower-case names to keep anyway (for example
        C{b"upgrade"} when relaying an upgrade, C{b"proxy-authorization"}
        when chaining to a proxy that wants it).  C{Connection} itself can
        be kept but is then forwarded as received.
    @param extra: more lower-case names to remove.
    @return: the remaining headers, in order.
    """
    tokens = _connectionTokens(headers)
    if keep or extra or not tokens <= _HOP_BY_HOP_CLOSE:
        remove = (HOP_BY_HOP | tokens | frozenset(extra)) - frozenset(keep) - PROTECTED
        sizes = frozenset(len(name) for name in remove)
    elif b"close" in tokens:
        # The usual cases (Connection: close, keep-alive, upgrade) use
        # precomputed sets.
        remove = _HOP_BY_HOP_CLOSE
        sizes = _HOP_BY_HOP_CLOSE_SIZES
    else:
        remove = HOP_BY_HOP
        sizes = _HOP_BY_HOP_SIZES
    # Comparing lengths first spares most names a lower() call.
    return tuple(
        [pair for pair in headers if len(pair[0]) not in sizes or pair[0].lower() not in remove]
    )


def endToEnd(
    headers: Iterable[Header], keep: Iterable[bytes] = (), tokens: Optional[FrozenSet[bytes]] = None
) -> Tuple[List[Header], FrozenSet[bytes], bool]:
    """
    The proxy's per-message pass over received headers, in one loop: the
    end-to-end fields, the C{Connection} tokens, and whether a
    C{Content-Length} was there.

    Hop-by-hop fields (L{HOP_BY_HOP} and whatever C{Connection} lists,
    except L{PROTECTED} ones and names in C{keep}) are removed, and so is
    every C{Content-Length}: the caller writes one normalized value from
    the body framing (a received C{5, 5} or a repeated field must not
    travel on).  L{removeHopByHop} is the same rule for callers that want
    C{Content-Length} kept.

    @param headers: the received headers.
    @param keep: lower-case hop-by-hop names to keep (C{b"upgrade"}).
    @param tokens: the C{Connection} tokens of C{headers}, when the caller
        has them already (L{connectionTokens}); ignored when C{keep} has
        C{b"connection"}.
    @return: C{(headers, tokens, hadContentLength)}; C{headers} is a new
        list the caller may append to.
    """
    if tokens is not None and b"connection" not in keep:
        return _endToEndKnowing(headers, keep, tokens)
    out = []
    connection: Optional[List[bytes]] = None
    hasLength = False
    hop = HOP_BY_HOP
    sizes = _END_TO_END_SIZES
    for pair in headers:
        name = pair[0]
        # Comparing lengths first spares most names a lower() call.
        if len(name) not in sizes:
            out.append(pair)
            continue
        lower = name.lower()
        if lower in hop and lower not in keep:
            if lower == b"connection":
                if connection is None:
                    connection = []
                connection.append(pair[1])
            continue
        if lower == b"content-length":
            hasLength = True
            continue
        out.append(pair)
    if connection is None:
        return out, _NO_TOKENS, hasLength
    tokens = frozenset(t.strip(b" \t").lower() for v in connection for t in v.split(b",") if t.strip(b" \t"))
    if tokens <= _HOP_BY_HOP_CLOSE:
        # The usual options (close, keep-alive, upgrade): every hop-by-hop
        # field is gone already, or kept on purpose.
        return out, tokens, hasLength
    remove = tokens - frozenset(keep) - PROTECTED - HOP_BY_HOP
    if remove:
        removeSizes = frozenset(len(name) for name in remove)
        out = [pair for pair in out if len(pair[0]) not in removeSizes or pair[0].lower() not in remove]
        hasLength = hasLength and b"content-length" not in remove
    return out, tokens, hasLength


def _endToEndKnowing(
    headers: Iterable[Header], keep: Iterable[bytes], tokens: FrozenSet[bytes]
) -> Tuple[List[Header], FrozenSet[bytes], bool]:
    """
    L{endToEnd} when the C{Connection} tokens are known: one pass.
    """
    if tokens <= _HOP_BY_HOP_CLOSE:
        remove = HOP_BY_HOP
        sizes = _END_TO_END_SIZES
    else:
        remove = HOP_BY_HOP | (tokens - PROTECTED)
        sizes = _END_TO_END_SIZES | frozenset(len(name) for name in remove)
    if keep:
        remove = remove - frozenset(keep)
    out = []
    hasLength = False
    for pair in headers:
        name = pair[0]
        # Comparing lengths first spares most names a lower() call.
        if len(name) not in sizes:
            out.append(pair)
            continue
        lower = name.lower()
        if lower == b"content-length":
            if lower not in remove:
                hasLength = True
            continue
        if lower not in remove:
            out.append(pair)
    return out, tokens, hasLength


def serializeTrustedHead(firstLine: bytes, headers: Iterable[Header], extra: Optional[bytes] = None) -> bytes:
    """
    Serialize a head whose fields are known to be valid (parsed, or made by
    the proxy itself), without checking them again.

    @param firstLine: the request or status line, with its CRLF.
    @param headers: C{(name, value)} pairs.
    @param extra: serialized field lines (each with its CRLF) to add after
        C{headers} (the tracing C{traceparent}), or L{None}.
    """
    # (One join over map(): no Python-level step per field.)
    lines = b"\r\n".join(map(_NAME_VALUE.join, headers))
    if lines:
        lines += b"\r\n"
    if extra is None:
        return firstLine + lines + b"\r\n"
    return firstLine + lines + extra + b"\r\n"


#: Joins a field's name and value.
_NAME_VALUE = b": "


#: Request fields that tell an upstream who the client is or how it
#: reached the proxy (lower case).  Only a proxy may set them: from a client
#: outside C{--trusted-proxies} every one is dropped (the proxy then adds
#: its own), and a spelling with underscores (C{X_Forwarded_For}) is always
#: dropped, since CGI, WSGI and many frameworks read C{_} and C{-} as the
#: same character (both become C{HTTP_X_FORWARDED_FOR}).
FORWARDING_FIELDS = frozenset(
    [
        b"forwarded",
        b"x-forwarded-for",
        b"x-forwarded-host",
        b"x-forwarded-proto",
        b"x-forwarded-port",
        b"x-forwarded-prefix",
        b"x-forwarded-server",
        b"x-forwarded-ssl",
        b"x-original-forwarded-for",
        b"x-real-ip",
        b"client-ip",
        b"x-client-ip",
        b"true-client-ip",
        b"x-cluster-client-ip",
        b"cf-connecting-ip",
    ]
)
#: The lengths of L{FORWARDING_FIELDS} names (a spelling with C{_} for
#: C{-} has the same length).
FORWARDING_SIZES = frozenset(len(name) for name in FORWARDING_FIELDS)


def isForwardingField(lower: bytes) -> bool:
    """
    Whether the lower-case field name C{lower} is one of
    L{FORWARDING_FIELDS}, or would read as one with its underscores taken
    for dashes (C{x_forwarded_for}, C{x-forwarded_for}).
    """
    # (One replace and one set lookup: on CPython 3.11, C{b"_" in lower}
    # first tries the operand as an integer and formats a TypeError.)
    return lower.replace(b"_", b"-") in FORWARDING_FIELDS


def removeHeader(headers: Headers, name: bytes) -> Headers:
    """
    Remove every field called C{name}.

    @param headers: the headers.
    @param name: a header name (any case).
    @return: the headers without it.
    """
    name = name.lower()
    return tuple(pair for pair in headers if pair[0].lower() != name)


def replaceHeader(headers: Headers, name: bytes, value: bytes) -> Headers:
    """
    Set C{name} to a single C{value}: the first field with that name takes
    the new value (and the given spelling of the name), the others are
    removed; if there was none the field is added at the end.

    @param headers: the headers.
    @param name: a header name.
    @param value: its new value.
    @return: the new headers.
    """
    lower = name.lower()
    size = len(lower)
    result = []
    done = False
    for pair in headers:
        # Comparing lengths first spares most names a lower() call.
        if len(pair[0]) == size and pair[0].lower() == lower:
            if not done:
                result.append((name, value))
                done = True
        else:
            result.append(pair)
    if not done:
        result.append((name, value))
    return tuple(result)


def appendVia(headers: Headers, version: bytes, pseudonym: bytes = b"txproxy") -> Headers:
    """
    Add this proxy to C{Via} (RFC 9110 section 7.6.3), after any existing
    C{Via} entries.

    @param headers: the headers.
    @param version: the HTTP version of the received message
        (C{b"HTTP/1.1"} becomes C{1.1}, as the protocol name C{HTTP} is
        omitted).
    @param pseudonym: how this proxy names itself.
    @return: the headers with a new C{Via} field last.
    """
    if version.startswith(b"HTTP/"):
        version = version[5:]
    return tuple(headers) + ((b"Via", version + b" " + pseudonym),)


def _safeText(text: str) -> bytes:
    """
    One line of printable UTF-8.
    """
    cleaned = "".join(c if c.isprintable() else " " for c in text)
    return cleaned.strip().encode("utf-8", "replace")


def errorResponse(
    status: int,
    reason: str = "",
    extraHeaders: Iterable[Header] = (),
    close: bool = True,
) -> bytes:
    """
    A complete, short, plain-text HTTP/1.1 response for an error.

    @param status: the status code; its standard phrase is the status
        line's reason (see L{statusPhrase}).
    @param reason: the body text, one line (control characters are turned
        into spaces); the standard phrase when empty.
    @param extraHeaders: more header fields, for example C{Retry-After} or
        C{Proxy-Authenticate}.
    @param close: whether to add C{Connection: close}.
    @return: the status line, headers and body.
    @raise ValueError: if C{extraHeaders} holds an invalid name or value.
    """
    phrase = statusPhrase(status)
    body = (_safeText(reason) or phrase) + b"\n"
    headers: Tuple[Header, ...] = (
        (b"Content-Type", b"text/plain; charset=utf-8"),
        (b"Content-Length", b"%d" % (len(body),)),
    )
    if close:
        headers += ((b"Connection", b"close"),)
    headers += tuple(extraHeaders)
    head = ResponseHead(b"HTTP/1.1", status, phrase, headers)
    return serializeResponseHead(head) + body


_XF = frozenset((b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded"))
_XF_AND_HOST = _XF | {b"host"}
_FORWARDING_SIZES = frozenset(len(name) for name in _XF_AND_HOST | FORWARDING_FIELDS)


def _forwardedNode(host: str) -> str:
    # RFC 7239 section 6: IPv6 addresses are bracketed and quoted.
    return f'"[{host}]"' if ":" in host else host


def forwardedHeaders(
    headers: Tuple[Tuple[bytes, bytes], ...],
    clientHost: str,
    scheme: str,
    host: Optional[bytes],
    trusted: bool,
    hostField: Optional[bytes] = None,
) -> Tuple[Tuple[bytes, bytes], ...]:
    """
    Set C{X-Forwarded-For}, C{X-Forwarded-Proto}, C{X-Forwarded-Host} and
    C{Forwarded} for a request from C{clientHost}.

    From a trusted client (C{--trusted-proxies}) the received
    C{X-Forwarded-For} and C{Forwarded} chains are kept and extended, and
    received C{X-Forwarded-Proto}/C{-Host} (and the rest of
    L{FORWARDING_FIELDS}: C{X-Real-IP}, ...) are kept; from anyone else all
    of them are replaced or dropped, so a client cannot forge its address.
    A name that reads as one of them with C{_} taken for C{-}
    (C{X_Forwarded_For}) is dropped from everyone.

    @param host: the host the client asked for (C{X-Forwarded-Host} and
        C{Forwarded: host=}), or L{None}.
    @param hostField: when given, the value of the one C{Host} field the
        result has, in the same pass: it takes the place of the first
        C{Host} in C{headers} (any other is dropped), or comes first if
        there was none.
    """
    kept: List[Tuple[bytes, bytes]] = []
    xff: List[bytes] = []
    fwd: List[bytes] = []
    proto: Optional[bytes] = None
    xhost: Optional[bytes] = None
    hostSeen = False
    names = _XF if hostField is None else _XF_AND_HOST
    sizes = _FORWARDING_SIZES
    for name, value in headers:
        if len(name) not in sizes:
            # Comparing lengths first spares most names a lower() call (a
            # spelling with "_" has the length of the one with "-").
            kept.append((name, value))
            continue
        lower = name.lower()
        if lower in names:
            if lower == b"host":
                if not hostSeen:
                    hostSeen = True
                    kept.append((name, hostField))  # type: ignore[arg-type]
                continue
            if trusted:
                if lower == b"x-forwarded-for":
                    xff.append(value)
                elif lower == b"forwarded":
                    fwd.append(value)
                elif lower == b"x-forwarded-proto" and proto is None:
                    proto = value
                elif lower == b"x-forwarded-host" and xhost is None:
                    xhost = value
            continue
        if lower in FORWARDING_FIELDS or (b"_" in lower and lower.replace(b"_", b"-") in FORWARDING_FIELDS):
            if trusted and b"_" not in lower:
                kept.append((name, value))
            continue
        kept.append((name, value))
    if hostField is not None and not hostSeen:
        kept.insert(0, (b"Host", hostField))
    client = clientHost.encode("latin-1")
    xff.append(client)
    kept.append((b"X-Forwarded-For", b", ".join(xff)))
    kept.append((b"X-Forwarded-Proto", proto or scheme.encode()))
    if xhost is not None or host:
        kept.append((b"X-Forwarded-Host", xhost if xhost is not None else host))  # type: ignore[arg-type]
    element = f"for={_forwardedNode(clientHost)};proto={scheme}".encode("latin-1")
    # (find(), not "in": on CPython, "bytes in bytes" first tries the
    # operand as an integer and throws the TypeError away.)
    if host and host.find(b'"') < 0:
        element += b';host="' + host + b'"'
    fwd.append(element)
    kept.append((b"Forwarded", b", ".join(fwd)))
    return tuple(kept)


def upstreamRequestHeaders(
    headers: Headers,
    keep: Tuple[bytes, ...],
    tokens: Optional[FrozenSet[bytes]],
    framingKind: str,
    framingLength: Optional[int],
    version: bytes,
    pseudonym: bytes,
) -> Headers:
    """
    The fields of a request head as a proxy forwards it over HTTP/1.1: the
    end-to-end fields of C{headers} (L{endToEnd}), C{TE: trailers} and the
    C{Connection} options it needs (with C{Upgrade} when C{keep} has it),
    the body framing's C{Transfer-Encoding} or C{Content-Length}, and
    C{Via}.

    @param tokens: the C{Connection} tokens of C{headers} when the caller
        has them, or L{None}.
    @param framingKind: the request body's framing (L{Framing.kind}), and
        C{framingLength} its length for C{"length"}.
    @param version: the received request's version (C{HTTP/1.1}), for
        C{Via}.
    """
    out, tokens, _ = endToEnd(headers, keep, tokens)
    te = _get(headers, b"te") if b"te" in tokens else None
    if te is not None and b"trailers" in te.lower():
        # "TE: trailers" (a connection option, as RFC 9110 section 10.1.4
        # wants it sent) says the client takes trailers: what gRPC servers
        # ask for, and what an HTTP/2 backend (which gets it as is) or an
        # HTTP/1.1 one (as a connection option) may send.
        out.append((b"TE", b"trailers"))
        out.append((b"Connection", b"upgrade, TE" if keep else b"TE"))
    elif keep:
        out.append((b"Connection", b"upgrade"))
    if framingKind == "chunked":
        out.append((b"Transfer-Encoding", b"chunked"))
    elif framingKind == "length":
        out.append((b"Content-Length", b"%d" % (framingLength or 0)))
    out.append((b"Via", version[5:] + b" " + pseudonym))
    return tuple(out)


def clientResponseHeaders(
    resp: ResponseHead,
    framingKind: str,
    framingLength: Optional[int],
    chunked: bool,
    tokens: Optional[FrozenSet[bytes]],
    passed: Optional[Tuple[List[Header], bool]],
    connection: Optional[bytes],
    pseudonym: bytes,
) -> List[Header]:
    """
    The fields of a response head as a proxy sends it to an HTTP/1.x
    client: the end-to-end fields of C{resp} (or C{passed}), the framing's
    C{Content-Length} (or the received one of an answer without a body, a
    C{HEAD} or C{304}), C{Transfer-Encoding: chunked} when the proxy
    chunks, C{Connection: connection} when given, and C{Via}.

    @param framingKind: how the body is relayed (L{Framing.kind}; C{"none"}
        when no framing applies), and C{framingLength} its length.
    @param chunked: the proxy chunks the body for the client.
    @param tokens: C{resp}'s C{Connection} tokens when known, or L{None}.
    @param passed: C{resp}'s end-to-end fields (a new list) and whether it
        had a C{Content-Length}, when the caller knows them (a cache hit).
    @return: a new list.
    """
    if passed is None:
        headers, _, hadLength = endToEnd(resp.headers, (), tokens)
    else:
        headers, hadLength = passed
    if framingKind == "length":
        headers.append((b"Content-Length", b"%d" % (framingLength or 0)))
    elif framingKind == "none" and hadLength:
        # HEAD and 304 answers may announce the length they omit.
        value = _get(resp.headers, b"content-length") or b""
        first = value.split(b",")[0].strip()
        if first.isdigit():
            headers.append((b"Content-Length", first))
    if chunked:
        headers.append((b"Transfer-Encoding", b"chunked"))
    elif framingKind == "chunked":
        # Decoded for an HTTP/1.0 client: its trailers are dropped.
        headers = [(n, v) for n, v in headers if n.lower() != b"trailer"]
    if connection is not None:
        headers.append((b"Connection", connection))
    headers.append((b"Via", resp.version[5:] + b" " + pseudonym))
    return headers
