# -*- test-case-name: tests.test_forward -*-
"""
The HTTP forward proxy: absolute-URI requests (C{GET http://host/path})
and C{CONNECT} tunnels.

Subclass L{ForwardProxyProtocol} and override its hooks to filter, rewrite
or observe; set your subclass as the C{protocol} of a L{ForwardProxyFactory}
(or subclass the factory).  Every hook may return a plain value or a
L{Deferred} unless its docstring says it is synchronous (the per-chunk
and notification hooks are).  The defaults allow
everything the configured policy allows.
"""

from __future__ import annotations

from typing import Any, List, Optional

from twisted.internet import defer, error
from twisted.internet.protocol import ClientFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

from txproxy.accesslog import AccessRecord
from txproxy.hooks import Refuse, Target, TunnelRequest
from txproxy.http import HTTPError, RequestHead, parseAbsoluteURI, parseAuthority, replaceHeader
from txproxy.http._headers import FORWARDING_FIELDS, FORWARDING_SIZES
from txproxy.http._parser import Header, Headers
from txproxy.httpproxy import (
    _CLOSING,
    _WAIT,
    LINGER_SECONDS,
    HTTPProxyFactory,
    HTTPProxyProtocol,
    HTTPRequest,
    clientInfoFor,
    overrides,
)
from txproxy.connector import isIPLiteral
from txproxy.intercept import (
    INTERCEPT,
    InterceptedTunnel,
    Interceptor,
    checkInterceptedDestination,
    startInterception,
)
from txproxy.relay import RelayedProtocol, sendNow
from txproxy._hookcompat import Legacy, hookCaller

__all__ = ["ForwardProxyProtocol", "ForwardProxyFactory", "clientInfoFor", "LINGER_SECONDS"]

_CONNECTED = b"HTTP/1.1 200 Connection established\r\n\r\n"

log = Logger()


_CHOOSE_LEGACY = (
    Legacy("chooseTarget", "(request)", lambda self, request: self.chooseTarget(request)),
)
_OPENED_LEGACY = (
    Legacy(
        "tunnelOpened",
        "(request, upstreamAddress)",
        lambda self, request, address: self.tunnelOpened(request, address),
    ),
)


