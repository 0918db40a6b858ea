# -*- test-case-name: tests.test_twisted_private -*-
"""
The guard for Twisted upgrades: the private Twisted names txproxy relies on
are still there.

For speed, txproxy's fast paths use parts of Twisted that carry no
compatibility promise: the relay reads a TCP transport's write buffers and
sends straight to its socket (L{txproxy.relay}), L{txproxy._dial} builds a
L{twisted.internet.tcp.Connection} without its constructor,
L{txproxy._loop} replaces the epoll reactor's dispatch loop, and the
PROXY-protocol listeners and C{--workers} use Twisted's private endpoint and
HAProxy modules.  A Twisted release may rename or drop any of these, and
the failure would then show far from its cause, or not at all: several
reads use C{getattr} with a default and would quietly fall back to a slow
path or skip a check.

This module checks every such name in one place, on the class or module,
or on a real instance (a connection over a socketpair, a private
L{EPollReactor} that is never installed) when it is an instance attribute.
Each failure names the attribute and the txproxy module that relies on it,
so whoever upgrades Twisted runs this first.  C{setup.cfg} bounds Twisted to
the versions it passed on.

To guard one more name, add a line to L{PRIVATE_NAMES}; an object that has
no row yet also needs a test below that builds it and calls
L{TwistedPrivateNamesTests.assertStillThere}.
"""

from __future__ import annotations

import socket
from typing import Any, Dict, List, Optional, Tuple

from twisted.internet import main, tcp
from twisted.internet.abstract import FileDescriptor
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.python.reflect import namedAny
from twisted.python.runtime import platform
from twisted.trial.unittest import SkipTest, SynchronousTestCase

_RELAY = "txproxy/relay.py"
_DIAL = "txproxy/_dial.py"
_SLIM = "txproxy/_slim.py"
_TUNING = "txproxy/tuning.py"
_LOOP = "txproxy/_loop.py"
_SERVICE = "txproxy/runtime/service.py"
_WORKERS = "txproxy/runtime/workers.py"

