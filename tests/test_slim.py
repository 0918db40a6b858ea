"""
Tests for L{txproxy._slim}: TCP transports that keep their state in slots.
"""

from __future__ import annotations

import socket
from typing import Any, List, Set, Tuple

from twisted.internet import main, tcp
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from txproxy._dial import DirectClient
from txproxy._slim import _DEFAULTS, TRANSPORT_SLOTS, SlimServer, slimPort

#: Attributes that only rare paths set (abortConnection swaps the event
#: handlers): they may go to the instance dictionary.
_RARE = {"doRead", "doWrite"}


class _Recorder(Protocol):
    def __init__(self) -> None:
        self.received: List[bytes] = []
        self.lost: List[Failure] = []

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason: Failure = main.CONNECTION_DONE) -> None:  # type: ignore[assignment]
        self.lost.append(reason)


class _Producer:
    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


def _instanceNames(transport: Any) -> Set[str]:
    """
    The attribute names in C{transport}'s instance dictionary (not slots).
    """
    return set(getattr(transport, "__dict__", {}))


class SlimServerTests(SynchronousTestCase):
    """
    L{SlimServer} behaves as L{tcp.Server} and keeps no per-connection
    dictionary.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.port = tcp.Port(0, Factory(), reactor=self.reactor)  # never listens
        self.port._realPortNumber = 3128  # type: ignore[attr-defined]

    def pair(self) -> Tuple[socket.socket, socket.socket]:
        a, b = socket.socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        return a, b

    def accepted(self, cls: Any) -> Tuple[Any, _Recorder, socket.socket]:
        a, b = self.pair()
        protocol = _Recorder()
        transport = cls(a, protocol, ("127.0.0.1", 4321), self.port, 7, self.reactor)
        protocol.makeConnection(transport)
        return transport, protocol, b

    def test_sameStateAsServer(self) -> None:
        """
        After construction a L{SlimServer} answers every attribute as a
        L{tcp.Server} built the same way does (slots start from the base
        classes' defaults), and its instance dictionary is empty.
        """
        slim, _, _ = self.accepted(SlimServer)
        plain, _, _ = self.accepted(tcp.Server)
        for name in TRANSPORT_SLOTS + ("server", "client", "sessionno", "hostname", "logstr", "repstr"):
            if name in ("_fileno", "socket", "protocol", "reactor", "_tempDataBuffer"):
                continue
            self.assertEqual(getattr(slim, name), getattr(plain, name), name)
        self.assertEqual(slim.getPeer(), plain.getPeer())
        self.assertEqual(repr(slim), repr(plain).replace("tcp.Server", "SlimServer"))
        self.assertEqual(slim.fileno(), slim.socket.fileno())
        self.assertEqual(_instanceNames(slim), set())

    def test_defaultsMatchTwisted(self) -> None:
        """
        Each slot's default is the value Twisted's classes give the
        attribute of the same name (when they give one).
        """
        for name, value in _DEFAULTS:
            if hasattr(tcp.Server, name) and not callable(getattr(tcp.Server, name)):
                self.assertEqual(getattr(tcp.Server, name), value, name)

    def test_lifeWithoutDictionary(self) -> None:
        """
        Reading, writing, a registered producer, a bigger read size (what
        the relay sets) and an orderly close leave nothing in the instance
        dictionary; after the close, C{fileno()} answers C{-1} as
        L{twisted.internet.abstract.FileDescriptor.fileno} does.
        """
        transport, protocol, peer = self.accepted(SlimServer)
        peer.sendall(b"hello")
        transport.doRead()
        self.assertEqual(protocol.received, [b"hello"])
        transport.bufferSize = 256 * 1024
        transport.registerProducer(_Producer(), True)
        transport.write(b"x" * 10)
        transport.doWrite()
        self.assertEqual(peer.recv(100), b"x" * 10)
        transport.pauseProducing()
        transport.resumeProducing()
        transport.unregisterProducer()
        transport.loseConnection()
        transport.connectionLost(Failure(main.CONNECTION_DONE))
        self.assertEqual(len(protocol.lost), 1)
        self.assertEqual(transport.fileno(), -1)
        self.assertEqual(_instanceNames(transport), set())

    def test_noSlotForgotten(self) -> None:
        """
        Every attribute a plain L{tcp.Server} gets in the same life (as
        L{test_lifeWithoutDictionary}, plus an abort) is a slot of
        L{SlimServer} or one of the rare ones: a Twisted upgrade that adds
        one shows here.
        """
        transport, _, peer = self.accepted(tcp.Server)
        peer.sendall(b"hello")
        transport.doRead()
        transport.bufferSize = 256 * 1024
        transport.registerProducer(_Producer(), True)
        transport.write(b"x" * 10)
        transport.doWrite()
        transport.pauseProducing()
        transport.resumeProducing()
        transport.unregisterProducer()
        transport.abortConnection()
        transport.connectionLost(Failure(main.CONNECTION_DONE))
        slots = set(SlimServer.__slots__) | {"fileno", "logstr", "repstr"}  # (properties)
        self.assertEqual(_instanceNames(transport) - slots - _RARE, set())

    def test_abort(self) -> None:
        """
        C{abortConnection} works on a L{SlimServer} (its event handlers go to
        the instance dictionary, as on L{tcp.Server}).
        """
        transport, protocol, _ = self.accepted(SlimServer)
        transport.abortConnection()
        self.assertTrue(transport._aborting)
        transport.connectionLost(Failure(main.CONNECTION_LOST))
        self.assertEqual(len(protocol.lost), 1)
        self.assertEqual(transport.fileno(), -1)

    def test_logAndReprStrings(self) -> None:
        """
        C{logstr} and C{repr} are those of a L{tcp.Server}, built when
        first read (also after the connection closed), and may be set.
        """
        slim, _, _ = self.accepted(SlimServer)
        plain, _, _ = self.accepted(tcp.Server)
        self.assertIsNone(slim._logstr)
        slim.connectionLost(Failure(main.CONNECTION_DONE))
        self.assertEqual(slim.logstr, plain.logstr)
        self.assertEqual(slim.logPrefix(), plain.logPrefix())
        self.assertEqual(repr(slim), repr(plain))
        slim.repstr = "<set>"
        slim.logstr = "set"
        self.assertEqual((repr(slim), slim.logstr), ("<set>", "set"))

    def test_otherFileno(self) -> None:
        """
        A C{fileno} other than the socket's own is kept as set.
        """
        transport, _, _ = self.accepted(SlimServer)
        transport.fileno = lambda: 12345
        self.assertEqual(transport.fileno(), 12345)
        del transport.fileno
        self.assertEqual(transport.fileno(), -1)


class SlimPortTests(SynchronousTestCase):
    """
    L{slimPort} makes a plain TCP port build L{SlimServer}s.
    """

    def test_plainPort(self) -> None:
        """
        A L{tcp.Port} building L{tcp.Server}s is changed, once.
        """
        port = tcp.Port(0, Factory(), reactor=MemoryReactorClock())
        self.assertTrue(slimPort(port))
        self.assertIs(port.transport, SlimServer)
        self.assertFalse(slimPort(port))

    def test_otherPorts(self) -> None:
        """
        A port subclass, or a port with a transport class of its own, is
        left alone.
        """

        class MyPort(tcp.Port):
            pass

        class MyServer(tcp.Server):
            pass

        port = MyPort(0, Factory(), reactor=MemoryReactorClock())
        self.assertFalse(slimPort(port))
        self.assertIs(port.transport, tcp.Server)
        other = tcp.Port(0, Factory(), reactor=MemoryReactorClock())
        other.transport = MyServer
        self.assertFalse(slimPort(other))
        self.assertIs(other.transport, MyServer)
        self.assertFalse(slimPort(object()))


class DirectClientSlotsTests(SynchronousTestCase):
    """
    L{DirectClient} keeps its state in slots too.
    """

    def test_noDictionary(self) -> None:
        """
        A dialled connection, connected and relayed (bigger read size, a
        producer), has nothing in its instance dictionary.
        """
        reactor = MemoryReactorClock()
        listener = socket.socket()
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)

        class F:
            noDelay = True

            def buildProtocol(self, addr: Any) -> Protocol:
                return Protocol()

            def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
                raise AssertionError(reason)

        client = DirectClient(reactor, "127.0.0.1", listener.getsockname()[1], F(), None, None)
        accepted, _ = listener.accept()
        self.addCleanup(accepted.close)
        self.addCleanup(client.socket.close)
        client.doWrite()  # writable: connected
        self.assertTrue(client.connected)
        client.bufferSize = 256 * 1024
        client.registerProducer(_Producer(), True)
        self.assertEqual(client.fileno(), client.socket.fileno())
        self.assertEqual(_instanceNames(client), set())
