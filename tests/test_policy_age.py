"""
Tests for C{NotOlderThan} in L{oidcproxy.config.policy}: the age of a
NumericDate claim (C{auth_time}) measured against the time of the request,
which the caller passes as C{now}.
"""

# The project targets Python 3.9 and spells optional types Optional[X] (UP007 is
# ignored in pyproject.toml); newer ruff reports them as UP045 instead.

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Tuple

from twisted.trial.unittest import SynchronousTestCase

from oidcproxy.config.policy import Decision, Policy

from .test_policy import KEYCLOAK_ACCESS, KEYCLOAK_ID, _TableTestCase

NOW = 1_700_000_000.0
RULE = "NotOlderThan(`auth_time`, `15m`)"


def at(age: Any) -> Dict[str, Any]:
    """ID token claims signed in C{age} seconds before L{NOW} (C{age} a number)."""
    return {"sub": "alice", "auth_time": NOW - age}


AGES: List[Tuple[str, Mapping[str, Any], Optional[Mapping[str, Any]], float, bool]] = [
    # (rule, ID token claims, access token claims, now, allowed)
    (RULE, {"auth_time": 1_699_999_880}, None, NOW, True),            # 120 s, an int
    (RULE, at(900), None, NOW, True),                                 # exactly 15 minutes
    (RULE, at(900.001), None, NOW, False),
    (RULE, at(1200), None, NOW, False),
    (RULE, at(0), None, NOW, True),
    (RULE, at(-30), None, NOW, True),                                 # the IdP's clock ahead
    (RULE, at(1200), None, NOW - 400, True),                          # the same claims, earlier
    ("NotOlderThan(`auth_time`, `30s`)", at(29.5), None, NOW, True),
    ("NotOlderThan(`auth_time`, `30s`)", at(31), None, NOW, False),
    ("NotOlderThan(`auth_time`, `1h`)", at(3599), None, NOW, True),
    ("NotOlderThan(`auth_time`, `1h30m`)", at(5401), None, NOW, False),
    ("NotOlderThan(`auth_time`, `500ms`)", at(0.25), None, NOW, True),
    ("NotOlderThan(`iat`, `15m`)", {"iat": NOW - 60}, None, NOW, True),
    # not a NumericDate: false
    (RULE, {}, None, NOW, False),
    (RULE, {"auth_time": None}, None, NOW, False),
    (RULE, {"auth_time": True}, None, NOW, False),
    (RULE, {"auth_time": False}, None, NOW, False),
    (RULE, {"auth_time": str(int(NOW))}, None, NOW, False),
    (RULE, {"auth_time": [NOW]}, None, NOW, False),
    (RULE, {"auth_time": {"t": NOW}}, None, NOW, False),
    (RULE, {"auth_time": float("nan")}, None, NOW, False),
    (RULE, {"auth_time": float("inf")}, None, NOW, False),
    (RULE, {"auth_time": float("-inf")}, None, NOW, False),
    (RULE, {"auth_time": 10 ** 400}, None, NOW, False),
    (RULE, {"auth_time": -(10 ** 400)}, None, NOW, False),
    # the access token's claims
    ("NotOlderThan(`access_token.auth_time`, `15m`)", {}, at(60), NOW, True),
    ("NotOlderThan(`access_token.auth_time`, `15m`)", at(60), None, NOW, False),
    ("NotOlderThan(`access_token.auth_time`, `15m`)", at(60), at(1000), NOW, False),
    # with the other functions: step-up rules as the docs write them
    ("Equals(`acr`, `gold`) && NotOlderThan(`auth_time`, `15m`)",
     dict(at(60), acr="gold"), None, NOW, True),
    ("Equals(`acr`, `gold`) && NotOlderThan(`auth_time`, `15m`)",
     dict(at(1000), acr="gold"), None, NOW, False),
    ("OneOf(`acr`, `gold`, `platinum`) && NotOlderThan(`auth_time`, `15m`)",
     dict(at(60), acr="platinum"), None, NOW, True),
    ("OneOf(`acr`, `gold`, `platinum`) && NotOlderThan(`auth_time`, `15m`)",
     dict(at(60), acr="silver"), None, NOW, False),
    ("!NotOlderThan(`auth_time`, `15m`)", at(1000), None, NOW, True),
    ("Contains(`groups`, `admins`) || NotOlderThan(`auth_time`, `15m`)", at(10), None, NOW, True),
]


