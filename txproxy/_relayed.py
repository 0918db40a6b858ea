# -*- test-case-name: tests.test_relay -*-
"""
L{RelayedProtocol}, the upstream side's protocol of a relay; its public
name is L{txproxy.relay.RelayedProtocol}.

It lives apart from L{txproxy.relay} because the relay is compiled with
mypyc on CPython and this class must stay plain Python: the modes (and
users) subclass it, and mypyc checks that the C{self} of a compiled class's
methods is exactly that class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, List, Optional

from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

if TYPE_CHECKING:
    from txproxy.relay import Relay

__all__ = ["RelayedProtocol"]


@implementer(IHalfCloseableProtocol)
class RelayedProtocol(Protocol):
    """
    The protocol for the upstream side of a relay.  Until L{txproxy.relay.joinRelay}
    attaches it, it keeps whatever the upstream sends (a server that speaks
    first), and whether the upstream half-closed or closed (which
    L{txproxy.relay.joinRelay} replays); afterwards it reports end-of-input and loss to
    the relay.

    @ivar relay: the L{txproxy.relay.Relay}, once attached.
    @ivar connected: a L{Deferred} that fired when the connection was made
        (endpoints fire theirs too; this one is for callers that build the
        protocol themselves).
    """

    relay: Optional[Relay] = None
    _pending: Optional[List[bytes]] = None
    _readLost = False
    _lostReason: Optional[Failure] = None
    #: Called with this protocol from C{connectionMade}, once (set by
    #: L{txproxy.connector.Connector.connect}).
    onConnected: Optional[Callable[[RelayedProtocol], None]] = None

    def connectionMade(self) -> None:
        callback = self.onConnected
        if callback is not None:
            self.onConnected = None
            callback(self)

    def dataReceived(self, data: bytes) -> None:
        if self._pending is None:
            self._pending = []
        self._pending.append(data)

    def readConnectionLost(self) -> None:
        if self.relay is not None:
            self.relay.upstreamReadLost()
        else:
            self._readLost = True

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        if self.relay is not None:
            self.relay.upstreamLost(reason)
        else:
            self._lostReason = reason

    def takePending(self) -> bytes:
        """
        Return and forget the bytes received before the relay was attached.
        """
        pending, self._pending = self._pending, None
        return b"".join(pending) if pending else b""
