# -*- test-case-name: tests.test_alpn -*-
"""
Tests for ALPN on TLS listeners (C{--http2 on|off}): what
L{txproxy.tls.ServerTLSOptions} selects on every certificate's context,
what a reload changes, what L{txproxy.runtime.endpoints.listenerEndpoint}
and a C{SIGHUP} reload give a listener, and L{txproxy.tls.negotiatedProtocol}.

All in memory: L{tests.test_tls.Loopback} joins our TLS server to
Twisted's pyOpenSSL client over string transports.
"""

from __future__ import annotations

import os
import socket
import tempfile
from typing import Any

from OpenSSL import crypto
from twisted.internet.protocol import Factory
from twisted.internet.ssl import CertificateOptions
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from tests.test_tls import Loopback, RawClient, _Fixture, _Recorder
from txproxy.config import ListenerConfig, loadFile
from txproxy.errors import ConfigError
from txproxy.runtime.endpoints import alpnProtocols, listenerEndpoint
from txproxy.runtime.service import ProxyService
from txproxy.tls import ServerTLSOptions, TLSServerEndpoint, loadCertificateFile, negotiatedProtocol
from txproxy.tls._proto import TLSServerFactory

H2_FIRST = (b"h2", b"http/1.1")


class ServerALPNTests(SynchronousTestCase):
    """
    L{ServerTLSOptions} offering C{h2} before C{http/1.1}.
    """

    def setUp(self) -> None:
        self.f = _Fixture(self)
        self.f.cert("a.pem", ["a.test"])
        self.f.cert("w.pem", ["*.w.test"], rsaKey=True)
        self.own = self.f.outside("own.pem", ["own.test"])

    def options(self, **kw: Any) -> ServerTLSOptions:
        return ServerTLSOptions(self.f.certs, privateKey=self.own, **kw)

    def test_h2SelectedOnEveryCertificate(self) -> None:
        """
        A client offering C{h2} gets it whichever certificate SNI selects
        (no SNI, an exact name, a wildcard, an unknown name): every
        certificate's context offers the same protocols.
        """
        opts = self.options(acceptableProtocols=H2_FIRST)
        for name in (None, b"a.test", b"x.w.test", b"unknown.test"):
            loop = Loopback(opts, RawClient(name, alpn=[b"h2", b"http/1.1"]))
            self.assertTrue(loop.established, name)
            self.assertEqual(loop.server.negotiatedProtocol, b"h2", name)
            self.assertEqual(loop.client.negotiatedProtocol, b"h2", name)

    def test_serverPreference(self) -> None:
        """
        The server's order wins: a client listing C{http/1.1} first still
        gets C{h2}; a client offering only C{http/1.1} gets it.
        """
        opts = self.options(acceptableProtocols=H2_FIRST)
        loop = Loopback(opts, RawClient(b"a.test", alpn=[b"http/1.1", b"h2"]))
        self.assertEqual(loop.server.negotiatedProtocol, b"h2")
        loop = Loopback(opts, RawClient(b"a.test", alpn=[b"http/1.1"]))
        self.assertEqual(loop.server.negotiatedProtocol, b"http/1.1")

    def test_http11Only(self) -> None:
        """
        Offering C{http/1.1} alone (C{--http2 off}), a client offering
        C{h2} first gets C{http/1.1}, and one offering only C{h2} gets no
        ALPN answer (the handshake still completes).
        """
        opts = self.options(acceptableProtocols=(b"http/1.1",))
        loop = Loopback(opts, RawClient(b"x.w.test", alpn=[b"h2", b"http/1.1"]))
        self.assertEqual(loop.server.negotiatedProtocol, b"http/1.1")
        loop = Loopback(opts, RawClient(b"a.test", alpn=[b"h2"]))
        self.assertTrue(loop.established)
        self.assertIsNone(loop.server.negotiatedProtocol)

    def test_reloadFlipsALPN(self) -> None:
        """
        A reload with new C{acceptableProtocols} applies to handshakes
        begun after it; a connection negotiated before keeps its protocol;
        a reload that keeps them (the default) changes nothing.
        """
        opts = self.options(acceptableProtocols=H2_FIRST)
        before = Loopback(opts, RawClient(b"a.test", alpn=[b"h2", b"http/1.1"]))
        opts.reload(acceptableProtocols=(b"http/1.1",))
        self.assertEqual(opts.acceptableProtocols, (b"http/1.1",))
        after = Loopback(opts, RawClient(b"a.test", alpn=[b"h2", b"http/1.1"]))
        self.assertEqual(after.server.negotiatedProtocol, b"http/1.1")
        self.assertEqual(before.server.negotiatedProtocol, b"h2")
        opts.reload()
        self.assertEqual(opts.acceptableProtocols, (b"http/1.1",))
        opts.reload(acceptableProtocols=H2_FIRST)
        again = Loopback(opts, RawClient(b"x.w.test", alpn=[b"h2", b"http/1.1"]))
        self.assertEqual(again.server.negotiatedProtocol, b"h2")

    def test_preparedReloadChangesNothingUntilCommitted(self) -> None:
        """
        L{TLSServerEndpoint.prepareReload} with new protocols changes
        nothing until its result is called.
        """
        endpoint = TLSServerEndpoint(object(), self.options(acceptableProtocols=H2_FIRST))
        commit = endpoint.prepareReload(acceptableProtocols=(b"http/1.1",))
        loop = Loopback(endpoint.options, RawClient(b"a.test", alpn=[b"h2", b"http/1.1"]))
        self.assertEqual(loop.server.negotiatedProtocol, b"h2")
        commit()
        loop = Loopback(endpoint.options, RawClient(b"a.test", alpn=[b"h2", b"http/1.1"]))
        self.assertEqual(loop.server.negotiatedProtocol, b"http/1.1")

    def test_badProtocolName(self) -> None:
        """
        An ALPN name that is empty, too long or not ASCII bytes is a
        L{ConfigError}, at construction and on reload (nothing changes).
        """
        for bad in [b"", b"x" * 256, "h2", b"h\xff2"]:
            e = self.assertRaises(ConfigError, self.options, acceptableProtocols=(bad,))
            self.assertIn("bad ALPN protocol name", str(e))
        opts = self.options(acceptableProtocols=H2_FIRST)
        self.assertRaises(ConfigError, opts.reload, acceptableProtocols=(b"",))
        self.assertEqual(opts.acceptableProtocols, H2_FIRST)


