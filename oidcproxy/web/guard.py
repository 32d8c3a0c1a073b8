"""
L{OIDCGuard}: the authenticating wrapper around any C{IResource}.

In the proxy it wraps L{oidcproxy.proxy.upstream.UpstreamProxy}; embedded in an
existing Twisted server it wraps the application's own resource, which reads
the user with L{identity}. Per request it:

  1. normalises the path once and answers the proxy's own endpoints
     (login, callback, logout, userinfo) under C{endpoints_prefix};
  2. finds the route; strips every identity header the proxy sets (under
     every spelling) and the proxy's own cookies from the request;
  3. loads the session from its cookie and checks its lifetime server-side;
  4. with a live session: sets the identity headers and passes the request
     on; without: a browser navigation is sent to the IdP, anything else gets
     401 with C{WWW-Authenticate: Bearer}. Unauthenticated requests never
     reach the wrapped resource.

Expected failures (bad input, IdP errors) get their own status and page;
anything unexpected is logged with its traceback and answered 500 without
details.
"""

from __future__ import annotations

import base64
import json
import re
from collections import OrderedDict
from html import escape
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple
from urllib.parse import unquote_to_bytes

import attr
from twisted.internet.defer import CancelledError, Deferred, DeferredList, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import IResource, Resource, getChildForRequest
from twisted.web.server import NOT_DONE_YET, Request

from .. import identity as identity  # re-exported: oidcproxy.web.guard.identity
from ..config import Config, RouteConfig, origin_of
from ..core.metrics import Metrics, NullMetrics
from ..core.pages import render_error
from ..core.urls import safe_return_to
from ..oidc.login import LoginFlow
from ..oidc.provider import ClientAuth, Provider, ProviderError, make_http_client
from ..oidc.refresh import Refresher
from ..oidc.tokens import (
    _HMAC_ALGORITHMS,
    ASYMMETRIC_ALGORITHMS,
    IDTokenValidator,
    JWTVerifier,
    KeySet,
    LogoutTokenValidator,
    TokenError,
    peek_header,
)
from ..proxy.headers import (
    canonical_header,
    drop_connection_named,
    header_tokens,
    is_trusted,
    request_authority,
    request_host_header,
)
from ..proxy.routes import (
    BadRequestTarget,
    RouteMatch,
    RouteTable,
    normalise_path,
    request_host,
    split_target,
)
from ..sessions.cookies import (
    CHUNK_SIZE,
    CookieSpec,
    CookieTooLarge,
    OwnedNames,
    chunk_names,
    clear_cookie_headers,
    read_cookie,
    set_cookie_headers,
    strip_cookies,
)
from ..sessions.crypto import Sealer
from ..sessions.session import (
    LIVE,
    ISessionStore,
    Session,
    SessionStoreUnavailable,
    claims_in_use,
    kept_claims,
    new_session_id,
    session_state,
    size_report,
)
from ..sessions.stores.cookie import CookieStore
from .csrf import SAFE_METHODS, CSRFProtection

log = Logger()

ACCESS_TOKEN_HEADER = "X-Forwarded-Access-Token"
ID_TOKEN_HEADER = "X-Forwarded-Id-Token"
_ASYMMETRIC = ("RS", "PS", "ES", "Ed")
_CONSUMED_STATES = 10_000
_MAX_USER_LENGTH = 256
_ENDPOINTS = ("/auth", "/login", "/logout", "/userinfo", "/backchannel-logout", "/health", "/ready")
"""The endpoints under endpoints_prefix (besides the callback)."""


@attr.s(frozen=True, auto_attribs=True)
class Identity:
    """The authenticated user of a request, for embedded applications."""

    sub: str
    claims: Dict[str, Any]
    access_token: Optional[str] = None
    id_token: Optional[str] = None
    expires: Optional[float] = None




def is_browser_navigation(request: Request) -> bool:
    """
    Whether an unauthenticated request should be sent to the login page (a
    top-level browser navigation) rather than get a 401 (API calls, XHR,
    fetches, images, anything but GET/HEAD) — like mod_auth_openidc.
    """
    if _method(request) not in (b"GET", b"HEAD"):
        return False
    headers = request.requestHeaders
    if b"websocket" in header_tokens(headers, b"upgrade"):
        # A WebSocket cannot follow a redirect to a login page.
        return False
    xrw = headers.getRawHeaders(b"x-requested-with")
    if xrw and xrw[0].lower() == b"xmlhttprequest":
        return False
    mode = headers.getRawHeaders(b"sec-fetch-mode")
    if mode and mode[0].lower() != b"navigate":
        return False
    accept = b",".join(headers.getRawHeaders(b"accept", [])).lower()
    return b"text/html" in accept


def header_value(value: Any) -> Optional[bytes]:
    """
    A claim value as a header value: lists comma-joined, booleans as
    C{true}/C{false}. Values with control characters (CR, LF, NUL, ...) are
    dropped (None). Non-ASCII values, and values that could be mistaken for an
    encoded one, are sent as an RFC 2047 encoded word: C{=?UTF-8?B?<base64 of
    the UTF-8>?=}; so are values containing C{=?} anywhere (an RFC 2047
    decoder would otherwise read part of them as encoded), list items that
    contain a comma, and values and items that start or end with a space
    (HTTP parsers strip those: C{" admin"} would arrive as C{admin}).
    """
    if isinstance(value, bool):
        return b"true" if value else b"false"
    if isinstance(value, (int, float)):
        return str(value).encode("ascii")
    if isinstance(value, str):
        return _encode_text(value, comma=False)
    if isinstance(value, list):
        parts = []
        for item in value:
            if isinstance(item, (str, int, float)) and not isinstance(item, bool):
                encoded = _encode_text(str(item), comma=True)
                if encoded is None:
                    return None
                parts.append(encoded)
        return b",".join(parts) if parts else None
    return None


_CONTROL = re.compile("[\x00-\x1f\x7f]")


def _encode_text(text: str, comma: bool) -> Optional[bytes]:
    if _CONTROL.search(text):
        return None
    if text.isascii() and "=?" not in text and not (comma and "," in text) and \
            text.strip(" ") == text:
        return text.encode("ascii")
    return b"=?UTF-8?B?" + base64.b64encode(text.encode("utf-8", "replace")) + b"?="


class _HeaderNames:
    """The spelling-insensitive set of headers the proxy manages."""

    def __init__(self, names: Sequence[str]) -> None:
        self.canonical = frozenset(canonical_header(n.encode("ascii")) for n in names)

    def strip(self, request: Request) -> None:
        headers = request.requestHeaders
        doomed = [name for name, _ in headers.getAllRawHeaders()
                  if canonical_header(name) in self.canonical]
        for name in doomed:
            headers.removeHeader(name)


def _managed_headers(config: Config) -> _HeaderNames:
    """The identity headers of C{config}, which no client may send."""
    managed = [name for name, _ in config.headers] + [ACCESS_TOKEN_HEADER, ID_TOKEN_HEADER]
    if config.oidc is not None and config.oidc.pass_access_token == "authorization":
        managed.append("Authorization")
    return _HeaderNames(managed)


