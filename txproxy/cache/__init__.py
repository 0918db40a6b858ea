# -*- test-case-name: tests.test_cache_policy -*-
"""
An RFC 9111 shared HTTP cache: the sans-IO policy (L{txproxy.cache._policy}),
the byte-bounded memory tier (L{txproxy.cache._memory}), the versioned
serialization a shared tier stores (L{txproxy.cache._entry}), and the
glue between them and the HTTP core (L{txproxy.cache._http}).
"""

from txproxy.cache._entry import MAGIC, Entry, deserialize, serialize
from txproxy.cache._http import RESULTS, CacheRequest, HTTPCache
from txproxy.cache._memory import DEFAULT_MAX_OBJECT, MemoryStore, Writer
from txproxy.cache._policy import CACHE_NAME, StoredResponse
from txproxy.cache._service import CacheService, purgeKey

__all__ = [
    "CACHE_NAME",
    "RESULTS",
    "CacheRequest",
    "CacheService",
    "HTTPCache",
    "DEFAULT_MAX_OBJECT",
    "MAGIC",
    "Entry",
    "MemoryStore",
    "StoredResponse",
    "Writer",
    "deserialize",
    "purgeKey",
    "serialize",
]
