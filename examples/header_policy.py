"""
A forward proxy that enforces a small HTTP policy with the request and
response hooks:

  - requests to hosts on a deny list are answered 403 (C{allowRequest});
  - every request sent upstream carries an C{X-Proxy-User} header naming the
    authenticated user, or C{anonymous} (C{rewriteRequest});
  - C{Server} headers are removed from responses (C{rewriteResponse}).

Run it for real (listens on 127.0.0.1:3128)::

    python examples/header_policy.py 3128 blocked.example another.example

then C{curl -x http://127.0.0.1:3128 http://blocked.example/} gets 403.
Its test is C{tests/test_examples_http.py}.
"""

from __future__ import annotations

import sys
from typing import Any, FrozenSet, Iterable

from txproxy.forward import ForwardProxyFactory, ForwardProxyProtocol
from txproxy.http import RequestHead, ResponseHead, removeHeader, replaceHeader
from txproxy.httpproxy import HTTPRequest


class HeaderPolicyProtocol(ForwardProxyProtocol):
    """
    Deny listed hosts, tag requests with the user, hide upstream servers.
    """

    def allowRequest(self, request: HTTPRequest) -> bool:
        return request.target.host not in self.factory.deniedHosts

    def rewriteRequest(self, request: HTTPRequest, head: RequestHead) -> RequestHead:
        user = (request.client.user or "anonymous").encode("utf-8")
        return RequestHead(
            head.method,
            head.target,
            head.version,
            replaceHeader(head.headers, b"X-Proxy-User", user),
        )

    def rewriteResponse(self, request: HTTPRequest, head: ResponseHead) -> ResponseHead:
        return ResponseHead(
            head.version, head.status, head.reason, removeHeader(head.headers, b"Server")
        )


class HeaderPolicyFactory(ForwardProxyFactory):
    """
    @ivar deniedHosts: host names answered with 403.
    """

    protocol = HeaderPolicyProtocol
    deniedHosts: FrozenSet[str] = frozenset()


def makeFactory(deniedHosts: Iterable[str], **options: Any) -> HeaderPolicyFactory:
    """
    Build the factory with the default connector on the global reactor.
    """
    from txproxy.config import fromFlags
    from txproxy.connector import Connector

    listener = fromFlags(
        ["tcp:0"], [(k.replace("_", "-"), v) for k, v in options.items()]
    ).listeners[0]
    factory = HeaderPolicyFactory(listener, Connector())
    factory.deniedHosts = frozenset(h.lower() for h in deniedHosts)
    return factory


def main(argv: Any) -> None:  # pragma: no cover - manual use
    from twisted.internet import reactor

    port = int(argv[1]) if len(argv) > 1 else 3128
    reactor.listenTCP(port, makeFactory(argv[2:]), interface="127.0.0.1")
    reactor.run()


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv)
