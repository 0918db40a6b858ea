# -*- test-case-name: tests.test_config -*-
"""
Reading a TOML configuration file (L{loadFile}, L{fromTOML}) into the same
records the flags build: listeners, routes, upstream tables, health checks.
"""

from __future__ import annotations

import sys
from typing import Any, Dict, List, Mapping, Optional, Tuple

import attr

from txproxy.errors import ConfigError

if sys.version_info >= (3, 11):  # pragma: no cover
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from txproxy.config._model import (
    HealthCheck,
    ListenerConfig,
    ProxyConfig,
    RouteConfig,
    _checkHostPattern,
)
from txproxy.config._options import (
    _LISTENER_OPTIONS,
    _PROCESS_OPTIONS,
    _TOML_LISTENER_OPTIONS,
    LISTENER_OPTION_NAMES,
    PROCESS_OPTION_NAMES,
    _applyOption,
    _bool,
    _checkRedisURL,
    _checkTracing,
    _choice,
    _finishListener,
    _number,
    _string,
    _timeout,
    _wrap,
)
from txproxy.config._values import (
    BALANCE_POLICIES,
    PROXY_PROTOCOL_OVERRIDES,
    checkHostValue,
    parseUpstreamURL,
    pathProblem,
)


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
    "cache",
)
_HEALTH_KEYS = ("type", "path", "interval", "timeout", "rise", "fall")


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
    if "cache" in table:
        kwargs["cache"] = _bool(table["cache"], f"{where}.cache")
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
    _checkTracing(processValues, "trace_sample", "trace_otlp")
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
