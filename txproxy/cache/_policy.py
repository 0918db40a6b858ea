# -*- test-case-name: tests.test_cache_policy -*-
"""
The RFC 9111 shared-cache policy, sans-IO: plain values in, decisions out.
Nothing here imports Twisted or knows a clock: every function that needs
the time is given C{now} (seconds since the epoch, a float).

The choices this module makes where the RFCs leave room:

  - B{What is stored}: the response to a C{GET} whose status is final and
    not C{206}/C{304}, without C{no-store} (request or response) or
    C{private}, with explicit freshness (C{Expires}, C{max-age},
    C{s-maxage}, C{public}) or a heuristically cacheable status
    (RFC 9111 section 3).  C{Vary: *} is never stored (it could never be
    served).
  - B{Authorization} (section 3.5): a response to a request with
    C{Authorization} is stored only with C{public}, C{s-maxage} or
    C{must-revalidate}.
  - B{Set-Cookie}: a response carrying C{Set-Cookie} is stored only when
    the origin says it is meant for a shared cache (C{public} or
    C{s-maxage}), and even then the stored copy has its C{Set-Cookie}
    fields removed: the client whose request filled the cache gets its
    cookie, no other client ever gets it.  (Varnish's built-in VCL and
    nginx do not cache such responses at all; this rule is as safe and
    lets an origin opt in.)
  - B{Heuristic freshness} (section 4.2.2): 10% of the time since
    C{Last-Modified}, at most one day, for the heuristically cacheable
    statuses (and any status marked C{public}).
  - A qualified C{no-cache="field"} is treated as unqualified (always
    revalidate), as section 5.2.2.4 allows; likewise C{private="field"}
    is treated as unqualified (never stored).
  - An invalid or duplicated freshness directive makes the response stale
    (section 4.2.1 allows either this or the first value).
  - C{Age} (section 5.1): of a list (on one line or several) the first
    member counts, the rest is discarded; a first member that is not a
    non-negative integer (a sign, a fraction, letters, a parameter) makes
    the field ignored, as section 5.1 says (the apparent age from C{Date}
    still counts).  A huge value is capped at 2**31 seconds: stale.
  - C{must-understand} (section 5.2.2.3): a response with it is stored
    only when its status is in L{UNDERSTOOD_STATUSES}, and then even with
    C{no-store}.
  - A C{304} refreshes the stored response the cache asked about (its own
    conditional request names exactly that response's validators), but
    never replaces the fields the stored body's integrity depends on
    (L{NOT_UPDATED}: C{ETag}, C{Content-Length}, C{Content-Encoding},
    C{Content-Range}, C{Content-MD5} and the digest fields; section 3.2
    permits this).  A C{304} whose C{ETag} differs from the stored one
    (a validator the cache did not ask about) still refreshes it, keeping
    the stored C{ETag}: the 304 answered the cache's C{If-None-Match}
    for the stored tag.  This departs from the letter of section 4.3.4
    (which would leave the stored response alone); browsers do the same.
  - In reverse mode (a surrogate, L{consumeSurrogate}) C{CDN-Cache-Control}
    (RFC 9213), else C{Surrogate-Control}, replaces C{Cache-Control} for
    this cache's decisions (L{responseCacheControl}), C{private} excepted.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import attr

from txproxy.cache._fields import (
    CACHE_NAME,
    SURROGATE_CAPABILITY,
    SURROGATE_FIELD,
    SURROGATE_TOKEN,
    cacheControl,
    cacheStatus,
    cdnDirectives,
    parseHTTPDate,
    parseRange,
    requestCacheControl,
    seconds,
    surrogateDirectives,
    urlKey,
    varyKey,
    varyNames,
)
from txproxy.cache._invalidation import invalidationTargets, isUnsafe
from txproxy.http import RequestHead, ResponseHead, connectionTokens, endToEnd

__all__ = [
    "CACHE_NAME",
    "Derived",
    "FORWARD",
    "FRESH",
    "HEURISTIC_STATUSES",
    "NOT_UPDATED",
    "UNDERSTOOD_STATUSES",
    "derived",
    "REVALIDATE",
    "SURROGATE_CAPABILITY",
    "SURROGATE_FIELD",
    "SURROGATE_TOKEN",
    "STALE",
    "STALE_REVALIDATE",
    "UNSATISFIABLE",
    "Lookup",
    "StoredResponse",
    "ageOf",
    "ageValue",
    "seconds",
    "cacheControl",
    "cacheStatus",
    "cdnDirectives",
    "conditionalHeaders",
    "consumeSurrogate",
    "evaluateConditional",
    "freshnessLifetime",
    "initialAge",
    "invalidationTargets",
    "isUnsafe",
    "parseRange",
    "isStorable",
    "lookup",
    "parseHTTPDate",
    "responseCacheControl",
    "servedHeaders",
    "staleIfError",
    "storedHeaders",
    "surrogateDirectives",
    "withCapability",
    "withoutSurrogate",
    "updateHeaders",
    "urlKey",
    "varyKey",
    "varyNames",
]

#: Statuses cacheable by default (RFC 9110 section 15.1), that is with a
#: heuristic freshness lifetime.
HEURISTIC_STATUSES = frozenset({200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501})

#: The longest heuristic freshness lifetime, in seconds.
MAX_HEURISTIC = 86400.0

#: Fields never stored with a response (hop-by-hop, and connection
#: specific) beyond those the HTTP core removes.
_NOT_STORED = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authentication-info",
        b"set-cookie",
        b"age",
        b"cache-status",
        b"via",
    }
)

#: Fields a 304 never replaces in the stored response: those the stored
#: body's integrity depends on (section 3.2 lets a cache keep them), and
#: the fields never stored.
NOT_UPDATED = (
    frozenset(
        {
            b"etag",
            b"content-length",
            b"content-encoding",
            b"content-range",
            b"content-md5",
            b"digest",
            b"content-digest",
            b"repr-digest",
        }
    )
    | _NOT_STORED
)

#: The statuses whose caching requirements this cache implements: those
#: RFC 9110 defines (a C{must-understand} response with another is not
#: stored, section 5.2.2.3).
UNDERSTOOD_STATUSES = frozenset(
    {200, 201, 202, 203, 204, 205, 206, 300, 301, 302, 303, 304, 305, 307, 308}
    | set(range(400, 418))
    | {421, 422, 426}
    | set(range(500, 506))
)


# -- storing


def responseCacheControl(head: ResponseHead) -> Dict[bytes, Optional[bytes]]:
    """
    The directives this cache follows for a response: its
    C{Cache-Control}, unless it carries L{SURROGATE_FIELD} (a reverse-mode
    cache took C{Surrogate-Control}, L{consumeSurrogate}): then those
    directives, plus C{private} when C{Cache-Control} has it (a response
    for one user is never shared, whatever the surrogate is told).
    """
    cc = cacheControl(head.getAll(b"cache-control"))
    surrogate = head.getAll(SURROGATE_FIELD)
    if not surrogate:
        return cc
    directives = cacheControl(surrogate)
    if b"private" in cc:
        directives[b"private"] = None
    return directives


def consumeSurrogate(head: ResponseHead) -> ResponseHead:
    """
    C{head} as a surrogate (a reverse-mode cache, a CDN's role) keeps it:
    the directives meant for this cache, from C{CDN-Cache-Control}
    (RFC 9213, L{cdnDirectives}) when it is valid, else from
    C{Surrogate-Control} (L{surrogateDirectives}), under
    L{SURROGATE_FIELD}, where they take precedence over C{Cache-Control}
    (L{responseCacheControl}).  C{Surrogate-Control} is removed (it is
    for this cache, never passed on); C{CDN-Cache-Control} stays (a CDN
    in front of txproxy follows it too).
    """
    surrogate = head.getAll(b"surrogate-control")
    cdn = head.getAll(b"cdn-cache-control")
    if not surrogate and not cdn:
        return head
    headers = [(n, v) for n, v in head.headers if n.lower() not in (b"surrogate-control", SURROGATE_FIELD)]
    directives = cdnDirectives(cdn)
    if directives is None and surrogate:
        directives = surrogateDirectives(surrogate)
    if directives is not None:
        headers.append((SURROGATE_FIELD, directives))
    return ResponseHead(head.version, head.status, head.reason, tuple(headers))


def withCapability(head: RequestHead) -> RequestHead:
    """
    C{head} announcing this cache's L{SURROGATE_CAPABILITY} upstream: a
    C{Surrogate-Capability} line of its own after any the client sent (a
    surrogate in front of this one).
    """
    return RequestHead(head.method, head.target, head.version,
                       head.headers + ((b"Surrogate-Capability", SURROGATE_CAPABILITY),))


def withoutSurrogate(headers: Tuple[Tuple[bytes, bytes], ...]) -> Tuple[Tuple[bytes, bytes], ...]:
    """
    C{headers} without L{SURROGATE_FIELD}, to go to a client.
    """
    return tuple((n, v) for n, v in headers if n != SURROGATE_FIELD)


def isStorable(request: RequestHead, response: ResponseHead) -> Tuple[bool, str]:
    """
    Whether a shared cache may store C{response} to C{request}
    (RFC 9111 section 3, with this module's rules).

    @return: C{(storable, reason)}; the reason says why not (for the
        C{Cache-Status} C{detail}).
    """
    if request.method != b"GET":
        return False, "method"
    status = response.status
    if status < 200 or status == 206 or status == 304:
        return False, "status"
    reqCC = requestCacheControl(request)
    if b"no-store" in reqCC:
        return False, "request no-store"
    cc = responseCacheControl(response)
    if b"must-understand" in cc:
        # Section 5.2.2.3: only a cache that understands the status stores
        # it, and such a cache ignores no-store.
        if status not in UNDERSTOOD_STATUSES:
            return False, "must-understand"
    elif b"no-store" in cc:
        return False, "no-store"
    if b"private" in cc:
        return False, "private"
    if varyNames(response) is None:
        return False, "vary *"
    explicitShared = b"public" in cc or b"s-maxage" in cc
    if request.get(b"authorization") is not None:
        if not (explicitShared or b"must-revalidate" in cc):
            return False, "authorization"
    if response.get(b"set-cookie") is not None and not explicitShared:
        return False, "set-cookie"
    if (
        b"public" in cc
        or b"s-maxage" in cc
        or b"max-age" in cc
        or response.get(b"expires") is not None
        or status in HEURISTIC_STATUSES
    ):
        return True, ""
    return False, "no freshness"


def storedHeaders(response: ResponseHead) -> Tuple[Tuple[bytes, bytes], ...]:
    """
    The fields kept with a stored response: the end-to-end fields (not
    the hop-by-hop ones nor those C{Connection} lists, RFC 9110 section
    7.6.1), without C{Set-Cookie}, C{Age}, C{Via} and C{Cache-Status}
    (added when served).
    """
    return _withoutFields(response, _NOT_STORED)


def _withoutFields(head: ResponseHead, names: frozenset) -> Tuple[Tuple[bytes, bytes], ...]:
    tokens = connectionTokens(head.headers)
    if tokens:
        names = names | tokens
    return tuple((n, v) for n, v in head.headers if n.lower() not in names)


@attr.s(frozen=True, slots=True, auto_attribs=True)
class StoredResponse:
    """
    A stored response's head and what the policy needs to know about it.

    @ivar head: the stored head (L{storedHeaders}).
    @ivar requestTime: when the request that got it was sent.
    @ivar responseTime: when its head was received.
    @ivar initialAge: its corrected initial age (L{initialAge}).
    @ivar bodyLength: the length of the stored body.
    """

    head: ResponseHead
    requestTime: float
    responseTime: float
    initialAge: float
    bodyLength: int = 0
    #: What the policy derives from C{head} alone (L{derived}), computed
    #: once, on first use: a stored head never changes (a refresh makes a
    #: new L{StoredResponse}).
    _derived: Optional["Derived"] = attr.ib(default=None, init=False, eq=False, repr=False)


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Derived:
    """
    What a hit needs of a stored head, computed once per stored response
    (L{derived}) instead of on every hit.

    @ivar cc: its directives (L{responseCacheControl}); never mutated.
    @ivar lifetime: its freshness lifetime (L{freshnessLifetime}).
    @ivar noCache: whether C{cc} has C{no-cache}.
    @ivar served: its fields as served (L{servedHeaders} without C{Age}
        and C{Cache-Status}).
    @ivar endToEnd: C{served} as the HTTP core passes them to a client
        (L{txproxy.http.endToEnd}: no hop-by-hop field, no
        C{Content-Length}), and whether a C{Content-Length} was there; or
        L{None} when C{served} has a C{Connection} field (its options
        could name the fields a hit adds: the core filters each answer).
    """

    cc: Dict[bytes, Optional[bytes]]
    lifetime: float
    noCache: bool
    served: Tuple[Tuple[bytes, bytes], ...]
    endToEnd: Optional[Tuple[Tuple[Tuple[bytes, bytes], ...], bool]]


def derived(stored: StoredResponse) -> Derived:
    """
    The L{Derived} of C{stored}, computed on first use and kept on it.
    """
    d = stored._derived
    if d is None:
        head = stored.head
        cc = responseCacheControl(head)
        served = tuple((n, v) for n, v in head.headers if n != SURROGATE_FIELD)
        passed, tokens, hadLength = endToEnd(served)
        d = Derived(cc, freshnessLifetime(head), b"no-cache" in cc, served,
                    None if tokens else (tuple(passed), hadLength))
        object.__setattr__(stored, "_derived", d)
    return d


def initialAge(head: ResponseHead, requestTime: float, responseTime: float) -> float:
    """
    The corrected initial age of a response (RFC 9111 section 4.2.3).
    """
    age = ageValue(head)
    date = parseHTTPDate(head.get(b"date"))
    apparentAge = max(0.0, responseTime - date) if date is not None else 0.0
    responseDelay = max(0.0, responseTime - requestTime)
    return max(apparentAge, age + responseDelay)


def ageValue(head: ResponseHead) -> float:
    """
    The C{Age} of a response (section 5.1): the first member of its first
    field line when that is a non-negative integer (capped at 2**31),
    else 0 (no C{Age}, or an invalid one: ignored).
    """
    value = head.get(b"age")
    if value is None:
        return 0.0
    first = value.split(b",", 1)[0].strip()
    if not first.isdigit():
        return 0.0
    return float(min(int(first), 2**31))


def ageOf(stored: StoredResponse, now: float) -> float:
    """
    The current age of C{stored} at C{now} (section 4.2.3).
    """
    return stored.initialAge + max(0.0, now - stored.responseTime)


def freshnessLifetime(head: ResponseHead) -> float:
    """
    The freshness lifetime of a response for a shared cache
    (section 4.2.1): C{s-maxage}, else C{max-age}, else C{Expires} minus
    C{Date}, else heuristically (10% of the time since C{Last-Modified},
    at most L{MAX_HEURISTIC}) for a heuristically cacheable status or
    C{public}; else 0.
    """
    cc = responseCacheControl(head)
    if b"s-maxage" in cc:
        return float(seconds(cc[b"s-maxage"]) or 0)
    if b"max-age" in cc:
        return float(seconds(cc[b"max-age"]) or 0)
    expiresValues = head.getAll(b"expires")
    if expiresValues:
        expires = parseHTTPDate(expiresValues[0]) if len(expiresValues) == 1 else None
        if expires is None:
            return 0.0
        date = parseHTTPDate(head.get(b"date"))
        if date is None:
            return 0.0
        return max(0.0, expires - date)
    if head.status in HEURISTIC_STATUSES or b"public" in cc:
        lastModified = parseHTTPDate(head.get(b"last-modified"))
        date = parseHTTPDate(head.get(b"date"))
        if lastModified is not None and date is not None and date > lastModified:
            return min(MAX_HEURISTIC, (date - lastModified) / 10.0)
    return 0.0


# -- serving

#: Serve the stored response as it is.
FRESH = "fresh"
#: Serve the stored response stale (the client's C{max-stale} allows it).
STALE = "stale"
#: Serve it stale and revalidate in the background (C{stale-while-revalidate}).
STALE_REVALIDATE = "stale-while-revalidate"
#: Send a conditional request with the stored validators.
REVALIDATE = "revalidate"
#: Send the request upstream as is (nothing usable is stored).
FORWARD = "forward"
#: C{only-if-cached} and nothing may be served: answer 504.
UNSATISFIABLE = "unsatisfiable"


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Lookup:
    """
    The decision for a request and the stored response found for it.

    @ivar action: L{FRESH}, L{STALE}, L{STALE_REVALIDATE}, L{REVALIDATE},
        L{FORWARD} or L{UNSATISFIABLE}.
    @ivar age: the stored response's current age (0 without one).
    @ivar ttl: its remaining freshness lifetime (negative once stale).
    @ivar detail: why it was not served fresh (for C{Cache-Status}).
    """

    action: str
    age: float = 0.0
    ttl: float = 0.0
    detail: str = ""


def _hasValidators(head: ResponseHead) -> bool:
    return head.get(b"etag") is not None or head.get(b"last-modified") is not None


def lookup(request: RequestHead, stored: Optional[StoredResponse], now: float) -> Lookup:
    """
    Decide how to answer C{request} given the stored response selected
    for it (RFC 9111 section 4 and RFC 5861).

    @param stored: the stored response whose variant matches, or L{None}.
    @param now: the current time.
    """
    reqCC = requestCacheControl(request)
    onlyIfCached = b"only-if-cached" in reqCC
    if stored is None:
        return Lookup(UNSATISFIABLE if onlyIfCached else FORWARD, detail="miss")
    head = stored.head
    age = ageOf(stored, now)
    d = derived(stored)
    ttl = d.lifetime - age
    cc = d.cc
    revalidate = REVALIDATE if _hasValidators(head) else FORWARD
    if b"no-cache" in reqCC or b"no-cache" in cc:
        # Always revalidate (a no-cache request may not be answered from
        # the cache, even with only-if-cached: RFC 9111 gives no-cache
        # precedence; answer 504 rather than go upstream).
        if onlyIfCached:
            return Lookup(UNSATISFIABLE, age, ttl, "no-cache")
        return Lookup(revalidate, age, ttl, "request no-cache" if b"no-cache" in reqCC else "no-cache")
    fresh = ttl > 0
    maxAge = seconds(reqCC.get(b"max-age")) if b"max-age" in reqCC else None
    if b"max-age" in reqCC and maxAge is None:
        maxAge = 0
    minFresh = seconds(reqCC.get(b"min-fresh")) if b"min-fresh" in reqCC else None
    if fresh:
        if maxAge is not None and age > maxAge:
            fresh = False
            why = "request max-age"
        elif minFresh is not None and ttl < minFresh:
            fresh = False
            why = "request min-fresh"
        else:
            return Lookup(FRESH, age, ttl)
    else:
        why = "stale"
    # Not fresh enough.  Stale may be served only when the response allows.
    mustRevalidate = b"must-revalidate" in cc or b"proxy-revalidate" in cc or b"s-maxage" in cc
    staleness = -ttl if ttl < 0 else 0.0
    if not mustRevalidate and why == "stale":
        if b"max-stale" in reqCC:
            maxStale = reqCC[b"max-stale"]
            limit = seconds(maxStale)
            if maxStale is None or (limit is not None and staleness <= limit):
                return Lookup(STALE, age, ttl, "max-stale")
        swr = seconds(cc.get(b"stale-while-revalidate"))
        if swr is not None and staleness <= swr and maxAge is None:
            return Lookup(STALE_REVALIDATE, age, ttl, "stale-while-revalidate")
    if onlyIfCached:
        return Lookup(UNSATISFIABLE, age, ttl, why)
    return Lookup(revalidate, age, ttl, why)


def staleIfError(request: RequestHead, stored: StoredResponse, now: float) -> bool:
    """
    Whether C{stored} (stale or not) may answer C{request} because the
    upstream failed or answered 500, 502, 503 or 504 (RFC 5861 section 4;
    the response's or the request's C{stale-if-error}).
    """
    d = derived(stored)
    cc = d.cc
    if b"must-revalidate" in cc or b"proxy-revalidate" in cc or b"s-maxage" in cc or b"no-cache" in cc:
        return False
    staleness = ageOf(stored, now) - d.lifetime
    if staleness <= 0:
        return True
    for directives in (requestCacheControl(request), cc):
        limit = seconds(directives.get(b"stale-if-error"))
        if limit is not None and staleness <= limit:
            return True
    return False


def conditionalHeaders(request: RequestHead, stored: ResponseHead) -> Tuple[Tuple[bytes, bytes], ...]:
    """
    The request's fields for revalidating C{stored}: its own conditionals
    replaced by the stored validators (section 4.3.1).
    """
    drop = (b"if-none-match", b"if-modified-since", b"if-match", b"if-unmodified-since", b"if-range")
    headers = [(n, v) for n, v in request.headers if n.lower() not in drop]
    etag = stored.get(b"etag")
    if etag is not None:
        headers.append((b"If-None-Match", etag))
    lastModified = stored.get(b"last-modified")
    if lastModified is not None:
        headers.append((b"If-Modified-Since", lastModified))
    return tuple(headers)


def _weakMatch(candidates: bytes, etag: bytes) -> bool:
    if candidates.strip() == b"*":
        return True
    mine = etag.strip()
    mine = mine[2:] if mine[:2] == b"W/" else mine
    for part in candidates.split(b","):
        tag = part.strip()
        tag = tag[2:] if tag[:2] == b"W/" else tag
        if tag == mine:
            return True
    return False


def evaluateConditional(request: RequestHead, stored: ResponseHead) -> bool:
    """
    Whether a conditional C{GET}/C{HEAD} may be answered C{304} from
    C{stored} (RFC 9111 section 4.3.2; RFC 9110 section 13.2.2).
    """
    if stored.status != 200:
        return False
    inm = request.getAll(b"if-none-match")
    if inm:
        etag = stored.get(b"etag")
        return etag is not None and _weakMatch(b",".join(inm), etag)
    ims = parseHTTPDate(request.get(b"if-modified-since"))
    if ims is not None:
        reference = parseHTTPDate(stored.get(b"last-modified")) or parseHTTPDate(stored.get(b"date"))
        return reference is not None and reference <= ims
    return False


def updateHeaders(stored: ResponseHead, notModified: ResponseHead) -> ResponseHead:
    """
    The stored head refreshed by a C{304} (section 4.3.4): each field the
    304 carries replaces the stored ones of that name, except those in
    L{NOT_UPDATED} (the fields the stored body's integrity depends on, and
    those never stored; section 3.2), and those its C{Connection} lists.
    """
    fresh = list(_withoutFields(notModified, NOT_UPDATED))
    replaced = {n.lower() for n, _ in fresh}
    kept = [(n, v) for n, v in stored.headers if n.lower() not in replaced]
    return ResponseHead(stored.version, stored.status, stored.reason, tuple(kept + fresh))


def servedHeaders(stored: ResponseHead, age: float, status: bytes) -> List[Tuple[bytes, bytes]]:
    """
    The fields of a response served from the cache: the stored ones plus
    C{Age} (section 5.1) and C{Cache-Status}.
    """
    headers = [(n, v) for n, v in stored.headers if n != SURROGATE_FIELD]
    headers.append((b"Age", b"%d" % min(int(age), 2**31)))
    headers.append((b"Cache-Status", status))
    return headers
