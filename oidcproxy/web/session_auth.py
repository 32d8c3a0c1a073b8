"""
The session path: a request's session loaded from its cookie and checked
server-side (lifetime, idle time, revocation), the WebSocket origin and CSRF
checks of a cookie-authenticated request, the refresh of its tokens near
expiry (and what an IdP outage allows), and the sliding renewal of the
session cookie.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Tuple

import attr
from twisted.logger import Logger
from twisted.web.server import Request

from ..config import Config, RouteConfig, origin_of
from ..core.assurance import Requirement, challenge, meeting, unmet
from ..core.context import context, peek
from ..oidc.refresh import Refresher
from ..proxy.headers import header_tokens
from ..proxy.routes import RouteMatch
from ..sessions.cookies import CookieTooLarge, read_cookie
from ..sessions.history import acr_claim_of, sign_ins_of
from ..sessions.session import (
    DEFAULT_PROVIDER,
    LIVE,
    NOT_IN_MEMORY,
    ISessionCache,
    Session,
    SessionStoreUnavailable,
    session_state,
)
from .answers import decided, finish, insufficient, store_unavailable
from .csrf import SAFE_METHODS
from .identity import user_name
from .parts import GuardState
from .requests import is_browser_navigation, judged_method, provider_arg
from .rules import authorized, unverified_claims

__all__ = ["Loaded", "SessionAuth"]

log = Logger()

Loaded = Tuple[Optional[Session], List[bytes]]
"""A live session, or None and the Set-Cookie values that clear a dead one."""

StepUp = Callable[[Request, RouteMatch, Session, Requirement], None]
"""Sends a browser whose session does not meet a route's requirement to sign in again."""


def assured(request: Request, match: RouteMatch, session: Session, now: float,
            step_up: Optional[StepUp], config: Config) -> bool:
    """
    The route's requirement (step-up): one of the session's sign-ins
    (the latest, or an earlier one it was stepped up from) must meet
    it. Else (False, answered) a browser's navigation signs in again
    (C{step_up}; a forward-auth check only with C{redirect}, as for a
    login) and any other request gets 401 with the RFC 9470 challenge.
    Before any refresh: a refresh is no new sign-in.
    """
    requirement = match.route.requirement
    if requirement is None:
        return True
    sign_ins = sign_ins_of(session, acr_claim_of(config, session.provider))
    met = meeting(requirement, sign_ins, now)
    if met is not None:
        # The one the identity headers tell of (a refresh, which may
        # follow, is no new sign-in).
        context(request).sign_in = met
        return True
    log.info("{sub} needs a step-up on {route}: {why}", sub=session.sub,
             route=match.route.name, why=unmet(requirement, sign_ins, now))
    ctx = peek(request)
    if step_up is not None and is_browser_navigation(request) and \
            not (ctx is not None and ctx.forward_auth is False):
        step_up(request, match, session, requirement)
    else:
        insufficient(request, challenge(requirement))
    return False


