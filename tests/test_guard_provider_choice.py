"""
Tests for a route of several providers (C{providers = ["oidc", "corp"]}):
a session of any of them is served (the first in the route's order when
the browser holds several), a browser without one gets the sign-in page
with a button per provider, an API client a 401 naming the issuers, and
each provider's access tokens pass. With the cookie store (the synchronous
way) and the memory store (the waiting way).
"""

from __future__ import annotations

from html import unescape
from typing import Any, Dict, List
from urllib.parse import parse_qsl, urlencode, urlsplit

from twisted.trial.unittest import SynchronousTestCase

from .fakes import API, CLIENT_ID, SESSION_COOKIE
from .idp import AUTHORIZATION_ENDPOINT, ISSUER, authorize_params, split_location
from .test_guard_multi import CORP, CORP_CLIENT, CORP_COOKIE, Stack

ROUTES = [{"path": "/both", "upstream": "http://up.test", "providers": ["oidc", "corp"]},
          {"path": "/both-api", "upstream": "http://up.test", "providers": ["corp", "oidc"],
           "auth": "bearer"}]
HTML = {b"accept": [b"text/html"]}
CHALLENGE = f'Bearer realm="oidcproxy", issuers="{ISSUER} {CORP}"'.encode()


def bearer(token: str) -> Dict[bytes, Any]:
    return {b"authorization": [b"Bearer " + token.encode()], b"accept": [b"application/json"]}


class ChoiceMixin:
    """The same behaviours with both stores (see the subclasses)."""

    memory = False

    def stack(self) -> Stack:
        return Stack(self, routes=ROUTES, memory_store=self.memory,  # type: ignore[arg-type]
                     config={"pages": {"organisation": "Example Ltd"}})

    def buttons(self, body: bytes) -> List[str]:
        """The sign-in page's buttons: their links."""
        links = [unescape(part.split('"', 1)[0])
                 for part in body.decode("utf-8").split('href="')[1:]]
        return [link for link in links if link.startswith("/oidc/login")]

    def test_chooser_page(self) -> None:
        """A browser without a session: 401, the sign-in page with one button per provider."""
        t: Any = self
        s = self.stack()
        page = s.h.browser().navigate("/both?x=1")
        t.assertEqual(page.code, 401)
        t.assertEqual(page.header(b"www-authenticate"), CHALLENGE)
        body = page.body.decode("utf-8")
        t.assertIn("Sign in with idp.test", body)
        t.assertIn("Sign in with corp.test", body)
        t.assertIn("Example Ltd", body)
        links = [dict(parse_qsl(urlsplit(link).query)) for link in self.buttons(page.body)]
        t.assertEqual(links, [{"rd": "/both?x=1"}, {"rd": "/both?x=1", "provider": "corp"}])
        t.assertEqual(len(s.h.app.requests), 0)

    def test_api_client(self) -> None:
        """An API client without credentials: 401 JSON, the challenge naming both issuers."""
        t: Any = self
        s = self.stack()
        page = s.h.browser().get("/both", headers=API)
        t.assertEqual((page.code, page.header(b"www-authenticate")), (401, CHALLENGE))
        t.assertEqual(page.json()["error"], "unauthenticated")

    def test_choose_corp(self) -> None:
        """The corp button: a login at corp, back to the route, served as corp's user."""
        t: Any = self
        s = self.stack()
        browser = s.h.browser()
        links = self.buttons(browser.navigate("/both").body)
        page = browser.navigate(links[1])
        t.assertEqual(split_location(page)[0], CORP + "/authorize")
        params = authorize_params(page)
        code = s.corp.issue_code(nonce=params["nonce"], sub="worker-1",
                                 code_verifier_challenge=params["code_challenge"])
        page = browser.navigate("/oidc/callback/corp?" + urlencode(
            {"code": code, "state": params["state"]}))
        t.assertEqual(page.location, "https://app.test/both")
        t.assertIn(CORP_COOKIE, browser.jar)
        for _ in range(2):
            t.assertEqual(browser.get("/both", headers=API).code, 200)
            t.assertEqual(s.h.app.header(b"x-forwarded-user"), [b"worker-1"])

    def test_default_session(self) -> None:
        """An [oidc] session is served on the route too, as its user."""
        t: Any = self
        s = self.stack()
        browser = s.h.logged_in()
        t.assertEqual(browser.get("/both", headers=API).code, 200)
        t.assertEqual(s.h.app.header(b"x-forwarded-user"), [b"user-1"])

    def test_both_sessions_route_order(self) -> None:
        """With both sessions, the first provider of the route's list serves ([oidc] here)."""
        t: Any = self
        s = self.stack()
        browser = s.h.logged_in()
        s.corp_login(browser)
        t.assertEqual(browser.get("/both", headers=API).code, 200)
        t.assertEqual(s.h.app.header(b"x-forwarded-user"), [b"user-1"])
        browser.request(b"POST", "/oidc/logout", headers={b"origin": [b"https://app.test"]})
        t.assertEqual(browser.get("/both", headers=API).code, 200)
        t.assertEqual(s.h.app.header(b"x-forwarded-user"), [b"worker-1"])

    def test_dead_first_cookie_cleared(self) -> None:
        """A tampered cookie of the first provider is cleared; the second's session serves."""
        t: Any = self
        s = self.stack()
        browser = s.h.browser()
        s.corp_login(browser)
        browser.jar[SESSION_COOKIE] = "x" * 40
        t.assertEqual(browser.get("/both", headers=API).code, 200)
        t.assertEqual(s.h.app.header(b"x-forwarded-user"), [b"worker-1"])
        t.assertNotIn(SESSION_COOKIE, browser.jar)

    def test_provider_on_login_url(self) -> None:
        """/oidc/login?provider=corp goes straight to corp (no chooser)."""
        t: Any = self
        page = self.stack().h.browser().navigate("/oidc/login?provider=corp&rd=/both")
        t.assertEqual(split_location(page)[0], CORP + "/authorize")
        page = self.stack().h.browser().navigate("/oidc/login?rd=/both")
        t.assertEqual(split_location(page)[0], AUTHORIZATION_ENDPOINT)

    def test_tokens_of_each_provider(self) -> None:
        """The route's providers' access tokens pass (each twice: validated, cached); others not."""
        t: Any = self
        s = self.stack()
        now = int(s.h.clock.seconds())

        def token(issuer: str, audience: str) -> str:
            return s.corp.id_token({"iss": issuer, "aud": audience, "sub": issuer, "iat": now,
                                    "exp": now + 300, "scope": "read", "client_id": "spa"})

        for issuer, audience in ((CORP, CORP_CLIENT), (ISSUER, CLIENT_ID)):
            for _ in range(2):
                page = s.h.browser().get("/both-api", headers=bearer(token(issuer, audience)))
                t.assertEqual(page.code, 200, issuer)
        page = s.h.browser().get("/both-api", headers=bearer(token("https://x.test", CLIENT_ID)))
        t.assertEqual(page.code, 401)
        t.assertIn(b'error="invalid_token"', page.header(b"www-authenticate") or b"")
        page = s.h.browser().get("/both-api", headers=bearer(token(CORP, CLIENT_ID)))
        t.assertEqual(page.code, 401)


