# -*- test-case-name: tests.test_tuning -*-
"""
Socket options of accepted connections: a listener's C{tcp_nodelay},
C{keepalive}, C{keepalive_idle}, C{keepalive_interval}, C{keepalive_count},
C{send_buffer} and C{receive_buffer} (TOML keys, no flags).

L{socketOptions} turns a listener's settings into C{(level, option, value)}
triples once per configuration; L{applySocketOptions} sets them on one
connection's socket.  L{txproxy._factory.ListenerFactory.connectionOpened},
which every mode's protocol calls from C{connectionMade}, does both: the
per-connection cost is one C{setsockopt} per option, and nothing at all when
the list is empty (C{tcp_nodelay = false} and nothing else set).

Options go on the connection's own socket, found through the TLS and
PROXY-protocol wrappers; C{unix:} connections and transports without a
socket (test fakes) are left alone.

On PyPy, the size of the garbage collector's nursery matters too (see
L{PYPY_NURSERY}): L{withPyPyNursery} gives it to the worker processes
txproxy starts, L{pypyNurseryHint} tells a process started without it.
L{tunePyPyJIT} sets the JIT parameters of L{PYPY_JIT_PARAMS}.
"""

from __future__ import annotations

import socket
from typing import Any, List, Mapping, MutableMapping, Optional, Tuple

__all__ = [
    "PYPY_NURSERY",
    "PYPY_JIT_PARAMS",
    "SocketOption",
    "applySocketOptions",
    "pypyNurseryHint",
    "socketOf",
    "socketOptions",
    "tunePyPyJIT",
    "withPyPyNursery",
]

#: The nursery (C{PYPY_GC_NURSERY}) recommended on PyPy.  PyPy sizes it
#: from the CPU cache (1 MB on the machines measured); every accepted and
#: dialled connection allocates objects that outlive such a nursery, so
#: minor collections promote them and major collections follow.  With
#: 32 MB, GC time under a CONNECT-tunnel load fell from 17% to 6% of the
#: CPU, and CPU per tunnel by about 14% (docs/performance.rst).
PYPY_NURSERY = "32M"

_NURSERY_ENV = "PYPY_GC_NURSERY"


#: PyPy JIT parameters txproxy sets at start-up (C{pypyjit.set_param}):
#: longer traces (Twisted's event dispatch down to a protocol's handler is a
#: deep call chain, and PyPy's default limit of 6000 operations aborts some
#: of those traces) and earlier compilation of loops and functions.  Over
#: five interleaved pairs of CONNECT-tunnel runs, CPU per tunnel averaged
#: 239 against 283 microseconds (docs/performance.rst).  The environment
#: variable C{TXPROXY_PYPY_JIT} replaces them (empty: PyPy's defaults).
PYPY_JIT_PARAMS = "trace_limit=15000,function_threshold=400,threshold=500"

_JIT_ENV = "TXPROXY_PYPY_JIT"
_MAX_TRACE_LIMIT = 16384


def tunePyPyJIT(env: Mapping[str, str], implementation: str) -> Tuple[Optional[str], Optional[str]]:
    """
    On PyPy, set the JIT parameters (L{PYPY_JIT_PARAMS}, or
    C{TXPROXY_PYPY_JIT} from C{env}).

    @return: C{(params set, None)}, C{(None, None)} when nothing was to be
        done (not PyPy, or an empty setting), or C{(None, error)} with a
        one-line reason when PyPy refused them (the defaults stay).
    """
    if implementation != "PyPy":
        return None, None
    params = env.get(_JIT_ENV, PYPY_JIT_PARAMS).strip()
    if not params:
        return None, None
    for item in params.split(","):
        name, _, value = item.partition("=")
        if name.strip() == "trace_limit" and value.strip().isdigit() and int(value) > _MAX_TRACE_LIMIT:
            # PyPy 7.3 fails on these with an internal error and a traceback.
            return None, f"{_JIT_ENV}: trace_limit may be at most {_MAX_TRACE_LIMIT}; PyPy's defaults stay"
    try:
        import pypyjit

        pypyjit.set_param(params)
    except Exception as e:  # PyPy raises several kinds for bad parameters
        return None, f"{_JIT_ENV}={params!r} refused by PyPy ({type(e).__name__}); its defaults stay"
    return params, None


