# -*- test-case-name: tests.test_version -*-
"""
txproxy: a proxy toolkit built on Twisted.

C{__version__} is the one place the version is written: setup.cfg reads it
(C{version = attr: txproxy.__version__}, which setuptools evaluates without
importing the package), and C{twistd txproxy --version}, C{/status} and the
C{txproxy_build_info} metric show it.
"""

__version__ = "0.1.0.dev0"
