# -*- test-case-name: tests.test_docs_snippets -*-
"""
The Python examples of the programming guide run as printed.

Every C{.. code-block:: python} (C{code} and C{sourcecode} too), and every
C{::} literal block where the page set C{.. highlight:: python}, of the
documents in L{DOCUMENTS} is written to a new module file, on its own, and
imported; the trial test cases it defines are then run, and must all pass.
A snippet that needs something an earlier one defined, or a fixture of this
repository, fails here just as it would for a reader who pasted it.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import textwrap
import unittest as pyunit
from typing import Any, Callable, Iterator, List, Optional

import attr
from twisted.trial import reporter, runner, unittest
from twisted.trial.unittest import SynchronousTestCase

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")
EXAMPLES = os.path.join(os.path.dirname(DOCS), "examples")

#: The documents whose examples are checked (those that exist).
DOCUMENTS = ("subclassing.rst", "hooks.rst", "testing.rst")

#: The language names of Python source (interactive sessions, C{pycon},
#: are not programs).
PYTHON = frozenset(["python", "python3", "py", "py3"])

_DIRECTIVE = re.compile(r"^(\s*)\.\.\s+(code-block|code|sourcecode)::\s*(\S*)\s*$")
_HIGHLIGHT = re.compile(r"^\s*\.\.\s+highlight::\s*(\S+)\s*$")
_OPTION = re.compile(r"^\s*:[\w-]+:")


@attr.s(frozen=True, auto_attribs=True)
class Snippet:
    """
    One Python example of a document.

    @ivar document: the document's file name.
    @ivar line: the 1-based line of its first line of code.
    @ivar code: the code, dedented.
    """

    document: str
    line: int
    code: str


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _block(lines: List[str], start: int, parent: int, skipOptions: bool) -> "tuple[int, List[str]]":
    """
    The body of the directive or literal block that starts after line
    C{start - 1}, indented deeper than C{parent}.

    @return: the index of its first line of code, and its lines (trailing
        blank lines dropped).
    """
    i = start
    if skipOptions:
        while i < len(lines) and lines[i].strip() and _indent(lines[i]) > parent and _OPTION.match(lines[i]):
            i += 1
    while i < len(lines) and not lines[i].strip():
        i += 1
    first = i
    body: List[str] = []
    while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > parent):
        body.append(lines[i])
        i += 1
    while body and not body[-1].strip():
        body.pop()
    return first, body


def extractSnippets(text: str, document: str, default: str = "none") -> List[Snippet]:
    """
    The Python examples of a reStructuredText document.

    @param text: the document.
    @param document: its name, for the snippets.
    @param default: the language of C{::} blocks until a C{highlight}
        directive (the C{highlight_language} of C{docs/conf.py}).
    """
    lines = text.splitlines()
    snippets: List[Snippet] = []
    highlight = default
    i = 0
    while i < len(lines):
        line = lines[i]
        found = _HIGHLIGHT.match(line)
        if found:
            highlight = found.group(1)
            i += 1
            continue
        directive = _DIRECTIVE.match(line)
        if directive:
            language = directive.group(3) or highlight
            first, body = _block(lines, i + 1, _indent(line), skipOptions=True)
        elif line.rstrip().endswith("::") and not line.lstrip().startswith(".."):
            language = highlight
            first, body = _block(lines, i + 1, _indent(line), skipOptions=False)
        else:
            i += 1
            continue
        if language in PYTHON and body:
            snippets.append(Snippet(document, first + 1, textwrap.dedent("\n".join(body)) + "\n"))
        i = max(first + len(body), i + 1)
    return snippets


def documentSnippets(document: str) -> List[Snippet]:
    """
    The Python examples of C{docs/<document>}, none when it does not exist.
    """
    path = os.path.join(DOCS, document)
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return extractSnippets(f.read(), document)


def _cases(test: Any) -> Iterator[Any]:
    """
    The test cases of a suite, however nested.
    """
    if isinstance(test, pyunit.TestSuite):
        for member in test:
            yield from _cases(member)
    else:
        yield test


def runSnippet(snippet: Snippet, directory: str) -> Optional[reporter.TestResult]:
    """
    Write C{snippet} to a new module in C{directory}, import it, and run the
    trial test cases it defines.

    @return: the result of its tests, or L{None} when it defines none.
    @raise Exception: whatever importing the module raises.
    """
    os.makedirs(directory, exist_ok=True)
    stem = re.sub(r"\W", "_", os.path.splitext(snippet.document)[0])
    name = f"docsnippet_{stem}_line{snippet.line}"
    path = os.path.join(directory, name + ".py")
    with open(path, "w", encoding="utf-8") as f:
        f.write(snippet.code)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    # A reader saves a test beside the example modules it imports.
    sys.path.insert(0, EXAMPLES)
    try:
        spec.loader.exec_module(module)
        suite = runner.TestLoader().loadModule(module)
        if not suite.countTestCases():
            return None
        for case in _cases(suite):
            if isinstance(case, unittest.TestCase):
                raise AssertionError(
                    f"{case.id()}: examples use SynchronousTestCase (a TestCase needs the reactor)"
                )
        result = reporter.TestResult()
        suite.run(result)
        return result
    finally:
        del sys.modules[name]
        sys.path.remove(EXAMPLES)


def _describe(result: reporter.TestResult) -> str:
    problems = list(result.errors) + list(result.failures)
    problems += [(case, f"unexpected success: {todo}") for case, todo in result.unexpectedSuccesses]
    problems += [(case, f"skipped: {reason}") for case, reason in result.skips]
    return "\n".join(f"{case.id()}:\n{detail}" for case, detail in problems)


class _SnippetTests(SynchronousTestCase):
    def assertRuns(self, snippet: Snippet) -> None:
        """
        Fail unless C{snippet} imports on its own and its tests, if any,
        all pass (no skips, no expected failures).
        """
        result = runSnippet(snippet, self.mktemp())
        if result is None:
            return
        self.assertTrue(
            result.wasSuccessful() and not result.skips and not result.expectedFailures
            and not result.unexpectedSuccesses,
            f"the example at docs/{snippet.document} line {snippet.line} does not pass:\n{_describe(result)}",
        )
        self.assertGreater(result.testsRun, 0)


def _snippetTest(snippet: Snippet) -> Callable[[_SnippetTests], None]:
    def test(self: _SnippetTests) -> None:
        self.assertRuns(snippet)

    test.__name__ = f"test_line{snippet.line}"
    test.__doc__ = (
        f"The example at docs/{snippet.document} line {snippet.line} runs on its own, "
        f"and its tests pass."
    )
    return test


class SubclassingSnippetTests(_SnippetTests):
    """
    The examples of C{docs/subclassing.rst}, one test each.
    """


class HooksSnippetTests(_SnippetTests):
    """
    The examples of C{docs/hooks.rst}, one test each.
    """


class TestingSnippetTests(_SnippetTests):
    """
    The examples of C{docs/testing.rst} (when it exists), one test each.
    """


for _cls, _document in (
    (SubclassingSnippetTests, "subclassing.rst"),
    (HooksSnippetTests, "hooks.rst"),
    (TestingSnippetTests, "testing.rst"),
):
    for _snippet in documentSnippets(_document):
        setattr(_cls, f"test_line{_snippet.line}", _snippetTest(_snippet))


class CoverageTests(SynchronousTestCase):
    def test_noTestExcerptsIncluded(self) -> None:
        """
        The guides show no excerpt of this repository's own tests (a
        C{literalinclude} of C{tests/}): those call helpers defined only
        there, so a reader pasting one gets NameErrors.  Their examples are
        code blocks, run above.
        """
        for document in DOCUMENTS:
            path = os.path.join(DOCS, document)
            if os.path.exists(path):
                with open(path, encoding="utf-8") as f:
                    self.assertNotRegex(f.read(), r"literalinclude::\s*\.\./tests/", document)

    def test_everyTestSnippetHasATest(self) -> None:
        """
        Every Python example of the guides that defines a test case is one
        test method here (C{test_lineN}), so none goes unexecuted.
        """
        for cls, document in ((SubclassingSnippetTests, "subclassing.rst"), (HooksSnippetTests, "hooks.rst")):
            for snippet in documentSnippets(document):
                self.assertTrue(hasattr(cls, f"test_line{snippet.line}"), (document, snippet.line))
        self.assertTrue(any("BlocklistProxyTests" in s.code for s in documentSnippets("subclassing.rst")))


    def test_subclassingHasAnExamplePerMode(self) -> None:
        """
        The subclassing guide has the shape of a subclass and one tested
        example per mode, each building its factory with the mode's helper.
        """
        snippets = documentSnippets("subclassing.rst")
        self.assertGreaterEqual(len(snippets), 6)
        code = "\n".join(s.code for s in snippets)
        for helper in ("forwardFactory", "reverseFactory", "tcpFactory", "transparentFactory", "sniFactory"):
            self.assertIn(helper + "(", code)
        self.assertGreaterEqual(sum("SynchronousTestCase)" in s.code for s in snippets), 5)


class ExtractTests(SynchronousTestCase):
    DOCUMENT = textwrap.dedent(
        """\
        Title
        =====

        .. code-block:: python
           :caption: with an option

           x = 1

           y = x + 1

        .. code-block:: console

           $ not python

        A literal block, not Python by default::

           not python

        .. highlight:: python

        Now literal blocks are::

            z = 3

        .. code:: py

           w = 4
        text after
        """
    )

    def test_extract(self) -> None:
        """
        Python code blocks (with options, blank lines inside) and C{::}
        blocks under C{highlight:: python} are found, with their lines;
        other languages are not.
        """
        snippets = extractSnippets(self.DOCUMENT, "t.rst")
        self.assertEqual(
            [(s.line, s.code) for s in snippets],
            [(7, "x = 1\n\ny = x + 1\n"), (23, "z = 3\n"), (27, "w = 4\n")],
        )

    def test_missingDocument(self) -> None:
        """
        A document that does not exist has no snippets.
        """
        self.assertEqual(documentSnippets("no-such-document.rst"), [])

    def test_failingSnippetIsReported(self) -> None:
        """
        A snippet whose test fails, or that does not import, is caught.
        """
        failing = Snippet(
            "t.rst",
            1,
            "from twisted.trial.unittest import SynchronousTestCase\n"
            "class T(SynchronousTestCase):\n"
            "    def test_x(self):\n"
            "        self.fail('no')\n",
        )
        result = runSnippet(failing, self.mktemp())
        assert result is not None
        self.assertFalse(result.wasSuccessful())
        self.assertIn("no", _describe(result))
        self.assertRaises(NameError, runSnippet, Snippet("t.rst", 2, "undefined_name\n"), self.mktemp())
        self.assertIsNone(runSnippet(Snippet("t.rst", 3, "x = 1\n"), self.mktemp()))

    def test_asyncTestCaseIsRefused(self) -> None:
        """
        An example with a reactor-driven C{TestCase} is refused: examples
        use C{SynchronousTestCase}.
        """
        snippet = Snippet(
            "t.rst",
            1,
            "from twisted.trial.unittest import TestCase\n"
            "class T(TestCase):\n"
            "    def test_x(self):\n"
            "        pass\n",
        )
        self.assertRaises(AssertionError, runSnippet, snippet, self.mktemp())