class ForwardProxyProtocol(HTTPProxyProtocol):
    """
    One client connection to the forward proxy.

    Hooks for C{CONNECT}, in the order they run:

      1. L{allowTunnel} (after the configured ACL, authentication, rate
         limit and C{--connect-ports} checks passed);
      2. L{shouldIntercept}, only with C{--intercept-ca}: an intercepted
         tunnel's requests then run through the HTTP hooks below, each as
         an C{https://} request (see L{txproxy.intercept});
      3. L{chooseUpstream} (not for an intercepted tunnel);
      4. L{relayOpened}, once the upstream is connected and C{200} sent;
      5. L{clientData} / L{upstreamData} for each relayed chunk (only when
         overridden: the default relay path calls no hook per chunk);
      6. L{exchangeEnded}, once, when both sides are closed.

    L{upstreamFailed} runs instead of 4-5 when the upstream cannot be
    reached.  Absolute-URI requests use the hooks of L{HTTPProxyProtocol}:
    L{allowRequest}, L{rewriteRequest}, L{rewriteResponse},
    L{requestBodyData}, L{responseBodyData}, L{exchangeEnded}.  The old
    names C{chooseTarget}, C{tunnelOpened} and C{tunnelClosed} are still
    called, with a L{DeprecationWarning}, when a subclass overrides them.
    """

    #: The protocol built for the upstream side of a tunnel.
    tunnelProtocol: Any = RelayedProtocol
    mode = "forward"
    factory: "ForwardProxyFactory"

    _tunnel: Optional[TunnelRequest] = None

    # -- CONNECT hooks

    def allowTunnel(self, request: TunnelRequest) -> Any:
        """
        Decide whether to open the tunnel C{request} asks for.  Runs once per
        C{CONNECT}, after the configured policy allowed it.

        @return: C{True} to continue, C{False} for C{403}; or a Deferred
            firing with one of those.  Raise (or fail with) L{Refuse} for
            another status.
        """
        return True

    def shouldIntercept(self, request: TunnelRequest) -> Any:
        """
        Decide whether to decrypt the tunnel C{request} asks for.  Runs
        once per C{CONNECT} allowed by the policy and L{allowTunnel}, only
        when the listener has C{--intercept-ca}.  The default follows
        C{--intercept} and C{--no-intercept} (every host when no
        C{--intercept} is given; C{--no-intercept} wins).  Override to
        decide per tunnel (say, never for a banking category, or only for
        some users: C{request.client.user}).

        @return: C{True} to intercept, C{False} to relay the tunnel
            opaquely; or a Deferred firing with one of those.
        """
        interceptor = self.factory.interceptor
        return interceptor is not None and interceptor.policy.intercepts(request.target.host)

    def chooseUpstream(self, request: TunnelRequest) -> Any:
        """
        Pick the destination of the tunnel.  Runs once per allowed
        C{CONNECT}, only when overridden.  The destination is still subject
        to C{--deny-dest}, checked on the resolved address.

        @return: L{None} for where the client asked to go
            (C{request.target}), or a L{Target}; or a Deferred firing with
            one of those.
        """
        return None

    def chooseTarget(self, request: TunnelRequest) -> Any:
        """
        Deprecated: override L{chooseUpstream}.  A subclass that overrides
        this is still asked, with a L{DeprecationWarning}.
        """
        return request.target

    def relayOpened(self, request: TunnelRequest, upstreamAddress: str) -> None:
        """
        Called once the upstream is connected and C{200} was sent, before
        any byte is relayed.  Synchronous (a returned Deferred is ignored);
        an exception closes the tunnel.

        @param upstreamAddress: the C{ip:port} dialled.
        """

    def tunnelOpened(self, request: TunnelRequest, upstreamAddress: str) -> None:
        """
        Deprecated: override L{relayOpened}, called at the same moment with
        the same arguments.
        """

    def clientData(self, data: bytes) -> bytes:
        """
        Observe or rewrite a chunk the client sent through the tunnel.
        Called for every chunk, only when a subclass overrides it; must
        answer synchronously (bytes, not a Deferred).

        @return: the bytes to send upstream (C{b""} to drop the chunk).
        """
        return data

    def upstreamData(self, data: bytes) -> bytes:
        """
        Observe or rewrite a chunk the upstream sent through the tunnel.
        Called for every chunk, only when a subclass overrides it; must
        answer synchronously (bytes, not a Deferred).

        @return: the bytes to send to the client.
        """
        return data

    def tunnelClosed(self, record: AccessRecord) -> None:
        """
        Deprecated: override L{exchangeEnded}, called with every access
        record (a tunnel's C{record.method} is C{"CONNECT"}).  A subclass
        that overrides this is still called once per opened tunnel, with a
        L{DeprecationWarning}.
        """

    _endLegacy = HTTPProxyProtocol._endLegacy + (
        Legacy("tunnelClosed", "(record)", lambda self, record: self._legacyTunnelClosed(record)),
    )

    def _legacyTunnelClosed(self, record: AccessRecord) -> None:
        if self.relay is not None and record.method == "CONNECT":
            self.tunnelClosed(record)

    def _endHook(self) -> Any:
        return hookCaller(self, "exchangeEnded", ForwardProxyProtocol, self._endLegacy)


    # -- CONNECT

    def tunnelRequested(self, head: RequestHead) -> None:
        try:
            host, port = parseAuthority(head.target)
        except HTTPError as e:
            self._refuse(e.status, e.reason)
            return
        self._clientKeepAlive = False
        request = TunnelRequest(self.client, Target(host, port), head)
        self._tunnel = request
        dial = self.factory.directDialer()
        choose = hookCaller(self, "chooseUpstream", ForwardProxyProtocol, _CHOOSE_LEGACY, False)
        if dial is not None and choose is None and self.factory.interceptor is None \
                and not overrides(self, "allowTunnel", ForwardProxyProtocol) and isIPLiteral(host):
            # The common case, without a Deferred: a synchronous policy
            # decision and an IP literal, dialled with connectTCP.
            try:
                refusal = self._checkTunnelPolicy(head)
            except Exception:
                self._failed(Failure())
                return
            if refusal is None:
                self._dialDirect(dial, self._tunnel.target)
                return
            d = refusal
        else:
            d = defer.maybeDeferred(self._checkTunnelPolicy, head)
        d.addCallback(lambda _: self._askTunnelHook())
        d.addCallback(self._chooseAndDial)
        d.addCallbacks(self._tunnelConnected, self._failed)
        d.addErrback(self._unexpected)
        self._pending = d

    def _hookRequest(self) -> Any:
        return self._tunnel if self._tunnel is not None else self._request

    def drain(self) -> None:
        relay = self.relay
        if relay is not None and relay.__class__ is InterceptedTunnel:
            relay.drain()
            return
        super().drain()

    def _checkTunnelPolicy(self, head: RequestHead) -> Any:
        return self.checkPolicy(head)

    def checkBeforeRate(self, head: RequestHead) -> None:
        if head.method == b"CONNECT":
            self._checkPort()

    def _checkPort(self) -> None:
        tunnel = self._tunnel
        assert tunnel is not None
        if self.client is not tunnel.client and self.client != tunnel.client:
            # Authentication named the user.
            tunnel = self._tunnel = TunnelRequest(self.client, tunnel.target, tunnel.head)
        if tunnel.target.port not in self.factory.listener.connectPorts:
            raise Refuse(403, f"CONNECT to port {tunnel.target.port} is not allowed")

    def _askTunnelHook(self) -> Any:
        tunnel = self._tunnel
        if not overrides(self, "allowTunnel", ForwardProxyProtocol):
            return tunnel
        assert tunnel is not None

        def decided(allowed: Any) -> Any:
            if not allowed:
                raise Refuse(403, "tunnel not allowed")
            return tunnel

        return defer.maybeDeferred(self.allowTunnel, tunnel).addCallback(decided)

    def _chooseAndDial(self, tunnel: TunnelRequest) -> Any:
        if self.factory.interceptor is not None:
            d = defer.maybeDeferred(self.shouldIntercept, tunnel)

            def decided(intercept: Any) -> Any:
                if intercept:
                    return checkInterceptedDestination(self, tunnel)
                return self._dialTunnel(tunnel)

            return d.addCallback(decided)
        return self._dialTunnel(tunnel)

    def _dialTunnel(self, tunnel: TunnelRequest) -> Any:
        choose = hookCaller(self, "chooseUpstream", ForwardProxyProtocol, _CHOOSE_LEGACY, False)
        if choose is not None:
            d = defer.maybeDeferred(choose, self, tunnel)
        else:
            d = defer.succeed(tunnel.target)

        def dial(target: Optional[Target]) -> Any:
            if target is None:
                target = tunnel.target
            d = self.dialTarget(target, self.tunnelProtocol)
            timeout = self.factory.listener.connectTimeout
            if timeout:
                d.addTimeout(timeout, self.factory.clock)
            metrics = self.factory.metrics
            if metrics is not None:
                start = self.factory.clock.seconds()

                def connected(proto: Any) -> Any:
                    metrics.upstreamConnected(self.factory.listener, self.factory.clock.seconds() - start)
                    return proto

                d.addCallback(connected)
            return d

        return d.addCallback(dial)

    def _dialDirect(self, dial: Any, target: Target) -> None:
        """
        Dial the IP literal C{target} directly (L{txproxy._dial}, its own
        connect timeout), after C{--deny-dest}.
        """
        host = target.host
        denyDest = self.factory.listener.denyDest
        if denyDest and denyDest.deniesDestination(host):
            self._refuse(403, f"destination {host} is not allowed")
            return
        factory = self.factory
        client = _TunnelDial(self, self.tunnelProtocol)
        self._pending = client  # type: ignore[assignment]
        self._upstreamAddress = f"[{host}]:{target.port}" if ":" in host else f"{host}:{target.port}"
        client.connector = dial(host, target.port, client, factory.listener.connectTimeout or None, factory._bindAddress)

    def _directConnected(self, upstream: RelayedProtocol, started: float) -> None:
        factory = self.factory
        metrics = factory.metrics
        if metrics is not None:
            metrics.upstreamConnected(factory.listener, factory.clock.seconds() - started)
        try:
            self._tunnelConnected(upstream)
        except Exception:
            self._unexpected(Failure())

    def _directFailed(self, reason: Failure) -> None:
        self._pending = None
        self._upstreamAddress = ""
        self._failed(reason)

    def _tunnelConnected(self, upstream: RelayedProtocol) -> None:
        self._pending = None
        if upstream is INTERCEPT:
            if self._state == _WAIT:  # (else the client left meanwhile)
                assert self._tunnel is not None
                startInterception(self, self._tunnel)
            return
        if self._state != _WAIT:  # the client left meanwhile
            upstream.transport.loseConnection()  # type: ignore[union-attr]
            return
        tunnel = self._tunnel
        assert tunnel is not None and self.transport is not None
        sendNow(self.transport, _CONNECTED)
        filterUp = self.clientData if overrides(self, "clientData", ForwardProxyProtocol) else None
        filterDown = self.upstreamData if overrides(self, "upstreamData", ForwardProxyProtocol) else None
        opened = hookCaller(self, "relayOpened", ForwardProxyProtocol, _OPENED_LEGACY)
        if opened is not None:
            try:
                opened(self, tunnel, self._upstreamAddress)
            except Exception:
                # The 200 is out: the only honest answer left is to close.
                log.failure("relayOpened failed for {client}", client=self.client.host)
                upstream.transport.abortConnection()  # type: ignore[union-attr]
                self._state = _CLOSING
                self.transport.abortConnection()  # type: ignore[attr-defined]
                return
        self._startTunnel(upstream, b"", 200, filterUp, filterDown)
        # Relaying: no hook is given the tunnel request any more (the
        # access record is built from the head), so it is not kept for
        # the tunnel's life.
        self._tunnel = None

    # -- absolute-URI requests

    def _trusted(self) -> bool:
        listener = self.factory.listener
        return bool(listener.trustedProxies) and self.client.host in listener.trustedProxies

    def routeRequest(self, head: RequestHead) -> HTTPRequest:
        """
        Route an absolute-URI request to its origin.  Origin-form targets
        (C{GET /path}) are not proxy requests: C{400}.
        """
        target = head.target
        if target[:1] == b"/" or target == b"*":
            raise HTTPError(400, "a proxy request needs an absolute URI (http://host/path)")
        scheme, host, port, path = parseAbsoluteURI(target)
        return HTTPRequest(self.client, head, scheme, Target(host, port), path)

    def upstreamHead(self, request: HTTPRequest) -> RequestHead:
        head = super().upstreamHead(request)
        target = request.target
        hostValue = target.host if ":" not in target.host else f"[{target.host}]"
        if target.port != 80:
            hostValue = f"{hostValue}:{target.port}"
        headers = replaceHeader(head.headers, b"Host", hostValue.encode("idna") if not hostValue.isascii() else hostValue.encode())
        listener = self.factory.listener
        if listener.xForwardedFor:
            headers = _forwardingHeaders(headers, self._trusted(), self.client.host)
        else:
            sizes = FORWARDING_SIZES
            for name, _ in headers:
                # Comparing lengths first spares most names a lower() call.
                if len(name) in sizes and name.lower().replace(b"_", b"-") in FORWARDING_FIELDS:
                    headers = _forwardingHeaders(headers, self._trusted(), None)
                    break
        method = head.method
        requestTarget = head.target
        if method in (b"OPTIONS", b"TRACE"):
            maxForwards = request.head.get(b"max-forwards")
            if maxForwards is not None:
                remaining = _parseMaxForwards(maxForwards)
                if remaining == 0:
                    # The request stops here: this proxy answers it (RFC 9110
                    # section 7.6.2).
                    raise Refuse(200, "Max-Forwards reached txproxy")
                headers = replaceHeader(headers, b"Max-Forwards", b"%d" % (remaining - 1))
            if requestTarget == b"/" and method == b"OPTIONS" and _emptyPath(request.head.target):
                # RFC 9112 section 3.2.4: OPTIONS http://host (empty path,
                # no query) goes to the origin in asterisk-form.
                requestTarget = b"*"
        return RequestHead(method, requestTarget, head.version, headers)


