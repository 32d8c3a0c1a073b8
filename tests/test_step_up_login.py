"""
Step-up logins (issue 20): the state cookie of an attempt that asks for an
C{acr} or a recent sign-in, the authorization request that asks, the login
endpoint's C{acr_values} and C{max_age}, and L{LoginEndpoint.step_up} (the
redirect, the session kept, the loop bound).
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import parse_qs, urlsplit

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from oidcproxy.core.assurance import Requirement
from oidcproxy.core.context import context
from oidcproxy.oidc.login import LoginAttempt
from oidcproxy.sessions.session import Session
from oidcproxy.web.endpoints.login import LoginEndpoint

from .fakes import SESSION_COOKIE, START, STATE_PREFIX, GuardStack, make_config
from .idp import AUTHORIZATION_ENDPOINT, NAVIGATE_HEADERS
from .test_guard_multi import CORP, Stack
from .units import UnitRequest, state_of

GOLD = Requirement(("gold", "silver"), 900.0)


def run(case: SynchronousTestCase, coroutine: Any) -> None:
    case.successResultOf(Deferred.fromCoroutine(coroutine))


def query_of(request: UnitRequest) -> Dict[str, List[str]]:
    location = request.header(b"location")
    assert location is not None
    return parse_qs(urlsplit(location.decode("ascii")).query)


def a_session(provider: str = "", step_ups: Tuple[Tuple[str, float], ...] = ()) -> Session:
    return Session(id="sid-1", sub="user-1", claims={"sub": "user-1", "acr": "bronze"},
                   created=START - 100, last_seen=START - 10, expires=START + 3600,
                   provider=provider, step_ups=step_ups)


class AttemptCookieTests(SynchronousTestCase):
    """What the state cookie of a step-up login holds, and the old cookies still opening."""

    def test_round_trip(self) -> None:
        """The asked acr values, max_age and step_up come back from the cookie."""
        attempt = LoginAttempt("st", "n", "v", "/admin?x=1", START, "", ("gold", "silver"),
                               900, True)
        self.assertEqual(LoginAttempt.from_bytes(attempt.to_bytes()), attempt)
        named = LoginAttempt("st", "n", None, "/", START, "corp", (), 0, False)
        self.assertEqual(LoginAttempt.from_bytes(named.to_bytes()), named)

    def test_plain_attempt_unchanged(self) -> None:
        """An attempt that asks nothing is written as before: five or six fields."""
        self.assertEqual(len(json.loads(LoginAttempt("s", "n", "v", "/", START).to_bytes())), 5)
        self.assertEqual(
            len(json.loads(LoginAttempt("s", "n", "v", "/", START, "corp").to_bytes())), 6)

    def test_old_cookies_open(self) -> None:
        """The five- and six-field cookies of attempts started before step-up still open."""
        old = LoginAttempt.from_bytes(b'["s","n","v","/x",1700000000]')
        self.assertEqual(old, LoginAttempt("s", "n", "v", "/x", START))
        self.assertEqual((old.acr_values, old.max_age, old.step_up), ((), None, False))
        named = LoginAttempt.from_bytes(b'["s","n",null,"/x",1700000000.5,"corp"]')
        self.assertEqual(named, LoginAttempt("s", "n", None, "/x", START + 0.5, "corp"))

    def test_malformed_asked_refused(self) -> None:
        """A seventh field that is not what a step-up login writes opens no attempt."""
        for asked in ('{}', '[]', '{"acr":"gold"}', '{"acr":[""]}', '{"acr":[1]}',
                      '{"max_age":-1}', '{"max_age":1.5}', '{"max_age":true}',
                      '{"step_up":1}', '{"step_up":false}', '{"other":1}'):
            raw = ('["s","n","v","/x",1700000000,"",' + asked + ']').encode()
            self.assertIsNone(LoginAttempt.from_bytes(raw), asked)
        self.assertIsNone(LoginAttempt.from_bytes(b'["s","n","v","/x",1700000000,""]'))


class StepUpTests(SynchronousTestCase):
    """L{LoginEndpoint.step_up}: to the IdP asking for the route's requirement."""

    def step_up(self, h: GuardStack, session: Session, target: str = "/admin?x=1",
                requirement: Requirement = GOLD, headers: Optional[Dict[bytes, Any]] = None
                ) -> UnitRequest:
        request = UnitRequest(b"GET", b"/admin", headers=headers or NAVIGATE_HEADERS)
        LoginEndpoint(state_of(h)).step_up_now(request, session, target, requirement)
        return request

    def test_redirect_asks_for_the_requirement(self) -> None:
        """The authorization request carries acr_values (space-separated) and max_age (seconds)."""
        h = GuardStack(self)
        request = self.step_up(h, a_session(), requirement=Requirement(("gold", "silver"), 900.5))
        self.assertEqual(request.code, 302)
        self.assertTrue(request.header(b"location").startswith(AUTHORIZATION_ENDPOINT.encode()))
        query = query_of(request)
        self.assertEqual(query["acr_values"], ["gold silver"])
        self.assertEqual(query["max_age"], ["900"])
        self.assertNotIn("prompt", query)
        self.assertEqual(context(request).decision, "step_up")

    def test_only_what_is_asked(self) -> None:
        """A requirement of an age alone sends no acr_values; one of acr alone no max_age."""
        h = GuardStack(self)
        query = query_of(self.step_up(h, a_session(), requirement=Requirement((), 60.0)))
        self.assertEqual((query.get("acr_values"), query["max_age"]), (None, ["60"]))
        query = query_of(self.step_up(h, a_session(), requirement=Requirement(("gold",))))
        self.assertEqual((query["acr_values"], query.get("max_age")), (["gold"], None))

    def test_prompt_login_where_the_provider_needs_it(self) -> None:
        """step_up_prompt_login: the step-up login sends prompt=login."""
        h = GuardStack(self, make_config(oidc={"step_up_prompt_login": True}))
        self.assertEqual(query_of(self.step_up(h, a_session()))["prompt"], ["login"])

    def test_session_kept(self) -> None:
        """The session cookie is not cleared: only the attempt's state cookie is set."""
        h = GuardStack(self)
        request = self.step_up(h, a_session())
        cookies = request.set_cookies()
        self.assertEqual(len(cookies), 1)
        self.assertTrue(cookies[0].startswith(STATE_PREFIX.encode()))
        self.assertFalse([c for c in cookies if c.startswith(SESSION_COOKIE.encode() + b"=")])

    def test_attempt_remembers_what_was_asked(self) -> None:
        """The state cookie holds the target, the asked values and that it is a step-up."""
        h = GuardStack(self)
        request = self.step_up(h, a_session())
        name, _, rest = request.set_cookies()[0].partition(b"=")
        value = rest.split(b";", 1)[0]
        state = query_of(request)["state"][0]
        bundle = h.state.bundle("")
        assert bundle is not None
        attempt, reason, _ = bundle.login.consume({name: value}, state)
        assert attempt is not None, reason
        self.assertEqual((attempt.return_to, attempt.acr_values, attempt.max_age,
                          attempt.step_up), ("/admin?x=1", ("gold", "silver"), 900, True))

    def test_named_provider(self) -> None:
        """The step-up goes to the IdP of the session's own provider."""
        s = Stack(self)
        request = self.step_up(s.h, a_session(provider="corp"))
        self.assertEqual(request.code, 302)
        self.assertTrue(request.header(b"location").startswith(CORP.encode() + b"/authorize?"))
        self.assertEqual(query_of(request)["acr_values"], ["gold silver"])

    def test_loop_bound(self) -> None:
        """After max_attempts step-ups for the path within the window: the login-failed page, 401."""
        h = GuardStack(self)
        tried = tuple(("/admin", START - 60.0 * i) for i in range(3))
        request = self.step_up(h, a_session(step_ups=tried))
        self.assertEqual(request.code, 401)
        self.assertIsNone(request.header(b"location"))
        self.assertIn(b"did not give it after several attempts", request.body)
        self.assertEqual(request.set_cookies(), [])
        self.assertEqual(context(request).decision, "step_up_failed")
        self.assertIn(b"insufficient_user_authentication", request.header(b"www-authenticate"))

    def test_loop_bound_in_german(self) -> None:
        """The reason is in the pages' language too."""
        h = GuardStack(self, make_config(pages={"language": "de"}))
        tried = tuple(("/admin", START - 1.0) for _ in range(3))
        request = self.step_up(h, a_session(step_ups=tried))
        self.assertEqual(request.code, 401)
        self.assertIn(b"auch nach mehreren Versuchen", request.body)

    def test_loop_bound_counts_per_path_and_window(self) -> None:
        """Step-ups of other paths, or older than attempt_window, do not count."""
        h = GuardStack(self, make_config(step_up={"max_attempts": 2, "attempt_window": "5m"}))
        tried = (("/other", START - 1.0), ("/other", START - 2.0), ("/admin", START - 301.0),
                 ("/admin", START - 10.0))
        self.assertEqual(self.step_up(h, a_session(step_ups=tried)).code, 302)
        tried += (("/admin", START - 20.0),)
        self.assertEqual(self.step_up(h, a_session(step_ups=tried)).code, 401)

    def test_api_client_bounded_too(self) -> None:
        """An API client hitting the bound gets the JSON error, not a page."""
        h = GuardStack(self)
        tried = tuple(("/admin", START - 1.0) for _ in range(3))
        request = self.step_up(h, a_session(step_ups=tried),
                               headers={b"accept": [b"application/json"]})
        self.assertEqual((request.code, request.json()["error"]),
                         (401, "insufficient_user_authentication"))

    def test_logins_elsewhere(self) -> None:
        """With login_url no step-up starts here: 401 with the RFC 9470 challenge."""
        h = GuardStack(self, make_config(oidc={"login_url": "/signin"}))
        request = self.step_up(h, a_session())
        self.assertEqual(request.code, 401)
        self.assertEqual(request.header(b"www-authenticate"),
                         b'Bearer realm="oidcproxy", error="insufficient_user_authentication", '
                         b'error_description="A different authentication level is required", '
                         b'acr_values="gold silver", max_age=900')


