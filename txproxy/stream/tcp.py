# -*- test-case-name: tests.test_tcp -*-
"""
Plain TCP relaying: C{--mode tcp} (port forwarding to a pool of upstreams)
and C{--mode transparent} (to the original destination of an iptables
C{REDIRECT}ed connection).

Per accepted connection: the client ACL is applied, reading from the client
is paused, an upstream is picked (the listener's pool in the router, round
robin by default, or the original destination) and dialled; a refused or
timed-out connect is retried once on the next pool member; once connected, an
optional PROXY protocol header is written upstream, then the bytes the client
already sent, and both transports are handed to the L{Relay}.

Subclass L{TCPProxyProtocol} and override its hooks (L{chooseUpstream},
L{relayOpened}, L{clientData}/L{upstreamData}, L{upstreamFailed},
L{exchangeEnded}); set your subclass as the C{protocol} of a
L{TCPProxyFactory} or L{TransparentFactory}.  The hooks that concern the
connection take a L{StreamRequest} first, as the HTTP modes' hooks take
their request (C{docs/hooks.rst} shows every mode's hooks side by side).

Every client connection produces exactly one L{AccessRecord}.  Its C{status}
borrows HTTP's codes so that one log format serves every mode: C{200}
relayed; C{400} transparent connection with no original destination; C{403}
client denied by C{--allow}/C{--deny}, a loop to the proxy's own listener
or a destination in C{--deny-dest} (transparent mode);
C{499} the client left before the upstream was reached; C{500} an
unexpected error while choosing or dialling the upstream (logged in one
line); C{502} upstream refused or unreachable; C{503} no healthy backend;
C{504} connect timeout.
"""

from __future__ import annotations

from typing import Any, Tuple, cast

from twisted.internet import defer
from twisted.logger import Logger

from txproxy._common import formatAddress
from txproxy._hookcompat import Legacy, hookCaller
from txproxy.hooks import StreamRequest, Target
from txproxy.stream._upstream import UpstreamProtocol
from txproxy.stream.base import (
    _CLOSED,
    _CONNECTING,
    RelayingFactory,
    _RelayingProtocol,
    _takesClient,
)
from txproxy.stream.origdst import isOwnListener, localNetworks, originalDestination

__all__ = [
    "TCPProxyProtocol",
    "TCPProxyFactory",
    "TransparentFactory",
    "UpstreamProtocol",
    "RelayingFactory",
]

log = Logger(namespace="txproxy.tcp")


#: Seconds L{TransparentFactory} keeps the host's local networks before
#: reading them again (for the loop guard).
LOCAL_NETWORKS_TTL = 30.0


_CHOOSE_LEGACY = (
    Legacy("chooseUpstream", "(client)", lambda self, request: self.chooseUpstream(request.client), _takesClient),
)


