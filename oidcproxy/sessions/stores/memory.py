"""
A session store in this process's memory, for tests and embedding. Sessions
are lost on restart and not shared between processes.
"""

from __future__ import annotations

import secrets
from typing import Dict, List, Optional, Tuple

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from ..session import DEFAULT_PROVIDER, ISessionStore, Session


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
        self._locks: Dict[str, Tuple[str, float]] = {}
        self._revoked: Dict[Tuple[str, str, Optional[str]], float] = {}
        """(kind, provider, name) to when; a session id's provider is C{""}: ids are unique."""

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

    def delete_by(self, *, sub: Optional[str] = None, sid: Optional[str] = None,
                  provider: str = DEFAULT_PROVIDER) -> Deferred[int]:
        """
        End every session of C{sub} or of C{sid} at C{provider} (back-channel
        logout); another provider's sessions of the same names stay.
        """
        doomed = [key for key, session in self._sessions.items()
                  if session.provider == provider
                  and ((sub is not None and session.sub == sub)
                       or (sid is not None and session.sid == sid))]
        for key in doomed:
            del self._sessions[key]
        return succeed(len(doomed))

    def sessions_of(self, sub: str, provider: str = DEFAULT_PROVIDER) -> Deferred[List[Session]]:
        """The live sessions of C{sub} at C{provider}."""
        now = self._clock.seconds()
        return succeed([s for s in self._sessions.values()
                        if s.sub == sub and s.provider == provider and now < s.expires])

    def lock(self, name: str, lease: float) -> Deferred[Optional[str]]:
        """Take the lock C{name} for C{lease} seconds; None when someone holds it."""
        now = self._clock.seconds()
        held = self._locks.get(name)
        if held is not None and held[1] > now:
            return succeed(None)
        token = secrets.token_urlsafe(16)
        self._locks[name] = (token, now + lease)
        return succeed(token)

    def unlock(self, name: str, token: str) -> Deferred[None]:
        held = self._locks.get(name)
        if held is not None and held[0] == token:
            del self._locks[name]
        return succeed(None)

    def mark_revoked(self, *, sub: Optional[str] = None, sid: Optional[str] = None,
                     session_id: Optional[str] = None, ttl: float = 86400.0,
                     provider: str = DEFAULT_PROVIDER) -> Deferred[None]:
        """
        Remember that sessions of C{sub} (or C{sid}) at C{provider}, or the
        session C{session_id}, created up to now have ended.
        """
        now = self._clock.seconds()
        for kind, name in (("sub", sub), ("sid", sid)):
            if name:
                self._revoked[kind, provider, name] = now
        if session_id:
            self._revoked["session", DEFAULT_PROVIDER, session_id] = now
        return succeed(None)

    def revoked_at(self, *, sub: str, sid: Optional[str] = None,
                   session_id: Optional[str] = None,
                   provider: str = DEFAULT_PROVIDER) -> Deferred[Optional[float]]:
        """When sessions of C{sub} or C{sid} at C{provider}, or the session C{session_id}, ended last."""
        wanted = [("sub", provider, sub)] + ([("sid", provider, sid)] if sid else []) + \
            ([("session", DEFAULT_PROVIDER, session_id)] if session_id else [])
        times = [self._revoked[key] for key in wanted if key in self._revoked]
        return succeed(max(times) if times else None)

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
