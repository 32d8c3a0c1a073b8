"""
Tests for L{oidcproxy.web.pages}: the pages people see (403, failed login,
unavailable, sign-out, signed out, sign-in), their headers, branding,
languages and replacement templates; and the C{[pages]} table.
"""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from twisted.trial.unittest import SynchronousTestCase

from oidcproxy.config import ConfigError
from oidcproxy.oidc.provider import ProviderError
from oidcproxy.web.pages import bounded_text
from oidcproxy.web.pages.templates import BUILT_IN, PAGES, TemplateProblem, load_templates
from oidcproxy.web.pages.texts import LANGUAGES, TEXTS, choose_language

from .fakes import API, GuardStack, make_config
from .idp import AUTHORIZATION_ENDPOINT
from .units import UnitRequest, state_of

ROUTES = [
    {"path": "/admin", "upstream": "http://up.test", "rule": "Contains(`groups`, `admins`)"},
    {"path": "/", "upstream": "http://up.test"},
]
BOB = {"preferred_username": "bob", "groups": ["staff"]}


def stack(case: SynchronousTestCase, **pages: Any) -> GuardStack:
    return GuardStack(case, config=make_config(routes=ROUTES, username_claim="preferred_username",
                                               pages=pages))


def csp(page: Any) -> str:
    return page.header(b"content-security-policy").decode()


class HeaderTests(SynchronousTestCase):
    def assertPageHeaders(self, page: Any) -> None:
        self.assertEqual(page.header(b"cache-control"), b"no-store")
        self.assertEqual(page.header(b"x-frame-options"), b"DENY")
        self.assertEqual(page.header(b"content-type"), b"text/html; charset=utf-8")
        policy = csp(page)
        for part in ("default-src 'none'", "frame-ancestors 'none'", "base-uri 'none'",
                     "form-action 'self'"):
            self.assertIn(part, policy)
        self.assertNotIn("unsafe-inline", policy)
        self.assertRegex(page.body, rb'<html lang="en">')
        # No inline script on any page.
        self.assertNotRegex(page.body, rb"<script(?![^>]*\bsrc=)")

    def test_forbidden(self):
        """The 403 page carries no-store, a strict CSP, X-Frame-Options and a lang."""
        h = stack(self)
        page = h.logged_in(sub="bob-sub", claims=BOB).navigate("/admin/x")
        self.assertEqual(page.code, 403)
        self.assertPageHeaders(page)
        self.assertIn("script-src 'none'", csp(page))

    def test_login_failed(self):
        """The failed-login page carries the same headers."""
        h = stack(self)
        page = h.browser().navigate("/oidc/callback?state=nope&code=x")
        self.assertEqual(page.code, 401)
        self.assertPageHeaders(page)

    def test_plain_error(self):
        """Any other error page (404) carries them too."""
        page = stack(self).browser().navigate("/oidc/nothing")
        self.assertEqual(page.code, 404)
        self.assertPageHeaders(page)

    def test_style_hash_matches(self):
        """The inline stylesheet is allowed by its hash, and by nothing looser."""
        import base64
        import hashlib

        page = stack(self, accent_color="#a1b2c3").browser().navigate("/oidc/nothing")
        css = re.search(rb"<style>(.*?)</style>", page.body, re.S).group(1)
        self.assertIn(b"--accent: #a1b2c3", css)
        digest = base64.b64encode(hashlib.sha256(css).digest()).decode()
        self.assertIn(f"style-src 'self' 'sha256-{digest}'", csp(page))


