"""
ID tokens and logout tokens: the validator of the algorithms the IdP signs
with (or C{oidc.id_token_algorithms}), and the claims a session keeps.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

from ..config import Config, OIDCConfig
from ..core.metrics import NullMetrics
from ..oidc.provider import Provider
from ..oidc.tokens import IDTokenValidator, JWTVerifier, LogoutTokenValidator, TokenError
from ..sessions.session import claims_in_use, kept_claims

__all__ = ["IdTokens"]

_ASYMMETRIC = ("RS", "PS", "ES", "Ed")


class IdTokens:
    """
    The validators of one IdP's ID and logout tokens, made for the
    algorithms it advertises (again when they change).

    @param oidc: the IdP's settings.
    @param provider: its client (for a refreshed token: the algorithms it advertises).
    @param clock: for C{exp} and C{iat}.
    @param metrics: counts the tokens refused.
    @param config: what the session keeps of the claims (see L{reconfigure}).
    """

    def __init__(self, oidc: OIDCConfig, provider: Provider, clock: Any, metrics: NullMetrics,
                 config: Config) -> None:
        self._oidc = oidc
        self._provider = provider
        self._clock = clock
        self._metrics = metrics
        self._validator: Optional[IDTokenValidator] = None
        self._verifier: Optional[JWTVerifier] = None
        self._algs: Optional[Tuple[str, ...]] = None
        self._claims_mode = config.session.claims
        self._claim_names = claims_in_use(config)

    def reconfigure(self, config: Config) -> None:
        """Take a reloaded configuration's claims in use (headers, rules, username_claim)."""
        self._claims_mode = config.session.claims
        self._claim_names = claims_in_use(config)

    def validator_for(self, advertised: Sequence[str]) -> IDTokenValidator:
        """The ID token validator for the algorithms the IdP advertises."""
        oidc = self._oidc
        algs = tuple(oidc.id_token_algorithms) or tuple(
            a for a in advertised if a.startswith(_ASYMMETRIC))
        if self._validator is None or self._algs != algs:
            secret = oidc.client_secret.reveal().encode("utf-8") \
                if oidc.client_secret and any(a.startswith("HS") for a in algs) else None
            verifier = JWTVerifier(algs or ("RS256",), hmac_secret=secret)
            self._verifier = verifier
            self._validator = IDTokenValidator(oidc.issuer, oidc.client_id, verifier,
                                               self._clock, leeway=oidc.leeway,
                                               max_age=oidc.iat_slack)
            self._algs = algs
        return self._validator

    def logout_validator(self, advertised: Sequence[str]) -> LogoutTokenValidator:
        """The logout token validator: the ID tokens' verifier, the logout token's rules."""
        self.validator_for(advertised)
        oidc = self._oidc
        assert self._verifier is not None
        return LogoutTokenValidator(oidc.issuer, oidc.client_id, self._verifier, self._clock,
                                    leeway=oidc.leeway, max_age=oidc.iat_slack)

    def validate(self, id_token: str, keys: Any, nonce: Optional[str],
                 access_token: Optional[str] = None) -> Dict[str, Any]:
        """
        C{id_token}'s claims, checked with C{keys} (a failure is counted).

        @raise TokenError: it is not valid.
        """
        metadata = self._provider.metadata
        assert metadata is not None
        validator = self.validator_for(metadata.id_token_signing_alg_values_supported)
        try:
            return validator.validate(id_token, keys, nonce, access_token)
        except TokenError as e:
            self._metrics.token_invalid("id_token", e.reason)
            raise

    def validate_refreshed(self, id_token: str, keys: Any) -> Dict[str, Any]:
        """
        A refreshed ID token: the usual checks, without a nonce; the claims
        the session keeps of it (see L{session_claims}).
        """
        return self.session_claims(self.validate(id_token, keys, None))

    def session_claims(self, claims: Dict[str, Any]) -> Dict[str, Any]:
        """
        The claims a session keeps: all of them, or with C{session.claims =
        "used"} only those the proxy reads (L{claims_in_use}).
        """
        if self._claims_mode == "used":
            return kept_claims(claims, self._claim_names)
        return claims
