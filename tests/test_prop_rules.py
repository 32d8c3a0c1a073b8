"""
Properties of the claim-rule language (L{oidcproxy.config.policy}) on generated
rules and claims: the parser parses or raises L{RuleSyntaxError} with a
position, the canonical form parses back to the same rule, and evaluating a
rule never raises, whatever the claims.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple

from hypothesis import example
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from oidcproxy.config.policy import Decision, Policy, RuleSyntaxError

from .props import given, scaled

CLAIM_NAMES = ["groups", "email", "email_verified", "sub", "realm_access.roles", "a\\.b", "a\\\\b",
               "access_token.scope", "id_token.sub", "access_token.realm_access.roles", "x.y.z",
               "n", "é", "a b", "", " a", "a.", ".a", "a..b", "a\\", "a\\x", "`", '"', "\\"]
VALUES = st.one_of(st.sampled_from(["admins", "", "true", "false", "42", "1.5", "1e3", "-0", "x",
                                    " ", ",", "`", '"', "\\", "\\\"", "é", "a.b", "@example.com",
                                    "15m", "30s", "1h30m", "500ms", "0s", "2d"]),
                   st.text(max_size=8))
FUNCTIONS = {"Equals": 2, "Prefix": 2, "Contains": 2, "SplitContains": 3, "OneOf": 2,
             "NotOlderThan": 2}
NOW = st.floats(0, 4e9)
"""The time of a request: any from the epoch to past 2096."""
BLANKS = st.sampled_from(["", " ", "  ", "\t", "\n", "\u00a0"])


def quoted(text: str, style: str) -> str:
    if style == "`" and "`" not in text:
        return f"`{text}`"
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@st.composite
def calls(draw: st.DrawFn) -> str:
    name = draw(st.sampled_from(sorted(FUNCTIONS) + ["Equal", "equals", "Foo"]))
    count = FUNCTIONS.get(name, 2)
    if name == "OneOf":
        count += draw(st.integers(0, 3))
    if draw(st.integers(0, 9)) == 0:
        count = draw(st.integers(0, 4))
    args = [draw(st.sampled_from(CLAIM_NAMES))] + [draw(VALUES) for _ in range(count - 1)]
    blank = draw(BLANKS)
    style = draw(st.sampled_from(["`", '"']))
    return f"{name}{blank}({blank}" + f"{blank},{blank}".join(quoted(a, style) for a in args) + ")"


RULES = st.recursive(
    calls(),
    lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from(["&&", "||"]), BLANKS, inner).map(
            lambda t: f"{t[0]}{t[2]}{t[1]}{t[2]}{t[3]}"),
        inner.map(lambda r: f"!{r}"),
        st.tuples(BLANKS, inner).map(lambda t: f"({t[0]}{t[1]}{t[0]})"),
    ),
    max_leaves=8,
)


@st.composite
def mutated(draw: st.DrawFn) -> str:
    """A rule with a few characters deleted, inserted or replaced."""
    text = draw(RULES)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        what = draw(st.sampled_from(["(", ")", "!", "&", "|", "&&", "||", "`", '"', "\\", ",", " ",
                                     "x", "\x00", ""]))
        cut = draw(st.integers(0, 2))
        text = text[:at] + what + text[at + cut:]
    return text


ANY_RULE = st.one_of(RULES, mutated(), st.text(max_size=40),
                     st.integers(60, 70).map(lambda n: "(" * n + "Equals(`a`, `b`)" + ")" * n),
                     st.integers(60, 70).map(lambda n: "!" * n + "Equals(`a`, `b`)"))

KEYS = st.one_of(st.sampled_from(["groups", "email", "email_verified", "sub", "realm_access",
                                  "roles", "a.b", "a\\b", "scope", "x", "y", "z", "n", "é", "a b"]),
                 st.text(max_size=5))
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-(10**40), 10**40),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
    st.sampled_from(["admins", "true", "42", "1.5", "a,b", "x@example.com", "a@b@c", "@x", "x@.y",
                     "u@Example.COM.", "x" * 100_000]),
)
CLAIMS = st.dictionaries(KEYS, st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=12), max_size=6)
LISTS = st.lists(st.sampled_from(["admins", "x", "", "Example.com", "example.com.", "a@b.c", "é"]),
                 max_size=3)


def assertRuleError(case: SynchronousTestCase, error: RuleSyntaxError, rule: str) -> None:
    """
    The error has a message and a position inside (or just past) the rule,
    the rule on a line of its own and a caret under that position.
    """
    case.assertTrue(error.message)
    case.assertEqual(error.rule, rule)
    case.assertTrue(0 <= error.position <= len(rule), (error.position, len(rule)))
    lines = str(error).split("\n")
    case.assertEqual(len(lines), 3, str(error))
    case.assertTrue(lines[2].endswith("^"))
    # The caret stands under the offending character of the rule's line.
    case.assertEqual(lines[2].index("^") - 4, error.position)
    case.assertEqual(len(lines[1]) - 4, len(rule))


class ParserTests(SynchronousTestCase):
    @given(ANY_RULE)
    @scaled(300)
    @example("(" * 65 + "Equals(`a`, `b`)" + ")" * 65)
    def test_parses_or_rule_error(self, rule: str) -> None:
        """Any text: a Policy, or RuleSyntaxError with a position; nothing else."""
        try:
            Policy.parse(rule)
        except RuleSyntaxError as e:
            assertRuleError(self, e, rule)

    @given(RULES)
    @scaled(300)
    def test_canonical_round_trip(self, rule: str) -> None:
        """
        A rule's canonical form parses, to the same canonical form (so the
        same tree: the canonical form shows every claim path and value).
        """
        try:
            policy = Policy.parse(rule)
        except RuleSyntaxError as e:
            assertRuleError(self, e, rule)
            return
        canonical = policy.rule
        assert canonical is not None
        self.assertEqual(Policy.parse(canonical).rule, canonical)


class EvaluationTests(SynchronousTestCase):
    @given(RULES, CLAIMS, st.one_of(st.none(), CLAIMS), LISTS, LISTS, LISTS, st.booleans(), NOW)
    @scaled(300)
    def test_evaluation_never_raises(self, rule: str, id_claims: Dict[str, Any],
                                     access: Optional[Dict[str, Any]], groups: List[str],
                                     emails: List[str], domains: List[str], verify: bool,
                                     now: float) -> None:
        """
        Evaluating a parsed rule and allow-lists on any JSON-like claims gives
        a Decision with a short reason, and the same answer from its
        canonical form; explain gives text lines; nothing raises.
        """
        try:
            policy = Policy.parse(rule, allowed_groups=groups, allowed_emails=emails,
                                  allowed_email_domains=domains, require_email_verified=verify)
        except RuleSyntaxError:
            return
        decision = policy.evaluate(id_claims, access, now=now)
        self.assertIsInstance(decision, Decision)
        self.assertLessEqual(len(decision.reason), 200)
        self.assertTrue(decision.reason)
        lines = policy.explain(id_claims, access, now=now)
        self.assertTrue(all(isinstance(line, str) for line in lines))
        if policy.rule is not None:
            again = Policy.parse(policy.rule, allowed_groups=groups, allowed_emails=emails,
                                 allowed_email_domains=domains, require_email_verified=verify)
            self.assertEqual(again.evaluate(id_claims, access, now=now).allowed, decision.allowed)


DURATIONS = st.sampled_from([("15m", 900.0), ("30s", 30.0), ("1h30m", 5400.0), ("500ms", 0.5),
                             ("2d", 172800.0)])


@st.composite
def dated(draw: st.DrawFn) -> Tuple[Any, float]:
    """A claim value and the time of the request: mostly numbers near that time."""
    now = draw(NOW)
    value = draw(st.one_of(
        SCALARS,
        st.floats(-1e4, 2e5).map(lambda ago: now - ago),
        st.integers(-(10**4), 2 * 10**5).map(lambda ago: int(now) - ago),
    ))
    return value, now


class NotOlderThanTests(SynchronousTestCase):
    @given(dated(), DURATIONS)
    @scaled(300)
    @example((True, 1e9), ("15m", 900.0))
    @example((10**400, 1e9), ("15m", 900.0))
    @example((float("nan"), 1e9), ("15m", 900.0))
    def test_age_arithmetic(self, claim: Tuple[Any, float], duration: Tuple[str, float]) -> None:
        """
        C{NotOlderThan} is true exactly for a finite number that is not a
        boolean and is at most the duration before C{now}; its reason and
        its trace say why, in one line.
        """
        value, now = claim
        text, seconds = duration
        policy = Policy.parse(f"NotOlderThan(`auth_time`, `{text}`)")
        expected = False
        if not isinstance(value, bool) and isinstance(value, (int, float)):
            try:
                ago = now - float(value)
            except OverflowError:
                ago = math.inf
            expected = math.isfinite(ago) and ago <= seconds
        decision = policy.evaluate({"auth_time": value}, now=now)
        self.assertIs(decision.allowed, expected)
        (line,) = policy.explain({"auth_time": value}, now=now)
        self.assertTrue(line.startswith(f"NotOlderThan(`auth_time`, `{text}`): "
                                        f"{'true' if expected else 'false'} (auth_time is "), line)
        self.assertNotIn("\n", line)
        if not expected:
            self.assertTrue(decision.reason.startswith(
                f"NotOlderThan(`auth_time`, `{text}`) is false: auth_time is "), decision.reason)
            self.assertLessEqual(len(decision.reason), 200)
