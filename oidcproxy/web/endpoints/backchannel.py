"""
OpenID Connect Back-Channel Logout 1.0: the IdP POSTs a logout token; every
session of its C{sid} (or, without one, of its C{sub}) ends, and their
WebSockets close.

One endpoint serves every provider: the token's C{iss} (and, for several
clients of one issuer, its C{aud}) says whose it is; it is then verified
with that provider's keys, its audience must be that provider's client, and
only that provider's sessions end.
"""

from __future__ import annotations

from typing import Any, Callable, List

from twisted.logger import Logger
from twisted.web.server import Request

from ...oidc.provider import ProviderError
from ...oidc.tokens import TokenError, peek_claims, peek_header
from ...sessions.session import SessionStoreUnavailable
from ..answers import finish, respond, store_unavailable
from ..parts import GuardState, ProviderParts

__all__ = ["BackchannelLogoutEndpoint"]

log = Logger()


class BackchannelLogoutEndpoint:
    """
    The back-channel logout endpoint of one guard. It needs a store that
    can find sessions by sid/sub (Redis), or for cookie sessions the
    revocation list (in Redis).

    @param close_sockets: closes the WebSockets of the ended sessions.
    """

    def __init__(self, state: GuardState, close_sockets: Callable[..., None]) -> None:
        self._state = state
        self._close_sockets = close_sockets

    async def render(self, request: Request) -> None:
        state = self._state
        parts = state.parts
        store: Any = parts.store
        revocation_list = not hasattr(store, "delete_by")
        if revocation_list:
            # Stateless cookie sessions: revoke through the list every
            # request checks (in Redis), if there is one.
            store = parts.revocations
        if request.method != b"POST":
            finish(request, 405, "method_not_allowed", "Use POST.", {b"allow": b"POST"},
                   as_json=True)
            return
        if not state.bundles() or store is None:
            finish(request, 501, "not_implemented",
                   'Back-channel logout needs Redis: session.store = "redis", or cookie '
                   "sessions with a [redis] table for the revocation list.", as_json=True)
            return
        tokens = request.args.get(b"logout_token", [])
        if len(tokens) != 1:
            finish(request, 400, "invalid_request", "Exactly one logout_token is required.",
                   as_json=True)
            return
        try:
            token = tokens[0].decode("ascii")
            bundle = self._bundle(token)
            provider, oidc = bundle.provider, bundle.oidc
            metadata = provider.metadata
            if metadata is None:
                raise ProviderError(503, "not_ready", "discovery has not succeeded yet")
            kid = peek_header(token).get("kid")
            keys = await provider.keys_for(kid if isinstance(kid, str) else None)
            claims = bundle.id_tokens.logout_validator(
                metadata.id_token_signing_alg_values_supported).validate(token, keys)
            # Remembered while the token could still pass (its iat may be up
            # to a leeway ahead of our clock), so every replay is refused.
            # (A named provider's apart: jti is unique per issuer only.)
            scope = bundle.name
            seen = await store.lock("jti:" + (f"{scope}:" if scope else "") + claims["jti"],
                                    oidc.iat_slack + 2 * oidc.leeway + 1.0)
            if seen is None:
                raise TokenError("jti_replayed", "this logout token was used before")
        except (TokenError, UnicodeDecodeError) as e:
            reason = getattr(e, "reason", "malformed")
            log.warn("back-channel logout refused: {reason}", reason=reason)
            state.metrics.token_invalid("logout_token",
                                        reason if isinstance(e, TokenError) else "malformed")
            finish(request, 400, "invalid_request", "The logout token is not valid.",
                   as_json=True)
            return
        except ProviderError as e:
            finish(request, e.status if e.status in (503, 504) else 502, "idp_unavailable",
                   "The identity provider's keys could not be loaded.", as_json=True)
            return
        except SessionStoreUnavailable as e:
            store_unavailable(request, e, as_json=True)
            return
        sid = claims.get("sid")
        sub = claims.get("sub")
        lifetime = state.config.session.lifetime
        # Only the sessions of the token's provider end.
        try:
            if not revocation_list:
                count = await (store.delete_by(sid=sid, provider=scope) if sid
                               else store.delete_by(sub=sub, provider=scope))
            else:
                await (store.mark_revoked(sid=sid, ttl=lifetime, provider=scope) if sid
                       else store.mark_revoked(sub=sub, ttl=lifetime, provider=scope))
                count = "all"
        except SessionStoreUnavailable as e:
            store_unavailable(request, e, as_json=True)
            return
        # [oidc]'s line stays as it always was (log watchers match it).
        log.info("back-channel logout: {count} session(s) ended{of}",
                 count=count, of=f" (provider {scope})" if scope else "")
        # Its sockets too, and no other provider's user's of the same sid or sub.
        if sid:
            self._close_sockets(sid=sid, provider=scope)
        else:
            self._close_sockets(sub=sub, provider=scope)
        respond(request, 200, b"application/json", b"{}")

    def _bundle(self, token: str) -> ProviderParts:
        """
        The provider whose logout token C{token} says it is: the one whose
        issuer is its C{iss} (of several clients of that issuer, the one
        its C{aud} names). Not verified yet: its validation with that
        provider's keys and client decides.

        @raise TokenError: no provider has that issuer (or it is malformed).
        """
        claims = peek_claims(token)
        iss, aud = claims.get("iss"), claims.get("aud")
        audiences: List[Any] = [aud] if isinstance(aud, str) else \
            aud if isinstance(aud, list) else []
        candidates = [bundle for bundle in self._state.bundles()
                      if isinstance(iss, str) and iss in self._issuers(bundle)]
        if not candidates:
            raise TokenError("bad_iss", "The issuer is not the issuer of any provider here.")
        for bundle in candidates:
            if bundle.oidc.client_id in audiences:
                return bundle
        return candidates[0]

    @staticmethod
    def _issuers(bundle: ProviderParts) -> List[str]:
        """The issuer of C{bundle}'s provider: configured, and as its discovery says."""
        metadata = bundle.provider.metadata
        return [bundle.oidc.issuer] + ([metadata.issuer] if metadata is not None else [])
