# -*- test-case-name: tests.test_limiter -*-
"""
Microbenchmark: limiter decisions per second, in memory and through Redis.

    /tmp/venv/bin/python bench/bench_limiter.py [--quick]

Memory backend (no reactor, thread CPU time):

  - C{MemoryLimiter.takeNow}: the bare decision, one hot key / 10,000
    clients round robin / a million distinct clients (expiry sweep at work);
  - C{ListenerLimits.admitRequest} through a memory-only L{LimiterService}:
    what a protocol pays, Deferred and counting included;
  - C{acquire} + C{release} pairs (connection caps);
  - C{admitRequest} with nothing configured (the pre-fired constant path).

Redis backend (a real C{redis-server} started on a free loopback port by
L{tests.redisserver}, real reactor, wall-clock time, C{depth} decisions kept
in flight):

  - one hot key, batching on (default C{kMax} 32) versus off
    (C{batchSize=1}): the round trips batching saves;
  - 10,000 clients round robin (little to batch: a cold key asks for one
    token);
  - one client far over its limit: denials answered from the remembered
    C{retryAfter};
  - C{acquire} + C{release} pairs (two scripts per connection);
  - the same hot key through L{LimiterService} (timeout timers included).

Prints one line per case: decisions/s, and for Redis the round trips per
decision.

A run on 2026-11-27 (CPython 3.11.7, 2 vCPUs shared with other jobs, load
average about 7, so absolute numbers are low and noisy; the ratios are the
point):

    memory takeNow, one hot key                              964,463 /s
    memory takeNow, 10,000 clients round robin               761,988 /s
    memory takeNow, all distinct clients (sweep at work)     677,897 /s
    memory ListenerLimits.admitRequest via LimiterService    253,710 /s
    no limits configured: admitRequest (pre-fired constant)  464,098 /s
    memory acquire + release                                 403,783 /s
    redis take, one hot key, batching on                      41,876 /s  0.033 trips/decision
    redis take, one hot key, batching off                      3,009 /s  1.000
    redis take, 10,000 clients round robin                     2,539 /s  1.000
    redis take, one client far over its limit                 30,838 /s  0.024
    redis acquire + release (2 scripts)                        1,116 /s  2.000
    redis ListenerLimits.admitRequest via LimiterService      18,207 /s  0.044

On the same machine a bare txredisapi C{PING} ran at about 40 us of CPU
and a limiter round trip at about 70 us: the Redis path is bound by
txredisapi's per-command cost, which batching avoids for busy keys.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from typing import Any, Callable, List

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks  # noqa: E402

from tests.redisserver import RedisServer  # noqa: E402
from txproxy.config import ListenerConfig, parseRate  # noqa: E402
from txproxy.limits.service import LimiterService, ListenerLimits, MemoryLimiter  # noqa: E402
from txproxy.limits.redis import RedisLimiter  # noqa: E402


class _Time:
    def __init__(self) -> None:
        self.now = 1000.0

    def seconds(self) -> float:
        return self.now


def _report(name: str, n: int, seconds: float, extra: str = "") -> None:
    print(f"{name:<58} {n / seconds:>12,.0f} decisions/s  {extra}", flush=True)


def _best(fn: Callable[[], float], repeat: int = 3) -> float:
    return min(fn() for _ in range(repeat))


def benchMemory(n: int) -> None:
    clock = _Time()
    limiter = MemoryLimiter(clock)  # type: ignore[arg-type]
    take = limiter.takeNow

    def hot() -> float:
        t = time.thread_time()
        for _ in range(n):
            take("web|10.0.0.1", 1e9, 1e9)
        return time.thread_time() - t

    _report("memory takeNow, one hot key", n, _best(hot))

    keys = [f"web|10.0.{i // 256}.{i % 256}" for i in range(10000)]

    def roundRobin() -> float:
        t = time.thread_time()
        for i in range(n):
            take(keys[i % 10000], 100.0, 200)
        return time.thread_time() - t

    _report("memory takeNow, 10,000 clients round robin", n, _best(roundRobin))

    distinct = [f"web|c{i}" for i in range(n)]

    def churn() -> float:
        lim = MemoryLimiter(clock)  # type: ignore[arg-type]
        tk = lim.takeNow
        t = time.thread_time()
        for i in range(n):
            clock.now += 0.0001
            tk(distinct[i], 10.0, 10)
        return time.thread_time() - t

    _report("memory takeNow, all distinct clients (sweep at work)", n, _best(churn))

    service = LimiterService(clock=clock)  # type: ignore[arg-type]
    limits = ListenerLimits(service, ListenerConfig(listen=("tcp:1",), rate=parseRate("1000000000/s")), "web")
    admit = limits.admitRequest

    def viaService() -> float:
        t = time.thread_time()
        for _ in range(n):
            admit("10.0.0.1").addCallback(lambda d: d)
        return time.thread_time() - t

    _report("memory ListenerLimits.admitRequest via LimiterService", n, _best(viaService))

    none = ListenerLimits(service, ListenerConfig(listen=("tcp:1",)), "web")
    admitNone = none.admitRequest

    def nothing() -> float:
        t = time.thread_time()
        for _ in range(n):
            admitNone("10.0.0.1").addCallback(lambda d: d)
        return time.thread_time() - t

    _report("no limits configured: admitRequest (pre-fired constant)", n, _best(nothing))

    acquireNow = limiter.acquireNow

    def caps() -> float:
        t = time.thread_time()
        for i in range(n):
            acquireNow("web", keys[i % 10000], 100000, 10).lease.release()
        return time.thread_time() - t

    _report("memory acquire + release", n, _best(caps))


@inlineCallbacks
def _drive(n: int, depth: int, decide: Callable[[int], "Deferred[Any]"]) -> Any:
    counter = iter(range(n))

    @inlineCallbacks
    def worker() -> Any:
        for i in counter:
            yield decide(i)

    started = time.perf_counter()
    yield gatherResults([worker() for _ in range(depth)])
    return time.perf_counter() - started


@inlineCallbacks
def benchRedis(reactor: Any, n: int, depth: int) -> Any:
    server = RedisServer().start()
    try:
        results: List[str] = []

        @inlineCallbacks
        def limiterOn(**kwargs: Any) -> Any:
            limiter = RedisLimiter.fromURL(server.url, reactor=reactor, **kwargs)
            limiter.start()
            while not limiter._client.connected:
                yield _sleep(reactor, 0.01)
            yield limiter.loadScripts()
            return limiter

        @inlineCallbacks
        def case(name: str, limiter: RedisLimiter, decide: Callable[[int], "Deferred[Any]"], count: int = n) -> Any:
            calls = limiter.redisCalls
            elapsed = yield _drive(count, depth, decide)
            trips = (limiter.redisCalls - calls) / count
            _report(name, count, elapsed, f"({trips:.3f} round trips/decision, depth {depth})")

        batched = yield limiterOn()
        yield case("redis take, one hot key, batching on", batched,
                   lambda i: batched.take("web|hot", 1e9, 1e9))
        single = yield limiterOn(batchSize=1)
        yield case("redis take, one hot key, batching off", single,
                   lambda i: single.take("web|hot2", 1e9, 1e9))
        yield case("redis take, 10,000 clients round robin", batched,
                   lambda i: batched.take(f"web|10.0.{(i % 10000) // 256}.{i % 256}", 100.0, 200))
        yield case("redis take, one client far over its limit", batched,
                   lambda i: batched.take("web|abuser", 10.0, 10))

        def pair(i: int) -> "Deferred[Any]":
            d = batched.acquire("web", f"c{i % 1000}", 100000, 100)
            d.addCallback(lambda decision: decision.lease.release())
            return d

        yield case("redis acquire + release (2 scripts)", batched, pair, count=max(1000, n // 4))

        service = LimiterService(batched, clock=reactor)
        limits = ListenerLimits(service, ListenerConfig(listen=("tcp:1",), rate=parseRate("1000000000/s"), burst=10 ** 9), "svc")
        yield case("redis ListenerLimits.admitRequest via LimiterService", batched,
                   lambda i: limits.admitRequest("10.0.0.1"))
        assert not service.usingFallback, "fell back during the benchmark"
        for limiter in (batched, single):
            yield limiter.stop()
        del results
    finally:
        server.cleanup()


def _sleep(reactor: Any, seconds: float) -> "Deferred[None]":
    d: "Deferred[None]" = Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer decisions")
    parser.add_argument("--depth", type=int, default=64, help="Redis decisions in flight")
    args = parser.parse_args()
    nMemory = 100000 if args.quick else 1000000
    nRedis = 10000 if args.quick else 100000
    print(f"# {platform.python_implementation()} {platform.python_version()}, {platform.machine()}")
    benchMemory(nMemory)
    from twisted.internet.task import react

    react(lambda reactor: benchRedis(reactor, nRedis, args.depth))


if __name__ == "__main__":
    main()
