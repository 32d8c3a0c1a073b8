"""
Tests for the options Traefik Hub's OIDC middleware has (issue 9): landing
pages after login and logout, where logins start (C{login_url},
C{disable_login}), the logout path, the state cookie's attributes, sliding
sessions, C{cookie_secure}, the IdP client's retries and TLS settings, and
the access log's user (C{username_claim}); with their config validation.

The guards here mostly build their own provider from the configuration, over
treq's C{StubTreq} (C{idp_http}), so what the config says is what reaches
the IdP.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import urlencode

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from oidcproxy.config import ConfigError
from oidcproxy.core.context import context
from oidcproxy.oidc.provider import ProviderError
from oidcproxy.sessions.crypto import Sealer
from oidcproxy.sessions.stores.memory import MemoryStore
from oidcproxy.sessions.stores.redis import RedisStore

from .fakes import (
    API,
    APP,
    CLIENT_ID,
    CLIENT_SECRET,
    SESSION_COOKIE,
    START,
    GuardStack,
    ProviderStack,
    make_config,
    open_session,
)
from .idp import AUTHORIZATION_ENDPOINT, FakeIdP
from .test_tls import pki


class RecordingIdP(FakeIdP):
    """A L{FakeIdP} that records each request's target and can answer 503 a few times."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock, CLIENT_ID, CLIENT_SECRET)
        self.uris: List[bytes] = []
        self.failures: Dict[bytes, int] = {}
        """Path -> how many more requests to it get a 503."""

    def render(self, request: Any) -> Any:
        self.uris.append(request.uri)
        left = self.failures.get(request.path, 0)
        if left:
            self.failures[request.path] = left - 1
            request.setResponseCode(503)
            return b"busy"
        return super().render(request)

    def count(self, path: bytes) -> int:
        return sum(1 for uri in self.uris if uri.split(b"?", 1)[0] == path)


def problems(**changes: Any) -> List[str]:
    """The problems C{make_config(**changes)} reports."""
    try:
        make_config(**changes)
    except ConfigError as e:
        return e.problems
    raise AssertionError("the configuration was accepted")


