# -*- test-case-name: tests.test_config -*-
"""
Immutable, validated configuration objects, built from command-line flags or
from a TOML file.

Everything here is plain data: no reactor, no sockets.  L{fromFlags} and
L{fromTOML} return a L{ProxyConfig} or raise L{ConfigError} with a one-line
message naming what was wrong (for TOML, with the key path, e.g.
C{listeners[1].routes[0].upstrems}).

The modules, each importing only those above it: L{_values} (small values
and their parsers), L{_model} (the records), L{_options} (the option tables,
converters and cross-checks), L{_toml} (the file) and L{_flags} (the command
line).
"""


from __future__ import annotations

from txproxy.config._flags import fromFlags
from txproxy.config._model import HealthCheck, ListenerConfig, ProxyConfig, RouteConfig, parseRoute
from txproxy.config._options import LISTENER_OPTION_NAMES, PROCESS_OPTION_NAMES
from txproxy.config._toml import fromTOML, loadFile
from txproxy.config._values import (
    ACCESS_LOG_FORMATS,
    BALANCE_POLICIES,
    LOCALNET,
    MODES,
    PROXY_PROTOCOL_VERSIONS,
    CIDRSet,
    PortSet,
    Rate,
    UpstreamURL,
    checkHostValue,
    hostNameProblem,
    parseCIDRs,
    parsePorts,
    parseRate,
    parseSize,
    parseUpstreamURL,
    pathProblem,
)
from txproxy.errors import ConfigError

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
    "parseSize",
    "parsePorts",
    "parseCIDRs",
    "parseRoute",
    "parseUpstreamURL",
    "fromFlags",
    "fromTOML",
    "loadFile",
    "BALANCE_POLICIES",
    "ACCESS_LOG_FORMATS",
    "PROXY_PROTOCOL_VERSIONS",
    "LISTENER_OPTION_NAMES",
    "PROCESS_OPTION_NAMES",
]
