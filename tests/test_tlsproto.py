# -*- test-case-name: tests.test_tlsproto -*-
"""
Tests for L{txproxy.tls._proto}: the stdlib-C{ssl} server transport, in
memory against a stdlib client (no sockets): buffering before the
handshake, closing, C{close_notify}, errors, flow control.
"""

from __future__ import annotations

import os
import shutil
import ssl
import tempfile
from typing import Any, List, Optional

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol, IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from tests.test_tls import sharedCA, writeCertificate
from txproxy.tls._proto import TLSServerFactory, TLSServerProtocol
from txproxy.tls import ServerTLSOptions


@implementer(IHandshakeListener)
class App(Protocol):
    """
    Records what happens to it; may write or close when connected.
    """

    greeting = b""
    closeAtOnce = False
    handshakes = 0
    lost: Optional[Failure] = None

    def __init__(self) -> None:
        self.received: List[bytes] = []

    def connectionMade(self) -> None:
        if self.greeting:
            self.transport.write(self.greeting)
        if self.closeAtOnce:
            self.transport.loseConnection()

    def handshakeCompleted(self) -> None:
        self.handshakes += 1

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self.lost = reason


@implementer(IHalfCloseableProtocol)
class HalfApp(App):
    readLost = False

    def readConnectionLost(self) -> None:
        self.readLost = True

    def writeConnectionLost(self) -> None:
        pass


class Peer:
    """
    A stdlib TLS client over memory BIOs, joined to one server protocol on
    a L{StringTransport}.
    """

    def __init__(self, case: SynchronousTestCase, app: App, serverName: str = "a.test", handshake: bool = True) -> None:
        self.app = app
        self.server = TLSServerProtocol(case.options.serverObject, app)
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.1", 5000))
        self.server.makeConnection(self.transport)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cafile=case.caPath)
        ctx.set_alpn_protocols(["http/1.1"])
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.client = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname=serverName)
        self.received = b""
        self.closeNotified = False
        if handshake:
            self.handshake()

    def toServer(self) -> None:
        data = self.outgoing.read()
        if data:
            self.server.dataReceived(data)

    def fromServer(self) -> None:
        data = self.transport.value()
        self.transport.clear()
        if data:
            self.incoming.write(data)

    def handshake(self) -> None:
        for _ in range(5):
            try:
                self.client.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.toServer()
                self.fromServer()
        self.toServer()  # the client's Finished
        self.fromServer()

    def send(self, data: bytes) -> None:
        self.client.write(data)
        self.toServer()

    def read(self) -> bytes:
        self.fromServer()
        while True:
            try:
                chunk = self.client.read(65536)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:  # after our own close_notify
                chunk = b""
            if not chunk:
                self.closeNotified = True
                break
            self.received += chunk
        return self.received


def records(wire: bytes) -> List[int]:
    """
    The content types of the TLS records in C{wire}.
    """
    types = []
    while len(wire) >= 5:
        length = int.from_bytes(wire[3:5], "big")
        types.append(wire[0])
        wire = wire[5 + length :]
    return types


