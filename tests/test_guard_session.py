"""
Tests for what the guard does over a session's life: token refresh (once per
session, whatever the concurrency), IdP outages, logout at the IdP with token
revocation, and back-channel logout.
"""

from __future__ import annotations

from typing import Any, Dict, List
from urllib.parse import urlencode

from twisted.trial.unittest import SynchronousTestCase

from oidcproxy.sessions.stores.memory import MemoryStore

from .fakes import API, APP, CLIENT_ID, SESSION_COOKIE, GuardStack, make_config, open_session
from .idp import ISSUER

NEAR_EXPIRY = 300 - 60 + 1
"""Seconds after login when the 300 s access token is within the 60 s leeway."""


def logged_in(h: GuardStack, claims: Dict[str, Any] = None, sub: str = "user-1") -> Any:
    return h.logged_in(sub=sub, claims=claims)



LEASE = 2 * 5.0 + 5.0
"""The refresh lock's lease with the default IdP timeout (5 s): see OIDCGuard."""

class RefreshTests(SynchronousTestCase):
    def test_refresh_before_expiry(self):
        """Near the access token's expiry the guard refreshes, then serves with the new token."""
        h = GuardStack(self, config=make_config(oidc={"pass_access_token": "header"}))
        browser = logged_in(h)
        first = h.idp.issued[-1]["access_token"]
        h.clock.advance(NEAR_EXPIRY)
        page = browser.navigate("/x")
        self.assertEqual(page.code, 200)
        self.assertEqual(h.idp.refresh_count, 1)
        new = h.idp.issued[-1]
        self.assertNotEqual(new["access_token"], first)
        self.assertEqual(h.app.header(b"x-forwarded-access-token"), [new["access_token"].encode()])
        session = open_session(browser.jar[SESSION_COOKIE])
        self.assertEqual((session.access_token, session.refresh_token),
                         (new["access_token"], new["refresh_token"]))

    def test_no_refresh_while_fresh(self):
        """A fresh access token is not refreshed."""
        h = GuardStack(self)
        browser = logged_in(h)
        h.clock.advance(100)
        self.assertEqual(browser.navigate("/x").code, 200)
        self.assertEqual(h.idp.refresh_count, 0)

    def test_concurrent_requests_one_grant(self):
        """Twenty requests of one session at once, token expiring: exactly one refresh grant."""
        h = GuardStack(self)
        browser = logged_in(h)
        h.clock.advance(NEAR_EXPIRY)
        pending = [browser.send(b"GET", f"/x{i}", headers=API) for i in range(20)]
        h.network.pump()
        self.assertEqual([p.page().code for p in pending], [200] * 20)
        self.assertEqual(h.idp.refresh_count, 1)

    def test_old_cookie_after_refresh_uses_new_tokens(self):
        """A request with the pre-refresh cookie gets the refreshed tokens, no second grant
        (with rotation, a second grant would fail and end the session)."""
        h = GuardStack(self)
        browser = logged_in(h)
        old_jar = dict(browser.jar)
        h.clock.advance(NEAR_EXPIRY)
        self.assertEqual(browser.navigate("/x").code, 200)
        browser.jar = old_jar
        h.clock.advance(1)
        self.assertEqual(browser.get("/y", headers=API).code, 200)
        self.assertEqual(h.idp.refresh_count, 1)

    def test_invalid_grant_ends_session(self):
        """invalid_grant ends the session: browsers go to login, API clients get 401."""
        h = GuardStack(self)
        browser = logged_in(h)
        h.idp.refresh_error = (400, "invalid_grant")
        h.clock.advance(NEAR_EXPIRY)
        page = browser.navigate("/x")
        self.assertEqual(page.code, 302)
        self.assertTrue(page.location.startswith(ISSUER + "/authorize?"))
        self.assertTrue(page.cookie(SESSION_COOKIE).deletes)
        self.assertEqual(h.app.requests, [])

    def test_idp_down_token_still_valid(self):
        """
        The IdP failing (a 5xx: no telling whether it granted the refresh)
        while the access token is still valid: served; the refresh token is
        not sent again within the refresh lease, then it is.
        """
        h = GuardStack(self)
        browser = logged_in(h)
        h.idp.refresh_error = (500, "server_error")
        h.clock.advance(NEAR_EXPIRY)
        self.assertEqual(browser.get("/x", headers=API).code, 200)
        self.assertEqual(browser.get("/x", headers=API).code, 200)
        self.assertEqual(h.idp.refresh_count, 1)
        h.clock.advance(LEASE)
        self.assertEqual(browser.get("/x", headers=API).code, 200)
        self.assertEqual(h.idp.refresh_count, 2)

    def test_idp_down_token_expired_503(self):
        """The IdP failing after the access token expired: 503, the session kept."""
        h = GuardStack(self)
        browser = logged_in(h)
        h.idp.refresh_error = (500, "server_error")
        h.clock.advance(301)
        page = browser.get("/x", headers=API)
        self.assertEqual(page.code, 503)
        self.assertIsNone(page.cookie(SESSION_COOKIE))
        h.idp.refresh_error = None
        # Within the lease the same refresh token is not sent again.
        self.assertEqual(browser.get("/x", headers=API).code, 503)
        h.clock.advance(LEASE)
        self.assertEqual(browser.get("/x", headers=API).code, 200)

    def test_outage_grace(self):
        """With session.idp_outage_grace, an expired access token is served for that long."""
        h = GuardStack(self, config=make_config(session={"idp_outage_grace": "10m"}))
        browser = logged_in(h)
        h.idp.refresh_error = (500, "server_error")
        h.clock.advance(301)
        self.assertEqual(browser.get("/x", headers=API).code, 200)
        h.clock.advance(600)
        self.assertEqual(browser.get("/x", headers=API).code, 503)

    def test_refresh_for_another_subject_ends(self):
        """A refresh whose ID token names another subject ends the session."""
        h = GuardStack(self)
        browser = logged_in(h)
        h.idp.refresh_sub = "someone-else"
        h.clock.advance(NEAR_EXPIRY)
        self.assertEqual(browser.get("/x", headers=API).code, 401)

    def test_refresh_off(self):
        """session.refresh = "off": no refresh; the session lives on its own lifetime."""
        h = GuardStack(self, config=make_config(session={"refresh": "off"}))
        browser = logged_in(h)
        h.clock.advance(400)
        self.assertEqual(browser.get("/x", headers=API).code, 200)
        self.assertEqual(h.idp.refresh_count, 0)


