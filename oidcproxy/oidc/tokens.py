"""
Verify signed JWTs and validate OpenID Connect ID tokens and back-channel
logout tokens.

Everything here is synchronous and pure: keys arrive as a L{KeySet} built
from an already fetched JWKS document, and time comes from an injected
L{IReactorTime}, never from C{time.time()}. Fetching and caching the JWKS
(and refetching it when a token names an unknown key) is the caller's job.

Signatures are checked with pyjwt's L{jwt.PyJWS}, which checks no claim at
all; every claim is checked here, against the injected clock.

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
import json
import math
from typing import Any, Callable, Dict, FrozenSet, Iterable, List, Optional, Sequence, Tuple

import attr
import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from jwt.algorithms import HMACAlgorithm
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ..core.encoding import b64url_decode, b64url_encode

__all__ = [
    "BACKCHANNEL_LOGOUT_EVENT",
    "MAX_KID_LENGTH",
    "MAX_TOKEN_SIZE",
    "SUPPORTED_ALGORITHMS",
    "IDTokenValidator",
    "JWTVerifier",
    "KeySet",
    "LogoutTokenValidator",
    "TokenError",
    "peek_header",
]

log = Logger()

MAX_TOKEN_SIZE = 64 * 1024
"""The largest token, in bytes, that is even looked at."""

MAX_KID_LENGTH = 256
"""The longest C{kid} header accepted, in characters."""

MAX_SUB_LENGTH = 255
"""The longest C{sub} claim accepted (OpenID Connect Core 1.0, 2)."""

MIN_RSA_KEY_BITS = 2048
"""JWKS RSA keys shorter than this are skipped (RFC 7518, 3.3)."""

_RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
# cryptography's curve names, with the one algorithm each can verify.
_EC_ALGORITHM_BY_CURVE_NAME = {
    "secp256r1": "ES256",
    "secp384r1": "ES384",
    "secp521r1": "ES512",
    "secp256k1": "ES256K",
}
_HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
ASYMMETRIC_ALGORITHMS = _RSA_ALGORITHMS | frozenset(_EC_ALGORITHM_BY_CURVE_NAME.values()) | {"EdDSA"}
SUPPORTED_ALGORITHMS = ASYMMETRIC_ALGORITHMS | _HMAC_ALGORITHMS
"""Every C{alg} a L{JWTVerifier} can be configured with."""

# The curves accepted in a JWKS, by C{kty} and C{crv}, with the one algorithm
# each can verify. Ed448 is left out: OpenID Connect defines no at_hash for it.
_ALGORITHM_BY_CURVE: Dict[str, Dict[str, str]] = {
    "EC": {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512", "secp256k1": "ES256K"},
    "OKP": {"Ed25519": "EdDSA"},
}

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

# Everything malformed input can make the parsers and pyjwt raise.
_DECODE_ERRORS = (
    ValueError,  # includes json.JSONDecodeError, UnicodeDecodeError, binascii.Error
    TypeError,
    KeyError,
    OverflowError,
    RecursionError,
    jwt.PyJWTError,
)


class TokenError(Exception):
    """
    A token (or a JWKS document) was refused.

    @ivar reason: a stable snake_case code for logs and metrics; see the
        module docstring for the full list.
    @ivar detail: a human sentence. It never contains the token, any part of
        it, or any value taken from it.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


