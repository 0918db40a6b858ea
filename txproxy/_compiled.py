# -*- test-case-name: tests.test_compiled -*-
"""
The compiled build: which modules C{pip install .} compiles with mypyc on
CPython, whether this process runs them compiled, and the C{TXPROXY_PURE=1}
switch that makes a compiled install import their pure-Python sources
instead.

One source, two builds: C{setup.py} reads L{MODULES} from this file (it
runs it, without importing txproxy) and compiles those modules; the wheel
ships each module's C{.py} beside its extension.  Python's import system
prefers the extension; L{installPureFinder} (which C{txproxy/__init__.py}
calls when C{TXPROXY_PURE=1} is in the environment) puts a finder first on
C{sys.meta_path} that loads the C{.py} for exactly these names.

This module is never compiled itself, and imports nothing of txproxy.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from typing import Mapping, Optional, Sequence

#: The modules compiled by mypyc on CPython: the sans-IO HTTP/1.1 core, the
#: exchange and the relay's inner loop (all mypy --strict clean; see
#: pyproject.toml).  Protocol classes users subclass live elsewhere.
MODULES = (
    "txproxy.http._errors",
    "txproxy.http._uri",
    "txproxy.http._parser",
    "txproxy.http._body",
    "txproxy.http._headers",
    "txproxy.exchange._state",
    "txproxy.exchange._exchange",
    "txproxy.relay",
)

#: The environment variable that selects the pure-Python modules (at run
#: time in a compiled install; at build time, a pure build).
PURE_ENV = "TXPROXY_PURE"


def pureRequested(environ: Optional[Mapping[str, str]] = None) -> bool:
    """
    Whether C{TXPROXY_PURE} asks for the pure-Python modules: set to
    anything but the empty string or C{0}.
    """
    value = (os.environ if environ is None else environ).get(PURE_ENV, "")
    return value not in ("", "0")


class _PureFinder(importlib.abc.MetaPathFinder):
    """
    Finds the C{.py} source of the compiled modules, ahead of the path
    finder (which would find the extension first).
    """

    def find_spec(
        self,
        fullname: str,
        path: Optional[Sequence[str]],
        target: object = None,
    ) -> Optional[importlib.machinery.ModuleSpec]:
        if fullname not in MODULES:
            return None
        tail = fullname.rpartition(".")[2]
        for entry in path if path is not None else sys.path:
            source = os.path.join(entry, tail + ".py")
            if os.path.isfile(source):
                loader = importlib.machinery.SourceFileLoader(fullname, source)
                return importlib.util.spec_from_file_location(fullname, source, loader=loader)
        return None


def installPureFinder() -> None:
    """
    Make the compiled modules import from their C{.py} sources (once; call
    it before they are imported).
    """
    if not any(isinstance(finder, _PureFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _PureFinder())


def _extensionBeside(fullname: str) -> bool:
    """
    Whether the module C{fullname} has a compiled extension beside this
    file's package (where the import system would find it first).
    """
    package = os.path.dirname(os.path.abspath(__file__))
    parts = fullname.split(".")[1:]
    base = os.path.join(package, *parts)
    return any(os.path.isfile(base + suffix) for suffix in importlib.machinery.EXTENSION_SUFFIXES)


def compiledInUse() -> bool:
    """
    Whether this process runs the compiled modules: every module of
    L{MODULES} has an extension installed and C{TXPROXY_PURE} is not set.
    """
    if any(isinstance(finder, _PureFinder) for finder in sys.meta_path):
        return False
    return all(_extensionBeside(name) for name in MODULES)


def buildDescription() -> str:
    """
    C{"compiled (mypyc)"} or C{"pure Python"}, for C{--version} and the
    startup log.
    """
    return "compiled (mypyc)" if compiledInUse() else "pure Python"