def captured_log(case: SynchronousTestCase) -> List[Dict[str, Any]]:
    events: List[Dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    case.addCleanup(globalLogPublisher.removeObserver, events.append)
    return events


def messages(events: List[Dict[str, Any]]) -> List[str]:
    from twisted.logger import formatEvent

    return [formatEvent(e) for e in events]


def callback(h: GuardStack, browser: Any, params: Dict[str, str], **issue: Any) -> Any:
    code = h.idp.issue_code(nonce=params["nonce"], code_verifier_challenge=params["code_challenge"],
                            **issue)
    return browser.navigate("/oidc/callback?" + urlencode({"code": code, "state": params["state"]}))


# -- discovery_params and auth_params ---------------------------------------------


class RequestParameterTests(SynchronousTestCase):
    def test_discovery_params_reach_the_discovery_request(self):
        """oidc.discovery_params are the discovery request's query (and no other request's)."""
        h = GuardStack(self, make_config(oidc={"discovery_params": {"p": "B2C_1_signin"}}), idp=RecordingIdP)
        self.assertTrue(h.guard.parts.provider.ready)
        discovery = [u for u in h.idp.uris if u.startswith(b"/.well-known/")]
        self.assertEqual(discovery, [b"/.well-known/openid-configuration?p=B2C_1_signin"])
        self.assertEqual([u for u in h.idp.uris if u.startswith(b"/jwks")], [b"/jwks"])

    def test_auth_params_added(self):
        """oidc.auth_params go into the authorization request."""
        h = GuardStack(self, make_config(oidc={"auth_params": {"prompt": "consent",
                                                                 "acr_values": "mfa"}}), idp=RecordingIdP)
        params = h.authorize(h.browser())
        self.assertEqual((params["prompt"], params["acr_values"]), ("consent", "mfa"))

    def test_empty_prompt_removes_the_parameter(self):
        """An empty value (prompt = "") sends no prompt at all, not an empty one."""
        h = GuardStack(self, make_config(oidc={"auth_params": {"prompt": ""}}), idp=RecordingIdP)
        page = h.browser().navigate("/")
        self.assertEqual(page.code, 302)
        self.assertTrue(page.location.startswith(AUTHORIZATION_ENDPOINT + "?"))
        self.assertNotIn("prompt", page.location_query())


# -- landing pages ----------------------------------------------------------------


class LandingPageTests(SynchronousTestCase):
    def test_post_login_redirect_path(self):
        """post_login_redirect_url (a path) replaces the return-to after login."""
        h = GuardStack(self, make_config(oidc={"post_login_redirect_url": "/welcome?new=1"}),
                       idp=RecordingIdP)
        page = h.login(h.browser(), path="/deep/page")
        self.assertEqual((page.code, page.location), (302, APP + "/welcome?new=1"))

    def test_post_login_redirect_absolute(self):
        """An absolute post_login_redirect_url on public_url's origin is used as it is."""
        h = GuardStack(self, make_config(oidc={"post_login_redirect_url": APP + "/home"}), idp=RecordingIdP)
        page = h.login(h.browser(), path="/deep/page")
        self.assertEqual(page.location, APP + "/home")

    def test_return_to_without_it(self):
        """Without post_login_redirect_url the browser lands where the login started."""
        h = GuardStack(self, idp=RecordingIdP)
        self.assertEqual(h.login(h.browser(), path="/deep/page").location, APP + "/deep/page")

    def test_post_login_redirect_validation(self):
        """Another origin, or a path that is not a plain same-origin path, is refused at load."""
        self.assertEqual(
            problems(oidc={"post_login_redirect_url": "https://evil.test/x"}),
            ["oidc.post_login_redirect_url: 'https://evil.test/x' is not on public_url's origin "
             "(https://app.test); give a path or a URL on that origin"])
        self.assertEqual(problems(oidc={"post_login_redirect_url": "//evil.test/x"}),
                         ["oidc.post_login_redirect_url: '//evil.test/x' is not a plain "
                          "same-origin path"])
        self.assertEqual(problems(oidc={"post_login_redirect_url": "welcome"}),
                         ["oidc.post_login_redirect_url: 'welcome' is not an http(s) URL"])

    def test_post_logout_redirect_without_idp_logout(self):
        """post_logout_redirect_url is where the logout lands, whatever its rd said."""
        h = GuardStack(self, make_config(oidc={"post_logout_redirect_url": "/bye"}), idp=RecordingIdP)
        browser = h.logged_in()
        page = browser.request(b"POST", "/oidc/logout?rd=/elsewhere",
                               headers={b"origin": [APP.encode()]})
        self.assertEqual((page.code, page.location), (303, APP + "/bye"))

    def test_post_logout_redirect_at_the_idp(self):
        """With IdP logout it is the post_logout_redirect_uri sent there (a path made absolute)."""
        h = GuardStack(self, make_config(oidc={"post_logout_redirect_url": "/bye"}), start=False,
                       idp=RecordingIdP)
        h.idp.advertise_logout = True
        h.guard.start()
        h.network.pump()
        browser = h.logged_in()
        page = browser.request(b"POST", "/oidc/logout", headers={b"origin": [APP.encode()]})
        self.assertEqual(page.code, 303)
        self.assertEqual(page.location_query()["post_logout_redirect_uri"], [APP + "/bye"])

    def test_old_name_is_an_alias_with_a_warning(self):
        """post_logout_redirect_uri still works, with a deprecation warning."""
        events = captured_log(self)
        config = make_config(oidc={"post_logout_redirect_uri": "https://app.test/bye"})
        self.assertEqual(config.oidc.post_logout_redirect_url, "https://app.test/bye")
        self.assertIn("config: oidc.post_logout_redirect_uri is deprecated; rename it to "
                      "post_logout_redirect_url", messages(events))

    def test_both_names_refused(self):
        """The old and the new name together are a config error."""
        self.assertEqual(
            problems(oidc={"post_logout_redirect_uri": "/a", "post_logout_redirect_url": "/b"}),
            ["oidc.post_logout_redirect_uri: is the former name of post_logout_redirect_url; "
             "set only post_logout_redirect_url"])


# -- where logins start -------------------------------------------------------------


class LoginURLTests(SynchronousTestCase):
    def harness(self) -> GuardStack:
        return GuardStack(self, make_config(oidc={"login_url": "/signin"}), idp=RecordingIdP)

    def test_navigation_gets_401(self):
        """With login_url, a browser navigation without a session gets 401, no redirect."""
        h = self.harness()
        browser = h.browser()
        page = browser.navigate("/x")
        self.assertEqual(page.code, 401)
        self.assertIn(b"Log in at /signin.", page.body)
        self.assertEqual(browser.jar, {})
        self.assertEqual(h.app.requests, [])

    def test_login_url_starts_the_login(self):
        """login_url redirects to the IdP, and its rd is where the login lands."""
        h = self.harness()
        browser = h.browser()
        page = browser.navigate("/signin?rd=/after")
        self.assertEqual(page.code, 302)
        self.assertTrue(page.location.startswith(AUTHORIZATION_ENDPOINT + "?"))
        params = {k: v[0] for k, v in page.location_query().items()}
        done = callback(h, browser, params)
        self.assertEqual((done.code, done.location), (302, APP + "/after"))
        self.assertEqual(browser.navigate("/x").code, 200)

    def test_prefix_login_is_gone(self):
        """Only login_url starts a login: the prefix's /login is 404."""
        h = self.harness()
        self.assertEqual(h.browser().navigate("/oidc/login").code, 404)

    def test_disable_login(self):
        """disable_login: navigations get 401 and no endpoint starts a login."""
        h = GuardStack(self, make_config(oidc={"disable_login": True}), idp=RecordingIdP)
        browser = h.browser()
        self.assertEqual(browser.navigate("/x").code, 401)
        self.assertEqual(browser.navigate("/oidc/login").code, 404)
        self.assertEqual(browser.jar, {})

    def test_default_still_redirects(self):
        """Without either, a navigation is sent to the IdP (the control case)."""
        h = GuardStack(self, idp=RecordingIdP)
        self.assertEqual(h.browser().navigate("/x").code, 302)

    def test_validation(self):
        """login_url with disable_login, or on another endpoint's path, is refused."""
        self.assertEqual(
            problems(oidc={"login_url": "/signin", "disable_login": True}),
            ["oidc.disable_login: cannot be combined with login_url (one starts logins at one "
             "path, the other never starts any)"])
        self.assertEqual(problems(oidc={"login_url": "/oidc/callback"}),
                         ["oidc.login_url: '/oidc/callback' is already the path of "
                          "oidc.callback_path"])
        self.assertEqual(problems(oidc={"login_url": "signin"}),
                         ["oidc.login_url: 'signin' must start with '/'"])


class LogoutPathTests(SynchronousTestCase):
    def test_logout_path(self):
        """logout_path is the logout endpoint (its page posts to it); the prefix's is gone."""
        h = GuardStack(self, make_config(oidc={"logout_path": "/signout"}), idp=RecordingIdP)
        browser = h.logged_in()
        page = browser.get("/signout")
        self.assertEqual(page.code, 200)
        self.assertIn(b'action="/signout"', page.body)
        self.assertEqual(browser.request(b"POST", "/oidc/logout",
                                         headers={b"origin": [APP.encode()]}).code, 404)
        out = browser.request(b"POST", "/signout", headers={b"origin": [APP.encode()]})
        self.assertEqual(out.code, 303)
        self.assertNotIn(SESSION_COOKIE, browser.jar)
        self.assertEqual(browser.get("/x", headers=API).code, 401)

    def test_logout_path_collision(self):
        """logout_path on the callback's path is refused."""
        self.assertEqual(problems(oidc={"logout_path": "/oidc/callback"}),
                         ["oidc.logout_path: '/oidc/callback' is already the path of "
                          "oidc.callback_path"])


# -- the state cookie --------------------------------------------------------------


class StateCookieTests(SynchronousTestCase):
    def test_attributes(self):
        """name, path, domain, same_site, secure, http_only and max_age shape the state cookie."""
        h = GuardStack(self, make_config(state_cookie={
            "name": "st", "path": "/oidc", "domain": "app.test", "same_site": "None",
            "secure": True, "http_only": False, "max_age": "2m"}), idp=RecordingIdP)
        browser = h.browser()
        page = browser.navigate("/x")
        state = page.location_query()["state"][0]
        cookie = page.cookie("__Secure-st_" + state)
        self.assertIsNotNone(cookie, [c.name for c in page.set_cookies])
        self.assertEqual((cookie.attributes["path"], cookie.attributes["domain"],
                          cookie.attributes["samesite"], cookie.attributes["max-age"]),
                         ("/oidc", "app.test", "None", "120"))
        self.assertTrue(cookie.has("Secure"))
        self.assertFalse(cookie.has("HttpOnly"))
        # The callback (under /oidc) still gets it: the login completes.
        params = {k: v[0] for k, v in page.location_query().items()}
        self.assertEqual(callback(h, browser, params).code, 302)

    def test_defaults(self):
        """By default: __Host- prefixed, Path=/, HttpOnly, SameSite=Lax, Max-Age=600."""
        h = GuardStack(self, idp=RecordingIdP)
        page = h.browser().navigate("/x")
        state = page.location_query()["state"][0]
        cookie = page.cookie("__Host-oidcproxy_state_" + state)
        self.assertEqual((cookie.attributes["path"], cookie.attributes["samesite"],
                          cookie.attributes["max-age"]), ("/", "Lax", "600"))
        self.assertTrue(cookie.has("HttpOnly") and cookie.has("Secure"))

    def test_not_secure(self):
        """secure = false: no Secure flag and no security prefix."""
        h = GuardStack(self, make_config(state_cookie={"secure": False}), idp=RecordingIdP)
        page = h.browser().navigate("/x")
        state = page.location_query()["state"][0]
        cookie = page.cookie("oidcproxy_state_" + state)
        self.assertFalse(cookie.has("Secure"))

    def test_max_age_ends_the_attempt(self):
        """An attempt older than state_cookie.max_age is refused at the callback."""
        h = GuardStack(self, make_config(state_cookie={"max_age": "2m"}), idp=RecordingIdP)
        browser = h.browser()
        params = h.authorize(browser)
        h.clock.advance(121)
        self.assertEqual(callback(h, browser, params).code, 401)

    def test_strict_refused(self):
        """same_site = "Strict" is refused with the reason: the IdP's redirect is cross-site."""
        found = problems(state_cookie={"same_site": "Strict"})
        self.assertEqual(len(found), 1)
        self.assertTrue(found[0].startswith(
            'state_cookie.same_site: "Strict" would break every login: the IdP\'s redirect back '
            "to the callback is a cross-site navigation"), found)

    def test_path_must_cover_the_callback(self):
        """A path the callback is not under is refused."""
        self.assertEqual(problems(state_cookie={"path": "/app"}),
                         ["state_cookie.path: '/app' does not cover the callback path "
                          "'/oidc/callback': the browser would not send the state cookie back"])
        self.assertEqual(problems(state_cookie={"path": "/oidc/call"}),
                         ["state_cookie.path: '/oidc/call' does not cover the callback path "
                          "'/oidc/callback': the browser would not send the state cookie back"])

    def test_domain_must_cover_the_host(self):
        """A domain that is not public_url's host or a parent of it is refused."""
        self.assertEqual(problems(state_cookie={"domain": "other.test"}),
                         ["state_cookie.domain: 'other.test' does not cover public_url's host "
                          "'app.test': browsers would refuse the cookie"])

    def test_same_site_none_needs_secure(self):
        """same_site = "None" on a cookie that is not secure is refused."""
        self.assertEqual(len(problems(state_cookie={"same_site": "None", "secure": False})), 1)


# -- sessions -----------------------------------------------------------------------


class RecordingRedis:
    """Enough of txredisapi for RedisStore's load and save; records every TTL set."""

    def __init__(self) -> None:
        self.values: Dict[str, Any] = {}
        self.ttls: List[int] = []

    def execute_command(self, *args: Any) -> Deferred:
        if args[0] == "EVAL":
            script, count = args[1], args[2]
            keys, argv = args[3:3 + count], args[3 + count:]
            if "'SET'" in script:
                self.values[keys[0]] = argv[0]
                self.ttls.append(argv[1])
            return succeed(1)
        if args[0] == "GET":
            return succeed(self.values.get(args[1]))
        if args[0] == "SET":  # a refresh lock
            return succeed("OK")
        return succeed(None)


def max_age(page: Any) -> Optional[int]:
    cookie = page.cookie(SESSION_COOKIE)
    return None if cookie is None else int(cookie.attributes["max-age"])


class SlidingSessionTests(SynchronousTestCase):
    SLIDING = {"idle_timeout": "20m", "lifetime": "1h", "sliding": True}

    def test_login_cookie_lasts_the_idle_window(self):
        """With sliding, the login's cookie expires after idle_timeout, not lifetime."""
        h = GuardStack(self, make_config(session=self.SLIDING), idp=RecordingIdP)
        browser = h.browser()
        page = h.login(browser)
        self.assertEqual(max_age(page), 1200)
        self.assertEqual(open_session(browser.jar[SESSION_COOKIE]).expires, START + 1200)

    def test_activity_pushes_the_expiry(self):
        """Each request within the window moves the cookie's expiry to idle_timeout from now."""
        h = GuardStack(self, make_config(session=self.SLIDING), idp=RecordingIdP)
        browser = h.logged_in()
        h.clock.advance(600)
        page = browser.get("/x", headers=API)
        self.assertEqual((page.code, max_age(page)), (200, 1200))
        self.assertEqual(open_session(browser.jar[SESSION_COOKIE]).expires, START + 600 + 1200)

    def test_never_beyond_lifetime(self):
        """Active all along, the session still ends lifetime after login."""
        h = GuardStack(self, make_config(session=self.SLIDING), idp=RecordingIdP)
        browser = h.logged_in()
        for _ in range(5):
            h.clock.advance(600)
            self.assertEqual(browser.get("/x", headers=API).code, 200)
        self.assertEqual(open_session(browser.jar[SESSION_COOKIE]).expires, START + 3600)
        h.clock.advance(600)
        self.assertEqual(browser.get("/x", headers=API).code, 401)

    def test_fixed_without_sliding(self):
        """Without sliding the cookie's expiry stays lifetime after login, whatever the activity."""
        h = GuardStack(self, make_config(session={"idle_timeout": "20m", "lifetime": "1h"}), idp=RecordingIdP)
        browser = h.browser()
        self.assertEqual(max_age(h.login(browser)), 3600)
        h.clock.advance(600)
        page = browser.get("/x", headers=API)
        self.assertEqual(max_age(page), 3000)
        self.assertEqual(open_session(browser.jar[SESSION_COOKIE]).expires, START + 3600)

    def test_redis_ttl_follows(self):
        """In Redis the entry's TTL is the sliding expiry too (idle window, capped by lifetime)."""
        redis = RecordingRedis()
        h = GuardStack(self, make_config(session=dict(self.SLIDING, store="redis"),
                                           redis={"url": "redis://127.0.0.1:6379/0"}),
                       store=lambda clock: RedisStore(redis, Sealer([b"r" * 32]), clock),
                       idp=RecordingIdP)
        browser = h.logged_in()
        self.assertEqual(redis.ttls, [1200_000])
        h.clock.advance(600)
        self.assertEqual(browser.get("/x", headers=API).code, 200)
        self.assertEqual(redis.ttls[-1], 1200_000)
        saves = len(redis.ttls)
        h.clock.advance(1200)  # idle for the whole window: over, nothing saved
        self.assertEqual(browser.get("/x", headers=API).code, 401)
        self.assertEqual(len(redis.ttls), saves)

    def test_redis_ttl_capped_by_lifetime(self):
        """Near the end of the lifetime the TTL is what the lifetime has left."""
        redis = RecordingRedis()
        h = GuardStack(self, make_config(session=dict(self.SLIDING, store="redis"),
                                           redis={"url": "redis://127.0.0.1:6379/0"}),
                       store=lambda clock: RedisStore(redis, Sealer([b"r" * 32]), clock),
                       idp=RecordingIdP)
        browser = h.logged_in()
        for _ in range(5):
            h.clock.advance(600)
            browser.get("/x", headers=API)
        self.assertEqual(redis.ttls[-1], 600_000)

    def test_sliding_needs_idle_timeout(self):
        """sliding without an idle window is refused."""
        self.assertEqual(problems(session={"sliding": True}),
                         ["session.sliding: needs idle_timeout > 0: each request moves the expiry "
                          "to idle_timeout from now (never beyond lifetime from login)"])

    def test_cookie_secure_false(self):
        """session.cookie_secure = false: no Secure flag (and no __Host- prefix) on https."""
        h = GuardStack(self, make_config(session={"cookie_secure": False}), idp=RecordingIdP)
        page = h.login(h.browser())
        cookie = page.cookie("oidcproxy")
        self.assertIsNotNone(cookie, [c.name for c in page.set_cookies])
        self.assertFalse(cookie.has("Secure"))

    def test_cookie_secure_true_on_http(self):
        """session.cookie_secure = true marks the cookie Secure even with an http public_url."""
        config = make_config(public_url="http://app.test", session={"cookie_secure": True})
        self.assertTrue(config.cookie_secure)
        self.assertFalse(make_config(public_url="http://app.test").cookie_secure)

    def test_cookie_secure_false_with_same_site_none(self):
        """cookie_secure = false with same_site = "None" is refused."""
        self.assertEqual(len(problems(session={"cookie_secure": False, "same_site": "None"})), 1)


# -- the access log's user ------------------------------------------------------------


class UsernameClaimTests(SynchronousTestCase):
    def user_of(self, h: GuardStack, browser: Any, path: str = "/x", **kwargs: Any) -> Any:
        seen: List[Any] = []
        h.app.action = lambda request: seen.append(context(request).user)
        browser.get(path, headers=kwargs.pop("headers", API), **kwargs)
        return seen[-1]

    def test_default_is_sub(self):
        """Without username_claim the access log's user is the sub."""
        h = GuardStack(self, idp=RecordingIdP)
        browser = h.logged_in(sub="u-1", claims={"email": "a@x.test"})
        self.assertEqual(self.user_of(h, browser), "u-1")

    def test_claim(self):
        """username_claim names the claim shown as the user."""
        h = GuardStack(self, make_config(username_claim="email"), idp=RecordingIdP)
        browser = h.logged_in(sub="u-1", claims={"email": "a@x.test"})
        self.assertEqual(self.user_of(h, browser), "a@x.test")

    def test_missing_claim_falls_back_to_sub(self):
        """A session without that claim shows its sub."""
        h = GuardStack(self, make_config(username_claim="email"), idp=RecordingIdP)
        browser = h.logged_in(sub="u-1")
        self.assertEqual(self.user_of(h, browser), "u-1")

    def test_control_characters_replaced(self):
        """A claim value cannot break the access log line."""
        h = GuardStack(self, make_config(username_claim="name"), idp=RecordingIdP)
        browser = h.logged_in(sub="u-1", claims={"name": "eve\nFAKE LINE"})
        self.assertEqual(self.user_of(h, browser), "eve?FAKE LINE")

    def test_bearer_requests_too(self):
        """A bearer-authenticated request shows its token's claim."""
        from .test_guard_authz import access_token, bearer

        h = GuardStack(self, make_config(username_claim="client_id", routes=[
            {"path": "/", "upstream": "http://up.test", "auth": "session_or_bearer"}]), idp=RecordingIdP)
        token = access_token(h, client_id="svc-client")
        self.assertEqual(self.user_of(h, h.browser(), headers=bearer(token)), "svc-client")

    def test_access_log_line(self):
        """The access log writes the guard's user."""
        h = GuardStack(self, make_config(username_claim="email"), idp=RecordingIdP)
        browser = h.logged_in(sub="u-1", claims={"email": "a@x.test"})
        access = access_log(self, h, b"GET /x HTTP/1.1\r\nHost: app.test\r\n"
                            b"Accept: application/json\r\n"
                            b"Cookie: " + browser.cookie_header() + b"\r\n\r\n")
        self.assertEqual([e["user"] for e in access], ["a@x.test"])


def access_log(case: SynchronousTestCase, h: GuardStack, raw: bytes) -> List[Dict[str, Any]]:
    """The access-log events of the raw HTTP/1.1 C{raw} sent to C{h}'s guard through a site."""
    from twisted.internet.address import IPv4Address
    from twisted.test.proto_helpers import StringTransport

    from oidcproxy.web.server import ProxySite

    events = captured_log(case)
    site = ProxySite(h.guard, clock=h.clock, body_limit=lambda host, target: (100, None, None),
                     reactor=h.clock)
    channel = site.buildProtocol(IPv4Address("TCP", "192.0.2.7", 5555))
    channel.makeConnection(StringTransport())
    channel.dataReceived(raw)
    return [e for e in events if e.get("log_namespace") == "oidcproxy.access"]


class RefusedUserTests(SynchronousTestCase):
    """
    A request the guard refuses with 403 although it knows who sent it (a
    claim rule, the CSRF check, the WebSocket origin check) names the user
    in the access log, as an allowed one does.
    """

    ROUTES = [
        {"path": "/admin", "upstream": "http://up.test", "rule": "Contains(`groups`, `admins`)"},
        {"path": "/api", "upstream": "http://up.test", "auth": "bearer",
         "rule": "Equals(`access_token.scope`, `write`)"},
        {"path": "/", "upstream": "http://up.test"},
    ]

    def refused(self, h: GuardStack, lines: List[bytes]) -> Tuple[int, str, str]:
        raw = b"\r\n".join([*lines, b"Host: app.test", b"Content-Length: 0", b"", b""])
        (event,) = access_log(self, h, raw)
        self.assertEqual(h.app.requests, [])
        return event["status"], event["user"], event["auth"]

    def session(self, **config: Any) -> Tuple[GuardStack, bytes]:
        h = GuardStack(self, make_config(username_claim="email", routes=self.ROUTES, **config),
                       idp=RecordingIdP)
        browser = h.logged_in(sub="u-1", claims={"email": "a@x.test", "groups": ["staff"]})
        h.app.requests.clear()
        return h, b"Cookie: " + browser.cookie_header()

    def test_rule(self):
        h, cookie = self.session()
        self.assertEqual(
            self.refused(h, [b"GET /admin HTTP/1.1", b"Accept: application/json", cookie]),
            (403, "a@x.test", "denied"))

    def test_rule_on_a_bearer_token(self):
        from .test_guard_authz import access_token

        h = GuardStack(self, make_config(username_claim="client_id", routes=self.ROUTES),
                       idp=RecordingIdP)
        token = access_token(h, client_id="svc-client").encode("ascii")
        self.assertEqual(
            self.refused(h, [b"GET /api/x HTTP/1.1", b"Accept: application/json",
                             b"Authorization: Bearer " + token]),
            (403, "svc-client", "denied"))

    def test_csrf(self):
        h, cookie = self.session(csrf={})
        self.assertEqual(
            self.refused(h, [b"POST /x HTTP/1.1", b"Accept: application/json", cookie]),
            (403, "a@x.test", "csrf_refused"))

    def test_not_once_the_session_ended(self):
        """A session that ends at refresh names nobody: the request is unauthenticated."""
        from .test_guard_session import NEAR_EXPIRY

        h = GuardStack(self)
        browser = h.logged_in(sub="u-1")
        h.app.requests.clear()
        h.idp.refresh_error = (400, "invalid_grant")
        h.clock.advance(NEAR_EXPIRY)
        self.assertEqual(
            self.refused(h, [b"GET /x HTTP/1.1", b"Accept: application/json",
                             b"Cookie: " + browser.cookie_header()]),
            (401, "-", "unauthenticated"))

    def test_websocket_origin(self):
        h, cookie = self.session()
        self.assertEqual(
            self.refused(h, [b"GET /ws HTTP/1.1", b"Upgrade: websocket", b"Connection: Upgrade",
                             b"Sec-WebSocket-Version: 13",
                             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                             b"Origin: https://evil.test", cookie]),
            (403, "a@x.test", "origin_refused"))


# -- the IdP client: retries, TLS ---------------------------------------------------------


class RetryTests(SynchronousTestCase):
    def provider(self, max_retries: int) -> Any:
        stack = ProviderStack(RecordingIdP, start=False, max_retries=max_retries)
        self.addCleanup(stack.provider.stop)
        return stack.provider, stack.idp, stack.network, stack.clock

    def test_discovery_retried(self):
        """A discovery request answered 503 is made again after the backoff (0.5 s)."""
        provider, idp, network, clock = self.provider(max_retries=2)
        idp.failures[b"/.well-known/openid-configuration"] = 1
        provider.start()
        network.pump()
        self.assertFalse(provider.ready)
        clock.advance(0.5)
        network.pump()
        self.assertTrue(provider.ready)
        self.assertEqual(idp.count(b"/.well-known/openid-configuration"), 2)

    def test_not_retried_by_default(self):
        """max_retries = 0: no retry at 0.5 s (only the background loop's, later)."""
        provider, idp, network, clock = self.provider(max_retries=0)
        idp.failures[b"/.well-known/openid-configuration"] = 1
        provider.start()
        network.pump()
        clock.advance(0.5)
        network.pump()
        self.assertFalse(provider.ready)
        self.assertEqual(idp.count(b"/.well-known/openid-configuration"), 1)

    def test_jwks_retried_with_growing_backoff(self):
        """The JWKS request is retried too, waiting 0.5 s, then 1 s."""
        provider, idp, network, clock = self.provider(max_retries=3)
        idp.failures[b"/jwks"] = 2
        provider.start()
        network.pump()
        clock.advance(0.5)
        network.pump()
        self.assertEqual(idp.count(b"/jwks"), 2)
        clock.advance(0.9)
        network.pump()
        self.assertEqual(idp.count(b"/jwks"), 2)
        clock.advance(0.1)
        network.pump()
        self.assertTrue(provider.ready)
        self.assertEqual(idp.count(b"/jwks"), 3)

    def test_gives_up_after_max_retries(self):
        """After max_retries more attempts the failure is the caller's."""
        provider, idp, network, clock = self.provider(max_retries=1)
        idp.failures[b"/.well-known/openid-configuration"] = 5
        d = Deferred.fromCoroutine(provider._discover())
        network.pump()
        clock.advance(0.5)
        network.pump()
        error = self.failureResultOf(d, ProviderError).value
        self.assertEqual((error.reason, idp.count(b"/.well-known/openid-configuration")),
                         ("bad_status", 2))

    def test_userinfo_retried(self):
        """A userinfo request answered 503 is retried."""
        provider, idp, network, clock = self.provider(max_retries=1)
        provider.start()
        network.pump()
        idp._userinfo["at-1"] = {"sub": "u-1"}
        idp.failures[b"/userinfo"] = 1
        d = Deferred.fromCoroutine(provider.userinfo("at-1"))
        network.pump()
        self.assertNoResult(d)
        clock.advance(0.5)
        network.pump()
        self.assertEqual(self.successResultOf(d)["sub"], "u-1")

    def test_token_request_never_retried(self):
        """A code exchange answered 503 is not made again, whatever max_retries says."""
        provider, idp, network, clock = self.provider(max_retries=3)
        provider.start()
        network.pump()
        idp.failures[b"/token"] = 1
        d = Deferred.fromCoroutine(provider.exchange_code("code-1", APP + "/cb", None))
        network.pump()
        for _ in range(10):
            clock.advance(1)
            network.pump()
        self.failureResultOf(d, ProviderError)
        self.assertEqual(idp.count(b"/token"), 1)

    def test_stop_during_backoff(self):
        """Stopping the provider ends a wait between attempts: 503 stopped."""
        provider, idp, network, clock = self.provider(max_retries=2)
        idp.failures[b"/.well-known/openid-configuration"] = 1
        d = Deferred.fromCoroutine(provider._discover())
        network.pump()
        provider.stop()
        self.assertEqual(self.failureResultOf(d, ProviderError).value.reason, "stopped")
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_config_reaches_the_guards_provider(self):
        """oidc.max_retries is the provider's: the guard's discovery is retried."""
        h = GuardStack(self, make_config(oidc={"max_retries": 2}), start=False, idp=RecordingIdP)
        h.idp.failures[b"/.well-known/openid-configuration"] = 1
        h.guard.start()
        h.network.pump()
        h.clock.advance(0.5)
        h.network.pump()
        self.assertTrue(h.guard.parts.provider.ready)

    def test_validation(self):
        """max_retries is an integer from 0 to 10."""
        self.assertEqual(make_config().oidc.max_retries, 0)
        self.assertEqual(problems(oidc={"max_retries": 11}),
                         ["oidc.max_retries: 11 is out of range; expected between 0 and 10"])


class IdPTLSTests(SynchronousTestCase):
    def test_client_certificate_policy(self):
        """client_cert and client_key make the IdP client present that certificate."""
        from oidcproxy.core.tls import ClientCertificatePolicy
        from oidcproxy.oidc.provider import make_http_client

        files = pki(self)
        client = make_http_client(Clock(), files["ca"], client_cert=files["client"],
                                  client_key=files["client_key"])
        policy = client._agent._endpointFactory._policyForHTTPS  # type: ignore[attr-defined]
        self.assertIsInstance(policy, ClientCertificatePolicy)
        self.assertIsNotNone(policy.certificate)

    def test_insecure_policy(self):
        """insecure_skip_verify makes the IdP client verify nothing."""
        from oidcproxy.core.tls import UnverifiedPolicy
        from oidcproxy.oidc.provider import make_http_client

        client = make_http_client(Clock(), insecure_skip_verify=True)
        self.assertIsInstance(client._agent._endpointFactory._policyForHTTPS,  # type: ignore[attr-defined]
                              UnverifiedPolicy)

    def test_client_certificate_config(self):
        """oidc.client_cert needs oidc.client_key (both or neither)."""
        files = pki(self)
        config = make_config(oidc={"client_cert": files["client"],
                                   "client_key": files["client_key"]})
        self.assertEqual((config.oidc.client_cert, config.oidc.client_key),
                         (files["client"], files["client_key"]))
        self.assertEqual(problems(oidc={"client_cert": files["client"]}),
                         ["oidc.client_key: is required with client_cert (both or neither)"])

    def test_insecure_needs_https(self):
        """insecure_skip_verify with an http issuer is a config error saying so."""
        self.assertEqual(
            problems(oidc={"issuer": "http://idp.test", "insecure_skip_verify": True}),
            ["oidc.insecure_skip_verify: only makes sense with an https issuer "
             "('http://idp.test' is not TLS)"])

    def test_insecure_with_ca_bundle(self):
        """insecure_skip_verify with a ca_bundle is a contradiction."""
        files = pki(self)
        self.assertEqual(problems(oidc={"insecure_skip_verify": True, "ca_bundle": files["ca"]}),
                         ["oidc.insecure_skip_verify: cannot be combined with ca_bundle"])

    def test_insecure_warns_at_start_and_reload(self):
        """insecure_skip_verify logs a warning at every start and every reload."""
        events = captured_log(self)
        config = make_config(oidc={"insecure_skip_verify": True})
        h = GuardStack(self, config, idp=RecordingIdP)
        warned = [m for m in messages(events) if "insecure_skip_verify is on" in m]
        self.assertEqual(len(warned), 1)
        h.guard.reconfigure(config, h.guard.routes, h.app)
        warned = [m for m in messages(events) if "insecure_skip_verify is on" in m]
        self.assertEqual(len(warned), 2)

    def test_no_warning_by_default(self):
        """Without it, nothing is said."""
        events = captured_log(self)
        GuardStack(self, idp=RecordingIdP)
        self.assertEqual([m for m in messages(events) if "insecure_skip_verify" in m], [])


class StoreUsedTests(SynchronousTestCase):
    def test_memory_store_sliding(self):
        """Sliding works with any store: a memory store's session moves too."""
        h = GuardStack(self, make_config(session=SlidingSessionTests.SLIDING), store=MemoryStore,
                       idp=RecordingIdP)
        store = h.store
        browser = h.logged_in()
        h.clock.advance(600)
        browser.get("/x", headers=API)
        (session,) = store._sessions.values()
        self.assertEqual(session.expires, START + 1800)
