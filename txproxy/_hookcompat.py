# -*- test-case-name: tests.test_hooks -*-
"""
Old hook names and signatures, kept working for one release.

The hooks were renamed so that one moment has one name and one signature
in every mode (C{docs/hooks.rst}).  A subclass written for the old names
still works: L{hookCaller} finds, once per class, which of the new hook and
its old forms the class overrides, emits one L{DeprecationWarning} per
class and old hook, and returns one function to call with the new
arguments (or L{None} when nothing is overridden, so that the caller skips
the call, as before).

A leaf module: the standard library and L{txproxy._common} (itself a leaf).
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from txproxy._common import overrides

__all__ = ["Legacy", "hookCaller", "positionalCount", "firstParameter"]


class Legacy:
    """
    One old form of a hook.

    @ivar name: the old method name (the new one's when only the signature
        changed).
    @ivar call: C{call(obj, *newArgs)}: calls the old hook on C{obj} with
        the old arguments.
    @ivar isOld: for a hook whose name did not change, C{isOld(function)}
        tells an override written for the old signature; L{None} for a
        renamed hook (any override of the old name is old).
    @ivar signature: how the old hook was called, for the warning.
    """

    __slots__ = ("name", "call", "isOld", "signature")

    def __init__(
        self,
        name: str,
        signature: str,
        call: Callable[..., Any],
        isOld: Optional[Callable[[Any], bool]] = None,
    ) -> None:
        self.name = name
        self.signature = signature
        self.call = call
        self.isOld = isOld


def positionalCount(function: Any) -> int:
    """
    How many positional arguments C{function} takes after C{self} (a large
    number when it takes C{*args}).
    """
    try:
        parameters = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):
        return 1000
    count = 0
    for p in parameters[1:]:
        if p.kind is p.VAR_POSITIONAL:
            return 1000
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            count += 1
    return count


def firstParameter(function: Any) -> str:
    """
    The name of C{function}'s first parameter after C{self} (C{""} when it
    has none).
    """
    try:
        parameters = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):
        return ""
    return parameters[1].name if len(parameters) > 1 else ""


_CALLERS: Dict[Tuple[type, str, type], Optional[Callable[..., Any]]] = {}


def hookCaller(
    obj: Any, name: str, base: type, legacy: Sequence[Legacy] = (), combine: bool = True
) -> Optional[Callable[..., Any]]:
    """
    What to call for hook C{name} of C{base} on C{obj}: a function taking
    C{(obj, *newArgs)}, or L{None} when C{obj}'s class overrides neither the
    hook nor any of its C{legacy} forms.  Computed once per class (one dict
    lookup afterwards); the first time, a class overriding an old form gets
    one L{DeprecationWarning} per old form, naming the new hook.

    @param combine: for notification hooks, call every overridden form (old
        ones first, the new one last); when false (hooks whose answer
        counts), an overridden new hook is the only one called.
    """
    cls = type(obj)
    key = (cls, name, base)
    try:
        return _CALLERS[key]
    except KeyError:
        pass
    new = getattr(cls, name)
    newOverridden = overrides(obj, name, base)
    old = []
    for form in legacy:
        if not overrides(obj, form.name, base):
            continue
        if form.isOld is not None:
            if not form.isOld(getattr(cls, form.name)):
                continue
            # Same name, old signature: it is not the new hook.
            newOverridden = False
        old.append(form)
        warnings.warn(
            f"{cls.__module__}.{cls.__qualname__}.{form.name}{form.signature} is deprecated"
            f" and will stop being called in the next release: override {name} instead"
            " (see docs/hooks.rst)",
            DeprecationWarning,
            stacklevel=3,
        )
    caller: Optional[Callable[..., Any]]
    if not old:
        caller = new if newOverridden else None
    else:
        calls = [form.call for form in old] + ([new] if newOverridden else [])
        if newOverridden and not combine:
            calls = [new]
        if len(calls) == 1:
            caller = calls[0]
        else:

            def caller(self: Any, *args: Any) -> Any:
                result = None
                for call in calls:
                    result = call(self, *args)
                return result

    _CALLERS[key] = caller
    return caller
