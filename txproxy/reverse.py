# -*- test-case-name: tests.test_reverse -*-
"""
The reverse proxy: HTTP requests routed by Host and path to pools of
backends (the router's), TLS-terminating when the listener is C{ssl:} or has
C{--certs}.

Subclass L{ReverseProxyProtocol} to choose backends, rewrite heads or deny
requests; the HTTP hooks of L{txproxy.httpproxy.HTTPProxyProtocol} apply.

Why this module is long: it is one protocol and its factory, and routing,
backend choice with failover, forwarded headers and upstream TLS are one
request's steps.
"""

from __future__ import annotations

import itertools
import re
from typing import Any, Optional, Set, Tuple

from twisted.internet import defer, error
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure
from zope.interface import implementer

from txproxy.connector import connectProtocol, isIPLiteral
from txproxy.h2._client import H2ClientConnection
from txproxy.h2._clientpool import H2ClientPool
from txproxy.hooks import Refuse, Target
from txproxy.http import RequestHead, parseAbsoluteURI, parseHostHeader, replaceHeader
from txproxy.http._headers import forwardedHeaders
from txproxy.httpproxy import HTTPProxyFactory, HTTPProxyProtocol
from txproxy.limits._decision import ALLOWED, Decision
from txproxy.proxyprotocol import headerFor
from txproxy.router import endpointForBackend
from txproxy.tls import hostMatchesNames, isTLSTransport, servedNames, wrapClientTLS
from txproxy.upstream import HTTPRequest, UpstreamHTTPProtocol, _OneShotFactory

__all__ = ["ReverseProxyProtocol", "ReverseProxyFactory", "forwardedHeaders"]

# The authority of an absolute-form target, from just past its "://".
_AUTHORITY = re.compile(rb"[^/?#]*")
_DEFAULT_PORTS = {"http": 80, "https": 443, "h2c": 80, "h2": 443}
#: Route URL schemes whose backends speak HTTP/2 (L{txproxy.h2}).
_H2_SCHEMES = ("h2c", "h2")


#: Tokens naming client connections in the pool keys of their private
#: (PROXY-header) upstream connections; never reused within a process.
_clientTokens = itertools.count(1)


def _writeFirst(proto: Any, header: bytes) -> Any:
    """
    Write C{header} on a just-connected upstream, before anything else.
    """
    proto.transport.write(header)
    return proto


class _HeaderFirstFactory(Factory):
    """
    Wraps a client factory so that every protocol it builds has C{header}
    written on its raw transport before its own C{makeConnection} runs: for
    an C{https://} backend, the PROXY header goes in clear before the TLS
    ClientHello, as HAProxy's C{accept-proxy} and nginx's C{proxy_protocol}
    expect it.
    """

    noisy = False

    def __init__(self, wrapped: Any, header: bytes) -> None:
        self._wrapped = wrapped
        self._header = header

    def doStart(self) -> None:
        self._wrapped.doStart()

    def doStop(self) -> None:
        self._wrapped.doStop()

    def buildProtocol(self, addr: Any) -> Any:
        proto = self._wrapped.buildProtocol(addr)
        if proto is not None:
            header = self._header
            makeConnection = proto.makeConnection

            def headerFirst(transport: Any) -> None:
                transport.write(header)
                makeConnection(transport)

            proto.makeConnection = headerFirst
        return proto


@implementer(IStreamClientEndpoint)
class _HeaderFirstEndpoint:
    """
    A client endpoint whose connections start with C{header} (see
    L{_HeaderFirstFactory}).
    """

    def __init__(self, endpoint: Any, header: bytes) -> None:
        self._endpoint = endpoint
        self._header = header

    def connect(self, protocolFactory: Any) -> defer.Deferred:
        return self._endpoint.connect(_HeaderFirstFactory(protocolFactory, self._header))  # type: ignore[no-any-return]


