"""
Tests for L{txproxy.cache._memory} (the memory tier) and
L{txproxy.cache._entry} (the versioned serialization), and
L{StorageContractMixin}: the storage contract every cache tier keeps,
written against a small bytes-level adapter so that a shared tier (Redis)
runs the same tests.
"""

from __future__ import annotations

from typing import Any, List, Optional

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase, TestCase

from txproxy.cache import MAGIC, Entry, MemoryStore, StoredResponse, deserialize, serialize
from txproxy.cache._entry import ENTRY_OVERHEAD, entrySize
from txproxy.cache._policy import varyKey
from txproxy.http import RequestHead, ResponseHead


def head(*headers: Any, status: int = 200) -> ResponseHead:
    return ResponseHead(b"HTTP/1.1", status, b"OK", headers)


def entry(url: bytes = b"http://a/x", variant: bytes = b"", body: bytes = b"body", at: float = 1.0,
          vary: tuple = ()) -> Entry:
    h = head((b"Cache-Control", b"max-age=60"), (b"Content-Type", b"text/plain"))
    return Entry(url, variant, vary, StoredResponse(h, at, at, 0.0, len(body)), body)


class StorageContractMixin:
    """
    The storage contract of a cache tier, over bytes: what is put is got
    back byte for byte, per (URL key, variant key); variants of a URL are
    listed; a purge removes every variant of one URL and counts them; an
    unknown key is a miss, never an error.

    Subclasses define the adapter (each returns a Deferred):
    C{putBlob(urlKey, variantKey, blob, ttl)}, C{getBlob(urlKey,
    variantKey)}, C{listVariants(urlKey)}, C{purgeURL(urlKey)}.
    """

    def putBlob(self, urlKey: bytes, variantKey: bytes, blob: bytes, ttl: float) -> defer.Deferred:
        raise NotImplementedError()

    def getBlob(self, urlKey: bytes, variantKey: bytes) -> defer.Deferred:
        raise NotImplementedError()

    def listVariants(self, urlKey: bytes) -> defer.Deferred:
        raise NotImplementedError()

    def purgeURL(self, urlKey: bytes) -> defer.Deferred:
        raise NotImplementedError()

    @defer.inlineCallbacks
    def test_roundTrip(self) -> Any:
        """
        A blob put is got back exactly, binary bytes included.
        """
        blob = serialize(entry(body=bytes(range(256)) * 4))
        yield self.putBlob(b"http://a/x", b"", blob, 60)
        got = yield self.getBlob(b"http://a/x", b"")
        self.assertEqual(got, blob)  # type: ignore[attr-defined]

    @defer.inlineCallbacks
    def test_missIsNone(self) -> Any:
        """
        An unknown key is None and an unknown URL has no variants.
        """
        got = yield self.getBlob(b"http://a/none", b"")
        self.assertIsNone(got)  # type: ignore[attr-defined]
        variants = yield self.listVariants(b"http://a/none")
        self.assertEqual(list(variants), [])  # type: ignore[attr-defined]

    @defer.inlineCallbacks
    def test_variants(self) -> Any:
        """
        Variants of one URL are kept apart and listed.
        """
        a = serialize(entry(variant=b"accept=a", body=b"A", vary=(b"accept",)))
        b = serialize(entry(variant=b"accept=b", body=b"B", vary=(b"accept",)))
        yield self.putBlob(b"http://a/x", b"accept=a", a, 60)
        yield self.putBlob(b"http://a/x", b"accept=b", b, 60)
        self.assertEqual((yield self.getBlob(b"http://a/x", b"accept=a")), a)  # type: ignore[attr-defined]
        self.assertEqual((yield self.getBlob(b"http://a/x", b"accept=b")), b)  # type: ignore[attr-defined]
        variants = yield self.listVariants(b"http://a/x")
        self.assertEqual(sorted(variants), [b"accept=a", b"accept=b"])  # type: ignore[attr-defined]

    @defer.inlineCallbacks
    def test_replace(self) -> Any:
        """
        Putting a variant again replaces it.
        """
        yield self.putBlob(b"http://a/x", b"", serialize(entry(body=b"old")), 60)
        new = serialize(entry(body=b"new"))
        yield self.putBlob(b"http://a/x", b"", new, 60)
        self.assertEqual((yield self.getBlob(b"http://a/x", b"")), new)  # type: ignore[attr-defined]
        self.assertEqual(list((yield self.listVariants(b"http://a/x"))), [b""])  # type: ignore[attr-defined]

    @defer.inlineCallbacks
    def test_purge(self) -> Any:
        """
        A purge removes every variant of one URL, counts them, and leaves
        other URLs alone.
        """
        for v in (b"1", b"2", b"3"):
            yield self.putBlob(b"http://a/x", v, serialize(entry(variant=v)), 60)
        yield self.putBlob(b"http://a/y", b"", serialize(entry(url=b"http://a/y")), 60)
        count = yield self.purgeURL(b"http://a/x")
        self.assertEqual(count, 3)  # type: ignore[attr-defined]
        self.assertIsNone((yield self.getBlob(b"http://a/x", b"1")))  # type: ignore[attr-defined]
        self.assertIsNotNone((yield self.getBlob(b"http://a/y", b"")))  # type: ignore[attr-defined]
        self.assertEqual((yield self.purgeURL(b"http://a/x")), 0)  # type: ignore[attr-defined]