class TLSServerProtocolTests(SynchronousTestCase):
    def setUp(self) -> None:
        root = tempfile.mkdtemp(prefix="txproxy-tlsserver-")
        self.addCleanup(shutil.rmtree, root, True)
        self.caPath = sharedCA().caPath
        writeCertificate(os.path.join(root, "a.pem"), ["a.test"])
        self.options = ServerTLSOptions(root)

    def test_handshakeAndData(self) -> None:
        """
        Bytes cross both ways once the handshake is over; the application
        hears of the handshake once.
        """
        peer = Peer(self, App())
        self.assertEqual(peer.app.handshakes, 1)
        peer.send(b"GET / HTTP/1.1\r\n\r\n")
        self.assertEqual(b"".join(peer.app.received), b"GET / HTTP/1.1\r\n\r\n")
        peer.app.transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
        self.assertEqual(peer.read(), b"HTTP/1.1 200 OK\r\n\r\n")
        self.assertEqual(peer.server.negotiatedProtocol, b"http/1.1")
        self.assertIsNone(peer.server.getPeerCertificate())

    def test_writeBeforeHandshake(self) -> None:
        """
        What the application writes before the handshake is over is sent
        after it, in one record.
        """
        app = App()
        app.greeting = b"hello"
        peer = Peer(self, app, handshake=False)
        app.transport.write(b" world")
        self.assertEqual(peer.transport.value(), b"")
        peer.handshake()
        self.assertEqual(peer.read(), b"hello world")

    def test_loseConnectionBeforeHandshake(self) -> None:
        """
        Closed before the handshake with nothing written, the connection
        closes at once.
        """
        app = App()
        app.closeAtOnce = True
        peer = Peer(self, app, handshake=False)
        self.assertTrue(peer.transport.disconnecting)

    def test_loseConnectionAfterPendingWrite(self) -> None:
        """
        Closed before the handshake after writing, the data and
        C{close_notify} go once the handshake completes, then the TCP
        connection closes.
        """
        app = App()
        app.greeting = b"bye"
        app.closeAtOnce = True
        peer = Peer(self, app, handshake=False)
        self.assertFalse(peer.transport.disconnecting)
        peer.handshake()
        self.assertEqual(peer.read(), b"bye")
        self.assertTrue(peer.closeNotified)
        self.assertTrue(peer.transport.disconnecting)

    def test_loseConnection(self) -> None:
        """
        C{loseConnection} sends the data, then C{close_notify}, and closes
        the TCP connection without waiting for the peer; later writes are
        dropped.
        """
        peer = Peer(self, App())
        peer.app.transport.write(b"last")
        peer.app.transport.loseConnection()
        peer.app.transport.write(b"too late")
        self.assertTrue(peer.transport.disconnecting)
        self.assertEqual(peer.read(), b"last")
        self.assertTrue(peer.closeNotified)
        peer.server.connectionLost(Failure(ConnectionDone()))
        self.assertIsInstance(peer.app.lost.value, ConnectionDone)

    def test_loseWriteConnection(self) -> None:
        """
        C{loseWriteConnection} sends C{close_notify} and keeps reading; the
        peer's C{close_notify} closes the connection.  A C{loseConnection}
        meanwhile closes the TCP connection.
        """
        peer = Peer(self, HalfApp())
        peer.app.transport.loseWriteConnection()
        self.assertFalse(peer.transport.disconnecting)
        peer.read()
        self.assertTrue(peer.closeNotified)
        peer.send(b"more")
        self.assertEqual(b"".join(peer.app.received), b"more")
        try:
            peer.client.unwrap()
        except ssl.SSLError:
            pass
        peer.toServer()
        self.assertTrue(peer.transport.disconnecting)

        other = Peer(self, App())
        other.app.transport.loseWriteConnection()
        self.assertFalse(other.transport.disconnecting)
        other.app.transport.loseConnection()
        self.assertTrue(other.transport.disconnecting)

    def test_peerCloseNotifyHalfCloses(self) -> None:
        """
        A peer's C{close_notify} is C{readConnectionLost} for a
        half-closeable application, which may still answer.
        """
        peer = Peer(self, HalfApp())
        peer.send(b"request")
        try:
            peer.client.unwrap()
        except ssl.SSLWantReadError:
            pass
        peer.toServer()
        self.assertTrue(peer.app.readLost)
        self.assertFalse(peer.transport.disconnecting)
        peer.app.transport.write(b"answer")
        peer.app.transport.loseConnection()
        self.assertTrue(peer.transport.disconnecting)
        self.assertEqual(peer.read(), b"answer")

    def test_peerCloseNotifyCloses(self) -> None:
        """
        For any other application, a peer's C{close_notify} closes the
        connection (with our own C{close_notify}).
        """
        peer = Peer(self, App())
        try:
            peer.client.unwrap()
        except ssl.SSLWantReadError:
            pass
        peer.toServer()
        self.assertTrue(peer.transport.disconnecting)
        peer.read()
        self.assertTrue(peer.closeNotified)

    def test_nonASCIIServerName(self) -> None:
        """
        A ClientHello whose SNI name is not ASCII (split anywhere) gets a
        fatal C{unrecognized_name} alert and the connection is closed, with
        one log line: no traceback (the C{ssl} module's callback cannot
        decode the name) and no C{internal_error}.
        """
        import sys

        from twisted.logger import formatEvent, globalLogPublisher

        from txproxy.stream.clienthello import UNRECOGNIZED_NAME_ALERT, ServerNameError

        unraisable: List[Any] = []
        hook = sys.unraisablehook
        sys.unraisablehook = unraisable.append
        self.addCleanup(setattr, sys, "unraisablehook", hook)
        events: List[Any] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        # A real ClientHello for "xx.test", its name replaced by UTF-8 "é"
        # (two bytes, so every length still holds).
        template = Peer(self, App(), serverName="xx.test", handshake=False)
        try:
            template.client.do_handshake()
        except ssl.SSLWantReadError:
            pass
        hello = template.outgoing.read()
        self.assertEqual(hello.count(b"xx.test"), 1)
        hello = hello.replace(b"xx.test", b"\xc3\xa9.test")
        for cut in [1, 5, len(hello) // 2, len(hello) - 1]:
            del events[:]
            app = App()
            server = TLSServerProtocol(self.options.serverObject, app)
            transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.1", 5000))
            server.makeConnection(transport)
            server.dataReceived(hello[:cut])
            self.assertFalse(transport.disconnecting)
            server.dataReceived(hello[cut:])
            self.assertEqual(transport.value(), UNRECOGNIZED_NAME_ALERT)
            self.assertTrue(transport.disconnecting)
            server.dataReceived(b"more")
            server.connectionLost(Failure(ConnectionDone()))
            self.assertIsInstance(app.lost.value, ServerNameError)
            lines = [formatEvent(e) for e in events]
            self.assertEqual(len(lines), 1, lines)
            self.assertIn("192.0.2.1", lines[0])
            self.assertIn("not ASCII", lines[0])
        self.assertEqual(unraisable, [])

    def test_notTLS(self) -> None:
        """
        Clear text where a handshake belongs closes the connection, and the
        application's C{connectionLost} gets the TLS error.
        """
        app = App()
        server = TLSServerProtocol(self.options.serverObject, app)
        transport = StringTransport()
        server.makeConnection(transport)
        server.dataReceived(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        self.assertTrue(transport.disconnecting)
        server.dataReceived(b"more")
        server.connectionLost(Failure(ConnectionDone()))
        self.assertIsNotNone(app.lost)
        self.assertIsInstance(app.lost.value, ssl.SSLError)
        self.assertEqual(app.received, [])
        server.connectionLost(Failure(ConnectionDone()))  # once only

    def test_badRecordAfterHandshake(self) -> None:
        """
        A corrupt record after the handshake is a TLS error too.
        """
        peer = Peer(self, App())
        peer.client.write(b"data")
        wire = bytearray(peer.outgoing.read())
        wire[-1] ^= 1
        peer.server.dataReceived(bytes(wire))
        self.assertTrue(peer.transport.disconnecting)
        peer.server.connectionLost(Failure(ConnectionDone()))
        self.assertIsInstance(peer.app.lost.value, ssl.SSLError)
        self.assertEqual(peer.app.received, [])

    def test_writeSequenceIsOneRecord(self) -> None:
        """
        C{writeSequence} makes one record of its pieces.
        """
        peer = Peer(self, App())
        peer.app.transport.writeSequence([b"a", b"b", b"c"])
        self.assertEqual(records(peer.transport.value()), [23])
        self.assertEqual(peer.read(), b"abc")

    def test_closeInsideDataReceived(self) -> None:
        """
        An application that closes while handling a record is given no
        later record of the same chunk, as on TCP.
        """

        class Closer(App):
            def dataReceived(self, data: bytes) -> None:
                App.dataReceived(self, data)
                self.transport.loseConnection()

        peer = Peer(self, Closer())
        peer.client.write(b"one")
        peer.client.write(b"two")
        peer.toServer()
        self.assertEqual(peer.app.received, [b"one"])

    def test_flowControlPassesThrough(self) -> None:
        """
        A producer registered on the TLS transport is registered on the TCP
        transport; pausing and resuming the TLS transport pause and resume
        the TCP one.
        """
        peer = Peer(self, App())
        producer = object()
        peer.app.transport.registerProducer(producer, True)
        self.assertIs(peer.transport.producer, producer)
        peer.app.transport.unregisterProducer()
        self.assertIsNone(peer.transport.producer)
        peer.app.transport.pauseProducing()
        self.assertEqual(peer.transport.producerState, "paused")
        peer.app.transport.resumeProducing()
        self.assertEqual(peer.transport.producerState, "producing")

    def test_addressesAndHandle(self) -> None:
        """
        Addresses are the TCP transport's; the handle is the
        L{ssl.SSLObject}; other attributes come from the TCP transport.
        """
        peer = Peer(self, App())
        self.assertEqual(peer.app.transport.getPeer(), IPv4Address("TCP", "192.0.2.1", 5000))
        self.assertEqual(peer.app.transport.getHost(), peer.transport.getHost())
        self.assertIsInstance(peer.app.transport.getHandle(), ssl.SSLObject)
        self.assertIs(peer.app.transport.producerState, peer.transport.producerState)
        self.assertRaises(AttributeError, getattr, peer.app.transport, "noSuchThing")

    def test_abortConnection(self) -> None:
        """
        C{abortConnection} aborts the TCP connection.
        """
        peer = Peer(self, App())
        aborted = []
        peer.transport.abortConnection = lambda: aborted.append(True)  # type: ignore[method-assign]
        peer.app.transport.abortConnection()
        self.assertEqual(aborted, [True])

    def test_factory(self) -> None:
        """
        L{TLSServerFactory} wraps its factory's protocols, starts and stops
        it, and refuses what it refuses.
        """
        events: List[str] = []

        class AppFactory(Factory):
            protocol = App

            def doStart(self) -> None:
                events.append("start")

            def doStop(self) -> None:
                events.append("stop")

            def buildProtocol(self, addr: Any) -> Optional[Protocol]:
                if addr.port == 1:
                    return None
                return Factory.buildProtocol(self, addr)

        factory = TLSServerFactory(self.options.serverObject, AppFactory())
        factory.doStart()
        proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 2))
        self.assertIsInstance(proto, TLSServerProtocol)
        self.assertIsInstance(proto.wrappedProtocol, App)
        self.assertIsNone(factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1)))
        factory.doStop()
        self.assertEqual(events, ["start", "stop"])
        self.assertEqual(factory.logPrefix(), "AppFactory")


