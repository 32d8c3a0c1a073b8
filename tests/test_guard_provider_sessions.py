"""
Tests for one session per provider in a browser: each named provider's
session lives in a cookie of its own (C{cookie_name-NAME}; the default
provider's keeps C{cookie_name}), so signing in with one provider does not
end a session with another, a route reads only its provider's cookie, and a
logout ends one provider's session. With the cookie store (the guard's
synchronous way), the memory store (the waiting way) and Redis (each cookie
holds its own session id).
"""

from __future__ import annotations

from typing import Any, Optional
from urllib.parse import urlencode

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from oidcproxy.config import ConfigError, RouteConfig
from oidcproxy.core.context import context, peek
from oidcproxy.sessions.crypto import Sealer
from oidcproxy.sessions.stores.redis import store as redis_store
from oidcproxy.sessions.stores.redis.store import RedisStore

from .fakes import API, APP, SESSION_COOKIE, GuardStack, make_config, open_session
from .idp import authorize_params
from .test_guard_multi import CORP_COOKIE, NEAR_EXPIRY, Stack
from .test_guard_providers import KEY, ScriptedRedis
from .test_server import SiteHarness

ORIGIN = {b"origin": [APP.encode()]}


class DeletingRedis(ScriptedRedis):
    """L{ScriptedRedis} that deletes sessions too (logout, a new login)."""

    def _eval(self, script: str, count: int, *rest: Any) -> Any:
        if script == redis_store._DELETE:
            keys, args = list(rest[:count]), list(rest[count:])
            self.values.pop(keys[0], None)
            for index in keys[1:]:
                self.sets.get(index, set()).discard(args[0])
            return 1
        return super()._eval(script, count, *rest)


class TwoSessionsMixin:
    """The same behaviours with every store (see the subclasses)."""

    def stack(self) -> Stack:
        raise NotImplementedError

    def both(self) -> Any:
        """A stack and a browser signed in with [oidc] and then with corp."""
        s = self.stack()
        browser = s.h.logged_in()
        page = s.corp_login(browser)
        t: Any = self
        t.assertEqual(page.code, 302, page.body)
        return s, browser

    def test_second_provider_keeps_first_session(self) -> None:
        """Signing in with corp leaves the [oidc] session: both routes serve, each as its own user."""
        t: Any = self
        s, browser = self.both()
        t.assertIn(SESSION_COOKIE, browser.jar)
        t.assertIn(CORP_COOKIE, browser.jar)
        t.assertEqual(browser.get("/x", headers=API).code, 200)
        t.assertEqual(s.h.app.header(b"x-forwarded-user"), [b"user-1"])
        t.assertEqual(browser.get("/staff", headers=API).code, 200)
        t.assertEqual(s.h.app.header(b"x-forwarded-user"), [b"worker-1"])
        t.assertEqual(browser.get("/y", headers=API).code, 200)
        t.assertEqual(s.h.app.header(b"x-forwarded-user"), [b"user-1"])

    def test_first_provider_keeps_second_session(self) -> None:
        """The other order: signing in with [oidc] leaves the corp session."""
        t: Any = self
        s = self.stack()
        browser = s.h.browser()
        s.corp_login(browser)
        s.h.login(browser)
        t.assertEqual(browser.get("/staff", headers=API).code, 200)
        t.assertEqual(browser.get("/x", headers=API).code, 200)

    def test_new_login_ends_the_same_providers_session(self) -> None:
        """A second corp login replaces the corp session (a fresh id), not the [oidc] one."""
        t: Any = self
        s, browser = self.both()
        first = browser.jar[CORP_COOKIE]
        default = browser.jar[SESSION_COOKIE]
        params = authorize_params(browser.navigate("/oidc/login?provider=corp&rd=/staff"))
        code = s.corp.issue_code(nonce=params["nonce"], sub="worker-2",
                                 code_verifier_challenge=params["code_challenge"])
        page = browser.navigate("/oidc/callback/corp?" + urlencode(
            {"code": code, "state": params["state"]}))
        t.assertEqual(page.code, 302, page.body)
        t.assertNotEqual(browser.jar[CORP_COOKIE], first)
        t.assertEqual(browser.jar[SESSION_COOKIE], default)
        t.assertEqual(browser.get("/staff", headers=API).code, 200)
        t.assertEqual(s.h.app.header(b"x-forwarded-user"), [b"worker-2"])

    def test_logout_of_one_provider(self) -> None:
        """?provider=corp ends the corp session; the [oidc] one keeps working (and the reverse)."""
        t: Any = self
        s, browser = self.both()
        page = browser.request(b"POST", "/oidc/logout?provider=corp", headers=ORIGIN)
        t.assertEqual(page.code, 303)
        t.assertNotIn(CORP_COOKIE, browser.jar)
        t.assertIn(SESSION_COOKIE, browser.jar)
        t.assertEqual(browser.get("/staff", headers=API).code, 401)
        t.assertEqual(browser.get("/x", headers=API).code, 200)

    def test_logout_default_by_default(self) -> None:
        """Without ?provider, a browser with both sessions logs out of [oidc]'s; corp's lives on."""
        t: Any = self
        s, browser = self.both()
        corp = browser.jar[CORP_COOKIE]
        t.assertEqual(browser.request(b"POST", "/oidc/logout", headers=ORIGIN).code, 303)
        t.assertNotIn(SESSION_COOKIE, browser.jar)
        t.assertEqual(browser.get("/x", headers=API).code, 401)
        t.assertEqual(browser.get("/staff", headers=API).code, 200)
        t.assertEqual(browser.jar[CORP_COOKIE], corp)

    def test_ended_cookie_copy_refused(self) -> None:
        """A copy of the corp cookie kept from before its logout is no session any more."""
        t: Any = self
        s, browser = self.both()
        copy = browser.jar[CORP_COOKIE]
        browser.request(b"POST", "/oidc/logout?provider=corp", headers=ORIGIN)
        browser.jar[CORP_COOKIE] = copy
        t.assertEqual(browser.get("/staff", headers=API).code,
                      200 if self.stateless else 401)

    stateless = False
    """The cookie store without a revocation list: a kept copy stays valid until it expires."""

    def test_value_moved_to_another_cookie(self) -> None:
        """
        The [oidc] session's value put in corp's cookie: no session for corp's
        routes (the cookie is cleared); the [oidc] cookie is untouched.
        """
        t: Any = self
        s = self.stack()
        browser = s.h.logged_in()
        browser.jar[CORP_COOKIE] = browser.jar[SESSION_COOKIE]
        t.assertEqual(browser.get("/staff", headers=API).code, 401)
        t.assertNotIn(CORP_COOKIE, browser.jar)
        t.assertEqual(browser.get("/x", headers=API).code, 200)

    def test_own_cookies_stripped(self) -> None:
        """Neither session cookie reaches the upstream; the application's cookie does."""
        t: Any = self
        s, browser = self.both()
        browser.jar["app"] = "1"
        t.assertEqual(browser.get("/staff", headers=API).code, 200)
        t.assertEqual(s.h.app.header(b"cookie"), [b"app=1"])


