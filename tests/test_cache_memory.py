"""
Tests for L{txproxy.cache._memory} (the memory tier) and
L{txproxy.cache._entry} (the versioned serialization).  The storage
contract every tier keeps (L{tests.cachecontract}) runs here against the
memory tier; what only the memory tier does (a byte bound, least recently
used out first, streaming writers) is tested beside it.
"""

from __future__ import annotations

from typing import Any, List, Optional

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.cachecontract import CacheTierContractMixin, MemoryTier, entry, head
from txproxy.cache import MAGIC, MemoryStore, StoredResponse, deserialize, serialize
from txproxy.cache._entry import ENTRY_OVERHEAD, entrySize
from txproxy.cache._policy import varyKey
from txproxy.http import RequestHead


class MemoryTierContractTests(CacheTierContractMixin, TestCase):
    """
    The storage contract (L{tests.cachecontract}) against L{MemoryStore}.
    """

    def setUp(self) -> None:
        self.tier = MemoryTier(MemoryStore(16 << 20))

    def settle(self) -> "defer.Deferred[Any]":
        return defer.succeed(None)


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

    def test_insertSerialized(self) -> None:
        """
        A serialized entry, decoded and inserted whole (as a Redis hit is),
        is got back as the same entry: serialized again, the same bytes.
        """
        store = MemoryStore(1 << 20)
        blob = serialize(entry(variant=b"accept=a", vary=(b"accept",), body=bytes(range(256)) * 4))
        e = deserialize(blob)
        assert e is not None
        self.assertTrue(store.insert(e))
        got = store.get(b"http://a/x", b"accept=a")
        assert got is not None
        self.assertEqual(serialize(got), blob)
        self.assertEqual([v.variantKey for v in store.variants(b"http://a/x")], [b"accept=a"])
