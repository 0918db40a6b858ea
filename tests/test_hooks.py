# -*- test-case-name: tests.test_hooks -*-
"""
Tests for the hooks that read the same in every mode (C{docs/hooks.rst},
"Hooks side by side"): each mode calls C{chooseUpstream},
C{relayOpened}, C{upstreamFailed} and C{exchangeEnded} at its moment with
the documented arguments, and a subclass written for the old names
(L{txproxy._hookcompat}) is still called, with one L{DeprecationWarning}
per class.
"""

from __future__ import annotations

from typing import Any, List

from twisted.internet import error
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from txproxy._hookcompat import Legacy, firstParameter, hookCaller, positionalCount
from txproxy.accesslog import AccessRecord
from txproxy.forward import ForwardProxyFactory, ForwardProxyProtocol
from txproxy.hooks import ClientInfo, StreamRequest, Target, TunnelRequest
from txproxy.httpproxy import HTTPRequest
from txproxy.reverse import ReverseProxyProtocol
from txproxy.stream.sni import SNIRouterProtocol
from txproxy.stream.tcp import TCPProxyFactory, TCPProxyProtocol
from txproxy.testing import (
    FakeConnector,
    clientHello,
    connect,
    forwardFactory,
    reverseFactory,
    sniFactory,
    tcpFactory,
    transparentFactory,
)

CONNECT = b"CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\n"
GET = b"GET http://example.test/x HTTP/1.1\r\nHost: example.test\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class _Log:
    def __init__(self) -> None:
        self.records: List[AccessRecord] = []

    def log(self, record: AccessRecord) -> None:
        self.records.append(record)


class HookTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.connector = FakeConnector({"example.test": ["192.0.2.10"]})

    def deprecations(self) -> List[str]:
        """
        The messages of the deprecation warnings emitted so far (flushed).
        """
        return sorted(
            str(w["message"]) for w in self.flushWarnings() if w["category"] is DeprecationWarning
        )

    def assertDeprecated(self, *names: str) -> None:
        """
        Exactly one warning was emitted for each old hook in C{names}
        (C{"Class.hook"}), each naming its replacement.
        """
        messages = self.deprecations()
        self.assertEqual(len(messages), len(names), messages)
        for name, message in zip(sorted(names), messages):
            old, new = name.split("->")
            self.assertIn(f".{old}(", message)
            self.assertIn(f"override {new} instead", message)