class CookieStoreChoiceTests(ChoiceMixin, SynchronousTestCase):
    pass


class MemoryStoreChoiceTests(ChoiceMixin, SynchronousTestCase):
    memory = True


class SignInPageTests(SynchronousTestCase):
    """[pages] sign_in_page = true on a named provider's route names that provider."""

    def test_named_provider(self) -> None:
        s = Stack(self, config={"pages": {"sign_in_page": True}})
        page = s.h.browser().navigate("/staff/x")
        self.assertEqual(page.code, 401)
        body = unescape(page.body.decode("utf-8"))
        self.assertIn('href="/oidc/login?rd=%2Fstaff%2Fx&provider=corp"', body)
        self.assertIn("Sign in with corp.test", body)
        page = s.h.browser().navigate("/x")
        self.assertIn("Sign in with idp.test", page.body.decode("utf-8"))


class ForbiddenPageTests(SynchronousTestCase):
    """The 403 page's sign-out (and sign-in-as-someone-else) act on the refused session's provider."""

    def test_choice_route_named_session(self) -> None:
        s = Stack(self, routes=[{"path": "/admin", "upstream": "http://up.test",
                                 "providers": ["oidc", "corp"],
                                 "rule": "Contains(`groups`, `admins`)"}])
        browser = s.h.browser()
        s.corp_login(browser)
        page = browser.navigate("/admin")
        self.assertEqual(page.code, 403)
        body = unescape(page.body.decode("utf-8"))
        self.assertIn('name="provider" value="corp"', body)
        self.assertIn("provider=corp", body.split("<main>")[1])
