"""
Step-up logins coming back (issue 20): the ID token held to what the login
asked for, the landing on the page that asked, what the new session carries
over from the one it replaces (same user only), its serialisation, and
refreshes never changing the sign-in.
"""

from __future__ import annotations

import json
from typing import Any, Dict
from urllib.parse import parse_qs, urlencode, urlsplit

from twisted.trial.unittest import SynchronousTestCase

from oidcproxy.core.assurance import Requirement
from oidcproxy.sessions.history import carried_sign_ins
from oidcproxy.sessions.session import MAX_SIGN_INS, Session
from oidcproxy.web.endpoints.login import LoginEndpoint

from .fakes import APP, SESSION_COOKIE, START, GuardStack, RefresherStack, make_config, open_session
from .idp import NAVIGATE_HEADERS, SetCookie
from .test_refresh import _patch_peek
from .test_refresh import session as refresh_session
from .units import UnitRequest

GOLD = Requirement(("gold",), 900.0)


class StepUpCallbackCase(SynchronousTestCase):
    def stack(self, **config: Any) -> GuardStack:
        return GuardStack(self, make_config(**config))

    def signed_in(self, h: GuardStack, sub: str = "user-1", acr: str = "bronze",
                  auth_time: float = START - 3000) -> Any:
        """A browser with a session of C{sub} signed in at C{acr}, C{auth_time}."""
        browser = h.browser()
        page = h.login(browser, sub=sub, claims={"acr": acr, "auth_time": auth_time})
        self.assertEqual(page.code, 302, page.body)
        return browser

    def step_up(self, h: GuardStack, browser: Any, requirement: Requirement = GOLD,
                target: str = "/admin?x=1") -> Dict[str, str]:
        """Start a step-up of the browser's session; the authorization request's parameters."""
        session = open_session(browser.jar[SESSION_COOKIE])
        request = UnitRequest(b"GET", b"/admin", headers={
            **NAVIGATE_HEADERS, b"cookie": [browser.cookie_header()]})
        LoginEndpoint(h.state).step_up_now(request, session, target, requirement)
        self.assertEqual(request.code, 302, request.body)
        browser._store([SetCookie.parse(raw) for raw in request.set_cookies()])
        location = request.header(b"location").decode()
        return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}

    def back(self, h: GuardStack, browser: Any, params: Dict[str, str], sub: str = "user-1",
             **claims: Any) -> Any:
        """The IdP answers the attempt of C{params} with an ID token of C{claims}."""
        code = h.idp.issue_code(nonce=params["nonce"], sub=sub, claims=claims,
                                code_verifier_challenge=params["code_challenge"])
        return browser.navigate("/oidc/callback?" + urlencode(
            {"code": code, "state": params["state"]}))


