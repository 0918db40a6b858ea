#!/usr/bin/env python3
"""
The Redis tier's hit cost (issue 15), on its own: lookups per second and
CPU microseconds per lookup of L{txproxy.cache.redis.RedisTier.get}, one
process on one core (core 1), redis-server on the other (core 0), for
1 KiB and 64 KiB blobs, with 1 and 50 lookups in flight.

This is the cost a memory-tier miss pays to be answered from Redis instead
of the origin (the lookup only: the proxy still decodes the blob and writes
the response).  bench_cache.py's txproxy-redis-hit row measures it through
the whole proxy once the cache options exist.

    /work/main/.venv/bin/python bench/bench_cache_redis.py [--gets N] [--repeats R]
    /work/main/.venv-pypy/bin/python bench/bench_cache_redis.py   # PyPy

Run by any interpreter: it re-runs itself pinned with taskset (set
PYPY_GC_NURSERY=32M for PyPy as docs/performance.rst recommends; this
script sets it when unset).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def child(size: int, inflight: int, gets: int, repeats: int) -> None:
    sys.path.insert(0, REPO)
    from twisted.internet import defer, task

    from tests.redisserver import RedisServer
    from txproxy.cache.redis import RedisTier

    @defer.inlineCallbacks
    def run(reactor):  # type: ignore[no-untyped-def]
        server = RedisServer().start()
        # Started from core 1 (it inherits our affinity): move it to core 0.
        subprocess.run(["taskset", "-pc", "0", str(server.pid)], check=True, capture_output=True)
        try:
            tier = RedisTier(server.url, reactor, timeout=5.0)
            tier.start()
            while not tier.available:
                yield task.deferLater(reactor, 0.01, lambda: None)
            blob = os.urandom(size)
            tier.put(b"http://bench.test/x", b"", blob, 600)
            yield tier.ping()
            rates, cpus = [], []
            for _ in range(repeats + 1):  # the first round warms up (JIT)
                left = [gets]

                @defer.inlineCallbacks
                def worker(left=left):  # type: ignore[no-untyped-def]
                    while left[0] > 0:
                        left[0] -= 1
                        got = yield tier.get(b"http://bench.test/x", b"")
                        if got != blob:
                            raise AssertionError("wrong blob")

                t0, c0 = time.perf_counter(), time.process_time()
                yield defer.gatherResults([worker() for _ in range(inflight)])
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                rates.append(gets / wall)
                cpus.append(cpu / gets * 1e6)
            rates, cpus = rates[1:], cpus[1:]
            print(f"{size:>6} B  {inflight:>3} in flight  {statistics.median(rates):>8.0f} gets/s "
                  f"({min(rates):.0f}-{max(rates):.0f})  {statistics.median(cpus):6.1f} us CPU/get  "
                  f"timeouts {tier.timeouts} errors {tier.errors}", flush=True)
            yield tier.stop()
        finally:
            server.cleanup()

    task.react(run)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gets", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", nargs=2, type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.gets, args.repeats)
        return 0
    env = dict(os.environ, PYTHONPATH=REPO)
    if "pypy" in sys.implementation.name:
        env.setdefault("PYPY_GC_NURSERY", "32M")
    print(f"# {sys.implementation.name} {sys.version.split()[0]}: RedisTier.get, {args.gets} gets x {args.repeats}")
    for size in (1024, 65536):
        for inflight in (1, 50):
            subprocess.run(
                ["taskset", "-c", "1", sys.executable, os.path.abspath(__file__), "--gets", str(args.gets),
                 "--repeats", str(args.repeats), "--child", str(size), str(inflight)],
                env=env, check=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
