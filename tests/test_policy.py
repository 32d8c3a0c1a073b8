"""
Tests for L{oidcproxy.config.policy}.
"""

# The project targets Python 3.9 and spells optional types Optional[X] (UP007 is
# ignored in pyproject.toml); newer ruff reports them as UP045 instead.

from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import attr
from twisted.trial.unittest import SynchronousTestCase

from oidcproxy.config import policy as policy_module
from oidcproxy.config.policy import MAX_DEPTH, Decision, Policy, RuleSyntaxError

NOW = 1900000100.0
"""The time of the requests: the Keycloak sign-in below was 1100 seconds before."""

# -- claims shaped like what real identity providers send ------------------------

KEYCLOAK_ID: Dict[str, Any] = {
    "iss": "https://sso.example.com/realms/main",
    "sub": "8a1f0c2e-5d6b-4c1e-9f0a-3b2c1d0e9f8a",
    "aud": "oidcproxy",
    "azp": "oidcproxy",
    "exp": 1900000000,
    "iat": 1899999700,
    "auth_time": 1899999000,
    "acr": "1",
    "sid": "4d1e0f2a-aaaa-bbbb-cccc-0123456789ab",
    "scope": "openid email profile",
    "email": "alice@example.com",
    "email_verified": True,
    "preferred_username": "alice",
    "name": "Alice \u00c6r\u00f8sk\u00f8bing",
    "realm_access": {"roles": ["default-roles-main", "offline_access", "admin"]},
    "resource_access": {
        "app": {"roles": ["editor", "viewer"]},
        "account": {"roles": ["manage-account", "view-profile"]},
    },
    "groups": ["/staff", "/staff/eng"],
    "tenant_level": 3,
    "quota": 2.0,
    "ratio": 0.75,
    "beta": False,
    "nickname": None,
    "address": {"country": "DE", "locality": "K\u00f6ln"},
    "levels": [1, 2, 30],
    "flags": [True],
    "mixed": ["x", 7, False, {"k": "v"}, ["nested"]],
    "\u540d\u524d": "\u30a2\u30ea\u30b9",
    "csv_roles": "reader,writer,,admin",
}

KEYCLOAK_ACCESS: Dict[str, Any] = {
    "scope": "openid email profile api:read api:write",
    "realm_access": {"roles": ["admin"]},
    "resource_access": {"api": {"roles": ["reader"]}},
    "azp": "oidcproxy",
    "typ": "Bearer",
}

OKTA_ID: Dict[str, Any] = {
    "sub": "00u1abcdEFGHijkl0x7",
    "email": "Bob.Smith@Corp.Example.com",
    "email_verified": True,
    "groups": ["Everyone", "Okta Admins", "team:payments"],
    "https://example.com/roles": ["billing", "support"],
    "amr": ["pwd", "mfa", "hwk"],
    "ver": 1,
}

OKTA_ACCESS: Dict[str, Any] = {
    "scp": ["openid", "email", "payments.read"],
    "cid": "0oa1bcdEFGhij2k3l4m5",
    "uid": "00u1abcdEFGHijkl0x7",
    "ver": 1,
}

ENTRA_ID: Dict[str, Any] = {
    "oid": "00000000-0000-0000-66f3-3332eca7ea81",
    "tid": "72f988bf-86f1-41af-91ab-2d7cd011db47",
    "preferred_username": "carol@contoso.onmicrosoft.com",
    "email": "carol@contoso.com",
    "roles": ["Task.Read", "Task.Write"],
    "groups": ["c4a1e6f8-2b3d-4e5f-8a9b-0c1d2e3f4a5b"],
    "wids": ["b79fbf4d-3ef9-4689-8143-76b194e85509"],
}

ENTRA_ACCESS: Dict[str, Any] = {
    "scp": "User.Read Files.ReadWrite.All",
    "roles": ["Reports.Read.All"],
    "ver": "2.0",
}


class _TableTestCase(SynchronousTestCase):
    def runTable(self, cases: Sequence[Tuple[Any, ...]], check: Callable[..., Optional[str]]) -> None:
        """
        Run C{check(*case)} for every case; it returns None when the case
        passes and a description of the mismatch otherwise. All mismatches
        are reported together.
        """
        failures = []
        for case in cases:
            problem = check(*case)
            if problem is not None:
                failures.append(f"{case[0]!r}: {problem}")
        if failures:
            self.fail(f"{len(failures)} of {len(cases)} cases failed:\n" + "\n".join(failures))


# -- the parser ------------------------------------------------------------------

A = "Equals(`a`, `1`)"
B = "Equals(`b`, `2`)"
C = "Equals(`c`, `3`)"
D = "Equals(`d`, `4`)"
RA = "Equals(id['a'], '1')"
RB = "Equals(id['b'], '2')"
RC = "Equals(id['c'], '3')"
RD = "Equals(id['d'], '4')"

