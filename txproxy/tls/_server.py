# -*- test-case-name: tests.test_tls -*-
"""
Terminating TLS: the server context options (SNI certificate choice,
ALPN, client certificates, versions and ciphers), what a TLS transport
served and was asked for, and the TLS listening endpoints.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from typing import Any, Callable, Dict, FrozenSet, Iterable, Optional, Sequence, Tuple

from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import _WrapperServerEndpoint
from twisted.internet.interfaces import (
    IReactorTime,
    IStreamServerEndpoint,
)
from zope.interface import implementer

from txproxy.errors import ConfigError
from txproxy.proxyaccept import HalfCloseableHAProxyFactory
from txproxy.tls._names import _canonicalIP, _normalizeName
from txproxy.tls._proto import TLSServerFactory, TLSServerProtocol
from txproxy.tls._store import (
    KEEP,
    CertificateEntry,
    CertificateStore,
    _CertificateContext,
    _CertificateSet,
    _loadCABundle,
    _oneLine,
    loadCertificateFile,
)

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
    @ivar acceptableProtocols: the ALPN protocols of the current contexts,
        in the server's preference (empty: no ALPN).
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
        self.acceptableProtocols = _checkProtocols(acceptableProtocols)
        self.clientCA = clientCA
        makeContext = self._contextMaker(clientCA, self.acceptableProtocols)
        self.store = CertificateStore(certsDir, privateKey, certKey, extraCertChain, makeContext=makeContext)

    def _contextMaker(
        self, clientCA: Optional[str], protocols: Sequence[bytes]
    ) -> Callable[[CertificateEntry, _CertificateSet], Any]:
        """
        Read the client CA bundle; return the context builder for one load
        (every certificate's context offers the same ALPN C{protocols}, so
        an SNI switch never changes what is negotiated).
        """
        if clientCA is not None:
            _loadCABundle(clientCA, "client CA bundle")  # checked here, for the error message
        names = [p.decode("ascii") for p in protocols]

        def makeContext(entry: CertificateEntry, certificateSet: _CertificateSet) -> Any:
            return self._makeContext(entry, certificateSet, clientCA, names)

        return makeContext

    def _makeContext(
        self, entry: CertificateEntry, certificateSet: _CertificateSet, clientCA: Optional[str], protocols: Sequence[str]
    ) -> _CertificateContext:
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
        if protocols:
            ctx.set_alpn_protocols(list(protocols))
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

    def prepareReload(
        self, certsDir: Any = KEEP, clientCA: Any = KEEP, acceptableProtocols: Any = KEEP
    ) -> Callable[[], None]:
        """
        Read the client CA bundle and every certificate again, building
        their contexts (the first half of a reload); nothing changes until
        the returned function is called, which installs them at once.

        @param certsDir: a new C{--certs} folder (L{None}: none), or L{KEEP}.
        @param clientCA: a new client CA bundle (L{None}: none), or L{KEEP}.
        @param acceptableProtocols: new ALPN protocols (empty: no ALPN), or
            L{KEEP}; handshakes begun after the commit offer them.
        @raise ConfigError: something does not load.
        """
        if clientCA is KEEP:
            clientCA = self.clientCA
        protocols = self.acceptableProtocols if acceptableProtocols is KEEP else _checkProtocols(acceptableProtocols)
        commitStore = self.store.prepare(certsDir, self._contextMaker(clientCA, protocols))

        def commit() -> None:
            self.clientCA = clientCA
            self.acceptableProtocols = protocols
            commitStore()

        return commit

    def reload(self, certsDir: Any = KEEP, clientCA: Any = KEEP, acceptableProtocols: Any = KEEP) -> None:
        """
        Re-read the client CA bundle and the certificates, all or nothing;
        connections accepted afterwards use them, open ones are untouched.

        @param certsDir: a new C{--certs} folder, or L{KEEP}.
        @param clientCA: a new client CA bundle, or L{KEEP}.
        @param acceptableProtocols: new ALPN protocols, or L{KEEP}.
        @raise ConfigError: something does not load; nothing changed.
        """
        self.prepareReload(certsDir, clientCA, acceptableProtocols)()


def _checkProtocols(protocols: Sequence[bytes]) -> Tuple[bytes, ...]:
    """
    ALPN protocol names as a tuple, each 1 to 255 bytes of ASCII.

    @raise ConfigError: a name that is not.
    """
    result = tuple(protocols)
    for name in result:
        if not isinstance(name, bytes) or not 0 < len(name) < 256 or not name.isascii():
            raise ConfigError(f"bad ALPN protocol name {name!r}")
    return result


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


def negotiatedProtocol(transport: Any) -> Optional[bytes]:
    """
    The ALPN protocol the TLS handshake of a connection selected (C{b"h2"},
    C{b"http/1.1"}), for an application protocol choosing how to speak.

    Works for the transports of our TLS listeners
    (L{txproxy.tls._proto.TLSServerProtocol}, over C{ssl.SSLObject}) and of
    Twisted's L{twisted.protocols.tls.TLSMemoryBIOProtocol} (pyOpenSSL's
    C{get_alpn_proto_negotiated}).

    @param transport: an application protocol's C{transport}.
    @return: the protocol name; L{None} when nothing was negotiated (the
        client offered no ALPN or nothing in common, the handshake is not
        over yet) or the transport is not TLS (plain TCP, a test transport).
    """
    handle = _tlsHandle(transport)
    if handle is None:
        return None
    if isinstance(handle, SSL.Connection):
        try:
            raw = handle.get_alpn_proto_negotiated()
        except (NotImplementedError, AttributeError, SSL.Error):  # pragma: no cover - old OpenSSL
            return None
        return bytes(raw) if raw else None
    selected = handle.selected_alpn_protocol()
    return selected.encode("ascii") if selected else None


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

    def prepareReload(
        self, certsDir: Any = KEEP, clientCA: Any = KEEP, acceptableProtocols: Any = KEEP
    ) -> Callable[[], None]:
        """
        See L{ServerTLSOptions.prepareReload}.
        """
        return self.options.prepareReload(certsDir, clientCA, acceptableProtocols)

    def reload(self, certsDir: Any = KEEP, clientCA: Any = KEEP, acceptableProtocols: Any = KEEP) -> None:
        """
        Re-read the certificates (see L{ServerTLSOptions.reload}).

        @raise ConfigError: something does not load; nothing changed.
        """
        self.options.reload(certsDir, clientCA, acceptableProtocols)


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
