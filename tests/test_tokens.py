"""
Tests for L{oidcproxy.oidc.tokens}: JWKS loading, signature verification, and ID
token and logout token validation.

Every token is minted here with fresh keys. Each refusal test breaks exactly
one rule of an otherwise valid token and asserts the exact reason code.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
from typing import Any, Dict, List, Optional

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID
from jwt.algorithms import ECAlgorithm, HMACAlgorithm, OKPAlgorithm, RSAAlgorithm
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from oidcproxy.oidc.tokens import (
    BACKCHANNEL_LOGOUT_EVENT,
    MAX_TOKEN_SIZE,
    IDTokenValidator,
    JWTVerifier,
    KeySet,
    LogoutTokenValidator,
    TokenError,
    peek_header,
)

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_KEY_2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ATTACKER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()

NOW = 1_700_000_000
ISSUER = "https://idp.example.com"
CLIENT_ID = "proxy-client"
CLIENT_SECRET = b"s3cr3t-client-secret-of-32-bytes-or-more"
NONCE = "n-0S6_WzA2Mj"
ACCESS_TOKEN = "SlAV32hkKG.access-token.2YotnFZFEjr1zCsicMWpAA"

DROP = object()
"""A claim or header value meaning: leave this member out."""


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def public_jwk(private_key: Any, **members: Any) -> Dict[str, Any]:
    """The public JWK of C{private_key}, with extra C{members}."""
    public = private_key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        data = RSAAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        data = ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        data = OKPAlgorithm.to_jwk(public, as_dict=True)
    data.update(members)
    return data


def jwks(*keys: Dict[str, Any]) -> Dict[str, Any]:
    return {"keys": list(keys)}


def claims(**changes: Any) -> Dict[str, Any]:
    """Valid ID token claims at L{NOW}, with C{changes} (L{DROP} removes)."""
    result: Dict[str, Any] = {
        "iss": ISSUER,
        "aud": CLIENT_ID,
        "sub": "248289761001",
        "iat": NOW,
        "exp": NOW + 300,
        "nonce": NONCE,
    }
    for name, value in changes.items():
        if value is DROP:
            result.pop(name, None)
        else:
            result[name] = value
    return result


def sign_raw(header: bytes, payload: bytes, key: Any, alg: str) -> str:
    """A compact JWS of raw header and payload bytes, signed with C{key}."""
    signing_input = b64(header) + "." + b64(payload)
    algorithm = jwt.get_algorithm_by_name(alg)
    signature = algorithm.sign(signing_input.encode("ascii"), algorithm.prepare_key(key))
    return signing_input + "." + b64(signature)


def token(
    payload: Optional[Dict[str, Any]] = None,
    key: Any = RSA_KEY,
    alg: str = "RS256",
    **header: Any,
) -> str:
    """
    A token of C{payload} (default: L{claims}) signed with C{key}. The
    header has C{alg}, C{typ} and C{kid="rsa-1"}; keyword arguments change
    it (L{DROP} removes a member).
    """
    members: Dict[str, Any] = {"alg": alg, "typ": "JWT", "kid": "rsa-1"}
    for name, value in header.items():
        if value is DROP:
            members.pop(name, None)
        else:
            members[name] = value
    body = claims() if payload is None else payload
    return sign_raw(json.dumps(members).encode(), json.dumps(body).encode(), key, alg)


def unsigned(alg: str, payload: Optional[Dict[str, Any]] = None) -> str:
    """A hand-made unsigned token: empty signature segment."""
    header = json.dumps({"alg": alg, "typ": "JWT"}).encode()
    body = json.dumps(claims() if payload is None else payload).encode()
    return b64(header) + "." + b64(body) + "."


def at_hash(access_token: str, hash_function: Any) -> str:
    digest = hash_function(access_token.encode("ascii")).digest()
    return b64(digest[: len(digest) // 2])


def standard_keys() -> KeySet:
    return KeySet.from_jwks(
        jwks(
            public_jwk(RSA_KEY, kid="rsa-1", alg="RS256", use="sig"),
            public_jwk(EC_KEY, kid="ec-1", alg="ES256"),
            public_jwk(ED_KEY, kid="ed-1"),
        )
    )


class _Base(SynchronousTestCase):
    """Shared fixtures: our keys, a verifier, a validator at L{NOW}."""

    def setUp(self) -> None:
        self.keys = standard_keys()
        self.verifier = JWTVerifier(["RS256", "ES256", "EdDSA"])
        self.clock = Clock()
        self.clock.advance(NOW)
        self.validator = IDTokenValidator(ISSUER, CLIENT_ID, self.verifier, self.clock)

    def assertNoLeak(self, error: TokenError, token: Any) -> None:
        """The error shows no segment of the token."""
        if isinstance(token, str):
            text = str(error) + error.detail
            for segment in token.split("."):
                if len(segment) >= 8:
                    self.assertNotIn(segment, text)
                    self.assertNotIn(segment[:16], text)

    def refused(self, reason: str, token: Any, keys: Optional[KeySet] = None, **kwargs: Any) -> TokenError:
        """Validate C{token} as an ID token: it is refused for C{reason}."""
        kwargs.setdefault("nonce", NONCE)
        error = self.assertRaises(
            TokenError, self.validator.validate, token, self.keys if keys is None else keys, **kwargs
        )
        self.assertEqual(error.reason, reason, error.detail)
        self.assertNoLeak(error, token)
        return error

    def verify_refused(
        self, reason: str, token: Any, verifier: Optional[JWTVerifier] = None, keys: Optional[KeySet] = None
    ) -> TokenError:
        """Verify C{token}'s signature only: it is refused for C{reason}."""
        verifier = self.verifier if verifier is None else verifier
        error = self.assertRaises(TokenError, verifier.verify, token, self.keys if keys is None else keys)
        self.assertEqual(error.reason, reason, error.detail)
        self.assertNoLeak(error, token)
        return error

    def accepted(self, token: str, keys: Optional[KeySet] = None, **kwargs: Any) -> Dict[str, Any]:
        kwargs.setdefault("nonce", NONCE)
        return self.validator.validate(token, self.keys if keys is None else keys, **kwargs)

    def capture_log(self) -> List[Dict[str, Any]]:
        """Collect the log events emitted from now on."""
        events: List[Dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        return events


def warning_texts(events: List[Dict[str, Any]]) -> List[str]:
    """The text of the warnings L{oidcproxy.oidc.jws} (the JWKS loading) logged among C{events}."""
    return [
        formatEvent(e)
        for e in events
        if e.get("log_level") == LogLevel.warn and e.get("log_namespace") == "oidcproxy.oidc.jws"
    ]


class TokenErrorTests(SynchronousTestCase):
    def test_attributes(self) -> None:
        """A TokenError carries its reason and detail; str() shows both."""
        error = TokenError("bad_iss", "The issuer is wrong.")
        self.assertEqual(error.reason, "bad_iss")
        self.assertEqual(error.detail, "The issuer is wrong.")
        self.assertEqual(str(error), "bad_iss: The issuer is wrong.")


class ValidTokenTests(_Base):
    def test_rs256_passes(self) -> None:
        """A valid RS256 ID token passes and its claims are returned."""
        self.assertEqual(self.accepted(token()), claims())

    def test_es256_passes(self) -> None:
        """A valid ES256 ID token signed by our EC key passes."""
        self.assertEqual(self.accepted(token(key=EC_KEY, alg="ES256", kid="ec-1")), claims())

    def test_eddsa_passes(self) -> None:
        """A valid EdDSA (Ed25519) ID token passes."""
        self.assertEqual(self.accepted(token(key=ED_KEY, alg="EdDSA", kid="ed-1")), claims())

    def test_verify_returns_header_and_claims(self) -> None:
        """verify() returns the header and the claims."""
        header, body = self.verifier.verify(token(), self.keys)
        self.assertEqual(header, {"alg": "RS256", "typ": "JWT", "kid": "rsa-1"})
        self.assertEqual(body, claims())

    def test_verify_checks_no_claim(self) -> None:
        """verify() checks the signature only: expired or odd claims pass it."""
        odd = {"exp": 0, "iat": "yesterday", "aud": 5}
        self.assertEqual(self.verifier.verify(token(odd), self.keys)[1], odd)

    def test_clock_is_used(self) -> None:
        """The time comes from the injected clock: advancing it expires the token."""
        good = token()
        self.accepted(good)
        self.clock.advance(300 + 60)
        self.refused("expired", good)

    def test_optional_claims_absent(self) -> None:
        """A token without nbf, azp, at_hash passes (they are optional)."""
        body = claims()
        self.assertNotIn("nbf", body)
        self.accepted(token(body), access_token=ACCESS_TOKEN)


class PeekHeaderTests(SynchronousTestCase):
    def assertMalformed(self, value: Any) -> None:
        error = self.assertRaises(TokenError, peek_header, value)
        self.assertEqual(error.reason, "malformed")

    def test_returns_header(self) -> None:
        """peek_header returns the unverified header."""
        self.assertEqual(peek_header(token()), {"alg": "RS256", "typ": "JWT", "kid": "rsa-1"})

    def test_does_not_verify(self) -> None:
        """peek_header accepts a token nobody can verify (attacker-signed, alg none)."""
        self.assertEqual(peek_header(unsigned("none"))["alg"], "none")
        self.assertEqual(peek_header(token(key=ATTACKER_KEY))["kid"], "rsa-1")

    def test_not_a_string(self) -> None:
        """Bytes, None and numbers are malformed."""
        for value in (token().encode("ascii"), None, 12, ["a", "b", "c"]):
            self.assertMalformed(value)

    def test_size_boundary(self) -> None:
        """A token of exactly MAX_TOKEN_SIZE bytes is looked at; one byte more is malformed."""
        for payload in (b"{}", b"{ }", b"{  }"):
            head = b64(json.dumps({"alg": "RS256"}).encode()) + "." + b64(payload) + "."
            if (MAX_TOKEN_SIZE - len(head)) % 4 != 1:  # a signature of whole bytes
                break
        exact = head + "A" * (MAX_TOKEN_SIZE - len(head))
        self.assertEqual(len(exact), MAX_TOKEN_SIZE)
        self.assertEqual(peek_header(exact), {"alg": "RS256"})
        for bigger in (exact + "A", exact + "AAAA"):
            error = self.assertRaises(TokenError, peek_header, bigger)
            self.assertEqual(error.reason, "malformed")
            self.assertIn("larger", error.detail)

    def test_non_ascii(self) -> None:
        """A token with a non-ASCII character is malformed."""
        good = token()
        self.assertMalformed(good[:-1] + "\u00e9")

    def test_alg_missing_or_not_string(self) -> None:
        """A header without a string alg is malformed."""
        for header in ({"typ": "JWT"}, {"alg": 256}, {"alg": None}, {"alg": ["RS256"]}):
            self.assertMalformed(b64(json.dumps(header).encode()) + "." + b64(b"{}") + ".")


class MalformedTests(_Base):
    def test_two_segments(self) -> None:
        """A token with two segments is malformed."""
        self.refused("malformed", ".".join(token().split(".")[:2]))

    def test_four_segments(self) -> None:
        """A token with four segments is malformed."""
        self.refused("malformed", token() + ".AAAA")

    def test_one_segment_and_empty(self) -> None:
        """An empty string and a token without dots are malformed."""
        self.refused("malformed", "")
        self.refused("malformed", token().replace(".", ""))

    def test_not_a_string(self) -> None:
        """A bytes token is malformed, not a crash."""
        self.refused("malformed", token().encode("ascii"))
        self.refused("malformed", None)

    def test_bad_base64_header(self) -> None:
        """A header segment with characters outside base64url is malformed."""
        h, p, s = token().split(".")
        self.refused("malformed", f"{h[:-1]}+.{p}.{s}")
        self.refused("malformed", f"{h[:-1]}!.{p}.{s}")

    def test_bad_base64_payload(self) -> None:
        """A payload segment that is not base64url (padding, alphabet, length) is malformed."""
        h, p, s = token().split(".")
        for payload in (p + "=", p + "====", p[:-1] + "/", p + "A" * (5 - len(p) % 4)):
            self.refused("malformed", f"{h}.{payload}.{s}")

    def test_bad_base64_signature(self) -> None:
        """A signature segment with characters outside base64url is malformed."""
        h, p, s = token().split(".")
        self.refused("malformed", f"{h}.{p}.{s[:-2]}==")
        self.refused("malformed", f"{h}.{p}.{s}+")
        self.refused("malformed", f"{h}.{p}.{s[:-1]}")  # 341 characters: not a whole number of bytes

    def test_non_canonical_base64(self) -> None:
        """Base64url whose unused trailing bits are set is malformed."""
        h, p, s = token().split(".")
        self.assertEqual(base64.urlsafe_b64decode("e30="), b"{}")
        self.refused("malformed", f"e31.{p}.{s}")

    def test_header_not_json(self) -> None:
        """A header that is not JSON is malformed."""
        self.refused("malformed", sign_raw(b"not json", json.dumps(claims()).encode(), RSA_KEY, "RS256"))

    def test_header_json_list(self) -> None:
        """A header that is a JSON list is malformed."""
        header = json.dumps([{"alg": "RS256", "kid": "rsa-1"}]).encode()
        self.refused("malformed", sign_raw(header, json.dumps(claims()).encode(), RSA_KEY, "RS256"))

    def test_header_duplicate_alg(self) -> None:
        """A header naming alg twice is malformed (no parser differential)."""
        header = b'{"alg": "none", "alg": "RS256", "kid": "rsa-1"}'
        self.refused("malformed", sign_raw(header, json.dumps(claims()).encode(), RSA_KEY, "RS256"))

    def test_header_deeply_nested(self) -> None:
        """A header nested deep enough to exhaust the parser's recursion is malformed."""
        header = b'{"alg": "RS256", "x": ' + b"[" * 20000 + b"]" * 20000 + b"}"
        self.refused("malformed", b64(header) + "." + b64(b"{}") + ".")

    def test_payload_list_number_string(self) -> None:
        """A validly signed payload that is a JSON list, number, string or null is malformed."""
        header = json.dumps({"alg": "RS256", "kid": "rsa-1"}).encode()
        for payload in (b"[]", b'["iss"]', b"42", b'"claims"', b"null", b"true"):
            self.refused("malformed", sign_raw(header, payload, RSA_KEY, "RS256"))

    def test_payload_not_json(self) -> None:
        """A validly signed payload that is not JSON at all is malformed."""
        header = json.dumps({"alg": "RS256", "kid": "rsa-1"}).encode()
        self.refused("malformed", sign_raw(header, b"{iss: x}", RSA_KEY, "RS256"))
        self.refused("malformed", sign_raw(header, b"", RSA_KEY, "RS256"))

    def test_payload_invalid_utf8(self) -> None:
        """A validly signed payload that is not UTF-8 is malformed."""
        header = json.dumps({"alg": "RS256", "kid": "rsa-1"}).encode()
        body = json.dumps(claims()).encode()[:-1] + b', "name": "\xff\xfe"}'
        self.refused("malformed", sign_raw(header, body, RSA_KEY, "RS256"))
        utf16 = json.dumps(claims()).encode("utf-16-le")
        self.refused("malformed", sign_raw(header, utf16, RSA_KEY, "RS256"))

    def test_payload_duplicate_claim(self) -> None:
        """A validly signed payload naming a claim twice is malformed."""
        header = json.dumps({"alg": "RS256", "kid": "rsa-1"}).encode()
        body = json.dumps(claims()).encode()[:-1] + b', "iss": "https://evil.example"}'
        self.refused("malformed", sign_raw(header, body, RSA_KEY, "RS256"))

    def test_payload_non_finite_numbers(self) -> None:
        """NaN, Infinity and a float overflowing to infinity are malformed, not 'never expires'."""
        header = json.dumps({"alg": "RS256", "kid": "rsa-1"}).encode()
        base = json.dumps(claims(exp=DROP)).encode()[:-1]
        for exp in (b"NaN", b"Infinity", b"-Infinity", b"1e400"):
            self.refused("malformed", sign_raw(header, base + b', "exp": ' + exp + b"}", RSA_KEY, "RS256"))

    def test_one_megabyte(self) -> None:
        """A 1 MB token is malformed (refused on size, before any parsing)."""
        big = claims(padding="x" * (1024 * 1024))
        self.refused("malformed", token(big))
        self.refused("malformed", "a" * (1024 * 1024))

    def test_deeply_nested_payload_100000(self) -> None:
        """A validly signed payload of 100000 nested lists is malformed."""
        header = json.dumps({"alg": "RS256", "kid": "rsa-1"}).encode()
        nested = b"[" * 100000 + b"]" * 100000
        self.refused("malformed", sign_raw(header, nested, RSA_KEY, "RS256"))

    def test_deeply_nested_payload_within_size(self) -> None:
        """
        A validly signed payload nested deep enough to exhaust the JSON
        parser's recursion, but small enough to pass the size check, is
        malformed.
        """
        header = json.dumps({"alg": "RS256", "kid": "rsa-1"}).encode()
        body = b'{"iss": ' + b"[" * 20000 + b"]" * 20000 + b"}"
        signed = sign_raw(header, body, RSA_KEY, "RS256")
        self.assertLess(len(signed), MAX_TOKEN_SIZE)
        self.refused("malformed", signed)

    def test_b64_header_without_crit(self) -> None:
        """A b64=false header (unencoded payload) without crit is malformed."""
        self.refused("malformed", token(b64=False))


class AlgorithmTests(_Base):
    def test_alg_none_any_case(self) -> None:
        """Unsigned tokens with alg none, None, NONE or nOnE are refused: alg_not_allowed."""
        for alg in ("none", "None", "NONE", "nOnE"):
            self.refused("alg_not_allowed", unsigned(alg))

    def test_alg_none_even_with_hmac_allowed(self) -> None:
        """alg none is refused by a verifier that also allows HMAC."""
        verifier = JWTVerifier(["RS256", "HS256"], hmac_secret=CLIENT_SECRET)
        self.verify_refused("alg_not_allowed", unsigned("none"), verifier=verifier)

    def test_none_refused_at_construction(self) -> None:
        """A verifier cannot be told to allow none, in any case."""
        for alg in ("none", "None", "NONE"):
            self.assertRaises(ValueError, JWTVerifier, ["RS256", alg])

    def test_construction_rules(self) -> None:
        """An empty list, an unknown name or a lone string are refused at construction."""
        self.assertRaises(ValueError, JWTVerifier, [])
        self.assertRaises(ValueError, JWTVerifier, ["RS1"])
        self.assertRaises(ValueError, JWTVerifier, ["rs256"])
        self.assertRaises(ValueError, JWTVerifier, "RS256")

    def test_hmac_needs_secret(self) -> None:
        """HS256 is only allowed with a non-empty bytes secret that is not a public key."""
        pem = RSA_KEY.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.assertRaises(ValueError, JWTVerifier, ["HS256"])
        self.assertRaises(ValueError, JWTVerifier, ["HS256"], hmac_secret=b"")
        self.assertRaises(ValueError, JWTVerifier, ["HS256"], hmac_secret="text")
        self.assertRaises(ValueError, JWTVerifier, ["HS256"], hmac_secret=pem)
        JWTVerifier(["RS256"], hmac_secret=CLIENT_SECRET)  # a secret without HS* is harmless

    def test_rs256_when_only_es256_allowed(self) -> None:
        """An RS256 token is refused by a verifier that only allows ES256."""
        verifier = JWTVerifier(["ES256"])
        self.verify_refused("alg_not_allowed", token(), verifier=verifier)

    def test_alg_case_sensitive(self) -> None:
        """alg matches case-sensitively: rs256 is not RS256."""
        h, p, s = token().split(".")
        header = b64(json.dumps({"alg": "rs256", "kid": "rsa-1"}).encode())
        self.refused("alg_not_allowed", f"{header}.{p}.{s}")

    def test_hs256_with_rsa_pem_not_allowed(self) -> None:
        """HS256 signed with our RSA public key PEM, HS256 not allowed: alg_not_allowed."""
        self.refused("alg_not_allowed", self._pem_confusion_token())

    def test_hs256_with_rsa_pem_allowed_other_secret(self) -> None:
        """HS256 signed with our RSA public key PEM, HS256 allowed: the JWKS key is never used."""
        verifier = JWTVerifier(["RS256", "HS256"], hmac_secret=CLIENT_SECRET)
        self.verify_refused("bad_signature", self._pem_confusion_token(), verifier=verifier)

    def _pem_confusion_token(self) -> str:
        pem = RSA_KEY.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}).encode())
        signing_input = header + "." + b64(json.dumps(claims()).encode())
        mac = hmac.new(pem, signing_input.encode("ascii"), hashlib.sha256).digest()
        return signing_input + "." + b64(mac)

    def test_hs256_with_client_secret_allowed(self) -> None:
        """HS256 signed with the client secret passes when HS256 is allowed."""
        verifier = JWTVerifier(["RS256", "HS256"], hmac_secret=CLIENT_SECRET)
        validator = IDTokenValidator(ISSUER, CLIENT_ID, verifier, self.clock)
        signed = token(key=CLIENT_SECRET, alg="HS256", kid=DROP)
        self.assertEqual(validator.validate(signed, self.keys, NONCE), claims())

    def test_hs256_with_client_secret_not_allowed(self) -> None:
        """HS256 signed with the client secret is refused when HS256 is not allowed."""
        self.refused("alg_not_allowed", token(key=CLIENT_SECRET, alg="HS256", kid=DROP))

    def test_hs256_with_other_secret(self) -> None:
        """HS256 signed with another secret fails."""
        verifier = JWTVerifier(["HS256"], hmac_secret=CLIENT_SECRET)
        signed = token(key=b"another-secret-that-is-also-32-bytes-long", alg="HS256", kid=DROP)
        self.verify_refused("bad_signature", signed, verifier=verifier)

    def test_hs256_never_uses_jwks_oct_key(self) -> None:
        """An oct key in the JWKS is skipped and never used, even for HS256."""
        oct_secret = b"jwks-published-symmetric-key-of-32-bytes"
        keys = KeySet.from_jwks(jwks(dict(HMACAlgorithm.to_jwk(oct_secret, as_dict=True), kid="oct-1")))
        self.assertEqual(keys.keys, ())
        verifier = JWTVerifier(["HS256"], hmac_secret=CLIENT_SECRET)
        signed = token(key=oct_secret, alg="HS256", kid="oct-1")
        self.verify_refused("bad_signature", signed, verifier=verifier, keys=keys)

    def test_ps256_with_alg_less_rsa_key(self) -> None:
        """An RSA key without alg verifies any RSA algorithm that is allowed (PS256, RS384)."""
        keys = KeySet.from_jwks(jwks(public_jwk(RSA_KEY, kid="rsa-1")))
        verifier = JWTVerifier(["PS256", "RS384"])
        self.assertEqual(verifier.verify(token(alg="PS256"), keys)[1], claims())
        self.assertEqual(verifier.verify(token(alg="RS384"), keys)[1], claims())

    def test_key_alg_restricts(self) -> None:
        """A key whose JWK says alg RS256 does not verify a PS256 token."""
        verifier = JWTVerifier(["RS256", "PS256"])
        self.verify_refused("unknown_kid", token(alg="PS256"), verifier=verifier)
        self.verify_refused("no_key", token(alg="PS256", kid=DROP), verifier=verifier)


