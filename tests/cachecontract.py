"""
The storage contract of the cache's tiers, one mixin run against every
tier: the memory tier (L{txproxy.cache.MemoryStore}, through
L{MemoryTier}), the Redis tier on a real C{redis-server}
(L{txproxy.cache.redis.RedisTier}) and its fake
(L{txproxy.testing.FakeRedisTier}).

The contract is the Redis tier's interface, over bytes: C{put(urlKey,
variantKey, blob, ttl)} (fire and forget), C{get(urlKey, variantKey)},
C{variants(urlKey)} and C{purge(urlKey)}, each returning a Deferred.
What is put is got back byte for byte per (URL key, variant key); the
variants of a URL are listed; a purge removes every variant of one URL and
counts them; an unknown key is a miss, never an error.

Where the tiers differ by design, the tests live with each tier: the
memory tier evicts by bytes, least recently used first, and ignores the
ttl (freshness is the policy's business: L{tests.test_cache_memory}); the
Redis tier expires each variant after its ttl and counts its lookups
(L{RedisTierContractMixin}, run against the real tier and the fake).
"""

from __future__ import annotations

from typing import Any, List, Optional

from twisted.internet.defer import Deferred, inlineCallbacks, succeed

from txproxy.cache import Entry, MemoryStore, StoredResponse, serialize
from txproxy.http import ResponseHead

__all__ = ["CacheTierContractMixin", "MemoryTier", "RedisTierContractMixin", "entry", "head"]

EVERY_BYTE = bytes(range(256))


def head(*headers: Any, status: int = 200) -> ResponseHead:
    return ResponseHead(b"HTTP/1.1", status, b"OK", headers)


def entry(url: bytes = b"http://a/x", variant: bytes = b"", body: bytes = b"body", at: float = 1.0,
          vary: tuple = ()) -> Entry:
    h = head((b"Cache-Control", b"max-age=60"), (b"Content-Type", b"text/plain"))
    return Entry(url, variant, vary, StoredResponse(h, at, at, 0.0, len(body)), body)


class MemoryTier:
    """
    The contract's interface on a L{MemoryStore}: a blob is the body of an
    entry, stored through the path a response streaming to its first
    client takes (L{MemoryStore.writer}); the ttl is not the memory tier's
    business and is ignored.
    """

    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    def put(self, urlKey: bytes, variantKey: bytes, blob: Any, ttl: float) -> None:
        stored = StoredResponse(head((b"Cache-Control", b"max-age=60")), 1.0, 1.0, 0.0, len(blob))
        writer = self.store.writer(urlKey, variantKey, (), stored)
        writer.write(blob)
        writer.commit()

    def get(self, urlKey: bytes, variantKey: bytes) -> "Deferred[Optional[bytes]]":
        e = self.store.get(urlKey, variantKey)
        return succeed(e.body if e is not None else None)

    def variants(self, urlKey: bytes) -> "Deferred[List[bytes]]":
        return succeed([e.variantKey for e in self.store.variants(urlKey)])

    def purge(self, urlKey: bytes) -> "Deferred[int]":
        return succeed(self.store.purge(urlKey))


