# -*- test-case-name: tests.test_admin -*-
"""
The admin endpoint (C{--admin ENDPOINT}): a small twisted.web site.

  - C{/metrics}: every series of L{txproxy.metrics.Metrics}, in the
    Prometheus text format (prometheus-client's C{generate_latest});
  - C{/healthz}: C{200 ok} while serving, C{503 draining} once a stop has
    begun (the admin listener stays up through the drain, until the process
    exits, so a load balancer sees the 503);
  - C{/status}: listeners, modes, addresses, open connections, routes and
    backends with health, limiter state; HTML for a person, JSON when the
    request says C{Accept: application/json} (or C{?format=json}).

The pages read from a I{source}: an object with C{isDraining()},
C{metricsText()} and C{statusData()} (the last two may return Deferreds).
L{ProxyAdminSource} is the source for one proxy process; the C{--workers}
supervisor has its own (L{txproxy.workers}).
"""

from __future__ import annotations

import html
import json
import os
import time
from typing import Any, Dict, Iterable, List, Optional, Sequence

from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from txproxy.metrics import CONTENT_TYPE_LATEST, Metrics, backendStatesFromRouter

__all__ = [
    "AdminService",
    "AdminSite",
    "ProxyAdminSource",
    "adminRoot",
    "attachAdmin",
    "metricsFor",
    "renderStatusHTML",
]

log = Logger()


def _wantsJSON(request: Request) -> bool:
    accept = (request.getHeader("accept") or "").lower()
    args: Dict[bytes, List[bytes]] = request.args or {}
    if b"json" in args.get(b"format", []):
        return True
    return "application/json" in accept


def _finish(request: Request, body: bytes, status: int = 200, contentType: str = "text/plain; charset=utf-8") -> None:
    if request.finished or getattr(request, "_disconnected", False):
        return
    request.setResponseCode(status)
    request.setHeader("content-type", contentType)
    request.setHeader("cache-control", "no-store")
    request.setHeader("content-length", str(len(body)))
    if request.method != b"HEAD":
        request.write(body)
    request.finish()


def _serve(request: Request, produce: Any, render: Any) -> Any:
    """
    Call C{produce()} (a value or a Deferred), then C{render(request, value)}
    which returns C{(body, status, contentType)}; a failure is a 500 with no
    traceback on the wire (it is logged).
    """
    d = defer.maybeDeferred(produce)

    def done(value: Any) -> None:
        body, status, ctype = render(request, value)
        _finish(request, body, status, ctype)

    def failed(f: Failure) -> None:
        log.failure("admin: error serving {path}", f, path=request.path.decode("latin-1", "replace"))
        _finish(request, b"internal error\n", 500)

    d.addCallbacks(done, failed)
    return NOT_DONE_YET


class _Page(Resource):
    isLeaf = True

    def __init__(self, source: Any) -> None:
        super().__init__()
        self.source = source


class HealthResource(_Page):
    """
    C{/healthz}: C{200 ok} while serving, C{503 draining} once draining.
    """

    def render_GET(self, request: Request) -> bytes:
        request.setHeader("content-type", "text/plain; charset=utf-8")
        request.setHeader("cache-control", "no-store")
        if self.source.isDraining():
            request.setResponseCode(503)
            return b"draining\n"
        return b"ok\n"


class MetricsResource(_Page):
    """
    C{/metrics}: the Prometheus text exposition.
    """

    def render_GET(self, request: Request) -> Any:
        return _serve(request, self.source.metricsText, lambda r, body: (body, 200, CONTENT_TYPE_LATEST))


class StatusResource(_Page):
    """
    C{/status}: HTML, or JSON with C{Accept: application/json}.
    """

    def render_GET(self, request: Request) -> Any:
        def render(r: Request, data: Dict[str, Any]) -> Any:
            r.setHeader("vary", "accept")
            if _wantsJSON(r):
                body = json.dumps(data, indent=2, sort_keys=True, default=str).encode("utf-8") + b"\n"
                return body, 200, "application/json"
            return renderStatusHTML(data).encode("utf-8"), 200, "text/html; charset=utf-8"

        return _serve(request, self.source.statusData, render)


