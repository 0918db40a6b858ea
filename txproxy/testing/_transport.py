# -*- test-case-name: tests.test_testing -*-
"""
A fake client transport: L{FakeTransport}.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

from twisted.internet import error
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
)
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure


def _address(host: str, port: int) -> Any:
    return IPv6Address("TCP", host, port) if ":" in host else IPv4Address("TCP", host, port)


class FakeTransport(StringTransport):
    """
    A L{StringTransport} that behaves like a TCP connection for a proxy:
    closing calls the protocol's C{connectionLost}, half-close is recorded
    (and reported to an L{IHalfCloseableProtocol}), and reading can be
    paused and resumed.

    Closing is synchronous: C{loseConnection} and C{abortConnection} run
    the protocol's C{connectionLost} before they return (a reactor runs it
    on a later turn, once the buffer is flushed).

    @ivar protocol: the connected protocol.
    @ivar writeClosed: whether C{loseWriteConnection} was called.
    @ivar aborted: whether C{abortConnection} was called.
    @ivar closed: whether the protocol's C{connectionLost} has run.
    """

    protocol: Any = None
    writeClosed = False
    aborted = False
    closed = False
    #: Told the reason once C{connectionLost} has run (the attempt that
    #: made an upstream connection reports the loss to its client factory,
    #: as a reactor's connector does).
    _onLost: Optional[Callable[[Failure], None]] = None

    def __init__(self, peer: Tuple[str, int] = ("127.0.0.1", 40000), host: Tuple[str, int] = ("127.0.0.1", 3128)):
        """
        @param peer: the C{(host, port)} of the other end (C{getPeer()}).
        @param host: the C{(host, port)} of this end (C{getHost()}).
        """
        super().__init__(hostAddress=_address(*host), peerAddress=_address(*peer))

    def loseConnection(self) -> None:
        """
        Close the connection: the protocol's C{connectionLost} runs with
        L{error.ConnectionDone}.  Repeated calls do nothing.
        """
        if self.disconnecting:
            return
        super().loseConnection()
        self._lose(error.ConnectionDone())

    def abortConnection(self) -> None:
        """
        Reset the connection: the protocol's C{connectionLost} runs with
        L{error.ConnectionAborted} (unless it already ran).
        """
        self.aborted = True
        if not self.disconnecting:
            super().loseConnection()
        self._lose(error.ConnectionAborted())

    def loseWriteConnection(self) -> None:
        """
        Shut down writing (a FIN); the protocol's C{writeConnectionLost}
        runs, as Twisted's TCP transport does once its buffer is flushed.
        """
        if self.writeClosed:
            return
        self.writeClosed = True
        p = IHalfCloseableProtocol(self.protocol, None)
        if p is not None:
            p.writeConnectionLost()

    def _lose(self, reason: Exception) -> None:
        if self.closed:
            return
        self.closed = True
        if self.producer is not None:
            producer, self.producer = self.producer, None
            producer.stopProducing()
        failure = Failure(reason)
        if self.protocol is not None:
            self.protocol.connectionLost(failure)
        onLost, self._onLost = self._onLost, None
        if onLost is not None:
            onLost(failure)

    def peerClosed(self, reason: Optional[Exception] = None) -> None:
        """
        Simulate the peer closing the connection (or resetting it).

        @param reason: the exception C{connectionLost} gets (default
            L{error.ConnectionDone}, a clean close).
        """
        if self.closed:
            return
        self.disconnecting = True
        self._lose(reason or error.ConnectionDone())

    def peerHalfClosed(self) -> None:
        """
        Simulate the peer's FIN: C{readConnectionLost} for a half-closeable
        protocol, else the connection is lost.
        """
        p = IHalfCloseableProtocol(self.protocol, None)
        if p is not None:
            p.readConnectionLost()
        else:
            self.peerClosed()

    @property
    def paused(self) -> bool:
        """
        Whether reading from this transport is paused.
        """
        return self.producerState == "paused"


# -- the connector ----------------------------------------------------------