class MemoryStorageContractTests(StorageContractMixin, TestCase):
    """
    The storage contract against L{MemoryStore} (blobs through
    L{serialize}/L{deserialize}).
    """

    def setUp(self) -> None:
        self.store = MemoryStore(1 << 20)

    def putBlob(self, urlKey: bytes, variantKey: bytes, blob: bytes, ttl: float) -> defer.Deferred:
        e = deserialize(blob)
        assert e is not None
        e.urlKey, e.variantKey = urlKey, variantKey
        self.store.insert(e)
        return defer.succeed(None)

    def getBlob(self, urlKey: bytes, variantKey: bytes) -> defer.Deferred:
        e = self.store.get(urlKey, variantKey)
        return defer.succeed(serialize(e) if e is not None else None)

    def listVariants(self, urlKey: bytes) -> defer.Deferred:
        return defer.succeed([e.variantKey for e in self.store.variants(urlKey)])

    def purgeURL(self, urlKey: bytes) -> defer.Deferred:
        return defer.succeed(self.store.purge(urlKey))


class SerializationTests(SynchronousTestCase):
    def test_roundTrip(self) -> None:
        """
        An entry survives serialization: keys, Vary names, head, times and
        body; the blob starts with the versioned magic.
        """
        e = entry(variant=b"accept=x\naccept-encoding!", vary=(b"accept", b"accept-encoding"), body=b"\x00\xff")
        blob = serialize(e)
        self.assertTrue(blob.startswith(MAGIC))
        back = deserialize(blob)
        assert back is not None
        self.assertEqual((back.urlKey, back.variantKey, back.vary, back.body),
                         (e.urlKey, e.variantKey, e.vary, e.body))
        self.assertEqual(back.stored, e.stored)

    def test_otherVersionsAndGarbage(self) -> None:
        """
        Another layout's blob, a truncated one or trailing bytes are never
        decoded.
        """
        blob = serialize(entry())
        self.assertIsNone(deserialize(b"TXC2" + blob[4:]))
        for cut in range(len(blob)):
            self.assertIsNone(deserialize(blob[:cut]), cut)
        self.assertIsNone(deserialize(blob + b"x"))
        self.assertIsNone(deserialize(b""))