class IndexResource(Resource):
    def render_GET(self, request: Request) -> bytes:
        request.setHeader("content-type", "text/html; charset=utf-8")
        return (
            b"<!doctype html><title>txproxy admin</title><h1>txproxy admin</h1><ul>"
            b'<li><a href="status">/status</a></li><li><a href="metrics">/metrics</a></li>'
            b'<li><a href="healthz">/healthz</a></li></ul>\n'
        )


def adminRoot(source: Any) -> Resource:
    """
    The admin site's resource tree for C{source}.
    """
    root = Resource()
    children: Dict[bytes, Any] = {
        b"": IndexResource(),
        b"metrics": MetricsResource(source),
        b"healthz": HealthResource(source),
        b"status": StatusResource(source),
    }
    for path, child in children.items():
        root.putChild(path, child)
    return root


class AdminSite(Site):
    """
    The admin site: quiet (no "Starting factory" lines, no per-request log
    line: Prometheus scrapes every few seconds).
    """

    noisy = False
    mode = "admin"

    def log(self, request: Any) -> None:
        pass


class AdminService(MultiService):
    """
    Listens on each admin endpoint, from start until the process exits.

    L{txproxy.service.ProxyService} stops its proxy listeners first, drains,
    and only then stops this service, so C{/healthz} answers C{503} during
    the whole drain.
    """

    def __init__(self, endpoints: Sequence[str], source: Any, reactor: Any = None) -> None:
        super().__init__()
        from txproxy.service import ListenerService, serverEndpoint

        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.source = source
        self.site = AdminSite(adminRoot(source), reactor=reactor)
        self.listeners: List[Any] = []
        from txproxy.errors import ConfigError

        for description in endpoints:
            try:
                endpoint = serverEndpoint(reactor, description)
            except ConfigError as e:
                raise ConfigError(str(e).replace("--listen", "--admin", 1))
            svc = ListenerService(description, endpoint, self.site)
            svc.setServiceParent(self)
            self.listeners.append(svc)


# ---------------------------------------------------------------------------
# One proxy process


def metricsFor(config: Any) -> Optional[Metrics]:
    """
    The L{Metrics} for a proxy process with C{config}: one when C{--admin}
    is given or the process is a C{--workers} worker (the supervisor scrapes
    it), else L{None} (nothing would read it, so nothing is counted).
    """
    from txproxy.workers import workerId

    wid = workerId()
    if not config.admin and wid is None:
        return None
    return Metrics(worker=str(wid) if wid is not None else "0")


def attachAdmin(service: Any) -> Optional[AdminService]:
    """
    Wire C{service} (a L{txproxy.service.ProxyService}) to its metrics and,
    when admin endpoints are configured, add an L{AdminService} to it.

    Reads the service's C{metrics}, C{factories}, C{config}, and, when they
    exist, C{limiter} and C{router}.
    """
    from txproxy.workers import setUpWorkerProcess, workerAdminEndpoint, workerId

    if workerId() is not None:
        # The worker side of --workers: die with the supervisor.
        setUpWorkerProcess()
    metrics = getattr(service, "metrics", None)
    if metrics is not None:
        for name, factory in service.factories.items():
            listener = getattr(factory, "listener", None)
            if listener is not None:
                metrics.bindListener(listener, name, getattr(listener, "mode", None), factory)
        metrics.drainingSource = lambda: service.draining
        metrics.setFactorySource(lambda: list(service.factories.values()))
        metrics.setLimiterSource(lambda: getattr(service, "limiter", None))
        metrics.setReloadSource(lambda: _ReloadCounters(service))

        def backends() -> Iterable[Any]:
            router = getattr(service, "router", None)
            if router is None or not hasattr(router, "snapshot"):
                return []
            return backendStatesFromRouter(router)

        metrics.addBackendSource(backends)
    endpoints: Sequence[str] = service.config.admin
    if workerId() is not None:
        endpoints = [workerAdminEndpoint()]
    if not endpoints:
        return None
    admin = AdminService(endpoints, ProxyAdminSource(service), service.reactor)
    admin.setServiceParent(service)
    return admin


