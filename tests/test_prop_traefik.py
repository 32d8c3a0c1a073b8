"""
Properties of the Traefik Hub importer (L{oidcproxy.tools.traefik}) on generated
input: mutations of tests/data/traefik/*.yaml as data and as text, and
generated IngressRoute rules. Each gives an ImportResult whose TOML parses,
or the importer's one-line TraefikImportError; never a traceback.
"""

from __future__ import annotations

import copy
import os
import sys
from typing import Any, Dict, List

import yaml
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from oidcproxy.tools.traefik import ImportResult, TraefikImportError, convert, load_documents

from .props import given, scaled
from .test_prop_config import walk

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "traefik")
TEXTS = {}
for _name in ("seed.yaml", "full.yaml", "providers.yaml"):
    with open(os.path.join(DATA, _name), encoding="utf-8") as _f:
        TEXTS[_name] = _f.read()
DOCUMENTS = {name: [d for d in yaml.safe_load_all(text) if d is not None] for name, text in TEXTS.items()}
KEYS = sorted({str(p[-1]) for docs in DOCUMENTS.values() for p in walk(docs, []) if p and
               isinstance(p[-1], str)})

RULES = st.recursive(
    st.builds(lambda f, a: f"{f}(`{a}`)",
              st.sampled_from(["Host", "Path", "PathPrefix", "PathRegexp", "HostRegexp", "Method",
                               "Header", "Query", "ClientIP", "HostSNI", "Foo"]),
              st.sampled_from(["/", "/app", "app.example.com", "*.x", "GET", "/a/{id}", "^/x.*$",
                               "", "`", "a,b", "10.0.0.0/8", "\n"])),
    lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from([" && ", " || ", "&&", "|"]), inner).map("".join),
        inner.map(lambda r: f"!{r}"), inner.map(lambda r: f"({r})")),
    max_leaves=6,
)
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12), RULES,
    st.sampled_from(["urn:k8s:secret:oidc-client:client_id", "urn:k8s:secret:", "urn:k8s:secret:a:b:c",
                     "https://idp.example.com", "http://[::1", "/oidc/callback", "//x", "Lax", "None",
                     "Strict", "true", "1h", "-1", "oidc-login", "apps/oidc-login", "whoami", "80",
                     "websecure", "Middleware", "IngressRoute", "Secret", "Service", "List"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=4),
                                                                 inner, max_size=3),
    max_leaves=6,
)


@st.composite
def mutated_documents(draw: st.DrawFn) -> List[Any]:
    """A sample file's objects with values replaced, keys deleted or added."""
    documents = copy.deepcopy(DOCUMENTS[draw(st.sampled_from(sorted(DOCUMENTS)))])
    paths = walk(documents, [])[1:]
    for _ in range(draw(st.integers(1, 5))):
        path = draw(st.sampled_from(paths))
        parent: Any = documents
        try:
            for step in path[:-1]:
                parent = parent[step]
            how = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
            if how == "replace":
                parent[path[-1]] = draw(VALUES)
            elif how == "delete":
                del parent[path[-1]]
            elif isinstance(parent, dict):
                parent[draw(st.sampled_from(KEYS) | st.text(max_size=5))] = draw(VALUES)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation took the path away
    return documents


@st.composite
def mutated_text(draw: st.DrawFn) -> str:
    """A sample file with a few characters changed: often invalid YAML."""
    text = draw(st.sampled_from(sorted(TEXTS.values())))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        insert = draw(st.sampled_from(["", "x", ":", "-", "- ", "  ", "\n", "\t", "---\n", "&a ", "*a",
                                       "!!python/object:os.system ", "{", "[", "'", '"', "#", "?",
                                       "\x00", "\ufeff", "kind: List\nitems: [1, {}]\n"]))
        cut = draw(st.integers(0, 6))
        text = text[:at] + insert + text[at + cut:]
    return text


class ImporterTests(SynchronousTestCase):
    def assertImported(self, load: Any) -> None:
        """C{load()} and convert give an ImportResult whose TOML parses, or a one-line error."""
        try:
            result = convert(load())
        except TraefikImportError as e:
            self.assertTrue(str(e))
            self.assertEqual(len(str(e).splitlines()), 1, str(e))
            return
        self.assertIsInstance(result, ImportResult)
        tomllib.loads(result.toml)
        for line in result.warnings:
            self.assertEqual(len(line.splitlines()), 1, line)

    def test_samples_import(self) -> None:
        """The control: every sample file imports."""
        for name, text in TEXTS.items():
            self.assertIsInstance(convert(load_documents(text, name)), ImportResult)

    @given(mutated_documents())
    @scaled(250)
    def test_mutated_documents(self, documents: List[Any]) -> None:
        """The samples' objects with values replaced, deleted or added."""
        text = yaml.safe_dump_all(documents)
        self.assertImported(lambda: load_documents(text, "generated.yaml"))

    @given(mutated_text())
    @scaled(250)
    def test_mutated_text(self, text: str) -> None:
        """The samples' text with characters changed."""
        self.assertImported(lambda: load_documents(text, "generated.yaml"))

    @given(st.lists(RULES, min_size=1, max_size=3))
    def test_generated_rules(self, rules: List[str]) -> None:
        """An IngressRoute whose routes have generated match rules."""
        documents: List[Dict[str, Any]] = copy.deepcopy(DOCUMENTS["seed.yaml"])
        for document in documents:
            if document.get("kind") == "IngressRoute":
                template = document["spec"]["routes"][0]
                document["spec"]["routes"] = [dict(template, match=rule) for rule in rules]
        text = yaml.safe_dump_all(documents)
        self.assertImported(lambda: load_documents(text, "generated.yaml"))