class ForwardTunnelHookTests(HookTestCase):
    def test_newHooks(self) -> None:
        """
        For a C{CONNECT}: C{chooseUpstream(request)} gets the
        L{TunnelRequest}, C{None} keeps its target; C{relayOpened(request,
        upstreamAddress)} runs once connected; C{exchangeEnded(record)} once
        at the end, with the tunnel's record.  No deprecation warning.
        """
        seen: List[Any] = []

        class Watch(ForwardProxyProtocol):
            def chooseUpstream(self, request: TunnelRequest) -> Any:
                seen.append(("choose", request.target))
                return None

            def relayOpened(self, request: TunnelRequest, upstreamAddress: str) -> None:
                seen.append(("opened", request.target, upstreamAddress))

            def exchangeEnded(self, record: AccessRecord) -> None:
                seen.append(("ended", record.method, record.status))

        proto, client = connect(forwardFactory(self.connector, protocol=Watch))
        proto.dataReceived(CONNECT)
        self.connector.last.succeed()
        client.peerClosed()
        target = Target("example.test", 443)
        self.assertEqual(
            seen,
            [("choose", target), ("opened", target, "192.0.2.10:443"), ("ended", "CONNECT", 200)],
        )
        self.assertEqual(self.deprecations(), [])

    def test_chooseUpstreamTarget(self) -> None:
        """
        A L{Target} from C{chooseUpstream} is dialled instead.
        """

        class Elsewhere(ForwardProxyProtocol):
            def chooseUpstream(self, request: TunnelRequest) -> Any:
                return Target("198.51.100.7", 8443)

        proto, client = connect(forwardFactory(self.connector, protocol=Elsewhere))
        proto.dataReceived(CONNECT)
        self.assertEqual((self.connector.last.host, self.connector.last.port), ("198.51.100.7", 8443))

    def test_upstreamFailedAndEndedOnFailure(self) -> None:
        """
        When the destination cannot be reached: C{upstreamFailed(request,
        reason)} with the L{TunnelRequest}, then C{exchangeEnded} with the
        C{502} record; no C{relayOpened}.
        """
        seen: List[Any] = []

        class Watch(ForwardProxyProtocol):
            def relayOpened(self, request: Any, upstreamAddress: str) -> None:
                seen.append("opened")

            def upstreamFailed(self, request: Any, reason: Failure) -> None:
                seen.append(("failed", type(request), reason.type))

            def exchangeEnded(self, record: AccessRecord) -> None:
                seen.append(("ended", record.method, record.status))

        proto, client = connect(forwardFactory(self.connector, protocol=Watch))
        proto.dataReceived(CONNECT)
        self.connector.last.fail(error.ConnectionRefusedError())
        self.assertEqual(
            seen,
            [("failed", TunnelRequest, error.ConnectionRefusedError), ("ended", "CONNECT", 502)],
        )

    def test_oldNames(self) -> None:
        """
        A subclass overriding C{chooseTarget}, C{tunnelOpened},
        C{tunnelClosed} and C{requestFinished} is still called with the old
        arguments (C{tunnelClosed} only for the tunnel that opened), with
        one L{DeprecationWarning} per old hook for the class, however many
        connections use it.
        """
        seen: List[Any] = []

        class Old(ForwardProxyProtocol):
            def chooseTarget(self, request: TunnelRequest) -> Target:
                seen.append("chooseTarget")
                return request.target

            def tunnelOpened(self, request: TunnelRequest, upstreamAddress: str) -> None:
                seen.append(("tunnelOpened", upstreamAddress))

            def tunnelClosed(self, record: AccessRecord) -> None:
                seen.append(("tunnelClosed", record.status))

            def requestFinished(self, record: AccessRecord) -> None:
                seen.append(("requestFinished", record.status))

        factory = forwardFactory(self.connector, protocol=Old)
        proto, client = connect(factory)
        proto.dataReceived(CONNECT)
        self.connector.last.succeed()
        client.peerClosed()
        proto, client = connect(factory)
        proto.dataReceived(CONNECT)
        self.connector.last.fail(error.ConnectionRefusedError())
        self.assertEqual(
            seen,
            [
                "chooseTarget",
                ("tunnelOpened", "192.0.2.10:443"),
                ("requestFinished", 200),
                ("tunnelClosed", 200),
                "chooseTarget",
                ("requestFinished", 502),
            ],
        )
        self.assertDeprecated(
            "chooseTarget->chooseUpstream",
            "requestFinished->exchangeEnded",
            "tunnelClosed->exchangeEnded",
            "tunnelOpened->relayOpened",
        )

    def test_newWinsOverOldChoice(self) -> None:
        """
        A class overriding both C{chooseUpstream} and the old
        C{chooseTarget} is asked by C{chooseUpstream} only (and warned about
        C{chooseTarget}).
        """

        class Both(ForwardProxyProtocol):
            def chooseUpstream(self, request: TunnelRequest) -> Any:
                return Target("198.51.100.8", 443)

            def chooseTarget(self, request: TunnelRequest) -> Target:
                raise AssertionError("not called")

        proto, client = connect(forwardFactory(self.connector, protocol=Both))
        proto.dataReceived(CONNECT)
        self.assertEqual(self.connector.last.host, "198.51.100.8")
        self.assertDeprecated("chooseTarget->chooseUpstream")


class ForwardHTTPHookTests(HookTestCase):
    def test_exchangeEndedAndUpstreamFailed(self) -> None:
        """
        A plain request's C{exchangeEnded(record)} runs once it is answered;
        C{upstreamFailed(request, reason)} gets its L{HTTPRequest}.
        """
        seen: List[Any] = []

        class Watch(ForwardProxyProtocol):
            def upstreamFailed(self, request: Any, reason: Failure) -> None:
                seen.append(("failed", type(request), str(request.target)))

            def exchangeEnded(self, record: AccessRecord) -> None:
                seen.append(("ended", record.method, record.status))

        factory = forwardFactory(self.connector, protocol=Watch)
        proto, client = connect(factory)
        proto.dataReceived(GET)
        self.connector.last.succeed()
        self.connector.last.protocol.dataReceived(OK)
        proto, client = connect(factory)
        proto.dataReceived(b"GET http://192.0.2.99/ HTTP/1.1\r\nHost: 192.0.2.99\r\n\r\n")
        self.connector.last.fail(error.ConnectionRefusedError())
        self.assertEqual(
            seen,
            [("ended", "GET", 200), ("failed", HTTPRequest, "192.0.2.99:80"), ("ended", "GET", 502)],
        )

    def test_oldRequestFinished(self) -> None:
        """
        An old C{requestFinished(record)} override is still called, with a
        L{DeprecationWarning}.
        """
        seen: List[int] = []

        class Old(ForwardProxyProtocol):
            def requestFinished(self, record: AccessRecord) -> None:
                seen.append(record.status)

        proto, client = connect(forwardFactory(self.connector, protocol=Old))
        proto.dataReceived(GET)
        self.connector.last.succeed()
        self.connector.last.protocol.dataReceived(OK)
        self.assertEqual(seen, [200])
        self.assertDeprecated("requestFinished->exchangeEnded")


