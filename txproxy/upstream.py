# -*- test-case-name: tests.test_httpproxy -*-
"""
The upstream side of the HTTP core: the request value hooks receive
(L{HTTPRequest}), the protocol on an upstream HTTP/1.1 connection
(L{UpstreamHTTPProtocol}) and the keep-alive pool of idle ones
(L{UpstreamPool}).
"""

from __future__ import annotations

import errno
import socket
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional

import attr
from twisted.internet import error
from twisted.internet.interfaces import IHalfCloseableProtocol, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from txproxy.hooks import ClientInfo, Target
from txproxy.http import (
    RequestHead,
)
from txproxy.relay import RelayedProtocol

if TYPE_CHECKING:  # pragma: no cover
    from txproxy.httpproxy import HTTPProxyProtocol

__all__ = ["HTTPRequest", "UpstreamHTTPProtocol", "UpstreamPool", "closedUnseen", "keepAliveLimit"]

log = Logger(namespace="txproxy.httpproxy")

#: C{recv} flags that look at what the kernel holds for a socket without
#: taking it or waiting (Twisted's sockets are non-blocking anyway).
_PEEK = socket.MSG_PEEK | getattr(socket, "MSG_DONTWAIT", 0)
#: C{recv} errors meaning "nothing to read yet".
_AGAIN = frozenset([errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR])


def closedUnseen(transport: Any) -> bool:
    """
    Whether the peer of the idle connection C{transport} has closed or
    reset it (or, on plain TCP, sent bytes nobody asked for) as far as the
    kernel knows, though the reactor has not reported it yet: one
    non-blocking C{recv(MSG_PEEK)} on the socket under C{transport}
    (looking through protocol wrappers and TLS).

    A server that closes an idle keep-alive connection at its timeout
    (Node's 5 s) does so at any moment, also while the event loop is busy
    with other connections: the close then sits in the kernel until the
    next poll, and a request sent meanwhile is lost.  For a request that
    cannot be sent again this check is its only chance.

    @return: C{True} when the connection cannot carry a request; C{False}
        when it looks idle and open, or cannot be checked (no socket).
    """
    tls = False
    while isinstance(transport, ProtocolWrapper):
        tls = tls or isinstance(transport, TLSMemoryBIOProtocol)
        transport = transport.transport
    sock = getattr(transport, "socket", None)
    if sock is None:
        return False
    try:
        data = sock.recv(1, _PEEK)
    except OSError as e:
        # EAGAIN: open, nothing to read; ECONNRESET and the like: gone.
        return e.errno not in _AGAIN
    # b"": the peer's FIN.  Bytes on an idle plain connection: a response
    # to nothing (a 408 before a close), never one to the next request.
    # (Under TLS they may be a session ticket: left to the TLS layer.)
    return not data or not tls


@attr.s(frozen=True, slots=True, auto_attribs=True)
class HTTPRequest:
    """
    A request as hooks see it.

    @ivar client: who sent it.
    @ivar head: the request head as received.
    @ivar scheme: C{"http"} or C{"https"} (the scheme of the URL requested).
    @ivar target: where it goes (host and port of the origin or backend).
    @ivar path: the path and query, origin-form.
    """

    client: ClientInfo
    head: RequestHead
    scheme: str
    target: Target
    path: bytes

    @property
    def method(self) -> bytes:
        return self.head.method


class _OneShotFactory(Factory):
    """
    A factory that hands out one pre-built protocol (for endpoint connects).
    """

    noisy = False

    def __init__(self, proto: Protocol) -> None:
        self.proto = proto

    def buildProtocol(self, addr: Any) -> Protocol:
        return self.proto


@implementer(IHalfCloseableProtocol)
class UpstreamHTTPProtocol(RelayedProtocol):
    """
    One connection to an upstream HTTP server, used by one client exchange
    at a time and pooled in between.

    @ivar owner: the L{txproxy.httpproxy.HTTPProxyProtocol} whose request this connection is
        serving, or L{None} when idle.
    @ivar key: the pool key (origin) this connection belongs to.
    @ivar requests: how many requests it has carried.
    @ivar idleSince: clock time it was returned to the pool.
    @ivar idleLimit: seconds it may stay idle and still be reused: a little
        less than the server said it keeps an idle connection (see
        L{keepAliveLimit}), else unbounded (the pool's own bound applies).
    """

    owner: Optional["HTTPProxyProtocol"] = None  # (a type only: httpproxy imports this module)
    key = ""
    requests = 0
    idleSince = 0.0
    idleLimit = float("inf")
    pool: Optional["UpstreamPool"] = None
    lost = False
    #: The peer as the access log shows it (C{host:port}), once known.
    address = ""
    #: What writes to this connection (L{txproxy.relay.fastSender} of its
    #: transport), made by the first exchange on it and kept for the next.
    sender: Optional[Callable[[bytes], None]] = None
    #: The C{--deny-dest} set this connection's peer was last found outside
    #: of (L{txproxy.httpproxy.HTTPProxyProtocol._stillAllowed} checks a
    #: pooled connection again only when the set has changed: a reload).
    allowedBy: Any = None

    def dataReceived(self, data: bytes) -> None:
        owner = self.owner
        if owner is not None:
            owner._responseData(data)
        elif self.relay is None:
            # Bytes on an idle connection: the server is confused; drop it.
            self._discard()

    def readConnectionLost(self) -> None:
        if self.relay is not None:
            self.relay.upstreamReadLost()
        elif self.owner is not None:
            self.owner._upstreamEnded(self, None)
        else:
            self._discard()

    def connectionLost(self, reason: Failure = Failure(error.ConnectionDone())) -> None:
        self.lost = True
        if self.pool is not None:
            self.pool.remove(self)
        if self.relay is not None:
            self.relay.upstreamLost(reason)
        elif self.owner is not None:
            self.owner._upstreamEnded(self, reason)

    def closedByPeer(self) -> bool:
        """
        Whether this idle connection was closed or reset by the server
        without the reactor having reported it yet (see L{closedUnseen}):
        checked before a pooled connection carries a request that could not
        be retried.
        """
        return self.transport is None or closedUnseen(self.transport)

    def _discard(self) -> None:
        if self.pool is not None:
            self.pool.remove(self)
        if self.transport is not None:
            self.transport.loseConnection()


