# -*- test-case-name: tests.test_intercept -*-
"""
ALPN towards the client of an intercepted tunnel follows the origin: with
HTTP/2 on, the client's ClientHello is read before TLS starts; when it
offers C{h2}, the origin is asked (a verified TLS connection offering
C{h2, http/1.1}, or the answer remembered in L{OriginProtocols}) and the
client is offered C{h2} only if the origin selected it.  Also the origin
side's TLS protocol, L{_OriginTLS}.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, List, Optional, Tuple

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from txproxy.hooks import Target
from txproxy.stream.clienthello import ClientHelloError, ClientHelloReader
from txproxy.tls import clientTLSSettings
from txproxy.tls._proto import TLSClientProtocol

__all__ = ["H2_ALPN", "OriginProtocols"]

log = Logger(namespace="txproxy.intercept")

#: Client bytes kept while the origin is asked, above which the client is
#: paused.
_WAITING_INPUT = 65536

#: The ALPN list offered to a client once the origin selected C{h2}.
H2_ALPN: Tuple[str, ...] = ("h2", "http/1.1")


class OriginProtocols:
    """
    What origins answered to ALPN C{h2, http/1.1}, per host, port and
    server name: so that only the first tunnel to an origin (in
    C{ttl} seconds) waits for a probe.  Bounded: the oldest answers are
    dropped first.

    @ivar ttl: how long an answer is used, in seconds.
    @ivar maxSize: how many answers are kept.
    """

    def __init__(self, ttl: float = 600.0, maxSize: int = 4096) -> None:
        self.ttl = ttl
        self.maxSize = maxSize
        self._answers: "OrderedDict[Tuple[str, int, str], Tuple[bool, float]]" = OrderedDict()

    def get(self, key: Tuple[str, int, str], now: float) -> Optional[bool]:
        """
        Whether the origin C{key} selected C{h2}, or L{None} when not known
        (or known too long ago).
        """
        answer = self._answers.get(key)
        if answer is None:
            return None
        if answer[1] <= now:
            del self._answers[key]
            return None
        return answer[0]

    def put(self, key: Tuple[str, int, str], h2: bool, now: float) -> None:
        """
        Remember the origin C{key}'s answer for C{ttl} seconds.
        """
        answers = self._answers
        answers.pop(key, None)
        answers[key] = (h2, now + self.ttl)
        while len(answers) > self.maxSize:
            answers.popitem(last=False)

    def __len__(self) -> int:
        return len(self._answers)


class _OriginTLS(TLSClientProtocol):
    """
    TLS to an intercepted origin, as L{txproxy.connector.connectProtocol}
    dials it: reports the TCP connection through C{onConnected}.
    """

    onConnected: Any = None

    def makeConnection(self, transport: Any) -> None:
        super().makeConnection(transport)
        callback = self.onConnected
        if callback is not None:
            self.onConnected = None
            callback(self)


class _ProbeTLS(_OriginTLS):
    """
    The connection that asks an origin which protocol it speaks (ALPN
    C{h2, http/1.1}), verified as every origin connection is.  Its
    application protocol is an idle upstream connection: when the origin
    selects C{http/1.1} (or nothing) it goes to the pool for the tunnel's
    first request; when it selects C{h2} it is closed, nothing sent.
    """

    choice: Optional["_ALPNChoice"] = None

    def _handshaken(self) -> None:
        super()._handshaken()
        choice = self.choice
        if self._handshakeDone and not self.disconnected and choice is not None:
            self.choice = None
            choice.probed(self, self.negotiatedProtocol)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        choice = self.choice
        if choice is not None:
            self.choice = None
            choice.probeLost(reason)
        super().connectionLost(reason)


def _poolKey(target: Target) -> str:
    return f"intercept|{target}|{target.host}"


class _ALPNChoice:
    """
    Before the client's handshake completes (listeners with HTTP/2 on):
    read its ClientHello; when it offers C{h2}, find out whether the
    origin selects C{h2} (L{OriginProtocols}, else a probe: a verified TLS
    connection offering C{h2, http/1.1}), then start TLS offering the
    client C{h2, http/1.1} or C{http/1.1} only.  Any failure to learn
    the answer (dial, verification, timeout) means C{http/1.1}; the
    requests inside then meet the same failure and get their C{502}.
    """

    done = False
    _dial: Optional[defer.Deferred] = None
    _timer: Any = None
    _probe: Optional[_ProbeTLS] = None
    _size = 0
    _paused = False

    def __init__(self, relay: Any, interceptor: Any, target: Target) -> None:
        self.relay = relay  # the InterceptedTunnel
        self.interceptor = interceptor  # the listener's Interceptor
        self.target = target
        self.key = (target.host, target.port, target.host)
        self.reader = ClientHelloReader()
        self.received: List[bytes] = []
        factory = relay.owner.factory
        # A client that never completes its ClientHello: TLS starts
        # anyway (and fails it, or times it out, as without HTTP/2).
        self._timer = factory.clock.callLater(factory.listener.headerTimeout, self._timedOut)

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)
        if self.done or self._dial is not None:
            # (Waiting for the origin's answer: a TLS client sends nothing
            # more before the server's hello; one that does is paused.)
            self._size += len(data)
            if self._size > _WAITING_INPUT and not self._paused:
                self._paused = True
                self.relay.owner.transport.pauseProducing()
            return
        try:
            hello = self.reader.feed(data)
        except ClientHelloError:
            self._start(False)  # TLS refuses it, as it would without HTTP/2
            return
        if hello is None:
            return
        if "h2" not in hello.alpn:
            self._start(False)
            return
        owner = self.relay.owner
        known = self.interceptor.originProtocols.get(self.key, owner.factory.clock.seconds())
        if known is not None:
            self._start(known)
            return
        self._probeOrigin()

    def _probeOrigin(self) -> None:
        owner = self.relay.owner
        target = self.target
        try:
            newObject, verify = clientTLSSettings(target.host, self.interceptor.upstreamCA, H2_ALPN)
        except Exception:  # a broken --upstream-ca: the requests report it
            self._start(False)
            return
        makeApp = self.relay.inner.upstreamProtocol

        def make() -> _ProbeTLS:
            probe = self._probe = _ProbeTLS(newObject, makeApp(), verify)
            probe.choice = self
            return probe

        factory = owner.factory
        timer = self._timer
        if timer is not None and timer.active():
            timer.cancel()
        self._timer = factory.clock.callLater(factory.listener.connectTimeout, self._timedOut)
        self._dial = d = owner.dialTarget(target, make)
        owner._upstreamAddress = "intercepted"
        d.addErrback(self._dialFailed)

    def _dialFailed(self, reason: Failure) -> None:
        self._finish(None, reason)

    def probed(self, probe: _ProbeTLS, selected: Optional[bytes]) -> None:
        """
        The origin completed the handshake (verified) and selected
        C{selected}: remember it; keep the connection for the first
        request unless it is to speak HTTP/2.
        """
        self._probe = None
        h2 = selected == b"h2"
        if self.done:
            probe.loseConnection()
            return
        factory = self.relay.owner.factory
        self.interceptor.originProtocols.put(self.key, h2, factory.clock.seconds())
        if h2 or factory.draining:
            probe.loseConnection()
        else:
            upstream = probe.wrappedProtocol
            upstream.key = _poolKey(self.target)
            factory.pool.put(upstream)
        self._finish(h2)

    def probeLost(self, reason: Failure) -> None:
        """
        The probe connection closed (before the handshake completed, when
        it is a failure).
        """
        self._finish(None, reason)

    def _timedOut(self) -> None:
        self._timer = None
        if self._dial is None:
            self._start(False)  # (no complete ClientHello in time)
            return
        self._finish(None, Failure(defer.TimeoutError("the origin did not complete the TLS handshake in time")))

    def _finish(self, h2: Optional[bool], reason: Optional[Failure] = None) -> None:
        if self.done:
            return
        if h2 is None and reason is not None:
            log.debug(
                "intercepted tunnel to {target}: could not learn the origin's protocol ({reason}); offering http/1.1",
                target=str(self.target),
                reason=reason.getErrorMessage(),
            )
        self._stop()
        self._start(bool(h2))

    def _stop(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        probe, self._probe = self._probe, None
        if probe is not None:
            probe.choice = None
            if getattr(probe, "transport", None) is not None:
                probe.abortConnection()
        dial = self._dial
        if dial is not None and not dial.called:
            dial.cancel()

    def cancel(self) -> None:
        """
        The client left: stop asking the origin.
        """
        if not self.done:
            self.done = True
            self._stop()

    def _start(self, h2: bool) -> None:
        if self.done:
            return
        self.done = True
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        self.relay.start(H2_ALPN if h2 else None, b"".join(self.received))
        transport = self.relay.owner.transport
        if self._paused and transport is not None and not getattr(transport, "disconnecting", False):
            transport.resumeProducing()