def with_logout_endpoints(case: SynchronousTestCase, **config: Any) -> GuardStack:
    """A harness whose IdP advertises end_session_endpoint and revocation_endpoint."""
    h = GuardStack(case, config=make_config(**config) if config else None, start=False)
    h.idp.advertise_logout = True
    h.guard.start()
    h.network.pump()
    return h


class LogoutTests(SynchronousTestCase):
    def logout(self, h: GuardStack, browser: Any) -> Any:
        return browser.request(b"POST", "/oidc/logout?rd=/bye",
                               headers={b"origin": [APP.encode()]})

    def test_rp_initiated_logout_and_revocation(self):
        """Logout revokes both tokens and sends the browser to the IdP's end_session_endpoint."""
        h = with_logout_endpoints(self)
        browser = logged_in(h)
        issued = h.idp.issued[-1]
        page = self.logout(h, browser)
        self.assertEqual(page.code, 303)
        base, _, _ = page.location.partition("?")
        self.assertEqual(base, ISSUER + "/logout")
        query = page.location_query()
        self.assertEqual(
            {k: v for k, v in query.items()},
            {"ui": ["1"], "id_token_hint": [issued["id_token"]], "client_id": [CLIENT_ID],
             "post_logout_redirect_uri": [APP + "/bye"]},
        )
        self.assertEqual(sorted(h.idp.revoked),
                         sorted([(issued["refresh_token"], "refresh_token"),
                                 (issued["access_token"], "access_token")]))
        self.assertTrue(page.cookie(SESSION_COOKIE).deletes)

    def test_configured_post_logout_redirect(self):
        """oidc.post_logout_redirect_uri replaces the default way back."""
        h = with_logout_endpoints(
            self, oidc={"post_logout_redirect_uri": "https://app.test/logged-out"})
        page = self.logout(h, logged_in(h))
        self.assertEqual(page.location_query()["post_logout_redirect_uri"],
                         ["https://app.test/logged-out"])

    def test_local_only(self):
        """end_session = false and revoke_on_logout = false: a local logout only."""
        h = with_logout_endpoints(self, oidc={"end_session": False},
                                  session={"revoke_on_logout": False})
        page = self.logout(h, logged_in(h))
        self.assertEqual(page.location, APP + "/bye")
        self.assertEqual(h.idp.revoked, [])

    def test_without_idp_support(self):
        """An IdP without end_session/revocation endpoints: local logout, nothing sent."""
        h = GuardStack(self)
        page = self.logout(h, logged_in(h))
        self.assertEqual(page.location, APP + "/bye")
        self.assertEqual(h.idp.revoked, [])


