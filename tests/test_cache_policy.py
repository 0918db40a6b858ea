"""
Tests for L{txproxy.cache._policy}: the sans-IO RFC 9111 policy, with the
clock given as C{now}.
"""

from __future__ import annotations

from email.utils import formatdate
from typing import Sequence, Tuple

from twisted.trial.unittest import SynchronousTestCase

from txproxy.cache import _policy as P
from txproxy.http import RequestHead, ResponseHead

T0 = 1_700_000_000.0


def date(t: float) -> bytes:
    return formatdate(t, usegmt=True).encode()


def req(*headers: Tuple[bytes, bytes], method: bytes = b"GET") -> RequestHead:
    return RequestHead(method, b"/x", b"HTTP/1.1", ((b"Host", b"example.com"),) + tuple(headers))


def resp(*headers: Tuple[bytes, bytes], status: int = 200, dated: bool = True) -> ResponseHead:
    hs: Sequence[Tuple[bytes, bytes]] = tuple(headers)
    if dated:
        hs = ((b"Date", date(T0)),) + tuple(hs)
    return ResponseHead(b"HTTP/1.1", status, b"OK", hs)


def stored(head: ResponseHead, at: float = T0, requestTime: float = -1.0) -> P.StoredResponse:
    rt = at if requestTime < 0 else requestTime
    return P.StoredResponse(head, rt, at, P.initialAge(head, rt, at), 0)


class CacheControlTests(SynchronousTestCase):
    def test_parse(self) -> None:
        """
        Directives are lower-cased, arguments unquoted, and commas inside
        quotes do not split.
        """
        cc = P.cacheControl([b'Max-Age=5, no-cache="a, b"', b"public"])
        self.assertEqual(cc, {b"max-age": b"5", b"no-cache": b"a, b", b"public": None})

    def test_duplicate(self) -> None:
        """
        A directive given twice has an argument no number parse accepts, so
        the response is stale.
        """
        head = resp((b"Cache-Control", b"max-age=100, max-age=200"))
        self.assertEqual(P.freshnessLifetime(head), 0.0)

    def test_httpDate(self) -> None:
        """
        The three HTTP-date formats parse; garbage is None.
        """
        self.assertEqual(P.parseHTTPDate(b"Sun, 06 Nov 1994 08:49:37 GMT"), 784111777.0)
        self.assertEqual(P.parseHTTPDate(b"Sunday, 06-Nov-94 08:49:37 GMT"), 784111777.0)
        self.assertEqual(P.parseHTTPDate(b"Sun Nov  6 08:49:37 1994"), 784111777.0)
        self.assertIsNone(P.parseHTTPDate(b"0"))
        self.assertIsNone(P.parseHTTPDate(None))
        # Names in any case; a two-digit year is 20yy below 70.
        self.assertEqual(P.parseHTTPDate(b"THU, 18 AUG 2050 02:01:18 gMT"), 2544400878.0)
        self.assertEqual(P.parseHTTPDate(b"Thursday, 18-Aug-50 02:01:18 GMT"), 2544400878.0)
        self.assertEqual(P.parseHTTPDate(b"Sun, 21 Nov 2286 04:46:39 GMT"), 10000039599.0)

    def test_httpDateStrict(self) -> None:
        """
        Anything but the three formats exactly is invalid (RFC 9110 section
        5.6.7), so an Expires like these means already expired.
        """
        for value in (b"Thu, 18 Aug 2050 02:01:18 UTC", b"Thu, 18 Aug 2050 02:01:18 AEST",
                      b"Thu, 18 Aug 50 02:01:18 GMT", b"Thu 18 Aug 2050 02:01:18 GMT",
                      b"Thu, 18  Aug  2050 02:01:18 GMT", b"Thu, 18-Aug-2050 02:01:18 GMT",
                      b"Thu, 18 Aug 2050 02.01.18 GMT", b"Thu, 18 Aug 2050 2:01:18 GMT",
                      b"Mon, 31 Feb 2020 00:00:00 GMT", b"Thu, 18 Aug 2050 02:01:18 +0000", b""):
            self.assertIsNone(P.parseHTTPDate(value), value)
            self.assertEqual(P.freshnessLifetime(resp((b"Expires", value))), 0, value)


