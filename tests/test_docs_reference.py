"""
The configuration reference (L{oidcproxy.config.keys}, which the docs'
reference page is generated from) against the parser and against
etc/oidcproxy.toml: the same keys, the same defaults.
"""

from __future__ import annotations

import ast
import io
import os
import re
import resource
import sys
from typing import Any, Dict, List, Set

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from oidcproxy import tap
from oidcproxy.config import ConfigError, parse_config, parse_duration, parse_size
from oidcproxy.config.keys import Key, config_keys, format_duration, format_size, toml_value
from oidcproxy.tools.traefik.names import HUB_NAMES, hub_option

from .helpers import use_example_env

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on PyPy 3.9
    import tomli as tomllib

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
EXAMPLE = os.path.join(ROOT, "etc", "oidcproxy.toml")
CONFIG_PACKAGE = os.path.join(ROOT, "oidcproxy", "config")

DEPRECATED = {"oidc.post_logout_redirect_uri"}
"""Keys still read under a former name: the example names them in prose only."""

_COMMENTED = re.compile(r"#\s?(?=\[\[?[a-z_]+(\.[a-z_]+)?\]\]?\s*(#.*)?$|[A-Za-z_][A-Za-z0-9_-]*\s*=\s*\S)")


def uncommented(text: str) -> str:
    """The example with its commented-out C{# key = value} and C{# [table]} lines put back."""
    return "\n".join(_COMMENTED.sub("", line, count=1) if _COMMENTED.match(line) else line
                     for line in text.splitlines())


def read_example() -> Dict[str, Any]:
    with open(EXAMPLE, encoding="utf-8") as f:
        return tomllib.loads(uncommented(f.read()))


def flatten(document: Dict[str, Any], keys: Dict[str, Key]) -> Dict[str, Any]:
    """
    The example's keys by key path, as the reference names them; of the
    C{[[routes]]} entries, each key's first value.
    """
    out: Dict[str, Any] = {}

    def walk(table: Dict[str, Any], prefix: str) -> None:
        for name, value in table.items():
            path = prefix + name
            key = keys.get(path)
            if key is not None and key.is_table and key.kind == "array of tables":
                out.setdefault(path, value)
                for entry in value:
                    walk(entry, path + ".")
            elif key is not None and key.is_table:
                out.setdefault(path, value)
                walk(value, path + ".")
            else:
                out.setdefault(path, value)
    walk(document, "")
    return out


def as_parsed(key: Key, value: Any) -> Any:
    """An example's value as the parser holds its default."""
    if key.kind == "duration":
        return parse_duration(value)
    if key.kind == "size":
        return parse_size(value)
    if key.kind == "list of strings":
        return tuple(value)
    if key.free:
        return tuple((name, (v,) if isinstance(v, str) else tuple(v)) for name, v in value.items())
    return value