class ForbiddenTests(SynchronousTestCase):
    def test_names_user_route_and_ways_on(self):
        """The 403 names the user (username_claim) and the route, with sign out, switch, back."""
        h = stack(self)
        page = h.logged_in(sub="bob-sub", claims=BOB).navigate("/admin/x?y=1")
        self.assertIn(b"You are signed in as <strong>bob</strong>.", page.body)
        self.assertIn(b"<code>/admin</code>", page.body)
        self.assertIn(b'<form method="post" action="/oidc/logout">', page.body)
        switch = re.search(rb'<a href="([^"]*)" class="button">Sign in as someone else</a>',
                           page.body)
        query = parse_qs(urlsplit(switch.group(1).decode().replace("&amp;", "&")).query)
        self.assertEqual(query, {"rd": ["/admin/x?y=1"], "prompt": ["login"]})
        self.assertIn(b">Back</a>", page.body)

    def test_switch_account_starts_a_login_with_prompt(self):
        """The switch link starts a fresh login carrying the configured prompt."""
        h = stack(self, switch_account_prompt="select_account")
        browser = h.logged_in(sub="bob-sub", claims=BOB)
        page = browser.navigate("/oidc/login?" + urlencode(
            {"rd": "/admin/x", "prompt": "select_account"}))
        self.assertEqual(page.code, 302)
        self.assertTrue(page.location.startswith(AUTHORIZATION_ENDPOINT))
        self.assertEqual(parse_qs(urlsplit(page.location).query)["prompt"], ["select_account"])

    def test_other_prompts_ignored(self):
        """A prompt other than login or select_account is not passed on."""
        page = stack(self).browser().navigate("/oidc/login?prompt=none")
        self.assertNotIn("prompt", parse_qs(urlsplit(page.location).query))

    def test_hostile_claim_escaped(self):
        """A claim value with markup is shown escaped and bounded."""
        h = stack(self)
        evil = {"preferred_username": "<img src=x onerror=alert(1)>" + "x" * 500,
                "groups": []}
        page = h.logged_in(sub="e", claims=evil).navigate("/admin/x")
        self.assertNotIn(b"<img src=x", page.body)
        self.assertIn(b"&lt;img src=x onerror=alert(1)&gt;", page.body)
        self.assertLess(len(page.body), 8000)

    def test_api_client_gets_json(self):
        """An API client still gets the JSON error."""
        page = stack(self).logged_in(sub="bob-sub", claims=BOB).get("/admin/x", headers=API)
        self.assertEqual((page.code, page.json()["error"]), (403, "forbidden"))

    def test_back_is_a_same_origin_referer(self):
        """Back leads to the page the browser came from when it is on this site, else /."""
        browser = stack(self).logged_in(sub="bob-sub", claims=BOB)
        page = browser.navigate("/admin/x", headers={b"referer": [b"https://app.test/home?a=1"]})
        self.assertIn(b'<a href="/home?a=1" class="button secondary">Back</a>', page.body)
        page = browser.navigate("/admin/x", headers={b"referer": [b"https://evil.test/x"]})
        self.assertIn(b'<a href="/" class="button secondary">Back</a>', page.body)


class LoginFailedTests(SynchronousTestCase):
    def start(self, h: GuardStack, path: str = "/wanted?q=1") -> Any:
        browser = h.browser()
        return browser, h.authorize(browser, path)

    def test_cancel_offers_try_again_to_the_original_url(self):
        """access_denied: the reason in words and Try again, a login back to the original URL."""
        h = stack(self)
        browser, params = self.start(h)
        page = browser.navigate("/oidc/callback?" + urlencode(
            {"state": params["state"], "error": "access_denied"}))
        self.assertEqual(page.code, 403)
        self.assertIn(b"cancelled or refused", page.body)
        self.assertIn(b'<a href="/oidc/login?rd=%2Fwanted%3Fq%3D1" class="button">Try again</a>',
                      page.body)

    def test_plain_error_description_shown(self):
        """A plain-words error_description is shown, bounded."""
        h = stack(self)
        browser, params = self.start(h)
        page = browser.navigate("/oidc/callback?" + urlencode(
            {"state": params["state"], "error": "access_denied",
             "error_description": "User cancelled the login. " * 40}))
        self.assertIn(b"The identity provider said:", page.body)
        self.assertIn(b"User cancelled the login. User", page.body)
        self.assertEqual(len(bounded_text("User cancelled the login. " * 40)), 300)

    def test_markup_error_description_shown_escaped(self):
        """An error_description with markup is shown as text: escaped, never markup."""
        h = stack(self)
        browser, params = self.start(h)
        page = browser.navigate("/oidc/callback?" + urlencode(
            {"state": params["state"], "error": "access_denied",
             "error_description": "<script>alert(1)</script>"}))
        self.assertIn(b"The identity provider said", page.body)
        self.assertIn(b"&lt;script&gt;alert(1)&lt;/script&gt;", page.body)
        self.assertNotIn(b"<script>", page.body)

    def test_error_description_of_someone_elses_link_not_shown(self):
        """
        A callback link with an error_description but no login of this
        browser behind it (no state, another browser's, an expired one):
        the text is not shown (anyone can make such a link).
        """
        h = stack(self)
        _, params = self.start(h)
        text = "Your account is locked: call 555-0100"
        for query in ({"error": "access_denied", "error_description": text},
                      {"state": params["state"], "error": "access_denied",
                       "error_description": text}):
            page = h.browser().navigate("/oidc/callback?" + urlencode(query))
            self.assertEqual(page.code, 403)
            self.assertIn(b"cancelled or refused", page.body)
            self.assertNotIn(b"555-0100", page.body)
            self.assertNotIn(b"The identity provider said", page.body)

    def test_unknown_state(self):
        """An unknown or expired state: said so, Try again to /."""
        page = stack(self).browser().navigate("/oidc/callback?state=gone&code=x")
        self.assertIn(b"unknown or has expired", page.body)
        self.assertIn(b'href="/oidc/login?rd=%2F"', page.body)

    def test_idp_down_at_callback_retries_the_login(self):
        """The IdP unreachable at the token exchange: a page that starts the login again by itself."""
        h = stack(self)
        browser, params = self.start(h)

        async def down(*args: Any, **kwargs: Any) -> Any:
            raise ProviderError(502, "unreachable", "connection refused")

        state_of(h).parts.provider.exchange_code = down
        page = browser.navigate("/oidc/callback?" + urlencode(
            {"state": params["state"], "code": "c"}))
        self.assertEqual(page.code, 502)
        self.assertEqual(page.header(b"retry-after"), b"5")
        self.assertIn(b'<meta http-equiv="refresh" content="5; url=/oidc/login?rd=%2Fwanted%3Fq%3D1"',
                      page.body)
        self.assertIn(b"cannot be reached at the moment", page.body)

    def test_json_unchanged(self):
        """API clients get the same JSON codes as before."""
        page = stack(self).browser().get("/oidc/callback?error=access_denied", headers=API)
        self.assertEqual((page.code, page.json()["error"]), (403, "login_refused"))