class KeyTests(SynchronousTestCase):
    def test_defaultPortAndCase(self) -> None:
        """
        The host is lower-cased and the scheme's default port omitted, so
        spellings of one origin share a key.
        """
        self.assertEqual(P.urlKey("http", "Example.COM", 80, b"/a?b"), b"http://example.com/a?b")
        self.assertEqual(P.urlKey("HTTPS", "example.com", 443, b"/"), b"https://example.com/")
        self.assertEqual(P.urlKey("http", "example.com", 8080, b"/"), b"http://example.com:8080/")
        self.assertEqual(P.urlKey("http", "::1", 80, b"/"), b"http://[::1]/")

    def test_varyNames(self) -> None:
        """
        Vary names are lower-cased and sorted; C{*} gives None.
        """
        self.assertEqual(P.varyNames(resp((b"Vary", b"Accept-Encoding, accept"))), (b"accept", b"accept-encoding"))
        self.assertIsNone(P.varyNames(resp((b"Vary", b"a, *"))))
        self.assertEqual(P.varyNames(resp()), ())

    def test_varyKey(self) -> None:
        """
        The variant key depends on the selecting fields only, whitespace
        normalised; an absent field differs from an empty one.
        """
        a = P.varyKey((b"accept",), req((b"Accept", b"text/html,  image/png")))
        b = P.varyKey((b"accept",), req((b"Accept", b"text/html, image/png"), (b"X-Other", b"1")))
        self.assertEqual(a, b)
        self.assertNotEqual(P.varyKey((b"accept",), req()), P.varyKey((b"accept",), req((b"Accept", b""))))
        self.assertEqual(P.varyKey((), req((b"Accept", b"x"))), b"")


class StorableTests(SynchronousTestCase):
    def check(self, expected: bool, request: RequestHead, response: ResponseHead) -> str:
        ok, why = P.isStorable(request, response)
        self.assertEqual(ok, expected, why)
        return why

    def test_maxAge(self) -> None:
        """
        A 200 with max-age is stored.
        """
        self.check(True, req(), resp((b"Cache-Control", b"max-age=60")))

    def test_heuristicStatus(self) -> None:
        """
        A 200 without freshness information is storable (heuristically
        cacheable); a 302 without is not; a 302 with max-age is.
        """
        self.check(True, req(), resp())
        self.assertEqual(self.check(False, req(), resp(status=302)), "no freshness")
        self.check(True, req(), resp((b"Cache-Control", b"max-age=5"), status=302))

    def test_noStore(self) -> None:
        """
        no-store in the response or the request prevents storing.
        """
        self.check(False, req(), resp((b"Cache-Control", b"no-store, max-age=60")))
        self.check(False, req((b"Cache-Control", b"no-store")), resp((b"Cache-Control", b"max-age=60")))

    def test_private(self) -> None:
        """
        private (qualified or not) prevents storing in a shared cache.
        """
        self.check(False, req(), resp((b"Cache-Control", b"private, max-age=60")))
        self.check(False, req(), resp((b"Cache-Control", b'private="set-cookie", max-age=60')))

    def test_authorization(self) -> None:
        """
        A response to a request with Authorization is stored only with
        public, s-maxage or must-revalidate (RFC 9111 section 3.5).
        """
        auth = (b"Authorization", b"Basic dTpw")
        self.assertEqual(self.check(False, req(auth), resp((b"Cache-Control", b"max-age=60"))), "authorization")
        self.check(True, req(auth), resp((b"Cache-Control", b"public, max-age=60")))
        self.check(True, req(auth), resp((b"Cache-Control", b"s-maxage=60")))
        self.check(True, req(auth), resp((b"Cache-Control", b"must-revalidate, max-age=60")))

    def test_setCookie(self) -> None:
        """
        A response with Set-Cookie is stored only with public or s-maxage,
        and its stored copy never has the Set-Cookie.
        """
        cookie = (b"Set-Cookie", b"session=secret")
        self.assertEqual(self.check(False, req(), resp(cookie, (b"Cache-Control", b"max-age=60"))), "set-cookie")
        head = resp(cookie, (b"Cache-Control", b"public, max-age=60"))
        self.check(True, req(), head)
        self.check(True, req(), resp(cookie, (b"Cache-Control", b"s-maxage=60")))
        self.assertIsNone(ResponseHead(b"HTTP/1.1", 200, b"OK", P.storedHeaders(head)).get(b"set-cookie"))

    def test_varyStar(self) -> None:
        """
        A response with Vary: * is not stored.
        """
        self.check(False, req(), resp((b"Vary", b"*"), (b"Cache-Control", b"max-age=60")))

    def test_methodsAndStatuses(self) -> None:
        """
        Only GET responses are stored; 206 and 304 are not.
        """
        cc = (b"Cache-Control", b"max-age=60")
        self.check(False, req(method=b"POST"), resp(cc))
        self.check(False, req(method=b"HEAD"), resp(cc))
        self.check(False, req(), resp(cc, status=206))
        self.check(False, req(), resp(cc, status=304))
        self.check(True, req(), resp(cc, status=404))

    def test_storedHeadersDropsHopByHop(self) -> None:
        """
        Hop-by-hop, Age, Via and Cache-Status are not stored.
        """
        head = resp((b"Connection", b"close"), (b"Age", b"3"), (b"Via", b"1.1 x"), (b"X-A", b"1"))
        names = [n for n, _ in P.storedHeaders(head)]
        self.assertEqual(names, [b"Date", b"X-A"])

    def test_storedHeadersDropsConnectionListed(self) -> None:
        """
        The fields Connection lists (on any of its lines, in any case) are
        hop-by-hop: not stored (RFC 9110 section 7.6.1).
        """
        head = resp((b"Connection", b"a, B"), (b"Connection", b"close"), (b"A", b"1"), (b"b", b"2"), (b"C", b"3"))
        self.assertEqual(P.storedHeaders(head), ((b"Date", date(T0)), (b"C", b"3")))

    def test_mustUnderstand(self) -> None:
        """
        must-understand: a status this cache does not understand is not
        stored; an understood one is, even with no-store (RFC 9111
        section 5.2.2.3).  Without must-understand, no-store wins.
        """
        self.check(False, req(), resp((b"Cache-Control", b"max-age=60, must-understand"), status=599))
        self.check(False, req(), resp((b"Cache-Control", b"must-understand, no-store"), status=299))
        self.check(True, req(), resp((b"Cache-Control", b"max-age=60, must-understand"), status=404))
        self.check(True, req(), resp((b"Cache-Control", b"max-age=60, must-understand, no-store")))
        self.check(True, req(), resp((b"Cache-Control", b"max-age=60")))
        self.check(False, req(), resp((b"Cache-Control", b"max-age=60, no-store")))
        self.assertEqual(P.isStorable(req(), resp((b"Cache-Control", b"must-understand"), status=599)),
                         (False, "must-understand"))
        # The request's no-store still wins.
        self.check(False, req((b"Cache-Control", b"no-store")),
                   resp((b"Cache-Control", b"max-age=60, must-understand")))


