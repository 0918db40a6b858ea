#!/usr/bin/env python3
"""
Cost of tracing (issue 16: sample 1.0 costs <= 10% of req/s, sample 0 <= 2%).

Default (--real): real twistd processes, reverse proxy, keep-alive HTTP:
``wrk -t1 -c50`` (bench/http/wrk_report.lua) through txproxy to one nginx
worker answering 12 bytes.  For each interpreter given (--cpython PATH,
--pypy PATH) three proxy variants, all pinned to core 1, each started
afresh for every measurement (``--processes shared`` keeps one process
per variant for all rounds instead, which measures those processes more
than the variants: two processes of the same code differ by up to about
10% for their whole life; ``--processes toggle`` runs one process per
interpreter and switches its tracer between wrk runs, through
bench/tracing_toggle.py, so the variants share one process's speed):

  off       no --trace-otlp
  sample0   --trace-otlp (local receiver) --trace-sample 0: every request
            parses and propagates W3C trace context, no span is recorded
  sample1   --trace-otlp (local receiver) --trace-sample 1: every request
            is a span, exported in batches to the receiver

The collector is the origin nginx itself (``POST /v1/traces`` answered 200,
body read and discarded, nothing decoded: next to no CPU on core 0, where
wrk runs), so the proxy pays what it would pay a remote collector (the
encoding, the POST and its socket writes) and the load generator is not
slowed by a local decoder; decoding the protobuf is the integration
tests' receiver's job, not the benchmark's.  With
--python-receiver, a small Python OTLP/HTTP endpoint that counts batches
and bytes instead (it competes with wrk for core 0, which lowers every
rate and raises CPU per request of the traced variants).  Rounds
are interleaved (every variant once per round, order reversed on odd
rounds); each measurement is SECONDS of wrk after a warm-up (longer for
PyPy).  The table shows median req/s (min-max), the proxy's CPU per
request (microseconds: its CPU time over requests served, much less
sensitive to other load than req/s), split into user and system time
(from /proc/PID/stat: tracing adds user time only), p99 latency, and
each variant's ratio to ``off`` (of medians, and the median of per-round
paired ratios).

With --instructions (and no --micro or --part): the real CPython proxy
under callgrind, one variant at a time, its instructions per request
while serving wrk (zeroed after a warm-up, dumped after --seconds, at
least 8): the same measure as --micro --instructions, on the real process
(reactor, sockets' Python side, garbage collector, the POSTs included).

  python bench/bench_tracing.py --instructions --cpython /work/main/.venv/bin/python

  python bench/bench_tracing.py --cpython /work/main/.venv/bin/python \\
      --pypy /work/main/.venv-pypy/bin/python [--seconds 5] [--repeats 5]

With --micro, instead: in one process, on txproxy.testing's fake transports
(no sockets: only txproxy's own Python work is timed), the same reverse
keep-alive request with no tracer, a tracer at sample 0 and a tracer at
sample 1 whose exporter encodes every span to OTLP protobuf (the POST is
a no-op), in alternating batches; prints CPU microseconds per request
(process time, so other load on the machine matters less).

  python bench/bench_tracing.py --micro [--requests 50000] [--variant all]

Variants (--variant): off, sample0, sample1 (the default three: a request
without trace fields), and with 'all' also off-parent, sample0-parent and
sample1-parent: the same request carrying a valid traceparent (sampled flag
clear for sample0-parent, set for sample1-parent), compared with
off-parent.  --profile SORT cProfiles each variant instead.

With --micro --instructions, each variant's instructions per request under
valgrind's callgrind instead (a run of three rounds of -n requests minus a
run of one, so start-up cancels out; nearly deterministic, unlike times on
a shared machine; a few minutes per variant):

  python bench/bench_tracing.py --micro --instructions -n 1000 [--variant all]

With --part NAME (or all), one piece of a traced request's work alone, per
call (process time, or with --instructions under callgrind): start0
(sample 0, no traceparent: the span and its traceparent line), start0-parent
(an incoming traceparent parsed and propagated), start1 (sample 1: the span
and its start attributes), ended1 (start1, then the end attributes, the
encoding and the queueing), encode (one span's encoding), batch (a span's
share of encoding a 500-span request), sample1 (ended1 with a batch every
500 spans).

  python bench/bench_tracing.py --part all --instructions -n 2000

With --post, instead: the CPU of sending one batch (a 213 kB body, about
512 spans) to a local receiver (a Python http.server in another process),
with Twisted's Agent (what https:// collectors use) and with txproxy's own
HTTP/1.1 client (http://), alternating; prints CPU and wall microseconds
per POST.

  python bench/bench_tracing.py --post [--posts 300]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

RECEIVER = r"""
import http.server, sys, threading
count = [0, 0]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def log_message(self, *a): pass
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        count[0] += 1; count[1] += len(body)
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
    def do_GET(self):
        out = ("%d %d" % tuple(count)).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(out))); self.end_headers()
        self.wfile.write(out)
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print("READY", s.server_address[1], flush=True)
s.serve_forever()
"""


# ---------------------------------------------------------------- --micro

#: The request and response --micro proxies (what wrk sends, what nginx answers).
REQUEST = b"GET /index.html HTTP/1.1\r\nHost: app.test\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nContent-Type: text/plain\r\n\r\nhello world\n"
#: The same request carrying a W3C traceparent (sampled flag as the variant says).
PARENTED = (b"GET /index.html HTTP/1.1\r\nHost: app.test\r\nUser-Agent: wrk\r\nAccept: */*\r\n"
            b"traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-%s\r\n\r\n")

#: --micro variants: (trace sample ratio or None for no tracer, request).
VARIANTS: Dict[str, Any] = {
    "off": (None, REQUEST),
    "sample0": (0.0, REQUEST),
    "sample1": (1.0, REQUEST),
    # (The traced variants with a traceparent compare with this one.)
    "off-parent": (None, PARENTED % b"00"),
    "sample0-parent": (0.0, PARENTED % b"00"),
    "sample1-parent": (1.0, PARENTED % b"01"),
}
#: Requests between two runs of the exporter's timer (a batch per run).
BATCH = 500


class MicroCase:
    """
    One --micro variant, connected and warmed up: a reverse proxy on fake
    transports, a keep-alive client connection and its upstream connection.
    The exporter's POST only counts the bytes (the batch is encoded).
    """

    def __init__(self, variant: str) -> None:
        from twisted.internet import defer
        from twisted.internet.task import Clock

        from txproxy.testing import FakeConnector, connect, reverseFactory
        from txproxy.tracing import BatchExporter, Tracer

        self.variant = variant
        self.posted = 0

        def post(body: bytes) -> Any:
            self.posted += len(body)
            return defer.succeed(None)

        ratio, self.request = VARIANTS[variant]
        self.clock = clock = Clock()
        self.connector = connector = FakeConnector(autoConnect=True)
        factory = reverseFactory({"*": "http://192.0.2.1:8080"}, connector=connector, clock=clock)
        if ratio is not None:
            factory.tracer = Tracer(ratio, BatchExporter(post, clock, maxQueue=4096))
        self.proto, self.client = connect(factory)
        self.proto.dataReceived(self.request)
        connector.attempts[-1].protocol.dataReceived(RESPONSE)
        self.round(BATCH)

    def round(self, n: int) -> None:
        """
        C{n} requests, the exporter's timer run every L{BATCH} of them.
        """
        upstream = self.connector.attempts[-1]
        fromClient, fromUp = self.proto.dataReceived, upstream.protocol.dataReceived
        request, response, advance = self.request, RESPONSE, self.clock.advance
        done = 0
        while done < n:
            for _ in range(min(BATCH, n - done)):
                fromClient(request)
                fromUp(response)
            # The exporter's timer: batches are sent here, inside the timed
            # region (their cost is part of the requests').
            advance(1.0)
            done += BATCH
        self.client.clear()
        upstream.transport.clear()


def micro(requests: int, variants: List[str]) -> Dict[str, float]:
    """
    Process CPU microseconds per request of C{variants}, in alternating
    batches of L{BATCH} requests.
    """
    cases = {v: MicroCase(v) for v in variants}
    spent = {v: 0.0 for v in cases}
    done = 0
    order = list(cases)
    gc.collect()
    while done < requests:
        for v in order:
            t0 = time.process_time()
            cases[v].round(BATCH)
            spent[v] += time.process_time() - t0
        done += BATCH
        order.reverse()
    out = {v: spent[v] / done * 1e6 for v in cases}
    out["bytesPosted"] = float(sum(c.posted for c in cases.values()))
    return out


def instructions(variant: str, n: int, part: str = "") -> float:
    """
    Instructions per request (or per call of a --part) under callgrind: a
    run of three rounds minus a run of one, over the extra requests (start-up
    and imports cancel out).
    """
    import re

    def collected(rounds: int) -> int:
        argv = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
                os.path.abspath(__file__), "--rounds", str(rounds), "-n", str(n)]
        argv += ["--part", part] if part else ["--micro", "--variant", variant]
        out = subprocess.run(argv, capture_output=True, text=True, check=True)
        match = re.search(r"Collected : (\d+)", out.stderr)
        assert match, out.stderr[-2000:]
        return int(match.group(1))

    return (collected(3) - collected(1)) / (2 * n)


# ---------------------------------------------------------------- --part

def partCall(part: str) -> Any:
    """
    One piece of a traced request's work, as a function of no argument, for
    --part (counted alone under callgrind, per call).
    """
    from twisted.internet import defer
    from twisted.internet.task import Clock

    from txproxy.http import parseRequestHead
    from txproxy.testing import connect, reverseFactory
    from txproxy.tracing import BatchExporter, Tracer, encodeSpans, endSpan, startHTTPSpan
    from txproxy.tracing._otlp import encodeSpanField

    clock = Clock()
    sink = defer.succeed(None)
    tracer0 = Tracer(0.0, BatchExporter(lambda body: sink, clock))
    tracer1 = Tracer(1.0, BatchExporter(lambda body: sink, clock, maxQueue=1 << 30, batchSize=1 << 20))
    raw = REQUEST
    head = parseRequestHead(raw)
    rawParent = PARENTED % b"00"
    parented = parseRequestHead(rawParent)
    proto, _ = connect(reverseFactory({"*": "http://192.0.2.1:8080"}))
    client, transport = proto.client, proto.transport
    from txproxy.tracing import connectionAttributes

    base = connectionAttributes(client, transport, True)

    class Route:
        name = "*"
        prefix = "/"

    route = Route()

    def start1() -> Any:
        return startHTTPSpan(tracer1, head, client, transport, False, 1.7e9, raw, base)

    def ended() -> Any:
        span = start1()
        endSpan(tracer1, span, 200, "", 80, 120, "192.0.2.1:8080", "tcp:8080", "reverse", 1.7e9 + 0.001, route)
        return span

    span = ended()
    fields = [encodeSpanField(span)] * BATCH
    exporter = tracer1.exporter

    def flushEvery() -> None:
        ended()
        if len(exporter) >= BATCH:
            exporter._send()

    calls = {
        # sample 0, no traceparent: the span (ids) and the traceparent line.
        "start0": lambda: startHTTPSpan(tracer0, head, client, transport, False, 1.7e9, raw, base).traceField(),
        # an incoming traceparent, parsed and propagated (the new field list).
        "start0-parent": lambda: startHTTPSpan(tracer0, parented, client, transport, False, 1.7e9, rawParent,
                                               base).propagate(parented.headers),
        # sample 1: the span and its start attributes.
        "start1": start1,
        # ... and its end attributes, its encoding, queueing (no batch sent).
        "ended1": ended,
        # one span's share of a batch (encodeRequest of BATCH spans).
        "batch": lambda: encodeRequestShare(),
        # everything of sample 1 with a batch sent every BATCH spans.
        "sample1": flushEvery,
        "encode": lambda: encodeSpanField(span),
        "encodeSpans": lambda: encodeSpans([span], exporter.resource),
    }
    from txproxy.tracing._otlp import encodeRequest

    counter = [0]

    def encodeRequestShare() -> None:
        counter[0] += 1
        if counter[0] % BATCH == 0:
            encodeRequest(fields, exporter.resource, ("txproxy", "1"))

    return calls[part]


PARTS = ("start0", "start0-parent", "start1", "ended1", "encode", "batch", "sample1")


def runPart(part: str, n: int, rounds: int) -> None:
    call = partCall(part)
    for _ in range(BATCH):
        call()
    gc.collect()
    gc.freeze()
    for _ in range(rounds):
        for _ in range(n):
            call()


# ---------------------------------------------------------------- --post

def posts(count: int, size: int = 213000, rounds: int = 2) -> int:
    from twisted.internet import defer, reactor, task

    from txproxy.tracing import HTTPPoster, agentPoster

    rx = subprocess.Popen([sys.executable, "-c", RECEIVER], stdout=subprocess.PIPE)
    try:
        assert rx.stdout is not None
        port = int(rx.stdout.readline().split()[1])
        url = f"http://127.0.0.1:{port}/v1/traces"
        body = os.urandom(size)

        @defer.inlineCallbacks
        def run(_: Any) -> Any:
            for n in range(rounds):
                for name, post in (("agent", agentPoster(reactor, url)), ("own client", HTTPPoster(reactor, url))):
                    for _ in range(30):
                        yield post(body)
                    t0, w0 = time.process_time(), time.time()
                    for _ in range(count):
                        yield post(body)
                    cpu = (time.process_time() - t0) / count * 1e6
                    wall = (time.time() - w0) / count * 1e6
                    print(f"{sys.implementation.name} round {n + 1} {name:10s}: {cpu:6.0f} us CPU/POST, "
                          f"{wall:6.0f} us wall ({size} bytes)")

        task.react(run)
    finally:
        rx.kill()
    return 0


# ---------------------------------------------------------------- --real

def real(args: argparse.Namespace) -> int:
    import bench_http as H
    import benchlib as B

    tmp = B.mktemp("tracing")
    servers: List[Any] = []
    results: Dict[str, List[Any]] = {}
    split: Dict[str, List[Any]] = {}
    received = ""
    if args.instructions:
        return realInstructions(args)
    try:
        originPort = B.free_port()
        origin = B.start_and_wait(H.start_origin(tmp, originPort), originPort)
        servers.append(origin)
        if args.python_receiver:
            rx = B.Server("receiver", [args.cpython, "-c", RECEIVER], B.GEN_CPU, tmp, stdout=subprocess.PIPE)
            servers.append(rx)
            line = rx.proc.stdout.readline().decode()
            if not line.startswith("READY"):
                raise RuntimeError("receiver did not start: " + rx.log_tail())
            rxPort = int(line.split()[1])
        else:
            # The origin nginx answers the POSTs (200, body discarded): a
            # collector that costs core 0 next to nothing, so the load
            # generator drives every variant alike.
            rxPort = originPort
        url = f"http://127.0.0.1:{rxPort}/v1/traces"
        running = []
        interpreters = [("cpython", args.cpython)] + ([("pypy", args.pypy)] if args.pypy else [])

        def start(name: str, python: str, extra: List[str]) -> Any:
            port = B.free_port()
            argv = H.twistd(python) + ["--mode", "reverse", "--listen",
                                       f"tcp:{port}:interface=127.0.0.1:backlog=1024",
                                       "--route", f"*=http://127.0.0.1:{originPort}"] + extra
            server = B.Server(name, argv, B.PROXY_CPU, tmp, env=dict(os.environ, PYTHONPATH=B.REPO), cwd=B.REPO)
            servers.append(server)
            B.start_and_wait(server, port)
            return server, port

        toggled: Dict[str, Any] = {}
        for label, python in interpreters:
            if args.processes == "toggle":
                # One process per interpreter; the variant is switched
                # between wrk runs (bench/tracing_toggle.py).
                control = os.path.join(tmp, f"{label}.variant")
                with open(control, "w") as f:
                    f.write("sample1")
                port = B.free_port()
                argv = [python, os.path.join(B.REPO, "bench", "tracing_toggle.py"), control] + H.twistd(python)[1:]
                argv += ["--mode", "reverse", "--listen", f"tcp:{port}:interface=127.0.0.1:backlog=1024",
                         "--route", f"*=http://127.0.0.1:{originPort}", "--trace-otlp", url, "--trace-sample", "1"]
                server = B.Server(f"{label}-toggle", argv, B.PROXY_CPU, tmp, env=dict(os.environ, PYTHONPATH=B.REPO),
                                  cwd=B.REPO)
                servers.append(server)
                B.start_and_wait(server, port)
                H.wrk(f"http://127.0.0.1:{port}/", args.warmup * (3 if label == "pypy" else 1), host="app.test")
                for variant in ("off", "sample0", "sample1"):
                    name = f"{label}-{variant}"
                    toggled[name] = (control, variant)
                    running.append((name, server, port, label))
                continue
            for variant, extra in (("off", []), ("sample0", ["--trace-otlp", url, "--trace-sample", "0"]),
                                   ("sample1", ["--trace-otlp", url, "--trace-sample", "1"])):
                name = f"{label}-{variant}"
                if args.processes == "fresh":
                    # Started in each round instead (see --processes).
                    running.append((name, (python, extra), None, label))
                else:
                    server, port = start(name, python, extra)
                    running.append((name, server, port, label))
        if args.processes == "shared":
            for _name, _server, port, label in running:
                H.wrk(f"http://127.0.0.1:{port}/", args.warmup * (3 if label == "pypy" else 1), host="app.test")

        def measure(item: Any) -> None:
            name, server, port, label = item
            if port is None:
                # A fresh process for this measurement: a process keeps a
                # speed of its own (bench/README.md, ab_reverse.sh).
                python, extra = server
                server, port = start(name, python, extra)
                H.wrk(f"http://127.0.0.1:{port}/", args.warmup * (3 if label == "pypy" else 1), host="app.test")
                try:
                    measureOn(name, server, port)
                finally:
                    server.stop()
                    servers.remove(server)
                return
            if name in toggled:
                control, variant = toggled[name]
                with open(control, "w") as f:
                    f.write(variant)
                os.kill(server.pid, signal.SIGUSR1)
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    if os.path.exists(control + ".applied") and open(control + ".applied").read() == variant:
                        break
                    time.sleep(0.05)
                else:
                    raise RuntimeError(f"{name}: the proxy did not switch its tracer")
                # (Warm the variant's path again: PyPy compiles it afresh.)
                H.wrk(f"http://127.0.0.1:{port}/", 1.0 * (3 if label == "pypy" else 1), host="app.test")
            measureOn(name, server, port)

        def measureOn(name: str, server: Any, port: int) -> None:
            u0, s0 = userSystem(server.pid)
            sample = B.measured(lambda: H.wrk(f"http://127.0.0.1:{port}/", args.seconds, host="app.test"),
                                server.pid, None, "rps")
            u1, s1 = userSystem(server.pid)
            served = sample.extra.get("requests") or 0
            if sample.value and served:
                # The proxy's own user and system CPU over the requests wrk
                # counted (microseconds per request).
                split.setdefault(name, []).append(((u1 - u0) / served * 1e6, (s1 - s0) / served * 1e6))
            results.setdefault(name, []).append(sample)
            B.log(f"  {name}: {sample.value or 0:.0f} req/s, cpu {sample.proxy_cpu or 0:.2f}"
                  + (f" (user {split[name][-1][0]:.1f} + sys {split[name][-1][1]:.1f} us/req)" if name in split else ""))

        B.rounds(running, args, "tracing", measure)
        if args.python_receiver:
            import urllib.request

            with urllib.request.urlopen(f"http://127.0.0.1:{rxPort}/", timeout=10) as answer:
                posts, nbytes = answer.read().split()
            received = f"receiver: {int(posts)} batches, {int(nbytes) / 1e6:.1f} MB of OTLP"
    finally:
        for s in reversed(servers):
            s.stop()
    rows = []
    summaries = {name: B.summarize(samples) for name, samples in results.items()}
    for name, summary in summaries.items():
        label, variant = name.split("-")
        base = summaries.get(f"{label}-off", {})
        ratio = ""
        if variant != "off" and base.get("median") and summary.get("median"):
            paired = [a.value / b.value for a, b in zip(results[name], results[f"{label}-off"])
                      if a.value and b.value]
            ratio = f"{summary['median'] / base['median']:.3f} (paired {statistics.median(paired):.3f})"
        p99 = statistics.median([s.extra.get("p99_ms", 0) for s in results[name] if s.value]) if summary.get("n") else 0
        cpu = summary.get("cpu_per_unit")
        baseCpu = base.get("cpu_per_unit")
        us = (f"{statistics.median(u for u, _ in split[name]):.1f} + {statistics.median(y for _, y in split[name]):.1f}"
              if split.get(name) else "-")
        summary["user_sys_us_per_request"] = split.get(name, [])
        rows.append([name, B.cell(summary, ".0f"),
                     f"{cpu * 1e6:.1f}" if cpu else "-", us,
                     f"{cpu / baseCpu - 1:+.1%}" if cpu and baseCpu and variant != "off" else "",
                     f"{p99:.2f}", ratio])
    B.print_table(["variant", "req/s median (min-max)", "CPU us/req", "user + sys", "CPU vs off", "p99 ms",
                   "req/s vs off"], rows)
    print(received)
    path = B.write_json("tracing", {"summaries": summaries, "args": vars(args), "machine": B.machine_info(),
                                    "receiver": received})
    print(f"JSON: {path}")
    return 0


def userSystem(pid: int) -> Any:
    """
    The user and system CPU seconds of process C{pid} (not its children).
    """
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def realInstructions(args: argparse.Namespace) -> int:
    """
    --instructions without --micro: the real proxy (twistd, CPython) under
    callgrind, one variant at a time, serving ``wrk -c20`` for --seconds
    after a warm-up; its instructions (user space only) between a zeroing
    and a dump of callgrind's counters, over the requests wrk counted.
    Nearly independent of other load on the machine (the rate is not).
    """
    import glob
    import re
    import socket

    import bench_http as H
    import benchlib as B

    tmp = B.mktemp("tracing-instructions")
    servers: List[Any] = []
    counts: Dict[str, float] = {}
    try:
        originPort = B.free_port()
        servers.append(B.start_and_wait(H.start_origin(tmp, originPort), originPort))
        url = f"http://127.0.0.1:{originPort}/v1/traces"
        for variant, extra in (("off", []), ("sample0", ["--trace-otlp", url, "--trace-sample", "0"]),
                               ("sample1", ["--trace-otlp", url, "--trace-sample", "1"])):
            port = B.free_port()
            out = os.path.join(tmp, f"callgrind.{variant}")
            argv = (["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p"] + H.twistd(args.cpython)
                    + ["--mode", "reverse", "--listen", f"tcp:{port}:interface=127.0.0.1:backlog=1024",
                       "--route", f"*=http://127.0.0.1:{originPort}"] + extra)
            server = B.Server(f"callgrind-{variant}", argv, B.PROXY_CPU, tmp,
                              env=dict(os.environ, PYTHONPATH=B.REPO), cwd=B.REPO)
            servers.append(server)
            deadline = time.monotonic() + 120
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), 1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or not server.alive():
                        raise RuntimeError("proxy under callgrind did not start: " + server.log_tail())
                    time.sleep(0.5)
            H.wrk(f"http://127.0.0.1:{port}/", 5, conns=20, host="app.test")
            subprocess.run(["callgrind_control", "--zero", str(server.pid)], check=True, capture_output=True)
            res = H.wrk(f"http://127.0.0.1:{port}/", max(args.seconds, 8), conns=20, host="app.test")
            subprocess.run(["callgrind_control", "--dump", str(server.pid)], check=True, capture_output=True)
            time.sleep(1)
            dumps = sorted(glob.glob(f"{out}.{server.pid}*"), key=os.path.getmtime)
            with open(dumps[-1]) as f:
                match = re.search(r"^(?:summary|totals): (\d+)", f.read(), re.M)
            assert match and res.get("requests"), (res, dumps)
            counts[variant] = int(match.group(1)) / res["requests"]
            off = counts.get("off")
            extra_ = f"  (+{counts[variant] - off:,.0f}, {counts[variant] / off - 1:+.1%} vs off)" if off and variant != "off" else ""
            print(f"real {variant:8s} {counts[variant]:10,.0f} instructions/request over {res['requests']} requests"
                  f"{extra_}", flush=True)
            server.stop()
            servers.remove(server)
    finally:
        for s in reversed(servers):
            s.stop()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--micro", action="store_true")
    parser.add_argument("--requests", type=int, default=50000)
    parser.add_argument("--variant", default="main", choices=list(VARIANTS) + ["main", "all"],
                        help="--micro: one variant, 'main' (off, sample0, sample1) or 'all'")
    parser.add_argument("--instructions", action="store_true",
                        help="instructions per request (or call) under callgrind: with --micro or --part in "
                             "process, else of the real proxy (CPython) serving wrk")
    parser.add_argument("--part", choices=PARTS + ("all",), help="one piece of the traced request's work, alone")
    parser.add_argument("-n", type=int, default=2000, help="--instructions: requests (calls) per round")
    parser.add_argument("--rounds", type=int, default=0, help="(internal) rounds of -n, counted by callgrind")
    parser.add_argument("--profile", metavar="SORT", help="--micro: cProfile each variant, sorted by SORT")
    parser.add_argument("--post", action="store_true")
    parser.add_argument("--posts", type=int, default=300)
    parser.add_argument("--cpython", default=sys.executable)
    parser.add_argument("--pypy", default=None)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--processes", choices=("fresh", "shared", "toggle"), default="fresh",
                        help="real mode: start each variant's proxy afresh for every measurement (default), or "
                             "keep one process per variant for all rounds (a process keeps a speed of its own, "
                             "up to about +-10%%: see bench/README.md, ab_reverse.sh), or one process per "
                             "interpreter whose tracer is switched between wrk runs (toggle: bench/tracing_toggle.py)")
    parser.add_argument("--wait-quiet", type=float, default=10.0)
    parser.add_argument("--python-receiver", action="store_true",
                        help="collect with a Python http.server that counts batches and bytes (it shares "
                             "core 0 with wrk, and slows it), instead of the origin nginx")
    args = parser.parse_args()
    if args.post:
        return posts(args.posts)
    impl = f"{sys.implementation.name} {'.'.join(map(str, sys.version_info[:3]))}"
    if args.part:
        parts = PARTS if args.part == "all" else (args.part,)
        if args.rounds:
            runPart(parts[0], args.n, args.rounds)
            return 0
        for part in parts:
            if args.instructions:
                print(f"{part:14s} {instructions('', args.n, part):10,.0f} instructions/call ({impl})", flush=True)
            else:
                call = partCall(part)
                for _ in range(BATCH):
                    call()
                t0 = time.process_time()
                for _ in range(args.requests):
                    call()
                print(f"{part:14s} {(time.process_time() - t0) / args.requests * 1e6:8.2f} us/call ({impl})")
        return 0
    if args.micro:
        variants = (["off", "sample0", "sample1"] if args.variant == "main"
                    else list(VARIANTS) if args.variant == "all" else [args.variant])
        if args.rounds:
            case = MicroCase(variants[0])
            # (What exists now is never collected: a full collection that
            # falls in one run and not in the other would be counted.)
            gc.collect()
            gc.freeze()
            for _ in range(args.rounds):
                case.round(args.n)
            return 0
        if args.profile:
            import cProfile
            import pstats

            for v in variants:
                case = MicroCase(v)
                profile = cProfile.Profile()
                profile.runcall(case.round, args.requests)
                print(f"== {v}, {args.requests} requests")
                pstats.Stats(profile).sort_stats(args.profile).print_stats(25)
            return 0
        if args.instructions:
            counts = {v: instructions(v, args.n) for v in variants}
            for v, count in counts.items():
                baseline = "off-parent" if v.endswith("-parent") else "off"
                off = counts.get(baseline)
                extra = f"  (+{count - off:,.0f}, {count / off - 1:+.1%} vs {baseline})" if off and v != baseline else ""
                print(f"{v:15s} {count:10,.0f} instructions/request{extra} ({impl})", flush=True)
            return 0
        res = micro(args.requests, variants)
        for v in variants:
            baseline = "off-parent" if v.endswith("-parent") else "off"
            off = res.get(baseline)
            extra = f"  ({res[v] / off - 1:+.1%} vs {baseline})" if off and v != baseline else ""
            print(f"{impl} {v:15s} {res[v]:7.2f} us/request{extra}")
        print(json.dumps(res))
        return 0
    return real(args)


if __name__ == "__main__":
    sys.exit(main())
