# -*- test-case-name: tests.test_interfaces -*-
"""
Tests for L{txproxy.interfaces}: every implementation txproxy ships (and the
fakes of L{txproxy.testing}) provides the whole interface it declares, and
the interfaces declare the methods the code calls on its collaborators.
"""

from __future__ import annotations

from typing import Any, List

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyClass, verifyObject

from txproxy.connector import Connector, connectProtocol
from txproxy.interfaces import ILimiter, IRouter, IUpstreamConnector
from txproxy.limits._decision import ALLOWED, Decision
from txproxy.limits.memory import MemoryLimiter
from txproxy.limits.redis import RedisLimiter
from txproxy.limits.service import LimiterService, ListenerLimits
from txproxy.router import RouterService
from txproxy.testing import FakeConnector, listenerConfig, reverseFactory


class _UnusedRedisClient:
    """
    The connection of a L{RedisLimiter} that must never be used: these
    tests only look at the limiter's methods.
    """

    def execute(self, *args: Any) -> "Deferred[Any]":
        raise AssertionError(f"Redis asked {args!r}")


def _redisLimiter(clock: Clock) -> RedisLimiter:
    return RedisLimiter(_UnusedRedisClient(), clock=clock)


class LimiterInterfaceTests(SynchronousTestCase):
    """
    Every L{ILimiter} implementation provides the Deferred forms and the
    now-or-later forms.
    """

    def setUp(self) -> None:
        self.clock = Clock()

    def test_declaresNowOrLater(self) -> None:
        """
        L{ILimiter} declares C{takeNowOrLater} and C{acquireNowOrLater}
        beside C{take} and C{acquire}.
        """
        self.assertEqual(
            sorted(ILimiter.names()), ["acquire", "acquireNowOrLater", "take", "takeNowOrLater"]
        )

    def test_memoryLimiter(self) -> None:
        """
        L{MemoryLimiter} provides L{ILimiter}; its now-or-later forms answer
        at once.
        """
        self.assertTrue(verifyClass(ILimiter, MemoryLimiter))
        limiter = MemoryLimiter(self.clock)
        self.assertTrue(verifyObject(ILimiter, limiter))
        self.assertIs(limiter.takeNowOrLater("k", 1.0, 1), ALLOWED)
        decision = limiter.acquireNowOrLater("s", "c", 1, None)
        self.assertIsInstance(decision, Decision)

    def test_redisLimiter(self) -> None:
        """
        L{RedisLimiter}, built without connecting, provides L{ILimiter}.
        """
        self.assertTrue(verifyClass(ILimiter, RedisLimiter))
        self.assertTrue(verifyObject(ILimiter, _redisLimiter(self.clock)))
        self.assertTrue(verifyObject(ILimiter, RedisLimiter.fromURL("redis://127.0.0.1:1/0", reactor=self.clock)))

    def test_redisAcquireNowOrLaterIsLater(self) -> None:
        """
        L{RedisLimiter.acquireNowOrLater} asks Redis (a lease is counted
        there), as C{acquire} does.
        """
        asked: List[Any] = []

        class Client:
            def execute(self, *args: Any) -> "Deferred[Any]":
                d: Deferred[Any] = Deferred()
                asked.append((args, d))
                return d

        limiter = RedisLimiter(Client(), clock=self.clock)
        result = limiter.acquireNowOrLater("s", "c", 2, None)
        self.assertIsInstance(result, Deferred)
        self.assertEqual(asked[0][0][0], "EVALSHA")

    def test_limiterService(self) -> None:
        """
        L{LimiterService} provides L{ILimiter}, memory only and with a
        Redis backend object (not started: nothing connects).
        """
        self.assertTrue(verifyClass(ILimiter, LimiterService))
        self.assertTrue(verifyObject(ILimiter, LimiterService(clock=self.clock)))
        service = LimiterService(redis=_redisLimiter(self.clock), clock=self.clock)
        self.assertTrue(verifyObject(ILimiter, service))
        self.assertTrue(verifyObject(ILimiter, service.redis))

    def test_listenerLimitsCallsTheDeclaredMethods(self) -> None:
        """
        L{ListenerLimits} asks its limiter through the now-or-later forms
        L{ILimiter} declares, not through methods it may or may not have.
        """
        calls: List[str] = []

        class Recording(MemoryLimiter):
            def takeNowOrLater(self, *args: Any) -> Any:
                calls.append("takeNowOrLater")
                return super().takeNowOrLater(*args)

            def acquireNowOrLater(self, *args: Any) -> Any:
                calls.append("acquireNowOrLater")
                return super().acquireNowOrLater(*args)

        limits = ListenerLimits(Recording(self.clock), listenerConfig(rate="5/s", max_conns="3"), "l")
        self.assertTrue(limits.checkConnection("c", True).allowed)  # type: ignore[union-attr]
        self.assertEqual(calls, ["takeNowOrLater", "acquireNowOrLater"])


