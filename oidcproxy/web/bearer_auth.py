"""
The bearer path: an API request's access token, validated with the IdP's
keys (or another issuer's: C{bearer.issuer}, from its JWKS URL or a JWKS
file read when the guard is built), authorized, and passed on with its
claims as the identity.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Optional, Sequence, Tuple

from twisted.logger import Logger
from twisted.web.server import Request

from ..config import Config, OIDCConfig, RouteConfig
from ..core.assurance import challenge, meeting, unmet
from ..core.context import context
from ..oidc.bearer import BearerValidator
from ..oidc.provider import ClientAuth, Provider, ProviderError, make_http_client
from ..oidc.tokens import (
    ASYMMETRIC_ALGORITHMS,
    HMAC_ALGORITHMS,
    JWTVerifier,
    KeySet,
    TokenError,
    peek_claims,
)
from ..proxy.routes import RouteMatch
from ..sessions.history import acr_claim_of, claims_sign_ins
from ..sessions.session import DEFAULT_PROVIDER
from .answers import decided, deny, finish, insufficient
from .headers import passes_client_authorization, set_header_values
from .identity import Identity, user_name
from .parts import GuardState
from .rules import authorized

__all__ = ["BearerAuth", "JWKSFile", "StaticKeys", "external_key_source"]

log = Logger()

EXTERNAL_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                       "ES256", "ES384", "ES512", "EdDSA")
"""Another issuer's algorithms without C{bearer.algorithms}."""

JWKS_FILE_RETRY = 30.0
"""Seconds between two reads of a C{bearer.jwks_file} that could not be loaded."""


class StaticKeys:
    """Keys known in advance, with the one method the bearer validator asks for."""

    def __init__(self, keys: KeySet) -> None:
        self._keys = keys

    async def keys_for(self, kid: Optional[str]) -> KeySet:
        return self._keys

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


class JWKSFile:
    """
    The keys of a JWKS file, read when it is made (at start-up or reload,
    never while a request waits). A file that cannot be loaded is logged
    and read again every L{JWKS_FILE_RETRY} seconds on C{clock}; until it
    loads, its keys are "not ready" (503).
    """

    def __init__(self, path: str, clock: Any) -> None:
        self._path = path
        self._clock = clock
        self._keys: Optional[KeySet] = None
        self._retry: Any = None
        self._read()

    def _read(self) -> None:
        self._retry = None
        try:
            with open(self._path, encoding="utf-8") as f:
                self._keys = KeySet.from_jwks(json.load(f))
        except (OSError, ValueError, TokenError) as e:
            log.error("bearer.jwks_file {path} cannot be loaded: {error}", path=self._path,
                      error=str(e))
            self._retry = self._clock.callLater(JWKS_FILE_RETRY, self._read)

    async def keys_for(self, kid: Optional[str]) -> KeySet:
        if self._keys is None:
            raise ProviderError(503, "not_ready", "bearer.jwks_file cannot be loaded")
        return self._keys

    def start(self) -> None:
        pass

    def stop(self) -> None:
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None


def external_key_source(config: Config, clock: Any, http: Any = None) -> Any:
    """
    The keys of another issuer's access tokens (C{bearer.issuer}): none
    needed (HS* only), a JWKS file (read now), or a keys-only provider
    fetching (and refetching) its jwks_uri, or its discovery document's,
    once started. None when C{config} names no other issuer.

    @param http: the treq C{HTTPClient} that fetches them (default:
        L{make_http_client} with C{[oidc]}'s CA bundle and timeout).
    """
    b, oidc = config.bearer, config.oidc
    if oidc is None or b.issuer is None or b.issuer == oidc.issuer:
        return None
    algorithms = tuple(b.algorithms) or EXTERNAL_ALGORITHMS
    if all(a in HMAC_ALGORITHMS for a in algorithms):
        return StaticKeys(KeySet(()))  # checked with bearer.hmac_secret alone
    if b.jwks_file is not None:
        return JWKSFile(b.jwks_file, clock)
    endpoints = {}
    if b.jwks_uri is not None:
        # Only the keys are ever used: the other endpoints a provider
        # needs without discovery are never called.
        endpoints = {"jwks_uri": b.jwks_uri, "authorization_endpoint": b.jwks_uri,
                     "token_endpoint": b.jwks_uri}
    return Provider(
        b.issuer, ClientAuth(client_id=oidc.client_id, method="none"),
        http if http is not None else make_http_client(clock, oidc.ca_bundle, oidc.timeout),
        clock, discovery=b.jwks_uri is None, endpoints=endpoints, timeout=oidc.timeout,
        max_response_size=oidc.max_response_size, jwks_ttl=oidc.jwks_cache_ttl,
        jwks_min_refresh=oidc.jwks_min_refresh_interval)


