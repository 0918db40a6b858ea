# -*- test-case-name: tests.test_http_parser -*-
"""
Microbenchmark: txproxy's pure-Python HTTP/1.1 head parser against
httptools (llhttp) and a naive split-and-loop parser, on a typical
8-header request and response.

Run on CPython and on PyPy (httptools is skipped where it is not
installed; it does not build on Debian's PyPy):

    /tmp/venv/bin/python bench/bench_http_parser.py
    /tmp/pypyvenv/bin/python bench/bench_http_parser.py

Prints the best of several runs, in microseconds of CPU time per
operation.

Why txproxy has its own parser: on CPython llhttp (through httptools)
reads a head about three times faster than txproxy's parser, but it does
less (no Host, target-form, framing or header-syntax policy of ours; it
refuses some RFC-valid input and its leniencies are not ours), it cannot
run on PyPy (Debian's PyPy has no headers to build it, and cpyext would
eat the gain anyway), and two parsers with different acceptance sets in
one proxy are themselves a smuggling risk.  On PyPy the pure-Python
parser is several times faster than on CPython.  The fuzz tests use
httptools, where installed, as a differential oracle instead.
"""

from __future__ import annotations

import os
import sys
import time
import timeit
from typing import Callable, List, Tuple

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from txproxy.http import (  # noqa: E402
    ChunkedReader,
    HeadReader,
    appendVia,
    applyFraming,
    findHeadEnd,
    parseAbsoluteURI,
    parseRequestHead,
    parseResponseHead,
    removeHopByHop,
    requestFraming,
    responseFraming,
    serializeRequestHead,
    serializeResponseHead,
)

REQUEST = (
    b"GET http://www.example.com/index.html?q=1 HTTP/1.1\r\n"
    b"Host: www.example.com\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0\r\n"
    b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
    b"Accept-Language: en-US,en;q=0.5\r\n"
    b"Accept-Encoding: gzip, deflate\r\n"
    b"Connection: keep-alive\r\n"
    b"Cookie: session=abcdef0123456789; theme=dark\r\n"
    b"Upgrade-Insecure-Requests: 1\r\n"
    b"\r\n"
)
RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Date: Fri, 27 Nov 2026 01:00:00 GMT\r\n"
    b"Server: nginx/1.24.0\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n"
    b"Content-Length: 612\r\n"
    b"Last-Modified: Tue, 11 Apr 2023 01:45:34 GMT\r\n"
    b"Connection: keep-alive\r\n"
    b"ETag: \"6434bbbe-264\"\r\n"
    b"Accept-Ranges: bytes\r\n"
    b"\r\n"
)


def ours_request() -> object:
    end = findHeadEnd(REQUEST)
    head = parseRequestHead(REQUEST[:end])
    requestFraming(head)
    return head


def ours_response() -> object:
    end = findHeadEnd(RESPONSE)
    head = parseResponseHead(RESPONSE[:end])
    responseFraming(b"GET", head)
    return head


_reqHead = parseRequestHead(REQUEST)
_respHead = parseResponseHead(RESPONSE)


def ours_proxy_request() -> bytes:
    """
    What a forward proxy does per request head: read, parse, frame,
    rewrite, serialize.
    """
    reader = HeadReader()
    data = reader.feed(REQUEST)
    assert data is not None
    head = parseRequestHead(data)
    framing = requestFraming(head)
    parseAbsoluteURI(head.target)
    headers = applyFraming(appendVia(removeHopByHop(head.headers), head.version), framing)
    return serializeRequestHead(head.__class__(head.method, b"/index.html?q=1", head.version, headers))


def naive_request() -> object:
    """
    The obvious split-and-loop parser (no validation beyond splitting),
    for comparison with the regex-based one.
    """
    end = REQUEST.find(b"\r\n\r\n")
    lines = REQUEST[:end].split(b"\r\n")
    method, target, version = lines[0].split(b" ")
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.append((name, value.strip(b" \t")))
    return method, target, version, tuple(headers)


def makeHttptools() -> List[Tuple[str, Callable[[], object]]]:
    try:
        import httptools  # type: ignore[import-untyped]
    except ImportError:
        return []

    class Collector:
        __slots__ = ("headers", "url", "done")

        def __init__(self) -> None:
            self.headers: List[Tuple[bytes, bytes]] = []
            self.url = b""
            self.done = False

        def on_url(self, url: bytes) -> None:
            self.url += url

        def on_header(self, name: bytes, value: bytes) -> None:
            self.headers.append((name, value))

        def on_headers_complete(self) -> None:
            self.done = True

    def httptools_request() -> object:
        c = Collector()
        p = httptools.HttpRequestParser(c)
        p.feed_data(REQUEST)
        return p.get_method(), c.url, p.get_http_version(), tuple(c.headers)

    def httptools_response() -> object:
        c = Collector()
        p = httptools.HttpResponseParser(c)
        p.feed_data(RESPONSE)
        return p.get_status_code(), tuple(c.headers)

    return [
        ("httptools (llhttp) request", httptools_request),
        ("httptools (llhttp) response", httptools_response),
    ]


def chunked_64k() -> object:
    """
    Relay a 1 MiB chunked body fed in 64 KiB reads (per read).
    """
    reader = ChunkedReader()
    for piece in _CHUNKED_PIECES:
        reader.feed(piece)
    assert reader.ended
    return reader


_chunk = b"x" * 8192
_CHUNKED_BODY = (b"2000\r\n" + _chunk + b"\r\n") * 128 + b"0\r\n\r\n"
_CHUNKED_PIECES = [_CHUNKED_BODY[i : i + 65536] for i in range(0, len(_CHUNKED_BODY), 65536)]


def bench(name: str, func: Callable[[], object], per: int = 1) -> None:
    number = 20000 if per == 1 else 200
    # Warm up (lets PyPy's JIT compile the loop).
    for _ in range(number):
        func()
    # CPU time, not wall time: a shared machine's other load then matters
    # less (it still costs cache and frequency).
    best = min(timeit.repeat(func, number=number, repeat=7, timer=time.process_time))
    best = best / number / per
    print(f"  {name:<45} {best * 1e6:8.2f} us")


def main() -> None:
    impl = sys.implementation.name
    print(f"{impl} {sys.version.split()[0]}; microseconds (CPU) per operation, best of 7")
    bench("txproxy parse request (find+parse+framing)", ours_request)
    bench("txproxy parse response (find+parse+framing)", ours_response)
    bench("txproxy serialize request (validated)", lambda: serializeRequestHead(_reqHead))
    bench("txproxy serialize response (validated)", lambda: serializeResponseHead(_respHead))
    bench("txproxy serialize request (unvalidated)", lambda: serializeRequestHead(_reqHead, False))
    bench("txproxy proxy request path (read..serialize)", ours_proxy_request)
    bench("naive split parser request (no checks)", naive_request)
    for name, func in makeHttptools():
        bench(name, func)
    if not makeHttptools():
        print("  httptools: not importable here")
    bench("txproxy ChunkedReader, per 64 KiB read", chunked_64k, per=len(_CHUNKED_PIECES))


if __name__ == "__main__":
    main()
