# -*- test-case-name: tests.test_workers -*-
"""
This process's place in a C{--workers} fleet: its worker id, its private
admin endpoint, dying with its supervisor, binding ports with
C{SO_REUSEPORT}, and the start-up check of the open-file limit.

The supervisor itself (L{txproxy.runtime.workers}) and the single-process
service (L{txproxy.runtime.service}) both use these; they sit below both.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from typing import Any, Callable, Dict, List, Optional, cast

from twisted.internet import defer, error
from twisted.logger import ILogObserver, Logger, globalLogPublisher

__all__ = [
    "ReusePortEndpoint",
    "reusePort",
    "reusePortIfWorker",
    "workerId",
    "workerLogTagger",
    "workerAdminEndpoint",
    "setUpWorkerProcess",
    "checkPortFree",
    "fdLimitWarning",
    "warnAboutFdLimit",
]

log = Logger(namespace="txproxy.workers")

#: Environment variables the supervisor sets for each worker it starts.
WORKER_ID_ENV = "TXPROXY_WORKER_ID"
WORKER_ADMIN_ENV = "TXPROXY_WORKER_ADMIN"
SUPERVISOR_PID_ENV = "TXPROXY_SUPERVISOR_PID"


def workerId() -> Optional[int]:
    """
    This process's worker number (1..N) when it is a C{--workers} worker,
    else L{None}.
    """
    value = os.environ.get(WORKER_ID_ENV)
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def workerAdminEndpoint() -> str:
    """
    The private admin endpoint (a UNIX socket) the supervisor gave this
    worker; the supervisor reads its C{/metrics} and C{/status} there.
    """
    return os.environ[WORKER_ADMIN_ENV]


def workerLogTagger(number: int) -> Callable[[Dict[str, Any]], None]:
    """
    A log observer that marks each event as worker C{number}'s: its
    C{log_system} (the bracketed part of a text log line) becomes
    C{worker N} followed by what it was (by default the namespace and
    level: C{[worker 2 txproxy.service#info]}).

    It changes the event in place, so it must see each event before the
    observers that write it: L{setUpWorkerProcess} adds it to the global
    publisher while the worker's service is made, before C{python -m
    twisted} begins logging to standard output (and events logged before
    that are kept, already marked, until then).
    """
    prefix = f"worker {number}"

    def tag(event: Dict[str, Any]) -> None:
        if event.get("txproxy_worker") is not None:
            return
        event["txproxy_worker"] = number
        system = event.get("log_system")
        if system is None or system == "-":
            level = event.get("log_level")
            system = f"{event.get('log_namespace', '-')}#{level.name if level is not None else '-'}"
        event["log_system"] = f"{prefix} {system}"

    return tag


def setUpWorkerProcess() -> None:
    """
    In a worker: mark its log lines with its number (L{workerLogTagger});
    ask Linux to send SIGTERM when the supervisor dies (so no worker
    outlives a killed supervisor), and exit at once if it is already gone.
    """
    number = workerId()
    if number is not None:
        globalLogPublisher.addObserver(cast(ILogObserver, workerLogTagger(number)))
    parent = os.environ.get(SUPERVISOR_PID_ENV)
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            PR_SET_PDEATHSIG = 1
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        except (OSError, AttributeError):  # pragma: no cover - no libc prctl
            pass
    if parent and parent.isdigit() and os.getppid() != int(parent):
        log.warn("worker: the supervisor (pid {pid}) is gone; exiting", pid=parent)
        os.kill(os.getpid(), signal.SIGTERM)


class ReusePortEndpoint:
    """
    A TCP server endpoint whose socket has C{SO_REUSEPORT} (and
    C{SO_REUSEADDR}) set before it binds, so several processes can listen
    on one port.  Twisted's C{tcp:} endpoint has no such option: the socket
    is made here and handed to C{reactor.adoptStreamPort}.
    """

    def __init__(self, reactor: Any, port: int, backlog: int = 50, interface: str = "") -> None:
        self.reactor = reactor
        self.port = port
        self.backlog = backlog
        self.interface = interface

    def listen(self, factory: Any) -> "defer.Deferred[Any]":
        return defer.execute(self._listen, factory)

    def _listen(self, factory: Any) -> Any:
        family = socket.AF_INET6 if ":" in self.interface else socket.AF_INET
        s = socket.socket(family, socket.SOCK_STREAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind((self.interface, self.port))
            s.listen(self.backlog)
            s.setblocking(False)
            # adoptStreamPort duplicates the descriptor; ours is closed below.
            return self.reactor.adoptStreamPort(s.fileno(), family, factory)
        except OSError as e:
            raise error.CannotListenError(self.interface, self.port, e)
        finally:
            s.close()

    def __repr__(self) -> str:
        return f"<ReusePortEndpoint {self.interface or '*'}:{self.port}>"


def reusePort(endpoint: Any) -> Any:
    """
    Return C{endpoint} with its TCP listening made C{SO_REUSEPORT}: plain
    C{tcp:}/C{tcp6:} endpoints are replaced, C{haproxy:} wrappers and
    txproxy's TLS endpoints get their inner endpoint replaced.  Other
    endpoints (C{unix:}) are returned unchanged.
    """
    from twisted.internet.endpoints import _TCPServerEndpoint, _WrapperServerEndpoint

    if isinstance(endpoint, _TCPServerEndpoint):
        return ReusePortEndpoint(endpoint._reactor, endpoint._port, endpoint._backlog, endpoint._interface)
    if isinstance(endpoint, _WrapperServerEndpoint):
        return _WrapperServerEndpoint(reusePort(endpoint._wrappedEndpoint), endpoint._wrapperFactory)
    inner = getattr(endpoint, "endpoint", None)
    if inner is not None and hasattr(inner, "listen"):
        endpoint.endpoint = reusePort(inner)
    return endpoint


def reusePortIfWorker(endpoint: Any) -> Any:
    """
    L{reusePort} in a C{--workers} worker, C{endpoint} unchanged otherwise.
    """
    if workerId() is None:
        return endpoint
    return reusePort(endpoint)


def _innermost(endpoint: Any) -> Optional[ReusePortEndpoint]:
    while endpoint is not None:
        if isinstance(endpoint, ReusePortEndpoint):
            return endpoint
        endpoint = getattr(endpoint, "_wrappedEndpoint", None) or getattr(endpoint, "endpoint", None)
    return None


def checkPortFree(endpoint: ReusePortEndpoint) -> None:
    """
    Bind (without listening) the way the workers will, to report a port
    that cannot be shared (in use by another program, no permission) at
    start-up, as one line.

    @raise error.CannotListenError: it cannot.
    """
    family = socket.AF_INET6 if ":" in endpoint.interface else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind((endpoint.interface, endpoint.port))
    except OSError as e:
        raise error.CannotListenError(endpoint.interface, endpoint.port, e)
    finally:
        s.close()


#: Below this many descriptors a proxy with no --max-conns is warned about.
UNCAPPED_FD_MINIMUM = 4096


#: Descriptors kept for everything but connections (listeners, logs, Redis,
#: health checks, the admin site).
FD_RESERVE = 64


def fdLimitWarning(config: Any, softLimit: int) -> Optional[str]:
    """
    The start-up warning for a process whose open-file limit is
    C{softLimit}, or L{None} when it is enough.

    Every proxied connection holds two descriptors (client and upstream), so
    listeners with C{--max-conns} need about twice the sum of their caps;
    without a cap on some listener, anything below L{UNCAPPED_FD_MINIMUM}
    is warned about.
    """
    caps: List[Optional[int]] = [getattr(listener, "maxConns", None) for listener in config.listeners]
    if softLimit < 0:  # RLIM_INFINITY
        return None
    if all(c is not None for c in caps):
        total = sum(c for c in caps if c is not None)
        need = 2 * total + FD_RESERVE
        if softLimit >= need:
            return None
        return (
            f"the open-file limit (ulimit -n) is {softLimit}, below the {need} descriptors that "
            f"--max-conns {total} can use (two per proxied connection); raise it "
            f"(LimitNOFILE= in systemd, ulimit -n) or connections will fail with EMFILE"
        )
    if softLimit >= UNCAPPED_FD_MINIMUM:
        return None
    return (
        f"the open-file limit (ulimit -n) is {softLimit} and no --max-conns caps connections: "
        f"at about {max(1, (softLimit - FD_RESERVE) // 2)} concurrent connections accept will fail with EMFILE; "
        f"raise the limit (LimitNOFILE= in systemd, ulimit -n) or set --max-conns"
    )


def warnAboutFdLimit(config: Any) -> Optional[str]:
    """
    Log L{fdLimitWarning} for this process's soft C{RLIMIT_NOFILE}, once, at
    start-up.

    @return: the warning logged, or L{None}.
    """
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):  # pragma: no cover - not POSIX
        return None
    message = fdLimitWarning(config, soft)
    if message is not None:
        log.warn("txproxy: {message}", message=message)
    return message
