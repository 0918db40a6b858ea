# -*- test-case-name: tests.test_service -*-
"""
Service assembly: one L{MultiService} holding the shared services and one
listener service per C{--listen} endpoint.
"""

from __future__ import annotations

import sys
from typing import Any, Dict, List, Optional

import attr
from twisted.application.service import MultiService, Service
from twisted.internet import defer
from twisted.logger import Logger

from txproxy._compiled import buildDescription
from txproxy._loop import streamline
from txproxy.accesslog import openAccessLog
from txproxy.cache import CacheService
from txproxy.config import ListenerConfig, ProxyConfig, loadFile
from txproxy.connector import Connector
from txproxy.errors import ConfigError
from txproxy.forward import ForwardProxyFactory
from txproxy.limits.service import LimiterService
from txproxy.reverse import ReverseProxyFactory
from txproxy.router import RouterService
from txproxy.runtime.admin import attachAdmin, metricsFor
from txproxy.runtime.endpoints import (
    ListenerService,
    StartupError,
    alpnProtocols,
    checkResources,
    checkSupported,
    listenerEndpoint,
    serverEndpoint,
    withBacklog,
)
from txproxy.runtime.process import warnAboutFdLimit, workerId
from txproxy.runtime.workers import WorkerSupervisor
from txproxy.stream.sni import SNIRouterFactory
from txproxy.stream.tcp import TCPProxyFactory, TransparentFactory
from txproxy.tracing import TracingCollector, tracingFor
from txproxy.tuning import pypyNurseryHint, tuneCollector, tunePyPyJIT

__all__ = ["ProxyService", "ListenerService", "makeService", "serverEndpoint", "StartupError"]

log = Logger(namespace="txproxy.service")


def _factoryFor(listener: ListenerConfig, services: "ProxyService", reactor: Any) -> Any:
    factory = _buildFactory(listener, services, reactor)
    # Process-wide (--trace-otlp): every listener shares the one tracer.
    factory.tracer = services.tracer
    return factory


def _buildFactory(listener: ListenerConfig, services: "ProxyService", reactor: Any) -> Any:
    connector = Connector(reactor, listener.connectTimeout)
    limits = services.limitsFor(listener)
    if listener.mode == "forward":
        factory = ForwardProxyFactory(listener, connector, reactor, limits, services.accessLog, services.metrics)
        factory.mode = "forward"
        factory.cache = services.caches.cacheFor(listener)
        return factory
    if listener.mode in ("tcp", "transparent", "sni"):
        cls = {"tcp": TCPProxyFactory, "transparent": TransparentFactory, "sni": SNIRouterFactory}[listener.mode]
        return cls(
            listener,
            connector,
            reactor,
            router=services.router,
            limits=limits,
            accessLog=services.accessLog,
            metrics=services.metrics,
        )
    if listener.mode == "reverse":
        tls = bool(listener.certs) or any(d.split(":", 1)[0] in ("ssl", "haproxy") and "ssl:" in d for d in listener.listen)
        reverse = ReverseProxyFactory(
            listener,
            connector,
            reactor,
            limits,
            services.accessLog,
            services.metrics,
            router=services.router,
            tls=tls,
        )
        reverse.cache = services.caches.cacheFor(listener)
        return reverse
    raise ConfigError(f"mode {listener.mode} is not supported yet")


