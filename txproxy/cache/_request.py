# -*- test-case-name: tests.test_cache_http -*-
"""
L{CacheRequest}: one request the cache looked up, from
L{txproxy.cache._http.HTTPCache.intercept} to the end of its exchange (the
module docstring of L{txproxy.cache._http} says when the HTTP core calls
it).
"""

from __future__ import annotations

from email.utils import formatdate
from typing import TYPE_CHECKING, Any, Callable, Optional, Tuple

from txproxy.cache import _policy as P
from txproxy.cache._entry import Entry
from txproxy.cache._memory import Writer
from txproxy.http import RequestHead, ResponseHead

if TYPE_CHECKING:  # pragma: no cover
    from txproxy.cache._http import HTTPCache

__all__ = ["MAX_COLLAPSED_WAIT", "CacheRequest"]

_GET = b"GET"
_HEAD = b"HEAD"
_SIE_STATUSES = frozenset({500, 502, 503, 504})
_BYPASS = P.cacheStatus(False, "bypass")
_HIT = P.CACHE_NAME + b"; hit; ttl="

#: The request fields that may make a lookup or a served response other
#: than the plain one (a fresh stored response served whole): a request
#: with none of them takes L{CacheRequest.decide}'s fast path.
NOT_PLAIN = frozenset({
    b"cache-control", b"pragma", b"if-none-match", b"if-modified-since", b"range", b"if-range",
    b"x-original-url", b"x-rewrite-url",
})


def isPlain(head: RequestHead) -> bool:
    """
    Whether C{head} has none of the L{NOT_PLAIN} fields (one pass).
    """
    for n, _ in head.headers:
        if n.lower() in NOT_PLAIN:
            return False
    return True

#: The longest a collapsed request waits for the one upstream before it
#: goes upstream itself (also at most half of C{--connect-timeout}).
MAX_COLLAPSED_WAIT = 10.0


def _discard(data: bytes) -> None:
    """
    Where the client's bytes go while the cache answers it from elsewhere.
    """


