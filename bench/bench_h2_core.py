"""
Python cost of one proxied HTTP/2 request through the HTTP core, on fake
transports (no sockets, no syscalls), beside the same request over
HTTP/1.1 keep-alive in the same process: the price of the HTTP/2 layer
(framing, HPACK, the stream transport, a protocol per stream).

    python bench/bench_h2_core.py                 # microseconds per request, both
    python bench/bench_h2_core.py --profile tottime --only h2
    python bench/bench_h2_core.py --instructions -n 1000

The client's side is encoded before the clock starts (one HEADERS frame per
stream, streams one after another on one connection, as a browser's
sequential requests would be); the responses are decoded after it stops,
to check them.  For --instructions (--server-only) the client's requests for
three rounds are encoded at start and the responses are counted from their
frame headers, not decoded, so that the client's work is the same in the
one-round and three-round runs whose difference is taken.  Modes: C{reverse} only (origin-form GET routed by
C{Host}, as C{bench/bench_http_core.py --mode reverse}).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import struct
import subprocess
import sys
import tempfile
import time
from typing import Any, List

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from h2.config import H2Configuration  # noqa: E402
from h2.connection import H2Connection  # noqa: E402
from h2.events import DataReceived, StreamEnded  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402

from txproxy.testing import FakeConnector, connect, reverseFactory  # noqa: E402

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nContent-Type: text/plain\r\n\r\nhello world\n"
H1_REQUEST = (b"GET /index.html HTTP/1.1\r\nHost: origin.test\r\nUser-Agent: bench/1\r\n"
              b"Accept: */*\r\n\r\n")
H2_HEADERS = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"origin.test"),
              (b":path", b"/index.html"), (b"user-agent", b"bench/1"), (b"accept", b"*/*")]


def _factory(n: int) -> Any:
    connector = FakeConnector({"origin.test": ["192.0.2.1"]}, autoConnect=True)
    factory = reverseFactory({"*": "http://192.0.2.1:8001"}, connector=connector, clock=Clock(),
                             h2_max_streams=str(max(n, 100)))
    return factory, connector


class H1Case:
    name = "http/1.1"

    def prepare(self) -> None:
        pass

    def finish(self) -> None:
        pass

    def __init__(self, n: int) -> None:
        self.n = n
        factory, self.connector = _factory(n)
        self.proto, self.client = connect(factory)
        self.proto.dataReceived(H1_REQUEST)
        self.up = self.connector.last.protocol
        self.up.dataReceived(RESPONSE)
        self.client.clear()
        self.connector.last.transport.clear()

    def loop(self) -> float:
        received, upReceived, request = self.proto.dataReceived, self.up.dataReceived, H1_REQUEST
        start = time.thread_time()
        for _ in range(self.n):
            received(request)
            upReceived(RESPONSE)
        elapsed = time.thread_time() - start
        assert self.client.value().count(b" 200 OK") == self.n
        self.client.clear()
        self.connector.last.transport.clear()
        return elapsed


class H2Case:
    name = "h2"

    #: Set for instruction counts: the client's side costs the same in the
    #: runs whose difference is taken (see L{instructions}).
    serverOnly = False
    pregenerate = 0

    def __init__(self, n: int) -> None:
        self.n = n
        factory, self.connector = _factory(n * max(self.pregenerate, 1))
        self.proto, self.client = connect(factory)
        self.h2 = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.h2.initiate_connection()
        self.proto.dataReceived(self.h2.data_to_send())
        self._request()
        self.up = self.connector.last.protocol
        self.up.dataReceived(RESPONSE)
        self._check(1)
        self.batches = [self._encode() for _ in range(self.pregenerate)]

    def _request(self) -> None:
        sid = self.h2.get_next_available_stream_id()
        self.h2.send_headers(sid, H2_HEADERS, end_stream=True)
        self.proto.dataReceived(self.h2.data_to_send())

    def _check(self, n: int) -> None:
        events = self.h2.receive_data(self.client.value())
        self.client.clear()
        ended = sum(1 for e in events if isinstance(e, StreamEnded))
        for e in events:
            if isinstance(e, DataReceived):
                self.h2.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
        assert ended == n, (ended, n, events[-3:])
        self.proto.dataReceived(self.h2.data_to_send())
        self.client.clear()
        self.connector.last.transport.clear()

    def _encode(self) -> List[bytes]:
        frames: List[bytes] = []
        for _ in range(self.n):
            sid = self.h2.get_next_available_stream_id()
            self.h2.send_headers(sid, H2_HEADERS, end_stream=True)
            frames.append(self.h2.data_to_send())
        return frames

    def prepare(self) -> None:
        self.frames = self.batches.pop(0) if self.batches else self._encode()

    def loop(self) -> float:
        frames = self.frames
        received = self.proto.dataReceived
        connector = self.connector
        start = time.thread_time()
        for data in frames:
            received(data)
            connector.last.protocol.dataReceived(RESPONSE)
        elapsed = time.thread_time() - start
        return elapsed

    def finish(self) -> None:
        if not self.serverOnly:
            self._check(self.n)
            return
        # Without decoding: count the frames that end a stream, from their
        # 9-byte headers, and give the connection window back with a raw
        # WINDOW_UPDATE (the client's h2 state is not used again).
        data = self.client.value()
        self.client.clear()
        self.connector.last.transport.clear()
        at, ended, flowed = 0, 0, 0
        while at + 9 <= len(data):
            length = int.from_bytes(data[at:at + 3], "big")
            kind, flags = data[at + 3], data[at + 4]
            if kind == 0:  # DATA
                flowed += length
            if kind in (0, 1) and flags & 1:  # END_STREAM on DATA or HEADERS
                ended += 1
            at += 9 + length
        assert ended == self.n, (ended, self.n)
        if flowed:
            self.proto.dataReceived(struct.pack(">I", 4)[1:] + b"\x08\x00" + b"\x00\x00\x00\x00"
                                    + struct.pack(">I", flowed))
            self.client.clear()


CASES = {"http/1.1": H1Case, "h2": H2Case}


def instructions(only: str, n: int) -> float:
    """
    Instructions per request under callgrind: (3 rounds - 1 round) / 2n.
    """
    def collected(rounds: int) -> int:
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "cg.out")
            subprocess.run(
                ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
                 os.path.abspath(__file__), "--only", only, "-n", str(n), "--rounds", str(rounds), "--quiet",
                 "--server-only"],
                check=True, capture_output=True,
            )
            with open(out) as f:
                for line in f:
                    if line.startswith("summary:") or line.startswith("totals:"):
                        return int(line.split()[1])
        raise RuntimeError("no callgrind summary")

    return (collected(3) - collected(1)) / (2 * n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=2000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--only", choices=sorted(CASES), action="append")
    parser.add_argument("--profile", metavar="SORT", help="cProfile one round, sorted by SORT")
    parser.add_argument("--instructions", action="store_true", help="count instructions under callgrind")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--server-only", action="store_true",
                        help="(for --instructions) encode the client's requests for 3 rounds up front and count, "
                             "not decode, the responses: the client's work is then the same whatever --rounds is")
    args = parser.parse_args()
    if args.server_only:
        H2Case.serverOnly = True
        H2Case.pregenerate = 3
    names = args.only or ["http/1.1", "h2"]
    if args.instructions:
        counts = {name: instructions(name, args.n) for name in names}
        for name, count in counts.items():
            print(f"{name:<9} {count:10,.0f} instructions/request")
        if len(counts) == 2:
            print(f"h2 / http/1.1: {counts['h2'] / counts['http/1.1']:.2f}x the instructions")
        return
    cases = [CASES[name](args.n) for name in names]
    if args.profile:
        for case in cases:
            case.prepare()
            profiler = cProfile.Profile()
            profiler.enable()
            case.loop()
            profiler.disable()
            case.finish()
            print(f"## {case.name}")
            pstats.Stats(profiler).sort_stats(args.profile).print_stats(25)
        return
    times = {case.name: [] for case in cases}
    for _ in range(args.rounds):
        for case in cases:
            case.prepare()
            times[case.name].append(case.loop() / args.n * 1e6)
            case.finish()
    if args.quiet:
        return
    for name, ts in times.items():
        ts.sort()
        print(f"{name:<9} best {ts[0]:7.2f} us/request, median {ts[len(ts) // 2]:7.2f}")
    if len(times) == 2:
        print(f"h2 / http/1.1 (medians): {times['h2'][len(times['h2']) // 2] / times['http/1.1'][len(times['http/1.1']) // 2]:.2f}x")


if __name__ == "__main__":
    main()
