"""
Class-level defaults on the per-request path are values of built-in types.

CPython 3.11 specializes C{self.name} (read or write) only when the class
attribute of that name, if any, is a value of an immutable built-in type
(C{None}, a number, a string, a function...).  A default such as C{_state =
HEAD}, where C{HEAD} is an instance of a Python class, turns every read and
write of that name on every instance into a generic dictionary lookup:
measured, 2 % of a reverse-proxied request's instructions, and more of its
time.  These tests keep such defaults out of the classes every request goes
through.
"""

from __future__ import annotations

import types
from typing import List

from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from txproxy.exchange._exchange import Exchange
from txproxy.forward import ForwardProxyFactory, ForwardProxyProtocol
from txproxy.httpproxy import HTTPProxyFactory, HTTPProxyProtocol
from txproxy.reverse import ReverseProxyFactory, ReverseProxyProtocol
from txproxy.upstream import UpstreamHTTPProtocol, UpstreamPool

#: Types whose values a class may hold: built-in, immutable, and those
#: that are descriptors or classes (looked up as such, not as values).
_FINE = (
    type(None), bool, int, float, str, bytes, tuple, frozenset,
    types.FunctionType, types.BuiltinFunctionType, staticmethod, classmethod, property,
    type, types.MemberDescriptorType, types.GetSetDescriptorType, types.MethodDescriptorType,
    types.WrapperDescriptorType,
)


def offending(cls: type) -> List[str]:
    """
    The class attributes of C{cls} (its own and inherited) whose values are
    instances of a Python class, as C{Class.name: type}.
    """
    found = []
    for klass in cls.__mro__:
        if klass is object:
            continue
        for name, value in vars(klass).items():
            if name.startswith("__") or isinstance(value, _FINE) or isinstance(value, Logger):
                # (A Logger is only read when something is logged.)
                continue
            if type(value).__module__ == "builtins":
                continue
            found.append(f"{klass.__name__}.{name}: {type(value).__name__}")
    return found


class ClassDefaultTests(SynchronousTestCase):
    def test_perRequestClasses(self) -> None:
        """
        The protocols, factories, exchange and pool a request goes through
        have no class-level default that is an instance of a Python class.
        """
        classes = [
            HTTPProxyProtocol, ForwardProxyProtocol, ReverseProxyProtocol, UpstreamHTTPProtocol,
            HTTPProxyFactory, ForwardProxyFactory, ReverseProxyFactory, Exchange, UpstreamPool,
        ]
        found = {cls.__name__: offending(cls) for cls in classes}
        self.assertEqual({name: [] for name in found}, found)

    def test_detects(self) -> None:
        """
        The check finds such a default (so that the test above can fail).
        """

        class Marker:
            pass

        class Bad(HTTPProxyProtocol):
            _marker = Marker()

        self.assertEqual(offending(Bad), ["Bad._marker: Marker"])

    def test_stateSetByNew(self) -> None:
        """
        A protocol has its state from construction on, even when a
        subclass's C{__init__} does not call its parent's.
        """

        class Own(HTTPProxyProtocol):
            def __init__(self, x: int) -> None:
                self.x = x

        from txproxy.exchange._state import HEAD

        self.assertIs(Own(1)._state, HEAD)
        self.assertNotIn("_state", vars(HTTPProxyProtocol))
