"""
Builds txproxy.  The metadata is in setup.cfg; this file only adds the
compiled build: on CPython, C{pip install .} compiles the modules named in
C{txproxy/_compiled.py} with mypyc (30-50 s on two cores, half of it the C
compiler; the wheel ships their C{.py} sources too, for C{TXPROXY_PURE=1}).
It builds the pure modules alone, saying so in one line, on PyPy, when
C{TXPROXY_PURE=1} is set, for an editable install (C{pip install -e .}:
development stays uncompiled), or when mypyc or the C compiler fails.
"""

from __future__ import annotations

import os
import platform
import runpy
import sys
from typing import Any, List, Optional

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
_COMPILED = runpy.run_path(os.path.join(HERE, "txproxy", "_compiled.py"))


def _say(message: str) -> None:
    print(f"txproxy: {message}", file=sys.stderr, flush=True)


def _pureReason() -> Optional[str]:
    """
    Why this build is pure, or L{None} to compile.
    """
    if platform.python_implementation() != "CPython":
        return f"{platform.python_implementation()} runs the pure-Python modules"
    if _COMPILED["pureRequested"]():
        return f"{_COMPILED['PURE_ENV']} is set"
    if any(command in sys.argv for command in ("editable_wheel", "develop")):
        return "editable install"
    return None


#: The setuptools commands that build extensions (pip runs C{bdist_wheel};
#: getting the build requirements or the metadata needs no compiling).
_BUILDING = ("bdist_wheel", "build", "build_ext", "install", "editable_wheel", "develop")


def _extensions() -> List[Any]:
    if not any(command in sys.argv for command in _BUILDING):
        return []
    reason = _pureReason()
    if reason is not None:
        _say(f"building the pure-Python modules only ({reason})")
        return []
    paths = [os.path.join(*name.split(".")) + ".py" for name in _COMPILED["MODULES"]]
    try:
        from mypyc.build import mypycify

        # The mypy configuration is pyproject.toml's; its notes about
        # sections for modules not compiled here are not errors.
        return list(mypycify(["--no-warn-unused-configs", *paths], opt_level="3", group_name="txproxy"))
    except (Exception, SystemExit) as e:
        _say(f"mypyc failed ({e!r}); building the pure-Python modules only")
        return []


class _BuildExt(build_ext):
    """
    C{build_ext} that falls back to the pure modules when the C compiler
    fails (none installed, no Python headers), instead of failing the
    install.
    """

    def run(self) -> None:
        try:
            super().run()
        except Exception as e:
            for output in self.get_outputs():
                if os.path.exists(output):
                    os.remove(output)
            self.extensions = []
            self.distribution.ext_modules = []
            _say(f"compiling failed ({e}); building the pure-Python modules only")


setup(ext_modules=_extensions(), cmdclass={"build_ext": _BuildExt})
