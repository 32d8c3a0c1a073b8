"""L{oidcproxy.web.endpoints.userinfo}: the session's user for the application's pages."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from oidcproxy.web.endpoints.userinfo import UserinfoEndpoint
from oidcproxy.web.session_auth import SessionAuth

from .fakes import USER_CLAIMS, GuardStack
from .units import UnitRequest, session_cookie, state_of


class UserinfoTests(SynchronousTestCase):
    def ask(self, h: GuardStack, request: UnitRequest) -> UnitRequest:
        state = state_of(h)
        d = Deferred.fromCoroutine(UserinfoEndpoint(state, SessionAuth(state)).render(request))
        self.successResultOf(d)
        return request

    def test_session(self):
        """With a session: its sub, claims and expiry, never its tokens."""
        h = GuardStack(self)
        browser = h.logged_in(claims=USER_CLAIMS)
        request = self.ask(h, UnitRequest(b"GET", b"/oidc/userinfo", headers=session_cookie(browser)))
        self.assertEqual(request.code, 200)
        document = request.json()
        self.assertEqual(document["sub"], "user-1")
        self.assertEqual(document["claims"]["email"], USER_CLAIMS["email"])
        self.assertNotIn(b"access_token", request.body)

    def test_no_session(self):
        request = self.ask(GuardStack(self), UnitRequest(b"GET", b"/oidc/userinfo"))
        self.assertEqual(request.code, 401)

    def test_get_only(self):
        request = self.ask(GuardStack(self), UnitRequest(b"DELETE", b"/oidc/userinfo"))
        self.assertEqual(request.code, 405)
