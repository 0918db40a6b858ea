# -*- test-case-name: tests.test_testing -*-
"""
Small fakes: a TLS ClientHello to feed an sni listener, and a password
verifier that checks only when the test says so.
"""

from __future__ import annotations

import struct
from typing import List, Optional, Sequence, Tuple

from twisted.internet import defer

from txproxy.auth import checkBcrypt


def clientHello(serverName: Optional[str] = None, alpn: Sequence[str] = ()) -> bytes:
    """
    The bytes a TLS client sends first: one TLS record holding a
    ClientHello (TLS 1.3 and 1.2 offered) with C{serverName} as its SNI, to
    feed an C{sni} listener's protocol.

    @param serverName: the server name, or L{None} for no SNI extension.
    @param alpn: ALPN protocol names to offer (C{("h2", "http/1.1")}).
    @return: the record.
    """

    def extension(kind: int, data: bytes) -> bytes:
        return struct.pack("!HH", kind, len(data)) + data

    extensions = b""
    if serverName is not None:
        name = serverName.encode("idna")
        entry = struct.pack("!BH", 0, len(name)) + name
        extensions += extension(0, struct.pack("!H", len(entry)) + entry)
    if alpn:
        names = b"".join(struct.pack("!B", len(n)) + n for n in (p.encode("latin-1") for p in alpn))
        extensions += extension(16, struct.pack("!H", len(names)) + names)
    extensions += extension(43, b"\x04\x03\x04\x03\x03")
    suites = b"\x13\x01\x13\x02\xc0\x2f"
    body = (
        b"\x03\x03"
        + b"\x42" * 32
        + b"\x20"
        + b"\x01" * 32
        + struct.pack("!H", len(suites))
        + suites
        + b"\x01\x00"
        + struct.pack("!H", len(extensions))
        + extensions
    )
    message = b"\x01" + len(body).to_bytes(3, "big") + body
    return struct.pack("!BHH", 22, 0x0301, len(message)) + message


class FakePasswordVerifier:
    """
    A stand-in for the thread pool that checks C{--auth}'s bcrypt hashes
    (L{txproxy.auth.Htpasswd.verifier}, or a factory's
    C{passwordVerifier}): each check is recorded and waits until the test
    fires it, on the test's thread.

    @ivar calls: the C{(password, hashed, deferred)} of every check, in
        order.
    """

    def __init__(self) -> None:
        self.calls: List[Tuple[bytes, bytes, "defer.Deferred[bool]"]] = []

    def __call__(self, password: bytes, hashed: bytes) -> "defer.Deferred[bool]":
        d: defer.Deferred[bool] = defer.Deferred()
        self.calls.append((password, hashed, d))
        return d

    @property
    def pending(self) -> int:
        """
        How many checks have not been fired yet.
        """
        return sum(1 for _, _, d in self.calls if not d.called)

    def fire(self, index: int = -1) -> bool:
        """
        Check call C{index} for real (bcrypt, on this thread) and fire its
        Deferred with the result.

        @return: the result.
        """
        password, hashed, d = self.calls[index]
        result = checkBcrypt(password, hashed)
        d.callback(result)
        return result

    def fireAll(self) -> None:
        """
        Fire every check not fired yet, in order.
        """
        for index, (_, _, d) in enumerate(list(self.calls)):
            if not d.called:
                self.fire(index)
