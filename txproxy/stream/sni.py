# -*- test-case-name: tests.test_sni -*-
"""
C{--mode sni}: TLS pass-through routed by the server name (SNI) of the
client's ClientHello, without decrypting.

Per connection: the client ACL is applied; the ClientHello is read with
L{ClientHelloReader} (split across TCP segments or TLS records, at most
L{SNIRouterFactory.maxHelloSize} bytes, within C{--header-timeout}
seconds); its server name picks a route from the router's table for this
listener (exact name, then C{*.suffix} wildcards, then C{*}); a backend of
the route's pool is dialled (retried once on another member); an optional
PROXY header (the backend's own C{proxy_protocol_send}, else the route's,
else the listener's) is written, then the buffered bytes are replayed
upstream unchanged and the two connections are relayed.

A connection is closed, and its access record and a log line say why, when
the bytes are not a TLS ClientHello (C{400}), carry no SNI (C{400}), carry
an SNI that is not a DNS host name, non-ASCII bytes included (C{400}; a TLS
C{unrecognized_name} alert is sent first), name a host no route matches
(C{404}; the same alert), or do not finish in time (C{408}).  Other statuses are those of
L{txproxy.stream.tcp}.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from txproxy._hookcompat import Legacy, hookCaller, positionalCount
from txproxy.hooks import StreamRequest, Target
from txproxy.stream.base import _CLOSED, _CONNECTING, _HELLO, RelayingFactory, _RelayingProtocol
from txproxy.stream.clienthello import (
    UNRECOGNIZED_NAME_ALERT,
    ClientHello,
    ClientHelloError,
    ClientHelloReader,
    ServerNameError,
)

__all__ = ["SNIRouterProtocol", "SNIRouterFactory", "UNRECOGNIZED_NAME_ALERT"]

log = Logger(namespace="txproxy.sni")


_CHOOSE_LEGACY = (
    Legacy(
        "chooseUpstream",
        "(client, hello)",
        lambda self, request: self.chooseUpstream(request.client, request.hello),
        lambda function: positionalCount(function) == 2,
    ),
)


class SNIRouterProtocol(_RelayingProtocol):
    """
    One client connection in C{sni} mode.

    Hooks, in order: L{chooseUpstream} (once the ClientHello is read, only
    when overridden), L{relayOpened}, L{clientData}/L{upstreamData},
    L{exchangeEnded}; L{upstreamFailed} when no backend could be reached.
    The hooks about the connection take its L{StreamRequest}, whose
    C{hello} is the ClientHello.  The old C{chooseUpstream(client, hello)}
    is still called, with a L{DeprecationWarning}.

    @ivar hello: the L{ClientHello}, once read.
    @ivar route: the matched L{txproxy.router.Route}, or L{None}.
    """

    hello: Optional[ClientHello] = None
    route: Any = None
    _reader: Optional[ClientHelloReader] = None
    _timer: Any = None

    def _modeLog(self) -> Logger:
        return log

    def chooseUpstream(self, request: StreamRequest) -> Any:
        """
        Pick this connection's upstream once its ClientHello is read (and
        its server name matched a route: L{route} is set).  Only called when
        overridden.

        @param request: this connection's L{StreamRequest}; C{request.hello}
            is the parsed ClientHello.

        @return: L{None} for the route's pool, or a L{Target}, or a client
            endpoint description; may return a Deferred firing with one.
        """
        return None

    def _buildRequest(self) -> StreamRequest:
        return StreamRequest(self.client, hello=self.hello)

    def _begin(self) -> None:
        factory = self.factory
        self._state = _HELLO
        self._reader = ClientHelloReader(factory.maxHelloSize)  # type: ignore[attr-defined]
        self._timer = factory.clock.callLater(factory.listener.headerTimeout, self._helloTimedOut)

    def _helloTimedOut(self) -> None:
        self._timer = None
        if self._state == _HELLO:
            self._closeBecause(408, "ClientHello not received in time")

    def _cancelTimer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _closeBecause(self, status: int, reason: str, alert: bytes = b"") -> None:
        log.info(
            "sni: closing connection from {client}: {reason}",
            client=self.client.host,
            reason=reason,
        )
        self._cancelTimer()
        self._refuse(status, reason, alert)

    def dataReceived(self, data: bytes) -> None:
        state = self._state
        if state == _HELLO:
            pending = self._pending
            if pending is None:
                self._pending = [data]
            else:
                pending.append(data)
            reader = self._reader
            assert reader is not None
            try:
                hello = reader.feed(data)
            except ServerNameError as e:
                # A name no route can match (not ASCII, not a DNS name):
                # refused like an unknown one, with unrecognized_name.
                self._closeBecause(400, f"bad ClientHello: {e.reason}", UNRECOGNIZED_NAME_ALERT)
                return
            except ClientHelloError as e:
                self._closeBecause(400, f"bad ClientHello: {e.reason}")
                return
            if hello is not None:
                self._guarded(self._helloReceived, hello)
        elif state == _CONNECTING:
            self._pending.append(data)  # type: ignore[union-attr]

    def _helloReceived(self, hello: ClientHello) -> None:
        self._cancelTimer()
        self._reader = None
        self.hello = hello
        self._request = None  # (built again, with the hello, when asked)
        name = hello.serverName
        if not name:
            self._closeBecause(400, "no SNI in the ClientHello")
            return
        self.target = name
        factory = self.factory
        route = factory.router.tableFor(factory.listener.name).match(name)
        if route is None:
            self._closeBecause(404, f"no route for {name}", UNRECOGNIZED_NAME_ALERT)
            return
        self.route = route
        self._pause()
        # The route's proxy_protocol_send ("none": no header), else the
        # listener's; a backend's own setting wins over both (_startRelay).
        version = route.config.proxyProtocolSend
        if version is None:
            version = factory.listener.proxyProtocolSend
        self._proxyVersion = None if version == "none" else version
        choose = hookCaller(self, "chooseUpstream", SNIRouterProtocol, _CHOOSE_LEGACY)
        if choose is not None:
            self._state = _CONNECTING
            d = defer.maybeDeferred(choose, self, self.request)
            d.addCallbacks(self._chosen, self._chooseFailed).addErrback(self._internalError)
            return
        self._connectPool(route.pool)

    def _chosen(self, choice: Any) -> None:
        if self._state == _CLOSED:
            return
        if choice is None:
            self._connectPool(self.route.pool)
        elif isinstance(choice, Target):
            self._connectTarget(choice.host, choice.port)
        else:
            self._connectDescription(str(choice))

    def drain(self) -> None:
        """
        The proxy is stopping: a connection still waiting for its
        ClientHello with nothing received yet is closed; others finish.
        """
        if self._state == _HELLO and not self._pending and self.transport is not None:
            self._cancelTimer()
            self._refuse(503, "proxy stopping")

    def connectionLost(self, reason: Optional[Failure] = None) -> None:
        self._cancelTimer()
        super().connectionLost(reason)

    def _traceRoute(self) -> Any:
        return self.route

    def _finish(self, status: int, up: int, down: int, reason: str) -> None:
        # The matched route's name is the metrics' route label (the
        # relaying core reports without one).
        route = self.route
        metrics = self.factory.metrics
        if route is None or metrics is None:
            super()._finish(status, up, down, reason)
            return
        stats = metrics.statsFor(self.factory.listener)
        stats.route = route.name
        try:
            super()._finish(status, up, down, reason)
        finally:
            stats.route = "-"

    def _connectionLostEarly(self, state: int) -> None:
        if state == _HELLO:
            self._finish(400, 0, 0, "client closed before its ClientHello was complete")
        else:
            super()._connectionLostEarly(state)


class SNIRouterFactory(RelayingFactory):
    """
    Builds L{SNIRouterProtocol}s for one C{sni} listener; routes come from
    the router's table for this listener.
    """

    protocol = SNIRouterProtocol
    mode = "sni"
    method = "TLS"

    #: The most bytes of ClientHello (record headers included) read before
    #: giving up.
    maxHelloSize = ClientHelloReader.defaultMaxSize
