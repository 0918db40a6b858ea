# -*- test-case-name: tests.test_tracing_client -*-
"""
A small persistent HTTP/1.1 client for OTLP/HTTP export to an C{http://}
collector.

One connection to the collector, kept alive between batches; one request
in flight (the exporter never sends two at once); the request is written
with one C{writeSequence} (a prebuilt head and the body, never copied into
one buffer); of the response only the status line and the framing
(C{Content-Length}, C{Transfer-Encoding: chunked}, or read until close)
are parsed, to find its end: the body is discarded as it comes, so memory
stays bounded whatever the collector answers.

Failures: a refused or failed connection makes the next attempts wait
(backoff from L{BACKOFF_MIN} doubling to L{BACKOFF_MAX} seconds; a post
during the wait fails at once, so its batch is dropped and counted); a
response that is not 2xx fails the post (the connection is kept when the
response says it can be); a cancelled post (the exporter's timeout) and
malformed response drop the connection.

Twisted's C{Agent} (L{txproxy.tracing.agentPoster}) stays in use for
C{https://} collectors (see C{docs/tracing.rst}): it costs more CPU per
batch, mostly on PyPy.
"""

from __future__ import annotations

import socket
from typing import Any, List, Optional
from urllib.parse import urlsplit

from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.error import ConnectError, ConnectionClosed
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from txproxy import __version__
from txproxy.tracing._export import PostFailed
from txproxy.tracing._otlp import CONTENT_TYPE

__all__ = ["ResponseReader", "HTTPPoster", "BadResponse", "BACKOFF_MIN", "BACKOFF_MAX"]

log = Logger(namespace="txproxy.tracing")

#: The first wait after a failed connection, seconds (doubled each time).
BACKOFF_MIN = 0.5
#: The longest wait between connection attempts, seconds.
BACKOFF_MAX = 30.0
#: The send buffer asked for on the collector connection, bytes.
SEND_BUFFER = 1 << 20
#: The largest response head (status line and fields) accepted.
MAX_HEAD = 65536
#: The longest chunk-size or trailer line accepted.
MAX_LINE = 4096


class BadResponse(Exception):
    """
    The collector's response could not be parsed.
    """


# ResponseReader states.
_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILERS, _UNTIL_CLOSE, _DONE = range(8)


