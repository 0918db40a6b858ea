# -*- test-case-name: tests.test_cache_policy -*-
"""
Field parsing for the cache policy, sans-IO: C{Cache-Control} directives,
HTTP dates, the URL and variant keys, C{Range}, and C{Cache-Status}
values (RFC 9211).  L{txproxy.cache._policy} re-exports these names.
"""

from __future__ import annotations

import calendar
import datetime
import re
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from txproxy.http import RequestHead, ResponseHead

__all__ = [
    "CACHE_NAME",
    "SURROGATE_CAPABILITY",
    "SURROGATE_FIELD",
    "SURROGATE_TOKEN",
    "cacheControl",
    "cacheStatus",
    "cdnDirectives",
    "parseHTTPDate",
    "parseRange",
    "requestCacheControl",
    "seconds",
    "surrogateDirectives",
    "urlKey",
    "varyKey",
    "varyNames",
]

#: The cache's name in C{Cache-Status} (RFC 9211).
CACHE_NAME = b"txproxy"

DEFAULT_PORTS = {"http": 80, "https": 443}

#: The name under which a stored head keeps the C{Surrogate-Control}
#: directives a reverse-mode cache took (L{surrogateDirectives}): not a
#: valid field name on the wire (no upstream can send it), never served.
SURROGATE_FIELD = b":surrogate-control"

#: This cache's device token in C{Surrogate-Capability} (which a
#: reverse-mode cache adds to what it sends upstream, L{SURROGATE_CAPABILITY})
#: and in targeted C{Surrogate-Control} directives (C{max-age=60;txproxy}).
SURROGATE_TOKEN = b"txproxy"

#: The C{Surrogate-Capability} member a reverse-mode cache announces.
SURROGATE_CAPABILITY = SURROGATE_TOKEN + b'="Surrogate/1.0"'

# -- parsing


def cacheControl(values: Iterable[bytes]) -> Dict[bytes, Optional[bytes]]:
    """
    Parse C{Cache-Control} field values into directives.

    @param values: every C{Cache-Control} value, in order.
    @return: directive (lower-case) -> argument (unquoted), or L{None}
        for a directive without one.  A directive given twice maps to
        C{b"\\x00dup"}, which no numeric parse accepts.
    """
    out: Dict[bytes, Optional[bytes]] = {}
    for value in values:
        for part in _splitList(value):
            name, eq, arg = part.partition(b"=")
            name = name.strip().lower()
            if not name:
                continue
            argument: Optional[bytes] = None
            if eq:
                argument = arg.strip()
                if len(argument) >= 2 and argument[:1] == b'"' and argument[-1:] == b'"':
                    argument = argument[1:-1]
            if name in out:
                out[name] = b"\x00dup"
            else:
                out[name] = argument
    return out


def _splitList(value: bytes) -> List[bytes]:
    """
    Split a comma-separated field value, keeping commas inside quotes.
    """
    if b'"' not in value:
        return value.split(b",")
    parts: List[bytes] = []
    current = bytearray()
    quoted = False
    for i in range(len(value)):
        c = value[i : i + 1]
        if c == b'"':
            quoted = not quoted
        if c == b"," and not quoted:
            parts.append(bytes(current))
            current = bytearray()
        else:
            current += c
    parts.append(bytes(current))
    return parts


def surrogateDirectives(values: Iterable[bytes]) -> Optional[bytes]:
    """
    The directives of C{Surrogate-Control} values (W3C Edge Architecture
    1.0) meant for this cache, as C{Cache-Control} directives: C{no-store},
    or C{max-age=N} (and C{stale-if-error=M} for C{max-age=N+M}, the time
    it may be served stale when the origin fails).  A directive targeted
    at this cache (C{max-age=60;txproxy}, L{SURROGATE_TOKEN}, which the
    cache announces in C{Surrogate-Capability}) wins over the untargeted
    ones; one targeted at another device is not for this one.  An invalid
    or duplicated C{max-age} is C{max-age=0}.

    @return: the directives, or L{None} when none is meant for this
        cache (C{Cache-Control} then decides).
    """
    untargeted: List[bytes] = []
    targeted: List[bytes] = []
    for value in values:
        for part in _splitList(value):
            directive, semi, target = part.partition(b";")
            if not semi:
                untargeted.append(directive)
            elif target.strip().lower() == SURROGATE_TOKEN:
                targeted.append(directive)
    noStore = False
    maxAge: Optional[int] = None
    grace: Optional[int] = None
    count = 0
    for directive in targeted or untargeted:
        name, eq, arg = directive.partition(b"=")
        name = name.strip().lower()
        if name == b"no-store":
            noStore = True
        elif name == b"max-age":
            count += 1
            first, plus, more = arg.strip().partition(b"+")
            maxAge = seconds(first.strip()) if eq else None
            grace = seconds(more.strip()) if plus else None
    if noStore:
        return b"no-store"
    if not count:
        return None
    if count > 1 or maxAge is None:
        return b"max-age=0"
    out = b"max-age=%d" % maxAge
    if grace is not None:
        out += b", stale-if-error=%d" % grace
    return out


