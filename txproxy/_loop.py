# -*- test-case-name: tests.test_loop -*-
"""
A leaner event dispatch for Twisted's epoll reactor.

L{EPollReactor.doPoll} wraps every ready descriptor's C{doRead}/C{doWrite}
in C{log.callWithLogger}, which asks the descriptor for its C{logPrefix}
and pushes a log context (C{{"system": prefix}}) around the call, so that
legacy C{twisted.python.log.msg} lines name the connection they came from.
For a proxy that is two to three Python calls and two dictionary pushes per
event, on every relayed chunk and every accepted connection: about 8% of
the CPU of a relay of small messages on CPython (measured with cProfile and
C{bench/bench_tcp.py}).  txproxy logs through C{twisted.logger} with
explicit fields, so it does not need that context.

L{streamline} gives one reactor I{instance} a dispatch loop that does the
same work as C{doPoll} + C{_doReadOrWrite} without the log context: the
same poll call, the same disconnection rules (a read event is handled
before a hang-up, a half-close reaches C{readConnectionLost}), the same
handling of an exception raised by C{doRead}/C{doWrite} (logged, the
descriptor disconnected).  The only visible difference: legacy log lines
emitted from inside an event handler carry the system C{"-"} instead of the
connection's prefix.  Other reactor classes are left alone.

L{readInsteadOfWrite} is the other saving on such a reactor: a dialled
connection that was watched for writability while connecting is watched for
input instead with one C{epoll_ctl} call, where C{startReading()} +
C{stopWriting()} cost two.

L{AfterEvents} is the third: work that is cheaper done once for all the
events of one poll than once per event.  An HTTP/2 connection answers its
streams as their upstream responses arrive, each on its own upstream
connection, often several in one poll; it writes them to the client with
one C{send} (and, over TLS, one record) after the poll's events instead of
one per response (L{txproxy.h2._server.H2ServerConnection.flush}).

The fourth is PyPy's: there C{socket.recv(65536)} (Twisted's C{doRead})
takes its 64 KiB from the garbage collector's nursery for every read, so a
loaded proxy ran a minor collection every few hundred reads, each copying
every object of the requests in flight.  The lean loop reads a plain TCP
connection with C{recv_into} one buffer of its own instead and hands the
protocol a C{bytes} copy of what arrived (L{READ_INTO}, L{streamline});
a connection that just had a large read (a bulk transfer) is read through
Twisted's C{doRead} for a while, where the received string is the data.
"""

from __future__ import annotations

import errno
import platform
import sys
from errno import EWOULDBLOCK
from typing import Any, Callable, Dict, List, Optional

from twisted.logger import Logger

__all__ = ["READ_INTO", "AfterEvents", "afterEventsOf", "readInsteadOfWrite", "streamline"]

log = Logger()


class AfterEvents:
    """
    Calls to make once the events of the current poll have all been
    dispatched, before the reactor runs its timers and polls again.

    Only the lean loop (L{streamline}) runs them.  Outside its dispatch (in
    a timed call, before the reactor runs, on another reactor) L{add}
    refuses, and the caller does its work at once: nothing waits for a poll
    that might not come before the next timer.

    @ivar dispatching: whether the loop is handing out a poll's events now.
    """

    __slots__ = ("dispatching", "pending")

    def __init__(self) -> None:
        self.dispatching = False
        self.pending: List[Callable[[], Any]] = []

    def add(self, call: Callable[[], Any]) -> bool:
        """
        Run C{call} (no arguments) after this poll's events.

        @return: L{False}, and C{call} is not kept, when no poll's events
            are being dispatched: do the work now.
        """
        if not self.dispatching:
            return False
        self.pending.append(call)
        return True

    def run(self) -> None:
        """
        End the dispatch and make the calls that were added, in order; one
        that raises is logged and the others are made.
        """
        self.dispatching = False
        pending = self.pending
        if not pending:
            return
        self.pending = []
        for call in pending:
            try:
                call()
            except BaseException:
                log.failure("Unhandled error in {call!r} after a poll's events", call=call)


def afterEventsOf(reactor: Any) -> Optional[AfterEvents]:
    """
    The L{AfterEvents} of C{reactor} when it has the lean loop
    (L{streamline}), else L{None}.
    """
    return getattr(reactor, "_txproxyAfterEvents", None)


#: The most one read of a TCP connection takes (Twisted's
#: C{tcp.Connection.bufferSize}, 64 KiB); a transport whose C{bufferSize}
#: is smaller gets no more than that.
_RECV_SIZE = 65536

#: A read of at least this many bytes makes the next L{_LARGE_RUN} reads
#: of that connection Twisted's C{doRead} (see L{_leanDoPoll}'s C{large}).
_LARGE_READ = 16384
_LARGE_RUN = 64

#: Whether L{streamline} reads TCP connections into its own buffer by
#: default: on PyPy, where C{socket.recv(65536)} allocates its 64 KiB in
#: the young generation whatever arrives, so that under load a minor
#: collection came every few hundred reads and copied everything in flight
#: each time.  CPython's C{recv} costs a C{malloc} and a C{realloc}, no
#: less than a copy out of a buffer (measured: 2.08 against 2.19 us a read
#: of 200 bytes), so it keeps Twisted's C{doRead}.
READ_INTO = platform.python_implementation() == "PyPy"


