# -*- test-case-name: tests.test_timers -*-
"""
Many timers on one clock call (L{TimerGroup}): the timers of the
protocols serving one HTTP/2 connection's streams.

Each stream's protocol runs one timer at a time (its exchange's, see
L{txproxy.exchange._state}), set when the request is sent upstream and
cancelled when it is answered: on a reactor, a new C{DelayedCall} per
stream, pushed onto the reactor's heap (Python comparisons, a few per
push with hundreds of streams in flight) and later compacted out of it.
An HTTP/1.1 connection moves its one C{DelayedCall} instead
(C{reset}), which costs none of that.  A group gives its streams the same
economy: it keeps one clock call, at its earliest timer or before, and a
timer is set, moved or cancelled without touching the clock; when the
call fires, the timers due run (in the order of their times) and the call
is set again for the earliest left.  A timer moved later than the call
costs a wake-up that finds nothing due, at most one per timer period.

A L{GroupTimer} answers as the C{IDelayedCall} that C{callLater} returns
(C{getTime}, C{active}, C{cancel}, C{reset}, C{delay}), including
C{AlreadyCalled} and C{AlreadyCancelled}.  An exception raised by one
timer's function is logged; the others still run, and the group's call is
set again.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

from twisted.internet import error
from twisted.logger import Logger

__all__ = ["GroupTimer", "TimerGroup"]

log = Logger()

#: A timer this close to its time when the group's call fires is due: the
#: call's time is computed again from a delay, and must not miss the timer
#: by a rounding error (a miss would cost one more wake-up, or on a fake
#: clock one more advance).
_EPSILON = 1e-6


class GroupTimer:
    """
    One timer of a L{TimerGroup}: C{func(*args)} at C{time}.
    """

    __slots__ = ("_group", "time", "_func", "_args", "cancelled", "called")

    def __init__(self, group: "TimerGroup", time: float, func: Callable[..., Any], args: Any) -> None:
        self._group = group
        self.time = time
        self._func = func
        self._args = args
        self.cancelled = False
        self.called = False

    def getTime(self) -> float:
        return self.time

    def active(self) -> bool:
        return not (self.cancelled or self.called)

    def _check(self) -> None:
        if self.cancelled:
            raise error.AlreadyCancelled()
        if self.called:
            raise error.AlreadyCalled()

    def cancel(self) -> None:
        self._check()
        self.cancelled = True
        self._group._timers.pop(self, None)

    def reset(self, seconds: float) -> None:
        self._check()
        group = self._group
        self.time = when = group._clock.seconds() + seconds
        if when < group._at:
            group._schedule(when)

    def delay(self, seconds: float) -> None:
        self._check()
        self.time += seconds
        group = self._group
        if self.time < group._at:
            group._schedule(self.time)

    def __repr__(self) -> str:
        state = "cancelled" if self.cancelled else "called" if self.called else "pending"
        return f"<GroupTimer {state} at {self.time} {self._func!r}>"


class TimerGroup:
    """
    Timers (L{GroupTimer}) sharing one call on C{clock} (an
    L{twisted.internet.interfaces.IReactorTime}).
    """

    def __init__(self, clock: Any) -> None:
        self._clock = clock
        #: The pending timers (a dict as an ordered set).
        self._timers: Dict[GroupTimer, None] = {}
        #: The clock's call, and its time (infinity when there is none).
        self._call: Any = None
        self._at = float("inf")
        self._stopped = False

    def __len__(self) -> int:
        return len(self._timers)

    def callLater(self, seconds: float, func: Callable[..., Any], *args: Any) -> GroupTimer:
        """
        As C{IReactorTime.callLater} (positional arguments only).
        """
        timer = GroupTimer(self, self._clock.seconds() + seconds, func, args)
        self._timers[timer] = None
        if timer.time < self._at:
            self._schedule(timer.time)
        return timer

    def _schedule(self, when: float) -> None:
        if self._stopped:
            return
        self._at = when
        delay = max(0.0, when - self._clock.seconds())
        call = self._call
        if call is not None and call.active():
            call.reset(delay)
        else:
            self._call = self._clock.callLater(delay, self._fire)

    def _fire(self) -> None:
        self._call = None
        self._at = float("inf")
        timers = self._timers
        now = self._clock.seconds() + _EPSILON
        due = [timer for timer in timers if timer.time <= now]
        due.sort(key=GroupTimer.getTime)
        for timer in due:
            del timers[timer]
            timer.called = True
        try:
            for timer in due:
                try:
                    timer._func(*timer._args)
                except Exception:
                    log.failure("Unhandled error in a timer of {group}", group=self)
        finally:
            if timers:
                # (A function may have set a timer, and with it the call.)
                earliest = min(timer.time for timer in timers)
                if self._call is None or earliest < self._at:
                    self._schedule(earliest)

    def stop(self) -> None:
        """
        Cancel the group's clock call: no timer of it runs from now on.
        """
        self._stopped = True
        call, self._call = self._call, None
        self._at = float("inf")
        if call is not None and call.active():
            call.cancel()
