# -*- test-case-name: tests.test_exchange -*-
"""
One HTTP request and its response, sans-IO: events in, actions out.

L{Exchange} knows nothing of sockets, reactors or Twisted.  The connection
layer feeds it what happens (the upstream is ready, request body bytes,
response bytes, the upstream closed, a timer fired) and carries out the
actions it returns, in order:

  - L{SendUpstream}, L{SendDownstream}: bytes to write;
  - L{ResponseHeadReady}: the final response head, for the connection
    layer to turn into the client's head (hooks, C{Connection}) and write,
    followed at once by the C{body} bytes it carries;
  - L{Observe}: decoded body bytes for C{requestBodyData} /
    C{responseBodyData} hooks (only when asked for);
  - L{RequestSent}: the whole request went upstream; C{leftover} is the
    next pipelined request;
  - L{ResponseDone}: the response is complete;
  - L{Upgrade}: a C{101} to an upgrade request: hand both sides to the
    relay;
  - L{Retry}: the pooled connection was closed before answering: dial a
    fresh one and send the request again;
  - L{Fail}: answer C{status} (nothing final was sent to the client yet);
  - L{Abort}: close both connections (the client already has a head);
  - L{SetTimer}: (re)arm the exchange's one timer (C{None}: cancel it).

A terminal action (L{ResponseDone}, L{Fail}, L{Abort}, L{Upgrade}, L{Retry})
is always the last of its list, and ends the exchange's timer with it
(L{Retry} comes after the L{SetTimer} of the new connect timer).

The states and which timer applies in each are in L{txproxy.exchange._state}.
Interim C{1xx} responses are handled in a loop, never by recursion, and
capped by C{maxInterim}: past it the exchange fails with C{502}.

Why this module is long: it is one class, the exchange's state machine.
Its event handlers share the state table (L{txproxy.exchange._state}) and
the timers, and split apart they would scatter the transitions the table
keeps in one place.
"""

from typing import Dict, Final, FrozenSet, List, Optional, Sequence, Tuple, Union

from txproxy.http import (
    ChunkedDecoder,
    ChunkedReader,
    Framing,
    HeadReader,
    HTTPError,
    LengthReader,
    RequestHead,
    ResponseHead,
    findHeadEnd,
    parseResponseHead,
    responseFraming,
)
from txproxy.http._headers import endToEnd, serializeTrustedHead
from txproxy.http._parser import _connectionTokens

from ._state import (
    AWAITING_HEAD,
    CONNECTING,
    DECIDING,
    FAILED,
    RECEIVING_BODY,
    REQUEST_TRANSITIONS,
    RESPONDED,
    RESPONSE_TRANSITIONS,
    SENDING_BODY,
    SENT,
    UPGRADED,
    State,
    TIMERS,
    transition,
)

__all__ = [
    "Exchange",
    "parseKeepAliveTimeout",
    "Timeouts",
    "SendUpstream",
    "SendDownstream",
    "ResponseHeadReady",
    "Observe",
    "RequestSent",
    "ResponseDone",
    "Upgrade",
    "Retry",
    "Fail",
    "Abort",
    "SetTimer",
    "Action",
    "DEFAULT_MAX_INTERIM",
]

#: Interim (1xx) responses relayed for one request before it fails with 502.
DEFAULT_MAX_INTERIM = 10

