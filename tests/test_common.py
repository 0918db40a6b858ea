# -*- test-case-name: tests.test_common -*-
"""
Tests for L{txproxy._common}, the helpers every mode shares.
"""

from __future__ import annotations

import ast
import inspect
from typing import Any

from twisted.internet import defer, error
from twisted.internet.address import UNIXAddress
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from txproxy import _common
from txproxy._common import clientInfoFor, formatAddress, isIPLiteral, overrides, statusForFailure
from txproxy.errors import PolicyDenied, ResolveError
from txproxy.hooks import ClientInfo, Refuse
from txproxy.http import HTTPError
from txproxy.router import NoHealthyBackend
from txproxy.testing import FakeTransport


class ClientInfoForTests(SynchronousTestCase):
    def test_ipPeer(self) -> None:
        """
        An IPv4 or IPv6 peer gives its host and port.
        """
        self.assertEqual(clientInfoFor(FakeTransport(("192.0.2.7", 4321))), ClientInfo("192.0.2.7", 4321))
        self.assertEqual(clientInfoFor(FakeTransport(("2001:db8::7", 80))), ClientInfo("2001:db8::7", 80))

    def test_unixPeer(self) -> None:
        """
        A UNIX socket peer gives its path as text (whether Twisted holds it
        as text or bytes), or C{"unix"} when it has none, and port 0.
        """
        named = StringTransport(peerAddress=UNIXAddress("/run/client.sock"))
        self.assertEqual(clientInfoFor(named), ClientInfo("/run/client.sock", 0))
        asBytes = StringTransport(peerAddress=UNIXAddress(b"/run/client.sock"))
        self.assertEqual(clientInfoFor(asBytes), ClientInfo("/run/client.sock", 0))
        anonymous = StringTransport(peerAddress=UNIXAddress(None))
        self.assertEqual(clientInfoFor(anonymous), ClientInfo("unix", 0))

    def test_peerWithoutPort(self) -> None:
        """
        A peer address with a host but no port gives port 0.
        """

        class HostOnly:
            host = "192.0.2.8"

        transport = StringTransport(peerAddress=HostOnly())  # type: ignore[arg-type]
        self.assertEqual(clientInfoFor(transport), ClientInfo("192.0.2.8", 0))


class _Base:
    def hook(self) -> None:
        pass

    def other(self) -> None:
        pass


class _Sub(_Base):
    def hook(self) -> None:
        pass


class OverridesTests(SynchronousTestCase):
    def test_overridden(self) -> None:
        """
        A method the object's class redefines is overridden; one it inherits
        is not.
        """
        self.assertTrue(overrides(_Sub(), "hook", _Base))
        self.assertFalse(overrides(_Sub(), "other", _Base))
        self.assertFalse(overrides(_Base(), "hook", _Base))

    def test_perBase(self) -> None:
        """
        The answer depends on the base asked about (the cache is keyed on
        it too): C{_Sub.hook} overrides C{_Base.hook} but not itself.
        """
        self.assertTrue(overrides(_Sub(), "hook", _Base))
        self.assertFalse(overrides(_Sub(), "hook", _Sub))

    def test_instanceAttributeIgnored(self) -> None:
        """
        Only the class counts: a method set on an instance (as the relay
        sets C{dataReceived}) does not make it an override.
        """
        obj: Any = _Base()
        obj.other = lambda: None
        self.assertFalse(overrides(obj, "other", _Base))


class FormatAddressTests(SynchronousTestCase):
    def test_ipv4AndNames(self) -> None:
        """
        IPv4 addresses and names are written C{host:port}.
        """
        self.assertEqual(formatAddress("192.0.2.1", 80), "192.0.2.1:80")
        self.assertEqual(formatAddress("example.com", 443), "example.com:443")

    def test_ipv6(self) -> None:
        """
        IPv6 addresses are bracketed.
        """
        self.assertEqual(formatAddress("2001:db8::1", 443), "[2001:db8::1]:443")
        self.assertEqual(formatAddress("fe80::1%eth0", 22), "[fe80::1%eth0]:22")


