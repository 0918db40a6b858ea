# -*- test-case-name: tests.test_tcp,tests.test_sni -*-
"""
The relaying protocol and factory the stream modes (tcp, transparent, sni)
share: admission (ACLs, connection caps, rate), the choice of upstream
(the C{chooseUpstream} hook, a pool, or the original destination), the dial
with retries on other backends, the relay, and the access record.

Why this module is long: it is one base protocol whose steps share its
state (the connection's phase, the backends tried, the timers); the
upstream side is in L{txproxy.stream._upstream}.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Optional, Tuple, cast

from twisted.internet import defer, error
from twisted.internet.interfaces import IHalfCloseableProtocol, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txproxy._common import clientInfoFor, formatAddress, isIPLiteral, overrides, statusForFailure
from txproxy._factory import ListenerFactory, endHookOf
from txproxy._hookcompat import Legacy, firstParameter, hookCaller, positionalCount
from txproxy.accesslog import AccessRecord
from txproxy.config import ListenerConfig
from txproxy.connector import Connector, directDial
from txproxy.errors import NoHealthyBackend, PolicyDenied, ResolveError
from txproxy.hooks import ClientInfo, StreamRequest, Target
from txproxy.proxyprotocol import headerFor
from txproxy.relay import Relay, joinRelay
from txproxy.router import RouterService, endpointForBackend
from txproxy.stream._upstream import (
    UpstreamProtocol,
    _connectTimedOut,
    _Dial,
    describeFailure,
    parseTCPDescription,
)
from txproxy.tracing import endSpan as _endSpan
from txproxy.tracing import startStreamSpan

__all__ = ["RelayingFactory"]

log = Logger(namespace="txproxy.tcp")

_OPEN, _HELLO, _CONNECTING, _RELAYING, _CLOSED = range(5)


def _onlyOneArgument(function: Any) -> bool:
    return positionalCount(function) == 1


def _takesClient(function: Any) -> bool:
    """
    Whether a C{chooseUpstream} override was written for the old
    C{chooseUpstream(client)}: its parameter is named C{client} (or
    annotated L{ClientInfo}).
    """
    if firstParameter(function) == "client":
        return True
    annotations = getattr(function, "__annotations__", {})
    names = [n for n in getattr(getattr(function, "__code__", None), "co_varnames", ())[1:2]]
    return any(annotations.get(n) in ("ClientInfo", ClientInfo) for n in names)


@implementer(IHalfCloseableProtocol)
class _RelayingProtocol(Protocol):
    """
    What the TCP, transparent and SNI modes share: dialling (with one retry
    on the next pool member), the PROXY header, the relay, the record.
    Subclasses decide where to go and call L{_connectPool} or
    L{_connectTarget}.
    """

    #: The protocol class built for the upstream side.
    upstreamProtocol: Callable[[], UpstreamProtocol] = UpstreamProtocol

    factory: "RelayingFactory"
    client: ClientInfo
    relay: Optional[Relay] = None
    #: With tracing on (C{--trace-otlp}), this connection's
    #: L{txproxy.tracing.Span} until it is recorded, else L{None}.
    span: Any = None
    backend: Any = None
    upstreamAddress = ""
    target = "-"
    _state = _OPEN
    _pending: Optional[List[bytes]] = None
    _clientReadLost = False
    _dialing: Any = None
    _dialBackend: Any = None
    _tried: Tuple[Any, ...] = ()
    _pool: Any = None
    _proxyVersion: Optional[str] = None
    _proxyDestination: Any = None
    _start = 0.0
    _startWall = 0.0
    _recorded = False
    _lease: Any = None

    _request: Optional[StreamRequest] = None

    # -- hooks shared by every TCP mode

    def _modeLog(self) -> Logger:
        """
        The logger of this mode's lines (the sni mode has its own).  (A
        method: a L{Logger} class attribute would name the class instead.)
        """
        return log

    def _chooseFailed(self, f: Failure) -> None:
        """
        The C{chooseUpstream} hook raised or its Deferred failed: one log
        line, and the client gets C{502}.
        """
        if self._state == _CLOSED:
            return
        self._modeLog().error(
            "chooseUpstream failed for {client}: {error}", client=self.client.host, error=describeFailure(f)
        )
        self._refuse(502, "chooseUpstream failed")

    @property
    def request(self) -> StreamRequest:
        """
        This connection as its hooks see it: the L{StreamRequest} (client,
        original destination in C{transparent} mode, ClientHello in C{sni}
        mode).  Built on first use.
        """
        request = self._request
        if request is None:
            request = self._request = self._buildRequest()
        return request

    def _buildRequest(self) -> StreamRequest:
        dest = self._proxyDestination if self.factory.transparent else None
        return StreamRequest(self.client, Target(dest[0], dest[1]) if dest is not None else None)

    def relayOpened(self, request: StreamRequest, upstreamAddress: str) -> None:
        """
        Called once the upstream is connected, just before relaying starts
        (any PROXY header is already queued).  Only called when overridden.

        @param request: this connection's L{StreamRequest}.
        @param upstreamAddress: the C{ip:port} dialled.
        """

    def clientData(self, data: bytes) -> bytes:
        """
        Observe or rewrite a chunk the client sent.  Called for every chunk,
        only when a subclass overrides it (the default relay path calls no
        hook per chunk).

        @return: the bytes to send upstream (C{b""} to drop the chunk).
        """
        return data

    def upstreamData(self, data: bytes) -> bytes:
        """
        Observe or rewrite a chunk the upstream sent.  Called for every
        chunk, only when a subclass overrides it.

        @return: the bytes to send to the client.
        """
        return data

    def upstreamFailed(self, request: StreamRequest, reason: Failure) -> None:
        """
        Called once when no upstream could be reached (after the retry), just
        before the client connection is closed.  Only called when
        overridden.

        @param request: this connection's L{StreamRequest}.
        @param reason: the last connect failure (L{NoHealthyBackend} when the
            pool had no backend to try).
        """

    def exchangeEnded(self, record: AccessRecord) -> None:
        """
        Called once per client connection, when it is over (relayed and
        closed, refused, or failed), with its access record.  Only called
        when overridden.
        """

    def spanStarted(self, span: Any) -> None:
        """
        With tracing on, called once per client connection when its span
        starts (at accept, before the ACL and limits): add attributes
        (C{span.setAttribute(...)}) or read the trace id
        (C{span.traceIdText}).  The span stays in C{self.span} until the
        connection's record, so later hooks (C{chooseUpstream},
        L{relayOpened}) may add attributes too.  Synchronous; called only
        when overridden; never called with tracing off.

        @param span: the L{txproxy.tracing.Span}.
        """

    def connectionEnded(self, record: AccessRecord) -> None:
        """
        Deprecated: override L{exchangeEnded}, called at the same moment
        with the same argument.  A subclass that overrides this is still
        called, with a L{DeprecationWarning}.
        """

    # -- set-up

    def connectionMade(self) -> None:
        transport = self.transport
        factory = self.factory
        factory.connectionOpened(self)
        self.client = client = clientInfoFor(transport)
        self._start = factory.clock.seconds()
        self._startWall = time.time()
        if factory.tracer is not None:
            self._startSpan()
        if factory._acl and not factory.clientAllowed(client.host):
            self._refuse(403, "client not allowed")
            return
        limits = factory.limits
        if limits is not None:
            # --rate (one token per connection), --max-conns,
            # --max-conns-per-client: over any of them, closed at once.
            d = limits.admitConnection(client.host, True)
            if d.called and not isinstance(d.result, Failure):
                self._admitted(d.result)
            else:
                d.addCallback(self._admitted)
                d.addErrback(self._admissionFailed)
            return
        self._guarded(self._begin)

    def _admitted(self, decision: Any) -> None:
        if self._state == _CLOSED:
            if decision.lease is not None:
                decision.lease.release()
            return
        if not decision.allowed:
            status = 503 if decision.reason == "max-conns" else 429
            self._refuse(status, f"limit: {decision.reason}")
            return
        self._lease = decision.lease
        self._guarded(self._begin)

    def _admissionFailed(self, f: Failure) -> None:
        log.failure("limiter failed for {client}", f, client=self.client.host)
        self._refuse(503, "limiter failed")

    def _begin(self) -> None:
        """
        Decide where to go and start connecting (subclasses).
        """
        raise NotImplementedError()

    def _guarded(self, step: Callable[..., Any], *args: Any) -> None:
        """
        Run one step on the way to relaying; an exception from it closes
        the connection (L{_internalError}).
        """
        try:
            step(*args)
        except Exception:
            self._internalError(Failure())

    def _internalError(self, f: Failure) -> None:
        """
        An unexpected exception while choosing, resolving or dialling the
        upstream (a hook's bad choice, an endpoint that cannot be built, no
        descriptor left for a socket...): log one line, abandon any dial in
        progress and close the client connection (recorded as C{500}).
        """
        client = getattr(self, "client", None)
        log.error(
            "{mode} {client}: closing the connection after an unexpected error: {error}",
            mode=self.factory.mode,
            client=client.host if client is not None else "?",
            error=describeFailure(f),
        )
        if self._state == _CLOSED:
            return
        if self.relay is not None:
            # Relaying had begun: the relay ends both sides.
            self.transport.abortConnection()  # type: ignore[union-attr]
            return
        self._refuse(500, "internal error")
        self._cancelDial()
        for name in ("_dialBackend", "backend"):
            backend = getattr(self, name)
            if backend is not None:
                setattr(self, name, None)
                backend.connectionFinished()

    def dataReceived(self, data: bytes) -> None:
        # Before the relay: keep what the client sends (the relay replaces
        # this method with its own per-chunk handler once it starts).
        if self._state >= _RELAYING:
            return
        pending = self._pending
        if pending is None:
            self._pending = [data]
        else:
            pending.append(data)

    # -- dialling

    def _pause(self) -> None:
        self.transport.pauseProducing()  # type: ignore[union-attr]

    def _connectPool(self, pool: Any) -> None:
        """
        Connect to a backend of C{pool}; a failed connect is retried on
        another backend, up to C{factory.connectAttempts} backends.
        """
        self._pool = pool
        self._state = _CONNECTING
        self._nextBackend(None)

    def _nextBackend(self, last: Optional[Failure]) -> None:
        tried = self._tried
        backend = None
        if len(tried) < self.factory.connectAttempts:
            backend = self._pool.pick(self.client.host, tried)
        if backend is None:
            if last is None:
                last = Failure(NoHealthyBackend(f"no healthy backend in {self._pool.name or 'pool'}"))
            self._failed(last)
            return
        if tried and self.span is not None:
            self.span.addEvent("upstream.retry", {"txproxy.backend": str(tried[-1].key)})
        self._tried = tried + (backend,)
        backend.connectionStarted()
        self._dialBackend = backend
        factory = self.factory
        address = factory._directAddress(backend)
        if address is not None:
            self._dialAddress(address[0], address[1], address[2])
        elif backend.description is not None:
            self._dialEndpoint(factory.connector.endpointForDescription(backend.description))
        else:
            d = endpointForBackend(factory.connector, backend)
            d.addCallbacks(self._dialEndpoint, self._dialFailed).addErrback(self._internalError)

    def _connectTarget(self, host: str, port: int) -> None:
        """
        Connect to one destination, without retry; C{--deny-dest}
        (transparent mode) is applied to its resolved addresses.
        """
        self._state = _CONNECTING
        if isIPLiteral(host):
            self._dialAllowed([host], host, port)
            return
        d = self.factory.connector.resolve(host, port)
        d.addCallbacks(lambda addresses: self._dialAllowed(addresses, host, port), self._dialFailed)
        d.addErrback(self._internalError)

    def _dialAllowed(self, addresses: List[str], host: str, port: int) -> None:
        """
        Dial the first of C{addresses} (C{host} resolved) outside
        C{--deny-dest}; C{403} when none is.
        """
        denyDest = self.factory.listener.denyDest
        if denyDest:
            addresses = [a for a in addresses if not denyDest.deniesDestination(a)]
            if not addresses:
                if self._state == _CONNECTING:
                    self._failed(Failure(PolicyDenied(f"destination {host} is not allowed")))
                return
        self._dialAddress(addresses[0], port, None)

    def _connectDescription(self, description: str) -> None:
        """
        Connect to a client endpoint description, without retry.
        """
        self._state = _CONNECTING
        parsed = parseTCPDescription(description)
        denyDest = self.factory.listener.denyDest
        if parsed is not None and denyDest and denyDest.deniesDestination(parsed[0]):
            self._failed(Failure(PolicyDenied(f"destination {parsed[0]} is not allowed")))
            return
        if parsed is not None and self.factory._reactor is not None:
            self._dialAddress(*parsed)
        else:
            self._dialEndpoint(self.factory.connector.endpointForDescription(description))

    def _dialAddress(self, host: str, port: int, timeout: Optional[float]) -> None:
        if self._state != _CONNECTING:
            return
        self.upstreamAddress = formatAddress(host, port)
        factory = self.factory
        dial = factory._reactor
        if dial is not None:
            # The common case: dialled directly (txproxy._dial), no
            # Deferred, no endpoint wrapper between the socket and the relay.
            self._dialing = dial(
                host,
                port,
                _Dial(self),
                timeout if timeout is not None else factory.listener.connectTimeout,
                factory._bindAddress,
            )
        else:
            self._dialEndpoint(factory.connector.endpointFor(host, port))

    def _dialEndpoint(self, endpoint: Any) -> None:
        if self._state != _CONNECTING:
            if self._dialBackend is not None:
                self._dialBackend.connectionFinished()
                self._dialBackend = None
            return
        d = endpoint.connect(_Dial(self))
        timeout = self.factory.listener.connectTimeout
        if timeout:
            d.addTimeout(timeout, self.factory.clock, onTimeoutCancel=_connectTimedOut)
        self._dialing = d
        d.addErrback(self._dialFailed).addErrback(self._internalError)

    def _cancelDial(self) -> None:
        dialing, self._dialing = self._dialing, None
        if dialing is None:
            return
        if isinstance(dialing, defer.Deferred):
            dialing.cancel()
        else:
            try:
                dialing.stopConnecting()
            except error.NotConnectingError:
                pass

    def _dialFailed(self, f: Failure) -> None:
        self._dialing = None
        if self.span is not None:
            self.span.addEvent("upstream.connect_failed", {"error.type": type(f.value).__name__})
        backend, self._dialBackend = self._dialBackend, None
        if backend is not None:
            backend.connectionFinished()
        if self._state != _CONNECTING:
            return
        if backend is not None and self._pool is not None:
            self._pool.reportConnectFailure(backend)
            if f.check(error.ConnectError, defer.TimeoutError, ResolveError):
                self._nextBackend(f)
                return
        self._failed(f)

    def _failed(self, f: Failure) -> None:
        if self.target == "-" and self._tried:
            self.target = self._tried[-1].key
        status, reason = statusForFailure(f)
        log.debug("{mode} {client}: {reason}", mode=self.factory.mode, client=self.client.host, reason=reason)
        failed = hookCaller(self, "upstreamFailed", _RelayingProtocol, _FAILED_LEGACY)
        if failed is not None:
            failed(self, self.request, f)
        self._refuse(status, reason)

    def _upstreamConnected(self, upstream: UpstreamProtocol) -> None:
        self._dialing = None
        backend, self._dialBackend = self._dialBackend, None
        if self._state != _CONNECTING:
            # The client left while we were connecting.
            if backend is not None:
                backend.connectionFinished()
            upstream.owner = None
            upstream.transport.loseConnection()  # type: ignore[union-attr]
            return
        if backend is not None:
            self.backend = backend
            self._pool.reportConnectSuccess(backend)
            if self.target == "-":
                self.target = backend.key
        factory = self.factory
        if factory.metrics is not None:
            factory.metrics.upstreamConnected(factory.listener, factory.clock.seconds() - self._start)
        if self.span is not None:
            self.span.addEvent("upstream.connected")
        self._startRelay(upstream)

    # -- relaying

    def _startRelay(self, upstream: UpstreamProtocol) -> None:
        self._state = _RELAYING
        transport = self.transport
        upTransport = upstream.transport
        assert transport is not None and upTransport is not None
        version = self._proxyVersion
        backend = self.backend
        if backend is not None and backend.proxyProtocol is not None:
            # The upstream's own proxy_protocol_send ("" for none) wins.
            version = backend.proxyProtocol
        if version:
            destination = self._proxyDestination or transport.getHost()
            upTransport.write(headerFor(version, transport.getPeer(), destination))
        factory = self.factory
        cls = _RelayingProtocol
        if not self.upstreamAddress:
            peer = upTransport.getPeer()
            self.upstreamAddress = formatAddress(getattr(peer, "host", "?"), getattr(peer, "port", 0))
        opened = hookCaller(self, "relayOpened", cls, _OPENED_LEGACY)
        if opened is not None:
            opened(self, self.request, self.upstreamAddress)
        pending, self._pending = self._pending, None
        joinRelay(
            self,
            upstream,
            factory.clock,
            factory.listener.idleTimeout,
            fromClient=b"".join(pending) if pending else b"",
            filterUp=self.clientData if overrides(self, "clientData", cls) else None,
            filterDown=self.upstreamData if overrides(self, "upstreamData", cls) else None,
            clientReadLost=self._clientReadLost,
            onEnded=self._relayEnded,
        )

    def _relayEnded(self, relay: Relay) -> None:
        backend, self.backend = self.backend, None
        if backend is not None:
            backend.connectionFinished()
        self._finish(200, relay.bytesUp, relay.bytesDown, relay.closeReason or "")

    # -- ending

    def _refuse(self, status: int, reason: str, alert: bytes = b"") -> None:
        """
        Close the client connection without relaying, recording why.
        """
        if self._state == _CLOSED:
            return
        self._state = _CLOSED
        self._pending = None
        self._finish(status, 0, len(alert), reason)
        transport = self.transport
        assert transport is not None
        if alert:
            transport.write(alert)
        transport.loseConnection()

    def _finish(self, status: int, up: int, down: int, reason: str) -> None:
        if self._recorded:
            return
        self._recorded = True
        factory = self.factory
        span = self.span
        if span is not None:
            self.span = None
            self._endSpan(span, status, up, down, reason)
        factoryEnded = endHookOf(factory)
        ended = hookCaller(self, "exchangeEnded", _RelayingProtocol, _ENDED_LEGACY)
        if (
            factory.accessLog is None
            and factory.metrics is None
            and factoryEnded is ListenerFactory.exchangeEnded
            and ended is None
        ):
            # Nobody reads the record: count, and skip building it.
            factory.requestsTotal += 1
            return
        client = self.client
        record = AccessRecord(
            client=client.host,
            method=factory.method,
            target=self.target,
            status=status,
            start=self._startWall,
            duration=max(0.0, factory.clock.seconds() - self._start),
            bytesUp=up,
            bytesDown=down,
            version="-",
            upstream=self.upstreamAddress,
            mode=factory.mode,
            listener=factory.listener.name,
            reason=reason,
            traceId=span.traceIdText if span is not None else "",
            spanId=span.spanIdText if span is not None else "",
        )
        factoryEnded(factory, self, record)
        if ended is not None:
            ended(self, record)

    # -- tracing (only with a tracer: self.span stays None otherwise)

    def _startSpan(self) -> None:
        span = self.span = startStreamSpan(self.factory.tracer, self.factory.mode, self.client, self.transport,
                                           self._startWall)
        if overrides(self, "spanStarted", _RelayingProtocol):
            self.spanStarted(span)

    def _endSpan(self, span: Any, status: int, up: int, down: int, reason: str) -> None:
        if not span.sampled:
            return
        factory = self.factory
        if self.target != "-":
            span.attributes["txproxy.target"] = str(self.target)
        end = self._startWall + (factory.clock.seconds() - self._start)
        _endSpan(factory.tracer, span, status, reason, up, down, self.upstreamAddress, factory.listener.name,
                 factory.mode, end, route=self._traceRoute(), http=False)

    def _traceRoute(self) -> Any:
        """
        The route (with C{name}) this connection was routed to, for its
        span, or L{None}.
        """
        return None

    def drain(self) -> None:
        """
        The proxy is stopping.  Relayed connections are left to finish (the
        service aborts what is left at the drain deadline).
        """

    # -- end of input and loss

    def readConnectionLost(self) -> None:
        self._clientReadLost = True
        relay = self.relay
        if relay is not None:
            relay.clientReadLost()
        elif self._state == _OPEN or self._state == _HELLO:
            # Nothing to relay yet and nothing more will come.
            self._refuse(400, "client closed before sending enough to route")

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Optional[Failure] = None) -> None:
        state, self._state = self._state, _CLOSED
        lease, self._lease = self._lease, None
        if lease is not None:
            lease.release()
        if self.relay is not None:
            self.relay.clientLost(reason)
        else:
            if state == _CONNECTING:
                self._cancelDial()
            self._pending = None
            self._connectionLostEarly(state)
        self.factory.connectionClosed(self)

    def _connectionLostEarly(self, state: int) -> None:
        if state != _CLOSED:
            self._finish(499, 0, 0, "client closed before the upstream was connected")


class RelayingFactory(ListenerFactory):
    """
    What the TCP-mode factories share.

    @ivar listener: the L{ListenerConfig}.
    @ivar connector: the L{IUpstreamConnector} used for endpoints and names.
    @ivar clock: the L{IReactorTime} for every timer.
    @ivar router: the L{txproxy.router.RouterService} holding this
        listener's pool or route table.
    @ivar accessLog: an L{IAccessLog}, or L{None}.
    @ivar protocols: the open client connections.
    @ivar connectAttempts: how many pool members one connection tries.
    """

    noisy = False
    mode = "tcp"
    #: The C{method} field of access records.
    method = "TCP"
    transparent = False
    connectAttempts = 2

    def __init__(
        self,
        listener: ListenerConfig,
        connector: Any = None,
        clock: Optional[IReactorTime] = None,
        router: Any = None,
        limits: Any = None,
        accessLog: Any = None,
        metrics: Any = None,
    ) -> None:
        """
        @param router: a L{RouterService} that knows C{listener}; when
            L{None}, a private one is built for this listener.
        @param limits: a L{txproxy.limits.service.ListenerLimits}, or L{None}:
            each connection takes a token and a lease (closed at once when
            refused).
        """
        if clock is None:
            from twisted.internet import reactor as _reactor

            clock = cast(IReactorTime, _reactor)
        if connector is None:
            connector = Connector(clock, listener.connectTimeout)
        self.listener = listener
        self.connector = connector
        self.clock = clock
        self.limits = limits
        self.accessLog = accessLog
        self.metrics = metrics
        self.protocols: set = set()
        self.requestsTotal = 0
        if router is None and listener.mode in ("tcp", "sni"):
            router = RouterService([listener], connector, clock)
        self.router = router
        self._acl = bool(listener.allow or listener.deny)
        # Dial IP literals with connectTCP directly when the connector is the
        # stock one (tests pass fakes, which get the endpoint path).
        self._reactor, self._bindAddress = directDial(connector)
        self._direct: Dict[str, Optional[Tuple[str, int, Optional[float]]]] = {}

    def reloadListener(self, listener: ListenerConfig, dryRun: bool = False) -> None:
        """
        A configuration reload kept this listener with new settings: use
        them for new connections (open ones keep what they started with;
        the router swaps pools and routes itself).
        """
        if dryRun:
            return
        self.listener = listener
        self._acl = bool(listener.allow or listener.deny)

    def _directAddress(self, backend: Any) -> Optional[Tuple[str, int, Optional[float]]]:
        """
        The C{(ip, port, timeout)} to hand to C{connectTCP} for C{backend},
        or L{None} when it must go through its endpoint.
        """
        if self._reactor is None:
            return None
        key = backend.key
        try:
            return self._direct[key]
        except KeyError:
            pass
        if backend.description is not None:
            found = parseTCPDescription(backend.description)
        else:
            url = backend.url
            ip = url is not None and isIPLiteral(url.host)
            found = (url.host, url.port, None) if ip else None
        self._direct[key] = found
        return found


# The old forms of the hooks, still called for one release.
# The old forms of the hooks, still called for one release.
_OPENED_LEGACY = (
    Legacy(
        "relayOpened",
        "(upstreamAddress)",
        lambda self, request, address: self.relayOpened(address),
        _onlyOneArgument,
    ),
)


_FAILED_LEGACY = (
    Legacy("upstreamFailed", "(reason)", lambda self, request, reason: self.upstreamFailed(reason), _onlyOneArgument),
)


_ENDED_LEGACY = (Legacy("connectionEnded", "(record)", lambda self, record: self.connectionEnded(record)),)