class CookieStoreTests(TwoSessionsMixin, SynchronousTestCase):
    stateless = True

    def stack(self) -> Stack:
        return Stack(self)

    def test_named_cookie_attributes(self) -> None:
        """corp's cookie has the default one's attributes and prefix (here __Host-)."""
        s = self.stack()
        browser = s.h.browser()
        page = s.corp_login(browser)
        values = [v for v in page.headers.getRawHeaders(b"set-cookie")
                  if v.startswith(CORP_COOKIE.encode() + b"=")]
        self.assertEqual(len(values), 1)
        self.assertIn(b"; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=", values[0])
        self.assertEqual(open_session(browser.jar[CORP_COOKIE]).provider, "corp")

    def test_upstream_cannot_set_named_cookie(self) -> None:
        """The named session cookie is one of the proxy's: an upstream's Set-Cookie for it is refused."""
        owned = self.stack().h.state.cookies.owned()
        self.assertTrue(owned.owns(CORP_COOKIE.encode()))
        self.assertTrue(owned.owns(b"oidcproxy-corp_2"))


class MemoryStoreTests(TwoSessionsMixin, SynchronousTestCase):
    def stack(self) -> Stack:
        return Stack(self, memory_store=True)

    def test_other_providers_session_not_ended_in_store(self) -> None:
        """The [oidc] session is still in the store after the corp login."""
        s, browser = self.both()
        ids = {s.id for s in s.h.store._sessions.values()}  # type: ignore[union-attr]
        self.assertEqual(len(ids), 2)


class RedisStoreTests(TwoSessionsMixin, SynchronousTestCase):
    def stack(self) -> Stack:
        self.redis = DeletingRedis()
        return Stack(self, store=lambda clock: RedisStore(self.redis, Sealer([KEY]), clock))

    def test_each_cookie_its_own_id(self) -> None:
        """Each cookie holds its own session's id."""
        s, browser = self.both()
        self.assertNotEqual(browser.jar[SESSION_COOKIE], browser.jar[CORP_COOKIE])
        self.assertEqual(len([k for k in self.redis.values if k.startswith("oidcproxy:s:")]), 2)


