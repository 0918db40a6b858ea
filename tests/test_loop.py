# -*- test-case-name: tests.test_loop -*-
"""
Tests for L{txproxy._loop}: the lean dispatch loop keeps the epoll
reactor's event semantics.  Each test builds its own L{EPollReactor} (not
the global one) and drives its C{doIteration} by hand over a socketpair.
"""

from __future__ import annotations

import platform
import select
import socket
from typing import Any, List

from twisted.internet import main, tcp
from twisted.internet.abstract import FileDescriptor
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.interfaces import IHalfCloseableDescriptor
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from txproxy import _loop
from txproxy._loop import READ_INTO, AfterEvents, afterEventsOf, readInsteadOfWrite, streamline


@implementer(IHalfCloseableDescriptor)
class _Reader(FileDescriptor):
    """
    Reads one end of a socketpair and records what happened.
    """

    def __init__(self, reactor: Any, sock: socket.socket, fail: bool = False) -> None:
        super().__init__(reactor)
        self.sock = sock
        self.fail = fail
        self.events: List[Any] = []

    def fileno(self) -> int:
        return self.sock.fileno()

    def doRead(self) -> Any:
        if self.fail:
            raise ZeroDivisionError("bug in doRead")
        data = self.sock.recv(100)
        if not data:
            return main.CONNECTION_DONE
        self.events.append(data)
        return None

    def doWrite(self) -> Any:
        self.events.append("writable")
        self.stopWriting()
        return None

    def readConnectionLost(self, reason: Failure) -> None:
        self.events.append(("readLost", reason.type))
        self.stopReading()

    def connectionLost(self, reason: Failure) -> None:
        self.events.append(("lost", reason.type))
        super().connectionLost(reason)


class StreamlineTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = EPollReactor()
        self.addCleanup(self.reactor._poller.close)
        self.a, self.b = socket.socketpair()
        self.addCleanup(self.a.close)
        self.addCleanup(self.b.close)
        self.a.setblocking(False)

    def test_onlyPlainEPollReactor(self) -> None:
        """
        Only an L{EPollReactor} instance gets the loop, once.
        """
        self.assertTrue(streamline(self.reactor))
        self.assertFalse(streamline(self.reactor))

        class Custom(EPollReactor):
            pass

        other = Custom()
        self.addCleanup(other._poller.close)
        self.assertFalse(streamline(other))
        self.assertFalse(streamline(object()))

    def test_readsAndWrites(self) -> None:
        """
        Input reaches C{doRead}; writability reaches C{doWrite}.
        """
        streamline(self.reactor)
        reader = _Reader(self.reactor, self.a)
        self.reactor.addReader(reader)
        self.b.send(b"hello")
        self.reactor.doIteration(0)
        self.assertEqual(reader.events, [b"hello"])
        self.reactor.addWriter(reader)
        self.reactor.doIteration(0)
        self.assertEqual(reader.events, [b"hello", "writable"])
        self.reactor.removeReader(reader)

    def test_halfClose(self) -> None:
        """
        End-of-input on a half-closeable descriptor is a
        C{readConnectionLost}, as with the stock loop.
        """
        streamline(self.reactor)
        reader = _Reader(self.reactor, self.a)
        self.reactor.addReader(reader)
        self.b.shutdown(socket.SHUT_WR)
        self.reactor.doIteration(0)
        self.assertEqual(reader.events, [("readLost", main.CONNECTION_DONE.__class__)])

    def test_exceptionDisconnectsAndLoopGoesOn(self) -> None:
        """
        An exception from C{doRead} is logged and disconnects that
        descriptor; the loop keeps running for the others.
        """
        streamline(self.reactor)
        bad = _Reader(self.reactor, self.a, fail=True)
        c, d = socket.socketpair()
        self.addCleanup(c.close)
        self.addCleanup(d.close)
        c.setblocking(False)
        good = _Reader(self.reactor, c)
        self.reactor.addReader(bad)
        self.reactor.addReader(good)
        self.b.send(b"x")
        d.send(b"y")
        self.reactor.doIteration(0)
        self.assertEqual(good.events, [b"y"])
        self.assertEqual(bad.events, [("lost", ZeroDivisionError)])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertNotIn(bad, self.reactor.getReaders())
        self.reactor.removeReader(good)


