"""
Tests for authorization in the guard: route auth modes, claim rules and
allow-lists (enforce and audit), methods, CORS preflights, session-expiry
hints, bearer tokens, and the forward-auth endpoint.
"""

from __future__ import annotations

import json
from typing import Any, Dict

from twisted.trial.unittest import SynchronousTestCase

from oidcproxy.core.context import context

from .fakes import API, CLIENT_ID, GuardStack, make_config
from .idp import ISSUER

ROUTES = [
    {"path": "/admin", "upstream": "http://up.test", "rule": "Contains(`groups`, `admins`)"},
    {"path": "/audit", "upstream": "http://up.test", "rule": "Contains(`groups`, `admins`)",
     "policy_mode": "audit"},
    {"path": "/staff", "upstream": "http://up.test", "allowed_email_domains": ["example.com"]},
    {"path": "/ro", "upstream": "http://up.test", "methods": ["GET", "HEAD"]},
    {"path": "/cors", "upstream": "http://up.test", "cors_preflight": True},
    {"path": "/opt", "upstream": "http://up.test", "auth": "optional"},
    {"path": "/api", "upstream": "http://up.test", "auth": "bearer",
     "rule": "Equals(`access_token.scope`, `read`) || Contains(`groups`, `admins`)"},
    {"path": "/mixed", "upstream": "http://up.test", "auth": "session_or_bearer"},
    {"path": "/hints", "upstream": "http://up.test", "session_expiry_headers": True},
    {"path": "/public", "upstream": "http://up.test", "auth": "none"},
    {"path": "/", "upstream": "http://up.test"},
]

ALICE = {"email": "alice@example.com", "email_verified": True, "groups": ["admins"]}
BOB = {"email": "bob@evil.test", "email_verified": True, "groups": ["staff"]}


def harness(case: SynchronousTestCase, **config: Any) -> GuardStack:
    return GuardStack(case, config=make_config(routes=ROUTES, **config))


class RuleTests(SynchronousTestCase):
    def test_rule_allows_and_denies(self):
        """A route's rule lets matching users through and answers 403 to the others."""
        h = harness(self)
        alice = h.logged_in(sub="alice", claims=ALICE)
        bob = h.logged_in(sub="bob", claims=BOB)
        self.assertEqual(alice.get("/admin/x", headers=API).code, 200)
        page = bob.get("/admin/x", headers=API)
        self.assertEqual((page.code, page.json()["error"]), (403, "forbidden"))
        self.assertEqual([r["uri"] for r in h.app.requests], [b"/admin/x"])

    def test_denial_logged_with_reason(self):
        """A denial is logged with the route and the part of the rule that failed."""
        from twisted.logger import globalLogPublisher

        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        h = harness(self)
        h.logged_in(sub="bob", claims=BOB).get("/admin/x", headers=API)
        denied = [e for e in events if e.get("log_format", "").startswith("{route}: denied")]
        self.assertEqual(len(denied), 1)
        self.assertEqual(denied[0]["route"], "routes[0]")
        self.assertIn("Contains(`groups`, `admins`)", denied[0]["reason"])

    def test_decision_recorded_for_the_access_log(self):
        """The guard records its decision (session, denied, audit_would_deny, public) for the
        access log's auth field."""
        h = harness(self)
        seen = []
        h.app.action = lambda request: seen.append(context(request).auth)
        alice = h.logged_in(sub="alice", claims=ALICE)
        bob = h.logged_in(sub="bob", claims=BOB)
        alice.get("/admin/x", headers=API)
        bob.get("/audit/x", headers=API)
        h.browser().get("/public/x")
        self.assertEqual(seen, ["session", "audit_would_deny", "public"])

    def test_audit_mode_lets_through(self):
        """policy_mode = "audit": a user the rule would deny passes, and "would deny" is logged."""
        from twisted.logger import globalLogPublisher

        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        h = harness(self)
        self.assertEqual(h.logged_in(sub="bob", claims=BOB).get("/audit/x", headers=API).code, 200)
        self.assertEqual(
            len([e for e in events if e.get("log_format", "").startswith("{route}: would deny")]), 1)

    def test_allowed_email_domains(self):
        """allowed_email_domains: subdomains on a dot boundary pass, others get 403."""
        h = harness(self)
        ok = h.logged_in(sub="c", claims={"email": "c@eu.example.com", "email_verified": True})
        unverified = h.logged_in(sub="d", claims={"email": "d@example.com",
                                                  "email_verified": False})
        lookalike = h.logged_in(sub="e", claims={"email": "e@badexample.com",
                                                 "email_verified": True})
        self.assertEqual([b.get("/staff", headers=API).code for b in (ok, unverified, lookalike)],
                         [200, 403, 403])

    def test_browser_denied_gets_html_403(self):
        """A browser that is logged in but denied gets an HTML 403, not a login loop."""
        h = harness(self)
        page = h.logged_in(sub="bob", claims=BOB).navigate("/admin")
        self.assertEqual(page.code, 403)
        self.assertIn(b"<h1>You cannot see this page</h1>", page.body)
        self.assertIn(b"You are signed in as <strong>bob</strong>.", page.body)


