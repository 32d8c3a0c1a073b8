"""
Tests for sessions too large for the cookie store (an IdP that puts 2,000
groups in the ID token) and for C{session.claims = "used"}, which keeps only
the claims the proxy reads so that such a session fits without Redis.
"""

from __future__ import annotations

from typing import Any, Dict, List
from urllib.parse import urlencode

from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from oidcproxy.sessions.session import PROXY_CLAIMS, claims_in_use, kept_claims

from .fakes import (
    API,
    SESSION_COOKIE,
    GuardStack,
    make_config,
    open_session,
    session_cookie_names,
    state_cookies,
)
from .idp import ISSUER

GROUPS = [f"team-{i:04d}" for i in range(2000)]
"""What some IdPs put in an ID token: 2,000 groups (24 KB of JSON, 32 KB in the ID token)."""

HTML = {b"accept": [b"text/html"]}


class ClaimsInUseTests(SynchronousTestCase):
    """Which claims a session keeps with session.claims = "used"."""

    def test_default_configuration(self):
        """The proxy's own claims and the default [headers]' claims; username_claim (sub)."""
        self.assertEqual(claims_in_use(make_config()),
                         frozenset(PROXY_CLAIMS) | {"preferred_username", "email", "groups"})

    def test_headers_username_and_rules(self):
        """
        Every claim [headers] tries, username_claim, and the ID-token claims
        of every route's rule and allow-lists; not the access token's.
        """
        config = make_config(
            headers={"X-User": ["upn", "sub"], "X-Roles": "realm_access.roles"},
            username_claim="name",
            routes=[
                {"path": "/a", "upstream": "http://up.test",
                 "rule": "Contains(`department`, `x`) || (Equals(`access_token.scope`, `r`) "
                         "&& !Prefix(`https://example\\.com/tenant`, `t`))"},
                {"path": "/b", "upstream": "http://up.test", "allowed_groups": ["admins"]},
                {"path": "/c", "upstream": "http://up.test",
                 "allowed_email_domains": ["example.com"]},
                {"path": "/", "upstream": "http://up.test", "auth": "none"},
            ])
        self.assertEqual(
            claims_in_use(config) - frozenset(PROXY_CLAIMS),
            {"upn", "realm_access.roles", "realm_access", "name", "department",
             "https://example.com/tenant", "groups", "email"})
        self.assertNotIn("scope", claims_in_use(config))

    def test_kept_claims(self):
        """Only the named top-level claims are kept, with their whole values."""
        claims = {"sub": "a", "groups": GROUPS, "realm_access": {"roles": ["r"], "x": 1},
                  "picture": "https://x"}
        self.assertEqual(kept_claims(claims, frozenset({"sub", "realm_access"})),
                         {"sub": "a", "realm_access": {"roles": ["r"], "x": 1}})