class FreshnessTests(SynchronousTestCase):
    def test_order(self) -> None:
        """
        s-maxage wins over max-age, which wins over Expires.
        """
        expires = (b"Expires", date(T0 + 30))
        self.assertEqual(P.freshnessLifetime(resp((b"Cache-Control", b"max-age=10, s-maxage=20"), expires)), 20)
        self.assertEqual(P.freshnessLifetime(resp((b"Cache-Control", b"max-age=10"), expires)), 10)
        self.assertEqual(P.freshnessLifetime(resp(expires)), 30)

    def test_invalidExpires(self) -> None:
        """
        An invalid Expires (such as 0) means already expired.
        """
        self.assertEqual(P.freshnessLifetime(resp((b"Expires", b"0"), (b"Last-Modified", date(T0 - 1000)))), 0)

    def test_heuristic(self) -> None:
        """
        Without explicit freshness: 10% of Date minus Last-Modified, at most
        a day, for heuristically cacheable statuses only.
        """
        self.assertEqual(P.freshnessLifetime(resp((b"Last-Modified", date(T0 - 1000)))), 100)
        self.assertEqual(P.freshnessLifetime(resp((b"Last-Modified", date(T0 - 10**8)))), P.MAX_HEURISTIC)
        self.assertEqual(P.freshnessLifetime(resp((b"Last-Modified", date(T0 - 1000)), status=302)), 0)
        self.assertEqual(P.freshnessLifetime(resp()), 0)

    def test_age(self) -> None:
        """
        The current age counts the Age field, the response delay, the
        apparent age and the time resident (RFC 9111 section 4.2.3).
        """
        head = resp((b"Age", b"10"))
        s = stored(head, at=T0 + 2, requestTime=T0)
        # corrected age value 10 + 2 = 12 > apparent age 2.
        self.assertEqual(s.initialAge, 12)
        self.assertEqual(P.ageOf(s, T0 + 7), 17)
        # A Date in the past makes the apparent age count.
        late = stored(resp(), at=T0 + 50)
        self.assertEqual(P.ageOf(late, T0 + 50), 50)

    def test_ageParsing(self) -> None:
        """
        RFC 9111 section 5.1: of a list (one line or several) the first
        member counts; an invalid first member (letters, a sign, a
        fraction, a parameter, empty) is ignored; a huge value is capped.
        """
        cases = [
            ([b"30"], 30), ([b" 30 "], 30), ([b"7200,0"], 7200), ([b"0, 7200"], 0), ([b"7200", b"0"], 7200),
            ([b"0", b"7200"], 0), ([b"0, 0"], 0), ([b"3600", b"3600"], 3600), ([b"abc"], 0), ([b"-7200"], 0),
            ([b"7200.0"], 0), ([b"7200;foo=bar"], 0), ([b"7200;foo=111"], 0), ([b""], 0), ([b"1e3"], 0),
            ([b"+5"], 0), ([b"\xd9\xa3"], 0), ([b"99999999999"], 2**31), ([], 0),
        ]
        for values, expected in cases:
            head = resp(*[(b"Age", v) for v in values])
            self.assertEqual(P.ageValue(head), expected, values)

    def test_ageFreshness(self) -> None:
        """
        The Age the policy takes decides freshness: an old first member is
        stale, an ignored Age leaves the response fresh, the largest Age
        is stale whatever the lifetime.
        """
        def action(*ages: bytes, cc: bytes = b"max-age=3600") -> str:
            head = resp((b"Cache-Control", cc), *[(b"Age", a) for a in ages])
            return P.lookup(req(), stored(head), T0 + 1).action

        self.assertEqual(action(b"7200, 0"), P.FORWARD)
        self.assertEqual(action(b"7200", b"0"), P.FORWARD)
        self.assertEqual(action(b"0, 7200"), P.FRESH)
        self.assertEqual(action(b"0", b"7200"), P.FRESH)
        self.assertEqual(action(b"abc"), P.FRESH)
        self.assertEqual(action(b"-7200"), P.FRESH)
        self.assertEqual(action(b"2147483648", cc=b"max-age=2147483648"), P.FORWARD)


