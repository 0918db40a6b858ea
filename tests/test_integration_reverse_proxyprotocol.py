# -*- test-case-name: tests.test_integration_reverse_proxyprotocol -*-
"""
Integration tests of C{proxy_protocol_send} in reverse mode: a real
C{twistd -n txproxy --mode reverse} in front of a real HAProxy C{accept-proxy}
frontend that answers every request with the client address the PROXY
header told it (C{src}) and the address the client reached (C{dst}).

  - plain HTTP backend, C{--proxy-protocol-send v1}: two clients from
    distinct loopback addresses, interleaving keep-alive requests, each
    see their own address on every request (a backend connection that
    carried one client's header is never lent to the other);
  - C{https://} backend with its own C{proxy_protocol_send = "v2"} in a
    config file, txproxy itself on a C{haproxy:} listener behind an HAProxy
    C{send-proxy} load balancer: the backend sees the original client's
    address, the header written in clear before the TLS handshake.

Every process is stopped by its PID; every wait is bounded.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Tuple

from twisted.trial.unittest import SynchronousTestCase

from tests.procs import TestCA, Twistd, freePort, readHead
from tests.test_integration_haproxy import _GLOBAL, CLIENT, OTHER_CLIENT, HAProxy, connectFrom

_ANSWER = 'http-request return status 200 content-type text/plain lf-string "src=%[src]:%[src_port] dst=%[dst]:%[dst_port]"'


def request(sock: socket.socket, path: str = "/") -> Tuple[int, bytes]:
    """
    One keep-alive GET on C{sock}; the status and body.
    """
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: app.test\r\n\r\n".encode())
    head, rest = readHead(sock)
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    while len(rest) < length:
        data = sock.recv(65536)
        if not data:
            break
        rest += data
    return status, rest


class ReverseSendsProxyProtocolTests(SynchronousTestCase):
    def start(self, haproxyConfig: str, haPort: int, txArgs: Any, txPort: int) -> None:
        haproxy = HAProxy(_GLOBAL + haproxyConfig, haPort)
        # waitForPort's probe has no PROXY header: HAProxy just drops it.
        haproxy.start()
        self.addCleanup(haproxy.stop)
        proxy = Twistd(txArgs, txPort).start()
        self.addCleanup(proxy.stop)
        self.proxy = proxy

    def test_v1KeepAliveClientsSeeTheirOwnAddress(self) -> None:
        """
        Two clients' keep-alive requests, interleaved, each reach the
        backend under their own address and port.
        """
        haPort = freePort()
        txPort = freePort()
        self.start(
            f"""\
frontend back
  mode http
  bind 127.0.0.1:{haPort} accept-proxy
  {_ANSWER}
""",
            haPort,
            ["--mode", "reverse", "--listen", f"tcp:{txPort}:interface=127.0.0.1",
             "--route", f"*=http://127.0.0.1:{haPort}", "--proxy-protocol-send", "v1"],
            txPort,
        )
        one = connectFrom(CLIENT, txPort)
        self.addCleanup(one.close)
        two = connectFrom(OTHER_CLIENT, txPort)
        self.addCleanup(two.close)
        for sock in (one, two, one, two, two, one):
            status, body = request(sock)
            host, port = sock.getsockname()
            self.assertEqual(status, 200, body)
            self.assertEqual(body, f"src={host}:{port} dst=127.0.0.1:{txPort}".encode())

    def test_v2ToTLSBackendBehindLoadBalancer(self) -> None:
        """
        An https backend's own C{proxy_protocol_send = "v2"} (config file),
        with txproxy on a C{haproxy:} listener behind a C{send-proxy} load
        balancer: the backend sees the original client.
        """
        ca = TestCA()
        pem = ca.issue(["127.0.0.1"], "backend.pem")
        lbPort = freePort()
        tlsPort = freePort()
        txPort = freePort()
        path = os.path.join(ca.dir, "proxy.toml")
        with open(path, "w") as f:
            f.write(f"""\
[[listeners]]
listen = ["haproxy:tcp:{txPort}:interface=127.0.0.1"]
mode = "reverse"

  [[listeners.routes]]
  host = "*"
  upstreams = [{{ url = "https://127.0.0.1:{tlsPort}", proxy_protocol_send = "v2" }}]
  ca_bundle = "{ca.caPath}"
""")
        self.start(
            f"""\
frontend lb
  mode tcp
  bind 127.0.0.1:{lbPort}
  default_backend txproxy
backend txproxy
  mode tcp
  server tx 127.0.0.1:{txPort} send-proxy
frontend back
  mode http
  bind 127.0.0.1:{tlsPort} accept-proxy ssl crt {pem}
  {_ANSWER}
""",
            lbPort,
            ["--config", path],
            txPort,
        )
        sock = connectFrom(CLIENT, lbPort)
        self.addCleanup(sock.close)
        for _ in range(2):
            status, body = request(sock)
            self.assertEqual(status, 200, body)
            self.assertEqual(body, f"src={CLIENT}:{sock.getsockname()[1]} dst=127.0.0.1:{lbPort}".encode())