class BackchannelTests(SynchronousTestCase):
    def harness(self) -> GuardStack:
        return GuardStack(self, memory_store=True)

    def logout_token(self, h: GuardStack, **claims: Any) -> str:
        now = int(h.clock.seconds())
        body: Dict[str, Any] = {
            "iss": ISSUER, "aud": CLIENT_ID, "iat": now, "jti": f"jti-{len(self.sent)}",
            "events": {"http://schemas.openid.net/event/backchannel-logout": {}},
        }
        body.update(claims)
        for key in [k for k, v in body.items() if v is None]:
            del body[key]
        return h.idp.id_token(body)

    def setUp(self):
        self.sent: List[str] = []

    def post(self, h: GuardStack, token: str) -> Any:
        self.sent.append(token)
        client = h.browser()
        return client.request(
            b"POST", "/oidc/backchannel-logout",
            headers={b"content-type": [b"application/x-www-form-urlencoded"]},
            body=urlencode({"logout_token": token}).encode())

    def test_by_sid(self):
        """A logout token with the session's sid ends that session only."""
        h = self.harness()
        one = logged_in(h, claims={"sid": "sid-1"})
        two = logged_in(h, claims={"sid": "sid-2"})
        page = self.post(h, self.logout_token(h, sid="sid-1", sub="user-1"))
        self.assertEqual((page.code, page.json()), (200, {}))
        self.assertEqual(page.header(b"cache-control"), b"no-store")
        self.assertEqual(one.get("/x", headers=API).code, 401)
        self.assertEqual(two.get("/x", headers=API).code, 200)

    def test_by_sub(self):
        """A logout token with only a sub ends every session of that user."""
        h = self.harness()
        one = logged_in(h, sub="alice")
        two = logged_in(h, sub="alice")
        other = logged_in(h, sub="bob")
        self.assertEqual(self.post(h, self.logout_token(h, sub="alice")).code, 200)
        self.assertEqual([b.get("/x", headers=API).code for b in (one, two, other)],
                         [401, 401, 200])

    def test_replayed_token(self):
        """A logout token is accepted once; its replay is a 400."""
        h = self.harness()
        token = self.logout_token(h, sub="alice")
        self.assertEqual(self.post(h, token).code, 200)
        page = self.post(h, token)
        self.assertEqual((page.code, page.json()["error"]), (400, "invalid_request"))

    def test_invalid_tokens(self):
        """Tokens breaking the spec (nonce present, no events, wrong aud, no sub/sid,
        not signed by the IdP) are refused with 400 and end nothing."""
        h = self.harness()
        alice = logged_in(h, sub="alice")
        bad = [
            self.logout_token(h, sub="alice", nonce="n"),
            self.logout_token(h, sub="alice", events=None),
            self.logout_token(h, sub="alice", aud="someone-else"),
            self.logout_token(h),
            self.logout_token(h, sub="alice")[:-4] + "AAAA",
            "not a jwt",
        ]
        for token in bad:
            page = self.post(h, token)
            self.assertEqual(page.code, 400, token)
        self.assertEqual(alice.get("/x", headers=API).code, 200)

    def test_method_and_parameters(self):
        """GET is 405; a POST without exactly one logout_token is 400."""
        h = self.harness()
        self.assertEqual(h.browser().get("/oidc/backchannel-logout").code, 405)
        page = h.browser().request(b"POST", "/oidc/backchannel-logout", body=b"")
        self.assertEqual(page.code, 400)

    def test_cookie_store_501(self):
        """With the stateless cookie store the endpoint answers 501 and says why."""
        h = GuardStack(self)
        page = self.post(h, self.logout_token(h, sub="alice"))
        self.assertEqual(page.code, 501)
        self.assertIn("redis", page.json()["message"])