class TooLargeTests(SynchronousTestCase):
    """A login whose session does not fit in the cookie store: a 502 page and a clear log."""

    def setUp(self):
        self.events: List[Dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def callback(self, h: GuardStack, headers: Dict[bytes, List[bytes]], **claims: Any) -> Any:
        browser = h.browser()
        params = h.authorize(browser)
        code = h.idp.issue_code(nonce=params["nonce"], sub="alice", claims=claims,
                                code_verifier_challenge=params["code_challenge"])
        page = browser.request(b"GET", "/oidc/callback?" + urlencode(
            {"code": code, "state": params["state"]}), headers=headers)
        return browser, page

    def too_large_line(self) -> str:
        from twisted.logger import formatEvent

        lines = [formatEvent(e) for e in self.events
                 if "does not fit in the session cookie" in e.get("log_format", "")]
        self.assertEqual(len(lines), 1, lines)
        return lines[0]

    def assertRefused(self, browser: Any, page: Any, as_json: bool) -> None:
        self.assertEqual(page.code, 502, page.body)
        if as_json:
            self.assertEqual(page.json()["error"], "session_too_large")
        else:
            self.assertIn(b"text/html", page.header(b"content-type"))
            self.assertIn(b"more about you than this site can keep", page.body)
            self.assertIn(b"tell the site's administrator", page.body)
        self.assertEqual(session_cookie_names(browser), [])
        self.assertEqual(state_cookies(browser), [])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_two_thousand_groups(self):
        """
        2,000 groups in the ID token, tokens stored: a 502 page for the
        browser (JSON for an API client), never a 500; the log line names
        the session's size and the limit, the largest part (the ID token),
        the large claim, and every fix.
        """
        h = GuardStack(self)
        browser, page = self.callback(h, HTML, groups=GROUPS)
        self.assertRefused(browser, page, as_json=False)
        line = self.too_large_line()
        self.assertIn("login failed: the session of alice does not fit", line)
        self.assertIn("at most 12,288", line)  # max_cookie_bytes of a plain Site (embedded)
        self.assertIn("the largest part: id token", line)
        self.assertIn("largest: groups 24,001", line)
        for fix in ('session.store = "redis"', 'session.claims = "used"',
                    "session.store_tokens = false (", "the ID token alone is"):
            self.assertIn(fix, line)
        self.assertNotIn(GROUPS[0], line)
        self.events.clear()
        browser, page = self.callback(h, API, groups=GROUPS)
        self.assertRefused(browser, page, as_json=True)

    def test_limit_from_max_cookie_chunks(self):
        """In the proxy (max_cookie_bytes from the chunks) the fix names max_cookie_chunks."""
        config = make_config(session={"max_cookie_chunks": 2})
        h = GuardStack(self, config=config)
        browser, page = self.callback(h, HTML, groups=GROUPS)
        self.assertRefused(browser, page, as_json=False)
        line = self.too_large_line()
        self.assertIn("at most 7,600", line)
        self.assertIn("raise session.max_cookie_chunks (now 2, of 3800 bytes each", line)

    def test_claims_alone_too_large(self):
        """
        Without tokens in the cookie the claims are the large part: the log
        says so and how small session.claims = "used" would make them.
        """
        h = GuardStack(self, config=make_config(session={"store_tokens": False}))
        browser, page = self.callback(h, HTML, groups=GROUPS, picture="p" * 10_000)
        self.assertRefused(browser, page, as_json=False)
        line = self.too_large_line()
        self.assertIn("the largest part: claims", line)
        self.assertIn('session.claims = "used" (the claims would take', line)
        self.assertNotIn("store_tokens", line)

    def test_used_claims_still_too_large_with_tokens(self):
        """
        session.claims = "used" but the ID token (with its 2,000 groups) is
        stored: still a 502, and the log points at the ID token.
        """
        h = GuardStack(self, config=make_config(session={"claims": "used"},
                                             headers={"X-Forwarded-User": "sub"}))
        browser, page = self.callback(h, HTML, groups=GROUPS)
        self.assertRefused(browser, page, as_json=False)
        line = self.too_large_line()
        self.assertIn("the largest part: id token", line)
        self.assertNotIn('session.claims = "used"', line)
        self.assertIn("session.store_tokens = false", line)


ROLES_CONFIG = dict(
    session={"claims": "used", "store_tokens": False},
    headers={"X-Forwarded-User": ["preferred_username", "sub"], "X-Forwarded-Groups": "roles"},
    routes=[
        {"path": "/admin", "upstream": "http://up.test", "rule": "Contains(`roles`, `admin`)"},
        {"path": "/", "upstream": "http://up.test"},
    ],
)


class UsedClaimsTests(SynchronousTestCase):
    """session.claims = "used": a session with 2,000 groups fits, headers and rules work."""

    def login(self, h: GuardStack, **claims: Any) -> Any:
        browser = h.browser()
        page = h.login(browser, sub=claims.pop("sub", "alice"), claims=claims)
        self.assertEqual(page.code, 302, page.body)
        return browser

    def test_fits_and_headers_and_rules_work(self):
        """
        With session.claims = "used" (and store_tokens = false) the 2,000
        groups no header or rule reads are left out: the login succeeds in
        one cookie, the identity headers and the route rule see the claims
        they use, and neither the app nor /oidc/userinfo sees the groups.
        """
        h = GuardStack(self, config=make_config(**ROLES_CONFIG))
        alice = self.login(h, groups=GROUPS, roles=["admin", "dev"],
                           preferred_username="alice", picture="https://x/a.png")
        self.assertEqual(session_cookie_names(alice), [SESSION_COOKIE])
        page = alice.get("/admin/x", headers=API)
        self.assertEqual(page.code, 200, page.body)
        self.assertEqual(h.app.header(b"x-forwarded-user"), [b"alice"])
        self.assertEqual(h.app.header(b"x-forwarded-groups"), [b"admin,dev"])
        claims = h.app.identities[-1].claims
        self.assertNotIn("groups", claims)
        self.assertNotIn("picture", claims)
        self.assertEqual((claims["sub"], claims["iss"]), ("alice", ISSUER))
        self.assertNotIn("nonce", claims)
        userinfo = alice.get("/oidc/userinfo", headers=API).json()
        self.assertEqual(sorted(userinfo["claims"]), sorted(claims))
        self.assertNotIn("groups", userinfo["claims"])

        bob = self.login(h, sub="bob", groups=GROUPS, roles=["dev"], preferred_username="bob")
        self.assertEqual(bob.get("/admin/x", headers=API).code, 403)
        self.assertEqual(bob.get("/x", headers=API).code, 200)

    def test_all_claims_by_default(self):
        """Without the opt-in every claim is kept (what an embedded app or /userinfo shows)."""
        h = GuardStack(self)
        alice = self.login(h, picture="https://x/a.png", preferred_username="alice")
        self.assertEqual(open_session(alice.jar[SESSION_COOKIE]).claims["picture"],
                         "https://x/a.png")

    def test_refresh_keeps_only_used_claims(self):
        """
        A refreshed ID token's claims are merged as the login's were: only
        the used ones (any store: here a server-side one, which keeps the
        refresh token).
        """
        h = GuardStack(self, config=make_config(session={"claims": "used"}), memory_store=True)
        alice = self.login(h, groups=["a"], preferred_username="alice", picture="x")
        for grant in h.idp.refresh_grants.values():
            grant.claims.update(groups=["a", "b"], picture="p" * 30_000)
        h.clock.advance(300 - 60 + 1)
        self.assertEqual(alice.get("/x", headers=API).code, 200)
        self.assertEqual(h.idp.refresh_count, 1)
        self.assertEqual(h.app.header(b"x-forwarded-groups"), [b"a,b"])
        assert h.store is not None
        session = self.successResultOf(h.store.load(alice.jar[SESSION_COOKIE]))
        self.assertEqual(session.claims["groups"], ["a", "b"])
        self.assertNotIn("picture", session.claims)
        self.assertNotIn("nonce", session.claims)


class RefreshTooLargeTests(SynchronousTestCase):
    """A refresh whose session no longer fits in the cookie: served, logged, never a 500."""

    def test_refreshed_session_too_large(self):
        """
        The refreshed ID token brings claims that make the session too large
        for the cookie: the request is served on the refreshed tokens (it was
        a 500), the browser keeps its cookie, and the log says why and what
        helps.
        """
        events: List[Dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        h = GuardStack(self)
        browser = h.browser()
        self.assertEqual(h.login(browser, sub="alice").code, 302)
        before = browser.jar[SESSION_COOKIE]
        for grant in h.idp.refresh_grants.values():
            grant.claims.update(groups=GROUPS)
        h.clock.advance(300 - 60 + 1)
        page = browser.get("/x", headers=API)
        self.assertEqual(page.code, 200, page.body)
        self.assertEqual(h.idp.refresh_count, 1)
        self.assertIsNone(page.cookie(SESSION_COOKIE))
        self.assertEqual(browser.jar[SESSION_COOKIE], before)
        self.assertEqual(self.flushLoggedErrors(), [])
        lines = [e for e in events if "does not fit" in e.get("log_format", "")]
        self.assertEqual(len(lines), 1)
        self.assertEqual(lines[0]["what"], "refresh not kept")
