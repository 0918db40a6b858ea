"""
Stock Twisted HTTP proxies as benchmark peers, exactly as shipped.

    python bench/http/twisted_runner.py forward LISTEN_PORT
    python bench/http/twisted_runner.py reverse LISTEN_PORT ORIGIN_HOST ORIGIN_PORT

forward: twisted.web.proxy.Proxy (absolute-URI requests) on an HTTPFactory;
reverse: twisted.web.proxy.ReverseProxyResource(ORIGIN_HOST, ORIGIN_PORT, b"")
as the root of a twisted.web.server.Site.  Epoll reactor, 127.0.0.1, backlog
1024.  The per-request access log line is switched off (txproxy runs without
an access log too); nothing else is changed.
"""

import sys

from twisted.internet import epollreactor

epollreactor.install()

from twisted.internet import reactor  # noqa: E402
from twisted.web import http, proxy, server  # noqa: E402


def main() -> None:
    mode, port = sys.argv[1], int(sys.argv[2])
    if mode == "forward":
        factory = http.HTTPFactory()
        factory.protocol = proxy.Proxy
    elif mode == "reverse":
        host, oport = sys.argv[3], int(sys.argv[4])
        factory = server.Site(proxy.ReverseProxyResource(host, oport, b""))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    factory.log = lambda request: None  # no access log line per request
    reactor.listenTCP(port, factory, backlog=1024, interface="127.0.0.1")
    reactor.run()


if __name__ == "__main__":
    main()