#: (Twisted object, attribute, the module that relies on it).  A dotted
#: attribute (C{_poller.poll}) is looked up step by step.
PRIVATE_NAMES: List[Tuple[str, str, str]] = [
    # Write buffers and connection state: the relay's direct send, close
    # and half-close bypass write() when nothing is buffered.
    ("twisted.internet.abstract.FileDescriptor", "_tempDataLen", _RELAY),
    ("twisted.internet.abstract.FileDescriptor", "_tempDataBuffer", "tests/test_relay.py"),
    ("twisted.internet.abstract.FileDescriptor", "dataBuffer", _RELAY),
    ("twisted.internet.abstract.FileDescriptor", "producerPaused", _RELAY),
    ("twisted.internet.abstract.FileDescriptor", "producer", "txproxy/httpproxy.py"),
    ("twisted.internet.abstract.FileDescriptor", "bufferSize", _RELAY),
    ("twisted.internet.abstract.FileDescriptor", "connected", _RELAY),
    ("twisted.internet.abstract.FileDescriptor", "connected", _DIAL),
    ("twisted.internet.abstract.FileDescriptor", "disconnecting", _RELAY),
    ("twisted.internet.abstract.FileDescriptor", "disconnected", _DIAL),
    ("twisted.internet.abstract.FileDescriptor", "_writeDisconnecting", _RELAY),
    ("twisted.internet.abstract.FileDescriptor", "_writeDisconnected", _RELAY),
    # The TCP transport itself: its socket, TLS flag and closing helpers
    # (relay), and what DirectClient sets or calls in place of __init__.
    ("twisted.internet.tcp.Connection", "socket", _RELAY),
    ("twisted.internet.tcp.Connection", "socket", _DIAL),
    ("twisted.internet.tcp.Connection", "fileno", _DIAL),
    ("twisted.internet.tcp.Connection", "TLS", _RELAY),
    ("twisted.internet.tcp.Connection", "_shouldShutdown", _RELAY),
    ("twisted.internet.tcp.Connection", "_closeWriteConnection", _RELAY),
    ("twisted.internet.tcp.Connection", "_closeSocket", _DIAL),
    ("twisted.internet.tcp.Connection", "logstr", _DIAL),
    # An accepted connection's listening port (transparent mode's loop check).
    ("twisted.internet.tcp.Server", "server", "txproxy/stream/tcp.py"),
    # Slotted transports: the port's transport class (replaced by
    # SlimServer), and the class defaults each slot starts from (a slot
    # hides the base class's attribute of the same name).
    ("twisted.internet.tcp.Port", "transport", _SLIM),
    # SlimServer builds Server's log and repr strings when read.
    ("twisted.internet.abstract.FileDescriptor", "_getLogPrefix", _SLIM),
    ("twisted.internet.tcp.Port", "_realPortNumber", _SLIM),
    # Inherited socket options: the listening socket, how many connections
    # the port accepted, and each accepted connection's number.
    ("twisted.internet.tcp.Port", "socket", _TUNING),
    ("twisted.internet.tcp.Port", "sessionno", _TUNING),
    ("twisted.internet.tcp.Server", "sessionno", _TUNING),
    ("twisted.internet.tcp.Server", "_addressType", _SLIM),
    ("twisted.internet.tcp.Connection", "bufferSize", _SLIM),
    ("twisted.internet.tcp.Connection", "_shouldShutdown", _SLIM),
    ("twisted.internet.tcp.Connection", "_aborting", _SLIM),
    ("twisted.internet.tcp.Connection", "producerPaused", _SLIM),
    ("twisted.internet.tcp.Connection", "streamingProducer", _SLIM),
    ("twisted.internet.tcp.Connection", "offset", _SLIM),
    # The lean dispatch loop.
    ("twisted.internet.epollreactor.EPollReactor", "_poller", _LOOP),
    ("twisted.internet.epollreactor.EPollReactor", "_poller.poll", _LOOP),
    ("twisted.internet.epollreactor.EPollReactor", "_selectables", _LOOP),
    ("twisted.internet.epollreactor.EPollReactor", "_reads", _LOOP),
    ("twisted.internet.epollreactor.EPollReactor", "_writes", _LOOP),
    ("twisted.internet.epollreactor.EPollReactor", "_poller.modify", _LOOP),
    ("twisted.internet.epollreactor.EPollReactor", "_doReadOrWrite", _LOOP),
    ("twisted.internet.epollreactor.EPollReactor", "_disconnectSelectable", _LOOP),
    ("twisted.internet.epollreactor.EPollReactor", "doIteration", _LOOP),
    # Its read of a plain TCP connection (PyPy): what doRead does, into a
    # buffer of the loop's.
    ("twisted.internet.tcp.Connection", "doRead", _LOOP),
    ("twisted.internet.tcp.Connection", "_dataReceived", _LOOP),
    ("twisted.internet.tcp.Connection", "socket", _LOOP),
    ("twisted.internet.tcp.Connection", "bufferSize", _LOOP),
    # The admin site's check for a client that went away.
    ("twisted.web.server.Request", "_disconnected", "txproxy/runtime/admin.py"),
    # Endpoint internals: wrapping (haproxy:), parsing, SO_REUSEPORT.
    ("twisted.internet.endpoints", "_WrapperServerEndpoint", _SERVICE),
    ("twisted.internet.endpoints", "_WrapperServerEndpoint", "txproxy/tls/__init__.py"),
    ("twisted.internet.endpoints", "_WrapperServerEndpoint", _WORKERS),
    ("twisted.internet.endpoints", "_TCPServerEndpoint", _WORKERS),
    ("twisted.internet.endpoints", "_parse", "txproxy/tls/__init__.py"),
    ("twisted.internet.endpoints", "_parseClientTCP", "txproxy/testing.py"),
    ("twisted.internet.endpoints._TCPServerEndpoint", "_reactor", _WORKERS),
    ("twisted.internet.endpoints._TCPServerEndpoint", "_port", _WORKERS),
    ("twisted.internet.endpoints._TCPServerEndpoint", "_backlog", _WORKERS),
    ("twisted.internet.endpoints._TCPServerEndpoint", "_interface", _WORKERS),
    ("twisted.internet.endpoints._WrapperServerEndpoint", "_wrappedEndpoint", _WORKERS),
    ("twisted.internet.endpoints._WrapperServerEndpoint", "_wrapperFactory", _WORKERS),
    # The PROXY-protocol wrapper that passes half-close through.
    ("twisted.protocols.haproxy._exceptions", "InvalidProxyHeader", _SERVICE),
    ("twisted.protocols.haproxy._v1parser.V1Parser", "PROXYSTR", _SERVICE),
    ("twisted.protocols.haproxy._v1parser.V1Parser", "feed", _SERVICE),
    ("twisted.protocols.haproxy._v2parser.V2Parser", "PREFIX", _SERVICE),
    ("twisted.protocols.haproxy._v2parser.V2Parser", "feed", _SERVICE),
    ("twisted.protocols.haproxy._wrapper", "HAProxyProtocolWrapper", _SERVICE),
    ("twisted.protocols.haproxy._wrapper", "HAProxyWrappingFactory", _SERVICE),
    ("twisted.protocols.haproxy._wrapper.HAProxyProtocolWrapper", "_proxyInfo", _SERVICE),
    ("twisted.protocols.haproxy._wrapper.HAProxyProtocolWrapper", "_parser", _SERVICE),
]


