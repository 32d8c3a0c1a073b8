"""
Upstream-driven step-up (a route with C{step_up = true}): when the upstream
answers a browser's navigation on a session with the RFC 9470 challenge
(C{401}, C{WWW-Authenticate: Bearer error="insufficient_user_authentication",
acr_values="...", max_age=...}), the proxy does not pass that answer on
(L{oidcproxy.proxy.exchange}) but answers with what the browser can act on:

  - a C{GET} (or C{HEAD}) is sent to sign in again at the session's
    provider, asking for the challenge's C{acr_values} and C{max_age}, and
    comes back to the same URL (L{LoginEndpoint.step_up_now}, which also bounds
    the attempts per page);
  - any other method (a form posted) gets a 401 page that explains and
    offers to sign in at the asked level, coming back to the page the user
    was on, to try the action again.

API clients (requests that are not navigations), bearer-admitted requests
and routes without C{step_up} never get here: the challenge is theirs.
"""

from __future__ import annotations

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Request

from ..core.assurance import Requirement, challenge
from ..core.context import RequestContext, peek
from ..core.urls import safe_return_to
from .answers import abort, client_gone, decided, finish, show
from .endpoints.login import LoginEndpoint, target_of
from .parts import GuardState
from .requests import is_navigation, referer_below

__all__ = ["UpstreamStepUp"]

log = Logger()


class UpstreamStepUp:
    """
    The step-up an upstream asks for, for the browsers of one guard.

    @param state: what the guard's units share (the configuration, pages).
    @param login: the login endpoint, which starts the step-up login.
    """

    def __init__(self, state: GuardState, login: LoginEndpoint) -> None:
        self._state = state
        self._login = login

    def offer(self, request: Request, ctx: RequestContext) -> None:
        """
        C{request}, admitted on a session on a route with C{step_up =
        true}: when it is a browser's navigation, its upstream's challenge
        is answered here (L{RequestContext.step_up}).
        """
        if is_navigation(request):
            ctx.step_up = self.answer

    def answer(self, request: Request, requirement: Requirement) -> None:
        """
        The upstream refused C{request} asking for C{requirement}: a
        step-up login for a C{GET}/C{HEAD}, the step-up page for others.
        """
        try:
            self._answer(request, requirement)
        except Exception:  # noqa: BLE001 - a bug: logged and answered 500, as the guard does
            self._unexpected(Failure(), request)

    def _answer(self, request: Request, requirement: Requirement) -> None:
        ctx = peek(request)
        assert ctx is not None and ctx.session is not None and ctx.match is not None, \
            "offered to a session's request only"
        # The answer is the guard's own from here on: its cookies (the
        # step-up login's state cookie) are not a wrapped resource's to refuse.
        ctx.keep_cookie = None
        route = ctx.route
        method = request.method
        log.info("upstream of route {route} asks for {requirement} on {method}: {answer}",
                 route=route.name if route is not None else "-",
                 requirement=requirement.describe(), method=method.decode("ascii", "replace"),
                 answer="step-up login" if method in (b"GET", b"HEAD") else "step-up page")
        if method in (b"GET", b"HEAD"):
            self._login.step_up_now(request, ctx.session, target_of(ctx.match), requirement)
            return
        decided(request, "step_up")
        # The page the browser was on, below public_url (the login's rd).
        target = referer_below(request, self._state.public) or \
            safe_return_to(ctx.match.path) or "/"
        pages = self._state.pages
        max_age = None if requirement.max_age is None else int(requirement.max_age)
        show(request, lambda r: pages.step_up(
            r, target, requirement.acr_values, max_age,
            {b"www-authenticate": challenge(requirement)}))

    def _unexpected(self, failure: Failure, request: Request) -> None:
        """A bug on the way: logged, and 500 (or the connection cut) if anything can still go out."""
        log.failure("unexpected error answering an upstream's step-up", failure)
        if client_gone(request):
            return
        if request.startedWriting:
            abort(request)
            return
        finish(request, 500, "internal_error", "Something went wrong on our side.")
