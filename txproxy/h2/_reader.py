# -*- test-case-name: tests.test_h2_translate -*-
"""
L{MessageReader}: HTTP/1.1 message bytes in, HTTP/2-shaped events out.

The HTTP/1.1 core writes request bytes (upstream shim) or response bytes
(downstream shim) to a virtual transport; a reader turns them into what an
HTTP/2 stream sends: a L{Head} (HEADERS), L{Data} (DATA), L{Trailers}
(trailing HEADERS) and L{End} (END_STREAM).  Parsing and framing are
L{txproxy.http}'s (L{HeadReader}, L{parseRequestHead},
L{parseResponseHead}, L{requestFraming}, L{responseFraming},
L{LengthReader}, L{ChunkedDecoder}); the header lists are
L{h2RequestHeaders} and L{h2ResponseHeaders}.

The events of one message, in order:

  - response side: any number of interim heads (C{Head(interim=True)},
    1xx but 101), then
  - C{Head(endStream=True)} for a message without a body (a request
    without C{Content-Length} or C{Transfer-Encoding}, a length of 0, a
    response to C{HEAD}, a 204 or 304): that head is the end, no L{End}
    follows;
  - or C{Head(endStream=False)}, L{Data} events (never empty), then, for a
    chunked body with a trailer section, one L{Trailers}, then L{End}.
    A close-delimited response body ends at L{MessageReader.eof};
  - or, after a C{CONNECT} request head, a 2xx answer to C{CONNECT} or a
    101, C{Head(endStream=False)} and tunnel mode
    (L{MessageReader.tunnel}): every later byte is L{Data}, and
    L{MessageReader.eof} gives L{End}.

After a message the reader takes the next one (keep-alive, pipelining);
on the response side it answers the method last given to the constructor
or L{MessageReader.setRequestMethod}.

Transfer codings other than C{chunked} cannot be carried by HTTP/2 (it has
none): such a message is a L{StreamError}.
"""

from __future__ import annotations

from typing import Any, List, Optional, Union

import attr

from txproxy.http import (
    DEFAULT_MAX_HEAD_SIZE,
    ChunkedDecoder,
    HeadReader,
    HTTPError,
    LengthReader,
    ResponseHead,
    parseRequestHead,
    parseResponseHead,
    requestFraming,
    responseFraming,
)

from ._fields import (
    INTERNAL_ERROR,
    PROTOCOL_ERROR,
    HeaderList,
    StreamError,
    h2RequestHeaders,
    h2ResponseHeaders,
    h2Trailers,
)


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Head:
    """
    A message head, as an HTTP/2 header list.

    @ivar headers: the header list, pseudo-header fields first.
    @ivar endStream: whether the message ends with it (no body).
    @ivar interim: whether it is an interim (1xx) response; the final
        response follows.
    """

    headers: HeaderList
    endStream: bool
    interim: bool = False


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Data:
    """
    Body bytes (decoded from chunks), or tunnel bytes.
    """

    data: bytes


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Trailers:
    """
    The trailer fields of a chunked body (see L{h2Trailers}); L{End}
    follows.
    """

    headers: HeaderList


@attr.s(frozen=True, slots=True)
class End:
    """
    The end of the message (END_STREAM).
    """


Event = Union[Head, Data, Trailers, End]

_HEAD = 0
_LENGTH = 1
_CHUNKED = 2
_CLOSE = 3
_TUNNEL = 4
_DONE = 5


