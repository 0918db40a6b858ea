# -*- test-case-name: tests.test_forward -*-
"""
The frozen values that txproxy's hook methods receive and return.

Hooks never see a parser, a peer transport or the options object: only
these small immutable values, so a subclass can be tested by building them
directly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import attr

if TYPE_CHECKING:
    from txproxy.stream.clienthello import ClientHello

__all__ = ["ClientInfo", "Target", "TunnelRequest", "StreamRequest", "Refuse"]


@attr.s(frozen=True, slots=True, auto_attribs=True)
class ClientInfo:
    """
    Who is asking.

    @ivar host: the client's IP address (the one a PROXY header carried, on
        a C{haproxy:} listener), or a UNIX socket path.
    @ivar port: the client's port (0 when not IP).
    @ivar user: the user name that authenticated with C{Proxy-Authorization},
        or L{None}.
    """

    host: str
    port: int = 0
    user: Optional[str] = None


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Target:
    """
    A destination: a host name or IP address and a port.
    """

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@attr.s(frozen=True, slots=True, auto_attribs=True)
class TunnelRequest:
    """
    A C{CONNECT} request.

    @ivar client: who sent it.
    @ivar target: where the client asked to go.
    @ivar head: the parsed request head (a L{txproxy.http.RequestHead}).
    """

    client: ClientInfo
    target: Target
    head: Any


@attr.s(frozen=True, slots=True, auto_attribs=True)
class StreamRequest:
    """
    A connection in C{tcp}, C{transparent} or C{sni} mode, as its hooks see
    it (C{chooseUpstream}, C{relayOpened}, C{upstreamFailed}): the stream
    modes' counterpart of the HTTP modes' request values.

    @ivar client: who connected.
    @ivar destination: in C{transparent} mode, the original destination
        the client was going to (a L{Target}); else L{None}.
    @ivar hello: in C{sni} mode, the parsed ClientHello (a
        L{txproxy.stream.clienthello.ClientHello}: C{serverName},
        C{alpn}...); else L{None}.
    """

    client: ClientInfo
    destination: Optional[Target] = None
    hello: Optional["ClientHello"] = None


class Refuse(Exception):
    """
    Raise (or fail a Deferred with) this from a hook to refuse a request
    with a given status code.

    @ivar status: the HTTP status to answer (HTTP modes).
    @ivar reason: a short plain-text explanation for the client.
    """

    def __init__(self, status: int = 403, reason: str = "") -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason
