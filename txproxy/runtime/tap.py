# -*- test-case-name: tests.test_tap -*-
"""
The C{twistd txproxy} command line: options and C{makeService}.

The option names are a fixed contract (see the CLI reference in the docs).
Any mistake prints exactly one line on standard error and exits with status
2 (no usage text, no traceback).
"""

from __future__ import annotations

import sys
from typing import Any, List, Optional, Sequence, Tuple

from twisted.python import usage

from txproxy import __version__
from txproxy import config as _config
from txproxy._compiled import buildDescription
from txproxy.config._options import _LISTENER_OPTIONS, _PROCESS_OPTIONS
from txproxy.errors import ConfigError
from txproxy.runtime.endpoints import checkResources, checkSupported
from txproxy.runtime.service import makeService as _make

__all__ = ["Options", "makeService", "parseCommandLine"]

_LISTENER_HELP = {
    "mode": "forward (default) | tcp | transparent | reverse | sni.",
    "name": "A name for this listener group in logs and metrics.",
    "upstream": "tcp mode: upstream client endpoint (tcp:HOST:PORT); repeatable, several make a pool.",
    "balance": "tcp mode pool policy: roundrobin (default) | leastconn | hash.",
    "route": "reverse/sni modes: HOST[/PATHPREFIX]=URL[,URL...]; repeatable.",
    "certs": "TLS listeners: folder of *.pem files (key + chain) chosen by SNI; re-read on SIGHUP.",
    "client-ca": "TLS listeners: CA bundle to verify client certificates against.",
    "upstream-ca": "PEM bundle of CAs verifying https:// upstreams instead of the system store "
    "(a route's ca_bundle wins).",
    "proxy-protocol-send": "v1 | v2: send a PROXY protocol header to each upstream connection.",
    "trusted-proxies": "CIDR whose X-Forwarded-For/Forwarded headers are kept; repeatable.",
    "connect-ports": "Ports a CONNECT may reach: 443,8443,9000-9100 or * (default 443).",
    "auth": "htpasswd file (bcrypt or {SHA}); require Proxy-Authorization: Basic.",
    "allow": "Client CIDR allowed (repeatable; with any --allow, others are denied; forward mode without it: loopback and private networks only).",
    "deny": "Client CIDR denied (repeatable; wins over --allow).",
    "deny-dest": "Destination CIDR the proxy refuses to reach, checked on resolved addresses; repeatable.",
    "rate": "Per-client token bucket rate: N/s, N/m or N/h (fractions allowed).",
    "burst": "Token bucket size (default: one second of --rate, at least 1).",
    "max-conns": "Total concurrent client connections.",
    "max-conns-per-client": "Concurrent connections per client IP.",
    "connect-timeout": "Seconds to reach an upstream (default 10).",
    "response-timeout": "Seconds for an upstream to send its response head (default 60).",
    "idle-timeout": "Seconds of inactivity before a connection or tunnel is closed (default 300).",
    "header-timeout": "Seconds to receive a complete request head (default 10).",
    "max-head-size": "Largest request head accepted, in bytes (default 65536).",
    "max-headers": "Most header fields in a request head (default 256); more gets 431.",
    "backlog": "Listen backlog (default 511).",
    "rate-key": "What --rate counts per: client (default) | user (forward mode, authenticated user) | route (reverse mode).",
    "x-forwarded-for": "forward mode: on | off (default off): append the client address to X-Forwarded-For.",
    "http2": "forward/reverse modes: on (default) | off: serve HTTP/2 (ALPN h2 on TLS listeners, prior "
    "knowledge on all); off: HTTP/1.1 only.",
    "h2-max-streams": "forward/reverse modes: concurrent HTTP/2 streams per client connection, 1 to "
    "2147483647 (default 100); more get RST_STREAM(REFUSED_STREAM).",
    "intercept-ca": "forward mode: PEM file with a CA certificate and its key (mode 600): decrypt CONNECT tunnels "
    "with certificates it issues on the fly, so requests inside get the HTTP policy, hooks and logs.",
    "intercept": "forward mode with --intercept-ca: decrypt only tunnels to hosts matching this pattern "
    "(example.com, *.example.com); repeatable; default: all.",
    "no-intercept": "forward mode with --intercept-ca: never decrypt tunnels to hosts matching this pattern "
    "(wins over --intercept); repeatable.",
    "cache": "forward/reverse modes: an RFC 9111 shared cache in memory of at most SIZE bytes (512K, 64M, 1G); "
    "off by default.",
    "cache-max-object": "Largest response body the cache stores, in bytes (default 8388608); larger ones stream "
    "through unstored.",
    "cache-redis": "redis://host:port/db: a second cache tier in Redis, shared by every proxy naming it "
    "(needs --cache).",
}
_PROCESS_HELP = {
    "admin": "Admin HTTP endpoint serving /metrics and /healthz (e.g. tcp:9901:interface=127.0.0.1).",
    "workers": "Number of processes sharing each listening port (default 1).",
    "redis": "redis://host:port/db: share limits through Redis.",
    "drain-timeout": "Seconds open requests and tunnels may take to finish on SIGTERM (default 30).",
    "access-log": "Access log path, or - for standard output.",
    "access-log-format": "combined (default) | json.",
    "redis-outage": "While Redis is unreachable: memory (default: each process's own limits) | open (admit all) | closed (refuse all).",
    "trace-otlp": "OTLP/HTTP traces URL (e.g. http://127.0.0.1:4318/v1/traces): one span per request, tunnel and "
    "TCP connection, sent in batches from a bounded queue; W3C traceparent continued or replaced.",
    "trace-sample": "Share of new traces recorded, 0 to 1 (default 1.0); a valid incoming traceparent decides "
    "for its own trace. Needs --trace-otlp.",
}


