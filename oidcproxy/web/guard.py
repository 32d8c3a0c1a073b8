"""
L{OIDCGuard}: the authenticating wrapper around any C{IResource}.

In the proxy it wraps L{oidcproxy.proxy.upstream.UpstreamProxy}; embedded in an
existing Twisted server it wraps the application's own resource, which reads
the user with L{identity}. It may be mounted at any depth of a resource tree
(its routes and endpoints are then relative to where it is mounted). Per
request it:

  1. finds the route (L{oidcproxy.proxy.routes}) and answers the proxy's own
     endpoints (L{oidcproxy.web.endpoints}) under C{endpoints_prefix};
  2. strips every identity header the proxy sets (under every spelling) and
     the proxy's own cookies from the request (L{headers}, L{cookies});
  3. authenticates (L{route_auth}): a bearer token (L{bearer_auth}) or the
     session cookie (L{session_auth}: lifetime, CSRF, refresh);
  4. authorizes (L{rules}), sets the identity headers and hands the request
     to the wrapped resource; without a credential, a browser navigation is
     sent to the IdP (L{endpoints.login}), anything else gets 401.
     Unauthenticated requests never reach the wrapped resource.

Per-request state lives in the request's L{oidcproxy.core.context.RequestContext}.
Expected failures get their own status and page; anything unexpected is logged
and answered 500 without details. A client that leaves cancels the guard's wait.

The decision is synchronous whenever all it needs is in memory (a public
route, a cookie session the store opens at once, a cached bearer token's
claims, no refresh or renewal due): no coroutine and no Deferred then. Only
what must wait (the store, the revocation list, a refresh, the IdP, a login,
the endpoints) continues as a coroutine, from where the decision stopped.
"""

from __future__ import annotations

from typing import Any, Coroutine, List, Optional, Sequence
from urllib.parse import unquote_to_bytes

from twisted.internet.defer import CancelledError, Deferred, DeferredList, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import IResource, Resource, getChildForRequest
from twisted.web.server import NOT_DONE_YET, Request

from ..config import Config, RouteConfig
from ..core.context import RequestContext, context
from ..core.metrics import NullMetrics
from ..proxy.headers import drop_connection_named, request_authority
from ..proxy.routes import BadRequestTarget, RouteMatch, RouteTable, normalise_path, split_target
from ..sessions.session import DEFAULT_PROVIDER, ISessionStore, SessionStoreUnavailable
from .answers import abort, finish, hand_over, show, store_unavailable
from .bearer_auth import BearerAuth
from .endpoints.backchannel import BackchannelLogoutEndpoint
from .endpoints.callback import CallbackEndpoint
from .endpoints.forward_auth import ForwardAuthEndpoint
from .endpoints.health import HealthEndpoints
from .endpoints.login import LoginEndpoint
from .endpoints.logout import LogoutEndpoint
from .endpoints.userinfo import UserinfoEndpoint
from .headers import header_value
from .identity import Identity, identity
from .pages import SCRIPT_PATH
from .parts import GuardParts, GuardState
from .requests import (
    is_browser_navigation,
    mount_path,
    target_below_mount,
)
from .route_auth import RouteAuth
from .server import ProxyRequest
from .session_auth import SessionAuth

__all__ = ["Identity", "OIDCGuard", "header_value", "identity", "is_browser_navigation"]

log = Logger()

_ENDPOINTS = ("/auth", "/login", "/logout", "/userinfo", "/backchannel-logout", "/health", "/ready",
              SCRIPT_PATH)
"""The endpoints under endpoints_prefix (besides the callback)."""