class FactoryHookTests(HookTestCase):
    def test_exchangeEnded(self) -> None:
        """
        A factory's C{exchangeEnded(proto, record)} runs for every record,
        before the protocol's; the base writes the access log.
        """
        seen: List[Any] = []

        class Factory(TCPProxyFactory):
            def exchangeEnded(self, proto: Any, record: AccessRecord) -> None:
                seen.append(("factory", type(proto).__name__, record.status))
                super().exchangeEnded(proto, record)

        class Proto(TCPProxyProtocol):
            def exchangeEnded(self, record: AccessRecord) -> None:
                seen.append(("protocol", record.status))

        factory = tcpFactory("tcp:192.0.2.20:22", self.connector, protocol=Proto)
        factory.__class__ = Factory
        factory.accessLog = log = _Log()
        proto, client = connect(factory)
        self.connector.last.fail()
        self.assertEqual(seen, [("factory", "Proto", 502), ("protocol", 502)])
        self.assertEqual([r.status for r in log.records], [502])
        self.assertEqual(self.deprecations(), [])

    def test_oldRequestFinished(self) -> None:
        """
        A factory subclass overriding the old C{requestFinished(proto,
        record)} is called instead (its base call still writes the access
        log), with a L{DeprecationWarning}; in the HTTP modes too.
        """
        seen: List[int] = []

        class Old(ForwardProxyFactory):
            def requestFinished(self, proto: Any, record: AccessRecord) -> None:
                seen.append(record.status)
                super().requestFinished(proto, record)

        factory = forwardFactory(self.connector)
        factory.__class__ = Old
        factory.accessLog = log = _Log()
        proto, client = connect(factory)
        proto.dataReceived(GET)
        self.connector.last.fail(error.ConnectionRefusedError())
        self.assertEqual(seen, [502])
        self.assertEqual([r.status for r in log.records], [502])
        self.assertDeprecated("requestFinished->exchangeEnded")


class ReverseHookTests(HookTestCase):
    ROUTES = {"www.example.test": ["http://192.0.2.1:8080", "http://192.0.2.2:8080"]}

    def get(self, factory: Any) -> Any:
        proto, client = connect(factory)
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
        return proto, client

    def test_exchangeEndedAndUpstreamFailed(self) -> None:
        """
        C{upstreamFailed(request, reason)} (after the retry) with the
        L{HTTPRequest}, then C{exchangeEnded(record)}.
        """
        seen: List[Any] = []

        class Watch(ReverseProxyProtocol):
            def upstreamFailed(self, request: Any, reason: Failure) -> None:
                seen.append(("failed", type(request), request.path))

            def exchangeEnded(self, record: AccessRecord) -> None:
                seen.append(("ended", record.status))

        self.get(reverseFactory(self.ROUTES, self.connector, protocol=Watch))
        self.connector.last.fail()
        self.connector.last.fail()
        self.assertEqual(seen, [("failed", HTTPRequest, b"/"), ("ended", 502)])

    def test_poolKeyChoosesNothing(self) -> None:
        """
        C{chooseBackend} runs once per request, where the upstream is
        chosen; C{poolKey} is a key function: calling it again asks no
        backend and counts no connection.
        """
        asked: List[Any] = []

        class Count(ReverseProxyProtocol):
            def chooseBackend(self, request: Any, route: Any) -> Any:
                asked.append(request.path)
                return route.pool.backends[-1]

        proto, client = self.get(reverseFactory(self.ROUTES, self.connector, protocol=Count))
        self.assertEqual(asked, [b"/"])
        self.assertEqual(self.connector.last.port, 8080)
        self.assertEqual(self.connector.last.host, "192.0.2.2")
        backend = proto._backend
        active = backend.activeConnections
        request = proto._request
        key = proto.poolKey(request)
        self.assertEqual(proto.poolKey(request), key)
        self.assertEqual(asked, [b"/"])
        self.assertEqual(backend.activeConnections, active)

    def test_oldRequestFinished(self) -> None:
        """
        An old C{requestFinished(record)} override is still called, with a
        L{DeprecationWarning}.
        """
        seen: List[int] = []

        class Old(ReverseProxyProtocol):
            def requestFinished(self, record: AccessRecord) -> None:
                seen.append(record.status)

        self.get(reverseFactory(self.ROUTES, self.connector, protocol=Old))
        self.connector.last.succeed()
        self.connector.last.protocol.dataReceived(OK)
        self.assertEqual(seen, [200])
        self.assertDeprecated("requestFinished->exchangeEnded")


