# -*- test-case-name: tests.test_integration_haproxy -*-
"""
Accepting PROXY protocol headers: the wrapper behind C{haproxy:} listener
strings, for plain and TLS listeners alike.  (Writing the header to an
upstream is L{txproxy.proxyprotocol}.)
"""

from __future__ import annotations

from typing import Any, cast

from twisted.internet import defer
from twisted.internet.interfaces import IHalfCloseableProtocol, ITransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.haproxy._wrapper import HAProxyProtocolWrapper, HAProxyWrappingFactory
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer, providedBy

from txproxy._common import formatAddress
from txproxy.proxyprotocol import HeaderParser, InvalidHeader, ProxyInfo

__all__ = ["HalfCloseableHAProxyFactory", "HalfCloseableHAProxyWrapper", "PENDING_CLIENT"]

log = Logger(namespace="txproxy.service")


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
class HalfCloseableHAProxyWrapper(HAProxyProtocolWrapper):
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
            decision = limiter.acquireNowOrLater(limits.scope, PENDING_CLIENT, limits.maxConns, None)
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


class HalfCloseableHAProxyFactory(HAProxyWrappingFactory):
    # (mypy rejects any subclass here, Twisted's own included: a protocol
    # wrapper is not the protocol Twisted's Factory[P] typing expects.)
    protocol = HalfCloseableHAProxyWrapper  # type: ignore[assignment]