class _BackendDial:
    """
    One L{ReverseProxyProtocol.connectUpstream}: a dial to the chosen
    backend and, when it fails, one to another backend of the pool.

    A class rather than nested closures: a closure that calls itself again
    (the retry) is a reference cycle, which would keep the protocol and
    everything it holds until the cyclic collector runs.  Here the only
    cycles (C{result}'s canceller, C{inFlight}'s callbacks) are broken as
    the dial ends.

    @ivar result: fires with the connected protocol, or fails.
    """

    __slots__ = ("proto", "pool", "result", "inFlight", "cancelled")

    def __init__(self, proto: "ReverseProxyProtocol", pool: Any) -> None:
        self.proto = proto
        self.pool = pool
        self.inFlight: Optional[defer.Deferred] = None
        self.cancelled = False
        self.result: defer.Deferred = defer.Deferred(self._cancel)

    def _cancel(self, result: defer.Deferred) -> None:
        # An endpoint fails a cancelled connect with
        # ConnectingCancelledError: not a backend failure, no retry.
        self.cancelled = True
        if self.inFlight is not None:
            self.inFlight.cancel()

    def attempt(self, backend: Any, retry: bool, key: Optional[str] = None) -> None:
        d = self.inFlight = self.proto._dialBackend(backend)
        d.addCallbacks(self._ok, self._failed, callbackArgs=(backend, key), errbackArgs=(backend, retry))

    def _ok(self, upstream: UpstreamHTTPProtocol, backend: Any, key: Optional[str]) -> None:
        self.inFlight = None
        self.pool.reportConnectSuccess(backend)
        if key is not None:
            # A retry: pooled under the backend it reached (and that
            # backend's PROXY setting), not the first choice's.
            upstream.key = key
        result = self.result
        if not result.called:
            self.result = _DIAL_DONE
            result.callback(upstream)

    def _failed(self, f: Failure, backend: Any, retry: bool) -> None:
        self.inFlight = None
        result = self.result
        if result.called or self.cancelled or f.check(defer.CancelledError):
            if not result.called and not self.cancelled:
                self.result = _DIAL_DONE
                result.errback(f)
            return
        self.pool.reportConnectFailure(backend)
        if retry:
            proto = self.proto
            other = self.pool.pick(proto.client.host, exclude=(backend,))
            if other is not None:
                proto._traceEvent(
                    "upstream.retry", {"txproxy.backend": str(backend.key), "error.type": type(f.value).__name__}
                )
                proto._setBackend(other)
                self.attempt(other, False, proto._keyFor(other))
                return
        self.result = _DIAL_DONE
        result.errback(f)


#: What L{_BackendDial.result} becomes once fired (it no longer refers to
#: the Deferred whose canceller refers to the dial).
_DIAL_DONE: defer.Deferred = defer.succeed(None)


