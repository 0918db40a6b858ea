"""
Tests for L{txproxy._timers}: many timers on one clock call, on a fake
clock.
"""

from __future__ import annotations

from typing import Any, List

from twisted.internet import error
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from txproxy._timers import TimerGroup


class TimerGroupTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.group = TimerGroup(self.clock)
        self.fired: List[Any] = []

    def later(self, seconds: float, name: Any) -> Any:
        return self.group.callLater(seconds, self.fired.append, name)

    def test_runInTimeOrderOnOneCall(self) -> None:
        """
        Timers run at their times, in their times' order, with their
        arguments; the clock holds one call however many timers there are.
        """
        for index, seconds in enumerate([5, 1, 3, 1.5, 4, 2]):
            self.later(seconds, (seconds, index))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertEqual(len(self.group), 6)
        self.clock.advance(0.99)
        self.assertEqual(self.fired, [])
        self.clock.advance(0.01)
        self.assertEqual(self.fired, [(1, 1)])
        self.clock.advance(2.5)
        self.assertEqual(self.fired, [(1, 1), (1.5, 3), (2, 5), (3, 2)])
        self.clock.advance(10)
        self.assertEqual([name for name, _ in self.fired], [1, 1.5, 2, 3, 4, 5])
        self.assertEqual((len(self.group), self.clock.getDelayedCalls()), (0, []))

    def test_sameTimeAfterRounding(self) -> None:
        """
        A timer runs when the clock reaches its time exactly (the group's
        call is set from a delay: its time is computed again), at start
        times small and large.
        """
        for start, seconds in [(0.1, 0.2), (0.1, 10.2), (1e9 + 0.3, 0.7), (12.345, 60.0), (0.7, 0.1)]:
            clock = Clock()
            clock.advance(start)
            group = TimerGroup(clock)
            fired: List[float] = []
            group.callLater(seconds, fired.append, seconds)
            clock.advance(seconds)
            self.assertEqual(fired, [seconds], (start, seconds))

    def test_cancel(self) -> None:
        """
        A cancelled timer does not run; cancelling it again, or one that
        ran, raises as a C{DelayedCall} does.
        """
        kept = self.later(2, "kept")
        dropped = self.later(1, "dropped")
        dropped.cancel()
        self.assertFalse(dropped.active())
        self.assertRaises(error.AlreadyCancelled, dropped.cancel)
        self.assertRaises(error.AlreadyCancelled, dropped.reset, 5)
        self.clock.advance(3)
        self.assertEqual(self.fired, ["kept"])
        self.assertFalse(kept.active())
        self.assertRaises(error.AlreadyCalled, kept.cancel)
        self.assertRaises(error.AlreadyCalled, kept.reset, 1)
        self.assertRaises(error.AlreadyCalled, kept.delay, 1)

    def test_resetLaterAndEarlier(self) -> None:
        """
        C{reset} moves a timer to C{seconds} from now, later (the group's
        call fires early, finds nothing due and is set again) or earlier
        (the group's call moves with it).
        """
        timer = self.later(5, "a")
        self.clock.advance(4)
        timer.reset(5)
        self.assertEqual(timer.getTime(), 9)
        self.clock.advance(1)
        self.assertEqual(self.fired, [])
        self.assertEqual([call.getTime() for call in self.clock.getDelayedCalls()], [9])
        self.clock.advance(3.9)
        self.assertEqual(self.fired, [])
        timer.reset(0.05)
        self.clock.advance(0.05)
        self.assertEqual(self.fired, ["a"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_delay(self) -> None:
        """
        C{delay} adds to a timer's time.
        """
        timer = self.later(1, "a")
        timer.delay(2)
        self.clock.advance(2.5)
        self.assertEqual(self.fired, [])
        self.clock.advance(0.5)
        self.assertEqual(self.fired, ["a"])

    def test_errorIsLoggedOthersRun(self) -> None:
        """
        A timer's function that raises is logged; the timers due with it
        run, and later ones still do.
        """
        def boom() -> None:
            raise ZeroDivisionError("timer")

        self.later(1, "before")
        self.group.callLater(1, boom)
        self.later(1, "after")
        self.later(5, "later")
        self.clock.advance(1)
        self.assertEqual(self.fired, ["before", "after"])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.clock.advance(4)
        self.assertEqual(self.fired, ["before", "after", "later"])

    def test_timerSetByATimer(self) -> None:
        """
        A timer set while the group runs its due timers runs at its time,
        before timers set earlier for later.
        """
        self.group.callLater(1, lambda: self.later(0.5, "inner"))
        self.later(3, "outer")
        self.clock.advance(1)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(0.5)
        self.assertEqual(self.fired, ["inner"])
        self.clock.advance(1.5)
        self.assertEqual(self.fired, ["inner", "outer"])

    def test_stop(self) -> None:
        """
        After C{stop}, no timer runs and the clock holds nothing of the
        group.
        """
        self.later(1, "a")
        self.group.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.later(1, "b")
        self.clock.advance(5)
        self.assertEqual((self.fired, self.clock.getDelayedCalls()), ([], []))
