# -*- test-case-name: tests.test_config -*-
"""
Exceptions shared by txproxy's modules.
"""

from __future__ import annotations


class ConfigError(Exception):
    """
    A configuration mistake.  C{str()} of it is the one line printed at
    start-up (or logged when a reload is rejected).
    """


class ResolveError(Exception):
    """
    A destination name did not resolve to any address.
    """


class PolicyDenied(Exception):
    """
    Policy refused a destination (for example C{--deny-dest}).
    """


class NoHealthyBackend(Exception):
    """
    Every backend of a pool is down, ejected or excluded.  HTTP modes answer
    C{503}; TCP modes close the client connection.
    """