VALID: List[Tuple[str, str]] = [
    # every function
    ("Equals(`email`, `alice@example.com`)", "Equals(id['email'], 'alice@example.com')"),
    ("Prefix(`sub`, `auth0|`)", "Prefix(id['sub'], 'auth0|')"),
    ("Contains(`groups`, `admins`)", "Contains(id['groups'], 'admins')"),
    ("SplitContains(`scope`, ` `, `api:read`)", "SplitContains(id['scope'], ' ', 'api:read')"),
    ("SplitContains(`roles`, `, `, `admin`)", "SplitContains(id['roles'], ', ', 'admin')"),
    ("OneOf(`role`, `admin`)", "OneOf(id['role'], 'admin')"),
    ("OneOf(`role`, `admin`, `operator`, `owner`)", "OneOf(id['role'], 'admin', 'operator', 'owner')"),
    ("NotOlderThan(`auth_time`, `15m`)", "NotOlderThan(id['auth_time'], '15m')"),
    ("NotOlderThan(`access_token.auth_time`, `1h30m`)", "NotOlderThan(access['auth_time'], '1h30m')"),
    ('NotOlderThan("iat", "500ms")', "NotOlderThan(id['iat'], '500ms')"),
    # whitespace
    ("Equals(`a`,`1`)", RA),
    ("  Equals( `a` ,\n\t`1` )  ", RA),
    ("Equals (`a`, `1`)", RA),
    ("Equals(`a`,\u00a0`1`)", RA),
    ("\n  Contains(`groups`, `g`)\n  && OneOf(`x`, `1`, `2`)\n",
     "And(Contains(id['groups'], 'g'), OneOf(id['x'], '1', '2'))"),
    # claim paths
    ("Contains(`realm_access.roles`, `admin`)", "Contains(id['realm_access', 'roles'], 'admin')"),
    ("Contains(`resource_access.app.roles`, `editor`)",
     "Contains(id['resource_access', 'app', 'roles'], 'editor')"),
    ("Contains(`https://example\\.com/roles`, `billing`)",
     "Contains(id['https://example.com/roles'], 'billing')"),
    ("Equals(`a\\\\b`, `x`)", "Equals(id['a\\\\b'], 'x')"),
    ("Equals(`a\\.`, `x`)", "Equals(id['a.'], 'x')"),
    ("Equals(`first name`, `Alice`)", "Equals(id['first name'], 'Alice')"),
    ("Equals(`\u540d\u524d`, `\u30a2\u30ea\u30b9`)", "Equals(id['\u540d\u524d'], '\u30a2\u30ea\u30b9')"),
    # token prefixes
    ("Equals(`access_token.scope`, `x`)", "Equals(access['scope'], 'x')"),
    ("Equals(`id_token.email`, `x`)", "Equals(id['email'], 'x')"),
    ("Contains(`access_token.realm_access.roles`, `admin`)",
     "Contains(access['realm_access', 'roles'], 'admin')"),
    ("Equals(`access_token`, `x`)", "Equals(id['access_token'], 'x')"),
    ("Equals(`id_token.access_token.x`, `y`)", "Equals(id['access_token', 'x'], 'y')"),
    ("Equals(`access_token\\.x`, `y`)", "Equals(id['access_token.x'], 'y')"),
    # double-quoted strings
    ('Equals("email", "a@example.com")', "Equals(id['email'], 'a@example.com')"),
    ('Equals("quote", "say \\"hi\\"")', "Equals(id['quote'], 'say \"hi\"')"),
    ('Equals("path", "C:\\\\dir")', "Equals(id['path'], 'C:\\\\dir')"),
    ('Equals("https://example\\\\.com/roles", "x")', "Equals(id['https://example.com/roles'], 'x')"),
    ('Equals("https://example\\.com/roles", "x")', "Equals(id['https://example.com/roles'], 'x')"),
    ('Equals("a", `1`)', RA),
    ('Equals(`a`, `has "quotes"`)', "Equals(id['a'], 'has \"quotes\"')"),
    ('Equals(`a`, "has `backticks`")', "Equals(id['a'], 'has `backticks`')"),
    ("Equals(`a`, ``)", "Equals(id['a'], '')"),
    ('Equals(`a`, "")', "Equals(id['a'], '')"),
    # precedence and grouping
    (f"{A} || {B} && {C}", f"Or({RA}, And({RB}, {RC}))"),
    (f"{A} && {B} || {C}", f"Or(And({RA}, {RB}), {RC})"),
    (f"({A} || {B}) && {C}", f"And(Or({RA}, {RB}), {RC})"),
    (f"!{A} && {B}", f"And(Not({RA}), {RB})"),
    (f"!{A} || {B}", f"Or(Not({RA}), {RB})"),
    (f"!({A} && {B})", f"Not(And({RA}, {RB}))"),
    (f"!!{A}", f"Not(Not({RA}))"),
    (f"! ! {A}", f"Not(Not({RA}))"),
    (f"{A} && {B} && {C}", f"And({RA}, {RB}, {RC})"),
    (f"{A} || {B} || {C}", f"Or({RA}, {RB}, {RC})"),
    (f"{A} && ({B} && {C})", f"And({RA}, And({RB}, {RC}))"),
    (f"(({A}))", RA),
    (f"((({A} || {B})))", f"Or({RA}, {RB})"),
    (f"{A}||{B}&&!{C}||{D}", f"Or({RA}, And({RB}, Not({RC})), {RD})"),
    (f"{A}&&{B}", f"And({RA}, {RB})"),
    (f"!({A}) || !{B}", f"Or(Not({RA}), Not({RB}))"),
    (f"({A} || {B}) && !({C} || !{D})", f"And(Or({RA}, {RB}), Not(Or({RC}, Not({RD}))))"),
    ("(" * MAX_DEPTH + A + ")" * MAX_DEPTH, RA),
    ("!" * MAX_DEPTH + A, "Not(" * MAX_DEPTH + RA + ")" * MAX_DEPTH),
]

INVALID: List[Tuple[str, int, str]] = [
    ("", 0, "empty rule"),
    ("   ", 0, "empty rule"),
    ("Equal(`a`, `b`)", 0, "unknown function 'Equal' (did you mean Equals?)"),
    ("equals(`a`, `b`)", 0, "unknown function 'equals' (did you mean Equals?)"),
    ("Matches(`a`, `b`)", 0, "unknown function 'Matches'"),
    ("Contains(`a`, `b`, `c`)", 19, "Contains takes 2 arguments, got 3"),
    ("Contains(`a`, `b`, `c`, `d`)", 19, "Contains takes 2 arguments, got 4"),
    ("Equals(`a`)", 10, "Equals takes 2 arguments, got 1"),
    ("Equals()", 7, "Equals takes 2 arguments, got 0"),
    ("SplitContains(`a`, `b`)", 22, "SplitContains takes 3 arguments, got 2"),
    ("OneOf(`a`)", 9, "OneOf takes at least 2 arguments, got 1"),
    ("OneOf()", 6, "OneOf takes at least 2 arguments, got 0"),
    ("Equals(`a` `b`)", 11, "expected `,` or `)`, got a string"),
    ("Equals(`a`.`b`)", 10, "expected `,` or `)`, got `.`"),
    ("Equals(`a`, `b`", 15, "expected `,` or `)`, got end of rule"),
    ("Equals(`a`, `b)", 12, "unterminated string"),
    ('Equals("a, `b`)', 7, "unterminated string"),
    ('Equals("a\\", `b`)', 7, "unterminated string"),
    ("Equals(`a`, `b`) x", 17, "expected `&&`, `||` or end of rule, got 'x'"),
    ("Equals(`a`, `b`) Equals(`c`, `d`)", 17, "expected `&&`, `||` or end of rule, got 'Equals'"),
    ("Equals(`a`, `b`) !Equals(`c`, `d`)", 17, "expected `&&`, `||` or end of rule, got `!`"),
    ("Equals(`a`, `b`) and Equals(`c`, `d`)", 17, "expected `&&`, `||` or end of rule, got 'and'"),
    ("Contains(`groups`, `admins`) == true", 29, "expected `&&`, `||` or end of rule, got `=`"),
    ("Equals(`a`, `b`) & Equals(`c`, `d`)", 17, "expected `&&`, got a single `&`"),
    ("Equals(`a`, `b`) | Equals(`c`, `d`)", 17, "expected `||`, got a single `|`"),
    ("Equals(`a`, `b`) &&& Equals(`c`, `d`)", 19, "expected a function call, `(` or `!`, got `&`"),
    ("Equals(`a`, `b`) || || Equals(`c`, `d`)", 20, "expected a function call, `(` or `!`, got `||`"),
    ("Equals(`a`, `b`) &&", 19, "expected a function call, `(` or `!`, got end of rule"),
    ("&& Equals(`a`, `b`)", 0, "expected a function call, `(` or `!`, got `&&`"),
    ("()", 1, "expected a function call, `(` or `!`, got `)`"),
    ("!", 1, "expected a function call, `(` or `!`, got end of rule"),
    ("admins", 0, "expected a function call, got bare word 'admins'"),
    ("Equals", 6, "expected `(` after Equals, got end of rule"),
    ("Equals `a`, `b`", 7, "expected `(` after Equals, got a string"),
    ("Equals(`a`, `b`))", 16, "unmatched `)`"),
    ("(Equals(`a`, `b`)", 17, "expected `)`, got end of rule"),
    ("(Equals(`a`, `b`) x)", 18, "expected `&&`, `||` or `)`, got 'x'"),
    ("Equals(a, `b`)", 7, "expected a string in backticks or double quotes, got 'a'"),
    ("Equals(`a`, 1)", 12, "expected a string in backticks or double quotes, got '1'"),
    ("Equals(`a`,, `b`)", 11, "expected a string in backticks or double quotes, got `,`"),
    ("Equals(`a`, `b`,)", 16, "expected a string in backticks or double quotes, got `)`"),
    ("Equals(", 7, "expected a string in backticks or double quotes, got end of rule"),
    ("Equals('a', 'b')", 7, "expected a string in backticks or double quotes, got `'`"),
    ("Equals(\u2018a\u2019, \u2018b\u2019)", 7,
     "expected a string in backticks or double quotes, got `\u2018`"),
    ("Equals(``, `b`)", 7, "empty claim name"),
    ('Equals("", `b`)', 7, "empty claim name"),
    ("Equals(` a`, `x`)", 7, "claim name starts or ends with whitespace"),
    ("Equals(`a `, `x`)", 7, "claim name starts or ends with whitespace"),
    ("Equals(`a..b`, `x`)", 10, "empty part in claim name"),
    ("Equals(`.a`, `x`)", 8, "empty part in claim name"),
    ("Equals(`a.`, `x`)", 9, "empty part in claim name"),
    ("Equals(`access_token.`, `x`)", 20, "empty part in claim name"),
    ('Equals("\\"a.", "x")', 11, "empty part in claim name"),
    ("Equals(`a\\`, `x`)", 9, "claim name ends with a lone `\\`"),
    ("Equals(`a\\b`, `x`)", 9, "unknown escape `\\b` in claim name (only `\\.` and `\\\\`)"),
    ("SplitContains(`scope`, ``, `x`)", 23, "SplitContains separator must not be empty"),
    ("NotOlderThan(`auth_time`)", 24, "NotOlderThan takes 2 arguments, got 1"),
    ("NotOlderThan(`auth_time`, `15m`, `1h`)", 33, "NotOlderThan takes 2 arguments, got 3"),
    ("notolderthan(`auth_time`, `15m`)", 0,
     "unknown function 'notolderthan' (did you mean NotOlderThan?)"),
    ("NotOlderThan(`auth_time`, `soon`)", 26,
     "NotOlderThan takes a duration more than zero, like `15m`, `30s` or `1h`, not `soon`"),
    ("NotOlderThan(`auth_time`, `15`)", 26,
     "NotOlderThan takes a duration more than zero, like `15m`, `30s` or `1h`, not `15`"),
    ("NotOlderThan(`auth_time`, ` 15m`)", 26,
     "NotOlderThan takes a duration more than zero, like `15m`, `30s` or `1h`, not ` 15m`"),
    ('NotOlderThan(`auth_time`, "")', 26,
     "NotOlderThan takes a duration more than zero, like `15m`, `30s` or `1h`, not ``"),
    ("NotOlderThan(`auth_time`, `0s`)", 26,
     "NotOlderThan takes a duration more than zero, like `15m`, `30s` or `1h`, not `0s`"),
    ("NotOlderThan(`auth_time`, `1\n5m`)", 26,
     'NotOlderThan takes a duration more than zero, like `15m`, `30s` or `1h`, not "1\\n5m"'),
    ("NotOlderThan(`auth_time`, `-5m`)", 26,
     "NotOlderThan takes a duration more than zero, like `15m`, `30s` or `1h`, not `-5m`"),
    ("Equals(`a`, `b`)\n&& (Contains(`g`, `x`)\n|| Prefix(`b`))", 53, "Prefix takes 2 arguments, got 1"),
    ("(" * (MAX_DEPTH + 1) + A + ")" * (MAX_DEPTH + 1), MAX_DEPTH,
     f"rule is nested too deeply (more than {MAX_DEPTH} levels)"),
    ("!" * (MAX_DEPTH + 1) + A, MAX_DEPTH, f"rule is nested too deeply (more than {MAX_DEPTH} levels)"),
]


