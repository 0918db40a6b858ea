# -*- test-case-name: tests.test_relay -*-
"""
The relay: joins two connected transports and moves bytes between them.

It is the one place that moves bytes after a head is parsed, for every mode.
It owns:

  - B{flow control}: each transport is registered as the other's streaming
    producer, so a slow reader pauses the fast writer instead of growing a
    buffer;
  - B{half-close}: end-of-input from one side becomes a write shutdown
    (C{loseWriteConnection}) on the other, and the pair closes when both
    directions are finished;
  - B{idle timeout}: one timer per relay that I{checks} the byte counters
    (it is never reset on traffic, so traffic costs no timer work);
  - B{accounting}: bytes each way and start and end times;
  - B{the hot loop}: for plain TCP transports, a chunk is sent straight to
    the socket when the transport has nothing buffered, and only an unsent
    remainder goes through C{transport.write}.  Twisted's buffered write path
    registers the socket for writability and unregisters it again around
    nearly every chunk (two C{epoll_ctl} calls per message); the direct send
    skips both whenever the kernel takes the whole chunk, which is the
    common case.

Use: L{joinRelay} joins a client-side protocol and an upstream
L{RelayedProtocol}; it is the one public way to do it.  Afterwards each
chunk goes straight to L{Relay.fromClient}/L{Relay.fromUpstream} (they
replace the protocols' C{dataReceived}); the client-side protocol forwards
end-of-input to L{Relay.clientReadLost} and loss to L{Relay.clientLost}
(L{RelayedProtocol} does the same for the upstream side).

Why this module is long: it is the hot path.  The per-chunk loop, flow
control, half-close and the Twisted internals they read for speed (see
C{tests/test_twisted_private.py}) are kept in one module so that they are
read, profiled and reviewed together.
"""

from __future__ import annotations

from errno import EAGAIN, ENOBUFS, EWOULDBLOCK
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Dict, Optional, Set, cast
from typing import Protocol as _Structural
from weakref import WeakKeyDictionary

from twisted.internet import defer, tcp
from twisted.internet.interfaces import (
    IDelayedCall,
    IReactorTime,
    ITransport,
)
from twisted.internet.main import CONNECTION_DONE
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure

# The upstream side's protocol lives in a module of its own that is never
# compiled: the modes and users subclass it (see txproxy._relayed).
from txproxy._relayed import RelayedProtocol

if TYPE_CHECKING:
    # A class mypyc cannot build: casts name it as a string.
    from txproxy._transport import _Transport

__all__ = ["Relay", "RelayedProtocol", "fastSender", "joinRelay", "sendNow"]

_AGAIN = (EAGAIN, EWOULDBLOCK, ENOBUFS)

#: The reason given to a connection the relay closes itself (shared, as the
#: reactor shares its own: building a Failure costs more than the close).
_CONNECTION_DONE = Failure(CONNECTION_DONE)

#: Read size and write high-water mark for relayed TCP transports.  Twisted's
#: default (64 KiB) costs throughput on bulk transfers; 256 KiB halves the
#: Python calls per byte and still bounds memory per connection direction.
RELAY_BUFFER_SIZE = 256 * 1024


def _plainTCP(transport: object) -> Optional[tcp.Connection]:
    """
    Return the L{twisted.internet.tcp.Connection} under C{transport} when
    writes to C{transport} may go straight to that connection's socket, else
    L{None}.

    Wrappers whose C{write} only passes bytes through (L{ProtocolWrapper},
    as used by C{haproxy:} listeners once the PROXY header is consumed) are
    looked through; TLS transports are not.
    """
    while isinstance(transport, ProtocolWrapper) and type(transport).write is ProtocolWrapper.write:
        transport = transport.transport
    if isinstance(transport, tcp.Connection) and not getattr(transport, "TLS", False):
        if getattr(transport, "socket", None) is not None:
            return transport
    return None


#: fastSender's default for C{conn} (typed Any so that it fits the parameter).
_NOT_LOOKED_UP: Any = object()


