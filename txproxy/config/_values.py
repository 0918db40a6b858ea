# -*- test-case-name: tests.test_config -*-
"""
The configuration's small values and their parsers: modes, rates, port sets,
CIDR sets (with the local networks a forward listener serves by default),
upstream URLs, and the checks on strings that reach the wire (host names,
Host values, paths).
"""

from __future__ import annotations

import ipaddress
import math
import re
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import attr

from txproxy.errors import ConfigError

MODES = ("forward", "tcp", "transparent", "reverse", "sni")
BALANCE_POLICIES = ("roundrobin", "leastconn", "hash")
ACCESS_LOG_FORMATS = ("json", "combined")
PROXY_PROTOCOL_VERSIONS = ("v1", "v2")
#: What a route or one upstream may set C{proxy_protocol_send} to: a version,
#: or C{"none"} (no header, whatever the listener or route says).
PROXY_PROTOCOL_OVERRIDES = PROXY_PROTOCOL_VERSIONS + ("none",)

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


# ---------------------------------------------------------------------------
# Value types


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Rate:
    """
    A token refill rate: C{tokens} every C{seconds}.

    @ivar perSecond: the rate in tokens per second.
    """

    tokens: float
    seconds: float
    text: str = attr.ib(eq=False, default="")

    @property
    def perSecond(self) -> float:
        return self.tokens / self.seconds

    def __str__(self) -> str:
        return self.text or f"{self.tokens:g}/{self.seconds:g}s"


_RATE_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