class CacheTierContractMixin:
    """
    The storage contract every cache tier keeps.  Subclasses set
    C{self.tier} (with C{put}, C{get}, C{variants}, C{purge}) and define
    C{settle}: a Deferred that fires once every store so far is done.
    """

    tier: Any

    def settle(self) -> "Deferred[Any]":
        raise NotImplementedError()

    @inlineCallbacks
    def test_missIsNone(self) -> Any:
        """
        A variant never stored is L{None}; an unknown URL has no variants.
        """
        self.assertIsNone((yield self.tier.get(b"http://a.test/", b"")))
        self.assertEqual(list((yield self.tier.variants(b"http://a.test/"))), [])

    @inlineCallbacks
    def test_roundTrip(self) -> Any:
        """
        A serialized entry (the blobs the cache stores), binary body
        included, is got back exactly.
        """
        blob = serialize(entry(body=bytes(range(256)) * 4))
        self.tier.put(b"http://a/x", b"", blob, 60)
        yield self.settle()
        self.assertEqual((yield self.tier.get(b"http://a/x", b"")), blob)

    @inlineCallbacks
    def test_putThenGet(self) -> Any:
        """
        A stored blob comes back byte for byte; storing again replaces it.
        """
        self.tier.put(b"http://a.test/x", b"v", b"first", 30)
        yield self.settle()
        self.assertEqual((yield self.tier.get(b"http://a.test/x", b"v")), b"first")
        self.tier.put(b"http://a.test/x", b"v", b"second", 30)
        yield self.settle()
        self.assertEqual((yield self.tier.get(b"http://a.test/x", b"v")), b"second")
        self.assertEqual(list((yield self.tier.variants(b"http://a.test/x"))), [b"v"])

    @inlineCallbacks
    def test_replace(self) -> Any:
        """
        Putting a serialized entry again under the empty variant key
        replaces it; one variant is listed.
        """
        self.tier.put(b"http://a/x", b"", serialize(entry(body=b"old")), 60)
        yield self.settle()
        new = serialize(entry(body=b"new"))
        self.tier.put(b"http://a/x", b"", new, 60)
        yield self.settle()
        self.assertEqual((yield self.tier.get(b"http://a/x", b"")), new)
        self.assertEqual(list((yield self.tier.variants(b"http://a/x"))), [b""])

    @inlineCallbacks
    def test_variants(self) -> Any:
        """
        Variants (of a C{Vary}) of one URL are kept apart and listed.
        """
        a = serialize(entry(variant=b"accept=a", body=b"A", vary=(b"accept",)))
        b = serialize(entry(variant=b"accept=b", body=b"B", vary=(b"accept",)))
        self.tier.put(b"http://a/x", b"accept=a", a, 60)
        self.tier.put(b"http://a/x", b"accept=b", b, 60)
        yield self.settle()
        self.assertEqual((yield self.tier.get(b"http://a/x", b"accept=a")), a)
        self.assertEqual((yield self.tier.get(b"http://a/x", b"accept=b")), b)
        variants = yield self.tier.variants(b"http://a/x")
        self.assertEqual(sorted(variants), [b"accept=a", b"accept=b"])

    @inlineCallbacks
    def test_variantsListed(self) -> Any:
        """
        Every variant of a URL is listed once; another URL's are not, and a
        variant key of one URL means nothing under another.
        """
        for v in (b"", b"gzip", b"br"):
            self.tier.put(b"http://a.test/", v, b"body " + v, 30)
        self.tier.put(b"http://b.test/", b"gzip", b"other", 30)
        yield self.settle()
        self.assertEqual(sorted((yield self.tier.variants(b"http://a.test/"))),
                         [b"", b"br", b"gzip"])
        self.assertEqual(list((yield self.tier.variants(b"http://b.test/"))), [b"gzip"])
        self.assertEqual((yield self.tier.get(b"http://a.test/", b"gzip")), b"body gzip")
        self.assertEqual((yield self.tier.get(b"http://b.test/", b"gzip")), b"other")
        self.assertIsNone((yield self.tier.get(b"http://b.test/", b"br")))

    @inlineCallbacks
    def test_binaryEveryByte(self) -> Any:
        """
        Keys and values are bytes, not text: every byte value, CRLF and
        RESP-looking sequences survive a round trip, in the URL key, the
        variant key and the blob.
        """
        url = b"http://a.test/" + EVERY_BYTE
        variant = EVERY_BYTE[::-1] + b"\r\n$-1\r\n"
        blob = EVERY_BYTE * 64 + b"\r\n*1\r\n$3\r\nfoo\r\n" + b"\xff\xfe\x00"
        self.tier.put(url, variant, blob, 30)
        yield self.settle()
        got = yield self.tier.get(url, variant)
        self.assertIsInstance(got, bytes)
        self.assertEqual(got, blob)
        self.assertEqual(list((yield self.tier.variants(url))), [variant])

    @inlineCallbacks
    def test_bufferBlobs(self) -> Any:
        """
        A blob given as a C{memoryview} or C{bytearray} is stored as its
        bytes.
        """
        self.tier.put(b"k", b"mv", memoryview(b"viewed"), 30)
        self.tier.put(b"k", b"ba", bytearray(b"arrayed"), 30)
        yield self.settle()
        viewed = yield self.tier.get(b"k", b"mv")
        arrayed = yield self.tier.get(b"k", b"ba")
        self.assertEqual((type(viewed), viewed), (bytes, b"viewed"))
        self.assertEqual((type(arrayed), arrayed), (bytes, b"arrayed"))

    @inlineCallbacks
    def test_emptyAndNumericBlobs(self) -> Any:
        """
        An empty blob is a hit (not a miss), and a blob that looks like a
        number stays bytes.
        """
        self.tier.put(b"k", b"empty", b"", 30)
        self.tier.put(b"k", b"number", b"12345", 30)
        self.tier.put(b"k", b"float", b"1.5", 30)
        yield self.settle()
        self.assertEqual((yield self.tier.get(b"k", b"empty")), b"")
        self.assertEqual((yield self.tier.get(b"k", b"number")), b"12345")
        self.assertEqual((yield self.tier.get(b"k", b"float")), b"1.5")

    @inlineCallbacks
    def test_largeValuesAndKeys(self) -> Any:
        """
        A 2 MiB blob under a 64 KiB URL key round-trips.
        """
        url = b"http://a.test/" + b"q" * 65536
        blob = EVERY_BYTE * 8192
        self.tier.put(url, b"", blob, 30)
        yield self.settle()
        self.assertEqual((yield self.tier.get(url, b"")), blob)

    @inlineCallbacks
    def test_purge(self) -> Any:
        """
        A purge of serialized entries removes every variant of one URL,
        counts them, and leaves other URLs alone.
        """
        for v in (b"1", b"2", b"3"):
            self.tier.put(b"http://a/x", v, serialize(entry(variant=v)), 60)
        self.tier.put(b"http://a/y", b"", serialize(entry(url=b"http://a/y")), 60)
        yield self.settle()
        self.assertEqual((yield self.tier.purge(b"http://a/x")), 3)
        self.assertIsNone((yield self.tier.get(b"http://a/x", b"1")))
        self.assertIsNotNone((yield self.tier.get(b"http://a/y", b"")))
        self.assertEqual((yield self.tier.purge(b"http://a/x")), 0)

    @inlineCallbacks
    def test_purgeRemovesAllVariants(self) -> Any:
        """
        C{purge} deletes every variant of a URL and says how many; nothing
        of another URL; purging again finds none.
        """
        for v in (b"a", b"b", b"c"):
            self.tier.put(b"http://a.test/p", v, b"x", 30)
        self.tier.put(b"http://a.test/other", b"a", b"keep", 30)
        yield self.settle()
        self.assertEqual((yield self.tier.purge(b"http://a.test/p")), 3)
        for v in (b"a", b"b", b"c"):
            self.assertIsNone((yield self.tier.get(b"http://a.test/p", v)))
        self.assertEqual(list((yield self.tier.variants(b"http://a.test/p"))), [])
        self.assertEqual((yield self.tier.purge(b"http://a.test/p")), 0)
        self.assertEqual((yield self.tier.get(b"http://a.test/other", b"a")), b"keep")


