# -*- test-case-name: tests.test_config -*-
"""
Immutable, validated configuration objects, built from command-line flags or
from a TOML file.

Everything here is plain data: no reactor, no sockets.  L{fromFlags} and
L{fromTOML} return a L{ProxyConfig} or raise L{ConfigError} with a one-line
message naming what was wrong (for TOML, with the key path, e.g.
C{listeners[1].routes[0].upstrems}).
"""

from __future__ import annotations

import ipaddress
import math
import re
import socket
import sys
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import attr

from txproxy.errors import ConfigError

if sys.version_info >= (3, 11):  # pragma: no cover
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "ConfigError",
    "Rate",
    "PortSet",
    "CIDRSet",
    "UpstreamURL",
    "HealthCheck",
    "RouteConfig",
    "ListenerConfig",
    "ProxyConfig",
    "MODES",
    "LOCALNET",
    "hostNameProblem",
    "checkHostValue",
    "pathProblem",
    "parseRate",
    "parsePorts",
    "parseCIDRs",
    "parseRoute",
    "parseUpstreamURL",
    "fromFlags",
    "fromTOML",
    "loadFile",
]

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
    A backend named by a route: C{http://host:port}, C{https://host:port}
    or C{tcp://host:port}.
    """

    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


_DEFAULT_PORTS = {"http": 80, "https": 443}

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


def parseUpstreamURL(text: str, schemes: Sequence[str] = ("http", "https", "tcp")) -> UpstreamURL:
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


@attr.s(frozen=True, slots=True, auto_attribs=True)
class HealthCheck:
    """
    An active health check for every backend of a route.

    @ivar kind: C{"tcp"} (connect only) or C{"http"} (C{GET path}, expecting
        a 2xx or 3xx status).
    @ivar rise: consecutive successes that mark a down backend up.
    @ivar fall: consecutive failures that mark an up backend down.
    """

    kind: str = "tcp"
    path: str = "/"
    interval: float = 5.0
    timeout: float = 2.0
    rise: int = 2
    fall: int = 3


@attr.s(frozen=True, slots=True, auto_attribs=True)
class RouteConfig:
    """
    One route: requests (or SNI names) matching C{host} and C{prefix} go to
    the pool of C{upstreams}.

    @ivar host: an exact name, C{*.suffix}, or C{*} (default route);
        lower-case.
    @ivar prefix: a path prefix starting with C{/}, or C{""} for any path.
    @ivar weights: one positive integer per upstream.
    @ivar ejectAfter: consecutive connect failures that eject a backend
        (passive health); C{0} disables passive ejection.
    @ivar ejectFor: seconds an ejected backend is left out.
    @ivar proxyProtocolSend: C{"v1"}, C{"v2"} or C{"none"}: the PROXY
        header for this route's upstreams (sni and reverse modes), instead
        of the listener's; L{None}: the listener's.
    @ivar proxyProtocolByUpstream: C{(str(url), "v1" | "v2" | "none")} for
        the upstreams written as tables with their own
        C{proxy_protocol_send}, which wins over the route's and the
        listener's.
    """

    host: str
    upstreams: Tuple[UpstreamURL, ...]
    prefix: str = ""
    balance: str = "roundrobin"
    weights: Tuple[int, ...] = ()
    stripPrefix: bool = False
    hostRewrite: Optional[str] = None
    healthCheck: Optional[HealthCheck] = None
    ejectAfter: int = 3
    ejectFor: float = 30.0
    tlsVerify: bool = True
    caBundle: Optional[str] = None
    proxyProtocolSend: Optional[str] = None
    proxyProtocolByUpstream: Tuple[Tuple[str, str], ...] = ()


def _checkHostPattern(host: str, text: str) -> str:
    host = host.strip().lower()
    if host == "*":
        return host
    bare = host[2:] if host.startswith("*.") else host
    if not bare or "*" in bare or any(c in bare for c in " /\\@:") or hostNameProblem(bare) is not None:
        raise ConfigError(f"bad route {text!r}: {host!r} is not a host name, *.suffix or *")
    return host


def parseRoute(text: str) -> RouteConfig:
    """
    Parse C{HOST[/PATHPREFIX]=URL[,URL...]}.
    """
    left, eq, right = str(text).partition("=")
    if not eq or not left.strip() or not right.strip():
        raise ConfigError(f"bad route {text!r}: expected HOST[/PATHPREFIX]=URL[,URL...]")
    left = left.strip()
    slash = left.find("/")
    host, prefix = (left, "") if slash < 0 else (left[:slash], left[slash:])
    if prefix == "/":
        prefix = ""
    problem = pathProblem(prefix) if prefix else None
    if problem is not None:
        raise ConfigError(f"bad route {text!r}: path prefix {prefix!r}: {problem}")
    urls = tuple(parseUpstreamURL(u) for u in right.split(",") if u.strip())
    if not urls:
        raise ConfigError(f"bad route {text!r}: no upstream URL")
    return RouteConfig(host=_checkHostPattern(host, text), upstreams=urls, prefix=prefix)


# ---------------------------------------------------------------------------
# Listener and process configuration


@attr.s(frozen=True, slots=True, auto_attribs=True)
class ListenerConfig:
    """
    One listener group: every endpoint in C{listen} shares the mode and the
    policy.  Field names are the long option names in camelCase.

    The socket tuning of accepted TCP connections has no flag (TOML keys
    only; see L{txproxy.tuning}):

    @ivar tcpNoDelay: C{tcp_nodelay}: set C{TCP_NODELAY} (default on).
    @ivar keepAlive: C{keepalive}: set C{SO_KEEPALIVE} (default off).
    @ivar keepAliveIdle: C{keepalive_idle}: C{TCP_KEEPIDLE} seconds, or
        L{None} for the kernel's default.
    @ivar keepAliveInterval: C{keepalive_interval}: C{TCP_KEEPINTVL}
        seconds, or L{None}.
    @ivar keepAliveCount: C{keepalive_count}: C{TCP_KEEPCNT}, or L{None}.
    @ivar sendBuffer: C{send_buffer}: C{SO_SNDBUF} bytes, or L{None}.
    @ivar receiveBuffer: C{receive_buffer}: C{SO_RCVBUF} bytes, or L{None}.
    @ivar proxyProtocolByUpstream: tcp mode: C{(description,
        "v1" | "v2" | "none")} for the upstreams written as tables with
        their own C{proxy_protocol_send} (TOML only), which wins over
        C{proxyProtocolSend}; descriptions are stripped.
    """

    listen: Tuple[str, ...]
    mode: str = "forward"
    name: str = ""
    upstreams: Tuple[str, ...] = ()
    balance: str = "roundrobin"
    routes: Tuple[RouteConfig, ...] = ()
    certs: Optional[str] = None
    clientCA: Optional[str] = None
    #: --upstream-ca: the PEM bundle verifying TLS upstreams (a route's
    #: ca_bundle wins); L{None}: the platform's trust store.
    upstreamCA: Optional[str] = None
    proxyProtocolSend: Optional[str] = None
    trustedProxies: CIDRSet = CIDRSet()
    connectPorts: PortSet = PortSet(((443, 443),), False, "443")
    auth: Optional[str] = None
    allow: CIDRSet = CIDRSet()
    deny: CIDRSet = CIDRSet()
    denyDest: CIDRSet = CIDRSet()
    rate: Optional[Rate] = None
    burst: Optional[int] = None
    maxConns: Optional[int] = None
    maxConnsPerClient: Optional[int] = None
    connectTimeout: float = 10.0
    responseTimeout: float = 60.0
    idleTimeout: float = 300.0
    headerTimeout: float = 10.0
    maxHeadSize: int = 65536
    maxHeaders: int = 256
    backlog: int = 511
    xForwardedFor: bool = False
    rateKey: str = "client"
    tcpNoDelay: bool = True
    keepAlive: bool = False
    keepAliveIdle: Optional[int] = None
    keepAliveInterval: Optional[int] = None
    keepAliveCount: Optional[int] = None
    sendBuffer: Optional[int] = None
    receiveBuffer: Optional[int] = None
    proxyProtocolByUpstream: Tuple[Tuple[str, str], ...] = ()

    @property
    def effectiveBurst(self) -> int:
        """
        C{burst}, or the tokens refilled in one second (at least one) when
        C{--burst} was not given.
        """
        if self.burst is not None:
            return self.burst
        if self.rate is None:
            return 0
        return max(1, int(math.ceil(self.rate.perSecond)))


@attr.s(frozen=True, slots=True, auto_attribs=True)
class ProxyConfig:
    """
    The whole process: its listeners and the process-wide settings.
    """

    listeners: Tuple[ListenerConfig, ...]
    admin: Tuple[str, ...] = ()
    workers: int = 1
    redis: Optional[str] = None
    drainTimeout: float = 30.0
    accessLog: Optional[str] = None
    accessLogFormat: str = "combined"
    redisOutage: str = "memory"
    configFile: Optional[str] = None


# ---------------------------------------------------------------------------
# The option table shared by flags and TOML.
#
# name (flag spelling), kind, field; kind says how a raw value is converted.

_Converter = Callable[[Any, str], Any]


def _number(kind: type, minimum: float, allowZero: bool = False) -> _Converter:
    def convert(value: Any, where: str) -> Any:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            n = kind(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if isinstance(value, float) and kind is int and value != int(value):
            raise ConfigError(f"{where}: expected a whole number, got {value!r}")
        if n != n or math.isinf(n) or n < minimum or (n == 0 and not allowZero and minimum <= 0):
            low = "zero or more" if allowZero else f"at least {minimum:g}" if minimum > 0 else "more than zero"
            raise ConfigError(f"{where}: must be {low}, got {value!r}")
        return n

    return convert


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: expected a non-empty string, got {value!r}")
    return value


def _choice(choices: Sequence[str]) -> _Converter:
    def convert(value: Any, where: str) -> str:
        if value not in choices:
            raise ConfigError(f"{where}: expected one of {', '.join(choices)}, got {value!r}")
        return str(value)

    return convert


def _wrap(fn: Callable[[str], Any]) -> _Converter:
    def convert(value: Any, where: str) -> Any:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        try:
            return fn(value)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}")

    return convert


def _onOff(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("on", "yes", "true", "1"):
        return True
    if text in ("off", "no", "false", "0"):
        return False
    raise ConfigError(f"{where}: expected on or off, got {value!r}")


def _cidr(value: Any, where: str) -> str:
    cidr = _string(value, where)
    try:
        parseCIDRs([cidr])
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}")
    return cidr


def _timeout(value: Any, where: str) -> float:
    return float(_number(float, 0.0)(value, where))


def _bounded(value: Any, where: str, low: int, high: int) -> int:
    """
    A whole number from C{low} to C{high}.
    """
    n = int(_number(int, low)(value, where))
    if n > high:
        raise ConfigError(f"{where}: must be at most {high}, got {value!r}")
    return n


# (option name, field name, converter, repeatable)
_LISTENER_OPTIONS: List[Tuple[str, str, _Converter, bool]] = [
    ("mode", "mode", _choice(MODES), False),
    ("name", "name", _string, False),
    ("upstream", "upstreams", _string, True),
    ("balance", "balance", _choice(BALANCE_POLICIES), False),
    ("route", "routes", _wrap(parseRoute), True),
    ("certs", "certs", _string, False),
    ("client-ca", "clientCA", _string, False),
    ("upstream-ca", "upstreamCA", _string, False),
    ("proxy-protocol-send", "proxyProtocolSend", _choice(PROXY_PROTOCOL_VERSIONS), False),
    ("trusted-proxies", "trustedProxies", _cidr, True),
    ("connect-ports", "connectPorts", lambda v, w: _wrap(parsePorts)(str(v) if isinstance(v, int) and not isinstance(v, bool) else v, w), False),
    ("auth", "auth", _string, False),
    ("allow", "allow", _cidr, True),
    ("deny", "deny", _cidr, True),
    ("deny-dest", "denyDest", _cidr, True),
    ("rate", "rate", _wrap(parseRate), False),
    ("burst", "burst", _number(int, 1), False),
    ("max-conns", "maxConns", _number(int, 1), False),
    ("max-conns-per-client", "maxConnsPerClient", _number(int, 1), False),
    ("connect-timeout", "connectTimeout", _timeout, False),
    ("response-timeout", "responseTimeout", _timeout, False),
    ("idle-timeout", "idleTimeout", _number(float, 0.0, allowZero=True), False),
    ("header-timeout", "headerTimeout", _timeout, False),
    ("max-head-size", "maxHeadSize", _number(int, 256), False),
    ("max-headers", "maxHeaders", _number(int, 1), False),
    ("backlog", "backlog", _number(int, 1), False),
    ("x-forwarded-for", "xForwardedFor", _onOff, False),
    ("rate-key", "rateKey", _choice(("client", "user", "route")), False),
]

_CIDR_FIELDS = {"trustedProxies", "allow", "deny", "denyDest"}

_PROCESS_OPTIONS: List[Tuple[str, str, _Converter, bool]] = [
    ("admin", "admin", _string, True),
    ("workers", "workers", _number(int, 1), False),
    ("redis", "redis", _string, False),
    ("drain-timeout", "drainTimeout", _number(float, 0.0, allowZero=True), False),
    ("access-log", "accessLog", _string, False),
    ("access-log-format", "accessLogFormat", _choice(ACCESS_LOG_FORMATS), False),
    ("redis-outage", "redisOutage", _choice(("memory", "open", "closed")), False),
]

#: Largest C{send_buffer}/C{receive_buffer} accepted (1 GiB): anything
#: larger is a typo (the kernel would cap it at C{net.core.wmem_max} /
#: C{net.core.rmem_max} anyway).
MAX_SOCKET_BUFFER = 1 << 30

# Listener keys only a TOML file can set (no command-line flag): socket
# tuning of accepted connections.  (key, field, converter)
_TOML_LISTENER_OPTIONS: List[Tuple[str, str, _Converter]] = [
    ("tcp_nodelay", "tcpNoDelay", lambda v, w: _bool(v, w)),
    ("keepalive", "keepAlive", lambda v, w: _bool(v, w)),
    # Linux caps: MAX_TCP_KEEPIDLE, MAX_TCP_KEEPINTVL (32767 s), MAX_TCP_KEEPCNT (127).
    ("keepalive_idle", "keepAliveIdle", lambda v, w: _bounded(v, w, 1, 32767)),
    ("keepalive_interval", "keepAliveInterval", lambda v, w: _bounded(v, w, 1, 32767)),
    ("keepalive_count", "keepAliveCount", lambda v, w: _bounded(v, w, 1, 127)),
    ("send_buffer", "sendBuffer", lambda v, w: _bounded(v, w, 1024, MAX_SOCKET_BUFFER)),
    ("receive_buffer", "receiveBuffer", lambda v, w: _bounded(v, w, 1024, MAX_SOCKET_BUFFER)),
]

#: The socket constant each keep-alive key needs (Linux has all three).
_KEEPALIVE_CONSTANTS = (
    ("keepalive_idle", "keepAliveIdle", "TCP_KEEPIDLE"),
    ("keepalive_interval", "keepAliveInterval", "TCP_KEEPINTVL"),
    ("keepalive_count", "keepAliveCount", "TCP_KEEPCNT"),
)

LISTENER_OPTION_NAMES = tuple(o[0] for o in _LISTENER_OPTIONS)
PROCESS_OPTION_NAMES = tuple(o[0] for o in _PROCESS_OPTIONS)


def _checkRedisURL(url: str, where: str) -> str:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ConfigError(f"{where}: bad Redis URL {url!r}")
    if parts.scheme != "redis" or not parts.hostname:
        raise ConfigError(f"{where}: bad Redis URL {url!r}: expected redis://host:port/db")
    db = parts.path.strip("/")
    if db and not db.isdigit():
        raise ConfigError(f"{where}: bad Redis URL {url!r}: database must be a number")
    if port is not None and not 0 < port < 65536:
        raise ConfigError(f"{where}: bad Redis URL {url!r}: port out of range")
    return url


# ---------------------------------------------------------------------------
# Building and cross-checking


def _finishListener(values: Dict[str, Any], where: str) -> ListenerConfig:
    for field in _CIDR_FIELDS:
        if field in values:
            values[field] = parseCIDRs(values[field])
    if "listen" not in values or not values["listen"]:
        values["listen"] = ("tcp:3128",)
    for key in ("upstreams", "routes", "listen"):
        if key in values:
            values[key] = tuple(values[key])
    listener = ListenerConfig(**values)
    _crossCheck(listener, where)
    return listener


def _crossCheck(l: ListenerConfig, where: str) -> None:
    w = where.rstrip(".")
    pre = f"{w}: " if w else ""
    if l.xForwardedFor and l.mode != "forward":
        raise ConfigError(f"{pre}--x-forwarded-for is only for mode forward (mode reverse always sets it)")
    if l.trustedProxies and l.mode not in ("forward", "reverse"):
        raise ConfigError(f"{pre}--trusted-proxies is only for modes forward and reverse")
    if l.rateKey == "user" and l.mode != "forward":
        raise ConfigError(f"{pre}--rate-key user is only for mode forward (with --auth)")
    if l.rateKey == "route" and l.mode != "reverse":
        raise ConfigError(f"{pre}--rate-key route is only for mode reverse")
    if l.balance != "roundrobin" and l.mode != "tcp":
        raise ConfigError(f"{pre}--balance is only for mode tcp (routes set their own balance)")
    if l.mode == "tcp" and not l.upstreams:
        raise ConfigError(f"{pre}mode tcp needs at least one --upstream")
    if l.mode != "tcp" and l.upstreams:
        raise ConfigError(f"{pre}--upstream is only for mode tcp (mode is {l.mode})")
    if l.mode in ("reverse", "sni") and not l.routes:
        raise ConfigError(f"{pre}mode {l.mode} needs at least one --route")
    if l.mode not in ("reverse", "sni") and l.routes:
        raise ConfigError(f"{pre}--route is only for modes reverse and sni (mode is {l.mode})")
    for route in l.routes:
        schemes = ("tcp",) if l.mode == "sni" else ("http", "https")
        for u in route.upstreams:
            if u.scheme not in schemes:
                raise ConfigError(
                    f"{pre}route {route.host}{route.prefix}: {u} is not allowed in mode {l.mode} "
                    f"(use {' or '.join(s + '://' for s in schemes)})"
                )
        if l.mode == "sni" and route.prefix:
            raise ConfigError(f"{pre}route {route.host}{route.prefix}: sni routes take no path prefix")
        if route.weights and len(route.weights) != len(route.upstreams):
            raise ConfigError(f"{pre}route {route.host}{route.prefix}: one weight per upstream is needed")
    if l.denyDest and l.mode not in ("forward", "transparent"):
        raise ConfigError(
            f"{pre}--deny-dest is only for modes forward and transparent, where the client picks "
            f"the destination (mode is {l.mode})"
        )
    if l.proxyProtocolSend and l.mode == "forward":
        raise ConfigError(f"{pre}--proxy-protocol-send is not for mode forward")
    if l.burst is not None and l.rate is None:
        raise ConfigError(f"{pre}--burst needs --rate")
    if l.auth is not None and l.mode != "forward":
        raise ConfigError(f"{pre}--auth is only for mode forward")
    key = f"{w}." if w else ""
    for name, field, constant in _KEEPALIVE_CONSTANTS:
        if getattr(l, field) is None:
            continue
        if not l.keepAlive:
            raise ConfigError(f"{key}{name}: needs keepalive = true")
        if not hasattr(socket, constant):
            raise ConfigError(f"{key}{name}: not supported on this platform (no {constant})")


def _applyOption(
    table: List[Tuple[str, str, _Converter, bool]],
    values: Dict[str, Any],
    option: str,
    raw: Any,
    where: str,
) -> bool:
    for name, field, convert, repeatable in table:
        if name != option:
            continue
        if repeatable:
            values.setdefault(field, []).append(convert(raw, where))
        else:
            values[field] = convert(raw, where)
        return True
    return False


def fromFlags(
    listen: Sequence[str],
    options: Sequence[Tuple[str, Any]],
    configFile: Optional[str] = None,
) -> ProxyConfig:
    """
    Build a L{ProxyConfig} from command-line flags.

    @param listen: the C{--listen} values, in order (empty: C{tcp:3128}).
    @param options: C{(option name, raw string value)} pairs in the order
        given, repeatable options once per occurrence.
    @param configFile: the C{--config} path; when given, listener options
        are an error and process options override the file's.
    """
    listenerValues: Dict[str, Any] = {}
    processValues: Dict[str, Any] = {}
    for option, raw in options:
        where = f"--{option}"
        if _applyOption(_PROCESS_OPTIONS, processValues, option, raw, where):
            continue
        if configFile is not None:
            raise ConfigError(f"--{option} cannot be combined with --config; set it in {configFile}")
        if not _applyOption(_LISTENER_OPTIONS, listenerValues, option, raw, where):
            raise ConfigError(f"unknown option --{option}")
    if "redis" in processValues:
        _checkRedisURL(processValues["redis"], "--redis")
    if configFile is not None:
        if listen:
            raise ConfigError(f"--listen cannot be combined with --config; set it in {configFile}")
        base = loadFile(configFile)
        overrides: Dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in processValues.items()
        }
        return attr.evolve(base, **overrides)
    listenerValues["listen"] = tuple(listen) or ("tcp:3128",)
    listenerValues.setdefault("name", "listener0")
    listener = _finishListener(listenerValues, "")
    process: Dict[str, Any] = {
        k: tuple(v) if isinstance(v, list) else v for k, v in processValues.items()
    }
    return ProxyConfig(listeners=(listener,), **process)


def loadFile(path: str) -> ProxyConfig:
    """
    Read and validate a TOML config file.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text")
    try:
        parsed = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}")
    try:
        config = fromTOML(parsed)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}")
    return attr.evolve(config, configFile=path)


