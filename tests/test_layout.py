"""
The package's shape, checked: imports point down the layers and never back
up (no cycle, no function-local import dodging one), and no module grows past
~600 lines without saying why at its top.
"""

from __future__ import annotations

import ast
import os
from typing import Dict, List, Set, Tuple

from twisted.trial.unittest import SynchronousTestCase

from tests.procs import REPO

#: The package's source in the checkout (not an installed copy, which the
#: compiled build's test run imports).
ROOT = os.path.join(REPO, "txproxy")

#: Modules allowed past the size limit say so with this phrase in their docstring.
LONG_REASON = "Why this module is long:"
#: "About 600 lines" (issue #12), with a little slack so that a module a few
#: lines over is not split in the middle of an unrelated change.
MAX_LINES = 640

#: Modules still to be split (issue #12); this set only shrinks.
PENDING_SPLIT: Set[str] = set()


def _modules() -> Dict[str, str]:
    """
    Every module of the package, by dotted name, with its path.
    """
    found = {}
    for folder, _dirs, files in os.walk(ROOT):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, os.path.dirname(ROOT))[: -len(".py")]
            dotted = rel.replace(os.sep, ".")
            if dotted.endswith(".__init__"):
                dotted = dotted[: -len(".__init__")]
            found[dotted] = path
    return found


def _isTypeChecking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(module: str, isPackage: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    base = parts if isPackage else parts[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str, path: str, known: Set[str]) -> Tuple[Set[str], List[Tuple[int, str]]]:
    """
    The package modules C{module} imports when it is imported (module level,
    outside C{if TYPE_CHECKING:}), and the package imports it makes inside
    functions or classes, as (line, name).
    """
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    isPackage = path.endswith("__init__.py")
    top: Set[str] = set()
    nested: List[Tuple[int, str]] = []

    def targets(node: ast.AST) -> List[str]:
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, isPackage, node)
            names = [base]
            # "from txproxy import config" imports the submodule.
            names += [base + "." + a.name for a in node.names if base + "." + a.name in known]
        return [n for n in names if n == "txproxy" or n.startswith("txproxy.")]

    def walk(nodes: List[ast.stmt], atTop: bool) -> None:
        for node in nodes:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for name in targets(node):
                    if atTop:
                        top.add(name)
                    else:
                        nested.append((node.lineno, name))
            elif isinstance(node, ast.If) and _isTypeChecking(node):
                continue
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                walk(node.body, False)
            else:
                for field in ("body", "orelse", "finalbody", "handlers"):
                    inner = getattr(node, field, None)
                    if isinstance(inner, list):
                        walk([n for n in inner if isinstance(n, ast.stmt)] + [
                            s for h in inner if isinstance(h, ast.ExceptHandler) for s in h.body
                        ], atTop)

    walk(tree.body, True)
    return top, nested


def _closure(name: str, known: Set[str]) -> Set[str]:
    """
    Importing C{a.b.c} imports C{a.b} and C{a} first.
    """
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)} & known


class LayoutTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.modules = _modules()
        known = set(self.modules)
        self.graph: Dict[str, Set[str]] = {}
        self.nested: Dict[str, List[Tuple[int, str]]] = {}
        for name, path in self.modules.items():
            top, nested = _imports(name, path, known)
            edges: Set[str] = set()
            for target in top:
                edges |= _closure(target, known)
            edges.discard(name)
            # A package's parents are imported before it: not an edge of its own making.
            self.graph[name] = {e for e in edges if not name.startswith(e + ".")}
            self.nested[name] = [(line, t) for line, t in nested if t != "txproxy.testing" or name != "txproxy.testing"]

    def test_noFunctionLocalImports(self) -> None:
        """
        No module imports another of the package inside a function or class
        (the way cycles used to be dodged). L{txproxy.testing}'s docstring
        examples are not code.
        """
        found = [
            f"{name}:{line} imports {target}"
            for name, entries in sorted(self.nested.items())
            for line, target in entries
        ]
        self.assertEqual(found, [])

    def test_noCycles(self) -> None:
        """
        The module-level import graph has no cycle.
        """
        index: Dict[str, int] = {}
        low: Dict[str, int] = {}
        stack: List[str] = []
        onStack: Set[str] = set()
        cycles: List[List[str]] = []
        counter = [0]

        def connect(v: str) -> None:
            index[v] = low[v] = counter[0]
            counter[0] += 1
            stack.append(v)
            onStack.add(v)
            for w in sorted(self.graph.get(v, ())):
                if w not in index:
                    connect(w)
                    low[v] = min(low[v], low[w])
                elif w in onStack:
                    low[v] = min(low[v], index[w])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    onStack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))

        for v in sorted(self.graph):
            if v not in index:
                connect(v)
        self.assertEqual(cycles, [])

    def test_moduleSize(self) -> None:
        """
        A module over about 600 lines (L{MAX_LINES}) says why at its top.
        """
        long = []
        for name, path in sorted(self.modules.items()):
            with open(path, encoding="utf-8") as f:
                text = f.read()
            lines = text.count("\n")
            doc = ast.get_docstring(ast.parse(text)) or ""
            if lines > MAX_LINES and LONG_REASON not in doc and name not in PENDING_SPLIT:
                long.append(f"{name} ({lines} lines)")
        self.assertEqual(long, [])


class PackagingTests(SynchronousTestCase):
    def test_everyPackageIsInstalled(self) -> None:
        """
        setup.cfg lists every package of txproxy (a subpackage left out would
        be missing from the wheel, though every test run from the checkout
        passes).
        """
        import configparser

        parser = configparser.ConfigParser()
        parser.read(os.path.join(os.path.dirname(ROOT), "setup.cfg"))
        listed = set(parser["options"]["packages"].split())
        packages = {name for name, path in _modules().items() if path.endswith("__init__.py")}
        self.assertEqual(packages - listed, set())


class OldImportPathTests(SynchronousTestCase):
    """
    The modules that moved into subpackages keep their old, documented
    import paths for one release, with a DeprecationWarning.
    """

    OLD = {
        "txproxy.tcp": "txproxy.stream.tcp",
        "txproxy.sni": "txproxy.stream.sni",
        "txproxy.service": "txproxy.runtime.service",
        "txproxy.limiter": "txproxy.limits.service",
    }

    def test_oldPathsWarnAndGiveTheSameObjects(self) -> None:
        import importlib
        import sys
        import warnings

        for old, new in self.OLD.items():
            sys.modules.pop(old, None)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                module = importlib.import_module(old)
            self.assertEqual(
                [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)],
                [f"{old} is deprecated: import from {new}"],
            )
            target = importlib.import_module(new)
            for name in module.__all__:
                self.assertIs(getattr(module, name), getattr(target, name), f"{old}.{name}")