class ResponseReader:
    """
    Sans-IO: finds the end of one HTTP/1.1 response to a POST, keeping its
    status and whether the connection may be reused, discarding its body.

    Feed it bytes with L{feed} until it returns C{True}.  Interim (1xx)
    responses are skipped.  A response without C{Content-Length} nor
    chunked framing ends when the connection closes: call L{closed}.

    @ivar status: the final response's status code, once its head is read.
    @ivar keepAlive: whether the connection can carry the next request.
    @ivar extra: bytes received after the response's end.
    """

    def __init__(self) -> None:
        self._state = _HEAD
        self._buf = b""
        self._left = 0
        self.status = 0
        self.keepAlive = True
        self.extra = b""

    @property
    def done(self) -> bool:
        return self._state == _DONE

    def feed(self, data: bytes) -> bool:
        """
        Take the next bytes of the response.

        @return: whether the response is complete.
        @raise BadResponse: it is malformed (or its head too large).
        """
        buf = self._buf + data if self._buf else data
        self._buf = b""
        while True:
            state = self._state
            if state == _LENGTH or state == _CHUNK_DATA:
                n = len(buf)
                if n < self._left:
                    self._left -= n
                    return False
                buf = buf[self._left:]
                self._left = 0
                self._state = _DONE if state == _LENGTH else _CHUNK_CRLF
            elif state == _HEAD:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD:
                        raise BadResponse("response head too large")
                    self._buf = buf
                    return False
                head, buf = buf[:end], buf[end + 4:]
                self._head(head)
            elif state == _CHUNK_CRLF:
                if len(buf) < 2:
                    self._buf = buf
                    return False
                if buf[:2] != b"\r\n":
                    raise BadResponse("chunk not followed by CRLF")
                buf = buf[2:]
                self._state = _CHUNK_SIZE
            elif state == _CHUNK_SIZE or state == _TRAILERS:
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > MAX_LINE:
                        raise BadResponse("chunk line too long")
                    self._buf = buf
                    return False
                line, buf = buf[:end], buf[end + 2:]
                if state == _TRAILERS:
                    if not line:
                        self._state = _DONE
                    continue
                size = line.split(b";", 1)[0].strip(b" \t")
                try:
                    if not size or size.lstrip(b"0123456789abcdefABCDEF"):
                        raise ValueError(size)
                    n = int(size, 16)
                except ValueError:
                    raise BadResponse(f"bad chunk size {line[:40]!r}") from None
                if n:
                    self._left = n
                    self._state = _CHUNK_DATA
                else:
                    self._state = _TRAILERS
            elif state == _UNTIL_CLOSE:
                return False
            else:  # _DONE
                self.extra += buf
                return True

    def closed(self) -> bool:
        """
        The connection closed: whether that completed the response (one
        read until close).
        """
        if self._state == _UNTIL_CLOSE:
            self._state = _DONE
        return self._state == _DONE

    def _head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or len(parts[1]) != 3 or not parts[1].isdigit():
            raise BadResponse(f"bad status line {lines[0][:80]!r}")
        status = int(parts[1])
        if 100 <= status < 200:
            # An interim response (100 Continue, 103): the final one follows.
            return
        length: Optional[int] = None
        chunked = False
        keepAlive = parts[0] != b"HTTP/1.0"
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                raise BadResponse(f"bad header line {line[:80]!r}")
            name = name.strip().lower()
            value = value.strip()
            if name == b"content-length":
                if not value.isdigit() or (length is not None and length != int(value)):
                    raise BadResponse(f"bad Content-Length {value[:40]!r}")
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = value.lower().rsplit(b",", 1)[-1].strip() == b"chunked"
                if not chunked:
                    raise BadResponse(f"unsupported Transfer-Encoding {value[:40]!r}")
            elif name == b"connection":
                tokens = [t.strip() for t in value.lower().split(b",")]
                if b"close" in tokens:
                    keepAlive = False
                elif b"keep-alive" in tokens:
                    keepAlive = True
        self.status = status
        if status == 204 or status == 304:
            self._state = _DONE
        elif chunked:
            self._state = _CHUNK_SIZE
        elif length is not None:
            self._left = length
            self._state = _LENGTH if length else _DONE
        else:
            self._state = _UNTIL_CLOSE
            keepAlive = False
        self.keepAlive = keepAlive


_CLOSED = Failure(ConnectionClosed())


class _ExportProtocol(Protocol):
    """
    One connection to the collector.
    """

    poster: "HTTPPoster"

    def __init__(self) -> None:
        self._pending: Optional[defer.Deferred] = None
        self._reader: Optional[ResponseReader] = None
        self.lost = False

    def connectionMade(self) -> None:
        # A batch is hundreds of kilobytes: a send buffer that takes it in
        # one write saves the reactor several partial writes.
        sock = getattr(self.transport, "socket", None)
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
            except OSError:
                pass

    def request(self, head: bytes, body: bytes) -> "defer.Deferred[int]":
        d: defer.Deferred[int] = defer.Deferred(lambda _: self.abort())
        self._pending = d
        self._reader = ResponseReader()
        self.transport.writeSequence([head, body])  # type: ignore[union-attr]
        return d

    def abort(self) -> None:
        self._pending = None
        if not self.lost:
            self.transport.abortConnection()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        reader = self._reader
        if reader is None:
            # Bytes nobody asked for: the connection is not trustworthy.
            self.abort()
            return
        try:
            complete = reader.feed(data)
        except BadResponse as e:
            self._fail(Failure(e))
            self.abort()
            return
        if complete:
            self._complete(reader)

    def _complete(self, reader: ResponseReader) -> None:
        self._reader = None
        d, self._pending = self._pending, None
        if not reader.keepAlive or reader.extra:
            self.abort()
        if d is not None:
            d.callback(reader.status)

    def _fail(self, f: Failure) -> None:
        self._reader = None
        d, self._pending = self._pending, None
        if d is not None:
            d.errback(f)

    def connectionLost(self, reason: Failure = _CLOSED) -> None:
        self.lost = True
        self.poster._lost(self)
        reader = self._reader
        if reader is not None:
            if reader.closed():
                self._complete(reader)
            else:
                self._fail(reason)


