# -*- test-case-name: tests.test_h2_translate -*-
"""
Tests for L{txproxy.h2._translate}: HTTP/2 header lists to HTTP/1.1 heads
and back, RFC 9113 validation, chunk encoding, and L{MessageReader} fed
split at every byte.
"""

from __future__ import annotations

import random
from typing import Callable, List, Sequence, Tuple

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import RequestReceived, ResponseReceived
from twisted.trial.unittest import SynchronousTestCase

from txproxy.h2 import _fields, _reader, _translate
from txproxy.h2._translate import (
    Data,
    End,
    Event,
    H1Request,
    Head,
    MessageReader,
    StreamError,
    Trailers,
    chunk,
    h2RequestHeaders,
    h2ResponseHeaders,
    headerListSize,
    lastChunk,
    requestFromH2,
    responseFromH2,
)
from txproxy.http import ChunkedDecoder, parseRequestHead, parseResponseHead, serializeTrustedHead

Headers = List[Tuple[bytes, bytes]]

GET: Headers = [
    (b":method", b"GET"),
    (b":scheme", b"https"),
    (b":authority", b"example.com"),
    (b":path", b"/index.html?q=1"),
]


def get(*fields: Tuple[bytes, bytes]) -> Headers:
    """
    A GET request header list with C{fields} after the pseudo-headers.
    """
    return GET + list(fields)


class PublicNamesTests(SynchronousTestCase):
    def test_reexported(self) -> None:
        """
        The names the shims import from L{_translate} are the objects of
        the private modules that define them.
        """
        self.assertIs(_translate.StreamError, _fields.StreamError)
        self.assertIs(_translate.h2RequestHeaders, _fields.h2RequestHeaders)
        self.assertIs(_translate.MessageReader, _reader.MessageReader)
        for name in _translate.__all__:
            self.assertTrue(hasattr(_translate, name), name)


class StreamErrorTests(SynchronousTestCase):
    def test_attributes(self) -> None:
        """
        L{StreamError} carries a reason and an RST_STREAM code, PROTOCOL_ERROR
        (1) unless told otherwise.
        """
        error = StreamError("Bad thing")
        self.assertEqual((error.reason, error.code), ("Bad thing", 1))
        self.assertEqual(str(error), "Bad thing")
        error = StreamError("Ours", 2)
        self.assertEqual((error.reason, error.code), ("Ours", 2))
        self.assertEqual(repr(error), "StreamError('Ours', 2)")


class HeaderListSizeTests(SynchronousTestCase):
    def test_size(self) -> None:
        """
        Each field counts its name, its value and 32 bytes.
        """
        self.assertEqual(headerListSize([]), 0)
        self.assertEqual(headerListSize([(b":method", b"GET"), (b"a", b"")]), 7 + 3 + 32 + 1 + 32)


class RequestFromH2Tests(SynchronousTestCase):
    def translate(
        self, headers: Headers, endStream: bool = True, absoluteForm: bool = False
    ) -> H1Request:
        """
        Translate, and check that the head parses as HTTP/1.1.
        """
        request = requestFromH2(headers, endStream, absoluteForm)
        parsed = parseRequestHead(request.head)
        self.assertEqual(parsed.method, request.method)
        self.assertEqual(parsed.headers[0], (b"Host", request.authority))
        self.assertTrue(request.head.endswith(b"\r\n\r\n"))
        return request

    def test_checkedAuthority(self) -> None:
        """
        An authority given as already C{checked} (an earlier request's on
        the connection) is not checked again; any other still is, as is
        C{Host} without one.
        """
        bad = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"u@a.test"), (b":path", b"/")]
        self.assertEqual(requestFromH2(bad, True, False, checked=b"u@a.test").authority, b"u@a.test")
        self.assertRaises(StreamError, requestFromH2, bad, True, False, checked=b"a.test")
        self.assertRaises(StreamError, requestFromH2, bad, True, False)
        host = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b"host", b"a.test:99999")]
        self.assertRaises(StreamError, requestFromH2, host, True, False, checked=b"a.test")
        self.assertEqual(requestFromH2(host, True, False, checked=b"a.test:99999").authority, b"a.test:99999")

    def test_headWhenAskedFor(self) -> None:
        """
        The HTTP/1.1 head is made when first asked for, from the target
        and fields, and kept.
        """
        request = requestFromH2(GET, True, False)
        self.assertIsNone(request._head)
        head = request.head
        self.assertEqual(head, serializeTrustedHead(b"GET " + request.target + b" HTTP/1.1\r\n", request.fields))
        self.assertIs(request.head, head)
        self.assertNotEqual(request, requestFromH2(GET, False, False))

    def test_originForm(self) -> None:
        """
        A GET becomes an origin-form request line, C{Host} first, other
        fields in order.
        """
        request = self.translate(get((b"accept", b"*/*"), (b"user-agent", b"curl/8")))
        self.assertEqual(
            request,
            H1Request(
                b"GET /index.html?q=1 HTTP/1.1\r\nHost: example.com\r\n"
                b"accept: */*\r\nuser-agent: curl/8\r\n\r\n",
                b"GET",
                b"example.com",
                None,
                False,
                False,
            ),
        )

    def test_absoluteForm(self) -> None:
        """
        For a forward proxy the target is C{scheme://authority/path}.
        """
        request = self.translate(GET, absoluteForm=True)
        self.assertEqual(
            request.head,
            b"GET https://example.com/index.html?q=1 HTTP/1.1\r\nHost: example.com\r\n\r\n",
        )

    def test_optionsAsterisk(self) -> None:
        """
        C{OPTIONS} with C{:path *} is asterisk-form, or C{scheme://authority}
        in absolute form.
        """
        headers: Headers = [
            (b":method", b"OPTIONS"),
            (b":scheme", b"http"),
            (b":authority", b"example.com:8080"),
            (b":path", b"*"),
        ]
        self.assertTrue(self.translate(headers).head.startswith(b"OPTIONS * HTTP/1.1\r\n"))
        self.assertTrue(
            self.translate(headers, absoluteForm=True).head.startswith(
                b"OPTIONS http://example.com:8080 HTTP/1.1\r\n"
            )
        )

    def test_connect(self) -> None:
        """
        A C{CONNECT} has C{:method} and C{:authority} only and becomes an
        authority-form request without framing.
        """
        request = self.translate(
            [(b":method", b"CONNECT"), (b":authority", b"example.com:443"), (b"user-agent", b"x")],
            endStream=False,
        )
        self.assertEqual(
            request,
            H1Request(
                b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nuser-agent: x\r\n\r\n",
                b"CONNECT",
                b"example.com:443",
                None,
                False,
                True,
            ),
        )
        self.assertEqual(
            self.translate([(b":method", b"CONNECT"), (b":authority", b"[::1]:22")]).authority,
            b"[::1]:22",
        )

    def test_chunkedWhenLengthUnknown(self) -> None:
        """
        A stream that goes on after its headers without C{content-length}
        gets C{Transfer-Encoding: chunked}, last.
        """
        request = self.translate(
            [(b":method", b"POST")] + GET[1:] + [(b"a", b"b")], endStream=False
        )
        self.assertTrue(request.chunked)
        self.assertIsNone(request.contentLength)
        self.assertTrue(request.head.endswith(b"a: b\r\nTransfer-Encoding: chunked\r\n\r\n"))

    def test_contentLength(self) -> None:
        """
        C{content-length} is kept (once, when repeated with the same value),
        and the body is not chunked.
        """
        request = self.translate(
            get((b"content-length", b"12"), (b"x", b"y"), (b"content-length", b"12")),
            endStream=False,
        )
        self.assertEqual((request.contentLength, request.chunked), (12, False))
        self.assertEqual(parseRequestHead(request.head).getAll(b"content-length"), [b"12"])
        request = self.translate(get((b"content-length", b"0")), endStream=True)
        self.assertEqual((request.contentLength, request.chunked), (0, False))

    def test_endStreamNoBody(self) -> None:
        """
        A request that ends with its headers has no framing fields.
        """
        request = self.translate(GET, endStream=True)
        self.assertFalse(request.chunked)
        self.assertNotIn(b"Transfer-Encoding", request.head)

    def test_cookiesJoined(self) -> None:
        """
        C{cookie} fields are joined with C{"; "} where the first one was
        (RFC 9113 section 8.2.3); empty ones are dropped, and so is a
        C{cookie} field made only of empty ones.
        """
        request = self.translate(
            get((b"cookie", b"a=1"), (b"accept", b"*/*"), (b"cookie", b""), (b"cookie", b"b=2"))
        )
        self.assertEqual(
            parseRequestHead(request.head).headers[1:],
            ((b"cookie", b"a=1; b=2"), (b"accept", b"*/*")),
        )
        request = self.translate(get((b"cookie", b""), (b"accept", b"*/*")))
        self.assertEqual(parseRequestHead(request.head).headers[1:], ((b"accept", b"*/*"),))

    def test_teTrailersKept(self) -> None:
        """
        C{te: trailers} is forwarded (gRPC needs it).
        """
        request = self.translate(get((b"te", b"trailers")))
        self.assertEqual(parseRequestHead(request.head).get(b"te"), b"trailers")

    def test_hostField(self) -> None:
        """
        A C{Host} equal to C{:authority} (case aside) is merged into the one
        C{Host}; without C{:authority}, C{Host} gives the authority; with
        neither, C{Host} is empty (RFC 9112 section 3.2).
        """
        request = self.translate(get((b"host", b"EXAMPLE.com")))
        self.assertEqual(parseRequestHead(request.head).getAll(b"host"), [b"example.com"])
        noAuthority = [pair for pair in GET if pair[0] != b":authority"]
        request = self.translate(noAuthority + [(b"host", b"other.example:81")], absoluteForm=True)
        self.assertEqual(request.authority, b"other.example:81")
        self.assertTrue(
            request.head.startswith(b"GET https://other.example:81/index.html?q=1 HTTP/1.1\r\n")
        )
        request = self.translate(noAuthority)
        self.assertEqual(request.authority, b"")
        self.assertTrue(request.head.startswith(b"GET /index.html?q=1 HTTP/1.1\r\nHost: \r\n"))

    def test_valuesWithObsTextAndTabs(self) -> None:
        """
        Values may hold obs-text and inner whitespace; an empty value is
        fine.
        """
        request = self.translate(get((b"x-a", b"caf\xc3\xa9 \t x"), (b"x-empty", b"")))
        self.assertEqual(
            parseRequestHead(request.head).headers[1:],
            ((b"x-a", b"caf\xc3\xa9 \t x"), (b"x-empty", b"")),
        )