# Structured Field (RFC 8941) dictionaries, for CDN-Cache-Control.
_SF_KEY = rb"[a-z*][a-z0-9_\-.*]*"
_SF_BARE = (rb'(?:-?\d{1,12}\.\d{1,3}|-?\d{1,15}|"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*"'
            rb"|[A-Za-z*][!#$%&'*+\-.^_`|~:/A-Za-z0-9]*|:[A-Za-z0-9+/=]*:|\?[01])")
_SF_PARAMS = rb"(?:;[ ]*" + _SF_KEY + rb"(?:=" + _SF_BARE + rb")?)*"
_SF_INNER = rb"\((?:[ ]*" + _SF_BARE + _SF_PARAMS + rb")*[ ]*\)"
_SF_MEMBER = re.compile(rb"(" + _SF_KEY + rb")(?:=(" + _SF_BARE + rb"|" + _SF_INNER + rb"))?" + _SF_PARAMS)
_SF_SEPARATOR = re.compile(rb"[ \t]*,[ \t]*")
_SF_INTEGER = re.compile(rb"\d{1,15}")

#: Directives whose argument is a number of seconds (an SF integer).
_DELTA_DIRECTIVES = frozenset(
    {b"max-age", b"s-maxage", b"stale-while-revalidate", b"stale-if-error", b"min-fresh", b"max-stale"})


def _sfDictionary(value: bytes) -> Optional[Dict[bytes, Optional[bytes]]]:
    """
    The members of an RFC 8941 dictionary (key -> its bare value, L{None}
    for C{true}; parameters dropped; the last of a key wins), or L{None}
    when C{value} is not one.
    """
    out: Dict[bytes, Optional[bytes]] = {}
    value = value.strip(b" \t")
    pos = 0
    while True:
        m = _SF_MEMBER.match(value, pos)
        if m is None:
            return None
        out[m.group(1)] = m.group(2)
        pos = m.end()
        if pos == len(value):
            return out
        sep = _SF_SEPARATOR.match(value, pos)
        if sep is None or sep.end() == len(value):
            return None
        pos = sep.end()


def cdnDirectives(values: Sequence[bytes]) -> Optional[bytes]:
    """
    The directives of C{CDN-Cache-Control} (RFC 9213) as C{Cache-Control}
    directives: its field lines form one Structured Field dictionary; a
    value that is not one is ignored whole (L{None}: C{Cache-Control}
    decides).  A directive of the wrong type (C{max-age="60"}) or false
    (C{?0}) is left out.
    """
    if not values:
        return None
    members = _sfDictionary(b", ".join(values))
    if members is None:
        return None
    out = []
    for key, arg in members.items():
        if key in _DELTA_DIRECTIVES:
            if arg is None or not _SF_INTEGER.fullmatch(arg):
                continue
            out.append(key + b"=" + arg)
        elif arg == b"?0":
            continue
        elif arg is None or arg == b"?1":
            out.append(key)
        else:
            out.append(key + b"=" + arg)
    return b", ".join(out)


def seconds(argument: Optional[bytes]) -> Optional[int]:
    """
    A delta-seconds argument, or L{None} when missing or invalid.
    """
    if argument is None or not argument.isdigit():
        return None
    return min(int(argument), 2**31)


_DAY = r"(?:mon|tue|wed|thu|fri|sat|sun)"
_MONTH = r"(jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)"
_TIME = r"(\d\d):(\d\d):(\d\d)"
#: IMF-fixdate, rfc850-date, asctime-date (RFC 9110 section 5.6.7), names
#: in any case.
_IMF = re.compile(_DAY.encode() + rb", (\d\d) " + _MONTH.encode() + rb" (\d{4}) " + _TIME.encode() + rb" gmt",
                  re.IGNORECASE)
_RFC850 = re.compile(rb"(?:monday|tuesday|wednesday|thursday|friday|saturday|sunday), (\d\d)-" + _MONTH.encode()
                     + rb"-(\d\d) " + _TIME.encode() + rb" gmt", re.IGNORECASE)
_ASCTIME = re.compile(_DAY.encode() + rb" " + _MONTH.encode() + rb" ( \d|\d\d) " + _TIME.encode() + rb" (\d{4})",
                      re.IGNORECASE)
_MONTHS = {m: i + 1 for i, m in enumerate(
    (b"jan", b"feb", b"mar", b"apr", b"may", b"jun", b"jul", b"aug", b"sep", b"oct", b"nov", b"dec"))}


