# -*- test-case-name: tests.test_dial -*-
"""
Dialling an IP address with fewer moving parts than C{connectTCP}.

C{reactor.connectTCP} builds a L{twisted.internet.tcp.Connector} and a
L{twisted.internet.tcp.Client}; the client checks the host with
C{isIPAddress}/C{isIPv6Address}, schedules the connect attempt for the next
loop iteration (C{callLater(0)}), goes through a Deferred to "resolve" the
literal, calls C{connect_ex} twice, and moves the socket between the
poller's sets five times (read and write while connecting, neither, then
read).  For a relay that dials one upstream per accepted connection that is
a large share of the connection's cost.

L{dialTCP} does the same job for an address that is already an IP literal:
one socket (C{TCP_NODELAY} set unless the factory's C{noDelay} attribute is
false), one C{connect_ex} now, the socket watched for writability only
while connecting, C{SO_ERROR} read once it is writable, then the transport is
a plain L{twisted.internet.tcp.Connection} (so everything that works on a
TCP transport, including the relay's direct send, works on it).  It takes a
client factory and calls the same two methods C{connectTCP} would
(C{buildProtocol} once connected, C{clientConnectionFailed} on failure),
and returns an object with C{stopConnecting}, like an C{IConnector}.  A
failure is always reported from a later loop iteration, never from inside
the call.
"""

from __future__ import annotations

import socket
from errno import EAGAIN, EALREADY, EINPROGRESS, EISCONN, EWOULDBLOCK
from os import strerror
from typing import Any, Optional, Tuple, Type, Union

from twisted.internet import abstract, error, tcp
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.python.failure import Failure

from txproxy._loop import readInsteadOfWrite
from txproxy._slim import TRANSPORT_SLOTS, initSlots, slotFileno

__all__ = ["DirectClient", "dialTCP"]

_PENDING = (EINPROGRESS, EWOULDBLOCK, EALREADY, EAGAIN)
_STREAM_NONBLOCK = socket.SOCK_STREAM | getattr(socket, "SOCK_NONBLOCK", 0)