_HTTP11 = b"HTTP/1.1"
_IDEMPOTENT = frozenset([b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"])
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_KEEP_ALIVE = b"keep-alive"
#: Longest idle time a server's C{Keep-Alive: timeout=} is believed up to
#: (seconds; a larger value changes nothing: the pool's own bound is less).
_MAX_KEEP_ALIVE_HINT = 86400


def parseKeepAliveTimeout(headers: Sequence[Tuple[bytes, bytes]]) -> Optional[int]:
    """
    The C{timeout} parameter of a response's C{Keep-Alive} field (RFC 2068
    section 19.7.1.1, as Node, Apache and others send it: C{Keep-Alive:
    timeout=5, max=100}): the seconds the server keeps an idle connection
    open.  The first valid one counts; L{None} when there is none.
    """
    for name, value in headers:
        if len(name) != 10 or name.lower() != _KEEP_ALIVE:
            continue
        for param in value.split(b","):
            key, eq, number = param.partition(b"=")
            if eq and key.strip().lower() == b"timeout":
                number = number.strip().strip(b'"')
                if number.isdigit() and len(number) <= 9:
                    return min(int(number), _MAX_KEEP_ALIVE_HINT)
    return None

_Reader = Union[LengthReader, ChunkedReader, None]

#: The readers' class default: a name rather than C{None} itself, which
#: mypyc drops as the default of an attribute typed with a union of several
#: classes and C{None} (compiled, the attribute would start unset).
_NO_READER: Final = None


class SendUpstream:
    """
    Write C{data} to the upstream connection.
    """

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class SendDownstream:
    """
    Write C{data} to the client.
    """

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class ResponseHeadReady:
    """
    The final response head arrived.  The connection layer builds the
    client's head from it (C{chunked}: relay the body chunked as received)
    and writes it followed by C{body}, the first body bytes.
    """

    __slots__ = ("head", "framing", "chunked", "body")

    def __init__(self, head: ResponseHead, framing: Framing, chunked: bool, body: bytes) -> None:
        self.head = head
        self.framing = framing
        self.chunked = chunked
        self.body = body


class Observe:
    """
    Decoded body bytes for an observing hook: C{upstream} is true for the
    request body (going upstream), false for the response body.
    """

    __slots__ = ("upstream", "data")

    def __init__(self, upstream: bool, data: bytes) -> None:
        self.upstream = upstream
        self.data = data


class RequestSent:
    """
    The whole request has gone upstream; C{leftover} followed its body on
    the client connection (the next pipelined request).
    """

    __slots__ = ("leftover",)

    def __init__(self, leftover: bytes) -> None:
        self.leftover = leftover


class ResponseDone:
    """
    The response is complete.  C{reusable}: the upstream connection may
    serve another request; C{closeClient}: the client connection must close
    after it (the request body was not read to its end).
    """

    __slots__ = ("reusable", "closeClient")

    def __init__(self, reusable: bool, closeClient: bool) -> None:
        self.reusable = reusable
        self.closeClient = closeClient


class Upgrade:
    """
    The upstream switched protocols (C{101}): C{rest} followed its head.
    """

    __slots__ = ("head", "rest")

    def __init__(self, head: ResponseHead, rest: bytes) -> None:
        self.head = head
        self.rest = rest


class Retry:
    """
    The reused upstream connection closed before answering an idempotent
    request without a body: send it again on a fresh connection.
    """

    __slots__ = ()


class Fail:
    """
    Answer the client C{status} with C{reason} (no final head was sent).
    """

    __slots__ = ("status", "reason")

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason


class Abort:
    """
    Close both connections: the client already has part of a response.
    C{status} is the response status sent, for the access log.
    """

    __slots__ = ("status", "reason")

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason


class SetTimer:
    """
    Arm the exchange's timer: C{kind} (C{"connect"}, C{"response"},
    C{"idle"}) after C{seconds}; C{kind} L{None} cancels it.
    """

    __slots__ = ("kind", "seconds")

    def __init__(self, kind: Optional[str], seconds: float) -> None:
        self.kind = kind
        self.seconds = seconds


#: Shared values for the most common actions (actions are never mutated).
_SENT_NOTHING_MORE = RequestSent(b"")
_DONE_REUSABLE = ResponseDone(True, False)
_DONE_NOT_REUSABLE = ResponseDone(False, False)
_DONE_CLOSE = ResponseDone(False, True)

Action = Union[
    SendUpstream, SendDownstream, ResponseHeadReady, Observe, RequestSent, ResponseDone, Upgrade, Retry, Fail, Abort, SetTimer
]


#: The one "cancel the timer" action.
CANCEL_TIMER = SetTimer(None, 0.0)


class Timeouts:
    """
    The seconds each exchange timer runs (0 disables C{response} and
    C{idle}), and the L{SetTimer} action that arms each (made once per
    configuration: actions are immutable values, shared by every exchange).

    @ivar connect: deciding and dialling (all attempts together).
    @ivar response: from the last request byte sent to the response head.
    @ivar idle: no byte moved in either direction.
    @ivar actions: the L{SetTimer} for each timer kind (and L{None}).
    """

    __slots__ = ("connect", "response", "idle", "actions")

    def __init__(self, connect: float, response: float, idle: float) -> None:
        self.connect = connect
        self.response = response
        self.idle = idle
        check = max(idle / 4.0, 0.01) if idle else 0.0
        self.actions: Dict[Optional[str], SetTimer] = {
            None: CANCEL_TIMER,
            "connect": SetTimer("connect", connect) if connect else CANCEL_TIMER,
            "response": SetTimer("response", response) if response else CANCEL_TIMER,
            # The idle timer is a progress check every quarter timeout.
            "idle": SetTimer("idle", check) if check else CANCEL_TIMER,
        }


class Exchange:
    """
    One request and its response, between the client and one upstream.

    @ivar head: the request head as received.
    @ivar requestState: the request side's state.
    @ivar responseState: the response side's state.
    @ivar response: the final response head, once received.
    @ivar interim: how many 1xx responses were received.
    @ivar bytesUp: request body bytes sent upstream.
    @ivar bytesDown: response body bytes sent to the client.
    @ivar reusable: whether the upstream connection may be reused.
    @ivar timer: the kind of the timer that applies now, or L{None}.
    @ivar resendable: the request may be sent again should a pooled
        connection close before answering: an idempotent method and no
        body (L{retryable} says whether it still may).
    @ivar keepAliveTimeout: the idle seconds the upstream said (in
        C{Keep-Alive: timeout=N}, beside C{Connection: keep-alive}) it
        keeps this connection open, or L{None}.
    """

    # No __slots__: the per-request state starts as these class defaults,
    # so making an exchange stores only what the constructor is given.  The
    # two states are set by the constructor instead: CPython 3.11 does not
    # specialize reads of a name whose class-level value is an instance of a
    # Python class (a State).
    requestState: State
    responseState: State
    response: Optional[ResponseHead] = None
    #: The C{Connection} tokens of L{response}.
    responseTokens: FrozenSet[bytes] = frozenset()
    interim = 0
    bytesUp = 0
    bytesDown = 0
    reusable = True
    retried = False
    received = False
    timer: Optional[str] = None
    keepAliveTimeout: Optional[int] = None
    _reqReader: _Reader = _NO_READER
    _reqDecoder: Optional[ChunkedDecoder] = None
    _respReader: _Reader = _NO_READER
    _respDecoder: Optional[ChunkedDecoder] = None
    _headReader: Optional[HeadReader] = None
    _mark = -1
    _markSince = 0.0

    def __init__(
        self,
        head: RequestHead,
        framing: Framing,
        timeouts: Timeouts,
        maxResponseHeadSize: int = 65536,
        maxInterim: int = DEFAULT_MAX_INTERIM,
        pseudonym: bytes = b"txproxy",
        upgrading: bool = False,
        observeRequest: bool = False,
        observeResponse: bool = False,
    ) -> None:
        self.head = head
        self.framing = framing
        self.timeouts = timeouts
        self.maxInterim = maxInterim
        self.maxResponseHeadSize = maxResponseHeadSize
        self.pseudonym = pseudonym
        self.upgrading = upgrading
        self.observeRequest = observeRequest
        self.observeResponse = observeResponse
        self._http11 = head.version == _HTTP11
        self.requestState = DECIDING
        self.responseState = AWAITING_HEAD
        self.reusable = True
        self._headReader = None
        self.resendable = head.method in _IDEMPOTENT and framing.kind == "none"

    # -- state and timers

    def _setRequest(self, state: State) -> None:
        if state not in REQUEST_TRANSITIONS[self.requestState]:
            transition(REQUEST_TRANSITIONS, self.requestState, state)  # raises
        self.requestState = state

    def _setResponse(self, state: State) -> None:
        if state not in RESPONSE_TRANSITIONS[self.responseState]:
            transition(RESPONSE_TRANSITIONS, self.responseState, state)  # raises
        self.responseState = state

    def _timerAction(self, actions: List[Action]) -> None:
        """
        Append a L{SetTimer} when the kind of timer that applies changed.
        """
        kind = TIMERS[self.requestState, self.responseState]
        if kind == self.timer:
            return
        self.timer = kind
        if kind == "idle":
            self._mark = -1
        actions.append(self.timeouts.actions[kind])

    @property
    def retryable(self) -> bool:
        """
        Whether this request may still be sent again on a fresh connection
        should a pooled one close before answering: an idempotent method,
        no body (none was sent, none must be kept), and not retried yet
        (RFC 9110 section 9.2.2; at most one retry).  The connection layer
        checks a pooled connection before it sends a request that is not
        retryable (L{txproxy.upstream.UpstreamHTTPProtocol.closedByPeer}):
        such a request has no second chance.
        """
        return not self.retried and self.resendable

    @property
    def ended(self) -> bool:
        """
        Whether the exchange is over (responded, upgraded or failed).
        """
        response = self.responseState
        return response is RESPONDED or response is UPGRADED or response is FAILED

    def start(self) -> List[Action]:
        """
        Arm the C{connect} timer, which covers policy, routing, hooks and the
        dial: call it once the request head was received, or at the latest
        before the first wait (a connection layer may skip the timer when
        the request is on an upstream connection before control returns to
        the event loop: nothing can expire in between).
        """
        actions: List[Action] = []
        if self.requestState is DECIDING or self.requestState is CONNECTING:
            self._timerAction(actions)
        return actions

    def connecting(self) -> None:
        """
        Decided: an upstream connection is being taken from the pool or
        dialled (the C{connect} timer goes on).
        """
        self._setRequest(CONNECTING)

    def timerFired(self, now: float) -> List[Action]:
        """
        The timer last set by a L{SetTimer} expired at C{now}.
        """
        kind = self.timer
        actions: List[Action] = []
        if kind == "connect":
            self.timer = None
            self._fail(actions, 504, "timed out connecting to the destination")
        elif kind == "response":
            self.timer = None
            self.reusable = False
            self._fail(actions, 504, "the upstream did not answer in time")
        elif kind == "idle":
            mark = self.bytesUp + self.bytesDown
            if mark != self._mark:
                self._mark = mark
                self._markSince = now
            elif now - self._markSince >= self.timeouts.idle:
                self.timer = None
                self.reusable = False
                if self.responseState is AWAITING_HEAD:
                    self._fail(actions, 408, "the request body stalled")
                else:
                    self._abort(actions, "idle timeout")
                return actions
            actions.append(self.timeouts.actions["idle"])
        return actions

    def _fail(self, actions: List[Action], status: int, reason: str) -> None:
        if self.responseState is RECEIVING_BODY:
            self._abort(actions, reason)
            return
        self.requestState = FAILED
        self.responseState = FAILED
        self.reusable = False
        self._reqReader = None
        self.timer = None
        actions.append(Fail(status, reason))

    def _abort(self, actions: List[Action], reason: str) -> None:
        status = self.response.status if self.response is not None else 502
        self.requestState = FAILED
        self.responseState = FAILED
        self.reusable = False
        self._reqReader = None
        self.timer = None
        actions.append(Abort(status, reason))

    def fail(self, status: int, reason: str) -> List[Action]:
        """
        Something outside the exchange failed it (a hook, the dial).
        """
        actions: List[Action] = []
        if not self.ended:
            self._fail(actions, status, reason)
        return actions

    # -- the request

    def upstreamReady(self, pending: bytes) -> List[Action]:
        """
        The request head was written to an upstream connection; C{pending}
        are the client bytes received after the head so far.
        """
        framing = self.framing
        actions: List[Action] = []
        kind = framing.kind
        if kind == "none":
            self._setRequest(SENT)
            # (CONNECTING, AWAITING_HEAD) -> (SENT, AWAITING_HEAD): the
            # response timer, unless the timer is already that.
            self._timerAction(actions)
            actions.append(RequestSent(pending) if pending else _SENT_NOTHING_MORE)
            return actions
        if kind == "length":
            self._reqReader = LengthReader(framing.length or 0)
        else:
            self._reqReader = ChunkedReader(400)
            if self.observeRequest:
                self._reqDecoder = ChunkedDecoder(400)
        self._setRequest(SENDING_BODY)
        self._timerAction(actions)
        if pending:
            self._requestData(pending, actions)
        if self.requestState is SENDING_BODY and self._reqReader is not None and self._reqReader.ended:
            self._requestEnded(actions)
        return actions

    def requestData(self, data: bytes) -> List[Action]:
        """
        Request body bytes (and maybe what follows it) from the client.
        """
        actions: List[Action] = []
        self._requestData(data, actions)
        return actions

    def _requestData(self, data: bytes, actions: List[Action]) -> None:
        reader = self._reqReader
        if reader is None:
            # No body is being read (the exchange ended, or failed): the
            # connection layer keeps bytes past the body itself.
            return
        try:
            body = reader.feed(data)
        except HTTPError as e:
            self._reqReader = None
            self.reusable = False
            if self.responseState is RECEIVING_BODY or self.responseState is RESPONDED:
                self._abort(actions, e.reason)
            else:
                self._fail(actions, e.status, e.reason)
            return
        if body:
            self.bytesUp += len(body)
            actions.append(SendUpstream(body))
            if self.observeRequest:
                decoder = self._reqDecoder
                decoded = decoder.feed(body) if decoder is not None else body
                if decoded:
                    actions.append(Observe(True, decoded))
        if reader.ended:
            self._requestEnded(actions)

    def _requestEnded(self, actions: List[Action]) -> None:
        reader = self._reqReader
        assert reader is not None
        self._reqReader = None
        if self.requestState is SENDING_BODY:
            self._setRequest(SENT)
            self._timerAction(actions)
        actions.append(RequestSent(reader.leftover))

    def clientEnded(self) -> List[Action]:
        """
        The client half-closed.  Before the end of its request body, that
        request can never complete: C{400} (or, if a response is already
        streaming, let it finish and close).
        """
        actions: List[Action] = []
        if self.requestState is SENDING_BODY and self.responseState is AWAITING_HEAD:
            self._fail(actions, 400, "the client closed before the end of the request body")
        return actions

    # -- the response

    def responseData(self, data: bytes) -> List[Action]:
        """
        Bytes from the upstream.
        """
        actions: List[Action] = []
        state = self.responseState
        if state is RECEIVING_BODY:
            # The hot path: the timer changes only at the end, which
            # _responded handles.
            self._responseBody(data, actions)
        elif state is AWAITING_HEAD:
            self.received = True
            self._responseHeads(data, actions)
            if self.responseState is RECEIVING_BODY:
                self._timerAction(actions)
        elif data:
            # After the response, or after a failure: unsolicited.
            self.reusable = False
        return actions

    def _responseHeads(self, data: bytes, actions: List[Action]) -> None:
        # A loop, not recursion: each pass takes one head off the front.
        while True:
            reader = self._headReader
            if reader is None:
                # The usual case: a whole head in one piece, no reader.
                # (Not with leading empty lines: HeadReader drops those.)
                end = findHeadEnd(data) if not data.startswith(b"\r\n") else -1
                if 0 <= end <= self.maxResponseHeadSize:
                    headBytes: Optional[bytes] = data[:end]
                    rest = data[end:]
                else:
                    reader = self._headReader = HeadReader(self.maxResponseHeadSize, 502)
            if reader is not None:
                try:
                    headBytes = reader.feed(data)
                except HTTPError as e:
                    self._badResponse(actions, e.reason)
                    return
                if headBytes is None:
                    return
                self._headReader = None
                rest = reader.leftover
            assert headBytes is not None
            try:
                resp = parseResponseHead(headBytes)
            except HTTPError as e:
                self._badResponse(actions, e.reason)
                return
            status = resp.status
            if status >= 200:
                self._finalHead(resp, rest, actions, headBytes)
                return
            if status == 101:
                if self.upgrading:
                    self._setResponse(UPGRADED)
                    self.requestState = UPGRADED
                    self.timer = None
                    actions.append(Upgrade(resp, rest))
                else:
                    self._badResponse(actions, "unexpected 101 Switching Protocols")
                return
            self.interim += 1
            if self.interim > self.maxInterim:
                self._badResponse(actions, f"more than {self.maxInterim} interim responses")
                return
            if self._http11:
                actions.append(SendDownstream(self._interimHead(resp)))
            if not rest:
                return
            data = rest

    def _interimHead(self, resp: ResponseHead) -> bytes:
        if resp.status == 100:
            # The common case, as every client expects it: bare.
            return _CONTINUE
        headers, _, _ = endToEnd(resp.headers)
        headers.append((b"Via", resp.version[5:] + b" " + self.pseudonym))
        return serializeTrustedHead(b"HTTP/1.1 %d %s\r\n" % (resp.status, resp.reason), headers)

    def _finalHead(self, resp: ResponseHead, rest: bytes, actions: List[Action], headBytes: bytes) -> None:
        try:
            framing = responseFraming(self.head.method, resp)
        except HTTPError as e:
            self._badResponse(actions, e.reason)
            return
        self.response = resp
        tokens = self.responseTokens = _connectionTokens(resp.headers)
        if resp.version == _HTTP11:
            if b"close" in tokens:
                self.reusable = False
        elif b"keep-alive" not in tokens or b"close" in tokens:
            self.reusable = False
        if b"keep-alive" in tokens and self.reusable and headBytes.lower().find(b"\nkeep-alive:") >= 0:
            # (Only then: most servers send neither field, and nginx sends
            # "Connection: keep-alive" alone; one search of the head costs
            # less than a pass over its fields.  find(), not "in": on
            # CPython "bytes in bytes" first tries the operand as an
            # integer and throws the TypeError away.)
            self.keepAliveTimeout = parseKeepAliveTimeout(resp.headers)
        kind = framing.kind
        if kind == "length" and len(rest) == framing.length:
            # The usual small response: the whole body came with the head
            # (no reader needed).
            self._setResponse(RESPONDED)
            self.bytesDown += len(rest)
            actions.append(ResponseHeadReady(resp, framing, False, rest))
            if rest and self.observeResponse:
                self._observeResponse(rest, actions)
            self._responded(actions)
            return
        chunked = False
        reader: _Reader = None
        if kind == "chunked":
            if self._http11 and framing.codings == (b"chunked",):
                reader = ChunkedReader(502)
                chunked = True
                if self.observeResponse:
                    self._respDecoder = ChunkedDecoder(502)
            else:
                # An HTTP/1.0 client cannot read chunked: decode and let the
                # close delimit it (the connection layer closes).
                reader = ChunkedDecoder(502)
        elif kind == "length":
            reader = LengthReader(framing.length or 0)
        elif kind == "close":
            self.reusable = False
        self._respReader = reader
        if kind == "none":
            if rest:
                self.reusable = False
            self._setResponse(RESPONDED)
            actions.append(ResponseHeadReady(resp, framing, False, b""))
            self._responded(actions)
            return
        if reader is None:
            body = rest
        else:
            try:
                body = reader.feed(rest) if rest else b""
            except HTTPError as e:
                # Still AWAITING_HEAD: the client has nothing yet, so 502.
                self._badResponse(actions, e.reason)
                return
        self._setResponse(RECEIVING_BODY)
        self.bytesDown += len(body)
        actions.append(ResponseHeadReady(resp, framing, chunked, body))
        if body and self.observeResponse:
            self._observeResponse(body, actions)
        if reader is not None and reader.ended:
            if reader.leftover:
                self.reusable = False
            self._setResponse(RESPONDED)
            self._responded(actions)

    def _responseBody(self, data: bytes, actions: List[Action]) -> None:
        reader = self._respReader
        if reader is None:
            # Close-delimited.
            self.bytesDown += len(data)
            actions.append(SendDownstream(data))
            if self.observeResponse:
                self._observeResponse(data, actions)
            return
        try:
            body = reader.feed(data)
        except HTTPError as e:
            self._abort(actions, f"bad response body from the upstream: {e.reason}")
            return
        if body:
            self.bytesDown += len(body)
            actions.append(SendDownstream(body))
            if self.observeResponse:
                self._observeResponse(body, actions)
        if reader.ended:
            if reader.leftover:
                self.reusable = False
            self._setResponse(RESPONDED)
            self._responded(actions)

    def _observeResponse(self, body: bytes, actions: List[Action]) -> None:
        decoder = self._respDecoder
        decoded = decoder.feed(body) if decoder is not None else body
        if decoded:
            actions.append(Observe(False, decoded))

    def _responded(self, actions: List[Action]) -> None:
        # The exchange's timer ends with it: a terminal action implies it.
        self.timer = None
        if self.requestState is SENDING_BODY:
            # The response ended before the request body: the upstream may
            # not have read the rest, and the client's next bytes cannot be
            # told from this body: close both after this response.
            self.reusable = False
            self._reqReader = None
            self.requestState = FAILED
            actions.append(_DONE_CLOSE)
        elif self.requestState is SENT:
            actions.append(_DONE_REUSABLE if self.reusable else _DONE_NOT_REUSABLE)
        else:
            # Answered before the request was even sent (cannot happen on
            # a connection we wrote the head to first): treat as broken.
            self.reusable = False
            actions.append(_DONE_CLOSE)

    def _badResponse(self, actions: List[Action], reason: str) -> None:
        self.reusable = False
        if self.responseState is RECEIVING_BODY:
            self._abort(actions, f"bad response from the upstream: {reason}")
        else:
            self._fail(actions, 502, f"bad response from the upstream: {reason}")

    def upstreamEnded(self, reused: bool) -> List[Action]:
        """
        The upstream connection closed (or half-closed) while serving this
        exchange.  C{reused}: it came from the pool.
        """
        actions: List[Action] = []
        state = self.responseState
        self.reusable = False
        if state is RECEIVING_BODY and self._respReader is None:
            # Close-delimited: this is the end of the body.
            self._setResponse(RESPONDED)
            self._responded(actions)
            return actions
        if state is not AWAITING_HEAD and state is not RECEIVING_BODY:
            return actions
        if state is AWAITING_HEAD:
            if not self.received and reused and self.retryable:
                self.retried = True
                self.requestState = CONNECTING
                self.timer = None
                # The connect timer covers the new dial: arm it before the
                # Retry, which ends the list (the layer stops there).
                self._timerAction(actions)
                actions.append(Retry())
                return actions
            if self._headReader is not None:
                self._fail(actions, 502, "the upstream sent an incomplete response head")
            elif self.interim:
                self._fail(actions, 502, "the upstream closed the connection before its final response")
            else:
                self._fail(actions, 502, "the upstream closed the connection before answering")
            return actions
        self._abort(actions, "upstream closed mid-body")
        return actions
