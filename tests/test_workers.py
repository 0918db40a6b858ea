# -*- test-case-name: tests.test_workers -*-
"""
Tests for L{txproxy.runtime.workers}: the supervisor's state machine on a fake
reactor and clock, SO_REUSEPORT endpoints, and merging of worker metrics.
"""

from __future__ import annotations

import os
import signal
from typing import Any, Dict, List

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import error
from twisted.internet.endpoints import (
    TCP4ServerEndpoint,
    TCP6ServerEndpoint,
    UNIXServerEndpoint,
)
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from txproxy.runtime import process
from txproxy.config import fromFlags
from txproxy.errors import ConfigError
from txproxy.runtime.workers import (
    ReusePortEndpoint,
    WorkerSupervisor,
    _pluginArgs,
    mergeExpositions,
    reusePort,
)


class FakeProcess:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.signals: List[Any] = []

    def signalProcess(self, sig: Any) -> None:
        self.signals.append(sig)


class FakeReactor(MemoryReactorClock):
    """
    A memory reactor that records spawned processes.
    """

    def __init__(self) -> None:
        super().__init__()
        self.spawned: List[Dict[str, Any]] = []
        self.nextPid = 1000

    def spawnProcess(self, protocol: Any, executable: str, args: Any, env: Any = None, path: Any = None,
                     uid: Any = None, gid: Any = None, usePTY: Any = 0, childFDs: Any = None) -> FakeProcess:
        self.nextPid += 1
        process = FakeProcess(self.nextPid)
        self.spawned.append({"protocol": protocol, "executable": executable, "args": args, "env": env,
                             "process": process, "childFDs": childFDs})
        return process


def exited(entry: Dict[str, Any], code: int = 0, sig: Any = None) -> None:
    """
    Tell the supervisor that the spawned process C{entry} ended.
    """
    reason = error.ProcessDone(0) if code == 0 and sig is None else error.ProcessTerminated(code, sig)
    entry["protocol"].processEnded(Failure(reason))


class SupervisorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = FakeReactor()
        config = fromFlags(["tcp:0:interface=127.0.0.1"], [("workers", "2"), ("drain-timeout", "5")])
        self.sup = WorkerSupervisor(config, self.reactor,
                                    argv=["/venv/bin/twistd", "-n", "--pidfile=", "txproxy", "--workers", "2"],
                                    executable="/venv/bin/python")
        self.sup.installSignalHandlers = False
        self.addCleanup(self._cleanup)

    def _cleanup(self) -> None:
        import shutil

        shutil.rmtree(self.sup.runDir, ignore_errors=True)

    def test_startsNWorkersWithSameArguments(self) -> None:
        """
        Starting spawns one worker per C{--workers}, each re-running the
        same txproxy arguments through C{python -m twisted}, numbered by
        C{TXPROXY_WORKER_ID}, with a private admin socket.
        """
        self.sup.startService()
        self.assertEqual(len(self.reactor.spawned), 2)
        first = self.reactor.spawned[0]
        self.assertEqual(first["args"], ["/venv/bin/python", "-m", "twisted", "--log-format=text", "txproxy",
                                         "--workers", "2"])
        self.assertEqual([s["env"]["TXPROXY_WORKER_ID"] for s in self.reactor.spawned], ["1", "2"])
        self.assertTrue(first["env"]["TXPROXY_WORKER_ADMIN"].startswith("unix:" + self.sup.runDir))
        self.assertEqual(first["env"]["TXPROXY_SUPERVISOR_PID"], str(os.getpid()))

    def test_workersRunOnTheSupervisorsReactor(self) -> None:
        """
        Workers are started on the same kind of reactor as the supervisor
        (C{twistd --reactor poll} gives C{python -m twisted --reactor=poll}).
        """
        from twisted.internet.pollreactor import PollReactor

        sup = WorkerSupervisor(self.sup.config, self.reactor, argv=["twistd", "txproxy"], executable="py")
        self.addCleanup(lambda: __import__("shutil").rmtree(sup.runDir, ignore_errors=True))
        sup.reactor = PollReactor.__new__(PollReactor)
        self.assertEqual(sup.workerArgv(), ["py", "-m", "twisted", "--log-format=text", "--reactor=poll", "txproxy"])

    def test_deadWorkerRestartedWithBackoff(self) -> None:
        """
        A worker that exits while running is restarted after 0.25 s, then
        0.5 s if it dies again quickly; a worker that lived 10 s restarts
        after 0.25 s again.
        """
        self.sup.startService()
        exited(self.reactor.spawned[0], sig=9)
        self.assertEqual(len(self.reactor.spawned), 2)
        self.reactor.advance(0.25)
        self.assertEqual(len(self.reactor.spawned), 3)
        self.assertEqual(self.reactor.spawned[2]["env"]["TXPROXY_WORKER_ID"], "1")
        exited(self.reactor.spawned[2], code=1)
        self.reactor.advance(0.4)
        self.assertEqual(len(self.reactor.spawned), 3)
        self.reactor.advance(0.1)
        self.assertEqual(len(self.reactor.spawned), 4)
        self.reactor.advance(11)
        exited(self.reactor.spawned[3], code=1)
        self.reactor.advance(0.25)
        self.assertEqual(len(self.reactor.spawned), 5)
        self.assertEqual(self.sup.workers[0].restarts, 3)
        self.assertEqual(self.sup.restartsTotal, 3)

    def test_sighupForwarded(self) -> None:
        """
        L{WorkerSupervisor.forward} sends a signal to every running worker.
        """
        self.sup.startService()
        self.sup.forward(signal.SIGHUP)
        self.assertEqual([s["process"].signals for s in self.reactor.spawned], [[signal.SIGHUP], [signal.SIGHUP]])

    def test_stopDrainsWorkersThenFinishes(self) -> None:
        """
        Stopping marks the supervisor draining, sends SIGTERM to each worker,
        does not restart them as they exit, and finishes once all have.
        """
        self.sup.startService()
        d = self.sup.stopService()
        self.assertTrue(self.sup.draining)
        self.assertEqual([s["process"].signals for s in self.reactor.spawned], [[signal.SIGTERM], [signal.SIGTERM]])
        exited(self.reactor.spawned[0])
        self.assertNoResult(d)
        exited(self.reactor.spawned[1])
        self.successResultOf(d)
        self.reactor.advance(60)
        self.assertEqual(len(self.reactor.spawned), 2)
        self.assertFalse(os.path.exists(self.sup.runDir))

    def test_stuckWorkerKilledAfterDrainTimeout(self) -> None:
        """
        A worker still running C{drain-timeout} + 10 s after SIGTERM gets
        SIGKILL.
        """
        self.sup.startService()
        d = self.sup.stopService()
        exited(self.reactor.spawned[0])
        self.reactor.advance(14.9)
        self.assertEqual(self.reactor.spawned[1]["process"].signals, [signal.SIGTERM])
        self.reactor.advance(0.2)
        self.assertEqual(self.reactor.spawned[1]["process"].signals, [signal.SIGTERM, signal.SIGKILL])
        exited(self.reactor.spawned[1], sig=9)
        self.successResultOf(d)

    def test_pendingRestartCancelledByStop(self) -> None:
        """
        A restart scheduled when the stop begins does not happen.
        """
        self.sup.startService()
        exited(self.reactor.spawned[0], code=1)
        d = self.sup.stopService()
        exited(self.reactor.spawned[1])
        self.successResultOf(d)
        self.reactor.advance(5)
        self.assertEqual(len(self.reactor.spawned), 2)

    def test_unixListenerRefused(self) -> None:
        """
        A listener that cannot be shared between processes (C{unix:}) is a
        start-up error naming it.
        """
        config = fromFlags(["unix:/tmp/x.sock"], [("workers", "2")])
        e = self.assertRaises(ConfigError, WorkerSupervisor, config, self.reactor)
        self.assertIn("unix:/tmp/x.sock", str(e))


class PluginArgsTests(SynchronousTestCase):
    def test_afterSubcommand(self) -> None:
        """
        The worker's arguments are those after the C{txproxy} subcommand,
        whether started by twistd or C{python -m twisted}.
        """
        self.assertEqual(_pluginArgs(["twistd", "-n", "--pidfile=", "txproxy", "--listen", "tcp:1"]),
                         ["--listen", "tcp:1"])
        self.assertEqual(_pluginArgs(["__main__.py", "txproxy", "--workers", "2"]), ["--workers", "2"])