class ReverseProxyProtocol(HTTPProxyProtocol):
    """
    One client connection to the reverse proxy.

    Per request: the route is found by C{Host} and path (C{404} when none
    matches; C{421} on a TLS connection whose certificate does not name the
    C{Host}); L{chooseBackend} picks a backend of the route's pool (C{503}
    when none is healthy); a pooled keep-alive connection to that backend is
    reused, or a new one is made (a failed connect is retried once on
    another backend, since nothing was sent yet).

    PROXY protocol (C{proxy_protocol_send}: the backend's own, else the
    route's, else the listener's): every new connection to a backend that
    gets a header starts with one naming this client connection, so such a
    connection is private to it: its pool key carries this connection's
    token (L{poolKey}), only this connection's later requests reuse it,
    and it is closed when this connection closes.
    """

    factory: "ReverseProxyFactory"
    mode = "reverse"
    connectAttempts = 2
    _route: Any = None
    _backend: Any = None
    _counted: Any = None
    _scheme: Optional[str] = None
    # Per connection, the last Host value seen and what it gave (keep-alive
    # clients repeat theirs): the parsed host and port, and whether the
    # certificate served on this connection covers it.
    _lastHostValue: Optional[bytes] = None
    _lastHost: Tuple[str, int] = ("", 0)
    _lastHostServed = False
    #: This client connection's token in private pool keys (0: none yet).
    _clientToken = 0
    #: The private pool keys this connection used (closed with it).
    _privateKeys: Optional[Set[str]] = None
    # Whether the current request's Host is to name its backend (it named
    # no host), and whether it does already (a retry replaces it).
    _hostFromBackend = False
    _backendHostAdded = False

    # -- hooks

    def chooseBackend(self, request: HTTPRequest, route: Any) -> Any:
        """
        Pick the backend for C{request} among C{route.pool}'s (a
        L{txproxy.router.Route}).  Runs once per request; must answer
        synchronously.  The default applies the route's balancing policy
        (C{hash} uses the client address).

        @return: a L{txproxy.router.Backend}, or L{None} for C{503}.
        """
        return route.pool.pick(self.client.host)

    # -- routing

    def _tlsNames(self) -> Optional[frozenset]:
        return servedNames(self.transport)

    def _isTLS(self) -> bool:
        if self._scheme is None:
            self._scheme = "https" if isTLSTransport(self.transport) else "http"
        return self._scheme == "https"

    def routeRequest(self, head: RequestHead) -> HTTPRequest:
        target = head.target
        # The connection's caches (scheme, last Host, certificate check):
        # an HTTP/2 stream's protocol serves one request, so they live on
        # the protocol that owns the connection.
        cache = self
        stream = self._h2stream
        if stream is not None:
            owner = stream.conn.owner
            if isinstance(owner, ReverseProxyProtocol):
                cache = owner
        tls = cache._isTLS()
        scheme = "https" if tls else "http"
        defaultPort = 443 if tls else 80
        served = False
        if target[:1] == b"/" or target == b"*":
            path = target
            hostValue = head.get(b"host")
            if hostValue is None:
                host, port = "", defaultPort
            elif hostValue == cache._lastHostValue:
                host, port = cache._lastHost
                served = cache._lastHostServed
            else:
                host, port = parseHostHeader(hostValue, defaultPort)
                cache._lastHostValue, cache._lastHost, cache._lastHostServed = hostValue, (host, port), False
        else:
            _, host, port, path = parseAbsoluteURI(target, ("http", "https"))
        if tls and host and not served:
            # The served certificate is settled once the handshake is over,
            # which it is by the time a request arrives.
            names = cache._tlsNames()
            if names is not None and not hostMatchesNames(host, names):
                raise Refuse(421, f"{host} is not served on this connection")
            if host == cache._lastHost[0]:
                cache._lastHostServed = True
        route = self.factory.router.routeFor(self.factory.listener.name, host, path.decode("latin-1"))
        if route is None:
            raise Refuse(404, f"no route for {host or 'this request'}")
        self._route = route
        request = HTTPRequest(self.client, head, scheme, Target(host, port), path)
        listener = self.factory.listener
        limits = self.factory.limits
        if listener.rateKey == "route" and limits is not None and listener.rate is not None:
            # One bucket per route, shared by every client.
            decision = limits.checkRequest(f"route:{route.config.host}{route.prefix}")
            if decision is ALLOWED:
                return request

            def checked(decision: Any) -> HTTPRequest:
                if not decision.allowed:
                    raise self._limitRefusal(decision)
                return request

            if decision.__class__ is Decision:
                return checked(decision)
            return decision.addCallback(checked)  # type: ignore[no-any-return]
        return request

    _picksUpstream = True

    def _pickUpstream(self, request: HTTPRequest) -> None:
        """
        Ask L{chooseBackend} for this request's backend (C{503} when it
        names none) and count a connection to it.
        """
        backend = self.chooseBackend(request, self._route)
        if backend is None:
            raise Refuse(503, "no healthy backend")
        self._setBackend(backend)

    def poolKey(self, request: HTTPRequest) -> str:
        """
        The pool key of connections to the backend chosen for C{request}
        (L{chooseBackend} has run).
        """
        return self._keyFor(self._backend)

    def _keyFor(self, backend: Any) -> str:
        """
        The pool key of connections to C{backend} for this request's route
        and this client connection.
        """
        key: str = backend.key
        url = backend.url
        if url is not None and (url.scheme == "https" or url.scheme == "h2"):
            # Connections verified one way must never serve a route that
            # asks for another (tls_verify, ca_bundle).
            config = self._route.config
            key = f"{key}|verify={config.tlsVerify}|ca={self._upstreamCA() or ''}"
        version = self._proxyVersion(backend)
        if version:
            # A connection that started with a PROXY header names this
            # client: only this client connection may reuse it.
            token = self._clientToken
            if not token:
                token = self._clientToken = next(_clientTokens)
            key = f"{key}|proxy={version}|client={token}"
            keys = self._privateKeys
            if keys is None:
                keys = self._privateKeys = set()
            keys.add(key)
        return key

    def _proxyVersion(self, backend: Any) -> Optional[str]:
        """
        The PROXY header C{backend} gets: its own C{proxy_protocol_send},
        else its route's, else the listener's.

        @return: C{"v1"}, C{"v2"}, or L{None} for no header.
        """
        version = backend.proxyProtocol
        if version is None:
            route = self._route
            version = route.config.proxyProtocolSend if route is not None else None
            if version is None:
                version = self.factory.listener.proxyProtocolSend
        return version if version == "v1" or version == "v2" else None

    def _proxyHeader(self, version: str) -> bytes:
        """
        The PROXY header naming this client connection: its peer (the
        address a PROXY header carried, on a C{haproxy:} listener) and the
        address it reached.
        """
        transport: Any = self.transport
        return headerFor(version, transport.getPeer(), transport.getHost())

    def _setBackend(self, backend: Any) -> None:
        self._releaseBackend()
        self._backend = backend
        self._counted = backend
        backend.connectionStarted()
        if self._hostFromBackend:
            self._nameBackendInHost(backend)

    def _releaseBackend(self) -> None:
        counted, self._counted = self._counted, None
        if counted is not None:
            counted.connectionFinished()

    def upstreamHead(self, request: HTTPRequest) -> RequestHead:
        """
        The base head plus exactly one C{Host} (the route's C{host_rewrite},
        else the host the client asked for, else the backend's authority)
        and the forwarded headers; the route's prefix stripped if it says
        so.
        """
        head = super().upstreamHead(request)
        route = self._route
        config = route.config
        listener = self.factory.listener
        trusted = bool(listener.trustedProxies) and self.client.host in listener.trustedProxies
        received = request.head
        target = received.target
        path = request.path
        asterisk = False
        if target[:1] == b"/" or target == b"*":
            hostValue = received.get(b"host") or None
        else:
            # RFC 9112 section 3.2.2: the authority of an absolute-form
            # target replaces the received Host.
            authority = _AUTHORITY.match(target, target.find(b"://") + 3)
            assert authority is not None  # [^/?#]* matches anywhere
            hostValue = authority.group()
            # RFC 9112 section 3.2.4: OPTIONS https://host (empty path, no
            # query) goes to the origin in asterisk-form.
            if path == b"/" and received.method == b"OPTIONS":
                asterisk = not target.partition(b"#")[0].endswith(b"/")
        hostField = config.hostRewrite.encode("idna") if config.hostRewrite else hostValue
        # No host at all (HTTP/1.0 without Host): _setBackend names the
        # backend, once chosen.
        self._hostFromBackend = hostField is None
        self._backendHostAdded = False
        headers = forwardedHeaders(head.headers, self.client.host, request.scheme, hostValue, trusted, hostField)
        if asterisk:
            path = b"*"
        elif config.stripPrefix and route.prefix:
            path = route.upstreamPath(path.decode("latin-1")).encode("latin-1")
        return RequestHead(head.method, path, head.version, headers)

    def _nameBackendInHost(self, backend: Any) -> None:
        """
        Give the head about to be sent for a request that named no host
        (HTTP/1.0 without C{Host}) the C{Host} an HTTP/1.1 request needs:
        the authority of C{backend} (C{host[:port]}, the port omitted when
        it is the scheme's default), replacing the one of the backend a
        retry gave up on.  A C{Host} that L{rewriteRequest} set is kept.
        """
        head = self._outHead
        url = backend.url
        value = b""
        if url is not None:
            host = f"[{url.host}]" if ":" in url.host else url.host
            if url.port != _DEFAULT_PORTS.get(url.scheme):
                host = f"{host}:{url.port}"
            value = host.encode() if host.isascii() else host.encode("idna")
        if self._backendHostAdded:
            headers = replaceHeader(head.headers, b"Host", value)
        elif head.get(b"host") is not None:
            self._hostFromBackend = False
            return
        else:
            # First, where clients put it.
            headers = ((b"Host", value),) + head.headers
            self._backendHostAdded = True
        self._outHead = RequestHead(head.method, head.target, head.version, headers)

    # -- connecting to backends

    def connectUpstream(self, request: HTTPRequest) -> "defer.Deferred[UpstreamHTTPProtocol]":
        dial = _BackendDial(self, self._route.pool)
        result = dial.result  # (dial.result is dropped once it fires)
        dial.attempt(self._backend, True)
        return result

    def _upstreamCA(self) -> Optional[str]:
        """
        The CA bundle verifying this request's C{https://} backend: the
        route's C{ca_bundle}, else the listener's C{--upstream-ca}, else
        L{None} (the platform's trust store).
        """
        caBundle: Optional[str] = self._route.config.caBundle
        if caBundle is None:
            caBundle = getattr(self.factory.listener, "upstreamCA", None)
        return caBundle

    def _dialBackend(self, backend: Any) -> defer.Deferred:
        factory = self.factory
        proto = self.upstreamProtocol()
        url = backend.url
        version = self._proxyVersion(backend)
        header = self._proxyHeader(version) if version else b""
        if url is not None and url.scheme in _H2_SCHEMES:
            return self._streamToBackend(backend, proto, header)
        if url is not None and url.scheme == "http" and isIPLiteral(url.host):
            # The common case: straight to connectTCP, no endpoint wrapper.
            self._upstreamAddress = f"[{url.host}]:{url.port}" if ":" in url.host else f"{url.host}:{url.port}"
            d = connectProtocol(factory.connector, url.host, url.port, proto)
            if header:
                # Before the request head, which is written once this
                # Deferred's callbacks have run.
                d.addCallback(_writeFirst, header)
            return d
        d = endpointForBackend(factory.connector, backend)

        def connect(endpoint: Any) -> Any:
            if header:
                # On the raw connection, before TLS if any.
                endpoint = _HeaderFirstEndpoint(endpoint, header)
            if url is not None and url.scheme == "https":
                config = self._route.config
                endpoint = wrapClientTLS(endpoint, url.host, self._upstreamCA(), config.tlsVerify)
            host = f"[{url.host}]" if url is not None and ":" in url.host else (url.host if url else "")
            self._upstreamAddress = f"{host}:{url.port}" if url is not None else backend.key
            return endpoint.connect(_OneShotFactory(proto))

        return d.addCallback(connect)

    def _streamToBackend(self, backend: Any, proto: UpstreamHTTPProtocol, header: bytes) -> defer.Deferred:
        """
        Connect C{proto} to a new stream to an C{h2c://} or C{h2://} backend
        (L{H2ClientPool.stream}); C{h2://} is verified as C{https://} is,
        with ALPN C{h2} only (L{txproxy.h2._client}).
        """
        factory = self.factory
        url = backend.url
        tls = url.scheme == "h2"
        host = f"[{url.host}]" if ":" in url.host else url.host
        address = self._upstreamAddress = f"{host}:{url.port}"
        caBundle = self._upstreamCA() if tls else None
        verify = self._route.config.tlsVerify

        def dial() -> defer.Deferred:
            conn = H2ClientConnection(factory.clock, b"https" if tls else b"http", tls, factory.h2IdleTimeout, address)

            def connect(endpoint: Any) -> Any:
                if header:
                    endpoint = _HeaderFirstEndpoint(endpoint, header)
                if tls:
                    endpoint = wrapClientTLS(endpoint, url.host, caBundle, verify, alpn=("h2",))
                return endpoint.connect(_OneShotFactory(conn))

            d = endpointForBackend(factory.connector, backend)
            d.addCallback(connect)
            d.addCallback(lambda _: conn.ready)
            return d

        return factory.h2pool.stream(self._keyFor(backend), proto, dial)

    def _log(self, status: int, reason: str = "") -> None:
        self._releaseBackend()
        # The route this request was routed to (the HTTP core sets _request
        # once routeRequest has answered for this request) is the metrics'
        # route label, which the HTTP core cannot pass itself.
        route = self._route if self._request is not None else None
        metrics = self.factory.metrics
        if route is None or metrics is None:
            super()._log(status, reason)
            return
        stats = metrics.statsFor(self.factory.listener)
        stats.route = route.name
        try:
            super()._log(status, reason)
        finally:
            stats.route = "-"

    def connectionLost(self, reason: Failure = Failure(error.ConnectionDone())) -> None:
        super().connectionLost(reason)
        self._releaseBackend()
        keys, self._privateKeys = self._privateKeys, None
        if keys:
            # Idle connections that named this client: nobody else may use
            # them, so they go now rather than at the pool's idle timeout.
            pool = self.factory.pool
            for key in keys:
                pool.closeKey(key)
                self.factory.h2pool.closeKey(key)


