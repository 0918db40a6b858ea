# -*- test-case-name: tests.test_version -*-
"""
txproxy: a proxy toolkit built on Twisted.

C{__version__} is the one place the version is written: setup.cfg reads it
(C{version = attr: txproxy.__version__}, which setuptools evaluates without
importing the package), and C{twistd txproxy --version}, C{/status} and the
C{txproxy_build_info} metric show it.

C{COMPILED} tells whether this process runs the mypyc-compiled core (a
C{pip install .} on CPython) or the pure-Python modules (PyPy, an editable
install, or C{TXPROXY_PURE=1} in the environment): see
L{txproxy._compiled}.
"""

from txproxy import _compiled

if _compiled.pureRequested():
    _compiled.installPureFinder()

__version__ = "0.1.0.dev0"

#: Whether the sans-IO core runs compiled with mypyc in this process.
COMPILED = _compiled.compiledInUse()
