# -*- test-case-name: tests.test_loop -*-
"""
Tests for L{txproxy._loop}: the lean dispatch loop keeps the epoll
reactor's event semantics.  Each test builds its own L{EPollReactor} (not
the global one) and drives its C{doIteration} by hand over a socketpair.
"""

from __future__ import annotations

import socket
from typing import Any, List

from twisted.internet import main
from twisted.internet.abstract import FileDescriptor
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.interfaces import IHalfCloseableDescriptor
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from txproxy._loop import AfterEvents, afterEventsOf, readInsteadOfWrite, streamline


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
        from txproxy import _loop

        self.reactor._poller = Broken()
        try:
            doPoll = _loop._leanDoPoll(self.reactor, after)
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