class LogoutChoiceTests(SynchronousTestCase):
    """Which session a logout ends, and what its page says."""

    def test_only_session_held(self) -> None:
        """A browser holding only a corp session logs out of it without ?provider."""
        s = Stack(self, memory_store=True)
        browser = s.h.browser()
        s.corp_login(browser)
        self.assertEqual(browser.request(b"POST", "/oidc/logout", headers=ORIGIN).code, 303)
        self.assertNotIn(CORP_COOKIE, browser.jar)
        self.assertEqual(browser.get("/staff", headers=API).code, 401)

    def test_form_field(self) -> None:
        """The provider as a form field of the POST."""
        s = Stack(self, memory_store=True)
        browser = s.h.logged_in()
        s.corp_login(browser)
        page = browser.request(
            b"POST", "/oidc/logout",
            headers={**ORIGIN, b"content-type": [b"application/x-www-form-urlencoded"]},
            body=b"provider=corp")
        self.assertEqual(page.code, 303)
        self.assertEqual(browser.get("/staff", headers=API).code, 401)
        self.assertEqual(browser.get("/x", headers=API).code, 200)

    def test_oidc_names_default(self) -> None:
        """?provider=oidc (the name a route's providers list gives [oidc]) ends [oidc]'s session."""
        s = Stack(self, memory_store=True)
        browser = s.h.logged_in()
        s.corp_login(browser)
        page = browser.request(b"POST", "/oidc/logout?provider=oidc", headers=ORIGIN)
        self.assertEqual(page.code, 303)
        self.assertEqual(browser.get("/x", headers=API).code, 401)
        self.assertEqual(browser.get("/staff", headers=API).code, 200)
        page = browser.navigate("/oidc/login?provider=oidc&rd=/x")
        self.assertEqual(page.code, 302)
        self.assertTrue(page.location.startswith("https://idp.test/"), page.location)

    def test_unknown_provider(self) -> None:
        """?provider= of no provider here: 404, nothing ended."""
        s = Stack(self)
        browser = s.h.logged_in()
        page = browser.request(b"POST", "/oidc/logout?provider=nope", headers=ORIGIN)
        self.assertEqual(page.code, 404)
        self.assertEqual(browser.get("/oidc/logout?provider=nope").code, 404)
        self.assertEqual(browser.get("/x", headers=API).code, 200)

    def page(self, target: str, corp: bool = True, default: bool = True) -> str:
        s = Stack(self)
        browser = s.h.logged_in() if default else s.h.browser()
        if corp:
            s.corp_login(browser)
        page = browser.get(target)
        self.assertEqual(page.code, 200)
        body: str = page.body.decode("utf-8")
        return body

    def test_page_names_account_and_provider(self) -> None:
        """The confirmation page of corp's session names its account and corp, and posts provider=corp."""
        body = self.page("/oidc/logout?provider=corp")
        self.assertIn("<strong>worker-1</strong> with <strong>corp.test</strong>", body)
        self.assertIn('name="provider" value="corp"', body)

    def test_page_default(self) -> None:
        """Without ?provider: the [oidc] session's page, naming the default provider."""
        body = self.page("/oidc/logout")
        self.assertIn("<strong>user-1</strong> with <strong>idp.test</strong>", body)
        self.assertIn('name="provider" value=""', body)

    def test_page_one_provider_unchanged(self) -> None:
        """With one provider, the page names the account only, and posts no provider."""
        h = GuardStack(self, make_config())
        body = h.logged_in().get("/oidc/logout").body.decode("utf-8")
        self.assertIn("You are signed in as <strong>user-1</strong>.", body)
        self.assertNotIn('name="provider"', body)

    def test_userinfo_of_provider(self) -> None:
        """/oidc/userinfo?provider=corp answers corp's session; without it, [oidc]'s."""
        s = Stack(self)
        browser = s.h.logged_in()
        s.corp_login(browser)
        self.assertIn(b'"worker-1"', browser.get("/oidc/userinfo?provider=corp", headers=API).body)
        self.assertIn(b'"user-1"', browser.get("/oidc/userinfo", headers=API).body)
        self.assertEqual(browser.get("/oidc/userinfo?provider=x", headers=API).code, 404)


