"""
Python cost of one proxied HTTP request through the forward proxy's core,
on fake transports (no sockets, no syscalls): parse, policy, route, pool,
serialize both ways.  Prints microseconds per request (best of several
rounds), which is the ceiling the event loop and syscalls are added to.

    python bench/bench_http_core.py
"""

from __future__ import annotations

import time

from twisted.internet.task import Clock

from txproxy.testing import FakeConnector, connect, forwardFactory

REQUEST = (
    b"GET http://origin.test/index.html HTTP/1.1\r\nHost: origin.test\r\nUser-Agent: bench/1.0\r\n"
    b"Accept: */*\r\nAccept-Encoding: gzip\r\nProxy-Connection: keep-alive\r\n\r\n"
)
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Fri, 27 Nov 2026 00:00:00 GMT\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 12\r\nConnection: keep-alive\r\n\r\nhello world\n"
)


def main(n: int = 20000, rounds: int = 5) -> None:
    connector = FakeConnector({"origin.test": ["192.0.2.1"]})
    factory = forwardFactory(connector, Clock())
    proto, client = connect(factory)
    proto.dataReceived(REQUEST)
    upstream = connector.last.succeed()
    upProto = connector.last.protocol
    upProto.dataReceived(RESPONSE)
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(n):
            proto.dataReceived(REQUEST)
            upProto.dataReceived(RESPONSE)
        elapsed = time.perf_counter() - start
        client.clear()
        upstream.clear()
        best = min(best, elapsed)
    assert len(connector.attempts) == 1, "the upstream connection was not reused"
    print(f"forward keep-alive request, Python cost: {best / n * 1e6:.1f} us/request (best of {rounds} x {n})")


if __name__ == "__main__":
    main()
