# -*- test-case-name: tests.test_tap -*-
"""
Tests for L{txproxy.runtime.tap} and the twistd plugin: option parsing into config,
one-line errors, and service assembly.
"""

from __future__ import annotations

import io
import sys
from typing import Any, List

from twisted.application.service import IServiceMaker
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import getPlugins
from twisted.trial.unittest import SynchronousTestCase

from txproxy.runtime import tap
from txproxy.errors import ConfigError
from txproxy.runtime.service import ListenerService, ProxyService


class OptionsTests(SynchronousTestCase):
    def test_pluginIsDiscovered(self) -> None:
        """
        twistd finds a service maker with tapname txproxy naming txproxy.runtime.tap.
        """
        makers = [m for m in getPlugins(IServiceMaker) if m.tapname == "txproxy"]
        self.assertEqual(len(makers), 1)
        self.assertEqual(makers[0].module, "txproxy.runtime.tap")

    def test_flagsBecomeConfig(self) -> None:
        """
        Every flag lands in the config, repeatable ones in order.
        """
        config = tap.parseCommandLine([
            "--listen", "tcp:1", "--listen", "tcp:2", "--connect-ports", "443,8443",
            "--deny-dest", "10.0.0.0/8", "--deny-dest", "192.168.0.0/16", "--header-timeout", "3",
            "--access-log", "-", "--access-log-format", "json", "--drain-timeout", "7",
        ])
        (listener,) = config.listeners
        self.assertEqual(listener.listen, ("tcp:1", "tcp:2"))
        self.assertIn(8443, listener.connectPorts)
        self.assertIn("192.168.1.1", listener.denyDest)
        self.assertIn("10.1.1.1", listener.denyDest)
        self.assertEqual(listener.headerTimeout, 3)
        self.assertEqual((config.accessLog, config.accessLogFormat, config.drainTimeout), ("-", "json", 7))

    def test_defaultListen(self) -> None:
        """
        Without --listen the proxy listens on tcp:3128.
        """
        self.assertEqual(tap.parseCommandLine([]).listeners[0].listen, ("tcp:3128",))

    def test_clientCANeedsTLS(self) -> None:
        """
        --client-ca on a listener that does not terminate TLS is an error,
        never silently ignored.
        """
        e = self.assertRaises(ConfigError, tap.parseCommandLine,
                              ["--mode", "reverse", "--route", "a=http://b:1", "--client-ca", "ca.pem"])
        self.assertIn("--client-ca needs a TLS listener", str(e))

    def test_upstreamCAChecked(self) -> None:
        """
        --upstream-ca must name a readable PEM bundle of certificates: a
        missing file or one without a certificate is a one-line start-up
        error naming the option and the file; --help lists the option.
        """
        import os
        import tempfile

        args = ["--mode", "reverse", "--route", "a=https://b:1", "--upstream-ca"]
        e = self.assertRaises(ConfigError, tap.parseCommandLine, args + ["/nonexistent/ca.pem"])
        self.assertIn("--upstream-ca /nonexistent/ca.pem", str(e))
        self.assertNotIn("\n", str(e))
        fd, empty = tempfile.mkstemp(suffix=".pem")
        os.close(fd)
        self.addCleanup(os.remove, empty)
        e = self.assertRaises(ConfigError, tap.parseCommandLine, args + [empty])
        self.assertIn("no certificate in it", str(e))
        self.assertIn("--upstream-ca", str(tap.Options()))

    def test_parseOptionsPrintsOneLineAndExits2(self) -> None:
        """
        Options.parseOptions turns a mistake into one stderr line and exit
        status 2.
        """
        err = io.StringIO()
        self.patch(sys, "__stderr__", err)
        e = self.assertRaises(SystemExit, tap.Options().parseOptions, ["--burst", "x"])
        self.assertEqual(e.code, 2)
        self.assertEqual(err.getvalue().count("\n"), 1)
        self.assertIn("--burst", err.getvalue())

    def test_http2OptionsErrorsAreOneLine(self) -> None:
        """
        C{--http2} and C{--h2-max-streams} mistakes on the command line
        print one line naming the option and exit 2: a bad value, or the
        option in a mode without HTTP.
        """
        for argv, needle in [
            (["--http2", "sometimes"], "--http2: expected on or off"),
            (["--h2-max-streams", "0"], "--h2-max-streams: must be at least 1"),
            (["--mode", "tcp", "--upstream", "tcp:127.0.0.1:1", "--http2", "off"],
             "--http2 is only for modes forward and reverse"),
        ]:
            err = io.StringIO()
            self.patch(sys, "__stderr__", err)
            e = self.assertRaises(SystemExit, tap.Options().parseOptions, argv)
            self.assertEqual(e.code, 2)
            self.assertEqual(err.getvalue().count("\n"), 1)
            self.assertIn(needle, err.getvalue())
        config = tap.parseCommandLine(["--mode", "reverse", "--route", "*=http://127.0.0.1:1",
                                       "--http2", "off"])
        self.assertIs(config.listeners[0].http2, False)
        config = tap.parseCommandLine(["--h2-max-streams", "250"])
        self.assertEqual(config.listeners[0].h2MaxStreams, 250)

    def test_helpListsEveryContractOption(self) -> None:
        """
        --help documents every option of the CLI contract.
        """
        text = str(tap.Options())
        for name in ["listen", "mode", "upstream", "route", "certs", "proxy-protocol-send", "trusted-proxies",
                     "config", "connect-ports", "auth", "allow", "deny", "deny-dest", "rate", "burst",
                     "max-conns", "max-conns-per-client", "redis", "connect-timeout", "response-timeout",
                     "idle-timeout", "header-timeout", "max-head-size", "max-headers", "admin", "access-log",
                     "access-log-format", "workers", "drain-timeout", "http2", "h2-max-streams"]:
            self.assertIn(f"--{name}", text)


