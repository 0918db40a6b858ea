# -*- test-case-name: tests.test_cache_http -*-
"""
L{CacheService}: the caches of one proxy process, one per listener given
C{--cache}, kept by listener name across reloads (a reload resizes a
cache, evicting to fit when it shrank; it never empties one), with the
shared tiers started and stopped with the process.
"""

from __future__ import annotations

import importlib
from typing import Any, Dict, List, Optional, Tuple

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger

from txproxy.cache._http import HTTPCache, loadTier
from txproxy.cache._policy import urlKey
from txproxy.errors import ConfigError
from txproxy.http import HTTPError, parseAbsoluteURI

__all__ = ["CacheService", "purgeKey"]

log = Logger(namespace="txproxy.cache")

#: The shared tier's key prefix; the listener's name follows it.
TIER_PREFIX = b"txproxy:cache:v1:"


def purgeKey(url: str) -> bytes:
    """
    The URL key of an absolute C{http}/C{https} URL given to the purge
    endpoint.

    @raise ValueError: when C{url} is not one.
    """
    try:
        scheme, host, port, path = parseAbsoluteURI(url.encode("utf-8"), ("http", "https"))
    except (HTTPError, UnicodeError) as e:
        raise ValueError(f"not an absolute http or https URL: {url!r} ({getattr(e, 'reason', e)})")
    return urlKey(scheme, host, port, path)


class CacheService(Service):
    """
    The caches of one process, by listener name.

    @ivar caches: listener name -> L{HTTPCache}.
    """

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.caches: Dict[str, HTTPCache] = {}
        self._modes: Dict[str, str] = {}
        self._tierURLs: Dict[str, Optional[str]] = {}

    def cacheFor(self, listener: Any) -> Optional[HTTPCache]:
        """
        The cache of C{listener} (a L{txproxy.config.ListenerConfig}): the
        one it had (resized to its C{--cache}), a new one, or L{None}
        without C{--cache}.

        @raise ConfigError: when C{--cache-redis} is given but the Redis
            tier (C{txproxy.cache.redis}) is not available.
        """
        name = listener.name
        cache = self.caches.get(name)
        if listener.cache is None:
            self.forget(name)
            return None
        self._modes[name] = listener.mode
        surrogate = listener.mode == "reverse"
        if cache is not None and self._tierURLs.get(name) == listener.cacheRedis:
            cache.resize(listener.cache, listener.cacheMaxObject)
            cache.surrogate = surrogate
            return cache
        tier = None
        if listener.cacheRedis is not None:
            try:
                tier = loadTier(listener.cacheRedis, self.reactor, TIER_PREFIX + name.encode("utf-8") + b":")
            except ImportError as e:
                raise ConfigError(f"--cache-redis: the Redis cache tier is not available ({e})")
        if cache is not None:
            # Another shared tier: the memory tier stays.
            self._stopTier(cache)
            cache.tier = tier
            cache.resize(listener.cache, listener.cacheMaxObject)
            cache.surrogate = surrogate
        else:
            cache = HTTPCache(listener.cache, listener.cacheMaxObject, self.reactor, tier, surrogate)
            self.caches[name] = cache
        self._tierURLs[name] = listener.cacheRedis
        if self.running and tier is not None:
            tier.start()
        return cache

    def check(self, listener: Any) -> None:
        """
        Check that L{cacheFor} can take C{listener} (a reload checks every
        listener before it changes anything).

        @raise ConfigError: when C{--cache-redis} is given but the Redis
            tier (C{txproxy.cache.redis}) is not available.
        """
        if listener.cache is not None and listener.cacheRedis is not None:
            try:
                importlib.import_module("txproxy.cache.redis")
            except ImportError as e:
                raise ConfigError(f"--cache-redis: the Redis cache tier is not available ({e})")

    def forget(self, name: str) -> None:
        """
        Drop the cache of listener C{name} (it is gone, or lost C{--cache}).
        """
        cache = self.caches.pop(name, None)
        self._tierURLs.pop(name, None)
        self._modes.pop(name, None)
        if cache is not None:
            self._stopTier(cache)

    def keepOnly(self, names: List[str]) -> None:
        """
        Drop the caches of listeners not in C{names} (after a reload).
        """
        for name in list(self.caches):
            if name not in names:
                self.forget(name)

    def _stopTier(self, cache: HTTPCache) -> None:
        tier, cache.tier = cache.tier, None
        if tier is not None and self.running:
            tier.stop()

    def startService(self) -> None:
        super().startService()
        for cache in self.caches.values():
            if cache.tier is not None:
                cache.tier.start()

    def stopService(self) -> "defer.Deferred[Any]":
        super().stopService()
        stops = [defer.maybeDeferred(c.tier.stop) for c in self.caches.values() if c.tier is not None]
        return defer.gatherResults(stops, consumeErrors=True)

    def described(self) -> List[Tuple[str, str, HTTPCache]]:
        """
        C{(listener name, mode, cache)} for each cache (for metrics).
        """
        return [(name, self._modes.get(name, ""), cache) for name, cache in list(self.caches.items())]

    def purge(self, url: str) -> "defer.Deferred[int]":
        """
        Remove every stored variant of C{url} from every cache, both tiers.

        @return: a Deferred firing with the number removed.
        @raise ValueError: when C{url} is not an absolute http(s) URL.
        """
        key = purgeKey(url)
        counts = [cache.purge(key) for cache in self.caches.values()]
        d: "defer.Deferred[List[int]]" = defer.gatherResults(counts, consumeErrors=True)
        return d.addCallback(sum)
