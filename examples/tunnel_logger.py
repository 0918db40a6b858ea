# -*- test-case-name: tests.test_examples -*-
"""
Observe the bytes that go through C{CONNECT} tunnels: a running count of
bytes per destination host, in each direction, including tunnels still
open.

It uses three hooks:

  - C{relayOpened}: note which host this tunnel goes to;
  - C{clientData} / C{upstreamData}: add each relayed chunk to the live
    counts (and pass the chunk on unchanged);
  - C{exchangeEnded}: log the finished tunnel from its access record
    (it runs for every request and refusal too: the record says which).

Overriding C{clientData} or C{upstreamData} costs one more Python call per
relayed chunk (txproxy calls no hook per chunk unless a subclass overrides
one).  If totals after the fact are enough, C{exchangeEnded} alone gives
them: its record carries C{bytesUp} and C{bytesDown}.  The per-chunk hooks
are for counts that must be current while a tunnel is open (a long
download, a WebSocket), or for rewriting bytes.

Run it for real, from a checkout (loopback port 3128; a line on standard
output per finished tunnel; stop it with Ctrl-C or SIGTERM and it prints
the totals per host)::

    PYTHONPATH=. python examples/tunnel_logger.py

Its test is C{tests/test_examples.py}.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Dict, List, Optional, Sequence

from twisted.logger import Logger

from txproxy.accesslog import AccessRecord
from txproxy.config import ListenerConfig
from txproxy.forward import ForwardProxyFactory, ForwardProxyProtocol
from txproxy.hooks import TunnelRequest

__all__ = ["TrafficCounter", "TunnelLoggerProxy", "TunnelLoggerFactory", "main"]


class TrafficCounter:
    """
    Bytes relayed per destination host.

    @ivar up: maps a host to the bytes sent toward it (client to upstream).
    @ivar down: maps a host to the bytes received from it (upstream to
        client).
    @ivar tunnels: maps a host to the number of tunnels opened to it.
    """

    def __init__(self) -> None:
        self.up: Dict[str, int] = {}
        self.down: Dict[str, int] = {}
        self.tunnels: Dict[str, int] = {}

    def opened(self, host: str) -> None:
        self.tunnels[host] = self.tunnels.get(host, 0) + 1
        self.up.setdefault(host, 0)
        self.down.setdefault(host, 0)

    def report(self) -> List[str]:
        """
        One line per host, busiest first.
        """
        hosts = sorted(self.tunnels, key=lambda h: (-(self.up[h] + self.down[h]), h))
        return [
            f"{h}: {self.tunnels[h]} tunnels, {self.up[h]} bytes up, {self.down[h]} bytes down"
            for h in hosts
        ]


class TunnelLoggerProxy(ForwardProxyProtocol):
    """
    Adds the bytes of every tunnel to its factory's L{TrafficCounter}.
    """

    factory: "TunnelLoggerFactory"
    _host = ""

    def relayOpened(self, request: TunnelRequest, upstreamAddress: str) -> None:
        # request.target is what the client asked for; upstreamAddress is
        # the ip:port actually dialled.
        self._host = request.target.host
        self.factory.counter.opened(self._host)

    def clientData(self, data: bytes) -> bytes:
        counter = self.factory.counter
        counter.up[self._host] += len(data)
        return data

    def upstreamData(self, data: bytes) -> bytes:
        counter = self.factory.counter
        counter.down[self._host] += len(data)
        return data

    def exchangeEnded(self, record: AccessRecord) -> None:
        if record.method != "CONNECT" or record.status != 200:
            return  # a plain request or a refusal, not a tunnel that opened
        self.factory.log.info(
            "{client} -> {target} ({upstream}): {up} bytes up, {down} bytes down in {duration:.3f}s{why}",
            client=record.client,
            target=record.target,
            upstream=record.upstream,
            up=record.bytesUp,
            down=record.bytesDown,
            duration=record.duration,
            why=f" ({record.reason})" if record.reason else "",
        )


class TunnelLoggerFactory(ForwardProxyFactory):
    """
    A L{ForwardProxyFactory} building L{TunnelLoggerProxy} protocols that
    share one L{TrafficCounter}.

    @ivar counter: the L{TrafficCounter}.
    """

    protocol = TunnelLoggerProxy
    log = Logger()

    def __init__(
        self, listener: ListenerConfig, connector: Any, clock: Any = None, **kwargs: Any
    ) -> None:
        super().__init__(listener, connector, clock, **kwargs)
        self.counter = TrafficCounter()


def main(argv: Optional[Sequence[str]] = None) -> None:
    """
    Run the logging proxy until interrupted, then print the totals.
    """
    from twisted.internet import reactor as _reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from txproxy import config
    from txproxy.connector import Connector
    from txproxy.runtime.service import serverEndpoint

    reactor: Any = _reactor
    parser = argparse.ArgumentParser(
        description="A CONNECT proxy that counts bytes per destination."
    )
    parser.add_argument(
        "--listen", default="tcp:3128:interface=127.0.0.1", help="server endpoint string"
    )
    parser.add_argument("--connect-ports", default="443", help="as twistd txproxy --connect-ports")
    args = parser.parse_args(argv)
    try:
        listener = config.fromFlags(
            [args.listen], [("connect-ports", args.connect_ports)]
        ).listeners[0]
        endpoint = serverEndpoint(reactor, args.listen)
    except config.ConfigError as e:
        parser.exit(2, f"tunnel_logger: error: {e}\n")
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)], redirectStandardIO=False)
    factory = TunnelLoggerFactory(listener, Connector(reactor, listener.connectTimeout), reactor)
    failures: List[str] = []

    def listen() -> None:
        d = endpoint.listen(factory)

        def failed(f: Any) -> None:
            failures.append(
                f"tunnel_logger: error: cannot listen on {args.listen}: {f.getErrorMessage()}"
            )
            reactor.stop()

        d.addErrback(failed)

    reactor.callWhenRunning(listen)
    reactor.run()
    if failures:
        sys.stderr.write(failures[0] + "\n")
        raise SystemExit(1)
    for line in factory.counter.report():
        print(line)


if __name__ == "__main__":
    main()
