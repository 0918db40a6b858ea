# -*- test-case-name: tests.test_tracing_http -*-
"""
What txproxy's spans say, in OpenTelemetry's HTTP and network semantic
conventions: the attributes set when a request, tunnel or relayed
connection starts and when it ends.  Plain values in, a L{Span} out: the
protocols call these, so each of them has one line of tracing at each end.

Attributes (a span has those that apply):

  - at the start: C{http.request.method} (C{_OTHER} for an unknown method,
    with C{http.request.method_original}), C{url.scheme} (C{http} or
    C{https} as the request arrived, or the scheme of an absolute-form
    target; not on a C{CONNECT}), C{url.path} (no query),
    C{server.address}/C{server.port} (the C{Host} or C{CONNECT} authority),
    C{client.address} (the client, as a PROXY header named it; with
    C{client.port} in the TCP modes), C{network.peer.address} and
    C{network.peer.port} (the socket's peer), C{network.protocol.version}
    (C{1.1}, C{1.0} or C{2}; the protocol, C{http}, is implied),
    C{user_agent.original};
  - at the end: C{http.response.status_code}, C{http.route} (the matched
    route's path prefix, a template, never the raw path; reverse mode) and
    C{txproxy.route} (the route's name, C{host[/prefix]}),
    C{txproxy.upstream.address} (the address dialled), C{txproxy.bytes_up}
    and C{txproxy.bytes_down} (what the access log counts),
    C{txproxy.listener}, C{txproxy.mode}; and for a status txproxy itself
    answered (a refusal, a timeout, an unreachable upstream) or any 5xx,
    C{error.type} (the status code) and C{txproxy.reason}; a 5xx also sets
    the span's status to C{ERROR}.
  - events: C{upstream.connected}, C{upstream.connect_failed} (with
    C{error.type}), C{upstream.retry} (a pooled connection the upstream had
    closed, or a failed dial retried on another backend).
"""

from __future__ import annotations

from binascii import unhexlify
from typing import Any, Dict, List, Optional, Tuple

from txproxy.tls import isTLSTransport
from txproxy.tracing._otlp import (
    _FLAGS_ROOT,
    _SPAN_ID,
    _T2_LD,
    _TIMES,
    _TRACE_ID,
    _V2,
    _spanAttribute,
    attributeBlock,
    nameField,
    spanField,
)
from txproxy.tracing._span import SPAN_KIND_SERVER, AttributeBlock, RecordingSpan, Span, Tracer

__all__ = ["startHTTPSpan", "startStreamSpan", "endSpan", "encodeHTTPSpan", "connectionAttributes", "KNOWN_METHODS"]