def _listOf(value: Any, where: str) -> List[Any]:
    if isinstance(value, list):
        return value
    return [value]


_ROUTE_KEYS = (
    "host",
    "prefix",
    "upstreams",
    "balance",
    "weights",
    "strip_prefix",
    "host_rewrite",
    "health_check",
    "eject_after",
    "eject_for",
    "tls_verify",
    "ca_bundle",
    "proxy_protocol_send",
)
_HEALTH_KEYS = ("type", "path", "interval", "timeout", "rise", "fall")


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    return value


_UPSTREAM_TABLE_KEYS = ("proxy_protocol_send",)

#: The "setting" of an upstream written as a plain string (no table).
_PLAIN: Any = object()


def _upstreamTable(item: Any, where: str, key: str) -> Tuple[Any, Any]:
    """
    Read one element of an C{upstreams} list: a string, or a table with
    the string under C{key} (C{url} in routes, C{endpoint} in tcp mode) and
    an optional C{proxy_protocol_send}.

    @return: C{(the string, its proxy_protocol_send or None)}, or
        C{(item, _PLAIN)} for a plain element (checked by the caller).
    """
    if not isinstance(item, dict):
        return item, _PLAIN
    for k in item:
        if k != key and k not in _UPSTREAM_TABLE_KEYS:
            raise ConfigError(f"{where}.{k}: unknown key")
    if key not in item:
        raise ConfigError(f"{where}.{key}: missing")
    version = None
    if "proxy_protocol_send" in item:
        version = _choice(PROXY_PROTOCOL_OVERRIDES)(item["proxy_protocol_send"], f"{where}.proxy_protocol_send")
    return item[key], version


