# -*- test-case-name: tests.test_packaging -*-
"""
The wheel ships the twistd plugin: build it, install it (not editable) in a
fresh virtualenv, and ask that venv's twistd about txproxy.
"""

from __future__ import annotations

import glob
import os
import platform
import subprocess
import sys
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from tests.procs import REPO


class WheelTests(SynchronousTestCase):
    def test_wheelInstallsPlugin(self) -> None:
        """
        A wheel built from the checkout, installed in a fresh venv, makes
        C{twistd --help} list txproxy and C{twistd txproxy --help} print the
        options.
        """
        work = tempfile.mkdtemp(prefix="txproxy-wheel-")
        # trial -j passes its sys.path to workers as PYTHONPATH; a fresh venv
        # must not see the test environment's packages.
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PIP_PREFIX")}
        build = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", work, REPO],
            capture_output=True, timeout=600, env=env,
        )
        self.assertEqual(build.returncode, 0, build.stderr)
        (wheel,) = glob.glob(os.path.join(work, "txproxy-*.whl"))
        import zipfile

        names = zipfile.ZipFile(wheel).namelist()
        self.assertIn("twisted/plugins/txproxy_plugin.py", names)
        self.assertNotIn("twisted/__init__.py", names)
        self.assertNotIn("twisted/plugins/__init__.py", names)
        venv = os.path.join(work, "venv")
        subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=300, env=env)
        pip = os.path.join(venv, "bin", "pip")
        installArgs = [pip, "install", "-q", wheel]
        if platform.python_implementation() == "PyPy":
            # PyPy 3.9 has wheels only for cryptography<44 (so pyOpenSSL<25.2)
            # and bcrypt 4.2, and txredisapi asks for twisted[tls] (which
            # wants newer ones): the same recipe as scripts/test.
            for args in (
                ["--only-binary=cryptography,bcrypt", "cryptography<44", "pyopenssl<25.2", "twisted>=26.4",
                 "service-identity", "idna", "attrs", "prometheus-client", "bcrypt", "tomli", "h2>=4.3,<4.4"],
                ["--no-deps", "txredisapi"],
            ):
                pre = subprocess.run([pip, "install", "-q", *args], capture_output=True, timeout=900, env=env)
                self.assertEqual(pre.returncode, 0, pre.stderr)
            installArgs = [pip, "install", "-q", "--no-deps", wheel]
        install = subprocess.run(installArgs, capture_output=True, timeout=900, env=env)
        self.assertEqual(install.returncode, 0, install.stderr)
        twistd = os.path.join(venv, "bin", "twistd")
        listed = subprocess.run([twistd, "--help"], capture_output=True, cwd=work, timeout=120, env=env)
        self.assertIn(b"txproxy", listed.stdout)
        help_ = subprocess.run([twistd, "txproxy", "--help"], capture_output=True, cwd=work, timeout=120, env=env)
        self.assertEqual(help_.returncode, 0, help_.stderr)
        self.assertIn(b"--connect-ports", help_.stdout)
