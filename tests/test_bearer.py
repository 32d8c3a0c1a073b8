"""
Tests for L{oidcproxy.oidc.bearer}: the C{Authorization} header, JWT access
tokens, introspection of opaque tokens, and the verified-token cache.

The provider is a real L{Provider} talking to the fake IdP of
L{tests.test_provider} through StubTreq, on a L{Clock}. Each refusal test
breaks exactly one rule of an otherwise valid token and asserts the exact
reason. Nothing sleeps.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional

from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet.defer import CancelledError, Deferred
from twisted.trial.unittest import SynchronousTestCase

from oidcproxy.oidc.bearer import BearerValidator, bearer_token
from oidcproxy.oidc.provider import ClientAuth, Provider, ProviderError, ProviderMetadata
from oidcproxy.oidc.tokens import MAX_TOKEN_SIZE, JWTVerifier, TokenError
from tests.fakes import START, clock_at
from tests.test_provider import (
    AUTHORIZATION_ENDPOINT,
    CLIENT_ID,
    CLIENT_SECRET,
    HOLD,
    INTROSPECTION_ENDPOINT,
    INTROSPECTION_PATH,
    ISSUER,
    JWK_A,
    JWK_B,
    JWKS_PATH,
    JWKS_URI,
    KEY_A,
    KEY_B,
    TOKEN_ENDPOINT,
    FailingHTTP,
    answer,
    provider_stack,
)
from tests.test_tokens import public_jwk, sign_raw

NOW = int(START)
"""The fixture stack's Clock when a test begins."""
API = "https://api.test"
OTHER_API = "urn:orders"
EC_KEY = ec.generate_private_key(ec.SECP256R1())
JWK_EC = public_jwk(EC_KEY, kid="ec-1", alg="ES256", use="sig")
HMAC_SECRET = b"an-hmac-secret-that-is-long-enough-32b"

DROP = object()
"""A claim or header value meaning: leave this member out."""


def at_claims(**changes: Any) -> Dict[str, Any]:
    """Valid access token claims at L{NOW} (RFC 9068), with C{changes} (L{DROP} removes)."""
    result: Dict[str, Any] = {
        "iss": ISSUER,
        "aud": API,
        "sub": "user-1",
        "client_id": "spa",
        "scope": "read write",
        "jti": "at-1",
        "iat": NOW,
        "exp": NOW + 300,
    }
    for name, value in changes.items():
        if value is DROP:
            result.pop(name, None)
        else:
            result[name] = value
    return result


def access_token(payload: Optional[Dict[str, Any]] = None, key: Any = KEY_A, alg: str = "RS256",
                 **header: Any) -> str:
    """
    A JWT of C{payload} (default: L{at_claims}) signed with C{key}; the
    header has C{alg}, C{typ="at+jwt"} and C{kid="kid-a"} (ES256:
    C{"ec-1"}), changed by keyword arguments (L{DROP} removes).
    """
    members: Dict[str, Any] = {"alg": alg, "typ": "at+jwt", "kid": "ec-1" if alg == "ES256" else "kid-a"}
    for name, value in header.items():
        if value is DROP:
            members.pop(name, None)
        else:
            members[name] = value
    body = at_claims() if payload is None else payload
    return sign_raw(json.dumps(members).encode(), json.dumps(body).encode(), key, alg)


ACTIVE = {"active": True, "iss": ISSUER, "aud": API, "sub": "user-1", "scope": "read", "exp": NOW + 3600}
OPAQUE = "opaque-token-8Zk2"


class Env:
    """A started provider over the fake IdP, a counting verifier and a validator, at L{NOW}."""

    def __init__(self, start: bool = True, introspection_answer: Any = ACTIVE, **kwargs: Any) -> None:
        provider_kwargs = kwargs.pop("provider", {})
        self.h = provider_stack(start=False,
                                endpoints={"introspection_endpoint": INTROSPECTION_ENDPOINT},
                                **provider_kwargs)
        self.idp = self.h.idp
        self.clock = self.h.clock
        self.provider = self.h.provider
        self.idp.handlers[JWKS_PATH] = lambda r: answer({"keys": [JWK_A, JWK_EC]})
        self.introspection_answer = introspection_answer
        self.idp.handlers[INTROSPECTION_PATH] = lambda r: answer(self.introspection_answer)
        if start:
            self.provider.start()
            self.h.flush()
            assert self.provider.ready

        self.verifier = JWTVerifier(["RS256", "ES256"])
        self.verify_calls = 0
        verify = self.verifier.verify

        def counting_verify(token: str, keys: Any) -> Any:
            self.verify_calls += 1
            return verify(token, keys)

        self.verifier.verify = counting_verify  # type: ignore[method-assign]
        self.keys_for_calls = 0
        keys_for = self.provider.keys_for

        async def counting_keys_for(kid: Optional[str]) -> Any:
            self.keys_for_calls += 1
            return await keys_for(kid)

        self.provider.keys_for = counting_keys_for  # type: ignore[method-assign]

        kwargs.setdefault("issuer", ISSUER)
        kwargs.setdefault("audiences", [API, OTHER_API])
        self.validator = BearerValidator(self.provider, self.verifier, self.clock, **kwargs)

    def validate(self, token: Any) -> Deferred:
        return self.h.run(self.validator.validate(token))

    def jwks_requests(self) -> int:
        return self.idp.count(JWKS_PATH)

    def introspections(self) -> int:
        return self.idp.count(INTROSPECTION_PATH)


