"""
Step-up authentication: what a route (or an upstream's RFC 9470 challenge)
asks of a sign-in, whether a session's or a token's sign-ins meet it, and
the challenge an API client gets when they do not.

A sign-in is its C{acr} (the authentication context class reference, C{""}
when the IdP named none) and its C{auth_time} (seconds since the epoch, None
when the IdP did not say). A session may hold several: the latest, and the
earlier ones of the same user it was stepped up from (L{meeting} looks at
all of them, so a fresh sign-in at a lower level does not lose a higher one
reached a while ago).
"""

from __future__ import annotations

import math
import re
from typing import Any, Iterable, List, Mapping, Optional, Sequence, Tuple

import attr

from .numbers import finite_number

__all__ = [
    "INSUFFICIENT",
    "Requirement",
    "SignIn",
    "challenge",
    "is_acr_value",
    "meeting",
    "parse_challenge",
    "sign_in_of",
    "unmet",
]

INSUFFICIENT = "insufficient_user_authentication"
"""The RFC 9470 error code of a sign-in that is not enough."""

SignIn = Tuple[str, Optional[float]]
"""One sign-in: its C{acr} (C{""}: none named) and C{auth_time} (None: not known)."""


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Requirement:
    """
    What a sign-in must be: its C{acr} one of C{acr_values} (most
    preferred first; empty: any) and at most C{max_age} seconds old (None:
    any age).
    """

    acr_values: Tuple[str, ...] = ()
    max_age: Optional[float] = None

    def __bool__(self) -> bool:
        return bool(self.acr_values) or self.max_age is not None

    def describe(self) -> str:
        """The requirement in words, for log lines and C{--check}."""
        parts = []
        if self.acr_values:
            parts.append("acr " + " or ".join(self.acr_values))
        if self.max_age is not None:
            parts.append(f"a sign-in at most {self.max_age:g}s old")
        return " and ".join(parts) or "nothing"


def sign_in_of(claims: Mapping[str, Any]) -> SignIn:
    """The sign-in that C{claims} (an ID token's, an access token's) tell of."""
    acr = claims.get("acr")
    return (acr if isinstance(acr, str) else "", finite_number(claims.get("auth_time")))


def _fresh(sign_in: SignIn, max_age: Optional[float], now: float) -> bool:
    if max_age is None:
        return True
    auth_time = sign_in[1]
    # Whole seconds, as an OP counts max_age: else a step-up asked the
    # moment the sign-in turns too old here gets it back unchanged.
    return auth_time is not None and math.floor(now) - auth_time <= max_age


def meeting(requirement: Requirement, sign_ins: Sequence[SignIn], now: float
            ) -> Optional[SignIn]:
    """
    The sign-in among C{sign_ins} (the latest first) that meets
    C{requirement} at C{now}: of the requirement's C{acr_values} the most
    preferred one held fresh enough, without C{acr_values} the latest
    sign-in fresh enough. None: none meets it.
    """
    if requirement.acr_values:
        for acr in requirement.acr_values:
            for sign_in in sign_ins:
                if sign_in[0] == acr and _fresh(sign_in, requirement.max_age, now):
                    return sign_in
        return None
    for sign_in in sign_ins:
        if _fresh(sign_in, requirement.max_age, now):
            return sign_in
    return None


def unmet(requirement: Requirement, sign_ins: Sequence[SignIn], now: float) -> Optional[str]:
    """
    Why C{sign_ins} do not meet C{requirement}, in words naming what is
    there (for the log and C{--check}); None when one does.
    """
    if meeting(requirement, sign_ins, now) is not None:
        return None
    latest = sign_ins[0] if sign_ins else ("", None)
    acr, auth_time = latest
    held = f"acr {acr!r}" if acr else "no acr"
    if auth_time is None:
        age = "no auth_time"
    else:
        age = f"signed in {max(0.0, now - auth_time):.0f}s ago"
    return f"{requirement.describe()} required; the sign-in has {held}, {age}"


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def challenge(requirement: Requirement, realm: str = "oidcproxy",
              description: str = "A different authentication level is required") -> bytes:
    """
    The C{WWW-Authenticate} value of RFC 9470 (section 3): C{Bearer} with
    C{error="insufficient_user_authentication"}, and the C{acr_values}
    (space-separated) and C{max_age} (whole seconds) asked for.
    """
    params = [f"realm={_quoted(realm)}", f"error={_quoted(INSUFFICIENT)}",
              f"error_description={_quoted(description)}"]
    if requirement.acr_values:
        params.append(f"acr_values={_quoted(' '.join(requirement.acr_values))}")
    if requirement.max_age is not None:
        params.append(f"max_age={int(requirement.max_age)}")
    return ("Bearer " + ", ".join(params)).encode("ascii")


