"""
Tests for the CSRF protection of the application (C{[csrf]}): the token
(L{oidcproxy.web.csrf}) and what the guard does with it, for each auth mode and
at the forward-auth endpoint.
"""

from __future__ import annotations

from typing import Any, Dict, List

from twisted.trial.unittest import SynchronousTestCase

from oidcproxy.sessions.cookies import CookieSpec
from oidcproxy.web.csrf import CSRFProtection

from .fakes import API, APP, SESSION_COOKIE, GuardStack, make_config
from .idp import Browser
from .test_guard_authz import access_token, bearer
from .test_parity_options import callback, problems

CSRF_COOKIE = "__Host-oidcproxy_csrf"
SESSION_ID = "s" * 43

ROUTES = [
    {"path": "/", "upstream": "http://up.test", "auth": "session"},
    {"path": "/mixed", "upstream": "http://up.test", "auth": "session_or_bearer"},
    {"path": "/maybe", "upstream": "http://up.test", "auth": "optional"},
    {"path": "/public", "upstream": "http://up.test", "auth": "none"},
]


def protection(*secrets: bytes) -> CSRFProtection:
    return CSRFProtection(list(secrets or (b"k" * 32,)), CookieSpec(name="oidcproxy_csrf",
                                                                    http_only=False),
                          "X-CSRF-Token")


class TokenTests(SynchronousTestCase):
    def test_valid_for_its_session(self):
        """A token is valid for the session it was made for."""
        p = protection()
        self.assertTrue(p.valid(p.token(SESSION_ID), SESSION_ID))

    def test_other_session_refused(self):
        """A token of another session is refused."""
        p = protection()
        self.assertFalse(p.valid(p.token("t" * 43), SESSION_ID))

    def test_forged_refused(self):
        """A token made with another key, or altered, is refused."""
        p = protection()
        self.assertFalse(p.valid(protection(b"o" * 32).token(SESSION_ID), SESSION_ID))
        token = p.token(SESSION_ID)
        nonce, mac = token.split(".")
        flipped = ("A" if mac[0] != "A" else "B") + mac[1:]
        self.assertFalse(p.valid(nonce + "." + flipped, SESSION_ID))
        for bad in ("", ".", "x", token + ".x", "a" * 200, nonce + "." + mac + "=", None):
            self.assertFalse(p.valid(bad, SESSION_ID), bad)

    def test_fresh_each_time(self):
        """Each token has its own random part."""
        p = protection()
        self.assertNotEqual(p.token(SESSION_ID), p.token(SESSION_ID))

    def test_rotation(self):
        """The first secret signs, every one verifies."""
        old, new = b"o" * 32, b"n" * 32
        token = protection(old).token(SESSION_ID)
        self.assertTrue(protection(new, old).valid(token, SESSION_ID))
        self.assertFalse(protection(new).valid(token, SESSION_ID))

    def test_refusal_reasons(self):
        """Why a request is refused: no header, two, no cookie, differing, invalid."""
        p = protection()
        token = p.token(SESSION_ID)
        name = CSRF_COOKIE.encode()
        cookies = {name: token.encode()}
        self.assertIsNone(p.refusal(cookies, [token.encode()], SESSION_ID))
        self.assertEqual(p.refusal(cookies, None, SESSION_ID), "missing_header")
        self.assertEqual(p.refusal(cookies, [token.encode()] * 2, SESSION_ID), "repeated_header")
        self.assertEqual(p.refusal({}, [token.encode()], SESSION_ID), "missing_cookie")
        self.assertEqual(p.refusal(cookies, [p.token(SESSION_ID).encode()], SESSION_ID),
                         "token_mismatch")
        other = p.token("t" * 43).encode()
        self.assertEqual(p.refusal({name: other}, [other], SESSION_ID), "invalid_token")


def harness(case: SynchronousTestCase, csrf: Any = None, **config: Any) -> GuardStack:
    config.setdefault("routes", ROUTES)
    return GuardStack(case, make_config(csrf=csrf if csrf is not None else {}, **config))


