# -*- test-case-name: tests.test_forward -*-
"""
Tests for L{txproxy.forward}: CONNECT tunnels and their policy, on fake
transports, a fake connector and a fake clock.
"""

from __future__ import annotations

import base64
import os
import tempfile
import weakref
from typing import Any, List

from twisted.internet import defer, error
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests.refcycles import assertFreed, collectorOff
from txproxy.accesslog import AccessRecord
from txproxy.forward import ForwardProxyProtocol
from txproxy.hooks import Refuse, Target, TunnelRequest
from txproxy.testing import FakeConnector, FakePasswordVerifier, connect, forwardFactory

CONNECT = b"CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\n"


class _Log:
    def __init__(self) -> None:
        self.records: List[AccessRecord] = []

    def log(self, record: AccessRecord) -> None:
        self.records.append(record)


def _status(value: bytes) -> int:
    return int(value.split(b" ", 2)[1])


class ForwardTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.connector = FakeConnector({"example.test": ["192.0.2.10", "192.0.2.11"]})
        self.log = _Log()

    def factory(self, **options: Any) -> Any:
        protocol = options.pop("protocol", None)
        f = forwardFactory(self.connector, self.clock, protocol=protocol, **options)
        f.accessLog = self.log
        return f

    def open(self, factory: Any = None, peer: Any = ("127.0.0.1", 40000)) -> Any:
        return connect(factory or self.factory(), peer)


class ConnectTunnelTests(ForwardTestCase):
    def test_tunnelOpensAndRelays(self) -> None:
        """
        A CONNECT to an allowed port dials the first resolved address,
        answers 200 once connected, and relays both ways.
        """
        proto, client = self.open()
        proto.dataReceived(CONNECT)
        self.assertEqual(client.value(), b"")
        attempt = self.connector.last
        self.assertEqual((attempt.host, attempt.port), ("192.0.2.10", 443))
        upstream = attempt.succeed()
        self.assertEqual(client.value(), b"HTTP/1.1 200 Connection established\r\n\r\n")
        self.assertFalse(client.paused)
        client.clear()
        proto.dataReceived(b"client hello")
        attempt.protocol.dataReceived(b"server hello")
        self.assertEqual(upstream.value(), b"client hello")
        self.assertEqual(client.value(), b"server hello")

    def test_bytesAfterHeadAreNotLost(self) -> None:
        """
        Bytes sent in the same segment as the CONNECT head, or while the
        upstream is being reached, are delivered upstream first.
        """
        proto, client = self.open()
        proto.dataReceived(CONNECT + b"early")
        proto.dataReceived(b"-later")
        upstream = self.connector.last.succeed()
        self.assertEqual(upstream.value(), b"early-later")

    def test_earlyBytesBoundedWhileConnecting(self) -> None:
        """
        A client that streams before its tunnel is open is buffered up to a
        limit, then paused until the relay takes over.
        """
        proto, client = self.open()
        proto.dataReceived(CONNECT)
        self.assertFalse(client.paused)
        proto.dataReceived(b"x" * (300 * 1024))
        self.assertTrue(client.paused)
        upstream = self.connector.last.succeed()
        self.assertFalse(client.paused)
        self.assertEqual(len(upstream.value()), 300 * 1024)

    def test_headSplitAtEveryByte(self) -> None:
        """
        The head may arrive one byte at a time.
        """
        proto, client = self.open()
        for i in range(len(CONNECT)):
            proto.dataReceived(CONNECT[i : i + 1])
        self.assertEqual(len(self.connector.attempts), 1)

    def test_halfCloseBeforeConnect(self) -> None:
        """
        A client that sends CONNECT, data and FIN at once still gets its
        tunnel; the FIN is forwarded after the data.
        """
        proto, client = self.open()
        proto.dataReceived(CONNECT + b"request")
        client.peerHalfClosed()
        upstream = self.connector.last.succeed()
        self.assertEqual(upstream.value(), b"request")
        self.assertTrue(upstream.writeClosed)
        self.connector.last.protocol.dataReceived(b"response")
        self.assertIn(b"response", client.value())

    def test_accessLogRecordsTunnel(self) -> None:
        """
        One access record per tunnel, with the bytes each way, the duration
        and the address dialled.
        """
        proto, client = self.open()
        proto.dataReceived(CONNECT)
        upstream = self.connector.last.succeed()
        proto.dataReceived(b"12345")
        self.connector.last.protocol.dataReceived(b"abc")
        self.clock.advance(2)
        client.peerClosed()
        (record,) = self.log.records
        self.assertEqual((record.status, record.method, record.target), (200, "CONNECT", "example.test:443"))
        self.assertEqual((record.bytesUp, record.bytesDown), (5, 3))
        self.assertEqual(record.duration, 2)
        self.assertEqual(record.upstream, "192.0.2.10:443")
        self.assertEqual(record.client, "127.0.0.1")

    def test_clientGoneWhileConnectingCancels(self) -> None:
        """
        If the client leaves while the upstream is being reached, the
        connection attempt is cancelled (no leaked upstream connection).
        """
        proto, client = self.open()
        proto.dataReceived(CONNECT)
        client.peerClosed()
        self.assertTrue(self.connector.last.cancelled)

    def test_ipv6Target(self) -> None:
        """
        A bracketed IPv6 authority is dialled as an IPv6 literal.
        """
        proto, client = self.open()
        proto.dataReceived(b"CONNECT [2001:db8::1]:443 HTTP/1.1\r\nHost: [2001:db8::1]:443\r\n\r\n")
        self.assertEqual(self.connector.last.host, "2001:db8::1")