class ConnectorInterfaceTests(SynchronousTestCase):
    """
    Every L{IUpstreamConnector} provides C{resolve}, C{endpointFor},
    C{endpointForDescription} and C{connect}.
    """

    def test_declaresConnect(self) -> None:
        """
        L{IUpstreamConnector} declares every method the modes call on a
        connector.
        """
        self.assertEqual(
            sorted(IUpstreamConnector.names()),
            ["connect", "endpointFor", "endpointForDescription", "resolve"],
        )

    def test_connector(self) -> None:
        """
        L{Connector} provides L{IUpstreamConnector}.
        """
        self.assertTrue(verifyClass(IUpstreamConnector, Connector))
        self.assertTrue(verifyObject(IUpstreamConnector, Connector(Clock())))

    def test_fakeConnector(self) -> None:
        """
        L{txproxy.testing.FakeConnector} provides L{IUpstreamConnector}.
        """
        self.assertTrue(verifyClass(IUpstreamConnector, FakeConnector))
        self.assertTrue(verifyObject(IUpstreamConnector, FakeConnector()))

    def test_routerDefaultConnector(self) -> None:
        """
        The connector a L{RouterService} makes when given none provides
        L{IUpstreamConnector}.
        """
        connector = RouterService(clock=Clock())._getConnector()
        self.assertTrue(verifyObject(IUpstreamConnector, connector))

    def test_connectProtocolCallsConnect(self) -> None:
        """
        L{connectProtocol} dials through the connector's C{connect}.
        """
        connector = FakeConnector()
        proto = Protocol()
        d = connectProtocol(connector, "192.0.2.1", 80, proto)
        self.assertEqual((connector.last.host, connector.last.port), ("192.0.2.1", 80))
        self.assertIsInstance(d, Deferred)


class RouterInterfaceTests(SynchronousTestCase):
    """
    L{RouterService} provides L{IRouter}.
    """

    def test_routerService(self) -> None:
        """
        L{RouterService} provides L{IRouter}, empty and with listeners.
        """
        self.assertTrue(verifyClass(IRouter, RouterService))
        self.assertTrue(verifyObject(IRouter, RouterService(clock=Clock())))
        factory = reverseFactory({"a.test": ["http://192.0.2.1:80"]})
        self.assertTrue(IRouter.providedBy(factory.router))
        self.assertTrue(verifyObject(IRouter, factory.router))
        self.assertIsNotNone(factory.router.routeFor(factory.listener.name, "a.test", "/"))

    def test_declaresWhatTheModesUse(self) -> None:
        """
        L{IRouter} declares the lookups of the modes (C{routeFor},
        C{tableFor}, C{poolFor}), reload (C{setListeners}), C{listeners}
        and C{snapshot}.
        """
        self.assertEqual(
            sorted(IRouter.names()),
            ["listeners", "poolFor", "routeFor", "setListeners", "snapshot", "tableFor"],
        )
