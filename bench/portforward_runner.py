"""
Stock Twisted TCP relay (twisted.protocols.portforward) as a benchmark peer.

    python bench/portforward_runner.py LISTEN_PORT UPSTREAM_HOST UPSTREAM_PORT [BACKLOG]

Listens on 127.0.0.1:LISTEN_PORT with the epoll reactor and relays every
connection to UPSTREAM_HOST:UPSTREAM_PORT, exactly as shipped by Twisted.
"""

import sys

from twisted.internet import epollreactor

epollreactor.install()

from twisted.internet import reactor  # noqa: E402
from twisted.protocols import portforward  # noqa: E402


def main() -> None:
    port, host, uport = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    backlog = int(sys.argv[4]) if len(sys.argv) > 4 else 1024
    reactor.listenTCP(port, portforward.ProxyFactory(host, uport),
                      backlog=backlog, interface="127.0.0.1")
    reactor.run()


if __name__ == "__main__":
    main()