class ListenerALPNTests(SynchronousTestCase):
    """
    What ALPN a listener's configuration gives its TLS endpoints.
    """

    def setUp(self) -> None:
        self.f = _Fixture(self)
        self.f.cert("a.pem", ["a.test"])
        self.reactor = MemoryReactorClock()

    def listener(self, **kw: Any) -> ListenerConfig:
        return ListenerConfig(listen=("tcp:8443",), certs=self.f.certs, **kw)

    def test_alpnProtocols(self) -> None:
        """
        HTTP modes: C{h2, http/1.1} with C{http2} on (the default),
        C{http/1.1} with it off; other modes: none.
        """
        self.assertEqual(alpnProtocols(self.listener(mode="reverse")), H2_FIRST)
        self.assertEqual(alpnProtocols(self.listener(mode="forward")), H2_FIRST)
        self.assertEqual(alpnProtocols(self.listener(mode="reverse", http2=False)), (b"http/1.1",))
        self.assertEqual(alpnProtocols(self.listener(mode="forward", http2=False)), (b"http/1.1",))
        for mode in ("tcp", "transparent", "sni"):
            self.assertEqual(alpnProtocols(self.listener(mode=mode)), ())

    def test_endpointNegotiates(self) -> None:
        """
        A reverse listener's TLS endpoint negotiates C{h2} by default and
        C{http/1.1} with C{http2} off.
        """
        on = listenerEndpoint(self.reactor, "tcp:8443", self.listener(mode="reverse"))
        off = listenerEndpoint(self.reactor, "tcp:8443", self.listener(mode="reverse", http2=False))
        for endpoint, expected in ((on, b"h2"), (off, b"http/1.1")):
            loop = Loopback(endpoint.options, RawClient(b"a.test", alpn=[b"h2", b"http/1.1"]))
            self.assertEqual(loop.server.negotiatedProtocol, expected)


