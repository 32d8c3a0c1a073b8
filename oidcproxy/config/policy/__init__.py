"""
Route authorization: claim rules and allow-lists.

A route's C{rule} uses Traefik Hub's claim syntax::

    Contains(`groups`, `admins`) || (Equals(`email_verified`, `true`) && !Prefix(`email`, `guest`))

It is parsed once, when the configuration is loaded, into a small tree of
nodes (claim paths split into tuples, value lists made sets); L{Policy.evaluate}
runs on every request and only walks that tree, short-circuiting C{&&} and
C{||}: no parsing and no regular expressions. An allowed request gets one shared
L{Decision}; the reason of a denial is built afterwards, by a second walk.

Grammar (EBNF; whitespace, as C{str.isspace} defines it, may appear between
any two tokens)::

    rule     = or ;
    or       = and , { "||" , and } ;
    and      = unary , { "&&" , unary } ;
    unary    = "!" , unary | primary ;
    primary  = "(" , or , ")" | call ;
    call     = function , "(" , [ string , { "," , string } ] , ")" ;
    function = "Equals" | "Prefix" | "Contains" | "SplitContains" | "OneOf"
             | "NotOlderThan" ;
    string   = "`" , { any character but "`" } , "`"
             | '"' , { any character but '"' and "\\" | "\\" , any character } , '"' ;

In a double-quoted string C{\\"} is a quote and C{\\\\} a backslash; any other
backslash is kept as written, so C{"realm\\.x"} and C{"realm\\\\.x"} both mean
the claim name C{realm\\.x}. Nesting (parentheses and C{!}) is limited to
L{MAX_DEPTH} levels.

The first argument of every function is a claim name: dots reach into nested
objects (C{realm_access.roles}); C{\\.} is a dot that is part of a name
(C{https://example\\.com/roles}) and C{\\\\} a backslash. A first part
C{access_token.} or C{id_token.} chooses the token whose claims are read; the
ID token is the default.

    - C{Equals(claim, v)}: the claim is the string C{v}. A number or boolean
      claim is compared in its JSON form: C{true}, C{false}, C{42}, C{1.5}
      (a float with an integral value is written without C{.0}).
    - C{Prefix(claim, v)}: a string claim starts with C{v}; an array claim has
      a string element that starts with C{v}.
    - C{Contains(claim, v)}: a string claim has C{v} as a substring; an array
      claim has an element that equals C{v} (as C{Equals} compares).
    - C{SplitContains(claim, sep, v)}: a string claim split on C{sep} has a
      part that is exactly C{v}. C{sep} must not be empty.
    - C{OneOf(claim, v1, v2, ...)}: the claim equals one of the values (as
      C{Equals} compares), or an array claim has an element that does.
    - C{NotOlderThan(claim, duration)}: the claim is a NumericDate (a finite
      JSON number, not a boolean: C{auth_time}, C{iat}) at most C{duration}
      (C{"15m"}, C{"30s"}, C{"1h"}, as the configuration writes durations;
      more than zero) before the time of the request; a time in the future
      counts as fresh.

A claim that is missing, or is of a type the function does not handle (an
object, C{null}, a number given to C{Prefix}), makes the function false, never
an error; so C{!Equals(`x`, `y`)} is true when C{x} is missing. Everything is
case-sensitive.

Allow-lists are combined with the rule by AND:

    - C{allowed_groups}: the ID token's C{groups} claim (a string or an array)
      is, or has an element that is, one of the groups (case-sensitive).
    - C{allowed_emails}, C{allowed_email_domains}: the ID token's C{email}
      claim is one of the listed addresses, I{or} its domain is one of the
      listed domains or a subdomain of one on a dot boundary; both compare
      case-insensitively. A domain match needs an address with exactly one
      C{@}, a non-empty local part and a domain with no empty label. Unless
      C{require_email_verified} is false, C{email_verified} must also be the
      JSON value C{true} (the string C{"true"} is not).

Checks run in this order and stop at the first that fails: groups, emails,
the rule.

The modules: L{parser} (rule text to a tree), L{nodes} (the tree, which
tests and explains), L{allowlists}, L{claims} (reading and showing claim
values); here, L{Policy} puts a rule and the allow-lists together.
"""

# The project targets Python 3.9 and spells optional types Optional[X] (UP007 is
# ignored in pyproject.toml); newer ruff reports them as UP045 instead.

from __future__ import annotations

from typing import Any, FrozenSet, List, Mapping, Optional, Sequence, Tuple

import attr

