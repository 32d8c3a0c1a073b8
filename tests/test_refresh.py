"""
Tests for L{oidcproxy.oidc.refresh.Refresher}: one grant per session at a time,
within a process and across processes, and what each IdP answer does to the
session.
"""

from __future__ import annotations

from typing import Any, Dict

import attr
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from oidcproxy.oidc.provider import ProviderError
from oidcproxy.oidc.refresh import RefreshOutcome, _hash
from oidcproxy.oidc.tokens import TokenError
from oidcproxy.sessions.session import Session, SessionStoreUnavailable

from .fakes import START, LockingStore, NoLockStore, RefresherStack

NOW = START


ID_TOKENS: Dict[str, Dict[str, Any]] = {
    "id-alice": {"iss": "https://idp", "sub": "alice", "name": "Alice 2"},
    "id-mallory": {"iss": "https://idp", "sub": "mallory"},
}


def validate(token: str, keys: Any) -> Dict[str, Any]:
    if token not in ID_TOKENS:
        raise TokenError("bad_signature", "no")
    return dict(ID_TOKENS[token])


def session(**kw: Any) -> Session:
    base = dict(id="s" * 43, sub="alice", claims={"iss": "https://idp", "sub": "alice",
                                                   "name": "Alice"},
                created=NOW - 100, last_seen=NOW - 10, expires=NOW + 3600,
                id_token="id-old", access_token="at-1", access_token_expires=NOW + 30,
                refresh_token="rt-1")
    base.update(kw)
    return Session(**base)


def _patch_peek(case: SynchronousTestCase) -> None:
    # The fake ID tokens are names, not JWTs: look at their "header" as empty.
    import oidcproxy.oidc.refresh as refresh_module

    case.patch(refresh_module, "peek_header", lambda token: {})


class DueTests(SynchronousTestCase):
    def test_on_expiry(self):
        """on_expiry: due within refresh_leeway of the access token's expiry, not before."""
        r = RefresherStack(validate, leeway=60.0).refresher
        self.assertFalse(r.due(session(access_token_expires=NOW + 61), NOW))
        self.assertTrue(r.due(session(access_token_expires=NOW + 60), NOW))
        self.assertTrue(r.due(session(access_token_expires=NOW - 5), NOW))

    def test_off_and_no_refresh_token(self):
        """Never due when off, or without a refresh token."""
        off = RefresherStack(validate, mode="off").refresher
        self.assertFalse(off.due(session(access_token_expires=NOW), NOW))
        self.assertFalse(RefresherStack(validate).refresher.due(
            session(access_token_expires=NOW, refresh_token=None), NOW))

    def test_interval(self):
        """interval: also due once the session has not been renewed for refresh_interval."""
        r = RefresherStack(validate, mode="interval", interval=300.0).refresher
        self.assertFalse(r.due(session(access_token_expires=NOW + 3600, last_seen=NOW - 299), NOW))
        self.assertTrue(r.due(session(access_token_expires=NOW + 3600, last_seen=NOW - 300), NOW))


class GrantTests(SynchronousTestCase):
    def setUp(self):
        _patch_peek(self)

    def test_refreshed_session(self):
        """A refresh replaces the tokens, rotates the refresh token, merges new ID token claims."""
        h = RefresherStack(validate)
        d = h.refresher.refresh(session())
        h.answer(refresh_token="rt-2", id_token="id-alice")
        outcome = self.successResultOf(d)
        new = outcome.session
        self.assertEqual(
            (new.access_token, new.access_token_expires, new.refresh_token, new.id_token,
             new.claims["name"], new.id, outcome.ended, outcome.unavailable),
            ("at-2", NOW + 300, "rt-2", "id-alice", "Alice 2", "s" * 43, False, False),
        )
        self.assertEqual(h.provider.refresh_tokens, ["rt-1"])
        self.assertEqual(self.successResultOf(h.store.load(outcome.cookie_value)), new)

    def test_refresh_token_kept_without_rotation(self):
        """Without a new refresh token the old one is kept."""
        h = RefresherStack(validate)
        d = h.refresher.refresh(session())
        h.answer()
        self.assertEqual(self.successResultOf(d).session.refresh_token, "rt-1")

    def test_invalid_grant_ends_the_session(self):
        """invalid_grant ends the session."""
        h = RefresherStack(validate)
        d = h.refresher.refresh(session())
        h.provider.pending[0].errback(ProviderError(401, "token_error", "x", "invalid_grant"))
        self.assertEqual(self.successResultOf(d), RefreshOutcome(None, ended=True))

    def test_network_error_keeps_the_session(self):
        """A 5xx, timeout or unreachable IdP leaves the session as it is (unavailable)."""
        for error in [ProviderError(502, "bad_token_response", "500"),
                      ProviderError(504, "timeout", "slow"),
                      ProviderError(502, "unreachable", "refused")]:
            h = RefresherStack(validate)
            d = h.refresher.refresh(session())
            h.provider.pending[0].errback(error)
            self.assertEqual(self.successResultOf(d), RefreshOutcome(None, unavailable=True))

    def test_id_token_for_another_subject_ends(self):
        """A refreshed ID token about someone else ends the session."""
        h = RefresherStack(validate)
        d = h.refresher.refresh(session())
        h.answer(id_token="id-mallory")
        self.assertEqual(self.successResultOf(d), RefreshOutcome(None, ended=True))

    def test_invalid_id_token_ends(self):
        """A refreshed ID token that fails validation ends the session."""
        h = RefresherStack(validate)
        d = h.refresher.refresh(session())
        h.answer(id_token="forged")
        self.assertEqual(self.successResultOf(d), RefreshOutcome(None, ended=True))


