"""
Signed JWTs (JWS compact form, RFC 7515): their structure, the issuer's
signing keys (L{KeySet}, built from a JWKS document) and signature
verification (L{JWTVerifier}). No claim is checked here: the validators of
L{oidcproxy.oidc.tokens} (ID and logout tokens) and L{oidcproxy.oidc.bearer}
(access tokens) do that on what L{JWTVerifier.verify} returns.

Everything here is synchronous and pure: keys arrive as a L{KeySet} built
from an already fetched JWKS document; fetching, caching and refetching it is
the provider's job (L{oidcproxy.oidc.provider}).

Signatures are checked with pyjwt's L{jwt.PyJWS}, which checks no claim at
all. C{jku}, C{jwk}, C{x5u} and C{x5c} headers are ignored: keys only ever
come from our own L{KeySet}, and HMAC algorithms only ever use the configured
secret, never a JWKS key (this defeats the "HS256 signed with the RSA public
key" confusion). The refusals and their C{reason} codes are listed in
L{oidcproxy.oidc.tokens}.
"""

from __future__ import annotations

import json
import math
from typing import Any, Dict, FrozenSet, Iterable, List, Optional, Sequence, Tuple

import attr
import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from jwt.algorithms import HMACAlgorithm
from twisted.logger import Logger

from ..core.encoding import b64url_decode

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "HMAC_ALGORITHMS",
    "MAX_KID_LENGTH",
    "MAX_TOKEN_SIZE",
    "SUPPORTED_ALGORITHMS",
    "JWTVerifier",
    "KeySet",
    "TokenError",
    "peek_claims",
    "peek_header",
]

log = Logger()

MAX_TOKEN_SIZE = 64 * 1024
"""The largest token, in bytes, that is even looked at."""

MAX_KID_LENGTH = 256
"""The longest C{kid} header accepted, in characters."""

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
HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
ASYMMETRIC_ALGORITHMS = _RSA_ALGORITHMS | frozenset(_EC_ALGORITHM_BY_CURVE_NAME.values()) | {"EdDSA"}
SUPPORTED_ALGORITHMS = ASYMMETRIC_ALGORITHMS | HMAC_ALGORITHMS
"""Every C{alg} a L{JWTVerifier} can be configured with."""

# The curves accepted in a JWKS, by C{kty} and C{crv}, with the one algorithm
# each can verify. Ed448 is left out: OpenID Connect defines no at_hash for it.
_ALGORITHM_BY_CURVE: Dict[str, Dict[str, str]] = {
    "EC": {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512", "secp256k1": "ES256K"},
    "OKP": {"Ed25519": "EdDSA"},
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


def peek_claims(token: str) -> Dict[str, Any]:
    """
    The claims of C{token} after the structural checks of L{peek_header}:
    the signature is B{not} verified, so they only say which issuer's keys
    to verify it with.

    @raise TokenError: with reason C{malformed}.
    """
    try:
        return _json_object(_split(token)[1])
    except (ValueError, RecursionError):
        raise TokenError("malformed", "The token payload is not a JSON object.") from None


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
        if allowed & HMAC_ALGORITHMS:
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

        if alg in HMAC_ALGORITHMS:
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
