"""L{oidcproxy.web.endpoints.login}: sending browsers to log in, and the attempts out."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from oidcproxy.core.context import context
from oidcproxy.core.metrics import Metrics
from oidcproxy.web.endpoints.login import LoginEndpoint

from .fakes import STATE_PREFIX, GuardStack, make_config
from .idp import AUTHORIZATION_ENDPOINT, NAVIGATE_HEADERS
from .test_observability import value
from .units import UnitRequest, state_of


def run(case: SynchronousTestCase, coroutine: object) -> None:
    case.successResultOf(Deferred.fromCoroutine(coroutine))  # type: ignore[arg-type]


class LoginEndpointTests(SynchronousTestCase):
    def test_redirects_to_the_idp(self):
        """GET: 302 to the authorization endpoint with a state cookie; decided "login"."""
        h = GuardStack(self)
        request = UnitRequest(b"GET", b"/oidc/login", args={b"rd": [b"/back"]})
        run(self, LoginEndpoint(state_of(h)).render(request))
        self.assertEqual(request.code, 302)
        self.assertTrue(request.header(b"location").startswith(AUTHORIZATION_ENDPOINT.encode()))
        self.assertTrue(request.set_cookies()[0].startswith(STATE_PREFIX.encode()))
        self.assertEqual(context(request).decision, "login")

    def test_get_only(self):
        request = UnitRequest(b"POST", b"/oidc/login")
        run(self, LoginEndpoint(state_of(GuardStack(self))).render(request))
        self.assertEqual(request.code, 405)

    def test_idp_not_ready(self):
        """Before discovery: 503 with Retry-After, no state cookie."""
        h = GuardStack(self, start=False)
        request = UnitRequest(b"GET", b"/oidc/login")
        run(self, LoginEndpoint(state_of(h)).render(request))
        self.assertEqual((request.code, request.header(b"retry-after")), (503, b"5"))
        self.assertEqual(request.set_cookies(), [])

    def test_pending_attempts_counted_until_they_expire(self):
        """An attempt out counts as pending until the state cookie's max_age passes."""
        metrics = Metrics()
        h = GuardStack(self, metrics=metrics)
        login = LoginEndpoint(state_of(h))
        self.addCleanup(login.stop)
        run(self, login.render(UnitRequest(b"GET", b"/oidc/login")))
        self.assertEqual(value(metrics, "oidcproxy_login_attempts_pending"), 1.0)
        h.clock.advance(h.config.state_cookie.max_age)
        self.assertEqual(value(metrics, "oidcproxy_login_attempts_pending"), 0.0)


class UnauthenticatedTests(SynchronousTestCase):
    def match(self, h: GuardStack) -> object:
        match = state_of(h).routes.match(b"app.test", b"/x?q=1")
        assert match is not None
        return match

    def test_navigation_goes_to_log_in(self):
        h = GuardStack(self)
        request = UnitRequest(b"GET", b"/x", headers=NAVIGATE_HEADERS)
        run(self, LoginEndpoint(state_of(h)).unauthenticated(request, self.match(h), []))
        self.assertEqual(request.code, 302)

    def test_api_client_gets_401(self):
        h = GuardStack(self)
        request = UnitRequest(b"GET", b"/x", headers={b"accept": [b"application/json"]})
        run(self, LoginEndpoint(state_of(h)).unauthenticated(request, self.match(h), [b"c=; Max-Age=0"]))
        self.assertEqual(request.code, 401)
        self.assertEqual(request.set_cookies(), [b"c=; Max-Age=0"])

    def test_login_elsewhere(self):
        """With login_url a navigation gets 401 naming it."""
        h = GuardStack(self, make_config(oidc={"login_url": "/signin"}))
        request = UnitRequest(b"GET", b"/x", headers=NAVIGATE_HEADERS)
        run(self, LoginEndpoint(state_of(h)).unauthenticated(request, self.match(h), []))
        self.assertEqual(request.code, 401)
        self.assertIn(b"/signin", request.body)
