# -*- test-case-name: tests.test_tls -*-
"""
Tests for L{txproxy.tls}: the certificate store, server TLS in memory
(our L{TLSServerFactory} against Twisted's pyOpenSSL client), listening
endpoints on a L{MemoryReactor}, and client TLS options.
"""

from __future__ import annotations

import datetime
import os
import shutil
import ssl
import tempfile
from typing import Any, List, Optional, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHandshakeListener, IOpenSSLClientConnectionCreator
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tests.procs import TestCA
from txproxy.tls._proto import TLSServerFactory, TLSServerProtocol
from txproxy.errors import ConfigError
from txproxy.tls._server import _give  # the pyOpenSSL version shim
from txproxy.tls import (
    CertificateStore,
    ServerTLSOptions,
    TLSServerEndpoint,
    certificateNames,
    clientTLSOptions,
    hostMatchesNames,
    isTLSListener,
    isTLSTransport,
    loadCertificateFile,
    prepareReload,
    requestedServerName,
    servedNames,
    tlsServerEndpoint,
)

_CA: Optional[TestCA] = None


def sharedCA() -> TestCA:
    """
    One test CA for the whole module (key generation is not free).
    """
    global _CA
    if _CA is None:
        _CA = TestCA()
    return _CA


def writeCertificate(
    path: str,
    names: Sequence[str] = (),
    commonName: Optional[str] = None,
    days: int = 30,
    rsaKey: bool = False,
    withChain: bool = True,
    includeKey: bool = True,
    ca: Optional[TestCA] = None,
) -> str:
    """
    Write a key and a certificate issued by the test CA to C{path}: DNS
    subjectAltNames C{names} (no SAN extension when empty), subject CN
    C{commonName} (default: the first name).
    """
    ca = ca or sharedCA()
    key: Any = rsa.generate_private_key(65537, 2048) if rsaKey else ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cn = commonName or (names[0] if names else "unnamed")
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=max(1, 1 - days)))
        .not_valid_after(now + datetime.timedelta(days=days))
    )
    if names:
        sans: List[Any] = []
        for n in names:
            if n[0].isdigit():
                import ipaddress

                sans.append(x509.IPAddress(ipaddress.ip_address(n)))
            else:
                sans.append(x509.DNSName(n))
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca.key, hashes.SHA256())
    with open(path, "wb") as f:
        if includeKey:
            f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        f.write(cert.public_bytes(serialization.Encoding.PEM))
        if withChain:
            f.write(ca.cert.public_bytes(serialization.Encoding.PEM))
    return path


class _FakeSAN:
    """
    A certificate whose subjectAltName extension holds C{sans} (cryptography
    builds no DNSName from an IP literal's text only through a real CA
    that would refuse it; this stands in for a misissued one).
    """

    def __init__(self, cert: Any, sans: List[Any]) -> None:
        self.subject = cert.subject
        san = x509.SubjectAlternativeName(sans)
        self.extensions = x509.Extensions([x509.Extension(san.oid, False, san)])


def _names(cert: Any) -> frozenset:
    if isinstance(cert, crypto.X509):
        cert = cert.to_cryptography()
    return certificateNames(cert)


class _Recorder(Protocol):
    """
    Records what happens to it.
    """

    handshakeDone = False
    lost: Optional[Failure] = None

    def __init__(self) -> None:
        self.received = b""

    def handshakeCompleted(self) -> None:
        self.handshakeDone = True

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self.lost = reason


implementer(IHandshakeListener)(_Recorder)


@implementer(IOpenSSLClientConnectionCreator)
class RawClient:
    """
    A test client that verifies nothing, with full control of SNI, ALPN,
    versions, ciphers and a client certificate.
    """

    def __init__(
        self,
        serverName: Optional[bytes] = None,
        alpn: Sequence[bytes] = (),
        minVersion: Optional[int] = None,
        maxVersion: Optional[int] = None,
        ciphers: Optional[bytes] = None,
        clientCertificate: Optional[str] = None,
    ) -> None:
        self.serverName = serverName
        self.alpn = list(alpn)
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        if minVersion is not None:
            ctx.set_min_proto_version(minVersion)
        if maxVersion is not None:
            ctx.set_max_proto_version(maxVersion)
        if ciphers is not None:
            ctx.set_cipher_list(ciphers)
        if clientCertificate is not None:
            entry = loadCertificateFile(clientCertificate)
            _give(ctx.use_certificate, entry.certificate, crypto.X509.from_cryptography)
            _give(ctx.use_privatekey, entry.privateKey, crypto.PKey.from_cryptography_key)
        self.context = ctx

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        conn = SSL.Connection(self.context, None)
        if self.serverName is not None:
            conn.set_tlsext_host_name(self.serverName)
        if self.alpn:
            conn.set_alpn_protos(self.alpn)
        return conn


class Loopback:
    """
    A server and a client TLS protocol joined in memory.

    @ivar outer: the protocol on the server's connection (the TLS one, or
        a wrapper around it).
    @ivar server: the server's L{TLSServerProtocol} (or
        L{TLSMemoryBIOProtocol} for a pyOpenSSL server creator).
    @ivar client: the client's.
    @ivar serverApp: the server's application protocol (a L{_Recorder}).
    @ivar clientApp: the client's.
    """

    def __init__(
        self, serverCreator: Any, clientCreator: Any, listeningFactory: Any = None, prelude: bytes = b"", clock: Any = None
    ) -> None:
        """
        @param serverCreator: the server's connection creator (unused when
            C{listeningFactory} is given).
        @param clientCreator: the client's.
        @param listeningFactory: the factory a listening port would use, if
            not a L{TLSMemoryBIOFactory} of C{serverCreator}.
        @param prelude: bytes the client sends in clear before TLS.
        """
        from twisted.internet.task import Clock

        self.clock = clock if clock is not None else Clock()
        if listeningFactory is None and isinstance(serverCreator, ServerTLSOptions):
            listeningFactory = TLSServerFactory(serverCreator.serverObject, Factory.forProtocol(_Recorder))
        elif listeningFactory is None:
            listeningFactory = TLSMemoryBIOFactory(serverCreator, False, Factory.forProtocol(_Recorder), self.clock)
        clientFactory = TLSMemoryBIOFactory(clientCreator, True, Factory.forProtocol(_Recorder), self.clock)
        self.outer = listeningFactory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        self.client = clientFactory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 443))
        self.serverTransport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        self.clientTransport = StringTransport()
        if prelude:
            self.clientTransport.write(prelude)
        self.outer.makeConnection(self.serverTransport)
        self.client.makeConnection(self.clientTransport)
        self._lost: List[Any] = []
        self.server = self.outer
        while not isinstance(self.server, (TLSMemoryBIOProtocol, TLSServerProtocol)):
            self.server = self.server.wrappedProtocol
        self.serverApp: _Recorder = self.server.wrappedProtocol
        self.clientApp: _Recorder = self.client.wrappedProtocol
        self.pump()

    def pump(self) -> None:
        """
        Move bytes both ways until both sides are quiet; a side whose
        transport was closed gets C{connectionLost} once its last bytes are
        delivered (and receives nothing more).
        """
        for _ in range(100):
            self.clock.advance(0)
            moved = False
            for srcTransport, _src, dst in (
                (self.clientTransport, self.client, self.outer),
                (self.serverTransport, self.outer, self.client),
            ):
                data = srcTransport.value()
                if data:
                    srcTransport.clear()
                    moved = True
                    if dst not in self._lost:
                        dst.dataReceived(data)
            for transport, proto in ((self.clientTransport, self.client), (self.serverTransport, self.outer)):
                if transport.disconnecting and proto not in self._lost and not transport.value():
                    self._lost.append(proto)
                    proto.connectionLost(Failure(ConnectionDone()))
                    moved = True
            if not moved:
                return

    @property
    def established(self) -> bool:
        return self.serverApp.handshakeDone and self.clientApp.handshakeDone

    def servedCertificateNames(self) -> frozenset:
        cert = self.client.getPeerCertificate()
        assert cert is not None
        return _names(cert)