class ParserTests(_TableTestCase):
    """L{Policy.parse} and L{RuleSyntaxError}."""

    def test_tableSizes(self) -> None:
        """The tables are as large as the module's specification asks."""
        self.assertGreaterEqual(len(VALID), 40)
        self.assertGreaterEqual(len(INVALID), 30)

    def test_valid(self) -> None:
        """Each valid rule compiles to the expected tree."""
        def check(rule: str, expected: str) -> Optional[str]:
            try:
                got = repr(Policy.parse(rule)._rule)
            except RuleSyntaxError as e:
                return f"raised {e.message!r} at {e.position}"
            return None if got == expected else f"got {got}, expected {expected}"

        self.runTable(VALID, check)

    def test_canonicalRoundTrip(self) -> None:
        """
        L{Policy.rule} is a rule that compiles to the same tree, and is its own
        canonical form.
        """
        def check(rule: str, expected: str) -> Optional[str]:
            canonical = Policy.parse(rule).rule
            assert canonical is not None
            again = Policy.parse(canonical)
            if repr(again._rule) != expected:
                return f"{canonical!r} compiles to {again._rule!r}"
            if again.rule != canonical:
                return f"{canonical!r} is rendered as {again.rule!r}"
            return None

        self.runTable(VALID, check)

    def test_canonicalText(self) -> None:
        """The canonical text has parentheses exactly where the structure needs them."""
        cases = [
            (f"{A}||{B}&&{C}", f"{A} || {B} && {C}"),
            (f"({A}||{B})&&{C}", f"({A} || {B}) && {C}"),
            (f"{A} && ({B} && {C})", f"{A} && ({B} && {C})"),
            (f"{A} || ({B} || {C})", f"{A} || ({B} || {C})"),
            (f"(({A}))", A),
            (f"!({A} && {B})", f"!({A} && {B})"),
            (f"!(!{A})", f"!!{A}"),
            ('Equals("a", "x`y")', 'Equals(`a`, "x`y")'),
            ('Equals("a", "x`\\"\\\\")', 'Equals(`a`, "x`\\"\\\\")'),
            ("Equals(`https://example\\.com/roles`, `x`)", "Equals(`https://example\\.com/roles`, `x`)"),
            ('Equals("https://example\\\\.com/roles", "x")', "Equals(`https://example\\.com/roles`, `x`)"),
        ]

        def check(rule: str, expected: str) -> Optional[str]:
            got = Policy.parse(rule).rule
            return None if got == expected else f"got {got!r}, expected {expected!r}"

        self.runTable(cases, check)

    def test_invalid(self) -> None:
        """Each invalid rule raises L{RuleSyntaxError} at the expected position with the expected message."""
        def check(rule: str, position: int, message: str) -> Optional[str]:
            try:
                Policy.parse(rule)
            except RuleSyntaxError as e:
                if e.rule != rule:
                    return f"rule attribute is {e.rule!r}"
                if (e.position, e.message) != (position, message):
                    return f"got ({e.position}, {e.message!r}), expected ({position}, {message!r})"
                return None
            return "parsed"

        self.runTable(INVALID, check)

    def test_isValueError(self) -> None:
        """L{RuleSyntaxError} is a L{ValueError}, so a caller may catch either."""
        self.assertRaises(ValueError, Policy.parse, "Equals(`a`)")

    def test_str(self) -> None:
        """
        C{str()} gives the message and the position, then the rule on a line
        of its own and a caret under the offending character on the next.
        """
        e = self.assertRaises(RuleSyntaxError, Policy.parse, "Equals(`a`, `b`) & Equals(`c`, `d`)")
        self.assertEqual(
            str(e),
            "expected `&&`, got a single `&` at position 17:\n"
            "    Equals(`a`, `b`) & Equals(`c`, `d`)\n"
            + " " * (4 + 17) + "^",
        )

    def test_strMultiLine(self) -> None:
        """
        Line breaks and tabs in the rule are shown as spaces, so the rule
        stays on one line and the caret still points at the right character.
        """
        e = self.assertRaises(RuleSyntaxError, Policy.parse, "Equals(`a`, `b`)\n\t&& Nope(`x`)")
        self.assertEqual(e.position, 21)
        self.assertEqual(
            str(e),
            "unknown function 'Nope' at position 21:\n"
            "    Equals(`a`, `b`)  && Nope(`x`)\n"
            + " " * (4 + 21) + "^",
        )

    def test_strAtEnd(self) -> None:
        """An error at the end of the rule puts the caret just after its last character."""
        e = self.assertRaises(RuleSyntaxError, Policy.parse, "(Equals(`a`, `b`)")
        self.assertEqual(
            str(e),
            "expected `)`, got end of rule at position 17:\n"
            "    (Equals(`a`, `b`)\n"
            + " " * (4 + 17) + "^",
        )

    def test_notAString(self) -> None:
        """A rule that is not a string is a programming error: L{TypeError}."""
        self.assertRaises(TypeError, Policy.parse, b"Equals(`a`, `b`)")