class ModeTests(SynchronousTestCase):
    def test_methods(self):
        """Methods outside the route's list get 405 with Allow, before any login."""
        h = harness(self)
        page = h.browser().request(b"DELETE", "/ro/x")
        self.assertEqual((page.code, page.header(b"allow")), (405, b"GET, HEAD"))

    def test_cors_preflight(self):
        """A CORS preflight passes unauthenticated on a route that allows it, not elsewhere."""
        h = harness(self)
        preflight = {b"access-control-request-method": [b"POST"], b"origin": [b"https://spa"]}
        self.assertEqual(h.browser().request(b"OPTIONS", "/cors/x", headers=preflight).code, 200)
        self.assertEqual(h.browser().request(b"OPTIONS", "/x", headers=preflight).code, 401)
        self.assertEqual(h.browser().request(b"OPTIONS", "/cors/x").code, 401)

    def test_optional(self):
        """auth = "optional": anonymous requests pass without identity; with a session the
        identity headers are set."""
        h = harness(self)
        self.assertEqual(h.browser().get("/opt", headers={b"x-forwarded-user": [b"mallory"]}).code,
                         200)
        self.assertEqual(h.app.header(b"x-forwarded-user"), [])
        h.logged_in(sub="alice", claims={"preferred_username": "alice"}).get("/opt")
        self.assertEqual(h.app.header(b"x-forwarded-user"), [b"alice"])

    def test_bearer_route_refuses_sessions_and_anonymous(self):
        """auth = "bearer": a session cookie is not enough, and no token is 401."""
        h = harness(self)
        page = h.logged_in(sub="alice", claims=ALICE).navigate("/api/x")
        self.assertEqual(page.code, 401)
        self.assertEqual(page.header(b"www-authenticate"), b'Bearer realm="oidcproxy"')

    def test_session_expiry_hints(self):
        """session_expiry_headers: the answer says how long the session has left."""
        h = harness(self, session={"idle_timeout": "30m"})
        browser = h.logged_in()
        h.clock.advance(100)
        page = browser.get("/hints", headers=API)
        self.assertEqual(page.header(b"x-auth-session-expires-in"), str(8 * 3600 - 100).encode())
        # The request itself is activity: the idle clock starts again.
        self.assertEqual(page.header(b"x-auth-idle-expires-in"), b"1800")
        self.assertIsNone(browser.get("/x", headers=API).header(b"x-auth-session-expires-in"))


def access_token(h: GuardStack, **claims: Any) -> str:
    now = int(h.clock.seconds())
    body: Dict[str, Any] = {"iss": ISSUER, "aud": CLIENT_ID, "sub": "svc", "iat": now,
                            "exp": now + 300, "scope": "read"}
    body.update(claims)
    return h.idp.id_token({k: v for k, v in body.items() if v is not None})


def bearer(token: str) -> Dict[bytes, Any]:
    return {b"authorization": [b"Bearer " + token.encode()], b"accept": [b"application/json"]}


class BearerTests(SynchronousTestCase):
    def test_valid_token(self):
        """A valid JWT access token reaches the route with identity headers from its claims."""
        h = harness(self)
        page = h.browser().get("/api/x", headers=bearer(access_token(h, preferred_username="svc1")))
        self.assertEqual(page.code, 200)
        self.assertEqual(h.app.header(b"x-forwarded-user"), [b"svc1"])
        self.assertEqual(h.app.identities[-1].sub, "svc")

    def test_rule_on_access_token(self):
        """The route's rule reads access_token.* claims: a token without the scope gets 403."""
        h = harness(self)
        self.assertEqual(h.browser().get("/api/x", headers=bearer(access_token(h, scope="write")))
                         .code, 403)

    def test_invalid_tokens(self):
        """Expired, foreign-audience, garbage and nonce-carrying tokens get 401 invalid_token."""
        h = harness(self)
        for token in [access_token(h, exp=int(h.clock.seconds()) - 100),
                      access_token(h, aud="someone-else"), "garbage", "a.b.c",
                      access_token(h, nonce="n")]:
            page = h.browser().get("/api/x", headers=bearer(token))
            self.assertEqual(page.code, 401, token)
            challenge = page.header(b"www-authenticate")
            self.assertTrue(challenge.startswith(
                b'Bearer realm="oidcproxy", error="invalid_token", error_description="'),
                challenge)
            self.assertNotIn(token.encode()[-20:], challenge)
        self.assertEqual(h.app.requests, [])

    def test_session_or_bearer(self):
        """session_or_bearer takes either credential."""
        h = harness(self)
        self.assertEqual(h.browser().get("/mixed", headers=bearer(access_token(h))).code, 200)
        self.assertEqual(h.logged_in().get("/mixed", headers=API).code, 200)
        self.assertEqual(h.browser().get("/mixed", headers=API).code, 401)

    def test_bearer_on_session_route_ignored(self):
        """On a session-only route a bearer token does not authenticate."""
        h = harness(self)
        self.assertEqual(h.browser().get("/x", headers=bearer(access_token(h))).code, 401)