class SurrogateTests(SynchronousTestCase):
    def test_directives(self) -> None:
        """
        Surrogate-Control's directives for this cache: no-store, max-age
        (with +grace as stale-if-error); targeted ones, others and invalid
        ones handled as documented.
        """
        sd = P.surrogateDirectives
        self.assertEqual(sd([b"max-age=60"]), b"max-age=60")
        self.assertEqual(sd([b'content="ESI/1.0", MAX-AGE=60+30']), b"max-age=60, stale-if-error=30")
        self.assertEqual(sd([b"max-age=60", b"no-store"]), b"no-store")
        self.assertEqual(sd([b"max-age=60;edge"]), None)
        self.assertEqual(sd([b"no-store;edge, max-age=5"]), b"max-age=5")
        # Targeted at this cache: wins over the untargeted ones.
        self.assertEqual(sd([b"max-age=5, max-age=60;TXPROXY"]), b"max-age=60")
        self.assertEqual(sd([b"max-age=5, no-store;txproxy"]), b"no-store")
        self.assertEqual(sd([b"no-store", b"max-age=60 ; txproxy"]), b"max-age=60")
        self.assertEqual(P.SURROGATE_CAPABILITY, b'txproxy="Surrogate/1.0"')
        self.assertEqual(sd([b'content="ESI/1.0"']), None)
        self.assertEqual(sd([b"max-age=abc"]), b"max-age=0")
        self.assertEqual(sd([b"max-age"]), b"max-age=0")
        self.assertEqual(sd([b"max-age=1, max-age=2"]), b"max-age=0")
        self.assertEqual(sd([b"max-age=99999999999"]), b"max-age=2147483648")

    def test_consumed(self) -> None:
        """
        consumeSurrogate removes Surrogate-Control; its directives, when
        any is for this cache, replace Cache-Control for the policy
        (private excepted); a head without it is returned as is.
        """
        plain = resp((b"Cache-Control", b"max-age=60"))
        self.assertIs(P.consumeSurrogate(plain), plain)
        head = P.consumeSurrogate(resp((b"Surrogate-Control", b"max-age=600"), (b"Cache-Control", b"no-store")))
        self.assertIsNone(head.get(b"surrogate-control"))
        self.assertEqual(P.responseCacheControl(head), {b"max-age": b"600"})
        self.assertEqual(P.freshnessLifetime(head), 600)
        self.assertEqual(P.isStorable(req(), head), (True, ""))
        self.assertNotIn(P.SURROGATE_FIELD, [n for n, _ in P.servedHeaders(head, 0, b"x")])
        self.assertIn((P.SURROGATE_FIELD, b"max-age=600"), P.storedHeaders(head))
        self.assertEqual(P.withoutSurrogate(head.headers), (head.headers[0], (b"Cache-Control", b"no-store")))
        private = P.consumeSurrogate(resp((b"Surrogate-Control", b"max-age=600"), (b"Cache-Control", b"private")))
        self.assertEqual(P.isStorable(req(), private), (False, "private"))
        noStore = P.consumeSurrogate(resp((b"Surrogate-Control", b"no-store"), (b"Cache-Control", b"max-age=60")))
        self.assertEqual(P.isStorable(req(), noStore), (False, "no-store"))
        other = P.consumeSurrogate(resp((b"Surrogate-Control", b"max-age=5;edge"), (b"Cache-Control", b"max-age=60")))
        self.assertEqual(other.headers, resp((b"Cache-Control", b"max-age=60")).headers)
        # A head cannot smuggle the internal field in: it is replaced.
        forged = P.consumeSurrogate(resp((b":surrogate-control", b"max-age=9"), (b"Surrogate-Control", b"no-store")))
        self.assertEqual(forged.getAll(P.SURROGATE_FIELD), [b"no-store"])

    def test_cdnDirectives(self) -> None:
        """
        CDN-Cache-Control is a Structured Field dictionary: one that is
        not (spaces around =, upper case, garbage, a trailing comma) is
        ignored whole; a delta directive of another type, or a false one,
        is left out; parameters are dropped; lines join.
        """
        cd = P.cdnDirectives
        self.assertEqual(cd([b"max-age=3600"]), b"max-age=3600")
        self.assertEqual(cd([b"foobar, max-age=3600"]), b"foobar, max-age=3600")
        self.assertEqual(cd([b"max-age=1", b"no-cache"]), b"max-age=1, no-cache")
        self.assertEqual(cd([b'private="a", max-age=5;x=1, no-store=?0, no-cache=?1']),
                         b'private="a", max-age=5, no-cache')
        self.assertEqual(cd([b'max-age="10000"']), b"")
        self.assertEqual(cd([b"max-age=-5"]), b"")
        for bad in (b"max-age =100", b"max-age= 100", b"MaX-aGe=3600", b"max-age=10000, &&&&&", b"max-age=1,",
                    b"", b'a="unterminated'):
            self.assertIsNone(cd([bad]), bad)
        self.assertIsNone(cd([]))

    def test_cdnConsumed(self) -> None:
        """
        A valid CDN-Cache-Control replaces Cache-Control for the policy
        (before Surrogate-Control) and stays in the head; an invalid one
        leaves Cache-Control in charge.
        """
        head = P.consumeSurrogate(resp((b"CDN-Cache-Control", b"max-age=600"), (b"Cache-Control", b"no-store"),
                                       (b"Surrogate-Control", b"max-age=5")))
        self.assertEqual(P.responseCacheControl(head), {b"max-age": b"600"})
        self.assertEqual(head.get(b"cdn-cache-control"), b"max-age=600")
        self.assertIsNone(head.get(b"surrogate-control"))
        self.assertEqual(P.isStorable(req(), head), (True, ""))
        for cdn, storable in ((b"private", False), (b"no-store", False), (b"max-age=0", True)):
            h = P.consumeSurrogate(resp((b"CDN-Cache-Control", cdn), (b"Cache-Control", b"max-age=10000")))
            self.assertEqual(P.isStorable(req(), h)[0], storable, cdn)
        noCache = P.consumeSurrogate(resp((b"CDN-Cache-Control", b"no-cache"), (b"Cache-Control", b"max-age=10000")))
        self.assertEqual(P.lookup(req(), stored(noCache), T0).action, P.FORWARD)
        short = P.consumeSurrogate(resp((b"CDN-Cache-Control", b"max-age=1"), (b"Cache-Control", b"max-age=3600")))
        self.assertEqual(P.freshnessLifetime(short), 1)
        invalid = P.consumeSurrogate(resp((b"CDN-Cache-Control", b"max-age=10000, &&&"), (b"Cache-Control", b"no-store")))
        self.assertIsNone(invalid.get(P.SURROGATE_FIELD))
        self.assertEqual(P.isStorable(req(), invalid), (False, "no-store"))
        # An invalid one lets Surrogate-Control decide.
        both = P.consumeSurrogate(resp((b"CDN-Cache-Control", b"&"), (b"Surrogate-Control", b"max-age=7")))
        self.assertEqual(P.freshnessLifetime(both), 7)

    def test_capability(self) -> None:
        """
        withCapability adds this cache's Surrogate-Capability line after
        any the client sent.
        """
        head = P.withCapability(req((b"Surrogate-Capability", b'edge="Surrogate/1.0"')))
        self.assertEqual(head.getAll(b"surrogate-capability"), [b'edge="Surrogate/1.0"', b'txproxy="Surrogate/1.0"'])
        self.assertEqual(head.method, b"GET")
        self.assertEqual(head.target, b"/x")