class SingleFlightTests(SynchronousTestCase):
    def setUp(self):
        _patch_peek(self)

    def test_fifty_concurrent_requests_one_grant(self):
        """50 concurrent refreshes of one session send one grant and all get its result —
        even when the first caller awaits its Deferred (which takes its result away)."""
        h = RefresherStack(validate)
        s = session()
        first = h.refresher.refresh(s)
        awaited = []

        async def wait() -> None:
            awaited.append(await first)

        defer.Deferred.fromCoroutine(wait())
        ds = [h.refresher.refresh(s) for _ in range(49)]
        self.assertEqual(len(h.provider.pending), 1)
        h.answer(refresh_token="rt-2")
        outcomes = [self.successResultOf(d) for d in ds] + awaited
        self.assertEqual(len(outcomes), 50)
        self.assertEqual({o.session.access_token for o in outcomes}, {"at-2"})
        self.assertEqual(h.refresher.grants, 1)

    def test_old_session_after_refresh_gets_the_new_one(self):
        """A request still carrying the old session just after a refresh does not spend the
        refresh token again: it gets the refreshed session (for a minute, in this process)."""
        h = RefresherStack(validate, NoLockStore)
        s = session()
        d = h.refresher.refresh(s)
        h.answer(refresh_token="rt-2")
        first = self.successResultOf(d)
        h.clock.advance(5)
        again = self.successResultOf(h.refresher.refresh(s))
        self.assertEqual(again.session, first.session)
        self.assertEqual(h.refresher.grants, 1)
        h.clock.advance(60)
        h.refresher.refresh(s)
        self.assertEqual(h.refresher.grants, 2)

    def test_unanswered_grant_not_repeated_within_the_lease(self):
        """
        A grant that got no answer (timeout) may have been carried out by the
        IdP: the same refresh token is not sent again until the lease is over
        (meanwhile: unavailable, the caller serves the old access token or
        503); then it is.
        """
        h = RefresherStack(validate, lease=15.0)
        d = h.refresher.refresh(session())
        h.provider.pending[0].errback(ProviderError(504, "timeout", "slow"))
        self.assertTrue(self.successResultOf(d).unavailable)
        h.clock.advance(14.9)
        again = self.successResultOf(h.refresher.refresh(session()))
        self.assertTrue(again.unavailable)
        self.assertEqual(h.refresher.grants, 1)
        h.clock.advance(0.1)
        h.refresher.refresh(session())
        self.assertEqual(h.refresher.grants, 2)

    def test_refused_grant_may_be_retried(self):
        """An error answer from the IdP (not invalid_grant) is certain: the next request tries again."""
        h = RefresherStack(validate, lease=15.0)
        d = h.refresher.refresh(session())
        h.provider.pending[0].errback(ProviderError(400, "token_error", "no", oauth_error="invalid_client"))
        self.assertTrue(self.successResultOf(d).unavailable)
        h.refresher.refresh(session())
        self.assertEqual(h.refresher.grants, 2)