class _Fixture:
    """
    Folders of certificates for the tests.
    """

    def __init__(self, case: SynchronousTestCase) -> None:
        self.ca = sharedCA()
        self.root = tempfile.mkdtemp(prefix="txproxy-tls-test-")
        case.addCleanup(shutil.rmtree, self.root, True)
        self.certs = os.path.join(self.root, "certs")
        os.mkdir(self.certs)
        self.caPath = os.path.join(self.root, "ca.pem")
        shutil.copy(self.ca.caPath, self.caPath)

    def cert(self, filename: str, names: Sequence[str] = (), **kw: Any) -> str:
        return writeCertificate(os.path.join(self.certs, filename), names, **kw)

    def outside(self, filename: str, names: Sequence[str] = (), **kw: Any) -> str:
        return writeCertificate(os.path.join(self.root, filename), names, **kw)


class CertificateNamesTests(SynchronousTestCase):
    """
    L{certificateNames} and L{loadCertificateFile}.
    """

    def setUp(self) -> None:
        self.f = _Fixture(self)

    def test_subjectAltNames(self) -> None:
        """
        The names are the DNS subjectAltNames, lower-case, and the IP
        address SANs in canonical form; the CN is not a name.
        """
        path = self.f.cert("a.pem", ["A.test", "*.a.test", "127.0.0.1", "2001:DB8:0::1"], commonName="cn.test")
        self.assertEqual(loadCertificateFile(path).names, frozenset({"a.test", "*.a.test", "127.0.0.1", "2001:db8::1"}))

    def test_commonNameWithoutSubjectAltName(self) -> None:
        """
        A certificate without a subjectAltName extension is named by its CN.
        """
        path = self.f.cert("cn.pem", [], commonName="CN.test")
        self.assertEqual(loadCertificateFile(path).names, frozenset({"cn.test"}))

    def test_onlyIPSubjectAltNames(self) -> None:
        """
        A certificate whose subjectAltNames are only IP addresses is named
        by them alone: the CN is not used once a SAN extension exists (RFC
        6125).
        """
        path = self.f.cert("ip.pem", ["127.0.0.1"], commonName="cn.test")
        self.assertEqual(loadCertificateFile(path).names, frozenset({"127.0.0.1"}))

    def test_ipWrittenAsDNSNameIsNotAName(self) -> None:
        """
        An IP address written as a DNS subjectAltName or as the CN is not a
        name (an IP literal matches only an iPAddress SAN).
        """
        from cryptography import x509 as _x509

        from txproxy.tls import certificateNames

        path = self.f.cert("cn-ip.pem", [], commonName="127.0.0.1")
        self.assertEqual(loadCertificateFile(path).names, frozenset())
        cert = loadCertificateFile(self.f.cert("d.pem", ["d.test"])).certificate
        fake = _FakeSAN(cert, [_x509.DNSName("127.0.0.1"), _x509.DNSName("d.test")])
        self.assertEqual(certificateNames(fake), frozenset({"d.test"}))

    def test_leafIsTheCertificateMatchingTheKey(self) -> None:
        """
        The leaf is the certificate matching the key, wherever it is in the
        file; the others are the chain, in file order.
        """
        path = self.f.cert("a.pem", ["a.test"])
        with open(path, "rb") as f:
            data = f.read()
        blocks = data.split(b"-----END")
        # key, leaf, CA -> key, CA, leaf
        keyEnd = data.index(b"-----END PRIVATE KEY-----") + len(b"-----END PRIVATE KEY-----\n")
        key, rest = data[:keyEnd], data[keyEnd:]
        leafEnd = rest.index(b"-----END CERTIFICATE-----") + len(b"-----END CERTIFICATE-----\n")
        leaf, caPEM = rest[:leafEnd], rest[leafEnd:]
        self.assertTrue(blocks)
        with open(path, "wb") as f:
            f.write(caPEM + key + leaf)
        entry = loadCertificateFile(path)
        self.assertEqual(entry.names, frozenset({"a.test"}))
        self.assertEqual([c.subject for c in entry.chain], [self.f.ca.cert.subject])

    def test_separateKeyAndCertificateFiles(self) -> None:
        """
        The key and the certificates may be in two files (an C{ssl:}
        listener's C{privateKey} and C{certKey}), plus a chain file.
        """
        both = self.f.outside("both.pem", ["k.test"], withChain=False)
        with open(both, "rb") as f:
            data = f.read()
        cut = data.index(b"-----BEGIN CERTIFICATE-----")
        keyPath = os.path.join(self.f.root, "k.key")
        certPath = os.path.join(self.f.root, "k.crt")
        with open(keyPath, "wb") as f:
            f.write(data[:cut])
        with open(certPath, "wb") as f:
            f.write(data[cut:])
        entry = loadCertificateFile(keyPath, certPath, self.f.caPath)
        self.assertEqual(entry.names, frozenset({"k.test"}))
        self.assertEqual(entry.path, certPath)
        self.assertEqual(len(entry.chain), 1)