class TCPProxyProtocol(_RelayingProtocol):
    """
    One client connection in C{tcp} or C{transparent} mode.

    Hooks, in order: L{chooseUpstream} (once, before dialling), then
    L{relayOpened}, L{clientData}/L{upstreamData} (per chunk), and
    L{exchangeEnded} (once); L{upstreamFailed} when no upstream could be
    reached.  Each hook is only called when a subclass overrides it.  The
    old forms (C{chooseUpstream(client)}, C{relayOpened(upstreamAddress)},
    C{upstreamFailed(reason)}, C{connectionEnded(record)}) are still
    called, with a L{DeprecationWarning}.

    @ivar client: the L{ClientInfo} (the address a PROXY header carried, on
        a C{haproxy:} listener).
    @ivar relay: the L{Relay} once relaying, else L{None}.
    @ivar backend: the router's L{Backend} connected to (pool mode), else
        L{None}.
    @ivar upstreamAddress: the C{ip:port} dialled (C{""} before).
    @ivar target: what the access log names as the target: the backend's
        description, or the original destination.
    """

    def chooseUpstream(self, request: StreamRequest) -> Any:
        """
        Pick this connection's upstream.  Runs once per connection, before
        anything is dialled, only when overridden.

        @param request: this connection's L{StreamRequest}: C{client}, and
            in C{transparent} mode the original C{destination}.
        @return: L{None} for the default (the listener's pool in C{tcp}
            mode, with its balancing and retry; the original destination in
            C{transparent} mode), or a L{Target}, or a client endpoint
            description (C{"tcp:10.0.0.5:22"}); a chosen upstream is tried
            once.  May return a Deferred firing with one of those.  Raise
            (or fail with) any exception to close the connection.
        """
        return None

    def _begin(self) -> None:
        self._pause()
        factory = self.factory
        self._proxyVersion = factory.listener.proxyProtocolSend
        if factory.transparent:
            transparent = cast(TransparentFactory, factory)
            transport = self.transport
            dest = transparent.originalDestination(transport)
            if dest is None:
                self._refuse(400, "no original destination (the connection was not redirected)")
                return
            if transparent.isLoop(dest, transport):
                self._refuse(403, "the original destination is this proxy's own listener")
                return
            self.target = formatAddress(dest[0], dest[1])
            self._proxyDestination = dest
            self._request = None  # (built again, with the destination, when asked)
        choose = hookCaller(self, "chooseUpstream", TCPProxyProtocol, _CHOOSE_LEGACY)
        if choose is not None:
            self._state = _CONNECTING
            d = defer.maybeDeferred(choose, self, self.request)
            d.addCallbacks(self._chosen, self._chooseFailed).addErrback(self._internalError)
            return
        self._chosen(None)

    def _chosen(self, choice: Any) -> None:
        if self._state == _CLOSED:
            return
        if choice is None:
            factory = self.factory
            if factory.transparent:
                host, port = self._proxyDestination
                self._connectTarget(host, port)
            else:
                self._connectPool(factory.router.poolFor(factory.listener.name))
        elif isinstance(choice, Target):
            self.target = str(choice)
            self._connectTarget(choice.host, choice.port)
        else:
            self.target = str(choice)
            self._connectDescription(str(choice))


class TCPProxyFactory(RelayingFactory):
    """
    C{--mode tcp}: relays every connection to a member of the listener's
    upstream pool (kept by the router: balancing, passive ejection).
    """

    protocol = TCPProxyProtocol
    mode = "tcp"


class TransparentFactory(RelayingFactory):
    """
    C{--mode transparent}: relays every connection to its original
    destination (C{SO_ORIGINAL_DST}/C{IP6T_SO_ORIGINAL_DST}); a connection
    whose original destination is this proxy's own listener is closed.

    The proxy's own upstream connections must not be redirected again: match
    them out of the C{REDIRECT} rule (by owner, mark or source), see the
    TCP modes guide.
    """

    protocol = TCPProxyProtocol
    mode = "transparent"
    transparent = True

    #: C{(transport) -> (host, port) or None}; swap it in tests.
    originalDestination = staticmethod(originalDestination)

    _local: Any = None
    _localAt = float("-inf")

    def localAddresses(self) -> Any:
        """
        This host's networks (for the loop guard), re-read every
        L{LOCAL_NETWORKS_TTL} seconds.
        """
        now = self.clock.seconds()
        if self._local is None or now - self._localAt > LOCAL_NETWORKS_TTL:
            self._local = localNetworks()
            self._localAt = now
        return self._local

    def isLoop(self, destination: Tuple[str, int], transport: Any) -> bool:
        """
        Whether relaying C{transport}'s connection to C{destination} would
        reach this proxy's own listener.
        """
        host = transport.getHost()
        listening = [host]
        port = getattr(transport, "server", None)
        if port is not None and hasattr(port, "getHost"):
            listening.append(port.getHost())
        local = list(self.localAddresses())
        if getattr(host, "host", None):
            # The accepted connection's own address is local, whatever
            # /proc says.
            local.append(host.host.split("%", 1)[0])
        return isOwnListener(destination, listening, local)