class OIDCGuard(Resource):
    """
    Wrap C{wrapped} so that each request is authenticated per its route.

    @param config: the validated configuration (its C{[[routes]]} give each
        path its auth mode; without routes the whole resource needs login).
    @param wrapped: any C{IResource}: the upstream proxy, or an application.
    @param reactor: for time and, by default, the HTTP client to the IdP.
    @param provider: the IdP client (default: built from C{config.oidc}).
    @param store: the session store (default: the encrypted cookie store).
    @param revocations: for a store that cannot delete sessions (the cookie
        store), a revocation list (C{mark_revoked}, C{revoked_at}, C{lock};
        by C{sub}, C{sid} or C{session_id}) that every logout (local and
        back-channel) writes and every request checks (default: in Redis when
        C{[redis]} is configured).
    @param max_cookie_bytes: the largest session cookie (all chunks) handed
        out. The default fits a plain Twisted C{Site}, whose request headers
        may not exceed 16 KiB in all; the proxy's own site takes more and
        raises it.
    @param metrics: where requests, logins, token failures, refreshes, and the
        IdP and Redis calls of the provider and store built here are counted
        (default: a L{Metrics} of its own, see L{metrics}).
    @param idp_http: the treq C{HTTPClient} of the provider built here
        (default: L{make_http_client} with C{[oidc]}'s TLS settings).
    @param bearer_keys_http: the treq C{HTTPClient} that fetches the keys of
        another issuer's access tokens (C{bearer.issuer}; default:
        L{make_http_client} with C{[oidc]}'s CA bundle and timeout).
    """

    isLeaf = True

    def __init__(
        self,
        config: Config,
        wrapped: IResource,
        reactor: Any = None,
        *,
        provider: Optional[Provider] = None,
        store: Optional[ISessionStore] = None,
        routes: Optional[RouteTable] = None,
        max_cookie_bytes: int = 12 * 1024,
        revocations: Any = None,
        metrics: Optional[NullMetrics] = None,
        idp_http: Any = None,
        bearer_keys_http: Any = None,
    ) -> None:
        super().__init__()
        self._bearer_keys_http = bearer_keys_http
        self._metrics = metrics if metrics is not None else Metrics()
        self._max_cookie_bytes = max_cookie_bytes
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self._config = config
        self._wrapped = wrapped
        self._clock = reactor
        if routes is None:
            route_configs: Sequence[RouteConfig] = config.routes or (
                RouteConfig(index=0, path="/", upstream="http://embedded.invalid"),
            )
            routes = RouteTable(route_configs)
        self._routes = routes
        self._prefix = config.endpoints_prefix
        self._callback_path = config.callback_path
        self._logout_path = config.logout_path
        self._secure = config.cookie_secure
        self._public = config.public_url or ""
        self._public_origin = "/".join(self._public.split("/", 3)[:3]).encode("ascii")

        self._managed = _managed_headers(config)
        self._claim_names = claims_in_use(config)
        self._owned: Optional[OwnedNames] = None
        """The proxy's cookie names in Set-Cookie (see L{_owned_cookies})."""
        self._owned_logged: Set[str] = set()
        """Routes whose answer tried to set one of them (logged once each)."""

        oidc = config.oidc
        self._oidc = oidc
        self._started = False
        self._consumed: OrderedDict[str, float] = OrderedDict()
        self._pending_logins: OrderedDict[str, float] = OrderedDict()
        """Login attempts started here and not back yet: state -> started (for the metric)."""
        self._pending_prune: Any = None
        self._validator: Optional[IDTokenValidator] = None
        self._verifier: Any = None
        self._validator_algs: Optional[Tuple[str, ...]] = None
        s = config.session
        self._session_cookie = CookieSpec(
            name=s.cookie_name, path=s.cookie_path, domain=s.cookie_domain,
            secure=self._secure, http_only=True,
            same_site=s.same_site if (s.same_site != "None" or self._secure) else "Lax",
            max_chunks=s.max_cookie_chunks,
        )
        self._own_cookie_names: List[bytes] = [self._session_cookie.wire_name.encode("ascii")]
        self._csrf: Optional[CSRFProtection] = None
        if config.csrf is not None and s.secrets:
            self._csrf = self._csrf_protection(config)
            self._own_cookie_names.append(self._csrf.cookie.wire_name.encode("ascii"))
        self._provider: Optional[Provider] = None
        self._store: Optional[ISessionStore] = store
        self._owns_stores = store is None
        self.worker_id: Optional[int] = None
        """The worker number when several processes serve (shown by the health endpoint)."""
        self._login: Optional[LoginFlow] = None
        self._refresher: Optional[Refresher] = None
        self._revocations: Any = None
        self._bearer: Any = None
        self._bearer_algs: Optional[Tuple[str, ...]] = None
        self._external: Optional[Provider] = None
        if oidc is not None:
            sealer = Sealer([x.reveal().encode("utf-8") for x in s.secrets])
            if self._store is None:
                self._store = _build_store(config, sealer, reactor, self._metrics)
                if revocations is None and s.store == "cookie" and config.redis is not None:
                    revocations = _build_redis_store(config, sealer, reactor, self._metrics)
            self._revocations = revocations
            if provider is None:
                provider = Provider(
                    oidc.issuer,
                    ClientAuth(
                        client_id=oidc.client_id,
                        method=oidc.token_endpoint_auth_method,
                        client_secret=oidc.client_secret.reveal() if oidc.client_secret else None,
                        private_key_pem=(oidc.private_key.reveal().encode("utf-8")
                                         if oidc.private_key else None),
                        private_key_id=oidc.private_key_id,
                        private_key_alg=oidc.private_key_alg,
                    ),
                    idp_http if idp_http is not None else make_http_client(
                        reactor, oidc.ca_bundle, oidc.timeout, client_cert=oidc.client_cert,
                        client_key=oidc.client_key,
                        insecure_skip_verify=oidc.insecure_skip_verify),
                    reactor,
                    discovery=oidc.discovery,
                    endpoints=dict(oidc.endpoints),
                    discovery_params=dict(oidc.discovery_params),
                    timeout=oidc.timeout,
                    max_response_size=oidc.max_response_size,
                    jwks_ttl=oidc.jwks_cache_ttl,
                    jwks_min_refresh=oidc.jwks_min_refresh_interval,
                    metrics=self._metrics,
                    max_retries=oidc.max_retries,
                    max_concurrent_requests=oidc.max_concurrent_requests,
                    max_queued_requests=oidc.max_queued_requests,
                )
            self._provider = provider
            state = config.state_cookie
            state_secure = state.secure if state.secure is not None else self._secure
            state_spec = CookieSpec(
                name=state.name, path=state.path, domain=state.domain, secure=state_secure,
                http_only=state.http_only,
                same_site=state.same_site if (state.same_site != "None" or state_secure) else "Lax")
            self._refresher = Refresher(
                provider, self._validate_refreshed, self._store, reactor,
                mode=s.refresh, leeway=s.refresh_leeway, interval=s.refresh_interval,
                lease=2 * oidc.timeout + 5.0, metrics=self._metrics,
            )
            self._login = LoginFlow(
                sealer=sealer,
                cookie=state_spec,
                max_age=state.max_age,
                max_attempts=state.max_count,
                client_id=oidc.client_id,
                redirect_uri=config.redirect_uri or "",
                scopes=oidc.scopes,
                pkce=oidc.pkce,
                auth_params=dict(oidc.auth_params),
                clock=reactor,
            )

    def _csrf_protection(self, config: Config) -> CSRFProtection:
        """The CSRF tokens of C{config.csrf}: a cookie beside the session cookie, not HttpOnly."""
        c, s = config.csrf, config.session
        assert c is not None
        secure = c.secure if c.secure is not None else self._secure
        cookie = CookieSpec(
            name=c.cookie_name, path=s.cookie_path, domain=s.cookie_domain, secure=secure,
            http_only=False, same_site=self._session_cookie.same_site
            if (self._session_cookie.same_site != "None" or secure) else "Lax")
        return CSRFProtection([x.reveal().encode("utf-8") for x in s.secrets], cookie,
                              c.header_name)

    def _warn_insecure(self) -> None:
        """Say, at every start and reload, that the IdP's certificate is not checked."""
        if self._oidc is not None and self._oidc.insecure_skip_verify:
            log.warn("oidc.insecure_skip_verify is on: the identity provider's TLS certificate "
                     "is NOT verified, anyone on the network path can impersonate it; "
                     "never use this in production")

    @property
    def store(self) -> Optional[ISessionStore]:
        """The session store (for the admin API)."""
        return self._store

    @property
    def metrics(self) -> NullMetrics:
        """Where this guard counts (its C{registry}, for a L{Metrics})."""
        return self._metrics

    def reconfigure(self, config: Config, routes: RouteTable, wrapped: IResource) -> None:
        """
        Take a reloaded configuration's routes, identity headers, trusted
        proxies and C{[bearer]} settings, and a new resource to pass requests
        to. The IdP client, the session store and the login flow stay as they
        were built: C{config}'s other sections should be the running ones.
        """
        bearer_changed = config.bearer != self._config.bearer
        csrf_changed = config.csrf != self._config.csrf
        self._config = config
        self._routes = routes
        self._managed = _managed_headers(config)
        self._claim_names = claims_in_use(config)
        self._owned = None
        self._owned_logged.clear()
        self._wrapped = wrapped
        self._warn_insecure()
        if csrf_changed:
            if self._csrf is not None:
                self._own_cookie_names.remove(self._csrf.cookie.wire_name.encode("ascii"))
            self._csrf = self._csrf_protection(config) \
                if config.csrf is not None and config.session.secrets else None
            if self._csrf is not None:
                self._own_cookie_names.append(self._csrf.cookie.wire_name.encode("ascii"))
        if bearer_changed:
            # Rebuilt on the next bearer request, with the new settings (its
            # cache of validated tokens goes with the old ones).
            self._bearer = None
            self._bearer_algs = None
            if self._external is not None:
                self._external.stop()
                self._external = None
            if self._started:
                self._prepare_external_keys()

    # -- life cycle -------------------------------------------------------------

    def start(self) -> None:
        """Start loading the IdP's metadata and keys in the background."""
        if not self._started and self._provider is not None:
            self._started = True
            self._warn_insecure()
            self._provider.start()
            self._prepare_external_keys()

    def close(self) -> Deferred[Any]:
        """
        Close the Redis connections of the stores this guard built (at
        shutdown, after L{stop}); fires once they are closed.
        """
        closing = []
        for store in {id(s): s for s in (self._store, self._revocations)
                      if s is not None and self._owns_stores}.values():
            close = getattr(store, "close", None)
            if close is not None:
                closing.append(maybeDeferred(close))
        return DeferredList(closing, consumeErrors=True)

    def stop(self) -> None:
        if self._pending_prune is not None and self._pending_prune.active():
            self._pending_prune.cancel()
        if self._started and self._provider is not None:
            self._started = False
            self._provider.stop()
        if self._external is not None:
            self._external.stop()

    # -- requests ---------------------------------------------------------------

    def render(self, request: Request) -> Any:
        self.start()
        request.notifyFinish().addBoth(self._count_request, request)
        d = Deferred.fromCoroutine(self._handle(request))
        d.addErrback(self._unexpected, request)
        # A client that leaves while the guard waits (for the store, a
        # refresh, the IdP) cancels the wait: its request goes no further.
        request.notifyFinish().addErrback(lambda _: d.cancel())
        return NOT_DONE_YET

    def _count_request(self, result: Any, request: Request) -> None:
        """Count an answered request (499: the client went away first) by route or endpoint."""
        route = getattr(request, "oidcproxy_route", None)
        label = getattr(request, "oidcproxy_endpoint", None) or \
            (route.name if route is not None else "-")
        self._metrics.request(label, 499 if isinstance(result, Failure) else request.code)

    def _unexpected(self, failure: Any, request: Request) -> None:
        gone = getattr(request, "_disconnected", False)
        if gone and failure.check(CancelledError):
            # Our own cancellation when the client went away (see render).
            return
        if failure.check(SessionStoreUnavailable):
            # A store fault is a dependency's, never a bug: wherever on the
            # request's way the store could not answer, the answer is a 503.
            self._store_unavailable(request, failure.value)
            return
        log.failure("unexpected error while handling a request", failure)
        if request.finished or gone:
            return
        if request.startedWriting:
            self._abort(request)
            return
        self._finish(request, 500, "internal_error", "Something went wrong on our side.")

    @staticmethod
    def _abort(request: Request) -> None:
        """
        Part of an answer is out: cut the connection rather than let the
        client wait forever or take a truncated body for whole.
        """
        transport = getattr(request, "transport", None)
        if transport is not None and hasattr(transport, "abortConnection"):
            transport.abortConnection()
        else:
            request.loseConnection()

    def _store_unavailable(self, request: Request, error: BaseException,
                           message: str = "Sessions are temporarily unavailable. "
                                          "Please try again shortly.",
                           cookies: Sequence[bytes] = (),
                           as_json: Optional[bool] = None) -> None:
        """
        The session store (or the revocation list) could not answer: one
        warning line (no traceback) and 503 with C{Retry-After} (JSON for API
        clients, a page for browsers); the session and its cookie are left
        alone.
        """
        log.warn("session store unavailable: {error}", error=str(error) or type(error).__name__)
        if request.finished or getattr(request, "_disconnected", False):
            return
        if request.startedWriting:
            self._abort(request)
            return
        self._finish(request, 503, "session_store_unavailable", message,
                     {b"retry-after": b"5"}, cookies, as_json)

    def _finish(self, request: Request, code: int, error: str, message: str,
                headers: Optional[Dict[bytes, bytes]] = None,
                cookies: Sequence[bytes] = (), as_json: Optional[bool] = None) -> None:
        if getattr(request, "_disconnected", False) or request.finished:
            return
        body = render_error(request, code, error, message, headers, as_json)
        self._add_cookies(request, cookies)
        request.write(body)
        request.finish()

    @staticmethod
    def _add_cookies(request: Request, cookies: Sequence[bytes]) -> None:
        if cookies:
            existing = request.responseHeaders.getRawHeaders(b"set-cookie", [])
            request.responseHeaders.setRawHeaders(b"set-cookie", [*existing, *cookies])

    async def _handle(self, request: Request) -> None:
        # The request is passed on to the resource of the route table it was
        # matched in, even if a reload swaps both while it waits.
        setattr(request, "oidcproxy_wrapped", self._wrapped)  # noqa: B010 - read by _pass
        try:
            # One authority from here on: an absolute-form target's replaces Host.
            host = request_authority(request)
            early = getattr(request, "oidcproxy_early_match", None)
            if early is not None and early[0] is self._routes and early[1] == host \
                    and early[2] == request.uri:
                # Matched already by the early body-size check, in this table.
                match = early[3]
            else:
                match = self._routes.match(host, request.uri)
            path = match.path if match is not None else \
                normalise_path(split_target(request.uri)[1].split(b"?", 1)[0])
        except BadRequestTarget as e:
            log.info("refused request target: {reason}", reason=e.reason)
            self._finish(request, 400, "bad_request", f"Bad request target: {e.reason}.")
            return
        # Read before the managed headers are stripped (Authorization is one
        # of them when the proxy forwards the session's access token that way).
        authorization = request.requestHeaders.getRawHeaders(b"authorization")
        # The headers the client's Connection names go before ours are set,
        # so that naming ours there removes nothing of the proxy's.
        drop_connection_named(request.requestHeaders)
        # Whatever happens next, the client's copies of our headers and our
        # cookies never go further.
        self._managed.strip(request)
        self._strip_own_cookies(request)

        if path == self._callback_path:
            setattr(request, "oidcproxy_endpoint", "oidc:callback")  # noqa: B010 - for the metrics
            await self._callback(request)
            return
        if path == self._logout_path:
            setattr(request, "oidcproxy_endpoint", "oidc:logout")  # noqa: B010 - for the metrics
            await self._logout_endpoint(request)
            return
        if self._oidc is not None and path == self._oidc.login_url:
            setattr(request, "oidcproxy_endpoint", "oidc:login")  # noqa: B010 - for the metrics
            await self._login_endpoint(request)
            return
        if path == self._prefix or path.startswith(self._prefix + "/"):
            name = path[len(self._prefix):]
            setattr(request, "oidcproxy_endpoint",  # noqa: B010 - for the metrics
                    "oidc:" + (name[1:] if name in _ENDPOINTS else "unknown"))
            await self._endpoint(request, name, authorization)
            return
        if match is None:
            self._finish(request, 404, "not_found", "No route matches this URL.")
            return
        await self._route_request(request, match, authorization)

    async def _route_request(self, request: Request, match: RouteMatch,
                             authorization: Optional[Sequence[bytes]]) -> None:
        """Authenticate and authorize C{request} for its route, then pass it on."""
        route = match.route
        setattr(request, "oidcproxy_route", route)  # noqa: B010 - read by the access log
        if route.methods and _method(request).decode("ascii", "replace") not in route.methods:
            self._finish(request, 405, "method_not_allowed", "This method is not allowed here.",
                         {b"allow": ", ".join(route.methods).encode("ascii")})
            return
        if route.auth == "none" or (route.cors_preflight and _is_preflight(request)):
            _decided(request, "public")
            self._pass(request, match)
            return
        if route.auth in ("bearer", "session_or_bearer", "optional"):
            from ..oidc.bearer import bearer_token

            try:
                token = bearer_token(authorization)
            except TokenError as e:
                self._bearer_denied(request, e)
                return
            if token is not None:
                await self._bearer_request(request, match, token, authorization)
                return
            if route.auth == "bearer":
                self._deny(request)
                return
        loaded = await self._session_or_503(request)
        if loaded is None:
            return
        session, clear = loaded
        if session is None:
            if route.auth == "optional":
                _decided(request, "anonymous")
                self._add_headers_on_write(request, clear)
                self._pass(request, match)
                return
            await self._unauthenticated(request, match, clear)
            return
        await self._authenticated(request, match, session)

    # -- authorization ----------------------------------------------------------

    def _authorized(self, request: Request, route: RouteConfig, sub: str,
                    id_claims: Dict[str, Any], access_claims: Optional[Dict[str, Any]]) -> bool:
        """
        Apply the route's rule and allow-lists; answer 403 (and return False)
        when they deny in enforce mode. In audit mode a denial is logged as
        "would deny" and the request goes on.
        """
        policy = route.policy
        if policy is None:
            return True
        decision = policy.evaluate(id_claims, access_claims)
        if decision.allowed:
            return True
        if route.policy_mode == "audit":
            log.info("{route}: would deny {sub}: {reason}", route=route.name, sub=sub,
                     reason=decision.reason)
            _decided(request, "audit_would_deny")
            return True
        log.info("{route}: denied {sub}: {reason}", route=route.name, sub=sub,
                 reason=decision.reason)
        _decided(request, "denied")
        self._finish(request, 403, "forbidden", "You are not allowed to see this page.")
        return False

    async def _bearer_request(self, request: Request, match: RouteMatch, token: str,
                              authorization: Optional[Sequence[bytes]]) -> None:
        """
        An API request with an access token: validate it, authorize, forward
        (the client's C{Authorization} header with it).
        """
        try:
            validator = self._bearer_validator()
            if validator is None:
                self._deny(request)
                return
            claims = await validator.validate(token)
        except TokenError as e:
            self._bearer_denied(request, e)
            return
        except ProviderError as e:
            log.warn("bearer token not checked: identity provider: {reason}", reason=e.reason)
            status = 504 if e.status == 504 else 503
            self._finish(request, status, "idp_unavailable",
                         "The identity provider cannot check the token right now.",
                         {b"retry-after": b"5"}, as_json=True)
            return
        sub = claims.get("sub") if isinstance(claims.get("sub"), str) else \
            str(claims.get("client_id", ""))
        if not self._authorized(request, match.route, sub, claims, claims):
            return
        setattr(request, "oidcproxy_identity", Identity(  # noqa: B010
            sub=sub, claims=claims, access_token=token, expires=claims.get("exp")))
        self._set_user(request, claims, sub)
        _decided(request, "bearer", unless_decided=True)
        if authorization and self._passes_client_authorization:
            # Stripped with the managed headers (pass_access_token =
            # "authorization" puts a session's token there): the token just
            # validated is the request's credential and goes on unchanged.
            request.requestHeaders.setRawHeaders(b"authorization", list(authorization))
        self._set_headers(request, claims)
        self._pass(request, match)

    def _bearer_denied(self, request: Request, error: TokenError) -> None:
        if error.reason == "not_an_access_token":
            log.info("bearer token refused: {reason}: it names the client id as its audience, as "
                     "ID tokens do, and shows no sign of an access token (typ at+jwt, scope, "
                     "client_id); if your IdP's access tokens look so, set bearer.audiences to "
                     "the audience it gives them", reason=error.reason)
        else:
            log.info("bearer token refused: {reason}", reason=error.reason)
        self._metrics.token_invalid("access_token", error.reason)
        # RFC 6750 3: error_description is printable ASCII without quotes
        # or backslashes; the detail of a TokenError never holds the token.
        description = "".join(c for c in error.detail if 0x20 <= ord(c) < 0x7F and c not in '"\\')
        challenge = ('Bearer realm="oidcproxy", error="invalid_token", '
                     f'error_description="{description[:200]}"')
        self._finish(request, 401, "invalid_token", "The access token is not valid.",
                     {b"www-authenticate": challenge.encode("ascii")}, as_json=True)

    @property
    def _passes_client_authorization(self) -> bool:
        """
        Whether a bearer-authenticated request's C{Authorization} is put back
        after the managed headers were stripped: it is one of them only so
        that a session's access token replaces whatever a client sent
        (C{pass_access_token = "authorization"}), unless an identity header
        of C{[headers]} bears the name.
        """
        oidc = self._oidc
        if oidc is None or oidc.pass_access_token != "authorization":
            return False
        return all(canonical_header(name.encode("ascii")) != b"authorization"
                   for name, _ in self._config.headers)

    def _bearer_validator(self) -> Any:
        """
        The access-token validator, built once the keys' source is known
        (None when there is no IdP to ask).

        Access tokens are checked with the issuer's asymmetric keys: never
        with the client secret, which the ID tokens' verifier holds when
        C{oidc.id_token_algorithms} lists an HS* algorithm (whoever holds the
        secret could then sign access tokens for any user). Only
        C{bearer.algorithms} with C{bearer.hmac_secret} allow HS* for them.

        @raise ProviderError: 503 C{not_ready} while the IdP's metadata (which
            names the keys) is not loaded; and see L{_external_validator}.
        """
        from ..oidc.bearer import BearerValidator

        provider, oidc = self._provider, self._oidc
        if provider is None or oidc is None:
            return None
        b = self._config.bearer
        if b.issuer is not None and b.issuer != oidc.issuer:
            return self._external_validator()
        metadata = provider.metadata
        if metadata is None:
            raise ProviderError(503, "not_ready", "the provider metadata is not loaded yet")
        algorithms = tuple(b.algorithms) or tuple(
            a for a in oidc.id_token_algorithms if a in ASYMMETRIC_ALGORITHMS) or tuple(
            a for a in metadata.id_token_signing_alg_values_supported
            if a in ASYMMETRIC_ALGORITHMS) or ("RS256",)
        if self._bearer is None or self._bearer_algs != algorithms:
            self._bearer = BearerValidator(
                provider, self._access_token_verifier(algorithms), self._clock,
                issuer=oidc.issuer, audiences=b.audiences or (oidc.client_id,), leeway=oidc.leeway,
                introspection=b.introspection, introspection_cache=b.introspection_cache,
                cache_size=b.cache_size,
                # The client id is also every ID token's audience.
                require_evidence=not b.audiences)
            self._bearer_algs = algorithms
        return self._bearer

    def _access_token_verifier(self, algorithms: Sequence[str]) -> JWTVerifier:
        """A verifier of C{algorithms}, with bearer.hmac_secret (never the client secret) for HS*."""
        secret = self._config.bearer.hmac_secret
        hmac = any(a in _HMAC_ALGORITHMS for a in algorithms)
        return JWTVerifier(algorithms, hmac_secret=secret.reveal().encode("utf-8")
                           if hmac and secret is not None else None)

    def _external_validator(self) -> Any:
        """
        The validator of another issuer's access tokens (C{bearer.issuer}).

        @raise ProviderError: 503 C{not_ready} when its C{jwks_file} cannot be
            loaded (tried again on the next request).
        """
        from ..oidc.bearer import BearerValidator

        if self._bearer is None:
            b, oidc = self._config.bearer, self._oidc
            assert b.issuer is not None and oidc is not None
            algorithms = tuple(b.algorithms) or _EXTERNAL_ALGORITHMS
            if all(a in _HMAC_ALGORITHMS for a in algorithms):
                keys: Any = _StaticKeys(KeySet(()))  # checked with bearer.hmac_secret alone
            else:
                keys = self._external_keys()
            self._bearer = BearerValidator(
                keys, self._access_token_verifier(algorithms), self._clock, issuer=b.issuer,
                audiences=b.audiences, leeway=oidc.leeway, cache_size=b.cache_size)
        return self._bearer

    def _prepare_external_keys(self) -> None:
        """Start loading another issuer's keys at once, not on the first bearer request."""
        b, oidc = self._config.bearer, self._oidc
        if oidc is None or b.issuer is None or b.issuer == oidc.issuer:
            return
        try:
            self._external_validator()
        except ProviderError:
            pass  # logged; tried again on the next bearer request

    def _external_keys(self) -> Any:
        """
        The keys of another issuer's access tokens: a JWKS file, or a
        keys-only provider fetching (and refetching) its jwks_uri, or its
        discovery document's.

        @raise ProviderError: 503 C{not_ready} when the JWKS file cannot be
            read or holds no JWKS.
        """
        b, oidc = self._config.bearer, self._oidc
        assert b.issuer is not None and oidc is not None
        if b.jwks_file is not None:
            try:
                with open(b.jwks_file, encoding="utf-8") as f:
                    return _StaticKeys(KeySet.from_jwks(json.load(f)))
            except (OSError, ValueError, TokenError) as e:
                log.error("bearer.jwks_file {path} cannot be loaded: {error}", path=b.jwks_file,
                          error=str(e))
                raise ProviderError(503, "not_ready", "bearer.jwks_file cannot be loaded") from None
        endpoints = {}
        if b.jwks_uri is not None:
            # Only the keys are ever used: the other endpoints a provider
            # needs without discovery are never called.
            endpoints = {"jwks_uri": b.jwks_uri, "authorization_endpoint": b.jwks_uri,
                         "token_endpoint": b.jwks_uri}
        keys = Provider(
            b.issuer, ClientAuth(client_id=oidc.client_id, method="none"),
            self._bearer_keys_http if self._bearer_keys_http is not None
            else make_http_client(self._clock, oidc.ca_bundle, oidc.timeout), self._clock,
            discovery=b.jwks_uri is None, endpoints=endpoints, timeout=oidc.timeout,
            max_response_size=oidc.max_response_size, jwks_ttl=oidc.jwks_cache_ttl,
            jwks_min_refresh=oidc.jwks_min_refresh_interval)
        keys.start()
        self._external = keys
        return keys

    def _strip_own_cookies(self, request: Request) -> None:
        values = request.requestHeaders.getRawHeaders(b"cookie")
        if not values:
            return
        names: Any = _OwnCookies(self._own_cookie_names, self._login)
        kept = strip_cookies(values, names)
        if kept:
            request.requestHeaders.setRawHeaders(b"cookie", kept)
        else:
            request.requestHeaders.removeHeader(b"cookie")

    @classmethod
    def _add_cookies_on_write(cls, request: Request, cookies: Sequence[bytes]) -> None:
        cls._add_headers_on_write(request, cookies)

    @staticmethod
    def _add_headers_on_write(request: Request, cookies: Sequence[bytes],
                              headers: Sequence[Tuple[bytes, str]] = ()) -> None:
        """
        Send C{cookies} (and C{headers}) with whatever answer the wrapped
        resource gives, beside its own (see L{_AnswerHeaders}).
        """
        if not cookies and not headers:
            return
        pending = _answer_headers(request)
        pending.cookies.extend(cookies)
        pending.headers.extend(headers)

    def _owned_cookies(self) -> OwnedNames:
        """The names of the session cookie (and chunks), the state cookies and the CSRF cookie."""
        if self._owned is None:
            names = [self._session_cookie.name]
            if self._csrf is not None:
                names.append(self._csrf.cookie.name)
            prefixes = [self._config.state_cookie.name] if self._login is not None else []
            self._owned = OwnedNames(names, prefixes)
        return self._owned

    def _refuse_owned_cookies(self, request: Request, route: RouteConfig) -> None:
        """
        From here on the wrapped resource answers: none of its C{Set-Cookie}
        may set one of the proxy's cookies (an upstream replacing the
        session cookie would log the browser in as someone else, or pin a
        session on it). Each is dropped; the first of each route is logged.
        """
        owned = self._owned_cookies()
        logged = self._owned_logged

        def keep(value: bytes) -> bool:
            name = owned.claimed(value)
            if name is None:
                return True
            if route.name not in logged:
                logged.add(route.name)
                shown = "".join(chr(c) if 0x21 <= c < 0x7F else "?" for c in name[:64])
                log.warn("{route} answered a Set-Cookie for the proxy's own cookie {name}: "
                         "dropped (this and any later ones of this route; logged once)",
                         route=route.name, name=shown)
            return False

        _answer_headers(request).keep = keep

    def _pass(self, request: Request, match: RouteMatch) -> None:
        """Hand the request to the wrapped resource (the route is known)."""
        setattr(request, "oidcproxy_match", match)  # noqa: B010 - read by UpstreamProxy
        setattr(request, "oidcproxy_route", match.route)  # noqa: B010 - read by the access log
        if getattr(request, "oidcproxy_forward_auth", None) is not None:
            self._forward_auth_allowed(request)
            return
        self._refuse_owned_cookies(request, match.route)
        # The wrapped tree is walked along the path the decision was made on,
        # not along Twisted's own split of the raw path (which keeps dot
        # segments: /admin/../public would walk into "admin").
        normalised = match.path.encode("ascii")
        request.path = normalised
        request.prepath = []
        request.postpath = [unquote_to_bytes(segment) for segment in normalised[1:].split(b"/")]
        resource = getChildForRequest(getattr(request, "oidcproxy_wrapped", self._wrapped),
                                      request)
        request.render(resource)

    # -- sessions ---------------------------------------------------------------

    async def _session(self, request: Request) -> Tuple[Optional[Session], List[bytes]]:
        """
        The request's live session, or None and the Set-Cookie values that
        clear a dead one (tampered, unknown, expired, idle).
        """
        cookies = request.received_cookies
        present = chunk_names(self._session_cookie, cookies)
        if not present or self._store is None:
            return None, []
        value = read_cookie(self._session_cookie, cookies)
        session = None
        if value is not None:
            session = await self._store.load(value)
        if session is not None:
            state = session_state(session, self._clock.seconds(), self._config.session.idle_timeout)
            if state == LIVE and self._revocations is not None:
                revoked = await self._revocations.revoked_at(
                    sub=session.sub, sid=session.sid, session_id=session.id)
                if revoked is not None and revoked >= session.created:
                    state = "revoked"
            if state == LIVE:
                return session, []
            log.info("session ended: {state}", state=state)
            await self._forget(session)
            session = None
        return None, clear_cookie_headers(self._session_cookie, present)

    async def _session_or_503(
        self, request: Request
    ) -> Optional[Tuple[Optional[Session], List[bytes]]]:
        """L{_session}, or None once a 503 is answered because the store cannot."""
        try:
            return await self._session(request)
        except SessionStoreUnavailable as e:
            self._store_unavailable(request, e)
            return None

    async def _forget(self, session: Session) -> None:
        """Drop a session that has ended anyway (expired, idle, revoked, refused at refresh)."""
        assert self._store is not None
        try:
            await self._store.delete(session)
        except SessionStoreUnavailable:
            log.warn("could not delete an ended session from the store")

    async def _end_session(self, session: Session) -> None:
        """
        End a live session for good (logout, a new login in its browser):
        delete it from the store and, with a revocation list (cookie
        sessions with Redis), revoke its id there, until the latest a copy
        of its cookie could still be valid, so that no copy of the cookie
        works any more.

        @raise SessionStoreUnavailable: the store or the list could not do it.
        """
        assert self._store is not None
        await self._store.delete(session)
        if self._revocations is not None:
            lifetime = self._config.session.lifetime
            ttl = max(session.expires, session.created + lifetime) - self._clock.seconds()
            await self._revocations.mark_revoked(session_id=session.id, ttl=max(1.0, ttl))

    async def _authenticated(self, request: Request, match: RouteMatch, session: Session) -> None:
        if not self._websocket_origin_allowed(request, match.route):
            return
        now = self._clock.seconds()
        if self._csrf is not None and not self._csrf_passed(request, session, now):
            return
        idle = self._config.session.idle_timeout
        sliding = self._config.session.sliding
        # Due on the session as it was loaded (a refresh resets last_seen).
        renew = idle > 0 and now - session.last_seen >= min(60.0, idle / 4)
        refresher = self._refresher
        if refresher is not None and refresher.due(session, now):
            outcome = await refresher.refresh(session)
            if outcome.session is not None and outcome.store_unavailable:
                # Not served on tokens the store does not hold yet (the next
                # request of the session saves them); a 503 (see _unexpected).
                raise SessionStoreUnavailable("a refreshed session could not be saved")
            if outcome.ended:
                await self._forget(session)
                present = chunk_names(self._session_cookie, request.received_cookies)
                await self._unauthenticated(
                    request, match, clear_cookie_headers(self._session_cookie, present))
                return
            if outcome.session is not None:
                session = outcome.session
                value = outcome.cookie_value
                # The refresh saved it seen now; a sliding one is saved again
                # below with its new expiry (and one cookie set for both).
                renew = sliding
                if not sliding and value is not None and value != read_cookie(
                        self._session_cookie, request.received_cookies):
                    try:
                        self._add_cookies_on_write(
                            request, self._session_cookie_headers(request, session, value, now))
                    except CookieTooLarge:
                        # Served on the refreshed tokens; the browser keeps
                        # its cookie (the next refresh is due again).
                        self._too_large(session, value, "refresh not kept")
            elif outcome.store_unavailable:
                # No refresh (the store could not lock or be read): the
                # access token is served while it is valid, then 503.
                expires = session.access_token_expires
                if expires is not None and now >= expires:
                    raise SessionStoreUnavailable("no refresh: the session store did not answer")
            elif not self._usable_during_outage(session, now):
                self._finish(request, 503, "idp_unavailable",
                             "The identity provider cannot be reached to renew your session. "
                             "Please try again shortly.", {b"retry-after": b"5"})
                return
        route = match.route
        if route.policy is not None and not self._authorized(
                request, route, session.sub, session.claims, _unverified_claims(session)):
            return
        if renew:
            # Keep the idle clock (which lives inside the session) moving;
            # a sliding session's expiry (cookie, Redis TTL) moves with it.
            assert self._store is not None
            session = session.touched(now)
            if sliding:
                session = attr.evolve(session, expires=self._sliding_expiry(session.created, now))
            # A store that cannot save ends as a 503 (see _unexpected).
            value = await self._store.save(session)
            try:
                self._add_cookies_on_write(
                    request, self._session_cookie_headers(request, session, value, now))
            except CookieTooLarge:
                # Served; the browser keeps its cookie (the idle clock in it
                # does not move).
                self._too_large(session, value, "session not renewed")
        if route.session_expiry_headers:
            hints = [(b"x-auth-session-expires-in", str(max(0, int(session.expires - now))))]
            if idle > 0:
                hints.append((b"x-auth-idle-expires-in",
                              str(max(0, int(session.last_seen + idle - now)))))
            self._add_headers_on_write(request, [], hints)
        self._set_identity(request, session)
        self._pass(request, match)

    def _websocket_origin_allowed(self, request: Request, route: RouteConfig) -> bool:
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
        allowed = route.websocket_origins if route.websocket_origins is not None \
            else self._config.websocket_origins
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
        _decided(request, "origin_refused")
        self._metrics.websocket_upgrade("origin_refused")
        self._finish(request, 403, "websocket_origin_refused",
                     "WebSocket connections are accepted only from this site's own pages "
                     "(or the origins in websocket_origins).", as_json=True)
        return False

    def _own_origin(self) -> Optional[str]:
        """public_url's origin as a browser sends it in C{Origin}; None without public_url."""
        try:
            return origin_of(self._public_origin.decode("ascii")) if self._public else None
        except ValueError:
            return None

    def _sliding_expiry(self, created: float, now: float) -> float:
        """A sliding session's end: idle_timeout from now, never beyond lifetime from login."""
        s = self._config.session
        return min(created + s.lifetime, now + s.idle_timeout)

    def _csrf_passed(self, request: Request, session: Session, now: float) -> bool:
        """
        The CSRF check of a session-authenticated request: a safe method
        passes (and gets a token cookie when it has none of this session);
        any other needs the header matching the cookie, or gets 403.
        """
        csrf = self._csrf
        assert csrf is not None
        cookies = request.received_cookies
        issue = csrf.cookie_headers(cookies, session.id, int(session.expires - now))
        if _method(request) in SAFE_METHODS:
            self._add_cookies_on_write(request, issue)
            return True
        reason = csrf.refusal(cookies, request.requestHeaders.getRawHeaders(
            csrf.header_name.encode("ascii")), session.id)
        if reason is None:
            return True
        log.info("CSRF check failed for {sub}: {reason}", sub=session.sub, reason=reason)
        _decided(request, "csrf_refused")
        self._finish(request, 403, "csrf_token_invalid",
                     f"This request needs the {csrf.header_name} header holding the CSRF token "
                     f"of the {csrf.cookie.wire_name} cookie.", cookies=issue)
        return False

    def _usable_during_outage(self, session: Session, now: float) -> bool:
        """
        The IdP could not renew the tokens: serve while the access token is
        still valid, then for up to session.idp_outage_grace after it expired.
        """
        expires = session.access_token_expires
        if expires is None or now < expires:
            return True
        grace = self._config.session.idp_outage_grace
        if grace > 0 and now < expires + grace:
            log.warn("serving {sub} with an expired access token: the IdP is unreachable "
                     "(idp_outage_grace)", sub=session.sub)
            return True
        return False

    def _validate_refreshed(self, id_token: str, keys: Any) -> Dict[str, Any]:
        """
        A refreshed ID token: the usual checks, without a nonce; the claims
        the session keeps of it (see L{_session_claims}).
        """
        assert self._provider is not None and self._provider.metadata is not None
        validator = self._validator_for(self._provider.metadata.id_token_signing_alg_values_supported)
        try:
            return self._session_claims(validator.validate(id_token, keys, None))
        except TokenError as e:
            self._metrics.token_invalid("id_token", e.reason)
            raise

    def _session_claims(self, claims: Dict[str, Any]) -> Dict[str, Any]:
        """
        The claims a session keeps: all of them, or with C{session.claims =
        "used"} only those the proxy reads (L{claims_in_use}).
        """
        if self._config.session.claims == "used":
            return kept_claims(claims, self._claim_names)
        return claims

    def _session_cookie_headers(self, request: Request, session: Session, value: str,
                                now: float) -> List[bytes]:
        """
        The Set-Cookie values of a session's cookie (replacing the chunks the
        request carried).

        @raise CookieTooLarge: the value needs more than max_cookie_chunks
            cookies, or more than max_cookie_bytes in all.
        """
        if len(value) > self._max_cookie_bytes:
            raise CookieTooLarge(f"{len(value)} bytes; at most {self._max_cookie_bytes}")
        return set_cookie_headers(
            self._session_cookie, value, int(session.expires - now),
            chunk_names(self._session_cookie, request.received_cookies))

    def _too_large(self, session: Session, value: str, what: str) -> None:
        """
        Log why a session does not fit in the session cookie: its size and
        the limit, what in it is large, and what would make it fit.
        """
        s = self._config.session
        limit = min(s.max_cookie_chunks * CHUNK_SIZE, self._max_cookie_bytes)
        with_tokens = s.store_tokens
        report, largest = size_report(session, with_tokens)
        fixes = ['session.store = "redis" (the cookie then holds only a session id)']
        if s.claims == "all":
            kept = kept_claims(session.claims, self._claim_names)
            fixes.append(
                f'session.claims = "used" (the claims would take '
                f'{len(json.dumps(kept, separators=(",", ":"))):,} bytes: only those the '
                "[headers], the routes' rules and allow-lists and username_claim read)")
        if with_tokens and session.id_token:
            fixes.append("session.store_tokens = false (the tokens stay out of the cookie: "
                         f"the ID token alone is {len(session.id_token):,} bytes; no token "
                         "forwarding, refresh or id_token_hint then)")
        if s.max_cookie_chunks * CHUNK_SIZE <= self._max_cookie_bytes:
            fixes.append(f"raise session.max_cookie_chunks (now {s.max_cookie_chunks}, of "
                         f"{CHUNK_SIZE} bytes each; at most 20) as far as the browsers', load "
                         "balancers' and upstream's limits on the Cookie header allow")
        else:
            fixes.append("pass a larger max_cookie_bytes to the guard, with a Site that accepts "
                         "request headers that large")
        log.warn(
            "{what}: the session of {sub} does not fit in the session cookie: {size:,} bytes "
            "sealed, at most {limit:,}; the largest part: {largest}; it holds {report}. "
            "What helps: {fixes}",
            what=what, sub=session.sub, size=len(value), limit=limit,
            largest=largest[0].replace("_", " ") if largest else "-", report=report,
            fixes="; or ".join(fixes))

    def _set_identity(self, request: Request, session: Session) -> None:
        # For a WebSocket, which logout of this session closes.
        setattr(request, "oidcproxy_session", session)  # noqa: B010
        setattr(request, "oidcproxy_identity", Identity(  # noqa: B010
            sub=session.sub, claims=session.claims, access_token=session.access_token,
            id_token=session.id_token, expires=session.expires))
        self._set_user(request, session.claims, session.sub)
        _decided(request, "session", unless_decided=True)
        self._set_headers(request, session.claims)
        headers = request.requestHeaders
        oidc = self._oidc
        if oidc is not None and session.access_token:
            if oidc.pass_access_token == "authorization":
                headers.setRawHeaders(b"authorization",
                                      [b"Bearer " + session.access_token.encode("ascii")])
            elif oidc.pass_access_token == "header":
                headers.setRawHeaders(ACCESS_TOKEN_HEADER.encode("ascii"),
                                      [session.access_token.encode("ascii")])
        if oidc is not None and oidc.pass_id_token and session.id_token:
            headers.setRawHeaders(ID_TOKEN_HEADER.encode("ascii"),
                                  [session.id_token.encode("ascii")])

    def _set_user(self, request: Request, claims: Dict[str, Any], sub: str) -> None:
        """The access log's user: the username_claim's value, or the sub without it."""
        name = _claim(claims, self._config.username_claim)
        if isinstance(name, (int, float)) and not isinstance(name, bool):
            name = str(name)
        if not isinstance(name, str) or not name:
            name = sub
        # One log line per request: no control characters, no endless names.
        name = name[:_MAX_USER_LENGTH]
        if not name.isprintable():
            name = "".join(c if c.isprintable() else "?" for c in name)
        setattr(request, "oidcproxy_user", name)  # noqa: B010 - read by the access log

    def _set_headers(self, request: Request, claims: Dict[str, Any]) -> None:
        """The identity headers of C{claims}."""
        headers = request.requestHeaders
        for name, candidates in self._config.headers:
            for claim in candidates:
                value = _claim(claims, claim)
                if value is None:
                    continue
                encoded = header_value(value)
                if encoded is None:
                    log.info("claim {claim} not sent as {header}: unusable value",
                             claim=claim, header=name)
                    continue
                headers.setRawHeaders(name.encode("ascii"), [encoded])
                break

    async def _unauthenticated(self, request: Request, match: RouteMatch,
                               clear: List[bytes]) -> None:
        if not is_browser_navigation(request) or \
                getattr(request, "oidcproxy_forward_auth", None) is False:
            self._deny(request, clear)
            return
        oidc = self._oidc
        if oidc is not None and (oidc.disable_login or oidc.login_url):
            # Logins start elsewhere (login_url), or not at all here.
            _decided(request, "unauthenticated")
            message = "Authentication is required."
            if oidc.login_url:
                message += f" Log in at {oidc.login_url}."
            self._finish(request, 401, "unauthenticated", message,
                         {b"www-authenticate": b'Bearer realm="oidcproxy"'}, clear)
            return
        return_to = match.path
        if match.query is not None:
            return_to += "?" + match.query.decode("ascii")
        await self._start_login(request, safe_return_to(return_to) or "/", clear)

    def _deny(self, request: Request, cookies: Sequence[bytes] = ()) -> None:
        """401 for a client that is not a browser navigation: always JSON."""
        _decided(request, "unauthenticated")
        self._finish(request, 401, "unauthenticated", "Authentication is required.",
                     {b"www-authenticate": b'Bearer realm="oidcproxy"'}, cookies, as_json=True)

    # -- login ------------------------------------------------------------------

    async def _start_login(self, request: Request, return_to: str,
                           cookies: Sequence[bytes] = ()) -> None:
        provider, login = self._provider, self._login
        if provider is None or login is None:
            self._deny(request, cookies)
            return
        metadata = provider.metadata if provider.ready else None
        if metadata is None:
            self._metrics.login_failed("idp_not_ready")
            self._finish(request, 503, "idp_unavailable",
                         "The identity provider cannot be reached yet. Please try again shortly.",
                         {b"retry-after": b"5"}, cookies)
            return
        location, state_cookies = login.start(
            request.received_cookies, return_to, metadata.authorization_endpoint)
        _decided(request, "login")
        self._metrics.login_started()
        self._login_pending(location)
        self._redirect(request, location, [*cookies, *state_cookies])

    def _respond(self, request: Request, code: int, content_type: bytes, body: bytes,
                 headers: Optional[Dict[bytes, bytes]] = None,
                 cookies: Sequence[bytes] = ()) -> None:
        """Answer a request the guard handles itself: never cached, no body for HEAD."""
        if getattr(request, "_disconnected", False) or request.finished:
            return
        request.setResponseCode(code)
        out = request.responseHeaders
        out.removeHeader(b"server")
        out.setRawHeaders(b"content-type", [content_type])
        out.setRawHeaders(b"cache-control", [b"no-store"])
        out.setRawHeaders(b"content-length", [str(len(body)).encode("ascii")])
        for name, value in (headers or {}).items():
            out.setRawHeaders(name, [value])
        self._add_cookies(request, cookies)
        if request.method != b"HEAD":
            request.write(body)
        request.finish()

    def _redirect(self, request: Request, location: str, cookies: Sequence[bytes] = (),
                  code: int = 302) -> None:
        body = b'<!DOCTYPE html><a href="' + escape(location).encode("ascii") + b'">Continue</a>'
        self._respond(request, code, b"text/html; charset=utf-8", body,
                      {b"location": location.encode("ascii")}, cookies)

    def _validator_for(self, advertised: Sequence[str]) -> IDTokenValidator:
        assert self._oidc is not None
        oidc = self._oidc
        algs = tuple(oidc.id_token_algorithms) or tuple(
            a for a in advertised if a.startswith(_ASYMMETRIC))
        if self._validator is None or self._validator_algs != algs:
            secret = oidc.client_secret.reveal().encode("utf-8") \
                if oidc.client_secret and any(a.startswith("HS") for a in algs) else None
            verifier = JWTVerifier(algs or ("RS256",), hmac_secret=secret)
            self._verifier = verifier
            self._validator = IDTokenValidator(oidc.issuer, oidc.client_id, verifier,
                                               self._clock, leeway=oidc.leeway,
                                               max_age=oidc.iat_slack)
            self._validator_algs = algs
        return self._validator

    def _login_pending(self, location: str) -> None:
        """Count the attempt whose authorization URL is C{location} until it comes back or expires."""
        from urllib.parse import parse_qs, urlsplit

        states = parse_qs(urlsplit(location).query).get("state")
        if not states:
            return
        self._pending_logins[states[0]] = self._clock.seconds()
        self._prune_pending_logins()

    def _prune_pending_logins(self) -> None:
        """Drop the attempts older than the state cookie's max_age; update the gauge."""
        pending = self._pending_logins
        max_age = self._config.state_cookie.max_age
        now = self._clock.seconds()
        while pending:
            oldest = next(iter(pending.values()))
            if now - oldest < max_age and len(pending) <= _CONSUMED_STATES:
                break
            pending.popitem(last=False)
        self._metrics.login_attempts_pending(len(pending))
        call = self._pending_prune
        if pending and (call is None or not call.active()):
            wait = max(0.0, next(iter(pending.values())) + max_age - now)
            self._pending_prune = self._clock.callLater(wait, self._prune_pending_logins)

    def _consume_state(self, state: str) -> bool:
        """Remember a consumed state (this process); False if seen before."""
        if self._pending_logins.pop(state, None) is not None:
            self._metrics.login_attempts_pending(len(self._pending_logins))
        now = self._clock.seconds()
        consumed = self._consumed
        while consumed:
            oldest, when = next(iter(consumed.items()))
            if now - when < self._config.state_cookie.max_age and len(consumed) < _CONSUMED_STATES:
                break
            consumed.popitem(last=False)
        if state in consumed:
            return False
        consumed[state] = now
        return True

    async def _callback(self, request: Request) -> None:
        provider, login, store = self._provider, self._login, self._store
        if provider is None or login is None or store is None:
            self._finish(request, 404, "not_found", "No route matches this URL.")
            return
        if request.method != b"GET":
            self._finish(request, 405, "method_not_allowed", "The callback takes GET only.",
                         {b"allow": b"GET"})
            return
        args = request.args
        for key in (b"state", b"code", b"error", b"iss", b"error_description"):
            if len(args.get(key, [])) > 1:
                log.info("callback refused: duplicated parameter {name}", name=key.decode())
                self._metrics.login_failed("bad_callback")
                self._finish(request, 400, "bad_callback", "The login answer is malformed.")
                return
        state = _arg(args, b"state")
        attempt, reason, cookies = (None, "missing_state", []) if not state else \
            login.consume(request.received_cookies, state)
        error = _arg(args, b"error")
        if error is not None:
            shown = error if error.replace("_", "").isalnum() and len(error) <= 64 else "error"
            log.info("login refused by the identity provider: {error}", error=shown)
            self._metrics.login_failed("idp_refused")
            self._finish(request, 403, "login_refused",
                         f"The identity provider refused the login ({shown}).", cookies=cookies)
            return
        if attempt is None:
            log.info("login failed: {reason}", reason=reason)
            self._metrics.login_failed(reason)
            self._finish(request, 401 if state else 400, "login_failed",
                         "This login attempt is unknown or has expired. Please start again.",
                         cookies=cookies)
            return
        if not self._consume_state(attempt.state):
            log.info("login failed: {reason}", reason="state_replayed")
            self._metrics.login_failed("state_replayed")
            self._finish(request, 401, "login_failed", "This login attempt was already used.",
                         cookies=cookies)
            return
        try:
            metadata = provider.metadata
            if metadata is None:
                raise ProviderError(503, "not_ready", "discovery has not succeeded yet")
            iss = _arg(args, b"iss")
            if (iss is not None or metadata.authorization_response_iss_parameter_supported) \
                    and iss != metadata.issuer:
                raise TokenError("bad_callback_iss", "the iss parameter is not the issuer")
            code = _arg(args, b"code")
            if not code:
                raise TokenError("missing_code", "the callback has no code")
            tokens = await provider.exchange_code(
                code, self._config.redirect_uri or "", attempt.code_verifier)
            id_token = tokens["id_token"]
            access_token = tokens.get("access_token")
            header = peek_header(id_token)
            kid = header.get("kid")
            keys = await provider.keys_for(kid if isinstance(kid, str) else None)
            try:
                claims = self._validator_for(metadata.id_token_signing_alg_values_supported).validate(
                    id_token, keys, attempt.nonce, access_token)
            except TokenError as e:
                self._metrics.token_invalid("id_token", e.reason)
                raise
            if self._oidc is not None and self._oidc.userinfo and access_token:
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
        except TokenError as e:
            log.warn("login failed: {reason}: {detail}", reason=e.reason, detail=e.detail)
            self._metrics.login_failed(e.reason)
            self._finish(request, 401, "login_failed",
                         "The login could not be verified. Please start again.", cookies=cookies)
            return
        except ProviderError as e:
            log.warn("login failed: identity provider: {reason}: {detail}",
                     reason=e.reason, detail=e.detail)
            self._metrics.login_failed("idp_" + e.reason)
            status = e.status if e.status in (401, 502, 503, 504) else 502
            message = {
                401: "The login could not be completed. Please start again.",
                503: "The identity provider cannot be reached yet. Please try again shortly.",
                504: "The identity provider did not answer in time. Please try again.",
            }.get(status, "The identity provider gave an unexpected answer. Please try again.")
            self._finish(request, status, "login_failed", message,
                         {b"retry-after": b"5"} if status == 503 else None, cookies=cookies)
            return

        now = self._clock.seconds()
        expires_in = tokens.get("expires_in")
        session = Session(
            id=new_session_id(),
            sub=claims["sub"],
            claims=self._session_claims(claims),
            created=now,
            last_seen=now,
            expires=self._sliding_expiry(now, now) if self._config.session.sliding
            else now + self._config.session.lifetime,
            id_token=id_token,
            access_token=access_token,
            access_token_expires=now + expires_in if isinstance(expires_in, int) else None,
            refresh_token=tokens.get("refresh_token"),
            sid=claims.get("sid") if isinstance(claims.get("sid"), str) else None,
        )
        # A fresh session id on every login (no fixation); the old session,
        # if any, is ended.
        try:
            old, _ = await self._session(request)
            if old is not None:
                await self._end_session(old)
            value = await store.save(session)
        except SessionStoreUnavailable as e:
            # The code is spent: the user starts again once the store is back.
            self._metrics.login_failed("session_store_unavailable")
            self._store_unavailable(request, e, cookies=cookies)
            return
        try:
            session_cookies = self._session_cookie_headers(request, session, value, now)
        except CookieTooLarge:
            # The IdP's answer is more than the cookie store can hold: a
            # fault of what the IdP sent, for the administrator to act on
            # (the log line says how); never a 500 and no use retrying.
            self._too_large(session, value, "login failed")
            self._metrics.login_failed("session_too_large")
            self._finish(request, 502, "session_too_large",
                         "You signed in, but the identity provider sent more about you than "
                         "this site can keep in its session cookie, so the sign-in cannot be "
                         "completed. Please tell the site's administrator: the proxy's log "
                         "says what to change.", cookies=cookies)
            return
        log.info("login of {sub}", sub=session.sub)
        self._metrics.login_completed()
        self._redirect(request, self._landing_after_login(attempt.return_to),
                       [*cookies, *session_cookies])

    def _landing_after_login(self, return_to: str) -> str:
        """post_login_redirect_url when configured (a path on public_url, or a URL), else the return-to."""
        fixed = self._oidc.post_login_redirect_url if self._oidc is not None else None
        target = fixed or return_to
        return self._public + target if target.startswith("/") else target

    # -- endpoints --------------------------------------------------------------

    async def _endpoint(self, request: Request, name: str,
                        authorization: Optional[Sequence[bytes]] = None) -> None:
        if name == "/auth":
            await self._forward_auth(request, authorization)
        elif name == "/login" and self._login_here():
            await self._login_endpoint(request)
        elif name == "/userinfo":
            await self._userinfo_endpoint(request)
        elif name == "/backchannel-logout":
            await self._backchannel_logout(request)
        elif name == "/health":
            self._health_endpoint(request)
        elif name == "/ready":
            await self._ready_endpoint(request)
        else:
            self._finish(request, 404, "not_found", "No such endpoint.")

    def _login_here(self) -> bool:
        """Whether C{endpoints_prefix + "/login"} starts logins (not with login_url or disable_login)."""
        return self._oidc is None or not (self._oidc.disable_login or self._oidc.login_url)

    def _health_endpoint(self, request: Request) -> None:
        """Liveness: the process serves requests. No authentication, never cached."""
        if request.method not in (b"GET", b"HEAD"):
            self._finish(request, 405, "method_not_allowed", "Use GET.", {b"allow": b"GET, HEAD"},
                         as_json=True)
            return
        document: Dict[str, Any] = {"status": "ok"}
        if self.worker_id is not None:
            document["worker"] = self.worker_id
        self._respond(request, 200, b"application/json", json.dumps(document).encode("utf-8"))

    async def _ready_endpoint(self, request: Request) -> None:
        """
        Readiness: 200 once the IdP's discovery document and keys are loaded
        and Redis (when sessions or the revocation list live there) answers a
        PING within its command timeout; else 503 naming what is not ready.
        No authentication, never cached.
        """
        if request.method not in (b"GET", b"HEAD"):
            self._finish(request, 405, "method_not_allowed", "Use GET.", {b"allow": b"GET, HEAD"},
                         as_json=True)
            return
        checks: Dict[str, str] = {}
        if self._provider is not None:
            checks["idp"] = "ok" if self._provider.ready else \
                "the discovery document or the signing keys are not loaded yet"
        stores = [self._store] if self._config.session.store == "redis" else []
        stores.append(self._revocations)
        for store in stores:
            ping = getattr(store, "ping", None)
            if ping is None:
                continue
            try:
                await ping()
            except SessionStoreUnavailable:
                checks["redis"] = "no answer to PING within the command timeout"
            else:
                checks.setdefault("redis", "ok")
        not_ready = sorted(name for name, state in checks.items() if state != "ok")
        document: Dict[str, Any] = {"status": "not_ready" if not_ready else "ready",
                                    "checks": checks}
        if not_ready:
            document["not_ready"] = not_ready
        self._respond(request, 503 if not_ready else 200, b"application/json",
                      json.dumps(document).encode("utf-8"))

    async def _login_endpoint(self, request: Request) -> None:
        if request.method not in (b"GET", b"HEAD"):
            self._finish(request, 405, "method_not_allowed", "Login starts with GET.",
                         {b"allow": b"GET, HEAD"})
            return
        await self._start_login(request, _return_to(request))

    def _same_origin(self, request: Request) -> bool:
        """
        CSRF check for state-changing endpoints: a browser's cross-site POST
        carries an C{Origin} (and C{Sec-Fetch-Site}) that gives it away.
        """
        headers = request.requestHeaders
        origin = headers.getRawHeaders(b"origin")
        if origin is not None and origin[0] != self._public_origin:
            return False
        site = headers.getRawHeaders(b"sec-fetch-site")
        return not (site is not None and site[0] not in (b"same-origin", b"none"))

    async def _logout_endpoint(self, request: Request) -> None:
        target = _return_to(request)
        if request.method in (b"GET", b"HEAD"):
            self._logout_page(request, target)
            return
        if request.method != b"POST":
            self._finish(request, 405, "method_not_allowed", "Log out with POST.",
                         {b"allow": b"GET, HEAD, POST"})
            return
        if not self._same_origin(request):
            log.info("logout refused: cross-site request")
            self._finish(request, 403, "cross_site", "Cross-site logout requests are refused.")
            return
        loaded = await self._session_or_503(request)
        if loaded is None:
            return
        session, cookies = loaded
        location = self._landing_after_logout(target)
        if session is not None:
            try:
                await self._end_session(session)
            except SessionStoreUnavailable as e:
                # Nothing is ended and the cookie is kept: the user can log
                # out again, rather than believe a copy of the cookie dead.
                self._store_unavailable(
                    request, e, "You are not logged out yet: sessions are temporarily "
                                "unavailable. Please try again shortly.")
                return
            log.info("logout of {sub}", sub=session.sub)
            self._close_sockets(session_id=session.id)
            await self._revoke(session)
            idp_logout = self._end_session_url(session, location)
            if idp_logout is not None:
                location = idp_logout
        present = chunk_names(self._session_cookie, request.received_cookies)
        cookies = clear_cookie_headers(self._session_cookie, present) if present else []
        if self._csrf is not None:
            cookies += self._csrf.clear_headers(request.received_cookies)
        self._redirect(request, location, cookies, code=303)

    def _landing_after_logout(self, rd: str) -> str:
        """post_logout_redirect_url when configured (a path on public_url, or a URL), else rd."""
        fixed = self._oidc.post_logout_redirect_url if self._oidc is not None else None
        target = fixed or rd
        return self._public + target if target.startswith("/") else target

    def _close_sockets(self, **which: Any) -> None:
        """
        Close the WebSockets of this process that a logout ends (by
        C{session_id}, C{sid} or C{sub}): those the wrapped proxy keeps.
        """
        sockets = getattr(getattr(self, "_wrapped", None), "sockets", None)
        if sockets is None:
            return
        closed = sockets.close(**which)
        if closed:
            log.info("logout closed {count} WebSocket(s)", count=closed)

    async def _revoke(self, session: Session) -> None:
        """RFC 7009: revoke the session's tokens at the IdP, when it can and we should."""
        provider = self._provider
        if provider is None or provider.metadata is None or \
                not provider.metadata.revocation_endpoint or \
                not self._config.session.revoke_on_logout:
            return
        for token, hint in ((session.refresh_token, "refresh_token"),
                            (session.access_token, "access_token")):
            if not token:
                continue
            try:
                await provider.revoke(token, hint)
            except ProviderError as e:
                log.warn("could not revoke the {hint} at logout: {reason}: {detail}",
                         hint=hint, reason=e.reason, detail=e.detail)

    def _end_session_url(self, session: Session, local: str) -> Optional[str]:
        """The IdP's RP-initiated logout URL, coming back to C{local}; None when off or unknown."""
        provider, oidc = self._provider, self._oidc
        if provider is None or oidc is None or not oidc.end_session:
            return None
        return provider.end_session_url(session.id_token, local)

    def _logout_page(self, request: Request, target: str) -> None:
        """A confirmation form: a link alone cannot log anyone out."""
        action = escape(self._logout_path)
        page = (
            '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Log out</title>'
            '<meta name="viewport" content="width=device-width, initial-scale=1"></head>'
            '<body style="font-family: system-ui, sans-serif; max-width: 40em; margin: 4em auto">'
            f'<form method="post" action="{action}">'
            f'<input type="hidden" name="rd" value="{escape(target)}">'
            '<p>Log out of this site?</p><button type="submit">Log out</button></form>'
            "</body></html>"
        ).encode()
        self._respond(request, 200, b"text/html; charset=utf-8", page)

    async def _userinfo_endpoint(self, request: Request) -> None:
        if request.method not in (b"GET", b"HEAD"):
            self._finish(request, 405, "method_not_allowed", "Use GET.", {b"allow": b"GET, HEAD"})
            return
        loaded = await self._session_or_503(request)
        if loaded is None:
            return
        session, cookies = loaded
        if session is None:
            self._deny(request, cookies)
            return
        idle = self._config.session.idle_timeout
        document = {
            "sub": session.sub,
            "claims": session.claims,
            "expires_at": int(session.expires),
            "idle_expires_at": int(session.last_seen + idle) if idle > 0 else None,
        }
        self._respond(request, 200, b"application/json", json.dumps(document).encode("utf-8"))


    async def _backchannel_logout(self, request: Request) -> None:
        """
        OpenID Connect Back-Channel Logout 1.0: the IdP POSTs a logout token;
        every session of its C{sid} (or, without one, of its C{sub}) ends.
        Needs a store that can find sessions by sid/sub (Redis).
        """
        provider, oidc = self._provider, self._oidc
        store: Any = self._store
        revocation_list = not hasattr(store, "delete_by")
        if revocation_list:
            # Stateless cookie sessions: revoke through the list every
            # request checks (in Redis), if there is one.
            store = self._revocations
        if request.method != b"POST":
            self._finish(request, 405, "method_not_allowed", "Use POST.", {b"allow": b"POST"},
                         as_json=True)
            return
        if provider is None or oidc is None or store is None:
            self._finish(request, 501, "not_implemented",
                         'Back-channel logout needs Redis: session.store = "redis", or cookie '
                         "sessions with a [redis] table for the revocation list.", as_json=True)
            return
        tokens = request.args.get(b"logout_token", [])
        if len(tokens) != 1:
            self._finish(request, 400, "invalid_request", "Exactly one logout_token is required.",
                         as_json=True)
            return
        try:
            token = tokens[0].decode("ascii")
            metadata = provider.metadata
            if metadata is None:
                raise ProviderError(503, "not_ready", "discovery has not succeeded yet")
            header = peek_header(token)
            kid = header.get("kid")
            keys = await provider.keys_for(kid if isinstance(kid, str) else None)
            self._validator_for(metadata.id_token_signing_alg_values_supported)
            verifier = self._verifier
            claims = LogoutTokenValidator(oidc.issuer, oidc.client_id, verifier, self._clock,
                                          leeway=oidc.leeway, max_age=oidc.iat_slack
                                          ).validate(token, keys)
            # Remembered while the token could still pass (its iat may be up
            # to a leeway ahead of our clock), so every replay is refused.
            seen = await store.lock("jti:" + claims["jti"],
                                    oidc.iat_slack + 2 * oidc.leeway + 1.0)
            if seen is None:
                raise TokenError("jti_replayed", "this logout token was used before")
        except (TokenError, UnicodeDecodeError) as e:
            reason = getattr(e, "reason", "malformed")
            log.warn("back-channel logout refused: {reason}", reason=reason)
            self._metrics.token_invalid("logout_token",
                                        reason if isinstance(e, TokenError) else "malformed")
            self._finish(request, 400, "invalid_request", "The logout token is not valid.",
                         as_json=True)
            return
        except ProviderError as e:
            self._finish(request, e.status if e.status in (503, 504) else 502, "idp_unavailable",
                         "The identity provider's keys could not be loaded.", as_json=True)
            return
        except SessionStoreUnavailable as e:
            self._store_unavailable(request, e, as_json=True)
            return
        sid = claims.get("sid")
        sub = claims.get("sub")
        try:
            if not revocation_list:
                count = await (store.delete_by(sid=sid) if sid else store.delete_by(sub=sub))
            else:
                await (store.mark_revoked(sid=sid, ttl=self._config.session.lifetime) if sid
                       else store.mark_revoked(sub=sub, ttl=self._config.session.lifetime))
                count = "all"
        except SessionStoreUnavailable as e:
            self._store_unavailable(request, e, as_json=True)
            return
        log.info("back-channel logout: {count} session(s) ended", count=count)
        if sid:
            self._close_sockets(sid=sid)
        else:
            self._close_sockets(sub=sub)
        self._respond(request, 200, b"application/json", b"{}")


    # -- forward auth -------------------------------------------------------------

    async def _forward_auth(self, request: Request, authorization: Optional[Sequence[bytes]]) -> None:
        """
        The authentication server of another proxy (nginx auth_request,
        Traefik forwardAuth, Caddy forward_auth, HAProxy): judge the
        original request it describes in X-Forwarded-Method/-Host/-Uri (or
        X-Original-Method/-URI/-URL), with the credentials it carries.
        2xx with the identity headers, 401 or 403; with C{?redirect=1}
        browsers get the login redirect itself (for proxies that pass it on,
        like Traefik; nginx needs 401 and an error_page).
        """
        headers = request.requestHeaders
        if not is_trusted(_peer(request), self._config.trusted_proxies):
            log.warn("forward-auth request from an untrusted peer refused")
            self._finish(request, 403, "untrusted_peer",
                         "Forward-auth requests must come from trusted_proxies.", as_json=True)
            return

        def described(*names: bytes) -> Tuple[bool, Optional[bytes]]:
            """The one value these headers agree on; (False, None) when they disagree."""
            found: Set[bytes] = set()
            for name in names:
                found.update(headers.getRawHeaders(name, []))
            if len(found) > 1:
                return False, None
            return True, next(iter(found), None)

        ok_method, method = described(b"x-forwarded-method", b"x-original-method")
        # The original URI in origin form (its path and query), and the host
        # it was for: X-Forwarded-Host, or the authority of an absolute URI
        # (X-Original-URL is nginx's $scheme://$host$request_uri). Every
        # spelling given must agree: one authority decides the route.
        targets: Set[bytes] = set()
        hosts: Set[str] = set()
        try:
            for name in (b"x-forwarded-uri", b"x-original-uri", b"x-original-url"):
                for value in headers.getRawHeaders(name, []):
                    if not value and name == b"x-original-url":
                        continue
                    authority, target = split_target(value)
                    if authority is not None:
                        hosts.add(request_host(authority) or "")
                    targets.add(target)
            for value in headers.getRawHeaders(b"x-forwarded-host", []):
                named = request_host(value)
                if named is not None:
                    hosts.add(named)
        except BadRequestTarget as e:
            self._finish(request, 400, "bad_request", f"Bad original URL: {e.reason}.",
                         as_json=True)
            return
        if not ok_method or len(targets) > 1 or len(hosts) > 1:
            log.warn("forward-auth request refused: conflicting descriptions of the original request")
            self._finish(request, 400, "bad_request",
                         "The headers describing the original request disagree.", as_json=True)
            return
        method = method or b"GET"
        if not targets:
            self._finish(request, 400, "bad_request",
                         "X-Forwarded-Uri (or X-Original-URL) is required.", as_json=True)
            return
        uri = targets.pop()
        host = hosts.pop().encode("ascii") if hosts else request_host_header(request)
        try:
            match = self._routes.match(host, uri)
        except BadRequestTarget as e:
            self._finish(request, 400, "bad_request", f"Bad original URL: {e.reason}.",
                         as_json=True)
            return
        if match is None:
            self._finish(request, 403, "no_route", "No route matches the original URL.",
                         as_json=True)
            return
        redirect = request.args.get(b"redirect", [b""])[0] in (b"1", b"true")
        setattr(request, "oidcproxy_forward_auth", redirect)  # noqa: B010
        # Judged as the original method; the answer itself is to this request
        # (a HEAD original must not make our own answer bodiless).
        setattr(request, "oidcproxy_method", method)  # noqa: B010
        await self._route_request(request, match, authorization)

    def _forward_auth_allowed(self, request: Request) -> None:
        """The original request may go on: 200 with the identity headers to copy."""
        out = request.responseHeaders
        for name, values in request.requestHeaders.getAllRawHeaders():
            if canonical_header(name) in self._managed.canonical:
                out.setRawHeaders(name, values)
        self._respond(request, 200, b"text/plain; charset=utf-8", b"")


