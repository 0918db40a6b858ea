# -*- test-case-name: tests.test_clienthello -*-
"""
A sans-IO reader for the TLS ClientHello, for routing a TLS connection by its
server name without decrypting it.

Bytes in, one L{ClientHello} or one L{ClientHelloError} out; no transport,
no reactor.  The reader copes with a ClientHello split across TCP segments at
any byte and with a ClientHello handshake message fragmented over several
TLS records (RFC 8446 section 5.1 allows both).  It never changes the bytes:
a caller that relays the connection keeps what it fed and replays it
upstream once it has picked the destination (L{ClientHello.raw} holds the
bytes of the records that carried the ClientHello, for convenience).

Usage::

    reader = ClientHelloReader()
    def dataReceived(self, data):
        self._buffer.append(data)
        try:
            hello = reader.feed(data)
        except ClientHelloError as e:
            ...  # log e.reason, close
        if hello is None:
            return  # wait for more bytes
        route = chooseByName(hello.serverName)
        ...  # connect, then write b"".join(self._buffer) upstream
"""

from __future__ import annotations

import re
from typing import List, Optional, Set, Tuple

import attr

__all__ = ["ClientHello", "ClientHelloError", "ClientHelloReader", "ServerNameError", "UNRECOGNIZED_NAME_ALERT"]

_RECORD_HEADER = 5
_HANDSHAKE_HEADER = 4
_CONTENT_TYPE_HANDSHAKE = 22
_HANDSHAKE_CLIENT_HELLO = 1
_MAX_RECORD_PAYLOAD = 2**14

_EXT_SERVER_NAME = 0
_EXT_ALPN = 16
_EXT_SUPPORTED_VERSIONS = 43
_NAME_TYPE_HOST_NAME = 0

_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\Z")


