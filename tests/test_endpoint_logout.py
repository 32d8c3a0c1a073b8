"""L{oidcproxy.web.endpoints.logout}: the confirmation page and the logout itself."""

from __future__ import annotations

from typing import Any, Dict, List

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from oidcproxy.web.endpoints.logout import LogoutEndpoint, same_origin
from oidcproxy.web.session_auth import SessionAuth

from .fakes import APP, SESSION_COOKIE, GuardStack
from .units import UnitRequest, session_cookie, state_of


class LogoutTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = GuardStack(self, memory_store=True)
        state = state_of(self.h)
        self.closed: List[Dict[str, Any]] = []
        self.logout = LogoutEndpoint(state, SessionAuth(state), lambda **w: self.closed.append(w))

    def send(self, method: bytes, headers: Dict[bytes, Any], args: Any = None) -> UnitRequest:
        request = UnitRequest(method, b"/oidc/logout", args=args, headers=headers)
        d = Deferred.fromCoroutine(self.logout.render(request))
        self.h.network.pump()
        self.successResultOf(d)
        return request

    def test_get_shows_a_form(self):
        """GET: a form posting to the logout path, carrying a safe rd."""
        request = self.send(b"GET", {}, {b"rd": [b"/after"]})
        self.assertEqual(request.code, 200)
        self.assertIn(b'action="/oidc/logout"', request.body)
        self.assertIn(b'value="/after"', request.body)

    def test_other_methods(self):
        self.assertEqual(self.send(b"PUT", {}).code, 405)

    def test_cross_site_refused(self):
        browser = self.h.logged_in()
        request = self.send(b"POST", {**session_cookie(browser),
                                      b"origin": [b"https://evil.test"]})
        self.assertEqual(request.code, 403)
        self.assertEqual(len(self.h.store), 1)  # type: ignore[arg-type]

    def test_post_ends_the_session(self):
        """A same-origin POST: the session is deleted, its sockets closed, the cookie cleared."""
        browser = self.h.logged_in()
        request = self.send(b"POST", {**session_cookie(browser), b"origin": [APP.encode()]},
                            {b"rd": [b"/bye"]})
        self.assertEqual(request.code, 303)
        self.assertEqual(request.header(b"location"), (APP + "/bye").encode())
        self.assertEqual(len(self.h.store), 0)  # type: ignore[arg-type]
        self.assertEqual(len(self.closed), 1)
        self.assertEqual(list(self.closed[0]), ["session_id"])
        self.assertTrue([c for c in request.set_cookies()
                         if c.startswith(SESSION_COOKIE.encode() + b"=") and b"Max-Age=0" in c])


class SameOriginTests(SynchronousTestCase):
    def test_same_origin(self):
        origin = b"https://app.test"
        self.assertTrue(same_origin(UnitRequest(b"POST", b"/"), origin))
        self.assertTrue(same_origin(UnitRequest(b"POST", b"/", headers={b"origin": [origin]}),
                                    origin))
        self.assertFalse(same_origin(
            UnitRequest(b"POST", b"/", headers={b"origin": [b"https://x.test"]}), origin))
        self.assertFalse(same_origin(
            UnitRequest(b"POST", b"/", headers={b"sec-fetch-site": [b"cross-site"]}), origin))
