# -*- test-case-name: tests.test_config -*-
"""
The configuration's records: a health check, a route, a listener, the
whole process; and the C{--route} rule parser.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import attr

from txproxy.config._values import (
    CIDRSet,
    PortSet,
    Rate,
    UpstreamURL,
    hostNameProblem,
    parseUpstreamURL,
    pathProblem,
)
from txproxy.errors import ConfigError


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
    #: C{cache = false}: the listener's cache (C{--cache}) never looks up
    #: nor stores this route's requests.
    cache: bool = True


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
    #: --http2: HTTP modes only; TLS listeners offer ALPN C{h2} before
    #: C{http/1.1} and clients may speak HTTP/2 with prior knowledge.
    http2: bool = True
    #: --h2-max-streams: concurrent streams per client HTTP/2 connection
    #: (C{SETTINGS_MAX_CONCURRENT_STREAMS}), 1 to 2**31-1.
    h2MaxStreams: int = 100
    #: --intercept-ca: forward mode: the PEM file (CA certificate and key)
    #: issuing the certificates of intercepted tunnels; L{None}: none.
    interceptCA: Optional[str] = None
    #: --intercept: host patterns whose tunnels are intercepted (empty:
    #: all, with --intercept-ca).
    intercept: Tuple[str, ...] = ()
    #: --no-intercept: host patterns never intercepted (wins).
    noIntercept: Tuple[str, ...] = ()
    #: --cache: HTTP modes; the bytes the listener's RFC 9111 cache holds
    #: at most, or L{None} for no cache.
    cache: Optional[int] = None
    #: --cache-max-object: the largest response body stored.
    cacheMaxObject: int = 8388608
    #: --cache-redis: the cache's shared second tier (needs --cache).
    cacheRedis: Optional[str] = None

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
    #: C{--trace-otlp}: the OTLP/HTTP traces URL spans go to (tracing is
    #: off without it).
    traceOtlp: Optional[str] = None
    #: C{--trace-sample}: the share of new traces recorded, 0 to 1.
    traceSample: float = 1.0


# ---------------------------------------------------------------------------
# The option table shared by flags and TOML.
#
# name (flag spelling), kind, field; kind says how a raw value is converted.
