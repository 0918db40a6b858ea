# -*- test-case-name: tests.test_exchange -*-
"""
The states of one HTTP exchange and of the client connection that carries
it, their legal transitions, and the timer that applies in each.

Everything that decides *which* timer runs lives in this file, in the
manner of h11's C{_state.py}: a state is a sentinel, a transition is a row
in a table, and the timer of a state is a row in another.  The exchange
(L{txproxy.exchange.Exchange}) and the HTTP/1.1 connection layer
(L{txproxy.httpproxy.HTTPProxyProtocol}) only ever move between states
through L{transition}, so an illegal move is a bug caught at once, not a
stuck connection.

An exchange has two sides, as in h11:

  - the request side: L{DECIDING} (policy, routing and hooks run),
    L{CONNECTING} (an upstream connection is being dialled),
    L{SENDING_BODY} (the head went upstream, body bytes follow),
    L{SENT} (the whole request went upstream);
  - the response side: L{AWAITING_HEAD} (nothing final received yet;
    interim C{1xx} responses keep it here), L{RECEIVING_BODY},
    L{RESPONDED}.

Either side can end in L{UPGRADED} (a C{101}: the relay takes over) or
L{FAILED} (an error status was sent or the connection closed).

Timers (L{timerFor}), one per exchange at a time:

  ======================================  ===========  ==============================
  request side / response side             timer        on expiry
  ======================================  ===========  ==============================
  DECIDING or CONNECTING                  C{connect}   C{504}
  SENDING_BODY / AWAITING_HEAD            C{idle}      C{408} (the body stalled)
  SENT / AWAITING_HEAD                    C{response}  C{504} (1xx does not stop it)
  any / RECEIVING_BODY                    C{idle}      close both connections
  ======================================  ===========  ==============================

C{idle} is a progress check, not a per-chunk reset: it fires every quarter
of C{--idle-timeout} and acts only when no byte moved in either direction
for the whole timeout.

The client connection's own states (L{HEAD}, L{KEEPALIVE}, L{EXCHANGE},
L{TUNNEL}, L{LINGER}, L{CLOSING}, L{CLOSED}) and their timers are here
too (L{CONNECTION_TIMERS}): C{head} until a request head is complete
(C{408}), C{keepalive} between requests (close quietly), C{linger} after
an error response (close).  A connection that opened with the HTTP/2
preface is in L{H2} for good: L{txproxy.h2.H2ServerConnection} runs its
idle timer, and each stream's protocol runs its own states and timers.
"""

from typing import Dict, FrozenSet, Optional, Tuple

__all__ = [
    "State",
    "DECIDING",
    "CONNECTING",
    "SENDING_BODY",
    "SENT",
    "AWAITING_HEAD",
    "RECEIVING_BODY",
    "RESPONDED",
    "UPGRADED",
    "FAILED",
    "HEAD",
    "KEEPALIVE",
    "WAIT",
    "EXCHANGE",
    "TUNNEL",
    "H2",
    "LINGER",
    "CLOSING",
    "CLOSED",
    "LocalProtocolError",
    "transition",
    "timerFor",
    "TIMERS",
    "CONNECTION_TIMERS",
    "REQUEST_TRANSITIONS",
    "RESPONSE_TRANSITIONS",
    "CONNECTION_TRANSITIONS",
]


class State:
    """
    A state: a named sentinel, compared by identity.
    """

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


class LocalProtocolError(Exception):
    """
    Our own code asked for a transition the table does not allow: a bug.
    """


# -- the exchange: request side
DECIDING = State("DECIDING")
CONNECTING = State("CONNECTING")
SENDING_BODY = State("SENDING_BODY")
SENT = State("SENT")
# -- the exchange: response side
AWAITING_HEAD = State("AWAITING_HEAD")
RECEIVING_BODY = State("RECEIVING_BODY")
RESPONDED = State("RESPONDED")
# -- either side
UPGRADED = State("UPGRADED")
FAILED = State("FAILED")

