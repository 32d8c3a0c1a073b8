"""
A session store in this process's memory, for tests and embedding. Sessions
are lost on restart and not shared between processes.
"""

from __future__ import annotations

from typing import Dict, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from ..session import ISessionStore, Session


@implementer(ISessionStore)
class MemoryStore:
    """
    Sessions in a dict keyed by session id; the cookie value is the session id.

    A session whose C{expires} has passed is dropped when a load comes across
    it; L{prune} drops every such session (call it from a timer when the store
    lives long).

    @param clock: the time source for C{expires}.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._sessions: Dict[str, Session] = {}

    def __len__(self) -> int:
        """How many sessions are held (expired ones included until dropped)."""
        return len(self._sessions)

    def load(self, cookie_value: str) -> Deferred[Optional[Session]]:
        if not isinstance(cookie_value, str):
            return succeed(None)
        session = self._sessions.get(cookie_value)
        if session is not None and self._clock.seconds() >= session.expires:
            del self._sessions[cookie_value]
            session = None
        return succeed(session)

    def save(self, session: Session) -> Deferred[str]:
        self._sessions[session.id] = session
        return succeed(session.id)

    def delete(self, session: Session) -> Deferred[None]:
        self._sessions.pop(session.id, None)
        return succeed(None)

    def prune(self) -> int:
        """
        Drop every session whose C{expires} has passed.

        @return: how many were dropped.
        """
        now = self._clock.seconds()
        expired = [sid for sid, session in self._sessions.items() if now >= session.expires]
        for sid in expired:
            del self._sessions[sid]
        return len(expired)
