# -*- test-case-name: tests.test_intercept -*-
"""
TLS interception in forward mode (C{--intercept-ca}, C{--intercept},
C{--no-intercept}).

After a C{CONNECT} has passed the policy (authentication, ACLs,
C{--connect-ports}, the rate limit, L{allowTunnel
<txproxy.forward.ForwardProxyProtocol.allowTunnel>}) and C{--deny-dest},
L{shouldIntercept <txproxy.forward.ForwardProxyProtocol.shouldIntercept>}
decides (by default: the patterns of L{InterceptPolicy}).  An intercepted
tunnel is answered C{200}; the client's TLS is terminated with a
certificate the L{txproxy.tls.InterceptCA} mints for its SNI name (else the
C{CONNECT} host), offering ALPN C{h2} only when the client offers it, the
listener has HTTP/2 on and the origin selected it (asked once per origin
and remembered: L{OriginProtocols}), else C{http/1.1}; and the decrypted
bytes (HTTP/1.1, or HTTP/2 streams) are
read by a new protocol of the listener's own class with
L{InterceptedRequests} mixed in (L{interceptedClass}): each request is an
C{https://host:port/...} request through the HTTP core, by the tunnel's
user, reaching the origin over TLS verified for the C{CONNECT} host
(service_identity, C{--upstream-ca} or the system store) on connections
pooled per host, port and server name.
"""

from __future__ import annotations

from txproxy.intercept._layer import (
    H2_ALPN,
    INTERCEPT,
    InterceptedRequests,
    InterceptedTunnel,
    Interceptor,
    OriginProtocols,
    checkInterceptedDestination,
    interceptedClass,
    startInterception,
)
from txproxy.intercept._patterns import HostPatterns, InterceptPolicy, canonicalHost

__all__ = [
    "H2_ALPN",
    "INTERCEPT",
    "HostPatterns",
    "InterceptPolicy",
    "InterceptedRequests",
    "InterceptedTunnel",
    "Interceptor",
    "OriginProtocols",
    "canonicalHost",
    "checkInterceptedDestination",
    "interceptedClass",
    "startInterception",
]
