# -*- test-case-name: tests.test_forward,tests.test_tcp -*-
"""
What every listener factory shares (HTTP and TCP modes alike): the client
ACL, the set of open connections, and where finished requests are
reported.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Tuple

from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger

from txproxy._common import isIPLiteral
from txproxy._hookcompat import Legacy, hookCaller
from txproxy.accesslog import AccessRecord
from txproxy.config import LOCALNET
from txproxy.tuning import SocketOption, applySocketOptions, optionsToSet, socketOptions

__all__ = ["ListenerFactory", "endHookOf"]

log = Logger()


# Any: the protocols' C{factory} is the mode's factory class, which
# Twisted's Factory[P] typing (a protocol whose factory is Factory[Self])
# cannot express.
class ListenerFactory(ServerFactory[Any]):
    """
    Base of the mode factories.  Subclasses set C{listener}, C{protocols},
    C{accessLog}, C{metrics} and C{requestsTotal} in their constructor.

    @ivar listener: the L{txproxy.config.ListenerConfig}.
    @ivar protocols: the open client connections (for draining, counting
        and C{/status}).
    @ivar accessLog: an L{txproxy.interfaces.IAccessLog}, or L{None}.
    @ivar metrics: a L{txproxy.metrics.Metrics}, or L{None}.
    @ivar tracer: a L{txproxy.tracing.Tracer}, or L{None}.
    """

    noisy = False
    listener: Any
    protocols: set
    accessLog: Any = None
    metrics: Any = None
    #: The process's L{txproxy.tracing.Tracer} (C{--trace-otlp}), or
    #: L{None}: tracing is off, and protocols check only this.
    tracer: Any = None
    requestsTotal = 0
    #: The socket options of accepted connections, and the listener
    #: configuration they were computed from (recomputed when a reload
    #: gives the factory another one).
    _socketOptions: Tuple[SocketOption, ...] = ()
    _socketOptionsFor: Any = None
    _socketOptionsFailed = False

    def clientAllowed(self, host: str) -> bool:
        """
        Apply C{--allow}/C{--deny}: C{--deny} wins; with any C{--allow},
        unlisted clients are denied.  A C{forward} listener given no
        C{--allow} serves only loopback and private networks
        (L{txproxy.config.LOCALNET}), and UNIX-socket clients: it is not an
        open proxy by default.
        """
        listener = self.listener
        cache = self._aclCache
        if self._aclCacheFor is not listener or len(cache) >= self._ACL_CACHE_SIZE:
            # A reload (another listener configuration) or a full cache:
            # start again.
            cache = self._aclCache = {}
            self._aclCacheFor = listener
        verdict = cache.get(host)
        if verdict is None:
            verdict = cache[host] = self._clientAllowed(listener, host)
        return verdict

    #: Verdicts of L{clientAllowed} by client address, for the listener
    #: configuration they were made under: parsing an address and matching
    #: it against the ranges costs more than the rest of a request's policy,
    #: and a keep-alive client asks once per request.
    _aclCache: Dict[str, bool] = {}
    _aclCacheFor: Any = None
    _ACL_CACHE_SIZE = 4096

    @staticmethod
    def _clientAllowed(listener: Any, host: str) -> bool:
        if listener.deny and host in listener.deny:
            return False
        if listener.allow:
            return host in listener.allow
        if listener.mode == "forward":
            # (A UNIX-socket client, named by a path, is on this host.)
            return host in LOCALNET or not isIPLiteral(host)
        return True

    def connectionOpened(self, proto: Any) -> None:
        """
        Called by each protocol when its connection is made: the
        listener's socket options (C{tcp_nodelay}, C{keepalive}, ...; see
        L{txproxy.tuning}) are set on the accepted socket, and the
        connection is counted.
        """
        self.protocols.add(proto)
        listener = self.listener
        if listener is not self._socketOptionsFor:
            self._socketOptions = socketOptions(listener)
            self._socketOptionsFor = listener
        options = self._socketOptions
        if options:
            # Without the flags the socket inherited from the listening one.
            options = optionsToSet(proto.transport, options)
        if options:
            failed = applySocketOptions(proto.transport, options)
            if failed is not None and not self._socketOptionsFailed:
                self._socketOptionsFailed = True
                log.warn(
                    "listener {name}: cannot set socket options on accepted connections: {error}"
                    " (logged once)",
                    name=listener.name,
                    error=failed,
                )
        if self.metrics is not None:
            self.metrics.connectionOpened(self.listener)

    def connectionClosed(self, proto: Any) -> None:
        """
        Called by each protocol when its connection is lost.
        """
        self.protocols.discard(proto)
        if self.metrics is not None:
            self.metrics.connectionClosed(self.listener)

    def exchangeEnded(self, proto: Any, record: AccessRecord) -> None:
        """
        Called once per request, tunnel or relayed connection with its
        record: access log and counters.  An override must call the base
        method.  (The protocol's own C{exchangeEnded(record)} runs after
        it.)
        """
        self.requestsTotal += 1
        if self.accessLog is not None:
            self.accessLog.log(record)
        if self.metrics is not None:
            self.metrics.requestFinished(self.listener, record)

    def requestFinished(self, proto: Any, record: AccessRecord) -> None:
        """
        Deprecated name of L{exchangeEnded}: a subclass that still overrides
        it is called instead (its base call reaches L{exchangeEnded}'s
        work), with a L{DeprecationWarning}.
        """
        ListenerFactory.exchangeEnded(self, proto, record)


_FACTORY_END = (
    Legacy("requestFinished", "(proto, record)", lambda self, proto, record: self.requestFinished(proto, record)),
)


def endHookOf(factory: ListenerFactory) -> Callable[..., Any]:
    """
    The function to call, as C{f(factory, proto, record)}, when an exchange
    of a protocol of C{factory} ended: its C{exchangeEnded}, or the
    deprecated C{requestFinished} of a subclass that overrides that.
    Computed once per factory class.
    """
    caller = hookCaller(factory, "exchangeEnded", ListenerFactory, _FACTORY_END, combine=False)
    if caller is None:
        return ListenerFactory.exchangeEnded
    return caller
