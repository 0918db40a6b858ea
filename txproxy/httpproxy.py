# -*- test-case-name: tests.test_httpproxy -*-
"""
The HTTP/1.1 proxy core shared by the forward and reverse proxies.

L{HTTPProxyProtocol} owns one client connection: it reads request heads
(with the header timeout and size limit), applies the listener's policy
(client ACL, connection caps, authentication, rate limit), asks its subclass
where each request goes, takes an upstream connection from the
L{UpstreamPool} (or dials one), streams the request body up and the response
body down without buffering either whole, keeps both connections alive when
HTTP allows it, answers pipelined requests in order, and hands upgraded
connections (and C{CONNECT} tunnels) to the L{Relay}.

The per-request hot path is: one head parse, one head serialization each
way, and direct writes; no Deferred is created for a request whose policy
and routing decisions are synchronous and whose upstream connection is
already pooled.

Why this module is long: it is one class, the HTTP/1.1 connection layer
(reading heads, framing, keep-alive and pipelining, carrying out the
exchange's actions, upgrades and tunnels, the access record).  The
per-request decisions and timers are the sans-IO L{txproxy.exchange}, the
policy checks are L{txproxy.httppolicy}, and the upstream connections and
their pool are L{txproxy.upstream}.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Tuple, cast

from twisted.internet import defer, error
from twisted.internet.interfaces import IHalfCloseableProtocol, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txproxy._common import clientInfoFor, formatAddress, overrides, statusForFailure
from txproxy._factory import ListenerFactory, endHookOf
from txproxy._hookcompat import Legacy, hookCaller
from txproxy.accesslog import AccessRecord
from txproxy.auth import Htpasswd
from txproxy.config import ListenerConfig
from txproxy.connector import connectProtocol, directDial
from txproxy.errors import PolicyDenied, ResolveError
from txproxy.exchange import (
    CLOSED,
    CLOSING,
    CONNECTION_TRANSITIONS,
    DEFAULT_MAX_INTERIM,
    EXCHANGE,
    H2,
    HEAD,
    KEEPALIVE,
    LINGER,
    RECEIVING_BODY,
    SENDING_BODY,
    TUNNEL,
    WAIT,
    Abort,
    Action,
    Exchange,
    Fail,
    Observe,
    RequestSent,
    ResponseDone,
    ResponseHeadReady,
    Retry,
    SendDownstream,
    SendUpstream,
    SetTimer,
    State,
    Timeouts,
    Upgrade,
    transition,
)
from txproxy.h2._server import PREFACE, H2ServerConnection
from txproxy.hooks import ClientInfo, Refuse, Target
from txproxy.http import (
    HOP_BY_HOP,
    NO_BODY,
    Framing,
    HeadReader,
    HTTPError,
    RequestHead,
    ResponseHead,
    errorResponse,
    findHeadEnd,
    parseRequestHead,
    requestFraming,
    serializeRequestHead,
    serializeResponseHead,
    serializeTrustedHead,
)
from txproxy.http._headers import clientResponseHeaders, upstreamRequestHeaders
from txproxy.http._parser import _connectionTokens as _connectionTokensOf
from txproxy.httppolicy import HTTPPolicy
from txproxy.limits._decision import Decision
from txproxy.relay import Relay, RelayedProtocol, fastSender, joinRelay
from txproxy.tls import verificationFailure
from txproxy.tracing import connectionAttributes, encodeHTTPSpan, startHTTPSpan
from txproxy.tracing._span import hasTraceFields
from txproxy.tracing import endSpan as _endSpan
from txproxy.upstream import HTTPRequest, UpstreamHTTPProtocol, UpstreamPool, keepAliveLimit

__all__ = [
    "HTTPRequest",
    "HTTPProxyProtocol",
    "HTTPProxyFactory",
    "UpstreamHTTPProtocol",
    "UpstreamPool",
    "clientInfoFor",
]

log = Logger()

# The client connection's states (the table of their moves is in
# txproxy.exchange._state); the old names stay for subclasses.
_HEAD, _WAIT, _EXCHANGE, _TUNNEL, _LINGER, _CLOSED, _CLOSING = HEAD, WAIT, EXCHANGE, TUNNEL, LINGER, CLOSED, CLOSING

#: Seconds to keep reading (and discarding) after an error response, so the
#: client reads the response instead of a reset.
LINGER_SECONDS = 2.0

#: Pipelined bytes buffered beyond the current request before reading from
#: the client pauses.
PIPELINE_LIMIT = 256 * 1024

_HTTP11 = b"HTTP/1.1"
_HOP = HOP_BY_HOP
# One copy: txproxy.http has the serializer.
_serializeHead = serializeTrustedHead
# Hop-by-hop fields dropped from a 101 (Upgrade and Connection stay).
_UPGRADE_DROP = frozenset(HOP_BY_HOP - {b"upgrade", b"connection"})
#: The W3C trace context field an unrecorded span adds (L{HTTPProxyProtocol._prepare}).
_TRACEPARENT = b"traceparent"


#: Failures that mean "the upstream could not be reached" (upstreamFailed).
_UPSTREAM_FAILURES = (
    ResolveError,
    error.DNSLookupError,
    error.TimeoutError,
    defer.TimeoutError,
    error.ConnectError,
    error.ConnectionLost,
    error.ConnectionDone,
    OSError,
)


# ---------------------------------------------------------------------------
# Upstream connections and their pool


# ---------------------------------------------------------------------------
# The client side


def _dialFirst(candidates: List[str], proto: Any, port: int, protocolFactory: Callable[[], Any], index: int) -> Any:
    """
    Connect to C{candidates[index]}, and on a connection error (not a
    timeout) to the next, for L{HTTPProxyProtocol.dialTarget}.  (Module
    functions, not nested closures: a closure calling itself again is a
    reference cycle holding C{proto} until the cyclic collector runs.)
    """
    address = candidates[index]
    d = connectProtocol(proto.factory.connector, address, port, protocolFactory())
    return d.addCallbacks(
        _dialled, _dialFailed, callbackArgs=(proto, address, port),
        errbackArgs=(candidates, proto, port, protocolFactory, index),
    )


def _dialled(upstream: Any, proto: Any, address: str, port: int) -> Any:
    proto._upstreamAddress = formatAddress(address, port)
    return upstream


def _dialFailed(f: Failure, candidates: List[str], proto: Any, port: int, protocolFactory: Callable[[], Any],
                index: int) -> Any:
    if index + 1 < len(candidates) and f.check(error.ConnectError) and not f.check(error.TimeoutError):
        return _dialFirst(candidates, proto, port, protocolFactory, index + 1)
    return f


@implementer(IHalfCloseableProtocol)
class HTTPProxyProtocol(HTTPPolicy, Protocol):
    """
    One client connection to an HTTP proxy (forward or reverse).

    Subclasses implement L{routeRequest} (where a request goes) and may
    override L{tunnelRequested} (C{CONNECT}).  User-facing hooks, in the
    order they run for each request:

      1. L{allowRequest}, after the configured policy allowed it;
      2. L{rewriteRequest}, on the head about to be sent upstream;
      3. L{rewriteResponse}, on the response head about to be sent back;
      4. L{requestBodyData} / L{responseBodyData}, with the decoded body
         bytes (only when overridden);
      5. L{exchangeEnded}, once, with the access record.

    L{upstreamFailed} runs when the upstream cannot be reached.  The same
    moments have the same hook names in every mode (C{docs/hooks.rst}).

    @ivar factory: the L{HTTPProxyFactory}.
    @ivar client: the L{ClientInfo} of this connection (C{user} is set once
        authenticated).
    @ivar relay: the L{Relay} once the connection became a tunnel.
    """

    #: The protocol built for each new upstream connection.
    upstreamProtocol: Callable[[], UpstreamHTTPProtocol] = UpstreamHTTPProtocol
    #: The mode name in access records.
    mode = "http"
    #: Upstreams L{connectUpstream} may try for one request, each within
    #: C{--connect-timeout}; the whole acquisition is bounded by their sum.
    connectAttempts = 1

    factory: "HTTPProxyFactory"
    client: ClientInfo
    relay: Optional[Relay] = None
    #: The request's span, once made (L{span} makes an unrecorded one from
    #: L{_quickLine} when asked).
    _span: Any = None
    #: The C{traceparent} line of a span not made yet: at
    #: C{--trace-sample 0} or C{1}, a request without trace fields gets only
    #: its line (L{_startSpan}); its sampled flag says whether it is
    #: recorded.
    _quickLine: Optional[bytes] = None

    # No class default: CPython 3.11's attribute specialization gives up on
    # a name whose class-level value is an instance of a Python class (a
    # State), which made every read and write of the connection's state a
    # generic lookup.  __new__ sets it, whatever a subclass's __init__ does.
    _state: State

    def __new__(cls, *args: Any, **kwargs: Any) -> "HTTPProxyProtocol":
        self = super().__new__(cls)
        self._state = HEAD
        return self
    _timer: Any = None
    _timerKind = ""
    _lease: Any = None
    _admission: Any = None
    _reader: Optional[HeadReader] = None
    _input = b""  # client bytes not yet consumed (next request, or early body)
    _clientReadLost = False
    _pending: Optional[defer.Deferred] = None
    _start: Optional[float] = None
    _startWall = 0.0
    _head: Optional[RequestHead] = None
    #: The Connection tokens of _head.
    _headTokens: FrozenSet[bytes] = frozenset()
    _request: Optional[HTTPRequest] = None
    _ex: Optional[Exchange] = None
    _framing: Framing
    _upstream: Optional[UpstreamHTTPProtocol] = None
    _upstreamAddress = ""
    _reused = False
    _clientKeepAlive = True
    _bytesUp = 0
    _bytesDown = 0
    _toClient: Any = None
    _toUpstream: Any = None
    _upgrading = False
    _sentAt: Optional[float] = None
    _reqProducer = False
    _respProducer = False
    _observeRequest = False
    _observeResponse = False
    #: Whether the class overrides allowRequest, rewriteRequest,
    #: rewriteResponse (set per class by __init_subclass__: a hook that is
    #: not overridden is not called).
    _allowsRequest = False
    _rewritesRequest = False
    _rewritesResponse = False
    _inputPaused = False
    _ended: Optional[Callable[..., Any]] = None
    _factoryEnded: Any = staticmethod(ListenerFactory.exchangeEnded)
    #: On a connection that speaks HTTP/2: its L{H2ServerConnection}.
    _h2conn: Optional[H2ServerConnection] = None
    #: On the protocol serving one HTTP/2 stream: that stream (its transport).
    _h2stream: Any = None
    #: On the protocol serving one HTTP/2 stream: its connection's
    #: L{txproxy._timers.TimerGroup}, which runs this protocol's timer.
    _timerGroup: Any = None
    #: Whether an HTTP/2 stream may hand this class its request head as a
    #: value (L{_streamRequest}): unless C{dataReceived} is overridden,
    #: which then sees the request as HTTP/1.1 bytes.
    _takesStreamHeads = True
    #: False on a protocol over another's connection (an intercepted
    #: tunnel's decrypted side): that one counts the connection.
    _countsConnection = True
    #: The current request's L{txproxy.cache.CacheRequest} on a caching
    #: listener (see that module for the calls the core makes into it).
    _cacheReq: Any = None
    #: Cache answers being finished (pipelined hits run in a loop, not
    #: recursively).
    _hitDepth = 0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._allowsRequest = cls.allowRequest is not HTTPProxyProtocol.allowRequest
        cls._rewritesRequest = cls.rewriteRequest is not HTTPProxyProtocol.rewriteRequest
        cls._rewritesResponse = cls.rewriteResponse is not HTTPProxyProtocol.rewriteResponse
        cls._takesStreamHeads = cls.dataReceived is HTTPProxyProtocol.dataReceived

    # -- hooks

    def allowRequest(self, request: HTTPRequest) -> Any:
        """
        Decide whether to serve C{request}.  Runs once per request, after
        the configured policy (ACL, authentication, rate limit) allowed it.

        @return: C{True}, C{False} (C{403}), or a Deferred firing with one;
            raise L{Refuse} for another status.
        """
        return True

    def rewriteRequest(self, request: HTTPRequest, head: RequestHead) -> Any:
        """
        Rewrite the head about to be sent upstream (hop-by-hop fields are
        already removed, C{Via} added).  Runs once per request.

        @return: a L{RequestHead} (or a Deferred firing with one).
        """
        return head

    def rewriteResponse(self, request: HTTPRequest, head: ResponseHead) -> ResponseHead:
        """
        Rewrite the response head about to be sent to the client (framing
        and hop-by-hop fields are already handled).  Runs once per final
        response; must return synchronously.
        """
        return head

    def requestBodyData(self, request: HTTPRequest, data: bytes) -> None:
        """
        Observe decoded request body bytes as they are relayed.  Called only
        when overridden.
        """

    def responseBodyData(self, request: HTTPRequest, data: bytes) -> None:
        """
        Observe decoded response body bytes as they are relayed.  Called
        only when overridden.
        """

    def exchangeEnded(self, record: AccessRecord) -> None:
        """
        Called once per request, tunnel or refusal, when it is over, with
        its access record (C{record.method} is C{"CONNECT"} for a tunnel).
        Synchronous; only called when overridden.
        """

    def spanStarted(self, span: Any) -> None:
        """
        With tracing on, called once per request or tunnel when its span
        starts (its head is parsed; before policy and routing): add
        attributes (C{span.setAttribute("tenant.id", ...)}) or read the
        trace id (C{span.traceIdText}; C{span.sampled} says whether it is
        recorded).  The span stays in C{self.span} until the request ends,
        so later hooks (L{allowRequest}, L{rewriteRequest},
        L{rewriteResponse}) may add attributes too.  Synchronous; called
        only when overridden; never called with tracing off.

        @param span: the L{txproxy.tracing.Span}.
        """

    def requestFinished(self, record: AccessRecord) -> None:
        """
        Deprecated: override L{exchangeEnded}, which is called at the same
        moment with the same argument.  A subclass that overrides this is
        still called, with a L{DeprecationWarning}.
        """

    #: The old forms of L{exchangeEnded} still called for one release.
    _endLegacy: Tuple[Legacy, ...] = (
        Legacy("requestFinished", "(record)", lambda self, record: self.requestFinished(record)),
    )

    def _endHook(self) -> Optional[Callable[..., Any]]:
        """
        What to call with each access record (L{exchangeEnded} and its old
        forms), or L{None} when nothing is overridden.
        """
        return hookCaller(self, "exchangeEnded", HTTPProxyProtocol, self._endLegacy)

    # -- for subclasses

    def routeRequest(self, head: RequestHead) -> Any:
        """
        Decide where a (non-CONNECT) request goes.  Implemented by
        subclasses.

        @return: an L{HTTPRequest} (or a Deferred firing with one); raise
            L{HTTPError} or L{Refuse} to answer with an error.
        """
        raise HTTPError(501, "Not implemented")

    #: Whether L{_pickUpstream} chooses each request's upstream (before
    #: L{poolKey}; the reverse proxy picks a backend there).
    _picksUpstream = False

    def _pickUpstream(self, request: HTTPRequest) -> None:
        """
        Choose the upstream of C{request} (only when L{_picksUpstream}):
        before a pooled connection is looked for, and again before a retry
        on a fresh connection.  Raise L{Refuse} to answer with an error.
        """

    def poolKey(self, request: HTTPRequest) -> str:
        """
        The upstream pool key for C{request}: requests with the same key may
        share connections.  A pure function of the request and the upstream
        already chosen: it chooses nothing.
        """
        return f"{request.scheme}://{request.target}"

    def connectUpstream(self, request: HTTPRequest) -> "defer.Deferred[UpstreamHTTPProtocol]":
        """
        Open a new connection for C{request}.  The default resolves the
        target, applies C{--deny-dest} to the resolved addresses and dials
        the first allowed ones in turn.
        """
        return self.dialTarget(request.target, self.upstreamProtocol)

    def upstreamHead(self, request: HTTPRequest) -> RequestHead:
        """
        The head to send upstream for C{request}: hop-by-hop fields removed,
        origin-form target, C{Via} added.  Subclasses add their own fields.
        """
        head = request.head
        framing = self._framing
        headers = upstreamRequestHeaders(
            head.headers,
            self._upgradeKeep(head),
            # (The tokens _headReceived found, when this is its head.)
            self._headTokens if head is self._head else None,
            framing.kind,
            framing.length,
            head.version,
            self.factory.pseudonym,
        )
        return RequestHead(head.method, request.path, _HTTP11, headers)

    def _upgradeKeep(self, head: RequestHead) -> Tuple[bytes, ...]:
        if self._upgrading:
            return (b"upgrade",)
        return ()

    def upstreamReleased(self, upstream: UpstreamHTTPProtocol) -> None:
        """
        Called once per request when its upstream connection is released:
        returned to the pool, closed, or handed to a tunnel.  Subclasses
        that count requests per backend override it.
        """

    def tunnelRequested(self, head: RequestHead) -> None:
        """
        A C{CONNECT} request arrived (the client is paused; the bytes after
        the head are in C{self._input}).  The default refuses it.
        """
        self._refuse(405, "CONNECT is not allowed here")

    # -- connection set-up

    def connectionMade(self) -> None:
        stream = self._h2stream
        if stream is not None:
            conn = stream.conn
            self._timerGroup = conn.timers
            self._toClient = stream.write
            self._streamMade(conn.owner)
            return
        self.client = clientInfoFor(self.transport)
        # Set on the instance only when true: every instance attribute
        # costs memory for the connection's whole life (see
        # bench/bench_idle_memory.py).
        if overrides(self, "requestBodyData", HTTPProxyProtocol):
            self._observeRequest = True
        if overrides(self, "responseBodyData", HTTPProxyProtocol):
            self._observeResponse = True
        factory = self.factory
        # Once per connection (each is one dict lookup, cached per class);
        # set on the instance only when something is overridden.
        ended = self._endHook()
        if ended is not None:
            self._ended = ended
        factoryEnded = endHookOf(factory)
        if factoryEnded is not ListenerFactory.exchangeEnded:
            self._factoryEnded = factoryEnded
        factory.connectionOpened(self)
        self._setTimer(factory.listener.headerTimeout, "head")
        limits = factory.limits
        if limits is not None:
            admission = limits.checkConnection(self.client.host, False)
            if admission.__class__ is Decision:
                self._admitted(admission)
            else:
                # The limiter answers later (Redis): checkPolicy waits.
                self._admission = admission
                admission.addCallback(self._admitted)

    def _streamMade(self, owner: "HTTPProxyProtocol") -> None:
        """
        The set-up of a protocol serving one HTTP/2 stream: the connection's
        own work (counting, socket options, connection limits, the head
        timer) was done once by C{owner}, whose client and admission this
        stream shares.
        """
        self.client = ClientInfo(owner.client.host, owner.client.port, None)
        admission = owner._admission
        if admission is not None and admission.__class__ is not Decision:
            # The limiter has not answered for the connection yet (Redis):
            # this stream waits on a Deferred of its own.
            waiting: defer.Deferred = defer.Deferred()
            waiting.addCallback(self._streamAdmitted)

            def answered(decision: Any) -> Any:
                waiting.callback(decision)
                return decision

            admission.addCallback(answered)
            admission = waiting
        self._admission = admission
        if owner.__class__ is self.__class__ and owner.factory is self.factory:
            # Worked out once for the connection, by its owner (a protocol
            # of the same class and factory).
            if owner._observeRequest:
                self._observeRequest = True
            if owner._observeResponse:
                self._observeResponse = True
            ended = owner._ended
            factoryEnded = owner._factoryEnded
        else:
            self._observeRequest = overrides(self, "requestBodyData", HTTPProxyProtocol)
            self._observeResponse = overrides(self, "responseBodyData", HTTPProxyProtocol)
            ended = self._endHook()
            factoryEnded = endHookOf(self.factory)
        if ended is not None:
            self._ended = ended
        if factoryEnded is not ListenerFactory.exchangeEnded:
            self._factoryEnded = factoryEnded

    def _streamAdmitted(self, decision: Any) -> Any:
        self._admission = decision
        return decision

    def _startH2(self, received: bytes) -> None:
        """
        The connection opened with the HTTP/2 preface: from now on its
        bytes go to an L{H2ServerConnection}, and each stream gets a
        protocol of this class.
        """
        self._setState(H2)
        self._cancelTimer()
        conn = self._h2conn = H2ServerConnection(self)
        conn.start(received)

    def _h2closing(self) -> None:
        if self._state is H2:
            self._setState(CLOSING)

    def _admitted(self, decision: Any) -> Any:
        self._admission = decision
        if decision.allowed:
            self._lease = decision.lease
            if self._state == _CLOSED and self._lease is not None:
                self._lease.release()
                self._lease = None
        return decision

    # -- states and timers: one timer per connection; which one runs is
    # -- decided by txproxy.exchange._state (the connection's own timers by
    # -- its state, the exchange's by the exchange)

    def _setState(self, state: State) -> None:
        if state not in CONNECTION_TRANSITIONS[self._state]:
            transition(CONNECTION_TRANSITIONS, self._state, state)  # raises
        self._state = state

    def _setTimer(self, seconds: float, kind: str) -> None:
        self._timerKind = kind
        timer = self._timer
        if timer is not None:
            # Pending unless something else cancelled it (_timedOut and
            # _cancelTimer drop it): no active() call on the hot path.
            try:
                timer.reset(seconds)
                return
            except (error.AlreadyCalled, error.AlreadyCancelled):
                pass
        group = self._timerGroup
        if group is None:
            self._timer = self.factory.clock.callLater(seconds, self._timedOut)
        else:
            self._timer = group.callLater(seconds, self._timedOut)

    def _cancelTimer(self) -> None:
        self._timerKind = ""
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _timedOut(self) -> None:
        self._timer = None
        kind = self._timerKind
        if not kind:
            return  # disarmed
        self._timerKind = ""
        state = self._state
        if kind == "head":
            if state is HEAD:
                self._refuse(408, "request head not received in time")
        elif kind == "keepalive":
            if state is KEEPALIVE:
                # Idle keep-alive connection: close quietly.
                self._setState(CLOSING)
                self.transport.loseConnection()  # type: ignore[union-attr]
        elif kind == "linger":
            self.transport.loseConnection()  # type: ignore[union-attr]
        else:
            ex = self._ex
            if ex is not None and not ex.ended and (state is WAIT or state is EXCHANGE):
                if kind == "connect" and self._pending is not None:
                    self.upstreamFailed(self._hookRequest(), Failure(defer.TimeoutError("connect timeout")))
                self._run(ex.timerFired(self.factory.clock.seconds()))

    # -- the head

    def dataReceived(self, data: bytes) -> None:
        state = self._state
        if state is EXCHANGE:
            ex = self._ex
            if ex is not None and ex.requestState is SENDING_BODY:
                self._run(ex.requestData(data))
            else:
                self._pipelined(data)
            return
        armHead = False
        if state is KEEPALIVE:
            self._state = state = HEAD
            armHead = True
        if state is HEAD:
            reader = self._reader
            if reader is None:
                end = findHeadEnd(data) if not data.startswith(b"\r\n") else -1
                if end >= 0:
                    # The whole head at once: no head timer (the keep-alive
                    # one left from the last exchange cannot act outside
                    # KEEPALIVE, and what comes next sets its own).
                    if end > self.factory.listener.maxHeadSize:
                        self._refuse(431, "request head too large")
                    else:
                        self._headReceived(data[:end], data[end:])
                    return
                reader = self._reader = HeadReader(self.factory.listener.maxHeadSize)
            if armHead:
                self._setTimer(self.factory.listener.headerTimeout, "head")
            try:
                head = reader.feed(data)
            except HTTPError as e:
                self._reader = None
                self._refuse(e.status, e.reason)
                return
            if head is not None:
                self._reader = None
                self._headReceived(head, reader.leftover)
        elif state is WAIT:
            self._input += data
            if len(self._input) > PIPELINE_LIMIT:
                self._pauseInput()
        elif state is H2:
            self._h2conn.dataReceived(data)  # type: ignore[union-attr]
        # LINGER, CLOSED, CLOSING: discard.

    def _streamRequest(self, head: RequestHead) -> None:
        """
        The request of the HTTP/2 stream this protocol serves, validated and
        translated to HTTP/1.1 fields by the stream
        (L{txproxy.h2._translate.requestFromH2}): what L{dataReceived} does
        with a request head, without writing the head out and parsing it
        back.
        """
        self._headReceived(None, b"", head)

    def _headReceived(self, headBytes: Optional[bytes], rest: bytes, parsed: Optional[RequestHead] = None) -> None:
        """
        A request head: C{headBytes} as received (L{None} when not at hand),
        to be parsed, unless C{parsed} is the head already parsed; C{rest}:
        what came after it.
        """
        factory = self.factory
        if headBytes is not None and headBytes[:3] == b"PRI" and self._start is None and self._h2stream is None and factory.listener.http2:
            # (The first head of the connection: the preface's first line.)
            received = headBytes + rest
            if PREFACE.startswith(received[:24]) and len(received) >= 18:
                self._startH2(received)
                return
        self._start = factory.clock.seconds()
        self._startWall = time.time()
        # What the last exchange left (reset only when set: see
        # connectionMade).
        if self._bytesUp or self._bytesDown:
            self._bytesUp = self._bytesDown = 0
        if self._request is not None:
            self._request = None
        if self._ex is not None:
            self._ex = None
        if self._upstreamAddress:
            self._upstreamAddress = ""
        if parsed is None:
            try:
                head = parseRequestHead(headBytes, factory.listener.maxHeaders)  # type: ignore[arg-type]
            except HTTPError as e:
                self._head = None
                self._refuse(e.status, e.reason)
                return
        elif len(parsed.headers) > factory.listener.maxHeaders:
            self._head = None
            self._refuse(431, "Too many header fields")
            return
        else:
            head = parsed
        self._head = head
        tokens = self._headTokens = _connectionTokensOf(head.headers)
        self._input = rest
        if factory.tracer is not None:
            self._startSpan(head, headBytes)
        # From HEAD (or KEEPALIVE, which dataReceived turned into HEAD).
        self._state = WAIT
        if head.method == b"CONNECT":
            # The tunnel's own dial has its connect timeout; the head timer
            # acts only on a head in progress.
            self._cancelTimer()
            self.tunnelRequested(head)
            return
        try:
            framing = self._framing = requestFraming(head)
        except HTTPError as e:
            self._refuse(e.status, e.reason)
            return
        if head.version == _HTTP11:
            self._clientKeepAlive = b"close" not in tokens
        else:
            self._clientKeepAlive = b"keep-alive" in tokens and b"close" not in tokens
        self._upgrading = upgrading = b"upgrade" in tokens and head.get(b"upgrade") is not None
        ex = self._ex = Exchange(
            head,
            framing,
            factory.timeoutsFor(self.connectAttempts),
            factory.maxResponseHeadSize,
            factory.maxInterim,
            factory.pseudonym,
            upgrading,
            self._observeRequest,
            self._observeResponse,
        )
        try:
            refusal = self.checkPolicy(head)
        except Refuse as e:
            self._refuseWith(e)
            return
        if refusal is not None:
            # The limiter answers asynchronously (Redis).
            refusal.addCallbacks(lambda _: self._routeHead(head), self._failed)
            refusal.addErrback(self._unexpected)
        else:
            self._routeHead(head)
        if self._ex is ex and self._state is WAIT and ex.timer is None:
            # Still deciding or dialling as control goes back to the event
            # loop: the connect timer applies from now.  (A request that is
            # already on a pooled connection never needs it.)
            self._run(ex.start())

    def _routeHead(self, head: RequestHead) -> None:
        try:
            routed = self.routeRequest(head)
        except Exception:
            self._failed(Failure())
            return
        if isinstance(routed, defer.Deferred):
            routed.addCallbacks(self._routed, self._failed).addErrback(self._unexpected)
        else:
            self._routed(routed)

    def _routed(self, request: HTTPRequest) -> None:
        if self._state != _WAIT:
            return
        self._request = request
        if self._allowsRequest:
            d = defer.maybeDeferred(self.allowRequest, request)

            def decided(allowed: Any) -> None:
                if not allowed:
                    raise Refuse(403, "request not allowed")
                self._prepare(request)

            d.addCallback(decided).addErrback(self._failed).addErrback(self._unexpected)
            return
        self._prepare(request)

    def _prepare(self, request: HTTPRequest) -> None:
        if self._state != _WAIT:
            return
        try:
            head = self.upstreamHead(request)
        except HTTPError as e:
            self._refuse(e.status, e.reason)
            return
        except Refuse as e:
            self._refuseWith(e)
            return
        except Exception:
            self._failed(Failure())
            return
        span = self._span
        rewrites = self._rewritesRequest
        if span is not None:
            # The trace goes on upstream, with this request's span as parent.
            if span._replaces or rewrites or self.factory.cache is not None:
                # (Fields to replace, or a hook or the cache that must see
                # them: a new head.)
                head = RequestHead(head.method, head.target, head.version, span.propagate(head.headers))
                self._traceField = None
            else:
                # The common case: the field is appended as the head is
                # serialized (no new head).
                self._traceField = span._field or span.traceField()
        elif self._quickLine is not None and (rewrites or self.factory.cache is not None):
            # (An unrecorded span's line, set as it started: a hook or the
            # cache must see the field in the head.)
            head = RequestHead(head.method, head.target, head.version,
                               (*head.headers, (_TRACEPARENT, self._quickLine[13:68])))
            self._traceField = None
        if rewrites:
            d = defer.maybeDeferred(self.rewriteRequest, request, head)
            d.addCallback(lambda h: self._acquire(request, h)).addErrback(self._failed).addErrback(self._unexpected)
            return
        self._acquire(request, head)

    def _acquire(self, request: HTTPRequest, head: RequestHead) -> None:
        if self._state != _WAIT:
            return
        cache = self.factory.cache
        if cache is not None:
            looked = cache.intercept(self, request, head)
            if looked is None:
                return  # answered from the cache, or continued later
            head = looked
        self._upstreamFor(request, head)

    def _upstreamFor(self, request: HTTPRequest, head: RequestHead) -> None:
        """
        Send C{request} upstream with C{head}: on a pooled connection, or a
        new one.  (The cache continues a request it held here.)
        """
        if self._state != _WAIT:
            return
        self._outHead = head
        try:
            if self._picksUpstream:
                self._pickUpstream(request)
            key = self.poolKey(request)
        except Exception:
            self._failed(Failure())
            return
        ex = self._ex
        assert ex is not None
        ex.connecting()
        factory = self.factory
        pool = factory.pool
        while True:
            upstream = pool.get(key)
            if upstream is None:
                break
            if factory.hasDenyDest and not self._stillAllowed(upstream):
                # Pooled before a reload that denies its destination.
                if upstream.transport is not None:
                    upstream.transport.loseConnection()
                continue
            if (ex.retried or not ex.resendable) and upstream.closedByPeer():
                # The server closed it (its keep-alive timeout) while the
                # event loop was busy: a request that cannot be sent again
                # must not be lost on it.  (A retryable one would be
                # retried: no check, no cost.)
                self._traceEvent("upstream.stale", {"txproxy.reason": "pooled connection closed by the server"})
                if upstream.transport is not None:
                    upstream.transport.abortConnection()  # type: ignore[attr-defined]
                continue
            self._exchange(upstream, reused=True)
            return
        self._connectFresh(request, key)

    def _stillAllowed(self, upstream: UpstreamHTTPProtocol) -> bool:
        """
        Whether C{upstream}'s peer address is outside C{--deny-dest} as it is
        now (the configuration may have been reloaded since it was pooled).
        """
        denyDest = self.factory.listener.denyDest
        if upstream.allowedBy is denyDest:
            return True
        transport = upstream.transport
        host = getattr(transport.getPeer(), "host", None) if transport is not None else None
        if host is not None and denyDest.deniesDestination(host):
            return False
        upstream.allowedBy = denyDest
        return True

    def _connectFresh(self, request: HTTPRequest, key: str) -> None:
        """
        Dial a new upstream connection for C{request} (pool key C{key}) and
        start the exchange on it.
        """
        factory = self.factory
        # The exchange's connect timer bounds it (see txproxy.exchange).
        d = self.connectUpstream(request)
        self._pending = d
        dialStart = factory.clock.seconds()

        def connected(upstream: UpstreamHTTPProtocol) -> None:
            self._pending = None
            metrics = factory.metrics
            if metrics is not None:
                metrics.upstreamConnected(factory.listener, factory.clock.seconds() - dialStart)
            self._traceEvent("upstream.connected", {"txproxy.upstream.address": self._upstreamAddress})
            if not upstream.key:
                # (A subclass's connectUpstream may have set the key of
                # the upstream it actually reached.)
                upstream.key = key
            if self._state != _WAIT:
                upstream.transport.loseConnection()  # type: ignore[union-attr]
                return
            self._exchange(upstream, reused=False)

        def failed(f: Failure) -> None:
            self._pending = None
            self._traceEvent("upstream.connect_failed", {"error.type": type(f.value).__name__})
            self._failed(f)

        d.addCallbacks(connected, failed).addErrback(self._unexpected)

    # -- dialling

    def dialTarget(self, target: Target, protocolFactory: Callable[[], Any]) -> defer.Deferred:
        """
        Resolve C{target}, drop addresses in C{--deny-dest} (L{PolicyDenied}
        when none is left), and connect to the first allowed address that
        answers (at most three are tried).

        @return: a Deferred firing with the connected protocol; the address
            dialled is in C{self._upstreamAddress}.
        """
        factory = self.factory
        d: defer.Deferred[List[str]] = factory.connector.resolve(target.host, target.port)
        denyDest = factory.listener.denyDest

        def pick(addresses: List[str]) -> List[str]:
            allowed = [a for a in addresses if not denyDest.deniesDestination(a)] if denyDest else addresses
            if not allowed:
                raise PolicyDenied(f"destination {target.host} is not allowed")
            return allowed[:3]

        return d.addCallback(pick).addCallback(_dialFirst, self, target.port, protocolFactory, 0)

    # -- the exchange: the sans-IO Exchange decides, this carries it out

    def _exchange(self, upstream: UpstreamHTTPProtocol, reused: bool) -> None:
        # Only ever called in WAIT (its callers check), which may move here.
        self._state = EXCHANGE
        self._upstream = upstream
        upstream.owner = self
        upstream.requests += 1
        self._reused = reused
        if not self._upstreamAddress:
            address = upstream.address
            if not address:
                peer = upstream.transport.getPeer()  # type: ignore[union-attr]
                address = upstream.address = formatAddress(getattr(peer, "host", ""), getattr(peer, "port", 0))
            self._upstreamAddress = address
        if self._toClient is None:
            self._toClient = fastSender(self.transport)  # type: ignore[arg-type]
        head = self._outHead
        try:
            if self._rewritesRequest:
                data = serializeRequestHead(head)
            else:
                data = _serializeHead(head.method + b" " + head.target + b" HTTP/1.1\r\n", head.headers,
                                      self._traceField)
        except ValueError as e:
            self._dropUpstream()
            self._refuse(500, f"invalid request head from a hook: {e}")
            return
        ex = self._ex
        assert ex is not None
        toUpstream = upstream.sender
        if toUpstream is None:
            # One per upstream connection, kept for its life: a new closure
            # per request, stored on this long-lived protocol, is what a
            # generational collector must copy and promote (on PyPy, a third
            # of a minor collection's cost under load; bench/README.md).
            toUpstream = upstream.sender = fastSender(upstream.transport)  # type: ignore[arg-type]
        self._toUpstream = toUpstream
        toUpstream(data)
        input_, self._input = self._input, b""
        if self.factory.metrics is not None:
            self._sentAt = self.factory.clock.seconds()
        actions = ex.upstreamReady(input_)
        if ex.requestState is SENDING_BODY:
            upstream.transport.registerProducer(self.transport, True)  # type: ignore[union-attr]
            self._reqProducer = True
            if self._clientReadLost:
                # The client half-closed before its body was all here.
                actions.extend(ex.clientEnded())
        self._run(actions)
        if self._state is EXCHANGE:
            self._resumeInput()

    def _run(self, actions: List[Action]) -> None:
        """
        Carry out the exchange's actions, in order.  A terminal action
        (done, failed, upgraded, retry) is always the last of a list.
        """
        for action in actions:
            kind = type(action)
            if kind is SendDownstream:
                self._toClient(action.data)  # type: ignore[union-attr]
            elif kind is ResponseHeadReady:
                self._responseHead(action)  # type: ignore[arg-type]
            elif kind is SetTimer:
                if action.kind is None:  # type: ignore[union-attr]
                    # Disarmed, not cancelled: the connection layer sets its
                    # own timer next, which resets the same DelayedCall (a
                    # cancel and a new callLater cost two heap operations).
                    self._timerKind = ""
                else:
                    self._setTimer(action.seconds, action.kind)  # type: ignore[union-attr]
            elif kind is RequestSent:
                if self._reqProducer or action.leftover:  # type: ignore[union-attr]
                    self._requestSent(action.leftover)  # type: ignore[union-attr]
            elif kind is ResponseDone:
                if action.closeClient:  # type: ignore[union-attr]
                    self._clientKeepAlive = False
                self._finish(action.reusable)  # type: ignore[union-attr]
                return
            elif kind is SendUpstream:
                self._toUpstream(action.data)  # type: ignore[union-attr]
            elif kind is Observe:
                if self._cacheReq is not None and not action.upstream:  # type: ignore[union-attr]
                    self._cacheReq.bodyData(action.data)  # type: ignore[union-attr]
                if self._request is not None:
                    if action.upstream:  # type: ignore[union-attr]
                        self.requestBodyData(self._request, action.data)  # type: ignore[union-attr]
                    else:
                        self.responseBodyData(self._request, action.data)  # type: ignore[union-attr]
            elif kind is Fail:
                self._dropUpstream(abort=True)
                self._refuse(action.status, action.reason)  # type: ignore[union-attr]
                return
            elif kind is Abort:
                self._dropUpstream(abort=True)
                self._log(action.status, action.reason)  # type: ignore[union-attr]
                self._ex = None
                self._setState(CLOSING)
                self._cancelTimer()
                self.transport.loseConnection()  # type: ignore[union-attr]
                return
            elif kind is Upgrade:
                self._upgrade(action.head, action.rest)  # type: ignore[union-attr]
                return
            elif kind is Retry:
                self._retry()
                return

    def _requestSent(self, leftover: bytes) -> None:
        if self._reqProducer:
            self._reqProducer = False
            upstream = self._upstream
            if upstream is not None and upstream.transport is not None:
                # (ITransport does not declare the IConsumer and
                # ITCPTransport methods that connection transports have.)
                upstream.transport.unregisterProducer()  # type: ignore[attr-defined]
            if not self._inputPaused and self.transport is not None:
                # The upstream may have paused the client while it was its
                # producer: unregistering does not resume it.
                self.transport.resumeProducing()  # type: ignore[attr-defined]
        self._pipelined(leftover)

    def _pauseInput(self) -> None:
        """
        Stop reading from the client (too much buffered ahead).
        """
        if not self._inputPaused:
            self._inputPaused = True
            self.transport.pauseProducing()  # type: ignore[union-attr]

    def _resumeInput(self) -> None:
        if self._inputPaused:
            self._inputPaused = False
            self.transport.resumeProducing()  # type: ignore[union-attr]

    def _pipelined(self, data: bytes) -> None:
        if data:
            self._input += data
            if len(self._input) > PIPELINE_LIMIT:
                self._pauseInput()

    def _responseData(self, data: bytes) -> None:
        ex = self._ex
        if ex is not None:
            self._run(ex.responseData(data))

    def _responseHead(self, action: ResponseHeadReady) -> None:
        resp = action.head
        if self._cacheReq is not None:
            cached = self._cacheReq.responseHead(resp)
            if cached is None:
                return  # the cache answers instead
            resp = cached
        framing = action.framing
        metrics = self.factory.metrics
        if metrics is not None and self._sentAt is not None:
            metrics.responseHeadReceived(self.factory.listener, self.factory.clock.seconds() - self._sentAt)
            self._sentAt = None
        kind = framing.kind
        if kind == "close" or (kind == "chunked" and not action.chunked):
            # Close-delimited to the client.
            self._clientKeepAlive = False
        ex = self._ex
        assert ex is not None
        headers = self._clientResponseFields(
            resp, framing, action.chunked, ex.responseTokens if resp is action.head else None
        )
        body = action.body
        if self._request is not None and self._rewritesResponse:
            out = self._rewrittenHead(self._request, resp, headers)
        elif self._h2stream is None:
            out = _serializeHead(b"HTTP/1.1 %d %s\r\n" % (resp.status, resp.reason), headers)
        else:
            # An HTTP/2 stream takes the head as a value (no HTTP/1.1 head
            # written and parsed again), and a whole body of known length
            # (the usual answer) with it, as frames at once.
            out = b""
            if kind == "length" and not action.chunked and len(body) == framing.length:
                self._h2stream.writeWholeResponse(resp.status, resp.reason, headers, body)
            else:
                self._h2stream.writeResponse(ResponseHead(_HTTP11, resp.status, resp.reason, headers), body)
        if out:
            if body and not ex.observeResponse:
                self._toClient(out + body)
            else:
                self._toClient(out)
                if body:
                    self._toClient(body)
        if ex.responseState is RECEIVING_BODY:
            upstream = self._upstream
            if upstream is not None and upstream.transport is not None and self.transport is not None:
                self.transport.registerProducer(upstream.transport, True)  # type: ignore[attr-defined]
                self._respProducer = True

    def _clientResponseHead(self, resp: ResponseHead, framing: Any = None, chunked: bool = False,
                            tokens: Optional[FrozenSet[bytes]] = None,
                            passed: Optional[Tuple[List[Tuple[bytes, bytes]], bool]] = None) -> bytes:
        """
        The serialized head for the client of C{resp}.

        @param passed: C{resp}'s end-to-end fields (a new list) and whether
            it had a C{Content-Length}, when the caller knows them (a cache
            hit): what L{endToEnd} would return.
        """
        headers = self._clientResponseFields(resp, framing, chunked, tokens, passed)
        if self._request is not None and self._rewritesResponse:
            return self._rewrittenHead(self._request, resp, headers)
        return _serializeHead(b"HTTP/1.1 %d %s\r\n" % (resp.status, resp.reason), headers)

    def _rewrittenHead(self, request: HTTPRequest, resp: ResponseHead, headers: List[Tuple[bytes, bytes]]) -> bytes:
        """
        The client's head of C{resp} (fields C{headers}) after the
        C{rewriteResponse} hook, serialized.
        """
        out = self.rewriteResponse(request, ResponseHead(_HTTP11, resp.status, resp.reason, tuple(headers)))
        return serializeResponseHead(out, validate=True)

    def _clientResponseFields(self, resp: ResponseHead, framing: Any = None, chunked: bool = False,
                              tokens: Optional[FrozenSet[bytes]] = None,
                              passed: Optional[Tuple[List[Tuple[bytes, bytes]], bool]] = None
                              ) -> List[Tuple[bytes, bytes]]:
        """
        The header fields of L{_clientResponseHead}'s head (before the
        C{rewriteResponse} hook).
        """
        head = self._head
        connection: Optional[bytes] = None
        if not self._clientKeepAlive or self.factory.draining:
            self._clientKeepAlive = False
            connection = b"close"
        elif head is not None and head.version != _HTTP11:
            connection = b"keep-alive"
        if framing is not None:
            kind, length = framing.kind, framing.length
        else:
            kind, length = "none", None
        return clientResponseHeaders(resp, kind, length, chunked, tokens, passed, connection, self.factory.pseudonym)

    def _finish(self, reusable: bool, status: Optional[int] = None) -> None:
        cacheReq = self._cacheReq
        if cacheReq is not None:
            self._cacheReq = None
            replaced = cacheReq.finished()
            if replaced is not None:
                status = replaced
        upstream, self._upstream = self._upstream, None
        if upstream is not None:
            upstream.owner = None
            self.upstreamReleased(upstream)
            transport = upstream.transport
            if self._respProducer and self.transport is not None:
                self.transport.unregisterProducer()  # type: ignore[attr-defined]
                self._respProducer = False
            self._reqProducer = False
            if reusable and not upstream.lost and transport is not None and not self.factory.draining:
                if transport.producer is not None:  # type: ignore[attr-defined]
                    transport.unregisterProducer()  # type: ignore[attr-defined]
                # The client side may have paused it (its write buffer or
                # an HTTP/2 window full) as the last bytes went out, and
                # nothing resumes a producer once unregistered: a pooled
                # connection must read, or its next request hangs.
                transport.resumeProducing()  # type: ignore[attr-defined]
                ex = self._ex
                if ex is not None and ex.keepAliveTimeout is not None:
                    upstream.idleLimit = keepAliveLimit(ex.keepAliveTimeout)
                self.factory.pool.put(upstream)
            elif transport is not None:
                if transport.producer is not None:  # type: ignore[attr-defined]
                    transport.unregisterProducer()  # type: ignore[attr-defined]
                transport.loseConnection()
        ex = self._ex
        if status is None:
            resp = ex.response if ex is not None else None
            status = resp.status if resp is not None else 502
        self._log(status)
        self._ex = None
        if not self._clientKeepAlive or self._clientReadLost:
            self._setState(CLOSING)
            self._cancelTimer()
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        # The end of an exchange (EXCHANGE may move to KEEPALIVE).
        self._state = KEEPALIVE
        self._setTimer(self.factory.keepAliveTimeout, "keepalive")
        if self._hitDepth:
            # A cache answer: _answerFromCache's loop reads what is pending.
            self._resumeInput()
            return
        pending, self._input = self._input, b""
        self._resumeInput()
        if pending:
            self.dataReceived(pending)

    # -- answers from the cache

    def _answerFromCache(self, resp: ResponseHead, body: bytes, finish: bool = True,
                         passed: Optional[Tuple[List[Tuple[bytes, bytes]], bool]] = None) -> None:
        """
        Write a response the cache made (a hit: an exchange with no
        upstream), then, if C{finish}, end the exchange.

        @param passed: see L{_clientResponseHead}.
        """
        if self._state is not WAIT and self._state is not EXCHANGE:
            return
        if self._toClient is None:
            self._toClient = fastSender(self.transport)  # type: ignore[arg-type]
        head = self._head
        if (head is not None and head.method == b"HEAD") or resp.status == 304 or resp.status == 204:
            out = self._clientResponseHead(resp, NO_BODY, passed=passed)
            body = b""
        else:
            out = self._clientResponseHead(resp, Framing("length", len(body)), passed=passed)
        self._toClient(out + body if len(body) < 65536 else out)
        if len(body) >= 65536:
            self._toClient(body)
        self._bytesDown += len(body)
        if finish:
            self._finishFromCache(resp.status)

    def _finishFromCache(self, status: int) -> None:
        """
        End an exchange the cache answered: log C{status}, then go on with
        the pipelined requests (in a loop: a run of hits does not recurse).
        """
        self._hitDepth += 1
        try:
            self._finish(False, status)
        finally:
            self._hitDepth -= 1
        if self._hitDepth:
            return
        self._hitDepth = 1
        try:
            while self._state is KEEPALIVE and self._input:
                pending, self._input = self._input, b""
                self.dataReceived(pending)
        finally:
            self._hitDepth = 0

    def _upgrade(self, resp: ResponseHead, rest: bytes) -> None:
        upstream = self._upstream
        assert upstream is not None and self.transport is not None
        self._upstream = None
        upstream.owner = None
        self.upstreamReleased(upstream)
        if upstream.transport.producer is not None:  # type: ignore[union-attr]
            upstream.transport.unregisterProducer()  # type: ignore[union-attr]
        self._reqProducer = False
        headers = [(n, v) for n, v in resp.headers if n.lower() not in _UPGRADE_DROP]
        headers.append((b"Via", resp.version[5:] + b" " + self.factory.pseudonym))
        out = ResponseHead(_HTTP11, 101, resp.reason, tuple(headers))
        self.transport.write(serializeResponseHead(out, validate=False))
        self._startTunnel(upstream, rest, status=101)

    # -- tunnels (CONNECT, upgrades)

    def _startTunnel(self, upstream: RelayedProtocol, fromUpstream: bytes = b"", status: int = 200,
                     filterUp: Any = None, filterDown: Any = None) -> Relay:
        self._setState(TUNNEL)
        if self._inputPaused:
            self._inputPaused = False  # the relay resumes and owns flow control
        self._cancelTimer()
        pending, self._input = self._input, b""
        return joinRelay(
            self,
            upstream,
            self.factory.clock,
            self.factory.listener.idleTimeout,
            fromClient=pending,
            fromUpstream=fromUpstream,
            filterUp=filterUp,
            filterDown=filterDown,
            clientReadLost=self._clientReadLost,
            # (A bound method, not a closure, for the common 200: a tunnel
            # holds it for its whole life.)
            onEnded=self._tunnelEnded200 if status == 200 else lambda relay: self._tunnelEnded(relay, status),
        )

    def _tunnelEnded200(self, relay: Relay) -> Optional[AccessRecord]:
        return self._tunnelEnded(relay, 200)

    def _tunnelEnded(self, relay: Relay, status: int) -> Optional[AccessRecord]:
        self._bytesUp += relay.bytesUp
        self._bytesDown += relay.bytesDown
        return self._log(status, relay.closeReason or "")

    # -- upstream trouble

    def _upstreamEnded(self, upstream: UpstreamHTTPProtocol, reason: Optional[Failure]) -> None:
        """
        The upstream closed (or half-closed) while serving this client.
        """
        if upstream is not self._upstream:
            return
        ex = self._ex
        if ex is not None:
            if reason is not None and not self._reused:
                # A fresh TLS connection whose handshake refused the
                # upstream's certificate: say so (else it would read as
                # "closed before answering").
                detail = verificationFailure(reason.value)
                if detail is not None:
                    log.warn(
                        "upstream {upstream} for {client}: TLS verification failed: {detail}",
                        upstream=self._upstreamAddress or "?",
                        client=self.client.host,
                        detail=detail,
                    )
                    self._run(ex.fail(502, f"TLS verification of the upstream failed: {detail}"))
                    return
            self._run(ex.upstreamEnded(self._reused))

    def _retry(self) -> None:
        """
        A pooled connection the server had closed: try once on a fresh
        connection (the exchange decided it is safe).
        """
        upstream, self._upstream = self._upstream, None
        if upstream is not None:
            upstream.owner = None
            self.upstreamReleased(upstream)
            self.factory.pool.remove(upstream)
            if upstream.transport is not None:
                upstream.transport.loseConnection()
        if self._respProducer:
            self.transport.unregisterProducer()  # type: ignore[union-attr]
            self._respProducer = False
        self._setState(WAIT)
        assert self._request is not None
        self._traceEvent("upstream.retry", {"txproxy.reason": "pooled connection closed"})
        self._acquireFresh(self._request)

    def _acquireFresh(self, request: HTTPRequest) -> None:
        try:
            if self._picksUpstream:
                self._pickUpstream(request)
            key = self.poolKey(request)
        except Exception:
            self._failed(Failure())
            return
        self._connectFresh(request, key)

    def _dropUpstream(self, abort: bool = False) -> None:
        upstream, self._upstream = self._upstream, None
        if upstream is None:
            return
        upstream.owner = None
        self.upstreamReleased(upstream)
        transport = upstream.transport
        self._reqProducer = False
        if transport is None:
            return
        if self._respProducer and self.transport is not None:
            self.transport.unregisterProducer()  # type: ignore[attr-defined]
            self._respProducer = False
        if transport.producer is not None:  # type: ignore[attr-defined]
            transport.unregisterProducer()  # type: ignore[attr-defined]
        if abort:
            transport.abortConnection()  # type: ignore[attr-defined]
        else:
            transport.loseConnection()

    # -- errors

    def _failed(self, f: Failure) -> None:
        if self._state in (_LINGER, _CLOSED, _CLOSING):
            return
        status, reason = statusForFailure(f)
        if status == 500:
            # A bug (in a hook, say): log it; the client gets a plain 500.
            log.failure("Unexpected error for a request from {client}", f, client=self.client.host)
        elif f.check(*_UPSTREAM_FAILURES):
            self.upstreamFailed(self._hookRequest(), f)
        self._refuseWith(f.value if f.check(Refuse) else Refuse(status, reason))

    def upstreamFailed(self, request: Any, reason: Failure) -> None:
        """
        Called when the upstream of a request or tunnel could not be reached
        (before the error status is sent).

        @param request: the L{HTTPRequest}, or the
            L{txproxy.hooks.TunnelRequest} of a C{CONNECT}.
        """

    def _hookRequest(self) -> Any:
        return self._request

    def _unexpected(self, f: Failure) -> None:
        log.failure("Unexpected error handling a request from {client}", f, client=self.client.host)
        if self._state in (_WAIT, _EXCHANGE):
            self._dropUpstream(abort=True)
            self._refuse(500, "internal error")

    def _refuseWith(self, refusal: Refuse) -> None:
        self._refuse(refusal.status, refusal.reason, retryAfter=getattr(refusal, "retryAfter", None))

    def _refuse(self, status: int, reason: str, retryAfter: Optional[float] = None) -> None:
        """
        Answer C{status} with a short plain body, then close gracefully: stop
        writing, keep reading (and discarding) for a moment so the client
        sees the response rather than a reset.
        """
        state = self._state
        if state is LINGER or state is CLOSED or state is CLOSING or state is TUNNEL:
            return
        extra: List[Tuple[bytes, bytes]] = []
        if self.factory.cache is not None:
            cacheReq, self._cacheReq = self._cacheReq, None
            # (Not while a dial is pending: its answer must find LINGER.)
            if cacheReq is not None and cacheReq.failed(status, self._pending is None):
                return  # answered from the cache (stale-if-error)
            extra.append((b"Cache-Status", cacheReq.status if cacheReq is not None else b"txproxy; fwd=bypass"))
        # LINGER first: a cancelled dial's errback then finds it and stops.
        self._setState(LINGER)
        if self._pending is not None:
            d, self._pending = self._pending, None
            d.cancel()
        if status == 407:
            extra.append((b"Proxy-Authenticate", b'Basic realm="' + self.factory.realm.encode() + b'"'))
        if retryAfter is not None:
            extra.append((b"Retry-After", str(max(1, int(retryAfter + 0.999))).encode()))
        if status == 405:
            extra.append((b"Allow", b"GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH"))
        response = errorResponse(status, reason, extra)
        self._input = b""
        transport = self.transport
        assert transport is not None
        if self._respProducer:
            transport.unregisterProducer()  # type: ignore[attr-defined]
            self._respProducer = False
        transport.write(response)
        self._bytesDown += len(response)
        self._log(status, reason)
        self._ex = None
        self._setTimer(LINGER_SECONDS, "linger")
        self._inputPaused = False
        transport.resumeProducing()  # type: ignore[attr-defined]
        loseWrite = getattr(transport, "loseWriteConnection", None)
        if loseWrite is not None and not self._clientReadLost:
            loseWrite()
        else:
            transport.loseConnection()

    # -- logging

    def _log(self, status: int, reason: str = "") -> Optional[AccessRecord]:
        head = self._head
        factory = self.factory
        ex = self._ex
        if ex is not None:
            # Body bytes the exchange moved (once: the exchange is over).
            self._bytesUp += ex.bytesUp
            self._bytesDown += ex.bytesDown
            ex.bytesUp = ex.bytesDown = 0
        span = self._span
        ids: Optional[bytes] = None
        if span is not None:
            self._span = None
            self._traceField = None
            if span.sampled:
                self._endSpan(span, status, reason)
        elif self._quickLine is not None:
            ids = self._quickLine
            self._quickLine = self._traceField = None
            if ids[67] == 49:
                # (Sampled flag "1": recorded.)
                self._endQuick(ids, status, reason)
        if factory.accessLog is None and not self._wantsRecord():
            factory.requestsTotal += 1
            metrics = factory.metrics
            if metrics is not None:
                method = head.method.decode("latin-1") if head is not None else "-"
                metrics.countRequest(factory.listener, method, status, self._bytesUp, self._bytesDown,
                                     protocol="http/1.1" if self._h2stream is None else "h2")
            return None
        clock = factory.clock
        start = self._start if self._start is not None else clock.seconds()
        request = self._request
        if head is not None and head.method == b"CONNECT":
            target = head.target.decode("latin-1")
        elif request is not None:
            target = f"{request.scheme}://{request.target}{request.path.decode('latin-1')}"
        elif head is not None:
            target = head.target.decode("latin-1")
        else:
            target = "-"
        record = AccessRecord(
            client=self.client.host,
            method=head.method.decode("latin-1") if head is not None else "-",
            target=target,
            status=status,
            start=self._startWall or time.time(),
            duration=max(0.0, clock.seconds() - start),
            bytesUp=self._bytesUp,
            bytesDown=self._bytesDown,
            user=self.client.user,
            version=("HTTP/2.0" if self._h2stream is not None else head.version.decode("latin-1"))
            if head is not None
            else "HTTP/1.1",
            upstream=self._upstreamAddress,
            userAgent=(head.get(b"user-agent") or b"").decode("latin-1") if head is not None else "",
            referer=(head.get(b"referer") or b"").decode("latin-1") if head is not None else "",
            mode=self.mode,
            listener=factory.listener.name,
            reason=reason,
            traceId=span.traceIdText if span is not None else ids[16:48].decode("ascii") if ids else "",
            spanId=span.spanIdText if span is not None else ids[49:65].decode("ascii") if ids else "",
        )
        self._factoryEnded(factory, self, record)
        hook = self._ended
        if hook is not None:
            hook(self, record)
        return record

    # -- tracing (only with a tracer: self.span stays None otherwise)

    #: Whether this class overrides spanStarted (found on first use).
    _spanHook: Optional[bool] = None
    #: The attributes every span of this connection shares.
    _spanBase: Optional[Dict[str, Any]] = None
    #: The request's C{traceparent} line, when it is appended as the head is
    #: serialized instead of by a new head (L{_prepare}).
    _traceField: Optional[bytes] = None

    @property
    def span(self) -> Any:
        """
        With tracing on (C{--trace-otlp}), the L{txproxy.tracing.Span} of
        the request in progress (from its head to its access record), else
        L{None}.
        """
        span = self._span
        if span is None:
            line = self._quickLine
            if line is not None:
                self._quickLine = None
                span = self._span = self._spanOf(line)
        return span

    @span.setter
    def span(self, value: Any) -> None:
        self._span = value
        self._quickLine = None

    def _startSpan(self, head: RequestHead, raw: Optional[bytes]) -> None:
        tracer = self.factory.tracer
        hook = self._spanHook
        if hook is None:
            hook = self._spanHook = overrides(self, "spanStarted", HTTPProxyProtocol)
        if tracer.quickLines and not hook and (
                raw.lower().find(b"trace") < 0 if raw else not hasTraceFields(head.headers)):
            # --trace-sample 0 or 1 and no trace field (in the raw head when
            # at hand; find, not "in": see startHTTPSpan): a new trace is
            # only its traceparent line from the tracer's pool, appended to
            # the upstream head as it is serialized; no Span is made unless
            # self.span is read (_spanOf).  At ratio 1 the request's span
            # is encoded from the request as it ends (_endQuick).
            self._quickLine = self._traceField = tracer.quickLine()
            if self._spanBase is None and tracer._newSampled:
                # (While the transport can still name its peer: the span may
                # be made as the connection closes.)
                self._connectionSpanAttributes()
            return
        base = self._spanBase or self._connectionSpanAttributes()
        span = self._span = startHTTPSpan(
            tracer, head, self.client, self.transport, self._h2stream is not None, self._startWall, raw, base
        )
        if hook:
            self.spanStarted(span)

    def _connectionSpanAttributes(self) -> Dict[str, Any]:
        """
        The attributes every span of this connection shares (computed once).
        """
        base = self._spanBase = connectionAttributes(self.client, self.transport, http=True)
        return base

    def _spanOf(self, line: bytes) -> Any:
        """
        The span of this request, which kept only its C{traceparent} line
        so far (L{_startSpan}): unrecorded, or recorded with its start
        attributes.
        """
        base = self._spanBase or self._connectionSpanAttributes()
        return startHTTPSpan(self.factory.tracer, self._head, self.client, self.transport, self._h2stream is not None,
                             self._startWall, None, base, line)

    def _endQuick(self, line: bytes, status: int, reason: str) -> None:
        """
        End the recorded span of a request that kept only its
        C{traceparent} line: encoded straight from the request when it is
        of the common kind (L{txproxy.tracing.encodeHTTPSpan}), else made
        and ended as any span.
        """
        factory = self.factory
        addEncoded = factory.tracer.addEncoded
        if addEncoded is not None and not reason and status < 500:
            start = self._start
            field = encodeHTTPSpan(
                line, self._startWall, self._startWall + (factory.clock.seconds() - start if start is not None else 0.0),
                self._head, self._h2stream is not None, self._spanBase or self._connectionSpanAttributes(),
                self._route if self._request is not None else None, self._upstreamAddress,
                factory.listener.name, self.mode, status, self._bytesUp, self._bytesDown
            )
            if field is not None:
                addEncoded(field)
                return
        self._endSpan(self._spanOf(line), status, reason)

    def _endSpan(self, span: Any, status: int, reason: str) -> None:
        if not span.sampled:
            return
        factory = self.factory
        start = self._start
        end = self._startWall + (factory.clock.seconds() - start if start is not None else 0.0)
        _endSpan(factory.tracer, span, status, reason, self._bytesUp, self._bytesDown, self._upstreamAddress,
                 factory.listener.name, self.mode, end, route=self._traceRoute())

    #: The route the reverse proxy matched for this request (a
    #: L{txproxy.router.Route}; its C{name} and C{prefix} go in the span).
    _route: Any = None

    def _traceRoute(self) -> Any:
        """
        The route this request was routed to, for its span, or L{None}.
        """
        return self._route if self._request is not None else None

    def _traceEvent(self, name: str, attributes: Dict[str, Any]) -> None:
        """
        Add an event to this request's span, when tracing is on.
        """
        span = self._span
        if span is None and self._quickLine is not None and self._quickLine[67] == 49:
            # (A recorded span that kept only its line: made to take it.)
            span = self.span
        if span is not None:
            span.addEvent(name, attributes)

    def _wantsRecord(self) -> bool:
        """
        Whether a hook wants each request's access record (when no access
        log or metrics do, the record is not built at all).
        """
        return self._ended is not None

    # -- draining, end of input and loss

    def drain(self) -> None:
        """
        The proxy is stopping: close now if between requests; otherwise the
        current response is sent with C{Connection: close} (or the tunnel
        runs on until the drain timeout).
        """
        state = self._state
        if state is H2:
            self._h2conn.drain()  # type: ignore[union-attr]
            return
        if (state is KEEPALIVE or (state is HEAD and self._reader is None)) and self.transport is not None:
            self._setState(CLOSING)
            self.transport.loseConnection()

    def readConnectionLost(self) -> None:
        self._clientReadLost = True
        state = self._state
        if state is H2:
            self._h2conn.clientReadLost()  # type: ignore[union-attr]
        elif self.relay is not None:
            self.relay.clientReadLost()
        elif state == _WAIT and self._head is not None and self._head.method == b"CONNECT":
            # CONNECT, first bytes and FIN at once: open the tunnel anyway
            # and forward the FIN.
            pass
        elif state is EXCHANGE or state is WAIT:
            # The client is done sending; answer this request, then close.
            self._clientKeepAlive = False
            ex = self._ex
            if state is EXCHANGE and ex is not None:
                self._run(ex.clientEnded())
        elif state == _LINGER:
            self.transport.loseConnection()  # type: ignore[union-attr]
        else:
            self.transport.loseConnection()  # type: ignore[union-attr]

    def writeConnectionLost(self) -> None:
        if self._state == _LINGER and self._clientReadLost:
            self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = Failure(error.ConnectionDone())) -> None:
        state, self._state = self._state, CLOSED
        self._cancelTimer()
        h2conn = self._h2conn
        if h2conn is not None:
            h2conn.connectionLost(reason)
            # It refers back to this protocol (its owner): a cycle, which
            # would also keep the transport, TLS state and socket until the
            # cyclic collector ran.
            self._h2conn = None
        if self.relay is not None:
            self.relay.clientLost(reason)
        if self._pending is not None:
            d, self._pending = self._pending, None
            d.cancel()
        cacheReq = self._cacheReq
        if cacheReq is not None:
            self._cacheReq = None
            cacheReq.aborted()
        ex = self._ex
        if state is EXCHANGE and self._upstream is not None:
            resp = ex.response if ex is not None else None
            self._log(resp.status if resp is not None else 499, "client closed")
            self._dropUpstream(abort=True)
        if self._span is not None:
            # Gone while its request was being decided or dialled.
            span, self._span = self._span, None
            self._endSpan(span, 499, "client closed")
        self._quickLine = None
        self._ex = None
        if self._lease is not None:
            self._lease.release()
            self._lease = None
        if self._h2stream is None and self._countsConnection:
            self.factory.connectionClosed(self)


class HTTPProxyFactory(ListenerFactory):
    """
    Builds protocols for one HTTP listener and holds what they share.

    @ivar listener: the L{ListenerConfig}.
    @ivar connector: the L{IUpstreamConnector} used to resolve and dial.
    @ivar clock: the L{IReactorTime} for every timer.
    @ivar limits: a L{txproxy.limits.service.ListenerLimits}, or L{None}.
    @ivar accessLog: an L{IAccessLog}, or L{None}.
    @ivar htpasswd: the loaded C{--auth} file, or L{None}.
    @ivar pool: the L{UpstreamPool} of idle upstream connections.
    @ivar protocols: the open client connections.
    @ivar draining: set when the proxy stops: responses then carry
        C{Connection: close} and no connection is returned to the pool.
    """

    protocol: Any = HTTPProxyProtocol
    noisy = False
    #: The realm named in C{Proxy-Authenticate}.
    realm = "txproxy"
    #: How this proxy names itself in C{Via}.
    pseudonym = b"txproxy"
    #: Seconds an idle keep-alive client connection is kept open.
    keepAliveTimeout = 75.0
    #: Largest response head accepted from an upstream.
    maxResponseHeadSize = 65536
    #: Interim (1xx) responses relayed for one request; past it, 502.
    maxInterim = DEFAULT_MAX_INTERIM
    #: Checks C{--auth}'s bcrypt hashes off the reactor thread (a
    #: L{txproxy.auth.Verifier}); L{None} for the process's shared thread
    #: pool (L{txproxy.auth.sharedVerifier}).
    passwordVerifier: Any = None
    mode = "http"
    #: The listener's L{txproxy.cache.HTTPCache} (C{--cache}), or L{None}.
    cache: Any = None

    def __init__(
        self,
        listener: ListenerConfig,
        connector: Any,
        clock: Optional[IReactorTime] = None,
        limits: Any = None,
        accessLog: Any = None,
        metrics: Any = None,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as _reactor

            clock = cast(IReactorTime, _reactor)
        self.listener = listener
        self.connector = connector
        self.clock = clock
        self.limits = limits
        self.accessLog = accessLog
        self.metrics = metrics
        self.htpasswd = self._loadAuth(listener)
        #: Client address -> when its rate bucket, found empty by a wrong
        #: password, has a token again (see _guessingRefusal).
        self._guessing: Dict[str, float] = {}
        self.protocols: set = set()
        self.pool = UpstreamPool(clock)
        self.requestsTotal = 0
        self._directFor: Any = None
        self.draining = False
        if listener.idleTimeout and listener.idleTimeout < self.keepAliveTimeout:
            self.keepAliveTimeout = listener.idleTimeout
        # Read once or more per request: made instance attributes (keeping a
        # subclass's class-level values), because CPython 3.11 reads a
        # class attribute through an instance by a generic, unspecialized
        # lookup.
        self.pseudonym = self.pseudonym
        self.maxResponseHeadSize = self.maxResponseHeadSize
        self.maxInterim = self.maxInterim
        self.keepAliveTimeout = self.keepAliveTimeout
        self.cache = self.cache
        self.tracer = self.tracer

    _directReactor: Any = None
    _bindAddress: Any = None

    def _loadAuth(self, listener: ListenerConfig) -> Optional[Htpasswd]:
        if not listener.auth:
            return None
        return Htpasswd(listener.auth, self.clock, self.passwordVerifier)

    def directDialer(self) -> Any:
        """
        The reactor to dial IP literals on with C{connectTCP} directly, or
        L{None} when the connector must be used (see
        L{txproxy.connector.directDial}); re-checked when C{connector} is
        replaced.
        """
        connector = self.connector
        if connector is not self._directFor:
            self._directReactor, self._bindAddress = directDial(connector)
            self._directFor = connector
        return self._directReactor

    #: The configuration L{hasDenyDest} and the timeouts were derived from.
    _derivedFor: Optional[ListenerConfig] = None
    #: Whether C{--deny-dest} is set (pooled connections are then checked).
    hasDenyDest = False

    def _derive(self) -> None:
        """
        Derive what is computed once per configuration rather than per
        request (after construction, a reload, or a test setting
        C{listener}).
        """
        listener = self.listener
        self._derivedFor = listener
        self._timeoutsBy: Dict[int, Timeouts] = {}
        self.hasDenyDest = bool(listener.denyDest)

    def timeoutsFor(self, connectAttempts: int) -> Timeouts:
        """
        The exchange timeouts of this listener's configuration (made once
        per configuration and number of connect attempts, not per request).

        @param connectAttempts: upstreams one request may dial in turn.
        """
        if self._derivedFor is not self.listener:
            self._derive()
        timeouts = self._timeoutsBy.get(connectAttempts)
        if timeouts is None:
            listener = self.listener
            timeouts = Timeouts(listener.connectTimeout * connectAttempts, listener.responseTimeout, listener.idleTimeout)
            self._timeoutsBy[connectAttempts] = timeouts
        return timeouts

    def reloadListener(self, listener: ListenerConfig, dryRun: bool = False) -> None:
        """
        Take a reloaded configuration for this listener: new requests use its
        policy, timeouts and auth file.  HTTP/2 connections get a graceful
        C{GOAWAY}: their open streams finish, and the client's next
        requests come on a new connection, with the new settings.

        @param dryRun: only check that it can be applied (the auth file
            reads), change nothing.
        @raise ConfigError: when it cannot be applied.
        """
        htpasswd = self._loadAuth(listener)
        if dryRun:
            return
        self.listener = listener
        self.htpasswd = htpasswd
        self._guessing = {}
        self.keepAliveTimeout = min(type(self).keepAliveTimeout, listener.idleTimeout or type(self).keepAliveTimeout)
        for proto in list(self.protocols):
            h2conn = getattr(proto, "_h2conn", None)
            if h2conn is not None:
                h2conn.goAway(0)

    def stopFactory(self) -> None:
        self.pool.closeAll()
