"""
Validate OpenID Connect ID tokens and back-channel logout tokens: their
signature through L{oidcproxy.oidc.jws} (structure, keys, the C{alg}
allow-list), then every claim here, against the injected clock.

Everything here is synchronous and pure: keys arrive as a L{KeySet} built
from an already fetched JWKS document, and time comes from an injected
L{IReactorTime}, never from C{time.time()}. Fetching and caching the JWKS
(and refetching it when a token names an unknown key) is the caller's job.

The names tests and callers know from here (L{KeySet}, L{JWTVerifier},
L{TokenError}, L{peek_header}, the algorithm sets) are those of
L{oidcproxy.oidc.jws}, imported again.

L{IDTokenValidator} checks ID tokens (OpenID Connect Core 1.0, 3.1.3.7);
L{LogoutTokenValidator} checks logout tokens (OpenID Connect Back-Channel
Logout 1.0, 2.6) with the same signature, issuer, audience and time rules,
except that C{exp} is optional there. For both C{iat} may not be older than
the validator's C{max_age} (an ID token's only when one is given). Rules
marked "logout" below apply to logout tokens only, "ID" to ID tokens only.

Every refusal is a L{TokenError} with a stable C{reason} code:

==========================================================  ======================
Rule                                                        C{reason}
==========================================================  ======================
not a str; over L{MAX_TOKEN_SIZE} bytes; not ASCII; not     C{malformed}
three dot-separated base64url segments (unpadded,
canonical); header or payload not strict JSON (UTF-8, no
duplicate member names, no NaN or Infinity); header not an
object with a string C{alg}; C{kid} not a string of at
most 256 characters; payload not a JSON object
C{alg} not in the verifier's allow-list (C{none}, in any    C{alg_not_allowed}
case, never is)
a C{crit} header (no extension is understood)               C{crit_header}
a C{kid} given and no key of ours with it fits C{alg}       C{unknown_kid}
no C{kid} and no key of ours fits C{alg}                    C{no_key}
no C{kid} and several keys fit C{alg}                       C{ambiguous_key}
no candidate key verifies the signature                     C{bad_signature}
C{iss} missing, or not exactly the configured issuer        C{bad_iss}
C{aud} missing, not a string or non-empty list of strings,  C{bad_aud}
or without the client id
several audiences and no C{azp}                             C{missing_azp}
C{azp} present and not the client id                        C{bad_azp}
C{exp} missing (ID) or present and not a finite number      C{bad_exp}
C{now >= exp + leeway}                                      C{expired}
C{iat} missing or not a finite number                       C{bad_iat}
C{iat > now + leeway}                                       C{iat_in_future}
C{iat < now - max_age - leeway} (logout; ID with a         C{iat_too_old}
C{max_age})
C{nbf} present and not a finite number                      C{bad_nbf}
C{now < nbf - leeway}                                       C{not_yet_valid}
C{sub} missing (ID) or present (logout), and not a string,  C{bad_sub}
empty, over 255 characters, or not valid Unicode
a nonce expected and the C{nonce} claim missing (ID)        C{missing_nonce}
a nonce expected and C{nonce} not a string or not equal     C{bad_nonce}
(ID)
C{at_hash} present, an access token given, and they do not  C{bad_at_hash}
match (ID)
a C{typ} header and it is not C{logout+jwt},                C{bad_typ}
C{application/logout+jwt} or C{JWT}, in any case (logout)
neither C{sub} nor C{sid} (logout)                          C{no_sub_or_sid}
C{sid} present and not a non-empty string of valid Unicode  C{bad_sid}
(logout)
C{events} missing or not a JSON object (logout)             C{bad_events}
C{events} without the member                                C{missing_logout_event}
C{http://schemas.openid.net/event/backchannel-logout}
(logout)
that member's value not a JSON object (logout)              C{bad_logout_event}
a C{nonce} claim, whatever its value (logout)               C{nonce_present}
C{jti} missing, not a string, or empty (logout)             C{bad_jti}
a JWKS document that is not C{{"keys": [...]}}              C{bad_jwks}
==========================================================  ======================

A logout token's C{jti} is not checked for reuse here: the caller keeps the
replay cache.

Numbers are C{int} or C{float}, never C{bool}. C{jku}, C{jwk}, C{x5u} and
C{x5c} headers are ignored: keys only ever come from our own L{KeySet}, and
HMAC algorithms only ever use the configured secret, never a JWKS key (this
defeats the "HS256 signed with the RSA public key" confusion).

A C{detail} is a fixed human sentence: it never contains the token, a part of
it, or a value taken from it.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any, Callable, Dict, List, Optional

from twisted.internet.interfaces import IReactorTime

from ..core.encoding import b64url_encode
from ..core.numbers import finite_number
from .jws import (
    ASYMMETRIC_ALGORITHMS,
    HMAC_ALGORITHMS,
    MAX_KID_LENGTH,
    MAX_TOKEN_SIZE,
    SUPPORTED_ALGORITHMS,
    JWTVerifier,
    KeySet,
    TokenError,
    peek_claims,
    peek_header,
)

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "BACKCHANNEL_LOGOUT_EVENT",
    "HMAC_ALGORITHMS",
    "MAX_KID_LENGTH",
    "MAX_TOKEN_SIZE",
    "SUPPORTED_ALGORITHMS",
    "ClaimsValidator",
    "IDTokenValidator",
    "JWTVerifier",
    "KeySet",
    "LogoutTokenValidator",
    "TokenError",
    "finite_number",
    "peek_claims",
    "peek_header",
]

_HMAC_ALGORITHMS = HMAC_ALGORITHMS
"""The former name of L{HMAC_ALGORITHMS} (the guard still imports it)."""

MAX_SUB_LENGTH = 255
"""The longest C{sub} claim accepted (OpenID Connect Core 1.0, 2)."""

# OpenID Connect Core 1.0, 3.1.3.6: the hash of the ID token's signature
# algorithm; EdDSA (Ed25519, the only EdDSA curve accepted here) uses SHA-512.
_AT_HASH_FUNCTIONS: Dict[str, Callable[[bytes], Any]] = {
    "HS256": hashlib.sha256,
    "RS256": hashlib.sha256,
    "PS256": hashlib.sha256,
    "ES256": hashlib.sha256,
    "ES256K": hashlib.sha256,
    "HS384": hashlib.sha384,
    "RS384": hashlib.sha384,
    "PS384": hashlib.sha384,
    "ES384": hashlib.sha384,
    "HS512": hashlib.sha512,
    "RS512": hashlib.sha512,
    "PS512": hashlib.sha512,
    "ES512": hashlib.sha512,
    "EdDSA": hashlib.sha512,
}


def _same_text(a: str, b: str) -> bool:
    """Constant-time comparison of two strings, whatever characters they hold."""
    return hmac.compare_digest(a.encode("utf-8", "surrogatepass"), b.encode("utf-8", "surrogatepass"))


def _at_hash(alg: str, access_token: str) -> Optional[str]:
    """The C{at_hash} of C{access_token} for C{alg}, or None if it has none."""
    function = _AT_HASH_FUNCTIONS.get(alg)
    if function is None:
        return None
    try:
        data = access_token.encode("ascii")
    except UnicodeEncodeError:
        return None
    digest = function(data).digest()
    return b64url_encode(digest[: len(digest) // 2])


def _check_sub(sub: Any) -> None:
    """
    A C{sub} claim is a string of 1 to L{MAX_SUB_LENGTH} characters of valid
    Unicode text.

    @raise TokenError: C{bad_sub}.
    """
    if not isinstance(sub, str) or not sub or len(sub) > MAX_SUB_LENGTH:
        raise TokenError("bad_sub", f"The subject is not a string of 1 to {MAX_SUB_LENGTH} characters.")
    try:
        sub.encode("utf-8")
    except UnicodeEncodeError:
        raise TokenError("bad_sub", "The subject is not valid Unicode text.") from None


def _check_sid(sid: Any) -> None:
    """
    A C{sid} claim is a non-empty string of valid Unicode text.

    @raise TokenError: C{bad_sid}.
    """
    if not isinstance(sid, str) or not sid:
        raise TokenError("bad_sid", "The session id is not a non-empty string.")
    try:
        sid.encode("utf-8")
    except UnicodeEncodeError:
        raise TokenError("bad_sid", "The session id is not valid Unicode text.") from None


def _max_age(value: Any) -> float:
    """A validator's C{max_age}: a positive finite number of seconds."""
    seconds = finite_number(value)
    if seconds is None or seconds <= 0:
        raise ValueError("max_age must be a positive finite number of seconds")
    return seconds


