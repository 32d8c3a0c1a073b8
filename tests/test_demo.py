"""
Tests for L{oidcproxy.tools.demo}: the development OpenID Provider's endpoints with
good and bad input, the echo application, the whole login through the guard
in memory, and C{--demo} in the twistd plugin (loopback only).

The provider and the guard run on one L{Clock}; the guard reaches the
provider through treq's C{StubTreq}; browsers are L{tests.idp.Browser}s, one
per origin (the proxy's, the provider's), each with its own cookies.
"""

from __future__ import annotations

import base64
import io
import json
import re
import socket
import sys
from datetime import datetime, timezone
from typing import Any, Dict, List, Optional
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from oidcproxy import OIDCGuard, tap
from oidcproxy.oidc.provider import ClientAuth, Provider
from oidcproxy.oidc.tokens import IDTokenValidator, JWTVerifier, KeySet
from oidcproxy.service import ProxyService
from oidcproxy.tools import demo
from oidcproxy.tools.demo import (
    BANNER,
    BROWSER_COOKIE,
    CODE_LIFETIME,
    DEMO_USERS,
    TOKEN_LIFETIME,
    DevelopmentProvider,
    EchoUpstream,
    demo_client,
    demo_config,
    parse_loopback_endpoint,
)
from oidcproxy.tools.demo.echo import token_lifetime

from .fakes import SECRET
from .helpers import missing
from .idp import SIGNING_KEY, Browser, Network, Page, s256

PROXY = "http://127.0.0.1:8080"
ISSUER = "http://127.0.0.1:8081"
ECHO = "http://127.0.0.1:8082"
CALLBACK = PROXY + "/oidc/callback"
CLIENT_SECRET = "demo-client-secret-for-the-tests"
SESSION_SECRET = SECRET
VERIFIER = "v" * 43
START = 1_700_000_000.0
FORM = {b"content-type": [b"application/x-www-form-urlencoded"]}
NAVIGATE = {b"accept": [b"text/html"], b"sec-fetch-mode": [b"navigate"]}
JSON = {b"accept": [b"application/json"]}
BANNER_HTML = BANNER.encode("utf-8")