class MessageReader:
    """
    Incremental HTTP/1.1 message reader: bytes in, events out (see the
    module docstring for the events of a message).

    After a L{StreamError} the reader is spent: every later call raises it
    again.

    @ivar tunnel: whether the reader has switched to tunnel mode (after a
        C{CONNECT} request head, a 2xx answer to C{CONNECT}, or a 101).
    """

    def __init__(
        self,
        isResponse: bool,
        requestMethod: bytes = b"GET",
        maxHeadSize: int = DEFAULT_MAX_HEAD_SIZE,
        scheme: bytes = b"http",
    ) -> None:
        """
        @param isResponse: read responses (else requests).
        @param requestMethod: the method of the request the first response
            answers.
        @param maxHeadSize: the largest head accepted, in bytes.
        @param scheme: the C{:scheme} of origin-form requests.
        """
        self._isResponse = isResponse
        self._method = requestMethod
        self._scheme = scheme
        self._code = INTERNAL_ERROR if isResponse else PROTOCOL_ERROR
        self._headReader = HeadReader(maxHeadSize, 502 if isResponse else 431)
        self._state = _HEAD
        self._length: Optional[LengthReader] = None
        self._chunked: Optional[ChunkedDecoder] = None
        self._failed: Optional[StreamError] = None
        self.tunnel = False

    def setRequestMethod(self, method: bytes) -> None:
        """
        Response side: set the method of the request that the next
        response answers (it stays until changed).

        @param method: the request method.
        """
        self._method = method

    def _fail(self, reason: str) -> StreamError:
        self._failed = StreamError(reason, self._code)
        return self._failed

    def feed(self, data: bytes) -> List[Event]:
        """
        Take the next bytes the writer wrote.

        @param data: the bytes.
        @return: the events they complete (possibly none).
        @raise StreamError: for a malformed message, or bytes after L{eof}.
        """
        if self._failed is not None:
            raise self._failed
        try:
            return self._feed(data)
        except HTTPError as e:
            raise self._fail(e.reason) from None
        except StreamError as e:
            raise self._fail(e.reason) from None

    def _feed(self, data: bytes) -> List[Event]:
        events: List[Event] = []
        state = self._state
        while data:
            if state == _HEAD:
                head = self._headReader.feed(data)
                if head is None:
                    break
                data = self._headReader.leftover
                state = self._startMessage(head, events)
                if state == _LENGTH and self._wholeBody(data, events):
                    state = _HEAD
                    break
            elif state == _LENGTH:
                reader = self._length
                assert reader is not None
                piece = reader.feed(data)
                if piece:
                    events.append(Data(piece))
                if not reader.ended:
                    break
                data = reader.leftover
                self._length = None
                events.append(End())
                state = _HEAD
            elif state == _CHUNKED:
                decoder = self._chunked
                assert decoder is not None
                piece = decoder.feed(data)
                if piece:
                    events.append(Data(piece))
                if not decoder.ended:
                    break
                data = decoder.leftover
                self._chunked = None
                if decoder.trailers:
                    trailers = h2Trailers(decoder.trailers)
                    if trailers:
                        events.append(Trailers(trailers))
                events.append(End())
                state = _HEAD
            elif state == _DONE:
                self._state = state
                raise StreamError("Data after the end of the stream")
            else:
                # Close-delimited body or tunnel.
                events.append(Data(data))
                break
        self._state = state
        return events

    def startResponse(self, response: ResponseHead, body: bytes = b"") -> List[Event]:
        """
        Take a response head as a value (and the first bytes of its body):
        what L{feed} does with the serialized head, without parsing it.

        @param response: a head whose fields are known to be valid (made
            by the proxy from a parsed one).
        @param body: body bytes that follow the head.
        @return: the events, as from L{feed}.
        @raise StreamError: as L{feed}, and for a head in the middle of a
            message.
        """
        if self._failed is not None:
            raise self._failed
        if not self._isResponse or self._state != _HEAD or self._headReader.bufferedSize:
            raise self._fail("A response head in the middle of a message")
        events: List[Event] = []
        try:
            state = self._startResponse(response, events)
            if state == _LENGTH and self._wholeBody(body, events):
                state = _HEAD
                body = b""
            self._state = state
            if body:
                events.extend(self._feed(body))
        except HTTPError as e:
            raise self._fail(e.reason) from None
        except StreamError as e:
            raise self._fail(e.reason) from None
        return events

    def _wholeBody(self, data: bytes, events: List[Event]) -> bool:
        """
        The usual case of a C{Content-Length} body: C{data}, which followed
        its head, is all of it.  Append its L{Data} and L{End} and say
        C{True}; else say C{False}.
        """
        length = self._length
        if length is None or len(data) != length.remaining:
            return False
        events.append(Data(data))
        events.append(End())
        self._length = None
        return True

    def _startMessage(self, data: bytes, events: List[Event]) -> int:
        """
        Parse a complete head, append its L{Head}, and set up the body.

        @return: the next state.
        """
        if self._isResponse:
            return self._startResponse(parseResponseHead(data), events)
        request = parseRequestHead(data)
        headers = h2RequestHeaders(request, self._scheme)
        if request.method == b"CONNECT":
            events.append(Head(headers, False))
            self.tunnel = True
            return _TUNNEL
        return self._startBody(requestFraming(request), headers, 400, events)

    def _startResponse(self, response: ResponseHead, events: List[Event]) -> int:
        """
        Append the L{Head} of C{response} and set up its body.

        @return: the next state.
        """
        status = response.status
        headers = h2ResponseHeaders(response)
        if status < 200 and status != 101:
            events.append(Head(headers, False, True))
            return _HEAD
        if status == 101 or (self._method == b"CONNECT" and status < 300):
            events.append(Head(_withoutLength(headers), False))
            self.tunnel = True
            return _TUNNEL
        return self._startBody(responseFraming(self._method, response), headers, 502, events)

    def _startBody(self, framing: Any, headers: HeaderList, errorStatus: int, events: List[Event]) -> int:
        """
        Append the L{Head} (C{headers}) of a message whose body is framed
        by C{framing}, and set up the body.

        @return: the next state.
        """
        kind = framing.kind
        if kind == "none" or framing.length == 0:
            events.append(Head(headers, True))
            return _HEAD
        if framing.codings and framing.codings != (b"chunked",):
            raise StreamError("Transfer coding other than chunked")
        if kind == "length":
            length = framing.length
            assert length is not None
            events.append(Head(_normalLength(headers, length), False))
            self._length = LengthReader(length)
            return _LENGTH
        events.append(Head(headers, False))
        if kind == "chunked":
            self._chunked = ChunkedDecoder(errorStatus)
            return _CHUNKED
        return _CLOSE

    def eof(self) -> List[Event]:
        """
        The writer closed: end a close-delimited body or a tunnel.

        @return: C{[End()]} after a close-delimited body or in a tunnel,
            C{[]} between messages.
        @raise StreamError: if a message was incomplete.
        """
        if self._failed is not None:
            raise self._failed
        state = self._state
        self._state = _DONE
        if state == _CLOSE or state == _TUNNEL:
            return [End()]
        if state == _DONE or (state == _HEAD and not self._headReader.bufferedSize):
            return []
        raise self._fail("Connection closed in the middle of a message")


def _withoutLength(headers: HeaderList) -> HeaderList:
    """
    A tunnel's head has no framing fields (RFC 9110 section 9.3.6).
    """
    return [pair for pair in headers if pair[0] != b"content-length"]


def _normalLength(headers: HeaderList, length: int) -> HeaderList:
    """
    One C{content-length} with the framing's value: HTTP/1.1 accepts
    repeated or listed values (C{5, 5}) that HTTP/2 peers refuse.
    """
    value = b"%d" % (length,)
    found = [pair[1] for pair in headers if pair[0] == b"content-length"]
    if found == [value]:
        return headers
    return _withoutLength(headers) + [(b"content-length", value)]