class IsIPLiteralTests(SynchronousTestCase):
    def test_literals(self) -> None:
        """
        IPv4 and IPv6 addresses (with a zone index, or IPv4-mapped) are IP
        literals.
        """
        for host in ["192.0.2.1", "0.0.0.0", "::1", "2001:db8::1", "fe80::1%eth0", "::ffff:192.0.2.1"]:
            self.assertTrue(isIPLiteral(host), host)

    def test_notLiterals(self) -> None:
        """
        Names, bracketed IPv6, short or out-of-range IPv4, leading zeros,
        padding and the empty string are not.
        """
        for host in ["example.com", "[::1]", "192.0.2", "256.1.1.1", "01.2.3.4", " 192.0.2.1", "", "%eth0"]:
            self.assertFalse(isIPLiteral(host), host)

    def test_oneCopy(self) -> None:
        """
        The modules that need the check use this one.
        """
        from txproxy import connector
        from txproxy.router import _health as _router_health
        from txproxy.tls import _client as tlsClient

        self.assertIs(connector.isIPLiteral, isIPLiteral)
        self.assertIs(_router_health.isIPLiteral, isIPLiteral)
        self.assertIs(tlsClient.isIPLiteral, isIPLiteral)


class StatusForFailureTests(SynchronousTestCase):
    def check(self, exception: BaseException, expected: Any) -> None:
        try:
            raise exception
        except BaseException:
            f = Failure()
        self.assertEqual(statusForFailure(f), expected)

    def test_hookRefusalsAndHTTPErrors(self) -> None:
        """
        A L{Refuse} or L{HTTPError} keeps its own status and reason; a
        L{PolicyDenied} is 403 with its message (or a default).
        """
        self.check(Refuse(451, "not here"), (451, "not here"))
        self.check(HTTPError(400, "bad request"), (400, "bad request"))
        self.check(PolicyDenied("destination x is not allowed"), (403, "destination x is not allowed"))
        self.check(PolicyDenied(), (403, "destination not allowed"))

    def test_unreachable(self) -> None:
        """
        A name that does not resolve, a refused connect and other connect
        failures are 502, each with its own reason.
        """
        self.check(ResolveError("x"), (502, "cannot resolve the destination"))
        self.check(error.DNSLookupError("x"), (502, "cannot resolve the destination"))
        self.check(error.ConnectionRefusedError(), (502, "the destination refused the connection"))
        for e in [
            error.NoRouteError(),
            error.ConnectError(),
            error.ConnectionLost(),
            error.ConnectionDone(),
            OSError(113, "No route to host"),
        ]:
            self.check(e, (502, "cannot connect to the destination"))

    def test_timeouts(self) -> None:
        """
        Every kind of connect timeout (the reactor's, C{addTimeout}'s, a
        cancelled attempt) is 504.
        """
        for e in [error.TimeoutError(), defer.TimeoutError(), defer.CancelledError()]:
            self.check(e, (504, "timed out connecting to the destination"))

    def test_noHealthyBackend(self) -> None:
        """
        L{NoHealthyBackend} (the router's class, whatever its message) is
        503; an exception that merely shares its name is not.
        """
        self.check(NoHealthyBackend("no healthy backend in web"), (503, "no healthy backend"))
        impostor = type("NoHealthyBackend", (Exception,), {})
        self.check(impostor(), (500, "internal error"))

    def test_anythingElse(self) -> None:
        """
        Anything else is an internal error; its text is not shown.
        """
        self.check(ValueError("secret detail"), (500, "internal error"))


class LeafModuleTests(SynchronousTestCase):
    def test_importsOnlyLeaves(self) -> None:
        """
        At module level, L{txproxy._common} imports only Twisted, the
        standard library, L{txproxy.errors}, L{txproxy.hooks} and
        L{txproxy.http}, so any txproxy module can import it without a
        cycle.
        """
        tree = ast.parse(inspect.getsource(_common))
        imported = []
        for node in tree.body:
            if isinstance(node, ast.Import):
                imported.extend(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                imported.append(node.module or "")
        allowed = {"txproxy.errors", "txproxy.hooks", "txproxy.http"}
        for name in imported:
            if name.startswith("txproxy"):
                self.assertIn(name, allowed)
            else:
                self.assertIn(name.split(".")[0], {"__future__", "os", "typing", "twisted"})