class AfterEventsTests(SynchronousTestCase):
    """
    L{AfterEvents}: calls made once a poll's events are all dispatched.
    """

    def setUp(self) -> None:
        self.reactor = EPollReactor()
        self.addCleanup(self.reactor._poller.close)

    def _pair(self) -> Any:
        a, b = socket.socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        a.setblocking(False)
        return a, b

    def test_onlyWithTheLeanLoop(self) -> None:
        """
        A reactor has L{AfterEvents} once it has the lean loop; other
        objects have none.
        """
        self.assertIsNone(afterEventsOf(self.reactor))
        streamline(self.reactor)
        self.assertIsInstance(afterEventsOf(self.reactor), AfterEvents)
        self.assertIsNone(afterEventsOf(object()))

    def test_refusedOutsideDispatch(self) -> None:
        """
        Outside a poll's dispatch, C{add} refuses and keeps nothing: the
        caller does its work at once.
        """
        streamline(self.reactor)
        after = afterEventsOf(self.reactor)
        assert after is not None
        calls: List[str] = []
        self.assertFalse(after.add(lambda: calls.append("x")))
        self.reactor.doIteration(0)
        self.assertEqual(calls, [])
        self.assertEqual(after.pending, [])

    def test_afterEveryEventOfThePoll(self) -> None:
        """
        A call added while one descriptor's event is handled runs after the
        events of every descriptor ready in the same poll, once, and
        before C{doIteration} returns.
        """
        streamline(self.reactor)
        after = afterEventsOf(self.reactor)
        assert after is not None
        log: List[Any] = []

        class Adding(_Reader):
            def doRead(self) -> Any:
                result = super().doRead()
                log.append(("read", self.events[-1]))
                self.reactor_after.add(lambda: log.append("after"))
                return result

        readers = []
        for label in (b"1", b"2"):
            a, b = self._pair()
            reader = Adding(self.reactor, a)
            reader.reactor_after = after  # type: ignore[attr-defined]
            self.reactor.addReader(reader)
            readers.append(reader)
            b.send(label)
        self.reactor.doIteration(0)
        self.assertEqual(sorted(log[:2]), [("read", b"1"), ("read", b"2")])
        self.assertEqual(log[2:], ["after", "after"])
        self.assertFalse(after.dispatching)
        self.assertEqual(after.pending, [])
        self.reactor.doIteration(0)
        self.assertEqual(len(log), 4)
        for reader in readers:
            self.reactor.removeReader(reader)

    def test_failingCallLoggedOthersRun(self) -> None:
        """
        A call that raises is logged; the calls after it are made, and the
        next poll dispatches normally.
        """
        after = AfterEvents()
        calls: List[str] = []
        after.dispatching = True
        after.add(lambda: 1 // 0)
        after.add(lambda: calls.append("second"))
        after.run()
        self.assertEqual(calls, ["second"])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertFalse(after.dispatching)
        self.assertFalse(after.add(lambda: calls.append("late")))

    def test_runsWhenDispatchRaises(self) -> None:
        """
        Even when dispatching raises past the per-event handling (here:
        iterating over the poll's result), the calls added so far run and
        the dispatch ends.
        """
        streamline(self.reactor)
        after = afterEventsOf(self.reactor)
        assert after is not None
        calls: List[str] = []
        poller = self.reactor._poller

        class Events:
            def __iter__(self) -> Any:
                # A call added during the dispatch, which then fails.
                after.add(lambda: calls.append("ran"))
                raise TypeError("not events")

        class Broken:
            def poll(self, timeout: Any, n: int) -> Any:
                return Events()

            def __getattr__(self, name: str) -> Any:
                return getattr(poller, name)

        # The loop looked the poller's method up when it was built: build
        # it again over the broken poller.
        self.reactor._poller = Broken()
        try:
            doPoll = _loop._leanDoPoll(self.reactor, after, False)
            after.dispatching = False
            self.assertRaises(TypeError, doPoll, 0)
        finally:
            self.reactor._poller = poller
        self.assertEqual(calls, ["ran"])
        self.assertFalse(after.dispatching)


class ReadInsteadOfWriteTests(SynchronousTestCase):
    """
    L{readInsteadOfWrite} moves a descriptor from the write set to the read
    set, in one poller call on a streamlined reactor.
    """

    def setUp(self) -> None:
        self.reactor = EPollReactor()
        self.addCleanup(self.reactor._poller.close)
        self.a, self.b = socket.socketpair()
        self.addCleanup(self.a.close)
        self.addCleanup(self.b.close)
        self.a.setblocking(False)

    def countModifications(self) -> List[Any]:
        calls: List[Any] = []
        poller = self.reactor._poller

        class Counting:
            def __getattr__(self, name: str) -> Any:
                method = getattr(poller, name)

                def counted(*args: Any) -> Any:
                    calls.append(name)
                    return method(*args)

                return counted

        self.reactor._poller = Counting()  # type: ignore[assignment]
        self.addCleanup(setattr, self.reactor, "_poller", poller)
        return calls

    def check(self, streamlined: bool, expectedCalls: List[str]) -> None:
        if streamlined:
            self.assertTrue(streamline(self.reactor))
        reader = _Reader(self.reactor, self.a)
        self.reactor.addWriter(reader)
        calls = self.countModifications()
        readInsteadOfWrite(reader)
        self.assertEqual(calls, expectedCalls)
        self.assertIn(reader, self.reactor.getReaders())
        self.assertNotIn(reader, self.reactor.getWriters())
        # The poller agrees: input is reported, writability is not.
        self.b.send(b"hello")
        self.reactor.doIteration(0)
        self.assertEqual(reader.events, [b"hello"])
        self.reactor.removeReader(reader)

    def test_streamlined(self) -> None:
        """
        On a reactor with the lean loop: one modification.
        """
        self.check(True, ["modify"])

    def test_plain(self) -> None:
        """
        On another reactor: C{startReading} and C{stopWriting}, as before.
        """
        self.check(False, ["modify", "modify"])

    def test_alreadyReading(self) -> None:
        """
        A descriptor watched for both is left to C{startReading} and
        C{stopWriting}.
        """
        streamline(self.reactor)
        reader = _Reader(self.reactor, self.a)
        self.reactor.addWriter(reader)
        self.reactor.addReader(reader)
        readInsteadOfWrite(reader)
        self.assertIn(reader, self.reactor.getReaders())
        self.assertNotIn(reader, self.reactor.getWriters())
        self.reactor.removeReader(reader)


class _Recorder(Protocol):
    """
    Records what a TCP transport delivers.
    """

    def __init__(self) -> None:
        self.received: List[bytes] = []
        self.lost: List[Any] = []

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason: Failure) -> None:
        self.lost.append(reason.type)