class BadCertificateFileTests(SynchronousTestCase):
    """
    A file that does not load is a L{ConfigError} with a one-line message
    naming the file.
    """

    def setUp(self) -> None:
        self.f = _Fixture(self)

    def assertBad(self, path: str, *fragments: str) -> None:
        e = self.assertRaises(ConfigError, loadCertificateFile, path)
        text = str(e)
        self.assertNotIn("\n", text)
        self.assertIn(path, text)
        for fragment in fragments:
            self.assertIn(fragment, text)

    def write(self, name: str, data: bytes) -> str:
        path = os.path.join(self.f.certs, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def test_garbage(self) -> None:
        """
        A file with no PEM block at all has no private key.
        """
        self.assertBad(self.write("junk.pem", b"not a certificate\n"), "no private key")

    def test_certificateWithoutKey(self) -> None:
        """
        A certificate alone is refused.
        """
        self.assertBad(self.f.cert("nokey.pem", ["a.test"], includeKey=False), "no private key")

    def test_keyWithoutCertificate(self) -> None:
        """
        A key alone is refused.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        self.assertBad(self.write("k.pem", pem), "no certificate")

    def test_keyMismatch(self) -> None:
        """
        A key matching none of the certificates is refused.
        """
        path = self.f.cert("a.pem", ["a.test"])
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        with open(path, "rb") as f:
            data = f.read()
        cut = data.index(b"-----BEGIN CERTIFICATE-----")
        self.assertBad(self.write("a.pem", pem + data[cut:]), "no certificate matches the private key")

    def test_corruptCertificate(self) -> None:
        """
        A damaged certificate block is reported as a bad certificate.
        """
        path = self.f.cert("a.pem", ["a.test"])
        with open(path, "rb") as f:
            data = f.read()
        data = data.replace(b"-----BEGIN CERTIFICATE-----\nMII", b"-----BEGIN CERTIFICATE-----\nXXX", 1)
        self.assertBad(self.write("a.pem", data), "bad certificate")

    def test_encryptedKey(self) -> None:
        """
        Encrypted keys are refused (there is no way to ask for a password).
        """
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw")
        )
        self.assertBad(self.write("enc.pem", pem), "encrypted")

    def test_twoKeys(self) -> None:
        """
        A file with two private keys is ambiguous.
        """
        path = self.f.cert("a.pem", ["a.test"])
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        with open(path, "rb") as f:
            data = f.read()
        self.assertBad(self.write("a.pem", pem + data), "more than one private key")

    def test_missingFile(self) -> None:
        """
        A missing file is reported with the system's reason.
        """
        self.assertBad(os.path.join(self.f.root, "nope.pem"), "No such file")


class CertificateStoreTests(SynchronousTestCase):
    """
    L{CertificateStore}: loading a folder, matching names, the default
    certificate, reloading.
    """

    def setUp(self) -> None:
        self.f = _Fixture(self)

    def test_exactNames(self) -> None:
        """
        A server name finds the certificate carrying it, ignoring case and
        a trailing dot.
        """
        a = self.f.cert("a.pem", ["a.test"])
        b = self.f.cert("b.pem", ["b.test", "www.b.test"])
        store = CertificateStore(self.f.certs)
        self.assertEqual(store.find("a.test").path, a)
        self.assertEqual(store.find("B.TEST").path, b)
        self.assertEqual(store.find("www.b.test.").path, b)
        self.assertIsNone(store.find("c.test"))

    def test_wildcardCoversExactlyOneLabel(self) -> None:
        """
        C{*.a.test} covers C{x.a.test}, but neither C{a.test} nor
        C{x.y.a.test} (RFC 6125).
        """
        w = self.f.cert("w.pem", ["*.a.test"])
        store = CertificateStore(self.f.certs)
        self.assertEqual(store.find("x.a.test").path, w)
        self.assertEqual(store.find("X.A.Test").path, w)
        self.assertIsNone(store.find("a.test"))
        self.assertIsNone(store.find("x.y.a.test"))
        self.assertIsNone(store.find(".a.test"))

    def test_partialWildcardIgnored(self) -> None:
        """
        A partial-label wildcard (C{f*.a.test}) matches nothing.
        """
        self.f.cert("p.pem", ["f*.a.test", "p.test"])
        store = CertificateStore(self.f.certs)
        self.assertIsNone(store.find("foo.a.test"))
        self.assertIsNotNone(store.find("p.test"))

    def test_exactBeatsWildcard(self) -> None:
        """
        An exact name wins over a wildcard covering it, whatever the files'
        order.
        """
        self.f.cert("0-wild.pem", ["*.a.test"])
        www = self.f.cert("1-www.pem", ["www.a.test"])
        store = CertificateStore(self.f.certs)
        self.assertEqual(store.find("www.a.test").path, www)

    def test_laterExpiryWins(self) -> None:
        """
        When two certificates claim a name, the one expiring last is
        served (a renewed certificate beside the old one).
        """
        self.f.cert("a-old.pem", ["a.test"], days=10)
        new = self.f.cert("a-new.pem", ["a.test"], days=60)
        store = CertificateStore(self.f.certs)
        self.assertEqual(store.find("a.test").path, new)

    def test_expiredServedWithWarning(self) -> None:
        """
        An expired certificate is still loaded and served (a warning is
        logged): refusing it would take the whole listener down.
        """
        from twisted.logger import globalLogPublisher

        events: List[Any] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        old = self.f.cert("old.pem", ["old.test"], days=-1)
        store = CertificateStore(self.f.certs)
        self.assertEqual(store.find("old.test").path, old)
        self.assertTrue(any(e.get("path") == old and "expired" in e.get("log_format", "") for e in events))

    def test_otherFilesIgnored(self) -> None:
        """
        Only C{*.pem} regular files are read.
        """
        a = self.f.cert("a.pem", ["a.test"])
        with open(os.path.join(self.f.certs, "README.txt"), "w") as f:
            f.write("hello")
        with open(os.path.join(self.f.certs, "a.key"), "w") as f:
            f.write("junk")
        os.mkdir(os.path.join(self.f.certs, "old.pem"))
        store = CertificateStore(self.f.certs)
        self.assertEqual([e.path for e in store.entries], [a])

    def test_defaultIsFirstFile(self) -> None:
        """
        Without an C{ssl:} certificate, the default is the first file in
        name order.
        """
        b = self.f.cert("b.pem", ["b.test"])
        self.f.cert("c.pem", ["c.test"])
        store = CertificateStore(self.f.certs)
        self.assertEqual(store.default.path, b)
        self.assertEqual(store.select(None).path, b)
        self.assertEqual(store.select("unknown.test").path, b)

    def test_defaultPem(self) -> None:
        """
        A file named C{default.pem} is the default certificate.
        """
        self.f.cert("a.pem", ["a.test"])
        d = self.f.cert("default.pem", ["d.test"])
        store = CertificateStore(self.f.certs)
        self.assertEqual(store.default.path, d)
        self.assertEqual(store.select("a.test").names, frozenset({"a.test"}))

    def test_listenerCertificateIsDefault(self) -> None:
        """
        An C{ssl:} listener's own certificate is the default; it is not one
        of the folder's entries, but its names are found.
        """
        own = self.f.outside("own.pem", ["own.test"])
        self.f.cert("a.pem", ["a.test"])
        store = CertificateStore(self.f.certs, own)
        self.assertEqual(store.default.path, own)
        self.assertEqual([os.path.basename(e.path) for e in store.entries], ["a.pem"])
        self.assertEqual(store.find("own.test").path, own)
        self.assertEqual(store.select("zzz.test").path, own)

    def test_listenerCertificateWithoutFolder(self) -> None:
        """
        An C{ssl:} listener needs no folder.
        """
        own = self.f.outside("own.pem", ["own.test"])
        store = CertificateStore(None, own)
        self.assertEqual(store.entries, ())
        self.assertEqual(store.select("own.test").path, own)

    def test_emptyFolderWithoutDefault(self) -> None:
        """
        A folder with no certificate and no listener certificate leaves
        nothing to serve.
        """
        e = self.assertRaises(ConfigError, CertificateStore, self.f.certs)
        self.assertIn("no *.pem certificate", str(e))
        self.assertIn(self.f.certs, str(e))

    def test_nothingAtAll(self) -> None:
        """
        A store needs a folder or a default certificate.
        """
        self.assertRaises(ConfigError, CertificateStore)

    def test_missingFolder(self) -> None:
        """
        A missing folder is a one-line error naming it.
        """
        missing = os.path.join(self.f.root, "missing")
        e = self.assertRaises(ConfigError, CertificateStore, missing)
        self.assertIn(missing, str(e))
        self.assertNotIn("\n", str(e))

    def test_badFileFailsTheLoad(self) -> None:
        """
        One bad file fails the whole store, naming that file.
        """
        self.f.cert("a.pem", ["a.test"])
        bad = os.path.join(self.f.certs, "b.pem")
        with open(bad, "w") as f:
            f.write("junk\n")
        e = self.assertRaises(ConfigError, CertificateStore, self.f.certs)
        self.assertIn(bad, str(e))
        self.assertNotIn("\n", str(e))

    def test_reloadSeesChanges(self) -> None:
        """
        L{CertificateStore.reload} reads the folder again: added and
        removed files are seen.
        """
        a = self.f.cert("a.pem", ["a.test"])
        store = CertificateStore(self.f.certs)
        self.f.cert("b.pem", ["b.test"])
        os.remove(a)
        store.reload()
        self.assertIsNone(store.find("a.test"))
        self.assertIsNotNone(store.find("b.test"))
        self.assertEqual(store.generation, 2)

    def test_reloadAllOrNothing(self) -> None:
        """
        A reload meeting a bad file raises L{ConfigError} and keeps the
        whole previous set (even the good new files are not taken).
        """
        a = self.f.cert("a.pem", ["a.test"])
        store = CertificateStore(self.f.certs)
        before = store.entries
        self.f.cert("b.pem", ["b.test"])
        bad = os.path.join(self.f.certs, "c.pem")
        with open(bad, "w") as f:
            f.write("junk\n")
        e = self.assertRaises(ConfigError, store.reload)
        self.assertIn(bad, str(e))
        self.assertIs(store.entries, before)
        self.assertEqual(store.find("a.test").path, a)
        self.assertIsNone(store.find("b.test"))
        self.assertEqual(store.generation, 1)
        os.remove(bad)
        store.reload()
        self.assertIsNotNone(store.find("b.test"))

    def test_reloadRereadsListenerCertificate(self) -> None:
        """
        The listener's own certificate file is read again on reload (a
        renewed certificate at the same path).
        """
        own = self.f.outside("own.pem", ["own.test"])
        store = CertificateStore(None, own)
        self.f.outside("own.pem", ["renewed.test"])
        store.reload()
        self.assertEqual(store.default.names, frozenset({"renewed.test"}))


class HostMatchesNamesTests(SynchronousTestCase):
    """
    L{hostMatchesNames}: a request's C{Host} against a certificate's names.
    """

    def test_table(self) -> None:
        """
        Ports are ignored, case and a trailing dot too; wildcards cover
        exactly one label; malformed hosts never match.
        """
        names = frozenset({"a.test", "*.w.test"})
        cases = [
            ("a.test", True),
            ("A.Test:8443", True),
            ("a.test.", True),
            ("x.w.test", True),
            ("x.w.test:443", True),
            ("w.test", False),
            ("x.y.w.test", False),
            (".w.test", False),
            ("b.test", False),
            ("", False),
            ("a.test:", False),
            ("a.test:x", False),
            ("a.test:1:2", False),
            ("[::1]:443", False),
            ("[::1", False),
        ]
        for host, expected in cases:
            self.assertEqual(hostMatchesNames(host, names), expected, host)
        self.assertTrue(hostMatchesNames("[::1]:443", ["::1"]))
        self.assertFalse(hostMatchesNames("a.test", frozenset()))

    def test_ipAddresses(self) -> None:
        """
        An IP literal matches the same address among the names (as
        L{certificateNames} writes iPAddress SANs), in any spelling, with
        or without a port; never a wildcard.
        """
        names = frozenset({"127.0.0.1", "2001:db8::1", "*.0.0.1", "a.test"})
        cases = [
            ("127.0.0.1", True),
            ("127.0.0.1:8443", True),
            ("127.0.0.2", False),
            ("10.0.0.1", False),
            ("[2001:db8::1]", True),
            ("[2001:DB8:0:0::1]:443", True),
            ("[2001:db8::2]", False),
            ("[::ffff:127.0.0.1]", True),
            ("[fe80::1%25eth0]", False),
        ]
        for host, expected in cases:
            self.assertEqual(hostMatchesNames(host, names), expected, host)
        self.assertFalse(hostMatchesNames("127.0.0.1", frozenset({"*.0.0.1", "0.0.1"})))


class ServerTLSTests(SynchronousTestCase):
    """
    L{ServerTLSOptions} in memory: certificate selection by SNI, versions,
    ciphers, ALPN, client certificates, reload.
    """

    def setUp(self) -> None:
        self.f = _Fixture(self)
        self.a = self.f.cert("a.pem", ["a.test"])
        self.b = self.f.cert("b.pem", ["b.test"])
        self.w = self.f.cert("w.pem", ["*.w.test"], rsaKey=True)
        self.own = self.f.outside("own.pem", ["own.test"])

    def options(self, **kw: Any) -> ServerTLSOptions:
        kw.setdefault("privateKey", self.own)
        return ServerTLSOptions(self.f.certs, **kw)

    def test_serverObject(self) -> None:
        """
        L{ServerTLSOptions.serverObject} makes a server-side
        L{ssl.SSLObject} on the default certificate's context.
        """
        obj = self.options().serverObject(ssl.MemoryBIO(), ssl.MemoryBIO())
        self.assertIsInstance(obj, ssl.SSLObject)
        self.assertTrue(obj.server_side)
        self.assertEqual(obj.context.entry.names, frozenset({"own.test"}))

    def test_sniSelectsCertificate(self) -> None:
        """
        The certificate matching the client's SNI name is served, and the
        chain verifies for that name.
        """
        opts = self.options()
        with open(self.f.caPath, "rb") as f:
            trust = Certificate.loadPEM(f.read())
        for name in ("a.test", "b.test", "x.w.test", "own.test"):
            loop = Loopback(opts, optionsForClientTLS(name, trustRoot=trust))
            self.assertTrue(loop.established, name)
            self.assertTrue(hostMatchesNames(name, loop.servedCertificateNames()), name)
            self.assertEqual(requestedServerName(loop.server), name)

    def test_defaultWithoutSNI(self) -> None:
        """
        Without SNI the default (the listener's own) certificate is served.
        """
        loop = Loopback(self.options(), RawClient())
        self.assertTrue(loop.established)
        self.assertEqual(loop.servedCertificateNames(), frozenset({"own.test"}))
        self.assertEqual(servedNames(loop.server), frozenset({"own.test"}))
        self.assertIsNone(requestedServerName(loop.server))

    def test_ipAddressSelectsCertificate(self) -> None:
        """
        A certificate with an iPAddress subjectAltName is served to a
        client that connected to that address without SNI (what clients do
        for C{https://IP/}; the memory transport's local address is
        10.0.0.1), or that sent the address as SNI; its names then pass the
        C{421} check for the address.
        """
        self.f.cert("ip.pem", ["ip.test", "10.0.0.1"])
        self.f.cert("ip6.pem", ["2001:db8::5"])
        loop = Loopback(self.options(), RawClient())
        self.assertTrue(loop.established)
        self.assertEqual(servedNames(loop.server), frozenset({"ip.test", "10.0.0.1"}))
        self.assertTrue(hostMatchesNames("10.0.0.1", servedNames(loop.server)))
        self.assertIsNone(requestedServerName(loop.server))
        loop = Loopback(self.options(), RawClient(b"2001:db8::5"))
        self.assertEqual(servedNames(loop.server), frozenset({"2001:db8::5"}))
        self.assertTrue(hostMatchesNames("[2001:db8::5]:443", servedNames(loop.server)))
        loop = Loopback(self.options(), RawClient(b"a.test"))
        self.assertEqual(servedNames(loop.server), frozenset({"a.test"}))

    def test_defaultForUnknownName(self) -> None:
        """
        An SNI name no certificate covers gets the default certificate.
        """
        loop = Loopback(self.options(), RawClient(b"nobody.test"))
        self.assertTrue(loop.established)
        self.assertEqual(loop.servedCertificateNames(), frozenset({"own.test"}))
        self.assertEqual(servedNames(loop.server), frozenset({"own.test"}))

    def test_servedNames(self) -> None:
        """
        L{servedNames} on the server side of a connection gives the names of
        the certificate actually served, wildcards as patterns; the request
        host check follows from it.
        """
        loop = Loopback(self.options(), RawClient(b"b.test"))
        self.assertEqual(servedNames(loop.server), frozenset({"b.test"}))
        self.assertTrue(hostMatchesNames("b.test:443", servedNames(loop.server)))
        self.assertFalse(hostMatchesNames("a.test", servedNames(loop.server)))
        loop = Loopback(self.options(), RawClient(b"q.w.test"))
        self.assertEqual(servedNames(loop.server), frozenset({"*.w.test"}))
        self.assertTrue(hostMatchesNames("other.w.test", servedNames(loop.server)))

    def test_servedNamesOfTheAppTransport(self) -> None:
        """
        L{servedNames} accepts the application protocol's transport (what
        the HTTP layer holds).
        """
        loop = Loopback(self.options(), RawClient(b"a.test"))
        self.assertIs(loop.serverApp.transport, loop.server)
        self.assertEqual(servedNames(loop.serverApp.transport), frozenset({"a.test"}))

    def test_servedNamesWithoutTLS(self) -> None:
        """
        A clear-text transport has no served names.
        """
        self.assertEqual(servedNames(StringTransport()), frozenset())
        self.assertEqual(servedNames(None), frozenset())
        self.assertIsNone(requestedServerName(StringTransport()))
        self.assertFalse(isTLSTransport(StringTransport()))
        self.assertFalse(isTLSTransport(None))

    def test_isTLSTransport(self) -> None:
        """
        L{isTLSTransport} recognises a TLS connection, even one whose
        certificate has no name (only an IP address as its CN: no served
        names).
        """
        folder = os.path.join(self.f.root, "ip")
        os.mkdir(folder)
        writeCertificate(os.path.join(folder, "ip.pem"), [], commonName="127.0.0.1")
        loop = Loopback(ServerTLSOptions(folder), RawClient())
        self.assertTrue(isTLSTransport(loop.serverApp.transport))
        self.assertEqual(servedNames(loop.serverApp.transport), frozenset())

    def test_tls13ByDefault(self) -> None:
        """
        A modern client gets TLS 1.3.
        """
        loop = Loopback(self.options(), RawClient(b"a.test"))
        self.assertEqual(loop.server.getHandle().version(), "TLSv1.3")

    def test_tls12Accepted(self) -> None:
        """
        TLS 1.2 is accepted, with an ECDHE AES-GCM or ChaCha20 suite.
        """
        loop = Loopback(self.options(), RawClient(b"a.test", maxVersion=SSL.TLS1_2_VERSION))
        self.assertTrue(loop.established)
        handle = loop.server.getHandle()
        self.assertEqual(handle.version(), "TLSv1.2")
        cipher = handle.cipher()[0]
        self.assertTrue(cipher.startswith("ECDHE-"), cipher)
        self.assertTrue("GCM" in cipher or "CHACHA20" in cipher, cipher)

    def test_tls12WithRSACertificate(self) -> None:
        """
        An RSA certificate works with TLS 1.2 (ECDHE-RSA suites).
        """
        loop = Loopback(self.options(), RawClient(b"x.w.test", maxVersion=SSL.TLS1_2_VERSION))
        self.assertTrue(loop.established)
        self.assertIn("ECDHE-RSA", loop.server.getHandle().cipher()[0])

    def test_tls11Refused(self) -> None:
        """
        A client offering at most TLS 1.1 (even with every legacy cipher
        allowed) cannot connect.
        """
        client = RawClient(
            b"a.test", minVersion=SSL.TLS1_VERSION, maxVersion=SSL.TLS1_1_VERSION, ciphers=b"DEFAULT:@SECLEVEL=0"
        )
        loop = Loopback(self.options(), client)
        self.assertFalse(loop.serverApp.handshakeDone)
        self.assertFalse(loop.clientApp.handshakeDone)
        self.assertIsNotNone(loop.serverApp.lost)
        self.assertIn("unsupported protocol", str(loop.serverApp.lost.value).lower())

    def test_minimumVersion13(self) -> None:
        """
        C{minimumVersion="1.3"} refuses TLS 1.2.
        """
        loop = Loopback(self.options(minimumVersion="1.3"), RawClient(b"a.test", maxVersion=SSL.TLS1_2_VERSION))
        self.assertFalse(loop.established)

    def test_badMinimumVersion(self) -> None:
        """
        Only 1.2 and 1.3 are valid minimum versions.
        """
        self.assertRaises(ConfigError, self.options, minimumVersion="1.1")

    def test_cbcRefused(self) -> None:
        """
        A TLS 1.2 client offering only CBC suites cannot connect.
        """
        client = RawClient(b"a.test", maxVersion=SSL.TLS1_2_VERSION, ciphers=b"ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA256")
        loop = Loopback(self.options(), client)
        self.assertFalse(loop.established)

    def test_serverCipherPreference(self) -> None:
        """
        The server's order wins: a client preferring AES-256 gets AES-128.
        """
        client = RawClient(
            b"a.test", maxVersion=SSL.TLS1_2_VERSION, ciphers=b"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256"
        )
        loop = Loopback(self.options(), client)
        self.assertEqual(loop.server.getHandle().cipher()[0], "ECDHE-ECDSA-AES128-GCM-SHA256")

    def test_alpnHTTP11(self) -> None:
        """
        ALPN selects C{http/1.1} from a client's offer, after an SNI switch
        too.
        """
        for name in (None, b"a.test", b"x.w.test"):
            loop = Loopback(self.options(), RawClient(name, alpn=[b"h2", b"http/1.1"]))
            self.assertTrue(loop.established)
            self.assertEqual(loop.server.negotiatedProtocol, b"http/1.1")
            self.assertEqual(loop.client.negotiatedProtocol, b"http/1.1")

    def test_alpnNoOverlap(self) -> None:
        """
        A client offering only other protocols still connects, without
        ALPN.
        """
        loop = Loopback(self.options(), RawClient(b"a.test", alpn=[b"h2"]))
        self.assertTrue(loop.established)
        self.assertIsNone(loop.server.negotiatedProtocol)

    def test_alpnOff(self) -> None:
        """
        A listener may leave ALPN out.
        """
        loop = Loopback(self.options(acceptableProtocols=()), RawClient(b"a.test", alpn=[b"http/1.1"]))
        self.assertTrue(loop.established)
        self.assertIsNone(loop.client.negotiatedProtocol)

    def test_dataFlows(self) -> None:
        """
        Application bytes cross in both directions.
        """
        loop = Loopback(self.options(), RawClient(b"a.test"))
        loop.clientApp.transport.write(b"GET / HTTP/1.1\r\n\r\n")
        loop.pump()
        loop.serverApp.transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
        loop.pump()
        self.assertEqual(loop.serverApp.received, b"GET / HTTP/1.1\r\n\r\n")
        self.assertEqual(loop.clientApp.received, b"HTTP/1.1 200 OK\r\n\r\n")

    def test_reloadKeepsOpenConnections(self) -> None:
        """
        After a reload new connections see the new certificates, while a
        connection opened before keeps working and keeps its served names.
        """
        opts = self.options()
        old = Loopback(opts, RawClient(b"a.test"))
        self.f.cert("c.pem", ["c.test"])
        os.remove(self.a)
        opts.reload()
        new = Loopback(opts, RawClient(b"c.test"))
        self.assertEqual(new.servedCertificateNames(), frozenset({"c.test"}))
        gone = Loopback(opts, RawClient(b"a.test"))
        self.assertEqual(gone.servedCertificateNames(), frozenset({"own.test"}))
        old.clientApp.transport.write(b"still here")
        old.pump()
        self.assertEqual(old.serverApp.received, b"still here")
        self.assertIsNone(old.serverApp.lost)
        self.assertEqual(servedNames(old.server), frozenset({"a.test"}))

    def test_failedReloadKeepsServing(self) -> None:
        """
        A reload that fails changes nothing.
        """
        opts = self.options()
        with open(os.path.join(self.f.certs, "zz.pem"), "w") as f:
            f.write("junk")
        self.assertRaises(ConfigError, opts.reload)
        loop = Loopback(opts, RawClient(b"b.test"))
        self.assertEqual(loop.servedCertificateNames(), frozenset({"b.test"}))

    def test_clientCertificateRequired(self) -> None:
        """
        With C{clientCA}, a client without a certificate is refused and one
        with a certificate from that CA is accepted, on the default and on
        an SNI-selected certificate alike.
        """
        opts = self.options(clientCA=self.f.caPath)
        clientCert = self.f.outside("client.pem", ["client.test"])
        for name in (None, b"b.test", b"x.w.test"):
            refused = Loopback(opts, RawClient(name))
            self.assertFalse(refused.serverApp.handshakeDone, name)
            accepted = Loopback(opts, RawClient(name, clientCertificate=clientCert))
            self.assertTrue(accepted.established, name)
            peer = accepted.server.getPeerCertificate()
            self.assertEqual(_names(peer), frozenset({"client.test"}))

    def test_clientCertificateFromOtherCA(self) -> None:
        """
        A client certificate from another CA is refused.
        """
        opts = self.options(clientCA=self.f.caPath)
        other = TestCA()
        self.addCleanup(shutil.rmtree, other.dir, True)
        stranger = writeCertificate(os.path.join(self.f.root, "stranger.pem"), ["s.test"], ca=other)
        loop = Loopback(opts, RawClient(b"a.test", clientCertificate=stranger))
        self.assertFalse(loop.serverApp.handshakeDone)

    def test_badClientCA(self) -> None:
        """
        An unreadable client CA bundle is a one-line L{ConfigError}.
        """
        missing = os.path.join(self.f.root, "nope.pem")
        e = self.assertRaises(ConfigError, self.options, clientCA=missing)
        self.assertIn(missing, str(e))
        junk = os.path.join(self.f.root, "junk.pem")
        with open(junk, "w") as f:
            f.write("junk")
        e = self.assertRaises(ConfigError, self.options, clientCA=junk)
        self.assertIn("no certificate", str(e))


class EndpointTests(SynchronousTestCase):
    """
    L{tlsServerEndpoint} on a L{MemoryReactorClock}.
    """

    def setUp(self) -> None:
        self.f = _Fixture(self)
        self.a = self.f.cert("a.pem", ["a.test"])
        self.own = self.f.outside("own.pem", ["own.test"])
        self.reactor = MemoryReactorClock()

    def esc(self, path: str) -> str:
        return path.replace(":", "\\:")

    def test_sslString(self) -> None:
        """
        An C{ssl:} string listens on its port, interface and backlog with
        its key as the default certificate and C{--certs} for SNI.
        """
        desc = f"ssl:8443:privateKey={self.esc(self.own)}:interface=127.0.0.1:backlog=7"
        endpoint = tlsServerEndpoint(self.reactor, desc, self.f.certs)
        self.assertIsInstance(endpoint, TLSServerEndpoint)
        factory = Factory.forProtocol(Protocol)
        self.successResultOf(endpoint.listen(factory))
        port, tlsFactory, backlog, interface = self.reactor.tcpServers[0]
        self.assertEqual((port, backlog, interface), (8443, 7, "127.0.0.1"))
        self.assertIsInstance(tlsFactory, TLSServerFactory)
        self.assertIs(tlsFactory.wrappedFactory, factory)
        self.assertEqual(endpoint.store.default.path, self.own)
        self.assertIsNotNone(endpoint.store.find("a.test"))

    def test_sslSeparateCertKey(self) -> None:
        """
        C{certKey} names a separate certificate file.
        """
        with open(self.own, "rb") as f:
            data = f.read()
        cut = data.index(b"-----BEGIN CERTIFICATE-----")
        key, cert = os.path.join(self.f.root, "k.pem"), os.path.join(self.f.root, "c.pem")
        with open(key, "wb") as f:
            f.write(data[:cut])
        with open(cert, "wb") as f:
            f.write(data[cut:])
        endpoint = tlsServerEndpoint(self.reactor, f"ssl:8443:privateKey={key}:certKey={cert}")
        self.assertEqual(endpoint.store.default.names, frozenset({"own.test"}))

    def test_tcpWithCerts(self) -> None:
        """
        A C{tcp:} listener with C{--certs} terminates TLS with the folder
        alone.
        """
        endpoint = tlsServerEndpoint(self.reactor, "tcp:8443:interface=127.0.0.1", self.f.certs)
        self.successResultOf(endpoint.listen(Factory.forProtocol(Protocol)))
        port, tlsFactory, backlog, interface = self.reactor.tcpServers[0]
        self.assertEqual((port, interface), (8443, "127.0.0.1"))
        self.assertIsInstance(tlsFactory, TLSServerFactory)
        self.assertEqual(endpoint.store.default.path, self.a)

    def test_tcpWithoutCerts(self) -> None:
        """
        A C{tcp:} string without C{--certs} is not a TLS listener.
        """
        self.assertRaises(ConfigError, tlsServerEndpoint, self.reactor, "tcp:8443")

    def test_haproxyBeforeTLS(self) -> None:
        """
        With C{haproxy:}, the PROXY header is read in clear before TLS:
        the listening factory is the PROXY wrapper around the TLS factory.
        """
        from twisted.protocols.haproxy._wrapper import HAProxyWrappingFactory

        endpoint = tlsServerEndpoint(self.reactor, f"haproxy:ssl:8443:privateKey={self.own}")
        factory = Factory.forProtocol(Protocol)
        self.successResultOf(endpoint.listen(factory))
        listening = self.reactor.tcpServers[0][1]
        self.assertIsInstance(listening, HAProxyWrappingFactory)
        self.assertIsInstance(listening.wrappedFactory, TLSServerFactory)
        self.assertIs(listening.wrappedFactory.wrappedFactory, factory)

    def test_haproxyThenTLSEndToEnd(self) -> None:
        """
        Behind C{haproxy:}, a client sending the PROXY header then TLS gets
        the SNI-selected certificate, and the application sees the address
        the header carries.
        """
        endpoint = tlsServerEndpoint(self.reactor, f"haproxy:ssl:8443:privateKey={self.own}", self.f.certs)
        self.successResultOf(endpoint.listen(Factory.forProtocol(_Recorder)))
        listening = self.reactor.tcpServers[0][1]
        header = b"PROXY TCP4 192.0.2.7 127.0.0.1 51000 8443\r\n"
        loop = Loopback(None, RawClient(b"a.test"), listening, prelude=header, clock=self.reactor)
        self.assertTrue(loop.established)
        self.assertEqual(servedNames(loop.serverApp.transport), frozenset({"a.test"}))
        self.assertEqual(loop.serverApp.transport.getPeer().host, "192.0.2.7")

    def test_loseWriteConnectionIsTLSClose(self) -> None:
        """
        C{loseWriteConnection} on a listener's TLS transport sends the
        buffered data and C{close_notify} (never a TCP half-close under
        TLS); the connection closes when the peer answers.  Called again
        (a linger timer) before the peer answers, C{loseConnection} closes
        the TCP connection.
        """
        endpoint = tlsServerEndpoint(self.reactor, f"ssl:8443:privateKey={self.own}")
        self.successResultOf(endpoint.listen(Factory.forProtocol(_Recorder)))
        listening = self.reactor.tcpServers[0][1]
        loop = Loopback(None, RawClient(b"own.test"), listening, clock=self.reactor)
        self.assertTrue(loop.established)
        loop.serverApp.transport.write(b"bye")
        loop.serverApp.transport.loseWriteConnection()
        self.assertFalse(loop.serverTransport.disconnecting)
        loop.pump()
        self.assertEqual(loop.clientApp.received, b"bye")
        self.assertIsNotNone(loop.clientApp.lost)
        self.assertTrue(loop.serverTransport.disconnecting)

        silent = Loopback(None, RawClient(b"own.test"), listening, clock=self.reactor)
        silent.serverApp.transport.loseWriteConnection()
        self.reactor.advance(0)
        self.assertFalse(silent.serverTransport.disconnecting)
        silent.serverApp.transport.loseConnection()
        self.assertTrue(silent.serverTransport.disconnecting)

    def test_badStrings(self) -> None:
        """
        Malformed strings, unsupported options and unreadable files are
        one-line L{ConfigError}s naming the string or the file.
        """
        cases = [
            (f"ssl:notaport:privateKey={self.own}", "bad --listen endpoint"),
            (f"ssl:99999:privateKey={self.own}", "out of range"),
            (f"ssl:8443:privateKey={self.own}:sslmethod=TLSv1_METHOD", "sslmethod"),
            (f"ssl:8443:privateKey={self.own}:dhParameters=dh.pem", "dhParameters"),
            ("ssl:8443:privateKey=/nonexistent/key.pem", "/nonexistent/key.pem"),
            (f"ssl:privateKey={self.own}", "expected ssl:PORT"),
        ]
        for desc, fragment in cases:
            e = self.assertRaises(ConfigError, tlsServerEndpoint, self.reactor, desc)
            self.assertIn(fragment, str(e), desc)
            self.assertIn("bad --listen endpoint", str(e), desc)
            self.assertNotIn("\n", str(e))
        e = self.assertRaises(ConfigError, tlsServerEndpoint, self.reactor, "nosuch:8443", self.f.certs)
        self.assertIn("bad --listen endpoint", str(e))

    def test_reload(self) -> None:
        """
        L{TLSServerEndpoint.reload} reloads its certificates, optionally
        from a new folder and with a new client CA bundle.
        """
        endpoint = tlsServerEndpoint(self.reactor, "tcp:8443", self.f.certs)
        self.f.cert("b.pem", ["b.test"])
        endpoint.reload()
        self.assertIsNotNone(endpoint.store.find("b.test"))
        other = os.path.join(self.f.root, "other")
        os.mkdir(other)
        writeCertificate(os.path.join(other, "o.pem"), ["o.test"])
        endpoint.reload(certsDir=other, clientCA=self.f.caPath)
        self.assertEqual(endpoint.store.directory, other)
        self.assertEqual(endpoint.options.clientCA, self.f.caPath)
        self.assertIsNone(endpoint.store.find("b.test"))
        self.assertIsNotNone(endpoint.store.find("o.test"))
        e = self.assertRaises(ConfigError, endpoint.reload, clientCA="/nonexistent/ca.pem")
        self.assertIn("/nonexistent/ca.pem", str(e))
        self.assertEqual(endpoint.options.clientCA, self.f.caPath)

    def test_prepareReloadAllOrNothing(self) -> None:
        """
        L{prepareReload} prepares every TLS endpoint given (skipping
        others) and changes nothing until its result is called; one failure
        fails them all.
        """
        good = tlsServerEndpoint(self.reactor, "tcp:8443", self.f.certs)
        other = tlsServerEndpoint(self.reactor, f"ssl:8444:privateKey={self.own}")
        self.f.cert("b.pem", ["b.test"])
        commit = prepareReload([good, object(), other])
        self.assertIsNone(good.store.find("b.test"))
        commit()
        self.assertIsNotNone(good.store.find("b.test"))
        self.f.cert("c.pem", ["c.test"])
        with open(self.own, "w") as f:
            f.write("junk")
        e = self.assertRaises(ConfigError, prepareReload, [good, other])
        self.assertIn(self.own, str(e))
        self.assertIsNone(good.store.find("c.test"))
        self.assertEqual(other.store.default.names, frozenset({"own.test"}))

    def test_isTLSListener(self) -> None:
        """
        C{ssl:} strings (behind C{haproxy:} too) and anything with
        C{--certs} are TLS listeners.
        """
        self.assertTrue(isTLSListener("ssl:443"))
        self.assertTrue(isTLSListener("haproxy:ssl:443"))
        self.assertTrue(isTLSListener("tcp:443", "certs"))
        self.assertFalse(isTLSListener("tcp:443"))

    def test_serviceUsesTLSEndpoint(self) -> None:
        """
        L{txproxy.runtime.service.serverEndpoint} builds a L{TLSServerEndpoint} for
        C{ssl:} strings and for listeners with certificates.
        """
        from txproxy.runtime.service import serverEndpoint

        self.assertIsInstance(serverEndpoint(self.reactor, f"ssl:8443:privateKey={self.own}"), TLSServerEndpoint)
        endpoint = serverEndpoint(self.reactor, "tcp:8443", certs=self.f.certs)
        self.assertIsInstance(endpoint, TLSServerEndpoint)
        self.assertNotIsInstance(serverEndpoint(self.reactor, "tcp:8443"), TLSServerEndpoint)


class ClientTLSTests(SynchronousTestCase):
    """
    L{clientTLSOptions} against a L{ServerTLSOptions} in memory.
    """

    def setUp(self) -> None:
        self.f = _Fixture(self)
        self.f.cert("a.pem", ["a.test"])
        self.f.cert("b.pem", ["b.test"])
        self.server = ServerTLSOptions(self.f.certs)

    def test_verifiedWithBundle(self) -> None:
        """
        A backend whose certificate chains to the bundle and names the
        host is accepted; ALPN gives C{http/1.1}; SNI selects its
        certificate.
        """
        options = clientTLSOptions("b.test", self.f.caPath)
        self.assertTrue(verifyObject(IOpenSSLClientConnectionCreator, options))
        loop = Loopback(self.server, options)
        self.assertTrue(loop.established)
        self.assertEqual(loop.client.negotiatedProtocol, b"http/1.1")
        self.assertEqual(loop.servedCertificateNames(), frozenset({"b.test"}))

    def test_wrongNameRefused(self) -> None:
        """
        A certificate not valid for the backend's name is refused.
        """
        loop = Loopback(self.server, clientTLSOptions("c.test", self.f.caPath))
        self.assertFalse(loop.clientApp.handshakeDone)
        self.assertIsNotNone(loop.clientApp.lost)

    def test_platformTrustRefusesTestCA(self) -> None:
        """
        Without a bundle the platform's trust store is used, which does not
        trust the test CA.
        """
        loop = Loopback(self.server, clientTLSOptions("a.test"))
        self.assertFalse(loop.clientApp.handshakeDone)

    def test_verifyOff(self) -> None:
        """
        C{verify=False} accepts any certificate, and still sends SNI and
        ALPN.
        """
        options = clientTLSOptions("b.test", None, verify=False)
        self.assertTrue(verifyObject(IOpenSSLClientConnectionCreator, options))
        loop = Loopback(self.server, options)
        self.assertTrue(loop.established)
        self.assertEqual(loop.servedCertificateNames(), frozenset({"b.test"}))
        self.assertEqual(loop.client.negotiatedProtocol, b"http/1.1")
        loop = Loopback(self.server, clientTLSOptions("127.0.0.1", None, verify=False))
        self.assertTrue(loop.established)

    def test_verifiedIPAddress(self) -> None:
        """
        An IP address backend is verified against the certificate's IP
        address subjectAltNames.
        """
        folder = os.path.join(self.f.root, "ip")
        os.mkdir(folder)
        writeCertificate(os.path.join(folder, "ip.pem"), ["127.0.0.1"])
        server = ServerTLSOptions(folder)
        self.assertTrue(Loopback(server, clientTLSOptions("127.0.0.1", self.f.caPath)).established)
        self.assertFalse(Loopback(server, clientTLSOptions("127.0.0.2", self.f.caPath)).clientApp.handshakeDone)

    def test_tls11ServerRefused(self) -> None:
        """
        Upstreams must speak TLS 1.2 or later.
        """
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        entry = loadCertificateFile(os.path.join(self.f.certs, "a.pem"))
        _give(ctx.use_certificate, entry.certificate, crypto.X509.from_cryptography)
        _give(ctx.use_privatekey, entry.privateKey, crypto.PKey.from_cryptography_key)
        ctx.set_min_proto_version(SSL.TLS1_VERSION)
        ctx.set_max_proto_version(SSL.TLS1_1_VERSION)
        ctx.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
        from twisted.internet.ssl import ContextFactory

        class Old(ContextFactory):
            def getContext(self) -> SSL.Context:
                return ctx

        for verify in (True, False):
            loop = Loopback(Old(), clientTLSOptions("a.test", self.f.caPath, verify))
            self.assertFalse(loop.clientApp.handshakeDone, verify)

    def test_cached(self) -> None:
        """
        The same arguments give the same options until the bundle file
        changes.
        """
        first = clientTLSOptions("a.test", self.f.caPath)
        self.assertIs(clientTLSOptions("a.test", self.f.caPath), first)
        self.assertIsNot(clientTLSOptions("b.test", self.f.caPath), first)
        with open(self.f.caPath, "ab") as f:
            f.write(b"\n")
        self.assertIsNot(clientTLSOptions("a.test", self.f.caPath), first)

    def test_badBundle(self) -> None:
        """
        A missing or empty bundle is a one-line L{ConfigError} naming it.
        """
        missing = os.path.join(self.f.root, "nope.pem")
        e = self.assertRaises(ConfigError, clientTLSOptions, "a.test", missing)
        self.assertIn(missing, str(e))
        empty = os.path.join(self.f.root, "empty.pem")
        open(empty, "w").close()
        e = self.assertRaises(ConfigError, clientTLSOptions, "a.test", empty)
        self.assertIn(empty, str(e))


class ListenerEndpointTests(SynchronousTestCase):
    """
    L{txproxy.runtime.service.listenerEndpoint}: a listener's TLS settings.
    """

    def setUp(self) -> None:
        self.f = _Fixture(self)
        self.f.cert("a.pem", ["a.test"])
        self.reactor = MemoryReactorClock()

    def listener(self, **kw: Any) -> Any:
        from txproxy.config import ListenerConfig

        return ListenerConfig(listen=("tcp:8443",), **kw)

    def test_reverseWithCerts(self) -> None:
        """
        A reverse listener with certificates gets TLS with ALPN
        C{http/1.1} and its client CA.
        """
        from txproxy.runtime.service import listenerEndpoint

        listener = self.listener(mode="reverse", certs=self.f.certs, clientCA=self.f.caPath)
        endpoint = listenerEndpoint(self.reactor, "tcp:8443", listener)
        self.assertIsInstance(endpoint, TLSServerEndpoint)
        self.assertEqual(endpoint.options.clientCA, self.f.caPath)
        loop = Loopback(endpoint.options, RawClient(b"a.test", alpn=[b"http/1.1"], clientCertificate=self.f.outside("c.pem", ["c.test"])))
        self.assertEqual(loop.server.negotiatedProtocol, b"http/1.1")

    def test_tcpModeNoALPN(self) -> None:
        """
        TCP-mode TLS listeners select no ALPN protocol.
        """
        from txproxy.runtime.service import listenerEndpoint

        endpoint = listenerEndpoint(self.reactor, "tcp:8443", self.listener(mode="tcp", certs=self.f.certs))
        loop = Loopback(endpoint.options, RawClient(b"a.test", alpn=[b"http/1.1"]))
        self.assertTrue(loop.established)
        self.assertIsNone(loop.server.negotiatedProtocol)

    def test_plainListener(self) -> None:
        """
        Without certificates a C{tcp:} listener stays clear-text.
        """
        from txproxy.runtime.service import listenerEndpoint

        endpoint = listenerEndpoint(self.reactor, "tcp:8443", self.listener(mode="reverse"))
        self.assertNotIsInstance(endpoint, TLSServerEndpoint)

    def test_sniModeRefusesTLS(self) -> None:
        """
        C{sni} mode passes TLS through: a TLS listener there is an error.
        """
        from txproxy.runtime.service import listenerEndpoint

        e = self.assertRaises(
            ConfigError, listenerEndpoint, self.reactor, "tcp:8443", self.listener(mode="sni", certs=self.f.certs)
        )
        self.assertIn("sni mode", str(e))


class VerificationFailureTests(SynchronousTestCase):
    """
    L{txproxy.tls.verificationFailure} names why an upstream's certificate
    was refused, and nothing else.
    """

    def test_reasons(self) -> None:
        """
        OpenSSL's chain failure gives its verify message; service_identity's
        mismatch the name or address; other errors L{None}.
        """
        from service_identity import CertificateError, VerificationError
        from service_identity.exceptions import DNSMismatch, IPAddressMismatch
        from service_identity.hazmat import DNS_ID, IPAddress_ID

        from txproxy.tls import verificationFailure

        chain = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
        chain.verify_message = "self-signed certificate"
        self.assertEqual(verificationFailure(chain), "certificate verify failed: self-signed certificate")
        self.assertEqual(
            verificationFailure(VerificationError([DNSMismatch(DNS_ID("localhost"))])),
            "hostname mismatch: the certificate is not valid for localhost",
        )
        self.assertEqual(
            verificationFailure(VerificationError([IPAddressMismatch(IPAddress_ID("127.0.0.2"))])),
            "hostname mismatch: the certificate is not valid for 127.0.0.2",
        )
        self.assertIn("certificate rejected", verificationFailure(CertificateError("no subjectAltName")) or "")
        self.assertIsNone(verificationFailure(ConnectionResetError()))
        self.assertIsNone(verificationFailure(ssl.SSLError(1, "[SSL] wrong version number")))