class CookieNameCheckTests(SynchronousTestCase):
    """--check refuses a provider whose session cookie would be another of the proxy's cookies."""

    def refused(self, name: str, **changes: Any) -> Optional[str]:
        table = {"issuer": "https://corp.test", "client_id": "c", "client_secret": "s"}
        try:
            make_config(providers={name: table}, **changes)
        except ConfigError as e:
            return str(e)
        return None

    def test_chunk_like_name(self) -> None:
        """A name ending in _ and digits: its cookie would read as a chunk of another's."""
        message = self.refused("corp_2")
        assert message is not None
        self.assertIn("providers.corp_2: a name ending in _ and digits is refused", message)

    def test_csrf_cookie_name(self) -> None:
        message = self.refused("csrf", csrf={"cookie_name": "oidcproxy-csrf"})
        assert message is not None
        self.assertIn("would be csrf.cookie_name", message)

    def test_state_cookie_name(self) -> None:
        message = self.refused("x", state_cookie={"name": "oidcproxy-x"})
        self.assertIsNone(message)
        message = self.refused("x_y", state_cookie={"name": "oidcproxy-x"})
        assert message is not None
        self.assertIn("login state cookie", message)

    def test_plain_names_accepted(self) -> None:
        self.assertIsNone(self.refused("corp-2"))
        self.assertIsNone(self.refused("corp_b"))



class ObservabilityTests(SynchronousTestCase):
    """The provider in the access log and the login and refresh metrics."""

    def providers_seen(self, cookie_store: bool = True) -> Any:
        """The context's provider of a corp request and of an [oidc] request."""
        s = Stack(self) if cookie_store else Stack(self, memory_store=True)
        browser = s.h.logged_in()
        s.corp_login(browser)
        seen = []
        s.h.app.action = lambda request: seen.append(peek(request).provider)  # type: ignore[union-attr]
        browser.get("/staff", headers=API)
        browser.get("/x", headers=API)
        return seen

    def test_context_names_named_provider(self) -> None:
        """A corp session's request carries corp for the access log; an [oidc] one none."""
        self.assertEqual(self.providers_seen(), ["corp", None])

    def test_context_names_named_provider_waiting(self) -> None:
        """The same when the session is loaded from the (memory) store."""
        self.assertEqual(self.providers_seen(cookie_store=False), ["corp", None])

    def test_access_line(self) -> None:
        """The text line ends with provider=NAME for a named provider only; the event has the key."""
        harness = SiteHarness(self, resource=ProviderRecorder())
        harness.send(b"GET /corp HTTP/1.1\r\nHost: a\r\n\r\nGET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        corp, other = harness.access()
        self.assertTrue(corp["access_line"].endswith(" auth=session proto=HTTP/1.1 provider=corp"),
                        corp["access_line"])
        self.assertTrue(other["access_line"].endswith(" proto=HTTP/1.1"), other["access_line"])
        self.assertEqual((corp["provider"], other["provider"]), ("corp", "-"))

    def test_login_and_refresh_metrics(self) -> None:
        """Logins and refreshes are counted with their provider ("" for [oidc])."""
        s = Stack(self)
        browser = s.h.logged_in()
        s.corp_login(browser)
        s.h.clock.advance(NEAR_EXPIRY)
        self.assertEqual(browser.get("/staff", headers=API).code, 200)
        registry = s.h.metrics.registry  # type: ignore[attr-defined]
        for provider in ("", "corp"):
            self.assertEqual(registry.get_sample_value(
                "oidcproxy_logins_started_total", {"provider": provider}), 1.0, provider)
            self.assertEqual(registry.get_sample_value(
                "oidcproxy_logins_completed_total", {"provider": provider}), 1.0, provider)
        self.assertEqual(registry.get_sample_value(
            "oidcproxy_refreshes_total", {"outcome": "success", "provider": "corp"}), 1.0)
        self.assertIsNone(registry.get_sample_value(
            "oidcproxy_refreshes_total", {"outcome": "success", "provider": ""}))

    def test_failed_login_metric(self) -> None:
        """A failed login at corp's callback is counted for corp."""
        s = Stack(self)
        s.h.browser().navigate("/oidc/callback/corp?code=x")
        self.assertEqual(s.h.metrics.registry.get_sample_value(  # type: ignore[attr-defined]
            "oidcproxy_logins_failed_total", {"reason": "missing_state", "provider": "corp"}), 1.0)


class ProviderRecorder(Resource):
    """Answers as a corp session's request (C{/corp}) or an anonymous one."""

    isLeaf = True

    def render(self, request: Any) -> bytes:
        ctx = context(request)
        ctx.route = RouteConfig(index=0, path="/", upstream="http://up:1")
        if request.path == b"/corp":
            ctx.user, ctx.auth, ctx.provider = "worker-1", "session", "corp"
        return b"ok"