class LookupTests(SynchronousTestCase):
    def test_miss(self) -> None:
        """
        Nothing stored: forward, or 504 with only-if-cached.
        """
        self.assertEqual(P.lookup(req(), None, T0).action, P.FORWARD)
        self.assertEqual(P.lookup(req((b"Cache-Control", b"only-if-cached")), None, T0).action, P.UNSATISFIABLE)

    def test_freshThenStale(self) -> None:
        """
        Fresh until the lifetime passes; then revalidated with validators,
        forwarded without.
        """
        s = stored(resp((b"Cache-Control", b"max-age=10"), (b"ETag", b'"a"')))
        hit = P.lookup(req(), s, T0 + 9)
        self.assertEqual((hit.action, hit.age, hit.ttl), (P.FRESH, 9, 1))
        self.assertEqual(P.lookup(req(), s, T0 + 10).action, P.REVALIDATE)
        bare = stored(resp((b"Cache-Control", b"max-age=10")))
        self.assertEqual(P.lookup(req(), bare, T0 + 11).action, P.FORWARD)

    def test_noCache(self) -> None:
        """
        no-cache in the response, the request, or Pragma: no-cache forces
        revalidation even when fresh.
        """
        s = stored(resp((b"Cache-Control", b"max-age=100"), (b"ETag", b'"a"')))
        self.assertEqual(P.lookup(req((b"Cache-Control", b"no-cache")), s, T0).action, P.REVALIDATE)
        self.assertEqual(P.lookup(req((b"Pragma", b"no-cache")), s, T0).action, P.REVALIDATE)
        nc = stored(resp((b"Cache-Control", b"no-cache, max-age=100"), (b"ETag", b'"a"')))
        self.assertEqual(P.lookup(req(), nc, T0).action, P.REVALIDATE)
        self.assertEqual(P.lookup(req((b"Cache-Control", b"only-if-cached")), nc, T0).action, P.UNSATISFIABLE)

    def test_requestMaxAgeMinFresh(self) -> None:
        """
        The request's max-age and min-fresh narrow what is fresh enough.
        """
        s = stored(resp((b"Cache-Control", b"max-age=100"), (b"ETag", b'"a"')))
        self.assertEqual(P.lookup(req((b"Cache-Control", b"max-age=5")), s, T0 + 6).action, P.REVALIDATE)
        self.assertEqual(P.lookup(req((b"Cache-Control", b"max-age=5")), s, T0 + 4).action, P.FRESH)
        self.assertEqual(P.lookup(req((b"Cache-Control", b"min-fresh=50")), s, T0 + 60).action, P.REVALIDATE)
        self.assertEqual(P.lookup(req((b"Cache-Control", b"min-fresh=50")), s, T0 + 40).action, P.FRESH)

    def test_maxStale(self) -> None:
        """
        max-stale lets a stale response be served, within its bound, unless
        the response says must-revalidate.
        """
        s = stored(resp((b"Cache-Control", b"max-age=10"), (b"ETag", b'"a"')))
        self.assertEqual(P.lookup(req((b"Cache-Control", b"max-stale=5")), s, T0 + 14).action, P.STALE)
        self.assertEqual(P.lookup(req((b"Cache-Control", b"max-stale=5")), s, T0 + 16).action, P.REVALIDATE)
        self.assertEqual(P.lookup(req((b"Cache-Control", b"max-stale")), s, T0 + 1000).action, P.STALE)
        mr = stored(resp((b"Cache-Control", b"max-age=10, must-revalidate"), (b"ETag", b'"a"')))
        self.assertEqual(P.lookup(req((b"Cache-Control", b"max-stale")), mr, T0 + 11).action, P.REVALIDATE)

    def test_staleWhileRevalidate(self) -> None:
        """
        stale-while-revalidate serves stale within its window (and asks
        for a background revalidation); past it, revalidate.
        """
        s = stored(resp((b"Cache-Control", b"max-age=10, stale-while-revalidate=30"), (b"ETag", b'"a"')))
        self.assertEqual(P.lookup(req(), s, T0 + 5).action, P.FRESH)
        self.assertEqual(P.lookup(req(), s, T0 + 39).action, P.STALE_REVALIDATE)
        self.assertEqual(P.lookup(req(), s, T0 + 41).action, P.REVALIDATE)
        self.assertEqual(P.lookup(req((b"Cache-Control", b"only-if-cached")), s, T0 + 41).action, P.UNSATISFIABLE)

    def test_staleIfError(self) -> None:
        """
        stale-if-error (response or request) allows a stale response
        within its window when the upstream fails; must-revalidate never.
        """
        s = stored(resp((b"Cache-Control", b"max-age=10, stale-if-error=60")))
        self.assertTrue(P.staleIfError(req(), s, T0 + 69))
        self.assertFalse(P.staleIfError(req(), s, T0 + 71))
        plain = stored(resp((b"Cache-Control", b"max-age=10")))
        self.assertFalse(P.staleIfError(req(), plain, T0 + 20))
        self.assertTrue(P.staleIfError(req((b"Cache-Control", b"stale-if-error=30")), plain, T0 + 20))
        mr = stored(resp((b"Cache-Control", b"max-age=10, must-revalidate, stale-if-error=60")))
        self.assertFalse(P.staleIfError(req(), mr, T0 + 20))


