# -*- test-case-name: tests.test_lognoise -*-
"""
Tests for a quiet, clear log: no Twisted C{Starting factory}/C{Stopping
factory} lines for connections txproxy makes again and again, worker log
lines that say which worker, and a TLS listener's start-up line that says
TLS.  (Health checks: L{tests.test_router.HealthCheckTests.test_checksAreQuiet};
Redis reconnection attempts:
L{tests.test_redislimiter.LimiterServiceRedisTests.test_outageLogsOneLine}.)
"""

from __future__ import annotations

from typing import Any, List

from twisted.internet import defer
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogPublisher, Logger, formatEvent, formatEventAsClassicLogText, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from txproxy.tls._proto import TLSClientFactory, TLSServerFactory
from txproxy.config import fromFlags
from txproxy.runtime.endpoints import ListenerService
from txproxy.runtime.process import workerLogTagger
from txproxy.runtime.workers import _Fetch, _FetchFactory


class QuietFactoryTests(SynchronousTestCase):
    def assertQuiet(self, factory: Any) -> None:
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        for _ in range(3):
            factory.doStart()
            factory.doStop()
        self.assertEqual([formatEvent(e) for e in events], [])

    def test_upstreamTLSFactoryQuiet(self) -> None:
        """
        The TLS wrapper made for each upstream TLS connection (and each
        check of an C{https://} backend) logs nothing when it starts and
        stops.
        """
        from twisted.internet.protocol import Factory, Protocol

        inner = Factory.forProtocol(Protocol)
        inner.noisy = False
        self.assertQuiet(TLSClientFactory(lambda a, b: None, inner))
        self.assertQuiet(TLSServerFactory(lambda a, b: None, inner))

    def test_supervisorScrapeFactoryQuiet(self) -> None:
        """
        The factory of each C{/metrics} or C{/status} fetch from a worker
        logs nothing when it starts and stops.
        """
        self.assertQuiet(_FetchFactory(_Fetch(b"/metrics")))


class WorkerLogTests(SynchronousTestCase):
    def test_workerIdOnEveryLine(self) -> None:
        """
        With a worker's tagger ahead of the writing observer, a text log
        line reads C{[worker 3 NAMESPACE#LEVEL] ...}; a legacy event's
        C{-} system is replaced the same way, and an explicit system is
        kept after the worker number.
        """
        publisher = LogPublisher()
        publisher.addObserver(workerLogTagger(3))  # type: ignore[arg-type]
        lines: List[str] = []
        publisher.addObserver(lambda e: lines.append(formatEventAsClassicLogText(e)))  # type: ignore[arg-type]
        Logger(namespace="txproxy.service", observer=publisher).info("txproxy forward listening on {a}", a="tcp:1")
        publisher({"log_format": "legacy", "log_system": "-", "log_time": 0.0})
        publisher({"log_format": "proto", "log_system": "HTTPChannel,1,127.0.0.1", "log_time": 0.0})
        self.assertIn("[worker 3 txproxy.service#info] txproxy forward listening on tcp:1", lines[0])
        self.assertIn("[worker 3 -#-] legacy", lines[1])
        self.assertIn("[worker 3 HTTPChannel,1,127.0.0.1] proto", lines[2])


class _Port:
    def getHost(self) -> Any:
        return None


class _Endpoint:
    def listen(self, factory: Any) -> "defer.Deferred[Any]":
        return defer.succeed(_Port())


class _Factory:
    mode = "reverse"

    def __init__(self, listener: Any) -> None:
        self.listener = listener


class ListenerLineTests(SynchronousTestCase):
    def startLine(self, description: str, *flags: Any) -> str:
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        (listener,) = fromFlags([description], [("mode", "reverse"), ("route", "*=http://127.0.0.1:1"), *flags]).listeners
        ListenerService(description, _Endpoint(), _Factory(listener)).startService()
        (line,) = [formatEvent(e) for e in events if "listening on" in formatEvent(e)]
        return line

    def test_tlsListenerSaysTLS(self) -> None:
        """
        A TLS listener's start-up line says so, whether TLS comes from an
        C{ssl:} endpoint or from C{--certs}; a plain one's does not.
        """
        self.assertEqual(self.startLine("ssl:8443:privateKey=k.pem"),
                         "txproxy reverse listening on ssl:8443:privateKey=k.pem (TLS)")
        self.assertEqual(self.startLine("tcp:8443", ("certs", "/tmp")), "txproxy reverse listening on tcp:8443 (TLS)")
        self.assertEqual(self.startLine("tcp:8080"), "txproxy reverse listening on tcp:8080")
