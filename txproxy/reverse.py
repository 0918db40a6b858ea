# -*- test-case-name: tests.test_reverse -*-
"""
The reverse proxy: HTTP requests routed by Host and path to pools of
backends (the router's), TLS-terminating when the listener is C{ssl:} or has
C{--certs}.

Subclass L{ReverseProxyProtocol} to choose backends, rewrite heads or deny
requests; the HTTP hooks of L{txproxy.httpproxy.HTTPProxyProtocol} apply.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

from twisted.internet import defer, error
from twisted.python.failure import Failure

from txproxy.connector import connectProtocol, isIPLiteral
from txproxy.hooks import Refuse, Target
from txproxy.http import RequestHead, parseAbsoluteURI, parseHostHeader
from txproxy.httpproxy import HTTPProxyFactory, HTTPProxyProtocol, HTTPRequest, UpstreamHTTPProtocol, _OneShotFactory

__all__ = ["ReverseProxyProtocol", "ReverseProxyFactory", "forwardedHeaders"]

_XF = (b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded")


def _forwardedNode(host: str) -> str:
    # RFC 7239 section 6: IPv6 addresses are bracketed and quoted.
    return f'"[{host}]"' if ":" in host else host


def forwardedHeaders(
    headers: Tuple[Tuple[bytes, bytes], ...],
    clientHost: str,
    scheme: str,
    host: Optional[bytes],
    trusted: bool,
) -> Tuple[Tuple[bytes, bytes], ...]:
    """
    Set C{X-Forwarded-For}, C{X-Forwarded-Proto}, C{X-Forwarded-Host} and
    C{Forwarded} for a request from C{clientHost}.

    From a trusted client (C{--trusted-proxies}) the received
    C{X-Forwarded-For} and C{Forwarded} chains are kept and extended, and
    received C{X-Forwarded-Proto}/C{-Host} are kept; from anyone else all
    four are replaced, so a client cannot forge its address.
    """
    kept: List[Tuple[bytes, bytes]] = []
    xff: List[bytes] = []
    fwd: List[bytes] = []
    proto: Optional[bytes] = None
    xhost: Optional[bytes] = None
    for name, value in headers:
        lower = name.lower()
        if lower in _XF:
            if trusted:
                if lower == b"x-forwarded-for":
                    xff.append(value)
                elif lower == b"forwarded":
                    fwd.append(value)
                elif lower == b"x-forwarded-proto" and proto is None:
                    proto = value
                elif lower == b"x-forwarded-host" and xhost is None:
                    xhost = value
            continue
        kept.append((name, value))
    client = clientHost.encode("latin-1")
    xff.append(client)
    kept.append((b"X-Forwarded-For", b", ".join(xff)))
    kept.append((b"X-Forwarded-Proto", proto or scheme.encode()))
    if xhost is not None or host:
        kept.append((b"X-Forwarded-Host", xhost if xhost is not None else host))  # type: ignore[arg-type]
    element = f"for={_forwardedNode(clientHost)};proto={scheme}".encode("latin-1")
    if host and b'"' not in host:
        element += b';host="' + host + b'"'
    fwd.append(element)
    kept.append((b"Forwarded", b", ".join(fwd)))
    return tuple(kept)


class ReverseProxyProtocol(HTTPProxyProtocol):
    """
    One client connection to the reverse proxy.

    Per request: the route is found by C{Host} and path (C{404} when none
    matches; C{421} on a TLS connection whose certificate does not name the
    C{Host}); L{chooseBackend} picks a backend of the route's pool (C{503}
    when none is healthy); a pooled keep-alive connection to that backend is
    reused, or a new one is made (a failed connect is retried once on
    another backend, since nothing was sent yet).
    """

    mode = "reverse"
    connectAttempts = 2
    _route: Any = None
    _backend: Any = None
    _counted: Any = None
    _scheme: Optional[str] = None

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
        from txproxy.tls import servedNames

        return servedNames(self.transport)

    def _isTLS(self) -> bool:
        if self._scheme is None:
            from txproxy.tls import isTLSTransport

            self._scheme = "https" if isTLSTransport(self.transport) else "http"
        return self._scheme == "https"

    def routeRequest(self, head: RequestHead) -> HTTPRequest:
        target = head.target
        tls = self._isTLS()
        scheme = "https" if tls else "http"
        defaultPort = 443 if tls else 80
        if target[:1] == b"/" or target == b"*":
            path = target
            hostValue = head.get(b"host")
            if hostValue is None:
                host, port = "", defaultPort
            else:
                host, port = parseHostHeader(hostValue, defaultPort)
        else:
            _, host, port, path = parseAbsoluteURI(target, ("http", "https"))
        if tls and host:
            from txproxy.tls import hostMatchesNames

            names = self._tlsNames()
            if names is not None and not hostMatchesNames(host, names):
                raise Refuse(421, f"{host} is not served on this connection")
        route = self.factory.router.routeFor(self.factory.listener.name, host, path.decode("latin-1"))
        if route is None:
            raise Refuse(404, f"no route for {host or 'this request'}")
        self._route = route
        request = HTTPRequest(self.client, head, scheme, Target(host, port), path)
        listener = self.factory.listener
        limits = self.factory.limits
        if listener.rateKey == "route" and limits is not None and listener.rate is not None:
            # One bucket per route, shared by every client.
            d = limits.admitRequest(f"route:{route.config.host}{route.prefix}")

            def checked(decision: Any) -> HTTPRequest:
                if not decision.allowed:
                    raise self._limitRefusal(decision)
                return request

            if d.called:
                return checked(d.result)
            return d.addCallback(checked)
        return request

    def poolKey(self, request: HTTPRequest) -> str:
        backend = self.chooseBackend(request, self._route)
        if backend is None:
            raise Refuse(503, "no healthy backend")
        self._setBackend(backend)
        url = backend.url
        if url is not None and url.scheme == "https":
            # Connections verified one way must never serve a route that
            # asks for another (tls_verify, ca_bundle).
            config = self._route.config
            return f"{backend.key}|verify={config.tlsVerify}|ca={config.caBundle or ''}"
        return backend.key

    def _setBackend(self, backend: Any) -> None:
        self._releaseBackend()
        self._backend = backend
        self._counted = backend
        backend.connectionStarted()

    def _releaseBackend(self) -> None:
        counted, self._counted = self._counted, None
        if counted is not None:
            counted.connectionFinished()

    def upstreamHead(self, request: HTTPRequest) -> RequestHead:
        head = super().upstreamHead(request)
        route = self._route
        config = route.config
        listener = self.factory.listener
        trusted = bool(listener.trustedProxies) and self.client.host in listener.trustedProxies
        hostValue = request.head.get(b"host")
        headers = forwardedHeaders(head.headers, self.client.host, request.scheme, hostValue, trusted)
        if config.hostRewrite:
            from txproxy.http import replaceHeader

            headers = replaceHeader(headers, b"Host", config.hostRewrite.encode("idna"))
        path = request.path
        if config.stripPrefix and route.prefix:
            path = route.upstreamPath(path.decode("latin-1")).encode("latin-1")
        return RequestHead(head.method, path, head.version, headers)

    # -- connecting to backends

    def connectUpstream(self, request: HTTPRequest) -> "defer.Deferred[UpstreamHTTPProtocol]":
        backend = self._backend
        route = self._route
        pool = route.pool
        result: defer.Deferred = defer.Deferred(lambda d: inFlight and inFlight[0].cancel())
        inFlight: List[defer.Deferred] = []

        def attempt(backend: Any, retry: bool) -> None:
            d = self._dialBackend(backend)
            inFlight[:] = [d]

            def ok(proto: UpstreamHTTPProtocol) -> None:
                pool.reportConnectSuccess(backend)
                if not result.called:
                    result.callback(proto)

            def failed(f: Failure) -> None:
                if result.called or f.check(defer.CancelledError):
                    if not result.called:
                        result.errback(f)
                    return
                pool.reportConnectFailure(backend)
                if retry:
                    other = pool.pick(self.client.host, exclude=(backend,))
                    if other is not None:
                        self._setBackend(other)
                        attempt(other, False)
                        return
                result.errback(f)

            d.addCallbacks(ok, failed)

        attempt(backend, True)
        return result

    def _dialBackend(self, backend: Any) -> defer.Deferred:
        from txproxy.router import endpointForBackend

        factory = self.factory
        proto = self.upstreamProtocol()
        url = backend.url
        if url is not None and url.scheme == "http" and isIPLiteral(url.host):
            # The common case: straight to connectTCP, no endpoint wrapper.
            self._upstreamAddress = f"[{url.host}]:{url.port}" if ":" in url.host else f"{url.host}:{url.port}"
            return connectProtocol(factory.connector, url.host, url.port, proto)
        d = endpointForBackend(factory.connector, backend)

        def connect(endpoint: Any) -> Any:
            if url is not None and url.scheme == "https":
                from twisted.internet.endpoints import wrapClientTLS

                from txproxy.tls import clientTLSOptions

                config = self._route.config
                endpoint = wrapClientTLS(clientTLSOptions(url.host, config.caBundle, config.tlsVerify), endpoint)
            host = f"[{url.host}]" if url is not None and ":" in url.host else (url.host if url else "")
            self._upstreamAddress = f"{host}:{url.port}" if url is not None else backend.key
            return endpoint.connect(_OneShotFactory(proto))

        return d.addCallback(connect)

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


class ReverseProxyFactory(HTTPProxyFactory):
    """
    Builds L{ReverseProxyProtocol}s for one reverse-mode listener.

    @ivar router: the L{txproxy.router.RouterService} whose table for this
        listener routes requests.
    @ivar tls: whether the listener terminates TLS.
    """

    protocol = ReverseProxyProtocol
    mode = "reverse"

    def __init__(self, listener: Any, connector: Any, clock: Any = None, limits: Any = None,
                 accessLog: Any = None, metrics: Any = None, router: Any = None, tls: bool = False) -> None:
        super().__init__(listener, connector, clock, limits, accessLog, metrics)
        self.router = router
        self.tls = tls

