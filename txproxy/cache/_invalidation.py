# -*- test-case-name: tests.test_cache_policy -*-
"""
Which stored responses an unsafe request's response invalidates
(RFC 9111 section 4.4): re-exported by L{txproxy.cache._policy}.
"""

from __future__ import annotations

from typing import List, Optional
from urllib.parse import urljoin, urlsplit

from txproxy.cache._fields import DEFAULT_PORTS, urlKey
from txproxy.http import ResponseHead

__all__ = ["invalidationTargets", "isUnsafe"]

_SAFE_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE"})


def _sameOriginKey(requestKey: bytes, value: Optional[bytes]) -> Optional[bytes]:
    """
    The URL key of a C{Location}/C{Content-Location} value (absolute, or a
    reference resolved against the request's URI) when it names the same
    origin as C{requestKey}, else L{None}.
    """
    if not value:
        return None
    try:
        base = requestKey.decode("ascii")
        resolved = urlsplit(urljoin(base, value.strip().decode("ascii")))
        origin = urlsplit(base)
        port = resolved.port
    except (UnicodeDecodeError, ValueError):
        return None
    scheme = resolved.scheme.lower()
    if scheme not in DEFAULT_PORTS or not resolved.hostname:
        return None
    key = urlKey(scheme, resolved.hostname, port if port is not None else DEFAULT_PORTS[scheme],
                 (resolved.path or "/").encode("ascii") + (b"?" + resolved.query.encode("ascii")
                                                           if resolved.query else b""))
    if urlsplit(key.decode("ascii")).netloc != origin.netloc or scheme != origin.scheme:
        return None
    return key


def invalidationTargets(requestKey: bytes, method: bytes, response: ResponseHead) -> List[bytes]:
    """
    The URL keys an unsafe request's response invalidates (section 4.4):
    its target and same-origin C{Location} and C{Content-Location}, when
    the response is a non-error (2xx or 3xx) one.
    """
    if method in _SAFE_METHODS or not (200 <= response.status < 400):
        return []
    keys = [requestKey]
    for name in (b"location", b"content-location"):
        key = _sameOriginKey(requestKey, response.get(name))
        if key is not None and key not in keys:
            keys.append(key)
    return keys


def isUnsafe(method: bytes) -> bool:
    """
    Whether C{method} is unsafe (RFC 9110 section 9.2.1).
    """
    return method not in _SAFE_METHODS
