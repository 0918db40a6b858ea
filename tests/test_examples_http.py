# -*- test-case-name: tests.test_examples_http -*-
"""
Tests for C{examples/header_policy.py}, on txproxy.testing fakes.
"""

from __future__ import annotations

import os
import sys

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from txproxy.testing import FakeConnector, connect, forwardFactory

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples"))

import header_policy  # noqa: E402


class HeaderPolicyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.connector = FakeConnector({"ok.test": ["192.0.2.1"], "blocked.test": ["192.0.2.2"]})
        self.factory = forwardFactory(self.connector, Clock(), protocol=header_policy.HeaderPolicyProtocol)
        self.factory.deniedHosts = frozenset(["blocked.test"])

    def test_deniedHostIs403(self) -> None:
        """
        A request to a denied host is refused with 403 and never dialled.
        """
        proto, client = connect(self.factory)
        proto.dataReceived(b"GET http://blocked.test/ HTTP/1.1\r\nHost: blocked.test\r\n\r\n")
        self.assertTrue(client.value().startswith(b"HTTP/1.1 403 "))
        self.assertEqual(self.connector.attempts, [])

    def test_headersRewritten(self) -> None:
        """
        Allowed requests carry X-Proxy-User upstream; Server is removed from
        the response.
        """
        proto, client = connect(self.factory)
        proto.dataReceived(b"GET http://ok.test/ HTTP/1.1\r\nHost: ok.test\r\n\r\n")
        upstream = self.connector.last.succeed()
        self.assertIn(b"X-Proxy-User: anonymous\r\n", upstream.value())
        self.connector.last.protocol.dataReceived(b"HTTP/1.1 200 OK\r\nServer: secret/1.0\r\nContent-Length: 2\r\n\r\nok")
        self.assertNotIn(b"Server:", client.value())
        self.assertTrue(client.value().endswith(b"ok"))

    def test_makeFactory(self) -> None:
        """
        makeFactory builds a working factory with the deny list.
        """
        factory = header_policy.makeFactory(["Blocked.test"], connect_ports="443")
        self.assertEqual(factory.deniedHosts, frozenset(["blocked.test"]))
        self.assertIs(factory.protocol, header_policy.HeaderPolicyProtocol)
