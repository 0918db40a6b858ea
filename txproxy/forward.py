# -*- test-case-name: tests.test_forward -*-
"""
The HTTP forward proxy: C{CONNECT} tunnels (and, with the HTTP core,
absolute-URI requests).

Subclass L{ForwardProxyProtocol} and override its hooks to filter, rewrite
or observe; set your subclass as the C{protocol} of a L{ForwardProxyFactory}
(or subclass the factory).  Every hook may return a plain value or a
L{Deferred}.  The defaults allow everything the configured policy allows.
"""

from __future__ import annotations

import time
from typing import Any, Callable, List, Optional, Tuple

from twisted.internet import defer, error
from twisted.internet.interfaces import IHalfCloseableProtocol, IReactorTime
from twisted.internet.protocol import Factory, Protocol, ServerFactory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txproxy.accesslog import AccessRecord
from txproxy.auth import Htpasswd, parseBasic
from txproxy.config import ListenerConfig
from txproxy.errors import PolicyDenied, ResolveError
from txproxy.hooks import ClientInfo, Refuse, Target, TunnelRequest
from txproxy.http import HTTPError, HeadReader, errorResponse, findHeadEnd, parseAuthority, parseRequestHead
from txproxy.relay import Relay, RelayedProtocol

__all__ = ["ForwardProxyProtocol", "ForwardProxyFactory", "clientInfoFor"]

log = Logger()

_HEAD, _CHECKING, _CONNECTING, _TUNNEL, _LINGER, _CLOSED = range(6)

#: Seconds to keep reading (and discarding) after an error response, so the
#: client reads the response instead of a reset.
LINGER_SECONDS = 2.0

_CONNECTED = b"HTTP/1.1 200 Connection established\r\n\r\n"


def clientInfoFor(transport: Any) -> ClientInfo:
    """
    Build a L{ClientInfo} from a transport's peer (the PROXY header's source
    address on C{haproxy:} listeners).
    """
    peer = transport.getPeer()
    host = getattr(peer, "host", None)
    if host is None:
        return ClientInfo(str(getattr(peer, "name", "") or "unix"), 0)
    return ClientInfo(host, getattr(peer, "port", 0))


def _statusFor(f: Failure) -> Tuple[int, str]:
    """
    Map a failure to reach an upstream onto a status code and a short reason.
    """
    if f.check(Refuse):
        return f.value.status, f.value.reason
    if f.check(PolicyDenied):
        return 403, str(f.value) or "destination not allowed"
    if f.check(ResolveError, error.DNSLookupError):
        return 502, "cannot resolve the destination"
    if f.check(error.TimeoutError, defer.TimeoutError, defer.CancelledError):
        return 504, "timed out connecting to the destination"
    if f.check(error.ConnectionRefusedError):
        return 502, "the destination refused the connection"
    if f.check(error.ConnectError, error.ConnectionLost, OSError):
        return 502, "cannot connect to the destination"
    return 502, "cannot connect to the destination"


def _overrides(obj: Any, name: str, base: type) -> bool:
    return getattr(type(obj), name) is not getattr(base, name)