class CritHeaderTests(_Base):
    def test_crit_header(self) -> None:
        """A validly signed token with a crit header is refused: crit_header."""
        self.refused("crit_header", token(crit=["exp"], exp=NOW + 300))

    def test_crit_b64(self) -> None:
        """Even crit b64, which pyjwt understands, is refused: crit_header."""
        self.refused("crit_header", token(crit=["b64"], b64=True))

    def test_crit_empty(self) -> None:
        """An empty crit list is refused too: crit_header."""
        self.refused("crit_header", token(crit=[]))


class EmbeddedKeyTests(_Base):
    def _x5c(self) -> List[str]:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "idp.example.com")])
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(ATTACKER_KEY.public_key())
            .serial_number(1)
            .not_valid_before(datetime.datetime(2020, 1, 1))
            .not_valid_after(datetime.datetime(2040, 1, 1))
            .sign(ATTACKER_KEY, hashes.SHA256())
        )
        return [base64.b64encode(certificate.public_bytes(serialization.Encoding.DER)).decode()]

    def test_embedded_jwk(self) -> None:
        """A token carrying the jwk that signed it is refused: not our key."""
        attacker_jwk = public_jwk(ATTACKER_KEY, kid="rsa-1")
        self.refused("bad_signature", token(key=ATTACKER_KEY, jwk=attacker_jwk))
        self.refused("bad_signature", token(key=ATTACKER_KEY, jwk=attacker_jwk, kid=DROP))

    def test_jku(self) -> None:
        """A jku header pointing at the attacker's JWKS is ignored: bad_signature."""
        self.refused("bad_signature", token(key=ATTACKER_KEY, jku="https://evil.example/jwks.json"))

    def test_x5u(self) -> None:
        """An x5u header is ignored: bad_signature."""
        self.refused("bad_signature", token(key=ATTACKER_KEY, x5u="https://evil.example/cert.pem"))

    def test_x5c(self) -> None:
        """An x5c certificate of the signing key is ignored: bad_signature."""
        self.refused("bad_signature", token(key=ATTACKER_KEY, x5c=self._x5c()))
        self.refused("bad_signature", token(key=ATTACKER_KEY, x5c=self._x5c(), kid=DROP))

    def test_key_headers_ignored_when_our_key_signed(self) -> None:
        """Those headers do not make a token signed by our key fail: they are just ignored."""
        signed = token(
            jwk=public_jwk(ATTACKER_KEY),
            jku="https://evil.example/jwks.json",
            x5u="https://evil.example/cert.pem",
            x5c=self._x5c(),
        )
        self.assertEqual(self.accepted(signed), claims())