class _Base(SynchronousTestCase):
    def env(self, **kwargs: Any) -> Env:
        return Env(**kwargs)

    def accepted(self, env: Env, token: Any) -> Dict[str, Any]:
        return self.successResultOf(env.validate(token))

    def refused(self, env: Env, token: Any, reason: str) -> TokenError:
        error = self.failureResultOf(env.validate(token), TokenError).value
        self.assertEqual(error.reason, reason, error.detail)
        if isinstance(token, str):
            for segment in token.split("."):
                if len(segment) >= 8:
                    self.assertNotIn(segment, str(error))
        return error


# -- the Authorization header ------------------------------------------------


class BearerTokenTests(SynchronousTestCase):
    def test_token(self):
        """One Bearer header, scheme in any case, one space, a b64token: the token."""
        cases = [
            (b"Bearer abc", "abc"),
            (b"bearer abc", "abc"),
            (b"BEARER abc", "abc"),
            (b"bEaReR abc", "abc"),
            (b"Bearer a.b.c", "a.b.c"),
            (b"Bearer AZaz09-._~+/", "AZaz09-._~+/"),
            (b"Bearer abc==", "abc=="),
            (b"Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln",
             "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln"),
        ]
        for value, token in cases:
            self.assertEqual(bearer_token([value]), token, value)

    def test_none(self):
        """No header, or another scheme: None."""
        for values in [None, [], [b"Basic dXNlcjpwYXNz"], [b"Digest username=\"u\", realm=\"r\""],
                       [b"Negotiate abc"], [b"DPoP abc"], [b"Bearerx abc"], [b"Token abc"], [b"Basic"]]:
            self.assertIsNone(bearer_token(values), values)

    def test_malformed(self):
        """Several headers, an empty token, bad characters, no scheme: malformed_authorization."""
        cases = [
            [b"Bearer abc", b"Bearer abc"],
            [b"Bearer abc", b"Bearer def"],
            [b"Basic dXNlcjpwYXNz", b"Bearer abc"],
            [b"Bearer"],
            [b"Bearer "],
            [b"bearer  abc"],
            [b"Bearer abc "],
            [b"Bearer  "],
            [b"Bearer abc def"],
            [b"Bearer\tabc"],
            [b"Bearer abc\t"],
            [b"Bearer abc,Bearer def"],
            [b"Bearer ab\"c"],
            [b"Bearer ab%c"],
            [b"Bearer ab=c"],
            [b"Bearer ===="],
            [b"Bearer \xc3\xa9t\xc3\xa9"],
            [b"Bearer abc\x00"],
            [b"Bearer abc\r\n"],
            [b""],
            [b" Bearer abc"],
            [b"=Bearer abc"],
        ]
        for values in cases:
            error = self.assertRaises(TokenError, bearer_token, values)
            self.assertEqual(error.reason, "malformed_authorization", values)
            self.assertNotIn("abc", str(error))


# -- JWT access tokens -------------------------------------------------------


