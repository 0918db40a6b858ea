# -*- test-case-name: tests.test_http_parser -*-
"""
Tests for L{txproxy.http}: the sans-IO HTTP/1.1 head parser, serializer,
body framing, body readers and header helpers.
"""

from __future__ import annotations

import platform
from typing import List, Sequence, Tuple

from twisted.trial.unittest import SynchronousTestCase

import txproxy.http
from txproxy.http import _parser, _uri
from txproxy.http import (
    CONTINUE_RESPONSE,
    ChunkedDecoder,
    ChunkedReader,
    Framing,
    HeadReader,
    HTTPError,
    LengthReader,
    RequestHead,
    ResponseHead,
    _body,
    _errors,
    _headers,
    _parser,
    _uri,
    appendVia,
    applyFraming,
    connectionTokens,
    errorResponse,
    findHeadEnd,
    parseAbsoluteURI,
    parseAuthority,
    parseHostHeader,
    parseRequestHead,
    parseResponseHead,
    removeHeader,
    removeHopByHop,
    replaceHeader,
    requestFraming,
    responseFraming,
    serializeRequestHead,
    serializeResponseHead,
    statusPhrase,
)

GET = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"

# (raw head, method, target, version, headers)
VALID_REQUESTS: List[Tuple[bytes, bytes, bytes, bytes, Tuple[Tuple[bytes, bytes], ...]]] = [
    (GET, b"GET", b"/", b"HTTP/1.1", ((b"Host", b"example.com"),)),
    (
        b"GET http://example.com:8080/a/b?c=d HTTP/1.1\r\nHost: example.com:8080\r\n\r\n",
        b"GET",
        b"http://example.com:8080/a/b?c=d",
        b"HTTP/1.1",
        ((b"Host", b"example.com:8080"),),
    ),
    (
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
        b"CONNECT",
        b"example.com:443",
        b"HTTP/1.1",
        ((b"Host", b"example.com:443"),),
    ),
    (
        b"CONNECT [2001:db8::1]:443 HTTP/1.1\r\nHost: [2001:db8::1]:443\r\n\r\n",
        b"CONNECT",
        b"[2001:db8::1]:443",
        b"HTTP/1.1",
        ((b"Host", b"[2001:db8::1]:443"),),
    ),
    (b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", b"OPTIONS", b"*", b"HTTP/1.1", ((b"Host", b"a"),)),
    (
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1:65535\r\n\r\n",
        b"GET",
        b"/",
        b"HTTP/1.1",
        ((b"Host", b"127.0.0.1:65535"),),
    ),
    (b"GET / HTTP/1.1\r\nHost: a:08080\r\n\r\n", b"GET", b"/", b"HTTP/1.1", ((b"Host", b"a:08080"),)),
    (b"GET / HTTP/1.0\r\n\r\n", b"GET", b"/", b"HTTP/1.0", ()),
    (b"get /x HTTP/1.0\r\nA: b\r\n\r\n", b"get", b"/x", b"HTTP/1.0", ((b"A", b"b"),)),
    (
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Empty:\r\nX-Spaces:    \r\n\r\n",
        b"GET",
        b"/",
        b"HTTP/1.1",
        ((b"Host", b"a"), (b"X-Empty", b""), (b"X-Spaces", b"")),
    ),
    (
        b"GET / HTTP/1.1\r\nHost:a\r\nX: \t a  b \t\r\n\r\n",
        b"GET",
        b"/",
        b"HTTP/1.1",
        ((b"Host", b"a"), (b"X", b"a  b")),
    ),
    (
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Obs: caf\xc3\xa9 \xff\r\n\r\n",
        b"GET",
        b"/",
        b"HTTP/1.1",
        ((b"Host", b"a"), (b"X-Obs", b"caf\xc3\xa9 \xff")),
    ),
    (
        b"GET / HTTP/1.1\r\nHost: a\r\n!#$%&'*+-.^_`|~09AZaz: token\r\n\r\n",
        b"GET",
        b"/",
        b"HTTP/1.1",
        ((b"Host", b"a"), (b"!#$%&'*+-.^_`|~09AZaz", b"token")),
    ),
    (
        b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET",
        b"/",
        b"HTTP/1.1",
        ((b"Host", b"a"),),
    ),
    (b"GET / HTTP/1.1\r\nHost:\r\n\r\n", b"GET", b"/", b"HTTP/1.1", ((b"Host", b""),)),
    (
        b"GET / HTTP/1.1\r\nhOST: [::1]:8080\r\nSet: 1\r\nset: 2\r\n\r\n",
        b"GET",
        b"/",
        b"HTTP/1.1",
        ((b"hOST", b"[::1]:8080"), (b"Set", b"1"), (b"set", b"2")),
    ),
    (
        b"POST /p?q=%20&r=a%2Fb HTTP/1.1\r\nHost: h.example.\r\nContent-Length: 3\r\n\r\n",
        b"POST",
        b"/p?q=%20&r=a%2Fb",
        b"HTTP/1.1",
        ((b"Host", b"h.example."), (b"Content-Length", b"3")),
    ),
    (
        b"GET /\"{}|^`< HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET",
        b"/\"{}|^`<",
        b"HTTP/1.1",
        ((b"Host", b"a"),),
    ),
]

# (raw head, status, description)
MALFORMED_REQUESTS: List[Tuple[bytes, int, str]] = [
    (b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "two spaces after the method"),
    (b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n", 400, "a space after the version"),
    (b"GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n", 400, "a tab as separator"),
    (b"GET /\r\nHost: a\r\n\r\n", 400, "HTTP/0.9-style request line"),
    (b"GET / http/1.1\r\nHost: a\r\n\r\n", 400, "lower-case version"),
    (b"GET / HTTP/1.10\r\nHost: a\r\n\r\n", 400, "two-digit minor version"),
    (b"GET / HTTP/11\r\nHost: a\r\n\r\n", 400, "no dot in the version"),
    (b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "a delimiter in the method"),
    (b" / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "empty method"),
    (b"GET /\x00 HTTP/1.1\r\nHost: a\r\n\r\n", 400, "NUL in the target"),
    (b"GET /\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n", 400, "non-ASCII in the target"),
    (b"GET /\x7f HTTP/1.1\r\nHost: a\r\n\r\n", 400, "DEL in the target"),
    (b"GET / HTTP/1.1\nHost: a\r\n\r\n", 400, "bare LF after the request line"),
    (b"GET / HTTP/1.1\rHost: a\r\n\r\n", 400, "bare CR after the request line"),
    (b"GET / HTTP/1.1\nHost: a\n\n", 400, "bare LF everywhere"),
    (b"GET / HTTP/1.1\r\nHost: a\n\n", 400, "head ending in a bare-LF blank line"),
    (b"GET / HTTP/1.1\r\nHost: a\r\n\n", 400, "final blank line a bare LF"),
    (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400, "space before the colon"),
    (b"GET / HTTP/1.1\r\nHost\t: a\r\n\r\n", 400, "tab before the colon"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n c\r\n\r\n", 400, "obs-fold with a space"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n\tc\r\n\r\n", 400, "obs-fold with a tab"),
    (b"GET / HTTP/1.1\r\n Host: a\r\n\r\n", 400, "first header line indented"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: b\rc\r\n\r\n", 400, "bare CR in a value"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: b\nY: c\r\n\r\n", 400, "bare LF in a value"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: b\x00c\r\n\r\n", 400, "NUL in a value"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: b\x01\r\n\r\n", 400, "control character in a value"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: b\x7f\r\n\r\n", 400, "DEL in a value"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: \x0bb\r\n\r\n", 400, "vertical tab in a value"),
    (b"GET / HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n", 400, "empty header name"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n", 400, "header line without colon"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX(y): b\r\n\r\n", 400, "delimiter in a header name"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX\xc3\xa9: b\r\n\r\n", 400, "non-ASCII header name"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX\x00: b\r\n\r\n", 400, "NUL in a header name"),
    (b"GET / HTTP/1.1\r\nX: a\r\n\r\n", 400, "HTTP/1.1 without Host"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 400, "two identical Hosts"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n", 400, "two Hosts, different case"),
    (b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", 400, "two Hosts in HTTP/1.0"),
    (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400, "a space in Host"),
    (b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", 400, "user info in Host"),
    (b"GET / HTTP/1.1\r\nHost: a:99999\r\n\r\n", 400, "port out of range in Host"),
    (b"GET / HTTP/1.1\r\nHost: a:65536\r\n\r\n", 400, "port just out of range in Host"),
    (b"GET / HTTP/1.1\r\nHost: a:00000\r\n\r\n", 400, "five-digit port zero in Host"),
    (b"GET / HTTP/1.1\r\nHost: a:123456\r\n\r\n", 400, "six-digit port in Host"),
    (b"GET / HTTP/1.1\r\nHost: a:http\r\n\r\n", 400, "non-numeric port in Host"),
    (b"GET / HTTP/1.1\r\nHost: a,b\r\n\r\n", 400, "a comma in Host"),
    (b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n", 400, "unterminated IPv6 Host"),
    (b"GET / HTTP/1.1\r\nHost: [zz::1]\r\n\r\n", 400, "invalid IPv6 Host"),
    (b"CONNECT / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "CONNECT with an origin-form target"),
    (b"CONNECT a HTTP/1.1\r\nHost: a\r\n\r\n", 400, "CONNECT without a port"),
    (b"CONNECT u@a:443 HTTP/1.1\r\nHost: a\r\n\r\n", 400, "CONNECT with user info"),
    (b"CONNECT http://a:443/ HTTP/1.1\r\nHost: a\r\n\r\n", 400, "CONNECT with a URL"),
    (b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400, "asterisk-form on GET"),
    (b"GET index.html HTTP/1.1\r\nHost: a\r\n\r\n", 400, "relative target"),
    (b"GET a:80 HTTP/1.1\r\nHost: a\r\n\r\n", 400, "authority-form on GET"),
    (b"GET / HTTP/1.1\r\nHost: a\r\n", 400, "head without its final CRLF"),
    (b"GET / HTTP/1.1\r\n", 400, "only a request line"),
    (b"GET / HTTP/1.1\r\nHost: a\r\n\r\nX: y\r\n\r\n", 400, "two heads"),
    (b"", 400, "nothing"),
    (b"\r\n\r\n", 400, "only empty lines"),
    (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505, "HTTP/2.0"),
    (b"GET / HTTP/1.2\r\nHost: a\r\n\r\n", 505, "HTTP/1.2"),
    (b"GET / HTTP/0.9\r\nHost: a\r\n\r\n", 505, "HTTP/0.9 with a version"),
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505, "the HTTP/2 preface"),
]

VALID_RESPONSES: List[Tuple[bytes, bytes, int, bytes, Tuple[Tuple[bytes, bytes], ...]]] = [
    (
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1",
        200,
        b"OK",
        ((b"Content-Length", b"0"),),
    ),
    (b"HTTP/1.0 404 Not Found\r\n\r\n", b"HTTP/1.0", 404, b"Not Found", ()),
    (b"HTTP/1.1 204\r\n\r\n", b"HTTP/1.1", 204, b"", ()),
    (b"HTTP/1.1 204 \r\n\r\n", b"HTTP/1.1", 204, b"", ()),
    (b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1", 100, b"Continue", ()),
    (b"HTTP/1.1 599 Odd  \tphrase \xe9\r\n\r\n", b"HTTP/1.1", 599, b"Odd  \tphrase \xe9", ()),
    (
        b"HTTP/1.1 301 Moved\r\nLocation: http://a/\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\n",
        b"HTTP/1.1",
        301,
        b"Moved",
        ((b"Location", b"http://a/"), (b"Set-Cookie", b"a=1"), (b"Set-Cookie", b"b=2")),
    ),
]

MALFORMED_RESPONSES: List[Tuple[bytes, str]] = [
    (b"HTTP/1.1 200OK\r\n\r\n", "no space after the status"),
    (b"HTTP/1.1 20 OK\r\n\r\n", "two-digit status"),
    (b"HTTP/1.1 2000 OK\r\n\r\n", "four-digit status"),
    (b"HTTP/1.1 099 Low\r\n\r\n", "status below 100"),
    (b"HTTP/1.1 600 High\r\n\r\n", "status above 599"),
    (b"HTTP/2.0 200 OK\r\n\r\n", "HTTP/2.0"),
    (b"HTTP/1.2 200 OK\r\n\r\n", "HTTP/1.2"),
    (b"http/1.1 200 OK\r\n\r\n", "lower-case version"),
    (b"HTTP/1.1  200 OK\r\n\r\n", "two spaces"),
    (b"\r\nHTTP/1.1 200 OK\r\n\r\n", "empty line before the status line"),
    (b"HTTP/1.1 200 OK\nX: y\r\n\r\n", "bare LF after the status line"),
    (b"HTTP/1.1 200 O\x00K\r\n\r\n", "NUL in the reason"),
    (b"HTTP/1.1 200 OK\r\nX : y\r\n\r\n", "space before the colon"),
    (b"HTTP/1.1 200 OK\r\nX: y\r\n z\r\n\r\n", "obs-fold"),
    (b"HTTP/1.1 200 OK\r\nX: y\rz\r\n\r\n", "bare CR in a value"),
    (b"HTTP/1.1 200 OK\r\nX: y\x01\r\n\r\n", "control character in a value"),
    (b"HTTP/1.1 200 OK\r\nX\r\n\r\n", "no colon"),
    (b"HTTP/1.1 200 OK\r\nX: y\r\n", "no final CRLF"),
    (b"HTTP/1.1 200 OK\r\n", "only a status line"),
    (b"", "nothing"),
    (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "not HTTP at all"),
]


def feedPieces(reader: object, pieces: Sequence[bytes]) -> bytes:
    """
    Feed C{pieces} to a body reader and return everything it gave back.
    """
    return b"".join(reader.feed(piece) for piece in pieces)  # type: ignore[attr-defined]


def splits(data: bytes) -> List[List[bytes]]:
    """
    C{data} split in two at every index, plus one byte at a time.
    """
    result = [[data[:i], data[i:]] for i in range(len(data) + 1)]
    result.append([data[i : i + 1] for i in range(len(data))])
    return result


class PublicNamesTests(SynchronousTestCase):
    """
    The public names of L{txproxy.http}.
    """

    def test_publicNamesAreThePrivateObjects(self) -> None:
        """
        Each public name is the object defined in its private module, and
        C{__all__} lists exactly the names exported.
        """
        self.assertIs(txproxy.http.parseRequestHead, _parser.parseRequestHead)
        self.assertIs(txproxy.http.RequestHead, _parser.RequestHead)
        self.assertIs(txproxy.http.HTTPError, _errors.HTTPError)
        self.assertIs(txproxy.http.ChunkedReader, _body.ChunkedReader)
        self.assertIs(txproxy.http.removeHopByHop, _headers.removeHopByHop)
        self.assertIs(txproxy.http.parseAuthority, _uri.parseAuthority)
        for name in txproxy.http.__all__:
            self.assertTrue(hasattr(txproxy.http, name), name)

    def test_httpErrorAttributes(self) -> None:
        """
        L{HTTPError} carries the status and a reason, and its string form
        names both.
        """
        error = HTTPError(431, "Too big")
        self.assertEqual((error.status, error.reason), (431, "Too big"))
        self.assertEqual(str(error), "431 Too big")
        self.assertEqual(repr(error), "HTTPError(431, 'Too big')")


class FindHeadEndTests(SynchronousTestCase):
    """
    Tests for L{findHeadEnd}.
    """

    def test_complete(self) -> None:
        """
        The index just past the CRLFCRLF is returned.
        """
        self.assertEqual(findHeadEnd(GET + b"body"), len(GET))

    def test_incomplete(self) -> None:
        """
        C{-1} means the head is not complete.
        """
        self.assertEqual(findHeadEnd(GET[:-1]), -1)
        self.assertEqual(findHeadEnd(b""), -1)

    def test_everySplit(self) -> None:
        """
        For every prefix of a head, the end is found exactly when the
        prefix holds the whole head.
        """
        data = b"\r\n" + GET + b"GET"
        for i in range(len(data) + 1):
            expected = 2 + len(GET) if i >= 2 + len(GET) else -1
            self.assertEqual(findHeadEnd(data[:i]), expected, i)

    def test_start(self) -> None:
        """
        C{start} is where the head begins, for pipelined requests.
        """
        data = GET + GET
        self.assertEqual(findHeadEnd(data, len(GET)), 2 * len(GET))

    def test_leadingEmptyLines(self) -> None:
        """
        Empty lines before the head are skipped, so that their CRLFs are
        not mistaken for the end of a head.
        """
        self.assertEqual(findHeadEnd(b"\r\n\r\n\r\n"), -1)
        self.assertEqual(findHeadEnd(b"\r\n\r\n" + GET), 4 + len(GET))
        self.assertEqual(findHeadEnd(b"\r\n\r\n" + GET, 2), 4 + len(GET))

    def test_bareLineFeeds(self) -> None:
        """
        A head ending in a bare-LF blank line is reported complete, so that
        the parser rejects it instead of waiting for more bytes.
        """
        data = b"GET / HTTP/1.1\nHost: a\n\nmore"
        self.assertEqual(findHeadEnd(data), len(data) - 4)
        self.assertRaises(HTTPError, parseRequestHead, data[: findHeadEnd(data)])

    def test_bareLineFeedBeforeCRLF(self) -> None:
        """
        A bare-LF blank line before a later CRLFCRLF ends the head there,
        for L{findHeadEnd} and L{HeadReader} alike.
        """
        data = b"GET / HTTP/1.1\r\nHost: a\r\n\nX: y\r\n\r\n"
        end = data.index(b"\n\n") + 2
        self.assertEqual(findHeadEnd(data), end)
        reader = HeadReader()
        self.assertEqual(reader.feed(data), data[:end])
        self.assertEqual(self.assertRaises(HTTPError, parseRequestHead, data[:end]).status, 400)


class HeadReaderTests(SynchronousTestCase):
    """
    Tests for L{HeadReader}.
    """

    def test_everySplit(self) -> None:
        """
        However the bytes are split, the reader returns the same head
        (leading empty lines removed) once, and keeps what follows it.
        """
        data = b"\r\n\r\n" + GET + b"POST"
        for pieces in splits(data):
            reader = HeadReader()
            heads = [head for head in map(reader.feed, pieces) if head is not None]
            self.assertEqual(heads, [GET], pieces)
            # Feeding stops at the piece that completes the head: its
            # leftover and the pieces not fed are what follows the head.
            reader = HeadReader()
            for i, piece in enumerate(pieces):
                if reader.feed(piece) is not None:
                    self.assertEqual(reader.leftover + b"".join(pieces[i + 1 :]), b"POST")
                    break
            else:
                self.fail(f"no head from {pieces!r}")

    def test_bareLineFeedEnds(self) -> None:
        """
        A bare-LF blank line ends the head (which the parser then rejects),
        even when split between feeds.
        """
        reader = HeadReader()
        self.assertIsNone(reader.feed(b"GET / HTTP/1.1\nHost: a\n"))
        self.assertEqual(reader.feed(b"\nrest"), b"GET / HTTP/1.1\nHost: a\n\n")
        self.assertEqual(reader.leftover, b"rest")

    def test_tooLarge(self) -> None:
        """
        A head larger than C{maxSize} raises C{431}, while an incomplete
        head that grows past it or a complete head over it.
        """
        reader = HeadReader(maxSize=len(GET))
        self.assertEqual(reader.feed(GET), GET)
        reader = HeadReader(maxSize=len(GET) - 1)
        self.assertEqual(self.assertRaises(HTTPError, reader.feed, GET).status, 431)
        reader = HeadReader(maxSize=10)
        self.assertIsNone(reader.feed(b"GET / HTT"))
        self.assertEqual(self.assertRaises(HTTPError, reader.feed, b"P/").status, 431)

    def test_leadingEmptyLinesCount(self) -> None:
        """
        Leading empty lines count towards the size limit.
        """
        reader = HeadReader(maxSize=10)
        self.assertIsNone(reader.feed(b"\r\n" * 5))
        self.assertEqual(self.assertRaises(HTTPError, reader.feed, b"\r\n").status, 431)

    def test_responseStatus(self) -> None:
        """
        C{tooLargeStatus} picks the status for a response head (C{502}).
        """
        reader = HeadReader(maxSize=5, tooLargeStatus=502)
        error = self.assertRaises(HTTPError, reader.feed, b"HTTP/1.1 200 OK")
        self.assertEqual(error.status, 502)

    def test_reset(self) -> None:
        """
        L{HeadReader.reset} discards a partial head; a reader can be reused
        after a head.
        """
        reader = HeadReader()
        reader.feed(b"GARBAGE")
        self.assertEqual(reader.bufferedSize, 7)
        reader.reset()
        self.assertEqual(reader.feed(GET), GET)
        self.assertEqual(reader.feed(GET), GET)


class ParseRequestHeadTests(SynchronousTestCase):
    """
    Tests for L{parseRequestHead}.
    """

    def test_validTable(self) -> None:
        """
        Each valid edge case parses to the expected head.
        """
        for raw, method, target, version, headers in VALID_REQUESTS:
            head = parseRequestHead(raw)
            self.assertEqual(head, RequestHead(method, target, version, headers), raw)
            self.assertIsInstance(head.headers, tuple)
            for pair in head.headers:
                self.assertIsInstance(pair, tuple)

    def test_malformedTable(self) -> None:
        """
        Each malformed or unsupported head raises L{HTTPError} with the
        expected status and a reason.
        """
        for raw, status, description in MALFORMED_REQUESTS:
            try:
                head = parseRequestHead(raw)
            except HTTPError as error:
                self.assertEqual(error.status, status, description)
                self.assertTrue(error.reason)
                self.assertNotIn("\n", error.reason)
            else:
                self.fail(f"{description}: accepted as {head!r}")

    def test_tooManyHeaders(self) -> None:
        """
        More than C{maxHeaders} header fields is C{431}.
        """
        raw = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: y\r\n" * 9 + b"\r\n"
        self.assertEqual(len(parseRequestHead(raw, maxHeaders=10).headers), 10)
        error = self.assertRaises(HTTPError, parseRequestHead, raw, maxHeaders=9)
        self.assertEqual(error.status, 431)

    def test_reasonsAreSpecific(self) -> None:
        """
        The reason says what was wrong.
        """
        cases = [
            (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", "Whitespace before a header colon"),
            (b"GET / HTTP/1.1\r\nHost: a\r\n b\r\n\r\n", "Obsolete line folding is not allowed"),
            (b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n", "Header lines must end with CRLF"),
            (b"GET / HTTP/1.1\r\nHost: \x00\r\n\r\n", "Control character in header value"),
            (b"GET / HTTP/1.1\r\nX: a\r\n\r\n", "Missing Host header"),
            (b"GET / HTTP/1.1\r\nH(: a\r\n\r\n", "Invalid header name"),
            (b"GET / HTTP/1.1\r\nH\r\n\r\n", "Header line without a colon"),
            (b"GET / HTTP/1.1\nHost: a\r\n\r\n", "Request line must end with CRLF"),
            (b"GET / HTTP/1.1 x\r\nHost: a\r\n\r\n", "Malformed request line"),
            (b"G@T / HTTP/1.1\r\nHost: a\r\n\r\n", "Invalid method"),
            (b"GET / HTTP/x\r\nHost: a\r\n\r\n", "Invalid HTTP version"),
            (b"GET /\xff HTTP/1.1\r\nHost: a\r\n\r\n", "Invalid request target"),
        ]
        for raw, reason in cases:
            self.assertEqual(self.assertRaises(HTTPError, parseRequestHead, raw).reason, reason)

    def test_getAndGetAll(self) -> None:
        """
        C{get} returns the first value of a header, C{getAll} every value,
        both matching names case-insensitively.
        """
        head = parseRequestHead(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\nx-a: 2\r\n\r\n")
        self.assertEqual(head.get(b"x-A"), b"1")
        self.assertEqual(head.getAll(b"X-A"), [b"1", b"2"])
        self.assertIsNone(head.get(b"X-B"))
        self.assertEqual(head.getAll(b"X-B"), [])

    def test_keepAlive(self) -> None:
        """
        HTTP/1.1 keeps the connection unless C{Connection: close}; HTTP/1.0
        only with C{Connection: keep-alive}.  Tokens are case-insensitive
        and may be listed among others or over several lines.
        """
        cases = [
            (b"HTTP/1.1", (), True),
            (b"HTTP/1.1", ((b"Connection", b"close"),), False),
            (b"HTTP/1.1", ((b"Connection", b"Upgrade, CLOSE"),), False),
            (b"HTTP/1.1", ((b"Connection", b"keep-alive"), (b"connection", b"close")), False),
            (b"HTTP/1.1", ((b"Connection", b"closed"),), True),
            (b"HTTP/1.0", (), False),
            (b"HTTP/1.0", ((b"Connection", b"Keep-Alive"),), True),
            (b"HTTP/1.0", ((b"Connection", b"keep-alive, close"),), False),
            (b"HTTP/1.0", ((b"Proxy-Connection", b"keep-alive"),), False),
        ]
        for version, headers, expected in cases:
            head = RequestHead(b"GET", b"/", version, headers)
            self.assertIs(head.keepAlive, expected, (version, headers))
            response = ResponseHead(version, 200, b"OK", headers)
            self.assertIs(response.keepAlive, expected, (version, headers))

    def test_expectsContinue(self) -> None:
        """
        C{expectsContinue} is true only for HTTP/1.1 requests with
        C{Expect: 100-continue} (any case).
        """
        self.assertTrue(RequestHead(b"PUT", b"/", b"HTTP/1.1", [(b"Expect", b"100-Continue")]).expectsContinue)
        self.assertFalse(RequestHead(b"PUT", b"/", b"HTTP/1.0", [(b"Expect", b"100-continue")]).expectsContinue)
        self.assertFalse(RequestHead(b"PUT", b"/", b"HTTP/1.1", [(b"Expect", b"200-ok")]).expectsContinue)
        self.assertFalse(RequestHead(b"PUT", b"/", b"HTTP/1.1").expectsContinue)

    def test_headsAreFrozenAndHashable(self) -> None:
        """
        Heads are immutable values: equal heads hash equally and lists of
        headers are converted to tuples.
        """
        a = RequestHead(b"GET", b"/", b"HTTP/1.1", [[b"Host", b"a"]])
        b = RequestHead(b"GET", b"/", b"HTTP/1.1", ((b"Host", b"a"),))
        self.assertEqual(a, b)
        self.assertEqual(hash(a), hash(b))
        self.assertRaises(AttributeError, setattr, a, "method", b"POST")


class ParseResponseHeadTests(SynchronousTestCase):
    """
    Tests for L{parseResponseHead}.
    """

    def test_validTable(self) -> None:
        """
        Each valid edge case parses to the expected head.
        """
        for raw, version, status, reason, headers in VALID_RESPONSES:
            self.assertEqual(
                parseResponseHead(raw), ResponseHead(version, status, reason, headers), raw
            )

    def test_malformedTable(self) -> None:
        """
        Each malformed upstream head raises L{HTTPError} with status C{502}.
        """
        for raw, description in MALFORMED_RESPONSES:
            try:
                head = parseResponseHead(raw)
            except HTTPError as error:
                self.assertEqual(error.status, 502, description)
            else:
                self.fail(f"{description}: accepted as {head!r}")

    def test_tooManyHeaders(self) -> None:
        """
        Too many header fields in a response is C{502}.
        """
        raw = b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 3 + b"\r\n"
        error = self.assertRaises(HTTPError, parseResponseHead, raw, maxHeaders=2)
        self.assertEqual(error.status, 502)


class ParseRequestHeadScannedTests(ParseRequestHeadTests):
    """
    L{ParseRequestHeadTests} with the header lines read by
    L{_parser._scanHeaders} (PyPy's default), whatever the interpreter.
    """

    def setUp(self) -> None:
        self.patch(_parser, "_SCAN_HEADERS", True)


class ParseRequestHeadMatchedTests(ParseRequestHeadTests):
    """
    L{ParseRequestHeadTests} with the header lines read by the regular
    expression (CPython's default), whatever the interpreter.
    """

    def setUp(self) -> None:
        self.patch(_parser, "_SCAN_HEADERS", False)


class ParseResponseHeadScannedTests(ParseResponseHeadTests):
    """
    L{ParseResponseHeadTests} with L{_parser._scanHeaders}.
    """

    def setUp(self) -> None:
        self.patch(_parser, "_SCAN_HEADERS", True)


class ParseResponseHeadMatchedTests(ParseResponseHeadTests):
    """
    L{ParseResponseHeadTests} with the regular expression.
    """

    def setUp(self) -> None:
        self.patch(_parser, "_SCAN_HEADERS", False)


class HeaderScanTests(SynchronousTestCase):
    """
    L{_parser._scanHeaders} (PyPy's reader of header lines) against the
    regular expression it stands in for.
    """

    def test_defaultOnPyPyOnly(self) -> None:
        """
        The scan is the default on PyPy only.
        """
        self.assertEqual(_parser._SCAN_HEADERS, platform.python_implementation() == "PyPy")

    def test_agreesWithTheExpression(self) -> None:
        """
        For header sections cut from valid heads and mutated at every
        position (a byte replaced, inserted or removed, from a set of
        delimiters, controls, obs-text and token bytes), the scan accepts
        exactly what the expression's C{findall} matches line for line,
        with the same fields.
        """
        heads = [raw for raw, *_ in VALID_REQUESTS] + [raw for raw, *_ in VALID_RESPONSES] + [
            b"HTTP/1.1 200 OK\r\nX: \t a b \t\r\nEmpty:\r\nE2: \t \r\nV: \x80\xff x\r\n\r\n",
        ]
        specials = b"\r\n\t :\x00\x7f\x80\xffa!(\x01"
        checked = accepted = 0
        for head in heads:
            start = head.index(b"\r\n") + 2
            variants = [head]
            for i in range(start, len(head)):
                variants.append(head[:i] + head[i + 1 :])
                for c in specials:
                    variants.append(head[:i] + bytes([c]) + head[i + 1 :])
                    variants.append(head[:i] + bytes([c]) + head[i:])
            for data in variants:
                end = len(data) - 2
                if start > end or data[end:] != b"\r\n" or (end != start and data[end - 2 : end] != b"\r\n"):
                    continue  # (_parseHeaders refuses these before either reads a line)
                matched = _parser._HEADER_LINE.findall(data, start, end)
                expected = matched if len(matched) == data.count(b"\n", start, end) else None
                self.assertEqual(_parser._scanHeaders(data, start, end), expected, data)
                checked += 1
                accepted += expected is not None
        # Enough of both kinds to mean something.
        self.assertGreater(accepted, 300)
        self.assertGreater(checked - accepted, 1000)


class RequestLineScanTests(SynchronousTestCase):
    """
    L{_parser._scanRequestLine} (PyPy's reader of request lines) against
    the regular expression it stands in for.
    """

    def test_agreesWithTheExpression(self) -> None:
        """
        For the valid request heads and every one-byte mutation of their
        request lines (replaced, inserted, removed), from every start the
        parser uses, the scan gives the expression's groups and end, or
        L{None} where the expression does not match.
        """
        checked = accepted = 0
        for head, *_ in VALID_REQUESTS + [(b"\r\n\r\nGET / HTTP/1.0\r\n\r\n",)]:
            lineEnd = head.index(b"HTTP/") + 10
            variants = [head]
            for i in range(lineEnd):
                variants.append(head[:i] + head[i + 1 :])
                for c in b" \t\r\n/:\x00\x7f\x80aH1.":
                    variants.append(head[:i] + bytes([c]) + head[i + 1 :])
                    variants.append(head[:i] + bytes([c]) + head[i:])
            for data in variants:
                for start in {0, len(data) - len(data.lstrip(b"\r\n"))}:
                    match = _parser._REQUEST_LINE.match(data, start)
                    expected = None if match is None else (*match.groups(), match.end())
                    self.assertEqual(_parser._scanRequestLine(data, start), expected, (data, start))
                    checked += 1
                    accepted += expected is not None
        self.assertGreater(accepted, 200)
        self.assertGreater(checked - accepted, 1000)


class KnownLinesTests(SynchronousTestCase):
    """
    The status lines and C{Host} values found valid are remembered (a
    dictionary lookup instead of a match), bounded, and only valid ones.
    """

    def setUp(self) -> None:
        self.patch(_parser, "_STATUS_LINES", {})
        self.patch(_uri, "_VALID_HOSTS", {})

    def test_statusLineRemembered(self) -> None:
        """
        A valid status line is kept, whole through its CRLF, and a head
        that starts with it parses the same, whatever follows.
        """
        first = parseResponseHead(b"HTTP/1.1 404 Not Found\r\nA: b\r\n\r\n")
        self.assertEqual(_parser._STATUS_LINES, {b"HTTP/1.1 404 Not Found\r\n": (b"HTTP/1.1", 404, b"Not Found")})

        class NotAsked:
            def match(self, data: bytes) -> None:
                raise AssertionError("matched again")

        expression = _parser._STATUS_LINE
        self.patch(_parser, "_STATUS_LINE", NotAsked())
        again = parseResponseHead(b"HTTP/1.1 404 Not Found\r\nC: d\r\nE: f\r\n\r\n")
        self.assertEqual((first.status, first.reason, first.headers), (404, b"Not Found", ((b"A", b"b"),)))
        self.assertEqual((again.version, again.status, again.reason), (b"HTTP/1.1", 404, b"Not Found"))
        self.assertEqual(again.headers, ((b"C", b"d"), (b"E", b"f")))
        self.patch(_parser, "_STATUS_LINE", expression)
        self.assertEqual(parseResponseHead(b"HTTP/1.1 204\r\n\r\n").reason, b"")
        self.assertEqual(parseResponseHead(b"HTTP/1.1 204\r\n\r\n").reason, b"")

    def test_knownLineStillChecksTheRest(self) -> None:
        """
        A remembered status line does not excuse what follows it.
        """
        parseResponseHead(b"HTTP/1.1 200 OK\r\n\r\n")
        for raw in (b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 200 OK\r\nX\r\n\r\n", b"HTTP/1.1 200 OK\r\nA: \x00\r\n\r\n"):
            self.assertEqual(self.assertRaises(HTTPError, parseResponseHead, raw).status, 502, raw)

    def test_invalidNotRemembered(self) -> None:
        """
        Lines and values that fail are never kept, and fail every time.
        """
        for raw in (b"HTTP/1.1 600 No\r\n\r\n", b"HTTP/2.0 200 OK\r\n\r\n", b"HTTP/1.1 200 O\x00K\r\n\r\n"):
            for _ in range(2):
                self.assertEqual(self.assertRaises(HTTPError, parseResponseHead, raw).status, 502, raw)
        self.assertEqual(_parser._STATUS_LINES, {})
        for host in (b"a b", b"a:0", b"a:65536", b"[::1"):
            for _ in range(2):
                self.assertEqual(self.assertRaises(HTTPError, _uri._checkHostValue, host).status, 400, host)
        self.assertEqual(_uri._VALID_HOSTS, {})
        _uri._checkHostValue(b"[::1]:8080")
        _uri._checkHostValue(b"example.com:65535")
        self.assertEqual(set(_uri._VALID_HOSTS), {b"[::1]:8080", b"example.com:65535"})

    def test_bounded(self) -> None:
        """
        Past its bound a table starts again, empty.
        """
        for code in range(200, 200 + _parser._KNOWN_LINES + 1):
            parseResponseHead(b"HTTP/1.1 %d X\r\n\r\n" % code)
        self.assertEqual(len(_parser._STATUS_LINES), 1)
        for n in range(_uri._KNOWN_HOSTS + 1):
            _uri._checkHostValue(b"h%d.example" % n)
        self.assertEqual(len(_uri._VALID_HOSTS), 1)


class SerializeTests(SynchronousTestCase):
    """
    Tests for L{serializeRequestHead} and L{serializeResponseHead}.
    """

    def test_requestBytes(self) -> None:
        """
        A request head is written with single spaces, C{": "} after each
        name and CRLF line ends.
        """
        head = RequestHead(b"GET", b"/x", b"HTTP/1.1", ((b"Host", b"a"), (b"X", b"")))
        self.assertEqual(
            serializeRequestHead(head), b"GET /x HTTP/1.1\r\nHost: a\r\nX: \r\n\r\n"
        )

    def test_responseBytes(self) -> None:
        """
        A response head is written with its status and reason (an empty
        reason keeps its separating space).
        """
        head = ResponseHead(b"HTTP/1.1", 204, b"", ())
        self.assertEqual(serializeResponseHead(head), b"HTTP/1.1 204 \r\n\r\n")
        head = ResponseHead(b"HTTP/1.0", 200, b"OK", ((b"A", b"b"),))
        self.assertEqual(serializeResponseHead(head), b"HTTP/1.0 200 OK\r\nA: b\r\n\r\n")

    def test_roundTripRequests(self) -> None:
        """
        Parsing, serializing and parsing again gives the same request head,
        and serializing that gives the same bytes.
        """
        for raw, *_ in VALID_REQUESTS:
            head = parseRequestHead(raw)
            data = serializeRequestHead(head)
            self.assertEqual(parseRequestHead(data), head)
            self.assertEqual(serializeRequestHead(parseRequestHead(data)), data)

    def test_roundTripResponses(self) -> None:
        """
        Parsing, serializing and parsing again gives the same response head.
        """
        for raw, *_ in VALID_RESPONSES:
            head = parseResponseHead(raw)
            self.assertEqual(parseResponseHead(serializeResponseHead(head)), head)

    def test_requestValidation(self) -> None:
        """
        A request head that cannot be written as valid HTTP/1.1 (line
        breaks injected in a value, an invalid name, method, target or
        version) raises C{ValueError}; C{validate=False} skips the check.
        """
        bad = [
            RequestHead(b"GET", b"/", b"HTTP/1.1", ((b"X", b"a\r\nInjected: yes"),)),
            RequestHead(b"GET", b"/", b"HTTP/1.1", ((b"X", b"a\nb"),)),
            RequestHead(b"GET", b"/", b"HTTP/1.1", ((b"X", b"a\x00"),)),
            RequestHead(b"GET", b"/", b"HTTP/1.1", ((b"X Y", b"a"),)),
            RequestHead(b"GET", b"/", b"HTTP/1.1", ((b"", b"a"),)),
            RequestHead(b"GET", b"/", b"HTTP/1.1", ((b"X:", b"a"),)),
            RequestHead(b"GE T", b"/", b"HTTP/1.1"),
            RequestHead(b"GET", b"/ x", b"HTTP/1.1"),
            RequestHead(b"GET", b"", b"HTTP/1.1"),
            RequestHead(b"GET", b"/", b"HTTP/1.1\r\nX: y"),
            RequestHead(b"GET", b"/", b"HTTP/1"),
        ]
        for head in bad:
            self.assertRaises(ValueError, serializeRequestHead, head)
        self.assertEqual(serializeRequestHead(bad[0], validate=False).count(b"Injected"), 1)

    def test_responseValidation(self) -> None:
        """
        A response head that cannot be written as valid HTTP/1.1 raises
        C{ValueError}.
        """
        bad = [
            ResponseHead(b"HTTP/1.1", 200, b"OK\r\nX: y"),
            ResponseHead(b"HTTP/1.1", 99, b"Low"),
            ResponseHead(b"HTTP/1.1", 1000, b"High"),
            ResponseHead(b"HTTP/1.1", 200, b"OK", ((b"X", b"\r\n"),)),
            ResponseHead(b"HTTP/x", 200, b"OK"),
        ]
        for head in bad:
            self.assertRaises(ValueError, serializeResponseHead, head)


class SerializeTrustedHeadTests(SynchronousTestCase):
    """
    Tests for L{txproxy.http._headers.serializeTrustedHead}, the serializer
    of heads the proxy made or parsed itself.
    """

    def test_fields(self) -> None:
        """
        Each field is C{name: value} and CRLF, in order, then an empty line;
        an empty value keeps its space.
        """
        self.assertEqual(
            _headers.serializeTrustedHead(b"HTTP/1.1 200 OK\r\n", [(b"A", b"1"), (b"B", b""), (b"A", b"2")]),
            b"HTTP/1.1 200 OK\r\nA: 1\r\nB: \r\nA: 2\r\n\r\n",
        )

    def test_noFields(self) -> None:
        """
        With no field, the first line is followed by the empty line only.
        """
        self.assertEqual(_headers.serializeTrustedHead(b"GET / HTTP/1.1\r\n", ()), b"GET / HTTP/1.1\r\n\r\n")

    def test_extra(self) -> None:
        """
        C{extra} (serialized lines) comes after the fields, with or
        without fields before it.
        """
        extra = b"traceparent: 00-x\r\n"
        self.assertEqual(
            _headers.serializeTrustedHead(b"GET / HTTP/1.1\r\n", ((b"Host", b"a"),), extra),
            b"GET / HTTP/1.1\r\nHost: a\r\ntraceparent: 00-x\r\n\r\n",
        )
        self.assertEqual(
            _headers.serializeTrustedHead(b"GET / HTTP/1.1\r\n", [], extra),
            b"GET / HTTP/1.1\r\ntraceparent: 00-x\r\n\r\n",
        )

    def test_sameAsValidating(self) -> None:
        """
        For valid fields it writes what the validating serializer writes.
        """
        head = ResponseHead(b"HTTP/1.1", 404, b"Not Found", ((b"Content-Length", b"3"), (b"X-A", b"b c")))
        self.assertEqual(
            _headers.serializeTrustedHead(b"HTTP/1.1 404 Not Found\r\n", head.headers),
            serializeResponseHead(head),
        )


class URITests(SynchronousTestCase):
    """
    Tests for L{parseAuthority}, L{parseHostHeader} and L{parseAbsoluteURI}.
    """

    def test_authorityValid(self) -> None:
        """
        Host names are lower-cased, IPv6 literals lose their brackets.
        """
        cases = [
            (b"Example.COM:443", ("example.com", 443)),
            (b"a:1", ("a", 1)),
            (b"10.0.0.1:65535", ("10.0.0.1", 65535)),
            (b"[2001:DB8::1]:8443", ("2001:db8::1", 8443)),
            (b"host_name.example.:80", ("host_name.example.", 80)),
            (b"a:00080", ("a", 80)),
        ]
        for target, expected in cases:
            self.assertEqual(parseAuthority(target), expected, target)
            # Answers are kept: asking again gives the same.
            self.assertEqual(parseAuthority(target), expected, target)

    def test_authorityInvalid(self) -> None:
        """
        Missing, empty, zero or out-of-range ports, user info, bad names
        and bad IPv6 literals are C{400}.
        """
        for target in [
            b"a",
            b"a:",
            b"a:0",
            b"a:65536",
            b"a:123456",
            b"a:-1",
            b"a:+1",
            b"u@a:1",
            b":443",
            b"a b:1",
            b"-a:1",
            b".a:1",
            b"a%20b:1",
            b"[::1]",
            b"[::1:1",
            b"[::1]x:1",
            b"[fe80::1%25eth0]:1",
            b"[example.com]:1",
            b"a:1:2",
            b"a" * 300 + b":1",
        ]:
            error = self.assertRaises(HTTPError, parseAuthority, target)
            self.assertEqual(error.status, 400, target)
            # Errors are not kept: the second try is refused too.
            self.assertRaises(HTTPError, parseAuthority, target)

    def test_hostHeader(self) -> None:
        """
        A C{Host} value may omit the port (or leave it empty); the default
        port is then returned.
        """
        self.assertEqual(parseHostHeader(b"A.example"), ("a.example", 80))
        self.assertEqual(parseHostHeader(b"a:", 443), ("a", 443))
        self.assertEqual(parseHostHeader(b"a:8080"), ("a", 8080))
        self.assertEqual(parseHostHeader(b"[::1]", 443), ("::1", 443))
        self.assertRaises(HTTPError, parseHostHeader, b"")
        self.assertRaises(HTTPError, parseHostHeader, b"a/b")

    def test_absoluteValid(self) -> None:
        """
        The scheme and host are lower-cased, the port defaults to the
        scheme's, and the path and query come back in origin-form.
        """
        cases = [
            (b"http://Example.com/a?b", ("http", "example.com", 80, b"/a?b")),
            (b"HTTP://example.com", ("http", "example.com", 80, b"/")),
            (b"http://example.com:8080?q", ("http", "example.com", 8080, b"/?q")),
            (b"http://example.com:/x", ("http", "example.com", 80, b"/x")),
            (b"http://[::1]:81/x#frag", ("http", "::1", 81, b"/x")),
            (b"http://a/%7e?x=%2f", ("http", "a", 80, b"/%7e?x=%2f")),
        ]
        for target, expected in cases:
            self.assertEqual(parseAbsoluteURI(target), expected, target)
        self.assertEqual(
            parseAbsoluteURI(b"https://a/x", schemes=("http", "https")), ("https", "a", 443, b"/x")
        )

    def test_absoluteInvalid(self) -> None:
        """
        Targets that are not absolute http URIs, have user info, no host or
        a bad port are C{400}; C{https} is refused with a pointer to
        C{CONNECT} unless allowed.
        """
        for target in [
            b"/x",
            b"http:/x",
            b"http://",
            b"http:///x",
            b"http://u:p@a/",
            b"http://a:99999/",
            b"http://a b/",
            b"ftp://a/",
            b"*",
        ]:
            self.assertEqual(self.assertRaises(HTTPError, parseAbsoluteURI, target).status, 400)
        error = self.assertRaises(HTTPError, parseAbsoluteURI, b"https://a/")
        self.assertIn("CONNECT", error.reason)


def request(*headers: Tuple[bytes, bytes], version: bytes = b"HTTP/1.1") -> RequestHead:
    return RequestHead(b"POST", b"/", version, ((b"Host", b"a"),) + headers)


def response(
    *headers: Tuple[bytes, bytes], status: int = 200, version: bytes = b"HTTP/1.1"
) -> ResponseHead:
    return ResponseHead(version, status, b"", headers)


CL = b"Content-Length"
TE = b"Transfer-Encoding"


class RequestFramingTests(SynchronousTestCase):
    """
    Tests for L{requestFraming}, including every request-smuggling case
    of RFC 9112 section 6.3.
    """

    def test_validTable(self) -> None:
        """
        Unambiguous framings are recognised.
        """
        cases = [
            ((), Framing("none", 0)),
            (((CL, b"0"),), Framing("length", 0)),
            (((CL, b"42"),), Framing("length", 42)),
            (((CL, b"007"),), Framing("length", 7)),
            (((CL, b"5, 5"),), Framing("length", 5)),
            (((CL, b"5"), (b"content-length", b"5")), Framing("length", 5)),
            (((CL, b"5 ,5"), (CL, b"5")), Framing("length", 5)),
            (((CL, b"999999999999999999"),), Framing("length", 10**18 - 1)),
            (((TE, b"chunked"),), Framing("chunked", None, (b"chunked",))),
            (((TE, b"Chunked"),), Framing("chunked", None, (b"chunked",))),
            (((b"transfer-encoding", b"CHUNKED"),), Framing("chunked", None, (b"chunked",))),
        ]
        for headers, expected in cases:
            self.assertEqual(requestFraming(request(*headers)), expected, headers)

    def test_smugglingTable(self) -> None:
        """
        Every ambiguous or malformed framing is refused with the expected
        status.
        """
        cases = [
            (((TE, b"chunked"), (CL, b"5")), 400, "TE and CL"),
            (((CL, b"5"), (TE, b"chunked")), 400, "CL and TE"),
            (((CL, b"0"), (TE, b"chunked")), 400, "CL 0 and TE"),
            (((CL, b"5"), (CL, b"6")), 400, "differing CL lines"),
            (((CL, b"5, 6"),), 400, "differing CL list"),
            (((CL, b"5"), (CL, b"05")), 400, "one number spelt two ways"),
            (((CL, b"5, 05"),), 400, "one number spelt two ways in a list"),
            (((CL, b"x, x"),), 400, "identical invalid values"),
            (((CL, b"5,,5"),), 400, "empty CL list element"),
            (((CL, b""),), 400, "empty CL"),
            (((CL, b"-1"),), 400, "negative CL"),
            (((CL, b"+5"),), 400, "signed CL"),
            (((CL, b"0x10"),), 400, "hex CL"),
            (((CL, b"5 5"),), 400, "CL with inner space"),
            (((CL, b"1e3"),), 400, "exponent CL"),
            (((CL, b"\xd9\xa5"),), 400, "non-ASCII digit CL"),
            (((CL, b"1000000000000000000"),), 400, "huge CL"),
            (((CL, b"9" * 5000),), 400, "enormous CL"),
            (((TE, b"gzip"),), 400, "final coding not chunked"),
            (((TE, b"chunked, gzip"),), 400, "chunked not last"),
            (((TE, b"chunked"), (TE, b"identity")), 400, "chunked not last over two lines"),
            (((TE, b"chunked, chunked"),), 400, "chunked twice"),
            (((TE, b"chunked"), (TE, b"chunked")), 400, "chunked twice over two lines"),
            (((TE, b""),), 400, "empty TE"),
            (((TE, b"chunked,"),), 400, "TE with a trailing empty element"),
            (((TE, b", chunked"),), 400, "TE with a leading empty element"),
            (((TE, b"gzip,,chunked"),), 400, "TE with an inner empty element"),
            (((TE, b" , "),), 400, "TE of empty elements"),
            (((TE, b"chunked;x=1"),), 400, "TE with parameters"),
            (((TE, b"\"chunked\""),), 400, "quoted TE"),
            (((TE, b"chunked\x0b"),), 400, "TE with a vertical tab"),
            (((TE, b"xchunked"),), 400, "TE that only contains chunked"),
            (((TE, b"gzip, chunked"),), 501, "another coding before chunked"),
            (((TE, b"foo, chunked"),), 501, "unknown coding before chunked"),
            (((TE, b"gzip"), (TE, b"chunked")), 501, "another coding over two lines"),
        ]
        for headers, status, description in cases:
            error = self.assertRaises(HTTPError, requestFraming, request(*headers))
            self.assertEqual(error.status, status, description)

    def test_transferEncodingHTTP10(self) -> None:
        """
        C{Transfer-Encoding} in an HTTP/1.0 request is C{400}.
        """
        error = self.assertRaises(
            HTTPError, requestFraming, request((TE, b"chunked"), version=b"HTTP/1.0")
        )
        self.assertEqual(error.status, 400)

    def test_parsedSmuggling(self) -> None:
        """
        Smuggling attempts that depend on header syntax are refused by the
        head parser itself, so framing never sees them.
        """
        for raw in [
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nX: y\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\x00chunked\r\n\r\n",
        ]:
            self.assertEqual(self.assertRaises(HTTPError, parseRequestHead, raw).status, 400)


class ResponseFramingTests(SynchronousTestCase):
    """
    Tests for L{responseFraming}.
    """

    def test_noBody(self) -> None:
        """
        Responses to C{HEAD}, C{1xx}, C{204} and C{304} responses and C{2xx}
        responses to C{CONNECT} have no body whatever their headers say.
        """
        chunked = (TE, b"chunked")
        cases = [
            (b"HEAD", response((CL, b"10"))),
            (b"HEAD", response(chunked)),
            (b"GET", response(status=100)),
            (b"GET", response(status=101)),
            (b"GET", response((CL, b"5"), status=204)),
            (b"GET", response((CL, b"5"), status=304)),
            (b"CONNECT", response(chunked)),
            (b"CONNECT", response(status=299)),
        ]
        for method, head in cases:
            self.assertEqual(responseFraming(method, head), Framing("none", 0), (method, head))

    def test_table(self) -> None:
        """
        Lengths, chunked, other codings and close-delimited bodies.
        """
        cases = [
            (b"GET", response((CL, b"5")), Framing("length", 5)),
            (b"GET", response((CL, b"5, 5")), Framing("length", 5)),
            (b"GET", response((TE, b"chunked")), Framing("chunked", None, (b"chunked",))),
            (
                b"GET",
                response((TE, b"gzip, chunked")),
                Framing("chunked", None, (b"gzip", b"chunked")),
            ),
            (b"GET", response((TE, b"gzip")), Framing("close", None, (b"gzip",))),
            (b"GET", response(), Framing("close")),
            (b"GET", response(version=b"HTTP/1.0"), Framing("close")),
            (b"CONNECT", response((CL, b"3"), status=407), Framing("length", 3)),
            (b"POST", response((CL, b"0")), Framing("length", 0)),
        ]
        for method, head, expected in cases:
            self.assertEqual(responseFraming(method, head), expected, head)

    def test_malformed(self) -> None:
        """
        Ambiguous or malformed response framing is C{502}.
        """
        cases = [
            response((TE, b"chunked"), (CL, b"5")),
            response((TE, b"chunked"), version=b"HTTP/1.0"),
            response((TE, b"chunked, gzip")),
            response((TE, b"chunked, chunked")),
            response((TE, b"")),
            response((TE, b"chunked,")),
            response((TE, b"gzip, ,chunked")),
            response((CL, b"5"), (CL, b"6")),
            response((CL, b"x")),
            response((CL, b"-5")),
        ]
        for head in cases:
            error = self.assertRaises(HTTPError, responseFraming, b"GET", head)
            self.assertEqual(error.status, 502, head)


class ApplyFramingTests(SynchronousTestCase):
    """
    Tests for L{applyFraming}.
    """

    def test_length(self) -> None:
        """
        C{"length"} writes one normalized C{Content-Length} last.
        """
        headers = ((CL, b"5, 5"), (b"A", b"b"), (b"content-length", b"05"))
        self.assertEqual(
            applyFraming(headers, Framing("length", 5)), ((b"A", b"b"), (CL, b"5"))
        )

    def test_chunked(self) -> None:
        """
        C{"chunked"} writes C{Transfer-Encoding} from the codings and drops
        C{Content-Length}.
        """
        headers = ((TE, b"gzip , chunked"), (CL, b"5"))
        framing = Framing("chunked", None, (b"gzip", b"chunked"))
        self.assertEqual(applyFraming(headers, framing), ((TE, b"gzip, chunked"),))

    def test_none(self) -> None:
        """
        C{"none"} keeps C{Content-Length} (as a C{HEAD} response may carry
        one) and drops C{Transfer-Encoding}.
        """
        headers = ((CL, b"5"), (TE, b"chunked"))
        self.assertEqual(applyFraming(headers, Framing("none", 0)), ((CL, b"5"),))

    def test_close(self) -> None:
        """
        C{"close"} drops C{Content-Length} and keeps the codings.
        """
        self.assertEqual(applyFraming(((CL, b"1"),), Framing("close")), ())
        self.assertEqual(
            applyFraming(((TE, b"gzip"),), Framing("close", None, (b"gzip",))), ((TE, b"gzip"),)
        )


class HeaderHelperTests(SynchronousTestCase):
    """
    Tests for the header helpers.
    """

    def test_connectionTokens(self) -> None:
        """
        Tokens of every C{Connection} line, lower-cased, empty elements
        skipped.
        """
        headers = ((b"Connection", b"Keep-Alive, X-Foo"), (b"connection", b" ,close"), (b"X", b"a"))
        self.assertEqual(connectionTokens(headers), frozenset([b"keep-alive", b"x-foo", b"close"]))
        self.assertEqual(connectionTokens(()), frozenset())

    def test_removeHopByHop(self) -> None:
        """
        The standard hop-by-hop fields and every field C{Connection} lists
        are removed; others keep their order.  C{Trailer} is end-to-end.
        """
        headers = (
            (b"Host", b"a"),
            (b"Connection", b"X-Foo, close"),
            (b"Proxy-Connection", b"keep-alive"),
            (b"Keep-Alive", b"timeout=5"),
            (b"TE", b"trailers"),
            (b"Transfer-Encoding", b"chunked"),
            (b"Upgrade", b"websocket"),
            (b"Proxy-Authorization", b"Basic eA=="),
            (b"Proxy-Authenticate", b"Basic"),
            (b"x-foo", b"1"),
            (b"Trailer", b"X-Sum"),
            (b"Accept", b"*/*"),
        )
        self.assertEqual(
            removeHopByHop(headers), ((b"Host", b"a"), (b"Trailer", b"X-Sum"), (b"Accept", b"*/*"))
        )
        self.assertEqual(
            removeHopByHop(headers, keep=(b"upgrade",), extra=(b"trailer",)),
            ((b"Host", b"a"), (b"Upgrade", b"websocket"), (b"Accept", b"*/*")),
        )

    def test_replaceHeader(self) -> None:
        """
        The first field of that name takes the new value in place, the
        others go; a missing field is appended.
        """
        headers = ((b"A", b"1"), (b"host", b"x"), (b"B", b"2"), (b"HOST", b"y"))
        self.assertEqual(
            replaceHeader(headers, b"Host", b"z"), ((b"A", b"1"), (b"Host", b"z"), (b"B", b"2"))
        )
        self.assertEqual(replaceHeader((), b"Host", b"z"), ((b"Host", b"z"),))

    def test_removeHeader(self) -> None:
        """
        Every field of that name goes, whatever its case.
        """
        headers = ((b"A", b"1"), (b"a", b"2"), (b"B", b"3"))
        self.assertEqual(removeHeader(headers, b"A"), ((b"B", b"3"),))

    def test_appendVia(self) -> None:
        """
        A C{Via} entry naming the received protocol version and this proxy
        is added after any existing one.
        """
        headers = ((b"Via", b"1.0 fred"), (b"A", b"b"))
        self.assertEqual(
            appendVia(headers, b"HTTP/1.1"),
            ((b"Via", b"1.0 fred"), (b"A", b"b"), (b"Via", b"1.1 txproxy")),
        )
        self.assertEqual(appendVia((), b"HTTP/1.0", b"p"), ((b"Via", b"1.0 p"),))


class ForwardingFieldTests(SynchronousTestCase):
    def test_dashAndUnderscoreSpellings(self) -> None:
        """
        A forwarding field is recognised in its own spelling and in any mix
        of C{_} for C{-} (as CGI and WSGI read names); other names,
        underscored or not, are not.
        """
        from txproxy.http._headers import FORWARDING_FIELDS, isForwardingField

        for name in [b"x-forwarded-for", b"x_forwarded_for", b"x-forwarded_host", b"forwarded", b"x_real_ip",
                     b"client_ip", b"x-forwarded-port", b"true_client_ip"]:
            self.assertTrue(isForwardingField(name), name)
        for name in [b"x-custom_name", b"forwarded_", b"x-forwarded-forx", b"accept", b"x__forwarded_for", b"via"]:
            self.assertFalse(isForwardingField(name), name)
        self.assertTrue(all(name == name.lower() and b"_" not in name for name in FORWARDING_FIELDS))


class ErrorResponseTests(SynchronousTestCase):
    """
    Tests for L{errorResponse} and L{statusPhrase}.
    """

    def test_standardPhrases(self) -> None:
        """
        Each status the proxies use has its RFC 9110 phrase.
        """
        phrases = {
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
        for status, phrase in phrases.items():
            self.assertEqual(statusPhrase(status), phrase)
            data = errorResponse(status)
            self.assertTrue(data.startswith(b"HTTP/1.1 %d %s\r\n" % (status, phrase)))
            self.assertTrue(data.endswith(b"\r\n\r\n" + phrase + b"\n"))
        self.assertEqual(statusPhrase(418), b"I'm a Teapot")
        self.assertEqual(statusPhrase(599), b"Unknown")

    def test_wellFormed(self) -> None:
        """
        The response parses, is C{text/plain}, has a correct
        C{Content-Length}, C{Connection: close} and the extra headers.
        """
        data = errorResponse(429, "Slow down", [(b"Retry-After", b"3")])
        end = findHeadEnd(data)
        head = parseResponseHead(data[:end])
        self.assertEqual((head.status, head.reason), (429, b"Too Many Requests"))
        self.assertEqual(head.get(b"content-type"), b"text/plain; charset=utf-8")
        self.assertEqual(head.get(b"Retry-After"), b"3")
        self.assertFalse(head.keepAlive)
        self.assertEqual(responseFraming(b"GET", head), Framing("length", len(data) - end))
        self.assertEqual(data[end:], b"Slow down\n")

    def test_keepOpen(self) -> None:
        """
        C{close=False} leaves out C{Connection: close}.
        """
        data = errorResponse(407, close=False)
        head = parseResponseHead(data[: findHeadEnd(data)])
        self.assertIsNone(head.get(b"Connection"))

    def test_reasonSanitized(self) -> None:
        """
        Control characters in the reason cannot break the response; it is
        encoded as UTF-8.
        """
        data = errorResponse(400, "bad\r\nX-Injected: 1\x00 caf\u00e9")
        end = findHeadEnd(data)
        self.assertIsNone(parseResponseHead(data[:end]).get(b"X-Injected"))
        self.assertEqual(data[end:], b"bad  X-Injected: 1  caf\xc3\xa9\n")

    def test_badExtraHeader(self) -> None:
        """
        An invalid extra header raises C{ValueError}.
        """
        self.assertRaises(ValueError, errorResponse, 400, "", [(b"X", b"a\r\nb")])

    def test_continue(self) -> None:
        """
        L{CONTINUE_RESPONSE} is a complete C{100 Continue} head.
        """
        self.assertEqual(parseResponseHead(CONTINUE_RESPONSE).status, 100)


class LengthReaderTests(SynchronousTestCase):
    """
    Tests for L{LengthReader}.
    """

    def test_everySplit(self) -> None:
        """
        However the stream is split, the reader returns exactly the body
        and keeps the rest as leftover.
        """
        data = b"hello world" + b"NEXT"
        for pieces in splits(data):
            reader = LengthReader(11)
            self.assertEqual(feedPieces(reader, pieces), b"hello world")
            self.assertTrue(reader.ended)
            self.assertEqual(reader.remaining, 0)
            self.assertEqual(reader.leftover, b"NEXT")

    def test_zero(self) -> None:
        """
        A zero-length body has ended before any byte arrives.
        """
        reader = LengthReader(0)
        self.assertTrue(reader.ended)
        self.assertEqual(reader.feed(b"abc"), b"")
        self.assertEqual(reader.leftover, b"abc")

    def test_noCopyForWholePieces(self) -> None:
        """
        A piece that lies wholly inside the body is returned as is.
        """
        piece = b"x" * 100
        reader = LengthReader(1000)
        self.assertIs(reader.feed(piece), piece)
        self.assertEqual(reader.remaining, 900)


VALID_CHUNKED: List[Tuple[bytes, bytes, List[Tuple[bytes, bytes]]]] = [
    (b"0\r\n\r\n", b"", []),
    (b"5\r\nhello\r\n0\r\n\r\n", b"hello", []),
    (b"A\r\n0123456789\r\na\r\n0123456789\r\n000\r\n\r\n", b"01234567890123456789", []),
    (b"0005\r\nhello\r\n0\r\n\r\n", b"hello", []),
    (b"5;name\r\nhello\r\n0;last\r\n\r\n", b"hello", []),
    (b"5 ; a = b ;c=\"q \\\" ;\"\r\nhello\r\n0\r\n\r\n", b"hello", []),
    (b"5\t;a=b\r\nhello\r\n0\r\n\r\n", b"hello", []),
    (
        b"3\r\nabc\r\n0\r\nX-Sum: 123\r\nx-b:  two words \r\n\r\n",
        b"abc",
        [(b"X-Sum", b"123"), (b"x-b", b"two words")],
    ),
    (b"2\r\n\r\n\r\n0\r\n\r\n", b"\r\n", []),
]

MALFORMED_CHUNKED: List[Tuple[bytes, str]] = [
    (b"x\r\n", "non-hex size"),
    (b"\r\n", "empty size line"),
    (b"5 \r\nhello\r\n0\r\n\r\n", "space after the size"),
    (b" 5\r\nhello\r\n0\r\n\r\n", "space before the size"),
    (b"+5\r\nhello\r\n0\r\n\r\n", "signed size"),
    (b"-5\r\n", "negative size"),
    (b"0x5\r\nhello\r\n0\r\n\r\n", "0x prefix"),
    (b"5\nhello\r\n0\r\n\r\n", "bare LF after the size"),
    (b"5\rhello\r\n0\r\n\r\n", "bare CR after the size"),
    (b"5\r\nhello\n0\r\n\r\n", "bare LF after the data"),
    (b"5\r\nhelloXX0\r\n\r\n", "no CRLF after the data"),
    (b"5\r\nhello\r\r\n0\r\n\r\n", "CR CR after the data"),
    (b"5\r\nhello world\r\n0\r\n\r\n", "data longer than the size"),
    (b"11111111111111111\r\n", "seventeen hex digits"),
    (b"8000000000000000\r\n", "size of 2**63"),
    (b"5;\r\nhello\r\n0\r\n\r\n", "extension without a name"),
    (b"5;a=\r\nhello\r\n0\r\n\r\n", "extension without a value"),
    (b"5;a=\"b\r\nhello\r\n0\r\n\r\n", "unterminated quoted extension"),
    (b"5;a b\r\nhello\r\n0\r\n\r\n", "space inside an extension"),
    (b"5;a=b\x00\r\nhello\r\n0\r\n\r\n", "NUL in an extension"),
    (b"5;a=(b)\r\nhello\r\n0\r\n\r\n", "delimiter in an extension value"),
    (b"0\r\nX : y\r\n\r\n", "trailer with a space before the colon"),
    (b"0\r\nX: y\r\n z\r\n\r\n", "trailer with obs-fold"),
    (b"0\r\nNoColon\r\n\r\n", "trailer without a colon"),
    (b"0\r\nX: y\n\r\n", "trailer ending in a bare LF"),
    (b"0\r\nX: y\x00\r\n\r\n", "NUL in a trailer"),
    (b"0\r\n\n", "final blank line a bare LF"),
    (b"0\r\nX: a\r\n\n", "final blank line a bare LF after a trailer"),
]


class ChunkedReaderTests(SynchronousTestCase):
    """
    Tests for L{ChunkedReader} and L{ChunkedDecoder}.
    """

    def test_validEverySplit(self) -> None:
        """
        However a valid chunked body is split, the reader returns exactly
        its raw bytes, ends, and keeps the next message as leftover; the
        decoder returns the data and the trailers.
        """
        for body, decoded, trailers in VALID_CHUNKED:
            data = body + b"GET / HTTP/1.1\r\n"
            for pieces in splits(data):
                reader = ChunkedReader()
                self.assertEqual(feedPieces(reader, pieces), body, pieces)
                self.assertTrue(reader.ended)
                self.assertEqual(reader.leftover, b"GET / HTTP/1.1\r\n")
                self.assertEqual(reader.bodySize, len(decoded))
                decoder = ChunkedDecoder()
                self.assertEqual(feedPieces(decoder, pieces), decoded, pieces)
                self.assertTrue(decoder.ended)
                self.assertEqual(decoder.trailers, trailers)
                self.assertEqual(decoder.leftover, b"GET / HTTP/1.1\r\n")

    def test_incompleteNotEnded(self) -> None:
        """
        Every proper prefix of a chunked body leaves the reader not ended,
        and returns a prefix of the body.
        """
        body = VALID_CHUNKED[7][0]
        for i in range(len(body)):
            reader = ChunkedReader()
            out = reader.feed(body[:i])
            self.assertFalse(reader.ended, i)
            self.assertTrue(body.startswith(out))

    def test_malformedEverySplit(self) -> None:
        """
        Each malformed chunked body raises L{HTTPError} C{400} however it
        is split, and C{502} when the reader reads a response.
        """
        for body, description in MALFORMED_CHUNKED:
            for pieces in splits(body):
                reader = ChunkedReader()
                try:
                    feedPieces(reader, pieces)
                except HTTPError as error:
                    self.assertEqual(error.status, 400, description)
                else:
                    self.fail(f"{description}: accepted as split {pieces!r}")
            self.assertEqual(
                self.assertRaises(HTTPError, ChunkedReader(502).feed, body).status, 502
            )
            self.assertRaises(HTTPError, ChunkedDecoder().feed, body)

    def test_sizeLineTooLong(self) -> None:
        """
        A chunk-size line (extensions included) longer than
        C{maxLineLength} is refused, even before its end arrives.
        """
        reader = ChunkedReader()
        reader.maxLineLength = 20
        self.assertEqual(reader.feed(b"5;a=b"), b"")
        error = self.assertRaises(HTTPError, reader.feed, b";c=d" * 5)
        self.assertEqual(error.status, 400)
        reader = ChunkedReader()
        reader.maxLineLength = 20
        self.assertRaises(HTTPError, reader.feed, b"5;" + b"a" * 30 + b"\r\n")

    def test_trailersTooLarge(self) -> None:
        """
        A trailer section larger than C{maxTrailerSize} is refused.
        """
        reader = ChunkedReader()
        reader.maxTrailerSize = 20
        self.assertEqual(reader.feed(b"0\r\nX: 1\r\n"), b"0\r\nX: 1\r\n")
        self.assertRaises(HTTPError, reader.feed, b"Y: 12345678901234567890")
        reader = ChunkedReader()
        reader.maxTrailerSize = 20
        self.assertRaises(HTTPError, reader.feed, b"0\r\n" + b"X: 1\r\n" * 4)

    def test_largeChunkStreams(self) -> None:
        """
        Chunk data is returned as it arrives, without waiting for the end
        of the chunk, and a piece wholly inside a chunk is not copied.
        """
        reader = ChunkedReader()
        self.assertEqual(reader.feed(b"100000\r\n"), b"100000\r\n")
        piece = b"x" * 65536
        self.assertIs(reader.feed(piece), piece)
        self.assertEqual(reader.bodySize, 65536)
        self.assertFalse(reader.ended)

    def test_feedAfterEnd(self) -> None:
        """
        Bytes fed after the end go to the leftover.
        """
        reader = ChunkedReader()
        self.assertEqual(reader.feed(b"0\r\n\r\nA"), b"0\r\n\r\n")
        self.assertEqual(reader.feed(b"B"), b"")
        self.assertEqual(reader.leftover, b"AB")

    def test_pendingLineHeldBack(self) -> None:
        """
        An incomplete chunk-size line is held back (not returned) until it
        is complete and checked.
        """
        reader = ChunkedReader()
        self.assertEqual(reader.feed(b"5\r\nhello\r\n1"), b"5\r\nhello\r\n")
        self.assertEqual(reader.feed(b"0"), b"")
        self.assertEqual(reader.feed(b"\r\n"), b"10\r\n")


class HeadReaderLimitTests(SynchronousTestCase):
    """
    More tests for L{HeadReader}'s size limit.
    """

    def test_leadingEmptyLinesAndHeadTogether(self) -> None:
        """
        Leading empty lines and the head itself count together towards the
        limit.
        """
        reader = HeadReader(maxSize=len(GET) + 2)
        self.assertEqual(reader.feed(b"\r\n" + GET), GET)
        reader = HeadReader(maxSize=len(GET) + 1)
        self.assertEqual(self.assertRaises(HTTPError, reader.feed, b"\r\n" + GET).status, 431)

    def test_crSplitFromLF(self) -> None:
        """
        A leading empty line whose CR and LF arrive separately is skipped.
        """
        reader = HeadReader()
        self.assertIsNone(reader.feed(b"\r"))
        self.assertIsNone(reader.feed(b"\n\r"))
        self.assertEqual(reader.bufferedSize, 3)
        self.assertEqual(reader.feed(b"\n" + GET), GET)


class LinearTimeTests(SynchronousTestCase):
    """
    Adversarial heads cost linear time.  Before the header pattern was
    made unambiguous, the first of these took about a minute; the bound
    here is generous so that a loaded machine cannot fail it.
    """

    def test_pathologicalHeaderValues(self) -> None:
        """
        64 KiB heads built to make a backtracking pattern go quadratic are
        refused in well under two seconds in all.
        """
        import time

        n = 65000
        heads = [
            b"GET / HTTP/1.1\r\nHost: a\r\nX:" + b" " * n + b"\x01\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: a" + b" " * n + b"\x01\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"a \t" * (n // 3) + b"\x01\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n" + b"a: b\x01\r\n" * (n // 8) + b"\r\n",
        ]
        started = time.process_time()
        for head in heads:
            self.assertRaises(HTTPError, parseRequestHead, head)
            self.assertRaises(HTTPError, parseResponseHead, b"HTTP/1.1 200 OK" + head[14:])
        self.assertLess(time.process_time() - started, 2.0)


class RemoveHopByHopCasesTests(SynchronousTestCase):
    """
    L{removeHopByHop} gives the same answer on its precomputed fast paths
    as the general rule.
    """

    def test_connectionOptions(self) -> None:
        """
        For C{Connection} values listing only standard options, or also
        other names, every listed field and every standard hop-by-hop field
        is removed, and nothing else.
        """
        others = ((b"Close", b"x"), (b"X-A", b"1"), (b"Host", b"h"), (b"Keep-Alive", b"5"))
        for value in [b"close", b"keep-alive", b"Upgrade", b"close, keep-alive", b"x-a", b"x-a, close", b""]:
            headers = ((b"Connection", value),) + others
            listed = {token.strip().lower() for token in value.split(b",")}
            expected = tuple(
                pair
                for pair in others
                if pair[0].lower() not in listed and pair[0].lower() != b"keep-alive"
            )
            self.assertEqual(removeHopByHop(headers), expected, value)


class EndToEndTests(SynchronousTestCase):
    """
    L{txproxy.http.endToEnd}: the length pre-filter and the known-tokens
    path give what the plain rule gives.
    """

    CASES: List[Tuple[Tuple[Tuple[bytes, bytes], ...], Tuple[bytes, ...]]] = [
        (((b"Host", b"a"), (b"User-Agent", b"x"), (b"Connection", b"keep-alive"), (b"Keep-Alive", b"5")), ()),
        (((b"HOST", b"a"), (b"connection", b"close"), (b"Content-Length", b"3"), (b"TE", b"trailers")), ()),
        (((b"Connection", b"X-Foo, Content-Length"), (b"x-foo", b"1"), (b"X-Bar", b"2"), (b"content-length", b"4")), ()),
        (((b"Connection", b"host, upgrade"), (b"Host", b"a"), (b"Upgrade", b"websocket")), (b"upgrade",)),
        (((b"Connection", b"Upgrade"), (b"UPGRADE", b"h2c"), (b"Transfer-Encoding", b"chunked")), ()),
        (((b"Proxy-Connection", b"keep-alive"), (b"Proxy-Authorization", b"Basic x"), (b"Accept", b"*/*")), ()),
        (((b"Connection", b"x-a"), (b"Connection", b" x-b ,, "), (b"X-A", b"1"), (b"X-B", b"2"), (b"X-C", b"3")), ()),
        (((b"Accept", b"*/*"),), (b"upgrade",)),
    ]

    @staticmethod
    def _plain(headers: Sequence[Tuple[bytes, bytes]], keep: Sequence[bytes]) -> Tuple[list, frozenset, bool]:
        tokens = txproxy.http.connectionTokens(tuple(headers))
        remove = (txproxy.http.HOP_BY_HOP | (tokens - txproxy.http.PROTECTED)) - frozenset(keep)
        out = [(n, v) for n, v in headers if n.lower() not in remove and n.lower() != b"content-length"]
        hasLength = any(n.lower() == b"content-length" for n, _ in headers) and b"content-length" not in remove
        return out, tokens, hasLength

    def test_sameAsThePlainRule(self) -> None:
        """
        With and without the tokens given, the result is the plain rule's:
        hop-by-hop fields and what C{Connection} lists go (not C{Host}, not
        what C{keep} names), C{Content-Length} goes and is reported.
        """
        for headers, keep in self.CASES:
            expected = self._plain(headers, keep)
            tokens = txproxy.http.connectionTokens(headers)
            self.assertEqual(txproxy.http.endToEnd(headers, keep), expected, headers)
            self.assertEqual(txproxy.http.endToEnd(headers, keep, tokens), expected, headers)

    def test_tokensIgnoredWhenConnectionKept(self) -> None:
        """
        Given tokens are not used when C{keep} keeps C{Connection} itself.
        """
        headers = ((b"Connection", b"x-a"), (b"X-A", b"1"))
        self.assertEqual(
            txproxy.http.endToEnd(headers, (b"connection",), frozenset([b"x-a"])),
            txproxy.http.endToEnd(headers, (b"connection",)),
        )