class KeyChoiceTests(_Base):
    def test_kid_absent_one_key(self) -> None:
        """Without a kid, the single key that fits the alg is used."""
        keys = KeySet.from_jwks(jwks(public_jwk(RSA_KEY)))
        self.assertEqual(self.accepted(token(kid=DROP), keys=keys), claims())

    def test_kid_absent_one_key_for_alg(self) -> None:
        """Without a kid, keys of other types do not count: one RSA key among EC/Ed keys passes."""
        self.assertEqual(self.accepted(token(kid=DROP)), claims())

    def test_kid_absent_two_keys(self) -> None:
        """Without a kid and two keys that fit: ambiguous_key."""
        keys = KeySet.from_jwks(jwks(public_jwk(RSA_KEY, kid="a"), public_jwk(RSA_KEY_2, kid="b")))
        self.refused("ambiguous_key", token(kid=DROP), keys=keys)

    def test_kid_picks_among_two(self) -> None:
        """With a kid, the key named is used among several."""
        keys = KeySet.from_jwks(jwks(public_jwk(RSA_KEY, kid="a"), public_jwk(RSA_KEY_2, kid="b")))
        self.accepted(token(key=RSA_KEY_2, kid="b"), keys=keys)
        self.refused("bad_signature", token(key=RSA_KEY_2, kid="a"), keys=keys)

    def test_unknown_kid(self) -> None:
        """A kid that none of our keys has: unknown_kid."""
        self.refused("unknown_kid", token(kid="rsa-2"))

    def test_kid_of_key_for_other_alg(self) -> None:
        """A kid we have, but for another key type, is unknown_kid; has_kid tells it apart."""
        self.refused("unknown_kid", token(key=EC_KEY, alg="ES256", kid="rsa-1"))
        self.assertTrue(self.keys.has_kid("rsa-1"))

    def test_no_key_for_alg(self) -> None:
        """Without a kid and no key of the alg's type: no_key."""
        keys = KeySet.from_jwks(jwks(public_jwk(RSA_KEY, kid="rsa-1")))
        self.refused("no_key", token(key=EC_KEY, alg="ES256", kid=DROP), keys=keys)

    def test_empty_key_set(self) -> None:
        """An empty key set: no_key without kid, unknown_kid with one."""
        keys = KeySet.from_jwks({"keys": []})
        self.refused("no_key", token(kid=DROP), keys=keys)
        self.refused("unknown_kid", token(), keys=keys)

    def test_kid_too_long(self) -> None:
        """A kid over 256 characters is malformed; 256 characters is merely unknown."""
        self.refused("malformed", token(kid="k" * 257))
        self.refused("malformed", token(kid="k" * 100000))
        self.refused("unknown_kid", token(kid="k" * 256))

    def test_kid_not_string(self) -> None:
        """A kid that is a number, null, list or object is malformed."""
        for kid in (12, None, True, ["rsa-1"], {"kid": "rsa-1"}):
            self.refused("malformed", token(kid=kid))

    def test_kid_path_traversal(self) -> None:
        """Hostile kid strings just fail cleanly as unknown_kid."""
        for kid in ("../../etc/passwd", "", "rsa-1\x00", "rsa-1' OR '1'='1", "%2e%2e%2f"):
            self.refused("unknown_kid", token(kid=kid))

    def test_same_kid_several_keys(self) -> None:
        """Several keys share a kid: each is tried, and the one that verifies wins."""
        keys = KeySet.from_jwks(jwks(public_jwk(RSA_KEY, kid="dup"), public_jwk(RSA_KEY_2, kid="dup")))
        self.accepted(token(key=RSA_KEY_2, kid="dup"), keys=keys)
        self.accepted(token(key=RSA_KEY, kid="dup"), keys=keys)

    def test_same_kid_several_keys_none_verifies(self) -> None:
        """Several keys share a kid and none verifies: bad_signature."""
        keys = KeySet.from_jwks(jwks(public_jwk(RSA_KEY, kid="dup"), public_jwk(RSA_KEY_2, kid="dup")))
        self.refused("bad_signature", token(key=ATTACKER_KEY, kid="dup"), keys=keys)


