# -*- test-case-name: tests.test_integration_grpc -*-
"""
gRPC end to end: a grpcio client, a real C{twistd txproxy} reverse proxy,
a grpcio server; on an C{h2c://} route behind a cleartext listener and on
an C{h2://} route behind a TLS listener.  Unary, server-streaming,
client-streaming, bidirectional (all at once and ping-pong) calls, an
error status with its details, and a client deadline that cancels the
call at the server through the proxy.

The grpcio peers run under a CPython that has grpcio (L{grpcPython}):
the proxy runs on whatever interpreter runs the tests (PyPy too).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

from twisted.trial.unittest import SynchronousTestCase

from tests.procs import REPO, TestCA, Twistd, freePort

PEER = os.path.join(REPO, "tests", "grpcpeer.py")


def grpcPython() -> str:
    """
    A Python with grpcio: C{TXPROXY_GRPC_PYTHON}, else this one if it has
    grpcio, else the CPython venv that scripts/test makes (C{.venv}).
    """
    explicit = os.environ.get("TXPROXY_GRPC_PYTHON")
    if explicit:
        return explicit
    try:
        import grpc  # noqa: F401
    except ImportError:
        return os.path.join(REPO, ".venv", "bin", "python")
    return sys.executable


def peerEnvironment() -> Dict[str, str]:
    """
    The environment of a grpcio peer: this one without C{PYTHONPATH} and
    C{PYTHONHOME}, which may name this interpreter's library (trial's
    C{-j} workers get C{PYTHONPATH} from their parent's C{sys.path}: PyPy's
    standard library would break a CPython peer).  The peer imports only
    grpcio and the standard library.
    """
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env.pop("PYTHONHOME", None)
    return env


class GRPCServer:
    def __init__(self, pem: Optional[str] = None) -> None:
        # Port 0: the server binds any free port and says which (no race
        # with other test processes for a port picked in advance).
        argv = [grpcPython(), PEER, "server", "0"]
        if pem is not None:
            argv += [pem, pem]
        self.stderr = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self.stderr, text=True,
                                     env=peerEnvironment())
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        word, _, port = line.strip().partition(" ")
        self.port = int(port) if port.isdigit() else 0
        if word != "ready" or not self.port:
            errors = self.errors()
            self.stop()
            raise RuntimeError(f"gRPC server did not start: {line!r} {errors}")

    def errors(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.stderr.close()


def runClient(target: str, ca: str = "", name: str = "") -> Dict[str, Any]:
    argv = [grpcPython(), PEER, "client", target] + ([ca, name] if ca else [])
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=peerEnvironment())
    if done.returncode != 0:
        raise AssertionError(f"gRPC client failed: {done.stderr[-2000:]}")
    result: Dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


EXPECTED: Dict[str, Any] = {
    "unary": "cprg olleh",
    "unaryLarge": 300000,
    "serverStream": [f"item-{i}" for i in range(5)],
    "clientStream": "a,b,c",
    "bidi": ["echo:1", "echo:2", "echo:3"],
    "pingPong": ["echo:ping-0", "echo:ping-1", "echo:ping-2"],
    "fail": ["NOT_FOUND", "no such thing"],
}


class GRPCEndToEndTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.ca = TestCA()
        self.addCleanup(shutil.rmtree, self.ca.dir, True)
        self.pem = self.ca.issue(["localhost", "127.0.0.1"], "server.pem")
        self.plainServer = GRPCServer()
        self.addCleanup(self.plainServer.stop)
        self.tlsServer = GRPCServer(self.pem)
        self.addCleanup(self.tlsServer.stop)
        self.port = freePort()
        self.tlsPort = freePort()
        self.accessLog = os.path.join(self.ca.dir, "access.log")
        path = os.path.join(self.ca.dir, "proxy.toml")
        with open(path, "w") as f:
            f.write(f"""\
access_log = "{self.accessLog}"
access_log_format = "json"

[[listeners]]
listen = ["tcp:{self.port}:interface=127.0.0.1"]
mode = "reverse"

  [[listeners.routes]]
  host = "*"
  upstreams = ["h2c://127.0.0.1:{self.plainServer.port}"]

[[listeners]]
listen = ["ssl:{self.tlsPort}:privateKey={self.pem}:interface=127.0.0.1"]
mode = "reverse"

  [[listeners.routes]]
  host = "*"
  upstreams = ["h2://localhost:{self.tlsServer.port}"]
  ca_bundle = "{self.ca.caPath}"
""")
        self.proxy = Twistd(["--config", path], port=self.port).start()
        self.addCleanup(self.proxy.stop)

    def records(self) -> List[Dict[str, Any]]:
        with open(self.accessLog) as f:
            return [json.loads(line) for line in f if line.strip()]

    def check(self, result: Dict[str, Any], server: GRPCServer) -> None:
        for key, value in EXPECTED.items():
            self.assertEqual(result[key], value, key)
        # The client's 1 s deadline ends the call at 1 s, and the proxy
        # carries the cancellation to the server (RST_STREAM both ways).
        code, seconds = result["slow"]
        self.assertEqual(code, "DEADLINE_EXCEEDED")
        self.assertLess(seconds, 2.0)
        deadline = time.monotonic() + 5
        while "cancelled" not in server.errors() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertIn("cancelled", server.errors())

    def test_h2cRoute(self) -> None:
        result = runClient(f"127.0.0.1:{self.port}")
        self.check(result, self.plainServer)
        records = self.records()
        self.assertTrue(records)
        self.assertTrue(all(r["version"] == "HTTP/2.0" for r in records), records)
        self.assertIn("/test.Echo/Unary", " ".join(r["target"] for r in records))

    def test_h2RouteBehindTLS(self) -> None:
        result = runClient(f"localhost:{self.tlsPort}", self.ca.caPath, "localhost")
        self.check(result, self.tlsServer)