class MemoryStoreIndexTests(SynchronousTestCase):
    def test_delete_by_and_locks(self):
        """The memory store finds sessions by sub/sid and has leased locks, like Redis."""
        from twisted.internet.task import Clock

        from oidcproxy.sessions.session import Session

        clock = Clock()
        store = MemoryStore(clock)
        for i, (sub, sid) in enumerate([("a", "s1"), ("a", "s2"), ("b", "s3")]):
            store.save(Session(id=f"id{i}", sub=sub, claims={}, created=0, last_seen=0,
                               expires=100, sid=sid))
        self.assertEqual(self.successResultOf(store.delete_by(sid="s2")), 1)
        self.assertEqual([s.id for s in self.successResultOf(store.sessions_of("a"))], ["id0"])
        self.assertEqual(self.successResultOf(store.delete_by(sub="a")), 1)
        self.assertEqual(len(store), 1)
        token = self.successResultOf(store.lock("x", 5))
        self.assertIsNone(self.successResultOf(store.lock("x", 5)))
        store.unlock("x", "wrong")
        self.assertIsNone(self.successResultOf(store.lock("x", 5)))
        clock.advance(5)
        self.assertIsNotNone(self.successResultOf(store.lock("x", 5)))
        self.assertIsNotNone(token)


class RevocationListTests(SynchronousTestCase):
    """Cookie sessions with a revocation list (in Redis in production; a memory store here)."""

    def harness(self) -> GuardStack:
        from twisted.internet.task import Clock

        h = GuardStack(self, start=False)
        self.revocations = MemoryStore(Clock())
        h.guard.parts.revocations = self.revocations
        self.revocations._clock = h.clock
        h.guard.start()
        h.network.pump()
        return h

    def post(self, h: GuardStack, token: str) -> Any:
        return h.browser().request(
            b"POST", "/oidc/backchannel-logout",
            headers={b"content-type": [b"application/x-www-form-urlencoded"]},
            body=urlencode({"logout_token": token}).encode())

    def logout_token(self, h: GuardStack, jti: str, **claims: Any) -> str:
        body = {"iss": ISSUER, "aud": CLIENT_ID, "iat": int(h.clock.seconds()), "jti": jti,
                "events": {"http://schemas.openid.net/event/backchannel-logout": {}}, **claims}
        return h.idp.id_token(body)

    def test_backchannel_revokes_cookie_sessions(self):
        """With cookie sessions, a back-channel logout by sid ends that session even though its
        cookie still decrypts; other sessions live on."""
        h = self.harness()
        one = logged_in(h, claims={"sid": "sid-1"})
        two = logged_in(h, claims={"sid": "sid-2"})
        h.clock.advance(1)
        self.assertEqual(self.post(h, self.logout_token(h, "j1", sid="sid-1")).code, 200)
        page = one.get("/x", headers=API)
        self.assertEqual(page.code, 401)
        self.assertTrue(page.cookie(SESSION_COOKIE).deletes)
        self.assertEqual(two.get("/x", headers=API).code, 200)

    def test_by_sub_and_later_logins(self):
        """A revocation by sub ends the user's sessions made before it, not later logins."""
        h = self.harness()
        old = logged_in(h, sub="alice")
        h.clock.advance(1)
        self.assertEqual(self.post(h, self.logout_token(h, "j2", sub="alice")).code, 200)
        h.clock.advance(1)
        new = logged_in(h, sub="alice")
        self.assertEqual(old.get("/x", headers=API).code, 401)
        self.assertEqual(new.get("/x", headers=API).code, 200)

    def logout(self, browser: Any) -> Any:
        return browser.request(b"POST", "/oidc/logout", headers={b"origin": [APP.encode()]})

    def test_logout_revokes_a_copy_of_the_cookie(self):
        """
        A local logout revokes the session itself in the list: a copy of its
        cookie taken before gets 401 (and is cleared), a navigation with it
        goes to the login; another session of the same user and other users'
        sessions live on.
        """
        h = self.harness()
        alice = logged_in(h, sub="alice")
        other_device = logged_in(h, sub="alice")
        bob = logged_in(h, sub="bob")
        copy = h.browser()
        copy.jar = dict(alice.jar)
        self.assertEqual(copy.get("/x", headers=API).code, 200)
        page = self.logout(alice)
        self.assertEqual(page.code, 303)
        self.assertTrue(page.cookie(SESSION_COOKIE).deletes)
        page = copy.get("/x", headers=API)
        self.assertEqual(page.code, 401)
        self.assertTrue(page.cookie(SESSION_COOKIE).deletes)
        self.assertEqual(other_device.get("/x", headers=API).code, 200)
        self.assertEqual(bob.get("/x", headers=API).code, 200)

    def test_logged_out_copy_goes_to_login(self):
        """A browser navigation with a copy of a logged-out session's cookie is sent to the IdP."""
        h = self.harness()
        alice = logged_in(h, sub="alice")
        copy = h.browser()
        copy.jar = dict(alice.jar)
        self.assertEqual(self.logout(alice).code, 303)
        page = copy.navigate("/x")
        self.assertEqual(page.code, 302)
        self.assertTrue(page.location.startswith(ISSUER + "/authorize?"))
        self.assertEqual(len(h.app.requests), 0)

    def test_revocation_kept_as_long_as_a_copy_could_live(self):
        """The session's id is revoked for what is left of its lifetime (8 h from login)."""
        h = self.harness()
        marked: List[Dict[str, Any]] = []
        mark = self.revocations.mark_revoked

        def recording(**kwargs: Any) -> Any:
            marked.append(kwargs)
            return mark(**kwargs)

        self.revocations.mark_revoked = recording  # type: ignore[method-assign]
        alice = logged_in(h, sub="alice")
        session_id = open_session(alice.jar[SESSION_COOKIE]).id
        h.clock.advance(3600)
        self.assertEqual(self.logout(alice).code, 303)
        self.assertEqual(marked, [{"session_id": session_id, "ttl": 7 * 3600.0}])

    def test_new_login_revokes_the_old_session(self):
        """A new login in the same browser ends its old session: a copy of the old cookie fails."""
        h = self.harness()
        alice = logged_in(h, sub="alice")
        copy = h.browser()
        copy.jar = dict(alice.jar)
        h.clock.advance(1)
        self.assertEqual(h.login(alice, path="/oidc/login", sub="alice").code, 302)
        self.assertEqual(copy.get("/x", headers=API).code, 401)
        self.assertEqual(alice.get("/x", headers=API).code, 200)

    def test_logout_with_the_list_unavailable(self):
        """
        The list cannot take the revocation: 503 saying the user is not
        logged out yet, the cookie kept (so the logout can be done again),
        nothing revoked at the IdP; once the list is back the logout works.
        """
        from twisted.internet import defer

        from oidcproxy.sessions.session import SessionStoreUnavailable

        h = self.harness()
        alice = logged_in(h, sub="alice")
        mark = self.revocations.mark_revoked
        self.revocations.mark_revoked = lambda **kw: defer.fail(  # type: ignore[method-assign]
            SessionStoreUnavailable("down"))
        page = self.logout(alice)
        self.assertEqual(page.code, 503)
        self.assertIn(b"not logged out", page.body)
        self.assertIsNone(page.cookie(SESSION_COOKIE))
        self.assertEqual(alice.get("/x", headers=API).code, 200)
        self.revocations.mark_revoked = mark  # type: ignore[method-assign]
        copy = h.browser()
        copy.jar = dict(alice.jar)
        self.assertEqual(self.logout(alice).code, 303)
        self.assertEqual(copy.get("/x", headers=API).code, 401)

    def test_list_unavailable_is_503(self):
        """A revocation list that cannot answer: 503, not a logout and not a pass."""
        from twisted.internet import defer

        from oidcproxy.sessions.session import SessionStoreUnavailable

        h = self.harness()
        browser = logged_in(h)
        self.revocations.revoked_at = lambda **kw: defer.fail(SessionStoreUnavailable("down"))
        page = browser.get("/x", headers=API)
        self.assertEqual(page.code, 503)
        self.assertIsNone(page.cookie(SESSION_COOKIE))


