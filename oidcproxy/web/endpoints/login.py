"""
Starting a login: a browser without a session is sent to the IdP's
authorization endpoint (with a state cookie for the attempt), from the
login endpoint or from any protected page it navigated to.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence
from urllib.parse import parse_qs, urlsplit

from twisted.web.server import Request

from ...core.cache import BoundedCache
from ...core.context import peek
from ...core.urls import safe_return_to
from ...proxy.routes import RouteMatch
from ...sessions.session import DEFAULT_PROVIDER
from ..answers import decided, deny, finish, redirect, show
from ..parts import GuardState
from ..requests import arg, is_browser_navigation, mount_path, provider_arg, return_to

__all__ = ["LoginEndpoint", "MAX_PENDING"]

MAX_PENDING = 10_000
"""The most login attempts counted as pending (and states remembered as used)."""

PROMPTS = ("login", "select_account")
"""The C{prompt} values the login endpoint passes on (signing in as someone else)."""


def _target(match: RouteMatch) -> str:
    """Where a login started on the request of C{match} comes back to: its path and query."""
    target = match.path
    if match.query is not None:
        target += "?" + match.query.decode("ascii")
    return safe_return_to(target) or "/"


class LoginEndpoint:
    """
    Sends browsers to log in, and counts the attempts out and not back yet
    (C{oidcproxy_login_attempts_pending}).
    """

    def __init__(self, state: GuardState) -> None:
        self._state = state
        self._pending: BoundedCache[str, float] = BoundedCache(state.clock, MAX_PENDING)
        """Login attempts started here and not back yet: state -> started."""
        self._prune: Any = None

    def here(self) -> bool:
        """Whether C{endpoints_prefix + "/login"} starts logins (not with login_url or disable_login)."""
        oidc = self._state.config.oidc
        return oidc is None or not (oidc.disable_login or oidc.login_url)

    async def render(self, request: Request) -> None:
        """
        The login endpoint: GET (or HEAD) starts a login coming back to
        C{rd}, with C{[oidc]} or the named C{provider}.
        """
        if request.method not in (b"GET", b"HEAD"):
            finish(request, 405, "method_not_allowed", "Login starts with GET.",
                   {b"allow": b"GET, HEAD"})
            return
        given = request.args.get(b"provider")
        name = provider_arg(given[0]) if given else DEFAULT_PROVIDER
        table = self._state.config.provider_config(name)
        if name != DEFAULT_PROVIDER and (self._state.bundle(name) is None or table is None
                                         or table.disable_login):
            # Unknown, or one whose logins do not start here (disable_login).
            finish(request, 404, "unknown_provider", "No such identity provider logs in here.")
            return
        prompt = arg(request.args, b"prompt")
        await self.start(request, return_to(request), prompt=prompt if prompt in PROMPTS else None,
                         provider=name)

    async def unauthenticated(self, request: Request, match: RouteMatch,
                              clear: Sequence[bytes]) -> None:
        """
        A request without a session where one is needed: a browser's
        navigation goes to log in (and comes back here), anything else gets 401.
        """
        ctx = peek(request)
        route = match.route
        if not is_browser_navigation(request) or (ctx is not None and ctx.forward_auth is False):
            deny(request, clear, self._challenge(route.providers) if route.providers else
                 b'Bearer realm="oidcproxy"')
            return
        if route.providers:
            self._choose(request, match, clear)
            return
        name = route.provider or DEFAULT_PROVIDER
        oidc = self._state.config.provider_config(name)
        if oidc is not None and (oidc.disable_login or oidc.login_url):
            # Logins start elsewhere (login_url), or not at all here.
            decided(request, "unauthenticated")
            message = "Authentication is required."
            if oidc.login_url:
                message += f" Log in at {mount_path(request)}{oidc.login_url}."
            finish(request, 401, "unauthenticated", message,
                   {b"www-authenticate": b'Bearer realm="oidcproxy"'}, clear)
            return
        target = _target(match)
        if self._state.config.pages.sign_in_page and self._logs_in_here(name):
            # A page with a button naming the provider, before the browser goes there.
            decided(request, "unauthenticated")
            pages = self._state.pages
            show(request, lambda r: pages.sign_in(
                r, target, {b"www-authenticate": b'Bearer realm="oidcproxy"'}), clear)
            return
        await self.start(request, target, clear, provider=name)

    def _challenge(self, providers: Sequence[str]) -> bytes:
        """
        The C{WWW-Authenticate} of a route of several providers: its
        C{issuers}, space-separated (their tokens are accepted there).
        """
        config = self._state.config
        issuers = [oidc.issuer for oidc in map(config.provider_config, providers)
                   if oidc is not None]
        return ('Bearer realm="oidcproxy", issuers="' + " ".join(issuers) + '"').encode("ascii")

    def _choose(self, request: Request, match: RouteMatch, clear: Sequence[bytes]) -> None:
        """
        A browser without a session on a route of several providers: the
        sign-in page, one button for each provider that logs in here, each
        starting a login with it that comes back to this page.
        """
        state = self._state
        choices = [name for name in match.route.providers if self._logs_in_here(name)]
        challenge = {b"www-authenticate": self._challenge(match.route.providers)}
        decided(request, "unauthenticated")
        if not choices:
            finish(request, 401, "unauthenticated", "Authentication is required.", challenge,
                   clear)
            return
        target = _target(match)
        pages = state.pages
        show(request, lambda r: pages.sign_in(r, target, challenge, choices), clear)

    def _logs_in_here(self, name: str) -> bool:
        """Whether the login endpoint starts logins with the provider C{name}."""
        oidc = self._state.config.provider_config(name)
        return self._state.bundle(name) is not None and oidc is not None and \
            not oidc.disable_login and self.here()

    async def start(self, request: Request, target: str, cookies: Sequence[bytes] = (),
                    prompt: Optional[str] = None, provider: str = DEFAULT_PROVIDER) -> None:
        """Send the browser to the IdP of C{provider}, to come back to C{target} (a path)."""
        state = self._state
        bundle = state.bundle(provider)
        if bundle is None:
            deny(request, cookies)
            return
        login = bundle.login
        provider_client = bundle.provider
        metadata = provider_client.metadata if provider_client.ready else None
        if metadata is None:
            state.metrics.login_failed("idp_not_ready", provider)
            finish(request, 503, "idp_unavailable",
                   "The identity provider cannot be reached yet. Please try again shortly.",
                   {b"retry-after": b"5"}, cookies)
            return
        location, state_cookies = login.start(
            request.received_cookies, target, metadata.authorization_endpoint, prompt)
        decided(request, "login")
        state.metrics.login_started(provider)
        self._started(location)
        redirect(request, location, [*cookies, *state_cookies])

    # -- the attempts out --------------------------------------------------------------

    def _started(self, location: str) -> None:
        """Count the attempt whose authorization URL is C{location} until it comes back or expires."""
        states = parse_qs(urlsplit(location).query).get("state")
        if not states:
            return
        now = self._state.clock.seconds()
        self._pending.put(states[0], now, until=now + self._state.config.state_cookie.max_age)
        self._update()

    def returned(self, state: str) -> None:
        """The attempt of C{state} came back (used or not)."""
        if self._pending.peek(state) is not None:
            self._pending.pop(state)
            self._state.metrics.login_attempts_pending(len(self._pending))

    def _update(self) -> None:
        """Drop the attempts older than the state cookie's max_age; update the gauge."""
        pending = self._pending
        pending.prune()
        self._state.metrics.login_attempts_pending(len(pending))
        call = self._prune
        if len(pending) and (call is None or not call.active()):
            started = pending.peek(pending.keys()[0])
            assert started is not None
            wait = max(0.0, started + self._state.config.state_cookie.max_age
                       - self._state.clock.seconds())
            self._prune = self._state.clock.callLater(wait, self._update)

    def stop(self) -> None:
        if self._prune is not None and self._prune.active():
            self._prune.cancel()
        self._prune = None