class _ReloadCounters:
    """
    The service's reload counters, with the last success as POSIX time.
    """

    def __init__(self, service: Any) -> None:
        self.reloads = getattr(service, "reloads", 0)
        self.reloadFailures = getattr(service, "reloadFailures", 0)
        last = getattr(service, "lastReload", None)
        if last is not None:
            # The service keeps reactor time; on a real reactor that is POSIX time.
            last = last if last > 1e9 else time.time() - (service.reactor.seconds() - last)
        self.lastReload = last


class ProxyAdminSource:
    """
    The admin pages' view of one L{txproxy.service.ProxyService}.
    """

    def __init__(self, service: Any) -> None:
        self.service = service
        self.startedAt = time.time()

    def isDraining(self) -> bool:
        return bool(getattr(self.service, "draining", False))

    def metricsText(self) -> bytes:
        metrics = getattr(self.service, "metrics", None)
        if metrics is None:
            return b""
        text: bytes = metrics.exposition()
        return text

    def statusData(self) -> Dict[str, Any]:
        return proxyStatus(self.service, self.startedAt)


def _bound(port: Any) -> str:
    if port is None:
        return ""
    try:
        host = port.getHost()
    except Exception:
        return ""
    h = getattr(host, "host", None)
    if h is None:
        return str(getattr(host, "name", "") or "")
    return f"[{h}]:{host.port}" if ":" in h else f"{h}:{host.port}"


def proxyStatus(service: Any, startedAt: Optional[float] = None) -> Dict[str, Any]:
    """
    Plain data about a proxy process for C{/status}.
    """
    from txproxy.workers import workerId

    listeners: List[Dict[str, Any]] = []
    for name, factory in list(getattr(service, "factories", {}).items()):
        listener = getattr(factory, "listener", None)
        addresses = [
            {"endpoint": svc.description, "bound": _bound(svc.port), "listening": svc.port is not None}
            for svc in getattr(service, "listenerServices", ())
            if svc.factory is factory
        ]
        protocols = list(getattr(factory, "protocols", ()))
        tunnels = [p for p in protocols if getattr(p, "relay", None) is not None and p.relay.endedAt is None]
        listeners.append(
            {
                "name": name,
                "mode": getattr(listener, "mode", getattr(factory, "mode", "")),
                "addresses": addresses,
                "openConnections": len(protocols),
                "openTunnels": len(tunnels),
                "requestsTotal": getattr(factory, "requestsTotal", None),
                "limits": _limits(listener),
            }
        )
    from txproxy import __version__

    data: Dict[str, Any] = {
        "version": __version__,
        "pid": os.getpid(),
        "worker": workerId(),
        "draining": bool(getattr(service, "draining", False)),
        "time": time.time(),
        "startedAt": startedAt,
        "uptime": (time.time() - startedAt) if startedAt else None,
        "configFile": getattr(service.config, "configFile", None),
        "admin": list(getattr(service.config, "admin", ())),
        "drainTimeout": getattr(service.config, "drainTimeout", None),
        "reloads": getattr(service, "reloads", 0),
        "reloadFailures": getattr(service, "reloadFailures", 0),
        "listeners": listeners,
    }
    router = getattr(service, "router", None)
    if router is not None and hasattr(router, "snapshot"):
        try:
            data["router"] = router.snapshot()
        except Exception:
            log.failure("admin: router snapshot failed")
    limiter = getattr(service, "limiter", None)
    if limiter is not None:
        data["limiter"] = _limiterState(limiter, service.config)
    return data


def _limits(listener: Any) -> Dict[str, Any]:
    if listener is None:
        return {}
    out: Dict[str, Any] = {}
    for field in ("rate", "burst", "maxConns", "maxConnsPerClient", "connectTimeout", "idleTimeout"):
        v = getattr(listener, field, None)
        if v is not None:
            out[field] = str(v) if field == "rate" else v
    return out


