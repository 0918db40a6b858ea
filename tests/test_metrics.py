# -*- test-case-name: tests.test_metrics -*-
"""
Tests for L{txproxy.metrics}: counters move as traffic flows through a
L{ForwardProxyProtocol} on fake transports, and the exposition parses.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from txproxy.accesslog import AccessRecord
from txproxy.metrics import Metrics, backendStatesFromRouter
from txproxy.testing import FakeConnector, connect, forwardFactory

CONNECT = b"CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\n"


def samples(metrics: Metrics) -> Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]:
    """
    Parse C{metrics}' exposition with prometheus-client's own parser into
    C{(sample name, sorted labels) -> value}.
    """
    text = metrics.exposition().decode("utf-8")
    out: Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(metrics: Metrics, name: str, **labels: str) -> float:
    """
    The value of the one sample named C{name} whose labels include C{labels}
    (0 when there is none).
    """
    found = [v for (n, ls), v in samples(metrics).items() if n == name and set(labels.items()) <= set(ls)]
    if len(found) > 1:
        raise AssertionError(f"{len(found)} samples match {name} {labels}")
    return found[0] if found else 0.0


class MetricsTrafficTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.connector = FakeConnector({"example.test": ["192.0.2.10"]})
        self.metrics = Metrics(worker="3", processMetrics=False)
        self.factory = forwardFactory(self.connector, self.clock, connect_ports="443", name="web")
        self.factory.metrics = self.metrics
        self.metrics.bindListener(self.factory.listener, factory=self.factory)

    def test_connectionsCountedOpenAndClosed(self) -> None:
        """
        Accepting a connection moves C{txproxy_connections_total} and
        C{txproxy_active_connections}; closing it lowers only the latter.
        """
        p1, t1 = connect(self.factory)
        p2, t2 = connect(self.factory)
        self.assertEqual(value(self.metrics, "txproxy_connections_total", listener="web", mode="forward"), 2)
        self.assertEqual(value(self.metrics, "txproxy_active_connections", listener="web"), 2)
        t1.peerClosed()
        self.assertEqual(value(self.metrics, "txproxy_connections_total", listener="web"), 2)
        self.assertEqual(value(self.metrics, "txproxy_active_connections", listener="web"), 1)

    def test_everySeriesCarriesWorkerLabel(self) -> None:
        """
        The hot series carry the C{worker} label given to L{Metrics}.
        """
        connect(self.factory)
        self.assertEqual(value(self.metrics, "txproxy_connections_total", worker="3"), 1)

    def test_tunnelBytesVisibleWhileOpenAndNotDoubleCounted(self) -> None:
        """
        Bytes of an open tunnel appear in C{txproxy_bytes_total} at scrape
        time (upstream = toward the upstream, downstream = toward the
        client); when the tunnel ends they are counted once, and the
        request is counted with its method and code.
        """
        proto, client = connect(self.factory)
        proto.dataReceived(CONNECT)
        attempt = self.connector.last
        attempt.succeed()
        proto.dataReceived(b"x" * 100)
        attempt.protocol.dataReceived(b"y" * 1000)
        self.assertEqual(value(self.metrics, "txproxy_bytes_total", direction="upstream"), 100)
        self.assertEqual(value(self.metrics, "txproxy_bytes_total", direction="downstream"), 1000)
        self.assertEqual(value(self.metrics, "txproxy_requests_total", code="200"), 0)
        proto.dataReceived(b"x" * 5)
        client.peerClosed()
        self.assertEqual(value(self.metrics, "txproxy_bytes_total", direction="upstream"), 105)
        self.assertEqual(value(self.metrics, "txproxy_bytes_total", direction="downstream"), 1000)
        self.assertEqual(value(self.metrics, "txproxy_requests_total", code="200", method="CONNECT"), 1)
        self.assertEqual(value(self.metrics, "txproxy_active_connections"), 0)

    def test_refusalCountedByCode(self) -> None:
        """
        A refused CONNECT counts under its status code, with the bytes of the
        error response sent downstream.
        """
        proto, client = connect(self.factory)
        proto.dataReceived(b"CONNECT example.test:25 HTTP/1.1\r\nHost: example.test\r\n\r\n")
        self.assertEqual(value(self.metrics, "txproxy_requests_total", code="403"), 1)
        self.assertEqual(value(self.metrics, "txproxy_bytes_total", direction="downstream"), len(client.value()))

    def test_headTimeoutCountedAs408(self) -> None:
        """
        A slow head (fake clock) counts as a 408.
        """
        connect(self.factory)
        self.clock.advance(self.factory.listener.headerTimeout + 1)
        self.assertEqual(value(self.metrics, "txproxy_requests_total", code="408"), 1)

    def test_unknownMethodsAreFolded(self) -> None:
        """
        Methods outside the known set are counted as C{other}, so clients
        cannot create series at will.
        """
        record = AccessRecord(client="c", method="BREW", target="-", status=501, start=0.0)
        self.metrics.requestFinished(self.factory.listener, record)
        self.assertEqual(value(self.metrics, "txproxy_requests_total", method="other", code="501"), 1)

    def test_tcpModesCountedUnderTheirMethod(self) -> None:
        """
        A C{tcp}-mode connection counts under method C{TCP} (and C{sni}
        mode under C{TLS}), the method of their access records, not
        C{other}.
        """
        from txproxy.stream.tcp import TCPProxyFactory
        from txproxy.testing import listenerConfig

        listener = listenerConfig(mode="tcp", name="ssh", upstream="tcp:192.0.2.5:22")
        factory = TCPProxyFactory(listener, self.connector, self.clock, metrics=self.metrics)
        proto, client = connect(factory)
        self.connector.last.succeed()
        client.peerClosed()
        self.assertEqual(value(self.metrics, "txproxy_requests_total", listener="ssh", method="TCP", code="200"), 1)

    def test_countRequestWithoutRecord(self) -> None:
        """
        L{Metrics.countRequest} counts like L{Metrics.requestFinished},
        without an access record.
        """
        self.metrics.countRequest(self.factory.listener, "GET", 404, 10, 20)
        self.assertEqual(value(self.metrics, "txproxy_requests_total", method="GET", code="404"), 1)
        self.assertEqual(value(self.metrics, "txproxy_bytes_total", direction="upstream"), 10)
        self.assertEqual(value(self.metrics, "txproxy_bytes_total", direction="downstream"), 20)

    def test_listenerBoundOnFirstUse(self) -> None:
        """
        A listener never bound explicitly is bound on first use, named by
        its config.
        """
        other = forwardFactory(self.connector, self.clock, name="other")
        other.metrics = self.metrics
        connect(other)
        self.assertEqual(value(self.metrics, "txproxy_connections_total", listener="other"), 1)

    def test_reboundListenerKeepsCounting(self) -> None:
        """
        A listener rebuilt with the same name and mode (a reload) keeps its
        counters.
        """
        connect(self.factory)
        again = forwardFactory(self.connector, self.clock, connect_ports="443", name="web")
        again.metrics = self.metrics
        self.metrics.bindListener(again.listener, factory=again)
        connect(again)
        self.assertEqual(value(self.metrics, "txproxy_connections_total", listener="web"), 2)


class _Records:
    def __init__(self) -> None:
        self.records: List[AccessRecord] = []

    def log(self, record: AccessRecord) -> None:
        self.records.append(record)


class RouteLabelTests(SynchronousTestCase):
    """
    C{txproxy_requests_total} carries a C{route} label: the configured route
    (C{host[/prefix]}) in reverse and sni modes, C{-} when no route handled
    the request and in the other modes.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.connector = FakeConnector()
        self.metrics = Metrics(processMetrics=False)

    def reverseFactory(self, accessLog: Any = None) -> Any:
        from txproxy.config import fromFlags
        from txproxy.reverse import ReverseProxyFactory
        from txproxy.router import RouterService

        listener = fromFlags(["tcp:0"], [
            ("mode", "reverse"), ("name", "web"),
            ("route", "a.test=http://192.0.2.1:8001"),
            ("route", "a.test/api/=http://192.0.2.2:8002"),
            ("route", "*=http://192.0.2.3:8003"),
        ]).listeners[0]
        router = RouterService([listener], self.connector, self.clock)
        return ReverseProxyFactory(listener, self.connector, self.clock, accessLog=accessLog,
                                   metrics=self.metrics, router=router)

    def exchange(self, proto: Any, host: bytes, path: bytes = b"/") -> None:
        """
        One request and its response (on a new or a pooled upstream
        connection).
        """
        attempts = len(self.connector.attempts)
        proto.dataReceived(b"GET " + path + b" HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
        if len(self.connector.attempts) > attempts:
            self.connector.last.succeed()
        self.connector.last.protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    def requests(self, **labels: str) -> float:
        return value(self.metrics, "txproxy_requests_total", **labels)

    def test_reverseRequestCountedUnderItsRoute(self) -> None:
        """
        A completed reverse request moves the counter of its route, named
        by host and normalised prefix; without an access log (the HTTP
        core's record-less path) and with one.
        """
        for accessLog in (None, _Records()):
            self.metrics = Metrics(processMetrics=False)
            factory = self.reverseFactory(accessLog)
            proto, client = connect(factory)
            self.exchange(proto, b"a.test", b"/api/v1")
            self.exchange(proto, b"a.test", b"/")
            self.exchange(proto, b"elsewhere.test", b"/")
            self.assertEqual(self.requests(route="a.test/api", code="200", method="GET", listener="web"), 1)
            self.assertEqual(self.requests(route="a.test", code="200"), 1)
            self.assertEqual(self.requests(route="*", code="200"), 1)
            self.assertEqual(self.requests(route="-"), 0)

    def test_noRouteIsDash(self) -> None:
        """
        A 404 counts under C{route="-"}, also right after a routed request
        on the same connection; the label does not leak into later
        reports.
        """
        from txproxy.config import fromFlags
        from txproxy.reverse import ReverseProxyFactory
        from txproxy.router import RouterService

        listener = fromFlags(["tcp:0"], [("mode", "reverse"), ("name", "web"),
                                         ("route", "a.test=http://192.0.2.1:8001")]).listeners[0]
        router = RouterService([listener], self.connector, self.clock)
        factory = ReverseProxyFactory(listener, self.connector, self.clock, metrics=self.metrics, router=router)
        proto, client = connect(factory)
        self.exchange(proto, b"a.test")
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: nope.test\r\n\r\n")
        self.assertIn(b"HTTP/1.1 404 ", client.value())
        self.assertEqual(self.requests(route="a.test", code="200"), 1)
        self.assertEqual(self.requests(route="-", code="404"), 1)
        self.assertEqual(self.metrics.statsFor(listener).route, "-")
        self.metrics.countRequest(listener, "GET", 400, 0, 0)
        self.assertEqual(self.requests(route="-", code="400"), 1)

    def test_routeNotFromHostHeader(self) -> None:
        """
        The label is the route's configured name, never the Host header:
        many names through the default route make one series.
        """
        factory = self.reverseFactory()
        for i in range(5):
            proto, client = connect(factory)
            self.exchange(proto, b"host%d.test" % i)
        self.assertEqual(self.requests(route="*", code="200"), 5)
        routes = {dict(ls)["route"] for (n, ls) in samples(self.metrics) if n == "txproxy_requests_total"}
        self.assertEqual(routes, {"*"})

    def test_sniConnectionCountedUnderItsRoute(self) -> None:
        """
        An sni connection counts under its route's host pattern; a name no
        route matches counts under C{-}.
        """
        from tests.test_clienthello import FIXTURES
        from txproxy.stream.sni import SNIRouterFactory
        from txproxy.testing import listenerConfig

        listener = listenerConfig(mode="sni", name="tls", route=["*.a.test=tcp://192.0.2.2:9443"])
        factory = SNIRouterFactory(listener, self.connector, self.clock, metrics=self.metrics)
        proto, client = connect(factory)
        proto.dataReceived(FIXTURES["openssl-multirecord.bin"])  # multi.a.test
        self.connector.last.succeed()
        client.peerClosed()
        proto, client = connect(factory)
        proto.dataReceived(FIXTURES["openssl-sni.bin"])  # a.test: no route
        self.assertEqual(self.requests(route="*.a.test", code="200", method="TLS", listener="tls", mode="sni"), 1)
        self.assertEqual(self.requests(route="-", code="404"), 1)

    def test_forwardIsDash(self) -> None:
        """
        Forward-mode requests (no routes) count under C{route="-"}.
        """
        factory = forwardFactory(self.connector, self.clock, name="fwd")
        factory.metrics = self.metrics
        proto, client = connect(factory)
        proto.dataReceived(b"CONNECT example.test:25 HTTP/1.1\r\nHost: example.test\r\n\r\n")
        self.assertEqual(self.requests(route="-", code="403", listener="fwd"), 1)

    def test_countRequestTakesRoute(self) -> None:
        """
        L{Metrics.countRequest} takes the route label as an argument
        (default C{-}).
        """
        listener = forwardFactory(name="l").listener
        self.metrics.countRequest(listener, "GET", 200, 1, 2, route="b.test/x")
        self.metrics.countRequest(listener, "GET", 200, 1, 2)
        self.assertEqual(self.requests(route="b.test/x"), 1)
        self.assertEqual(self.requests(route="-"), 1)


class MetricsProcessTests(SynchronousTestCase):
    def test_histograms(self) -> None:
        """
        Connect and response-head times land in their histograms.
        """
        m = Metrics(processMetrics=False)
        listener = forwardFactory(name="l").listener
        m.upstreamConnected(listener, 0.003)
        m.responseHeadReceived(listener, 0.2)
        self.assertEqual(value(m, "txproxy_upstream_connect_seconds_count", listener="l"), 1)
        self.assertEqual(value(m, "txproxy_upstream_connect_seconds_bucket", listener="l", le="0.005"), 1)
        self.assertEqual(value(m, "txproxy_upstream_connect_seconds_bucket", listener="l", le="0.0025"), 0)
        self.assertEqual(value(m, "txproxy_upstream_response_head_seconds_sum", listener="l"), 0.2)

    def test_reloads(self) -> None:
        """
        Reloads are counted by result; a success sets the last-success time.
        """
        m = Metrics(processMetrics=False)
        m.reloadSucceeded(when=1234.0)
        m.reloadFailed()
        m.reloadFailed()
        self.assertEqual(value(m, "txproxy_reloads_total", result="success"), 1)
        self.assertEqual(value(m, "txproxy_reloads_total", result="failure"), 2)
        self.assertEqual(value(m, "txproxy_last_reload_success_timestamp_seconds"), 1234.0)

    def test_limiterCountersReadAtScrape(self) -> None:
        """
        The limiter service's counters are exported at scrape time.
        """

        class FakeLimiter:
            decisions = {"allowed": 5, "rate": 2}
            redisErrors = 3
            redisTimeouts = 1
            fallbacks = 1
            recoveries = 0
            usingFallback = True

        m = Metrics(processMetrics=False)
        m.setLimiterSource(lambda: FakeLimiter())
        self.assertEqual(value(m, "txproxy_limiter_decisions_total", decision="rate"), 2)
        self.assertEqual(value(m, "txproxy_limiter_decisions_total", decision="allowed"), 5)
        self.assertEqual(value(m, "txproxy_redis_errors_total"), 3)
        self.assertEqual(value(m, "txproxy_redis_fallback_active"), 1)

    def test_noLimiterNoSeries(self) -> None:
        """
        Without a limiter service, no limiter series are exported.
        """
        m = Metrics(processMetrics=False)
        m.setLimiterSource(lambda: None)
        names = {n for n, _ in samples(m)}
        self.assertNotIn("txproxy_limiter_decisions_total", names)

    def test_backendSource(self) -> None:
        """
        Registered backend sources become health gauges at scrape time.
        """
        m = Metrics(processMetrics=False)
        m.addBackendSource(lambda: [
            {"listener": "r", "route": "a.test", "backend": "http://10.0.0.1:80", "healthy": True,
             "ejected": False, "activeConnections": 4, "totalConnections": 9, "totalFailures": 1},
            {"listener": "r", "route": "a.test", "backend": "http://10.0.0.2:80", "healthy": False},
        ])
        self.assertEqual(value(m, "txproxy_backend_up", backend="http://10.0.0.1:80"), 1)
        self.assertEqual(value(m, "txproxy_backend_up", backend="http://10.0.0.2:80"), 0)
        self.assertEqual(value(m, "txproxy_backend_active_connections", backend="http://10.0.0.1:80"), 4)
        self.assertEqual(value(m, "txproxy_backend_failures_total", backend="http://10.0.0.1:80"), 1)

    def test_backendStatesFromRouter(self) -> None:
        """
        A real L{RouterService} snapshot converts into backend states.
        """
        from txproxy.config import fromFlags
        from txproxy.router import RouterService

        config = fromFlags(["tcp:0"], [("mode", "reverse"), ("route", "a.test=http://10.0.0.1:80,http://10.0.0.2:80")])
        listener = config.listeners[0]
        router = RouterService(listeners=[listener], clock=Clock())
        states = list(backendStatesFromRouter(router))
        self.assertEqual(sorted(s["backend"] for s in states), ["http://10.0.0.1:80", "http://10.0.0.2:80"])
        self.assertTrue(all(s["route"] == "a.test" for s in states))

    def test_drainingGauge(self) -> None:
        """
        C{txproxy_draining} follows the draining source.
        """
        m = Metrics(processMetrics=False)
        state = {"d": False}
        m.drainingSource = lambda: state["d"]
        self.assertEqual(value(m, "txproxy_draining"), 0)
        state["d"] = True
        self.assertEqual(value(m, "txproxy_draining"), 1)

    def test_processMetrics(self) -> None:
        """
        The standard process series (open and maximum fds) are included.
        """
        m = Metrics()
        names = {n for n, _ in samples(m)}
        self.assertIn("process_open_fds", names)
        self.assertIn("process_max_fds", names)

    def test_privateRegistry(self) -> None:
        """
        Two L{Metrics} never collide: each has its own registry, not the
        global one.
        """
        from prometheus_client import REGISTRY

        a, b = Metrics(), Metrics()
        self.assertIsNot(a.registry, REGISTRY)
        self.assertIsNot(a.registry, b.registry)
