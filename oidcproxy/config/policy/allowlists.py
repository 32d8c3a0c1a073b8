"""
The allow-lists of a route (C{allowed_groups}, C{allowed_emails},
C{allowed_email_domains}): nodes like a rule's, each explaining its result
in both directions.
"""

from __future__ import annotations

from typing import Iterator, List, Optional, Sequence, Tuple

from .claims import (
    LIST_MAX,
    MISSING,
    ClaimPath,
    Claims,
    clip,
    lookup,
    render,
    scalar_text,
    scalarish,
    show,
    tf,
)
from .nodes import Node


class Check(Node):
    """An allow-list: C{message} explains the result in both directions."""

    __slots__ = ()

    def message(self, idc: Claims) -> str:
        raise NotImplementedError()

    def why_false(self, idc: Claims, acc: Claims, now: float) -> str:
        return f"{self.text}: {self.message(idc)}"

    why_true = why_false

    def trace(self, idc: Claims, acc: Claims, now: float, depth: int, out: List[str]) -> bool:
        result = self.test(idc, acc, now)
        out.append(f"{'  ' * depth}{self.text}: {tf(result)} ({self.message(idc)})")
        return result


class GroupsCheck(Check):
    __slots__ = ("groups", "scalarish", "listing")

    def __init__(self, groups: Tuple[str, ...]) -> None:
        self.text = "allowed_groups"
        self.groups = frozenset(groups)
        self.scalarish = any(scalarish(g) for g in groups)
        self.listing = clip(", ".join(groups), LIST_MAX)

    def test(self, idc: Claims, acc: Claims, now: float) -> bool:
        v = lookup(idc, ("groups",))
        if v.__class__ is str:
            return v in self.groups
        if isinstance(v, (list, tuple)):
            for element in v:
                if element.__class__ is str:
                    if element in self.groups:
                        return True
                elif (self.scalarish or isinstance(element, str)) and scalar_text(element) in self.groups:
                    return True
        return False

    def claim_paths(self) -> Iterator[ClaimPath]:
        yield ("id_token", ("groups",))

    def message(self, idc: Claims) -> str:
        v = lookup(idc, ("groups",))
        text = f"groups is {render(v)}"
        if self.test(idc, None, 0.0):  # the groups do not depend on the time
            return text
        return f"{text}; allowed: {self.listing}"


class EmailCheck(Check):
    __slots__ = ("emails", "domains", "suffixes", "verify", "email_listing", "domain_listing")

    def __init__(self, emails: Tuple[str, ...], domains: Tuple[str, ...], verify: bool) -> None:
        self.emails = frozenset(e.lower() for e in emails)
        self.domains = frozenset(domains)
        # An address in one of the domains ends with "@domain" or ".domain";
        # email_domain then checks the rest of its shape.
        self.suffixes = tuple(f"{c}{d}" for d in domains for c in "@.")
        self.verify = verify
        self.email_listing = clip(", ".join(emails), LIST_MAX)
        self.domain_listing = clip(", ".join(domains), LIST_MAX)
        if emails and domains:
            self.text = "allowed_emails or allowed_email_domains"
        elif emails:
            self.text = "allowed_emails"
        else:
            self.text = "allowed_email_domains"

    def claim_paths(self) -> Iterator[ClaimPath]:
        yield ("id_token", ("email",))
        if self.verify:
            yield ("id_token", ("email_verified",))

    def listed(self, email: str) -> bool:
        """Whether C{email} is allowed by the lists, verification aside."""
        lowered = email.lower()
        if lowered in self.emails:
            return True
        return bool(self.suffixes) and lowered.endswith(self.suffixes) and email_domain(lowered) is not None

    def test(self, idc: Claims, acc: Claims, now: float) -> bool:
        email = lookup(idc, ("email",))
        if not isinstance(email, str) or not self.listed(email):
            return False
        return not self.verify or lookup(idc, ("email_verified",)) is True

    def message(self, idc: Claims) -> str:
        email = lookup(idc, ("email",))
        if email is MISSING:
            return "email is missing"
        if not isinstance(email, str):
            return f"email is {render(email)}, not a string"
        shown = show(email)
        if not self.listed(email):
            if self.domains and email_domain(email.lower()) is None:
                return f"{shown} is not a valid email address"
            if self.emails and self.domains:
                return f"{shown} is not one of {self.email_listing} and not in {self.domain_listing}"
            if self.emails:
                return f"{shown} is not one of {self.email_listing}"
            return f"{shown} is not in {self.domain_listing}"
        if not self.verify:
            return f"{shown} is allowed"
        verified = lookup(idc, ("email_verified",))
        if verified is True:
            return f"{shown} is allowed and verified"
        return f"{shown} is not verified (email_verified is {render(verified)})"


def email_domain(lowered: str) -> Optional[str]:
    """The domain of an address with one C{@}, a local part and no empty label; else None."""
    at = lowered.find("@")
    if at <= 0 or lowered.find("@", at + 1) >= 0:
        return None
    domain = lowered[at + 1:]
    if not domain or domain[0] == "." or domain[-1] == "." or ".." in domain:
        return None
    return domain


def strings(name: str, values: Sequence[str]) -> Tuple[str, ...]:
    if isinstance(values, str):
        raise TypeError(f"{name} must be a sequence of strings, not a string")
    out = tuple(values)
    for v in out:
        if not isinstance(v, str):
            raise TypeError(f"{name} must hold strings, not {type(v).__name__}")
    return out

