# -*- test-case-name: tests.test_tlsproto -*-
"""
TLS on the standard library's C{ssl} module: an C{ssl.SSLObject} over two
memory BIOs, wrapped around the application protocol as its transport.
L{TLSServerProtocol} is the server side of TLS listeners,
L{TLSClientProtocol} the client side of connections to C{https://}
backends.

Why not Twisted's L{twisted.protocols.tls.TLSMemoryBIOProtocol}: it drives
pyOpenSSL through cffi, and every C{recv}/C{bio_read} there allocates a
fresh 32 KiB buffer and ends in a raised C{WantReadError}.  For a
keep-alive HTTP exchange (one small record in, one out, both ends
counted) that is about 35 microseconds of CPU on CPython and 265 on PyPy,
against about 7 on either with C{ssl.SSLObject}
(C{bench/bench_tls_record.py}).  The handshake, SNI,
ALPN and client certificates are the same OpenSSL underneath.

Differences from Twisted's protocol, all deliberate:

  - Writes are encrypted and handed to the TCP transport at once (no
    write buffering on a timer); C{writeSequence} makes one record.  With
    nothing buffered in a plain TCP transport, the records go straight to
    the socket (L{txproxy.relay.fastSender}): one C{send}, no poller
    registration.
  - Flow control is the TCP transport's: a producer registered on this
    transport is registered on the TCP transport below, and
    C{pauseProducing}/C{resumeProducing} stop and start reading it.
  - C{loseConnection} sends C{close_notify} after the buffered data and
    closes the TCP connection without waiting for the peer's
    C{close_notify} (as web servers do); C{loseWriteConnection} sends it
    and keeps reading until the peer's own C{close_notify}, then closes.
    Called a second time, C{loseConnection} closes the TCP connection.
  - A peer's C{close_notify} is a half-close for an application protocol
    that provides L{IHalfCloseableProtocol} (C{readConnectionLost}); for
    any other, the connection is closed, as Twisted does.
  - The server reads the ClientHello alongside OpenSSL
    (L{txproxy.stream.clienthello.ClientHelloReader}) and refuses an SNI name
    that is not ASCII itself, with an C{unrecognized_name} alert and one
    log line: the C{ssl} module's server-name callback cannot decode one,
    and would print a traceback and send C{internal_error}.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any, Callable, List, Optional

from twisted.internet.interfaces import IHalfCloseableProtocol, IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from txproxy.relay import fastSender
from txproxy.stream.clienthello import (
    UNRECOGNIZED_NAME_ALERT,
    ClientHelloError,
    ClientHelloReader,
    ServerNameError,
)

if TYPE_CHECKING:
    from txproxy._transport import _Transport

__all__ = ["TLSClientFactory", "TLSClientProtocol", "TLSServerFactory", "TLSServerProtocol"]

_WantRead = ssl.SSLWantReadError
_SSLError = ssl.SSLError
_MemoryBIO = ssl.MemoryBIO

#: The most plaintext one TLS record carries: what one C{read} returns.
_RECORD = 16384

log = Logger()


class TLSServerProtocol(Protocol):
    """
    TLS on one accepted connection; the application protocol's transport.

    @ivar wrappedProtocol: the application protocol.
    @ivar transport: the TCP (or PROXY-protocol) transport below.
    @ivar disconnecting: whether the application asked to close.
    """

    transport: _Transport
    disconnecting = False
    disconnected = False
    _handshakeDone = False
    _writeShut = False
    _closeSent = False
    _peerClosed = False
    _reason: Optional[Failure] = None
    _sslobj: Any = None
    #: Read the ClientHello beside OpenSSL until it is complete (servers).
    _readsHello = True
    _hello: Optional[ClientHelloReader] = None

    def __init__(self, newObject: Callable[[Any, Any], Any], wrappedProtocol: Any) -> None:
        """
        @param newObject: called with the incoming and outgoing
            L{ssl.MemoryBIO}, returns the server-side L{ssl.SSLObject}.
        @param wrappedProtocol: the application protocol.
        """
        self._newObject = newObject
        self.wrappedProtocol = wrappedProtocol
        self._pending: List[bytes] = []

    # -- from the TCP transport

    def makeConnection(self, transport: Any) -> None:
        self.connected = True
        self.transport = transport
        self._in = _MemoryBIO()
        self._out = _MemoryBIO()
        self._sslobj = self._newObject(self._in, self._out)
        self._wire = fastSender(transport)
        if self._readsHello:
            self._hello = ClientHelloReader()
            # The address the client connected to, for a certificate
            # chosen by an iPAddress subjectAltName when there is no SNI.
            host = getattr(transport.getHost(), "host", None)
            if isinstance(host, str):
                try:
                    self._sslobj.txproxyLocalHost = host
                except AttributeError:
                    pass
        self.wrappedProtocol.makeConnection(self)

    def dataReceived(self, data: bytes) -> None:
        if self.disconnected or self._reason is not None:
            return
        if self._hello is not None and self._nameRefused(data):
            return
        self._in.write(data)
        sslobj = self._sslobj
        if not self._handshakeDone:
            try:
                sslobj.do_handshake()
            except _WantRead:
                self._flush()
                return
            except (_SSLError, OSError) as e:
                self._failed(e)
                return
            self._handshaken()
            if self.disconnected or self._reason is not None or not self._in.pending:
                return
        deliver = self.wrappedProtocol.dataReceived
        incoming = self._in
        while True:
            try:
                chunk = sslobj.read(_RECORD)
            except _WantRead:
                break
            except (_SSLError, OSError) as e:
                self._failed(e)
                return
            if not chunk:
                self._closeNotified()
                return
            deliver(chunk)
            if self.disconnected:
                return
            if self.disconnecting and not self._writeShut:
                break  # closed from dataReceived: nothing more, as on TCP
            if not incoming.pending and not sslobj.pending():
                break
        if self._out.pending:
            self._wire(self._out.read())

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        if self.disconnected:
            return
        self.disconnected = True
        self.connected = False
        if self._reason is not None:
            reason = self._reason
        self.wrappedProtocol.connectionLost(reason)

    # -- TLS events

    def _nameRefused(self, data: bytes) -> bool:
        """
        Read C{data} as more of the ClientHello; a non-ASCII server name
        fails the connection (C{unrecognized_name}, one log line) before
        OpenSSL sees the complete hello.  Anything else the reader does not
        accept is left to OpenSSL.

        @return: whether the connection was refused.
        """
        reader = self._hello
        assert reader is not None
        try:
            if reader.feed(data) is not None:
                self._hello = None
        except ServerNameError as e:
            self._hello = None
            if e.ascii:
                return False
            peer = self.transport.getPeer()
            log.info(
                "TLS: closing connection from {client}: {reason} (unrecognized_name)",
                client=getattr(peer, "host", "unix"),
                reason=e.reason,
            )
            self._wire(UNRECOGNIZED_NAME_ALERT)
            self._reason = Failure(e)
            self.transport.loseConnection()
            return True
        except ClientHelloError:
            self._hello = None
        return False

    def _flush(self) -> None:
        out = self._out
        if out.pending:
            self._wire(out.read())

    def _handshaken(self) -> None:
        if not self._verified():
            return
        self._handshakeDone = True
        self._flush()
        app = self.wrappedProtocol
        if IHandshakeListener.providedBy(app):
            app.handshakeCompleted()
        pending, self._pending = self._pending, []
        if pending and not self.disconnected:
            self._send(b"".join(pending))
        if self.disconnecting and not self._closeSent and not self.disconnected:
            self._sendClose()
            if not self._writeShut:
                self.transport.loseConnection()

    def _verified(self) -> bool:
        """
        Whether the handshake's outcome is acceptable (the client side
        checks the server's name here); else the connection is failed.
        """
        return True

    def _failed(self, error: BaseException) -> None:
        """
        A TLS error (handshake refused, bad record): send the alert OpenSSL
        queued, close, and report the error to the application.
        """
        self._reason = Failure(error)
        self._flush()
        self.transport.loseConnection()

    def _closeNotified(self) -> None:
        """
        The peer sent C{close_notify}.
        """
        self._peerClosed = True
        self._flush()
        app = self.wrappedProtocol
        if self._writeShut or self.disconnecting:
            self.transport.loseConnection()
        elif IHalfCloseableProtocol.providedBy(app):
            app.readConnectionLost()
        else:
            self.loseConnection()

    def _sendClose(self) -> None:
        self._closeSent = True
        try:
            self._sslobj.unwrap()
        except (_SSLError, OSError, ValueError):
            pass  # WantRead: the peer's close_notify is still to come
        self._flush()

    def _send(self, data: bytes) -> None:
        self._sslobj.write(data)
        self._wire(self._out.read())

    # -- the application's transport

    def write(self, data: bytes) -> None:
        """
        Encrypt C{data} and hand it to the TCP transport (kept until the
        handshake is over, when it comes earlier).
        """
        if not data or self._closeSent or self.disconnected:
            return
        if not self._handshakeDone:
            self._pending.append(data)
            return
        self._sslobj.write(data)
        self._wire(self._out.read())

    def writeSequence(self, iovec: Any) -> None:
        """
        Write the pieces of C{iovec} as one.
        """
        self.write(b"".join(iovec))

    def loseConnection(self) -> None:
        """
        Send what is buffered and C{close_notify}, then close the TCP
        connection.  Before the handshake is over: close at once when
        nothing was written, else once the handshake completes.  A second
        call closes the TCP connection whatever the state.
        """
        if self.disconnected:
            return
        if self.disconnecting:
            self.transport.loseConnection()
            return
        self.disconnecting = True
        if self._handshakeDone:
            if not self._closeSent:
                self._sendClose()
            if not self._writeShut or self._peerClosed:
                self.transport.loseConnection()
        elif not self._pending:
            self.transport.loseConnection()

    def loseWriteConnection(self) -> None:
        """
        End our direction with C{close_notify} (never a TCP half-close
        under TLS); bytes the peer still sends are delivered, and the
        connection closes with the peer's C{close_notify} or its close.
        """
        if self.disconnected or self.disconnecting:
            return
        self._writeShut = True
        self.loseConnection()

    def abortConnection(self) -> None:
        """
        Close the TCP connection at once, without C{close_notify}.
        """
        self.disconnecting = True
        self.transport.abortConnection()

    def getPeer(self) -> Any:
        return self.transport.getPeer()

    def getHost(self) -> Any:
        return self.transport.getHost()

    def getHandle(self) -> Any:
        """
        The connection's L{ssl.SSLObject}.
        """
        return self._sslobj

    def getPeerCertificate(self) -> Any:
        """
        The client's certificate (C{OpenSSL.crypto.X509}), or L{None}.
        """
        der = self._sslobj.getpeercert(True) if self._handshakeDone else None
        if not der:
            return None
        from OpenSSL import crypto

        return crypto.load_certificate(crypto.FILETYPE_ASN1, der)

    @property
    def negotiatedProtocol(self) -> Optional[bytes]:
        """
        The ALPN protocol selected, or L{None}.
        """
        selected = self._sslobj.selected_alpn_protocol() if self._handshakeDone else None
        return selected.encode("ascii") if selected else None

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.transport.unregisterProducer()

    def pauseProducing(self) -> None:
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.transport.stopProducing()

    def logPrefix(self) -> str:
        return self.wrappedProtocol.__class__.__name__  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        # What a wrapper does not define is the TCP transport's (socket
        # options, PROXY-protocol information, ...).
        if name.startswith("__") or name == "transport":
            raise AttributeError(name)
        return getattr(self.transport, name)


class TLSServerFactory(Factory):
    """
    Wraps the protocols of C{wrappedFactory} in L{TLSServerProtocol}.

    @ivar wrappedFactory: the application factory.
    """

    # Made for every upstream TLS connection (and health check): no
    # "Starting factory" line for each.
    noisy = False

    def __init__(self, newObject: Callable[[Any, Any], Any], wrappedFactory: Any) -> None:
        """
        @param newObject: makes a connection's L{ssl.SSLObject} from its two
            memory BIOs (e.g. L{txproxy.tls.ServerTLSOptions.serverObject}).
        @param wrappedFactory: the application factory.
        """
        self._newObject = newObject
        self.wrappedFactory = wrappedFactory

    def logPrefix(self) -> str:
        prefix = getattr(self.wrappedFactory, "logPrefix", None)
        return prefix() if prefix is not None else self.wrappedFactory.__class__.__name__  # type: ignore[no-any-return]

    def doStart(self) -> None:
        self.wrappedFactory.doStart()

    def doStop(self) -> None:
        self.wrappedFactory.doStop()

    def buildProtocol(self, addr: Any) -> Optional[TLSServerProtocol]:
        app = self.wrappedFactory.buildProtocol(addr)
        if app is None:
            return None
        proto = self._wrap(app)
        proto.factory = self
        return proto

    def _wrap(self, app: Any) -> TLSServerProtocol:
        return TLSServerProtocol(self._newObject, app)


class TLSClientProtocol(TLSServerProtocol):
    """
    The client side: the handshake starts as soon as the TCP connection is
    made, and nothing the application wrote is sent, nor anything received
    delivered, before the server's certificate has passed C{verify}.
    """

    _readsHello = False

    def __init__(
        self, newObject: Callable[[Any, Any], Any], wrappedProtocol: Any, verify: Optional[Callable[[Any], None]] = None
    ) -> None:
        """
        @param newObject: makes the client-side L{ssl.SSLObject} from the
            incoming and outgoing L{ssl.MemoryBIO}.
        @param wrappedProtocol: the application protocol.
        @param verify: called with the L{ssl.SSLObject} once the handshake
            is over; raises to refuse the server (its exception is the
            application's C{connectionLost} reason).  L{None}: no check
            beyond what the context does.
        """
        super().__init__(newObject, wrappedProtocol)
        self._verify = verify

    def makeConnection(self, transport: Any) -> None:
        super().makeConnection(transport)
        if self.disconnected or self._handshakeDone:
            return
        try:
            self._sslobj.do_handshake()
        except _WantRead:
            pass  # the ClientHello is in the outgoing BIO
        except (_SSLError, OSError) as e:
            self._failed(e)
            return
        self._flush()

    def _verified(self) -> bool:
        if self._verify is None:
            return True
        try:
            self._verify(self._sslobj)
        except Exception as e:  # service_identity raises several kinds
            self._failed(e)
            return False
        return True


class TLSClientFactory(TLSServerFactory):
    """
    Wraps the protocol of C{wrappedFactory} in L{TLSClientProtocol}, for a
    client endpoint's C{connect}.
    """

    def __init__(self, newObject: Callable[[Any, Any], Any], wrappedFactory: Any, verify: Optional[Callable[[Any], None]] = None) -> None:
        """
        @param newObject: makes the client-side L{ssl.SSLObject}.
        @param wrappedFactory: the application factory.
        @param verify: see L{TLSClientProtocol}.
        """
        super().__init__(newObject, wrappedFactory)
        self._verify = verify

    def _wrap(self, app: Any) -> TLSServerProtocol:
        return TLSClientProtocol(self._newObject, app, self._verify)
