# -*- test-case-name: tests.test_router -*-
"""
Active health checks.

One L{HealthChecker} runs per (backend address, L{HealthCheck}) pair and
writes its verdicts into a shared L{HealthState}.  Checks:

  - C{tcp}: connect, then close.  Success is the connection being made.
  - C{http}: connect, send C{GET path HTTP/1.1} with C{Host},
    C{Connection: close} and C{User-Agent: txproxy-health-check}, and read
    the status line; a 2xx or 3xx status is a success.  The rest of the
    response is not read: the connection is closed at once.
  - C{h2c://} backends get the C{http} check over HTTP/2 with prior
    knowledge: the connection preface, one C{GET} stream, and the
    C{:status} of its response head.
  - only C{http://} and C{h2c://} backends get the C{http} check:
    C{https://} and C{h2://} backends (and C{tcp://} ones in sni mode) get
    the C{tcp} check whatever the kind (a TLS handshake and an HTTP check
    over TLS are not done yet).

The first check runs as soon as the checker starts (on the next reactor
turn), the next one C{interval} seconds after the previous one finished, so
checks of one backend never overlap.  A check that has not succeeded within
C{timeout} seconds is cancelled and counts as a failure.

Connections go through an L{IUpstreamConnector}: IP literals by
C{endpointFor}, names by C{resolve} and then C{endpointFor} on the first
address, tcp-mode descriptions by C{endpointForDescription}.
"""

from __future__ import annotations

from typing import Any, List, Optional, cast

import h2.events
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.exceptions import H2Error

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime, ITCPTransport
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from txproxy._common import isIPLiteral
from txproxy.router._pool import Backend, HealthState
from txproxy.config import HealthCheck, UpstreamURL
from txproxy.proxyprotocol import formatV1, formatV2

__all__ = ["HealthChecker", "HealthCheckFailed", "endpointForBackend"]

_log = Logger(namespace="txproxy.router")

#: The longest status line an HTTP check reads before giving up.
MAX_STATUS_LINE = 4096


class HealthCheckFailed(Exception):
    """
    An HTTP health check got a bad or unwanted answer.
    """


def endpointForBackend(connector: Any, backend: Backend) -> "Deferred[Any]":
    """
    Build a plain TCP client endpoint for C{backend} (TLS for C{https://}
    backends is the caller's to add).

    @param connector: an L{IUpstreamConnector}.
    @return: a Deferred firing with an C{IStreamClientEndpoint}; a name that
        does not resolve fails it with the connector's error.
    """
    if backend.description is not None:
        return succeed(connector.endpointForDescription(backend.description))
    url = backend.url
    assert url is not None
    if isIPLiteral(url.host):
        return succeed(connector.endpointFor(url.host, url.port))
    d: Deferred[Any] = connector.resolve(url.host, url.port)
    d.addCallback(lambda addresses: connector.endpointFor(addresses[0], url.port))
    return d


def _hostHeader(url: UpstreamURL) -> bytes:
    host = f"[{url.host}]" if ":" in url.host else url.host
    if url.port != {"http": 80, "https": 443, "h2c": 80, "h2": 443}.get(url.scheme):
        host = f"{host}:{url.port}"
    return host.encode("idna") if not host.isascii() else host.encode("ascii")


def checkHeader(version: Optional[str]) -> bytes:
    """
    The PROXY header a health check sends first to a backend that gets the
    PROXY protocol (what HAProxy's C{check-send-proxy} does): the v2
    C{LOCAL} command, or v1 C{PROXY UNKNOWN} (the connection is the
    proxy's own, relaying no client).

    @param version: C{"v1"}, C{"v2"}, or L{None} for none.
    """
    if version == "v2":
        return formatV2(None, None, local=True)
    if version == "v1":
        return formatV1(None, None)
    return b""


class _TCPCheckProtocol(Protocol):
    """
    Closes as soon as it is connected (after the PROXY header, if any).
    """

    def __init__(self, header: bytes = b"") -> None:
        self._header = header

    def connectionMade(self) -> None:
        assert self.transport is not None
        if self._header:
            self.transport.write(self._header)
        self.transport.loseConnection()