class UpstreamEndpointTests(SynchronousTestCase):
    def test_badUpstreamEndpointRejected(self) -> None:
        """
        A tcp-mode --upstream that is not a client endpoint Twisted can
        build (unknown type, missing or bad port) is a one-line start-up
        error naming it.
        """
        for bad, detail in [
            ("bogus:xx", "Unknown endpoint type"),
            ("tcp:192.0.2.1", "port"),
            ("tcp:192.0.2.1:ssh", "ssh"),
            ("tcp:192.0.2.1:99999", "port out of range"),
            ("tcp:192.0.2.1:22:bogus=1", "bogus"),
        ]:
            e = self.assertRaises(
                ConfigError, tap.parseCommandLine, ["--mode", "tcp", "--upstream", "tcp:192.0.2.9:22", "--upstream", bad]
            )
            self.assertIn(f"bad --upstream endpoint {bad!r}", str(e))
            self.assertIn(detail, str(e))
            self.assertNotIn("\n", str(e))

    def test_goodUpstreamEndpointsAccepted(self) -> None:
        """
        Plain, keyword and UNIX endpoint descriptions pass.
        """
        config = tap.parseCommandLine(
            ["--mode", "tcp", "--upstream", "tcp:192.0.2.9:22", "--upstream", "tcp:host=db.test:port=5432",
             "--upstream", "unix:/run/app.sock"]
        )
        self.assertEqual(len(config.listeners[0].upstreams), 3)


class ServiceTests(SynchronousTestCase):
    def test_oneListenerServicePerEndpoint(self) -> None:
        """
        Each --listen becomes one listener service sharing the factory, and
        starting listens on each.
        """
        reactor = MemoryReactorClock()
        config = tap.parseCommandLine(["--listen", "tcp:1111", "--listen", "tcp:2222"])
        svc = ProxyService(config, reactor)
        svc.installSignalHandlers = False
        listeners = [s for s in svc if isinstance(s, ListenerService)]
        self.assertEqual(len(listeners), 2)
        self.assertIs(listeners[0].factory, listeners[1].factory)
        svc.privilegedStartService()
        svc.startService()
        self.assertEqual(sorted(p[0] for p in reactor.tcpServers), [1111, 2222])

    def test_stopClosesListenersAndDrains(self) -> None:
        """
        Stopping closes the listening ports at once and finishes when no
        connection is open.
        """
        reactor = MemoryReactorClock()
        svc = ProxyService(tap.parseCommandLine(["--listen", "tcp:1111"]), reactor)
        svc.installSignalHandlers = False
        svc.startService()
        port = svc.listenerServices[0].port
        d = svc.stopService()
        self.successResultOf(d)
        self.assertFalse(port.listening if hasattr(port, "listening") else False)
        self.assertIsNone(svc.listenerServices[0].port)

    def test_drainTimeoutAbortsTunnels(self) -> None:
        """
        Connections still open at the drain timeout are aborted.
        """
        from txproxy.testing import FakeConnector, connect

        reactor = MemoryReactorClock()
        svc = ProxyService(tap.parseCommandLine(["--listen", "tcp:1111", "--drain-timeout", "5",
                                                 "--connect-ports", "*"]), reactor)
        svc.installSignalHandlers = False
        factory = svc.factories["listener0"]
        factory.connector = FakeConnector()
        svc.startService()
        proto, transport = connect(factory)
        proto.dataReceived(b"CONNECT 192.0.2.1:22 HTTP/1.1\r\nHost: x\r\n\r\n")
        factory.connector.last.succeed()
        d = svc.stopService()
        reactor.advance(4)
        self.assertNoResult(d)
        self.assertFalse(transport.aborted)
        for _ in range(30):
            reactor.advance(0.05)
        self.successResultOf(d)
        self.assertTrue(transport.aborted)


class BacklogTests(SynchronousTestCase):
    def test_backlogAddedToEndpoints(self) -> None:
        """
        --backlog reaches tcp, ssl and unix endpoint strings (also behind
        haproxy:), unless the string sets its own.
        """
        from txproxy.runtime.service import withBacklog

        self.assertEqual(withBacklog("tcp:80", 1024), "tcp:80:backlog=1024")
        self.assertEqual(withBacklog("haproxy:tcp:80", 64), "haproxy:tcp:80:backlog=64")
        self.assertEqual(withBacklog("tcp:80:backlog=5", 1024), "tcp:80:backlog=5")
        self.assertEqual(withBacklog("unix:/tmp/s", 8), "unix:/tmp/s:backlog=8")

    def test_backlogUsedWhenListening(self) -> None:
        """
        The listening port gets the configured backlog.
        """
        reactor = MemoryReactorClock()
        svc = ProxyService(tap.parseCommandLine(["--listen", "tcp:1111", "--backlog", "77"]), reactor)
        svc.installSignalHandlers = False
        svc.startService()
        self.assertEqual(reactor.tcpServers[0][2], 77)