_SIZE = re.compile(r"\s*([0-9]+)\s*([kmg]?)(?:i?b)?\s*", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parseSize(text: str) -> int:
    """
    Parse a size in bytes: C{N}, C{NK}, C{NM} or C{NG} (powers of 1024;
    C{KB}/C{KiB} spellings accepted), more than zero.
    """
    match = _SIZE.fullmatch(str(text))
    if match is None:
        raise ConfigError(f"bad size {text!r}: expected N, NK, NM or NG (e.g. 512K, 64M, 1G)")
    size = int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
    if size <= 0:
        raise ConfigError(f"bad size {text!r}: must be more than zero")
    return size


def parseRate(text: str) -> Rate:
    """
    Parse C{N/s}, C{N/m} or C{N/h} (N may be a fraction, e.g. C{0.5/s}).

    @raise ConfigError: on anything else, or on a rate that is not positive.
    """
    n, sep, unit = str(text).strip().partition("/")
    if not sep or unit not in _RATE_UNITS:
        raise ConfigError(f"bad rate {text!r}: expected N/s, N/m or N/h (e.g. 10/s)")
    try:
        tokens = float(n)
    except ValueError:
        raise ConfigError(f"bad rate {text!r}: {n!r} is not a number")
    if not (tokens > 0) or math.isinf(tokens):
        raise ConfigError(f"bad rate {text!r}: must be a positive number of tokens")
    return Rate(tokens, _RATE_UNITS[unit], str(text).strip())


@attr.s(frozen=True, slots=True, auto_attribs=True)
class PortSet:
    """
    A set of TCP ports, as given to C{--connect-ports}: single ports and
    inclusive ranges, or every port.
    """

    ranges: Tuple[Tuple[int, int], ...]
    anyPort: bool = False
    text: str = attr.ib(eq=False, default="")

    def __contains__(self, port: object) -> bool:
        if not isinstance(port, int):
            return False
        if self.anyPort:
            return 0 < port < 65536
        for low, high in self.ranges:
            if low <= port <= high:
                return True
        return False

    def __str__(self) -> str:
        return self.text


def parsePorts(text: str) -> PortSet:
    """
    Parse C{443,8443,9000-9100} or C{*}.
    """
    text = str(text).strip()
    if text == "*":
        return PortSet((), True, "*")
    ranges: List[Tuple[int, int]] = []
    for part in text.split(","):
        part = part.strip()
        low_s, dash, high_s = part.partition("-")
        try:
            low = int(low_s)
            high = int(high_s) if dash else low
        except ValueError:
            raise ConfigError(f"bad port list {text!r}: {part!r} is not a port or a range")
        if not (0 < low <= high < 65536):
            raise ConfigError(f"bad port list {text!r}: {part!r} is out of range 1-65535")
        ranges.append((low, high))
    return PortSet(tuple(ranges), False, text)


@attr.s(frozen=True, slots=True, auto_attribs=True)
class CIDRSet:
    """
    A set of IPv4/IPv6 networks.  Membership takes an address string; an
    IPv4-mapped IPv6 address (C{::ffff:10.0.0.1}) is checked as IPv4.
    """

    networks: Tuple[Network, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __contains__(self, address: object) -> bool:
        if not self.networks or not isinstance(address, str):
            return False
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        for net in self.networks:
            if ip.version == net.version and ip in net:
                return True
        return False

    def deniesDestination(self, address: object) -> bool:
        """
        Membership for C{--deny-dest}: like C{in}, but the unspecified
        addresses (C{0.0.0.0}, C{::}, C{::ffff:0.0.0.0}) count as loopback,
        since a connection to them reaches this host: they are in the set
        when it holds C{127.0.0.1} or C{::1}.
        """
        if not self.networks or not isinstance(address, str):
            return False
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if ip.is_unspecified:
            return "127.0.0.1" in self or "::1" in self
        return address in self

    def __str__(self) -> str:
        return ",".join(str(n) for n in self.networks)


def parseCIDRs(values: Iterable[str], option: str = "CIDR") -> CIDRSet:
    """
    Parse address ranges (C{10.0.0.0/8}, C{::1}, C{192.0.2.7}).
    """
    nets: List[Network] = []
    for value in values:
        try:
            nets.append(ipaddress.ip_network(str(value).strip(), strict=False))
        except ValueError:
            raise ConfigError(f"bad {option} {value!r}: not an IP address or network")
    return CIDRSet(tuple(nets))


#: The clients a C{forward} listener given no C{--allow} serves: loopback
#: and private networks (Squid's C{localnet}: RFC 1918, RFC 6598 shared
#: address space, link-local, IPv6 unique-local and link-local).
#: IPv4-mapped IPv6 forms are checked as IPv4 (see L{CIDRSet}).
LOCALNET = parseCIDRs(
    [
        "127.0.0.0/8",
        "::1",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "169.254.0.0/16",
        "fc00::/7",
        "fe80::/10",
    ]
)


@attr.s(frozen=True, slots=True, auto_attribs=True)
class UpstreamURL:
    """
    A backend named by a route: C{http://host:port}, C{https://host:port},
    C{h2c://host:port} (HTTP/2 with prior knowledge), C{h2://host:port}
    (HTTP/2 over TLS, ALPN C{h2}) or C{tcp://host:port}.
    """

    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


_DEFAULT_PORTS = {"http": 80, "https": 443, "h2c": 80, "h2": 443}

# ---------------------------------------------------------------------------
# Values that end up on the wire (a request line, a Host field): checked
# here so that a configured CR LF can never inject a header.

_HOST_NAME = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\.?\Z")
_PCHARS = r"[A-Za-z0-9\-._~!$&'()*+,;=:@/]|%[0-9A-Fa-f]{2}"
_PATH = re.compile(rf"/(?:{_PCHARS})*\Z")
_PATH_AND_QUERY = re.compile(rf"/(?:{_PCHARS})*(?:\?(?:{_PCHARS}|\?)*)?\Z")


def hostNameProblem(host: str) -> Optional[str]:
    """
    Why C{host} cannot name a host on the wire (in a C{Host} field, a
    request, a TLS server name), or L{None} when it can: an IP address
    (IPv6 without brackets), or a DNS name whose IDNA form is letters,
    digits, C{-} and C{_} in dot-separated labels.
    """
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    try:
        ascii = host.encode("idna").decode("ascii")
    except UnicodeError:
        return "not a valid host name"
    if not _HOST_NAME.match(ascii):
        return "not a valid host name (letters, digits, '-', '_' and dots only)"
    return None


def checkHostValue(text: str) -> Optional[str]:
    """
    Why C{text} cannot be the value of a C{Host} field (C{host},
    C{host:port}, C{[v6]} or C{[v6]:port}), or L{None} when it can.
    """
    if text.startswith("["):
        host, bracket, tail = text[1:].partition("]")
        if not bracket or ":" not in host:
            return "unbalanced or empty [IPv6] brackets"
        if tail and not tail.startswith(":"):
            return "expected [IPv6]:port"
        hasPort, portText = bool(tail), tail[1:]
    else:
        host, colon, portText = text.partition(":")
        if ":" in portText:
            return "an IPv6 address must be written in brackets"
        if not host:
            return "no host"
        hasPort = bool(colon)
    problem = hostNameProblem(host)
    if problem is not None:
        return problem
    if hasPort and not (portText.isascii() and portText.isdigit() and 0 < int(portText) < 65536):
        return f"bad port {portText!r}"
    return None


def pathProblem(path: str, query: bool = False) -> Optional[str]:
    """
    Why C{path} cannot be sent as (or compared with) a request path, or
    L{None} when it can: it starts with C{/} and holds only characters a
    URI path allows (other bytes percent-encoded); with C{query}, a
    C{?query} may follow.
    """
    if not path.startswith("/"):
        return "must start with /"
    if not (_PATH_AND_QUERY if query else _PATH).match(path):
        what = "path and query" if query else "path (no query)"
        return f"not a valid URI {what}: spaces, control characters and other bytes must be percent-encoded"
    return None


def parseUpstreamURL(text: str, schemes: Sequence[str] = ("http", "https", "h2c", "h2", "tcp")) -> UpstreamURL:
    """
    Parse C{scheme://host[:port]}; IPv6 hosts are written in brackets.
    """
    text = str(text).strip()
    scheme, sep, rest = text.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in schemes:
        raise ConfigError(
            f"bad upstream URL {text!r}: expected {' or '.join(s + '://host:port' for s in schemes)}"
        )
    rest = rest.rstrip("/")
    if not rest or "/" in rest or "@" in rest:
        raise ConfigError(f"bad upstream URL {text!r}: expected {scheme}://host:port with no path")
    if rest.startswith("["):
        host, bracket, tail = rest[1:].partition("]")
        if not bracket or (tail and not tail.startswith(":")):
            raise ConfigError(f"bad upstream URL {text!r}: unbalanced [IPv6] brackets")
        if ":" not in host:
            raise ConfigError(f"bad upstream URL {text!r}: only an IPv6 address goes in brackets")
        portText = tail[1:] if tail else ""
    else:
        host, colon, portText = rest.rpartition(":")
        if not colon:
            host, portText = rest, ""
    if not host:
        raise ConfigError(f"bad upstream URL {text!r}: no host")
    problem = hostNameProblem(host)
    if problem is not None:
        raise ConfigError(f"bad upstream URL {text!r}: {host!r} is {problem}")
    if portText:
        try:
            port = int(portText)
        except ValueError:
            raise ConfigError(f"bad upstream URL {text!r}: bad port {portText!r}")
        if not 0 < port < 65536:
            raise ConfigError(f"bad upstream URL {text!r}: port out of range")
    elif scheme in _DEFAULT_PORTS:
        port = _DEFAULT_PORTS[scheme]
    else:
        raise ConfigError(f"bad upstream URL {text!r}: a port is required")
    return UpstreamURL(scheme, host.lower(), port)