class _PerUpstream:
    """
    Collects the per-upstream C{proxy_protocol_send} settings of one pool;
    an upstream listed twice (one backend of weight 2) must say the same
    both times.
    """

    def __init__(self) -> None:
        self._seen: Dict[str, Tuple[Optional[str], str]] = {}
        self._settings: List[Tuple[str, str]] = []

    def add(self, key: str, version: Any, where: str) -> None:
        version = None if version is _PLAIN else version
        seen = self._seen.get(key)
        if seen is not None:
            if seen[0] != version:
                raise ConfigError(
                    f"{where}: {key} is also {seen[1]}, with another proxy_protocol_send "
                    f"({seen[0] or 'unset'} there, {version or 'unset'} here)"
                )
            return
        self._seen[key] = (version, where.rsplit(".", 1)[-1])
        if version is not None:
            self._settings.append((key, version))

    @property
    def settings(self) -> Tuple[Tuple[str, str], ...]:
        return tuple(self._settings)


def _routeFromTOML(table: Any, where: str) -> RouteConfig:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table")
    for key in table:
        if key not in _ROUTE_KEYS:
            raise ConfigError(f"{where}.{key}: unknown key")
    if "host" not in table:
        raise ConfigError(f"{where}.host: missing")
    if "upstreams" not in table:
        raise ConfigError(f"{where}.upstreams: missing")
    host = _string(table["host"], f"{where}.host")
    prefix = table.get("prefix", "")
    if not isinstance(prefix, str) or (prefix and not prefix.startswith("/")):
        raise ConfigError(f"{where}.prefix: expected a path starting with /, got {prefix!r}")
    problem = pathProblem(prefix) if prefix else None
    if problem is not None:
        raise ConfigError(f"{where}.prefix: {prefix!r} is {problem}")
    if prefix == "/":
        prefix = ""
    ups = _listOf(table["upstreams"], f"{where}.upstreams")
    if not ups:
        raise ConfigError(f"{where}.upstreams: at least one URL is needed")
    urls = []
    perUpstream = _PerUpstream()
    for i, u in enumerate(ups):
        uw = f"{where}.upstreams[{i}]"
        u, version = _upstreamTable(u, uw, "url")
        url = _wrap(parseUpstreamURL)(u, f"{uw}.url" if version is not _PLAIN else uw)
        urls.append(url)
        perUpstream.add(str(url), version, uw)
    kwargs: Dict[str, Any] = {"host": _checkHostPattern(host, host), "prefix": prefix, "upstreams": tuple(urls)}
    if perUpstream.settings:
        kwargs["proxyProtocolByUpstream"] = perUpstream.settings
    if "balance" in table:
        kwargs["balance"] = _choice(BALANCE_POLICIES)(table["balance"], f"{where}.balance")
    if "weights" in table:
        ws = table["weights"]
        if not isinstance(ws, list):
            raise ConfigError(f"{where}.weights: expected a list of numbers")
        kwargs["weights"] = tuple(_number(int, 1)(w, f"{where}.weights[{i}]") for i, w in enumerate(ws))
    if "strip_prefix" in table:
        kwargs["stripPrefix"] = _bool(table["strip_prefix"], f"{where}.strip_prefix")
    if "host_rewrite" in table:
        hostRewrite = _string(table["host_rewrite"], f"{where}.host_rewrite")
        problem = checkHostValue(hostRewrite)
        if problem is not None:
            raise ConfigError(f"{where}.host_rewrite: {hostRewrite!r} is not a Host value (host or host:port): {problem}")
        kwargs["hostRewrite"] = hostRewrite
    if "eject_after" in table:
        kwargs["ejectAfter"] = _number(int, 0, allowZero=True)(table["eject_after"], f"{where}.eject_after")
    if "eject_for" in table:
        kwargs["ejectFor"] = _timeout(table["eject_for"], f"{where}.eject_for")
    if "tls_verify" in table:
        kwargs["tlsVerify"] = _bool(table["tls_verify"], f"{where}.tls_verify")
    if "ca_bundle" in table:
        kwargs["caBundle"] = _string(table["ca_bundle"], f"{where}.ca_bundle")
    if "proxy_protocol_send" in table:
        kwargs["proxyProtocolSend"] = _choice(PROXY_PROTOCOL_OVERRIDES)(
            table["proxy_protocol_send"], f"{where}.proxy_protocol_send"
        )
    if "health_check" in table:
        hc = table["health_check"]
        hw = f"{where}.health_check"
        if not isinstance(hc, dict):
            raise ConfigError(f"{hw}: expected a table")
        for key in hc:
            if key not in _HEALTH_KEYS:
                raise ConfigError(f"{hw}.{key}: unknown key")
        h: Dict[str, Any] = {}
        if "type" in hc:
            h["kind"] = _choice(("tcp", "http"))(hc["type"], f"{hw}.type")
        if "path" in hc:
            path = _string(hc["path"], f"{hw}.path")
            problem = pathProblem(path, query=True)
            if problem is not None:
                raise ConfigError(f"{hw}.path: {path!r}: {problem}")
            h["path"] = path
        for key in ("interval", "timeout"):
            if key in hc:
                h[key] = _timeout(hc[key], f"{hw}.{key}")
        for key in ("rise", "fall"):
            if key in hc:
                h[key] = _number(int, 1)(hc[key], f"{hw}.{key}")
        kwargs["healthCheck"] = HealthCheck(**h)
    return RouteConfig(**kwargs)


