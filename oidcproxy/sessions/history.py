"""
What a step-up login's new session carries over from the session it
replaces: the user's earlier sign-ins (so a fresh sign-in at a lower level
does not lose a higher one reached a while ago) and the step-up logins of
the chain (the bound on step-up loops).
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

from ..core.assurance import SignIn, sign_in_of
from .session import MAX_SIGN_INS, MAX_STEP_UPS, Session

__all__ = ["carried_sign_ins", "carried_step_ups", "recent_step_ups", "sign_ins_of"]


def sign_ins_of(session: Session) -> Tuple[SignIn, ...]:
    """C{session}'s sign-ins, the latest (its claims') first, then the earlier ones."""
    return (sign_in_of(session.claims), *session.sign_ins)


def _later(a: Optional[float], b: Optional[float]) -> Optional[float]:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


def carried_sign_ins(latest: SignIn, old: Optional[Session]) -> Tuple[SignIn, ...]:
    """
    The earlier sign-ins of a new session whose own sign-in is C{latest},
    replacing C{old} (of the same user; None: nothing to carry): the old
    session's latest and earlier ones, one per C{acr} with its latest
    C{auth_time}, none of the C{acr} of C{latest} (that one is newer), the
    latest first, at most L{MAX_SIGN_INS}.
    """
    if old is None:
        return ()
    best: Dict[str, Optional[float]] = {}
    for acr, when in (sign_in_of(old.claims), *old.sign_ins):
        if acr == latest[0]:
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
