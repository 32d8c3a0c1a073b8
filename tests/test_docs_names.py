"""
The Python names the documentation tells users to import or call exist: a
module moved inside the package must not leave README's examples broken.
"""

from __future__ import annotations

import importlib
import os
import re
from typing import List, Tuple

from twisted.trial.unittest import SynchronousTestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ("README.rst", os.path.join("bench", "README.rst"))

_FROM_IMPORT = re.compile(r"^\s*from\s+(oidcproxy[\w.]*)\s+import\s+([\w, ]+)\s*$")
NOT_PYTHON = {
    "oidcproxy.access": "the access log's namespace",
    "oidcproxy.socket": "the systemd socket unit",
}
"""Dotted names the docs quote that are not Python names."""
_DOTTED = re.compile(r"``(oidcproxy(?:\.\w+)+)(?:\([^`]*\))?``")


def _doc_lines() -> List[Tuple[str, int, str]]:
    found = []
    for doc in DOCS:
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

    def test_public_api_at_the_package_root(self) -> None:
        """OIDCGuard, identity and Identity are importable from C{oidcproxy} itself."""
        import oidcproxy

        for name in ("OIDCGuard", "identity", "Identity"):
            self.assertTrue(hasattr(oidcproxy, name), name)
