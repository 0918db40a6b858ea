# -*- test-case-name: tests.test_http_fuzz -*-
"""
Hypothesis fuzzing of L{txproxy.http}: nothing but L{HTTPError} may escape
the parsers and readers, and what they accept must survive serializing and
parsing again unchanged (and, where httptools is installed, agree with
llhttp).

Example counts are bounded so the module runs in a few seconds.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from txproxy.http import (
    ChunkedDecoder,
    ChunkedReader,
    HeadReader,
    HTTPError,
    RequestHead,
    ResponseHead,
    findHeadEnd,
    parseAbsoluteURI,
    parseAuthority,
    parseRequestHead,
    parseResponseHead,
    requestFraming,
    responseFraming,
    serializeRequestHead,
    serializeResponseHead,
)

try:
    import httptools  # type: ignore[import-untyped]
except ImportError:  # pragma: no cover - PyPy
    httptools = None

# llhttp knows only registered methods; compare with it on these.
LLHTTP_METHODS = frozenset([b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"CONNECT", b"PATCH"])

FUZZ = settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

TCHARS = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# Bytes that matter to HTTP framing, mixed into otherwise plausible text.
NASTY = [b" ", b"\t", b"\r", b"\n", b"\r\n", b":", b",", b";", b"\x00", b"\x7f", b"\x80", b"\xff",
         b"\x0b", b"\"", b"\\", b"=", b"chunked", b"Content-Length", b"Transfer-Encoding",
         b"Host", b"HTTP/1.1", b"0", b"-1"]

token = st.binary(min_size=1, max_size=12).map(
    lambda b: bytes(TCHARS[x % len(TCHARS)] for x in b)
)
plain = st.binary(max_size=20).map(lambda b: bytes(0x20 + x % 0x5F for x in b))
piece = st.one_of(token, plain, st.sampled_from(NASTY), st.binary(max_size=4))
text = st.lists(piece, max_size=6).map(b"".join)

headerNames = st.one_of(
    token,
    st.sampled_from(
        [b"Content-Length", b"Transfer-Encoding", b"Connection", b"content-length",
         b"TRANSFER-ENCODING", b"Expect"]
    ),
)
nastyNames = st.one_of(text, st.sampled_from([b"Host", b"Content-Length ", b" Transfer-Encoding"]))
headerValues = st.one_of(
    plain,
    st.sampled_from(
        [b"chunked", b"gzip, chunked", b"chunked, gzip", b"5", b"5, 5", b"5, 6", b"0",
         b" 3 ", b"close", b"keep-alive", b"identity", b"Chunked", b"chunked,"]
    ),
)
# Header names with the values that make sense for them (and some that
# do not quite).
FIELDS = {
    "other": (headerNames, headerValues),
    "length": (
        st.sampled_from([b"Content-Length", b"content-length", b"CONTENT-LENGTH"]),
        st.sampled_from([b"0", b"5", b"5, 5", b"5,5", b"05", b"5, 6", b"", b"-1", b"+5", b"0x5", b"1 0"]),
    ),
    "coding": (
        st.sampled_from([b"Transfer-Encoding", b"transfer-encoding"]),
        st.sampled_from([b"chunked", b"Chunked", b"gzip, chunked", b"chunked, gzip", b"identity",
                         b"chunked,", b", chunked", b"chunked;q=1", b"", b"gzip"]),
    ),
    "connection": (
        st.sampled_from([b"Connection", b"connection"]),
        st.sampled_from([b"close", b"keep-alive", b"Upgrade", b"close, x-a", b""]),
    ),
}


@st.composite
def requestHeads(draw: st.DrawFn) -> bytes:
    """
    Mostly plausible request heads, each part replaced by something nasty
    now and then (Hypothesis on its own favours the nasty branches so much
    that few heads would get past the request line).
    """
    rnd = draw(st.randoms(use_true_random=True))

    def pick(nice: st.SearchStrategy[bytes], nasty: st.SearchStrategy[bytes]) -> bytes:
        return draw(nasty if rnd.random() < 0.06 else nice)

    method = pick(
        st.sampled_from([b"GET", b"POST", b"PUT", b"OPTIONS", b"CONNECT"]), st.one_of(token, text)
    )
    if method == b"CONNECT":
        nice = st.sampled_from([b"a.example:443", b"[::1]:80", b"A.example:0443"])
    elif method == b"OPTIONS":
        nice = st.sampled_from([b"*", b"/"])
    else:
        nice = st.one_of(
            plain.map(lambda b: b"/" + b.replace(b" ", b"")),
            st.sampled_from([b"http://a.example/x", b"http://[::1]:8080?q"]),
        )
    target = pick(nice, text)
    version = pick(
        st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]),
        st.sampled_from([b"HTTP/2.0", b"HTTP/1.1 ", b"HTTP/1.2"]),
    )
    sep = pick(st.just(b" "), st.sampled_from([b"\t", b"  "]))
    lines = [method + sep + target + b" " + version]
    if rnd.random() > 0.06:
        lines.append(b"Host: " + pick(st.just(b"a.example"), headerValues))
    for _ in range(draw(st.integers(0, 6))):
        kind = rnd.choice(["other", "other", "length", "coding", "connection"])
        name = pick(FIELDS[kind][0], nastyNames)
        colon = pick(st.sampled_from([b": ", b":"]), st.sampled_from([b" : ", b":\t", b"\t:"]))
        value = pick(FIELDS[kind][1], text)
        lines.append(name + colon + value)
    eol = pick(st.just(b"\r\n"), st.sampled_from([b"\n", b"\r"]))
    return eol.join(lines) + b"\r\n\r\n"


@st.composite
def responseHeads(draw: st.DrawFn) -> bytes:
    """
    Mostly plausible response heads, with nasty bytes mixed in.
    """
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2", b"http/1.1"]))
    status = draw(st.one_of(st.integers(0, 1000).map(lambda i: b"%d" % i), text))
    reason = draw(st.one_of(plain, text))
    lines = [version + b" " + status + b" " + reason]
    for name, value in draw(st.lists(st.tuples(headerNames, headerValues), max_size=6)):
        lines.append(name + b": " + value)
    return b"\r\n".join(lines) + b"\r\n\r\n"


def stripped(headers: Tuple[Tuple[bytes, bytes], ...]) -> Tuple[Tuple[bytes, bytes], ...]:
    return tuple((name, value.strip(b" \t")) for name, value in headers)


def checkHeaders(case: SynchronousTestCase, headers: Tuple[Tuple[bytes, bytes], ...]) -> None:
    """
    Every parsed header is a token name and a value without line breaks,
    control characters or surrounding whitespace.
    """
    for name, value in headers:
        case.assertTrue(name and all(c in TCHARS for c in name), name)
        case.assertFalse(any(c < 0x20 and c != 9 or c == 0x7F for c in value), value)
        case.assertEqual(value, value.strip(b" \t"))


class ParserFuzzTests(SynchronousTestCase):
    """
    Fuzzing the head parsers.
    """

    @FUZZ
    @given(st.binary(max_size=300))
    def test_requestArbitraryBytes(self, data: bytes) -> None:
        """
        Arbitrary bytes either parse as a request head or raise
        L{HTTPError}; nothing else escapes.
        """
        try:
            parseRequestHead(data)
        except HTTPError:
            pass

    @FUZZ
    @given(st.binary(max_size=300))
    def test_responseArbitraryBytes(self, data: bytes) -> None:
        """
        Arbitrary bytes either parse as a response head or raise
        L{HTTPError} C{502}.
        """
        try:
            parseResponseHead(data)
        except HTTPError as error:
            self.assertEqual(error.status, 502)

    @FUZZ
    @given(requestHeads())
    def test_requestRoundTrip(self, data: bytes) -> None:
        """
        A request head that parses has clean headers, a framing decision
        (or an L{HTTPError}), and serializes to bytes that parse to the
        same head and serialize to the same bytes again.  Where httptools
        is installed, llhttp reads the same method, target and headers
        (or refuses the head: it is stricter in places).
        """
        try:
            head = parseRequestHead(data)
        except HTTPError as error:
            self.assertIn(error.status, (400, 431, 505))
            return
        checkHeaders(self, head.headers)
        try:
            requestFraming(head)
        except HTTPError as error:
            self.assertIn(error.status, (400, 501))
        if head.method == b"CONNECT":
            parseAuthority(head.target)
        elif head.target.startswith(b"http://"):
            try:
                parseAbsoluteURI(head.target)
            except HTTPError as error:
                self.assertEqual(error.status, 400)
        wire = serializeRequestHead(head)
        again = parseRequestHead(wire)
        self.assertEqual(again, head)
        self.assertEqual(serializeRequestHead(again), wire)
        end = findHeadEnd(data)
        self.assertEqual(end, len(data))
        if httptools is not None and head.method in LLHTTP_METHODS:
            theirs = llhttpRequest(wire)
            if theirs is not None:
                self.assertEqual(theirs, (head.method, head.target, head.headers))

    @FUZZ
    @given(responseHeads())
    def test_responseRoundTrip(self, data: bytes) -> None:
        """
        A response head that parses has clean headers, a framing decision
        (or an L{HTTPError} C{502}), and round-trips through the
        serializer.
        """
        try:
            head = parseResponseHead(data)
        except HTTPError as error:
            self.assertEqual(error.status, 502)
            return
        checkHeaders(self, head.headers)
        for method in (b"GET", b"HEAD", b"CONNECT"):
            try:
                responseFraming(method, head)
            except HTTPError as error:
                self.assertEqual(error.status, 502)
        wire = serializeResponseHead(head)
        self.assertEqual(parseResponseHead(wire), head)

    @FUZZ
    @given(
        st.tuples(text, text, st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"])),
        st.lists(st.tuples(st.one_of(token, text), st.one_of(plain, text)), max_size=5),
    )
    def test_serializeNeverInjects(
        self, line: Tuple[bytes, bytes, bytes], headers: List[Tuple[bytes, bytes]]
    ) -> None:
        """
        Serializing an arbitrary request head either raises C{ValueError}
        or gives bytes that parse back (when they parse at all) to exactly
        that head, values stripped: no header or line can be injected.
        """
        head = RequestHead(line[0], line[1], line[2], headers)
        try:
            wire = serializeRequestHead(head)
        except ValueError:
            return
        try:
            parsed = parseRequestHead(wire)
        except HTTPError:
            return
        self.assertEqual(parsed, RequestHead(head.method, head.target, head.version, stripped(head.headers)))

    @FUZZ
    @given(st.integers(0, 999), text, st.lists(st.tuples(st.one_of(token, text), text), max_size=5))
    def test_serializeResponseNeverInjects(
        self, status: int, reason: bytes, headers: List[Tuple[bytes, bytes]]
    ) -> None:
        """
        Serializing an arbitrary response head either raises C{ValueError}
        or gives bytes that parse back to exactly that head.
        """
        head = ResponseHead(b"HTTP/1.1", status, reason, headers)
        try:
            wire = serializeResponseHead(head)
        except ValueError:
            return
        self.assertEqual(
            parseResponseHead(wire), ResponseHead(b"HTTP/1.1", status, reason, stripped(head.headers))
        )

    @FUZZ
    @given(requestHeads(), st.lists(st.integers(1, 40), max_size=10))
    def test_headReaderAgreesWithFindHeadEnd(self, data: bytes, cuts: List[int]) -> None:
        """
        L{HeadReader} fed in arbitrary pieces finds the same head as
        L{findHeadEnd} on the whole buffer.
        """
        data = data + b"NEXT"
        reader = HeadReader()
        head: Optional[bytes] = None
        pos = 0
        for size in cuts + [len(data)]:
            head = reader.feed(data[pos : pos + size])
            pos += size
            if head is not None:
                break
        end = findHeadEnd(data)
        # The reader drops the empty lines before the head.
        skip = 0
        while data.startswith(b"\r\n", skip):
            skip += 2
        self.assertEqual(head, data[skip:end])
        self.assertEqual(reader.leftover + data[pos:], data[end:])


def llhttpRequest(wire: bytes) -> Optional[Tuple[bytes, bytes, Tuple[Tuple[bytes, bytes], ...]]]:
    """
    Parse a request head with httptools (llhttp).

    @return: the method, target and headers llhttp read, or L{None} if it
        refused the head.
    """
    headers: List[Tuple[bytes, bytes]] = []
    url = [b""]

    class Collector:
        def on_url(self, data: bytes) -> None:
            url[0] += data

        def on_header(self, name: bytes, value: bytes) -> None:
            headers.append((name, value))

    parser = httptools.HttpRequestParser(Collector())
    try:
        parser.feed_data(wire)
    except httptools.HttpParserUpgrade:
        pass
    except httptools.HttpParserError:
        # llhttp is stricter in places (Content-Length lists, for one).
        return None
    return parser.get_method(), url[0], stripped(tuple(headers))


@st.composite
def chunkedBodies(draw: st.DrawFn) -> Tuple[bytes, bytes, List[Tuple[bytes, bytes]]]:
    """
    Valid chunked bodies: (raw, decoded data, trailers).
    """
    raw = []
    data = []
    for chunk in draw(st.lists(st.binary(min_size=1, max_size=40), max_size=5)):
        size = draw(st.sampled_from([b"%x", b"%X", b"%04x"])) % len(chunk)
        ext = draw(st.sampled_from([b"", b";a", b";a=b", b" ; a = \"x;y\"", b";a=b;c"]))
        raw.append(size + ext + b"\r\n" + chunk + b"\r\n")
        data.append(chunk)
    raw.append(b"0\r\n")
    trailers = draw(st.lists(st.tuples(token, plain.map(lambda b: b.strip(b" "))), max_size=3))
    for name, value in trailers:
        raw.append(name + b": " + value + b"\r\n")
    raw.append(b"\r\n")
    return b"".join(raw), b"".join(data), trailers


class ChunkedFuzzTests(SynchronousTestCase):
    """
    Fuzzing L{ChunkedReader} and L{ChunkedDecoder}.
    """

    @FUZZ
    @given(st.lists(st.one_of(text, st.binary(max_size=30)), max_size=8))
    def test_arbitraryPieces(self, pieces: List[bytes]) -> None:
        """
        Arbitrary pieces either are read (returning only a prefix of the
        input, never more) or raise L{HTTPError} C{400}.
        """
        reader = ChunkedReader()
        out = []
        try:
            for piece in pieces:
                out.append(reader.feed(piece))
        except HTTPError as error:
            self.assertEqual(error.status, 400)
            return
        whole = b"".join(pieces)
        self.assertTrue(whole.startswith(b"".join(out)))
        if reader.ended:
            self.assertEqual(b"".join(out) + reader.leftover, whole)

    @FUZZ
    @given(chunkedBodies(), st.lists(st.integers(1, 30), max_size=12), st.binary(max_size=10))
    def test_validBodies(
        self,
        body: Tuple[bytes, bytes, List[Tuple[bytes, bytes]]],
        cuts: List[int],
        after: bytes,
    ) -> None:
        """
        A valid chunked body cut anywhere is relayed byte for byte, decoded
        to its data and trailers, and the bytes after it are left over.
        """
        raw, data, trailers = body
        stream = raw + after
        pieces = []
        pos = 0
        for size in cuts + [len(stream)]:
            pieces.append(stream[pos : pos + size])
            pos += size
        reader = ChunkedReader()
        decoder = ChunkedDecoder()
        self.assertEqual(b"".join(reader.feed(p) for p in pieces), raw)
        self.assertEqual(b"".join(decoder.feed(p) for p in pieces), data)
        self.assertTrue(reader.ended and decoder.ended)
        self.assertEqual(reader.leftover, after)
        self.assertEqual(decoder.trailers, trailers)


def llhttpChunked(raw: bytes) -> Tuple[bool, bool, bytes]:
    """
    Give llhttp a chunked request body.

    @return: whether llhttp refused it, whether it saw the message end,
        and the body data it decoded.
    """
    state = {"done": False}
    body: List[bytes] = []

    class Collector:
        def on_body(self, data: bytes) -> None:
            body.append(data)

        def on_message_complete(self) -> None:
            state["done"] = True

    parser = httptools.HttpRequestParser(Collector())
    head = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    try:
        parser.feed_data(head + raw)
    except httptools.HttpParserError:
        return True, state["done"], b"".join(body)
    return False, state["done"], b"".join(body)


@st.composite
def mutatedChunkedBodies(draw: st.DrawFn) -> bytes:
    """
    Valid chunked bodies with a few bytes inserted, deleted or replaced.
    """
    raw = bytearray(draw(chunkedBodies())[0])
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.integers(0, len(raw)))
        what = draw(st.sampled_from([b"\r", b"\n", b" ", b"\t", b";", b"=", b"\"", b"0", b"f", b"x", b"\x00", b":"]))
        action = draw(st.sampled_from(["insert", "delete", "replace"]))
        if action == "insert":
            raw[where:where] = what
        elif action == "delete":
            del raw[where : where + 1]
        else:
            raw[where : where + 1] = what
    return bytes(raw)


class ChunkedDifferentialTests(SynchronousTestCase):
    """
    Where L{ChunkedReader} accepts a chunked body, llhttp (a widely
    deployed parser) must see the same message end and the same data: if
    they disagreed, a proxy built on one in front of a server built on the
    other could be made to smuggle a request.
    """


    @FUZZ
    @given(st.one_of(mutatedChunkedBodies(), chunkedBodies().map(lambda body: body[0])))
    def test_sameEndAsLLHTTP(self, raw: bytes) -> None:
        """
        When the reader accepts and ends a body, llhttp either refuses it
        (it is stricter about whitespace in chunk extensions, which RFC
        9112 section 7.1.1 allows) or reads a complete message with the
        same data, and not one byte earlier; when the reader accepts but
        has not ended, llhttp has not ended either.
        """
        reader = ChunkedDecoder()
        try:
            data = reader.feed(raw)
        except HTTPError:
            return
        if reader.ended:
            consumed = raw[: len(raw) - len(reader.leftover)]
            refused, done, body = llhttpChunked(consumed)
            if not refused:
                self.assertEqual((done, body), (True, data))
            self.assertFalse(llhttpChunked(consumed[:-1])[1])
        else:
            self.assertFalse(llhttpChunked(raw)[1])


def llhttpCompletes(stream: bytes) -> Tuple[bool, bool]:
    """
    Give llhttp a request stream.

    @return: whether llhttp refused it (or switched protocols), and whether
        it saw a complete message.
    """
    state = {"done": False}

    class Collector:
        def on_message_complete(self) -> None:
            state["done"] = True

    parser = httptools.HttpRequestParser(Collector())
    try:
        parser.feed_data(stream)
    except (httptools.HttpParserError, httptools.HttpParserUpgrade):
        return True, state["done"]
    return False, state["done"]


class FramingDifferentialTests(SynchronousTestCase):
    """
    Where the parser and L{requestFraming} accept a request, llhttp must
    find the request's end at the same byte (or refuse it).
    """


    @FUZZ
    @given(requestHeads(), st.binary(max_size=12), st.sampled_from([b"", b"5\r\nhello\r\n0\r\n\r\n", b"0\r\n\r\n"]))
    def test_sameEndAsLLHTTP(self, data: bytes, junk: bytes, chunked: bytes) -> None:
        """
        The end of an accepted request (head plus the body its framing
        says) is where llhttp completes the message, unless llhttp
        refuses it.
        """
        try:
            head = parseRequestHead(data)
            framing = requestFraming(head)
        except HTTPError:
            return
        if head.method not in LLHTTP_METHODS or head.method == b"CONNECT":
            return
        stream = data + chunked + junk
        end: Optional[int]
        if framing.kind == "none":
            end = len(data)
        elif framing.kind == "length":
            assert framing.length is not None
            end = len(data) + framing.length
            if end > len(stream):
                end = None
        else:
            reader = ChunkedReader()
            try:
                reader.feed(stream[len(data) :])
            except HTTPError:
                return
            end = len(stream) - len(reader.leftover) if reader.ended else None
        if end is None:
            self.assertFalse(llhttpCompletes(stream)[1])
            return
        refused, done = llhttpCompletes(stream[:end])
        if not refused:
            self.assertTrue(done)
        self.assertFalse(llhttpCompletes(stream[: end - 1])[1])


@st.composite
def plausibleResponses(draw: st.DrawFn) -> bytes:
    """
    Response heads that mostly parse, with framing fields in the mix.
    """
    rnd = draw(st.randoms(use_true_random=True))
    version = rnd.choice([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"])
    status = rnd.choice([b"200", b"200", b"204", b"304", b"100", b"404", b"500", b"101"])
    lines = [version + b" " + status + b" Reason"]
    for _ in range(rnd.randint(0, 4)):
        kind = rnd.choice(["other", "length", "coding", "connection"])
        lines.append(draw(FIELDS[kind][0]) + b": " + draw(FIELDS[kind][1]))
    return b"\r\n".join(lines) + b"\r\n\r\n"


def llhttpResponseCompletes(stream: bytes) -> Tuple[bool, bool]:
    """
    Give llhttp a response stream (to a C{GET}).

    @return: whether llhttp refused it, and whether it saw a complete
        message.
    """
    state = {"done": False}

    class Collector:
        def on_message_complete(self) -> None:
            state["done"] = True

    parser = httptools.HttpResponseParser(Collector())
    try:
        parser.feed_data(stream)
    except (httptools.HttpParserError, httptools.HttpParserUpgrade):
        return True, state["done"]
    return False, state["done"]


class ResponseFramingDifferentialTests(SynchronousTestCase):
    """
    Where L{parseResponseHead} and L{responseFraming} accept a response to
    a C{GET} with a length or chunked body, llhttp must find the same end.
    """


    @FUZZ
    @given(plausibleResponses(), st.sampled_from([b"", b"hello", b"5\r\nhello\r\n0\r\n\r\n"]))
    def test_sameEndAsLLHTTP(self, data: bytes, body: bytes) -> None:
        """
        The end of an accepted response with a length or chunked body is
        where llhttp completes the message, unless llhttp refuses it.
        Interim (1xx) and close-delimited responses are left out: llhttp
        treats those as the start of a stream, not a whole message.
        """
        try:
            head = parseResponseHead(data)
            framing = responseFraming(b"GET", head)
        except HTTPError:
            return
        if head.status < 200:
            return
        stream = data + body + b"HTTP/1.1 200 OK\r\n"
        if framing.kind == "none":
            end = len(data)
        elif framing.kind == "length":
            assert framing.length is not None
            end = len(data) + framing.length
        elif framing.kind == "chunked":
            reader = ChunkedReader(502)
            try:
                reader.feed(stream[len(data) :])
            except HTTPError:
                return
            if not reader.ended:
                return
            end = len(stream) - len(reader.leftover)
        else:
            return
        if end > len(stream):
            return
        refused, done = llhttpResponseCompletes(stream[:end])
        if not refused:
            self.assertTrue(done)
        self.assertFalse(llhttpResponseCompletes(stream[: end - 1])[1])


if httptools is None:  # pragma: no cover - PyPy
    # llhttp (httptools) builds on CPython only: the differential checks
    # against it exist where it does, and are not collected elsewhere (a
    # skipped test would look like coverage that is not there).
    del ChunkedDifferentialTests, FramingDifferentialTests, ResponseFramingDifferentialTests
