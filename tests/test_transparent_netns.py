# -*- test-case-name: tests.test_transparent_netns -*-
"""
Integration tests for L{txproxy.stream.origdst} against the real kernel: network
namespaces, a veth pair and iptables C{REDIRECT} rules.

Each test makes two fresh network namespaces named after this process's PID
(a "client" namespace where the redirecting rules and the listener live, and
a "server" namespace with an echo server), joined by a veth pair addressed
from the benchmarking ranges C{198.18.0.0/15} and C{2001:2::/48}, which
exist only inside those namespaces.  The host's own network namespace is
never changed: sockets are made in the namespaces by short-lived threads
that call C{setns(2)} for themselves only, and every rule lives in a
namespace that is deleted when the test ends.

Needs root, C{ip} and C{iptables}/C{ip6tables} (Debian's C{iproute2} and
C{iptables}); CI runs as root.  These tests are not skipped when something
is missing: they fail, saying what is missing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import itertools
import os
import shutil
import socket
import subprocess
import threading
from typing import Any, Callable, List, Optional, Tuple, TypeVar

from twisted.trial.unittest import SynchronousTestCase

from txproxy.stream.origdst import isOwnListener, localNetworks, originalDestination

T = TypeVar("T")

_CLONE_NEWNET = 0x40000000
_SO_MARK = 36
_UPSTREAM_MARK = 0x7478  # marks the proxy's own upstream connections
_TIMEOUT = 5.0

_CLIENT4 = "198.18.0.1"
_SERVER4 = "198.18.0.2"
_ROUTED4 = "198.18.1.5"  # exists nowhere; routed from the server side via the client side
_CLIENT6 = "2001:2::1"
_SERVER6 = "2001:2::2"
_ECHO_PORT = 8007
_PROXY_PORT = 3129

_counter = itertools.count()


def _run(*command: str) -> str:
    """
    Run a command, returning its output; raise with its stderr if it fails.
    """
    result = subprocess.run(
        command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30
    )
    if result.returncode != 0:
        raise RuntimeError(
            "%s failed (%d): %s" % (" ".join(command), result.returncode, result.stderr.strip())
        )
    return result.stdout


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, "setns: " + os.strerror(code))


def inNamespace(name: str, function: Callable[[], T]) -> T:
    """
    Call C{function} in a new thread that has joined network namespace
    C{name}; sockets it makes belong to that namespace (and stay there,
    usable from any thread).  The calling thread's namespace is untouched.
    """
    outcome: List[Any] = []

    def run() -> None:
        try:
            fd = os.open("/run/netns/" + name, os.O_RDONLY)
            try:
                _setns(fd)
            finally:
                os.close(fd)
            outcome.append((True, function()))
        except BaseException as e:
            outcome.append((False, e))

    thread = threading.Thread(target=run, name="netns-" + name)
    thread.start()
    thread.join()
    ok, value = outcome[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


class _SocketTransport:
    """
    The part of a Twisted TCP transport that L{originalDestination} uses.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def getHandle(self) -> socket.socket:
        return self._sock


def _recvExactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


