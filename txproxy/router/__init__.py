# -*- test-case-name: tests.test_router -*-
"""
The router: route tables, backend pools, load balancing and health checks,
shared by every listener of a process.

How a protocol uses it, per request (reverse mode) or connection (sni, tcp)::

    route = router.tableFor(listenerName).match(hostHeader, path)
    if route is None: -> 404 (reverse) / close (sni)
    pool = route.pool                      # tcp mode: router.poolFor(name)
    d = pool.connect(connectTo, clientKey=clientIP)   # pick, connect,
                                                       # report, retry once
    d.addCallbacks(relay, fail)            # NoHealthyBackend -> 503 / close
                                           # other failures   -> 502 / 504
    ... when the upstream connection closes: backend.connectionFinished()

where C{connectTo(backend)} returns C{endpoint.connect(factory)}, the
endpoint coming from L{endpointForBackend} (plus TLS for C{https://}).  Call
C{tableFor}/C{poolFor} for every request or connection rather than keeping
the result: a reload swaps them.

The parts live in private modules: L{txproxy.router._table} (matching rules),
L{txproxy.router._pool} (policies, passive ejection, L{Pool.connect}) and
L{txproxy.router._health} (active checks).
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Set, Tuple, cast

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from zope.interface import implementer

from txproxy.router._health import HealthChecker, HealthCheckFailed, endpointForBackend
from txproxy.router._pool import VIRTUAL_NODES, Backend, HealthState, NoHealthyBackend, Pool
from txproxy.router._table import Route, RouteTable, checkRoutes, normalizeHost, normalizePrefix
from txproxy.config import BALANCE_POLICIES, HealthCheck, ListenerConfig, RouteConfig, UpstreamURL
from txproxy.errors import ConfigError
from txproxy.interfaces import IRouter, IUpstreamConnector

__all__ = [
    "Backend",
    "HealthCheckFailed",
    "HealthChecker",
    "HealthState",
    "NoHealthyBackend",
    "Pool",
    "Route",
    "RouteTable",
    "RouterService",
    "VIRTUAL_NODES",
    "endpointForBackend",
    "normalizeHost",
    "normalizePrefix",
]

_log = Logger(namespace="txproxy.router")

_ROUTED_MODES = ("reverse", "sni")

# (listener name, route host, normalised prefix, backend key); tcp-mode
# pools use "" for host and prefix.
_BackendIdentity = Tuple[str, str, str, str]
# (backend key, check kind, check path): what a verdict is about.
_CheckIdentity = Tuple[str, str, str, Optional[str]]


@implementer(IUpstreamConnector)
class _ReactorConnector:
    """
    The connector used when L{RouterService} is given none: plain
    C{HostnameEndpoint}s and C{clientFromString} on the global reactor.
    """

    def __init__(self, reactor: Any, timeout: float = 10.0) -> None:
        self._reactor = reactor
        self._timeout = timeout

    def resolve(self, host: str, port: int) -> "Deferred[List[str]]":
        # HostnameEndpoint resolves names itself.
        return succeed([host])

    def endpointFor(self, host: str, port: int) -> Any:
        from twisted.internet.endpoints import HostnameEndpoint

        return HostnameEndpoint(self._reactor, host, port, timeout=self._timeout)

    def endpointForDescription(self, description: str) -> Any:
        from twisted.internet.endpoints import clientFromString

        return clientFromString(self._reactor, description)

    def connect(self, host: str, port: int, proto: Any) -> "Deferred[Any]":
        factory = Factory()
        factory.noisy = False
        factory.buildProtocol = lambda addr: proto  # type: ignore[method-assign]
        return self.endpointFor(host, port).connect(factory)  # type: ignore[no-any-return]


class _RouterState:
    """
    Everything a reload replaces, swapped in by one attribute assignment.
    """

    __slots__ = ("listeners", "tables", "pools", "backends")

    def __init__(
        self,
        listeners: Tuple[ListenerConfig, ...] = (),
        tables: Optional[Dict[str, RouteTable]] = None,
        pools: Optional[Dict[str, Pool]] = None,
        backends: Optional[Dict[_BackendIdentity, Backend]] = None,
    ) -> None:
        self.listeners = listeners
        self.tables: Dict[str, RouteTable] = tables or {}
        self.pools: Dict[str, Pool] = pools or {}
        self.backends: Dict[_BackendIdentity, Backend] = backends or {}


class _NeededCheck:
    def __init__(self, backend: Backend, check: HealthCheck, state: HealthState, proxyVersion: Optional[str] = None) -> None:
        self.backend = backend
        self.check = check
        self.proxyVersion = proxyVersion
        self.state = state
        self.subscribers: List[Backend] = []


@implementer(IRouter)
class RouterService(Service):
    """
    Holds the route tables (reverse and sni listeners) and pools (tcp
    listeners) of every listener, runs their active health checks, and swaps
    all of it atomically on reload.

    Reload rules (L{setListeners}):
      - a backend is the same across a reload when its listener name, route
        host, normalised route prefix and key (URL, or tcp-mode endpoint
        description) are the same; it keeps its L{Backend} object and so its
        health, counters and ejection; its weight and C{proxyProtocol} are updated;
      - new backends start I{unchecked}, counted as healthy until their first
        check (see L{HealthState});
      - connection counters, weights and passive ejection belong to a
        backend I{in one route} (as servers belong to one backend in
        HAProxy); the active-check verdict belongs to the address, shared
        by every route that checks it the same way;
      - a tcp-mode upstream given twice counts as one backend of weight 2;
      - active checks run once per (backend address, check kind, check path)
        however many routes share them; when routes disagree on interval,
        timeout, rise or fall the first route in configuration order wins.
        A check whose settings change is restarted but keeps its verdict;
      - checks of backends no longer named stop (their connection in
        progress is aborted);
      - a bad configuration raises L{ConfigError} and changes nothing.

    Listeners are told apart by C{ListenerConfig.name} (TOML gives unnamed
    listeners C{listener0}, C{listener1}, ... so name them to keep state when
    reordering).  tcp-mode pools have passive ejection (C{ejectAfter=3},
    C{ejectFor=30}) but no active checks: C{ListenerConfig} has no setting
    for them.

    @ivar clock: the L{IReactorTime} for check timers and ejection times.
    """

    def __init__(
        self,
        listeners: Sequence[ListenerConfig] = (),
        connector: Optional[Any] = None,
        clock: Optional[IReactorTime] = None,
    ) -> None:
        """
        @param listeners: the initial configuration (see L{setListeners}).
        @param connector: an L{IUpstreamConnector} for health checks; the
            global reactor's plain endpoints when L{None}.
        @param clock: the global reactor when L{None}.
        """
        self._clock = clock
        self._connector = connector
        self._state = _RouterState()
        self._checkers: Dict[_CheckIdentity, HealthChecker] = {}
        if listeners:
            self.setListeners(listeners)

    # -- collaborators ------------------------------------------------------

    @property
    def clock(self) -> IReactorTime:
        if self._clock is None:
            from twisted.internet import reactor

            self._clock = cast(IReactorTime, reactor)
        assert self._clock is not None
        return self._clock

    def _getConnector(self) -> Any:
        if self._connector is None:
            from twisted.internet import reactor

            self._connector = _ReactorConnector(reactor)
        return self._connector

    # -- lookups ------------------------------------------------------------

    def tableFor(self, listenerName: str) -> RouteTable:
        """
        The current route table of a reverse or sni listener.

        @raise KeyError: when there is no such routed listener.
        """
        return self._state.tables[listenerName]

    def poolFor(self, listenerName: str) -> Pool:
        """
        The current pool of a tcp-mode listener.

        @raise KeyError: when there is no such tcp listener.
        """
        return self._state.pools[listenerName]

    def routeFor(self, listenerName: str, host: str, path: str = "") -> Optional[Route]:
        """
        C{tableFor(listenerName).match(host, path)}.
        """
        return self._state.tables[listenerName].match(host, path)

    @property
    def listeners(self) -> Tuple[ListenerConfig, ...]:
        """
        The configuration currently in force.
        """
        return self._state.listeners

    # -- reload -------------------------------------------------------------

    def setListeners(self, listeners: Sequence[ListenerConfig]) -> None:
        """
        Build tables and pools for C{listeners} and swap them in at once.
        Listeners in modes without routing (forward, transparent) are
        ignored.

        @raise ConfigError: on a configuration the router cannot use
            (duplicate listener names or routes, unknown policies, empty
            pools); nothing is changed then.
        """
        listeners = tuple(listeners)
        self._validate(listeners)
        old = self._state
        tables: Dict[str, RouteTable] = {}
        pools: Dict[str, Pool] = {}
        backends: Dict[_BackendIdentity, Backend] = {}
        needed: Dict[_CheckIdentity, _NeededCheck] = {}
        oldStates = {ck: c.state for ck, c in self._checkers.items()}
        sharedStates = {id(state) for state in oldStates.values()}
        clock = self._clock
        for listener in listeners:
            name = listener.name
            if listener.mode in _ROUTED_MODES:
                routePools: Dict[RouteConfig, Pool] = {}
                for rc in listener.routes:
                    prefix = normalizePrefix(rc.prefix)
                    host = rc.host.lower()
                    members: List[Backend] = []
                    proxyProtocols = dict(rc.proxyProtocolByUpstream)
                    for key, (url, weight) in _mergeURLs(rc).items():
                        ident = (name, host, prefix, key)
                        b = old.backends.get(ident)
                        if b is None:
                            b = Backend.fromURL(url, weight)
                        b.weight = weight
                        b.proxyProtocol = _proxyProtocol(proxyProtocols.get(key))
                        self._attachHealth(
                            b, rc.healthCheck, oldStates, sharedStates, needed, _effectiveProxy(b, rc, listener)
                        )
                        backends[ident] = b
                        members.append(b)
                    routePools[rc] = Pool(
                        members,
                        rc.balance,
                        clock,
                        rc.ejectAfter,
                        rc.ejectFor,
                        name=f"{name}:{host}{prefix or '/'}",
                    )
                tables[name] = RouteTable.build(listener.routes, routePools)
            elif listener.mode == "tcp":
                weights: Dict[str, int] = {}
                for desc in listener.upstreams:
                    desc = desc.strip()
                    if desc:
                        weights[desc] = weights.get(desc, 0) + 1
                members = []
                proxyProtocols = dict(listener.proxyProtocolByUpstream)
                for desc, weight in weights.items():
                    ident = (name, "", "", desc)
                    b = old.backends.get(ident)
                    if b is None:
                        b = Backend.fromDescription(desc, weight)
                    b.weight = weight
                    b.proxyProtocol = _proxyProtocol(proxyProtocols.get(desc))
                    if b.health.checked:
                        b.health = HealthState()
                    backends[ident] = b
                    members.append(b)
                pools[name] = Pool(members, listener.balance, clock, name=name or "tcp")
        self._state = _RouterState(listeners, tables, pools, backends)
        self._reconcileChecks(needed)

    def _validate(self, listeners: Tuple[ListenerConfig, ...]) -> None:
        names = set()
        for listener in listeners:
            if listener.mode not in _ROUTED_MODES and listener.mode != "tcp":
                continue
            label = f"listener {listener.name!r}" if listener.name else "listener"
            if listener.name in names:
                raise ConfigError(f"{label}: name is used twice")
            names.add(listener.name)
            if listener.mode == "tcp":
                if not [u for u in listener.upstreams if u.strip()]:
                    raise ConfigError(f"{label}: mode tcp needs at least one upstream")
                if listener.balance not in BALANCE_POLICIES:
                    raise ConfigError(f"{label}: unknown balance policy {listener.balance!r}")
                continue
            if not listener.routes:
                raise ConfigError(f"{label}: mode {listener.mode} needs at least one route")
            try:
                checkRoutes(listener.routes)
            except ConfigError as e:
                raise ConfigError(f"{label}: {e}")
            for rc in listener.routes:
                where = f"{label}: route {rc.host}{rc.prefix or '/'}"
                if not rc.upstreams:
                    raise ConfigError(f"{where}: no upstreams")
                if rc.balance not in BALANCE_POLICIES:
                    raise ConfigError(f"{where}: unknown balance policy {rc.balance!r}")
                if rc.weights and (len(rc.weights) != len(rc.upstreams) or min(rc.weights) < 1):
                    raise ConfigError(f"{where}: one positive weight per upstream is needed")

    def _attachHealth(
        self,
        backend: Backend,
        check: Optional[HealthCheck],
        oldStates: Mapping[_CheckIdentity, HealthState],
        sharedStates: Set[int],
        needed: Dict[_CheckIdentity, _NeededCheck],
        proxyVersion: Optional[str] = None,
    ) -> None:
        if check is None:
            if backend.health.checked or id(backend.health) in sharedStates:
                # Its route dropped the check: back to "healthy, unchecked".
                backend.health = HealthState()
            return
        ck = (backend.key, check.kind, check.path, proxyVersion)
        entry = needed.get(ck)
        if entry is None:
            state = oldStates.get(ck) or HealthState()
            entry = needed[ck] = _NeededCheck(backend, check, state, proxyVersion)
        backend.health = entry.state
        entry.subscribers.append(backend)

    def _reconcileChecks(self, needed: Dict[_CheckIdentity, _NeededCheck]) -> None:
        for ck in list(self._checkers):
            if ck not in needed:
                self._checkers.pop(ck).stop()
        for ck, entry in needed.items():
            checker = self._checkers.get(ck)
            if checker is not None and checker.check == entry.check and checker.proxyVersion == entry.proxyVersion:
                checker.subscribers = entry.subscribers
                continue
            if checker is not None:
                checker.stop()
            checker = HealthChecker(
                entry.backend, entry.check, entry.state, self.clock, self._getConnector(), entry.proxyVersion
            )
            checker.subscribers = entry.subscribers
            self._checkers[ck] = checker
            if self.running:
                checker.start()

    # -- service ------------------------------------------------------------

    def startService(self) -> None:
        """
        Start the active health checks (first round on the next reactor
        turn).
        """
        Service.startService(self)
        for checker in self._checkers.values():
            checker.start()

    def stopService(self) -> None:
        """
        Stop every check timer and abort the checks in progress.  Tables and
        pools stay usable (draining connections may still pick backends).
        """
        Service.stopService(self)
        for checker in self._checkers.values():
            checker.stop()

    # -- introspection ------------------------------------------------------

    def snapshot(self) -> Dict[str, Any]:
        """
        Plain data (dicts, lists, strings, numbers, booleans, None) about
        every listener's routes and backends and every health check, for a
        status page or metrics.
        """
        state = self._state
        now = self.clock.seconds()
        # Each backend's active check (None: passive health only).
        checkOf: Dict[int, Dict[str, Any]] = {}
        for (_, kind, path, _proxy), c in self._checkers.items():
            for b in c.subscribers:
                checkOf[id(b)] = {"kind": kind, "path": path, "interval": c.check.interval}

        def pool(p: Any) -> Dict[str, Any]:
            data: Dict[str, Any] = p.snapshot(now)
            for backend, entry in zip(p.backends, data["backends"]):
                entry["healthCheck"] = checkOf.get(id(backend))
            return data

        listeners: List[Dict[str, Any]] = []
        for listener in state.listeners:
            name = listener.name
            if name in state.tables:
                routes = [
                    {
                        "host": r.config.host,
                        "prefix": r.prefix or "/",
                        "stripPrefix": r.config.stripPrefix,
                        "upstreams": [str(u) for u in r.config.upstreams],
                        "pool": pool(r.pool),
                    }
                    for r in state.tables[name].routes
                ]
                listeners.append({"name": name, "mode": listener.mode, "routes": routes})
            elif name in state.pools:
                listeners.append(
                    {"name": name, "mode": listener.mode, "pool": pool(state.pools[name])}
                )
        checks = [
            {
                "backend": key,
                "kind": kind,
                "path": path,
                "interval": c.check.interval,
                "timeout": c.check.timeout,
                "rise": c.check.rise,
                "fall": c.check.fall,
                "running": c.running,
                "healthy": c.state.healthy,
                "checked": c.state.checked,
                "lastCheckAt": c.state.lastCheckAt,
                "lastError": c.state.lastError,
                "proxyProtocol": proxy,
            }
            for (key, kind, path, proxy), c in sorted(self._checkers.items(), key=lambda kv: (kv[0][:3], kv[0][3] or ""))
        ]
        return {"time": now, "listeners": listeners, "healthChecks": checks}


def _effectiveProxy(backend: Backend, route: Any, listener: Any) -> Optional[str]:
    """
    The PROXY protocol version C{backend} gets on C{route}: its own
    setting, else the route's, else the listener's; L{None} for none.
    """
    version = backend.proxyProtocol
    if version is None:
        version = getattr(route, "proxyProtocolSend", None)
        if version is None:
            version = getattr(listener, "proxyProtocolSend", None)
    return version if version in ("v1", "v2") else None


def _proxyProtocol(setting: Optional[str]) -> Optional[str]:
    """
    A C{proxy_protocol_send} setting of one upstream as
    L{Backend.proxyProtocol}: C{"none"} becomes C{""}.
    """
    if setting is None:
        return None
    return "" if setting == "none" else setting


def _mergeURLs(rc: RouteConfig) -> Dict[str, Tuple[UpstreamURL, int]]:
    """
    A route's backends by key, in order; a URL named twice gets the sum of
    its weights.
    """
    weights = rc.weights or (1,) * len(rc.upstreams)
    merged: Dict[str, Tuple[UpstreamURL, int]] = {}
    for url, weight in zip(rc.upstreams, weights):
        key = str(url)
        if key in merged:
            merged[key] = (url, merged[key][1] + weight)
        else:
            merged[key] = (url, weight)
    return merged
