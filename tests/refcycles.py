"""
Checks that an object the proxy is done with is freed by reference
counting alone, with no reference cycle keeping it (and what it refers to)
until the cyclic garbage collector runs.

Why it matters: per-request garbage in cycles makes CPython's collector run
often and, in its older generations, walk every live object; an HTTP/2
stream left in a cycle cost an eighth of a request's CPU (bench/README.md).
PyPy has no reference counting, so there the checks fall back to "freed
once collected" (no leak); the callers' structural assertions (the link
that closed the cycle is gone) hold on both.
"""

from __future__ import annotations

import gc
import platform
import weakref
from contextlib import contextmanager
from typing import Any, Iterator

#: Whether objects are freed as their last reference goes (CPython).
REFCOUNTED = platform.python_implementation() == "CPython"


@contextmanager
def collectorOff() -> Iterator[None]:
    """
    Run the block with the cyclic collector disabled (after a collection),
    so that what is freed in it was freed by reference counting.
    """
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def assertFreed(testcase: Any, ref: "weakref.ref[Any]", what: str) -> None:
    """
    Fail unless C{ref}'s object is gone: on CPython without a collection
    (inside L{collectorOff}), elsewhere after one.
    """
    if not REFCOUNTED:
        gc.collect()
    obj = ref()
    if obj is not None:
        holders = [type(r).__name__ for r in gc.get_referrers(obj)]
        del obj
        testcase.fail(f"{what} is still alive: a reference cycle (or a leak) holds it; referrers: {holders}")