class TransparentNetnsTests(SynchronousTestCase):
    """
    L{originalDestination} and L{isOwnListener} on connections that iptables
    really redirected.
    """

    def setUp(self) -> None:
        missing = [tool for tool in ("ip", "iptables", "ip6tables") if shutil.which(tool) is None]
        if missing:
            self.fail("missing tools %s (apt-get install iproute2 iptables)" % (missing,))
        if os.geteuid() != 0:
            self.fail("network namespace tests must run as root (CI does)")
        self.hostBefore = self.hostState()
        n = "%d%d" % (os.getpid(), next(_counter))
        self.client = "txpc" + n
        self.server = "txps" + n
        self.clientIf = clientIf = "txc" + n
        self.serverIf = serverIf = "txs" + n
        _run("ip", "netns", "add", self.client)
        self.addCleanup(self.checkHostUnchanged)
        self.addCleanup(_run, "ip", "netns", "del", self.client)
        _run("ip", "netns", "add", self.server)
        self.addCleanup(_run, "ip", "netns", "del", self.server)
        # Create the pair directly inside the client namespace, so that no
        # interface ever appears in the host's namespace.
        _run("ip", "-n", self.client, "link", "add", clientIf, "type", "veth",
             "peer", "name", serverIf, "netns", self.server)
        self.assertNotIn(clientIf, _run("ip", "-o", "link", "show"))
        for ns, interface, v4, v6 in [
            (self.client, clientIf, _CLIENT4, _CLIENT6),
            (self.server, serverIf, _SERVER4, _SERVER6),
        ]:
            _run("ip", "-n", ns, "link", "set", "lo", "up")
            _run("ip", "-n", ns, "addr", "add", v4 + "/24", "dev", interface)
            _run("ip", "-n", ns, "addr", "add", v6 + "/64", "dev", interface, "nodad")
            _run("ip", "-n", ns, "link", "set", interface, "up")
        self.startEcho(socket.AF_INET, _SERVER4)
        self.startEcho(socket.AF_INET6, _SERVER6)

    def hostState(self) -> Tuple[str, str]:
        """
        The host's NAT rules, to check that the test left them alone.
        """
        return (_run("iptables", "-t", "nat", "-S"), _run("ip6tables", "-t", "nat", "-S"))

    def checkHostUnchanged(self) -> None:
        """
        The host's NAT rules are as they were, and neither the namespaces
        nor the veth interfaces are left behind (or ever were in the host's
        namespace).
        """
        self.assertEqual(self.hostState(), self.hostBefore)
        names = _run("ip", "netns", "list")
        self.assertNotIn(self.client, names)
        self.assertNotIn(self.server, names)
        links = _run("ip", "-o", "link", "show")
        self.assertNotIn(self.clientIf, links)
        self.assertNotIn(self.serverIf, links)

    def iptables(self, command: str, *rule: str) -> None:
        """
        Add a rule in the client namespace (gone with the namespace).
        """
        _run("ip", "netns", "exec", self.client, command, *rule)

    def inClient(self, function: Callable[[], T]) -> T:
        return inNamespace(self.client, function)

    def inServer(self, function: Callable[[], T]) -> T:
        return inNamespace(self.server, function)

    def listen(
        self, family: socket.AddressFamily, host: str, port: int, v6only: bool = True
    ) -> socket.socket:
        """
        A listening socket made in the client namespace.
        """

        def make() -> socket.socket:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
            sock.bind((host, port))
            sock.listen(8)
            sock.settimeout(_TIMEOUT)
            return sock

        sock = self.inClient(make)
        self.addCleanup(sock.close)
        return sock

    def startEcho(self, family: socket.AddressFamily, host: str) -> None:
        """
        An echo server in the server namespace, served by a thread until
        the test ends.
        """

        def make() -> socket.socket:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.bind((host, _ECHO_PORT))
            sock.listen(8)
            return sock

        listener = self.inServer(make)
        stop = threading.Event()

        def serve() -> None:
            listener.settimeout(0.2)
            while not stop.is_set():
                try:
                    conn, _ = listener.accept()
                except socket.timeout:
                    continue
                except OSError:
                    return
                with conn:
                    conn.settimeout(_TIMEOUT)
                    try:
                        while True:
                            data = conn.recv(65536)
                            if not data:
                                break
                            conn.sendall(data)
                    except OSError:
                        pass

        thread = threading.Thread(target=serve, name="echo-" + host, daemon=True)
        thread.start()

        def stopEcho() -> None:
            stop.set()
            thread.join(_TIMEOUT)
            listener.close()

        self.addCleanup(stopEcho)

    def connect(
        self, namespace: str, address: Tuple[str, int], mark: Optional[int] = None
    ) -> socket.socket:
        """
        A TCP connection made from C{namespace}.
        """

        def make() -> socket.socket:
            family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.settimeout(_TIMEOUT)
            if mark is not None:
                sock.setsockopt(socket.SOL_SOCKET, _SO_MARK, mark)
            sock.connect(address)
            return sock

        sock = inNamespace(namespace, make)
        self.addCleanup(sock.close)
        return sock

    def accept(self, listener: socket.socket) -> socket.socket:
        conn, _ = listener.accept()
        conn.settimeout(_TIMEOUT)
        self.addCleanup(conn.close)
        return conn

    def relayOnce(self, client: socket.socket, accepted: socket.socket,
                  destination: Tuple[str, int]) -> None:
        """
        Do what transparent mode does, by hand: connect from the client
        namespace to the original destination (marked, so that the
        redirecting rule lets the proxy's own connection through), pass a
        message client -> server and back, and check it arrives.
        """
        upstream = self.connect(self.client, destination, mark=_UPSTREAM_MARK)
        message = b"through the transparent proxy\n"
        client.sendall(message)
        upstream.sendall(_recvExactly(accepted, len(message)))
        accepted.sendall(_recvExactly(upstream, len(message)))
        self.assertEqual(_recvExactly(client, len(message)), message)

    def redirectOutput(self, command: str, destination: str) -> None:
        self.iptables(
            command, "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", destination,
            "--dport", str(_ECHO_PORT), "-m", "mark", "!", "--mark", str(_UPSTREAM_MARK),
            "-j", "REDIRECT", "--to-ports", str(_PROXY_PORT),
        )

    def test_outputRedirectIPv4(self) -> None:
        """
        A local client's connection to the IPv4 server, REDIRECTed by an
        C{OUTPUT} rule to a listener on C{0.0.0.0}, has the server's address
        as its original destination; that is not the proxy's own listener,
        and relaying to it reaches the server.
        """
        listener = self.listen(socket.AF_INET, "0.0.0.0", _PROXY_PORT)
        self.redirectOutput("iptables", _SERVER4)
        client = self.connect(self.client, (_SERVER4, _ECHO_PORT))
        accepted = self.accept(listener)
        self.assertEqual(accepted.getsockname(), ("127.0.0.1", _PROXY_PORT))
        destination = originalDestination(_SocketTransport(accepted))
        self.assertEqual(destination, (_SERVER4, _ECHO_PORT))
        assert destination is not None
        local = self.inClient(localNetworks)
        self.assertFalse(isOwnListener(destination, [listener.getsockname()], local))
        self.relayOnce(client, accepted, destination)

    def test_preroutingRedirectIPv4(self) -> None:
        """
        A connection arriving from another host (the server namespace) for
        an address routed through the client namespace, REDIRECTed by a
        C{PREROUTING} rule, has that address as its original destination.
        """
        listener = self.listen(socket.AF_INET, "0.0.0.0", _PROXY_PORT)
        _run("ip", "-n", self.server, "route", "add", "198.18.1.0/24", "via", _CLIENT4)
        self.iptables(
            "iptables", "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "-d", _ROUTED4,
            "--dport", str(_ECHO_PORT), "-j", "REDIRECT", "--to-ports", str(_PROXY_PORT),
        )
        self.connect(self.server, (_ROUTED4, _ECHO_PORT))
        accepted = self.accept(listener)
        self.assertEqual(accepted.getpeername()[0], _SERVER4)
        destination = originalDestination(_SocketTransport(accepted))
        self.assertEqual(destination, (_ROUTED4, _ECHO_PORT))
        assert destination is not None
        local = self.inClient(localNetworks)
        self.assertFalse(isOwnListener(destination, [listener.getsockname()], local))

    def test_outputRedirectIPv6(self) -> None:
        """
        The same with IPv6 and C{ip6tables}: the original destination comes
        from C{IP6T_SO_ORIGINAL_DST}.
        """
        listener = self.listen(socket.AF_INET6, "::", _PROXY_PORT)
        self.redirectOutput("ip6tables", _SERVER6)
        client = self.connect(self.client, (_SERVER6, _ECHO_PORT))
        accepted = self.accept(listener)
        self.assertEqual(accepted.getsockname()[:2], ("::1", _PROXY_PORT))
        destination = originalDestination(_SocketTransport(accepted))
        self.assertEqual(destination, (_SERVER6, _ECHO_PORT))
        assert destination is not None
        local = self.inClient(localNetworks)
        self.assertFalse(isOwnListener(destination, [listener.getsockname()], local))
        self.relayOnce(client, accepted, destination)

    def test_ipv4ClientOfDualStackListener(self) -> None:
        """
        An IPv4 connection REDIRECTed to a dual-stack C{::} listener (an
        IPv6 socket with an IPv4-mapped peer) still has its IPv4 original
        destination.
        """
        listener = self.listen(socket.AF_INET6, "::", _PROXY_PORT, v6only=False)
        self.redirectOutput("iptables", _SERVER4)
        client = self.connect(self.client, (_SERVER4, _ECHO_PORT))
        accepted = self.accept(listener)
        self.assertEqual(accepted.getsockname()[:2], ("::ffff:127.0.0.1", _PROXY_PORT))
        destination = originalDestination(_SocketTransport(accepted))
        self.assertEqual(destination, (_SERVER4, _ECHO_PORT))
        assert destination is not None
        self.relayOnce(client, accepted, destination)

    def test_directConnectionIsOwnListener(self) -> None:
        """
        A connection made straight to the proxy's port (nothing redirected
        it) has the listener's own address as its destination, and the loop
        guard recognizes it, through any of the namespace's own addresses
        (which the host namespace does not have); a redirected connection
        to the same port on another host is not mistaken for one.
        """
        listener = self.listen(socket.AF_INET, "0.0.0.0", _PROXY_PORT)
        # Make conntrack track this namespace's connections.
        self.redirectOutput("iptables", _SERVER4)
        local = self.inClient(localNetworks)
        listening = [listener.getsockname()]
        for address in [_CLIENT4, "127.0.0.1", "127.0.0.2"]:
            self.connect(self.client, (address, _PROXY_PORT))
            accepted = self.accept(listener)
            destination = originalDestination(_SocketTransport(accepted))
            self.assertEqual(destination, (address, _PROXY_PORT))
            self.assertTrue(isOwnListener(destination, listening, local), address)
        self.assertFalse(isOwnListener((_SERVER4, _PROXY_PORT), listening, local))
        # Read from the host's namespace, the client side's address is not
        # local, which is why the namespace's own view must be used.
        self.assertFalse(isOwnListener((_CLIENT4, _PROXY_PORT), listening, localNetworks()))
