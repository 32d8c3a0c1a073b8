"""
Properties of the duration and size parsers (L{oidcproxy.config.parse_duration},
L{oidcproxy.config.parse_size}) and of the config keys that use them, on
generated text.
"""

from __future__ import annotations

import math
from typing import List, Tuple

from hypothesis import example
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from oidcproxy.config import Config, ConfigError, parse_config, parse_duration, parse_size

from .props import given

UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
NUMBERS = st.one_of(st.integers(0, 10**6), st.integers(0, 10**400),
                    st.decimals(0, 10**6, places=3, allow_nan=False, allow_infinity=False))
PARTS = st.lists(st.tuples(NUMBERS, st.sampled_from(sorted(UNITS))), min_size=1, max_size=4)
TEXT = st.one_of(
    PARTS.map(lambda parts: "".join(f"{n}{u}" for n, u in parts)),
    st.text(alphabet="0123456789.msdh -+eE_\u0663\uff11", max_size=12),
    st.text(max_size=8),
)
MINIMAL = {"routes": [{"path": "/", "upstream": "http://127.0.0.1:9000", "auth": "none"}]}


def assertOneLine(case: SynchronousTestCase, error: Exception) -> None:
    text = str(error)
    case.assertTrue(text)
    case.assertEqual(len(text.splitlines()), 1, text)


def assertConfigError(case: SynchronousTestCase, error: ConfigError) -> None:
    """Every problem is one line naming its key."""
    case.assertTrue(error.problems)
    for line in error.lines():
        case.assertEqual(len(line.splitlines()), 1, line)
        case.assertTrue(line.startswith("config: "), line)


def canonical(milliseconds: int) -> str:
    """The shortest spelling of a whole number of milliseconds: 1d2h3m4s5ms, 0s."""
    out: List[str] = []
    rest = milliseconds
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):
        count, rest = divmod(rest, size)
        if count:
            out.append(f"{count}{unit}")
    return "".join(out) or "0s"


class DurationTests(SynchronousTestCase):
    @given(TEXT)
    @example("1" * 400 + "s")
    def test_parses_or_value_error(self, text: str) -> None:
        """
        Any text: a finite, non-negative number of seconds, or ValueError
        with a one-line message; nothing else.
        """
        try:
            seconds = parse_duration(text)
        except ValueError as e:
            assertOneLine(self, e)
            return
        self.assertIsInstance(seconds, float)
        self.assertTrue(math.isfinite(seconds), text)
        self.assertGreaterEqual(seconds, 0.0)

    @given(st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from(sorted(UNITS))), min_size=1,
                    max_size=4))
    def test_sum_of_parts(self, parts: List[Tuple[int, str]]) -> None:
        """A concatenation of number-unit parts is the sum of the parts."""
        text = "".join(f"{n}{u}" for n, u in parts)
        expected = sum(n * UNITS[u] for n, u in parts)
        self.assertTrue(math.isclose(parse_duration(text), expected, rel_tol=1e-12), text)

    @given(st.integers(0, 400 * 86_400_000))
    def test_canonical_round_trip(self, milliseconds: int) -> None:
        """A whole number of milliseconds, spelled canonically, parses back to itself."""
        seconds = parse_duration(canonical(milliseconds))
        self.assertEqual(round(seconds * 1000), milliseconds)
        self.assertEqual(canonical(round(seconds * 1000)), canonical(milliseconds))

    @given(TEXT, st.sampled_from([("session", "lifetime"), ("session", "idle_timeout"),
                                  ("", "keepalive_timeout"), ("", "drain_timeout"),
                                  ("upstream", "timeout"), ("state_cookie", "max_age")]))
    @example("1" * 400 + "s", ("session", "lifetime"))
    def test_config_key(self, text: str, where: Tuple[str, str]) -> None:
        """A duration key of the config: a finite value, or a one-line ConfigError."""
        section, key = where
        data = dict(MINIMAL)
        if section:
            data[section] = {key: text}
        else:
            data[key] = text
        try:
            config = parse_config(data, "generated.toml")
        except ConfigError as e:
            assertConfigError(self, e)
            return
        self.assertIsInstance(config, Config)
        value = getattr(getattr(config, section) if section else config, key)
        self.assertTrue(math.isfinite(value), (text, value))


class SizeTests(SynchronousTestCase):
    @given(st.one_of(st.text(alphabet="0123456789 KMGiB.-", max_size=12), st.text(max_size=6),
                     st.integers(-(10**6), 10**30), st.booleans()))
    def test_parses_or_value_error(self, text: object) -> None:
        """Any value: a non-negative byte count, or ValueError with a one-line message."""
        try:
            size = parse_size(text)  # type: ignore[arg-type]
        except ValueError as e:
            assertOneLine(self, e)
            return
        self.assertIsInstance(size, int)
        self.assertGreaterEqual(size, 0)
