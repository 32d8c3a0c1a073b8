"""
A request on one of the guard's routes: the route's methods, then its
credential (a bearer token, the session cookie, or none: a login or 401),
then the rule; an admitted request is passed on with its identity.

The decision is synchronous whenever all it needs is in memory (a public
route, a session the store opens at once, a cached bearer token, no refresh
or renewal due): no coroutine and no Deferred then. What must wait (the
store, the revocation list, a refresh, the IdP, a login) continues as a
coroutine from where the decision stopped, with the same checks in the same
order.
"""

from __future__ import annotations

from typing import Any, Callable, Coroutine, List, Optional, Sequence

from twisted.web.server import Request

from ..core.assurance import Requirement
from ..core.context import RequestContext, context
from ..oidc.bearer import bearer_token
from ..oidc.tokens import TokenError
from ..proxy.routes import RouteMatch
from ..sessions.session import DEFAULT_PROVIDER, Session
from .answers import decided, deny, finish
from .bearer_auth import BearerAuth
from .endpoints.login import LoginEndpoint, target_of
from .headers import set_session_identity
from .parts import GuardState
from .requests import is_preflight, judged_method
from .session_auth import Loaded, SessionAuth
from .step_up import UpstreamStepUp

__all__ = ["RouteAuth"]


class RouteAuth:
    """
    The route requests of one guard.

    @param pass_on: hands an admitted request to the wrapped resource.
    """

    def __init__(self, state: GuardState, sessions: SessionAuth, bearer: BearerAuth,
                 login: LoginEndpoint,
                 pass_on: Callable[[Request, RequestContext, RouteMatch], None]) -> None:
        self._state = state
        self._sessions = sessions
        self._bearer = bearer
        self._login = login
        self._pass_on = pass_on
        # A session short of a route's requirement: its browser steps up.
        sessions.step_up = self._step_up
        # An upstream asking for more of a session's browser (step_up = true).
        self._upstream_step_up = UpstreamStepUp(state, login)

    def decide(self, request: Request, match: RouteMatch,
               authorization: Optional[Sequence[bytes]]) -> Optional[Coroutine[Any, Any, None]]:
        """
        Decide on C{request} as far as that goes without waiting: None
        once it is decided (answered, or passed on), or the coroutine that
        decides the rest.
        """
        route = match.route
        ctx = context(request)
        ctx.route = route
        if route.methods and judged_method(request).decode("ascii", "replace") not in route.methods:
            finish(request, 405, "method_not_allowed", "This method is not allowed here.",
                   {b"allow": ", ".join(route.methods).encode("ascii")})
            return None
        if route.auth == "none" or (route.cors_preflight and is_preflight(request)):
            decided(request, "public")
            self._pass_on(request, ctx, match)
            return None
        if route.auth in ("bearer", "session_or_bearer", "optional"):
            try:
                token = bearer_token(authorization)
            except TokenError as e:
                self._bearer.denied(request, e)
                return None
            if token is not None:
                admitted = self._bearer.admit_now(request, match, token, authorization)
                if admitted is None:
                    return self._bearer_admit(request, ctx, match, token, authorization)
                if admitted:
                    self._pass_on(request, ctx, match)
                return None
            if route.auth == "bearer":
                deny(request)
                return None
        if route.providers:
            return self._choice(request, ctx, match)
        provider = route.provider or DEFAULT_PROVIDER
        loaded = self._sessions.cached(request, provider)
        if loaded is None:
            return self._session_route(request, ctx, match, provider)
        return self._loaded(request, ctx, match, loaded)

    def _choice(self, request: Request, ctx: RequestContext,
                match: RouteMatch) -> Optional[Coroutine[Any, Any, None]]:
        """
        A route of several providers: the session of the first of them
        (in the route's order) whose cookie holds a live one is the
        request's; the cookies of dead ones are cleared either way.
        """
        clear: List[bytes] = []
        for provider in match.route.providers:
            loaded = self._sessions.cached(request, provider)
            if loaded is None:
                return self._choice_waiting(request, ctx, match)
            session, cleared = loaded
            clear += cleared
            if session is not None:
                ctx.cookies.extend(clear)
                return self._loaded(request, ctx, match, (session, []))
        return self._loaded(request, ctx, match, (None, clear))

    async def _choice_waiting(self, request: Request, ctx: RequestContext,
                              match: RouteMatch) -> None:
        """L{_choice}, with sessions that must be loaded from the store (or checked there)."""
        clear: List[bytes] = []
        found: Loaded = (None, clear)
        for provider in match.route.providers:
            loaded = await self._sessions.load_or_503(request, provider)
            if loaded is None:
                return
            session, cleared = loaded
            clear += cleared
            if session is not None:
                ctx.cookies.extend(clear)
                found = (session, [])
                break
        rest = self._loaded(request, ctx, match, found)
        if rest is not None:
            await rest

    async def _bearer_admit(self, request: Request, ctx: RequestContext, match: RouteMatch,
                            token: str, authorization: Optional[Sequence[bytes]]) -> None:
        """A bearer token that must be validated (not cached): then pass it on, or not."""
        if await self._bearer.admit(request, match, token, authorization):
            self._pass_on(request, ctx, match)

    async def _session_route(self, request: Request, ctx: RequestContext,
                             match: RouteMatch, provider: str) -> None:
        """
        The session (of the route's C{provider}) of a request that must be
        loaded from the store (or checked there).
        """
        loaded = await self._sessions.load_or_503(request, provider)
        if loaded is None:
            return
        rest = self._loaded(request, ctx, match, loaded)
        if rest is not None:
            await rest

    def _loaded(self, request: Request, ctx: RequestContext, match: RouteMatch,
                loaded: Loaded) -> Optional[Coroutine[Any, Any, None]]:
        """
        The request's session of the route's provider is known (or known
        to be missing): go on at once if possible. (A session with another
        provider, in that provider's cookie, is not looked at: that
        provider's routes serve it.)
        """
        session, clear = loaded
        if session is None:
            if match.route.auth == "optional":
                decided(request, "anonymous")
                ctx.cookies.extend(clear)
                self._pass_on(request, ctx, match)
                return None
            return self._login.unauthenticated(request, match, clear)
        at_once = self._sessions.admit_now(request, match, session)
        if at_once is None:
            return self._session_admit(request, ctx, match, session)
        self._admitted(request, ctx, match, at_once[0])
        return None

    async def _session_admit(self, request: Request, ctx: RequestContext, match: RouteMatch,
                             session: Session) -> None:
        """A live session whose admission waits (a refresh, a renewal to save)."""
        admitted, cleared = await self._sessions.admit(request, match, session)
        if admitted is None and cleared is not None:
            await self._login.unauthenticated(request, match, cleared)
            return
        self._admitted(request, ctx, match, admitted)

    def _step_up(self, request: Request, match: RouteMatch, session: Session,
                 requirement: Requirement) -> None:
        """A browser's session that does not meet the route's C{requirement}: a step-up login."""
        self._login.step_up_now(request, session, target_of(match), requirement)

    def _admitted(self, request: Request, ctx: RequestContext, match: RouteMatch,
                  session: Optional[Session]) -> None:
        """Pass on a request its session admitted (None: it was answered)."""
        if session is not None:
            # On a route with a requirement, the sign-in that met it (an
            # earlier one, one value of an acrs claim), as the session's
            # checks found it, is the one the headers tell of.
            set_session_identity(request, ctx, self._state.identity, session, ctx.sign_in)
            if match.route.step_up:
                self._upstream_step_up.offer(request, ctx)
            self._pass_on(request, ctx, match)