def _forwardingHeaders(headers: Headers, trusted: bool, clientHost: Optional[str]) -> Headers:
    """
    The forwarding fields of a forward-proxied request (L{FORWARDING_FIELDS}).

    From a client in C{--trusted-proxies} they are kept; from anyone else
    they are dropped, so that an origin trusting this proxy is not told a
    client's own claims as the proxy's.  Names that read as one of them
    with C{_} taken for C{-} are dropped from everyone.  With
    C{--x-forwarded-for on} (C{clientHost} given), the client's address is
    appended to a trusted client's C{X-Forwarded-For} (and to its
    C{Forwarded}, if it sent one), or is the whole C{X-Forwarded-For} of
    anyone else.
    """
    kept: List[Header] = []
    xff: List[bytes] = []
    fwd: List[bytes] = []
    sizes = FORWARDING_SIZES
    for name, value in headers:
        if len(name) not in sizes:
            # (Comparing lengths first spares most names a lower() call.)
            kept.append((name, value))
            continue
        lower = name.lower()
        if lower.replace(b"_", b"-") in FORWARDING_FIELDS:
            if not trusted or b"_" in lower:
                continue
            if clientHost is not None:
                if lower == b"x-forwarded-for":
                    xff.append(value)
                    continue
                if lower == b"forwarded":
                    fwd.append(value)
                    continue
        kept.append((name, value))
    if clientHost is not None:
        xff.append(clientHost.encode("latin-1"))
        kept.append((b"X-Forwarded-For", b", ".join(xff)))
        if fwd:
            # RFC 7239 section 6: IPv6 addresses are bracketed and quoted.
            node = f'"[{clientHost}]"' if ":" in clientHost else clientHost
            fwd.append(b"for=" + node.encode("latin-1"))
            kept.append((b"Forwarded", b", ".join(fwd)))
    return tuple(kept)