class SessionAuth:
    """
    The session path of one guard.

    @ivar step_up: what a browser's navigation gets when its session does
        not meet the route's requirement (a step-up login: set by
        L{oidcproxy.web.route_auth.RouteAuth}, which knows the login); None:
        the RFC 9470 challenge, as any other client gets.
    """

    def __init__(self, state: GuardState) -> None:
        self._state = state
        self.step_up: Optional[StepUp] = None

    # -- loading ----------------------------------------------------------------

    async def load(self, request: Request, provider: str = DEFAULT_PROVIDER) -> Loaded:
        """
        The request's live session of C{provider} (from that provider's
        session cookie), or None and the Set-Cookie values that clear a dead
        one (tampered, unknown, expired, idle, revoked, another provider's).

        @raise SessionStoreUnavailable: the store or the revocation list did not answer.
        """
        state, parts = self._state, self._state.parts
        cookies = request.received_cookies
        if not state.cookies.present(request, provider) or parts.store is None:
            return None, []
        value = read_cookie(state.cookies.sessions[provider], cookies)
        session = None
        if value is not None:
            session = await parts.store.load(value)
        if session is not None and not self.ours(session, provider):
            log.info("session refused: its provider is not the one of its cookie")
            session = None
        if session is not None:
            status = self._verdict(session)
            if status == LIVE and parts.revocations is not None:
                revoked = await parts.revocations.revoked_at(
                    sub=session.sub, sid=session.sid, session_id=session.id,
                    provider=session.provider)
                if revoked is not None and revoked >= session.created:
                    status = "revoked"
            if status == LIVE:
                return session, []
            log.info("session ended: {state}", state=status)
            await self.forget(session)
            session = None
        return None, state.cookies.clear_session(request, provider)

    def cached(self, request: Request, provider: str = DEFAULT_PROVIDER) -> Optional[Loaded]:
        """
        What L{load} answers, when that is known without waiting: the store
        answers from memory (L{ISessionCache}), no revocation list must be
        asked, and a session found is live (an ended one is forgotten by
        L{load}). None otherwise: the request needs L{load}.
        """
        state, parts = self._state, self._state.parts
        store = parts.store
        if not state.cookies.present(request, provider) or store is None:
            return None, []
        if parts.revocations is not None or not ISessionCache.providedBy(store):
            return None
        value = read_cookie(state.cookies.sessions[provider], request.received_cookies)
        if value is None:
            return None, state.cookies.clear_session(request, provider)
        session = store.cached(value)
        if session is NOT_IN_MEMORY:
            return None
        if session is None:
            return None, state.cookies.clear_session(request, provider)
        if not self.ours(session, provider) or self._verdict(session) != LIVE:
            # load() refuses it, clears the cookie and says why.
            return None
        return session, []

    def chosen(self, request: Request) -> Optional[str]:
        """
        The provider whose session an endpoint that is no route's acts on
        (logout, userinfo): C{?provider=NAME} (C{oidc} or empty: C{[oidc]};
        None: not one of this guard's), else the only one whose session cookie the request
        carries, else the default provider.
        """
        names = request.args.get(b"provider")
        if names:
            name = provider_arg(names[0])
            return name if name in self._state.cookies.sessions else None
        held = self._state.cookies.held(request)
        return held[0] if len(held) == 1 else DEFAULT_PROVIDER

    def _refresher(self, session: Session) -> Optional[Refresher]:
        """What refreshes C{session}'s tokens: its own provider's refresher."""
        parts = self._state.parts
        if session.provider == DEFAULT_PROVIDER:
            return parts.refresher
        named = parts.named.get(session.provider)
        return named.refresher if named is not None else None

    def _verdict(self, session: Session) -> str:
        """
        Whether a loaded session is live (before the revocation list): the
        one judgement of L{load} and L{cached} alike, so that a check added
        here holds on both ways.
        """
        state = self._state
        return session_state(session, state.clock.seconds(), state.config.session.idle_timeout)

    def ours(self, session: Session, provider: str) -> bool:
        """
        Whether C{session}, found in C{provider}'s session cookie, was made
        through that provider, one of this guard's; one of another (a
        provider since removed from the configuration, another proxy's
        sharing the store and keys, a value moved to another provider's
        cookie) is no session here.
        """
        return session.provider == provider and provider in self._state.parts.provider_names

    async def load_or_503(self, request: Request,
                          provider: str = DEFAULT_PROVIDER) -> Optional[Loaded]:
        """L{load}, or None once a 503 is answered because the store cannot."""
        try:
            return await self.load(request, provider)
        except SessionStoreUnavailable as e:
            store_unavailable(request, e)
            return None

    async def forget(self, session: Session) -> None:
        """Drop a session that has ended anyway (expired, idle, revoked, refused at refresh)."""
        store = self._state.parts.store
        assert store is not None
        try:
            await store.delete(session)
        except SessionStoreUnavailable:
            log.warn("could not delete an ended session from the store")

    async def end(self, session: Session) -> None:
        """
        End a live session for good (logout, a new login in its browser):
        delete it from the store and, with a revocation list (cookie
        sessions with Redis), revoke its id there, until the latest a copy
        of its cookie could still be valid, so that no copy of the cookie
        works any more.

        @raise SessionStoreUnavailable: the store or the list could not do it.
        """
        parts = self._state.parts
        assert parts.store is not None
        await parts.store.delete(session)
        if parts.revocations is not None:
            lifetime = self._state.config.session.lifetime
            ttl = max(session.expires, session.created + lifetime) - self._state.clock.seconds()
            await parts.revocations.mark_revoked(session_id=session.id, ttl=max(1.0, ttl))

    def sliding_expiry(self, created: float, now: float) -> float:
        """A sliding session's end: idle_timeout from now, never beyond lifetime from login."""
        s = self._state.config.session
        return min(created + s.lifetime, now + s.idle_timeout)

    # -- an authenticated request -----------------------------------------------------

    async def admit(self, request: Request, match: RouteMatch,
                    session: Session) -> Tuple[Optional[Session], Optional[List[bytes]]]:
        """
        The checks and upkeep of a request with a live session: its
        WebSocket origin, its CSRF token, a refresh when due, the route's
        rule, the sliding renewal and the expiry hints.

        @return: C{(session, None)}: the request goes on as C{session};
            C{(None, cookies)}: the session ended at refresh (the request is
            unauthenticated now; C{cookies} clear it); C{(None, None)}: it
            is answered.
        @raise SessionStoreUnavailable: the store could not lock, load or
            save where the request cannot be served without it.
        """
        state = self._state
        config, cookies = state.config, state.cookies
        now = state.clock.seconds()
        if not self._screened(request, match, session, now) or \
                not assured(request, match, session, now, self.step_up, state.config):
            return None, None
        sliding = config.session.sliding
        # Due on the session as it was loaded (a refresh resets last_seen).
        renew = self._renew_due(session, now)
        refresher = self._refresher(session)
        if refresher is not None and refresher.due(session, now):
            outcome = await refresher.refresh(session)
            if outcome.session is not None and outcome.store_unavailable:
                # Not served on tokens the store does not hold yet (the next
                # request of the session saves them); a 503.
                raise SessionStoreUnavailable("a refreshed session could not be saved")
            if outcome.ended:
                await self.forget(session)
                ctx = context(request)
                ctx.user = ctx.provider = None  # no session any more: a login follows
                return None, cookies.clear_session(request, session.provider)
            if outcome.session is not None:
                session = outcome.session
                self._name_user(request, session)
                value = outcome.cookie_value
                # The refresh saved it seen now; a sliding one is saved again
                # below with its new expiry (and one cookie set for both).
                renew = sliding
                if not sliding and value is not None and value != read_cookie(
                        cookies.sessions[session.provider], request.received_cookies):
                    self._set_cookie(request, session, value, now, "refresh not kept")
            elif outcome.store_unavailable:
                # No refresh (the store could not lock or be read): the
                # access token is served while it is valid, then 503.
                expires = session.access_token_expires
                if expires is not None and now >= expires:
                    raise SessionStoreUnavailable("no refresh: the session store did not answer")
            elif not self.usable_during_outage(session, now):
                finish(request, 503, "idp_unavailable",
                       "The identity provider cannot be reached to renew your session. "
                       "Please try again shortly.", {b"retry-after": b"5"})
                return None, None
        route = match.route
        if not self._allowed(request, route, session, state.clock.seconds()):
            return None, None
        if renew:
            # Keep the idle clock (which lives inside the session) moving;
            # a sliding session's expiry (cookie, Redis TTL) moves with it.
            store = state.parts.store
            assert store is not None
            session = session.touched(now)
            if sliding:
                session = attr.evolve(session, expires=self.sliding_expiry(session.created, now))
            # A store that cannot save ends as a 503.
            value = await store.save(session)
            # Served either way; when it does not fit, the browser keeps its
            # cookie (the idle clock in it does not move).
            self._set_cookie(request, session, value, now, "session not renewed")
        if route.session_expiry_headers:
            self._expiry_headers(request, session, now)
        return session, None

    def admit_now(self, request: Request, match: RouteMatch,
                  session: Session) -> Optional[Tuple[Optional[Session], Optional[List[bytes]]]]:
        """
        L{admit}, decided at once when it needs nothing to wait for (no
        refresh due, no renewal to save): the same checks, in the same
        order, with the same answers. None, having done nothing, when
        L{admit} must be awaited instead.
        """
        state = self._state
        now = state.clock.seconds()
        refresher = self._refresher(session)
        if self._renew_due(session, now) or (refresher is not None and refresher.due(session, now)):
            return None
        if not self._screened(request, match, session, now) or \
                not assured(request, match, session, now, self.step_up, state.config):
            return None, None
        route = match.route
        if not self._allowed(request, route, session, now):
            return None, None
        if route.session_expiry_headers:
            self._expiry_headers(request, session, now)
        return session, None

    def _screened(self, request: Request, match: RouteMatch, session: Session,
                  now: float) -> bool:
        """The checks before any refresh: the WebSocket origin, then CSRF (False: answered)."""
        # Named before any check: the access log of a refused request
        # (written as it is answered) shows whose it was.
        self._name_user(request, session)
        if not self.websocket_origin_allowed(request, match.route):
            return False
        if self._state.cookies.csrf is not None and not self.csrf_passed(request, session, now):
            return False
        return True

    def _renew_due(self, session: Session, now: float) -> bool:
        """Whether the idle clock inside the session must move (a save)."""
        idle = self._state.config.session.idle_timeout
        return idle > 0 and now - session.last_seen >= min(60.0, idle / 4)

    @staticmethod
    def _allowed(request: Request, route: RouteConfig, session: Session, now: float) -> bool:
        """The route's rule on the session's claims (False: refused, answered)."""
        return route.policy is None or authorized(
            request, route, session.sub, session.claims, unverified_claims(session), now)

    def _expiry_headers(self, request: Request, session: Session, now: float) -> None:
        """The answer's hints of when the session ends, and when it lapses idle."""
        idle = self._state.config.session.idle_timeout
        ctx_headers = [(b"x-auth-session-expires-in",
                        str(max(0, int(session.expires - now))).encode("ascii"))]
        if idle > 0:
            ctx_headers.append((b"x-auth-idle-expires-in",
                                str(max(0, int(session.last_seen + idle - now)))
                                .encode("ascii")))
        context(request).headers.extend(ctx_headers)

    def _name_user(self, request: Request, session: Session) -> None:
        """The access log's user (and named provider) for a request of C{session}, allowed or refused."""
        ctx = context(request)
        ctx.user = user_name(self._state.config.username_claim, session.claims, session.sub)
        if session.provider:
            ctx.provider = session.provider

    def _set_cookie(self, request: Request, session: Session, value: str, now: float,
                    what: str) -> None:
        """Send the session's new cookie with the answer (unless it is too large: logged)."""
        cookies = self._state.cookies
        try:
            context(request).cookies.extend(
                cookies.session_headers(request, session, value, now))
        except CookieTooLarge:
            cookies.too_large(session, value, what)

    def websocket_origin_allowed(self, request: Request, route: RouteConfig) -> bool:
        """
        Cross-site WebSocket hijacking: a browser sends the session cookie
        with the WebSocket handshake of any page that opens one (C{SameSite}
        stops only cross-site ones, and C{None} not even those), and the
        socket is not bound by CORS. Its C{Origin} says whose page it is: a
        cookie-authenticated upgrade passes with public_url's origin or one
        of C{websocket_origins}, else gets 403 (C{null} and malformed ones
        too). Without C{Origin} it passes: browsers always send one with a
        WebSocket handshake, so the client is not a browser that a foreign
        page could drive.
        """
        headers = request.requestHeaders
        if b"websocket" not in header_tokens(headers, b"upgrade"):
            return True
        values = headers.getRawHeaders(b"origin")
        if values is None:
            return True
        state = self._state
        allowed = route.websocket_origins if route.websocket_origins is not None \
            else state.config.websocket_origins
        if len(values) == 1:
            try:
                seen = origin_of(values[0].decode("ascii"))
            except ValueError:  # UnicodeDecodeError too
                seen = None
            if seen is not None and (seen in allowed or seen == self._own_origin()):
                return True
        shown = "".join(chr(c) if 0x20 <= c < 0x7F else "?" for c in b", ".join(values)[:200])
        log.warn("WebSocket upgrade on {route} refused: Origin {origin} is neither public_url's "
                 "nor in websocket_origins", route=route.name, origin=shown)
        decided(request, "origin_refused")
        state.metrics.websocket_upgrade("origin_refused")
        finish(request, 403, "websocket_origin_refused",
               "WebSocket connections are accepted only from this site's own pages "
               "(or the origins in websocket_origins).", as_json=True)
        return False

    def _own_origin(self) -> Optional[str]:
        """public_url's origin as a browser sends it in C{Origin}; None without public_url."""
        state = self._state
        try:
            return origin_of(state.public_origin.decode("ascii")) if state.public else None
        except ValueError:
            return None

    def csrf_passed(self, request: Request, session: Session, now: float) -> bool:
        """
        The CSRF check of a session-authenticated request: a safe method
        passes (and gets a token cookie when it has none of this session);
        any other needs the header matching the cookie, or gets 403.
        """
        csrf = self._state.cookies.csrf
        assert csrf is not None
        cookies = request.received_cookies
        issue = csrf.cookie_headers(cookies, session.id, int(session.expires - now))
        if judged_method(request) in SAFE_METHODS:
            context(request).cookies.extend(issue)
            return True
        reason = csrf.refusal(cookies, request.requestHeaders.getRawHeaders(
            csrf.header_name.encode("ascii")), session.id)
        if reason is None:
            return True
        log.info("CSRF check failed for {sub}: {reason}", sub=session.sub, reason=reason)
        decided(request, "csrf_refused")
        finish(request, 403, "csrf_token_invalid",
               f"This request needs the {csrf.header_name} header holding the CSRF token "
               f"of the {csrf.cookie.wire_name} cookie.", cookies=issue)
        return False

    def usable_during_outage(self, session: Session, now: float) -> bool:
        """
        The IdP could not renew the tokens: serve while the access token is
        still valid, then for up to session.idp_outage_grace after it expired.
        """
        expires = session.access_token_expires
        if expires is None or now < expires:
            return True
        grace = self._state.config.session.idp_outage_grace
        if grace > 0 and now < expires + grace:
            log.warn("serving {sub} with an expired access token: the IdP is unreachable "
                     "(idp_outage_grace)", sub=session.sub)
            return True
        return False

