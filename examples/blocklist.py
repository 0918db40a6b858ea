# -*- test-case-name: tests.test_examples -*-
"""
A forward proxy that refuses to reach hosts on a block-list: C{CONNECT}
tunnels to them and plain C{http://} requests for them both get C{403}.

A block-list entry is either an exact host name (C{example.com}) or a
suffix pattern (C{*.ads.example}, which matches C{a.ads.example} and
C{x.y.ads.example} but not C{ads.example} itself: list both to block both).
Names are compared lower-case and without a trailing dot, so
C{CONNECT EXAMPLE.com.:443} is blocked by C{example.com}.

The block-list checks the name the client I{asked for}.  A client can still
ask for an IP address instead of a name; to keep clients away from
addresses, use C{--deny-dest}, which txproxy checks on the resolved address.

Run it for real, from a checkout (it listens on loopback port 3128 and
writes an access log line per tunnel to standard output)::

    PYTHONPATH=. python examples/blocklist.py --block example.com --block '*.example.net'

and, in another terminal::

    curl -p -x http://127.0.0.1:3128 https://example.com/
    # curl: (56) CONNECT tunnel failed, response 403

Its test is C{tests/test_examples.py}.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Iterable, List, Optional, Sequence

from txproxy.config import ListenerConfig
from txproxy.forward import ForwardProxyFactory, ForwardProxyProtocol
from txproxy.hooks import Refuse, TunnelRequest
from txproxy.httpproxy import HTTPRequest

__all__ = ["Blocklist", "BlocklistProxy", "BlocklistFactory", "makeFactory", "main"]


def _normalize(host: str) -> str:
    return host.strip().lower().rstrip(".")


class Blocklist:
    """
    A set of blocked host names: exact names and C{*.suffix} patterns.
    """

    def __init__(self, patterns: Iterable[str]) -> None:
        exact = set()
        suffixes = set()
        for pattern in patterns:
            pattern = _normalize(pattern)
            if not pattern:
                continue
            if pattern.startswith("*."):
                suffixes.add("." + pattern[2:])
            else:
                exact.add(pattern)
        self.exact = frozenset(exact)
        self.suffixes = tuple(sorted(suffixes))

    def blocks(self, host: str) -> bool:
        """
        Whether C{host} is on the list.
        """
        host = _normalize(host)
        return host in self.exact or host.endswith(self.suffixes)


class BlocklistProxy(ForwardProxyProtocol):
    """
    Refuses, with C{403}, a C{CONNECT} to, or an C{http://} request for,
    any host on its factory's block-list.  Everything else behaves as
    txproxy's forward proxy does.
    """

    factory: "BlocklistFactory"

    def _check(self, host: str) -> None:
        if self.factory.blocklist.blocks(host):
            # Refuse sets the status and the one-line body the client sees;
            # returning False from the hooks below gives a generic 403.
            raise Refuse(403, f"{host} is blocked by this proxy")

    def allowTunnel(self, request: TunnelRequest) -> bool:
        # Runs once per CONNECT, after the configured policy (ACLs,
        # --auth, rate limit, --connect-ports) has allowed it.
        self._check(request.target.host)
        return True

    def allowRequest(self, request: HTTPRequest) -> bool:
        # The same for each plain request (GET http://host/path ...).
        self._check(request.target.host)
        return True


class BlocklistFactory(ForwardProxyFactory):
    """
    A L{ForwardProxyFactory} whose protocols consult C{blocklist}.

    @ivar blocklist: the L{Blocklist}; assign a new one to change it while
        the proxy runs (tunnels already open are not affected).
    """

    protocol = BlocklistProxy

    def __init__(
        self,
        blocklist: Blocklist,
        listener: ListenerConfig,
        connector: Any,
        clock: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(listener, connector, clock, **kwargs)
        self.blocklist = blocklist


def makeFactory(
    blocked: Iterable[str],
    listener: Optional[ListenerConfig] = None,
    connector: Any = None,
    clock: Any = None,
    accessLog: Any = None,
) -> BlocklistFactory:
    """
    Build a L{BlocklistFactory}.

    @param blocked: the block-list patterns.
    @param listener: the listener's settings; the defaults of C{twistd
        txproxy} when L{None}.
    @param connector: an L{txproxy.interfaces.IUpstreamConnector}; txproxy's
        own (the global reactor's resolver and TCP) when L{None}.
    @param clock: the clock for timeouts; the global reactor when L{None}.
    @param accessLog: an L{txproxy.interfaces.IAccessLog}, or L{None}.
    """
    if listener is None:
        listener = ListenerConfig(listen=("tcp:3128",))
    if connector is None:
        from txproxy.connector import Connector

        connector = Connector(None, listener.connectTimeout)
    return BlocklistFactory(Blocklist(blocked), listener, connector, clock, accessLog=accessLog)


def main(argv: Optional[Sequence[str]] = None) -> None:
    """
    Run the block-list proxy until interrupted.
    """
    from twisted.internet import reactor as _reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from txproxy import config
    from txproxy.accesslog import AccessLog
    from txproxy.runtime.service import serverEndpoint

    reactor: Any = _reactor
    parser = argparse.ArgumentParser(description="A CONNECT proxy with a host block-list.")
    parser.add_argument(
        "--listen", default="tcp:3128:interface=127.0.0.1", help="server endpoint string"
    )
    parser.add_argument(
        "--block", action="append", default=[], help="exact host or *.suffix; repeatable"
    )
    parser.add_argument("--connect-ports", default="443", help="as twistd txproxy --connect-ports")
    args = parser.parse_args(argv)
    try:
        listener = config.fromFlags(
            [args.listen], [("connect-ports", args.connect_ports)]
        ).listeners[0]
        endpoint = serverEndpoint(reactor, args.listen)
    except config.ConfigError as e:
        parser.exit(2, f"blocklist: error: {e}\n")
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    factory = makeFactory(args.block, listener, accessLog=AccessLog(sys.stdout))
    failures: List[str] = []

    def listen() -> None:
        d = endpoint.listen(factory)

        def failed(f: Any) -> None:
            failures.append(
                f"blocklist: error: cannot listen on {args.listen}: {f.getErrorMessage()}"
            )
            reactor.stop()

        d.addErrback(failed)

    reactor.callWhenRunning(listen)
    reactor.run()
    if failures:
        sys.stderr.write(failures[0] + "\n")
        raise SystemExit(1)


if __name__ == "__main__":
    main()
