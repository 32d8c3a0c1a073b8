"""
Tests for access tokens per provider: a route of a named provider takes
that provider's own tokens (its issuer, its keys, its client id as audience)
and C{[bearer]}'s other issuer's, and refuses another provider's; a route of
C{[oidc]} is as it was. Each on the first request (validated: the waiting
way) and the next (cached: the synchronous way).
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import jwt
from treq.testing import StubTreq
from twisted.trial.unittest import SynchronousTestCase

from oidcproxy.core.context import peek

from .fakes import CLIENT_ID
from .idp import ISSUER, KEY_ID
from .test_adv_tokens import hmac_signed
from .test_guard_bearer import BEARER_HMAC_SECRET, GATEWAY, JWKSResource
from .test_guard_multi import CORP, CORP_CLIENT, OTHER_KEY, Stack

ROUTES = [{"path": "/corp-api", "upstream": "http://up.test", "provider": "corp", "auth": "bearer"},
          {"path": "/corp-both", "upstream": "http://up.test", "provider": "corp",
           "auth": "session_or_bearer"},
          {"path": "/corp-maybe", "upstream": "http://up.test", "provider": "corp",
           "auth": "optional"},
          {"path": "/api", "upstream": "http://up.test", "auth": "bearer"}]


def bearer(token: str) -> Dict[bytes, Any]:
    return {b"authorization": [b"Bearer " + token.encode()], b"accept": [b"application/json"]}


class ProviderBearerTests(SynchronousTestCase):
    """Access tokens on the routes of a named provider."""

    def setUp(self) -> None:
        self.s = Stack(self, routes=ROUTES)

    def token(self, issuer: str = CORP, audience: str = CORP_CLIENT, key: Any = None,
              **claims: Any) -> str:
        now = int(self.s.h.clock.seconds())
        body = {"iss": issuer, "aud": audience, "sub": "svc", "iat": now, "exp": now + 300,
                "scope": "read", "client_id": "spa", **claims}
        if key is not None:
            return jwt.encode(body, key, algorithm="RS256", headers={"kid": KEY_ID})
        return self.s.corp.id_token(body)

    def get(self, path: str, token: str) -> Any:
        return self.s.h.browser().get(path, headers=bearer(token))

    def twice(self, path: str, token: str) -> Any:
        """The codes of two requests with C{token}: validated, then from the cache."""
        return self.get(path, token).code, self.get(path, token).code

    def challenge(self, page: Any) -> Optional[bytes]:
        return page.header(b"www-authenticate")

    def test_own_token(self) -> None:
        """corp's token (its issuer, its client as audience) on each bearer mode of corp's routes."""
        token = self.token(preferred_username="svc-corp")
        for path in ("/corp-api", "/corp-both", "/corp-maybe"):
            self.assertEqual(self.twice(path, token), (200, 200), path)
        self.assertEqual(self.s.h.app.header(b"x-forwarded-user"), [b"svc-corp"])

    def test_access_log_names_provider(self) -> None:
        """A corp token's request names corp for the access log (both ways); [oidc]'s none."""
        seen = []
        self.s.h.app.action = lambda request: seen.append(peek(request).provider)  # type: ignore[union-attr]
        token = self.token()
        self.assertEqual(self.twice("/corp-api", token), (200, 200))
        self.assertEqual(self.get("/api", self.token(issuer=ISSUER, audience=CLIENT_ID)).code, 200)
        self.assertEqual(seen, ["corp", "corp", None])

    def test_default_providers_token_refused(self) -> None:
        """[oidc]'s token on corp's route: 401 invalid_token, first and cached."""
        token = self.token(issuer=ISSUER, audience=CLIENT_ID)
        for _ in range(2):
            page = self.get("/corp-api", token)
            self.assertEqual(page.code, 401)
            self.assertIn(b'error="invalid_token"', self.challenge(page) or b"")
        self.assertEqual(len(self.s.h.app.requests), 0)

    def test_corp_token_refused_on_default_route(self) -> None:
        """The other way: corp's token on [oidc]'s bearer route is refused; [oidc]'s passes."""
        self.assertEqual(self.twice("/api", self.token()), (401, 401))
        self.assertEqual(self.twice("/api", self.token(issuer=ISSUER, audience=CLIENT_ID)),
                         (200, 200))

    def test_other_client_audience_refused(self) -> None:
        """A token of corp's issuer for [oidc]'s client id: not corp's audience, 401."""
        self.assertEqual(self.twice("/corp-api", self.token(audience=CLIENT_ID)), (401, 401))

    def test_checked_with_keys(self) -> None:
        """A token with corp's iss signed with a key corp does not publish: 401."""
        self.assertEqual(self.twice("/corp-api", self.token(key=OTHER_KEY)), (401, 401))

    def test_optional_without_token_anonymous(self) -> None:
        """corp's optional route without a token or session: anonymous."""
        page = self.s.h.browser().get("/corp-maybe", headers={b"accept": [b"application/json"]})
        self.assertEqual(page.code, 200)
        self.assertEqual(self.s.h.app.header(b"x-forwarded-user"), [])

    def test_session_still_served(self) -> None:
        """corp's session_or_bearer route still serves corp's session."""
        browser = self.s.h.browser()
        self.s.corp_login(browser)
        self.assertEqual(browser.get("/corp-both", headers={b"accept": [b"application/json"]}).code,
                         200)


class ExternalIssuerTests(SynchronousTestCase):
    """[bearer]'s other issuer is accepted on a named provider's routes too, beside its own."""

    def test_gateway_and_own(self) -> None:
        gateway = JWKSResource()
        s = Stack(self, routes=ROUTES,
                  config={"bearer": {"issuer": GATEWAY, "audiences": ["orders"],
                                     "algorithms": ["HS256", "RS256"],
                                     "hmac_secret": BEARER_HMAC_SECRET}},
                  bearer_keys_http=StubTreq(gateway))
        now = int(s.h.clock.seconds())
        claims = {"iss": GATEWAY, "aud": "orders", "sub": "svc", "iat": now, "exp": now + 300}
        token = hmac_signed(claims, BEARER_HMAC_SECRET.encode())
        browser = s.h.browser()
        for _ in range(2):
            self.assertEqual(browser.get("/corp-api", headers=bearer(token)).code, 200)
        own = s.corp.id_token({**claims, "iss": CORP, "aud": "orders"})
        self.assertEqual(browser.get("/corp-api", headers=bearer(own)).code, 200)
        forged = hmac_signed(claims, b"another secret of 32 bytes or more!!")
        self.assertEqual(browser.get("/corp-api", headers=bearer(forged)).code, 401)