class DirectClient(tcp.Connection):
    """
    An outgoing TCP connection to an IP literal, dialled by L{dialTCP}.

    @ivar factory: the client factory, until connected or failed.
    @ivar realAddress: the socket address dialled.
    """

    __slots__ = TRANSPORT_SLOTS + ("realAddress", "factory", "_addressType", "_timeoutCall", "_failed")

    logstr = "txproxy upstream"

    def __init__(
        self,
        reactor: Any,
        host: str,
        port: int,
        factory: Any,
        timeout: Optional[float],
        bindAddress: Optional[Tuple[str, int]],
    ) -> None:
        # No per-connection __dict__: every attribute lives in a slot
        # (txproxy._slim), each given its default first.
        initSlots(self)
        self._timeoutCall: Any = None
        self._failed = False
        if ":" in host:
            family = socket.AF_INET6
            self._addressType: Type[Union[IPv4Address, IPv6Address]] = IPv6Address
            if "%" in host:
                address: Tuple[Any, ...] = socket.getaddrinfo(
                    host, port, socket.AF_INET6, 0, 0, socket.AI_NUMERICHOST | socket.AI_NUMERICSERV
                )[0][4]
            else:
                address = (host, port, 0, 0)
        else:
            family = socket.AF_INET
            self._addressType = IPv4Address
            address = (host, port)
        self.realAddress = address
        self.factory = factory
        # Non-blocking from the start (SOCK_NONBLOCK): tcp.Connection's
        # constructor would spend an ioctl(FIONBIO) on setblocking(False).
        skt = socket.socket(family, _STREAM_NONBLOCK)
        if _STREAM_NONBLOCK == socket.SOCK_STREAM:  # pragma: no cover - not Linux
            skt.setblocking(False)
        abstract.FileDescriptor.__init__(self, reactor=reactor)
        self.socket = skt
        self.fileno = skt.fileno
        self.protocol = None  # type: ignore[assignment]  # set in _connected
        try:
            if getattr(factory, "noDelay", True):
                skt.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if bindAddress is not None:
                skt.bind(bindAddress)
            err = skt.connect_ex(address)
        except OSError as e:
            err = e.args[0]
        if err == 0 or err == EISCONN or err in _PENDING:
            # Connected or in progress: writable means done either way.
            self.startWriting()
            if timeout:
                self._timeoutCall = reactor.callLater(timeout, self._fail, error.TimeoutError())
        else:
            reactor.callLater(0, self._fail, error.getConnectError((err, strerror(err))))

    def doWrite(self) -> Any:
        if self.connected:
            return tcp.Connection.doWrite(self)
        if self._failed:
            return None
        err = self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._fail(error.getConnectError((err, strerror(err))))
            return None
        self._connected()
        return None

    def _connected(self) -> None:
        call, self._timeoutCall = self._timeoutCall, None
        if call is not None:
            call.cancel()
        factory, self.factory = self.factory, None
        protocol = factory.buildProtocol(self.getPeer())
        self.connected = 1
        readInsteadOfWrite(self)
        if protocol is None:
            self._closeSocket(True)
            self.stopReading()
            return
        self.protocol = protocol
        protocol.makeConnection(self)

    def _fail(self, reason: Exception) -> None:
        """
        The attempt failed (or timed out, or was stopped): release the
        socket and tell the factory, once.
        """
        if self.connected or self._failed:
            return
        self._failed = True
        call, self._timeoutCall = self._timeoutCall, None
        if call is not None and call.active():
            call.cancel()
        self.stopReading()
        self.stopWriting()
        self._closeSocket(False)
        factory, self.factory = self.factory, None
        factory.clientConnectionFailed(self, Failure(reason))

    def stopConnecting(self) -> None:
        """
        Abandon the attempt if it is still in progress (the factory hears
        C{clientConnectionFailed} with L{error.UserError}, as with
        C{IConnector.stopConnecting}).

        @raise error.NotConnectingError: when already connected or failed.
        """
        if self.connected or self._failed:
            raise error.NotConnectingError()
        self._fail(error.UserError())

    @property
    def state(self) -> str:
        """
        C{"connecting"}, C{"connected"} or C{"disconnected"}, as
        L{twisted.internet.base.BaseConnector.state}.
        """
        if self.connected:
            return "connected"
        return "disconnected" if (self._failed or self.disconnected) else "connecting"

    @property
    def transport(self) -> "DirectClient":
        """
        This connection (an C{IConnector}'s C{transport}).
        """
        return self

    def connectionLost(self, reason: Failure) -> None:
        if not self.connected:
            # The poller reported an error or hang-up while connecting (a
            # refused connect is EPOLLOUT|EPOLLERR|EPOLLHUP): the socket
            # says which.
            err = 0
            if not self._failed:
                try:
                    err = self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                except OSError:
                    pass
            self._fail(error.getConnectError((err, strerror(err))) if err else error.ConnectError(string=str(reason.value)))
            return
        tcp.Connection.connectionLost(self, reason)

    def getHost(self) -> Any:
        return self._addressType("TCP", *self.socket.getsockname()[:2])

    def getPeer(self) -> Any:
        return self._addressType("TCP", *self.realAddress[:2])

    def __repr__(self) -> str:
        return f"<DirectClient to {self.realAddress[0]}:{self.realAddress[1]} at {id(self):x}>"


slotFileno(DirectClient)


def dialTCP(
    reactor: Any,
    host: str,
    port: int,
    factory: Any,
    timeout: Optional[float] = 30,
    bindAddress: Optional[Tuple[str, int]] = None,
) -> DirectClient:
    """
    Connect to the IP literal C{host}:C{port}, like C{reactor.connectTCP}
    with the same arguments (C{factory} hears C{buildProtocol} and
    C{clientConnectionFailed}; C{clientConnectionLost} is not called).

    @return: the L{DirectClient}; its C{stopConnecting} abandons the
        attempt.
    """
    return DirectClient(reactor, host, port, factory, timeout, bindAddress)
