"""
Access tokens presented as C{Authorization: Bearer <token>} (RFC 6750).

L{bearer_token} takes the token out of the request's C{Authorization}
headers; L{BearerValidator} decides whether it is good and returns its
claims.

A token of three dot-separated segments is a JWT access token and is checked
locally (RFC 9068, leniently where real identity providers are): the
signature with the provider's JWKS through the shared L{JWTVerifier} (an
unknown C{kid} makes L{Provider.keys_for} refetch the keys, rate limited),
then its header and claims. Any other token is opaque: with introspection on
it is sent to the provider's introspection endpoint (RFC 7662), otherwise it
is refused.

Every refusal is a L{TokenError} with a stable C{reason} (the caller answers
401); the signature and structure codes are those of L{oidcproxy.oidc.tokens}:

==========================================================  ==============================
Rule                                                        C{reason}
==========================================================  ==============================
L{bearer_token}: several C{Authorization} headers, no       C{malformed_authorization}
token after C{Bearer }, characters outside C{b64token}
not a non-empty ASCII C{str} of at most L{MAX_TOKEN_SIZE}   C{malformed}
bytes; a JWT that does not parse (see L{oidcproxy.oidc.tokens})
C{alg} not allowed, C{crit} header, unknown C{kid}, no or   as in L{oidcproxy.oidc.tokens}
ambiguous key, bad signature                                (C{alg_not_allowed}...)
a C{typ} header other than C{at+jwt},                       C{bad_typ}
C{application/at+jwt} or C{JWT} (any case)
an ID token: see below                                      C{id_token_as_access_token}
a refresh token: see below                                  C{refresh_token_as_access_token}
C{iss} missing or not exactly the issuer                    C{bad_iss}
C{aud} missing, not a string or non-empty list of strings,  C{bad_aud}
or naming none of the accepted audiences
with C{require_evidence}: no sign of an access token (see   C{not_an_access_token}
below)
C{exp} missing or not a number                              C{bad_exp}
C{now >= exp + leeway}                                      C{expired}
C{iat} present and not a number                             C{bad_iat}
C{iat > now + leeway}                                       C{iat_in_future}
C{nbf} present and not a number                             C{bad_nbf}
C{now < nbf - leeway}                                       C{not_yet_valid}
an opaque token and introspection off                       C{not_a_jwt}
introspection says C{"active": false}                       C{inactive}
introspection answer: a C{token_type} that does not name    C{bad_token_type}
an access token (C{access_token}, C{Bearer} in any case,
C{urn:ietf:params:oauth:token-type:access_token})
introspection answer: the ID and refresh token marks below  C{id_token_as_access_token}...
introspection answer: C{exp}, C{iat}, C{nbf} as above but   C{bad_exp}, C{expired}...
C{exp} optional; C{iss} as above but checked only when
present                                                     C{bad_iss}
introspection answer: C{aud} present and as above           C{bad_aud}
introspection answer without C{aud}: no C{client_id}        C{no_audience}
... a C{client_id} that is not one of the audiences         C{bad_client_id}
==========================================================  ==============================

The provider failing (not ready, unreachable, a bad answer, a timeout) is a
L{ProviderError}, passed on unchanged for the caller to answer 503/502/504.

B{ID and refresh tokens.} An ID token is signed by the same keys and often
has the same issuer, so it must not pass as an access token. A C{typ}
header of C{at+jwt} declares an access token (RFC 9068, 2.1; an ID token
never has it). Otherwise the token is refused as an ID token when it
carries a claim only ID tokens have (C{nonce}, C{at_hash}, C{c_hash},
C{s_hash}), Keycloak's C{typ} claim says C{ID}, or Cognito's C{token_use}
says C{id}; as a refresh token when Keycloak's C{typ} claim says
C{Refresh}, C{Offline} or C{Logout}, or C{token_use} says C{refresh}.
Keycloak up to version 24 (and 25+ with its "nonce backwards compatible"
mapper) also puts the login C{nonce} in access tokens, marked with the claim
C{"typ": "Bearer"}: such a C{nonce} is accepted.

An ID token without any of these marks (no nonce was sent at login, no
C{at_hash}: some refreshed ID tokens) would still pass where the client id
is an accepted audience, as it is its C{aud}. So with C{require_evidence}
(the caller sets it when the audiences are the default, the client id
alone) a JWT must also show that it is an access token: a C{typ} header of
C{at+jwt}, a C{scope} or C{scp} claim, a C{client_id} or C{cid} claim,
C{token_use} C{access}, or Keycloak's C{typ} claim C{Bearer}; anything else
is refused as C{not_an_access_token}. Configured audiences (an API's own
name) need none of this: an ID token never names an API as its audience.

Introspection answers (RFC 7662) may leave out C{aud}, C{iss} and
C{token_type}. Without C{aud} the C{client_id} the token was issued to must
be one of the accepted audiences, so that an active token of another client
does not pass; a C{token_type}, when present, must name an access token, so
that an active refresh token does not either. The caller logs every refusal
with its reason; the token is never logged.

B{The cache.} Validating a JWT costs a signature check; introspecting an
opaque token a round trip to the provider. Successful validations are kept
in a bounded LRU map (L{oidcproxy.core.cache.BoundedCache}) keyed by the
SHA-256 of the token (the token itself is never kept), each until a
I{valid-until} time: the token's C{exp} for a JWT,
C{min(exp, now + introspection_cache)} for an opaque token (a revoked opaque
token is thus believed for at most C{introspection_cache} seconds). An entry
past its time is dropped when next looked up; the least recently used entry
is dropped when the map is full, and so is one unused for L{CACHE_IDLE}. A
JWT is cached for its whole lifetime: a key removed from the JWKS does not
revoke the tokens it signed and that are cached already (JWTs are not
revocable anyway without introspection).

Refusals are B{not} cached, with one exception: an opaque token the provider
says is inactive is remembered as such for C{introspection_cache} seconds,
so that a client retrying a dead token (or a flood of them) does not turn
into a flood of introspection requests. Provider errors are never cached.
Concurrent validations of the same uncached opaque token share one
introspection request.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Dict, FrozenSet, List, Optional, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from ..core.cache import BoundedCache
from ..core.flight import fire_waiters
from .jws import HMAC_ALGORITHMS, MAX_KID_LENGTH, MAX_TOKEN_SIZE, JWTVerifier, KeySet, TokenError, peek_header
from .provider import Provider
from .tokens import ClaimsValidator, finite_number

__all__ = ["BearerValidator", "bearer_token"]

# RFC 9068, 2.1: "at+jwt" (the "application/" prefix may be left out: RFC
# 7515, 4.1.9); plain "JWT" as most providers still send it. Compared in
# lower case.
_ACCESS_TOKEN_TYPES = frozenset({"at+jwt", "application/at+jwt", "jwt"})
_DECLARED_ACCESS_TOKEN_TYPES = frozenset({"at+jwt", "application/at+jwt"})
# Claims that OpenID Connect defines for ID tokens only (s_hash: FAPI).
_ID_TOKEN_CLAIMS = ("nonce", "at_hash", "c_hash", "s_hash")
# Keycloak's "typ" claim and Cognito's (or Ory Hydra's) "token_use", lower
# case: which kind of token each value names.
_KEYCLOAK_ID_TYPES = frozenset({"id", "serialized-id"})
_KEYCLOAK_REFRESH_TYPES = frozenset({"refresh", "offline", "logout"})
_ID_TOKEN_USES = frozenset({"id", "id_token"})
_REFRESH_TOKEN_USES = frozenset({"refresh", "refresh_token"})
_ACCESS_TOKEN_USES = frozenset({"access", "access_token"})
# Claims only access tokens carry (RFC 9068, 2.2.3; Okta's scp and cid).
_ACCESS_TOKEN_CLAIMS = ("scope", "scp", "client_id", "cid")
# RFC 7662, 2.2 token_type values that name an access token, lower case:
# RFC 6749's "bearer" (what most servers send), and the names RFC 8693
# and RFC 7009 give access tokens.
_INTROSPECTED_ACCESS_TYPES = frozenset({
    "bearer", "access_token", "urn:ietf:params:oauth:token-type:access_token"})

# RFC 7235, 2.1: auth-scheme = token; RFC 6750, 2.1: b64token.
_AUTH_SCHEME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TOKEN68 = re.compile(rb"[A-Za-z0-9\-._~+/]+=*")

# What the cache's lookup answers for a token it does not hold (a cached
# None means the provider said "inactive").
_MISS = object()

_NO_KEYS = KeySet(())

CACHE_IDLE = 300.0
"""A cached validation not used for this long is dropped: the cache holds the
tokens in use, not every token seen until its expiry (up to C{cache_size})."""


def _malformed_authorization(detail: str) -> TokenError:
    return TokenError("malformed_authorization", detail)


def bearer_token(authorization_values: Optional[Sequence[bytes]]) -> Optional[str]:
    """
    The bearer token of a request's C{Authorization} headers.

    @param authorization_values: every C{Authorization} header value of the
        request (C{request.requestHeaders.getRawHeaders(b"authorization")}).
    @return: the token of exactly one C{Authorization: Bearer <token>}
        header (the scheme in any case, then exactly one space, then a
        C{b64token}: RFC 6750, 2.1); None when there is no C{Authorization}
        header or it names another scheme (C{Basic ...}).
    @raise TokenError: C{malformed_authorization} for several
        C{Authorization} headers (whatever their schemes), a header that
        does not start with a scheme, a Bearer header without a token, or a
        token with characters outside C{b64token} (including a second space).
    """
    if not authorization_values:
        return None
    if len(authorization_values) != 1:
        raise _malformed_authorization("The request has several Authorization headers.")
    scheme, _, credentials = authorization_values[0].partition(b" ")
    if _AUTH_SCHEME.fullmatch(scheme) is None:
        raise _malformed_authorization("The Authorization header does not start with a scheme.")
    if scheme.lower() != b"bearer":
        return None
    if not credentials:
        raise _malformed_authorization("The Authorization header has no bearer token.")
    if _TOKEN68.fullmatch(credentials) is None:
        raise _malformed_authorization("The bearer token holds characters a token cannot have.")
    return credentials.decode("ascii")


def _cache_key(token: str) -> bytes:
    """The cache's key of C{token} (its SHA-256), once it is known to be a plausible token."""
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_SIZE:
        raise TokenError("malformed", "The token is empty, not a string, or too large.")
    try:
        data = token.encode("ascii")
    except UnicodeEncodeError:
        raise TokenError("malformed", "The token holds characters that are not ASCII.") from None
    return hashlib.sha256(data).digest()


