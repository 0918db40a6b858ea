# -*- test-case-name: tests.test_intercept -*-
"""
The intercepted connection layer: after C{200} to a C{CONNECT}, TLS is
terminated with a minted certificate, and the decrypted bytes go to a new
instance of the listener's own protocol class (so every user hook applies)
that treats each request as C{https://CONNECT-host:port/...}.

    client socket ─ forward protocol (the CONNECT; now only passes bytes on)
                    └─ TLSServerProtocol (certificate from the InterceptCA)
                        └─ the listener's protocol class + InterceptedRequests
                            └─ upstream pool ─ TLSClientProtocol ─ origin
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Tuple, Type

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from txproxy._common import overrides
from txproxy._factory import ListenerFactory, endHookOf
from txproxy.errors import PolicyDenied
from txproxy.exchange import CLOSING, HEAD, TUNNEL
from txproxy.hooks import Refuse, Target, TunnelRequest
from txproxy.http import RequestHead, parseAbsoluteURI, replaceHeader
from txproxy.http._uri import parseHostHeader
from txproxy.httpproxy import HTTPProxyProtocol, HTTPRequest, UpstreamHTTPProtocol
from txproxy.intercept._alpn import H2_ALPN, OriginProtocols, _ALPNChoice, _OriginTLS, _poolKey
from txproxy.intercept._patterns import InterceptPolicy
from txproxy.relay import sendNow
from txproxy.tls import InterceptCA, clientTLSSettings
from txproxy.tls._proto import TLSServerProtocol
from txproxy.tls._server import _sslErrorText

__all__ = [
    "INTERCEPT",
    "H2_ALPN",
    "InterceptedRequests",
    "InterceptedTunnel",
    "Interceptor",
    "OriginProtocols",
    "checkInterceptedDestination",
    "interceptedClass",
    "startInterception",
]

log = Logger(namespace="txproxy.intercept")

_CONNECTED = b"HTTP/1.1 200 Connection established\r\n\r\n"


class _Intercept:
    def __repr__(self) -> str:
        return "INTERCEPT"


#: What the C{CONNECT} path gets instead of an upstream connection when the
#: tunnel is to be intercepted.
INTERCEPT: Any = _Intercept()


_CAS: Dict[Tuple[str, Any], InterceptCA] = {}


def _loadCA(path: str) -> InterceptCA:
    """
    The L{InterceptCA} of C{path}, loaded once per file version (its
    certificate cache outlives a reload that does not change the file).

    @raise ConfigError: see L{InterceptCA.fromFile}.
    """
    try:
        st = os.stat(path)
        stamp: Any = (st.st_mtime_ns, st.st_size, st.st_ino, st.st_mode)
    except OSError:
        stamp = None
    ca = _CAS.get((path, stamp))
    if ca is None:
        ca = InterceptCA.fromFile(path)
        if len(_CAS) > 16:
            _CAS.clear()
        _CAS[(path, stamp)] = ca
    return ca


class Interceptor:
    """
    What a forward listener with C{--intercept-ca} needs to intercept: its
    CA, its patterns, its upstream trust anchors.

    @ivar ca: the L{InterceptCA}.
    @ivar policy: the L{InterceptPolicy} of C{--intercept}/C{--no-intercept}.
    @ivar upstreamCA: C{--upstream-ca}, or L{None} for the system store.
    @ivar originProtocols: the L{OriginProtocols} cache of origins' ALPN
        answers (with HTTP/2 on).
    """

    def __init__(self, ca: InterceptCA, policy: InterceptPolicy, upstreamCA: Optional[str] = None) -> None:
        self.ca = ca
        self.policy = policy
        self.upstreamCA = upstreamCA
        self.originProtocols = OriginProtocols()

    @classmethod
    def forListener(cls, listener: Any) -> Optional["Interceptor"]:
        """
        The interceptor of a listener configuration, or L{None} without
        C{--intercept-ca}.

        @raise ConfigError: the CA file does not load.
        """
        if listener.interceptCA is None:
            return None
        return cls(_loadCA(listener.interceptCA), InterceptPolicy(listener.intercept, listener.noIntercept), listener.upstreamCA)


class InterceptedTunnel:
    """
    Stands in for the relay of a forward protocol whose tunnel is
    intercepted: receives its client's end of input and loss, and passes
    them to the TLS layer; logs the C{CONNECT} once the connection is over.

    @ivar owner: the forward protocol that answered the C{CONNECT}.
    @ivar tls: the L{TLSServerProtocol} on its transport (L{None} while
        the ALPN offer is being decided).
    @ivar inner: the protocol reading the decrypted requests.
    @ivar choice: the L{_ALPNChoice} before TLS starts, or L{None}.
    @ivar endedAt: L{None} while open, then the clock time it ended.
    """

    endedAt: Optional[float] = None
    closeReason = ""
    choice: Optional[_ALPNChoice] = None
    _readLost = False

    def __init__(self, owner: Any, tls: Optional[TLSServerProtocol], inner: Any) -> None:
        self.owner = owner
        self.tls = tls
        self.inner = inner

    def start(self, alpn: Optional[Tuple[str, ...]], received: bytes) -> None:
        """
        Start TLS towards the client, offering C{alpn} (L{None}: the CA's
        C{http/1.1}), and feed it C{received}.
        """
        self.choice = None
        owner = self.owner
        transport = owner.transport
        if self.endedAt is not None or transport is None:
            return
        newObject = owner.factory.interceptor.ca.serverObject(self.inner.interceptTarget.host, alpn)
        tls = self.tls = TLSServerProtocol(newObject, self.inner)
        owner.dataReceived = tls.dataReceived
        tls.makeConnection(transport)
        if received:
            tls.dataReceived(received)
        if self._readLost and not tls.disconnected:
            self.inner.readConnectionLost()

    def clientReadLost(self) -> None:
        """
        The client's TCP half-close: the decrypted side's end of input.
        """
        if self.tls is None:
            self._readLost = True
            return
        self.inner.readConnectionLost()

    def clientLost(self, reason: Failure) -> None:
        """
        The client's connection is gone: so is the TLS layer; log the
        C{CONNECT}.
        """
        if self.endedAt is not None:
            return
        owner = self.owner
        self.endedAt = owner.factory.clock.seconds()
        tls = self.tls
        outcome = "intercepted"
        if tls is None or not tls._handshakeDone:
            # What operators need when a client does not trust the CA (or
            # does not speak TLS at all): one line, and the record says it.
            failure = tls._reason if tls is not None else None
            detail = _sslErrorText(failure.value) if failure is not None else "the client left before completing it"
            log.info(
                "intercepted tunnel from {client} to {target}: TLS handshake with the client failed: {detail}",
                client=owner.client.host,
                target=str(self.inner.interceptTarget),
                detail=detail,
            )
            outcome = f"intercepted; TLS handshake failed: {detail}"
        if tls is not None:
            tls.connectionLost(reason)
        else:
            choice = self.choice
            if choice is not None:
                choice.cancel()
        owner._log(200, outcome)

    def abort(self, reason: str) -> None:
        """
        Close now (the drain timeout ran out).
        """
        self.closeReason = reason
        transport = self.owner.transport
        if transport is not None:
            transport.abortConnection()

    def drain(self) -> None:
        """
        The proxy is stopping: the decrypted connection closes between
        requests, as any HTTP connection does (at once before TLS
        started).
        """
        if self.tls is None:
            transport = self.owner.transport
            if transport is not None:
                transport.loseConnection()
            return
        self.inner.drain()


class InterceptedRequests:
    """
    Mixed in before the listener's protocol class (L{interceptedClass}) for
    the decrypted side of an intercepted tunnel: each request is an
    C{https://} request to the C{CONNECT} host and port, by the tunnel's
    authenticated user (no second C{407}), through the client ACL, the rate
    limit (one token per request), C{--deny-dest} on the origin's address
    and every user hook of the class.

    @ivar interceptOwner: the forward protocol of the C{CONNECT}.
    @ivar interceptTarget: the C{CONNECT} host and port (the origin).
    """

    interceptOwner: Any = None
    interceptTarget: Target

    # (The HTTP connection layer's attributes this class uses.)
    factory: Any
    client: Any
    transport: Any
    _state: Any
    _head: Any
    _h2stream: Any

    def connectionMade(self) -> None:
        owner = self.interceptOwner
        self.client = owner.client
        self._admission = None  # the connection's own was checked by the owner
        self._observeRequest = overrides(self, "requestBodyData", HTTPProxyProtocol)
        self._observeResponse = overrides(self, "responseBodyData", HTTPProxyProtocol)
        ended = self._endHook()  # type: ignore[attr-defined]
        if ended is not None:
            self._ended = ended
        factoryEnded = endHookOf(self.factory)
        if factoryEnded is not ListenerFactory.exchangeEnded:
            self._factoryEnded = factoryEnded
        if self._h2stream is None:
            # (An HTTP/2 stream's head is all there already.)
            self._setTimer(self.factory.listener.headerTimeout, "head")  # type: ignore[attr-defined]

    #: The owner counts the connection (and holds its lease).
    _countsConnection = False

    def checkPolicy(self, head: RequestHead) -> Optional[defer.Deferred]:
        """
        The client ACL (it may have been reloaded) and the rate limit; the
        user is the tunnel's.
        """
        if not self.factory.clientAllowed(self.client.host):
            raise Refuse(403, "client not allowed")
        return self._checkRate(head)  # type: ignore[attr-defined,no-any-return]

    def tunnelRequested(self, head: RequestHead) -> None:
        self._refuse(405, "CONNECT inside an intercepted tunnel is not allowed")

    def routeRequest(self, head: RequestHead) -> HTTPRequest:
        """
        Every request goes to the C{CONNECT} host and port, over TLS.  A
        C{Host} (or absolute target) naming another origin gets C{421}.
        """
        target = self.interceptTarget
        raw = head.target
        if raw[:1] == b"/" or raw == b"*":
            path = raw
        else:
            scheme, host, port, path = parseAbsoluteURI(raw, ("https",))
            if host != target.host or port != target.port:
                raise Refuse(421, f"this connection is for {target}, not {host}:{port}")
        value = head.get(b"host")
        if value is not None:
            host, port = parseHostHeader(value, 443)
            if host != target.host or port != target.port:
                raise Refuse(421, f"this connection is for {target}, not {host}:{port}")
        return HTTPRequest(self.client, head, "https", target, path)

    def poolKey(self, request: HTTPRequest) -> str:
        """
        Origin connections are pooled per host, port and server name (the
        host), apart from plain ones.
        """
        return _poolKey(request.target)

    def upstreamHead(self, request: HTTPRequest) -> RequestHead:
        head: RequestHead = super().upstreamHead(request)  # type: ignore[misc]
        target = request.target
        if target.port == 443:
            host = target.host if ":" not in target.host else f"[{target.host}]"
            head = RequestHead(head.method, head.target, head.version, replaceHeader(head.headers, b"Host", host.encode("idna")))
        return head

    def connectUpstream(self, request: HTTPRequest) -> "defer.Deferred[UpstreamHTTPProtocol]":
        """
        A new TLS connection to the origin (after C{--deny-dest} on its
        resolved addresses): SNI and the certificate checked for the
        C{CONNECT} host against C{--upstream-ca} or the system store.
        """
        host = request.target.host
        interceptor = self.interceptOwner.factory.interceptor
        upstreamCA = interceptor.upstreamCA if interceptor is not None else None
        newObject, verify = clientTLSSettings(host, upstreamCA)
        makeApp = self.upstreamProtocol  # type: ignore[attr-defined]

        def make() -> _OriginTLS:
            return _OriginTLS(newObject, makeApp(), verify)

        d: defer.Deferred = self.dialTarget(request.target, make)  # type: ignore[attr-defined]
        return d.addCallback(lambda tls: tls.wrappedProtocol)

    def _startH2(self, received: bytes) -> None:
        """
        The HTTP/2 preface: served when TLS negotiated C{h2} (the origin
        selected it too), each stream by a protocol of this class
        (L{_h2StreamProtocol}); else the connection is closed.
        """
        if getattr(self.transport, "negotiatedProtocol", None) != b"h2":
            self._notHTTP("HTTP/2 without ALPN h2 is not served inside an intercepted tunnel")
            return
        super()._startH2(received)  # type: ignore[misc]

    def _h2StreamProtocol(self, addr: Any) -> Any:
        """
        The protocol serving one HTTP/2 stream of the decrypted
        connection: one more of this class, for the same tunnel (its user,
        its origin).
        """
        proto = type(self)()
        proto.factory = self.factory
        proto.interceptOwner = self.interceptOwner
        proto.interceptTarget = self.interceptTarget
        return proto

    def _refuse(self, status: int, reason: str, retryAfter: Optional[float] = None) -> None:
        if self._state is HEAD and status in (400, 431) and self._h2stream is None:
            self._notHTTP(reason)
            return
        super()._refuse(status, reason, retryAfter)  # type: ignore[misc]

    def _notHTTP(self, reason: str) -> None:
        """
        What the client sent after the handshake is not an HTTP request
        (HTTP/1.1, or HTTP/2 after ALPN C{h2}): one log line, and the
        connection is closed.
        """
        log.info(
            "intercepted tunnel from {client} to {target}: the client does not speak HTTP inside ({reason}); closing",
            client=self.client.host,
            target=str(self.interceptTarget),
            reason=reason,
        )
        self._state = CLOSING
        self._cancelTimer()  # type: ignore[attr-defined]
        self.transport.loseConnection()


_CLASSES: Dict[type, type] = {}


def interceptedClass(cls: Type[Any]) -> Type[Any]:
    """
    The class of the decrypted side of an intercepted tunnel for a
    listener whose protocol class is C{cls}: C{cls} with
    L{InterceptedRequests} mixed in first (made once per class).
    """
    made = _CLASSES.get(cls)
    if made is None:
        made = type("Intercepted" + cls.__name__, (InterceptedRequests, cls), {"__module__": cls.__module__})
        _CLASSES[cls] = made
    return made


def startInterception(owner: Any, tunnel: TunnelRequest) -> None:
    """
    Answer C{owner}'s C{CONNECT} with C{200} and decrypt what follows:
    TLS with a certificate for the client's SNI (else the C{CONNECT}
    host), then a new protocol of the listener's class over it.  With
    HTTP/2 on, the ALPN offered to a client that offers C{h2} is decided
    first (L{_ALPNChoice}).

    @param owner: the forward protocol, in C{WAIT}.
    @param tunnel: its C{CONNECT}.
    """
    interceptor = owner.factory.interceptor
    assert interceptor is not None and owner.transport is not None
    try:
        interceptor.ca.serverObject(tunnel.target.host)
    except ValueError as e:
        owner._refuse(400, f"cannot intercept {tunnel.target.host}: {e}")
        return
    transport = owner.transport
    sendNow(transport, _CONNECTED)
    owner._setState(TUNNEL)
    owner._cancelTimer()
    inner = interceptedClass(type(owner))()
    inner.factory = owner.factory
    inner.interceptOwner = owner
    inner.interceptTarget = tunnel.target
    relay = InterceptedTunnel(owner, None, inner)
    owner.relay = relay
    owner._upstreamAddress = "intercepted"
    pending, owner._input = owner._input, b""
    owner._inputPaused = False
    if owner.factory.listener.http2:
        choice = relay.choice = _ALPNChoice(relay, interceptor, tunnel.target)
        owner.dataReceived = choice.dataReceived
        transport.resumeProducing()
        if pending:
            choice.dataReceived(pending)
    else:
        relay.start(None, b"")
        transport.resumeProducing()
        if pending and relay.tls is not None:
            relay.tls.dataReceived(pending)
    if owner._clientReadLost:
        relay.clientReadLost()


def checkInterceptedDestination(owner: Any, tunnel: TunnelRequest) -> Any:
    """
    C{--deny-dest} for an intercepted tunnel, at C{CONNECT} time (each
    request inside checks it again when it dials): resolve the host, and
    refuse when every address is denied.

    @return: L{INTERCEPT}, or a Deferred firing with it (failing with
        L{PolicyDenied}).
    """
    denyDest = owner.factory.listener.denyDest
    if not denyDest:
        return INTERCEPT
    target = tunnel.target

    def check(addresses: Any) -> Any:
        if not [a for a in addresses if not denyDest.deniesDestination(a)]:
            raise PolicyDenied(f"destination {target.host} is not allowed")
        return INTERCEPT

    return owner.factory.connector.resolve(target.host, target.port).addCallback(check)

