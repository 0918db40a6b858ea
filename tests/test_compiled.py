# -*- test-case-name: tests.test_compiled -*-
"""
Tests for L{txproxy._compiled}: which build runs (C{txproxy.COMPILED}), the
C{TXPROXY_PURE=1} switch that makes a compiled install import the pure
modules, and what an install ships for it.

scripts/test runs the whole suite twice on CPython: against the editable
checkout (pure) and against a compiled C{pip install .} in
C{.venv-compiled}; these tests hold in both, and check each build's own
side of the switch.
"""

from __future__ import annotations

import importlib.machinery
import json
import os
import platform
import subprocess
import sys
import tempfile
from typing import Any, Dict

from twisted.trial.unittest import SynchronousTestCase

import txproxy
from tests.procs import childPythonPath
from txproxy import _compiled
from txproxy.runtime.tap import versionText

#: What a child prints: which build it runs and where each module came from.
_REPORT = """
import json, sys, txproxy, importlib
from txproxy import _compiled
files = {name: importlib.import_module(name).__file__ for name in _compiled.MODULES}
json.dump({"compiled": txproxy.COMPILED, "files": files,
           "description": _compiled.buildDescription()}, sys.stdout)
"""


def _childReport(**extraEnv: str) -> Dict[str, Any]:
    """
    Run L{_REPORT} in a child interpreter that imports the txproxy under
    test (from a folder with no txproxy in it), with C{extraEnv}.
    """
    env = {k: v for k, v in os.environ.items() if k != _compiled.PURE_ENV}
    env["PYTHONPATH"] = childPythonPath(env.get("PYTHONPATH", ""))
    env.update(extraEnv)
    result = subprocess.run(
        [sys.executable, "-c", _REPORT],
        capture_output=True, cwd=tempfile.mkdtemp(prefix="txproxy-compiled-"), env=env, timeout=120,
    )
    if result.returncode != 0:
        raise AssertionError(result.stderr.decode())
    report: Dict[str, Any] = json.loads(result.stdout)
    return report


def _isExtension(module: Any) -> bool:
    return isinstance(getattr(module, "__loader__", None), importlib.machinery.ExtensionFileLoader)


class CompiledFlagTests(SynchronousTestCase):
    def test_flagMatchesTheLoadedModules(self) -> None:
        """
        C{txproxy.COMPILED} is true exactly when every module of
        L{_compiled.MODULES} was loaded from a compiled extension, and false
        when each was loaded from its C{.py}.
        """
        import importlib

        modules = [importlib.import_module(name) for name in _compiled.MODULES]
        kinds = {name: _isExtension(module) for name, module in zip(_compiled.MODULES, modules)}
        self.assertEqual(kinds, {name: txproxy.COMPILED for name in _compiled.MODULES})
        if not txproxy.COMPILED:
            for module in modules:
                self.assertTrue(module.__file__.endswith(".py"), module.__file__)

    def test_onlyCPythonCompiles(self) -> None:
        """
        PyPy always runs the pure modules.
        """
        if platform.python_implementation() != "CPython":
            self.assertFalse(txproxy.COMPILED)
        self.assertEqual(_compiled.compiledInUse(), txproxy.COMPILED)

    def test_sourcesShipped(self) -> None:
        """
        Every compiled module's C{.py} source is installed beside it (what
        C{TXPROXY_PURE=1} loads), whichever build this is.
        """
        root = os.path.dirname(os.path.dirname(os.path.abspath(txproxy.__file__)))
        for name in _compiled.MODULES:
            self.assertTrue(os.path.isfile(os.path.join(root, *name.split(".")) + ".py"), name)

    def test_versionSaysWhichBuild(self) -> None:
        """
        C{--version} ends with C{compiled (mypyc)} or C{pure Python}, as the
        process runs.
        """
        expected = "compiled (mypyc)" if txproxy.COMPILED else "pure Python"
        self.assertEqual(_compiled.buildDescription(), expected)
        self.assertTrue(versionText().endswith(f", {expected})"), versionText())


