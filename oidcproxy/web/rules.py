"""
Authorization: a route's claim rule and allow-lists, applied to the claims
of a session (its ID token's, and its access token's for C{access_token.*})
or of a bearer token.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Optional

from twisted.logger import Logger
from twisted.web.server import Request

from ..config import RouteConfig
from ..core.context import peek
from ..core.encoding import b64url_decode_lenient
from ..core.urls import safe_return_to
from ..sessions.session import Session
from .answers import decided, finish, show
from .requests import target_below_mount

__all__ = ["authorized", "unverified_claims"]

log = Logger()


def authorized(request: Request, route: RouteConfig, sub: str, id_claims: Dict[str, Any],
               access_claims: Optional[Dict[str, Any]], now: float) -> bool:
    """
    Apply the route's rule and allow-lists; answer 403 (and return False)
    when they deny in enforce mode. In audit mode a denial is logged as
    "would deny" and the request goes on.

    @param now: the guard's clock time of the request (for C{NotOlderThan}).
    """
    policy = route.policy
    if policy is None:
        return True
    decision = policy.evaluate(id_claims, access_claims, now=now)
    if decision.allowed:
        return True
    if route.policy_mode == "audit":
        log.info("{route}: would deny {sub}: {reason}", route=route.name, sub=sub,
                 reason=decision.reason)
        decided(request, "audit_would_deny")
        return True
    log.info("{route}: denied {sub}: {reason}", route=route.name, sub=sub, reason=decision.reason)
    decided(request, "denied")
    ctx = peek(request)
    pages = ctx.pages if ctx is not None else None
    if pages is None:
        finish(request, 403, "forbidden", "You are not allowed to see this page.")
        return False
    target = safe_return_to(target_below_mount(request).decode("ascii", "replace")) or "/"
    show(request, lambda r: pages.forbidden(r, sub, id_claims, route.path, target,
                                            "You are not allowed to see this page."))
    return False


def unverified_claims(session: Session) -> Optional[Dict[str, Any]]:
    """
    The claims of the session's access token, for rules on C{access_token.*}.
    The token came straight from the token endpoint over TLS, so its payload
    is read without checking the signature again; an opaque token has none.
    """
    token = session.access_token
    if not token or token.count(".") != 2:
        return None
    try:
        data = json.loads(b64url_decode_lenient(token.split(".")[1]))
    except (ValueError, TypeError, RecursionError):
        return None
    return data if isinstance(data, dict) else None