class ReferenceTests(SynchronousTestCase):
    """Every key the parser reads is in the reference, with what the reference shows."""

    def setUp(self) -> None:
        self.keys = {k.path: k for k in config_keys()}

    def test_every_key_documented(self):
        """Every key and table says what it does."""
        self.assertEqual([path for path, k in self.keys.items() if not k.doc.strip()], [])

    def test_declared_keys_are_read(self):
        """The recording sees the tables and keys of every part of the parser."""
        for path in ("listen", "upstream.timeout", "routes.path", "routes.websocket_origins",
                     "oidc.issuer", "oidc.introspection_endpoint", "session.cookie_secure",
                     "redis.sentinel", "bearer.hmac_secret", "admin.token", "metrics.listen",
                     "state_cookie.http_only", "csrf.secure", "headers"):
            self.assertIn(path, self.keys)

    def test_every_key_the_parser_asks_for_is_recorded(self):
        """
        Each key name a getter of the config package asks for (a string
        literal passed to a C{Table} getter) is a key of the reference: a
        key read on a branch the recording missed would show here.
        """
        getters = {"string", "boolean", "integer", "duration", "size", "choice", "strings",
                   "secret", "secrets", "optional_boolean", "table", "tables"}
        names: Set[str] = set()
        for filename in os.listdir(CONFIG_PACKAGE):
            if not filename.endswith(".py") or filename in ("reader.py", "keys.py"):
                continue
            with open(os.path.join(CONFIG_PACKAGE, filename), encoding="utf-8") as f:
                tree = ast.parse(f.read())
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                        and node.func.attr in getters and node.args \
                        and isinstance(node.args[0], ast.Constant) \
                        and isinstance(node.args[0].value, str):
                    names.add(node.args[0].value)
        self.assertGreater(len(names), 100)
        recorded = {k.name for k in self.keys.values()}
        self.assertEqual(names - recorded, set())

    def test_every_reference_key_is_accepted(self):
        """A document setting every key of the reference draws no "unknown key" problem."""
        document: Dict[str, Any] = {}
        for key in self.keys.values():
            parts = key.path.split(".")
            table = document
            for part in parts[:-1]:
                table = table.setdefault(part, [{}] if part == "routes" else {})
                if isinstance(table, list):
                    table = table[0]
            if key.kind == "array of tables":
                table.setdefault(parts[-1], [{}])
            elif key.kind == "table":
                table.setdefault(parts[-1], {})
            else:
                table[parts[-1]] = 0  # a wrong type: a problem, yet a known key
        e = self.assertRaises(ConfigError, parse_config, document, "all.toml")
        self.assertEqual([p for p in e.problems if "unknown key" in p], [])

    def test_hub_names_are_keys(self):
        """Every key the Traefik Hub table names is a key of the reference."""
        self.assertEqual(set(HUB_NAMES) - set(self.keys), set())
        self.assertEqual(hub_option("oidc.timeout"), "timeoutSeconds")

    def test_example_hub_names_are_the_tables(self):
        """
        Each "Traefik Hub: name" the example's comments give is a name of the
        table (in any case, as Traefik Hub reads them: clientID is clientId).
        """
        with open(EXAMPLE, encoding="utf-8") as f:
            named = set(re.findall(r"Traefik Hub: ([A-Za-z][A-Za-z.]*[A-Za-z])", f.read()))
        self.assertGreater(len(named), 30)
        table = {name.lower() for name in HUB_NAMES.values()}
        self.assertEqual({name for name in named if name.lower() not in table}, set())

    def test_default_formats_read_back(self):
        """The reference writes durations and sizes in a form the parser reads back."""
        for seconds in (0.0, 0.5, 1.0, 75.0, 90.0, 600.0, 3600.0, 28800.0, 86400.0, 5400.0):
            self.assertEqual(parse_duration(format_duration(seconds)), seconds)
        for size in (0, 500, 1000, 10_000_000, 1_000_000, 1024, 3 * 1000**3):
            self.assertEqual(parse_size(format_size(size)), size)
        self.assertEqual(toml_value("duration", 28800.0), '"8h"')
        self.assertEqual(toml_value("list of strings", ("a", "b")), '["a", "b"]')


class ExampleTests(SynchronousTestCase):
    """etc/oidcproxy.toml lists the reference's keys with the reference's defaults."""

    def setUp(self) -> None:
        self.keys = {k.path: k for k in config_keys()}
        self.example = flatten(read_example(), self.keys)

    def test_example_lists_every_key(self):
        """
        Every key of the reference is in the example (commented out where
        optional), but a route's copies of the [upstream] keys and the
        deprecated names, which the comments name.
        """
        expected = {path for path, k in self.keys.items()
                    if k.inherits is None and path not in DEPRECATED}
        self.assertEqual(sorted(expected - set(self.example)), [])
        with open(EXAMPLE, encoding="utf-8") as f:
            text = f.read()
        for path in DEPRECATED:
            self.assertIn(path.rpartition(".")[2], text)

    def test_example_keys_are_in_the_reference(self):
        """Every key the example lists is a key of the reference."""
        self.assertEqual(sorted(set(self.example) - set(self.keys)), [])

    def test_example_shows_defaults(self):
        """Every key with a literal default shows that default in the example."""
        wrong: List[str] = []
        for path, key in self.keys.items():
            if path not in self.example or key.inherits is not None:
                continue
            if key.default_toml() is None and not (key.free and key.default is not None):
                continue
            if as_parsed(key, self.example[path]) != key.default:
                wrong.append(f"{path}: example {self.example[path]!r}, "
                             f"reference {key.default_words()}")
        self.assertEqual(wrong, [])

    def test_example_passes_check(self):
        """The example as shipped passes C{--check}."""
        use_example_env(self)
        self.patch(resource, "getrlimit", lambda which: (1024, 1 << 20))
        options = tap.Options()
        options.parseOptions(["--config", EXAMPLE, "--check"])
        out, err = io.StringIO(), io.StringIO()
        status = tap.check(options, out, err, reactor=MemoryReactorClock())
        self.assertEqual((status, out.getvalue()), (0, "config OK\n"), err.getvalue())

    def test_uncommenting_knows_every_line(self):
        """The lines put back are the example's keys and tables, no prose."""
        with open(EXAMPLE, encoding="utf-8") as f:
            back = [line for line in f.read().splitlines() if _COMMENTED.match(line)]
        self.assertGreater(len(back), 50)
        for line in back:
            name = re.split(r"[\s=\[\]]+", line.lstrip("# "), maxsplit=1)
            self.assertTrue(any(k.name == name[0] or k.path == name[0] for k in self.keys.values())
                            or name[0] == "" and "[" in line, line)