class OIDCGuard(Resource):
    """
    Wrap C{wrapped} so that each request is authenticated per its route.

    The parts it works with (IdP client, stores, login flow, validators)
    are built from the configuration by L{oidcproxy.assemble}, whose
    C{OIDCGuard} (C{oidcproxy.OIDCGuard}) builds them for an embedder.

    @param config: the validated configuration (its C{[[routes]]} give each
        path its auth mode; without routes the whole resource needs login).
    @param wrapped: any C{IResource}: the upstream proxy, or an application.
    @param reactor: for time and timers.
    @param parts: what the guard works with (see L{GuardParts}).
    @param routes: the route table (default: made from C{config}).
    @param max_cookie_bytes: the largest session cookie (all chunks) handed
        out. The default fits a plain Twisted C{Site}, whose request headers
        may not exceed 16 KiB in all; the proxy's own site takes more and
        raises it.
    """

    isLeaf = True

    def __init__(self, config: Config, wrapped: IResource, reactor: Any, *, parts: GuardParts,
                 routes: Optional[RouteTable] = None, max_cookie_bytes: int = 12 * 1024) -> None:
        super().__init__()
        if routes is None:
            routes = RouteTable(config.routes or (
                RouteConfig(index=0, path="/", upstream="http://embedded.invalid"),))
        self._wrapped = wrapped
        self._state = state = GuardState(config, routes, parts, reactor, max_cookie_bytes)
        self._started = False
        # The endpoints' paths as started (they are not reloaded).
        self._callback_paths = {config.callback_path: DEFAULT_PROVIDER}
        self._callback_paths.update((table.callback_path or config.callback_path, name)
                                    for name, table in config.providers)
        self._logout_path = config.logout_path
        self._prefix = config.endpoints_prefix
        self._sessions = SessionAuth(state)
        self._bearer = BearerAuth(state, parts.external_keys)
        self._login = LoginEndpoint(state)
        self._route_auth = RouteAuth(state, self._sessions, self._bearer, self._login, self._pass)
        self._callback = CallbackEndpoint(state, self._sessions, self._login)
        self._logout = LogoutEndpoint(state, self._sessions, self._close_sockets)
        self._backchannel = BackchannelLogoutEndpoint(state, self._close_sockets)
        self._userinfo = UserinfoEndpoint(state, self._sessions)
        self._health = HealthEndpoints(state)
        self._forward_auth = ForwardAuthEndpoint(state, self._route_request)

    @property
    def parts(self) -> GuardParts:
        """What the guard works with (the IdP client, the stores, ...)."""
        return self._state.parts

    @property
    def config(self) -> Config:
        """The running configuration."""
        return self._state.config

    @property
    def routes(self) -> RouteTable:
        """The running route table."""
        return self._state.routes

    @property
    def store(self) -> Optional[ISessionStore]:
        """The session store (for the admin API)."""
        return self._state.parts.store

    @property
    def metrics(self) -> NullMetrics:
        """Where this guard counts (its C{registry}, for a L{oidcproxy.core.metrics.Metrics})."""
        return self._state.metrics

    @property
    def worker_id(self) -> Optional[int]:
        """The worker number when several processes serve (shown by the health endpoint)."""
        return self._state.worker_id

    @worker_id.setter
    def worker_id(self, value: Optional[int]) -> None:
        self._state.worker_id = value

    def reconfigure(self, config: Config, routes: RouteTable, wrapped: IResource) -> None:
        """
        Take a reloaded configuration's routes, identity headers, trusted
        proxies and C{[bearer]} settings, and a new resource to pass requests
        to. The IdP client, the session store and the login flow stay as they
        were built: C{config}'s other sections should be the running ones.
        """
        bearer_changed = config.bearer != self._state.config.bearer
        self._state.reconfigure(config, routes)
        self._wrapped = wrapped
        self._warn_insecure()
        if bearer_changed:
            make = self.parts.external_keys_for
            self.parts.external_keys = make(config) if make is not None else None
            self._bearer.reconfigure(self.parts.external_keys)

    # -- life cycle -------------------------------------------------------------

    def _warn_insecure(self) -> None:
        """Say, at every start and reload, that the IdP's certificate is not checked."""
        config = self._state.config
        for key, oidc in (("oidc", config.oidc),
                          *((f"providers.{name}", table) for name, table in config.providers)):
            if oidc is not None and oidc.insecure_skip_verify:
                log.warn("{key}.insecure_skip_verify is on: the identity provider's TLS "
                         "certificate is NOT verified, anyone on the network path can "
                         "impersonate it; never use this in production", key=key)

    def start(self) -> None:
        """Start loading the IdPs' metadata and keys in the background."""
        if self._started:  # every request calls this
            return
        bundles = self._state.bundles()
        if bundles:
            self._started = True
            self._warn_insecure()
            for bundle in bundles:
                bundle.provider.start()
            self._bearer.start()

    def close(self) -> Deferred[Any]:
        """
        Close the Redis connections of the stores built for this guard (at
        shutdown, after L{stop}); fires once they are closed.
        """
        parts = self.parts
        closing = []
        if parts.owns_stores:
            for store in {id(s): s for s in (parts.store, parts.revocations)
                          if s is not None}.values():
                close = getattr(store, "close", None)
                if close is not None:
                    closing.append(maybeDeferred(close))
        return DeferredList(closing, consumeErrors=True)

    def stop(self) -> None:
        self._login.stop()
        if self._started:
            self._started = False
            for bundle in self._state.bundles():
                bundle.provider.stop()
        self._bearer.stop()

    # -- requests ---------------------------------------------------------------

    def render(self, request: Request) -> Any:
        self.start()
        ctx = context(request)
        # Passed on to the resource of the route table it was matched in,
        # even if a reload swaps both while it waits.
        ctx.wrapped = self._wrapped
        ctx.pages = self._state.pages
        waiting: List[Deferred[Any]] = []
        request.notifyFinish().addBoth(self._finished, request, ctx, waiting)
        try:
            rest = self._handle(request, ctx)
        except Exception:  # noqa: BLE001 - a bug: logged and answered 500, as on the way that waits
            self._unexpected(Failure(), request, ctx)
            return NOT_DONE_YET
        if rest is not None:
            d = Deferred.fromCoroutine(rest)
            d.addErrback(self._unexpected, request, ctx)
            if ctx.gone:
                d.cancel()
            else:
                waiting.append(d)
        return NOT_DONE_YET

    def _finished(self, result: Any, request: Request, ctx: RequestContext,
                  waiting: List[Deferred[Any]]) -> None:
        """
        Count an answered request (499: the client went away first) by route
        or endpoint. A client that leaves while the guard waits (for the
        store, a refresh, the IdP) cancels the wait: its request goes no
        further and nothing is written to it.
        """
        label = ctx.endpoint or (ctx.route.name if ctx.route is not None else "-")
        self._state.metrics.request(label, 499 if isinstance(result, Failure) else request.code)
        if isinstance(result, Failure):
            ctx.gone = True
            for d in waiting:
                d.cancel()

    def _unexpected(self, failure: Failure, request: Request, ctx: RequestContext) -> None:
        if ctx.gone and failure.check(CancelledError):
            # Our own cancellation when the client went away (see render).
            return
        if failure.check(SessionStoreUnavailable):
            # A store fault is a dependency's, never a bug: wherever on the
            # request's way the store could not answer, the answer is a 503.
            store_unavailable(request, failure.value or SessionStoreUnavailable())
            return
        log.failure("unexpected error while handling a request", failure)
        if request.finished or ctx.gone:
            return
        if request.startedWriting:
            abort(request)
            return
        finish(request, 500, "internal_error", "Something went wrong on our side.")

    def _handle(self, request: Request, ctx: RequestContext) -> Optional[Coroutine[Any, Any, None]]:
        """Decide on C{request}: None once decided, or what remains to be awaited."""
        routes = self._state.routes
        try:
            # One authority from here on: an absolute-form target's replaces Host.
            host = request_authority(request)
            target = target_below_mount(request)
            if request.prepath:
                self._state.note_mount(mount_path(request))
            early = ctx.early_match
            if early is not None and early[0] is routes and early[1] == host \
                    and early[2] == target:
                # Matched already by the early body-size check, in this table.
                match = early[3]
            else:
                match = routes.match(host, target)
            path = match.path if match is not None else \
                normalise_path(split_target(target)[1].split(b"?", 1)[0])
        except BadRequestTarget as e:
            log.info("refused request target: {reason}", reason=e.reason)
            finish(request, 400, "bad_request", f"Bad request target: {e.reason}.")
            return None
        # Read before the managed headers are stripped (Authorization is one
        # of them when the proxy forwards the session's access token that way).
        authorization = request.requestHeaders.getRawHeaders(b"authorization")
        # The headers the client's Connection names go before ours are set,
        # so that naming ours there removes nothing of the proxy's.
        drop_connection_named(request.requestHeaders)
        # Whatever happens next, the client's copies of our headers and our
        # cookies never go further.
        self._state.managed.strip(request)
        self._state.cookies.strip_own(request)

        oidc = self._state.config.oidc
        callback = self._callback_paths.get(path)
        if callback is not None:
            ctx.endpoint = "oidc:callback"
            return self._callback.render(request, callback)
        if path == self._logout_path:
            ctx.endpoint = "oidc:logout"
            return self._logout.render(request)
        if oidc is not None and path == oidc.login_url:
            ctx.endpoint = "oidc:login"
            return self._login.render(request)
        if path == self._prefix or path.startswith(self._prefix + "/"):
            name = path[len(self._prefix):]
            ctx.endpoint = "oidc:" + (name[1:] if name in _ENDPOINTS else "unknown")
            return self._endpoint(request, name, authorization)
        if match is None:
            finish(request, 404, "not_found", "No route matches this URL.")
            return None
        return self._route_auth.decide(request, match, authorization)

    async def _endpoint(self, request: Request, name: str,
                        authorization: Optional[Sequence[bytes]]) -> None:
        if name == "/auth":
            await self._forward_auth.render(request, authorization)
        elif name == "/login" and self._login.here():
            await self._login.render(request)
        elif name == "/userinfo":
            await self._userinfo.render(request)
        elif name == "/backchannel-logout":
            await self._backchannel.render(request)
        elif name == "/health":
            self._health.health(request)
        elif name == "/ready":
            await self._health.ready(request)
        elif name == SCRIPT_PATH:
            show(request, self._state.pages.script_answer)
        else:
            finish(request, 404, "not_found", "No such endpoint.")

    async def _route_request(self, request: Request, match: RouteMatch,
                             authorization: Optional[Sequence[bytes]]) -> None:
        """Authenticate and authorize C{request} for its route, then pass it on."""
        rest = self._route_auth.decide(request, match, authorization)
        if rest is not None:
            await rest

    def _pass(self, request: Request, ctx: RequestContext, match: RouteMatch) -> None:
        """Hand the request to the wrapped resource (the route is known)."""
        ctx.match = match
        ctx.route = match.route
        if ctx.forward_auth is not None:
            self._forward_auth.allowed(request)
            return
        if ctx.gone or request.finished:
            return
        self._state.cookies.refuse_owned(ctx, match.route)
        # The wrapped tree is walked, from where the guard is mounted, along
        # the path the decision was made on, not along Twisted's own split
        # of the raw path (which keeps dot segments: /admin/../public would
        # walk into "admin"); prepath stays as traversal left it.
        request.postpath = [unquote_to_bytes(segment)
                            for segment in match.path.encode("ascii")[1:].split(b"/")]
        if not isinstance(request, ProxyRequest):
            hand_over(request, ctx)
        request.render(getChildForRequest(ctx.wrapped, request))

    def _close_sockets(self, **which: Any) -> None:
        """
        Close the WebSockets of this process that a logout ends (by
        C{session_id}, C{sid} or C{sub}, of one C{provider}): those the
        wrapped proxy keeps.
        """
        sockets = getattr(self._wrapped, "sockets", None)
        if sockets is None:
            return
        closed = sockets.close(**which)
        if closed:
            log.info("logout closed {count} WebSocket(s)", count=closed)
