# -*- test-case-name: tests.test_cache_redis -*-
"""
An in-memory stand-in for L{txproxy.cache.redis.RedisTier}, on a fake clock.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple, TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from txproxy.cache.redis import DEFAULT_PREFIX, MAX_TTL, RedisUnavailable

__all__ = ["FakeRedisTier"]

_T = TypeVar("_T")


class FakeRedisTier:
    """
    The storage contract of L{txproxy.cache.redis.RedisTier} in a dict,
    with expiry on C{clock} and switches for the outages a real Redis has.

    Everything answers at once (already fired Deferreds) except lookups
    while L{stalled}: those fire "nothing" after C{timeout} seconds of
    C{clock}, as the real tier's bound does.

    @ivar available: set it to L{False} to play an unreachable Redis:
        lookups answer nothing at once, stores are skipped, purges fail
        with L{RedisUnavailable}.
    @ivar stalled: set it to L{True} to play a Redis that does not answer:
        lookups answer nothing after C{timeout} (counted in C{timeouts}).
    @ivar data: C{{(urlKey, variantKey): (blob, expiresAt)}}, for
        assertions.
    """

    def __init__(self, clock: Optional[Clock] = None, timeout: float = 0.05, prefix: bytes = DEFAULT_PREFIX) -> None:
        self.clock = clock if clock is not None else Clock()
        self.timeout = timeout
        self.prefix = prefix
        self.available = True
        self.stalled = False
        self.started = False
        self.data: Dict[Tuple[bytes, bytes], Tuple[bytes, float]] = {}
        self.hits = 0
        self.misses = 0
        self.timeouts = 0
        self.errors = 0
        self.skipped = 0
        self.stores = 0
        self.dropped = 0

    def start(self) -> None:
        self.started = True

    def stop(self) -> "Deferred[None]":
        self.started = False
        return succeed(None)

    def ping(self) -> "Deferred[Any]":
        if not self.available:
            return fail(RedisUnavailable("fake Redis unavailable"))
        return succeed("PONG")

    def _live(self, key: Tuple[bytes, bytes]) -> Optional[bytes]:
        entry = self.data.get(key)
        if entry is None:
            return None
        if entry[1] <= self.clock.seconds():
            del self.data[key]
            return None
        return entry[0]

    def _answer(self, value: _T, default: _T) -> "Deferred[_T]":
        if not self.available:
            self.skipped += 1
            return succeed(default)
        if self.stalled:
            d: "Deferred[_T]" = Deferred()

            def timedOut() -> None:
                self.timeouts += 1
                d.callback(default)

            self.clock.callLater(self.timeout, timedOut)
            return d
        return succeed(value)

    def get(self, urlKey: bytes, variantKey: bytes) -> "Deferred[Optional[bytes]]":
        blob = self._live((urlKey, variantKey))
        if self.available and not self.stalled:
            if blob is None:
                self.misses += 1
            else:
                self.hits += 1
        return self._answer(blob, None)

    def variants(self, urlKey: bytes) -> "Deferred[List[bytes]]":
        found = [v for (u, v) in list(self.data) if u == urlKey and self._live((u, v)) is not None]
        return self._answer(found, [])

    def put(self, urlKey: bytes, variantKey: bytes, blob: bytes, ttl: float) -> None:
        if not ttl > 0:
            return
        ms = int(math.ceil(min(ttl, MAX_TTL) * 1000))
        if not self.available or self.stalled:
            self.skipped += 1
            return
        self.stores += 1
        self.data[(urlKey, variantKey)] = (bytes(blob), self.clock.seconds() + ms / 1000.0)

    def purge(self, urlKey: bytes) -> "Deferred[int]":
        if not self.available:
            return fail(RedisUnavailable("fake Redis unavailable"))
        keys = [k for k in list(self.data) if k[0] == urlKey]
        n = sum(1 for k in keys if self._live(k) is not None)
        for k in keys:
            self.data.pop(k, None)
        return succeed(n)
