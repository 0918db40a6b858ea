"""
Tests for L{txproxy.tls._ca}: the interception certificate authority
(loading, minting, names, validity, serials, chains, the cache, the key
file's permissions).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import ssl
import tempfile
from typing import Any, List, Optional, Tuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.trial.unittest import SynchronousTestCase

from txproxy.errors import ConfigError
from txproxy.tls._ca import (
    BACKDATE,
    LEAF_VALIDITY,
    InterceptCA,
    checkKeyFilePermissions,
    leafKey,
    leafName,
)

_NOW = datetime.datetime(2026, 6, 1, 12, 0, 0, tzinfo=datetime.timezone.utc)


def makeCA(
    notBefore: Optional[datetime.datetime] = None,
    notAfter: Optional[datetime.datetime] = None,
    isCA: bool = True,
    name: str = "txproxy interception test CA",
) -> Tuple[x509.Certificate, Any]:
    """
    A CA certificate and key, as C{openssl req -x509} with the usual CA
    extensions makes them.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(notBefore or _NOW - datetime.timedelta(days=30))
        .not_valid_after(notAfter or _NOW + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if isCA:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    return builder.sign(key, hashes.SHA256()), key


def writeCA(directory: str, cert: x509.Certificate, key: Any, mode: int = 0o600, withKey: bool = True) -> str:
    """
    Write C{cert} and C{key} to C{directory}/ca.pem with C{mode}.
    """
    path = os.path.join(directory, "ca.pem")
    with open(path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
        if withKey:
            f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    os.chmod(path, mode)
    return path


_SHARED: List[Tuple[x509.Certificate, Any]] = []


def sharedCA() -> Tuple[x509.Certificate, Any]:
    if not _SHARED:
        _SHARED.append(makeCA())
    return _SHARED[0]


class _Clock:
    def __init__(self, now: datetime.datetime = _NOW) -> None:
        self.now = now

    def __call__(self) -> datetime.datetime:
        return self.now


def _handshake(serverObject: Any, caPEM: bytes, serverName: Optional[str], checkName: Optional[str] = None) -> Tuple[Any, Any]:
    """
    A TLS handshake in memory between an L{InterceptCA} server object and
    a stdlib client trusting C{caPEM} that checks the host name
    C{checkName} (by default the SNI name).

    @return: the client and server C{SSLObject}s.
    """
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(cadata=caPEM.decode("ascii"))
    client.set_alpn_protocols(["h2", "http/1.1"])
    cin, cout, sin, sout = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    if checkName is None:
        checkName = serverName
    if serverName is None:
        client.check_hostname = False
    c = client.wrap_bio(cin, cout, server_side=False, server_hostname=serverName)
    s = serverObject(sin, sout)
    for _ in range(10):
        for obj in (c, s):
            try:
                obj.do_handshake()
            except ssl.SSLWantReadError:
                pass
        sin.write(cout.read())
        cin.write(sout.read())
        try:
            c.do_handshake()
            s.do_handshake()
            break
        except ssl.SSLWantReadError:
            continue
    return c, s


class LeafNameTests(SynchronousTestCase):
    """
    L{leafName} canonicalizes what a certificate is minted for.
    """

    def test_dnsNames(self) -> None:
        """
        DNS names are lower-cased, lose one trailing dot, and become IDNA
        A-labels.
        """
        self.assertEqual(leafName("Example.COM."), "example.com")
        self.assertEqual(leafName("bücher.example"), "xn--bcher-kva.example")
        self.assertEqual(leafName("a-b_c.example"), "a-b_c.example")

    def test_ipAddresses(self) -> None:
        """
        IP literals are kept as addresses, brackets dropped, IPv6
        compressed.
        """
        self.assertEqual(leafName("192.0.2.1"), "192.0.2.1")
        self.assertEqual(leafName("[2001:DB8:0::1]"), "2001:db8::1")

    def test_badNames(self) -> None:
        """
        Empty names, empty labels, labels too long and odd characters are
        refused with L{ValueError}.
        """
        for bad in ["", ".", "a..b", "a" * 64 + ".example", "a b.example", "a/b", "x" * 254]:
            self.assertRaises(ValueError, leafName, bad)


class MintTests(SynchronousTestCase):
    """
    L{InterceptCA.mint} issues leaf certificates with the CA as issuer,
    names only in the subjectAltName, short validity, fresh serials and the
    process's one key.
    """

    def setUp(self) -> None:
        self.caCert, self.caKey = sharedCA()
        self.clock = _Clock()
        self.ca = InterceptCA(self.caCert, self.caKey, now=self.clock)

    def test_dnsName(self) -> None:
        """
        A DNS name is the one critical DNS subjectAltName; the subject is
        empty; the issuer is the CA; serverAuth; not a CA.
        """
        cert = self.ca.mint("WWW.Example.com")
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        self.assertTrue(san.critical)
        self.assertEqual(san.value.get_values_for_type(x509.DNSName), ["www.example.com"])
        self.assertEqual(san.value.get_values_for_type(x509.IPAddress), [])
        self.assertEqual(len(cert.subject), 0)
        self.assertEqual(cert.issuer, self.caCert.subject)
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        self.assertEqual(list(eku), [ExtendedKeyUsageOID.SERVER_AUTH])
        self.assertFalse(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
        self.caKey.public_key().verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))

    def test_ipLiteral(self) -> None:
        """
        An IP literal (v4 or v6) gets an iPAddress subjectAltName and no
        DNS name.
        """
        for host, expected in [("127.0.0.1", "127.0.0.1"), ("[::1]", "::1")]:
            cert = self.ca.mint(host)
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            self.assertEqual(san.get_values_for_type(x509.IPAddress), [ipaddress.ip_address(expected)])
            self.assertEqual(san.get_values_for_type(x509.DNSName), [])

    def test_validity(self) -> None:
        """
        Valid from an hour ago for L{LEAF_VALIDITY}.
        """
        cert = self.ca.mint("example.com")
        self.assertEqual(cert.not_valid_before_utc, _NOW - BACKDATE)
        self.assertEqual(cert.not_valid_after_utc, _NOW + LEAF_VALIDITY)
        self.assertEqual(BACKDATE, datetime.timedelta(hours=1))
        self.assertLessEqual(LEAF_VALIDITY, datetime.timedelta(days=30))

    def test_neverBeyondTheCA(self) -> None:
        """
        A leaf never outlives the CA, nor starts before it.
        """
        cert, key = makeCA(notBefore=_NOW - datetime.timedelta(minutes=5), notAfter=_NOW + datetime.timedelta(days=2))
        ca = InterceptCA(cert, key, now=self.clock)
        leaf = ca.mint("example.com")
        self.assertEqual(leaf.not_valid_after_utc, cert.not_valid_after_utc)
        self.assertEqual(leaf.not_valid_before_utc, cert.not_valid_before_utc)

    def test_serialsUnique(self) -> None:
        """
        Every certificate has a fresh random serial, positive, at most 159
        bits (RFC 5280: 20 octets).
        """
        serials = [self.ca.mint("example.com").serial_number for _ in range(50)]
        self.assertEqual(len(set(serials)), 50)
        for s in serials:
            self.assertGreater(s, 0)
            self.assertLess(s.bit_length(), 160)

    def test_oneKeyPerProcess(self) -> None:
        """
        Every leaf, of any CA, carries the process's one EC P-256 key.
        """
        other = InterceptCA(*makeCA(name="other"), now=self.clock)
        public = leafKey().public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        for cert in [self.ca.mint("a.example"), self.ca.mint("b.example"), other.mint("a.example")]:
            self.assertEqual(
                cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo), public
            )
        self.assertIsInstance(leafKey().curve, ec.SECP256R1)

    def test_badName(self) -> None:
        """
        A name that is not a host name mints nothing.
        """
        self.assertRaises(ValueError, self.ca.mint, "a b")
        self.assertEqual(self.ca.minted, 0)

    def test_chainVerifiesWithCryptography(self) -> None:
        """
        cryptography's X.509 path validation (RFC 5280 and the CA/B
        Forum's profile) accepts the chain for the name, and refuses it
        for another name.
        """
        from cryptography.x509 import verification

        now = datetime.datetime.now(datetime.timezone.utc)
        real = InterceptCA(self.caCert, self.caKey)
        store = verification.Store([self.caCert])
        for host, subject in [
            ("www.example.com", x509.DNSName("www.example.com")),
            ("192.0.2.7", x509.IPAddress(ipaddress.ip_address("192.0.2.7"))),
        ]:
            leaf, ca = real.chainFor(host)
            self.assertIs(ca, self.caCert)
            verifier = verification.PolicyBuilder().store(store).time(now).build_server_verifier(subject)
            chain = verifier.verify(leaf, [ca])
            self.assertEqual(chain[-1], self.caCert)
        leaf = real.certificateFor("www.example.com")
        verifier = verification.PolicyBuilder().store(store).time(now).build_server_verifier(x509.DNSName("other.example"))
        self.assertRaises(verification.VerificationError, verifier.verify, leaf, [])

    def test_handshakeVerifiesWithOpenSSL(self) -> None:
        """
        A stdlib (OpenSSL) client trusting the CA completes a handshake
        with the server object, checks the host name, receives the chain
        (leaf and CA), and is offered only http/1.1 by ALPN.
        """
        real = InterceptCA(self.caCert, self.caKey)
        caPEM = self.caCert.public_bytes(serialization.Encoding.PEM)
        c, s = _handshake(real.serverObject("example.com"), caPEM, "example.com")
        der = c.getpeercert(True)
        self.assertEqual(x509.load_der_x509_certificate(der), real.certificateFor("example.com"))
        self.assertEqual(c.selected_alpn_protocol(), "http/1.1")

    def test_chainSent(self) -> None:
        """
        The server sends the chain: the leaf, then the CA certificate.
        """
        from OpenSSL import SSL

        real = InterceptCA(self.caCert, self.caKey)
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        client = SSL.Connection(ctx, None)
        client.set_connect_state()
        client.set_tlsext_host_name(b"example.com")
        sin, sout = ssl.MemoryBIO(), ssl.MemoryBIO()
        server = real.serverObject("example.com")(sin, sout)
        for _ in range(10):
            try:
                client.do_handshake()
                break
            except SSL.WantReadError:
                pass
            sin.write(client.bio_read(65536))
            try:
                server.do_handshake()
            except ssl.SSLWantReadError:
                pass
            client.bio_write(sout.read())
        chain = client.get_peer_cert_chain(as_cryptography=True)
        self.assertEqual(chain, [real.certificateFor("example.com"), self.caCert])

    def test_sniSelectsTheCertificate(self) -> None:
        """
        The connection starts on the CONNECT host's certificate; an SNI
        naming another host gets that host's certificate, and the server
        object records the name asked for.
        """
        real = InterceptCA(self.caCert, self.caKey)
        caPEM = self.caCert.public_bytes(serialization.Encoding.PEM)
        c, s = _handshake(real.serverObject("192.0.2.1"), caPEM, "other.example")
        self.assertEqual(x509.load_der_x509_certificate(c.getpeercert(True)), real.certificateFor("other.example"))
        self.assertEqual(s.txproxyServerName, "other.example")

    def test_noSNIServesTheConnectHost(self) -> None:
        """
        Without SNI, the CONNECT host's certificate is served (an IP
        literal's iPAddress name verifies).
        """
        real = InterceptCA(self.caCert, self.caKey)
        caPEM = self.caCert.public_bytes(serialization.Encoding.PEM)
        c, s = _handshake(real.serverObject("127.0.0.1"), caPEM, None)
        cert = x509.load_der_x509_certificate(c.getpeercert(True))
        self.assertEqual(cert, real.certificateFor("127.0.0.1"))
        from service_identity.cryptography import verify_certificate_ip_address

        verify_certificate_ip_address(cert, "127.0.0.1")


