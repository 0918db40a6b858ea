# -*- test-case-name: tests.test_reload -*-
"""
Tests for L{txproxy.runtime.service.ProxyService.reload}: a re-read configuration is
applied whole or not at all, without dropping connections.
"""

from __future__ import annotations

import os
import tempfile

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from txproxy.config import loadFile
from txproxy.runtime.service import ProxyService
from txproxy.testing import FakeConnector, connect

BASE = """
[[listeners]]
name = "web"
listen = ["tcp:8080"]
mode = "reverse"
[[listeners.routes]]
host = "a.test"
upstreams = ["http://192.0.2.1:80"]

[[listeners]]
name = "fwd"
listen = ["tcp:3128"]
rate = "10/s"
"""


class ReloadTests(SynchronousTestCase):
    def setUp(self) -> None:
        fd, self.path = tempfile.mkstemp(suffix=".toml")
        os.close(fd)
        self.addCleanup(os.remove, self.path)
        self.write(BASE)
        self.reactor = MemoryReactorClock()
        self.service = ProxyService(loadFile(self.path), self.reactor)
        self.service.installSignalHandlers = False
        self.service.startService()

    def write(self, text: str) -> None:
        with open(self.path, "w") as f:
            f.write(text)

    def ports(self) -> list:
        return sorted(svc.port.getHost().port for svc in self.service.listenerServices if svc.port is not None)

    def test_routeAdded(self) -> None:
        """
        A route added to the file is used by new requests after a reload,
        and backend state of kept routes survives.
        """
        router = self.service.router
        self.assertIsNone(router.routeFor("web", "b.test", "/"))
        backend = router.routeFor("web", "a.test", "/").pool.backends[0]
        backend.consecutiveFailures = 2
        self.write(BASE.replace('[[listeners]]\nname = "fwd"', '[[listeners.routes]]\nhost = "b.test"\n'
                                'upstreams = ["http://192.0.2.2:80"]\n\n[[listeners]]\nname = "fwd"'))
        self.assertTrue(self.service.reload())
        self.assertIsNotNone(router.routeFor("web", "b.test", "/"))
        self.assertIs(router.routeFor("web", "a.test", "/").pool.backends[0], backend)
        self.assertEqual(self.service.reloads, 1)

    def test_badConfigRejectedWhole(self) -> None:
        """
        A file with an error changes nothing and is counted as a failure.
        """
        self.write(BASE.replace('rate = "10/s"', 'rate = "fast"'))
        self.assertFalse(self.service.reload())
        self.assertEqual(self.service.reloadFailures, 1)
        self.assertEqual(self.service.factories["fwd"].listener.rate.perSecond, 10)

    def test_denyDestInReverseModeRejected(self) -> None:
        """
        A reload that gives a reverse listener --deny-dest is rejected (the
        option means nothing there); the running configuration stays.
        """
        self.write(BASE.replace('mode = "reverse"', 'mode = "reverse"\ndeny_dest = ["127.0.0.0/8"]'))
        self.assertFalse(self.service.reload())
        self.assertEqual(self.service.reloadFailures, 1)
        self.assertFalse(self.service.factories["web"].listener.denyDest)

    def test_badUpstreamEndpointRejected(self) -> None:
        """
        A reload to a tcp listener whose upstream is not a buildable client
        endpoint (C{bogus:xx}) is rejected; the running configuration stays.
        """
        self.write(BASE + '\n[[listeners]]\nname = "relay"\nlisten = ["tcp:2222"]\nmode = "tcp"\n'
                   'upstreams = ["bogus:xx"]\n')
        self.assertFalse(self.service.reload())
        self.assertEqual(self.service.reloadFailures, 1)
        self.assertNotIn("relay", self.service.factories)

    def test_headerInjectionRejected(self) -> None:
        """
        A reload whose route sets a C{host_rewrite} with a CR LF in it is
        rejected; the running routes stay.
        """
        self.write(BASE.replace('host = "a.test"\n', 'host = "a.test"\nhost_rewrite = "a\\r\\nX-Injected: yes"\n'))
        self.assertFalse(self.service.reload())
        self.assertEqual(self.service.reloadFailures, 1)
        route = self.service.router.routeFor("web", "a.test", "/")
        self.assertIsNone(route.config.hostRewrite)

    def test_limitsAndPolicyChange(self) -> None:
        """
        Changed limits and policy apply to the running factory (its open
        connections are untouched).
        """
        factory = self.service.factories["fwd"]
        factory.connector = FakeConnector()
        proto, transport = connect(factory)
        self.write(BASE.replace('rate = "10/s"', 'rate = "1/s"\nconnect_ports = "443,8443"'))
        self.assertTrue(self.service.reload())
        self.assertIs(self.service.factories["fwd"], factory)
        self.assertEqual(factory.listener.rate.perSecond, 1)
        self.assertIn(8443, factory.listener.connectPorts)
        self.assertFalse(transport.disconnecting)

    def test_http2OptionsChange(self) -> None:
        """
        C{http2} and C{h2_max_streams} may change on a reload: the running
        factory's listener carries the new values (new connections read
        them there); a reload giving them to a tcp listener is rejected
        whole.
        """
        factory = self.service.factories["web"]
        self.assertIs(factory.listener.http2, True)
        self.write(BASE.replace('mode = "reverse"', 'mode = "reverse"\nhttp2 = false'))
        self.assertTrue(self.service.reload())
        self.assertIs(self.service.factories["web"], factory)
        self.assertIs(factory.listener.http2, False)
        self.write(BASE.replace('mode = "reverse"', 'mode = "reverse"\nhttp2 = "on"\nh2_max_streams = 3'))
        self.assertTrue(self.service.reload())
        self.assertIs(factory.listener.http2, True)
        self.assertEqual(factory.listener.h2MaxStreams, 3)
        self.write(BASE + '\n[[listeners]]\nname = "relay"\nlisten = ["tcp:2222"]\nmode = "tcp"\n'
                   'upstreams = ["tcp:127.0.0.1:1"]\nhttp2 = false\n')
        self.assertFalse(self.service.reload())
        self.assertNotIn("relay", self.service.factories)
        self.assertEqual(factory.listener.h2MaxStreams, 3)

    def test_listenersAddedAndRemoved(self) -> None:
        """
        A new listener starts listening; a removed one stops.
        """
        self.assertEqual(self.ports(), [3128, 8080])
        self.write(BASE.replace('name = "fwd"\nlisten = ["tcp:3128"]', 'name = "fwd2"\nlisten = ["tcp:3129"]'))
        self.assertTrue(self.service.reload())
        self.assertEqual(self.ports(), [3129, 8080])
        self.assertIn("fwd2", self.service.factories)
        self.assertNotIn("fwd", self.service.factories)
