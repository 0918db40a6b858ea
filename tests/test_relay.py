# -*- test-case-name: tests.test_relay -*-
"""
Tests for L{txproxy.relay}: flow control, half-close, idle timeout,
accounting, on fake transports and a fake clock.
"""

from __future__ import annotations

from typing import Any, List, Tuple

from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from txproxy.relay import Relay, RelayedProtocol, fastSender, joinRelay
from txproxy.testing import FakeTransport


class _Side(Protocol):
    """
    A client-side protocol that delegates to a relay, as mode protocols do.
    """

    relay: Any = None

    def readConnectionLost(self) -> None:
        self.relay.clientReadLost()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Any = None) -> None:
        self.relay.clientLost(reason)


from zope.interface import classImplements  # noqa: E402
from twisted.internet.interfaces import IHalfCloseableProtocol  # noqa: E402

classImplements(_Side, IHalfCloseableProtocol)


def _pair(idleTimeout: Any = None, **kw: Any) -> Tuple[Relay, FakeTransport, FakeTransport, Clock, _Side, RelayedProtocol]:
    clock = Clock()
    client = FakeTransport(("10.0.0.1", 1000))
    upstream = FakeTransport(("10.0.0.2", 2000))
    cp = _Side()
    up = RelayedProtocol()
    client.protocol, upstream.protocol = cp, up
    cp.makeConnection(client)
    up.makeConnection(upstream)
    relay = Relay(client, upstream, clock, idleTimeout, **kw)
    cp.relay = relay
    up.relay = relay
    cp.dataReceived = relay.fromClient  # type: ignore[method-assign]
    up.dataReceived = relay.fromUpstream  # type: ignore[method-assign]
    return relay, client, upstream, clock, cp, up


class RelayDataTests(SynchronousTestCase):
    def test_bytesFlowBothWaysAndAreCounted(self) -> None:
        """
        Bytes from each side reach the other, in order, and are counted per
        direction.
        """
        relay, client, upstream, clock, cp, up = _pair()
        relay.start()
        cp.dataReceived(b"hello ")
        cp.dataReceived(b"world")
        up.dataReceived(b"reply")
        self.assertEqual(upstream.value(), b"hello world")
        self.assertEqual(client.value(), b"reply")
        self.assertEqual((relay.bytesUp, relay.bytesDown), (11, 5))

    def test_startSendsEarlyBytes(self) -> None:
        """
        Bytes either side sent before the relay existed are delivered first
        and counted.
        """
        relay, client, upstream, clock, cp, up = _pair()
        relay.start(b"early-client", b"banner")
        cp.dataReceived(b"+more")
        self.assertEqual(upstream.value(), b"early-client+more")
        self.assertEqual(client.value(), b"banner")
        self.assertEqual(relay.bytesUp, len(b"early-client+more"))

    def test_startResumesClient(self) -> None:
        """
        A client paused while the upstream was being reached is resumed when
        the relay starts.
        """
        relay, client, upstream, clock, cp, up = _pair()
        client.pauseProducing()
        self.assertTrue(client.paused)
        relay.start()
        self.assertFalse(client.paused)

    def test_filtersSeeAndRewriteChunks(self) -> None:
        """
        Filters rewrite chunks each way; an empty result drops the chunk and
        only relayed bytes are counted.
        """
        seen: List[bytes] = []

        def up(data: bytes) -> bytes:
            seen.append(data)
            return data.upper()

        relay, client, upstream, clock, cp, upp = _pair(filterUp=up, filterDown=lambda d: b"")
        relay.start()
        cp.dataReceived(b"abc")
        upp.dataReceived(b"dropped")
        self.assertEqual(seen, [b"abc"])
        self.assertEqual(upstream.value(), b"ABC")
        self.assertEqual(client.value(), b"")
        self.assertEqual(relay.bytesDown, 0)