# -- evaluation ------------------------------------------------------------------

KC = (KEYCLOAK_ID, KEYCLOAK_ACCESS)
KC_NO_AT = (KEYCLOAK_ID, None)
OKTA = (OKTA_ID, OKTA_ACCESS)
ENTRA = (ENTRA_ID, ENTRA_ACCESS)

EVALUATION: List[Tuple[str, Tuple[Mapping[str, Any], Optional[Mapping[str, Any]]], bool]] = [
    # Equals on strings: exact and case-sensitive
    ("Equals(`email`, `alice@example.com`)", KC, True),
    ("Equals(`email`, `Alice@example.com`)", KC, False),
    ("Equals(`email`, `alice@example.co`)", KC, False),
    ("Equals(`preferred_username`, `alice`)", KC, True),
    ("Equals(`name`, `Alice \u00c6r\u00f8sk\u00f8bing`)", KC, True),
    ("Equals(`\u540d\u524d`, `\u30a2\u30ea\u30b9`)", KC, True),
    ("Equals(`address.country`, `DE`)", KC, True),
    ("Equals(`address.locality`, `K\u00f6ln`)", KC, True),
    # Equals on numbers and booleans: their JSON text
    ("Equals(`email_verified`, `true`)", KC, True),
    ("Equals(`email_verified`, `True`)", KC, False),
    ("Equals(`email_verified`, `1`)", KC, False),
    ("Equals(`beta`, `false`)", KC, True),
    ("Equals(`tenant_level`, `3`)", KC, True),
    ("Equals(`tenant_level`, `3.0`)", KC, False),
    ("Equals(`quota`, `2`)", KC, True),
    ("Equals(`ratio`, `0.75`)", KC, True),
    ("Equals(`exp`, `1900000000`)", KC, True),
    ("Equals(`ver`, `1`)", OKTA, True),
    ("Equals(`ver`, `2.0`)", ENTRA, False),  # the ID token has no ver
    ("Equals(`access_token.ver`, `2.0`)", ENTRA, True),
    # Equals on other types and missing claims: false
    ("Equals(`nickname`, `null`)", KC, False),
    ("Equals(`nickname`, `None`)", KC, False),
    ("Equals(`address`, `DE`)", KC, False),
    ("Equals(`groups`, `/staff`)", KC, False),
    ("Equals(`missing`, ``)", KC, False),
    ("Equals(`realm_access.missing`, `x`)", KC, False),
    ("Equals(`email.domain`, `example.com`)", KC, False),
    # Prefix
    ("Prefix(`email`, `alice@`)", KC, True),
    ("Prefix(`email`, `bob@`)", KC, False),
    ("Prefix(`groups`, `/staff/`)", KC, True),
    ("Prefix(`groups`, `/admins`)", KC, False),
    ("Prefix(`tenant_level`, `3`)", KC, False),
    ("Prefix(`sub`, `00u`)", OKTA, True),
    ("Prefix(`missing`, ``)", KC, False),
    # Contains: substring of a string, element of an array
    ("Contains(`email`, `@example.`)", KC, True),
    ("Contains(`email`, `@evil.`)", KC, False),
    ("Contains(`groups`, `/staff`)", KC, True),
    ("Contains(`groups`, `staff`)", KC, False),
    ("Contains(`realm_access.roles`, `admin`)", KC, True),
    ("Contains(`realm_access.roles`, `Admin`)", KC, False),
    ("Contains(`resource_access.app.roles`, `editor`)", KC, True),
    ("Contains(`resource_access.app.roles`, `manage-account`)", KC, False),
    ("Contains(`resource_access.account.roles`, `manage-account`)", KC, True),
    ("Contains(`groups`, `Okta Admins`)", OKTA, True),
    ("Contains(`https://example\\.com/roles`, `billing`)", OKTA, True),
    ("Contains(`https://example.com/roles`, `billing`)", OKTA, False),
    ("Contains(`amr`, `mfa`)", OKTA, True),
    ("Contains(`roles`, `Task.Write`)", ENTRA, True),
    ("Contains(`levels`, `2`)", KC, True),
    ("Contains(`levels`, `3`)", KC, False),
    ("Contains(`levels`, `2.0`)", KC, False),
    ("Contains(`flags`, `true`)", KC, True),
    ("Contains(`flags`, `1`)", KC, False),
    ("Contains(`mixed`, `7`)", KC, True),
    ("Contains(`mixed`, `false`)", KC, True),
    ("Contains(`mixed`, `nested`)", KC, False),
    ("Contains(`mixed`, `v`)", KC, False),
    ("Contains(`tenant_level`, `3`)", KC, False),
    ("Contains(`address`, `DE`)", KC, False),
    ("Contains(`realm_access`, `roles`)", KC, False),
    # SplitContains
    ("SplitContains(`scope`, ` `, `email`)", KC, True),
    ("SplitContains(`scope`, ` `, `mail`)", KC, False),
    ("SplitContains(`scope`, ` `, `openid email`)", KC, False),
    ("SplitContains(`access_token.scope`, ` `, `api:write`)", KC, True),
    ("SplitContains(`access_token.scp`, ` `, `Files.ReadWrite.All`)", ENTRA, True),
    ("SplitContains(`access_token.scp`, ` `, `Files.Read`)", ENTRA, False),
    ("SplitContains(`access_token.scp`, ` `, `payments.read`)", OKTA, False),  # an array
    ("SplitContains(`csv_roles`, `,`, `admin`)", KC, True),
    ("SplitContains(`csv_roles`, `,`, ``)", KC, True),
    ("SplitContains(`csv_roles`, `,`, `read`)", KC, False),
    ("SplitContains(`csv_roles`, `,,`, `admin`)", KC, True),
    ("SplitContains(`csv_roles`, `,,`, `writer`)", KC, False),
    ("SplitContains(`csv_roles`, `,`, `writer,`)", KC, False),
    ("SplitContains(`tenant_level`, `,`, `3`)", KC, False),
    # OneOf
    ("OneOf(`preferred_username`, `bob`, `alice`)", KC, True),
    ("OneOf(`preferred_username`, `bob`, `carol`)", KC, False),
    ("OneOf(`realm_access.roles`, `owner`, `admin`)", KC, True),
    ("OneOf(`realm_access.roles`, `owner`, `operator`)", KC, False),
    ("OneOf(`tenant_level`, `2`, `3`)", KC, True),
    ("OneOf(`email_verified`, `yes`, `true`)", KC, True),
    ("OneOf(`levels`, `30`, `40`)", KC, True),
    ("OneOf(`address`, `DE`, `FR`)", KC, False),
    ("OneOf(`missing`, `a`, `b`)", KC, False),
    ("OneOf(`groups`, `Everyone`)", OKTA, True),
    # the token prefixes
    ("Contains(`access_token.realm_access.roles`, `admin`)", KC, True),
    ("Contains(`access_token.resource_access.api.roles`, `reader`)", KC, True),
    ("Contains(`access_token.realm_access.roles`, `admin`)", KC_NO_AT, False),
    ("!Contains(`access_token.realm_access.roles`, `admin`)", KC_NO_AT, True),
    ("Equals(`id_token.email`, `alice@example.com`)", KC, True),
    ("Equals(`access_token.email`, `alice@example.com`)", KC, False),
    ("Contains(`access_token.scp`, `payments.read`)", OKTA, True),
    ("Equals(`access_token.typ`, `Bearer`)", KC, True),
    ("Equals(`typ`, `Bearer`)", KC, False),
    # operators
    ("!Equals(`missing`, `x`)", KC, True),
    ("!Contains(`groups`, `/staff`)", KC, False),
    ("!!Contains(`groups`, `/staff`)", KC, True),
    ("Contains(`groups`, `/admins`) || Contains(`realm_access.roles`, `admin`)", KC, True),
    ("Contains(`groups`, `/admins`) || Contains(`realm_access.roles`, `owner`)", KC, False),
    ("Contains(`groups`, `/staff`) && Equals(`email_verified`, `true`)", KC, True),
    ("Contains(`groups`, `/staff`) && Equals(`beta`, `true`)", KC, False),
    # A || B && C is A || (B && C)
    ("Equals(`acr`, `1`) || Equals(`beta`, `true`) && Equals(`missing`, `x`)", KC, True),
    ("(Equals(`acr`, `1`) || Equals(`beta`, `true`)) && Equals(`missing`, `x`)", KC, False),
    # !A && B is (!A) && B
    ("!Equals(`beta`, `true`) && Equals(`acr`, `1`)", KC, True),
    ("!(Equals(`beta`, `false`) && Equals(`acr`, `1`))", KC, False),
    ("(Contains(`groups`, `team:payments`) || Contains(`groups`, `Okta Admins`))"
     " && SplitContains(`email`, `@`, `Corp.Example.com`) && !Contains(`amr`, `sms`)", OKTA, True),
]