class SignatureTests(_Base):
    def test_signed_by_other_key(self) -> None:
        """A token signed by another key with our kid: bad_signature."""
        self.refused("bad_signature", token(key=ATTACKER_KEY))

    def test_tampered_payload(self) -> None:
        """A payload swapped after signing: bad_signature."""
        h, _, s = token().split(".")
        other = b64(json.dumps(claims(sub="admin")).encode())
        self.refused("bad_signature", f"{h}.{other}.{s}")

    def test_empty_and_truncated_signature(self) -> None:
        """An empty or truncated signature: bad_signature."""
        h, p, s = token().split(".")
        self.refused("bad_signature", f"{h}.{p}.")
        self.refused("bad_signature", f"{h}.{p}.{b64(base64.urlsafe_b64decode(s + '==')[:-3])}")

    def test_ec_signature_wrong_length(self) -> None:
        """An ES256 signature of the wrong length: bad_signature."""
        h, p, s = token(key=EC_KEY, alg="ES256", kid="ec-1").split(".")
        self.refused("bad_signature", f"{h}.{p}.{s[:40]}")

    def test_eddsa_signed_by_other_key(self) -> None:
        """An EdDSA token signed by another Ed25519 key: bad_signature."""
        other = ed25519.Ed25519PrivateKey.generate()
        self.refused("bad_signature", token(key=other, alg="EdDSA", kid="ed-1"))


