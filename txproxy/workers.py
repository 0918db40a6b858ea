# -*- test-case-name: tests.test_workers -*-
"""
C{--workers N}: N processes sharing each listening port.
"""

from __future__ import annotations

import os
from typing import Optional

#: Environment variables the supervisor sets for each worker it starts.
WORKER_ID_ENV = "TXPROXY_WORKER_ID"
WORKER_ADMIN_ENV = "TXPROXY_WORKER_ADMIN"


def workerId() -> Optional[int]:
    """
    This process's worker number (1..N) when it is a C{--workers} worker,
    else L{None}.
    """
    value = os.environ.get(WORKER_ID_ENV)
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def workerAdminEndpoint() -> str:
    """
    The private admin endpoint (a UNIX socket) the supervisor gave this
    worker; the supervisor reads its C{/metrics} and C{/status} there.
    """
    return os.environ[WORKER_ADMIN_ENV]
