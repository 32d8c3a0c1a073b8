"""
Step-up in the guard (issue 20): a route's requirement (C{acr_values},
C{max_auth_age}) on sessions, on both ways a session is admitted (at once,
and waiting: a renewal to save), and on bearer tokens (cached ones too); the
sign-in's identity headers and their stripping.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional
from urllib.parse import urlencode

from twisted.trial.unittest import SynchronousTestCase

from oidcproxy.sessions.session import Session

from .fakes import API, APP, SESSION_COOKIE, START, GuardStack, make_config, open_session
from .idp import AUTHORIZATION_ENDPOINT, Page, split_location
from .test_guard_bearer import bearer, forward_auth, rs256
from .test_guard_fast import Watch

ROUTES: List[Dict[str, Any]] = [
    {"path": "/admin", "upstream": "http://up.test", "acr_values": ["gold", "silver"],
     "max_auth_age": "15m"},
    {"path": "/fresh", "upstream": "http://up.test", "max_auth_age": "60s"},
    {"path": "/api", "upstream": "http://up.test", "auth": "bearer", "acr_values": ["gold"],
     "max_auth_age": "60s"},
    {"path": "/mixed", "upstream": "http://up.test", "auth": "session_or_bearer",
     "acr_values": ["gold"]},
    {"path": "/public", "upstream": "http://up.test", "auth": "none"},
    {"path": "/", "upstream": "http://up.test"},
]

CHALLENGE = (b'Bearer realm="oidcproxy", error="insufficient_user_authentication", '
             b'error_description="A different authentication level is required", '
             b'acr_values="gold silver", max_age=900')


def stack(case: SynchronousTestCase, **config: Any) -> GuardStack:
    config.setdefault("routes", ROUTES)
    config.setdefault("trusted_proxies", ["127.0.0.1"])
    return GuardStack(case, make_config(**config))


class SessionRequirementMixin:
    """The same behaviours on the way that decides at once and the one that waits."""

    config: Dict[str, Any] = {}
    waits = False

    def stack(self, **config: Any) -> GuardStack:
        t: Any = self
        return stack(t, **{**self.config, **config})

    def signed_in(self, h: GuardStack, acr: Optional[str] = "bronze",
                  auth_time: Optional[float] = START, sub: str = "user-1") -> Any:
        claims: Dict[str, Any] = {}
        if acr is not None:
            claims["acr"] = acr
        if auth_time is not None:
            claims["auth_time"] = auth_time
        browser = h.browser()
        page = h.login(browser, "/oidc/login?rd=/", sub=sub, claims=claims)
        t: Any = self
        t.assertEqual(page.code, 302, page.body)
        return browser

    def get(self, h: GuardStack, browser: Any, path: str, navigate: bool = True,
            headers: Optional[Dict[bytes, Any]] = None) -> Page:
        """A request of C{browser}, taking this way (checked)."""
        t: Any = self
        if self.waits:
            # A renewal of the idle clock is due: the way that waits (admit).
            h.clock.advance(61)
        watch = Watch(t, h)
        page = browser.navigate(path, headers=headers) if navigate else \
            browser.get(path, headers={**API, **(headers or {})})
        t.assertTrue(watch.waited() if self.waits else watch.at_once(), watch.renders)
        return page

    def test_met(self) -> None:
        """A session signed in at an asked acr, recently enough: passed on."""
        h = self.stack()
        browser = self.signed_in(h, acr="silver", auth_time=START)
        page = self.get(h, browser, "/admin/x")
        t: Any = self
        t.assertEqual(page.code, 200, page.body)

    def test_navigation_steps_up(self) -> None:
        """A browser's navigation: to the IdP asking for the route's acr and max_age; session kept."""
        h = self.stack()
        browser = self.signed_in(h, acr="bronze")
        cookie = browser.jar[SESSION_COOKIE]
        page = self.get(h, browser, "/admin/x?y=1")
        t: Any = self
        t.assertEqual(page.code, 302, page.body)
        t.assertEqual(split_location(page)[0], AUTHORIZATION_ENDPOINT)
        query = page.location_query()
        t.assertEqual((query["acr_values"], query["max_age"]), (["gold silver"], ["900"]))
        t.assertIsNone(page.cookie(SESSION_COOKIE))
        t.assertEqual(browser.jar[SESSION_COOKIE], cookie)
        t.assertEqual(h.app.requests, [])

    def test_api_client_challenged(self) -> None:
        """Any other request: 401 insufficient_user_authentication with the RFC 9470 challenge."""
        h = self.stack()
        browser = self.signed_in(h, acr="bronze")
        page = self.get(h, browser, "/admin/x", navigate=False)
        t: Any = self
        t.assertEqual(page.code, 401)
        t.assertEqual(page.json()["error"], "insufficient_user_authentication")
        t.assertEqual(page.header(b"www-authenticate"), CHALLENGE)
        t.assertIn(SESSION_COOKIE, browser.jar)

    def test_too_old(self) -> None:
        """A sign-in older than max_auth_age does not meet it."""
        h = self.stack()
        # Signed in as the first request is made (the way that waits advances the clock).
        browser = self.signed_in(h, acr="gold", auth_time=START + (61 if self.waits else 0))
        t: Any = self
        t.assertEqual(self.get(h, browser, "/fresh/x", navigate=False).code, 200)
        h.clock.advance(61)
        page = self.get(h, browser, "/fresh/x", navigate=False)
        t.assertEqual(page.code, 401)
        t.assertEqual(page.header(b"www-authenticate").split(b", ")[-1], b"max_age=60")

    def test_no_auth_time(self) -> None:
        """A sign-in without auth_time meets no max_auth_age."""
        h = self.stack()
        browser = self.signed_in(h, acr="gold", auth_time=None)
        t: Any = self
        t.assertEqual(self.get(h, browser, "/fresh/x", navigate=False).code, 401)

    def test_other_routes_untouched(self) -> None:
        """A route without a requirement serves the same session."""
        h = self.stack()
        browser = self.signed_in(h, acr=None, auth_time=None)
        t: Any = self
        t.assertEqual(self.get(h, browser, "/x").code, 200)

    def test_screened_first(self) -> None:
        """A WebSocket from a foreign page is refused as such (403), before any step-up."""
        h = self.stack()
        browser = self.signed_in(h, acr="bronze")
        page = self.get(h, browser, "/admin/ws", navigate=False, headers={
            b"upgrade": [b"websocket"], b"connection": [b"upgrade"],
            b"origin": [b"https://evil.test"]})
        t: Any = self
        t.assertEqual(page.code, 403)


class AtOnceTests(SessionRequirementMixin, SynchronousTestCase):
    """The session's requirement decided at once (no refresh or renewal due)."""


