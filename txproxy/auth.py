# -*- test-case-name: tests.test_auth -*-
"""
Proxy authentication against an Apache C{htpasswd} file.

Supported hash formats: bcrypt (C{$2y$}, C{$2b$}, C{$2a$}) and C{{SHA}}
(base64 of SHA-1), as written by C{htpasswd -B} and C{htpasswd -s}.  Other
formats (MD5 C{$apr1$}, crypt) are rejected when the file is read, naming
the line, rather than silently never matching.

bcrypt is deliberately slow (tens to hundreds of milliseconds), so
L{Htpasswd.verify} never runs it on the calling (reactor) thread: it hands
the check to a I{verifier} (by default a small, bounded thread pool started
with the first check and stopped with the reactor, see L{sharedVerifier})
and answers with a L{Deferred}.  Results are remembered for a short time
per credential, keyed by a keyed hash (HMAC-SHA-256 under a per-process
random key) of user and password, never the password itself: a success for
L{Htpasswd.successTTL} seconds, so that a keep-alive client or a browser
opening many tunnels pays once; a failure for L{Htpasswd.failureTTL}
seconds.  Concurrent checks of the same credentials share one
verification.  A user that is not in the file is checked against a dummy
hash of the cost most of the file's bcrypt hashes have, so that the time
an answer takes does not tell which users exist.  C{{SHA}} hashes are cheap
and are checked inline.  The cache is dropped when the file is re-read.
"""

from __future__ import annotations

import base64
import binascii
import collections
import hashlib
import hmac
import os
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from txproxy.errors import ConfigError

__all__ = [
    "Htpasswd",
    "ThreadPoolVerifier",
    "VerificationBusy",
    "parseBasic",
    "sharedVerifier",
]

log = Logger()

#: A verifier: C{(password, hashed)} (both bytes, the hash in C{$2b$}
#: form) to a Deferred firing with whether they match.  It must never run
#: bcrypt on the reactor thread.
Verifier = Callable[[bytes, bytes], "Deferred[bool]"]

#: Threads the shared verification pool runs at most.
AUTH_THREADS = min(4, os.cpu_count() or 1)


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


def checkBcrypt(password: bytes, hashed: bytes) -> bool:
    """
    Whether C{password} matches the bcrypt hash C{hashed}.  Blocking (this
    is the slow part): call it from a worker thread.  A password bcrypt
    cannot check (over 72 bytes) does not match.
    """
    import bcrypt

    try:
        return bool(bcrypt.checkpw(password, hashed))
    except ValueError:
        return False


def _checkSHA(password: str, hashed: str) -> bool:
    digest = base64.b64encode(hashlib.sha1(password.encode("utf-8")).digest()).decode()
    return hmac.compare_digest(digest, hashed[5:])


class VerificationBusy(Exception):
    """
    Too many bcrypt verifications are already waiting for the thread pool;
    this one was not started.
    """


class ThreadPoolVerifier:
    """
    Check bcrypt hashes in a L{twisted.python.threadpool.ThreadPool}, the
    result delivered on the reactor thread.

    @ivar pool: the thread pool.
    """

    def __init__(self, pool: Any, reactor: Any) -> None:
        self.pool = pool
        self._reactor = reactor

    def __call__(self, password: bytes, hashed: bytes) -> "Deferred[bool]":
        from twisted.internet.threads import deferToThreadPool

        return deferToThreadPool(self._reactor, self.pool, checkBcrypt, password, hashed)


_shared: Optional[ThreadPoolVerifier] = None


def sharedVerifier(reactor: Any = None) -> ThreadPoolVerifier:
    """
    The process's verifier: a pool of at most L{AUTH_THREADS} threads named
    C{txproxy-auth}, created and started on first use (so merely loading an
    auth file starts no thread) and stopped when the reactor shuts down.

    @param reactor: the reactor results are delivered on and whose shutdown
        stops the pool (L{None}: the global reactor).
    """
    global _shared
    if _shared is None:
        from twisted.python.threadpool import ThreadPool

        if reactor is None:
            from twisted.internet import reactor

        pool = ThreadPool(minthreads=0, maxthreads=AUTH_THREADS, name="txproxy-auth")
        pool.start()
        reactor.addSystemEventTrigger("during", "shutdown", pool.stop)
        _shared = ThreadPoolVerifier(pool, reactor)
    return _shared