class CacheTests(SynchronousTestCase):
    """
    Certificates (with their TLS contexts) are cached per name, least
    recently used dropped first, minted again near their end.
    """

    def setUp(self) -> None:
        self.caCert, self.caKey = sharedCA()
        self.clock = _Clock(datetime.datetime.now(datetime.timezone.utc))
        self.ca = InterceptCA(self.caCert, self.caKey, maxCached=2, now=self.clock)

    def test_cachedPerName(self) -> None:
        """
        Asking again for a name (in any spelling) costs no signature.
        """
        first = self.ca.certificateFor("example.com")
        self.assertIs(self.ca.certificateFor("EXAMPLE.com."), first)
        self.assertIs(self.ca.contextFor("example.com"), self.ca.contextFor("Example.Com"))
        self.assertEqual(self.ca.minted, 1)

    def test_leastRecentlyUsedDropped(self) -> None:
        """
        With room for two, using a, b, a, c drops b (not a).
        """
        a = self.ca.certificateFor("a.example")
        self.ca.certificateFor("b.example")
        self.ca.certificateFor("a.example")
        self.ca.certificateFor("c.example")
        self.assertEqual(self.ca.cachedNames(), ["a.example", "c.example"])
        self.assertIs(self.ca.certificateFor("a.example"), a)
        self.assertEqual(self.ca.minted, 3)
        self.ca.certificateFor("b.example")
        self.assertEqual(self.ca.minted, 4)

    def test_mintedAgainNearItsEnd(self) -> None:
        """
        A cached certificate with less than an hour left is replaced.
        """
        first = self.ca.certificateFor("example.com")
        self.clock.now += LEAF_VALIDITY - datetime.timedelta(minutes=30)
        second = self.ca.certificateFor("example.com")
        self.assertIsNot(second, first)
        self.assertNotEqual(second.serial_number, first.serial_number)
        self.assertIs(self.ca.certificateFor("example.com"), second)


