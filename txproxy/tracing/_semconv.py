# -*- test-case-name: tests.test_tracing_http -*-
"""
What txproxy's spans say, in OpenTelemetry's HTTP and network semantic
conventions: the attributes set when a request, tunnel or relayed
connection starts and when it ends.  Plain values in, a L{Span} out: the
protocols call these, so each of them has one line of tracing at each end.

Attributes (a span has those that apply):

  - at the start: C{http.request.method} (C{_OTHER} for an unknown method,
    with C{http.request.method_original}), C{url.path} (no query),
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

from typing import Any, Optional

from txproxy.tracing._span import Span, Tracer

__all__ = ["startHTTPSpan", "startStreamSpan", "endSpan", "KNOWN_METHODS"]

#: Methods named as such in C{http.request.method}; others are C{_OTHER}.
KNOWN_METHODS = frozenset(
    [b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH", b"QUERY"]
)


def _authority(value: bytes) -> "tuple[str, Optional[int]]":
    text = value.decode("latin-1")
    if text.startswith("["):
        end = text.find("]")
        host, rest = text[1:end], text[end + 1:]
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = text.partition(":")
    return host, int(port) if port.isdigit() else None


def _peer(transport: Any, span: Span) -> None:
    getPeer = getattr(transport, "getPeer", None)
    if getPeer is None:
        return
    peer = getPeer()
    host = getattr(peer, "host", None)
    if host is not None:
        attributes = span.attributes
        attributes["network.peer.address"] = host
        port = getattr(peer, "port", None)
        if port is not None:
            attributes["network.peer.port"] = port


def startHTTPSpan(tracer: Tracer, head: Any, client: Any, transport: Any, h2: bool, start: float) -> Span:
    """
    The SERVER span of one HTTP request (or C{CONNECT}), continuing the
    trace of its head's C{traceparent}.

    @param head: the L{txproxy.http.RequestHead} received.
    @param client: the L{txproxy.hooks.ClientInfo}.
    @param transport: the client connection's transport (for the peer).
    @param h2: whether the request is an HTTP/2 stream.
    @param start: POSIX seconds the head arrived.
    """
    method = head.method
    name = method.decode("latin-1") if method in KNOWN_METHODS else "HTTP"
    span = tracer.startSpan(name, head.headers, start=start)
    if not span.sampled:
        return span
    a = span.attributes
    if method in KNOWN_METHODS:
        a["http.request.method"] = name
    else:
        a["http.request.method"] = "_OTHER"
        a["http.request.method_original"] = method.decode("latin-1")
    target = head.target
    if method == b"CONNECT":
        authority: Optional[bytes] = target
    else:
        if target[:1] != b"/":
            # absolute-form (a forward proxy's request): scheme://authority/path
            rest = target.partition(b"://")[2]
            slash = rest.find(b"/")
            target = rest[slash:] if slash >= 0 else b"/"
        a["url.path"] = target.partition(b"?")[0].decode("latin-1")
        authority = head.get(b"host")
        if authority is None and head.target[:1] != b"/":
            authority = head.target.partition(b"://")[2].partition(b"/")[0]
    if authority:
        host, port = _authority(authority)
        a["server.address"] = host
        if port is not None:
            a["server.port"] = port
    a["client.address"] = client.host
    _peer(transport, span)
    a["network.protocol.version"] = "2" if h2 else head.version[5:].decode("latin-1")
    agent = head.get(b"user-agent")
    if agent:
        a["user_agent.original"] = agent.decode("latin-1")
    return span


def startStreamSpan(tracer: Tracer, mode: str, client: Any, transport: Any, start: float) -> Span:
    """
    The SERVER span of one relayed TCP connection (modes C{tcp},
    C{transparent}, C{sni}): always a new trace, sampled by
    C{--trace-sample}.
    """
    span = tracer.startSpan(mode, start=start)
    if span.sampled:
        a = span.attributes
        a["client.address"] = client.host
        if client.port:
            a["client.port"] = client.port
        _peer(transport, span)
        a["network.transport"] = "tcp"
    return span


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
    Fill the end attributes of C{span} and end it.

    @param status: the status answered (for a tunnel, its C{CONNECT}
        status; in the TCP modes, 200 for a relayed connection or the
        status of the refusal).
    @param reason: why it ended badly, as the access log says, or C{""}.
    @param route: the matched L{txproxy.router.Route}, or L{None}.
    @param http: whether C{status} is an HTTP status (a response was sent).
    """
    if span.sampled:
        a = span.attributes
        if http:
            a["http.response.status_code"] = status
        if route is not None:
            a["txproxy.route"] = route.name
            if http:
                prefix = getattr(route, "prefix", "") or "/"
                a["http.route"] = prefix
                if span.name != "CONNECT":
                    span.name = f"{span.name} {prefix}"
        if upstream:
            a["txproxy.upstream.address"] = upstream
        a["txproxy.bytes_up"] = bytesUp
        a["txproxy.bytes_down"] = bytesDown
        a["txproxy.listener"] = listener
        a["txproxy.mode"] = mode
        if status >= 500 or (reason and status >= 400):
            a["error.type"] = str(status)
            if reason:
                a["txproxy.reason"] = reason
            if status >= 500:
                span.setError(reason or f"status {status}")
        elif reason:
            a["txproxy.reason"] = reason
    tracer.endSpan(span, end)