class StreamHookTests(HookTestCase):
    def test_tcpNewHooks(self) -> None:
        """
        tcp mode: C{chooseUpstream(request)}, C{relayOpened(request,
        upstreamAddress)}, C{upstreamFailed(request, reason)} get the
        connection's L{StreamRequest} (no destination, no hello), the same
        value each time; C{exchangeEnded(record)} once per connection.
        """
        seen: List[Any] = []

        class Watch(TCPProxyProtocol):
            def chooseUpstream(self, request: StreamRequest) -> Any:
                seen.append(("choose", request))
                return None

            def relayOpened(self, request: StreamRequest, upstreamAddress: str) -> None:
                seen.append(("opened", request, upstreamAddress))

            def upstreamFailed(self, request: StreamRequest, reason: Failure) -> None:
                seen.append(("failed", request, reason.type))

            def exchangeEnded(self, record: AccessRecord) -> None:
                seen.append(("ended", record.method, record.status))

        factory = tcpFactory("tcp:192.0.2.20:22", self.connector, protocol=Watch)
        proto, client = connect(factory, ("198.51.100.1", 5000))
        self.connector.last.succeed()
        client.peerClosed()
        proto, client = connect(factory, ("198.51.100.2", 5000))
        self.connector.last.fail()
        one = StreamRequest(ClientInfo("198.51.100.1", 5000))
        two = StreamRequest(ClientInfo("198.51.100.2", 5000))
        self.assertEqual(
            seen,
            [
                ("choose", one),
                ("opened", one, "192.0.2.20:22"),
                ("ended", "TCP", 200),
                ("choose", two),
                ("failed", two, error.ConnectionRefusedError),
                ("ended", "TCP", 502),
            ],
        )
        self.assertEqual(self.deprecations(), [])

    def test_tcpOldHooks(self) -> None:
        """
        tcp mode: overrides written for C{chooseUpstream(client)},
        C{relayOpened(upstreamAddress)}, C{upstreamFailed(reason)} and
        C{connectionEnded(record)} are still called with those arguments,
        with one L{DeprecationWarning} per hook for the class.
        """
        seen: List[Any] = []

        class Old(TCPProxyProtocol):
            def chooseUpstream(self, client: ClientInfo) -> Any:
                seen.append(("choose", client.host))
                return None

            def relayOpened(self, upstreamAddress: str) -> None:
                seen.append(("opened", upstreamAddress))

            def upstreamFailed(self, reason: Failure) -> None:
                seen.append(("failed", reason.type))

            def connectionEnded(self, record: AccessRecord) -> None:
                seen.append(("ended", record.status))

        factory = tcpFactory("tcp:192.0.2.20:22", self.connector, protocol=Old)
        proto, client = connect(factory, ("198.51.100.1", 5000))
        self.connector.last.succeed()
        client.peerClosed()
        proto, client = connect(factory, ("198.51.100.2", 5000))
        self.connector.last.fail()
        self.assertEqual(
            seen,
            [
                ("choose", "198.51.100.1"),
                ("opened", "192.0.2.20:22"),
                ("ended", 200),
                ("choose", "198.51.100.2"),
                ("failed", error.ConnectionRefusedError),
                ("ended", 502),
            ],
        )
        self.assertDeprecated(
            "chooseUpstream->chooseUpstream",
            "connectionEnded->exchangeEnded",
            "relayOpened->relayOpened",
            "upstreamFailed->upstreamFailed",
        )

    def test_transparentDestination(self) -> None:
        """
        transparent mode: C{chooseUpstream(request)} sees the original
        destination in C{request.destination}.
        """
        seen: List[Any] = []

        class Watch(TCPProxyProtocol):
            def chooseUpstream(self, request: StreamRequest) -> Any:
                seen.append(request)
                return None

        factory = transparentFactory(("203.0.113.5", 80), self.connector, protocol=Watch)
        connect(factory, ("10.0.0.7", 51000))
        self.assertEqual(seen, [StreamRequest(ClientInfo("10.0.0.7", 51000), Target("203.0.113.5", 80))])
        self.assertEqual((self.connector.last.host, self.connector.last.port), ("203.0.113.5", 80))

    def test_sniNewChooseUpstream(self) -> None:
        """
        sni mode: C{chooseUpstream(request)} sees the ClientHello in
        C{request.hello}; C{relayOpened} gets the same request.
        """
        seen: List[Any] = []

        class Watch(SNIRouterProtocol):
            def chooseUpstream(self, request: StreamRequest) -> Any:
                assert request.hello is not None
                seen.append((request.client.host, request.hello.serverName, request.hello.alpn))
                return Target("192.0.2.20", 9443)

            def relayOpened(self, request: StreamRequest, upstreamAddress: str) -> None:
                assert request.hello is not None
                seen.append((request.hello.serverName, upstreamAddress))

        factory = sniFactory({"a.test": "tcp://192.0.2.1:443"}, self.connector, protocol=Watch)
        proto, client = connect(factory)
        proto.dataReceived(clientHello("a.test", alpn=["h2"]))
        self.connector.last.succeed()
        self.assertEqual(seen, [("127.0.0.1", "a.test", ("h2",)), ("a.test", "192.0.2.20:9443")])
        self.assertEqual(self.deprecations(), [])

    def test_sniOldChooseUpstream(self) -> None:
        """
        sni mode: an override written for C{chooseUpstream(client, hello)}
        is still called so, with a L{DeprecationWarning}.
        """
        seen: List[Any] = []

        class Old(SNIRouterProtocol):
            def chooseUpstream(self, client: ClientInfo, hello: Any) -> Any:
                seen.append((client.host, hello.serverName))
                return None

        factory = sniFactory({"a.test": "tcp://192.0.2.1:443"}, self.connector, protocol=Old)
        for _ in range(2):
            proto, client = connect(factory)
            proto.dataReceived(clientHello("a.test"))
        self.assertEqual(seen, [("127.0.0.1", "a.test")] * 2)
        self.assertEqual(self.connector.last.host, "192.0.2.1")
        self.assertDeprecated("chooseUpstream->chooseUpstream")