#: Methods named as such in C{http.request.method}; others are C{_OTHER}.
KNOWN_METHODS = frozenset(
    [b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH", b"QUERY"]
)


_authorities: Dict[bytes, Tuple[str, Optional[int]]] = {}


def _authority(value: bytes) -> Tuple[str, Optional[int]]:
    """
    The host and port of a C{Host} value or C{CONNECT} target (kept: the
    same few values come again and again).
    """
    known = _authorities.get(value)
    if known is not None:
        return known
    text = value.decode("latin-1")
    if text.startswith("["):
        end = text.find("]")
        host, rest = text[1:end], text[end + 1:]
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = text.partition(":")
    if len(_authorities) >= 1024:
        _authorities.clear()
    result = _authorities[value] = (host, int(port) if port.isdigit() else None)
    return result


class ConnectionAttributes(Dict[str, Any]):
    """
    A connection's attributes (a dictionary), with C{block}: those of them
    every request keeps (all but C{url.scheme}), encoded once when
    L{connectionAttributes} made them.
    """

    block: AttributeBlock


def connectionAttributes(client: Any, transport: Any, http: bool = False) -> ConnectionAttributes:
    """
    The attributes every span of one client connection shares: the client
    (as a PROXY header named it) and the socket's peer; with C{http}, the
    C{url.scheme} its requests arrived with (C{https} on TLS).  Computed
    once per connection by the protocols.
    """
    attributes = ConnectionAttributes()
    attributes["client.address"] = client.host
    if http:
        attributes["url.scheme"] = "https" if isTLSTransport(transport) else "http"
    getPeer = getattr(transport, "getPeer", None)
    peer = getPeer() if getPeer is not None else None
    host = getattr(peer, "host", None)
    if host is not None:
        attributes["network.peer.address"] = host
        port = getattr(peer, "port", None)
        if port is not None:
            attributes["network.peer.port"] = port
    attributes.block = attributeBlock([item for item in attributes.items() if item[0] != "url.scheme"])
    return attributes


_METHODS = {m: m.decode("ascii") for m in KNOWN_METHODS}
_VERSIONS = {b"HTTP/1.1": "1.1", b"HTTP/1.0": "1.0"}
_HOST = b"host"
_USER_AGENT = b"user-agent"


def _requestParts(head: Any, scheme: Optional[str]) -> Tuple[Optional[bytes], Optional[bytes], Optional[str],
                                                          Optional[bytes]]:
    """
    What a request's attributes are made of: its authority (C{Host}, the
    C{CONNECT} target or an absolute-form target's), user agent, URL scheme
    (C{scheme}, the connection's, unless the target names one; L{None} for
    a C{CONNECT}) and path (no query; L{None} for a C{CONNECT}).
    """
    method = head.method
    # Host and User-Agent in one pass over the fields.
    authority: Optional[bytes] = None
    agent: Optional[bytes] = None
    for field, value in head.headers:
        size = len(field)
        if size == 4:
            if authority is None and field.lower() == _HOST:
                authority = value
        elif size == 10 and agent is None and field.lower() == _USER_AGENT:
            agent = value
    target = head.target
    path: Optional[bytes] = None
    if method == b"CONNECT":
        authority = target
        # (A tunnel has no URL.)
        scheme = None
    else:
        if target[:1] != b"/":
            # absolute-form (a forward proxy's request): scheme://authority/path
            schemeBytes, _, rest = target.partition(b"://")
            if rest:
                scheme = schemeBytes.decode("latin-1").lower()
            slash = rest.find(b"/")
            if authority is None:
                authority = rest[:slash] if slash >= 0 else rest
            target = rest[slash:] if slash >= 0 else b"/"
        path = target.partition(b"?")[0]
    return authority, agent, scheme, path


def startHTTPSpan(tracer: Tracer, head: Any, client: Any, transport: Any, h2: bool, start: float,
                  raw: Optional[bytes] = None, base: Optional[Dict[str, Any]] = None,
                  line: Optional[bytes] = None) -> Span:
    """
    The SERVER span of one HTTP request (or C{CONNECT}), continuing the
    trace of its head's C{traceparent}.

    @param head: the L{txproxy.http.RequestHead} received.
    @param client: the L{txproxy.hooks.ClientInfo}.
    @param transport: the client connection's transport (for the peer).
    @param h2: whether the request is an HTTP/2 stream.
    @param start: POSIX seconds the head arrived.
    @param raw: the head's bytes as received, when at hand: a head that does
        not mention C{trace} anywhere is not searched field by field.
    @param base: the connection's L{connectionAttributes}, when the caller
        keeps them (else computed).
    @param line: the C{traceparent} line the tracer's pool gave the request
        (L{Tracer.quickLine}) when it was found to carry no trace fields: the
        span is that new trace's root (recorded if the line's sampled flag
        is set), and the head is not looked at for trace fields again.
    """
    if line is not None:
        span = tracer.rootSpan(line, start)
    else:
        # (find, not "in": bytes.__contains__ first tries its argument as an
        # int, and formats a TypeError to throw away, ~1.5k instructions.)
        scan = raw is None or raw.lower().find(b"trace") >= 0
        span = tracer.startRequest(head.headers, start, scan)
    if not span.sampled:
        return span
    assert isinstance(span, RecordingSpan)
    if base is None:
        base = connectionAttributes(client, transport, True)
    method = head.method
    authority, agent, scheme, path = _requestParts(head, base.get("url.scheme"))
    version = b"2" if h2 else head.version
    name = _METHODS.get(method)
    span.name = "HTTP" if name is None else name
    if base.__class__ is ConnectionAttributes and span._blocks is None and not span._attrs:
        # The attributes that repeat from request to request as encoded
        # blocks (the connection's, the method's, the authority's, the user
        # agent's): only the path is the request's own.
        key = (method, version, scheme)
        block = _requestBlocks.get(key)
        if block is None:
            block = _requestBlock(key)
        blocks = span._blocks = [base.block, block]
        a = span._attrs
        if path is not None:
            a["url.path"] = path.decode("latin-1")
        if authority:
            block = _authorityBlocks.get(authority)
            if block is None:
                block = _authorityBlock(authority)
            if block is None:
                a.update(_authorityPairs(authority))
            else:
                blocks.append(block)
        if agent:
            block = _agentBlocks.get(agent)
            if block is None and len(agent) <= _BLOCK_VALUE_LIMIT:
                block = _agentBlock(agent)
            if block is None:
                a["user_agent.original"] = agent.decode("latin-1")
            else:
                blocks.append(block)
        return span
    a = span.attributes = dict(base)
    a.update(_requestPairs(method, version, scheme))
    if scheme is None:
        a.pop("url.scheme", None)
    if path is not None:
        a["url.path"] = path.decode("latin-1")
    if authority:
        a.update(_authorityPairs(authority))
    if agent:
        a["user_agent.original"] = agent.decode("latin-1")
    return span


def _requestPairs(method: bytes, version: bytes, scheme: Optional[str]) -> List[Tuple[str, Any]]:
    """
    The attributes of a request's method, HTTP version (C{b"2"} for
    HTTP/2) and URL scheme (L{None} for none).
    """
    name = _METHODS.get(method)
    if name is None:
        pairs: List[Tuple[str, Any]] = [("http.request.method", "_OTHER"),
                                        ("http.request.method_original", method.decode("latin-1"))]
    else:
        pairs = [("http.request.method", name)]
    pairs.append(("network.protocol.version",
                  "2" if version == b"2" else _VERSIONS.get(version) or version[5:].decode("latin-1")))
    if scheme is not None:
        pairs.append(("url.scheme", scheme))
    return pairs


def _authorityPairs(authority: bytes) -> List[Tuple[str, Any]]:
    host, port = _authority(authority)
    pairs: List[Tuple[str, Any]] = [("server.address", host)]
    if port is not None:
        pairs.append(("server.port", port))
    return pairs


# Encoded blocks of attributes, by what decides them (bounded: cleared when
# full).
_BLOCKS_LIMIT = 1024
#: Longer values (a client's, of any size) are not kept.
_BLOCK_VALUE_LIMIT = 256
_requestBlocks: Dict[Tuple[bytes, bytes, Optional[str]], AttributeBlock] = {}
_authorityBlocks: Dict[bytes, AttributeBlock] = {}
_agentBlocks: Dict[bytes, AttributeBlock] = {}


def _requestBlock(key: Tuple[bytes, bytes, Optional[str]]) -> AttributeBlock:
    if len(_requestBlocks) >= _BLOCKS_LIMIT:
        _requestBlocks.clear()
    block = _requestBlocks[key] = attributeBlock(_requestPairs(*key))
    return block


def _authorityBlock(authority: bytes) -> Optional[AttributeBlock]:
    if len(authority) > _BLOCK_VALUE_LIMIT:
        return None
    if len(_authorityBlocks) >= _BLOCKS_LIMIT:
        _authorityBlocks.clear()
    block = _authorityBlocks[authority] = attributeBlock(_authorityPairs(authority))
    return block


def _agentBlock(agent: bytes) -> AttributeBlock:
    if len(_agentBlocks) >= _BLOCKS_LIMIT:
        _agentBlocks.clear()
    block = _agentBlocks[agent] = attributeBlock([("user_agent.original", agent.decode("latin-1"))])
    return block


def startStreamSpan(tracer: Tracer, mode: str, client: Any, transport: Any, start: float) -> Span:
    """
    The SERVER span of one relayed TCP connection (modes C{tcp},
    C{transparent}, C{sni}): always a new trace, sampled by
    C{--trace-sample}.
    """
    span = tracer.startSpan(mode, start=start)
    if span.sampled:
        assert isinstance(span, RecordingSpan)
        a = span.attributes = connectionAttributes(client, transport)
        a["network.transport"] = "tcp"
        if client.port:
            a["client.port"] = client.port
    return span


_endBlocks: Dict[Tuple[Any, ...], AttributeBlock] = {}


def _endBlock(key: Tuple[Any, ...]) -> AttributeBlock:
    """
    The block of a span's end attributes that its route, upstream,
    listener, mode and status decide (kept for the next span with the
    same).
    """
    routeName, prefix, upstream, listener, mode, status = key
    pairs: List[Tuple[str, Any]] = [] if status is None else [("http.response.status_code", status)]
    if routeName is not None:
        pairs.append(("txproxy.route", routeName))
        if prefix is not None:
            pairs.append(("http.route", prefix))
    if upstream:
        pairs.append(("txproxy.upstream.address", upstream))
    pairs += [("txproxy.listener", listener), ("txproxy.mode", mode)]
    if len(_endBlocks) >= 1024:
        _endBlocks.clear()
    block = _endBlocks[key] = attributeBlock(pairs)
    return block


def endSpan(
    tracer: Tracer,
    span: Span,
    status: int,
    reason: str,
    bytesUp: int,
    bytesDown: int,
    upstream: str,
    listener: str,
    mode: str,
    end: float,
    route: Any = None,
    http: bool = True,
) -> None:
    """
    Fill the end attributes of C{span} and end it (a span that is not
    recorded has nothing to fill or send).

    @param status: the status answered (for a tunnel, its C{CONNECT}
        status; in the TCP modes, 200 for a relayed connection or the
        status of the refusal).
    @param reason: why it ended badly, as the access log says, or C{""}.
    @param route: the matched L{txproxy.router.Route}, or L{None}.
    @param http: whether C{status} is an HTTP status (a response was sent).
    """
    if not span.sampled:
        return
    assert isinstance(span, RecordingSpan)
    blocks = span._blocks
    a = span._attrs
    if http and blocks is None:
        a["http.response.status_code"] = status
    prefix = None
    if route is not None and http:
        prefix = getattr(route, "prefix", "") or "/"
        if span.name != "CONNECT":
            span.name = f"{span.name} {prefix}"
    if blocks is not None:
        # The route's, the upstream's and the listener's attributes, encoded
        # once for all their spans.
        key = (route.name if route is not None else None, prefix, upstream, listener, mode, status if http else None)
        block = _endBlocks.get(key)
        if block is None:
            block = _endBlock(key)
        blocks.append(block)
    else:
        if route is not None:
            a["txproxy.route"] = route.name
            if prefix is not None:
                a["http.route"] = prefix
        if upstream:
            a["txproxy.upstream.address"] = upstream
        a["txproxy.listener"] = listener
        a["txproxy.mode"] = mode
    a["txproxy.bytes_up"] = bytesUp
    a["txproxy.bytes_down"] = bytesDown
    if status >= 500 or (reason and status >= 400):
        a["error.type"] = str(status)
        if reason:
            a["txproxy.reason"] = reason
        if status >= 500:
            span.setError(reason or f"status {status}")
    elif reason:
        a["txproxy.reason"] = reason
    if span.end is None:
        # (Tracer.endSpan, in place: ended once, queued for export.)
        span.end = end
        exporter = tracer.exporter
        if exporter is not None:
            exporter.add(span)


# -- a recorded request's span encoded from the request, with no Span made

#: Encoded pieces by what decides them (bounded like the blocks): a
#: request's start attributes but its path, by (method, version, scheme,
#: authority, user agent); its name and kind, and end attributes but the
#: byte counts, by (method, route, prefix, upstream, listener, mode,
#: status); the path's and the counts' fields by value.
_startEncoded: Dict[Tuple[Any, ...], bytes] = {}
_endEncoded: Dict[Tuple[Any, ...], Tuple[bytes, bytes]] = {}
_pathFields: Dict[bytes, bytes] = {}
_upFields: Dict[int, bytes] = {}
_downFields: Dict[int, bytes] = {}


def _bounded(cache: Dict[Any, Any], key: Any, value: Any) -> Any:
    if len(cache) >= _BLOCKS_LIMIT:
        cache.clear()
    cache[key] = value
    return value


def _startEncodedFor(key: Tuple[Any, ...]) -> Optional[bytes]:
    method, version, scheme, authority, agent = key
    if (authority and len(authority) > _BLOCK_VALUE_LIMIT) or (agent and len(agent) > _BLOCK_VALUE_LIMIT):
        # (Kept in the span's own attributes, not in blocks.)
        return None
    requestKey = (method, version, scheme)
    parts = [(_requestBlocks.get(requestKey) or _requestBlock(requestKey)).encoded]
    if authority:
        parts.append((_authorityBlocks.get(authority) or _authorityBlock(authority)).encoded)  # type: ignore[union-attr]
    if agent:
        parts.append((_agentBlocks.get(agent) or _agentBlock(agent)).encoded)
    return _bounded(_startEncoded, key, b"".join(parts))  # type: ignore[no-any-return]


def _endEncodedFor(key: Tuple[Any, ...]) -> Tuple[bytes, bytes]:
    method, routeName, prefix, upstream, listener, mode, status = key
    name = _METHODS.get(method) or "HTTP"
    if prefix is not None:
        name = f"{name} {prefix}"
    blockKey = (routeName, prefix, upstream, listener, mode, status)
    block = _endBlocks.get(blockKey) or _endBlock(blockKey)
    return _bounded(_endEncoded, key, (nameField(name) + bytes((SPAN_KIND_SERVER,)), block.encoded))  # type: ignore[no-any-return]


def encodeHTTPSpan(
    line: bytes,
    start: float,
    end: float,
    head: Any,
    h2: bool,
    base: Any,
    route: Any,
    upstream: str,
    listener: str,
    mode: str,
    status: int,
    bytesUp: int,
    bytesDown: int,
) -> Optional[bytes]:
    """
    The encoded span (a C{ScopeSpans} field, as L{BatchExporter.add} queues
    them) of a recorded HTTP request that started a new trace, made
    straight from the request, its C{traceparent} line and how it ended:
    the bytes that L{startHTTPSpan}, L{endSpan} and
    L{txproxy.tracing._otlp.encodeSpanField} would give its span, without
    making the span.  The HTTP core calls this for the common request (no
    trace fields, no hook that saw the span, no event, no reason to
    report); L{None} when the request is not of that kind (a C{CONNECT},
    an authority or user agent too long to keep encoded, connection
    attributes not from L{connectionAttributes}): the caller then makes the
    span and ends it.

    @param line: the request's C{traceparent} line (L{Tracer.quickLine}).
    @param start: POSIX seconds the head arrived.
    @param end: POSIX seconds it ended.
    @param base: the connection's L{connectionAttributes}.
    @param route: the matched L{txproxy.router.Route}, or L{None}.
    """
    method = head.method
    if method == b"CONNECT" or base.__class__ is not ConnectionAttributes:
        return None
    authority, agent, scheme, path = _requestParts(head, base.get("url.scheme"))
    key = (method, b"2" if h2 else head.version, scheme, authority, agent)
    starting = _startEncoded.get(key)
    if starting is None:
        starting = _startEncodedFor(key)
        if starting is None:
            return None
    if route is not None:
        endKey: Tuple[Any, ...] = (method, route.name, getattr(route, "prefix", "") or "/", upstream, listener, mode,
                                   status)
    else:
        endKey = (method, None, None, upstream, listener, mode, status)
    ending = _endEncoded.get(endKey)
    if ending is None:
        ending = _endEncodedFor(endKey)
    pathField = _pathFields.get(path)  # type: ignore[arg-type]
    if pathField is None:
        pathField = _bounded(_pathFields, path, _spanAttribute(("url.path", path.decode("latin-1"))))  # type: ignore[union-attr]
    up = _upFields.get(bytesUp)
    if up is None:
        up = _bounded(_upFields, bytesUp, _spanAttribute(("txproxy.bytes_up", bytesUp)))
    down = _downFields.get(bytesDown)
    if down is None:
        down = _bounded(_downFields, bytesDown, _spanAttribute(("txproxy.bytes_down", bytesDown)))
    # (POSIX microseconds, as nanoseconds; never negative.)
    startNanos = int(start * 1e6 + 0.5) * 1000
    endNanos = int(end * 1e6 + 0.5) * 1000
    body = b"".join((
        _TRACE_ID, unhexlify(line[16:48]), _SPAN_ID, unhexlify(line[49:65]), ending[0],
        _TIMES(0x39, startNanos if startNanos > 0 else 0, 0x41, endNanos if endNanos > 0 else 0),
        pathField, up, down, base.block.encoded, starting, ending[1], _FLAGS_ROOT,
    ))
    n = len(body)
    # (spanField, in place, for the usual size: a two-byte length.)
    return b"".join((_T2_LD, _V2[n], body)) if 0x80 <= n < 0x4000 else spanField(body)
