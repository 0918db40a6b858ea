# -*- test-case-name: tests.test_h2_hpack -*-
"""
HPACK (python-hyper's C{hpack}) with a one-block memory on each side, for
the requests and responses that repeat.

Most header blocks on a busy HTTP/2 connection are the block before it
again: a load generator's, a gRPC client calling one method, a browser's
requests once the dynamic table holds their fields.  Such a block changes
nothing in the dynamic table (it only refers to entries), so while the
table stays as it was, the same bytes decode to the same fields and the
same fields encode to the same bytes.  L{CachingDecoder} and
L{CachingEncoder} keep the last block that left the table unchanged and
answer it again without running HPACK; any change to the table (an
addition, an eviction, a new size) makes them run it.

Each table counts its changes (L{CountingTable.generation}); a remembered
block is answered only at the generation it was made at, and only when
the decoder's limits are the ones it was checked against.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

from hpack import Decoder, Encoder
from hpack.table import HeaderTable

__all__ = ["CachingDecoder", "CachingEncoder", "CountingTable"]


class CountingTable(HeaderTable):
    """
    hpack's header table, counting the changes made to it.

    @ivar generation: incremented by every addition and every size
        setting (which may evict entries).
    """

    generation = 0

    def add(self, name: bytes, value: bytes) -> None:
        self.generation += 1
        HeaderTable.add(self, name, value)

    @property
    def maxsize(self) -> int:
        return self._maxsize

    @maxsize.setter
    def maxsize(self, newmax: int) -> None:
        self.generation += 1
        HeaderTable.maxsize.fset(self, newmax)  # type: ignore[attr-defined]


class CachingDecoder(Decoder):
    """
    hpack's decoder, answering a repeated block that left the table
    unchanged from memory (raw decoding, as C{h2} asks for, only).
    """

    _last: Optional[Tuple[bytes, Tuple[Any, ...], Tuple[Any, ...]]] = None
    header_table: CountingTable
    #: Blocks answered from memory.
    hits = 0

    def __init__(self, max_header_list_size: int = 2**16) -> None:
        super().__init__(max_header_list_size)
        self.header_table = CountingTable()
        self.max_allowed_table_size = self.header_table.maxsize

    def _state(self) -> Tuple[Any, ...]:
        return (self.header_table.generation, self.max_header_list_size, self.max_allowed_table_size)

    def decode(self, data: bytes, raw: bool = False) -> Any:
        if not raw:
            return Decoder.decode(self, data, raw)
        last = self._last
        state = self._state()
        if last is not None and last[0] == data and last[1] == state:
            self.hits += 1
            return list(last[2])
        headers = Decoder.decode(self, data, True)
        if self._state() == state:
            self._last = (bytes(data), state, tuple(headers))
        return headers


class CachingEncoder(Encoder):
    """
    hpack's encoder, answering a repeated header list that left the table
    unchanged from memory (lists of C{(name, value)} tuples with Huffman
    coding, as C{h2} gives it; a pending table size update is always
    encoded).
    """

    _last: Optional[Tuple[Tuple[Any, ...], int, bytes]] = None
    header_table: CountingTable
    #: Header lists answered from memory.
    hits = 0

    def __init__(self) -> None:
        super().__init__()
        self.header_table = CountingTable()

    def encode(self, headers: Any, huffman: bool = True) -> bytes:
        table = self.header_table
        if table.resized or huffman is not True or type(headers) is not list:
            return Encoder.encode(self, headers, huffman)
        try:
            key = tuple(headers)
            last = self._last
            hit = last is not None and last[1] == table.generation and last[0] == key
        except TypeError:  # (an unhashable field)
            return Encoder.encode(self, headers, huffman)
        if hit:
            self.hits += 1
            return last[2]  # type: ignore[index]
        generation = table.generation
        block: bytes = Encoder.encode(self, headers, huffman)
        if table.generation == generation:
            self._last = (key, generation, block)
        return block


def cachingCodecs(connection: Any) -> None:
    """
    Give an C{h2} connection a L{CachingEncoder} and a L{CachingDecoder}
    in place of the codecs it made (before it has coded anything), with the
    decoder's limits carried over.
    """
    old = connection.decoder
    decoder = CachingDecoder(old.max_header_list_size)
    decoder.max_allowed_table_size = old.max_allowed_table_size
    decoder.header_table_size = old.header_table_size
    connection.decoder = decoder
    # (A new connection's encoder has its default table: nothing to carry.)
    connection.encoder = CachingEncoder()
