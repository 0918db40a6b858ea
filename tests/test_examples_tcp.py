# -*- test-case-name: tests.test_examples_tcp -*-
"""
Tests for the TCP-mode programs in C{examples/} (C{tcp_*.py}): their hooks do
what their docstrings say, on txproxy.testing's fakes (no sockets), and each
runs once for real on loopback.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

from twisted.internet import error
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.procs import (
    REPO,
    ThreadedServer,
    childPythonPath,
    echoHandler,
    freePort,
    recvAll,
    waitForPort,
)
from tests.test_examples import loadExample
from txproxy.config import parseCIDRs
from txproxy.testing import FakeConnector, connect, listenerConfig

tcp_canary = loadExample("tcp_canary")


class _Log:
    def __init__(self) -> None:
        self.records: list = []

    def log(self, record: object) -> None:
        self.records.append(record)


class CanaryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.connector = FakeConnector()
        self.clock = Clock()
        listener = listenerConfig(mode="tcp", upstream=["tcp:192.0.2.1:6379", "tcp:192.0.2.2:6379"])
        self.factory = tcp_canary.CanaryFactory(
            listener, self.connector, self.clock,
            canary="tcp:192.0.2.99:6381", canaryNetworks=parseCIDRs(["10.0.0.0/8"]),
        )
        self.factory.accessLog = _Log()

    def test_canaryClientsGoToCanary(self) -> None:
        """
        Clients inside the canary network go to the canary upstream; others
        to the pool, balanced.
        """
        connect(self.factory, ("10.1.2.3", 1000))
        connect(self.factory, ("192.168.0.5", 1000))
        connect(self.factory, ("192.168.0.6", 1000))
        self.assertEqual(
            [(a.host, a.port) for a in self.connector.attempts],
            [("192.0.2.99", 6381), ("192.0.2.1", 6379), ("192.0.2.2", 6379)],
        )

    def test_bytesCountedPerClient(self) -> None:
        """
        Every relayed chunk is counted for its client, unchanged on the way.
        """
        proto, client = connect(self.factory, ("192.168.0.5", 1000))
        attempt = self.connector.last
        upstream = attempt.succeed()
        proto.dataReceived(b"PING\r\n")
        attempt.protocol.dataReceived(b"+PONG\r\n")
        proto.dataReceived(b"PING\r\n")
        self.assertEqual(upstream.value(), b"PING\r\nPING\r\n")
        self.assertEqual(client.value(), b"+PONG\r\n")
        self.assertEqual(self.factory.bytesUp, {"192.168.0.5": 12})
        self.assertEqual(self.factory.bytesDown, {"192.168.0.5": 7})

    def test_failuresCounted(self) -> None:
        """
        A connection whose upstreams all refuse is closed and its failure is
        counted once (after the retry); the canary is not retried.
        """
        proto, client = connect(self.factory, ("192.168.0.5", 1000))
        self.connector.last.fail(error.ConnectionRefusedError())
        self.connector.last.fail(error.ConnectionRefusedError())
        proto, client2 = connect(self.factory, ("10.0.0.1", 1000))
        self.connector.last.fail(error.TCPTimedOutError())
        self.assertTrue(client.closed and client2.closed)
        self.assertEqual(self.factory.failures, {"ConnectionRefusedError": 1, "TCPTimedOutError": 1})
        self.assertEqual([r.status for r in self.factory.accessLog.records], [502, 502])


class CanaryRunTests(SynchronousTestCase):
    def test_runsForReal(self) -> None:
        """
        The example runs as a program: it relays to its pool on loopback
        and, stopped with SIGINT, prints the bytes per client.
        """
        echo = ThreadedServer(echoHandler)
        self.addCleanup(echo.stop)
        port = freePort()
        env = dict(os.environ, PYTHONPATH=childPythonPath())
        proc = subprocess.Popen(
            [sys.executable, os.path.join(REPO, "examples", "tcp_canary.py"),
             "--listen", f"tcp:{port}:interface=127.0.0.1", "--upstream", f"tcp:127.0.0.1:{echo.port}"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        )

        def stop() -> None:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

        self.addCleanup(stop)
        waitForPort(port, proc=proc)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"hello canary")
            s.shutdown(socket.SHUT_WR)
            self.assertEqual(recvAll(s), b"hello canary")
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
        self.assertIn(b"127.0.0.1: 12 bytes up, 12 bytes down", out, err)
