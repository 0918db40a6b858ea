# -*- test-case-name: tests.test_intercept -*-
"""
Which tunnels are intercepted: C{--intercept} and C{--no-intercept} host
patterns.
"""

from __future__ import annotations

from typing import FrozenSet, Iterable, Optional, Tuple

from txproxy.tls._ca import hostForm

__all__ = ["HostPatterns", "InterceptPolicy", "canonicalHost"]


def canonicalHost(host: str) -> str:
    """
    C{host} as patterns are matched against it: lower case, no trailing
    dot, an IP address in its compressed form without brackets.
    """
    return hostForm(host)[0]


class HostPatterns:
    """
    A set of host patterns: C{example.com} matches that name only;
    C{*.example.com} matches every name below C{example.com} (any depth),
    not C{example.com} itself; C{*} matches everything; an IP address
    matches itself.  Case and one trailing dot are ignored.
    """

    def __init__(self, patterns: Iterable[str]) -> None:
        exact = set()
        suffixes = []
        self.matchesAll = False
        for pattern in patterns:
            p = pattern.strip().lower()
            if p == "*":
                self.matchesAll = True
            elif p.startswith("*."):
                suffix = p[1:]
                suffixes.append(suffix[:-1] if suffix.endswith(".") else suffix)
            else:
                exact.add(canonicalHost(p))
        self.exact: FrozenSet[str] = frozenset(exact)
        self.suffixes: Tuple[str, ...] = tuple(suffixes)

    def __bool__(self) -> bool:
        return self.matchesAll or bool(self.exact) or bool(self.suffixes)

    def matches(self, host: str) -> bool:
        """
        Whether C{host} matches one of the patterns.
        """
        if self.matchesAll:
            return True
        name = canonicalHost(host)
        if name in self.exact:
            return True
        return any(name.endswith(suffix) and len(name) > len(suffix) for suffix in self.suffixes)


class InterceptPolicy:
    """
    The configured choice of tunnels to intercept: those whose host
    matches C{intercept} (every host when it is empty) and not
    C{noIntercept}.
    """

    def __init__(self, intercept: Iterable[str] = (), noIntercept: Iterable[str] = ()) -> None:
        included = HostPatterns(intercept)
        self.include: Optional[HostPatterns] = included if included else None
        self.exclude = HostPatterns(noIntercept)

    def intercepts(self, host: str) -> bool:
        """
        Whether a tunnel to C{host} is intercepted.
        """
        if self.exclude.matches(host):
            return False
        return self.include is None or self.include.matches(host)