def _users(objectName: str, attribute: Optional[str] = None) -> str:
    """
    Name the modules that rely on C{objectName} (on its C{attribute}, when
    given), as the end of a failure message.
    """
    users: List[str] = []
    for name, attr, user in PRIVATE_NAMES:
        if name == objectName and (attribute is None or attr == attribute) and user not in users:
            users.append(user)
    if len(users) == 1:
        return f"{users[0]} relies on it"
    return f"{', '.join(users[:-1])} and {users[-1]} rely on it"


def _has(subject: Any, dotted: str) -> bool:
    """
    Whether C{subject} has the attribute path C{dotted}.
    """
    for part in dotted.split("."):
        if not hasattr(subject, part):
            return False
        subject = getattr(subject, part)
    return True


class TwistedPrivateNamesTests(SynchronousTestCase):
    """
    One test per Twisted object of L{PRIVATE_NAMES}.
    """

    def setUp(self) -> None:
        # Descriptors only keep their reactor: a memory one opens nothing.
        self.reactor = MemoryReactorClock()

    def resolve(self, objectName: str) -> Any:
        """
        Import C{objectName}, failing the test with the modules that rely on
        it when it is gone.
        """
        try:
            return namedAny(objectName)
        except Exception:
            self.fail(f"{objectName} is gone: {_users(objectName)}")

    def assertStillThere(self, objectName: str, subject: Any = None) -> None:
        """
        Check that C{subject} (by default C{objectName} itself, imported) has
        every attribute L{PRIVATE_NAMES} lists for C{objectName}; fail with
        one line per missing attribute otherwise.
        """
        # In table order, each once.
        attributes: Dict[str, None] = {a: None for n, a, _ in PRIVATE_NAMES if n == objectName}
        self.assertTrue(attributes, f"PRIVATE_NAMES lists nothing for {objectName}")
        if subject is None:
            subject = self.resolve(objectName)
        missing = [
            f"{objectName} has no {attr}: {_users(objectName, attr)}"
            for attr in attributes
            if not _has(subject, attr)
        ]
        if missing:
            self.fail("\n".join(missing))

    def socketpair(self) -> Tuple[socket.socket, socket.socket]:
        """
        A connected socket pair, closed when the test ends.
        """
        a, b = socket.socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        return a, b

    def test_fileDescriptor(self) -> None:
        """
        A L{FileDescriptor} still has the write buffers (C{_tempDataLen},
        C{_tempDataBuffer}, C{dataBuffer}), producer state and connection
        flags that the relay reads to send straight to the socket and to
        close without the poller, and that L{txproxy._dial} relies on
        C{FileDescriptor.__init__} and the class to set.
        """
        self.assertStillThere(
            "twisted.internet.abstract.FileDescriptor", FileDescriptor(reactor=self.reactor)
        )

    def test_tcpConnection(self) -> None:
        """
        A L{tcp.Connection} over a socketpair still has its C{socket},
        C{fileno}, C{TLS} flag and closing helpers; it is still a
        L{FileDescriptor}; and its constructor still sets nothing beyond
        C{FileDescriptor.__init__} but C{socket}, C{fileno} and C{protocol},
        which are what L{txproxy._dial.DirectClient} sets in its place.
        """
        a, _ = self.socketpair()
        connection = tcp.Connection(a, Protocol(), self.reactor)
        self.assertStillThere("twisted.internet.tcp.Connection", connection)
        if not issubclass(tcp.Connection, FileDescriptor):
            self.fail(
                "twisted.internet.tcp.Connection is no longer a FileDescriptor: "
                f"{_RELAY} and {_DIAL} rely on it"
            )
        beyond = set(vars(connection)) - set(vars(FileDescriptor(reactor=self.reactor)))
        expected = {"socket", "fileno", "protocol"}
        if beyond != expected:
            self.fail(
                f"twisted.internet.tcp.Connection.__init__ now sets {sorted(beyond)} beyond "
                f"FileDescriptor.__init__, not {sorted(expected)}: {_DIAL} (DirectClient) "
                "skips it and sets only those"
            )

    def test_tcpServer(self) -> None:
        """
        An accepted connection (L{tcp.Server}) still names its listening
        port as C{server}, which transparent mode's loop check reads.
        """
        a, _ = self.socketpair()
        port = tcp.Port(0, Factory(), reactor=self.reactor)  # never listens
        server = tcp.Server(a, Protocol(), ("127.0.0.1", 1), port, 0, self.reactor)
        self.assertStillThere("twisted.internet.tcp.Server", server)

    def test_tcpPort(self) -> None:
        """
        A listening port (L{tcp.Port}) still builds its connections with
        its C{transport} class, which L{txproxy._slim.slimPort} replaces,
        and still has the listening C{socket} and the count of accepted
        connections that L{txproxy.tuning} reads.
        """
        port = tcp.Port(0, Factory(), interface="127.0.0.1", reactor=self.reactor)
        port.startListening()  # (a memory reactor: nothing is ever accepted)
        self.addCleanup(port.socket.close)
        self.assertStillThere("twisted.internet.tcp.Port", port)

    def test_epollReactor(self) -> None:
        """
        An L{EPollReactor} instance still has the poller, the descriptor
        tables, the per-event handler and the disconnection helper that
        L{txproxy._loop}'s dispatch loop uses in place of C{doIteration}.
        """
        if not platform.isLinux():
            raise SkipTest("epoll is Linux only")
        reactorClass = self.resolve("twisted.internet.epollreactor.EPollReactor")
        reactor = reactorClass()  # never installed

        def close() -> None:
            reactor.waker.connectionLost(Failure(main.CONNECTION_DONE))
            poller = getattr(reactor, "_poller", None)
            if poller is not None:
                poller.close()

        self.addCleanup(close)
        self.assertStillThere("twisted.internet.epollreactor.EPollReactor", reactor)

    def test_webRequest(self) -> None:
        """
        L{twisted.web.server.Request} still has C{_disconnected}, which the
        admin site reads before finishing a response.
        """
        self.assertStillThere("twisted.web.server.Request")

    def test_endpointsModule(self) -> None:
        """
        L{twisted.internet.endpoints} still has the private wrapper and TCP
        server endpoint classes and the description parsers txproxy uses.
        """
        self.assertStillThere("twisted.internet.endpoints")

    def test_tcpServerEndpoint(self) -> None:
        """
        The endpoint C{serverFromString} makes for C{tcp:} is still a
        C{_TCPServerEndpoint} with the reactor, port, backlog and interface
        that C{--workers} copies into its C{SO_REUSEPORT} endpoint.
        """
        cls = self.resolve("twisted.internet.endpoints._TCPServerEndpoint")
        endpoint = serverFromString(self.reactor, "tcp:0:backlog=7:interface=127.0.0.1")
        if not isinstance(endpoint, cls):
            self.fail(
                "twisted.internet.endpoints.serverFromString('tcp:...') no longer makes a "
                f"_TCPServerEndpoint: {_WORKERS} relies on it"
            )
        self.assertStillThere("twisted.internet.endpoints._TCPServerEndpoint", endpoint)

    def test_wrapperServerEndpoint(self) -> None:
        """
        A C{_WrapperServerEndpoint} still keeps the endpoint and the factory
        it wraps, which C{--workers} unwraps.
        """
        cls = self.resolve("twisted.internet.endpoints._WrapperServerEndpoint")
        inner = serverFromString(self.reactor, "tcp:0")
        endpoint = cls(inner, Factory)
        self.assertStillThere("twisted.internet.endpoints._WrapperServerEndpoint", endpoint)

    def test_haproxyExceptions(self) -> None:
        """
        The HAProxy exceptions module still has C{InvalidProxyHeader}.
        """
        self.assertStillThere("twisted.protocols.haproxy._exceptions")

    def test_haproxyV1Parser(self) -> None:
        """
        The PROXY v1 parser still has its C{PROXYSTR} signature and C{feed}.
        """
        self.assertStillThere("twisted.protocols.haproxy._v1parser.V1Parser")

    def test_haproxyV2Parser(self) -> None:
        """
        The PROXY v2 parser still has its C{PREFIX} signature and C{feed}.
        """
        self.assertStillThere("twisted.protocols.haproxy._v2parser.V2Parser")

    def test_haproxyWrapperModule(self) -> None:
        """
        The HAProxy wrapper module still has the wrapper protocol and
        factory that txproxy's half-closing wrapper subclasses.
        """
        self.assertStillThere("twisted.protocols.haproxy._wrapper")

    def test_haproxyProtocolWrapper(self) -> None:
        """
        An C{HAProxyProtocolWrapper} still keeps its parser and the parsed
        header as C{_parser} and C{_proxyInfo}, which txproxy's subclass
        sets and its inherited C{getPeer}/C{getHost} read.
        """
        wrapperClass = self.resolve("twisted.protocols.haproxy._wrapper.HAProxyProtocolWrapper")
        factoryClass = self.resolve("twisted.protocols.haproxy._wrapper.HAProxyWrappingFactory")
        wrapper = wrapperClass(factoryClass(Factory()), Protocol())
        self.assertStillThere("twisted.protocols.haproxy._wrapper.HAProxyProtocolWrapper", wrapper)