class ValidationTests(StepUpCallbackCase):
    """The ID token of a step-up login is held to what it asked for."""

    def test_step_up_completed(self) -> None:
        """The asked acr, a fresh auth_time: a new session, back to the page that asked."""
        h = self.stack()
        browser = self.signed_in(h)
        old = browser.jar[SESSION_COOKIE]
        page = self.back(h, browser, self.step_up(h, browser), acr="gold", auth_time=START)
        self.assertEqual((page.code, page.location), (302, APP + "/admin?x=1"))
        self.assertNotEqual(browser.jar[SESSION_COOKIE], old)
        self.assertEqual(open_session(browser.jar[SESSION_COOKIE]).claims["acr"], "gold")

    def test_lands_on_target_not_post_login_redirect_url(self) -> None:
        """A step-up lands where it started, even with a fixed post_login_redirect_url."""
        h = self.stack(oidc={"post_login_redirect_url": "/welcome"})
        browser = self.signed_in(h)
        page = self.back(h, browser, self.step_up(h, browser), acr="gold", auth_time=START)
        self.assertEqual(page.location, APP + "/admin?x=1")

    def test_lower_acr_refused(self) -> None:
        """An ID token with another acr: the login-failed page (401), no new session, no redirect."""
        h = self.stack()
        browser = self.signed_in(h)
        old = browser.jar[SESSION_COOKIE]
        page = self.back(h, browser, self.step_up(h, browser), acr="bronze", auth_time=START)
        self.assertEqual(page.code, 401)
        self.assertIsNone(page.location)
        self.assertIn(b"did not confirm the sign-in level asked for", page.body)
        self.assertEqual(browser.jar[SESSION_COOKIE], old)

    def test_no_acr_refused(self) -> None:
        """An ID token without acr does not meet acr_values."""
        h = self.stack()
        browser = self.signed_in(h)
        page = self.back(h, browser, self.step_up(h, browser, Requirement(("gold",))),
                         auth_time=START)
        self.assertEqual(page.code, 401)

    def test_refusal_in_german(self) -> None:
        h = self.stack(pages={"language": "de"})
        browser = self.signed_in(h)
        page = self.back(h, browser, self.step_up(h, browser), acr="bronze", auth_time=START)
        self.assertEqual(page.code, 401)
        self.assertIn(b"verlangte Anmeldestufe nicht", page.body)

    def test_api_client_json(self) -> None:
        """The refusal is JSON for a client that asks for it."""
        h = self.stack()
        browser = self.signed_in(h)
        params = self.step_up(h, browser)
        code = h.idp.issue_code(nonce=params["nonce"], claims={"acr": "x", "auth_time": START},
                                code_verifier_challenge=params["code_challenge"])
        page = browser.get("/oidc/callback?" + urlencode({"code": code, "state": params["state"]}),
                           headers={b"accept": [b"application/json"]})
        self.assertEqual((page.code, page.json()["error"]),
                         (401, "insufficient_user_authentication"))

    def test_max_age_requires_auth_time(self) -> None:
        """With max_age asked, an ID token without auth_time is refused (OIDC Core 3.1.2.1)."""
        h = self.stack()
        browser = self.signed_in(h)
        page = self.back(h, browser, self.step_up(h, browser, Requirement((), 300.0)))
        self.assertEqual(page.code, 401)
        self.assertIn(b"as recent as asked for", page.body)

    def test_old_auth_time_refused(self) -> None:
        """An auth_time older than max_age plus the leeway is refused; within the leeway not."""
        h = self.stack()
        leeway = h.config.oidc.leeway
        browser = self.signed_in(h)
        page = self.back(h, browser, self.step_up(h, browser, Requirement((), 300.0)),
                         auth_time=START - 300 - leeway - 1)
        self.assertEqual(page.code, 401)
        page = self.back(h, browser, self.step_up(h, browser, Requirement((), 300.0)),
                         auth_time=START - 300 - leeway + 1)
        self.assertEqual(page.code, 302, page.body)

    def test_future_auth_time_refused(self) -> None:
        """An auth_time beyond the leeway in the future proves no recent sign-in."""
        h = self.stack()
        browser = self.signed_in(h)
        page = self.back(h, browser, self.step_up(h, browser, Requirement((), 300.0)),
                         auth_time=START + 3600)
        self.assertEqual(page.code, 401)

    def test_plain_login_not_held(self) -> None:
        """A login that asked nothing takes any acr and auth_time (and post_login_redirect_url)."""
        h = self.stack(oidc={"post_login_redirect_url": "/welcome"})
        page = h.login(h.browser(), "/x", claims={"acr": "weak"})
        self.assertEqual((page.code, page.location), (302, APP + "/welcome"))

    def test_login_endpoint_asks_too(self) -> None:
        """A login of the login endpoint with acr_values is held to them."""
        h = self.stack()
        browser = h.browser()
        page = browser.navigate("/oidc/login?" + urlencode({"acr_values": "gold",
                                                            "rd": "/pay"}))
        params = {k: v[0] for k, v in page.location_query().items()}
        self.assertEqual(params["acr_values"], "gold")
        self.assertEqual(self.back(h, browser, params, acr="silver").code, 401)
        page = browser.navigate("/oidc/login?" + urlencode({"acr_values": "gold",
                                                            "rd": "/pay"}))
        params = {k: v[0] for k, v in page.location_query().items()}
        page = self.back(h, browser, params, acr="gold")
        self.assertEqual((page.code, page.location), (302, APP + "/pay"))


