# -*- test-case-name: tests.test_http_parser -*-
"""
The one exception the sans-IO HTTP core raises for bad input.
"""

from __future__ import annotations

from mypy_extensions import mypyc_attr


# Compiled with mypyc; other errors (H2DialError) subclass it in Python.
@mypyc_attr(allow_interpreted_subclasses=True)
class HTTPError(Exception):
    """
    Input that the HTTP core refuses.  The status says which response a
    proxy should give: C{400}, C{431}, C{501} or C{505} for a bad request,
    C{502} for a bad upstream response.

    @ivar status: the HTTP status code to answer with.
    @ivar reason: a short, plain-text, single-line explanation that is safe
        to send to a client (it never quotes the offending bytes).
    """

    def __init__(self, status: int, reason: str) -> None:
        """
        @param status: the HTTP status code to answer with.
        @param reason: a short plain-text explanation, safe to send.
        """
        super().__init__(status, reason)
        self.status = status
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.status} {self.reason}"

    def __repr__(self) -> str:
        return f"HTTPError({self.status!r}, {self.reason!r})"