class EvaluationTests(_TableTestCase):
    """L{Policy.evaluate} for rules."""

    def test_tableSize(self) -> None:
        self.assertGreaterEqual(len(EVALUATION), 60)

    def test_evaluation(self) -> None:
        """Each rule gives the expected decision on the claims."""
        def check(rule: str, claims: Tuple[Mapping[str, Any], Optional[Mapping[str, Any]]],
                  expected: bool) -> Optional[str]:
            decision = Policy.parse(rule).evaluate(*claims, now=NOW)
            if decision.allowed is not expected:
                return f"allowed is {decision.allowed}, expected {expected} ({decision.reason})"
            return None

        self.runTable(EVALUATION, check)

    def test_allowedIsConstant(self) -> None:
        """An allowed request gets one shared L{Decision}, with the reason C{allowed}."""
        p = Policy.parse("Contains(`groups`, `/staff`)")
        first = p.evaluate(KEYCLOAK_ID, now=NOW)
        self.assertEqual(first, Decision(True, "allowed"))
        self.assertIs(p.evaluate(KEYCLOAK_ID, now=NOW), first)
        self.assertIs(Policy.parse().evaluate({}, now=NOW), first)

    def test_decisionFrozen(self) -> None:
        """L{Decision} is immutable."""
        decision = Decision(False, "no")
        self.assertRaises(attr.exceptions.FrozenInstanceError, setattr, decision, "allowed", True)

    def test_denyReasons(self) -> None:
        """A denial names the part that decided and what the claim was."""
        cases = [
            ("Contains(`groups`, `admins`)", {"groups": ["staff"]}, None,
             'Contains(`groups`, `admins`) is false: groups is ["staff"]'),
            ("Contains(`groups`, `admins`)", {}, None,
             "Contains(`groups`, `admins`) is false: groups is missing"),
            ("Equals(`email_verified`, `true`)", {"email_verified": "true "}, None,
             'Equals(`email_verified`, `true`) is false: email_verified is "true "'),
            ("Contains(`access_token.scope`, `api`)", {}, None,
             "Contains(`access_token.scope`, `api`) is false:"
             " access_token.scope is missing (no access token)"),
            ("Contains(`access_token.scope`, `api`)", {}, {"scope": 3},
             "Contains(`access_token.scope`, `api`) is false: access_token.scope is 3"),
            # &&: the first false term
            ("Equals(`a`, `1`) && Equals(`b`, `2`) && Equals(`c`, `3`)", {"a": "1", "b": 2, "c": "x"}, None,
             "Equals(`c`, `3`) is false: c is \"x\""),
            # ||: every term
            ("Equals(`a`, `1`) || Equals(`b`, `2`)", {"a": 1.5, "b": None}, None,
             "Equals(`a`, `1`) is false: a is 1.5; Equals(`b`, `2`) is false: b is null"),
            # !: what was true
            ("!Contains(`groups`, `guests`)", {"groups": ["guests"]}, None,
             'Contains(`groups`, `guests`) is true: groups is ["guests"]'),
            ("!(Equals(`a`, `1`) && Equals(`b`, `2`))", {"a": "1", "b": "2"}, None,
             'Equals(`a`, `1`) is true: a is "1"; Equals(`b`, `2`) is true: b is "2"'),
            ("!(Equals(`a`, `1`) || Equals(`b`, `2`))", {"a": "0", "b": "2"}, None,
             'Equals(`b`, `2`) is true: b is "2"'),
            ("!!Equals(`a`, `1`)", {"a": "0"}, None, 'Equals(`a`, `1`) is false: a is "0"'),
            ("Equals(`address`, `DE`)", {"address": {"country": "DE"}}, None,
             'Equals(`address`, `DE`) is false: address is {"country": "DE"}'),
            ("Equals(`n`, `x`)", {"n": "line\nbreak\u2028"}, None,
             'Equals(`n`, `x`) is false: n is "line\\nbreak\u2028"'),
        ]

        def check(rule: str, idc: Mapping[str, Any], acc: Optional[Mapping[str, Any]],
                  reason: str) -> Optional[str]:
            decision = Policy.parse(rule).evaluate(idc, acc, now=NOW)
            if decision != Decision(False, reason):
                return f"got {decision!r}, expected reason {reason!r}"
            return None

        self.runTable(cases, check)

    def test_reasonIsShort(self) -> None:
        """
        A claim is shown in at most 60 characters and a whole reason in at most
        200, however large the claims and the rule are.
        """
        p = Policy.parse("Contains(`groups`, `admins`)")
        decision = p.evaluate({"groups": [f"group-{i}" for i in range(1000)]}, now=NOW)
        self.assertEqual(
            decision.reason,
            'Contains(`groups`, `admins`) is false: groups is '
            '["group-0", "group-1", "group-2", "group-3", "group-4", "gr\u2026',
        )
        rule = " || ".join(f"Equals(`claim{i}`, `value{i}`)" for i in range(20))
        decision = Policy.parse(rule).evaluate({f"claim{i}": "x" * 1000 for i in range(20)}, now=NOW)
        self.assertFalse(decision.allowed)
        self.assertEqual(len(decision.reason), 200)
        self.assertTrue(decision.reason.startswith(
            'Equals(`claim0`, `value0`) is false: claim0 is "xxxx'), decision.reason)
        self.assertTrue(decision.reason.endswith("\u2026"), decision.reason)

    def test_unrenderableClaim(self) -> None:
        """A claim value that is not JSON (an embedding application's own claims) is shown by its repr."""
        decision = Policy.parse("Equals(`when`, `x`)").evaluate({"when": {1, 2}}, now=NOW)
        self.assertEqual(decision.reason, "Equals(`when`, `x`) is false: when is \"{1, 2}\"")

    def test_mappingTypes(self) -> None:
        """Claims may be any mapping, and arrays tuples as well as lists."""
        from types import MappingProxyType

        claims = MappingProxyType({"realm_access": MappingProxyType({"roles": ("admin",)})})
        for rule in ("Contains(`realm_access.roles`, `admin`)", "OneOf(`realm_access.roles`, `x`, `admin`)",
                     "Prefix(`realm_access.roles`, `adm`)"):
            self.assertTrue(Policy.parse(rule).evaluate(claims, now=NOW).allowed, rule)

    def test_splitContainsAgreesWithSplit(self) -> None:
        """
        C{SplitContains} gives the same answer as C{value in claim.split(sep)},
        for one- and many-character separators and values that hold the
        separator.
        """
        claims = ["", ",", ",,", "a", "a,b", ",a", "a,", "a,,b", "ab,a", "b,ab", "a,b,a", "aa", "a, b",
                  "x::y:::z", ":x"]
        seps = [",", ", ", "::", ":"]
        values = ["", "a", "b", "ab", "a,b", ",", "x", "y", ":y", "z", "y:"]
        mismatches = []
        for claim in claims:
            for sep in seps:
                for value in values:
                    rule = f"SplitContains(`s`, `{sep}`, `{value}`)"
                    got = Policy.parse(rule).evaluate({"s": claim}, now=NOW).allowed
                    if got != (value in claim.split(sep)):
                        mismatches.append((claim, sep, value, got))
        self.assertEqual(mismatches, [])

    def test_noParsingWhenEvaluating(self) -> None:
        """
        Evaluating does no parsing: with the parser broken after the policy
        is built, a ten-term rule still evaluates 10,000 times, correctly.
        """
        rule = (
            "Contains(`realm_access.roles`, `admin`) && Equals(`email_verified`, `true`)"
            " && (OneOf(`preferred_username`, `alice`, `bob`) || Prefix(`email`, `root@`))"
            " && !Contains(`groups`, `/banned`) && SplitContains(`scope`, ` `, `email`)"
            " && Equals(`address.country`, `DE`) && !Equals(`beta`, `true`)"
            " && Contains(`access_token.scope`, `api:read`) && OneOf(`tenant_level`, `3`, `4`)"
        )
        p = Policy.parse(rule)

        class Broken:
            def __init__(self, *args: object) -> None:
                raise AssertionError("parsed while evaluating")

        self.patch(policy_module, "_Parser", Broken)
        self.assertRaises(AssertionError, Policy.parse, "Equals(`a`, `b`)")
        denied = dict(KEYCLOAK_ID, groups=["/banned"])
        allowed = 0
        for i in range(10000):
            if p.evaluate(KEYCLOAK_ID if i % 2 else denied, KEYCLOAK_ACCESS, now=NOW).allowed:
                allowed += 1
        self.assertEqual(allowed, 5000)
        self.assertEqual(
            p.evaluate(denied, KEYCLOAK_ACCESS, now=NOW).reason,
            'Contains(`groups`, `/banned`) is true: groups is ["/banned"]',
        )


