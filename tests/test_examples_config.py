# -*- test-case-name: tests.test_examples_config -*-
"""
The example configurations in C{examples/config/} as shipped: their
command lines and their listeners.

(Not yet here: starting every file with a real C{twistd} and sending a
request through it; see issue #13 item 13.)
"""

from __future__ import annotations

import glob
import os
import re
import socket

from twisted.trial.unittest import SynchronousTestCase

from txproxy.config import fromFlags

from .procs import REPO

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
