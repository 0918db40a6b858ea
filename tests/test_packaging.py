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
        if platform.python_implementation() == "PyPy":
            # cryptography 44+ has no PyPy 3.9 wheel; building it needs Rust.
            pre = subprocess.run([pip, "install", "-q", "--only-binary=cryptography", "cryptography<44"],
                                 capture_output=True, timeout=900, env=env)
            self.assertEqual(pre.returncode, 0, pre.stderr)
        install = subprocess.run([pip, "install", "-q", wheel], capture_output=True, timeout=900, env=env)
        self.assertEqual(install.returncode, 0, install.stderr)
        twistd = os.path.join(venv, "bin", "twistd")
        listed = subprocess.run([twistd, "--help"], capture_output=True, cwd=work, timeout=120, env=env)
        self.assertIn(b"txproxy", listed.stdout)
        help_ = subprocess.run([twistd, "txproxy", "--help"], capture_output=True, cwd=work, timeout=120, env=env)
        self.assertEqual(help_.returncode, 0, help_.stderr)
        self.assertIn(b"--connect-ports", help_.stdout)
