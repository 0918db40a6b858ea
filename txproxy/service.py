# -*- test-case-name: tests.test_service -*-
"""
Service assembly: one L{MultiService} holding the shared services and one
listener service per C{--listen} endpoint.
"""

from __future__ import annotations

import sys
from typing import Any, Dict, List, Optional, cast

import attr

from twisted.application.service import MultiService, Service
from twisted.internet import defer
from twisted.internet.endpoints import _WrapperServerEndpoint, serverFromString
from twisted.internet.interfaces import IHalfCloseableProtocol, ITransport
from twisted.logger import Logger
from twisted.internet.protocol import Protocol, connectionDone
from twisted.protocols.haproxy._wrapper import HAProxyProtocolWrapper, HAProxyWrappingFactory
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer, providedBy

from txproxy._common import formatAddress
from txproxy.accesslog import openAccessLog
from txproxy.config import ListenerConfig, ProxyConfig
from txproxy.connector import Connector
from txproxy.errors import ConfigError
from txproxy.proxyprotocol import HeaderParser, InvalidHeader, ProxyInfo

__all__ = ["ProxyService", "ListenerService", "makeService", "serverEndpoint", "StartupError"]

log = Logger()


class StartupError(Exception):
    """
    The proxy cannot start (a port is in use, a certificate is unreadable).
    Its text is the one line printed on standard error.
    """


def _listenerFactory(factory: Any) -> Any:
    """
    The txproxy listener factory under C{factory}'s wrappers (TLS, PROXY
    header): the first one with a C{listener}, or L{None}.
    """
    for _ in range(8):
        if factory is None or getattr(factory, "listener", None) is not None:
            return factory
        factory = getattr(factory, "wrappedFactory", None)
    return None


#: The client key a connection is counted under in the connection caps
#: while its PROXY header has not arrived (it counts toward the total only).
PENDING_CLIENT = "proxy-header-pending"


