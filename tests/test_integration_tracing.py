# -*- test-case-name: tests.test_integration_tracing -*-
"""
Integration tests of tracing: a real C{twistd -n txproxy} with
C{--trace-otlp} pointing at a local OTLP/HTTP receiver (an C{http.server}
decoding the protobuf with C{opentelemetry-proto}), in front of a backend
that reports the trace headers it got: continuation, replacement,
sampling, a span per CONNECT tunnel and per TCP connection, and a dead
and a stalling collector that leave traffic alone while the drops are
counted in C{/metrics}.
"""

from __future__ import annotations

import http.server
import json
import os
import socket
import threading
import time
from typing import Any, Callable, List, Optional, Tuple

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from twisted.trial.unittest import SynchronousTestCase

from tests.procs import (
    ThreadedServer,
    Twistd,
    connectThrough,
    echoHandler,
    freePort,
    readHead,
    waitForPort,
)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


class Receiver:
    """
    An OTLP/HTTP traces endpoint on a loopback port.  C{mode} is C{"ok"}
    (decode and answer 200) or C{"stall"} (read the request, never answer).
    """

    def __init__(self, mode: str = "ok") -> None:
        self.mode = mode
        self.spans: List[Any] = []
        self.posts = 0
        self.lock = threading.Lock()
        self.release = threading.Event()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    receiver.posts += 1
                if receiver.mode == "stall":
                    receiver.release.wait(60)
                    return
                message = ExportTraceServiceRequest()
                message.ParseFromString(body)
                with receiver.lock:
                    for rs in message.resource_spans:
                        for ss in rs.scope_spans:
                            receiver.spans.extend(ss.spans)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1/traces"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def waitFor(self, predicate: Callable[[List[Any]], bool], timeout: float = 15.0) -> List[Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                spans = list(self.spans)
            if predicate(spans):
                return spans
            time.sleep(0.05)
        raise AssertionError(f"spans never matched; got {len(spans)}: {[s.name for s in spans]}")

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


class _Backend(http.server.BaseHTTPRequestHandler):
    """
    Answers with the trace fields it received, as JSON.
    """

    protocol_version = "HTTP/1.1"
    # (Head and body go in two writes: without this, Nagle's algorithm and
    # delayed ACKs add 40 ms to every keep-alive request.)
    disable_nagle_algorithm = True

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        body = json.dumps({
            "traceparent": self.headers.get_all("traceparent") or [],
            "tracestate": self.headers.get_all("tracestate") or [],
        }).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _backend() -> http.server.ThreadingHTTPServer:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Backend)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def request(port: int, extra: bytes = b"", path: str = "/api/x", sock: Optional[socket.socket] = None
            ) -> Tuple[int, bytes, socket.socket]:
    s = sock or socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: app.test\r\n".encode() + extra + b"\r\n")
    head, rest = readHead(s)
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    while len(rest) < length:
        data = s.recv(65536)
        if not data:
            break
        rest += data
    return int(head.split(b" ", 2)[1]), rest, s


def fetchMetrics(port: int) -> str:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    return data.decode("utf-8", "replace")