class Options(usage.Options):
    """
    Options for C{twistd txproxy}.  After parsing, C{self.config} holds the
    validated L{txproxy.config.ProxyConfig}.
    """

    synopsis = "[options]"
    longdesc = (
        "txproxy: an HTTP forward proxy (absolute-URI requests and CONNECT), TCP relay, "
        "transparent proxy, TLS-terminating reverse proxy and SNI router."
    )
    optParameters: List[List[Any]] = [
        ["config", None, None, "A TOML file describing listeners (instead of the listener flags)."],
    ]
    _repeatable = {o for o, _, _, r in _LISTENER_OPTIONS + _PROCESS_OPTIONS if r}
    for _name in _config.LISTENER_OPTION_NAMES + _config.PROCESS_OPTION_NAMES:
        if _name not in _repeatable:
            optParameters.append([_name, None, None, (_LISTENER_HELP.get(_name) or _PROCESS_HELP[_name])])
    del _name

    def __init__(self) -> None:
        super().__init__()
        self.listen: List[str] = []
        self.ordered: List[Tuple[str, Any]] = []
        self.config: Optional[_config.ProxyConfig] = None

    def opt_listen(self, value: str) -> None:
        """
        Server endpoint to listen on (tcp:3128, ssl:8443:privateKey=k.pem:certKey=c.pem,
        unix:/path, haproxy:tcp:3128); repeatable; default tcp:3128.
        """
        self.listen.append(value)

    def _repeat(name: str, doc: str) -> Any:  # type: ignore[misc]
        def opt(self: "Options", value: str) -> None:
            self.ordered.append((name, value))

        opt.__doc__ = doc
        return opt

    opt_upstream = _repeat("upstream", _LISTENER_HELP["upstream"])
    opt_route = _repeat("route", _LISTENER_HELP["route"])
    opt_allow = _repeat("allow", _LISTENER_HELP["allow"])
    opt_deny = _repeat("deny", _LISTENER_HELP["deny"])
    opt_deny_dest = _repeat("deny-dest", _LISTENER_HELP["deny-dest"])
    opt_trusted_proxies = _repeat("trusted-proxies", _LISTENER_HELP["trusted-proxies"])
    opt_intercept = _repeat("intercept", _LISTENER_HELP["intercept"])
    opt_no_intercept = _repeat("no-intercept", _LISTENER_HELP["no-intercept"])
    opt_admin = _repeat("admin", _PROCESS_HELP["admin"])
    del _repeat

    def opt_version(self) -> None:
        """
        Print txproxy's version (with Twisted's and Python's) and exit.
        """
        sys.stdout.write(versionText() + "\n")
        sys.stdout.flush()
        raise SystemExit(0)

    def postOptions(self) -> None:
        options = list(self.ordered)
        for name in _config.LISTENER_OPTION_NAMES + _config.PROCESS_OPTION_NAMES:
            if name in self._repeatable:
                continue
            value = self.get(name)
            if value is not None:
                options.append((name, value))
        try:
            self.config = buildConfig(self.listen, options, self.get("config"))
        except ConfigError as e:
            raise usage.UsageError(str(e))

    def parseOptions(self, options: Optional[Sequence[str]] = None) -> None:
        """
        Parse, and on any mistake print one line to standard error and exit
        with status 2.
        """
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            _fail(str(e))


def versionText() -> str:
    """
    The C{--version} line: C{txproxy VERSION (Twisted VERSION, IMPLEMENTATION
    VERSION, BUILD)}, where BUILD is C{compiled (mypyc)} or C{pure Python}
    (see L{txproxy._compiled}).
    """
    import platform

    from twisted import version as twistedVersion

    return (
        f"txproxy {__version__} (Twisted {twistedVersion.short()}, "
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{buildDescription()})"
    )


def _fail(message: str) -> None:
    stderr = sys.__stderr__ or sys.stderr
    stderr.write(f"txproxy: error: {message}\n")
    stderr.flush()
    raise SystemExit(2)


def buildConfig(listen: Sequence[str], options: Sequence[Tuple[str, Any]], configFile: Optional[str]) -> _config.ProxyConfig:
    """
    Build and check the whole configuration, including that every endpoint
    string parses and every referenced file loads.

    @raise ConfigError: with a one-line message.
    """
    config = _config.fromFlags(listen, options, configFile)
    checkSupported(config)
    checkResources(config)
    return config


def parseCommandLine(argv: Sequence[str]) -> _config.ProxyConfig:
    """
    Parse C{argv} (without the program name) into a L{ProxyConfig}.

    @raise ConfigError: on any mistake (unlike L{Options.parseOptions},
        which exits).
    """
    options = Options()
    try:
        usage.Options.parseOptions(options, list(argv))
    except usage.UsageError as e:
        raise ConfigError(str(e))
    assert options.config is not None
    return options.config


def makeService(options: Options) -> Any:
    """
    Build the service tree for parsed C{options}.
    """
    assert options.config is not None
    try:
        return _make(options.config)
    except ConfigError as e:
        _fail(str(e))
