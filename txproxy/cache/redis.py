# -*- test-case-name: tests.test_cache_redis -*-
"""
The cache's second tier: stored responses shared through Redis by every
proxy naming the same server (C{--cache-redis URL}).

What one process stores, all can serve; while Redis is unreachable or slow
the memory tier serves alone.  The rules:

  - B{Binary-safe}: keys and values are arbitrary bytes.  Replies are never
    decoded (the pool runs with no charset), and key names carry SHA-256
    digests of the cache keys, never the keys themselves.
  - B{One Redis key per variant}, expiring (C{PX}) when the stored response
    may no longer be served; B{a small index per URL} (a hash: variant key →
    Redis key name) for L{RedisTier.variants} and L{RedisTier.purge}, its own
    expiry extended on each store to outlive its longest variant.
  - B{Versioned layout}: every name starts with the prefix
    (C{txproxy:cache:v1:}); a process whose stored format differs uses
    another prefix, so processes of different versions sharing one Redis
    never read each other's blobs.  The URL digest is a hash tag
    (C{{...}}): a URL's index and variants live in one Redis Cluster slot.
  - B{Bounded waits}: a lookup (L{RedisTier.get}, L{RedisTier.variants})
    waits at most C{timeout} seconds, then answers "nothing" (counted in
    L{RedisTier.timeouts}).  A timeout marks Redis stalled: until it
    answers again (a probe C{PING} every C{probeInterval} seconds, or any
    late reply) lookups and stores skip it at once, without a timer or a
    write.  Lookups never fail; stores are fire and forget.

Redis should keep what it is given until it expires: with a C{maxmemory}
eviction policy it may evict a URL's index before its variants, which are
then still served until they expire but no longer found by C{variants} or
C{purge}.  Give the cache its own Redis (or database) with
C{maxmemory-policy noeviction}, or size it so that nothing is evicted.

Key layout (C{P} the prefix, C{U} = hex SHA-256 of the URL key, C{V} = hex
SHA-256 of the variant key)::

    P{U}:i        hash   variant key (raw bytes) -> P{U}:v:V
    P{U}:v:V      string the stored blob, PX = its remaining lifetime
"""

from __future__ import annotations

import math
from hashlib import sha256
from typing import Any, Callable, List, Optional, Sequence, Tuple, TypeVar, Union

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from txproxy.limits._redisio import RedisUnavailable, _parseURL, _PoolClient

__all__ = ["RedisTier", "RedisUnavailable", "DEFAULT_PREFIX"]

#: The key layout's version lives here: change it with the stored format.
DEFAULT_PREFIX = b"txproxy:cache:v1:"

#: The longest a blob is kept, in seconds (ten years): a longer or infinite
#: ttl is cut to this.
MAX_TTL = 10 * 365 * 86400.0

_T = TypeVar("_T")

# KEYS[1] index, KEYS[2] variant; ARGV variant key, blob, milliseconds.
_PUT = """\
local ms = tonumber(ARGV[3])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ms)
redis.call('HSET', KEYS[1], ARGV[1], KEYS[2])
if redis.call('PTTL', KEYS[1]) < ms then redis.call('PEXPIRE', KEYS[1], ms) end
return {ok = 'ok'}
"""

# KEYS[1] index.  The variant keys whose blob still exists; forgets the rest.
_VARIANTS = """\
local all = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #all, 2 do
  if redis.call('EXISTS', all[i + 1]) == 1 then
    out[#out + 1] = all[i]
  else
    redis.call('HDEL', KEYS[1], all[i])
  end
end
return out
"""

# KEYS[1] index.  Deletes every variant and the index; the number of
# variants that still existed.
_PURGE = """\
local all = redis.call('HGETALL', KEYS[1])
local n = 0
for i = 2, #all, 2 do n = n + redis.call('DEL', all[i]) end
redis.call('DEL', KEYS[1])
return n
"""


_SCRIPTS = {
    name: f"-- txproxy cache: {name}\n" + body for name, body in (("put", _PUT), ("variants", _VARIANTS), ("purge", _PURGE))
}