class LoadTests(SynchronousTestCase):
    """
    L{InterceptCA.fromFile} loads a CA certificate and its key from one
    PEM file and refuses anything else with one line.
    """

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="txproxy-intercept-ca-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.caCert, self.caKey = sharedCA()

    def assertRefused(self, path: str, *fragments: str) -> None:
        e = self.assertRaises(ConfigError, InterceptCA.fromFile, path)
        message = str(e)
        self.assertNotIn("\n", message)
        self.assertIn(path, message)
        for f in fragments:
            self.assertIn(f, message)

    def test_loads(self) -> None:
        """
        A private file with the certificate and key loads.
        """
        ca = InterceptCA.fromFile(writeCA(self.dir, self.caCert, self.caKey))
        self.assertEqual(ca.certificate, self.caCert)
        self.assertEqual(ca.mint("example.com").issuer, self.caCert.subject)

    def test_readableByOthers(self) -> None:
        """
        A key file readable by group or others is refused, naming the mode.
        """
        for mode in (0o644, 0o640, 0o604, 0o620):
            path = writeCA(self.dir, self.caCert, self.caKey, mode=mode)
            self.assertRefused(path, "group or others", f"{mode:04o}", "chmod 600")
        checkKeyFilePermissions(writeCA(self.dir, self.caCert, self.caKey, mode=0o400))

    def test_missing(self) -> None:
        """
        A missing file is named.
        """
        self.assertRefused(os.path.join(self.dir, "nope.pem"), "No such file")

    def test_noKey(self) -> None:
        """
        A certificate without its key is refused.
        """
        self.assertRefused(writeCA(self.dir, self.caCert, self.caKey, withKey=False), "no private key")

    def test_wrongKey(self) -> None:
        """
        A key that is not the certificate's is refused.
        """
        other = ec.generate_private_key(ec.SECP256R1())
        self.assertRefused(writeCA(self.dir, self.caCert, other), "not the key of its certificate")

    def test_notACA(self) -> None:
        """
        A certificate without basicConstraints CA:TRUE is refused.
        """
        cert, key = makeCA(isCA=False)
        self.assertRefused(writeCA(self.dir, cert, key), "not a CA")

    def test_expired(self) -> None:
        """
        An expired CA is refused.
        """
        now = datetime.datetime.now(datetime.timezone.utc)
        cert, key = makeCA(notBefore=now - datetime.timedelta(days=10), notAfter=now - datetime.timedelta(days=1))
        self.assertRefused(writeCA(self.dir, cert, key), "expired")
