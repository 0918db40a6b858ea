# -*- test-case-name: tests.test_config -*-
"""
Building a L{ProxyConfig} from command-line flags: L{fromFlags}.  With
C{--config FILE}, the file describes the listeners and the flags may only
add process-wide options.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import attr

from txproxy.config._model import ProxyConfig
from txproxy.config._options import (
    _LISTENER_OPTIONS,
    _PROCESS_OPTIONS,
    _applyOption,
    _checkRedisURL,
    _checkTracing,
    _finishListener,
)
from txproxy.config._toml import loadFile
from txproxy.errors import ConfigError


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
    if configFile is None:
        _checkTracing(processValues, "--trace-sample", "--trace-otlp")
    if configFile is not None:
        if listen:
            raise ConfigError(f"--listen cannot be combined with --config; set it in {configFile}")
        base = loadFile(configFile)
        overrides: Dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in processValues.items()
        }
        merged = attr.evolve(base, **overrides)
        if "traceSample" in processValues and not merged.traceOtlp:
            raise ConfigError("--trace-sample needs --trace-otlp (on the command line or as trace_otlp in the file)")
        return merged
    listenerValues["listen"] = tuple(listen) or ("tcp:3128",)
    listenerValues.setdefault("name", "listener0")
    listener = _finishListener(listenerValues, "")
    process: Dict[str, Any] = {
        k: tuple(v) if isinstance(v, list) else v for k, v in processValues.items()
    }
    return ProxyConfig(listeners=(listener,), **process)
