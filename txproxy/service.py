"""
Deprecated: the old home of L{txproxy.runtime.service}, kept for one release so that
C{from txproxy.service import ...} still works.  Import from L{txproxy.runtime.service}.
"""

from __future__ import annotations

import warnings

from txproxy.runtime.service import (
    ListenerService,
    ProxyService,
    StartupError,
    makeService,
    serverEndpoint,
)

__all__ = ["ProxyService", "ListenerService", "makeService", "serverEndpoint", "StartupError"]

warnings.warn(
    "txproxy.service is deprecated: import from txproxy.runtime.service",
    DeprecationWarning,
    stacklevel=2,
)
