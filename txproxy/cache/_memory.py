# -*- test-case-name: tests.test_cache_memory -*-
"""
The memory tier: a byte-bounded LRU of L{Entry} values, several variants
per URL key.  Sans-IO (no Twisted): its users give it the time.

What is counted (L{MemoryStore.bytes}) is every entry's keys, head, body
and a fixed per-entry overhead (L{ENTRY_OVERHEAD}), and the bytes of the
bodies being written (L{MemoryStore.writer}): the count never exceeds
L{MemoryStore.maxBytes}, the least recently used entries being evicted
first to make room, and a body that cannot fit (or grows past
L{MemoryStore.maxObject}) abandoned.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

from txproxy.cache._entry import Entry, entrySize
from txproxy.cache._policy import StoredResponse, varyKey
from txproxy.http import RequestHead

__all__ = ["DEFAULT_MAX_OBJECT", "MemoryStore", "Writer"]

#: The largest body stored by default (C{--cache-max-object}).
DEFAULT_MAX_OBJECT = 8388608

_Key = Tuple[bytes, bytes]


class Writer:
    """
    An entry being filled as its body streams to the first client.  Its
    bytes are counted as they arrive; L{commit} makes it visible,
    L{abandon} (or a body past the limits) drops it.

    @ivar abandoned: set once the entry will not be stored.
    """

    abandoned = False
    committed = False

    def __init__(self, store: "MemoryStore", urlKey: bytes, variantKey: bytes,
                 vary: Tuple[bytes, ...], stored: StoredResponse) -> None:
        self._store = store
        self.urlKey = urlKey
        self.variantKey = variantKey
        self.vary = vary
        self.stored = stored
        self._chunks: List[bytes] = []
        self._length = 0
        self._reserved = entrySize(urlKey, variantKey, stored.head)
        if not store._reserve(self._reserved):
            self._reserved = 0
            self.abandoned = True

    def write(self, data: bytes) -> bool:
        """
        Add body bytes.

        @return: whether the entry is still being stored.
        """
        if self.abandoned:
            return False
        n = len(data)
        if self._length + n > self._store.maxObject or not self._store._reserve(n):
            self.abandon()
            return False
        self._reserved += n
        self._length += n
        self._chunks.append(data)
        return True

    def abandon(self) -> None:
        """
        Drop what was written; the entry is not stored.
        """
        if not self.abandoned and not self.committed:
            self.abandoned = True
            self._store._release(self._reserved)
            self._reserved = 0
            self._chunks = []

    def commit(self) -> Optional[Entry]:
        """
        Store the complete entry (replacing the variant stored before).

        @return: the entry, or L{None} when it was abandoned.
        """
        if self.abandoned or self.committed:
            return None
        self.committed = True
        body = b"".join(self._chunks)
        self._chunks = []
        stored = self.stored
        if stored.bodyLength != len(body):
            stored = StoredResponse(stored.head, stored.requestTime, stored.responseTime,
                                    stored.initialAge, len(body))
        entry = Entry(self.urlKey, self.variantKey, self.vary, stored, body)
        store = self._store
        store._release(self._reserved)
        self._reserved = 0
        store.insert(entry)
        return entry


class MemoryStore:
    """
    The byte-bounded LRU memory tier.

    @ivar maxBytes: the bound (C{--cache}).
    @ivar maxObject: the largest body stored (C{--cache-max-object}).
    @ivar bytes: the bytes counted now (entries and bodies being written).
    """

    def __init__(self, maxBytes: int, maxObject: int = DEFAULT_MAX_OBJECT) -> None:
        self.maxBytes = maxBytes
        self.maxObject = maxObject
        self.bytes = 0
        self._lru: "OrderedDict[_Key, Entry]" = OrderedDict()
        self._byURL: Dict[bytes, Dict[bytes, Entry]] = {}

    def __len__(self) -> int:
        return len(self._lru)

    # -- accounting

    def _reserve(self, n: int) -> bool:
        if self.bytes + n > self.maxBytes:
            self._evict(self.bytes + n - self.maxBytes)
            if self.bytes + n > self.maxBytes:
                return False
        self.bytes += n
        return True

    def _release(self, n: int) -> None:
        self.bytes -= n

    def _evict(self, needed: int) -> None:
        lru = self._lru
        while needed > 0 and lru:
            _, entry = lru.popitem(last=False)
            needed -= self._forget(entry)

    def _forget(self, entry: Entry) -> int:
        variants = self._byURL.get(entry.urlKey)
        if variants is not None:
            variants.pop(entry.variantKey, None)
            if not variants:
                del self._byURL[entry.urlKey]
        size = entry.size
        self.bytes -= size
        return size

    def resize(self, maxBytes: int, maxObject: Optional[int] = None) -> None:
        """
        Change the bound (a reload), evicting to fit.
        """
        self.maxBytes = maxBytes
        if maxObject is not None:
            self.maxObject = maxObject
        if self.bytes > maxBytes:
            self._evict(self.bytes - maxBytes)

    # -- the entries

    def select(self, urlKey: bytes, request: RequestHead) -> Tuple[Optional[Entry], bool]:
        """
        The stored variant of C{urlKey} that C{request} selects
        (RFC 9111 section 4.1), marked as recently used.

        @return: the entry (or L{None}) and whether any variant of the URL
            is stored (a C{vary-miss} rather than a C{uri-miss}).
        """
        variants = self._byURL.get(urlKey)
        if not variants:
            return None, False
        best: Optional[Entry] = None
        for entry in variants.values():
            if varyKey(entry.vary, request) == entry.variantKey:
                if best is None or entry.stored.responseTime > best.stored.responseTime:
                    best = entry
        if best is not None:
            self._lru.move_to_end((urlKey, best.variantKey))
        return best, True

    def get(self, urlKey: bytes, variantKey: bytes) -> Optional[Entry]:
        """
        The entry stored for C{(urlKey, variantKey)}, marked as recently
        used, or L{None}.
        """
        entry = self._lru.get((urlKey, variantKey))
        if entry is not None:
            self._lru.move_to_end((urlKey, variantKey))
        return entry

    def variants(self, urlKey: bytes) -> List[Entry]:
        """
        Every stored variant of C{urlKey}.
        """
        return list(self._byURL.get(urlKey, {}).values())

    def writer(self, urlKey: bytes, variantKey: bytes, vary: Tuple[bytes, ...],
               stored: StoredResponse) -> Writer:
        """
        Start storing a response whose body is still to come.
        """
        return Writer(self, urlKey, variantKey, vary, stored)

    def insert(self, entry: Entry) -> bool:
        """
        Store a complete entry, replacing the same variant.

        @return: whether it was stored (it fits the bounds).
        """
        key = (entry.urlKey, entry.variantKey)
        old = self._lru.pop(key, None)
        if old is not None:
            self._forget(old)
        size = entry.size
        if len(entry.body) > self.maxObject or not self._reserve(size):
            return False
        self._lru[key] = entry
        self._byURL.setdefault(entry.urlKey, {})[entry.variantKey] = entry
        return True

    def update(self, entry: Entry, stored: StoredResponse) -> Entry:
        """
        Replace the head and times of a stored entry (a C{304}); the body
        stays.

        @return: the updated entry (a new one, stored in place of the old
            one when it still fits).
        """
        new = Entry(entry.urlKey, entry.variantKey, entry.vary, stored, entry.body)
        self.insert(new)
        return new

    def remove(self, entry: Entry) -> None:
        """
        Remove C{entry} if it is still stored.
        """
        key = (entry.urlKey, entry.variantKey)
        if self._lru.get(key) is entry:
            del self._lru[key]
            self._forget(entry)

    def purge(self, urlKey: bytes) -> int:
        """
        Remove every variant of C{urlKey}.

        @return: how many were removed.
        """
        variants = self._byURL.get(urlKey)
        if not variants:
            return 0
        entries = list(variants.values())
        for entry in entries:
            self.remove(entry)
        return len(entries)
