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
import socket
import sys
import tempfile
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, cast

from twisted.application.service import MultiService
from twisted.internet import defer, error
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from txproxy.tuning import withPyPyNursery

__all__ = [
    "WorkerSupervisor",
    "ReusePortEndpoint",
    "reusePortIfWorker",
    "workerId",
    "workerAdminEndpoint",
    "mergeExpositions",
]

log = Logger()

#: Environment variables the supervisor sets for each worker it starts.
WORKER_ID_ENV = "TXPROXY_WORKER_ID"
WORKER_ADMIN_ENV = "TXPROXY_WORKER_ADMIN"
SUPERVISOR_PID_ENV = "TXPROXY_SUPERVISOR_PID"

#: Restart delays: first, maximum, and how long a worker must live for the
#: delay to start again from the first.
RESTART_DELAY = 0.25
RESTART_DELAY_MAX = 30.0
STABLE_AFTER = 10.0

#: Seconds past the drain timeout before a worker that has not exited is
#: killed.
KILL_GRACE = 10.0


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
        from twisted.logger import ILogObserver, globalLogPublisher

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


# ---------------------------------------------------------------------------
# SO_REUSEPORT listening


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


# ---------------------------------------------------------------------------
# Metrics merging


def mergeExpositions(texts: Dict[str, str]) -> bytes:
    """
    Merge Prometheus text expositions, one per worker name, into one: the
    samples of a metric family from every worker are listed together under
    one C{HELP}/C{TYPE}, each sample labelled C{worker=NAME} unless it
    already has a C{worker} label.  A text that does not parse is skipped
    (and logged).
    """
    from prometheus_client.exposition import generate_latest
    from prometheus_client.parser import text_string_to_metric_families
    from prometheus_client.samples import Sample

    families: Dict[str, Any] = {}
    order: List[str] = []
    for worker, text in texts.items():
        try:
            parsed = list(text_string_to_metric_families(text))
        except Exception as e:
            log.warn("metrics from worker {worker} do not parse: {error}", worker=worker, error=str(e))
            continue
        for family in parsed:
            merged = families.get(family.name)
            if merged is None:
                from prometheus_client.metrics_core import Metric

                merged = families[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
                order.append(family.name)
            for s in family.samples:
                labels = s.labels if "worker" in s.labels else dict(s.labels, worker=worker)
                merged.samples.append(Sample(s.name, labels, s.value, s.timestamp, s.exemplar))

    class _Merged:
        def collect(self) -> Iterator[Any]:
            for name in order:
                yield families[name]

    return generate_latest(_Merged())


# ---------------------------------------------------------------------------
# The supervisor


class _Fetch(Protocol):
    """
    One HTTP/1.0 GET to a worker's admin socket.
    """

    done: "Optional[defer.Deferred[bytes]]" = None

    def __init__(self, path: bytes) -> None:
        self.path = path
        self.chunks: List[bytes] = []

    def connectionMade(self) -> None:
        transport: Any = self.transport
        transport.write(b"GET " + self.path + b" HTTP/1.0\r\nHost: worker\r\n\r\n")

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
        self.packageRoot = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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
            from txproxy.admin import AdminService

            self.admin = AdminService(config.admin, SupervisorAdminSource(self), reactor)
            self.admin.setServiceParent(self)

    def _checkEndpoints(self) -> List[ReusePortEndpoint]:
        from txproxy.errors import ConfigError
        from txproxy.service import serverEndpoint

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
        from txproxy.service import StartupError

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
        from txproxy.service import StartupError

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

    def fetchWorker(self, worker: _Worker, path: bytes, timeout: float = 2.0) -> "defer.Deferred[bytes]":
        """
        GET C{path} from C{worker}'s private admin socket (HTTP/1.0: the
        response ends when the connection closes).

        @return: a Deferred firing with the body of a 200 response.
        """
        from twisted.internet.endpoints import UNIXClientEndpoint

        proto = _Fetch(path)
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

    def _fromWorkers(self, path: bytes) -> "defer.Deferred[Dict[int, Optional[bytes]]]":
        running = [w for w in self.workers if w.running]

        def one(w: _Worker) -> "defer.Deferred[Optional[bytes]]":
            def unreachable(f: Failure) -> None:
                log.debug("admin: worker {n}: {e}", n=w.number, e=f.getErrorMessage())
                return None

            return self.fetchWorker(w, path).addErrback(unreachable)

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
            from txproxy import __version__
            from txproxy.admin import workerTotals

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

        from txproxy.metrics import buildInfo

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


# ---------------------------------------------------------------------------
# File descriptor limit

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