class RedisTier:
    """
    Stored responses in Redis, shared by processes (see the module
    docstring for the layout and the rules).

    The blobs are opaque here: the memory tier serializes and checks them.

    @ivar available: L{False} while Redis is unreachable (not connected) or
        stalled (a lookup timed out and nothing has answered since).
    @ivar hits: lookups that found a blob.
    @ivar misses: lookups Redis answered with nothing.
    @ivar timeouts: lookups answered "nothing" after C{timeout} seconds.
    @ivar errors: commands that failed (an error reply, a connection lost
        with the command in flight).
    @ivar skipped: lookups and stores not sent because Redis was
        unavailable.
    @ivar stores: stores sent.
    @ivar dropped: stores not sent because C{maxPendingStores} were
        already waiting for Redis.
    """

    _log = Logger()

    #: Stores waiting for a reply beyond which new ones are dropped (a slow
    #: Redis must not grow the write buffer without bound).
    maxPendingStores = 256
    #: Seconds between probes of a stalled Redis.
    probeInterval = 0.25

    def __init__(
        self,
        url: str,
        reactor: Any,
        timeout: float = 0.05,
        prefix: bytes = DEFAULT_PREFIX,
        poolSize: int = 1,
        connectTimeout: float = 1.0,
        replyTimeout: float = 1.0,
        initialDelay: float = 0.1,
        maxDelay: float = 2.0,
    ) -> None:
        """
        @param url: C{redis://[user:password@]host[:port][/db]}.
        @param reactor: for TCP and time; the global reactor when L{None}.
        @param timeout: the longest a lookup waits for Redis, in seconds.
        @param prefix: starts every key name; carries the layout version.
        @param poolSize: connections to keep open (commands are pipelined:
            one is plenty).
        @param connectTimeout: seconds a connection attempt may take.
        @param replyTimeout: seconds after which a connection whose reply
            is overdue is dropped and reconnected (a hung Redis).
        @param initialDelay: seconds before the first reconnection attempt.
        @param maxDelay: the longest wait between reconnection attempts.

        @raise ValueError: for a URL that is not C{redis://...}.
        """
        host, port, dbid, password, username = _parseURL(url)
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self._client = _PoolClient(
            host, port, dbid, password, username, reactor, poolSize,
            connectTimeout, replyTimeout, initialDelay, maxDelay, charset=None, eagerReplies=True,
        )
        self.address = f"{host}:{port}"
        self.timeout = timeout
        self.prefix = prefix
        self._stalled = False
        self._down = False
        self._probe: Optional[Any] = None
        self._probing = False
        self._stopped = False
        self._pendingStores = 0
        self._errorReplies = 0
        self.hits = 0
        self.misses = 0
        self.timeouts = 0
        self.errors = 0
        self.skipped = 0
        self.stores = 0
        self.dropped = 0

    # -- life cycle

    def start(self) -> None:
        """
        Start connecting (in the background, reconnecting with backoff).
        Lookups answer "nothing" until the first connection is up.
        """
        self._stopped = False
        self._client.start()

    def stop(self) -> "Deferred[None]":
        """
        Stop probing and disconnect.
        """
        self._stopped = True
        if self._probe is not None and self._probe.active():
            self._probe.cancel()
        self._probe = None
        return self._client.stop()

    @property
    def available(self) -> bool:
        return self._client.connected and not self._stalled

    def whenConnected(self) -> "Deferred[None]":
        """
        A Deferred firing once the first connection is up (at once if one
        is).  It never fails; it never fires if Redis is never reached.
        """
        return self._client.whenConnected()

    def ping(self) -> "Deferred[Any]":
        """
        Send C{PING}: it is answered after every command sent before it on
        the same connection (with one connection, after every store so
        far).  Fails with L{RedisUnavailable} when not connected.
        """
        return self._client.execute("PING")

    # -- key names

    def _indexName(self, urlKey: bytes) -> Tuple[bytes, bytes]:
        base = b"%s{%s}" % (self.prefix, sha256(urlKey).hexdigest().encode("ascii"))
        return base, base + b":i"

    def variantName(self, urlKey: bytes, variantKey: bytes) -> bytes:
        """
        The Redis key holding the blob of C{variantKey} of C{urlKey}.
        """
        base, _ = self._indexName(urlKey)
        return b"%s:v:%s" % (base, sha256(variantKey).hexdigest().encode("ascii"))

    def indexName(self, urlKey: bytes) -> bytes:
        """
        The Redis key of C{urlKey}'s index of variants.
        """
        return self._indexName(urlKey)[1]

    # -- the storage interface

    def get(self, urlKey: bytes, variantKey: bytes) -> "Deferred[Optional[bytes]]":
        """
        The blob stored for this variant, or L{None}: on a miss, after
        C{timeout} seconds without an answer, or at once while Redis is
        unavailable.  Never fails.
        """
        if not self._usable():
            return succeed(None)
        return self._bounded(self._client.execute("GET", self.variantName(urlKey, variantKey)), None, self._gotBlob)

    def _gotBlob(self, value: Any) -> Optional[bytes]:
        if isinstance(value, bytes):
            self.hits += 1
            return value
        self.misses += 1
        return None

    def variants(self, urlKey: bytes) -> "Deferred[List[bytes]]":
        """
        The variant keys stored for C{urlKey} (those not yet expired), in
        no particular order; C{[]} when there are none, after C{timeout}
        seconds, or while Redis is unavailable.  Never fails.
        """
        if not self._usable():
            return succeed([])
        return self._bounded(self._eval("variants", [self.indexName(urlKey)], []), [], _byteList)

    def put(self, urlKey: bytes, variantKey: bytes, blob: bytes, ttl: float) -> None:
        """
        Store C{blob} for this variant for C{ttl} seconds (how long it may
        still be served), replacing what was there, and list it in the
        URL's index.  Fire and forget: skipped while Redis is unavailable,
        dropped while C{maxPendingStores} stores are already in flight,
        nothing for a C{ttl} that is not positive; at most L{MAX_TTL}.
        """
        if not ttl > 0:  # also NaN
            return
        ms = int(math.ceil(min(ttl, MAX_TTL) * 1000))
        if not self._usable():
            return
        if self._pendingStores >= self.maxPendingStores:
            self.dropped += 1
            return
        if type(blob) is not bytes:
            blob = bytes(blob)  # txredisapi would send str(memoryview)
        self._pendingStores += 1
        self.stores += 1
        keys = [self.indexName(urlKey), self.variantName(urlKey, variantKey)]
        d = self._eval("put", keys, [variantKey, blob, str(ms)])
        d.addCallbacks(self._stored, self._storeFailed)

    def _stored(self, _: Any) -> None:
        self._pendingStores -= 1
        self._answered()

    def _storeFailed(self, failure: Failure) -> None:
        self._pendingStores -= 1
        self._failed(failure)

    def purge(self, urlKey: bytes) -> "Deferred[int]":
        """
        Delete every stored variant of C{urlKey} and its index.

        @return: a Deferred firing with the number of variants deleted, or
            failing with L{RedisUnavailable} when Redis could not be asked
            (not connected, or the connection was lost before it answered:
            the caller should say so rather than claim success).  It waits
            for Redis up to the reply timeout given at construction, not the
            lookup C{timeout}.
        """
        d = self._eval("purge", [self.indexName(urlKey)], [])

        def purged(n: Any) -> int:
            self._answered()
            return int(n)

        def failed(failure: Failure) -> Failure:
            self._failed(failure)
            if failure.check(RedisUnavailable):
                return failure
            return Failure(RedisUnavailable(f"purge on Redis at {self.address} failed: {failure.getErrorMessage()}"))

        return d.addCallbacks(purged, failed)

    # -- plumbing

    def _eval(self, name: str, keys: Sequence[bytes], args: Sequence[Union[bytes, str]]) -> "Deferred[Any]":
        """
        Run a script.  C{EVAL} with the source every time, not C{EVALSHA}:
        Redis compiles a script once and caches it by its digest, a few
        hundred bytes more per store cost nothing next to a response, and
        there is no C{NOSCRIPT} retry that would let a later command (a
        L{ping}) be answered before the store it follows.
        """
        return self._client.execute("EVAL", _SCRIPTS[name], len(keys), *keys, *args)

    def _usable(self) -> bool:
        if self._stalled or not self._client.connected:
            self.skipped += 1
            if not self._down:
                self._wentDown("not connected")
            return False
        return True

    def _bounded(self, d: "Deferred[Any]", default: _T, convert: Callable[[Any], _T]) -> "Deferred[_T]":
        """
        C{d}'s result through C{convert}, or C{default} when C{d} fails or
        has not fired within C{timeout} seconds.
        """
        result: "Deferred[_T]" = Deferred()

        def timedOut() -> None:
            self.timeouts += 1
            if not self._stalled:
                self._stalled = True
                self._wentDown(f"no answer within {self.timeout * 1000:g} ms")
                self._scheduleProbe()
            result.callback(default)

        timer = self._reactor.callLater(self.timeout, timedOut)

        def answered(value: Any) -> None:
            self._answered()
            if timer.active():
                timer.cancel()
                result.callback(convert(value))

        def failed(failure: Failure) -> None:
            self._failed(failure)
            if timer.active():
                timer.cancel()
                result.callback(default)

        d.addCallbacks(answered, failed)
        return result

    def _answered(self) -> None:
        """
        Redis answered: it is neither down nor stalled.
        """
        if self._stalled or self._down:
            self._stalled = False
            self._down = False
            self._log.info("Redis cache tier at {address} answers again", address=self.address)

    def _failed(self, failure: Failure) -> None:
        if failure.check(RedisUnavailable):
            self.skipped += 1
            if not self._down:
                self._wentDown("not connected")
            return
        self.errors += 1
        if failure.check("txredisapi.ResponseError"):
            # Redis answered, with an error: not an outage.  Logged the
            # first time and every thousandth.
            self._errorReplies += 1
            if self._errorReplies % 1000 == 1:
                self._log.warn(
                    "Redis cache tier at {address}: error reply {error} ({count} so far)",
                    address=self.address, error=failure.getErrorMessage(), count=self._errorReplies,
                )
            return
        if not self._down:
            self._wentDown(failure.getErrorMessage())

    def _wentDown(self, reason: str) -> None:
        self._down = True
        self._log.warn(
            "Redis cache tier at {address} unavailable ({reason}): serving from memory alone",
            address=self.address, reason=reason,
        )

    def _scheduleProbe(self) -> None:
        if self._stopped or (self._probe is not None and self._probe.active()):
            return
        self._probe = self._reactor.callLater(self.probeInterval, self._sendProbe)

    def _sendProbe(self) -> None:
        self._probe = None
        if not self._stalled or self._stopped:
            return
        if self._probing:
            self._scheduleProbe()
            return
        self._probing = True

        def done(result: Any) -> None:
            self._probing = False
            if isinstance(result, Failure):
                self._scheduleProbe()
            else:
                self._answered()

        self._client.execute("PING").addBoth(done)


def _byteList(value: Any) -> List[bytes]:
    if isinstance(value, list):
        return [v for v in value if isinstance(v, bytes)]
    return []