class ReusePortTests(SynchronousTestCase):
    def test_tcpEndpointsReplaced(self) -> None:
        """
        C{tcp:} and C{tcp6:} endpoints become L{ReusePortEndpoint}s with the
        same port, backlog and interface.
        """
        r = MemoryReactorClock()
        e = reusePort(TCP4ServerEndpoint(r, 3128, 100, "127.0.0.1"))
        self.assertIsInstance(e, ReusePortEndpoint)
        self.assertEqual((e.port, e.backlog, e.interface), (3128, 100, "127.0.0.1"))
        e6 = reusePort(TCP6ServerEndpoint(r, 3128))
        self.assertEqual(e6.interface, "::")

    def test_haproxyWrapperKept(self) -> None:
        """
        A C{haproxy:} listener keeps its wrapper around the shared socket.
        """
        from txproxy.runtime.service import serverEndpoint

        e = reusePort(serverEndpoint(MemoryReactorClock(), "haproxy:tcp:3128"))
        self.assertIsInstance(e._wrappedEndpoint, ReusePortEndpoint)

    def test_unixUnchanged(self) -> None:
        """
        Other endpoints are returned as they are.
        """
        e = UNIXServerEndpoint(MemoryReactorClock(), "/tmp/x.sock")
        self.assertIs(reusePort(e), e)

    def test_twoListenersShareAPort(self) -> None:
        """
        Two L{ReusePortEndpoint}s listen on one port at once; the socket
        handed to the reactor is a listening socket bound there.
        """
        import socket

        adopted: List[Any] = []

        class R:
            def adoptStreamPort(self, fd: int, family: Any, factory: Any) -> Any:
                s = socket.socket(fileno=os.dup(fd))
                adopted.append(s)
                return s.getsockname()

        from tests.procs import freePort

        port = freePort()
        a = self.successResultOf(ReusePortEndpoint(R(), port, 5, "127.0.0.1").listen(object()))
        b = self.successResultOf(ReusePortEndpoint(R(), port, 5, "127.0.0.1").listen(object()))
        self.assertEqual(a, ("127.0.0.1", port))
        self.assertEqual(b, a)
        for s in adopted:
            self.assertEqual(s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN), 1)
            s.close()

    def test_portInUseIsCannotListen(self) -> None:
        """
        A port held by a socket without SO_REUSEPORT fails with
        L{CannotListenError}.
        """
        import socket

        holder = socket.socket()
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        self.addCleanup(holder.close)
        d = ReusePortEndpoint(object(), holder.getsockname()[1], 5, "127.0.0.1").listen(object())
        self.failureResultOf(d, error.CannotListenError)


class MergeTests(SynchronousTestCase):
    def test_mergeLabelsEachWorker(self) -> None:
        """
        Families from several workers are merged under one HELP/TYPE, each
        sample labelled with its worker unless it has one; the result parses.
        """
        one = ('# HELP a_total A.\n# TYPE a_total counter\na_total{worker="1"} 3.0\n'
               '# HELP process_open_fds fds\n# TYPE process_open_fds gauge\nprocess_open_fds 7.0\n')
        two = ('# HELP a_total A.\n# TYPE a_total counter\na_total{worker="2"} 4.0\n'
               '# HELP process_open_fds fds\n# TYPE process_open_fds gauge\nprocess_open_fds 9.0\n')
        text = mergeExpositions({"1": one, "2": two}).decode()
        self.assertEqual(text.count("# TYPE a_total counter"), 1)
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        self.assertEqual(sorted((s.labels["worker"], s.value) for s in fams["a"].samples), [("1", 3.0), ("2", 4.0)])
        self.assertEqual(sorted((s.labels["worker"], s.value) for s in fams["process_open_fds"].samples),
                         [("1", 7.0), ("2", 9.0)])

    def test_unparsableSkipped(self) -> None:
        """
        A worker text that does not parse is left out.
        """
        text = mergeExpositions({"1": "a_total{ 1\n", "2": "b 2.0\n"}).decode()
        self.assertIn('b{worker="2"} 2.0', text)


class FdLimitTests(SynchronousTestCase):
    def test_cappedEnough(self) -> None:
        """
        No warning when the limit covers two descriptors per capped
        connection plus a reserve.
        """
        config = fromFlags(["tcp:0"], [("max-conns", "1000")])
        self.assertIsNone(process.fdLimitWarning(config, 2064))

    def test_cappedTooLow(self) -> None:
        """
        A limit below twice C{--max-conns} is warned about, naming both.
        """
        config = fromFlags(["tcp:0"], [("max-conns", "10000")])
        message = process.fdLimitWarning(config, 1024)
        self.assertIn("1024", message)
        self.assertIn("--max-conns 10000", message)

    def test_uncappedLow(self) -> None:
        """
        Without C{--max-conns}, a limit below 4096 is warned about.
        """
        config = fromFlags(["tcp:0"], [])
        self.assertIn("no --max-conns", process.fdLimitWarning(config, 1024))
        self.assertIsNone(process.fdLimitWarning(config, 65536))

    def test_unlimited(self) -> None:
        """
        An unlimited limit (RLIM_INFINITY, -1) is never warned about.
        """
        self.assertIsNone(process.fdLimitWarning(fromFlags(["tcp:0"], []), -1))
