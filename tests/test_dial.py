# -*- test-case-name: tests.test_dial -*-
"""
Tests for L{txproxy._dial}: dialling IP literals without C{connectTCP}.

The connect and refusal tests use real loopback sockets on the global
reactor; the timeout and cancellation tests use a fake reactor (a
L{Clock} that records the descriptors it is asked to watch) so that time
is moved by hand.
"""

from __future__ import annotations

import socket
from typing import Any, List

from twisted.internet import defer, error, reactor
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from txproxy._dial import DirectClient, dialTCP


class _Recorder(ClientFactory):
    noisy = False

    def __init__(self) -> None:
        self.built: List[Any] = []
        self.failed: List[Failure] = []
        self.connected: defer.Deferred[Any] = defer.Deferred()
        self.done: defer.Deferred[Any] = defer.Deferred()
        self.lost: defer.Deferred[Any] = defer.Deferred()

    def buildProtocol(self, addr: Any) -> Protocol:
        self.built.append(addr)
        factory = self

        class Echoed(Protocol):
            def connectionMade(self) -> None:
                factory.connected.callback(self)

            def dataReceived(self, data: bytes) -> None:
                if not factory.done.called:
                    factory.done.callback(data)

            def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
                factory.lost.callback(reason.type)

        return Echoed()

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.failed.append(reason)
        if not self.connected.called:
            self.connected.errback(reason)


class _Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]


class DialLoopbackTests(TestCase):
    def listen(self, interface: str = "127.0.0.1") -> int:
        factory = Factory.forProtocol(_Echo)
        port = reactor.listenTCP(0, factory, interface=interface)  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        return port.getHost().port  # type: ignore[no-any-return]

    @defer.inlineCallbacks
    def check(self, host: str) -> Any:
        port = self.listen(host)
        factory = _Recorder()
        client = dialTCP(reactor, host, port, factory, timeout=5)
        proto = yield factory.connected
        self.assertIsInstance(client, DirectClient)
        self.assertEqual((factory.built[0].host, factory.built[0].port), (host, port))
        self.assertEqual(proto.transport.getPeer().port, port)
        self.assertEqual(proto.transport.getHost().host, host)
        proto.transport.write(b"ping")
        data = yield factory.done
        self.assertEqual(data, b"ping")
        self.assertRaises(error.NotConnectingError, client.stopConnecting)
        self.assertEqual((client.state, client.transport), ("connected", client))
        self.assertEqual(client.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), 1)
        proto.transport.loseConnection()
        lost = yield factory.lost
        self.assertIs(lost, error.ConnectionDone)
        self.assertEqual(factory.failed, [])

    def test_connectIPv4(self) -> None:
        """
        An IPv4 literal is dialled; the protocol is built with the peer's
        address, connected, and relays bytes both ways.
        """
        return self.check("127.0.0.1")  # type: ignore[no-any-return]

    def test_connectIPv6(self) -> None:
        """
        The same for an IPv6 literal.
        """
        return self.check("::1")  # type: ignore[no-any-return]

    @defer.inlineCallbacks
    def test_refused(self) -> Any:
        """
        A refused connect reaches C{clientConnectionFailed} as
        L{error.ConnectionRefusedError}, from a later loop iteration, and the
        descriptor is released.
        """
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        factory = _Recorder()
        client = dialTCP(reactor, "127.0.0.1", port, factory, timeout=5)
        self.assertEqual(factory.failed, [])
        yield self.assertFailure(factory.connected, error.ConnectionRefusedError)
        self.assertEqual(len(factory.failed), 1)
        self.assertNotIn(client, reactor.getWriters())  # type: ignore[attr-defined]
        self.assertNotIn(client, reactor.getReaders())  # type: ignore[attr-defined]


class _FakeFDReactor(Clock):
    """
    A clock that records which descriptors it would watch (and never calls
    them).
    """

    def __init__(self) -> None:
        super().__init__()
        self.readers: List[Any] = []
        self.writers: List[Any] = []

    def addReader(self, r: Any) -> None:
        if r not in self.readers:
            self.readers.append(r)

    def addWriter(self, w: Any) -> None:
        if w not in self.writers:
            self.writers.append(w)

    def removeReader(self, r: Any) -> None:
        if r in self.readers:
            self.readers.remove(r)

    def removeWriter(self, w: Any) -> None:
        if w in self.writers:
            self.writers.remove(w)


class DialTimeoutTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(8)
        self.addCleanup(self.server.close)
        self.port = self.server.getsockname()[1]
        self.reactor = _FakeFDReactor()
        self.factory = _Recorder()

    def test_timeout(self) -> None:
        """
        A connect not reported done within the timeout fails with
        L{error.TimeoutError}; the socket is closed and unwatched.
        """
        client = dialTCP(self.reactor, "127.0.0.1", self.port, self.factory, timeout=3)
        self.assertEqual(self.reactor.writers, [client])
        self.reactor.advance(2.9)
        self.assertEqual(self.factory.failed, [])
        self.reactor.advance(0.2)
        [reason] = self.factory.failed
        self.assertTrue(reason.check(error.TimeoutError))
        self.assertEqual((self.reactor.readers, self.reactor.writers), ([], []))
        self.assertEqual(client.socket.fileno(), -1)
        self.assertRaises(error.NotConnectingError, client.stopConnecting)
        self.failureResultOf(self.factory.connected)

    def test_noDelayFromFactory(self) -> None:
        """
        C{TCP_NODELAY} is set on the upstream socket unless the factory's
        C{noDelay} attribute is false.
        """
        self.factory.noDelay = False  # type: ignore[attr-defined]
        client = dialTCP(self.reactor, "127.0.0.1", self.port, self.factory, timeout=3)
        self.assertEqual(client.state, "connecting")
        self.assertEqual(client.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), 0)
        client.stopConnecting()
        self.assertEqual(client.state, "disconnected")
        self.failureResultOf(self.factory.connected, error.UserError)

    def test_stopConnecting(self) -> None:
        """
        C{stopConnecting} abandons the attempt: the factory hears
        L{error.UserError}, once, and the timeout timer is cancelled.
        """
        client = dialTCP(self.reactor, "127.0.0.1", self.port, self.factory, timeout=3)
        client.stopConnecting()
        self.assertEqual(len(self.factory.failed), 1)
        self.assertTrue(self.factory.failed[0].check(error.UserError))
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.reactor.advance(5)
        self.assertEqual(len(self.factory.failed), 1)
        self.failureResultOf(self.factory.connected)

    def test_writableMeansConnected(self) -> None:
        """
        Once the socket is writable with no error, the protocol is built and
        connected, and the socket is watched for reading only; the timer is
        cancelled.
        """
        client = dialTCP(self.reactor, "127.0.0.1", self.port, self.factory, timeout=3)
        accepted, _ = self.server.accept()
        self.addCleanup(accepted.close)
        client.doWrite()
        proto = self.successResultOf(self.factory.connected)
        self.assertIs(proto.transport, client)
        self.assertEqual((self.reactor.readers, self.reactor.writers), ([client], []))
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        accepted.settimeout(5)
        client.write(b"x")
        self.assertEqual(self.reactor.writers, [client])
        client.doWrite()
        self.assertEqual(accepted.recv(1), b"x")
        client.connectionLost(Failure(error.ConnectionDone()))
