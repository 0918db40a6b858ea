# -*- test-case-name: tests.test_redislimiter -*-
"""
A real C{redis-server} for tests: started on a free loopback port in a
temporary directory, stopped by its PID.

It never skips: when C{redis-server} cannot be found or does not start, it
raises L{RedisServerError} and the test errors loudly.  Set
C{TXPROXY_REDIS_SERVER} to the binary's path when it is not on C{PATH} or in
C{/usr/bin}.

Starting waits (blocking, at most C{startTimeout} seconds, polling every
10 ms) until the server answers C{PING}: a test cannot do anything useful
before that.  L{RedisServer.command} is a tiny blocking RESP client for
assertions (C{PTTL}, C{ZCARD}, C{SCRIPT FLUSH}, ...).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Any, List, Optional

from tests.procs import freePort

__all__ = ["RedisServer", "RedisServerError", "findRedisServer"]


class RedisServerError(Exception):
    """
    C{redis-server} is missing or did not start.
    """


def findRedisServer() -> str:
    """
    The path of the C{redis-server} binary.

    @raise RedisServerError: when there is none.  Tests must not skip.
    """
    candidates = [os.environ.get("TXPROXY_REDIS_SERVER"), shutil.which("redis-server"), "/usr/bin/redis-server"]
    for path in candidates:
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise RedisServerError(
        "redis-server not found (looked at $TXPROXY_REDIS_SERVER, PATH and /usr/bin): "
        "install it (apt-get install redis-server); these tests are never skipped"
    )


def _encode(args: List[Any]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode("utf-8")
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class _Reader:
    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = b""

    def _line(self) -> bytes:
        while b"\r\n" not in self._buffer:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\r\n", 1)
        return line

    def _exactly(self, n: int) -> bytes:
        while len(self._buffer) < n + 2:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self._buffer += chunk
        data, self._buffer = self._buffer[:n], self._buffer[n + 2 :]
        return data

    def reply(self) -> Any:
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RedisReplyError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self._exactly(n).decode("utf-8", "replace")
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.reply() for _ in range(n)]
        raise ConnectionError(f"unexpected reply {line!r}")


class RedisReplyError(Exception):
    """
    Redis answered a L{RedisServer.command} with an error.
    """


class RedisServer:
    """
    One C{redis-server} process owned by a test.

    @ivar port: its loopback TCP port (kept across L{restart}).
    @ivar pid: its process id while running, else L{None}.
    @ivar directory: its temporary working directory (log file inside).
    """

    startTimeout = 5.0

    def __init__(self) -> None:
        self.binary = findRedisServer()
        self.directory = tempfile.mkdtemp(prefix="txproxy-redis-")
        self.port = freePort()
        self._process: Optional[subprocess.Popen] = None  # type: ignore[type-arg]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> Optional[int]:
        return self._process.pid if self._process is not None else None

    def start(self) -> "RedisServer":
        """
        Start the server (again, on the same port, with empty data: no
        persistence) and wait until it answers C{PING}.

        @raise RedisServerError: if it does not within C{startTimeout}.
        """
        if self._process is not None:
            raise RedisServerError("already running")
        last: Optional[BaseException] = None
        for attempt in range(3):
            logPath = os.path.join(self.directory, "redis.log")
            self._process = subprocess.Popen(
                [
                    self.binary,
                    "--port", str(self.port),
                    "--bind", "127.0.0.1",
                    "--dir", self.directory,
                    "--save", "",
                    "--appendonly", "no",
                    "--daemonize", "no",
                    "--logfile", logPath,
                    "--databases", "2",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                close_fds=True,
            )
            deadline = time.monotonic() + self.startTimeout
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    break
                try:
                    if self.command("PING") == "PONG":
                        return self
                except OSError as e:
                    last = e
                time.sleep(0.01)
            self._reap(signal.SIGKILL)
            if attempt == 0 and self._logSays("Address already in use"):
                self.port = freePort()
        raise RedisServerError(
            f"redis-server did not start on 127.0.0.1:{self.port} ({last}); log:\n{self._log()}"
        )

    def _log(self) -> str:
        try:
            with open(os.path.join(self.directory, "redis.log")) as f:
                return f.read()[-4000:]
        except OSError:
            return "(no log)"

    def _logSays(self, text: str) -> bool:
        return text in self._log()

    def _reap(self, sig: int) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            os.kill(process.pid, sig)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover
            os.kill(process.pid, signal.SIGKILL)
            process.wait()

    def stop(self) -> None:
        """
        Stop the server (SIGTERM to its PID, SIGCONT first in case it was
        paused) and wait for it to exit.  Idempotent.
        """
        if self._process is not None and self._process.poll() is None:
            os.kill(self._process.pid, signal.SIGCONT)
        self._reap(signal.SIGTERM)

    def kill(self) -> None:
        """
        Kill the server at once (SIGKILL to its PID), as a crash would.
        """
        self._reap(signal.SIGKILL)

    def pause(self) -> None:
        """
        Freeze the server (SIGSTOP): connections stay open, nothing answers.
        """
        assert self._process is not None
        os.kill(self._process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """
        Undo L{pause} (SIGCONT).
        """
        assert self._process is not None
        os.kill(self._process.pid, signal.SIGCONT)

    def restart(self) -> "RedisServer":
        """
        Kill and start again on the same port: all data and scripts gone.
        """
        self.kill()
        return self.start()

    def cleanup(self) -> None:
        """
        Stop the server and remove its directory.
        """
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def command(self, *args: Any) -> Any:
        """
        Run one command on a fresh blocking connection and return the reply
        (strings decoded, errors raised as L{RedisReplyError}).
        """
        with socket.create_connection(("127.0.0.1", self.port), timeout=2.0) as sock:
            sock.sendall(_encode(list(args)))
            return _Reader(sock).reply()