def fastSender(
    transport: ITransport, conn: Optional[tcp.Connection] = _NOT_LOOKED_UP
) -> Callable[[bytes], None]:
    """
    Return a callable that writes to C{transport} like C{transport.write},
    sending straight to the socket when nothing is buffered.

    For transports that are not plain TCP, this is C{transport.write}.

    @param conn: the plain TCP connection under C{transport} when the
        caller already looked it up (L{None} for none).
    """
    if conn is _NOT_LOOKED_UP:
        conn = _plainTCP(transport)
    if conn is None:
        return transport.write
    c = conn
    send = c.socket.send
    write: Callable[[bytes], None] = c.write

    def sendOrBuffer(data: bytes) -> None:
        if c._tempDataLen or c.dataBuffer or not c.connected or c._writeDisconnecting:
            write(data)
            return
        try:
            sent = send(data)
        except OSError as e:
            if e.args[0] in _AGAIN:
                write(data)
            else:
                # Let Twisted's own write path discover and report the error.
                write(data)
            return
        if sent != len(data):
            write(data[sent:])

    return sendOrBuffer


def sendNow(transport: ITransport, data: bytes) -> None:
    """
    Write C{data} to C{transport}, straight to the socket when it is plain
    TCP with nothing buffered (one C{send}, no poller registration); what
    the kernel does not take goes through C{transport.write}.
    """
    conn = _plainTCP(transport)
    if (
        conn is not None
        and not (conn._tempDataLen or conn.dataBuffer)
        and conn.connected
        and not (conn.disconnecting or conn._writeDisconnecting)
    ):
        try:
            sent = conn.socket.send(data)
        except OSError:
            # EAGAIN, or an error Twisted's write path will discover.
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


def _idleTCP(conn: Optional[tcp.Connection]) -> Optional[tcp.Connection]:
    """
    C{conn}, a plain TCP connection (or L{None}), when it is open and has
    nothing buffered (so that a close or half-close need not wait for the
    poller), else L{None}.
    """
    if (
        conn is None
        or conn._tempDataLen
        or conn.dataBuffer
        or not conn.connected
        or conn.disconnecting
        or conn.producerPaused
        or (conn._writeDisconnecting and not conn._writeDisconnected)
    ):
        return None
    return conn


class _IdleSweeper:
    """
    The idle checks of every relay with the same clock and idle timeout: one
    timer, every quarter of the timeout, instead of one timer per relay
    (which costs a heap entry and a callLater per connection).
    """

    _byClock: "ClassVar[WeakKeyDictionary[IReactorTime, Dict[float, _IdleSweeper]]]" = (
        WeakKeyDictionary()
    )

    @classmethod
    def forClock(cls, clock: IReactorTime, timeout: float) -> "_IdleSweeper":
        """
        The sweeper for relays with this clock and idle timeout.
        """
        sweepers = cls._byClock.get(clock)
        if sweepers is None:
            sweepers = cls._byClock[clock] = {}
        sweeper = sweepers.get(timeout)
        if sweeper is None:
            sweeper = sweepers[timeout] = cls(clock, max(timeout / 4.0, 0.01))
        return sweeper

    def __init__(self, clock: IReactorTime, tick: float) -> None:
        self.clock = clock
        self.tick = tick
        self.relays: Set[Relay] = set()
        self._call: Optional[IDelayedCall] = None

    def add(self, relay: "Relay") -> None:
        self.relays.add(relay)
        if self._call is None:
            self._call = self.clock.callLater(self.tick, self._sweep)

    def discard(self, relay: "Relay") -> None:
        relays = self.relays
        relays.discard(relay)
        if not relays and self._call is not None:
            # No timer left behind once nothing is relayed.
            self._call.cancel()
            self._call = None

    def _sweep(self) -> None:
        self._call = None
        now = self.clock.seconds()
        for relay in list(self.relays):
            relay._checkIdle(now)
        if self.relays:
            self._call = self.clock.callLater(self.tick, self._sweep)