class ProxyService(MultiService):
    """
    The whole proxy: shared services plus the listener services.

    Stopping it drains: listening sockets close at once, idle connections
    close, open requests and tunnels get up to C{drainTimeout} seconds, and
    whatever is left is then closed.

    @ivar draining: whether a stop has begun.
    """

    draining = False

    def __init__(self, config: ProxyConfig, reactor: Any = None) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.config = config
        self.reactor = reactor
        self.accessLog = openAccessLog(config.accessLog, config.accessLogFormat)
        #: Prometheus metrics when something reads them (--admin, --workers).
        self.metrics: Any = metricsFor(config)
        #: Token buckets and connection caps, in memory or in Redis.
        self.limiter = LimiterService.fromConfig(config, reactor)
        self.limiter.setServiceParent(self)
        #: Spans and their export (--trace-otlp), or None: tracing is off.
        self.tracing = tracingFor(config, reactor)
        self.tracer: Any = None
        if self.tracing is not None:
            self.tracing.setServiceParent(self)
            self.tracer = self.tracing.tracer
            if self.metrics is not None:
                self.metrics.registry.register(TracingCollector(self.tracing.exporter, self.metrics.worker))
        #: Routes and pools of the tcp, sni (and reverse) listeners.
        self.router = RouterService(config.listeners, Connector(reactor), reactor)
        self.router.setServiceParent(self)
        #: The HTTP listeners' caches (--cache), kept across reloads.
        self.caches = CacheService(reactor)
        self.caches.setServiceParent(self)
        self.listenerServices: List[ListenerService] = []
        self.factories: Dict[str, Any] = {}
        for index, listener in enumerate(config.listeners):
            name = listener.name or f"listener{index}"
            factory = _factoryFor(listener, self, reactor)
            self.factories[name] = factory
            for description in listener.listen:
                endpoint = listenerEndpoint(reactor, withBacklog(description, listener.backlog), listener)
                svc = ListenerService(description, endpoint, factory)
                svc.setServiceParent(self)
                self.listenerServices.append(svc)
        #: The --admin site (/metrics, /healthz, /status); stopped after the drain.
        self.admin = attachAdmin(self)

    def limitsFor(self, listener: ListenerConfig) -> Any:
        """
        The L{txproxy.limits.service.ListenerLimits} for C{listener}, or L{None}
        when it sets no limit (so its protocols skip the limiter entirely).
        """
        if listener.rate is None and listener.maxConns is None and listener.maxConnsPerClient is None:
            return None
        return self.limiter.limitsFor(listener)

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except StartupError as e:
            self._startupFailed(e)

    def startService(self) -> None:
        try:
            super().startService()
        except StartupError as e:
            self._startupFailed(e)
        reactorName = type(self.reactor).__module__ + "." + type(self.reactor).__name__
        log.info("txproxy running on {reactor}, core {build}", reactor=reactorName, build=buildDescription())
        import os
        import platform

        implementation = platform.python_implementation()
        hint = pypyNurseryHint(os.environ, implementation)
        if hint is not None:
            log.info("{hint}", hint=hint)
        params, refused = tunePyPyJIT(os.environ, implementation)
        if params is not None:
            log.info("PyPy JIT parameters: {params}", params=params)
        elif refused is not None:
            log.warn("{refused}", refused=refused)
        threshold, refused = tuneCollector(os.environ, implementation)
        if threshold is not None:
            log.info("garbage collector: first threshold {threshold}", threshold=threshold)
        elif refused is not None:
            log.warn("{refused}", refused=refused)
        if self.streamlineReactor:
            streamline(self.reactor)
        warnAboutFdLimit(self.config)
        if self.installSignalHandlers:
            self.reactor.callWhenRunning(self._installSignalHandlers)

    #: Whether to give an epoll reactor txproxy's lean dispatch loop (see
    #: L{txproxy._loop}; legacy log lines from event handlers then lose
    #: their per-connection system prefix).
    streamlineReactor = True

    #: Whether to take over SIGTERM/SIGINT (drain, then exit 0) and SIGHUP
    #: (reload) once the reactor runs.
    installSignalHandlers = True

    def _installSignalHandlers(self) -> None:
        """
        SIGTERM and SIGINT stop the reactor, which stops this service (a
        drain) and exits with status 0: a requested stop is a success, so the
        process does not re-raise the signal at exit as twistd otherwise does.
        """
        import signal

        def stop(signum: int, frame: Any) -> None:
            log.info("received signal {signum}: draining", signum=signum)
            self.reactor.callFromThread(self._stopReactor)

        def hup(signum: int, frame: Any) -> None:
            self.reactor.callFromThread(self.reload)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, hup)

    #: Successful and failed reloads, and the clock time of the last success.
    reloads = 0
    reloadFailures = 0
    lastReload: Optional[float] = None

    def reload(self) -> bool:
        """
        Re-read the configuration (SIGHUP) and apply it without dropping open
        connections: routes, upstreams, limits, policy, certificates and auth
        files change for new requests; listeners that appeared start
        listening, listeners that disappeared stop (their open connections
        run on).  A configuration with any error is rejected whole with one
        log line and the old one keeps serving.

        Without C{--config} the flags cannot change; certificates and auth
        files are still re-read.

        @return: whether the new configuration was applied.
        """
        try:
            if self.config.configFile is not None:
                new = attr.evolve(
                    loadFile(self.config.configFile),
                    admin=self.config.admin,
                    workers=self.config.workers,
                    redis=self.config.redis,
                    drainTimeout=self.config.drainTimeout,
                    accessLog=self.config.accessLog,
                    accessLogFormat=self.config.accessLogFormat,
                    redisOutage=self.config.redisOutage,
                    configFile=self.config.configFile,
                    # Tracing is set up once, at start.
                    traceOtlp=self.config.traceOtlp,
                    traceSample=self.config.traceSample,
                )
            else:
                new = self.config
            checkSupported(new)
            checkResources(new, self.reactor)
            self._apply(new)
        except Exception as e:
            self.reloadFailures += 1
            detail = str(e) if isinstance(e, ConfigError) else f"{type(e).__name__}: {e}"
            log.error("reload rejected, keeping the running configuration: {detail}", detail=detail)
            return False
        self.reloads += 1
        self.lastReload = self.reactor.seconds()
        log.info("reloaded configuration ({n} listeners)", n=len(new.listeners))
        return True

    def _apply(self, new: ProxyConfig) -> None:
        """
        Swap in C{new}: everything that can fail is built first, then the
        changes are made.
        """
        old = {l.name: l for l in self.config.listeners}
        keep: Dict[str, Any] = {}
        build: Dict[str, Any] = {}
        for listener in new.listeners:
            previous = old.get(listener.name)
            if (
                previous is not None
                and previous.listen == listener.listen
                and previous.mode == listener.mode
                and previous.backlog == listener.backlog
                and (previous.certs is None) == (listener.certs is None)
            ):
                keep[listener.name] = listener
            else:
                build[listener.name] = listener
        # Build (may raise) before changing anything.
        for listener in new.listeners:
            self.caches.check(listener)
        endpoints = {
            name: [(d, listenerEndpoint(self.reactor, withBacklog(d, l.backlog), l)) for d in l.listen]
            for name, l in build.items()
        }
        # Certificates of kept TLS listeners are re-read (all or nothing);
        # open connections keep the certificates they were served.
        tlsCommits = []
        for svc in self.listenerServices:
            prepare = getattr(svc.endpoint, "prepareReload", None)
            owner = next((n for n, f in self.factories.items() if f is svc.factory), None)
            if prepare is not None and owner in keep:
                listener = keep[owner]
                tlsCommits.append(
                    prepare(certsDir=listener.certs, clientCA=listener.clientCA, acceptableProtocols=alpnProtocols(listener))
                )
        self.router.setListeners(new.listeners)
        factories = {name: _factoryFor(l, self, self.reactor) for name, l in build.items()}
        refreshed = {}
        for name, listener in keep.items():
            factory = self.factories[name]
            refreshed[name] = (factory, listener, self.limitsFor(listener))
            reloadHook = getattr(factory, "reloadListener", None)
            if reloadHook is not None:
                reloadHook(listener, dryRun=True)
        # Apply.
        for commit in tlsCommits:
            commit()
        for name, (factory, listener, limits) in refreshed.items():
            reloadHook = getattr(factory, "reloadListener", None)
            if reloadHook is not None:
                reloadHook(listener)
            else:
                factory.listener = listener
            factory.limits = limits
            if listener.mode in ("forward", "reverse"):
                factory.cache = self.caches.cacheFor(listener)
        self.caches.keepOnly([listener.name for listener in new.listeners])
        gone = [name for name in self.factories if name not in keep]
        for svc in list(self.listenerServices):
            owner = next((n for n, f in self.factories.items() if f is svc.factory), None)
            if owner in gone:
                svc.stopListening()
                svc.disownServiceParent()
                self.listenerServices.remove(svc)
        for name in gone:
            self.factories.pop(name, None)
        self.config = new
        for name, factory in factories.items():
            self.factories[name] = factory
            for description, endpoint in endpoints[name]:
                svc = ListenerService(description, endpoint, factory)
                try:
                    svc.setServiceParent(self)
                except StartupError as e:
                    log.error("reload: {error}", error=str(e))
                    svc.disownServiceParent()
                    continue
                self.listenerServices.append(svc)

    def _stopReactor(self) -> None:
        from twisted.internet.error import ReactorNotRunning

        try:
            self.reactor.stop()
        except ReactorNotRunning:  # a second signal while draining
            pass

    def _startupFailed(self, e: Exception) -> None:
        for svc in self.listenerServices:
            if svc.port is not None:
                svc.stopListening()
        stderr = sys.__stderr__ or sys.stderr
        stderr.write(f"txproxy: error: {e}\n")
        stderr.flush()
        raise SystemExit(1)

    def stopService(self) -> "defer.Deferred[None]":
        self.draining = True
        Service.stopService(self)
        stops = [svc.stopListening() for svc in self.listenerServices]
        d: defer.Deferred[Any] = defer.gatherResults(stops, consumeErrors=True)
        d.addBoth(lambda _: self._drain())
        d.addBoth(lambda _: self._stopChildren())
        return d

    def _openProtocols(self) -> List[Any]:
        protos: List[Any] = []
        for factory in self.factories.values():
            protos.extend(getattr(factory, "protocols", ()))
        return protos

    def _drain(self) -> "defer.Deferred[None]":
        for proto in self._openProtocols():
            drain = getattr(proto, "drain", None)
            if drain is not None:
                drain()
        done: defer.Deferred[None] = defer.Deferred()
        deadline = self.reactor.seconds() + self.config.drainTimeout

        def check() -> None:
            remaining = self._openProtocols()
            if not remaining:
                done.callback(None)
                return
            if self.reactor.seconds() >= deadline:
                log.info("drain timeout: closing {n} connections", n=len(remaining))
                for proto in remaining:
                    if getattr(proto, "relay", None) is not None:
                        proto.relay.abort("drain")
                    elif proto.transport is not None:
                        proto.transport.abortConnection()
                done.callback(None)
                return
            self.reactor.callLater(0.05, check)

        check()
        return done

    def _stopChildren(self) -> "defer.Deferred[Any]":
        others = [s for s in self if not isinstance(s, ListenerService)]
        results = [defer.maybeDeferred(s.stopService) for s in reversed(others) if s.running]
        if self.accessLog is not None:
            self.accessLog.close()
        return defer.gatherResults(results, consumeErrors=True)


def makeService(config: ProxyConfig, reactor: Any = None) -> Any:
    """
    Build the proxy service for C{config}: a L{ProxyService}, or with
    C{--workers} N > 1 the supervisor that runs N of them
    (L{txproxy.runtime.workers.WorkerSupervisor}).
    """
    if config.workers > 1 and workerId() is None:
        return WorkerSupervisor(config, reactor)
    return ProxyService(config, reactor)