class CrossProcessTests(SynchronousTestCase):
    def setUp(self):
        _patch_peek(self)

    def test_lock_kept_after_an_unanswered_grant(self):
        """No other process may send the refresh token while the IdP may still grant it."""
        h = RefresherStack(validate, LockingStore, lease=15.0)
        s = session()
        h.store.save(s)
        d = h.refresher.refresh(s)
        h.provider.pending[0].errback(ProviderError(504, "timeout", "slow"))
        self.assertTrue(self.successResultOf(d).unavailable)
        self.assertIn("refresh:" + _hash(s.id), h.store.locks)

    def test_lock_released_after_an_answer(self):
        h = RefresherStack(validate, LockingStore, lease=15.0)
        s = session()
        h.store.save(s)
        d = h.refresher.refresh(s)
        h.provider.pending[0].errback(ProviderError(400, "token_error", "no", oauth_error="invalid_grant"))
        self.assertTrue(self.successResultOf(d).ended)
        self.assertEqual(h.store.locks, {})

    def test_lock_held_elsewhere_waits_for_the_result(self):
        """With the lock held by another process, no grant is sent; the stored result is used."""
        h = RefresherStack(validate, LockingStore, lease=10.0)
        s = session()
        h.store.locks["refresh:" + _hash(s.id)] = "other"
        d = h.refresher.refresh(s)
        h.clock.advance(0.1)
        self.assertNoResult(d)
        newer = attr.evolve(s, access_token="at-other", access_token_expires=NOW + 900,
                            refresh_token="rt-other")
        h.store.save(newer)
        h.clock.advance(0.1)
        self.assertEqual(self.successResultOf(d).session, newer)
        self.assertEqual(h.refresher.grants, 0)

    def test_lock_never_released_gives_unavailable(self):
        """A refresh elsewhere that does not finish within the lease: unavailable, not a hang."""
        h = RefresherStack(validate, LockingStore, lease=1.0)
        s = session()
        h.store.locks["refresh:" + _hash(s.id)] = "other"
        d = h.refresher.refresh(s)
        for _ in range(11):
            h.clock.advance(0.1)
        self.assertEqual(self.successResultOf(d), RefreshOutcome(None, unavailable=True))

    def test_refreshed_just_before_the_lock(self):
        """Having taken the lock, a session already refreshed by another process is used as is."""
        h = RefresherStack(validate, LockingStore)
        s = session()
        newer = attr.evolve(s, refresh_token="rt-other", access_token="at-other")
        h.store.save(newer)
        outcome = self.successResultOf(h.refresher.refresh(s))
        self.assertEqual(outcome.session, newer)
        self.assertEqual(h.refresher.grants, 0)
        self.assertEqual(h.store.locks, {})

    def test_lock_released_after_grant(self):
        """The lock is released once the refreshed session is stored."""
        h = RefresherStack(validate, LockingStore)
        h.store.save(session())
        d = h.refresher.refresh(session())
        self.assertEqual(len(h.store.locks), 1)
        h.answer()
        self.successResultOf(d)
        self.assertEqual(h.store.locks, {})

    def test_lock_store_down(self):
        """A store that cannot lock makes the refresh unavailable (503 upstream), not a crash."""
        h = RefresherStack(validate, LockingStore)

        def down(name: str, lease: float) -> defer.Deferred:
            return defer.fail(SessionStoreUnavailable("down"))

        h.store.lock = down
        self.assertEqual(self.successResultOf(h.refresher.refresh(session())),
                         RefreshOutcome(None, unavailable=True, store_unavailable=True))


class StoreFaultTests(SynchronousTestCase):
    """
    A session store that cannot answer, at each of the refresher's calls to
    it: the outcome says so (never a failed Deferred), and no grant is lost.
    """

    def setUp(self):
        _patch_peek(self)

    def test_read_after_the_lock_fails(self):
        """
        The lock is taken but the stored session cannot be read (did another
        process refresh it?): no grant, store_unavailable, the lock released.
        """
        h = RefresherStack(validate, LockingStore)
        h.store.load = lambda value: defer.fail(SessionStoreUnavailable("down"))
        outcome = self.successResultOf(h.refresher.refresh(session()))
        self.assertEqual(outcome, RefreshOutcome(None, unavailable=True, store_unavailable=True))
        self.assertEqual(h.refresher.grants, 0)
        self.assertEqual(h.store.locks, {})

    def test_waiting_for_another_process_fails(self):
        """The lock is held elsewhere and the store stops answering: store_unavailable."""
        h = RefresherStack(validate, LockingStore, lease=10.0)
        s = session()
        h.store.locks["refresh:" + _hash(s.id)] = "other"
        d = h.refresher.refresh(s)
        h.store.load = lambda value: defer.fail(SessionStoreUnavailable("down"))
        h.clock.advance(0.1)
        self.assertEqual(self.successResultOf(d),
                         RefreshOutcome(None, unavailable=True, store_unavailable=True))

    def test_refreshed_session_not_saved_then_saved(self):
        """
        The IdP granted the refresh but the store cannot save the refreshed
        session: the outcome carries it with store_unavailable (not to be
        served); the next refresh of the same session, once the store is
        back, saves it without a second grant (the refresh token may have
        been rotated).
        """
        h = RefresherStack(validate, NoLockStore)
        s = session()
        save = h.store.save
        h.store.save = lambda session: defer.fail(SessionStoreUnavailable("down"))
        d = h.refresher.refresh(s)
        h.answer(refresh_token="rt-2")
        first = self.successResultOf(d)
        self.assertTrue(first.store_unavailable)
        self.assertEqual(first.session.refresh_token, "rt-2")
        self.assertIsNone(self.successResultOf(h.store.load(s.id)))

        h.clock.advance(2)
        again = self.successResultOf(h.refresher.refresh(s))
        self.assertTrue(again.store_unavailable, "the store is still down")

        h.store.save = save
        h.clock.advance(2)
        saved = self.successResultOf(h.refresher.refresh(s))
        self.assertFalse(saved.store_unavailable)
        self.assertEqual(saved.session, first.session)
        self.assertEqual(saved.cookie_value, s.id)
        self.assertEqual(self.successResultOf(h.store.load(s.id)).refresh_token, "rt-2")
        self.assertEqual(h.refresher.grants, 1)
        self.assertFalse(self.successResultOf(h.refresher.refresh(s)).store_unavailable)
        self.assertEqual(h.refresher.grants, 1)