#: Max-Forwards values with more significant digits than this are clamped
#: to L{_MAX_FORWARDS_CLAMP} (RFC 9110 sets no bound; no request chain is
#: that long).
_MAX_FORWARDS_DIGITS = 9
_MAX_FORWARDS_CLAMP: int = 10**_MAX_FORWARDS_DIGITS - 1


def _parseMaxForwards(value: bytes) -> int:
    """
    Parse a C{Max-Forwards} field value: C{1*DIGIT} (RFC 9110 section
    7.6.2), ASCII digits only; no sign, underscore or inner whitespace,
    which Python's C{int} would accept.

    @param value: the field value (surrounding whitespace already removed
        by the parser).
    @return: the number of forwards left, at most L{_MAX_FORWARDS_CLAMP}.
    @raise HTTPError: C{400} if C{value} is not a decimal number.
    """
    # bytes.isdigit is true only for ASCII digits, and false for b"".
    if not value.isdigit():
        raise HTTPError(400, "bad Max-Forwards")
    if len(value) > _MAX_FORWARDS_DIGITS:
        value = value.lstrip(b"0")
        if len(value) > _MAX_FORWARDS_DIGITS:
            return _MAX_FORWARDS_CLAMP
    return int(value or b"0")


def _emptyPath(target: bytes) -> bool:
    """
    Whether the absolute-form C{target}, whose path and query
    L{parseAbsoluteURI} gave as C{b"/"}, has an empty path (C{http://host}
    rather than C{http://host/}).
    """
    return not target.partition(b"#")[0].endswith(b"/")


