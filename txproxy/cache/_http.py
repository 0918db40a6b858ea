# -*- test-case-name: tests.test_cache_http -*-
"""
The cache in the HTTP core: L{HTTPCache}, one per caching listener, held
by its factory (C{factory.cache}), and L{CacheRequest}, one per request
it looks up.

The HTTP core (L{txproxy.httpproxy.HTTPProxyProtocol}) calls it at a few
moments; each call is behind one C{is not None} check, so a listener
without a cache pays one attribute read per request:

  - C{_acquire}: L{HTTPCache.intercept} with the request and the head about
    to go upstream.  It answers from the store (a hit: an exchange with no
    upstream, through the protocol's C{_answerFromCache}), makes the head
    conditional (a revalidation), parks the request behind an identical
    one already upstream (collapsing), or lets it go as it is.  A request
    it parked or looked up in the shared tier continues later through the
    protocol's C{_upstreamFor}.
  - C{_responseHead}: L{CacheRequest.responseHead} stores (the body then
    arrives through L{CacheRequest.bodyData} as it streams to the client),
    refreshes a stored response from a C{304}, invalidates after an unsafe
    method, serves C{stale-if-error}, and adds C{Cache-Status}.
  - C{_finish}: L{CacheRequest.finished} commits the stored body and wakes
    the collapsed requests.
  - C{_refuse} (an upstream error): L{CacheRequest.failed} may serve a
    stale response instead (C{stale-if-error}).
  - C{connectionLost}: L{CacheRequest.aborted}.

Choices (documented in C{docs/cache.rst}):

  - A C{Range} request on a stored full C{200} is answered C{206} from it
    for one satisfiable byte range without C{If-Range}; otherwise the full
    response is served (RFC 9110 section 14.2 allows ignoring C{Range}).
    On a miss, a C{Range} request goes upstream as it is and its C{206} is
    not stored.
  - C{stale-while-revalidate}: the stale response is written to the client
    at once, and the same exchange then revalidates upstream, its answer
    going to the cache only; on an HTTP/1.1 connection the client's next
    request waits for that revalidation (an HTTP/2 stream does not hold
    the others).
  - Requests with a body, with C{Upgrade}, and unsafe methods are not
    looked up; an unsafe method's non-error response invalidates its
    target (and same-origin C{Location}/C{Content-Location}).
"""

from __future__ import annotations

import importlib
from typing import Any, Dict, List, Optional

from twisted.internet import defer
from twisted.logger import Logger

from txproxy.cache import _policy as P
from txproxy.cache._entry import Entry, deserialize, serialize
from txproxy.cache._memory import DEFAULT_MAX_OBJECT, MemoryStore
from txproxy.cache._request import CacheRequest, isPlain
from txproxy.http import RequestHead

__all__ = ["RESULTS", "CacheRequest", "HTTPCache", "loadTier"]

log = Logger(namespace="txproxy.cache")

_GET = b"GET"
_HEAD = b"HEAD"

#: Seconds after which a request upstream is no longer waited for by new
#: requests for its URL.
STALE_FLIGHT = 30.0

#: The values of the C{result} label of C{txproxy_cache_requests_total}.
RESULTS = ("hit", "miss", "stale", "revalidated", "bypass")



def loadTier(url: str, reactor: Any, prefix: bytes) -> Any:
    """
    The shared tier for C{--cache-redis URL}: a
    C{txproxy.cache.redis.RedisTier}, imported only when a listener names
    one.

    @raise ImportError: when that module is not installed.
    """
    module = importlib.import_module("txproxy.cache.redis")
    return module.RedisTier(url, reactor, prefix=prefix)


class _Flight:
    """
    A request upstream for one URL key and the requests waiting for it.
    """

    def __init__(self, leader: "CacheRequest", started: float) -> None:
        self.leader = leader
        self.started = started
        self.waiters: List["CacheRequest"] = []


