"""
Starting a login: a browser without a session is sent to the IdP's
authorization endpoint (with a state cookie for the attempt), from the
login endpoint or from any protected page it navigated to; a browser whose
session does not meet a route's requirement (step-up) is sent there too,
asking for what the route needs, its session kept until the new one is made.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple
from urllib.parse import parse_qs, urlsplit

from twisted.logger import Logger
from twisted.web.server import Request

from ...config.values import acr_value
from ...core.assurance import Requirement, challenge
from ...core.cache import BoundedCache
from ...core.context import peek
from ...core.urls import safe_return_to
from ...proxy.routes import RouteMatch
from ...sessions.history import recent_step_ups
from ...sessions.session import DEFAULT_PROVIDER, Session
from ..answers import decided, deny, finish, redirect, show
from ..parts import GuardState
from ..requests import arg, is_browser_navigation, mount_path, provider_arg, return_to

__all__ = ["LoginEndpoint", "MAX_PENDING", "step_up_path", "target_of"]

log = Logger()

MAX_PENDING = 10_000
"""The most login attempts counted as pending (and states remembered as used)."""

PROMPTS = ("login", "select_account")
"""The C{prompt} values the login endpoint passes on (signing in as someone else)."""


MAX_ACR_VALUES = 16
"""The most C{acr_values} the login endpoint passes on."""

MAX_AGE_DIGITS = 10
"""The most digits of the login endpoint's C{max_age} (about 300 years of seconds)."""


def step_up_path(target: str) -> str:
    """What a step-up of C{target} counts under: its path (the query does not make another page)."""
    return target.split("?", 1)[0]


def asked_of(args: Any) -> Tuple[Optional[Tuple[str, ...]], Optional[int], Optional[str]]:
    """
    The login endpoint's C{acr_values} (space-separated) and C{max_age}
    (whole seconds): the values, or the name of the one that is malformed.
    """
    acr_values: Tuple[str, ...] = ()
    max_age: Optional[int] = None
    given = args.get(b"acr_values")
    if given is not None:
        try:
            text = given[0].decode("ascii") if len(given) == 1 else ""
            acr_values = tuple(acr_value(a) for a in text.split(" "))
        except ValueError:  # UnicodeDecodeError too
            return None, None, "acr_values"
        if len(acr_values) > MAX_ACR_VALUES or len(set(acr_values)) != len(acr_values):
            return None, None, "acr_values"
    given = args.get(b"max_age")
    if given is not None:
        if len(given) != 1 or not given[0].isdigit() or len(given[0]) > MAX_AGE_DIGITS:
            return None, None, "max_age"
        max_age = int(given[0])
    return acr_values, max_age, None


def target_of(match: RouteMatch) -> str:
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
        acr_values, max_age, bad = asked_of(request.args)
        if acr_values is None:
            finish(request, 400, "bad_request",
                   "The acr_values parameter must be acr values separated by single spaces."
                   if bad == "acr_values" else
                   "The max_age parameter must be a whole number of seconds.")
            return
        prompt = arg(request.args, b"prompt")
        asks = bool(acr_values) or max_age is not None
        if prompt not in PROMPTS:
            prompt = "login" if asks and table is not None and table.step_up_prompt_login \
                else None
        await self.start(request, return_to(request), prompt=prompt, provider=name,
                         acr_values=acr_values, max_age=max_age)

    def step_up_now(self, request: Request, session: Session, target: str,
                    requirement: Requirement) -> None:
        """
        A browser whose C{session} does not meet C{requirement} on C{target}
        (a path): sent to sign in again at the session's provider, asking
        for the requirement's C{acr_values} and C{max_age} (and C{prompt=login}
        where the provider needs it), to come back to C{target}. Its session
        cookie stays: the session lives on until the callback replaces it.

        No loop: when the session's chain already made
        C{[step_up].max_attempts} step-up logins for C{target} within
        C{attempt_window}, the IdP did not give what the page needs, and the
        answer is the login-failed page (401), not another redirect. Where
        logins do not start here, the RFC 9470 challenge (401).
        """
        state = self._state
        config = state.config
        name = session.provider
        oidc = config.provider_config(name)
        step = config.step_up
        now = state.clock.seconds()
        path = step_up_path(target)
        tried = sum(1 for entry in recent_step_ups(session, now, step.attempt_window)
                    if entry[0] == path)
        if oidc is None or state.bundle(name) is None or oidc.disable_login or oidc.login_url:
            decided(request, "step_up")
            finish(request, 401, "insufficient_user_authentication",
                   "This page needs a stronger or more recent sign-in, which cannot be "
                   "started here.", {b"www-authenticate": challenge(requirement)})
            return
        if tried >= step.max_attempts:
            log.warn("step-up of {sub} for {path} refused: {tried} step-up logins within "
                     "{window:g}s did not give {requirement}", sub=session.sub, path=path,
                     tried=tried, window=step.attempt_window,
                     requirement=requirement.describe())
            decided(request, "step_up_failed")
            state.metrics.login_failed("step_up_exhausted", name)
            pages = state.pages
            show(request, lambda r: pages.login_failed(
                r, 401, "The identity provider did not give the sign-in this page needs.",
                "reason_step_up_exhausted", target,
                headers={b"www-authenticate": challenge(requirement)},
                error="insufficient_user_authentication"))
            return
        self.begin(request, target, prompt="login" if oidc.step_up_prompt_login else None,
                   provider=name, acr_values=requirement.acr_values,
                   max_age=None if requirement.max_age is None else int(requirement.max_age),
                   step_up=True, decision="step_up")

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
        target = target_of(match)
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
        target = target_of(match)
        pages = state.pages
        show(request, lambda r: pages.sign_in(r, target, challenge, choices), clear)

    def _logs_in_here(self, name: str) -> bool:
        """Whether the login endpoint starts logins with the provider C{name}."""
        oidc = self._state.config.provider_config(name)
        return self._state.bundle(name) is not None and oidc is not None and \
            not oidc.disable_login and self.here()

    async def start(self, request: Request, target: str, cookies: Sequence[bytes] = (),
                    prompt: Optional[str] = None, provider: str = DEFAULT_PROVIDER,
                    acr_values: Sequence[str] = (), max_age: Optional[int] = None,
                    step_up: bool = False, decision: str = "login") -> None:
        """
        Send the browser to the IdP of C{provider}, to come back to C{target}
        (a path), asking for C{acr_values} and C{max_age} when given (see
        L{oidcproxy.oidc.login.LoginFlow.start}); C{decision}: the access
        log's.
        """
        self.begin(request, target, cookies, prompt, provider, acr_values, max_age, step_up,
                   decision)

    def begin(self, request: Request, target: str, cookies: Sequence[bytes] = (),
              prompt: Optional[str] = None, provider: str = DEFAULT_PROVIDER,
              acr_values: Sequence[str] = (), max_age: Optional[int] = None,
              step_up: bool = False, decision: str = "login") -> None:
        """L{start}, which needs nothing to wait for: at once."""
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
            request.received_cookies, target, metadata.authorization_endpoint, prompt,
            acr_values, max_age, step_up)
        decided(request, decision)
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
