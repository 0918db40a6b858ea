# -*- test-case-name: tests.test_intercept_ca -*-
"""
The interception certificate authority (C{--intercept-ca}): load the CA
certificate and key, mint leaf certificates for the names clients ask for,
and keep a bounded LRU cache of them with their server TLS contexts.

A leaf certificate, per name:

  - issued by the CA (its subject is the leaf's issuer, its key signs);
  - names only in a critical subjectAltName (a DNS name, or an iPAddress
    for an IP literal); the subject is empty;
  - valid from one hour ago (clocks disagree) for L{LEAF_VALIDITY}, never
    past the CA's own C{notAfter};
  - a fresh random serial number;
  - C{basicConstraints CA:FALSE}, C{keyUsage digitalSignature},
    C{extendedKeyUsage serverAuth}, subject and authority key identifiers;
  - its public key is the process's one EC P-256 key (L{leafKey}), made
    once: a new name costs one signature, not a key generation.

The chain served is the leaf then the CA certificate.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import stat
import tempfile
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID
from twisted.logger import Logger

from txproxy.errors import ConfigError
from txproxy.tls._server import MODERN_CIPHERS
from txproxy.tls._store import _oneLine, _parsePEM, _readFile

__all__ = ["InterceptCA", "LEAF_VALIDITY", "BACKDATE", "leafKey", "leafName"]

#: How long a minted certificate is valid (from L{BACKDATE} ago).
LEAF_VALIDITY = datetime.timedelta(days=7)
#: How far back a minted certificate's validity starts.
BACKDATE = datetime.timedelta(hours=1)
#: Minted certificates (with their TLS contexts) kept, per CA.
DEFAULT_CACHE_SIZE = 1024
#: Reuse a cached certificate only while it stays valid this much longer.
_FRESH_MARGIN = datetime.timedelta(hours=1)

_TLS_OPTIONS = (
    ssl.OP_NO_COMPRESSION
    | ssl.OP_CIPHER_SERVER_PREFERENCE
    | getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    | getattr(ssl, "OP_SINGLE_ECDH_USE", 0)
)

log = Logger()

_leafKey: Optional[ec.EllipticCurvePrivateKey] = None


def leafKey() -> ec.EllipticCurvePrivateKey:
    """
    The private key of every minted certificate: one EC P-256 key per
    process, made on first use, never written anywhere but the private
    temporary file OpenSSL loads a context from (removed at once).
    """
    global _leafKey
    if _leafKey is None:
        _leafKey = ec.generate_private_key(ec.SECP256R1())
    return _leafKey


def hostForm(host: str) -> Tuple[str, bool]:
    """
    The canonical form of a host name or address, as patterns match it and
    certificates name it: lower case, brackets and one trailing dot
    dropped, an IP address in its compressed form.

    @return: C{(name, isAddress)}.
    """
    name = host.strip().lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    try:
        return str(ipaddress.ip_address(name)), True
    except ValueError:
        pass
    if name.endswith("."):
        name = name[:-1]
    return name, False


def leafName(host: str) -> str:
    """
    The canonical form of the name a certificate is minted for: an IP
    address in its compressed form (brackets dropped), a DNS name in
    lower case, without one trailing dot, as IDNA A-labels.

    @raise ValueError: not a usable host name.
    """
    name, isAddress = hostForm(host)
    if isAddress:
        return name
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValueError(f"not a host name: {host!r}") from None
    name = name.lower()
    if not name or len(name) > 253 or any(not label or len(label) > 63 for label in name.split(".")):
        raise ValueError(f"not a host name: {host!r}")
    for c in name:
        if not (c.isalnum() or c in "-_.*"):
            raise ValueError(f"not a host name: {host!r}")
    return name


def _utc(value: Any) -> datetime.datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=datetime.timezone.utc)  # type: ignore[no-any-return]
    return value  # type: ignore[no-any-return]


def _notAfter(cert: x509.Certificate) -> datetime.datetime:
    return _utc(getattr(cert, "not_valid_after_utc", None) or cert.not_valid_after)


def _notBefore(cert: x509.Certificate) -> datetime.datetime:
    return _utc(getattr(cert, "not_valid_before_utc", None) or cert.not_valid_before)


def _signatureHash(key: Any) -> Optional[hashes.HashAlgorithm]:
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        return None
    return hashes.SHA256()


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


class _Leaf:
    """
    One minted certificate and the server TLS context serving it.
    """

    __slots__ = ("name", "certificate", "context", "notAfter", "others")

    def __init__(self, name: str, certificate: x509.Certificate, context: Any) -> None:
        self.name = name
        self.certificate = certificate
        self.context = context
        self.notAfter = _notAfter(certificate)
        #: Contexts offering other ALPN lists, made when first asked for.
        self.others: Optional[Dict[Tuple[str, ...], Any]] = None


class InterceptCA:
    """
    A certificate authority minting server certificates for intercepted
    connections, with a bounded LRU cache of them per name.

    @ivar certificate: the CA certificate.
    @ivar path: the file it came from (for messages).
    @ivar minted: how many certificates this CA has minted.
    @ivar maxCached: how many minted certificates are kept.
    """

    def __init__(
        self,
        certificate: x509.Certificate,
        key: Any,
        path: str = "",
        maxCached: int = DEFAULT_CACHE_SIZE,
        now: Callable[[], datetime.datetime] = _now,
        alpn: Tuple[str, ...] = ("http/1.1",),
        ciphers: Optional[str] = None,
    ) -> None:
        """
        @param certificate: the CA certificate.
        @param key: its private key.
        @param path: where they came from.
        @param maxCached: minted certificates kept (least recently used
            ones are dropped first).
        @param now: the current time (aware, UTC), for tests.
        @param alpn: ALPN protocols the server contexts select from.
        @param ciphers: the TLS 1.2 cipher list (default: the listeners').
        """
        self.certificate = certificate
        self._key = key
        self.path = path
        self.maxCached = maxCached
        self._now = now
        self._alpn = list(alpn)
        if ciphers is None:
            ciphers = MODERN_CIPHERS
        self._ciphers = ciphers
        self._cache: "OrderedDict[str, _Leaf]" = OrderedDict()
        self.minted = 0
        self._caPEM = certificate.public_bytes(serialization.Encoding.PEM)
        self._keyPEM: Optional[bytes] = None
        try:
            self._authorityKeyId: Optional[x509.AuthorityKeyIdentifier] = (
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                    certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
                )
            )
        except x509.ExtensionNotFound:
            self._authorityKeyId = x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key())

    # -- loading

    @classmethod
    def fromFile(cls, path: str, what: str = "--intercept-ca", **kw: Any) -> "InterceptCA":
        """
        Load a CA from a PEM file holding its certificate and its
        (unencrypted) private key.

        @raise ConfigError: one line naming C{what} and the file: unreadable,
            readable or writable by group or others, no certificate or no
            key, a key that is not the certificate's, a certificate that is
            not a CA or has expired.
        """
        checkKeyFilePermissions(path, what)
        certificates, keys = _parsePEM(_readFile(path, what), path, what)
        if not certificates:
            raise ConfigError(f"{what} {path}: no certificate in it")
        if not keys:
            raise ConfigError(f"{what} {path}: no private key in it (the CA certificate and its key go in one file)")
        key = keys[0]
        public = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        for cert in certificates:
            if cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) == public:
                break
        else:
            raise ConfigError(f"{what} {path}: the private key is not the key of its certificate")
        try:
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
            isCA = constraints.ca
        except x509.ExtensionNotFound:
            isCA = False
        if not isCA:
            raise ConfigError(f"{what} {path}: the certificate is not a CA (basicConstraints CA:TRUE is missing)")
        now = kw.get("now", _now)()
        if _notAfter(cert) <= now:
            raise ConfigError(f"{what} {path}: the CA certificate expired on {_notAfter(cert):%Y-%m-%d %H:%M:%S} UTC")
        return cls(cert, key, path, **kw)

    # -- minting

    def mint(self, name: str) -> x509.Certificate:
        """
        Mint a new leaf certificate for C{name} (no cache involved).

        @param name: a host name or IP address.
        @raise ValueError: C{name} is not one.
        """
        name = leafName(name)
        try:
            san: Union[x509.IPAddress, x509.DNSName] = x509.IPAddress(ipaddress.ip_address(name))
        except ValueError:
            san = x509.DNSName(name)
        now = self._now()
        notBefore = max(now - BACKDATE, _notBefore(self.certificate))
        notAfter = min(now + LEAF_VALIDITY, _notAfter(self.certificate))
        public = leafKey().public_key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.certificate.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(notBefore)
            .not_valid_after(notAfter)
            .add_extension(x509.SubjectAlternativeName([san]), critical=True)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        )
        if self._authorityKeyId is not None:
            builder = builder.add_extension(self._authorityKeyId, critical=False)
        cert = builder.sign(self._key, _signatureHash(self._key))  # type: ignore[arg-type]
        self.minted += 1
        return cert

    def _leafFor(self, name: str) -> _Leaf:
        cache = self._cache
        leaf = cache.get(name)
        if leaf is not None:
            if leaf.notAfter - self._now() > _FRESH_MARGIN or leaf.notAfter >= _notAfter(self.certificate):
                cache.move_to_end(name)
                return leaf
            del cache[name]
        cert = self.mint(name)
        leaf = _Leaf(name, cert, self._context(cert))
        cache[name] = leaf
        while len(cache) > self.maxCached:
            cache.popitem(last=False)
        return leaf

    def certificateFor(self, host: str) -> x509.Certificate:
        """
        The certificate served for C{host}: the cached one, or a new one
        (which then displaces the least recently used when the cache is
        full).  A cached certificate within an hour of its end is minted
        again.

        @raise ValueError: C{host} is not a host name or IP address.
        """
        return self._leafFor(leafName(host)).certificate

    def contextFor(self, host: str, alpn: Optional[Tuple[str, ...]] = None) -> ssl.SSLContext:
        """
        The server C{ssl.SSLContext} serving C{host}'s certificate (and the
        CA after it), cached with it.

        @param alpn: the ALPN protocols it selects from, in preference
            order; L{None} for the CA's own list (C{http/1.1}).
        @raise ValueError: C{host} is not a host name or IP address.
        """
        leaf = self._leafFor(leafName(host))
        if alpn is None or list(alpn) == self._alpn:
            return leaf.context  # type: ignore[no-any-return]
        others = leaf.others
        if others is None:
            others = leaf.others = {}
        context = others.get(alpn)
        if context is None:
            context = others[alpn] = self._context(leaf.certificate, alpn)
        return context

    def cachedNames(self) -> List[str]:
        """
        The names with a cached certificate, least recently used first.
        """
        return list(self._cache)

    def chainFor(self, host: str) -> List[x509.Certificate]:
        """
        The chain served for C{host}: its certificate, then the CA's.
        """
        return [self.certificateFor(host), self.certificate]

    # -- server TLS

    def _context(self, cert: x509.Certificate, alpn: Optional[Tuple[str, ...]] = None) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.options |= _TLS_OPTIONS
        ctx.set_ciphers(self._ciphers)
        protocols = self._alpn if alpn is None else list(alpn)
        if protocols:
            ctx.set_alpn_protocols(protocols)
        if self._keyPEM is None:
            self._keyPEM = leafKey().private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        pem = self._keyPEM + cert.public_bytes(serialization.Encoding.PEM) + self._caPEM
        # ssl loads keys from files only: a private temporary file, removed
        # at once.
        fd, path = tempfile.mkstemp(prefix="txproxy-leaf-", suffix=".pem")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
            ctx.load_cert_chain(path)
        finally:
            os.unlink(path)
        ctx.sni_callback = self._onServerName
        return ctx

    def _onServerName(self, sslobj: Any, name: Optional[str], context: Any) -> Optional[int]:
        """
        The SNI callback of every minted context: serve the name the client
        asked for (the connection started on its C{CONNECT} host's).
        """
        if not name:
            return None
        sslobj.txproxyServerName = name
        if name == getattr(sslobj, "txproxyHost", None):
            return None
        try:
            sslobj.context = self.contextFor(name, getattr(sslobj, "txproxyALPN", None))
        except ValueError:
            return int(ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME)
        except Exception:  # never an exception out of OpenSSL's callback
            log.failure("minting a certificate for {name!r} failed", name=name)
            return int(ssl.ALERT_DESCRIPTION_INTERNAL_ERROR)
        return None

    def serverObject(self, host: str, alpn: Optional[Tuple[str, ...]] = None) -> Callable[[Any, Any], Any]:
        """
        What makes the server-side C{ssl.SSLObject} of one intercepted
        connection to C{host} (its C{CONNECT} host): it starts on C{host}'s
        certificate, and switches to the client's SNI name when that
        differs.  For L{txproxy.tls._proto.TLSServerProtocol}.

        @param alpn: the ALPN protocols to select from, in preference order
            (C{("h2", "http/1.1")} when the origin speaks HTTP/2); L{None}
            for the CA's own list (C{http/1.1}).
        @raise ValueError: C{host} is not a host name or IP address.
        """
        name = leafName(host)
        context = self.contextFor(name, alpn)

        def newObject(incoming: Any, outgoing: Any) -> Any:
            sslobj: Any = context.wrap_bio(incoming, outgoing, server_side=True)
            sslobj.txproxyHost = name
            if alpn is not None:
                sslobj.txproxyALPN = alpn
            return sslobj

        return newObject


def checkKeyFilePermissions(path: str, what: str = "--intercept-ca") -> None:
    """
    Refuse a private key file that users other than its owner may read or
    write (mode bits in C{0o077}).

    @raise ConfigError: one line naming C{what}, the file and its mode.
    """
    try:
        st = os.stat(path)
    except OSError as e:
        raise ConfigError(f"{what} {path}: {_oneLine(e)}") from None
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"{what} {path}: the file holds a private key but is readable or writable by group or others "
            f"(mode {mode:04o}); chmod 600 it"
        )