def _object_without_duplicates(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    result: Dict[str, Any] = {}
    for name, value in pairs:
        if name in result:
            raise ValueError("duplicate member name")
        result[name] = value
    return result


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("number out of range")
    return value


def _no_constants(text: str) -> Any:
    raise ValueError("NaN and Infinity are not JSON")


def _json_object(data: bytes) -> Dict[str, Any]:
    """
    Parse strict UTF-8 JSON that must be an object: no duplicate member
    names, no C{NaN}/C{Infinity}, no number that overflows a float.

    @raise ValueError: (or C{RecursionError}) when it is anything else.
    """
    value = json.loads(
        data.decode("utf-8"),
        object_pairs_hook=_object_without_duplicates,
        parse_float=_finite_float,
        parse_constant=_no_constants,
    )
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def _split(token: Any) -> Tuple[Dict[str, Any], bytes]:
    """
    The structural checks of L{peek_header}; also returns the decoded (not
    yet parsed) payload.
    """
    if not isinstance(token, str):
        raise TokenError("malformed", "The token is not a string.")
    # A JWS in compact form is pure ASCII, so characters are bytes here.
    if len(token) > MAX_TOKEN_SIZE:
        raise TokenError("malformed", f"The token is larger than {MAX_TOKEN_SIZE} bytes.")
    if not token.isascii():
        raise TokenError("malformed", "The token holds characters that are not ASCII.")
    segments = token.split(".")
    if len(segments) != 3:
        raise TokenError("malformed", "The token does not have exactly three segments.")
    header_segment, payload_segment, signature_segment = segments
    try:
        header_bytes = b64url_decode(header_segment)
        payload = b64url_decode(payload_segment)
        b64url_decode(signature_segment)
    except ValueError:
        raise TokenError("malformed", "A token segment is not valid base64url.") from None
    try:
        header = _json_object(header_bytes)
    except (ValueError, RecursionError):
        raise TokenError("malformed", "The token header is not a JSON object.") from None
    if not isinstance(header.get("alg"), str):
        raise TokenError("malformed", "The token header has no string 'alg'.")
    return header, payload


def peek_header(token: str) -> Dict[str, Any]:
    """
    Return the header of C{token} after structural checks only: the
    signature is B{not} verified, so nothing in it may be trusted.

    The token must be a C{str} of at most L{MAX_TOKEN_SIZE} bytes with
    exactly three dot-separated segments, the header and payload valid
    base64url (unpadded, canonical), the header a JSON object with a string
    C{alg}.

    @raise TokenError: with reason C{malformed}.
    """
    return _split(token)[0]


def _algorithms_for_key(public_key: Any) -> FrozenSet[str]:
    """The algorithms a public key of this type and curve can verify."""
    if isinstance(public_key, RSAPublicKey):
        return _RSA_ALGORITHMS
    if isinstance(public_key, EllipticCurvePublicKey):
        alg = _EC_ALGORITHM_BY_CURVE_NAME.get(public_key.curve.name)
        return frozenset({alg}) if alg else frozenset()
    if isinstance(public_key, Ed25519PublicKey):
        return frozenset({"EdDSA"})
    return frozenset()


def _declared_alg(key: jwt.PyJWK) -> Optional[str]:
    """
    The C{alg} member of the JWK a L{jwt.PyJWK} was made from, or None.

    pyjwt offers no public accessor that tells a declared C{alg} from one it
    inferred; when its internals change, fall back to the algorithm the key
    is bound to, which is the stricter reading.
    """
    data = getattr(key, "_jwk_data", None)
    if isinstance(data, dict):
        alg = data.get("alg")
        return alg if isinstance(alg, str) else None
    return key.algorithm_name


def _describe(index: int, member: Any) -> str:
    """Name a JWKS member for a log line: its index and, if any, its kid."""
    kid = member.get("kid") if isinstance(member, dict) else None
    if isinstance(kid, str):
        shown = kid if len(kid) <= 64 else kid[:64] + "..."
        return f"#{index} (kid {shown!r})"
    return f"#{index}"


def _load_jwk(member: Any) -> jwt.PyJWK:
    """
    Turn one JWKS member into a verification key.

    @raise ValueError: naming why the member is unusable.
    """
    if not isinstance(member, dict):
        raise ValueError("not a JSON object")
    kty = member.get("kty")
    if kty == "oct":
        raise ValueError("symmetric keys are never taken from a JWKS")
    crv = member.get("crv")
    if kty == "RSA":
        fitting = _RSA_ALGORITHMS
        default = "RS256"
    elif isinstance(kty, str) and kty in _ALGORITHM_BY_CURVE:
        if not isinstance(crv, str) or crv not in _ALGORITHM_BY_CURVE[kty]:
            raise ValueError("missing or unsupported crv")
        default = _ALGORITHM_BY_CURVE[kty][crv]
        fitting = frozenset({default})
    else:
        raise ValueError("missing or unsupported kty")
    if "d" in member:
        raise ValueError("it holds private key material")
    kid = member.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise ValueError("kid is not a string")
    use = member.get("use")
    if use is not None and use != "sig":
        raise ValueError("use is not 'sig'")
    key_ops = member.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        raise ValueError("key_ops does not allow 'verify'")
    alg = member.get("alg")
    if alg is not None and (not isinstance(alg, str) or alg not in ASYMMETRIC_ALGORITHMS):
        raise ValueError("missing or unsupported alg")
    if alg is not None and alg not in fitting:
        raise ValueError("its alg does not fit its key type or curve")
    try:
        key = jwt.PyJWK(member, algorithm=alg or default)
    except (jwt.PyJWTError, ValueError, TypeError, KeyError, OverflowError, UnsupportedAlgorithm):
        raise ValueError("its key members are missing or invalid") from None
    if not fitting <= _algorithms_for_key(key.key):
        raise ValueError("its key does not fit its kty and crv")
    if isinstance(key.key, RSAPublicKey) and key.key.key_size < MIN_RSA_KEY_BITS:
        raise ValueError(f"RSA key shorter than {MIN_RSA_KEY_BITS} bits")
    return key


def _key_tuple(keys: Iterable[jwt.PyJWK]) -> Tuple[jwt.PyJWK, ...]:
    return tuple(keys)


@attr.s(frozen=True)
class KeySet:
    """
    The public signing keys of an issuer, in JWKS order.

    @ivar keys: the usable keys.
    """

    keys: Tuple[jwt.PyJWK, ...] = attr.ib(converter=_key_tuple)
    _usable: Tuple[FrozenSet[str], ...] = attr.ib(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        usable = []
        for key in self.keys:
            algorithms = _algorithms_for_key(key.key)
            declared = _declared_alg(key)
            if declared is not None:
                algorithms = algorithms & {declared}
            usable.append(algorithms)
        object.__setattr__(self, "_usable", tuple(usable))

    @classmethod
    def from_jwks(cls, document: Any) -> KeySet:
        """
        Build a key set from the parsed JSON of a C{jwks_uri} answer.

        Members that cannot be used to verify signatures (not an object, an
        unknown or symmetric C{kty}, missing or invalid key members, an
        unsupported C{alg}, a C{use} other than C{sig}, C{key_ops} without
        C{verify}, private key material, a short RSA key) are skipped with a
        warning naming the member and why.

        @raise TokenError: C{bad_jwks} if C{document} is not C{{"keys": [...]}}.
        """
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise TokenError("bad_jwks", 'The JWKS document is not an object with a "keys" list.')
        keys = []
        for index, member in enumerate(document["keys"]):
            try:
                keys.append(_load_jwk(member))
            except ValueError as e:
                log.warn(
                    "JWKS key {which} skipped: {why}",
                    which=_describe(index, member),
                    why=str(e),
                )
        if not keys:
            log.warn("JWKS holds no usable signing key")
        return cls(tuple(keys))

    def candidates(self, kid: Optional[str], alg: str) -> List[jwt.PyJWK]:
        """
        The keys that can verify a token signed with C{alg}: the key type
        and curve fit C{alg}, and the key's own C{alg}, if any, is C{alg}.
        With a C{kid}, only the keys with that C{kid}.
        """
        return [
            key
            for key, usable in zip(self.keys, self._usable)
            if alg in usable and (kid is None or key.key_id == kid)
        ]

    def has_kid(self, kid: str) -> bool:
        """Whether any key has this C{kid}, whatever its algorithm."""
        return any(key.key_id == kid for key in self.keys)


class JWTVerifier:
    """
    Signature verification shared by ID tokens and JWT access tokens.

    @ivar algorithms: the allow-list of C{alg} values.
    """

    def __init__(self, algorithms: Sequence[str], hmac_secret: Optional[bytes] = None) -> None:
        """
        @param algorithms: the allow-list, from L{SUPPORTED_ALGORITHMS}.
        @param hmac_secret: the client secret; required (and only used) when
            an C{HS*} algorithm is allowed.

        @raise ValueError: on an empty list, C{none} in any case, an unknown
            algorithm, or C{HS*} without a usable secret.
        """
        if isinstance(algorithms, str):
            raise ValueError("algorithms must be a sequence of names, not one string")
        allowed = frozenset(algorithms)
        if not allowed:
            raise ValueError("at least one algorithm must be allowed")
        for name in sorted(allowed, key=str):
            if not isinstance(name, str):
                raise ValueError("algorithm names must be strings")
            if name.lower() == "none":
                raise ValueError("the 'none' algorithm can never be allowed")
            if name not in SUPPORTED_ALGORITHMS:
                raise ValueError(f"unsupported algorithm {name!r}")
        if allowed & _HMAC_ALGORITHMS:
            if not hmac_secret or not isinstance(hmac_secret, bytes):
                raise ValueError("HS256/HS384/HS512 need a non-empty hmac_secret (bytes)")
            try:
                HMACAlgorithm(HMACAlgorithm.SHA256).prepare_key(hmac_secret)
            except jwt.InvalidKeyError:
                raise ValueError("hmac_secret looks like an asymmetric key or a JWK") from None
        self.algorithms: FrozenSet[str] = allowed
        self._hmac_secret = hmac_secret
        self._jws = jwt.PyJWS(algorithms=sorted(allowed))

    def _signature_ok(self, token: str, key: Any, alg: str) -> bool:
        try:
            self._jws.decode_complete(token, key=key, algorithms=[alg])
        except jwt.InvalidSignatureError:
            return False
        except jwt.InvalidKeyError:
            # This key cannot verify this algorithm: it does not verify.
            return False
        except _DECODE_ERRORS:
            raise TokenError("malformed", "The token could not be decoded.") from None
        return True

    def verify(self, token: str, keys: KeySet) -> Tuple[Dict[str, Any], Dict[str, Any]]:
        """
        Check the structure and the signature of C{token}; claims are not
        checked at all.

        @return: C{(header, claims)}.
        @raise TokenError: see the module docstring.
        """
        header, payload = _split(token)
        alg = header["alg"]
        if alg not in self.algorithms:
            raise TokenError("alg_not_allowed", "The token's algorithm is not allowed.")
        if "crit" in header:
            raise TokenError("crit_header", "The token has critical header extensions.")
        kid = header.get("kid")
        if "kid" in header and (not isinstance(kid, str) or len(kid) > MAX_KID_LENGTH):
            raise TokenError("malformed", "The token's key id is not a short string.")

        if alg in _HMAC_ALGORITHMS:
            # Only ever the configured secret: a JWKS key is never an HMAC key.
            verified = self._signature_ok(token, self._hmac_secret, alg)
        else:
            candidates = keys.candidates(kid, alg)
            if not candidates:
                if kid is not None:
                    raise TokenError("unknown_kid", "No key of the issuer has the token's key id.")
                raise TokenError("no_key", "No key of the issuer fits the token's algorithm.")
            if len(candidates) > 1 and kid is None:
                raise TokenError(
                    "ambiguous_key", "The token names no key id and several keys fit its algorithm."
                )
            verified = any(self._signature_ok(token, key.key, alg) for key in candidates)
        if not verified:
            raise TokenError("bad_signature", "The token's signature does not verify.")

        try:
            claims = _json_object(payload)
        except (ValueError, RecursionError):
            raise TokenError("malformed", "The token payload is not a JSON object.") from None
        return header, claims


def _number(value: Any) -> Optional[float]:
    """C{value} as a finite float if it is an int or float (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        result = float(value)
    except OverflowError:
        return None
    return result if math.isfinite(result) else None


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
    seconds = _number(value)
    if seconds is None or seconds <= 0:
        raise ValueError("max_age must be a positive finite number of seconds")
    return seconds


class _ClaimsValidator:
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
        leeway_value = _number(leeway)
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
            exp = _number(claims.get("exp"))
            if exp is None:
                raise TokenError("bad_exp", "The expiry time is missing or not a number.")
            if now >= exp + leeway:
                raise TokenError("expired", "The token has expired.")

        iat = _number(claims.get("iat"))
        if iat is None:
            raise TokenError("bad_iat", "The issue time is missing or not a number.")
        if iat > now + leeway:
            raise TokenError("iat_in_future", "The token was issued in the future.")
        if max_age is not None and iat < now - max_age - leeway:
            raise TokenError("iat_too_old", "The token was issued too long ago.")

        if "nbf" in claims:
            nbf = _number(claims["nbf"])
            if nbf is None:
                raise TokenError("bad_nbf", "The not-before time is not a number.")
            if now < nbf - leeway:
                raise TokenError("not_yet_valid", "The token is not valid yet.")


class IDTokenValidator(_ClaimsValidator):
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


class LogoutTokenValidator(_ClaimsValidator):
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
