"""
Adversarial suite, class 6: cookies and limits.

Session cookies tampered at every position, truncated, with chunks
reordered, sealed under another key or for another purpose, from another
proxy, or split into too many chunks; floods of state cookies; headers and
cookies over the site's limits; a large body on a route with a small cap; a
flood of tokens naming unknown keys. Each gets its clean answer (401, 413,
431, ...), never a 500, and nothing reaches the upstream that should not.
"""

from __future__ import annotations

import secrets
from typing import Dict

from twisted.trial.unittest import SynchronousTestCase

from oidcproxy.oidc.login import STATE_PURPOSE
from oidcproxy.sessions.crypto import Sealer
from oidcproxy.sessions.stores.cookie import PURPOSE as SESSION_PURPOSE

from .adversarial import API, CLIENT_ID, ISSUER, Failures, parse_response
from .fakes import SECRET, SESSION_COOKIE, STATE_PREFIX, ProxyStack
from .idp import Browser

BIG_CLAIMS = {"groups": [f"group-{i:04d}-{'x' * 40}" for i in range(50)]}


def refused(stack: ProxyStack, browser: Browser, jar: Dict[str, str]) -> tuple:
    """The API answer for C{jar}, and whether anything reached the upstream."""
    browser.jar.clear()
    browser.jar.update(jar)
    before = len(stack.upstream.requests)
    page = browser.get("/x", headers=API)
    return page, len(stack.upstream.requests) > before