class HookCallerTests(SynchronousTestCase):
    """
    L{hookCaller} itself.
    """

    class Base:
        def new(self, value: int) -> Any:
            return None

        def old(self, value: int) -> Any:
            return None

    LEGACY = (Legacy("old", "(value)", lambda self, value: self.old(value)),)

    def test_nothingOverridden(self) -> None:
        """
        L{None} when neither the hook nor an old form is overridden (the
        caller then calls nothing), and no warning.
        """
        self.assertIsNone(hookCaller(self.Base(), "new", self.Base, self.LEGACY))
        self.assertEqual(self.flushWarnings(), [])

    def test_cachedPerClass(self) -> None:
        """
        The answer is computed once per class: the warning is emitted once,
        and the same function is returned afterwards.
        """

        class Sub(self.Base):  # type: ignore[name-defined]
            def old(self, value: int) -> Any:
                return value * 2

        first = hookCaller(Sub(), "new", self.Base, self.LEGACY)
        second = hookCaller(Sub(), "new", self.Base, self.LEGACY)
        self.assertIs(first, second)
        assert first is not None
        self.assertEqual(first(Sub(), 21), 42)
        self.assertEqual(len(self.flushWarnings()), 1)

    def test_signatureHelpers(self) -> None:
        """
        L{positionalCount} counts positional parameters after C{self}
        (C{*args}: many); L{firstParameter} names the first.
        """

        def f(self: Any, a: Any, b: Any = 1, *, c: Any = 2) -> None:
            pass

        def g(self: Any, *args: Any) -> None:
            pass

        self.assertEqual(positionalCount(f), 2)
        self.assertGreater(positionalCount(g), 2)
        self.assertEqual(firstParameter(f), "a")
        self.assertEqual(firstParameter(g), "args")
