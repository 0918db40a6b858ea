# -*- test-case-name: tests.test_workers -*-
"""
C{--workers N}: N processes sharing each listening port.

The process started by the user becomes a I{supervisor}
(L{WorkerSupervisor}): it does not proxy.  It starts N workers, each the
same C{txproxy} command line re-executed (C{python -m twisted txproxy ...})
with the environment variable C{TXPROXY_WORKER_ID} set to its number.  Each
worker binds every TCP listening port itself with C{SO_REUSEPORT}, so the
kernel spreads new connections over the workers (Linux), and serves a
private admin site on a UNIX socket from which the supervisor reads its
C{/metrics} and C{/status}.

The supervisor:

  - restarts a worker that exits while the proxy is running, after a
    delay that doubles with each quick failure (0.25 s up to 30 s; reset
    once a worker has lived 10 s);
  - forwards C{SIGHUP} (reload) to the workers;
  - on C{SIGTERM}/C{SIGINT}: C{/healthz} turns 503, C{SIGTERM} goes to each
    worker (which drains for up to C{--drain-timeout}), a worker still
    running 10 s after that is killed, and the supervisor exits 0 once all
    have exited;
  - serves C{--admin}: C{/metrics} merges its own series and every
    worker's (each sample labelled with its C{worker}), C{/status} lists the
    workers and each one's status.

Limits are per worker unless C{--redis} shares them.
"""

from __future__ import annotations

import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence, cast
from urllib.parse import quote

from twisted.application.service import MultiService
from twisted.internet import defer, error
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from txproxy import __version__
from txproxy.cache import purgeKey
from txproxy.errors import ConfigError
from txproxy.metrics import buildInfo, mergeExpositions
from txproxy.runtime.admin import AdminService
from txproxy.runtime.endpoints import StartupError, serverEndpoint
from txproxy.runtime.process import (
    SUPERVISOR_PID_ENV,
    WORKER_ADMIN_ENV,
    WORKER_ID_ENV,
    ReusePortEndpoint,
    _innermost,
    checkPortFree,
    reusePort,
    reusePortIfWorker,
    workerAdminEndpoint,
    workerId,
)
from txproxy.runtime.statuspage import workerTotals
from txproxy.tuning import withPyPyNursery

__all__ = [
    "WorkerSupervisor",
    "ReusePortEndpoint",
    "reusePortIfWorker",
    "workerId",
    "workerAdminEndpoint",
]

log = Logger(namespace="txproxy.workers")


#: Restart delays: first, maximum, and how long a worker must live for the
#: delay to start again from the first.
RESTART_DELAY = 0.25
RESTART_DELAY_MAX = 30.0
STABLE_AFTER = 10.0

#: Seconds past the drain timeout before a worker that has not exited is
#: killed.
KILL_GRACE = 10.0


# ---------------------------------------------------------------------------
# SO_REUSEPORT listening


# ---------------------------------------------------------------------------
# Metrics merging


# ---------------------------------------------------------------------------
# The supervisor


class _Fetch(Protocol):
    """
    One HTTP/1.0 request (C{GET}, or C{POST} without a body) to a worker's
    admin socket.
    """

    done: "Optional[defer.Deferred[bytes]]" = None

    def __init__(self, path: bytes, method: bytes = b"GET") -> None:
        self.path = path
        self.method = method
        self.chunks: List[bytes] = []

    def connectionMade(self) -> None:
        transport: Any = self.transport
        length = b"Content-Length: 0\r\n" if self.method == b"POST" else b""
        transport.write(self.method + b" " + self.path + b" HTTP/1.0\r\nHost: worker\r\n" + length + b"\r\n")

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)

    def connectionLost(self, reason: Optional[Failure] = None) -> None:
        done, self.done = self.done, None
        if done is None or done.called:
            return
        head, sep, body = b"".join(self.chunks).partition(b"\r\n\r\n")
        status = head.split(b" ", 2)[1:2]
        if not sep or status != [b"200"]:
            done.errback(Failure(RuntimeError(f"worker admin answered {head[:40]!r}")))
        else:
            done.callback(body)