class ReloadALPNTests(SynchronousTestCase):
    """
    A C{SIGHUP} reload that flips C{http2} changes the ALPN offer of the
    running TLS listener.
    """

    def test_reloadFlipsListenerALPN(self) -> None:
        """
        C{http2 = false} in the re-read file makes the kept TLS endpoint
        offer C{http/1.1} only; back to true, C{h2} again.
        """
        f = _Fixture(self)
        f.cert("a.pem", ["a.test"])
        fd, path = tempfile.mkstemp(suffix=".toml")
        os.close(fd)
        self.addCleanup(os.remove, path)
        text = (
            '[[listeners]]\nname = "web"\nlisten = ["tcp:8443"]\nmode = "reverse"\n'
            f"certs = {f.certs!r}\nHTTP2\n"
            '[[listeners.routes]]\nhost = "a.test"\nupstreams = ["http://192.0.2.1:80"]\n'
        )

        def write(line: str) -> None:
            with open(path, "w") as out:
                out.write(text.replace("HTTP2", line))

        write("")
        service = ProxyService(loadFile(path), MemoryReactorClock())
        service.installSignalHandlers = False
        [svc] = service.listenerServices
        endpoint = svc.endpoint
        self.assertIsInstance(endpoint, TLSServerEndpoint)
        self.assertEqual(endpoint.options.acceptableProtocols, H2_FIRST)
        write("http2 = false")
        self.assertTrue(service.reload())
        self.assertIs(service.listenerServices[0].endpoint, endpoint)
        self.assertEqual(endpoint.options.acceptableProtocols, (b"http/1.1",))
        loop = Loopback(endpoint.options, RawClient(b"a.test", alpn=[b"h2", b"http/1.1"]))
        self.assertEqual(loop.server.negotiatedProtocol, b"http/1.1")
        write('http2 = "on"')
        self.assertTrue(service.reload())
        loop = Loopback(endpoint.options, RawClient(b"a.test", alpn=[b"h2", b"http/1.1"]))
        self.assertEqual(loop.server.negotiatedProtocol, b"h2")


class NegotiatedProtocolTests(SynchronousTestCase):
    """
    L{negotiatedProtocol} on the transports an application protocol may
    have.
    """

    def setUp(self) -> None:
        self.f = _Fixture(self)
        self.f.cert("a.pem", ["a.test"])
        self.own = self.f.outside("own.pem", ["own.test"])

    def test_ourTLSTransport(self) -> None:
        """
        On our TLS listeners' transport (C{ssl.SSLObject} underneath) it is
        the selected protocol, or L{None} without a common one.
        """
        opts = ServerTLSOptions(self.f.certs, privateKey=self.own, acceptableProtocols=H2_FIRST)
        loop = Loopback(opts, RawClient(b"a.test", alpn=[b"h2", b"http/1.1"]))
        self.assertEqual(negotiatedProtocol(loop.serverApp.transport), b"h2")
        loop = Loopback(opts, RawClient(b"a.test", alpn=[b"http/1.1"]))
        self.assertEqual(negotiatedProtocol(loop.serverApp.transport), b"http/1.1")
        loop = Loopback(opts, RawClient(b"a.test"))
        self.assertTrue(loop.established)
        self.assertIsNone(negotiatedProtocol(loop.serverApp.transport))

    def test_twistedTLSMemoryBIOProtocol(self) -> None:
        """
        On Twisted's L{TLSMemoryBIOProtocol} (pyOpenSSL), client and server
        side, it is what C{get_alpn_proto_negotiated} says.
        """
        entry = loadCertificateFile(self.own)
        server = CertificateOptions(
            privateKey=crypto.PKey.from_cryptography_key(entry.privateKey),
            certificate=crypto.X509.from_cryptography(entry.certificate),
            acceptableProtocols=[b"h2", b"http/1.1"],
        )
        loop = Loopback(server, RawClient(b"own.test", alpn=[b"h2", b"http/1.1"]))
        self.assertTrue(loop.established)
        self.assertEqual(negotiatedProtocol(loop.serverApp.transport), b"h2")
        self.assertEqual(negotiatedProtocol(loop.clientApp.transport), b"h2")
        loop = Loopback(server, RawClient(b"own.test"))
        self.assertIsNone(negotiatedProtocol(loop.serverApp.transport))

    def test_beforeHandshake(self) -> None:
        """
        Before the handshake is over nothing was negotiated.
        """
        opts = ServerTLSOptions(self.f.certs, privateKey=self.own, acceptableProtocols=H2_FIRST)
        factory = TLSServerFactory(opts.serverObject, Factory.forProtocol(_Recorder))
        proto = factory.buildProtocol(None)
        assert proto is not None
        proto.makeConnection(StringTransport())
        self.assertIsNone(negotiatedProtocol(proto.wrappedProtocol.transport))

    def test_plainTransports(self) -> None:
        """
        A transport that is not TLS (a test transport, an object without
        C{getHandle}, one whose handle is a socket) gives L{None}.
        """
        self.assertIsNone(negotiatedProtocol(StringTransport()))
        self.assertIsNone(negotiatedProtocol(object()))
        sock = socket.socket()
        self.addCleanup(sock.close)

        class SocketTransport:
            def getHandle(self) -> Any:
                return sock

        self.assertIsNone(negotiatedProtocol(SocketTransport()))