class JWTTests(_Base):
    def test_valid_rs256(self):
        env = self.env()
        claims = self.accepted(env, access_token())
        self.assertEqual(claims, at_claims())
        self.assertEqual(env.verify_calls, 1)
        self.assertEqual(env.introspections(), 0)

    def test_valid_es256(self):
        env = self.env()
        self.assertEqual(self.accepted(env, access_token(key=EC_KEY, alg="ES256")), at_claims())

    def test_typ_variants(self):
        """typ absent, JWT or at+jwt (with or without application/), in any case: accepted."""
        env = self.env()
        for typ in [DROP, "JWT", "jwt", "at+jwt", "AT+JWT", "application/at+jwt", "Application/At+JWT"]:
            self.accepted(env, access_token(at_claims(jti=f"t-{typ}"), typ=typ))

    def test_bad_typ(self):
        env = self.env()
        for typ in ["logout+jwt", "application/logout+jwt", "secevent+jwt", "JOSE", "dpop+jwt", "at+JWT2",
                    "", "jwt ", 7, None, ["at+jwt"]]:
            self.refused(env, access_token(typ=typ), "bad_typ")

    def test_audience(self):
        """aud a string or an array; one accepted audience among others is enough."""
        env = self.env()
        for aud in [API, OTHER_API, [API], ["https://elsewhere.test", OTHER_API], [API, OTHER_API]]:
            self.accepted(env, access_token(at_claims(aud=aud, jti=repr(aud))))

    def test_bad_aud(self):
        env = self.env()
        for aud in [DROP, None, "https://elsewhere.test", API + "/", API.upper(), [], ["https://elsewhere.test"],
                    [API, 7], 7, {"aud": API}, CLIENT_ID]:
            self.refused(env, access_token(at_claims(aud=aud)), "bad_aud")

    def test_bad_iss(self):
        env = self.env()
        for iss in [DROP, None, "https://evil.test/realms/main", ISSUER + "/", ISSUER.upper(), 7, [ISSUER]]:
            self.refused(env, access_token(at_claims(iss=iss)), "bad_iss")

    def test_exp(self):
        env = self.env()
        for exp in [DROP, None, "1700000300", True, 10**400, [NOW + 300]]:
            self.refused(env, access_token(at_claims(exp=exp)), "bad_exp")
        # now >= exp + leeway (60): expired; one second less: accepted.
        self.refused(env, access_token(at_claims(exp=NOW - 60)), "expired")
        self.refused(env, access_token(at_claims(exp=NOW - 3600)), "expired")
        self.accepted(env, access_token(at_claims(exp=NOW - 59)))

    def test_iat(self):
        """iat optional; when present a number, not beyond the leeway in the future."""
        env = self.env()
        self.accepted(env, access_token(at_claims(iat=DROP)))
        self.accepted(env, access_token(at_claims(iat=NOW + 60, jti="later")))
        self.accepted(env, access_token(at_claims(iat=NOW - 86400, jti="old")))
        self.refused(env, access_token(at_claims(iat=NOW + 61)), "iat_in_future")
        for iat in ["1700000000", None, False]:
            self.refused(env, access_token(at_claims(iat=iat)), "bad_iat")

    def test_nbf(self):
        env = self.env()
        self.accepted(env, access_token(at_claims(nbf=NOW)))
        self.accepted(env, access_token(at_claims(nbf=NOW + 59, jti="soon")))
        self.refused(env, access_token(at_claims(nbf=NOW + 61)), "not_yet_valid")
        for nbf in ["1700000000", None, True]:
            self.refused(env, access_token(at_claims(nbf=nbf)), "bad_nbf")

    def test_leeway(self):
        env = self.env(leeway=0)
        self.refused(env, access_token(at_claims(exp=NOW)), "expired")
        self.refused(env, access_token(at_claims(nbf=NOW + 1)), "not_yet_valid")
        self.refused(env, access_token(at_claims(iat=NOW + 1)), "iat_in_future")

    def test_id_token_refused(self):
        """An ID token (nonce, at_hash, c_hash or Keycloak's typ ID) is not an access token."""
        env = self.env(audiences=[API, CLIENT_ID])
        id_token = {"iss": ISSUER, "aud": CLIENT_ID, "sub": "user-1", "iat": NOW, "exp": NOW + 300,
                    "nonce": "n-0S6_WzA2Mj", "at_hash": "77QmUPtjPfzWtF2AnpK9RQ"}
        self.refused(env, access_token(id_token, typ="JWT"), "id_token_as_access_token")
        self.refused(env, access_token(id_token, typ=DROP), "id_token_as_access_token")
        # Each mark alone is enough.
        for mark in [{"nonce": "n"}, {"at_hash": "x"}, {"c_hash": "y"}, {"typ": "ID"}, {"typ": "id"}]:
            plain = {k: v for k, v in id_token.items() if k not in ("nonce", "at_hash")}
            self.refused(env, access_token(dict(plain, **mark), typ="JWT"), "id_token_as_access_token")
        # Keycloak 24 and older: access tokens carry the login nonce, marked typ Bearer.
        keycloak = at_claims(nonce="n-0S6_WzA2Mj", typ="Bearer", azp=CLIENT_ID)
        self.assertEqual(self.accepted(env, access_token(keycloak, typ="JWT")), keycloak)
        # A declared at+jwt is an access token, whatever it carries.
        self.accepted(env, access_token(at_claims(nonce="n", jti="declared"), typ="application/at+jwt"))

    def test_more_id_token_marks(self):
        """s_hash, Cognito's token_use id and Keycloak's Serialized-ID mark an ID token too."""
        env = self.env()
        for mark in [{"s_hash": "x"}, {"token_use": "id"}, {"token_use": "ID"}, {"token_use": "id_token"},
                     {"typ": "Serialized-ID"}]:
            self.refused(env, access_token(at_claims(**mark), typ="JWT"), "id_token_as_access_token")

    def test_refresh_token_refused(self):
        """Keycloak's typ Refresh, Offline or Logout, and token_use refresh, mark a refresh token."""
        env = self.env()
        for mark in [{"typ": "Refresh"}, {"typ": "Offline"}, {"typ": "logout"}, {"token_use": "refresh"},
                     {"token_use": "refresh_token"}]:
            self.refused(env, access_token(at_claims(**mark), typ="JWT"), "refresh_token_as_access_token")
            self.refused(env, access_token(at_claims(**mark), typ=DROP), "refresh_token_as_access_token")

    def test_keycloak_bearer_excuses_the_nonce_only(self):
        """typ Bearer lets Keycloak's nonce pass, not an at_hash, c_hash or s_hash beside it."""
        env = self.env()
        for mark in ["at_hash", "c_hash", "s_hash"]:
            claims = at_claims(nonce="n", typ="Bearer", **{mark: "x"})
            self.refused(env, access_token(claims, typ="JWT"), "id_token_as_access_token")
        self.accepted(env, access_token(at_claims(nonce="n", typ="Bearer"), typ="JWT"))

    def test_hmac_needs_no_keys(self):
        """An HS256 token (the verifier has its own secret) is checked without the provider's keys."""
        env = self.env(start=False)
        env.validator.verifier = JWTVerifier(["RS256", "HS256"], hmac_secret=HMAC_SECRET)
        self.accepted(env, access_token(key=HMAC_SECRET, alg="HS256"))
        self.assertEqual(env.keys_for_calls, 0)
        # An RS256 token still needs them: not loaded yet, the provider says so.
        error = self.failureResultOf(env.validate(access_token()), ProviderError).value
        self.assertEqual(error.reason, "not_ready")

    def test_signature_and_keys(self):
        """Signature, algorithm and key rules are the verifier's, with its reasons."""
        env = self.env()
        self.refused(env, access_token(key=KEY_B), "bad_signature")
        self.refused(env, access_token(key=HMAC_SECRET, alg="HS256"), "alg_not_allowed")
        self.refused(env, access_token(crit=["exp"]), "crit_header")
        good = access_token()
        header, payload, signature = good.split(".")
        self.refused(env, header + "." + payload + "." + signature[:-4] + "AAAA", "bad_signature")
        self.refused(env, header + "." + payload + ".", "bad_signature")
        self.assertEqual(env.jwks_requests(), 1)

    def test_unknown_kid_refetches_rate_limited(self):
        """An unknown kid makes the provider refetch the JWKS, at most once per jwks_min_refresh."""
        env = self.env(provider={"jwks_min_refresh": 60.0})
        self.assertEqual(env.jwks_requests(), 1)
        env.clock.advance(60)
        token = access_token(at_claims(exp=NOW + 3600), key=KEY_B, kid="kid-b")
        self.refused(env, token, "unknown_kid")
        self.assertEqual(env.jwks_requests(), 2)
        for _ in range(10):
            self.refused(env, token, "unknown_kid")
        self.assertEqual(env.jwks_requests(), 2)
        # The IdP rotates its keys: after the interval the new key is found.
        env.idp.handlers[JWKS_PATH] = lambda r: answer({"keys": [JWK_A, JWK_B]})
        env.clock.advance(60)
        self.accepted(env, access_token(at_claims(exp=NOW + 3600), key=KEY_B, kid="kid-b"))
        self.assertEqual(env.jwks_requests(), 3)

    def test_unusable_kid_does_not_refetch(self):
        """A kid with a refused alg, or a kid that is not a short string, never makes the provider refetch."""
        env = self.env(provider={"jwks_min_refresh": 0.0})
        self.refused(env, access_token(key=HMAC_SECRET, alg="HS256", kid="new"), "alg_not_allowed")
        self.refused(env, access_token(kid=7), "malformed")
        self.refused(env, access_token(kid="k" * 257), "malformed")
        self.assertEqual(env.jwks_requests(), 1)

    def test_malformed(self):
        env = self.env()
        for token in [None, b"a.b.c", 7, "", "a.b.c", "!!.??.**", "x" * (MAX_TOKEN_SIZE + 1),
                      "é.é.é", "eyJhbGciOiJSUzI1NiJ9.e30.é"]:
            self.refused(env, token, "malformed")
        self.assertEqual(env.verify_calls, 0)
        self.assertEqual(env.introspections(), 0)

    def test_opaque_without_introspection(self):
        env = self.env()
        for token in [OPAQUE, "a.b", "a.b.c.d.e", "abc=="]:
            self.refused(env, token, "not_a_jwt")
        self.assertEqual(env.introspections(), 0)

    def test_provider_not_ready(self):
        """Keys not loaded yet: the ProviderError (503 not_ready) comes through, and is not cached."""
        env = self.env(start=False)
        token = access_token()
        error = self.failureResultOf(env.validate(token), ProviderError).value
        self.assertEqual((error.status, error.reason), (503, "not_ready"))
        env.provider.start()
        env.h.flush()
        self.accepted(env, token)

    def test_constructor_checks(self):
        env = self.env()
        bad: List[Dict[str, Any]] = [
            dict(issuer="", audiences=[API]),
            dict(issuer=ISSUER, audiences=[]),
            dict(issuer=ISSUER, audiences=API),
            dict(issuer=ISSUER, audiences=[API, ""]),
            dict(issuer=ISSUER, audiences=[API, 7]),
            dict(issuer=ISSUER, audiences=[API], leeway=-1),
            dict(issuer=ISSUER, audiences=[API], leeway=float("nan")),
            dict(issuer=ISSUER, audiences=[API], introspection_cache=-1),
            dict(issuer=ISSUER, audiences=[API], introspection_cache=float("inf")),
            dict(issuer=ISSUER, audiences=[API], cache_size=-1),
            dict(issuer=ISSUER, audiences=[API], cache_size=1.5),
            dict(issuer=ISSUER, audiences=[API], cache_size=True),
        ]
        for kwargs in bad:
            self.assertRaises(ValueError, BearerValidator, env.provider, env.verifier, env.clock, **kwargs)
        BearerValidator(env.provider, env.verifier, env.clock, issuer=ISSUER, audiences=(API,), cache_size=0,
                        introspection_cache=0, leeway=0)


