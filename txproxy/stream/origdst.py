# -*- test-case-name: tests.test_origdst -*-
"""
The original destination of a connection that iptables or nftables
C{REDIRECT}ed (or C{DNAT}ed) to the proxy's listener, for C{--mode
transparent}, and the guard against relaying a connection back to the
proxy's own listener.

Linux only: L{originalDestination} asks the kernel's connection tracking for
the destination before NAT (C{SO_ORIGINAL_DST} for IPv4,
C{IP6T_SO_ORIGINAL_DST} for IPv6).  Elsewhere it returns C{None}.

Rules a user needs (the proxy listening on port 3129), for example::

    # traffic from this host (not from the proxy's own user, or it loops)
    iptables -t nat -A OUTPUT -p tcp --dport 80 -m owner ! --uid-owner proxy \\
        -j REDIRECT --to-ports 3129
    # traffic routed through this host
    iptables -t nat -A PREROUTING -i eth1 -p tcp --dport 80 -j REDIRECT --to-ports 3129
    ip6tables -t nat -A PREROUTING -i eth1 -p tcp --dport 80 -j REDIRECT --to-ports 3129

    # nftables
    table inet txproxy {
      chain prerouting {
        type nat hook prerouting priority dstnat;
        iifname "eth1" tcp dport 80 redirect to :3129
      }
    }
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import sys
from typing import Any, Callable, Collection, FrozenSet, Iterable, List, Optional, Tuple, Union

__all__ = [
    "SOL_IP",
    "SOL_IPV6",
    "SO_ORIGINAL_DST",
    "IP6T_SO_ORIGINAL_DST",
    "originalDestination",
    "decodeSockaddr",
    "isOwnListener",
    "localNetworks",
]

SOL_IP = 0
"""C{getsockopt} level for IPv4 options (C{IPPROTO_IP})."""

SOL_IPV6 = 41
"""C{getsockopt} level for IPv6 options (C{IPPROTO_IPV6})."""

SO_ORIGINAL_DST = 80
"""From C{linux/netfilter_ipv4.h}: the pre-NAT destination, a C{sockaddr_in}."""

IP6T_SO_ORIGINAL_DST = 80
"""From C{linux/netfilter_ipv6/ip6_tables.h}: the same, a C{sockaddr_in6}."""

_SOCKADDR_IN_SIZE = 16
_SOCKADDR_IN6_SIZE = 28
_AF_INET = int(socket.AF_INET)
_AF_INET6 = int(socket.AF_INET6)

_LINUX = sys.platform.startswith("linux")

_IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
_IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


def decodeSockaddr(data: bytes) -> Optional[Tuple[str, int]]:
    """
    Decode a C{struct sockaddr_in} or C{struct sockaddr_in6} as returned by
    C{getsockopt}.

    The family is in host byte order, the port and addresses in network byte
    order; the IPv6 flow label and scope are ignored.

    @param data: the raw structure.
    @return: C{(host, port)} with the host as a text IP address (IPv6
        compressed), or C{None} if the structure is too short, of another
        family, or all zeros.
    """
    if len(data) < 4:
        return None
    (family,) = struct.unpack_from("=H", data, 0)
    (port,) = struct.unpack_from("!H", data, 2)
    ip: _IPAddress
    if family == _AF_INET and len(data) >= 8:
        ip = ipaddress.IPv4Address(data[4:8])
    elif family == _AF_INET6 and len(data) >= 24:
        ip = ipaddress.IPv6Address(data[8:24])
    else:
        return None
    if port == 0 and ip.is_unspecified:
        return None
    return str(ip), port


def _ask(sock: Any, level: int, option: int, size: int) -> Optional[Tuple[str, int]]:
    try:
        data = sock.getsockopt(level, option, size)
    except (OSError, TypeError, ValueError):
        return None
    if not isinstance(data, bytes):
        return None
    return decodeSockaddr(data)


def originalDestination(transport: Any) -> Optional[Tuple[str, int]]:
    """
    Where the client meant to connect before NAT sent it to us.

    The socket comes from C{transport.getHandle()}.  For an IPv4 socket the
    kernel is asked with C{SO_ORIGINAL_DST}; for an IPv6 socket with
    C{IP6T_SO_ORIGINAL_DST} first and then, for an IPv4 client reaching a
    dual-stack listener (whose conntrack entry is IPv4), with
    C{SO_ORIGINAL_DST}.

    A connection that was not NATed but is tracked by conntrack gets its own
    local address back (that is the destination it used): the caller must
    still apply L{isOwnListener}.

    @param transport: a Twisted TCP transport (anything whose C{getHandle()}
        returns a socket).
    @return: C{(host, port)}, the host as a text IP address (IPv4 dotted
        quad, IPv6 compressed); or C{None} when it cannot be known: not
        Linux, no socket, no conntrack entry (the connection was not
        tracked, C{ENOENT}), the option unsupported (C{ENOPROTOOPT}), or any
        other error.
    """
    if not _LINUX:
        return None
    getHandle = getattr(transport, "getHandle", None)
    if getHandle is None:
        return None
    try:
        sock = getHandle()
    except Exception:
        return None
    family = getattr(sock, "family", None)
    if family == _AF_INET:
        return _ask(sock, SOL_IP, SO_ORIGINAL_DST, _SOCKADDR_IN_SIZE)
    if family == _AF_INET6:
        result = _ask(sock, SOL_IPV6, IP6T_SO_ORIGINAL_DST, _SOCKADDR_IN6_SIZE)
        if result is None:
            result = _ask(sock, SOL_IP, SO_ORIGINAL_DST, _SOCKADDR_IN_SIZE)
        return result
    return None


def _parseFibTrie(text: str) -> List[_IPNetwork]:
    """
    The C{host LOCAL} prefixes of C{/proc/net/fib_trie}: each address
    assigned to this host (C{/32}), and whole local ranges such as
    C{127.0.0.0/8} or an "AnyIP" route C{ip route add local 10.9.0.0/16 dev
    lo}.
    """
    networks: List[_IPNetwork] = []
    leaf: Optional[str] = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("|-- "):
            leaf = stripped[4:]
        elif leaf is not None and stripped.startswith("/") and stripped.endswith(" host LOCAL"):
            prefix = stripped[1:].split(" ", 1)[0]
            try:
                networks.append(ipaddress.ip_network("%s/%s" % (leaf, prefix), strict=False))
            except ValueError:
                continue
    return networks


def _parseIfInet6(text: str) -> List[_IPNetwork]:
    """
    The addresses of C{/proc/net/if_inet6} (32 hex digits first on each
    line), as C{/128} networks.
    """
    networks: List[_IPNetwork] = []
    for line in text.splitlines():
        fields = line.split()
        if not fields or len(fields[0]) != 32:
            continue
        try:
            networks.append(ipaddress.IPv6Network((bytes.fromhex(fields[0]), 128)))
        except ValueError:
            continue
    return networks


def _readText(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def localNetworks(readText: Callable[[str], str] = _readText) -> FrozenSet[_IPNetwork]:
    """
    The addresses of this host, as seen from the current network namespace.

    How: on Linux, the kernel's own list of local destinations, for the
    calling thread's network namespace: every C{host LOCAL} entry of
    C{/proc/net/fib_trie} (IPv4: each address on each
    interface, plus local ranges such as all of C{127.0.0.0/8}) and every
    address of C{/proc/net/if_inet6} (IPv6), both read from
    C{/proc/thread-self/net/} when it exists.  A binding test
    (C{bind()} succeeding) is not used because C{ip_nonlocal_bind}, common
    on failover setups, makes every address bindable.  C{127.0.0.0/8} and
    C{::1} are always included, also where C{/proc} is not readable or on
    other systems (where only those are known).  IPv6 "AnyIP" local routes
    are not seen.

    Reading C{fib_trie} costs time on a host with a very large routing
    table: callers that check every connection should compute this once and
    refresh it now and then (or on reload), not per connection.

    @param readText: reads a file's text, C{""} when unreadable (for tests).
    @return: the local networks.
    """
    networks: List[_IPNetwork] = [
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    ]
    if _LINUX:
        networks += _parseFibTrie(_readFirst(readText, "fib_trie"))
        networks += _parseIfInet6(_readFirst(readText, "if_inet6"))
    return frozenset(networks)


def _readFirst(readText: Callable[[str], str], name: str) -> str:
    """
    Read C{name} from the calling thread's network namespace
    (C{/proc/thread-self/net}, Linux 3.17+), else from C{/proc/net} (the
    main thread's, the same unless a thread called C{setns}).
    """
    for folder in ("/proc/thread-self/net/", "/proc/net/"):
        text = readText(folder + name)
        if text:
            return text
    return ""


def _ipAndPort(address: Any) -> Optional[Tuple[_IPAddress, int]]:
    """
    An address (Twisted C{IPv4Address}/C{IPv6Address} or C{(host, port)})
    as an IP address and port; IPv4-mapped IPv6 becomes IPv4; a zone index
    is dropped.  C{None} if it is not an IP address.
    """
    if isinstance(address, tuple):
        if len(address) < 2:
            return None
        host, port = address[0], address[1]
    else:
        host = getattr(address, "host", None)
        port = getattr(address, "port", None)
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if not isinstance(host, str) or not isinstance(port, int):
        return None
    host = host.strip("[]").split("%", 1)[0]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip, port


def _toNetworks(items: Iterable[Union[str, _IPAddress, _IPNetwork]]) -> List[_IPNetwork]:
    networks: List[_IPNetwork] = []
    for item in items:
        if isinstance(item, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
            networks.append(item)
            continue
        text = str(item).split("%", 1)[0]
        if "/" in text:
            networks.append(ipaddress.ip_network(text, strict=False))
            continue
        ip = ipaddress.ip_address(text)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        networks.append(ipaddress.ip_network(ip))
    return networks


def isOwnListener(
    destination: Any,
    listeningAddresses: Iterable[Any],
    localAddresses: Optional[Collection[Union[str, _IPAddress, _IPNetwork]]] = None,
) -> bool:
    """
    Whether relaying to C{destination} would reach one of the proxy's own
    listeners, i.e. would loop.

    A destination matches a listener when the ports are equal and either
    the addresses are equal (IPv4-mapped IPv6 counts as its IPv4 address),
    or the listener is bound to the wildcard (C{0.0.0.0} accepts any local
    IPv4 address; C{::} any local IPv4 or IPv6 address, assuming a
    dual-stack socket) and the destination is a local address.  A
    destination of C{0.0.0.0} or C{::} (which the kernel delivers locally)
    matches any listener on that port.

    @param destination: the original destination, C{(host, port)} or a
        Twisted address.
    @param listeningAddresses: the listening ports' bound addresses
        (C{port.getHost()}: Twisted addresses or C{(host, port)} tuples,
        with the real port, not 0).  Anything that is not an IP address
        (a UNIX socket) is skipped.
    @param localAddresses: this host's addresses or networks (strings,
        C{ipaddress} addresses or networks), to decide whether a
        destination reaches a wildcard listener; C{None} reads them with
        L{localNetworks} (see there for the cost).  Include the accepted
        connection's own local address to be safe wherever C{/proc} lies.
    @return: C{True} if the connection should be closed instead of relayed.
    """
    dest = _ipAndPort(destination)
    if dest is None:
        return False
    destIP, destPort = dest
    listeners = [a for a in (_ipAndPort(address) for address in listeningAddresses) if a]
    candidates = [ip for ip, port in listeners if port == destPort]
    if not candidates:
        return False
    if destIP.is_unspecified:
        return True
    if destIP in candidates:
        return True
    wildcards = [ip for ip in candidates if ip.is_unspecified]
    if not wildcards:
        return False
    if destIP.version == 6 and all(ip.version == 4 for ip in wildcards):
        return False
    networks = _toNetworks(localNetworks() if localAddresses is None else localAddresses)
    for network in networks:
        if network.version != destIP.version:
            continue
        if destIP in network:
            return True
    return False