class HTTPPoster:
    """
    A L{txproxy.tracing._export.Poster} for an C{http://} collector URL:
    calling it POSTs one body and returns a Deferred that fires when the
    collector answered 2xx, or fails (L{PostFailed} for another status;
    the connection's or the parser's error otherwise).  Cancelling it
    (the exporter's timeout) closes the connection.

    @param endpoint: an C{IStreamClientEndpoint} to reach the collector
        (tests pass a fake one); by default a C{HostnameEndpoint} to the
        URL's host and port.
    """

    def __init__(self, reactor: Any, url: str, connectTimeout: float = 5.0, endpoint: Any = None) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"not an http:// URL: {url!r}")
        port = parts.port or 80
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = parts.netloc.rpartition("@")[2]
        self._prefix = (
            f"POST {target} HTTP/1.1\r\nHost: {host}\r\n".encode("idna" if not host.isascii() else "ascii")
            + b"Content-Type: " + CONTENT_TYPE + b"\r\nUser-Agent: txproxy/" + __version__.encode() + b"\r\n"
            + b"Content-Length: "
        )
        self.clock = reactor
        if endpoint is None:
            endpoint = HostnameEndpoint(reactor, parts.hostname, port, timeout=connectTimeout)
        self._endpoint = endpoint
        self._protocol: Optional[_ExportProtocol] = None
        self._backoff = 0.0
        self._retryAt = 0.0
        self._closed = False
        #: Connections made (for tests and curiosity).
        self.connections = 0

    def __call__(self, body: bytes) -> "defer.Deferred[Any]":
        head = self._prefix + b"%d\r\n\r\n" % len(body)
        proto = self._protocol
        if proto is not None and not proto.lost:
            d = proto.request(head, body)
        else:
            if self._closed:
                return defer.fail(ConnectError(string="exporter closed"))
            now = self.clock.seconds()
            if now < self._retryAt:
                return defer.fail(ConnectError(string=f"reconnecting in {self._retryAt - now:.1f}s"))
            d = self._connectThenSend(head, body)

        def answered(status: int) -> int:
            if not 200 <= status < 300:
                raise PostFailed(f"collector answered {status}")
            return status

        return d.addCallback(answered)

    def _connectThenSend(self, head: bytes, body: bytes) -> "defer.Deferred[int]":
        factory = Factory.forProtocol(_ExportProtocol)
        connecting = self._endpoint.connect(factory)
        inner: List[Optional[defer.Deferred]] = [None]

        def cancel(_: Any) -> None:
            if inner[0] is not None:
                inner[0].cancel()
            else:
                connecting.cancel()

        outer: defer.Deferred[int] = defer.Deferred(cancel)

        def connected(proto: _ExportProtocol) -> None:
            self.connections += 1
            self._backoff = 0.0
            proto.poster = self
            if self._closed:
                proto.transport.loseConnection()  # type: ignore[union-attr]
                outer.errback(ConnectError(string="exporter closed"))
                return
            self._protocol = proto
            d = inner[0] = proto.request(head, body)
            d.chainDeferred(outer)

        def failed(f: Failure) -> None:
            if f.check(defer.CancelledError):
                return
            self._backoff = min(BACKOFF_MAX, self._backoff * 2 if self._backoff else BACKOFF_MIN)
            self._retryAt = self.clock.seconds() + self._backoff
            outer.errback(f)

        connecting.addCallbacks(connected, failed)
        return outer

    def _lost(self, proto: _ExportProtocol) -> None:
        if self._protocol is proto:
            self._protocol = None

    def close(self) -> None:
        """
        Close the connection (the proxy is stopping); later posts fail.
        """
        self._closed = True
        proto = self._protocol
        if proto is not None and not proto.lost:
            proto.transport.loseConnection()  # type: ignore[union-attr]