class _AnswerHeaders:
    """
    What the guard changes in the wrapped resource's answer, applied as its
    first bytes go out: Twisted writes the headers then (replacing
    C{Set-Cookie} with C{request.cookies} when the application used
    C{addCookie}). The C{Set-Cookie} values C{keep} refuses are dropped,
    then the guard's C{cookies} and C{headers} are added. Kept on the
    request as C{oidcproxy_pending_headers}: the WebSocket path, which
    writes a C{101}'s head itself, reads it too.
    """

    def __init__(self) -> None:
        self.cookies: List[bytes] = []
        self.headers: List[Tuple[bytes, str]] = []
        self.keep: Optional[Callable[[bytes], bool]] = None

    def apply(self, request: Request) -> None:
        out = request.responseHeaders
        sent: List[bytes] = list(request.cookies or out.getRawHeaders(b"set-cookie", []))
        if self.keep is not None:
            sent = [c for c in sent if self.keep(c)]
        sent.extend(c for c in self.cookies if c not in sent)
        # All in the header: Twisted leaves it alone when request.cookies is empty.
        del request.cookies[:]
        if sent:
            out.setRawHeaders(b"set-cookie", sent)
        else:
            out.removeHeader(b"set-cookie")
        for name, value in self.headers:
            out.setRawHeaders(name, [value.encode("ascii")])


