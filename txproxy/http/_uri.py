# -*- test-case-name: tests.test_http_parser -*-
"""
Request targets and host values: authority-form (C{CONNECT host:port}),
absolute-form (C{http://host:port/path}) and C{Host} header values.

Host names are held to what a resolver accepts: letters, digits, C{-},
C{_} and dots (a trailing dot allowed), at most 253 characters, or an IPv6
literal in brackets (no zone identifier).  RFC 3986 also allows
percent-encoding and sub-delims in a reg-name; no resolvable name uses
them, and accepting them would only let odd names reach the resolver, so
they are C{400}.  Host names are returned lower-cased, IPv6 literals
without brackets.  Dotted-decimal-looking names (C{127.1}, C{0x7f.1}) are
returned as given: destination policy must check the resolved address.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from typing import Dict, Sequence, Tuple

from ._errors import HTTPError

_HOSTNAME = re.compile(rb"[A-Za-z0-9_](?:[A-Za-z0-9_\-.]{0,251}[A-Za-z0-9_\-])?\.?")
_PORT = re.compile(rb"[0-9]{1,5}")
_ABSOLUTE = re.compile(rb"([A-Za-z][A-Za-z0-9+.\-]*)://([^/?#]*)([^#]*)")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _splitHostPort(value: bytes, requirePort: bool, defaultPort: int) -> Tuple[str, int]:
    """
    Split and check C{uri-host [":" port]}.

    @raise HTTPError: C{400} if it is not valid.
    """
    if value.startswith(b"["):
        close = value.find(b"]")
        if close < 0:
            raise HTTPError(400, "Unterminated IPv6 literal")
        literal = value[1:close]
        rest = value[close + 1 :]
        if b"%" in literal:
            raise HTTPError(400, "IPv6 zone identifiers are not allowed")
        try:
            ipaddress.IPv6Address(literal.decode("ascii"))
        except ValueError:
            raise HTTPError(400, "Invalid IPv6 literal")
        host = literal.decode("ascii").lower()
    else:
        colon = value.find(b":")
        if colon < 0:
            name, rest = value, b""
        else:
            name, rest = value[:colon], value[colon:]
        if not _HOSTNAME.fullmatch(name):
            raise HTTPError(400, "Invalid host name")
        host = name.decode("ascii").lower()
    if not rest:
        if requirePort:
            raise HTTPError(400, "Missing port")
        return host, defaultPort
    if rest[:1] != b":":
        raise HTTPError(400, "Invalid host")
    portText = rest[1:]
    if not portText and not requirePort:
        return host, defaultPort
    if not _PORT.fullmatch(portText):
        raise HTTPError(400, "Invalid port")
    port = int(portText)
    if not 0 < port < 65536:
        raise HTTPError(400, "Invalid port")
    return host, port


_HOST_FAST = re.compile(
    rb"[A-Za-z0-9_](?:[A-Za-z0-9_\-.]{0,251}[A-Za-z0-9_\-])?\.?(?::([0-9]{1,5}))?"
)


#: C{Host} values found valid, at most L{_KNOWN_HOSTS}: clients repeat
#: theirs, and a dictionary lookup is cheaper than the match (on PyPy, whose
#: match allocates about 2 KB, much cheaper).  Only valid values are kept.
_VALID_HOSTS: Dict[bytes, bool] = {}
_KNOWN_HOSTS = 256


def _checkHostValue(value: bytes) -> None:
    """
    Check a non-empty C{Host} header value.

    @raise HTTPError: C{400} if it is not valid.
    """
    if value in _VALID_HOSTS:
        return
    match = _HOST_FAST.fullmatch(value)
    port = None if match is None else match.group(1)
    if match is None or not (port is None or (port.strip(b"0") and (len(port) < 5 or int(port) < 65536))):
        # IPv6 literals, port 0, out-of-range ports and errors take the
        # slow path.
        _splitHostPort(value, False, 0)
    if len(_VALID_HOSTS) >= _KNOWN_HOSTS:
        _VALID_HOSTS.clear()
    _VALID_HOSTS[value] = True


def parseAuthority(target: bytes) -> Tuple[str, int]:
    """
    Parse an authority-form request target (C{CONNECT host:port}).

    @param target: C{host:port}, C{[IPv6]:port}; the port is required.
    @return: the host (lower-cased; IPv6 without brackets) and the port.
    @raise HTTPError: C{400} if the target is not a valid C{host:port}
        (user info, a missing or out-of-range port and an invalid host
        name included).
    """
    return _parseAuthority(target)


# A CONNECT target is checked when its head is parsed and split again when
# the tunnel is dialled, and clients open many tunnels to the same few
# hosts: the answers (never the errors) are kept, for at most 1,024 targets.
@functools.lru_cache(maxsize=1024)
def _parseAuthority(target: bytes) -> Tuple[str, int]:
    return _splitHostPort(target, True, 0)


def parseHostHeader(value: bytes, defaultPort: int = 80) -> Tuple[str, int]:
    """
    Parse a C{Host} header value (C{host}, C{host:port}, C{[IPv6]:port}).

    @param value: the header value, not empty.
    @param defaultPort: the port to return when the value names none.
    @return: the host (lower-cased; IPv6 without brackets) and the port.
    @raise HTTPError: C{400} if the value is not valid.
    """
    return _splitHostPort(value, False, defaultPort)


def parseAbsoluteURI(
    target: bytes, schemes: Sequence[str] = ("http",)
) -> Tuple[str, str, int, bytes]:
    """
    Parse an absolute-form request target (C{GET http://host:port/path}).

    Only C{http} is accepted by default: a forward proxy reaches C{https}
    origins through C{CONNECT}, and a client that sends an C{https://}
    absolute-form target is told so (C{400}).  Pass
    C{schemes=("http", "https")} to accept both (for a proxy that
    originates TLS itself).

    @param target: the request target.
    @param schemes: the accepted schemes, lower-case.
    @return: the scheme (lower-case), host (lower-case; IPv6 without
        brackets), port (the scheme's default when absent or empty) and
        the path and query to send in origin-form (C{b"/"} when the path
        is empty; any fragment dropped).
    @raise HTTPError: C{400} for a target that is not an absolute URI, has
        user info, an invalid host or port, or a scheme not in C{schemes}.
    """
    match = _ABSOLUTE.match(target)
    if match is None:
        raise HTTPError(400, "Request target is not an absolute URI")
    scheme = match.group(1).decode("ascii").lower()
    if scheme not in schemes:
        if scheme == "https":
            raise HTTPError(400, "https URLs must be requested through a CONNECT tunnel")
        raise HTTPError(400, "Unsupported URL scheme")
    authority = match.group(2)
    if b"@" in authority:
        raise HTTPError(400, "User information in URLs is not allowed")
    if not authority:
        raise HTTPError(400, "URL has no host")
    host, port = _splitHostPort(authority, False, _DEFAULT_PORTS.get(scheme, 80))
    path = match.group(3)
    if not path:
        path = b"/"
    elif path[:1] == b"?":
        path = b"/" + path
    return scheme, host, port, path
