# -*- test-case-name: tests.test_integration_haproxy -*-
"""
Integration tests for the PROXY protocol, both directions, with a real
HAProxy (Debian's C{/usr/sbin/haproxy}) as the peer and a real C{twistd -n
txproxy}:

  - HAProxy C{send-proxy}/C{send-proxy-v2} toward a txproxy C{haproxy:}
    listener: txproxy's ACL and access log see the address the header
    carried (the client binds a distinct loopback source address, so it
    differs from HAProxy's own);
  - txproxy C{--proxy-protocol-send v1|v2} toward an HAProxy C{accept-proxy}
    frontend, which answers with the client address it saw.

Every process is stopped by its PID; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Any, List, Optional

from twisted.trial.unittest import SynchronousTestCase

from tests.procs import ThreadedServer, Twistd, echoHandler, freePort, recvAll, waitForPort

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"

CLIENT = "127.0.0.5"
OTHER_CLIENT = "127.0.0.6"


class HAProxy:
    """
    An C{haproxy -db} process with a given configuration.
    """

    def __init__(self, config: str, port: int) -> None:
        self.dir = tempfile.mkdtemp(prefix="txproxy-haproxy-")
        self.path = os.path.join(self.dir, "haproxy.cfg")
        with open(self.path, "w") as f:
            f.write(config)
        self.port = port
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> "HAProxy":
        if not os.path.exists(HAPROXY):
            raise RuntimeError("haproxy not found (apt-get install haproxy)")
        self.proc = subprocess.Popen(
            [HAPROXY, "-db", "-f", self.path],
            stdout=open(os.path.join(self.dir, "out.log"), "wb"),
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        waitForPort(self.port, proc=self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


_GLOBAL = """\
global
  nbthread 1
defaults
  timeout connect 5s
  timeout client 10s
  timeout server 10s
"""


def connectFrom(source: str, port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(10)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    return s


def records(proxy: Twistd) -> List[dict]:
    path = os.path.join(proxy.cwd, "access.log")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def waitForRecords(proxy: Twistd, predicate: Any, timeout: float = 10.0) -> List[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [r for r in records(proxy) if predicate(r)]
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"no matching access record in {records(proxy)}")


class AcceptFromHAProxyTests(SynchronousTestCase):
    """
    HAProxy in front of txproxy, sending the PROXY header.
    """

    def setUp(self) -> None:
        self.echo = ThreadedServer(echoHandler)
        self.addCleanup(self.echo.stop)

    def chain(self, version: str, *txproxyArgs: str) -> int:
        txPort = freePort()
        proxy = Twistd(
            ["--listen", f"haproxy:tcp:{txPort}:interface=127.0.0.1",
             "--access-log", "access.log", "--access-log-format", "json", *txproxyArgs],
            txPort,
        ).start()
        self.addCleanup(proxy.stop)
        self.proxy = proxy
        haPort = freePort()
        send = {"v1": "send-proxy", "v2": "send-proxy-v2"}[version]
        haproxy = HAProxy(
            _GLOBAL
            + f"""\
frontend front
  mode tcp
  bind 127.0.0.1:{haPort}
  default_backend txproxy
backend txproxy
  mode tcp
  server tx 127.0.0.1:{txPort} {send}
""",
            haPort,
        ).start()
        self.addCleanup(haproxy.stop)
        return haPort

    def roundTrip(self, port: int, source: str, message: bytes) -> bytes:
        with connectFrom(source, port) as s:
            s.sendall(message)
            s.shutdown(socket.SHUT_WR)
            try:
                return recvAll(s)
            except ConnectionResetError:
                return b""

    def check(self, version: str) -> None:
        port = self.chain(
            version, "--mode", "tcp", "--upstream", f"tcp:127.0.0.1:{self.echo.port}",
            "--allow", f"{CLIENT}/32",
        )
        self.assertEqual(self.roundTrip(port, CLIENT, b"through haproxy and txproxy"), b"through haproxy and txproxy")
        (record,) = waitForRecords(self.proxy, lambda r: r["status"] == 200)
        self.assertEqual(record["client"], CLIENT)
        self.assertEqual(record["bytesUp"], len(b"through haproxy and txproxy"))
        accepted = self.echo.accepted
        self.assertEqual(self.roundTrip(port, OTHER_CLIENT, b"denied"), b"")
        # (The start-up probe of HAProxy's port came from 127.0.0.1, so it
        # was denied too.)
        denied = {r["client"] for r in waitForRecords(self.proxy, lambda r: r["status"] == 403)}
        self.assertIn(OTHER_CLIENT, denied)
        self.assertNotIn(CLIENT, denied)
        self.assertEqual(self.echo.accepted, accepted)

    def test_sendProxyV1(self) -> None:
        """
        Behind HAProxy's C{send-proxy}, txproxy's ACL and access log see the
        client's own address (not HAProxy's), and relaying works.
        """
        self.check("v1")

    def test_sendProxyV2(self) -> None:
        """
        The same with C{send-proxy-v2}.
        """
        self.check("v2")

    def test_sniModeBehindHAProxy(self) -> None:
        """
        An sni-mode listener behind C{send-proxy-v2} logs the carried client
        address for a connection it routes (here: refuses, no route).
        """
        port = self.chain("v2", "--mode", "sni", "--route", f"a.test=tcp://127.0.0.1:{self.echo.port}")
        from tests.test_clienthello import helloBody, helloRecord, sniExtension

        hello = helloRecord(helloBody([sniExtension(b"other.test")]))
        with connectFrom(CLIENT, port) as s:
            s.sendall(hello)
            try:
                recvAll(s)
            except ConnectionResetError:
                pass
        (record,) = waitForRecords(self.proxy, lambda r: r["target"] == "other.test")
        self.assertEqual((record["client"], record["status"]), (CLIENT, 404))


class SendToHAProxyTests(SynchronousTestCase):
    """
    txproxy in front of HAProxy, sending the PROXY header.
    """

    def check(self, version: str) -> None:
        haPort = freePort()
        haproxy = HAProxy(
            _GLOBAL
            + f"""\
