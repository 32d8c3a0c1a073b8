"""
The session's user, for the pages of the application: who is logged in,
with which claims, until when. No tokens. With several providers, the
session of C{?provider=NAME} (by default the only one the browser holds,
else the default provider's).
"""

from __future__ import annotations

import json

from twisted.web.server import Request

from ..answers import deny, finish, respond
from ..parts import GuardState
from ..session_auth import SessionAuth

__all__ = ["UserinfoEndpoint"]


class UserinfoEndpoint:
    """The userinfo endpoint of one guard."""

    def __init__(self, state: GuardState, sessions: SessionAuth) -> None:
        self._state = state
        self._sessions = sessions

    async def render(self, request: Request) -> None:
        if request.method not in (b"GET", b"HEAD"):
            finish(request, 405, "method_not_allowed", "Use GET.", {b"allow": b"GET, HEAD"})
            return
        provider = self._sessions.chosen(request)
        if provider is None:
            finish(request, 404, "unknown_provider", "There is no such provider here.")
            return
        loaded = await self._sessions.load_or_503(request, provider)
        if loaded is None:
            return
        session, cookies = loaded
        if session is None:
            deny(request, cookies)
            return
        idle = self._state.config.session.idle_timeout
        document = {
            "sub": session.sub,
            "claims": session.claims,
            "expires_at": int(session.expires),
            "idle_expires_at": int(session.last_seen + idle) if idle > 0 else None,
        }
        respond(request, 200, b"application/json", json.dumps(document).encode("utf-8"))