class UnavailableTests(SynchronousTestCase):
    def test_retries_by_itself(self):
        """503: Retry-After, and a page that reloads itself after that time (no script)."""
        h = GuardStack(self, config=make_config(routes=ROUTES), discovery_status=500)
        page = h.browser().navigate("/x")
        self.assertEqual(page.code, 503)
        self.assertEqual(page.header(b"retry-after"), b"5")
        self.assertIn(b'<meta http-equiv="refresh" content="5" />', page.body)
        self.assertIn(b"tries again by itself in 5 seconds", page.body)


class LogoutPageTests(SynchronousTestCase):
    def test_confirmation_names_the_account(self):
        """The confirmation names the account and posts to the logout endpoint, no script."""
        h = stack(self)
        page = h.logged_in(sub="bob-sub", claims=BOB).navigate("/oidc/logout")
        self.assertIn(b"You are signed in as <strong>bob</strong>.", page.body)
        self.assertIn(b'<form method="post" action="/oidc/logout" id="logout-form">', page.body)
        self.assertNotIn(b"<script", page.body)
        self.assertIn("script-src 'none'", csp(page))

    def test_no_confirm_posts_itself(self):
        """logout_confirm = false: the form posts itself by a script file allowed by a nonce."""
        h = stack(self, logout_confirm=False)
        page = h.logged_in(sub="bob-sub", claims=BOB).navigate("/oidc/logout")
        m = re.search(rb'<script src="/oidc/pages/submit.js" nonce="([^"]+)"></script>', page.body)
        self.assertIsNotNone(m)
        self.assertIn(f"script-src 'nonce-{m.group(1).decode()}'", csp(page))
        script = h.browser().get("/oidc/pages/submit.js")
        self.assertEqual(script.code, 200)
        self.assertEqual(script.header(b"content-type"), b"text/javascript; charset=utf-8")
        self.assertIn(b'getElementById("logout-form")', script.body)
        again = h.logged_in(sub="bob-sub", claims=BOB).navigate("/oidc/logout")
        self.assertNotEqual(re.search(rb'nonce="([^"]+)"', again.body).group(1), m.group(1))

    def test_signed_out_page(self):
        """Without rd or post_logout_redirect_url the logout lands on the signed-out page."""
        h = stack(self)
        browser = h.logged_in(sub="bob-sub", claims=BOB)
        page = browser.request(b"POST", "/oidc/logout",
                               headers={b"origin": [b"https://app.test"]})
        self.assertEqual(page.code, 303)
        self.assertEqual(page.location, "https://app.test/oidc/logout?signed_out=1")
        page = browser.navigate("/oidc/logout?signed_out=1")
        self.assertEqual(page.code, 200)
        self.assertIn(b"You are signed out", page.body)
        self.assertIn(b'<a href="/oidc/login?rd=%2F" class="button">Sign in again</a>', page.body)