class Relay:
    """
    Joins a client transport and an upstream transport.

    @ivar bytesUp: bytes sent toward the upstream (received from the client).
    @ivar bytesDown: bytes sent toward the client.
    @ivar startedAt: clock time of L{start}.
    @ivar endedAt: clock time both sides were closed, or L{None}.
    @ivar finished: a L{Deferred} firing with this relay when both sides
        are closed (built on first use).
    @ivar onEnded: L{None}, or a callable given this relay once, when both
        sides are closed (before C{finished} fires); cheaper than
        C{finished}, which is why the modes use it.  Exceptions it raises
        are not caught.  It is reset to L{None} as it is called.
    @ivar closeReason: why the relay ended early: C{"idle"}, C{"aborted"},
        or L{None} for a normal end.
    """

    __slots__ = (
        "client",
        "upstream",
        "clock",
        "idleTimeout",
        "bytesUp",
        "bytesDown",
        "startedAt",
        "endedAt",
        "_finished",
        "onEnded",
        "closeReason",
        "_clientConn",
        "_upstreamConn",
        "_clientReadDone",
        "_upstreamReadDone",
        "_clientGone",
        "_upstreamGone",
        "_sweeper",
        "_idleMark",
        "_idleSince",
        "_filterUp",
        "_filterDown",
    )

    def __init__(
        self,
        client: ITransport,
        upstream: ITransport,
        clock: IReactorTime,
        idleTimeout: Optional[float] = None,
        filterUp: Optional[Callable[[bytes], bytes]] = None,
        filterDown: Optional[Callable[[bytes], bytes]] = None,
    ) -> None:
        """
        @param client: the accepted connection's transport.
        @param upstream: the upstream connection's transport.
        @param clock: where the idle check's timer runs.
        @param idleTimeout: seconds without a byte in either direction before
            both connections are closed; L{None} or 0 for never.
        @param filterUp: optional; called with each chunk from the client,
            returns the bytes to send upstream (may be C{b""}).
        @param filterDown: the same for chunks from the upstream.
        """
        self.client = client
        self.upstream = upstream
        self.clock = clock
        self.idleTimeout = idleTimeout or None
        self.bytesUp = 0
        self.bytesDown = 0
        self.startedAt = clock.seconds()
        self.endedAt: Optional[float] = None
        self._finished: Optional[defer.Deferred[Relay]] = None
        self.onEnded: Optional[Callable[[Relay], Any]] = None
        self.closeReason: Optional[str] = None
        self._clientReadDone = False
        self._upstreamReadDone = False
        self._clientGone = False
        self._upstreamGone = False
        self._sweeper: Optional[_IdleSweeper] = None
        self._idleMark = -1
        self._idleSince = self.startedAt
        self._filterUp = filterUp
        self._filterDown = filterDown
        self._clientConn: Optional[tcp.Connection] = _plainTCP(client)
        self._upstreamConn: Optional[tcp.Connection] = _plainTCP(upstream)

    # -- the hot path: one call per chunk, sending straight to the socket
    # when the other side is plain TCP with nothing buffered (the same test
    # as fastSender, inlined: no closure per direction and connection).

    def fromClient(self, data: bytes) -> None:
        """
        A chunk from the client: relay it upstream.
        """
        filterUp = self._filterUp
        if filterUp is not None:
            data = filterUp(data)
            if not data:
                return
        self.bytesUp += len(data)
        conn = self._upstreamConn
        if conn is None or conn._tempDataLen or conn.dataBuffer or not conn.connected or conn._writeDisconnecting:
            self.upstream.write(data)
            return
        try:
            sent = conn.socket.send(data)
        except OSError:
            # EAGAIN: buffer; anything else: Twisted's write path reports it.
            conn.write(data)
            return
        if sent != len(data):
            conn.write(data[sent:])

    def fromUpstream(self, data: bytes) -> None:
        """
        A chunk from the upstream: relay it to the client.
        """
        filterDown = self._filterDown
        if filterDown is not None:
            data = filterDown(data)
            if not data:
                return
        self.bytesDown += len(data)
        conn = self._clientConn
        if conn is None or conn._tempDataLen or conn.dataBuffer or not conn.connected or conn._writeDisconnecting:
            self.client.write(data)
            return
        try:
            sent = conn.socket.send(data)
        except OSError:
            conn.write(data)
            return
        if sent != len(data):
            conn.write(data[sent:])

    # -- set-up

    def start(self, fromClient: bytes = b"", fromUpstream: bytes = b"") -> None:
        """
        Start relaying: register each transport as the other's producer,
        send the bytes each side sent before the relay existed, resume
        reading the client, start the idle check.  (L{joinRelay} calls
        this, after wiring the protocols to the relay.)
        """
        for conn in (self._clientConn, self._upstreamConn):
            if conn is not None and conn.bufferSize < RELAY_BUFFER_SIZE:
                conn.bufferSize = RELAY_BUFFER_SIZE
        # Connection transports are consumers and push producers too, which
        # ITransport does not say.
        client, upstream = cast("_Transport", self.client), cast("_Transport", self.upstream)
        upstream.registerProducer(client, True)
        client.registerProducer(upstream, True)
        if fromClient:
            self.fromClient(fromClient)
        if fromUpstream:
            self.fromUpstream(fromUpstream)
        resume = getattr(self.client, "resumeProducing", None)
        if resume is not None:
            resume()
        idleTimeout = self.idleTimeout
        if idleTimeout and self.endedAt is None:
            self._idleMark = self.bytesUp + self.bytesDown
            self._idleSince = self.clock.seconds()
            self._sweeper = _IdleSweeper.forClock(self.clock, idleTimeout)
            self._sweeper.add(self)

    def _checkIdle(self, now: float) -> None:
        """
        Called by the idle sweeper every quarter of the idle timeout: close
        both sides when no byte moved for the idle timeout.
        """
        mark = self.bytesUp + self.bytesDown
        timeout = self.idleTimeout
        if mark != self._idleMark:
            self._idleMark = mark
            self._idleSince = now
        elif timeout is not None and now - self._idleSince >= timeout:
            self.abort("idle")

    # -- end of input (half-close)

    def clientReadLost(self) -> None:
        """
        The client finished sending (FIN): shut down writing upstream once
        what was relayed is flushed.
        """
        if self._clientReadDone:
            return
        self._clientReadDone = True
        if not self._upstreamReadDone:
            # (Otherwise both directions are done: _maybeDone closes both
            # sides now, and the close sends the FIN.)
            self._halfClose(self.upstream, self._upstreamConn, self._upstreamGone)
        self._maybeDone()

    def upstreamReadLost(self) -> None:
        """
        The upstream finished sending: shut down writing to the client.
        """
        if self._upstreamReadDone:
            return
        self._upstreamReadDone = True
        if not self._clientReadDone:
            self._halfClose(self.client, self._clientConn, self._clientGone)
        self._maybeDone()

    def _halfClose(self, transport: ITransport, conn: Optional[tcp.Connection], gone: bool) -> None:
        if gone:
            return
        conn = _idleTCP(conn)
        if conn is not None and not conn._writeDisconnecting:
            # Nothing to flush: shut down now, rather than registering for
            # writability to do it on the next loop iteration (what
            # loseWriteConnection does).
            conn._writeDisconnecting = True
            conn._writeDisconnected = True
            conn._closeWriteConnection()
            return
        loseWrite = getattr(transport, "loseWriteConnection", None)
        if loseWrite is None:
            return
        loseWrite()

    def _maybeDone(self) -> None:
        if self._clientReadDone and self._upstreamReadDone:
            self._close(self.client, self._clientConn, self._clientGone)
            self._close(self.upstream, self._upstreamConn, self._upstreamGone)

    # -- loss

    def clientLost(self, reason: Optional[Failure] = None) -> None:
        """
        The client connection is gone: close the upstream after flushing.
        """
        if self._clientGone:
            return
        self._clientGone = True
        self._clientReadDone = True
        self._close(self.upstream, self._upstreamConn, self._upstreamGone)
        self._maybeFinished()

    def upstreamLost(self, reason: Optional[Failure] = None) -> None:
        """
        The upstream connection is gone: close the client after flushing.
        """
        if self._upstreamGone:
            return
        self._upstreamGone = True
        self._upstreamReadDone = True
        self._close(self.client, self._clientConn, self._clientGone)
        self._maybeFinished()

    def _close(self, transport: ITransport, conn: Optional[tcp.Connection], gone: bool) -> None:
        if gone:
            return
        # A registered producer keeps loseConnection waiting for it.
        try:
            cast("_Transport", transport).unregisterProducer()
        except Exception:  # pragma: no cover - transports that lost it already
            pass
        conn = _idleTCP(conn)
        if conn is not None:
            # Nothing to flush: close now (as loseConnection does once its
            # buffer is empty), without a round trip through the poller.
            # No shutdown() before close(): the descriptor is ours alone
            # (close-on-exec), so close() itself sends the FIN; Twisted's
            # extra shutdown(SHUT_RDWR) only costs a system call.
            conn._shouldShutdown = False
            conn.disconnecting = True
            conn.connectionLost(_CONNECTION_DONE)
            return
        transport.loseConnection()

    def abort(self, reason: str = "aborted") -> None:
        """
        Close both sides now, discarding unsent bytes (idle timeout, drain
        deadline).
        """
        if self.closeReason is None:
            self.closeReason = reason
        for t, gone in ((self.client, self._clientGone), (self.upstream, self._upstreamGone)):
            if not gone:
                abortConnection = getattr(t, "abortConnection", None)
                if abortConnection is not None:
                    abortConnection()
                else:
                    t.loseConnection()

    def _maybeFinished(self) -> None:
        if self._clientGone and self._upstreamGone and self.endedAt is None:
            self.endedAt = self.clock.seconds()
            sweeper, self._sweeper = self._sweeper, None
            if sweeper is not None:
                sweeper.discard(self)
            # Dropped as it is called (once): it is usually a bound method
            # of the protocol that holds this relay, a reference cycle.
            onEnded, self.onEnded = self.onEnded, None
            if onEnded is not None:
                onEnded(self)
            if self._finished is not None:
                self._finished.callback(self)

    @property
    def finished(self) -> "defer.Deferred[Relay]":
        """
        A L{Deferred} firing with this relay when both sides are closed (made
        on first use; the modes use the cheaper L{onEnded} callback).
        """
        if self._finished is None:
            self._finished = defer.Deferred()
            if self.endedAt is not None:
                self._finished.callback(self)
        return self._finished

    @property
    def active(self) -> bool:
        """
        Whether either side is still open.
        """
        return self.endedAt is None