from .allowlists import EmailCheck, GroupsCheck, strings
from .claims import REASON_MAX, ClaimPath, clip
from .nodes import Node
from .parser import MAX_DEPTH, RuleSyntaxError

# Policy.parse finds the parser here (tests replace it to show that
# evaluating never parses).
from .parser import Parser as _Parser

__all__ = ["MAX_DEPTH", "ClaimPath", "Decision", "Policy", "RuleSyntaxError"]


@attr.s(frozen=True, slots=True)
class Decision:
    """
    The outcome of L{Policy.evaluate}.

    @ivar allowed: whether the request may go on.
    @ivar reason: a short human text (at most 200 characters) naming the part
        that decided; C{"allowed"} for every allowed request.
    """

    allowed: bool = attr.ib()
    reason: str = attr.ib()


_ALLOWED = Decision(True, "allowed")


class Policy:
    """
    A route's compiled rule and allow-lists. Build one with L{Policy.parse}.
    """

    __slots__ = ("_rule", "_checks")

    def __init__(self, rule: Optional[Node], allow_lists: Sequence[Node] = ()) -> None:
        self._rule = rule
        self._checks: Tuple[Node, ...] = tuple(allow_lists) + ((rule,) if rule is not None else ())

    @classmethod
    def parse(
        cls,
        rule: Optional[str] = None,
        *,
        allowed_groups: Sequence[str] = (),
        allowed_emails: Sequence[str] = (),
        allowed_email_domains: Sequence[str] = (),
        require_email_verified: bool = True,
    ) -> Policy:
        """
        Compile a rule and allow-lists.

        @param rule: the rule text, or None for none (an empty rule is an error).
        @param allowed_email_domains: domain names; letter case and one final
            dot are ignored.
        @raise RuleSyntaxError: the rule is malformed.
        @raise TypeError: a list is a string, or holds something else than strings.
        """
        node = None
        if rule is not None:
            if not isinstance(rule, str):
                raise TypeError(f"rule must be a string, not {type(rule).__name__}")
            node = _Parser(rule).parse()
        groups = strings("allowed_groups", allowed_groups)
        emails = strings("allowed_emails", allowed_emails)
        domains = tuple(
            d.lower().rstrip(".") for d in strings("allowed_email_domains", allowed_email_domains)
        )
        checks: List[Node] = []
        if groups:
            checks.append(GroupsCheck(groups))
        if emails or domains:
            checks.append(EmailCheck(emails, domains, require_email_verified))
        return cls(node, checks)

    @property
    def rule(self) -> Optional[str]:
        """The rule in canonical form (one space around operators, backticks), or None."""
        return None if self._rule is None else self._rule.text

    def claim_paths(self) -> FrozenSet[ClaimPath]:
        """
        Every claim the rule and the allow-lists read, whatever the claims
        of a request: C{(token, path)} with C{token} C{"id_token"} (the
        session's claims) or C{"access_token"}, and C{path} the claim's name
        split at its unescaped dots (C{("realm_access", "roles")}).
        """
        return frozenset(path for check in self._checks for path in check.claim_paths())

    @property
    def always_allows(self) -> bool:
        """True when there is no rule and no allow-list."""
        return not self._checks

    def evaluate(self, id_claims: Mapping[str, Any], access_claims: Optional[Mapping[str, Any]] = None,
                 *, now: float) -> Decision:
        """
        Decide on a request from the claims of its ID token and access token
        (None when there is no access token, or it is opaque).

        @param now: the time of the request, in seconds since the epoch (the
            guard's clock): what C{NotOlderThan} measures ages against.
        """
        for check in self._checks:
            if not check.test(id_claims, access_claims, now):
                return Decision(False, clip(check.why_false(id_claims, access_claims, now),
                                            REASON_MAX))
        return _ALLOWED

    def explain(self, id_claims: Mapping[str, Any], access_claims: Optional[Mapping[str, Any]] = None,
                *, now: float) -> List[str]:
        """
        A trace of L{evaluate}: one line per check and sub-expression it
        evaluates, in order, indented by two spaces per level, each ending in
        C{: true} or C{: false} (and, for a function or an allow-list, what
        the claim is). Checks that L{evaluate} skips are not listed.
        """
        out: List[str] = []
        for check in self._checks:
            if not check.trace(id_claims, access_claims, now, 0, out):
                break
        return out

    def __repr__(self) -> str:
        lists = ", ".join(c.text for c in self._checks if c is not self._rule)
        return f"<Policy rule={self.rule!r} allow_lists={lists!r}>"
