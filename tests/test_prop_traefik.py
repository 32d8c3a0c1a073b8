"""
Properties of the Traefik Hub importer (L{oidcproxy.tools.traefik}) on generated
input: mutations of tests/data/traefik/*.yaml as data and as text, and
generated IngressRoute rules. Each gives an ImportResult whose TOML parses,
or the importer's one-line TraefikImportError; never a traceback. And
several generated middlewares (any names, clashing callbacks) give a
configuration the parser accepts, each route on its middleware's provider.
"""

from __future__ import annotations

import copy
import os
import sys
from typing import Any, Dict, List

import yaml
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from oidcproxy.config import parse_config
from oidcproxy.tools.traefik import ImportResult, TraefikImportError, convert, load_documents

from .fakes import SECRET
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


MIDDLEWARE_NAMES = st.text(min_size=0, max_size=70) | st.sampled_from(
    ["staff", "partners", "a.b", "a_b", "a-b", "provider", "x" * 64, "ü", "oidc", "b"])
REDIRECTS = st.sampled_from([None, "/oidc/callback", "/oidc/callback/b", "/cb", "/cb/x",
                             "https://apps.example.com/cb", "https://other.example.com/cb",
                             "apps.example.com/oidc/callback", "/logout"])


@st.composite
def several_middlewares(draw: st.DrawFn) -> List[Dict[str, Any]]:
    """1 to 5 OIDC middlewares (any names, two namespaces, callbacks that may clash), each used."""
    count = draw(st.integers(1, 5))
    refs = draw(st.lists(st.tuples(MIDDLEWARE_NAMES, st.sampled_from(["apps", "other"])),
                         min_size=count, max_size=count, unique=True))
    documents: List[Dict[str, Any]] = []
    routes = []
    for i, (name, namespace) in enumerate(refs):
        oidc = {"issuer": "https://idp.example.com", "clientId": f"client-{i}",
                "clientSecret": "urn:k8s:secret:oidc:secret"}
        redirect = draw(REDIRECTS)
        if redirect is not None:
            oidc["redirectUrl"] = redirect
        if i == 0:
            oidc["logoutUrl"] = "/logout"
            login = draw(st.sampled_from([None, "/login", "/oidc/callback/b", "/cb"]))
            if login is not None:
                oidc["loginUrl"] = login
        documents.append({"kind": "Middleware", "metadata": {"name": name, "namespace": namespace},
                          "spec": {"plugin": {"oidc": oidc}}})
        routes.append({"match": f"PathPrefix(`/r{i}`)", "kind": "Rule",
                       "services": [{"name": "app", "port": 80}],
                       "middlewares": [{"name": name, "namespace": namespace}]})
    documents.append({"kind": "IngressRoute", "metadata": {"name": "ir", "namespace": "apps"},
                      "spec": {"routes": draw(st.permutations(routes))}})
    return documents


class SeveralMiddlewaresTests(SynchronousTestCase):
    def setUp(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        for name in ("oidc-secret", "session-key"):
            with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
                f.write(SECRET + "\n")
        self.patch(os, "environ", dict(os.environ, CREDENTIALS_DIRECTORY=directory))

    @given(several_middlewares())
    @scaled(100)
    def test_accepted_by_the_parser(self, documents: List[Dict[str, Any]]) -> None:
        """
        Whatever the middlewares' names and callbacks, the output is a
        configuration the parser accepts: a valid, unique provider name for
        each further middleware, no callback path twice, and each route
        wired to its middleware's provider.
        """
        result = convert(load_documents(yaml.safe_dump_all(documents), "generated.yaml"))
        config = parse_config(tomllib.loads(result.toml), "generated.toml")
        middlewares = [d for d in documents if d["kind"] == "Middleware"]
        self.assertEqual(len(config.providers), len(middlewares) - 1)
        routes = {r.path: r.provider for r in config.routes}
        first_path = documents[-1]["spec"]["routes"][0]["match"][len("PathPrefix(`"):-2]
        self.assertIsNone(routes[first_path])
        self.assertEqual(sorted(p for p in routes.values() if p is not None),
                         sorted(name for name, _ in config.providers))