class _FetchFactory(Factory):
    """
    Hands out one L{_Fetch}; quiet (no "Starting factory" line for every
    C{/metrics} scrape).
    """

    noisy = False

    def __init__(self, proto: _Fetch) -> None:
        self.proto = proto

    def buildProtocol(self, addr: Any) -> _Fetch:
        return self.proto


class _WorkerProtocol(ProcessProtocol):
    def __init__(self, worker: "_Worker") -> None:
        self.worker = worker

    def processEnded(self, reason: Failure) -> None:
        self.worker.ended(reason)


class _Worker:
    """
    One worker slot: its current process, restarts and timing.
    """

    def __init__(self, supervisor: "WorkerSupervisor", number: int) -> None:
        self.supervisor = supervisor
        self.number = number
        self.process: Any = None
        self.pid: Optional[int] = None
        self.startedAt: Optional[float] = None
        self.restarts = 0
        self.quickFailures = 0
        self.restartCall: Any = None
        self.exited: "defer.Deferred[None]" = defer.succeed(None)
        self.lastExit: Optional[str] = None

    @property
    def running(self) -> bool:
        return self.process is not None

    @property
    def adminPath(self) -> str:
        return os.path.join(self.supervisor.runDir, f"worker-{self.number}.sock")

    def start(self) -> None:
        s = self.supervisor
        self.restartCall = None
        try:
            os.unlink(self.adminPath)
        except OSError:
            pass
        env = dict(os.environ)
        env[WORKER_ID_ENV] = str(self.number)
        env[WORKER_ADMIN_ENV] = f"unix:{self.adminPath}"
        env[SUPERVISOR_PID_ENV] = str(os.getpid())
        env["PYTHONPATH"] = os.pathsep.join(p for p in [s.packageRoot, env.get("PYTHONPATH", "")] if p)
        withPyPyNursery(env, platform.python_implementation())
        self.exited = defer.Deferred()
        self.process = s.reactor.spawnProcess(
            _WorkerProtocol(self),
            s.executable,
            s.workerArgv(),
            env=env,
            path=os.getcwd(),
            childFDs={0: "w", 1: 1, 2: 2},
        )
        self.pid = self.process.pid
        self.startedAt = s.reactor.seconds()
        log.info("worker {n} started (pid {pid})", n=self.number, pid=self.pid)

    def ended(self, reason: Failure) -> None:
        s = self.supervisor
        code = getattr(reason.value, "exitCode", None)
        sig = getattr(reason.value, "signal", None)
        self.lastExit = f"signal {sig}" if sig else f"status {code}"
        self.process = None
        lived = s.reactor.seconds() - (self.startedAt or 0.0)
        exited, self.exited = self.exited, defer.succeed(None)
        if s.stopping:
            log.info("worker {n} (pid {pid}) exited ({how})", n=self.number, pid=self.pid, how=self.lastExit)
            exited.callback(None)
            return
        if lived >= STABLE_AFTER:
            self.quickFailures = 0
        delay = min(RESTART_DELAY_MAX, RESTART_DELAY * (2 ** self.quickFailures))
        self.quickFailures += 1
        self.restarts += 1
        s.restartsTotal += 1
        log.warn(
            "worker {n} (pid {pid}) exited ({how}) after {lived:.1f}s; restarting in {delay:.2f}s",
            n=self.number, pid=self.pid, how=self.lastExit, lived=lived, delay=delay,
        )
        self.restartCall = s.reactor.callLater(delay, self.start)
        exited.callback(None)

    def signal(self, signum: int) -> None:
        if self.process is not None:
            try:
                self.process.signalProcess(signum)
            except (error.ProcessExitedAlready, OSError):
                pass

    def status(self, now: float) -> Dict[str, Any]:
        return {
            "id": self.number,
            "pid": self.pid if self.running else None,
            "running": self.running,
            "restarts": self.restarts,
            "startedAt": self.startedAt,
            "uptime": (now - self.startedAt) if self.running and self.startedAt is not None else None,
            "lastExit": self.lastExit,
        }