class _RelayClient(_Structural):
    """
    What L{joinRelay} needs of the accepted connection's protocol: its
    transport, a settable C{relay} (L{None} until joined) and a
    C{dataReceived} that the join replaces with L{Relay.fromClient}.
    """

    transport: Optional[ITransport]
    relay: Optional[Relay]

    def dataReceived(self, data: bytes) -> None:
        ...


def joinRelay(
    client: _RelayClient,
    upstream: RelayedProtocol,
    clock: IReactorTime,
    idleTimeout: Optional[float] = None,
    *,
    fromClient: bytes = b"",
    fromUpstream: bytes = b"",
    filterUp: Optional[Callable[[bytes], bytes]] = None,
    filterDown: Optional[Callable[[bytes], bytes]] = None,
    clientReadLost: bool = False,
    onEnded: Optional[Callable[[Relay], Any]] = None,
) -> Relay:
    """
    Join two connected protocols with a new L{Relay} and start it: each
    transport becomes the other's streaming producer, the bytes either side
    sent before the join go first, reading from the client is resumed, and
    an upstream half-close or loss that happened before the join is
    replayed.

    Afterwards both protocols' C{relay} attribute is the relay and their
    C{dataReceived} is the relay's per-chunk method (one call per chunk).

    @param client: the accepted connection's protocol.  It must have a
        C{relay} attribute (L{None} until now) and forward
        C{readConnectionLost} to L{Relay.clientReadLost} and
        C{connectionLost} to L{Relay.clientLost} once it is set (provide
        L{IHalfCloseableProtocol} for half-close to be forwarded).
    @param upstream: the upstream connection's protocol; what it received,
        and whether it half-closed or closed, before the join is taken over.
    @param clock: where the idle check's timer runs.
    @param idleTimeout: seconds without a byte in either direction before
        both connections are closed; L{None} or 0 for never.
    @param fromClient: bytes the client sent before the join (for example
        past a request head), relayed upstream first.
    @param fromUpstream: bytes the upstream sent before the join that its
        protocol no longer holds (for example past a response head),
        relayed to the client before those C{upstream} kept.
    @param filterUp: optional; called with each chunk from the client
        (C{fromClient} included), returns the bytes to send upstream (may
        be C{b""}).
    @param filterDown: the same for chunks from the upstream.
    @param clientReadLost: whether the client already half-closed: its FIN
        is forwarded upstream once the early bytes are.
    @param onEnded: L{None}, or a callable given the relay once, when both
        sides are closed (see L{Relay.onEnded}); it may run before this
        function returns, when the upstream was already gone.
    @return: the started relay.
    @raise ValueError: when either protocol is already relayed.
    """
    clientTransport = client.transport
    upstreamTransport = upstream.transport
    assert clientTransport is not None and upstreamTransport is not None
    if client.relay is not None or upstream.relay is not None:
        raise ValueError("this protocol is already relayed")
    relay = Relay(clientTransport, upstreamTransport, clock, idleTimeout, filterUp, filterDown)
    relay.onEnded = onEnded
    client.relay = relay
    upstream.relay = relay
    # Instance attributes shadow the classes' methods: from here each chunk
    # costs one Python call.  (Assigning to a method, which mypy forbids, is
    # the point here.)
    client.dataReceived = relay.fromClient  # type: ignore[method-assign]
    upstream.dataReceived = relay.fromUpstream  # type: ignore[method-assign]
    kept = upstream.takePending()
    relay.start(fromClient, fromUpstream + kept if kept else fromUpstream)
    # What the upstream reported while it had no relay to tell.
    if upstream._lostReason is not None:
        relay.upstreamLost(upstream._lostReason)
    elif upstream._readLost:
        relay.upstreamReadLost()
    if clientReadLost:
        relay.clientReadLost()
    return relay