class HTTPCache:
    """
    The cache of one listener: the memory tier, an optional shared tier,
    the requests in flight (collapsing) and the counters.

    @ivar store: the L{MemoryStore}.
    @ivar tier: the shared tier (C{RedisTier}), or L{None}.
    @ivar surrogate: whether it is a surrogate (a reverse-mode listener's):
        it then follows C{Surrogate-Control} and removes it from every
        response (L{txproxy.cache._policy.consumeSurrogate}).
    @ivar results: requests by result (L{RESULTS}).
    @ivar tierHits: memory misses served from the shared tier.
    @ivar tierErrors: shared-tier calls that failed here (the tier's own
        failures are its C{errors}).
    @ivar tierSkipped: while the shared tier is unavailable, memory misses
        not looked up in it (C{"lookup"}) and stored responses not shared
        (C{"store"}).
    """

    def __init__(self, maxBytes: int, maxObject: int = DEFAULT_MAX_OBJECT, clock: Any = None,
                 tier: Any = None, surrogate: bool = False) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.store = MemoryStore(maxBytes, maxObject)
        self.clock = clock
        self.tier = tier
        self.surrogate = surrogate
        self.results: Dict[str, int] = {r: 0 for r in RESULTS}
        self.tierHits = 0
        self.tierErrors = 0
        self.tierSkipped: Dict[str, int] = {"lookup": 0, "store": 0}
        self._flights: Dict[bytes, _Flight] = {}

    # -- operations

    def resize(self, maxBytes: int, maxObject: int) -> None:
        """
        Take a reloaded size (evicting to fit when it shrank).
        """
        self.store.resize(maxBytes, maxObject)

    def purge(self, urlKey: bytes) -> "defer.Deferred[int]":
        """
        Remove every variant of C{urlKey} from both tiers.

        @return: a Deferred firing with the number of variants removed (a
            variant held by both tiers counts once: the larger count).
        """
        removed = self.store.purge(urlKey)
        tier = self.tier
        if tier is None:
            return defer.succeed(removed)
        d: "defer.Deferred[int]" = tier.purge(urlKey)
        d.addCallback(lambda n: max(removed, int(n or 0)))
        d.addErrback(lambda f: removed)
        return d

    def stats(self) -> Dict[str, Any]:
        """
        Plain data for C{/status}.
        """
        looked = sum(self.results[r] for r in ("hit", "miss", "stale", "revalidated"))
        served = self.results["hit"] + self.results["stale"] + self.results["revalidated"]
        data: Dict[str, Any] = {
            "entries": len(self.store),
            "bytes": self.store.bytes,
            "maxBytes": self.store.maxBytes,
            "maxObject": self.store.maxObject,
            "requests": dict(self.results),
            "hitRatio": round(served / looked, 4) if looked else 0.0,
        }
        if self.tier is not None:
            data["redis"] = {"available": bool(getattr(self.tier, "available", False)), "hits": self.tierHits}
        return data

    def count(self, result: str) -> None:
        self.results[result] += 1

    # -- the request side

    def intercept(self, proto: Any, request: Any, head: RequestHead) -> Optional[RequestHead]:
        """
        Look C{request} up (see the module docstring).

        @param proto: the L{txproxy.httpproxy.HTTPProxyProtocol}.
        @param request: its L{txproxy.upstream.HTTPRequest}.
        @param head: the head about to be sent upstream.
        @return: the head to send upstream now, or L{None} when the cache
            answered or will continue the request later.
        """
        client = request.head
        method = client.method
        key = P.urlKey(request.scheme, request.target.host, request.target.port, request.path)
        cr = CacheRequest(self, proto, request, head, key)
        proto._cacheReq = cr
        route = getattr(proto, "_route", None)  # the reverse proxy's route
        if route is not None and not route.config.cache:
            return cr.bypass("route")
        if self.surrogate:
            cr.head = head = P.withCapability(head)
        if method != _GET and method != _HEAD:
            if P.isUnsafe(method):
                cr.unsafe = True
            return cr.bypass("method")
        framing = proto._framing
        if (framing.kind != "none" and framing.length != 0) or proto._upgrading:
            return cr.bypass("body")
        if isPlain(client):
            cr.plain = True
        else:
            if b"no-store" in P.cacheControl(client.getAll(b"cache-control")):
                return cr.bypass("request no-store")
            if client.get(b"x-original-url") is not None or client.get(b"x-rewrite-url") is not None:
                # An origin honouring them would answer for another URL
                # than the key: never stored, never served from the cache.
                return cr.bypass("x-original-url")
        entry, known = self.store.select(key, client)
        cr.known = known
        tier = self.tier
        if entry is None and tier is not None:
            if getattr(tier, "available", False):
                self._askTier(cr)
                return None
            self.tierSkipped["lookup"] += 1
        return cr.decide(entry, True)

    def _askTier(self, cr: "CacheRequest") -> None:
        """
        A memory miss: ask the shared tier (bounded by its own timeout;
        it never fails), then decide.
        """
        tier = self.tier
        client = cr.request.head
        key = cr.urlKey

        def found(blob: Optional[bytes]) -> Any:
            entry = deserialize(blob) if blob else None
            if entry is not None and entry.urlKey == key and P.varyKey(entry.vary, client) == entry.variantKey:
                return entry
            d: defer.Deferred = tier.variants(key)
            d.addCallback(pick)
            return d

        def pick(variants: List[bytes]) -> Any:
            for variant in variants or ():
                names = tuple(line.split(b"=", 1)[0].rstrip(b"!") for line in variant.split(b"\n")) if variant else ()
                if P.varyKey(names, client) == variant:
                    d: defer.Deferred = tier.get(key, variant)
                    d.addCallback(_entryOf, variant)
                    return d
            return None

        def _entryOf(blob: Optional[bytes], variant: bytes) -> Optional[Entry]:
            entry = deserialize(blob) if blob else None
            if entry is None or entry.urlKey != key or entry.variantKey != variant:
                return None
            return entry

        def decided(entry: Optional[Entry]) -> None:
            if cr.done or cr.proto._cacheReq is not cr:
                return  # the client went away meanwhile
            if entry is not None:
                self.tierHits += 1
                self.store.insert(entry)
                cr.known = True
            head = cr.decide(entry, False)
            if head is not None:
                cr.proto._upstreamFor(cr.request, head)

        def failed(f: Any) -> None:
            self.tierErrors += 1
            log.failure("cache: the shared tier failed", f)
            if cr.done or cr.proto._cacheReq is not cr:
                return
            head = cr.decide(None, False)
            if head is not None:
                cr.proto._upstreamFor(cr.request, head)

        d: defer.Deferred = tier.get(key, b"")
        d.addCallback(found)
        d.addCallbacks(decided, failed)
        d.addErrback(lambda f: log.failure("cache: deciding after the shared tier", f))

    # -- flights (collapsing)

    def _flightFor(self, key: bytes) -> Optional[_Flight]:
        """
        The request upstream for C{key} others may wait for: none once it
        has been going for L{STALE_FLIGHT} seconds (a slow one is not
        waited for by more requests; whatever happens to it, no URL stays
        collapsed behind it).
        """
        flight = self._flights.get(key)
        if flight is not None and self.clock.seconds() - flight.started > STALE_FLIGHT:
            return None
        return flight

    def _takeOff(self, cr: "CacheRequest") -> None:
        self._flights[cr.urlKey] = _Flight(cr, self.clock.seconds())
        cr.leading = True

    def _land(self, cr: "CacheRequest") -> None:
        """
        The leader's response is stored (or will not be): each waiter looks
        up again (a hit now), or goes upstream itself.
        """
        if not cr.leading:
            return
        cr.leading = False
        flight = self._flights.get(cr.urlKey)
        if flight is None or flight.leader is not cr:
            return
        del self._flights[cr.urlKey]
        for waiter in flight.waiters:
            waiter.resume()

    # -- storing in the shared tier

    def _share(self, entry: Entry, now: float) -> None:
        tier = self.tier
        if tier is None:
            return
        if not getattr(tier, "available", False):
            self.tierSkipped["store"] += 1
            return
        head = entry.stored.head
        cc = P.responseCacheControl(head)
        remaining = P.freshnessLifetime(head) - P.ageOf(entry.stored, now)
        extra = max(P.seconds(cc.get(b"stale-while-revalidate")) or 0, P.seconds(cc.get(b"stale-if-error")) or 0)
        ttl = remaining + extra
        if ttl <= 0:
            return
        try:
            tier.put(entry.urlKey, entry.variantKey, serialize(entry), ttl)
        except Exception:
            self.tierErrors += 1
            log.failure("cache: storing in the shared tier failed")
