# -*- test-case-name: tests.test_clienthello -*-
"""
Tests for L{txproxy.stream.clienthello}.

The fixtures in C{tests/fixtures/clienthello/} are real ClientHellos recorded
from C{openssl s_client} and from Python's C{ssl} module by
C{tests/fixtures/clienthello/capture.py}.
"""

from __future__ import annotations

import os
import random
import struct
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from txproxy.stream.clienthello import (
    ClientHello,
    ClientHelloError,
    ClientHelloReader,
    ServerNameError,
    parseClientHelloBody,
)

_FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "clienthello")

# name -> (serverName, alpn, supportedVersions, number of records)
_EXPECTED: Dict[str, Tuple[Optional[str], Tuple[str, ...], Tuple[int, ...], int]] = {
    "openssl-sni.bin": ("a.test", (), (0x0304, 0x0303, 0x0302, 0x0301), 1),
    "openssl-sni-alpn-tls13.bin": ("a.test", ("h2", "http/1.1"), (0x0304,), 1),
    "openssl-sni-tls12.bin": ("a.test", (), (), 1),
    "openssl-nosni.bin": (None, (), (0x0304, 0x0303, 0x0302, 0x0301), 1),
    "openssl-multirecord.bin": ("multi.a.test", (), (0x0304,), 3),
    "python-sni.bin": ("a.test", ("h2", "http/1.1"), (0x0304, 0x0303), 1),
    "python-nosni.bin": (None, (), (0x0304, 0x0303), 1),
    "python-sni-tls12.bin": ("b.test", (), (), 1),
}


def _loadFixtures() -> Dict[str, bytes]:
    fixtures = {}
    for name in _EXPECTED:
        with open(os.path.join(_FIXTURES, name), "rb") as f:
            fixtures[name] = f.read()
    return fixtures


FIXTURES = _loadFixtures()


def records(data: bytes) -> List[Tuple[int, int, bytes]]:
    """
    Split well-formed TLS records into (content type, version, payload).
    """
    result = []
    i = 0
    while i < len(data):
        contentType, version, length = struct.unpack("!BHH", data[i : i + 5])
        result.append((contentType, version, data[i + 5 : i + 5 + length]))
        i += 5 + length
    return result


def handshakeBytes(data: bytes) -> bytes:
    """
    The handshake-layer bytes carried by a sequence of records.
    """
    return b"".join(payload for _, _, payload in records(data))


def frame(handshake: bytes, sizes: Iterable[int], version: int = 0x0301) -> bytes:
    """
    Wrap handshake bytes into handshake records whose payloads have the given
    sizes (the last record takes what is left).
    """
    out = []
    i = 0
    for size in sizes:
        if i >= len(handshake):
            break
        out.append(struct.pack("!BHH", 22, version, len(handshake[i : i + size])))
        out.append(handshake[i : i + size])
        i += size
    if i < len(handshake):
        out.append(struct.pack("!BHH", 22, version, len(handshake) - i) + handshake[i:])
    return b"".join(out)


def extension(extensionType: int, data: bytes) -> bytes:
    return struct.pack("!HH", extensionType, len(data)) + data


def sniExtension(*names: bytes, nameType: int = 0) -> bytes:
    entries = b"".join(struct.pack("!BH", nameType, len(n)) + n for n in names)
    return extension(0, struct.pack("!H", len(entries)) + entries)


def alpnExtension(*names: bytes) -> bytes:
    entries = b"".join(struct.pack("!B", len(n)) + n for n in names)
    return extension(16, struct.pack("!H", len(entries)) + entries)


def versionsExtension(*versions: int) -> bytes:
    data = b"".join(struct.pack("!H", v) for v in versions)
    return extension(43, struct.pack("!B", len(data)) + data)


