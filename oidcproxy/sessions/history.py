"""
A session's sign-ins, and what a step-up login's new session carries over
from the session it replaces: the user's earlier sign-ins (so a fresh
sign-in at a lower level does not lose a higher one reached a while ago)
and the step-up logins of the chain (the bound on step-up loops).

A provider's C{acr_claim} says where a sign-in's authentication context
is: C{acr} (one value), or C{acrs}, Microsoft Entra ID's array of the
authentication contexts the sign-in satisfied, each of which counts as one
sign-in at that time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ..core.assurance import SignIn, sign_in_of
from .session import MAX_SIGN_INS, MAX_STEP_UPS, Session

if TYPE_CHECKING:
    from ..config import Config

__all__ = ["acr_claim_of", "carried_sign_ins", "carried_step_ups", "claims_sign_ins",
           "recent_step_ups", "sign_ins_of"]

MAX_ACRS = 16
"""The most values of an C{acrs} claim taken (Entra ID's authentication contexts: c1 to c99)."""


def acr_claim_of(config: Config, provider: str) -> str:
    """The C{acr_claim} of the provider C{provider} (C{acr} for one not configured)."""
    oidc = config.provider_config(provider)
    return oidc.acr_claim if oidc is not None else "acr"


def claims_sign_ins(claims: Mapping[str, Any], acr_claim: str = "acr") -> Tuple[SignIn, ...]:
    """
    The sign-in C{claims} (an ID token's, an access token's) tell of: with
    C{acr_claim = "acrs"}, one for each value of the C{acrs} array (at most
    L{MAX_ACRS}), all at its C{auth_time}; else (or without one) the one of
    its C{acr}.
    """
    if acr_claim != "acrs":
        return (sign_in_of(claims),)
    auth_time = sign_in_of(claims)[1]
    values = claims.get("acrs")
    seen: List[str] = []
    if isinstance(values, list):
        for value in values:
            if isinstance(value, str) and value and value not in seen:
                seen.append(value)
                if len(seen) == MAX_ACRS:
                    break
    return tuple((value, auth_time) for value in seen) or (("", auth_time),)


def sign_ins_of(session: Session, acr_claim: str = "acr") -> Tuple[SignIn, ...]:
    """C{session}'s sign-ins, the latest (its claims') first, then the earlier ones."""
    return (*claims_sign_ins(session.claims, acr_claim), *session.sign_ins)


def _later(a: Optional[float], b: Optional[float]) -> Optional[float]:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


def carried_sign_ins(latest: Sequence[SignIn], old: Optional[Session],
                     acr_claim: str = "acr") -> Tuple[SignIn, ...]:
    """
    The earlier sign-ins of a new session whose own sign-in is C{latest}
    (one per value of its C{acrs} with C{acr_claim = "acrs"}), replacing
    C{old} (of the same user and provider; None: nothing to carry): the old
    session's latest and earlier ones, one per C{acr} with its latest
    C{auth_time}, none of an C{acr} of C{latest} (that one is newer), the
    latest first, at most L{MAX_SIGN_INS}.
    """
    if old is None:
        return ()
    newer = {acr for acr, _ in latest}
    best: Dict[str, Optional[float]] = {}
    for acr, when in sign_ins_of(old, acr_claim):
        if acr in newer:
            continue
        best[acr] = _later(best[acr], when) if acr in best else when
    ordered = sorted(best.items(), key=lambda item: (item[1] is None, -(item[1] or 0.0)))
    return tuple(ordered[:MAX_SIGN_INS])


def recent_step_ups(session: Session, now: float, window: float
                    ) -> Tuple[Tuple[str, float], ...]:
    """The step-up logins of C{session}'s chain within the last C{window} seconds, latest first."""
    return tuple(entry for entry in session.step_ups if now - entry[1] < window)


def carried_step_ups(old: Optional[Session], this: Sequence[Tuple[str, float]], now: float,
                     window: float) -> Tuple[Tuple[str, float], ...]:
    """
    The step-up logins of a new session: C{this} login's (empty when it is
    no step-up), then C{old}'s (of the same user; None: none) within the
    last C{window} seconds, at most L{MAX_STEP_UPS}.
    """
    earlier = recent_step_ups(old, now, window) if old is not None else ()
    return (*this, *earlier)[:MAX_STEP_UPS]
