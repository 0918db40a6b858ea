# -*- test-case-name: tests.test_examples_tcp -*-
"""
A TCP port forwarder that sends clients from a "canary" network to a canary
upstream and everyone else to the normal pool, counts the bytes of every
client, and keeps a tally of upstream failures.

It uses four hooks of L{txproxy.stream.tcp.TCPProxyProtocol}:

  - C{chooseUpstream(request)}: clients inside C{--canary-net} go to
    C{--canary} (a L{Target} or an endpoint description); returning
    L{None} keeps the pool (balancing and the retry on the next member);
  - C{clientData} / C{upstreamData}: add each relayed chunk to the live
    per-client counts and pass it on unchanged (overriding them costs one
    Python call per chunk; txproxy installs no per-chunk hook otherwise);
  - C{upstreamFailed(request, reason)}: count why upstreams could not be
    reached;
  - C{exchangeEnded(record)}: log one line per connection from its access
    record.

Run it for real, from a checkout (a redis on 6379 for everyone, a canary
redis on 6381 for clients from 10.0.0.0/8)::

    PYTHONPATH=. python examples/tcp_canary.py --listen tcp:6380 \\
        --upstream tcp:127.0.0.1:6379 --canary-net 10.0.0.0/8 \\
        --canary tcp:127.0.0.1:6381
    redis-cli -p 6380 ping

Stop it with Ctrl-C: it prints the bytes per client and the failures.

Its test is C{tests/test_examples_tcp.py}.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Dict, List, Optional, Sequence

from twisted.logger import Logger
from twisted.python.failure import Failure

from txproxy.accesslog import AccessRecord
from txproxy.config import CIDRSet, ListenerConfig, parseCIDRs
from txproxy.hooks import StreamRequest
from txproxy.stream.tcp import TCPProxyFactory, TCPProxyProtocol

__all__ = ["CanaryProxy", "CanaryFactory", "main"]


class CanaryProxy(TCPProxyProtocol):
    """
    Routes canary clients to the canary upstream and counts bytes.
    """

    factory: "CanaryFactory"

    def chooseUpstream(self, request: StreamRequest) -> Any:
        factory = self.factory
        if factory.canary is not None and request.client.host in factory.canaryNetworks:
            return factory.canary
        return None

    def clientData(self, data: bytes) -> bytes:
        self.factory.bytesUp[self.client.host] = self.factory.bytesUp.get(self.client.host, 0) + len(data)
        return data

    def upstreamData(self, data: bytes) -> bytes:
        self.factory.bytesDown[self.client.host] = self.factory.bytesDown.get(self.client.host, 0) + len(data)
        return data

    def upstreamFailed(self, request: StreamRequest, reason: Failure) -> None:
        name = reason.type.__name__ if reason.type is not None else "unknown"
        self.factory.failures[name] = self.factory.failures.get(name, 0) + 1

    def exchangeEnded(self, record: AccessRecord) -> None:
        self.factory.log.info(
            "{client} -> {upstream} [{status}]: {up} bytes up, {down} down{why}",
            client=record.client,
            upstream=record.upstream or record.target,
            status=record.status,
            up=record.bytesUp,
            down=record.bytesDown,
            why=f" ({record.reason})" if record.reason else "",
        )


class CanaryFactory(TCPProxyFactory):
    """
    A L{TCPProxyFactory} for L{CanaryProxy}.

    @ivar canary: the canary upstream (an endpoint description), or L{None}.
    @ivar canaryNetworks: the client networks sent to it.
    @ivar bytesUp: bytes received from each client host.
    @ivar bytesDown: bytes sent to each client host.
    @ivar failures: upstream failures by exception name.
    """

    protocol = CanaryProxy
    log = Logger()

    def __init__(
        self,
        listener: ListenerConfig,
        connector: Any = None,
        clock: Any = None,
        canary: Optional[str] = None,
        canaryNetworks: Optional[CIDRSet] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(listener, connector, clock, **kwargs)
        self.canary = canary
        self.canaryNetworks = canaryNetworks if canaryNetworks is not None else CIDRSet()
        self.bytesUp: Dict[str, int] = {}
        self.bytesDown: Dict[str, int] = {}
        self.failures: Dict[str, int] = {}


def main(argv: Optional[Sequence[str]] = None) -> None:
    """
    Run the forwarder until interrupted, then print the byte counts.
    """
    from twisted.internet import reactor as _reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from txproxy import config
    from txproxy.runtime.service import serverEndpoint

    reactor: Any = _reactor
    parser = argparse.ArgumentParser(description="A TCP forwarder with a canary upstream.")
    parser.add_argument("--listen", default="tcp:6380:interface=127.0.0.1", help="server endpoint string")
    parser.add_argument("--upstream", action="append", required=True, help="pool member (repeatable)")
    parser.add_argument("--canary", help="canary upstream, e.g. tcp:127.0.0.1:6381")
    parser.add_argument("--canary-net", action="append", default=[], help="client CIDR sent to the canary")
    args = parser.parse_args(argv)
    try:
        listener = config.fromFlags(
            [args.listen], [("mode", "tcp")] + [("upstream", u) for u in args.upstream]
        ).listeners[0]
        networks = parseCIDRs(args.canary_net)
        endpoint = serverEndpoint(reactor, args.listen)
    except config.ConfigError as e:
        parser.exit(2, f"tcp_canary: error: {e}\n")
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)], redirectStandardIO=False)
    factory = CanaryFactory(listener, None, reactor, canary=args.canary, canaryNetworks=networks)
    failures: List[str] = []

    def listen() -> None:
        def failed(f: Any) -> None:
            failures.append(f"tcp_canary: error: cannot listen on {args.listen}: {f.getErrorMessage()}")
            reactor.stop()

        endpoint.listen(factory).addErrback(failed)

    reactor.callWhenRunning(listen)
    reactor.run()
    if failures:
        sys.stderr.write(failures[0] + "\n")
        raise SystemExit(1)
    for host in sorted(factory.bytesUp):
        print(f"{host}: {factory.bytesUp[host]} bytes up, {factory.bytesDown.get(host, 0)} bytes down")
    for name, count in sorted(factory.failures.items()):
        print(f"upstream failures: {name}: {count}")


if __name__ == "__main__":
    main()