class ExternalIssuerTests(SynchronousTestCase):
    def test_tokens_of_another_issuer_with_a_jwks_file(self):
        """[bearer] issuer + jwks_file: that issuer's tokens pass (with its audience); the
        main IdP's tokens and tokens for another audience do not."""
        import os
        import tempfile

        import jwt as pyjwt
        from cryptography.hazmat.primitives.asymmetric import ec

        key = ec.generate_private_key(ec.SECP256R1())
        jwk = json.loads(pyjwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
        jwk.update(kid="gw-1", alg="ES256", use="sig")
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump({"keys": [jwk]}, f)
        self.addCleanup(os.unlink, f.name)
        h = harness(self, bearer={"issuer": "https://gateway.test", "jwks_file": f.name,
                                  "audiences": ["orders-api"]})
        now = int(h.clock.seconds())

        def gateway_token(**claims: Any) -> str:
            body = {"iss": "https://gateway.test", "aud": "orders-api", "sub": "svc",
                    "exp": now + 60, "iat": now, "scope": "read", **claims}
            return pyjwt.encode(body, key, algorithm="ES256", headers={"kid": "gw-1"})

        self.assertEqual(h.browser().get("/api/x", headers=bearer(gateway_token())).code, 200)
        self.assertEqual(
            h.browser().get("/api/x", headers=bearer(gateway_token(aud="other"))).code, 401)
        self.assertEqual(h.browser().get("/api/x", headers=bearer(access_token(h))).code, 401)

    def test_config_requires_audiences(self):
        """Another issuer needs explicit audiences; jwks_file needs an issuer."""
        from oidcproxy.config import ConfigError

        e = self.assertRaises(ConfigError, make_config,
                              bearer={"issuer": "https://gateway.test"})
        self.assertEqual(e.problems, [
            "bearer.audiences: is required with another issuer: a token for another resource "
            "server must be refused"])
        e = self.assertRaises(ConfigError, make_config, bearer={"jwks_uri": "https://gw/jwks"})
        self.assertEqual(e.problems, ["bearer.issuer: is required with jwks_uri or jwks_file"])


class ForwardAuthTests(SynchronousTestCase):
    TRUSTED = {"trusted_proxies": ["127.0.0.1"]}

    def fa(self, h: GuardStack, uri: str, headers: Dict[bytes, Any] = None, query: str = "",
           method: bytes = b"GET") -> Any:
        base = {b"x-forwarded-method": [method], b"x-forwarded-host": [b"app.test"],
                b"x-forwarded-uri": [uri.encode()]}
        base.update(headers or {})
        return h.browser().get("/oidc/auth" + query, headers=base)

    def test_untrusted_peer(self):
        """From a peer not in trusted_proxies the endpoint refuses (403)."""
        h = harness(self)
        self.assertEqual(self.fa(h, "/x").code, 403)

    def test_unauthenticated_401(self):
        """No session: 401 (for nginx auth_request), even for a browser."""
        h = harness(self, **self.TRUSTED)
        page = self.fa(h, "/x", {b"accept": [b"text/html"], b"sec-fetch-mode": [b"navigate"]})
        self.assertEqual(page.code, 401)

    def test_redirect_mode_for_browsers(self):
        """?redirect=1 (Traefik): a browser gets the login redirect for the original URL."""
        h = harness(self, **self.TRUSTED)
        page = self.fa(h, "/orig?q=1", {b"accept": [b"text/html"]}, query="?redirect=1")
        self.assertEqual(page.code, 302)
        self.assertTrue(page.location.startswith(ISSUER + "/authorize?"))

    def test_authenticated_200_with_identity(self):
        """With a session: 200 and the identity headers in the answer, nothing proxied."""
        h = harness(self, **self.TRUSTED)
        browser = h.logged_in(sub="alice", claims=dict(ALICE, preferred_username="alice"))
        page = browser.get("/oidc/auth", headers={b"x-forwarded-uri": [b"/x"]})
        self.assertEqual(page.code, 200)
        self.assertEqual(page.header(b"x-forwarded-user"), b"alice")
        self.assertEqual(page.header(b"x-forwarded-groups"), b"admins")
        self.assertEqual(h.app.requests, [])

    def test_rules_and_methods_of_the_original(self):
        """The original URL's route decides: its rule (403) and its methods (405)."""
        h = harness(self, **self.TRUSTED)
        bob = h.logged_in(sub="bob", claims=BOB)
        self.assertEqual(bob.get("/oidc/auth", headers={b"x-forwarded-uri": [b"/admin"]}).code,
                         403)
        self.assertEqual(bob.get("/oidc/auth", headers={b"x-forwarded-uri": [b"/ro"],
                                                        b"x-forwarded-method": [b"POST"]}).code,
                         405)
        self.assertEqual(bob.get("/oidc/auth", headers={b"x-original-url":
                                                        [b"http://app.test/staff/x"]}).code, 403)

    def test_public_route_and_bearer(self):
        """A public original URL is 200; a bearer token is judged like on the route itself."""
        h = harness(self, **self.TRUSTED)
        self.assertEqual(self.fa(h, "/public/x").code, 200)
        self.assertEqual(self.fa(h, "/api/x", bearer(access_token(h))).code, 200)
        self.assertEqual(self.fa(h, "/api/x", bearer("garbage")).code, 401)

    def test_head_original_gets_whole_answer(self):
        """A HEAD original (Traefik sends X-Forwarded-Method: HEAD on a GET) is judged as HEAD,
        but the answer to the GET keeps its body and Content-Length consistent."""
        h = harness(self, **self.TRUSTED)
        page = self.fa(h, "/x", method=b"HEAD")
        self.assertEqual(page.code, 401)
        self.assertEqual(json.loads(page.body)["error"], "unauthenticated")

    def test_conflicting_descriptions_refused(self):
        """Spellings of the original request that disagree (one set by the front proxy, one
        passed through from the client) are refused with 400, not resolved silently."""
        h = harness(self, **self.TRUSTED)
        browser = h.logged_in(sub="bob", claims=BOB)
        for headers in [
            {b"x-forwarded-uri": [b"/admin"], b"x-original-uri": [b"/public/x"]},
            {b"x-original-uri": [b"/admin"], b"x-original-url": [b"http://app.test/public/x"]},
            {b"x-forwarded-uri": [b"/admin", b"/public/x"]},
            {b"x-forwarded-uri": [b"/x"], b"x-forwarded-method": [b"GET"],
             b"x-original-method": [b"POST"]},
        ]:
            page = browser.get("/oidc/auth", headers=headers)
            self.assertEqual(page.code, 400, headers)
        agreeing = {b"x-forwarded-uri": [b"/public/x"], b"x-original-uri": [b"/public/x"],
                    b"x-original-url": [b"http://app.test/public/x"]}
        self.assertEqual(browser.get("/oidc/auth", headers=agreeing).code, 200)

    def test_missing_uri(self):
        """Without the original URI: 400."""
        h = harness(self, **self.TRUSTED)
        page = h.browser().get("/oidc/auth")
        self.assertEqual((page.code, json.loads(page.body)["error"]), (400, "bad_request"))


FRESH_ROUTES = [
    {"path": "/fresh", "upstream": "http://up.test", "rule": "NotOlderThan(`auth_time`, `30s`)"},
    {"path": "/api", "upstream": "http://up.test", "auth": "bearer",
     "rule": "NotOlderThan(`auth_time`, `30s`)"},
    {"path": "/", "upstream": "http://up.test"},
]


class RuleTimeTests(SynchronousTestCase):
    """Rules are evaluated at the guard's clock time: C{NotOlderThan} sees the sign-in age."""

    def test_session_sign_in_ages(self):
        """A session's auth_time is fresh enough at first, and too old once the clock has moved on."""
        h = GuardStack(self, config=make_config(routes=FRESH_ROUTES))
        browser = h.logged_in(sub="alice", claims={"auth_time": int(h.clock.seconds())})
        self.assertEqual(browser.get("/fresh/x", headers=API).code, 200)
        h.clock.advance(30)
        self.assertEqual(browser.get("/fresh/x", headers=API).code, 200)
        h.clock.advance(1)
        page = browser.get("/fresh/x", headers=API)
        self.assertEqual((page.code, page.json()["error"]), (403, "forbidden"))
        self.assertEqual(browser.get("/other", headers=API).code, 200)

    def test_bearer_sign_in_ages(self):
        """A bearer token's auth_time is measured against the guard's clock too."""
        h = GuardStack(self, config=make_config(routes=FRESH_ROUTES))
        now = int(h.clock.seconds())
        fresh = access_token(h, auth_time=now - 10)
        self.assertEqual(h.browser().get("/api/x", headers=bearer(fresh)).code, 200)
        self.assertEqual(h.browser().get("/api/x", headers=bearer(access_token(h, auth_time=now - 31)))
                         .code, 403)
        h.clock.advance(21)
        self.assertEqual(h.browser().get("/api/x", headers=bearer(fresh)).code, 403)
