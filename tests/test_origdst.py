# -*- test-case-name: tests.test_origdst -*-
"""
Tests for L{txproxy.stream.origdst}, with fake sockets.  The real kernel path is
exercised by L{tests.test_transparent_netns}.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from typing import Any, Dict, List, Optional, Tuple

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.trial.unittest import SynchronousTestCase

from txproxy.stream import origdst
from txproxy.stream.origdst import (
    IP6T_SO_ORIGINAL_DST,
    SO_ORIGINAL_DST,
    SOL_IP,
    SOL_IPV6,
    decodeSockaddr,
    isOwnListener,
    localNetworks,
    originalDestination,
)


def sockaddrIn(host: str, port: int) -> bytes:
    """
    A C{struct sockaddr_in} as Linux returns it (family in host order).
    """
    return (
        struct.pack("=H", socket.AF_INET)
        + struct.pack("!H", port)
        + socket.inet_pton(socket.AF_INET, host)
        + b"\x00" * 8
    )


def sockaddrIn6(host: str, port: int, flowInfo: int = 0, scopeID: int = 0) -> bytes:
    """
    A C{struct sockaddr_in6} as Linux returns it.
    """
    return (
        struct.pack("=H", socket.AF_INET6)
        + struct.pack("!HI", port, flowInfo)
        + socket.inet_pton(socket.AF_INET6, host)
        + struct.pack("=I", scopeID)
    )


class FakeSocket:
    """
    A socket whose C{getsockopt} answers from a table: bytes, or an errno
    to raise.
    """

    def __init__(self, family: int, answers: Dict[Tuple[int, int], Any]) -> None:
        self.family = family
        self.answers = answers
        self.calls: List[Tuple[int, int, int]] = []

    def getsockopt(self, level: int, option: int, size: int = 0) -> Any:
        self.calls.append((level, option, size))
        answer = self.answers.get((level, option), errno.ENOPROTOOPT)
        if isinstance(answer, int):
            raise OSError(answer, "fake")
        return answer[:size]


class FakeTransport:
    def __init__(self, sock: Any) -> None:
        self.sock = sock

    def getHandle(self) -> Any:
        return self.sock


class DecodeTests(SynchronousTestCase):
    """
    L{decodeSockaddr} reads the kernel's structures.
    """

    def test_ipv4(self) -> None:
        """
        A C{sockaddr_in} gives the dotted quad and the port.
        """
        self.assertEqual(decodeSockaddr(sockaddrIn("198.18.0.2", 8080)), ("198.18.0.2", 8080))
        self.assertEqual(decodeSockaddr(sockaddrIn("255.255.255.255", 65535)),
                         ("255.255.255.255", 65535))

    def test_ipv6(self) -> None:
        """
        A C{sockaddr_in6} gives the compressed address and the port; flow
        info and scope are ignored.
        """
        self.assertEqual(
            decodeSockaddr(sockaddrIn6("2001:db8:0:0::1", 443, flowInfo=7, scopeID=3)),
            ("2001:db8::1", 443),
        )

    def test_unusable(self) -> None:
        """
        Short data, another family and an all-zero address give C{None}.
        """
        self.assertIsNone(decodeSockaddr(b""))
        self.assertIsNone(decodeSockaddr(sockaddrIn("1.2.3.4", 5)[:6]))
        self.assertIsNone(decodeSockaddr(sockaddrIn6("::1", 5)[:20]))
        self.assertIsNone(decodeSockaddr(struct.pack("=H", socket.AF_UNIX) + b"\x00" * 14))
        self.assertIsNone(decodeSockaddr(sockaddrIn("0.0.0.0", 0)))
        self.assertIsNone(decodeSockaddr(sockaddrIn6("::", 0)))


class OriginalDestinationTests(SynchronousTestCase):
    """
    L{originalDestination} asks the right option at the right level and
    returns C{None} whenever it cannot know.
    """

    def setUp(self) -> None:
        self.patch(origdst, "_LINUX", True)

    def test_ipv4(self) -> None:
        """
        An IPv4 socket is asked for C{SO_ORIGINAL_DST} at C{SOL_IP} with
        room for a C{sockaddr_in}.
        """
        sock = FakeSocket(socket.AF_INET, {(SOL_IP, SO_ORIGINAL_DST): sockaddrIn("10.1.2.3", 80)})
        self.assertEqual(originalDestination(FakeTransport(sock)), ("10.1.2.3", 80))
        self.assertEqual(sock.calls, [(0, 80, 16)])

    def test_ipv6(self) -> None:
        """
        An IPv6 socket is asked for C{IP6T_SO_ORIGINAL_DST} at C{SOL_IPV6}
        with room for a C{sockaddr_in6}.
        """
        sock = FakeSocket(
            socket.AF_INET6, {(SOL_IPV6, IP6T_SO_ORIGINAL_DST): sockaddrIn6("2001:db8::9", 443)}
        )
        self.assertEqual(originalDestination(FakeTransport(sock)), ("2001:db8::9", 443))
        self.assertEqual(sock.calls, [(41, 80, 28)])

    def test_ipv4ClientOnIPv6Socket(self) -> None:
        """
        On an IPv6 socket whose IPv6 question fails (an IPv4 client of a
        dual-stack listener), the IPv4 question is asked.
        """
        sock = FakeSocket(
            socket.AF_INET6,
            {
                (SOL_IPV6, IP6T_SO_ORIGINAL_DST): errno.ENOENT,
                (SOL_IP, SO_ORIGINAL_DST): sockaddrIn("192.0.2.4", 25),
            },
        )
        self.assertEqual(originalDestination(FakeTransport(sock)), ("192.0.2.4", 25))
        self.assertEqual(sock.calls, [(41, 80, 28), (0, 80, 16)])

    def test_errors(self) -> None:
        """
        Any C{getsockopt} error (no conntrack entry, option unknown, bad
        descriptor) gives C{None}.
        """
        for code in (errno.ENOENT, errno.ENOPROTOOPT, errno.EBADF, errno.EINVAL):
            for family in (socket.AF_INET, socket.AF_INET6):
                sock = FakeSocket(
                    family,
                    {(SOL_IP, SO_ORIGINAL_DST): code, (SOL_IPV6, IP6T_SO_ORIGINAL_DST): code},
                )
                self.assertIsNone(originalDestination(FakeTransport(sock)))

    def test_garbageAnswer(self) -> None:
        """
        An answer that is not a usable C{sockaddr} gives C{None}.
        """
        sock = FakeSocket(socket.AF_INET, {(SOL_IP, SO_ORIGINAL_DST): b"\x00" * 16})
        self.assertIsNone(originalDestination(FakeTransport(sock)))

    def test_otherFamilies(self) -> None:
        """
        A UNIX socket is not asked at all.
        """
        sock = FakeSocket(socket.AF_UNIX, {})
        self.assertIsNone(originalDestination(FakeTransport(sock)))
        self.assertEqual(sock.calls, [])

    def test_noSocket(self) -> None:
        """
        A transport without C{getHandle}, or whose C{getHandle} fails or
        returns something that is not a socket, gives C{None}.
        """

        class Broken:
            def getHandle(self) -> Any:
                raise RuntimeError("closed")

        self.assertIsNone(originalDestination(object()))
        self.assertIsNone(originalDestination(Broken()))
        self.assertIsNone(originalDestination(FakeTransport(object())))
        self.assertIsNone(originalDestination(FakeTransport(None)))

    def test_notLinux(self) -> None:
        """
        Off Linux the socket is not asked.
        """
        self.patch(origdst, "_LINUX", False)
        sock = FakeSocket(socket.AF_INET, {(SOL_IP, SO_ORIGINAL_DST): sockaddrIn("10.1.2.3", 80)})
        self.assertIsNone(originalDestination(FakeTransport(sock)))
        self.assertEqual(sock.calls, [])

    def test_realUnredirectedSocket(self) -> None:
        """
        A real, connected loopback socket that nothing redirected gives
        either C{None} (not tracked) or its own local address (tracked),
        and never raises.
        """
        listener = socket.socket()
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = socket.create_connection(listener.getsockname())
        self.addCleanup(client.close)
        accepted, _ = listener.accept()
        self.addCleanup(accepted.close)
        result = originalDestination(FakeTransport(accepted))
        self.assertIn(result, [None, accepted.getsockname()])


FIB_TRIE = """\
Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 127.255.255.255
           /32 link BROADCAST
     +-- 192.0.2.0/24 2 0 2
        +-- 192.0.2.0/30 2 0 2
           |-- 192.0.2.0
              /24 link UNICAST
           |-- 192.0.2.2
              /24 link UNICAST
              /32 host LOCAL
        |-- 192.0.2.255
           /32 link BROADCAST
     |-- 10.9.0.0
        /16 host LOCAL
