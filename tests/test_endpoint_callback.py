"""L{oidcproxy.web.endpoints.callback}: the IdP's answer to a login, on its own."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from oidcproxy.web.endpoints.callback import CallbackEndpoint
from oidcproxy.web.endpoints.login import LoginEndpoint
from oidcproxy.web.session_auth import SessionAuth

from .fakes import APP, SESSION_COOKIE, GuardStack
from .units import UnitRequest, session_cookie, state_of


class CallbackTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = GuardStack(self, memory_store=True)
        state = state_of(self.h)
        self.callback = CallbackEndpoint(state, SessionAuth(state), LoginEndpoint(state))

    def attempt(self) -> Tuple[Any, Dict[str, str]]:
        """A browser sent to the IdP from /x, and the authorization request's parameters."""
        browser = self.h.browser()
        return browser, self.h.authorize(browser, "/x")

    def answer(self, browser: Any, args: Dict[bytes, List[bytes]],
               method: bytes = b"GET") -> UnitRequest:
        request = UnitRequest(method, b"/oidc/callback", args=args, headers=session_cookie(browser))
        d = Deferred.fromCoroutine(self.callback.render(request))
        self.h.network.pump()
        self.successResultOf(d)
        return request

    def code(self, params: Dict[str, str], **issue: Any) -> bytes:
        return self.h.idp.issue_code(nonce=params["nonce"],
                                     code_verifier_challenge=params["code_challenge"],
                                     **issue).encode()

    def cookie_named(self, request: UnitRequest, prefix: str) -> Optional[bytes]:
        for value in request.set_cookies():
            if value.startswith(prefix.encode() + b"="):
                return value
        return None

    def test_login_completed(self):
        """A good code: a session cookie, and back to where the login started."""
        browser, params = self.attempt()
        request = self.answer(browser, {b"code": [self.code(params)],
                                        b"state": [params["state"].encode()]})
        self.assertEqual(request.code, 302, request.body)
        self.assertEqual(request.header(b"location"), (APP + "/x").encode())
        self.assertIsNotNone(self.cookie_named(request, SESSION_COOKIE))
        self.assertEqual(len(self.h.store), 1)  # type: ignore[arg-type]

    def test_get_only(self):
        browser, params = self.attempt()
        request = self.answer(browser, {b"state": [params["state"].encode()]}, method=b"POST")
        self.assertEqual((request.code, request.header(b"allow")), (405, b"GET"))

    def test_duplicated_parameter(self):
        browser, params = self.attempt()
        request = self.answer(browser, {b"code": [b"a", b"b"], b"state": [params["state"].encode()]})
        self.assertEqual(request.code, 400)

    def test_idp_refused(self):
        """?error=: 403 naming the error; the state cookie is cleared."""
        browser, params = self.attempt()
        request = self.answer(browser, {b"error": [b"access_denied"],
                                        b"state": [params["state"].encode()]})
        self.assertEqual(request.code, 403)
        self.assertIn(b"access_denied", request.body)
        self.assertTrue([c for c in request.set_cookies() if b"Max-Age=0" in c])

    def test_unknown_state(self):
        browser, params = self.attempt()
        request = self.answer(browser, {b"code": [self.code(params)], b"state": [b"forged"]})
        self.assertEqual(request.code, 401)

    def test_state_used_once(self):
        """The same state coming back twice (the cookie replayed): the second is refused."""
        browser, params = self.attempt()
        args = {b"code": [self.code(params)], b"state": [params["state"].encode()]}
        self.assertEqual(self.answer(browser, args).code, 302)
        args[b"code"] = [self.code(params)]
        replay = self.answer(browser, args)
        self.assertEqual(replay.code, 401)
        self.assertIn(b"already used", replay.body)

    def test_token_refused(self):
        """An ID token for another audience: 401, no session."""
        browser, params = self.attempt()
        request = self.answer(browser, {b"code": [self.code(params, claims={"aud": "other"})],
                                        b"state": [params["state"].encode()]})
        self.assertEqual(request.code, 401)
        self.assertIsNone(self.cookie_named(request, SESSION_COOKIE))