class EvaluationTests(_TableTestCase):
    """C{NotOlderThan} in L{Policy.evaluate}."""

    def test_ages(self) -> None:
        """Each rule gives the expected decision on the claims at the given time."""
        def check(rule: str, idc: Mapping[str, Any], acc: Optional[Mapping[str, Any]], now: float,
                  expected: bool) -> Optional[str]:
            decision = Policy.parse(rule).evaluate(idc, acc, now=now)
            if decision.allowed is not expected:
                return f"allowed is {decision.allowed}, expected {expected} ({decision.reason})"
            return None

        self.runTable(AGES, check)

    def test_now_decides(self) -> None:
        """
        The same policy and claims are allowed, then denied once C{now} has
        moved past the age: the time comes from the caller, no clock is read.
        """
        policy = Policy.parse(RULE)
        claims = {"auth_time": 1_000_000}
        self.assertTrue(policy.evaluate(claims, now=1_000_900.0).allowed)
        self.assertFalse(policy.evaluate(claims, now=1_000_900.5).allowed)
        self.assertTrue(policy.evaluate(claims, now=1_000_000.0).allowed)

    def test_keycloak(self) -> None:
        """Keycloak's C{auth_time} (an integer) is read like any NumericDate."""
        policy = Policy.parse("NotOlderThan(`auth_time`, `30m`) && Equals(`acr`, `1`)")
        self.assertTrue(policy.evaluate(KEYCLOAK_ID, KEYCLOAK_ACCESS,
                                        now=KEYCLOAK_ID["auth_time"] + 1800).allowed)
        self.assertFalse(policy.evaluate(KEYCLOAK_ID, KEYCLOAK_ACCESS,
                                         now=KEYCLOAK_ID["auth_time"] + 1801).allowed)


class ReasonTests(_TableTestCase):
    """What C{NotOlderThan} says in a denial and in a trace."""

    def test_denyReasons(self) -> None:
        """A denial says how old the claim is and the limit, or what the claim is instead."""
        cases = [
            (RULE, at(1200), None,
             "NotOlderThan(`auth_time`, `15m`) is false: auth_time is 1200s ago, more than 15m"),
            (RULE, at(900.25), None,
             "NotOlderThan(`auth_time`, `15m`) is false: auth_time is 900.25s ago, more than 15m"),
            (RULE, {}, None,
             "NotOlderThan(`auth_time`, `15m`) is false: auth_time is missing"),
            (RULE, {"auth_time": "1700000000"}, None,
             'NotOlderThan(`auth_time`, `15m`) is false: auth_time is "1700000000", not a NumericDate'),
            (RULE, {"auth_time": True}, None,
             "NotOlderThan(`auth_time`, `15m`) is false: auth_time is true, not a NumericDate"),
            (RULE, {"auth_time": float("inf")}, None,
             "NotOlderThan(`auth_time`, `15m`) is false: auth_time is Infinity, not a NumericDate"),
            (RULE, {"auth_time": -1e300}, None,
             "NotOlderThan(`auth_time`, `15m`) is false: auth_time is 1e+300s ago, more than 15m"),
            ("NotOlderThan(`access_token.auth_time`, `1h`)", at(10), None,
             "NotOlderThan(`access_token.auth_time`, `1h`) is false:"
             " access_token.auth_time is missing (no access token)"),
            # !: what was true
            ("!NotOlderThan(`auth_time`, `15m`)", at(120), None,
             "NotOlderThan(`auth_time`, `15m`) is true: auth_time is 120s ago, at most 15m"),
            ("!NotOlderThan(`auth_time`, `15m`)", at(-30), None,
             "NotOlderThan(`auth_time`, `15m`) is true: auth_time is 30s in the future"),
            # &&: the first false term
            ("Equals(`acr`, `gold`) && NotOlderThan(`auth_time`, `15m`)",
             dict(at(3600), acr="gold"), None,
             "NotOlderThan(`auth_time`, `15m`) is false: auth_time is 3600s ago, more than 15m"),
        ]

        def check(rule: str, idc: Mapping[str, Any], acc: Optional[Mapping[str, Any]],
                  reason: str) -> Optional[str]:
            decision = Policy.parse(rule).evaluate(idc, acc, now=NOW)
            if decision != Decision(False, reason):
                return f"got {decision!r}, expected reason {reason!r}"
            return None

        self.runTable(cases, check)

    def test_trace(self) -> None:
        """The trace shows the age at the time given, true or false."""
        policy = Policy.parse("Equals(`acr`, `gold`) && NotOlderThan(`auth_time`, `15m`)")
        claims = {"acr": "gold", "auth_time": NOW - 120}
        self.assertEqual(policy.explain(claims, now=NOW), [
            "Equals(`acr`, `gold`) && NotOlderThan(`auth_time`, `15m`): true",
            '  Equals(`acr`, `gold`): true (acr is "gold")',
            "  NotOlderThan(`auth_time`, `15m`): true (auth_time is 120s ago, at most 15m)",
        ])
        self.assertEqual(policy.explain(claims, now=NOW + 900)[-1],
                         "  NotOlderThan(`auth_time`, `15m`): false (auth_time is 1020s ago, more than 15m)")


class AllowListTests(SynchronousTestCase):
    """The allow-lists take the time too, and do not depend on it."""

    def test_groups_any_time(self) -> None:
        policy = Policy.parse(allowed_groups=["ops"])
        for now in (0.0, NOW, 4e9):
            self.assertTrue(policy.evaluate({"groups": ["ops"]}, now=now).allowed)
            self.assertEqual(policy.explain({"groups": "qa"}, now=now),
                             ['allowed_groups: false (groups is "qa"; allowed: ops)'])