class SessionCookieTests(SynchronousTestCase):
    def test_tampered_truncated_rekeyed(self):
        """Every altered session cookie is refused (401) and cleared; nothing goes upstream."""
        stack = ProxyStack(self)
        good = stack.logged_in().jar[SESSION_COOKIE]
        other_key = Sealer([b"y" * 32])
        plain = Sealer([SECRET.encode()]).unseal(good, SESSION_PURPOSE)
        assert plain is not None
        variants = []
        for at in range(0, len(good), 5):
            swapped = "A" if good[at] != "A" else "B"
            variants.append((f"tampered @{at}", good[:at] + swapped + good[at + 1:]))
        for size in (0, 1, 10, len(good) // 2, len(good) - 1):
            variants.append((f"truncated to {size}", good[:size]))
        variants += [
            ("re-keyed", other_key.seal(plain, SESSION_PURPOSE)),
            ("sealed as a state", Sealer([SECRET.encode()]).seal(plain, STATE_PURPOSE)),
            ("doubled", good + good),
            ("reversed", good[::-1]),
            ("base64 padding", good + "=="),
            ("quoted", '"' + good + '"'),
        ]
        failures = Failures(self, "session cookies")
        browser = stack.browser()
        for label, value in variants:
            page, reached = refused(stack, browser, {SESSION_COOKIE: value})
            ok = page.code == 401 and not reached
            failures.check(ok, label, value, f"{page.code}, upstream reached: {reached}")
        failures.done(20)
        page, reached = refused(stack, browser, {SESSION_COOKIE: good})
        self.assertEqual((page.code, reached), (200, True))

    def test_chunks_reordered_and_too_many(self):
        """A chunked session with chunks swapped, missing or far too many: 401, never a 500."""
        stack = ProxyStack(self)
        browser = stack.logged_in(claims=BIG_CLAIMS)
        chunks = {k: v for k, v in browser.jar.items() if k.startswith(SESSION_COOKIE)
                  and not k.startswith(STATE_PREFIX)}
        self.assertGreater(len(chunks), 1)
        names = sorted(chunks)
        swapped = dict(chunks)
        swapped[names[0]], swapped[names[1]] = chunks[names[1]], chunks[names[0]]
        missing = {k: v for k, v in chunks.items() if k != names[1]}
        flood = {SESSION_COOKIE: "x", **{f"{SESSION_COOKIE}_{i}": "x" * 10 for i in range(1, 80)}}
        extra = dict(chunks, **{f"{SESSION_COOKIE}_{i}": "junk" for i in range(len(chunks), 60)})
        probe = stack.browser()
        for label, jar in (("swapped", swapped), ("missing chunk", missing),
                           ("80 chunks", flood), ("extra chunks", extra)):
            page, reached = refused(stack, probe, jar)
            self.assertEqual((page.code, reached), (401, False), label)
        page, reached = refused(stack, probe, chunks)
        self.assertEqual((page.code, reached), (200, True))

    def test_cross_proxy_cookie(self):
        """A session cookie of another proxy (another secret) is refused here."""
        other = ProxyStack(self, config=None)
        here = ProxyStack(self)
        # Same secret in the test config: a different one is the real case.
        value = other.logged_in().jar[SESSION_COOKIE]
        plain = Sealer([SECRET.encode()]).unseal(value, SESSION_PURPOSE)
        assert plain is not None
        foreign = Sealer([secrets.token_bytes(32)]).seal(plain, SESSION_PURPOSE)
        page, reached = refused(here, here.browser(), {SESSION_COOKIE: foreign})
        self.assertEqual((page.code, reached), (401, False))


class StateCookieTests(SynchronousTestCase):
    def test_flood_of_state_cookies(self):
        """
        Two hundred state cookies (garbage and stale): the next login still
        works, and the browser is left with at most max_count of them.
        """
        stack = ProxyStack(self)
        browser = stack.browser()
        for i in range(200):
            browser.jar[f"{STATE_PREFIX}{secrets.token_urlsafe(8)}"] = "garbage" if i % 2 else ""
        page = stack.login(browser)
        self.assertEqual(page.code, 302)
        self.assertIn(SESSION_COOKIE, browser.jar)
        left = [n for n in browser.jar if n.startswith(STATE_PREFIX)]
        self.assertLessEqual(len(left), stack.config.state_cookie.max_count)


class LimitTests(SynchronousTestCase):
    def test_header_limits(self):
        """A Cookie or header line over the site's limit gets 431, too many headers 400; never upstream."""
        stack = ProxyStack(self)
        failures = Failures(self, "header limits")
        limit = stack.site.max_header_size
        for label, data in (
            ("long cookie", b"GET /public/x HTTP/1.1\r\nHost: app.test\r\nCookie: a="
             + b"x" * (limit + 10) + b"\r\n\r\n"),
            ("long header", b"GET /public/x HTTP/1.1\r\nHost: app.test\r\nX-Big: "
             + b"x" * (limit + 10) + b"\r\n\r\n"),
            ("long URL", b"GET /public/" + b"x" * (limit + 10) + b" HTTP/1.1\r\nHost: app.test\r\n\r\n"),
            ("many headers", b"GET /public/x HTTP/1.1\r\nHost: app.test\r\n"
             + b"".join(b"X-H%d: " % i + b"y" * 200 + b"\r\n" for i in range(limit // 200 + 10))
             + b"\r\n"),
        ):
            out = stack.raw(data)
            status = parse_response(out)[0] if out else None
            failures.check(status in (400, 431), label, len(data), f"answered {out[:80]!r}")
        failures.done(4)
        self.assertEqual(stack.upstream.requests, [])

    def test_large_body_small_cap(self):
        """A body over the route's 1 KiB cap: 413 before it is read, by length or chunked."""
        stack = ProxyStack(self)
        for data in (
            b"POST /small/x HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5000\r\n\r\n" + b"z" * 5000,
            b"POST /small/x HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n"
            + (b"400\r\n" + b"z" * 1024 + b"\r\n") * 3,
        ):
            out = stack.raw(data)
            self.assertEqual(parse_response(out)[0], 413, data[:60])
        self.assertEqual(stack.upstream.requests, [])
        out = stack.raw(b"POST /small/x HTTP/1.1\r\nHost: app.test\r\nContent-Length: 10\r\n\r\n"
                        + b"z" * 10)
        self.assertEqual(parse_response(out)[0], 200)

    def test_unknown_kid_flood_throttled(self):
        """
        Two hundred bearer tokens naming unknown keys: all 401, and the JWKS
        is refetched at most once per jwks_min_refresh_interval.
        """
        stack = ProxyStack(self)
        browser = stack.browser()
        fetches = stack.idp.jwks_fetches
        now = int(stack.clock.seconds())
        claims = {"iss": ISSUER, "aud": CLIENT_ID, "sub": "svc", "iat": now, "exp": now + 300}
        codes = set()
        for i in range(200):
            token = stack.idp.id_token(claims, kid=f"unknown-{i}")
            page = browser.get("/api/x", headers={b"authorization": [b"Bearer " + token.encode()],
                                                  b"accept": [b"application/json"]})
            codes.add(page.code)
            if i == 100:
                oidc = stack.config.oidc
                assert oidc is not None
                stack.clock.advance(oidc.jwks_min_refresh_interval + 1)
        self.assertEqual(codes, {401})
        self.assertLessEqual(stack.idp.jwks_fetches - fetches, 2)
        self.assertGreaterEqual(stack.idp.jwks_fetches - fetches, 1)