class SignInPageTests(SynchronousTestCase):
    def test_button_names_the_provider(self):
        """sign_in_page = true: a page with a button naming the provider, not a redirect."""
        h = stack(self, sign_in_page=True, provider_name="Example SSO")
        page = h.browser().navigate("/wanted")
        self.assertEqual(page.code, 401)
        self.assertIn(b'<a href="/oidc/login?rd=%2Fwanted" class="button">Sign in with Example '
                      b'SSO</a>', page.body)

    def test_off_by_default(self):
        """Without it the browser goes straight to the IdP."""
        self.assertEqual(stack(self).browser().navigate("/wanted").code, 302)


class BrandingTests(SynchronousTestCase):
    def test_organisation_logo_footer_support(self):
        """The [pages] branding is on every page."""
        h = stack(self, organisation="Example Ltd", logo_url="/static/logo.svg",
                  footer="IT desk", support_url="https://help.example.com/", title="Portal")
        page = h.browser().navigate("/oidc/nothing")
        self.assertIn(b'<img src="/static/logo.svg" alt="" />', page.body)
        self.assertIn(b'<span class="org">Example Ltd</span>', page.body)
        self.assertIn(b"<span>IT desk</span>", page.body)
        self.assertIn(b'<a href="https://help.example.com/">Help</a>', page.body)
        self.assertIn(b"<title>404 Not Found \xc2\xb7 Portal</title>", page.body)


class LanguageTests(SynchronousTestCase):
    def test_every_language_has_every_text(self):
        """Each language of the config's list has every key English has."""
        self.assertEqual(sorted(TEXTS), sorted(LANGUAGES))
        for lang in LANGUAGES:
            self.assertEqual(sorted(TEXTS[lang]), sorted(TEXTS["en"]), lang)

    def test_choose(self):
        """Accept-Language by q-value, then order; regions match their language."""
        cases = [(None, "en"), ("de-CH, en;q=0.5", "de"), ("fr, de;q=0.8, en;q=0.9", "en"),
                 ("fr", "en"), ("en;q=0, de", "de"), ("*", "en"), ("de;q=x, en", "en")]
        for header, expected in cases:
            self.assertEqual(choose_language(header), expected, header)

    def test_auto(self):
        """language = "auto": German for a German browser, with Vary: Accept-Language."""
        h = stack(self, language="auto")
        page = h.logged_in(sub="bob-sub", claims=BOB).navigate(
            "/admin", headers={b"accept-language": [b"de-DE,de;q=0.9"]})
        self.assertIn(b'<html lang="de">', page.body)
        self.assertIn(b"Sie sind als <strong>bob</strong> angemeldet.", page.body)
        self.assertEqual(page.header(b"vary"), b"Accept-Language")

    def test_fixed(self):
        """A fixed language ignores Accept-Language and sends no Vary."""
        page = stack(self, language="de").browser().navigate(
            "/oidc/nothing", headers={b"accept-language": [b"en"]})
        self.assertIn(b'<html lang="de">', page.body)
        self.assertIn(b"404 Nicht gefunden", page.body)
        self.assertIsNone(page.header(b"vary"))


class TemplatesDirTests(SynchronousTestCase):
    def write(self, name: str, text: str) -> str:
        folder = self.mktemp()
        os.makedirs(folder)
        with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
            f.write(text)
        return folder

    def builtin(self, page: str) -> str:
        with open(os.path.join(BUILT_IN, page + ".xhtml"), encoding="utf-8") as f:
            return f.read()

    def test_replaces_one_page(self):
        """A file of templates_dir replaces its page; the others stay built in."""
        folder = self.write("forbidden.xhtml", self.builtin("forbidden").replace(
            "<main>", '<main><p id="custom">Custom 403</p>'))
        h = stack(self, templates_dir=folder)
        page = h.logged_in(sub="bob-sub", claims=BOB).navigate("/admin")
        self.assertIn(b'<p id="custom">Custom 403</p>', page.body)
        self.assertNotIn(b"custom", h.browser().navigate("/oidc/nothing").body)

    def test_not_well_formed(self):
        """A file that is not well-formed XML is refused naming file, line and column."""
        folder = self.write("login_failed.xhtml", "<html>\n<p>\n</html>")
        e = self.assertRaises(TemplateProblem, load_templates, folder)
        self.assertIn("login_failed.xhtml: line 3, column 3: not well-formed XML", str(e))

    def test_missing_slot(self):
        """A file that lacks a slot its page must keep is refused naming the slot."""
        folder = self.write("forbidden.xhtml", self.builtin("forbidden").replace(
            '<t:slot name="sign_out"/>', ""))
        e = self.assertRaises(TemplateProblem, load_templates, folder)
        self.assertIn("forbidden.xhtml: the slot 'sign_out' is missing", str(e))

    def test_unknown_slot_and_renderer(self):
        """A slot the page does not fill, or another renderer, is refused with its line."""
        folder = self.write("error.xhtml", self.builtin("error").replace(
            "<main>", '<main><t:slot name="user"/><p t:render="evil"/>'))
        e = str(self.assertRaises(TemplateProblem, load_templates, folder))
        self.assertIn("line 12: the error page has no slot 'user'", e)
        self.assertIn("line 12: the renderer 'evil' does not exist", e)

    def test_builtin_templates_pass(self):
        """The built-in templates pass their own check."""
        self.assertEqual(sorted(load_templates(None)), sorted(PAGES))

    def test_check_refuses_a_bad_template(self):
        """--check (the service's build) fails with the template's problem."""
        from oidcproxy.tap import Options, check

        folder = self.write("forbidden.xhtml", "<html/>")
        config = os.path.join(self.mktemp())
        with open(config, "w") as f:
            f.write(f'public_url = "https://app.test"\n[oidc]\nissuer = "https://idp.test"\n'
                    f'client_id = "c"\nclient_secret = "s"\n'
                    f'[session]\nsecrets = ["{"ab" * 32}"]\n[pages]\ntemplates_dir = "{folder}"\n'
                    f'[[routes]]\npath = "/"\nupstream = "http://127.0.0.1:9"\n')
        import io

        from twisted.internet.testing import MemoryReactor

        options = Options()
        options.parseOptions(["--config", config, "--check"])
        out = io.StringIO()
        status = check(options, out, io.StringIO(), reactor=MemoryReactor())
        self.assertEqual(status, 1, out.getvalue())
        self.assertIn("forbidden.xhtml", out.getvalue())
        self.assertIn("the slot 'sign_out' is missing", out.getvalue())


