# -*- test-case-name: tests.test_config -*-
"""
The options every listener and the process take, their converters, and the
checks across options a listener's values must pass (shared by the flags
and the TOML file).
"""

from __future__ import annotations

import ipaddress
import math
import re
import socket
from typing import Any, Callable, Dict, List, Sequence, Tuple

from txproxy.config._model import ListenerConfig, parseRoute
from txproxy.config._values import (
    ACCESS_LOG_FORMATS,
    BALANCE_POLICIES,
    MODES,
    PROXY_PROTOCOL_VERSIONS,
    parseCIDRs,
    parsePorts,
    parseRate,
    parseSize,
)
from txproxy.errors import ConfigError

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


_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)\Z")


def _hostPattern(value: Any, where: str) -> str:
    """
    An C{--intercept}/C{--no-intercept} pattern: C{*}, a host name
    (C{example.com}), C{*.} and a host name (C{*.example.com}), or an IP
    address; lower-cased, without a trailing dot.
    """
    text = _string(value, where).strip().lower()
    if text.endswith(".") and text != ".":
        text = text[:-1]
    if text == "*":
        return text
    bare = text[2:] if text.startswith("*.") else text
    try:
        ipaddress.ip_address(bare.strip("[]"))
        if bare is text:
            return bare.strip("[]")
    except ValueError:
        labels = bare.split(".")
        if bare.isascii() and len(bare) <= 253 and all(_LABEL.match(label) for label in labels):
            return text
    raise ConfigError(f"{where}: bad host pattern {value!r} (expected example.com, *.example.com, an IP address or *)")


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
    ("http2", "http2", _onOff, False),
    ("h2-max-streams", "h2MaxStreams", lambda v, w: _bounded(v, w, 1, MAX_H2_STREAMS), False),
    ("intercept-ca", "interceptCA", _string, False),
    ("intercept", "intercept", lambda v, w: _hostPattern(v, w), True),
    ("no-intercept", "noIntercept", lambda v, w: _hostPattern(v, w), True),
    ("cache", "cache", lambda v, w: _wrap(parseSize)(str(v) if isinstance(v, int) and not isinstance(v, bool) else v, w), False),
    ("cache-max-object", "cacheMaxObject", lambda v, w: _wrap(parseSize)(str(v) if isinstance(v, int) and not isinstance(v, bool) else v, w), False),
    ("cache-redis", "cacheRedis", lambda v, w: _checkRedisURL(_string(v, w), w), False),
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
    ("trace-otlp", "traceOtlp", lambda v, w: _checkTraceURL(_string(v, w), w), False),
    ("trace-sample", "traceSample", lambda v, w: _ratio(v, w), False),
]

#: Largest C{--h2-max-streams}: 2**31-1, the most a signed 32-bit counter
#: holds (C{SETTINGS_MAX_CONCURRENT_STREAMS} is an unsigned 32-bit field,
#: and a client can open at most 2**30 streams on one connection anyway).
MAX_H2_STREAMS = 2**31 - 1

#: The modes that speak HTTP to clients, where C{--http2} and
#: C{--h2-max-streams} mean something.
HTTP_MODES = ("forward", "reverse")

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


def _ratio(value: Any, where: str) -> float:
    """
    A number from 0 to 1 (C{--trace-sample}).
    """
    n = float(_number(float, 0.0, allowZero=True)(value, where))
    if n > 1:
        raise ConfigError(f"{where}: must be from 0 to 1, got {value!r}")
    return n


def _checkTraceURL(url: str, where: str) -> str:
    """
    C{--trace-otlp}: an C{http://} or C{https://} URL with a host.
    """
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        port = parts.port  # (a port out of range raises ValueError)
    except ValueError:
        raise ConfigError(f"{where}: bad URL {url!r}")
    if port == 0:
        raise ConfigError(f"{where}: bad URL {url!r}: port 0")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"{where}: bad URL {url!r}: expected http://host:port/v1/traces (an OTLP/HTTP traces endpoint)"
        )
    if not url.isascii() or any(c.isspace() for c in url):
        raise ConfigError(f"{where}: bad URL {url!r}: only printable ASCII without spaces")
    return url


def _checkTracing(values: Dict[str, Any], sampleName: str, urlName: str) -> None:
    """
    C{--trace-sample} without C{--trace-otlp} is an error (it would do
    nothing), like C{--burst} without C{--rate}.
    """
    if "traceSample" in values and not values.get("traceOtlp"):
        raise ConfigError(f"{sampleName} needs {urlName}")


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
    for key in ("upstreams", "routes", "listen", "intercept", "noIntercept"):
        if key in values:
            values[key] = tuple(values[key])
    listener = ListenerConfig(**values)
    _crossCheck(listener, where)
    _checkHTTP2(listener, values, where)
    return listener


def _checkHTTP2(l: ListenerConfig, given: Dict[str, Any], where: str) -> None:
    """
    C{--http2} and C{--h2-max-streams} only mean something in the HTTP
    modes; given (either value) in another mode they are a start-up error,
    never silently ignored, like C{--deny-dest}.  C{--h2-max-streams} with
    C{--http2 off} is an error too (like C{--burst} without C{--rate}).

    @param given: the values set explicitly (defaults are not in it).
    """
    w = where.rstrip(".")
    pre = f"{w}: " if w else ""
    if l.mode not in HTTP_MODES:
        for field, option in (("http2", "--http2"), ("h2MaxStreams", "--h2-max-streams")):
            if field in given:
                raise ConfigError(
                    f"{pre}{option} is only for modes forward and reverse, which speak HTTP to clients "
                    f"(mode is {l.mode})"
                )
    if "h2MaxStreams" in given and not l.http2:
        raise ConfigError(f"{pre}--h2-max-streams needs --http2 on")


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
        schemes = ("tcp",) if l.mode == "sni" else ("http", "https", "h2c", "h2")
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
    if l.interceptCA is not None and l.mode != "forward":
        raise ConfigError(f"{pre}--intercept-ca is only for mode forward (mode is {l.mode})")
    if (l.intercept or l.noIntercept) and l.interceptCA is None:
        option = "--intercept" if l.intercept else "--no-intercept"
        raise ConfigError(f"{pre}{option} needs --intercept-ca")
    if l.cache is not None and l.mode not in HTTP_MODES:
        raise ConfigError(f"{pre}--cache is only for modes forward and reverse, which speak HTTP (mode is {l.mode})")
    if l.cacheRedis is not None and l.cache is None:
        raise ConfigError(f"{pre}--cache-redis needs --cache (the memory tier)")
    if l.cacheMaxObject != 8388608 and l.cache is None:
        raise ConfigError(f"{pre}--cache-max-object needs --cache")
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




def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    return value