class Htpasswd:
    """
    A parsed htpasswd file.

    @ivar path: the file's path.
    @ivar verifier: checks bcrypt hashes off the reactor thread (see
        L{Verifier}); L{None} for L{sharedVerifier}, looked up on first use.
    """

    #: Seconds a successful check is remembered.
    successTTL = 60.0
    #: Seconds a failed check is remembered (same user, same password).
    failureTTL = 5.0
    #: Most credentials remembered; the oldest are forgotten first.
    maxCached = 10000
    #: Most bcrypt verifications waiting or running at once; beyond it
    #: L{verify} raises L{VerificationBusy}.
    maxPending = 256

    def __init__(self, path: str, clock: Optional[IReactorTime] = None, verifier: Optional[Verifier] = None) -> None:
        self.path = path
        self.verifier = verifier
        # The global reactor, when None, is looked up on first use: loading
        # the file to validate it installs no reactor.
        self._clock: Optional[IReactorTime] = clock
        self._entries: Dict[str, str] = {}
        # key -> (hash, matched, expiry), oldest first.
        self._cache: "collections.OrderedDict[bytes, Tuple[str, bool, float]]" = collections.OrderedDict()
        self._inflight: Dict[bytes, List[Deferred]] = {}
        self._generation = 0
        self._key = os.urandom(32)
        self._dummy = ""
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
        self._dummy = self._dummyHash(entries)
        self._cache.clear()
        self._generation += 1

    @staticmethod
    def _dummyHash(entries: Dict[str, str]) -> str:
        """
        A hash no password matches, as costly to check as a typical entry:
        bcrypt at the cost most bcrypt entries have (a fresh random salt and
        an impossible checksum, made without running bcrypt), else C{{SHA}}.
        """
        costs = collections.Counter(h[4:6] for h in entries.values() if h.startswith("$2"))
        if not costs:
            return "{SHA}" + base64.b64encode(os.urandom(21)).decode()
        import bcrypt

        cost = costs.most_common(1)[0][0]
        rounds = int(cost) if cost.isdigit() and 4 <= int(cost) <= 31 else 12
        return bcrypt.gensalt(rounds).decode() + "." * 31

    def __len__(self) -> int:
        return len(self._entries)

    def _now(self) -> float:
        clock = self._clock
        if clock is None:
            from twisted.internet import reactor

            clock = self._clock = reactor
        return clock.seconds()

    def _cacheKey(self, user: str, password: str) -> bytes:
        message = user.encode("utf-8") + b"\0" + password.encode("utf-8")
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def verify(self, user: str, password: str) -> Union[bool, "Deferred[bool]"]:
        """
        Whether C{password} is C{user}'s: a C{bool} when it is known at once
        (a C{{SHA}} hash, or a remembered result), else a Deferred firing
        with one once a bcrypt hash was checked by L{verifier}, off the
        calling thread.  An unknown user costs the same as a wrong password.

        @raise VerificationBusy: L{maxPending} checks are already waiting.
        """
        hashed = self._entries.get(user)
        known = hashed is not None
        if hashed is None:
            hashed = self._dummy
        if hashed.startswith("{SHA}"):
            ok = _checkSHA(password, hashed)
            return ok and known
        key = self._cacheKey(user, password)
        cache = self._cache
        cached = cache.get(key)
        if cached is not None:
            if cached[0] == hashed and cached[2] > self._now():
                return cached[1]
            del cache[key]
        waiters = self._inflight.get(key)
        if waiters is None:
            if len(self._inflight) >= self.maxPending:
                raise VerificationBusy(f"{len(self._inflight)} password checks waiting")
            verifier = self.verifier
            if verifier is None:
                verifier = self.verifier = sharedVerifier()
            candidate = hashed.encode()
            if candidate.startswith(b"$2y$"):
                candidate = b"$2b$" + candidate[4:]
            waiters = self._inflight[key] = []
            try:
                checking = verifier(password.encode("utf-8"), candidate)
            except Exception:
                del self._inflight[key]
                raise
            checking.addBoth(self._checked, key, hashed, known, self._generation)
            if key not in self._inflight:
                # The verifier answered at once.
                cached = cache.get(key)
                return bool(cached is not None and cached[1])
        d: Deferred[bool] = Deferred()
        waiters.append(d)
        return d

    def _checked(self, result: Any, key: bytes, hashed: str, known: bool, generation: int) -> None:
        waiters = self._inflight.pop(key, [])
        if isinstance(result, Failure):
            log.failure("Checking a password failed", result)
            ok = False
        else:
            ok = bool(result) and known
            if generation == self._generation:
                self._remember(key, hashed, ok)
        for d in waiters:
            d.callback(ok)

    def _remember(self, key: bytes, hashed: str, ok: bool) -> None:
        cache = self._cache
        cache[key] = (hashed, ok, self._now() + (self.successTTL if ok else self.failureTTL))
        while len(cache) > self.maxCached:
            cache.popitem(last=False)

    def check(self, user: str, password: str) -> bool:
        """
        Whether C{password} is C{user}'s, checked on the calling thread
        (blocking for a bcrypt hash: the proxy itself uses L{verify}).
        """
        hashed = self._entries.get(user)
        if hashed is None:
            hashed = self._dummy
            known = False
        else:
            known = True
        if hashed.startswith("{SHA}"):
            return _checkSHA(password, hashed) and known
        candidate = hashed.encode()
        if candidate.startswith(b"$2y$"):
            candidate = b"$2b$" + candidate[4:]
        return checkBcrypt(password.encode("utf-8"), candidate) and known
