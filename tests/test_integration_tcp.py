# -*- test-case-name: tests.test_integration_tcp -*-
"""
Integration tests for C{--mode tcp}: a real C{twistd -n txproxy} process, a
real C{redis-server} (used with C{redis-cli} and a raw RESP client), and
small loopback servers.  Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from typing import Any, List

from twisted.trial.unittest import SynchronousTestCase

from tests.procs import ThreadedServer, Twistd, echoHandler, freePort, recvAll
from tests.redisserver import RedisServer


def _waitFor(predicate: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def _accessLog(proxy: Twistd) -> List[dict]:
    """
    The proxy's JSON access records, without the one for the start-up
    probe (a connection that sent nothing, made before the test began).
    """
    path = os.path.join(proxy.cwd, "access.log")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return records[1:]


class TCPModeTestCase(SynchronousTestCase):
    def proxy(self, *args: str) -> Twistd:
        port = freePort()
        proxy = Twistd(
            ["--mode", "tcp", "--listen", f"tcp:{port}:interface=127.0.0.1",
             "--access-log", "access.log", "--access-log-format", "json", *args],
            port,
        ).start()
        self.addCleanup(proxy.stop)
        return proxy

    def server(self, handler: Any = echoHandler) -> ThreadedServer:
        server = ThreadedServer(handler)
        self.addCleanup(server.stop)
        return server


class RedisThroughTCPModeTests(TCPModeTestCase):
    def setUp(self) -> None:
        self.redis = RedisServer().start()
        self.addCleanup(self.redis.cleanup)
        self.addCleanup(self.redis.stop)

    def test_redisCli(self) -> None:
        """
        C{redis-cli} works through the relay: commands and replies, with
        binary-safe values; each connection gets an access log record.
        """
        proxy = self.proxy("--upstream", f"tcp:127.0.0.1:{self.redis.port}")

        def cli(*args: str) -> str:
            out = subprocess.run(
                ["redis-cli", "-h", "127.0.0.1", "-p", str(proxy.port), *args],
                capture_output=True, timeout=10, stdin=subprocess.DEVNULL,
            )
            self.assertEqual(out.returncode, 0, out.stderr)
            return out.stdout.decode().strip()

        self.assertEqual(cli("PING"), "PONG")
        self.assertEqual(cli("SET", "greeting", "hello through txproxy"), "OK")
        self.assertEqual(cli("GET", "greeting"), "hello through txproxy")
        self.assertEqual(self.redis.command("GET", "greeting"), "hello through txproxy")
        self.assertTrue(_waitFor(lambda: len(_accessLog(proxy)) == 3))
        record = _accessLog(proxy)[0]
        self.assertEqual((record["mode"], record["status"], record["client"]), ("tcp", 200, "127.0.0.1"))
        self.assertEqual(record["upstream"], f"127.0.0.1:{self.redis.port}")

    def test_pipelinedRESP(self) -> None:
        """
        A raw RESP client pipelining 1,000 commands in one write gets every
        reply, in order, and a large value survives the round trip.
        """
        proxy = self.proxy("--upstream", f"tcp:127.0.0.1:{self.redis.port}")
        big = os.urandom(1 << 20).hex().encode()
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
            s.sendall(b"*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n$%d\r\n%s\r\n" % (len(big), big))
            s.sendall(b"".join(b"*2\r\n$4\r\nINCR\r\n$1\r\nn\r\n" for _ in range(1000)))
            s.sendall(b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n")
            expected = b"+OK\r\n" + b"".join(b":%d\r\n" % i for i in range(1, 1001))
            expected += b"$%d\r\n%s\r\n" % (len(big), big)
            data = b""
            while len(data) < len(expected):
                chunk = s.recv(1 << 20)
                if not chunk:
                    break
                data += chunk
            self.assertEqual(data, expected)


class TCPRelayTests(TCPModeTestCase):
    def test_halfCloseBothWays(self) -> None:
        """
        Ten megabytes go through an echo server; the client's FIN reaches
        the server after the data, and the server's FIN comes back after the
        echo.
        """
        echo = self.server()
        proxy = self.proxy("--upstream", f"tcp:127.0.0.1:{echo.port}")
        payload = os.urandom(10 * 1024 * 1024)
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
            import threading

            def send() -> None:
                s.sendall(payload)
                s.shutdown(socket.SHUT_WR)

            t = threading.Thread(target=send)
            t.start()
            received = recvAll(s, 30)
            t.join(30)
        self.assertEqual(received, payload)

    def test_refusedMemberRetried(self) -> None:
        """
        With a dead first member, every connection still reaches the live
        one (retried once on the next member; after three failures the dead
        one is ejected).
        """
        echo = self.server()
        dead = freePort()
        proxy = self.proxy("--upstream", f"tcp:127.0.0.1:{dead}", "--upstream", f"tcp:127.0.0.1:{echo.port}")
        for i in range(6):
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
                s.sendall(b"ping %d" % i)
                s.shutdown(socket.SHUT_WR)
                self.assertEqual(recvAll(s), b"ping %d" % i)

    def test_allRefusedCloses(self) -> None:
        """
        When no member answers, the client is closed and the record says
        502.
        """
        proxy = self.proxy("--upstream", f"tcp:127.0.0.1:{freePort()}")
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
            self.assertEqual(recvAll(s), b"")
        self.assertTrue(_waitFor(lambda: _accessLog(proxy)))
        self.assertEqual(_accessLog(proxy)[0]["status"], 502)

    def test_idleTimeout(self) -> None:
        """
        A silent pair is closed (aborted) after C{--idle-timeout}.
        """
        echo = self.server()
        proxy = self.proxy("--upstream", f"tcp:127.0.0.1:{echo.port}", "--idle-timeout", "1")
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
            started = time.monotonic()
            try:
                self.assertEqual(recvAll(s, 10), b"")
            except ConnectionResetError:
                pass  # the relay aborts idle pairs (RST)
            self.assertLess(time.monotonic() - started, 5)
        self.assertTrue(_waitFor(lambda: _accessLog(proxy)))
        self.assertEqual(_accessLog(proxy)[0]["reason"], "idle")

    def test_deniedClientClosed(self) -> None:
        """
        C{--deny} closes a client without reaching the upstream.
        """
        echo = self.server()
        proxy = self.proxy("--upstream", f"tcp:127.0.0.1:{echo.port}", "--deny", "127.0.0.0/8")
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
            self.assertEqual(recvAll(s), b"")
        self.assertEqual(echo.accepted, 0)

    def test_serverSpeaksFirst(self) -> None:
        """
        A server that speaks first is relayed before the client says
        anything.
        """

        def banner(conn: socket.socket) -> None:
            conn.sendall(b"SSH-2.0-banner\r\n")
            conn.recv(10)

        server = self.server(banner)
        proxy = self.proxy("--upstream", f"tcp:127.0.0.1:{server.port}")
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
            self.assertEqual(s.recv(100), b"SSH-2.0-banner\r\n")
