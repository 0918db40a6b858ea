# -*- test-case-name: tests.test_testing -*-
"""
A fake client transport: L{FakeTransport}.
"""

from __future__ import annotations

import errno
from typing import Any, Callable, Optional, Tuple, Union

from twisted.internet import error
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
)
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure


def _address(host: str, port: int) -> Any:
    return IPv6Address("TCP", host, port) if ":" in host else IPv4Address("TCP", host, port)


class _PeekSocket:
    """
    The socket under a L{FakeTransport} whose peer closed, reset or wrote
    while the reactor was busy elsewhere: only a non-blocking
    C{recv(MSG_PEEK)} (what L{txproxy.upstream.closedUnseen} does) sees it.
    """

    def __init__(self, pending: Union[bytes, OSError, None]) -> None:
        #: b"": a FIN; bytes: unread data; an OSError: what recv raises
        #: (ECONNRESET after a reset); None: nothing (EAGAIN).
        self.pending = pending

    def recv(self, size: int, flags: int = 0) -> bytes:
        pending = self.pending
        if pending is None:
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        if isinstance(pending, OSError):
            raise pending
        return pending[:size]


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
    #: Like a TCP transport's socket, for what peeks at it; L{None} (not a
    #: socket: nothing to see) until L{peerClosedUnseen}.
    socket: Any = None
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

    def peerClosedUnseen(self, reset: bool = False, data: bytes = b"") -> None:
        """
        Simulate the peer closing (C{reset}: resetting) the connection, or
        sending C{data}, while the reactor is busy elsewhere: the protocol
        is told nothing yet (call L{peerHalfClosed} or L{peerClosed} for
        the reactor's turn), but the kernel has it, which a non-blocking
        C{recv(MSG_PEEK)} on C{socket} finds, as on a real socket.
        """
        pending: Union[bytes, OSError] = data
        if reset:
            pending = ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
        self.socket = _PeekSocket(pending)

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
