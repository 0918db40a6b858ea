"""
The examples of C{docs/intercept.rst} run as printed: its
C{.. code-block:: shell} commands, in an empty folder, make a CA file that
C{--intercept-ca} accepts, and its Python examples' tests pass (run as
L{tests.test_docs_snippets} runs the programming guide's).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from typing import List

from cryptography import x509
from twisted.trial.unittest import SynchronousTestCase

from tests.test_docs_snippets import documentSnippets, runSnippet
from txproxy.tls import InterceptCA

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "intercept.rst")


def shellBlocks(text: str) -> List[str]:
    """
    The bodies of the C{.. code-block:: shell} directives of C{text},
    dedented.
    """
    blocks = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if re.match(r"^\.\.\s+code-block::\s*(shell|bash|console)\s*$", lines[i]):
            i += 1
            body = []
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith("   ")):
                body.append(lines[i][3:])
                i += 1
            blocks.append("\n".join(body).strip() + "\n")
        else:
            i += 1
    return blocks


class MakeCATests(SynchronousTestCase):
    def test_commandsMakeAUsableCA(self) -> None:
        """
        The commands make C{ca.pem} (mode 600) that loads as an
        interception CA, and C{ca.crt}, a CA certificate.
        """
        with open(DOC) as f:
            blocks = shellBlocks(f.read())
        self.assertEqual(len(blocks), 1)
        folder = tempfile.mkdtemp(prefix="txproxy-docs-ca-")
        self.addCleanup(shutil.rmtree, folder, True)
        result = subprocess.run(["bash", "-e", "-c", blocks[0]], cwd=folder, capture_output=True, timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr)
        path = os.path.join(folder, "ca.pem")
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        ca = InterceptCA.fromFile(path)
        with open(os.path.join(folder, "ca.crt"), "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        self.assertEqual(cert, ca.certificate)
        self.assertTrue(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
        self.assertEqual(ca.mint("example.com").issuer, cert.subject)


class PythonSnippetTests(SynchronousTestCase):
    def test_pythonExamplesPass(self) -> None:
        """
        Every Python example of the page defines tests, and they pass.
        """
        snippets = documentSnippets("intercept.rst")
        self.assertEqual(len(snippets), 1)
        folder = tempfile.mkdtemp(prefix="txproxy-docs-snippet-")
        self.addCleanup(shutil.rmtree, folder, True)
        for snippet in snippets:
            result = runSnippet(snippet, folder)
            assert result is not None, f"line {snippet.line} defines no test"
            self.assertTrue(result.wasSuccessful(), [str(e[1]) for e in result.errors + result.failures])
            self.assertGreater(result.testsRun, 0)
