# -*- test-case-name: tests.test_auth -*-
"""
Tests for L{txproxy.auth}: the htpasswd file, bcrypt checked off the
reactor thread, remembered results, the dummy check for unknown users.
"""

from __future__ import annotations

import os
import tempfile
import threading
from typing import Any, List

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase, TestCase

import txproxy.auth
from txproxy.auth import Htpasswd, ThreadPoolVerifier, VerificationBusy
from txproxy.testing import FakePasswordVerifier

#: "secret" as {SHA}.
SHA_SECRET = "{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ="


def _bcrypt(password: bytes, cost: int = 4) -> str:
    import bcrypt

    return bcrypt.hashpw(password, bcrypt.gensalt(cost)).decode().replace("$2b$", "$2y$")


def writeHtpasswd(case: SynchronousTestCase, text: str) -> str:
    """
    Write C{text} to a temporary file removed after the test.

    @return: its path.
    """
    fd, path = tempfile.mkstemp()
    os.write(fd, text.encode())
    os.close(fd)
    case.addCleanup(os.remove, path)
    return path


class HtpasswdTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.verifier = FakePasswordVerifier()
        self.bobHash = _bcrypt(b"pw", 5)
        self.path = writeHtpasswd(self, f"alice:{SHA_SECRET}\nbob:{self.bobHash}\n")
        self.htpasswd = Htpasswd(self.path, self.clock, self.verifier)

    def test_bcryptIsNotCheckedInline(self) -> None:
        """
        A bcrypt user's password is handed to the verifier (the thread
        pool) and the answer is a Deferred: nothing is decided on the
        calling thread.
        """
        d = self.htpasswd.verify("bob", "pw")
        self.assertIsInstance(d, defer.Deferred)
        self.assertNoResult(d)
        self.assertEqual(len(self.verifier.calls), 1)
        password, hashed, _ = self.verifier.calls[0]
        self.assertEqual(password, b"pw")
        # The $2y$ of htpasswd, in the $2b$ form bcrypt checks.
        self.assertEqual(hashed, b"$2b$" + self.bobHash[4:].encode())
        self.verifier.fire()
        self.assertIs(self.successResultOf(d), True)

    def test_shaIsCheckedInline(self) -> None:
        """
        C{{SHA}} hashes are cheap: answered at once, no verifier.
        """
        self.assertIs(self.htpasswd.verify("alice", "secret"), True)
        self.assertIs(self.htpasswd.verify("alice", "wrong"), False)
        self.assertEqual(self.verifier.calls, [])

    def test_successRemembered(self) -> None:
        """
        A successful bcrypt check is remembered for C{successTTL} seconds:
        the same credentials are then answered at once, without checking
        again; after that they are checked again.
        """
        d = self.htpasswd.verify("bob", "pw")
        self.verifier.fire()
        self.assertIs(self.successResultOf(d), True)
        self.clock.advance(self.htpasswd.successTTL - 1)
        self.assertIs(self.htpasswd.verify("bob", "pw"), True)
        self.assertEqual(len(self.verifier.calls), 1)
        self.clock.advance(1)
        d = self.htpasswd.verify("bob", "pw")
        self.assertIsInstance(d, defer.Deferred)
        self.assertEqual(len(self.verifier.calls), 2)

    def test_failureRememberedBriefly(self) -> None:
        """
        A failed check is remembered for C{failureTTL} seconds, shorter
        than a success; another password is checked anew.
        """
        self.assertLess(self.htpasswd.failureTTL, self.htpasswd.successTTL)
        d = self.htpasswd.verify("bob", "nope")
        self.verifier.fire()
        self.assertIs(self.successResultOf(d), False)
        self.assertIs(self.htpasswd.verify("bob", "nope"), False)
        self.assertEqual(len(self.verifier.calls), 1)
        self.assertIsInstance(self.htpasswd.verify("bob", "other"), defer.Deferred)
        self.clock.advance(self.htpasswd.failureTTL)
        self.assertIsInstance(self.htpasswd.verify("bob", "nope"), defer.Deferred)

    def test_cacheHoldsNoPassword(self) -> None:
        """
        The cache is keyed by a keyed hash of the credentials: neither the
        password nor an unkeyed digest of it is stored.
        """
        import hashlib

        d = self.htpasswd.verify("bob", "pw")
        self.verifier.fire()
        self.successResultOf(d)
        cache = self.htpasswd._cache
        self.assertEqual(len(cache), 1)
        [(key, value)] = cache.items()
        # (Not the bare two-byte password: a random 32-byte digest contains
        # b"pw" about once in 2,000 runs.)
        for plain in (b"bob:pw", b"bob\0pw", b"bobpw"):
            self.assertNotIn(plain, key)
        self.assertNotIn("'pw'", repr(value))
        self.assertNotEqual(key, hashlib.sha256(b"bob\0pw").digest())
        other = Htpasswd(self.path, self.clock, self.verifier)
        self.assertNotEqual(other._cacheKey("bob", "pw"), key)

    def test_concurrentChecksShareOne(self) -> None:
        """
        Several checks of the same credentials while one is running (a
        browser opening tunnels in parallel) wait for that one.
        """
        first = self.htpasswd.verify("bob", "pw")
        second = self.htpasswd.verify("bob", "pw")
        self.assertEqual(len(self.verifier.calls), 1)
        self.verifier.fire()
        self.assertIs(self.successResultOf(first), True)
        self.assertIs(self.successResultOf(second), True)

    def test_cancelledWaiterLeavesOthers(self) -> None:
        """
        One waiter cancelled (its client left) does not cancel the check the
        others wait for.
        """
        first = self.htpasswd.verify("bob", "pw")
        second = self.htpasswd.verify("bob", "pw")
        assert isinstance(first, defer.Deferred)
        first.cancel()
        self.failureResultOf(first, defer.CancelledError)
        self.verifier.fire()
        self.assertIs(self.successResultOf(second), True)

    def test_unknownUserPaysDummyVerification(self) -> None:
        """
        An unknown user is checked, like a known one, against a bcrypt hash
        of the same cost (one no password matches), so the time the answer
        takes does not say whether the user exists.
        """
        d = self.htpasswd.verify("eve", "pw")
        self.assertIsInstance(d, defer.Deferred)
        self.assertEqual(len(self.verifier.calls), 1)
        _, hashed, _ = self.verifier.calls[0]
        self.assertTrue(hashed.startswith(b"$2b$05$"), hashed)
        self.assertEqual(len(hashed), 60)
        self.assertNotEqual(hashed[7:29], self.bobHash[7:29].encode())
        self.assertIs(self.verifier.fire(), False)
        self.assertIs(self.successResultOf(d), False)

    def test_dummyIsCheckedForReal(self) -> None:
        """
        The dummy hash is one bcrypt accepts and checks (at full cost), not
        one it rejects at once.
        """
        import bcrypt

        self.htpasswd.verify("eve", "x")
        dummy = self.verifier.calls[0][1]
        # bcrypt computes the hash with the dummy's salt and cost: a
        # malformed salt would raise instead.
        self.assertFalse(bcrypt.checkpw(b"x", dummy))

    def test_dummyCostIsTheCommonCost(self) -> None:
        """
        With bcrypt entries of several costs, the dummy has the cost most
        entries have.
        """
        path = writeHtpasswd(
            self, f"a:{_bcrypt(b'1', 4)}\nb:{_bcrypt(b'2', 6)}\nc:{_bcrypt(b'3', 6)}\nd:{SHA_SECRET}\n")
        htpasswd = Htpasswd(path, self.clock, self.verifier)
        htpasswd.verify("nobody", "x")
        self.assertTrue(self.verifier.calls[-1][1].startswith(b"$2b$06$"))

    def test_unknownUserWithShaFileIsCheap(self) -> None:
        """
        In a file of C{{SHA}} hashes only, an unknown user is checked inline
        against a dummy C{{SHA}} hash, and fails.
        """
        path = writeHtpasswd(self, f"alice:{SHA_SECRET}\n")
        htpasswd = Htpasswd(path, self.clock, self.verifier)
        self.assertIs(htpasswd.verify("eve", "secret"), False)
        self.assertEqual(self.verifier.calls, [])

    def test_tooManyPending(self) -> None:
        """
        Beyond C{maxPending} checks waiting at once, another one is not
        started: L{VerificationBusy}.
        """
        self.htpasswd.maxPending = 2
        self.htpasswd.verify("bob", "1")
        self.htpasswd.verify("bob", "2")
        self.assertRaises(VerificationBusy, self.htpasswd.verify, "bob", "3")
        # The same credentials as a running check only wait for it.
        self.assertIsInstance(self.htpasswd.verify("bob", "1"), defer.Deferred)
        self.verifier.fire(0)
        self.assertIsInstance(self.htpasswd.verify("bob", "3"), defer.Deferred)

    def test_verifierErrorIsAFailedCheck(self) -> None:
        """
        A verifier that fails makes the check fail (and logs it); nothing
        is remembered.
        """
        d = self.htpasswd.verify("bob", "pw")
        self.verifier.calls[0][2].errback(RuntimeError("pool gone"))
        self.assertIs(self.successResultOf(d), False)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertIsInstance(self.htpasswd.verify("bob", "pw"), defer.Deferred)

    def test_reloadForgetsResults(self) -> None:
        """
        Re-reading the file forgets remembered results, and a check that
        was running across the reload is not remembered.
        """
        d = self.htpasswd.verify("bob", "pw")
        self.verifier.fire()
        self.successResultOf(d)
        running = self.htpasswd.verify("bob", "other")
        self.htpasswd.reload()
        self.verifier.fire()
        self.assertIs(self.successResultOf(running), False)
        self.assertIsInstance(self.htpasswd.verify("bob", "pw"), defer.Deferred)
        self.assertIsInstance(self.htpasswd.verify("bob", "other"), defer.Deferred)

    def test_checkIsBlockingButRight(self) -> None:
        """
        L{Htpasswd.check} (blocking) gives the same answers.
        """
        self.assertTrue(self.htpasswd.check("bob", "pw"))
        self.assertFalse(self.htpasswd.check("bob", "x"))
        self.assertFalse(self.htpasswd.check("eve", "pw"))
        self.assertTrue(self.htpasswd.check("alice", "secret"))
        self.assertEqual(self.verifier.calls, [])


