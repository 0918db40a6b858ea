# -*- test-case-name: tests.test_packaging -*-
"""
The wheel ships the twistd plugin: build it, install it (not editable) in a
fresh virtualenv, and ask that venv's twistd about txproxy.  On CPython the
wheel is the compiled build (mypyc), with each compiled module's source
beside it; without a working compiler, or with C{TXPROXY_PURE=1} set, the
build falls back to the pure modules.
"""

from __future__ import annotations

import glob
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from typing import List, Tuple

from twisted.trial.unittest import SynchronousTestCase

from tests.procs import REPO
from txproxy._compiled import MODULES, PURE_ENV

CPYTHON = platform.python_implementation() == "CPython"


def _buildWheel(work: str, **extraEnv: str) -> Tuple[str, List[str], str]:
    """
    Build a wheel of the checkout into C{work} (pip's build isolation, as
    C{pip install .} does), with C{extraEnv}.

    @return: the wheel's path, the names in it, and what the build printed.
    """
    # trial -j passes its sys.path to workers as PYTHONPATH; a fresh venv
    # must not see the test environment's packages.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PIP_PREFIX", PURE_ENV)}
    env.update(extraEnv)
    # From a copy of what the wheel is built from: pip builds in the source
    # tree (build/, where mypyc writes its C too), and tests run in parallel.
    source = os.path.join(work, "src")
    os.mkdir(source)
    for name in ("setup.py", "setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(os.path.join(REPO, name), source)
    for name in ("txproxy", "twisted"):
        shutil.copytree(os.path.join(REPO, name), os.path.join(source, name),
                        ignore=shutil.ignore_patterns("__pycache__", "*.so", "dropin.cache"))
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "-w", work, source],
        capture_output=True, timeout=600, env=env,
    )
    output = (build.stdout + build.stderr).decode(errors="replace")
    if build.returncode != 0:
        raise AssertionError(output[-5000:])
    (wheel,) = glob.glob(os.path.join(work, "txproxy-*.whl"))
    # A build that meant to compile is a platform wheel even when it fell
    # back: its modules are under txproxy-VERSION.data/purelib/ (pip
    # installs them in the same place).
    names = [re.sub(r"^txproxy-[^/]*\.data/purelib/", "", n) for n in zipfile.ZipFile(wheel).namelist()]
    return wheel, names, output


def _extensions(names: List[str]) -> List[str]:
    return sorted(n for n in names if n.endswith((".so", ".pyd")))


class WheelTests(SynchronousTestCase):
    def test_wheelInstallsPlugin(self) -> None:
        """
        A wheel built from the checkout, installed in a fresh venv, makes
        C{twistd --help} list txproxy and C{twistd txproxy --help} print the
        options.  On CPython it is the compiled build, shipping each
        compiled module's extension and its source: C{--version} says
        C{compiled (mypyc)}, and C{pure Python} with C{TXPROXY_PURE=1}.  On
        PyPy it is the pure build.
        """
        work = tempfile.mkdtemp(prefix="txproxy-wheel-")
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PIP_PREFIX", PURE_ENV)}
        wheel, names, _ = _buildWheel(work)
        self.assertIn("twisted/plugins/txproxy_plugin.py", names)
        self.assertNotIn("twisted/__init__.py", names)
        self.assertNotIn("twisted/plugins/__init__.py", names)
        for name in MODULES:
            base = "/".join(name.split("."))
            self.assertIn(base + ".py", names)
            compiled = [n for n in names if n.startswith(base + ".") and n.endswith(".so")]
            self.assertEqual(len(compiled), 1 if CPYTHON else 0, (name, compiled))
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
                 "service-identity", "idna", "attrs", "mypy-extensions", "prometheus-client", "bcrypt", "tomli", "h2>=4.3,<4.4"],
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
        for extra, expected in [({}, b"compiled (mypyc))" if CPYTHON else b"pure Python)"),
                                ({PURE_ENV: "1"}, b"pure Python)")]:
            version = subprocess.run([twistd, "txproxy", "--version"], capture_output=True, cwd=work,
                                     timeout=120, env=dict(env, **extra))
            self.assertEqual(version.returncode, 0, version.stderr)
            self.assertTrue(version.stdout.rstrip().endswith(expected), (extra, version.stdout))

    def test_pureBuilds(self) -> None:
        """
        With C{TXPROXY_PURE=1} set, or with a C compiler that fails, the
        build says in one line that it builds the pure modules, and the
        wheel has no extension (and every module's source).
        """
        work = tempfile.mkdtemp(prefix="txproxy-wheel-")
        cases = [({PURE_ENV: "1"}, "building the pure-Python modules only")]
        if CPYTHON:
            # distutils takes the compiler from CC: one that always fails.
            cases.append(({"CC": "false"}, "compiling failed"))
        for extra, said in cases:
            folder = tempfile.mkdtemp(dir=work)
            wheel, names, output = _buildWheel(folder, **extra)
            self.assertEqual(_extensions(names), [], extra)
            self.assertIn("txproxy: ", output)
            self.assertIn(said, output)
            self.assertTrue(os.path.basename(wheel).endswith("-py3-none-any.whl") or "CC" in extra, wheel)
            for name in MODULES:
                self.assertIn("/".join(name.split(".")) + ".py", names)
