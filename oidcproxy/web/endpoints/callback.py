"""
The login callback: the IdP sends the browser back with a code (or an
error). The state cookie of the attempt is checked and cleared, the code
exchanged, the ID token validated (and the UserInfo answer merged), and a
new session handed out; the browser goes back where it started.

A login that asked something of the sign-in (a step-up: C{acr_values},
C{max_age}) is held to it: an ID token with another C{acr}, or without an
C{auth_time} as recent as asked, ends on the login-failed page (not in
another redirect). Its new session carries over the earlier sign-ins and
step-ups of the session it replaces, when that was the same user's.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import attr
from twisted.logger import Logger
from twisted.web.server import Request

from ...core.cache import BoundedCache
from ...oidc.provider import ProviderError
from ...oidc.tokens import TokenError, peek_header
from ...sessions.cookies import CookieTooLarge
from ...sessions.history import acr_claim_of, carried_sign_ins, carried_step_ups, claims_sign_ins
from ...sessions.session import DEFAULT_PROVIDER, Session, SessionStoreUnavailable, new_session_id
from ..answers import finish, redirect, show, store_unavailable
from ..parts import GuardState, ProviderParts
from ..requests import arg
from ..session_auth import SessionAuth
from .login import MAX_PENDING, LoginEndpoint, step_up_path

__all__ = ["CallbackEndpoint"]

log = Logger()

_SINGLE = (b"state", b"code", b"error", b"iss", b"error_description")
"""The callback's parameters that may appear once at most."""


