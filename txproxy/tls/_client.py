# -*- test-case-name: tests.test_tls -*-
"""
TLS to upstreams: client contexts verified with service_identity against
the system trust store or a CA bundle (cached per bundle), the client
endpoint wrapper, and naming a verification failure.
"""

from __future__ import annotations

import os
import ssl
from functools import lru_cache
from typing import Any, Callable, Optional, Tuple

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IStreamClientEndpoint,
)
from zope.interface import implementer

from txproxy._common import isIPLiteral
from txproxy.errors import ConfigError
from txproxy.tls._proto import TLSClientFactory
from txproxy.tls._server import _acceptVerified, _sslErrorText
from txproxy.tls._store import _loadCABundle, _oneLine


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
def _clientContext(caBundle: Optional[str], stamp: Any, verify: bool, alpn: Tuple[str, ...] = ("http/1.1",)) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION
    ctx.set_alpn_protocols(list(alpn))
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


def wrapClientTLS(
    endpoint: Any, hostname: str, caBundle: Optional[str] = None, verify: bool = True, alpn: Tuple[str, ...] = ("http/1.1",)
) -> TLSClientEndpoint:
    """
    C{endpoint} (a clear-text client endpoint to an C{https://} backend)
    with TLS on top, the policy of L{clientTLSOptions}: with C{verify}, a
    certificate chaining to C{caBundle} (or the platform's trust store) and
    valid for C{hostname} (service_identity: a DNS name or an IP address);
    without, nothing checked.  ALPN C{alpn} (C{http/1.1} by default;
    C{("h2",)} for C{h2://} backends, whose connection then checks the
    protocol selected), TLS 1.2 and later, SNI for names (not for IP
    addresses).

    The records go through the stdlib C{ssl} module (L{TLSClientEndpoint}),
    not pyOpenSSL: on PyPy that is about 40 times less CPU per small
    exchange (C{bench/bench_tls_record.py}).

    @raise ConfigError: the bundle cannot be read or holds no certificate.
    """
    stamp = _bundleStamp(caBundle) if verify else None
    context = _clientContext(caBundle if verify else None, stamp, verify, tuple(alpn))
    return TLSClientEndpoint(endpoint, hostname, context, verify)


def clientTLSSettings(
    hostname: str, caBundle: Optional[str] = None, alpn: Tuple[str, ...] = ("http/1.1",)
) -> Tuple[Callable[[Any, Any], Any], Callable[[Any], None]]:
    """
    The verified client TLS of L{wrapClientTLS}, for a caller that wraps a
    protocol itself (L{txproxy.tls._proto.TLSClientProtocol}): the
    certificate must chain to C{caBundle} (or the platform's trust store)
    and be valid for C{hostname}; SNI for names, ALPN C{alpn}.

    @return: C{(newObject, verify)}: makes the client C{ssl.SSLObject}
        from two memory BIOs, and checks the server's name once the
        handshake is over.
    @raise ConfigError: the bundle cannot be read or holds no certificate.
    """
    context = _clientContext(caBundle, _bundleStamp(caBundle), True, tuple(alpn))
    serverName = None if isIPLiteral(hostname) else hostname

    def newObject(incoming: Any, outgoing: Any) -> Any:
        return context.wrap_bio(incoming, outgoing, server_side=False, server_hostname=serverName)

    return newObject, _verifyName(hostname)


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
