# -*- test-case-name: tests.test_admin -*-
"""
The admin endpoint (C{--admin ENDPOINT}): a small twisted.web site.

  - C{/metrics}: every series of L{txproxy.metrics.Metrics}, in the
    Prometheus text format (prometheus-client's C{generate_latest});
  - C{/healthz}: C{200 ok} while serving, C{503 draining} once a stop has
    begun (the admin listener stays up through the drain, until the process
    exits, so a load balancer sees the 503);
  - C{/status}: listeners, modes, addresses, open connections, routes and
    backends with health, limiter state, caches; HTML for a person, JSON
    when the request says C{Accept: application/json} (or C{?format=json});
  - C{POST /cache/purge?url=URL}: remove every stored variant of URL from
    the caches (both tiers); C{200} with the number removed as a decimal
    body, C{400} for a URL that is not absolute C{http}/C{https}, C{404}
    when no listener caches.

The pages read from a I{source}: an object with C{isDraining()},
C{metricsText()} and C{statusData()} (the last two may return Deferreds),
and C{purgeCache(url)} (a Deferred firing with a count; C{ValueError} for
a bad URL, C{LookupError} when nothing caches).
L{ProxyAdminSource} is the source for one proxy process; the C{--workers}
supervisor has its own (L{txproxy.runtime.workers}).
"""

from __future__ import annotations

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

from txproxy import __version__
from txproxy.cache._metrics import CacheCollector
from txproxy.errors import ConfigError
from txproxy.metrics import CONTENT_TYPE_LATEST, Metrics, backendStatesFromRouter
from txproxy.runtime.endpoints import ListenerService, serverEndpoint
from txproxy.runtime.statuspage import renderStatusHTML
from txproxy.runtime.process import setUpWorkerProcess, workerAdminEndpoint, workerId

__all__ = [
    "AdminService",
    "AdminSite",
    "ProxyAdminSource",
    "adminRoot",
    "attachAdmin",
    "metricsFor",
    "renderStatusHTML",
]

log = Logger(namespace="txproxy.admin")


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


class CachePurgeResource(_Page):
    """
    C{POST /cache/purge?url=URL}: purge URL from every cache.
    """

    def render_POST(self, request: Request) -> Any:
        args: Dict[bytes, List[bytes]] = request.args or {}
        urls = args.get(b"url", [])
        if len(urls) != 1 or not urls[0]:
            _finish(request, b"one url parameter is needed: POST /cache/purge?url=URL\n", 400)
            return NOT_DONE_YET
        url = urls[0].decode("utf-8", "replace")
        try:
            d = defer.maybeDeferred(self.source.purgeCache, url)
        except AttributeError:
            d = defer.fail(LookupError("no cache"))

        def refused(f: Failure) -> Any:
            if f.check(ValueError):
                _finish(request, f"{f.value}\n".encode("utf-8"), 400)
            elif f.check(LookupError):
                _finish(request, b"no listener has a cache (--cache)\n", 404)
            else:
                log.failure("admin: cache purge of {url} failed", f, url=url)
                _finish(request, b"internal error\n", 500)
            return None

        d.addCallbacks(lambda count: _finish(request, b"%d" % int(count)), refused)
        return NOT_DONE_YET

    def render_GET(self, request: Request) -> bytes:
        request.setResponseCode(405)
        request.setHeader("allow", "POST")
        request.setHeader("content-type", "text/plain; charset=utf-8")
        return b"use POST /cache/purge?url=URL\n"


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
    cache = Resource()
    cache.putChild(b"purge", CachePurgeResource(source))
    root.putChild(b"cache", cache)
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

    L{txproxy.runtime.service.ProxyService} stops its proxy listeners first, drains,
    and only then stops this service, so C{/healthz} answers C{503} during
    the whole drain.
    """

    def __init__(self, endpoints: Sequence[str], source: Any, reactor: Any = None) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.source = source
        self.site = AdminSite(adminRoot(source), reactor=reactor)
        self.listeners: List[Any] = []
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
    wid = workerId()
    if not config.admin and wid is None:
        return None
    return Metrics(worker=str(wid) if wid is not None else "0")


def attachAdmin(service: Any) -> Optional[AdminService]:
    """
    Wire C{service} (a L{txproxy.runtime.service.ProxyService}) to its metrics and,
    when admin endpoints are configured, add an L{AdminService} to it.

    Reads the service's C{metrics}, C{factories}, C{config}, and, when they
    exist, C{limiter} and C{router}.
    """
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
        caches = getattr(service, "caches", None)
        if caches is not None:
            metrics.registry.register(CacheCollector(caches, metrics.worker))
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
    The admin pages' view of one L{txproxy.runtime.service.ProxyService}.
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

    def purgeCache(self, url: str) -> "defer.Deferred[int]":
        """
        Purge C{url} from this process's caches.

        @raise ValueError: for a URL that is not absolute http(s).
        @raise LookupError: when no listener caches.
        """
        caches = getattr(self.service, "caches", None)
        if caches is None or not caches.caches:
            raise LookupError("no cache")
        d: "defer.Deferred[int]" = caches.purge(url)
        return d


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
        cache = getattr(factory, "cache", None)
        if cache is not None:
            listeners[-1]["cache"] = cache.stats()
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



