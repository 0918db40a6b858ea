# -*- test-case-name: tests.test_integration_sni -*-
"""
Integration tests for C{--mode sni}: a real C{twistd -n txproxy} routing
C{openssl s_client -servername ...} connections to two local TLS servers by
name, without decrypting (the client verifies each server's own
certificate end to end).  Every wait is bounded.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import ssl
import subprocess
import time
from typing import Any, List, Optional

from twisted.trial.unittest import SynchronousTestCase

from tests.procs import TestCA, ThreadedServer, Twistd, freePort, recvAll


def _answering(tag: bytes) -> Any:
    def handler(conn: socket.socket) -> None:
        conn.settimeout(10)
        data = b""
        while not data.endswith(b"\n"):
            chunk = conn.recv(1024)
            if not chunk:
                return
            data += chunk
        conn.sendall(tag + b" " + data)
        try:
            conn.unwrap()  # type: ignore[attr-defined]  # close_notify, a clean TLS end
        except (OSError, ValueError):
            pass

    return handler


class _Shared:
    """
    One proxy and two TLS servers for the whole module (started on first
    use, stopped at exit).
    """

    ca: TestCA
    servers: List[ThreadedServer]
    proxy: Twistd


_shared: Optional[_Shared] = None


def _stop() -> None:
    if _shared is not None:
        _shared.proxy.stop()
        for server in _shared.servers:
            server.stop()


atexit.register(_stop)


def shared() -> _Shared:
    global _shared
    if _shared is None:
        state = _Shared()
        state.ca = TestCA()
        state.servers = []
        for tag, names in [(b"A", ["a.test"]), (b"B", ["b.test", "*.b.test"])]:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(state.ca.issue(names, f"{tag.decode()}.pem"))
            server = ThreadedServer(
                _answering(tag), wrap=lambda s, c=context: c.wrap_socket(s, server_side=True)
            )
            state.servers.append(server)
        port = freePort()
        a, b = state.servers
        state.proxy = Twistd(
            ["--mode", "sni", "--listen", f"tcp:{port}:interface=127.0.0.1",
             "--route", f"a.test=tcp://127.0.0.1:{a.port}",
             "--route", f"*.b.test=tcp://127.0.0.1:{b.port}",
             "--route", f"b.test=tcp://127.0.0.1:{b.port}",
             "--header-timeout", "2",
             "--access-log", "access.log", "--access-log-format", "json"],
            port,
        )
        _shared = state
        state.proxy.start()
    return _shared


class SNIModeTests(SynchronousTestCase):
    def setUp(self) -> None:
        state = shared()
        self.ca, self.servers, self.proxy = state.ca, state.servers, state.proxy

    def s_client(self, servername: Optional[str], verifyName: Optional[str] = None) -> subprocess.CompletedProcess:
        args = ["openssl", "s_client", "-connect", f"127.0.0.1:{self.proxy.port}", "-CAfile", self.ca.caPath,
                "-verify_return_error", "-quiet"]
        if servername is not None:
            args += ["-servername", servername]
        else:
            args += ["-noservername"]
        if verifyName:
            args += ["-verify_hostname", verifyName]
        return subprocess.run(args, input=b"hello\n", capture_output=True, timeout=20)

    def records(self) -> List[dict]:
        path = os.path.join(self.proxy.cwd, "access.log")
        if not os.path.exists(path):
            return []
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def waitForRecord(self, target: str) -> dict:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for r in self.records():
                if r["target"] == target:
                    return r
            time.sleep(0.05)
        self.fail(f"no access record for {target}: {self.records()}")

    def test_routesByServerName(self) -> None:
        """
        C{openssl s_client -servername a.test} reaches server A and
        C{b.test} reaches server B; each verifies its server's own
        certificate for that name (the proxy did not decrypt).
        """
        for name, tag in [("a.test", b"A"), ("b.test", b"B")]:
            result = self.s_client(name, name)
            self.assertEqual(result.returncode, 0, result.stderr.decode())
            self.assertEqual(result.stdout, tag + b" hello\n")

    def test_wildcardRoute(self) -> None:
        """
        A name under C{*.b.test} goes to server B, whose wildcard certificate
        covers it.
        """
        result = self.s_client("x.b.test", "x.b.test")
        self.assertEqual(result.returncode, 0, result.stderr.decode())
        self.assertEqual(result.stdout, b"B hello\n")
        record = self.waitForRecord("x.b.test")
        self.assertEqual((record["mode"], record["status"]), ("sni", 200))

    def test_unknownNameClosed(self) -> None:
        """
        A name no route matches is closed before any server is reached,
        with a 404 record.
        """
        before = [s.accepted for s in self.servers]
        result = self.s_client("nobody.test")
        self.assertNotEqual(result.returncode, 0)
        self.assertEqual(result.stdout, b"")
        self.assertEqual([s.accepted for s in self.servers], before)
        self.assertEqual(self.waitForRecord("nobody.test")["status"], 404)

    def test_noSNIClosed(self) -> None:
        """
        A ClientHello without SNI is closed.
        """
        result = self.s_client(None)
        self.assertNotEqual(result.returncode, 0)
        self.assertEqual(result.stdout, b"")

    def test_garbageClosed(self) -> None:
        """
        A plain-text request is closed at once.
        """
        with socket.create_connection(("127.0.0.1", self.proxy.port), timeout=10) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
            self.assertEqual(recvAll(s), b"")

    def test_slowHelloClosed(self) -> None:
        """
        A client that sends half a hello and waits is closed after
        C{--header-timeout}.
        """
        with socket.create_connection(("127.0.0.1", self.proxy.port), timeout=10) as s:
            s.sendall(b"\x16\x03\x01\x02\x00\x01")
            started = time.monotonic()
            self.assertEqual(recvAll(s), b"")
            self.assertLess(time.monotonic() - started, 8)