# -- access tokens under the default audience (the client id) -------------------


def id_claims(**changes: Any) -> Dict[str, Any]:
    """An ID token's claims with none of the ID-token marks (as some refreshed ones are)."""
    claims: Dict[str, Any] = {"iss": ISSUER, "aud": CLIENT_ID, "azp": CLIENT_ID, "sub": "user-1",
                              "iat": NOW, "exp": NOW + 300, "auth_time": NOW - 60, "sid": "s-1",
                              "email": "alice@example.test", "acr": "1"}
    claims.update(changes)
    return claims


class EvidenceTests(_Base):
    """
    With require_evidence (the audiences are the client id alone, which ID
    tokens name too) a JWT must show that it is an access token.
    """

    def env(self, **kwargs: Any) -> Env:
        kwargs.setdefault("audiences", [CLIENT_ID])
        kwargs.setdefault("require_evidence", True)
        return Env(**kwargs)

    def test_id_token_without_marks_refused(self):
        """An ID token without nonce or at_hash, typed JWT or untyped: not_an_access_token."""
        env = self.env()
        for typ in ["JWT", DROP]:
            self.refused(env, access_token(id_claims(), typ=typ), "not_an_access_token")
        # Without the requirement (configured audiences naming the client id) it would pass:
        # the requirement is what refuses it.
        plain = self.env(require_evidence=False)
        self.accepted(plain, access_token(id_claims(), typ="JWT"))

    def test_each_evidence_accepted(self):
        """typ at+jwt, scope, scp, client_id, cid, token_use access, Keycloak's typ Bearer: each is enough."""
        env = self.env()
        self.accepted(env, access_token(id_claims(), typ="at+jwt"))
        self.accepted(env, access_token(id_claims(jti="app"), typ="application/at+jwt"))
        for evidence in [{"scope": "openid"}, {"scp": ["read"]}, {"client_id": "spa"}, {"cid": "0oa1"},
                         {"token_use": "access"}, {"token_use": "access_token"}, {"typ": "Bearer"},
                         {"typ": "bearer"}]:
            self.accepted(env, access_token(id_claims(**evidence), typ="JWT"))

    def test_empty_evidence_refused(self):
        """A claim present with null is no evidence."""
        env = self.env()
        for empty in [{"scope": None}, {"client_id": None}, {"token_use": "other"}, {"typ": "JWT"}]:
            self.refused(env, access_token(id_claims(**empty), typ="JWT"), "not_an_access_token")

    def test_other_reasons_come_first(self):
        """A token for another audience, or with ID-token marks, is refused for that."""
        env = self.env()
        self.refused(env, access_token(id_claims(aud="someone-else"), typ="JWT"), "bad_aud")
        self.refused(env, access_token(id_claims(iss="https://evil.test"), typ="JWT"), "bad_iss")
        self.refused(env, access_token(id_claims(nonce="n"), typ="JWT"), "id_token_as_access_token")

    def test_refusal_not_cached_and_token_not_in_error(self):
        """A refused ID token is checked again each time; its text is never in the error."""
        env = self.env()
        token = access_token(id_claims(), typ="JWT")
        for _ in range(2):
            error = self.refused(env, token, "not_an_access_token")
            self.assertNotIn("user-1", str(error))
        self.assertEqual(env.verify_calls, 2)