# -- the client connection (HTTP/1.1)
HEAD = State("HEAD")  # reading a request head
KEEPALIVE = State("KEEPALIVE")  # between requests, nothing received yet
WAIT = State("WAIT")  # a head was received; deciding / dialling
EXCHANGE = State("EXCHANGE")  # the request is with an upstream
TUNNEL = State("TUNNEL")  # CONNECT or upgrade: the relay owns the bytes
H2 = State("H2")  # HTTP/2: txproxy.h2 owns the bytes; each stream has a protocol
LINGER = State("LINGER")  # an error response was sent; draining input
CLOSING = State("CLOSING")  # closing after a final response
CLOSED = State("CLOSED")

_Table = Dict[State, FrozenSet[State]]

#: Legal moves of an exchange's request side.
REQUEST_TRANSITIONS: _Table = {
    DECIDING: frozenset([CONNECTING, FAILED]),
    # A pooled connection that turns out closed: CONNECTING again (retry).
    CONNECTING: frozenset([SENDING_BODY, SENT, FAILED]),
    SENDING_BODY: frozenset([SENT, FAILED, CONNECTING, UPGRADED]),
    SENT: frozenset([CONNECTING, FAILED, UPGRADED]),
    UPGRADED: frozenset(),
    FAILED: frozenset(),
}

#: Legal moves of an exchange's response side.
RESPONSE_TRANSITIONS: _Table = {
    AWAITING_HEAD: frozenset([RECEIVING_BODY, RESPONDED, UPGRADED, FAILED]),
    RECEIVING_BODY: frozenset([RESPONDED, FAILED]),
    RESPONDED: frozenset(),
    UPGRADED: frozenset(),
    FAILED: frozenset(),
}

#: Legal moves of an HTTP/1.1 client connection.
CONNECTION_TRANSITIONS: _Table = {
    HEAD: frozenset([WAIT, LINGER, CLOSING, CLOSED, H2]),
    KEEPALIVE: frozenset([HEAD, WAIT, LINGER, CLOSING, CLOSED]),
    WAIT: frozenset([EXCHANGE, TUNNEL, LINGER, CLOSING, CLOSED]),
    EXCHANGE: frozenset([WAIT, KEEPALIVE, HEAD, TUNNEL, LINGER, CLOSING, CLOSED]),
    TUNNEL: frozenset([CLOSED, CLOSING]),
    H2: frozenset([CLOSED, CLOSING]),
    LINGER: frozenset([CLOSED, CLOSING]),
    CLOSING: frozenset([CLOSED]),
    CLOSED: frozenset(),
}


def transition(table: _Table, current: State, new: State) -> State:
    """
    Check that C{current} may move to C{new} in C{table}.

    @return: C{new}.
    @raise LocalProtocolError: when the table has no such move.
    """
    if new is current or new in table[current]:
        return new
    raise LocalProtocolError(f"illegal transition {current!r} -> {new!r}")


#: The timer of each client connection state: (kind, where its seconds
#: come from), or L{None} for no timer of the connection's own (the
#: exchange's timer applies in L{WAIT} and L{EXCHANGE}; the relay's idle
#: sweep in L{TUNNEL}).
CONNECTION_TIMERS: Dict[State, Optional[Tuple[str, str]]] = {
    HEAD: ("head", "--header-timeout"),
    KEEPALIVE: ("keepalive", "HTTPProxyFactory.keepAliveTimeout (75 s, or --idle-timeout if less)"),
    WAIT: None,
    EXCHANGE: None,
    TUNNEL: None,
    H2: None,
    LINGER: ("linger", "httpproxy.LINGER_SECONDS (2 s)"),
    CLOSING: None,
    CLOSED: None,
}


def timerFor(request: State, response: State) -> Optional[str]:
    """
    The timer that applies to an exchange whose sides are in C{request} and
    C{response}: C{"connect"}, C{"response"}, C{"idle"} or L{None} (ended).
    """
    if response is AWAITING_HEAD:
        if request is DECIDING or request is CONNECTING:
            return "connect"
        if request is SENT:
            return "response"
        if request is SENDING_BODY:
            return "idle"
        return None
    if response is RECEIVING_BODY:
        return "idle"
    return None


#: L{timerFor} of every pair of states, for a lookup instead of a call.
TIMERS: Dict[Tuple[State, State], Optional[str]] = {
    (request, response): timerFor(request, response)
    for request in REQUEST_TRANSITIONS
    for response in RESPONSE_TRANSITIONS
}