class _ClientPair:
    """
    A L{TLSClientEndpoint}-made client protocol and a L{TLSServerProtocol}
    joined in memory.
    """

    def __init__(
        self, options: ServerTLSOptions, hostname: str, caBundle: Optional[str], verify: bool = True,
        greeting: bytes = b"", pump: bool = True,
    ) -> None:
        """
        @param greeting: what the client application writes as soon as
            its connection is made.
        @param pump: whether to move bytes (the handshake) at once.
        """
        from twisted.internet.endpoints import TCP4ClientEndpoint
        from twisted.internet.testing import MemoryReactorClock

        from txproxy.tls import wrapClientTLS

        self.serverApp = App()
        self.server = TLSServerProtocol(options.serverObject, self.serverApp)
        self.serverTransport = StringTransport()
        self.server.makeConnection(self.serverTransport)
        reactor = MemoryReactorClock()
        endpoint = wrapClientTLS(TCP4ClientEndpoint(reactor, "127.0.0.1", 443), hostname, caBundle, verify)
        self.clientApp = App()
        self.clientApp.greeting = greeting
        self.connected = endpoint.connect(Factory.forProtocol(lambda: self.clientApp))
        self.client = reactor.tcpClients[0][2].buildProtocol(IPv4Address("TCP", "127.0.0.1", 443))
        self.clientTransport = StringTransport()
        self.client.makeConnection(self.clientTransport)
        if pump:
            self.pump()

    def pump(self) -> None:
        for _ in range(20):
            moved = False
            for src, dst in ((self.clientTransport, self.server), (self.serverTransport, self.client)):
                data = src.value()
                if data:
                    src.clear()
                    dst.dataReceived(data)
                    moved = True
            if not moved:
                return