#: Reactor modules and the name C{python -m twisted --reactor} knows them by,
#: so workers run on the supervisor's reactor.
_REACTOR_NAMES = {
    "twisted.internet.epollreactor": "epoll",
    "twisted.internet.pollreactor": "poll",
    "twisted.internet.selectreactor": "select",
    "twisted.internet.asyncioreactor": "asyncio",
    "twisted.internet.kqreactor": "kqueue",
}


def _pluginArgs(argv: Sequence[str]) -> List[str]:
    """
    The arguments after the C{txproxy} subcommand in C{twistd ... txproxy
    ARGS} or C{python -m twisted txproxy ARGS}.
    """
    args = list(argv[1:])
    if "txproxy" in args:
        return args[args.index("txproxy") + 1 :]
    return args


class WorkerSupervisor(MultiService):
    """
    The main process of C{--workers N}: starts, supervises and stops the
    workers, and serves C{--admin} for all of them.

    @ivar draining: whether a stop has begun (C{/healthz} answers 503).
    @ivar workers: the L{_Worker} slots.
    @ivar restartsTotal: workers restarted since start.
    """

    draining = False
    stopping = False
    installSignalHandlers = True

    def __init__(self, config: Any, reactor: Any = None, argv: Optional[Sequence[str]] = None,
                 executable: Optional[str] = None) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.config = config
        self.reactor = reactor
        self.argv = list(argv if argv is not None else sys.argv)
        self.executable = executable or sys.executable
        self.packageRoot = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        self.listenEndpoints = self._checkEndpoints()
        self.runDir = tempfile.mkdtemp(prefix="txproxy-workers-")
        self.restartsTotal = 0
        self.startedAt = time.time()
        self.workers = [_Worker(self, n) for n in range(1, config.workers + 1)]
        from prometheus_client import CollectorRegistry, ProcessCollector

        self.registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self.registry)
        self.registry.register(_SupervisorCollector(self))
        self.admin = None
        if config.admin:
            self.admin = AdminService(config.admin, SupervisorAdminSource(self), reactor)
            self.admin.setServiceParent(self)

    def _checkEndpoints(self) -> List[ReusePortEndpoint]:
        found = []
        for listener in self.config.listeners:
            for description in listener.listen:
                endpoint = _innermost(reusePort(serverEndpoint(self.reactor, description)))
                if endpoint is None:
                    raise ConfigError(f"--workers needs TCP listeners; {description!r} cannot be shared")
                found.append(endpoint)
        return found

    def workerArgv(self) -> List[str]:
        """
        The command line of a worker: this interpreter running
        C{python -m twisted txproxy} with the supervisor's txproxy arguments.
        """
        args = [self.executable, "-m", "twisted", "--log-format=text"]
        reactorName = _REACTOR_NAMES.get(type(self.reactor).__module__)
        if reactorName is not None:
            args.append(f"--reactor={reactorName}")
        return args + ["txproxy", *_pluginArgs(self.argv)]

    # -- start and stop

    def privilegedStartService(self) -> None:
        try:
            for endpoint in self.listenEndpoints:
                try:
                    checkPortFree(endpoint)
                except error.CannotListenError as e:
                    detail = getattr(e.socketError, "strerror", None) or str(e.socketError)
                    raise StartupError(f"cannot listen on {endpoint.interface or '*'}:{endpoint.port}: {detail}")
            super().privilegedStartService()
        except StartupError as e:
            self._startupFailed(e)

    def _startupFailed(self, e: Exception) -> None:
        shutil.rmtree(self.runDir, ignore_errors=True)
        stderr = sys.__stderr__ or sys.stderr
        stderr.write(f"txproxy: error: {e}\n")
        stderr.flush()
        raise SystemExit(1)

    def startService(self) -> None:
        try:
            super().startService()
        except StartupError as e:
            self._startupFailed(e)
        log.info("txproxy supervisor (pid {pid}) starting {n} workers", pid=os.getpid(), n=len(self.workers))
        for w in self.workers:
            w.start()
        if self.installSignalHandlers:
            self.reactor.callWhenRunning(self._installSignalHandlers)

    def _installSignalHandlers(self) -> None:
        def stop(signum: int, frame: Any) -> None:
            log.info("supervisor received signal {signum}: stopping the workers", signum=signum)
            self.reactor.callFromThread(self._stopReactor)

        def hup(signum: int, frame: Any) -> None:
            self.reactor.callFromThread(self.forward, signal.SIGHUP)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, hup)

    def _stopReactor(self) -> None:
        try:
            self.reactor.stop()
        except error.ReactorNotRunning:
            pass

    def forward(self, signum: int) -> None:
        """
        Send C{signum} to every running worker.
        """
        log.info("forwarding signal {signum} to {n} workers", signum=signum,
                 n=sum(1 for w in self.workers if w.running))
        for w in self.workers:
            w.signal(signum)

    def stopService(self) -> "defer.Deferred[Any]":
        """
        Drain: C{/healthz} turns 503, each worker gets C{SIGTERM}; those
        still running C{drainTimeout} + L{KILL_GRACE} seconds later are
        killed.  The admin site stops last.
        """
        self.draining = True
        self.stopping = True
        for w in self.workers:
            if w.restartCall is not None and w.restartCall.active():
                w.restartCall.cancel()
                w.restartCall = None
        waits = [w.exited for w in self.workers if w.running]
        self.forward(signal.SIGTERM)
        killer = self.reactor.callLater(self.config.drainTimeout + KILL_GRACE, self._killRemaining)
        d = defer.gatherResults(waits, consumeErrors=True)

        def allExited(_: Any) -> Any:
            if killer.active():
                killer.cancel()
            shutil.rmtree(self.runDir, ignore_errors=True)
            return MultiService.stopService(self)

        d.addBoth(allExited)
        return d

    def _killRemaining(self) -> None:
        for w in self.workers:
            if w.running:
                log.warn("worker {n} (pid {pid}) did not exit in time: killing it", n=w.number, pid=w.pid)
                w.signal(signal.SIGKILL)

    # -- admin

    def fetchWorker(self, worker: _Worker, path: bytes, timeout: float = 2.0,
                    method: bytes = b"GET") -> "defer.Deferred[bytes]":
        """
        GET (or C{method}) C{path} from C{worker}'s private admin socket
        (HTTP/1.0: the response ends when the connection closes).

        @return: a Deferred firing with the body of a 200 response.
        """
        from twisted.internet.endpoints import UNIXClientEndpoint

        proto = _Fetch(path, method)
        connecting = UNIXClientEndpoint(self.reactor, worker.adminPath, timeout=timeout).connect(_FetchFactory(proto))

        def cancel(d: "defer.Deferred[bytes]") -> None:
            connecting.cancel()
            if proto.transport is not None:
                cast(ITCPTransport, proto.transport).abortConnection()

        result: "defer.Deferred[bytes]" = defer.Deferred(cancel)

        def failed(f: Failure) -> None:
            if not result.called:
                result.errback(f)

        connecting.addErrback(failed)
        proto.done = result
        result.addTimeout(timeout, self.reactor)
        return result

    def _fromWorkers(self, path: bytes, method: bytes = b"GET") -> "defer.Deferred[Dict[int, Optional[bytes]]]":
        running = [w for w in self.workers if w.running]

        def one(w: _Worker) -> "defer.Deferred[Optional[bytes]]":
            def unreachable(f: Failure) -> None:
                log.debug("admin: worker {n}: {e}", n=w.number, e=f.getErrorMessage())
                return None

            return self.fetchWorker(w, path, method=method).addErrback(unreachable)

        def byNumber(bodies: List[Optional[bytes]]) -> Dict[int, Optional[bytes]]:
            return {w.number: body for w, body in zip(running, bodies)}

        return defer.gatherResults([one(w) for w in running]).addCallback(byNumber)

    def metricsText(self) -> "defer.Deferred[bytes]":
        from prometheus_client.exposition import generate_latest

        own = generate_latest(self.registry).decode("utf-8")

        def merge(bodies: Dict[int, Optional[bytes]]) -> bytes:
            texts = {"supervisor": own}
            for number, body in sorted(bodies.items()):
                if body is not None:
                    texts[str(number)] = body.decode("utf-8", "replace")
            return mergeExpositions(texts)

        return self._fromWorkers(b"/metrics").addCallback(merge)

    def purgeCache(self, url: str) -> "defer.Deferred[int]":
        """
        Purge C{url} from every worker's caches (each worker's own admin
        endpoint; the shared tier, if any, once per worker).

        @return: a Deferred firing with the sum of the workers' counts.
        @raise ValueError: for a URL that is not absolute http(s).
        @raise LookupError: when the listeners have no cache.
        """
        purgeKey(url)  # ValueError before asking anyone
        if not any(listener.cache is not None for listener in self.config.listeners):
            raise LookupError("no cache")
        path = b"/cache/purge?url=" + quote(url, safe="").encode("ascii")

        def total(bodies: Dict[int, Optional[bytes]]) -> int:
            return sum(int(b) for b in bodies.values() if b is not None and b.strip().isdigit())

        return self._fromWorkers(path, b"POST").addCallback(total)

    def statusData(self) -> "defer.Deferred[Dict[str, Any]]":
        import json

        now = self.reactor.seconds()

        def build(bodies: Dict[int, Optional[bytes]]) -> Dict[str, Any]:
            workers = []
            for w in self.workers:
                entry = w.status(now)
                body = bodies.get(w.number)
                if body is not None:
                    try:
                        entry["status"] = json.loads(body)
                    except ValueError:
                        pass
                workers.append(entry)
            return {
                "version": __version__,
                "pid": os.getpid(),
                "supervisor": True,
                "draining": self.draining,
                "time": time.time(),
                "startedAt": self.startedAt,
                "uptime": time.time() - self.startedAt,
                "admin": list(self.config.admin),
                "restartsTotal": self.restartsTotal,
                "workers": workers,
                "totals": workerTotals(workers),
            }

        return self._fromWorkers(b"/status?format=json").addCallback(build)