class WaitingTests(SessionRequirementMixin, SynchronousTestCase):
    """The same on the way that waits (a renewal of the idle clock to save)."""

    config = {"session": {"idle_timeout": "1h"}}
    waits = True

    def test_no_refresh_before(self) -> None:
        """An unmet requirement is answered before the due refresh: no refresh grant is sent."""
        h = self.stack()
        browser = self.signed_in(h, acr="bronze")
        h.clock.advance(300)
        page = browser.get("/admin/x", headers=API)
        self.assertEqual(page.code, 401)
        self.assertEqual(h.idp.refresh_count, 0)
        self.assertEqual(browser.get("/x", headers=API).code, 200)
        self.assertEqual(h.idp.refresh_count, 1)


class EarlierSignInTests(SynchronousTestCase):
    """A stepped-up session keeps its highest sign-in and its time."""

    def test_earlier_sign_in_meets(self) -> None:
        """After a step-up to gold, a later fresh bronze sign-in still meets the gold route."""
        h = stack(self)
        browser = h.browser()
        page = h.login(browser, "/oidc/login?rd=/", claims={"acr": "bronze",
                                                            "auth_time": START})
        step = browser.navigate("/admin/x")
        self.assertEqual(step.code, 302)
        params = {k: v[0] for k, v in step.location_query().items()}
        code = h.idp.issue_code(nonce=params["nonce"], claims={"acr": "gold", "auth_time": START},
                                code_verifier_challenge=params["code_challenge"])
        page = browser.navigate("/oidc/callback?" + urlencode({"code": code,
                                                               "state": params["state"]}))
        self.assertEqual((page.code, page.location), (302, APP + "/admin/x"))
        self.assertEqual(browser.navigate("/admin/x").code, 200)
        self.assertEqual(h.app.header(b"x-forwarded-acr"), [b"gold"])
        # A step-up for freshness answered at bronze: gold is still there (and fresh).
        h.clock.advance(100)
        step = browser.navigate("/fresh/y")
        params = {k: v[0] for k, v in step.location_query().items()}
        self.assertEqual(params["max_age"], "60")
        code = h.idp.issue_code(nonce=params["nonce"],
                                claims={"acr": "bronze", "auth_time": START + 100},
                                code_verifier_challenge=params["code_challenge"])
        browser.navigate("/oidc/callback?" + urlencode({"code": code, "state": params["state"]}))
        self.assertEqual(open_session(browser.jar[SESSION_COOKIE]).claims["acr"], "bronze")
        self.assertEqual(browser.navigate("/admin/x").code, 200)
        self.assertEqual(h.app.header(b"x-forwarded-acr"), [b"gold"])
        self.assertEqual(h.app.header(b"x-forwarded-auth-time"), [str(int(START)).encode()])
        self.assertEqual(browser.navigate("/x").code, 200)
        self.assertEqual(h.app.header(b"x-forwarded-acr"), [b"bronze"])
        self.assertEqual(h.app.header(b"x-forwarded-auth-time"), [str(int(START + 100)).encode()])

    def test_loop_bounded(self) -> None:
        """
        An IdP whose answers pass the callback (within its leeway) but never
        meet the route: three step-ups, then the login-failed page, no fourth redirect.
        """
        h = stack(self)
        browser = h.browser()
        h.login(browser, "/oidc/login?rd=/", claims={"acr": "bronze", "auth_time": START - 900})
        for _ in range(3):
            step = browser.navigate("/fresh/x")
            self.assertEqual(step.code, 302, step.body)
            params = {k: v[0] for k, v in step.location_query().items()}
            now = h.clock.seconds()
            code = h.idp.issue_code(nonce=params["nonce"],
                                    claims={"acr": "bronze", "auth_time": now - 90},
                                    code_verifier_challenge=params["code_challenge"])
            back = browser.navigate("/oidc/callback?" + urlencode(
                {"code": code, "state": params["state"]}))
            self.assertEqual(back.code, 302, back.body)
            h.clock.advance(5)
        page = browser.navigate("/fresh/x")
        self.assertEqual(page.code, 401)
        self.assertIsNone(page.location)
        self.assertIn(b"did not give it after several attempts", page.body)
        self.assertEqual(h.app.requests, [])