def _audiences(value: Any) -> Optional[List[str]]:
    """An C{aud} claim as a list, or None if it is not a string or a non-empty list of strings."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(a, str) for a in value):
        return value
    return None


class BearerValidator(ClaimsValidator):
    """
    Validates access tokens presented as C{Authorization: Bearer <token>}.

    The time rules (C{exp}, C{iat}, C{nbf} with the leeway) are those of ID
    tokens, from the shared base class; C{iat} is optional here. The base
    class's audience rule (the client id must be an audience, C{azp}) is
    not used: an access token is meant for an API, not for this client.

    @ivar cache_hits: validations answered from the cache (an "inactive"
        entry included).
    @ivar cache_misses: validations that were not.
    """

    def __init__(
        self,
        provider: Provider,
        verifier: JWTVerifier,
        clock: IReactorTime,
        *,
        issuer: str,
        audiences: Sequence[str],
        leeway: float = 60.0,
        introspection: bool = False,
        introspection_cache: float = 60.0,
        cache_size: int = 10_000,
        require_evidence: bool = False,
    ) -> None:
        """
        @param provider: where the JWKS and introspection come from.
        @param verifier: the signature verifier (the algorithm allow-list).
            For access tokens it must not hold the client secret: whoever
            holds that could sign any token.
        @param issuer: the exact C{iss} expected.
        @param audiences: a token must name at least one of these in its
            C{aud}. Leave the client id out unless your provider puts it in
            access tokens (see the module docstring).
        @param leeway: seconds of clock skew tolerated on C{exp}, C{iat} and
            C{nbf}.
        @param introspection: introspect opaque tokens (else they are
            refused).
        @param introspection_cache: the longest an introspection answer
            (active or not) is believed, in seconds; 0 does not cache them.
        @param cache_size: the most tokens kept in the cache; 0 turns the
            cache off.
        @param require_evidence: a JWT must show that it is an access token
            (C{not_an_access_token} otherwise); for when the audiences are
            the client id, which ID tokens name too (see the module
            docstring).

        @raise ValueError: an empty issuer, no audiences, a bad number.
        """
        if isinstance(audiences, str) or not audiences:
            raise ValueError("audiences must be a non-empty sequence of strings")
        if not all(isinstance(a, str) and a for a in audiences):
            raise ValueError("audiences must be non-empty strings")
        cache_for = finite_number(introspection_cache)
        if cache_for is None or cache_for < 0:
            raise ValueError("introspection_cache must be a finite number of seconds, at least 0")
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 0:
            raise ValueError("cache_size must be an integer, at least 0")
        # The base class's client_id is an audience it insists on; it is
        # unused here (see the class docstring).
        super().__init__(issuer, audiences[0], verifier, clock, leeway)
        self.audiences: FrozenSet[str] = frozenset(audiences)
        self.introspection = bool(introspection)
        self.introspection_cache = cache_for
        self.cache_size = cache_size
        self.require_evidence = bool(require_evidence)
        self.cache_hits = 0
        self.cache_misses = 0
        self._provider = provider
        self._cache: BoundedCache[bytes, Optional[Dict[str, Any]]] = BoundedCache(
            clock, cache_size, idle=CACHE_IDLE)
        self._introspecting: Dict[bytes, List[Deferred[Dict[str, Any]]]] = {}

    async def validate(self, token: str) -> Dict[str, Any]:
        """
        Validate an access token.

        @return: the token's claims (a JWT's payload, or the introspection
            answer); a new dict each time, whose values may be shared with
            the cache: do not change them.
        @raise TokenError: the token is not good (answer 401); see the
            module docstring for the reasons.
        @raise ProviderError: the provider could not be asked (answer its
            C{status}: 503, 502 or 504).
        """
        key = _cache_key(token)
        cached = self._cached(key)
        if cached is not None:
            return cached
        self.cache_misses += 1

        if token.count(".") == 2:
            return dict(await self._validate_jwt(token, key))
        if not self.introspection:
            raise TokenError("not_a_jwt", "The token is not a JWT and introspection is off.")
        return dict(await self._shared_introspection(token, key))

    # -- the cache

    def cached(self, token: str) -> Optional[Dict[str, Any]]:
        """
        What L{validate} answers for C{token} from the cache alone, at once:
        its claims (a new dict), or None when the token is not in the
        cache (only L{validate} can tell).

        @raise TokenError: as L{validate} does for a malformed token, or one
            the cache remembers as inactive.
        """
        return self._cached(_cache_key(token))

    def _cached(self, key: bytes) -> Optional[Dict[str, Any]]:
        cached = self._cache.get(key, _MISS)
        if cached is _MISS:
            return None
        self.cache_hits += 1
        if cached is None:
            raise _inactive()
        assert isinstance(cached, dict)
        return dict(cached)

    def _store(self, key: bytes, claims: Optional[Dict[str, Any]], valid_until: float) -> None:
        """Keep C{claims} (None: "inactive") until C{valid_until}, unless that has passed."""
        if valid_until <= self.clock.seconds():
            return
        self._cache.put(key, claims, until=valid_until)

    # -- JWT access tokens

    async def _validate_jwt(self, token: str, key: bytes) -> Dict[str, Any]:
        header = peek_header(token)
        kid = header.get("kid")
        # Only a kid that could name a key may make the provider refetch.
        if header["alg"] not in self.verifier.algorithms or not (
            isinstance(kid, str) and len(kid) <= MAX_KID_LENGTH
        ):
            kid = None
        if header["alg"] in self.verifier.algorithms & HMAC_ALGORITHMS:
            # Checked with the configured secret only: the provider's keys
            # are not needed (nor waited for).
            keys = _NO_KEYS
        else:
            keys = await self._provider.keys_for(kid)
        header, claims = self.verifier.verify(token, keys)
        self._check_jwt(header, claims)
        exp = finite_number(claims["exp"])
        assert exp is not None  # _check_times made sure
        self._store(key, claims, exp)
        return claims

    def _check_jwt(self, header: Dict[str, Any], claims: Dict[str, Any]) -> None:
        typ = header.get("typ")
        if "typ" in header and (
            not isinstance(typ, str) or not typ.isascii() or typ.lower() not in _ACCESS_TOKEN_TYPES
        ):
            raise TokenError("bad_typ", "The token's typ header is not at+jwt (or JWT).")
        declared = typ is not None and typ.lower() in _DECLARED_ACCESS_TOKEN_TYPES
        if not declared:
            _refuse_other_kinds(claims)
        self._check_issuer(claims, required=True)
        self._check_audience(claims)
        if not declared and self.require_evidence and not _shows_access_token(claims):
            raise TokenError("not_an_access_token",
                             "The token does not show that it is an access token.")
        self._check_access_times(claims, exp_required=True)

    # -- claim checks shared by JWTs and introspection answers

    def _check_issuer(self, claims: Dict[str, Any], required: bool) -> None:
        if not required and "iss" not in claims:
            return
        if claims.get("iss") != self.issuer:
            raise TokenError("bad_iss", f"The issuer is missing or is not {self.issuer}.")

    def _check_audience(self, claims: Dict[str, Any]) -> None:
        audiences = _audiences(claims.get("aud"))
        if audiences is None:
            raise TokenError("bad_aud", "The audience is missing or not a string or list of strings.")
        if self.audiences.isdisjoint(audiences):
            raise TokenError("bad_aud", "None of the token's audiences is accepted here.")

    def _check_access_times(self, claims: Dict[str, Any], exp_required: bool) -> None:
        # The base class insists on iat, as ID tokens must have it; access
        # tokens (RFC 9068 notwithstanding) and introspection answers may
        # lack it. A missing iat is checked as "issued now", which passes.
        if "iat" not in claims:
            claims = dict(claims, iat=self.clock.seconds())
        self._check_times(claims, exp_required=exp_required)

    # -- opaque tokens

    def _shared_introspection(self, token: str, key: bytes) -> Deferred[Dict[str, Any]]:
        """
        Join the introspection of this token in flight, or start one. Every
        caller gets its own Deferred: cancelling it does not cancel the
        request for the others.
        """
        waiter: Deferred[Dict[str, Any]] = Deferred()
        waiters = self._introspecting.get(key)
        if waiters is not None:
            waiters.append(waiter)
            return waiter
        self._introspecting[key] = [waiter]
        Deferred.fromCoroutine(self._introspect(token, key)).addBoth(self._introspected, key)
        return waiter

    def _introspected(self, result: Any, key: bytes) -> None:
        fire_waiters(self._introspecting.pop(key, []), result)

    async def _introspect(self, token: str, key: bytes) -> Dict[str, Any]:
        answer = await self._provider.introspect(token)
        now = self.clock.seconds()
        if answer.get("active") is not True:
            self._store(key, None, now + self.introspection_cache)
            raise _inactive()
        _check_token_type(answer)
        _refuse_other_kinds(answer)
        self._check_access_times(answer, exp_required=False)
        self._check_issuer(answer, required=False)
        if "aud" in answer:
            self._check_audience(answer)
        else:
            # Without an audience, the client the token was issued to
            # decides: a token of another client must not pass here.
            client_id = answer.get("client_id")
            if client_id is None:
                raise TokenError("no_audience",
                                 "The introspection answer names neither an audience nor a client.")
            if not isinstance(client_id, str) or client_id not in self.audiences:
                raise TokenError("bad_client_id",
                                 "The token was issued to a client that is not accepted here.")
        valid_until = now + self.introspection_cache
        exp = finite_number(answer.get("exp"))
        if exp is not None:
            valid_until = min(valid_until, exp)
        self._store(key, answer, valid_until)
        return answer


def _lower(value: Any) -> Optional[str]:
    return value.lower() if isinstance(value, str) else None


def _refuse_other_kinds(claims: Dict[str, Any]) -> None:
    """
    Refuse the claims of an ID token or a refresh token (see the module
    docstring): C{id_token_as_access_token}, C{refresh_token_as_access_token}.
    """
    kind = _lower(claims.get("typ"))
    use = _lower(claims.get("token_use"))
    if kind in _KEYCLOAK_ID_TYPES or use in _ID_TOKEN_USES:
        raise TokenError("id_token_as_access_token", "An ID token is not an access token.")
    if kind in _KEYCLOAK_REFRESH_TYPES or use in _REFRESH_TOKEN_USES:
        raise TokenError("refresh_token_as_access_token", "A refresh token is not an access token.")
    marks = [name for name in _ID_TOKEN_CLAIMS if name in claims]
    if kind == "bearer" and marks == ["nonce"]:
        # Keycloak's access tokens carry the login's nonce (see the module docstring).
        return
    if marks:
        raise TokenError("id_token_as_access_token", "An ID token is not an access token.")


def _shows_access_token(claims: Dict[str, Any]) -> bool:
    """Whether a JWT's claims (its header is not at+jwt) show that it is an access token."""
    if any(claims.get(name) is not None for name in _ACCESS_TOKEN_CLAIMS):
        return True
    return _lower(claims.get("token_use")) in _ACCESS_TOKEN_USES or \
        _lower(claims.get("typ")) == "bearer"


def _check_token_type(answer: Dict[str, Any]) -> None:
    """An introspection answer's C{token_type}, when present, names an access token."""
    if "token_type" in answer and _lower(answer["token_type"]) not in _INTROSPECTED_ACCESS_TYPES:
        raise TokenError("bad_token_type", "The provider says the token is not an access token.")


def _inactive() -> TokenError:
    return TokenError("inactive", "The provider says the token is not active.")