class ReverseProxyFactory(HTTPProxyFactory):
    """
    Builds L{ReverseProxyProtocol}s for one reverse-mode listener.

    @ivar router: the L{txproxy.router.RouterService} whose table for this
        listener routes requests.
    @ivar tls: whether the listener terminates TLS.
    """

    protocol = ReverseProxyProtocol
    mode = "reverse"
    #: Seconds an HTTP/2 backend connection with no stream open is kept.
    h2IdleTimeout = 30.0

    def __init__(self, listener: Any, connector: Any, clock: Any = None, limits: Any = None,
                 accessLog: Any = None, metrics: Any = None, router: Any = None, tls: bool = False) -> None:
        super().__init__(listener, connector, clock, limits, accessLog, metrics)
        self.router = router
        self.tls = tls
        #: The HTTP/2 connections to C{h2c://} and C{h2://} backends.
        self.h2pool = H2ClientPool(self.clock)

    def reloadListener(self, listener: Any, dryRun: bool = False) -> None:
        """
        As L{HTTPProxyFactory.reloadListener}; HTTP/2 backend connections
        are retired (no new stream; closed once their streams end).
        """
        super().reloadListener(listener, dryRun)
        if not dryRun:
            self.h2pool.retireAll()

    def stopFactory(self) -> None:
        super().stopFactory()
        # Open streams finish (the drain); idle connections close now.
        self.h2pool.retireAll()