class RelayFlowControlTests(SynchronousTestCase):
    def test_eachSideIsTheOthersProducer(self) -> None:
        """
        Starting the relay registers the client as the upstream's streaming
        producer and the upstream as the client's.
        """
        relay, client, upstream, clock, cp, up = _pair()
        relay.start()
        self.assertIs(upstream.producer, client)
        self.assertTrue(upstream.streaming)
        self.assertIs(client.producer, upstream)

    def test_slowUpstreamPausesClient(self) -> None:
        """
        When the upstream's consumer asks its producer to pause (its buffer is
        full), reading from the client stops, and resumes after.
        """
        relay, client, upstream, clock, cp, up = _pair()
        relay.start()
        upstream.producer.pauseProducing()
        self.assertTrue(client.paused)
        upstream.producer.resumeProducing()
        self.assertFalse(client.paused)

    def test_slowClientPausesUpstream(self) -> None:
        """
        The other direction: a slow client pauses reading from the upstream.
        """
        relay, client, upstream, clock, cp, up = _pair()
        relay.start()
        client.producer.pauseProducing()
        self.assertTrue(upstream.paused)


class RelayCloseTests(SynchronousTestCase):
    def test_clientHalfCloseIsForwarded(self) -> None:
        """
        A FIN from the client becomes a write shutdown toward the upstream,
        and the upstream can still answer.
        """
        relay, client, upstream, clock, cp, up = _pair()
        relay.start()
        client.peerHalfClosed()
        self.assertTrue(upstream.writeClosed)
        self.assertFalse(upstream.disconnecting)
        up.dataReceived(b"late answer")
        self.assertEqual(client.value(), b"late answer")
        self.assertTrue(relay.active)

    def test_bothHalfClosesCloseThePair(self) -> None:
        """
        Once both directions have ended, both connections are closed and
        C{finished} fires with the relay and its end time.  The second end
        of input closes both sides at once (the close sends the FIN; no
        separate half-close first).
        """
        relay, client, upstream, clock, cp, up = _pair()
        relay.start()
        clock.advance(3)
        client.peerHalfClosed()
        self.assertTrue(upstream.writeClosed)
        upstream.peerHalfClosed()
        self.assertFalse(client.writeClosed)
        self.assertTrue(client.closed and upstream.closed)
        self.assertIs(self.successResultOf(relay.finished), relay)
        self.assertEqual(relay.endedAt, 3)

    def test_upstreamLossClosesClientAfterFlush(self) -> None:
        """
        When the upstream goes away, the client is closed (after what was
        relayed is flushed) and its producer is unregistered so the close is
        not held up.
        """
        relay, client, upstream, clock, cp, up = _pair()
        relay.start()
        up.dataReceived(b"last words")
        upstream.peerClosed()
        self.assertTrue(client.disconnecting)
        self.assertIsNone(client.producer)
        self.assertEqual(client.value(), b"last words")
        self.successResultOf(relay.finished)

    def test_clientLossClosesUpstream(self) -> None:
        """
        When the client goes away, the upstream is closed.
        """
        relay, client, upstream, clock, cp, up = _pair()
        relay.start()
        client.peerClosed()
        self.assertTrue(upstream.disconnecting)
        self.successResultOf(relay.finished)

    def test_upstreamClosedBeforeStart(self) -> None:
        """
        A RelayedProtocol keeps data and loss that happen before the relay is
        attached.
        """
        up = RelayedProtocol()
        t = FakeTransport()
        t.protocol = up
        up.makeConnection(t)
        up.dataReceived(b"a")
        up.dataReceived(b"b")
        up.readConnectionLost()
        self.assertEqual(up.takePending(), b"ab")
        self.assertEqual(up.takePending(), b"")
        self.assertTrue(up._readLost)


