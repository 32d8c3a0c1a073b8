"""
The Python names the documentation tells users to import or call exist: a
module moved inside the package must not leave the examples of README, of
bench/README.rst or of any page under docs/ broken.
"""

from __future__ import annotations

import glob
import importlib
import os
import re
from typing import List, Tuple

from twisted.trial.unittest import SynchronousTestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))



def _docs() -> List[str]:
    """README, bench/README.rst and every page of the Sphinx site, relative to the checkout."""
    pages = sorted(os.path.relpath(p, ROOT) for p in glob.glob(
        os.path.join(ROOT, "docs", "**", "*.rst"), recursive=True))
    return ["README.rst", os.path.join("bench", "README.rst"), *pages]


_FROM_IMPORT = re.compile(r"^\s*from\s+(oidcproxy[\w.]*)\s+import\s+([\w, ]+)\s*$")
NOT_PYTHON = {
    "oidcproxy.access": "the access log's namespace",
    "oidcproxy.socket": "the systemd socket unit",
    "oidcproxy.toml": "the example configuration file",
}
"""Dotted names the docs quote that are not Python names."""
_DOTTED = re.compile(r"``(oidcproxy(?:\.\w+)+)(?:\([^`]*\))?``")
_PY_DIRECTIVE = re.compile(r"^\s*\.\. py:(?:class|function|module):: (\w+(?:\.\w+)*)")
"""A name the Python API page declares, relative to the last C{py:module}."""


def _doc_lines() -> List[Tuple[str, int, str]]:
    found = []
    for doc in _docs():
        path = os.path.join(ROOT, doc)
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                found.append((doc, number, line.rstrip("\n")))
    return found


def _resolve(dotted: str) -> bool:
    """Whether C{dotted} names a module, or an attribute reachable from the longest importable module."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            if not hasattr(obj, name):
                return False
            obj = getattr(obj, name)
        return True
    return False


class DocumentedNamesTests(SynchronousTestCase):
    def test_from_imports_in_examples(self) -> None:
        """Every C{from oidcproxy... import ...} line of the docs' examples imports."""
        broken = []
        seen = 0
        for doc, number, line in _doc_lines():
            m = _FROM_IMPORT.match(line)
            if m is None:
                continue
            seen += 1
            module = m.group(1)
            for name in (n.strip() for n in m.group(2).split(",")):
                if not _resolve(f"{module}.{name}"):
                    broken.append(f"{doc}:{number}: {line.strip()}")
        self.assertGreater(seen, 0, "no example imports found: the pattern is stale")
        self.assertEqual(broken, [])

    def test_dotted_names_in_text(self) -> None:
        """Every ``oidcproxy.module.name`` the docs' text quotes exists."""
        broken = []
        for doc, number, line in _doc_lines():
            for dotted in _DOTTED.findall(line):
                if dotted not in NOT_PYTHON and not _resolve(dotted):
                    broken.append(f"{doc}:{number}: {dotted}")
        self.assertEqual(broken, [])

    def test_documented_api_names(self) -> None:
        """Every class and function the Python API page declares (C{.. py:class::}) exists."""
        broken = []
        seen = 0
        module, module_doc = "", ""
        for doc, number, line in _doc_lines():
            if doc != module_doc:
                module, module_doc = "", doc
            m = _PY_DIRECTIVE.match(line)
            if m is None:
                continue
            if ".. py:module::" in line:
                module = m.group(1)
                continue
            seen += 1
            dotted = f"{module}.{m.group(1)}" if module else m.group(1)
            if not _resolve(dotted):
                broken.append(f"{doc}:{number}: {dotted}")
        self.assertGreater(seen, 0, "no py: directives found: the pattern is stale")
        self.assertEqual(broken, [])

    def test_every_page_is_read(self) -> None:
        """The pages under docs/ are among the documents checked, not only README."""
        self.assertIn(os.path.join("docs", "reference", "python-api.rst"), _docs())

    def test_public_api_at_the_package_root(self) -> None:
        """OIDCGuard, identity and Identity are importable from C{oidcproxy} itself."""
        import oidcproxy

        for name in ("OIDCGuard", "identity", "Identity"):
            self.assertTrue(hasattr(oidcproxy, name), name)
