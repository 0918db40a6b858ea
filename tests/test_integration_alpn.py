# -*- test-case-name: tests.test_integration_alpn -*-
"""
Real-socket tests of ALPN on a C{twistd txproxy} reverse proxy's C{ssl:}
listener (C{--http2 on|off}), probed with C{openssl s_client -alpn}: what
the handshake negotiates, not what is served over it afterwards.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from typing import Callable, Optional, Sequence

from twisted.trial.unittest import SynchronousTestCase

from tests.procs import TestCA, Twistd, freePort
from tests.test_integration_tls import _need

_TIMEOUT = 20.0


def negotiated(port: int, caPath: str, offer: str = "h2,http/1.1") -> Optional[str]:
    """
    Handshake with C{openssl s_client -alpn OFFER} (SNI C{a.test}, chain
    verified); return the protocol its output names, or L{None} when it
    says C{No ALPN negotiated}.
    """
    args = [_need("openssl"), "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "a.test",
            "-CAfile", caPath, "-verify_return_error", "-alpn", offer]
    result = subprocess.run(args, input="", capture_output=True, text=True, timeout=_TIMEOUT)
    assert "Verify return code: 0 (ok)" in result.stdout, result.stdout + result.stderr
    match = re.search(r"^ALPN protocol: (\S+)$", result.stdout, re.MULTILINE)
    if match:
        return match.group(1)
    assert "No ALPN negotiated" in result.stdout, result.stdout
    return None


def waitUntil(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + _TIMEOUT
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class ReverseALPNTests(SynchronousTestCase):
    """
    A reverse proxy on C{ssl:} offers C{h2} before C{http/1.1} by default,
    C{http/1.1} alone with C{--http2 off}, and a reload flips it.
    """

    def setUp(self) -> None:
        self.ca = TestCA()
        self.addCleanup(shutil.rmtree, self.ca.dir, True)
        self.cert = self.ca.issue(["a.test"], "a.pem")

    def start(self, args: Sequence[str], port: int) -> Twistd:
        proxy = Twistd(list(args), port=port).start()
        self.addCleanup(proxy.stop)
        return proxy

    def listen(self, port: int) -> str:
        return f"ssl:{port}:privateKey={self.cert}:interface=127.0.0.1"

    def flags(self, port: int, *extra: str) -> Sequence[str]:
        return ["--mode", "reverse", "--route", "*=http://127.0.0.1:9", "--listen", self.listen(port), *extra]

    def test_h2ByDefault(self) -> None:
        """
        Without C{--http2}, a client offering C{h2,http/1.1} negotiates
        C{h2}; one offering C{http/1.1} alone gets C{http/1.1}.
        """
        port = freePort()
        self.start(self.flags(port), port)
        self.assertEqual(negotiated(port, self.ca.caPath), "h2")
        self.assertEqual(negotiated(port, self.ca.caPath, "http/1.1"), "http/1.1")

    def test_http2OnExplicit(self) -> None:
        """
        C{--http2 on} is the default made explicit: C{h2}.
        """
        port = freePort()
        self.start(self.flags(port, "--http2", "on"), port)
        self.assertEqual(negotiated(port, self.ca.caPath), "h2")

    def test_http2Off(self) -> None:
        """
        With C{--http2 off} the same offer negotiates C{http/1.1}, and an
        C{h2}-only offer gets no ALPN answer.
        """
        port = freePort()
        self.start(self.flags(port, "--http2", "off"), port)
        self.assertEqual(negotiated(port, self.ca.caPath), "http/1.1")
        self.assertIsNone(negotiated(port, self.ca.caPath, "h2"))

    def test_reloadFlipsALPN(self) -> None:
        """
        A C{SIGHUP} reload of a file that turns C{http2} off makes new
        handshakes negotiate C{http/1.1}; turning it on again, C{h2}.
        """
        port = freePort()
        path = os.path.join(self.ca.dir, "proxy.toml")

        def write(http2: str) -> None:
            with open(path, "w") as f:
                f.write(
                    f'[[listeners]]\nname = "web"\nlisten = ["{self.listen(port)}"]\nmode = "reverse"\n'
                    f"http2 = {http2}\n"
                    '[[listeners.routes]]\nhost = "*"\nupstreams = ["http://127.0.0.1:9"]\n'
                )

        write("true")
        proxy = self.start(["--config", path], port)
        self.assertEqual(negotiated(port, self.ca.caPath), "h2")
        for value, expected, count in (("false", "http/1.1", 1), ('"on"', "h2", 2)):
            write(value)
            proxy.signal(signal.SIGHUP)
            waitUntil(lambda: proxy.stdout().count("reloaded configuration") == count, "the reload")
            self.assertEqual(negotiated(port, self.ca.caPath), expected)