def fromTOML(data: Mapping[str, Any]) -> ProxyConfig:
    """
    Build a L{ProxyConfig} from a parsed TOML document.
    """
    processValues: Dict[str, Any] = {}
    listeners: List[ListenerConfig] = []
    processKeys = {name.replace("-", "_"): name for name in PROCESS_OPTION_NAMES}
    for key, value in data.items():
        if key == "listeners":
            continue
        if key not in processKeys:
            raise ConfigError(f"{key}: unknown key")
        option = processKeys[key]
        if option == "admin":
            for i, v in enumerate(_listOf(value, key)):
                _applyOption(_PROCESS_OPTIONS, processValues, option, v, key)
        else:
            _applyOption(_PROCESS_OPTIONS, processValues, option, value, key)
    if "redis" in processValues:
        _checkRedisURL(processValues["redis"], "redis")
    tables = data.get("listeners")
    if tables is None:
        raise ConfigError("listeners: at least one [[listeners]] table is needed")
    if not isinstance(tables, list):
        raise ConfigError("listeners: expected [[listeners]] tables")
    listenerKeys = {name.replace("-", "_"): name for name in LISTENER_OPTION_NAMES}
    # Repeatable options are written in the plural where that reads best.
    listenerKeys["upstreams"] = "upstream"
    tomlOnly = {key: (field, convert) for key, field, convert in _TOML_LISTENER_OPTIONS}
    upstreamSettings: Dict[int, _PerUpstream] = {}
    for i, table in enumerate(tables):
        where = f"listeners[{i}]"
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: expected a table")
        values: Dict[str, Any] = {}
        routes: List[RouteConfig] = []
        for key, value in table.items():
            kw = f"{where}.{key}"
            if key == "listen":
                eps = _listOf(value, kw)
                if not eps:
                    raise ConfigError(f"{kw}: at least one endpoint is needed")
                values["listen"] = tuple(_string(e, f"{kw}[{j}]") for j, e in enumerate(eps))
            elif key == "routes":
                if not isinstance(value, list):
                    raise ConfigError(f"{kw}: expected [[{where.split('[')[0]}.routes]] tables")
                for j, rt in enumerate(value):
                    routes.append(_routeFromTOML(rt, f"{kw}[{j}]"))
            elif key in ("upstreams", "upstream"):
                perUpstream = upstreamSettings.setdefault(i, _PerUpstream())
                for j, item in enumerate(_listOf(value, kw)):
                    iw = f"{kw}[{j}]" if isinstance(value, list) else kw
                    item, version = _upstreamTable(item, iw, "endpoint")
                    description = _string(item, f"{iw}.endpoint" if version is not _PLAIN else iw)
                    values.setdefault("upstreams", []).append(description)
                    perUpstream.add(description.strip(), version, iw)
                if perUpstream.settings:
                    values["proxyProtocolByUpstream"] = perUpstream.settings
            elif key in tomlOnly:
                field, convert = tomlOnly[key]
                values[field] = convert(value, kw)
            elif key in listenerKeys:
                option = listenerKeys[key]
                spec = [o for o in _LISTENER_OPTIONS if o[0] == option][0]
                if spec[3]:
                    items = _listOf(value, kw)
                    for j, v in enumerate(items):
                        _applyOption(_LISTENER_OPTIONS, values, option, v, f"{kw}[{j}]" if isinstance(value, list) else kw)
                else:
                    _applyOption(_LISTENER_OPTIONS, values, option, value, kw)
            else:
                raise ConfigError(f"{kw}: unknown key")
        if routes:
            values["routes"] = list(values.get("routes", [])) + routes
        values.setdefault("name", f"listener{i}")
        listeners.append(_finishListener(values, f"{where}."))
    if not listeners:
        raise ConfigError("listeners: at least one [[listeners]] table is needed")
    names = [l.name for l in listeners]
    for n in names:
        if names.count(n) > 1:
            raise ConfigError(f"listeners: name {n!r} is used twice")
    process: Dict[str, Any] = {
        k: tuple(v) if isinstance(v, list) else v for k, v in processValues.items()
    }
    return ProxyConfig(listeners=tuple(listeners), **process)