def _limiterState(limiter: Any, config: Any) -> Dict[str, Any]:
    memory = getattr(limiter, "memory", None)
    state: Dict[str, Any] = {
        "backend": "redis" if getattr(limiter, "redis", None) is not None else "memory",
        "redis": getattr(config, "redis", None),
        "usingFallback": bool(getattr(limiter, "usingFallback", False)),
        "decisions": dict(getattr(limiter, "decisions", {})),
        "redisErrors": getattr(limiter, "redisErrors", 0),
        "fallbacks": getattr(limiter, "fallbacks", 0),
        "recoveries": getattr(limiter, "recoveries", 0),
    }
    if memory is not None:
        for attr in ("bucketCount", "leaseCount"):
            v = getattr(memory, attr, None)
            try:
                state[attr] = v() if callable(v) else v
            except Exception:
                pass
    return state


# ---------------------------------------------------------------------------
# HTML

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:1.5em 2em;color:#1d2330;background:#fafbfc}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.4em 0 .4em;border-bottom:1px solid #d8dde6}
table{border-collapse:collapse;margin:.3em 0 1em;background:#fff}
th,td{border:1px solid #d8dde6;padding:.3em .7em;text-align:left;vertical-align:top}
th{background:#eef1f6;font-weight:600}.num{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#0a7d32;font-weight:600}.bad{color:#b3261e;font-weight:600}.muted{color:#6b7385}
.badge{display:inline-block;padding:.1em .6em;border-radius:1em;color:#fff;font-weight:600}
.badge.ok{background:#0a7d32;color:#fff}.badge.bad{background:#b3261e;color:#fff}
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _health(ok: bool, yes: str = "healthy", no: str = "down") -> str:
    return f'<span class="{"ok" if ok else "bad"}">{yes if ok else no}</span>'


def _duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return ""
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return (f"{d}d " if d else "") + f"{h:02d}:{m:02d}:{s:02d}"


#: What the C{/status} page calls the listener limits and limiter counters
#: its JSON form names with their attribute names.
_LIMIT_LABELS = {
    "rate": "rate",
    "burst": "burst",
    "maxConns": "max connections",
    "maxConnsPerClient": "max connections per client",
    "connectTimeout": "connect timeout (s)",
    "idleTimeout": "idle timeout (s)",
}
_LIMITER_LABELS = {
    "redis": "Redis",
    "bucketCount": "rate buckets in memory",
    "leaseCount": "connection slots held",
    "redisErrors": "Redis errors",
    "fallbacks": "switches to in-memory limits",
    "recoveries": "switches back to Redis",
}
_DECISION_LABELS = {
    "allowed": "allowed",
    "rate": "refused: over the rate",
    "max-conns": "refused: max connections",
    "max-conns-per-client": "refused: max connections per client",
}


def _checkText(check: Optional[Dict[str, Any]]) -> str:
    """
    A backend's active health check for a person: C{http GET /healthz every
    5s}, or that it has none.
    """
    if not check:
        return '<span class=muted>none (passive only)</span>'
    what = f"http GET {check.get('path') or '/'}" if check.get("kind") == "http" else "tcp connect"
    every = check.get("interval")
    return _e(what + (f" every {every:g}s" if isinstance(every, (int, float)) else ""))


def _backendRows(pool: Dict[str, Any]) -> str:
    rows = []
    for b in pool.get("backends", ()):
        ok = b.get("healthy", True) and not b.get("ejected", False)
        rows.append(
            f"<tr><td>{_e(b.get('address'))}</td><td>{_health(ok, 'up', 'ejected' if b.get('ejected') else 'down')}</td>"
            f"<td>{_checkText(b.get('healthCheck'))}</td>"
            f"<td class=num>{_e(b.get('weight'))}</td><td class=num>{_e(b.get('activeConnections'))}</td>"
            f"<td class=num>{_e(b.get('totalConnections'))}</td><td class=num>{_e(b.get('totalFailures'))}</td>"
            f"<td>{_e(b.get('lastCheckError') or '')}</td></tr>"
        )
    head = ("<tr><th>backend</th><th>health</th><th>health check</th><th>weight</th><th>open connections</th>"
            "<th>connections</th><th>failed connects</th><th>last check error</th></tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _processSection(data: Dict[str, Any]) -> str:
    out = []
    draining = data.get("draining")
    badge = '<span class="badge bad">draining</span>' if draining else '<span class="badge ok">serving</span>'
    worker = data.get("worker")
    who = (f"txproxy {_e(data.get('version'))}; " if data.get("version") else "") + f"pid {_e(data.get('pid'))}" + (
        f", worker {_e(worker)}" if worker is not None else "")
    out.append(f"<p>{badge} <span class=muted>{who}; up {_e(_duration(data.get('uptime')))}; "
               f"reloads {_e(data.get('reloads', 0))} ok / {_e(data.get('reloadFailures', 0))} rejected</span></p>")
    out.append("<h2>Listeners</h2><table><tr><th>name</th><th>mode</th><th>addresses</th>"
               "<th>open connections</th><th>open tunnels</th><th>requests</th><th>limits</th></tr>")
    for lst in data.get("listeners", ()):
        addrs = "<br>".join(
            f"{_e(a['endpoint'])} <span class=muted>{_e(a.get('bound'))}</span>"
            + ("" if a.get("listening", True) else ' <span class="bad">closed</span>')
            for a in lst.get("addresses", ())
        )
        limits = ", ".join(f"{_e(_LIMIT_LABELS.get(k, k))}: {_e(v)}" for k, v in lst.get("limits", {}).items())
        out.append(
            f"<tr><td>{_e(lst.get('name'))}</td><td>{_e(lst.get('mode'))}</td><td>{addrs}</td>"
            f"<td class=num>{_e(lst.get('openConnections'))}</td><td class=num>{_e(lst.get('openTunnels'))}</td>"
            f"<td class=num>{_e(lst.get('requestsTotal'))}</td><td>{limits}</td></tr>"
        )
    out.append("</table>")
    router = data.get("router")
    if router and router.get("listeners"):
        out.append("<h2>Routes and backends</h2>")
        for lst in router["listeners"]:
            if "pool" in lst:
                out.append(f"<h3>{_e(lst.get('name'))} <span class=muted>({_e(lst.get('mode'))}, "
                           f"{_e(lst['pool'].get('balance'))})</span></h3>{_backendRows(lst['pool'])}")
            for r in lst.get("routes", ()):
                pool = r.get("pool", {})
                out.append(f"<h3>{_e(lst.get('name'))}: {_e(r.get('host'))}{_e(r.get('prefix') if r.get('prefix') != '/' else '')} "
                           f"<span class=muted>({_e(pool.get('balance'))})</span></h3>{_backendRows(pool)}")
    limiter = data.get("limiter")
    if limiter:
        out.append("<h2>Limiter</h2><table>")
        backend = limiter.get("backend")
        if limiter.get("usingFallback"):
            backend = f'{_e(backend)} <span class="bad">(Redis unreachable: in-memory fallback)</span>'
        else:
            backend = _e(backend)
        out.append(f"<tr><th>backend</th><td>{backend}</td></tr>")
        for k, label in _LIMITER_LABELS.items():
            if limiter.get(k) is not None:
                out.append(f"<tr><th>{_e(label)}</th><td class=num>{_e(limiter[k])}</td></tr>")
        for reason, n in sorted(limiter.get("decisions", {}).items()):
            label = _DECISION_LABELS.get(reason, f"refused: {reason}")
            out.append(f"<tr><th>decisions, {_e(label)}</th><td class=num>{_e(n)}</td></tr>")
        out.append("</table>")
    return "".join(out)


def workerTotals(workers: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """
    Sums over the workers' statuses (those that answered): open
    connections, open tunnels and requests, overall and per listener name.

    @param workers: the supervisor's worker entries, each with the worker's
        own L{proxyStatus} under C{status} when it answered.
    """
    keys = ("openConnections", "openTunnels", "requestsTotal")
    overall: Dict[str, Any] = {k: 0 for k in keys}
    byListener: Dict[str, Dict[str, Any]] = {}
    reporting = 0
    for w in workers:
        status = w.get("status")
        if not status:
            continue
        reporting += 1
        for lst in status.get("listeners", ()):
            one = byListener.setdefault(str(lst.get("name")), {"mode": lst.get("mode"), **{k: 0 for k in keys}})
            for k in keys:
                n = lst.get(k)
                if isinstance(n, int):
                    one[k] += n
                    overall[k] += n
    return {"workersReporting": reporting, "listeners": byListener, **overall}


def _totalsSection(totals: Dict[str, Any]) -> str:
    out = [f"<h2>Totals across workers <span class=muted>({_e(totals.get('workersReporting'))} reporting)</span></h2>"
           "<table><tr><th>listener</th><th>mode</th><th>open connections</th><th>open tunnels</th>"
           "<th>requests</th></tr>"]
    for name, t in sorted(totals.get("listeners", {}).items()):
        out.append(f"<tr><td>{_e(name)}</td><td>{_e(t.get('mode'))}</td><td class=num>{_e(t['openConnections'])}</td>"
                   f"<td class=num>{_e(t['openTunnels'])}</td><td class=num>{_e(t['requestsTotal'])}</td></tr>")
    out.append(f"<tr><th>all listeners</th><td></td><td class=num>{_e(totals.get('openConnections'))}</td>"
               f"<td class=num>{_e(totals.get('openTunnels'))}</td><td class=num>{_e(totals.get('requestsTotal'))}</td></tr>"
               "</table>")
    return "".join(out)


def renderStatusHTML(data: Dict[str, Any]) -> str:
    """
    The C{/status} page for a person.  C{data} is a L{proxyStatus} result,
    or a supervisor's (with a C{workers} list).
    """
    parts = [
        "<!doctype html><html><head><meta charset=utf-8><title>txproxy status</title>",
        f"<style>{_CSS}</style></head><body><h1>txproxy status</h1>",
    ]
    workers = data.get("workers")
    if workers is None:
        parts.append(_processSection(data))
    else:
        draining = data.get("draining")
        badge = '<span class="badge bad">draining</span>' if draining else '<span class="badge ok">serving</span>'
        version = f"txproxy {_e(data.get('version'))}; " if data.get("version") else ""
        parts.append(f"<p>{badge} <span class=muted>{version}supervisor pid {_e(data.get('pid'))}; "
                     f"{len(workers)} workers; up {_e(_duration(data.get('uptime')))}</span></p>")
        parts.append("<h2>Workers</h2><table><tr><th>worker</th><th>pid</th><th>state</th>"
                     "<th>restarts</th><th>up</th></tr>")
        for w in workers:
            parts.append(f"<tr><td>{_e(w.get('id'))}</td><td>{_e(w.get('pid'))}</td>"
                         f"<td>{_health(w.get('running', False), 'running', 'restarting')}</td>"
                         f"<td class=num>{_e(w.get('restarts'))}</td><td>{_e(_duration(w.get('uptime')))}</td></tr>")
        parts.append("</table>")
        parts.append(_totalsSection(workerTotals(workers)))
        for w in workers:
            status = w.get("status")
            if status:
                parts.append(f"<h2 style='border:0;font-size:1.2em'>Worker {_e(w.get('id'))}</h2>")
                parts.append(_processSection(status))
    parts.append(f"<p class=muted>{_e(time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(data.get('time') or time.time())))}"
                 " &middot; <a href='metrics'>metrics</a> &middot; <a href='healthz'>healthz</a> &middot; "
                 "<a href='status?format=json'>json</a></p></body></html>\n")
    return "".join(parts)
