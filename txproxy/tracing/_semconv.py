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

from typing import Any, Dict, List, Optional, Tuple

from txproxy.tls import isTLSTransport
from txproxy.tracing._otlp import attributeBlock
from txproxy.tracing._span import AttributeBlock, RecordingSpan, Span, Tracer, unrecordedSpan

__all__ = ["startHTTPSpan", "startStreamSpan", "endSpan", "connectionAttributes", "KNOWN_METHODS"]

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


def startHTTPSpan(tracer: Tracer, head: Any, client: Any, transport: Any, h2: bool, start: float,
                  raw: Optional[bytes] = None, base: Optional[Dict[str, Any]] = None) -> Span:
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
    """
    # (find, not "in": bytes.__contains__ first tries its argument as an
    # int, and formats a TypeError to throw away, ~1.5k instructions.)
    scan = raw is None or raw.lower().find(b"trace") >= 0
    if not scan and tracer._quickUnsampled:
        # Sample 0, no trace fields: the span of a new trace, not recorded.
        # (The HTTP core takes only the line in this case.)
        return unrecordedSpan(tracer._line())
    span = tracer.startRequest(head.headers, start, scan)
    if not span.sampled:
        return span
    assert isinstance(span, RecordingSpan)
    if base is None:
        base = connectionAttributes(client, transport, True)
    method = head.method
    scheme = base.get("url.scheme")
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
