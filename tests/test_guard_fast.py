"""
Tests for the guard's synchronous decision: a request whose route is public,
whose cookie session the store opens at once, or whose bearer token's
validation is cached is decided before C{render} returns, with no coroutine;
every refusal of the way that waits happens there too, and whatever needs to
wait (a refresh, a renewal, the revocation list, an ended session, an
uncached token) still takes the way that waits.
"""

from __future__ import annotations

from typing import Any, List, Tuple

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from oidcproxy.sessions.stores.memory import MemoryStore
from oidcproxy.web import guard as guard_module

from .fakes import API, SESSION_COOKIE, GuardStack, make_config, open_session
from .test_guard_authz import ALICE, BOB, ROUTES
from .test_guard_bearer import bearer, rs256

NEAR_EXPIRY = 300 - 60 + 1
"""Seconds after login when the 300 s access token is within the refresh leeway."""


class Watch:
    """
    Records, for each request the guard renders, whether it made a
    coroutine and whether the request was answered (by the guard or the
    application behind it) when C{render} returned.
    """

    def __init__(self, case: SynchronousTestCase, h: GuardStack) -> None:
        self.renders: List[Tuple[int, bool]] = []
        made: List[Any] = []

        class Counting(Deferred):  # type: ignore[type-arg]
            @classmethod
            def fromCoroutine(cls, coroutine: Any) -> Any:  # noqa: N802 - Twisted's name
                made.append(coroutine)
                return Deferred.fromCoroutine(coroutine)

        case.patch(guard_module, "Deferred", Counting)
        render = h.guard.render

        def watched(request: Any) -> Any:
            before = len(made)
            result = render(request)
            self.renders.append((len(made) - before, bool(request.finished)))
            return result

        case.patch(h.guard, "render", watched)

    def at_once(self) -> bool:
        """Whether the last request was decided and answered with no coroutine."""
        return self.renders[-1] == (0, True)

    def waited(self) -> bool:
        """Whether the last request took the way that waits (a coroutine)."""
        return self.renders[-1][0] == 1


class FastPathTests(SynchronousTestCase):
    def test_cookie_session_at_once(self):
        """A request of a cookie session is passed on before render returns, as the session."""
        h = GuardStack(self)
        browser = h.logged_in()
        watch = Watch(self, h)
        page = browser.get("/x", headers=API)
        self.assertEqual(page.code, 200)
        self.assertTrue(watch.at_once(), watch.renders)
        self.assertEqual(h.app.identities[-1].sub, "user-1")

    def test_public_route_at_once(self):
        """A public route's request is passed on before render returns."""
        h = GuardStack(self)
        watch = Watch(self, h)
        self.assertEqual(h.browser().get("/public/x").code, 200)
        self.assertTrue(watch.at_once(), watch.renders)

    def test_no_route_at_once(self):
        """A request no route matches gets its 404 before render returns."""
        h = GuardStack(self, config=make_config(routes=[
            {"path": "/only", "auth": "none", "upstream": "http://up.test"}]))
        watch = Watch(self, h)
        self.assertEqual(h.browser().get("/else").code, 404)
        self.assertTrue(watch.at_once(), watch.renders)

    def test_bearer_cached_at_once(self):
        """A bearer token is validated once (waiting); its next request is decided at once."""
        h = GuardStack(self, config=make_config(routes=ROUTES))
        watch = Watch(self, h)
        token = rs256(h)
        client = h.browser()
        self.assertEqual(client.get("/api/x", headers=bearer(token)).code, 200)
        self.assertTrue(watch.waited(), watch.renders)
        self.assertEqual(client.get("/api/y", headers=bearer(token)).code, 200)
        self.assertTrue(watch.at_once(), watch.renders)
        self.assertEqual(h.app.identities[-1].sub, "svc")
        self.assertEqual(h.app.header(b"authorization"), [b"Bearer " + token.encode()])

    def test_bearer_cached_rule_refuses_at_once(self):
        """A cached token the route's rule refuses gets its 403 at once, every time."""
        h = GuardStack(self, config=make_config(routes=ROUTES))
        watch = Watch(self, h)
        token = rs256(h, scope="write")
        client = h.browser()
        self.assertEqual(client.get("/api/x", headers=bearer(token)).code, 403)
        page = client.get("/api/x", headers=bearer(token))
        self.assertEqual((page.code, page.json()["error"]), (403, "forbidden"))
        self.assertTrue(watch.at_once(), watch.renders)
        self.assertEqual(h.app.requests, [])

    def test_bearer_cached_expires(self):
        """A cached token past its expiry (and the leeway) is refused (401)."""
        h = GuardStack(self, config=make_config(routes=ROUTES))
        token = rs256(h)
        client = h.browser()
        self.assertEqual(client.get("/api/x", headers=bearer(token)).code, 200)
        h.clock.advance(300 + 60 + 1)
        self.assertEqual(client.get("/api/x", headers=bearer(token)).code, 401)