@implementer(IHalfCloseableProtocol)
class _HalfCloseableHAProxyWrapper(HAProxyProtocolWrapper):
    """
    The C{haproxy:} listener's wrapper: reads the PROXY header with
    L{txproxy.proxyprotocol.HeaderParser} (in pieces of any size; addresses
    validated), then connects the wrapped protocol.

    Differences from Twisted's wrapper:

      - the wrapped protocol is connected only once the header has been
        read (Twisted's connects it at once, so its C{connectionMade} would
        see the proxy's address instead of the client address the header
        carries: the one ACLs, limits and logs must use).  A connection
        closed before a complete header never reaches the wrapped protocol;
      - from accept, the connection counts toward C{--max-conns} (a
        connection over it is closed at once, before any byte is read), and
        the header must be complete within C{--header-timeout}; a bad header
        or a late one closes the connection with one log line.  The
        per-client cap cannot apply before the header names the client (the
        peer is the load balancer): the wrapped protocol checks it, with
        the total, once the header has been read (the slot held since
        accept is handed over);
      - half-close is passed through to the wrapped protocol (Twisted's own
        turns a client's FIN into a full close).
    """

    _timer: Any = None
    _lease: Any = None
    _admission: Any = None
    _closed = False
    _ready: Any = None

    def makeConnection(self, transport: Any) -> None:
        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        self._header = HeaderParser()
        listenerFactory = self._listener = _listenerFactory(self.factory.wrappedFactory)
        if listenerFactory is None:
            return
        clock = getattr(listenerFactory, "clock", None)
        if clock is not None:
            self._timer = clock.callLater(listenerFactory.listener.headerTimeout, self._headerTimedOut)
        limits = getattr(listenerFactory, "limits", None)
        if limits is not None and limits.maxConns is not None:
            limiter = limits.limiter
            acquire = getattr(limiter, "acquireNowOrLater", None) or limiter.acquire
            decision = acquire(limits.scope, PENDING_CLIENT, limits.maxConns, None)
            if isinstance(decision, defer.Deferred):
                self._admission = decision
                decision.addCallback(self._admitted)
            else:
                self._admitted(decision)

    def _admitted(self, decision: Any) -> None:
        self._admission = None
        if not decision.allowed:
            self._refuse("over --max-conns")
            return
        if self._closed:
            if decision.lease is not None:
                decision.lease.release()
            return
        self._lease = decision.lease
        ready, self._ready = self._ready, None
        if ready is not None:
            assert self.transport is not None
            self.transport.resumeProducing()  # type: ignore[attr-defined]
            self._connectWrapped(*ready)

    def _refuse(self, why: str) -> None:
        if self._closed:
            return
        self._closed = True
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        assert self.transport is not None
        peer = self.transport.getPeer()
        listener = getattr(self._listener, "listener", None)
        log.info(
            "listener {name}: closed a connection from {peer} before its PROXY header: {why}",
            name=getattr(listener, "name", ""),
            peer=formatAddress(getattr(peer, "host", "unix"), getattr(peer, "port", 0)),
            why=why,
        )
        self.transport.loseConnection()

    def _headerTimedOut(self) -> None:
        self._timer = None
        if self._proxyInfo is None:
            listener = self._listener.listener
            self._refuse(f"no complete header within --header-timeout ({listener.headerTimeout:g}s)")

    def dataReceived(self, data: bytes) -> None:
        if self._proxyInfo is not None:
            self.wrappedProtocol.dataReceived(data)
            return
        if self._closed:
            return
        if self._ready is not None:
            info, rest = self._ready
            self._ready = (info, rest + data)
            return
        try:
            info, rest = self._header.feed(data)
        except InvalidHeader as e:
            self._refuse(f"bad PROXY header: {e}")
            return
        if info is None:
            return
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        if self._admission is not None:
            # The cap's answer is not in yet (Redis): wait for it.
            self._ready = (info, rest)
            assert self.transport is not None
            self.transport.pauseProducing()  # type: ignore[attr-defined]
            return
        self._connectWrapped(info, rest)

    def _connectWrapped(self, info: ProxyInfo, rest: bytes) -> None:
        # Hand the slot held since accept to the wrapped protocol, which
        # takes its own (per client and total) as it connects.
        lease, self._lease = self._lease, None
        if lease is not None:
            lease.release()
        self._proxyInfo = info  # type: ignore[assignment]
        # The wrapper is the wrapped protocol's transport (it provides what
        # the real transport provides, see makeConnection).
        self.wrappedProtocol.makeConnection(cast(ITransport, self))
        if rest:
            self.wrappedProtocol.dataReceived(rest)

    def readConnectionLost(self) -> None:
        p = IHalfCloseableProtocol(self.wrappedProtocol, None)
        if p is not None and self._proxyInfo is not None:
            p.readConnectionLost()
        else:
            assert self.transport is not None
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        p = IHalfCloseableProtocol(self.wrappedProtocol, None)
        if p is not None and self._proxyInfo is not None:
            p.writeConnectionLost()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._proxyInfo is not None:
            super().connectionLost(reason)
            return
        self._closed = True
        self._ready = None
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        lease, self._lease = self._lease, None
        if lease is not None:
            lease.release()
        self.factory.unregisterProtocol(self)


class _HalfCloseableHAProxyFactory(HAProxyWrappingFactory):
    # (mypy rejects any subclass here, Twisted's own included: a protocol
    # wrapper is not the protocol Twisted's Factory[P] typing expects.)
    protocol = _HalfCloseableHAProxyWrapper  # type: ignore[assignment]


