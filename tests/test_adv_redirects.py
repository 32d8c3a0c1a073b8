"""
Adversarial suite, class 1: open redirects, and user input reflected in
pages.

Every line of the open-redirect corpus (raw, percent-decoded once and
percent-encoded once) and every generated case of L{extra_redirects} goes
through every parameter that can redirect: the login C{rd} (and so the
return-to carried in the state to the callback's final redirect), the
logout confirmation form's C{rd}, the logout C{rd} and the post-logout
redirect sent to the IdP. Refused means the final C{Location} is exactly the
public URL's root, C{https://app.test/}; a handful of safe targets must be
kept exactly, so the tables cannot pass by refusing everything.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, List, Tuple
from urllib.parse import parse_qs, urlencode, urlsplit

from twisted.trial.unittest import SynchronousTestCase

from .adversarial import (
    API,
    APP,
    CORPUS,
    MARKUP,
    PUBLIC_ORIGIN_ROOT,
    SAFE_TARGETS,
    Failures,
    corpus,
    extra_redirects,
    header_of,
    iter_pairs,
    open_state,
    parse_response,
    redirect_inputs,
    reflected_markup,
)
from .fakes import STATE_PREFIX, ProxyStack
from .idp import AUTHORIZATION_ENDPOINT, ISSUER, Page, authorize_params

INPUTS = redirect_inputs()
FORM = {b"content-type": [b"application/x-www-form-urlencoded"]}
SAME_ORIGIN = {b"origin": [APP.encode("ascii")], **FORM}


def _state_of(page: Page) -> Any:
    cookies = [c for c in page.set_cookies if c.name.startswith(STATE_PREFIX) and not c.deletes]
    assert len(cookies) == 1, f"expected one state cookie, got {[c.name for c in cookies]}"
    return open_state(cookies[0].value)


def _landing(target: str) -> str:
    return APP + target


class CorpusTests(SynchronousTestCase):
    """The corpus and the generated classes, through every redirecting parameter."""

    def test_inputs_generated(self):
        """The corpus is whole (559 lines) and the generated classes are all there."""
        self.assertEqual(len(corpus()), 559)
        labels = {label.split(" ")[0] for label, _ in extra_redirects()}
        self.assertTrue({"backslash", "control", "userinfo", "#@", "?@", "numeric", "look-alike",
                         "script", "over-long"} <= labels, labels)
        self.assertGreater(len(INPUTS), 3000)

    def test_corpus_in_the_repository(self):
        """
        The corpus is read from tests/data/ of this checkout, the copy whose
        origin and licence tests/data/README.rst gives (its SHA-256 there).
        """
        data = os.path.dirname(CORPUS)
        self.assertEqual(data, os.path.join(os.path.dirname(os.path.abspath(__file__)), "data"))
        with open(CORPUS, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        with open(os.path.join(data, "README.rst"), encoding="utf-8") as f:
            readme = f.read()
        self.assertIn(digest, readme)
        self.assertIn("testdata/openredirects.txt", readme)
        self.assertIn("Permission is hereby granted, free of charge", readme)

    def test_login_rd_refused(self):
        """
        /oidc/login?rd=X: the IdP redirect is made, and the return-to sealed
        in the state cookie is exactly C{/}.
        """
        stack = ProxyStack(self)
        browser = stack.browser()
        failures = Failures(self, "login rd")
        for label, value in INPUTS:
            page = browser.get("/oidc/login?" + urlencode({"rd": value}), cookies=False)
            location = page.location or ""
            if page.code != 302 or not location.startswith(AUTHORIZATION_ENDPOINT + "?"):
                failures.check(False, label, value, f"{page.code} Location {location!r}")
                continue
            return_to = _state_of(page).return_to
            failures.check(return_to == "/", label, value, f"return-to in the state: {return_to!r}")
        failures.done(len(INPUTS))

    def test_login_rd_through_callback(self):
        """
        The return-to carried through the state: after the callback the final
        Location is exactly C{https://app.test/} (a sample of every class).
        """
        stack = ProxyStack(self)
        failures = Failures(self, "callback landing")
        browser = stack.browser()
        for label, value in iter_pairs(INPUTS, 9):
            browser.jar.clear()
            start = browser.get("/oidc/login?" + urlencode({"rd": value}))
            params = authorize_params(start)
            code = stack.idp.issue_code(nonce=params["nonce"],
                                        code_verifier_challenge=params["code_challenge"])
            page = browser.navigate("/oidc/callback?" + urlencode(
                {"code": code, "state": params["state"]}))
            failures.check((page.code, page.location) == (302, PUBLIC_ORIGIN_ROOT), label, value,
                           f"{page.code} Location {page.location!r}")
        failures.done(300)

    def test_logout_form_rd_refused(self):
        """GET /oidc/logout?rd=X: the confirmation form carries C{rd} = C{/}, nothing else."""
        stack = ProxyStack(self)
        browser = stack.browser()
        failures = Failures(self, "logout form rd")
        expected = b'<input type="hidden" name="rd" value="/" />'
        for label, value in INPUTS:
            page = browser.get("/oidc/logout?" + urlencode({"rd": value}), cookies=False)
            ok = page.code == 200 and expected in page.body and page.body.count(b"<input") == 1
            failures.check(ok, label, value, f"{page.code} {page.body[-300:]!r}")
        failures.done(len(INPUTS))

    def test_logout_rd_refused(self):
        """POST /oidc/logout with rd=X (form body or query): 303 to exactly C{https://app.test/}."""
        stack = ProxyStack(self)
        browser = stack.browser()
        failures = Failures(self, "logout rd")
        for index, (label, value) in enumerate(INPUTS):
            if index % 2:
                page = browser.request(b"POST", "/oidc/logout", headers=SAME_ORIGIN,
                                       body=urlencode({"rd": value}).encode("ascii"), cookies=False)
            else:
                page = browser.request(b"POST", "/oidc/logout?" + urlencode({"rd": value}),
                                       headers=SAME_ORIGIN, body=b"", cookies=False)
            failures.check((page.code, page.header(b"location")) == (303, PUBLIC_ORIGIN_ROOT.encode()),
                           label, value, f"{page.code} Location {page.location!r}")
        failures.done(len(INPUTS))

    def test_post_logout_redirect_refused(self):
        """
        With RP-initiated logout the IdP is told to come back to exactly
        C{https://app.test/} (post_logout_redirect_uri), whatever rd said.
        """
        stack = ProxyStack(self, memory_store=True, idp_logout=True)
        failures = Failures(self, "post-logout redirect")
        browser = stack.browser()
        for label, value in iter_pairs(INPUTS, 23):
            browser.jar.clear()
            stack.login(browser)
            page = browser.request(b"POST", "/oidc/logout", headers=SAME_ORIGIN,
                                   body=urlencode({"rd": value}).encode("ascii"))
            location = page.location or ""
            base, _, query = location.partition("?")
            back = parse_qs(query).get("post_logout_redirect_uri")
            failures.check(page.code == 303 and base == ISSUER + "/logout"
                           and back == [PUBLIC_ORIGIN_ROOT], label, value,
                           f"{page.code} Location {location[:200]!r}")
        failures.done(100)

    def test_safe_targets_kept(self):
        """The controls: safe same-origin paths are kept exactly, everywhere."""
        stack = ProxyStack(self, memory_store=True, idp_logout=True)
        for target, expected in SAFE_TARGETS:
            expected = expected or target
            browser = stack.browser()
            start = browser.get("/oidc/login?" + urlencode({"rd": target}))
            self.assertEqual(_state_of(start).return_to, expected, target)
            params = authorize_params(start)
            code = stack.idp.issue_code(nonce=params["nonce"],
                                        code_verifier_challenge=params["code_challenge"])
            page = browser.navigate("/oidc/callback?" + urlencode(
                {"code": code, "state": params["state"]}))
            self.assertEqual((page.code, page.location), (302, _landing(expected)), target)
            form = browser.get("/oidc/logout?" + urlencode({"rd": target}))
            self.assertIn(b'name="rd" value="' + expected.replace("&", "&amp;").encode() + b'"',
                          form.body, target)
            page = browser.request(b"POST", "/oidc/logout", headers=SAME_ORIGIN,
                                   body=urlencode({"rd": target}).encode("ascii"))
            back = parse_qs(urlsplit(page.location or "").query)["post_logout_redirect_uri"]
            self.assertEqual(back, [_landing(expected)], target)

    def test_navigation_return_to(self):
        """
        A navigation to any path made of a redirect input: the return-to in
        the state is a safe same-origin path (or C{/}), and the callback's
        Location stays on C{https://app.test}.
        """
        from oidcproxy.oidc.login import safe_return_to

        stack = ProxyStack(self)
        browser = stack.browser()
        failures = Failures(self, "navigation return-to")
        for label, value in iter_pairs(INPUTS, 3):
            path = "/" + value.lstrip("/")
            if not all(0x21 <= ord(c) < 0x7F and c != "#" for c in path):
                continue  # not a request target a browser sends
            page = browser.navigate(path, cookies=False)
            if page.code != 302:
                failures.check(page.code in (400, 404), label, path, f"{page.code}")
                continue
            return_to = _state_of(page).return_to
            failures.check(safe_return_to(return_to) == return_to, label, path,
                           f"unsafe return-to {return_to!r}")
        failures.done(300)


class AbsoluteFormTests(SynchronousTestCase):
    def test_absolute_form_targets(self):
        """
        An absolute-form request target naming another host (raw bytes on the
        real channel): the login's return-to is the path only and the
        redirect goes to the IdP, never to that host.
        """
        stack = ProxyStack(self)
        failures = Failures(self, "absolute-form")
        hosts = [b"evil.test", b"www.whitelisteddomain.tld", b"app.test@evil.test", b"127.0.0.1",
                 b"[::1]", b"evil.test:443", b"app.test"]
        for host in hosts:
            for scheme in (b"http://", b"https://", b"HTTPS://"):
                for path in (b"/", b"/x?next=//evil.test", b"//evil.test/", b"/%2F%2Fevil.test"):
                    target = scheme + host + path
                    out = stack.raw(b"GET " + target + b" HTTP/1.1\r\nHost: app.test\r\n"
                                    b"Accept: text/html\r\nSec-Fetch-Mode: navigate\r\n\r\n")
                    status, headers, _ = parse_response(out)
                    location = (header_of(headers, b"location") or [b""])[0]
                    ok = status == 400 or (status == 302 and location.startswith(
                        AUTHORIZATION_ENDPOINT.encode() + b"?"))
                    failures.check(ok, "absolute-form", target, f"{status} {location[:100]!r}")
        failures.done(80)


def _pages(stack: ProxyStack, markup: str) -> List[Tuple[str, Page]]:
    """Every page the guard itself writes, with C{markup} in every input that reaches it."""
    from urllib.parse import quote

    b = stack.browser()
    html = {b"accept": [b"text/html"]}
    q = quote(markup, safe="")
    pages: List[Tuple[str, Page]] = [
        ("logout form rd", b.get("/oidc/logout?rd=" + q)),
        ("logout form rd path", b.get("/oidc/logout?rd=/" + q)),
        ("callback error", b.navigate("/oidc/callback?error=" + q)),
        ("callback error+state", b.navigate("/oidc/callback?state=abc&error=" + q
                                             + "&error_description=" + q)),
        ("callback state", b.navigate("/oidc/callback?code=x&state=" + q)),
        ("callback code", b.navigate("/oidc/callback?state=abc&code=" + q)),
        ("callback iss", b.navigate("/oidc/callback?state=abc&code=x&iss=" + q)),
        ("callback duplicated", b.navigate("/oidc/callback?state=" + q + "&state=" + q)),
        ("unknown endpoint", b.get("/oidc/" + q, headers=html)),
        ("login redirect page", b.navigate("/x?" + q)),
        ("login endpoint", b.get("/oidc/login?rd=" + q, headers=html)),
        ("cross-site logout", b.request(b"POST", "/oidc/logout?rd=" + q, headers={
            b"origin": [markup.encode("utf-8")], b"accept": [b"text/html"]})),
        ("405 login", b.request(b"DELETE", "/oidc/login?rd=" + q, headers=html)),
        ("405 callback", b.request(b"POST", "/oidc/callback?error=" + q, headers=html)),
        ("401 api", b.get("/x?" + q, headers={b"accept": [markup.encode("utf-8")]})),
        ("401 bearer", b.get("/api/x", headers={b"authorization": [b"Bearer " + q.encode()],
                                               b"accept": [b"text/html"]})),
        ("userinfo", b.get("/oidc/userinfo?x=" + q, headers=html)),
        ("backchannel", b.request(b"POST", "/oidc/backchannel-logout", headers=FORM,
                                  body=urlencode({"logout_token": markup}).encode())),
        ("bad cookie", b.get("/x", headers={b"cookie": [b"__Host-oidcproxy=" + q.encode()],
                                            b"accept": [b"text/html"]})),
        ("state cookie", b.navigate("/oidc/callback?state=abc&code=x", headers={
            b"cookie": [b"__Host-oidcproxy_state_abc=" + q.encode()]})),
    ]
    return pages


class ReflectionTests(SynchronousTestCase):
    def test_no_markup_reflected(self):
        """
        Markup fed through every parameter and header that reaches a page of
        the proxy's own (logout form, callback errors, 4xx pages, the login
        redirect's body) never comes back unescaped.
        """
        stack = ProxyStack(self)
        failures = Failures(self, "reflection")
        for markup in MARKUP:
            before = len(stack.upstream.requests)
            for where, page in _pages(stack, markup):
                found = reflected_markup(page.body)
                failures.check(not found, where, markup, f"{page.code} reflects {found}: "
                               f"{page.body[:300]!r}")
            self.assertEqual(len(stack.upstream.requests), before, "a page came from upstream")
        failures.done(len(MARKUP) * 20)

    def test_markup_in_raw_headers(self):
        """
        Markup in the Host header (400), in a raw request target (the login
        redirect, its return-to refused) or a second Host (400) is never
        reflected.
        """
        stack = ProxyStack(self)
        failures = Failures(self, "raw reflection")
        for markup in MARKUP:
            raw = markup.encode("utf-8")
            for request in (
                b"GET / HTTP/1.1\r\nHost: " + raw + b"\r\nAccept: text/html\r\n\r\n",
                b"GET /" + raw.replace(b" ", b"") + b" HTTP/1.1\r\nHost: app.test\r\n"
                b"Accept: text/html\r\n\r\n",
                b"GET /x HTTP/1.1\r\nHost: app.test\r\nHost: " + raw + b"\r\n\r\n",
            ):
                out = stack.raw(request)
                status, _, body = parse_response(out)
                found = reflected_markup(body)
                failures.check(status in (302, 400) and not found, "raw", request,
                               f"{status} reflects {found}: {body[:200]!r}")
        failures.done()

    def test_api_clients_get_json_errors(self):
        """The same inputs from an API client give JSON errors that hold no markup either."""
        stack = ProxyStack(self)
        b = stack.browser()
        for markup in MARKUP:
            page = b.get("/oidc/callback?error=" + urlencode({"x": markup})[2:], headers=API)
            self.assertEqual(page.code, 403, markup)
            self.assertEqual(reflected_markup(page.body), [], markup)