class ClientHelloError(Exception):
    """
    The bytes are not the start of a TLS connection that this reader
    accepts: not a TLS handshake record, not a ClientHello, inconsistent
    lengths, too large, an SSLv2-compatible hello, or an invalid server
    name.

    @ivar reason: a short, human-readable explanation, suitable for a log
        line (it never contains more than a few bytes of the input).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ServerNameError(ClientHelloError):
    """
    The C{server_name} extension's C{host_name} is not a valid DNS host
    name (not ASCII, an empty or too long name, a bad label, an IP
    literal): a server answers it with a fatal C{unrecognized_name} alert
    (L{UNRECOGNIZED_NAME_ALERT}).

    @ivar ascii: whether the name was ASCII at all (what the standard
        library's C{ssl} server-name callback cannot take is not).
    """

    def __init__(self, reason: str, ascii: bool = True) -> None:
        super().__init__(reason)
        self.ascii = ascii


#: A fatal TLS alert, C{unrecognized_name} (112), in a TLS 1.0 record (what
#: servers send before a version is negotiated).
UNRECOGNIZED_NAME_ALERT = b"\x15\x03\x01\x00\x02\x02\x70"


@attr.s(frozen=True, auto_attribs=True)
class ClientHello:
    """
    What a TLS router needs to know from a ClientHello.

    @ivar serverName: the C{host_name} of the C{server_name} extension
        (SNI), lower-cased, with one trailing dot removed, and validated as a
        DNS name (ASCII letters, digits, C{-} and C{_}; labels of 1 to 63
        characters not starting or ending with C{-}; at most 253 characters;
        last label not all digits, so IP literals are refused as RFC 6066
        requires).  C{None} when the client sent no SNI.
    @ivar alpn: the ALPN protocol names in the client's order, each decoded
        as ISO-8859-1 so that C{name.encode("latin-1")} gives back the exact
        bytes; empty when the extension is absent.
    @ivar legacyVersion: the ClientHello's C{legacy_version} field, e.g.
        C{0x0303} (TLS 1.2; TLS 1.3 clients send this too).
    @ivar supportedVersions: the versions of the C{supported_versions}
        extension, in the client's order, e.g. C{(0x0304, 0x0303)}; empty
        when the extension is absent (a client that cannot do TLS 1.3).
    @ivar raw: the exact bytes of the TLS records that carried the
        ClientHello, from the first byte of the connection.  Bytes fed after
        them (if any) are not included.
    """

    serverName: Optional[str]
    alpn: Tuple[str, ...]
    legacyVersion: int
    supportedVersions: Tuple[int, ...]
    raw: bytes = attr.ib(repr=False)


class _Cursor:
    """
    Reads length-prefixed TLS structures from a bytes object, raising
    L{ClientHelloError} on any overrun.
    """

    def __init__(self, data: bytes, what: str) -> None:
        self._data = data
        self._pos = 0
        self._what = what

    def remaining(self) -> int:
        return len(self._data) - self._pos

    def take(self, n: int, what: str) -> bytes:
        if n > len(self._data) - self._pos:
            raise ClientHelloError("%s: %s runs past its end" % (self._what, what))
        chunk = self._data[self._pos : self._pos + n]
        self._pos += n
        return chunk

    def uint(self, size: int, what: str) -> int:
        return int.from_bytes(self.take(size, what), "big")

    def vector(self, lengthSize: int, what: str, minimum: int, maximum: int) -> bytes:
        length = self.uint(lengthSize, what + " length")
        if not minimum <= length <= maximum:
            raise ClientHelloError(
                "%s: %s length %d outside %d..%d" % (self._what, what, length, minimum, maximum)
            )
        return self.take(length, what)

    def expectEnd(self) -> None:
        if self._pos != len(self._data):
            raise ClientHelloError(
                "%s: %d unexpected trailing bytes" % (self._what, len(self._data) - self._pos)
            )


def _hostName(data: bytes) -> str:
    """
    Validate and normalize an SNI C{host_name}.

    @param data: the C{HostName} bytes.
    @return: the lower-cased name without a trailing dot.
    @raise ServerNameError: if it is not a valid DNS host name.
    """
    try:
        name = data.decode("ascii").lower()
    except UnicodeDecodeError:
        raise ServerNameError("server_name: host_name is not ASCII", ascii=False) from None
    if name.endswith("."):
        name = name[:-1]
    if not name or len(name) > 253:
        raise ServerNameError("server_name: host_name length %d is not valid" % (len(data),))
    labels = name.split(".")
    for label in labels:
        if _LABEL.match(label) is None:
            raise ServerNameError("server_name: %r is not a valid DNS name" % (name[:64],))
    if labels[-1].isdigit():
        raise ServerNameError("server_name: %r is an IP literal, not a DNS name" % (name[:64],))
    return name


def _serverName(data: bytes) -> str:
    cursor = _Cursor(data, "server_name")
    names = _Cursor(cursor.vector(2, "server_name_list", 1, 0xFFFF), "server_name")
    cursor.expectEnd()
    hostName: Optional[str] = None
    while names.remaining():
        nameType = names.uint(1, "name_type")
        if nameType != _NAME_TYPE_HOST_NAME:
            # RFC 6066 defines no other type, and an unknown type's length
            # cannot be known, so the list cannot be read past it.
            raise ClientHelloError("server_name: unknown name_type %d" % (nameType,))
        value = names.vector(2, "host_name", 1, 0xFFFF)
        if hostName is not None:
            raise ClientHelloError("server_name: more than one host_name")
        hostName = _hostName(value)
    assert hostName is not None
    return hostName


def _alpn(data: bytes) -> Tuple[str, ...]:
    cursor = _Cursor(data, "application_layer_protocol_negotiation")
    names = _Cursor(
        cursor.vector(2, "protocol_name_list", 2, 0xFFFF), "application_layer_protocol_negotiation"
    )
    cursor.expectEnd()
    result: List[str] = []
    while names.remaining():
        result.append(names.vector(1, "protocol_name", 1, 0xFF).decode("latin-1"))
    return tuple(result)


def _supportedVersions(data: bytes) -> Tuple[int, ...]:
    cursor = _Cursor(data, "supported_versions")
    versions = cursor.vector(1, "versions", 2, 254)
    cursor.expectEnd()
    if len(versions) % 2:
        raise ClientHelloError("supported_versions: odd length %d" % (len(versions),))
    return tuple(
        int.from_bytes(versions[i : i + 2], "big") for i in range(0, len(versions), 2)
    )


def parseClientHelloBody(body: bytes, raw: bytes = b"") -> ClientHello:
    """
    Parse the body of a ClientHello handshake message (without the 4-byte
    handshake header).

    @param body: the message body.
    @param raw: the value for L{ClientHello.raw}.
    @return: the parsed hello.
    @raise ClientHelloError: if the body is malformed.
    """
    cursor = _Cursor(body, "ClientHello")
    legacyVersion = cursor.uint(2, "legacy_version")
    if legacyVersion >> 8 != 3:
        raise ClientHelloError("ClientHello: legacy_version 0x%04x is not TLS" % (legacyVersion,))
    cursor.take(32, "random")
    cursor.vector(1, "legacy_session_id", 0, 32)
    suites = cursor.vector(2, "cipher_suites", 2, 0xFFFE)
    if len(suites) % 2:
        raise ClientHelloError("ClientHello: odd cipher_suites length %d" % (len(suites),))
    cursor.vector(1, "legacy_compression_methods", 1, 0xFF)
    serverName: Optional[str] = None
    alpn: Tuple[str, ...] = ()
    supportedVersions: Tuple[int, ...] = ()
    if cursor.remaining():
        # Extensions are optional before TLS 1.3; when present they must
        # fill the rest of the message exactly.
        extensions = _Cursor(cursor.vector(2, "extensions", 0, 0xFFFF), "extensions")
        cursor.expectEnd()
        seen: Set[int] = set()
        while extensions.remaining():
            extensionType = extensions.uint(2, "extension_type")
            data = extensions.vector(2, "extension_data", 0, 0xFFFF)
            if extensionType in seen:
                raise ClientHelloError("extensions: extension %d appears twice" % (extensionType,))
            seen.add(extensionType)
            if extensionType == _EXT_SERVER_NAME:
                serverName = _serverName(data)
            elif extensionType == _EXT_ALPN:
                alpn = _alpn(data)
            elif extensionType == _EXT_SUPPORTED_VERSIONS:
                supportedVersions = _supportedVersions(data)
    return ClientHello(
        serverName=serverName,
        alpn=alpn,
        legacyVersion=legacyVersion,
        supportedVersions=supportedVersions,
        raw=raw,
    )


class ClientHelloReader:
    """
    Incrementally reads the ClientHello at the start of a TLS connection.

    Feed it the connection's bytes as they arrive with L{feed}.  It buffers
    at most C{maxSize} bytes (record headers included); a ClientHello that
    needs more is refused.  Once L{feed} has returned a L{ClientHello} it
    returns that same object on every later call (and ignores the new bytes);
    once it has raised L{ClientHelloError} it raises the same error again.

    @cvar defaultMaxSize: the default for C{maxSize}: one full-size TLS
        record plus room for record headers and for a ClientHello fragmented
        over several records.  Subclasses may change it.
    """

    defaultMaxSize: int = _MAX_RECORD_PAYLOAD + 2048

    def __init__(self, maxSize: Optional[int] = None) -> None:
        """
        @param maxSize: the most bytes to buffer before giving up; C{None}
            for L{defaultMaxSize}.
        """
        if maxSize is None:
            maxSize = self.defaultMaxSize
        if maxSize < _RECORD_HEADER + _HANDSHAKE_HEADER:
            raise ValueError("maxSize %d is too small for any ClientHello" % (maxSize,))
        self.maxSize = maxSize
        self._buffer = bytearray()
        # Offset in _buffer of the first record not yet taken apart.
        self._recordStart = 0
        # Handshake-layer bytes from the records taken apart so far.
        self._handshake = bytearray()
        self._result: Optional[ClientHello] = None
        self._error: Optional[ClientHelloError] = None

    def feed(self, data: bytes) -> Optional[ClientHello]:
        """
        Add bytes received from the client.

        @param data: the next bytes of the connection (may be empty).
        @return: the L{ClientHello} once it is complete, C{None} while more
            bytes are needed.
        @raise ClientHelloError: if the bytes cannot be the start of a TLS
            connection with a well-formed ClientHello, or the ClientHello
            would exceed C{maxSize}.
        """
        if self._result is not None:
            return self._result
        if self._error is not None:
            raise self._error
        try:
            return self._feed(data)
        except ClientHelloError as e:
            self._error = e
            self._buffer = bytearray()
            self._handshake = bytearray()
            raise

    def _feed(self, data: bytes) -> Optional[ClientHello]:
        # Take no more than could ever be used, so the cap holds however
        # much one call brings.
        room = self.maxSize - len(self._buffer)
        self._buffer += data[: room + 1]
        while True:
            header = bytes(self._buffer[self._recordStart : self._recordStart + _RECORD_HEADER])
            self._checkRecordHeader(header)
            if len(header) < _RECORD_HEADER:
                break
            length = int.from_bytes(header[3:5], "big")
            end = self._recordStart + _RECORD_HEADER + length
            if end > self.maxSize:
                raise ClientHelloError(
                    "ClientHello larger than the %d-byte limit" % (self.maxSize,)
                )
            if len(self._buffer) < end:
                if len(self._handshake) < _HANDSHAKE_HEADER:
                    # Check the handshake header from a partial record, so
                    # that a wrong message type or a huge length is refused
                    # without waiting for the whole record.
                    start = self._recordStart + _RECORD_HEADER
                    self._checkHandshakeHeader(
                        bytes(self._handshake) + bytes(self._buffer[start : start + 4])
                    )
                break
            self._handshake += self._buffer[self._recordStart + _RECORD_HEADER : end]
            self._recordStart = end
            hello = self._checkHandshake()
            if hello is not None:
                self._result = hello
                self._buffer = bytearray()
                self._handshake = bytearray()
                return hello
        if len(self._buffer) > self.maxSize:
            raise ClientHelloError("ClientHello larger than the %d-byte limit" % (self.maxSize,))
        return None

    def _checkRecordHeader(self, header: bytes) -> None:
        """
        Check as much of a record header as has arrived, so that garbage
        (say, a plain HTTP request) is refused from its first byte.
        """
        if not header:
            return
        contentType = header[0]
        if contentType != _CONTENT_TYPE_HANDSHAKE:
            if self._recordStart == 0 and contentType & 0x80:
                raise ClientHelloError(
                    "SSLv2-style record header (first byte 0x%02x) is not supported"
                    % (contentType,)
                )
            raise ClientHelloError(
                "not a TLS handshake record (content type %d)" % (contentType,)
            )
        if len(header) >= 2 and header[1] != 3:
            raise ClientHelloError("record version major %d is not TLS" % (header[1],))
        if len(header) == _RECORD_HEADER:
            length = int.from_bytes(header[3:5], "big")
            if length == 0:
                raise ClientHelloError("empty handshake record")
            if length > _MAX_RECORD_PAYLOAD:
                raise ClientHelloError(
                    "record length %d exceeds %d" % (length, _MAX_RECORD_PAYLOAD)
                )

    def _checkHandshakeHeader(self, header: bytes) -> None:
        """
        Check as much of the handshake message header as is known.

        @param header: up to the first 4 bytes of the handshake layer.
        """
        if not header:
            return
        if header[0] != _HANDSHAKE_CLIENT_HELLO:
            raise ClientHelloError("handshake message type %d is not ClientHello" % (header[0],))
        if len(header) >= _HANDSHAKE_HEADER:
            length = int.from_bytes(header[1:4], "big")
            if length + _HANDSHAKE_HEADER > self.maxSize:
                raise ClientHelloError(
                    "ClientHello of %d bytes exceeds the %d-byte limit" % (length, self.maxSize)
                )

    def _checkHandshake(self) -> Optional[ClientHello]:
        """
        Look at the handshake bytes gathered so far; parse the ClientHello if
        it is complete.
        """
        handshake = self._handshake
        self._checkHandshakeHeader(bytes(handshake[:_HANDSHAKE_HEADER]))
        if len(handshake) < _HANDSHAKE_HEADER:
            return None
        total = _HANDSHAKE_HEADER + int.from_bytes(handshake[1:4], "big")
        if len(handshake) < total:
            return None
        if len(handshake) > total:
            raise ClientHelloError(
                "%d unexpected bytes after the ClientHello in its record"
                % (len(handshake) - total,)
            )
        return parseClientHelloBody(
            bytes(handshake[_HANDSHAKE_HEADER:]), raw=bytes(self._buffer[: self._recordStart])
        )