def basic(client_id: str, secret: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{client_id}:{secret}".encode("ascii"))


def hidden_login(page: Page) -> str:
    """The login form's hidden C{login} field."""
    match = re.search(rb'name="login" value="([^"]+)"', page.body)
    assert match is not None, page.body
    return match.group(1).decode("ascii")


def query_of(location: Optional[str]) -> Dict[str, str]:
    assert location is not None
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


class IdP:
    """The development provider on a Clock, with a browser and a client of its own."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.config = demo_config(PROXY, ISSUER, ECHO, CLIENT_SECRET, SESSION_SECRET)
        self.client = demo_client(self.config)
        self.provider = DevelopmentProvider(ISSUER, self.client, self.clock,
                                            signing_key=SIGNING_KEY)
        self.resource = self.provider.resource()
        self.network = Network()
        self.browser = Browser(self.network, self.resource, ISSUER)
        self.backchannel = Browser(self.network, self.resource, ISSUER)

    def authorize(self, **changes: Optional[str]) -> Page:
        params: Dict[str, Optional[str]] = {
            "response_type": "code", "client_id": "oidcproxy-demo", "redirect_uri": CALLBACK,
            "scope": "openid profile email groups", "state": "st-1", "nonce": "n-1",
            "code_challenge": s256(VERIFIER), "code_challenge_method": "S256",
        }
        params.update(changes)
        query = urlencode({k: v for k, v in params.items() if v is not None})
        return self.browser.navigate("/authorize?" + query)

    def post_login(self, login: str, username: str, password: str,
                   headers: Optional[Dict[bytes, List[bytes]]] = None, **extra: str) -> Page:
        fields = {"login": login, "username": username, "password": password, "action": "login",
                  **extra}
        return self.browser.request(b"POST", "/authorize",
                                    headers={**FORM, b"origin": [ISSUER.encode()],
                                             **(headers or {})},
                                    body=urlencode(fields).encode("ascii"))

    def code(self, username: str = "alice", password: str = "wonderland", **changes: str) -> str:
        """A code from a whole login at the form."""
        page = self.post_login(hidden_login(self.authorize(**changes)), username, password)
        assert page.code == 303, page.body
        return query_of(page.location)["code"]

    def token(self, auth: Optional[bytes] = None, **fields: str) -> Page:
        headers = {**FORM, b"authorization": [auth or basic("oidcproxy-demo", CLIENT_SECRET)]}
        return self.backchannel.request(b"POST", "/token", headers=headers,
                                        body=urlencode(fields).encode("ascii"))

    def exchange(self, code: str, **changes: str) -> Page:
        fields = {"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK,
                  "code_verifier": VERIFIER, **changes}
        return self.token(**fields)

    def refresh(self, refresh_token: str) -> Page:
        return self.token(grant_type="refresh_token", refresh_token=refresh_token)

    def userinfo(self, access_token: str) -> Page:
        return self.backchannel.get("/userinfo", headers={
            b"authorization": [b"Bearer " + access_token.encode("ascii")]})

    def keys(self) -> KeySet:
        return KeySet.from_jwks(self.backchannel.get("/jwks").json())


class DiscoveryTests(SynchronousTestCase):
    def test_discovery_names_every_endpoint(self):
        """The discovery document is for the issuer and names every endpoint under it."""
        idp = IdP()
        page = idp.backchannel.get("/.well-known/openid-configuration")
        self.assertEqual(page.code, 200)
        document = page.json()
        self.assertEqual(document["issuer"], ISSUER)
        for name, path in [("authorization_endpoint", "/authorize"), ("token_endpoint", "/token"),
                           ("jwks_uri", "/jwks"), ("userinfo_endpoint", "/userinfo"),
                           ("end_session_endpoint", "/end_session"),
                           ("revocation_endpoint", "/revoke")]:
            self.assertEqual(document[name], ISSUER + path)
        self.assertEqual(document["code_challenge_methods_supported"], ["S256"])
        self.assertTrue(document["authorization_response_iss_parameter_supported"])

    def test_jwks_holds_the_public_key_only(self):
        """The JWKS holds one RSA signing key with its kid, and no private part."""
        idp = IdP()
        (key,) = idp.backchannel.get("/jwks").json()["keys"]
        self.assertEqual((key["kty"], key["alg"], key["use"], key["kid"]),
                         ("RSA", "RS256", "sig", idp.provider.key_id))
        self.assertNotIn("d", key)

    def test_unknown_path_is_404_with_the_banner(self):
        """An unknown path gets the provider's 404 page, banner included."""
        page = IdP().browser.get("/nothing/here")
        self.assertEqual(page.code, 404)
        self.assertIn(BANNER_HTML, page.body)


class AuthorizeTests(SynchronousTestCase):
    def test_login_form_lists_the_demo_users(self):
        """
        A good authorization request gets the login form with the banner, a
        hidden login id, every demo user and password, and a cookie that
        binds the form to this browser (HttpOnly, Path=/authorize).
        """
        idp = IdP()
        page = idp.authorize()
        self.assertEqual(page.code, 200)
        self.assertIn(BANNER_HTML, page.body)
        self.assertIn(b'<form method="post" action="/authorize">', page.body)
        hidden_login(page)
        for user in DEMO_USERS:
            self.assertIn(user.username.encode(), page.body)
            self.assertIn(user.password.encode(), page.body)
        cookie = page.cookie(BROWSER_COOKIE)
        assert cookie is not None
        self.assertTrue(cookie.has("httponly"))
        self.assertEqual(cookie.attributes["path"], "/authorize")
        self.assertIn(b"frame-ancestors 'none'", page.header(b"content-security-policy") or b"")

    def test_request_values_are_escaped(self):
        """What the request says is shown escaped on the form."""
        page = IdP().authorize(scope="openid <script>alert(1)</script>")
        self.assertEqual(page.code, 200)
        self.assertNotIn(b"<script>", page.body)
        self.assertIn(b"&lt;script&gt;", page.body)

    def test_unknown_client_gets_an_error_page(self):
        """An unknown client_id gets a 400 page, never a redirect."""
        page = IdP().authorize(client_id="someone-else")
        self.assertEqual(page.code, 400)
        self.assertIsNone(page.location)
        self.assertIn(b"client_id", page.body)
        self.assertIn(BANNER_HTML, page.body)

    def test_wrong_redirect_uri_gets_an_error_page(self):
        """A redirect_uri that is not the registered one gets a 400 page, never a redirect."""
        for uri in ["http://evil.test/oidc/callback", CALLBACK + "/x", None]:
            page = IdP().authorize(redirect_uri=uri)
            self.assertEqual(page.code, 400, uri)
            self.assertIsNone(page.location, uri)
            self.assertIn(b"redirect_uri", page.body)

    def test_bad_requests_redirect_with_an_error(self):
        """
        With a known client and redirect URI, a request without code
        response type, openid scope, state, nonce or an S256 PKCE challenge
        goes back to the client with the OAuth error, the state and the iss.
        """
        cases = [
            ({"response_type": "token"}, "unsupported_response_type"),
            ({"scope": "profile email"}, "invalid_scope"),
            ({"nonce": None}, "invalid_request"),
            ({"code_challenge": None}, "invalid_request"),
            ({"code_challenge_method": "plain"}, "invalid_request"),
            ({"code_challenge": "short"}, "invalid_request"),
        ]
        for changes, error in cases:
            page = IdP().authorize(**changes)
            self.assertEqual(page.code, 302, changes)
            assert page.location is not None
            self.assertTrue(page.location.startswith(CALLBACK + "?"), page.location)
            query = query_of(page.location)
            self.assertEqual((query["error"], query["state"], query["iss"]),
                             (error, "st-1", ISSUER), changes)
        page = IdP().authorize(state=None)
        self.assertEqual(query_of(page.location)["error"], "invalid_request")

    def test_repeated_parameter_is_refused(self):
        """A parameter given twice gets a 400 page."""
        idp = IdP()
        page = idp.browser.navigate("/authorize?client_id=oidcproxy-demo&client_id=x")
        self.assertEqual(page.code, 400)
        self.assertIn(b"repeated", page.body)

    def test_wrong_password_shows_the_form_again(self):
        """
        A wrong password (or an unknown user) shows the form again with an
        error and no redirect; the same form then works with the right one.
        """
        idp = IdP()
        login = hidden_login(idp.authorize())
        for username, password in [("alice", "builder"), ("mallory", "wonderland")]:
            page = idp.post_login(login, username, password)
            self.assertEqual(page.code, 200)
            self.assertIsNone(page.location)
            self.assertIn(b"Wrong user name or password.", page.body)
            self.assertIn(BANNER_HTML, page.body)
            self.assertEqual(hidden_login(page), login)
        page = idp.post_login(login, "alice", "wonderland")
        self.assertEqual(page.code, 303)

    def test_login_redirects_with_code_state_and_iss(self):
        """The right password sends the browser back (303) with a code, the state and the iss."""
        idp = IdP()
        page = idp.post_login(hidden_login(idp.authorize()), "bob", "builder")
        self.assertEqual(page.code, 303)
        assert page.location is not None
        self.assertTrue(page.location.startswith(CALLBACK + "?"))
        query = query_of(page.location)
        self.assertEqual((query["state"], query["iss"]), ("st-1", ISSUER))
        self.assertTrue(query["code"])

    def test_a_login_form_works_once(self):
        """A login form that was used cannot log in again."""
        idp = IdP()
        login = hidden_login(idp.authorize())
        self.assertEqual(idp.post_login(login, "alice", "wonderland").code, 303)
        page = idp.post_login(login, "alice", "wonderland")
        self.assertEqual(page.code, 400)
        self.assertIsNone(page.location)

    def test_cancel_redirects_with_access_denied(self):
        """Cancel sends the browser back with error=access_denied and the state."""
        idp = IdP()
        page = idp.post_login(hidden_login(idp.authorize()), "", "", action="cancel")
        self.assertEqual(page.code, 303)
        query = query_of(page.location)
        self.assertEqual((query["error"], query["state"]), ("access_denied", "st-1"))

    def test_form_from_another_browser_is_refused(self):
        """
        The form is bound to the browser that asked for it: a POST without
        that browser's cookie is refused (403).
        """
        idp = IdP()
        login = hidden_login(idp.authorize())
        idp.browser.jar.clear()
        page = idp.post_login(login, "alice", "wonderland")
        self.assertEqual(page.code, 403)
        self.assertIsNone(page.location)

    def test_cross_site_post_is_refused(self):
        """A POST from another origin (Origin or Sec-Fetch-Site) is refused (403)."""
        idp = IdP()
        login = hidden_login(idp.authorize())
        for headers in [{b"origin": [b"http://evil.test"]},
                        {b"sec-fetch-site": [b"cross-site"]}]:
            page = idp.post_login(login, "alice", "wonderland", headers=headers)
            self.assertEqual(page.code, 403, headers)
        self.assertEqual(idp.post_login(login, "alice", "wonderland").code, 303)


class TokenTests(SynchronousTestCase):
    def test_code_exchange_gives_valid_tokens(self):
        """
        The code, with its PKCE verifier and the client's secret, gives
        RS256 tokens: an ID token that oidcproxy's own validator accepts
        (issuer, audience, nonce, at_hash) with the user's claims, an access
        token typed at+jwt, and a refresh token.
        """
        idp = IdP()
        page = idp.exchange(idp.code())
        self.assertEqual(page.code, 200, page.body)
        self.assertEqual(page.header(b"cache-control"), b"no-store")
        tokens = page.json()
        self.assertEqual((tokens["token_type"], tokens["expires_in"]), ("Bearer", TOKEN_LIFETIME))
        validator = IDTokenValidator(ISSUER, "oidcproxy-demo", JWTVerifier(("RS256",)), idp.clock)
        claims = validator.validate(tokens["id_token"], idp.keys(), "n-1", tokens["access_token"])
        self.assertEqual((claims["sub"], claims["preferred_username"], claims["email"],
                          claims["groups"]),
                         ("demo-alice", "alice", "alice@example.com", ["admins", "staff"]))
        self.assertIn("at_hash", claims)
        self.assertEqual(jwt.get_unverified_header(tokens["access_token"])["typ"], "at+jwt")
        self.assertTrue(tokens["refresh_token"])

    def test_bad_pkce_verifier(self):
        """A wrong or missing PKCE verifier gets invalid_grant."""
        for verifier in ["w" * 43, ""]:
            idp = IdP()
            page = idp.exchange(idp.code(), code_verifier=verifier)
            self.assertEqual((page.code, page.json()["error"]), (400, "invalid_grant"))

    def test_replayed_code_is_refused_and_revokes(self):
        """
        A code works once: the second exchange gets invalid_grant, and the
        refresh token the first one gave stops working (RFC 6749, 4.1.2).
        """
        idp = IdP()
        code = idp.code()
        first = idp.exchange(code)
        self.assertEqual(first.code, 200)
        page = idp.exchange(code)
        self.assertEqual((page.code, page.json()["error"]), (400, "invalid_grant"))
        page = idp.refresh(first.json()["refresh_token"])
        self.assertEqual((page.code, page.json()["error"]), (400, "invalid_grant"))

    def test_wrong_redirect_uri(self):
        """A token request with another redirect_uri than the authorization's gets invalid_grant."""
        idp = IdP()
        page = idp.exchange(idp.code(), redirect_uri=PROXY + "/elsewhere")
        self.assertEqual((page.code, page.json()["error"]), (400, "invalid_grant"))

    def test_expired_code(self):
        """A code older than CODE_LIFETIME gets invalid_grant; a younger one works."""
        idp = IdP()
        code = idp.code()
        idp.clock.advance(CODE_LIFETIME + 1)
        page = idp.exchange(code)
        self.assertEqual((page.code, page.json()["error"]), (400, "invalid_grant"))
        code = idp.code()
        idp.clock.advance(CODE_LIFETIME - 1)
        self.assertEqual(idp.exchange(code).code, 200)

    def test_client_authentication(self):
        """
        A wrong secret or client id gets 401 invalid_client with a Basic
        challenge; client_secret_post works as well as Basic.
        """
        idp = IdP()
        code = idp.code()
        for auth in [basic("oidcproxy-demo", "wrong"), basic("other", CLIENT_SECRET),
                     b"Basic !!!", b"Bearer x"]:
            page = idp.token(
                auth=auth, grant_type="authorization_code", code=code, redirect_uri=CALLBACK,
                code_verifier=VERIFIER)
            self.assertEqual((page.code, page.json()["error"]), (401, "invalid_client"), auth)
            self.assertIn(b"Basic", page.header(b"www-authenticate") or b"")
        fields = {"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK,
                  "code_verifier": VERIFIER, "client_id": "oidcproxy-demo",
                  "client_secret": CLIENT_SECRET}
        page = idp.backchannel.request(b"POST", "/token", headers=FORM,
                                       body=urlencode(fields).encode("ascii"))
        self.assertEqual(page.code, 200, page.body)

    def test_unsupported_grant_type(self):
        """Other grant types get unsupported_grant_type."""
        page = IdP().token(grant_type="password", username="alice", password="wonderland")
        self.assertEqual((page.code, page.json()["error"]), (400, "unsupported_grant_type"))

    def test_refresh_rotates(self):
        """
        A refresh gives new tokens and a new refresh token (ID token without
        a nonce, same sub); the old refresh token is then refused, and using
        it again revokes the whole login, the new refresh token included.
        """
        idp = IdP()
        first = idp.exchange(idp.code()).json()
        idp.clock.advance(TOKEN_LIFETIME - 10)
        page = idp.refresh(first["refresh_token"])
        self.assertEqual(page.code, 200, page.body)
        second = page.json()
        self.assertNotEqual(second["refresh_token"], first["refresh_token"])
        self.assertNotEqual(second["access_token"], first["access_token"])
        validator = IDTokenValidator(ISSUER, "oidcproxy-demo", JWTVerifier(("RS256",)), idp.clock)
        claims = validator.validate(second["id_token"], idp.keys(), None, second["access_token"])
        self.assertEqual(claims["sub"], "demo-alice")
        self.assertNotIn("nonce", claims)
        page = idp.refresh(first["refresh_token"])
        self.assertEqual((page.code, page.json()["error"]), (400, "invalid_grant"))
        page = idp.refresh(second["refresh_token"])
        self.assertEqual((page.code, page.json()["error"]), (400, "invalid_grant"))


class UserinfoRevokeTests(SynchronousTestCase):
    def test_userinfo(self):
        """The access token gets the user's claims; none, a bad or an expired one gets 401."""
        idp = IdP()
        tokens = idp.exchange(idp.code("bob", "builder")).json()
        page = idp.userinfo(tokens["access_token"])
        self.assertEqual(page.code, 200)
        self.assertEqual(page.json(), {"sub": "demo-bob", "name": "Bob Builder",
                                       "preferred_username": "bob", "email": "bob@example.com",
                                       "email_verified": True, "groups": ["staff"]})
        self.assertEqual(idp.backchannel.get("/userinfo").code, 401)
        for bad in [tokens["id_token"], tokens["access_token"] + "x", "opaque"]:
            page = idp.userinfo(bad)
            self.assertEqual(page.code, 401)
            self.assertIn(b"invalid_token", page.header(b"www-authenticate") or b"")
        idp.clock.advance(TOKEN_LIFETIME)
        self.assertEqual(idp.userinfo(tokens["access_token"]).code, 401)

    def test_revoke(self):
        """
        Revoking an access token ends it at userinfo; revoking a refresh
        token ends it and the login's access tokens.
        """
        idp = IdP()
        tokens = idp.exchange(idp.code()).json()
        headers = {**FORM, b"authorization": [basic("oidcproxy-demo", CLIENT_SECRET)]}

        def revoke(token: str) -> int:
            return idp.backchannel.request(b"POST", "/revoke", headers=headers,
                                           body=urlencode({"token": token}).encode()).code

        self.assertEqual(revoke(tokens["access_token"]), 200)
        self.assertEqual(idp.userinfo(tokens["access_token"]).code, 401)
        again = idp.exchange(idp.code()).json()
        self.assertEqual(revoke(again["refresh_token"]), 200)
        self.assertEqual(idp.refresh(again["refresh_token"]).code, 400)
        self.assertEqual(idp.userinfo(again["access_token"]).code, 401)
        self.assertEqual(revoke("unknown"), 200)


class EndSessionTests(SynchronousTestCase):
    def end_session(self, idp: IdP, **params: str) -> Page:
        return idp.browser.navigate("/end_session?" + urlencode(params))

    def test_logout_goes_back_and_revokes(self):
        """
        With a valid (even expired) id_token_hint and a registered
        post_logout_redirect_uri, the browser goes back there with the
        state, and the login's refresh token stops working.
        """
        idp = IdP()
        tokens = idp.exchange(idp.code()).json()
        idp.clock.advance(TOKEN_LIFETIME + 60)
        page = self.end_session(idp, id_token_hint=tokens["id_token"], client_id="oidcproxy-demo",
                                post_logout_redirect_uri=PROXY + "/public/", state="s9")
        self.assertEqual(page.code, 302)
        self.assertEqual(page.location, PROXY + "/public/?state=s9")
        self.assertEqual(idp.refresh(tokens["refresh_token"]).code, 400)

    def test_unregistered_post_logout_redirect_uri(self):
        """An unregistered post_logout_redirect_uri gets a 400 page, never a redirect."""
        idp = IdP()
        tokens = idp.exchange(idp.code()).json()
        page = self.end_session(idp, id_token_hint=tokens["id_token"],
                                post_logout_redirect_uri="http://evil.test/")
        self.assertEqual(page.code, 400)
        self.assertIsNone(page.location)
        self.assertIn(BANNER_HTML, page.body)
        self.assertEqual(idp.refresh(tokens["refresh_token"]).code, 200)

    def test_bad_hint(self):
        """A hint that is not this provider's ID token (an access token, garbage) gets 400."""
        idp = IdP()
        tokens = idp.exchange(idp.code()).json()
        for hint in [tokens["access_token"], "x.y.z"]:
            page = self.end_session(idp, id_token_hint=hint,
                                    post_logout_redirect_uri=PROXY + "/public/")
            self.assertEqual(page.code, 400)
            self.assertIsNone(page.location)

    def test_redirect_needs_hint_or_client(self):
        """post_logout_redirect_uri without id_token_hint or client_id gets 400."""
        page = self.end_session(IdP(), post_logout_redirect_uri=PROXY + "/public/")
        self.assertEqual(page.code, 400)

    def test_without_redirect_a_page(self):
        """Without post_logout_redirect_uri the provider shows a logged-out page."""
        page = self.end_session(IdP())
        self.assertEqual(page.code, 200)
        self.assertIn(BANNER_HTML, page.body)


class EchoTests(SynchronousTestCase):
    def setUp(self):
        self.browser = Browser(Network(), EchoUpstream(
            ["X-Forwarded-User", "X-Forwarded-Groups"], public_url=PROXY), ECHO)

    def test_html_highlights_identity_headers(self):
        """
        The HTML page lists the method, path and every header, the identity
        headers highlighted, everything escaped, with links to the logout, a
        public page and the session.
        """
        page = self.browser.navigate("/some/path?q=1", headers={
            b"x-forwarded-user": [b"alice"], b"x-other": [b"<b>bold</b>"]})
        self.assertEqual(page.code, 200)
        self.assertIn(b"GET /some/path", page.body)
        self.assertIn(b"<tr class=identity><td>X-Forwarded-User</td><td>alice</td></tr>", page.body)
        self.assertIn(b"<tr><td>X-Other</td><td>&lt;b&gt;bold&lt;/b&gt;</td></tr>", page.body)
        self.assertNotIn(b"<b>bold</b>", page.body)
        for link in [b'href="/oidc/logout', b'href="/public/"', b'href="/oidc/userinfo"']:
            self.assertIn(link, page.body)
        self.assertIn(b"not for production", page.body)

    def test_token_lifetime(self):
        """The lifetime shown comes from the token's iat and exp; nothing without them."""
        def token(**claims: Any) -> str:
            return "e30." + base64.urlsafe_b64encode(
                json.dumps(claims).encode()).decode().rstrip("=") + ".sig"

        self.assertEqual(token_lifetime(token(iat=1_700_000_000, exp=1_700_000_300)),
                         "valid for 5 minutes, until 22:18:20 UTC")
        self.assertEqual(token_lifetime(token(iat=0, exp=7200)), "valid for 2 hours, until "
                         "02:00:00 UTC")
        self.assertEqual(token_lifetime(token(iat=0, exp=61)), "valid for 61 seconds, until "
                         "00:01:01 UTC")
        for bad in ["opaque", "a.!!!.c", token(iat=1), token(iat="1", exp=2),
                    token(iat=10, exp=5), token(iat=True, exp=300), "e30.W10.x",
                    token(iat=0, exp=10**20)]:
            self.assertIsNone(token_lifetime(bad), bad)

    def test_curl_with_lifetime(self):
        """The page shows the forwarded access token in a curl command, with how long it lasts."""
        access = "e30." + base64.urlsafe_b64encode(
            b'{"iat": 1700000000, "exp": 1700000300}').decode().rstrip("=") + ".sig"
        browser = Browser(Network(), EchoUpstream(
            ["X-Forwarded-User", "X-Forwarded-Access-Token"], public_url=PROXY), ECHO)
        page = browser.navigate("/", headers={
            b"x-forwarded-user": [b"alice"], b"x-forwarded-access-token": [access.encode()]})
        self.assertIn(f"curl -H 'Authorization: Bearer {access}' {PROXY}/api/".encode(), page.body)
        self.assertIn(b"This token is valid for 5 minutes, until 22:18:20 UTC", page.body)
        page = browser.navigate("/", headers={
            b"x-forwarded-user": [b"alice"], b"x-forwarded-access-token": [b"opaque"]})
        self.assertIn(b"curl -H 'Authorization: Bearer opaque'", page.body)
        self.assertNotIn(b"This token is", page.body)

    def test_json(self):
        """With Accept: application/json the same, as JSON."""
        page = self.browser.get("/x", headers={**JSON, b"x-forwarded-groups": [b"a,b"]})
        self.assertEqual(page.header(b"content-type"), b"application/json")
        document = page.json()
        self.assertEqual((document["method"], document["path"]), ("GET", "/x"))
        self.assertEqual(document["identity"], {"X-Forwarded-Groups": "a,b"})
        self.assertIn(["X-Forwarded-Groups", "a,b"], document["headers"])


class DemoLoginTests(SynchronousTestCase):
    """The whole demo login, through the real guard, in memory."""

    def setUp(self):
        self.idp = IdP()
        config = self.idp.config
        assert config.oidc is not None
        stub = self.idp.network.add(StubTreq(self.idp.resource))
        provider = Provider(ISSUER, ClientAuth(client_id="oidcproxy-demo",
                                               client_secret=CLIENT_SECRET),
                            stub, self.idp.clock)
        echo = EchoUpstream([name for name, _ in config.headers] + ["X-Forwarded-Access-Token"],
                            public_url=PROXY)
        self.guard = OIDCGuard(config, echo, self.idp.clock, provider=provider)
        self.addCleanup(self.guard.stop)
        self.guard.start()
        self.idp.network.pump()

    def login(self, username: str, password: str, path: str = "/") -> Browser:
        """A browser logged in as C{username}, having landed on C{path}."""
        browser = Browser(self.idp.network, self.guard, PROXY)
        page = browser.navigate(path)
        self.assertEqual(page.code, 302, page.body)
        assert page.location is not None
        self.assertTrue(page.location.startswith(ISSUER + "/authorize?"))
        form = self.idp.browser.navigate(page.location)
        self.assertEqual(form.code, 200, form.body)
        back = self.idp.post_login(hidden_login(form), username, password)
        self.assertEqual(back.code, 303, back.body)
        assert back.location is not None
        self.assertTrue(back.location.startswith(CALLBACK + "?"))
        page = browser.navigate(back.location)
        self.assertEqual((page.code, page.location), (302, PROXY + path), page.body)
        return browser

    def echo(self, browser: Browser, path: str, **kwargs: Any) -> Page:
        return browser.get(path, headers={**JSON, **kwargs.pop("headers", {})}, **kwargs)

    def test_alice_logs_in_and_sees_her_headers(self):
        """
        alice logs in at the form and the echo application receives her
        identity headers; she may see the admins-only page.
        """
        browser = self.login("alice", "wonderland")
        page = browser.navigate("/")
        self.assertEqual(page.code, 200)
        self.assertIn(b"<td>X-Forwarded-User</td><td>alice</td>", page.body)
        identity = self.echo(browser, "/").json()["identity"]
        self.assertEqual((identity["X-Forwarded-User"], identity["X-Forwarded-Email"],
                          identity["X-Forwarded-Groups"]),
                         ("alice", "alice@example.com", "admins,staff"))
        self.assertEqual(self.echo(browser, "/admin/").code, 200)

    def test_bob_is_refused_the_admin_page(self):
        """bob is logged in but not in admins: the rule route answers 403."""
        browser = self.login("bob", "builder")
        self.assertEqual(self.echo(browser, "/").json()["identity"]["X-Forwarded-User"], "bob")
        page = browser.navigate("/admin/")
        self.assertEqual(page.code, 403)

    def test_api_route_takes_the_access_token(self):
        """
        The /api route refuses the session (401) and takes the access token
        the proxy forwarded to the echo page, with alice's identity.
        """
        browser = self.login("alice", "wonderland")
        token = self.echo(browser, "/").json()["identity"]["X-Forwarded-Access-Token"]
        self.assertEqual(self.echo(browser, "/api/").code, 401)
        api = Browser(self.idp.network, self.guard, PROXY)
        page = self.echo(api, "/api/x", headers={b"authorization": [b"Bearer " + token.encode()]})
        self.assertEqual(page.code, 200, page.body)
        self.assertEqual(page.json()["identity"]["X-Forwarded-User"], "alice")

    def test_page_says_how_long_the_token_lasts(self):
        """
        The echo page's curl command comes with the token's lifetime and end,
        from its own iat and exp: the demo's tokens last 5 minutes.
        """
        browser = self.login("alice", "wonderland")
        page = browser.navigate("/")
        token = self.echo(browser, "/").json()["identity"]["X-Forwarded-Access-Token"]
        self.assertIn(f"Authorization: Bearer {token}".encode(), page.body)
        claims = jwt.decode(token, options={"verify_signature": False})
        until = datetime.fromtimestamp(claims["exp"], timezone.utc).strftime("%H:%M:%S")
        self.assertEqual(TOKEN_LIFETIME, 300)
        self.assertIn(f"This token is valid for 5 minutes, until {until} UTC".encode(), page.body)

    def test_public_page_needs_no_login(self):
        """/public/ reaches the echo application without a login and without identity."""
        browser = Browser(self.idp.network, self.guard, PROXY)
        page = self.echo(browser, "/public/")
        self.assertEqual((page.code, page.json()["identity"]), (200, {}))

    def test_session_refreshes_at_the_provider(self):
        """Near the access token's expiry the guard refreshes it at the provider, and alice stays."""
        browser = self.login("alice", "wonderland")
        first = self.echo(browser, "/").json()["identity"]["X-Forwarded-Access-Token"]
        self.idp.clock.advance(TOKEN_LIFETIME - 30)
        page = self.echo(browser, "/")
        self.assertEqual(page.code, 200)
        identity = page.json()["identity"]
        self.assertEqual(identity["X-Forwarded-User"], "alice")
        self.assertNotEqual(identity["X-Forwarded-Access-Token"], first)

    def test_logout_ends_the_session_at_the_provider(self):
        """
        Logout clears the session, goes through the provider's end_session
        and back to /public/; the refresh token is revoked and / asks for a
        login again.
        """
        browser = self.login("alice", "wonderland")
        page = browser.request(b"POST", "/oidc/logout", headers={
            **FORM, b"origin": [PROXY.encode()]}, body=b"rd=/public/")
        self.assertEqual(page.code, 303, page.body)
        assert page.location is not None
        self.assertTrue(page.location.startswith(ISSUER + "/end_session?"), page.location)
        back = self.idp.browser.navigate(page.location)
        self.assertEqual((back.code, back.location), (302, PROXY + "/public/"), back.body)
        self.assertEqual(self.idp.provider._grants, {})
        page = browser.navigate("/")
        self.assertEqual(page.code, 302)
        assert page.location is not None
        self.assertTrue(page.location.startswith(ISSUER + "/authorize?"))


# -- the twistd plugin ---------------------------------------------------------------


class DemoConfigTests(SynchronousTestCase):
    def test_routes_and_sessions(self):
        """
        The demo's configuration: cookie sessions with the given secret, the
        login route, a public one, a bearer one and one with a claim rule.
        """
        config = demo_config(PROXY, ISSUER, ECHO, CLIENT_SECRET, SESSION_SECRET)
        self.assertEqual(config.session.store, "cookie")
        self.assertEqual([s.reveal() for s in config.session.secrets], [SESSION_SECRET])
        self.assertEqual([(r.path, r.auth, r.upstream, r.rule is not None) for r in config.routes],
                         [("/", "session", ECHO, False), ("/public", "none", ECHO, False),
                          ("/api", "bearer", ECHO, False), ("/admin", "session", ECHO, True)])
        self.assertEqual(config.redirect_uri, CALLBACK)


class EndpointTests(SynchronousTestCase):
    def test_loopback_endpoints_accepted(self):
        """tcp:PORT:interface= 127.0.0.1, ::1 (escaped or not) or localhost are accepted."""
        for description, host, url in [
            ("tcp:0:interface=127.0.0.1", "127.0.0.1", "http://127.0.0.1:1"),
            ("tcp:8080:interface=\\:\\:1", "::1", "http://[::1]:1"),
            ("tcp:8080:interface=::1", "::1", "http://[::1]:1"),
            ("tcp:port=8080:interface=localhost", "127.0.0.1", "http://localhost:1"),
        ]:
            endpoint = parse_loopback_endpoint(description)
            self.assertEqual((endpoint.bind_host, endpoint.url(1)), (host, url), description)

    def test_other_endpoints_refused(self):
        """Anything else is refused, the message naming the endpoint."""
        for description in ["tcp:8080", "tcp:8080:interface=0.0.0.0", "tcp:8080:interface=::",
                            "tcp:8080:interface=192.168.1.10", "tcp6:8080:interface=\\:\\:1",
                            "ssl:8443:interface=127.0.0.1", "unix:/tmp/demo.sock",
                            "tcp:99999:interface=127.0.0.1", "tcp:8080:interface=127.0.0.1:x=1",
                            "systemd:domain=INET:index=0"]:
            with self.assertRaises(ValueError) as caught:
                parse_loopback_endpoint(description)
            self.assertIn(repr(description), str(caught.exception))

    def test_bind_refuses_non_loopback(self):
        """The socket binder itself refuses a non-loopback address."""
        self.assertRaises(ValueError, demo.bind_loopback, "0.0.0.0", 0, socket.AF_INET)


class TapDemoTests(SynchronousTestCase):
    def parse(self, *args: str) -> tap.Options:
        options = tap.Options()
        options.parseOptions(list(args))
        return options

    def test_demo_needs_no_config(self):
        """--demo parses without --config."""
        options = self.parse("--demo")
        self.assertTrue(options["demo"])
        self.assertIn("--demo", str(tap.Options()))

    def test_demo_refuses_config_and_check(self):
        """--demo with --config, --check or --claims is a usage error naming them."""
        for args in [("--config", "x.toml"), ("--check",), ("--config", "x", "--check")]:
            with self.assertRaises(usage.UsageError) as caught:
                self.parse("--demo", *args)
            self.assertIn(args[0], str(caught.exception))

    def test_demo_listens_once(self):
        """--demo with two --listen is a usage error."""
        self.assertRaises(usage.UsageError, self.parse, "--demo", "--listen",
                          "tcp:1:interface=127.0.0.1", "--listen", "tcp:2:interface=127.0.0.1")

    def test_non_loopback_listen_exits_1(self):
        """
        --demo --listen on anything but loopback: one line on stderr naming
        the endpoint, exit status 1, nothing bound.
        """
        err = io.StringIO()
        self.patch(sys, "stderr", err)
        bound: List[Any] = []
        self.patch(demo, "bind_loopback", lambda *a: bound.append(a))
        options = self.parse("--demo", "--listen", "tcp:8080:interface=0.0.0.0")
        with self.assertRaises(SystemExit) as caught:
            tap.makeService(options)
        self.assertEqual(caught.exception.code, 1)
        lines = err.getvalue().splitlines()
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("'tcp:8080:interface=0.0.0.0'", lines[0])
        self.assertIn("loopback", lines[0])
        self.assertEqual(bound, [])

    def test_port_in_use_exits_1(self):
        """A demo port that cannot be bound: one line naming the endpoint, exit status 1."""
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        description = f"tcp:{taken.getsockname()[1]}:interface=127.0.0.1"
        err = io.StringIO()
        self.patch(sys, "stderr", err)
        with self.assertRaises(SystemExit) as caught:
            tap.makeService(self.parse("--demo", "--listen", description))
        self.assertEqual(caught.exception.code, 1)
        lines = err.getvalue().splitlines()
        self.assertEqual(len(lines), 1, lines)
        self.assertIn(description, lines[0])

    def test_service_listens_on_three_loopback_sockets(self):
        """
        The demo service is a ProxyService listening on three adopted
        loopback sockets (proxy, provider, echo), whose ports are those in
        the configuration; at start it logs the URL, the users and "NOT FOR
        PRODUCTION"; the port file lists the three addresses.
        """
        reactor = MemoryReactorClock()
        port_file = self.mktemp()
        service = demo.make_demo_service(reactor, "tcp:0:interface=127.0.0.1",
                                         port_file=port_file, signing_key=SIGNING_KEY)
        self.assertIsInstance(service, ProxyService)
        config = service.config
        ports = [listener.description for listener in service.listeners]
        self.assertEqual(len(ports), 3)
        assert config.public_url is not None and config.oidc is not None
        proxy_port = urlsplit(config.public_url).port
        issuer_port = urlsplit(config.oidc.issuer).port
        echo_port = urlsplit(config.routes[0].upstream).port
        self.assertEqual(ports, [f"tcp:{p}:interface=127.0.0.1"
                                 for p in (proxy_port, issuer_port, echo_port)])
        self.assertEqual(len({proxy_port, issuer_port, echo_port}), 3)
        events: List[Dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        service.privilegedStartService()
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(len(reactor.adoptedPorts), 3)
        banner = [e for e in events if "banner" in e]
        self.assertEqual(len(banner), 1)
        text = banner[0]["banner"]
        self.assertIn(f"Open {config.public_url}/", text)
        self.assertIn("NOT FOR PRODUCTION", text)
        for user in DEMO_USERS:
            self.assertIn(f"{user.username} / {user.password}", text)
        self.assertNotIn(CLIENT_SECRET, json.dumps(text))
        with open(port_file, encoding="ascii") as f:
            self.assertEqual(len(f.read().splitlines()), 3)

    def test_ipv6_proxy_keeps_the_provider_on_ipv4(self):
        """
        With --listen on ::1 the proxy's public URL is http://[::1]:PORT, and
        the provider and echo application are on 127.0.0.1 (treq cannot
        request IPv6-literal URLs).
        """
        try:
            service = demo.make_demo_service(MemoryReactorClock(), "tcp:0:interface=\\:\\:1",
                                             signing_key=SIGNING_KEY)
        except OSError as e:
            raise missing(f"no IPv6 loopback (::1) here, so the IPv6 listener cannot be "
                          f"tested: {e}") from None
        for listener in service.listeners:
            self.addCleanup(listener.stopService)
        config = service.config
        assert config.public_url is not None and config.oidc is not None
        self.assertTrue(config.public_url.startswith("http://[::1]:"), config.public_url)
        self.assertTrue(config.oidc.issuer.startswith("http://127.0.0.1:"))
        self.assertTrue(config.routes[0].upstream.startswith("http://127.0.0.1:"))