def _answer_headers(request: Request) -> _AnswerHeaders:
    """The request's L{_AnswerHeaders}, hooked to its first write once."""
    pending: Optional[_AnswerHeaders] = getattr(request, "oidcproxy_pending_headers", None)
    if pending is None:
        pending = _AnswerHeaders()
        setattr(request, "oidcproxy_pending_headers", pending)  # noqa: B010
        original = request.write
        hooked = pending

        def write(data: bytes) -> None:
            del request.write  # back to the method: once only
            if not request.startedWriting:
                hooked.apply(request)
            original(data)

        request.write = write  # type: ignore[method-assign]
    return pending


class _StaticKeys:
    """Keys from a file, with the one method the bearer validator asks for."""

    def __init__(self, keys: KeySet) -> None:
        self._keys = keys

    async def keys_for(self, kid: Optional[str]) -> KeySet:
        return self._keys


_EXTERNAL_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                        "ES256", "ES384", "ES512", "EdDSA")


class _OwnCookies:
    """Names of the proxy's cookies, for L{strip_cookies}."""

    def __init__(self, names: Sequence[bytes], login: Optional[LoginFlow]) -> None:
        self._names = frozenset(names)
        self._login = login

    def __contains__(self, name: object) -> bool:
        if name in self._names:
            return True
        return self._login is not None and name in self._login.names


