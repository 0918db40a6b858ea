# -*- test-case-name: tests.test_integration_stalepool -*-
"""
Integration tests of pooled keep-alive upstream connections that the origin
closes at the worst moment: a real C{twistd -n txproxy} in front of a
loopback origin that closes (or resets) its idle connections on command,
as Node does at its keep-alive timeout.

The worst moment, made on purpose: the proxy is stopped (C{SIGSTOP}), the
client's next request reaches the proxy's kernel, then the origin closes
the pooled connection, and the proxy resumes (C{SIGCONT}).  It then finds
the request before the close, as a busy proxy does under load (the HTTP WG
cache-tests referee lost its C{PUT /config/...} requests this way, one run
in about twenty, as C{502}).
"""

from __future__ import annotations

import select
import signal
import socket
import struct
import threading
import time
from typing import List, Optional, Tuple

from twisted.trial.unittest import SynchronousTestCase

from tests.procs import ThreadedServer, Twistd, freePort

#: Bound of every wait for the proxy or the origin.
TIMEOUT = 10.0


class ClosingOrigin:
    """
    A keep-alive HTTP/1.1 origin on loopback that answers every request
    (a C{304} to one with C{If-None-Match}, else C{200}, or C{201} to a
    C{PUT}) and, on L{closeIdle}, closes every idle connection with a FIN,
    or a reset (C{SO_LINGER} 0).

    @ivar requests: C{(connection number, request line, headers, body)} of
        every request received, in order.
    """

    def __init__(self, responseFields: bytes = b"") -> None:
        self.responseFields = responseFields
        self.requests: List[Tuple[int, bytes, bytes, bytes]] = []
        self._lock = threading.Lock()
        self._idle: List["_Idle"] = []
        self._count = 0
        self.server = ThreadedServer(self._handle)
        self.port = self.server.port

    def stop(self) -> None:
        self.server.stop()

    def closeIdle(self, reset: bool = False) -> int:
        """
        Close every idle connection (FIN, or RST with C{reset}) and return
        how many, once they are closed.
        """
        with self._lock:
            idle, self._idle = self._idle, []
        for i in idle:
            i.reset = reset
            i.order.set()
        for i in idle:
            if not i.done.wait(TIMEOUT):
                raise AssertionError("the origin did not close an idle connection")
        return len(idle)

    def _handle(self, conn: socket.socket) -> None:
        with self._lock:
            self._count += 1
            number = self._count
        buf = b""
        while True:
            while b"\r\n\r\n" not in buf:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
            head, _, buf = buf.partition(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            fields = b"\r\n".join(lines[1:]).lower()
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(buf) < length:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
            body, buf = buf[:length], buf[length:]
            with self._lock:
                self.requests.append((number, lines[0], fields, body))
            if b"if-none-match:" in fields:
                conn.sendall(b"HTTP/1.1 304 Not Modified\r\n" + self.responseFields + b"\r\n")
            else:
                status = b"201 Created" if lines[0].startswith(b"PUT ") else b"200 OK"
                conn.sendall(b"HTTP/1.1 " + status + b"\r\n" + self.responseFields + b"Content-Length: 5\r\n\r\nhello")
            if buf:
                continue
            idle = _Idle()
            with self._lock:
                self._idle.append(idle)
            # Idle: until the next request, the peer's close, or an order.
            while not idle.order.is_set():
                readable, _, _ = select.select([conn], [], [], 0.01)
                if readable:
                    break
            with self._lock:
                if idle in self._idle:
                    self._idle.remove(idle)
            if idle.order.is_set():
                if idle.reset:
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()
                idle.done.set()
                return


class _Idle:
    def __init__(self) -> None:
        self.order = threading.Event()
        self.done = threading.Event()
        self.reset = False


def readResponse(sock: socket.socket) -> Tuple[bytes, bytes]:
    """
    One response with a C{Content-Length} body (or none): its status line
    and body.
    """
    sock.settimeout(TIMEOUT)
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise AssertionError(f"the proxy closed the connection after {buf!r}")
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        data = sock.recv(65536)
        if not data:
            break
        rest += data
    return head.split(b"\r\n")[0], rest[:length]


class StalePooledConnectionTests(SynchronousTestCase):
    """
    The origin closes the proxy's pooled connection after the client's
    next request reached the proxy, before the proxy saw the close.
    """

    def start(self, mode: str = "reverse", extra: Optional[List[str]] = None,
              responseFields: bytes = b"") -> Tuple[ClosingOrigin, Twistd]:
        origin = ClosingOrigin(responseFields)
        self.addCleanup(origin.stop)
        port = freePort()
        args = ["--mode", mode, "--listen", f"tcp:{port}:interface=127.0.0.1"]
        if mode == "reverse":
            args += ["--route", f"*=http://127.0.0.1:{origin.port}"]
        proxy = Twistd(args + (extra or []), port).start()
        self.addCleanup(proxy.stop)
        self.addCleanup(proxy.signal, signal.SIGCONT)
        return origin, proxy

    def client(self, proxy: Twistd) -> socket.socket:
        assert proxy.port is not None
        sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=TIMEOUT)
        self.addCleanup(sock.close)
        return sock

    def closeWhileStopped(self, proxy: Twistd, origin: ClosingOrigin, sock: socket.socket, request: bytes,
                          reset: bool = False) -> None:
        """
        Stop the proxy, send C{request} on the client's connection, close
        the origin's idle connection, resume the proxy.
        """
        proxy.signal(signal.SIGSTOP)
        try:
            sock.sendall(request)
            # (On loopback both arrive in the proxy's kernel within the
            # send and close calls; a few ms of margin.)
            time.sleep(0.02)
            self.assertEqual(origin.closeIdle(reset), 1)
            time.sleep(0.02)
        finally:
            proxy.signal(signal.SIGCONT)

    def assertNoTraceback(self, proxy: Twistd) -> None:
        self.assertNotIn("Traceback", proxy.stdout() + proxy.stderr())

    def bodyRequestAnswered(self, mode: str, reset: bool) -> None:
        origin, proxy = self.start(mode)
        sock = self.client(proxy)
        base = b"/" if mode == "reverse" else f"http://127.0.0.1:{origin.port}/".encode()
        sock.sendall(b"GET " + base + b"a HTTP/1.1\r\nHost: o.test\r\n\r\n")
        self.assertEqual(readResponse(sock), (b"HTTP/1.1 200 OK", b"hello"))
        self.closeWhileStopped(
            proxy, origin, sock, b"PUT " + base + b"config HTTP/1.1\r\nHost: o.test\r\nContent-Length: 3\r\n\r\nabc", reset
        )
        self.assertEqual(readResponse(sock), (b"HTTP/1.1 201 Created", b"hello"))
        # On a second connection, once, with its body.
        self.assertEqual([(n, line.split(b" ")[0], body) for n, line, _, body in origin.requests],
                         [(1, b"GET", b""), (2, b"PUT", b"abc")])
        self.assertNoTraceback(proxy)

    def test_reverseBodyRequestAfterFIN(self) -> None:
        """
        Reverse mode: a C{PUT} with a body is sent on a fresh connection,
        and answered, instead of C{502}.
        """
        self.bodyRequestAnswered("reverse", reset=False)

    def test_reverseBodyRequestAfterReset(self) -> None:
        """
        The same when the origin resets its idle connection.
        """
        self.bodyRequestAnswered("reverse", reset=True)

    def test_forwardBodyRequestAfterFIN(self) -> None:
        """
        Forward mode too.
        """
        self.bodyRequestAnswered("forward", reset=False)

    def test_getRetriedAfterReset(self) -> None:
        """
        A C{GET} (idempotent, no body) is sent on the reset connection
        unchecked and, once its close is seen, sent again on a fresh one:
        answered, the origin seeing it on its second connection.
        """
        origin, proxy = self.start()
        sock = self.client(proxy)
        sock.sendall(b"GET /a HTTP/1.1\r\nHost: o.test\r\n\r\n")
        readResponse(sock)
        self.closeWhileStopped(proxy, origin, sock, b"GET /b HTTP/1.1\r\nHost: o.test\r\n\r\n", reset=True)
        self.assertEqual(readResponse(sock), (b"HTTP/1.1 200 OK", b"hello"))
        self.assertEqual([(n, line) for n, line, _, _ in origin.requests],
                         [(1, b"GET /a HTTP/1.1"), (2, b"GET /b HTTP/1.1")])
        self.assertNoTraceback(proxy)

    def test_cacheRevalidationRetried(self) -> None:
        """
        With C{--cache}: the conditional request that revalidates a stored
        C{no-cache} response goes on the pooled connection the origin
        closes; it is sent again, still conditional, on a fresh connection,
        and its C{304} serves the stored body.
        """
        origin, proxy = self.start(extra=["--cache", "1M"],
                                   responseFields=b'Cache-Control: no-cache\r\nETag: "v1"\r\n')
        sock = self.client(proxy)
        sock.sendall(b"GET /r HTTP/1.1\r\nHost: o.test\r\n\r\n")
        self.assertEqual(readResponse(sock), (b"HTTP/1.1 200 OK", b"hello"))
        self.closeWhileStopped(proxy, origin, sock, b"GET /r HTTP/1.1\r\nHost: o.test\r\n\r\n")
        self.assertEqual(readResponse(sock), (b"HTTP/1.1 200 OK", b"hello"))
        self.assertEqual([(n, b'if-none-match: "v1"' in fields) for n, _, fields, _ in origin.requests],
                         [(1, False), (2, True)])
        self.assertNoTraceback(proxy)
