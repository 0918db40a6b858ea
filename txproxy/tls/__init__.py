# -*- test-case-name: tests.test_tls -*-
"""
Server-side TLS for listeners (certificates chosen by SNI, re-read on
C{SIGHUP}) and client-side TLS for C{https://} upstreams.

Listening
=========

L{tlsServerEndpoint} turns a C{--listen} string into an endpoint that
terminates TLS with L{ServerTLSOptions}:

  - C{ssl:PORT[:privateKey=K][:certKey=C][:extraCertChain=F][:interface=I][:backlog=N]}:
    the string's own key and certificate are the I{default certificate},
    served when the client sends no SNI name or a name no certificate in
    C{--certs} covers.  (As in Twisted, C{privateKey} defaults to
    C{server.pem} and C{certKey} to C{privateKey}.)  C{sslmethod} and
    C{dhParameters} are refused: the protocol versions and the key exchange
    are ours to choose.
  - C{tcp:}, C{tcp6:} or C{unix:} with C{--certs DIR}: TLS is terminated
    too, with C{DIR} alone; the default certificate is C{DIR/default.pem}
    when that file exists, else the first C{*.pem} file in name order.
  - a C{haproxy:} prefix reads the PROXY header in clear I{before} the TLS
    handshake (as HAProxy's C{send-proxy} writes it).

Certificates
============

L{CertificateStore} reads every C{*.pem} file of a folder (private key and
certificate chain in one file, leaf first or not; other files are
ignored).  A certificate's names are its DNS and iPAddress
subjectAltNames, or its subject CN when it has no subjectAltName extension
at all (RFC 6125); an IP address is matched only by an iPAddress
subjectAltName, never by a DNS name or the CN.  A client that sends no SNI
(what clients do for C{https://IP/}) is served the certificate naming the
address it connected to, if any, else the default.  A
server name matches a certificate by exact name first, then by a wildcard
name C{*.example.com}, which covers exactly one more label on the left
(C{x.example.com}, but neither C{example.com} nor C{x.y.example.com});
comparison ignores case and one trailing dot.  When two certificates claim
a name, the one that expires last wins (ties: the default certificate,
then file name order), so a renewed certificate may be dropped beside the
old one.  Expired certificates are served anyway, with a logged warning.

Every certificate gets its own C{ssl.SSLContext}, built once per load, all
with the same settings (L{ServerTLSOptions}): TLS 1.2 and later,
L{MODERN_CIPHERS} in the server's order, ALPN C{http/1.1}, session tickets,
no renegotiation or compression, and, with a client CA bundle, required
client certificates.  A connection starts on the default certificate's
context and the SNI callback switches it to the one the name selects.

Reloading (C{SIGHUP}): L{TLSServerEndpoint.reload} (or
L{ServerTLSOptions.reload}) re-reads the folder, the default certificate's
files and the client CA bundle, all or nothing: on any error the old set
stays in use and L{ConfigError} is raised.  Connections accepted after a
successful reload use the new certificates; open connections are not
touched.  L{prepareReload} does the same for several endpoints at once,
in two steps (read everything, then install), for a reload that must
succeed or fail as a whole.

No domain fronting
==================

L{servedNames} tells the HTTP layer which names the certificate served
on a connection carries; L{hostMatchesNames} checks a request's C{Host}
against them.  The reverse proxy answers C{421} when it does not match.
L{isTLSTransport} tells whether a connection is TLS at all (one listener
group may mix C{tcp:} and C{ssl:} strings).

A listener's TLS transport implements C{loseWriteConnection} as a TLS
close (C{close_notify} after the buffered data) rather than letting it
reach the TCP transport below.

Upstreams
=========

L{wrapClientTLS} puts TLS on a client endpoint to an C{https://} backend:
certificate chain verified by OpenSSL against a CA bundle file or the
platform's store, then the backend's name checked with service_identity
(a DNS name or an IP address), ALPN C{http/1.1}, TLS 1.2 and later; the
records go through the stdlib C{ssl} module (L{TLSClientEndpoint}).
L{clientTLSOptions} gives the same policy as pyOpenSSL options, for code
that uses Twisted's own TLS.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import ssl
import tempfile
from functools import lru_cache
from typing import Any, Callable, Dict, FrozenSet, Iterable, List, Optional, Sequence, Tuple, cast

import attr
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet.endpoints import _WrapperServerEndpoint
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IReactorTime,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
)
from twisted.logger import Logger
from zope.interface import implementer

from txproxy._common import isIPLiteral
from txproxy.tls._proto import TLSClientFactory, TLSServerFactory, TLSServerProtocol
from txproxy.errors import ConfigError
from txproxy.proxyaccept import HalfCloseableHAProxyFactory

__all__ = [
    "KEEP",
    "MODERN_CIPHERS",
    "CertificateEntry",
    "CertificateStore",
    "ServerTLSOptions",
    "TLSClientEndpoint",
    "TLSServerEndpoint",
    "certificateNames",
    "checkCABundle",
    "clientTLSOptions",
    "hostMatchesNames",
    "isTLSListener",
    "isTLSTransport",
    "loadCertificateFile",
    "prepareReload",
    "requestedServerName",
    "servedNames",
    "tlsServerEndpoint",
    "verificationFailure",
    "wrapClientTLS",
]

log = Logger(namespace="txproxy.tls")

#: The TLS 1.2 cipher suites a listener accepts, in the server's order of
#: preference: ECDHE key exchange with AES-GCM or ChaCha20-Poly1305 only (no
#: CBC, RC4, 3DES, export, static RSA or DHE).  TLS 1.3 suites are
#: OpenSSL's (all AEAD).
MODERN_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)

#: C{minimumVersion} values L{ServerTLSOptions} accepts.
_VERSIONS: Dict[str, ssl.TLSVersion] = {
    "1.2": ssl.TLSVersion.TLSv1_2,
    "1.3": ssl.TLSVersion.TLSv1_3,
}


class _Keep:
    def __repr__(self) -> str:
        return "KEEP"


#: "Leave this setting as it is" for the C{prepare}/C{reload} methods.
KEEP: Any = _Keep()

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----", re.DOTALL)
_KEY_LABELS = (b"PRIVATE KEY", b"RSA PRIVATE KEY", b"EC PRIVATE KEY")


# ---------------------------------------------------------------------------
# Names


def _normalizeName(name: str) -> str:
    name = name.strip().lower()
    if name.endswith("."):
        name = name[:-1]
    return name


def _canonicalIP(host: str) -> Optional[str]:
    """
    C{host} as an IP address in one canonical text form (IPv6 compressed,
    lower-case, without brackets; an IPv4-mapped IPv6 address as IPv4), or
    L{None} when it is not an IP literal (a zone index, C{fe80::1%eth0},
    is not one here).
    """
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if "%" in host:
        return None
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def certificateNames(certificate: x509.Certificate) -> FrozenSet[str]:
    """
    The names a certificate is valid for (RFC 6125, as service_identity
    reads them): its DNS subjectAltNames, lower-case, and its iPAddress
    subjectAltNames, as IP literals in canonical form (L{_canonicalIP});
    or its subject common names when it has no subjectAltName extension
    (RFC 6125 section 6.4.4).  Wildcard names are kept as written
    (C{*.example.com}).  A DNS name or common name that is written as an
    IP address is left out: an IP address is matched only by an iPAddress
    subjectAltName, so every IP literal among the names is one.

    @param certificate: a leaf certificate.
    @return: the names; empty when it has a subjectAltName extension with
        neither a DNS name nor an IP address in it.
    """
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        cns = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        names = (_normalizeName(str(cn.value)) for cn in cns if str(cn.value).strip())
        return frozenset(n for n in names if _canonicalIP(n) is None)
    dns = (_normalizeName(n) for n in san.get_values_for_type(x509.DNSName) if n.strip())
    ips = (_canonicalIP(str(ip)) for ip in san.get_values_for_type(x509.IPAddress))
    return frozenset([n for n in dns if _canonicalIP(n) is None] + [ip for ip in ips if ip is not None])


def _wildcardSuffix(name: str) -> Optional[str]:
    """
    C{"example.com"} for the wildcard name C{"*.example.com"}; L{None} for
    any other name (partial-label wildcards like C{f*.example.com} are not
    honoured).
    """
    if name.startswith("*.") and len(name) > 2 and "*" not in name[2:]:
        return name[2:]
    return None


def _hostOnly(host: str) -> Optional[str]:
    """
    The host part of a C{Host} header value: port removed, brackets of an
    IPv6 literal removed, lower-case, no trailing dot; L{None} when empty
    or malformed.
    """
    host = host.strip()
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            return None
        rest = host[end + 1 :]
        if rest and not (rest.startswith(":") and rest[1:].isdigit()):
            return None
        return host[1:end].lower() or None
    if host.count(":") == 1:
        host, _, port = host.partition(":")
        if not port.isdigit():
            return None
    elif ":" in host:
        return None
    host = _normalizeName(host)
    return host or None


def hostMatchesNames(host: str, names: Iterable[str]) -> bool:
    """
    Whether the host of a request's C{Host} header (a port, if any, is
    ignored) is one of C{names}: exactly, ignoring case and a trailing dot,
    or by a wildcard name C{*.example.com} covering exactly one more label.
    An IP literal (C{127.0.0.1}, C{[::1]:443}) matches only the same
    address among the names (an iPAddress subjectAltName, see
    L{certificateNames}), never a wildcard.

    @param host: the C{Host} header value, e.g. C{"a.test:8443"}.
    @param names: certificate names, as from L{servedNames}.
    @return: L{False} for a malformed or empty host.
    """
    bare = _hostOnly(host)
    if bare is None:
        return False
    names = names if isinstance(names, (set, frozenset)) else frozenset(names)
    address = _canonicalIP(bare)
    if address is not None:
        return address in names
    if bare in names:
        return True
    first, dot, parent = bare.partition(".")
    return bool(dot and first and parent and ("*." + parent) in names)


# ---------------------------------------------------------------------------
# Certificate files


@attr.s(frozen=True, slots=True, eq=False, auto_attribs=True)
class CertificateEntry:
    """
    One certificate with its private key, as loaded from disk.

    @ivar names: L{certificateNames} of the leaf.
    @ivar path: the file the certificate came from.
    @ivar certificate: the leaf certificate.
    @ivar privateKey: its private key.
    @ivar chain: the other certificates of the file, in file order (sent
        after the leaf).
    """

    names: FrozenSet[str]
    path: str
    certificate: x509.Certificate
    privateKey: Any
    chain: Tuple[x509.Certificate, ...] = ()

    @property
    def notAfter(self) -> datetime.datetime:
        """
        The end of the leaf certificate's validity (naive, UTC).
        """
        value: Any = getattr(self.certificate, "not_valid_after_utc", None)
        if value is None:  # cryptography before 42
            value = self.certificate.not_valid_after
        return cast(datetime.datetime, value.replace(tzinfo=None))


def _oneLine(e: BaseException) -> str:
    text = getattr(e, "strerror", None) or str(e) or type(e).__name__
    text = " ".join(str(text).split())
    # cryptography's PEM errors carry a long FAQ link.
    return text.split(". See https://")[0]


def _readFile(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(f"{what} {path}: {_oneLine(e)}") from None


def _parsePEM(data: bytes, path: str, what: str) -> Tuple[List[x509.Certificate], List[Any]]:
    certificates: List[x509.Certificate] = []
    keys: List[Any] = []
    for match in _PEM_BLOCK.finditer(data):
        label = match.group(1)
        block = match.group(0)
        try:
            if label == b"CERTIFICATE":
                certificates.append(x509.load_pem_x509_certificate(block))
            elif label == b"ENCRYPTED PRIVATE KEY" or (label in _KEY_LABELS and b"ENCRYPTED" in block[:200]):
                raise ConfigError(f"{what} {path}: encrypted private keys are not supported")
            elif label in _KEY_LABELS:
                keys.append(serialization.load_pem_private_key(block, password=None))
        except ConfigError:
            raise
        except Exception as e:  # cryptography raises ValueError, TypeError, ...
            kind = "certificate" if label == b"CERTIFICATE" else "private key"
            raise ConfigError(f"{what} {path}: bad {kind}: {_oneLine(e)}") from None
    return certificates, keys


def _publicBytes(key: Any) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)  # type: ignore[no-any-return]


def loadCertificateFile(
    path: str, certPath: Optional[str] = None, chainPath: Optional[str] = None, what: str = "certificate file"
) -> CertificateEntry:
    """
    Load a private key and a certificate chain.

    @param path: a PEM file holding the private key (and, unless
        C{certPath} is given, the certificates: the leaf, the one matching
        the key, and its chain).
    @param certPath: a separate PEM file with the certificates.
    @param chainPath: a PEM file with more chain certificates.
    @param what: how error messages name the file.
    @raise ConfigError: a file cannot be read, holds no or several private
        keys, no certificate matching the key, or something unparsable; the
        message is one line naming the file.
    """
    keyData = _readFile(path, what)
    certs, keys = _parsePEM(keyData, path, what)
    certFile = path
    if certPath is not None and os.path.abspath(certPath) != os.path.abspath(path):
        certFile = certPath
        certs, _ = _parsePEM(_readFile(certPath, what), certPath, what)
    if chainPath is not None:
        extra, _ = _parsePEM(_readFile(chainPath, what), chainPath, what)
        if not extra:
            raise ConfigError(f"{what} {chainPath}: no certificate in it")
        certs = certs + extra
    if not keys:
        raise ConfigError(f"{what} {path}: no private key in it")
    if len(keys) > 1:
        raise ConfigError(f"{what} {path}: more than one private key in it")
    if not certs:
        raise ConfigError(f"{what} {certFile}: no certificate in it")
    key = keys[0]
    keyPublic = _publicBytes(key.public_key())
    for index, cert in enumerate(certs):
        if _publicBytes(cert.public_key()) == keyPublic:
            leaf = cert
            chain = tuple(certs[:index] + certs[index + 1 :])
            break
    else:
        raise ConfigError(f"{what} {certFile}: no certificate matches the private key")
    return CertificateEntry(certificateNames(leaf), certFile, leaf, key, chain)


# ---------------------------------------------------------------------------
# The store


class _CertificateContext(ssl.SSLContext):
    """
    A server context serving one certificate, remembering which.

    @ivar entry: the certificate this context serves.
    """

    entry: CertificateEntry


@attr.s(frozen=True, slots=True, auto_attribs=True)
class _CertificateSet:
    """
    One immutable generation of a store: what a reload replaces at once.
    """

    entries: Tuple[CertificateEntry, ...]
    default: CertificateEntry
    exact: Dict[str, CertificateEntry]
    wildcard: Dict[str, CertificateEntry]
    contexts: Dict[CertificateEntry, Any]

    def find(self, serverName: str) -> Optional[CertificateEntry]:
        name = _normalizeName(serverName)
        address = _canonicalIP(name)
        if address is not None:
            # An IP address: only an iPAddress subjectAltName covers it.
            return self.exact.get(address)
        found = self.exact.get(name)
        if found is not None:
            return found
        first, dot, parent = name.partition(".")
        if dot and first and parent:
            return self.wildcard.get(parent)
        return None


def _index(candidates: Sequence[CertificateEntry]) -> Tuple[Dict[str, CertificateEntry], Dict[str, CertificateEntry]]:
    exact: Dict[str, CertificateEntry] = {}
    wildcard: Dict[str, CertificateEntry] = {}
    for entry in candidates:
        for name in entry.names:
            suffix = _wildcardSuffix(name)
            table, key = (wildcard, suffix) if suffix is not None else (exact, name)
            if "*" in key:
                continue
            old = table.get(key)
            if old is None or entry.notAfter > old.notAfter:
                table[key] = entry
    return exact, wildcard


class CertificateStore:
    """
    The certificates of one TLS listener: a folder of C{*.pem} files and a
    default certificate.  See the module docstring for the naming and
    matching rules.

    @ivar directory: the folder (C{--certs}), or L{None}.
    @ivar generation: how many times a certificate set was installed (1
        after construction).
    """

    def __init__(
        self,
        directory: Optional[str] = None,
        defaultKeyPath: Optional[str] = None,
        defaultCertPath: Optional[str] = None,
        defaultChainPath: Optional[str] = None,
        makeContext: Optional[Callable[[CertificateEntry, "_CertificateSet"], Any]] = None,
    ) -> None:
        """
        Load the certificates.

        @param directory: the folder of C{*.pem} files.
        @param defaultKeyPath: the default certificate's key file (holding
            the certificate too unless C{defaultCertPath} is given).  When
            L{None}, the default is C{directory/default.pem}, else the
            folder's first file in name order.
        @param defaultCertPath: the default certificate's certificate file.
        @param defaultChainPath: more chain certificates for the default.
        @param makeContext: builds the OpenSSL context of one certificate
            (L{ServerTLSOptions} passes its own); called once per
            certificate per load.
        @raise ConfigError: nothing to serve, or a file does not load.
        """
        self._defaultPaths = (defaultKeyPath, defaultCertPath, defaultChainPath)
        self.directory = directory
        self._makeContext = makeContext
        self._current = self._load(directory, makeContext)
        self.generation = 1

    def _readFolder(self, directory: Optional[str]) -> List[CertificateEntry]:
        if directory is None:
            return []
        try:
            names = sorted(os.listdir(directory))
        except OSError as e:
            raise ConfigError(f"--certs folder {directory}: {_oneLine(e)}") from None
        entries = []
        for name in names:
            path = os.path.join(directory, name)
            if name.endswith(".pem") and os.path.isfile(path):
                entries.append(loadCertificateFile(path))
        return entries

    def _load(self, directory: Optional[str], makeContext: Optional[Callable[..., Any]]) -> _CertificateSet:
        keyPath, certPath, chainPath = self._defaultPaths
        if directory is None and keyPath is None:
            raise ConfigError("a TLS listener needs a certificate: an ssl: privateKey or --certs")
        entries = self._readFolder(directory)
        if keyPath is not None:
            default = loadCertificateFile(keyPath, certPath, chainPath, what="listener certificate")
            candidates = [default] + entries
        else:
            if not entries:
                raise ConfigError(f"--certs folder {directory}: no *.pem certificate in it")
            default = entries[0]
            for entry in entries:
                if os.path.basename(entry.path) == "default.pem":
                    default = entry
            candidates = [default] + [e for e in entries if e is not default]
        now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
        for entry in candidates:
            if entry.notAfter < now:
                log.warn("certificate {path} expired on {date} (served anyway)", path=entry.path, date=entry.notAfter)
        exact, wildcard = _index(candidates)
        result = _CertificateSet(tuple(entries), default, exact, wildcard, {})
        if makeContext is not None:
            for entry in candidates:
                result.contexts[entry] = makeContext(entry, result)
        return result

    @property
    def entries(self) -> Tuple[CertificateEntry, ...]:
        """
        The folder's certificates, in file name order (the default
        certificate of an C{ssl:} listener is not among them).
        """
        return self._current.entries

    @property
    def default(self) -> CertificateEntry:
        """
        The certificate served without SNI or for a name nothing covers.
        """
        return self._current.default

    def find(self, serverName: str) -> Optional[CertificateEntry]:
        """
        The certificate covering C{serverName} (exact names first, then
        wildcards), including the default certificate's own names.

        @return: L{None} when no certificate covers it.
        """
        return self._current.find(serverName)

    def select(self, serverName: Optional[str]) -> CertificateEntry:
        """
        The certificate to serve for a ClientHello naming C{serverName}
        (L{None}: no SNI): L{find}'s answer, else the default.
        """
        if serverName:
            found = self._current.find(serverName)
            if found is not None:
                return found
        return self._current.default

    def prepare(self, directory: Any = KEEP, makeContext: Any = KEEP) -> Callable[[], None]:
        """
        Read every file again (the first half of a reload): nothing changes
        until the returned function is called, which installs the new set
        at once.

        @param directory: a new folder (or L{None} for none), or L{KEEP}.
        @param makeContext: a new context builder, or L{KEEP}.
        @raise ConfigError: a file does not load.
        """
        if directory is KEEP:
            directory = self.directory
        if makeContext is KEEP:
            makeContext = self._makeContext
        fresh = self._load(directory, makeContext)

        def commit() -> None:
            self.directory = directory
            self._makeContext = makeContext
            self._current = fresh
            self.generation += 1

        return commit

    def reload(self) -> None:
        """
        Re-read every file, all or nothing.

        @raise ConfigError: a file does not load; the previous certificates
            stay in use.
        """
        self.prepare()()


# ---------------------------------------------------------------------------
# Server TLS


def _loadCABundle(path: str, what: str) -> List[x509.Certificate]:
    certs, _ = _parsePEM(_readFile(path, what), path, what)
    if not certs:
        raise ConfigError(f"{what} {path}: no certificate in it")
    return certs


class ServerTLSOptions:
    """
    Server TLS settings of a listener, making one TLS server object per
    accepted connection from the current certificate set.

    Each certificate has its own C{ssl.SSLContext}, built once per
    (re)load, all with the same settings: TLS 1.2 and later (by default),
    L{MODERN_CIPHERS} with the server's preference, no compression, no
    renegotiation, session tickets, ALPN, and optionally client
    certificate verification.  A connection starts on the default
    certificate's context; the SNI callback switches it to the context of
    the certificate the name selects.

    @ivar store: the L{CertificateStore}.
    @ivar clientCA: the client CA bundle's path, or L{None}.
    """

    def __init__(
        self,
        certsDir: Optional[str] = None,
        privateKey: Optional[str] = None,
        certKey: Optional[str] = None,
        extraCertChain: Optional[str] = None,
        clientCA: Optional[str] = None,
        acceptableProtocols: Sequence[bytes] = (b"http/1.1",),
        minimumVersion: str = "1.2",
        ciphers: str = MODERN_CIPHERS,
    ) -> None:
        """
        @param certsDir: the C{--certs} folder.
        @param privateKey: the default certificate's key file (an C{ssl:}
            listener's C{privateKey}); see L{CertificateStore}.
        @param certKey: the default certificate's certificate file.
        @param extraCertChain: more chain certificates for the default.
        @param clientCA: a PEM bundle of CAs; when given, every client must
            present a certificate issued by one of them (the handshake fails
            otherwise).
        @param acceptableProtocols: ALPN protocols the server selects from
            the client's offer, in the server's preference; empty to leave
            ALPN out.  A client offering none of them gets no ALPN answer
            (the handshake goes on).
        @param minimumVersion: C{"1.2"} or C{"1.3"}.
        @param ciphers: the OpenSSL cipher list for TLS 1.2.
        @raise ConfigError: a file does not load or a setting is invalid.
        """
        if minimumVersion not in _VERSIONS:
            raise ConfigError(f"unsupported minimum TLS version {minimumVersion!r} (use 1.2 or 1.3)")
        self._minimumVersion = _VERSIONS[minimumVersion]
        self._ciphers = ciphers
        self._protocols = [p.decode("ascii") for p in acceptableProtocols]
        self.clientCA = clientCA
        makeContext = self._contextMaker(clientCA)
        self.store = CertificateStore(certsDir, privateKey, certKey, extraCertChain, makeContext=makeContext)

    def _contextMaker(self, clientCA: Optional[str]) -> Callable[[CertificateEntry, _CertificateSet], Any]:
        """
        Read the client CA bundle; return the context builder for one load.
        """
        if clientCA is not None:
            _loadCABundle(clientCA, "client CA bundle")  # checked here, for the error message

        def makeContext(entry: CertificateEntry, certificateSet: _CertificateSet) -> Any:
            return self._makeContext(entry, certificateSet, clientCA)

        return makeContext

    def _makeContext(self, entry: CertificateEntry, certificateSet: _CertificateSet, clientCA: Optional[str]) -> _CertificateContext:
        ctx = _CertificateContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.entry = entry
        ctx.minimum_version = self._minimumVersion
        ctx.options |= (
            ssl.OP_NO_COMPRESSION
            | ssl.OP_CIPHER_SERVER_PREFERENCE
            | getattr(ssl, "OP_NO_RENEGOTIATION", 0)
            | getattr(ssl, "OP_SINGLE_ECDH_USE", 0)
        )
        try:
            ctx.set_ciphers(self._ciphers)
            _loadEntry(ctx, entry)
        except ssl.SSLError as e:
            raise ConfigError(f"certificate file {entry.path}: OpenSSL refused it: {_sslErrorText(e)}") from None
        if self._protocols:
            ctx.set_alpn_protocols(self._protocols)
        if clientCA is not None:
            try:
                ctx.load_verify_locations(cafile=clientCA)
            except (ssl.SSLError, OSError) as e:
                raise ConfigError(f"client CA bundle {clientCA}: OpenSSL refused it: {_sslErrorText(e)}") from None
            ctx.verify_mode = ssl.CERT_REQUIRED

        def onServerName(sslobj: Any, name: Optional[str], context: Any) -> None:
            if not name:
                # No SNI (what clients send for https://IP/): the address
                # the client connected to picks a certificate naming it.
                local = getattr(sslobj, "txproxyLocalHost", None)
                if local is None or _canonicalIP(local) is None:
                    return
                name = local
            else:
                sslobj.txproxyServerName = name
            found = certificateSet.find(name)
            if found is not None and found is not entry:
                sslobj.context = certificateSet.contexts[found]

        ctx.sni_callback = onServerName
        return ctx

    def serverObject(self, incoming: Any, outgoing: Any) -> Any:
        """
        A new server-side C{ssl.SSLObject} on the current default context,
        reading C{incoming} and writing C{outgoing} (two L{ssl.MemoryBIO}).
        """
        current = self.store._current
        return current.contexts[current.default].wrap_bio(incoming, outgoing, server_side=True)

    def prepareReload(self, certsDir: Any = KEEP, clientCA: Any = KEEP) -> Callable[[], None]:
        """
        Read the client CA bundle and every certificate again, building
        their contexts (the first half of a reload); nothing changes until
        the returned function is called, which installs them at once.

        @param certsDir: a new C{--certs} folder (L{None}: none), or L{KEEP}.
        @param clientCA: a new client CA bundle (L{None}: none), or L{KEEP}.
        @raise ConfigError: something does not load.
        """
        if clientCA is KEEP:
            clientCA = self.clientCA
        commitStore = self.store.prepare(certsDir, self._contextMaker(clientCA))

        def commit() -> None:
            self.clientCA = clientCA
            commitStore()

        return commit

    def reload(self, certsDir: Any = KEEP, clientCA: Any = KEEP) -> None:
        """
        Re-read the client CA bundle and the certificates, all or nothing;
        connections accepted afterwards use them, open ones are untouched.

        @param certsDir: a new C{--certs} folder, or L{KEEP}.
        @param clientCA: a new client CA bundle, or L{KEEP}.
        @raise ConfigError: something does not load; nothing changed.
        """
        self.prepareReload(certsDir, clientCA)()


def _loadEntry(ctx: ssl.SSLContext, entry: CertificateEntry) -> None:
    """
    Give C{ctx} the key and chain of C{entry}.  C{ssl} loads them from a
    file only; the file is written leaf first (the certificate files
    themselves may have it anywhere), private to this user, and removed
    at once.
    """
    pem = entry.privateKey.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    for cert in (entry.certificate,) + tuple(entry.chain):
        pem += cert.public_bytes(serialization.Encoding.PEM)
    fd, path = tempfile.mkstemp(prefix="txproxy-", suffix=".pem")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        ctx.load_cert_chain(path)
    finally:
        os.unlink(path)


def _give(method: Callable[[Any], None], value: Any, convert: Callable[[Any], Any]) -> None:
    """
    Pass a cryptography object to a pyOpenSSL method: directly where
    pyOpenSSL takes it (24.3 and later; older objects are deprecated
    there), converted for older pyOpenSSL.
    """
    try:
        method(value)
    except TypeError:
        method(convert(value))


def _acceptVerified(connection: Any, certificate: Any, errno: int, depth: int, ok: int) -> bool:
    """
    OpenSSL's own verdict on each certificate of a chain.
    """
    return bool(ok)


def _sslErrorText(e: BaseException) -> str:
    if isinstance(e, SSL.Error):
        try:
            return "; ".join(str(item[2]) for item in e.args[0]) or str(e)
        except (IndexError, TypeError):
            return str(e)
    reason = getattr(e, "reason", None)
    if reason:
        return str(reason).replace("_", " ").lower()
    return _oneLine(e)


def _tlsHandle(transport: Any) -> Optional[Any]:
    getHandle = getattr(transport, "getHandle", None)
    handle = getHandle() if getHandle is not None else None
    return handle if isinstance(handle, (ssl.SSLObject, SSL.Connection)) else None


def isTLSTransport(transport: Any) -> bool:
    """
    Whether C{transport} (an application protocol's) is a TLS connection:
    decide C{https} versus C{http}, and whether the C{421} check applies,
    per connection, since one listener group may mix C{tcp:} and C{ssl:}
    strings.
    """
    if isinstance(transport, TLSServerProtocol):
        return True
    return _tlsHandle(transport) is not None


def servedNames(transport: Any) -> FrozenSet[str]:
    """
    The names of the certificate served on a TLS connection (wildcard
    names as patterns, e.g. C{*.a.test}), for L{hostMatchesNames}.

    Call it once the handshake is over (any time application data has been
    received); before that it gives the default certificate's names.

    @param transport: the C{transport} of a protocol behind a
        L{TLSServerEndpoint} (a L{txproxy.tls._proto.TLSServerProtocol}).
    @return: an empty set when the transport is not one of our TLS
        connections (plain TCP: there is nothing to check).
    """
    handle = _tlsHandle(transport)
    if handle is None:
        return frozenset()
    context = handle.get_context() if isinstance(handle, SSL.Connection) else handle.context
    entry = getattr(context, "entry", None)
    if entry is None:
        return frozenset()
    return entry.names  # type: ignore[no-any-return]


def requestedServerName(transport: Any) -> Optional[str]:
    """
    The server name (SNI) the client sent on a TLS connection, lower-case,
    or L{None} (no SNI, or not TLS).
    """
    handle = _tlsHandle(transport)
    if handle is None:
        return None
    if isinstance(handle, SSL.Connection):
        raw = handle.get_servername()
        name = raw.decode("ascii", "replace") if raw else None
    else:
        name = getattr(handle, "txproxyServerName", None)
    if not name:
        return None
    return _normalizeName(name)


# ---------------------------------------------------------------------------
# Listening endpoints


@implementer(IStreamServerEndpoint)
class TLSServerEndpoint:
    """
    An endpoint adding TLS (L{ServerTLSOptions}) to the connections of an
    inner stream server endpoint.

    @ivar options: the L{ServerTLSOptions}.
    @ivar endpoint: the inner (clear-text) endpoint.
    """

    def __init__(self, endpoint: Any, options: ServerTLSOptions, clock: Optional[IReactorTime] = None) -> None:
        """
        @param endpoint: the inner endpoint.
        @param options: the server TLS options.
        @param clock: unused (TLS writes are not buffered on a timer); kept
            for callers that pass the reactor.
        """
        self.endpoint = endpoint
        self.options = options
        self._clock = clock

    @property
    def store(self) -> CertificateStore:
        """
        The certificate store.
        """
        return self.options.store

    def listen(self, protocolFactory: Any) -> "Deferred[Any]":
        """
        Listen with C{protocolFactory} behind TLS.
        """
        wrapped = TLSServerFactory(self.options.serverObject, protocolFactory)
        return self.endpoint.listen(wrapped)  # type: ignore[no-any-return]

    def prepareReload(self, certsDir: Any = KEEP, clientCA: Any = KEEP) -> Callable[[], None]:
        """
        See L{ServerTLSOptions.prepareReload}.
        """
        return self.options.prepareReload(certsDir, clientCA)

    def reload(self, certsDir: Any = KEEP, clientCA: Any = KEEP) -> None:
        """
        Re-read the certificates (see L{ServerTLSOptions.reload}).

        @raise ConfigError: something does not load; nothing changed.
        """
        self.options.reload(certsDir, clientCA)


def isTLSListener(description: str, certsDir: Optional[str] = None) -> bool:
    """
    Whether L{tlsServerEndpoint} is the way to build this listener: an
    C{ssl:} string (after an optional C{haproxy:} prefix), or any string
    when C{--certs} is given.
    """
    bare = description[len("haproxy:") :] if description.startswith("haproxy:") else description
    return certsDir is not None or bare.startswith("ssl:")


_SSL_KEYWORDS = frozenset(["port", "privateKey", "certKey", "extraCertChain", "interface", "backlog"])


def tlsServerEndpoint(
    reactor: Any,
    description: str,
    certsDir: Optional[str] = None,
    clientCA: Optional[str] = None,
    acceptableProtocols: Sequence[bytes] = (b"http/1.1",),
    minimumVersion: str = "1.2",
) -> TLSServerEndpoint:
    """
    Build a TLS-terminating listening endpoint from a C{--listen} string.

    See the module docstring for the strings understood and which
    certificate is the default.

    @param reactor: the reactor to listen with.
    @param description: C{ssl:...}, or C{tcp:}/C{tcp6:}/C{unix:} strings
        with C{certsDir}; optionally prefixed by C{haproxy:}.
    @param certsDir: the C{--certs} folder, or L{None}.
    @param clientCA: the client CA bundle (C{client_ca}), or L{None}.
    @param acceptableProtocols: ALPN protocols to select; empty for none.
    @param minimumVersion: C{"1.2"} or C{"1.3"}.
    @raise ConfigError: a malformed string or a file that does not load
        (one line).
    """
    from twisted.internet.endpoints import TCP4ServerEndpoint, _parse, serverFromString

    proxied = description.startswith("haproxy:")
    bare = description[len("haproxy:") :] if proxied else description
    privateKey = certKey = chain = None

    def bad(detail: str) -> ConfigError:
        return ConfigError(f"bad --listen endpoint {description!r}: {detail}")

    if bare.startswith("ssl:"):
        args, kw = _parse(bare)
        unknown = sorted(set(kw) - _SSL_KEYWORDS)
        if unknown:
            raise bad(f"unsupported option {unknown[0]} (txproxy chooses TLS versions and key exchange)")
        positional = args[1:]
        if "port" in kw:
            positional = [kw.pop("port")] + positional
        if len(positional) != 1:
            raise bad("expected ssl:PORT[:privateKey=FILE][:certKey=FILE][:interface=ADDRESS][:backlog=N]")
        try:
            port = int(positional[0])
            backlog = int(kw.get("backlog", 50))
        except ValueError as e:
            raise bad(_oneLine(e)) from None
        if not 0 <= port <= 65535:
            raise bad(f"port {port} out of range")
        privateKey = kw.get("privateKey", "server.pem")
        certKey = kw.get("certKey")
        chain = kw.get("extraCertChain")
        try:  # errors in the string's own files name the string too
            loadCertificateFile(privateKey, certKey, chain, what="certificate file")
        except ConfigError as e:
            raise bad(str(e)) from None
        raw: Any = TCP4ServerEndpoint(reactor, port, backlog, kw.get("interface", ""))
    elif certsDir is None:
        raise bad("not a TLS listener: use ssl:... or --certs")
    else:
        try:
            raw = serverFromString(reactor, bare)
        except Exception as e:  # serverFromString raises many kinds for bad input
            raise bad(_oneLine(e)) from None
    if proxied:
        raw = _WrapperServerEndpoint(raw, HalfCloseableHAProxyFactory)
    options = ServerTLSOptions(
        certsDir,
        privateKey,
        certKey,
        chain,
        clientCA=clientCA,
        acceptableProtocols=acceptableProtocols,
        minimumVersion=minimumVersion,
    )
    return TLSServerEndpoint(raw, options, reactor)


def prepareReload(endpoints: Iterable[Any]) -> Callable[[], None]:
    """
    Prepare a certificate reload of every L{TLSServerEndpoint} among
    C{endpoints} (others are skipped), all or nothing: for a C{SIGHUP}
    handler that first builds everything that can fail, then applies it.

    @return: a function installing every endpoint's new certificates.
    @raise ConfigError: one endpoint's files do not load (the first such
        error); nothing was changed.
    """
    commits = [e.prepareReload() for e in endpoints if isinstance(e, TLSServerEndpoint)]

    def commit() -> None:
        for c in commits:
            c()

    return commit


# ---------------------------------------------------------------------------
# Client TLS (https:// upstreams)


@implementer(IOpenSSLClientConnectionCreator)
class _UnverifiedClientTLS:
    """
    Client TLS that checks nothing about the server (C{tls_verify =
    false}), still sending SNI and ALPN C{http/1.1}, TLS 1.2 and later.
    """

    def __init__(self, hostname: str) -> None:
        self._hostname = hostname
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.set_options(SSL.OP_NO_COMPRESSION)
        ctx.set_verify(SSL.VERIFY_NONE, _acceptVerified)
        self._context = ctx

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        if not isIPLiteral(self._hostname):
            connection.set_tlsext_host_name(self._hostname.encode("idna"))
        connection.set_alpn_protos([b"http/1.1"])
        return connection


def _bundleStamp(caBundle: Optional[str]) -> Any:
    """
    What identifies the current contents of a CA bundle file in the caches
    of client TLS settings (so a changed file is read again), or L{None}.

    @raise ConfigError: the file cannot be read.
    """
    if caBundle is None:
        return None
    try:
        st = os.stat(caBundle)
    except OSError as e:
        raise ConfigError(f"CA bundle {caBundle}: {_oneLine(e)}") from None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


@lru_cache(maxsize=256)
def _clientTLSOptions(hostname: str, caBundle: Optional[str], stamp: Any, verify: bool) -> Any:
    from twisted.internet import ssl

    protocols = [b"http/1.1"]
    minimum = ssl.TLSVersion.TLSv1_2
    if not verify:
        return _UnverifiedClientTLS(hostname)
    if caBundle is not None:
        trust = ssl.trustRootFromCertificates(
            [ssl.Certificate.loadPEM(c.public_bytes(serialization.Encoding.PEM)) for c in _loadCABundle(caBundle, "CA bundle")]
        )
    else:
        trust = ssl.platformTrust()
    return ssl.optionsForClientTLS(
        hostname, trustRoot=trust, acceptableProtocols=protocols, extraCertificateOptions={"raiseMinimumTo": minimum}
    )


def clientTLSOptions(hostname: str, caBundle: Optional[str] = None, verify: bool = True) -> Any:
    """
    Client TLS options for an C{https://} upstream.

    With C{verify} (the default) the upstream's certificate must chain to
    a CA of C{caBundle} (a PEM file), or of the platform's trust store when
    no bundle is given, and be valid for C{hostname} (service_identity: a
    DNS name or an IP address).  ALPN offers C{http/1.1}; TLS 1.2 and later.

    With C{verify=False} B{nothing about the upstream's certificate is
    checked}: neither its issuer nor its name, so anyone on the path can
    impersonate the upstream.  Use it only when a route explicitly says so
    (C{tls_verify = false}).  SNI and ALPN are still sent.

    The options are cached per (hostname, bundle and its modification
    time, verify): call it for every connection without rebuilding an
    OpenSSL context each time; a changed bundle file is read again.

    @param hostname: the backend's host name or IP address (the URL's).
    @param caBundle: a PEM file of trusted CAs, or L{None}.
    @param verify: L{False} to turn all verification off.
    @return: an L{IOpenSSLClientConnectionCreator} (for
        L{twisted.internet.endpoints.wrapClientTLS} or
        L{TLSMemoryBIOFactory}).
    @raise ConfigError: the bundle cannot be read or holds no certificate.
    """
    stamp = _bundleStamp(caBundle) if verify else None
    return _clientTLSOptions(hostname, caBundle if verify else None, stamp, verify)


@lru_cache(maxsize=64)
def _clientContext(caBundle: Optional[str], stamp: Any, verify: bool) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION
    ctx.set_alpn_protocols(["http/1.1"])
    ctx.check_hostname = False  # service_identity checks the name (_verifyName)
    if not verify:
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    ctx.verify_mode = ssl.CERT_REQUIRED
    if caBundle is not None:
        _loadCABundle(caBundle, "CA bundle")  # the one-line error for a bad file
        try:
            ctx.load_verify_locations(cafile=caBundle)
        except (ssl.SSLError, OSError) as e:
            raise ConfigError(f"CA bundle {caBundle}: OpenSSL refused it: {_sslErrorText(e)}") from None
    else:
        ctx.set_default_verify_paths()
    return ctx


def _verifyName(hostname: str) -> Callable[[Any], None]:
    """
    The check of a verified server certificate's name: service_identity,
    as a DNS name or an IP address.
    """
    from service_identity.cryptography import (
        verify_certificate_hostname,
        verify_certificate_ip_address,
    )

    isIP = isIPLiteral(hostname)

    def check(sslobj: Any) -> None:
        der = sslobj.getpeercert(True)
        if not der:
            raise ssl.SSLError("the server sent no certificate")
        cert = x509.load_der_x509_certificate(der)
        if isIP:
            verify_certificate_ip_address(cert, hostname)
        else:
            verify_certificate_hostname(cert, hostname)

    return check


@implementer(IStreamClientEndpoint)
class TLSClientEndpoint:
    """
    TLS (stdlib C{ssl}, see L{txproxy.tls._proto}) on top of a clear-text
    client endpoint to an C{https://} backend.  C{connect} fires with the
    application protocol once the TCP connection is made; what it writes
    goes out once the handshake is over and the server verified.
    """

    def __init__(self, endpoint: Any, hostname: str, context: ssl.SSLContext, verify: bool) -> None:
        """
        @param endpoint: the clear-text client endpoint.
        @param hostname: the backend's name or IP address (the URL's).
        @param context: the client context (see L{wrapClientTLS}).
        @param verify: whether to check the certificate's name.
        """
        self._endpoint = endpoint
        self._context = context
        self._serverName = None if isIPLiteral(hostname) else hostname
        self._check = _verifyName(hostname) if verify else None

    def _newObject(self, incoming: Any, outgoing: Any) -> Any:
        return self._context.wrap_bio(incoming, outgoing, server_side=False, server_hostname=self._serverName)

    def connect(self, protocolFactory: Any) -> "Deferred[Any]":
        """
        Connect with C{protocolFactory}'s protocol behind TLS.
        """
        factory = TLSClientFactory(self._newObject, protocolFactory, self._check)
        d = self._endpoint.connect(factory)
        return d.addCallback(lambda proto: proto.wrappedProtocol)  # type: ignore[no-any-return]


def wrapClientTLS(endpoint: Any, hostname: str, caBundle: Optional[str] = None, verify: bool = True) -> TLSClientEndpoint:
    """
    C{endpoint} (a clear-text client endpoint to an C{https://} backend)
    with TLS on top, the policy of L{clientTLSOptions}: with C{verify}, a
    certificate chaining to C{caBundle} (or the platform's trust store) and
    valid for C{hostname} (service_identity: a DNS name or an IP address);
    without, nothing checked.  ALPN C{http/1.1}, TLS 1.2 and later, SNI
    for names (not for IP addresses).

    The records go through the stdlib C{ssl} module (L{TLSClientEndpoint}),
    not pyOpenSSL: on PyPy that is about 40 times less CPU per small
    exchange (C{bench/bench_tls_record.py}).

    @raise ConfigError: the bundle cannot be read or holds no certificate.
    """
    stamp = _bundleStamp(caBundle) if verify else None
    context = _clientContext(caBundle if verify else None, stamp, verify)
    return TLSClientEndpoint(endpoint, hostname, context, verify)


def checkCABundle(path: str, what: str = "CA bundle") -> None:
    """
    Check that C{path} is a PEM bundle of CA certificates that OpenSSL
    accepts (C{--upstream-ca}, at start-up and reload).

    @raise ConfigError: one line naming C{what} and the file.
    """
    _loadCABundle(path, what)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        ctx.load_verify_locations(cafile=path)
    except (ssl.SSLError, OSError) as e:
        raise ConfigError(f"{what} {path}: OpenSSL refused it: {_sslErrorText(e)}") from None


def verificationFailure(error: BaseException) -> Optional[str]:
    """
    Describe why an upstream's certificate was refused, for the C{502} body
    and the log line, when C{error} (the reason a L{TLSClientEndpoint}
    connection was lost) is a verification failure.

    @return: C{"certificate verify failed: self-signed certificate"}
        (OpenSSL's chain check), C{"hostname mismatch: the certificate is
        not valid for localhost"} (service_identity's name check), ...; or
        L{None} for any other error.
    """
    if isinstance(error, ssl.SSLCertVerificationError):
        detail = error.verify_message or _sslErrorText(error)
        return f"certificate verify failed: {detail}"
    from service_identity import CertificateError, VerificationError

    if isinstance(error, VerificationError):
        ids = []
        for mismatch in error.errors:
            ident = mismatch.mismatched_id
            value = getattr(ident, "hostname", None) or getattr(ident, "ip", None)
            if isinstance(value, bytes):
                value = value.decode("ascii", "replace")
            ids.append(str(value) if value is not None else "?")
        return f"hostname mismatch: the certificate is not valid for {', '.join(ids) or 'the upstream'}"
    if isinstance(error, CertificateError):
        return f"certificate rejected: {_oneLine(error)}"
    if isinstance(error, ssl.SSLError) and str(error) == "the server sent no certificate":
        return "certificate verify failed: the server sent no certificate"
    return None