class ConditionalTests(SynchronousTestCase):
    def test_conditionalHeaders(self) -> None:
        """
        Revalidation replaces the client's conditionals with the stored
        validators.
        """
        head = resp((b"ETag", b'"v1"'), (b"Last-Modified", date(T0 - 100)))
        out = P.conditionalHeaders(req((b"If-None-Match", b'"mine"'), (b"Range", b"bytes=0-1")), head)
        self.assertIn((b"If-None-Match", b'"v1"'), out)
        self.assertIn((b"If-Modified-Since", date(T0 - 100)), out)
        self.assertNotIn((b"If-None-Match", b'"mine"'), out)

    def test_evaluate(self) -> None:
        """
        A client's If-None-Match (weak comparison) or If-Modified-Since is
        answered from the stored response.
        """
        head = resp((b"ETag", b'W/"v1"'), (b"Last-Modified", date(T0 - 100)))
        self.assertTrue(P.evaluateConditional(req((b"If-None-Match", b'"x", "v1"')), head))
        self.assertFalse(P.evaluateConditional(req((b"If-None-Match", b'"x"')), head))
        self.assertTrue(P.evaluateConditional(req((b"If-Modified-Since", date(T0 - 50))), head))
        self.assertFalse(P.evaluateConditional(req((b"If-Modified-Since", date(T0 - 150))), head))
        self.assertFalse(P.evaluateConditional(req(), head))

    def test_update304(self) -> None:
        """
        A 304's fields replace the stored ones of the same name (the
        representation metadata included), except Content-Length.
        """
        head = resp((b"ETag", b'"v1"'), (b"Cache-Control", b"max-age=1"), (b"Content-Type", b"text/plain"),
                    (b"X-A", b"old"))
        nm = ResponseHead(b"HTTP/1.1", 304, b"Not Modified", ((b"Cache-Control", b"max-age=99"), (b"X-A", b"new"),
                          (b"Content-Length", b"0"), (b"Content-Type", b"text/html"), (b"X-B", b"b")))
        updated = P.updateHeaders(head, nm)
        self.assertEqual(updated.status, 200)
        self.assertEqual(updated.get(b"cache-control"), b"max-age=99")
        self.assertEqual(updated.getAll(b"x-a"), [b"new"])
        self.assertEqual(updated.get(b"x-b"), b"b")
        self.assertEqual(updated.get(b"content-type"), b"text/html")
        self.assertIsNone(updated.get(b"content-length"))

    def test_update304KeepsIntegrityFields(self) -> None:
        """
        A 304 never replaces the fields the stored body's integrity depends
        on (ETag, Content-Length, Content-Encoding, Content-Range,
        Content-MD5, the digests), nor stores the fields its Connection
        lists; other fields are replaced.
        """
        kept = [(b"ETag", b'"v1"'), (b"Content-Encoding", b"gzip"), (b"Content-Range", b"bytes 0-3/10"),
                (b"Content-MD5", b"rL0Y20zC+Fzt72VPzMSk2A=="), (b"Content-Digest", b"sha-256=:a:"),
                (b"Repr-Digest", b"sha-256=:b:"), (b"Digest", b"md5=x")]
        head = resp(*kept, (b"X-A", b"old"))
        nm = ResponseHead(b"HTTP/1.1", 304, b"Not Modified", (
            (b"ETag", b'"v2"'), (b"Content-Encoding", b"br"), (b"Content-Range", b"bytes 0-9/10"),
            (b"Content-MD5", b"N7UdGUp1E+RbVvZSTy1R8g=="), (b"Content-Digest", b"sha-256=:c:"),
            (b"Repr-Digest", b"sha-256=:d:"), (b"Digest", b"md5=y"), (b"X-A", b"new"),
            (b"Connection", b"x-hop"), (b"X-Hop", b"1"), (b"Keep-Alive", b"timeout=5"),
        ))
        updated = P.updateHeaders(head, nm)
        for name, value in kept:
            self.assertEqual(updated.getAll(name), [value], name)
        self.assertEqual(updated.getAll(b"x-a"), [b"new"])
        self.assertIsNone(updated.get(b"x-hop"))
        self.assertIsNone(updated.get(b"keep-alive"))
        self.assertIsNone(updated.get(b"connection"))


