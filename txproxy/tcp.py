"""
Deprecated: the old home of L{txproxy.stream.tcp}, kept for one release so that
C{from txproxy.tcp import ...} still works.  Import from L{txproxy.stream.tcp}.
"""

from __future__ import annotations

import warnings

from txproxy.stream.tcp import (
    RelayingFactory,
    TCPProxyFactory,
    TCPProxyProtocol,
    TransparentFactory,
    UpstreamProtocol,
)

__all__ = ["TCPProxyProtocol", "TCPProxyFactory", "TransparentFactory", "UpstreamProtocol", "RelayingFactory"]

warnings.warn(
    "txproxy.tcp is deprecated: import from txproxy.stream.tcp",
    DeprecationWarning,
    stacklevel=2,
)
