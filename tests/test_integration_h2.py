# -*- test-case-name: tests.test_integration_h2 -*-
"""
HTTP/2 from clients, end to end: a real C{twistd -n txproxy} in front of a
real HTTP/1.1 keep-alive origin on loopback, reached by C{curl}, C{nghttp},
headless Chromium, and clients written here with python-hyper's C{h2} over
real sockets (some of them hostile: the floods of RFC 9113 §10.5 and
CVE-2023-44487, malformed requests, a client ignoring
C{SETTINGS_MAX_CONCURRENT_STREAMS}).

Every wait is bounded; every process is stopped by its PID.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.request
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    DataReceived,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
    StreamReset,
)
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes
from hpack import Encoder
from hyperframe.frame import ContinuationFrame, HeadersFrame
from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase

from tests.procs import TestCA, ThreadedServer, Twistd, echoHandler, freePort, waitForPort

_TIMEOUT = 10.0


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise AssertionError(f"{tool} is not installed (scripts/test installs it); this test is never skipped")
    return path


def body(seed: int, size: int) -> bytes:
    """
    C{size} pseudo-random bytes, the same for the same C{seed}.
    """
    return random.Random(seed).getrandbits(size * 8).to_bytes(size, "big") if size else b""


PAGE = (b"<!DOCTYPE html><html><head><title>h2 page</title></head>"
        b"<body><p id='static'>served over h2</p><script src='/app.js'></script></body></html>")
SCRIPT = b"var p = document.createElement('p'); p.id = 'dynamic'; p.textContent = 'script ran'; document.body.appendChild(p);"


class _OriginHandler(http.server.BaseHTTPRequestHandler):
    """
    An HTTP/1.1 keep-alive origin:

      - C{GET /big/SEED/SIZE}: L{body}C{(SEED, SIZE)};
      - C{GET /fill/N/SIZE}: the byte C{65 + N}, C{SIZE} times;
      - C{GET /slow/CHUNKS/MS}: C{CHUNKS} kilobytes, one every C{MS}
        milliseconds;
      - C{POST /sha/...}: the body's sha256 (hex) and length, also recorded
        in C{origin.uploads};
      - C{GET /page}, C{GET /app.js}: a page and its script;
      - anything else: C{"ok " + path}.

    Every request head it reads is recorded in C{origin.seen}.
    """

    protocol_version = "HTTP/1.1"
    origin: "Origin"

    def log_message(self, *args: Any) -> None:
        pass

    def reply(self, data: bytes, ctype: str = "application/octet-stream") -> None:
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self.origin.record(self.command, self.path)
        parts = self.path.split("/")
        if parts[1] == "big":
            self.reply(body(int(parts[2]), int(parts[3])))
        elif parts[1] == "slow":
            chunks, delay = int(parts[2]), int(parts[3]) / 1000.0
            self.send_response(200)
            self.send_header("Content-Length", str(chunks * 1000))
            self.end_headers()
            for _ in range(chunks):
                self.wfile.write(b"s" * 1000)
                self.wfile.flush()
                time.sleep(delay)
        elif parts[1] == "fill":
            self.reply(bytes([65 + int(parts[2])]) * int(parts[3]))
        elif parts[1] == "page":
            self.reply(PAGE, "text/html")
        elif parts[1] == "app.js":
            self.reply(SCRIPT, "application/javascript")
        else:
            self.reply(b"ok " + self.path.encode(), "text/plain")

    def do_POST(self) -> None:
        self.origin.record(self.command, self.path)
        digest = hashlib.sha256()
        length = 0
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b""):
                        pass
                    break
                data = self.rfile.read(size)
                self.rfile.readline()
                digest.update(data)
                length += len(data)
        else:
            left = int(self.headers.get("Content-Length", "0"))
            while left:
                data = self.rfile.read(min(left, 65536))
                if not data:
                    return
                digest.update(data)
                length += len(data)
                left -= len(data)
        answer = f"{digest.hexdigest()} {length}"
        self.origin.uploads.append(answer)
        self.reply(answer.encode(), "text/plain")


class Origin:
    """
    L{_OriginHandler} served by a threading HTTP server on loopback.
    """

    def __init__(self) -> None:
        self.seen: List[Tuple[str, str]] = []
        self.uploads: List[str] = []
        self._lock = threading.Lock()
        handler = type("Handler", (_OriginHandler,), {"origin": self})
        server = type("Server", (http.server.ThreadingHTTPServer,),
                      {"request_queue_size": 256, "handle_error": lambda self, request, address: None})
        self.server = server(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def record(self, method: str, path: str) -> None:
        with self._lock:
            self.seen.append((method, path))

    def paths(self) -> List[str]:
        with self._lock:
            return [path for _, path in self.seen]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def waitUntil(check: Callable[[], Any], what: str, timeout: float = _TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def curl(*args: str, timeout: float = _TIMEOUT) -> Tuple[int, str, bytes]:
    """
    Run curl; return its exit code, the C{-w} line (the HTTP version, then
    the status) and the body.
    """
    result = subprocess.run([need("curl"), "-sS", "-o", "-", "-w", "\n%{http_version} %{http_code}", "--max-time",
                             str(timeout), *args], capture_output=True, timeout=timeout + 5)
    out, _, info = result.stdout.rpartition(b"\n")
    return result.returncode, info.decode(), out


def metrics(adminPort: int) -> Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{adminPort}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def metric(samples: Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and all(dict(ls).get(k) == x for k, x in labels.items()))


class H2Client:
    """
    An HTTP/2 client over a blocking loopback socket, written with C{h2}:
    what it received is kept per stream.  C{validate=False} lets it send
    what a conforming client would not.
    """

    def __init__(self, port: int, validate: bool = True, tls: bool = False, cafile: Optional[str] = None,
                 serverName: str = "localhost") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=_TIMEOUT)
        if tls:
            # Over TLS: ALPN h2, the certificate verified against cafile.
            context = ssl.create_default_context(cafile=cafile)
            context.set_alpn_protocols(["h2"])
            self.sock = context.wrap_socket(self.sock, server_hostname=serverName)
            assert self.sock.selected_alpn_protocol() == "h2"
        self.conn = H2Connection(H2Configuration(
            client_side=True, header_encoding=None,
            validate_outbound_headers=validate, normalize_outbound_headers=validate,
            validate_inbound_headers=False))
        self.conn.initiate_connection()
        self.headers: Dict[int, Dict[bytes, bytes]] = {}
        self.bodies: Dict[int, bytearray] = {}
        self.ended: List[int] = []
        self.endedAt: Dict[int, float] = {}
        self.resets: Dict[int, int] = {}
        self.settings: Dict[int, int] = {}
        self.goaway: Optional[int] = None
        self.goawayAt: Optional[float] = None
        self.closedAt: Optional[float] = None
        self._buffer = b""
        self.flush()

    def flush(self) -> None:
        self.send(self.conn.data_to_send())

    def send(self, data: bytes) -> None:
        if data and self.closedAt is None:
            try:
                self.sock.sendall(data)
            except OSError:
                pass  # the server closed on us: what reading will show

    def request(self, path: str, method: str = "GET", authority: str = "h2.test", extra: Sequence[Tuple[str, str]] = (),
                end: bool = True, scheme: str = "http") -> int:
        sid = self.conn.get_next_available_stream_id()
        headers = [(":method", method), (":scheme", scheme), (":authority", authority), (":path", path), *extra]
        self.conn.send_headers(sid, [(k.encode(), v.encode()) for k, v in headers], end_stream=end)
        self.flush()
        return sid

    def status(self, sid: int) -> int:
        return int(self.headers[sid][b":status"])

    def pump(self, until: Callable[[], bool], timeout: float = _TIMEOUT) -> bool:
        """
        Read and handle frames until C{until()}, the connection's end, or
        C{timeout}; return C{until()}.
        """
        deadline = time.monotonic() + timeout
        while not until() and self.closedAt is None:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(1 << 16)
            except socket.timeout:
                break
            except OSError:
                data = b""
            if not data:
                self.closedAt = time.monotonic()
                break
            self.feed(data)
        return until()

    def feed(self, data: bytes) -> None:
        # GOAWAY is read here, not by h2: h2 closes its connection state
        # machine on it, and would refuse the frames of the streams a
        # graceful GOAWAY lets finish.
        self._buffer += data
        frames = []
        buffer = self._buffer
        while len(buffer) >= 9:
            end = 9 + int.from_bytes(buffer[:3], "big")
            if len(buffer) < end:
                break
            frame, buffer = buffer[:end], buffer[end:]
            if frame[3] == 0x7:
                self.goaway = int.from_bytes(frame[13:17], "big")
                self.goawayAt = time.monotonic()
            else:
                frames.append(frame)
        self._buffer = buffer
        try:
            events = self.conn.receive_data(b"".join(frames))
        except ProtocolError:
            return
        for event in events:
            if isinstance(event, ResponseReceived):
                self.headers[event.stream_id] = dict(event.headers)
            elif isinstance(event, DataReceived):
                self.bodies.setdefault(event.stream_id, bytearray()).extend(event.data)
                if event.flow_controlled_length:
                    try:
                        self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    except ProtocolError:
                        pass
            elif isinstance(event, StreamEnded):
                self.ended.append(event.stream_id)
                self.endedAt[event.stream_id] = time.monotonic()
            elif isinstance(event, StreamReset):
                self.resets[event.stream_id] = event.error_code
            elif isinstance(event, RemoteSettingsChanged):
                for code, change in event.changed_settings.items():
                    self.settings[code] = change.new_value
        self.flush()

    def close(self) -> None:
        self.sock.close()


class _ProxyTestCase(SynchronousTestCase):
    """
    Starts the origin, and the proxy with L{proxy}; cleans both up.
    """

    def setUp(self) -> None:
        self.origin = Origin()
        self.addCleanup(self.origin.stop)

    def proxy(self, args: Sequence[str], port: int, admin: bool = False) -> Twistd:
        extra = ["--access-log", "access.log", "--access-log-format", "json"]
        if admin:
            self.adminPort = freePort()
            extra += ["--admin", f"tcp:{self.adminPort}:interface=127.0.0.1"]
        proxy = Twistd([*args, *extra], port).start()
        self.addCleanup(proxy.stop)
        if admin:
            waitForPort(self.adminPort, proc=proxy.proc)
        self.proxyProcess = proxy
        return proxy

    def reverse(self, *extra: str, admin: bool = False) -> int:
        """
        A reverse proxy to the origin on a plain tcp listener; its port.
        """
        port = freePort()
        self.proxy(["--mode", "reverse", "--route", f"*=http://127.0.0.1:{self.origin.port}",
                    "--listen", f"tcp:{port}:interface=127.0.0.1", *extra], port, admin)
        return port

    def accessLog(self, count: int) -> List[Dict[str, Any]]:
        """
        The first C{count} access-log records (waiting for them).
        """
        path = os.path.join(self.proxyProcess.cwd, "access.log")

        def records() -> Optional[List[Dict[str, Any]]]:
            if not os.path.exists(path):
                return None
            with open(path) as f:
                lines = [json.loads(line) for line in f if line.strip()]
            return lines if len(lines) >= count else None

        found: List[Dict[str, Any]] = waitUntil(records, f"{count} access-log records")
        return found


class TLSTests(_ProxyTestCase):
    """
    A reverse proxy's TLS listener negotiates C{h2} with curl by ALPN.
    """

    def tlsReverse(self, *extra: str) -> Tuple[int, TestCA]:
        ca = TestCA()
        self.addCleanup(shutil.rmtree, ca.dir, True)
        cert = ca.issue(["localhost", "127.0.0.1"], "proxy.pem")
        port = freePort()
        self.proxy(["--mode", "reverse", "--route", f"*=http://127.0.0.1:{self.origin.port}",
                    "--listen", f"ssl:{port}:privateKey={cert}:interface=127.0.0.1", *extra], port)
        return port, ca

    def test_curlNegotiatesH2(self) -> None:
        """
        C{curl --http2} over TLS speaks HTTP/2; the body is the origin's;
        the access log says C{HTTP/2.0}.
        """
        port, ca = self.tlsReverse()
        code, info, out = curl("--http2", "--cacert", ca.caPath, f"https://localhost:{port}/big/7/100000",
                               "--resolve", f"localhost:{port}:127.0.0.1")
        self.assertEqual((code, info), (0, "2 200"))
        self.assertEqual(hashlib.sha256(out).hexdigest(), hashlib.sha256(body(7, 100000)).hexdigest())
        [record] = self.accessLog(1)
        self.assertEqual((record["version"], record["status"], record["method"]), ("HTTP/2.0", 200, "GET"))
        self.assertEqual(record["bytesDown"], 100000)

    def test_authorityCheckedPerStream(self) -> None:
        """
        On one HTTP/2 connection over TLS, every stream's C{:authority} is
        checked against the served certificate: the names it covers get
        their answer, another gets C{421}, and a covered one after it is
        answered again (the check's per-connection memory follows the
        value).
        """
        port, ca = self.tlsReverse()
        client = H2Client(port, tls=True, cafile=ca.caPath)
        self.addCleanup(client.close)
        statuses = []
        for authority in ("localhost", f"localhost:{port}", "other.test", "127.0.0.1", "localhost"):
            sid = client.request(f"/{len(statuses)}", authority=authority, scheme="https")
            self.assertTrue(client.pump(lambda: sid in client.ended), authority)
            statuses.append((authority, client.status(sid)))
        self.assertEqual(statuses, [("localhost", 200), (f"localhost:{port}", 200), ("other.test", 421),
                                    ("127.0.0.1", 200), ("localhost", 200)])
        self.assertEqual(client.resets, {})
        self.assertIsNone(client.goaway)

    def test_http2OffIsHTTP11(self) -> None:
        """
        With C{--http2 off} the same curl gets HTTP/1.1, logged as such.
        """
        port, ca = self.tlsReverse("--http2", "off")
        code, info, out = curl("--http2", "--cacert", ca.caPath, f"https://localhost:{port}/x",
                               "--resolve", f"localhost:{port}:127.0.0.1")
        self.assertEqual((code, info, out), (0, "1.1 200", b"ok /x"))
        [record] = self.accessLog(1)
        self.assertEqual(record["version"], "HTTP/1.1")


class PriorKnowledgeTests(_ProxyTestCase):
    def test_curlPriorKnowledge(self) -> None:
        """
        C{curl --http2-prior-knowledge} to a plain tcp listener speaks
        HTTP/2; an HTTP/1.1 request on the same listener still works.
        """
        port = self.reverse()
        self.assertEqual(curl("--http2-prior-knowledge", f"http://127.0.0.1:{port}/pk"), (0, "2 200", b"ok /pk"))
        self.assertEqual(curl("--http1.1", f"http://127.0.0.1:{port}/h1"), (0, "1.1 200", b"ok /h1"))
        versions = sorted(r["version"] for r in self.accessLog(2))
        self.assertEqual(versions, ["HTTP/1.1", "HTTP/2.0"])

    def test_http2OffRefusesPreface(self) -> None:
        """
        With C{--http2 off} the preface is an HTTP/1.1 request line of
        version C{HTTP/2.0}: C{505}, and nothing reaches the origin.
        """
        port = self.reverse("--http2", "off")
        sock = socket.create_connection(("127.0.0.1", port), timeout=_TIMEOUT)
        self.addCleanup(sock.close)
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        self.assertTrue(sock.recv(4096).startswith(b"HTTP/1.1 505 "))
        code, info, _ = curl("--http2-prior-knowledge", f"http://127.0.0.1:{port}/pk")
        self.assertNotEqual(info.split()[-1], "200")
        self.assertEqual(self.origin.seen, [])


class NghttpTests(_ProxyTestCase):
    """
    C{nghttp}: many concurrent streams on one connection, large bodies
    both ways, checked byte for byte.
    """

    def nghttp(self, *args: str) -> bytes:
        result = subprocess.run([need("nghttp"), "--no-dep", "-t", "20", *args], capture_output=True, timeout=30)
        self.assertEqual(result.returncode, 0, result.stderr)
        return result.stdout

    def stats(self, out: bytes) -> List[Tuple[int, int, str]]:
        """
        The C{(code, size, path)} rows of C{nghttp -s} output (the size as
        printed: C{78K} for 80,000 bytes).
        """
        rows = re.findall(rb"^\s*\d+\s+\+\S+\s+\+\S+\s+\S+\s+(\d+)\s+(\S+)\s+(/\S*)$", out, re.MULTILINE)
        return [(int(code), size.decode(), path.decode()) for code, size, path in rows]

    def test_concurrentDownloads(self) -> None:
        """
        60 downloads at once on one connection, 80 kB each, every body a
        different byte repeated: each stream gets 200 and its size, and
        the output (nghttp interleaves the bodies) holds exactly 80 kB of
        each byte; then one 5 MB download whose sha256 matches the origin's.
        """
        port = self.reverse()
        base = f"http://127.0.0.1:{port}"
        size = 80000
        out = self.nghttp("-s", *(f"{base}/fill/{n}/{size}" for n in range(60)))
        rows = self.stats(out)
        self.assertEqual(sorted(rows), sorted((200, "78K", f"/fill/{n}/{size}") for n in range(60)), out[-3000:])
        data = out[:out.index(b"***** Statistics")]
        self.assertEqual(len(data), 60 * size)
        self.assertEqual([data.count(bytes([65 + n])) for n in range(60)], [size] * 60)
        big = self.nghttp(f"{base}/big/99/5000000")
        self.assertEqual(hashlib.sha256(big).hexdigest(), hashlib.sha256(body(99, 5000000)).hexdigest())
        records = self.accessLog(61)
        self.assertEqual({r["version"] for r in records}, {"HTTP/2.0"})
        self.assertEqual(sum(r["bytesDown"] for r in records), 60 * size + 5000000)

    def test_concurrentUploads(self) -> None:
        """
        60 uploads at once of a 90 kB file (with C{content-length}), then
        60 more without it (chunked toward the origin): the origin computes
        the sha256 of every body it received, and each is the file's.
        """
        port = self.reverse()
        base = f"http://127.0.0.1:{port}"
        path = os.path.join(self.mktemp())
        payload = body(5, 90000)
        with open(path, "wb") as f:
            f.write(payload)
        expected = f"{hashlib.sha256(payload).hexdigest()} {len(payload)}"
        for flags in ([], ["--no-content-length"]):
            del self.origin.uploads[:]
            out = self.nghttp("-s", "-d", path, *flags, *(f"{base}/sha/{n}" for n in range(60)))
            rows = self.stats(out)
            self.assertEqual(sorted(rows), sorted((200, str(len(expected)), f"/sha/{n}") for n in range(60)), out[-3000:])
            self.assertEqual(self.origin.uploads, [expected] * 60)
        self.assertEqual({r["version"] for r in self.accessLog(120)}, {"HTTP/2.0"})

    def test_concurrentStreamsChecked(self) -> None:
        """
        The same with an C{h2} client: 50 streams at once on one
        connection, each a different 40 kB body, each checked by sha256.
        """
        port = self.reverse()
        client = H2Client(port)
        self.addCleanup(client.close)
        sids = {client.request(f"/big/{seed}/40000"): seed for seed in range(50)}
        self.assertTrue(client.pump(lambda: len(client.ended) == 50), (client.ended, client.resets))
        for sid, seed in sids.items():
            self.assertEqual(client.status(sid), 200)
            self.assertEqual(hashlib.sha256(client.bodies[sid]).digest(), hashlib.sha256(body(seed, 40000)).digest())


class ForwardTests(_ProxyTestCase):
    """
    A forward proxy serving HTTP/2 with prior knowledge: CONNECT streams
    and absolute-form requests.
    """

    def forward(self) -> int:
        port = freePort()
        self.proxy(["--listen", f"tcp:{port}:interface=127.0.0.1", "--connect-ports", "*",
                    "--allow", "127.0.0.0/8"], port)
        return port

    def test_connectStreamTunnels(self) -> None:
        """
        A C{CONNECT} stream (only C{:method} and C{:authority}) gets 200 and
        is a tunnel to an echo server, both ways, ended by either side's
        C{END_STREAM}; the access log counts it as an HTTP/2 tunnel.
        """
        echo = ThreadedServer(echoHandler)
        self.addCleanup(echo.stop)
        port = self.forward()
        # (h2 4.3, which PyPy 3.9 gets, wants a :path even on CONNECT.)
        client = H2Client(port, validate=False)
        self.addCleanup(client.close)
        sid = client.conn.get_next_available_stream_id()
        client.conn.send_headers(sid, [(b":method", b"CONNECT"), (b":authority", b"127.0.0.1:%d" % echo.port)])
        client.flush()
        self.assertTrue(client.pump(lambda: sid in client.headers))
        self.assertEqual(client.status(sid), 200)
        payload = body(3, 200000)
        client.conn.send_data(sid, payload[:10000])
        client.flush()
        self.assertTrue(client.pump(lambda: len(client.bodies.get(sid, b"")) >= 10000))
        # The rest as the windows allow, then END_STREAM: the echo server
        # half-closes in turn, which ends the stream from the proxy.
        sent = 10000
        while sent < len(payload):
            window = min(client.conn.local_flow_control_window(sid), client.conn.max_outbound_frame_size)
            if window:
                client.conn.send_data(sid, payload[sent:sent + window])
                sent += window
                client.flush()
            client.pump(lambda: client.conn.local_flow_control_window(sid) > 0, timeout=1)
        client.conn.end_stream(sid)
        client.flush()
        self.assertTrue(client.pump(lambda: sid in client.ended), (len(client.bodies[sid]), client.resets))
        self.assertEqual(bytes(client.bodies[sid]), payload)
        [record] = self.accessLog(1)
        self.assertEqual((record["method"], record["version"], record["status"]), ("CONNECT", "HTTP/2.0", 200))

    def test_absoluteFormGet(self) -> None:
        """
        A C{GET} stream with C{:scheme http} and the origin as
        C{:authority} is forwarded to the origin like an absolute-form
        HTTP/1.1 request.
        """
        port = self.forward()
        client = H2Client(port)
        self.addCleanup(client.close)
        sid = client.request("/fwd?q=1", authority=f"127.0.0.1:{self.origin.port}")
        self.assertTrue(client.pump(lambda: sid in client.ended))
        self.assertEqual((client.status(sid), bytes(client.bodies[sid])), (200, b"ok /fwd?q=1"))
        self.assertEqual(self.origin.seen, [("GET", "/fwd?q=1")])
        [record] = self.accessLog(1)
        self.assertEqual((record["target"], record["version"]),
                         (f"http://127.0.0.1:{self.origin.port}/fwd?q=1", "HTTP/2.0"))


class FloodTests(_ProxyTestCase):
    """
    Hostile clients over real sockets: each flood gets C{GOAWAY} and a
    closed socket within a second, counted in C{/metrics}; a curl whose
    slow download runs meanwhile, and one after, are served.
    """

    def flood(self, build: Callable[[H2Client], Any], codes: Sequence[int], kind: str, *extra: str,
              raw: bool = False) -> H2Client:
        port = self.reverse(*extra, admin=True)
        during = subprocess.Popen([need("curl"), "-sS", "--http2-prior-knowledge", "-o", "-", "-w", "\n%{http_code}",
                                   "--max-time", "10", f"http://127.0.0.1:{port}/slow/8/100"], stdout=subprocess.PIPE)
        self.addCleanup(lambda: during.kill() if during.poll() is None else None)
        waitUntil(lambda: "/slow/8/100" in self.origin.paths(), "the slow download to start")
        client = H2Client(port)
        self.addCleanup(client.close)
        self.assertTrue(client.pump(lambda: SettingCodes.MAX_CONCURRENT_STREAMS in client.settings))
        data = build(client) if raw else (build(client), client.conn.data_to_send())[1]
        sentAt = time.monotonic()
        client.send(data)
        client.pump(lambda: False, timeout=3)
        self.assertIsNotNone(client.closedAt, "the flooding connection was not closed")
        assert client.closedAt is not None
        self.assertLess(client.closedAt - sentAt, 1.0)
        self.assertIn(client.goaway, codes)
        out, _ = during.communicate(timeout=15)
        self.assertEqual(out, b"s" * 8000 + b"\n200")
        self.assertEqual(curl("--http2-prior-knowledge", f"http://127.0.0.1:{port}/after"), (0, "2 200", b"ok /after"))
        samples = waitUntil(lambda: (lambda m: m if metric(m, "txproxy_requests_total", protocol="h2") >= 2 else None)(
            metrics(self.adminPort)), "the requests to be counted")
        self.assertEqual(metric(samples, "txproxy_h2_connection_errors_total", kind=kind), 1)
        self.assertEqual(metric(samples, "txproxy_h2_connection_errors_total"), 1)
        return client

    def test_rapidReset(self) -> None:
        """
        500 streams opened and reset at once (CVE-2023-44487): GOAWAY
        (ENHANCE_YOUR_CALM), and the origin sees far fewer than 500
        requests.
        """
        def build(client: H2Client) -> None:
            for _ in range(500):
                sid = client.conn.get_next_available_stream_id()
                client.conn.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"h2.test"),
                                               (b":path", b"/reset")], end_stream=True)
                client.conn.reset_stream(sid, ErrorCodes.CANCEL)

        self.flood(build, [ErrorCodes.ENHANCE_YOUR_CALM], "reset")
        self.assertLessEqual(self.origin.paths().count("/reset"), 101)

    def test_pingFlood(self) -> None:
        def build(client: H2Client) -> None:
            for n in range(1000):
                client.conn.ping(n.to_bytes(8, "big"))

        self.flood(build, [ErrorCodes.ENHANCE_YOUR_CALM], "ping")

    def test_settingsFlood(self) -> None:
        def build(client: H2Client) -> None:
            for n in range(1000):
                client.conn.update_settings({SettingCodes.HEADER_TABLE_SIZE: 4096 + n % 2})

        self.flood(build, [ErrorCodes.ENHANCE_YOUR_CALM], "settings")

    def test_emptyDataFlood(self) -> None:
        def build(client: H2Client) -> None:
            sid = client.request("/sha/empty", "POST", end=False)
            for _ in range(1000):
                client.conn.send_data(sid, b"")

        self.flood(build, [ErrorCodes.ENHANCE_YOUR_CALM], "empty_data")

    def test_continuationFlood(self) -> None:
        """
        A header block that never ends: CONTINUATION frames, raw, after a
        HEADERS frame without END_HEADERS (CVE-2024-27316 class).
        """
        def build(client: H2Client) -> bytes:
            block = Encoder().encode([(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"h2.test"),
                                      (b":path", b"/")])
            frames = [HeadersFrame(1, data=block).serialize()]
            frames += [ContinuationFrame(1, data=b"\x40\x01a\x01b").serialize() for _ in range(2000)]
            return client.conn.data_to_send() + b"".join(frames)

        self.flood(build, [ErrorCodes.PROTOCOL_ERROR], "protocol_error", raw=True)

    def test_oversizedHeaderBlock(self) -> None:
        """
        A header list over C{--max-head-size} (an HPACK bomb: one 3 kB
        field, then 40 one-byte references to it): GOAWAY; the limit is
        advertised as SETTINGS_MAX_HEADER_LIST_SIZE.
        """
        def build(client: H2Client) -> None:
            self.assertEqual(client.settings[SettingCodes.MAX_HEADER_LIST_SIZE], 16384)
            client.request("/bomb", extra=[("x-bomb", "b" * 3000)] * 40)

        self.flood(build, [ErrorCodes.ENHANCE_YOUR_CALM], "protocol_error", "--max-head-size", "16384")
        self.assertNotIn("/bomb", self.origin.paths())


class MalformedTests(_ProxyTestCase):
    def test_malformedRequestsReset(self) -> None:
        """
        Malformed requests (RFC 9113 §8.1.1, §8.2) get RST_STREAM
        (PROTOCOL_ERROR), while a slow download opened before them on the
        same connection completes, and a good request after them is served.

        A malformed head never reaches the origin. A body whose length
        contradicts C{content-length} is found out only when its DATA
        arrives, after the head may have been streamed upstream (as any
        streaming proxy does): the origin may then see the head, but never a
        complete request, because the upstream request is aborted.
        """
        port = self.reverse()
        client = H2Client(port, validate=False)
        self.addCleanup(client.close)
        slow = client.request("/slow/5/100")
        waitUntil(lambda: "/slow/5/100" in self.origin.paths(), "the slow download to start")
        bad = {
            "uppercase": client.request("/bad/upper", extra=[("X-Upper", "1")]),
            "connection": client.request("/bad/connection", extra=[("connection", "keep-alive")]),
            "te": client.request("/bad/te", extra=[("te", "gzip")]),
            "host": client.request("/bad/host", extra=[("host", "other.test")]),
        }
        for name, declared, sent in (("short", "10", b"12345"), ("long", "3", b"12345")):
            sid = client.request(f"/bad/{name}", "POST", extra=[("content-length", declared)], end=False)
            client.conn.send_data(sid, sent, end_stream=True)
            client.flush()
            bad[name] = sid
        self.assertTrue(client.pump(lambda: len(client.resets) == len(bad)), client.resets)
        self.assertEqual(client.resets, {sid: ErrorCodes.PROTOCOL_ERROR for sid in bad.values()})
        good = client.request("/good")
        self.assertTrue(client.pump(lambda: good in client.ended and slow in client.ended))
        self.assertEqual((client.status(good), bytes(client.bodies[good])), (200, b"ok /good"))
        self.assertEqual(len(client.bodies[slow]), 5000)
        self.assertIsNone(client.goaway)
        seen = self.origin.paths()
        self.assertEqual(sorted(p for p in seen if p not in ("/bad/short", "/bad/long")), ["/good", "/slow/5/100"])
        self.assertEqual(self.origin.uploads, [])


class MaxStreamsTests(_ProxyTestCase):
    def test_refusedOverTheLimit(self) -> None:
        """
        With C{--h2-max-streams 5} the SETTINGS frame says 5; a client that
        opens a sixth stream anyway gets RST_STREAM(REFUSED_STREAM) on it,
        and the five are served.
        """
        port = self.reverse("--h2-max-streams", "5")
        client = H2Client(port)
        self.addCleanup(client.close)
        self.assertTrue(client.pump(lambda: SettingCodes.MAX_CONCURRENT_STREAMS in client.settings))
        self.assertEqual(client.settings[SettingCodes.MAX_CONCURRENT_STREAMS], 5)
        # Ignore the limit: make the client's h2 believe it may open more.
        client.conn.remote_settings[SettingCodes.MAX_CONCURRENT_STREAMS] = 100
        client.conn.remote_settings.acknowledge()
        sids = [client.request(f"/slow/3/100/{n}") for n in range(6)]
        self.assertTrue(client.pump(lambda: sids[5] in client.resets))
        self.assertEqual(client.resets, {sids[5]: ErrorCodes.REFUSED_STREAM})
        self.assertTrue(client.pump(lambda: all(sid in client.ended for sid in sids[:5])))
        self.assertEqual([len(client.bodies[sid]) for sid in sids[:5]], [3000] * 5)
        self.assertNotIn("/slow/3/100/5", self.origin.paths())
        # Once they are done, a new stream is served again.
        again = client.request("/again")
        self.assertTrue(client.pump(lambda: again in client.ended))
        self.assertEqual(client.status(again), 200)


class DrainTests(_ProxyTestCase):
    def test_sigtermLetsStreamFinish(self) -> None:
        """
        SIGTERM during a slow HTTP/2 download: GOAWAY(NO_ERROR) arrives
        while the stream is open, the stream completes, then the connection
        closes and the process exits 0.
        """
        port = self.reverse("--drain-timeout", "10")
        client = H2Client(port)
        self.addCleanup(client.close)
        sid = client.request("/slow/15/100")
        self.assertTrue(client.pump(lambda: len(client.bodies.get(sid, b"")) >= 1000))
        self.proxyProcess.signal(signal.SIGTERM)
        self.assertTrue(client.pump(lambda: client.goaway is not None, timeout=5))
        self.assertEqual(client.goaway, ErrorCodes.NO_ERROR)
        self.assertNotIn(sid, client.ended)
        self.assertTrue(client.pump(lambda: sid in client.ended),
                        (len(client.bodies[sid]), client.resets, client.closedAt, self.proxyProcess.stdout()[-3000:]))
        self.assertEqual(bytes(client.bodies[sid]), b"s" * 15000)
        client.pump(lambda: False, timeout=5)
        self.assertIsNotNone(client.closedAt, "the connection was not closed after its last stream")
        assert client.goawayAt is not None and client.closedAt is not None
        self.assertLess(client.goawayAt, client.endedAt[sid])
        self.assertLessEqual(client.endedAt[sid], client.closedAt)
        self.assertEqual(self.proxyProcess.wait(10), 0)


class ChromiumTests(_ProxyTestCase):
    def test_pageOverH2(self) -> None:
        """
        Headless Chromium loads a page from a TLS reverse listener: its
        script ran (the DOM shows it), and the access log has the page and
        the script, both over HTTP/2.
        """
        exe = shutil.which("chromium") or shutil.which("chromium-browser")
        if exe is None:
            raise AssertionError("chromium is not installed (scripts/test installs it); this test is never skipped")
        ca = TestCA()
        self.addCleanup(shutil.rmtree, ca.dir, True)
        cert = ca.issue(["localhost"], "proxy.pem")
        port = freePort()
        self.proxy(["--mode", "reverse", "--route", f"*=http://127.0.0.1:{self.origin.port}",
                    "--listen", f"ssl:{port}:privateKey={cert}:interface=127.0.0.1"], port)
        profile = tempfile.mkdtemp(prefix="txproxy-chromium-")
        self.addCleanup(shutil.rmtree, profile, True)
        result = subprocess.run(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--ignore-certificate-errors",
             "--host-resolver-rules=MAP localhost 127.0.0.1", "--dump-dom", f"https://localhost:{port}/page"],
            capture_output=True, timeout=60)
        dom = result.stdout.decode("utf-8", "replace")
        self.assertIn("served over h2", dom, result.stderr[-2000:])
        self.assertIn('<p id="dynamic">script ran</p>', dom)
        records = {r["target"].rsplit("/", 1)[1]: r for r in self.accessLog(2)}
        self.assertEqual(records["page"]["version"], "HTTP/2.0")
        self.assertEqual(records["app.js"]["version"], "HTTP/2.0")
        self.assertEqual((records["page"]["status"], records["app.js"]["status"]), (200, 200))
