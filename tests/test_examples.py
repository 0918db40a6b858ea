# -*- test-case-name: tests.test_examples -*-
"""
Tests for the programs in C{examples/}: each one imports, its hooks do what
its docstring says (on txproxy.testing's fakes, no sockets), and the
block-list proxy also works once on real loopback sockets.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from types import ModuleType
from typing import Any, List

from twisted.internet import defer, error, protocol, task
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from txproxy.accesslog import AccessRecord
from txproxy.testing import FakeConnector, connect, listenerConfig

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def loadExample(name: str) -> ModuleType:
    """
    Import C{examples/<name>.py} (the examples folder is not a package).
    """
    moduleName = f"txproxy_example_{name}"
    if moduleName in sys.modules:
        return sys.modules[moduleName]
    spec = importlib.util.spec_from_file_location(moduleName, os.path.join(EXAMPLES, f"{name}.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[moduleName] = module
    spec.loader.exec_module(module)
    return module


blocklist = loadExample("blocklist")
tunnel_logger = loadExample("tunnel_logger")


def connectHead(target: str) -> bytes:
    return f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode()


def status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


class _RecordingLog:
    def __init__(self) -> None:
        self.records: List[AccessRecord] = []

    def log(self, record: AccessRecord) -> None:
        self.records.append(record)


class BlocklistTests(SynchronousTestCase):
    """
    The L{blocklist.Blocklist} matching rules.
    """

    def test_exactNameBlocksOnlyThatName(self) -> None:
        """
        An exact entry blocks that name and neither its subdomains nor names
        that merely end with the same letters.
        """
        b = blocklist.Blocklist(["example.com"])
        self.assertTrue(b.blocks("example.com"))
        self.assertFalse(b.blocks("www.example.com"))
        self.assertFalse(b.blocks("notexample.com"))
        self.assertFalse(b.blocks("example.co"))

    def test_suffixPatternBlocksSubdomainsOnly(self) -> None:
        """
        C{*.example.net} blocks names under example.net at any depth, but
        not example.net itself nor C{badexample.net}.
        """
        b = blocklist.Blocklist(["*.example.net"])
        self.assertTrue(b.blocks("a.example.net"))
        self.assertTrue(b.blocks("x.y.example.net"))
        self.assertFalse(b.blocks("example.net"))
        self.assertFalse(b.blocks("badexample.net"))

    def test_caseAndTrailingDotAreIgnored(self) -> None:
        """
        Entries and names are compared lower-case and without a trailing
        dot, so C{EXAMPLE.com.} cannot slip past C{example.com}.
        """
        b = blocklist.Blocklist(["Example.COM.", "*.Ads.Example."])
        self.assertTrue(b.blocks("EXAMPLE.com."))
        self.assertTrue(b.blocks("tracker.ads.example."))
        self.assertEqual(b.exact, frozenset({"example.com"}))

    def test_emptyListBlocksNothing(self) -> None:
        """
        An empty block-list (or one of blank entries) blocks nothing.
        """
        b = blocklist.Blocklist(["", "  "])
        self.assertFalse(b.blocks("example.com"))
        self.assertFalse(b.blocks(""))


class BlocklistProxyTests(SynchronousTestCase):
    """
    L{blocklist.BlocklistProxy} on txproxy.testing's fakes.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.connector = FakeConnector(
            {"allowed.test": ["192.0.2.10"], "example.com": ["192.0.2.20"]}
        )
        self.log = _RecordingLog()

    def factory(self, blocked: Any = ("example.com", "*.example.net"), **options: Any) -> Any:
        return blocklist.makeFactory(
            blocked,
            listenerConfig(**options),
            connector=self.connector,
            clock=self.clock,
            accessLog=self.log,
        )

    def test_blockedHostIs403AndNeverDialled(self) -> None:
        """
        A CONNECT to a blocked host gets 403 naming the host, and the proxy
        neither dials it nor keeps the connection open for writing.
        """
        proto, client = connect(self.factory())
        proto.dataReceived(connectHead("example.com:443"))
        self.assertEqual(status(client.value()), 403)
        self.assertIn(b"example.com is blocked by this proxy", client.value())
        self.assertEqual(self.connector.attempts, [])
        self.assertTrue(client.writeClosed or client.disconnecting)

    def test_plainHTTPRequestForBlockedHostIs403(self) -> None:
        """
        A plain C{GET http://...} for a blocked host is refused the same way
        and never dialled; one for another host is forwarded.
        """
        proto, client = connect(self.factory())
        proto.dataReceived(b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n")
        self.assertEqual(status(client.value()), 403)
        self.assertIn(b"example.com is blocked by this proxy", client.value())
        self.assertEqual(self.connector.attempts, [])
        proto, client = connect(self.factory())
        proto.dataReceived(b"GET http://allowed.test/x HTTP/1.1\r\nHost: allowed.test\r\n\r\n")
        upstream = self.connector.last.succeed()
        self.assertTrue(upstream.value().startswith(b"GET /x HTTP/1.1\r\n"), upstream.value())

    def test_blockedBySuffix(self) -> None:
        """
        A name under a C{*.suffix} entry is refused, whatever its case.
        """
        proto, client = connect(self.factory())
        proto.dataReceived(connectHead("CDN.Example.NET:443"))
        self.assertEqual(status(client.value()), 403)
        self.assertEqual(self.connector.attempts, [])

    def test_otherHostsTunnel(self) -> None:
        """
        A host not on the list is dialled at its resolved address, answered
        200, and relayed both ways.
        """
        proto, client = connect(self.factory())
        proto.dataReceived(connectHead("allowed.test:443"))
        attempt = self.connector.last
        self.assertEqual((attempt.host, attempt.port), ("192.0.2.10", 443))
        upstream = attempt.succeed()
        self.assertEqual(status(client.value()), 200)
        client.clear()
        proto.dataReceived(b"hello")
        attempt.protocol.dataReceived(b"world")
        self.assertEqual(upstream.value(), b"hello")
        self.assertEqual(client.value(), b"world")

    def test_configuredPolicyRunsFirst(self) -> None:
        """
        The hook runs only after txproxy's own checks: a blocked host on a
        port outside C{--connect-ports} is refused for its port.
        """
        proto, client = connect(self.factory())
        proto.dataReceived(connectHead("example.com:8443"))
        self.assertEqual(status(client.value()), 403)
        self.assertIn(b"port 8443", client.value())
        self.assertNotIn(b"blocked", client.value())

    def test_refusalIsLogged(self) -> None:
        """
        The refusal is one access-log record with status 403, the target
        and the reason.
        """
        proto, client = connect(self.factory())
        proto.dataReceived(connectHead("example.com:443"))
        [record] = self.log.records
        self.assertEqual(
            (record.status, record.target, record.method), (403, "example.com:443", "CONNECT")
        )
        self.assertEqual(record.reason, "example.com is blocked by this proxy")

    def test_blocklistCanBeReplaced(self) -> None:
        """
        Assigning a new block-list to the factory applies to the next
        CONNECT.
        """
        factory = self.factory()
        factory.blocklist = blocklist.Blocklist(["allowed.test"])
        proto, client = connect(factory)
        proto.dataReceived(connectHead("allowed.test:443"))
        self.assertEqual(status(client.value()), 403)
        proto, client = connect(factory)
        proto.dataReceived(connectHead("example.com:443"))
        self.assertEqual(self.connector.last.host, "192.0.2.20")

    def test_makeFactoryDefaults(self) -> None:
        """
        Without a listener, makeFactory uses twistd txproxy's defaults
        (CONNECT to port 443 only).
        """
        factory = blocklist.makeFactory(["x.test"], connector=self.connector, clock=self.clock)
        self.assertIsInstance(factory, blocklist.BlocklistFactory)
        self.assertIs(factory.protocol, blocklist.BlocklistProxy)
        self.assertIn(443, factory.listener.connectPorts)
        self.assertNotIn(80, factory.listener.connectPorts)

    def test_mainRejectsBadOptionsWithExitStatus2(self) -> None:
        """
        The runnable main exits with status 2 on a bad C{--connect-ports},
        before it starts listening.
        """
        stderr = sys.stderr
        sys.stderr = open(os.devnull, "w")
        try:
            with self.assertRaises(SystemExit) as caught:
                blocklist.main(["--connect-ports", "0"])
        finally:
            sys.stderr.close()
            sys.stderr = stderr
        self.assertEqual(caught.exception.code, 2)


class TunnelLoggerTests(SynchronousTestCase):
    """
    L{tunnel_logger.TunnelLoggerProxy} on txproxy.testing's fakes.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.connector = FakeConnector({"a.test": ["192.0.2.1"], "b.test": ["192.0.2.2"]})
        self.factory = tunnel_logger.TunnelLoggerFactory(
            listenerConfig(), self.connector, self.clock
        )
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def tunnel(self, target: str, first: bytes = b"") -> Any:
        proto, client = connect(self.factory)
        proto.dataReceived(connectHead(target) + first)
        attempt = self.connector.last
        attempt.succeed()
        client.clear()
        return proto, client, attempt

    def test_countsBytesPerHostInBothDirections(self) -> None:
        """
        Bytes are added to the destination host they went to or came from,
        across tunnels, and tunnels are counted per host.
        """
        p1, c1, a1 = self.tunnel("a.test:443")
        p2, c2, a2 = self.tunnel("a.test:443")
        p3, c3, a3 = self.tunnel("b.test:443")
        p1.dataReceived(b"12345")
        p2.dataReceived(b"123")
        a1.protocol.dataReceived(b"x" * 100)
        p3.dataReceived(b"1")
        a3.protocol.dataReceived(b"yy")
        counter = self.factory.counter
        self.assertEqual(counter.up, {"a.test": 8, "b.test": 1})
        self.assertEqual(counter.down, {"a.test": 100, "b.test": 2})
        self.assertEqual(counter.tunnels, {"a.test": 2, "b.test": 1})

    def test_countsAreLiveWhileTheTunnelIsOpen(self) -> None:
        """
        Counts grow chunk by chunk before the tunnel closes, and the relayed
        bytes are passed on unchanged.
        """
        proto, client, attempt = self.tunnel("a.test:443")
        proto.dataReceived(b"abc")
        self.assertEqual(self.factory.counter.up["a.test"], 3)
        proto.dataReceived(b"defg")
        self.assertEqual(self.factory.counter.up["a.test"], 7)
        self.assertEqual(attempt.transport.value(), b"abcdefg")
        attempt.protocol.dataReceived(b"reply")
        self.assertEqual(client.value(), b"reply")
        self.assertFalse(client.closed)

    def test_bytesSentWithTheConnectHeadAreCounted(self) -> None:
        """
        Bytes a client sends in the same segment as its CONNECT (before the
        200) go through clientData too.
        """
        proto, client, attempt = self.tunnel("a.test:443", first=b"early")
        self.assertEqual(attempt.transport.value(), b"early")
        self.assertEqual(self.factory.counter.up["a.test"], 5)

    def test_closedTunnelIsLoggedWithItsTotals(self) -> None:
        """
        When a tunnel ends, one event is logged whose byte counts equal what
        the per-chunk hooks counted.
        """
        proto, client, attempt = self.tunnel("b.test:443")
        proto.dataReceived(b"ping")
        attempt.protocol.dataReceived(b"pong!")
        client.peerClosed()
        closed = [e for e in self.events if "target" in e and e.get("up") is not None]
        self.assertEqual(len(closed), 1)
        event = closed[0]
        self.assertEqual((event["target"], event["upstream"]), ("b.test:443", "192.0.2.2:443"))
        self.assertEqual((event["up"], event["down"]), (4, 5))
        self.assertEqual(
            (self.factory.counter.up["b.test"], self.factory.counter.down["b.test"]), (4, 5)
        )

    def test_refusedAndFailedTunnelsAreNotCounted(self) -> None:
        """
        A CONNECT refused by policy, or whose upstream cannot be reached,
        never opens a tunnel: nothing is counted or logged by the hooks.
        """
        proto, client = connect(self.factory)
        proto.dataReceived(connectHead("a.test:25"))
        self.assertEqual(status(client.value()), 403)
        proto, client = connect(self.factory)
        proto.dataReceived(connectHead("b.test:443"))
        self.connector.last.fail(error.ConnectionRefusedError())
        self.assertEqual(status(client.value()), 502)
        self.assertEqual(self.factory.counter.tunnels, {})
        self.assertEqual([e for e in self.events if e.get("up") is not None], [])

    def test_reportListsBusiestHostFirst(self) -> None:
        """
        The report has one line per host, the most bytes first.
        """
        p1, c1, a1 = self.tunnel("a.test:443")
        p2, c2, a2 = self.tunnel("b.test:443")
        p1.dataReceived(b"1")
        a2.protocol.dataReceived(b"1234567890")
        self.assertEqual(
            self.factory.counter.report(),
            [
                "b.test: 1 tunnels, 0 bytes up, 10 bytes down",
                "a.test: 1 tunnels, 1 bytes up, 0 bytes down",
            ],
        )


class _Echo(protocol.Protocol):
    def connectionMade(self) -> None:
        self.factory.open.add(self)

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.open.discard(self)


class _Client(protocol.Protocol):
    """
    Sends C{toSend} on connect; fires C{done} with everything received
    once C{expect} bytes arrived or the connection closed.
    """

    def __init__(self, toSend: bytes, expect: int) -> None:
        self.toSend = toSend
        self.expect = expect
        self.received = b""
        self.done: defer.Deferred = defer.Deferred()
        self.lost: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.toSend)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if len(self.received) >= self.expect and not self.done.called:
            self.done.callback(self.received)
            self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        if not self.done.called:
            self.done.callback(self.received)
        self.lost.callback(None)


class BlocklistLoopbackTests(TestCase):
    """
    The block-list proxy on real loopback sockets, with txproxy's real
    connector (a quick smoke test; the fakes above test the behaviour).
    """

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        from twisted.internet import reactor
        from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint

        from txproxy.connector import Connector

        self.reactor = reactor
        echoFactory = protocol.Factory.forProtocol(_Echo)
        echoFactory.open = set()  # type: ignore[attr-defined]
        self.echoFactory = echoFactory
        self.echoPort = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            echoFactory
        )
        self.factory = blocklist.makeFactory(
            ["blocked.test"],
            listenerConfig(connect_ports="*"),
            connector=Connector(reactor, 5),
            clock=reactor,
        )
        self.proxyPort = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            self.factory
        )
        self.proxyAddress = self.proxyPort.getHost()
        self.endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.proxyAddress.port)

    @defer.inlineCallbacks
    def tearDown(self) -> Any:
        yield self.proxyPort.stopListening()
        yield self.echoPort.stopListening()
        for _ in range(500):
            if not self.factory.protocols and not self.echoFactory.open:
                break
            yield task.deferLater(self.reactor, 0.01, lambda: None)

    @defer.inlineCallbacks
    def test_blockedAndAllowedOverLoopback(self) -> Any:
        """
        Over real sockets, a CONNECT to a blocked name gets 403 and a
        closed connection; a CONNECT to the local echo server gets 200 and
        its bytes echoed through the tunnel.
        """
        refused = _Client(connectHead("blocked.test:443"), 10**6)
        yield self.endpoint.connect(protocol.Factory.forProtocol(lambda: refused))
        response = yield refused.done
        yield refused.lost
        self.assertEqual(status(response), 403)
        self.assertIn(b"blocked.test is blocked", response)

        established = b"HTTP/1.1 200 Connection established\r\n\r\n"
        echoPort = self.echoPort.getHost().port
        tunnelled = _Client(connectHead(f"127.0.0.1:{echoPort}") + b"ping", len(established) + 4)
        yield self.endpoint.connect(protocol.Factory.forProtocol(lambda: tunnelled))
        response = yield tunnelled.done
        yield tunnelled.lost
        self.assertEqual(response, established + b"ping")


class ConfigExampleTests(SynchronousTestCase):
    """
    The TOML files in C{examples/config/}, which the docs include, stay
    valid.
    """

    def path(self, name: str) -> str:
        return os.path.join(EXAMPLES, "config", name)

    def test_forwardConfigStarts(self) -> None:
        """
        C{forward.toml} passes every start-up check of C{twistd txproxy
        --config} (options, supported features, endpoint strings), with the
        settings its comments describe.
        """
        from txproxy.runtime.tap import parseCommandLine

        config = parseCommandLine(["--config", self.path("forward.toml")])
        [listener] = config.listeners
        self.assertEqual(listener.listen, ("tcp:3128:interface=127.0.0.1",))
        self.assertEqual(str(listener.connectPorts), "443,8443")
        self.assertIn("10.1.2.3", listener.denyDest)
        self.assertIn("169.254.169.254", listener.denyDest)
        self.assertNotIn("93.184.215.14", listener.denyDest)
        self.assertEqual((config.accessLog, config.drainTimeout), ("-", 10.0))

    def test_fullConfigIsValid(self) -> None:
        """
        C{full.toml}, the complete example, loads: every key in it is known
        and well-typed, and its routes carry the settings written there.
        """
        from txproxy.config import loadFile

        config = loadFile(self.path("full.toml"))
        self.assertEqual(
            [(lc.name, lc.mode) for lc in config.listeners],
            [("office", "forward"), ("ssh", "tcp"), ("web", "reverse"), ("sni", "sni")],
        )
        web = config.listeners[2]
        self.assertEqual(
            [(r.host, r.prefix) for r in web.routes][:2],
            [("www.example.com", ""), ("www.example.com", "/api/")],
        )
        self.assertEqual(web.routes[0].weights, (3, 1))
        assert web.routes[0].healthCheck is not None
        self.assertEqual(
            (web.routes[0].healthCheck.kind, web.routes[0].healthCheck.path), ("http", "/healthz")
        )
        self.assertTrue(web.routes[1].stripPrefix)
        self.assertEqual(config.listeners[3].routes[0].proxyProtocolSend, "v1")
        self.assertEqual(config.listeners[0].effectiveBurst, 20)
        self.assertTrue(config.listeners[0].xForwardedFor)
        ssh = config.listeners[1]
        self.assertEqual(
            (ssh.tcpNoDelay, ssh.keepAlive, ssh.keepAliveIdle, ssh.keepAliveInterval, ssh.keepAliveCount),
            (True, True, 600, 60, 5),
        )
        self.assertEqual((ssh.sendBuffer, ssh.receiveBuffer), (262144, 262144))
        self.assertEqual(ssh.proxyProtocolByUpstream, (("tcp:host=10.0.0.6:port=22", "none"),))
        self.assertEqual(
            config.listeners[3].routes[0].proxyProtocolByUpstream, (("tcp://10.0.2.11:443", "v2"),)
        )


class BlocklistTacTests(SynchronousTestCase):
    """
    C{examples/blocklist.tac}, the twistd way to run the block-list proxy.
    """

    def test_tacDefinesAnApplicationServingTheBlocklistFactory(self) -> None:
        """
        Loading the .tac file (as C{twistd -y} does, with examples/ on the
        path) gives an application with one endpoint service whose factory
        blocks the names the file lists, and starts nothing.
        """
        from twisted.application import service
        from twisted.persisted import sob

        sys.path.insert(0, EXAMPLES)
        self.addCleanup(sys.path.remove, EXAMPLES)
        self.addCleanup(sys.modules.pop, "blocklist", None)
        application = sob.loadValueFromFile(os.path.join(EXAMPLES, "blocklist.tac"), "application")
        [svc] = list(service.IServiceCollection(application))
        self.assertFalse(svc.running)
        factory = svc.factory
        self.assertEqual(type(factory).__name__, "BlocklistFactory")
        self.assertTrue(factory.blocklist.blocks("example.com"))
        self.assertTrue(factory.blocklist.blocks("www.example.net"))
        self.assertFalse(factory.blocklist.blocks("example.org"))
        self.assertEqual(factory.listener.listen, ("tcp:3128:interface=127.0.0.1",))