def withPyPyNursery(env: MutableMapping[str, str], implementation: str) -> MutableMapping[str, str]:
    """
    Add L{PYPY_NURSERY} to C{env} (a child process's environment) when
    C{implementation} is C{"PyPy"} and C{env} sets no nursery of its own.

    @param implementation: C{platform.python_implementation()} of the
        interpreter the child runs.
    @return: C{env}.
    """
    if implementation == "PyPy" and _NURSERY_ENV not in env:
        env[_NURSERY_ENV] = PYPY_NURSERY
    return env


def pypyNurseryHint(env: Mapping[str, str], implementation: str) -> Optional[str]:
    """
    A line for the start-up log when running on PyPy without
    C{PYPY_GC_NURSERY}, else L{None}.
    """
    if implementation != "PyPy" or env.get(_NURSERY_ENV):
        return None
    return (
        f"running on PyPy with its default GC nursery; {_NURSERY_ENV}={PYPY_NURSERY} in the environment "
        "cuts garbage-collection time on busy proxies (see the Performance page of the docs)"
    )

#: C{(level, option name, value)}, as given to C{socket.setsockopt}.
SocketOption = Tuple[int, int, int]

_INET = (socket.AF_INET, socket.AF_INET6)

#: How many wrapping transports (TLS, PROXY protocol) to look through.
_MAX_WRAPPERS = 4


def socketOptions(listener: Any) -> Tuple[SocketOption, ...]:
    """
    The socket options C{listener} (a L{txproxy.config.ListenerConfig})
    asks for, in the order they are set.  Options left at the kernel's
    default are not listed: C{TCP_NODELAY} is listed unless C{tcp_nodelay}
    is false, C{SO_KEEPALIVE} only when C{keepalive} is true.

    @raise ValueError: a keep-alive setting whose socket constant this
        platform lacks (the config check refuses those first).
    """
    # getattr: a listener-like object from a user's test may predate these.
    options: List[SocketOption] = []
    if getattr(listener, "tcpNoDelay", True):
        options.append((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1))
    if getattr(listener, "keepAlive", False):
        options.append((socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1))
        for value, constant in (
            (getattr(listener, "keepAliveIdle", None), "TCP_KEEPIDLE"),
            (getattr(listener, "keepAliveInterval", None), "TCP_KEEPINTVL"),
            (getattr(listener, "keepAliveCount", None), "TCP_KEEPCNT"),
        ):
            if value is not None:
                name = getattr(socket, constant, None)
                if name is None:
                    raise ValueError(f"{constant} is not available on this platform")
                options.append((socket.IPPROTO_TCP, name, int(value)))
    sendBuffer = getattr(listener, "sendBuffer", None)
    if sendBuffer is not None:
        options.append((socket.SOL_SOCKET, socket.SO_SNDBUF, int(sendBuffer)))
    receiveBuffer = getattr(listener, "receiveBuffer", None)
    if receiveBuffer is not None:
        options.append((socket.SOL_SOCKET, socket.SO_RCVBUF, int(receiveBuffer)))
    return tuple(options)


def socketOf(transport: Any) -> Optional[Any]:
    """
    The TCP socket under C{transport}: its C{getHandle()} when that is a
    socket, else the handle of the transport it wraps (a TLS transport's
    handle is its C{OpenSSL.SSL.Connection}; a PROXY-protocol wrapper passes
    C{getHandle} through).

    @return: an object with C{setsockopt} whose C{family} is IPv4 or IPv6
        (or that has no C{family}, as a test double may not), or L{None}:
        no socket (a fake transport) or not a TCP one (C{unix:}).
    """
    for _ in range(_MAX_WRAPPERS):
        getHandle = getattr(transport, "getHandle", None)
        if getHandle is None:
            return None
        handle = getHandle()
        if hasattr(handle, "setsockopt"):
            family = getattr(handle, "family", None)
            return handle if family is None or family in _INET else None
        transport = getattr(transport, "transport", None)
        if transport is None:
            return None
    return None


def applySocketOptions(transport: Any, options: Tuple[SocketOption, ...]) -> Optional[OSError]:
    """
    Set C{options} on C{transport}'s socket (see L{socketOf}); nothing when
    it has none.  Every option is tried even when one fails.

    @return: the first error, or L{None} when all were set (or there was
        no TCP socket to set them on).
    """
    sock = socketOf(transport)
    if sock is None:
        return None
    failed: Optional[OSError] = None
    setsockopt = sock.setsockopt
    for level, name, value in options:
        try:
            setsockopt(level, name, value)
        except OSError as e:
            if failed is None:
                failed = e
    return failed