def with_token(browser: Browser, name: bytes = b"x-csrf-token", **extra: Any) -> Dict[bytes, Any]:
    headers: Dict[bytes, Any] = {name: [browser.jar[CSRF_COOKIE].encode()]}
    headers.update(API)
    headers.update(extra)
    return headers


class GuardTests(SynchronousTestCase):
    def logged_in(self, h: GuardStack) -> Browser:
        browser = h.logged_in()
        page = browser.get("/", headers=API)
        self.assertEqual(page.code, 200)
        self.assertIn(CSRF_COOKIE, browser.jar)
        return browser

    def test_safe_request_gets_the_cookie(self):
        """A GET of a session gets the token cookie: readable by scripts, bound to the session."""
        h = harness(self)
        browser = h.logged_in()
        page = browser.get("/page", headers=API)
        cookie = page.cookie(CSRF_COOKIE)
        self.assertIsNotNone(cookie)
        self.assertFalse(cookie.has("HttpOnly"))
        self.assertTrue(cookie.has("Secure"))
        self.assertEqual(cookie.attributes["samesite"], "Lax")
        # Only once: the next GET already carries a good one.
        self.assertIsNone(browser.get("/page", headers=API).cookie(CSRF_COOKIE))

    def test_unsafe_without_header_refused(self):
        """POST, PUT, PATCH and DELETE without the header get 403 and never reach the app."""
        h = harness(self)
        browser = self.logged_in(h)
        before = len(h.app.requests)
        for method in (b"POST", b"PUT", b"PATCH", b"DELETE", b"PROPFIND"):
            page = browser.request(method, "/x", headers=API)
            self.assertEqual(page.code, 403, method)
            self.assertEqual(page.json()["error"], "csrf_token_invalid")
            self.assertIn("X-CSRF-Token", page.json()["message"])
        self.assertEqual(len(h.app.requests), before)

    def test_html_error_names_the_header(self):
        """A browser gets an HTML page naming the header."""
        h = harness(self)
        browser = self.logged_in(h)
        page = browser.request(b"POST", "/x", headers={b"accept": [b"text/html"]})
        self.assertEqual(page.code, 403)
        self.assertIn(b"text/html", page.header(b"content-type"))
        self.assertIn(b"X-CSRF-Token", page.body)

    def test_unsafe_with_header_passes(self):
        """With the cookie's token in the header the request goes through."""
        h = harness(self)
        browser = self.logged_in(h)
        for method in (b"POST", b"PUT", b"PATCH", b"DELETE"):
            self.assertEqual(browser.request(method, "/x", headers=with_token(browser)).code,
                             200, method)
        self.assertEqual(h.app.requests[-1]["method"], b"DELETE")

    def test_header_forwarded_cookie_stripped(self):
        """The app sees the header (it may want it), not the proxy's cookie."""
        h = harness(self)
        browser = self.logged_in(h)
        token = browser.jar[CSRF_COOKIE].encode()
        browser.request(b"POST", "/x", headers=with_token(browser))
        self.assertEqual(h.app.header(b"x-csrf-token"), [token])
        self.assertFalse(any(b"oidcproxy_csrf" in v for v in h.app.header(b"cookie")))

    def test_safe_methods_pass(self):
        """GET, HEAD, OPTIONS and TRACE need no token."""
        h = harness(self)
        browser = self.logged_in(h)
        for method in (b"GET", b"HEAD", b"OPTIONS", b"TRACE"):
            self.assertEqual(browser.request(method, "/x", headers=API).code, 200, method)

    def test_mismatch_refused(self):
        """A header that is not the cookie's token is refused, even a valid token."""
        h = harness(self)
        browser = self.logged_in(h)
        other = h.guard._state.cookies.csrf.token("another-session")
        page = browser.request(b"POST", "/x", headers={b"x-csrf-token": [other.encode()],
                                                       **API})
        self.assertEqual(page.code, 403)

    def test_token_of_another_session_refused_and_replaced(self):
        """A cookie and header from another session (a new login) are refused; a GET renews."""
        h = harness(self)
        browser = self.logged_in(h)
        old = browser.jar[CSRF_COOKIE]
        # A new login: a new session, the old token stays in the jar.
        page = browser.navigate("/oidc/login")
        params = {k: v[0] for k, v in page.location_query().items()}
        self.assertEqual(callback(h, browser, params).code, 302)
        self.assertEqual(browser.jar[CSRF_COOKIE], old)
        refused = browser.request(b"POST", "/x", headers=with_token(browser))
        self.assertEqual(refused.code, 403)
        self.assertNotEqual(refused.cookie(CSRF_COOKIE).value, old)
        self.assertEqual(browser.request(b"POST", "/x", headers=with_token(browser)).code, 200)

    def test_safe_request_renews_a_token_of_another_session(self):
        """After a new login, the first GET replaces the old session's token."""
        h = harness(self)
        browser = self.logged_in(h)
        old = browser.jar[CSRF_COOKIE]
        page = browser.navigate("/oidc/login")
        params = {k: v[0] for k, v in page.location_query().items()}
        self.assertEqual(callback(h, browser, params).code, 302)
        page = browser.get("/", headers=API)
        self.assertNotEqual(page.cookie(CSRF_COOKIE).value, old)
        self.assertEqual(browser.request(b"POST", "/x", headers=with_token(browser)).code, 200)

    def test_forged_cookie_and_header_refused(self):
        """A planted cookie and matching header not signed with our secrets are refused."""
        h = harness(self)
        browser = self.logged_in(h)
        forged = protection(b"z" * 32).token("anything")
        browser.jar[CSRF_COOKIE] = forged
        page = browser.request(b"POST", "/x", headers={b"x-csrf-token": [forged.encode()], **API})
        self.assertEqual(page.code, 403)

    def test_refusal_hands_out_a_good_cookie(self):
        """A refused request without a good cookie gets one, so the page can retry."""
        h = harness(self)
        browser = h.logged_in()
        browser.jar.pop(CSRF_COOKIE, None)
        page = browser.request(b"POST", "/x", headers=API)
        self.assertEqual(page.code, 403)
        self.assertIsNotNone(page.cookie(CSRF_COOKIE))
        self.assertEqual(browser.request(b"POST", "/x", headers=with_token(browser)).code, 200)

    def test_bearer_exempt(self):
        """A bearer-authenticated request needs no token (session_or_bearer)."""
        h = harness(self)
        page = h.browser().request(b"POST", "/mixed/x", headers=bearer(access_token(h)))
        self.assertEqual(page.code, 200)

    def test_session_on_session_or_bearer_checked(self):
        """session_or_bearer used with the session: checked."""
        h = harness(self)
        browser = self.logged_in(h)
        self.assertEqual(browser.request(b"POST", "/mixed/x", headers=API).code, 403)
        self.assertEqual(browser.request(b"POST", "/mixed/x", headers=with_token(browser)).code,
                         200)

    def test_optional(self):
        """optional: checked with a session, not without one."""
        h = harness(self)
        self.assertEqual(h.browser().request(b"POST", "/maybe/x", headers=API).code, 200)
        browser = self.logged_in(h)
        self.assertEqual(browser.request(b"POST", "/maybe/x", headers=API).code, 403)

    def test_public_route_unchecked(self):
        """auth = "none": nothing to protect, nothing checked."""
        h = harness(self)
        browser = self.logged_in(h)
        self.assertEqual(browser.request(b"POST", "/public/x", headers=API).code, 200)

    def test_off_without_the_table(self):
        """Without [csrf] nothing is checked and no cookie is set (the control case)."""
        h = GuardStack(self, make_config(routes=ROUTES))
        browser = h.logged_in()
        page = browser.request(b"POST", "/x", headers=API)
        self.assertEqual(page.code, 200)
        self.assertNotIn(CSRF_COOKIE, browser.jar)

    def test_configured_names(self):
        """header_name, cookie_name and secure are honoured."""
        h = harness(self, csrf={"header_name": "X-XSRF", "cookie_name": "xsrf",
                                "secure": False})
        browser = h.logged_in()
        page = browser.get("/", headers=API)
        cookie = page.cookie("xsrf")
        self.assertIsNotNone(cookie, [c.name for c in page.set_cookies])
        self.assertFalse(cookie.has("Secure"))
        headers = {b"x-xsrf": [browser.jar["xsrf"].encode()], **API}
        self.assertEqual(browser.request(b"POST", "/x", headers=headers).code, 200)
        refused = browser.request(b"POST", "/x", headers={
            b"x-csrf-token": [browser.jar["xsrf"].encode()], **API})
        self.assertEqual(refused.code, 403)
        self.assertIn("X-XSRF", refused.json()["message"])

    def test_logout_clears_it(self):
        """Logging out deletes the token cookie with the session cookie."""
        h = harness(self)
        browser = self.logged_in(h)
        page = browser.request(b"POST", "/oidc/logout", headers={b"origin": [APP.encode()]})
        self.assertEqual(page.code, 303)
        self.assertNotIn(CSRF_COOKIE, browser.jar)
        self.assertNotIn(SESSION_COOKIE, browser.jar)

    def test_config(self):
        """[csrf] defaults; it needs [oidc]; names are checked."""
        config = make_config(csrf={})
        self.assertEqual((config.csrf.header_name, config.csrf.cookie_name, config.csrf.secure),
                         ("X-CSRF-Token", "oidcproxy_csrf", None))
        self.assertIsNone(make_config().csrf)
        self.assertEqual(problems(csrf={"header_name": "bad header"}),
                         ["csrf.header_name: 'bad header' is not a valid header name"])
        self.assertEqual(problems(csrf={"cookie": "x"}),
                         ["csrf.cookie: unknown key; did you mean 'cookie_name'?"])

    def test_needs_oidc(self):
        """[csrf] without [oidc] is refused."""
        from oidcproxy.config import ConfigError, parse_config

        e = self.assertRaises(ConfigError, parse_config, {
            "csrf": {}, "routes": [{"path": "/", "upstream": "http://up.test", "auth": "none"}]},
            "t.toml")
        self.assertEqual(e.problems,
                         ["csrf: protects session logins, which need an [oidc] table"])

    def test_reload_turns_it_on(self):
        """A reload that adds [csrf] applies it (no restart needed)."""
        h = GuardStack(self, make_config(routes=ROUTES))
        browser = h.logged_in()
        new = make_config(routes=ROUTES, csrf={})
        h.guard.reconfigure(new, h.guard.routes, h.app)
        self.assertEqual(browser.request(b"POST", "/x", headers=API).code, 403)


class ForwardAuthTests(SynchronousTestCase):
    def fa(self, browser: Browser, method: bytes, extra: Dict[bytes, List[bytes]] = None) -> Any:
        headers = {b"x-forwarded-method": [method], b"x-forwarded-host": [b"app.test"],
                   b"x-forwarded-uri": [b"/x"], **API}
        headers.update(extra or {})
        return browser.get("/oidc/auth", headers=headers)

    def test_original_method_checked(self):
        """/oidc/auth judges the original method: POST without the header is 403."""
        h = harness(self, trusted_proxies=["127.0.0.1"])
        browser = h.logged_in()
        page = self.fa(browser, b"GET")
        self.assertEqual(page.code, 200)
        self.assertIsNotNone(page.cookie(CSRF_COOKIE))
        self.assertEqual(self.fa(browser, b"POST").code, 403)
        token = [browser.jar[CSRF_COOKIE].encode()]
        self.assertEqual(self.fa(browser, b"POST", {b"x-csrf-token": token}).code, 200)