class CallbackEndpoint:
    """The login callback of one guard."""

    def __init__(self, state: GuardState, sessions: SessionAuth, login: LoginEndpoint) -> None:
        self._state = state
        self._sessions = sessions
        self._login = login
        self._consumed: BoundedCache[str, bool] = BoundedCache(state.clock, MAX_PENDING)
        """The states used here (this process): each comes back once."""

    def _consume(self, attempt_state: str) -> bool:
        """Remember a consumed state; False if seen before."""
        self._login.returned(attempt_state)
        if self._consumed.get(attempt_state) is not None:
            return False
        until = self._state.clock.seconds() + self._state.config.state_cookie.max_age
        self._consumed.put(attempt_state, True, until=until)
        return True

    async def render(self, request: Request, name: str = DEFAULT_PROVIDER) -> None:
        """The callback of the provider C{name}: it takes back only the logins that provider started."""
        state = self._state
        metrics = state.metrics
        bundle, store = state.bundle(name), state.parts.store
        if bundle is None or store is None:
            finish(request, 404, "not_found", "No route matches this URL.")
            return
        login = bundle.login
        if request.method != b"GET":
            finish(request, 405, "method_not_allowed", "The callback takes GET only.",
                   {b"allow": b"GET"})
            return
        args = request.args
        for key in _SINGLE:
            if len(args.get(key, [])) > 1:
                log.info("callback refused: duplicated parameter {name}", name=key.decode())
                metrics.login_failed("bad_callback", name)
                finish(request, 400, "bad_callback", "The login answer is malformed.")
                return
        given = arg(args, b"state")
        attempt, reason, cookies = (None, "missing_state", []) if not given else \
            login.consume(request.received_cookies, given)
        error = arg(args, b"error")
        target = attempt.return_to if attempt is not None else "/"
        if error is not None:
            shown = error if error.replace("_", "").isalnum() and len(error) <= 64 else "error"
            log.info("login refused by the identity provider: {error}", error=shown)
            metrics.login_failed("idp_refused", name)
            # What the IdP said is shown only to the browser whose login this
            # was (its state cookie matched): anyone can make a link to the
            # callback with an error_description, and our page would show
            # their text under our name.
            self._failed(request, 403, f"The identity provider refused the login ({shown}).",
                         "reason_access_denied" if shown == "access_denied" else
                         "reason_idp_refused", target, cookies, error="login_refused",
                         detail=arg(args, b"error_description") if attempt is not None else None,
                         values={"error": shown})
            return
        if attempt is None:
            log.info("login failed: {reason}", reason=reason)
            metrics.login_failed(reason, name)
            self._failed(request, 401 if given else 400,
                         "This login attempt is unknown or has expired. Please start again.",
                         "reason_unknown_state", target, cookies)
            return
        if not self._consume(attempt.state):
            log.info("login failed: {reason}", reason="state_replayed")
            metrics.login_failed("state_replayed", name)
            self._failed(request, 401, "This login attempt was already used.",
                         "reason_state_used", target, cookies)
            return
        try:
            tokens, claims = await self._tokens(request, attempt, bundle)
        except TokenError as e:
            log.warn("login failed: {reason}: {detail}", reason=e.reason, detail=e.detail)
            metrics.login_failed(e.reason, name)
            self._failed(request, 401, "The login could not be verified. Please start again.",
                         "reason_not_verified", target, cookies)
            return
        except ProviderError as e:
            log.warn("login failed: identity provider: {reason}: {detail}",
                     reason=e.reason, detail=e.detail)
            metrics.login_failed("idp_" + e.reason, name)
            status = e.status if e.status in (401, 502, 503, 504) else 502
            message = {
                401: "The login could not be completed. Please start again.",
                503: "The identity provider cannot be reached yet. Please try again shortly.",
                504: "The identity provider did not answer in time. Please try again.",
            }.get(status, "The identity provider gave an unexpected answer. Please try again.")
            down = status == 503 or e.reason == "unreachable"
            reason_key = "reason_idp_down" if down else \
                "reason_idp_slow" if status == 504 else "reason_idp_error"
            self._failed(request, status, message, reason_key, target, cookies,
                         headers={b"retry-after": b"5"} if status == 503 else None,
                         retry=down or status == 504)
            return

        now = state.clock.seconds()
        refused = self._unlike_asked(attempt, claims, now, bundle)
        if refused is not None:
            self._failed(request, 401, refused[1], refused[0], target, cookies,
                         error="insufficient_user_authentication")
            return
        session = self._session(tokens, claims, now, bundle)
        # A fresh session id on every login (no fixation); the old session
        # of this provider, if any, is ended (another provider's lives on,
        # in its own cookie).
        try:
            old, _ = await self._sessions.load(request, bundle.name)
            if attempt.asks:
                session = self._carried(session, old, attempt, now)
            if old is not None:
                await self._sessions.end(old)
            value = await store.save(session)
        except SessionStoreUnavailable as e:
            # The code is spent: the user starts again once the store is back.
            metrics.login_failed("session_store_unavailable", name)
            store_unavailable(request, e, cookies=cookies)
            return
        try:
            session_cookies = state.cookies.session_headers(request, session, value, now)
        except CookieTooLarge:
            # The IdP's answer is more than the cookie store can hold: a
            # fault of what the IdP sent, for the administrator to act on
            # (the log line says how); never a 500 and no use retrying.
            state.cookies.too_large(session, value, "login failed")
            metrics.login_failed("session_too_large", name)
            finish(request, 502, "session_too_large",
                   "You signed in, but the identity provider sent more about you than "
                   "this site can keep in its session cookie, so the sign-in cannot be "
                   "completed. Please tell the site's administrator: the proxy's log "
                   "says what to change.", cookies=cookies)
            return
        log.info("login of {sub}", sub=session.sub)
        metrics.login_completed(name)
        # A step-up goes back to the page that asked for it, whatever the
        # provider's fixed landing page.
        landing = state.absolute(attempt.return_to) if attempt.asks else \
            self._landing(attempt.return_to, bundle)
        redirect(request, landing, [*cookies, *session_cookies])

    def _unlike_asked(self, attempt: Any, claims: Dict[str, Any], now: float,
                      bundle: ProviderParts) -> Optional[Tuple[str, str]]:
        """
        Whether the ID token's sign-in is not what the login asked for: its
        C{acr} (with the provider's C{acr_claim = "acrs"}: one of its C{acrs})
        one of the asked C{acr_values}, and with a C{max_age} an
        C{auth_time} (which it then requires, OpenID Connect Core 3.1.2.1)
        at most that old, give or take the provider's leeway. None: it is
        (or nothing was asked); else the page's reason and the message.
        """
        sign_ins = claims_sign_ins(claims, bundle.oidc.acr_claim)
        auth_time = sign_ins[0][1]
        leeway = bundle.oidc.leeway
        if attempt.acr_values and not any(acr in attempt.acr_values for acr, _ in sign_ins):
            reason = "step_up_acr"
            log.warn("login failed: {reason}: asked for acr {asked}, the ID token has {acr}",
                     reason=reason, asked=" ".join(attempt.acr_values),
                     acr=" ".join(acr for acr, _ in sign_ins if acr) or "none")
            found = ("reason_step_up_acr",
                     "The identity provider did not confirm the sign-in level asked for.")
        elif attempt.max_age is not None and (
                auth_time is None or now - auth_time > attempt.max_age + leeway
                or auth_time > now + leeway):
            reason = "step_up_auth_time"
            log.warn("login failed: {reason}: asked for a sign-in at most {max_age}s old, the "
                     "ID token has {when}", reason=reason, max_age=attempt.max_age,
                     when="no auth_time" if auth_time is None else
                     f"auth_time {now - auth_time:.0f}s ago")
            found = ("reason_step_up_auth_time",
                     "The identity provider did not confirm a sign-in as recent as asked for.")
        else:
            return None
        self._state.metrics.login_failed(reason, bundle.name)
        return found

    def _carried(self, session: Session, old: Optional[Session], attempt: Any,
                 now: float) -> Session:
        """
        The new session of a step-up login (one that asked something of the
        sign-in), with the earlier sign-ins and step-ups of C{old} when that
        was the same user's, and this login among its step-ups.
        """
        if old is not None and old.sub != session.sub:
            old = None
        config = self._state.config
        window = config.step_up.attempt_window
        acr_claim = acr_claim_of(config, session.provider)
        this = ((step_up_path(attempt.return_to), now),) if attempt.step_up else ()
        return attr.evolve(
            session, sign_ins=carried_sign_ins(claims_sign_ins(session.claims, acr_claim), old,
                                               acr_claim),
            step_ups=carried_step_ups(old, this, now, window))

    def _failed(self, request: Request, code: int, message: str, reason: str, target: str,
                cookies: Sequence[bytes], *, error: str = "login_failed",
                detail: Optional[str] = None, values: Optional[Dict[str, str]] = None,
                headers: Optional[Dict[bytes, bytes]] = None, retry: bool = False) -> None:
        """
        A login that did not work: the login-failed page (the C{reason} in
        plain words, "Try again" back to C{target}), or for an API client
        the JSON C{error} with C{message}. C{retry}: the IdP is down or
        slow; the page starts the login again by itself.
        """
        pages = self._state.pages
        show(request, lambda r: pages.login_failed(
            r, code, message, reason, target, detail, headers, error, values, retry),
            cookies)

    async def _tokens(self, request: Request, attempt: Any, bundle: ProviderParts) -> Any:
        """
        The token endpoint's answer for the callback's code, and the claims
        of its ID token (merged with the UserInfo answer when configured),
        all at the provider of C{bundle}, which started the login: the
        C{iss} parameter (RFC 9207) and the ID token's must be its issuer.

        @raise TokenError: the answer or a token is not valid.
        @raise ProviderError: the IdP could not be asked.
        """
        provider, id_tokens, oidc = bundle.provider, bundle.id_tokens, bundle.oidc
        args = request.args
        metadata = provider.metadata
        if metadata is None:
            raise ProviderError(503, "not_ready", "discovery has not succeeded yet")
        iss = arg(args, b"iss")
        if (iss is not None or metadata.authorization_response_iss_parameter_supported) \
                and iss != metadata.issuer:
            raise TokenError("bad_callback_iss", "the iss parameter is not the issuer")
        code = arg(args, b"code")
        if not code:
            raise TokenError("missing_code", "the callback has no code")
        tokens = await provider.exchange_code(code, bundle.redirect_uri, attempt.code_verifier)
        id_token = tokens["id_token"]
        access_token = tokens.get("access_token")
        kid = peek_header(id_token).get("kid")
        keys = await provider.keys_for(kid if isinstance(kid, str) else None)
        claims = id_tokens.validate(id_token, keys, attempt.nonce, access_token)
        if oidc.userinfo and access_token:
            info = await provider.userinfo(access_token)
            # OIDC Core 5.3.2: the UserInfo answer's sub must be the ID
            # token's; one without a (string) sub proves no more than one
            # about someone else: the same refused login (401).
            info_sub = info.get("sub")
            if not isinstance(info_sub, str) or not info_sub:
                raise TokenError("userinfo_sub_missing", "the userinfo answer has no sub")
            if info_sub != claims["sub"]:
                raise TokenError("userinfo_sub_mismatch",
                                 "the userinfo answer is about another subject")
            merged = dict(info)
            merged.update(claims)
            claims = merged
        return tokens, claims

    def _session(self, tokens: Dict[str, Any], claims: Dict[str, Any], now: float,
                 bundle: ProviderParts) -> Session:
        """The new session of a login through the provider of C{bundle}."""
        state = self._state
        id_tokens = bundle.id_tokens
        s = state.config.session
        expires_in = tokens.get("expires_in")
        return Session(
            id=new_session_id(),
            sub=claims["sub"],
            claims=id_tokens.session_claims(claims),
            created=now,
            last_seen=now,
            expires=self._sessions.sliding_expiry(now, now) if s.sliding else now + s.lifetime,
            id_token=tokens["id_token"],
            access_token=tokens.get("access_token"),
            access_token_expires=now + expires_in if isinstance(expires_in, int) else None,
            refresh_token=tokens.get("refresh_token"),
            sid=claims.get("sid") if isinstance(claims.get("sid"), str) else None,
            provider=bundle.name,
        )

    def _landing(self, target: str, bundle: ProviderParts) -> str:
        """
        The provider's post_login_redirect_url when configured (a path on
        public_url, or a URL), else the return-to.
        """
        return self._state.absolute(bundle.oidc.post_login_redirect_url or target)