# -- allow-lists -----------------------------------------------------------------

BOTH = {"allowed_emails": ["contractor@gmail.com"], "allowed_email_domains": ["example.com"]}

ALLOW_LISTS: List[Tuple[str, Dict[str, Any], Dict[str, Any], bool, str]] = [
    # allowed_groups: the groups claim, a string or an array, exactly
    ("group in array", {"allowed_groups": ["admins", "ops"]}, {"groups": ["staff", "ops"]}, True, "allowed"),
    ("group as string", {"allowed_groups": ["admins"]}, {"groups": "admins"}, True, "allowed"),
    ("group string no substring", {"allowed_groups": ["admin"]}, {"groups": "admins"}, False,
     'allowed_groups: groups is "admins"; allowed: admin'),
    ("group case", {"allowed_groups": ["admins", "ops"]}, {"groups": ["Admins"]}, False,
     'allowed_groups: groups is ["Admins"]; allowed: admins, ops'),
    ("group missing", {"allowed_groups": ["admins"]}, {}, False,
     "allowed_groups: groups is missing; allowed: admins"),
    ("group object", {"allowed_groups": ["admins"]}, {"groups": {"admins": True}}, False,
     'allowed_groups: groups is {"admins": true}; allowed: admins'),
    ("group keycloak path", {"allowed_groups": ["/staff/eng"]}, KEYCLOAK_ID, True, "allowed"),
    ("group numeric", {"allowed_groups": ["42"]}, {"groups": [42]}, True, "allowed"),
    ("group okta", {"allowed_groups": ["Okta Admins"]}, OKTA_ID, True, "allowed"),
    # allowed_emails: case-insensitive, verified
    ("email listed", {"allowed_emails": ["Alice@Example.com"]}, {"email": "alice@EXAMPLE.com",
                                                                "email_verified": True}, True, "allowed"),
    ("email not listed", {"allowed_emails": ["alice@example.com", "bob@example.com"]},
     {"email": "carol@example.com", "email_verified": True}, False,
     "allowed_emails: carol@example.com is not one of alice@example.com, bob@example.com"),
    ("email unverified", {"allowed_emails": ["alice@example.com"]},
     {"email": "alice@example.com", "email_verified": False}, False,
     "allowed_emails: alice@example.com is not verified (email_verified is false)"),
    ("email verification off", {"allowed_emails": ["alice@example.com"], "require_email_verified": False},
     {"email": "alice@example.com"}, True, "allowed"),
    ("email missing", {"allowed_emails": ["alice@example.com"]}, {"email_verified": True}, False,
     "allowed_emails: email is missing"),
    ("email not a string", {"allowed_emails": ["alice@example.com"]}, {"email": ["alice@example.com"]},
     False, 'allowed_emails: email is ["alice@example.com"], not a string'),
    # allowed_email_domains: on a dot boundary
    ("domain", {"allowed_email_domains": ["example.com"]}, {"email": "a@example.com", "email_verified": True},
     True, "allowed"),
    ("subdomain", {"allowed_email_domains": ["example.com"]},
     {"email": "a@eu.example.com", "email_verified": True}, True, "allowed"),
    ("deep subdomain", {"allowed_email_domains": ["example.com"]},
     {"email": "a@x.eu.example.com", "email_verified": True}, True, "allowed"),
    ("no dot boundary", {"allowed_email_domains": ["example.com"]},
     {"email": "a@badexample.com", "email_verified": True}, False,
     "allowed_email_domains: a@badexample.com is not in example.com"),
    ("suffix after", {"allowed_email_domains": ["example.com"]},
     {"email": "a@example.com.evil", "email_verified": True}, False,
     "allowed_email_domains: a@example.com.evil is not in example.com"),
    ("two @", {"allowed_email_domains": ["example.com"]},
     {"email": "a@@example.com", "email_verified": True}, False,
     "allowed_email_domains: a@@example.com is not a valid email address"),
    ("@ in local part", {"allowed_email_domains": ["example.com"]},
     {"email": "a@evil.com@example.com", "email_verified": True}, False,
     "allowed_email_domains: a@evil.com@example.com is not a valid email address"),
    ("no domain", {"allowed_email_domains": ["example.com"]}, {"email": "a@", "email_verified": True}, False,
     "allowed_email_domains: a@ is not a valid email address"),
    ("no local part", {"allowed_email_domains": ["example.com"]},
     {"email": "@example.com", "email_verified": True}, False,
     "allowed_email_domains: @example.com is not a valid email address"),
    ("no @", {"allowed_email_domains": ["example.com"]}, {"email": "example.com", "email_verified": True},
     False, "allowed_email_domains: example.com is not a valid email address"),
    ("uppercase domain", {"allowed_email_domains": ["example.com"]},
     {"email": "Alice@EXAMPLE.COM", "email_verified": True}, True, "allowed"),
    ("uppercase configured", {"allowed_email_domains": ["Example.COM."]},
     {"email": "alice@eu.example.com", "email_verified": True}, True, "allowed"),
    ("trailing dot", {"allowed_email_domains": ["example.com"]},
     {"email": "a@example.com.", "email_verified": True}, False,
     "allowed_email_domains: a@example.com. is not a valid email address"),
    ("leading dot", {"allowed_email_domains": ["example.com"]},
     {"email": "a@.example.com", "email_verified": True}, False,
     "allowed_email_domains: a@.example.com is not a valid email address"),
    ("empty label", {"allowed_email_domains": ["example.com"]},
     {"email": "a@eu..example.com", "email_verified": True}, False,
     "allowed_email_domains: a@eu..example.com is not a valid email address"),
    ("trailing space", {"allowed_email_domains": ["example.com"]},
     {"email": "a@example.com ", "email_verified": True}, False,
     'allowed_email_domains: "a@example.com " is not in example.com'),
    ("control character", {"allowed_email_domains": ["example.com"]},
     {"email": "a@example.com\r\nX: y", "email_verified": True}, False,
     'allowed_email_domains: "a@example.com\\r\\nX: y" is not in example.com'),
    ("second domain", {"allowed_email_domains": ["example.com", "example.org"]},
     {"email": "a@example.org", "email_verified": True}, True, "allowed"),
    ("unicode domain", {"allowed_email_domains": ["b\u00fccher.example"]},
     {"email": "a@B\u00dcCHER.example", "email_verified": True}, True, "allowed"),
    # email_verified: only JSON true counts
    ("verified missing", {"allowed_email_domains": ["example.com"]}, {"email": "a@example.com"}, False,
     "allowed_email_domains: a@example.com is not verified (email_verified is missing)"),
    ("verified false", {"allowed_email_domains": ["example.com"]},
     {"email": "a@example.com", "email_verified": False}, False,
     "allowed_email_domains: a@example.com is not verified (email_verified is false)"),
    ("verified string", {"allowed_email_domains": ["example.com"]},
     {"email": "a@example.com", "email_verified": "true"}, False,
     'allowed_email_domains: a@example.com is not verified (email_verified is "true")'),
    ("verified one", {"allowed_email_domains": ["example.com"]},
     {"email": "a@example.com", "email_verified": 1}, False,
     "allowed_email_domains: a@example.com is not verified (email_verified is 1)"),
    ("verified not required, false",
     {"allowed_email_domains": ["example.com"], "require_email_verified": False},
     {"email": "a@example.com", "email_verified": False}, True, "allowed"),
    ("verified not required, missing",
     {"allowed_email_domains": ["example.com"], "require_email_verified": False},
     {"email": "a@example.com"}, True, "allowed"),
    ("verification off still needs a domain",
     {"allowed_email_domains": ["example.com"], "require_email_verified": False},
     {"email": "a@evil.com"}, False, "allowed_email_domains: a@evil.com is not in example.com"),
    # allowed_emails OR allowed_email_domains
    ("listed outside domain", BOTH,
     {"email": "contractor@gmail.com", "email_verified": True}, True, "allowed"),
    ("domain with emails", BOTH,
     {"email": "a@example.com", "email_verified": True}, True, "allowed"),
    ("neither", BOTH,
     {"email": "a@evil.com", "email_verified": True}, False,
     "allowed_emails or allowed_email_domains: a@evil.com is not one of contractor@gmail.com"
     " and not in example.com"),
    ("listed but malformed", {"allowed_emails": ["a@@example.com"], "allowed_email_domains": ["example.com"]},
     {"email": "a@@example.com", "email_verified": True}, True, "allowed"),
    # groups AND email AND rule, in that order
    ("all pass", {"allowed_groups": ["ops"], "allowed_email_domains": ["example.com"],
                  "rule": "Equals(`acr`, `1`)"},
     {"groups": ["ops"], "email": "a@example.com", "email_verified": True, "acr": "1"}, True, "allowed"),
    ("group fails first", {"allowed_groups": ["ops"], "allowed_email_domains": ["example.com"],
                           "rule": "Equals(`acr`, `1`)"},
     {"groups": [], "email": "a@evil.com", "acr": "0"}, False, "allowed_groups: groups is []; allowed: ops"),
    ("email fails second", {"allowed_groups": ["ops"], "allowed_email_domains": ["example.com"],
                            "rule": "Equals(`acr`, `1`)"},
     {"groups": ["ops"], "email": "a@evil.com", "acr": "0"}, False,
     "allowed_email_domains: a@evil.com is not in example.com"),
    ("rule fails last", {"allowed_groups": ["ops"], "allowed_email_domains": ["example.com"],
                         "rule": "Equals(`acr`, `1`)"},
     {"groups": ["ops"], "email": "a@example.com", "email_verified": True, "acr": "0"}, False,
     'Equals(`acr`, `1`) is false: acr is "0"'),
    ("groups read from the ID token only", {"allowed_groups": ["ops"]}, {}, False,
     "allowed_groups: groups is missing; allowed: ops"),
]