class LoginEndpointParametersTests(SynchronousTestCase):
    """The login endpoint's acr_values and max_age parameters."""

    def login(self, h: GuardStack, **params: List[bytes]) -> UnitRequest:
        args = {b"rd": [b"/back"]}
        args.update({k.encode(): v for k, v in params.items()})
        request = UnitRequest(b"GET", b"/oidc/login", args=args)
        run(self, LoginEndpoint(state_of(h)).render(request))
        return request

    def test_passed_on(self) -> None:
        """acr_values and max_age go to the IdP as given."""
        h = GuardStack(self)
        request = self.login(h, acr_values=[b"gold urn:x:silver"], max_age=[b"300"])
        self.assertEqual(request.code, 302)
        query = query_of(request)
        self.assertEqual((query["acr_values"], query["max_age"]), (["gold urn:x:silver"], ["300"]))
        self.assertNotIn("prompt", query)

    def test_prompt_login_where_the_provider_needs_it(self) -> None:
        """A login asking for an acr sends prompt=login with step_up_prompt_login; a plain one not."""
        h = GuardStack(self, make_config(oidc={"step_up_prompt_login": True}))
        self.assertEqual(query_of(self.login(h, acr_values=[b"gold"]))["prompt"], ["login"])
        self.assertNotIn("prompt", query_of(self.login(h)))

    def test_bad_acr_values(self) -> None:
        """Malformed acr_values: 400 naming the parameter, no redirect."""
        h = GuardStack(self)
        for bad in ([b""], [b"a  b"], [b'a"b'], [b"caf\xc3\xa9"], [b"a", b"b"], [b"a a"],
                    [b" ".join(b"v%d" % i for i in range(17))]):
            request = self.login(h, acr_values=bad)
            self.assertEqual(request.code, 400, bad)
            self.assertIn(b"acr_values", request.body)
            self.assertEqual(request.set_cookies(), [])

    def test_bad_max_age(self) -> None:
        """A max_age that is not whole seconds: 400 naming the parameter."""
        h = GuardStack(self)
        for bad in ([b""], [b"-1"], [b"1.5"], [b"15m"], [b"1", b"2"], [b"12345678901"]):
            request = self.login(h, max_age=bad)
            self.assertEqual(request.code, 400, bad)
            self.assertIn(b"max_age", request.body)
