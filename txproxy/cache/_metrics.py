# -*- test-case-name: tests.test_cache_http -*-
"""
The cache's metric families (C{txproxy_cache_*}), collected by
L{txproxy.metrics} at scrape time.
"""

from __future__ import annotations

from typing import Any, Iterator, List, Tuple

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

__all__ = ["CacheCollector", "cacheMetricFamilies"]


def cacheMetricFamilies(caches: List[Tuple[str, str, Any]], worker: str) -> Iterator[Metric]:
    """
    The metric families of C{caches}: C{(listener name, mode,
    L{txproxy.cache.HTTPCache})} each; nothing without a cache.
    """
    if not caches:
        return
    labels = ["listener", "mode", "worker"]
    requests = CounterMetricFamily(
        "txproxy_cache_requests",
        "Requests of caching listeners by cache result: hit, miss, stale (served stale), revalidated "
        "(a 304 refreshed the stored response), bypass (not looked up).",
        labels=labels + ["result"],
    )
    stored = GaugeMetricFamily("txproxy_cache_bytes", "Bytes the memory tier holds (at most --cache).",
                               labels=labels)
    entries = GaugeMetricFamily("txproxy_cache_entries", "Responses the memory tier holds.", labels=labels)
    redisUp = GaugeMetricFamily("txproxy_cache_redis_available",
                                "1 while the cache's Redis tier is reachable (--cache-redis).", labels=labels)
    tierHits = CounterMetricFamily("txproxy_cache_redis_hits", "Memory misses served from the Redis tier.",
                                   labels=labels)
    skipped = CounterMetricFamily(
        "txproxy_cache_redis_skipped",
        "While the Redis tier was unavailable: memory misses not looked up in it (operation=lookup) and "
        "stored responses not shared through it (operation=store).",
        labels=labels + ["operation"],
    )
    timeouts = CounterMetricFamily("txproxy_cache_redis_timeouts",
                                   "Redis tier lookups answered as misses after the tier's short timeout.",
                                   labels=labels)
    errors = CounterMetricFamily("txproxy_cache_redis_errors",
                                 "Redis tier calls that failed (an error reply, a connection lost mid-call).",
                                 labels=labels)
    dropped = CounterMetricFamily("txproxy_cache_redis_dropped",
                                  "Stores not sent to the Redis tier because too many were waiting for it.",
                                  labels=labels)
    for name, mode, cache in caches:
        key = [name, mode, worker]
        for result, n in cache.results.items():
            requests.add_metric(key + [result], n)
        stored.add_metric(key, cache.store.bytes)
        entries.add_metric(key, len(cache.store))
        if cache.tier is not None:
            redisUp.add_metric(key, 1.0 if getattr(cache.tier, "available", False) else 0.0)
            tierHits.add_metric(key, cache.tierHits)
            for operation, n in cache.tierSkipped.items():
                skipped.add_metric(key + [operation], n)
            tier = cache.tier
            timeouts.add_metric(key, getattr(tier, "timeouts", 0))
            errors.add_metric(key, getattr(tier, "errors", 0) + cache.tierErrors)
            dropped.add_metric(key, getattr(tier, "dropped", 0))
    yield from (requests, stored, entries, redisUp, tierHits, skipped, timeouts, errors, dropped)


class CacheCollector:
    """
    A collector (for a L{prometheus_client.CollectorRegistry}) of the
    caches of a L{txproxy.cache.CacheService}.
    """

    def __init__(self, caches: Any, worker: str) -> None:
        self.caches = caches
        self.worker = worker

    def describe(self) -> List[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        return cacheMetricFamilies(self.caches.described(), self.worker)
