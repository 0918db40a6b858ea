"""
Deprecated: the old home of L{txproxy.limits.service}, kept for one release so that
C{from txproxy.limiter import ...} still works.  Import from L{txproxy.limits.service}.
"""

from __future__ import annotations

import warnings

from txproxy.limits.service import (
    ALLOWED,
    HTTP_STATUS,
    REASON_MAX_CONNS,
    REASON_MAX_CONNS_PER_CLIENT,
    REASON_RATE,
    Decision,
    ILease,
    LimiterService,
    ListenerLimits,
    MemoryLimiter,
    bucketKey,
    checkBucket,
)

__all__ = ["ALLOWED", "Decision", "HTTP_STATUS", "ILease", "LimiterService", "ListenerLimits", "MemoryLimiter", "REASON_MAX_CONNS", "REASON_MAX_CONNS_PER_CLIENT", "REASON_RATE", "bucketKey", "checkBucket"]

warnings.warn(
    "txproxy.limiter is deprecated: import from txproxy.limits.service",
    DeprecationWarning,
    stacklevel=2,
)