def serverEndpoint(
    reactor: Any,
    description: str,
    certs: Optional[str] = None,
    clientCA: Optional[str] = None,
    acceptableProtocols: Any = (b"http/1.1",),
) -> Any:
    """
    Build a server endpoint from a Twisted endpoint string.  C{haproxy:}
    prefixes get a PROXY-protocol wrapper that keeps half-close working.

    C{ssl:} strings, and any string when C{certs} is given, terminate TLS
    with L{txproxy.tls.tlsServerEndpoint} (SNI certificates from C{certs},
    optional client certificates, ALPN C{acceptableProtocols}); the result
    is a L{txproxy.tls.TLSServerEndpoint}, whose C{reload} re-reads them.

    @raise ConfigError: the description is not a valid endpoint, or its
        certificates do not load.
    """
    from txproxy.tls import isTLSListener, tlsServerEndpoint

    if isTLSListener(description, certs):
        return tlsServerEndpoint(reactor, description, certs, clientCA, acceptableProtocols)
    try:
        if description.startswith("haproxy:"):
            inner = serverFromString(reactor, description[len("haproxy:") :])
            return _WrapperServerEndpoint(inner, _HalfCloseableHAProxyFactory)
        return serverFromString(reactor, description)
    except Exception as e:  # serverFromString raises many kinds for bad input
        detail = str(e) or type(e).__name__
        if isinstance(e, (IOError, OSError)) and getattr(e, "strerror", None):
            detail = f"{e.strerror}: {getattr(e, 'filename', '')}".rstrip(": ")
        raise ConfigError(f"bad --listen endpoint {description!r}: {detail}")


def listenerEndpoint(reactor: Any, description: str, listener: ListenerConfig) -> Any:
    """
    L{serverEndpoint} for one of C{listener}'s strings, with its TLS
    settings: C{certs} and C{client_ca}, ALPN C{http/1.1} in the HTTP modes
    (none in the TCP modes).  C{sni} mode passes TLS through, so a TLS
    listener there is refused.

    @raise ConfigError: as L{serverEndpoint}.
    """
    from txproxy.tls import isTLSListener

    tls = isTLSListener(description, listener.certs)
    if tls and listener.mode == "sni":
        raise ConfigError(f"bad --listen endpoint {description!r}: sni mode passes TLS through; listen with tcp:, without --certs")
    protocols = (b"http/1.1",) if listener.mode in ("forward", "reverse") else ()
    try:
        return serverEndpoint(reactor, description, listener.certs, listener.clientCA, protocols)
    except ConfigError as e:
        # Name the string the user wrote, not the one with --backlog added.
        original = _withoutBacklog(description, listener.backlog)
        raise ConfigError(str(e).replace(repr(description), repr(original)))


def _withoutBacklog(description: str, backlog: int) -> str:
    suffix = f":backlog={backlog}"
    return description[: -len(suffix)] if description.endswith(suffix) else description


def withBacklog(description: str, backlog: int) -> str:
    """
    Add C{backlog=N} (C{--backlog}) to a C{tcp}, C{tcp6}, C{ssl} or C{unix}
    endpoint string that does not set its own.
    """
    inner = description[len("haproxy:"):] if description.startswith("haproxy:") else description
    kind = inner.split(":", 1)[0]
    if kind not in ("tcp", "tcp6", "ssl", "unix") or "backlog=" in inner:
        return description
    return f"{description}:backlog={backlog}"


class ListenerService(Service):
    """
    Listens on one endpoint with one factory, from start to stop.

    Listening happens in C{privilegedStartService} (so a privileged port can
    be bound before privileges are shed) and synchronously: a failure raises
    L{StartupError} instead of being logged and forgotten.
    """

    port: Any = None

    def __init__(self, description: str, endpoint: Any, factory: Any) -> None:
        self.description = description
        from txproxy.workers import reusePortIfWorker

        # In a --workers worker, TCP ports are bound with SO_REUSEPORT.
        self.endpoint = reusePortIfWorker(endpoint)
        self.factory = factory

    def privilegedStartService(self) -> None:
        Service.privilegedStartService(self)
        self._listen()

    def startService(self) -> None:
        Service.startService(self)
        if self.port is None:
            self._listen()

    def _listen(self) -> None:
        results: List[Any] = []
        self.endpoint.listen(self.factory).addBoth(results.append)
        if not results:
            raise StartupError(f"cannot listen on {self.description}: listening did not complete")
        result = results[0]
        if isinstance(result, Failure):
            e = result.value
            detail = getattr(e, "socketError", None) or e
            detail = getattr(detail, "strerror", None) or str(detail) or type(e).__name__
            raise StartupError(f"cannot listen on {self.description}: {detail}")
        self.port = result
        log.info("txproxy {mode} listening on {address}", mode=getattr(self.factory, "mode", ""), address=self.description)

    def stopListening(self) -> "defer.Deferred[None]":
        """
        Close the listening socket now (new connections are refused).
        """
        port, self.port = self.port, None
        if port is None:
            return defer.succeed(None)
        return defer.maybeDeferred(port.stopListening)

    def stopService(self) -> "defer.Deferred[None]":
        Service.stopService(self)
        return self.stopListening()


