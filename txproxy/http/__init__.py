# -*- test-case-name: tests.test_http_parser -*-
"""
The sans-IO HTTP/1.1 core shared by the forward and reverse proxies: head
parsing and serialization, body framing and readers, header helpers.  No
Twisted and no transport here: bytes in, values (or L{HTTPError}) out.
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
    connectionTokens,
    errorResponse,
    removeHeader,
    removeHopByHop,
    replaceHeader,
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
    "statusPhrase",
]