class KeySetTests(_Base):
    def test_bad_documents(self) -> None:
        """A JWKS document that is not {"keys": [...]} raises bad_jwks."""
        for document in (None, [], "keys", 5, {}, {"keys": {}}, {"keys": "abc"}, {"keys": None}):
            error = self.assertRaises(TokenError, KeySet.from_jwks, document)
            self.assertEqual(error.reason, "bad_jwks")

    def test_malformed_keys_skipped(self) -> None:
        """Malformed keys are skipped with a warning each, and the good key still works."""
        events = self.capture_log()
        good_rsa = public_jwk(RSA_KEY, kid="rsa-1")
        good_ec = public_jwk(EC_KEY)
        off_curve = dict(good_ec, kid="off-curve", y=good_ec["x"])
        small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
        bad = [
            "garbage",
            42,
            None,
            ["kty", "RSA"],
            {"kid": "no-kty"},
            {"kty": "XYZ", "kid": "bad-kty"},
            {"kty": ["RSA"], "kid": "list-kty"},
            {"kty": "RSA", "kid": "no-n-e"},
            dict(good_rsa, kid="bad-alg", alg="RS1"),
            dict(good_rsa, kid="hs-alg", alg="HS256"),
            dict(good_rsa, kid="none-alg", alg="none"),
            dict(good_rsa, kid="list-alg", alg=["RS256"]),
            dict(good_rsa, kid="garbage-n", n="!!!not-base64!!!"),
            dict(good_rsa, kid="int-n", n=12345),
            dict(good_rsa, kid=7),
            dict(good_ec, kid="bad-curve", crv="P-999"),
            dict(good_ec, kid="okp-with-ec-curve", kty="OKP"),
            dict(good_ec, kid="no-x", x=DROP),
            off_curve,
            dict(good_ec, kid="es384-on-p256", alg="ES384"),
            dict(good_rsa, kid="es256-on-rsa", alg="ES256"),
            public_jwk(ed448.Ed448PrivateKey.generate(), kid="ed448"),
            dict(RSAAlgorithm.to_jwk(RSA_KEY, as_dict=True), kid="private"),
            public_jwk(small, kid="rsa-1024"),
            dict(good_rsa, kid="ops-encrypt", key_ops=["encrypt"]),
            dict(HMACAlgorithm.to_jwk(CLIENT_SECRET, as_dict=True), kid="oct"),
        ]
        for member in bad:
            if isinstance(member, dict):
                for name in [n for n, v in member.items() if v is DROP]:
                    del member[name]
        keys = KeySet.from_jwks(jwks(*bad[:10], good_rsa, *bad[10:]))
        self.assertEqual([k.key_id for k in keys.keys], ["rsa-1"])
        self.assertEqual(self.accepted(token(), keys=keys), claims())
        texts = warning_texts(events)
        self.assertEqual(len(texts), len(bad), texts)
        for index, text in enumerate(texts[:10]):
            self.assertIn(f"#{index}", text)
        self.assertIn("'bad-kty'", texts[5])
        self.assertIn("'ed448'", texts[-5])
        self.assertIn("alg does not fit", texts[-7])
        self.assertIn("private key material", texts[-4])

    def test_use_enc_skipped(self) -> None:
        """A key with use "enc" is skipped (with a warning): tokens naming it get unknown_kid."""
        events = self.capture_log()
        keys = KeySet.from_jwks(jwks(public_jwk(RSA_KEY, kid="rsa-1", use="enc")))
        self.assertEqual(keys.keys, ())
        self.assertFalse(keys.has_kid("rsa-1"))
        self.refused("unknown_kid", token(), keys=keys)
        texts = warning_texts(events)
        self.assertIn("'rsa-1'", texts[0])
        self.assertIn("use", texts[0])

    def test_use_sig_and_key_ops_verify_kept(self) -> None:
        """Keys with use "sig" or key_ops including "verify" are kept."""
        keys = KeySet.from_jwks(
            jwks(
                public_jwk(RSA_KEY, kid="a", use="sig"),
                public_jwk(RSA_KEY_2, kid="b", key_ops=["verify"]),
            )
        )
        self.assertEqual([k.key_id for k in keys.keys], ["a", "b"])

    def test_long_kid_shortened_in_warning(self) -> None:
        """A skipped key's very long kid is shortened in the warning."""
        events = self.capture_log()
        KeySet.from_jwks(jwks({"kty": "XYZ", "kid": "k" * 5000}))
        text = warning_texts(events)[0]
        self.assertLess(len(text), 300)

    def test_candidates(self) -> None:
        """candidates() filters on key type, curve, the key's alg and the kid."""
        self.assertEqual([k.key_id for k in self.keys.candidates(None, "RS256")], ["rsa-1"])
        self.assertEqual([k.key_id for k in self.keys.candidates("rsa-1", "RS256")], ["rsa-1"])
        self.assertEqual(self.keys.candidates("ec-1", "RS256"), [])
        self.assertEqual(self.keys.candidates(None, "PS256"), [])  # the RSA JWK says alg RS256
        self.assertEqual(self.keys.candidates(None, "ES384"), [])  # P-256 only does ES256
        self.assertEqual([k.key_id for k in self.keys.candidates(None, "ES256")], ["ec-1"])
        self.assertEqual([k.key_id for k in self.keys.candidates("ed-1", "EdDSA")], ["ed-1"])
        self.assertEqual(self.keys.candidates("nope", "EdDSA"), [])

    def test_has_kid(self) -> None:
        """has_kid() tells whether any key has that kid."""
        self.assertTrue(self.keys.has_kid("ec-1"))
        self.assertFalse(self.keys.has_kid("ec-2"))

    def test_direct_construction(self) -> None:
        """A KeySet can be built from PyJWK objects directly."""
        keys = KeySet([jwt.PyJWK(public_jwk(RSA_KEY, kid="rsa-1"))])
        self.assertIsInstance(keys.keys, tuple)
        self.assertEqual(self.accepted(token(alg="RS256"), keys=keys), claims())


class IssuerTests(_Base):
    def test_missing(self) -> None:
        """No iss: bad_iss."""
        self.refused("bad_iss", token(claims(iss=DROP)))

    def test_wrong(self) -> None:
        """Another issuer: bad_iss, and the attacker's value is not echoed."""
        error = self.refused("bad_iss", token(claims(iss="https://evil.example/<script>")))
        self.assertNotIn("evil", error.detail)

    def test_trailing_slash(self) -> None:
        """The issuer with a trailing slash is not the issuer: bad_iss."""
        self.refused("bad_iss", token(claims(iss=ISSUER + "/")))

    def test_case(self) -> None:
        """No normalisation: an upper-case scheme and host is another issuer."""
        self.refused("bad_iss", token(claims(iss="HTTPS://IDP.EXAMPLE.COM")))

    def test_not_a_string(self) -> None:
        """A non-string iss: bad_iss."""
        for iss in (5, None, [ISSUER], {"iss": ISSUER}):
            self.refused("bad_iss", token(claims(iss=iss)))


class AudienceTests(_Base):
    def test_missing(self) -> None:
        """No aud: bad_aud."""
        self.refused("bad_aud", token(claims(aud=DROP)))

    def test_other_client(self) -> None:
        """aud names another client: bad_aud."""
        self.refused("bad_aud", token(claims(aud="other-client")))

    def test_list_without_client(self) -> None:
        """aud is a list without our client id: bad_aud."""
        self.refused("bad_aud", token(claims(aud=["a", "b"], azp=CLIENT_ID)))

    def test_bad_types(self) -> None:
        """aud that is empty, a number, an object or a list with a non-string: bad_aud."""
        for aud in ([], 5, None, {"aud": CLIENT_ID}, [CLIENT_ID, 5], [[CLIENT_ID]]):
            self.refused("bad_aud", token(claims(aud=aud)))

    def test_single_value_list(self) -> None:
        """aud as a one-element list with our client id passes without azp."""
        self.accepted(token(claims(aud=[CLIENT_ID])))

    def test_several_without_azp(self) -> None:
        """Several audiences and no azp: missing_azp."""
        self.refused("missing_azp", token(claims(aud=[CLIENT_ID, "other"])))

    def test_several_with_azp(self) -> None:
        """Several audiences and azp our client id: passes."""
        self.accepted(token(claims(aud=[CLIENT_ID, "other"], azp=CLIENT_ID)))

    def test_azp_wrong(self) -> None:
        """azp present and not our client id: bad_azp, with one or several audiences."""
        self.refused("bad_azp", token(claims(aud=[CLIENT_ID, "other"], azp="other")))
        self.refused("bad_azp", token(claims(azp="other")))
        self.refused("bad_azp", token(claims(azp=5)))

    def test_azp_right_single_audience(self) -> None:
        """azp equal to our client id with a single audience passes."""
        self.accepted(token(claims(azp=CLIENT_ID)))


class NonceTests(_Base):
    def test_right(self) -> None:
        """The expected nonce passes."""
        self.accepted(token(), nonce=NONCE)

    def test_missing(self) -> None:
        """A nonce is expected and the token has none: missing_nonce."""
        self.refused("missing_nonce", token(claims(nonce=DROP)), nonce=NONCE)

    def test_wrong(self) -> None:
        """A nonce is expected and the token has another: bad_nonce."""
        self.refused("bad_nonce", token(claims(nonce=NONCE + "x")), nonce=NONCE)
        self.refused("bad_nonce", token(claims(nonce="")), nonce=NONCE)

    def test_not_a_string(self) -> None:
        """A non-string nonce: bad_nonce."""
        for value in (5, None, [NONCE]):
            self.refused("bad_nonce", token(claims(nonce=value)), nonce=NONCE)

    def test_non_ascii(self) -> None:
        """Non-ASCII nonces are compared safely (no TypeError from compare_digest)."""
        self.refused("bad_nonce", token(claims(nonce="n\u00f6nce")), nonce=NONCE)
        self.accepted(token(claims(nonce="n\u00f6nce")), nonce="n\u00f6nce")

    def test_none_expected_nonce_present(self) -> None:
        """No nonce expected: a nonce in the token is allowed."""
        self.accepted(token(), nonce=None)

    def test_none_expected_nonce_absent(self) -> None:
        """No nonce expected and none in the token: passes."""
        self.accepted(token(claims(nonce=DROP)), nonce=None)