class FaultyStore(MemoryStore):
    """
    A L{MemoryStore} (with its locks, indexes and revocation list) whose
    calls fail as those of an unavailable Redis do, with
    L{SessionStoreUnavailable}, once L{fail} says so.
    """

    METHODS = ("load", "save", "delete", "delete_by", "lock", "unlock", "mark_revoked",
               "revoked_at")

    def __init__(self, clock: Any) -> None:
        super().__init__(clock)
        self.down: Dict[str, int] = {}

    def fail(self, method: str, after: int = 0) -> None:
        """Make calls to C{method} fail, after C{after} more that succeed."""
        assert method in self.METHODS, method
        self.down[method] = after

    def back(self) -> None:
        self.down.clear()

    def __getattribute__(self, name: str) -> Any:
        attribute = super().__getattribute__(name)
        if name not in FaultyStore.METHODS:
            return attribute
        down = super().__getattribute__("down")

        def call(*args: Any, **kwargs: Any) -> Any:
            from twisted.internet import defer

            from oidcproxy.sessions.session import SessionStoreUnavailable

            if name in down:
                if down[name] == 0:
                    return defer.fail(SessionStoreUnavailable(f"Redis {name} failed: down"))
                down[name] -= 1
            return attribute(*args, **kwargs)

        return call


