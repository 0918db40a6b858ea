# -*- test-case-name: tests.test_integration_h2_upstream -*-
"""
A tiny HTTP/2 origin server for integration tests, written with Twisted and
C{h2}: C{python -m tests.h2origin PORT [CERT.pem]} (prior knowledge, or TLS
with ALPN C{h2} when a PEM with key and chain is given).

Each stream is answered once its request has ended, with a JSON body
naming the method, path, request headers, body length and body sha256,
and C{x-conn} (this connection's number).  A request with C{x-size: N}
gets N bytes of body instead (its sha256 in C{x-sha256}); C{x-trailers:
1} asks for trailers (C{grpc-status: 0}, C{x-body-sha256}).  Response
bodies are sent as the flow-control windows allow.  It prints
C{listening} once ready, and the number of connections so far on each
new one (C{connections N}).
"""

from __future__ import annotations

import hashlib
import json
import sys
from typing import Any, Dict, List

import h2.events
from h2.config import H2Configuration
from h2.connection import H2Connection
from twisted.internet import reactor, ssl
from twisted.internet.protocol import Factory, Protocol

_connections = [0]


class _Stream:
    def __init__(self, headers: List[Any]) -> None:
        self.headers = headers
        self.body = hashlib.sha256()
        self.length = 0
        self.out = b""
        self.trailers: Any = None


class H2Origin(Protocol):
    def connectionMade(self) -> None:
        _connections[0] += 1
        self.number = _connections[0]
        print(f"connections {self.number}", flush=True)
        self.h2 = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        self.h2.initiate_connection()
        self.streams: Dict[int, _Stream] = {}
        self.transport.write(self.h2.data_to_send())  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except Exception as e:  # a broken client: say so, close
            print(f"protocol error {e!r}", flush=True)
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                self.streams[event.stream_id] = _Stream(event.headers)
            elif isinstance(event, h2.events.DataReceived):
                s = self.streams.get(event.stream_id)
                if s is not None:
                    s.body.update(event.data)
                    s.length += len(event.data)
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                self._answer(event.stream_id)
            elif isinstance(event, h2.events.WindowUpdated):
                for sid in list(self.streams):
                    self._send(sid)
            elif isinstance(event, h2.events.StreamReset):
                self.streams.pop(event.stream_id, None)
        self.transport.write(self.h2.data_to_send())  # type: ignore[union-attr]

    def _answer(self, sid: int) -> None:
        s = self.streams[sid]
        fields = {k.decode(): v.decode() for k, v in s.headers}
        size = int(fields.get("x-size", "-1"))
        if size >= 0:
            body = (b"0123456789abcdef" * (size // 16 + 1))[:size]
            extra = [(b"x-sha256", hashlib.sha256(body).hexdigest().encode())]
        else:
            body = json.dumps({
                "method": fields.get(":method"), "path": fields.get(":path"), "scheme": fields.get(":scheme"),
                "authority": fields.get(":authority"), "headers": [[k.decode(), v.decode()] for k, v in s.headers],
                "length": s.length, "sha256": s.body.hexdigest(),
            }).encode()
            extra = []
        headers = [(b":status", b"200"), (b"x-conn", str(self.number).encode())] + extra
        if fields.get("x-trailers") == "1":
            s.trailers = [(b"grpc-status", b"0"), (b"x-body-sha256", s.body.hexdigest().encode())]
        else:
            headers.append((b"content-length", str(len(body)).encode()))
        self.h2.send_headers(sid, headers, end_stream=not body and s.trailers is None)
        s.out = body
        self._send(sid)

    def _send(self, sid: int) -> None:
        s = self.streams.get(sid)
        if s is None or (not s.out and s.trailers is None) or s.headers is None:
            return
        if sid not in self.h2.streams or self.h2.streams[sid].closed:
            self.streams.pop(sid, None)
            return
        while s.out:
            n = min(self.h2.local_flow_control_window(sid), self.h2.max_outbound_frame_size, len(s.out))
            if n <= 0:
                return
            piece, s.out = s.out[:n], s.out[n:]
            self.h2.send_data(sid, piece, end_stream=not s.out and s.trailers is None)
        if s.trailers is not None:
            self.h2.send_headers(sid, s.trailers, end_stream=True)
        self.streams.pop(sid, None)


def main(argv: List[str]) -> None:
    port = int(argv[1])
    factory = Factory.forProtocol(H2Origin)
    if len(argv) > 2:
        with open(argv[2], "rb") as f:
            pem = f.read()
        cert = ssl.PrivateCertificate.loadPEM(pem)
        options = ssl.CertificateOptions(privateKey=cert.privateKey.original, certificate=cert.original,
                                         acceptableProtocols=[b"h2"])
        reactor.listenSSL(port, factory, options, interface="127.0.0.1")  # type: ignore[attr-defined]
    else:
        reactor.listenTCP(port, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
    print("listening", flush=True)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main(sys.argv)