# -- the cache -----------------------------------------------------------------


class CacheTests(_Base):
    def test_hit(self):
        """The second validation: no keys lookup, no JWKS request, no signature check."""
        env = self.env()
        token = access_token()
        first = self.accepted(env, token)
        self.assertEqual((env.verify_calls, env.keys_for_calls), (1, 1))
        self.assertEqual((env.validator.cache_hits, env.validator.cache_misses), (0, 1))
        jwks = env.jwks_requests()
        for _ in range(5):
            self.assertEqual(self.accepted(env, token), first)
        self.assertEqual((env.verify_calls, env.keys_for_calls), (1, 1))
        self.assertEqual(env.jwks_requests(), jwks)
        self.assertEqual((env.validator.cache_hits, env.validator.cache_misses), (5, 1))

    def test_answers_are_copies(self):
        """A caller changing the claims it got does not change what the next caller gets."""
        env = self.env()
        token = access_token()
        claims = self.accepted(env, token)
        claims["sub"] = "admin"
        claims.clear()
        self.assertEqual(self.accepted(env, token), at_claims())
        self.accepted(env, token)["scope"] = "everything"
        self.assertEqual(self.accepted(env, token), at_claims())

    def test_expiry_drops_entry(self):
        """A cached token is believed until its exp, then checked again (and refused past the leeway)."""
        env = self.env()
        token = access_token(at_claims(exp=NOW + 300))
        self.accepted(env, token)
        env.clock.advance(299)
        self.accepted(env, token)
        self.assertEqual(env.verify_calls, 1)
        env.clock.advance(1)  # exp: the entry is dropped; within the leeway the token is still good...
        self.accepted(env, token)
        self.assertEqual(env.verify_calls, 2)
        self.accepted(env, token)  # ...but not cached again, since it is past its exp
        self.assertEqual(env.verify_calls, 3)
        self.assertEqual(len(env.validator._cache), 0)
        env.clock.advance(60)
        self.refused(env, token, "expired")
        self.assertEqual(env.verify_calls, 4)

    def test_lru_bound(self):
        """At most cache_size entries; the least recently used one goes first."""
        env = self.env(cache_size=3)
        tokens = [access_token(at_claims(jti=f"t{i}")) for i in range(5)]
        for token in tokens[:3]:
            self.accepted(env, token)
        self.assertEqual(env.verify_calls, 3)
        self.accepted(env, tokens[0])  # a hit: t0 is now the most recently used
        self.assertEqual(env.verify_calls, 3)
        self.accepted(env, tokens[3])  # evicts t1, the oldest
        self.assertEqual(len(env.validator._cache), 3)
        for i in (0, 2, 3):
            self.accepted(env, tokens[i])
        self.assertEqual(env.verify_calls, 4)
        self.accepted(env, tokens[1])  # evicted: checked again (and evicts t0)
        self.assertEqual(env.verify_calls, 5)
        self.accepted(env, tokens[4])  # evicts t2
        self.assertEqual(env.verify_calls, 6)
        self.accepted(env, tokens[0])
        self.accepted(env, tokens[2])
        self.assertEqual(env.verify_calls, 8)
        self.assertEqual(len(env.validator._cache), 3)

    def test_unused_entries_dropped(self):
        """A validation unused for CACHE_IDLE is dropped: the cache holds the tokens in use."""
        from oidcproxy.oidc.bearer import CACHE_IDLE

        env = self.env()
        busy, idle = (access_token(at_claims(jti=j, exp=NOW + 3 * CACHE_IDLE)) for j in ("b", "i"))
        self.accepted(env, busy)
        self.accepted(env, idle)
        for _ in range(3):
            env.clock.advance(CACHE_IDLE / 2)
            self.accepted(env, busy)
        self.accepted(env, access_token(at_claims(jti="new", exp=NOW + 3 * CACHE_IDLE)))
        self.assertEqual(len(env.validator._cache), 2)  # busy and new; idle is gone
        calls = env.verify_calls
        self.accepted(env, busy)
        self.assertEqual(env.verify_calls, calls)
        self.accepted(env, idle)
        self.assertEqual(env.verify_calls, calls + 1)

    def test_unused_entry_lapses_without_other_traffic(self):
        """A validation unused for CACHE_IDLE is not served again, even when nothing else was cached since."""
        from oidcproxy.oidc.bearer import CACHE_IDLE

        env = self.env()
        token = access_token(at_claims(exp=NOW + 3 * CACHE_IDLE))
        self.accepted(env, token)
        env.clock.advance(CACHE_IDLE)
        self.accepted(env, token)
        self.assertEqual(env.verify_calls, 2)

    def test_failures_not_cached(self):
        """A refused token is checked again every time; so is one refused because the IdP was down."""
        env = self.env()
        for token, reason in [(access_token(at_claims(aud="https://elsewhere.test")), "bad_aud"),
                              (access_token(key=KEY_B), "bad_signature"),
                              (access_token(at_claims(exp=NOW - 3600)), "expired")]:
            before = env.verify_calls
            for _ in range(3):
                self.refused(env, token, reason)
            self.assertEqual(env.verify_calls, before + 3)
        self.assertEqual(len(env.validator._cache), 0)
        self.assertEqual(env.validator.cache_hits, 0)

    def test_cache_off(self):
        env = self.env(cache_size=0)
        token = access_token()
        for _ in range(3):
            self.accepted(env, token)
        self.assertEqual(env.verify_calls, 3)
        self.assertEqual((env.validator.cache_hits, env.validator.cache_misses), (0, 3))

    def test_key_is_a_digest(self):
        """The cache keeps no token, only its SHA-256."""
        env = self.env()
        token = access_token()
        self.accepted(env, token)
        (key,) = env.validator._cache.keys()
        self.assertEqual(len(key), 32)
        self.assertNotIn(token.encode(), key)
        self.assertNotIn(token, repr(env.validator._cache.peek(key)))