class SubjectTests(_Base):
    def test_missing(self) -> None:
        """No sub: bad_sub."""
        self.refused("bad_sub", token(claims(sub=DROP)))

    def test_empty(self) -> None:
        """An empty sub: bad_sub."""
        self.refused("bad_sub", token(claims(sub="")))

    def test_too_long(self) -> None:
        """A sub of 256 characters: bad_sub; 255 passes."""
        self.refused("bad_sub", token(claims(sub="s" * 256)))
        self.accepted(token(claims(sub="s" * 255)))

    def test_not_a_string(self) -> None:
        """A non-string sub: bad_sub."""
        for sub in (5, None, True, ["user"]):
            self.refused("bad_sub", token(claims(sub=sub)))

    def test_lone_surrogate(self) -> None:
        """A sub holding a lone surrogate (not valid Unicode text): bad_sub."""
        self.refused("bad_sub", token(claims(sub="user\ud800")))


class TimeTests(_Base):
    def test_exp_missing(self) -> None:
        """No exp: bad_exp."""
        self.refused("bad_exp", token(claims(exp=DROP)))

    def test_exp_not_a_number(self) -> None:
        """exp that is a string, a bool, null or too large for a float: bad_exp."""
        for exp in (str(NOW + 300), True, None, [NOW + 300], 10**400):
            self.refused("bad_exp", token(claims(exp=exp)))

    def test_exp_float(self) -> None:
        """A float exp is a number."""
        self.accepted(token(claims(exp=NOW + 300.5)))

    def test_exp_leeway(self) -> None:
        """now < exp + leeway passes: 1 s before the boundary; at it and 1 s after: expired."""
        self.accepted(token(claims(exp=NOW - 60 + 1, iat=NOW - 600)))
        self.refused("expired", token(claims(exp=NOW - 60, iat=NOW - 600)))
        self.refused("expired", token(claims(exp=NOW - 60 - 1, iat=NOW - 600)))

    def test_exp_zero_leeway(self) -> None:
        """With leeway 0, a token expiring now is expired; one expiring next second passes."""
        validator = IDTokenValidator(ISSUER, CLIENT_ID, self.verifier, self.clock, leeway=0)
        error = self.assertRaises(TokenError, validator.validate, token(claims(exp=NOW)), self.keys, NONCE)
        self.assertEqual(error.reason, "expired")
        validator.validate(token(claims(exp=NOW + 1)), self.keys, NONCE)

    def test_iat_missing(self) -> None:
        """No iat: bad_iat."""
        self.refused("bad_iat", token(claims(iat=DROP)))

    def test_iat_not_a_number(self) -> None:
        """iat that is a string, a bool or null: bad_iat."""
        for iat in (str(NOW), False, None):
            self.refused("bad_iat", token(claims(iat=iat)))

    def test_iat_leeway(self) -> None:
        """iat <= now + leeway passes: 1 s before and at the boundary; 1 s after: iat_in_future."""
        self.accepted(token(claims(iat=NOW + 60 - 1, exp=NOW + 600)))
        self.accepted(token(claims(iat=NOW + 60, exp=NOW + 600)))
        self.refused("iat_in_future", token(claims(iat=NOW + 60 + 1, exp=NOW + 600)))

    def test_nbf_not_a_number(self) -> None:
        """nbf present and a string, bool or null: bad_nbf."""
        for nbf in (str(NOW), True, None):
            self.refused("bad_nbf", token(claims(nbf=nbf)))

    def test_nbf_leeway(self) -> None:
        """now >= nbf - leeway passes: 1 s before and at the boundary; 1 s after: not_yet_valid."""
        self.accepted(token(claims(nbf=NOW + 60 - 1)))
        self.accepted(token(claims(nbf=NOW + 60)))
        self.refused("not_yet_valid", token(claims(nbf=NOW + 60 + 1)))

    def test_leeway_validation(self) -> None:
        """A negative, non-finite or non-numeric leeway, or empty issuer/client id, is a ValueError."""
        for leeway in (-1, float("nan"), float("inf"), True, "60"):
            self.assertRaises(
                ValueError, IDTokenValidator, ISSUER, CLIENT_ID, self.verifier, self.clock, leeway
            )
        self.assertRaises(ValueError, IDTokenValidator, "", CLIENT_ID, self.verifier, self.clock)
        self.assertRaises(ValueError, IDTokenValidator, ISSUER, "", self.verifier, self.clock)

    def test_iat_max_age(self) -> None:
        """
        With a max_age, iat >= now - max_age - leeway passes (at the boundary
        too); one second older: iat_too_old, whatever exp says.
        """
        validator = IDTokenValidator(ISSUER, CLIENT_ID, self.verifier, self.clock, leeway=60, max_age=600)
        self.assertEqual(validator.max_age, 600.0)
        later = NOW + 7 * 86400
        validator.validate(token(claims(iat=NOW - 600 - 60, exp=later)), self.keys, NONCE)
        validator.validate(token(claims(iat=NOW - 600 - 60 + 1, exp=later)), self.keys, NONCE)
        for iat in (NOW - 600 - 60 - 1, NOW - 7 * 86400):
            error = self.assertRaises(TokenError, validator.validate, token(claims(iat=iat, exp=later)),
                                      self.keys, NONCE)
            self.assertEqual(error.reason, "iat_too_old")
        # The future stays bounded by the leeway.
        error = self.assertRaises(TokenError, validator.validate,
                                  token(claims(iat=NOW + 61, exp=later)), self.keys, NONCE)
        self.assertEqual(error.reason, "iat_in_future")

    def test_iat_no_max_age(self) -> None:
        """Without a max_age (the default) an old iat passes: the bound is the caller's choice."""
        self.assertIsNone(self.validator.max_age)
        self.accepted(token(claims(iat=NOW - 7 * 86400, exp=NOW + 300)))

    def test_max_age_validation(self) -> None:
        """A max_age that is not a positive finite number is a ValueError."""
        for max_age in (0, -1, float("nan"), float("inf"), True, "600"):
            self.assertRaises(ValueError, IDTokenValidator, ISSUER, CLIENT_ID, self.verifier, self.clock,
                              60, max_age)


class AtHashTests(_Base):
    def test_right(self) -> None:
        """An at_hash matching the access token (SHA-256 for RS256) passes."""
        signed = token(claims(at_hash=at_hash(ACCESS_TOKEN, hashlib.sha256)))
        self.accepted(signed, access_token=ACCESS_TOKEN)

    def test_known_vector(self) -> None:
        """The at_hash example of OpenID Connect Core 1.0, A.3 passes."""
        body = claims(at_hash="77QmUPtjPfzWtF2AnpK9RQ")
        self.accepted(token(body), access_token="jHkWEdUXMU1BwAsC4vtUsZwnNvTIxEl0z9K3vx5KF0Y")

    def test_wrong(self) -> None:
        """An at_hash that matches nothing: bad_at_hash."""
        signed = token(claims(at_hash="AAAAAAAAAAAAAAAAAAAAAA"))
        self.refused("bad_at_hash", signed, access_token=ACCESS_TOKEN)

    def test_for_another_token(self) -> None:
        """The at_hash of another access token: bad_at_hash."""
        signed = token(claims(at_hash=at_hash("another-access-token", hashlib.sha256)))
        self.refused("bad_at_hash", signed, access_token=ACCESS_TOKEN)

    def test_full_hash(self) -> None:
        """The whole hash (not its left half) is not the at_hash: bad_at_hash."""
        whole = b64(hashlib.sha256(ACCESS_TOKEN.encode()).digest())
        self.refused("bad_at_hash", token(claims(at_hash=whole)), access_token=ACCESS_TOKEN)

    def test_not_a_string(self) -> None:
        """A non-string at_hash: bad_at_hash."""
        self.refused("bad_at_hash", token(claims(at_hash=5)), access_token=ACCESS_TOKEN)

    def test_non_ascii_access_token(self) -> None:
        """A non-ASCII access token cannot match: bad_at_hash, not a crash."""
        signed = token(claims(at_hash=at_hash(ACCESS_TOKEN, hashlib.sha256)))
        self.refused("bad_at_hash", signed, access_token=ACCESS_TOKEN + "\u00e9")

    def test_no_access_token(self) -> None:
        """at_hash present and no access token given: not checked."""
        self.accepted(token(claims(at_hash="AAAAAAAAAAAAAAAAAAAAAA")))

    def test_absent(self) -> None:
        """An access token given and no at_hash in the token: passes."""
        self.accepted(token(), access_token=ACCESS_TOKEN)

    def test_hash_by_algorithm(self) -> None:
        """RS384 uses SHA-384 (a SHA-256 at_hash fails); ES256 SHA-256; EdDSA SHA-512."""
        keys = KeySet.from_jwks(
            jwks(
                public_jwk(RSA_KEY, kid="rsa-1"),
                public_jwk(EC_KEY, kid="ec-1"),
                public_jwk(ED_KEY, kid="ed-1"),
            )
        )
        verifier = JWTVerifier(["RS384", "ES256", "EdDSA"])
        validator = IDTokenValidator(ISSUER, CLIENT_ID, verifier, self.clock)
        for alg, key, kid, function in (
            ("RS384", RSA_KEY, "rsa-1", hashlib.sha384),
            ("ES256", EC_KEY, "ec-1", hashlib.sha256),
            ("EdDSA", ED_KEY, "ed-1", hashlib.sha512),
        ):
            signed = token(claims(at_hash=at_hash(ACCESS_TOKEN, function)), key=key, alg=alg, kid=kid)
            validator.validate(signed, keys, NONCE, access_token=ACCESS_TOKEN)
        wrong = token(claims(at_hash=at_hash(ACCESS_TOKEN, hashlib.sha256)), alg="RS384")
        error = self.assertRaises(TokenError, validator.validate, wrong, keys, NONCE, ACCESS_TOKEN)
        self.assertEqual(error.reason, "bad_at_hash")