class ForwardAuthTests(SynchronousTestCase):
    """The forward-auth check behaves as in its unauthenticated case."""

    def test_challenge_without_redirect(self) -> None:
        h = stack(self)
        browser = h.browser()
        h.login(browser, "/oidc/login?rd=/", claims={"acr": "bronze", "auth_time": START})
        page = forward_auth(h, "/admin/x", {b"accept": [b"text/html"]}, browser)
        self.assertEqual(page.code, 401)
        self.assertEqual(page.header(b"www-authenticate"), CHALLENGE)

    def test_step_up_with_redirect(self) -> None:
        h = stack(self)
        browser = h.browser()
        h.login(browser, "/oidc/login?rd=/", claims={"acr": "bronze", "auth_time": START})
        page = browser.get("/oidc/auth?redirect=1", headers={
            b"x-forwarded-method": [b"GET"], b"x-forwarded-host": [b"app.test"],
            b"x-forwarded-uri": [b"/admin/x"], b"accept": [b"text/html"],
            b"sec-fetch-mode": [b"navigate"]})
        self.assertEqual(page.code, 302)
        self.assertEqual(page.location_query()["acr_values"], ["gold silver"])

    def test_met_copies_headers(self) -> None:
        h = stack(self)
        browser = h.browser()
        h.login(browser, "/oidc/login?rd=/", claims={"acr": "gold", "auth_time": START})
        page = forward_auth(h, "/admin/x", None, browser)
        self.assertEqual(page.code, 200)
        self.assertEqual(page.header(b"x-forwarded-acr"), b"gold")