class RedisTierContractMixin(CacheTierContractMixin):
    """
    The contract plus what a Redis tier (real or fake) keeps and the memory
    tier does not: each variant expires after its ttl, and lookups are
    counted.  Subclasses also define C{elapse} (let time pass).
    """

    def elapse(self, seconds: float) -> "Deferred[Any]":
        raise NotImplementedError()

    @inlineCallbacks
    def test_expiryHonoured(self) -> Any:
        """
        A variant is gone once its ttl has passed, and is no longer listed;
        a variant with a longer ttl of the same URL is still served.
        """
        self.tier.put(b"http://a.test/", b"short", b"s", 0.2)
        self.tier.put(b"http://a.test/", b"long", b"l", 30)
        yield self.settle()
        self.assertEqual((yield self.tier.get(b"http://a.test/", b"short")), b"s")
        yield self.elapse(0.35)
        self.assertIsNone((yield self.tier.get(b"http://a.test/", b"short")))
        self.assertEqual((yield self.tier.get(b"http://a.test/", b"long")), b"l")
        self.assertEqual((yield self.tier.variants(b"http://a.test/")), [b"long"])

    @inlineCallbacks
    def test_nothingStoredForNoTTL(self) -> Any:
        """
        A ttl of zero, negative or NaN stores nothing.
        """
        self.tier.put(b"http://a.test/", b"", b"x", 0)
        self.tier.put(b"http://a.test/", b"n", b"x", -5)
        self.tier.put(b"http://a.test/", b"nan", b"x", float("nan"))
        yield self.settle()
        self.assertIsNone((yield self.tier.get(b"http://a.test/", b"")))
        self.assertEqual((yield self.tier.variants(b"http://a.test/")), [])

    @inlineCallbacks
    def test_infiniteTTL(self) -> Any:
        """
        An infinite ttl is cut to C{MAX_TTL}: stored, served.
        """
        self.tier.put(b"http://a.test/", b"", b"forever", float("inf"))
        yield self.settle()
        self.assertEqual((yield self.tier.get(b"http://a.test/", b"")), b"forever")

    @inlineCallbacks
    def test_purgeCountsOnlyLiveVariants(self) -> Any:
        """
        An expired variant is not counted as removed.
        """
        self.tier.put(b"http://a.test/", b"old", b"x", 0.1)
        self.tier.put(b"http://a.test/", b"new", b"y", 30)
        yield self.settle()
        yield self.elapse(0.25)
        self.assertEqual((yield self.tier.purge(b"http://a.test/")), 1)

    @inlineCallbacks
    def test_counters(self) -> Any:
        """
        Hits, misses and stores are counted.
        """
        self.tier.put(b"u", b"v", b"x", 30)
        yield self.settle()
        yield self.tier.get(b"u", b"v")
        yield self.tier.get(b"u", b"w")
        self.assertEqual((self.tier.hits, self.tier.misses, self.tier.stores), (1, 1, 1))
        self.assertEqual((self.tier.timeouts, self.tier.errors, self.tier.dropped),
                         (0, 0, 0))