class AllowListTests(_TableTestCase):
    """The allow-lists of L{Policy.parse}."""

    def test_allowLists(self) -> None:
        """Each case gives the expected decision and reason."""
        def check(name: str, kwargs: Dict[str, Any], claims: Dict[str, Any], allowed: bool,
                  reason: str) -> Optional[str]:
            p = Policy.parse(**kwargs)
            decision = p.evaluate(claims, {"groups": ["ops"]}, now=NOW)
            if decision != Decision(allowed, reason):
                return f"got {decision!r}, expected ({allowed}, {reason!r})"
            return None

        self.runTable(ALLOW_LISTS, check)

    def test_alwaysAllows(self) -> None:
        """Only a policy with no rule and no allow-list always allows."""
        self.assertTrue(Policy.parse().always_allows)
        self.assertTrue(Policy.parse(None, allowed_groups=(), allowed_emails=[]).always_allows)
        self.assertTrue(Policy.parse().evaluate({}, now=NOW).allowed)
        self.assertEqual(Policy.parse().explain({}, now=NOW), [])
        self.assertFalse(Policy.parse("Equals(`a`, `b`)").always_allows)
        self.assertFalse(Policy.parse(allowed_groups=["g"]).always_allows)
        self.assertFalse(Policy.parse(allowed_emails=["a@example.com"]).always_allows)
        self.assertFalse(Policy.parse(allowed_email_domains=["example.com"]).always_allows)

    def test_stringInsteadOfList(self) -> None:
        """A single string where a list belongs is a L{TypeError}, not a list of one-letter groups."""
        self.assertRaises(TypeError, Policy.parse, allowed_groups="admins")
        self.assertRaises(TypeError, Policy.parse, allowed_emails="a@example.com")
        self.assertRaises(TypeError, Policy.parse, allowed_email_domains="example.com")
        self.assertRaises(TypeError, Policy.parse, allowed_groups=["admins", 3])

    def test_rule(self) -> None:
        """L{Policy.rule} is the canonical rule text, or None."""
        self.assertIsNone(Policy.parse(allowed_groups=["g"]).rule)
        self.assertEqual(Policy.parse("Equals(`a`,`b`)&&!Prefix(\"c\",\"d\")").rule,
                         "Equals(`a`, `b`) && !Prefix(`c`, `d`)")