class TLSClientTests(SynchronousTestCase):
    """
    L{txproxy.tls.wrapClientTLS}: the stdlib client against the stdlib
    server, in memory.
    """

    def setUp(self) -> None:
        root = tempfile.mkdtemp(prefix="txproxy-tlsclient-")
        self.addCleanup(shutil.rmtree, root, True)
        self.caPath = sharedCA().caPath
        names = os.path.join(root, "names")
        os.mkdir(names)
        writeCertificate(os.path.join(names, "a.pem"), ["a.test"])
        self.options = ServerTLSOptions(names)
        ips = os.path.join(root, "ips")
        os.mkdir(ips)
        writeCertificate(os.path.join(ips, "ip.pem"), ["127.0.0.1"])
        self.ipOptions = ServerTLSOptions(ips)

    def test_verifiedExchange(self) -> None:
        """
        A server whose certificate chains to the bundle and names the host
        is reached: SNI names it, ALPN is C{http/1.1}, what the client wrote
        before the handshake goes out after it, and bytes cross both ways.
        """
        pair = _ClientPair(self.options, "a.test", self.caPath)
        self.assertTrue(pair.clientApp.handshakes)
        self.assertIs(self.successResultOf(pair.connected), pair.clientApp)
        self.assertEqual(pair.server.getHandle().txproxyServerName, "a.test")
        self.assertEqual(pair.clientApp.transport.negotiatedProtocol, b"http/1.1")
        pair.clientApp.transport.write(b"GET / HTTP/1.1\r\n\r\n")
        pair.pump()
        self.assertEqual(b"".join(pair.serverApp.received), b"GET / HTTP/1.1\r\n\r\n")
        pair.serverApp.transport.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        pair.pump()
        self.assertEqual(b"".join(pair.clientApp.received), b"HTTP/1.1 204 No Content\r\n\r\n")

    def test_writeBeforeHandshakeWaits(self) -> None:
        """
        Bytes written as soon as the TCP connection is made wait for the
        handshake and the name check.
        """
        pair = _ClientPair(self.options, "a.test", self.caPath, greeting=b"early bytes", pump=False)
        self.assertEqual(records(pair.clientTransport.value()), [22])  # the ClientHello alone
        pair.pump()
        self.assertEqual(b"".join(pair.serverApp.received), b"early bytes")

    def test_wrongNameRefused(self) -> None:
        """
        A certificate for another name fails the connection with
        service_identity's error; nothing the client wrote is sent.
        """
        from service_identity import VerificationError

        pair = _ClientPair(self.options, "c.test", self.caPath)
        pair.clientApp.transport.write(b"secret")
        pair.pump()
        self.assertTrue(pair.clientTransport.disconnecting)
        self.assertEqual(pair.serverApp.received, [])
        pair.client.connectionLost(Failure(ConnectionDone()))
        self.assertIsInstance(pair.clientApp.lost.value, VerificationError)

    def test_untrustedRefused(self) -> None:
        """
        Without the bundle (the platform's trust store), the test CA is not
        trusted: the handshake fails with a certificate error.
        """
        pair = _ClientPair(self.options, "a.test", None)
        self.assertTrue(pair.clientTransport.disconnecting)
        pair.client.connectionLost(Failure(ConnectionDone()))
        self.assertIsInstance(pair.clientApp.lost.value, ssl.SSLCertVerificationError)
        self.assertEqual(pair.clientApp.handshakes, 0)

    def test_verifyOff(self) -> None:
        """
        With C{verify=False} neither the issuer nor the name is checked.
        """
        pair = _ClientPair(self.options, "c.test", None, verify=False)
        self.assertTrue(pair.clientApp.handshakes)
        self.assertFalse(pair.clientTransport.disconnecting)

    def test_ipAddress(self) -> None:
        """
        An IP address is checked against the certificate's IP names, and
        sent without SNI.
        """
        ok = _ClientPair(self.ipOptions, "127.0.0.1", self.caPath)
        self.assertTrue(ok.clientApp.handshakes)
        self.assertIsNone(getattr(ok.server.getHandle(), "txproxyServerName", None))
        wrong = _ClientPair(self.ipOptions, "127.0.0.2", self.caPath)
        self.assertEqual(wrong.clientApp.handshakes, 0)
        self.assertTrue(wrong.clientTransport.disconnecting)

    def test_badBundle(self) -> None:
        """
        A bundle that cannot be read is a one-line L{ConfigError}.
        """
        from twisted.internet.endpoints import TCP4ClientEndpoint
        from twisted.internet.testing import MemoryReactorClock

        from txproxy.errors import ConfigError
        from txproxy.tls import wrapClientTLS

        endpoint = TCP4ClientEndpoint(MemoryReactorClock(), "127.0.0.1", 443)
        e = self.assertRaises(ConfigError, wrapClientTLS, endpoint, "a.test", "/nonexistent/ca.pem")
        self.assertIn("/nonexistent/ca.pem", str(e))
