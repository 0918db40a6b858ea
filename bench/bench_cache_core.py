"""
Python cost of a cache hit against an uncached proxied request, through
the HTTP core on fake transports (no sockets, no syscalls): what
C{bench/bench_cache.py} measures with wrk, without the event loop and the
kernel, so that a change to the cache's hot path can be compared by the
microsecond (or, with C{--instructions}, nearly deterministically).

    python bench/bench_cache_core.py                      # both, us/request
    python bench/bench_cache_core.py --body 65536
    python bench/bench_cache_core.py --instructions -n 1000
    python bench/bench_cache_core.py --case hit --profile tottime

Cases (C{--case}; C{all} runs both, rounds interleaved):

  - C{uncached}: a reverse proxy without a cache; each request goes to the
    (fake) upstream, which answers it;
  - C{hit}: the same proxy with C{--cache}; the response
    (C{Cache-Control: max-age=3600}) is stored by the warm-up request,
    every request after it is a fresh hit.

The request is the one C{bench/bench_http_core.py --mode reverse} sends
(no Cache-Control, no conditional: the common request).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import time
from typing import List

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from twisted.internet.task import Clock  # noqa: E402

from txproxy.testing import FakeConnector, connect  # noqa: E402

REQUEST = (
    b"GET /index.html HTTP/1.1\r\nHost: app.test\r\nUser-Agent: bench/1.0\r\n"
    b"Accept: */*\r\nAccept-Encoding: gzip\r\nConnection: keep-alive\r\n\r\n"
)
CASES = ("uncached", "hit")


def response(size: int) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Fri, 27 Nov 2026 00:00:00 GMT\r\nContent-Type: text/plain\r\n"
        b"Cache-Control: max-age=3600\r\nLast-Modified: Thu, 26 Nov 2026 00:00:00 GMT\r\nETag: \"5f-400\"\r\n"
        b"Content-Length: %d\r\nConnection: keep-alive\r\n\r\n" % size
    ) + b"x" * size


class Case:
    """
    One case, connected and warmed up, ready to run rounds of C{n}
    keep-alive requests on one client connection.
    """

    def __init__(self, name: str, n: int, size: int) -> None:
        from txproxy import config
        from txproxy.cache import HTTPCache
        from txproxy.reverse import ReverseProxyFactory
        from txproxy.router import RouterService

        self.name, self.n = name, n
        self.response = response(size)
        clock = Clock()
        # The stored response is fresh: the cache's clock reads its Date.
        clock.advance(1795737600.0)
        connector = FakeConnector({}, autoConnect=True)
        listener = config.fromFlags(["tcp:0"], [("name", "web"), ("mode", "reverse"),
                                                ("route", "*=http://192.0.2.1:8001")]).listeners[0]
        router = RouterService([listener], connector, clock)
        factory = ReverseProxyFactory(listener, connector, clock, router=router)
        if name == "hit":
            factory.cache = HTTPCache(64 << 20, 8 << 20, clock)
        self.proto, self.client = connect(factory)
        self.proto.dataReceived(REQUEST)
        self.upProto = connector.last.protocol
        self.upstream = connector.last.transport
        self.upProto.dataReceived(self.response)
        self.client.clear()
        self.upstream.clear()
        self.times: List[float] = []

    def loop(self) -> float:
        n = self.n
        dataReceived = self.proto.dataReceived
        if self.name == "hit":
            start = time.thread_time()
            for _ in range(n):
                dataReceived(REQUEST)
        else:
            upReceived = self.upProto.dataReceived
            resp = self.response
            start = time.thread_time()
            for _ in range(n):
                dataReceived(REQUEST)
                upReceived(resp)
        elapsed = time.thread_time() - start
        data = self.client.value()
        assert data.count(b"HTTP/1.1 200 OK") == n, data[-300:]
        if self.name == "hit":
            assert self.upstream.value() == b"", "a hit went upstream"
            assert b"Cache-Status: txproxy; hit" in data
        self.client.clear()
        self.upstream.clear()
        self.times.append(elapsed)
        return elapsed

    @property
    def best(self) -> float:
        return min(self.times) / self.n * 1e6

    @property
    def median(self) -> float:
        s = sorted(self.times)
        return s[len(s) // 2] / self.n * 1e6


def instructions(case: str, n: int, size: int) -> float:
    """
    Instructions per request under callgrind: a run of three rounds minus
    a run of one, over the extra requests (start-up cancels out).
    """

    def collected(rounds: int) -> int:
        argv = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
                os.path.abspath(__file__), "--case", case, "-n", str(n), "--rounds", str(rounds),
                "--body", str(size)]
        out = subprocess.run(argv, capture_output=True, text=True, check=True)
        match = re.search(r"Collected : (\d+)", out.stderr)
        assert match, out.stderr[-2000:]
        return int(match.group(1))

    return (collected(3) - collected(1)) / (2 * n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=CASES + ("all",), default="all")
    parser.add_argument("-n", type=int, default=5000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--body", type=int, default=1024, help="response body bytes (default 1024)")
    parser.add_argument("--instructions", action="store_true", help="count instructions under callgrind")
    parser.add_argument("--profile", choices=("tottime", "cumulative"), help="cProfile one round")
    args = parser.parse_args()
    names = CASES if args.case == "all" else (args.case,)
    impl = f"{platform.python_implementation()} {platform.python_version()}"
    if args.instructions:
        counts = {name: instructions(name, args.n, args.body) for name in names}
        for name, count in counts.items():
            print(f"{name:<9} body={args.body:<6} {count:10,.0f} instructions/request ({impl})", flush=True)
        if len(counts) == 2:
            print(f"uncached/hit: {counts['uncached'] / counts['hit']:.2f}x")
        return
    cases = [Case(name, args.n, args.body) for name in names]
    if args.profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        for case in cases:
            prof.enable()
            case.loop()
            prof.disable()
        pstats.Stats(prof).sort_stats(args.profile).print_stats(30)
        return
    for _ in range(args.rounds):
        for case in cases:
            case.loop()
    byName: dict = {}
    for case in cases:
        byName[case.name] = case
        print(f"{case.name:<9} body={args.body:<6} best {case.best:6.2f} us/request, "
              f"median {case.median:6.2f} ({impl})", flush=True)
    if len(byName) == 2:
        print(f"uncached/hit (best): {byName['uncached'].best / byName['hit'].best:.2f}x")


if __name__ == "__main__":
    main()
