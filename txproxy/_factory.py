# -*- test-case-name: tests.test_forward,tests.test_tcp -*-
"""
What every listener factory shares (HTTP and TCP modes alike): the client
ACL, the set of open connections, and where finished requests are
reported.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.protocol import ServerFactory

from txproxy.accesslog import AccessRecord

__all__ = ["ListenerFactory"]


class ListenerFactory(ServerFactory):
    """
    Base of the mode factories.  Subclasses set C{listener}, C{protocols},
    C{accessLog}, C{metrics} and C{requestsTotal} in their constructor.

    @ivar listener: the L{txproxy.config.ListenerConfig}.
    @ivar protocols: the open client connections (for draining, counting
        and C{/status}).
    @ivar accessLog: an L{txproxy.interfaces.IAccessLog}, or L{None}.
    @ivar metrics: a L{txproxy.metrics.Metrics}, or L{None}.
    """

    noisy = False
    listener: Any
    protocols: set
    accessLog: Any = None
    metrics: Any = None
    requestsTotal = 0

    def clientAllowed(self, host: str) -> bool:
        """
        Apply C{--allow}/C{--deny}: C{--deny} wins; with any C{--allow},
        unlisted clients are denied.
        """
        listener = self.listener
        if listener.deny and host in listener.deny:
            return False
        if listener.allow:
            return host in listener.allow
        return True

    def connectionOpened(self, proto: Any) -> None:
        """
        Called by each protocol when its connection is made.
        """
        self.protocols.add(proto)
        if self.metrics is not None:
            self.metrics.connectionOpened(self.listener)

    def connectionClosed(self, proto: Any) -> None:
        """
        Called by each protocol when its connection is lost.
        """
        self.protocols.discard(proto)
        if self.metrics is not None:
            self.metrics.connectionClosed(self.listener)

    def requestFinished(self, proto: Any, record: AccessRecord) -> None:
        """
        Called once per request, tunnel or relayed connection with its
        record: access log and counters.
        """
        self.requestsTotal += 1
        if self.accessLog is not None:
            self.accessLog.log(record)
        if self.metrics is not None:
            self.metrics.requestFinished(self.listener, record)
