"""
Token refresh: one refresh per session at a time, whatever the number of
concurrent requests and processes.

Within a process, concurrent requests of one session wait for the refresh in
flight (single flight), and a request that still carries the old session (an
old cookie) within a short while after a refresh gets the refreshed session
instead of spending the refresh token again. Across processes, a store that
can lock (Redis) serialises refreshes with a lease; a process that finds the
lock taken waits for the new session to appear in the store.

Outcomes (L{RefreshOutcome}): a refreshed session; the session ended (the
IdP said C{invalid_grant}, or the new ID token is about someone else); or
the IdP could not be reached (the caller serves the request while the old
access token is valid, or within the configured outage grace, else 503).

A session store that cannot answer (for the lock, to read what another
process stored, or to save the refreshed session) never fails the refresh
with an error: the outcome says so (C{store_unavailable}) and the caller
answers 503. A refreshed session that could not be saved is kept here (with
the recently refreshed ones) and saved by the next refresh of the same
session, so the new tokens are not lost when the store comes back.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Dict, Optional, Tuple

import attr
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import Logger

from ..core.cache import BoundedCache
from ..core.metrics import NullMetrics
from ..sessions.session import Session, SessionStoreUnavailable
from .jws import TokenError, peek_header
from .provider import Provider, ProviderError

log = Logger()

_RECENT = 1000
"""Refreshed sessions remembered per process, for requests carrying the old one."""

_RECENT_TTL = 60.0
_POLL = 0.1


SIGN_IN_CLAIMS = ("acr", "acrs", "auth_time", "amr")
"""The claims of the sign-in itself, which a refresh never changes."""


@attr.s(frozen=True, auto_attribs=True)
class RefreshOutcome:
    session: Optional[Session]
    """The refreshed session (None when it ended or the IdP was unreachable)."""
    ended: bool = False
    """The session is over: the refresh token was refused, or the new ID token is wrong."""
    unavailable: bool = False
    """The IdP (or the lock's store) could not be reached: the old session is unchanged."""
    cookie_value: Optional[str] = None
    """The store's cookie value for the refreshed session, when the browser needs a new one."""
    store_unavailable: bool = False
    """
    The session store could not answer: for the lock or another process's
    result (then C{session} is None and C{unavailable} is set), or to save
    the refreshed C{session} (which is then not to be served: the store does
    not hold it yet).
    """


def _outcome(result: Any) -> str:
    """A refresh's outcome as a metrics label."""
    if not isinstance(result, RefreshOutcome):
        return "error"
    if result.store_unavailable:
        return "store_unavailable"
    if result.session is not None:
        return "success"
    return "ended" if result.ended else "unavailable"


def _hash(text: Optional[str]) -> str:
    return hashlib.sha256((text or "").encode("utf-8")).hexdigest()[:32]


class Refresher:
    """
    @param provider: talks to the token endpoint.
    @param validate_id_token: C{(id_token, keys) -> claims} for a new ID
        token of a refresh (signature, iss, aud, times, the age of its iat;
        no nonce); the session's own ID token sent again is not validated
        again.
    @param store: the session store; when it has C{lock}/C{unlock}, refreshes
        are serialised across processes.
    @param mode: C{off}, C{on_expiry} or C{interval}.
    @param lease: how long a cross-process refresh lock is held at most; longer
        than the IdP timeout.
    @param metrics: counts each refresh by outcome (an
        L{oidcproxy.core.metrics.Metrics}; default: nothing is counted).
    """

    def __init__(
        self,
        provider: Provider,
        validate_id_token: Callable[[str, Any], Dict[str, Any]],
        store: Any,
        clock: Any,
        *,
        mode: str = "on_expiry",
        leeway: float = 60.0,
        interval: float = 300.0,
        lease: float = 15.0,
        metrics: Optional[NullMetrics] = None,
    ) -> None:
        self._metrics = metrics if metrics is not None else NullMetrics()
        self._provider = provider
        self._validate = validate_id_token
        self._store = store
        self._clock = clock
        self._mode = mode
        self._leeway = leeway
        self._interval = interval
        self._lease = lease
        self._inflight: Dict[Tuple[str, str], Deferred] = {}
        self._held: Dict[Tuple[str, str], float] = {}
        """Refresh tokens whose grant may have happened unseen, until when none is sent again."""
        self._recent: BoundedCache[Tuple[str, str], RefreshOutcome] = BoundedCache(clock, _RECENT)
        """Refreshed sessions, each for L{_RECENT_TTL} seconds, oldest out first."""
        self.grants = 0
        """Refresh grants sent by this process (for tests and metrics)."""

    def due(self, session: Session, now: float) -> bool:
        """Whether C{session} should be refreshed before the request goes on."""
        if self._mode == "off" or not session.refresh_token:
            return False
        expires = session.access_token_expires
        if expires is not None and now >= expires - self._leeway:
            return True
        if self._mode == "interval":
            return now - session.last_seen >= self._interval or (
                expires is None and now - session.created >= self._interval)
        return False

    def refresh(self, session: Session) -> Deferred:
        """Fires with a L{RefreshOutcome}; never errbacks for expected failures."""
        key = (session.id, _hash(session.refresh_token))
        now = self._clock.seconds()
        recent = self._recent.peek(key)
        if recent is not None:
            if recent.store_unavailable:
                return Deferred.fromCoroutine(self._save_again(key, recent))
            return Deferred.fromCoroutine(self._done(recent))
        held = self._held.get(key)
        if held is not None:
            if now < held:
                # The last grant with this refresh token may have been carried
                # out by the IdP without our seeing the answer: with rotating
                # refresh tokens, sending it again would end the session there.
                return Deferred.fromCoroutine(self._done(RefreshOutcome(None, unavailable=True)))
            del self._held[key]
        inflight = self._inflight.get(key)
        if inflight is None:
            inflight = Deferred.fromCoroutine(self._refresh(session))

            def forget(result: Any) -> Any:
                self._inflight.pop(key, None)
                self._metrics.refresh(_outcome(result), session.provider)
                if isinstance(result, RefreshOutcome) and result.session is not None:
                    self._remember(key, result)
                return result

            inflight.addBoth(forget)
            if not inflight.called:
                self._inflight[key] = inflight
        # Every caller, the first included, gets a Deferred of its own: a
        # caller that awaits the shared one would take its result away from
        # the others.
        waiter: Deferred = Deferred()

        def share(result: Any) -> Any:
            waiter.callback(result)
            return result

        inflight.addBoth(share)
        return waiter

    def _prune_held(self) -> None:
        now = self._clock.seconds()
        for key in [k for k, until in self._held.items() if until <= now]:
            del self._held[key]

    async def _done(self, outcome: RefreshOutcome) -> RefreshOutcome:
        return outcome

    async def _save_again(self, key: Tuple[str, str], outcome: RefreshOutcome) -> RefreshOutcome:
        """Save a refreshed session the store could not take before; its outcome once saved."""
        assert outcome.session is not None
        try:
            value = await self._store.save(outcome.session)
        except SessionStoreUnavailable as e:
            log.warn("could not store a refreshed session (again): {error}", error=str(e))
            return outcome
        saved = attr.evolve(outcome, store_unavailable=False, cookie_value=value)
        if self._recent.peek(key) is outcome:
            self._recent.replace(key, saved)
        log.info("refreshed session of {sub} stored", sub=outcome.session.sub)
        return saved

    def _remember(self, key: Tuple[str, str], outcome: RefreshOutcome) -> None:
        self._recent.put(key, outcome, until=self._clock.seconds() + _RECENT_TTL)

    async def _refresh(self, session: Session) -> RefreshOutcome:
        lock = getattr(self._store, "lock", None)
        if lock is None:
            return await self._grant(session)
        name = "refresh:" + _hash(session.id)
        try:
            token = await lock(name, self._lease)
        except SessionStoreUnavailable as e:
            log.warn("could not take a refresh lock: {error}", error=str(e))
            return RefreshOutcome(None, unavailable=True, store_unavailable=True)
        if token is None:
            return await self._wait_for_other(session)
        uncertain = False
        try:
            # Another process may have refreshed just before we took the lock.
            try:
                newer = await self._newer(session)
            except SessionStoreUnavailable as e:
                log.warn("could not read the session before a refresh: {error}", error=str(e))
                return RefreshOutcome(None, unavailable=True, store_unavailable=True)
            if newer is not None:
                return RefreshOutcome(newer)
            outcome = await self._grant(session)
            uncertain = self._is_held(session)
            return outcome
        finally:
            # After a grant with no answer the lock is kept until its lease
            # ends: no other process sends the same refresh token while the
            # IdP may still be granting it.
            if not uncertain:
                try:
                    await self._store.unlock(name, token)
                except SessionStoreUnavailable:
                    log.warn("could not release a refresh lock (it expires with its lease)")

    def _is_held(self, session: Session) -> bool:
        key = (session.id, _hash(session.refresh_token))
        return self._held.get(key, 0.0) > self._clock.seconds()

    async def _newer(self, session: Session) -> Optional[Session]:
        """The stored session, if another process has refreshed it since."""
        stored = await self._store.load(session.id)
        if stored is not None and stored.refresh_token != session.refresh_token:
            return stored
        if stored is not None and (stored.access_token_expires or 0) > (
                session.access_token_expires or 0):
            return stored
        return None

    async def _wait_for_other(self, session: Session) -> RefreshOutcome:
        """Another process holds the lock: wait for its result in the store."""
        deadline = self._clock.seconds() + self._lease
        while self._clock.seconds() < deadline:
            await deferLater(self._clock, _POLL, lambda: None)
            try:
                newer = await self._newer(session)
            except SessionStoreUnavailable as e:
                log.warn("could not read a session refreshed by another process: {error}",
                         error=str(e))
                return RefreshOutcome(None, unavailable=True, store_unavailable=True)
            if newer is not None:
                return RefreshOutcome(newer)
        log.warn("a refresh in another process did not finish within its lease")
        return RefreshOutcome(None, unavailable=True)

    async def _grant(self, session: Session) -> RefreshOutcome:
        assert session.refresh_token is not None
        self.grants += 1
        try:
            tokens = await self._provider.refresh(session.refresh_token)
        except ProviderError as e:
            if e.oauth_error == "invalid_grant":
                log.info("refresh refused ({reason}): the session ends", reason=e.oauth_error)
                return RefreshOutcome(None, ended=True)
            if e.oauth_error is None:
                # No answer from the IdP (a timeout, a lost connection, a 5xx
                # or a garbled reply): it may have granted the refresh all the
                # same. The token is not sent again within the lease.
                self._held[(session.id, _hash(session.refresh_token))] = \
                    self._clock.seconds() + self._lease
                self._prune_held()
            log.warn("refresh failed: {reason}: {detail}", reason=e.reason, detail=e.detail)
            return RefreshOutcome(None, unavailable=True)
        claims = dict(session.claims)
        id_token = tokens.get("id_token") or session.id_token
        # An IdP may send the login's ID token again (OpenID Connect Core
        # 12.2): checked when it was stored, it says nothing new, and its
        # iat is as old as the session. Only a new ID token is validated.
        if tokens.get("id_token") and tokens["id_token"] != session.id_token:
            try:
                header = peek_header(tokens["id_token"])
                kid = header.get("kid")
                keys = await self._provider.keys_for(kid if isinstance(kid, str) else None)
                new_claims = self._validate(tokens["id_token"], keys)
            except TokenError as e:
                log.warn("refresh gave an invalid ID token ({reason}): the session ends",
                         reason=e.reason)
                return RefreshOutcome(None, ended=True)
            except ProviderError as e:
                log.warn("refresh failed: {reason}: {detail}", reason=e.reason, detail=e.detail)
                return RefreshOutcome(None, unavailable=True)
            if new_claims.get("sub") != session.sub or \
                    new_claims.get("iss") != claims.get("iss", new_claims.get("iss")):
                log.warn("refresh gave an ID token for another subject: the session ends")
                return RefreshOutcome(None, ended=True)
            claims.update(new_claims)
            # A refresh is no new sign-in (OpenID Connect Core 12.2): how
            # and when the user signed in stay the session's, whatever the
            # refreshed ID token says (step-up decides on them).
            for name in SIGN_IN_CLAIMS:
                if name in session.claims:
                    claims[name] = session.claims[name]
                else:
                    claims.pop(name, None)
        now = self._clock.seconds()
        expires_in = tokens.get("expires_in")
        refreshed = attr.evolve(
            session,
            claims=claims,
            id_token=id_token,
            access_token=tokens["access_token"],
            access_token_expires=now + expires_in if isinstance(expires_in, int) else None,
            refresh_token=tokens.get("refresh_token") or session.refresh_token,
            last_seen=now,
        )
        try:
            value = await self._store.save(refreshed)
        except SessionStoreUnavailable as e:
            # The new tokens exist only here now (the refresh token may have
            # been rotated): kept with the recent refreshes, they are saved
            # by the next request of this session (see refresh).
            log.warn("session of {sub} refreshed but not stored yet: {error}", sub=session.sub,
                     error=str(e))
            return RefreshOutcome(refreshed, store_unavailable=True)
        log.info("session of {sub} refreshed", sub=session.sub)
        return RefreshOutcome(refreshed, cookie_value=value)
