# -*- test-case-name: tests.test_tcp -*-
"""
The upstream side of the stream modes: the protocol that receives the
upstream's bytes, the dialling client factory with its connect timeout,
parsing C{tcp:} upstream descriptions, and naming a failure in one line.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from twisted.internet import defer
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from txproxy._common import isIPLiteral
from txproxy.relay import RelayedProtocol

__all__ = ["UpstreamProtocol", "describeFailure", "parseTCPDescription"]


def describeFailure(f: Failure) -> str:
    """
    One line for an unexpected exception: its type, message and where it
    was raised (the innermost frame), for a log line that does not need a
    traceback.
    """
    text = f"{f.type.__name__ if isinstance(f.type, type) else f.type}: {f.getErrorMessage()}"
    text = " ".join(text.split())
    frames = f.frames
    if frames:
        function, filename, line = frames[-1][:3]
        text += f" (at {filename}:{line} in {function})"
    return text


def parseTCPDescription(description: str) -> Optional[Tuple[str, int, Optional[float]]]:
    """
    Read the host, port and optional timeout of a simple C{tcp:} client
    endpoint description (C{tcp:10.0.0.5:22}, C{tcp:host=10.0.0.5:port=22},
    C{...:timeout=3}) whose host is an IP address literal.

    @return: C{(host, port, timeout)}, or L{None} for anything else (names,
        other endpoint types, other parameters, escapes): those are dialled
        through their endpoint.
    """
    kind, sep, rest = description.strip().partition(":")
    if kind != "tcp" or not sep or "\\" in rest:
        return None
    args: List[str] = []
    kwargs: Dict[str, str] = {}
    for part in rest.split(":"):
        if "=" in part:
            k, _, v = part.partition("=")
            kwargs[k] = v
        else:
            args.append(part)
    if set(kwargs) - {"host", "port", "timeout"} or len(args) > 2:
        return None
    names = ["host", "port"]
    for name, value in zip(names, args):
        if name in kwargs:
            return None
        kwargs[name] = value
    host = kwargs.get("host", "")
    try:
        port = int(kwargs.get("port", ""))
        timeout = float(kwargs["timeout"]) if "timeout" in kwargs else None
    except ValueError:
        return None
    if not 0 < port < 65536 or not isIPLiteral(host):
        return None
    return host, port, timeout


@implementer(IHalfCloseableProtocol)
class UpstreamProtocol(RelayedProtocol):
    """
    The upstream side of a TCP-mode relay.  It tells its owner (the client
    side's protocol) when it is connected; until the relay is attached it
    keeps what the upstream sends (a server that speaks first).

    @ivar owner: the client-side protocol that dialled it.
    """

    owner: Any = None

    def connectionMade(self) -> None:
        owner = self.owner
        if owner is not None:
            try:
                owner._upstreamConnected(self)
            except Exception:
                f = Failure()
                self.owner = None
                if owner.relay is None:
                    self.transport.abortConnection()  # type: ignore[union-attr]
                owner._internalError(f)


def _connectTimedOut(result: Any, timeout: float) -> Any:
    """
    C{addTimeout}'s translation for an endpoint's connect: a cancelled
    endpoint fails with L{error.ConnectingCancelledError}, not
    L{defer.CancelledError}, which the default translation passes on as is.
    """
    if isinstance(result, Failure):
        raise defer.TimeoutError(timeout, "upstream connect")
    return result


class _Dial(ClientFactory):
    """
    The client factory of one upstream connection attempt: builds the
    owner's upstream protocol and reports a failed connect to it.
    """

    noisy = False

    def __init__(self, owner: Any) -> None:
        self.owner = owner
        self.failed = False
        #: TCP_NODELAY on the upstream socket (read by txproxy._dial).
        self.noDelay = owner.factory.listener.tcpNoDelay

    def buildProtocol(self, addr: Any) -> Protocol:
        p = self.owner.upstreamProtocol()
        p.owner = self.owner
        p.factory = self
        return p  # type: ignore[no-any-return]

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        if not self.failed:
            self.failed = True
            try:
                self.owner._dialFailed(reason)
            except Exception:
                self.owner._internalError(Failure())
