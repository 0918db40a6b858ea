# -*- test-case-name: tests.test_integration_reverse -*-
"""
Integration tests of the reverse proxy: a real C{twistd -n txproxy --mode
reverse} in front of real backends: balancing, failover when a backend is
killed, a WebSocket echo, and a reload that adds a route while a long
download continues.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import os
import signal
import socket
import struct
import tempfile
import threading
import time
from typing import Any, List, Tuple

from twisted.trial.unittest import SynchronousTestCase

from tests.procs import ThreadedServer, Twistd, freePort, readHead


class _Named(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    name = b"?"

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if self.path.startswith("/big/"):
            size = int(self.path.split("/")[2])
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            block = b"y" * (1 << 16)
            left = size
            try:
                while left:
                    n = min(left, len(block))
                    self.wfile.write(block[:n])
                    left -= n
            except OSError:
                pass
            return
        body = self.name + b" " + self.path.encode() + b" xff=" + (self.headers.get("X-Forwarded-For") or "").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def backend(name: bytes) -> http.server.ThreadingHTTPServer:
    handler = type("Handler", (_Named,), {"name": name})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def get(port: int, host: str, path: str = "/", sock: Any = None) -> Tuple[int, bytes, Any]:
    s = sock or socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    head, rest = readHead(s)
    status = int(head.split(b" ", 2)[1]) if head else 0
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    while len(rest) < length:
        data = s.recv(65536)
        if not data:
            break
        rest += data
    return status, rest, s


_BACKEND_SCRIPT = """
import http.server, sys
name = sys.argv[1].encode()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_GET(self):
        body = name + b" " + self.path.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
s = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[2])), H)
s.serve_forever()
"""


class _ProcessBackend:
    """
    A backend in its own process, so that killing it kills its connections.
    """

    def __init__(self, name: bytes) -> None:
        import subprocess
        import sys

        from tests.procs import waitForPort

        self.port = freePort()
        self.proc = subprocess.Popen([sys.executable, "-c", _BACKEND_SCRIPT, name.decode(), str(self.port)])
        waitForPort(self.port, proc=self.proc)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _wsAccept(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())


def wsEchoHandler(conn: socket.socket) -> None:
    """
    A minimal WebSocket echo server: handshake, then echo each (small,
    masked) text frame back unmasked.
    """
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            return
        data += chunk
    key = [l.split(b":", 1)[1].strip() for l in data.split(b"\r\n") if l.lower().startswith(b"sec-websocket-key:")][0]
    conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Accept: " + _wsAccept(key) + b"\r\n\r\n")
    buf = data.split(b"\r\n\r\n", 1)[1]
    while True:
        while len(buf) < 6:
            chunk = conn.recv(4096)
            if not chunk:
                return
            buf += chunk
        length = buf[1] & 0x7F
        while len(buf) < 6 + length:
            buf += conn.recv(4096)
        mask, payload = buf[2:6], buf[6 : 6 + length]
        buf = buf[6 + length :]
        text = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        conn.sendall(bytes([0x81, len(text)]) + text)


def wsFrame(text: bytes) -> bytes:
    mask = os.urandom(4)
    return bytes([0x81, 0x80 | len(text)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(text))


class ReverseTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.backends = [backend(b"one"), backend(b"two")]
        for b in self.backends:
            self.addCleanup(b.server_close)
            self.addCleanup(b.shutdown)
        self.ws = ThreadedServer(wsEchoHandler)
        self.addCleanup(self.ws.stop)
        self.port = freePort()
        fd, self.configPath = tempfile.mkstemp(suffix=".toml")
        os.close(fd)
        self.addCleanup(os.remove, self.configPath)
        self.writeConfig()
        self.proxy = Twistd(["--config", self.configPath], self.port).start()
        self.addCleanup(self.proxy.stop)

    def writeConfig(self, extra: str = "") -> None:
        one, two = (b.server_port for b in self.backends)
        with open(self.configPath, "w") as f:
            f.write(f"""
