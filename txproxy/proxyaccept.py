# -*- test-case-name: tests.test_integration_haproxy -*-
"""
Accepting PROXY protocol headers: the wrapper behind C{haproxy:} listener
strings, for plain and TLS listeners alike.  (Writing the header to an
upstream is L{txproxy.proxyprotocol}.)
"""

from __future__ import annotations

from typing import Any, cast

from twisted.internet.interfaces import IHalfCloseableProtocol, ITransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.protocols.haproxy._exceptions import InvalidProxyHeader
from twisted.protocols.haproxy._v1parser import V1Parser
from twisted.protocols.haproxy._v2parser import V2Parser
from twisted.protocols.haproxy._wrapper import HAProxyProtocolWrapper, HAProxyWrappingFactory
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer, providedBy

__all__ = ["HalfCloseableHAProxyFactory", "HalfCloseableHAProxyWrapper"]


@implementer(IHalfCloseableProtocol)
class HalfCloseableHAProxyWrapper(HAProxyProtocolWrapper):
    """
    Twisted's PROXY-protocol wrapper, passing half-close through to the
    wrapped protocol (Twisted's own turns a client's FIN into a full close),
    and connecting the wrapped protocol only once the header has been read
    (Twisted's connects it at once, so its C{connectionMade} would see the
    proxy's address instead of the client address the header carries: the
    one ACLs, limits and logs must use).  A connection closed before a
    complete header never reaches the wrapped protocol.
    """

    def makeConnection(self, transport: Any) -> None:
        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)

    def dataReceived(self, data: bytes) -> None:
        if self._proxyInfo is not None:
            self.wrappedProtocol.dataReceived(data)
            return
        parser = self._parser
        if parser is None:
            if len(data) >= 16 and data[:12] == V2Parser.PREFIX and data[12] & 0xF0 == 0x20:
                self._parser = parser = V2Parser()
            elif len(data) >= 8 and data[:5] == V1Parser.PROXYSTR:
                self._parser = parser = V1Parser()
            else:
                self.loseConnection()
                return
        try:
            info, remaining = parser.feed(data)
        except InvalidProxyHeader:
            self.loseConnection()
            return
        if info is None:
            return
        self._proxyInfo = info
        # The wrapper is the wrapped protocol's transport (it provides what
        # the real transport provides, see makeConnection).
        self.wrappedProtocol.makeConnection(cast(ITransport, self))
        if remaining:
            self.wrappedProtocol.dataReceived(remaining)

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
        else:
            self.factory.unregisterProtocol(self)


class HalfCloseableHAProxyFactory(HAProxyWrappingFactory):
    # (mypy rejects any subclass here, Twisted's own included: a protocol
    # wrapper is not the protocol Twisted's Factory[P] typing expects.)
    protocol = HalfCloseableHAProxyWrapper  # type: ignore[assignment]