# -- explain ---------------------------------------------------------------------

NESTED = (
    "Contains(`groups`, `admins`) || (Equals(`email_verified`, `true`)"
    " && !Prefix(`email`, `guest`) && OneOf(`access_token.realm_access.roles`, `reader`, `writer`))"
)


class ExplainTests(SynchronousTestCase):
    """L{Policy.explain}."""

    def test_nestedDenied(self) -> None:
        """
        One line per sub-expression evaluated, indented by depth; terms that
        a short-circuit skips are not listed.
        """
        p = Policy.parse(NESTED, allowed_email_domains=["example.com"])
        claims = {"groups": ["staff"], "email": "guest@example.com", "email_verified": True}
        self.assertEqual(p.explain(claims, {"realm_access": {"roles": ["reader"]}}, now=NOW), [
            "allowed_email_domains: true (guest@example.com is allowed and verified)",
            "Contains(`groups`, `admins`) || Equals(`email_verified`, `true`) && !Prefix(`email`, `guest`)"
            " && OneOf(`access_token.realm_access.roles`, `reader`, `writer`): false",
            '  Contains(`groups`, `admins`): false (groups is ["staff"])',
            "  Equals(`email_verified`, `true`) && !Prefix(`email`, `guest`)"
            " && OneOf(`access_token.realm_access.roles`, `reader`, `writer`): false",
            "    Equals(`email_verified`, `true`): true (email_verified is true)",
            "    !Prefix(`email`, `guest`): false",
            '      Prefix(`email`, `guest`): true (email is "guest@example.com")',
        ])
        self.assertEqual(
            p.evaluate(claims, now=NOW).reason,
            'Contains(`groups`, `admins`) is false: groups is ["staff"];'
            ' Prefix(`email`, `guest`) is true: email is "guest@example.com"',
        )

    def test_nestedAllowed(self) -> None:
        """An allowed request is traced down to the terms that allowed it."""
        p = Policy.parse(NESTED)
        claims = {"groups": "x", "email": "alice@example.com", "email_verified": True}
        self.assertEqual(p.explain(claims, now=NOW), [
            "Contains(`groups`, `admins`) || Equals(`email_verified`, `true`) && !Prefix(`email`, `guest`)"
            " && OneOf(`access_token.realm_access.roles`, `reader`, `writer`): false",
            '  Contains(`groups`, `admins`): false (groups is "x")',
            "  Equals(`email_verified`, `true`) && !Prefix(`email`, `guest`)"
            " && OneOf(`access_token.realm_access.roles`, `reader`, `writer`): false",
            "    Equals(`email_verified`, `true`): true (email_verified is true)",
            "    !Prefix(`email`, `guest`): true",
            '      Prefix(`email`, `guest`): false (email is "alice@example.com")',
            "    OneOf(`access_token.realm_access.roles`, `reader`, `writer`): false"
            " (access_token.realm_access.roles is missing (no access token))",
        ])
        self.assertEqual(p.explain(claims, {"realm_access": {"roles": ["writer"]}}, now=NOW)[-1],
                         "    OneOf(`access_token.realm_access.roles`, `reader`, `writer`): true"
                         ' (access_token.realm_access.roles is ["writer"])')
        self.assertEqual(p.explain({"groups": ["admins"]}, now=NOW), [
            "Contains(`groups`, `admins`) || Equals(`email_verified`, `true`) && !Prefix(`email`, `guest`)"
            " && OneOf(`access_token.realm_access.roles`, `reader`, `writer`): true",
            '  Contains(`groups`, `admins`): true (groups is ["admins"])',
        ])

    def test_stopsAtFailingAllowList(self) -> None:
        """As L{Policy.evaluate} does, the trace stops at the first allow-list that fails."""
        p = Policy.parse("Equals(`a`, `b`)", allowed_groups=["ops", "dev"], allowed_emails=["a@example.com"])
        self.assertEqual(p.explain({"groups": ["ops"], "email": "b@example.com"}, now=NOW), [
            'allowed_groups: true (groups is ["ops"])',
            "allowed_emails: false (b@example.com is not one of a@example.com)",
        ])
        self.assertEqual(p.explain({"groups": "qa"}, now=NOW), [
            'allowed_groups: false (groups is "qa"; allowed: ops, dev)',
        ])

    def test_agreesWithEvaluate(self) -> None:
        """
        For every evaluation case, the first line of the trace is the whole
        rule with the decision of L{Policy.evaluate}.
        """
        for rule, claims, expected in EVALUATION:
            p = Policy.parse(rule)
            lines = p.explain(*claims, now=NOW)
            head = f"{p.rule}: {'true' if expected else 'false'}"
            self.assertTrue(lines[0] == head or lines[0].startswith(head + " ("), (rule, lines))


class ClaimPathsTests(SynchronousTestCase):
    def test_rule_and_allow_lists(self):
        """
        claim_paths lists every claim the rule (under &&, ||, !) and the
        allow-lists read, with the token it is read from, whatever the
        claims of a request.
        """
        policy = Policy.parse(
            "Contains(`groups`, `a`) || (!Equals(`access_token.scope`, `x`) && "
            "OneOf(`realm_access.roles`, `q`) && Prefix(`https://x\\.com/r`, `z`)) && "
            "SplitContains(`id_token.dept`, `,`, `d`)",
            allowed_emails=["a@example.com"])
        self.assertEqual(policy.claim_paths(), frozenset({
            ("id_token", ("groups",)), ("access_token", ("scope",)),
            ("id_token", ("realm_access", "roles")), ("id_token", ("https://x.com/r",)),
            ("id_token", ("dept",)), ("id_token", ("email",)),
            ("id_token", ("email_verified",)),
        }))

    def test_allow_lists_only(self):
        """Groups and e-mail lists read groups, email and (unless told not to) email_verified."""
        self.assertEqual(Policy.parse(allowed_groups=["g"]).claim_paths(),
                         frozenset({("id_token", ("groups",))}))
        self.assertEqual(
            Policy.parse(allowed_email_domains=["example.com"],
                         require_email_verified=False).claim_paths(),
            frozenset({("id_token", ("email",))}))
        self.assertEqual(Policy.parse().claim_paths(), frozenset())