frontend front
  mode http
  bind 127.0.0.1:{haPort} accept-proxy
  http-request return status 200 content-type text/plain lf-string "src=%[src] dst=%[dst]:%[dst_port]"
""",
            haPort,
        )
        # waitForPort's probe has no PROXY header: HAProxy just drops it.
        haproxy.start()
        self.addCleanup(haproxy.stop)
        txPort = freePort()
        proxy = Twistd(
            ["--mode", "tcp", "--listen", f"tcp:{txPort}:interface=127.0.0.1",
             "--upstream", f"tcp:127.0.0.1:{haPort}", "--proxy-protocol-send", version],
            txPort,
        ).start()
        self.addCleanup(proxy.stop)
        with connectFrom(CLIENT, txPort) as s:
            s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
            response = recvAll(s)
        self.assertTrue(response.startswith(b"HTTP/1.0 200") or response.startswith(b"HTTP/1.1 200"), response)
        self.assertIn(f"src={CLIENT} dst=127.0.0.1:{txPort}".encode(), response)

    def test_proxyProtocolSendV1(self) -> None:
        """
        HAProxy's C{accept-proxy} frontend sees, through
        C{--proxy-protocol-send v1}, the client's address and the address
        it connected to on txproxy.
        """
        self.check("v1")

    def test_proxyProtocolSendV2(self) -> None:
        """
        The same with C{--proxy-protocol-send v2}.
        """
        self.check("v2")


class HAProxyListenerGuardTests(SynchronousTestCase):
    """
    A real C{twistd} with a C{haproxy:} listener (no HAProxy needed: the
    test writes the headers): silent connections count toward
    C{--max-conns} and are closed after C{--header-timeout}; a header
    split across segments is read; a bad address closes with a log line.
    """

    def setUp(self) -> None:
        self.echo = ThreadedServer(echoHandler)
        self.addCleanup(self.echo.stop)
        txPort = freePort()
        self.proxy = Twistd(
            ["--mode", "tcp", "--listen", f"haproxy:tcp:{txPort}:interface=127.0.0.1",
             "--upstream", f"tcp:127.0.0.1:{self.echo.port}", "--header-timeout", "1.5", "--max-conns", "3"],
            txPort,
        ).start()
        self.addCleanup(self.proxy.stop)
        self.port = txPort

    def connect(self) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        self.addCleanup(s.close)
        return s

    def closedWithin(self, s: socket.socket, seconds: float) -> bool:
        s.settimeout(seconds)
        try:
            return s.recv(1) == b""
        except socket.timeout:
            return False
        except ConnectionResetError:
            return True

    def test_silentConnectionsCountedAndTimedOut(self) -> None:
        """
        Three silent connections fill C{--max-conns 3}: a fourth and fifth
        are closed at once, the three after C{--header-timeout}; then a
        header split in pieces (C{PROX} / C{Y TCP4 ...}) is relayed.
        """
        # (Let the start-up probe's connection close and free its slot.)
        time.sleep(0.5)
        silent = [self.connect() for _ in range(3)]
        silent[2].sendall(b"PROXY TCP4 19")  # partial
        time.sleep(0.3)
        started = time.monotonic()
        for _ in range(2):
            self.assertTrue(self.closedWithin(self.connect(), 1.0))
        self.assertLess(time.monotonic() - started, 1.4)
        for s in silent:
            self.assertTrue(self.closedWithin(s, 5.0))
        elapsed = time.monotonic() - started
        self.assertGreater(elapsed, 1.0)
        self.assertLess(elapsed, 5.0)
        s = self.connect()
        s.sendall(b"PROX")
        time.sleep(0.1)
        s.sendall(b"Y TCP4 198.51.100.7 127.0.0.1 5555 80\r")
        time.sleep(0.1)
        s.sendall(b"\nhello")
        s.shutdown(socket.SHUT_WR)
        self.assertEqual(recvAll(s), b"hello")
        self.proxy.stop()
        out = self.proxy.stdout() + self.proxy.stderr()
        self.assertEqual(out.count("no complete header within --header-timeout"), 3, out)
        self.assertNotIn("Traceback", out)

    def test_badAddressClosedAndLogged(self) -> None:
        """
        A header whose source is not an IP address is refused: closed, one
        log line naming it, nothing relayed upstream.
        """
        s = self.connect()
        s.sendall(b"PROXY TCP4 999.1.1.1 127.0.0.1 5555 80\r\nhello")
        self.assertTrue(self.closedWithin(s, 5.0))
        self.assertEqual(self.echo.accepted, 0)
        self.proxy.stop()
        out = self.proxy.stdout()
        self.assertEqual(out.count("bad PROXY header"), 1, out)
        self.assertIn("999.1.1.1", out)