class _TunnelDial(ClientFactory):
    """
    The client factory of one directly dialled tunnel upstream: reports the
    connection (or its failure) to the client's protocol.  It stands in for
    the Deferred in C{owner._pending}: L{cancel} abandons the attempt.
    """

    noisy = False
    connector: Any = None

    def __init__(self, owner: ForwardProxyProtocol, protocol: Any) -> None:
        self.owner: Optional[ForwardProxyProtocol] = owner
        self.protocol: Any = protocol
        self.started = owner.factory.clock.seconds()
        #: TCP_NODELAY on the upstream socket (read by txproxy._dial).
        self.noDelay = owner.factory.listener.tcpNoDelay

    def buildProtocol(self, addr: Any) -> Any:
        p = self.protocol()
        p.onConnected = self._connected
        return p

    def _connected(self, upstream: Any) -> None:
        owner, self.owner = self.owner, None
        if owner is None:
            upstream.transport.abortConnection()
            return
        owner._directConnected(upstream, self.started)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        owner, self.owner = self.owner, None
        if owner is not None:
            owner._directFailed(reason)

    def cancel(self) -> None:
        self.owner = None
        connector = self.connector
        if connector is not None:
            try:
                connector.stopConnecting()
            except error.NotConnectingError:
                pass


class ForwardProxyFactory(HTTPProxyFactory):
    """
    Builds L{ForwardProxyProtocol}s for one forward-mode listener.
    """

    protocol = ForwardProxyProtocol
    mode = "forward"
    _interceptor: Optional[Interceptor] = None
    _interceptorFor: Any = None

    @property
    def interceptor(self) -> Optional[Interceptor]:
        """
        The L{txproxy.intercept.Interceptor} of the listener's current
        configuration (C{--intercept-ca}), or L{None}.
        """
        listener = self.listener
        if self._interceptorFor is not listener:
            self._interceptor = Interceptor.forListener(listener)
            self._interceptorFor = listener
        return self._interceptor

    def reloadListener(self, listener: Any, dryRun: bool = False) -> None:
        """
        Also check that the C{--intercept-ca} file (re-read when changed)
        loads.
        """
        Interceptor.forListener(listener)
        super().reloadListener(listener, dryRun)

    def startFactory(self) -> None:
        """
        Say once, when the listener starts, that it serves only local
        clients when no C{--allow} was given.
        """
        super().startFactory()
        listener = self.listener
        if not listener.allow and listener.mode == "forward":
            log.info(
                "listener {name}: no --allow given, so this forward proxy serves only clients from loopback "
                "and private networks (others get 403); --allow 0.0.0.0/0 --allow ::/0 opens it",
                name=listener.name,
            )

