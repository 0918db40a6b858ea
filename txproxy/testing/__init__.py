# -*- test-case-name: tests.test_testing -*-
"""
Public helpers for testing txproxy protocols, and your subclasses of them,
with trial and no sockets.

    from twisted.trial.unittest import SynchronousTestCase
    from txproxy.forward import ForwardProxyProtocol
    from txproxy.hooks import Refuse
    from txproxy.testing import FakeConnector, connect, forwardFactory

    class MyProxy(ForwardProxyProtocol):
        def allowTunnel(self, request):
            if request.target.host == "blocked.test":
                raise Refuse(403, "blocked")
            return True

    class MyProxyTests(SynchronousTestCase):
        def test_blocked(self):
            connector = FakeConnector({"blocked.test": ["192.0.2.1"]})
            factory = forwardFactory(connector=connector, protocol=MyProxy)
            proto, transport = connect(factory)
            proto.dataReceived(b"CONNECT blocked.test:443 HTTP/1.1\\r\\nHost: blocked.test\\r\\n\\r\\n")
            self.assertIn(b" 403 ", transport.value())
            self.assertEqual(connector.attempts, [])

One factory helper per mode (L{forwardFactory}, L{reverseFactory},
L{tcpFactory}, L{transparentFactory}, L{sniFactory}) builds the mode's real
factory from option names, with a L{FakeConnector} and a L{Clock}.
L{FakeConnector} I{is} a L{txproxy.connector.Connector}, on a fake reactor
whose C{connectTCP} records a L{ConnectAttempt} and whose name resolver
reads a fixed host map: name resolution, C{connect}, endpoints and
endpoint descriptions all run txproxy's and Twisted's own code, and only
the socket is fake.

L{FakeRedisTier} keeps the storage contract of the cache's Redis tier
(L{txproxy.cache.redis.RedisTier}) in memory, on a L{Clock}, with switches
for an unreachable or a stalled Redis.

Everything here is built on Twisted's L{StringTransport} and L{Clock}; the
names below are the stable surface (Twisted's C{iosim} carries no
compatibility promise, so it is wrapped rather than re-exported).
"""


from __future__ import annotations

from twisted.internet.task import Clock

from txproxy.testing._connector import ConnectAttempt, FakeConnector, connect
from txproxy.testing._factories import (
    forwardFactory,
    listenerConfig,
    reverseFactory,
    sniFactory,
    tcpFactory,
    transparentFactory,
)
from txproxy.testing._fakes import FakePasswordVerifier, clientHello
from txproxy.testing._redistier import FakeRedisTier
from txproxy.testing._transport import FakeTransport

__all__ = [
    "Clock",
    "FakeTransport",
    "FakeConnector",
    "ConnectAttempt",
    "connect",
    "clientHello",
    "listenerConfig",
    "forwardFactory",
    "reverseFactory",
    "tcpFactory",
    "transparentFactory",
    "sniFactory",
    "FakePasswordVerifier",
    "FakeRedisTier",
]
