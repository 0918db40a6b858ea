# -*- test-case-name: tests.test_h2_client -*-
"""
The pool of HTTP/2 connections to backends (L{H2ClientPool}): per pool key,
one connection is used while it has streams free (the backend's
C{SETTINGS_MAX_CONCURRENT_STREAMS}); another is dialled only when all are
full.  Requests that arrive while the first connection is still being
dialled wait for it rather than dialling their own, so a burst of requests
to a new backend opens one connection, not one each.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from txproxy.h2._client import H2ClientConnection

__all__ = ["H2ClientPool"]


class _Waiter:
    __slots__ = ("protocol", "deferred", "dial", "again")

    def __init__(self, protocol: Any, dial: "_Dial") -> None:
        self.protocol = protocol
        self.dial: Optional[_Dial] = dial
        #: The wait on another connection, when the first had no room.
        self.again: Optional[defer.Deferred] = None
        self.deferred: defer.Deferred = defer.Deferred(self._cancel)

    def _cancel(self, d: defer.Deferred) -> None:
        dial, self.dial = self.dial, None
        if dial is not None:
            dial.leave(self)
        again, self.again = self.again, None
        if again is not None:
            again.cancel()


class _Dial:
    """
    A connection being dialled, and the requests waiting for a stream on it.
    """

    def __init__(self, pool: "H2ClientPool", key: str, make: Callable[[], defer.Deferred]) -> None:
        self.pool = pool
        self.key = key
        self.make = make
        self.waiters: List[_Waiter] = []
        self.deferred: Optional[defer.Deferred] = None

    def start(self) -> None:
        d = self.deferred = self.make()
        d.addCallbacks(self._connected, self._failed)

    def join(self, protocol: Any) -> defer.Deferred:
        waiter = _Waiter(protocol, self)
        self.waiters.append(waiter)
        return waiter.deferred

    def leave(self, waiter: _Waiter) -> None:
        if waiter in self.waiters:
            self.waiters.remove(waiter)
        if not self.waiters and self.deferred is not None and not self.deferred.called:
            # Nobody wants it any more (timed out, client gone): abandon it.
            self.pool._dialEnded(self)
            self.deferred.cancel()

    def _connected(self, conn: H2ClientConnection) -> None:
        pool = self.pool
        pool._dialEnded(self)
        waiters, self.waiters = self.waiters, []
        conn.key = self.key
        pool._add(conn)
        for waiter in waiters:
            waiter.dial = None
            if conn.available:
                conn.newStream(waiter.protocol)
                waiter.deferred.callback(waiter.protocol)
            else:
                # More waited than the backend allows on one connection.
                pool._redispatch(self.key, waiter, self.make)
        conn._idleCheck()

    def _failed(self, f: Failure) -> None:
        self.pool._dialEnded(self)
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            waiter.dial = None
            waiter.deferred.errback(f)


class H2ClientPool:
    """
    HTTP/2 connections to backends, keyed like the core's upstream pool.

    @ivar clock: for the connections' idle timers.
    @ivar assumedStreams: streams a connection being dialled is assumed to
        allow, until its SETTINGS say.
    """

    assumedStreams = 100

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self._conns: Dict[str, List[H2ClientConnection]] = {}
        self._dials: Dict[str, List[_Dial]] = {}

    def __len__(self) -> int:
        return sum(len(c) for c in self._conns.values())

    def connections(self, key: str) -> List[H2ClientConnection]:
        """
        The usable connections pooled under C{key}.
        """
        return list(self._conns.get(key, ()))

    def stream(self, key: str, protocol: Any, dial: Callable[[], "defer.Deferred[H2ClientConnection]"]) -> defer.Deferred:
        """
        Connect C{protocol} to a new stream to C{key}: on a pooled connection
        with a stream free, else on one being dialled with room for it, else
        on a new connection made by C{dial}.

        @param dial: returns a Deferred firing with a ready
            L{H2ClientConnection} (see its C{ready}).
        @return: a Deferred firing with C{protocol} once connected;
            cancelling it gives up the wait (and the dial, when nobody else
            waits for it).
        """
        for conn in self._conns.get(key, ()):
            if conn.available:
                conn.newStream(protocol)
                return defer.succeed(protocol)
        for pending in self._dials.get(key, ()):
            if len(pending.waiters) < self.assumedStreams:
                return pending.join(protocol)
        pending = _Dial(self, key, dial)
        self._dials.setdefault(key, []).append(pending)
        d = pending.join(protocol)
        pending.start()
        return d

    def _redispatch(self, key: str, waiter: _Waiter, dial: Callable[[], defer.Deferred]) -> None:
        d = waiter.again = self.stream(key, waiter.protocol, dial)
        d.addErrback(lambda f: None if f.check(defer.CancelledError) and waiter.deferred.called else f)
        d.chainDeferred(waiter.deferred)

    def _dialEnded(self, pending: _Dial) -> None:
        dials = self._dials.get(pending.key)
        if dials and pending in dials:
            dials.remove(pending)
            if not dials:
                del self._dials[pending.key]

    def _add(self, conn: H2ClientConnection) -> None:
        if conn.lost or conn.goingAway:
            return
        conn.pool = self
        self._conns.setdefault(conn.key, []).append(conn)

    def remove(self, conn: H2ClientConnection) -> None:
        """
        Forget C{conn} (closed, or taking no new stream).
        """
        conns = self._conns.get(conn.key)
        conn.pool = None
        if conns and conn in conns:
            conns.remove(conn)
            if not conns:
                del self._conns[conn.key]

    def capacityChanged(self, conn: H2ClientConnection) -> None:
        """
        C{conn} has a stream free (or its backend changed its limit).
        Nothing to do: requests look for room when they come.
        """

    def closeKey(self, key: str) -> None:
        """
        Retire every connection under C{key} (private to a client
        connection that has closed): no new stream; closed once their
        streams are over.
        """
        for conn in list(self._conns.get(key, ())):
            conn.retire()

    def retireAll(self) -> None:
        """
        Retire every connection (reload, stop): idle ones close now, busy
        ones once their streams are over.
        """
        for key in list(self._conns):
            for conn in list(self._conns.get(key, ())):
                conn.retire()