@implementer(IHalfCloseableProtocol)
class ForwardProxyProtocol(Protocol):
    """
    One client connection to the forward proxy.

    Hooks, in the order they run for a C{CONNECT}:

      1. L{allowTunnel} (after the configured ACL, authentication, rate
         limit and C{--connect-ports} checks passed);
      2. L{chooseTarget};
      3. L{tunnelOpened}, once the upstream is connected and C{200} sent;
      4. L{clientData} / L{upstreamData} for each relayed chunk (only when
         overridden: the default relay path calls no hook per chunk);
      5. L{tunnelClosed}, once, when both sides are closed.

    L{upstreamFailed} runs instead of 3-5 when the upstream cannot be reached.

    @ivar factory: the L{ForwardProxyFactory}.
    @ivar client: the L{ClientInfo} of this connection (C{user} is set once
        authenticated).
    @ivar relay: the L{Relay} once a tunnel is open, else L{None}.
    """

    #: The protocol built for the upstream side of a tunnel.
    upstreamProtocol: Callable[[], RelayedProtocol] = RelayedProtocol

    factory: "ForwardProxyFactory"
    client: ClientInfo
    relay: Optional[Relay] = None
    _state = _HEAD
    _timer: Any = None
    _lease: Any = None
    _admission: Any = None
    _connecting: Optional[defer.Deferred] = None
    _clientReadLost = False
    _request: Optional[TunnelRequest] = None
    _reader: Optional[HeadReader] = None
    _buffer = b""
    _start: Optional[float] = None
    _startWall = 0.0
    _upstreamAddress = ""

    # -- hooks

    def allowTunnel(self, request: TunnelRequest) -> Any:
        """
        Decide whether to open the tunnel C{request} asks for.  Runs once per
        C{CONNECT}, after the configured policy allowed it.

        @return: C{True} to continue, C{False} for C{403}; or a Deferred
            firing with one of those.  Raise (or fail with) L{Refuse} for
            another status.
        """
        return True

    def chooseTarget(self, request: TunnelRequest) -> Any:
        """
        Pick the destination of the tunnel.  Runs once per allowed
        C{CONNECT}; the default is where the client asked to go.  The
        destination is still subject to C{--deny-dest}, checked on the
        resolved address.

        @return: a L{Target}, or a Deferred firing with one.
        """
        return request.target

    def tunnelOpened(self, request: TunnelRequest, upstreamAddress: str) -> None:
        """
        Called once the upstream is connected and C{200} was sent.

        @param upstreamAddress: the C{ip:port} dialled.
        """

    def clientData(self, data: bytes) -> bytes:
        """
        Observe or rewrite a chunk the client sent through the tunnel.
        Called for every chunk, only when a subclass overrides it.

        @return: the bytes to send upstream (C{b""} to drop the chunk).
        """
        return data

    def upstreamData(self, data: bytes) -> bytes:
        """
        Observe or rewrite a chunk the upstream sent through the tunnel.
        Called for every chunk, only when a subclass overrides it.

        @return: the bytes to send to the client.
        """
        return data

    def upstreamFailed(self, request: TunnelRequest, reason: Failure) -> None:
        """
        Called when the tunnel's upstream could not be reached (before the
        error status is sent).
        """

    def tunnelClosed(self, record: AccessRecord) -> None:
        """
        Called once when a tunnel has ended, with its access record.
        """

    # -- connection set-up

    def connectionMade(self) -> None:
        self.client = clientInfoFor(self.transport)
        factory = self.factory
        factory.connectionOpened(self)
        self._timer = factory.clock.callLater(factory.listener.headerTimeout, self._headTimedOut)
        limits = factory.limits
        if limits is not None:
            self._admission = limits.admitConnection(self.client.host, False)
            self._admission.addCallback(self._admitted)

    def _admitted(self, decision: Any) -> Any:
        self._admission = decision
        if decision.allowed:
            self._lease = decision.lease
            if self._state == _CLOSED and self._lease is not None:
                self._lease.release()
        return decision

    def _headTimedOut(self) -> None:
        self._timer = None
        if self._state == _HEAD:
            self._refuse(408, "request head not received in time")
        elif self._state == _LINGER:
            self.transport.loseConnection()  # type: ignore[union-attr]

    # -- the head

    def dataReceived(self, data: bytes) -> None:
        if self._state == _HEAD:
            reader = self._reader
            if reader is None:
                # Fast path: the whole head in one segment.
                end = findHeadEnd(data) if not data.startswith(b"\r\n") else -1
                if end >= 0:
                    if end > self.factory.listener.maxHeadSize:
                        self._refuse(431, "request head too large")
                    else:
                        self._headReceived(data[:end], data[end:])
                    return
                reader = self._reader = HeadReader(self.factory.listener.maxHeadSize)
            try:
                head = reader.feed(data)
            except HTTPError as e:
                self._reader = None
                self._refuse(e.status, e.reason)
                return
            if head is not None:
                self._reader = None
                self._headReceived(head, reader.leftover)
        elif self._state == _CONNECTING or self._state == _CHECKING:
            self._buffer += data
        # _LINGER, _CLOSED: discard.

    def _headReceived(self, headBytes: bytes, rest: bytes) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._start = self.factory.clock.seconds()
        self._startWall = time.time()
        try:
            head = parseRequestHead(headBytes)
        except HTTPError as e:
            self._refuse(e.status, e.reason)
            return
        if head.method != b"CONNECT":
            self._refuse(501, "only CONNECT is supported", method=head.method.decode("latin-1"))
            return
        try:
            host, port = parseAuthority(head.target)
        except HTTPError as e:
            self._refuse(e.status, e.reason)
            return
        self._state = _CHECKING
        self._buffer = rest
        self.transport.pauseProducing()  # type: ignore[union-attr]
        request = TunnelRequest(self.client, Target(host, port), head)
        self._request = request
        d = defer.maybeDeferred(self._checkPolicy, request)
        d.addCallback(self._chooseAndConnect)
        d.addCallbacks(self._connected, self._connectFailed)
        d.addErrback(self._unexpected)

    def _unexpected(self, f: Failure) -> None:
        log.failure("Unexpected error handling a request from {client}", f, client=self.client.host)
        if self._state in (_CHECKING, _CONNECTING):
            self._refuse(500, "internal error")

    # -- policy

    def _checkPolicy(self, request: TunnelRequest) -> Any:
        """
        The configured policy, in the order a user expects: client ACL,
        connection caps, authentication, rate limit, CONNECT ports, then
        the L{allowTunnel} hook.
        """
        factory = self.factory
        listener = factory.listener
        host = self.client.host
        if not factory.clientAllowed(host):
            raise Refuse(403, "client not allowed")
        admission = self._admission
        if admission is not None:
            if isinstance(admission, defer.Deferred):
                # The limiter has not answered yet: wait for it.
                return admission.addCallback(lambda _: self._checkPolicy(request))
            if not admission.allowed:
                raise self._limitRefusal(admission)
        if factory.htpasswd is not None:
            creds = parseBasic(request.head.get(b"proxy-authorization"))
            if creds is None or not factory.htpasswd.check(*creds):
                raise Refuse(407, "proxy authentication required")
            self.client = ClientInfo(self.client.host, self.client.port, creds[0])
            request = TunnelRequest(self.client, request.target, request.head)
            self._request = request
        if request.target.port not in listener.connectPorts:
            raise Refuse(403, f"CONNECT to port {request.target.port} is not allowed")
        if factory.limits is not None and listener.rate is not None:
            d = factory.limits.admitRequest(self.client.host)
            return d.addCallback(self._rateChecked, request)
        return self._askHook(request)

    def _limitRefusal(self, decision: Any) -> Refuse:
        if decision.reason == "max-conns":
            return Refuse(503, "proxy at capacity")
        refusal = Refuse(429, "too many requests")
        refusal.retryAfter = decision.retryAfter  # type: ignore[attr-defined]
        return refusal

    def _rateChecked(self, decision: Any, request: TunnelRequest) -> Any:
        if not decision.allowed:
            raise self._limitRefusal(decision)
        return self._askHook(request)

    def _askHook(self, request: TunnelRequest) -> Any:
        if not _overrides(self, "allowTunnel", ForwardProxyProtocol):
            return request

        def decided(allowed: Any) -> TunnelRequest:
            if not allowed:
                raise Refuse(403, "tunnel not allowed")
            return request

        return defer.maybeDeferred(self.allowTunnel, request).addCallback(decided)

    # -- connecting

    def _chooseAndConnect(self, request: TunnelRequest) -> Any:
        if _overrides(self, "chooseTarget", ForwardProxyProtocol):
            d = defer.maybeDeferred(self.chooseTarget, request)
        else:
            d = defer.succeed(request.target)
        return d.addCallback(self._resolveAndConnect)

    def _resolveAndConnect(self, target: Target) -> Any:
        factory = self.factory
        self._state = _CONNECTING
        d = factory.connector.resolve(target.host, target.port)
        d.addCallback(self._pickAddresses, target)
        d.addCallback(self._dial, target.port)
        timeout = factory.listener.connectTimeout
        if timeout:
            d.addTimeout(timeout, factory.clock)
        self._connecting = d
        return d

    def _pickAddresses(self, addresses: List[str], target: Target) -> List[str]:
        denyDest = self.factory.listener.denyDest
        allowed = [a for a in addresses if a not in denyDest]
        if not allowed:
            raise PolicyDenied(f"destination {target.host} is not allowed")
        return allowed

    def _dial(self, addresses: List[str], port: int) -> Any:
        """
        Connect to the first address that answers (at most three tried).
        """
        connector = self.factory.connector
        candidates = addresses[:3]

        def attempt(index: int) -> Any:
            address = candidates[index]
            proto = self.upstreamProtocol()
            d = connector.endpointFor(address, port).connect(_OneShotFactory(proto))

            def failed(f: Failure) -> Any:
                if index + 1 < len(candidates) and f.check(error.ConnectError) and not f.check(
                    error.TimeoutError
                ):
                    return attempt(index + 1)
                return f

            def connected(p: Any) -> Any:
                host = f"[{address}]" if ":" in address else address
                self._upstreamAddress = f"{host}:{port}"
                return p

            return d.addCallbacks(connected, failed)

        return attempt(0)

    def _connected(self, upstream: RelayedProtocol) -> None:
        self._connecting = None
        if self._state != _CONNECTING:
            # The client went away while we were connecting.
            upstream.transport.loseConnection()  # type: ignore[union-attr]
            return
        self._state = _TUNNEL
        request = self._request
        assert request is not None and self.transport is not None
        self.transport.write(_CONNECTED)
        filterUp = self.clientData if _overrides(self, "clientData", ForwardProxyProtocol) else None
        filterDown = self.upstreamData if _overrides(self, "upstreamData", ForwardProxyProtocol) else None
        relay = Relay(
            self.transport,
            upstream.transport,  # type: ignore[arg-type]
            self.factory.clock,
            self.factory.listener.idleTimeout,
            filterUp,
            filterDown,
        )
        self.relay = relay
        upstream.relay = relay
        upstream.dataReceived = relay.fromUpstream  # type: ignore[method-assign]
        self.dataReceived = relay.fromClient  # type: ignore[method-assign]
        pending, self._buffer = self._buffer, b""
        relay.finished.addCallback(self._tunnelEnded)
        if _overrides(self, "tunnelOpened", ForwardProxyProtocol):
            self.tunnelOpened(request, self._upstreamAddress)
        relay.start(pending, upstream.takePending())
        if upstream._lostReason is not None:
            relay.upstreamLost(upstream._lostReason)
        elif upstream._readLost:
            relay.upstreamReadLost()
        if self._clientReadLost:
            relay.clientReadLost()

    def _connectFailed(self, f: Failure) -> None:
        self._connecting = None
        if self._state == _CLOSED:
            return
        status, reason = _statusFor(f)
        if self._request is not None and status in (502, 504):
            self.upstreamFailed(self._request, f)
        retryAfter = getattr(f.value, "retryAfter", None)
        self._refuse(status, reason, retryAfter=retryAfter)

    def _tunnelEnded(self, relay: Relay) -> None:
        record = self._record(200, relay.bytesUp, relay.bytesDown, relay.closeReason or "")
        self.factory.requestFinished(self, record)
        if _overrides(self, "tunnelClosed", ForwardProxyProtocol):
            self.tunnelClosed(record)

    def _record(self, status: int, up: int = 0, down: int = 0, reason: str = "", method: str = "") -> AccessRecord:
        request = self._request
        head = request.head if request is not None else None
        clock = self.factory.clock
        start = self._start if self._start is not None else clock.seconds()
        return AccessRecord(
            client=self.client.host,
            method=method or (head.method.decode("latin-1") if head is not None else "-"),
            target=str(request.target) if request is not None else "-",
            status=status,
            start=self._startWall or time.time(),
            duration=max(0.0, clock.seconds() - start),
            bytesUp=up,
            bytesDown=down,
            user=self.client.user,
            version=head.version.decode("latin-1") if head is not None else "HTTP/1.1",
            upstream=self._upstreamAddress,
            userAgent=(head.get(b"user-agent") or b"").decode("latin-1") if head is not None else "",
            mode="forward",
            listener=self.factory.listener.name,
            reason=reason,
        )

    # -- errors

    def _refuse(self, status: int, reason: str, method: str = "", retryAfter: Optional[float] = None) -> None:
        """
        Answer C{status} with a short plain body, then close gracefully: stop
        writing, keep reading (and discarding) for a moment so the client
        sees the response rather than a reset.
        """
        if self._state in (_LINGER, _CLOSED):
            return
        extra: List[Tuple[bytes, bytes]] = []
        if status == 407:
            extra.append((b"Proxy-Authenticate", b'Basic realm="' + self.factory.realm.encode() + b'"'))
        if retryAfter is not None:
            extra.append((b"Retry-After", str(max(1, int(retryAfter + 0.999))).encode()))
        response = errorResponse(status, reason, extra)
        self._state = _LINGER
        self._buffer = b""
        transport = self.transport
        assert transport is not None
        transport.write(response)
        record = self._record(status, 0, len(response), reason, method)
        self.factory.requestFinished(self, record)
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.factory.clock.callLater(LINGER_SECONDS, self._headTimedOut)
        transport.resumeProducing()  # type: ignore[attr-defined]
        loseWrite = getattr(transport, "loseWriteConnection", None)
        if loseWrite is not None and not self._clientReadLost:
            loseWrite()
        else:
            transport.loseConnection()

    def drain(self) -> None:
        """
        The proxy is stopping: close now if no request is in progress;
        otherwise let it finish (the service closes what is left when the
        drain timeout expires).
        """
        if self._state == _HEAD and self._reader is None and self.transport is not None:
            self.transport.loseConnection()

    # -- end of input and loss

    def readConnectionLost(self) -> None:
        self._clientReadLost = True
        if self.relay is not None:
            self.relay.clientReadLost()
        elif self._state in (_CHECKING, _CONNECTING):
            # A client may send CONNECT, its first bytes and FIN at once:
            # the tunnel still opens and the FIN is forwarded.
            pass
        else:
            self.transport.loseConnection()  # type: ignore[union-attr]

    def writeConnectionLost(self) -> None:
        if self._state == _LINGER and self._clientReadLost:
            self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = Failure(error.ConnectionDone())) -> None:
        state, self._state = self._state, _CLOSED
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        if self.relay is not None:
            self.relay.clientLost(reason)
        elif self._connecting is not None:
            d, self._connecting = self._connecting, None
            d.cancel()
        if state == _HEAD and self._reader is not None:
            log.debug("client {client} closed before finishing its request head", client=self.client.host)
        if self._lease is not None:
            self._lease.release()
            self._lease = None
        self.factory.connectionClosed(self)


