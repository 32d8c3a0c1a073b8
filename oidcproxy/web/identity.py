"""
Who a request is: the L{Identity} the guard establishes, read by embedded
applications with L{identity}, and the user name the access log shows.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import attr

from ..core.context import peek

__all__ = ["Identity", "claim", "identity", "user_name"]

_MAX_USER_LENGTH = 256


@attr.s(frozen=True, auto_attribs=True)
class Identity:
    """The authenticated user of a request, for embedded applications."""

    sub: str
    claims: Dict[str, Any]
    access_token: Optional[str] = None
    id_token: Optional[str] = None
    expires: Optional[float] = None


def identity(request: Any) -> Optional[Identity]:
    """
    The L{Identity} (sub, claims, access token, ...) that an C{OIDCGuard}
    established for C{request}, or None (public route, or a request the guard
    did not see). For applications embedded behind the guard.
    """
    ctx = peek(request)
    return None if ctx is None else ctx.identity


def claim(claims: Dict[str, Any], path: str) -> Any:
    """A claim by name; C{a.b} reaches into nested objects when C{a.b} itself is absent."""
    if path in claims:
        return claims[path]
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def user_name(username_claim: str, claims: Dict[str, Any], sub: str) -> str:
    """The access log's user: the username_claim's value, or the sub without it."""
    name = claim(claims, username_claim)
    if isinstance(name, (int, float)) and not isinstance(name, bool):
        name = str(name)
    if not isinstance(name, str) or not name:
        name = sub
    # One log line per request: no control characters, no endless names.
    name = name[:_MAX_USER_LENGTH]
    if not name.isprintable():
        name = "".join(c if c.isprintable() else "?" for c in name)
    return name
