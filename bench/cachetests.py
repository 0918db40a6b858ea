#!/usr/bin/env python3
"""
The HTTP WG's cache-tests suite (npm package C{http-cache-tests}, the data
behind cache-tests.fyi) as a score: required tests passed and failed, and
the failures in the groups txproxy must not fail (Vary, invalidation, 304
updates).

By hand, against any reverse proxy whose upstream is the suite's origin:

    # the suite's origin on 127.0.0.1:8000, a proxy in front of it, then:
    bench/cachetests.py --origin-port 8000 --base http://127.0.0.1:8080/

    # or: only start the origin (prints its port) and leave it running
    bench/cachetests.py --origin-port 8000 --serve

    # the origin alone, nothing in between (the suite's baseline)
    bench/cachetests.py --origin-port 0

C{--base} is the URL the suite's client sends every request to (the proxy);
without it, the origin itself.  C{--json FILE} keeps the raw results.  The
suite is looked for in C{$TXPROXY_CACHE_TESTS} or C{.cache-tests/} of the
checkout (where C{scripts/test} installs it, pinned to L{SUITE_VERSION}).

A test's outcome is the suite's own (C{determineTestResult} in its
C{lib/display.mjs} / C{test-engine/lib/results.mjs}): a test whose
dependency did not pass counts as neither passed nor failed, like a setup
failure, a harness failure or a retry.

tests/test_integration_cachetests.py imports this module.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

#: The version scripts/test installs.
SUITE_VERSION = "0.4.5"

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
HELPER = os.path.join(HERE, "cachetests.mjs")

#: The suites whose failures the project does not accept (issue #15).
GROUPS: Dict[str, Tuple[str, ...]] = {
    "vary": ("vary", "vary-parse"),
    "invalidation": ("invalidation",),
    "304-update": ("update304",),
}

PASS, FAIL, OPTIONAL_FAIL, YES, NO = "pass", "fail", "optional_fail", "yes", "no"
SETUP_FAIL, HARNESS_FAIL, DEPENDENCY_FAIL, RETRY, UNTESTED = (
    "setup_fail", "harness_fail", "dependency_fail", "retry", "untested",
)


class SuiteError(Exception):
    """
    The suite is missing, or its origin or client did not run.
    """


def suiteDir() -> str:
    """
    The installed package's directory.

    @raise SuiteError: when it is not installed.
    """
    candidates = [
        os.environ.get("TXPROXY_CACHE_TESTS"),
        os.path.join(ROOT, ".cache-tests", "node_modules", "http-cache-tests"),
    ]
    for path in candidates:
        if path and os.path.isfile(os.path.join(path, "tests", "index.mjs")):
            return path
    raise SuiteError(
        "the cache-tests suite is not installed: scripts/test installs it "
        f"(npm install --prefix .cache-tests http-cache-tests@{SUITE_VERSION}), "
        "or set TXPROXY_CACHE_TESTS to its directory"
    )


def node() -> str:
    path = shutil.which("node") or shutil.which("nodejs")
    if path is None:
        raise SuiteError("node not found: scripts/test installs it (Debian nodejs)")
    return path


def clientScript(suite: str) -> str:
    modern = os.path.join(suite, "test-engine", "cli.mjs")
    return modern if os.path.exists(modern) else os.path.join(suite, "cli.mjs")


@dataclass
class Test:
    suite: str
    suiteName: str
    id: str
    name: str
    kind: str
    depends_on: List[str]
    browser_only: bool = False
    cdn_only: bool = False


def loadTests(suite: str) -> Dict[str, Test]:
    """
    Every test of the suite by id, read by the helper script.
    """
    out = subprocess.run(
        [node(), HELPER, "meta", suite], capture_output=True, timeout=60, check=False
    )
    if out.returncode != 0:
        raise SuiteError(f"reading the tests failed: {out.stderr.decode(errors='replace')[-2000:]}")
    return {t["id"]: Test(**t) for t in json.loads(out.stdout)}


def outcome(tests: Dict[str, Test], testId: str, results: Dict[str, Any], honorDependencies: bool = True) -> str:
    """
    The suite's verdict on one test (its C{determineTestResult}).
    """
    test = tests[testId]
    result = results.get(testId)
    if result is None:
        return UNTESTED
    if honorDependencies:
        for dep in test.depends_on:
            if dep in tests and outcome(tests, dep, results) not in (PASS, YES):
                return DEPENDENCY_FAIL
    if isinstance(result, list) and result and result[0] == "Setup":
        return RETRY if len(result) > 1 and result[1] == "retry" else SETUP_FAIL
    if isinstance(result, list) and result and result[0] == "AbortError":
        return HARNESS_FAIL
    if test.kind == "required":
        return PASS if result is True else FAIL
    if test.kind == "optimal":
        return PASS if result is True else OPTIONAL_FAIL
    if test.kind == "check":
        return YES if result is True else NO
    raise SuiteError(f"unknown test kind {test.kind!r} of {testId}")


@dataclass
class Failure:
    id: str
    name: str
    suite: str
    detail: str


@dataclass
class Score:
    """
    A run's summary.

    @ivar requiredPassed: required tests passed.
    @ivar requiredFailed: required tests failed.
    @ivar requiredOther: required tests neither (dependency, setup or
        harness failures, retries, untested).
    @ivar failures: every required test failed, in suite order.
    @ivar notCounted: every required test neither passed nor failed (with
        its verdict and the suite's reason), in suite order.
    @ivar groupFailures: per L{GROUPS} name, the failures of its suites
        (dependency failures included: a Vary test not run is not a Vary
        test passed).
    """

    requiredPassed: int = 0
    requiredFailed: int = 0
    requiredOther: int = 0
    optionalPassed: int = 0
    optionalFailed: int = 0
    failures: List[Failure] = field(default_factory=list)
    others: List[Tuple[str, str]] = field(default_factory=list)
    notCounted: List[Failure] = field(default_factory=list)
    groupFailures: Dict[str, List[Failure]] = field(default_factory=dict)

    def text(self) -> str:
        lines = [
            f"required: {self.requiredPassed} passed, {self.requiredFailed} failed, "
            f"{self.requiredOther} not counted (dependency/setup/harness/untested)",
            f"optimal:  {self.optionalPassed} passed, {self.optionalFailed} not optimal",
        ]
        for group, failures in self.groupFailures.items():
            lines.append(f"{group} group: {len(failures)} failing")
        lines.append("failing required tests:")
        for f in self.failures:
            detail = f" -- {f.detail}" if f.detail else ""
            lines.append(f"  {f.id} [{f.suite}] {f.name}{detail}")
        for group, failures in self.groupFailures.items():
            for f in failures:
                if f not in self.failures:
                    lines.append(f"  ({group}) {f.id}: {f.name} -- {f.detail}")
        grouped = [f for failures in self.groupFailures.values() for f in failures]
        rest = [f for f in self.notCounted if f not in grouped]
        if rest:
            # (A setup failure outside the groups changes no group's count,
            # only the passes: say which and why.)
            lines.append("other required tests not counted:")
            for f in rest:
                lines.append(f"  {f.id} [{f.suite}] {f.name} -- {f.detail}")
        return "\n".join(lines)


def score(tests: Dict[str, Test], results: Dict[str, Any], includeCDN: bool = True) -> Score:
    """
    Count the outcomes of C{results} (the client's JSON) over C{tests}.
    Browser-only tests are left out (a proxy is not a browser); CDN-only
    ones count unless C{includeCDN} is false.
    """
    s = Score(groupFailures={g: [] for g in GROUPS})
    groupOf = {suite: g for g, suites in GROUPS.items() for suite in suites}
    for test in tests.values():
        if test.browser_only or (test.cdn_only and not includeCDN):
            continue
        verdict = outcome(tests, test.id, results)
        raw = results.get(test.id)
        detail = ""
        if isinstance(raw, list):
            detail = " ".join(str(x) for x in raw[:2])
        if verdict != FAIL:
            detail = f"{verdict}: {detail}" if detail else verdict
        failure = Failure(test.id, test.name, test.suite, detail)
        if test.kind == "required":
            if verdict == PASS:
                s.requiredPassed += 1
            elif verdict == FAIL:
                s.requiredFailed += 1
                s.failures.append(failure)
            else:
                s.requiredOther += 1
                s.others.append((test.id, verdict))
                s.notCounted.append(failure)
        elif test.kind == "optimal":
            if verdict == PASS:
                s.optionalPassed += 1
            elif verdict == OPTIONAL_FAIL:
                s.optionalFailed += 1
        group = groupOf.get(test.suite)
        if group is not None and test.kind == "required" and verdict not in (PASS, UNTESTED):
            s.groupFailures[group].append(failure)
    return s


def startOrigin(suite: str, port: int = 0, timeout: float = 20.0) -> Tuple["subprocess.Popen[bytes]", int]:
    """
    The suite's origin server on 127.0.0.1 (C{port} 0: a free one).

    @return: the process (the caller kills it) and its port.
    """
    errors = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        [node(), HELPER, "origin", suite, str(port)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors, cwd=suite,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    line = b""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                break
            line = proc.stdout.readline()
            if not line or line.startswith(b"LISTENING "):
                break
    if not line.startswith(b"LISTENING "):
        proc.kill()
        proc.wait(5)
        errors.seek(0)
        raise SuiteError(f"the suite's origin did not start: {errors.read().decode(errors='replace')[-2000:]}")
    errors.close()
    # Keep reading what it prints (nothing, normally), so that it never
    # blocks on a full pipe.
    threading.Thread(target=_drain, args=(proc.stdout,), daemon=True).start()
    return proc, int(line.split()[1])


def _drain(stream: Any) -> None:
    for _ in iter(stream.readline, b""):
        pass


def runClient(suite: str, base: str, timeout: float = 300.0, testId: str = "") -> Dict[str, Any]:
    """
    Run the suite's client against C{base} and return its results (test
    id: C{true}, or why not).
    """
    base = base.rstrip("/")  # the client appends "/config/...", "/test/..."
    env = dict(os.environ)
    env.update(npm_config_base=base, npm_package_config_base=base, npm_config_id=testId, npm_package_config_id=testId)
    # The client must reach base directly, never through a proxy from the environment.
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        env.pop(name, None)
    out = subprocess.run(
        [node(), "--no-warnings", clientScript(suite)],
        cwd=suite, env=env, capture_output=True, timeout=timeout, check=False,
    )
    text = out.stdout.decode("utf-8", "replace")
    start = text.find("{")
    if out.returncode != 0 or start < 0:
        raise SuiteError(
            f"the suite's client failed (exit {out.returncode}): "
            f"{out.stderr.decode(errors='replace')[-2000:]}{text[-2000:]}"
        )
    results: Dict[str, Any] = json.loads(text[start:])
    return results


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", help="the URL to test (a proxy in front of the origin); default: the origin")
    parser.add_argument("--origin-port", type=int, default=None,
                        help="start the suite's origin on 127.0.0.1:PORT (0: any) for the run")
    parser.add_argument("--serve", action="store_true", help="only run the origin until interrupted")
    parser.add_argument("--json", metavar="FILE", help="write the client's raw results here")
    parser.add_argument("--id", default="", help="run one test, verbosely (the suite's debug mode)")
    parser.add_argument("--no-cdn", action="store_true", help="leave out the CDN-only tests")
    args = parser.parse_args(argv)
    suite = suiteDir()
    origin = None
    try:
        if args.origin_port is not None:
            origin, port = startOrigin(suite, args.origin_port)
            print(f"origin: http://127.0.0.1:{port}/ (pid {origin.pid})", file=sys.stderr)
            if args.serve:
                origin.wait()
                return 0
            base = args.base or f"http://127.0.0.1:{port}/"
        elif args.base:
            base = args.base
        else:
            parser.error("give --base, --origin-port, or both")
        if args.id:
            env = dict(os.environ, npm_config_base=base.rstrip("/"), npm_config_id=args.id, npm_package_config_id=args.id)
            return subprocess.call([node(), "--no-warnings", clientScript(suite)], cwd=suite, env=env)
        started = time.monotonic()
        results = runClient(suite, base)
        took = time.monotonic() - started
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)
        s = score(loadTests(suite), results, includeCDN=not args.no_cdn)
        print(f"cache-tests {SUITE_VERSION if 'node_modules' in suite else suite} against {base} ({took:.1f} s)")
        print(s.text())
        return 0
    finally:
        if origin is not None and origin.poll() is None:
            origin.kill()
            origin.wait()


if __name__ == "__main__":
    sys.exit(main())
