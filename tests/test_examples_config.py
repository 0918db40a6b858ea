# -*- test-case-name: tests.test_examples_config -*-
"""
The example configurations in C{examples/config/} as shipped: their
command lines and their listeners, and every file started with a real
C{twistd} with one request through each of its listeners
(L{ExamplesRunTests}, L{TransparentExampleRunTests}).
"""

from __future__ import annotations

import base64
import copy
import glob
import hashlib
import ipaddress
import json
import os
import re
import shutil
import socket
import ssl
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import urlsplit, urlunsplit

from twisted.trial.unittest import SynchronousTestCase

from txproxy.config import fromFlags

from . import test_transparent_netns as _netns
from .procs import REPO, TestCA, ThreadedServer, Twistd, echoHandler, freePort, recvAll, waitForPort
from .redisserver import RedisServer
from .test_integration_transparent import _NamespacedTwistd

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

CONFIGS = sorted(glob.glob(os.path.join(REPO, "examples", "config", "*.toml")))


def _port(description: str) -> "tuple[str, int, str]":
    """
    C{(kind, port, interface)} of a C{tcp:}/C{tcp6:}/C{ssl:} endpoint string.
    """
    parts = re.split(r"(?<!\\):", description.split("haproxy:", 1)[-1])
    kind = parts[0]
    port = int(parts[1]) if parts[1].isdigit() else int(dict(p.split("=", 1) for p in parts[1:] if "=" in p)["port"])
    interface = dict(p.split("=", 1) for p in parts[2:] if "=" in p).get("interface", "").replace("\\:", ":")
    return kind, port, interface


class ExampleConfigTests(SynchronousTestCase):
    def test_everyExampleLoads(self) -> None:
        """
        Every example configuration loads.
        """
        self.assertGreaterEqual(len(CONFIGS), 7)
        for path in CONFIGS:
            self.assertTrue(fromFlags([], [], path).listeners, path)

    def test_commandLinesHavePidfile(self) -> None:
        """
        Each example's comment shows a command line with C{--pidfile=}, so
        it can be run beside another twistd in the same folder.
        """
        for path in CONFIGS:
            with open(path) as f:
                lines = [line for line in f if "twistd" in line and line.startswith("#")]
            self.assertTrue(lines, path)
            for line in lines:
                self.assertIn("--pidfile=", line, path)

    def test_noListenersCollideOnDualStack(self) -> None:
        """
        No example listens with an IPv4 socket on a port where an IPv6
        socket on C{::} already takes IPv4 clients (on a dual-stack host
        the second bind fails with "Address already in use").
        """
        dualStack = socket.has_ipv6
        for path in CONFIGS:
            seen: "dict[int, list[tuple[str, str]]]" = {}
            for listener in fromFlags([], [], path).listeners:
                for description in listener.listen:
                    if description.split("haproxy:", 1)[-1].split(":", 1)[0] not in ("tcp", "tcp6", "ssl"):
                        continue
                    kind, port, interface = _port(description)
                    seen.setdefault(port, []).append((kind, interface))
            for port, binds in seen.items():
                wildcard6 = any(k == "tcp6" and i in ("::", "") for k, i in binds)
                v4 = [b for b in binds if b[0] != "tcp6"]
                if dualStack:
                    self.assertFalse(wildcard6 and v4, f"{os.path.basename(path)}: port {port}: {binds}")
                self.assertEqual(len(binds), len(set(binds)), f"{os.path.basename(path)}: port {port}")


# ---------------------------------------------------------------------------
# Every example started with a real twistd, one request through each listener.
# ---------------------------------------------------------------------------

_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"

#: Keys whose values name files or folders (process, listener and route
#: keys, and keyword arguments of endpoint strings).
_PATH_KEYS = ("access_log", "auth", "certs", "client_ca", "upstream_ca", "ca_bundle")
_ENDPOINT_PATH_ARGS = ("privateKey", "certKey", "extraCertChain", "caCertsDir", "dhParameters")


def _hostSupportsIPv6Loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        s = socket.socket(socket.AF_INET6)
    except OSError:
        return False
    try:
        s.bind(("::1", 0))
        return True
    except OSError:
        return False
    finally:
        s.close()