class BearerTests(SynchronousTestCase):
    """A bearer token's claims must meet the route's requirement, on every request."""

    def test_met(self) -> None:
        h = stack(self)
        token = rs256(h, acr="gold", auth_time=int(START))
        page = h.browser().get("/api/x", headers=bearer(token))
        self.assertEqual(page.code, 200, page.body)
        self.assertEqual(h.app.header(b"x-forwarded-acr"), [b"gold"])
        self.assertEqual(h.app.header(b"x-forwarded-auth-time"), [str(int(START)).encode()])

    def test_lower_acr_challenged(self) -> None:
        h = stack(self)
        token = rs256(h, acr="bronze", auth_time=int(START))
        page = h.browser().get("/api/x", headers=bearer(token))
        self.assertEqual(page.code, 401)
        self.assertEqual(page.json()["error"], "insufficient_user_authentication")
        self.assertEqual(page.header(b"www-authenticate"),
                         b'Bearer realm="oidcproxy", error="insufficient_user_authentication", '
                         b'error_description="A different authentication level is required", '
                         b'acr_values="gold", max_age=60')
        self.assertEqual(h.app.requests, [])

    def test_cached_token_ages(self) -> None:
        """A cached token is judged again on each request: once its sign-in is too old, 401."""
        h = stack(self)
        token = rs256(h, acr="gold", auth_time=int(START))
        client = h.browser()
        watch = Watch(self, h)
        self.assertEqual(client.get("/api/x", headers=bearer(token)).code, 200)
        h.clock.advance(30)
        self.assertEqual(client.get("/api/x", headers=bearer(token)).code, 200)
        self.assertTrue(watch.at_once(), watch.renders)
        h.clock.advance(31)
        page = client.get("/api/x", headers=bearer(token))
        self.assertTrue(watch.at_once(), watch.renders)
        self.assertEqual(page.code, 401)
        self.assertEqual(page.json()["error"], "insufficient_user_authentication")

    def test_session_or_bearer(self) -> None:
        """On a session_or_bearer route a token without the acr is challenged, not sent to log in."""
        h = stack(self)
        token = rs256(h, acr="bronze")
        page = h.browser().get("/mixed/x", headers={**bearer(token), b"accept": [b"text/html"]})
        self.assertEqual(page.code, 401)
        self.assertEqual(h.browser().get("/mixed/x", headers=bearer(rs256(h, acr="gold"))).code,
                         200)


class HeaderTests(SynchronousTestCase):
    """The sign-in's headers: set from the session or token, stripped from clients everywhere."""

    FORGED = {b"X-Forwarded-Acr": [b"gold"], b"x-forwarded-auth-time": [b"9999999999"],
              b"X-Step-Acr": [b"gold"], b"X-Step-Time": [b"1"]}

    def test_latest_sign_in_on_plain_routes(self) -> None:
        h = stack(self)
        browser = h.browser()
        h.login(browser, "/oidc/login?rd=/", claims={"acr": "bronze", "auth_time": START - 0.5})
        self.assertEqual(browser.get("/x", headers={**API, **self.FORGED}).code, 200)
        self.assertEqual(h.app.header(b"x-forwarded-acr"), [b"bronze"])
        self.assertEqual(h.app.header(b"x-forwarded-auth-time"), [str(int(START - 1)).encode()])

    def test_absent_claims_no_header(self) -> None:
        """A session without acr or auth_time: neither header, and the client's are gone."""
        h = stack(self)
        browser = h.browser()
        h.login(browser, "/oidc/login?rd=/")
        self.assertEqual(browser.get("/x", headers={**API, **self.FORGED}).code, 200)
        self.assertEqual(h.app.header(b"x-forwarded-acr"), [])
        self.assertEqual(h.app.header(b"x-forwarded-auth-time"), [])

    def test_stripped_on_public_routes(self) -> None:
        h = stack(self)
        self.assertEqual(h.browser().get("/public/x", headers=self.FORGED).code, 200)
        self.assertEqual(h.app.header(b"x-forwarded-acr"), [])
        self.assertEqual(h.app.header(b"x-forwarded-auth-time"), [])

    def test_configured_names(self) -> None:
        """
        Other names are set and stripped (the default one is then the
        client's); with "" none is sent, and the default name is still stripped.
        """
        h = stack(self, step_up={"acr_header": "X-Step-Acr", "auth_time_header": ""})
        browser = h.browser()
        h.login(browser, "/oidc/login?rd=/", claims={"acr": "bronze", "auth_time": START})
        self.assertEqual(browser.get("/x", headers={**API, **self.FORGED}).code, 200)
        self.assertEqual(h.app.header(b"x-step-acr"), [b"bronze"])
        self.assertEqual(h.app.header(b"x-forwarded-auth-time"), [])
        self.assertEqual(h.app.header(b"x-forwarded-acr"), [b"gold"])
        self.assertEqual(h.app.header(b"x-step-time"), [b"1"])
        self.assertEqual(h.browser().get("/public/x", headers=self.FORGED).code, 200)
        self.assertEqual(h.app.header(b"x-step-acr"), [])

    def test_session_values_cached(self) -> None:
        """The headers of a session's latest sign-in are planned once per session object."""
        h = stack(self)
        plan = h.state.identity
        session = Session(id="i", sub="s", claims={"acr": "gold", "auth_time": START},
                          created=START, last_seen=START, expires=START + 60)
        first = plan.session_values(session)
        self.assertIs(plan.session_values(session), first)
        self.assertIn((b"X-Forwarded-Acr", [b"gold"]), first)
