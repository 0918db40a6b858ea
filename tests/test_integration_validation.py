# -*- test-case-name: tests.test_integration_validation -*-
"""
Integration tests for issue 13's input checks and safe defaults, each with
a real C{twistd -n txproxy} on loopback: C{--deny-dest} and the unspecified
address, start-up errors for values that would fail later (or reach the
wire), a reload to a bogus upstream, and the forward proxy's local-only
default.
"""

from __future__ import annotations

import os
import signal
import socket
import tempfile
import time
from typing import Any, Callable, List

from twisted.trial.unittest import SynchronousTestCase

from tests.procs import ThreadedServer, Twistd, echoHandler, freePort, readHead, runTxproxy


def _waitUntil(predicate: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _status(port: int, request: bytes, prefix: bytes = b"") -> int:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        s.sendall(prefix + request)
        head, _ = readHead(s)
    finally:
        s.close()
    return int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0


def _echoThrough(port: int, payload: bytes = b"ping") -> bytes:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        s.sendall(payload)
        got = b""
        while len(got) < len(payload):
            data = s.recv(100)
            if not data:
                break
            got += data
        return got
    finally:
        s.close()


class DenyDestUnspecifiedTests(SynchronousTestCase):
    def test_unspecifiedAddressesDoNotReachLoopback(self) -> None:
        """
        With --deny-dest 127.0.0.0/8 and ::1, CONNECT 0.0.0.0:P, 0:P,
        [::]:P, [::ffff:0.0.0.0]:P and GET http://0:P/ are all 403 and the
        loopback services behind them see no connection.
        """
        echo4 = ThreadedServer(echoHandler)
        self.addCleanup(echo4.stop)
        echo6 = ThreadedServer(echoHandler, host="::1")
        self.addCleanup(echo6.stop)
        port = freePort()
        proxy = Twistd(
            ["--listen", f"tcp:{port}:interface=127.0.0.1", "--connect-ports", "*",
             "--deny-dest", "127.0.0.0/8", "--deny-dest", "::1"],
            port,
        ).start()
        self.addCleanup(proxy.stop)
        p4, p6 = echo4.port, echo6.port
        requests = [
            b"CONNECT 0.0.0.0:%d HTTP/1.1\r\nHost: 0.0.0.0:%d\r\n\r\n" % (p4, p4),
            b"CONNECT 0:%d HTTP/1.1\r\nHost: 0:%d\r\n\r\n" % (p4, p4),
            b"CONNECT [::]:%d HTTP/1.1\r\nHost: [::]:%d\r\n\r\n" % (p6, p6),
            b"CONNECT [::ffff:0.0.0.0]:%d HTTP/1.1\r\nHost: [::ffff:0.0.0.0]:%d\r\n\r\n" % (p4, p4),
            b"GET http://0:%d/ HTTP/1.1\r\nHost: 0:%d\r\n\r\n" % (p4, p4),
            b"GET http://0.0.0.0:%d/ HTTP/1.1\r\nHost: 0.0.0.0:%d\r\n\r\n" % (p4, p4),
        ]
        for request in requests:
            self.assertEqual(_status(port, request), 403, request)
        self.assertEqual((echo4.accepted, echo6.accepted), (0, 0))


class StartupValidationTests(SynchronousTestCase):
    def assertOneLineError(self, args: List[str], needles: List[str]) -> None:
        result = runTxproxy(args)
        self.assertNotEqual(result.returncode, 0, result.stderr)
        lines = result.stderr.decode().strip().splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        for needle in needles:
            self.assertIn(needle, lines[0])
        self.assertNotIn("Traceback", result.stdout.decode() + result.stderr.decode())

    def writeConfig(self, text: str) -> str:
        fd, path = tempfile.mkstemp(suffix=".toml")
        os.write(fd, text.encode())
        os.close(fd)
        self.addCleanup(os.remove, path)
        return path

    def test_bogusUpstream(self) -> None:
        """
        --mode tcp --upstream bogus:xx does not start: one line naming it.
        """
        self.assertOneLineError(
            ["--listen", f"tcp:{freePort()}:interface=127.0.0.1", "--mode", "tcp", "--upstream", "bogus:xx"],
            ["bad --upstream endpoint 'bogus:xx'", "Unknown endpoint type"],
        )

    def test_denyDestWhereItMeansNothing(self) -> None:
        """
        --deny-dest in reverse (or tcp, sni) mode does not start.
        """
        self.assertOneLineError(
            ["--listen", f"tcp:{freePort()}:interface=127.0.0.1", "--mode", "reverse",
             "--route", "a.test=http://127.0.0.1:1", "--deny-dest", "127.0.0.0/8"],
            ["--deny-dest is only for modes forward and transparent", "mode is reverse"],
        )

    def test_headerInjectionInConfig(self) -> None:
        """
        A config file whose host_rewrite (or health check path) carries a
        CR LF does not start: one line naming the key.
        """
        port = freePort()
        base = (
            "[[listeners]]\n"
            f'listen = ["tcp:{port}:interface=127.0.0.1"]\n'
            'mode = "reverse"\n'
            "[[listeners.routes]]\n"
            'host = "a.test"\n'
            'upstreams = ["http://127.0.0.1:1"]\n'
        )
        path = self.writeConfig(base + 'host_rewrite = "a\\r\\nX-Injected: yes"\n')
        self.assertOneLineError(["--config", path], ["listeners[0].routes[0].host_rewrite", "not a Host value"])
        path = self.writeConfig(base + 'health_check = { type = "http", path = "/h HTTP/1.1\\r\\nX-Injected: yes" }\n')
        self.assertOneLineError(["--config", path], ["listeners[0].routes[0].health_check.path"])


class TCPReloadTests(SynchronousTestCase):
    def test_reloadToBogusUpstreamRejected(self) -> None:
        """
        A SIGHUP reload to upstreams = ["bogus:xx"] is rejected with one
        log line, and connections keep being relayed to the old upstream.
        """
        echo = ThreadedServer(echoHandler)
        self.addCleanup(echo.stop)
        port = freePort()
        work = tempfile.mkdtemp(prefix="txproxy-reload-")
        path = os.path.join(work, "proxy.toml")
        text = (
            "[[listeners]]\n"
            f'listen = ["tcp:{port}:interface=127.0.0.1"]\n'
            'mode = "tcp"\n'
            f'upstreams = ["tcp:127.0.0.1:{echo.port}"]\n'
        )
        with open(path, "w") as f:
            f.write(text)
        proxy = Twistd(["--config", path], port).start()
        self.addCleanup(proxy.stop)
        self.assertEqual(_echoThrough(port), b"ping")
        with open(path, "w") as f:
            f.write(text.replace(f"tcp:127.0.0.1:{echo.port}", "bogus:xx"))
        proxy.signal(signal.SIGHUP)
        _waitUntil(lambda: "reload rejected" in proxy.stdout(), what="the reload to be rejected")
        lines = [line for line in proxy.stdout().splitlines() if "reload rejected" in line]
        self.assertEqual(len(lines), 1)
        self.assertIn("bogus:xx", lines[0])
        self.assertEqual(_echoThrough(port, b"still"), b"still")


class LocalnetDefaultTests(SynchronousTestCase):
    def proxy(self, *extra: str) -> int:
        port = freePort()
        proxy = Twistd(["--listen", f"haproxy:tcp:{port}:interface=127.0.0.1", "--connect-ports", "*", *extra],
                       port).start()
        self.addCleanup(proxy.stop)
        self.proc = proxy
        return port

    def test_publicClientRefusedByDefault(self) -> None:
        """
        With no --allow, a client whose PROXY header carries a public
        address gets 403, one from a private network is served, and the
        start-up log says so once; --allow 0.0.0.0/0 serves the public one.
        """
        echo = ThreadedServer(echoHandler)
        self.addCleanup(echo.stop)
        connect = b"CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (echo.port, echo.port)
        port = self.proxy()

        def via(client: str) -> bytes:
            return f"PROXY TCP4 {client} 127.0.0.1 5555 {port}\r\n".encode()

        self.assertEqual(_status(port, connect, via("203.0.113.7")), 403)
        self.assertEqual(_status(port, connect, via("10.1.2.3")), 200)
        _waitUntil(lambda: "no --allow given" in self.proc.stdout(), what="the start-up line")
        self.assertEqual(self.proc.stdout().count("no --allow given"), 1)

        port = self.proxy("--allow", "0.0.0.0/0")
        self.assertEqual(_status(port, connect, via("203.0.113.7")), 200)
        self.assertNotIn("no --allow given", self.proc.stdout())