class RelayIdleTests(SynchronousTestCase):
    def test_idleRelayIsClosed(self) -> None:
        """
        With no byte either way for the idle timeout, both sides are aborted
        and the close reason is C{idle}; it happens no later than a quarter of
        the timeout after the deadline.
        """
        relay, client, upstream, clock, cp, up = _pair(idleTimeout=10)
        relay.start()
        clock.pump([0.1] * 99)
        self.assertFalse(client.aborted)
        clock.pump([0.5] * 6)
        self.assertTrue(client.aborted and upstream.aborted)
        self.assertEqual(relay.closeReason, "idle")
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_trafficKeepsRelayOpen(self) -> None:
        """
        Traffic in either direction keeps the relay open past the timeout,
        and the timer is never reset per chunk (one pending call at most).
        """
        relay, client, upstream, clock, cp, up = _pair(idleTimeout=10)
        relay.start()
        for i in range(20):
            clock.pump([1] * 4)
            (cp if i % 2 else up).dataReceived(b"x")
            self.assertLessEqual(len(clock.getDelayedCalls()), 1)
        self.assertFalse(client.aborted)
        clock.pump([1] * 13)
        self.assertTrue(client.aborted)

    def test_finishedRelayCancelsTimer(self) -> None:
        """
        A relay that ends leaves no pending timer.
        """
        relay, client, upstream, clock, cp, up = _pair(idleTimeout=10)
        relay.start()
        client.peerClosed()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_relaysShareOneTimer(self) -> None:
        """
        Relays with the same clock and idle timeout share one timer (no
        timer per connection); each is judged on its own traffic, and the
        timer goes away with the last relay.
        """
        relay, client, upstream, clock, cp, up = _pair(idleTimeout=10)
        relay.start()
        busy = Relay(FakeTransport(), FakeTransport(), clock, 10)
        busy.start()
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        for _ in range(12):
            clock.advance(1)
            busy.fromClient(b"x")
        self.assertTrue(client.aborted)
        self.assertEqual(relay.closeReason, "idle")
        self.assertIsNone(busy.closeReason)
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        busy.abort()
        busy.clientLost()
        busy.upstreamLost()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_finishedDeferredAndOnEnded(self) -> None:
        """
        C{onEnded} is called and C{finished} fires (even when first asked for
        after the end) once both sides are closed.
        """
        relay, client, upstream, clock, cp, up = _pair()
        ended: List[Relay] = []
        relay.onEnded = ended.append
        early: List[Relay] = []
        relay.finished.addCallback(early.append)
        relay.start()
        client.peerClosed()
        self.assertEqual((ended, early), ([relay], [relay]))
        other, client2, _, _, _, _ = _pair()
        other.start()
        client2.peerClosed()
        late: List[Relay] = []
        other.finished.addCallback(late.append)
        self.assertEqual(late, [other])


def _connected() -> Tuple[FakeTransport, FakeTransport, _Side, RelayedProtocol]:
    """
    A client-side protocol and an upstream L{RelayedProtocol}, each
    connected to a fake transport, not joined yet.
    """
    client = FakeTransport(("10.0.0.1", 1000))
    upstream = FakeTransport(("10.0.0.2", 2000))
    cp = _Side()
    up = RelayedProtocol()
    client.protocol, upstream.protocol = cp, up
    cp.makeConnection(client)
    up.makeConnection(upstream)
    return client, upstream, cp, up