Local:
  +-- 0.0.0.0/0 3 0 5
     |-- 198.51.100.7
        /32 host LOCAL
"""

IF_INET6 = """\
00000000000000000000000000000001 01 80 10 80       lo
fe8000000000000000fc00fffe000001 04 40 20 80     eth0
20010db8000000000000000000000002 04 40 00 82     eth0
garbage
"""


class LocalNetworksTests(SynchronousTestCase):
    """
    L{localNetworks} reads the kernel's lists of local addresses.
    """

    def test_parse(self) -> None:
        """
        Every C{host LOCAL} prefix of C{fib_trie} and every address of
        C{if_inet6} is local; broadcast and unicast routes are not.
        """
        self.patch(origdst, "_LINUX", True)
        files = {"/proc/net/fib_trie": FIB_TRIE, "/proc/thread-self/net/if_inet6": IF_INET6}
        networks = localNetworks(lambda path: files.get(path, ""))
        self.assertEqual(
            networks,
            frozenset(
                ipaddress.ip_network(n)
                for n in [
                    "127.0.0.0/8",
                    "127.0.0.1/32",
                    "192.0.2.2/32",
                    "10.9.0.0/16",
                    "198.51.100.7/32",
                    "::1/128",
                    "fe80::fc:ff:fe00:1/128",
                    "2001:db8::2/128",
                ]
            ),
        )

    def test_unreadable(self) -> None:
        """
        Without C{/proc} (or off Linux) only loopback is known.
        """
        self.patch(origdst, "_LINUX", True)
        expected = frozenset([ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1")])
        self.assertEqual(localNetworks(lambda path: ""), expected)
        self.patch(origdst, "_LINUX", False)
        self.assertEqual(localNetworks(lambda path: FIB_TRIE), expected)

    def test_thisHost(self) -> None:
        """
        On this host, the result includes loopback and the address a UDP
        socket would use to reach the outside world, when there is one.
        """
        networks = localNetworks()
        self.assertTrue(any(ipaddress.ip_address("127.0.0.1") in n for n in networks))
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(probe.close)
        try:
            probe.connect(("192.0.2.1", 9))
        except OSError:
            return
        own = ipaddress.ip_address(probe.getsockname()[0])
        if origdst._LINUX:
            self.assertTrue(any(own in n for n in networks if n.version == 4), own)


LOCAL = ["127.0.0.0/8", "10.0.0.1", "::1", "2001:db8::1", "::ffff:10.0.0.9"]


class IsOwnListenerTests(SynchronousTestCase):
    """
    L{isOwnListener} recognizes destinations that would reach the proxy
    itself.
    """

    def check(self, destination: Any, listeners: List[Any],
              local: Optional[List[Any]] = None) -> bool:
        return isOwnListener(destination, listeners, LOCAL if local is None else local)

    def test_exactAddress(self) -> None:
        """
        A listener's own address and port is its own; another port or
        another address is not.
        """
        listeners = [IPv4Address("TCP", "10.0.0.1", 3129)]
        self.assertTrue(self.check(("10.0.0.1", 3129), listeners))
        self.assertFalse(self.check(("10.0.0.1", 3130), listeners))
        self.assertFalse(self.check(("10.0.0.2", 3129), listeners))
        self.assertFalse(self.check(("127.0.0.1", 3129), listeners))

    def test_wildcardIPv4(self) -> None:
        """
        A C{0.0.0.0} listener is reached through any local IPv4 address
        (including all of C{127.0.0.0/8} and IPv4-mapped forms), not through
        a remote one or through IPv6.
        """
        listeners = [("0.0.0.0", 3129)]
        for local in ["10.0.0.1", "127.0.0.1", "127.5.6.7", "::ffff:10.0.0.1", "10.0.0.9"]:
            self.assertTrue(self.check((local, 3129), listeners), local)
        for remote in ["10.0.0.2", "198.51.100.1", "::1", "2001:db8::1"]:
            self.assertFalse(self.check((remote, 3129), listeners), remote)
        self.assertFalse(self.check(("10.0.0.1", 80), listeners))

    def test_wildcardIPv6(self) -> None:
        """
        A C{::} listener (dual-stack) is reached through any local IPv6 or
        IPv4 address.
        """
        listeners = [IPv6Address("TCP", "::", 3129)]
        for local in ["::1", "2001:db8::1", "10.0.0.1", "127.0.0.1", "::ffff:127.0.0.1"]:
            self.assertTrue(self.check((local, 3129), listeners), local)
        for remote in ["2001:db8::2", "10.0.0.2"]:
            self.assertFalse(self.check((remote, 3129), listeners), remote)

    def test_unspecifiedDestination(self) -> None:
        """
        A destination of C{0.0.0.0} or C{::} on a listening port is refused:
        the kernel delivers it locally.
        """
        listeners = [("127.0.0.1", 3129)]
        self.assertTrue(self.check(("0.0.0.0", 3129), listeners))
        self.assertTrue(self.check(("::", 3129), listeners))
        self.assertFalse(self.check(("0.0.0.0", 80), listeners))

    def test_mappedListener(self) -> None:
        """
        IPv4-mapped listener and destination addresses compare as IPv4, and
        zone indexes are ignored.
        """
        self.assertTrue(self.check(("10.0.0.1", 1), [("::ffff:10.0.0.1", 1)]))
        self.assertTrue(self.check(("::ffff:10.0.0.1", 1), [("10.0.0.1", 1)]))
        self.assertTrue(self.check(("fe80::1%eth0", 1), [("fe80::1", 1)]))
        self.assertTrue(self.check((b"10.0.0.1", 1), [IPv4Address("TCP", "10.0.0.1", 1)]))

    def test_severalListeners(self) -> None:
        """
        Any one of several listeners matching is enough; non-IP listeners
        (UNIX sockets) are skipped.
        """
        listeners = [UNIXAddress(b"/run/x"), ("10.0.0.1", 80), ("0.0.0.0", 3129)]
        self.assertTrue(self.check(("10.0.0.1", 80), listeners))
        self.assertTrue(self.check(("127.0.0.1", 3129), listeners))
        self.assertFalse(self.check(("127.0.0.1", 80), listeners))
        self.assertFalse(self.check(("127.0.0.1", 3129), [UNIXAddress(b"/run/x")]))
        self.assertFalse(self.check(("127.0.0.1", 3129), []))

    def test_notIPDestination(self) -> None:
        """
        A destination that is not an IP address is never our listener.
        """
        self.assertFalse(self.check(("localhost", 3129), [("0.0.0.0", 3129)]))
        self.assertFalse(self.check(None, [("0.0.0.0", 3129)]))
        self.assertFalse(self.check(("10.0.0.1",), [("0.0.0.0", 3129)]))

    def test_localAddressKinds(self) -> None:
        """
        Local addresses may be strings, C{ipaddress} addresses or networks.
        """
        listeners = [("0.0.0.0", 3129)]
        dest = ("192.0.2.5", 3129)
        self.assertTrue(self.check(dest, listeners, ["192.0.2.5"]))
        self.assertTrue(self.check(dest, listeners, [ipaddress.ip_address("192.0.2.5")]))
        self.assertTrue(self.check(dest, listeners, [ipaddress.ip_network("192.0.2.0/24")]))
        self.assertTrue(self.check(dest, listeners, ["192.0.2.0/28"]))
        self.assertFalse(self.check(dest, listeners, ["192.0.2.6"]))

    def test_defaultLocalAddresses(self) -> None:
        """
        Without C{localAddresses}, this host's own addresses are read:
        loopback reaches a wildcard listener, a documentation address does
        not.
        """
        self.assertTrue(isOwnListener(("127.0.0.1", 3129), [("0.0.0.0", 3129)]))
        self.assertFalse(isOwnListener(("203.0.113.250", 3129), [("0.0.0.0", 3129)]))