class ClaimsValidator:
    """
    What ID tokens and logout tokens share: the settings, and the issuer,
    audience and time checks of OpenID Connect Core 1.0, 3.1.3.7.
    """

    def __init__(
        self,
        issuer: str,
        client_id: str,
        verifier: JWTVerifier,
        clock: IReactorTime,
        leeway: float,
    ) -> None:
        if not isinstance(issuer, str) or not issuer:
            raise ValueError("issuer must be a non-empty string")
        if not isinstance(client_id, str) or not client_id:
            raise ValueError("client_id must be a non-empty string")
        leeway_value = finite_number(leeway)
        if leeway_value is None or leeway_value < 0:
            raise ValueError("leeway must be a finite number of seconds, at least 0")
        self.issuer = issuer
        self.client_id = client_id
        self.verifier = verifier
        self.clock = clock
        self.leeway = leeway_value

    def _check_issuer_and_audience(self, claims: Dict[str, Any]) -> None:
        iss = claims.get("iss")
        if not isinstance(iss, str) or iss != self.issuer:
            raise TokenError("bad_iss", f"The issuer is missing or is not {self.issuer}.")

        aud = claims.get("aud")
        audiences: List[str]
        if isinstance(aud, str):
            audiences = [aud]
        elif isinstance(aud, list) and aud and all(isinstance(a, str) for a in aud):
            audiences = aud
        else:
            raise TokenError("bad_aud", "The audience is missing or not a string or list of strings.")
        if self.client_id not in audiences:
            raise TokenError("bad_aud", "This client is not an audience of the token.")

        if "azp" in claims:
            if claims["azp"] != self.client_id:
                raise TokenError("bad_azp", "The authorized party is not this client.")
        elif len(audiences) > 1:
            raise TokenError("missing_azp", "The token has several audiences and no authorized party.")

    def _check_times(
        self, claims: Dict[str, Any], *, exp_required: bool = True, max_age: Optional[float] = None
    ) -> None:
        """
        Check C{exp} (required, or only when present), C{iat} (required, not
        in the future and, given a C{max_age}, not older than that) and
        C{nbf} (when present), each with the leeway.
        """
        now = self.clock.seconds()
        leeway = self.leeway

        if exp_required or "exp" in claims:
            exp = finite_number(claims.get("exp"))
            if exp is None:
                raise TokenError("bad_exp", "The expiry time is missing or not a number.")
            if now >= exp + leeway:
                raise TokenError("expired", "The token has expired.")

        iat = finite_number(claims.get("iat"))
        if iat is None:
            raise TokenError("bad_iat", "The issue time is missing or not a number.")
        if iat > now + leeway:
            raise TokenError("iat_in_future", "The token was issued in the future.")
        if max_age is not None and iat < now - max_age - leeway:
            raise TokenError("iat_too_old", "The token was issued too long ago.")

        if "nbf" in claims:
            nbf = finite_number(claims["nbf"])
            if nbf is None:
                raise TokenError("bad_nbf", "The not-before time is not a number.")
            if now < nbf - leeway:
                raise TokenError("not_yet_valid", "The token is not valid yet.")


