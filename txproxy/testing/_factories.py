# -*- test-case-name: tests.test_testing -*-
"""
Factory helpers for every mode: L{forwardFactory}, L{reverseFactory},
L{tcpFactory}, L{transparentFactory} and L{sniFactory}, each built from
keyword options as the command line would give them, on fakes.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import attr
from twisted.internet.task import Clock

from txproxy import config
from txproxy.config import RouteConfig
from txproxy.forward import ForwardProxyFactory
from txproxy.reverse import ReverseProxyFactory
from txproxy.router import RouterService
from txproxy.stream.sni import SNIRouterFactory
from txproxy.stream.tcp import TCPProxyFactory, TransparentFactory
from txproxy.testing._connector import FakeConnector


def listenerConfig(**kwargs: Any) -> Any:
    """
    A L{txproxy.config.ListenerConfig} with test-friendly defaults, built
    from long option names with underscores for dashes, validated as on the
    command line (C{listenerConfig(connect_ports="*")}).  A list value
    repeats the option (C{route=[...]}).  The listen address is C{tcp:0}.

    @raise txproxy.errors.ConfigError: for an unknown option or bad value.
    """
    options: List[Tuple[str, Any]] = []
    for key, value in kwargs.items():
        name = key.replace("_", "-")
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            options.append((name, str(v) if not isinstance(v, str) else v))
    return config.fromFlags(["tcp:0"], options).listeners[0]


def _fakes(connector: Any, clock: Any, listener: Any) -> Tuple[Any, Any]:
    """
    The connector and clock of a helper-built factory: new fakes where none
    were given; a L{FakeConnector} takes the clock and connect timeout.
    """
    if clock is None:
        clock = Clock()
    if connector is None:
        connector = FakeConnector(clock=clock, connectTimeout=listener.connectTimeout)
    elif isinstance(connector, FakeConnector):
        connector._wire(clock, listener)
    return connector, clock


def _finish(factory: Any, protocol: Any) -> Any:
    if protocol is not None:
        factory.protocol = protocol
    return factory


def forwardFactory(
    connector: Optional[Any] = None,
    clock: Optional[Any] = None,
    listener: Any = None,
    protocol: Any = None,
    **options: Any,
) -> Any:
    """
    A L{txproxy.forward.ForwardProxyFactory} wired to fakes.

    @param connector: the upstream connector (default: a new
        L{FakeConnector}).
    @param clock: the clock of every timer (default: a new L{Clock}).
    @param listener: the listener configuration (default: one built from
        C{options} with L{listenerConfig}).
    @param protocol: a L{ForwardProxyProtocol} subclass to use.
    @param options: listener options (C{connect_ports="*"}, ...).
    """
    listener = listener if listener is not None else listenerConfig(**options)
    connector, clock = _fakes(connector, clock, listener)
    return _finish(ForwardProxyFactory(listener, connector, clock), protocol)


_Routes = Union[Mapping[str, Union[str, Sequence[str]]], Sequence[Any], str, None]


def _routeOptions(routes: _Routes) -> Tuple[List[str], List[Any]]:
    """
    The C{--route} rules of C{routes}, and the L{RouteConfig} values among
    them (in order; L{None} for a rule given as text).
    """
    if routes is None:
        return [], []
    if isinstance(routes, str):
        routes = [routes]
    rules: List[str] = []
    configs: List[Any] = []
    if isinstance(routes, Mapping):
        for key, urls in routes.items():
            urls = [urls] if isinstance(urls, str) else list(urls)
            rules.append(f"{key}={','.join(urls)}")
            configs.append(None)
        return rules, configs
    for item in routes:
        if isinstance(item, RouteConfig):
            # Validated as a rule with the same host, prefix and upstreams;
            # its other settings are kept.
            rules.append(f"{item.host}{item.prefix}={','.join(str(u) for u in item.upstreams)}")
            configs.append(item)
        else:
            rules.append(str(item))
            configs.append(None)
    return rules, configs


def _routedListener(mode: str, routes: _Routes, listener: Any, options: Dict[str, Any]) -> Any:
    if listener is not None:
        if routes is not None or options:
            raise TypeError("give either listener= or routes and options, not both")
        return listener
    if routes is None:
        raise TypeError(f"{mode}: routes (or listener=) are needed")
    rules, configs = _routeOptions(routes)
    listener = listenerConfig(mode=mode, route=rules, **options)
    if any(c is not None for c in configs):
        listener = attr.evolve(
            listener, routes=tuple(c if c is not None else r for c, r in zip(configs, listener.routes))
        )
    return listener


def _router(router: Any, listener: Any, connector: Any, clock: Any) -> Any:
    if router is not None:
        return router
    return RouterService([listener], connector, clock)


def reverseFactory(
    routes: _Routes = None,
    connector: Optional[Any] = None,
    clock: Optional[Any] = None,
    listener: Any = None,
    protocol: Any = None,
    router: Any = None,
    **options: Any,
) -> Any:
    """
    A L{txproxy.reverse.ReverseProxyFactory} wired to fakes, with a router
    holding C{routes}.

    @param routes: a mapping of C{"HOST[/PREFIX]"} to one upstream URL or a
        list of them (C{{"www.example.com": ["http://127.0.0.1:8001"]}});
        or a list of C{--route} rules (C{"a.test/api=http://192.0.2.1:80"})
        and L{txproxy.config.RouteConfig} values (for settings with no
        flag, such as C{stripPrefix}); or one rule.
    @param connector: the upstream connector (default: a new
        L{FakeConnector}).
    @param clock: the clock of every timer (default: a new L{Clock}).
    @param listener: a whole listener configuration instead of C{routes}
        and C{options}.
    @param protocol: a L{ReverseProxyProtocol} subclass to use.
    @param router: a L{txproxy.router.RouterService} that knows the
        listener (default: a new one for it, not started: active health
        checks run once you call its C{startService}).
    @param options: listener options (C{connect_timeout="3"}, ...).
    """
    listener = _routedListener("reverse", routes, listener, options)
    connector, clock = _fakes(connector, clock, listener)
    factory = ReverseProxyFactory(listener, connector, clock, router=_router(router, listener, connector, clock))
    return _finish(factory, protocol)


def tcpFactory(
    upstreams: Union[str, Sequence[str], None] = None,
    connector: Optional[Any] = None,
    clock: Optional[Any] = None,
    listener: Any = None,
    protocol: Any = None,
    router: Any = None,
    **options: Any,
) -> Any:
    """
    A L{txproxy.stream.tcp.TCPProxyFactory} (C{--mode tcp}) wired to fakes.

    @param upstreams: one client endpoint description or a list of them,
        as C{--upstream} takes (C{"tcp:192.0.2.10:6379"}).
    @param connector: the upstream connector (default: a new
        L{FakeConnector}).
    @param clock: the clock of every timer (default: a new L{Clock}).
    @param listener: a whole listener configuration instead of
        C{upstreams} and C{options}.
    @param protocol: a L{TCPProxyProtocol} subclass to use.
    @param router: a L{txproxy.router.RouterService} that knows the
        listener (default: the factory's own).
    @param options: listener options (C{balance="leastconn"}, ...).
    """
    if listener is None:
        if upstreams is None:
            raise TypeError("tcpFactory: upstreams (or listener=) are needed")
        listener = listenerConfig(mode="tcp", upstream=upstreams, **options)
    elif upstreams is not None or options:
        raise TypeError("give either listener= or upstreams and options, not both")
    connector, clock = _fakes(connector, clock, listener)
    return _finish(TCPProxyFactory(listener, connector, clock, router=router), protocol)


_Destination = Union[Tuple[str, int], Callable[[Any], Optional[Tuple[str, int]]], None]


def transparentFactory(
    destination: _Destination,
    connector: Optional[Any] = None,
    clock: Optional[Any] = None,
    listener: Any = None,
    protocol: Any = None,
    localAddresses: Sequence[str] = ("127.0.0.0/8", "::1/128"),
    **options: Any,
) -> Any:
    """
    A L{txproxy.stream.tcp.TransparentFactory} (C{--mode transparent}) wired to
    fakes, whose original-destination lookup is C{destination} instead of
    C{SO_ORIGINAL_DST}: no iptables rule, no real socket.

    The loop guard still runs: a destination equal to the accepted
    connection's own address (L{FakeTransport}'s C{127.0.0.1:3128} by
    default) is refused with C{403}.

    @param destination: the C{(host, port)} every connection was meant
        for; or a callable taking the accepted transport and returning one
        (or L{None}: not redirected, C{400}); or L{None}.
    @param connector: the upstream connector (default: a new
        L{FakeConnector}).
    @param clock: the clock of every timer (default: a new L{Clock}).
    @param listener: a whole listener configuration instead of C{options}.
    @param protocol: a L{TCPProxyProtocol} subclass to use.
    @param localAddresses: this host's networks for the loop guard, instead
        of reading them from C{/proc}.
    @param options: listener options (C{proxy_protocol_send="v1"}, ...).
    """
    if listener is None:
        listener = listenerConfig(mode="transparent", **options)
    elif options:
        raise TypeError("give either listener= or options, not both")
    connector, clock = _fakes(connector, clock, listener)
    factory = TransparentFactory(listener, connector, clock)
    lookup: Callable[[Any], Optional[Tuple[str, int]]]
    if callable(destination):
        lookup = destination
    else:
        fixed = (destination[0], destination[1]) if destination is not None else None

        def lookup(transport: Any) -> Optional[Tuple[str, int]]:
            return fixed

    # TransparentFactory's documented seams for tests: the lookup, and the
    # host's networks (read from /proc otherwise).
    factory.originalDestination = lookup  # type: ignore[assignment]
    local = tuple(localAddresses)
    factory.localAddresses = lambda: local  # type: ignore[method-assign]
    return _finish(factory, protocol)


def sniFactory(
    routes: _Routes = None,
    connector: Optional[Any] = None,
    clock: Optional[Any] = None,
    listener: Any = None,
    protocol: Any = None,
    router: Any = None,
    **options: Any,
) -> Any:
    """
    A L{txproxy.stream.sni.SNIRouterFactory} (C{--mode sni}) wired to fakes, with a
    router holding C{routes}.  Drive it with L{clientHello}.

    @param routes: a mapping of server name (exact, C{*.suffix} or C{*}) to
        one C{tcp://host:port} URL or a list of them
        (C{{"a.test": "tcp://192.0.2.1:443"}}); or a list of C{--route}
        rules and L{txproxy.config.RouteConfig} values; or one rule.
    @param connector: the upstream connector (default: a new
        L{FakeConnector}).
    @param clock: the clock of every timer (default: a new L{Clock}).
    @param listener: a whole listener configuration instead of C{routes}
        and C{options}.
    @param protocol: a L{SNIRouterProtocol} subclass to use.
    @param router: a L{txproxy.router.RouterService} that knows the
        listener (default: the factory's own).
    @param options: listener options (C{header_timeout="5"}, ...).
    """
    listener = _routedListener("sni", routes, listener, options)
    connector, clock = _fakes(connector, clock, listener)
    return _finish(SNIRouterFactory(listener, connector, clock, router=router), protocol)