class InvalidationTests(SynchronousTestCase):
    def test_unsafe(self) -> None:
        """
        A 2xx/3xx to an unsafe method invalidates the target and the
        same-origin Location and Content-Location; other origins are
        left alone; errors and safe methods invalidate nothing.
        """
        key = b"http://example.com/a"
        head = resp((b"Location", b"/b"), (b"Content-Location", b"http://Example.com:80/c#f"), status=201)
        self.assertEqual(P.invalidationTargets(key, b"POST", head),
                         [key, b"http://example.com/b", b"http://example.com/c"])
        other = resp((b"Location", b"http://other.example/b"))
        self.assertEqual(P.invalidationTargets(key, b"DELETE", other), [key])
        self.assertEqual(P.invalidationTargets(key, b"POST", resp(status=500)), [])
        relative = resp((b"Location", b"b?x=1"), (b"Content-Location", b"https://example.com/c"))
        self.assertEqual(P.invalidationTargets(key, b"PUT", relative), [key, b"http://example.com/b?x=1"])
        weird = resp((b"Location", b"http://exa mple.com:99999/\xff"))
        self.assertEqual(P.invalidationTargets(key, b"PUT", weird), [key])
        self.assertEqual(P.invalidationTargets(key, b"GET", resp()), [])
        self.assertTrue(P.isUnsafe(b"PATCH"))
        self.assertFalse(P.isUnsafe(b"HEAD"))


