# -*- test-case-name: tests.test_router -*-
"""
Microbenchmark: route lookup cost in L{txproxy.router.RouteTable}, with 10
and with 10,000 routes, for the three shapes of route:

  - exact host:  C{h123.example.com}, looked up as C{H123.example.com:8443}
    (so case folding and port stripping are paid for);
  - wildcard:    C{*.d123.example.com}, looked up as
    C{www.api.d123.example.com};
  - path prefix: one host with prefixes C{/svc123/v1}, looked up as
    C{/svc123/v1/users/42?expand=1}.

Two columns: lookups cycling over the same 10 names whatever the table size
(isolates the cost of the table's size), and over 1,000 distinct names
(adds the cache misses of a big working set; 10-route tables have only 10
names, so both columns equal there).  For
contrast, the same exact-host lookups through a naive linear scan of the
routes are timed too (only for a few thousand lookups at 10,000 routes: it
is slow).

    /tmp/venv/bin/python bench/bench_router.py
    /tmp/pypyvenv/bin/python bench/bench_router.py   # if PyPy is installed

Prints the best of several runs, in nanoseconds of thread CPU time per
match.
"""

from __future__ import annotations

import os
import platform
import random
import sys
import time
import timeit
from typing import Callable, List, Optional, Sequence, Tuple

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from txproxy.config import RouteConfig, UpstreamURL  # noqa: E402
from txproxy.router import Route, RouteTable  # noqa: E402

UPSTREAM = (UpstreamURL("http", "10.0.0.1", 8080),)
SIZES = (10, 10000)
LOOKUPS = 1000


def _routes(n: int, shape: str) -> List[RouteConfig]:
    if shape == "exact":
        return [RouteConfig(host=f"h{i}.example.com", upstreams=UPSTREAM) for i in range(n)]
    if shape == "wildcard":
        return [RouteConfig(host=f"*.d{i}.example.com", upstreams=UPSTREAM) for i in range(n)]
    routes = [
        RouteConfig(host="api.test", prefix=f"/svc{i}/v1", upstreams=UPSTREAM) for i in range(n)
    ]
    return routes + [RouteConfig(host="api.test", upstreams=UPSTREAM)]


def _queries(
    n: int, shape: str, rng: random.Random, distinct: int = LOOKUPS
) -> List[Tuple[str, str]]:
    names = rng.sample(range(n), min(n, distinct))
    picks = [names[i % len(names)] for i in range(LOOKUPS)]
    if shape == "exact":
        return [(f"H{i}.example.com:8443", "/index.html") for i in picks]
    if shape == "wildcard":
        return [(f"www.api.d{i}.example.com", "/index.html") for i in picks]
    return [("api.test", f"/svc{i}/v1/users/42?expand=1") for i in picks]


def _expected(shape: str, query: Tuple[str, str]) -> str:
    host, path = query
    if shape == "exact":
        return host.lower().partition(":")[0]
    if shape == "wildcard":
        return "*." + host.split(".", 2)[2]
    return path.split("/v1")[0] + "/v1"


def _label(route: Optional[Route]) -> str:
    assert route is not None
    return route.config.prefix if route.config.host == "api.test" else route.config.host


def _bestNs(fn: Callable[[], None], count: int, repeat: int = 7) -> float:
    # Thread CPU time, not wall time: on a shared machine being descheduled
    # must not count as lookup cost.
    timer = timeit.Timer(fn, timer=time.thread_time)
    number = 1
    while timer.timeit(number) < 0.2:
        number *= 2
    return min(timer.repeat(repeat, number)) / (number * count) * 1e9


def _linearScan(routes: Sequence[RouteConfig]) -> Callable[[str, str], Optional[RouteConfig]]:
    """
    What a table without indexes does: test every route in order.
    """

    def match(host: str, path: str) -> Optional[RouteConfig]:
        h = host.lower().partition(":")[0]
        for rc in routes:
            if rc.host == h and path.startswith(rc.prefix):
                return rc
        return None

    return match


def main() -> None:
    rng = random.Random(42)
    print(
        f"# {platform.python_implementation()} {platform.python_version()} on {platform.machine()}"
    )
    print("# ns per RouteTable.match(), best of 7; hot10: 1000 lookups over 10 names,")
    print("# wide: 1000 lookups over min(routes, 1000) names")
    print(f"{'case':<10}{'routes':>8}{'hot10 ns':>10}{'wide ns':>10}{'build ms':>10}")
    results = {}
    for shape in ("exact", "wildcard", "prefix"):
        for n in SIZES:
            routes = _routes(n, shape)
            t0 = time.perf_counter()
            table = RouteTable.build(routes)
            buildMs = (time.perf_counter() - t0) * 1e3
            match = table.match
            timings = []
            for distinct in (10, LOOKUPS):
                queries = _queries(n, shape, rng, distinct)
                for q in queries[:50]:
                    got = _label(match(*q))
                    assert got == _expected(shape, q), (shape, q, got)

                def run(
                    queries: List[Tuple[str, str]] = queries, match: Callable[..., object] = match
                ) -> None:
                    for host, path in queries:
                        match(host, path)

                timings.append(_bestNs(run, len(queries)))
            results[(shape, n)] = timings[0]
            print(f"{shape:<10}{n:>8}{timings[0]:>10.0f}{timings[1]:>10.0f}{buildMs:>10.1f}")

    def noop(host: str, path: str) -> None:
        return None

    queries = _queries(10, "exact", rng, 10)

    def runNoop(queries: List[Tuple[str, str]] = queries) -> None:
        for host, path in queries:
            noop(host, path)

    print(f"{'(loop+call overhead, included above)':<28}{_bestNs(runNoop, len(queries)):>10.0f}")
    floorTable = {f"h{i}.example.com": i for i in range(10)}

    def floor(host: str, path: str) -> object:
        return floorTable.get(host.lower().partition(":")[0])

    def runFloor(queries: List[Tuple[str, str]] = queries) -> None:
        for host, path in queries:
            floor(host, path)

    print(f"{'(floor: dict.get(lower+strip))':<28}{_bestNs(runFloor, len(queries)):>10.0f}")
    for shape in ("exact", "wildcard", "prefix"):
        small, big = results[(shape, SIZES[0])], results[(shape, SIZES[1])]
        print(f"# {shape}: hot10 at 10,000 routes / at 10 routes = {big / small:.2f}x")
    print("# contrast: naive linear scan, exact host")
    for n in SIZES:
        routes = _routes(n, "exact")
        scan = _linearScan(routes)
        queries = _queries(n, "exact", rng)[: 1000 if n <= 10 else 50]

        def runScan(
            queries: List[Tuple[str, str]] = queries, scan: Callable[..., object] = scan
        ) -> None:
            for host, path in queries:
                scan(host, path)

        print(f"{'scan':<10}{n:>8}{'':>10}{_bestNs(runScan, len(queries), repeat=3):>10.0f}")


if __name__ == "__main__":
    main()