def _tomlValue(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_tomlValue(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_tomlValue(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML for {value!r}")


def _isTableArray(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def dumpTOML(data: Dict[str, Any], path: Tuple[str, ...] = ()) -> str:
    """
    The TOML text of C{data}, for the subset the examples use: scalars,
    arrays (of scalars and inline tables), tables and arrays of tables.
    """
    lines = []
    nested = []
    for key, value in data.items():
        if isinstance(value, dict) or _isTableArray(value):
            nested.append((key, value))
        else:
            lines.append(f"{key} = {_tomlValue(value)}")
    for key, value in nested:
        sub = path + (key,)
        if isinstance(value, dict):
            lines.append(f"\n[{'.'.join(sub)}]")
            lines.append(dumpTOML(value, sub))
        else:
            for item in value:
                lines.append(f"\n[[{'.'.join(sub)}]]")
                lines.append(dumpTOML(item, sub))
    return "\n".join(lines) + ("\n" if not path else "")


def _splitEndpoint(description: str) -> "tuple[str, List[str], Dict[str, str]]":
    """
    C{(kind, positional arguments, keyword arguments)} of an endpoint
    string (escapes kept).
    """
    parts = re.split(r"(?<!\\):", description)
    positional = [p for p in parts[1:] if "=" not in p]
    keywords = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
    return parts[0], positional, keywords


def _joinEndpoint(kind: str, positional: List[str], keywords: Dict[str, str]) -> str:
    return ":".join([kind, *positional, *(f"{k}={v}" for k, v in keywords.items())])


def _readProxyHeader(conn: socket.socket) -> str:
    """
    Read a PROXY protocol header off C{conn} if one starts it; return its
    version (C{"v1"}, C{"v2"}) or C{"none"}.
    """
    conn.settimeout(10)
    deadline = time.monotonic() + 10
    peek = b""
    while time.monotonic() < deadline:
        peek = conn.recv(len(_V2_SIGNATURE), socket.MSG_PEEK)
        if not peek:
            return "none"
        if not (b"PROXY "[: len(peek)] == peek[:6] or _V2_SIGNATURE[: len(peek)] == peek):
            return "none"
        if peek.startswith(b"PROXY ") or peek == _V2_SIGNATURE:
            break
        time.sleep(0.005)  # a header's first bytes arrived alone: wait for the rest
    if peek.startswith(b"PROXY "):
        line = b""
        while not line.endswith(b"\r\n"):
            line += conn.recv(1)
        return "v1"
    fixed = b""
    while len(fixed) < 16:
        fixed += conn.recv(16 - len(fixed))
    left = int.from_bytes(fixed[14:16], "big")
    while left:
        left -= len(conn.recv(left))
    return "v2"


def _serveHTTP(conn: socket.socket, name: str) -> None:
    """
    Answer each request on C{conn} with C{200} and the body
    C{"NAME METHOD PATH"}, until the peer closes.
    """
    buf = b""
    while True:
        while b"\r\n\r\n" not in buf:
            data = conn.recv(65536)
            if not data:
                return
            buf += data
        head, _, buf = buf.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        method, target = lines[0].split(b" ")[:2]
        length = 0
        close = False
        for line in lines[1:]:
            field, _, value = line.partition(b":")
            if field.strip().lower() == b"content-length":
                length = int(value)
            if field.strip().lower() == b"connection" and value.strip().lower() == b"close":
                close = True
        while len(buf) < length:
            data = conn.recv(65536)
            if not data:
                return
            buf += data
        buf = buf[length:]
        body = f"{name} {method.decode()} {target.decode()}".encode()
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        if close:
            return


class Backend:
    """
    A loopback server standing in for one upstream of an example: reads a
    PROXY header if one comes, then (TLS if C{tls}) answers HTTP requests or
    echoes bytes.

    @ivar headers: the PROXY header version of each connection, in order.
    """

    def __init__(self, name: str, kind: str, expectedProxy: str = "none", tls: Optional[ssl.SSLContext] = None) -> None:
        self.name = name
        self.kind = kind
        self.expectedProxy = expectedProxy
        self.tls = tls
        self.headers: List[str] = []
        self.server = ThreadedServer(self._handle)
        self.port = self.server.port

    def _handle(self, conn: socket.socket) -> None:
        self.headers.append(_readProxyHeader(conn))
        if self.tls is not None:
            conn = self.tls.wrap_socket(conn, server_side=True)
        try:
            if self.kind == "echo":
                echoHandler(conn)
            else:
                _serveHTTP(conn, self.name)
        finally:
            # The TLS socket is a new object: close it here (on PyPy nothing
            # closes an unreferenced socket promptly, and the client would
            # wait for the end of the response until its timeout).
            conn.close()


def _response(sock: socket.socket) -> Tuple[int, bytes]:
    """
    Status and body of the response to a C{Connection: close} request.
    """
    data = recvAll(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    if b"\r\ntransfer-encoding: chunked" in head.lower():
        decoded = b""
        while body:
            size, _, body = body.partition(b"\r\n")
            n = int(size.split(b";")[0], 16)
            if n == 0:
                break
            decoded, body = decoded + body[:n], body[n + 2 :]
        body = decoded
    return status, body


class ExampleRun:
    """
    One example configuration rewritten into a temporary folder: its
    listeners on free loopback ports (C{::1} for C{tcp6} when the host has
    it), its admin endpoints likewise, its upstreams on loopback
    L{Backend}s, its files (certificates made by L{TestCA}, password file,
    CA bundle, access log) in the folder, Redis on a test server; the
    loopback client addresses added to C{allow} lists and the C{deny_dest}
    entries that cover the loopback backends dropped (not in a network
    namespace, where neither is needed); everything else as shipped.
    """

    #: The user and password written to the example's password file.
    user, password = "tester", "example-secret"

    def __init__(self, path: str, ca: TestCA, redis: Optional[RedisServer], namespaced: bool = False) -> None:
        with open(path, "rb") as f:
            self.original = tomllib.load(f)
        self.name = os.path.splitext(os.path.basename(path))[0]
        self.dir = tempfile.mkdtemp(prefix=f"txproxy-example-{self.name}-")
        self.ca = ca
        self.redis = redis
        self.namespaced = namespaced
        self.ipv6 = _hostSupportsIPv6Loopback()
        self.backends: Dict[str, List[Backend]] = {}  # listener name -> its backends
        #: listener name -> [(host, port)] it listens on
        self.addresses: Dict[str, List[Tuple[str, int]]] = {}
        self.admin: List[Tuple[str, int]] = []
        self.files: List[str] = []
        self.config = self.rewrite(copy.deepcopy(self.original))
        self.configPath = os.path.join(self.dir, os.path.basename(path))
        text = dumpTOML(self.config)
        if tomllib.loads(text) != self.config:  # the writer is only as good as this check
            raise AssertionError(f"TOML writer lost something:\n{text}")
        with open(self.configPath, "w") as f:
            f.write(text)
        self.proxy: Optional[Twistd] = None

    # -- rewriting --------------------------------------------------------

    def localPath(self, original: str) -> str:
        """
        Where the file or folder C{original} goes in the temporary folder;
        the test makes the ones it knows (see L{makeFile}).
        """
        folder = original.endswith("/")
        local = os.path.join(self.dir, os.path.basename(original.rstrip("/")))
        self.files.append(local)
        self.makeFile(local, folder)
        return local + ("/" if folder else "")

    def makeFile(self, local: str, folder: bool) -> None:
        base = os.path.basename(local)
        if folder:  # a --certs folder: one certificate, as in "A test certificate"
            os.makedirs(local, exist_ok=True)
            shutil.copy(self.ca.issue(["www.example.com", "example.com"], "www.example.com.pem"),
                        os.path.join(local, "www.example.com.pem"))
        elif base == "htpasswd":
            digest = base64.b64encode(hashlib.sha1(self.password.encode()).digest()).decode()
            with open(local, "w") as f:
                f.write(f"{self.user}:{{SHA}}{digest}\n")
        elif base.endswith("ca.pem"):
            shutil.copy(self.ca.caPath, local)
        elif base.endswith(".pem"):  # a listener's default certificate
            shutil.copy(self.ca.issue(["localhost", "127.0.0.1"], base), local)
        # access logs and anything else: the proxy writes them

    def listenEndpoint(self, listener: str, description: str) -> str:
        wrapped = description.startswith("haproxy:")
        kind, positional, keywords = _splitEndpoint(description.split("haproxy:", 1)[-1])
        if kind not in ("tcp", "tcp6", "ssl"):
            raise AssertionError(f"{self.name}: the test does not know how to rewrite {description!r}")
        host = "::1" if kind == "tcp6" and self.ipv6 else "127.0.0.1"
        if kind == "tcp6" and not self.ipv6:
            kind = "tcp"
        port = freePort(host)
        keywords.pop("port", None)
        keywords.pop("interface", None)
        for key in _ENDPOINT_PATH_ARGS:
            if key in keywords:
                keywords[key] = self.localPath(keywords[key])
        keywords = {"interface": host.replace(":", "\\:"), **keywords}
        self.addresses.setdefault(listener, []).append((host, port))
        return ("haproxy:" if wrapped else "") + _joinEndpoint(kind, [str(port)], keywords)

    def backend(self, listener: str, route: int, index: int, kind: str, proxy: str, tls: bool) -> Backend:
        context = None
        if tls:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(self.ca.issue(["mail.example.com", "*.example.com", "api.internal", "127.0.0.1"], f"b-{listener}.pem"))
        b = Backend(f"{listener}/{route}/{index}", kind, proxy, context)
        self.backends.setdefault(listener, []).append(b)
        return b

    def upstreamEndpoint(self, description: str, backend: Backend) -> str:
        kind, positional, keywords = _splitEndpoint(description)
        if positional:
            positional = ["127.0.0.1", str(backend.port)]
        else:
            keywords.update(host="127.0.0.1", port=str(backend.port))
        return _joinEndpoint(kind, positional, keywords)

    def upstreamURL(self, url: str, backend: Backend) -> str:
        parts = urlsplit(url)
        return urlunsplit((parts.scheme, f"127.0.0.1:{backend.port}", parts.path, parts.query, parts.fragment))

    def rewrite(self, config: Dict[str, Any]) -> Dict[str, Any]:
        if "admin" in config:
            admins = []
            for description in (config["admin"] if isinstance(config["admin"], list) else [config["admin"]]):
                kind, positional, keywords = _splitEndpoint(description)
                port = freePort()
                self.admin.append(("127.0.0.1", port))
                admins.append(f"tcp:{port}:interface=127.0.0.1")
            config["admin"] = admins if isinstance(config["admin"], list) else admins[0]
        if "redis" in config:
            assert self.redis is not None, f"{self.name} names Redis"
            config["redis"] = self.redis.url
        for key in _PATH_KEYS:
            if key in config and config[key] != "-":
                config[key] = self.localPath(config[key])
        clients = ["127.0.0.1/32", "::1/128"] if self.ipv6 else ["127.0.0.1/32"]
        for listener in config["listeners"]:
            name = listener["name"]
            mode = listener.get("mode", "forward")
            listen = listener["listen"]
            listener["listen"] = [self.listenEndpoint(name, d) for d in (listen if isinstance(listen, list) else [listen])]
            for key in _PATH_KEYS:
                if key in listener:
                    listener[key] = self.localPath(listener[key])
            if "allow" in listener and not self.namespaced:
                # The test's clients are on loopback; the shipped networks stay.
                listener["allow"] = list(listener["allow"]) + clients
            if "deny_dest" in listener and not self.namespaced:
                # The test's backends are on 127.0.0.1: keep the other entries.
                listener["deny_dest"] = [
                    c for c in listener["deny_dest"] if ipaddress.ip_address("127.0.0.1") not in ipaddress.ip_network(c)
                ]
            if mode == "tcp":
                ups = listener["upstreams"]
                rewritten = []
                for i, item in enumerate(ups if isinstance(ups, list) else [ups]):
                    isTable = isinstance(item, dict)
                    description = item["endpoint"] if isTable else item
                    proxy = (item.get("proxy_protocol_send") if isTable else None) or listener.get("proxy_protocol_send", "none")
                    b = self.backend(name, 0, i, "echo", proxy, False)
                    new = self.upstreamEndpoint(description, b)
                    rewritten.append(dict(item, endpoint=new) if isTable else new)
                listener["upstreams"] = rewritten
            for r, route in enumerate(listener.get("routes", [])):
                for key in _PATH_KEYS:
                    if key in route:
                        route[key] = self.localPath(route[key])
                ups = route["upstreams"]
                rewritten = []
                for i, item in enumerate(ups if isinstance(ups, list) else [ups]):
                    isTable = isinstance(item, dict)
                    url = item["url"] if isTable else item
                    proxy = (
                        (item.get("proxy_protocol_send") if isTable else None)
                        or route.get("proxy_protocol_send")
                        or listener.get("proxy_protocol_send", "none")
                    )
                    scheme = urlsplit(url).scheme
                    b = self.backend(name, r, i, "http", proxy, tls=(scheme == "https" or mode == "sni"))
                    new = self.upstreamURL(url, b)
                    rewritten.append(dict(item, url=new) if isTable else new)
                route["upstreams"] = rewritten
        return config

    # -- running ----------------------------------------------------------

    def start(self) -> Twistd:
        self.proxy = Twistd(["--config", self.configPath], cwd=self.dir).start(wait=False)
        for addresses in [*self.addresses.values(), self.admin]:
            for host, port in addresses:
                waitForPort(port, host=host, timeout=30, proc=self.proxy.proc)
        return self.proxy

    def stop(self) -> int:
        assert self.proxy is not None
        return self.proxy.stop()

    def cleanup(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
        for backends in self.backends.values():
            for b in backends:
                b.server.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _literal(host: str) -> bool:
    return "*" not in host


class ExamplesRunTests(SynchronousTestCase):
    """
    Every file in C{examples/config/} (but C{transparent.toml}, see
    L{TransparentExampleRunTests}) started with a real C{twistd}, rewritten
    only where the test's machine differs from the one the file describes
    (see L{ExampleRun}); one request or one TCP exchange through each of
    its listeners reaches the right loopback backend and comes back, and
    C{SIGTERM} ends the process with exit status 0.
    """

    def run_(self, name: str, redis: bool = False) -> ExampleRun:
        path = os.path.join(REPO, "examples", "config", name + ".toml")
        ca = TestCA()
        self.addCleanup(shutil.rmtree, ca.dir, True)
        server = None
        if redis:
            server = RedisServer().start()
            self.addCleanup(server.cleanup)
        run = ExampleRun(path, ca, server)
        self.addCleanup(run.cleanup)
        try:
            run.start()
            for listener in run.config["listeners"]:
                self.exchange(run, listener)
        except BaseException:
            if run.proxy is not None:
                run.proxy.stop()
                # What the proxy saw, for the failure report.
                print(f"--- {name}: config\n{open(run.configPath).read()}\n"
                      f"--- stdout\n{run.proxy.stdout()}\n--- stderr\n{run.proxy.stderr()}")
            raise
        assert run.proxy is not None
        self.assertEqual(run.stop(), 0, run.proxy.stderr())
        for backends in run.backends.values():
            for b in backends:
                self.assertEqual(set(b.headers) | {b.expectedProxy}, {b.expectedProxy}, (b.name, b.headers))
        return run

    def connect(self, run: ExampleRun, listener: Dict[str, Any], serverName: Optional[str] = None) -> socket.socket:
        host, port = run.addresses[listener["name"]][0]
        sock = socket.create_connection((host, port), timeout=10)
        if serverName is not None:
            context = ssl.create_default_context(cafile=run.ca.caPath)
            sock = context.wrap_socket(sock, server_hostname=serverName)
        return sock

    def request(self, sock: socket.socket, target: str, host: str, extra: str = "") -> Tuple[int, bytes]:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n".encode())
        try:
            return _response(sock)
        finally:
            sock.close()

    def exchange(self, run: ExampleRun, listener: Dict[str, Any]) -> None:
        name = listener["name"]
        mode = listener.get("mode", "forward")
        tls = any(d.split("haproxy:", 1)[-1].startswith("ssl:") for d in listener["listen"]) or "certs" in listener
        if mode == "forward":
            origin = Backend(f"{name}-origin", "http")
            self.addCleanup(origin.server.stop)
            extra = ""
            if "auth" in listener:
                creds = base64.b64encode(f"{run.user}:{run.password}".encode()).decode()
                extra = f"Proxy-Authorization: Basic {creds}\r\n"
            authority = f"127.0.0.1:{origin.port}"
            status, body = self.request(self.connect(run, listener), f"http://{authority}/via/{name}", authority, extra)
            self.assertEqual((status, body), (200, f"{name}-origin GET /via/{name}".encode()), name)
        elif mode == "tcp":
            sock = self.connect(run, listener)
            message = f"one exchange through {run.name}/{name}\n".encode()
            sock.sendall(message)
            sock.shutdown(socket.SHUT_WR)
            self.assertEqual(recvAll(sock), message, name)
            sock.close()
        elif mode in ("reverse", "sni"):
            routes = listener["routes"]
            for r, route in enumerate(routes):
                host = route["host"]
                if not _literal(host):
                    continue
                prefix = route.get("prefix", "")
                path = f"{prefix}via/{name}" if prefix else f"/via/{name}"
                sent = "/" + path[len(prefix):] if route.get("strip_prefix") else path
                sock = self.connect(run, listener, host if (tls or mode == "sni") else None)
                status, body = self.request(sock, path, host)
                answers = {f"{name}/{r}/{i} GET {sent}".encode() for i in range(len(route["upstreams"]))}
                self.assertEqual(status, 200, (name, host, path, body))
                self.assertIn(body, answers, (name, host, path))
        else:
            self.fail(f"{run.name}: no request for mode {mode}")

    def test_forward(self) -> None:
        """
        C{forward.toml}: an absolute-URI request through the forward proxy.
        """
        self.run_("forward")

    def test_full(self) -> None:
        """
        C{full.toml}: every listener (authenticated forward proxy on IPv6
        loopback, TCP relay sending PROXY headers as each upstream says,
        TLS-terminating reverse proxy with a verified C{https} upstream,
        SNI pass-through), with Redis.
        """
        self.run_("full", redis=True)

    def test_production(self) -> None:
        """
        C{production.toml}: two workers and Redis.
        """
        self.run_("production", redis=True)

    def test_reverse(self) -> None:
        """
        C{reverse.toml}: HTTPS requests routed by host and prefix.
        """
        self.run_("reverse")

    def test_sni(self) -> None:
        """
        C{sni.toml}: a TLS connection passed through by its server name,
        with the route's PROXY v2 header.
        """
        self.run_("sni")

    def test_tcp(self) -> None:
        """
        C{tcp.toml}: one echoed exchange through the TCP relay.
        """
        self.run_("tcp")

    def test_everyExampleHasATest(self) -> None:
        """
        Each file in C{examples/config/} is started by one of these tests.
        """
        tested = {n[len("test_"):] for n in dir(self) if n.startswith("test_")} | {"transparent"}
        for path in CONFIGS:
            self.assertIn(os.path.splitext(os.path.basename(path))[0], tested)


class TransparentExampleRunTests(SynchronousTestCase):
    """
    C{transparent.toml} started with a real C{twistd} inside a network
    namespace (the set-up of L{tests.test_transparent_netns}: the host's
    own network is never touched), with the C{iptables} rule its comment
    shows: a client on C{10.8.0.0/16} connecting to a server's port 80 is
    redirected to the proxy, which relays it to that server.
    """

    # The namespace set-up and helpers of the origdst tests, reused as is
    # (through the module, so that trial does not collect its tests here).
    setUp = _netns.TransparentNetnsTests.setUp
    hostState = _netns.TransparentNetnsTests.hostState
    checkHostUnchanged = _netns.TransparentNetnsTests.checkHostUnchanged
    inServer = _netns.TransparentNetnsTests.inServer
    startEcho = _netns.TransparentNetnsTests.startEcho

    client: str
    server: str
    clientIf: str

    def shownRule(self, path: str) -> List[str]:
        """
        The C{iptables} command the example's comment shows, as arguments.
        """
        with open(path) as f:
            comment = [line[1:].strip() for line in f if line.startswith("#")]
        text = " ".join(comment).replace("\\ ", "")
        match = re.search(r"\biptables (-t .*?--to-ports \d+)", text)
        self.assertIsNotNone(match, "no iptables command in the comment")
        assert match is not None
        return match.group(1).split()

    def echoOn(self, host: str, port: int) -> None:
        """
        An echo server on C{host:port} in the server namespace.
        """

        def make() -> socket.socket:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, port))
            sock.listen(8)
            return sock

        listener = _netns.inNamespace(self.server, make)

        def serve() -> None:
            while True:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                with conn:
                    conn.settimeout(10)
                    try:
                        echoHandler(conn)
                    except OSError:
                        pass

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()

        def stop() -> None:
            listener.shutdown(socket.SHUT_RDWR)
            listener.close()
            thread.join(10)

        self.addCleanup(stop)

    def test_transparent(self) -> None:
        """
        C{transparent.toml}: a redirected connection from the allowed
        network reaches its original destination and back, the access log
        (standard output) names that destination, and C{SIGTERM} ends the
        process with exit status 0.
        """
        path = os.path.join(REPO, "examples", "config", "transparent.toml")
        run = ExampleRun(path, TestCA(), None, namespaced=True)
        self.addCleanup(run.cleanup)
        self.addCleanup(shutil.rmtree, run.ca.dir, True)
        self.assertEqual(run.config["listeners"][0]["allow"], run.original["listeners"][0]["allow"])
        [(_, port)] = run.addresses[run.config["listeners"][0]["name"]]

        rule = self.shownRule(path)
        self.assertEqual(rule[:4], ["-t", "nat", "-A", "PREROUTING"])
        # The test's client is a local process of the proxy's namespace, so
        # the rule goes in OUTPUT; the rest is as shown, but the port.
        rule[3] = "OUTPUT"
        rule[-1] = str(port)
        source = rule[rule.index("-s") + 1]
        clientAddress = str(next(ipaddress.ip_network(source).hosts()))
        dports = rule[rule.index("--dports") + 1].split(",")
        _netns._run("ip", "-n", self.client, "addr", "add", clientAddress + "/" + source.split("/")[1], "dev", self.clientIf)
        _netns._run("ip", "netns", "exec", self.client, "iptables", *rule)
        self.echoOn(_netns._SERVER4, int(dports[0]))

        proxy = _NamespacedTwistd(self.client, ["--config", run.configPath])
        run.proxy = proxy
        try:
            proxy.start()
        except RuntimeError:
            self.fail(f"{proxy.stdout()}\n{proxy.stderr()}")

        def talk() -> bytes:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.settimeout(10)
            try:
                sock.bind((clientAddress, 0))
                sock.connect((_netns._SERVER4, int(dports[0])))
                sock.sendall(b"redirected by the example's rule\n")
                sock.shutdown(socket.SHUT_WR)
                return recvAll(sock)
            finally:
                sock.close()

        self.assertEqual(_netns.inNamespace(self.client, talk), b"redirected by the example's rule\n",
                         proxy.stdout() + proxy.stderr())
        def records() -> List[Dict[str, Any]]:
            return [json.loads(line) for line in proxy.stdout().splitlines() if line.startswith("{")]

        deadline = time.monotonic() + 10
        while not records() and time.monotonic() < deadline:
            time.sleep(0.05)
        [record] = records()
        self.assertEqual(
            (record["mode"], record["status"], record["client"], record["target"]),
            ("transparent", 200, clientAddress, f"{_netns._SERVER4}:{dports[0]}"),
        )
        self.assertEqual(proxy.stop(), 0, proxy.stderr())
