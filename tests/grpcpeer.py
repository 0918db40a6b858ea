"""
A gRPC server or client (grpcio) for the end-to-end tests in
L{tests.test_integration_grpc}, run as a subprocess under a CPython that
has grpcio (PyPy has no grpcio: the proxy under test may run on PyPy, its
peers don't need to).

No generated code: the methods carry raw bytes (no serializers).

    python tests/grpcpeer.py server PORT [CERT KEY]   # prints "ready PORT" once serving (PORT 0: any)
    python tests/grpcpeer.py client TARGET [CA NAME]  # runs every call, prints one JSON line

Service C{test.Echo}:
  - C{Unary}: returns the request reversed;
  - C{ServerStream}: the request is a number N; streams N messages C{b"item-<i>"};
  - C{ClientStream}: returns the messages joined with C{b","};
  - C{Bidi}: answers each message with C{b"echo:" + message};
  - C{Fail}: aborts with C{NOT_FOUND} and the details C{"no such thing"};
  - C{Slow}: sleeps 5 seconds (the client's deadline is 1 second); the
    server writes C{cancelled} to stderr when the call is cancelled.
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
from concurrent import futures
from typing import Any, Dict, Iterator, Optional

import grpc

SERVICE = "test.Echo"


def _server(port: int, cert: str = "", key: str = "") -> None:
    def unary(request: bytes, context: Any) -> bytes:
        return request[::-1]

    def serverStream(request: bytes, context: Any) -> Iterator[bytes]:
        for i in range(int(request)):
            yield b"item-%d" % i

    def clientStream(requests: Iterator[bytes], context: Any) -> bytes:
        return b",".join(requests)

    def bidi(requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
        for message in requests:
            yield b"echo:" + message

    def fail(request: bytes, context: Any) -> bytes:
        context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
        return b""

    def slow(request: bytes, context: Any) -> bytes:
        done = threading.Event()

        def cancelled() -> None:
            sys.stderr.write("cancelled\n")
            sys.stderr.flush()
            done.set()

        context.add_callback(cancelled)
        done.wait(5)
        return b"late"

    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(serverStream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(clientStream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
        "Slow": grpc.unary_unary_rpc_method_handler(slow),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
    address = f"127.0.0.1:{port}"
    if cert:
        with open(cert, "rb") as c, open(key, "rb") as k:
            credentials = grpc.ssl_server_credentials([(k.read(), c.read())])
        bound = server.add_secure_port(address, credentials)
    else:
        bound = server.add_insecure_port(address)
    server.start()
    print(f"ready {bound}", flush=True)
    # Bounded: the test kills it long before.
    server.wait_for_termination(timeout=120)


def _client(target: str, ca: str = "", name: str = "") -> None:
    if ca:
        with open(ca, "rb") as f:
            credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
        options = [("grpc.ssl_target_name_override", name)] if name else []
        channel = grpc.secure_channel(target, credentials, options=options)
    else:
        channel = grpc.insecure_channel(target)
    result: Dict[str, Any] = {}
    with channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        unary = channel.unary_unary(f"/{SERVICE}/Unary")
        result["unary"] = unary(b"hello grpc", timeout=10).decode()
        result["unaryLarge"] = len(unary(b"x" * 300000, timeout=10))
        stream = channel.unary_stream(f"/{SERVICE}/ServerStream")
        result["serverStream"] = [m.decode() for m in stream(b"5", timeout=10)]
        clientStream = channel.stream_unary(f"/{SERVICE}/ClientStream")
        result["clientStream"] = clientStream(iter([b"a", b"b", b"c"]), timeout=10).decode()
        bidi = channel.stream_stream(f"/{SERVICE}/Bidi")
        result["bidi"] = [m.decode() for m in bidi(iter([b"1", b"2", b"3"]), timeout=10)]
        # Ping-pong: each message waits for the answer to the one before,
        # so a proxy that held a message back (buffering a body whole)
        # would stall the call until its deadline.
        outbox: "queue.Queue[Optional[bytes]]" = queue.Queue()

        def messages() -> Iterator[bytes]:
            while True:
                message = outbox.get(timeout=10)
                if message is None:
                    return
                yield message

        call = bidi(messages(), timeout=10)
        pingPong = []
        for i in range(3):
            outbox.put(b"ping-%d" % i)
            pingPong.append(next(call).decode())
        outbox.put(None)
        pingPong.extend(m.decode() for m in call)
        result["pingPong"] = pingPong
        try:
            channel.unary_unary(f"/{SERVICE}/Fail")(b"", timeout=10)
            result["fail"] = "no error"
        except grpc.RpcError as e:
            result["fail"] = [e.code().name, e.details()]
        started = time.monotonic()
        try:
            channel.unary_unary(f"/{SERVICE}/Slow")(b"", timeout=1.0)
            result["slow"] = "no error"
        except grpc.RpcError as e:
            result["slow"] = [e.code().name, round(time.monotonic() - started, 2)]
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        _server(int(sys.argv[2]), *sys.argv[3:5])
    else:
        _client(sys.argv[2], *sys.argv[3:5])