class LeakTests(_Base):
    def test_detail_never_echoes_token(self) -> None:
        """No refusal's detail contains the token, a segment of it, or a hostile kid."""
        hostile = "kid-" + "Z" * 40
        for reason, bad in (
            ("bad_signature", token(key=ATTACKER_KEY)),
            ("unknown_kid", token(kid=hostile)),
            ("malformed", token(kid=hostile * 10)),
            ("bad_aud", token(claims(aud="attacker-audience-value"))),
            ("malformed", token() + ".x"),
        ):
            error = self.refused(reason, bad)
            self.assertNotIn(bad, str(error))
            self.assertNotIn(hostile, error.detail)
            self.assertNotIn("attacker-audience-value", error.detail)


# -- logout tokens ------------------------------------------------------------------------------

SID = "08a5019c-17e1-4977-8f42-65a12843ea02"


def logout_claims(**changes: Any) -> Dict[str, Any]:
    """Valid logout token claims at L{NOW}, with C{changes} (L{DROP} removes)."""
    result: Dict[str, Any] = {
        "iss": ISSUER,
        "aud": CLIENT_ID,
        "iat": NOW,
        "exp": NOW + 120,
        "jti": "bWJq-logout-1",
        "sub": "248289761001",
        "sid": SID,
        "events": {BACKCHANNEL_LOGOUT_EVENT: {}},
    }
    for name, value in changes.items():
        if value is DROP:
            result.pop(name, None)
        else:
            result[name] = value
    return result


def logout_token(payload: Optional[Dict[str, Any]] = None, **header: Any) -> str:
    """A logout token (default: L{logout_claims}), typed C{logout+jwt} unless C{typ} is given."""
    header.setdefault("typ", "logout+jwt")
    return token(logout_claims() if payload is None else payload, **header)


class _LogoutBase(_Base):
    def setUp(self) -> None:
        super().setUp()
        self.logout = LogoutTokenValidator(ISSUER, CLIENT_ID, self.verifier, self.clock)

    def refused(self, reason: str, token: Any, keys: Optional[KeySet] = None, **kwargs: Any) -> TokenError:
        """Validate C{token} as a logout token: it is refused for C{reason}."""
        validator = kwargs.pop("validator", self.logout)
        error = self.assertRaises(
            TokenError, validator.validate, token, self.keys if keys is None else keys
        )
        self.assertEqual(error.reason, reason, error.detail)
        self.assertNoLeak(error, token)
        return error

    def accepted(self, token: str, keys: Optional[KeySet] = None, **kwargs: Any) -> Dict[str, Any]:
        validator = kwargs.pop("validator", self.logout)
        return validator.validate(token, self.keys if keys is None else keys)


class LogoutTokenValidTests(_LogoutBase):
    def test_valid_passes(self) -> None:
        """A valid logout token (sub and sid) passes and its claims are returned."""
        self.assertEqual(self.accepted(logout_token()), logout_claims())

    def test_sub_only(self) -> None:
        """A token with a sub and no sid passes."""
        body = logout_claims(sid=DROP)
        self.assertEqual(self.accepted(logout_token(body)), body)

    def test_sid_only(self) -> None:
        """A token with a sid and no sub passes."""
        body = logout_claims(sub=DROP)
        self.assertEqual(self.accepted(logout_token(body)), body)

    def test_other_algorithms(self) -> None:
        """ES256 and EdDSA logout tokens from our keys pass."""
        self.accepted(logout_token(key=EC_KEY, alg="ES256", kid="ec-1"))
        self.accepted(logout_token(key=ED_KEY, alg="EdDSA", kid="ed-1"))

    def test_typ_accepted(self) -> None:
        """typ logout+jwt or application/logout+jwt in any case, plain JWT (Keycloak < 25 and
        IdentityServer 6 send it: the events claim and the absent nonce tell a logout token
        apart), or no typ at all, passes."""
        for typ in ("logout+jwt", "LOGOUT+JWT", "Logout+Jwt", "application/logout+jwt",
                    "Application/Logout+JWT", "JWT", "jwt", DROP):
            self.accepted(logout_token(typ=typ))

    def test_exp_optional(self) -> None:
        """exp is optional: a token without one passes."""
        self.accepted(logout_token(logout_claims(exp=DROP)))

    def test_extra_events_and_claims(self) -> None:
        """Other events beside the logout event, a logout event with members, and extra claims pass."""
        body = logout_claims(
            events={BACKCHANNEL_LOGOUT_EVENT: {"reason": "admin"}, "https://example.com/other": {}},
            txn="abc",
        )
        self.assertEqual(self.accepted(logout_token(body)), body)

    def test_jti_reuse_not_checked(self) -> None:
        """The validator keeps no state: the same token passes twice (the caller checks reuse)."""
        same = logout_token()
        self.accepted(same)
        self.accepted(same)

    def test_settings(self) -> None:
        """The settings are kept; leeway and max_age are floats."""
        validator = LogoutTokenValidator(ISSUER, CLIENT_ID, self.verifier, self.clock, leeway=5, max_age=90)
        self.assertEqual(
            (validator.issuer, validator.client_id, validator.verifier, validator.clock),
            (ISSUER, CLIENT_ID, self.verifier, self.clock),
        )
        self.assertEqual((validator.leeway, validator.max_age), (5.0, 90.0))
        self.assertEqual((self.logout.leeway, self.logout.max_age), (60.0, 300.0))

    def test_construction_rules(self) -> None:
        """A bad max_age, leeway, issuer or client id is a ValueError."""
        for max_age in (0, -1, float("nan"), float("inf"), True, "300", None):
            self.assertRaises(
                ValueError, LogoutTokenValidator, ISSUER, CLIENT_ID, self.verifier, self.clock, 60, max_age
            )
        for leeway in (-1, float("nan"), float("inf"), True, "60"):
            self.assertRaises(
                ValueError, LogoutTokenValidator, ISSUER, CLIENT_ID, self.verifier, self.clock, leeway
            )
        self.assertRaises(ValueError, LogoutTokenValidator, "", CLIENT_ID, self.verifier, self.clock)
        self.assertRaises(ValueError, LogoutTokenValidator, ISSUER, "", self.verifier, self.clock)