def helloBody(
    extensions: Optional[Sequence[bytes]] = (),
    legacyVersion: int = 0x0303,
    sessionId: bytes = b"\x01" * 32,
    suites: bytes = b"\x13\x01\x13\x02",
    compression: bytes = b"\x00",
) -> bytes:
    """
    Build a ClientHello body; C{extensions=None} leaves the extensions
    block out entirely (allowed before TLS 1.3).
    """
    body = (
        struct.pack("!H", legacyVersion)
        + b"\x42" * 32
        + struct.pack("!B", len(sessionId))
        + sessionId
        + struct.pack("!H", len(suites))
        + suites
        + struct.pack("!B", len(compression))
        + compression
    )
    if extensions is not None:
        block = b"".join(extensions)
        body += struct.pack("!H", len(block)) + block
    return body


def helloMessage(body: bytes, messageType: int = 1) -> bytes:
    return struct.pack("!B", messageType) + len(body).to_bytes(3, "big") + body


def helloRecord(body: bytes) -> bytes:
    return frame(helloMessage(body), [])


def parseAll(data: bytes, maxSize: Optional[int] = None) -> Optional[ClientHello]:
    return ClientHelloReader(maxSize).feed(data)


class FixtureTests(SynchronousTestCase):
    """
    Real ClientHellos are read correctly however they are cut.
    """

    def assertFixture(self, name: str, hello: Optional[ClientHello], raw: bytes) -> None:
        serverName, alpn, versions, _ = _EXPECTED[name]
        self.assertIsNotNone(hello, name)
        assert hello is not None
        self.assertEqual(
            (hello.serverName, hello.alpn, hello.legacyVersion, hello.supportedVersions),
            (serverName, alpn, 0x0303, versions),
            name,
        )
        self.assertEqual(hello.raw, raw, name)

    def test_fixturesAreWhatTheySayTheyAre(self) -> None:
        """
        Each fixture is a sequence of handshake records (several for the
        multi-record one) with nothing after the ClientHello.
        """
        for name, data in FIXTURES.items():
            recs = records(data)
            self.assertEqual(len(recs), _EXPECTED[name][3], name)
            self.assertEqual({t for t, _, _ in recs}, {22}, name)
            self.assertEqual(handshakeBytes(data)[0], 1, name)

    def test_wholeFixture(self) -> None:
        """
        Fed in one piece, every fixture gives its server name, ALPN list and
        versions, and C{raw} is the whole input.
        """
        for name, data in FIXTURES.items():
            self.assertFixture(name, parseAll(data), data)

    def test_splitAtEveryByte(self) -> None:
        """
        Cut in two at any byte, a fixture yields C{None} for the first part
        and the ClientHello for the second.
        """
        for name, data in FIXTURES.items():
            for i in range(len(data)):
                reader = ClientHelloReader()
                self.assertIsNone(reader.feed(data[:i]), (name, i))
                self.assertFixture(name, reader.feed(data[i:]), data)

    def test_oneByteAtATime(self) -> None:
        """
        Fed one byte per call, a fixture yields C{None} until its last byte.
        """
        for name, data in FIXTURES.items():
            reader = ClientHelloReader()
            for i in range(len(data) - 1):
                self.assertIsNone(reader.feed(data[i : i + 1]), (name, i))
            self.assertFixture(name, reader.feed(data[-1:]), data)

    def test_emptyFeeds(self) -> None:
        """
        Feeding no bytes changes nothing.
        """
        data = FIXTURES["openssl-sni.bin"]
        reader = ClientHelloReader()
        self.assertIsNone(reader.feed(b""))
        self.assertIsNone(reader.feed(data[:10]))
        self.assertIsNone(reader.feed(b""))
        self.assertFixture("openssl-sni.bin", reader.feed(data[10:]), data)

    def test_reframedIntoRandomRecords(self) -> None:
        """
        The same handshake message re-framed into several records of random
        sizes, fed in random pieces, gives the same ClientHello.
        """
        rng = random.Random(4)
        for name, data in FIXTURES.items():
            handshake = handshakeBytes(data)
            for _ in range(20):
                sizes = [rng.randint(1, len(handshake) // 2) for _ in range(len(handshake))]
                reframed = frame(handshake, sizes)
                self.assertGreater(len(records(reframed)), 1)
                reader = ClientHelloReader()
                i = 0
                hello = None
                while i < len(reframed):
                    step = rng.randint(1, 64)
                    hello = reader.feed(reframed[i : i + step])
                    i += step
                    if i < len(reframed):
                        self.assertIsNone(hello)
                self.assertFixture(name, hello, reframed)

    def test_oneByteRecords(self) -> None:
        """
        A ClientHello fragmented into one-byte records is read at every
        split point too.
        """
        data = FIXTURES["openssl-sni-tls12.bin"]
        reframed = frame(handshakeBytes(data), [1] * 10000)
        for i in range(len(reframed)):
            reader = ClientHelloReader()
            self.assertIsNone(reader.feed(reframed[:i]))
            self.assertFixture("openssl-sni-tls12.bin", reader.feed(reframed[i:]), reframed)

    def test_recordHeaderCutEverywhere(self) -> None:
        """
        Cuts that fall inside the record headers of a multi-record hello
        (and inside the handshake header) are handled.
        """
        data = FIXTURES["openssl-multirecord.bin"]
        boundaries = [0, 517, 1034]
        for b in boundaries:
            for i in range(b, b + 10):
                reader = ClientHelloReader()
                self.assertIsNone(reader.feed(data[:i]))
                self.assertIsNone(reader.feed(data[i : i + 1]))
                self.assertFixture("openssl-multirecord.bin", reader.feed(data[i + 1 :]), data)

    def test_everyTruncationNeedsMore(self) -> None:
        """
        Any proper prefix of a fixture is not an error: more bytes are
        needed.
        """
        for name, data in FIXTURES.items():
            for i in range(len(data)):
                self.assertIsNone(parseAll(data[:i]), (name, i))

    def test_bytesAfterTheHello(self) -> None:
        """
        Bytes after the ClientHello's last record (the stream goes on) are
        not part of C{raw}.
        """
        data = FIXTURES["python-sni.bin"]
        hello = parseAll(data + b"\x17\x03\x03\x00\x05hello")
        self.assertFixture("python-sni.bin", hello, data)

    def test_resultRepeats(self) -> None:
        """
        After the ClientHello is complete, later calls return the same object
        and ignore their bytes.
        """
        data = FIXTURES["openssl-sni.bin"]
        reader = ClientHelloReader()
        hello = reader.feed(data)
        self.assertIs(reader.feed(b"garbage" * 10000), hello)
        self.assertIs(reader.feed(b""), hello)

    def test_corruptEveryByte(self) -> None:
        """
        Flipping any single byte of a fixture gives either a ClientHello or
        L{ClientHelloError} (or a wait for more bytes), never another
        exception.
        """
        for data in FIXTURES.values():
            for i in range(len(data)):
                for mask in (0xFF, 0x01, 0x80):
                    corrupted = data[:i] + bytes([data[i] ^ mask]) + data[i + 1 :]
                    try:
                        result = parseAll(corrupted)
                    except ClientHelloError:
                        continue
                    self.assertTrue(result is None or isinstance(result, ClientHello))

    def test_corruptLengthsAreErrors(self) -> None:
        """
        Changing the handshake length or the extensions block length of a
        one-record hello by one is an error (once the record is complete),
        because the record no longer holds exactly one ClientHello.
        """
        data = FIXTURES["openssl-sni.bin"]
        for delta in (-1, 1):
            handshake = bytearray(handshakeBytes(data))
            length = int.from_bytes(handshake[1:4], "big") + delta
            handshake[1:4] = length.to_bytes(3, "big")
            corrupted = frame(bytes(handshake), [])
            if delta > 0:
                # The message now claims a byte more than the record holds;
                # with one more record holding that byte, lengths mismatch.
                corrupted += frame(b"\x00", [])
            self.assertRaises(ClientHelloError, parseAll, corrupted)


class ErrorTests(SynchronousTestCase):
    """
    Garbage is refused with L{ClientHelloError}, as early as possible.
    """

    def assertRefused(self, data: bytes, reasonPart: str, maxSize: Optional[int] = None) -> None:
        reader = ClientHelloReader(maxSize)
        e = self.assertRaises(ClientHelloError, reader.feed, data)
        self.assertIn(reasonPart, e.reason)
        self.assertEqual(str(e), e.reason)
        # The error is sticky.
        again = self.assertRaises(ClientHelloError, reader.feed, b"")
        self.assertIs(again, e)

    def test_plainHTTP(self) -> None:
        """
        A plain HTTP request is refused at its first byte.
        """
        self.assertRefused(b"G", "not a TLS handshake record")
        self.assertRefused(b"GET / HTTP/1.1\r\n\r\n", "not a TLS handshake record")

    def test_sslv2Hello(self) -> None:
        """
        An SSLv2-compatible ClientHello (two-byte header with the high bit
        set) is refused.
        """
        sslv2 = bytes.fromhex("802e0103010015000000100100800300800700c0060040020080040080")
        self.assertRefused(sslv2, "SSLv2")
        self.assertRefused(sslv2[:1], "SSLv2")

    def test_otherContentTypes(self) -> None:
        """
        An alert, change_cipher_spec or application_data record is refused,
        first or after a partial hello.
        """
        self.assertRefused(b"\x15\x03\x01\x00\x02\x02\x28", "content type 21")
        self.assertRefused(b"\x14", "content type 20")
        handshake = handshakeBytes(FIXTURES["openssl-sni.bin"])
        partial = frame(handshake[:100], [])
        self.assertRefused(partial + b"\x17\x03\x03\x00\x01x", "content type 23")

    def test_recordVersion(self) -> None:
        """
        A record version whose major byte is not 3 is refused.
        """
        self.assertRefused(b"\x16\x02", "version major 2")
        self.assertRefused(b"\x16\xfe\xfd", "version major 254")  # DTLS

    def test_emptyRecord(self) -> None:
        """
        A zero-length handshake record is refused.
        """
        self.assertRefused(b"\x16\x03\x01\x00\x00", "empty")

    def test_recordTooLong(self) -> None:
        """
        A record longer than 2**14 bytes is refused from its header.
        """
        self.assertRefused(b"\x16\x03\x01\x40\x01", "exceeds 16384")

    def test_notClientHello(self) -> None:
        """
        A handshake message other than ClientHello (here a ServerHello) is
        refused at its first byte.
        """
        self.assertRefused(b"\x16\x03\x03\x00\x30\x02", "type 2 is not ClientHello")

    def test_declaredTooLarge(self) -> None:
        """
        A ClientHello whose declared length exceeds the limit is refused as
        soon as the length is known, before the bytes arrive.
        """
        self.assertRefused(b"\x16\x03\x01\x00\x04\x01\x01\x00\x00", "exceeds", maxSize=1000)
        self.assertRefused(b"\x16\x03\x01\x00\x04\x01\x00\x03\xe8", "exceeds", maxSize=1000)

    def test_bufferCap(self) -> None:
        """
        A ClientHello whose records exceed C{maxSize} in total is refused,
        however the bytes arrive; one just at the limit is accepted.
        """
        data = FIXTURES["openssl-multirecord.bin"]
        self.assertIsNotNone(parseAll(data, maxSize=len(data)))
        self.assertRefused(data, "limit", maxSize=len(data) - 1)
        reader = ClientHelloReader(maxSize=len(data) - 1)
        self.assertRaises(
            ClientHelloError, lambda: [reader.feed(data[i : i + 1]) for i in range(len(data))]
        )
        # The cap covers record headers: one-byte records of a small hello.
        small = FIXTURES["openssl-sni-tls12.bin"]
        reframed = frame(handshakeBytes(small), [1] * 10000)
        self.assertRefused(reframed, "limit", maxSize=len(reframed) - 1)

    def test_defaultCap(self) -> None:
        """
        The default limit holds a ClientHello filling one full record (or a
        little more, fragmented), and refuses an endless stream of records.
        """
        self.assertGreater(ClientHelloReader.defaultMaxSize, 2**14 + 5)
        body = helloBody([extension(21, b"\x00" * (2**14 - 200))])
        hello = parseAll(frame(helloMessage(body), [2**14]))
        self.assertIsNotNone(hello)
        endless = frame(b"\x01\xff\xff\xff" + b"\x00" * 100000, [2**14] * 100)
        reader = ClientHelloReader()
        self.assertRaises(ClientHelloError, reader.feed, endless)

    def test_maxSizeTooSmall(self) -> None:
        """
        A C{maxSize} that cannot hold any ClientHello is a programming error.
        """
        self.assertRaises(ValueError, ClientHelloReader, 8)

    def test_trailingHandshakeBytes(self) -> None:
        """
        Handshake bytes after the ClientHello in its record are refused.
        """
        message = helloMessage(helloBody([sniExtension(b"a.test")]))
        self.assertRefused(frame(message + b"\x01", []), "unexpected bytes after")
        # Split over records, the extra byte still shows.
        self.assertRefused(frame(message + b"\x01\x00", [10]), "unexpected bytes after")


class BodyTests(SynchronousTestCase):
    """
    The fields and extensions of a ClientHello body, built by hand.
    """

    def parse(self, *extensions: bytes, **kwargs: object) -> ClientHello:
        hello = parseAll(helloRecord(helloBody(list(extensions), **kwargs)))  # type: ignore[arg-type]
        assert hello is not None
        return hello

    def assertBodyRefused(self, body: bytes, reasonPart: str) -> None:
        e = self.assertRaises(ClientHelloError, parseAll, helloRecord(body))
        self.assertIn(reasonPart, e.reason)

    def test_minimal(self) -> None:
        """
        A hello with no extensions block at all (TLS 1.2 and before) has no
        server name, ALPN or supported versions.
        """
        hello = parseAll(helloRecord(helloBody(None, legacyVersion=0x0301)))
        self.assertEqual(
            hello, ClientHello(None, (), 0x0301, (), raw=helloRecord(helloBody(None, 0x0301)))
        )

    def test_parseBody(self) -> None:
        """
        L{parseClientHelloBody} parses a body without record or handshake
        headers.
        """
        hello = parseClientHelloBody(helloBody([sniExtension(b"x.test")]))
        self.assertEqual(hello.serverName, "x.test")
        self.assertEqual(hello.raw, b"")

    def test_serverNameNormalized(self) -> None:
        """
        The server name is lower-cased and one trailing dot is removed.
        """
        self.assertEqual(self.parse(sniExtension(b"WWW.Example.COM.")).serverName, "www.example.com")
        self.assertEqual(self.parse(sniExtension(b"_srv.x-y.test")).serverName, "_srv.x-y.test")
        self.assertEqual(self.parse(sniExtension(b"xn--bcher-kva.test")).serverName,
                         "xn--bcher-kva.test")
        longName = b".".join([b"a" * 63] * 3 + [b"b" * 61])
        self.assertEqual(len(longName), 253)
        self.assertEqual(self.parse(sniExtension(longName)).serverName, longName.decode())

    def test_badServerNames(self) -> None:
        """
        Names that are not DNS host names are refused.
        """
        for bad in [
            b"1.2.3.4",
            b"::1",
            b"[::1]",
            b"a..test",
            b".",
            b"..",
            b"a.test..",
            b"-a.test",
            b"a-.test",
            b"a test",
            b"a/test",
            b"a\x00.test",
            b"caf\xc3\xa9.test",
            b"a" * 64 + b".test",
            b".".join([b"a" * 63] * 4),
        ]:
            e = self.assertRaises(
                ClientHelloError, parseAll, helloRecord(helloBody([sniExtension(bad)]))
            )
            self.assertIn("server_name", e.reason, bad)
            # A server answers these with unrecognized_name.
            self.assertIsInstance(e, ServerNameError)

    def test_nonASCIIServerName(self) -> None:
        """
        A non-ASCII name (UTF-8 or Latin-1 bytes, split anywhere) is a
        L{ServerNameError} marked not ASCII (what the C{ssl} module's
        server-name callback cannot decode); an ASCII bad name is not.
        """
        for name in [b"caf\xc3\xa9.test", b"\xe9.test", b"a.t\xffst"]:
            hello = helloRecord(helloBody([sniExtension(name)]))
            for cut in range(1, len(hello)):
                reader = ClientHelloReader()
                self.assertIsNone(reader.feed(hello[:cut]))
                e = self.assertRaises(ServerNameError, reader.feed, hello[cut:])
                self.assertFalse(e.ascii)
                self.assertEqual(e.reason, "server_name: host_name is not ASCII")
        e = self.assertRaises(ServerNameError, parseAll, helloRecord(helloBody([sniExtension(b"a..test")])))
        self.assertTrue(e.ascii)

    def test_serverNameListShapes(self) -> None:
        """
        An empty server name list, an empty name, two host names, an unknown
        name type and trailing bytes are refused.
        """
        self.assertBodyRefused(helloBody([extension(0, b"\x00\x00")]), "server_name_list length")
        self.assertBodyRefused(helloBody([sniExtension(b"")]), "host_name length")
        self.assertBodyRefused(
            helloBody([sniExtension(b"a.test", b"b.test")]), "more than one host_name"
        )
        self.assertBodyRefused(helloBody([sniExtension(b"a.test", nameType=1)]), "name_type 1")
        self.assertBodyRefused(
            helloBody([extension(0, b"\x00\x09\x00\x00\x06a.test" + b"\x00")]), "trailing"
        )
        self.assertBodyRefused(helloBody([extension(0, b"\x00\x09\x00\x00\x06a.tes")]), "past")
        self.assertBodyRefused(helloBody([extension(0, b"")]), "past")

    def test_alpn(self) -> None:
        """
        ALPN names are returned in order, as ISO-8859-1 strings; an empty
        list or an empty name is refused.
        """
        hello = self.parse(alpnExtension(b"h2", b"http/1.1", b"\xff\x00"))
        self.assertEqual(hello.alpn, ("h2", "http/1.1", "\xff\x00"))
        self.assertBodyRefused(helloBody([extension(16, b"\x00\x00")]), "protocol_name_list")
        self.assertBodyRefused(helloBody([alpnExtension(b"h2", b"")]), "protocol_name length")

    def test_supportedVersions(self) -> None:
        """
        Supported versions are returned in order; an odd or empty list is
        refused.
        """
        hello = self.parse(versionsExtension(0x0304, 0x7F1C, 0x0303))
        self.assertEqual(hello.supportedVersions, (0x0304, 0x7F1C, 0x0303))
        self.assertBodyRefused(helloBody([extension(43, b"\x03\x03\x04\x03")]), "odd")
        self.assertBodyRefused(helloBody([extension(43, b"\x00")]), "versions length")
        self.assertBodyRefused(helloBody([extension(43, b"\x02\x03\x04\x00")]), "trailing")

    def test_otherExtensionsIgnored(self) -> None:
        """
        Extensions this reader does not use are skipped, whatever they hold,
        including empty ones.
        """
        hello = self.parse(
            extension(0xFF01, b"\x00"),
            extension(21, b"\x00" * 300),
            extension(0xAAAA, b""),
            sniExtension(b"a.test"),
            extension(41, b"\xde\xad"),
        )
        self.assertEqual(hello.serverName, "a.test")

    def test_duplicateExtension(self) -> None:
        """
        An extension type that appears twice is refused.
        """
        self.assertBodyRefused(
            helloBody([sniExtension(b"a.test"), sniExtension(b"a.test")]), "appears twice"
        )
        self.assertBodyRefused(helloBody([extension(5, b""), extension(5, b"")]), "appears twice")

    def test_fieldLengths(self) -> None:
        """
        Session IDs over 32 bytes, odd or empty cipher suite lists, empty
        compression lists, a non-TLS legacy version and extension blocks
        that do not fill the message are refused.
        """
        self.assertBodyRefused(helloBody(sessionId=b"\x00" * 33), "legacy_session_id")
        self.assertBodyRefused(helloBody(suites=b"\x13\x01\x13"), "odd cipher_suites")
        self.assertBodyRefused(helloBody(suites=b"\x13"), "cipher_suites length")
        self.assertBodyRefused(helloBody(suites=b""), "cipher_suites length")
        self.assertBodyRefused(helloBody(compression=b""), "legacy_compression_methods")
        self.assertBodyRefused(helloBody(legacyVersion=0x0200), "legacy_version")
        self.assertBodyRefused(helloBody([]) + b"\x00", "trailing")
        self.assertBodyRefused(helloBody(None) + b"\x00", "extensions length")
        self.assertBodyRefused(helloBody([sniExtension(b"a.test")])[:-1], "past")
        self.assertBodyRefused(helloBody(None)[:30], "random")
        self.assertBodyRefused(b"", "legacy_version")


# Hypothesis settings for the fuzz tests: bounded, reproducible, no example
# database written to disk.
_fuzz = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def feedInPieces(data: bytes, cuts: List[int], maxSize: Optional[int] = None) -> None:
    """
    Feed C{data} cut at C{cuts}; only L{ClientHelloError} may escape, and the
    reader's answers must be consistent.
    """
    reader = ClientHelloReader(maxSize)
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    done = None
    for start, end in zip(points, points[1:]):
        result = reader.feed(data[start:end])
        if done is not None:
            assert result is done
        elif result is not None:
            assert isinstance(result, ClientHello)
            assert data.startswith(result.raw)
            done = result


class FuzzTests(SynchronousTestCase):
    """
    Arbitrary and mutated input raises only L{ClientHelloError}.
    """

    @_fuzz
    @given(st.binary(max_size=2000), st.lists(st.integers(min_value=0), max_size=8))
    def test_randomBytes(self, data: bytes, cuts: List[int]) -> None:
        """
        Random bytes, cut anywhere, give C{None}, a L{ClientHello} or
        L{ClientHelloError}.
        """
        try:
            feedInPieces(data, cuts)
        except ClientHelloError:
            pass

    @_fuzz
    @given(st.binary(max_size=600), st.lists(st.integers(min_value=0), max_size=8))
    def test_randomHandshakeInRecords(self, body: bytes, cuts: List[int]) -> None:
        """
        Random bytes behind valid record and handshake headers (so the body
        parser is reached) give only L{ClientHelloError} or a result.
        """
        data = helloRecord(body)
        try:
            feedInPieces(data, cuts)
        except ClientHelloError:
            pass

    @_fuzz
    @given(
        st.sampled_from(sorted(FIXTURES)),
        st.lists(
            st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=255)),
            min_size=1,
            max_size=6,
        ),
        st.lists(st.integers(min_value=0), max_size=8),
        st.lists(st.integers(min_value=1, max_value=300), max_size=20),
        st.sampled_from([None, 600, 2000]),
    )
    def test_mutatedFixtures(
        self,
        name: str,
        mutations: List[Tuple[int, int]],
        cuts: List[int],
        recordSizes: List[int],
        maxSize: Optional[int],
    ) -> None:
        """
        Real hellos, re-framed into records of random sizes with a few bytes
        overwritten, fed in random pieces under various limits, give only a
        result or L{ClientHelloError}.
        """
        data = bytearray(frame(handshakeBytes(FIXTURES[name]), recordSizes))
        for position, value in mutations:
            data[position % len(data)] = value
        try:
            feedInPieces(bytes(data), cuts, maxSize)
        except ClientHelloError:
            pass

    @_fuzz
    @given(
        st.lists(st.binary(max_size=12), max_size=4),
        st.lists(st.binary(min_size=0, max_size=12), max_size=4),
        st.lists(st.integers(min_value=0, max_value=0xFFFF), max_size=6),
        st.lists(st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=20)), max_size=4),
    )
    def test_structuredExtensions(
        self,
        names: List[bytes],
        protocols: List[bytes],
        versions: List[int],
        others: List[Tuple[int, bytes]],
    ) -> None:
        """
        Well-framed hellos carrying arbitrary SNI, ALPN and version contents
        either parse to exactly those values or are refused.
        """
        extensions = [sniExtension(*names), alpnExtension(*protocols), versionsExtension(*versions)]
        extensions += [extension(t, d) for t, d in others]
        try:
            hello = parseAll(helloRecord(helloBody(extensions)))
        except ClientHelloError:
            return
        assert hello is not None
        assert len(names) == 1
        assert hello.serverName == names[0].decode("ascii").lower().rstrip(".")
        assert hello.alpn == tuple(p.decode("latin-1") for p in protocols)
        assert hello.supportedVersions == tuple(versions)
