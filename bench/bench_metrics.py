#!/usr/bin/env python3
"""
Cost of the metrics on the forward proxy's hot path (issue 7: < 5%).

In one process, on txproxy.testing's fake transports (no sockets, so the
proxy's own Python work is all that is timed), run the same workload with
no metrics object and with a L{txproxy.metrics.Metrics}, alternating
rounds, and report the median time per unit of work:

  tunnels   CONNECT + 200 + 4 relayed chunks + close, per tunnel
  chunks    relayed chunks through one open tunnel (metrics do no per-chunk
            work, so this is the control)
  interleaved  tunnels as above, both variants in alternating batches of 250
            (the more robust comparison on a busy machine)
            Without an access log, the HTTP core skips building each
            request's AccessRecord unless metrics are on, so that variant
            also measures building the record; a second run with a (null)
            access log in both isolates the metrics' own cost.
  calls     the three metrics calls a connection with one tunnel makes
  scrape    one /metrics exposition with OPEN tunnels open

  /tmp/venv/bin/python bench/bench_metrics.py [--tunnels 20000] [--rounds 7]

With --real, instead: real twistd processes on loopback, bench/out/connrate
(CONNECT + 200 + 64-byte echo + close, 32 parallel clients) against
bench/out/backend, for each variant in turn, ROUNDS times (median):

  plain        txproxy, no --admin (no metrics object at all)
  admin        txproxy --admin (metrics counted, /metrics scraped once a second)
  workers2     txproxy --workers 2 --admin (two processes, SO_REUSEPORT)

  /tmp/venv/bin/python bench/bench_metrics.py --real [--seconds 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet.task import Clock  # noqa: E402

from txproxy.metrics import Metrics  # noqa: E402
from txproxy.testing import FakeConnector, connect, forwardFactory  # noqa: E402

CONNECT = b"CONNECT 192.0.2.10:443 HTTP/1.1\r\nHost: 192.0.2.10:443\r\n\r\n"


def makeFactory(withMetrics: bool):
    clock = Clock()
    connector = FakeConnector(autoConnect=True)
    factory = forwardFactory(connector, clock, connect_ports="443", name="bench")
    if withMetrics:
        m = Metrics(processMetrics=False)
        m.bindListener(factory.listener, factory=factory)
        factory.metrics = m
    return factory, connector


def tunnels(n: int, withMetrics: bool) -> float:
    factory, connector = makeFactory(withMetrics)
    gc.collect()
    t0 = time.perf_counter()
    for _ in range(n):
        proto, client = connect(factory)
        proto.dataReceived(CONNECT)
        up = connector.attempts[-1].protocol
        proto.dataReceived(b"a" * 512)
        up.dataReceived(b"b" * 4096)
        proto.dataReceived(b"a" * 512)
        up.dataReceived(b"b" * 4096)
        client.peerClosed()
    dt = time.perf_counter() - t0
    connector.attempts.clear()
    return dt / n


class NullLog:
    """
    An access log that drops records (so both variants build them).
    """

    def log(self, record: object) -> None:
        pass


def interleaved(n: int, batch: int = 250, accessLog: bool = False) -> "tuple[float, float]":
    """
    Tunnels with and without metrics in alternating batches of C{batch}
    (order swapped every batch), so machine noise and drift hit both alike.

    @return: seconds per tunnel without, and with, metrics.
    """
    plain, plainConn = makeFactory(False)
    counted, countedConn = makeFactory(True)
    if accessLog:
        plain.accessLog = counted.accessLog = NullLog()
    spent = {False: 0.0, True: 0.0}
    done = {False: 0, True: 0}
    order = [False, True]
    while done[False] < n:
        for withMetrics in order:
            factory, connector = (counted, countedConn) if withMetrics else (plain, plainConn)
            t0 = time.perf_counter()
            for _ in range(batch):
                proto, client = connect(factory)
                proto.dataReceived(CONNECT)
                up = connector.attempts[-1].protocol
                proto.dataReceived(b"a" * 512)
                up.dataReceived(b"b" * 4096)
                client.peerClosed()
            spent[withMetrics] += time.perf_counter() - t0
            done[withMetrics] += batch
            connector.attempts.clear()
        order.reverse()
    return spent[False] / done[False], spent[True] / done[True]


def chunks(n: int, withMetrics: bool) -> float:
    factory, connector = makeFactory(withMetrics)
    proto, client = connect(factory)
    proto.dataReceived(CONNECT)
    up = connector.attempts[-1].protocol
    data = b"c" * 16384
    fromUp = up.dataReceived
    gc.collect()
    t0 = time.perf_counter()
    for _ in range(n):
        fromUp(data)
        client.clear()
    return (time.perf_counter() - t0) / n


def scrape(openTunnels: int) -> float:
    factory, connector = makeFactory(True)
    for _ in range(openTunnels):
        proto, client = connect(factory)
        proto.dataReceived(CONNECT)
    m = factory.metrics
    m.exposition()
    t0 = time.perf_counter()
    for _ in range(20):
        m.exposition()
    return (time.perf_counter() - t0) / 20


def calls(n: int = 300000) -> float:
    from txproxy.accesslog import AccessRecord

    factory, _ = makeFactory(True)
    m, listener = factory.metrics, factory.listener
    record = AccessRecord(client="c", method="CONNECT", target="t:443", status=200, start=0.0, bytesUp=1, bytesDown=2)
    opened, closed, finished = m.connectionOpened, m.connectionClosed, m.requestFinished
    t0 = time.perf_counter()
    for _ in range(n):
        opened(listener)
        closed(listener)
        finished(listener, record)
    return (time.perf_counter() - t0) / n


# ---------------------------------------------------------------- --real

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(REPO, "bench", "out")


def _freePort() -> int:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _waitListening(port: int, count: int, timeout: float = 60.0) -> None:
    """
    Wait until C{count} sockets listen on C{port} (ss), i.e. every worker.
    """
    import subprocess

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True).stdout
        if len([line for line in out.splitlines() if line.strip()]) >= count:
            return
        time.sleep(0.2)
    raise RuntimeError(f"{count} listeners on {port} not up after {timeout}s")


def _scraper(adminPort: int, stop: Any) -> None:
    import urllib.request

    while not stop.is_set():
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{adminPort}/metrics", timeout=2).read()
        except OSError:
            pass
        stop.wait(1.0)


def realRun(variant: str, echoPort: int, seconds: int, clients: int) -> dict:
    import json
    import signal
    import subprocess
    import tempfile
    import threading

    port, adminPort = _freePort(), _freePort()
    args = [sys.executable, "-m", "twisted", "txproxy", "--listen", f"tcp:{port}:interface=127.0.0.1:backlog=1024",
            "--connect-ports", "*"]
    nproc = 1
    if variant in ("admin", "workers2"):
        args += ["--admin", f"tcp:{adminPort}:interface=127.0.0.1"]
    if variant == "workers2":
        args += ["--workers", "2"]
        nproc = 2
    logf = tempfile.TemporaryFile()
    proxy = subprocess.Popen(args, cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), stdout=logf, stderr=logf,
                             stdin=subprocess.DEVNULL, start_new_session=True)
    stop = threading.Event()
    try:
        _waitListening(port, nproc)
        scraper = None
        if variant != "plain":
            scraper = threading.Thread(target=_scraper, args=(adminPort, stop), daemon=True)
            scraper.start()
        out = subprocess.run([os.path.join(TOOLS, "connrate"), "-p", str(port), "-c", str(clients), "-t", str(seconds),
                              "-C", f"127.0.0.1:{echoPort}", "-s", "64"], capture_output=True, text=True,
                             timeout=seconds + 60).stdout
        result = json.loads(out.strip().splitlines()[-1])
    finally:
        stop.set()
        os.kill(proxy.pid, signal.SIGTERM)
        try:
            proxy.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proxy.pid, signal.SIGKILL)
            proxy.wait()
    return result


def real(a: Any) -> None:
    import subprocess

    backend = subprocess.Popen([os.path.join(TOOLS, "backend"), "-a", "127.0.0.1", "-t", "3600"],
                               stdout=subprocess.PIPE, text=True)
    try:
        ready = backend.stdout.readline().split()  # type: ignore[union-attr]
        echoPort = int(dict(kv.split("=") for kv in ready[1:])["echo"])
        variants = a.variants.split(",")
        rates: dict = {v: [] for v in variants}
        for r in range(a.rounds):
            for v in variants if r % 2 == 0 else list(reversed(variants)):
                res = realRun(v, echoPort, a.seconds, a.clients)
                rate = res.get("cycles_per_s") or res.get("rate") or res.get("cycles/s")
                rates[v].append(float(rate))
                print(f"  round {r + 1} {v:9s} {float(rate):9.0f} tunnels/s  errors={res.get('errors')}",
                      file=sys.stderr, flush=True)
        base = statistics.median(rates[variants[0]])
        for v in variants:
            m = statistics.median(rates[v])
            print(f"{v:9s} {m:9.0f} tunnels/s (median of {a.rounds}: {', '.join(f'{x:.0f}' for x in rates[v])})"
                  f"  {100 * (m - base) / base:+6.1f}% vs {variants[0]}")
    finally:
        backend.terminate()
        backend.wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--real", action="store_true")
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--variants", default="plain,admin,workers2")
    ap.add_argument("--tunnels", type=int, default=20000)
    ap.add_argument("--chunks", type=int, default=200000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--open", type=int, default=10000)
    a = ap.parse_args()
    if a.real:
        real(a)
        return
    for name, fn, n in (("tunnels", tunnels, a.tunnels), ("chunks", chunks, a.chunks)):
        off, on = [], []
        fn(n // 10, False), fn(n // 10, True)  # warm up
        for i in range(a.rounds):
            # Alternate which variant runs first, so drift is not charged to one.
            if i % 2:
                on.append(fn(n, True))
                off.append(fn(n, False))
            else:
                off.append(fn(n, False))
                on.append(fn(n, True))
        mo, mn = statistics.median(off), statistics.median(on)
        print(f"{name:8s} without metrics {mo * 1e6:8.2f} us   with metrics {mn * 1e6:8.2f} us   "
              f"overhead {100 * (mn - mo) / mo:+5.1f}%  (median of {a.rounds} rounds of {n})")
    interleaved(2000)
    off, on = zip(*(interleaved(a.tunnels) for _ in range(a.rounds)))
    mo, mn = statistics.median(off), statistics.median(on)
    print(f"interleaved tunnels: without {mo * 1e6:8.2f} us   with {mn * 1e6:8.2f} us   "
          f"overhead {100 * (mn - mo) / mo:+5.1f}%  (batches of 250 alternating, median of {a.rounds} runs of {a.tunnels})")
    off, on = zip(*(interleaved(a.tunnels, accessLog=True) for _ in range(a.rounds)))
    lo, ln = statistics.median(off), statistics.median(on)
    print(f"interleaved tunnels, access log on in both: without {lo * 1e6:8.2f} us   with {ln * 1e6:8.2f} us   "
          f"overhead {100 * (ln - lo) / lo:+5.1f}%")
    c = calls()
    print(f"calls    {c * 1e6:8.2f} us for connectionOpened + connectionClosed + requestFinished "
          f"= {100 * c / mo:.2f}% of one tunnel's proxy work")
    s = scrape(a.open)
    print(f"scrape   {s * 1e3:8.2f} ms per /metrics exposition with {a.open} open tunnels")


if __name__ == "__main__":
    main()