class PureSwitchTests(SynchronousTestCase):
    def test_pureEnvironmentImportsSources(self) -> None:
        """
        With C{TXPROXY_PURE=1}, a child process of this build imports every
        compiled module from its C{.py}, in the same installed package, and
        says C{pure Python}.
        """
        report = _childReport(TXPROXY_PURE="1")
        self.assertFalse(report["compiled"])
        self.assertEqual(report["description"], "pure Python")
        package = os.path.dirname(os.path.abspath(txproxy.__file__))
        for name, path in report["files"].items():
            self.assertTrue(path.endswith(".py"), (name, path))
            self.assertTrue(os.path.abspath(path).startswith(package + os.sep), (name, path))

    def test_defaultRunsThisBuild(self) -> None:
        """
        Without C{TXPROXY_PURE} (or with C{TXPROXY_PURE=0}), a child process
        runs the same build as this one.
        """
        for extra in ({}, {"TXPROXY_PURE": "0"}):
            report = _childReport(**extra)
            self.assertEqual(report["compiled"], txproxy.COMPILED, extra)
            for name, path in report["files"].items():
                self.assertEqual(path.endswith(".py"), not txproxy.COMPILED, (name, path))

    def test_pureRequested(self) -> None:
        """
        C{TXPROXY_PURE} asks for the pure modules when set to anything but
        the empty string or C{0}.
        """
        self.assertFalse(_compiled.pureRequested({}))
        self.assertFalse(_compiled.pureRequested({"TXPROXY_PURE": ""}))
        self.assertFalse(_compiled.pureRequested({"TXPROXY_PURE": "0"}))
        self.assertTrue(_compiled.pureRequested({"TXPROXY_PURE": "1"}))
        self.assertTrue(_compiled.pureRequested({"TXPROXY_PURE": "yes"}))


class PureFinderTests(SynchronousTestCase):
    def test_findsSourceOfCompiledModules(self) -> None:
        """
        The finder answers, for a compiled module's name, with a spec that
        loads the C{.py} found on the given path.
        """
        folder = tempfile.mkdtemp(prefix="txproxy-finder-")
        source = os.path.join(folder, "_parser.py")
        with open(source, "w") as f:
            f.write("VALUE = 1\n")
        spec = _compiled._PureFinder().find_spec("txproxy.http._parser", [folder])
        assert spec is not None
        self.assertIsInstance(spec.loader, importlib.machinery.SourceFileLoader)
        self.assertEqual(spec.origin, source)
        self.assertEqual(spec.name, "txproxy.http._parser")

    def test_ignoresOtherModules(self) -> None:
        """
        Other names, and compiled names with no C{.py} on the path, are left
        to the rest of C{sys.meta_path}.
        """
        folder = tempfile.mkdtemp(prefix="txproxy-finder-")
        with open(os.path.join(folder, "httpproxy.py"), "w") as f:
            f.write("")
        finder = _compiled._PureFinder()
        self.assertIsNone(finder.find_spec("txproxy.httpproxy", [folder]))
        self.assertIsNone(finder.find_spec("txproxy.http._parser", [folder]))

    def test_installOnce(self) -> None:
        """
        L{_compiled.installPureFinder} puts one finder first on
        C{sys.meta_path}, however often it is called.
        """
        saved = list(sys.meta_path)
        self.addCleanup(sys.meta_path.__setitem__, slice(None), saved)
        sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _compiled._PureFinder)]
        _compiled.installPureFinder()
        _compiled.installPureFinder()
        self.assertIsInstance(sys.meta_path[0], _compiled._PureFinder)
        self.assertEqual(sum(isinstance(f, _compiled._PureFinder) for f in sys.meta_path), 1)
        self.assertFalse(_compiled.compiledInUse())