def parseHTTPDate(value: Optional[bytes]) -> Optional[float]:
    """
    Parse an HTTP-date (RFC 9110 section 5.6.7): one of its three formats
    exactly (the names in any case), nothing else: no other time zone, no
    two-digit year outside C{rfc850-date}, no missing comma or extra
    space (an invalid C{Expires} then means already expired, an invalid
    C{If-Modified-Since} is ignored).  A two-digit year is 20yy below 70,
    else 19yy.

    @return: seconds since the epoch, or L{None} when missing or invalid.
    """
    if value is None:
        return None
    value = value.strip()
    m = _IMF.fullmatch(value)
    if m is not None:
        day, month, year, hh, mm, ss = m.groups()
        y = int(year)
    else:
        m = _RFC850.fullmatch(value)
        if m is not None:
            day, month, year, hh, mm, ss = m.groups()
            y = int(year)
            y += 2000 if y < 70 else 1900
        else:
            m = _ASCTIME.fullmatch(value)
            if m is None:
                return None
            month, day, hh, mm, ss, year = m.groups()
            y = int(year)
    try:
        moment = datetime.datetime(y, _MONTHS[month.lower()], int(day), int(hh), int(mm), min(int(ss), 59))
    except (ValueError, OverflowError):
        return None
    return float(calendar.timegm(moment.timetuple())) + (1.0 if int(ss) == 60 else 0.0)


def requestCacheControl(head: RequestHead) -> Dict[bytes, Optional[bytes]]:
    cc = cacheControl(head.getAll(b"cache-control"))
    if not cc:
        # RFC 9111 section 5.4: Pragma: no-cache without Cache-Control.
        pragma = head.get(b"pragma")
        if pragma is not None and b"no-cache" in pragma.lower():
            cc[b"no-cache"] = None
    return cc


# -- keys


def urlKey(scheme: str, host: str, port: int, path: bytes) -> bytes:
    """
    The key of a target URI: scheme and host lower-cased, the scheme's
    default port omitted, path and query as carried.

    @param path: the origin-form path and query.
    """
    scheme = scheme.lower()
    host = host.lower()
    if ":" in host:
        host = "[" + host + "]"
    authority = host if DEFAULT_PORTS.get(scheme) == port else f"{host}:{port}"
    return f"{scheme}://{authority}".encode("idna" if not authority.isascii() else "ascii") + path


def varyNames(head: ResponseHead) -> Optional[Tuple[bytes, ...]]:
    """
    The request fields a response varies on, lower-cased and sorted, or
    L{None} for C{Vary: *}.
    """
    names = set()
    for value in head.getAll(b"vary"):
        for part in value.split(b","):
            name = part.strip().lower()
            if name == b"*":
                return None
            if name:
                names.add(name)
    return tuple(sorted(names))


def _normalised(values: List[bytes]) -> bytes:
    # Whitespace around list members and between fields does not matter
    # (RFC 9111 section 4.1).
    return b",".join(b" ".join(p.split()) for v in values for p in v.split(b","))


def varyKey(names: Sequence[bytes], request: RequestHead) -> bytes:
    """
    The variant key of C{request} for a response varying on C{names}: the
    selecting fields' normalised values (an absent field differs from an
    empty one).
    """
    if not names:
        return b""
    parts = []
    for name in names:
        values = request.getAll(name)
        parts.append(name + (b"=" + _normalised(values) if values else b"!"))
    return b"\n".join(parts)


def cacheStatus(
    hit: bool,
    fwd: Optional[str] = None,
    stored: bool = False,
    ttl: Optional[float] = None,
    fwdStatus: Optional[int] = None,
    collapsed: bool = False,
    detail: Optional[str] = None,
) -> bytes:
    """
    A C{Cache-Status} value (RFC 9211) for this cache.

    @param fwd: the C{fwd} reason (C{uri-miss}, C{vary-miss}, C{stale},
        C{request}, C{bypass}, C{miss}).
    """
    parts = [CACHE_NAME]
    if hit:
        parts.append(b"hit")
    if fwd is not None:
        parts.append(b"fwd=" + fwd.encode("ascii"))
    if fwdStatus is not None:
        parts.append(b"fwd-status=%d" % fwdStatus)
    if ttl is not None:
        parts.append(b"ttl=%d" % int(ttl))
    if stored:
        parts.append(b"stored")
    if collapsed:
        parts.append(b"collapsed")
    if detail:
        parts.append(b'detail="' + detail.encode("ascii", "replace").replace(b'"', b"") + b'"')
    return b"; ".join(parts)


def parseRange(value: Optional[bytes], length: int) -> Optional[Tuple[int, int]]:
    """
    One satisfiable byte range of a C{Range} value over a body of
    C{length} bytes, as C{(first, last)} inclusive; L{None} when the value
    is absent, not one C{bytes} range, or not satisfiable (the full
    response is then served: RFC 9110 section 14.2 lets a server ignore
    C{Range}).
    """
    if value is None:
        return None
    unit, eq, spec = value.partition(b"=")
    if not eq or unit.strip().lower() != b"bytes" or b"," in spec:
        return None
    first, dash, last = spec.strip().partition(b"-")
    if not dash:
        return None
    if not first:
        if not last.isdigit() or int(last) == 0 or length == 0:
            return None
        return max(0, length - int(last)), length - 1
    if not first.isdigit() or (last and not last.isdigit()):
        return None
    start = int(first)
    end = int(last) if last else length - 1
    if start > end or start >= length:
        return None
    return start, min(end, length - 1)