def keepAliveLimit(timeout: int) -> float:
    """
    How long to reuse an idle connection whose server said (C{Keep-Alive:
    timeout=N}) it keeps one open C{timeout} seconds: one second less (half
    of it under two seconds), since the server counts from when it sent the
    response and closes at any moment after.
    """
    return timeout - 1.0 if timeout >= 2 else timeout / 2.0


class UpstreamPool:
    """
    Idle keep-alive connections to upstreams, keyed by origin.

    Connections are reused most-recently-idle first (the least likely to
    have been closed by the server).  A connection is never reused unless
    its last response was read to the end.

    @ivar maxIdlePerKey: idle connections kept per origin (as many as the
        concurrent requests to one origin usually are: a smaller cap closes
        and reopens connections under steady load).  1024: HTTP/2 clients
        multiplex, so a few of them can have hundreds of requests to one
        origin in flight (50 clients of 10 streams each: 500), each on an
        HTTP/1.1 connection of its own; at 256, a quarter of those requests
        dialled a new connection (bench/README.md, bench_h2.py).
    @ivar maxIdle: idle connections kept in total.
    @ivar idleTimeout: seconds an idle connection is kept.
    """

    def __init__(self, clock: IReactorTime, maxIdlePerKey: int = 1024, maxIdle: int = 4096, idleTimeout: float = 30.0) -> None:
        self.clock = clock
        self.maxIdlePerKey = maxIdlePerKey
        self.maxIdle = maxIdle
        self.idleTimeout = idleTimeout
        self._idle: Dict[str, List[UpstreamHTTPProtocol]] = {}
        self._count = 0
        self._sweep: Any = None
        self.reused = 0

    def __len__(self) -> int:
        return self._count

    def get(self, key: str) -> Optional[UpstreamHTTPProtocol]:
        """
        An idle connection to C{key}, taken out of the pool, or L{None}.
        """
        conns = self._idle.get(key)
        if not conns:
            return None
        now = self.clock.seconds()
        deadline = now - self.idleTimeout
        while conns:
            proto = conns.pop()
            self._count -= 1
            proto.pool = None
            if proto.lost or proto.idleSince < deadline or now - proto.idleSince >= proto.idleLimit:
                # (Past the server's keep-alive timeout, or close to it: it
                # may close the connection as the request arrives.)
                if proto.transport is not None:
                    proto.transport.loseConnection()
                continue
            if not conns:
                del self._idle[key]
            self.reused += 1
            return proto
        del self._idle[key]
        return None

    def put(self, proto: UpstreamHTTPProtocol) -> None:
        """
        Return C{proto} to the pool (it must be idle and reusable).
        """
        if proto.lost:
            return
        conns = self._idle.setdefault(proto.key, [])
        if len(conns) >= self.maxIdlePerKey or self._count >= self.maxIdle:
            if proto.transport is not None:
                proto.transport.loseConnection()
            if not conns:
                del self._idle[proto.key]
            return
        proto.idleSince = self.clock.seconds()
        proto.pool = self
        conns.append(proto)
        self._count += 1
        if self._sweep is None:
            self._sweep = self.clock.callLater(self.idleTimeout, self._sweepIdle)

    def remove(self, proto: UpstreamHTTPProtocol) -> None:
        """
        Forget C{proto} (it closed or misbehaved while idle).
        """
        conns = self._idle.get(proto.key)
        proto.pool = None
        if conns and proto in conns:
            conns.remove(proto)
            self._count -= 1
            if not conns:
                del self._idle[proto.key]

    def closeKey(self, key: str) -> None:
        """
        Close every idle connection pooled under C{key} (connections private
        to a client connection that has closed).
        """
        conns = self._idle.pop(key, None)
        if not conns:
            return
        self._count -= len(conns)
        for proto in conns:
            proto.pool = None
            if proto.transport is not None:
                proto.transport.loseConnection()

    def _sweepIdle(self) -> None:
        self._sweep = None
        deadline = self.clock.seconds() - self.idleTimeout
        for key in list(self._idle):
            for proto in list(self._idle.get(key, ())):
                if proto.idleSince <= deadline:
                    self.remove(proto)
                    if proto.transport is not None:
                        proto.transport.loseConnection()
        if self._count:
            self._sweep = self.clock.callLater(self.idleTimeout / 2.0, self._sweepIdle)

    def closeAll(self) -> None:
        """
        Close every idle connection and stop the sweeper.
        """
        if self._sweep is not None and self._sweep.active():
            self._sweep.cancel()
        self._sweep = None
        for key in list(self._idle):
            for proto in list(self._idle.get(key, ())):
                self.remove(proto)
                if proto.transport is not None:
                    proto.transport.loseConnection()
