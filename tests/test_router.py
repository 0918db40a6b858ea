# -*- test-case-name: tests.test_router -*-
"""
Tests for L{txproxy.router}: route matching, load-balancing policies,
passive ejection, active health checks, reloads and the service life cycle.

No sockets and no sleeping: time moves by L{Clock.advance}, connections go
through L{FakeConnector}, whose connect Deferreds the tests fire.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from typing import Any, Dict, List, Optional, Sequence, Tuple

import attr
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from txproxy import router
from txproxy.router import _health as _router_health, _pool as _router_pool, _table as _router_table
from txproxy.config import HealthCheck, ListenerConfig, RouteConfig, parseRoute, parseUpstreamURL
from txproxy.errors import ConfigError, ResolveError
from txproxy.interfaces import IUpstreamConnector
from txproxy.router import (
    Backend,
    NoHealthyBackend,
    Pool,
    RouterService,
    RouteTable,
    endpointForBackend,
    normalizeHost,
)

# ---------------------------------------------------------------------------
# Fakes


class FakeAttempt:
    """
    One connect attempt made through a L{FakeEndpoint}; the test decides
    how it ends.
    """

    def __init__(self, endpoint: FakeEndpoint, factory: Factory) -> None:
        self.endpoint = endpoint
        self.factory = factory
        self.cancelled = False
        self.protocol: Optional[Protocol] = None
        self.transport: Optional[StringTransport] = None
        self.deferred: Deferred[Protocol] = Deferred(self._cancel)

    def _cancel(self, d: Deferred[Protocol]) -> None:
        self.cancelled = True

    def succeed(self) -> Tuple[Protocol, StringTransport]:
        """
        Connect: build the protocol, give it a transport, fire the Deferred.
        """
        protocol = self.factory.buildProtocol(None)
        assert protocol is not None
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.protocol, self.transport = protocol, transport
        self.deferred.callback(protocol)
        return protocol, transport

    def fail(self, reason: Optional[Exception] = None) -> None:
        self.deferred.errback(reason or ConnectionRefusedError())


class FakeEndpoint:
    def __init__(self, connector: FakeConnector, target: str) -> None:
        self.connector = connector
        self.target = target

    def connect(self, factory: Factory) -> Deferred[Protocol]:
        attempt = FakeAttempt(self, factory)
        self.connector.attempts.append(attempt)
        return attempt.deferred


@implementer(IUpstreamConnector)
class FakeConnector:
    """
    An L{IUpstreamConnector} with a fixed host map; every connect is
    recorded in C{attempts} and left pending.
    """

    def __init__(self, hosts: Optional[Dict[str, List[str]]] = None) -> None:
        self.hosts = hosts or {}
        self.attempts: List[FakeAttempt] = []
        self.resolved: List[str] = []

    def resolve(self, host: str, port: int) -> Deferred[List[str]]:
        self.resolved.append(host)
        if host in self.hosts:
            return succeed(self.hosts[host])
        return fail(ResolveError(host))

    def endpointFor(self, host: str, port: int) -> FakeEndpoint:
        return FakeEndpoint(self, f"{host}:{port}")

    def endpointForDescription(self, description: str) -> FakeEndpoint:
        return FakeEndpoint(self, description)

    def connect(self, host: str, port: int, proto: Protocol) -> Deferred[Protocol]:
        factory = Factory.forProtocol(Protocol)
        factory.buildProtocol = lambda addr: proto  # type: ignore[method-assign]
        return self.endpointFor(host, port).connect(factory)

    def pending(self) -> List[FakeAttempt]:
        return [a for a in self.attempts if not a.deferred.called]

    def last(self) -> FakeAttempt:
        return self.attempts[-1]


def route(text: str, **kw: Any) -> RouteConfig:
    return attr.evolve(parseRoute(text), **kw)


def backends(*keys: str, weights: Sequence[int] = ()) -> List[Backend]:
    ws = list(weights) or [1] * len(keys)
    return [Backend.fromURL(parseUpstreamURL(k), w) for k, w in zip(keys, ws)]


def reverse(name: str, *routes: RouteConfig) -> ListenerConfig:
    return ListenerConfig(listen=("tcp:8080",), mode="reverse", name=name, routes=tuple(routes))


HC = HealthCheck(kind="tcp", interval=5.0, timeout=2.0, rise=2, fall=3)
HTTPHC = HealthCheck(kind="http", path="/healthz", interval=5.0, timeout=2.0, rise=2, fall=3)


# ---------------------------------------------------------------------------
# Route table


class RouteTableTests(SynchronousTestCase):
    ROUTES = [
        "*=http://10.0.0.1:80",
        "*/static=http://10.0.0.2:80",
        "example.com=http://10.0.0.3:80",
        "example.com/api=http://10.0.0.4:80",
        "example.com/api/v2=http://10.0.0.5:80",
        "*.example.com=http://10.0.0.6:80",
        "*.eu.example.com=http://10.0.0.7:80",
        "only.test/api=http://10.0.0.8:80",
    ]

    def setUp(self) -> None:
        self.table = RouteTable.build([parseRoute(r) for r in self.ROUTES])

    def label(self, host: str, path: str) -> Optional[str]:
        r = self.table.match(host, path)
        return None if r is None else f"{r.config.host}{r.prefix}"

    def test_matchingCases(self) -> None:
        """
        Exact host beats wildcards, the longest C{*.suffix} beats shorter
        ones, C{*} catches the rest; within a host the longest prefix wins on
        path-segment boundaries (C{/api} matches C{/api}, C{/api/} and
        C{/api/x} but not C{/apix}); port, case and a trailing dot in the
        host do not matter; the query string is ignored; an exact host with
        no prefix for the path falls through to wildcard and default routes.
        """
        cases = [
            ("example.com", "/", "example.com"),
            ("example.com", "", "example.com"),
            ("EXAMPLE.com:8080", "/", "example.com"),
            ("example.com.", "/", "example.com"),
            ("example.com", "/api", "example.com/api"),
            ("example.com", "/api/", "example.com/api"),
            ("example.com", "/api/users/1", "example.com/api"),
            ("example.com", "/api?q=/api/v2", "example.com/api"),
            ("example.com", "/apix", "example.com"),
            ("example.com", "/api/v2", "example.com/api/v2"),
            ("example.com", "/api/v2/x", "example.com/api/v2"),
            ("example.com", "/api/v22", "example.com/api"),
            ("example.com", "/API", "example.com"),
            ("www.example.com", "/api", "*.example.com"),
            ("a.b.example.com", "/", "*.example.com"),
            ("x.eu.example.com", "/", "*.eu.example.com"),
            ("x.y.eu.example.com:443", "/", "*.eu.example.com"),
            ("eu.example.com", "/", "*.example.com"),
            ("notexample.com", "/", "*"),
            ("com", "/", "*"),
            ("other.test", "/static/app.js", "*/static"),
            ("other.test", "/staticfoo", "*"),
            ("only.test", "/api/x", "only.test/api"),
            ("only.test", "/other", "*"),
            ("only.test", "/static/x", "*/static"),
            ("[::1]:8080", "/", "*"),
            ("", "/", "*"),
        ]
        got = [(h, p, self.label(h, p)) for h, p, _ in cases]
        self.assertEqual(got, cases)

    def test_noDefaultRouteNoMatch(self) -> None:
        """
        Without a C{*} route an unknown host matches nothing, and
        C{*.example.com} does not match C{example.com} itself.
        """
        table = RouteTable.build(
            [parseRoute("*.example.com=http://a:1"), parseRoute("a.test/x=http://a:1")]
        )
        self.assertIsNone(table.match("example.com", "/"))
        self.assertIsNone(table.match("other.test", "/"))
        self.assertIsNone(table.match("a.test", "/y"))
        self.assertIsNotNone(table.match("a.test", "/x/y"))

    def test_sniMatchUsesEmptyPath(self) -> None:
        """
        SNI routing passes a name and no path; it gets the host's route.
        """
        table = RouteTable.build(
            [parseRoute("a.test=tcp://10.0.0.1:443"), parseRoute("*=tcp://10.0.0.2:443")]
        )
        r = table.match("A.TEST")
        assert r is not None
        self.assertEqual(r.config.host, "a.test")

    def test_trailingSlashIgnored(self) -> None:
        """
        A configured prefix C{/api/} is the same route as C{/api}: it matches
        C{/api} too, and giving both is a configuration error.
        """
        table = RouteTable.build([route("a.test=http://a:1", prefix="/api/")])
        r = table.match("a.test", "/api")
        assert r is not None
        self.assertEqual(r.prefix, "/api")
        with self.assertRaises(ConfigError) as e:
            RouteTable.build(
                [
                    route("a.test=http://a:1", prefix="/api/"),
                    route("a.test=http://b:1", prefix="/api"),
                ]
            )
        self.assertIn("a.test/api", str(e.exception))

    def test_duplicateRouteRejected(self) -> None:
        """
        Two routes with the same host pattern and prefix are a
        L{ConfigError}; host case does not make them different.
        """
        self.assertRaises(
            ConfigError,
            RouteTable.build,
            [parseRoute("a.test=http://a:1"), route("A.test=http://b:1", host="A.test")],
        )
        self.assertRaises(
            ConfigError, RouteTable.build, [parseRoute("*=http://a:1"), parseRoute("*=http://b:1")]
        )

    def test_routesInOrderAndGivenPools(self) -> None:
        """
        C{routes} keeps configuration order, and a pool given for a route in
        the C{pools} mapping is the route's pool.
        """
        r1, r2 = parseRoute("a.test=http://a:1"), parseRoute("b.test=http://b:1")
        pool = Pool(backends("http://c:1"))
        table = RouteTable.build([r1, r2], {r2: pool})
        self.assertEqual([r.config for r in table.routes], [r1, r2])
        self.assertIs(table.routes[1].pool, pool)
        self.assertEqual(len(table), 2)

    def test_upstreamPathStripsPrefix(self) -> None:
        """
        With C{stripPrefix} the route's prefix is removed from the path sent
        upstream (never leaving an empty path); without it the path is kept.
        """
        table = RouteTable.build(
            [route("a.test/api=http://a:1", stripPrefix=True), parseRoute("a.test/keep=http://a:1")]
        )
        strip = table.match("a.test", "/api/x")
        keep = table.match("a.test", "/keep/x")
        assert strip is not None and keep is not None
        self.assertEqual(strip.upstreamPath("/api/x?y=1"), "/x?y=1")
        self.assertEqual(strip.upstreamPath("/api"), "/")
        self.assertEqual(keep.upstreamPath("/keep/x"), "/keep/x")

    def test_normalizeHost(self) -> None:
        """
        L{normalizeHost} lower-cases, drops the port and a trailing dot, and
        keeps IPv6 brackets.
        """
        self.assertEqual(normalizeHost("WWW.Example.COM.:443"), "www.example.com")
        self.assertEqual(normalizeHost("[2001:DB8::1]:80"), "[2001:db8::1]")
        self.assertEqual(normalizeHost("host"), "host")

    def test_lookupIndependentOfTableSize(self) -> None:
        """
        An exact-host lookup in a 10,000-route table makes one dict lookup
        for the host: the table's host dict is consulted once, whatever its
        size (structural check; the benchmark measures time).
        """
        routes = [parseRoute(f"h{i}.test=http://10.0.0.1:80") for i in range(10000)]
        table = RouteTable.build(routes)
        calls = []

        class CountingDict(dict):  # type: ignore[type-arg]
            def get(self, key: Any, default: Any = None) -> Any:
                calls.append(key)
                return dict.get(self, key, default)

        table._exactRoot = CountingDict(table._exactRoot)
        table._exact = CountingDict(table._exact)
        table._wildcards = CountingDict(table._wildcards)
        r = table.match("H9999.test:443", "/x/y/z")
        assert r is not None
        self.assertEqual(r.config.host, "h9999.test")
        self.assertEqual(calls, ["h9999.test"])

    def test_publicNamesArePrivateObjects(self) -> None:
        """
        The public names in L{txproxy.router} are the private modules'
        objects.
        """
        self.assertIs(router.RouteTable, _router_table.RouteTable)
        self.assertIs(router.Route, _router_table.Route)
        self.assertIs(router.Pool, _router_pool.Pool)
        self.assertIs(router.Backend, _router_pool.Backend)
        self.assertIs(router.NoHealthyBackend, _router_pool.NoHealthyBackend)
        self.assertIs(router.HealthChecker, _router_health.HealthChecker)
        for name in router.__all__:
            self.assertTrue(hasattr(router, name), name)


def referenceMatch(routes: Sequence[RouteConfig], host: str, path: str) -> Optional[RouteConfig]:
    """
    The documented matching rules, written the slow and obvious way.
    """
    h = normalizeHost(host)
    path = path.split("?", 1)[0]

    def prefixOf(rc: RouteConfig) -> str:
        return rc.prefix.rstrip("/")

    def fits(rc: RouteConfig) -> bool:
        p = prefixOf(rc)
        return p == "" or path == p or path.startswith(p + "/")

    patterns = [h]
    patterns += sorted(
        {rc.host for rc in routes if rc.host.startswith("*.") and h.endswith(rc.host[1:])},
        key=len,
        reverse=True,
    )
    patterns.append("*")
    for pattern in patterns:
        candidates = [rc for rc in routes if rc.host == pattern and fits(rc)]
        if candidates:
            return max(candidates, key=lambda rc: len(prefixOf(rc)))
    return None


_labels = st.sampled_from(["a", "b", "ab"])
_names = st.lists(_labels, min_size=1, max_size=3).map(".".join)
_segments = st.lists(st.sampled_from(["x", "y", "xy"]), min_size=0, max_size=3)
_prefixes = _segments.map(lambda segs: "".join("/" + s for s in segs))
_patterns = st.one_of(_names, _names.map(lambda n: "*." + n), st.just("*"))


class RouteTablePropertyTests(SynchronousTestCase):
    @settings(max_examples=200, deadline=None)
    @given(
        routes=st.lists(st.tuples(_patterns, _prefixes), min_size=1, max_size=12, unique=True),
        host=_names,
        port=st.sampled_from(["", ":80"]),
        path=st.tuples(_segments, st.sampled_from(["", "/", "?q=/x"])).map(
            lambda t: "".join("/" + s for s in t[0]) + t[1]
        ),
    )
    def test_agreesWithReference(
        self, routes: List[Tuple[str, str]], host: str, port: str, path: str
    ) -> None:
        """
        For random route sets and requests, L{RouteTable.match} returns the
        route that the documented rules, applied by brute force, pick.
        """
        configs = [
            RouteConfig(host=h, prefix=p, upstreams=(parseUpstreamURL("http://10.0.0.1:80"),))
            for h, p in routes
        ]
        table = RouteTable.build(configs)
        got = table.match(host.upper() + port, path or "/")
        want = referenceMatch(configs, host, path or "/")
        self.assertEqual(None if got is None else got.config, want)


# ---------------------------------------------------------------------------
# Pools


class PoolTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()

    def pool(
        self, n: int = 3, weights: Sequence[int] = (), balance: str = "roundrobin", **kw: Any
    ) -> Pool:
        return Pool(
            backends(*[f"http://10.0.0.{i + 1}:80" for i in range(n)], weights=weights),
            balance,
            self.clock,
            **kw,
        )

    def keys(self, picks: Sequence[Optional[Backend]]) -> List[str]:
        return [b.key[-7:-3] if b is not None else "none" for b in picks]

    def test_roundRobinEqualWeights(self) -> None:
        """
        Round robin with equal weights cycles through the backends in order.
        """
        pool = self.pool(3)
        self.assertEqual(self.keys([pool.pick() for _ in range(6)]), [".0.1", ".0.2", ".0.3"] * 2)

    def test_roundRobinSmoothWeights(self) -> None:
        """
        Weighted round robin is smooth, as in nginx: weights 5, 1, 1 give
        a a b a c a a, not five a's in a row.
        """
        pool = self.pool(3, weights=(5, 1, 1))
        self.assertEqual(
            self.keys([pool.pick() for _ in range(7)]),
            [".0.1", ".0.1", ".0.2", ".0.1", ".0.3", ".0.1", ".0.1"],
        )

    def test_roundRobinWeightDistribution(self) -> None:
        """
        Over any whole number of cycles each backend gets exactly its
        weight's share.
        """
        pool = self.pool(3, weights=(3, 2, 1))
        counts = Counter(b.key for b in (pool.pick() for _ in range(6000)) if b is not None)
        self.assertEqual(sorted(counts.values()), [1000, 2000, 3000])
        self.assertEqual(counts[pool.backends[0].key], 3000)

    def test_roundRobinSkipsUnavailable(self) -> None:
        """
        Unhealthy and excluded backends are skipped; the others share the
        load.
        """
        pool = self.pool(3)
        pool.backends[1].healthy = False
        self.assertEqual(self.keys([pool.pick() for _ in range(4)]), [".0.1", ".0.3"] * 2)
        self.assertEqual(
            self.keys([pool.pick(exclude=(pool.backends[0],)) for _ in range(2)]), [".0.3"] * 2
        )

    def test_allDownReturnsNone(self) -> None:
        """
        With every backend down, ejected or excluded, every policy's
        C{pick} returns L{None}.
        """
        for balance in ("roundrobin", "leastconn", "hash"):
            pool = self.pool(2, balance=balance)
            pool.backends[0].healthy = False
            pool.backends[1].ejectedUntil = 100.0
            self.assertIsNone(pool.pick("10.1.1.1"), balance)
            pool.backends[1].ejectedUntil = None
            self.assertIsNone(pool.pick("10.1.1.1", exclude=[pool.backends[1]]), balance)

    def test_leastConnPicksFewest(self) -> None:
        """
        Least connections picks the backend with the fewest active
        connections.
        """
        pool = self.pool(3, balance="leastconn")
        a, b, c = pool.backends
        a.connectionStarted()
        a.connectionStarted()
        c.connectionStarted()
        self.assertIs(pool.pick(), b)
        b.connectionStarted()
        b.connectionStarted()
        self.assertIs(pool.pick(), c)

    def test_leastConnTiesRotate(self) -> None:
        """
        When connection counts tie, least connections rotates instead of
        always returning the first backend.
        """
        pool = self.pool(3, balance="leastconn")
        self.assertEqual(len({pool.pick() for _ in range(3)}), 3)

    def test_leastConnWeights(self) -> None:
        """
        Weighted least connections keeps active connections proportional to
        the weights (each within one of its share).
        """
        pool = self.pool(3, weights=(1, 2, 3), balance="leastconn")
        for _ in range(600):
            b = pool.pick()
            assert b is not None
            b.connectionStarted()
        counts = [b.activeConnections for b in pool.backends]
        for got, want in zip(counts, (100, 200, 300)):
            self.assertLessEqual(abs(got - want), 1, counts)

    def test_leastConnWithChurn(self) -> None:
        """
        With connections opening and closing at random, weighted least
        connections still sends new connections roughly in proportion to the
        weights (within 10%).
        """
        rng = random.Random(7)
        pool = self.pool(2, weights=(1, 3), balance="leastconn")
        openConns: List[Backend] = []
        picks: Counter[str] = Counter()
        for _ in range(8000):
            b = pool.pick()
            assert b is not None
            b.connectionStarted()
            picks[b.key] += 1
            openConns.append(b)
            if len(openConns) > 40:
                openConns.pop(rng.randrange(len(openConns))).connectionFinished()
        share = picks[pool.backends[1].key] / 8000
        self.assertTrue(abs(share - 0.75) <= 0.075, share)

    def test_hashSameClientSameBackend(self) -> None:
        """
        The hash policy sends one client address to one backend every time.
        """
        pool = self.pool(5, balance="hash")
        for i in range(50):
            ip = f"192.0.2.{i}"
            self.assertEqual(len({pool.pick(ip) for _ in range(5)}), 1)

    def test_hashIsProcessIndependent(self) -> None:
        """
        Two pools built separately (as in two worker processes) map every
        client to the same backend: the ring does not use Python's salted
        C{hash()}.
        """
        p1, p2 = self.pool(5, balance="hash"), self.pool(5, balance="hash")
        clients = [f"198.51.100.{i}" for i in range(200)]
        self.assertEqual([p1.pick(c).key for c in clients], [p2.pick(c).key for c in clients])  # type: ignore[union-attr]

    def test_hashDistribution(self) -> None:
        """
        With the hash policy 20,000 clients spread over 4 equal backends
        within 15% of an even share, and a weight-3 backend gets about three
        times a weight-1 backend's share.
        """
        clients = [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(20000)]
        pool = self.pool(4, balance="hash")
        counts = Counter(pool.pick(c).key for c in clients)  # type: ignore[union-attr]
        for key, n in counts.items():
            self.assertTrue(abs(n - 5000) <= 750, f"{key}: {counts}")
        weighted = self.pool(2, weights=(1, 3), balance="hash")
        counts = Counter(weighted.pick(c).key for c in clients)  # type: ignore[union-attr]
        share = counts[weighted.backends[1].key] / 20000
        self.assertTrue(abs(share - 0.75) <= 0.05, share)

    def test_hashStableWhenBackendJoins(self) -> None:
        """
        Adding a sixth backend to five moves about 1/6 of the clients (within
        0.10-0.24), and every client that moves moves to the new backend.
        """
        clients = [f"172.16.{i >> 8}.{i & 255}" for i in range(12000)]
        urls = [f"http://10.0.0.{i + 1}:80" for i in range(6)]
        five = Pool(backends(*urls[:5]), "hash", self.clock)
        six = Pool(backends(*urls), "hash", self.clock)
        before = {c: five.pick(c).key for c in clients}  # type: ignore[union-attr]
        after = {c: six.pick(c).key for c in clients}  # type: ignore[union-attr]
        moved = [c for c in clients if before[c] != after[c]]
        self.assertTrue(0.10 <= len(moved) / len(clients) <= 0.24, len(moved) / len(clients))
        self.assertEqual({after[c] for c in moved}, {str(parseUpstreamURL(urls[5]))})

    def test_hashStableWhenBackendLeaves(self) -> None:
        """
        Removing one backend of six moves only that backend's clients; the
        others keep theirs.
        """
        clients = [f"172.17.{i >> 8}.{i & 255}" for i in range(6000)]
        urls = [f"http://10.0.0.{i + 1}:80" for i in range(6)]
        six = Pool(backends(*urls), "hash", self.clock)
        five = Pool(backends(*(urls[:2] + urls[3:])), "hash", self.clock)
        gone = str(parseUpstreamURL(urls[2]))
        for c in clients:
            b6, b5 = six.pick(c), five.pick(c)
            assert b6 is not None and b5 is not None
            if b6.key != gone:
                self.assertEqual(b6.key, b5.key)

    def test_hashDownBackendHandsOverAndTakesBack(self) -> None:
        """
        When a backend is down its clients go to other backends while the
        other clients stay put; when it is back its clients return.
        """
        clients = [f"203.0.113.{i}" for i in range(256)]
        pool = self.pool(4, balance="hash")
        before = {c: pool.pick(c) for c in clients}
        down = pool.backends[0]
        down.healthy = False
        during = {c: pool.pick(c) for c in clients}
        for c in clients:
            if before[c] is down:
                self.assertIsNot(during[c], down)
            else:
                self.assertIs(during[c], before[c])
        down.healthy = True
        self.assertEqual({c: pool.pick(c) for c in clients}, before)

    def test_hashExcludeFindsAnother(self) -> None:
        """
        With the hash policy, excluding the client's backend gives another
        one (for retrying a failed connect).
        """
        pool = self.pool(3, balance="hash")
        first = pool.pick("192.0.2.1")
        second = pool.pick("192.0.2.1", exclude=(first,))
        self.assertIsNotNone(second)
        self.assertIsNot(second, first)

    def test_hashEmptyKeyRoundRobins(self) -> None:
        """
        The hash policy with no client key (e.g. a UNIX-socket client) falls
        back to round robin rather than sending everyone to one backend.
        """
        pool = self.pool(3, balance="hash")
        self.assertEqual(len({pool.pick("") for _ in range(3)}), 3)

    def test_badPools(self) -> None:
        """
        An unknown policy, an empty pool and a zero weight are
        L{ConfigError}s.
        """
        self.assertRaises(ConfigError, Pool, backends("http://a:1"), "random")
        self.assertRaises(ConfigError, Pool, [], "roundrobin")
        self.assertRaises(ConfigError, Backend, "x", weight=0)

    def test_fromRouteMergesDuplicates(self) -> None:
        """
        L{Pool.fromRoute} takes the route's policy, weights and ejection
        settings; a URL named twice becomes one backend with the summed
        weight.
        """
        rc = route(
            "a.test=http://a:1,http://b:1,http://a:1",
            weights=(1, 2, 3),
            balance="leastconn",
            ejectAfter=5,
        )
        pool = Pool.fromRoute(rc, self.clock)
        self.assertEqual(
            [(b.key, b.weight) for b in pool.backends], [("http://a:1", 4), ("http://b:1", 2)]
        )
        self.assertEqual((pool.balance, pool.ejectAfter), ("leastconn", 5))

    def test_connectionCounters(self) -> None:
        """
        C{connectionStarted}/C{connectionFinished} count active and total
        connections; finishing more than started never goes negative.
        """
        b = Backend("k")
        b.connectionStarted()
        b.connectionStarted()
        b.connectionFinished()
        self.assertEqual((b.activeConnections, b.totalConnections), (1, 2))
        b.connectionFinished()
        b.connectionFinished()
        self.assertEqual(b.activeConnections, 0)


# ---------------------------------------------------------------------------
# Passive ejection


class PassiveEjectionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.pool = Pool(
            backends("http://10.0.0.1:80", "http://10.0.0.2:80"), "roundrobin", self.clock, 3, 30.0
        )
        self.a, self.b = self.pool.backends

    def test_ejectAfterConsecutiveFailures(self) -> None:
        """
        A backend is ejected on its C{ejectAfter}th connect failure in a row,
        left out of picks for C{ejectFor} seconds, then picked again.
        """
        self.pool.reportConnectFailure(self.a)
        self.pool.reportConnectFailure(self.a)
        self.assertFalse(self.a.isEjected(self.clock.seconds()))
        self.pool.reportConnectFailure(self.a)
        self.assertEqual(self.a.ejectedUntil, 30.0)
        self.assertEqual(self.a.ejections, 1)
        self.assertEqual({self.pool.pick() for _ in range(4)}, {self.b})
        self.clock.advance(29.9)
        self.assertEqual({self.pool.pick() for _ in range(4)}, {self.b})
        self.clock.advance(0.1)
        self.assertEqual({self.pool.pick() for _ in range(4)}, {self.a, self.b})

    def test_successResetsCount(self) -> None:
        """
        A successful connect resets the failure count, so failures must be
        consecutive to eject.
        """
        for _ in range(2):
            self.pool.reportConnectFailure(self.a)
        self.pool.reportConnectSuccess(self.a)
        for _ in range(2):
            self.pool.reportConnectFailure(self.a)
        self.assertFalse(self.a.isEjected(0))
        self.assertEqual((self.a.consecutiveFailures, self.a.totalFailures), (2, 4))

    def test_probationAfterEjection(self) -> None:
        """
        Once its ejection time is over a backend is on probation: one more
        failure ejects it again at once; a success clears it for good.
        """
        for _ in range(3):
            self.pool.reportConnectFailure(self.a)
        self.clock.advance(30)
        self.assertTrue(self.a.isAvailable(self.clock.seconds()))
        self.pool.reportConnectFailure(self.a)
        self.assertTrue(self.a.isEjected(self.clock.seconds()))
        self.assertEqual(self.a.ejections, 2)
        self.clock.advance(30)
        self.pool.reportConnectSuccess(self.a)
        self.pool.reportConnectFailure(self.a)
        self.assertFalse(self.a.isEjected(self.clock.seconds()))

    def test_zeroEjectAfterNeverEjects(self) -> None:
        """
        C{ejectAfter=0} turns passive ejection off.
        """
        pool = Pool(backends("http://10.0.0.1:80"), "roundrobin", self.clock, 0, 30.0)
        for _ in range(100):
            pool.reportConnectFailure(pool.backends[0])
        self.assertIs(pool.pick(), pool.backends[0])

    def test_allEjectedIsNone(self) -> None:
        """
        When every backend is ejected C{pick} returns L{None} (the caller
        answers 503), until the first ejection expires.
        """
        for _ in range(3):
            self.pool.reportConnectFailure(self.a)
        self.clock.advance(10)
        for _ in range(3):
            self.pool.reportConnectFailure(self.b)
        self.assertIsNone(self.pool.pick())
        self.clock.advance(20)
        self.assertIs(self.pool.pick(), self.a)


class PoolConnectTests(SynchronousTestCase):
    """
    L{Pool.connect}: pick, count, connect, report, retry once elsewhere.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.connector = FakeConnector()
        self.pool = Pool(
            backends("http://10.0.0.1:80", "http://10.0.0.2:80"), "roundrobin", self.clock, 1, 30.0
        )
        self.a, self.b = self.pool.backends

    def connectTo(self, backend: Backend) -> Deferred[Any]:
        d = endpointForBackend(self.connector, backend)
        return d.addCallback(lambda ep: ep.connect(Factory.forProtocol(Protocol)))

    def test_success(self) -> None:
        """
        A successful connect fires with C{(backend, protocol)}, is reported
        as a success, and the connection stays counted until the caller
        finishes it.
        """
        self.a.consecutiveFailures = 0
        d = self.pool.connect(self.connectTo, "192.0.2.1")
        self.assertNoResult(d)
        self.assertEqual(self.a.activeConnections, 1)
        protocol, _ = self.connector.last().succeed()
        backend, result = self.successResultOf(d)
        self.assertIs(backend, self.a)
        self.assertIs(result, protocol)
        self.assertEqual(self.connector.last().endpoint.target, "10.0.0.1:80")
        self.assertEqual(self.a.activeConnections, 1)
        backend.connectionFinished()
        self.assertEqual(self.a.activeConnections, 0)

    def test_retryOnAnotherBackend(self) -> None:
        """
        A failed connect is reported (ejecting the backend here) and retried
        once on another backend; the failed attempt is no longer counted.
        """
        d = self.pool.connect(self.connectTo)
        self.connector.last().fail()
        self.assertNoResult(d)
        self.assertEqual(self.a.activeConnections, 0)
        self.assertTrue(self.a.isEjected(self.clock.seconds()))
        self.assertEqual(self.connector.last().endpoint.target, "10.0.0.2:80")
        self.connector.last().succeed()
        backend, _ = self.successResultOf(d)
        self.assertIs(backend, self.b)
        self.assertEqual(self.b.activeConnections, 1)

    def test_givesUpAfterAttempts(self) -> None:
        """
        When both attempts fail the Deferred fails with the last connect
        error (so the caller can answer 502 or 504), and nothing stays
        counted.
        """
        pool = Pool(
            backends("http://10.0.0.1:80", "http://10.0.0.2:80", "http://10.0.0.3:80"),
            "roundrobin",
            self.clock,
            3,
            30.0,
        )
        d = pool.connect(self.connectTo)
        self.connector.last().fail()
        self.connector.last().fail(ConnectionRefusedError("second"))
        f = self.failureResultOf(d, ConnectionRefusedError)
        self.assertIn("second", f.getErrorMessage())
        self.assertEqual(len(self.connector.attempts), 2)
        self.assertEqual([b.activeConnections for b in pool.backends], [0, 0, 0])

    def test_noHealthyBackend(self) -> None:
        """
        With nothing to pick, L{Pool.connect} fails with L{NoHealthyBackend}
        (503) without connecting.
        """
        self.a.healthy = self.b.healthy = False
        self.failureResultOf(self.pool.connect(self.connectTo), NoHealthyBackend)
        self.assertEqual(self.connector.attempts, [])

    def test_onlyBackendFails(self) -> None:
        """
        When the only other backend is unavailable the connect error itself
        is reported, not L{NoHealthyBackend}.
        """
        self.b.healthy = False
        d = self.pool.connect(self.connectTo)
        self.connector.last().fail()
        self.failureResultOf(d, ConnectionRefusedError)

    def test_cancel(self) -> None:
        """
        Cancelling the Deferred cancels the connect in progress, uncounts it,
        and reports no failure.
        """
        d = self.pool.connect(self.connectTo)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertTrue(self.connector.last().cancelled)
        self.assertEqual((self.a.activeConnections, self.a.consecutiveFailures), (0, 0))
        self.assertEqual(len(self.connector.attempts), 1)

    def test_resolvesNames(self) -> None:
        """
        A backend named by host name is resolved through the connector and
        dialled at its first address; an unresolvable name fails the
        attempt like a refused connect.
        """
        self.connector.hosts["app.internal"] = ["10.9.9.9", "10.9.9.8"]
        pool = Pool(
            backends("http://app.internal:8080", "http://nowhere.internal:80"),
            "roundrobin",
            self.clock,
        )
        d = pool.connect(self.connectTo)
        self.assertEqual(self.connector.last().endpoint.target, "10.9.9.9:8080")
        self.connector.last().succeed()
        self.successResultOf(d)
        d = pool.connect(self.connectTo)  # round robin: nowhere.internal first
        self.assertEqual(self.connector.resolved[-1], "app.internal")
        self.assertEqual(pool.backends[1].consecutiveFailures, 1)
        self.connector.last().succeed()
        self.successResultOf(d)


