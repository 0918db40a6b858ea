# -*- test-case-name: tests.test_metrics -*-
"""
Prometheus metrics for one txproxy process, on a private
L{prometheus_client.CollectorRegistry} (never the global one).

The hot counters (connections, requests, bytes) are plain Python integers on
a per-listener L{ListenerStats} object, bound once per listener; they become
Prometheus samples only when someone scrapes C{/metrics}.  A connection,
request or tunnel therefore costs a dictionary lookup and a few integer
additions, never a lock or a C{.labels()} lookup.  Bytes of tunnels that
are still open are read from their relays (C{relay.bytesUp/bytesDown}) at
scrape time and added to the totals of finished ones, so a long download
shows up while it runs without any work per relayed chunk.

Series (every one carries C{listener}, C{mode} and C{worker} labels unless
noted):

  - C{txproxy_connections_total}: client connections accepted;
  - C{txproxy_active_connections}: client connections open now;
  - C{txproxy_requests_total{method,code,route,protocol}}: requests and
    tunnels answered; C{route} is the configured route that handled it
    (reverse: C{host[/prefix]}; sni: C{host}), C{-} when none did (a 404, a
    refusal before routing, and every C{forward}, C{tcp} and C{transparent}
    request); C{protocol} is the client's: C{http/1.1} (HTTP/1.0
    included), C{h2}, or C{-} in the TCP modes;
  - C{txproxy_h2_connection_errors_total{kind}}: HTTP/2 client connections
    closed with C{GOAWAY} for an error: a flood (C{reset}, C{refused},
    C{ping}, C{settings}, C{empty_data}, C{window_update}, C{priority}) or
    C{protocol_error} (oversized header lists and C{CONTINUATION} floods
    among them);
  - C{txproxy_bytes_total{direction}}: C{upstream} (toward upstreams) and
    C{downstream} (toward clients);
  - C{txproxy_upstream_connect_seconds}, C{txproxy_upstream_response_head_seconds}:
    histograms fed by L{Metrics.upstreamConnected} and
    L{Metrics.responseHeadReceived};
  - C{txproxy_limiter_decisions_total{decision}}, C{txproxy_redis_errors_total},
    C{txproxy_redis_timeouts_total}, C{txproxy_redis_fallbacks_total},
    C{txproxy_redis_fallback_active} (read from the limiter service at scrape
    time; C{worker} label only);
  - C{txproxy_reloads_total{result}}, C{txproxy_last_reload_success_timestamp_seconds};
  - C{txproxy_backend_up}, C{txproxy_backend_ejected},
    C{txproxy_backend_active_connections}, C{txproxy_backend_connections_total},
    C{txproxy_backend_failures_total} (C{listener}, C{route}, C{backend},
    C{worker}), from the callables given to L{Metrics.addBackendSource};
  - C{txproxy_build_info{version,python,implementation}}: always 1, the
    labels saying which txproxy runs on which Python (no C{worker} label:
    the C{--workers} supervisor adds it when it merges);
  - C{txproxy_draining}, C{txproxy_start_time_seconds}, and the standard
    C{process_*} series (open and maximum file descriptors, memory, CPU).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from twisted.logger import Logger

from txproxy import __version__

log = Logger(namespace="txproxy.workers")

try:
    from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4 as CONTENT_TYPE_LATEST
except ImportError:  # prometheus-client before 0.22: the latest was 0.0.4
    from prometheus_client.exposition import CONTENT_TYPE_LATEST

#: The content type of L{Metrics.exposition}: the classic text format
#: (version 0.0.4), which every Prometheus version reads.

__all__ = [
    "Metrics",
    "ListenerStats",
    "BackendState",
    "backendStatesFromRouter",
    "buildInfo",
    "CONTENT_TYPE_LATEST",
]

#: Methods counted under their own name; any other is counted as C{other}
#: (a client must not be able to create series at will).  C{TCP} and C{TLS}
#: are the methods of the C{tcp}/C{transparent} and C{sni} modes' records.
#: The C{protocol} label of an access record's C{version}.
_PROTOCOLS = {"HTTP/1.1": "http/1.1", "HTTP/1.0": "http/1.1", "HTTP/2.0": "h2"}

KNOWN_METHODS = frozenset(
    ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "-", "TCP", "TLS"]
)

#: Buckets (seconds) for the upstream connect and response-head histograms.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

#: The state of one backend at scrape time: C{listener}, C{route},
#: C{backend} (strings) and C{healthy}, C{ejected} (booleans),
#: C{activeConnections}, C{totalConnections}, C{totalFailures} (numbers).
#: Missing keys are left out of the series.
BackendState = Mapping[str, Any]


class ListenerStats:
    """
    The hot counters of one listener group.  Plain integers, incremented by
    L{Metrics} on the reactor thread and read at scrape time.

    @ivar name: the listener's name (the C{listener} label).
    @ivar mode: its mode (the C{mode} label).
    @ivar opened: connections accepted.
    @ivar closed: connections closed.
    @ivar requests: C{(method, code, route, protocol)} to the number of
        requests answered.
    @ivar h2Errors: C{kind} to the number of HTTP/2 connections closed for
        it (L{Metrics.h2ConnectionError}).
    @ivar route: the C{route} label of the request being reported right
        now, for a protocol whose reporting code cannot pass it: it sets
        it (from L{Metrics.statsFor}) just before its report and puts
        C{"-"} back just after; see L{Metrics.countRequest}.
    @ivar bytesUp: bytes sent toward upstreams by finished requests/tunnels.
    @ivar bytesDown: bytes sent toward clients by finished requests/tunnels.
    @ivar factories: the protocol factories serving this listener; their
        C{protocols} sets are read at scrape time for live tunnel bytes.
    """

    __slots__ = ("name", "mode", "opened", "closed", "requests", "bytesUp", "bytesDown", "factories",
                 "connectTime", "headTime", "route", "h2Errors")

    def __init__(self, name: str, mode: str) -> None:
        self.name = name
        self.mode = mode
        self.opened = 0
        self.closed = 0
        self.requests: Dict[Tuple[str, str, str, str], int] = {}
        self.h2Errors: Dict[str, int] = {}
        self.route = "-"
        self.bytesUp = 0
        self.bytesDown = 0
        self.factories: List[Any] = []
        self.connectTime: Any = None
        self.headTime: Any = None



def _liveBytes(factory: Any) -> Tuple[int, int]:
    """
    Bytes moved so far by the relays of C{factory}'s open connections that
    have not finished (a finished relay's bytes are in its access record,
    hence already in the totals).
    """
    up = down = 0
    for proto in list(getattr(factory, "protocols", ())):
        relay = getattr(proto, "relay", None)
        if relay is not None and relay.endedAt is None:
            up += relay.bytesUp
            down += relay.bytesDown
    return up, down


def buildInfo() -> Metric:
    """
    The C{txproxy_build_info} family: one sample of value 1 whose labels
    are txproxy's version (L{txproxy.__version__}), the Python version and
    the implementation (C{CPython}, C{PyPy}).
    """
    import platform

    info = GaugeMetricFamily("txproxy_build_info", "Always 1; the labels say which txproxy runs on which Python.",
                             labels=["version", "python", "implementation"])
    info.add_metric([__version__, platform.python_version(), platform.python_implementation()], 1.0)
    return info


class _Collector:
    """
    Turns the L{ListenerStats} and the registered sources into metric
    families at scrape time.
    """

    def __init__(self, metrics: "Metrics") -> None:
        self.metrics = metrics

    def describe(self) -> List[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        worker = m.worker
        base = ["listener", "mode", "worker"]
        conns = CounterMetricFamily("txproxy_connections", "Client connections accepted.", labels=base)
        active = GaugeMetricFamily("txproxy_active_connections", "Client connections open now.", labels=base)
        reqs = CounterMetricFamily(
            "txproxy_requests",
            "Requests and tunnels answered, by method, status code and route (- when no route).",
            labels=base + ["method", "code", "route", "protocol"],
        )
        h2errors = CounterMetricFamily(
            "txproxy_h2_connection_errors",
            "HTTP/2 client connections closed with GOAWAY for an error (a flood or a protocol error), by kind.",
            labels=base + ["kind"],
        )
        nbytes = CounterMetricFamily(
            "txproxy_bytes",
            "Bytes relayed: direction=upstream toward upstreams, direction=downstream toward clients "
            "(open tunnels included).",
            labels=base + ["direction"],
        )
        live = m.liveBytes()
        for stats in m.listeners():
            labels = [stats.name, stats.mode, worker]
            conns.add_metric(labels, stats.opened)
            active.add_metric(labels, stats.opened - stats.closed)
            for (method, code, route, protocol), n in list(stats.requests.items()):
                reqs.add_metric(labels + [method, code, route, protocol], n)
            for kind, n in list(stats.h2Errors.items()):
                h2errors.add_metric(labels + [kind], n)
            liveUp, liveDown = live.get(stats, (0, 0))
            nbytes.add_metric(labels + ["upstream"], stats.bytesUp + liveUp)
            nbytes.add_metric(labels + ["downstream"], stats.bytesDown + liveDown)
        yield conns
        yield active
        yield reqs
        yield h2errors
        yield nbytes

        yield buildInfo()
        draining = GaugeMetricFamily("txproxy_draining", "1 once a stop (drain) has begun.", labels=["worker"])
        draining.add_metric([worker], 1.0 if m.isDraining() else 0.0)
        yield draining
        started = GaugeMetricFamily("txproxy_start_time_seconds", "When this process started (POSIX time).",
                                    labels=["worker"])
        started.add_metric([worker], m.startTime)
        yield started

        ok, failed, last = m.reloadState()
        reloads = CounterMetricFamily("txproxy_reloads", "Configuration reloads (SIGHUP), by result.",
                                      labels=["worker", "result"])
        reloads.add_metric([worker, "success"], ok)
        reloads.add_metric([worker, "failure"], failed)
        yield reloads
        lastOK = GaugeMetricFamily("txproxy_last_reload_success_timestamp_seconds",
                                   "When the configuration was last loaded successfully (POSIX time; "
                                   "the start time until the first reload).", labels=["worker"])
        lastOK.add_metric([worker], last)
        yield lastOK

        yield from self._limiter(worker)
        yield from self._backends(worker)

    def _limiter(self, worker: str) -> Iterator[Metric]:
        limiter = self.metrics.limiterSource() if self.metrics.limiterSource is not None else None
        if limiter is None:
            return
        decisions = CounterMetricFamily(
            "txproxy_limiter_decisions", "Limiter decisions: allowed, or the reason of a denial.",
            labels=["worker", "decision"],
        )
        for reason, n in sorted(getattr(limiter, "decisions", {}).items()):
            decisions.add_metric([worker, str(reason)], n)
        yield decisions
        for attr, name, doc in (
            ("redisErrors", "txproxy_redis_errors", "Redis calls that failed (timeouts included)."),
            ("redisTimeouts", "txproxy_redis_timeouts", "Redis calls that timed out."),
            ("fallbacks", "txproxy_redis_fallbacks", "Switches from Redis to the in-memory limiter."),
            ("recoveries", "txproxy_redis_recoveries", "Switches back from the in-memory limiter to Redis."),
        ):
            c = CounterMetricFamily(name, doc, labels=["worker"])
            c.add_metric([worker], getattr(limiter, attr, 0))
            yield c
        g = GaugeMetricFamily("txproxy_redis_fallback_active",
                              "1 while limits are kept in memory because Redis is unreachable.", labels=["worker"])
        g.add_metric([worker], 1.0 if getattr(limiter, "usingFallback", False) else 0.0)
        yield g

    def _backends(self, worker: str) -> Iterator[Metric]:
        sources = self.metrics.backendSources
        if not sources:
            return
        labels = ["listener", "route", "backend", "worker"]
        up = GaugeMetricFamily("txproxy_backend_up", "1 when the backend is healthy and not ejected.", labels=labels)
        ejected = GaugeMetricFamily("txproxy_backend_ejected", "1 while passive health checks eject the backend.",
                                    labels=labels)
        active = GaugeMetricFamily("txproxy_backend_active_connections", "Connections open to the backend.",
                                   labels=labels)
        total = CounterMetricFamily("txproxy_backend_connections", "Connections made to the backend.", labels=labels)
        failures = CounterMetricFamily("txproxy_backend_failures", "Failed connects to the backend.", labels=labels)
        for source in sources:
            for state in source():
                key = [str(state.get("listener", "")), str(state.get("route", "")), str(state.get("backend", "")),
                       worker]
                if "healthy" in state:
                    up.add_metric(key, 1.0 if state["healthy"] and not state.get("ejected") else 0.0)
                if "ejected" in state:
                    ejected.add_metric(key, 1.0 if state["ejected"] else 0.0)
                if "activeConnections" in state:
                    active.add_metric(key, state["activeConnections"])
                if "totalConnections" in state:
                    total.add_metric(key, state["totalConnections"])
                if "totalFailures" in state:
                    failures.add_metric(key, state["totalFailures"])
        yield from (up, ejected, active, total, failures)


class Metrics:
    """
    The metrics of one process.

    Hot-path methods (L{connectionOpened}, L{connectionClosed},
    L{requestFinished}) take the listener's L{ListenerConfig}; the
    L{ListenerStats} for it is found by identity, bound on first use or by
    L{bindListener}.

    @ivar registry: the L{CollectorRegistry} every series lives on.
    @ivar worker: the C{worker} label value (C{"0"} outside C{--workers}).
    @ivar backendSources: callables yielding L{BackendState}s at scrape time.
    @ivar limiterSource: a callable returning the limiter service (with its
        counters) or L{None}, read at scrape time.
    """

    def __init__(self, worker: str = "0", processMetrics: bool = True) -> None:
        """
        @param worker: the C{worker} label value.
        @param processMetrics: whether to add the standard C{process_*}
            series (file descriptors, memory, CPU) to the registry.
        """
        self.registry = CollectorRegistry(auto_describe=False)
        self.worker = worker
        self.startTime = time.time()
        self.backendSources: List[Callable[[], Iterable[BackendState]]] = []
        self.limiterSource: Optional[Callable[[], Any]] = None
        self.drainingSource: Optional[Callable[[], bool]] = None
        self.reloadSource: Optional[Callable[[], Any]] = None
        self.factorySource: Optional[Callable[[], Iterable[Any]]] = None
        self._byListener: Dict[int, Tuple[Any, ListenerStats]] = {}
        self._byName: Dict[Tuple[str, str], ListenerStats] = {}
        self.registry.register(_Collector(self))
        if processMetrics:
            from prometheus_client import PlatformCollector, ProcessCollector

            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
        self._connectTime = Histogram(
            "txproxy_upstream_connect_seconds", "Seconds to connect to an upstream.",
            ["listener", "mode", "worker"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self._headTime = Histogram(
            "txproxy_upstream_response_head_seconds",
            "Seconds from sending a request upstream to receiving its response head.",
            ["listener", "mode", "worker"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.reloadsSucceeded = 0
        self.reloadsFailed = 0
        self.lastReloadTime = self.startTime

    # -- binding

    def bindListener(self, listener: Any, name: Optional[str] = None, mode: Optional[str] = None,
                     factory: Any = None) -> ListenerStats:
        """
        Bind the counters of C{listener} (a L{ListenerConfig}) and return
        them.  Stats are kept by C{(name, mode)}: a listener rebuilt by a
        reload keeps counting where the old one stopped.

        @param factory: the protocol factory serving it; its open
            connections' relays are read at scrape time.
        """
        # An unnamed listener only comes from flags, which make exactly one:
        # the service calls it listener0.
        name = name or getattr(listener, "name", "") or "listener0"
        mode = mode or getattr(listener, "mode", "") or "forward"
        stats = self._byName.get((name, mode))
        if stats is None:
            stats = self._byName[(name, mode)] = ListenerStats(name, mode)
            labels = (name, mode, self.worker)
            stats.connectTime = self._connectTime.labels(*labels)
            stats.headTime = self._headTime.labels(*labels)
        # Keep the listener object alive with its stats so its id is not reused.
        self._byListener[id(listener)] = (listener, stats)
        if factory is not None and factory not in stats.factories:
            stats.factories.append(factory)
        return stats

    def unbindFactory(self, factory: Any) -> None:
        """
        Stop reading C{factory}'s open connections (a listener removed by a
        reload); its finished totals stay.
        """
        for stats in self._byName.values():
            if factory in stats.factories:
                stats.factories.remove(factory)

    def statsFor(self, listener: Any) -> ListenerStats:
        """
        The L{ListenerStats} of C{listener}, bound on first use.
        """
        entry = self._byListener.get(id(listener))
        if entry is not None:
            return entry[1]
        return self.bindListener(listener)

    def listeners(self) -> List[ListenerStats]:
        """
        Every bound L{ListenerStats}.
        """
        return list(self._byName.values())

    # -- the hot path

    def connectionOpened(self, listener: Any) -> None:
        """
        A client connection was accepted on C{listener}.
        """
        entry = self._byListener.get(id(listener))
        (entry[1] if entry is not None else self.bindListener(listener)).opened += 1

    def connectionClosed(self, listener: Any) -> None:
        """
        A client connection of C{listener} was closed.
        """
        entry = self._byListener.get(id(listener))
        (entry[1] if entry is not None else self.bindListener(listener)).closed += 1

    def requestFinished(self, listener: Any, record: Any) -> None:
        """
        A request or tunnel of C{listener} ended with the
        L{txproxy.accesslog.AccessRecord} C{record}.
        """
        self.countRequest(listener, record.method, record.status, record.bytesUp, record.bytesDown,
                          protocol=_PROTOCOLS.get(record.version, "-"))

    def countRequest(self, listener: Any, method: str, status: int, bytesUp: int, bytesDown: int,
                     route: str = "-", protocol: str = "http/1.1") -> None:
        """
        L{requestFinished} without an access record: for a protocol that
        has no access log to feed, so it need not build the record.

        @param route: the C{route} label: the name of the configured route
            that handled the request (C{host[/prefix]}), or C{"-"}.  When
            C{"-"}, the listener stats' C{route} is used: the reverse and
            sni protocols set it around their report (see
            L{ListenerStats.route}).  Route names come from the
            configuration, never from the request, so the series stay
            bounded.
        @param protocol: the C{protocol} label: C{"http/1.1"}, C{"h2"} or
            C{"-"}.
        """
        entry = self._byListener.get(id(listener))
        stats = entry[1] if entry is not None else self.bindListener(listener)
        if method not in KNOWN_METHODS:
            method = "other"
        if route == "-":
            route = stats.route
        key = (method, str(status), route, protocol)
        requests = stats.requests
        requests[key] = requests.get(key, 0) + 1
        stats.bytesUp += bytesUp
        stats.bytesDown += bytesDown

    def h2ConnectionError(self, listener: Any, kind: str) -> None:
        """
        An HTTP/2 client connection of C{listener} was closed with
        C{GOAWAY} for C{kind} (see L{txproxy.h2._server.FloodGuard}).
        """
        entry = self._byListener.get(id(listener))
        stats = entry[1] if entry is not None else self.bindListener(listener)
        stats.h2Errors[kind] = stats.h2Errors.get(kind, 0) + 1

    def upstreamConnected(self, listener: Any, seconds: float) -> None:
        """
        An upstream connection of C{listener} was established after
        C{seconds}.
        """
        self.statsFor(listener).connectTime.observe(seconds)

    def responseHeadReceived(self, listener: Any, seconds: float) -> None:
        """
        An upstream of C{listener} sent its response head C{seconds} after
        the request was sent.
        """
        self.statsFor(listener).headTime.observe(seconds)

    # -- process events

    def reloadSucceeded(self, when: Optional[float] = None) -> None:
        """
        A configuration reload was applied.
        """
        self.reloadsSucceeded += 1
        self.lastReloadTime = when if when is not None else time.time()

    def reloadFailed(self) -> None:
        """
        A configuration reload was rejected (the old configuration serves on).
        """
        self.reloadsFailed += 1

    def reloadState(self) -> Tuple[int, int, float]:
        """
        C{(successes, failures, POSIX time of the last success)}: from the
        reload source when one is set (see L{setReloadSource}), else from
        L{reloadSucceeded} and L{reloadFailed}.
        """
        source = self.reloadSource() if self.reloadSource is not None else None
        if source is None:
            return self.reloadsSucceeded, self.reloadsFailed, self.lastReloadTime
        last = getattr(source, "lastReload", None)
        return (getattr(source, "reloads", 0), getattr(source, "reloadFailures", 0),
                last if last is not None else self.startTime)

    def setReloadSource(self, source: Callable[[], Any]) -> None:
        """
        Register C{source}, returning an object with C{reloads},
        C{reloadFailures} and C{lastReload} (POSIX seconds or L{None})
        counters, read at scrape time (the L{ProxyService} keeps them).
        """
        self.reloadSource = source

    def setFactorySource(self, source: Callable[[], Iterable[Any]]) -> None:
        """
        Register C{source}, returning the protocol factories serving now
        (each with C{listener} and C{protocols}); read at scrape time for
        the bytes of open tunnels.
        """
        self.factorySource = source

    def liveBytes(self) -> Dict[ListenerStats, Tuple[int, int]]:
        """
        Bytes of unfinished relays, by listener stats.
        """
        seen = set()
        out: Dict[ListenerStats, Tuple[int, int]] = {}
        pairs: List[Tuple[ListenerStats, Any]] = []
        for stats in self._byName.values():
            for factory in stats.factories:
                pairs.append((stats, factory))
        if self.factorySource is not None:
            for factory in self.factorySource():
                pairs.append((self.statsFor(factory.listener), factory))
        for stats, factory in pairs:
            if id(factory) in seen:
                continue
            seen.add(id(factory))
            up, down = _liveBytes(factory)
            if up or down:
                u, d = out.get(stats, (0, 0))
                out[stats] = (u + up, d + down)
        return out

    def isDraining(self) -> bool:
        return bool(self.drainingSource()) if self.drainingSource is not None else False

    # -- sources read at scrape time

    def addBackendSource(self, source: Callable[[], Iterable[BackendState]]) -> None:
        """
        Register C{source}, called at every scrape, yielding the state of
        each backend as a L{BackendState} mapping.  (The router registers
        one; see L{backendStatesFromRouter}.)
        """
        self.backendSources.append(source)

    def setLimiterSource(self, source: Callable[[], Any]) -> None:
        """
        Register C{source}, returning the limiter service (or L{None}) at
        scrape time; its counters (C{decisions}, C{redisErrors}, ...) are
        exported.
        """
        self.limiterSource = source

    # -- exposition

    def exposition(self) -> bytes:
        """
        Every series, in the Prometheus text format.
        """
        return generate_latest(self.registry)


def backendStatesFromRouter(router: Any) -> Iterator[BackendState]:
    """
    Turn a L{txproxy.router.RouterService}'s C{snapshot()} into
    L{BackendState}s.
    """
    snapshot = router.snapshot()
    for listener in snapshot.get("listeners", ()):
        name = listener.get("name", "")
        pools: List[Tuple[str, Any]] = []
        if "pool" in listener:
            pools.append(("", listener["pool"]))
        for route in listener.get("routes", ()):
            pools.append((f"{route.get('host', '')}{route.get('prefix', '') if route.get('prefix') != '/' else ''}",
                          route.get("pool", {})))
        for routeName, pool in pools:
            for b in pool.get("backends", ()):
                yield {
                    "listener": name,
                    "route": routeName,
                    "backend": b.get("address", b.get("key", "")),
                    "healthy": b.get("healthy", True),
                    "ejected": b.get("ejected", False),
                    "activeConnections": b.get("activeConnections", 0),
                    "totalConnections": b.get("totalConnections", 0),
                    "totalFailures": b.get("totalFailures", 0),
                }


def mergeExpositions(texts: Dict[str, str]) -> bytes:
    """
    Merge Prometheus text expositions, one per worker name, into one: the
    samples of a metric family from every worker are listed together under
    one C{HELP}/C{TYPE}, each sample labelled C{worker=NAME} unless it
    already has a C{worker} label.  A text that does not parse is skipped
    (and logged).
    """
    families: Dict[str, Any] = {}
    order: List[str] = []
    for worker, text in texts.items():
        try:
            parsed = list(text_string_to_metric_families(text))
        except Exception as e:
            log.warn("metrics from worker {worker} do not parse: {error}", worker=worker, error=str(e))
            continue
        for family in parsed:
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
                order.append(family.name)
            for s in family.samples:
                labels = s.labels if "worker" in s.labels else dict(s.labels, worker=worker)
                merged.samples.append(Sample(s.name, labels, s.value, s.timestamp, s.exemplar))

    class _Merged:
        def collect(self) -> Iterator[Any]:
            for name in order:
                yield families[name]

    return generate_latest(_Merged())
