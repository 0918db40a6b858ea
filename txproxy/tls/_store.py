# -*- test-case-name: tests.test_tls -*-
"""
Certificates on disk: loading a PEM file (key and chain in one file),
the C{--certs} folder indexed by name, and CA bundles.
"""

from __future__ import annotations

import datetime
import os
import re
import ssl
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Sequence, Tuple, cast

import attr
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from txproxy.errors import ConfigError
from txproxy.tls._names import _canonicalIP, _normalizeName, _wildcardSuffix, certificateNames, log


class _Keep:
    def __repr__(self) -> str:
        return "KEEP"


#: "Leave this setting as it is" for the C{prepare}/C{reload} methods.
KEEP: Any = _Keep()


_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----", re.DOTALL)
_KEY_LABELS = (b"PRIVATE KEY", b"RSA PRIVATE KEY", b"EC PRIVATE KEY")


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
