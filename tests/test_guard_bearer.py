"""
Tests for access tokens in the guard: which keys verify them, what an API
client gets while the IdP's keys are not loaded, which C{Authorization}
header goes upstream in each auth mode, and how old an ID or logout token
may be.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional
from urllib.parse import urlencode

from treq.testing import StubTreq
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from oidcproxy.web.bearer_auth import JWKS_FILE_RETRY

from .adversarial import ROUTES as ADVERSARIAL_ROUTES
from .adversarial import parse_response
from .fakes import (
    API,
    CLIENT_ID,
    CLIENT_SECRET,
    OTHER_SECRET,
    SESSION_COOKIE,
    GuardStack,
    ProxyStack,
    make_config,
)
from .idp import ISSUER, Browser, public_jwk
from .test_adv_tokens import hmac_signed, sign
from .test_guard_authz import ROUTES

BEARER_HMAC_SECRET = OTHER_SECRET
GATEWAY = "https://gateway.test"


def claims_for(h: Any, **changes: Any) -> Dict[str, Any]:
    """An access token's claims for this client, at the harness's time."""
    now = int(h.clock.seconds())
    body: Dict[str, Any] = {"iss": ISSUER, "aud": CLIENT_ID, "sub": "svc", "iat": now,
                            "exp": now + 300, "scope": "read", "client_id": "spa"}
    body.update(changes)
    return body


def rs256(h: Any, **changes: Any) -> str:
    """An access token signed with the IdP's key (the way it should be)."""
    return h.idp.id_token(claims_for(h, **changes))


def bearer(token: str) -> Dict[bytes, List[bytes]]:
    return {b"authorization": [b"Bearer " + token.encode("ascii")], b"accept": [b"application/json"]}