class _SupervisorCollector:
    def __init__(self, supervisor: WorkerSupervisor) -> None:
        self.supervisor = supervisor

    def describe(self) -> List[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        s = self.supervisor
        yield buildInfo()
        running = GaugeMetricFamily("txproxy_workers_running", "Worker processes running now.")
        running.add_metric([], sum(1 for w in s.workers if w.running))
        yield running
        configured = GaugeMetricFamily("txproxy_workers_configured", "Worker processes asked for (--workers).")
        configured.add_metric([], len(s.workers))
        yield configured
        restarts = CounterMetricFamily("txproxy_worker_restarts", "Workers restarted after exiting.",
                                       labels=["slot"])
        for w in s.workers:
            restarts.add_metric([str(w.number)], w.restarts)
        yield restarts
        draining = GaugeMetricFamily("txproxy_draining", "1 once a stop (drain) has begun.")
        draining.add_metric([], 1.0 if s.draining else 0.0)
        yield draining


class SupervisorAdminSource:
    """
    The admin pages' view of a L{WorkerSupervisor}.
    """

    def __init__(self, supervisor: WorkerSupervisor) -> None:
        self.supervisor = supervisor

    def isDraining(self) -> bool:
        return self.supervisor.draining

    def metricsText(self) -> "defer.Deferred[bytes]":
        return self.supervisor.metricsText()

    def statusData(self) -> "defer.Deferred[Dict[str, Any]]":
        return self.supervisor.statusData()

    def purgeCache(self, url: str) -> "defer.Deferred[int]":
        return self.supervisor.purgeCache(url)


# ---------------------------------------------------------------------------
# File descriptor limit