class ConfigTests(SynchronousTestCase):
    def problems(self, **pages: Any) -> str:
        e = self.assertRaises(ConfigError, make_config, pages=pages)
        return str(e)

    def test_defaults(self):
        """Without [pages]: English, confirmation on, no sign-in page."""
        pages = make_config().pages
        self.assertEqual((pages.language, pages.logout_confirm, pages.sign_in_page),
                         ("en", True, False))

    def test_bad_values(self):
        """Each key is checked: colour, links, language, directory, text."""
        self.assertIn("pages.accent_color: 'red; x: y' is not a colour",
                      self.problems(accent_color="red; x: y"))
        self.assertIn("pages.logo_url: 'javascript:alert(1)' is neither",
                      self.problems(logo_url="javascript:alert(1)"))
        self.assertIn("pages.support_url: 'http://help' is neither",
                      self.problems(support_url="http://help"))
        self.assertIn('pages.language: \'fr\' is not "auto" or one of "en", "de"',
                      self.problems(language="fr"))
        self.assertIn("pages.templates_dir: '/nonexistent' is not a directory",
                      self.problems(templates_dir="/nonexistent"))
        self.assertIn("pages.footer: expected one line",
                      self.problems(footer="a\nb"))
        self.assertIn("pages.switch_account_prompt:",
                      self.problems(switch_account_prompt="none"))


class CoreHookTests(SynchronousTestCase):
    def request(self) -> Any:
        return UnitRequest(b"GET", b"/x", headers={b"accept": [b"text/html"]})

    def test_proxy_errors_use_the_guards_pages(self):
        """An error made below the guard (the upstream's 502) is the guard's page when it set one."""
        from oidcproxy.core.context import context
        from oidcproxy.core.pages import render_error
        from oidcproxy.web.pages import Pages

        r = self.request()
        context(r).pages = Pages(make_config(pages={"organisation": "Example Ltd"}))
        body = render_error(r, 502, "bad_gateway", "The upstream <is> down.")
        self.assertEqual(r.code, 502)
        self.assertIn(b'<span class="org">Example Ltd</span>', body)
        self.assertIn(b"The upstream &lt;is&gt; down.", body)
        self.assertEqual(r.responseHeaders.getRawHeaders(b"x-frame-options"), [b"DENY"])

    def test_plain_page_headers(self):
        """Without a guard's pages the plain page has the strict headers too."""
        from oidcproxy.core.pages import render_error

        r = self.request()
        render_error(r, 404, "not_found", "No.")
        policy = r.responseHeaders.getRawHeaders(b"content-security-policy")[0]
        self.assertIn(b"default-src 'none'", policy)
        self.assertIn(b"frame-ancestors 'none'", policy)
        self.assertEqual(r.responseHeaders.getRawHeaders(b"x-frame-options"), [b"DENY"])
        self.assertIsNone(r.responseHeaders.getRawHeaders(b"vary"))
