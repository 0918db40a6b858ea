# -*- test-case-name: tests.test_accesslog -*-
"""
Access logging: one line per request or tunnel, in Apache's combined format
or as JSON lines.
"""

from __future__ import annotations

import json
import sys
import time
from typing import IO, Any, Callable, Optional

import attr
from zope.interface import implementer

from txproxy.interfaces import IAccessLog

__all__ = ["AccessRecord", "AccessLog", "formatCombined", "formatJSON", "openAccessLog"]


@attr.s(frozen=True, slots=True, auto_attribs=True)
class AccessRecord:
    """
    What happened to one request or tunnel.

    @ivar start: wall-clock time (POSIX seconds) the request head arrived.
    @ivar duration: seconds from the head to the end of the exchange.
    @ivar bytesUp: bytes sent toward the upstream (request body or tunnel).
    @ivar bytesDown: bytes sent toward the client (response or tunnel).
    @ivar status: the status answered (for tunnels, the CONNECT status).
    @ivar upstream: the address actually dialled (C{ip:port}), or C{""}.
    @ivar reason: why it ended badly (C{"idle"}, C{"refused"}, ...), or C{""}.
    @ivar traceId: with tracing on (C{--trace-otlp}), the W3C trace id of
        its span (32 hex digits), else C{""}.
    @ivar spanId: with tracing on, its span's id (16 hex digits), else
        C{""}.
    """

    client: str
    method: str
    target: str
    status: int
    start: float
    duration: float = 0.0
    bytesUp: int = 0
    bytesDown: int = 0
    user: Optional[str] = None
    version: str = "HTTP/1.1"
    upstream: str = ""
    userAgent: str = ""
    referer: str = ""
    mode: str = "forward"
    listener: str = ""
    reason: str = ""
    traceId: str = ""
    spanId: str = ""


def formatCombined(r: AccessRecord) -> str:
    """
    Apache combined format, with the duration (seconds) and the bytes sent
    upstream appended.
    """
    when = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(r.start))
    line = f"{r.method} {r.target} {r.version}".replace('"', "%22")
    ua = (r.userAgent or "-").replace('"', "%22")
    ref = (r.referer or "-").replace('"', "%22")
    return (
        f'{r.client} - {r.user or "-"} [{when}] "{line}" {r.status} {r.bytesDown} '
        f'"{ref}" "{ua}" {r.duration:.3f} {r.bytesUp}'
    )


def formatJSON(r: AccessRecord) -> str:
    """
    One JSON object per line, with an ISO 8601 C{time} field (and, with
    tracing on, C{trace_id} and C{span_id}).
    """
    d = attr.asdict(r)
    # (With tracing on, in the names OpenTelemetry's log records use.)
    traceId, spanId = d.pop("traceId"), d.pop("spanId")
    if traceId:
        d["trace_id"] = traceId
        d["span_id"] = spanId
    d["time"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(r.start)) + f".{int((r.start % 1) * 1000):03d}Z"
    d["duration"] = round(r.duration, 6)
    return json.dumps(d, separators=(",", ":"), sort_keys=True)


@implementer(IAccessLog)
class AccessLog:
    """
    Writes records to a text stream, one line each.
    """

    def __init__(self, stream: IO[str], formatter: Callable[[AccessRecord], str] = formatCombined) -> None:
        self.stream = stream
        self.formatter = formatter

    def log(self, record: Any) -> None:
        try:
            self.stream.write(self.formatter(record) + "\n")
            self.stream.flush()
        except (OSError, ValueError):  # a full disk or closed stream must not kill a request
            pass

    def close(self) -> None:
        if self.stream not in (sys.stdout, sys.__stdout__):
            self.stream.close()


def openAccessLog(path: Optional[str], fmt: str = "combined") -> Optional[AccessLog]:
    """
    Open the access log named by C{--access-log} (C{-} for standard output).
    """
    if not path:
        return None
    formatter = formatJSON if fmt == "json" else formatCombined
    if path == "-":
        return AccessLog(sys.__stdout__, formatter)  # type: ignore[arg-type]
    return AccessLog(open(path, "a", encoding="utf-8", buffering=1), formatter)
