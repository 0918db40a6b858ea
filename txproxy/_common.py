# -*- test-case-name: tests.test_common -*-
"""
Small helpers every proxy mode shares: who the client is, whether a hook is
overridden, how an address is written, whether a host is an IP literal, and
what a failure to reach an upstream is called.

A leaf module: it imports only Twisted, the standard library,
L{txproxy.errors}, L{txproxy.hooks} and L{txproxy.http}, so any txproxy
module may import it without making a cycle.
"""

from __future__ import annotations

from os import fsdecode
from typing import Any, Dict, Tuple

from twisted.internet import defer, error
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.python.failure import Failure

from txproxy.errors import NoHealthyBackend, PolicyDenied, ResolveError
from txproxy.hooks import ClientInfo, Refuse
from txproxy.http import HTTPError

__all__ = ["clientInfoFor", "formatAddress", "isIPLiteral", "overrides", "statusForFailure"]


def clientInfoFor(transport: Any) -> ClientInfo:
    """
    Build a L{ClientInfo} from a transport's peer (the PROXY header's source
    address on C{haproxy:} listeners).

    @param transport: a connected transport.
    @return: the peer's host and port; for a UNIX socket, its path as text
        (or C{"unix"} when it has none) and port 0.
    """
    peer = transport.getPeer()
    host = getattr(peer, "host", None)
    if host is None:
        name = getattr(peer, "name", None) or "unix"
        return ClientInfo(fsdecode(name) if isinstance(name, bytes) else str(name), 0)
    return ClientInfo(host, getattr(peer, "port", 0))


_OVERRIDES: Dict[Tuple[type, str, type], bool] = {}


def overrides(obj: Any, name: str, base: type) -> bool:
    """
    Whether C{obj}'s class overrides method C{name} of C{base} (hooks that
    are not overridden are not called at all).  Cached per class, so the
    per-connection cost is one dict lookup.
    """
    key = (type(obj), name, base)
    try:
        return _OVERRIDES[key]
    except KeyError:
        result = _OVERRIDES[key] = getattr(type(obj), name) is not getattr(base, name)
        return result


def formatAddress(host: str, port: int) -> str:
    """
    Write a host and port as C{host:port}, with an IPv6 address in
    brackets (C{[2001:db8::1]:443}), as access records and logs show them.
    """
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def isIPLiteral(host: str) -> bool:
    """
    Whether C{host} is an IPv4 or IPv6 address literal (an IPv6 zone index,
    C{fe80::1%eth0}, is allowed; brackets are not).
    """
    return isIPAddress(host) or isIPv6Address(host)


def statusForFailure(f: Failure) -> Tuple[int, str]:
    """
    Map a failure to reach an upstream onto a status code and a short
    reason, the same in every mode (HTTP answers with them; the TCP modes
    put them in the access record).

    @return: C{(status, reason)}: a L{Refuse} or L{HTTPError} gives its own;
        L{PolicyDenied} 403; a name that does not resolve, a refused or
        failed connect 502; a connect timeout 504; no healthy backend 503;
        anything else 500 C{"internal error"}.
    """
    if f.check(Refuse):
        return f.value.status, f.value.reason
    if f.check(PolicyDenied):
        return 403, str(f.value) or "destination not allowed"
    if f.check(HTTPError):
        return f.value.status, f.value.reason
    if f.check(ResolveError, error.DNSLookupError):
        return 502, "cannot resolve the destination"
    if f.check(error.TimeoutError, defer.TimeoutError, defer.CancelledError):
        return 504, "timed out connecting to the destination"
    if f.check(error.ConnectionRefusedError):
        return 502, "the destination refused the connection"
    if f.check(error.ConnectError, error.ConnectionLost, error.ConnectionDone, OSError):
        return 502, "cannot connect to the destination"
    if f.check(NoHealthyBackend):
        return 503, "no healthy backend"
    return 500, "internal error"
