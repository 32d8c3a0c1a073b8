"""
Adversarial suite, class 4: login and callback.

Callbacks with the state missing, empty, wrong, foreign (another browser's),
replayed, expired, malformed, or with duplicated parameters; C{?error=}
with markup; login CSRF (a victim opening an attacker's callback URL);
session fixation (every kind of planted session cookie is replaced); clients
trying to inject or override authorization-request parameters; background
requests that must not mint state cookies. No case may log anyone in, and
every one gets its fixed status.
"""

from __future__ import annotations

from typing import Dict, List, Tuple
from urllib.parse import urlencode

from twisted.trial.unittest import SynchronousTestCase

from .adversarial import MARKUP, Failures, reflected_markup
from .fakes import SESSION_COOKIE, STATE_PREFIX, ProxyStack, open_session
from .idp import AUTHORIZATION_ENDPOINT, Browser, Page, authorize_params, split_location

EXPECTED_PARAMS = {"response_type", "client_id", "redirect_uri", "scope", "state", "nonce",
                   "code_challenge", "code_challenge_method"}


def no_session(page: Page) -> bool:
    return not any(c.name.startswith(SESSION_COOKIE) and not c.name.startswith(STATE_PREFIX)
                   and not c.deletes for c in page.set_cookies)


class CallbackTests(SynchronousTestCase):
    def start(self, stack: ProxyStack, browser: Browser) -> Tuple[Dict[str, str], str]:
        params = authorize_params(browser.navigate("/x"))
        code = stack.idp.issue_code(nonce=params["nonce"],
                                    code_verifier_challenge=params["code_challenge"])
        return params, code

    def test_bad_callbacks(self):
        """Every malformed or mismatched callback gets its fixed status, and no session."""
        stack = ProxyStack(self)
        failures = Failures(self, "bad callbacks")

        def other_first(state: str) -> str:
            return ("y" if state[0] == "x" else "x") + state[1:]

        def cases(params: Dict[str, str], code: str) -> List[Tuple[str, str, int]]:
            state = params["state"]
            return [
                ("no state", urlencode({"code": code}), 400),
                ("empty state", urlencode({"code": code, "state": ""}), 400),
                ("wrong state", urlencode({"code": code, "state": other_first(state)}), 401),
                ("state too long", urlencode({"code": code, "state": state * 10}), 401),
                ("state with markup", urlencode({"code": code, "state": "<b>"}), 401),
                ("state with a slash", urlencode({"code": code, "state": state + "/"}), 401),
                ("no code", urlencode({"state": state}), 401),
                ("empty code", urlencode({"state": state, "code": ""}), 401),
                ("unknown code", urlencode({"state": state, "code": "code-forged"}), 401),
                ("state twice", f"code={code}&state={state}&state={state}", 400),
                ("code twice", f"code={code}&code={code}&state={state}", 400),
                ("error twice", f"state={state}&error=a&error=b", 400),
                ("iss twice", f"state={state}&code={code}&iss=a&iss=b", 400),
                ("wrong iss", urlencode({"state": state, "code": code, "iss": "https://evil.test"}),
                 401),
                ("error", urlencode({"state": state, "error": "access_denied"}), 403),
                ("error without state", urlencode({"error": "login_required"}), 403),
                ("non-UTF-8 state", f"code={code}&state=%ff%fe", 400),
            ]

        browser = stack.browser()
        for index in range(17):
            browser.jar.clear()
            params, code = self.start(stack, browser)
            label, query, status = cases(params, code)[index]
            page = browser.navigate("/oidc/callback?" + query)
            failures.check(page.code == status and no_session(page), label, query,
                           f"{page.code}, session cookie set: {not no_session(page)}")
            self.assertEqual([r for r in stack.upstream.requests], [])
        failures.done(17)

    def test_unknown_code_is_401(self):
        """A code the IdP does not know (invalid_grant) is a failed login (401), never 500."""
        stack = ProxyStack(self)
        browser = stack.browser()
        params, _ = self.start(stack, browser)
        page = browser.navigate("/oidc/callback?" + urlencode({"state": params["state"],
                                                               "code": "nope"}))
        self.assertEqual(page.code, 401)

    def test_replayed_and_expired(self):
        """A used callback URL cannot log in again; neither can one older than the state's max age."""
        stack = ProxyStack(self)
        browser = stack.browser()
        params, code = self.start(stack, browser)
        url = "/oidc/callback?" + urlencode({"code": code, "state": params["state"]})
        cookies = dict(browser.jar)
        self.assertEqual(browser.navigate(url).code, 302)
        # The same URL again, even with the state cookie put back.
        replay = stack.browser()
        replay.jar.update({k: v for k, v in cookies.items() if k.startswith(STATE_PREFIX)})
        page = replay.navigate(url)
        self.assertEqual(page.code, 401)
        self.assertTrue(no_session(page))
        late = stack.browser()
        params, code = self.start(stack, late)
        stack.clock.advance(stack.config.state_cookie.max_age + 1)
        page = late.navigate("/oidc/callback?" + urlencode({"code": code, "state": params["state"]}))
        self.assertEqual(page.code, 401)
        self.assertTrue(no_session(page))

    def test_error_markup_escaped(self):
        """?error= and error_description with markup: 403 page, the markup never reflected."""
        stack = ProxyStack(self)
        browser = stack.browser()
        failures = Failures(self, "error markup")
        for markup in MARKUP:
            for query in (urlencode({"error": markup}),
                          urlencode({"error": "access_denied", "error_description": markup}),
                          urlencode({"error": markup, "state": markup})):
                page = browser.navigate("/oidc/callback?" + query)
                failures.check(page.code == 403 and not reflected_markup(page.body), "error", query,
                               f"{page.code} {page.body[:200]!r}")
        failures.done(len(MARKUP) * 3)

    def test_login_csrf(self):
        """
        A victim opening the callback URL of the attacker's own login (the
        attacker's state and code) is not logged in as the attacker.
        """
        stack = ProxyStack(self)
        attacker = stack.browser()
        params, code = self.start(stack, attacker)
        url = "/oidc/callback?" + urlencode({"code": code, "state": params["state"]})
        for own_login in (False, True):
            victim = stack.browser()
            if own_login:
                # The victim has a login of their own in flight.
                self.start(stack, victim)
            page = victim.navigate(url)
            self.assertEqual(page.code, 401)
            self.assertTrue(no_session(page))
            self.assertNotIn(SESSION_COOKIE, victim.jar)