# ---------------------------------------------------------------------------
# Active health checks


class HealthCheckTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.connector = FakeConnector()

    def service(self, *routes: RouteConfig) -> RouterService:
        svc = RouterService([reverse("web", *routes)], self.connector, self.clock)
        svc.startService()
        self.addCleanup(svc.stopService)
        return svc

    def backend(self, svc: RouterService, host: str = "a.test", index: int = 0) -> Backend:
        r = svc.tableFor("web").match(host, "/")
        assert r is not None
        return r.pool.backends[index]

    def runCheck(self, ok: bool) -> FakeAttempt:
        """
        Advance to the next check and end it.
        """
        before = len(self.connector.attempts)
        self.clock.advance(0 if not self.connector.attempts else 5)
        self.assertEqual(len(self.connector.attempts), before + 1)
        attempt = self.connector.last()
        if ok:
            attempt.succeed()
        else:
            attempt.fail()
        return attempt

    def test_checksAreQuiet(self) -> None:
        """
        Health checks (TCP and HTTP, passing and failing) log no Twisted
        C{Starting factory}/C{Stopping factory} line per check (the
        connector here is L{txproxy.testing.FakeConnector}, which starts and
        stops the factory as a real connector does); txproxy's own
        C{backend ... is up/down} lines still appear.
        """
        from txproxy.testing import FakeConnector as ProductionPathConnector

        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        connector = ProductionPathConnector(clock=self.clock)
        svc = RouterService([reverse("web", route("a.test=http://10.0.0.1:80", healthCheck=HC),
                                     route("b.test=http://10.0.0.2:8080", healthCheck=HTTPHC))],
                            connector, self.clock)
        svc.startService()
        self.addCleanup(svc.stopService)
        for ok in (False, True, True, False):
            self.clock.advance(0 if not connector.attempts else 5)
            for attempt in connector.attempts[-2:]:
                if ok:
                    transport = attempt.succeed()
                    if attempt.port == 8080:
                        attempt.protocol.dataReceived(b"HTTP/1.1 200 OK\r\n\r\n")
                    transport.loseConnection()
                else:
                    attempt.fail()
        self.assertEqual(len(connector.attempts), 8)
        lines = [formatEvent(e) for e in events]
        self.assertEqual([line for line in lines if "factory" in line.lower()], [])
        self.assertTrue(any("is up" in line or "is down" in line for line in lines), lines)

    def test_tcpRiseAndFall(self) -> None:
        """
        A TCP check: a new backend is healthy but unchecked; its first
        failure marks it down; it needs C{rise}=2 successes to come up and
        C{fall}=3 failures in a row to go down again.
        """
        svc = self.service(route("a.test=http://10.0.0.1:80", healthCheck=HC))
        b = self.backend(svc)
        self.assertEqual((b.healthy, b.health.checked), (True, False))
        self.runCheck(False)
        self.assertFalse(b.healthy)
        self.runCheck(True)
        self.assertFalse(b.healthy)
        self.runCheck(True)
        self.assertTrue(b.healthy)
        self.runCheck(False)
        self.runCheck(False)
        self.assertTrue(b.healthy)
        self.runCheck(True)
        self.runCheck(False)
        self.runCheck(False)
        self.assertTrue(b.healthy)
        self.runCheck(False)
        self.assertFalse(b.healthy)
        self.assertEqual(b.health.lastError, "Connection was refused by other side.")

    def test_tcpCheckClosesConnection(self) -> None:
        """
        A TCP check closes its connection as soon as it is made, and targets
        the backend's address.
        """
        self.service(route("a.test=http://10.0.0.1:81", healthCheck=HC))
        attempt = self.runCheck(True)
        assert attempt.transport is not None
        self.assertTrue(attempt.transport.disconnecting)
        self.assertEqual(attempt.transport.value(), b"")
        self.assertEqual(attempt.endpoint.target, "10.0.0.1:81")

    def test_firstCheckOnNextTurnThenEveryInterval(self) -> None:
        """
        The first check starts on the next reactor turn after
        C{startService}; the next one starts C{interval} seconds after the
        previous one I{finished}, so checks never overlap.
        """
        self.service(route("a.test=http://10.0.0.1:80", healthCheck=HC))
        self.assertEqual(self.connector.attempts, [])
        self.clock.advance(0)
        self.assertEqual(len(self.connector.attempts), 1)
        self.clock.advance(1.5)
        self.connector.last().succeed()
        self.clock.advance(4.9)
        self.assertEqual(len(self.connector.attempts), 1)
        self.clock.advance(0.1)
        self.assertEqual(len(self.connector.attempts), 2)

    def test_httpCheckRequest(self) -> None:
        """
        An HTTP check sends C{GET path HTTP/1.1} with the backend's C{Host}
        (port included when not the default) and C{Connection: close}.
        """
        self.service(route("a.test=http://10.0.0.1:8080", healthCheck=HTTPHC))
        self.clock.advance(0)
        _, transport = self.connector.last().succeed()
        self.assertEqual(
            transport.value(),
            b"GET /healthz HTTP/1.1\r\nHost: 10.0.0.1:8080\r\n"
            b"User-Agent: txproxy-health-check\r\nConnection: close\r\n\r\n",
        )

    def test_checksSendProxyHeader(self) -> None:
        """
        A backend that gets the PROXY protocol gets it on health checks too
        (HAProxy's C{check-send-proxy}): the v2 C{LOCAL} command before an
        HTTP check's request, v1 C{PROXY UNKNOWN} before a TCP check's close;
        the per-upstream setting wins over the route's.
        """
        from txproxy.proxyprotocol import formatV2

        self.service(route("a.test=http://10.0.0.1:8080", healthCheck=HTTPHC, proxyProtocolSend="v2"))
        self.clock.advance(0)
        _, transport = self.connector.last().succeed()
        local = formatV2(None, None, local=True)
        self.assertTrue(transport.value().startswith(local + b"GET /healthz HTTP/1.1\r\n"))
        self.assertEqual(local[12], 0x20)

        other = HealthCheckTests("test_checksSendProxyHeader")
        other.setUp()
        svc = RouterService(
            [
                reverse(
                    "web",
                    route(
                        "b.test=http://10.0.0.2:80",
                        healthCheck=HC,
                        proxyProtocolSend="v2",
                        proxyProtocolByUpstream=(("http://10.0.0.2:80", "v1"),),
                    ),
                )
            ],
            other.connector,
            other.clock,
        )
        svc.startService()
        self.addCleanup(svc.stopService)
        other.clock.advance(0)
        _, transport = other.connector.last().succeed()
        self.assertEqual(transport.value(), b"PROXY UNKNOWN \r\n")

    def test_httpCheckStatuses(self) -> None:
        """
        An HTTP check passes on a 2xx or 3xx status line, even one split
        across reads, and fails on 4xx/5xx, garbage, or a connection closed
        before a status line; it closes the connection once it has read the
        status.
        """
        svc = self.service(
            route("a.test=http://10.0.0.1:80", healthCheck=attr.evolve(HTTPHC, rise=1, fall=1))
        )
        b = self.backend(svc)
        outcomes = []
        for answer in [
            b"HTTP/1.1 200 OK\r\n",
            b"HTTP/1.0 503 Busy\r\n",
            b"HTTP/1.1 301 Moved\r\n",
            b"HTTP/1.1 404 Not Found\r\n",
            b"SSH-2.0-OpenSSH\r\n",
            b"HTTP/1.1 204\r\n",
            None,
            b"HTTP/1.1 2",
            b"HTTP/1.1 500 Oops\n",
        ]:
            self.clock.advance(5 if self.connector.attempts else 0)
            protocol, transport = self.connector.last().succeed()
            if answer is None:
                protocol.connectionLost(Failure(ConnectionRefusedError()))
            elif answer == b"HTTP/1.1 2":
                protocol.dataReceived(answer)
                protocol.dataReceived(b"00 OK\r\nContent-Length: 0\r\n\r\n")
            else:
                protocol.dataReceived(answer)
            if answer is not None:
                self.assertTrue(transport.disconnecting)
            outcomes.append((b.healthy, b.health.lastError))
        self.assertEqual(
            outcomes,
            [
                (True, None),
                (False, "status 503"),
                (True, None),
                (False, "status 404"),
                (False, "bad status line b'SSH-2.0-OpenSSH'"),
                (True, None),
                (False, "connection closed before a status line"),
                (True, None),
                (False, "status 500"),
            ],
        )

    def test_connectTimeout(self) -> None:
        """
        A check whose connect has not finished within C{timeout} is
        cancelled and counts as a failure; the next one comes an interval
        later.
        """
        svc = self.service(route("a.test=http://10.0.0.1:80", healthCheck=HC))
        b = self.backend(svc)
        self.clock.advance(0)
        self.clock.advance(1.9)
        self.assertTrue(b.healthy)
        self.clock.advance(0.1)
        self.assertTrue(self.connector.attempts[0].cancelled)
        self.assertFalse(b.healthy)
        self.assertEqual(b.health.lastError, "timed out after 2s")
        self.clock.advance(5)
        self.assertEqual(len(self.connector.attempts), 2)

    def test_httpStatusTimeout(self) -> None:
        """
        An HTTP check connected but waiting for a status line past
        C{timeout} aborts its connection and counts as a failure.
        """
        svc = self.service(route("a.test=http://10.0.0.1:80", healthCheck=HTTPHC))
        b = self.backend(svc)
        self.clock.advance(0)
        _, transport = self.connector.last().succeed()
        self.clock.advance(2)
        self.assertTrue(transport.disconnecting)
        self.assertFalse(b.healthy)
        self.assertEqual(b.health.lastError, "timed out after 2s")

    def test_httpsBackendGetsTCPCheck(self) -> None:
        """
        An C{https://} backend is checked by TCP connect only, whatever the
        check kind.
        """
        svc = self.service(route("a.test=https://10.0.0.1:443", healthCheck=HTTPHC))
        attempt = self.runCheck(True)
        assert attempt.transport is not None
        self.assertEqual(attempt.transport.value(), b"")
        self.assertTrue(self.backend(svc).healthy)

    def test_namedBackendResolved(self) -> None:
        """
        A check of a backend named by host name resolves it through the
        connector first; a name that does not resolve is a failed check.
        """
        self.connector.hosts["app.internal"] = ["10.1.2.3"]
        svc = self.service(
            route("a.test=http://app.internal:80,http://gone.internal:80", healthCheck=HC)
        )
        self.clock.advance(0)
        self.assertEqual([a.endpoint.target for a in self.connector.attempts], ["10.1.2.3:80"])
        self.assertFalse(self.backend(svc, index=1).healthy)
        self.assertIn("gone.internal", self.backend(svc, index=1).health.lastError or "")

    def test_passingCheckEndsEjection(self) -> None:
        """
        A passing active check clears a passive ejection and the failure
        count.
        """
        svc = self.service(route("a.test=http://10.0.0.1:80", healthCheck=HC))
        b = self.backend(svc)
        pool = svc.tableFor("web").routes[0].pool
        for _ in range(3):
            pool.reportConnectFailure(b)
        self.assertTrue(b.isEjected(self.clock.seconds()))
        self.runCheck(True)
        self.assertTrue(b.isAvailable(self.clock.seconds()))
        self.assertEqual(b.consecutiveFailures, 0)

    def test_checksSharedAcrossRoutes(self) -> None:
        """
        Routes naming the same backend with the same check share one checker
        and one verdict.
        """
        svc = self.service(
            route("a.test=http://10.0.0.1:80", healthCheck=HC),
            route("b.test=http://10.0.0.1:80", healthCheck=HC),
        )
        self.runCheck(False)
        self.assertEqual(len(self.connector.attempts), 1)
        self.assertFalse(self.backend(svc, "a.test").healthy)
        self.assertFalse(self.backend(svc, "b.test").healthy)
        self.assertIsNone(svc.tableFor("web").match("b.test", "/").pool.pick())  # type: ignore[union-attr]

    def test_noCheckNoAttempts(self) -> None:
        """
        A route without a health check is never probed; its backends stay
        healthy.
        """
        svc = self.service(parseRoute("a.test=http://10.0.0.1:80"))
        self.clock.advance(100)
        self.assertEqual(self.connector.attempts, [])
        self.assertTrue(self.backend(svc).healthy)

    def test_httpHostHeaderOmitsDefaultPort(self) -> None:
        """
        The HTTP check's C{Host} is the backend's name alone when it uses
        port 80.
        """
        self.connector.hosts["app.internal"] = ["10.1.2.3"]
        self.service(route("a.test=http://app.internal:80", healthCheck=HTTPHC))
        self.clock.advance(0)
        _, transport = self.connector.last().succeed()
        self.assertIn(b"\r\nHost: app.internal\r\n", transport.value())

    def test_transitionsAndEjectionsLogged(self) -> None:
        """
        A backend going down or up, and a passive ejection, are each logged
        once, with the backend's key.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        svc = self.service(route("a.test=http://10.0.0.1:80", healthCheck=attr.evolve(HC, rise=1)))
        self.runCheck(False)
        self.runCheck(False)
        self.runCheck(True)
        pool = svc.tableFor("web").routes[0].pool
        for _ in range(4):
            pool.reportConnectFailure(pool.backends[0])
        texts = [formatEvent(e) for e in events if e.get("log_namespace") == "txproxy.router"]
        self.assertEqual(
            texts,
            [
                "backend http://10.0.0.1:80 is down: Connection was refused by other side.",
                "backend http://10.0.0.1:80 is up",
                "backend http://10.0.0.1:80 of web:a.test/ ejected for 30.0s after 3 connect failures",
            ],
        )

    def test_connectorIsAnUpstreamConnector(self) -> None:
        """
        The fake connector these tests use provides L{IUpstreamConnector},
        so the router is tested against the real interface.
        """
        self.assertTrue(verifyObject(IUpstreamConnector, self.connector))


# ---------------------------------------------------------------------------
# The service


class RouterServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.connector = FakeConnector()

    def test_tablesAndPools(self) -> None:
        """
        Reverse and sni listeners get route tables, tcp listeners pools (from
        endpoint descriptions in either form, with their balance policy),
        and forward listeners nothing; unknown names are L{KeyError}s.
        """
        svc = RouterService(
            [
                reverse("web", parseRoute("a.test=http://10.0.0.1:80")),
                ListenerConfig(
                    listen=("tcp:443",),
                    mode="sni",
                    name="tls",
                    routes=(parseRoute("*=tcp://10.0.0.2:443"),),
                ),
                ListenerConfig(
                    listen=("tcp:22",),
                    mode="tcp",
                    name="ssh",
                    upstreams=("tcp:host=10.0.0.5:port=22", "tcp:10.0.0.6:22"),
                    balance="leastconn",
                ),
                ListenerConfig(listen=("tcp:3128",), mode="forward", name="fwd"),
            ],
            self.connector,
            self.clock,
        )
        self.assertIsNotNone(svc.routeFor("web", "a.test", "/"))
        self.assertIsNotNone(svc.tableFor("tls").match("x.test"))
        pool = svc.poolFor("ssh")
        self.assertEqual(pool.balance, "leastconn")
        self.assertEqual(
            [b.key for b in pool.backends], ["tcp:host=10.0.0.5:port=22", "tcp:10.0.0.6:22"]
        )
        self.assertRaises(KeyError, svc.tableFor, "fwd")
        self.assertRaises(KeyError, svc.poolFor, "web")
        b = pool.pick()
        assert b is not None
        self.successResultOf(endpointForBackend(self.connector, b)).connect(
            Factory.forProtocol(Protocol)
        )
        self.assertEqual(self.connector.last().endpoint.target, "tcp:host=10.0.0.5:port=22")

    def test_reloadKeepsBackendState(self) -> None:
        """
        A reload keeps the same L{Backend} object, and so its health,
        counters and ejection, for every backend that stays on the same
        route; its new weight applies.
        """
        rc = route("a.test=http://10.0.0.1:80,http://10.0.0.2:80", healthCheck=HC)
        svc = RouterService([reverse("web", rc)], self.connector, self.clock)
        svc.startService()
        self.addCleanup(svc.stopService)
        self.clock.advance(0)
        self.connector.attempts[0].fail()
        self.connector.attempts[1].succeed()
        pool = svc.tableFor("web").routes[0].pool
        a, b = pool.backends
        b.connectionStarted()
        for _ in range(3):
            pool.reportConnectFailure(b)
        svc.setListeners(
            [
                reverse(
                    "web", attr.evolve(rc, weights=(1, 5)), parseRoute("b.test=http://10.0.0.9:80")
                )
            ]
        )
        newPool = svc.tableFor("web").routes[0].pool
        self.assertIsNot(newPool, pool)
        self.assertEqual(list(newPool.backends), [a, b])
        self.assertFalse(a.healthy)
        self.assertTrue(a.health.checked)
        self.assertEqual((b.activeConnections, b.totalFailures, b.weight), (1, 3, 5))
        self.assertTrue(b.isEjected(self.clock.seconds()))
        # A connection started before the reload finishes on the same object.
        b.connectionFinished()
        self.assertEqual(newPool.backends[1].activeConnections, 0)

    def test_backendProxyProtocol(self) -> None:
        """
        A backend carries its upstream's own C{proxy_protocol_send}
        (C{"none"} as C{""}, unset as L{None}), in tcp pools and sni routes;
        a reload that keeps the backend updates it.
        """
        def listeners(tcpSetting: Any, sniSetting: Any) -> List[ListenerConfig]:
            sni = RouteConfig(
                host="*",
                upstreams=(parseUpstreamURL("tcp://10.0.0.2:443"), parseUpstreamURL("tcp://10.0.0.3:443")),
                proxyProtocolByUpstream=sniSetting,
            )
            return [
                ListenerConfig(listen=("tcp:443",), mode="sni", name="tls", routes=(sni,)),
                ListenerConfig(listen=("tcp:22",), mode="tcp", name="ssh",
                               upstreams=(" tcp:10.0.0.5:22", "tcp:10.0.0.6:22"),
                               proxyProtocolByUpstream=tcpSetting),
            ]

        svc = RouterService(
            listeners((("tcp:10.0.0.5:22", "v2"),), (("tcp://10.0.0.3:443", "none"),)), self.connector, self.clock
        )
        ssh = svc.poolFor("ssh").backends
        tls = svc.tableFor("tls").routes[0].pool.backends
        self.assertEqual([b.proxyProtocol for b in ssh], ["v2", None])
        self.assertEqual([b.proxyProtocol for b in tls], [None, ""])
        svc.setListeners(listeners((("tcp:10.0.0.6:22", "v1"),), ()))
        self.assertEqual(list(svc.poolFor("ssh").backends), list(ssh))
        self.assertEqual([b.proxyProtocol for b in ssh], [None, "v1"])
        self.assertEqual([b.proxyProtocol for b in tls], [None, None])

    def test_reloadNewBackendStartsHealthyUnchecked(self) -> None:
        """
        A backend added by a reload starts healthy and unchecked and is
        checked on the next reactor turn; existing checks keep their
        schedule.
        """
        svc = RouterService(
            [reverse("web", route("a.test=http://10.0.0.1:80", healthCheck=HC))],
            self.connector,
            self.clock,
        )
        svc.startService()
        self.addCleanup(svc.stopService)
        self.clock.advance(0)
        self.connector.last().succeed()
        self.clock.advance(1)
        svc.setListeners(
            [reverse("web", route("a.test=http://10.0.0.1:80,http://10.0.0.2:80", healthCheck=HC))]
        )
        new = svc.tableFor("web").routes[0].pool.backends[1]
        self.assertEqual((new.healthy, new.health.checked), (True, False))
        self.clock.advance(0)
        self.assertEqual(
            [a.endpoint.target for a in self.connector.attempts], ["10.0.0.1:80", "10.0.0.2:80"]
        )
        self.clock.advance(4)
        self.assertEqual(len(self.connector.attempts), 3)

    def test_reloadRemovedBackendStopsChecking(self) -> None:
        """
        A backend removed by a reload is no longer checked: its check in
        progress is cancelled and no timer of its stays.
        """
        svc = RouterService(
            [reverse("web", route("a.test=http://10.0.0.1:80,http://10.0.0.2:80", healthCheck=HC))],
            self.connector,
            self.clock,
        )
        svc.startService()
        self.addCleanup(svc.stopService)
        self.clock.advance(0)
        self.connector.attempts[0].succeed()
        svc.setListeners([reverse("web", route("a.test=http://10.0.0.1:80", healthCheck=HC))])
        self.assertTrue(self.connector.attempts[1].cancelled)
        self.clock.advance(50)
        self.assertEqual({a.endpoint.target for a in self.connector.attempts[2:]}, {"10.0.0.1:80"})

    def test_reloadChangedCheckKeepsVerdict(self) -> None:
        """
        Changing a check's interval restarts its checker with the new
        interval but keeps the verdict; dropping the check returns the
        backend to healthy and unchecked.
        """
        svc = RouterService(
            [reverse("web", route("a.test=http://10.0.0.1:80", healthCheck=HC))],
            self.connector,
            self.clock,
        )
        svc.startService()
        self.addCleanup(svc.stopService)
        self.clock.advance(0)
        self.connector.last().fail()
        slow = attr.evolve(HC, interval=60.0)
        svc.setListeners([reverse("web", route("a.test=http://10.0.0.1:80", healthCheck=slow))])
        b = svc.tableFor("web").routes[0].pool.backends[0]
        self.assertFalse(b.healthy)
        self.clock.advance(0)
        self.connector.last().fail()
        self.clock.advance(59)
        self.assertEqual(len(self.connector.attempts), 2)
        svc.setListeners([reverse("web", parseRoute("a.test=http://10.0.0.1:80"))])
        self.assertEqual((b.healthy, b.health.checked), (True, False))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_reloadDroppingCheckOnOneRouteDetaches(self) -> None:
        """
        When one of two routes sharing a checked backend drops its check,
        that route's backend no longer follows the other route's verdicts.
        """
        both = [
            route("a.test=http://10.0.0.1:80", healthCheck=HC),
            route("b.test=http://10.0.0.1:80", healthCheck=HC),
        ]
        svc = RouterService([reverse("web", *both)], self.connector, self.clock)
        svc.startService()
        self.addCleanup(svc.stopService)
        svc.setListeners([reverse("web", both[0], parseRoute("b.test=http://10.0.0.1:80"))])
        self.clock.advance(0)
        self.connector.last().fail()
        a = svc.routeFor("web", "a.test").pool.backends[0]  # type: ignore[union-attr]
        b = svc.routeFor("web", "b.test").pool.backends[0]  # type: ignore[union-attr]
        self.assertFalse(a.healthy)
        self.assertTrue(b.healthy)
        self.assertIsNot(a.health, b.health)

    def test_tcpEmptyUpstreamIgnored(self) -> None:
        """
        A blank tcp-mode upstream string is skipped, not made a backend.
        """
        svc = RouterService(
            [
                ListenerConfig(
                    listen=("tcp:22",), mode="tcp", name="ssh", upstreams=(" ", "tcp:10.0.0.6:22")
                )
            ],
            self.connector,
            self.clock,
        )
        self.assertEqual([b.key for b in svc.poolFor("ssh").backends], ["tcp:10.0.0.6:22"])

    def test_badReloadChangesNothing(self) -> None:
        """
        A reload with an error raises L{ConfigError} and leaves the tables,
        pools and checks as they were.
        """
        good = reverse("web", parseRoute("a.test=http://10.0.0.1:80"))
        svc = RouterService([good], self.connector, self.clock)
        table = svc.tableFor("web")
        bad = reverse(
            "web", parseRoute("b.test=http://10.0.0.1:80"), parseRoute("b.test=http://10.0.0.2:80")
        )
        self.assertRaises(ConfigError, svc.setListeners, [bad])
        self.assertRaises(
            ConfigError, svc.setListeners, [good, reverse("web", parseRoute("c.test=http://c:1"))]
        )
        self.assertRaises(
            ConfigError,
            svc.setListeners,
            [reverse("web", route("a.test=http://a:1", balance="random"))],
        )
        self.assertIs(svc.tableFor("web"), table)
        self.assertEqual(svc.listeners, (good,))

    def test_swapIsOneAssignment(self) -> None:
        """
        Tables and pools are replaced together: a reader holding the old
        table keeps a consistent old view while new lookups see the new one.
        """
        svc = RouterService(
            [reverse("web", parseRoute("a.test=http://10.0.0.1:80"))], self.connector, self.clock
        )
        old = svc.tableFor("web")
        svc.setListeners([reverse("web", parseRoute("a.test=http://10.0.0.2:80"))])
        self.assertEqual(old.match("a.test").pool.backends[0].key, "http://10.0.0.1:80")  # type: ignore[union-attr]
        self.assertEqual(svc.routeFor("web", "a.test").pool.backends[0].key, "http://10.0.0.2:80")  # type: ignore[union-attr]

    def test_stopServiceLeavesNoDelayedCalls(self) -> None:
        """
        C{stopService} cancels every check timer, timeout and check in
        progress: no delayed call is left on the clock, and results that
        arrive afterwards are ignored.
        """
        svc = RouterService(
            [
                reverse(
                    "web",
                    route("a.test=http://10.0.0.1:80,http://10.0.0.2:80", healthCheck=HC),
                    route("b.test=http://10.0.0.3:80", healthCheck=HTTPHC),
                )
            ],
            self.connector,
            self.clock,
        )
        svc.startService()
        self.clock.advance(0)
        self.connector.attempts[0].succeed()
        _, transport = self.connector.attempts[2].succeed()
        self.assertNotEqual(self.clock.getDelayedCalls(), [])
        svc.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertTrue(self.connector.attempts[1].cancelled)
        self.assertTrue(transport.disconnecting)
        self.clock.advance(100)
        self.assertEqual(len(self.connector.attempts), 3)
        # Started again, checks resume.
        svc.startService()
        self.clock.advance(0)
        self.assertEqual(len(self.connector.attempts), 6)
        svc.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_notRunningNoChecks(self) -> None:
        """
        Before C{startService} nothing is scheduled, even across reloads.
        """
        svc = RouterService(
            [reverse("web", route("a.test=http://10.0.0.1:80", healthCheck=HC))],
            self.connector,
            self.clock,
        )
        svc.setListeners([reverse("web", route("a.test=http://10.0.0.2:80", healthCheck=HC))])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.connector.attempts, [])

    def test_snapshot(self) -> None:
        """
        C{snapshot()} is plain JSON-serialisable data with every listener's
        routes, backends, health and counters, and every health check.
        """
        svc = RouterService(
            [
                reverse("web", route("a.test/api=http://10.0.0.1:80", healthCheck=HC)),
                ListenerConfig(
                    listen=("tcp:22",), mode="tcp", name="ssh", upstreams=("tcp:10.0.0.6:22",)
                ),
            ],
            self.connector,
            self.clock,
        )
        svc.startService()
        self.addCleanup(svc.stopService)
        self.clock.advance(0)
        self.connector.last().fail()
        svc.poolFor("ssh").backends[0].connectionStarted()
        snap = json.loads(json.dumps(svc.snapshot()))
        web, ssh = snap["listeners"]
        self.assertEqual((web["name"], web["mode"]), ("web", "reverse"))
        rt = web["routes"][0]
        self.assertEqual(
            (rt["host"], rt["prefix"], rt["upstreams"]), ("a.test", "/api", ["http://10.0.0.1:80"])
        )
        backend = rt["pool"]["backends"][0]
        self.assertEqual(
            {
                k: backend[k]
                for k in ("key", "healthy", "checked", "available", "activeConnections", "weight")
            },
            {
                "key": "http://10.0.0.1:80",
                "healthy": False,
                "checked": True,
                "available": False,
                "activeConnections": 0,
                "weight": 1,
            },
        )
        self.assertEqual(ssh["pool"]["backends"][0]["activeConnections"], 1)
        self.assertEqual(snap["healthChecks"][0]["backend"], "http://10.0.0.1:80")
        self.assertTrue(snap["healthChecks"][0]["running"])