class MemoryStoreTests(SynchronousTestCase):
    def test_boundNeverExceeded(self) -> None:
        """
        Inserting far more than the bound keeps the counted bytes within
        it, the least recently used evicted first.
        """
        store = MemoryStore(10 * (ENTRY_OVERHEAD + 1200))
        for i in range(100):
            store.insert(entry(url=b"http://a/%d" % i, body=b"x" * 1000))
            self.assertLessEqual(store.bytes, store.maxBytes)
        self.assertGreater(len(store), 3)
        self.assertIsNone(store.get(b"http://a/0", b""))
        self.assertIsNotNone(store.get(b"http://a/99", b""))

    def test_lruOrder(self) -> None:
        """
        A recently read entry survives an eviction that takes an older
        unread one.
        """
        one = entry(url=b"http://a/1")
        store = MemoryStore(2 * one.size + 10)
        store.insert(one)
        store.insert(entry(url=b"http://a/2"))
        self.assertIsNotNone(store.get(b"http://a/1", b""))
        store.insert(entry(url=b"http://a/3"))
        self.assertIsNotNone(store.get(b"http://a/1", b""))
        self.assertIsNone(store.get(b"http://a/2", b""))

    def test_countsEverything(self) -> None:
        """
        An entry is counted for its keys, head, body and overhead; a purge
        gives it all back.
        """
        store = MemoryStore(1 << 20)
        e = entry(body=b"x" * 100)
        store.insert(e)
        self.assertEqual(store.bytes, entrySize(e.urlKey, e.variantKey, e.stored.head) + 100)
        self.assertEqual(store.purge(e.urlKey), 1)
        self.assertEqual(store.bytes, 0)

    def test_writerStreams(self) -> None:
        """
        A writer counts bytes as they come and stores on commit; until
        then nothing is visible.
        """
        store = MemoryStore(1 << 20)
        e = entry()
        w = store.writer(e.urlKey, b"", (), e.stored)
        self.assertTrue(w.write(b"ab"))
        self.assertIsNone(store.get(e.urlKey, b""))
        self.assertGreater(store.bytes, 0)
        self.assertTrue(w.write(b"cd"))
        stored = w.commit()
        assert stored is not None
        self.assertEqual(store.get(e.urlKey, b"").body, b"abcd")  # type: ignore[union-attr]
        self.assertEqual(stored.stored.bodyLength, 4)
        self.assertEqual(store.bytes, stored.size)

    def test_writerOverMaxObject(self) -> None:
        """
        A body growing past the largest object is abandoned and its bytes
        given back.
        """
        store = MemoryStore(1 << 20, maxObject=10)
        e = entry()
        w = store.writer(e.urlKey, b"", (), e.stored)
        self.assertTrue(w.write(b"x" * 10))
        self.assertFalse(w.write(b"y"))
        self.assertTrue(w.abandoned)
        self.assertEqual(store.bytes, 0)
        self.assertIsNone(w.commit())
        self.assertIsNone(store.get(e.urlKey, b""))

    def test_writerLargerThanCache(self) -> None:
        """
        A body that cannot fit the whole cache is abandoned (after evicting
        what it could), and the bound holds.
        """
        store = MemoryStore(3000)
        e = entry()
        w = store.writer(e.urlKey, b"", (), e.stored)
        for _ in range(10):
            w.write(b"z" * 500)
            self.assertLessEqual(store.bytes, 3000)
        self.assertTrue(w.abandoned)
        self.assertEqual(store.bytes, 0)

    def test_abandon(self) -> None:
        """
        An abandoned writer stores nothing and gives its bytes back.
        """
        store = MemoryStore(1 << 20)
        e = entry()
        w = store.writer(e.urlKey, b"", (), e.stored)
        w.write(b"abc")
        w.abandon()
        self.assertIsNone(w.commit())
        self.assertEqual((store.bytes, len(store)), (0, 0))

    def test_select(self) -> None:
        """
        select picks the variant whose selecting fields match the request,
        the most recent when several do; it says whether the URL is known.
        """
        store = MemoryStore(1 << 20)
        vary = (b"accept",)

        def request(accept: Optional[bytes]) -> RequestHead:
            hs: List[Any] = [(b"Host", b"a")]
            if accept is not None:
                hs.append((b"Accept", accept))
            return RequestHead(b"GET", b"/x", b"HTTP/1.1", hs)

        for value in (b"a", b"b"):
            store.insert(entry(variant=varyKey(vary, request(value)), vary=vary, body=value))
        found, known = store.select(b"http://a/x", request(b"b"))
        self.assertEqual((found.body if found else None, known), (b"b", True))
        self.assertEqual(store.select(b"http://a/x", request(None)), (None, True))
        self.assertEqual(store.select(b"http://a/other", request(b"a")), (None, False))

    def test_resize(self) -> None:
        """
        Shrinking evicts to fit.
        """
        store = MemoryStore(1 << 20)
        for i in range(10):
            store.insert(entry(url=b"http://a/%d" % i))
        size = entry().size
        store.resize(3 * size)
        self.assertLessEqual(store.bytes, 3 * size)
        self.assertEqual(len(store), 3)

    def test_update(self) -> None:
        """
        update replaces the head and keeps the body.
        """
        store = MemoryStore(1 << 20)
        e = entry(body=b"keep")
        store.insert(e)
        newer = StoredResponse(head((b"X", b"1")), 5.0, 5.0, 0.0, 4)
        store.update(e, newer)
        got = store.get(e.urlKey, b"")
        assert got is not None
        self.assertEqual((got.body, got.stored.head.get(b"x")), (b"keep", b"1"))
        self.assertEqual(len(store), 1)