class StatusAndRangeTests(SynchronousTestCase):
    def test_cacheStatus(self) -> None:
        """
        Cache-Status values name the cache and their parameters.
        """
        self.assertEqual(P.cacheStatus(True, ttl=5), b"txproxy; hit; ttl=5")
        self.assertEqual(P.cacheStatus(False, "uri-miss", stored=True), b"txproxy; fwd=uri-miss; stored")
        self.assertEqual(P.cacheStatus(False, "stale", fwdStatus=304, detail='x"y'),
                         b'txproxy; fwd=stale; fwd-status=304; detail="xy"')

    def test_servedHeaders(self) -> None:
        """
        A served response carries Age and Cache-Status.
        """
        out = P.servedHeaders(resp(), 3.9, b"txproxy; hit")
        self.assertEqual(out[-2:], [(b"Age", b"3"), (b"Cache-Status", b"txproxy; hit")])

    def test_range(self) -> None:
        """
        One satisfiable bytes range is parsed; anything else is None.
        """
        self.assertEqual(P.parseRange(b"bytes=0-3", 10), (0, 3))
        self.assertEqual(P.parseRange(b"bytes=5-", 10), (5, 9))
        self.assertEqual(P.parseRange(b"bytes=-4", 10), (6, 9))
        self.assertEqual(P.parseRange(b"bytes=2-100", 10), (2, 9))
        for bad in (b"bytes=0-1,3-4", b"items=0-1", b"bytes=10-", b"bytes=5-2", b"bytes=x-1", b"bytes=-0"):
            self.assertIsNone(P.parseRange(bad, 10), bad)
        self.assertIsNone(P.parseRange(None, 10))


class DerivedTests(SynchronousTestCase):
    def test_derivedOnce(self) -> None:
        """
        What a hit needs of a stored head is computed on first use, then
        kept: the same object each time, agreeing with the policy's own
        functions.
        """
        head = resp((b"Cache-Control", b"max-age=60, no-cache"), (P.SURROGATE_FIELD, b"max-age=30"),
                    (b"ETag", b'"a"'))
        s = stored(head)
        d = P.derived(s)
        self.assertIs(P.derived(s), d)
        self.assertEqual(d.cc, P.responseCacheControl(head))
        self.assertEqual(d.lifetime, P.freshnessLifetime(head))
        self.assertEqual(d.lifetime, 30.0)
        self.assertFalse(d.noCache)
        self.assertEqual(d.served, ((b"Date", date(T0)), (b"Cache-Control", b"max-age=60, no-cache"),
                                    (b"ETag", b'"a"')))

    def test_noCacheDerived(self) -> None:
        """
        C{no-cache} in the directives this cache follows is derived too.
        """
        self.assertTrue(P.derived(stored(resp((b"Cache-Control", b"no-cache, max-age=60")))).noCache)

    def test_equalityIgnoresDerived(self) -> None:
        """
        A stored response with its derived data equals one without.
        """
        head = resp((b"Cache-Control", b"max-age=60"))
        a, b = stored(head), stored(head)
        P.derived(a)
        self.assertEqual(a, b)
        self.assertIsNone(b._derived)

    def test_refreshDerivesAgain(self) -> None:
        """
        A refreshed head is a new stored response: derived anew.
        """
        old = stored(resp((b"Cache-Control", b"max-age=60")))
        self.assertEqual(P.derived(old).lifetime, 60.0)
        head = P.updateHeaders(old.head, resp((b"Cache-Control", b"max-age=120"), status=304))
        self.assertEqual(P.derived(stored(head)).lifetime, 120.0)

    def test_endToEndDerived(self) -> None:
        """
        The served fields as the core passes them on are derived too:
        without Content-Length (noted); none when a Connection field could
        name others.
        """
        d = P.derived(stored(resp((b"Content-Length", b"4"), (b"ETag", b'"a"'))))
        self.assertEqual(d.endToEnd, (((b"Date", date(T0)), (b"ETag", b'"a"')), True))
        self.assertIsNone(P.derived(stored(resp((b"Connection", b"x-a"), (b"X-A", b"1")))).endToEnd)