def _leanDoPoll(reactor: Any, after: AfterEvents, readIntoBuffer: bool) -> Any:
    """
    Build the C{doIteration} replacement for C{reactor}.
    """
    from select import EPOLLIN

    from twisted.internet import main, tcp

    poll = reactor._poller.poll
    selectables = reactor._selectables
    reads = reactor._reads
    drdw = reactor._doReadOrWrite
    disconnect = reactor._disconnectSelectable
    # Twisted's doRead, which readInto replaces (None: no replacing).
    plainRead = tcp.Connection.doRead if readIntoBuffer else None
    connectionLost = main.CONNECTION_LOST
    # One receive buffer for every TCP read of this loop (see readInto).
    size = _RECV_SIZE
    buffer = bytearray(size)
    view = memoryview(buffer)

    # Descriptors that had a large read (a bulk transfer), with how many
    # more reads go through Twisted's doRead, whose recv string is the
    # data, rather than being copied out of the buffer (copying every
    # 64 KiB read cost PyPy's relay a quarter of its bulk throughput).
    # Then one read into the buffer again decides.  A descriptor number
    # reused by a new connection costs that connection at most that many
    # reads of the old kind.
    large: Dict[int, int] = {}

    def readInto(conn: Any, fd: int) -> Any:
        # tcp.Connection.doRead, receiving into the loop's buffer: the
        # same data, errors and result.
        wanted = conn.bufferSize
        try:
            n = conn.socket.recv_into(buffer, wanted if wanted < size else size)
        except OSError as se:
            if se.args[0] == EWOULDBLOCK:
                return None
            return connectionLost
        if n >= _LARGE_READ:
            large[fd] = _LARGE_RUN
        return conn._dataReceived(view[:n].tobytes())

    def doPoll(timeout: Any) -> None:
        if timeout is None:
            timeout = -1
        try:
            events = poll(timeout, len(selectables))
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        after.dispatching = True
        try:
            dispatch(events)
        finally:
            after.run()

    def dispatch(events: Any) -> None:
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is None:
                continue
            try:
                if event == EPOLLIN and fd in reads:
                    # The common case, inlined: input to read.
                    try:
                        if type(selectable).doRead is not plainRead:
                            why = selectable.doRead()
                        else:
                            left = large.get(fd)
                            if left is None:
                                why = readInto(selectable, fd)
                            else:
                                if left > 1:
                                    large[fd] = left - 1
                                else:
                                    del large[fd]
                                why = selectable.doRead()
                    except BaseException:
                        why = sys.exc_info()[1]
                        log.failure("Unhandled error reading from {selectable!r}", selectable=selectable)
                    if why:
                        disconnect(selectable, why, True)
                else:
                    drdw(selectable, fd, event)
            except BaseException:
                # What callWithLogger did: log, and keep the loop running.
                log.failure("Unhandled error handling an event of {selectable!r}", selectable=selectable)

    return doPoll


def streamline(reactor: Any, readInto: Optional[bool] = None) -> bool:
    """
    Give C{reactor} the lean dispatch loop if it is Twisted's
    L{EPollReactor} (exactly that class, so that a subclass's own loop is
    respected).

    @param readInto: whether the loop reads plain TCP connections (a
        L{twisted.internet.tcp.Connection} whose C{doRead} is Twisted's)
        with C{recv_into} one buffer of its own, one C{bytes} copy of what
        arrived handed to the protocol, as C{doRead} would hand it, rather
        than through C{doRead}'s C{socket.recv}.  L{None}: L{READ_INTO}
        (on PyPy only).  One read takes at most 64 KiB, or the
        transport's C{bufferSize} when that is less.

    @return: whether it was installed.
    """
    try:
        from twisted.internet.epollreactor import EPollReactor
    except ImportError:  # pragma: no cover - not Linux
        return False
    if type(reactor) is not EPollReactor or getattr(reactor, "_txproxyLoop", False):
        return False
    # The reactor's own loop, replaced on this instance (not on the class).
    after = reactor._txproxyAfterEvents = AfterEvents()  # type: ignore[attr-defined]
    reactor.doIteration = _leanDoPoll(reactor, after, READ_INTO if readInto is None else readInto)  # type: ignore[method-assign]
    reactor._txproxyLoop = True  # type: ignore[attr-defined]  # our mark: installed once
    return True


def readInsteadOfWrite(selectable: Any) -> None:
    """
    Stop watching C{selectable} for writability and watch it for input
    instead: C{selectable.startReading(); selectable.stopWriting()}, in
    one C{epoll_ctl} when its reactor has the lean loop (L{streamline}) and
    the descriptor is watched for writing only; otherwise through those
    two calls.
    """
    reactor = selectable.reactor
    if getattr(reactor, "_txproxyLoop", False):
        from select import EPOLLIN

        fd = selectable.fileno()
        writes = reactor._writes
        reads = reactor._reads
        if fd in writes and fd not in reads:
            # What addReader + removeWriter do to the poller and the
            # reactor's tables, as one modification.
            reactor._poller.modify(fd, EPOLLIN)
            writes.discard(fd)
            reads.add(fd)
            return
    selectable.startReading()
    selectable.stopWriting()