# RFC 9110 11.2: challenge = auth-scheme [ 1*SP ( token68 / #auth-param ) ];
# auth-param = token BWS "=" BWS ( token / quoted-string ).
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = r'"(?:[^"\\]|\\.)*"'
_PARAM = re.compile(r"[ \t]*(" + _TOKEN + r")[ \t]*=[ \t]*(" + _TOKEN + "|" + _QUOTED + r")[ \t]*")
_SCHEME = re.compile(r"[ \t]*(" + _TOKEN + r")(?:[ \t]+|$)")
_TOKEN68 = re.compile(r"[A-Za-z0-9\-._~+/]+=*[ \t]*(?=,|$)")
_ACR = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")


def is_acr_value(text: str) -> bool:
    """
    Whether C{text} can be sent as one of C{acr_values}: printable ASCII
    without spaces (they separate values), C{"} or C{\\} (RFC 6749's NQCHAR:
    it goes into a quoted C{WWW-Authenticate} parameter).
    """
    return _ACR.fullmatch(text) is not None

MAX_CHALLENGE = 4096
"""The most bytes of C{WWW-Authenticate} read when looking for a step-up challenge."""


def _challenges(text: str) -> Iterable[Tuple[str, List[Tuple[str, str]]]]:
    """
    The challenges of one C{WWW-Authenticate} value: scheme (lower case)
    and its auth-params (names lower case, quoted values unquoted). Stops at
    the first thing that does not parse.
    """
    pos, end = 0, len(text)
    while pos < end:
        while pos < end and text[pos] in " \t,":
            pos += 1
        m = _SCHEME.match(text, pos)
        if m is None:
            return
        scheme, pos = m.group(1).lower(), m.end()
        params: List[Tuple[str, str]] = []
        t68 = _TOKEN68.match(text, pos)
        if t68 is not None and _PARAM.match(text, pos) is None:
            pos = t68.end()
        else:
            while pos < end:
                p = _PARAM.match(text, pos)
                if p is None:
                    break
                value = p.group(2)
                if value.startswith('"'):
                    value = re.sub(r"\\(.)", r"\1", value[1:-1])
                params.append((p.group(1).lower(), value))
                pos = p.end()
                # A comma then either another param of this challenge or the next challenge.
                if pos < end and text[pos] == ",":
                    nxt = _PARAM.match(text, pos + 1)
                    if nxt is None:
                        break
                    pos += 1
                elif pos < end:
                    return
        yield scheme, params


def parse_challenge(values: Optional[Sequence[bytes]]) -> Optional[Requirement]:
    """
    The step-up an upstream asks for in its C{WWW-Authenticate} values: a
    C{Bearer} challenge with C{error="insufficient_user_authentication"}
    and C{acr_values} and/or C{max_age} (RFC 9470, section 3). None when
    there is none, or it is malformed (acr values that could not be sent
    on, a C{max_age} that is not a whole number of seconds), or it asks for
    neither: then the answer is passed on as it is.
    """
    if not values:
        return None
    for raw in values:
        if len(raw) > MAX_CHALLENGE:
            continue
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            continue
        for scheme, params in _challenges(text):
            if scheme != "bearer":
                continue
            found = dict(params)
            if found.get("error") != INSUFFICIENT:
                continue
            acr_values: Tuple[str, ...] = ()
            max_age: Optional[float] = None
            if "acr_values" in found:
                acr_values = tuple(found["acr_values"].split())
                if not acr_values or not all(map(is_acr_value, acr_values)) or \
                        len(set(acr_values)) != len(acr_values):
                    return None
            if "max_age" in found:
                age = found["max_age"]
                if not age.isdigit() or len(age) > 10:
                    return None
                max_age = float(int(age))
            requirement = Requirement(acr_values, max_age)
            return requirement if requirement else None
    return None
