"""
Tests for L{txproxy.h2._hpack}: the caching HPACK codecs give, block for
block, what hpack's own give.
"""

from __future__ import annotations

import random
from typing import Any, List, Tuple

from h2.config import H2Configuration
from hpack import Decoder, Encoder, NeverIndexedHeaderTuple
from hpack.exceptions import OversizedHeaderListError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from txproxy.h2._client import H2ClientConnection
from txproxy.h2._hpack import CachingDecoder, CachingEncoder, CountingTable
from txproxy.h2._server import _Connection

Headers = List[Tuple[bytes, bytes]]

#: Header lists a client might send over and over, some differing only in
#: one field (a path, a date), one with a never-indexed field.
POOL: List[Headers] = [
    [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"a.test"), (b":path", b"/")],
    [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"a.test"), (b":path", b"/x.css"),
     (b"accept", b"text/css")],
    [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"grpc.test"), (b":path", b"/svc/Call"),
     (b"content-type", b"application/grpc"), (b"te", b"trailers")],
    [(b":status", b"200"), (b"content-length", b"12"), (b"date", b"Mon, 07 Dec 2026 00:00:01 GMT")],
    [(b":status", b"200"), (b"content-length", b"12"), (b"date", b"Mon, 07 Dec 2026 00:00:02 GMT")],
    [(b":status", b"404"), (b"x-long", b"v" * 1500)],
]


def sequence(seed: int, steps: int = 400) -> List[Any]:
    """
    A random run of header lists from L{POOL} (mostly repeats of the one
    before), with now and then a table size change (an int).
    """
    rng = random.Random(seed)
    out: List[Any] = []
    current = POOL[0]
    for _ in range(steps):
        roll = rng.random()
        if roll < 0.03:
            out.append(rng.choice([0, 256, 1024, 4096]))
            continue
        if roll < 0.35:
            current = list(rng.choice(POOL))
            if rng.random() < 0.2:
                current = current + [NeverIndexedHeaderTuple(b"authorization", b"secret")]
        out.append(list(current))
    return out


class CodecTests(SynchronousTestCase):
    def test_decoderMatchesHpack(self) -> None:
        """
        Over random runs (repeats, new fields, evictions, table size
        updates), the caching decoder returns what hpack's decoder returns,
        block for block, keeps the same table, and answers repeats from
        memory.
        """
        hits = 0
        for seed in range(20):
            encoder = Encoder()
            plain, caching = Decoder(), CachingDecoder()
            for item in sequence(seed):
                if isinstance(item, int):
                    encoder.header_table_size = item
                    continue
                block = encoder.encode(item)
                expected = plain.decode(block, raw=True)
                self.assertEqual(caching.decode(block, raw=True), expected)
                self.assertEqual(list(caching.header_table.dynamic_entries),
                                 list(plain.header_table.dynamic_entries))
            hits += caching.hits
        self.assertGreater(hits, 1000)

    def test_encoderMatchesHpack(self) -> None:
        """
        Over random runs, the caching encoder writes the bytes hpack's
        encoder writes (table size updates included), which decode to the
        fields given, and answers repeats from memory.
        """
        hits = 0
        for seed in range(20):
            plain, caching, decoder = Encoder(), CachingEncoder(), Decoder()
            for item in sequence(seed):
                if isinstance(item, int):
                    plain.header_table_size = item
                    caching.header_table_size = item
                    continue
                block = caching.encode(item)
                self.assertEqual(block, plain.encode(item))
                self.assertEqual([tuple(h) for h in decoder.decode(block, raw=True)], [tuple(h) for h in item])
            hits += caching.hits
        self.assertGreater(hits, 1000)

    def test_limitsCheckedAgain(self) -> None:
        """
        A remembered block is decoded again, not answered, once the
        decoder's limits changed: a smaller header list limit refuses it.
        """
        encoder, decoder, plain = Encoder(), CachingDecoder(), Decoder()
        first = encoder.encode(POOL[0])  # (fills the table)
        for d in (decoder, plain):
            d.decode(first, raw=True)
        block = encoder.encode(POOL[0])  # (indexed fields only)
        expected = plain.decode(block, raw=True)
        self.assertEqual(decoder.decode(block, raw=True), expected)
        self.assertEqual(decoder.decode(block, raw=True), expected)
        self.assertEqual(decoder.hits, 1)
        decoder.max_header_list_size = 10
        self.assertRaises(OversizedHeaderListError, decoder.decode, block, True)

    def test_tableChangeInvalidates(self) -> None:
        """
        Each addition and each size setting counts as a change of the
        table.
        """
        table = CountingTable()
        table.add(b"a", b"1")
        table.maxsize = 100
        table.maxsize = 0
        self.assertEqual(table.generation, 3)
        self.assertEqual(len(table.dynamic_entries), 0)

    def test_connectionsUseThem(self) -> None:
        """
        The server's and the upstream client's C{h2} connections code with
        them, their limits carried over.
        """
        server = _Connection(config=H2Configuration(client_side=False, header_encoding=None))
        client = H2ClientConnection(Clock())._conn
        for conn in (server, client):
            self.assertIsInstance(conn.decoder, CachingDecoder)
            self.assertIsInstance(conn.encoder, CachingEncoder)
            self.assertEqual(conn.decoder.max_header_list_size, conn.DEFAULT_MAX_HEADER_LIST_SIZE)
