# -*- test-case-name: tests.test_version -*-
"""
Tests for txproxy's version: C{txproxy.__version__} as the one source,
C{--version}, and the C{txproxy_build_info} metric.
"""

from __future__ import annotations

import configparser
import io
import os
import platform
import sys
from unittest import mock

from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase

import txproxy
from txproxy.runtime import tap
from txproxy.metrics import Metrics

from .procs import REPO, runTxproxy


class VersionSourceTests(SynchronousTestCase):
    def test_setupCfgReadsThePackage(self) -> None:
        """
        setup.cfg takes the version from C{txproxy.__version__} rather than
        writing it a second time.
        """
        cfg = configparser.ConfigParser()
        cfg.read(os.path.join(REPO, "setup.cfg"))
        self.assertEqual(cfg["metadata"]["version"], "attr: txproxy.__version__")
        self.assertRegex(txproxy.__version__, r"^\d+\.\d+\.\d+")


class VersionOptionTests(SynchronousTestCase):
    def test_versionPrintsAndExits0(self) -> None:
        """
        C{--version} prints C{txproxy VERSION (Twisted VERSION, IMPL
        VERSION, BUILD)} on standard output and exits with status 0, before
        any other option is checked; BUILD says whether the core runs
        compiled.
        """
        from twisted import version as twistedVersion

        out = io.StringIO()
        with mock.patch.object(sys, "stdout", out):
            e = self.assertRaises(SystemExit, tap.Options().parseOptions, ["--version", "--listen", "bogus"])
        self.assertEqual(e.code, 0)
        self.assertEqual(
            out.getvalue(),
            f"txproxy {txproxy.__version__} (Twisted {twistedVersion.short()}, "
            f"{platform.python_implementation()} {platform.python_version()}, "
            f"{'compiled (mypyc)' if txproxy.COMPILED else 'pure Python'})\n",
        )


class BuildInfoMetricTests(SynchronousTestCase):
    def test_buildInfo(self) -> None:
        """
        C{/metrics} has C{txproxy_build_info} with value 1 and labels
        C{version}, C{python} and C{implementation}.
        """
        text = Metrics(processMetrics=False).exposition().decode()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        (sample,) = families["txproxy_build_info"].samples
        self.assertEqual(sample.value, 1.0)
        self.assertEqual(
            sample.labels,
            {"version": txproxy.__version__, "python": platform.python_version(),
             "implementation": platform.python_implementation()},
        )


class VersionIntegrationTests(SynchronousTestCase):
    def test_twistdTxproxyVersion(self) -> None:
        """
        C{twistd -n txproxy --version} (a real subprocess) prints txproxy's
        version, not Twisted's alone, and exits 0.
        """
        result = runTxproxy(["--version"])
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertTrue(result.stdout.decode().startswith(f"txproxy {txproxy.__version__} (Twisted "),
                        result.stdout)
