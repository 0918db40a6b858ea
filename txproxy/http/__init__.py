# -*- test-case-name: tests.test_http_parser -*-
"""
The sans-IO HTTP/1.1 core shared by the forward and reverse proxies: head
parsing and serialization, body framing and readers, header helpers.  No
Twisted and no transport here: bytes in, values (or L{HTTPError}) out.

A request, as a proxy protocol would drive it::

    reader = HeadReader(maxSize)            # one per head
    data = reader.feed(received)            # None until the head is complete
    head = parseRequestHead(data)           # HTTPError(400/431/505)
    framing = requestFraming(head)          # HTTPError(400/501)
    body = (LengthReader(framing.length) if framing.kind == "length"
            else ChunkedReader(400) if framing.kind == "chunked" else None)
    headers = applyFraming(appendVia(removeHopByHop(head.headers),
                                     head.version), framing)
    upstream.write(serializeRequestHead(
        RequestHead(head.method, pathAndQuery, b"HTTP/1.1", headers)))
    upstream.write(body.feed(reader.leftover))   # then body.feed(more)...
    # body.ended: the rest (body.leftover) is the next pipelined request.

The response side is the same with L{parseResponseHead},
L{responseFraming} (which needs the request method) and readers built with
status C{502}.  Any L{HTTPError} becomes L{errorResponse}C{(error.status,
error.reason)} and, for a request, a closed connection.

The strictness choices (bare LF, obs-fold, leading empty lines, versions,
C{Host}, transfer codings, duplicate C{Content-Length}, host names) are
documented in L{txproxy.http._parser}, L{txproxy.http._body} and
L{txproxy.http._uri}.
"""

from ._body import (
    CHUNKED,
    NO_BODY,
    UNTIL_CLOSE,
    ChunkedDecoder,
    ChunkedReader,
    Framing,
    LengthReader,
    applyFraming,
    requestFraming,
    responseFraming,
)
from ._errors import HTTPError
from ._headers import (
    CONTINUE_RESPONSE,
    HOP_BY_HOP,
    appendVia,
    PROTECTED,
    connectionTokens,
    endToEnd,
    errorResponse,
    removeHeader,
    removeHopByHop,
    replaceHeader,
    serializeTrustedHead,
    statusPhrase,
)
from ._parser import (
    DEFAULT_MAX_HEAD_SIZE,
    DEFAULT_MAX_HEADERS,
    Headers,
    HeadReader,
    RequestHead,
    ResponseHead,
    findHeadEnd,
    parseRequestHead,
    parseResponseHead,
    serializeRequestHead,
    serializeResponseHead,
)
from ._uri import parseAbsoluteURI, parseAuthority, parseHostHeader

__all__ = [
    "CHUNKED",
    "CONTINUE_RESPONSE",
    "DEFAULT_MAX_HEAD_SIZE",
    "DEFAULT_MAX_HEADERS",
    "HOP_BY_HOP",
    "NO_BODY",
    "PROTECTED",
    "UNTIL_CLOSE",
    "ChunkedDecoder",
    "ChunkedReader",
    "Framing",
    "HTTPError",
    "HeadReader",
    "Headers",
    "LengthReader",
    "RequestHead",
    "ResponseHead",
    "appendVia",
    "applyFraming",
    "connectionTokens",
    "endToEnd",
    "errorResponse",
    "findHeadEnd",
    "parseAbsoluteURI",
    "parseAuthority",
    "parseHostHeader",
    "parseRequestHead",
    "parseResponseHead",
    "removeHeader",
    "removeHopByHop",
    "replaceHeader",
    "requestFraming",
    "responseFraming",
    "serializeRequestHead",
    "serializeResponseHead",
    "serializeTrustedHead",
    "statusPhrase",
]