class FixationTests(SynchronousTestCase):
    def test_planted_session_cookies_replaced(self):
        """
        Whatever session cookie is planted before the login (garbage, the
        attacker's valid session, stray chunks, a value for another cookie),
        the login sets a fresh session of the victim.
        """
        stack = ProxyStack(self)
        attacker = stack.logged_in(sub="attacker")
        planted_value = attacker.jar[SESSION_COOKIE]
        plants: List[Tuple[str, Dict[str, str]]] = [
            ("garbage", {SESSION_COOKIE: "garbage"}),
            ("attacker's session", {SESSION_COOKIE: planted_value}),
            ("stray chunks", {SESSION_COOKIE: planted_value, SESSION_COOKIE + "_1": "x",
                              SESSION_COOKIE + "_7": "y"}),
            ("chunk only", {SESSION_COOKIE + "_1": planted_value}),
            ("without prefix", {"oidcproxy": planted_value}),
        ]
        for label, jar in plants:
            victim = stack.browser()
            victim.jar.update(jar)
            params = authorize_params(victim.navigate("/oidc/login?rd=/x"))
            code = stack.idp.issue_code(nonce=params["nonce"], sub="victim",
                                        code_verifier_challenge=params["code_challenge"])
            page = victim.navigate("/oidc/callback?" + urlencode(
                {"code": code, "state": params["state"]}))
            self.assertEqual(page.code, 302, label)
            value = victim.jar.get(SESSION_COOKIE)
            assert value is not None, label
            self.assertNotEqual(value, planted_value, label)
            self.assertEqual(open_session(value).sub, "victim", label)
            victim.get("/x", headers={b"accept": [b"application/json"]})
            self.assertEqual(stack.upstream.header(b"x-forwarded-user"), [b"victim"], label)