class CacheRequest:
    """
    One request the cache looked up, from L{HTTPCache.intercept} to the end
    of its exchange.

    @ivar status: the C{Cache-Status} of a forwarded response.
    """

    unsafe = False
    known = False
    leading = False
    waiting = False
    background = False
    done = False
    entry: Optional[Entry] = None
    writer: Optional[Writer] = None
    storing = False
    revalidating = False
    collapsed = False
    counted = False
    #: Whether the client's request is L{isPlain} (set by the cache).
    plain = False
    _wake: Any = None
    _restore: Optional[Callable[[bytes], Any]] = None
    _logStatus: Optional[int] = None

    def __init__(self, cache: "HTTPCache", proto: Any, request: Any, head: RequestHead, urlKey: bytes) -> None:
        self.cache = cache
        self.proto = proto
        self.request = request
        self.head = head
        self.urlKey = urlKey
        self.status = _BYPASS
        self.requestTime = cache.clock.seconds()
        self.surrogate = cache.surrogate

    # -- deciding

    def bypass(self, why: str) -> RequestHead:
        if why == "route":
            # No cache on this route: nothing is consumed either.
            self.surrogate = False
        self._count("bypass")
        self.status = P.cacheStatus(False, "bypass", detail=why)
        self.done = not self.unsafe
        return self.head

    def decide(self, entry: Optional[Entry], sync: bool, collapse: bool = True) -> Optional[RequestHead]:
        """
        Decide with C{entry} (the variant selected, or L{None}).

        @param sync: whether the protocol is still in L{HTTPCache.intercept}
            (else it continues through its C{_upstreamFor}).
        @param collapse: whether to wait for an identical request already
            upstream.
        @return: the head to send upstream, or L{None} (answered, or
            waiting).
        """
        cache = self.cache
        now = cache.clock.seconds()
        if self.plain and entry is not None:
            # The fast path (no request directives, conditionals or
            # ranges): the same decision as lookup's, from what the
            # stored response derived once.
            stored = entry.stored
            d = P.derived(stored)
            age = stored.initialAge + max(0.0, now - stored.responseTime)
            ttl = d.lifetime - age
            if ttl > 0 and not d.noCache:
                self._count("hit")
                status = _HIT + b"%d" % int(ttl)
                if self.collapsed:
                    status += b"; collapsed"
                added = ((b"Age", b"%d" % min(int(age), 2**31)), (b"Cache-Status", status))
                head = stored.head
                self.done = True
                e2e = d.endToEnd
                passed = None
                if e2e is not None:
                    # (What the core's filter would make of served + added:
                    # neither added field is hop-by-hop.)
                    passed = (list(e2e[0] + added), e2e[1])
                self.proto._answerFromCache(ResponseHead(head.version, head.status, head.reason, d.served + added),
                                            entry.body, True, passed)
                return None
        proto = self.proto
        client = self.request.head
        lk = P.lookup(client, entry.stored if entry is not None else None, now)
        action = lk.action
        collapsed = self.collapsed
        if action == P.FRESH:
            assert entry is not None
            self._count("hit")
            self._serve(entry, P.cacheStatus(True, ttl=lk.ttl, collapsed=collapsed), now)
            return None
        if action == P.STALE:
            assert entry is not None
            self._count("stale")
            self._serve(entry, P.cacheStatus(True, ttl=lk.ttl, collapsed=collapsed, detail="max-stale"), now)
            return None
        if action == P.UNSATISFIABLE:
            self._count("miss")
            self.done = True
            status = P.cacheStatus(False, "miss", detail="only-if-cached")
            body = b"504 not in the cache (only-if-cached)\n"
            proto._answerFromCache(ResponseHead(b"HTTP/1.1", 504, b"Gateway Timeout", (
                (b"Content-Type", b"text/plain; charset=utf-8"), (b"Content-Length", b"%d" % len(body)),
                (b"Cache-Status", status))), body, True)
            return None
        if action == P.STALE_REVALIDATE:
            assert entry is not None
            self._count("stale")
            status = P.cacheStatus(True, ttl=lk.ttl, collapsed=collapsed, detail="stale-while-revalidate")
            if client.method != _GET or cache._flightFor(self.urlKey) is not None:
                # Someone is revalidating it already.
                self._serve(entry, status, now)
                return None
            self._serve(entry, status, now, finish=False)
            # The same exchange revalidates, its answer for the cache only.
            self.done = False
            self.background = True
            self._logStatus = entry.stored.head.status
            self._restore = proto._toClient
            proto._toClient = _discard
            self._revalidate(entry)
            cache._takeOff(self)
            return self._conditionalHead(entry)
        # Forward or revalidate.
        self.entry = entry
        if entry is not None:
            fwd = "request" if lk.detail == "request no-cache" else "stale"
        else:
            fwd = "vary-miss" if self.known else "uri-miss"
        if client.method == _HEAD or client.get(b"range") is not None:
            # Answered upstream, never stored (nor collapsed).
            self.entry = None
            self._count("miss")
            self.status = P.cacheStatus(False, fwd)
            self.done = True
            return self.head
        if collapse:
            flight = cache._flightFor(self.urlKey)
            if flight is not None:
                flight.waiters.append(self)
                self.waiting = True
                bound = min(self.proto.factory.listener.connectTimeout / 2.0, MAX_COLLAPSED_WAIT)
                self._wake = cache.clock.callLater(bound, self.resume)
                return None
        ex = proto._ex
        if ex is not None:
            # The body is wanted decoded, as it streams (Observe actions).
            ex.observeResponse = True
        self.status = P.cacheStatus(False, fwd)
        self.storing = True
        cache._takeOff(self)
        if action == P.REVALIDATE:
            assert entry is not None
            self._revalidate(entry)
            return self._conditionalHead(entry)
        if entry is None:
            # (With a stale one, counted once its fate is known: stale if
            # it answers for an error, else miss.)
            self._count("miss")
        return self.head

    def _count(self, result: str) -> None:
        """
        Count this request's result (once).
        """
        if not self.counted:
            self.counted = True
            self.cache.count(result)

    def _revalidate(self, entry: Entry) -> None:
        self.entry = entry
        self.revalidating = True
        self.storing = True

    def _conditionalHead(self, entry: Entry) -> RequestHead:
        head = self.head
        ex = self.proto._ex
        if ex is not None:
            ex.observeResponse = True
        return RequestHead(head.method, head.target, head.version, P.conditionalHeaders(head, entry.stored.head))

    def resume(self) -> None:
        """
        The request this one waited for is done (or it waited long
        enough): look up again; on a miss, go upstream (no second wait).
        """
        wake, self._wake = self._wake, None
        if wake is not None and wake.active():
            wake.cancel()
        if not self.waiting:
            return
        self.waiting = False
        proto = self.proto
        if self.done or proto._cacheReq is not self:
            return
        self.collapsed = True
        entry, known = self.cache.store.select(self.urlKey, self.request.head)
        self.known = self.known or known
        head = self.decide(entry, False, collapse=False)
        if head is not None:
            proto._upstreamFor(self.request, head)

    # -- serving

    def _served(self, entry: Entry, status: bytes, now: float) -> Tuple[ResponseHead, bytes]:
        """
        The response C{entry} gives this request: C{304} when the client's
        own conditional matches, C{206} for one byte range, else the whole.
        """
        client = self.request.head
        stored = entry.stored.head
        age = P.ageOf(entry.stored, now)
        headers = list(P.derived(entry.stored).served)
        headers.append((b"Age", b"%d" % min(int(age), 2**31)))
        headers.append((b"Cache-Status", status))
        if P.evaluateConditional(client, stored):
            return ResponseHead(stored.version, 304, b"Not Modified", tuple(headers)), b""
        body = entry.body
        if stored.status == 200 and client.get(b"if-range") is None:
            span = P.parseRange(client.get(b"range"), len(body))
            if span is not None:
                first, last = span
                headers = [(n, v) for n, v in headers if n.lower() != b"content-length"]
                headers.append((b"Content-Range", b"bytes %d-%d/%d" % (first, last, len(body))))
                headers.append((b"Content-Length", b"%d" % (last - first + 1)))
                return ResponseHead(stored.version, 206, b"Partial Content", tuple(headers)), body[first : last + 1]
        return ResponseHead(stored.version, stored.status, stored.reason, tuple(headers)), body

    def _serve(self, entry: Entry, status: bytes, now: float, finish: bool = True) -> None:
        resp, body = self._served(entry, status, now)
        self.done = True
        self.proto._answerFromCache(resp, body, finish)

    # -- the response side

    def responseHead(self, resp: ResponseHead) -> Optional[ResponseHead]:
        """
        The upstream's final response head arrived.

        @return: the head to send to the client (with C{Cache-Status}), or
            L{None} when the cache answers instead (a C{304} refreshed the
            stored response; C{stale-if-error}).
        """
        cache = self.cache
        now = cache.clock.seconds()
        client = self.request.head
        if self.surrogate:
            # Surrogate-Control is for this cache: taken, not passed on.
            resp = P.consumeSurrogate(resp)
        if self.unsafe:
            for key in P.invalidationTargets(self.urlKey, client.method, resp):
                cache.purge(key)
        entry = self.entry
        if self._sieAllowed(resp, now):
            assert entry is not None
            self._staleIfError(entry, resp.status, now)
            return None
        if self.revalidating and entry is not None:
            if resp.status == 304:
                # The answer to the cache's own condition, which named the
                # stored response's validators: it is still good (even if
                # the 304 carries another ETag, which is not taken: see
                # the policy's NOT_UPDATED).  A 304 never reaches a client
                # whose own request was not conditional.
                head = P.updateHeaders(entry.stored.head, resp)
                stored = P.StoredResponse(head, self.requestTime, now, P.initialAge(resp, self.requestTime, now),
                                          len(entry.body))
                entry = self.entry = cache.store.update(entry, stored)
                cache._share(entry, now)
                self.storing = False
                cache._land(self)
                if self.background:
                    return None
                self._count("revalidated")
                served, body = self._served(entry, self.status + b"; fwd-status=304", now)
                cookies = tuple((n, v) for n, v in resp.headers if n.lower() == b"set-cookie")
                if cookies:
                    # The origin's answer to this client: its cookie, not stored.
                    served = ResponseHead(served.version, served.status, served.reason, served.headers + cookies)
                self._logStatus = served.status
                self.done = True
                self.proto._answerFromCache(served, body, False)
                return None
        if entry is not None and not self.background:
            self._count("miss")
        if self.storing:
            ok, why = P.isStorable(client, resp)
            length = resp.get(b"content-length")
            if ok and length is not None and length.isdigit() and int(length) > cache.store.maxObject:
                # Known too large: the waiters need not wait for it.
                ok, why = False, "too large"
            if ok and 200 <= resp.status:
                vary = P.varyNames(resp)
                assert vary is not None
                headers = [(n, v) for n, v in P.storedHeaders(resp) if n.lower() != b"content-length"]
                if resp.get(b"date") is None:
                    # RFC 9110 section 6.6.1: a cache records when it got it.
                    headers.append((b"Date", formatdate(now, usegmt=True).encode("ascii")))
                head = ResponseHead(resp.version, resp.status, resp.reason, tuple(headers))
                stored = P.StoredResponse(head, self.requestTime, now, P.initialAge(resp, self.requestTime, now))
                writer = cache.store.writer(self.urlKey, P.varyKey(vary, client), vary, stored)
                if writer.abandoned:
                    self.storing = False
                    cache._land(self)
                else:
                    self.writer = writer
                    self.status += b"; stored"
            else:
                self.storing = False
                if why:
                    self.status += b'; detail="' + why.encode("ascii") + b'"'
                # Not storable: the waiters go upstream themselves, now.
                cache._land(self)
        if self.background:
            return None
        self.status += b"; fwd-status=%d" % resp.status
        passed = P.withoutSurrogate(resp.headers) if self.surrogate else resp.headers
        return ResponseHead(resp.version, resp.status, resp.reason, passed + ((b"Cache-Status", self.status),))

    def _sieAllowed(self, resp: ResponseHead, now: float) -> bool:
        """
        Whether a stale stored response answers instead of C{resp}
        (C{stale-if-error}, for 500, 502, 503 and 504).
        """
        entry = self.entry
        return (
            entry is not None
            and not self.background
            and resp.status in _SIE_STATUSES
            and P.staleIfError(self.request.head, entry.stored, now)
        )

    def bodyData(self, data: bytes) -> None:
        """
        Decoded response body bytes, as they go to the client.
        """
        writer = self.writer
        if writer is not None and not writer.write(data):
            # Too large (or the cache too small): it streams on unstored,
            # and the waiters go upstream themselves.
            self.writer = None
            self.storing = False
            self.cache._land(self)

    def finished(self) -> Optional[int]:
        """
        The exchange ended with a complete response: commit the stored
        body, wake the waiters.

        @return: the status to log when the client got another response
            than the upstream's (a refreshed stored one), else L{None}.
        """
        self.done = True
        cache = self.cache
        self._unsink()
        writer, self.writer = self.writer, None
        if writer is not None:
            entry = writer.commit()
            if entry is not None:
                head = entry.stored.head
                # The stored head carries the length the body has, whatever
                # framing brought it (HEAD answers and 304s need it).
                headers = head.headers + ((b"Content-Length", b"%d" % len(entry.body)),)
                stored = entry.stored
                entry = cache.store.update(entry, P.StoredResponse(
                    ResponseHead(head.version, head.status, head.reason, headers),
                    stored.requestTime, stored.responseTime, stored.initialAge, len(entry.body)))
                cache._share(entry, cache.clock.seconds())
        cache._land(self)
        return self._logStatus

    def _unsink(self) -> None:
        restore, self._restore = self._restore, None
        if restore is not None:
            self.proto._toClient = restore

    def _staleIfError(self, entry: Entry, status: int, now: float) -> None:
        """
        Serve C{entry} instead of an upstream error (C{stale-if-error});
        whatever the upstream still sends is discarded.
        """
        cache = self.cache
        self._count("stale")
        self.storing = False
        served, body = self._served(entry, P.cacheStatus(True, "stale", fwdStatus=status,
                                                         detail="stale-if-error"), now)
        self._logStatus = served.status
        proto = self.proto
        proto._answerFromCache(served, body, False)
        self._restore = proto._toClient
        proto._toClient = _discard
        cache._land(self)

    def failed(self, status: int, mayAnswer: bool = True) -> bool:
        """
        The request fails with C{status} (the upstream unreachable, or too
        slow): serve a stale response if C{stale-if-error} allows.

        @param mayAnswer: whether the cache may answer instead (not while
            the protocol still waits for a dial).

        @return: whether the cache answered.
        """
        self._unsink()
        writer, self.writer = self.writer, None
        if writer is not None:
            writer.abandon()
        cache = self.cache
        cache._land(self)
        proto = self.proto
        if self.background:
            # The client has its (stale) response; the revalidation failed.
            self.done = True
            if not mayAnswer:
                # A dial is still pending: close after this exchange, so
                # that it can never carry the client's next request.
                proto._clientKeepAlive = False
            proto._finishFromCache(self._logStatus or 200)
            return True
        if self.done or not mayAnswer:
            return False
        self.done = True
        entry = self.entry
        now = cache.clock.seconds()
        if entry is not None and status in _SIE_STATUSES and P.staleIfError(self.request.head, entry.stored, now):
            self._count("stale")
            served, body = self._served(entry, P.cacheStatus(True, "stale", detail="stale-if-error"), now)
            proto._answerFromCache(served, body, True)
            return True
        self._count("miss")
        return False

    def aborted(self) -> None:
        """
        The client went away, or the response broke off: nothing is stored
        and the waiters go upstream themselves.
        """
        self.done = True
        wake, self._wake = self._wake, None
        if wake is not None and wake.active():
            wake.cancel()
        self._unsink()
        writer, self.writer = self.writer, None
        if writer is not None:
            writer.abandon()
        self.cache._land(self)
