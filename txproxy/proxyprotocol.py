# -*- test-case-name: tests.test_proxyprotocol -*-
"""
Building PROXY protocol headers (HAProxy's PROXY protocol, versions 1 and 2)
to write to an upstream connection before any byte from the client, so that
the upstream learns the client's address.

Reading a header from an accepted connection (the C{haproxy:} listener
prefix) is L{HeaderParser}, also pure: bytes in, a L{ProxyInfo} or an
L{InvalidHeader} out; the listener's wrapper in L{txproxy.proxyaccept} adds the
I/O, the timeout and the connection cap.

Addresses may be given as Twisted addresses (L{IPv4Address}, L{IPv6Address},
L{UNIXAddress}, or anything with C{host} (or C{hostname}) and C{port}
attributes), as
C{(host, port)} tuples (also C{socket}-style 4-tuples for IPv6), or as
C{None}.  Only IP literals count as IP addresses: a host name, a UNIX socket
or C{None} on either side makes the header say "unknown" (C{PROXY UNKNOWN}
in version 1, the C{UNSPEC} family in version 2), which tells the receiver
to use the connection's own addresses.

IPv4-mapped IPv6 addresses (C{::ffff:192.0.2.1}, what an IPv6 listener sees
for an IPv4 client) are written as plain IPv4 when both sides are IPv4 or
mapped, so the upstream sees the client's IPv4 address; when one side is
real IPv6 and the other IPv4, both are written as IPv6 (the IPv4 one mapped),
as HAProxy does.

All functions are pure: bytes out, no I/O.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Any, Optional, Tuple, Union

import attr

from twisted.internet.address import IPv4Address, IPv6Address

__all__ = [
    "formatV1",
    "formatV2",
    "headerFor",
    "V2_SIGNATURE",
    "HeaderParser",
    "InvalidHeader",
    "ProxyInfo",
    "parseV1",
    "parseV2",
]

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
"""The 12 bytes that open every version 2 header."""

_V2_PROXY = 0x21  # version 2, command PROXY
_V2_LOCAL = 0x20  # version 2, command LOCAL
_V2_TCP4 = 0x11  # AF_INET, SOCK_STREAM
_V2_TCP6 = 0x21  # AF_INET6, SOCK_STREAM
_V2_UNSPEC = 0x00

_V1_UNKNOWN = b"PROXY UNKNOWN \r\n"
"""
The version 1 header without addresses.  The specification's shortest form is
C{PROXY UNKNOWN\\r\\n}, and it says receivers ignore whatever follows
C{UNKNOWN} up to the CRLF; Twisted's own C{V1Parser} (behind the C{haproxy:}
endpoint prefix) refuses the short form because it splits on a space after
C{UNKNOWN}, so one space is sent there, which every reader accepts.
"""

_IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
_Endpoint = Tuple[_IPAddress, int]

AddressLike = Any
"""
What the functions accept as an address: a Twisted address object, a
C{(host, port)} tuple, or C{None}.  (C{Any} because Twisted addresses share
no typed base class.)
"""


def _endpoint(address: AddressLike) -> Optional[_Endpoint]:
    """
    Turn an address into an IP address and port, or C{None} if it is not an
    IP address and port.

    @raise ValueError: if it is an IP address with a port outside 0..65535.
    """
    if address is None:
        return None
    host: object
    port: object
    if isinstance(address, tuple):
        if len(address) < 2:
            return None
        host, port = address[0], address[1]
    elif isinstance(address, (IPv4Address, IPv6Address)):
        host, port = address.host, address.port
    else:
        # HostnameAddress says hostname; the others say host.
        host = getattr(address, "host", getattr(address, "hostname", None))
        port = getattr(address, "port", None)
    if isinstance(host, bytes):
        try:
            host = host.decode("ascii")
        except UnicodeDecodeError:
            return None
    if not isinstance(host, str) or not isinstance(port, int) or isinstance(port, bool):
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    # A zone index (fe80::1%eth0) means nothing to the receiver.
    host = host.split("%", 1)[0]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if not 0 <= port <= 0xFFFF:
        raise ValueError("port %d out of range for %s" % (port, host))
    return ip, port


def _asIPv4(ip: _IPAddress) -> Optional[ipaddress.IPv4Address]:
    if isinstance(ip, ipaddress.IPv4Address):
        return ip
    return ip.ipv4_mapped


def _asIPv6(ip: _IPAddress) -> ipaddress.IPv6Address:
    if isinstance(ip, ipaddress.IPv6Address):
        return ip
    return ipaddress.IPv6Address(b"\x00" * 10 + b"\xff\xff" + ip.packed)


def _ipv6Text(ip: ipaddress.IPv6Address) -> str:
    # Python before 3.13 writes mapped addresses as ::ffff:c000:201.
    mapped = ip.ipv4_mapped
    if mapped is not None:
        return "::ffff:%s" % (mapped,)
    return ip.compressed


def _pair(
    source: AddressLike, destination: AddressLike
) -> Optional[Tuple[int, _Endpoint, _Endpoint]]:
    """
    Decide the family of the header.

    @return: C{(4 or 6, source, destination)} with both addresses of that
        family, or C{None} when either is not an IP address.
    """
    s = _endpoint(source)
    d = _endpoint(destination)
    if s is None or d is None:
        return None
    s4 = _asIPv4(s[0])
    d4 = _asIPv4(d[0])
    if s4 is not None and d4 is not None:
        return 4, (s4, s[1]), (d4, d[1])
    return 6, (_asIPv6(s[0]), s[1]), (_asIPv6(d[0]), d[1])


def formatV1(source: AddressLike, destination: AddressLike) -> bytes:
    """
    Build a version 1 (text) PROXY header.

    @param source: the client's address (the peer of the accepted
        connection, or the address a PROXY header carried to us).
    @param destination: the address the client connected to (our listening
        address, or the original destination in transparent mode).
    @return: C{b"PROXY TCP4 ...\\r\\n"}, C{b"PROXY TCP6 ...\\r\\n"}, or
        L{_V1_UNKNOWN} when either address is not an IP address.
    @raise ValueError: if a port is out of range.
    """
    pair = _pair(source, destination)
    if pair is None:
        return _V1_UNKNOWN
    family, (sip, sport), (dip, dport) = pair
    if family == 4:
        line = "PROXY TCP4 %s %s %d %d\r\n" % (sip, dip, sport, dport)
    else:
        assert isinstance(sip, ipaddress.IPv6Address)
        assert isinstance(dip, ipaddress.IPv6Address)
        line = "PROXY TCP6 %s %s %d %d\r\n" % (_ipv6Text(sip), _ipv6Text(dip), sport, dport)
    return line.encode("ascii")


def formatV2(source: AddressLike, destination: AddressLike, local: bool = False) -> bytes:
    """
    Build a version 2 (binary) PROXY header, without TLVs.

    @param source: the client's address (see L{formatV1}).
    @param destination: the address the client connected to.
    @param local: send the C{LOCAL} command instead of C{PROXY}: the
        connection was made by the proxy itself (a health check), and the
        addresses are ignored.
    @return: the header: the signature, C{PROXY} with C{TCP4} or C{TCP6}
        addresses, or C{PROXY} with the C{UNSPEC} family and no addresses
        when either address is not an IP address.
    @raise ValueError: if a port is out of range.
    """
    if local:
        return V2_SIGNATURE + struct.pack("!BBH", _V2_LOCAL, _V2_UNSPEC, 0)
    pair = _pair(source, destination)
    if pair is None:
        return V2_SIGNATURE + struct.pack("!BBH", _V2_PROXY, _V2_UNSPEC, 0)
    family, (sip, sport), (dip, dport) = pair
    body = sip.packed + dip.packed + struct.pack("!HH", sport, dport)
    familyByte = _V2_TCP4 if family == 4 else _V2_TCP6
    return V2_SIGNATURE + struct.pack("!BBH", _V2_PROXY, familyByte, len(body)) + body


def headerFor(version: str, source: AddressLike, destination: AddressLike) -> bytes:
    """
    Build the PROXY header named by C{--proxy-protocol-send}.

    @param version: C{"v1"} or C{"v2"}.
    @param source: the client's address.
    @param destination: the address the client connected to.
    @return: the header bytes.
    @raise ValueError: for another version, or a port out of range.
    """
    if version == "v1":
        return formatV1(source, destination)
    if version == "v2":
        return formatV2(source, destination)
    raise ValueError("unknown PROXY protocol version %r (expected 'v1' or 'v2')" % (version,))


# ---------------------------------------------------------------------------
# Reading the header (the C{haproxy:} listener prefix)


class InvalidHeader(ValueError):
    """
    The bytes received are not a valid PROXY header.  Its text says why, in
    a few words, for the one log line the listener writes before closing.
    """


@attr.s(frozen=True, slots=True, auto_attribs=True)
class ProxyInfo:
    """
    A PROXY header read from an accepted connection.

    @ivar header: the header's bytes.
    @ivar source: the client address it carried (an L{IPv4Address} or
        L{IPv6Address}), or L{None} when it carries none (version 1
        C{UNKNOWN}, version 2 C{LOCAL} or C{UNSPEC}): the connection's own
        peer is then the client.
    @ivar destination: the address the client connected to, or L{None}.
    """

    header: bytes
    source: Optional[Union[IPv4Address, IPv6Address]]
    destination: Optional[Union[IPv4Address, IPv6Address]]


_V1_PREFIX = b"PROXY "
_V1_MAX = 107
"""The longest version 1 header, CRLF included (the specification's bound)."""
_V2_FIXED = 16
_V2_MAX_BODY = 0xFFFF


def _v1Address(family: bytes, text: bytes) -> str:
    """
    Check one version 1 address: an IPv4 dotted quad for C{TCP4}, an IPv6
    address (no zone, no brackets) for C{TCP6}.

    @return: the address as text, IPv6 compressed.
    @raise InvalidHeader: it is not one.
    """
    try:
        host = text.decode("ascii")
        if family == b"TCP4":
            return str(ipaddress.IPv4Address(host))
        if "%" in host:
            raise ValueError(host)
        return _ipv6Text(ipaddress.IPv6Address(host))
    except (UnicodeDecodeError, ValueError):
        raise InvalidHeader("not an %s address: %r" % ("IPv4" if family == b"TCP4" else "IPv6", text)) from None


def _v1Port(text: bytes) -> int:
    if not 1 <= len(text) <= 5 or not text.isdigit():
        raise InvalidHeader("not a port: %r" % (text,))
    port = int(text)
    if port > 0xFFFF:
        raise InvalidHeader("port out of range: %r" % (text,))
    return port


def parseV1(line: bytes) -> ProxyInfo:
    """
    Parse one complete version 1 header line (CRLF included).

    C{PROXY TCP4|TCP6 SRC DST SPORT DPORT}, single spaces, addresses of the
    named family, decimal ports; or C{PROXY UNKNOWN} with anything up to the
    CRLF (which the specification says to ignore).

    @raise InvalidHeader: anything else (a NUL, a host name, C{999.1.1.1},
        a missing field, an extra one).
    """
    if not line.endswith(b"\r\n") or not line.startswith(_V1_PREFIX):
        raise InvalidHeader("not a PROXY header")
    body = line[len(_V1_PREFIX) : -2]
    if b"\x00" in body or b"\r" in body or b"\n" in body:
        raise InvalidHeader("a control character in a version 1 header")
    if body == b"UNKNOWN" or body.startswith(b"UNKNOWN "):
        return ProxyInfo(line, None, None)
    fields = body.split(b" ")
    if len(fields) != 5 or fields[0] not in (b"TCP4", b"TCP6"):
        raise InvalidHeader("malformed version 1 header")
    family, src, dst, sport, dport = fields
    cls = IPv4Address if family == b"TCP4" else IPv6Address
    return ProxyInfo(
        line,
        cls("TCP", _v1Address(family, src), _v1Port(sport)),
        cls("TCP", _v1Address(family, dst), _v1Port(dport)),
    )


def parseV2(header: bytes) -> ProxyInfo:
    """
    Parse one complete version 2 header (fixed part, addresses and TLVs).

    The C{LOCAL} command, and C{PROXY} with the C{UNSPEC} family, carry no
    client address.  C{PROXY} over C{TCP4} or C{TCP6} carries one; every
    other family and protocol (C{UNIX}, datagrams) is refused, as is an
    address block shorter than its family needs.  TLVs are skipped.

    @raise InvalidHeader: as said.
    """
    if len(header) < _V2_FIXED or header[:12] != V2_SIGNATURE:
        raise InvalidHeader("not a PROXY header")
    versionCommand, familyProtocol, length = struct.unpack("!BBH", header[12:16])
    if versionCommand >> 4 != 2:
        raise InvalidHeader("unsupported PROXY protocol version %d" % (versionCommand >> 4,))
    command = versionCommand & 0x0F
    if command not in (0, 1):
        raise InvalidHeader("unknown version 2 command %d" % (command,))
    if len(header) != _V2_FIXED + length:
        raise InvalidHeader("version 2 header length mismatch")
    if command == 0 or familyProtocol == _V2_UNSPEC:
        return ProxyInfo(header, None, None)
    body = header[_V2_FIXED:]
    if familyProtocol == _V2_TCP4:
        if length < 12:
            raise InvalidHeader("version 2 TCP4 addresses truncated")
        s, d = ipaddress.IPv4Address(body[0:4]), ipaddress.IPv4Address(body[4:8])
        sport, dport = struct.unpack("!HH", body[8:12])
        return ProxyInfo(header, IPv4Address("TCP", str(s), sport), IPv4Address("TCP", str(d), dport))
    if familyProtocol == _V2_TCP6:
        if length < 36:
            raise InvalidHeader("version 2 TCP6 addresses truncated")
        s6, d6 = ipaddress.IPv6Address(body[0:16]), ipaddress.IPv6Address(body[16:32])
        sport, dport = struct.unpack("!HH", body[32:36])
        return ProxyInfo(header, IPv6Address("TCP", _ipv6Text(s6), sport), IPv6Address("TCP", _ipv6Text(d6), dport))
    family = {1: "INET", 2: "INET6", 3: "UNIX"}.get(familyProtocol >> 4, "unknown")
    protocol = {1: "STREAM", 2: "DGRAM"}.get(familyProtocol & 0x0F, "unknown")
    raise InvalidHeader("unsupported version 2 address family %s/%s" % (family, protocol))


class HeaderParser:
    """
    Read a PROXY header, version 1 or 2, from bytes arriving in pieces of
    any size (a header split anywhere, even inside the signature, is read
    the same as one in one piece).

    The version is decided by the first bytes: C{PROXY } for version 1,
    the 12-byte signature for version 2; bytes that cannot begin either are
    refused as soon as they arrive.  A version 1 header longer than 107
    bytes is refused without waiting for its end.  What the parser holds is
    bounded by the header's own limit (107 bytes, or 16 + 65535).

    Use: C{info, rest = parser.feed(data)}: C{info} is L{None} until the
    header is complete; then C{rest} holds the bytes that followed it.
    Feeding after that is an error.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._done = False

    def feed(self, data: bytes) -> Tuple[Optional[ProxyInfo], bytes]:
        """
        Take more bytes.

        @return: C{(None, b"")} while the header is incomplete;
            C{(info, rest)} once it is.
        @raise InvalidHeader: the bytes cannot be (or begin) a valid header.
        """
        if self._done:
            raise RuntimeError("the PROXY header was already read")
        buffer = self._buffer = self._buffer + data
        head = buffer[:12]
        if V2_SIGNATURE.startswith(head):
            if len(buffer) < _V2_FIXED:
                return None, b""
            size = _V2_FIXED + struct.unpack("!H", buffer[14:16])[0]
            if buffer[12] >> 4 != 2:
                raise InvalidHeader("unsupported PROXY protocol version %d" % (buffer[12] >> 4,))
            if len(buffer) < size:
                return None, b""
            self._done = True
            self._buffer = b""
            return parseV2(buffer[:size]), buffer[size:]
        if not _V1_PREFIX.startswith(buffer[:6]):
            raise InvalidHeader("not a PROXY header")
        end = buffer.find(b"\r\n", 0, _V1_MAX)
        if end < 0:
            if len(buffer) >= _V1_MAX or b"\n" in buffer or b"\x00" in buffer:
                raise InvalidHeader("malformed version 1 header")
            return None, b""
        self._done = True
        self._buffer = b""
        return parseV1(buffer[: end + 2]), buffer[end + 2 :]
