"""
Deprecated: the old home of L{txproxy.stream.sni}, kept for one release so that
C{from txproxy.sni import ...} still works.  Import from L{txproxy.stream.sni}.
"""

from __future__ import annotations

import warnings

from txproxy.stream.sni import UNRECOGNIZED_NAME_ALERT, SNIRouterFactory, SNIRouterProtocol

__all__ = ["SNIRouterProtocol", "SNIRouterFactory", "UNRECOGNIZED_NAME_ALERT"]

warnings.warn(
    "txproxy.sni is deprecated: import from txproxy.stream.sni",
    DeprecationWarning,
    stacklevel=2,
)