class RequestValidationTests(SynchronousTestCase):
    """
    Each malformed request (RFC 9113 sections 8.1.1, 8.2, 8.3) is refused
    with a precise reason and PROTOCOL_ERROR.
    """

    def assertMalformed(
        self, headers: Headers, reason: str, endStream: bool = True, absoluteForm: bool = False
    ) -> None:
        error = self.assertRaises(StreamError, requestFromH2, headers, endStream, absoluteForm)
        self.assertEqual((error.reason, error.code), (reason, 1))

    def test_uppercaseName(self) -> None:
        self.assertMalformed(get((b"Accept", b"*/*")), "Uppercase field name")

    def test_invalidName(self) -> None:
        self.assertMalformed(get((b"x y", b"1")), "Invalid field name")
        self.assertMalformed(get((b"x\xc3\xa9", b"1")), "Invalid field name")

    def test_emptyName(self) -> None:
        self.assertMalformed(get((b"", b"1")), "Empty field name")

    def test_nulInValue(self) -> None:
        self.assertMalformed(get((b"x", b"a\x00b")), "NUL, CR or LF in field value")

    def test_crInValue(self) -> None:
        self.assertMalformed(get((b"x", b"a\rb")), "NUL, CR or LF in field value")

    def test_lfInValue(self) -> None:
        self.assertMalformed(get((b"x", b"a\nInjected: yes")), "NUL, CR or LF in field value")

    def test_controlCharacterInValue(self) -> None:
        self.assertMalformed(get((b"x", b"a\x01b")), "Control character in field value")
        self.assertMalformed(get((b"x", b"a\x7fb")), "Control character in field value")

    def test_leadingWhitespace(self) -> None:
        self.assertMalformed(get((b"x", b" a")), "Whitespace around field value")

    def test_trailingWhitespace(self) -> None:
        self.assertMalformed(get((b"x", b"a\t")), "Whitespace around field value")

    def test_connectionSpecificFields(self) -> None:
        for name in (
            b"connection",
            b"keep-alive",
            b"proxy-connection",
            b"transfer-encoding",
            b"upgrade",
        ):
            self.assertMalformed(get((name, b"x")), "Connection-specific field " + name.decode())

    def test_teOtherThanTrailers(self) -> None:
        self.assertMalformed(get((b"te", b"gzip")), "te field other than trailers")
        self.assertMalformed(get((b"te", b"trailers, gzip")), "te field other than trailers")

    def test_pseudoAfterRegular(self) -> None:
        self.assertMalformed(
            GET[:3] + [(b"accept", b"*/*"), GET[3]], "Pseudo-header field after a regular field"
        )

    def test_unknownPseudo(self) -> None:
        self.assertMalformed(get() + [(b":protocol", b"websocket")], "Unknown pseudo-header field")
        self.assertMalformed([(b":Method", b"GET")] + GET[1:], "Unknown pseudo-header field")

    def test_responsePseudo(self) -> None:
        self.assertMalformed(
            [(b":status", b"200")] + GET, "Response pseudo-header field :status in a request"
        )

    def test_repeatedPseudo(self) -> None:
        for pair in GET:
            self.assertMalformed(GET + [pair], "Repeated " + pair[0].decode())

    def test_missingMethod(self) -> None:
        self.assertMalformed(GET[1:], "Missing :method")

    def test_invalidMethod(self) -> None:
        self.assertMalformed([(b":method", b"GE T")] + GET[1:], "Invalid :method")
        self.assertMalformed([(b":method", b"")] + GET[1:], "Invalid :method")

    def test_missingScheme(self) -> None:
        self.assertMalformed([GET[0]] + GET[2:], "Missing :scheme")

    def test_invalidScheme(self) -> None:
        self.assertMalformed([GET[0], (b":scheme", b"1http")] + GET[2:], "Invalid :scheme")

    def test_missingPath(self) -> None:
        self.assertMalformed(GET[:3], "Missing :path")

    def test_emptyPath(self) -> None:
        self.assertMalformed(GET[:3] + [(b":path", b"")], "Empty :path")

    def test_invalidPath(self) -> None:
        self.assertMalformed(GET[:3] + [(b":path", b"index.html")], "Invalid :path")
        self.assertMalformed(GET[:3] + [(b":path", b"/a b")], "Invalid :path")
        self.assertMalformed(GET[:3] + [(b":path", b"/caf\xc3\xa9")], "Invalid :path")
        self.assertMalformed(GET[:3] + [(b":path", b"http://example.com/")], "Invalid :path")

    def test_asteriskPathNotOptions(self) -> None:
        self.assertMalformed(GET[:3] + [(b":path", b"*")], ":path * is only for OPTIONS")

    def test_connectWithScheme(self) -> None:
        self.assertMalformed(
            [(b":method", b"CONNECT"), (b":scheme", b"https"), (b":authority", b"a.example:443")],
            "CONNECT with :scheme",
        )

    def test_connectWithPath(self) -> None:
        self.assertMalformed(
            [(b":method", b"CONNECT"), (b":authority", b"a.example:443"), (b":path", b"/")],
            "CONNECT with :path",
        )

    def test_connectWithoutAuthority(self) -> None:
        self.assertMalformed([(b":method", b"CONNECT")], "CONNECT without :authority")

    def test_connectWithoutPort(self) -> None:
        self.assertMalformed(
            [(b":method", b"CONNECT"), (b":authority", b"a.example")],
            "Invalid :authority: Missing port",
        )

    def test_connectWithContentLength(self) -> None:
        self.assertMalformed(
            [
                (b":method", b"CONNECT"),
                (b":authority", b"a.example:443"),
                (b"content-length", b"0"),
            ],
            "content-length in a CONNECT request",
        )

    def test_authorityUserinfo(self) -> None:
        self.assertMalformed(
            GET[:2] + [(b":authority", b"user:pw@example.com"), GET[3]],
            ":authority must not include userinfo",
        )

    def test_invalidAuthority(self) -> None:
        self.assertMalformed(
            GET[:2] + [(b":authority", b"exa mple.com"), GET[3]],
            "Invalid :authority: Invalid host name",
        )
        self.assertMalformed(
            GET[:2] + [(b":authority", b"example.com:99999"), GET[3]],
            "Invalid :authority: Invalid port",
        )

    def test_emptyAuthority(self) -> None:
        self.assertMalformed(GET[:2] + [(b":authority", b""), GET[3]], "Empty :authority")

    def test_invalidHost(self) -> None:
        noAuthority = [pair for pair in GET if pair[0] != b":authority"]
        self.assertMalformed(noAuthority + [(b"host", b"a/b")], "Invalid Host: Invalid host name")
        self.assertMalformed(noAuthority + [(b"host", b"u@a")], "Host must not include userinfo")

    def test_moreThanOneHost(self) -> None:
        self.assertMalformed(
            get((b"host", b"example.com"), (b"host", b"example.com")), "More than one Host field"
        )

    def test_hostDiffersFromAuthority(self) -> None:
        self.assertMalformed(get((b"host", b"evil.example")), "Host differs from :authority")
        self.assertMalformed(
            [
                (b":method", b"CONNECT"),
                (b":authority", b"a.example:443"),
                (b"host", b"b.example:443"),
            ],
            "Host differs from :authority",
        )

    def test_invalidContentLength(self) -> None:
        for value in (b"abc", b"-1", b"5,5", b" 5"[1:] + b"x", b"+5"):
            self.assertMalformed(
                get((b"content-length", value)), "Invalid content-length", endStream=False
            )

    def test_contentLengthTooLarge(self) -> None:
        self.assertMalformed(
            get((b"content-length", b"9" * 19)), "content-length too large", endStream=False
        )

    def test_conflictingContentLength(self) -> None:
        self.assertMalformed(
            get((b"content-length", b"5"), (b"content-length", b"6")),
            "Conflicting content-length values",
            endStream=False,
        )
        self.assertMalformed(
            get((b"content-length", b"5"), (b"content-length", b"05")),
            "Conflicting content-length values",
            endStream=False,
        )

    def test_contentLengthWithoutData(self) -> None:
        self.assertMalformed(
            get((b"content-length", b"5")),
            "Non-zero content-length on a request without DATA",
            endStream=True,
        )

    def test_absoluteFormWithoutAuthority(self) -> None:
        noAuthority = [pair for pair in GET if pair[0] != b":authority"]
        self.assertMalformed(
            noAuthority, "No :authority or Host for an absolute-form target", absoluteForm=True
        )