class IDTokenValidator(ClaimsValidator):
    """
    Validate OpenID Connect ID tokens (OpenID Connect Core 1.0, 3.1.3.7).

    An ID token is minted at the token endpoint just before it reaches us:
    with a C{max_age}, one whose C{iat} is older than that (plus the leeway)
    is refused, whatever its C{exp} says (3.1.3.7, item 10: "the iat Claim
    can be used to reject tokens that were issued too far away from the
    current time"), as a token kept and replayed later would be.
    """

    def __init__(
        self,
        issuer: str,
        client_id: str,
        verifier: JWTVerifier,
        clock: IReactorTime,
        leeway: float = 60.0,
        max_age: Optional[float] = None,
    ) -> None:
        """
        @param issuer: the exact C{iss} expected.
        @param client_id: our client id, which must be an audience.
        @param clock: where the current time comes from.
        @param leeway: seconds of clock skew tolerated on C{exp}, C{iat} and
            C{nbf}.
        @param max_age: a token issued more than this many seconds ago (plus
            the leeway) is refused; None: no bound.

        @raise ValueError: on an empty issuer or client id, a negative or
            non-finite leeway, or a max_age that is not a positive finite
            number.
        """
        super().__init__(issuer, client_id, verifier, clock, leeway)
        self.max_age = _max_age(max_age) if max_age is not None else None

    def validate(
        self,
        token: str,
        keys: KeySet,
        nonce: Optional[str],
        access_token: Optional[str] = None,
    ) -> Dict[str, Any]:
        """
        Verify C{token} and check its claims.

        @param nonce: the nonce sent in the authentication request, or None
            when none was sent (then any C{nonce} claim is accepted).
        @param access_token: the access token issued with the ID token; when
            given and the token has an C{at_hash}, they must match.

        @return: the claims.
        @raise TokenError: see the module docstring.
        """
        header, claims = self.verifier.verify(token, keys)
        self._check_issuer_and_audience(claims)
        self._check_times(claims, max_age=self.max_age)
        _check_sub(claims.get("sub"))

        if nonce is not None:
            if "nonce" not in claims:
                raise TokenError("missing_nonce", "The token has no nonce but one was expected.")
            token_nonce = claims["nonce"]
            if not isinstance(token_nonce, str) or not _same_text(token_nonce, nonce):
                raise TokenError("bad_nonce", "The token's nonce is not the one expected.")

        if access_token is not None and "at_hash" in claims:
            at_hash = claims["at_hash"]
            expected = _at_hash(header["alg"], access_token)
            if (
                not isinstance(at_hash, str)
                or expected is None
                or not _same_text(at_hash, expected)
            ):
                raise TokenError("bad_at_hash", "The token's at_hash does not match the access token.")
        return claims


