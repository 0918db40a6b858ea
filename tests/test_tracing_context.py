"""
Tests for L{txproxy.tracing._context}: W3C Trace Context level 1 parsing and
generation.  The cases mirror the W3C test suite (w3c/trace-context,
C{test/test.py}): each test names the harness case it follows.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

from twisted.trial.unittest import SynchronousTestCase

from txproxy.tracing._context import (
    MAX_TRACESTATE_MEMBERS,
    Sampler,
    TraceParent,
    contextFromHeaders,
    newSpanId,
    newTraceId,
    parseTraceparent,
    parseTracestate,
)

TRACE = b"12345678901234567890123456789012"
PARENT = b"1234567890123456"
VALID = b"00-" + TRACE + b"-" + PARENT + b"-01"


def _ctx(*headers: Tuple[bytes, bytes]) -> Tuple[Optional[TraceParent], Optional[bytes]]:
    return contextFromHeaders(list(headers))


class TraceparentTests(SynchronousTestCase):
    """
    C{traceparent}: what is continued and what is replaced.
    """

    def assertValid(self, value: bytes, flags: int = 1) -> None:
        parsed = parseTraceparent(value)
        self.assertEqual(parsed, TraceParent(TRACE, PARENT, flags), value)

    def assertInvalid(self, value: bytes) -> None:
        self.assertIsNone(parseTraceparent(value), value)

    def test_valid(self) -> None:
        """
        A version 00 value is read into its trace id, parent id and flags.
        """
        self.assertValid(VALID)
        self.assertValid(VALID[:-2] + b"00", flags=0)
        self.assertTrue(parseTraceparent(VALID).sampled)  # type: ignore[union-attr]
        self.assertFalse(parseTraceparent(VALID[:-2] + b"00").sampled)  # type: ignore[union-attr]

    def test_onlySampledFlagKept(self) -> None:
        """
        Flags other than C{sampled} (bit 0) are not propagated.
        """
        self.assertEqual(parseTraceparent(VALID[:-2] + b"ff").flags, 1)  # type: ignore[union-attr]
        self.assertEqual(parseTraceparent(VALID[:-2] + b"02").flags, 0)  # type: ignore[union-attr]

    def test_versionTrailingCharacters(self) -> None:
        """
        test_traceparent_version_0x00: version 00 with anything after the
        flags is invalid.
        """
        self.assertInvalid(VALID + b".")
        self.assertInvalid(VALID + b"-what-the-future-will-be-like")

    def test_futureVersion(self) -> None:
        """
        test_traceparent_version_0xcc: a future version is read from its
        first 55 characters when what follows starts with a dash.
        """
        future = b"cc" + VALID[2:]
        self.assertValid(future)
        self.assertValid(future + b"-what-the-future-will-be-like")
        self.assertInvalid(future + b".what-the-future-will-be-like")

    def test_versionFF(self) -> None:
        """
        test_traceparent_version_0xff: version ff is invalid.
        """
        self.assertInvalid(b"ff" + VALID[2:])

    def test_versionIllegalCharacters(self) -> None:
        """
        test_traceparent_version_illegal_characters.
        """
        self.assertInvalid(b".0" + VALID[2:])
        self.assertInvalid(b"0." + VALID[2:])

    def test_versionLength(self) -> None:
        """
        test_traceparent_version_too_long / _too_short.
        """
        self.assertInvalid(b"000" + VALID[2:])
        self.assertInvalid(b"0000" + VALID[2:])
        self.assertInvalid(b"0" + VALID[2:])

    def test_traceIdAllZero(self) -> None:
        """
        test_traceparent_trace_id_all_zero.
        """
        self.assertInvalid(b"00-" + b"0" * 32 + b"-" + PARENT + b"-01")

    def test_traceIdIllegalCharacters(self) -> None:
        """
        test_traceparent_trace_id_illegal_characters, and upper-case hex.
        """
        self.assertInvalid(b"00-." + TRACE[1:] + b"-" + PARENT + b"-01")
        self.assertInvalid(b"00-" + TRACE[:-1] + b".-" + PARENT + b"-01")
        self.assertInvalid(b"00-" + b"ABCDEF" + TRACE[6:] + b"-" + PARENT + b"-01")
        self.assertInvalid(b"00-" + TRACE + b"-" + b"ABCDEF" + PARENT[6:] + b"-01")

    def test_traceIdLength(self) -> None:
        """
        test_traceparent_trace_id_too_long / _too_short.
        """
        self.assertInvalid(b"00-" + TRACE + b"3-" + PARENT + b"-01")
        self.assertInvalid(b"00-" + TRACE[:-1] + b"-" + PARENT + b"-01")

    def test_parentIdAllZero(self) -> None:
        """
        test_traceparent_parent_id_all_zero.
        """
        self.assertInvalid(b"00-" + TRACE + b"-" + b"0" * 16 + b"-01")

    def test_parentIdIllegalCharacters(self) -> None:
        """
        test_traceparent_parent_id_illegal_characters.
        """
        self.assertInvalid(b"00-" + TRACE + b"-." + PARENT[1:] + b"-01")
        self.assertInvalid(b"00-" + TRACE + b"-" + PARENT[:-1] + b".-01")

    def test_parentIdLength(self) -> None:
        """
        test_traceparent_parent_id_too_long / _too_short.
        """
        self.assertInvalid(b"00-" + TRACE + b"-" + PARENT + b"7-01")
        self.assertInvalid(b"00-" + TRACE + b"-" + PARENT[:-1] + b"-01")

    def test_flags(self) -> None:
        """
        test_traceparent_trace_flags_illegal_characters / _too_long /
        _too_short.
        """
        self.assertInvalid(VALID[:-2] + b".0")
        self.assertInvalid(VALID[:-2] + b"0.")
        self.assertInvalid(VALID[:-2] + b"001")
        self.assertInvalid(VALID[:-2] + b"1")

    def test_ows(self) -> None:
        """
        test_traceparent_ows_handling: spaces and tabs around the value are
        ignored.
        """
        for value in (b" " + VALID, b"\t" + VALID, VALID + b" ", VALID + b"\t", b"\t " + VALID + b" \t"):
            self.assertValid(value)

    def test_everyTruncation(self) -> None:
        """
        No prefix of a valid value is valid (nor raises).
        """
        for i in range(len(VALID)):
            self.assertInvalid(VALID[:i])

    def test_header(self) -> None:
        """
        L{TraceParent.header} writes version 00 and the sampled flag.
        """
        self.assertEqual(TraceParent(TRACE, PARENT, 1).header(), VALID)
        self.assertEqual(TraceParent(TRACE, PARENT, 0).header(), VALID[:-2] + b"00")
        self.assertEqual(parseTraceparent(TraceParent(TRACE, PARENT, 1).header()), TraceParent(TRACE, PARENT, 1))


class HeadersTests(SynchronousTestCase):
    """
    L{contextFromHeaders}: finding the fields among a request's headers.
    """

    def test_missing(self) -> None:
        """
        test_both_traceparent_and_tracestate_missing.
        """
        self.assertEqual(_ctx((b"Host", b"x")), (None, None))

    def test_nameCasing(self) -> None:
        """
        test_traceparent_header_name_valid_casing and
        test_tracestate_header_name_valid_casing: names match in any case.
        """
        for name in (b"TraceParent", b"TrAcEpArEnT", b"TRACEPARENT"):
            parent, _ = _ctx((name, VALID))
            self.assertEqual(parent, TraceParent(TRACE, PARENT, 1))
        for name in (b"TraceState", b"TrAcEsTaTe", b"TRACESTATE"):
            self.assertEqual(_ctx((b"traceparent", VALID), (name, b"foo=1"))[1], b"foo=1")

    def test_wrongNames(self) -> None:
        """
        test_traceparent_header_name and test_tracestate_header_name.
        """
        self.assertEqual(_ctx((b"trace-parent", VALID)), (None, None))
        self.assertEqual(_ctx((b"trace.parent", VALID)), (None, None))
        self.assertIsNone(_ctx((b"traceparent", VALID), (b"trace-state", b"foo=1"))[1])
        self.assertIsNone(_ctx((b"traceparent", VALID), (b"trace.state", b"foo=1"))[1])

    def test_duplicatedTraceparent(self) -> None:
        """
        test_traceparent_duplicated: two fields make it invalid.
        """
        other = b"00-" + TRACE[:-1] + b"1-" + PARENT + b"-01"
        self.assertEqual(_ctx((b"traceparent", other), (b"traceparent", VALID)), (None, None))

    def test_tracestateWithoutTraceparent(self) -> None:
        """
        test_tracestate_included_traceparent_missing: dropped.
        """
        self.assertEqual(_ctx((b"tracestate", b"foo=1")), (None, None))
        self.assertEqual(_ctx((b"traceparent", b"garbage"), (b"tracestate", b"foo=1")), (None, None))

    def test_both(self) -> None:
        """
        test_tracestate_included_traceparent_included.
        """
        parent, state = _ctx((b"traceparent", VALID[:-2] + b"00"), (b"tracestate", b"foo=1,bar=2"))
        self.assertEqual(parent, TraceParent(TRACE, PARENT, 0))
        self.assertEqual(state, b"foo=1,bar=2")


class TracestateTests(SynchronousTestCase):
    """
    C{tracestate}: grammar, combination, limits.
    """

    def test_emptyHeader(self) -> None:
        """
        test_tracestate_empty_header: an empty field is nothing; other
        fields still count.
        """
        self.assertIsNone(parseTracestate([b""]))
        self.assertEqual(parseTracestate([b"foo=1", b""]), b"foo=1")
        self.assertEqual(parseTracestate([b"", b"foo=1"]), b"foo=1")

    def test_multipleHeaders(self) -> None:
        """
        test_tracestate_multiple_headers_different_keys: combined, in order.
        """
        self.assertEqual(
            parseTracestate([b"foo=1,bar=2", b"rojo=1,congo=2", b"baz=3"]),
            b"foo=1,bar=2,rojo=1,congo=2,baz=3",
        )

    def test_duplicatedKeys(self) -> None:
        """
        test_tracestate_duplicated_keys: the whole list is dropped.
        """
        for values in ([b"foo=1,foo=1"], [b"foo=1,foo=2"], [b"foo=1", b"foo=1"], [b"foo=1", b"foo=2"]):
            self.assertIsNone(parseTracestate(values), values)

    def test_allAllowedCharacters(self) -> None:
        """
        test_tracestate_all_allowed_characters.
        """
        key = bytes(range(0x61, 0x7B)) + b"0123456789_-*/"
        vendorKey = key + b"@a-z0-9_-*/"
        value = bytes(range(0x20, 0x2C)) + bytes(range(0x2D, 0x3D)) + bytes(range(0x3E, 0x7F))
        self.assertEqual(parseTracestate([key + b"=" + value]), key + b"=" + value)
        self.assertEqual(parseTracestate([vendorKey + b"=" + value]), vendorKey + b"=" + value)

    def test_ows(self) -> None:
        """
        test_tracestate_ows_handling: white space around members goes.
        """
        self.assertEqual(parseTracestate([b"foo=1 \t , \t bar=2, \t baz=3"]), b"foo=1,bar=2,baz=3")
        self.assertEqual(parseTracestate([b"foo=1\t \t,\t \tbar=2,\t \tbaz=3"]), b"foo=1,bar=2,baz=3")
        for value in (b" foo=1", b"\tfoo=1", b"foo=1 ", b"foo=1\t", b"\t foo=1 \t"):
            self.assertEqual(parseTracestate([value]), b"foo=1", value)

    def test_emptyMembers(self) -> None:
        """
        Empty list members are allowed and skipped.
        """
        self.assertEqual(parseTracestate([b",foo=1,,bar=2,"]), b"foo=1,bar=2")

    def test_keyIllegalCharacters(self) -> None:
        """
        test_tracestate_key_illegal_characters.
        """
        for value in (b"foo =1", b"FOO=1", b"foo.bar=1"):
            self.assertIsNone(parseTracestate([value]), value)

    def test_keyIllegalVendorFormat(self) -> None:
        """
        test_tracestate_key_illegal_vendor_format.
        """
        for value in (b"foo@=1,bar=2", b"@foo=1,bar=2", b"foo@@bar=1,bar=2", b"foo@bar@baz=1,bar=2"):
            self.assertIsNone(parseTracestate([value]), value)

    def test_memberCountLimit(self) -> None:
        """
        test_tracestate_member_count_limit: 32 members pass whole; beyond
        32, the list is trimmed from the end (where the harness's strict
        level discards it, the spec lets a participant remove members).
        """
        members = [b"bar%02d=%02d" % (i, i) for i in range(1, 34)]
        self.assertEqual(parseTracestate([b",".join(members[:32])]), b",".join(members[:32]))
        self.assertEqual(parseTracestate([b",".join(members)]), b",".join(members[:MAX_TRACESTATE_MEMBERS]))
        # Invalid members past the 32nd still make it invalid.
        self.assertIsNone(parseTracestate([b",".join(members) + b",BAD=1"]))

    def test_keyLengthLimit(self) -> None:
        """
        test_tracestate_key_length_limit.
        """
        self.assertEqual(parseTracestate([b"foo=1", b"z" * 256 + b"=1"]), b"foo=1," + b"z" * 256 + b"=1")
        self.assertIsNone(parseTracestate([b"foo=1", b"z" * 257 + b"=1"]))
        self.assertIsNotNone(parseTracestate([b"foo=1", b"t" * 241 + b"@" + b"v" * 14 + b"=1"]))
        self.assertIsNone(parseTracestate([b"foo=1", b"t" * 242 + b"@v=1"]))
        self.assertIsNone(parseTracestate([b"foo=1", b"t@" + b"v" * 15 + b"=1"]))

    def test_valueIllegalCharacters(self) -> None:
        """
        test_tracestate_value_illegal_characters, and a value's length and
        last character.
        """
        self.assertIsNone(parseTracestate([b"foo=bar=baz"]))
        self.assertIsNone(parseTracestate([b"foo=,bar=3"]))
        self.assertIsNone(parseTracestate([b"foo=a\x7f"]))
        self.assertEqual(parseTracestate([b"foo=" + b"a" * 256]), b"foo=" + b"a" * 256)
        self.assertIsNone(parseTracestate([b"foo=" + b"a" * 257]))
        # A space inside a value is allowed; a trailing one is white space.
        self.assertEqual(parseTracestate([b"foo=a b"]), b"foo=a b")


class IdsTests(SynchronousTestCase):
    """
    New trace and span ids.
    """

    def test_format(self) -> None:
        """
        Ids are lower-case hex of the right length, and a new parent made
        from them parses.
        """
        trace, span = newTraceId(), newSpanId()
        self.assertEqual(len(trace), 32)
        self.assertEqual(len(span), 16)
        self.assertEqual(trace, trace.lower())
        self.assertEqual(parseTraceparent(TraceParent(trace, span, 1).header()), TraceParent(trace, span, 1))

    def test_neverZero(self) -> None:
        """
        An all-zero draw is drawn again.
        """
        draws: List[int] = [0, 0, 5]
        self.assertEqual(newTraceId(lambda bits: draws.pop(0)), b"%032x" % 5)
        draws = [0, 7]
        self.assertEqual(newSpanId(lambda bits: draws.pop(0)), b"%016x" % 7)

    def test_distinct(self) -> None:
        """
        Ids differ from one call to the next.
        """
        self.assertEqual(len({newSpanId() for _ in range(100)}), 100)


class SamplerTests(SynchronousTestCase):
    """
    Parent-based sampling with a ratio for new traces.
    """

    def test_parentWins(self) -> None:
        """
        A valid parent's flag decides, whatever the ratio.
        """
        for ratio in (0.0, 0.5, 1.0):
            sampler = Sampler(ratio)
            self.assertTrue(sampler.sample(TraceParent(TRACE, PARENT, 1), TRACE))
            self.assertFalse(sampler.sample(TraceParent(TRACE, PARENT, 0), TRACE))

    def test_ratioBounds(self) -> None:
        """
        Ratio 1 records every new trace, 0 none.
        """
        ids = [newTraceId() for _ in range(200)]
        self.assertTrue(all(Sampler(1.0).sample(None, t) for t in ids))
        self.assertFalse(any(Sampler(0.0).sample(None, t) for t in ids))

    def test_ratioByTraceId(self) -> None:
        """
        A new trace is recorded when its id's low 64 bits are below
        C{ratio * 2**64}: the decision is a function of the id.
        """
        sampler = Sampler(0.25)
        self.assertTrue(sampler.sample(None, b"f" * 16 + b"%016x" % (2**62 - 1)))
        self.assertFalse(sampler.sample(None, b"0" * 16 + b"%016x" % (2**62)))
        share = sum(sampler.sample(None, newTraceId()) for _ in range(4000)) / 4000
        self.assertTrue(0.18 < share < 0.32, share)

    def test_invalidRatio(self) -> None:
        """
        A ratio outside 0..1 is refused.
        """
        self.assertRaises(ValueError, Sampler, 1.5)
        self.assertRaises(ValueError, Sampler, -0.1)
