"""
Properties of the TOML config reader (L{oidcproxy.config.load_config},
L{oidcproxy.config.parse_config}) on generated documents: random values in
the known sections, mutations of etc/oidcproxy.toml as data and as text.
Each gives a Config or a ConfigError of one-line problems; never another
exception.
"""

from __future__ import annotations

import copy
import datetime
import os
import sys
from typing import Any, Dict, List

from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from oidcproxy.config import Config, ConfigError, load_config, parse_config

from .helpers import use_example_env
from .props import given, scaled
from .test_prop_durations import assertConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "etc",
                       "oidcproxy.toml")
with open(EXAMPLE, "rb") as _f:
    EXAMPLE_BYTES = _f.read()
EXAMPLE_DATA = tomllib.loads(EXAMPLE_BYTES.decode("utf-8"))

SECTIONS = sorted(k for k, v in EXAMPLE_DATA.items() if isinstance(v, dict))
KEYS = sorted({key for section in EXAMPLE_DATA.values() if isinstance(section, dict)
               for key in section} | {k for k in EXAMPLE_DATA})

# Every kind of value TOML has, with the strings and numbers config keys
# like: durations, sizes, URLs, paths, endpoint strings, hosts.
STRINGS = st.one_of(
    st.sampled_from(["", "30s", "0s", "-1s", "1" * 400 + "s", "10MB", "1GiB", "http://x", "https://h/p",
                     "redis://127.0.0.1:6379/0", "/", "/app", "//x", "tcp:8080", "unix:/x", "cookie",
                     "redis", "none", "session", "Lax", "None", "*.example.com", "example.com.",
                     "127.0.0.1", "::1", "10.0.0.0/8", "groups", "X-User", "Bad Header", "a\x00b",
                     "\n", "é", "Equals(`a`, `b`)", "Equals(", "RS256", "none", "S256", "/dev/null",
                     "http://[::1", "http://h:99999", "http://u:p@h"]),
    st.text(max_size=12),
)
SCALARS = st.one_of(
    STRINGS, st.integers(), st.integers(-(2**63), 2**63 - 1), st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.datetimes(timezones=st.one_of(st.none(), st.just(datetime.timezone.utc))),
    st.dates(), st.times(),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=4),
                                                                 inner, max_size=3),
    max_leaves=6,
)


def walk(data: Any, path: List[Any]) -> List[List[Any]]:
    """Every key path in a TOML value."""
    out = [path]
    if isinstance(data, dict):
        for key, value in data.items():
            out += walk(value, path + [key])
    elif isinstance(data, list):
        for index, value in enumerate(data):
            out += walk(value, path + [index])
    return out


PATHS = walk(EXAMPLE_DATA, [])[1:]


@st.composite
def mutated_data(draw: st.DrawFn) -> Dict[str, Any]:
    """etc/oidcproxy.toml with values replaced, keys deleted or added."""
    data = copy.deepcopy(EXAMPLE_DATA)
    for _ in range(draw(st.integers(1, 5))):
        path = draw(st.sampled_from(PATHS))
        parent: Any = data
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
    return data


GENERATED = st.dictionaries(
    st.sampled_from(KEYS + ["routes"]),
    st.one_of(VALUES, st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=6),
              st.lists(st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=6), max_size=3)),
    max_size=8,
)


@st.composite
def mutated_text(draw: st.DrawFn) -> bytes:
    """etc/oidcproxy.toml with a few bytes changed: mostly a TOML error, sometimes not."""
    text = bytearray(EXAMPLE_BYTES)
    lines = [i for i, b in enumerate(text) if b == 0x0A]
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.sampled_from(lines)) + 1 if draw(st.booleans()) else \
            draw(st.integers(0, len(text)))
        insert = draw(st.sampled_from([b"", b"x", b"=", b"[", b"]", b'"', b"'", b"#", b"\n", b"\x00",
                                       b"\xff", b"[[routes]]\n", b"[oidc]\n", b"a = 1\n",
                                       b'workers = "x"\n', b"1e999"]))
        cut = draw(st.integers(0, 8))
        text[at:at + cut] = insert
    return bytes(text)


class ConfigDocumentTests(SynchronousTestCase):
    def setUp(self) -> None:
        use_example_env(self)

    def assertConfigOrError(self, data: Dict[str, Any]) -> None:
        try:
            config = parse_config(data, "generated.toml")
        except ConfigError as e:
            assertConfigError(self, e)
            return
        self.assertIsInstance(config, Config)

    def test_example_loads(self) -> None:
        """The control: etc/oidcproxy.toml itself gives a Config."""
        self.assertIsInstance(parse_config(copy.deepcopy(EXAMPLE_DATA), EXAMPLE), Config)

    @given(mutated_data())
    @scaled(300)
    def test_mutated_example(self, data: Dict[str, Any]) -> None:
        """etc/oidcproxy.toml with values replaced, deleted or added: Config or ConfigError."""
        self.assertConfigOrError(data)

    @given(GENERATED)
    @scaled(300)
    def test_generated_document(self, data: Dict[str, Any]) -> None:
        """Random values under the known keys and sections: Config or ConfigError."""
        self.assertConfigOrError(data)

    @given(mutated_text())
    def test_mutated_text(self, text: bytes) -> None:
        """etc/oidcproxy.toml with bytes changed, read from a file: Config or ConfigError."""
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(text)
        try:
            config = load_config(path)
        except ConfigError as e:
            assertConfigError(self, e)
            return
        self.assertIsInstance(config, Config)