# -- opaque tokens: introspection -----------------------------------------------


class IntrospectionTests(_Base):
    def env(self, **kwargs: Any) -> Env:
        kwargs.setdefault("introspection", True)
        return Env(**kwargs)

    def test_active(self):
        """The answer is the claims; the POST carries the token; the result is cached."""
        env = self.env()
        self.assertEqual(self.accepted(env, OPAQUE), ACTIVE)
        seen = env.idp.last(INTROSPECTION_PATH)
        self.assertEqual(seen.form(), [("token", OPAQUE), ("token_type_hint", "access_token")])
        self.assertEqual(self.accepted(env, OPAQUE), ACTIVE)
        self.assertEqual(env.introspections(), 1)
        self.assertEqual((env.validator.cache_hits, env.validator.cache_misses), (1, 1))
        self.assertEqual(env.verify_calls, 0)

    def test_minimal_answer(self):
        """
        active and, without aud, the client_id: iss, aud, exp, iat, nbf and
        token_type are checked when present.
        """
        minimal = {"active": True, "client_id": CLIENT_ID}
        env = self.env(introspection_answer=minimal, audiences=[CLIENT_ID])
        self.assertEqual(self.accepted(env, OPAQUE), minimal)

    def test_accepted_variants(self):
        for document in [dict(ACTIVE, aud=[OTHER_API, "x"]), dict(ACTIVE, aud=OTHER_API),
                         dict(ACTIVE, exp=NOW - 59), dict(ACTIVE, iat=NOW, nbf=NOW)]:
            env = self.env(introspection_answer=document)
            self.assertEqual(self.accepted(env, OPAQUE), document)

    def test_without_aud_the_client_decides(self):
        """
        An answer without aud: its client_id must be an accepted audience
        (bad_client_id otherwise); without client_id either: no_audience.
        With aud, aud decides.
        """
        for document, reason in [
            ({"active": True, "client_id": CLIENT_ID}, None),
            ({"active": True, "client_id": "another-client"}, "bad_client_id"),
            ({"active": True, "client_id": CLIENT_ID.upper()}, "bad_client_id"),
            ({"active": True, "client_id": 7}, "bad_client_id"),
            ({"active": True, "client_id": None}, "no_audience"),
            ({"active": True, "client_id": [CLIENT_ID]}, "bad_client_id"),
            ({"active": True}, "no_audience"),
            ({"active": True, "sub": "user-1", "scope": "read", "exp": NOW + 60}, "no_audience"),
            ({"active": True, "aud": CLIENT_ID, "client_id": "another-client"}, None),
            ({"active": True, "aud": "another-api", "client_id": CLIENT_ID}, "bad_aud"),
        ]:
            env = self.env(introspection_answer=document, audiences=[CLIENT_ID])
            if reason is None:
                self.assertEqual(self.accepted(env, OPAQUE), document)
            else:
                self.refused(env, OPAQUE, reason)
        # Configured audiences: a client_id among them passes.
        env = self.env(introspection_answer={"active": True, "client_id": "spa"},
                       audiences=[API, "spa"])
        self.accepted(env, OPAQUE)

    def test_token_type(self):
        """A token_type, when present, must name an access token: a refresh token's is refused."""
        for token_type in ["Bearer", "bearer", "BEARER", "access_token",
                           "urn:ietf:params:oauth:token-type:access_token"]:
            env = self.env(introspection_answer=dict(ACTIVE, token_type=token_type))
            self.accepted(env, OPAQUE)
        for token_type in ["refresh_token", "Refresh", "urn:ietf:params:oauth:token-type:refresh_token",
                           "id_token", "urn:ietf:params:oauth:token-type:id_token", "DPoP", "N_A", "",
                           None, 7, ["Bearer"]]:
            env = self.env(introspection_answer=dict(ACTIVE, token_type=token_type))
            self.refused(env, OPAQUE, "bad_token_type")
            self.refused(env, OPAQUE, "bad_token_type")
            self.assertEqual(env.introspections(), 2, token_type)

    def test_other_kinds_refused(self):
        """Keycloak's and Cognito's marks of ID and refresh tokens in the answer are refused too."""
        for mark, reason in [({"typ": "Refresh"}, "refresh_token_as_access_token"),
                             ({"typ": "Offline"}, "refresh_token_as_access_token"),
                             ({"token_use": "refresh_token"}, "refresh_token_as_access_token"),
                             ({"typ": "ID"}, "id_token_as_access_token"),
                             ({"token_use": "id"}, "id_token_as_access_token"),
                             ({"at_hash": "x"}, "id_token_as_access_token")]:
            env = self.env(introspection_answer=dict(ACTIVE, **mark))
            self.refused(env, OPAQUE, reason)
        # Keycloak's answer for one of its access tokens (typ Bearer, the login's nonce).
        keycloak = dict(ACTIVE, typ="Bearer", nonce="n", token_type="Bearer")
        self.assertEqual(self.accepted(self.env(introspection_answer=keycloak), OPAQUE), keycloak)

    def test_inactive(self):
        """active false: inactive; remembered for introspection_cache seconds, then asked again."""
        env = self.env(introspection_answer={"active": False}, introspection_cache=30.0)
        self.refused(env, OPAQUE, "inactive")
        self.refused(env, OPAQUE, "inactive")
        env.clock.advance(29)
        self.refused(env, OPAQUE, "inactive")
        self.assertEqual(env.introspections(), 1)
        self.assertEqual(env.validator.cache_hits, 2)
        env.clock.advance(1)
        env.introspection_answer = ACTIVE
        self.accepted(env, OPAQUE)
        self.assertEqual(env.introspections(), 2)

    def test_refusals(self):
        """Each rule on the answer, its own reason; refusals (but inactive) are not cached."""
        cases = [
            (dict(ACTIVE, exp=NOW - 60), "expired"),
            (dict(ACTIVE, exp="soon"), "bad_exp"),
            (dict(ACTIVE, exp=None), "bad_exp"),
            (dict(ACTIVE, aud="https://elsewhere.test"), "bad_aud"),
            (dict(ACTIVE, aud=["https://elsewhere.test"]), "bad_aud"),
            (dict(ACTIVE, aud=[]), "bad_aud"),
            (dict(ACTIVE, aud=7), "bad_aud"),
            (dict(ACTIVE, iss="https://evil.test"), "bad_iss"),
            (dict(ACTIVE, iss=None), "bad_iss"),
            (dict(ACTIVE, iat=NOW + 61), "iat_in_future"),
            (dict(ACTIVE, nbf=NOW + 61), "not_yet_valid"),
            (dict(ACTIVE, active=False), "inactive"),
        ]
        for document, reason in cases:
            env = self.env(introspection_answer=document)
            self.refused(env, OPAQUE, reason)
            self.refused(env, OPAQUE, reason)
            expected = 1 if reason == "inactive" else 2
            self.assertEqual(env.introspections(), expected, reason)

    def test_cache_ttl_bounded_by_exp(self):
        """An answer is believed until min(exp, now + introspection_cache)."""
        env = self.env(introspection_answer=dict(ACTIVE, exp=NOW + 10), introspection_cache=60.0)
        self.accepted(env, OPAQUE)
        env.clock.advance(9)
        self.accepted(env, OPAQUE)
        self.assertEqual(env.introspections(), 1)
        env.clock.advance(1)
        self.accepted(env, OPAQUE)  # within the leeway, asked again
        self.assertEqual(env.introspections(), 2)

        env = self.env(introspection_answer=dict(ACTIVE, exp=NOW + 3600), introspection_cache=60.0)
        self.accepted(env, OPAQUE)
        env.clock.advance(59)
        self.accepted(env, OPAQUE)
        self.assertEqual(env.introspections(), 1)
        env.clock.advance(1)
        env.introspection_answer = {"active": False}  # revoked meanwhile
        self.refused(env, OPAQUE, "inactive")
        self.assertEqual(env.introspections(), 2)

        env = self.env(introspection_answer={"active": True, "client_id": API}, introspection_cache=60.0)
        self.accepted(env, OPAQUE)
        env.clock.advance(59)
        self.accepted(env, OPAQUE)
        env.clock.advance(1)
        self.accepted(env, OPAQUE)
        self.assertEqual(env.introspections(), 2)

    def test_introspection_cache_zero(self):
        env = self.env(introspection_cache=0)
        self.accepted(env, OPAQUE)
        self.accepted(env, OPAQUE)
        env.introspection_answer = {"active": False}
        self.refused(env, OPAQUE, "inactive")
        self.refused(env, OPAQUE, "inactive")
        self.assertEqual(env.introspections(), 4)

    def test_single_flight(self):
        """Ten concurrent validations of one uncached token: one POST, ten answers."""
        env = self.env()
        env.idp.handlers[INTROSPECTION_PATH] = lambda r: HOLD
        pending = [env.validate(OPAQUE) for _ in range(10)]
        for d in pending:
            self.assertNoResult(d)
        self.assertEqual(env.introspections(), 1)
        env.idp.release(ACTIVE)
        env.h.flush()
        results = [self.successResultOf(d) for d in pending]
        self.assertEqual(results, [ACTIVE] * 10)
        results[0]["sub"] = "changed"
        self.assertEqual(results[1], ACTIVE)
        self.accepted(env, OPAQUE)
        self.assertEqual(env.introspections(), 1)
        self.assertEqual((env.validator.cache_hits, env.validator.cache_misses), (1, 10))

    def test_single_flight_failure_shared_and_not_cached(self):
        env = self.env()
        env.idp.handlers[INTROSPECTION_PATH] = lambda r: HOLD
        pending = [env.validate(OPAQUE) for _ in range(10)]
        env.idp.release({"active": False})
        env.h.flush()
        for d in pending:
            self.assertEqual(self.failureResultOf(d, TokenError).value.reason, "inactive")
        self.assertEqual(env.introspections(), 1)

    def test_single_flight_cancel_one(self):
        """A caller that gives up does not cancel the request for the others."""
        env = self.env()
        env.idp.handlers[INTROSPECTION_PATH] = lambda r: HOLD
        first = env.validate(OPAQUE)
        second = env.validate(OPAQUE)
        first.cancel()
        self.failureResultOf(first, CancelledError)
        env.idp.release(ACTIVE)
        env.h.flush()
        self.assertEqual(self.successResultOf(second), ACTIVE)
        self.assertEqual(env.introspections(), 1)

    def test_different_tokens_not_shared(self):
        env = self.env()
        env.idp.handlers[INTROSPECTION_PATH] = lambda r: HOLD
        one = env.validate(OPAQUE)
        two = env.validate(OPAQUE + "x")
        self.assertEqual(env.introspections(), 2)
        env.idp.release(ACTIVE)
        env.h.flush()
        self.successResultOf(one)
        self.successResultOf(two)

    def test_idp_errors_propagate_not_cached(self):
        """Bad answers, timeouts and a missing endpoint are ProviderErrors, passed on, never cached."""
        env = self.env(provider={"timeout": 5.0})
        env.idp.handlers[INTROSPECTION_PATH] = lambda r: answer(b"", code=503, content_type="")
        error = self.failureResultOf(env.validate(OPAQUE), ProviderError).value
        self.assertEqual((error.status, error.reason), (502, "introspection_failed"))
        env.idp.handlers[INTROSPECTION_PATH] = lambda r: answer({"active": "yes"})
        error = self.failureResultOf(env.validate(OPAQUE), ProviderError).value
        self.assertEqual((error.status, error.reason), (502, "bad_introspection"))

        env.idp.handlers[INTROSPECTION_PATH] = lambda r: HOLD
        pending = [env.validate(OPAQUE) for _ in range(3)]
        env.clock.advance(5)
        env.h.flush()
        for d in pending:
            error = self.failureResultOf(d, ProviderError).value
            self.assertEqual((error.status, error.reason), (504, "timeout"))
        self.assertEqual(env.introspections(), 3)

        env.idp.handlers[INTROSPECTION_PATH] = lambda r: answer(ACTIVE)
        self.accepted(env, OPAQUE)
        self.assertEqual(env.introspections(), 4)

    def test_idp_unreachable(self):
        clock = clock_at(NOW)
        http = FailingHTTP()
        provider = Provider(
            ISSUER, ClientAuth(CLIENT_ID, client_secret=CLIENT_SECRET), http, clock, discovery=False,
            endpoints={"authorization_endpoint": AUTHORIZATION_ENDPOINT, "token_endpoint": TOKEN_ENDPOINT,
                       "jwks_uri": JWKS_URI, "introspection_endpoint": INTROSPECTION_ENDPOINT},
        )
        validator = BearerValidator(provider, JWTVerifier(["RS256"]), clock, issuer=ISSUER, audiences=[API],
                                    introspection=True)
        for _ in range(2):
            d = Deferred.fromCoroutine(validator.validate(OPAQUE))
            error = self.failureResultOf(d, ProviderError).value
            self.assertEqual((error.status, error.reason), (502, "unreachable"))
        self.assertEqual(http.calls, 2)
        # JWTs need the keys, which never loaded.
        d = Deferred.fromCoroutine(validator.validate(access_token()))
        self.assertEqual(self.failureResultOf(d, ProviderError).value.reason, "not_ready")

    def test_no_endpoint(self):
        env = self.env()
        assert env.provider.metadata is not None
        env.provider.metadata = ProviderMetadata(ISSUER, AUTHORIZATION_ENDPOINT, TOKEN_ENDPOINT, JWKS_URI)
        error = self.failureResultOf(env.validate(OPAQUE), ProviderError).value
        self.assertEqual((error.status, error.reason), (502, "no_introspection_endpoint"))

    def test_jwts_still_local(self):
        """With introspection on, a JWT is still checked locally, never introspected."""
        env = self.env()
        self.accepted(env, access_token())
        self.refused(env, access_token(at_claims(aud="https://elsewhere.test")), "bad_aud")
        self.refused(env, "not.a.jwt", "malformed")
        self.assertEqual(env.introspections(), 0)

    def test_other_shapes_introspected(self):
        """Anything but three segments is opaque: a JWE (five segments) is introspected."""
        env = self.env()
        for token in ["a.b.c.d.e", "a.b", "abc=="]:
            self.accepted(env, token)
        self.assertEqual(env.introspections(), 3)
