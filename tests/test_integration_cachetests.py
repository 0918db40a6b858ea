"""
The outside referee: the HTTP WG's cache-tests suite (npm package
C{http-cache-tests}, pinned in C{scripts/test}, which installs it and Node
into C{.cache-tests/}) against a real C{twistd -n txproxy --mode reverse}
in front of the suite's own origin server, both on loopback.

The score (required tests passed, failures in the Vary, invalidation and
304-update groups) is asserted so that it cannot regress: raise
L{MIN_REQUIRED_PASSES} and lower L{MAX_GROUP_FAILURES} as the cache
improves.  Every failing required test is printed with its name (and is in
the failure message).  The scoring itself (L{bench/cachetests.py}, also
runnable by hand) is checked against results the suite publishes.

One run of the suite takes about 20 s, most of it the suite's own waits for
responses to go stale.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from typing import Any, Dict, List

from twisted.trial.unittest import SynchronousTestCase

from tests.procs import REPO, Twistd, freePort

# bench/ is not a package: load bench/cachetests.py by its path.
_spec = importlib.util.spec_from_file_location("_bench_cachetests", os.path.join(REPO, "bench", "cachetests.py"))
assert _spec is not None and _spec.loader is not None
cachetests: Any = sys.modules.setdefault("_bench_cachetests", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(cachetests)

#: The cache options of the proxy under test (CLI.md, "Caching").
CACHE_ARGS: List[str] = ["--cache", "64M"]

#: Required tests txproxy passes now, through the options above: 150 of
#: 165 on http-cache-tests 0.4.5 (136 before the conformance fixes of
#: issue #15; without a cache 49, as many as the origin alone: tests that
#: hold whether or not anything is stored).  The 9 required failures left
#: are all age-parse-* tests whose 0.4.5 expectations contradict RFC 9111
#: section 5.1, which txproxy follows (use the first member of a list,
#: ignore an invalid value) as the suite's later versions do; see
#: docs/cache.rst, "Conformance".  (The suite's GitHub tree, run by hand
#: with TXPROXY_CACHE_TESTS=DIR, scores 155 passed and 0 failed; not
#: asserted, CI cannot fetch it, and its totals differ.)
MIN_REQUIRED_PASSES = 150

#: Required tests of each group not passed now (failed, or not run because
#: a test they depend on did not pass).  The one 304-update test left,
#: 304-etag-update-response-Set-Cookie, is a setup failure by design: a
#: response with Set-Cookie is not stored without public/s-maxage, so the
#: second request is not conditional, the suite's origin answers it
#: "999 304 Not Generated", and the HTTP core refuses a status outside
#: 100-599 (502).  Target otherwise: 0 each.
MAX_GROUP_FAILURES: Dict[str, int] = {"vary": 0, "invalidation": 0, "304-update": 1}

#: Seconds the suite's client may take (0.4.5 takes about 20 on this
#: machine; the suite's GitHub tree, through TXPROXY_CACHE_TESTS, about
#: 105).
CLIENT_TIMEOUT = 300.0


class CacheTestsTests(SynchronousTestCase):
    """
    The suite against txproxy in reverse mode with L{CACHE_ARGS}.
    """

    def setUp(self) -> None:
        self.suite = cachetests.suiteDir()
        self.origin, self.originPort = cachetests.startOrigin(self.suite)
        self.addCleanup(self._stopOrigin)

    def _stopOrigin(self) -> None:
        if self.origin.poll() is None:
            self.origin.kill()
        self.origin.wait(10)

    def startProxy(self) -> int:
        port = freePort()
        proxy = Twistd(
            [
                "--mode", "reverse",
                "--listen", f"tcp:{port}:interface=127.0.0.1",
                "--route", f"*=http://127.0.0.1:{self.originPort}",
                "--access-log", "access.log",
                "--access-log-format", "json",
                *CACHE_ARGS,
            ],
            port,
        ).start()
        self.addCleanup(proxy.stop)
        self.proxy = proxy
        return port

    def proxyErrors(self) -> List[str]:
        """
        The access-log lines of the requests the proxy itself answered with
        a 5xx status (those with a reason: the origin's own 5xx, which the
        suite asks for, have none), shortened to method, target, status,
        upstream and reason.
        """
        path = os.path.join(self.proxy.cwd, "access.log")
        found = []
        with open(path) as f:
            for line in f:
                record = json.loads(line)
                if record["status"] >= 500 and record["reason"]:
                    found.append(
                        f"  {record['time']} {record['method']} {record['target']} {record['status']}"
                        f" upstream={record['upstream'] or '-'} reason={record['reason']}"
                    )
        return found

    def test_score(self) -> None:
        """
        Through txproxy, at least L{MIN_REQUIRED_PASSES} required tests
        pass, and no group has more failures than L{MAX_GROUP_FAILURES}
        allows.  The proxy stays up throughout.
        """
        port = self.startProxy()
        results = cachetests.runClient(self.suite, f"http://127.0.0.1:{port}", timeout=CLIENT_TIMEOUT)
        tests = cachetests.loadTests(self.suite)
        score = cachetests.score(tests, results)
        summary = f"cache-tests through txproxy {' '.join(CACHE_ARGS) or '(no cache)'}:\n{score.text()}"
        errors = self.proxyErrors()
        if errors:
            # What the proxy itself answered 5xx, and why (a failing test's
            # "status is 502" names no cause).
            summary += "\nproxy 5xx answers (access log):\n" + "\n".join(errors)
        sys.stdout.write(summary + "\n")
        self.assertIsNone(self.proxy.proc.poll(), "the proxy exited during the run")
        # Every test the client knows of has a result (nothing lost).
        counted = [t for t in tests.values() if not t.browser_only]
        self.assertEqual([t.id for t in counted if t.id not in results], [])
        self.assertGreaterEqual(score.requiredPassed, MIN_REQUIRED_PASSES, summary)
        for group, limit in MAX_GROUP_FAILURES.items():
            self.assertLessEqual(len(score.groupFailures[group]), limit, f"{group} group\n{summary}")
        self.assertNotIn("Traceback", self.proxy.stderr() + self.proxy.stdout())


class ScoringTests(SynchronousTestCase):
    """
    The scoring of L{bench/cachetests.py} reproduces the numbers published
    for other caches from the suite's own result files.
    """

    #: (required passed, required failed) from the suite's results folder,
    #: per layout: the npm package (0.4.x), and the GitHub tree behind
    #: cache-tests.fyi (the numbers issue #15 quotes).
    PUBLISHED = {
        "npm": {"squid.json": (122, 22), "trafficserver.json": (119, 34), "nginx.json": (94, 45)},
        "github": {"squid.json": (122, 17), "trafficserver.json": (132, 19), "nginx.json": (99, 33)},
    }

    def test_publishedResults(self) -> None:
        """
        Squid, Apache Traffic Server and nginx score what they are known to.
        """
        suite = cachetests.suiteDir()
        layout = "github" if os.path.isdir(os.path.join(suite, "test-engine")) else "npm"
        tests = cachetests.loadTests(suite)
        found = {}
        for name in self.PUBLISHED[layout]:
            with open(os.path.join(suite, "results", name)) as f:
                s = cachetests.score(tests, json.load(f))
            found[name] = (s.requiredPassed, s.requiredFailed)
        self.assertEqual(found, self.PUBLISHED[layout])

    def test_pinnedVersion(self) -> None:
        """
        The installed suite is the version C{scripts/test} pins (unless
        C{TXPROXY_CACHE_TESTS} names another on purpose).
        """
        with open(os.path.join(REPO, "scripts", "test")) as f:
            self.assertIn(f"CACHE_TESTS_VERSION={cachetests.SUITE_VERSION}\n", f.read())
        if os.environ.get("TXPROXY_CACHE_TESTS"):
            return
        with open(os.path.join(cachetests.suiteDir(), "package.json")) as f:
            self.assertEqual(json.load(f)["version"], cachetests.SUITE_VERSION)

    def test_dependencyFailureIsNotAFailure(self) -> None:
        """
        A required test whose dependency did not pass is neither passed nor
        failed, but it counts against its group; a setup failure likewise.
        """
        T = cachetests.Test
        tests = {
            "a": T("vary", "Vary", "a", "A", "required", []),
            "b": T("vary", "Vary", "b", "B", "required", ["a"]),
            "c": T("other", "Other", "c", "C", "required", []),
            "d": T("other", "Other", "d", "D", "optimal", []),
        }
        s = cachetests.score(tests, {"a": ["Assertion", "no"], "b": True, "c": ["Setup", "PUT failed"], "d": True})
        self.assertEqual((s.requiredPassed, s.requiredFailed, s.requiredOther), (0, 1, 2))
        self.assertEqual([f.id for f in s.failures], ["a"])
        self.assertEqual([f.id for f in s.groupFailures["vary"]], ["a", "b"])
        self.assertEqual(s.optionalPassed, 1)
        self.assertIn("a [vary] A -- Assertion no", s.text())
        # Not counted, each with why: a group's under its group, the rest
        # on their own (a setup failure there changes only the passes).
        self.assertEqual([f.id for f in s.notCounted], ["b", "c"])
        self.assertIn("(vary) b: B -- dependency_fail", s.text())
        self.assertIn("other required tests not counted:\n  c [other] C -- setup_fail: Setup PUT failed", s.text())
