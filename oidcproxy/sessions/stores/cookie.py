"""
A stateless session store: the whole session, sealed (AES-256-GCM, purpose
C{b"session"}), is the cookie value. Nothing is kept server-side, so
L{CookieStore.delete} cannot revoke a value the browser still holds: logout
relies on the browser dropping the cookie and on the session's own expiry.
"""

from __future__ import annotations

from typing import Optional

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from ..crypto import Sealer
from ..session import ISessionCache, ISessionStore, OpenedSessions, Session

PURPOSE = b"session"


@implementer(ISessionStore, ISessionCache)
class CookieStore:
    """
    @param sealer: seals and opens the cookie values.
    @param clock: the time source of the cache of opened values.
    @param store_tokens: keep the OP's tokens in the cookie; when C{False}
        the session is saved L{without tokens<Session.without_tokens>}, which
        keeps the cookie small.
    """

    def __init__(self, sealer: Sealer, clock: IReactorTime, store_tokens: bool = True) -> None:
        self._sealer = sealer
        self._store_tokens = store_tokens
        self._opened = OpenedSessions(clock)

    def load(self, cookie_value: str) -> Deferred[Optional[Session]]:
        return succeed(self.cached(cookie_value))

    def cached(self, cookie_value: str) -> Optional[Session]:
        """Always known at once: the value is the session (opened ones are kept a while)."""
        session = self._opened.get(cookie_value)
        if session is not None:
            return session
        plaintext = self._sealer.unseal(cookie_value, PURPOSE)
        if plaintext is None:
            return None
        session = Session.from_bytes(plaintext)
        if session is not None:
            self._opened.put(cookie_value, len(cookie_value), session)
        return session

    def save(self, session: Session) -> Deferred[str]:
        # A session that cannot be serialised (claims that are not JSON-able)
        # fails the Deferred rather than raising.
        return maybeDeferred(self._seal, session)

    def _seal(self, session: Session) -> str:
        if not self._store_tokens:
            session = session.without_tokens()
        return self._sealer.seal(session.to_bytes(), PURPOSE)

    def delete(self, session: Session) -> Deferred[None]:
        return succeed(None)
