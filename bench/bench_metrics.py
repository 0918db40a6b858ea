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
  calls     the three metrics calls a connection with one tunnel makes
  scrape    one /metrics exposition with OPEN tunnels open

  /tmp/venv/bin/python bench/bench_metrics.py [--tunnels 20000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time

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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tunnels", type=int, default=20000)
    ap.add_argument("--chunks", type=int, default=200000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--open", type=int, default=10000)
    a = ap.parse_args()
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
    print(f"calls    {calls() * 1e6:8.2f} us for connectionOpened + connectionClosed + requestFinished")
    s = scrape(a.open)
    print(f"scrape   {s * 1e3:8.2f} ms per /metrics exposition with {a.open} open tunnels")


if __name__ == "__main__":
    main()
