# -*- test-case-name: tests.test_exchange -*-
"""
Tests for L{txproxy.exchange}: the sans-IO exchange (one request and its
response, events in and actions out) and its state and timer tables.

No reactor and no transport: each test replays a script of events and checks
the actions.  Every list of actions an event returns goes through
L{assertTerminalLast} (see L{Driver}).
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple, Type

from twisted.trial.unittest import SynchronousTestCase

import txproxy.exchange
from txproxy.exchange import (
    AWAITING_HEAD,
    CLOSED,
    CLOSING,
    CONNECTING,
    CONNECTION_TIMERS,
    CONNECTION_TRANSITIONS,
    DECIDING,
    DEFAULT_MAX_INTERIM,
    EXCHANGE,
    FAILED,
    H2,
    HEAD,
    KEEPALIVE,
    LINGER,
    RECEIVING_BODY,
    RESPONDED,
    SENDING_BODY,
    SENT,
    TUNNEL,
    UPGRADED,
    WAIT,
    Abort,
    Action,
    Exchange,
    Fail,
    LocalProtocolError,
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
    _exchange,
    _state,
    timerFor,
    transition,
)
from txproxy.exchange._exchange import parseKeepAliveTimeout
from txproxy.exchange._state import REQUEST_TRANSITIONS, RESPONSE_TRANSITIONS
from txproxy.http import ResponseHead, parseRequestHead, requestFraming

# -- requests (heads only, as the connection layer parsed them)

GET = b"GET http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\n\r\n"
GET10 = b"GET http://origin.test/ HTTP/1.0\r\nHost: origin.test\r\n\r\n"
HEAD_REQUEST = b"HEAD http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\n\r\n"
POST = (
    b"POST http://origin.test/up HTTP/1.1\r\nHost: origin.test\r\n"
    b"Content-Length: 11\r\n\r\n"
)
POST_BODY = b"hello world"
POST_CHUNKED = (
    b"POST http://origin.test/up HTTP/1.1\r\nHost: origin.test\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)
CHUNKED_BODY = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
DECODED_BODY = b"hello world"
UPGRADE_REQUEST = (
    b"GET http://origin.test/ws HTTP/1.1\r\nHost: origin.test\r\n"
    b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
)
NEXT = b"GET http://origin.test/next HTTP/1.1\r\nHost: origin.test\r\n\r\n"

# -- responses

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
OK_CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
EARLY_HINTS = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\nKeep-Alive: x\r\n\r\n"
EARLY_HINTS_RELAYED = (
    b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\nVia: 1.1 txproxy\r\n\r\n"
)
SWITCHING = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"

CONNECT_SECONDS = 30.0
RESPONSE_SECONDS = 60.0
IDLE_SECONDS = 40.0
#: The idle timer is a progress check every quarter of the idle timeout.
IDLE_CHECK = IDLE_SECONDS / 4

TERMINAL: Tuple[Type[Any], ...] = (ResponseDone, Fail, Abort, Upgrade, Retry)


def makeTimeouts(
    connect: float = CONNECT_SECONDS, response: float = RESPONSE_SECONDS, idle: float = IDLE_SECONDS
) -> Timeouts:
    """
    The exchange's timeouts, the test defaults unless given.
    """
    return Timeouts(connect, response, idle)


def makeExchange(raw: bytes, timeouts: Optional[Timeouts] = None, **kwargs: Any) -> Exchange:
    """
    An L{Exchange} for the request head C{raw}, parsed and framed as the
    connection layer does it.
    """
    head = parseRequestHead(raw)
    return Exchange(
        head, requestFraming(head), timeouts if timeouts is not None else makeTimeouts(),
        **kwargs,
    )


def describe(action: Action) -> str:
    """
    A readable form of C{action} (actions have no C{repr} of their own).
    """
    name = type(action).__name__
    if isinstance(action, ResponseHeadReady):
        return (
            f"{name}({action.head.status}, {action.framing.kind}, "
            f"chunked={action.chunked}, body={action.body!r})"
        )
    if isinstance(action, Upgrade):
        return f"{name}({action.head.status}, rest={action.rest!r})"
    # The pure classes name their fields in __slots__; compiled with mypyc
    # they are native classes, which list them in __mypyc_attrs__ instead.
    names = getattr(type(action), "__slots__", None)
    if names is None:
        names = [n for n in type(action).__mypyc_attrs__ if n != "__dict__"]
    fields = ", ".join(f"{slot}={getattr(action, slot)!r}" for slot in names)
    return f"{name}({fields})"


def kinds(actions: Sequence[Action]) -> List[str]:
    """
    The type names of C{actions}, in order.
    """
    return [type(action).__name__ for action in actions]


def significant(actions: Sequence[Action]) -> List[str]:
    """
    The type names of C{actions} other than L{SetTimer}: where a timer
    change falls among non-terminal actions does not matter to the
    connection layer.
    """
    return [type(action).__name__ for action in actions if not isinstance(action, SetTimer)]


def assertTerminalLast(case: SynchronousTestCase, actions: Sequence[Action]) -> None:
    """
    A terminal action (L{ResponseDone}, L{Fail}, L{Abort}, L{Upgrade},
    L{Retry}) is the last of the list it is in: the connection layer stops
    carrying out a list at the first one.
    """
    last = len(actions) - 1
    for index, action in enumerate(actions):
        if isinstance(action, TERMINAL):
            case.assertEqual(
                index,
                last,
                f"{describe(action)} is not last in {[describe(a) for a in actions]}",
            )


def summarize(actions: Sequence[Action]) -> Tuple[bytes, List[str], bytes]:
    """
    What a split of the input must not change: the bytes for the client,
    the kinds of action with consecutive downstream bytes (and a head's
    body) merged into one, and the observed response body.  L{SetTimer} is
    left out (a head and its whole body in one piece never need the idle
    timer).

    @return: C{(downstream, kinds, observed)}.
    """
    down: List[bytes] = []
    observed: List[bytes] = []
    names: List[str] = []
    for action in actions:
        if isinstance(action, SetTimer):
            continue
        if isinstance(action, Observe):
            observed.append(action.data)
        elif isinstance(action, ResponseHeadReady):
            down.append(action.body)
            names.append(
                f"head {action.head.status} {action.framing.kind} chunked={action.chunked}"
            )
        elif isinstance(action, SendDownstream):
            down.append(action.data)
            if not names or not (names[-1] == "data" or names[-1].startswith("head ")):
                names.append("data")
        else:
            names.append(describe(action))
    return b"".join(down), names, b"".join(observed)


class Driver:
    """
    An exchange, its events called as the connection layer calls them, and
    every action they returned (each list checked by L{assertTerminalLast}).

    @ivar actions: every action returned so far, in order.
    @ivar pipelined: the client bytes past the request body, as the
        connection layer keeps them (L{RequestSent.leftover}, and the
        bytes received once the body is complete).
    """

    def __init__(self, case: SynchronousTestCase, ex: Exchange) -> None:
        self.case = case
        self.ex = ex
        self.actions: List[Action] = []
        self.pipelined = b""

    def _record(self, actions: List[Action]) -> List[Action]:
        assertTerminalLast(self.case, actions)
        timers = [a for a in actions if isinstance(a, SetTimer)]
        if timers and not isinstance(actions[-1], TERMINAL):
            # The timer the layer armed last is the one the exchange runs
            # (or none, when that one is disabled).
            self.case.assertIn(timers[-1].kind, (self.ex.timer, None))
        for action in actions:
            if isinstance(action, RequestSent):
                self.pipelined += action.leftover
        self.actions.extend(actions)
        return actions

    def start(self) -> List[Action]:
        return self._record(self.ex.start())

    def connecting(self) -> List[Action]:
        self.ex.connecting()  # a transition only: the connect timer goes on
        return self._record([])

    def upstreamReady(self, pending: bytes = b"") -> List[Action]:
        return self._record(self.ex.upstreamReady(pending))

    def ready(self, pending: bytes = b"") -> List[Action]:
        """
        Start, decide, and write the head upstream: the actions of the last.
        """
        self.start()
        self.connecting()
        return self.upstreamReady(pending)

    def requestData(self, data: bytes) -> List[Action]:
        return self._record(self.ex.requestData(data))

    def clientData(self, data: bytes) -> List[Action]:
        """
        Client bytes, routed as L{txproxy.httpproxy} routes them: to the
        exchange while it reads a body, else kept as pipelined input.
        """
        if self.ex.requestState is SENDING_BODY:
            return self.requestData(data)
        self.pipelined += data
        return []

    def clientEnded(self) -> List[Action]:
        return self._record(self.ex.clientEnded())

    def responseData(self, data: bytes) -> List[Action]:
        return self._record(self.ex.responseData(data))

    def upstreamEnded(self, reused: bool) -> List[Action]:
        return self._record(self.ex.upstreamEnded(reused))

    def timerFired(self, now: float) -> List[Action]:
        return self._record(self.ex.timerFired(now))

    def fail(self, status: int, reason: str) -> List[Action]:
        return self._record(self.ex.fail(status, reason))


def bytewise(data: bytes) -> List[bytes]:
    """
    C{data} one byte at a time.
    """
    return [data[i : i + 1] for i in range(len(data))]


class ExchangeTestCase(SynchronousTestCase):
    """
    Helpers: drive an exchange and check its actions.
    """

    def driver(self, raw: bytes = GET, **kwargs: Any) -> Driver:
        """
        A L{Driver} for an exchange of the request head C{raw}.
        """
        return Driver(self, makeExchange(raw, **kwargs))

    def respond(
        self,
        request: bytes,
        chunks: Sequence[bytes],
        end: bool = False,
        **kwargs: Any,
    ) -> Tuple[Driver, List[Action]]:
        """
        Send C{request} upstream, feed the response in C{chunks}, then (with
        C{end}) close the upstream.

        @return: the driver and the actions of the response.
        """
        d = self.driver(request, **kwargs)
        d.ready()
        mark = len(d.actions)
        for chunk in chunks:
            if chunk:
                d.responseData(chunk)
        if end:
            d.upstreamEnded(False)
        return d, d.actions[mark:]

    def assertSplitsAgree(
        self, request: bytes, response: bytes, end: bool = False, **kwargs: Any
    ) -> Tuple[bytes, List[str], bytes]:
        """
        Feed C{response} whole, split in two at every byte, and one byte at a
        time: the bytes for the client, the kinds of action and the observed
        body never change.

        @return: their summary (see L{summarize}).
        """
        whole = summarize(self.respond(request, [response], end, **kwargs)[1])
        for i in range(1, len(response)):
            split = summarize(
                self.respond(request, [response[:i], response[i:]], end, **kwargs)[1]
            )
            self.assertEqual(split, whole, f"split at {i}")
        self.assertEqual(
            summarize(self.respond(request, bytewise(response), end, **kwargs)[1]), whole
        )
        return whole

    def assertAction(self, action: Action, expected: Type[Any], **fields: Any) -> None:
        """
        C{action} is an C{expected} with these C{fields}.
        """
        self.assertIsInstance(action, expected, describe(action))
        for name, value in fields.items():
            self.assertEqual(getattr(action, name), value, f"{name} of {describe(action)}")

    def assertTimer(self, action: Action, kind: Optional[str], seconds: float = 0.0) -> None:
        """
        C{action} sets the timer C{kind} to C{seconds} (or cancels it).
        """
        self.assertAction(action, SetTimer, kind=kind)
        if kind is not None:
            self.assertEqual(action.seconds, seconds)  # type: ignore[union-attr]

    def timers(self, actions: Sequence[Action]) -> List[Tuple[Optional[str], float]]:
        """
        The L{SetTimer} actions in C{actions}, as C{(kind, seconds)}.
        """
        return [(a.kind, a.seconds) for a in actions if isinstance(a, SetTimer)]


class PublicNamesTests(SynchronousTestCase):
    """
    L{txproxy.exchange} re-exports the private modules' objects.
    """

    def test_publicNamesAreThePrivateObjects(self) -> None:
        """
        Every name in C{txproxy.exchange.__all__} is the very object of that
        name in C{_exchange} or C{_state}.
        """
        for name in txproxy.exchange.__all__:
            private = getattr(_exchange, name, None)
            if private is None:
                private = getattr(_state, name)
            self.assertIs(getattr(txproxy.exchange, name), private, name)


# The exchange's states, by side.
REQUEST_STATES = [DECIDING, CONNECTING, SENDING_BODY, SENT, UPGRADED, FAILED]
RESPONSE_STATES = [AWAITING_HEAD, RECEIVING_BODY, RESPONDED, UPGRADED, FAILED]
CONNECTION_STATES = [HEAD, KEEPALIVE, WAIT, EXCHANGE, TUNNEL, H2, LINGER, CLOSING, CLOSED]


class StateTableTests(SynchronousTestCase):
    """
    The transition tables, L{transition} and L{timerFor}.
    """

    tables = [
        ("request", REQUEST_TRANSITIONS, REQUEST_STATES),
        ("response", RESPONSE_TRANSITIONS, RESPONSE_STATES),
        ("connection", CONNECTION_TRANSITIONS, CONNECTION_STATES),
    ]

    def test_tablesCoverTheirStates(self) -> None:
        """
        Each table has a row for every state of its side, and moves only to
        states of that side.
        """
        for name, table, states in self.tables:
            self.assertEqual(set(table), set(states), name)
            for current, targets in table.items():
                self.assertLessEqual(set(targets), set(states), f"{name}: {current!r}")

    def test_legalTransitionsAccepted(self) -> None:
        """
        Every move a table lists is accepted, and returns the new state.
        """
        for name, table, _ in self.tables:
            for current, targets in table.items():
                for new in targets:
                    self.assertIs(transition(table, current, new), new, f"{name}: {current!r}")

    def test_sameStateAccepted(self) -> None:
        """
        Staying in a state is never an error, even in a final one.
        """
        for _, table, states in self.tables:
            for state in states:
                self.assertIs(transition(table, state, state), state)

    def test_illegalTransitionsRaise(self) -> None:
        """
        Every move a table does not list raises L{LocalProtocolError}, whose
        message names both states.
        """
        count = 0
        for name, table, states in self.tables:
            for current in states:
                for new in states:
                    if new is current or new in table[current]:
                        continue
                    with self.assertRaises(LocalProtocolError) as raised:
                        transition(table, current, new)
                    self.assertIn(f"{current!r} -> {new!r}", str(raised.exception))
                    count += 1
        self.assertTrue(count)
        self.assertRaises(LocalProtocolError, transition, RESPONSE_TRANSITIONS, RESPONDED, FAILED)

    def test_finalStatesHaveNoMoves(self) -> None:
        """
        Upgraded, failed, responded and closed are final.
        """
        self.assertEqual(REQUEST_TRANSITIONS[UPGRADED], frozenset())
        self.assertEqual(REQUEST_TRANSITIONS[FAILED], frozenset())
        self.assertEqual(RESPONSE_TRANSITIONS[RESPONDED], frozenset())
        self.assertEqual(RESPONSE_TRANSITIONS[UPGRADED], frozenset())
        self.assertEqual(RESPONSE_TRANSITIONS[FAILED], frozenset())
        self.assertEqual(CONNECTION_TRANSITIONS[CLOSED], frozenset())

    def test_stateRepr(self) -> None:
        """
        A state shows as its name.
        """
        self.assertEqual(repr(SENDING_BODY), "SENDING_BODY")
        self.assertEqual(repr(State("X")), "X")

    def test_timerForEveryCombination(self) -> None:
        """
        L{timerFor} follows the table in L{txproxy.exchange._state}'s
        docstring for every (request, response) pair: C{connect} while
        deciding or connecting, C{idle} while the body goes up, C{response}
        once it is sent, C{idle} while the response body comes down, and no
        timer once the exchange ended.
        """
        expected = {
            (DECIDING, AWAITING_HEAD): "connect",
            (CONNECTING, AWAITING_HEAD): "connect",
            (SENDING_BODY, AWAITING_HEAD): "idle",
            (SENT, AWAITING_HEAD): "response",
        }
        for request in REQUEST_STATES:
            expected[request, RECEIVING_BODY] = "idle"
        for request in REQUEST_STATES:
            for response in RESPONSE_STATES:
                self.assertEqual(
                    timerFor(request, response),
                    expected.get((request, response)),
                    f"{request!r} / {response!r}",
                )

    def test_connectionTimers(self) -> None:
        """
        The connection's own timers: C{head} while reading a head,
        C{keepalive} between requests, C{linger} after an error response,
        none in the other states.
        """
        self.assertEqual(set(CONNECTION_TIMERS), set(CONNECTION_STATES))
        kinds = {state: (timer[0] if timer else None) for state, timer in CONNECTION_TIMERS.items()}
        self.assertEqual(
            kinds,
            {
                HEAD: "head",
                KEEPALIVE: "keepalive",
                WAIT: None,
                EXCHANGE: None,
                TUNNEL: None,
                H2: None,
                LINGER: "linger",
                CLOSING: None,
                CLOSED: None,
            },
        )

    def test_eventOutOfOrderRaises(self) -> None:
        """
        An exchange moved through an illegal transition by its driver (the
        head written upstream before C{connecting}) raises
        L{LocalProtocolError} at once.
        """
        ex = makeExchange(GET)
        ex.start()
        self.assertRaises(LocalProtocolError, ex.upstreamReady, b"")
        self.assertIs(ex.requestState, DECIDING)


class ResponseSplitTests(ExchangeTestCase):
    """
    A response gives the same bytes and actions however it is split.
    """

    def test_contentLength(self) -> None:
        """
        A C{Content-Length} body: the head, then the body, then done and
        reusable.
        """
        down, names, _ = self.assertSplitsAgree(GET, OK)
        self.assertEqual(down, b"hello")
        self.assertEqual(
            names,
            ["head 200 length chunked=False", "ResponseDone(reusable=True, closeClient=False)"],
        )

    def test_chunkedToHTTP11Client(self) -> None:
        """
        A chunked body goes to an HTTP/1.1 client chunked, as received
        (extensions and trailers included), and the upstream is reusable.
        """
        down, names, _ = self.assertSplitsAgree(GET, OK_CHUNKED_HEAD + CHUNKED_BODY)
        self.assertEqual(down, CHUNKED_BODY)
        self.assertEqual(
            names,
            ["head 200 chunked chunked=True", "ResponseDone(reusable=True, closeClient=False)"],
        )

    def test_chunkedToHTTP10Client(self) -> None:
        """
        A chunked body goes to an HTTP/1.0 client decoded (the head says
        C{chunked=False}, so the connection layer delimits it by closing the
        client connection).  The upstream read the whole chunked body, so it
        stays reusable.
        """
        down, names, _ = self.assertSplitsAgree(GET10, OK_CHUNKED_HEAD + CHUNKED_BODY)
        self.assertEqual(down, DECODED_BODY)
        self.assertEqual(
            names,
            ["head 200 chunked chunked=False", "ResponseDone(reusable=True, closeClient=False)"],
        )

    def test_otherCodingIsDecodedOfChunked(self) -> None:
        """
        A chunked body under another transfer coding is not relayed chunked
        even to an HTTP/1.1 client: the chunked layer is decoded.
        """
        head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
        down, names, _ = self.assertSplitsAgree(GET, head + CHUNKED_BODY)
        self.assertEqual(down, DECODED_BODY)
        self.assertEqual(names[0], "head 200 chunked chunked=False")

    def test_closeDelimited(self) -> None:
        """
        A body without length ends when the upstream closes: done, and the
        upstream is not reusable.
        """
        response = b"HTTP/1.1 200 OK\r\n\r\nuntil the end"
        down, names, _ = self.assertSplitsAgree(GET, response, end=True)
        self.assertEqual(down, b"until the end")
        self.assertEqual(
            names,
            ["head 200 close chunked=False", "ResponseDone(reusable=False, closeClient=False)"],
        )

    def test_headRequest(self) -> None:
        """
        The response to C{HEAD} has no body whatever its C{Content-Length}
        says: the head alone completes it.
        """
        response = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
        down, names, _ = self.assertSplitsAgree(HEAD_REQUEST, response)
        self.assertEqual(down, b"")
        self.assertEqual(
            names,
            ["head 200 none chunked=False", "ResponseDone(reusable=True, closeClient=False)"],
        )

    def test_noContentAndNotModified(self) -> None:
        """
        C{204} and C{304} responses have no body, even with a
        C{Content-Length}.
        """
        for response in [
            b"HTTP/1.1 204 No Content\r\n\r\n",
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
        ]:
            down, names, _ = self.assertSplitsAgree(GET, response)
            self.assertEqual(down, b"")
            status = int(response[9:12])
            self.assertEqual(
                names,
                [
                    f"head {status} none chunked=False",
                    "ResponseDone(reusable=True, closeClient=False)",
                ],
            )

    def test_interimThenFinal(self) -> None:
        """
        A C{100} and a C{103} go to an HTTP/1.1 client before the final
        response: the C{100} bare, the C{103} without its hop-by-hop fields
        and with C{Via}.
        """
        response = CONTINUE + EARLY_HINTS + OK
        down, names, _ = self.assertSplitsAgree(GET, response)
        self.assertEqual(down, CONTINUE + EARLY_HINTS_RELAYED + b"hello")
        self.assertEqual(
            names,
            [
                "data",
                "head 200 length chunked=False",
                "ResponseDone(reusable=True, closeClient=False)",
            ],
        )

    def test_interimNotRelayedToHTTP10Client(self) -> None:
        """
        An HTTP/1.0 client gets no interim response, only the final one.
        """
        down, names, _ = self.assertSplitsAgree(GET10, CONTINUE + EARLY_HINTS + OK)
        self.assertEqual(down, b"hello")
        self.assertEqual(names[0], "head 200 length chunked=False")

    def test_emptyLinesBeforeHead(self) -> None:
        """
        Empty lines (CRLF) before a response head are skipped, before the
        first head and between an interim head and the final one, whether
        the head arrives whole or split.  (Regression: a whole head after
        an empty line was a 502, a split one was accepted.)
        """
        for response in [b"\r\n" + OK, b"\r\n\r\n" + OK, CONTINUE + b"\r\n" + OK]:
            down, names, _ = self.assertSplitsAgree(GET, response)
            self.assertTrue(down.endswith(b"hello"), repr(response))
            self.assertEqual(names[-1], "ResponseDone(reusable=True, closeClient=False)")

    def test_observedResponseBody(self) -> None:
        """
        With C{observeResponse}, L{Observe} carries the decoded body however
        it is split, for a chunked and a C{Content-Length} body.
        """
        _, _, observed = self.assertSplitsAgree(
            GET, OK_CHUNKED_HEAD + CHUNKED_BODY, observeResponse=True
        )
        self.assertEqual(observed, DECODED_BODY)
        _, _, observed = self.assertSplitsAgree(
            GET10, OK_CHUNKED_HEAD + CHUNKED_BODY, observeResponse=True
        )
        self.assertEqual(observed, DECODED_BODY)
        _, _, observed = self.assertSplitsAgree(GET, OK, observeResponse=True)
        self.assertEqual(observed, b"hello")
        for action in self.respond(GET, [OK], observeResponse=True)[1]:
            if isinstance(action, Observe):
                self.assertFalse(action.upstream)

    def test_notObservedByDefault(self) -> None:
        """
        Without C{observeResponse}, no L{Observe} action is returned.
        """
        actions = self.respond(GET, [OK_CHUNKED_HEAD + CHUNKED_BODY])[1]
        self.assertNotIn("Observe", kinds(actions))

    def test_extraBytesAfterBody(self) -> None:
        """
        Bytes after the body, in the same piece, make the upstream not
        reusable; the client gets only the body.  When they come in a later
        piece the response was already done (reusable, as far as it could
        tell), and the exchange still notes the upstream as not reusable.
        """
        response = OK + b"EXTRA"
        bodyEnd = len(OK)
        splits = [[response]] + [[response[:i], response[i:]] for i in range(1, len(response))]
        for chunks in splits + [bytewise(response)]:
            d, actions = self.respond(GET, chunks)
            down, names, _ = summarize(actions)
            self.assertEqual(down, b"hello")
            done = actions[-1]
            self.assertIsInstance(done, ResponseDone)
            afterEnd = len(chunks) > 1 and len(chunks[0]) == bodyEnd or len(chunks) == len(response)
            self.assertEqual(done.reusable, afterEnd, repr(chunks))  # type: ignore[union-attr]
            self.assertFalse(d.ex.reusable)

    def test_extraBytesAfterBodilessResponse(self) -> None:
        """
        Bytes after a response without a body, in the same piece, make the
        upstream not reusable.
        """
        response = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
        actions = self.respond(HEAD_REQUEST, [response])[1]
        self.assertAction(actions[-1], ResponseDone, reusable=False, closeClient=False)

    def test_connectionClose(self) -> None:
        """
        A response with C{Connection: close} leaves the upstream not
        reusable.
        """
        response = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
        _, names, _ = self.assertSplitsAgree(GET, response)
        self.assertEqual(names[-1], "ResponseDone(reusable=False, closeClient=False)")


class BadResponseTests(ExchangeTestCase):
    """
    Malformed responses: 502 before the client has a head, abort after.
    """

    def test_malformedHead(self) -> None:
        """
        A malformed status line fails the exchange with 502.
        """
        d, actions = self.respond(GET, [b"HTTP/1.1 abc\r\n\r\n"])
        self.assertEqual(kinds(actions), ["Fail"])
        self.assertAction(actions[0], Fail, status=502)
        self.assertIs(d.ex.responseState, FAILED)

    def test_ambiguousFraming(self) -> None:
        """
        A response with both C{Transfer-Encoding} and C{Content-Length}
        fails with 502.
        """
        response = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
        actions = self.respond(GET, [response])[1]
        self.assertAction(actions[-1], Fail, status=502)

    def test_headTooLarge(self) -> None:
        """
        A response head past C{maxResponseHeadSize} fails with 502.
        """
        actions = self.respond(
            GET, [b"HTTP/1.1 200 OK\r\nX: " + b"a" * 200], maxResponseHeadSize=100
        )[1]
        self.assertAction(actions[-1], Fail, status=502)

    def test_badChunkedBody(self) -> None:
        """
        A malformed chunk after the head was relayed aborts both
        connections, with the status the client already has.
        """
        d, actions = self.respond(GET, [OK_CHUNKED_HEAD + b"5\r\nhello\r\n", b"zz\r\n"])
        self.assertEqual(significant(actions), ["ResponseHeadReady", "Abort"])
        self.assertAction(actions[-1], Abort, status=200)
        self.assertIs(d.ex.responseState, FAILED)
        self.assertFalse(d.ex.reusable)
        self.assertEqual(d.responseData(b"more"), [])

    def test_badChunkInFirstPiece(self) -> None:
        """
        A malformed chunk in the same piece as the head fails with 502:
        the head was not handed to the client yet, so it must get an error
        response, not a connection closed without a byte.  (Regression: it
        was an L{Abort}, logged as 200.)
        """
        for body in [b"zz\r\n", b"5\r\nhello\r\nzz\r\n"]:
            d, actions = self.respond(GET, [OK_CHUNKED_HEAD + body])
            self.assertEqual(kinds(actions), ["Fail"])
            self.assertAction(actions[0], Fail, status=502)
            self.assertIs(d.ex.responseState, FAILED)
            self.assertFalse(d.ex.reusable)
        actions = self.respond(GET, [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"])[1]
        self.assertEqual(significant(actions), ["ResponseHeadReady"])


class InterimTests(ExchangeTestCase):
    """
    Interim (1xx) responses: a loop, not recursion, capped at C{maxInterim}.
    """

    def test_defaultCap(self) -> None:
        """
        The default cap is ten.
        """
        self.assertEqual(DEFAULT_MAX_INTERIM, 10)
        self.assertEqual(makeExchange(GET).maxInterim, 10)

    def test_manyInterimInOnePieceFail(self) -> None:
        """
        600 C{100 Continue} heads in one piece: the first ten are relayed to
        an HTTP/1.1 client, then the exchange fails with 502, with no
        recursion.
        """
        d, actions = self.respond(GET, [CONTINUE * 600])
        self.assertEqual(kinds(actions), ["SendDownstream"] * 10 + ["Fail"])
        self.assertEqual(b"".join(a.data for a in actions[:10]), CONTINUE * 10)  # type: ignore
        self.assertAction(actions[-1], Fail, status=502)
        self.assertIn("more than 10 interim responses", actions[-1].reason)  # type: ignore
        self.assertEqual(d.ex.interim, 11)
        self.assertFalse(d.ex.reusable)

    def test_manyInterimToHTTP10Client(self) -> None:
        """
        An HTTP/1.0 client gets none of them, and the same 502.
        """
        actions = self.respond(GET10, [CONTINUE * 600])[1]
        self.assertEqual(kinds(actions), ["Fail"])
        self.assertAction(actions[0], Fail, status=502)

    def test_manyInterimOneAtATime(self) -> None:
        """
        Interim responses in separate pieces count the same: the eleventh
        fails, and the rest are ignored.
        """
        d = self.driver(GET)
        d.ready()
        for _ in range(10):
            self.assertEqual(kinds(d.responseData(CONTINUE)), ["SendDownstream"])
        actions = d.responseData(CONTINUE)
        self.assertEqual(kinds(actions), ["Fail"])
        self.assertEqual(d.responseData(CONTINUE), [])

    def test_exactlyMaxInterimIsFine(self) -> None:
        """
        Exactly C{maxInterim} interim responses, then the final one: all
        relayed, and the response completes.
        """
        for maxInterim in [10, 3]:
            actions = self.respond(GET, [EARLY_HINTS * maxInterim + OK], maxInterim=maxInterim)[1]
            down, names, _ = summarize(actions)
            self.assertEqual(down, EARLY_HINTS_RELAYED * maxInterim + b"hello")
            self.assertEqual(names[-1], "ResponseDone(reusable=True, closeClient=False)")
            tooMany = EARLY_HINTS * (maxInterim + 1) + OK
            actions = self.respond(GET, [tooMany], maxInterim=maxInterim)[1]
            self.assertAction(actions[-1], Fail, status=502)

    def test_longRunDoesNotRecurse(self) -> None:
        """
        With a cap high enough to allow them, more interim responses in one
        piece than the recursion limit allows frames are all relayed.
        """
        count = 2000
        actions = self.respond(GET, [CONTINUE * count + OK], maxInterim=count)[1]
        down, names, _ = summarize(actions)
        self.assertEqual(down, CONTINUE * count + b"hello")
        self.assertEqual(names[-1], "ResponseDone(reusable=True, closeClient=False)")


class TimerTests(ExchangeTestCase):
    """
    Which timer runs when (see L{timerFor}), and what each does on expiry.
    """

    def test_startArmsConnect(self) -> None:
        """
        C{start} arms the C{connect} timer; C{connecting} keeps it.
        """
        d = self.driver(GET)
        actions = d.start()
        self.assertEqual(len(actions), 1)
        self.assertTimer(actions[0], "connect", CONNECT_SECONDS)
        self.assertEqual(d.connecting(), [])
        self.assertEqual(d.ex.timer, "connect")

    def test_startAfterConnectingArmsConnect(self) -> None:
        """
        A connection layer may start the exchange's timer late (just before
        it first waits): C{start} after C{connecting} still arms the
        C{connect} timer, and after C{upstreamReady} it arms nothing.
        """
        d = self.driver(GET)
        d.connecting()
        actions = d.start()
        self.assertTimer(actions[0], "connect", CONNECT_SECONDS)
        d = self.driver(GET)
        d.connecting()
        d.upstreamReady()
        self.assertEqual(d.ex.timer, "response")
        self.assertEqual(d.start(), [])

    def test_bodylessRequestArmsResponse(self) -> None:
        """
        Once a request without a body is written upstream, the C{response}
        timer runs, and the pending bytes are pipelined input.
        """
        d = self.driver(GET)
        d.start()
        d.connecting()
        actions = d.upstreamReady(NEXT)
        self.assertEqual(kinds(actions), ["SetTimer", "RequestSent"])
        self.assertTimer(actions[0], "response", RESPONSE_SECONDS)
        self.assertAction(actions[1], RequestSent, leftover=NEXT)

    def test_uploadArmsIdleThenResponse(self) -> None:
        """
        While the request body goes up the C{idle} timer runs; once it is
        all sent, the C{response} timer.
        """
        d = self.driver(POST)
        d.start()
        d.connecting()
        actions = d.upstreamReady(b"hello")
        self.assertEqual(significant(actions), ["SendUpstream"])
        self.assertEqual(self.timers(actions), [("idle", IDLE_CHECK)])
        actions = d.requestData(b" wor")
        self.assertEqual(kinds(actions), ["SendUpstream"])
        actions = d.requestData(b"ld")
        self.assertEqual(significant(actions), ["SendUpstream", "RequestSent"])
        self.assertEqual(self.timers(actions), [("response", RESPONSE_SECONDS)])

    def test_wholeBodyPendingArmsResponse(self) -> None:
        """
        A body that was all received with the head goes up at once, and
        the C{response} timer runs.
        """
        d = self.driver(POST)
        d.start()
        d.connecting()
        actions = d.upstreamReady(POST_BODY + NEXT)
        self.assertEqual(significant(actions), ["SendUpstream", "RequestSent"])
        self.assertEqual(self.timers(actions)[-1], ("response", RESPONSE_SECONDS))
        self.assertEqual(d.ex.timer, "response")
        self.assertEqual(d.pipelined, NEXT)

    def test_interimDoesNotChangeTimer(self) -> None:
        """
        Interim responses arm no timer, during the upload or after it.
        """
        d = self.driver(POST)
        d.ready()
        self.assertEqual(kinds(d.responseData(CONTINUE)), ["SendDownstream"])
        self.assertEqual(d.ex.timer, "idle")
        d.requestData(POST_BODY)
        self.assertEqual(d.ex.timer, "response")
        self.assertEqual(kinds(d.responseData(EARLY_HINTS)), ["SendDownstream"])
        self.assertEqual(d.ex.timer, "response")

    def test_partialHeadDoesNotChangeTimer(self) -> None:
        """
        Part of a response head arms no timer.
        """
        d = self.driver(GET)
        d.ready()
        self.assertEqual(d.responseData(b"HTTP/1.1 200 OK\r\n"), [])
        self.assertEqual(d.ex.timer, "response")

    def test_bodyArmsIdleThenCancels(self) -> None:
        """
        A final head arms the C{idle} timer while its body streams; the end
        of the response ends it with L{ResponseDone}.
        """
        d = self.driver(GET)
        d.ready()
        actions = d.responseData(OK[:-3])
        self.assertEqual(kinds(actions), ["ResponseHeadReady", "SetTimer"])
        self.assertTimer(actions[1], "idle", IDLE_CHECK)
        actions = d.responseData(b"l")
        self.assertEqual(kinds(actions), ["SendDownstream"])
        actions = d.responseData(b"lo")
        self.assertEqual(kinds(actions), ["SendDownstream", "ResponseDone"])
        self.assertIsNone(d.ex.timer)

    def test_wholeResponseEndsTimer(self) -> None:
        """
        A whole response in one piece ends the timer with L{ResponseDone}
        (a terminal action implies it: no separate L{SetTimer}).
        """
        d, actions = self.respond(GET, [OK])
        self.assertEqual(kinds(actions), ["ResponseHeadReady", "ResponseDone"])
        self.assertIsNone(d.ex.timer)

    def test_connectTimeout(self) -> None:
        """
        The C{connect} timer fails the exchange with 504, while deciding and
        while connecting.
        """
        d = self.driver(GET)
        d.start()
        actions = d.timerFired(30)
        self.assertEqual(kinds(actions), ["Fail"])
        self.assertAction(actions[0], Fail, status=504)
        self.assertTrue(d.ex.ended)
        d = self.driver(GET)
        d.start()
        d.connecting()
        self.assertAction(d.timerFired(30)[-1], Fail, status=504)

    def test_responseTimeout(self) -> None:
        """
        The C{response} timer fails the exchange with 504.
        """
        d = self.driver(GET)
        d.ready()
        actions = d.timerFired(60)
        self.assertEqual(kinds(actions), ["Fail"])
        self.assertAction(actions[0], Fail, status=504)
        self.assertFalse(d.ex.reusable)

    def test_responseTimeoutAfterPartialHead(self) -> None:
        """
        The C{response} timer fails with 504 even once part of a head came:
        bytes that are not a final head do not stop it.
        """
        d = self.driver(GET)
        d.ready()
        d.responseData(b"HTTP/1.1 200 OK\r\nContent-")
        actions = d.timerFired(60)
        self.assertEqual(kinds(actions), ["Fail"])
        self.assertAction(actions[0], Fail, status=504)

    def test_responseTimeoutAfterInterim(self) -> None:
        """
        The C{response} timer fails with 504 even after an interim response
        (and the start of another head).
        """
        d = self.driver(GET)
        d.ready()
        d.responseData(CONTINUE + b"HTTP/1.1 2")
        actions = d.timerFired(60)
        self.assertEqual(kinds(actions), ["Fail"])
        self.assertAction(actions[0], Fail, status=504)

    def test_uploadStalledIs408(self) -> None:
        """
        The C{idle} timer checks progress every quarter of the idle timeout;
        when no request body byte moved for the whole timeout, the exchange
        fails with 408.
        """
        d = self.driver(POST)
        d.ready(b"hel")
        now = IDLE_CHECK
        first = now
        while now - first < IDLE_SECONDS:
            actions = d.timerFired(now)
            self.assertEqual(len(actions), 1)
            self.assertTimer(actions[0], "idle", IDLE_CHECK)
            now += IDLE_CHECK
        actions = d.timerFired(now)
        self.assertEqual(kinds(actions), ["Fail"])
        self.assertAction(actions[0], Fail, status=408)
        self.assertFalse(d.ex.reusable)
        self.assertEqual(d.requestData(b"lo"), [])

    def test_slowUploadIsRearmed(self) -> None:
        """
        A body that keeps moving, however slowly, only re-arms the C{idle}
        timer.
        """
        d = self.driver(POST)
        d.ready()
        now = 0.0
        for byte in bytewise(POST_BODY[:-1]):
            d.requestData(byte)
            for _ in range(3):
                now += IDLE_CHECK
                actions = d.timerFired(now)
                self.assertEqual(len(actions), 1)
                self.assertTimer(actions[0], "idle", IDLE_CHECK)
        self.assertIs(d.ex.requestState, SENDING_BODY)

    def test_responseBodyStalledAborts(self) -> None:
        """
        When no response body byte moved for the whole idle timeout, both
        connections are closed: L{Abort} with the status already sent.
        """
        d = self.driver(GET)
        d.ready()
        d.responseData(OK[:-2])
        now = 0.0
        actions: List[Action] = []
        for _ in range(10):
            now += IDLE_CHECK
            actions = d.timerFired(now)
            if not isinstance(actions[-1], SetTimer):
                break
        self.assertEqual(kinds(actions), ["Abort"])
        self.assertAction(actions[0], Abort, status=200)
        self.assertEqual(now, IDLE_CHECK + IDLE_SECONDS)
        self.assertTrue(d.ex.ended)

    def test_responseBodyProgressRearms(self) -> None:
        """
        A response body that keeps moving only re-arms the C{idle} timer.
        """
        d = self.driver(GET)
        d.ready()
        d.responseData(b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n")
        now = 0.0
        for byte in bytewise(b"x" * 19):
            d.responseData(byte)
            now += IDLE_SECONDS
            self.assertTimer(d.timerFired(now)[0], "idle", IDLE_CHECK)

    def test_idleZeroDisables(self) -> None:
        """
        An idle timeout of 0 cancels the timer instead of arming C{idle},
        for the upload and for the response body.
        """
        d = self.driver(POST, timeouts=makeTimeouts(idle=0))
        d.start()
        d.connecting()
        self.assertEqual(self.timers(d.upstreamReady()), [(None, 0.0)])
        d = self.driver(GET, timeouts=makeTimeouts(idle=0))
        d.ready()
        self.assertEqual(self.timers(d.responseData(OK[:-1])), [(None, 0.0)])

    def test_responseZeroDisables(self) -> None:
        """
        A response timeout of 0 cancels the timer instead of arming
        C{response}.
        """
        d = self.driver(GET, timeouts=makeTimeouts(response=0))
        d.start()
        d.connecting()
        self.assertEqual(self.timers(d.upstreamReady()), [(None, 0.0)])
        d = self.driver(POST, timeouts=makeTimeouts(response=0))
        d.ready()
        self.assertEqual(self.timers(d.requestData(POST_BODY)), [(None, 0.0)])

    def test_timerAfterEndDoesNothing(self) -> None:
        """
        A timer that fires after the exchange ended does nothing.
        """
        d, _ = self.respond(GET, [OK])
        self.assertEqual(d.timerFired(1000), [])


class RequestBodyTests(ExchangeTestCase):
    """
    The request body: relayed as received, split anywhere; its end frees
    the pipelined input.
    """

    def assertBodySplits(
        self, request: bytes, body: bytes, decoded: bytes, **kwargs: Any
    ) -> None:
        """
        C{body} then L{NEXT}, split in two at every byte (the first part
        arriving with the head) and one byte at a time: the same bytes go
        upstream, one L{RequestSent}, the same observed body, and L{NEXT}
        is the pipelined input.
        """
        data = body + NEXT
        feeds = [(data[:i], [data[i:]]) for i in range(len(data) + 1)]
        feeds.append((b"", bytewise(data)))
        for pending, rest in feeds:
            d = self.driver(request, **kwargs)
            d.ready(pending)
            for chunk in rest:
                d.clientData(chunk)
            upstream = b"".join(a.data for a in d.actions if isinstance(a, SendUpstream))
            self.assertEqual(upstream, body, repr(pending))
            self.assertEqual(kinds(d.actions).count("RequestSent"), 1)
            self.assertEqual(d.pipelined, NEXT)
            self.assertIs(d.ex.requestState, SENT)
            self.assertEqual(d.ex.bytesUp, len(body))
            self.assertEqual(d.ex.timer, "response")
            observed = [a for a in d.actions if isinstance(a, Observe)]
            self.assertEqual(b"".join(a.data for a in observed), decoded)
            for action in observed:
                self.assertTrue(action.upstream)

    def test_contentLength(self) -> None:
        """
        A C{Content-Length} body, however split.
        """
        self.assertBodySplits(POST, POST_BODY, b"")

    def test_contentLengthObserved(self) -> None:
        """
        A C{Content-Length} body, observed.
        """
        self.assertBodySplits(POST, POST_BODY, POST_BODY, observeRequest=True)

    def test_chunked(self) -> None:
        """
        A chunked body is relayed chunked, however split.
        """
        self.assertBodySplits(POST_CHUNKED, CHUNKED_BODY, b"")

    def test_chunkedObserved(self) -> None:
        """
        A chunked body, observed decoded.
        """
        self.assertBodySplits(POST_CHUNKED, CHUNKED_BODY, DECODED_BODY, observeRequest=True)

    def test_emptyContentLength(self) -> None:
        """
        C{Content-Length: 0}: the request is sent at once and the pending
        bytes are pipelined.
        """
        raw = b"POST http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\nContent-Length: 0\r\n\r\n"
        d = self.driver(raw)
        d.start()
        d.connecting()
        actions = d.upstreamReady(NEXT)
        self.assertEqual(significant(actions), ["RequestSent"])
        self.assertEqual(d.pipelined, NEXT)
        self.assertEqual(self.timers(actions)[-1], ("response", RESPONSE_SECONDS))

    def test_badChunkBeforeResponseIs400(self) -> None:
        """
        A malformed chunk before any response fails the exchange with 400.
        """
        d = self.driver(POST_CHUNKED)
        d.ready(b"5\r\nhello\r\n")
        actions = d.requestData(b"zz\r\n")
        self.assertEqual(kinds(actions), ["Fail"])
        self.assertAction(actions[0], Fail, status=400)
        self.assertFalse(d.ex.reusable)
        self.assertTrue(d.ex.ended)

    def test_badChunkWithHeadIs400(self) -> None:
        """
        A malformed chunk that came with the head fails with 400 as soon as
        the head was written upstream.
        """
        d = self.driver(POST_CHUNKED)
        d.start()
        d.connecting()
        actions = d.upstreamReady(b"zz\r\n")
        self.assertEqual(significant(actions), ["Fail"])
        self.assertAction(actions[-1], Fail, status=400)
        self.assertIsNone(d.ex.timer)

    def test_badChunkAfterResponseHeadAborts(self) -> None:
        """
        A malformed chunk once the client has a response head aborts both
        connections.
        """
        d = self.driver(POST_CHUNKED)
        d.ready(b"5\r\nhello\r\n")
        d.responseData(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        actions = d.requestData(b"zz\r\n")
        self.assertEqual(kinds(actions), ["Abort"])
        self.assertAction(actions[0], Abort, status=200)
        self.assertEqual(d.responseData(b"defghij"), [])

    def test_clientEndedMidBodyIs400(self) -> None:
        """
        The client half-closing before the end of its body fails the
        exchange with 400.
        """
        d = self.driver(POST)
        d.ready(b"hello")
        actions = d.clientEnded()
        self.assertEqual(kinds(actions), ["Fail"])
        self.assertAction(actions[0], Fail, status=400)

    def test_clientEndedAfterBody(self) -> None:
        """
        The client half-closing after its whole body changes nothing.
        """
        d = self.driver(POST)
        d.ready(POST_BODY)
        self.assertEqual(d.clientEnded(), [])
        self.assertEqual(kinds(d.responseData(OK))[-1], "ResponseDone")

    def test_clientEndedWhileResponding(self) -> None:
        """
        The client half-closing mid-body while the response streams lets
        the response go on.
        """
        d = self.driver(POST)
        d.ready(b"hello")
        d.responseData(OK[:-2])
        self.assertEqual(d.clientEnded(), [])
        self.assertIs(d.ex.responseState, RECEIVING_BODY)

    def test_requestDataAfterEndIgnored(self) -> None:
        """
        Client bytes given to an exchange that no longer reads a body are
        ignored (the connection layer keeps them).
        """
        d = self.driver(GET)
        d.ready()
        self.assertEqual(d.requestData(NEXT), [])
        self.assertEqual(d.ex.bytesUp, 0)


class UpstreamEndedTests(ExchangeTestCase):
    """
    The upstream closing before the response is complete.
    """

    def test_reusedBeforeAnyByteRetries(self) -> None:
        """
        A pooled connection closed before any response byte, for a C{GET}
        without a body: retry once, after re-arming the C{connect} timer.
        """
        d = self.driver(GET)
        d.ready()
        actions = d.upstreamEnded(True)
        self.assertEqual(kinds(actions), ["SetTimer", "Retry"])
        self.assertTimer(actions[0], "connect", CONNECT_SECONDS)
        self.assertIs(d.ex.requestState, CONNECTING)
        self.assertFalse(d.ex.ended)
        actions = d.upstreamReady()
        self.assertEqual(kinds(actions), ["SetTimer", "RequestSent"])
        self.assertTimer(actions[0], "response", RESPONSE_SECONDS)
        self.assertEqual(summarize(d.responseData(OK))[0], b"hello")

    def test_retryable(self) -> None:
        """
        C{retryable} says whether a request could be sent again on a fresh
        connection: an idempotent method without a body, not yet retried.
        """
        self.assertTrue(self.driver(GET).ex.retryable)
        self.assertTrue(self.driver(b"DELETE http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\n\r\n").ex.retryable)
        self.assertFalse(self.driver(POST).ex.retryable)
        self.assertFalse(self.driver(b"POST http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\n\r\n").ex.retryable)
        self.assertFalse(
            self.driver(b"PUT http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\nContent-Length: 1\r\n\r\n").ex.retryable
        )
        d = self.driver(GET)
        d.ready()
        d.upstreamEnded(True)
        self.assertFalse(d.ex.retryable)

    def test_retryOnlyOnce(self) -> None:
        """
        The second close before any byte fails with 502, even on a pooled
        connection.
        """
        d = self.driver(GET)
        d.ready()
        d.upstreamEnded(True)
        d.upstreamReady()
        actions = d.upstreamEnded(True)
        self.assertEqual(kinds(actions), ["Fail"])
        self.assertAction(actions[0], Fail, status=502)

    def test_freshConnectionIs502(self) -> None:
        """
        A fresh connection closed before any byte: 502, no retry.
        """
        d = self.driver(GET)
        d.ready()
        actions = d.upstreamEnded(False)
        self.assertEqual(kinds(actions), ["Fail"])
        self.assertAction(actions[0], Fail, status=502)

    def test_postIs502(self) -> None:
        """
        A request with a body is never retried: 502.
        """
        d = self.driver(POST)
        d.ready(POST_BODY)
        actions = d.upstreamEnded(True)
        self.assertEqual(kinds(actions), ["Fail"])
        self.assertAction(actions[0], Fail, status=502)

    def test_nonIdempotentIs502(self) -> None:
        """
        A C{POST} without a body is not retried either.
        """
        d = self.driver(b"POST http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\n\r\n")
        d.ready()
        self.assertEqual(kinds(d.upstreamEnded(True)), ["Fail"])

    def test_partialHeadIs502(self) -> None:
        """
        A close after part of a head: 502 for an incomplete head, no retry.
        """
        d = self.driver(GET)
        d.ready()
        d.responseData(b"HTTP/1.1 200 OK\r\n")
        actions = d.upstreamEnded(True)
        self.assertEqual(kinds(actions), ["Fail"])
        self.assertAction(actions[0], Fail, status=502)
        self.assertIn("incomplete", actions[0].reason)  # type: ignore[union-attr]

    def test_afterInterimIs502(self) -> None:
        """
        A close after an interim response: 502, no retry.
        """
        d = self.driver(GET)
        d.ready()
        d.responseData(CONTINUE)
        actions = d.upstreamEnded(True)
        self.assertEqual(kinds(actions), ["Fail"])
        self.assertIn("final response", actions[0].reason)  # type: ignore[union-attr]

    def test_midBodyAborts(self) -> None:
        """
        A close in a C{Content-Length} or chunked body aborts both
        connections.
        """
        for response in [OK[:-2], OK_CHUNKED_HEAD + b"5\r\nhel"]:
            d = self.driver(GET)
            d.ready()
            d.responseData(response)
            actions = d.upstreamEnded(False)
            self.assertEqual(kinds(actions), ["Abort"])
            self.assertAction(actions[0], Abort, status=200)

    def test_afterResponseNothing(self) -> None:
        """
        A close after the response is complete changes nothing.
        """
        d, _ = self.respond(GET, [OK])
        self.assertEqual(d.upstreamEnded(False), [])

    def test_failAfterEndNothing(self) -> None:
        """
        C{fail} after the exchange ended does nothing; before a response it
        fails with the given status; during the body it aborts.
        """
        d, _ = self.respond(GET, [OK])
        self.assertEqual(d.fail(500, "late"), [])
        d = self.driver(GET)
        d.start()
        actions = d.fail(503, "hook")
        self.assertEqual(kinds(actions), ["Fail"])
        self.assertAction(actions[0], Fail, status=503, reason="hook")
        d = self.driver(GET)
        d.ready()
        d.responseData(OK[:-1])
        self.assertAction(d.fail(500, "hook")[-1], Abort, status=200)


class UpgradeTests(ExchangeTestCase):
    """
    C{101 Switching Protocols}.
    """

    def test_upgrade(self) -> None:
        """
        A C{101} to an upgrade request: L{Upgrade} with the head and the
        bytes that came after it in the same piece, wherever the response
        was split; both sides are upgraded and no timer runs.
        """
        tail = b"\x81\x05hello"
        response = SWITCHING + tail
        for i in range(1, len(response) + 1):
            d, actions = self.respond(
                UPGRADE_REQUEST, [response[:i], response[i:]], upgrading=True
            )
            upgrade = [a for a in actions if isinstance(a, Upgrade)]
            self.assertEqual(len(upgrade), 1)
            self.assertEqual(upgrade[0].head.status, 101)
            expected = tail if i < len(SWITCHING) else response[len(SWITCHING) : i]
            self.assertEqual(upgrade[0].rest, expected, f"split at {i}")
            self.assertEqual(kinds(actions), ["Upgrade"])
            self.assertIs(d.ex.requestState, UPGRADED)
            self.assertIs(d.ex.responseState, UPGRADED)
            self.assertIsNone(d.ex.timer)

    def test_upgradeAfterInterim(self) -> None:
        """
        An interim response before the C{101} is relayed first.
        """
        actions = self.respond(UPGRADE_REQUEST, [CONTINUE + SWITCHING], upgrading=True)[1]
        self.assertEqual(kinds(actions), ["SendDownstream", "Upgrade"])

    def test_unexpected101Is502(self) -> None:
        """
        A C{101} to a request that did not ask for an upgrade fails with
        502.
        """
        d, actions = self.respond(GET, [SWITCHING + b"junk"])
        self.assertEqual(kinds(actions), ["Fail"])
        self.assertAction(actions[0], Fail, status=502)
        self.assertIs(d.ex.responseState, FAILED)


class EarlyResponseTests(ExchangeTestCase):
    """
    A response that ends before the request body does.
    """

    def test_responseBeforeBodyEnds(self) -> None:
        """
        A whole response while the body is still going up: done, the
        upstream not reusable and the client connection closed; the rest of
        the body is not read.
        """
        d = self.driver(POST)
        d.ready(b"hel")
        actions = d.responseData(b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(kinds(actions), ["ResponseHeadReady", "ResponseDone"])
        self.assertAction(actions[-1], ResponseDone, reusable=False, closeClient=True)
        self.assertIs(d.ex.requestState, FAILED)
        self.assertEqual(d.clientData(b"lo world"), [])

    def test_streamedResponseBeforeBodyEnds(self) -> None:
        """
        A response whose body streams while the request body goes up, and
        ends first: the same.
        """
        d = self.driver(POST)
        d.ready(b"hel")
        d.responseData(OK[:-2])
        d.requestData(b"lo")
        actions = d.responseData(b"lo")
        self.assertAction(actions[-1], ResponseDone, reusable=False, closeClient=True)

    def test_bodyEndsWhileResponseStreams(self) -> None:
        """
        A request body that ends while the response streams: the idle timer
        keeps running, and the response ends normally.
        """
        d = self.driver(POST)
        d.ready(b"hel")
        d.responseData(OK[:-2])
        actions = d.requestData(b"lo world")
        self.assertEqual(kinds(actions), ["SendUpstream", "RequestSent"])
        self.assertEqual(d.ex.timer, "idle")
        actions = d.responseData(b"lo")
        self.assertAction(actions[-1], ResponseDone, reusable=True, closeClient=False)


class TerminalActionTests(SynchronousTestCase):
    """
    L{assertTerminalLast} itself.
    """

    def test_terminalNotLastFails(self) -> None:
        """
        A terminal action followed by another action fails the check; last,
        it passes.
        """
        terminals: List[Action] = [
            ResponseDone(True, False),
            Fail(502, "x"),
            Abort(200, "x"),
            Retry(),
            Upgrade(ResponseHead(b"HTTP/1.1", 101, b"Switching Protocols"), b""),
        ]
        for terminal in terminals:
            assertTerminalLast(self, [SetTimer(None, 0.0), terminal])
            self.assertRaises(
                self.failureException,
                assertTerminalLast,
                self,
                [terminal, SetTimer("connect", 1.0)],
            )


class KeepAliveTimeoutTests(ExchangeTestCase):
    """
    The idle timeout a server announces in C{Keep-Alive: timeout=N}.
    """

    def test_parse(self) -> None:
        """
        C{timeout=N} is read from a C{Keep-Alive} field, in any case, among
        other parameters, quoted or not; the first valid one counts.
        """
        cases = [
            ([(b"Keep-Alive", b"timeout=5")], 5),
            ([(b"keep-alive", b"max=100, TIMEOUT = 15")], 15),
            ([(b"KEEP-ALIVE", b'timeout="7"')], 7),
            ([(b"Keep-Alive", b"timeout=x"), (b"Keep-Alive", b"timeout=3")], 3),
            ([(b"Keep-Alive", b"timeout=99999999999")], None),
            ([(b"Keep-Alive", b"timeout=-1, max=5")], None),
            ([(b"Keep-Alive", b"timeout")], None),
            ([(b"Keep-Alive", b"max=5")], None),
            ([(b"Keep-Alives", b"timeout=5"), (b"X-Keep-Alive", b"timeout=5")], None),
            ([(b"Keep-Alive", b"timeout=100000000")], 86400),
            ([], None),
        ]
        self.assertEqual([parseKeepAliveTimeout(h) for h, _ in cases], [expected for _, expected in cases])

    def test_announced(self) -> None:
        """
        An HTTP/1.1 response with C{Connection: keep-alive} and
        C{Keep-Alive: timeout=5} (as Node sends) gives the exchange's
        C{keepAliveTimeout}; one without the C{Connection} token, or
        closing, does not.
        """
        for fields, expected in [
            (b"Connection: keep-alive\r\nKeep-Alive: timeout=5\r\n", 5),
            (b"Keep-Alive: timeout=5\r\n", None),
            (b"Connection: keep-alive, close\r\nKeep-Alive: timeout=5\r\n", None),
            (b"Connection: keep-alive\r\n", None),
        ]:
            d, _ = self.respond(GET, [b"HTTP/1.1 200 OK\r\n" + fields + b"Content-Length: 2\r\n\r\nok"])
            self.assertEqual(d.ex.keepAliveTimeout, expected, fields)