[[listeners]]
name = "web"
mode = "reverse"
listen = ["tcp:{self.port}:interface=127.0.0.1"]
connect_timeout = 2
[[listeners.routes]]
host = "app.test"
upstreams = ["http://127.0.0.1:{one}", "http://127.0.0.1:{two}"]
eject_after = 1
eject_for = 30
[[listeners.routes]]
host = "ws.test"
upstreams = ["http://127.0.0.1:{self.ws.port}"]
[[listeners.routes]]
host = "big.test"
upstreams = ["http://127.0.0.1:{one}"]
{extra}
""")

    def test_balancesAndFailsOver(self) -> None:
        """
        Requests alternate between both backends; once one is killed (its
        process, so its open keep-alive connections die too), every request
        reaches the other (a failed connect is retried there), with no error
        seen by clients.
        """
        killable = _ProcessBackend(b"three")
        self.addCleanup(killable.kill)
        one = self.backends[0].server_port
        self.writeConfig()
        with open(self.configPath) as f:
            text = f.read()
        with open(self.configPath, "w") as f:
            f.write(text.replace(f'upstreams = ["http://127.0.0.1:{one}", "http://127.0.0.1:{self.backends[1].server_port}"]',
                                 f'upstreams = ["http://127.0.0.1:{one}", "http://127.0.0.1:{killable.port}"]'))
        self.proxy.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "reloaded configuration" not in self.proxy.stdout() and time.monotonic() < deadline:
            time.sleep(0.05)
        names = set()
        for i in range(6):
            status, body, s = get(self.port, "app.test", f"/r{i}")
            s.close()
            self.assertEqual(status, 200)
            names.add(body.split()[0])
        self.assertEqual(names, {b"one", b"three"})
        killable.kill()
        for i in range(6):
            status, body, s = get(self.port, "app.test", f"/after{i}")
            s.close()
            self.assertEqual(status, 200, body)
            self.assertTrue(body.startswith(b"one "), body)

    def test_forwardedForAndKeepAlive(self) -> None:
        """
        The backend sees X-Forwarded-For; several requests share one client
        connection.
        """
        status, body, s = get(self.port, "app.test", "/a")
        self.assertIn(b"xff=127.0.0.1", body)
        status2, body2, s = get(self.port, "app.test", "/b", sock=s)
        s.close()
        self.assertEqual((status, status2), (200, 200))

    def test_unknownHostIs404(self) -> None:
        """
        A Host without a route is 404.
        """
        status, body, s = get(self.port, "nope.test")
        s.close()
        self.assertEqual(status, 404)

    def test_websocketEcho(self) -> None:
        """
        A WebSocket upgrade through the proxy gets 101, then frames are
        echoed through the relay.
        """
        s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        key = base64.b64encode(os.urandom(16))
        s.sendall(b"GET /chat HTTP/1.1\r\nHost: ws.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
        head, rest = readHead(s)
        self.assertTrue(head.startswith(b"HTTP/1.1 101 "), head)
        self.assertIn(b"Sec-WebSocket-Accept: " + _wsAccept(key), head)
        for text in (b"hello", b"through txproxy"):
            s.sendall(wsFrame(text))
            while len(rest) < 2 + len(text):
                rest += s.recv(100)
            self.assertEqual(rest[: 2 + len(text)], bytes([0x81, len(text)]) + text)
            rest = rest[2 + len(text) :]
        s.close()

    def test_reloadAddsRouteDuringDownload(self) -> None:
        """
        SIGHUP with a new route: the new route serves at once, and a long
        download that was running completes intact.
        """
        size = 256 << 20
        s = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        s.sendall(f"GET /big/{size} HTTP/1.1\r\nHost: big.test\r\n\r\n".encode())
        head, got = readHead(s, 30)
        self.assertTrue(head.startswith(b"HTTP/1.1 200 "))
        received = len(got)
        status, body, c = get(self.port, "new.test")
        c.close()
        self.assertEqual(status, 404)
        one = self.backends[0].server_port
        self.writeConfig(f'[[listeners.routes]]\nhost = "new.test"\nupstreams = ["http://127.0.0.1:{one}"]\n')
        self.proxy.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        status = 0
        while time.monotonic() < deadline:
            received += len(s.recv(65536))
            status, body, c = get(self.port, "new.test")
            c.close()
            if status == 200:
                break
        self.assertEqual(status, 200)
        while received < size:
            data = s.recv(1 << 20)
            if not data:
                break
            received += len(data)
        s.close()
        self.assertEqual(received, size)
        self.assertIn("reloaded configuration", self.proxy.stdout())