class AuthorizationRequestTests(SynchronousTestCase):
    INJECTED = {
        "scope": "openid admin offline_access", "redirect_uri": "https://evil.test/cb",
        "response_type": "token id_token", "client_id": "other-client", "state": "attacker",
        "nonce": "attacker", "code_challenge": "x", "code_challenge_method": "plain",
        "prompt": "none", "response_mode": "form_post", "request_uri": "https://evil.test/r",
        "request": "eyJhbGciOiJub25lIn0.e30.", "login_hint": "victim",
        "claims": '{"id_token":{"email":null}}',
    }
    ASKED = {"max_age": "0", "acr_values": "weak"}
    """Taken by the login endpoint (a step-up's button; the callback holds the login to them),
    never from a protected URL."""

    def test_injected_parameters_ignored(self):
        """
        A client adding authorization-request parameters to the login URL,
        to the protected URL, or as headers cannot change what goes to the IdP:
        exactly the proxy's own parameters, each once.
        """
        stack = ProxyStack(self)
        failures = Failures(self, "authorization request")
        browser = stack.browser()
        targets = [(name, value, target) for name, value in self.INJECTED.items()
                   for target in ("/oidc/login?" + urlencode({name: value, "rd": "/x"}),
                                  "/x?" + urlencode({name: value}),
                                  "/oidc/login?" + urlencode({name: value}) + "&"
                                  + urlencode({name: value}))]
        targets += [(name, value, "/x?" + urlencode({name: value}))
                    for name, value in self.ASKED.items()]
        for name, value, target in targets:
            browser.jar.clear()
            page = browser.navigate(target)
            base, _ = split_location(page)
            query = page.location_query()
            ok = (page.code == 302 and base == AUTHORIZATION_ENDPOINT
                  and set(query) == EXPECTED_PARAMS
                  and all(len(v) == 1 for v in query.values())
                  and query["client_id"] == ["app-client"]
                  and query["redirect_uri"] == ["https://app.test/oidc/callback"]
                  and query["response_type"] == ["code"]
                  and query["scope"] == ["openid email profile"]
                  and query["code_challenge_method"] == ["S256"]
                  and value not in (query["state"][0], query["nonce"][0],
                                    query["code_challenge"][0]))
            failures.check(ok, name, target, f"{page.code} {page.location!r}")
        failures.done(len(targets))


class BackgroundRequestTests(SynchronousTestCase):
    BACKGROUND: List[Tuple[str, bytes, Dict[bytes, List[bytes]]]] = [
        ("xhr", b"GET", {b"x-requested-with": [b"XMLHttpRequest"], b"accept": [b"text/html"]}),
        ("fetch cors", b"GET", {b"sec-fetch-mode": [b"cors"], b"accept": [b"text/html"]}),
        ("fetch no-cors", b"GET", {b"sec-fetch-mode": [b"no-cors"], b"accept": [b"*/*"]}),
        ("image", b"GET", {b"sec-fetch-dest": [b"image"], b"sec-fetch-mode": [b"no-cors"],
                           b"accept": [b"image/avif,image/webp,*/*"]}),
        ("script", b"GET", {b"sec-fetch-dest": [b"script"], b"accept": [b"*/*"]}),
        ("image, old browser", b"GET", {b"accept": [b"image/png,image/*;q=0.8,*/*;q=0.5"]}),
        ("json", b"GET", {b"accept": [b"application/json"]}),
        ("no accept", b"GET", {}),
        ("POST form", b"POST", {b"accept": [b"text/html"], b"sec-fetch-mode": [b"navigate"]}),
        ("PUT", b"PUT", {b"accept": [b"text/html"]}),
        ("DELETE", b"DELETE", {b"accept": [b"text/html"]}),
        ("websocket", b"GET", {b"upgrade": [b"websocket"], b"connection": [b"Upgrade"],
                               b"accept": [b"text/html"]}),
        ("websocket mixed case", b"GET", {b"upgrade": [b"WebSocket"], b"connection": [b"upgrade"],
                                          b"accept": [b"text/html"], b"sec-fetch-mode":
                                          [b"navigate"]}),
        ("prefetch", b"GET", {b"sec-fetch-mode": [b"no-cors"], b"sec-purpose": [b"prefetch"],
                              b"accept": [b"text/html"]}),
        ("iframe-ish cors", b"GET", {b"sec-fetch-mode": [b"same-origin"], b"accept": [b"text/html"]}),
    ]

    def test_background_requests_mint_no_state(self):
        """Requests that are not top-level navigations get 401 and no Set-Cookie at all."""
        stack = ProxyStack(self)
        failures = Failures(self, "background requests")
        browser = stack.browser()
        for _ in range(3):
            for label, method, headers in self.BACKGROUND:
                page = browser.request(method, "/x", headers=headers,
                                       body=b"" if method != b"GET" else None)
                failures.check(page.code == 401 and page.set_cookies == [], label, headers,
                               f"{page.code}, cookies {[c.name for c in page.set_cookies]}")
        failures.done(len(self.BACKGROUND) * 3)
        self.assertEqual(browser.jar, {})

    def test_state_cookie_flood_capped(self):
        """Fifty navigations in a row leave at most max_count state cookies in the browser."""
        stack = ProxyStack(self)
        browser = stack.browser()
        for _ in range(50):
            browser.navigate("/x")
        states = [n for n in browser.jar if n.startswith(STATE_PREFIX)]
        self.assertLessEqual(len(states), stack.config.state_cookie.max_count)
        self.assertGreater(len(states), 0)
