# -*- test-case-name: tests.test_integration_forward -*-
"""
Helpers for integration tests: a real C{twistd -n txproxy} subprocess,
free loopback ports, small blocking servers in threads, and a test
certificate authority.  Every process started here is stopped by its PID.
"""

from __future__ import annotations

import datetime
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable, List, Optional, Sequence, Set, Tuple

import txproxy

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Where the txproxy under test comes from: the checkout, or the
#: site-packages of an installed (compiled) build that scripts/test runs the
#: suite against.  Child processes must import the same one.
TXPROXY_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(txproxy.__file__)))


def childPythonPath(existing: str = "") -> str:
    """
    The C{PYTHONPATH} for a child process: the checkout (for C{tests} and
    the examples), after the installed txproxy when that is what runs here,
    then C{existing}.
    """
    parts = [REPO] if TXPROXY_ROOT == REPO else [TXPROXY_ROOT, REPO]
    return os.pathsep.join(parts + ([existing] if existing else []))


#: Where L{freePort} picks: below Linux's ephemeral range (32768-60999 by
#: default), which the kernel hands out to every outgoing connection's
#: source port and every bind to port 0, so a port picked there could be
#: taken by a client socket before the process meant to listen on it does
#: (a rare C{cannot listen} failure under C{trial -j2}).
_PORTS = range(20000, 32000)
#: Ports this process handed out already (never twice).
_given: Set[int] = set()
_random = random.Random()


def freePort(host: str = "127.0.0.1") -> int:
    """
    A TCP port nobody is listening on right now, outside the ephemeral
    range, not handed out before by this process.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(1000):
        port = _random.choice(_PORTS)
        if port in _given:
            continue
        s = socket.socket(family)
        try:
            s.bind((host, port))
        except OSError:
            continue
        finally:
            s.close()
        _given.add(port)
        return port
    raise RuntimeError(f"no free port in {_PORTS}")


def twistdPath() -> str:
    """
    The C{twistd} script beside the running interpreter.
    """
    candidate = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.path.exists(candidate):
        return candidate
    found = shutil.which("twistd")
    if not found:
        raise RuntimeError("twistd not found beside the interpreter or on PATH")
    return found


def waitForPort(port: int, host: str = "127.0.0.1", timeout: float = 15.0, proc: Optional[subprocess.Popen] = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {host}:{port} after {timeout}s")


class Twistd:
    """
    A C{twistd -n txproxy ARGS} subprocess in its own temporary folder.

    @ivar port: the proxy's first listening port (when given to L{start}).
    @ivar output: the combined stdout and stderr, once stopped.
    """

    def __init__(self, args: Sequence[str], port: Optional[int] = None, cwd: Optional[str] = None) -> None:
        self.args = list(args)
        self.port = port
        self.cwd = cwd or tempfile.mkdtemp(prefix="txproxy-test-")
        self.proc: Optional[subprocess.Popen] = None
        self.stdoutPath = os.path.join(self.cwd, "stdout.log")
        self.stderrPath = os.path.join(self.cwd, "stderr.log")

    def start(self, wait: bool = True) -> "Twistd":
        env = dict(os.environ)
        env["PYTHONPATH"] = childPythonPath(env.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen(
            [twistdPath(), "-n", "--pidfile=", "txproxy", *self.args],
            cwd=self.cwd,
            env=env,
            stdout=open(self.stdoutPath, "wb"),
            stderr=open(self.stderrPath, "wb"),
            stdin=subprocess.DEVNULL,
        )
        if wait and self.port is not None:
            waitForPort(self.port, proc=self.proc)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 30.0) -> int:
        """
        SIGTERM, wait, and SIGKILL if it does not exit in C{timeout}.
        """
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode

    def stdout(self) -> str:
        with open(self.stdoutPath, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stderr(self) -> str:
        with open(self.stderrPath, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def fdCount(self) -> int:
        """
        Open file descriptors of the proxy process.
        """
        return len(os.listdir(f"/proc/{self.pid}/fd"))


def runTxproxy(args: Sequence[str], timeout: float = 30.0) -> subprocess.CompletedProcess:
    """
    Run C{twistd -n txproxy ARGS} to completion (for start-up errors).
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = childPythonPath(env.get("PYTHONPATH", ""))
    cwd = tempfile.mkdtemp(prefix="txproxy-test-")
    return subprocess.run(
        [twistdPath(), "-n", "--pidfile=", "txproxy", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


class ThreadedServer:
    """
    A blocking TCP server on a loopback port, one thread per connection,
    running C{handler(sock)} for each.  Stopped by L{stop}.
    """

    def __init__(self, handler: Callable[[socket.socket], None], host: str = "127.0.0.1", backlog: int = 512,
                 wrap: Optional[Callable[[socket.socket], socket.socket]] = None) -> None:
        self.handler = handler
        self.wrap = wrap
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(backlog)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stopped = False
        self._conns: List[socket.socket] = []
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self._stopped:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            self._conns.append(conn)
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            if self.wrap is not None:
                conn = self.wrap(conn)
            self.handler(conn)
        except OSError:
            pass
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def stop(self) -> None:
        self._stopped = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        for c in self._conns:
            try:
                c.close()
            except OSError:
                pass


def echoHandler(conn: socket.socket) -> None:
    """
    Echo until end of input, then half-close.
    """
    while True:
        data = conn.recv(262144)
        if not data:
            break
        conn.sendall(data)
    conn.shutdown(socket.SHUT_WR)


def recvAll(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """
    Read until the peer closes (or C{timeout}).
    """
    sock.settimeout(timeout)
    chunks = []
    while True:
        data = sock.recv(65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def readHead(sock: socket.socket, timeout: float = 10.0) -> Tuple[bytes, bytes]:
    """
    Read a response head; return it and whatever followed.
    """
    sock.settimeout(timeout)
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            return buf, b""
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head + b"\r\n\r\n", rest


def connectThrough(proxyPort: int, target: str, extra: bytes = b"", timeout: float = 10.0) -> Tuple[socket.socket, int, bytes]:
    """
    Open a CONNECT tunnel through the proxy.

    @return: the socket, the status code, and bytes received past the head.
    """
    s = socket.create_connection(("127.0.0.1", proxyPort), timeout=timeout)
    s.sendall(b"CONNECT " + target.encode() + b" HTTP/1.1\r\nHost: " + target.encode() + b"\r\n" + extra + b"\r\n")
    head, rest = readHead(s, timeout)
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    return s, status, rest


class TestCA:
    """
    A throwaway certificate authority and server certificates, written as
    PEM files in a temporary folder.
    """

    def __init__(self) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self._x509, self._hashes, self._ser, self._ec, self._oid = x509, hashes, serialization, ec, NameOID
        self.dir = tempfile.mkdtemp(prefix="txproxy-ca-")
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "txproxy test CA")])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.caPath = os.path.join(self.dir, "ca.pem")
        with open(self.caPath, "wb") as f:
            f.write(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, names: Sequence[str], filename: str) -> str:
        """
        Issue a server certificate for C{names}; write key and chain to one
        PEM file and return its path.
        """
        x509, hashes, ser, ec = self._x509, self._hashes, self._ser, self._ec
        import ipaddress

        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        sans: List[Any] = []
        for n in names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                sans.append(x509.DNSName(n))
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(self._oid.COMMON_NAME, names[0])]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        path = os.path.join(self.dir, filename)
        with open(path, "wb") as f:
            f.write(key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.TraditionalOpenSSL, ser.NoEncryption()))
            f.write(cert.public_bytes(ser.Encoding.PEM))
            f.write(self.cert.public_bytes(ser.Encoding.PEM))
        return path
