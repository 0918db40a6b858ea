# -*- test-case-name: tests.test_router -*-
"""
The immutable route table: host and path in, L{Route} out.

Public names are re-exported by L{txproxy.router}; import them from there.

Matching rules (the same for C{reverse} and C{sni} listeners; SNI routing
passes an empty path):

  1. The host is normalised by L{normalizeHost}: lower-cased, a C{:port}
     suffix removed (C{[v6]:port} too), one trailing dot removed.  Callers
     may pass a raw C{Host} header value.
  2. Candidate host entries, most specific first: the exact name (one dict
     lookup); then C{*.suffix} wildcards from the longest suffix to the
     shortest (one dict lookup per label of the request's host, so
     C{*.example.com} matches C{a.example.com} and C{a.b.example.com}, as in
     nginx and Envoy, but not C{example.com} itself); then C{*}.
  3. Within a host entry the longest path prefix wins.  Prefixes match on
     path-segment boundaries, like Kubernetes Ingress C{pathType: Prefix} and
     Envoy's C{path_separated_prefix}: C{/api} matches C{/api}, C{/api/} and
     C{/api/x} but B{not} C{/apix}.  A trailing slash in a configured prefix
     is ignored (C{/api/} is the same route as C{/api}).  A query string
     (C{?...}) is never part of the match.  Paths are compared as given
     (case-sensitive, no percent-decoding or dot-segment removal: the
     caller must reject or normalise such paths before routing).
  4. When the most specific host entry has no prefix matching the path, the
     next host entry is tried (an exact host with only C{/api} still lets
     C{/other} fall through to C{*.suffix} or C{*}), which is what HAProxy
     users with a C{default_backend} expect.  No match at all: L{None}
     (C{404} in reverse mode, close in sni mode).

Cost: one dict lookup for the exact host, one per label for wildcards, and
at most one dict lookup per path segment (bounded by the depth of the
longest configured prefix) within a host.  None of it grows with the number
of routes.
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from txproxy.router._pool import Pool
from txproxy.config import RouteConfig
from txproxy.errors import ConfigError

__all__ = ["Route", "RouteTable", "normalizeHost", "normalizePrefix"]


def normalizeHost(host: str) -> str:
    """
    Normalise a C{Host} header value or SNI name for matching.

    @param host: C{name}, C{name:port}, C{[v6]}, C{[v6]:port}, with or
        without a trailing dot, any case.
    @return: the lower-case name without port or trailing dot (IPv6 literals
        keep their brackets).
    """
    h = host.lower()
    if ":" in h:
        if h.startswith("["):
            end = h.find("]")
            if end > 0:
                h = h[: end + 1]
        elif h.count(":") == 1:
            h = h.partition(":")[0]
    if h.endswith("."):
        h = h[:-1]
    return h


def normalizePrefix(prefix: str) -> str:
    """
    Normalise a configured path prefix: C{""} and C{"/"} mean any path;
    trailing slashes are dropped.

    @raise ConfigError: when a non-empty prefix does not start with C{/}.
    """
    if prefix and not prefix.startswith("/"):
        raise ConfigError(f"bad route prefix {prefix!r}: must start with /")
    return prefix.rstrip("/")


class Route:
    """
    One matched route.

    @ivar config: the L{RouteConfig} it was built from.
    @ivar pool: the L{Pool} of backends requests on this route go to.
    @ivar prefix: the normalised prefix (C{""} for any path).
    @ivar name: C{host} and normalised prefix (C{www.example.com/api},
        C{*.example.com}, C{*}): the C{route} label of its metrics.
    """

    __slots__ = ("config", "pool", "prefix", "name")

    config: RouteConfig
    pool: Pool
    prefix: str
    name: str

    def __init__(self, config: RouteConfig, pool: Pool) -> None:
        self.config = config
        self.pool = pool
        self.prefix = normalizePrefix(config.prefix)
        self.name = f"{config.host}{self.prefix}"

    def upstreamPath(self, path: str) -> str:
        """
        The path to send upstream for a request to C{path}: unchanged, or
        with the route's prefix removed when C{config.stripPrefix} is set
        (C{/api/x} on route C{/api} becomes C{/x}; C{/api} becomes C{/}).
        """
        if not self.config.stripPrefix or not self.prefix:
            return path
        rest = path[len(self.prefix) :]
        if not rest.startswith("/"):
            rest = "/" + rest
        return rest

    def __repr__(self) -> str:
        return f"<Route {self.config.host}{self.prefix} -> {self.pool!r}>"


class _HostEntry:
    """
    The routes of one host pattern, by normalised prefix.
    """

    __slots__ = ("root", "byPrefix", "maxLen")

    def __init__(self, routes: Sequence[Route]) -> None:
        self.root: Optional[Route] = None
        self.byPrefix: Dict[str, Route] = {}
        for route in routes:
            if route.prefix:
                self.byPrefix[route.prefix] = route
            else:
                self.root = route
        self.maxLen = max((len(p) for p in self.byPrefix), default=0)

    def lookup(self, path: str) -> Optional[Route]:
        byPrefix = self.byPrefix
        if not byPrefix:
            return self.root
        q = path.find("?")
        if q >= 0:
            path = path[:q]
        maxLen = self.maxLen
        if len(path) <= maxLen:
            route = byPrefix.get(path)
            if route is not None:
                return route
        # Each "/" at index i > 0 ends a candidate prefix path[:i]; only
        # candidates no longer than the longest prefix are worth a lookup.
        i = path.rfind("/", 1, maxLen + 1)
        while i > 0:
            route = byPrefix.get(path[:i])
            if route is not None:
                return route
            i = path.rfind("/", 1, i)
        return self.root


class RouteTable:
    """
    An immutable host-and-path route table.  Build it with L{build}; a
    reload builds a new one and swaps it in (see L{RouterService}).

    @ivar routes: every L{Route}, in configuration order.
    """

    __slots__ = ("routes", "_exactRoot", "_exact", "_wildcards", "_default")

    routes: Tuple[Route, ...]

    def __init__(
        self,
        routes: Tuple[Route, ...],
        exactRoot: Dict[str, Route],
        exact: Dict[str, _HostEntry],
        wildcards: Dict[str, _HostEntry],
        default: Optional[_HostEntry],
    ) -> None:
        # exactRoot: hosts whose only route has no prefix (the common case,
        # answered by one dict lookup); exact: hosts with prefixed routes.
        # Both hold each name with and without a trailing dot.
        self.routes = routes
        self._exactRoot = exactRoot
        self._exact = exact
        self._wildcards = wildcards
        self._default = default

    @classmethod
    def build(
        cls,
        routes: Sequence[RouteConfig],
        pools: Optional[Mapping[RouteConfig, Pool]] = None,
    ) -> RouteTable:
        """
        Build a table.

        @param routes: the routes, in configuration order.
        @param pools: the pool for each route; a route missing from it gets
            a fresh L{Pool.fromRoute} (handy in tests and benchmarks).
        @raise ConfigError: when two routes have the same host pattern and
            normalised prefix.
        """
        checkRoutes(routes)
        built = tuple(
            Route(rc, pools[rc] if pools is not None and rc in pools else Pool.fromRoute(rc))
            for rc in routes
        )
        groups: Dict[str, List[Route]] = {}
        for route in built:
            groups.setdefault(route.config.host.lower(), []).append(route)
        exactRoot: Dict[str, Route] = {}
        exact: Dict[str, _HostEntry] = {}
        wildcards: Dict[str, _HostEntry] = {}
        default: Optional[_HostEntry] = None
        for host, group in groups.items():
            entry = _HostEntry(group)
            if host == "*":
                default = entry
            elif host.startswith("*."):
                # Keyed by ".suffix" so that a lookup slices the request's
                # host at each dot without building new strings.
                wildcards[host[1:]] = entry
            else:
                name = normalizeHost(host)
                for key in (name, name + "."):
                    if entry.byPrefix:
                        exact[key] = entry
                    else:
                        assert entry.root is not None
                        exactRoot[key] = entry.root
        return cls(built, exactRoot, exact, wildcards, default)

    def match(self, host: str, path: str = "") -> Optional[Route]:
        """
        Find the route for a request.

        @param host: the C{Host} header value (or SNI name); port, case and a
            trailing dot do not matter.
        @param path: the request path (origin form; a query string is
            ignored); C{""} for SNI routing.
        @return: the matching L{Route}, or L{None}.
        """
        h = host.lower()
        i = h.find(":")
        if i >= 0:
            if h.find(":", i + 1) < 0:
                h = h[:i]  # name:port, the usual case
            else:
                h = normalizeHost(h)  # [v6]:port
        route = self._exactRoot.get(h)
        if route is not None:
            return route
        entry = self._exact.get(h)
        if entry is not None:
            route = entry.lookup(path)
            if route is not None:
                return route
        wildcards = self._wildcards
        if wildcards:
            if h.endswith("."):
                h = h[:-1]
            i = h.find(".")
            while i >= 0:
                entry = wildcards.get(h[i:])
                if entry is not None:
                    route = entry.lookup(path)
                    if route is not None:
                        return route
                i = h.find(".", i + 1)
        if self._default is not None:
            return self._default.lookup(path)
        return None

    def __len__(self) -> int:
        return len(self.routes)

    def __repr__(self) -> str:
        return f"<RouteTable with {len(self.routes)} routes>"


def checkRoutes(routes: Sequence[RouteConfig]) -> None:
    """
    Reject route lists a table cannot represent.

    @raise ConfigError: on a bad prefix, or two routes with the same host
        pattern and normalised prefix.
    """
    seen: Dict[Tuple[str, str], RouteConfig] = {}
    for rc in routes:
        prefix = normalizePrefix(rc.prefix)
        host = rc.host.lower()
        if host != "*" and not host.startswith("*."):
            host = normalizeHost(host)
        if (host, prefix) in seen:
            raise ConfigError(f"route {rc.host}{prefix or '/'} is given twice")
        seen[(host, prefix)] = rc