def _build_store(config: Config, sealer: Sealer, reactor: Any,
                 metrics: Optional[NullMetrics] = None) -> ISessionStore:
    """The configured session store."""
    s = config.session
    if s.store == "redis" and config.redis is not None:
        return _build_redis_store(config, sealer, reactor, metrics)
    return CookieStore(sealer, reactor, store_tokens=s.store_tokens)


def _build_redis_store(config: Config, sealer: Sealer, reactor: Any,
                       metrics: Optional[NullMetrics] = None) -> Any:
    """A Redis store from C{[redis]}."""
    from ..sessions.stores.redis import RedisStore, build_redis

    r = config.redis
    assert r is not None
    pool = build_redis(
        reactor, r.url,
        password=r.password.reveal() if r.password else None,
        username=r.username,
        pool_size=r.pool_size,
        connect_timeout=r.connect_timeout,
        command_timeout=r.command_timeout,
        ca_bundle=r.ca_bundle,
        sentinel=r.sentinel or None,
        master_name=r.master_name,
    )
    return RedisStore(pool, sealer, reactor, key_prefix=r.key_prefix,
                      command_timeout=r.command_timeout, metrics=metrics)


def _return_to(request: Request) -> str:
    """The request's one C{rd} parameter if it is a safe same-origin path, else C{/}."""
    values = request.args.get(b"rd", [])
    if len(values) != 1:
        return "/"
    try:
        return safe_return_to(values[0].decode("ascii")) or "/"
    except UnicodeDecodeError:
        return "/"