def capture_log(case: SynchronousTestCase) -> List[Dict[str, Any]]:
    events: List[Dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    case.addCleanup(globalLogPublisher.removeObserver, events.append)
    return events


def logged(events: List[Dict[str, Any]], start: str) -> List[Dict[str, Any]]:
    return [e for e in events if e.get("log_format", "").startswith(start)]


def harness(case: SynchronousTestCase, **config: Any) -> GuardStack:
    guard_kwargs = config.pop("guard_kwargs", {})
    start = config.pop("start", True)
    oidc = config.pop("oidc", {})
    return GuardStack(case, config=make_config(routes=ROUTES, trusted_proxies=["127.0.0.1"],
                                            oidc=oidc, **config),
                   start=start, **guard_kwargs)


def forward_auth(h: GuardStack, uri: str, headers: Optional[Dict[bytes, Any]] = None,
                 browser: Optional[Browser] = None) -> Any:
    base = {b"x-forwarded-method": [b"GET"], b"x-forwarded-host": [b"app.test"],
            b"x-forwarded-uri": [uri.encode()]}
    base.update(headers or {})
    return (browser or h.browser()).get("/oidc/auth", headers=base)


# -- item: access tokens are not verified with the client secret ----------------------


class ClientSecretTests(SynchronousTestCase):
    """With HS256 allowed for ID tokens, access tokens signed with the client secret still fail."""

    HS_ID_TOKENS = {"id_token_algorithms": ["HS256", "RS256"]}

    def test_refused_on_every_bearer_path(self):
        """
        An HS256 token signed with the client secret, otherwise perfect, is
        401 on bearer, session_or_bearer and optional routes and at the
        forward-auth endpoint (alg_not_allowed); the same claims signed by
        the IdP pass everywhere.
        """
        h = harness(self, oidc=self.HS_ID_TOKENS)
        events = capture_log(self)
        forged = hmac_signed(claims_for(h), CLIENT_SECRET.encode())
        for path in ("/api/x", "/mixed/x", "/opt/x"):
            page = h.browser().get(path, headers=bearer(forged))
            self.assertEqual((page.code, page.json()["error"]), (401, "invalid_token"), path)
        self.assertEqual(forward_auth(h, "/api/x", bearer(forged)).code, 401)
        self.assertEqual(forward_auth(h, "/opt/x", bearer(forged)).code, 401)
        self.assertEqual(h.app.requests, [])
        reasons = {e["reason"] for e in logged(events, "bearer token refused")}
        self.assertEqual(reasons, {"alg_not_allowed"})

        good = rs256(h)
        for path in ("/api/x", "/mixed/x", "/opt/x"):
            self.assertEqual(h.browser().get(path, headers=bearer(good)).code, 200, path)
        self.assertEqual(forward_auth(h, "/api/x", bearer(good)).code, 200)

    def test_every_hmac_algorithm_refused(self):
        """HS384 and HS512 too, whatever id_token_algorithms lists."""
        h = harness(self, oidc={"id_token_algorithms": ["HS256", "HS384", "HS512", "RS256"]})
        for alg in ("HS256", "HS384", "HS512"):
            forged = hmac_signed(claims_for(h), CLIENT_SECRET.encode(), alg)
            self.assertEqual(h.browser().get("/api/x", headers=bearer(forged)).code, 401, alg)

    def test_id_tokens_at_the_callback_still_take_hs256(self):
        """The ID token of a login signed HS256 with the client secret validates, as configured."""
        h = harness(self, oidc=self.HS_ID_TOKENS)
        h.idp.id_token = lambda claims, kid=None: hmac_signed(dict(claims), CLIENT_SECRET.encode())
        browser = h.browser()
        page = h.login(browser)
        self.assertEqual(page.code, 302, page.body)
        self.assertIn(SESSION_COOKIE, browser.jar)
        self.assertEqual(browser.get("/mixed/x", headers=API).code, 200)

    def test_hs_only_id_tokens_bearer_takes_advertised_asymmetric(self):
        """id_token_algorithms = ["HS256"] alone: access tokens are checked with the IdP's RS256 key."""
        h = harness(self, oidc={"id_token_algorithms": ["HS256"]})
        self.assertEqual(h.browser().get("/api/x", headers=bearer(rs256(h))).code, 200)
        forged = hmac_signed(claims_for(h), CLIENT_SECRET.encode())
        self.assertEqual(h.browser().get("/api/x", headers=bearer(forged)).code, 401)

    def test_bearer_hmac_secret(self):
        """
        bearer.algorithms HS256 with bearer.hmac_secret: tokens signed with that
        secret pass; the client secret's still do not.
        """
        h = harness(self, oidc=self.HS_ID_TOKENS,
                    bearer={"algorithms": ["HS256", "RS256"], "hmac_secret": BEARER_HMAC_SECRET})
        ok = hmac_signed(claims_for(h), BEARER_HMAC_SECRET.encode())
        self.assertEqual(h.browser().get("/api/x", headers=bearer(ok)).code, 200)
        forged = hmac_signed(claims_for(h), CLIENT_SECRET.encode())
        self.assertEqual(h.browser().get("/api/x", headers=bearer(forged)).code, 401)
        self.assertEqual(h.browser().get("/api/x", headers=bearer(rs256(h))).code, 200)

    def test_bearer_algorithms_limit_the_issuers_tokens(self):
        """bearer.algorithms applies to oidc.issuer's tokens too: RS256 left out is refused."""
        h = harness(self, bearer={"algorithms": ["ES256"]})
        page = h.browser().get("/api/x", headers=bearer(rs256(h)))
        self.assertEqual(page.code, 401)

    def test_another_issuer_with_an_hmac_secret(self):
        """[bearer] issuer with HS256 only: checked with its secret, no keys fetched from anywhere."""
        gateway = JWKSResource()
        h = harness(self, bearer={"issuer": GATEWAY, "audiences": ["orders"],
                                  "algorithms": ["HS256"], "hmac_secret": BEARER_HMAC_SECRET},
                    guard_kwargs={"bearer_keys_http": StubTreq(gateway)})
        token = hmac_signed(claims_for(h, iss=GATEWAY, aud="orders"), BEARER_HMAC_SECRET.encode())
        self.assertEqual(h.browser().get("/api/x", headers=bearer(token)).code, 200)
        forged = hmac_signed(claims_for(h, iss=GATEWAY, aud="orders"), CLIENT_SECRET.encode())
        self.assertEqual(h.browser().get("/api/x", headers=bearer(forged)).code, 401)
        self.assertEqual(gateway.requests, [])


# -- item: 503 while the keys are not loaded ---------------------------------------------


class JWKSResource(Resource):
    """Another issuer's keys endpoint: a status and the IdP's key, every request recorded."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.status = 200
        self.requests: List[bytes] = []

    def render(self, request: Any) -> bytes:
        self.requests.append(request.path)
        request.setResponseCode(self.status)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"keys": [public_jwk()]}).encode()


class NotLoadedTests(SynchronousTestCase):
    """While the keys cannot be loaded, a bearer token is 503 with Retry-After, never 401."""

    def assertUnavailable(self, page: Any) -> None:
        self.assertEqual(page.code, 503, page.body)
        self.assertEqual(page.header(b"retry-after"), b"5")
        self.assertEqual(page.header(b"content-type"), b"application/json")
        self.assertEqual(page.json()["error"], "idp_unavailable")
        self.assertIsNone(page.header(b"www-authenticate"))

    def test_discovery_not_loaded(self):
        """Discovery fails: 503 on bearer, session_or_bearer and optional routes; then 200."""
        h = harness(self, start=False)
        h.idp.discovery_status = 500
        h.guard.start()
        h.network.pump()
        self.assertIsNone(h.provider.metadata)
        token = rs256(h)
        for path in ("/api/x", "/mixed/x", "/opt/x"):
            self.assertUnavailable(h.browser().get(path, headers=bearer(token)))
        self.assertUnavailable(forward_auth(h, "/api/x", bearer(token)))
        self.assertEqual(h.app.requests, [])
        h.idp.discovery_status = 200
        h.clock.advance(60)
        h.network.pump()
        self.assertTrue(h.provider.ready)
        self.assertEqual(h.browser().get("/api/x", headers=bearer(token)).code, 200)

    def test_discovery_not_loaded_opaque_token(self):
        """An opaque token with introspection on: 503 as well while discovery fails."""
        h = harness(self, start=False, bearer={"introspection": True})
        h.idp.discovery_status = 500
        h.guard.start()
        h.network.pump()
        self.assertUnavailable(h.browser().get("/api/x", headers=bearer("opaque-token")))

    def test_jwks_not_loaded(self):
        """Discovery done, the JWKS failing: 503; once the keys load, 200."""
        h = harness(self, start=False)
        h.idp.jwks_status = 500
        h.guard.start()
        h.network.pump()
        self.assertIsNotNone(h.provider.metadata)
        self.assertFalse(h.provider.ready)
        token = rs256(h)
        for path in ("/api/x", "/mixed/x", "/opt/x"):
            self.assertUnavailable(h.browser().get(path, headers=bearer(token)))
        h.idp.jwks_status = 200
        h.clock.advance(60)
        h.network.pump()
        self.assertEqual(h.browser().get("/api/x", headers=bearer(token)).code, 200)

    def external(self, gateway: Resource, **bearer_config: Any) -> GuardStack:
        settings = {"issuer": GATEWAY, "audiences": ["orders"], **bearer_config}
        return harness(self, bearer=settings, guard_kwargs={"bearer_keys_http": StubTreq(gateway)})

    def test_external_issuer_keys_not_loaded(self):
        """
        bearer.issuer's JWKS failing: 503 (the keys are asked for at start,
        not at the first token); once they load, 200. The main IdP being down
        does not matter to that issuer's tokens.
        """
        gateway = JWKSResource()
        gateway.status = 503
        h = self.external(gateway, jwks_uri=GATEWAY + "/jwks")
        self.assertEqual(gateway.requests, [b"/jwks"])
        token = rs256(h, iss=GATEWAY, aud="orders")
        self.assertUnavailable(h.browser().get("/api/x", headers=bearer(token)))
        gateway.status = 200
        h.clock.advance(60)
        self.assertEqual(h.browser().get("/api/x", headers=bearer(token)).code, 200)

        # With the main IdP's discovery failing, the other issuer's tokens still pass.
        gateway = JWKSResource()
        h = harness(self, start=False, bearer={"issuer": GATEWAY, "audiences": ["orders"],
                                               "jwks_uri": GATEWAY + "/jwks"},
                    guard_kwargs={"bearer_keys_http": StubTreq(gateway)})
        h.idp.discovery_status = 500
        h.guard.start()
        h.network.pump()
        self.assertIsNone(h.provider.metadata)
        self.assertEqual(h.browser().get("/api/x", headers=bearer(rs256(h, iss=GATEWAY, aud="orders")))
                         .code, 200)

    def test_external_jwks_file_unusable(self):
        """A bearer.jwks_file that holds no JWKS: 503 and an error logged, never a 500."""
        import os
        import tempfile

        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            f.write("not json")
        self.addCleanup(os.unlink, f.name)
        events = capture_log(self)
        h = self.external(JWKSResource(), jwks_file=f.name)
        token = rs256(h, iss=GATEWAY, aud="orders")
        self.assertUnavailable(h.browser().get("/api/x", headers=bearer(token)))
        self.assertTrue(logged(events, "bearer.jwks_file {path} cannot be loaded"))
        with open(f.name, "w") as out:
            json.dump({"keys": [public_jwk()]}, out)
        # Read again on the clock, never while a request waits.
        self.assertUnavailable(h.browser().get("/api/x", headers=bearer(token)))
        h.clock.advance(JWKS_FILE_RETRY)
        self.assertEqual(h.browser().get("/api/x", headers=bearer(token)).code, 200)

    def test_invalid_token_still_401(self):
        """With the keys loaded, a bad token is 401 as before (503 is for the IdP's faults only)."""
        h = harness(self)
        page = h.browser().get("/api/x", headers=bearer(rs256(h, aud="someone-else")))
        self.assertEqual(page.code, 401)


# -- item: the client's Authorization with pass_access_token = "authorization" ---------


class AuthorizationHeaderTests(SynchronousTestCase):
    """
    pass_access_token = "authorization": a bearer-authenticated request keeps
    its own Authorization; a session-authenticated one gets the session's
    token instead of whatever it sent; any other request (public, anonymous
    optional) reaches the upstream without one.
    """

    BASIC = b"Basic Zm9vOmJhcg=="

    def setUp(self):
        self.h = harness(self, oidc={"pass_access_token": "authorization"})
        self.token = rs256(self.h)
        self.own = b"Bearer " + self.token.encode("ascii")

    def upstream_authorization(self) -> List[bytes]:
        return self.h.app.header(b"authorization")

    def session_token(self) -> bytes:
        return b"Bearer " + self.h.idp.issued[-1]["access_token"].encode("ascii")

    def test_bearer_routes_keep_the_clients(self):
        """On bearer, session_or_bearer and optional routes a valid token goes upstream unchanged."""
        for path in ("/api/x", "/mixed/x", "/opt/x"):
            page = self.h.browser().get(path, headers=bearer(self.token))
            self.assertEqual(page.code, 200, path)
            self.assertEqual(self.upstream_authorization(), [self.own], path)

    def test_bearer_wins_over_a_session(self):
        """A logged-in browser sending a token on session_or_bearer: its token, not the session's."""
        browser = self.h.logged_in()
        browser.get("/mixed/x", headers=bearer(self.token))
        self.assertEqual(self.upstream_authorization(), [self.own])

    def test_sessions_get_the_proxys(self):
        """Session-authenticated requests: the session's token replaces the client's header."""
        browser = self.h.logged_in()
        for path in ("/x", "/mixed/x", "/opt/x"):
            page = browser.get(path, headers={b"authorization": [self.BASIC], **API})
            self.assertEqual(page.code, 200, path)
            self.assertEqual(self.upstream_authorization(), [self.session_token()], path)

    def test_others_get_none(self):
        """Public routes and anonymous optional requests: a client's Authorization is dropped."""
        for path in ("/public/x", "/opt/x"):
            for value in (self.BASIC, b"Token abc", b"Negotiate abc"):
                page = self.h.browser().get(path, headers={b"authorization": [value]})
                self.assertEqual(page.code, 200, (path, value))
                self.assertEqual(self.upstream_authorization(), [], (path, value))

    def test_refused_tokens_go_nowhere(self):
        """A refused token on a bearer or optional route: 401, nothing upstream."""
        bad = rs256(self.h, aud="someone-else")
        for path in ("/api/x", "/mixed/x", "/opt/x"):
            self.assertEqual(self.h.browser().get(path, headers=bearer(bad)).code, 401, path)
        self.assertEqual(self.h.app.requests, [])

    def test_forward_auth_answers_what_goes_upstream(self):
        """The forward-auth answer carries the bearer's own Authorization, or the session's token."""
        page = forward_auth(self.h, "/api/x", bearer(self.token))
        self.assertEqual((page.code, page.headers.getRawHeaders(b"authorization")), (200, [self.own]))
        browser = self.h.logged_in()
        page = forward_auth(self.h, "/x", {b"authorization": [self.BASIC]}, browser=browser)
        self.assertEqual((page.code, page.headers.getRawHeaders(b"authorization")),
                         (200, [self.session_token()]))
        page = forward_auth(self.h, "/public/x", {b"authorization": [self.BASIC]})
        self.assertEqual((page.code, page.headers.getRawHeaders(b"authorization")), (200, None))

    def test_identity_header_named_authorization(self):
        """When [headers] names Authorization, the client's is not put back: the mapping decides."""
        h = harness(self, oidc={"pass_access_token": "authorization"},
                    headers={"Authorization": "no_such_claim"})
        page = h.browser().get("/api/x", headers=bearer(rs256(h)))
        self.assertEqual(page.code, 200)
        self.assertEqual(h.app.header(b"authorization"), [])

    def test_other_modes_unchanged(self):
        """pass_access_token "none" or "header": Authorization is never the proxy's, it passes."""
        for mode in ("none", "header"):
            h = harness(self, oidc={"pass_access_token": mode})
            h.browser().get("/public/x", headers={b"authorization": [self.BASIC]})
            self.assertEqual(h.app.header(b"authorization"), [self.BASIC], mode)
            token = rs256(h)
            h.browser().get("/api/x", headers=bearer(token))
            self.assertEqual(h.app.header(b"authorization"), [b"Bearer " + token.encode()], mode)


class AuthorizationSpoofingTests(SynchronousTestCase):
    """
    On the real HTTP channel, Authorization headers in every case, repeated,
    on every kind of route: the upstream sees the proxy's value, the single
    token it validated, or nothing.
    """

    def test_every_route(self):
        from .test_adv_headers import CLAIMS, request

        stack = ProxyStack(self, config=make_config(
            routes=ADVERSARIAL_ROUTES,
            oidc={"pass_access_token": "authorization"}))
        browser = stack.logged_in(claims=CLAIMS)
        cookie = browser.cookie_header()
        session = b"Bearer " + stack.idp.issued[-1]["access_token"].encode()
        now = int(stack.clock.seconds())
        token = stack.idp.id_token({"iss": ISSUER, "aud": CLIENT_ID, "sub": "svc", "iat": now,
                                    "exp": now + 300, "scope": "read"})
        own = b"Bearer " + token.encode()
        spoofs = [b"Authorization: Bearer mallory", b"AUTHORIZATION: Basic bWFsbG9yeQ==",
                  b"authorization: Bearer mallory, admin"]
        cases = [
            # (label, target, cookie, lines, expected status, expected upstream Authorization)
            ("protected", "/app/x", cookie, spoofs, 200, [session]),
            ("protected, one", "/app/x", cookie, spoofs[1:2], 200, [session]),
            ("public", "/public/x", None, spoofs, 200, []),
            ("public, one", "/public/x", None, spoofs[:1], 200, []),
            ("public with session", "/public/x", cookie, spoofs[1:2], 200, []),
            ("optional anonymous", "/opt/x", None, spoofs[1:2], 200, []),
            ("optional with session", "/opt/x", cookie, spoofs[1:2], 200, [session]),
            ("optional, several", "/opt/x", None, spoofs, 401, None),
            ("bearer", "/api/x", None, [b"Authorization: " + own], 200, [own]),
            ("bearer, upper case", "/api/x", None, [b"AUTHORIZATION: " + own], 200, [own]),
            ("bearer and a spoof", "/api/x", None, [b"Authorization: " + own, spoofs[0]], 401, None),
            ("mixed with bearer", "/mixed/x", cookie, [b"authorization: " + own], 200, [own]),
            ("mixed with session", "/mixed/x", cookie, spoofs[1:2], 200, [session]),
        ]
        for label, target, with_cookie, lines, status, expected in cases:
            before = len(stack.upstream.requests)
            out = stack.raw(request(b"GET", target, with_cookie, b"", lines))
            got_status, _, _ = parse_response(out)
            self.assertEqual(got_status, status, label)
            after = stack.upstream.requests[before:]
            if expected is None:
                self.assertEqual(after, [], label)
                continue
            values = [v for n, v in after[0]["headers"] if n.lower() == b"authorization"]
            self.assertEqual(values, expected, label)


# -- item: the age of ID and logout tokens -----------------------------------------------


WEEK = 7 * 86400


class IDTokenAgeTests(SynchronousTestCase):
    """oidc.iat_slack (10 minutes) plus the leeway bounds how old an ID token's iat may be."""

    def login(self, stack: ProxyStack, **id_token: Any) -> Any:
        browser = stack.browser()
        page = stack.login(browser, **id_token)
        return browser, page

    def test_week_old_at_the_callback(self):
        """iat a week ago, exp ahead: the login fails (401), the reason logged, no session."""
        stack = ProxyStack(self)
        events = capture_log(self)
        now = int(stack.clock.seconds())
        browser, page = self.login(stack, iat=now - WEEK, exp=now + 3600)
        self.assertEqual(page.code, 401)
        self.assertNotIn(SESSION_COOKIE, browser.jar)
        failures = logged(events, "login failed: {reason}")
        self.assertEqual([e["reason"] for e in failures], ["iat_too_old"])

    def test_boundary(self):
        """iat_slack + leeway ago passes; one second more does not; iat_slack is configurable."""
        stack = ProxyStack(self)
        now = int(stack.clock.seconds())
        _, page = self.login(stack, iat=now - 600 - 60, exp=now + 3600)
        self.assertEqual(page.code, 302)
        _, page = self.login(stack, iat=now - 600 - 60 - 1, exp=now + 3600)
        self.assertEqual(page.code, 401)
        # Ahead by more than the leeway: refused too.
        _, page = self.login(stack, iat=now + 61, exp=now + 3600)
        self.assertEqual(page.code, 401)

        stack = ProxyStack(self, config=make_config(
            routes=[{"path": "/", "upstream": "http://up.test"}],
            oidc={"iat_slack": "2m", "leeway": "10s"}))
        now = int(stack.clock.seconds())
        _, page = self.login(stack, iat=now - 130, exp=now + 3600)
        self.assertEqual(page.code, 302)
        _, page = self.login(stack, iat=now - 131, exp=now + 3600)
        self.assertEqual(page.code, 401)

    def refresh_stack(self) -> Any:
        stack = ProxyStack(self, memory_store=True)
        now = int(stack.clock.seconds())
        browser, page = self.login(stack, exp=now + WEEK)
        self.assertEqual(page.code, 302)
        return stack, browser, now

    def test_refresh_same_id_token_accepted(self):
        """A refresh that sends the login's ID token again (iat long past): the session goes on."""
        stack, browser, _ = self.refresh_stack()
        login_id_token = stack.idp.issued[-1]["id_token"]
        stack.clock.advance(3600)
        stack.idp.forge = lambda claims: login_id_token
        page = browser.get("/x", headers=API)
        self.assertEqual(page.code, 200, page.body)
        self.assertEqual(stack.idp.refresh_count, 1)
        self.assertEqual(browser.get("/x", headers=API).code, 200)

    def test_refresh_new_old_id_token_refused(self):
        """A new ID token at a refresh whose iat is the login's (an hour ago): the session ends."""
        stack, browser, login_time = self.refresh_stack()
        stack.clock.advance(3600)
        stack.idp.forge = lambda claims: sign(dict(claims, iat=login_time, exp=login_time + WEEK))
        events = capture_log(self)
        self.assertEqual(browser.get("/x", headers=API).code, 401)
        self.assertEqual(browser.get("/x", headers=API).code, 401)
        self.assertEqual([e["reason"] for e in logged(events, "refresh gave an invalid ID token")],
                         ["iat_too_old"])

    def test_refresh_new_id_token_within_slack(self):
        """A new ID token issued within the slack (and its leeway) is taken."""
        stack, browser, _ = self.refresh_stack()
        stack.clock.advance(3600)
        now = int(stack.clock.seconds())
        stack.idp.forge = lambda claims: sign(dict(claims, iat=now - 660))
        self.assertEqual(browser.get("/x", headers=API).code, 200)


class LogoutTokenAgeTests(SynchronousTestCase):
    """Logout tokens: the same iat_slack; a jti is remembered for as long as its token could pass."""

    def post(self, stack: ProxyStack, token: str) -> int:
        page = stack.browser().request(
            b"POST", "/oidc/backchannel-logout",
            headers={b"content-type": [b"application/x-www-form-urlencoded"]},
            body=urlencode({"logout_token": token}).encode())
        return page.code

    def logout_token(self, stack: ProxyStack, iat: int, jti: str) -> str:
        return sign({"iss": ISSUER, "aud": CLIENT_ID, "iat": iat, "jti": jti, "sid": "sid-1",
                     "events": {"http://schemas.openid.net/event/backchannel-logout": {}}})

    def test_age(self):
        """iat_slack + leeway ago: 200; one second older: 400, and the session lives on."""
        stack = ProxyStack(self, memory_store=True)
        browser = stack.logged_in(claims={"sid": "sid-1"})
        now = int(stack.clock.seconds())
        self.assertEqual(self.post(stack, self.logout_token(stack, now - 661, "old")), 400)
        self.assertEqual(browser.get("/x", headers=API).code, 200)
        self.assertEqual(self.post(stack, self.logout_token(stack, now - 660, "edge")), 200)
        self.assertEqual(browser.get("/x", headers=API).code, 401)

    def test_configured_slack(self):
        """oidc.iat_slack = "1m": a logout token two minutes old is refused."""
        stack = ProxyStack(self, memory_store=True, config=make_config(
            routes=[{"path": "/", "upstream": "http://up.test"}], oidc={"iat_slack": "1m"}))
        now = int(stack.clock.seconds())
        self.assertEqual(self.post(stack, self.logout_token(stack, now - 121, "a")), 400)
        self.assertEqual(self.post(stack, self.logout_token(stack, now - 100, "b")), 200)

    def test_replay_remembered_while_it_could_pass(self):
        """
        A token issued a leeway ahead of our clock passes for iat_slack + 2 x
        leeway: replayed just before that ends, it is still refused.
        """
        stack = ProxyStack(self, memory_store=True)
        now = int(stack.clock.seconds())
        token = self.logout_token(stack, now + 60, "ahead")
        self.assertEqual(self.post(stack, token), 200)
        stack.clock.advance(600 + 2 * 60 - 1)
        self.assertEqual(self.post(stack, token), 400)