class _OneShotFactory(Factory):
    """
    A factory that hands out one pre-built protocol (for endpoint connects).
    """

    noisy = False

    def __init__(self, proto: Protocol) -> None:
        self.proto = proto

    def buildProtocol(self, addr: Any) -> Protocol:
        self.proto.factory = self  # type: ignore[attr-defined]
        return self.proto


class ForwardProxyFactory(ServerFactory):
    """
    Builds L{ForwardProxyProtocol}s for one listener.

    @ivar listener: the L{ListenerConfig}.
    @ivar connector: the L{IUpstreamConnector} used to resolve and dial.
    @ivar clock: the L{IReactorTime} for every timer.
    @ivar limits: a L{txproxy.limiter.ListenerLimits}, or L{None}.
    @ivar accessLog: an L{IAccessLog}, or L{None}.
    @ivar htpasswd: the loaded C{--auth} file, or L{None}.
    @ivar protocols: the open connections (for draining and counting).
    """

    protocol = ForwardProxyProtocol
    noisy = False
    #: The realm named in C{Proxy-Authenticate}.
    realm = "txproxy"

    def __init__(
        self,
        listener: ListenerConfig,
        connector: Any,
        clock: Optional[IReactorTime] = None,
        limits: Any = None,
        accessLog: Any = None,
        metrics: Any = None,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock  # type: ignore[assignment]
        self.listener = listener
        self.connector = connector
        self.clock = clock
        self.limits = limits
        self.accessLog = accessLog
        self.metrics = metrics
        self.htpasswd = Htpasswd(listener.auth) if listener.auth else None
        self.protocols: set = set()
        self.requestsTotal = 0

    def clientAllowed(self, host: str) -> bool:
        """
        Apply C{--allow}/C{--deny}: C{--deny} wins; with any C{--allow},
        unlisted clients are denied.
        """
        listener = self.listener
        if listener.deny and host in listener.deny:
            return False
        if listener.allow:
            return host in listener.allow
        return True

    def connectionOpened(self, proto: Any) -> None:
        """
        Called by each protocol when its connection is made.
        """
        self.protocols.add(proto)
        if self.metrics is not None:
            self.metrics.connectionOpened(self.listener)

    def connectionClosed(self, proto: Any) -> None:
        """
        Called by each protocol when its connection is lost.
        """
        self.protocols.discard(proto)
        if self.metrics is not None:
            self.metrics.connectionClosed(self.listener)

    def requestFinished(self, proto: Any, record: AccessRecord) -> None:
        """
        Called once per request or tunnel with its record: access log and
        counters.
        """
        self.requestsTotal += 1
        if self.accessLog is not None:
            self.accessLog.log(record)
        if self.metrics is not None:
            self.metrics.requestFinished(self.listener, record)
