"""
The shape of the package, kept so by a test: the layers' dependency rule,
no import cycles (function-level imports included, so none can hide one),
and the size guide of DESIGN.md. It reads the sources with L{ast}; nothing
is imported.

Layers, bottom up: C{core} (imports nothing of the package), C{config},
then C{sessions} and C{proxy}, C{oidc} (may use sessions), C{web} (the
guard: uses all of those), the running process (the modules at the
package's root) and C{tools} (the demo runs the process; the process's
C{--demo} starts it).
"""

from __future__ import annotations

import ast
import os
from typing import Dict, Iterator, List, Optional, Set, Tuple

from twisted.trial.unittest import SynchronousTestCase

HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGE = os.path.join(os.path.dirname(HERE), "oidcproxy")

LAYERS = ("core", "config", "sessions", "proxy", "oidc", "web", "process", "tools")
ALLOWED: Dict[str, Set[str]] = {
    "core": set(),
    "config": {"core"},
    "sessions": {"core", "config"},
    "proxy": {"core", "config"},
    "oidc": {"core", "config", "sessions"},
    "web": {"core", "config", "sessions", "proxy", "oidc"},
    "process": {"core", "config", "sessions", "proxy", "oidc", "web", "tools"},
    "tools": {"core", "config", "sessions", "proxy", "oidc", "web", "process"},
}
"""What each layer may import (its own modules always)."""

MAX_MODULE_LINES = 600
MAX_CLASS_LINES = 400


def _modules() -> Iterator[Tuple[str, str]]:
    """(dotted module name, path) of every module of the package."""
    for folder, _, files in os.walk(PACKAGE):
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].replace(os.sep, ".")
            yield (rel[: -len(".__init__")] if rel.endswith(".__init__") else rel), path


def layer_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS):
        return parts[1]
    return "process"


def _imports(module: str, path: str) -> List[Tuple[str, int, bool]]:
    """(imported package module, line, at function level) for each import of the package."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    is_package = path.endswith("__init__.py")
    found: List[Tuple[str, int, bool]] = []

    def visit(node: ast.AST, nested: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = nested or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.ImportFrom):
                base = _resolve(module, is_package, child.level, child.module)
                if base is not None and base.split(".")[0] == "oidcproxy":
                    for alias in child.names:
                        candidate = f"{base}.{alias.name}"
                        found.append((candidate if candidate in MODULES else base,
                                      child.lineno, nested))
            elif isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.split(".")[0] == "oidcproxy":
                        found.append((alias.name, child.lineno, nested))
            visit(child, inner)

    visit(tree, False)
    return found


def _resolve(module: str, is_package: bool, level: int, name: Optional[str]) -> Optional[str]:
    if level == 0:
        return name
    parts = module.split(".")
    if not is_package:
        parts = parts[:-1]
    if level > 1:
        parts = parts[: len(parts) - (level - 1)]
    return ".".join(parts + ([name] if name else []))


MODULES = dict(_modules())
GRAPH: Dict[str, List[Tuple[str, int, bool]]] = {m: _imports(m, p) for m, p in MODULES.items()}


class LayerTests(SynchronousTestCase):
    def test_dependencies_point_down(self) -> None:
        """No module imports from a layer above its own (function-level imports included)."""
        wrong = []
        for module, imports in GRAPH.items():
            own = layer_of(module)
            for target, line, _ in imports:
                if target == "oidcproxy" and own == "process":
                    continue  # the package root's own public names
                other = layer_of(target)
                if other != own and other not in ALLOWED[own]:
                    wrong.append(f"{module}:{line} ({own}) imports {target} ({other})")
        self.assertEqual(wrong, [])

    def test_no_import_cycles(self) -> None:
        """
        The import graph, with the imports made inside functions, has no
        cycle: a function-level import cannot hide one.
        """
        edges = {m: sorted({t for t, _, _ in imports if t in MODULES and t != m})
                 for m, imports in GRAPH.items()}
        cycles = []
        state: Dict[str, int] = {}
        stack: List[str] = []

        def walk(node: str) -> None:
            state[node] = 1
            stack.append(node)
            for nxt in edges[node]:
                if state.get(nxt) == 1:
                    cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
                elif nxt not in state:
                    walk(nxt)
            stack.pop()
            state[node] = 2

        for module in sorted(edges):
            if module not in state:
                walk(module)
        self.assertEqual(cycles, [])

    def test_core_imports_nothing_of_the_package(self) -> None:
        """core is the floor: everything else may use it, it uses nothing."""
        for module, imports in GRAPH.items():
            if layer_of(module) == "core":
                self.assertEqual([t for t, _, _ in imports if layer_of(t) != "core"], [], module)


class SizeTests(SynchronousTestCase):
    def test_modules_and_classes_within_the_guide(self) -> None:
        """No module over about 600 lines, no class over about 400 (DESIGN.md)."""
        over = []
        for module, path in MODULES.items():
            with open(path, encoding="utf-8") as f:
                source = f.read()
            lines = source.count("\n")
            if lines > MAX_MODULE_LINES:
                over.append(f"{module}: {lines} lines")
            for node in ast.walk(ast.parse(source)):
                if isinstance(node, ast.ClassDef):
                    size = (node.end_lineno or node.lineno) - node.lineno + 1
                    if size > MAX_CLASS_LINES:
                        over.append(f"{module}.{node.name}: {size} lines")
        self.assertEqual(over, [])


class RequestStateTests(SynchronousTestCase):
    def test_no_private_request_state(self) -> None:
        """
        Per-request state lives in the request context: no attribute set on
        the request with setattr, and no read of Twisted's private
        C{_disconnected} (a request without its channel is one whose client
        went away).
        """
        found = []
        for folder, _, files in os.walk(PACKAGE):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    with open(path, encoding="utf-8") as f:
                        tree = ast.parse(f.read(), path)
                    for node in ast.walk(tree):
                        if isinstance(node, ast.Attribute) and node.attr == "_disconnected":
                            found.append(f"{path}:{node.lineno}: ._disconnected")
                        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                                and node.func.id == "setattr" and node.args
                                and isinstance(node.args[0], ast.Name)
                                and node.args[0].id == "request"):
                            found.append(f"{path}:{node.lineno}: setattr(request, ...)")
        self.assertEqual(found, [])
