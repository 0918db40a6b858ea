# -*- test-case-name: tests.test_integration_transparent -*-
"""
Integration test for C{--mode transparent}: a real C{twistd -n txproxy}
running inside a network namespace, with an iptables C{REDIRECT} rule
sending a client's connections to it, relaying them to their original
destination (an echo server in another namespace, reached over a veth
pair).

The namespaces, veth pair, addresses and echo servers come from
L{tests.test_transparent_netns} (whose set-up this module reuses): the
host's own network setup is never touched, every rule lives in a namespace
deleted when the test ends, and the test checks that afterwards.

Only the client's connections are redirected: the rule matches a socket
mark the test's client sets (C{SO_MARK}), so the proxy's own upstream
connections (unmarked) go straight out.  A real deployment excludes the
proxy's traffic by owner, mark or interface instead (see the TCP modes
guide).

Needs root, C{ip}, C{iptables} and C{ip6tables}; CI runs as root, and
these tests fail (not skip) when something is missing.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from typing import Any, List, Tuple

from twisted.trial.unittest import SynchronousTestCase

from tests import test_transparent_netns as _netns
from tests.procs import Twistd, childPythonPath, twistdPath
from tests.test_transparent_netns import (
    _CLIENT4,
    _ECHO_PORT,
    _SERVER4,
    _SERVER6,
    _SO_MARK,
    _recvExactly,
    inNamespace,
)

_PORT = 3129
_CLIENT_MARK = 0x99


class _NamespacedTwistd(Twistd):
    """
    A L{Twistd} started inside network namespace C{namespace} (C{ip netns
    exec} execs it, so the PID is twistd's own).
    """

    def __init__(self, namespace: str, args: List[str]) -> None:
        super().__init__(args)
        self.namespace = namespace

    def start(self, wait: bool = True) -> "Twistd":
        env = dict(os.environ)
        env["PYTHONPATH"] = childPythonPath(env.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.namespace, twistdPath(), "-n", "--pidfile=", "txproxy", *self.args],
            cwd=self.cwd,
            env=env,
            stdout=open(self.stdoutPath, "wb"),
            stderr=open(self.stderrPath, "wb"),
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"twistd exited with {self.proc.returncode}: {self.stderr()}")
            if "txproxy running on" in self.stdout():
                return self
            time.sleep(0.05)
        raise RuntimeError("twistd did not start in the namespace in 20s")


class TransparentModeTests(SynchronousTestCase):
    """
    C{--mode transparent} on connections iptables really redirected.
    """

    # The namespace set-up and helpers of the origdst tests, reused as is.
    # (Through the module, so that trial does not collect its tests here.)
    setUp = _netns.TransparentNetnsTests.setUp
    hostState = _netns.TransparentNetnsTests.hostState
    checkHostUnchanged = _netns.TransparentNetnsTests.checkHostUnchanged
    iptables = _netns.TransparentNetnsTests.iptables
    inClient = _netns.TransparentNetnsTests.inClient
    inServer = _netns.TransparentNetnsTests.inServer
    startEcho = _netns.TransparentNetnsTests.startEcho

    def startProxy(self) -> Twistd:
        # One dual-stack listener takes both IPv4 and IPv6 redirects.
        proxy = _NamespacedTwistd(
            self.client,
            ["--mode", "transparent", "--listen", f"tcp6:{_PORT}:interface=\\:\\:",
             "--connect-timeout", "3", "--access-log", "access.log", "--access-log-format", "json"],
        )
        proxy.start()
        self.addCleanup(proxy.stop)
        return proxy

    def redirect(self, command: str, destination: str) -> None:
        self.iptables(
            command, "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", destination,
            "--dport", str(_ECHO_PORT), "-m", "mark", "--mark", str(_CLIENT_MARK),
            "-j", "REDIRECT", "--to-ports", str(_PORT),
        )

    def clientConnect(self, address: Tuple[str, int], mark: bool = True) -> socket.socket:
        def make() -> socket.socket:
            family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.settimeout(5)
            if mark:
                sock.setsockopt(socket.SOL_SOCKET, _SO_MARK, _CLIENT_MARK)
            sock.connect(address)
            return sock

        sock = inNamespace(self.client, make)
        self.addCleanup(sock.close)
        return sock

    def records(self, proxy: Twistd) -> List[dict]:
        path = os.path.join(proxy.cwd, "access.log")
        if not os.path.exists(path):
            return []
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def waitForRecord(self, proxy: Twistd, predicate: Any) -> dict:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for r in self.records(proxy):
                if predicate(r):
                    return r
            time.sleep(0.05)
        self.fail(f"no matching record in {self.records(proxy)}; stderr: {proxy.stderr()}")

    def echoThrough(self, server: str, command: str) -> None:
        proxy = self.startProxy()
        self.redirect(command, server)
        client = self.clientConnect((server, _ECHO_PORT))
        message = b"redirected through txproxy\n"
        client.sendall(message)
        self.assertEqual(_recvExactly(client, len(message)), message)
        client.shutdown(socket.SHUT_WR)
        self.assertEqual(client.recv(10), b"")
        host = f"[{server}]" if ":" in server else server
        record = self.waitForRecord(proxy, lambda r: r["mode"] == "transparent" and r["status"] == 200)
        self.assertEqual(record["target"], f"{host}:{_ECHO_PORT}")
        self.assertEqual(record["bytesUp"], len(message))

    def test_ipv4Redirected(self) -> None:
        """
        A client's IPv4 connection REDIRECTed to txproxy reaches the server
        it was meant for, both ways, with half-close; the access record
        names the original destination.
        """
        self.echoThrough(_SERVER4, "iptables")

    def test_ipv6Redirected(self) -> None:
        """
        The same over IPv6 (C{IP6T_SO_ORIGINAL_DST}).
        """
        self.echoThrough(_SERVER6, "ip6tables")

    def test_loopToOwnListenerClosed(self) -> None:
        """
        A connection made straight to the proxy's port (its original
        destination is the proxy's own listener) is closed, not relayed to
        itself.
        """
        proxy = self.startProxy()
        self.redirect("iptables", _SERVER4)  # loads conntrack in the namespace
        client = self.clientConnect((_CLIENT4, _PORT), mark=False)
        try:
            self.assertEqual(client.recv(10), b"")
        except ConnectionResetError:
            pass
        record = self.waitForRecord(proxy, lambda r: r["status"] == 403)
        self.assertIn("own listener", record["reason"])
