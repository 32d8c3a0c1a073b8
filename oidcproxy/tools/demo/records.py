"""
What the provider remembers, in memory: pending logins, authorization
codes, refresh tokens and revocations, each for a bounded time and number.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Tuple

import attr

from .accounts import DemoUser

CODE_LIFETIME = 60.0
"""Seconds an authorization code may be exchanged (it works once)."""
LOGIN_LIFETIME = 600.0
"""Seconds a login form may be submitted after the authorization request."""
TOKEN_LIFETIME = 300
"""Seconds ID tokens and access tokens are valid: the proxy refreshes near the end."""
REFRESH_LIFETIME = 8 * 3600.0
"""Seconds a refresh token is valid (the proxy's session lifetime)."""
MAX_ENTRIES = 10_000
"""The most pending logins, codes, refresh tokens or revocations kept; the oldest go first."""


@attr.s(auto_attribs=True)
class Login:
    """An authorization request waiting for its login form."""

    id: str
    browser: str
    redirect_uri: str
    scopes: Tuple[str, ...]
    state: str
    nonce: str
    challenge: str
    created: float


@attr.s(auto_attribs=True)
class Code:
    """An authorization code, until it is used or expires."""

    redirect_uri: str
    user: DemoUser
    scopes: Tuple[str, ...]
    nonce: str
    challenge: str
    sid: str
    auth_time: int
    created: float
    used: bool = False


@attr.s(auto_attribs=True)
class Grant:
    """A refresh token and the login (C{sid}) it continues."""

    user: DemoUser
    scopes: Tuple[str, ...]
    sid: str
    auth_time: int
    expires: float
    used: bool = False


class Ledger:
    """
    The provider's memory. Every time comes from C{clock}; L{prune} forgets
    what has expired, and the oldest entries beyond L{MAX_ENTRIES}.
    """

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.logins: Dict[str, Login] = {}
        self.codes: Dict[str, Code] = {}
        self.grants: Dict[str, Grant] = {}
        """Refresh tokens and what they grant."""
        self.revoked_sids: Dict[str, float] = {}
        self.revoked_jtis: Dict[str, float] = {}

    def prune(self) -> None:
        """Forget what has expired, and the oldest entries beyond L{MAX_ENTRIES}."""
        now = self.clock.seconds()
        tables: List[Tuple[Dict[str, Any], Callable[[Any], bool]]] = [
            (self.logins, lambda v: now - v.created < LOGIN_LIFETIME),
            (self.codes, lambda v: now - v.created < CODE_LIFETIME),
            (self.grants, lambda v: now < v.expires),
            (self.revoked_sids, lambda v: now < v),
            (self.revoked_jtis, lambda v: now < v),
        ]
        for table, alive in tables:
            for key in [k for k, v in table.items() if not alive(v)]:
                del table[key]
            while len(table) > MAX_ENTRIES:
                del table[next(iter(table))]

    def revoke_login(self, sid: str) -> None:
        """End every token of one login: its refresh tokens and (by sid) its access tokens."""
        self.revoked_sids[sid] = self.clock.seconds() + REFRESH_LIFETIME
        for token in [t for t, g in self.grants.items() if g.sid == sid]:
            del self.grants[token]