class JoinRelayTests(SynchronousTestCase):
    """
    L{joinRelay}, the one way to join two protocols.
    """

    def test_wiresBothProtocols(self) -> None:
        """
        Both protocols get the relay as C{relay} and its per-chunk methods
        as C{dataReceived}; each transport is the other's streaming
        producer; the paused client is resumed; the relay has the given
        clock and idle timeout.
        """
        client, upstream, cp, up = _connected()
        client.pauseProducing()
        clock = Clock()
        relay = joinRelay(cp, up, clock, 7)
        self.assertIs(cp.relay, relay)
        self.assertIs(up.relay, relay)
        self.assertEqual(cp.dataReceived, relay.fromClient)
        self.assertEqual(up.dataReceived, relay.fromUpstream)
        self.assertIs(upstream.producer, client)
        self.assertIs(client.producer, upstream)
        self.assertFalse(client.paused)
        self.assertIs(relay.clock, clock)
        self.assertEqual(relay.idleTimeout, 7)
        self.assertTrue(relay.active)

    def test_pendingBytesFirstInOrder(self) -> None:
        """
        The client's early bytes go upstream before anything it sends after
        the join; toward the client, C{fromUpstream} goes first, then what
        the upstream protocol kept before the join, then later chunks.  All
        are counted.
        """
        client, upstream, cp, up = _connected()
        up.dataReceived(b"kept1 ")
        up.dataReceived(b"kept2 ")
        relay = joinRelay(cp, up, Clock(), fromClient=b"early ", fromUpstream=b"rest ")
        cp.dataReceived(b"later")
        up.dataReceived(b"after")
        self.assertEqual(upstream.value(), b"early later")
        self.assertEqual(client.value(), b"rest kept1 kept2 after")
        self.assertEqual((relay.bytesUp, relay.bytesDown), (11, 22))
        self.assertEqual(up.takePending(), b"")

    def test_filtersSeePendingBytes(self) -> None:
        """
        The filters apply to the early bytes too.
        """
        client, upstream, cp, up = _connected()
        up.dataReceived(b"banner")
        joinRelay(
            cp,
            up,
            Clock(),
            fromClient=b"abc",
            filterUp=lambda d: d.upper(),
            filterDown=lambda d: d[::-1],
        )
        self.assertEqual(upstream.value(), b"ABC")
        self.assertEqual(client.value(), b"rennab")

    def test_upstreamHalfClosedBeforeJoin(self) -> None:
        """
        An upstream that sent its last bytes and half-closed before the
        join: the bytes reach the client, then the client's write side is
        shut down; the client can still send, and the relay stays open.
        """
        client, upstream, cp, up = _connected()
        up.dataReceived(b"bye")
        upstream.peerHalfClosed()
        ended: List[Relay] = []
        relay = joinRelay(cp, up, Clock(), onEnded=ended.append)
        self.assertEqual(client.value(), b"bye")
        self.assertTrue(client.writeClosed)
        self.assertFalse(client.disconnecting)
        cp.dataReceived(b"still talking")
        self.assertEqual(upstream.value(), b"still talking")
        self.assertTrue(relay.active)
        client.peerHalfClosed()
        self.assertTrue(client.closed and upstream.closed)
        self.assertEqual(ended, [relay])

    def test_upstreamClosedBeforeJoin(self) -> None:
        """
        An upstream that sent its last bytes and closed before the join: the
        bytes reach the client, which is then closed; the relay ends (and
        calls C{onEnded}) before L{joinRelay} returns.
        """
        client, upstream, cp, up = _connected()
        up.dataReceived(b"last words")
        upstream.peerClosed()
        ended: List[Relay] = []
        relay = joinRelay(cp, up, Clock(), fromClient=b"hello", onEnded=ended.append)
        self.assertEqual(client.value(), b"last words")
        self.assertTrue(client.disconnecting)
        self.assertIsNone(client.producer)
        self.assertEqual(ended, [relay])
        self.assertFalse(relay.active)

    def test_clientHalfClosedBeforeJoin(self) -> None:
        """
        C{clientReadLost=True}: the client's FIN is forwarded upstream after
        its early bytes, and the upstream can still answer.
        """
        client, upstream, cp, up = _connected()
        relay = joinRelay(cp, up, Clock(), fromClient=b"request", clientReadLost=True)
        self.assertEqual(upstream.value(), b"request")
        self.assertTrue(upstream.writeClosed)
        self.assertFalse(upstream.disconnecting)
        up.dataReceived(b"answer")
        self.assertEqual(client.value(), b"answer")
        self.assertTrue(relay.active)

    def test_bothEndedBeforeJoin(self) -> None:
        """
        A client that half-closed and an upstream that closed before the
        join: both connections are closed and C{onEnded} runs once.
        """
        client, upstream, cp, up = _connected()
        upstream.peerClosed()
        ended: List[Relay] = []
        relay = joinRelay(cp, up, Clock(), clientReadLost=True, onEnded=ended.append)
        self.assertTrue(client.closed and upstream.closed)
        self.assertEqual(ended, [relay])

    def test_onEndedOnce(self) -> None:
        """
        C{onEnded} is called once, with the relay, when both sides are
        closed, however many close events follow.
        """
        client, upstream, cp, up = _connected()
        ended: List[Relay] = []
        relay = joinRelay(cp, up, Clock(), 10, onEnded=ended.append)
        client.peerHalfClosed()
        self.assertEqual(ended, [])
        upstream.peerHalfClosed()
        self.assertEqual(ended, [relay])
        relay.clientLost()
        relay.upstreamLost()
        relay.abort()
        self.assertEqual(ended, [relay])

    def test_joinTwiceFails(self) -> None:
        """
        Joining a protocol that is already relayed raises L{ValueError} and
        leaves the existing relay alone.
        """
        client, upstream, cp, up = _connected()
        relay = joinRelay(cp, up, Clock())
        client2, upstream2, cp2, up2 = _connected()
        self.assertRaises(ValueError, joinRelay, cp, up2, Clock())
        self.assertRaises(ValueError, joinRelay, cp2, up, Clock())
        self.assertIs(cp.relay, relay)
        self.assertIs(up.relay, relay)
        self.assertIsNone(cp2.relay)
        self.assertIsNone(up2.relay)