def _factoryFor(listener: ListenerConfig, services: "ProxyService", reactor: Any) -> Any:
    connector = Connector(reactor, listener.connectTimeout)
    limits = services.limitsFor(listener)
    if listener.mode == "forward":
        from txproxy.forward import ForwardProxyFactory

        factory = ForwardProxyFactory(listener, connector, reactor, limits, services.accessLog, services.metrics)
        factory.mode = "forward"
        return factory
    if listener.mode in ("tcp", "transparent", "sni"):
        from txproxy.sni import SNIRouterFactory
        from txproxy.tcp import TCPProxyFactory, TransparentFactory

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
        from txproxy.reverse import ReverseProxyFactory

        tls = bool(listener.certs) or any(d.split(":", 1)[0] in ("ssl", "haproxy") and "ssl:" in d for d in listener.listen)
        return ReverseProxyFactory(
            listener,
            connector,
            reactor,
            limits,
            services.accessLog,
            services.metrics,
            router=services.router,
            tls=tls,
        )
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
        from txproxy.admin import metricsFor

        #: Prometheus metrics when something reads them (--admin, --workers).
        self.metrics: Any = metricsFor(config)
        from txproxy.limiter import LimiterService

        #: Token buckets and connection caps, in memory or in Redis.
        self.limiter = LimiterService.fromConfig(config, reactor)
        self.limiter.setServiceParent(self)
        from txproxy.router import RouterService

        #: Routes and pools of the tcp, sni (and reverse) listeners.
        self.router = RouterService(config.listeners, Connector(reactor), reactor)
        self.router.setServiceParent(self)
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
        from txproxy.admin import attachAdmin

        #: The --admin site (/metrics, /healthz, /status); stopped after the drain.
        self.admin = attachAdmin(self)

    def limitsFor(self, listener: ListenerConfig) -> Any:
        """
        The L{txproxy.limiter.ListenerLimits} for C{listener}, or L{None}
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
        log.info("txproxy running on {reactor}", reactor=reactorName)
        import os
        import platform

        from txproxy.tuning import pypyNurseryHint, tunePyPyJIT

        implementation = platform.python_implementation()
        hint = pypyNurseryHint(os.environ, implementation)
        if hint is not None:
            log.info("{hint}", hint=hint)
        params, refused = tunePyPyJIT(os.environ, implementation)
        if params is not None:
            log.info("PyPy JIT parameters: {params}", params=params)
        elif refused is not None:
            log.warn("{refused}", refused=refused)
        if self.streamlineReactor:
            from txproxy._loop import streamline

            streamline(self.reactor)
        from txproxy.workers import warnAboutFdLimit

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
        from txproxy.tap import checkResources

        try:
            if self.config.configFile is not None:
                from txproxy.config import loadFile

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
                )
            else:
                new = self.config
            from txproxy.tap import _checkSupported

            _checkSupported(new)
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
                tlsCommits.append(prepare(certsDir=listener.certs, clientCA=listener.clientCA))
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
    (L{txproxy.workers.WorkerSupervisor}).
    """
    from txproxy.workers import WorkerSupervisor, workerId

    if config.workers > 1 and workerId() is None:
        return WorkerSupervisor(config, reactor)
    return ProxyService(config, reactor)