class FastRefusalTests(SynchronousTestCase):
    """Each refusal of a session request happens when it is decided at once."""

    def test_csrf_refused_at_once(self):
        """An unsafe method without the CSRF header gets 403 at once, not the application."""
        h = GuardStack(self, config=make_config(csrf={}))
        browser = h.logged_in()
        watch = Watch(self, h)
        page = browser.request(b"POST", "/x", headers=API, body=b"{}")
        self.assertEqual((page.code, page.json()["error"]), (403, "csrf_token_invalid"))
        self.assertTrue(watch.at_once(), watch.renders)
        self.assertEqual(h.app.requests, [])

    def test_rule_denies_at_once(self):
        """A session the route's rule denies gets 403 at once; one it allows passes at once."""
        h = GuardStack(self, config=make_config(routes=ROUTES))
        alice = h.logged_in(sub="alice", claims=ALICE)
        bob = h.logged_in(sub="bob", claims=BOB)
        watch = Watch(self, h)
        self.assertEqual(bob.get("/admin/x", headers=API).code, 403)
        self.assertTrue(watch.at_once(), watch.renders)
        self.assertEqual(alice.get("/admin/x", headers=API).code, 200)
        self.assertTrue(watch.at_once(), watch.renders)
        self.assertEqual([r["uri"] for r in h.app.requests], [b"/admin/x"])

    def test_method_refused_at_once(self):
        """A method the route does not allow gets 405 at once."""
        h = GuardStack(self, config=make_config(routes=ROUTES))
        browser = h.logged_in()
        watch = Watch(self, h)
        self.assertEqual(browser.request(b"DELETE", "/ro/x", headers=API).code, 405)
        self.assertTrue(watch.at_once(), watch.renders)

    def test_websocket_origin_refused_at_once(self):
        """A cookie-authenticated WebSocket upgrade from a foreign page gets 403 at once."""
        h = GuardStack(self)
        browser = h.logged_in()
        watch = Watch(self, h)
        page = browser.get("/ws", headers={b"upgrade": [b"websocket"],
                                           b"connection": [b"Upgrade"],
                                           b"origin": [b"https://evil.test"]})
        self.assertEqual(page.code, 403)
        self.assertTrue(watch.at_once(), watch.renders)
        self.assertEqual(h.app.requests, [])

    def test_tampered_cookie_refused(self):
        """A tampered cookie is no session: 401 and the cookie cleared, nothing passed on."""
        h = GuardStack(self)
        good = h.logged_in().jar[SESSION_COOKIE]
        middle = len(good) // 2
        browser = h.browser()
        browser.jar[SESSION_COOKIE] = good[:middle] + ("A" if good[middle] != "A" else "B") + \
            good[middle + 1:]
        watch = Watch(self, h)
        page = browser.get("/x", headers=API)
        self.assertEqual(page.code, 401)
        cleared = page.cookie(SESSION_COOKIE)
        self.assertTrue(cleared is not None and cleared.deletes)
        self.assertTrue(watch.renders[-1][1], watch.renders)
        self.assertEqual(h.app.requests, [])

    def test_expired_session_refused(self):
        """An expired session takes the way that forgets it: 401 and the cookie cleared."""
        h = GuardStack(self, config=make_config(session={"lifetime": "1h"}))
        browser = h.logged_in()
        h.clock.advance(3600)
        watch = Watch(self, h)
        page = browser.get("/x", headers=API)
        self.assertEqual(page.code, 401)
        self.assertTrue(watch.waited(), watch.renders)
        self.assertNotIn(SESSION_COOKIE, browser.jar)
        self.assertEqual(h.app.requests, [])

    def test_idle_session_refused(self):
        """A session idle beyond idle_timeout is refused (401), the cookie cleared."""
        h = GuardStack(self, config=make_config(session={"idle_timeout": "10m"}))
        browser = h.logged_in()
        h.clock.advance(601)
        page = browser.get("/x", headers=API)
        self.assertEqual(page.code, 401)
        self.assertNotIn(SESSION_COOKIE, browser.jar)
        self.assertEqual(h.app.requests, [])

    def test_revoked_session_refused(self):
        """
        With a revocation list, every session request asks it (never at
        once): a revoked session gets 401.
        """
        h = GuardStack(self, start=False)
        revocations = MemoryStore(h.clock)
        h.guard.parts.revocations = revocations
        h.start()
        browser = h.logged_in()
        watch = Watch(self, h)
        self.assertEqual(browser.get("/x", headers=API).code, 200)
        self.assertTrue(watch.waited(), watch.renders)
        session = open_session(browser.jar[SESSION_COOKIE])
        revocations.mark_revoked(session_id=session.id, ttl=3600)
        h.clock.advance(1)
        self.assertEqual(browser.get("/x", headers=API).code, 401)
        self.assertEqual(len(h.app.requests), 1)

    def test_refresh_due_waits(self):
        """Near the access token's expiry the request waits for the refresh, then passes."""
        h = GuardStack(self)
        browser = h.logged_in()
        h.clock.advance(NEAR_EXPIRY)
        watch = Watch(self, h)
        self.assertEqual(browser.get("/x", headers=API).code, 200)
        self.assertTrue(watch.waited(), watch.renders)
        self.assertEqual(h.idp.refresh_count, 1)

    def test_renewal_due_waits(self):
        """A renewal of the idle clock is saved on the way that waits; the next request is at once."""
        h = GuardStack(self, config=make_config(session={"idle_timeout": "10m"}))
        browser = h.logged_in()
        h.clock.advance(300)
        watch = Watch(self, h)
        page = browser.get("/x", headers=API)
        self.assertEqual(page.code, 200)
        self.assertTrue(watch.waited(), watch.renders)
        self.assertIsNotNone(page.cookie(SESSION_COOKIE))
        self.assertEqual(browser.get("/x", headers=API).code, 200)
        self.assertTrue(watch.at_once(), watch.renders)

    def test_unexpected_error_at_once(self):
        """A bug on the synchronous way is logged and answered 500, as on the way that waits."""
        h = GuardStack(self)
        browser = h.logged_in()

        def broken(*args: Any) -> Any:
            raise RuntimeError("bug")

        self.patch(h.guard._sessions, "admit_now", broken)
        page = browser.get("/x", headers=API)
        self.assertEqual(page.code, 500)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(h.app.requests, [])
