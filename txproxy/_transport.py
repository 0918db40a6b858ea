# -*- test-case-name: tests.test_relay -*-
"""
A type for annotations only: what a connection's transport is as txproxy
uses it.

It lives apart from L{txproxy.relay} (which names it under
C{if TYPE_CHECKING:}) because the relay is compiled with mypyc, which cannot
build this class: "subclassing" zope interfaces makes a new interface, not a
class.
"""

from __future__ import annotations

from twisted.internet.interfaces import IConsumer, IPushProducer, ITCPTransport

__all__ = ["_Transport"]


class _Transport(ITCPTransport, IConsumer, IPushProducer):
    """
    A connection's transport as txproxy uses it: also a consumer and a push
    producer (as Twisted's connection transports are), which
    C{Protocol.transport}'s type, L{ITransport}, does not say.  Only for
    type annotations and casts (as a string): nothing declares it.
    """