class FastSenderTests(SynchronousTestCase):
    def test_nonTCPTransportUsesWrite(self) -> None:
        """
        For a transport that is not a plain TCP connection the fast sender is
        its C{write}.
        """
        t = FakeTransport()
        self.assertEqual(fastSender(t), t.write)

    def test_plainTCPSendsDirectly(self) -> None:
        """
        For a plain TCP connection with nothing buffered, a chunk goes
        straight to the socket; when the socket takes only part, the rest is
        buffered through C{write}; once something is buffered, later chunks
        queue behind it.
        """
        from twisted.internet import tcp

        class FakeSocket:
            def __init__(self) -> None:
                self.sent: List[bytes] = []
                self.limit = 1 << 30

            def send(self, data: bytes) -> int:
                n = min(len(data), self.limit)
                self.sent.append(bytes(data[:n]))
                return n

        conn = tcp.Connection.__new__(tcp.Connection)
        conn.socket = FakeSocket()  # type: ignore[assignment]
        conn.connected = True
        conn.dataBuffer = b""
        conn._tempDataBuffer = []
        conn._tempDataLen = 0
        written: List[bytes] = []

        def write(data: bytes) -> None:
            written.append(data)
            conn._tempDataBuffer.append(data)
            conn._tempDataLen += len(data)

        conn.write = write  # type: ignore[method-assign]
        send = fastSender(conn)
        send(b"abc")
        self.assertEqual(conn.socket.sent, [b"abc"])
        self.assertEqual(written, [])
        conn.socket.limit = 2
        send(b"wxyz")
        self.assertEqual(conn.socket.sent[-1], b"wx")
        self.assertEqual(written, [b"yz"])
        send(b"later")
        self.assertEqual(written, [b"yz", b"later"])
        self.assertEqual(len(conn.socket.sent), 2)

    def test_sendNow(self) -> None:
        """
        L{sendNow} sends straight to the socket of an idle plain TCP
        connection, hands an unsent rest to C{write}, writes through
        C{write} once something is buffered, and uses C{write} for other
        transports.
        """
        from twisted.internet import tcp

        from txproxy.relay import sendNow

        class FakeSocket:
            limit = 1 << 30

            def __init__(self) -> None:
                self.sent: List[bytes] = []

            def send(self, data: bytes) -> int:
                n = min(len(data), self.limit)
                self.sent.append(bytes(data[:n]))
                return n

        conn = tcp.Connection.__new__(tcp.Connection)
        conn.socket = FakeSocket()  # type: ignore[assignment]
        conn.connected = True
        conn.disconnecting = False
        conn._writeDisconnecting = False
        conn.dataBuffer = b""
        conn._tempDataBuffer = []
        conn._tempDataLen = 0
        written: List[bytes] = []

        def write(data: bytes) -> None:
            written.append(data)
            conn._tempDataLen += len(data)

        conn.write = write  # type: ignore[method-assign]
        sendNow(conn, b"HTTP/1.1 200 OK\r\n\r\n")
        self.assertEqual((conn.socket.sent, written), ([b"HTTP/1.1 200 OK\r\n\r\n"], []))
        conn.socket.limit = 3
        sendNow(conn, b"abcdef")
        self.assertEqual(written, [b"def"])
        sendNow(conn, b"gh")
        self.assertEqual(written, [b"def", b"gh"])
        t = FakeTransport()
        sendNow(t, b"x")
        self.assertEqual(t.value(), b"x")
