"""
Python cost of one proxied HTTP request through the HTTP core, on fake
transports (no sockets, no syscalls): parse, policy (limiter included),
route, pool, serialize both ways.  Prints microseconds of thread CPU time
per request, best and median of interleaved rounds, which is the ceiling
the event loop and syscalls are added to.

    python bench/bench_http_core.py                                  # forward, no limiter
    python bench/bench_http_core.py --mode reverse --limiter all     # none, memory, redis-fake
    python bench/bench_http_core.py --mode reverse --limiter all --instructions -n 1000
    python bench/bench_http_core.py --mode reverse --limiter memory --profile tottime

The first line says whether the core runs compiled (mypyc) or pure: the
benchmark imports the checkout's txproxy, so build the extensions in place
(C{python setup.py build_ext --inplace}, in a copy of the checkout) and
compare with C{TXPROXY_PURE=1}, which makes the same tree import the pure
modules.

Modes: C{forward} (an absolute-URI GET through the forward proxy) and
C{reverse} (an origin-form GET routed by C{Host} to one backend, as
C{bench/bench_http.py}'s reverse runs: C{--route '*=http://...'}).

Limiters (C{--limiter}; C{all} runs each, rounds interleaved so that the
machine's drift hits them alike):

  - C{none}: no limit configured (the factory has no limits at all);
  - C{memory}: C{--rate 1000000/s --burst 1000000} in memory, one hot
    bucket (every request from one client address, like wrk on loopback),
    as C{bench/bench_http.py --only limiter};
  - C{redis-fake}: the same through a L{RedisLimiter} whose client is a
    fake Redis: each script call returns an unfired Deferred that the
    benchmark fires right after the request that sent it (the reply
    "arriving" before the upstream answers), granting what it was asked
    for.  So txproxy's own cost is measured (batching, local tokens,
    timeout timers, Deferreds), not txredisapi's or Redis's
    (C{bench/bench_limiter.py} measures those: a round trip costs tens of
    microseconds of txredisapi CPU).  Script calls per request are printed.

How busy Redis and the event loop are (C{redis-fake} only):
C{--redis-delay N} makes each reply come N requests after its call
instead of at once (the requests an event loop reads between sending a
call and reading its reply), and C{--connections C} spreads the requests
over C client connections taken in turn (like C{wrk -c C}), so that a
request waiting for Redis holds only its own connection.  The requests
that waited are counted and printed: with C{--connections 50
--redis-delay 48}, how often a busy proxy would make a request wait.

The limiter's clock advances 100 us at each reading (about once per
request: C{--clock steady}, the default), so that the limiter behaves the
same however fast the machine runs (and under valgrind); C{--clock wall}
gives it C{time.time}, as the reactor's C{seconds()}.  The protocol's
timers run on a L{Clock} that never advances.

On a shared machine even thread CPU time varies by 10-20 % between rounds;
C{--instructions} counts instructions per request under valgrind's
callgrind instead (the difference between a 3-round and a 1-round run, so
imports cancel out): nearly deterministic (within about 1,000 instructions
per request), and what to compare small changes by.  On PyPy, run one
limiter per process (C{--limiter memory}, not C{all}): the JIT's traces of
one variant slow the others down in a shared process.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import sys
import time
from typing import Any, List, Optional, Tuple

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from twisted.internet.defer import Deferred  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402

from txproxy._compiled import buildDescription  # noqa: E402
from txproxy.testing import FakeConnector, connect, forwardFactory  # noqa: E402

FORWARD_REQUEST = (
    b"GET http://origin.test/index.html HTTP/1.1\r\nHost: origin.test\r\nUser-Agent: bench/1.0\r\n"
    b"Accept: */*\r\nAccept-Encoding: gzip\r\nProxy-Connection: keep-alive\r\n\r\n"
)
REVERSE_REQUEST = (
    b"GET /index.html HTTP/1.1\r\nHost: app.test\r\nUser-Agent: bench/1.0\r\n"
    b"Accept: */*\r\nAccept-Encoding: gzip\r\nConnection: keep-alive\r\n\r\n"
)
# Kept for callers of the old single-mode script.
REQUEST = FORWARD_REQUEST
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Fri, 27 Nov 2026 00:00:00 GMT\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 12\r\nConnection: keep-alive\r\n\r\nhello world\n"
)
RATE = [("rate", "1000000/s"), ("burst", "1000000")]
LIMITERS = ("none", "memory", "redis-fake")
#: The limiter's clock: C{step} seconds per reading, or the wall clock when
#: L{None} (C{--clock}).
CLOCK: dict = {"step": 1e-4}
#: Requests between a Redis call and its reply (C{--redis-delay}).
REDIS_DELAY: dict = {"requests": 0}
#: Client connections (C{--connections}).
CONNECTIONS: dict = {"count": 1}


class WallClock(Clock):
    """
    A L{Clock} whose C{seconds()} is the wall clock, as the reactor's is:
    the limiter reads real time, its timers are only recorded.
    """

    seconds = staticmethod(time.time)  # type: ignore[assignment]


class SteadyClock(Clock):
    """
    A L{Clock} whose C{seconds()} advances by C{step} at each reading (a C
    call, as cheap as C{time.time}): the limiter sees time pass at a steady
    pace whatever the machine's speed, and behaves the same under valgrind
    (where the wall clock would run 50 times faster per request, and the
    Redis backend's 0.1 s token validity would cover a few requests only).
    """

    def __init__(self, step: float) -> None:
        super().__init__()
        self.seconds = itertools.count(1000.0, step).__next__  # type: ignore[method-assign]


class FakeRedis:
    """
    Just enough of a Redis client for L{RedisLimiter}: C{EVALSHA} of the
    take script is granted in full (the benchmark's bucket never runs dry),
    any other script answers C{ok}.  Replies are unfired Deferreds, fired
    by L{flush} (all of them) or L{flushDue} (those sent C{delay} requests
    ago or more).
    """

    def __init__(self, delay: int = 0) -> None:
        self.pending: List[Tuple[int, Deferred, str]] = []
        self.calls = 0
        self.delay = delay
        self.request = 0

    def execute(self, *args: Any) -> Deferred:
        self.calls += 1
        d: Deferred = Deferred()
        if args[0] == "EVALSHA" and args[2] == 1 and len(args) == 8:
            # take: KEYS[1]; ARGV rate, burst, cost, want.
            reply = args[7] + " 0"
        else:
            reply = "ok"
        self.pending.append((self.request + self.delay, d, reply))
        return d

    def flush(self) -> None:
        pending = self.pending
        while pending:
            replies = pending[:]
            del pending[:]
            for _, d, reply in replies:
                d.callback(reply)

    def flushDue(self) -> None:
        pending = self.pending
        while pending and pending[0][0] <= self.request:
            _, d, reply = pending.pop(0)
            d.callback(reply)


def _factory(mode: str, limiter: str, connector: FakeConnector, clock: Clock) -> Tuple[Any, Optional[FakeRedis], Any]:
    from txproxy import config
    from txproxy.limits.service import LimiterService

    options: List[Tuple[str, str]] = [("name", "web")]
    if mode == "reverse":
        options += [("mode", "reverse"), ("route", "*=http://192.0.2.1:8001")]
    else:
        options += [("mode", "forward")]
    if limiter != "none":
        options += RATE
    listener = config.fromFlags(["tcp:0"], options).listeners[0]
    fake: Optional[FakeRedis] = None
    limits: Any = None
    service: Any = None
    if limiter != "none":
        wall = WallClock() if CLOCK["step"] is None else SteadyClock(CLOCK["step"])
        redis: Any = None
        if limiter == "redis-fake":
            from txproxy.limits.redis import RedisLimiter

            fake = FakeRedis(REDIS_DELAY["requests"])
            redis = RedisLimiter(fake, clock=wall)
        service = LimiterService(redis=redis, clock=wall)
        service.startService()
        limits = service.limitsFor(listener)
    if mode == "reverse":
        from txproxy.reverse import ReverseProxyFactory
        from txproxy.router import RouterService

        router = RouterService([listener], connector, clock)
        factory: Any = ReverseProxyFactory(listener, connector, clock, limits=limits, router=router)
    else:
        factory = forwardFactory(connector, clock, listener=listener)
        factory.limits = limits
    return factory, fake, service


class Case:
    """
    One variant, connected and warmed up (its first request sent), ready to
    run rounds of C{n} keep-alive requests on one client connection.
    """

    def __init__(self, mode: str, limiter: str, n: int, connections: int = 1) -> None:
        self.mode, self.limiter, self.n = mode, limiter, n
        # Upstream connections are established at once: with several client
        # connections, requests a Redis reply admits together need several.
        self.connector = FakeConnector({"origin.test": ["192.0.2.1"]}, autoConnect=True)
        factory, self.fake, self.service = _factory(mode, limiter, self.connector, Clock())
        self.request = REVERSE_REQUEST if mode == "reverse" else FORWARD_REQUEST
        proto, self.client = connect(factory)
        proto.dataReceived(self.request)
        if self.fake is not None:
            self.fake.flush()
        self.upstream = self.connector.last.transport
        upProto = self.connector.last.protocol
        upProto.dataReceived(RESPONSE)
        self.client.clear()
        self.upstream.clear()
        self._proto, self._upProto = proto, upProto
        # More client connections (--connections): the first one's upstream
        # connection is idle in the pool again and serves them all.
        self._protos = [proto]
        self._clients = [self.client]
        for i in range(1, connections):
            other, client = connect(factory, ("127.0.0.1", 40000 + i))
            other.dataReceived(self.request)
            if self.fake is not None:
                self.fake.flush()
            other._upstream.dataReceived(RESPONSE)
            client.clear()
            self._protos.append(other)
            self._clients.append(client)
        self.upstream.clear()
        self.times: List[float] = []
        self.requests = 0
        self.stalls = 0
        self.calls0 = self.fake.calls if self.fake is not None else 0

    def loop(self) -> float:
        """
        One round; returns the thread CPU seconds it took.
        """
        n = self.n
        request = self.request
        dataReceived = self._proto.dataReceived
        upReceived = self._upProto.dataReceived
        fake = self.fake
        if len(self._protos) > 1:
            start = time.thread_time()
            self._loopMany()
        elif fake is None:
            start = time.thread_time()
            for _ in range(n):
                dataReceived(request)
                upReceived(RESPONSE)
        elif not fake.delay:
            flush = fake.flush
            pending = fake.pending
            start = time.thread_time()
            for _ in range(n):
                dataReceived(request)
                if pending:
                    flush()
                upReceived(RESPONSE)
        else:
            # Replies come fake.delay requests later; a request that waits
            # for one (nothing went upstream) is a stall.
            flushDue = fake.flushDue
            pending = fake.pending
            upstream = self.upstream.io
            stalls = 0
            start = time.thread_time()
            for _ in range(n):
                fake.request += 1
                sent = upstream.tell()
                dataReceived(request)
                if pending:
                    if upstream.tell() == sent:
                        # The request waits: time passes (no request is
                        # read) until the replies it waits for come.
                        stalls += 1
                        while pending and upstream.tell() == sent:
                            fake.request = pending[0][0]
                            flushDue()
                    else:
                        flushDue()
                upReceived(RESPONSE)
            self.stalls += stalls
        elapsed = time.thread_time() - start
        responses = sum(client.value().count(b"HTTP/1.1 200 OK") for client in self._clients)
        assert responses == n, f"{responses} responses to {n} requests: {self.client.value()[-300:]!r}"
        for client in self._clients:
            client.clear()
        for attempt in self.connector.attempts:
            attempt.transport.clear()
        self.requests += n
        self.times.append(elapsed)
        return elapsed

    def _loopMany(self) -> None:
        """
        One round over several client connections, taken in turn, as an
        event loop reads them: a request that waits for Redis holds its
        connection (the next ones go on) until the reply comes, which is
        C{fake.delay} requests later (when every connection waits, time
        passes until the next reply).  The upstream answers at once.
        """
        request = self.request
        protos = self._protos
        count = len(protos)
        fake = self.fake
        pending = fake.pending if fake is not None else []
        flushDue = fake.flushDue if fake is not None else (lambda: None)
        waiting = [False] * count
        nwaiting = 0
        stalls = 0
        turn = 0
        started = 0
        n = self.n
        while started < n or nwaiting:
            if started < n and nwaiting < count:
                while waiting[turn]:
                    turn = (turn + 1) % count
                current = turn
                proto = protos[current]
                turn = (turn + 1) % count
                started += 1
                if fake is not None:
                    fake.request += 1
                proto.dataReceived(request)
                upstream = proto._upstream
                if upstream is not None:
                    upstream.dataReceived(RESPONSE)
                else:
                    waiting[current] = True
                    nwaiting += 1
                    stalls += 1
                if pending:
                    flushDue()
            elif pending:
                # Every connection waits (or all requests are sent): time
                # passes until the next reply.
                fake.request = pending[0][0]  # type: ignore[union-attr]
                flushDue()
            if nwaiting:
                for i in range(count):
                    if waiting[i]:
                        upstream = protos[i]._upstream
                        if upstream is not None:
                            upstream.dataReceived(RESPONSE)
                            waiting[i] = False
                            nwaiting -= 1
        self.stalls += stalls

    def finish(self) -> str:
        assert len(self.connector.attempts) <= len(self._protos), "the upstream connections were not reused"
        extra = ""
        if self.fake is not None:
            extra = f", {(self.fake.calls - self.calls0) / self.requests:.4f} Redis calls/request"
            if self.fake.delay or len(self._protos) > 1:
                extra += (f", {self.stalls / self.requests:.4f} waits/request (replies {self.fake.delay} "
                          f"requests late, {len(self._protos)} connections)")
        if self.service is not None:
            decisions = self.service.decisions
            assert sum(decisions.values()) == decisions["allowed"], decisions
            self.service.stopService()
        return extra

    @property
    def best(self) -> float:
        return min(self.times) / self.n * 1e6

    @property
    def median(self) -> float:
        times = sorted(self.times)
        return times[len(times) // 2] / self.n * 1e6


def instructions(mode: str, limiter: str, n: int) -> float:
    """
    Instructions per request: the difference between a run of three rounds
    and a run of one, under callgrind, divided by the extra requests (so
    start-up and imports cancel out).
    """
    import re
    import subprocess

    def collected(rounds: int) -> int:
        argv = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
                os.path.abspath(__file__), "--mode", mode, "--limiter", limiter, "-n", str(n),
                "--rounds", str(rounds), "--clock", "wall" if CLOCK["step"] is None else "steady",
                "--redis-delay", str(REDIS_DELAY["requests"]), "--connections", str(CONNECTIONS["count"])]
        out = subprocess.run(argv, capture_output=True, text=True, check=True)
        match = re.search(r"Collected : (\d+)", out.stderr)
        assert match, out.stderr[-2000:]
        return int(match.group(1))

    return (collected(3) - collected(1)) / (2 * n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("forward", "reverse"), default="forward")
    parser.add_argument("--limiter", choices=LIMITERS + ("all",), default="none")
    parser.add_argument("-n", type=int, default=4000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=40, help="rounds per variant, interleaved")
    parser.add_argument("--instructions", action="store_true",
                        help="count instructions per request under valgrind (callgrind) instead: deterministic, "
                             "unlike times on a shared machine; slow (minutes per variant on CPython)")
    parser.add_argument("--clock", default="steady", choices=("steady", "wall"),
                        help="the limiter's clock: 'steady' (default) advances 100 us per reading, about "
                             "once per request, whatever the speed (also under valgrind); 'wall' is time.time")
    parser.add_argument("--redis-delay", type=int, default=0, metavar="N",
                        help="redis-fake: a reply comes after N more requests were read (default 0: before "
                             "the next request); requests that wait for a reply are counted and printed")
    parser.add_argument("--connections", type=int, default=1, metavar="C",
                        help="client connections taken in turn (default 1); with several, a request that "
                             "waits for Redis holds only its own connection")
    parser.add_argument("--profile", metavar="SORT",
                        help="one cProfile'd round of each variant instead, sorted by SORT (tottime, cumulative)")
    args = parser.parse_args()
    CLOCK["step"] = None if args.clock == "wall" else 1e-4
    REDIS_DELAY["requests"] = args.redis_delay
    CONNECTIONS["count"] = args.connections
    print(f"# {platform.python_implementation()} {platform.python_version()}, txproxy {buildDescription()}; "
          f"thread CPU time per request, {args.rounds} interleaved rounds of {args.n} requests", flush=True)
    limiters = LIMITERS if args.limiter == "all" else (args.limiter,)
    if args.instructions:
        counts = {limiter: instructions(args.mode, limiter, args.n) for limiter in limiters}
        for limiter, count in counts.items():
            extra = ""
            if limiter != "none" and "none" in counts:
                extra = f"  (+{count - counts['none']:,.0f}, +{(count - counts['none']) / counts['none'] * 100:.1f}%)"
            print(f"{args.mode:<8} limiter={limiter:<11} {count:10,.0f} instructions/request{extra}", flush=True)
        return
    cases = [Case(args.mode, limiter, args.n, args.connections) for limiter in limiters]
    if args.profile:
        import cProfile
        import pstats

        for case in cases:
            case.loop()  # warm-up
            profiler = cProfile.Profile()
            profiler.enable()
            case.loop()
            profiler.disable()
            print(f"## {args.mode} limiter={case.limiter}")
            pstats.Stats(profiler).sort_stats(args.profile).print_stats(35)
            case.finish()
        return
    for r in range(args.rounds):
        for case in cases if r % 2 == 0 else reversed(cases):
            case.loop()
    for case in cases:
        extra = case.finish()
        print(f"{args.mode:<8} limiter={case.limiter:<11} best {case.best:6.2f} us/request, "
              f"median {case.median:6.2f}{extra}", flush=True)
    base = cases[0] if cases[0].limiter == "none" else None
    if base is not None:
        for case in cases[1:]:
            print(f"  {case.limiter}: +{case.best - base.best:.2f} us/request best, "
                  f"+{case.median - base.median:.2f} median "
                  f"({(case.median - base.median) / case.median * 100:.1f}% of its median cost)")


if __name__ == "__main__":
    main()