class ConnectErrorTests(ForwardTestCase):
    def assertRefused(self, status: int, data: bytes = CONNECT, factory: Any = None, peer: Any = ("127.0.0.1", 4)) -> Any:
        proto, client = self.open(factory, peer)
        proto.dataReceived(data)
        value = client.value()
        self.assertTrue(value.startswith(b"HTTP/1.1 "), value)
        self.assertEqual(_status(value), status, value)
        self.assertIn(b"Connection: close", value)
        self.assertNotIn(b"Traceback", value)
        return proto, client

    def test_portNotAllowed(self) -> None:
        """
        CONNECT to a port outside --connect-ports is 403, before any dial.
        """
        self.assertRefused(403, b"CONNECT example.test:22 HTTP/1.1\r\nHost: example.test:22\r\n\r\n")
        self.assertEqual(self.connector.attempts, [])

    def test_anyPortAllowed(self) -> None:
        """
        With --connect-ports '*', any port may be reached.
        """
        proto, client = self.open(self.factory(connect_ports="*"))
        proto.dataReceived(b"CONNECT example.test:22 HTTP/1.1\r\nHost: example.test:22\r\n\r\n")
        self.assertEqual(self.connector.last.port, 22)

    def test_denyDestCheckedOnResolvedAddress(self) -> None:
        """
        --deny-dest is checked on the resolved addresses: a name that
        resolves into a denied range is refused with 403 and never dialled.
        """
        self.connector.hosts["rebind.test"] = ["127.0.0.1"]
        self.assertRefused(
            403,
            b"CONNECT rebind.test:443 HTTP/1.1\r\nHost: rebind.test:443\r\n\r\n",
            self.factory(deny_dest="127.0.0.0/8"),
        )
        self.assertEqual(self.connector.attempts, [])

    def test_unspecifiedAddressCountsAsLoopback(self) -> None:
        """
        With loopback in --deny-dest, the unspecified addresses (0.0.0.0,
        ::, ::ffff:0.0.0.0, and names such as C{0} that resolve to them)
        are refused with 403 and never dialled: a connection to them
        reaches this host.
        """
        self.connector.hosts["0"] = ["0.0.0.0"]
        self.connector.hosts["zero.test"] = ["::"]
        for target in [b"0.0.0.0:8080", b"[::]:8080", b"[::ffff:0.0.0.0]:8080", b"0:8080", b"zero.test:8080"]:
            self.assertRefused(
                403,
                b"CONNECT " + target + b" HTTP/1.1\r\nHost: " + target + b"\r\n\r\n",
                self.factory(deny_dest=["127.0.0.0/8", "::1"], connect_ports="*"),
            )
        self.assertEqual(self.connector.attempts, [])

    def test_unspecifiedAddressAllowedWithoutLoopbackDenied(self) -> None:
        """
        When --deny-dest names no loopback address, the unspecified address
        is not refused by it.
        """
        proto, client = self.open(self.factory(deny_dest="10.0.0.0/8", connect_ports="*"))
        proto.dataReceived(b"CONNECT 0.0.0.0:8080 HTTP/1.1\r\nHost: 0.0.0.0:8080\r\n\r\n")
        self.assertEqual(self.connector.last.host, "0.0.0.0")

    def test_denyDestSkipsDeniedAddresses(self) -> None:
        """
        Denied addresses are skipped; an allowed one of the same name is
        dialled.
        """
        proto, client = self.open(self.factory(deny_dest="192.0.2.10/32"))
        proto.dataReceived(CONNECT)
        self.assertEqual(self.connector.last.host, "192.0.2.11")

    def test_unresolvable(self) -> None:
        """
        A name that does not resolve is 502.
        """
        self.assertRefused(502, b"CONNECT nowhere.test:443 HTTP/1.1\r\nHost: nowhere.test:443\r\n\r\n")

    def test_refused(self) -> None:
        """
        When every address refuses, the answer is 502; the next address is
        tried first.
        """
        proto, client = self.open()
        proto.dataReceived(CONNECT)
        self.connector.last.fail()
        self.assertEqual(self.connector.last.host, "192.0.2.11")
        self.connector.last.fail()
        self.assertEqual(_status(client.value()), 502)

    def test_connectTimeout(self) -> None:
        """
        No answer within --connect-timeout is 504, and the attempt is
        cancelled.
        """
        proto, client = self.open(self.factory(connect_timeout="5"))
        proto.dataReceived(CONNECT)
        self.clock.advance(4.9)
        self.assertEqual(client.value(), b"")
        self.clock.advance(0.2)
        self.assertEqual(_status(client.value()), 504)
        self.assertTrue(self.connector.last.cancelled)

    def test_malformedConnect(self) -> None:
        """
        Malformed CONNECT lines and authorities are 400.
        """
        for bad in [
            b"CONNECT example.test HTTP/1.1\r\nHost: x\r\n\r\n",
            b"CONNECT example.test:99999 HTTP/1.1\r\nHost: x\r\n\r\n",
            b"CONNECT :443 HTTP/1.1\r\nHost: x\r\n\r\n",
            b"CONNECT example.test:443\r\n\r\n",
            b"CONNECT  example.test:443 HTTP/1.1\r\n\r\n",
            b"garbage\r\n\r\n",
        ]:
            self.assertRefused(400, bad)

    def test_headTooLarge(self) -> None:
        """
        A head over --max-head-size is 431, even before it is complete.
        """
        big = b"CONNECT example.test:443 HTTP/1.1\r\nX: " + b"a" * 70000
        self.assertRefused(431, big)
        proto, client = self.open(self.factory(max_head_size="1024"))
        proto.dataReceived(b"CONNECT example.test:443 HTTP/1.1\r\nX: " + b"a" * 1100 + b"\r\n\r\n")
        self.assertEqual(_status(client.value()), 431)

    def _connectWithFields(self, factory: Any, count: int) -> Any:
        fields = b"Host: example.test:443\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(count - 1))
        proto, client = self.open(factory)
        proto.dataReceived(b"CONNECT example.test:443 HTTP/1.1\r\n" + fields + b"\r\n")
        return client

    def test_maxHeadersBoundary(self) -> None:
        """
        --max-headers N: a head with N header fields is served, one with
        N + 1 gets 431 and the connection is closed.
        """
        client = self._connectWithFields(self.factory(max_headers="5"), 5)
        self.assertEqual(client.value(), b"")
        self.assertEqual(self.connector.last.host, "192.0.2.10")
        client = self._connectWithFields(self.factory(max_headers="5"), 6)
        self.assertEqual(_status(client.value()), 431)
        self.assertTrue(client.writeClosed or client.closed)

    def test_maxHeadersDefault(self) -> None:
        """
        Without --max-headers the limit is 256 fields.
        """
        attempts = len(self.connector.attempts)
        client = self._connectWithFields(self.factory(), 256)
        self.assertEqual(client.value(), b"")
        self.assertEqual(len(self.connector.attempts), attempts + 1)
        client = self._connectWithFields(self.factory(), 257)
        self.assertEqual(_status(client.value()), 431)

    def test_headTimeout(self) -> None:
        """
        A head not complete within --header-timeout gets 408 and the
        connection is then closed.
        """
        proto, client = self.open(self.factory(header_timeout="3"))
        proto.dataReceived(b"CONNECT example.test:443 HTTP/1.1\r\n")
        self.clock.advance(3)
        self.assertEqual(_status(client.value()), 408)
        self.assertTrue(client.writeClosed)
        self.clock.advance(5)
        self.assertTrue(client.closed)

    def test_unknownTransferCodingIs501(self) -> None:
        """
        A request with a transfer coding the proxy cannot frame is 501.
        """
        self.assertRefused(501, b"POST http://example.test/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")

    def test_errorClosesAfterLinger(self) -> None:
        """
        After an error response the proxy half-closes, discards what the
        client still sends, and closes when the client does.
        """
        proto, client = self.assertRefused(403, b"CONNECT example.test:22 HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(client.writeClosed)
        proto.dataReceived(b"more junk")
        client.peerHalfClosed()
        self.assertTrue(client.closed)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_clientACL(self) -> None:
        """
        --deny wins inside --allow; with any --allow, unlisted clients are
        denied; denied clients get 403.
        """
        factory = self.factory(allow="10.0.0.0/8", deny="10.9.0.0/16")
        self.assertRefused(403, factory=factory, peer=("10.9.1.1", 5))
        self.assertRefused(403, factory=factory, peer=("192.168.1.1", 5))
        proto, client = self.open(factory, ("10.1.1.1", 5))
        proto.dataReceived(CONNECT)
        self.assertEqual(len(self.connector.attempts), 1)

    def test_errorIsLogged(self) -> None:
        """
        A refused request is logged with its status.
        """
        self.assertRefused(403, b"CONNECT example.test:22 HTTP/1.1\r\nHost: x\r\n\r\n")
        (record,) = self.log.records
        self.assertEqual(record.status, 403)


LOCAL_PEERS = [
    "127.0.0.1", "127.9.9.9", "::1", "10.1.2.3", "172.16.0.1", "172.31.255.254", "192.168.1.1",
    "100.64.0.1", "100.127.255.254", "169.254.1.1", "fc00::1", "fd12:3456::1", "fe80::1",
    "::ffff:10.0.0.1", "::ffff:127.0.0.1",
]
PUBLIC_PEERS = [
    "203.0.113.7", "8.8.8.8", "172.32.0.1", "100.128.0.1", "192.169.0.1", "2001:db8::1", "::ffff:8.8.8.8",
]


class LocalnetDefaultTests(ForwardTestCase):
    """
    A forward listener given no --allow serves only loopback and private
    networks (it is not an open proxy); --allow lifts that, --deny alone
    does not.
    """

    def served(self, factory: Any, peer: str) -> bool:
        attempts = len(self.connector.attempts)
        proto, client = self.open(factory, (peer, 40000))
        proto.dataReceived(CONNECT)
        if len(self.connector.attempts) > attempts:
            return True
        self.assertEqual(_status(client.value()), 403, peer)
        return False

    def test_verdictsRememberedPerConfiguration(self) -> None:
        """
        A client's ACL verdict is worked out once per listener
        configuration (a keep-alive client does not pay an address parse
        per request), and again after a reload gives the factory a new
        configuration; the memory of verdicts is bounded.
        """
        import attr

        from txproxy.config import parseCIDRs

        factory = self.factory()
        self.assertTrue(factory.clientAllowed("10.1.2.3"))
        self.assertEqual(factory._aclCache, {"10.1.2.3": True})
        factory.listener = attr.evolve(factory.listener, deny=parseCIDRs(["10.0.0.0/8"]))
        self.assertFalse(factory.clientAllowed("10.1.2.3"))
        self.assertTrue(self.served(factory, "192.168.1.1"))
        self.assertFalse(self.served(factory, "10.1.2.3"))
        self.patch(type(factory), "_ACL_CACHE_SIZE", 3)
        for n in range(10):
            factory.clientAllowed(f"192.168.0.{n}")
            self.assertLessEqual(len(factory._aclCache), 3)

    def test_defaultServesOnlyLocalnet(self) -> None:
        """
        Without --allow, loopback, RFC 1918, shared (100.64/10), link-local
        and IPv6 unique-local/link-local clients (also IPv4-mapped) are
        served; every other client gets 403, for CONNECT and absolute-URI
        requests alike.
        """
        factory = self.factory()
        for peer in LOCAL_PEERS:
            self.assertTrue(self.served(factory, peer), peer)
        for peer in PUBLIC_PEERS:
            self.assertFalse(self.served(factory, peer), peer)
        proto, client = self.open(factory, ("203.0.113.7", 1))
        proto.dataReceived(b"GET http://example.test/ HTTP/1.1\r\nHost: example.test\r\n\r\n")
        self.assertEqual(_status(client.value()), 403)
        self.assertEqual(self.log.records[-1].reason, "client not allowed")

    def test_denyAloneKeepsTheDefault(self) -> None:
        """
        A --deny without --allow narrows the local default; it does not
        open the proxy to everyone else.
        """
        factory = self.factory(deny="10.0.0.0/8")
        self.assertFalse(self.served(factory, "203.0.113.7"))
        self.assertFalse(self.served(factory, "10.1.2.3"))
        self.assertTrue(self.served(factory, "192.168.1.1"))

    def test_allowOpensIt(self) -> None:
        """
        --allow 0.0.0.0/0 serves every IPv4 client (--allow ::/0 every IPv6
        one); any --allow replaces the default.
        """
        factory = self.factory(allow=["0.0.0.0/0", "::/0"])
        for peer in PUBLIC_PEERS + LOCAL_PEERS:
            self.assertTrue(self.served(factory, peer), peer)
        factory = self.factory(allow="203.0.113.0/24")
        self.assertTrue(self.served(factory, "203.0.113.7"))
        self.assertFalse(self.served(factory, "10.1.2.3"))

    def test_unixSocketClientsServed(self) -> None:
        """
        A client on a UNIX socket (named by a path, not an address) is on
        this host, and is served by default.
        """
        factory = self.factory()
        self.assertTrue(factory.clientAllowed("/run/txproxy.sock"))
        self.assertTrue(factory.clientAllowed("unix"))

    def test_startupLineOnce(self) -> None:
        """
        Starting a forward listener with no --allow logs one line saying
        so, once however many ports it listens on; with --allow, nothing.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        factory = self.factory()
        factory.doStart()
        factory.doStart()
        self.addCleanup(factory.doStop)
        self.addCleanup(factory.doStop)
        lines = [e for e in events if "no --allow given" in e.get("log_format", "")]
        self.assertEqual(len(lines), 1)
        self.assertEqual(lines[0]["name"], factory.listener.name)
        open_ = self.factory(allow="0.0.0.0/0")
        open_.doStart()
        self.addCleanup(open_.doStop)
        self.assertEqual(len([e for e in events if "no --allow given" in e.get("log_format", "")]), 1)


class AuthTests(ForwardTestCase):
    def setUp(self) -> None:
        super().setUp()
        fd, self.path = tempfile.mkstemp()
        # "secret" as {SHA}, and "pw" as bcrypt (cost 4 keeps the test fast).
        import bcrypt

        hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode().replace("$2b$", "$2y$")
        os.write(fd, f"alice:{{SHA}}5en6G6MezRroT3XKqkdPOmY/BfQ=\nbob:{hashed}\n".encode())
        os.close(fd)
        self.addCleanup(os.remove, self.path)
        # bcrypt is checked in a thread pool; here, by a fake the test fires.
        self.verifier = FakePasswordVerifier()

    def authFactory(self, **options: Any) -> Any:
        factory = self.factory(auth=self.path, **options)
        factory.htpasswd.verifier = self.verifier
        return factory

    def connectWith(self, creds: bytes = b"", factory: Any = None, request: bytes = CONNECT) -> Any:
        proto, client = self.open(factory or self.authFactory())
        header = b"Proxy-Authorization: Basic " + base64.b64encode(creds) + b"\r\n" if creds else b""
        head, _, _ = request.partition(b"\r\n\r\n")
        proto.dataReceived(head + b"\r\n" + header + b"\r\n")
        return proto, client

    def limited(self, **options: Any) -> Any:
        from txproxy.limits.memory import MemoryLimiter
        from txproxy.limits.service import ListenerLimits

        factory = self.authFactory(**options)
        factory.limits = ListenerLimits(MemoryLimiter(self.clock), factory.listener, "test")
        return factory

    def test_missingCredentials(self) -> None:
        """
        Without credentials: 407 with a Basic challenge.
        """
        proto, client = self.connectWith()
        self.assertEqual(_status(client.value()), 407)
        self.assertIn(b'Proxy-Authenticate: Basic realm="txproxy"', client.value())

    def test_wrongCredentials(self) -> None:
        """
        Wrong password or unknown user: 407.
        """
        for creds in [b"alice:wrong", b"eve:secret", b"alice", b"bob:nope"]:
            proto, client = self.connectWith(creds)
            self.verifier.fireAll()
            self.assertEqual(_status(client.value()), 407, creds)

    def test_goodCredentials(self) -> None:
        """
        SHA and bcrypt users are let through and logged by name.
        """
        for creds in [b"alice:secret", b"bob:pw"]:
            proto, client = self.connectWith(creds)
            self.verifier.fireAll()
            self.assertEqual(client.value(), b"", creds)
            self.assertEqual(proto.client.user, creds.split(b":")[0].decode())
            self.assertEqual(len(self.connector.attempts), 1 + (creds == b"bob:pw"))

    def test_bcryptCheckedOffTheReactorThread(self) -> None:
        """
        A bcrypt user's CONNECT waits for the verifier (the thread pool):
        nothing is decided or dialled until it answers.
        """
        proto, client = self.connectWith(b"bob:pw")
        self.assertEqual(len(self.verifier.calls), 1)
        self.assertEqual(self.verifier.pending, 1)
        self.assertEqual(client.value(), b"")
        self.assertEqual(self.connector.attempts, [])
        self.verifier.fire()
        self.assertEqual(len(self.connector.attempts), 1)
        self.assertEqual(proto.client.user, "bob")

    def test_otherRequestsServedWhileChecking(self) -> None:
        """
        While one client's password is being checked, other clients are
        served: a CONNECT and an absolute-URI request from others go
        through, and the waiting one is answered once the check ends.
        """
        factory = self.authFactory()
        waiting, waitingT = self.connectWith(b"bob:pw", factory)
        other, otherT = self.connectWith(b"alice:secret", factory)
        self.assertEqual(len(self.connector.attempts), 1)
        self.connector.last.succeed()
        self.assertIn(b"200 Connection established", otherT.value())
        third, thirdT = self.connectWith(
            b"alice:secret", factory, b"GET http://example.test/ HTTP/1.1\r\nHost: example.test\r\n\r\n")
        self.assertEqual(len(self.connector.attempts), 2)
        self.assertEqual(waitingT.value(), b"")
        self.assertEqual(self.verifier.pending, 1)
        self.verifier.fire()
        self.assertEqual(len(self.connector.attempts), 3)

    def test_keepAliveClientChecksOnce(self) -> None:
        """
        A keep-alive client sending the same bcrypt credentials with each
        request pays for one check.
        """
        proto, client = self.connectWith(
            b"bob:pw", request=b"GET http://example.test/ HTTP/1.1\r\nHost: example.test\r\n\r\n")
        self.verifier.fire()
        upstream = self.connector.last.succeed()
        upstream.protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        auth = b"Proxy-Authorization: Basic " + base64.b64encode(b"bob:pw") + b"\r\n"
        proto.dataReceived(b"GET http://example.test/ HTTP/1.1\r\nHost: example.test\r\n" + auth + b"\r\n")
        self.assertEqual(len(self.verifier.calls), 1)
        upstream.protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(client.value().count(b"HTTP/1.1 200 OK"), 2)

    def test_unknownUserPaysDummyVerification(self) -> None:
        """
        An unknown user's CONNECT costs a bcrypt check too (against a dummy
        hash of the file's cost), then 407: answered no sooner than a known
        user's wrong password.
        """
        proto, client = self.connectWith(b"eve:pw")
        self.assertEqual(client.value(), b"")
        self.assertEqual(len(self.verifier.calls), 1)
        self.assertTrue(self.verifier.calls[0][1].startswith(b"$2b$04$"))
        self.verifier.fire()
        self.assertEqual(_status(client.value()), 407)

    def test_bruteForceGets429(self) -> None:
        """
        Each wrong password costs a token of the client's --rate bucket:
        guessing ends in 429 with Retry-After, for bcrypt and SHA users, and
        the right password is then refused too until the bucket refills.
        Missing credentials (a browser's first try) cost nothing.
        """
        factory = self.limited(rate="1/m", burst="3")
        proto, client = self.connectWith(b"", factory)
        self.assertEqual(_status(client.value()), 407)
        for creds in [b"bob:guess1", b"alice:guess2", b"eve:guess3"]:
            proto, client = self.connectWith(creds, factory)
            self.verifier.fireAll()
            self.assertEqual(_status(client.value()), 407, creds)
        for creds in [b"bob:guess4", b"alice:guess5", b"alice:secret"]:
            proto, client = self.connectWith(creds, factory)
            self.verifier.fireAll()
            self.assertEqual(_status(client.value()), 429, creds)
            self.assertIn(b"Retry-After: ", client.value())
        self.assertEqual(self.connector.attempts, [])
        # Another client is unaffected.
        proto, client = self.open(factory, ("10.0.0.9", 1))
        proto.dataReceived(CONNECT[:-2] + b"Proxy-Authorization: Basic "
                           + base64.b64encode(b"alice:secret") + b"\r\n\r\n")
        self.assertEqual(client.value(), b"")
        self.assertEqual(len(self.connector.attempts), 1)

    def test_guessingOverTheLimitCostsNoCheck(self) -> None:
        """
        Once a wrong password found the client's bucket empty, its requests
        with credentials get 429 without a bcrypt check until the bucket
        has a token again; then the right password works.
        """
        factory = self.limited(rate="1/m", burst="1")
        proto, client = self.connectWith(b"bob:guess1", factory)
        self.verifier.fireAll()
        self.assertEqual(_status(client.value()), 407)
        proto, client = self.connectWith(b"bob:guess2", factory)
        self.verifier.fireAll()
        self.assertEqual(_status(client.value()), 429)
        checks = len(self.verifier.calls)
        for creds in [b"bob:guess3", b"bob:pw", b"eve:x"]:
            proto, client = self.connectWith(creds, factory)
            self.assertEqual(_status(client.value()), 429, creds)
            self.assertIn(b"Retry-After: ", client.value())
        self.assertEqual(len(self.verifier.calls), checks)
        self.clock.advance(60)
        proto, client = self.connectWith(b"bob:pw", factory)
        self.verifier.fireAll()
        self.assertEqual(client.value(), b"")
        self.assertEqual(len(self.connector.attempts), 1)

    def test_failedCheckAfterLoginChargesTheAddress(self) -> None:
        """
        With --rate-key user, a wrong password costs the client address's
        token, not the bucket of a user this connection authenticated as
        before.
        """
        factory = self.limited(rate="1/m", burst="1", rate_key="user")
        get = b"GET http://example.test/ HTTP/1.1\r\nHost: example.test\r\n"
        proto, client = self.connectWith(b"alice:secret", factory, get + b"\r\n")
        self.connector.last.succeed().protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        wrong = b"Proxy-Authorization: Basic " + base64.b64encode(b"alice:wrong") + b"\r\n"
        proto.dataReceived(get + wrong + b"\r\n")
        self.assertIn(b"HTTP/1.1 407 ", client.value())
        self.assertIsNone(proto.client.user)
        proto, client = self.connectWith(b"alice:wrong", factory)
        self.assertEqual(_status(client.value()), 429)

    def test_waitingCheckBoundedByConnectTimer(self) -> None:
        """
        A request whose password check has not answered within
        --connect-timeout gets 504, and the late answer changes nothing.
        """
        factory = self.authFactory(connect_timeout="5")
        proto, client = self.connectWith(
            b"bob:pw", factory, b"GET http://example.test/ HTTP/1.1\r\nHost: example.test\r\n\r\n")
        self.clock.advance(5)
        self.assertEqual(_status(client.value()), 504)
        self.verifier.fire()
        self.assertEqual(self.connector.attempts, [])

    def test_clientLeavesWhileChecking(self) -> None:
        """
        A client that closes while its CONNECT's password is being checked
        leaves nothing behind: the late answer dials nothing.
        """
        proto, client = self.connectWith(b"bob:pw")
        client.loseConnection()
        self.verifier.fire()
        self.assertEqual(self.connector.attempts, [])

    def test_tooManyChecksWaitingIs503(self) -> None:
        """
        With too many password checks already waiting, a request needing
        another gets 503 rather than a longer queue.
        """
        factory = self.authFactory()
        factory.htpasswd.maxPending = 1
        self.connectWith(b"bob:one", factory)
        proto, client = self.connectWith(b"bob:two", factory)
        self.assertEqual(_status(client.value()), 503)
        self.assertEqual(len(self.verifier.calls), 1)


class HookTests(ForwardTestCase):
    def test_allowTunnelFalseIs403(self) -> None:
        """
        A subclass returning False from allowTunnel refuses with 403.
        """

        class Deny(ForwardProxyProtocol):
            def allowTunnel(self, request: TunnelRequest) -> bool:
                return request.target.host != "example.test"

        proto, client = self.open(self.factory(protocol=Deny))
        proto.dataReceived(CONNECT)
        self.assertEqual(_status(client.value()), 403)

    def test_allowTunnelMayRefuseWithStatusAsynchronously(self) -> None:
        """
        A hook may return a Deferred, and may fail with Refuse for another
        status.
        """
        pending: List[defer.Deferred] = []

        class Later(ForwardProxyProtocol):
            def allowTunnel(self, request: TunnelRequest) -> Any:
                d: defer.Deferred = defer.Deferred()
                pending.append(d)
                return d

        proto, client = self.open(self.factory(protocol=Later))
        proto.dataReceived(CONNECT)
        self.assertEqual(client.value(), b"")
        pending[0].errback(Refuse(451, "unavailable for legal reasons"))
        self.assertEqual(_status(client.value()), 451)

    def test_chooseUpstreamRewritesDestination(self) -> None:
        """
        chooseUpstream can send the tunnel elsewhere; --deny-dest still
        applies to the new destination.
        """

        class Rewrite(ForwardProxyProtocol):
            def chooseUpstream(self, request: TunnelRequest) -> Target:
                return Target("198.51.100.7", 8443)

        proto, client = self.open(self.factory(protocol=Rewrite))
        proto.dataReceived(CONNECT)
        self.assertEqual((self.connector.last.host, self.connector.last.port), ("198.51.100.7", 8443))
        proto, client = self.open(self.factory(protocol=Rewrite, deny_dest="198.51.100.0/24"))
        proto.dataReceived(CONNECT)
        self.assertEqual(_status(client.value()), 403)

    def test_dataHooksObserveAndRewrite(self) -> None:
        """
        clientData and upstreamData see every relayed chunk and may rewrite
        it; relayOpened and exchangeEnded run once each.
        """
        events: List[Any] = []

        class Observe(ForwardProxyProtocol):
            def relayOpened(self, request: TunnelRequest, upstreamAddress: str) -> None:
                events.append(("open", upstreamAddress))

            def clientData(self, data: bytes) -> bytes:
                return data.replace(b"secret", b"******")

            def upstreamData(self, data: bytes) -> bytes:
                events.append(("down", data))
                return data

            def exchangeEnded(self, record: AccessRecord) -> None:
                events.append(("closed", record.bytesUp))

        proto, client = self.open(self.factory(protocol=Observe))
        proto.dataReceived(CONNECT)
        upstream = self.connector.last.succeed()
        proto.dataReceived(b"my secret")
        self.connector.last.protocol.dataReceived(b"ok")
        client.peerClosed()
        self.assertEqual(upstream.value(), b"my ******")
        self.assertEqual(events, [("open", "192.0.2.10:443"), ("down", b"ok"), ("closed", 9)])

    def test_upstreamFailedHook(self) -> None:
        """
        upstreamFailed is told why the upstream could not be reached.
        """
        failures: List[Any] = []

        class Watch(ForwardProxyProtocol):
            def upstreamFailed(self, request: TunnelRequest, reason: Any) -> None:
                failures.append(reason.type)

        proto, client = self.open(self.factory(protocol=Watch))
        proto.dataReceived(CONNECT)
        self.connector.last.fail(error.ConnectionRefusedError())
        self.connector.last.fail(error.ConnectionRefusedError())
        self.assertEqual(failures, [error.ConnectionRefusedError])

    def test_closedTunnelFreedWithoutCollector(self) -> None:
        """
        A tunnel whose dial went to the second address after the first
        refused is freed by reference counting once closed: the dial (one
        attempt per address) leaves no reference cycle holding the client's
        protocol.
        """
        with collectorOff():
            proto, client = self.open()
            proto.dataReceived(CONNECT)
            self.connector.last.fail(error.ConnectionRefusedError())
            self.assertEqual(self.connector.last.host, "192.0.2.11")
            upstream = self.connector.last.succeed()
            self.assertIn(b" 200 ", client.value())
            client.peerClosed()
            upstream.peerClosed()
            self.assertEqual(len(self.log.records), 1)
            # (As Twisted's TCP transports do once the connection is lost.)
            client.protocol = upstream.protocol = None
            del upstream
            ref = weakref.ref(proto)
            del proto, client
            assertFreed(self, ref, "the closed tunnel's protocol")


class DrainTests(ForwardTestCase):
    def test_idleConnectionClosesOnDrain(self) -> None:
        """
        A connection with no request in progress closes at once on drain; a
        tunnel does not.
        """
        factory = self.factory()
        idle, idleT = self.open(factory)
        busy, busyT = self.open(factory)
        busy.dataReceived(CONNECT)
        self.connector.last.succeed()
        for p in list(factory.protocols):
            p.drain()
        self.assertTrue(idleT.closed)
        self.assertFalse(busyT.closed)
        self.assertEqual(factory.protocols, {busy})


class LimitTests(ForwardTestCase):
    def limited(self, **options: Any) -> Any:
        from txproxy.limits.service import ListenerLimits, MemoryLimiter

        factory = self.factory(**options)
        factory.limits = ListenerLimits(MemoryLimiter(self.clock), factory.listener, "test")
        return factory

    def test_rateLimitIs429WithRetryAfter(self) -> None:
        """
        Over --rate/--burst, a CONNECT (one request) gets 429 with
        Retry-After; after the refill it is allowed again.
        """
        factory = self.limited(rate="1/s", burst="2")
        for _ in range(2):
            proto, client = self.open(factory)
            proto.dataReceived(CONNECT)
            self.assertEqual(client.value(), b"")
        proto, client = self.open(factory)
        proto.dataReceived(CONNECT)
        self.assertEqual(_status(client.value()), 429)
        self.assertIn(b"Retry-After: 1\r\n", client.value())
        self.clock.advance(1)
        proto, client = self.open(factory)
        proto.dataReceived(CONNECT)
        self.assertEqual(client.value(), b"")

    def test_rateLimitCountsEveryRequest(self) -> None:
        """
        In HTTP forwarding each request on a keep-alive connection costs a
        token.
        """
        factory = self.limited(rate="1/m", burst="1")
        proto, client = self.open(factory)
        proto.dataReceived(b"GET http://example.test/ HTTP/1.1\r\nHost: example.test\r\n\r\n")
        self.connector.last.succeed()
        self.connector.last.protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        proto.dataReceived(b"GET http://example.test/ HTTP/1.1\r\nHost: example.test\r\n\r\n")
        self.assertIn(b"HTTP/1.1 429 ", client.value())
        self.assertIn(b"Retry-After: 60\r\n", client.value())

    def test_maxConnsIs503(self) -> None:
        """
        Over --max-conns the next connection's request gets 503; closing one
        frees a slot.
        """
        factory = self.limited(max_conns="1")
        first, firstT = self.open(factory)
        second, secondT = self.open(factory)
        second.dataReceived(CONNECT)
        self.assertEqual(_status(secondT.value()), 503)
        firstT.peerClosed()
        third, thirdT = self.open(factory)
        third.dataReceived(CONNECT)
        self.assertEqual(thirdT.value(), b"")

    def test_maxConnsPerClientIs429(self) -> None:
        """
        Over --max-conns-per-client: 429 for that client, others unaffected.
        """
        factory = self.limited(max_conns_per_client="1")
        self.open(factory, ("10.0.0.1", 1))
        proto, client = self.open(factory, ("10.0.0.1", 2))
        proto.dataReceived(CONNECT)
        self.assertEqual(_status(client.value()), 429)
        proto, client = self.open(factory, ("10.0.0.2", 1))
        proto.dataReceived(CONNECT)
        self.assertEqual(client.value(), b"")


class HookFailureTests(ForwardTestCase):
    def test_buggyHookIs500(self) -> None:
        """
        An exception (not Refuse) from a hook is a 500, logged, and is not
        reported as an upstream failure.
        """
        failures: List[Any] = []

        class Buggy(ForwardProxyProtocol):
            def allowTunnel(self, request: TunnelRequest) -> bool:
                raise ZeroDivisionError("oops")

            def upstreamFailed(self, request: Any, reason: Any) -> None:
                failures.append(reason)

        proto, client = self.open(self.factory(protocol=Buggy))
        proto.dataReceived(CONNECT)
        self.assertEqual(_status(client.value()), 500)
        self.assertEqual(failures, [])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_relayOpenedFailureClosesTunnel(self) -> None:
        """
        An exception from relayOpened (after the 200 went out) closes both
        sides instead of writing an error into the tunnel.
        """

        class Buggy(ForwardProxyProtocol):
            def relayOpened(self, request: TunnelRequest, upstreamAddress: str) -> None:
                raise ValueError("oops")

        proto, client = self.open(self.factory(protocol=Buggy))
        proto.dataReceived(CONNECT)
        upstream = self.connector.last.succeed()
        self.assertEqual(client.value(), b"HTTP/1.1 200 Connection established\r\n\r\n")
        self.assertTrue(client.aborted and upstream.aborted)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_portRefusalCostsNoToken(self) -> None:
        """
        A CONNECT refused for its port does not spend a rate-limit token.
        """
        from txproxy.limits.service import ListenerLimits, MemoryLimiter

        factory = self.factory(rate="1/m", burst="1")
        factory.limits = ListenerLimits(MemoryLimiter(self.clock), factory.listener, "t")
        proto, client = self.open(factory)
        proto.dataReceived(b"CONNECT example.test:22 HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(_status(client.value()), 403)
        proto, client = self.open(factory)
        proto.dataReceived(CONNECT)
        self.assertEqual(client.value(), b"")


class RateKeyTests(ForwardTestCase):
    def test_rateByUser(self) -> None:
        """
        With --rate-key user, an authenticated user's requests share one
        bucket from any address.
        """
        import base64

        from txproxy.limits.service import ListenerLimits, MemoryLimiter

        fd, path = tempfile.mkstemp()
        os.write(fd, b"alice:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=\n")
        os.close(fd)
        self.addCleanup(os.remove, path)
        factory = self.factory(rate="1/m", burst="1", rate_key="user", auth=path)
        factory.limits = ListenerLimits(MemoryLimiter(self.clock), factory.listener, "t")
        auth = b"Proxy-Authorization: Basic " + base64.b64encode(b"alice:secret") + b"\r\n"
        request = b"CONNECT example.test:443 HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n"
        proto, client = self.open(factory, ("10.0.0.1", 1))
        proto.dataReceived(request)
        self.assertEqual(client.value(), b"")
        proto, client = self.open(factory, ("10.0.0.2", 1))
        proto.dataReceived(request)
        self.assertEqual(_status(client.value()), 429)

    def test_rateKeyHook(self) -> None:
        """
        A subclass can count requests by anything, here an API key header.
        """
        from txproxy.limits.service import ListenerLimits, MemoryLimiter

        class ByKey(ForwardProxyProtocol):
            def rateKey(self, head: Any) -> str:
                return (head.get(b"x-api-key") or b"none").decode()

        factory = self.factory(rate="1/m", burst="1", protocol=ByKey)
        factory.limits = ListenerLimits(MemoryLimiter(self.clock), factory.listener, "t")
        for key, expected in [(b"k1", b""), (b"k2", b""), (b"k1", b"429")]:
            proto, client = self.open(factory)
            proto.dataReceived(b"CONNECT example.test:443 HTTP/1.1\r\nHost: x\r\nX-API-Key: " + key + b"\r\n\r\n")
            self.assertIn(expected, client.value())
            if not expected:
                self.assertEqual(client.value(), b"")


class DirectDialTests(SynchronousTestCase):
    """
    With the stock L{Connector}, a C{CONNECT} to an IP literal under a
    synchronous policy is dialled straight through C{connectTCP} (no
    Deferred, no endpoint); these tests drive that path on a memory reactor.
    """

    def setUp(self) -> None:
        from twisted.internet.testing import MemoryReactorClock

        from txproxy.connector import Connector

        self.reactor = MemoryReactorClock()
        self.log = _Log()
        self.factory = forwardFactory(Connector(self.reactor), self.reactor, connect_timeout=7.0)
        self.factory.accessLog = self.log

    def open(self, target: bytes = b"192.0.2.10:443") -> Any:
        proto, client = connect(self.factory)
        proto.dataReceived(b"CONNECT " + target + b" HTTP/1.1\r\nHost: " + target + b"\r\n\r\nearly")
        return proto, client

    def test_dialsWithConnectTCP(self) -> None:
        """
        The tunnel is dialled with C{connectTCP} with the connect timeout;
        once connected, C{200} is sent, early bytes reach the upstream, and
        the record names the address dialled.
        """
        from txproxy.testing import FakeTransport

        proto, client = self.open()
        [(host, port, dial, timeout, bind)] = self.reactor.tcpClients
        self.assertEqual((host, port, timeout, bind), ("192.0.2.10", 443, 7.0, None))
        upstream = dial.buildProtocol(None)
        upTransport = FakeTransport(("192.0.2.10", 443))
        upTransport.protocol = upstream
        upstream.makeConnection(upTransport)
        self.assertEqual(client.value(), b"HTTP/1.1 200 Connection established\r\n\r\n")
        self.assertEqual(upTransport.value(), b"early")
        upstream.dataReceived(b"pong")
        self.assertTrue(client.value().endswith(b"pong"))
        client.peerClosed()
        upTransport.peerClosed()
        [record] = self.log.records
        self.assertEqual((record.status, record.upstream, record.bytesUp, record.bytesDown), (200, "192.0.2.10:443", 5, 4))

    def test_refused(self) -> None:
        """
        A refused connect answers C{502}; the record has no upstream.
        """
        proto, client = self.open()
        [(_, _, dial, _, _)] = self.reactor.tcpClients
        dial.clientConnectionFailed(self.reactor.connectors[0], Failure(error.ConnectionRefusedError()))
        self.assertEqual(_status(client.value()), 502)
        self.assertEqual(self.log.records[0].upstream, "")

    def test_timeout(self) -> None:
        """
        connectTCP's own timeout answers C{504}.
        """
        proto, client = self.open()
        [(_, _, dial, _, _)] = self.reactor.tcpClients
        dial.clientConnectionFailed(self.reactor.connectors[0], Failure(error.TimeoutError()))
        self.assertEqual(_status(client.value()), 504)

    def test_clientLeavesWhileDialling(self) -> None:
        """
        A client that leaves while the upstream is being dialled stops the
        attempt; a connection that completes anyway is aborted.
        """
        from txproxy.testing import FakeTransport

        proto, client = self.open()
        [(_, _, dial, _, _)] = self.reactor.tcpClients
        connector = self.reactor.connectors[0]
        client.peerClosed()
        self.assertTrue(connector.stoppedConnecting)
        upstream = dial.buildProtocol(None)
        upTransport = FakeTransport(("192.0.2.10", 443))
        upTransport.protocol = upstream
        upstream.makeConnection(upTransport)
        self.assertTrue(upTransport.aborted)
        self.assertEqual(client.value(), b"")

    def test_denyDest(self) -> None:
        """
        C{--deny-dest} applies to IP literals on the direct path too: C{403},
        nothing dialled.
        """
        from txproxy.testing import listenerConfig

        self.factory.listener = listenerConfig(deny_dest=["192.0.2.0/24"])
        proto, client = self.open()
        self.assertEqual(_status(client.value()), 403)
        self.assertEqual(self.reactor.tcpClients, [])


def _hostFields(sent: bytes) -> List[bytes]:
    """
    The values of the C{Host} fields in the request head C{sent}.
    """
    head = sent.split(b"\r\n\r\n", 1)[0]
    return [line[5:].strip() for line in head.split(b"\r\n")[1:] if line[:5].lower() == b"host:"]


class AbsoluteURITests(ForwardTestCase):
    """
    Absolute-URI requests (C{GET http://host/path}): the head the origin
    gets.
    """

    def request(self, data: bytes) -> Any:
        """
        Send C{data} from a new client, connect the upstream it dials.

        @return: the client's and the upstream's transports.
        """
        attempts = len(self.connector.attempts)
        proto, client = self.open()
        proto.dataReceived(data)
        self.assertEqual(len(self.connector.attempts), attempts + 1, client.value())
        return client, self.connector.last.succeed()

    def refused(self, data: bytes) -> Any:
        """
        Send C{data} from a new client that must get an answer from the
        proxy itself, with nothing dialled.

        @return: the client's transport.
        """
        attempts = len(self.connector.attempts)
        proto, client = self.open()
        proto.dataReceived(data)
        self.assertEqual(len(self.connector.attempts), attempts)
        return client

    def test_hostKeptWhenConnectionListsIt(self) -> None:
        """
        A client whose C{Connection} lists C{host} still has exactly one
        C{Host}, the URI's authority, sent upstream.
        """
        client, upstream = self.request(
            b"GET http://example.test:8080/p HTTP/1.1\r\nHost: example.test:8080\r\nConnection: host\r\n\r\n")
        self.assertEqual(_hostFields(upstream.value()), [b"example.test:8080"])

    def test_hostAddedForHTTP10WithoutHost(self) -> None:
        """
        An HTTP/1.0 request without C{Host}, with or without
        C{Connection: host}, is sent upstream as HTTP/1.1 with the URI's
        authority as its one C{Host}.
        """
        for extra in [b"", b"Connection: host\r\n"]:
            client, upstream = self.request(b"GET http://example.test/p HTTP/1.0\r\n" + extra + b"\r\n")
            sent = upstream.value()
            self.assertTrue(sent.startswith(b"GET /p HTTP/1.1\r\n"), sent)
            self.assertEqual(_hostFields(sent), [b"example.test"], extra)

    def test_maxForwardsOnlyDigits(self) -> None:
        """
        A C{Max-Forwards} that is not all ASCII digits (a sign, an
        underscore, inner whitespace, a non-ASCII digit, hex) is C{400},
        whatever Python's C{int} would make of it.
        """
        for value in [b"1_0", b"-1", b"+1", b"1 0", b"0x1", b"\xd9\xa1", b"1.0", b"1,2"]:
            client = self.refused(b"OPTIONS http://example.test/ HTTP/1.1\r\nHost: example.test\r\n"
                                  b"Max-Forwards: " + value + b"\r\n\r\n")
            self.assertEqual(_status(client.value()), 400, value)

    def test_maxForwardsDecimal(self) -> None:
        """
        Leading zeros are allowed (C{007} is 7, C{000} is 0: answered
        here); a value too long to be meant literally is clamped instead
        of refused.
        """
        client, upstream = self.request(
            b"TRACE http://example.test/ HTTP/1.1\r\nHost: example.test\r\nMax-Forwards: 007\r\n\r\n")
        self.assertIn(b"\r\nMax-Forwards: 6\r\n", upstream.value())
        client = self.refused(
            b"OPTIONS http://example.test/ HTTP/1.1\r\nHost: example.test\r\nMax-Forwards: 000\r\n\r\n")
        self.assertEqual(_status(client.value()), 200)
        client, upstream = self.request(
            b"OPTIONS http://example.test/ HTTP/1.1\r\nHost: example.test\r\nMax-Forwards: " + b"9" * 5000 + b"\r\n\r\n")
        self.assertIn(b"\r\nMax-Forwards: 999999998\r\n", upstream.value())

    def test_optionsWithEmptyPathIsAsteriskForm(self) -> None:
        """
        C{OPTIONS http://host:port} (no path, no query) reaches the origin
        as C{OPTIONS *}; with a C{/} path, or with another method, the
        origin gets C{/}.
        """
        cases = [
            (b"OPTIONS http://example.test:8080 HTTP/1.1", b"OPTIONS * HTTP/1.1\r\n"),
            (b"OPTIONS http://example.test:8080#f HTTP/1.1", b"OPTIONS * HTTP/1.1\r\n"),
            (b"OPTIONS http://example.test:8080/ HTTP/1.1", b"OPTIONS / HTTP/1.1\r\n"),
            (b"OPTIONS http://example.test:8080?q HTTP/1.1", b"OPTIONS /?q HTTP/1.1\r\n"),
            (b"GET http://example.test:8080 HTTP/1.1", b"GET / HTTP/1.1\r\n"),
        ]
        for line, expected in cases:
            client, upstream = self.request(line + b"\r\nHost: example.test:8080\r\n\r\n")
            sent = upstream.value()
            self.assertTrue(sent.startswith(expected), (line, sent))
            self.assertEqual(_hostFields(sent), [b"example.test:8080"])


class ForwardingHeaderTests(ForwardTestCase):
    """
    Forwarding fields (C{X-Forwarded-For}, C{Forwarded}, C{X-Real-IP}, ...)
    in forward mode follow C{--trusted-proxies}: kept (and extended with
    C{--x-forwarded-for on}) from trusted clients, dropped or replaced for
    everyone else; underscore spellings are dropped from everyone.
    """

    CLAIMS = (
        b"X-Forwarded-For: 6.6.6.6\r\n"
        b"Forwarded: for=6.6.6.6;host=evil.test\r\n"
        b"X-Forwarded-Host: evil.test\r\n"
        b"X-Forwarded-Proto: https\r\n"
        b"X-Real-IP: 6.6.6.6\r\n"
        b"X_Forwarded_For: 7.7.7.7\r\n"
        b"x_forwarded_host: underscore.test\r\n"
        b"X-Custom_Name: kept\r\n"
    )

    def sent(self, peer: Any = ("127.0.0.1", 40000), **options: Any) -> bytes:
        """
        The head the origin gets for a request carrying L{CLAIMS} from
        C{peer}, through a factory with C{options}.
        """
        proto, client = self.open(self.factory(**options), peer)
        proto.dataReceived(b"GET http://example.test/ HTTP/1.1\r\nHost: example.test\r\n" + self.CLAIMS + b"\r\n")
        return self.connector.last.succeed().value()  # type: ignore[no-any-return]

    def assertNoUnderscoreSpellings(self, sent: bytes) -> None:
        self.assertNotIn(b"7.7.7.7", sent)
        self.assertNotIn(b"underscore.test", sent)
        self.assertIn(b"\r\nX-Custom_Name: kept\r\n", sent)

    def test_untrustedClaimsDropped(self) -> None:
        """
        An untrusted client's forwarding fields, all of them, do not reach
        the origin (C{--x-forwarded-for} off, the default).
        """
        for options in [{}, {"trusted_proxies": ["10.0.0.0/8"]}]:
            sent = self.sent(**options)
            for name in [b"X-Forwarded-For", b"Forwarded", b"X-Forwarded-Host", b"X-Forwarded-Proto", b"X-Real-IP"]:
                self.assertNotIn(b"\r\n" + name + b":", sent, (name, options))
            self.assertNotIn(b"6.6.6.6", sent)
            self.assertNotIn(b"evil.test", sent)
            self.assertNoUnderscoreSpellings(sent)

    def test_untrustedClaimsReplaced(self) -> None:
        """
        With C{--x-forwarded-for on}, an untrusted client's
        C{X-Forwarded-For} is replaced by its address, and the rest of its
        forwarding fields are dropped.
        """
        sent = self.sent(x_forwarded_for="on", trusted_proxies=["10.0.0.0/8"])
        self.assertEqual(sent.count(b"X-Forwarded-For:"), 1)
        self.assertIn(b"\r\nX-Forwarded-For: 127.0.0.1\r\n", sent)
        self.assertNotIn(b"6.6.6.6", sent)
        self.assertNotIn(b"evil.test", sent)
        self.assertNotIn(b"\r\nForwarded:", sent)
        self.assertNoUnderscoreSpellings(sent)

    def test_trustedClaimsKept(self) -> None:
        """
        A trusted client's forwarding fields pass unchanged with
        C{--x-forwarded-for} off; its underscore spellings are dropped.
        """
        sent = self.sent(("10.1.2.3", 1), trusted_proxies=["10.0.0.0/8"])
        for line in self.CLAIMS.split(b"\r\n")[:5]:
            self.assertIn(b"\r\n" + line + b"\r\n", sent)
        self.assertNotIn(b"10.1.2.3", sent)
        self.assertNoUnderscoreSpellings(sent)

    def test_trustedClaimsExtended(self) -> None:
        """
        With C{--x-forwarded-for on}, a trusted client's C{X-Forwarded-For}
        and C{Forwarded} chains are extended with its address, its other
        forwarding fields kept.
        """
        sent = self.sent(("10.1.2.3", 1), x_forwarded_for="on", trusted_proxies=["10.0.0.0/8"])
        self.assertIn(b"\r\nX-Forwarded-For: 6.6.6.6, 10.1.2.3\r\n", sent)
        self.assertIn(b"\r\nForwarded: for=6.6.6.6;host=evil.test, for=10.1.2.3\r\n", sent)
        self.assertIn(b"\r\nX-Forwarded-Host: evil.test\r\n", sent)
        self.assertIn(b"\r\nX-Real-IP: 6.6.6.6\r\n", sent)
        self.assertNoUnderscoreSpellings(sent)

    def test_trustedIPv6InForwarded(self) -> None:
        """
        An IPv6 client address is bracketed and quoted in C{Forwarded}.
        """
        sent = self.sent(("2001:db8::5", 1), x_forwarded_for="on", trusted_proxies=["2001:db8::/32"], allow=["::/0"])
        self.assertIn(b'Forwarded: for=6.6.6.6;host=evil.test, for="[2001:db8::5]"\r\n', sent)
        self.assertIn(b"X-Forwarded-For: 6.6.6.6, 2001:db8::5\r\n", sent)

    def test_noForwardingFieldsUnchanged(self) -> None:
        """
        A request without forwarding fields reaches the origin with its
        fields as they were (the common case), and gets none added with
        C{--x-forwarded-for} off.
        """
        proto, client = self.open()
        proto.dataReceived(b"GET http://example.test/ HTTP/1.1\r\nHost: example.test\r\nAccept: */*\r\n"
                           b"X-Other_Thing: 1\r\n\r\n")
        sent = self.connector.last.succeed().value()
        self.assertEqual(sent, b"GET / HTTP/1.1\r\nHost: example.test\r\nAccept: */*\r\nX-Other_Thing: 1\r\n"
                               b"Via: 1.1 txproxy\r\n\r\n")
