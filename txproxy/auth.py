# -*- test-case-name: tests.test_auth -*-
"""
Proxy authentication against an Apache C{htpasswd} file.

Supported hash formats: bcrypt (C{$2y$}, C{$2b$}, C{$2a$}) and C{{SHA}}
(base64 of SHA-1), as written by C{htpasswd -B} and C{htpasswd -s}.  Other
formats (MD5 C{$apr1$}, crypt) are rejected when the file is read, naming
the line, rather than silently never matching.

bcrypt is deliberately slow (tens of milliseconds); a successful check is
remembered (keyed by a salted SHA-256 of the credentials, never the password
itself) so that a keep-alive client or a browser opening many tunnels pays
for it once, not per request.  The cache is dropped when the file is
re-read.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from typing import Dict, Optional, Tuple

from txproxy.errors import ConfigError

__all__ = ["Htpasswd", "parseBasic"]


def parseBasic(value: Optional[bytes]) -> Optional[Tuple[str, str]]:
    """
    Decode a C{Basic} credentials header value into C{(user, password)}, or
    L{None} when it is missing or malformed.
    """
    if not value:
        return None
    scheme, _, token = value.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    if not sep:
        return None
    return user, password


class Htpasswd:
    """
    A parsed htpasswd file.

    @ivar path: the file's path.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._entries: Dict[str, str] = {}
        self._verified: Dict[bytes, str] = {}
        self._salt = os.urandom(16)
        self.reload()

    def reload(self) -> None:
        """
        Re-read the file.

        @raise ConfigError: the file is unreadable or has a line that is not
            C{user:hash} with a supported hash.
        """
        try:
            with open(self.path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read auth file {self.path}: {getattr(e, 'strerror', None) or e}")
        entries: Dict[str, str] = {}
        for n, line in enumerate(lines, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            user, sep, hashed = line.partition(":")
            if not sep or not user or not hashed:
                raise ConfigError(f"{self.path}:{n}: expected user:hash")
            if not (hashed.startswith(("$2y$", "$2b$", "$2a$", "{SHA}"))):
                raise ConfigError(
                    f"{self.path}:{n}: unsupported hash for {user!r} (use htpasswd -B for bcrypt or -s for SHA)"
                )
            entries[user] = hashed
        self._entries = entries
        self._verified = {}

    def __len__(self) -> int:
        return len(self._entries)

    def _cacheKey(self, user: str, password: str) -> bytes:
        return hashlib.sha256(self._salt + user.encode() + b"\0" + password.encode()).digest()

    def check(self, user: str, password: str) -> bool:
        """
        Whether C{password} is C{user}'s.  Comparisons are constant-time; an
        unknown user costs the same as a wrong password for C{{SHA}}.
        """
        hashed = self._entries.get(user)
        if hashed is None:
            return False
        key = self._cacheKey(user, password)
        if self._verified.get(key) == hashed:
            return True
        if hashed.startswith("{SHA}"):
            digest = base64.b64encode(hashlib.sha1(password.encode("utf-8")).digest()).decode()
            ok = hmac.compare_digest(digest, hashed[5:])
        else:
            import bcrypt

            candidate = hashed.encode()
            if candidate.startswith(b"$2y$"):
                candidate = b"$2b$" + candidate[4:]
            try:
                ok = bcrypt.checkpw(password.encode("utf-8"), candidate)
            except ValueError:
                ok = False
        if ok:
            if len(self._verified) > 10000:
                self._verified.clear()
            self._verified[key] = hashed
        return ok
