# -*- test-case-name: tests.test_admin -*-
"""
Tests for L{txproxy.runtime.admin}: the admin site's pages, served in memory, and
its place in L{ProxyService} (up through the drain, 503 while draining).
"""

from __future__ import annotations

import json
from typing import Any, Dict, Tuple

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from txproxy.runtime.admin import AdminService, AdminSite, adminRoot, renderStatusHTML
from txproxy.config import fromFlags
from txproxy.runtime.service import ProxyService
from txproxy.testing import FakeTransport


def get(site: Any, path: bytes, headers: bytes = b"", method: bytes = b"GET") -> Tuple[int, Dict[str, str], bytes]:
    """
    Send one request to C{site} over an in-memory transport and parse the
    response: C{(status, headers, body)}.
    """
    proto = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50001))
    transport = StringTransport()
    proto.makeConnection(transport)
    proto.dataReceived(method + b" " + path + b" HTTP/1.1\r\nHost: admin\r\n" + headers + b"\r\n")
    raw = transport.value()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    hdrs = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    if "content-length" in hdrs:
        body = body[: int(hdrs["content-length"])]
    proto.connectionLost(None)
    return status, hdrs, body


class FakeSource:
    draining = False
    text = b"# HELP x_total x\n# TYPE x_total counter\nx_total 1.0\n"

    def isDraining(self) -> bool:
        return self.draining

    def metricsText(self) -> Any:
        return self.text

    def statusData(self) -> Any:
        return {"pid": 1, "draining": self.draining, "listeners": [
            {"name": "web<1>", "mode": "forward", "addresses": [{"endpoint": "tcp:3128", "bound": "0.0.0.0:3128"}],
             "openConnections": 2, "openTunnels": 1, "requestsTotal": 7, "limits": {}}]}


class AdminPagesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.source = FakeSource()
        self.site = AdminSite(adminRoot(self.source), reactor=self.reactor)

    def test_healthzServing(self) -> None:
        """
        C{/healthz} answers C{200 ok} while serving.
        """
        status, _, body = get(self.site, b"/healthz")
        self.assertEqual((status, body), (200, b"ok\n"))

    def test_healthzDraining(self) -> None:
        """
        C{/healthz} answers C{503} once the source is draining.
        """
        self.source.draining = True
        status, _, body = get(self.site, b"/healthz")
        self.assertEqual((status, body), (503, b"draining\n"))

    def test_metricsContentType(self) -> None:
        """
        C{/metrics} serves the source's text with Prometheus's content type.
        """
        status, headers, body = get(self.site, b"/metrics")
        self.assertEqual(status, 200)
        self.assertTrue(headers["content-type"].startswith("text/plain; version=0.0.4"))
        self.assertEqual(body, self.source.text)

    def test_metricsDeferred(self) -> None:
        """
        A source may answer C{/metrics} with a Deferred; the response waits
        for it.
        """
        d: defer.Deferred = defer.Deferred()
        self.source.metricsText = lambda: d  # type: ignore[method-assign]
        proto = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50001))
        transport = StringTransport()
        proto.makeConnection(transport)
        proto.dataReceived(b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(transport.value(), b"")
        d.callback(b"late 1\n")
        self.assertTrue(transport.value().endswith(b"late 1\n"))

    def test_metricsFailureIs500(self) -> None:
        """
        A failing source gives a 500 with no traceback on the wire.
        """
        self.source.metricsText = lambda: 1 / 0  # type: ignore[method-assign]
        status, _, body = get(self.site, b"/metrics")
        self.assertEqual((status, body), (500, b"internal error\n"))
        self.flushLoggedErrors(ZeroDivisionError)

    def test_statusJSON(self) -> None:
        """
        C{/status} with C{Accept: application/json} is the source's data as
        JSON.
        """
        status, headers, body = get(self.site, b"/status", b"Accept: application/json\r\n")
        self.assertEqual(status, 200)
        self.assertEqual(headers["content-type"], "application/json")
        self.assertEqual(json.loads(body)["listeners"][0]["openConnections"], 2)

    def test_statusHTMLEscaped(self) -> None:
        """
        C{/status} for a browser is HTML, with values escaped.
        """
        status, headers, body = get(self.site, b"/status", b"Accept: text/html\r\n")
        self.assertEqual(status, 200)
        self.assertTrue(headers["content-type"].startswith("text/html"))
        self.assertIn(b"web&lt;1&gt;", body)
        self.assertNotIn(b"web<1>", body)

    def test_headRequest(self) -> None:
        """
        C{HEAD /healthz} has the status and no body.
        """
        status, _, body = get(self.site, b"/healthz", method=b"HEAD")
        self.assertEqual((status, body), (200, b""))

    def test_unknownPathIs404(self) -> None:
        """
        Other paths are 404.
        """
        status, _, _ = get(self.site, b"/nope")
        self.assertEqual(status, 404)

    def test_supervisorStatusHTML(self) -> None:
        """
        A supervisor's status (with workers) renders a row per worker.
        """
        page = renderStatusHTML({"pid": 9, "workers": [{"id": 1, "pid": 10, "running": True, "restarts": 2}]})
        self.assertIn("<td>10</td>", page)


CONNECT = b"CONNECT 192.0.2.1:443 HTTP/1.1\r\nHost: 192.0.2.1:443\r\n\r\n"


class ProxyServiceAdminTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        config = fromFlags(["tcp:3128"], [("admin", "tcp:9901:interface=127.0.0.1"), ("connect-ports", "*"),
                                          ("drain-timeout", "5"), ("name", "web")])
        self.service = ProxyService(config, self.reactor)
        self.service.installSignalHandlers = False
        self.service.startService()
        self.addCleanup(self._stop)

    def _stop(self) -> None:
        if self.service.running:
            self.service.stopService()
            self.reactor.advance(10)

    def site(self) -> Any:
        (admin,) = [f for (port, f, backlog, iface) in self.reactor.tcpServers if port == 9901]
        self.assertEqual(self.reactor.tcpServers[[p for p, *_ in self.reactor.tcpServers].index(9901)][3], "127.0.0.1")
        return admin

    def proxyFactory(self) -> Any:
        (factory,) = [f for (port, f, backlog, iface) in self.reactor.tcpServers if port == 3128]
        return factory

    def test_adminListensOnItsEndpoint(self) -> None:
        """
        C{--admin} makes the proxy listen on the admin endpoint too.
        """
        self.assertIsInstance(self.service.admin, AdminService)
        self.assertIsInstance(self.site(), AdminSite)

    def test_metricsParseAndCount(self) -> None:
        """
        C{/metrics} parses with prometheus-client's parser and counts the
        proxy's connections.
        """
        factory = self.proxyFactory()
        proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = FakeTransport()
        transport.protocol = proto
        proto.makeConnection(transport)
        status, _, body = get(self.site(), b"/metrics")
        self.assertEqual(status, 200)
        families = {f.name: f for f in text_string_to_metric_families(body.decode())}
        for required in ("txproxy_connections", "txproxy_active_connections", "txproxy_requests", "txproxy_bytes"):
            self.assertIn(required, families)
        (sample,) = [s for s in families["txproxy_connections"].samples if s.name == "txproxy_connections_total"]
        self.assertEqual((sample.labels["listener"], sample.labels["mode"], sample.value), ("web", "forward", 1.0))
        transport.loseConnection()

    def test_statusListsListeners(self) -> None:
        """
        C{/status} (JSON) lists each listener with its mode, endpoint and
        open connections, plus the limiter and router state.
        """
        status, _, body = get(self.site(), b"/status", b"Accept: application/json\r\n")
        data = json.loads(body)
        (listener,) = data["listeners"]
        self.assertEqual((listener["name"], listener["mode"]), ("web", "forward"))
        self.assertEqual(listener["addresses"][0]["endpoint"], "tcp:3128")
        self.assertEqual(listener["openConnections"], 0)
        self.assertIn("limiter", data)
        self.assertFalse(data["draining"])

    def test_healthzTurns503DuringDrainAndAdminStaysUp(self) -> None:
        """
        Stopping the service closes the proxy's listening port at once, but
        the admin site keeps serving through the drain, with C{/healthz} at
        C{503}; it stops only once the drain is over.
        """
        factory = self.proxyFactory()
        proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = FakeTransport()
        transport.protocol = proto
        proto.makeConnection(transport)
        proto.dataReceived(CONNECT[:20])  # half a head: a request in progress
        self.assertEqual(get(self.site(), b"/healthz")[0], 200)
        site = self.site()
        d = self.service.stopService()
        self.assertNoResult(d)
        proxyPorts = [p for p in self.service.listenerServices if p.port is not None]
        self.assertEqual(proxyPorts, [])
        self.assertTrue(all(svc.port is not None for svc in self.service.admin.listeners))
        self.assertEqual(get(site, b"/healthz"), (503, get(site, b"/healthz")[1], b"draining\n"))
        metrics = get(site, b"/metrics")[2].decode()
        self.assertIn("txproxy_draining{worker=\"0\"} 1.0", metrics)
        self.reactor.advance(6)
        self.successResultOf(d)
        self.assertTrue(all(svc.port is None for svc in self.service.admin.listeners))


class NoAdminTests(SynchronousTestCase):
    def test_noAdminNoMetrics(self) -> None:
        """
        Without C{--admin}, nothing is counted and no admin site exists.
        """
        service = ProxyService(fromFlags(["tcp:3128"], []), MemoryReactorClock())
        self.assertIsNone(service.metrics)
        self.assertIsNone(service.admin)


class ReloadMetricsTests(SynchronousTestCase):
    def test_reloadsExported(self) -> None:
        """
        The service's reload counters appear in C{/metrics}: a successful
        reload counts as a success and sets the last-success time.
        """
        reactor = MemoryReactorClock()
        reactor.advance(1700000000)
        service = ProxyService(fromFlags(["tcp:3128"], [("admin", "tcp:9901")]), reactor)
        self.assertTrue(service.reload())
        service.reloadFailures += 1
        families = {f.name: f for f in text_string_to_metric_families(service.metrics.exposition().decode())}
        results = {s.labels["result"]: s.value for s in families["txproxy_reloads"].samples
                   if s.name == "txproxy_reloads_total"}
        self.assertEqual(results, {"success": 1.0, "failure": 1.0})
        (last,) = families["txproxy_last_reload_success_timestamp_seconds"].samples
        self.assertEqual(last.value, 1700000000)


class StatusForPeopleTests(SynchronousTestCase):
    """
    C{/status} for a person: txproxy's version, labels instead of JSON
    attribute names, each backend's health check, totals across workers.
    """

    def setUp(self) -> None:
        import os
        import tempfile

        folder = tempfile.mkdtemp()
        path = os.path.join(folder, "proxy.toml")
        with open(path, "w") as f:
            f.write(
                'admin = "tcp:9901:interface=127.0.0.1"\n'
                "[[listeners]]\n"
                'name = "web"\nlisten = ["tcp:8080"]\nmode = "reverse"\nmax_conns = 100\nrate = "5/s"\n'
                "  [[listeners.routes]]\n"
                '  host = "checked.test"\n  upstreams = ["http://127.0.0.1:1"]\n'
                "    [listeners.routes.health_check]\n"
                '    type = "http"\n    path = "/healthz"\n    interval = 5\n'
                "  [[listeners.routes]]\n"
                '  host = "*"\n  upstreams = ["http://127.0.0.1:2"]\n'
            )
        self.reactor = MemoryReactorClock()
        self.service = ProxyService(fromFlags([], [], path), self.reactor)
        self.service.installSignalHandlers = False
        self.service.startService()
        self.addCleanup(self._stop)
        (self.site,) = [f for (port, f, _, _) in self.reactor.tcpServers if port == 9901]

    def _stop(self) -> None:
        if self.service.running:
            self.service.stopService()
            self.reactor.advance(60)

    def test_versionOnStatus(self) -> None:
        """
        The JSON form carries C{txproxy.__version__}; the page shows it.
        """
        from txproxy import __version__

        data = json.loads(get(self.site, b"/status?format=json")[2])
        self.assertEqual(data["version"], __version__)
        self.assertIn(f"txproxy {__version__}".encode(), get(self.site, b"/status")[2])

    def test_labelsForPeople(self) -> None:
        """
        The HTML page names limits and limiter counters in words
        (C{max connections}, C{rate buckets in memory}), never with the
        JSON form's attribute names (C{maxConns}, C{bucketCount}), which
        the JSON form keeps.
        """
        page = get(self.site, b"/status")[2].decode()
        for key in ("maxConns", "bucketCount", "leaseCount", "redisErrors", "decisions:"):
            self.assertNotIn(key, page)
        self.assertIn("max connections: 100", page)
        self.assertIn("rate buckets in memory", page)
        data = json.loads(get(self.site, b"/status?format=json")[2])
        self.assertEqual(data["listeners"][0]["limits"]["maxConns"], 100)
        self.assertIn("bucketCount", data["limiter"])

    def test_backendHealthCheckShown(self) -> None:
        """
        Each backend says whether it has an active health check: the JSON
        form has its kind, path and interval (L{None} for none), the page
        says C{http GET /healthz every 5s} or C{none (passive only)}.
        """
        data = json.loads(get(self.site, b"/status?format=json")[2])
        (listener,) = data["router"]["listeners"]
        checks = {r["host"]: r["pool"]["backends"][0]["healthCheck"] for r in listener["routes"]}
        self.assertEqual(checks["checked.test"], {"kind": "http", "path": "/healthz", "interval": 5.0})
        self.assertIsNone(checks["*"])
        page = get(self.site, b"/status")[2].decode()
        self.assertIn("http GET /healthz every 5s", page)
        self.assertIn("none (passive only)", page)


class WorkerTotalsTests(SynchronousTestCase):
    def test_totalsAcrossWorkers(self) -> None:
        """
        A supervisor's page sums open connections, tunnels and requests
        over the workers that answered, per listener and overall.
        """
        from txproxy.runtime.statuspage import workerTotals

        def status(conns: int, tunnels: int, requests: int) -> Dict[str, Any]:
            return {"listeners": [{"name": "web", "mode": "forward", "openConnections": conns,
                                   "openTunnels": tunnels, "requestsTotal": requests}]}

        workers = [{"id": 1, "running": True, "status": status(2, 1, 10)},
                   {"id": 2, "running": True, "status": status(3, 0, 32)},
                   {"id": 3, "running": False}]
        totals = workerTotals(workers)
        self.assertEqual((totals["openConnections"], totals["openTunnels"], totals["requestsTotal"],
                          totals["workersReporting"]), (5, 1, 42, 2))
        self.assertEqual(totals["listeners"]["web"]["requestsTotal"], 42)
        page = renderStatusHTML({"pid": 9, "version": "9.9", "workers": workers})
        self.assertIn("Totals across workers", page)
        self.assertIn("<td class=num>42</td>", page)
        self.assertIn("txproxy 9.9", page)