class CarryOverTests(StepUpCallbackCase):
    """What the new session of a step-up takes from the one it replaces."""

    def test_same_user_carries_sign_ins_and_step_ups(self) -> None:
        """The old sign-in becomes an earlier one; this step-up is counted."""
        h = self.stack()
        browser = self.signed_in(h, acr="bronze", auth_time=START - 3000)
        self.back(h, browser, self.step_up(h, browser), acr="gold", auth_time=START)
        session = open_session(browser.jar[SESSION_COOKIE])
        self.assertEqual(session.sign_ins, (("bronze", START - 3000),))
        self.assertEqual(session.step_ups, (("/admin", START),))

    def test_chain_keeps_highest_and_counts(self) -> None:
        """
        A later step-up for freshness at a lower level keeps the gold sign-in
        (with its time) and the earlier step-up within the window.
        """
        h = self.stack()
        browser = self.signed_in(h, acr="bronze", auth_time=START - 3000)
        self.back(h, browser, self.step_up(h, browser), acr="gold", auth_time=START)
        h.clock.advance(100)
        self.back(h, browser, self.step_up(h, browser, Requirement((), 60.0), "/recent"),
                  acr="bronze", auth_time=START + 100)
        session = open_session(browser.jar[SESSION_COOKIE])
        self.assertEqual(session.claims["acr"], "bronze")
        self.assertEqual(session.sign_ins, (("gold", START),))
        self.assertEqual(session.step_ups, (("/recent", START + 100), ("/admin", START)))

    def test_old_step_ups_dropped(self) -> None:
        """Step-ups older than attempt_window are not carried."""
        h = self.stack(step_up={"attempt_window": "60s"})
        browser = self.signed_in(h)
        self.back(h, browser, self.step_up(h, browser), acr="gold", auth_time=START)
        h.clock.advance(61)
        self.back(h, browser, self.step_up(h, browser), acr="gold", auth_time=START + 61)
        self.assertEqual(open_session(browser.jar[SESSION_COOKIE]).step_ups,
                         (("/admin", START + 61),))

    def test_other_user_carries_nothing(self) -> None:
        """A step-up answered by another user's sign-in takes nothing of the old session."""
        h = self.stack()
        browser = self.signed_in(h, sub="user-1", acr="gold", auth_time=START - 10)
        self.back(h, browser, self.step_up(h, browser), sub="user-2", acr="gold",
                  auth_time=START)
        session = open_session(browser.jar[SESSION_COOKIE])
        self.assertEqual((session.sub, session.sign_ins, session.step_ups),
                         ("user-2", (), (("/admin", START),)))

    def test_plain_login_carries_nothing(self) -> None:
        """A login that asked nothing starts a session without history."""
        h = self.stack()
        browser = self.signed_in(h, acr="gold")
        h.login(browser, "/oidc/login?rd=/x", claims={"acr": "bronze"})
        session = open_session(browser.jar[SESSION_COOKIE])
        self.assertEqual((session.sign_ins, session.step_ups), ((), ()))

    def test_one_per_acr_latest_first_bounded(self) -> None:
        """Earlier sign-ins: one per acr with its latest time, latest first, at most 8."""
        old = Session(id="i", sub="s", claims={"acr": "a", "auth_time": START - 5},
                      created=START, last_seen=START, expires=START + 1,
                      sign_ins=(("b", START - 50), ("a", START - 1), ("b", START - 20),
                                ("c", None), ("new", START - 2)))
        self.assertEqual(carried_sign_ins((("new", START),), old),
                         (("a", START - 1), ("b", START - 20), ("c", None)))
        many = Session(id="i", sub="s", claims={}, created=START, last_seen=START,
                       expires=START + 1,
                       sign_ins=tuple((f"l{i}", START - i) for i in range(MAX_SIGN_INS)))
        carried = carried_sign_ins((("x", START),), many)
        self.assertEqual(len(carried), MAX_SIGN_INS)
        self.assertEqual(carried[0], ("l0", START))
        self.assertNotIn(("", None), carried)  # the old session's own (no acr, no time): last


