# -*- test-case-name: tests.test_proxyprotocol -*-
"""
Building PROXY protocol headers (HAProxy's PROXY protocol, versions 1 and 2)
to write to an upstream connection before any byte from the client, so that
the upstream learns the client's address.

Accepting the header is not here: Twisted's C{haproxy:} endpoint prefix
(L{twisted.protocols.haproxy}) does that.

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

from twisted.internet.address import IPv4Address, IPv6Address

__all__ = ["formatV1", "formatV2", "headerFor", "V2_SIGNATURE"]

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
