# -*- test-case-name: tests.test_integration_forward -*-
"""
Integration tests: a real C{twistd -n txproxy} process in forward mode, real
loopback sockets, real TLS, real curl.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from typing import Any, Dict, List

from twisted.trial.unittest import SynchronousTestCase

import txproxy
from tests.procs import (
    TestCA,
    ThreadedServer,
    Twistd,
    connectThrough,
    echoHandler,
    freePort,
    readHead,
    recvAll,
    runTxproxy,
    waitForPort,
)

_shared: Dict[str, Any] = {}


def _stopShared() -> None:
    for key, value in list(_shared.items()):
        if isinstance(value, Twistd):
            value.stop()
        elif isinstance(value, ThreadedServer):
            value.stop()


atexit.register(_stopShared)


def sharedProxy() -> Twistd:
    """
    One forward proxy for the tests of this module that only need the
    defaults (plus any port allowed and a denied destination range).
    """
    if "proxy" not in _shared:
        port = freePort()
        _shared["proxy"] = Twistd(
            ["--listen", f"tcp:{port}:interface=127.0.0.1", "--connect-ports", "*",
             "--deny-dest", "127.0.0.2/32", "--header-timeout", "1", "--connect-timeout", "1",
             "--access-log", "access.log", "--access-log-format", "json"],
            port,
        ).start()
    return _shared["proxy"]


def sharedEcho() -> ThreadedServer:
    if "echo" not in _shared:
        _shared["echo"] = ThreadedServer(echoHandler)
    return _shared["echo"]


class TunnelTests(SynchronousTestCase):
    def test_runsOnEpoll(self) -> None:
        """
        The proxy logs that it runs on the epoll reactor, and whether its
        core is compiled: as the txproxy under test is (a twistd child
        imports the same build).
        """
        proxy = sharedProxy()
        deadline = time.monotonic() + 5
        while "txproxy running on" not in proxy.stdout() and time.monotonic() < deadline:
            time.sleep(0.05)
        build = "compiled (mypyc)" if txproxy.COMPILED else "pure Python"
        self.assertIn(f"txproxy running on twisted.internet.epollreactor.EPollReactor, core {build}", proxy.stdout())

    def test_curlThroughProxyToTLS(self) -> None:
        """
        curl reaches a local HTTPS server through the proxy (CONNECT), and
        verifies its certificate end to end.
        """
        proxy = sharedProxy()
        ca = TestCA()
        certPath = ca.issue(["localhost", "127.0.0.1"], "server.pem")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(certPath)

        def handler(conn: socket.socket) -> None:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                data += chunk
            body = b"hello over tls\n"
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))

        server = ThreadedServer(handler, wrap=lambda s: ctx.wrap_socket(s, server_side=True))
        self.addCleanup(server.stop)
        result = subprocess.run(
            ["curl", "-sS", "--max-time", "10", "--cacert", ca.caPath, "-x", f"http://127.0.0.1:{proxy.port}",
             f"https://localhost:{server.port}/"],
            capture_output=True,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout, b"hello over tls\n")

    def test_bulkChecksum(self) -> None:
        """
        64 MiB through one tunnel (echoed back) arrive intact.
        """
        proxy = sharedProxy()
        echo = sharedEcho()
        s, status, rest = connectThrough(proxy.port, f"127.0.0.1:{echo.port}")
        self.assertEqual(status, 200)
        total = 64 * 1024 * 1024
        block = os.urandom(1024 * 1024)
        sent = hashlib.sha256()

        def send() -> None:
            for i in range(total // len(block)):
                piece = block[i % 7 :] + block[: i % 7]
                sent.update(piece)
                s.sendall(piece)
            s.shutdown(socket.SHUT_WR)

        t = threading.Thread(target=send)
        t.start()
        received = hashlib.sha256(rest)
        count = len(rest)
        s.settimeout(60)
        while True:
            data = s.recv(1 << 20)
            if not data:
                break
            received.update(data)
            count += len(data)
        t.join()
        s.close()
        self.assertEqual(count, total)
        self.assertEqual(received.hexdigest(), sent.hexdigest())

    def test_concurrentTunnels(self) -> None:
        """
        200 tunnels open at once each carry their own bytes.
        """
        proxy = sharedProxy()
        echo = sharedEcho()
        socks: List[socket.socket] = []
        for i in range(200):
            s = socket.create_connection(("127.0.0.1", proxy.port), timeout=20)
            target = f"127.0.0.1:{echo.port}".encode()
            s.sendall(b"CONNECT " + target + b" HTTP/1.1\r\nHost: " + target + b"\r\n\r\n" + b"tunnel-%d;" % i)
            socks.append(s)
        for i, s in enumerate(socks):
            head, rest = readHead(s, 20)
            self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
            want = b"tunnel-%d;" % i
            while len(rest) < len(want):
                rest += s.recv(100)
            self.assertEqual(rest, want)
        for s in socks:
            s.close()

    def test_halfClose(self) -> None:
        """
        The client's FIN reaches the server, which can still answer; the
        answer and then the server's FIN reach the client.
        """
        proxy = sharedProxy()

        def handler(conn: socket.socket) -> None:
            data = recvAll(conn)
            conn.sendall(b"got " + str(len(data)).encode())
            conn.shutdown(socket.SHUT_WR)

        server = ThreadedServer(handler)
        self.addCleanup(server.stop)
        s, status, rest = connectThrough(proxy.port, f"127.0.0.1:{server.port}")
        self.assertEqual(status, 200)
        s.sendall(b"x" * 1000)
        s.shutdown(socket.SHUT_WR)
        self.assertEqual(rest + recvAll(s), b"got 1000")
        s.close()

    def test_serverSpeaksFirst(self) -> None:
        """
        A server that sends a banner before the client says anything is
        relayed.
        """
        proxy = sharedProxy()

        def handler(conn: socket.socket) -> None:
            conn.sendall(b"SSH-2.0-banner\r\n")
            recvAll(conn)

        server = ThreadedServer(handler)
        self.addCleanup(server.stop)
        s, status, rest = connectThrough(proxy.port, f"127.0.0.1:{server.port}")
        s.settimeout(5)
        while b"\r\n" not in rest:
            rest += s.recv(100)
        self.assertEqual(rest, b"SSH-2.0-banner\r\n")
        s.close()

    def test_accessLogJSON(self) -> None:
        """
        Each tunnel is one JSON line in the access log with its target,
        status and bytes.
        """
        import json

        proxy = sharedProxy()
        echo = sharedEcho()
        s, status, rest = connectThrough(proxy.port, f"127.0.0.1:{echo.port}")
        s.sendall(b"0123456789")
        got = rest
        while len(got) < 10:
            got += s.recv(100)
        s.close()
        path = os.path.join(proxy.cwd, "access.log")
        deadline = time.monotonic() + 5
        records: List[Any] = []
        while time.monotonic() < deadline:
            with open(path) as f:
                records = [json.loads(line) for line in f if line.strip()]
            if any(r["target"] == f"127.0.0.1:{echo.port}" and r["bytesUp"] == 10 for r in records):
                break
            time.sleep(0.05)
        match = [r for r in records if r["target"] == f"127.0.0.1:{echo.port}" and r["bytesUp"] == 10]
        self.assertTrue(match, records)
        self.assertEqual(match[0]["status"], 200)
        self.assertEqual(match[0]["bytesDown"], 10)


class ErrorStatusTests(SynchronousTestCase):
    def assertStatus(self, request: bytes, status: int, port: int = 0, readTimeout: float = 10) -> None:
        proxy = sharedProxy()
        s = socket.create_connection(("127.0.0.1", port or proxy.port), timeout=readTimeout)
        if request:
            s.sendall(request)
        head, _ = readHead(s, readTimeout)
        s.close()
        self.assertTrue(head.startswith(b"HTTP/1.1 %d " % status), head)
        self.assertIn(b"Connection: close", head)
        self.stillServing()

    def stillServing(self) -> None:
        echo = sharedEcho()
        s, status, rest = connectThrough(sharedProxy().port, f"127.0.0.1:{echo.port}")
        s.sendall(b"ping")
        while len(rest) < 4:
            rest += s.recv(10)
        s.close()
        self.assertEqual(rest, b"ping")

    def test_malformed(self) -> None:
        """
        A malformed request line is 400.
        """
        self.assertStatus(b"CONNECT nonsense\r\n\r\n", 400)
        self.assertStatus(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n", 400)

    def test_deniedDestination(self) -> None:
        """
        A destination in --deny-dest is 403.
        """
        self.assertStatus(b"CONNECT 127.0.0.2:443 HTTP/1.1\r\nHost: 127.0.0.2:443\r\n\r\n", 403)

    def test_refusedIs502(self) -> None:
        """
        A closed port is 502.
        """
        port = freePort()
        self.assertStatus(b"CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: x\r\n\r\n" % port, 502)

    def test_unresolvableIs502(self) -> None:
        """
        A name that does not resolve is 502.
        """
        self.assertStatus(b"CONNECT does-not-exist.invalid:443 HTTP/1.1\r\nHost: x\r\n\r\n", 502)

    def test_connectTimeoutIs504(self) -> None:
        """
        An upstream whose accept queue is full (SYNs dropped) is 504 after
        --connect-timeout.
        """
        blackhole = socket.socket()
        blackhole.bind(("127.0.0.1", 0))
        blackhole.listen(0)
        self.addCleanup(blackhole.close)
        port = blackhole.getsockname()[1]
        fillers = []
        for _ in range(4):
            f = socket.socket()
            f.setblocking(False)
            try:
                f.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            fillers.append(f)
        self.addCleanup(lambda: [f.close() for f in fillers])
        time.sleep(0.2)
        self.assertStatus(b"CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: x\r\n\r\n" % port, 504)

    def test_slowHeadIs408(self) -> None:
        """
        A head not finished within --header-timeout is 408, then closed.
        """
        self.assertStatus(b"CONNECT 127.0.0.1:443 HTTP/1.1\r\n", 408)

    def test_largeHeadIs431(self) -> None:
        """
        A head over 64 KiB is 431.
        """
        self.assertStatus(b"CONNECT 127.0.0.1:443 HTTP/1.1\r\nX: " + b"a" * 70000 + b"\r\n\r\n", 431)

    def test_noDescriptorLeak(self) -> None:
        """
        After a burst of bad requests and tunnels, the proxy holds no more
        descriptors than before.
        """
        proxy = sharedProxy()
        self.stillServing()
        time.sleep(0.3)
        before = proxy.fdCount()
        for _ in range(20):
            s = socket.create_connection(("127.0.0.1", proxy.port))
            s.sendall(b"BAD\r\n\r\n")
            readHead(s)
            s.close()
            self.stillServing()
        deadline = time.monotonic() + 5
        while proxy.fdCount() > before and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertLessEqual(proxy.fdCount(), before)


class PolicyProcessTests(SynchronousTestCase):
    def test_connectPortsAndAuth(self) -> None:
        """
        A proxy with --auth and the default --connect-ports: 407 without
        credentials, 403 for port 22 with them, 200 with curl's -U.
        """
        import base64

        echo = sharedEcho()
        fd, htpasswd = tempfile.mkstemp()
        os.write(fd, b"alice:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=\n")
        os.close(fd)
        self.addCleanup(os.remove, htpasswd)
        port = freePort()
        proxy = Twistd(["--listen", f"tcp:{port}:interface=127.0.0.1", "--auth", htpasswd,
                        "--connect-ports", f"443,{echo.port}"], port).start()
        self.addCleanup(proxy.stop)
        s, status, _ = connectThrough(port, f"127.0.0.1:{echo.port}")
        s.close()
        self.assertEqual(status, 407)
        auth = b"Proxy-Authorization: Basic " + base64.b64encode(b"alice:secret") + b"\r\n"
        s, status, _ = connectThrough(port, "127.0.0.1:22", auth)
        s.close()
        self.assertEqual(status, 403)
        s, status, _ = connectThrough(port, f"127.0.0.1:{echo.port}", auth)
        s.close()
        self.assertEqual(status, 200)

    def test_bcryptAuthOffTheEventLoopAndRateLimited(self) -> None:
        """
        With a costly bcrypt hash (cost 13): the right password opens a
        tunnel; six wrong passwords sent at once do not stall another
        client's request (it is answered well before the checks could have
        run one after another on the event loop); the wrong passwords cost
        --rate tokens, so once the bucket is empty they get 429 instead of
        407, and so does the right password.
        """
        import base64

        import bcrypt

        echo = sharedEcho()
        hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(13))
        started = time.monotonic()
        bcrypt.checkpw(b"pw", hashed)
        oneCheck = time.monotonic() - started
        fd, htpasswd = tempfile.mkstemp()
        os.write(fd, b"bob:" + hashed.replace(b"$2b$", b"$2y$") + b"\n")
        os.close(fd)
        self.addCleanup(os.remove, htpasswd)
        port = freePort()
        proxy = Twistd(["--listen", f"tcp:{port}:interface=127.0.0.1", "--auth", htpasswd,
                        "--connect-ports", str(echo.port), "--rate", "1/m", "--burst", "4",
                        "--connect-timeout", "30"], port).start()
        self.addCleanup(proxy.stop)
        target = f"127.0.0.1:{echo.port}"

        def auth(creds: bytes) -> bytes:
            return b"Proxy-Authorization: Basic " + base64.b64encode(creds) + b"\r\n"

        s, status, _ = connectThrough(port, target, auth(b"bob:pw"), timeout=30)
        s.close()
        self.assertEqual(status, 200)
        statuses: List[int] = []

        def guess(n: int) -> None:
            s, status, _ = connectThrough(port, target, auth(b"bob:guess%d" % n), timeout=60)
            s.close()
            statuses.append(status)

        threads = [threading.Thread(target=guess, args=(n,)) for n in range(6)]
        for t in threads:
            t.start()
        time.sleep(0.1)
        started = time.monotonic()
        s, status, _ = connectThrough(port, target, timeout=30)
        waited = time.monotonic() - started
        s.close()
        self.assertEqual(status, 407)
        self.assertLess(waited, max(1.0, 2 * oneCheck), f"one check takes {oneCheck:.2f} s")
        for t in threads:
            t.join(60)
        self.assertEqual(sorted(statuses), [407, 407, 407, 429, 429, 429])
        s, status, _ = connectThrough(port, target, auth(b"bob:pw"), timeout=30)
        s.close()
        self.assertEqual(status, 429)

    def test_allowList(self) -> None:
        """
        With --allow not covering loopback, clients get 403.
        """
        port = freePort()
        proxy = Twistd(["--listen", f"tcp:{port}:interface=127.0.0.1", "--allow", "10.0.0.0/8"], port).start()
        self.addCleanup(proxy.stop)
        s, status, _ = connectThrough(port, "127.0.0.1:443")
        s.close()
        self.assertEqual(status, 403)

    def test_sigtermDrainsAndExitsZero(self) -> None:
        """
        On SIGTERM the listening socket closes at once, an open tunnel keeps
        working until it ends, and the process exits 0.
        """
        echo = sharedEcho()
        port = freePort()
        proxy = Twistd(["--listen", f"tcp:{port}:interface=127.0.0.1", "--connect-ports", "*",
                        "--drain-timeout", "10"], port).start()
        self.addCleanup(proxy.stop)
        s, status, rest = connectThrough(port, f"127.0.0.1:{echo.port}")
        self.assertEqual(status, 200)
        proxy.signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        refused = False
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                time.sleep(0.05)
            except ConnectionRefusedError:
                refused = True
                break
        self.assertTrue(refused, "listening socket still open after SIGTERM")
        s.sendall(b"still here")
        got = rest
        while len(got) < 10:
            got += s.recv(100)
        self.assertEqual(got, b"still here")
        s.close()
        self.assertEqual(proxy.wait(15), 0)


class StartupErrorTests(SynchronousTestCase):
    def assertOneLineError(self, args: List[str], needle: str, code: int = 2) -> None:
        result = runTxproxy(args)
        self.assertEqual(result.returncode, code, result.stderr)
        lines = result.stderr.decode().strip().splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertIn(needle, lines[0])
        self.assertNotIn("Traceback", result.stdout.decode() + result.stderr.decode())

    def test_badOptions(self) -> None:
        """
        Bad options exit 2 with exactly one line on stderr.
        """
        self.assertOneLineError(["--mode", "nope"], "--mode: expected one of")
        self.assertOneLineError(["--rate", "fast"], "bad rate")
        self.assertOneLineError(["--listen", "tcp:notaport"], "bad --listen endpoint")
        self.assertOneLineError(["--listen", "ssl:0:privateKey=/nonexistent.pem"], "bad --listen endpoint")
        self.assertOneLineError(["--frobnicate"], "frobnicate")
        self.assertOneLineError(["--config", "/nonexistent.toml"], "cannot read config file")
        self.assertOneLineError(["--auth", "/nonexistent"], "cannot read auth file")

    def test_portInUse(self) -> None:
        """
        A port that cannot be bound exits 1 with one line naming it.
        """
        busy = socket.socket()
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        self.addCleanup(busy.close)
        port = busy.getsockname()[1]
        self.assertOneLineError(["--listen", f"tcp:{port}:interface=127.0.0.1"], f"cannot listen on tcp:{port}", 1)


class ListenerKindsTests(SynchronousTestCase):
    def test_unixAndTcp6Listeners(self) -> None:
        """
        One forward listener group on a UNIX socket and on tcp6 ::1: a
        CONNECT tunnel works through each.
        """
        echo = sharedEcho()
        sockPath = os.path.join(tempfile.mkdtemp(prefix="txproxy-unix-"), "proxy.sock")
        port6 = freePort("::1")
        proxy = Twistd(["--listen", f"unix:{sockPath}", "--listen", f"tcp6:{port6}:interface=\\:\\:1",
                        "--connect-ports", "*"]).start(wait=False)
        self.addCleanup(proxy.stop)
        waitForPort(port6, host="::1", proc=proxy.proc)
        for family, address in ((socket.AF_UNIX, sockPath), (socket.AF_INET6, ("::1", port6))):
            s = socket.socket(family, socket.SOCK_STREAM)
            s.settimeout(10)
            s.connect(address)
            target = f"127.0.0.1:{echo.port}".encode()
            s.sendall(b"CONNECT " + target + b" HTTP/1.1\r\nHost: " + target + b"\r\n\r\nvia-listener")
            head, rest = readHead(s)
            self.assertTrue(head.startswith(b"HTTP/1.1 200 "), (family, head))
            while len(rest) < len(b"via-listener"):
                rest += s.recv(100)
            self.assertEqual(rest, b"via-listener")
            s.close()
