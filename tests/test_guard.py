"""
Tests for L{oidcproxy.web.guard}: the authenticating wrapper, driven end to end
in memory.

The parts come from L{tests.fakes.GuardStack}: a fake identity provider
(L{tests.idp.FakeIdP}) is reached by the real L{Provider} through treq's
C{StubTreq}; a "browser" drives the guard through a C{RequestTraversalAgent}
and keeps its cookies itself; the guard wraps a L{RecordingUpstream}
(embedding mode) or an L{UpstreamProxy} (proxy mode). Time is a L{Clock}
shared by the guard, the provider and the IdP.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Dict, List
from urllib.parse import urlencode

from treq.testing import RequestTraversalAgent
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseFailed, ResponseNeverReceived
from twisted.web.resource import Resource

from oidcproxy.proxy.headers import canonical_header
from oidcproxy.proxy.routes import RouteTable
from oidcproxy.proxy.upstream import UpstreamClient, UpstreamProxy
from oidcproxy.sessions.cookies import CookieTooLarge
from oidcproxy.web.headers import header_value

from .fakes import (
    API,
    CLIENT_ID,
    CLIENT_SECRET,
    SESSION_COOKIE,
    START,
    STATE_PREFIX,
    USER_CLAIMS,
    GuardStack,
    RecordingUpstream,
    make_config,
    open_session,
    session_cookie_names,
    state_cookies,
)
from .idp import (
    AUTHORIZATION_ENDPOINT,
    ISSUER,
    Browser,
    Page,
    authorize_params,
    split_location,
)

IDENTITY_HEADERS = (b"x-forwarded-user", b"x-forwarded-email", b"x-forwarded-groups",
                    b"x-forwarded-access-token")


class GuardTestCase(SynchronousTestCase):
    def assertNoSessionCookie(self, page: Page, browser: Browser) -> None:
        """No session was handed out by C{page}."""
        made = [c for c in page.set_cookies if c.name.startswith(SESSION_COOKIE)
                and not c.name.startswith(STATE_PREFIX) and not c.deletes]
        self.assertEqual(made, [])
        self.assertNotIn(SESSION_COOKIE, browser.jar)

    def assertLoginRedirect(self, page: Page) -> Dict[str, str]:
        self.assertEqual(page.code, 302, page.body)
        base, _ = split_location(page)
        self.assertEqual(base, AUTHORIZATION_ENDPOINT)
        return authorize_params(page)

    def assertSessionCleared(self, page: Page) -> None:
        cookie = page.cookie(SESSION_COOKIE)
        self.assertIsNotNone(cookie, page.set_cookies)
        assert cookie is not None
        self.assertEqual(cookie.value, "")
        self.assertEqual(cookie.attributes.get("max-age"), "0")


# -- 1. public routes ---------------------------------------------------------------


class PublicRouteTests(GuardTestCase):
    def test_public_route_strips_identity_headers_and_own_cookies(self):
        """
        A public route reaches the app without login; identity headers the
        client sent, under any spelling, are removed, and so are the proxy's
        own cookies (session chunks and state cookies), while other cookies
        reach the app byte for byte.
        """
        h = GuardStack(self)
        browser = h.browser()
        cookie = (b"a=1; __Host-oidcproxy=forged; __Host-oidcproxy_1=chunk;"
                  b"  b = 2 ;__Host-oidcproxy_state_abc=q; c=3")
        page = browser.get("/public/page?x=1", headers={
            b"x-forwarded-user": [b"admin"],
            b"x_forwarded_user": [b"admin"],
            b"x.forwarded.email": [b"admin@evil.test"],
            b"X-FORWARDED-GROUPS": [b"admins"],
            b"x-forwarded-access-token": [b"forged"],
            b"cookie": [cookie],
        })
        self.assertEqual((page.code, page.body), (200, b"hello from the app"))
        self.assertEqual(len(h.app.requests), 1)
        self.assertEqual(h.app.requests[0]["uri"], b"/public/page?x=1")
        sent = [canonical_header(name) for name, _ in h.app.requests[0]["headers"]]
        for name in IDENTITY_HEADERS:
            self.assertNotIn(name, sent)
        self.assertEqual(h.app.header(b"cookie"), [b"a=1;  b = 2 ; c=3"])
        self.assertEqual(h.app.identities, [None])
        self.assertEqual(page.set_cookies, [])


# -- 2. API clients -----------------------------------------------------------------


class APIClientTests(GuardTestCase):
    VARIANTS = [
        ("plain API call", b"GET", {}),
        ("XHR", b"GET", {b"x-requested-with": [b"XMLHttpRequest"]}),
        ("fetch (cors)", b"GET", {b"sec-fetch-mode": [b"cors"]}),
        ("fetch (no-cors)", b"GET", {b"sec-fetch-mode": [b"no-cors"]}),
        ("POST", b"POST", {}),
    ]

    def test_api_clients_get_401_json(self):
        """
        An API client on a protected route (no text/html in Accept, an XHR
        header, Sec-Fetch-Mode cors/no-cors, or a POST) gets 401 with a JSON
        error and C{WWW-Authenticate: Bearer realm="oidcproxy"}; no state
        cookie is minted and the app sees nothing.
        """
        h = GuardStack(self)
        for what, method, extra in self.VARIANTS:
            browser = h.browser()
            page = browser.request(method, "/private", headers={**API, **extra},
                                   body=b"x=1" if method == b"POST" else None)
            self.assertEqual(page.code, 401, what)
            self.assertEqual(page.header(b"content-type"), b"application/json", what)
            document = page.json()
            self.assertEqual(document["error"], "unauthenticated", what)
            self.assertEqual(page.header(b"www-authenticate"), b'Bearer realm="oidcproxy"', what)
            self.assertEqual(page.set_cookies, [], what)
        self.assertEqual(h.app.requests, [])

    def test_html_accepting_non_navigations_get_401(self):
        """
        The same requests with a browser's C{Accept: text/html,...} still get
        401 (not a login redirect) when they are XHR, cors/no-cors fetches or
        POSTs: no state cookie, nothing reaches the app.
        """
        h = GuardStack(self)
        for what, method, extra in self.VARIANTS[1:]:
            browser = h.browser()
            headers = {b"accept": [b"text/html,application/xhtml+xml,*/*;q=0.8"], **extra}
            page = browser.request(method, "/private", headers=headers,
                                   body=b"x=1" if method == b"POST" else None)
            self.assertEqual(page.code, 401, what)
            self.assertEqual(page.header(b"www-authenticate"), b'Bearer realm="oidcproxy"', what)
            self.assertEqual(page.set_cookies, [], what)
        self.assertEqual(h.app.requests, [])


# -- 3. the login redirect ------------------------------------------------------------


class LoginRedirectTests(GuardTestCase):
    def test_browser_is_sent_to_the_idp(self):
        """
        A browser navigation to a protected route is redirected (302) to the
        authorize endpoint with the code-flow parameters, PKCE S256, state and
        nonce; C{Cache-Control: no-store}; and a state cookie named after the
        state (HttpOnly; Secure; SameSite=Lax; Path=/; Max-Age=600).
        """
        h = GuardStack(self)
        browser = h.browser()
        page = browser.navigate("/dash?tab=1")
        self.assertEqual(page.code, 302)
        self.assertEqual(page.header(b"cache-control"), b"no-store")
        base, _ = split_location(page)
        self.assertEqual(base, AUTHORIZATION_ENDPOINT)
        params = authorize_params(page)
        self.assertEqual(
            set(params),
            {"response_type", "client_id", "redirect_uri", "scope", "state", "nonce",
             "code_challenge", "code_challenge_method"},
        )
        self.assertEqual(params["response_type"], "code")
        self.assertEqual(params["client_id"], CLIENT_ID)
        self.assertEqual(params["redirect_uri"], "https://app.test/oidc/callback")
        self.assertEqual(params["scope"], "openid email profile")
        self.assertEqual(params["code_challenge_method"], "S256")
        self.assertEqual(len(params["code_challenge"]), 43)
        self.assertGreaterEqual(len(params["state"]), 16)
        self.assertGreaterEqual(len(params["nonce"]), 16)
        self.assertNotEqual(params["state"], params["nonce"])

        self.assertEqual([c.name for c in page.set_cookies], [STATE_PREFIX + params["state"]])
        cookie = page.set_cookies[0]
        self.assertTrue(cookie.value)
        self.assertEqual(cookie.attributes, {
            "path": "/", "secure": "", "httponly": "", "samesite": "Lax", "max-age": "600",
        })
        self.assertEqual(h.app.requests, [])


# -- 4. a whole login ------------------------------------------------------------------


class LoginTests(GuardTestCase):
    def test_full_login(self):
        """
        The callback with the issued code redirects to the original path and
        query, sets the session cookie (HttpOnly, Secure, SameSite=Lax) and
        deletes the state cookie; the original request then reaches the app
        with the identity headers, and L{identity} gives the sub and claims.
        The token request carried the code, redirect_uri, PKCE verifier and
        Basic client authentication.
        """
        h = GuardStack(self)
        browser = h.browser()
        params = h.authorize(browser, "/dash?tab=1&x=%2F")
        state_name = STATE_PREFIX + params["state"]
        self.assertIn(state_name, browser.jar)
        code = h.idp.issue_code(nonce=params["nonce"], sub="user-1", claims=USER_CLAIMS,
                                code_verifier_challenge=params["code_challenge"])
        page = browser.navigate("/oidc/callback?" + urlencode({"code": code, "state": params["state"]}))
        self.assertEqual(page.code, 302, page.body)
        self.assertEqual(page.location, "https://app.test/dash?tab=1&x=%2F")
        self.assertEqual(page.header(b"cache-control"), b"no-store")
        session = page.cookie(SESSION_COOKIE)
        assert session is not None
        self.assertTrue(session.value)
        self.assertEqual(session.attributes.get("path"), "/")
        self.assertEqual(session.attributes.get("samesite"), "Lax")
        self.assertTrue(session.has("Secure"))
        self.assertTrue(session.has("HttpOnly"))
        self.assertNotIn("domain", session.attributes)
        self.assertEqual(session.attributes.get("max-age"), str(8 * 3600))
        state = page.cookie(state_name)
        assert state is not None
        self.assertTrue(state.deletes)
        self.assertEqual(state_cookies(browser), [])
        self.assertEqual(h.app.requests, [])

        # The token request.
        self.assertEqual(len(h.idp.token_requests), 1)
        seen = h.idp.token_requests[0]
        self.assertEqual(seen.form["grant_type"], ["authorization_code"])
        self.assertEqual(seen.form["code"], [code])
        self.assertEqual(seen.form["redirect_uri"], ["https://app.test/oidc/callback"])
        self.assertEqual(len(seen.form["code_verifier"]), 1)
        self.assertEqual(set(seen.form), {"grant_type", "code", "redirect_uri", "code_verifier"})
        self.assertEqual(
            seen.authorization,
            b"Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode("ascii")),
        )
        self.assertEqual(seen.content_type, b"application/x-www-form-urlencoded")

        # The original request, now with the session.
        page = browser.navigate("/dash?tab=1&x=%2F")
        self.assertEqual((page.code, page.body), (200, b"hello from the app"))
        self.assertEqual(h.app.requests[0]["uri"], b"/dash?tab=1&x=%2F")
        self.assertEqual(h.app.header(b"x-forwarded-user"), [b"alice"])
        self.assertEqual(h.app.header(b"x-forwarded-email"), [b"alice@example.test"])
        self.assertEqual(h.app.header(b"x-forwarded-groups"), [b"a,b"])
        self.assertEqual(h.app.header(b"x-forwarded-access-token"), [])
        self.assertEqual(h.app.header(b"authorization"), [])
        self.assertEqual(h.app.header(b"cookie"), [])  # only our cookies: none go on
        who = h.app.identities[0]
        self.assertEqual(who.sub, "user-1")
        self.assertEqual(who.claims["preferred_username"], "alice")
        self.assertEqual(who.claims["groups"], ["a", "b"])
        self.assertEqual(who.claims["iss"], ISSUER)
        self.assertEqual(who.access_token, h.idp.issued[0]["access_token"])
        self.assertEqual(who.expires, START + 8 * 3600)
        self.assertEqual(page.set_cookies, [])

    def test_user_header_falls_back_to_sub(self):
        """Without preferred_username, X-Forwarded-User is the sub; absent claims send no header."""
        h = GuardStack(self)
        browser = h.logged_in(sub="sub-42", claims={})
        browser.navigate("/x")
        self.assertEqual(h.app.header(b"x-forwarded-user"), [b"sub-42"])
        self.assertEqual(h.app.header(b"x-forwarded-email"), [])
        self.assertEqual(h.app.header(b"x-forwarded-groups"), [])

    def test_client_identity_headers_replaced_after_login(self):
        """A logged-in user's own X-Forwarded-* copies are replaced by the session's values."""
        h = GuardStack(self)
        browser = h.logged_in(claims=USER_CLAIMS)
        browser.navigate("/x", headers={b"x_forwarded_user": [b"admin"],
                                        b"X-Forwarded-User": [b"admin"],
                                        b"x-forwarded-email": [b"admin@evil.test"]})
        headers = h.app.requests[-1]["headers"]
        users = [v for n, v in headers if canonical_header(n) == b"x-forwarded-user"]
        emails = [v for n, v in headers if canonical_header(n) == b"x-forwarded-email"]
        self.assertEqual(users, [b"alice"])
        self.assertEqual(emails, [b"alice@example.test"])


# -- 5. callback failures ------------------------------------------------------------------


class CallbackFailureTests(GuardTestCase):
    def assertRefused(self, page: Page, browser: Browser, code: int) -> None:
        self.assertEqual(page.code, code, page.body)
        self.assertNoSessionCookie(page, browser)

    def test_missing_state(self):
        """A callback without state is 400."""
        h = GuardStack(self)
        browser = h.browser()
        h.authorize(browser)
        page = browser.navigate("/oidc/callback?code=abc")
        self.assertRefused(page, browser, 400)
        self.assertEqual(h.idp.token_requests, [])

    def test_unknown_state(self):
        """A state this browser has no attempt for is 401."""
        h = GuardStack(self)
        browser = h.browser()
        h.authorize(browser)
        page = browser.navigate("/oidc/callback?code=abc&state=unknownstate123")
        self.assertRefused(page, browser, 401)
        self.assertEqual(h.idp.token_requests, [])

    def test_state_cookie_of_another_attempt(self):
        """A state cookie carrying another attempt (moved under this state's name) is 401."""
        h = GuardStack(self)
        browser = h.browser()
        first = h.authorize(browser)
        second = h.authorize(browser)
        first_value = browser.jar[STATE_PREFIX + first["state"]]
        browser.jar[STATE_PREFIX + second["state"]] = first_value
        code = h.idp.issue_code(nonce=second["nonce"], code_verifier_challenge=second["code_challenge"])
        page = browser.navigate("/oidc/callback?" + urlencode({"code": code, "state": second["state"]}))
        self.assertRefused(page, browser, 401)
        self.assertEqual(h.idp.token_requests, [])

    def test_state_of_another_browser(self):
        """A callback whose state was started in another browser is 401."""
        h = GuardStack(self)
        victim, attacker = h.browser(), h.browser()
        params = h.authorize(attacker)
        h.authorize(victim)
        code = h.idp.issue_code(nonce=params["nonce"], code_verifier_challenge=params["code_challenge"])
        page = victim.navigate("/oidc/callback?" + urlencode({"code": code, "state": params["state"]}))
        self.assertRefused(page, victim, 401)

    def test_expired_attempt(self):
        """An attempt older than state_cookie.max_age (600 s) is 401."""
        h = GuardStack(self)
        browser = h.browser()
        params = h.authorize(browser)
        code = h.idp.issue_code(nonce=params["nonce"], code_verifier_challenge=params["code_challenge"])
        h.clock.advance(601)
        page = browser.navigate("/oidc/callback?" + urlencode({"code": code, "state": params["state"]}))
        self.assertRefused(page, browser, 401)
        cleared = page.cookie(STATE_PREFIX + params["state"])
        assert cleared is not None
        self.assertTrue(cleared.deletes)
        self.assertEqual(h.idp.token_requests, [])

    def test_replayed_callback(self):
        """
        The same callback (URL and state cookie) used a second time is 401,
        and the code is not sent to the IdP again.
        """
        h = GuardStack(self)
        browser = h.browser()
        params = h.authorize(browser)
        state_name = STATE_PREFIX + params["state"]
        state_value = browser.jar[state_name]
        code = h.idp.issue_code(nonce=params["nonce"], code_verifier_challenge=params["code_challenge"])
        url = "/oidc/callback?" + urlencode({"code": code, "state": params["state"]})
        self.assertEqual(browser.navigate(url).code, 302)

        replay = h.browser()
        replay.jar[state_name] = state_value
        page = replay.navigate(url)
        self.assertRefused(page, replay, 401)
        self.assertEqual(len(h.idp.token_requests), 1)

    def test_duplicated_parameters(self):
        """A callback with two state or two code parameters is 400."""
        h = GuardStack(self)
        for query in ("code={code}&code=other&state={state}", "code={code}&state={state}&state={state}"):
            browser = h.browser()
            params = h.authorize(browser)
            code = h.idp.issue_code(nonce=params["nonce"], code_verifier_challenge=params["code_challenge"])
            page = browser.navigate("/oidc/callback?" + query.format(code=code, state=params["state"]))
            self.assertRefused(page, browser, 400)
        self.assertEqual(h.idp.token_requests, [])

    def test_idp_error_is_escaped(self):
        """
        C{?error=access_denied&error_description=<script>...} is 403 and the
        page holds no markup from the query.
        """
        h = GuardStack(self)
        browser = h.browser()
        params = h.authorize(browser)
        page = browser.navigate("/oidc/callback?" + urlencode({
            "error": "access_denied",
            "error_description": "<script>alert(1)</script>",
            "state": params["state"],
        }))
        self.assertRefused(page, browser, 403)
        self.assertNotIn(b"<script", page.body.lower())
        self.assertIn(b"access_denied", page.body)
        cleared = page.cookie(STATE_PREFIX + params["state"])
        assert cleared is not None
        self.assertTrue(cleared.deletes)

        browser = h.browser()
        params = h.authorize(browser)
        page = browser.navigate("/oidc/callback?" + urlencode({
            "error": "<script>alert(1)</script>", "state": params["state"]}))
        self.assertRefused(page, browser, 403)
        self.assertNotIn(b"<script", page.body.lower())
        self.assertEqual(h.idp.token_requests, [])

    def test_wrong_nonce(self):
        """An ID token whose nonce is not the attempt's is 401."""
        h = GuardStack(self)
        browser = h.browser()
        params = h.authorize(browser)
        code = h.idp.issue_code(nonce="another-nonce", code_verifier_challenge=params["code_challenge"])
        page = browser.navigate("/oidc/callback?" + urlencode({"code": code, "state": params["state"]}))
        self.assertRefused(page, browser, 401)
        self.assertEqual(len(h.idp.token_requests), 1)

    def test_wrong_iss_parameter(self):
        """With RFC 9207 advertised, a missing or wrong iss parameter is 401; the right one works."""
        h = GuardStack(self, iss_parameter_supported=True)
        for iss in ("https://evil.test", None):
            browser = h.browser()
            params = h.authorize(browser)
            code = h.idp.issue_code(nonce=params["nonce"], code_verifier_challenge=params["code_challenge"])
            query = {"code": code, "state": params["state"]}
            if iss is not None:
                query["iss"] = iss
            page = browser.navigate("/oidc/callback?" + urlencode(query))
            self.assertRefused(page, browser, 401)
        self.assertEqual(h.idp.token_requests, [])
        browser = h.browser()
        params = h.authorize(browser)
        code = h.idp.issue_code(nonce=params["nonce"], code_verifier_challenge=params["code_challenge"])
        page = browser.navigate("/oidc/callback?" + urlencode(
            {"code": code, "state": params["state"], "iss": ISSUER}))
        self.assertEqual(page.code, 302, page.body)

    def test_invalid_grant(self):
        """A code the token endpoint refuses (invalid_grant) is 401."""
        h = GuardStack(self)
        browser = h.browser()
        params = h.authorize(browser)
        page = browser.navigate("/oidc/callback?" + urlencode({"code": "never-issued",
                                                               "state": params["state"]}))
        self.assertRefused(page, browser, 401)
        self.assertEqual(len(h.idp.token_requests), 1)

    def test_pkce_verifier_checked(self):
        """A code bound to another PKCE challenge is refused by the IdP: 401."""
        h = GuardStack(self)
        browser = h.browser()
        params = h.authorize(browser)
        code = h.idp.issue_code(nonce=params["nonce"], code_verifier_challenge="A" * 43)
        page = browser.navigate("/oidc/callback?" + urlencode({"code": code, "state": params["state"]}))
        self.assertRefused(page, browser, 401)

    def test_token_endpoint_hangs(self):
        """A token endpoint that never answers: after the provider timeout, 504."""
        h = GuardStack(self, make_config(oidc={"timeout": "5s"}))
        h.idp.hold_token_requests = True
        browser = h.browser()
        params = h.authorize(browser)
        code = h.idp.issue_code(nonce=params["nonce"], code_verifier_challenge=params["code_challenge"])
        url = "/oidc/callback?" + urlencode({"code": code, "state": params["state"]})
        pending = browser.send(b"GET", url, headers={b"accept": [b"text/html"]})
        h.network.pump()
        self.assertFalse(pending.done)
        self.assertEqual(len(h.idp.held), 1)
        h.clock.advance(4.9)
        h.network.pump()
        self.assertFalse(pending.done)
        h.clock.advance(0.2)
        h.network.pump()
        page = pending.page()
        self.assertRefused(page, browser, 504)


# -- 6. the IdP is not ready ---------------------------------------------------------------


class NotReadyTests(GuardTestCase):
    def test_idp_not_ready(self):
        """
        While discovery fails, a browser on a protected route gets 503 with
        Retry-After (no state cookie); public routes still work.
        """
        h = GuardStack(self, discovery_status=500)
        self.assertFalse(h.provider.ready)
        browser = h.browser()
        page = browser.navigate("/private")
        self.assertEqual(page.code, 503, page.body)
        self.assertEqual(page.header(b"retry-after"), b"5")
        self.assertEqual(state_cookies(browser), [])
        page = browser.navigate("/public/x")
        self.assertEqual((page.code, page.body), (200, b"hello from the app"))
        self.assertEqual([r["uri"] for r in h.app.requests], [b"/public/x"])

        # Once the IdP is back (the provider retries on the Clock), login starts.
        h.idp.discovery_status = 200
        h.clock.advance(60)
        h.network.pump()
        self.assertTrue(h.provider.ready)
        self.assertLoginRedirect(browser.navigate("/private"))


# -- 7. session lifetime -----------------------------------------------------------------------


class LifetimeTests(GuardTestCase):
    def test_lifetime_ends_session(self):
        """After session.lifetime the cookie no longer works: login redirect, cookie cleared."""
        h = GuardStack(self, make_config(session={"lifetime": "1h"}))
        browser = h.logged_in()
        h.clock.advance(3599)
        self.assertEqual(browser.navigate("/x").code, 200)
        h.clock.advance(1)
        page = browser.navigate("/x")
        self.assertLoginRedirect(page)
        self.assertSessionCleared(page)
        self.assertNotIn(SESSION_COOKIE, browser.jar)
        self.assertEqual(len(h.app.requests), 1)

    def test_lifetime_ends_session_for_api(self):
        """An expired session on an API request: 401 and the cookie cleared."""
        h = GuardStack(self, make_config(session={"lifetime": "1h"}))
        browser = h.logged_in()
        h.clock.advance(3600)
        page = browser.get("/x", headers=API)
        self.assertEqual(page.code, 401)
        self.assertSessionCleared(page)

    def test_idle_timeout(self):
        """
        With idle_timeout, activity within it keeps the session alive (the
        guard re-issues the cookie); inactivity beyond it ends the session.
        """
        h = GuardStack(self, make_config(session={"idle_timeout": "10m"}))
        browser = h.logged_in()
        first = browser.jar[SESSION_COOKIE]
        h.clock.advance(300)
        page = browser.navigate("/x")
        self.assertEqual(page.code, 200)
        reissued = page.cookie(SESSION_COOKIE)
        assert reissued is not None
        self.assertNotEqual(reissued.value, first)
        self.assertEqual(reissued.attributes.get("max-age"), str(8 * 3600 - 300))
        self.assertTrue(reissued.has("HttpOnly"))
        self.assertEqual(open_session(reissued.value).last_seen, START + 300)
        self.assertEqual(open_session(reissued.value).id, open_session(first).id)
        h.clock.advance(540)  # 14 min after login, 9 after the last request
        self.assertEqual(browser.navigate("/x").code, 200)
        h.clock.advance(600)
        page = browser.navigate("/x")
        self.assertLoginRedirect(page)
        self.assertSessionCleared(page)
        self.assertEqual(len(h.app.requests), 2)

    def test_idle_timeout_old_cookie(self):
        """The cookie from before the re-issue lapses after idle_timeout from its own last use."""
        h = GuardStack(self, make_config(session={"idle_timeout": "10m"}))
        browser = h.logged_in()
        old = browser.jar[SESSION_COOKIE]
        h.clock.advance(300)
        self.assertEqual(browser.navigate("/x").code, 200)
        h.clock.advance(301)
        stale = h.browser()
        stale.jar[SESSION_COOKIE] = old
        page = stale.get("/x", headers=API)
        self.assertEqual(page.code, 401)
        self.assertEqual(browser.navigate("/x").code, 200)


# -- 8. bad cookies --------------------------------------------------------------------------


class BadCookieTests(GuardTestCase):
    def variants(self, value: str) -> Dict[str, str]:
        middle = len(value) // 2
        flipped = value[:middle] + ("A" if value[middle] != "A" else "B") + value[middle + 1:]
        return {
            "tampered": flipped,
            "truncated": value[: len(value) - 7],
            "garbage": "not-a-sealed-value",
            "one char": "x",
        }

    def test_bad_session_cookie(self):
        """
        A tampered, truncated or garbage session cookie is no session: a
        browser is sent to login, an API client gets 401, the cookie is
        cleared, and never a 500.
        """
        h = GuardStack(self)
        good = h.logged_in().jar[SESSION_COOKIE]
        for what, value in self.variants(good).items():
            browser = h.browser()
            browser.jar[SESSION_COOKIE] = value
            page = browser.navigate("/x")
            self.assertLoginRedirect(page)
            self.assertSessionCleared(page)

            api = h.browser()
            api.jar[SESSION_COOKIE] = value
            page = api.get("/x", headers=API)
            self.assertEqual(page.code, 401, what)
            self.assertEqual(page.json()["error"], "unauthenticated", what)
            self.assertSessionCleared(page)
        self.assertEqual(h.app.requests, [])

    def test_stray_chunk_without_base(self):
        """A chunk cookie without its base cookie is no session and is cleared."""
        h = GuardStack(self)
        browser = h.browser()
        browser.jar[SESSION_COOKIE + "_1"] = "abc"
        page = browser.get("/x", headers=API)
        self.assertEqual(page.code, 401)
        names = {c.name for c in page.set_cookies if c.deletes}
        self.assertEqual(names, {SESSION_COOKIE, SESSION_COOKIE + "_1"})


# -- 9. login fixation -----------------------------------------------------------------------


class FixationTests(GuardTestCase):
    def test_login_replaces_planted_session(self):
        """
        A session cookie planted in the browser (another user's valid session)
        is replaced after login by a new one, with a new session id, for the
        user who logged in.
        """
        h = GuardStack(self)
        attacker = h.logged_in(sub="attacker")
        planted = attacker.jar[SESSION_COOKIE]

        victim = h.browser()
        victim.jar[SESSION_COOKIE] = planted
        page = victim.navigate("/oidc/login?rd=/home")
        params = self.assertLoginRedirect(page)
        code = h.idp.issue_code(nonce=params["nonce"], sub="victim",
                                code_verifier_challenge=params["code_challenge"])
        page = victim.navigate("/oidc/callback?" + urlencode({"code": code, "state": params["state"]}))
        self.assertEqual(page.code, 302, page.body)
        fresh = victim.jar[SESSION_COOKIE]
        self.assertNotEqual(fresh, planted)
        self.assertNotEqual(open_session(fresh).id, open_session(planted).id)
        self.assertEqual(open_session(fresh).sub, "victim")
        victim.navigate("/home")
        self.assertEqual(h.app.identities[-1].sub, "victim")

    def test_login_replaces_garbage_session_cookie(self):
        """A pre-set (invalid) session cookie value is replaced at login."""
        h = GuardStack(self)
        browser = h.browser()
        browser.jar[SESSION_COOKIE] = "chosen-by-the-attacker"
        page = h.login(browser)
        self.assertEqual(page.code, 302)
        self.assertNotEqual(browser.jar[SESSION_COOKIE], "chosen-by-the-attacker")


# -- 10. state cookie limit -------------------------------------------------------------------


class StateCookieLimitTests(GuardTestCase):
    def test_at_most_five_state_cookies(self):
        """Seven logins started in one browser leave only the five newest state cookies."""
        h = GuardStack(self)
        browser = h.browser()
        states = []
        for _ in range(7):
            states.append(h.authorize(browser)["state"])
            h.clock.advance(1)
        self.assertEqual(state_cookies(browser), sorted(STATE_PREFIX + s for s in states[2:]))
        # The newest still completes; a dropped one does not.
        code = h.idp.issue_code(nonce=None)
        page = browser.navigate("/oidc/callback?" + urlencode({"code": code, "state": states[0]}))
        self.assertEqual(page.code, 401)

    def test_configured_max_count(self):
        """state_cookie.max_count is honoured."""
        h = GuardStack(self, make_config(state_cookie={"max_count": 2}))
        browser = h.browser()
        states = []
        for _ in range(4):
            states.append(h.authorize(browser)["state"])
            h.clock.advance(1)
        self.assertEqual(state_cookies(browser), sorted(STATE_PREFIX + s for s in states[2:]))


# -- 11. return-to ------------------------------------------------------------------------------


class ReturnToTests(GuardTestCase):
    def login_via(self, h: GuardStack, rd_query: str) -> Page:
        browser = h.browser()
        page = browser.navigate("/oidc/login?" + rd_query)
        params = self.assertLoginRedirect(page)
        code = h.idp.issue_code(nonce=params["nonce"], code_verifier_challenge=params["code_challenge"])
        return browser.navigate("/oidc/callback?" + urlencode({"code": code, "state": params["state"]}))

    def test_login_endpoint_rd(self):
        """/oidc/login?rd=/x?y=1 lands on /x?y=1 after login."""
        h = GuardStack(self)
        page = self.login_via(h, "rd=/x?y=1")
        self.assertEqual(page.location, "https://app.test/x?y=1")
        page = self.login_via(h, urlencode({"rd": "/x?y=1"}))
        self.assertEqual(page.location, "https://app.test/x?y=1")

    def test_login_endpoint_unsafe_rd(self):
        """Off-site rd values (//evil.com, https://evil.com, /\\evil.com) land on /."""
        h = GuardStack(self)
        for rd in ("//evil.com", "https://evil.com", "/\\evil.com", "/%2F/evil.com", "/%5Cevil.com"):
            page = self.login_via(h, urlencode({"rd": rd}))
            self.assertEqual(page.location, "https://app.test/", rd)
        for raw in ("rd=//evil.com", "rd=https://evil.com", "rd=/\\evil.com", "rd=/x&rd=//evil.com"):
            page = self.login_via(h, raw)
            self.assertEqual(page.location, "https://app.test/", raw)


# -- 12. logout -----------------------------------------------------------------------------------


class LogoutTests(GuardTestCase):
    def test_get_shows_a_form(self):
        """GET /oidc/logout shows a POST form and does not log out."""
        h = GuardStack(self)
        browser = h.logged_in()
        page = browser.navigate("/oidc/logout?rd=/bye")
        self.assertEqual(page.code, 200)
        self.assertIn(b'<form method="post" action="/oidc/logout" id="logout-form">', page.body)
        self.assertIn(b'name="rd" value="/bye"', page.body)
        self.assertEqual(page.header(b"cache-control"), b"no-store")
        self.assertEqual(page.set_cookies, [])
        self.assertEqual(browser.navigate("/x").code, 200)

    def test_cross_site_post_refused(self):
        """A POST with a foreign Origin (or Sec-Fetch-Site: cross-site) is 403; the session lives on."""
        h = GuardStack(self)
        browser = h.logged_in()
        for headers in ({b"origin": [b"https://evil.test"]},
                        {b"origin": [b"null"]},
                        {b"sec-fetch-site": [b"cross-site"]}):
            page = browser.request(b"POST", "/oidc/logout", headers={
                **headers, b"content-type": [b"application/x-www-form-urlencoded"]}, body=b"rd=/")
            self.assertEqual(page.code, 403, headers)
            self.assertEqual(page.set_cookies, [])
        self.assertEqual(browser.navigate("/x").code, 200)

    def test_same_origin_post_logs_out(self):
        """
        A same-origin POST answers 303 to the (safe) rd, clears the session
        cookie, and the browser is logged out.
        """
        h = GuardStack(self)
        browser = h.logged_in()
        page = browser.request(b"POST", "/oidc/logout", headers={
            b"origin": [b"https://app.test"], b"sec-fetch-site": [b"same-origin"],
            b"content-type": [b"application/x-www-form-urlencoded"]}, body=b"rd=%2Fbye")
        self.assertEqual(page.code, 303, page.body)
        self.assertEqual(page.location, "https://app.test/bye")
        self.assertSessionCleared(page)
        self.assertNotIn(SESSION_COOKIE, browser.jar)
        self.assertLoginRedirect(browser.navigate("/x"))

        browser = h.logged_in()
        page = browser.request(b"POST", "/oidc/logout?rd=//evil.com",
                               headers={b"origin": [b"https://app.test"]})
        self.assertEqual(page.code, 303)
        self.assertEqual(page.location, "https://app.test/")

    def test_replayed_cookie_after_logout(self):
        """
        With the stateless cookie store, logout cannot revoke a cookie value:
        a copy of the cookie replayed after logout still authenticates until
        the session's own expiry (documented in L{oidcproxy.sessions.stores.cookie}).
        """
        h = GuardStack(self)
        browser = h.logged_in()
        copy = browser.jar[SESSION_COOKIE]
        page = browser.request(b"POST", "/oidc/logout", headers={b"origin": [b"https://app.test"]})
        self.assertEqual(page.code, 303)
        replay = h.browser()
        replay.jar[SESSION_COOKIE] = copy
        self.assertEqual(replay.navigate("/x").code, 200)


# -- 13. userinfo ----------------------------------------------------------------------------------


class UserinfoTests(GuardTestCase):
    def test_userinfo_with_session(self):
        """/oidc/userinfo answers the sub, claims and expiry as JSON, and no token at all."""
        h = GuardStack(self)
        browser = h.logged_in(claims=USER_CLAIMS)
        page = browser.get("/oidc/userinfo", headers=API)
        self.assertEqual(page.code, 200)
        self.assertEqual(page.header(b"content-type"), b"application/json")
        self.assertEqual(page.header(b"cache-control"), b"no-store")
        document = page.json()
        self.assertEqual(document["sub"], "user-1")
        self.assertEqual(document["expires_at"], int(START + 8 * 3600))
        self.assertEqual(document["claims"]["email"], "alice@example.test")
        self.assertEqual(document["claims"]["groups"], ["a", "b"])
        tokens = h.idp.issued[0]
        for name in ("access_token", "id_token", "refresh_token"):
            self.assertNotIn(tokens[name].encode("ascii"), page.body)
            self.assertNotIn(name.encode("ascii"), page.body)
        self.assertEqual(h.app.requests, [])

    def test_userinfo_without_session(self):
        """Without a session /oidc/userinfo is 401 JSON."""
        h = GuardStack(self)
        page = h.browser().get("/oidc/userinfo", headers=API)
        self.assertEqual(page.code, 401)
        self.assertEqual(page.json()["error"], "unauthenticated")
        self.assertEqual(page.header(b"www-authenticate"), b'Bearer realm="oidcproxy"')


# -- 14. path normalisation --------------------------------------------------------------------------


class PathTests(GuardTestCase):
    def test_dot_segments_reach_the_endpoint(self):
        """/public/../oidc/userinfo is answered by the endpoint, not proxied."""
        h = GuardStack(self)
        page = h.browser().get("/public/../oidc/userinfo", headers=API)
        self.assertEqual(page.code, 401)
        browser = h.logged_in()
        page = browser.get("/public/../oidc/userinfo", headers=API)
        self.assertEqual(page.code, 200)
        self.assertEqual(page.json()["sub"], "user-1")
        page = browser.get("/public/%2e%2e/oidc/userinfo", headers=API)
        self.assertEqual(page.code, 200)
        self.assertEqual(h.app.requests, [])

    def test_unknown_endpoint(self):
        """/oidc/unknown (and /oidc itself) is 404."""
        h = GuardStack(self)
        for path in ("/oidc/unknown", "/oidc", "/oidc/"):
            page = h.browser().navigate(path)
            self.assertEqual(page.code, 404, path)
        self.assertEqual(h.app.requests, [])

    def test_encoded_slash(self):
        """/a%2Fb is 400, for anyone."""
        h = GuardStack(self)
        self.assertEqual(h.browser().navigate("/a%2Fb").code, 400)
        self.assertEqual(h.logged_in().navigate("/a%2Fb").code, 400)
        self.assertEqual(h.browser().navigate("/public/a%2Fb").code, 400)
        self.assertEqual(h.app.requests, [])


# -- 15. passing the access token -------------------------------------------------------------------


class AccessTokenTests(GuardTestCase):
    def test_header_mode(self):
        """pass_access_token = "header" sends the access token in X-Forwarded-Access-Token."""
        h = GuardStack(self, make_config(oidc={"pass_access_token": "header"}))
        browser = h.logged_in()
        browser.navigate("/x", headers={b"x-forwarded-access-token": [b"forged"],
                                        b"authorization": [b"Basic Zm9vOmJhcg=="]})
        token = h.idp.issued[0]["access_token"].encode("ascii")
        self.assertEqual(h.app.header(b"x-forwarded-access-token"), [token])
        self.assertEqual(h.app.header(b"authorization"), [b"Basic Zm9vOmJhcg=="])

    def test_authorization_mode(self):
        """pass_access_token = "authorization" replaces the client's Authorization with Bearer <token>."""
        h = GuardStack(self, make_config(oidc={"pass_access_token": "authorization"}))
        browser = h.logged_in()
        browser.navigate("/x", headers={b"authorization": [b"Basic Zm9vOmJhcg=="]})
        token = h.idp.issued[0]["access_token"].encode("ascii")
        self.assertEqual(h.app.header(b"authorization"), [b"Bearer " + token])
        self.assertEqual(h.app.header(b"x-forwarded-access-token"), [])

    def test_authorization_mode_public_route(self):
        """In "authorization" mode a client's Authorization never reaches a public route either."""
        h = GuardStack(self, make_config(oidc={"pass_access_token": "authorization"}))
        h.browser().get("/public/x", headers={b"authorization": [b"Bearer forged"]})
        self.assertEqual(h.app.header(b"authorization"), [])


# -- 16. header_value -----------------------------------------------------------------------------


def _encoded(text: str) -> bytes:
    return b"=?UTF-8?B?" + base64.b64encode(text.encode("utf-8")) + b"?="


class HeaderValueTests(SynchronousTestCase):
    TABLE = [
        ("alice", b"alice"),
        ("", b""),
        (["a", "b"], b"a,b"),
        (["a"], b"a"),
        ([], None),
        (True, b"true"),
        (False, b"false"),
        (42, b"42"),
        (0, b"0"),
        (1.5, b"1.5"),
        ("J\u00fcrgen", _encoded("J\u00fcrgen")),
        ("\u65e5\u672c", _encoded("\u65e5\u672c")),
        ("=?UTF-8?B?YWRtaW4=?=", _encoded("=?UTF-8?B?YWRtaW4=?=")),
        ("=?", _encoded("=?")),
        ("a\r\nX-Forwarded-User: admin", None),
        ("a\nb", None),
        ("a\rb", None),
        ("a\x00b", None),
        ("a\x7fb", None),
        (["a,b", "c"], _encoded("a,b") + b",c"),
        (["ok", "bad\r\nvalue"], None),
        (["x", 7], b"x,7"),
        (["\u00e9"], _encoded("\u00e9")),
        ("a,b", b"a,b"),
        # Blanks around a value or an item would be stripped by the upstream's
        # parser: " admin" must not arrive as "admin".
        (" admin", _encoded(" admin")),
        ("admin ", _encoded("admin ")),
        (" ", _encoded(" ")),
        ("a b", b"a b"),
        (["users", " admins"], b"users," + _encoded(" admins")),
        ({"a": 1}, None),
        (None, None),
    ]

    def test_table(self):
        """header_value turns claim values into header bytes (or None) as documented."""
        for value, expected in self.TABLE:
            self.assertEqual(header_value(value), expected, repr(value))

    def test_encoded_values_decode(self):
        """Encoded words are the UTF-8 of the value in base64."""
        value = header_value("Zo\u00eb")
        assert value is not None
        self.assertTrue(value.startswith(b"=?UTF-8?B?") and value.endswith(b"?="))
        self.assertEqual(base64.b64decode(value[10:-2]).decode("utf-8"), "Zo\u00eb")

    def test_non_ascii_claim_sent_encoded(self):
        """A non-ASCII claim reaches the app RFC 2047-encoded."""
        h = GuardStack(self)
        browser = h.logged_in(claims={"preferred_username": "J\u00fcrgen"})
        browser.navigate("/x")
        self.assertEqual(h.app.header(b"x-forwarded-user"), [_encoded("J\u00fcrgen")])

    def test_blank_edged_claim_sent_encoded(self):
        """
        A claim with a leading blank reaches the app as an encoded word, so
        no HTTP parser can strip it into another user's name.
        """
        h = GuardStack(self)
        browser = h.logged_in(claims={"preferred_username": " admin"})
        browser.navigate("/x")
        self.assertEqual(h.app.header(b"x-forwarded-user"), [_encoded(" admin")])


# -- 17. proxy mode ---------------------------------------------------------------------------------


class ProxyModeTests(GuardTestCase):
    def make(self) -> Any:
        upstream = RecordingUpstream()
        config = make_config()
        proxy_routes = RouteTable(config.routes)
        matched: List[Any] = []
        original = proxy_routes.match

        def spy(*args: Any) -> Any:
            matched.append(args)
            return original(*args)

        self.patch(proxy_routes, "match", spy)

        def build(h: GuardStack) -> UpstreamProxy:
            def client_factory(route: Any) -> UpstreamClient:
                agent = h.network.add(RequestTraversalAgent(upstream))
                return UpstreamClient(agent, route.settings.max_connections)

            return UpstreamProxy(proxy_routes, h.clock, client_factory=client_factory)

        h = GuardStack(self, config, build=build)
        return h, upstream, matched

    def test_proxy_mode(self):
        """
        In front of L{UpstreamProxy} the guard hands its route match on: an
        authenticated request is proxied with the identity headers (and
        without our cookies); an unauthenticated API request never reaches
        the upstream.
        """
        h, upstream, matched = self.make()
        browser = h.browser()
        page = browser.get("/api/items?x=1", headers=API)
        self.assertEqual(page.code, 401)
        self.assertEqual(upstream.requests, [])

        browser = h.logged_in(claims=USER_CLAIMS)
        browser.jar["theme"] = "dark"
        page = browser.navigate("/api/items?x=1")
        self.assertEqual(page.code, 200, page.body)
        self.assertEqual(json.loads(page.body), {"uri": "/api/items?x=1"})
        self.assertEqual(len(upstream.requests), 1)
        self.assertEqual(upstream.requests[0]["uri"], b"/api/items?x=1")
        self.assertEqual(upstream.header(b"x-forwarded-user"), [b"alice"])
        self.assertEqual(upstream.header(b"x-forwarded-groups"), [b"a,b"])
        self.assertEqual(upstream.header(b"cookie"), [b"theme=dark"])
        self.assertEqual(upstream.header(b"x-forwarded-proto"), [b"https"])
        self.assertEqual(matched, [])  # the proxy used the guard's match


# -- 18. unexpected errors ----------------------------------------------------------------------------


class Exploding(Resource):
    """A wrapped resource whose traversal fails."""

    def getChild(self, path: bytes, request: Any) -> Any:
        raise RuntimeError("secret internal detail")


class UnexpectedErrorTests(GuardTestCase):
    def assertQuiet500(self, page: Page) -> None:
        self.assertEqual(page.code, 500, page.body)
        for text in (b"Traceback", b"RuntimeError", b"secret internal detail", b"File \""):
            self.assertNotIn(text, page.body)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_provider_raises_during_callback(self):
        """An unexpected exception during the callback is logged and answered 500 without details."""
        h = GuardStack(self)
        browser = h.browser()
        params = h.authorize(browser)
        code = h.idp.issue_code(nonce=params["nonce"], code_verifier_challenge=params["code_challenge"])

        async def keys_for(kid: Any) -> Any:
            raise RuntimeError("secret internal detail")

        self.patch(h.provider, "keys_for", keys_for)
        page = browser.navigate("/oidc/callback?" + urlencode({"code": code, "state": params["state"]}))
        self.assertQuiet500(page)
        self.assertNoSessionCookie(page, browser)

    def test_wrapped_traversal_raises(self):
        """An exception in the wrapped resource's traversal is logged and answered 500 without details."""
        h = GuardStack(self, wrapped=Exploding())
        page = h.browser().navigate("/public/x")
        self.assertQuiet500(page)

    def test_error_after_partial_write_ends_the_response(self):
        """
        When the wrapped resource fails after it started writing, the
        response cannot become a 500 any more, but it must still end (the
        connection is finished or aborted) rather than hang, and the error is
        logged.
        """
        h = GuardStack(self)

        def partial_then_fail(request: Any) -> None:
            request.write(b"partial")
            raise RuntimeError("secret internal detail")

        h.app.action = partial_then_fail
        pending = h.browser().send(b"GET", "/public/x")
        h.network.pump()
        logged = self.flushLoggedErrors(RuntimeError)
        self.assertEqual(len(logged), 1)
        self.assertTrue(pending.done, "the response never ended: the request is left open")


# -- more: sessions in several cookies, stores, userinfo, embedding ------------------------------------


class ChunkedSessionTests(GuardTestCase):
    def test_large_session_is_chunked(self):
        """
        A session too large for one cookie is stored in several chunks that
        work together, never reach the app, and shrink back (the stale chunk
        is deleted) when a later login makes a smaller session.
        """
        h = GuardStack(self)
        browser = h.browser()
        page = h.login(browser, claims={"blob": "y" * 1500})
        self.assertEqual(page.code, 302, page.body)
        self.assertEqual(session_cookie_names(browser), [SESSION_COOKIE, SESSION_COOKIE + "_1"])
        browser.jar["theme"] = "dark"
        self.assertEqual(browser.navigate("/x").code, 200)
        self.assertEqual(h.app.identities[-1].claims["blob"], "y" * 1500)
        self.assertEqual(h.app.header(b"cookie"), [b"theme=dark"])

        page = browser.navigate("/oidc/login?rd=/x")
        params = self.assertLoginRedirect(page)
        code = h.idp.issue_code(nonce=params["nonce"], code_verifier_challenge=params["code_challenge"])
        page = browser.navigate("/oidc/callback?" + urlencode({"code": code, "state": params["state"]}))
        self.assertEqual(page.code, 302)
        dropped = page.cookie(SESSION_COOKIE + "_1")
        assert dropped is not None
        self.assertTrue(dropped.deletes)
        self.assertEqual(session_cookie_names(browser), [SESSION_COOKIE])
        self.assertEqual(browser.navigate("/x").code, 200)
        self.assertNotIn("blob", h.app.identities[-1].claims)

    def test_logout_clears_every_chunk(self):
        """Logout deletes the base cookie and every chunk."""
        h = GuardStack(self)
        browser = h.browser()
        h.login(browser, claims={"blob": "y" * 1500})
        self.assertEqual(len(session_cookie_names(browser)), 2)
        page = browser.request(b"POST", "/oidc/logout", headers={b"origin": [b"https://app.test"]})
        self.assertEqual(page.code, 303)
        self.assertEqual({c.name for c in page.set_cookies if c.deletes},
                         {SESSION_COOKIE, SESSION_COOKIE + "_1"})
        self.assertEqual(session_cookie_names(browser), [])

    def test_session_beyond_site_headers_refused_at_login(self):
        """
        Embedded in a plain Twisted Site (16 KiB of request headers), a
        session larger than max_cookie_bytes (12 KiB by default) is refused at
        login with the session_too_large page (502) — never handed out as
        cookies the server would then drop on every request. (The proxy's own
        site raises both limits; tests/test_server.py pins that side.)
        """
        h = GuardStack(self)
        browser = h.browser()
        page = h.login(browser, claims={"blob": "y" * 5500})
        self.assertEqual(page.code, 502, page.body)
        self.assertIn(b"more about you than this site can keep", page.body)
        self.assertEqual(session_cookie_names(browser), [])

    def test_session_within_max_cookie_bytes_is_accepted_back(self):
        """A session just under the limit (several chunks) is usable on the next request."""
        h = GuardStack(self)
        browser = h.browser()
        page = h.login(browser, claims={"blob": "y" * 2200})
        self.assertEqual(page.code, 302, page.body)
        self.assertGreaterEqual(len(session_cookie_names(browser)), 3)
        pending = browser.send(b"GET", "/x", headers={b"accept": [b"application/json"]})
        h.network.pump()
        try:
            page = pending.page()
        except (ResponseNeverReceived, ResponseFailed) as e:
            self.fail(f"the request carrying the session's {len(browser.cookie_header() or b'')}-byte "
                      f"Cookie header was refused by the server: {e!r}")
        self.assertEqual(page.code, 200)

    def test_session_too_large(self):
        """
        A session that does not fit in session.max_cookie_chunks cookies is
        the documented C{session_too_large} 502 page, with the state cookie
        deleted, not an unexpected error.
        """
        h = GuardStack(self, make_config(session={"max_cookie_chunks": 1}))
        browser = h.browser()
        params = h.authorize(browser)
        code = h.idp.issue_code(nonce=params["nonce"], claims={"blob": "z" * 5000},
                                code_verifier_challenge=params["code_challenge"])
        page = browser.navigate("/oidc/callback?" + urlencode({"code": code, "state": params["state"]}))
        unexpected = self.flushLoggedErrors(CookieTooLarge)
        self.assertEqual(page.code, 502)
        self.assertNoSessionCookie(page, browser)
        self.assertIn(b"more about you than this site can keep", page.body)
        self.assertEqual(state_cookies(browser), [])
        self.assertEqual(unexpected, [])


class StoreTests(GuardTestCase):
    def test_memory_store_logout_revokes(self):
        """With a server-side store, a cookie replayed after logout no longer works."""
        h = GuardStack(self, memory_store=True)
        browser = h.logged_in()
        copy = browser.jar[SESSION_COOKIE]
        assert h.store is not None
        self.assertEqual(len(h.store), 1)
        self.assertEqual(browser.navigate("/x").code, 200)
        page = browser.request(b"POST", "/oidc/logout", headers={b"origin": [b"https://app.test"]})
        self.assertEqual(page.code, 303)
        self.assertEqual(len(h.store), 0)
        replay = h.browser()
        replay.jar[SESSION_COOKIE] = copy
        page = replay.get("/x", headers=API)
        self.assertEqual(page.code, 401)
        self.assertSessionCleared(page)

    def test_memory_store_login_ends_old_session(self):
        """Logging in again ends the session the browser had (server-side)."""
        h = GuardStack(self, memory_store=True)
        browser = h.logged_in()
        old = browser.jar[SESSION_COOKIE]
        params = self.assertLoginRedirect(browser.navigate("/oidc/login"))
        code = h.idp.issue_code(nonce=params["nonce"], sub="user-2",
                                code_verifier_challenge=params["code_challenge"])
        page = browser.navigate("/oidc/callback?" + urlencode({"code": code, "state": params["state"]}))
        self.assertEqual(page.code, 302)
        self.assertNotEqual(browser.jar[SESSION_COOKIE], old)
        assert h.store is not None
        self.assertEqual(len(h.store), 1)
        replay = h.browser()
        replay.jar[SESSION_COOKIE] = old
        self.assertEqual(replay.get("/x", headers=API).code, 401)

    def test_store_down_at_callback_is_503(self):
        """
        A callback whose session cannot be stored (the store is unavailable)
        is a 503 naming the session store, without a session cookie; not a
        500. (Found by tests.integration.test_faults_redis.)
        """
        from twisted.internet.defer import fail

        from oidcproxy.sessions.session import SessionStoreUnavailable

        h = GuardStack(self, memory_store=True)
        assert h.store is not None
        h.store.save = lambda session: fail(  # type: ignore[method-assign]
            SessionStoreUnavailable("down"))
        browser = h.browser()
        page = h.login(browser)
        self.assertEqual(page.code, 503, page.body)
        self.assertIn(b"Sessions are temporarily unavailable", page.body)
        self.assertNoSessionCookie(page, browser)
        self.assertEqual(self.flushLoggedErrors(), [])


class UserinfoMergeTests(GuardTestCase):
    def test_userinfo_claims_merged(self):
        """With oidc.userinfo, userinfo claims are added; the ID token's win on conflicts."""
        h = GuardStack(self, make_config(oidc={"userinfo": True}))
        browser = h.browser()
        params = h.authorize(browser)
        code = h.idp.issue_code(
            nonce=params["nonce"], claims={"email": "id@example.test"},
            code_verifier_challenge=params["code_challenge"],
            userinfo_claims={"email": "userinfo@example.test", "groups": ["g1", "g2"]})
        page = browser.navigate("/oidc/callback?" + urlencode({"code": code, "state": params["state"]}))
        self.assertEqual(page.code, 302, page.body)
        browser.navigate("/x")
        self.assertEqual(h.app.header(b"x-forwarded-email"), [b"id@example.test"])
        self.assertEqual(h.app.header(b"x-forwarded-groups"), [b"g1,g2"])
        self.assertIn(b"/userinfo", h.idp.paths)

    def test_userinfo_other_subject(self):
        """A userinfo answer about another subject fails the login (401)."""
        h = GuardStack(self, make_config(oidc={"userinfo": True}))
        browser = h.browser()
        params = h.authorize(browser)
        code = h.idp.issue_code(nonce=params["nonce"], code_verifier_challenge=params["code_challenge"],
                                userinfo_claims={"sub": "someone-else"})
        page = browser.navigate("/oidc/callback?" + urlencode({"code": code, "state": params["state"]}))
        self.assertEqual(page.code, 401)
        self.assertNoSessionCookie(page, browser)

    def test_userinfo_without_a_string_sub(self):
        """
        A userinfo answer without a sub, or whose sub is not a non-empty
        string, is the same refused login as one about another subject: 401
        with the same login_failed page and the state cookie cleared (it was
        a 502 "unexpected answer"), the reason logged, no session.
        """
        from twisted.logger import globalLogPublisher

        events: List[Dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        h = GuardStack(self, make_config(oidc={"userinfo": True}))
        mismatch = h.browser()
        params = h.authorize(mismatch)
        code = h.idp.issue_code(nonce=params["nonce"], code_verifier_challenge=params["code_challenge"],
                                userinfo_claims={"sub": "someone-else"})
        expected = mismatch.navigate(
            "/oidc/callback?" + urlencode({"code": code, "state": params["state"]}))
        for sub in (None, 42, "", ["user-1"], {"id": "user-1"}, True):
            browser = h.browser()
            params = h.authorize(browser)
            code = h.idp.issue_code(nonce=params["nonce"],
                                    code_verifier_challenge=params["code_challenge"],
                                    userinfo_claims={"sub": sub})
            page = browser.navigate(
                "/oidc/callback?" + urlencode({"code": code, "state": params["state"]}))
            self.assertEqual((page.code, page.body), (expected.code, expected.body), repr(sub))
            self.assertEqual(page.code, 401)
            self.assertNoSessionCookie(page, browser)
            self.assertEqual(state_cookies(browser), [], repr(sub))
        reasons = [e.get("reason") for e in events
                   if e.get("log_format", "").startswith("login failed: {reason}")]
        self.assertEqual(reasons, ["userinfo_sub_mismatch"] + ["userinfo_sub_missing"] * 6)
        self.assertEqual(self.flushLoggedErrors(), [])


class Leaf(RecordingUpstream):
    """A leaf of an embedding application's resource tree."""


class EmbeddingTests(GuardTestCase):
    def test_app_cookies_and_reissued_session_both_sent(self):
        """The app's own cookies and the guard's re-issued session cookie both reach the browser."""
        h = GuardStack(self, make_config(session={"idle_timeout": "10m"}))
        browser = h.logged_in()
        h.app.action = lambda request: request.addCookie(b"app", b"1", path=b"/")
        h.clock.advance(120)
        page = browser.navigate("/x")
        self.assertEqual(page.code, 200)
        self.assertEqual(sorted(c.name for c in page.set_cookies), sorted(["app", SESSION_COOKIE]))

    def test_traversal_follows_the_checked_path(self):
        """
        The embedded application's resource tree is walked along the path the
        guard authorised: C{/admin/../public/x} is authorised as the public
        C{/public/x}, so it must not render the protected C{/admin} resource
        for a client without a session.
        """
        root = Resource()
        public, admin = Leaf(), Leaf()
        root.putChild(b"public", public)
        root.putChild(b"admin", admin)
        h = GuardStack(self, wrapped=root)
        targets = ["/admin/../public/x", "/admin/%2e%2e/public/x", "/admin/./../public/x"]
        for target in targets:
            h.browser().get(target, headers=API)
        self.assertEqual([r["uri"] for r in admin.requests], [],
                         "unauthenticated requests reached the protected /admin resource")
        self.assertEqual(len(public.requests), len(targets))

    def test_embedded_tree_protected_path(self):
        """Without dot segments the tree is guarded as configured: /admin needs a session."""
        root = Resource()
        public, admin = Leaf(), Leaf()
        root.putChild(b"public", public)
        root.putChild(b"admin", admin)
        h = GuardStack(self, wrapped=root)
        self.assertEqual(h.browser().get("/admin/x", headers=API).code, 401)
        self.assertEqual(h.browser().get("/public/x", headers=API).code, 200)
        browser = h.logged_in()
        self.assertEqual(browser.get("/admin/x", headers=API).code, 200)
        self.assertEqual(len(admin.requests), 1)
        self.assertEqual(len(public.requests), 1)
