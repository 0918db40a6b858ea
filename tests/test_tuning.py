# -*- test-case-name: tests.test_tuning -*-
"""
Tests for L{txproxy.tuning} and the socket options every listener factory
sets on accepted connections (C{tcp_nodelay}, C{keepalive*},
C{send_buffer}, C{receive_buffer}): on fake handles that record
C{setsockopt}, through a reload, and once on a real loopback connection.
"""

from __future__ import annotations

import os
import platform
import socket
import struct
import sys
import tempfile
from typing import Any, Dict, List, Tuple

from twisted.internet import defer, tcp
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from txproxy import tuning
from txproxy.config import ListenerConfig, fromTOML, loadFile
from txproxy.forward import ForwardProxyProtocol
from txproxy.stream.tcp import TCPProxyFactory
from txproxy.testing import FakeConnector, FakeTransport, forwardFactory
from txproxy.tuning import (
    CPYTHON_GC_THRESHOLD,
    PYPY_JIT_PARAMS,
    PYPY_NURSERY,
    applySocketOptions,
    inheritFromListeningPort,
    optionsToSet,
    pypyNurseryHint,
    socketOf,
    socketOptions,
    tuneCollector,
    tunePyPyJIT,
    withPyPyNursery,
)

NODELAY = (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
KEEPALIVE = (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
LINUX = sys.platform.startswith("linux")


class RecordingSocket:
    """
    A socket double: records C{setsockopt} calls; fails the options named
    in C{failing}.
    """

    def __init__(self, family: int = socket.AF_INET, failing: Tuple[int, ...] = ()) -> None:
        self.family = family
        self.failing = failing
        self.calls: List[Tuple[int, int, int]] = []

    def setsockopt(self, level: int, name: int, value: int) -> None:
        if name in self.failing:
            raise OSError(22, "Invalid argument")
        self.calls.append((level, name, value))


class SocketTransport(FakeTransport):
    """
    A L{FakeTransport} whose C{getHandle} is a L{RecordingSocket}, as a
    Twisted TCP transport's is its socket.
    """

    def __init__(self, handle: Any, peer: Tuple[str, int] = ("192.0.2.7", 40000)) -> None:
        super().__init__(peer)
        self.handle = handle

    def getHandle(self) -> Any:
        return self.handle


def connectWithHandle(factory: Any, handle: Any) -> Any:
    transport = SocketTransport(handle)
    proto = factory.buildProtocol(transport.getPeer())
    transport.protocol = proto
    proto.makeConnection(transport)
    return proto


def tomlListener(**keys: Any) -> ListenerConfig:
    return fromTOML({"listeners": [dict({"listen": ["tcp:0"]}, **keys)]}).listeners[0]


class SocketOptionsTests(SynchronousTestCase):
    def test_defaultIsNoDelayOnly(self) -> None:
        """
        By default only C{TCP_NODELAY} is set: keep-alive is off and the
        buffers are the kernel's.
        """
        self.assertEqual(socketOptions(ListenerConfig(listen=("tcp:0",))), (NODELAY,))

    def test_nothingWhenNoDelayOff(self) -> None:
        """
        With C{tcp_nodelay = false} and nothing else set the list is empty:
        nothing is done per connection.
        """
        self.assertEqual(socketOptions(tomlListener(tcp_nodelay=False)), ())

    def test_everyOption(self) -> None:
        """
        Every key becomes its option, keep-alive timers after
        C{SO_KEEPALIVE}.
        """
        if not LINUX:
            raise self.skipTest("TCP_KEEPIDLE/TCP_KEEPINTVL/TCP_KEEPCNT are Linux options")
        listener = tomlListener(keepalive=True, keepalive_idle=60, keepalive_interval=10, keepalive_count=5,
                                send_buffer=262144, receive_buffer=131072)
        self.assertEqual(socketOptions(listener), (
            NODELAY,
            KEEPALIVE,
            (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 60),
            (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10),
            (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 5),
            (socket.SOL_SOCKET, socket.SO_SNDBUF, 262144),
            (socket.SOL_SOCKET, socket.SO_RCVBUF, 131072),
        ))


class SocketOfTests(SynchronousTestCase):
    def test_plainTransport(self) -> None:
        """
        A TCP transport's handle is its socket.
        """
        sock = RecordingSocket()
        self.assertIs(socketOf(SocketTransport(sock)), sock)

    def test_throughWrappers(self) -> None:
        """
        A TLS transport's handle is not a socket (it is the OpenSSL
        connection): the socket is the wrapped transport's.
        """
        sock = RecordingSocket(socket.AF_INET6)

        class TLSLike:
            transport = SocketTransport(sock)

            def getHandle(self) -> Any:
                return object()

        self.assertIs(socketOf(TLSLike()), sock)

    def test_unixAndFakesLeftAlone(self) -> None:
        """
        A UNIX socket, or a transport without C{getHandle}, gets nothing.
        """
        unix = RecordingSocket(socket.AF_UNIX)
        self.assertIsNone(socketOf(SocketTransport(unix)))
        self.assertIsNone(socketOf(FakeTransport()))
        self.assertIsNone(applySocketOptions(SocketTransport(unix), (NODELAY,)))
        self.assertEqual(unix.calls, [])

    def test_everyOptionTriedAndFirstErrorReturned(self) -> None:
        """
        One failing option does not stop the others; the error is returned.
        """
        sock = RecordingSocket(failing=(socket.TCP_NODELAY,))
        failed = applySocketOptions(SocketTransport(sock), (NODELAY, KEEPALIVE))
        self.assertIsInstance(failed, OSError)
        self.assertEqual(sock.calls, [KEEPALIVE])


class AcceptedConnectionTests(SynchronousTestCase):
    """
    Every mode's factory sets its listener's options when a connection is
    made (C{ListenerFactory.connectionOpened}).
    """

    def test_forwardModeSetsOptions(self) -> None:
        """
        An HTTP-mode connection gets C{TCP_NODELAY} and C{SO_KEEPALIVE} on
        its socket, once, at C{connectionMade}.
        """
        factory = forwardFactory(listener=tomlListener(keepalive=True, receive_buffer=65536))
        sock = RecordingSocket()
        connectWithHandle(factory, sock)
        self.assertEqual(sock.calls, [NODELAY, KEEPALIVE, (socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)])

    def test_tcpModeSetsOptions(self) -> None:
        """
        A C{tcp}-mode connection gets the same options.
        """
        listener = tomlListener(mode="tcp", upstreams=["tcp:192.0.2.1:22"], keepalive=True)
        factory = TCPProxyFactory(listener, FakeConnector(), MemoryReactorClock())
        sock = RecordingSocket()
        connectWithHandle(factory, sock)
        self.assertEqual(sock.calls, [NODELAY, KEEPALIVE])

    def test_nothingSetWhenListIsEmpty(self) -> None:
        """
        C{tcp_nodelay = false} with nothing else: the socket is not touched.
        """
        factory = forwardFactory(listener=tomlListener(tcp_nodelay=False))
        sock = RecordingSocket()
        connectWithHandle(factory, sock)
        self.assertEqual(sock.calls, [])

    def test_failureLoggedOnceAndConnectionServed(self) -> None:
        """
        A C{setsockopt} error is logged once per listener, the other options
        are still set and the connection is served.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        factory = forwardFactory(listener=tomlListener(keepalive=True))
        for _ in range(2):
            sock = RecordingSocket(failing=(socket.SO_KEEPALIVE,))
            proto = connectWithHandle(factory, sock)
            self.assertEqual(sock.calls, [NODELAY])
            self.assertFalse(proto.transport.disconnecting)
        warnings = [e for e in events if "socket options" in e.get("log_format", "")]
        self.assertEqual(len(warnings), 1)

    def test_reloadedListenerUsedForNewConnections(self) -> None:
        """
        After C{reloadListener} the new settings apply to new connections.
        """
        factory = forwardFactory(listener=tomlListener())
        first = RecordingSocket()
        connectWithHandle(factory, first)
        factory.reloadListener(tomlListener(tcp_nodelay=False, keepalive=True))
        second = RecordingSocket()
        connectWithHandle(factory, second)
        self.assertEqual((first.calls, second.calls), ([NODELAY], [KEEPALIVE]))


class ReloadTests(SynchronousTestCase):
    """
    C{SIGHUP}: changed tuning keys are accepted and keep the listener (and
    its listening socket).
    """

    def test_changedValuesApplied(self) -> None:
        """
        A reload that turns keep-alive on and changes a buffer size keeps
        the factory and applies the new options to the next connection.
        """
        from txproxy.runtime.service import ProxyService

        fd, path = tempfile.mkstemp(suffix=".toml")
        os.close(fd)
        self.addCleanup(os.remove, path)
        base = '[[listeners]]\nname = "fwd"\nlisten = ["tcp:3128"]\nsend_buffer = 65536\n'
        with open(path, "w") as f:
            f.write(base)
        service = ProxyService(loadFile(path), MemoryReactorClock())
        service.installSignalHandlers = False
        service.startService()
        factory = service.factories["fwd"]
        with open(path, "w") as f:
            f.write(base.replace("65536", "131072") + "keepalive = true\ntcp_nodelay = false\n")
        self.assertTrue(service.reload())
        self.assertIs(service.factories["fwd"], factory)
        sock = RecordingSocket()
        connectWithHandle(factory, sock)
        self.assertEqual(sock.calls, [KEEPALIVE, (socket.SOL_SOCKET, socket.SO_SNDBUF, 131072)])


class _Opened(ForwardProxyProtocol):
    """
    Fires the factory's C{opened} Deferred with the server-side socket once
    the connection is made (and its options set), and C{closed} once it is
    lost.
    """

    def connectionMade(self) -> None:
        super().connectionMade()
        self.factory.opened.callback(self.transport.getHandle())

    def connectionLost(self, reason: Any = None) -> None:
        super().connectionLost(reason)
        self.factory.closed.callback(None)


class _Client(Protocol):
    def __init__(self) -> None:
        self.closed: defer.Deferred = defer.Deferred()

    def connectionLost(self, reason: Any = None) -> None:
        self.closed.callback(None)


class LoopbackTests(TestCase):
    """
    On a real listening port and a real loopback connection, the accepted
    socket carries the options (read back with C{getsockopt}).
    """

    def test_acceptedSocketHasOptions(self) -> defer.Deferred:
        """
        C{SO_KEEPALIVE}, C{TCP_NODELAY}, C{SO_RCVBUF} (and on Linux
        C{TCP_KEEPIDLE}, C{TCP_KEEPCNT}) read back from the accepted socket.
        """
        from twisted.internet import reactor
        from twisted.internet.endpoints import TCP4ClientEndpoint

        keys: Dict[str, Any] = {"keepalive": True, "receive_buffer": 65536}
        if LINUX:
            keys.update(keepalive_idle=77, keepalive_count=4)
        factory = forwardFactory(listener=tomlListener(**keys), protocol=_Opened, clock=reactor)
        factory.opened = defer.Deferred()
        factory.closed = defer.Deferred()
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        client = _Client()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        connected = endpoint.connect(Factory.forProtocol(lambda: client))

        def check(sock: socket.socket) -> defer.Deferred:
            try:
                self.assertEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 1)
                self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), 1)
                # Linux doubles SO_RCVBUF for its bookkeeping.
                self.assertGreaterEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF), 65536)
                if LINUX:
                    self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE), 77)
                    self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT), 4)
            finally:
                assert client.transport is not None
                client.transport.loseConnection()
            return defer.gatherResults([client.closed, factory.closed])

        return defer.gatherResults([factory.opened, connected]).addCallback(lambda results: check(results[0]))


class ListeningSocket(RecordingSocket):
    """
    A listening socket double: records C{setsockopt}, and answers
    C{TCP_INFO} with C{queued} connections waiting to be accepted (or
    fails, when C{queued} is L{None}).
    """

    def __init__(self, queued: Any = 0, failing: Tuple[int, ...] = ()) -> None:
        super().__init__(failing=failing)
        self.queued = queued

    def getsockopt(self, level: int, name: int, size: int) -> bytes:
        if self.queued is None:
            raise OSError(92, "Protocol not available")
        return struct.pack("24xII", self.queued, 1024)


NODELAY_OFF = (socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
KEEPALIVE_OFF = (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 0)
IDLE = (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPIDLE", 4), 60)


class InheritedOptionsTests(SynchronousTestCase):
    """
    L{inheritFromListeningPort} sets C{TCP_NODELAY} and C{SO_KEEPALIVE} on
    a listening socket, and L{optionsToSet} leaves them out for the
    connections that inherit them.
    """

    def setUp(self) -> None:
        # (The doubles stand for Linux sockets on any platform.)
        self.patch(tuning, "_LINUX", True)
        self.reactor = MemoryReactorClock()
        self.port = tcp.Port(0, Factory(), reactor=self.reactor)  # never listens
        self.port._realPortNumber = 1
        self.listening = ListeningSocket(queued=2)
        self.port.socket = self.listening

    def accepted(self, sessionno: int) -> Any:
        a, b = socket.socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        return tcp.Server(a, Protocol(), ("127.0.0.1", 9), self.port, sessionno, self.reactor)

    def test_listeningSocketGetsFlags(self) -> None:
        """
        The listening socket gets each inheritable flag, on or off as the
        options say.
        """
        self.assertTrue(inheritFromListeningPort(self.port, (NODELAY, IDLE)))
        self.assertEqual(self.listening.calls, [NODELAY, KEEPALIVE_OFF])

    def test_inheritedLeftOut(self) -> None:
        """
        Connections established after the listening socket got the flags
        (those beyond the ones queued then) get only the other options;
        the default list leaves nothing to set.
        """
        inheritFromListeningPort(self.port, (NODELAY, KEEPALIVE, IDLE))
        self.assertEqual(optionsToSet(self.accepted(2), (NODELAY, KEEPALIVE, IDLE)), (IDLE,))
        inheritFromListeningPort(self.port, (NODELAY,))
        self.assertEqual(optionsToSet(self.accepted(5), (NODELAY,)), ())

    def test_queuedConnectionsSetOneByOne(self) -> None:
        """
        The connections already queued when the listening socket got the
        flags get them (and the ones that must be off) one by one.
        """
        inheritFromListeningPort(self.port, (NODELAY,))
        self.assertEqual(optionsToSet(self.accepted(0), (NODELAY,)), (NODELAY, KEEPALIVE_OFF))
        self.assertEqual(optionsToSet(self.accepted(1), (NODELAY,)), (NODELAY, KEEPALIVE_OFF))
        self.assertEqual(optionsToSet(self.accepted(2), (NODELAY,)), ())

    def test_unknownQueueLength(self) -> None:
        """
        When the accept queue's length cannot be read, every connection the
        queue could hold is set one by one.
        """
        self.listening.queued = None
        inheritFromListeningPort(self.port, (NODELAY,))
        self.assertEqual(optionsToSet(self.accepted(100), (NODELAY,)), (NODELAY, KEEPALIVE_OFF))

    def test_reloadSetsListeningSocketAgain(self) -> None:
        """
        Options with other flags (a reload turned C{tcp_nodelay} off) set
        the listening socket again; connections queued meanwhile get the
        new flags one by one, later ones inherit them.
        """
        inheritFromListeningPort(self.port, (NODELAY,))
        self.port.sessionno = 10
        del self.listening.calls[:]
        self.assertEqual(optionsToSet(self.accepted(9), ()), (NODELAY_OFF, KEEPALIVE_OFF))
        self.assertEqual(self.listening.calls, [NODELAY_OFF, KEEPALIVE_OFF])
        self.assertEqual(optionsToSet(self.accepted(12), (KEEPALIVE,)), ())
        self.assertEqual(self.listening.calls, [NODELAY_OFF, KEEPALIVE_OFF, NODELAY_OFF, KEEPALIVE])

    def test_listeningSocketRefuses(self) -> None:
        """
        A listening socket that refuses an option leaves every connection
        to set its own.
        """
        self.listening.failing = (socket.SO_KEEPALIVE,)
        self.assertFalse(inheritFromListeningPort(self.port, (NODELAY,)))
        self.assertEqual(optionsToSet(self.accepted(50), (NODELAY,)), (NODELAY,))

    def test_otherTransportsAndPorts(self) -> None:
        """
        Transports that are no accepted TCP connection of a prepared port,
        and ports that are not plain TCP ports, keep the whole list.
        """
        self.assertEqual(optionsToSet(FakeTransport(("192.0.2.1", 1)), (NODELAY,)), (NODELAY,))
        self.assertEqual(optionsToSet(self.accepted(7), (NODELAY,)), (NODELAY,))  # port not prepared

        class MyPort(tcp.Port):
            pass

        self.assertFalse(inheritFromListeningPort(MyPort(0, Factory(), reactor=self.reactor), (NODELAY,)))
        self.assertFalse(inheritFromListeningPort(object(), (NODELAY,)))


class InheritedLoopbackTests(TestCase):
    """
    On a real listening port, an accepted socket inherits the flags and the
    factory sets only the rest.
    """

    def test_inherited(self) -> defer.Deferred:
        """
        With C{keepalive} and C{keepalive_idle}, the factory sets only
        C{TCP_KEEPIDLE} on the accepted socket; C{TCP_NODELAY} and
        C{SO_KEEPALIVE} read back set all the same.
        """
        from twisted.internet import reactor
        from twisted.internet.endpoints import TCP4ClientEndpoint

        factory = forwardFactory(listener=tomlListener(keepalive=True, keepalive_idle=77), protocol=_Opened,
                                 clock=reactor)
        factory.opened = defer.Deferred()
        factory.closed = defer.Deferred()
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        if not LINUX:
            # Elsewhere every connection sets its own (LoopbackTests).
            self.assertFalse(inheritFromListeningPort(port, socketOptions(factory.listener)))
            return defer.succeed(None)
        self.assertTrue(inheritFromListeningPort(port, socketOptions(factory.listener)))
        client = _Client()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        connected = endpoint.connect(Factory.forProtocol(lambda: client))

        def check(results: Any) -> defer.Deferred:
            sock, _ = results
            try:
                server = factory.protocols.copy().pop().transport
                self.assertEqual(optionsToSet(server, factory._socketOptions), (IDLE[:2] + (77,),))
                self.assertEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 1)
                self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), 1)
                self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE), 77)
            finally:
                assert client.transport is not None
                client.transport.loseConnection()
            return defer.gatherResults([client.closed, factory.closed])

        return defer.gatherResults([factory.opened, connected]).addCallback(check)


class PyPyNurseryTests(SynchronousTestCase):
    """
    L{withPyPyNursery} and L{pypyNurseryHint}.
    """

    def test_childrenOfPyPyGetTheNursery(self) -> None:
        """
        A PyPy child's environment gets L{PYPY_NURSERY} unless it names a
        nursery itself; a CPython child's is left alone.
        """
        self.assertEqual(withPyPyNursery({}, "PyPy"), {"PYPY_GC_NURSERY": PYPY_NURSERY})
        self.assertEqual(withPyPyNursery({"PYPY_GC_NURSERY": "4M"}, "PyPy"), {"PYPY_GC_NURSERY": "4M"})
        self.assertEqual(withPyPyNursery({"A": "1"}, "CPython"), {"A": "1"})

    def test_hint(self) -> None:
        """
        The start-up hint appears on PyPy without C{PYPY_GC_NURSERY} only.
        """
        hint = pypyNurseryHint({}, "PyPy")
        assert hint is not None
        self.assertIn("PYPY_GC_NURSERY=32M", hint)
        self.assertIsNone(pypyNurseryHint({"PYPY_GC_NURSERY": "32M"}, "PyPy"))
        self.assertIsNone(pypyNurseryHint({}, "CPython"))


class _FakeGC:
    def __init__(self) -> None:
        self.threshold = (700, 10, 10)

    def get_threshold(self) -> Tuple[int, int, int]:
        return self.threshold

    def set_threshold(self, *threshold: int) -> None:
        self.threshold = threshold


class CollectorTests(SynchronousTestCase):
    """
    L{tuneCollector}.
    """

    def test_cpythonDefault(self) -> None:
        """
        On CPython the first threshold becomes L{CPYTHON_GC_THRESHOLD}; the
        older generations keep theirs.
        """
        gc = _FakeGC()
        self.assertEqual(tuneCollector({}, "CPython", gc), (10000, None))
        self.assertEqual(gc.threshold, (CPYTHON_GC_THRESHOLD, 10, 10))

    def test_fromEnvironment(self) -> None:
        """
        C{TXPROXY_GC_THRESHOLD} replaces it: 700 is Python's default, 0
        turns the cyclic collector off.
        """
        for setting, expected in (("700", 700), (" 0 ", 0), ("50000", 50000)):
            gc = _FakeGC()
            self.assertEqual(tuneCollector({"TXPROXY_GC_THRESHOLD": setting}, "CPython", gc), (expected, None))
            self.assertEqual(gc.threshold, (expected, 10, 10))

    def test_badSettingRefused(self) -> None:
        """
        A setting that is not a whole number is reported in one line and
        the threshold is left alone.
        """
        for setting in ("-1", "1e4", "lots"):
            gc = _FakeGC()
            threshold, refused = tuneCollector({"TXPROXY_GC_THRESHOLD": setting}, "CPython", gc)
            self.assertIsNone(threshold)
            assert refused is not None
            self.assertIn("TXPROXY_GC_THRESHOLD", refused)
            self.assertNotIn("\n", refused)
            self.assertEqual(gc.threshold, (700, 10, 10))

    def test_notCPython(self) -> None:
        """
        PyPy's collector is another design: nothing is done there.
        """
        gc = _FakeGC()
        self.assertEqual(tuneCollector({"TXPROXY_GC_THRESHOLD": "5"}, "PyPy", gc), (None, None))
        self.assertEqual(gc.threshold, (700, 10, 10))

    def test_realModule(self) -> None:
        """
        Without a fake, this interpreter's own C{gc} module is set (and
        restored here) on CPython; on PyPy, whose C{gc} has no thresholds,
        it is not touched.
        """
        import gc

        implementation = platform.python_implementation()
        if implementation != "CPython":
            self.assertEqual(tuneCollector({"TXPROXY_GC_THRESHOLD": "1234"}, implementation), (None, None))
            return
        saved = gc.get_threshold()
        self.addCleanup(gc.set_threshold, *saved)
        threshold, refused = tuneCollector({"TXPROXY_GC_THRESHOLD": "1234"}, "CPython")
        self.assertEqual((threshold, refused), (1234, None))
        self.assertEqual(gc.get_threshold()[0], 1234)


class PyPyJITTests(SynchronousTestCase):
    """
    L{tunePyPyJIT}.
    """

    def test_notPyPy(self) -> None:
        """
        Nothing is done on another interpreter.
        """
        self.assertEqual(tunePyPyJIT({}, "CPython"), (None, None))

    def test_emptyKeepsDefaults(self) -> None:
        """
        An empty C{TXPROXY_PYPY_JIT} leaves PyPy's defaults.
        """
        self.assertEqual(tunePyPyJIT({"TXPROXY_PYPY_JIT": " "}, "PyPy"), (None, None))

    def test_traceLimitTooHigh(self) -> None:
        """
        A C{trace_limit} above what PyPy accepts is refused before PyPy sees
        it, with one line.
        """
        params, refused = tunePyPyJIT({"TXPROXY_PYPY_JIT": "threshold=500,trace_limit=30000"}, "PyPy")
        self.assertIsNone(params)
        assert refused is not None
        self.assertIn("at most 16384", refused)

    def test_onPyPy(self) -> None:
        """
        On PyPy the parameters are set; a name PyPy does not know is
        reported, not raised.
        """
        if platform.python_implementation() != "PyPy":
            # Without pypyjit the import fails: reported, not raised.
            params, refused = tunePyPyJIT({}, "PyPy")
            self.assertIsNone(params)
            assert refused is not None
            self.assertIn("refused", refused)
            return
        self.assertEqual(tunePyPyJIT({}, "PyPy"), (PYPY_JIT_PARAMS, None))
        params, refused = tunePyPyJIT({"TXPROXY_PYPY_JIT": "no_such_param=1"}, "PyPy")
        self.assertIsNone(params)
        assert refused is not None
        self.assertIn("no_such_param", refused)
