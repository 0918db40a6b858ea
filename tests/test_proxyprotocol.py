# -*- test-case-name: tests.test_proxyprotocol -*-
"""
Tests for L{txproxy.proxyprotocol}: every header is read back with Twisted's
own PROXY protocol parsers.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Any, List, Optional

from twisted.internet.address import HostnameAddress, IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.protocols.haproxy._v1parser import V1Parser
from twisted.protocols.haproxy._v2parser import V2Parser
from twisted.protocols.haproxy._wrapper import HAProxyWrappingFactory
from twisted.trial.unittest import SynchronousTestCase

from txproxy.proxyprotocol import (
    V2_SIGNATURE,
    HeaderParser,
    InvalidHeader,
    ProxyInfo,
    formatV1,
    formatV2,
    headerFor,
)


class _Recorder(Protocol):
    def __init__(self) -> None:
        self.received: List[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)


def normal(address: Any) -> Any:
    """
    An address with its host in canonical form (Twisted's V2Parser writes
    IPv6 addresses uncompressed), for comparisons.
    """
    if address is None:
        return None
    return (type(address).__name__, ipaddress.ip_address(address.host), address.port)


class RoundTripMixin:
    """
    Shared checks: C{header} builds a header, C{parser} reads it.
    """

    version: str
    parser: Any
    firstChunk: int

    def header(self, source: Any, destination: Any) -> bytes:
        return headerFor(self.version, source, destination)

    def roundTrip(self, source: Any, destination: Any) -> Any:
        header = self.header(source, destination)
        # V1Parser.parse takes the line without its CRLF.
        line = header[:-2] if self.version == "v1" else header
        info = self.parser.parse(line)
        tc: SynchronousTestCase = self  # type: ignore[assignment]
        tc.assertEqual(info.header, line)
        # Fed in two pieces, with bytes after it, the parser finds the same
        # end.  (Twisted's V2Parser.feed wants the first 16 bytes at once.)
        data = header + b"client bytes"
        for i in range(self.firstChunk, len(data)):
            parser = self.parser()
            parsed, rest = parser.feed(data[:i])
            if parsed is None:
                parsed, rest = parser.feed(data[i:])
            else:
                rest += data[i:]
            tc.assertEqual(parsed.header, line)
            tc.assertEqual(parsed, info)
            tc.assertEqual(rest, b"client bytes")
        return info

    def test_tcp4(self) -> None:
        """
        Two IPv4 addresses give a TCP4 header with both addresses and ports.
        """
        info = self.roundTrip(
            IPv4Address("TCP", "192.0.2.10", 51234), IPv4Address("TCP", "198.51.100.1", 443)
        )
        tc: SynchronousTestCase = self  # type: ignore[assignment]
        tc.assertEqual(normal(info.source), normal(IPv4Address("TCP", "192.0.2.10", 51234)))
        tc.assertEqual(normal(info.destination), normal(IPv4Address("TCP", "198.51.100.1", 443)))

    def test_tcp6(self) -> None:
        """
        Two IPv6 addresses give a TCP6 header, addresses in compressed form.
        """
        info = self.roundTrip(
            IPv6Address("TCP", "2001:db8::1", 1), IPv6Address("TCP", "2001:DB8:0:0:0:0:0:FFFF", 8443)
        )
        tc: SynchronousTestCase = self  # type: ignore[assignment]
        tc.assertEqual(normal(info.source), normal(IPv6Address("TCP", "2001:db8::1", 1)))
        tc.assertEqual(normal(info.destination), normal(IPv6Address("TCP", "2001:db8::ffff", 8443)))

    def test_longestIPv6(self) -> None:
        """
        The longest IPv6 addresses and ports fit (version 1 allows 107
        bytes).
        """
        longest = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe"
        info = self.roundTrip(
            IPv6Address("TCP", longest, 65535), IPv6Address("TCP", longest, 65535)
        )
        tc: SynchronousTestCase = self  # type: ignore[assignment]
        tc.assertEqual(normal(info.source), normal(IPv6Address("TCP", longest, 65535)))
        tc.assertLessEqual(len(formatV1(("::", 0), (longest, 65535))), 107)
        tc.assertEqual(len(formatV1((longest, 65535), (longest, 65535))), 104)

    def test_ipv4Mapped(self) -> None:
        """
        IPv4-mapped IPv6 addresses on both sides (an IPv6 listener accepting
        an IPv4 client) are sent as plain IPv4.
        """
        info = self.roundTrip(
            IPv6Address("TCP", "::ffff:192.0.2.10", 4000),
            IPv6Address("TCP", "::ffff:198.51.100.1", 80),
        )
        tc: SynchronousTestCase = self  # type: ignore[assignment]
        tc.assertEqual(normal(info.source), normal(IPv4Address("TCP", "192.0.2.10", 4000)))
        tc.assertEqual(normal(info.destination), normal(IPv4Address("TCP", "198.51.100.1", 80)))
        info = self.roundTrip(
            IPv6Address("TCP", "::ffff:192.0.2.10", 4000), IPv4Address("TCP", "127.0.0.1", 80)
        )
        tc.assertEqual(normal(info.source), normal(IPv4Address("TCP", "192.0.2.10", 4000)))

    def test_mixedFamilies(self) -> None:
        """
        An IPv4 address beside a real IPv6 one is sent IPv4-mapped in a TCP6
        header.
        """
        info = self.roundTrip(IPv4Address("TCP", "192.0.2.10", 4000), ("2001:db8::5", 443))
        tc: SynchronousTestCase = self  # type: ignore[assignment]
        tc.assertIsInstance(info.source, IPv6Address)
        tc.assertEqual(info.source.port, 4000)
        tc.assertEqual(ipaddress.ip_address(info.source.host).ipv4_mapped,
                       ipaddress.ip_address("192.0.2.10"))
        tc.assertEqual(normal(info.destination), normal(IPv6Address("TCP", "2001:db8::5", 443)))

    def test_tuplesAndZones(self) -> None:
        """
        C{(host, port)} tuples, socket-style IPv6 4-tuples, bytes hosts,
        bracketed IPv6 and zone indexes are accepted.
        """
        tc: SynchronousTestCase = self  # type: ignore[assignment]
        info = self.roundTrip(("10.0.0.1", 1234), (b"10.0.0.2", 80))
        tc.assertEqual(normal(info.source), normal(IPv4Address("TCP", "10.0.0.1", 1234)))
        tc.assertEqual(normal(info.destination), normal(IPv4Address("TCP", "10.0.0.2", 80)))
        info = self.roundTrip(("fe80::1%eth0", 5, 0, 2), ("[2001:db8::2]", 6))
        tc.assertEqual(normal(info.source), normal(IPv6Address("TCP", "fe80::1", 5)))
        tc.assertEqual(normal(info.destination), normal(IPv6Address("TCP", "2001:db8::2", 6)))
        info = self.roundTrip(IPv6Address("TCP", "fe80::1%lo", 7, scopeID=1), ("::1", 8))
        tc.assertEqual(normal(info.source), normal(IPv6Address("TCP", "fe80::1", 7)))

    def test_portZero(self) -> None:
        """
        Port 0 is a valid port.
        """
        info = self.roundTrip(("192.0.2.1", 0), ("192.0.2.2", 0))
        tc: SynchronousTestCase = self  # type: ignore[assignment]
        tc.assertEqual(info.source.port, 0)

    def test_notIP(self) -> None:
        """
        A UNIX socket, a host name, C{None}, or junk on either side gives a
        header without addresses, which Twisted reads as "no addresses".
        """
        tc: SynchronousTestCase = self  # type: ignore[assignment]
        ip = IPv4Address("TCP", "192.0.2.1", 1)
        for other in [
            UNIXAddress(b"/run/txproxy.sock"),
            UNIXAddress(None),
            HostnameAddress(b"example.com", 80),
            ("example.com", 80),
            ("10.0.0.1",),
            ("10.0.0.1", "80"),
            ("10.0.0.1", True),
            (b"\xff", 80),
            None,
            object(),
        ]:
            for source, destination in [(other, ip), (ip, other), (other, other)]:
                info = self.roundTrip(source, destination)
                tc.assertIsNone(info.source, (source, destination))
                tc.assertIsNone(info.destination)

    def test_hostnameAddressWithIP(self) -> None:
        """
        Any address object whose C{host} is an IP literal counts as an IP
        address.
        """
        info = self.roundTrip(HostnameAddress(b"192.0.2.7", 80), ("192.0.2.8", 81))
        tc: SynchronousTestCase = self  # type: ignore[assignment]
        tc.assertEqual(normal(info.source), normal(IPv4Address("TCP", "192.0.2.7", 80)))

    def test_badPort(self) -> None:
        """
        A port outside 0..65535 on an IP address is a programming error.
        """
        tc: SynchronousTestCase = self  # type: ignore[assignment]
        tc.assertRaises(ValueError, self.header, ("192.0.2.1", 65536), ("192.0.2.2", 1))
        tc.assertRaises(ValueError, self.header, ("192.0.2.1", 1), ("::1", -1))

    def test_haproxyWrapper(self) -> None:
        """
        A Twisted server behind the C{haproxy:} wrapper sees the client
        address we sent as its peer, and receives the client's bytes
        unchanged.
        """
        tc: SynchronousTestCase = self  # type: ignore[assignment]
        factory = HAProxyWrappingFactory(Factory.forProtocol(_Recorder))
        proxied = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 9999))
        assert proxied is not None
        transport = StringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 8080),
            peerAddress=IPv4Address("TCP", "127.0.0.1", 9999),
        )
        proxied.makeConnection(transport)
        header = self.header(("203.0.113.9", 40000), ("::ffff:198.51.100.3", 443))
        data = header + b"GET / HTTP/1.0\r\n\r\n"
        # The wrapper needs the first 16 bytes in one piece.
        proxied.dataReceived(data[:16])
        for i in range(16, len(data), 7):
            proxied.dataReceived(data[i : i + 7])
        tc.assertEqual(proxied.getPeer(), IPv4Address("TCP", "203.0.113.9", 40000))
        tc.assertEqual(proxied.getHost(), IPv4Address("TCP", "198.51.100.3", 443))
        tc.assertEqual(b"".join(proxied.wrappedProtocol.received), b"GET / HTTP/1.0\r\n\r\n")


class V1Tests(RoundTripMixin, SynchronousTestCase):
    """
    Version 1 headers, read back with L{V1Parser}.
    """

    version = "v1"
    parser = V1Parser
    firstChunk = 1

    def test_exactBytes(self) -> None:
        """
        The text follows the specification's examples exactly.
        """
        self.assertEqual(
            formatV1(("192.168.0.1", 56324), ("192.168.0.11", 443)),
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
        )
        self.assertEqual(
            formatV1(("2001:db8::1", 56324), ("::ffff:192.0.2.1", 443)),
            b"PROXY TCP6 2001:db8::1 ::ffff:192.0.2.1 56324 443\r\n",
        )
        self.assertEqual(formatV1(UNIXAddress(b"/s"), None), b"PROXY UNKNOWN \r\n")

    def test_headerForIsFormatV1(self) -> None:
        """
        C{headerFor("v1", ...)} is L{formatV1}.
        """
        self.assertEqual(
            headerFor("v1", ("10.0.0.1", 1), ("10.0.0.2", 2)),
            formatV1(("10.0.0.1", 1), ("10.0.0.2", 2)),
        )


class V2Tests(RoundTripMixin, SynchronousTestCase):
    """
    Version 2 headers, read back with L{V2Parser}.
    """

    version = "v2"
    parser = V2Parser
    firstChunk = 16

    def test_exactBytes(self) -> None:
        """
        The binary layout follows the specification: signature, version and
        command, family and protocol, length, addresses, ports.
        """
        self.assertEqual(
            formatV2(("192.168.0.1", 56324), ("192.168.0.11", 443)),
            V2_SIGNATURE
            + b"\x21\x11\x00\x0c"
            + bytes([192, 168, 0, 1, 192, 168, 0, 11])
            + struct.pack("!HH", 56324, 443),
        )
        header = formatV2(("2001:db8::1", 1), ("2001:db8::2", 2))
        self.assertEqual(header[12:16], b"\x21\x21\x00\x24")
        self.assertEqual(len(header), 16 + 36)
        self.assertEqual(formatV2(None, None), V2_SIGNATURE + b"\x21\x00\x00\x00")

    def test_local(self) -> None:
        """
        C{local=True} gives the LOCAL command, whatever the addresses.
        """
        header = formatV2(("192.0.2.1", 1), ("192.0.2.2", 2), local=True)
        self.assertEqual(header, V2_SIGNATURE + b"\x20\x00\x00\x00")
        info = V2Parser.parse(header)
        self.assertIsNone(info.source)
        self.assertIsNone(info.destination)

    def test_headerForIsFormatV2(self) -> None:
        """
        C{headerFor("v2", ...)} is L{formatV2}.
        """
        self.assertEqual(
            headerFor("v2", ("10.0.0.1", 1), ("10.0.0.2", 2)),
            formatV2(("10.0.0.1", 1), ("10.0.0.2", 2)),
        )


class HeaderForTests(SynchronousTestCase):
    """
    L{headerFor} picks the version.
    """

    def test_unknownVersion(self) -> None:
        """
        Versions other than C{"v1"} and C{"v2"} are refused.
        """
        for version in ["v3", "1", "V1", "", "2"]:
            e = self.assertRaises(
                ValueError, headerFor, version, ("10.0.0.1", 1), ("10.0.0.2", 2)
            )
            self.assertIn(repr(version), str(e))

    def test_versionsDiffer(self) -> None:
        """
        The two versions give different headers for the same addresses.
        """
        source: Optional[Any] = ("10.0.0.1", 1)
        self.assertTrue(headerFor("v1", source, ("10.0.0.2", 2)).startswith(b"PROXY TCP4 "))
        self.assertTrue(headerFor("v2", source, ("10.0.0.2", 2)).startswith(V2_SIGNATURE))


def _v2(familyProtocol: int, body: bytes, command: int = 0x21) -> bytes:
    return V2_SIGNATURE + struct.pack("!BBH", command, familyProtocol, len(body)) + body


class HeaderParserTests(SynchronousTestCase):
    """
    L{HeaderParser} reads what the C{haproxy:} listener accepts: a valid
    header in pieces of any size, never an address that is not one.
    """

    def feedSplit(self, data: bytes, cut: int) -> Any:
        parser = HeaderParser()
        info, rest = parser.feed(data[:cut])
        if info is not None:
            return info, rest + data[cut:]
        self.assertEqual(rest, b"")
        return parser.feed(data[cut:])

    def assertEverySplit(self, header: bytes, source: Any, destination: Any) -> None:
        """
        C{header + b"after"} split at every byte position (and whole)
        gives the same addresses and C{b"after"}.
        """
        data = header + b"after"
        for cut in range(0, len(data) + 1):
            info, rest = self.feedSplit(data, cut)
            self.assertIsInstance(info, ProxyInfo)
            self.assertEqual((info.header, info.source, info.destination), (header, source, destination), cut)
            self.assertEqual(rest, b"after", cut)
        # One byte at a time.
        parser = HeaderParser()
        for i in range(len(header) - 1):
            self.assertEqual(parser.feed(header[i : i + 1]), (None, b""))
        info, rest = parser.feed(header[-1:] + b"after")
        self.assertEqual((info.source, rest), (source, b"after"))

    def test_v1SplitAnywhere(self) -> None:
        """
        A version 1 header is read whatever its segments (C{PROX} /
        C{Y TCP4 ...} included), TCP4 and TCP6.
        """
        self.assertEverySplit(
            b"PROXY TCP4 198.51.100.7 203.0.113.1 5555 443\r\n",
            IPv4Address("TCP", "198.51.100.7", 5555),
            IPv4Address("TCP", "203.0.113.1", 443),
        )
        self.assertEverySplit(
            b"PROXY TCP6 2001:db8::7 2001:db8::1 5555 443\r\n",
            IPv6Address("TCP", "2001:db8::7", 5555),
            IPv6Address("TCP", "2001:db8::1", 443),
        )

    def test_v2SplitAnywhere(self) -> None:
        """
        A version 2 header is read whatever its segments, even inside the
        signature or the fixed part, TCP4 and TCP6, with TLVs skipped.
        """
        self.assertEverySplit(
            formatV2(("198.51.100.7", 5555), ("203.0.113.1", 443)),
            IPv4Address("TCP", "198.51.100.7", 5555),
            IPv4Address("TCP", "203.0.113.1", 443),
        )
        self.assertEverySplit(
            formatV2(("2001:db8::7", 5555), ("2001:db8::1", 443)),
            IPv6Address("TCP", "2001:db8::7", 5555),
            IPv6Address("TCP", "2001:db8::1", 443),
        )
        tlv = b"\x04\x00\x03abc"  # PP2_TYPE_NOOP, 3 bytes
        body = bytes([192, 0, 2, 1, 192, 0, 2, 2]) + struct.pack("!HH", 1, 2) + tlv
        self.assertEverySplit(_v2(0x11, body), IPv4Address("TCP", "192.0.2.1", 1), IPv4Address("TCP", "192.0.2.2", 2))

    def test_noAddresses(self) -> None:
        """
        C{UNKNOWN} (long and short forms), C{LOCAL} and C{UNSPEC} carry no
        address: the connection's own peer is the client.
        """
        for header in [
            b"PROXY UNKNOWN\r\n",
            b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n",
            formatV2(None, None, local=True),
            formatV2(None, None),
        ]:
            info, rest = HeaderParser().feed(header + b"x")
            self.assertEqual((info.source, info.destination, rest), (None, None, b"x"))

    def test_badV1Addresses(self) -> None:
        """
        A version 1 address that is not an IP literal of the named family
        (a name, C{999.1.1.1}, a NUL, IPv6 in TCP4, a zone, brackets) or a
        bad port is refused, split or not.
        """
        for src in [b"not-an-ip", b"999.1.1.1", b"1.2.3.4\x00", b"\x00", b"2001:db8::1", b"1.2.3", b"01.2.3.4",
                    b"1.2.3.4 ", b"\xc3\xa9.1.1.1"]:
            header = b"PROXY TCP4 " + src + b" 203.0.113.1 5555 443\r\n"
            for cut in range(len(header) + 1):
                self.assertRaises(InvalidHeader, self.feedSplit, header, cut)
        for header in [
            b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",
            b"PROXY TCP6 [::1] ::1 1 2\r\n",
            b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.5 65536 2\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.5 -1 2\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.5 1\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.5 1 2 3\r\n",
            b"PROXY TCP4  1.2.3.4 1.2.3.5 1 2\r\n",
            b"PROXY UDP4 1.2.3.4 1.2.3.5 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.5 1 2\n",
            b"PROXY TCP4 1.2.3.4\x001.2.3.5 1 2\r\n",
        ]:
            self.assertRaises(InvalidHeader, HeaderParser().feed, header)

    def test_badV2Addresses(self) -> None:
        """
        Version 2: the UNIX family, datagrams, unknown families, truncated
        address blocks, another version or command are refused.
        """
        unixBody = b"/tmp/a".ljust(108, b"\x00") + b"/tmp/b".ljust(108, b"\x00")
        for header in [
            _v2(0x31, unixBody),
            _v2(0x32, unixBody),
            _v2(0x12, bytes(12)),
            _v2(0x22, bytes(36)),
            _v2(0x41, bytes(12)),
            _v2(0x10, bytes(12)),
            _v2(0x11, bytes(11)),
            _v2(0x21, bytes(35)),
            _v2(0x11, bytes(12), command=0x22),
            _v2(0x11, bytes(12), command=0x11),
        ]:
            for cut in range(len(header) + 1):
                self.assertRaises(InvalidHeader, self.feedSplit, header, cut)

    def test_notAHeaderRefusedEarly(self) -> None:
        """
        Bytes that cannot begin a header are refused on arrival, without
        waiting for more: a request line, a partial signature gone wrong.
        """
        for data in [b"G", b"GET / HTTP/1.1\r\n", b"PROXX", b"\r\n\r\n\x00\r\nQUIX", b"PROXY\r"]:
            self.assertRaises(InvalidHeader, HeaderParser().feed, data)
        for data in [b"P", b"PROX", b"PROXY TCP4 1.2", b"\r\n\r\n\x00", V2_SIGNATURE + b"\x21\x11\x00"]:
            self.assertEqual(HeaderParser().feed(data), (None, b""))

    def test_v1Bounded(self) -> None:
        """
        A version 1 header with no CRLF within 107 bytes is refused.
        """
        parser = HeaderParser()
        self.assertEqual(parser.feed(b"PROXY UNKNOWN " + b"x" * 92), (None, b""))
        self.assertRaises(InvalidHeader, parser.feed, b"x")
        info, rest = HeaderParser().feed(b"PROXY UNKNOWN " + b"x" * 91 + b"\r\n")
        self.assertEqual((info.source, rest), (None, b""))