def _decided(request: Request, decision: str, unless_decided: bool = False) -> None:
    """
    What the guard decided, for the access log's C{auth} field (an audit-mode
    "would deny" is kept over the credential that let the request through).
    """
    if unless_decided and getattr(request, "oidcproxy_auth", None) is not None:
        return
    setattr(request, "oidcproxy_auth", decision)  # noqa: B010


def _peer(request: Request) -> Optional[str]:
    return getattr(request.getClientAddress(), "host", None)


def _method(request: Request) -> bytes:
    """The method to judge: the original request's in forward-auth mode."""
    method: bytes = getattr(request, "oidcproxy_method", None) or request.method
    return method


def _is_preflight(request: Request) -> bool:
    """A CORS preflight: OPTIONS with Access-Control-Request-Method."""
    return _method(request) == b"OPTIONS" and \
        request.requestHeaders.hasHeader(b"access-control-request-method")


def _unverified_claims(session: Session) -> Optional[Dict[str, Any]]:
    """
    The claims of the session's access token, for rules on C{access_token.*}.
    The token came straight from the token endpoint over TLS, so its payload
    is read without checking the signature again; an opaque token has none.
    """
    token = session.access_token
    if not token or token.count(".") != 2:
        return None
    try:
        payload = token.split(".")[1]
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, TypeError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def _arg(args: Dict[bytes, List[bytes]], key: bytes) -> Optional[str]:
    values = args.get(key)
    if not values:
        return None
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        return None


def _claim(claims: Dict[str, Any], path: str) -> Any:
    """A claim by name; C{a.b} reaches into nested objects when C{a.b} itself is absent."""
    if path in claims:
        return claims[path]
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value