def _issuer_of(token: str) -> Any:
    """C{token}'s C{iss}, unverified (None for an opaque or malformed token)."""
    try:
        return peek_claims(token).get("iss")
    except TokenError:
        return None


class BearerAuth:
    """
    The bearer path of one guard.

    @param external: the key source of C{bearer.issuer} (see
        L{external_key_source}), or None.
    """

    def __init__(self, state: GuardState, external: Any = None) -> None:
        self._state = state
        self.external = external
        self._started = False
        self._external_validator: Any = None
        self._own: Dict[str, Tuple[Tuple[str, ...], BearerValidator]] = {}
        """Each provider's validator of its own access tokens, with the algorithms it allows."""

    def start(self) -> None:
        """Start loading another issuer's keys now, not on the first bearer request."""
        self._started = True
        if self.external is not None:
            self.external.start()

    def stop(self) -> None:
        self._started = False
        if self.external is not None:
            self.external.stop()

    def reconfigure(self, external: Any) -> None:
        """
        C{[bearer]} changed: validators are made again on the next bearer
        request, with the new settings (the cache of validated tokens goes
        with the old ones), and C{external} replaces the other issuer's keys.
        """
        if self.external is not None:
            self.external.stop()
        self.external = external
        self._external_validator = None
        self._own = {}
        if self._started and external is not None:
            external.start()

    def validator(self, provider: str = DEFAULT_PROVIDER, token: Optional[str] = None) -> Any:
        """
        The validator of the access tokens of a route of C{provider}, built
        once the keys' source is known (None when there is no IdP to ask).

        A route of C{[oidc]} takes the tokens of C{bearer.issuer} when it is
        another issuer, else C{[oidc]}'s. A route of a named provider takes
        that provider's own tokens (its keys, its client id as audience, or
        C{bearer.audiences}) and those of C{bearer.issuer} when it is
        another issuer: C{token}'s C{iss} says which (a token of any other
        issuer is refused by the provider's validator: C{bad_iss}).

        Access tokens are checked with the issuer's asymmetric keys: never
        with the client secret, which the ID tokens' verifier holds when
        C{oidc.id_token_algorithms} lists an HS* algorithm (whoever holds the
        secret could then sign access tokens for any user). Only
        C{bearer.algorithms} with C{bearer.hmac_secret} allow HS* for them.

        @raise ProviderError: 503 C{not_ready} while the IdP's metadata (which
            names the keys) is not loaded.
        """
        state = self._state
        b = state.config.bearer
        if provider == DEFAULT_PROVIDER:
            oidc, client = state.config.oidc, state.parts.provider
            if client is None or oidc is None:
                return None
            if b.issuer is not None and b.issuer != oidc.issuer:
                return self._external()
            return self._own_validator(provider, client, oidc)
        bundle = state.parts.named.get(provider)
        if bundle is None:
            return None
        external = b.issuer is not None and b.issuer != bundle.oidc.issuer and \
            state.config.oidc is not None and self.external is not None
        if external and token is not None and _issuer_of(token) == b.issuer:
            return self._external()
        return self._own_validator(provider, bundle.provider, bundle.oidc)

    def _route_validator(self, route: RouteConfig, token: str) -> Any:
        """
        L{validator} for a route: of its provider, or, on a route of several,
        of the one whose issuer is the token's C{iss} (else the first: its
        validator refuses a token of any other issuer).
        """
        providers = route.providers
        if not providers:
            return self.validator(route.provider or DEFAULT_PROVIDER, token)
        iss = _issuer_of(token)
        config = self._state.config
        for name in providers:
            oidc = config.provider_config(name)
            if oidc is not None and oidc.issuer == iss:
                return self.validator(name, token)
        return self.validator(providers[0], token)

    def _named_issuer(self, route: RouteConfig, iss: Any) -> Optional[str]:
        """The named provider of C{route} whose issuer is C{iss} (for the access log), or None."""
        config = self._state.config
        for name in (route.provider,) if route.provider is not None else route.providers:
            oidc = config.provider_config(name)
            if name and oidc is not None and oidc.issuer == iss:
                return name
        return None

    def _external(self) -> BearerValidator:
        """The validator of C{bearer.issuer}'s tokens (another issuer than the providers')."""
        if self._external_validator is None:
            state = self._state
            b, oidc = state.config.bearer, state.config.oidc
            assert oidc is not None and b.issuer is not None
            self._external_validator = BearerValidator(
                self.external, self._verifier(tuple(b.algorithms) or EXTERNAL_ALGORITHMS),
                state.clock, issuer=b.issuer, audiences=b.audiences, leeway=oidc.leeway,
                cache_size=b.cache_size)
        return self._external_validator

    def _own_validator(self, name: str, provider: Provider, oidc: OIDCConfig) -> BearerValidator:
        """The validator of the access tokens of the provider C{name} itself."""
        metadata = provider.metadata
        if metadata is None:
            raise ProviderError(503, "not_ready", "the provider metadata is not loaded yet")
        state = self._state
        b = state.config.bearer
        algorithms = tuple(b.algorithms) or tuple(
            a for a in oidc.id_token_algorithms if a in ASYMMETRIC_ALGORITHMS) or tuple(
            a for a in metadata.id_token_signing_alg_values_supported
            if a in ASYMMETRIC_ALGORITHMS) or ("RS256",)
        known = self._own.get(name)
        if known is not None and known[0] == algorithms:
            return known[1]
        validator = BearerValidator(
            provider, self._verifier(algorithms), state.clock,
            issuer=oidc.issuer, audiences=b.audiences or (oidc.client_id,), leeway=oidc.leeway,
            introspection=b.introspection, introspection_cache=b.introspection_cache,
            cache_size=b.cache_size,
            # The client id is also every ID token's audience.
            require_evidence=not b.audiences)
        self._own[name] = (algorithms, validator)
        return validator

    def _verifier(self, algorithms: Sequence[str]) -> JWTVerifier:
        """A verifier of C{algorithms}, with bearer.hmac_secret (never the client secret) for HS*."""
        secret = self._state.config.bearer.hmac_secret
        hmac = any(a in HMAC_ALGORITHMS for a in algorithms)
        return JWTVerifier(algorithms, hmac_secret=secret.reveal().encode("utf-8")
                           if hmac and secret is not None else None)

    async def admit(self, request: Request, match: RouteMatch, token: str,
                    authorization: Optional[Sequence[bytes]]) -> bool:
        """
        An API request with an access token: validate it, authorize, set the
        identity (the client's C{Authorization} header goes on with it).
        False when the request is answered.
        """
        try:
            validator = self._route_validator(match.route, token)
            if validator is None:
                deny(request)
                return False
            claims = await validator.validate(token)
        except TokenError as e:
            self.denied(request, e)
            return False
        except ProviderError as e:
            log.warn("bearer token not checked: identity provider: {reason}", reason=e.reason)
            status = 504 if e.status == 504 else 503
            finish(request, status, "idp_unavailable",
                   "The identity provider cannot check the token right now.",
                   {b"retry-after": b"5"}, as_json=True)
            return False
        return self._admit_claims(request, match, token, authorization, claims)

    def admit_now(self, request: Request, match: RouteMatch, token: str,
                  authorization: Optional[Sequence[bytes]]) -> Optional[bool]:
        """
        L{admit}, decided at once when the token's validation is cached: the
        same answers. None, having done nothing, when L{admit} must be
        awaited instead (not cached, no validator yet, the IdP not ready).
        """
        try:
            validator = self._route_validator(match.route, token)
        except ProviderError:
            return None
        if validator is None:
            return None
        try:
            claims = validator.cached(token)
        except TokenError as e:
            self.denied(request, e)
            return False
        if claims is None:
            return None
        return self._admit_claims(request, match, token, authorization, claims)

    def _admit_claims(self, request: Request, match: RouteMatch, token: str,
                      authorization: Optional[Sequence[bytes]], claims: Dict[str, Any]) -> bool:
        """Authorize a valid token's C{claims} and set them as the identity (False: refused)."""
        state = self._state
        subject = claims.get("sub")
        sub = subject if isinstance(subject, str) else str(claims.get("client_id", ""))
        ctx = context(request)
        # Named in the access log even when the rule refuses the token.
        ctx.user = user_name(state.config.username_claim, claims, sub)
        route = match.route
        if route.provider is not None or route.providers:
            ctx.provider = self._named_issuer(route, claims.get("iss"))
        requirement = route.requirement
        plan = state.identity
        # The provider whose acr_claim reads the token: its issuer's, else the route's.
        provider = ctx.provider or route.provider or DEFAULT_PROVIDER
        sign_in = plan.latest(claims, provider)
        if requirement is not None:
            # Per request, cached tokens too: a sign-in ages.
            sign_ins = claims_sign_ins(claims, acr_claim_of(state.config, provider))
            now = state.clock.seconds()
            met = meeting(requirement, sign_ins, now)
            if met is None:
                log.info("bearer token of {sub} refused on {route}: {why}", sub=sub,
                         route=route.name, why=unmet(requirement, sign_ins, now))
                insufficient(request, challenge(requirement))
                return False
            sign_in = met
        if not authorized(request, match.route, sub, claims, claims):
            return False
        ctx.identity = Identity(
            sub=sub, claims=claims, access_token=token, expires=claims.get("exp"))
        decided(request, "bearer", unless_decided=True)
        if authorization and passes_client_authorization(state.config):
            # Stripped with the managed headers (pass_access_token =
            # "authorization" puts a session's token there): the token just
            # validated is the request's credential and goes on unchanged.
            request.requestHeaders.setRawHeaders(b"authorization", list(authorization))
        set_header_values(request, plan.claim_values(claims))
        set_header_values(request, plan.sign_in_values(sign_in))
        return True

    def denied(self, request: Request, error: TokenError) -> None:
        """401 with RFC 6750's C{invalid_token} challenge."""
        if error.reason == "not_an_access_token":
            log.info("bearer token refused: {reason}: it names the client id as its audience, as "
                     "ID tokens do, and shows no sign of an access token (typ at+jwt, scope, "
                     "client_id); if your IdP's access tokens look so, set bearer.audiences to "
                     "the audience it gives them", reason=error.reason)
        else:
            log.info("bearer token refused: {reason}", reason=error.reason)
        self._state.metrics.token_invalid("access_token", error.reason)
        # RFC 6750 3: error_description is printable ASCII without quotes
        # or backslashes; the detail of a TokenError never holds the token.
        description = "".join(c for c in error.detail if 0x20 <= ord(c) < 0x7F and c not in '"\\')
        challenge = ('Bearer realm="oidcproxy", error="invalid_token", '
                     f'error_description="{description[:200]}"')
        finish(request, 401, "invalid_token", "The access token is not valid.",
               {b"www-authenticate": challenge.encode("ascii")}, as_json=True)