BACKCHANNEL_LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout"
"""The C{events} member that makes a JWT a logout token."""

# The typ header values a logout token may carry, lower case (RFC 7515,
# 4.1.9: the "application/" prefix may be left out). Plain "JWT" too: Keycloak
# before 25 and IdentityServer 6 send it. Telling a logout token from an ID or
# access token does not rest on typ alone: the events claim is required and a
# nonce is refused.
_LOGOUT_TYPES = frozenset({"logout+jwt", "application/logout+jwt", "jwt"})


class LogoutTokenValidator(ClaimsValidator):
    """
    Validate logout tokens (OpenID Connect Back-Channel Logout 1.0, 2.6).

    Signature, C{alg}, C{iss}, C{aud}/C{azp}, C{exp}, C{iat} and C{nbf} are
    checked as for ID tokens, except that C{exp} is optional and C{iat} may
    not be older than C{max_age}. Whether the C{jti} was seen before is not
    checked here: the caller keeps the replay cache, and must remember a
    C{jti} for at least C{max_age + 2 * leeway} seconds (a token may claim an
    C{iat} up to C{leeway} in the future) to refuse every replay.
    """

    def __init__(
        self,
        issuer: str,
        client_id: str,
        verifier: JWTVerifier,
        clock: IReactorTime,
        leeway: float = 60.0,
        max_age: float = 300.0,
    ) -> None:
        """
        @param issuer: the exact C{iss} expected.
        @param client_id: our client id, which must be an audience.
        @param verifier: the ID tokens' verifier (same keys, same
            algorithms).
        @param clock: where the current time comes from.
        @param leeway: seconds of clock skew tolerated on C{exp}, C{iat} and
            C{nbf}.
        @param max_age: a token issued more than this many seconds ago (plus
            the leeway) is refused, whatever its C{exp}.

        @raise ValueError: on an empty issuer or client id, a negative or
            non-finite leeway, or a max_age that is not a positive finite
            number.
        """
        super().__init__(issuer, client_id, verifier, clock, leeway)
        self.max_age = _max_age(max_age)

    def validate(self, token: str, keys: KeySet) -> Dict[str, Any]:
        """
        Verify C{token} and check its claims.

        @return: the claims (C{jti} a non-empty string; C{sub}, C{sid} or
            both present and valid).
        @raise TokenError: see the module docstring.
        """
        header, claims = self.verifier.verify(token, keys)
        if "typ" in header:
            typ = header["typ"]
            if not isinstance(typ, str) or not typ.isascii() or typ.lower() not in _LOGOUT_TYPES:
                raise TokenError("bad_typ", "The token's typ header is not logout+jwt (or JWT).")
        self._check_issuer_and_audience(claims)
        self._check_times(claims, exp_required=False, max_age=self.max_age)

        if "sub" not in claims and "sid" not in claims:
            raise TokenError("no_sub_or_sid", "The token names neither a subject nor a session.")
        if "sub" in claims:
            _check_sub(claims["sub"])
        if "sid" in claims:
            _check_sid(claims["sid"])

        events = claims.get("events")
        if not isinstance(events, dict):
            raise TokenError("bad_events", "The token's events claim is missing or not a JSON object.")
        if BACKCHANNEL_LOGOUT_EVENT not in events:
            raise TokenError("missing_logout_event", "The token's events claim has no logout event.")
        if not isinstance(events[BACKCHANNEL_LOGOUT_EVENT], dict):
            raise TokenError("bad_logout_event", "The token's logout event is not a JSON object.")

        if "nonce" in claims:
            raise TokenError("nonce_present", "A logout token must not have a nonce.")

        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise TokenError("bad_jti", "The token's jti is missing or not a non-empty string.")
        return claims