class StoreFaultTests(SynchronousTestCase):
    """
    A session store that cannot answer, at each of its calls on a request's
    way: a 503 with Retry-After (JSON for API clients, a page for browsers),
    one warning line without a traceback, and the session cookie left alone;
    never a 500.
    """

    def setUp(self):
        from twisted.logger import globalLogPublisher

        self.events: List[Dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def harness(self, **config: Any) -> GuardStack:
        self.store: FaultyStore = None  # type: ignore[assignment]

        def make(clock: Any) -> FaultyStore:
            self.store = FaultyStore(clock)
            return self.store

        return GuardStack(self, config=make_config(**config) if config else None, store=make)

    def assertStore503(self, page: Any, navigate: bool = False, error: str = "down") -> None:
        from twisted.logger import LogLevel

        self.assertEqual(page.code, 503, page.body)
        self.assertEqual(page.header(b"retry-after"), b"5")
        if navigate:
            self.assertIn(b"text/html", page.header(b"content-type"))
            self.assertIn(b"temporarily unavailable", page.body)
        else:
            self.assertEqual(page.json()["error"], "session_store_unavailable")
        self.assertIsNone(page.cookie(SESSION_COOKIE))
        self.assertIsNone(page.header(b"location"))
        self.assertEqual(self.flushLoggedErrors(), [], "a traceback was logged")
        warned = [e for e in self.events
                  if e.get("log_format", "").startswith("session store unavailable")]
        self.assertTrue(warned, "no warning line")
        self.assertEqual(warned[-1]["log_level"], LogLevel.warn)
        self.assertIn(error, warned[-1]["error"])
        self.events.clear()

    def test_load(self):
        """The session cannot be loaded: 503 to an API call and to a navigation."""
        h = self.harness()
        browser = logged_in(h)
        self.store.fail("load")
        self.assertStore503(browser.get("/x", headers=API))
        self.assertStore503(browser.navigate("/x"), navigate=True)
        self.assertStore503(browser.get("/oidc/userinfo", headers=API))
        self.assertEqual(h.app.requests, [])
        self.store.back()
        self.assertEqual(browser.get("/x", headers=API).code, 200)

    def test_idle_timeout_renewal_save(self):
        """
        With idle_timeout, the renewal that moves the idle clock cannot be
        saved: 503 (was a 500 with a traceback), nothing reaches the app;
        the session still works once the store is back.
        """
        h = self.harness(session={"idle_timeout": "10m"})
        browser = logged_in(h)
        h.clock.advance(120)
        self.store.fail("save")
        self.assertStore503(browser.get("/x", headers=API))
        self.assertStore503(browser.navigate("/x"), navigate=True)
        self.assertEqual(h.app.requests, [])
        self.store.back()
        page = browser.get("/x", headers=API)
        self.assertEqual(page.code, 200)
        self.assertIsNotNone(page.cookie(SESSION_COOKIE))

    def test_sliding_renewal_save(self):
        """The same for a sliding session, whose expiry moves with each renewal."""
        h = self.harness(session={"idle_timeout": "10m", "sliding": True})
        browser = logged_in(h)
        h.clock.advance(120)
        self.store.fail("save")
        self.assertStore503(browser.get("/x", headers=API))

    def test_refresh_lock(self):
        """
        The refresh lock cannot be taken: the access token is served while
        it is valid (the refresh is early), then 503 (not an IdP error).
        """
        h = self.harness()
        browser = logged_in(h)
        self.store.fail("lock")
        h.clock.advance(NEAR_EXPIRY)
        self.assertEqual(browser.get("/x", headers=API).code, 200)
        h.clock.advance(60)
        self.assertStore503(browser.get("/x", headers=API), error="no refresh")
        self.assertEqual(h.idp.refresh_count, 0)
        self.store.back()
        self.assertEqual(browser.get("/x", headers=API).code, 200)
        self.assertEqual(h.idp.refresh_count, 1)

    def test_refresh_read_after_lock(self):
        """
        The lock is taken but the session cannot be read again (has another
        process refreshed it?): served while the token is valid (was a 500
        with a traceback), then 503; no refresh grant meanwhile.
        """
        h = self.harness()
        browser = logged_in(h)
        h.clock.advance(NEAR_EXPIRY)
        # The request's own load passes; the refresher's fails.
        self.store.fail("load", after=1)
        page = browser.get("/x", headers=API)
        self.assertEqual(page.code, 200, page.body)
        self.assertEqual(self.flushLoggedErrors(), [])
        h.clock.advance(60)
        self.store.fail("load", after=1)
        self.assertStore503(browser.get("/x", headers=API), error="no refresh")
        self.assertEqual(h.idp.refresh_count, 0)

    def test_refreshed_session_save(self):
        """
        The IdP refreshed the tokens but the store cannot save them: 503 (the
        request is not served on tokens the store does not hold); once the
        store is back the next request saves them and is served with the
        new access token, without a second grant.
        """
        h = self.harness(oidc={"pass_access_token": "header"})
        browser = logged_in(h)
        h.clock.advance(NEAR_EXPIRY)
        self.store.fail("save")
        self.assertStore503(browser.get("/x", headers=API), error="refreshed session")
        self.assertEqual(h.app.requests, [])
        self.assertEqual(h.idp.refresh_count, 1)
        self.store.back()
        h.clock.advance(5)
        page = browser.get("/x", headers=API)
        self.assertEqual(page.code, 200, page.body)
        new = h.idp.issued[-1]["access_token"]
        self.assertEqual(h.app.header(b"x-forwarded-access-token"), [new.encode()])
        self.assertEqual(h.idp.refresh_count, 1)
        stored = self.successResultOf(self.store.load(browser.jar[SESSION_COOKIE]))
        self.assertEqual(stored.access_token, new)

    def test_backchannel_logout(self):
        """Back-channel logout: the jti lock or the deletion cannot be done: 503 JSON."""
        h = self.harness()
        logged_in(h, claims={"sid": "sid-1"})
        tokens = BackchannelTests()
        tokens.sent = []
        for method in ("lock", "delete_by"):
            self.store.fail(method)
            token = tokens.logout_token(h, sid="sid-1", sub="user-1", jti=f"jti-{method}")
            page = tokens.post(h, token)
            self.assertStore503(page)
            self.store.back()

    def test_callback_save(self):
        """The session of a login cannot be saved: 503 with Retry-After, no session cookie."""
        h = self.harness()
        self.store.fail("save")
        browser = h.browser()
        self.assertStore503(h.login(browser), navigate=True)

    def test_logout_delete(self):
        """
        Logout cannot delete the session: 503 saying the user is not logged
        out yet, the cookie kept and the session still usable (a copy of it
        would be too: no false "logged out"); once the store is back the
        logout ends it.
        """
        h = self.harness()
        browser = logged_in(h)
        self.store.fail("delete")
        page = browser.request(b"POST", "/oidc/logout", headers={b"origin": [APP.encode()]})
        self.assertStore503(page, navigate=True, error="down")
        self.store.back()
        self.assertEqual(browser.get("/x", headers=API).code, 200)
        copy = h.browser()
        copy.jar = dict(browser.jar)
        page = browser.request(b"POST", "/oidc/logout", headers={b"origin": [APP.encode()]})
        self.assertEqual(page.code, 303)
        self.assertEqual(copy.get("/x", headers=API).code, 401)