class H2RequestHeadersTests(SynchronousTestCase):
    def convert(self, head: bytes, scheme: bytes = b"http") -> Headers:
        return h2RequestHeaders(parseRequestHead(head), scheme)

    def test_originForm(self) -> None:
        """
        Pseudo-headers first (C{:authority} from C{Host}), then the fields
        lower-cased, C{Host} and connection-specific ones dropped, with
        what C{Connection} names; C{te} kept as C{trailers} only;
        C{content-length} kept.
        """
        headers = self.convert(
            b"POST /a?b HTTP/1.1\r\nHost: Example.com:8080\r\nConnection: keep-alive, X-Hop, TE\r\n"
            b"Keep-Alive: timeout=5\r\nX-Hop: 1\r\nTE: trailers, deflate\r\nContent-Length: 3\r\n"
            b"Upgrade: h2c\r\nProxy-Connection: x\r\nAccept: */*\r\n\r\n",
            b"https",
        )
        self.assertEqual(
            headers,
            [
                (b":method", b"POST"),
                (b":scheme", b"https"),
                (b":authority", b"Example.com:8080"),
                (b":path", b"/a?b"),
                (b"te", b"trailers"),
                (b"content-length", b"3"),
                (b"accept", b"*/*"),
            ],
        )

    def test_teWithoutTrailersDropped(self) -> None:
        """
        A C{TE} that does not list C{trailers} is dropped.
        """
        headers = self.convert(b"GET / HTTP/1.1\r\nHost: a\r\nTE: gzip\r\n\r\n")
        self.assertEqual(
            [name for name, _ in headers], [b":method", b":scheme", b":authority", b":path"]
        )

    def test_transferEncodingDropped(self) -> None:
        """
        C{Transfer-Encoding} is not carried (DATA frames frame the body).
        """
        headers = self.convert(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        self.assertNotIn(b"transfer-encoding", [name for name, _ in headers])

    def test_absoluteForm(self) -> None:
        """
        An absolute-form target gives its own scheme, authority (userinfo
        removed; C{Host} ignored) and path (C{/} when empty, C{/} before a
        bare query, fragment dropped).
        """
        headers = self.convert(
            b"GET HTTP://u:p@a.example:81?x=1#frag HTTP/1.1\r\nHost: b.example\r\n\r\n", b"https"
        )
        self.assertEqual(
            headers,
            [
                (b":method", b"GET"),
                (b":scheme", b"http"),
                (b":authority", b"a.example:81"),
                (b":path", b"/?x=1"),
            ],
        )
        headers = self.convert(b"GET http://a.example HTTP/1.1\r\nHost: a.example\r\n\r\n")
        self.assertEqual(headers[3], (b":path", b"/"))

    def test_options(self) -> None:
        """
        C{OPTIONS *} and C{OPTIONS} with an absolute URI without a path give
        C{:path *} (RFC 9113 section 8.3.1).
        """
        self.assertEqual(
            self.convert(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n")[3], (b":path", b"*")
        )
        self.assertEqual(
            self.convert(b"OPTIONS http://a.example:8080 HTTP/1.1\r\nHost: a.example\r\n\r\n")[3],
            (b":path", b"*"),
        )

    def test_noAuthority(self) -> None:
        """
        An HTTP/1.0 request without C{Host}, or an empty C{Host}, gives no
        C{:authority}.
        """
        self.assertEqual(
            self.convert(b"GET / HTTP/1.0\r\n\r\n"),
            [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/")],
        )
        self.assertEqual(len(self.convert(b"GET / HTTP/1.1\r\nHost:\r\n\r\n")), 3)

    def test_connect(self) -> None:
        """
        C{CONNECT} gives C{:method} and C{:authority} only.
        """
        self.assertEqual(
            self.convert(
                b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\nUser-Agent: x\r\n\r\n"
            ),
            [(b":method", b"CONNECT"), (b":authority", b"a.example:443"), (b"user-agent", b"x")],
        )

    def test_repeatedHeadSameList(self) -> None:
        """
        A head with the same status and fields as the previous one gets
        the same list; another status or other fields get their own.
        """
        raw = b"HTTP/1.1 200 OK\r\nServer: x\r\nContent-Length: 2\r\n\r\n"
        first = h2ResponseHeaders(parseResponseHead(raw))
        self.assertIs(h2ResponseHeaders(parseResponseHead(raw)), first)
        other = h2ResponseHeaders(parseResponseHead(raw.replace(b"200 OK", b"201 Created")))
        self.assertEqual(other[0], (b":status", b"201"))
        self.assertEqual(other[1:], first[1:])
        changed = h2ResponseHeaders(parseResponseHead(raw.replace(b"Server: x", b"Server: y")))
        self.assertEqual(changed[1], (b"server", b"y"))
        self.assertEqual(first, [(b":status", b"200"), (b"server", b"x"), (b"content-length", b"2")])

    def test_acceptedByH2(self) -> None:
        """
        The C{h2} library sends the list as it is, and the other end's
        L{requestFromH2} accepts it.
        """
        headers = self.convert(
            b"POST /upload HTTP/1.1\r\nHost: a.example\r\nCookie: a=1; b=2\r\nContent-Length: 0\r\n"
            b"Connection: close\r\n\r\n",
            b"https",
        )
        received = _h2RoundTrip(headers, request=True)
        request = requestFromH2(received, True, False)
        # (h2 splits the cookie to send it, and joins it again, last.)
        self.assertEqual(
            parseRequestHead(request.head).headers,
            ((b"Host", b"a.example"), (b"content-length", b"0"), (b"cookie", b"a=1; b=2")),
        )


class RoundTripTests(SynchronousTestCase):
    def test_roundTrips(self) -> None:
        """
        L{requestFromH2}, then L{parseRequestHead}, then
        L{h2RequestHeaders} gives back the pseudo-headers and the fields.
        """
        cases: List[Tuple[Headers, bool, bool]] = [
            (get((b"accept", b"*/*"), (b"te", b"trailers"), (b"x-y", b"")), True, False),
            (get((b"accept", b"*/*")), True, True),
            ([(b":method", b"POST")] + GET[1:] + [(b"content-length", b"10")], False, False),
            ([(b":method", b"PUT")] + GET[1:] + [(b"grpc-timeout", b"1S")], False, True),
            (
                [
                    (b":method", b"OPTIONS"),
                    (b":scheme", b"http"),
                    (b":authority", b"a.example:8080"),
                    (b":path", b"*"),
                ],
                True,
                True,
            ),
            (
                [(b":method", b"CONNECT"), (b":authority", b"a.example:443"), (b"x", b"1")],
                False,
                False,
            ),
            ([(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/")], True, False),
        ]
        for headers, endStream, absoluteForm in cases:
            request = requestFromH2(headers, endStream, absoluteForm)
            scheme = dict(headers).get(b":scheme", b"http")
            self.assertEqual(h2RequestHeaders(parseRequestHead(request.head), scheme), headers)

    def test_cookies(self) -> None:
        """
        Split cookies come back as one field.
        """
        request = requestFromH2(get((b"cookie", b"a=1"), (b"cookie", b"b=2")), True, False)
        self.assertEqual(
            h2RequestHeaders(parseRequestHead(request.head), b"https"),
            get((b"cookie", b"a=1; b=2")),
        )


class ResponseFromH2Tests(SynchronousTestCase):
    def translate(
        self, headers: Headers, method: bytes = b"GET", endStream: bool = False
    ) -> Tuple[bytes, bool]:
        """
        Translate, and check that the head parses as HTTP/1.1.
        """
        head, chunked = responseFromH2(headers, method, endStream)
        parseResponseHead(head)
        return head, chunked

    def test_chunked(self) -> None:
        """
        A response without C{content-length} that goes on after its headers
        is chunked.
        """
        self.assertEqual(
            self.translate([(b":status", b"200"), (b"content-type", b"application/grpc")]),
            (
                b"HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\nTransfer-Encoding: chunked\r\n\r\n",
                True,
            ),
        )

    def test_contentLength(self) -> None:
        """
        C{content-length} is kept (once) and the body is not chunked.
        """
        self.assertEqual(
            self.translate(
                [(b":status", b"404"), (b"content-length", b"9"), (b"content-length", b"9")]
            ),
            (b"HTTP/1.1 404 Not Found\r\ncontent-length: 9\r\n\r\n", False),
        )

    def test_endStreamWithoutLength(self) -> None:
        """
        A response that ends with its headers gets C{Content-Length: 0},
        not a close-delimited body.
        """
        self.assertEqual(
            self.translate([(b":status", b"200")], endStream=True),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", False),
        )

    def test_bodyless(self) -> None:
        """
        Responses to C{HEAD}, and 204 and 304 responses, keep their
        C{content-length} and get no framing of their own.
        """
        self.assertEqual(
            self.translate([(b":status", b"200"), (b"content-length", b"100")], b"HEAD", True),
            (b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n", False),
        )
        self.assertEqual(
            self.translate([(b":status", b"204")], endStream=True),
            (b"HTTP/1.1 204 No Content\r\n\r\n", False),
        )
        self.assertEqual(
            self.translate([(b":status", b"304"), (b"etag", b'"x"')], endStream=True),
            (b'HTTP/1.1 304 Not Modified\r\netag: "x"\r\n\r\n', False),
        )

    def test_interim(self) -> None:
        """
        1xx responses translate without framing.
        """
        self.assertEqual(
            self.translate([(b":status", b"100")]), (b"HTTP/1.1 100 Continue\r\n\r\n", False)
        )
        self.assertEqual(
            self.translate([(b":status", b"103"), (b"link", b"</a.css>; rel=preload")]),
            (b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n", False),
        )

    def test_connect(self) -> None:
        """
        A 2xx answer to C{CONNECT} has no framing fields; a refusal is an
        ordinary response.
        """
        self.assertEqual(
            self.translate([(b":status", b"200"), (b"content-length", b"0")], b"CONNECT"),
            (b"HTTP/1.1 200 OK\r\n\r\n", False),
        )
        self.assertEqual(self.translate([(b":status", b"403")], b"CONNECT")[1], True)

    def test_fieldsKept(self) -> None:
        """
        Fields keep their order; C{set-cookie} fields are not joined;
        C{te: trailers} passes.
        """
        head, _ = self.translate(
            [
                (b":status", b"200"),
                (b"set-cookie", b"a=1"),
                (b"set-cookie", b"b=2"),
                (b"te", b"trailers"),
                (b"content-length", b"1"),
            ]
        )
        self.assertEqual(
            parseResponseHead(head).headers,
            (
                (b"set-cookie", b"a=1"),
                (b"set-cookie", b"b=2"),
                (b"te", b"trailers"),
                (b"content-length", b"1"),
            ),
        )

    def test_unknownStatus(self) -> None:
        """
        A status without a standard phrase still translates.
        """
        self.assertTrue(
            self.translate([(b":status", b"599")])[0].startswith(b"HTTP/1.1 599 Unknown\r\n")
        )


class ResponseValidationTests(SynchronousTestCase):
    """
    Each malformed response is refused with a precise reason.
    """

    def assertMalformed(
        self, headers: Headers, reason: str, method: bytes = b"GET", endStream: bool = False
    ) -> None:
        error = self.assertRaises(StreamError, responseFromH2, headers, method, endStream)
        self.assertEqual((error.reason, error.code), (reason, 1))

    def test_missingStatus(self) -> None:
        self.assertMalformed([(b"content-length", b"0")], "Missing :status")

    def test_repeatedStatus(self) -> None:
        self.assertMalformed([(b":status", b"200"), (b":status", b"200")], "Repeated :status")

    def test_invalidStatus(self) -> None:
        for value in (b"20", b"2000", b"abc", b"099", b"600", b"", b"2 0"):
            self.assertMalformed([(b":status", value)], "Invalid :status")

    def test_switchingProtocols(self) -> None:
        self.assertMalformed([(b":status", b"101")], "101 Switching Protocols in HTTP/2")

    def test_interimEndsStream(self) -> None:
        self.assertMalformed(
            [(b":status", b"100")], "Interim response ends the stream", endStream=True
        )

    def test_requestPseudo(self) -> None:
        self.assertMalformed(
            [(b":status", b"200"), (b":path", b"/")], "Request pseudo-header field in a response"
        )

    def test_unknownPseudo(self) -> None:
        self.assertMalformed([(b":status", b"200"), (b":foo", b"x")], "Unknown pseudo-header field")

    def test_pseudoAfterRegular(self) -> None:
        self.assertMalformed(
            [(b"x", b"y"), (b":status", b"200")], "Pseudo-header field after a regular field"
        )

    def test_fieldRules(self) -> None:
        self.assertMalformed([(b":status", b"200"), (b"Server", b"x")], "Uppercase field name")
        self.assertMalformed(
            [(b":status", b"200"), (b"server", b"x\r\nInjected: 1")], "NUL, CR or LF in field value"
        )
        self.assertMalformed(
            [(b":status", b"200"), (b"server", b"x ")], "Whitespace around field value"
        )

    def test_connectionSpecific(self) -> None:
        self.assertMalformed(
            [(b":status", b"200"), (b"transfer-encoding", b"chunked")],
            "Connection-specific field transfer-encoding",
        )
        self.assertMalformed(
            [(b":status", b"200"), (b"connection", b"close")],
            "Connection-specific field connection",
        )

    def test_te(self) -> None:
        self.assertMalformed(
            [(b":status", b"200"), (b"te", b"gzip")], "te field other than trailers"
        )

    def test_invalidContentLength(self) -> None:
        self.assertMalformed(
            [(b":status", b"200"), (b"content-length", b"1e3")], "Invalid content-length"
        )

    def test_conflictingContentLength(self) -> None:
        self.assertMalformed(
            [(b":status", b"200"), (b"content-length", b"1"), (b"content-length", b"2")],
            "Conflicting content-length values",
        )

    def test_contentLengthWithoutData(self) -> None:
        self.assertMalformed(
            [(b":status", b"200"), (b"content-length", b"3")],
            "Non-zero content-length on a response without DATA",
            endStream=True,
        )


class H2ResponseHeadersTests(SynchronousTestCase):
    def test_fields(self) -> None:
        """
        C{:status} first; names lower-cased; connection-specific fields,
        C{Transfer-Encoding} and what C{Connection} names removed;
        C{content-length} kept.
        """
        head = parseResponseHead(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close, X-Private\r\nX-Private: 1\r\n"
            b"Keep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\nSet-Cookie: a=1\r\nContent-Length: 5\r\n\r\n"
        )
        self.assertEqual(
            h2ResponseHeaders(head),
            [
                (b":status", b"200"),
                (b"content-type", b"text/plain"),
                (b"set-cookie", b"a=1"),
                (b"content-length", b"5"),
            ],
        )

    def test_acceptedByH2(self) -> None:
        """
        The C{h2} library sends the list as it is, and the other end's
        L{responseFromH2} accepts it.
        """
        headers = h2ResponseHeaders(
            parseResponseHead(
                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: keep-alive\r\nServer: x\r\n\r\n"
            )
        )
        received = _h2RoundTrip(headers, request=False)
        self.assertEqual(received, headers)
        self.assertEqual(
            responseFromH2(received, b"GET", True)[0],
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nserver: x\r\n\r\n",
        )


def _h2RoundTrip(headers: Headers, request: bool) -> Headers:
    """
    Send C{headers} with the C{h2} library (which validates what it sends)
    and return what the other end received.
    """
    client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    server = H2Connection(H2Configuration(client_side=False, header_encoding=None))
    client.initiate_connection()
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    if request:
        client.send_headers(1, headers, end_stream=True)
        events = server.receive_data(client.data_to_send())
        [event] = [e for e in events if isinstance(e, RequestReceived)]
    else:
        client.send_headers(
            1,
            [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a"), (b":path", b"/")],
            end_stream=True,
        )
        server.receive_data(client.data_to_send())
        server.send_headers(1, headers, end_stream=True)
        events = client.receive_data(server.data_to_send())
        [event] = [e for e in events if isinstance(e, ResponseReceived)]
    return [(bytes(name), bytes(value)) for name, value in event.headers]


class ChunkTests(SynchronousTestCase):
    def test_chunk(self) -> None:
        """
        A chunk is the hex size, CRLF, the data, CRLF; no data, no chunk.
        """
        self.assertEqual(chunk(b"hello world!!!!!!"), b"11\r\nhello world!!!!!!\r\n")
        self.assertEqual(chunk(b""), b"")

    def test_lastChunk(self) -> None:
        """
        The last chunk carries the trailers, and a chunked body made with
        L{chunk} and L{lastChunk} decodes to the data and trailers.
        """
        self.assertEqual(lastChunk(), b"0\r\n\r\n")
        self.assertEqual(lastChunk([]), b"0\r\n\r\n")
        body = (
            chunk(b"abc")
            + chunk(b"")
            + chunk(b"d" * 300)
            + lastChunk([(b"grpc-status", b"0"), (b"grpc-message", b"")])
        )
        decoder = ChunkedDecoder(502)
        self.assertEqual(decoder.feed(body + b"next"), b"abc" + b"d" * 300)
        self.assertTrue(decoder.ended)
        self.assertEqual(decoder.leftover, b"next")
        self.assertEqual(decoder.trailers, [(b"grpc-status", b"0"), (b"grpc-message", b"")])

    def test_invalidTrailers(self) -> None:
        """
        Trailers follow the field rules: no pseudo-header field, no
        connection-specific field, lower-case names, clean values.
        """
        cases = [
            ([(b":status", b"200")], "Pseudo-header field in trailers"),
            ([(b"connection", b"close")], "Connection-specific field connection"),
            ([(b"Grpc-Status", b"0")], "Uppercase field name"),
            ([(b"x", b"a\nb: c")], "NUL, CR or LF in field value"),
            ([(b"te", b"gzip")], "te field other than trailers"),
        ]
        for trailers, reason in cases:
            error = self.assertRaises(StreamError, lastChunk, trailers)
            self.assertEqual(error.reason, reason)


def _merge(events: Sequence[Event]) -> List[Event]:
    """
    Merge adjacent L{Data} events, to compare event lists however the
    input was split.
    """
    merged: List[Event] = []
    for event in events:
        if isinstance(event, Data):
            if not event.data:
                raise AssertionError("empty Data event")
            if merged and isinstance(merged[-1], Data):
                merged[-1] = Data(merged[-1].data + event.data)
                continue
        merged.append(event)
    return merged


class MessageReaderTests(SynchronousTestCase):
    def feedAll(self, reader: MessageReader, pieces: Sequence[bytes], eof: bool) -> List[Event]:
        events: List[Event] = []
        for piece in pieces:
            events += reader.feed(piece)
        if eof:
            events += reader.eof()
        return _merge(events)

    def assertSplits(
        self,
        make: Callable[[], MessageReader],
        data: bytes,
        expected: List[Event],
        eof: bool = False,
    ) -> None:
        """
        Feeding C{data} whole, split at every position, and byte by byte
        gives the C{expected} events.
        """
        self.assertEqual(self.feedAll(make(), [data], eof), expected)
        for i in range(len(data) + 1):
            self.assertEqual(self.feedAll(make(), [data[:i], data[i:]], eof), expected, i)
        self.assertEqual(
            self.feedAll(make(), [data[i : i + 1] for i in range(len(data))], eof), expected
        )

    def test_startResponseAsFeed(self) -> None:
        """
        L{MessageReader.startResponse} with a parsed head and the body bytes
        (whole, or the body's first bytes with the rest fed after, split at
        every position) gives the events L{MessageReader.feed} gives for the
        serialized message: length, chunked with trailers, close-delimited,
        bodiless (C{HEAD}, 204, 304), interim, and a tunnel.
        """
        cases = [
            (b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\n", b"hello", False),
            (b"GET", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
             b"5\r\nhello\r\n0\r\nGrpc-Status: 0\r\n\r\n", False),
            (b"GET", b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", b"until the end", True),
            (b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n", b"", False),
            (b"GET", b"HTTP/1.1 204 No Content\r\n\r\n", b"", False),
            (b"GET", b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n", b"", False),
            (b"GET", b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n",
             b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", False),
            (b"CONNECT", b"HTTP/1.1 200 Connection established\r\n\r\n", b"tunnel bytes", True),
        ]
        for method, head, body, eof in cases:
            expected = self.feedAll(MessageReader(True, method), [head + body], eof)
            parsed = parseResponseHead(head)
            for i in range(len(body) + 1):
                reader = MessageReader(True, method)
                events = reader.startResponse(parsed, body[:i])
                events += reader.feed(body[i:]) if body[i:] else []
                if eof:
                    events += reader.eof()
                self.assertEqual(_merge(events), expected, (head, i))
                self.assertEqual(reader.tunnel, method == b"CONNECT")

    def test_startResponseMidMessage(self) -> None:
        """
        A head given while a message is in progress, or to a request
        reader, is a stream error, and the reader is spent.
        """
        parsed = parseResponseHead(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
        reader = MessageReader(True)
        reader.startResponse(parsed, b"he")
        self.assertRaises(StreamError, reader.startResponse, parsed, b"")
        self.assertRaises(StreamError, reader.feed, b"llo")
        partial = MessageReader(True)
        partial.feed(b"HTTP/1.1 200 OK\r\n")
        self.assertRaises(StreamError, partial.startResponse, parsed, b"")
        self.assertRaises(StreamError, MessageReader(False).startResponse, parsed, b"")

    def test_chunkedRequestWithTrailers(self) -> None:
        """
        A chunked request becomes a head, the dechunked data, the trailers
        (lower-cased, connection-specific dropped) and the end.
        """
        data = (
            b"POST /svc.Echo/Call HTTP/1.1\r\nHost: grpc.example\r\nTransfer-Encoding: chunked\r\n"
            b"TE: trailers\r\nConnection: TE\r\nContent-Type: application/grpc\r\n\r\n"
            b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nGrpc-Status: 0\r\nKeep-Alive: x\r\nGrpc-Message: ok\r\n\r\n"
        )
        self.assertSplits(
            lambda: MessageReader(False, scheme=b"https"),
            data,
            [
                Head(
                    [
                        (b":method", b"POST"),
                        (b":scheme", b"https"),
                        (b":authority", b"grpc.example"),
                        (b":path", b"/svc.Echo/Call"),
                        (b"te", b"trailers"),
                        (b"content-type", b"application/grpc"),
                    ],
                    False,
                ),
                Data(b"hello world"),
                Trailers([(b"grpc-status", b"0"), (b"grpc-message", b"ok")]),
                End(),
            ],
        )

    def test_pipelinedRequests(self) -> None:
        """
        A request without a body ends with its head (no L{End}); the next
        request follows.
        """
        data = (
            b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
            b"PUT /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
            b"DELETE /c HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
        )
        self.assertSplits(
            lambda: MessageReader(False),
            data,
            [
                Head(
                    [
                        (b":method", b"GET"),
                        (b":scheme", b"http"),
                        (b":authority", b"x"),
                        (b":path", b"/a"),
                    ],
                    True,
                ),
                Head(
                    [
                        (b":method", b"PUT"),
                        (b":scheme", b"http"),
                        (b":authority", b"x"),
                        (b":path", b"/b"),
                        (b"content-length", b"3"),
                    ],
                    False,
                ),
                Data(b"abc"),
                End(),
                Head(
                    [
                        (b":method", b"DELETE"),
                        (b":scheme", b"http"),
                        (b":authority", b"x"),
                        (b":path", b"/c"),
                        (b"content-length", b"0"),
                    ],
                    True,
                ),
            ],
        )

    def test_contentLengthResponse(self) -> None:
        """
        A response with C{Content-Length}: head, data, end.
        """
        data = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello"
        self.assertSplits(
            lambda: MessageReader(True),
            data,
            [
                Head(
                    [
                        (b":status", b"200"),
                        (b"content-length", b"5"),
                        (b"content-type", b"text/plain"),
                    ],
                    False,
                ),
                Data(b"hello"),
                End(),
            ],
        )

    def test_repeatedContentLengthNormalized(self) -> None:
        """
        C{Content-Length: 5, 5} (which HTTP/1.1 accepts) becomes one
        C{content-length: 5}.
        """
        reader = MessageReader(True)
        events = reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\nX: y\r\n\r\nhello")
        self.assertEqual(
            events,
            [
                Head([(b":status", b"200"), (b"x", b"y"), (b"content-length", b"5")], False),
                Data(b"hello"),
                End(),
            ],
        )

    def test_interimResponses(self) -> None:
        """
        100 and 103 are interim heads before the final response.
        """
        data = (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
            b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"
        )
        self.assertSplits(
            lambda: MessageReader(True, b"POST"),
            data,
            [
                Head([(b":status", b"100")], False, True),
                Head([(b":status", b"103"), (b"link", b"</s.css>; rel=preload")], False, True),
                Head([(b":status", b"201"), (b"content-length", b"2")], False),
                Data(b"ok"),
                End(),
            ],
        )

    def test_headResponse(self) -> None:
        """
        A response to C{HEAD} has no body whatever its C{Content-Length}:
        the head ends the message and the next response follows at once.
        """
        data = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nHTTP/1.1 404 Not Found\r\nContent-Length: 7\r\n\r\n"
        self.assertSplits(
            lambda: MessageReader(True, b"HEAD"),
            data,
            [
                Head([(b":status", b"200"), (b"content-length", b"100")], True),
                Head([(b":status", b"404"), (b"content-length", b"7")], True),
            ],
        )

    def test_connectRequestThenTunnel(self) -> None:
        """
        After a C{CONNECT} request head every byte is tunnel data.
        """
        data = b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n\x16\x03\x01GET / HTTP/1.1\r\n\r\n"
        self.assertSplits(
            lambda: MessageReader(False),
            data,
            [
                Head([(b":method", b"CONNECT"), (b":authority", b"a.example:443")], False),
                Data(b"\x16\x03\x01GET / HTTP/1.1\r\n\r\n"),
                End(),
            ],
            eof=True,
        )
        reader = MessageReader(False)
        reader.feed(data[:10])
        self.assertFalse(reader.tunnel)
        reader.feed(data[10:])
        self.assertTrue(reader.tunnel)

    def test_connectResponseThenTunnel(self) -> None:
        """
        A 2xx answer to C{CONNECT} starts a tunnel; its head has no
        C{content-length}.
        """
        data = b"HTTP/1.1 200 Connection established\r\nContent-Length: 0\r\n\r\nraw bytes\r\n\r\n"
        self.assertSplits(
            lambda: MessageReader(True, b"CONNECT"),
            data,
            [Head([(b":status", b"200")], False), Data(b"raw bytes\r\n\r\n"), End()],
            eof=True,
        )

    def test_connectRefused(self) -> None:
        """
        A refused C{CONNECT} is an ordinary response, not a tunnel.
        """
        reader = MessageReader(True, b"CONNECT")
        events = reader.feed(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno")
        self.assertEqual(
            events,
            [Head([(b":status", b"403"), (b"content-length", b"2")], False), Data(b"no"), End()],
        )
        self.assertFalse(reader.tunnel)

    def test_switchingProtocols(self) -> None:
        """
        A 101 starts a tunnel.
        """
        reader = MessageReader(True)
        events = reader.feed(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81"
        )
        self.assertEqual(events, [Head([(b":status", b"101")], False), Data(b"\x81")])
        self.assertTrue(reader.tunnel)

    def test_pipelinedResponses(self) -> None:
        """
        Responses follow one another: a length-delimited one, a 204 and a
        chunked one.
        """
        data = (
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"
            b"HTTP/1.1 204 No Content\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nxyz\r\n0\r\n\r\n"
        )
        self.assertSplits(
            lambda: MessageReader(True),
            data,
            [
                Head([(b":status", b"200"), (b"content-length", b"3")], False),
                Data(b"abc"),
                End(),
                Head([(b":status", b"204")], True),
                Head([(b":status", b"200")], False),
                Data(b"xyz"),
                End(),
            ],
        )

    def test_closeDelimited(self) -> None:
        """
        A response without framing ends at L{MessageReader.eof}.
        """
        data = b"HTTP/1.0 200 OK\r\nContent-Type: text/html\r\n\r\n<html>HTTP/1.1 200 OK\r\n\r\n"
        self.assertSplits(
            lambda: MessageReader(True),
            data,
            [
                Head([(b":status", b"200"), (b"content-type", b"text/html")], False),
                Data(b"<html>HTTP/1.1 200 OK\r\n\r\n"),
                End(),
            ],
            eof=True,
        )

    def test_setRequestMethod(self) -> None:
        """
        The method set for the next response decides its framing.
        """
        reader = MessageReader(True)
        self.assertEqual(len(reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx")), 3)
        reader.setRequestMethod(b"HEAD")
        self.assertEqual(
            reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n"),
            [Head([(b":status", b"200"), (b"content-length", b"1")], True)],
        )

    def test_eofBetweenMessages(self) -> None:
        """
        A close between messages is no event and no error.
        """
        reader = MessageReader(True)
        reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx")
        self.assertEqual(reader.eof(), [])
        self.assertEqual(MessageReader(False).eof(), [])

    def test_eofMidMessage(self) -> None:
        """
        A close inside a head, a length-delimited or a chunked body is an
        error (INTERNAL_ERROR on the response side, PROTOCOL_ERROR on the
        request side).
        """
        for isResponse, data, code in [
            (True, b"HTTP/1.1 200 OK\r\n", 2),
            (True, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabc", 2),
            (False, b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab", 1),
        ]:
            reader = MessageReader(isResponse)
            reader.feed(data)
            error = self.assertRaises(StreamError, reader.eof)
            self.assertEqual(
                (error.reason, error.code), ("Connection closed in the middle of a message", code)
            )

    def test_dataAfterEof(self) -> None:
        """
        Bytes after L{MessageReader.eof} are an error.
        """
        reader = MessageReader(True)
        reader.eof()
        error = self.assertRaises(StreamError, reader.feed, b"x")
        self.assertEqual((error.reason, error.code), ("Data after the end of the stream", 2))

    def test_malformedResponse(self) -> None:
        """
        A malformed response head is an INTERNAL_ERROR with the parser's
        reason, and the reader stays failed.
        """
        reader = MessageReader(True)
        error = self.assertRaises(
            StreamError, reader.feed, b"HTTP/1.1 200 OK\r\nBad Header: x\r\n\r\n"
        )
        self.assertEqual((error.reason, error.code), ("Invalid header name", 2))
        self.assertIs(self.assertRaises(StreamError, reader.feed, b""), error)
        self.assertIs(self.assertRaises(StreamError, reader.eof), error)

    def test_malformedRequest(self) -> None:
        """
        A malformed request (here, smuggling-prone framing) is a
        PROTOCOL_ERROR with the parser's reason.
        """
        reader = MessageReader(False)
        error = self.assertRaises(
            StreamError,
            reader.feed,
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        )
        self.assertEqual(
            (error.reason, error.code), ("Both Transfer-Encoding and Content-Length", 1)
        )

    def test_malformedChunk(self) -> None:
        """
        A malformed chunked body is an error.
        """
        reader = MessageReader(True)
        reader.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        error = self.assertRaises(StreamError, reader.feed, b"zz\r\n")
        self.assertEqual((error.reason, error.code), ("Malformed chunk size line", 2))

    def test_otherTransferCoding(self) -> None:
        """
        A body with a transfer coding other than chunked cannot be carried
        by HTTP/2.
        """
        for data in (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        ):
            error = self.assertRaises(StreamError, MessageReader(True).feed, data)
            self.assertEqual((error.reason, error.code), ("Transfer coding other than chunked", 2))

    def test_headTooLarge(self) -> None:
        """
        A head over C{maxHeadSize} is an error.
        """
        reader = MessageReader(True, maxHeadSize=64)
        error = self.assertRaises(StreamError, reader.feed, b"HTTP/1.1 200 OK\r\nX: " + b"a" * 100)
        self.assertEqual((error.reason, error.code), ("Message head too large", 2))
        reader = MessageReader(False, maxHeadSize=64)
        error = self.assertRaises(StreamError, reader.feed, b"GET / HTTP/1.1\r\nX: " + b"a" * 100)
        self.assertEqual((error.reason, error.code), ("Request header fields too large", 1))

    def test_requestFromH2ThroughReader(self) -> None:
        """
        What L{requestFromH2} and L{chunk}/L{lastChunk} write, a request
        reader reads back as the same header list, data and trailers.
        """
        headers = [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":authority", b"a.example"),
            (b":path", b"/p"),
            (b"te", b"trailers"),
        ]
        request = requestFromH2(headers, False, False)
        data = request.head + chunk(b"abc") + chunk(b"def") + lastChunk([(b"grpc-status", b"0")])
        self.assertSplits(
            lambda: MessageReader(False),
            data,
            [Head(headers, False), Data(b"abcdef"), Trailers([(b"grpc-status", b"0")]), End()],
        )


_ALPHABET = b"aZ09:/*@ \t\r\n\x00\x01\x7f\xc3.-_;,[]"


def _mutate(rng: random.Random, headers: Headers) -> Headers:
    """
    A random variation of a header list: a field dropped, repeated or
    moved, or a byte of a name or value changed, added or removed.
    """
    headers = list(headers)
    for _ in range(rng.randint(1, 3)):
        action = rng.randrange(5)
        i = rng.randrange(len(headers))
        if action == 0 and len(headers) > 1:
            del headers[i]
        elif action == 1:
            headers.insert(rng.randrange(len(headers) + 1), headers[i])
        elif action == 2:
            headers.insert(rng.randrange(len(headers) + 1), headers.pop(i))
        else:
            name, value = headers[i]
            part = bytearray(name if action == 3 else value)
            at = rng.randrange(len(part) + 1)
            choice = rng.randrange(3)
            if choice == 0:
                part[at:at] = bytes([rng.choice(_ALPHABET)])
            elif choice == 1 and part:
                del part[at : at + 1]
            elif part:
                part[min(at, len(part) - 1)] = rng.choice(_ALPHABET)
            headers[i] = (bytes(part), value) if action == 3 else (name, bytes(part))
    return headers


class FuzzTests(SynchronousTestCase):
    """
    Random variations of valid messages are either refused with a
    L{StreamError} or translated to a head that the HTTP/1.1 parser
    accepts: never another exception, never an unparsable head.
    """

    def test_requests(self) -> None:
        rng = random.Random(14)
        seeds: List[Headers] = [
            get(
                (b"cookie", b"a=1"),
                (b"content-length", b"3"),
                (b"te", b"trailers"),
                (b"host", b"example.com"),
            ),
            [(b":method", b"CONNECT"), (b":authority", b"[::1]:443"), (b"x", b"y")],
            [
                (b":method", b"OPTIONS"),
                (b":scheme", b"http"),
                (b":authority", b"a:1"),
                (b":path", b"*"),
            ],
        ]
        accepted = refused = 0
        for _ in range(3000):
            headers = _mutate(rng, rng.choice(seeds))
            endStream, absoluteForm = rng.random() < 0.5, rng.random() < 0.5
            try:
                request = requestFromH2(headers, endStream, absoluteForm)
            except StreamError:
                refused += 1
                continue
            accepted += 1
            head = parseRequestHead(request.head)
            self.assertEqual(head.method, request.method)
        self.assertGreater(accepted, 100)
        self.assertGreater(refused, 100)

    def test_responses(self) -> None:
        rng = random.Random(9113)
        seed: Headers = [(b":status", b"200"), (b"content-length", b"0"), (b"set-cookie", b"a=1")]
        accepted = refused = 0
        for _ in range(3000):
            headers = _mutate(rng, seed)
            method = rng.choice([b"GET", b"HEAD", b"CONNECT"])
            try:
                head, _ = responseFromH2(headers, method, rng.random() < 0.5)
            except StreamError:
                refused += 1
                continue
            accepted += 1
            parseResponseHead(head)
        self.assertGreater(accepted, 100)
        self.assertGreater(refused, 100)

    def test_reader(self) -> None:
        rng = random.Random(9112)
        messages = [
            (
                True,
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nA: b\r\n\r\n",
            ),
            (
                False,
                b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nokGET / HTTP/1.1\r\n\r\n",
            ),
        ]
        for _ in range(3000):
            isResponse, data = rng.choice(messages)
            buf = bytearray(data)
            for _ in range(rng.randint(1, 3)):
                buf[rng.randrange(len(buf))] = rng.choice(_ALPHABET)
            reader = MessageReader(isResponse)
            try:
                for i in range(0, len(buf), 7):
                    reader.feed(bytes(buf[i : i + 7]))
                reader.eof()
            except StreamError as e:
                self.assertIn(e.code, (1, 2))
