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

On Linux an accepted TCP socket inherits C{TCP_NODELAY} and C{SO_KEEPALIVE}
from its listening socket (copied when the connection is established), so
L{inheritFromListeningPort} sets those two once on each listening port the
listener services open, and L{optionsToSet} leaves them out of the
per-connection list: with the default settings, an accepted connection
costs no C{setsockopt} at all.  Connections that were already established
when the listening socket got them (at most the port's backlog + 1, queued
for C{accept}) still get them one by one, and a reload that changes them
sets the listening socket again.

On PyPy, the size of the garbage collector's nursery matters too (see
L{PYPY_NURSERY}): L{withPyPyNursery} gives it to the worker processes
txproxy starts, L{pypyNurseryHint} tells a process started without it.
L{tunePyPyJIT} sets the JIT parameters of L{PYPY_JIT_PARAMS}.  On CPython,
L{tuneCollector} raises the cyclic garbage collector's first threshold
(L{CPYTHON_GC_THRESHOLD}).
"""

from __future__ import annotations

import socket
import struct
import sys
from typing import Any, List, Mapping, MutableMapping, Optional, Tuple
from weakref import WeakKeyDictionary

__all__ = [
    "CPYTHON_GC_THRESHOLD",
    "PYPY_NURSERY",
    "PYPY_JIT_PARAMS",
    "SocketOption",
    "applySocketOptions",
    "inheritFromListeningPort",
    "optionsToSet",
    "pypyNurseryHint",
    "socketOf",
    "socketOptions",
    "tuneCollector",
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


#: CPython's cyclic garbage collector runs a young-generation collection
#: whenever container allocations exceed deallocations by its first
#: threshold (Python's default: 700), and every tenth of those an older
#: one, and now and then a full one over every live object.  A proxy under
#: load has many requests in flight whose objects are alive across such
#: collections and get promoted, so full collections follow.  Under HTTP/2
#: (h2load, 500 streams in flight) the collector took about 20
#: microseconds per request with 700 (a tenth of the CPU: 33 young
#: collections and a full one every 4,000 requests); with 10,000, about 3
#: (one young collection per 1,000 requests, no full one in 5 s).  The
#: cost: up to that many more container objects of reference cycles wait
#: for a collection (a megabyte or two).  C{TXPROXY_GC_THRESHOLD} in the
#: environment replaces it (700: Python's default; 0 turns the cyclic
#: collector off).
CPYTHON_GC_THRESHOLD = 10000
_GC_ENV = "TXPROXY_GC_THRESHOLD"


def tuneCollector(env: Mapping[str, str], implementation: str, gc: Any = None) -> Tuple[Optional[int], Optional[str]]:
    """
    On CPython, set the cyclic garbage collector's first threshold to
    L{CPYTHON_GC_THRESHOLD}, or to C{TXPROXY_GC_THRESHOLD} from C{env}
    (the older generations keep theirs).

    @param gc: the C{gc} module (a fake in tests).
    @return: C{(threshold set, None)}, C{(None, None)} when nothing was to
        be done (not CPython), or C{(None, error)} with a one-line reason
        when the setting is not a whole number (Python's threshold stays).
    """
    if implementation != "CPython":
        return None, None
    if gc is None:
        import gc
    setting = env.get(_GC_ENV, "").strip()
    if setting:
        if not setting.isdigit():
            return None, f"{_GC_ENV}={setting!r} is not a whole number; the collector keeps Python's threshold"
        threshold = int(setting)
    else:
        threshold = CPYTHON_GC_THRESHOLD
    _, second, third = gc.get_threshold()
    gc.set_threshold(threshold, second, third)
    return threshold, None


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


#: The flags (C{(level, option)}) an accepted TCP socket inherits from its
#: listening socket on Linux; each is 0 or 1.
_INHERITABLE: Tuple[Tuple[int, int], ...] = (
    (socket.IPPROTO_TCP, socket.TCP_NODELAY),
    (socket.SOL_SOCKET, socket.SO_KEEPALIVE),
)


class _PortOptions:
    """
    What one listening port's socket was given: the inheritable flags
    (C{(level, option, value)} for each of L{_INHERITABLE}), from which
    accepted connection (its session number) on every accepted socket has
    them, and the per-connection rest of the last options list asked for.
    """

    __slots__ = ("flags", "firstSession", "forOptions", "rest")

    def __init__(self, flags: Tuple[SocketOption, ...], firstSession: int) -> None:
        self.flags = flags
        self.firstSession = firstSession
        self.forOptions: Optional[Tuple[SocketOption, ...]] = None
        self.rest: Tuple[SocketOption, ...] = ()


_ports: "WeakKeyDictionary[Any, _PortOptions]" = WeakKeyDictionary()

#: Whether accepted sockets inherit the flags (Linux).
_LINUX = sys.platform.startswith("linux")


def _flags(options: Tuple[SocketOption, ...]) -> Tuple[SocketOption, ...]:
    """
    The inheritable flags as C{options} wants them: each of
    L{_INHERITABLE}, 1 when C{options} sets it, else 0.
    """
    wanted = {(level, name) for level, name, value in options if value}
    return tuple((level, name, 1 if (level, name) in wanted else 0) for level, name in _INHERITABLE)


def _acceptQueueBound() -> int:
    """
    How many established connections a listening socket's accept queue can
    hold at most: its backlog + 1, and Linux caps every backlog at
    C{net.core.somaxconn} (the port's own backlog is not known for a
    socket made elsewhere and adopted).
    """
    try:
        with open("/proc/sys/net/core/somaxconn") as f:
            return int(f.read().strip()) + 1
    except (OSError, ValueError):
        return 65536


def _acceptQueueLength(sock: Any) -> int:
    """
    How many established connections wait in the accept queue of the
    listening socket C{sock}: Linux reports it in C{TCP_INFO}'s
    C{tcpi_unacked} for a listening socket; L{_acceptQueueBound} when that
    cannot be read.
    """
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 32)
        return int(struct.unpack_from("I", info, 24)[0])
    except (OSError, AttributeError, struct.error, TypeError):
        return _acceptQueueBound()


def _queued(port: Any) -> int:
    """
    The first session number of a connection the listening socket of
    C{port} may establish from now on (read after its options were set):
    connections established before wait in its accept queue, and are
    accepted first.
    """
    return int(port.sessionno) + _acceptQueueLength(port.socket)


def inheritFromListeningPort(port: Any, options: Tuple[SocketOption, ...]) -> bool:
    """
    On Linux, set the inheritable flags (C{TCP_NODELAY}, C{SO_KEEPALIVE})
    of C{options} on the listening socket of C{port}, a plain
    L{twisted.internet.tcp.Port} (anything else is left alone), so that
    L{optionsToSet} can leave them out for its connections.

    @return: whether the port's connections will inherit them.
    """
    from twisted.internet import tcp

    if not _LINUX or type(port) is not tcp.Port:
        return False
    sock = getattr(port, "socket", None)
    if sock is None or getattr(sock, "family", None) not in _INET:
        return False
    flags = _flags(options)
    try:
        for level, name, value in flags:
            sock.setsockopt(level, name, value)
    except OSError:
        _ports.pop(port, None)
        return False
    _ports[port] = _PortOptions(flags, _queued(port))
    return True


def _acceptedConnection(transport: Any) -> Any:
    """
    The L{twisted.internet.tcp.Server} under C{transport} (through TLS and
    PROXY-protocol wrappers), or L{None}.
    """
    from twisted.internet import tcp

    for _ in range(_MAX_WRAPPERS):
        if isinstance(transport, tcp.Server):
            return transport
        transport = getattr(transport, "transport", None)
        if transport is None:
            return None
    return None


def optionsToSet(transport: Any, options: Tuple[SocketOption, ...]) -> Tuple[SocketOption, ...]:
    """
    The options to set on the accepted connection C{transport}, for a
    listener that wants C{options}: without the flags its socket inherited
    from the listening socket (L{inheritFromListeningPort}); with them, and
    any that must be off set to 0, for a connection that was established
    before the listening socket had them.  A listener whose options
    changed (a reload) has its listening socket set again.
    """
    conn = _acceptedConnection(transport)
    if conn is None:
        return options
    port = getattr(conn, "server", None)
    state = _ports.get(port) if port is not None else None
    if state is None:
        return options
    if state.forOptions is not options:
        flags = _flags(options)
        if flags != state.flags:
            # A reload changed them: the listening socket first; the
            # connections it already established keep the old ones.
            if not inheritFromListeningPort(port, options):
                return options + tuple(f for f in flags if not f[2])
            state = _ports[port]
        state.forOptions = options
        state.rest = tuple(o for o in options if (o[0], o[1]) not in _INHERITABLE)
    if conn.sessionno >= state.firstSession:
        return state.rest
    # Established before the listening socket had the flags: each one.
    return state.rest + state.flags