def metricValue(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


class TracingIntegrationTests(SynchronousTestCase):
    """
    One proxy process, three listeners (reverse, forward, tcp) from a TOML
    file, sharing the process-wide tracer.
    """

    sample = 1.0

    def setUp(self) -> None:
        self.receiver = Receiver()
        self.addCleanup(self.receiver.stop)
        self.backend = _backend()
        self.addCleanup(self.backend.shutdown)
        self.echo = ThreadedServer(echoHandler)
        self.addCleanup(self.echo.stop)
        self.reversePort, self.forwardPort, self.tcpPort, self.adminPort = (freePort() for _ in range(4))
        self.proxy = self.startProxy(self.receiver.url)

    def startProxy(self, url: str) -> Twistd:
        folder = __import__("tempfile").mkdtemp(prefix="txproxy-trace-")
        self.accessLog = os.path.join(folder, "access.log")
        path = os.path.join(folder, "proxy.toml")
        with open(path, "w") as f:
            f.write(f'''
trace_otlp = "{url}"
trace_sample = {self.sample}
admin = ["tcp:{self.adminPort}:interface=127.0.0.1"]
access_log = "{self.accessLog}"
access_log_format = "json"

[[listeners]]
name = "web"
mode = "reverse"
listen = ["tcp:{self.reversePort}:interface=127.0.0.1"]
route = ["app.test/api=http://127.0.0.1:{self.backend.server_address[1]}"]

[[listeners]]
name = "fwd"
mode = "forward"
listen = ["tcp:{self.forwardPort}:interface=127.0.0.1"]
connect_ports = "*"

[[listeners]]
name = "raw"
mode = "tcp"
listen = ["tcp:{self.tcpPort}:interface=127.0.0.1"]
upstream = ["tcp:127.0.0.1:{self.echo.port}"]
''')
        proxy = Twistd(["--config", path], port=self.reversePort, cwd=folder).start()
        self.addCleanup(proxy.stop)
        waitForPort(self.adminPort, proc=proxy.proc)
        return proxy

    def test_continuationAndReplacement(self) -> None:
        """
        A valid traceparent is continued (the backend sees the trace id with
        txproxy's span as parent; the exported span has the caller's parent;
        the access log line has the ids); an invalid one is replaced.
        """
        status, body, s = request(self.reversePort, f"traceparent: 00-{TRACE}-{PARENT}-01\r\ntracestate: k=v\r\n".encode())
        self.assertEqual(status, 200)
        seen = json.loads(body)
        [sent] = seen["traceparent"]
        self.assertTrue(sent.startswith(f"00-{TRACE}-") and sent.endswith("-01"), sent)
        self.assertEqual(seen["tracestate"], ["k=v"])
        bad = "00-" + TRACE.upper() + "-" + PARENT + "-01"
        status, body, s = request(self.reversePort, f"traceparent: {bad}\r\n".encode(), sock=s)
        [replaced] = json.loads(body)["traceparent"]
        self.assertNotIn(TRACE, replaced.lower())
        s.close()
        spans = self.receiver.waitFor(lambda spans: len(spans) >= 2)
        byTrace = {span.trace_id.hex(): span for span in spans}
        continued = byTrace[TRACE]
        self.assertEqual(continued.parent_span_id.hex(), PARENT)
        self.assertEqual(sent.split("-")[2], continued.span_id.hex())
        self.assertEqual(continued.name, "GET /api")
        attrs = {a.key: a.value for a in continued.attributes}
        self.assertEqual(attrs["http.response.status_code"].int_value, 200)
        self.assertEqual(attrs["http.route"].string_value, "/api")
        new = byTrace[replaced.split("-")[1]]
        self.assertEqual(new.parent_span_id, b"")
        with open(self.accessLog) as f:
            lines = [json.loads(line) for line in f if line.strip()]
        self.assertIn(TRACE, [line.get("trace_id") for line in lines])

    def test_tunnelAndTCP(self) -> None:
        """
        A CONNECT tunnel and a relayed TCP connection are a span each, sent
        once they close.
        """
        s, status, _ = connectThrough(self.forwardPort, f"127.0.0.1:{self.echo.port}")
        self.assertEqual(status, 200)
        s.sendall(b"ping")
        self.assertEqual(s.recv(4), b"ping")
        s.close()
        t = socket.create_connection(("127.0.0.1", self.tcpPort), timeout=10)
        t.sendall(b"hello")
        self.assertEqual(t.recv(5), b"hello")
        t.close()
        spans = self.receiver.waitFor(lambda spans: {"CONNECT", "tcp"} <= {x.name for x in spans})
        connect = [x for x in spans if x.name == "CONNECT"][0]
        attrs = {a.key: a.value for a in connect.attributes}
        self.assertEqual(attrs["txproxy.bytes_up"].int_value, 4)
        tcp = [x for x in spans if x.name == "tcp"][0]
        attrs = {a.key: a.value for a in tcp.attributes}
        self.assertEqual(attrs["txproxy.bytes_down"].int_value, 5)
        self.assertEqual(attrs["txproxy.listener"].string_value, "raw")


class SampleZeroTests(TracingIntegrationTests):
    """
    C{trace_sample = 0}: new traces are propagated but not recorded; a
    sampled parent is.
    """

    sample = 0.0

    def test_continuationAndReplacement(self) -> None:
        """
        New traces send no span (the backend still gets an unsampled
        traceparent); the sampled caller's trace is recorded, alone.
        """
        s = None
        for _ in range(5):
            status, body, s = request(self.reversePort, sock=s)
            [value] = json.loads(body)["traceparent"]
            self.assertTrue(value.endswith("-00"), value)
        request(self.reversePort, f"traceparent: 00-{TRACE}-{PARENT}-01\r\n".encode(), sock=s)
        self.receiver.waitFor(lambda spans: len(spans) >= 1)
        time.sleep(1.5)  # (one more batch interval: nothing else comes)
        self.assertEqual([x.trace_id.hex() for x in self.receiver.spans], [TRACE])

    def test_tunnelAndTCP(self) -> None:
        """
        A TCP connection is a new trace: at ratio 0 it is not exported.
        """
        t = socket.create_connection(("127.0.0.1", self.tcpPort), timeout=10)
        t.sendall(b"hello")
        self.assertEqual(t.recv(5), b"hello")
        t.close()
        status, body, s = request(self.reversePort, f"traceparent: 00-{TRACE}-{PARENT}-01\r\n".encode())
        self.receiver.waitFor(lambda spans: len(spans) >= 1)
        time.sleep(1.5)
        self.assertEqual([x.name for x in self.receiver.spans], ["GET /api"])


class BadCollectorTests(SynchronousTestCase):
    """
    A collector that is dead or stalls never slows requests down; the
    spans it does not take are dropped and counted.
    """

    def setUp(self) -> None:
        self.backend = _backend()
        self.addCleanup(self.backend.shutdown)
        self.port, self.adminPort = freePort(), freePort()

    def startProxy(self, url: str) -> None:
        proxy = Twistd(["--mode", "reverse", "--listen", f"tcp:{self.port}:interface=127.0.0.1",
                        "--route", f"*=http://127.0.0.1:{self.backend.server_address[1]}",
                        "--admin", f"tcp:{self.adminPort}:interface=127.0.0.1", "--trace-otlp", url],
                       port=self.port).start()
        self.addCleanup(proxy.stop)
        waitForPort(self.adminPort, proc=proxy.proc)

    def hammer(self, n: int) -> Tuple[float, float]:
        """
        C{n} requests on one keep-alive connection: the slowest and the
        median latency, in seconds.
        """
        s = None
        times = []
        for _ in range(n):
            t0 = time.monotonic()
            status, body, s = request(self.port, sock=s)
            times.append(time.monotonic() - t0)
            self.assertEqual(status, 200)
        assert s is not None
        s.close()
        times.sort()
        return times[-1], times[len(times) // 2]

    def droppedAtLeast(self, n: int, timeout: float = 15.0) -> float:
        deadline = time.monotonic() + timeout
        value = 0.0
        while time.monotonic() < deadline:
            value = metricValue(fetchMetrics(self.adminPort), "txproxy_trace_spans_dropped_total")
            if value >= n:
                return value
            time.sleep(0.2)
        raise AssertionError(f"txproxy_trace_spans_dropped_total is {value}, expected at least {n}")

    def test_deadCollector(self) -> None:
        """
        Nothing listens at the collector's port: requests are served at
        full speed, and each failed batch's spans are counted as dropped.
        """
        self.startProxy(f"http://127.0.0.1:{freePort()}/v1/traces")
        slowest, median = self.hammer(200)
        self.assertLess(slowest, 0.5)
        self.assertLess(median, 0.05)
        self.droppedAtLeast(200)

    def test_stallingCollector(self) -> None:
        """
        A collector that accepts and never answers: the first batch stays
        in flight (until its timeout), the queue fills and then drops, and
        requests never wait for any of it.
        """
        receiver = Receiver("stall")
        self.addCleanup(receiver.stop)
        self.startProxy(receiver.url)
        # 512 in the batch in flight + 2048 queued; the rest are dropped.
        slowest, median = self.hammer(3000)
        self.assertLess(slowest, 0.5)
        self.assertLess(median, 0.05)
        self.assertGreaterEqual(receiver.posts, 1)
        self.droppedAtLeast(3000 - 512 - 2048)
