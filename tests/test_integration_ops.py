# -*- test-case-name: tests.test_integration_ops -*-
"""
Integration tests for operations: real C{twistd -n txproxy} processes, the
admin endpoint over real HTTP, drain on SIGTERM, and C{--workers}.
Every process is stopped by its PID; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
import urllib.error
import urllib.request
from typing import Any, Dict, List, Tuple

from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase

from tests.procs import ThreadedServer, Twistd, connectThrough, echoHandler, freePort, waitForPort


def fetch(port: int, path: str, accept: str = "*/*", timeout: float = 5.0) -> Tuple[int, Dict[str, str], bytes]:
    """
    GET C{path} from the admin endpoint on loopback C{port}.
    """
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Accept": accept})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def metricValues(text: str, name: str, **labels: str) -> List[float]:
    out = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                out.append(s.value)
    return out


def waitUntil(predicate: Any, timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class AdminIntegrationTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.echo = ThreadedServer(echoHandler)
        self.addCleanup(self.echo.stop)
        self.port, self.adminPort = freePort(), freePort()
        self.proxy = Twistd(
            ["--listen", f"tcp:{self.port}:interface=127.0.0.1", "--connect-ports", "*",
             "--admin", f"tcp:{self.adminPort}:interface=127.0.0.1", "--drain-timeout", "10"],
            self.port,
        ).start()
        self.addCleanup(self.proxy.stop)
        waitForPort(self.adminPort, proc=self.proxy.proc)

    def test_adminEndpointsOverHTTP(self) -> None:
        """
        A real proxy serves C{/healthz} (200), C{/metrics} (parsable, with a
        tunnel's connection and bytes counted while it is open) and
        C{/status} (JSON and HTML).
        """
        self.assertEqual(fetch(self.adminPort, "/healthz")[:3:2], (200, b"ok\n"))
        # waitForPort's probe was a connection too.
        before = metricValues(fetch(self.adminPort, "/metrics")[2].decode(), "txproxy_connections_total")[0]
        sock, status, _ = connectThrough(self.port, f"127.0.0.1:{self.echo.port}")
        self.assertEqual(status, 200)
        sock.sendall(b"x" * 1000)
        got = b""
        while len(got) < 1000:
            got += sock.recv(65536)
        status, headers, body = fetch(self.adminPort, "/metrics")
        self.assertEqual(status, 200)
        text = body.decode()
        self.assertEqual(metricValues(text, "txproxy_connections_total", mode="forward"), [before + 1])
        self.assertEqual(metricValues(text, "txproxy_active_connections"), [1.0])
        self.assertEqual(metricValues(text, "txproxy_bytes_total", direction="upstream"), [1000.0])
        self.assertEqual(metricValues(text, "txproxy_bytes_total", direction="downstream"), [1000.0])
        sock.close()
        text = waitUntil(lambda: (lambda t: t if metricValues(t, "txproxy_requests_total", code="200") == [1.0] else None)(
            fetch(self.adminPort, "/metrics")[2].decode()), what="the tunnel's request to be counted")
        self.assertEqual(metricValues(text, "txproxy_bytes_total", direction="upstream"), [1000.0])
        status, headers, body = fetch(self.adminPort, "/status", "application/json")
        data = json.loads(body)
        self.assertEqual(data["listeners"][0]["mode"], "forward")
        self.assertEqual(data["listeners"][0]["addresses"][0]["bound"], f"127.0.0.1:{self.port}")
        status, headers, body = fetch(self.adminPort, "/status", "text/html")
        self.assertTrue(headers["content-type"].startswith("text/html"))
        self.assertIn(b"txproxy status", body)

    def test_drainHealthz503ThenExit0(self) -> None:
        """
        On SIGTERM with a tunnel open: the proxy port refuses at once,
        C{/healthz} answers 503 while the tunnel finishes, and the process
        exits 0 once it has.
        """
        sock, status, _ = connectThrough(self.port, f"127.0.0.1:{self.echo.port}")
        self.assertEqual(status, 200)
        self.proxy.signal(signal.SIGTERM)
        waitUntil(lambda: fetch(self.adminPort, "/healthz")[0] == 503, what="/healthz 503")

        def refused() -> bool:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return False
            except OSError:
                return True

        waitUntil(refused, what="the proxy port to refuse")
        sock.sendall(b"still here")
        self.assertEqual(sock.recv(100), b"still here")
        self.assertEqual(fetch(self.adminPort, "/healthz")[0], 503)
        sock.shutdown(socket.SHUT_WR)
        sock.recv(100)
        sock.close()
        self.assertEqual(self.proxy.wait(15), 0)


def statusJSON(adminPort: int) -> Dict[str, Any]:
    return json.loads(fetch(adminPort, "/status", "application/json")[2])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is not alive for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _isTxproxy(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"txproxy" in f.read()
    except OSError:
        return False


class WorkersIntegrationTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.echo = ThreadedServer(echoHandler)
        self.addCleanup(self.echo.stop)
        self.port, self.adminPort = freePort(), freePort()
        self.proxy = Twistd(
            ["--listen", f"tcp:{self.port}:interface=127.0.0.1", "--connect-ports", "*", "--workers", "2",
             "--admin", f"tcp:{self.adminPort}:interface=127.0.0.1", "--drain-timeout", "5"],
        ).start()
        self.addCleanup(self._stop)
        waitForPort(self.adminPort, proc=self.proxy.proc, timeout=30)
        # Both workers up and listening (each reports its listener bound).
        waitUntil(lambda: self._listening() == 2, timeout=30, what="two workers listening")
        self.workerPids = [w["pid"] for w in statusJSON(self.adminPort)["workers"] if w["pid"]]

    def _listening(self) -> int:
        data = statusJSON(self.adminPort)
        return sum(1 for w in data["workers"] if w.get("status") and w["status"]["listeners"][0]["addresses"][0]["listening"])

    def _stop(self) -> None:
        pids = list(self.workerPids)
        if self.proxy.proc.poll() is None:
            try:
                pids += [w["pid"] for w in statusJSON(self.adminPort)["workers"] if w["pid"]]
            except (OSError, ValueError):
                pass
        self.proxy.stop()
        for pid in set(pids):
            if alive(pid) and _isTxproxy(pid):
                os.kill(pid, signal.SIGKILL)

    def tunnel(self) -> None:
        sock, status, _ = connectThrough(self.port, f"127.0.0.1:{self.echo.port}")
        self.assertEqual(status, 200)
        sock.sendall(b"ping")
        self.assertEqual(sock.recv(10), b"ping")
        sock.close()

    def test_workersShareThePortAndMetricsSayWhich(self) -> None:
        """
        With C{--workers 2} both workers accept on the one port, and the
        supervisor's C{/metrics} counts each worker's connections under its
        C{worker} label.
        """
        for _ in range(40):
            self.tunnel()

        def perWorker() -> Any:
            text = fetch(self.adminPort, "/metrics")[2].decode()
            counts = {}
            for family in text_string_to_metric_families(text):
                for s in family.samples:
                    if s.name == "txproxy_requests_total" and s.labels.get("code") == "200":
                        counts[s.labels["worker"]] = counts.get(s.labels["worker"], 0) + s.value
            return counts if sum(counts.values()) == 40 else None

        counts = waitUntil(perWorker, what="40 requests counted")
        self.assertEqual(sorted(counts), ["1", "2"])
        self.assertTrue(all(v > 0 for v in counts.values()), counts)

    def test_workerLogLinesAndTotals(self) -> None:
        """
        Each worker's log lines carry its number (C{[worker N ...]}), and
        the supervisor's C{/status} carries txproxy's version and totals
        across the workers.
        """
        import txproxy

        for _ in range(4):
            self.tunnel()
        out = self.proxy.stdout()
        for n in (1, 2):
            self.assertRegex(out, rf"\[worker {n} txproxy\.service#info\] txproxy forward listening on tcp:")
        data = waitUntil(lambda: (lambda d: d if d["totals"]["requestsTotal"] == 4 else None)(statusJSON(self.adminPort)),
                         what="4 requests in the totals")
        self.assertEqual((data["version"], data["totals"]["workersReporting"]), (txproxy.__version__, 2))
        self.assertIn(b"Totals across workers", fetch(self.adminPort, "/status")[2])

    def test_killedWorkerIsRestarted(self) -> None:
        """
        A worker killed by its PID is replaced by a new process in its slot,
        and the proxy keeps serving.
        """
        before = statusJSON(self.adminPort)["workers"]
        victim = before[0]["pid"]
        os.kill(victim, signal.SIGKILL)

        def replaced() -> Any:
            w = statusJSON(self.adminPort)["workers"][0]
            return w if w["running"] and w["pid"] not in (None, victim) else None

        w = waitUntil(replaced, timeout=20, what="the worker to be restarted")
        self.assertEqual(w["restarts"], 1)
        self.assertEqual(w["lastExit"], "signal 9")
        waitUntil(lambda: self._listening() == 2, timeout=30, what="the new worker to listen")
        for _ in range(5):
            self.tunnel()

    def test_workersDieWithKilledSupervisor(self) -> None:
        """
        Workers do not outlive a supervisor killed with SIGKILL: each gets
        SIGTERM from the kernel (PR_SET_PDEATHSIG), drains and exits.
        """
        pids = [w["pid"] for w in statusJSON(self.adminPort)["workers"]]
        self.proxy.signal(signal.SIGKILL)
        self.proxy.wait(5)
        waitUntil(lambda: not any(alive(p) for p in pids), timeout=15, what="the workers to exit")

    def test_sigtermExits0AndStopsWorkers(self) -> None:
        """
        SIGTERM to the supervisor stops every worker and exits 0.
        """
        pids = [w["pid"] for w in statusJSON(self.adminPort)["workers"]]
        self.proxy.signal(signal.SIGTERM)
        self.assertEqual(self.proxy.wait(20), 0)
        waitUntil(lambda: not any(alive(p) for p in pids), timeout=5, what="the workers to exit")


class StatusPageBrowserTests(SynchronousTestCase):
    """
    The C{/status} page, checked in a real browser (headless Chromium).
    Set C{TXPROXY_STATUS_SCREENSHOT=PATH} to keep the screenshot (the docs'
    picture is made this way).
    """

    def test_statusPageInChromium(self) -> None:
        """
        Headless Chromium renders C{/status} of a proxy with a forward and a
        tcp listener: the DOM lists both listeners, their modes, the tcp
        pool's backends, and the limiter; the screenshot is a real image.
        """
        import shutil
        import subprocess
        import tempfile

        exe = shutil.which("chromium") or shutil.which("chromium-browser")
        if exe is None:
            raise AssertionError("chromium is not installed (scripts/test installs it)")
        echo = ThreadedServer(echoHandler)
        self.addCleanup(echo.stop)
        fport, tport, aport, dead = freePort(), freePort(), freePort(), freePort()
        work = tempfile.mkdtemp(prefix="txproxy-status-")
        config = os.path.join(work, "txproxy.toml")
        with open(config, "w") as f:
            f.write(f"""
admin = "tcp:{aport}:interface=127.0.0.1"
drain_timeout = 5

[[listeners]]
name = "office"
listen = ["tcp:{fport}:interface=127.0.0.1"]
mode = "forward"
connect_ports = "*"
rate = "100/s"
max_conns = 1000

[[listeners]]
name = "ssh"
listen = ["tcp:{tport}:interface=127.0.0.1"]
mode = "tcp"
upstreams = ["tcp:127.0.0.1:{echo.port}", "tcp:127.0.0.1:{dead}"]
balance = "leastconn"
""")
        proxy = Twistd(["--config", config], fport).start()
        self.addCleanup(proxy.stop)
        waitForPort(aport, proc=proxy.proc)
        sock, status, _ = connectThrough(fport, f"127.0.0.1:{echo.port}")
        self.addCleanup(sock.close)
        self.assertEqual(status, 200)
        shot = os.environ.get("TXPROXY_STATUS_SCREENSHOT") or os.path.join(work, "status.png")
        base = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={os.path.join(work, 'profile')}", "--window-size=1200,900"]
        url = f"http://127.0.0.1:{aport}/status"
        dom = subprocess.run(base + ["--dump-dom", url], capture_output=True, timeout=120).stdout.decode()
        for text in ("txproxy status", "office", "forward", "ssh", "tcp", f"127.0.0.1:{echo.port}", "Limiter", "serving"):
            self.assertIn(text, dom)
        subprocess.run(base + [f"--screenshot={shot}", url], capture_output=True, timeout=120)
        with open(shot, "rb") as f:
            png = f.read()
        self.assertTrue(png.startswith(b"\x89PNG"))
        self.assertGreater(len(png), 10000)


EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


class OperationsExamplesTests(SynchronousTestCase):
    """
    The operations examples stay valid: one TOML file per mode, the systemd
    unit, the Grafana dashboard.
    """

    def test_configPerModeParses(self) -> None:
        """
        Each mode's example config loads with L{txproxy.config.loadFile},
        has the mode its name says, and binds the admin endpoint to loopback.
        """
        from txproxy.config import loadFile

        expected = {"tcp.toml": "tcp", "transparent.toml": "transparent", "reverse.toml": "reverse",
                    "sni.toml": "sni", "production.toml": "forward"}
        for name, mode in expected.items():
            config = loadFile(os.path.join(EXAMPLES, "config", name))
            self.assertEqual([listener.mode for listener in config.listeners], [mode], name)
            self.assertTrue(config.admin and all("interface=127.0.0.1" in a for a in config.admin), name)
        production = loadFile(os.path.join(EXAMPLES, "config", "production.toml"))
        self.assertEqual((production.workers, production.redis), (2, "redis://127.0.0.1:6379/0"))

    def test_systemdUnit(self) -> None:
        """
        The systemd unit runs twistd in the foreground with --config,
        reloads with SIGHUP, stops with SIGTERM to the main process, and
        waits longer than the default drain timeout.
        """
        with open(os.path.join(EXAMPLES, "systemd", "txproxy.service")) as f:
            unit = f.read()
        settings = dict(line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#"))
        self.assertIn(" -n ", settings["ExecStart"])
        self.assertIn("txproxy --config", settings["ExecStart"])
        self.assertEqual(settings["ExecReload"], "/bin/kill -HUP $MAINPID")
        self.assertEqual((settings["KillMode"], settings["KillSignal"]), ("mixed", "SIGTERM"))
        self.assertGreater(int(settings["TimeoutStopSec"]), 30)
        self.assertGreaterEqual(int(settings["LimitNOFILE"]), 65536)

    def test_dashboardUsesRealSeries(self) -> None:
        """
        Every txproxy series the Grafana dashboard queries is one txproxy
        exports (a single process's or the supervisor's).
        """
        import re

        from txproxy.metrics import Metrics

        with open(os.path.join(EXAMPLES, "grafana", "txproxy-dashboard.json")) as f:
            dashboard = json.load(f)
        exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", ())]
        used = {n for e in exprs for n in re.findall(r"\b((?:txproxy|process)_[a-z_]+)\b", e)}
        m = Metrics()
        m.addBackendSource(lambda: [{"listener": "l", "route": "r", "backend": "b", "healthy": True, "ejected": False,
                                     "activeConnections": 0, "totalConnections": 0, "totalFailures": 0}])
        m.setLimiterSource(lambda: type("L", (), {"decisions": {"allowed": 0}})())
        from txproxy.accesslog import AccessRecord
        from txproxy.testing import forwardFactory

        listener = forwardFactory().listener
        m.connectionOpened(listener)
        m.requestFinished(listener, AccessRecord(client="c", method="GET", target="t", status=200, start=0.0))
        m.upstreamConnected(listener, 0.1)
        m.responseHeadReceived(listener, 0.1)
        exported = {s.name for f in text_string_to_metric_families(m.exposition().decode()) for s in f.samples}
        exported |= {"txproxy_workers_running", "txproxy_workers_configured", "txproxy_worker_restarts_total"}
        self.assertEqual(used - exported, set())
        self.assertGreater(len(used), 15)


class WorkersReloadIntegrationTests(SynchronousTestCase):
    def test_sighupReachesEveryWorker(self) -> None:
        """
        SIGHUP to the supervisor is forwarded: every worker reloads its
        config file (counted in its C{txproxy_reloads_total}).
        """
        import tempfile

        port, adminPort = freePort(), freePort()
        work = tempfile.mkdtemp(prefix="txproxy-reload-")
        config = os.path.join(work, "txproxy.toml")
        with open(config, "w") as f:
            f.write(f'admin = "tcp:{adminPort}:interface=127.0.0.1"\nworkers = 2\ndrain_timeout = 5\n\n'
                    f'[[listeners]]\nname = "fwd"\nlisten = ["tcp:{port}:interface=127.0.0.1"]\nconnect_ports = "*"\n')
        proxy = Twistd(["--config", config]).start()
        self.addCleanup(proxy.stop)
        waitForPort(adminPort, proc=proxy.proc, timeout=30)

        def reloads() -> Dict[str, float]:
            text = fetch(adminPort, "/metrics")[2].decode()
            out = {}
            for family in text_string_to_metric_families(text):
                for s in family.samples:
                    if s.name == "txproxy_reloads_total" and s.labels.get("result") == "success":
                        out[s.labels["worker"]] = s.value
            return out

        waitUntil(lambda: len(reloads()) == 2, timeout=30, what="both workers' metrics")
        proxy.signal(signal.SIGHUP)
        waitUntil(lambda: reloads() == {"1": 1.0, "2": 1.0}, timeout=15, what="both workers to reload")


def _keepAliveOrigin(conn: socket.socket) -> None:
    """
    An HTTP/1.1 origin: answers every request on the connection with 1000
    bytes, until the client closes.
    """
    buf = b""
    while True:
        while b"\r\n\r\n" not in buf:
            data = conn.recv(65536)
            if not data:
                return
            buf += data
        _, _, buf = buf.partition(b"\r\n\r\n")
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nContent-Type: text/plain\r\n\r\n" + b"k" * 1000)


def _slowSource(conn: socket.socket) -> None:
    """
    Sends 2 MiB in 64 KiB chunks over about 3 seconds, then closes.
    """
    for _ in range(32):
        conn.sendall(b"d" * 65536)
        time.sleep(0.1)


class ReloadUnderLoadTests(SynchronousTestCase):
    def test_tenReloadsDuringLoadDropNothing(self) -> None:
        """
        Ten SIGHUP reloads (each with a changed file) while keep-alive
        clients make requests and long downloads run through CONNECT
        tunnels: every request gets its 200 and full body, every download
        all its bytes, and all ten reloads succeed.
        """
        import tempfile
        import threading

        origin = ThreadedServer(_keepAliveOrigin)
        self.addCleanup(origin.stop)
        source = ThreadedServer(_slowSource)
        self.addCleanup(source.stop)
        port, adminPort = freePort(), freePort()
        work = tempfile.mkdtemp(prefix="txproxy-reload-load-")
        config = os.path.join(work, "txproxy.toml")

        def writeConfig(n: int) -> None:
            with open(config + ".new", "w") as f:
                f.write(f'admin = "tcp:{adminPort}:interface=127.0.0.1"\ndrain_timeout = 5\n\n'
                        f'[[listeners]]\nname = "fwd"\nlisten = ["tcp:{port}:interface=127.0.0.1"]\n'
                        f'connect_ports = "*"\nmax_conns = {1000 + n}\nidle_timeout = {300 + n}\n')
            os.replace(config + ".new", config)

        writeConfig(0)
        proxy = Twistd(["--config", config], port).start()
        self.addCleanup(proxy.stop)
        waitForPort(adminPort, proc=proxy.proc)
        stop = threading.Event()
        errors: List[str] = []
        counts = {"requests": 0, "downloads": 0}
        lock = threading.Lock()

        def keepAlive() -> None:
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=10)
                url = f"http://127.0.0.1:{origin.port}/x"
                while not stop.is_set():
                    s.sendall(f"GET {url} HTTP/1.1\r\nHost: 127.0.0.1:{origin.port}\r\n\r\n".encode())
                    buf = b""
                    while b"\r\n\r\n" not in buf:
                        data = s.recv(65536)
                        if not data:
                            raise OSError("connection closed by the proxy")
                        buf += data
                    head, _, body = buf.partition(b"\r\n\r\n")
                    if not head.startswith(b"HTTP/1.1 200"):
                        raise OSError(f"status {head[:30]!r}")
                    while len(body) < 1000:
                        data = s.recv(65536)
                        if not data:
                            raise OSError("body cut short")
                        body += data
                    if body != b"k" * 1000:
                        raise OSError("wrong body")
                    with lock:
                        counts["requests"] += 1
                s.close()
            except Exception as e:
                errors.append(f"keep-alive: {e}")

        def download() -> None:
            try:
                s, status, rest = connectThrough(port, f"127.0.0.1:{source.port}")
                if status != 200:
                    raise OSError(f"CONNECT status {status}")
                got = len(rest)
                s.settimeout(10)
                while True:
                    data = s.recv(262144)
                    if not data:
                        break
                    got += len(data)
                s.close()
                if got != 32 * 65536:
                    raise OSError(f"downloaded {got} bytes")
                with lock:
                    counts["downloads"] += 1
            except Exception as e:
                errors.append(f"download: {e}")

        threads = [threading.Thread(target=keepAlive) for _ in range(4)]
        threads += [threading.Thread(target=download) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        for n in range(1, 11):
            writeConfig(n)
            proxy.signal(signal.SIGHUP)
            time.sleep(0.2)
        waitUntil(lambda: counts["downloads"] + sum(1 for e in errors if e.startswith("download")) == 3,
                  timeout=20, what="the downloads to finish")
        stop.set()
        for t in threads:
            t.join(15)
        self.assertEqual(errors, [])
        self.assertEqual(counts["downloads"], 3)
        self.assertGreater(counts["requests"], 20)
        text = fetch(adminPort, "/metrics")[2].decode()
        self.assertEqual(metricValues(text, "txproxy_reloads_total", result="success"), [10.0])
        self.assertEqual(metricValues(text, "txproxy_reloads_total", result="failure"), [0.0])
        self.assertEqual(statusJSON(adminPort)["listeners"][0]["limits"]["maxConns"], 1010)


class DrainTimeoutIntegrationTests(SynchronousTestCase):
    def test_idleClosedAtOnceTunnelClosedAtDeadline(self) -> None:
        """
        On SIGTERM an idle client connection is closed at once; a tunnel
        still open at C{--drain-timeout} is closed then, and the process
        exits 0 shortly after.
        """
        echo = ThreadedServer(echoHandler)
        self.addCleanup(echo.stop)
        port = freePort()
        proxy = Twistd(["--listen", f"tcp:{port}:interface=127.0.0.1", "--connect-ports", "*",
                        "--drain-timeout", "1.5"], port).start()
        self.addCleanup(proxy.stop)
        idle = socket.create_connection(("127.0.0.1", port), timeout=5)
        tunnel, status, _ = connectThrough(port, f"127.0.0.1:{echo.port}")
        self.assertEqual(status, 200)
        started = time.monotonic()
        proxy.signal(signal.SIGTERM)
        self.assertEqual(idle.recv(10), b"")
        idleClosed = time.monotonic() - started
        tunnel.settimeout(10)
        tunnel.sendall(b"during drain")
        self.assertEqual(tunnel.recv(100), b"during drain")
        try:
            self.assertEqual(tunnel.recv(100), b"")
        except ConnectionResetError:
            pass  # an abort at the deadline may reset
        tunnelClosed = time.monotonic() - started
        self.assertEqual(proxy.wait(10), 0)
        self.assertLess(idleClosed, 1.0)
        self.assertGreaterEqual(tunnelClosed, 1.4)
        self.assertLess(tunnelClosed, 5.0)
        idle.close()
        tunnel.close()