class LogoutTokenRefusalTests(_LogoutBase):
    """Each test breaks one rule of an otherwise valid logout token."""

    def test_alg_none(self) -> None:
        """alg none, in any case, even typed logout+jwt: alg_not_allowed."""
        for alg in ("none", "None", "NONE"):
            header = json.dumps({"alg": alg, "typ": "logout+jwt"}).encode()
            bad = b64(header) + "." + b64(json.dumps(logout_claims()).encode()) + "."
            self.refused("alg_not_allowed", bad)

    def test_alg_not_allowed(self) -> None:
        """An algorithm outside the verifier's allow-list: alg_not_allowed."""
        self.refused("alg_not_allowed", logout_token(alg="RS384"))

    def test_bad_signature(self) -> None:
        """Signed by another key, or a tampered payload: bad_signature."""
        self.refused("bad_signature", logout_token(key=ATTACKER_KEY))
        header, _, signature = logout_token().split(".")
        tampered = b64(json.dumps(logout_claims(sub="someone-else")).encode())
        self.refused("bad_signature", ".".join((header, tampered, signature)))

    def test_malformed(self) -> None:
        """Not a JWS at all: malformed."""
        self.refused("malformed", "logout")
        self.refused("malformed", logout_token() + ".x")

    def test_wrong_typ(self) -> None:
        """A typ header other than logout+jwt or JWT (an access token's at+jwt...): bad_typ."""
        for typ in ("at+jwt", "application/jwt", "logout", "logout+jwt ", " logout+jwt",
                    "jwt+logout", "application/logout+jwt+x", "", "logout+jwt\u212a", 5, None,
                    ["logout+jwt"]):
            self.refused("bad_typ", logout_token(typ=typ))

    def test_wrong_iss(self) -> None:
        """iss missing, another issuer, a trailing slash or not a string: bad_iss."""
        for iss in (DROP, "https://evil.example.com", ISSUER + "/", 5):
            self.refused("bad_iss", logout_token(logout_claims(iss=iss)))

    def test_wrong_aud(self) -> None:
        """aud missing, another client, a list without us, or not strings: bad_aud."""
        for aud in (DROP, "other-client", ["other-client"], [], 5, [CLIENT_ID, 5]):
            self.refused("bad_aud", logout_token(logout_claims(aud=aud)))

    def test_azp_rules(self) -> None:
        """Several audiences need azp, and azp must be us (as for ID tokens)."""
        self.refused("missing_azp", logout_token(logout_claims(aud=[CLIENT_ID, "other"])))
        self.refused("bad_azp", logout_token(logout_claims(aud=[CLIENT_ID, "other"], azp="other")))
        self.refused("bad_azp", logout_token(logout_claims(azp="other")))
        self.accepted(logout_token(logout_claims(aud=[CLIENT_ID, "other"], azp=CLIENT_ID)))

    def test_iat_missing(self) -> None:
        """No iat, or one that is not a number: bad_iat."""
        for iat in (DROP, str(NOW), True, None):
            self.refused("bad_iat", logout_token(logout_claims(iat=iat)))

    def test_iat_in_future(self) -> None:
        """iat up to the leeway ahead passes; one second more: iat_in_future."""
        self.accepted(logout_token(logout_claims(iat=NOW + 60)))
        self.refused("iat_in_future", logout_token(logout_claims(iat=NOW + 60 + 1)))

    def test_iat_too_old(self) -> None:
        """iat older than max_age plus leeway: iat_too_old, even with exp far ahead."""
        self.accepted(logout_token(logout_claims(iat=NOW - 300 - 60, exp=NOW + 3600)))
        self.refused("iat_too_old", logout_token(logout_claims(iat=NOW - 300 - 60 - 1, exp=NOW + 3600)))
        self.refused("iat_too_old", logout_token(logout_claims(iat=NOW - 86400, exp=DROP)))

    def test_iat_too_old_custom_max_age(self) -> None:
        """max_age and leeway are the validator's: 30 s and 0 s."""
        validator = LogoutTokenValidator(ISSUER, CLIENT_ID, self.verifier, self.clock, leeway=0, max_age=30)
        self.accepted(logout_token(logout_claims(iat=NOW - 30)), validator=validator)
        self.refused("iat_too_old", logout_token(logout_claims(iat=NOW - 31)), validator=validator)

    def test_clock_is_used(self) -> None:
        """Time comes from the injected clock: a token goes stale as the clock moves."""
        good = logout_token(logout_claims(exp=DROP))
        self.accepted(good)
        self.clock.advance(300 + 60 + 1)
        self.refused("iat_too_old", good)

    def test_expired(self) -> None:
        """exp present and passed (with the leeway): expired; one second before: passes."""
        self.accepted(logout_token(logout_claims(exp=NOW - 60 + 1)))
        self.refused("expired", logout_token(logout_claims(exp=NOW - 60)))
        self.refused("expired", logout_token(logout_claims(exp=NOW - 3600)))

    def test_exp_not_a_number(self) -> None:
        """exp present and not a number (null included): bad_exp."""
        for exp in (str(NOW + 120), True, None, [NOW + 120]):
            self.refused("bad_exp", logout_token(logout_claims(exp=exp)))

    def test_nbf(self) -> None:
        """nbf present is checked as for ID tokens: not_yet_valid, bad_nbf."""
        self.refused("not_yet_valid", logout_token(logout_claims(nbf=NOW + 61)))
        self.refused("bad_nbf", logout_token(logout_claims(nbf="soon")))

    def test_jti_missing(self) -> None:
        """No jti, an empty one, or one that is not a string: bad_jti."""
        for jti in (DROP, "", None, 5, ["a"]):
            self.refused("bad_jti", logout_token(logout_claims(jti=jti)))

    def test_events_missing(self) -> None:
        """No events claim, or one that is not an object: bad_events."""
        for events in (DROP, None, [], [BACKCHANNEL_LOGOUT_EVENT], BACKCHANNEL_LOGOUT_EVENT, 5):
            self.refused("bad_events", logout_token(logout_claims(events=events)))

    def test_events_without_logout_event(self) -> None:
        """events without the back-channel logout member: missing_logout_event."""
        for events in ({}, {"http://schemas.openid.net/event/frontchannel-logout": {}},
                       {BACKCHANNEL_LOGOUT_EVENT + "/": {}},
                       {"https://schemas.openid.net/event/backchannel-logout": {}}):
            self.refused("missing_logout_event", logout_token(logout_claims(events=events)))

    def test_logout_event_not_object(self) -> None:
        """The back-channel logout member is not a JSON object: bad_logout_event."""
        for value in (None, True, "", "{}", [], [{}], 0):
            self.refused("bad_logout_event",
                         logout_token(logout_claims(events={BACKCHANNEL_LOGOUT_EVENT: value})))

    def test_no_sub_and_no_sid(self) -> None:
        """Neither sub nor sid: no_sub_or_sid."""
        self.refused("no_sub_or_sid", logout_token(logout_claims(sub=DROP, sid=DROP)))

    def test_bad_sub(self) -> None:
        """A sub that is present and not a valid subject is refused, even with a sid: bad_sub."""
        for sub in ("", None, 5, "x" * 256, "user\ud800"):
            self.refused("bad_sub", logout_token(logout_claims(sub=sub)))

    def test_bad_sid(self) -> None:
        """A sid that is present and not a non-empty string is refused, even with a sub: bad_sid."""
        for sid in ("", None, 5, [SID], "sid\ud800"):
            self.refused("bad_sid", logout_token(logout_claims(sid=sid)))

    def test_nonce_present(self) -> None:
        """Any nonce claim, whatever its value: nonce_present."""
        for nonce in (NONCE, "", None):
            self.refused("nonce_present", logout_token(logout_claims(nonce=nonce)))

    def test_id_token_is_not_a_logout_token(self) -> None:
        """A valid ID token is never a logout token: it has no events claim (typed JWT or not)."""
        self.refused("bad_events", token())
        self.refused("bad_events", token(typ=DROP))
        with_event = claims(jti="id-token-jti", events={BACKCHANNEL_LOGOUT_EVENT: {}})
        self.refused("nonce_present", token(with_event, typ=DROP))

    def test_logout_token_is_not_an_id_token(self) -> None:
        """A logout token (no nonce, optional exp) is not an ID token."""
        self.assertRaises(TokenError, self.validator.validate, logout_token(), self.keys, NONCE)
        error = self.assertRaises(
            TokenError, self.validator.validate, logout_token(logout_claims(exp=DROP)), self.keys, None
        )
        self.assertEqual(error.reason, "bad_exp")

    def test_detail_never_echoes_claims(self) -> None:
        """Refusals name no value taken from the token."""
        hostile = "attacker-value-" + "Q" * 20
        for reason, body in (
            ("bad_iss", logout_claims(iss=hostile)),
            ("bad_aud", logout_claims(aud=hostile)),
            ("bad_jti", logout_claims(jti=[hostile])),
            ("missing_logout_event", logout_claims(events={hostile: {}})),
            ("bad_sid", logout_claims(sid=[hostile])),
            ("nonce_present", logout_claims(nonce=hostile)),
        ):
            error = self.refused(reason, logout_token(body))
            self.assertNotIn(hostile, str(error))
        error = self.refused("bad_typ", logout_token(typ=hostile))
        self.assertNotIn(hostile, str(error))
