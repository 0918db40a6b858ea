# -*- test-case-name: tests.test_service -*-
"""
Listening endpoints: endpoint strings to Twisted endpoints (TLS, the
C{haproxy:} PROXY-protocol wrapper, C{--backlog}), the service that listens
on one, and the start-up checks of everything a configuration refers to
outside itself.

Below L{txproxy.runtime.service}, L{txproxy.runtime.admin} and
L{txproxy.runtime.workers}, which all listen through it.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.endpoints import _WrapperServerEndpoint, clientFromString, serverFromString
from twisted.logger import Logger
from twisted.python.failure import Failure

from txproxy import config as _config
from txproxy._slim import slimPort
from txproxy.auth import Htpasswd
from txproxy.config import ListenerConfig
from txproxy.errors import ConfigError
from txproxy.intercept import Interceptor
from txproxy.proxyaccept import HalfCloseableHAProxyFactory
from txproxy.runtime.process import reusePortIfWorker
from txproxy.tls import checkCABundle, isTLSListener, tlsServerEndpoint
from txproxy.tuning import inheritFromListeningPort, socketOptions

__all__ = [
    "ListenerService",
    "StartupError",
    "checkResources",
    "checkSupported",
    "checkUpstreamEndpoints",
    "listenerEndpoint",
    "serverEndpoint",
    "withBacklog",
]

log = Logger(namespace="txproxy.service")


class StartupError(Exception):
    """
    The proxy cannot start (a port is in use, a certificate is unreadable).
    Its text is the one line printed on standard error.
    """


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
    if isTLSListener(description, certs):
        return tlsServerEndpoint(reactor, description, certs, clientCA, acceptableProtocols)
    try:
        if description.startswith("haproxy:"):
            inner = serverFromString(reactor, description[len("haproxy:") :])
            return _WrapperServerEndpoint(inner, HalfCloseableHAProxyFactory)
        return serverFromString(reactor, description)
    except Exception as e:  # serverFromString raises many kinds for bad input
        detail = str(e) or type(e).__name__
        if isinstance(e, (IOError, OSError)) and getattr(e, "strerror", None):
            detail = f"{e.strerror}: {getattr(e, 'filename', '')}".rstrip(": ")
        raise ConfigError(f"bad --listen endpoint {description!r}: {detail}")


def listenerEndpoint(reactor: Any, description: str, listener: ListenerConfig) -> Any:
    """
    L{serverEndpoint} for one of C{listener}'s strings, with its TLS
    settings: C{certs} and C{client_ca}, ALPN L{alpnProtocols}.  C{sni} mode passes TLS through, so a TLS
    listener there is refused.

    @raise ConfigError: as L{serverEndpoint}.
    """
    tls = isTLSListener(description, listener.certs)
    if tls and listener.mode == "sni":
        raise ConfigError(f"bad --listen endpoint {description!r}: sni mode passes TLS through; listen with tcp:, without --certs")
    protocols = alpnProtocols(listener)
    try:
        return serverEndpoint(reactor, description, listener.certs, listener.clientCA, protocols)
    except ConfigError as e:
        # Name the string the user wrote, not the one with --backlog added.
        original = _withoutBacklog(description, listener.backlog)
        raise ConfigError(str(e).replace(repr(description), repr(original)))


def alpnProtocols(listener: ListenerConfig) -> Tuple[bytes, ...]:
    """
    The ALPN protocols a TLS listener of C{listener} offers, in its order
    of preference: C{h2} then C{http/1.1} in the HTTP modes with
    C{--http2 on}, C{http/1.1} alone with C{--http2 off}, none in the
    other modes.
    """
    if listener.mode not in ("forward", "reverse"):
        return ()
    return (b"h2", b"http/1.1") if listener.http2 else (b"http/1.1",)


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
        # Accepted connections without a per-connection __dict__ (before
        # the reactor accepts any: this runs synchronously).
        slimPort(result)
        listener = getattr(self.factory, "listener", None)
        if listener is not None:
            # TCP_NODELAY and SO_KEEPALIVE once here, inherited by every
            # accepted socket, instead of once per connection.
            try:
                inheritFromListeningPort(result, socketOptions(listener))
            except ValueError:
                pass  # (a constant this platform lacks: the per-connection path reports it)
        tls = isTLSListener(self.description, getattr(listener, "certs", None))
        log.info("txproxy {mode} listening on {address}{tls}", mode=getattr(self.factory, "mode", ""),
                 address=self.description, tls=" (TLS)" if tls else "")

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


def checkSupported(config: _config.ProxyConfig) -> None:
    """
    Reject, by name, settings whose implementation has not landed yet.
    """
    supported = {"forward", "tcp", "transparent", "sni", "reverse"}
    for listener in config.listeners:
        if listener.mode not in supported:
            raise ConfigError(f"mode {listener.mode} is not supported yet")


def checkResources(config: _config.ProxyConfig, reactor: Any = None) -> None:
    """
    Check what the config refers to outside itself: endpoint strings parse
    (and their certificate files load), auth files read, the access log
    opens.
    """
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    for listener in config.listeners:
        if listener.clientCA and not any(isTLSListener(d, listener.certs) for d in listener.listen):
            raise ConfigError("--client-ca needs a TLS listener (ssl: or --certs)")
        for description in listener.listen:
            listenerEndpoint(reactor, withBacklog(description, listener.backlog), listener)
        checkUpstreamEndpoints(listener, reactor)
        if listener.upstreamCA is not None:
            checkCABundle(listener.upstreamCA, "--upstream-ca")
        if listener.interceptCA is not None:
            # Loaded once here (and kept for the listener: the same file
            # is not read again).
            Interceptor.forListener(listener)
        for route in listener.routes:
            if route.caBundle is not None:
                try:
                    open(route.caBundle, "rb").close()
                except OSError as e:
                    raise ConfigError(f"route {route.host}{route.prefix}: cannot read ca_bundle {route.caBundle}: {e.strerror}")
        if listener.auth:
            Htpasswd(listener.auth)
    if config.accessLog and config.accessLog != "-":
        try:
            open(config.accessLog, "a").close()
        except OSError as e:
            raise ConfigError(f"cannot open access log {config.accessLog}: {e.strerror}")


def checkUpstreamEndpoints(listener: ListenerConfig, reactor: Any) -> None:
    """
    Check that every C{--upstream} of C{listener} is a client endpoint
    description Twisted can build (C{bogus:xx} would otherwise fail on
    every connection).

    @raise ConfigError: naming the listener and the description.
    """
    for description in listener.upstreams:
        try:
            endpoint = clientFromString(reactor, description)
        except Exception as e:
            detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"listener {listener.name}: bad --upstream endpoint {description!r}: {detail}")
        port = getattr(endpoint, "_port", None)
        if isinstance(port, int) and not 0 < port < 65536:
            raise ConfigError(f"listener {listener.name}: bad --upstream endpoint {description!r}: port out of range")