class _HTTPCheckProtocol(Protocol):
    """
    Sends one C{GET} and fires L{result} with the status code of a 2xx/3xx
    status line, or fails it.
    """

    def __init__(self, request: bytes) -> None:
        self._request = request
        self._buffer = b""
        self.result: Deferred[int] = Deferred(self._cancel)

    def _cancel(self, d: Deferred[int]) -> None:
        if self.transport is not None:
            cast(ITCPTransport, self.transport).abortConnection()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self._request)

    def dataReceived(self, data: bytes) -> None:
        if self.result.called:
            return
        self._buffer += data
        end = self._buffer.find(b"\n")
        if end < 0:
            if len(self._buffer) > MAX_STATUS_LINE:
                self._finish(HealthCheckFailed("status line too long"))
            return
        line = self._buffer[:end].rstrip(b"\r")
        parts = line.split(None, 2)
        code = -1
        if (
            len(parts) >= 2
            and parts[0].startswith(b"HTTP/1.")
            and len(parts[1]) == 3
            and parts[1].isdigit()
        ):
            code = int(parts[1])
        if code < 0:
            self._finish(HealthCheckFailed(f"bad status line {line[:80]!r}"))
        elif 200 <= code < 400:
            self._finish(code)
        else:
            self._finish(HealthCheckFailed(f"status {code}"))

    def _finish(self, outcome: object) -> None:
        # The verdict first: a transport may call connectionLost from
        # inside loseConnection, which must not decide it instead.
        transport = self.transport
        assert transport is not None
        if isinstance(outcome, Exception):
            self.result.errback(outcome)
        else:
            assert isinstance(outcome, int)
            self.result.callback(outcome)
        transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.result.called:
            self.result.errback(HealthCheckFailed("connection closed before a status line"))


class _H2CheckProtocol(_HTTPCheckProtocol):
    """
    The C{http} check of an C{h2c://} backend: the HTTP/2 preface and one
    C{GET} stream; L{result} fires with a 2xx/3xx C{:status} or fails.
    """

    def __init__(self, header: bytes, headers: List[Any]) -> None:
        super().__init__(header)
        self._headers = headers
        self._conn = H2Connection(config=H2Configuration(client_side=True, header_encoding=None))

    def connectionMade(self) -> None:
        assert self.transport is not None
        conn = self._conn
        conn.initiate_connection()
        conn.send_headers(1, self._headers, end_stream=True)
        self.transport.write(self._request + conn.data_to_send())

    def dataReceived(self, data: bytes) -> None:
        if self.result.called:
            return
        try:
            events = self._conn.receive_data(data)
        except H2Error as e:
            self._finish(HealthCheckFailed(f"not HTTP/2: {e.__class__.__name__}"))
            return
        for event in events:
            if isinstance(event, h2.events.ResponseReceived):
                status = dict(event.headers).get(b":status", b"")
                code = int(status) if status.isdigit() else -1
                self._finish(code if 200 <= code < 400 else HealthCheckFailed(f"status {code}"))
                return
            if isinstance(event, (h2.events.StreamReset, h2.events.ConnectionTerminated)):
                self._finish(HealthCheckFailed(f"HTTP/2 {event.__class__.__name__}"))
                return
        pending = self._conn.data_to_send()
        if pending and self.transport is not None:
            self.transport.write(pending)


class _CheckFactory(Factory):
    # One check every few seconds per backend: no "Starting factory" /
    # "Stopping factory" line for each.
    noisy = False

    def __init__(self, check: HealthCheck, url: Optional[UpstreamURL], proxyVersion: Optional[str] = None) -> None:
        self._http = check.kind == "http" and url is not None and url.scheme == "http"
        self._h2 = check.kind == "http" and url is not None and url.scheme == "h2c"
        self._header = checkHeader(proxyVersion)
        self._request = b""
        self._h2Headers: List[Any] = []
        if self._h2:
            assert url is not None
            self._h2Headers = [
                (b":method", b"GET"),
                (b":scheme", b"http"),
                (b":authority", _hostHeader(url)),
                (b":path", check.path.encode("ascii", "replace")),
                (b"user-agent", b"txproxy-health-check"),
            ]
        if self._http:
            assert url is not None
            self._request = self._header + (
                b"GET " + check.path.encode("ascii", "replace") + b" HTTP/1.1\r\n"
                b"Host: " + _hostHeader(url) + b"\r\n"
                b"User-Agent: txproxy-health-check\r\n"
                b"Connection: close\r\n\r\n"
            )

    def buildProtocol(self, addr: Any) -> Protocol:
        if self._h2:
            return _H2CheckProtocol(self._header, self._h2Headers)
        if self._http:
            return _HTTPCheckProtocol(self._request)
        return _TCPCheckProtocol(self._header)