class _Watched:
    """
    A socket that records which receive calls it was given (C{calls}),
    passing them to C{sock}.
    """

    def __init__(self, sock: socket.socket, calls: List[str]) -> None:
        self.sock = sock
        self.calls = calls

    def fileno(self) -> int:
        return self.sock.fileno()

    def recv(self, *args: Any) -> bytes:
        self.calls.append("recv")
        return self.sock.recv(*args)

    def recv_into(self, *args: Any) -> int:
        self.calls.append("recv_into")
        return self.sock.recv_into(*args)


class TCPReadTests(SynchronousTestCase):
    """
    The lean loop with C{readInto} (PyPy's default) reads a plain TCP
    transport (a L{tcp.Connection} whose C{doRead} is Twisted's) into one
    buffer of its own rather than through C{socket.recv}: the protocol sees
    the same data and the same endings.
    """

    def setUp(self) -> None:
        self.reactor = EPollReactor()
        self.addCleanup(self.reactor._poller.close)
        streamline(self.reactor, readInto=True)
        self.a, self.b = socket.socketpair()
        self.addCleanup(self.b.close)
        self.a.setblocking(False)
        self.protocol = _Recorder()
        self.conn = tcp.Connection(self.a, self.protocol, self.reactor)
        self.protocol.makeConnection(self.conn)
        self.conn.startReading()
        self.addCleanup(self._close)

    def _close(self) -> None:
        if self.conn.connected:
            self.conn.stopReading()
            self.conn.connected = False
        self.a.close()

    def _iterate(self, times: int = 1) -> None:
        for _ in range(times):
            self.reactor.doIteration(0)

    def test_data(self) -> None:
        """
        Each read's bytes reach C{dataReceived} as a C{bytes} object of their
        own: a later read into the shared buffer does not change them.
        """
        self.b.send(b"first")
        self._iterate()
        self.b.send(b"2nd")
        self._iterate()
        self.assertEqual(self.protocol.received, [b"first", b"2nd"])
        self.assertIs(type(self.protocol.received[0]), bytes)

    def test_atMostBufferSize(self) -> None:
        """
        One read takes at most the transport's C{bufferSize} (and never
        more than 64 KiB); the rest comes with the next events.
        """
        payload = bytes(range(256)) * 400  # 102,400 bytes
        self.b.setblocking(False)
        sent = self.b.send(payload)
        self.conn.bufferSize = 1000
        self._iterate()
        self.assertEqual([len(d) for d in self.protocol.received], [1000])
        self.conn.bufferSize = 10**6
        self._iterate()
        self.assertEqual(len(self.protocol.received[1]), min(65536, sent - 1000))
        while sum(map(len, self.protocol.received)) < sent:
            self._iterate()
        self.assertEqual(b"".join(self.protocol.received), payload[:sent])

    def test_endOfInput(self) -> None:
        """
        The peer's close is C{connectionDone}.
        """
        self.b.close()
        self._iterate()
        self.assertEqual(self.protocol.lost, [main.CONNECTION_DONE.__class__])

    def test_reset(self) -> None:
        """
        A receive error other than C{EAGAIN} (here C{ECONNRESET}: the peer
        closed with our data unread) is C{connectionLost}.
        """
        self.a.send(b"unread")
        self.b.close()
        self._iterate()
        self.assertEqual(self.protocol.lost, [main.CONNECTION_LOST.__class__])

    def test_nothingToRead(self) -> None:
        """
        C{EAGAIN} (an event with nothing to read) changes nothing.
        """
        selectables = self.reactor._selectables
        self.assertIs(selectables[self.a.fileno()], self.conn)
        # Dispatch a read event by hand: the loop's own poll would not
        # report one.
        self.reactor._poller.unregister(self.a.fileno())
        self.b.send(b"x")
        self.a.recv(1)
        self.reactor._poller.register(self.a.fileno(), select.EPOLLIN)
        self.b.send(b"y")
        self.a.recv(1)
        self._iterate()
        self.assertEqual(self.protocol.received, [])
        self.assertEqual(self.protocol.lost, [])

    def test_ownDoRead(self) -> None:
        """
        A connection class with a C{doRead} of its own gets it called.
        """
        calls: List[int] = []

        class Own(tcp.Connection):
            def doRead(self) -> Any:
                calls.append(1)
                return super().doRead()

        self.conn.__class__ = Own
        self.b.send(b"mine")
        self._iterate()
        self.assertEqual((calls, self.protocol.received), ([1], [b"mine"]))

    def test_intoTheLoopsBuffer(self) -> None:
        """
        The read is a C{recv_into}, not a C{recv} (which on PyPy allocates
        a 64 KiB string in the young generation for every read, however
        little arrives: a minor collection every 500 reads).
        """
        calls: List[str] = []
        self.conn.socket = _Watched(self.a, calls)
        self.b.send(b"data")
        self._iterate()
        self.assertEqual((calls, self.protocol.received), (["recv_into"], [b"data"]))

    def test_defaultOnPyPyOnly(self) -> None:
        """
        Without C{readInto}, the loop reads into its buffer on PyPy only;
        C{readInto=False} keeps Twisted's C{doRead}.
        """
        self.assertEqual(READ_INTO, platform.python_implementation() == "PyPy")
        for readInto, expected in ((None, ["recv_into"] if READ_INTO else ["recv"]), (False, ["recv"])):
            reactor = EPollReactor()
            self.addCleanup(reactor._poller.close)
            streamline(reactor, readInto=readInto)
            c, d = socket.socketpair()
            self.addCleanup(c.close)
            self.addCleanup(d.close)
            calls: List[str] = []
            protocol = _Recorder()
            conn = tcp.Connection(c, protocol, reactor)
            conn.socket = _Watched(c, calls)
            protocol.makeConnection(conn)
            conn.startReading()
            d.send(b"z")
            reactor.doIteration(0)
            conn.stopReading()
            self.assertEqual((calls, protocol.received), (expected, [b"z"]))

    def test_largeReadsThenRecv(self) -> None:
        """
        After a read of 16 KiB or more, a connection's next 64 reads are
        Twisted's C{doRead} (its C{recv} string handed on, no copy out of
        the buffer); then a read into the buffer decides again.
        """
        calls: List[str] = []
        self.conn.socket = _Watched(self.a, calls)
        chunks = [b"x" * 20000] + [b"%d" % i for i in range(_loop._LARGE_RUN)] + [b"a", b"b"]
        sent = 0
        for chunk in chunks:
            self.b.sendall(chunk)
            sent += len(chunk)
            for _ in range(10):
                if sum(map(len, self.protocol.received)) == sent:
                    break
                self._iterate()
        self.assertEqual(calls, ["recv_into"] + ["recv"] * _loop._LARGE_RUN + ["recv_into", "recv_into"])
        self.assertEqual(b"".join(self.protocol.received), b"".join(chunks))