class SerialisationTests(SynchronousTestCase):
    """sign_ins and step_ups in a session's value: only when present, strictly parsed."""

    def base(self, **changes: Any) -> Session:
        return Session(id="i", sub="s", claims={}, created=START, last_seen=START,
                       expires=START + 1, **changes)

    def test_round_trip(self) -> None:
        session = self.base(sign_ins=(("gold", START - 1), ("", None)),
                            step_ups=(("/admin", START),))
        self.assertEqual(Session.from_bytes(session.to_bytes()), session)

    def test_absent_when_empty(self) -> None:
        """A session without history is written as before (an older proxy reads it)."""
        data = json.loads(self.base().to_bytes())
        self.assertNotIn("sign_ins", data)
        self.assertNotIn("step_ups", data)

    def test_malformed_refused(self) -> None:
        """A value whose history is malformed is no session."""
        good = json.loads(self.base().to_bytes())
        for key, bad in (("sign_ins", "gold"), ("sign_ins", [["gold"]]), ("sign_ins", [[1, 2]]),
                         ("sign_ins", [["gold", "x"]]), ("sign_ins", [["gold", True]]),
                         ("sign_ins", [["l", 1]] * (MAX_SIGN_INS + 1)),
                         ("step_ups", {}), ("step_ups", [["/a", None]]),
                         ("step_ups", [["/a", 1, 2]]), ("step_ups", [[None, 1]]),
                         ("step_ups", [["/a", 1]] * 9)):
            raw = json.dumps({**good, key: bad}).encode()
            self.assertIsNone(Session.from_bytes(raw), (key, bad))


class RefreshKeepsSignInTests(SynchronousTestCase):
    """A refresh is no new sign-in: acr, auth_time and amr stay the session's."""

    def setUp(self) -> None:
        _patch_peek(self)

    def test_refreshed_id_token_does_not_change_the_sign_in(self) -> None:
        tokens: Dict[str, Dict[str, Any]] = {
            "id-new": {"iss": "https://idp", "sub": "alice", "name": "Alice 2", "acr": "weak",
                       "auth_time": START, "amr": ["pwd"], "acrs": ["c9"]},
        }
        h = RefresherStack(lambda token, keys: dict(tokens[token]))
        old = refresh_session(claims={"iss": "https://idp", "sub": "alice", "acr": "gold",
                                      "auth_time": START - 500, "amr": ["pwd", "otp"],
                                      "acrs": ["c1"]},
                              sign_ins=(("silver", START - 900),), step_ups=(("/a", START),))
        d = h.refresher.refresh(old)
        h.answer(id_token="id-new")
        new = self.successResultOf(d).session
        self.assertEqual((new.claims["acr"], new.claims["auth_time"], new.claims["amr"],
                          new.claims["acrs"], new.claims["name"]),
                         ("gold", START - 500, ["pwd", "otp"], ["c1"], "Alice 2"))
        self.assertEqual((new.sign_ins, new.step_ups), (old.sign_ins, old.step_ups))

    def test_none_added(self) -> None:
        """A session without acr or auth_time does not gain them from a refresh."""
        h = RefresherStack(lambda token, keys: {"iss": "https://idp", "sub": "alice",
                                                "acr": "gold", "auth_time": START})
        d = h.refresher.refresh(refresh_session())
        h.answer(id_token="id-new")
        claims = self.successResultOf(d).session.claims
        self.assertNotIn("acr", claims)
        self.assertNotIn("auth_time", claims)