class HealthChecker:
    """
    Checks one backend address periodically and records the results in a
    L{HealthState}.

    @ivar state: the shared verdict.
    @ivar check: the L{HealthCheck} settings.
    """

    def __init__(
        self,
        backend: Backend,
        check: HealthCheck,
        state: HealthState,
        clock: IReactorTime,
        connector: Any,
        proxyVersion: Optional[str] = None,
    ) -> None:
        """
        @param backend: names the address to check (its C{url} or
            C{description}); its other state is not touched.
        @param connector: an L{IUpstreamConnector}.
        @param proxyVersion: C{"v1"} or C{"v2"} when the backend gets the
            PROXY protocol: each check starts with L{checkHeader}.
        """
        self.check = check
        self.state = state
        self.proxyVersion = proxyVersion
        self._backend = backend
        self._clock = clock
        self._connector = connector
        self._factory = _CheckFactory(check, backend.url, proxyVersion)
        self._running = False
        self._next: Optional[IDelayedCall] = None
        self._timeout: Optional[IDelayedCall] = None
        self._inFlight: Optional[Deferred[Any]] = None
        self._timedOut = False
        #: The L{Backend}s whose passive ejection a passing check clears
        #: (every backend sharing C{state}); the router keeps it current.
        self.subscribers: List[Backend] = [backend]

    @property
    def running(self) -> bool:
        """
        Whether checks are scheduled.
        """
        return self._running

    def start(self) -> None:
        """
        Start checking: the first check runs on the next reactor turn.
        """
        if self._running:
            return
        self._running = True
        self._next = self._clock.callLater(0, self._run)

    def stop(self) -> None:
        """
        Stop checking: cancel the next check, the timeout and the check in
        progress (its connection is aborted).  No result is recorded.
        """
        self._running = False
        for call in (self._next, self._timeout):
            if call is not None and call.active():
                call.cancel()
        self._next = self._timeout = None
        d, self._inFlight = self._inFlight, None
        if d is not None:
            d.cancel()

    def _run(self) -> None:
        self._next = None
        self._timedOut = False
        self._timeout = self._clock.callLater(self.check.timeout, self._onTimeout)
        try:
            d = endpointForBackend(self._connector, self._backend)
        except Exception:
            d = fail()
        d.addCallback(lambda endpoint: endpoint.connect(self._factory))
        d.addCallback(self._connected)
        self._inFlight = d
        d.addCallbacks(self._succeeded, self._failed)

    def _connected(self, protocol: Protocol) -> Any:
        if isinstance(protocol, _HTTPCheckProtocol):
            return protocol.result
        return None

    def _onTimeout(self) -> None:
        self._timeout = None
        self._timedOut = True
        if self._inFlight is not None:
            self._inFlight.cancel()

    def _succeeded(self, ignored: object) -> None:
        self._done(True, None)

    def _failed(self, f: Failure) -> None:
        if self._timedOut:
            error = f"timed out after {self.check.timeout:g}s"
        else:
            error = f.getErrorMessage() or f.type.__name__
        self._done(False, error)

    def _done(self, ok: bool, error: Optional[str]) -> None:
        self._inFlight = None
        if self._timeout is not None:
            if self._timeout.active():
                self._timeout.cancel()
            self._timeout = None
        if not self._running:
            return
        state = self.state
        changed = state.record(ok, self._clock.seconds(), self.check.rise, self.check.fall, error)
        if ok:
            # A passing active check also ends a passive ejection.
            for b in self.subscribers:
                b.consecutiveFailures = 0
                b.ejectedUntil = None
        if changed:
            if state.healthy:
                _log.info("backend {backend} is up", backend=self._backend.key)
            else:
                _log.warn(
                    "backend {backend} is down: {error}", backend=self._backend.key, error=error
                )
        self._next = self._clock.callLater(self.check.interval, self._run)
