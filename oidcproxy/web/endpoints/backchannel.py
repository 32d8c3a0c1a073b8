"""
OpenID Connect Back-Channel Logout 1.0: the IdP POSTs a logout token; every
session of its C{sid} (or, without one, of its C{sub}) ends, and their
WebSockets close.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.logger import Logger
from twisted.web.server import Request

from ...oidc.provider import ProviderError
from ...oidc.tokens import TokenError, peek_header
from ...sessions.session import DEFAULT_PROVIDER, SessionStoreUnavailable
from ..answers import finish, respond, store_unavailable
from ..parts import GuardState

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
        parts, oidc = state.parts, state.config.oidc
        provider, id_tokens = parts.provider, parts.id_tokens
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
        if provider is None or oidc is None or store is None or id_tokens is None:
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
            metadata = provider.metadata
            if metadata is None:
                raise ProviderError(503, "not_ready", "discovery has not succeeded yet")
            kid = peek_header(token).get("kid")
            keys = await provider.keys_for(kid if isinstance(kid, str) else None)
            claims = id_tokens.logout_validator(
                metadata.id_token_signing_alg_values_supported).validate(token, keys)
            # Remembered while the token could still pass (its iat may be up
            # to a leeway ahead of our clock), so every replay is refused.
            seen = await store.lock("jti:" + claims["jti"],
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
        # The logout token is [oidc]'s: only that provider's sessions end.
        scope = DEFAULT_PROVIDER
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
        log.info("back-channel logout: {count} session(s) ended", count=count)
        if sid:
            self._close_sockets(sid=sid)
        else:
            self._close_sockets(sub=sub)
        respond(request, 200, b"application/json", b"{}")