class FakePasswordVerifierTests(SynchronousTestCase):
    def test_recordsAndFires(self) -> None:
        """
        The fake records each check and fires it with bcrypt's real answer
        when told.
        """
        import bcrypt

        verifier = FakePasswordVerifier()
        hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(4))
        good = verifier(b"pw", hashed)
        bad = verifier(b"no", hashed)
        self.assertEqual(verifier.pending, 2)
        self.assertNoResult(good)
        verifier.fireAll()
        self.assertIs(self.successResultOf(good), True)
        self.assertIs(self.successResultOf(bad), False)
        self.assertEqual(verifier.pending, 0)


class ThreadPoolVerifierTests(TestCase):
    """
    The real verifier, with a real thread pool and the running reactor.
    """

    def test_checksInAWorkerThread(self) -> defer.Deferred:
        """
        bcrypt runs in one of the pool's threads, never the reactor's, and
        the result arrives on the reactor thread.
        """
        from twisted.internet import reactor

        pool = ThreadPool(minthreads=0, maxthreads=1, name="test-auth")
        pool.start()
        self.addCleanup(pool.stop)
        threads: List[Any] = []
        real = txproxy.auth.checkBcrypt

        def recording(password: bytes, hashed: bytes) -> bool:
            threads.append(threading.current_thread())
            return real(password, hashed)

        self.patch(txproxy.auth, "checkBcrypt", recording)
        hashed = _bcrypt(b"pw").replace("$2y$", "$2b$").encode()
        d = ThreadPoolVerifier(pool, reactor)(b"pw", hashed)

        def done(result: bool) -> None:
            self.assertIs(result, True)
            self.assertEqual(len(threads), 1)
            self.assertIsNot(threads[0], threading.current_thread())
            self.assertIs(threading.current_thread(), threading.main_thread())

        return d.addCallback(done)


class SharedVerifierTests(SynchronousTestCase):
    def test_startedOnceStoppedAtShutdown(self) -> None:
        """
        The shared verifier's pool is made and started once, bounded to
        L{txproxy.auth.AUTH_THREADS} threads, and stopped by a trigger
        during the reactor's shutdown.
        """
        from twisted.internet.testing import MemoryReactor

        reactor = MemoryReactor()
        self.patch(txproxy.auth, "_shared", None)
        verifier = txproxy.auth.sharedVerifier(reactor)
        pool = verifier.pool
        self.addCleanup(lambda: pool.stop() if pool.started else None)
        self.assertIs(txproxy.auth.sharedVerifier(reactor), verifier)
        self.assertTrue(pool.started)
        self.assertEqual(pool.max, txproxy.auth.AUTH_THREADS)
        self.assertLessEqual(pool.max, 4)
        [(stop, args, kw)] = reactor.triggers["during"]["shutdown"]
        stop(*args, **kw)
        self.assertFalse(pool.started)
