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
L{MODERN_CIPHERS} in the server's order, ALPN (C{h2} then C{http/1.1} in
the HTTP modes with C{--http2 on}, C{http/1.1} alone with C{--http2 off},
the same for every certificate), session tickets,
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
group may mix C{tcp:} and C{ssl:} strings); L{negotiatedProtocol} which
ALPN protocol its handshake selected (C{b"h2"}, C{b"http/1.1"} or L{None}).

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
that uses Twisted's own TLS; L{clientTLSSettings} gives it for a protocol
wrapped by hand.

Interception
============

L{InterceptCA} (C{--intercept-ca}) mints the certificates served to
clients of intercepted C{CONNECT} tunnels (see L{txproxy.intercept}).
"""


from __future__ import annotations

from txproxy.tls._ca import InterceptCA
from txproxy.tls._client import (
    TLSClientEndpoint,
    checkCABundle,
    clientTLSOptions,
    clientTLSSettings,
    verificationFailure,
    wrapClientTLS,
)
from txproxy.tls._names import certificateNames, hostMatchesNames
from txproxy.tls._server import (
    KEEP,
    MODERN_CIPHERS,
    ServerTLSOptions,
    TLSServerEndpoint,
    isTLSListener,
    isTLSTransport,
    negotiatedProtocol,
    prepareReload,
    requestedServerName,
    servedNames,
    tlsServerEndpoint,
)
from txproxy.tls._store import CertificateEntry, CertificateStore, loadCertificateFile

__all__ = [
    "KEEP",
    "MODERN_CIPHERS",
    "CertificateEntry",
    "CertificateStore",
    "InterceptCA",
    "ServerTLSOptions",
    "TLSClientEndpoint",
    "TLSServerEndpoint",
    "certificateNames",
    "checkCABundle",
    "clientTLSOptions",
    "clientTLSSettings",
    "hostMatchesNames",
    "isTLSListener",
    "isTLSTransport",
    "loadCertificateFile",
    "negotiatedProtocol",
    "prepareReload",
    "requestedServerName",
    "servedNames",
    "tlsServerEndpoint",
    "verificationFailure",
    "wrapClientTLS",
]
