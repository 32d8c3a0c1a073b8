"""
Talking to the OpenID provider: discovery, the signing keys (JWKS), the token,
userinfo and revocation endpoints, and the RP-initiated logout URL.

One L{Provider} per issuer. L{Provider.start} loads the discovery document and
the JWKS in the background, retrying with exponential backoff while the
provider is unreachable or answers nonsense; L{Provider.keys_for} serves the
cached keys and refetches them when they are old or a token names a key we do
not know (rate limited, single-flight); L{Provider.exchange_code},
L{Provider.refresh} and L{Provider.userinfo} are the back-channel requests of
the authorization code flow; L{Provider.revoke} revokes a token at logout (RFC
7009), L{Provider.introspect} asks about an opaque access token (RFC 7662) and
L{Provider.end_session_url} builds the RP-initiated logout URL.

Every request to the provider:

  - has a deadline covering the whole exchange, body included (504
    C{timeout}); the request is cancelled when it passes;
  - reads the body incrementally and gives up beyond C{max_response_size}
    bytes (502 C{response_too_large});
  - must answer JSON (502 C{bad_json}), except for a successful revocation,
    whose body is ignored (RFC 7009, 2.2);
  - never follows redirects (a redirect is a bad answer);
  - waits for one of C{max_concurrent_requests} slots when that many are
    in flight, in a line of at most C{max_queued_requests}, for at most
    C{timeout} (then the deadline starts again for the request itself): a
    request beyond the line, or that waited that long, fails with 503
    C{busy} without reaching the provider, so a login or refresh storm, or
    a slow provider, cannot pile up connections and requests without bound;
  - is made at most once per call, unless C{max_retries} allows more for the
    idempotent ones (discovery, JWKS, userinfo) after a transport failure, a
    timeout or a 5xx/429 answer, with a Clock-driven backoff; discovery and
    JWKS failures are also retried by the background loop. The code
    exchange, refresh and revocation are never retried (a code is
    single-use), nor is introspection.

Failures are L{ProviderError}s. Logs and error details never contain a token,
an authorization code, a client secret or a client assertion.

L{Provider} is a facade over the parts, each in its own module:
L{oidcproxy.oidc.transport} (one request: deadline, size cap, admission,
retries), L{oidcproxy.oidc.discovery} (the metadata), L{oidcproxy.oidc.jwks}
(the key cache), L{oidcproxy.oidc.endpoints} (token, userinfo, revocation,
introspection, logout URL), L{oidcproxy.oidc.client_auth} (the client's
credentials) and L{oidcproxy.oidc.http_client} (the treq client).
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional

from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..core.metrics import NullMetrics
from .client_auth import ClientAuth, ClientAuthenticator
from .discovery import REQUIRED_ENDPOINTS, URL_FIELDS, ProviderMetadata, discover, is_http_url
from .endpoints import Endpoints
from .http_client import make_http_client
from .jwks import SigningKeys
from .jws import KeySet
from .transport import ProviderError, Transport

__all__ = [
    "ClientAuth",
    "Provider",
    "ProviderError",
    "ProviderMetadata",
    "make_http_client",
]

log = Logger()


class Provider:
    """
    One OpenID provider (issuer) as seen by one client.

    @ivar metadata: the endpoints, once discovery succeeded (immediately
        with C{discovery=False}).
    """

    def __init__(
        self,
        issuer: str,
        client: ClientAuth,
        http: HTTPClient,
        clock: IReactorTime,
        *,
        discovery: bool = True,
        endpoints: Optional[Mapping[str, str]] = None,
        discovery_params: Optional[Mapping[str, str]] = None,
        timeout: float = 5.0,
        max_response_size: int = 1_000_000,
        jwks_ttl: float = 3600.0,
        jwks_min_refresh: float = 60.0,
        retry_initial: float = 1.0,
        retry_max: float = 60.0,
        metrics: Optional[NullMetrics] = None,
        max_retries: int = 0,
        retry_backoff: float = 0.5,
        max_concurrent_requests: int = 64,
        max_queued_requests: int = 256,
    ) -> None:
        """
        @param issuer: the issuer identifier, exactly as the provider spells it.
        @param http: see L{make_http_client}.
        @param discovery: load the metadata from
            C{{issuer}/.well-known/openid-configuration}; with False, they come
            from C{endpoints} alone.
        @param endpoints: URL fields of L{ProviderMetadata}; without discovery
            C{authorization_endpoint}, C{token_endpoint} and C{jwks_uri} are
            required (C{issuer}, if given, must be C{issuer}); with discovery
            they override what the provider says.
        @param discovery_params: extra query parameters of the discovery request.
        @param metrics: times the requests and counts JWKS refetches (an
            L{oidcproxy.core.metrics.Metrics}; default: nothing is counted).
        @param max_retries: how many more times a discovery, JWKS or userinfo
            request is made after a transport failure, a timeout or a 5xx or
            429 answer; the waits between attempts are C{retry_backoff},
            then twice as long each time.
        @param max_concurrent_requests: requests to the provider in flight
            at once; more wait their turn, for at most C{timeout} (503
            C{busy} then); one that got its turn has C{timeout} from then.
        @param max_queued_requests: requests that may wait; one more fails
            at once with 503 C{busy}.

        @raise ValueError: a bad issuer, endpoint or setting.
        """
        _check_settings(issuer, client, timeout=timeout, jwks_ttl=jwks_ttl,
                        jwks_min_refresh=jwks_min_refresh, max_response_size=max_response_size,
                        retry_initial=retry_initial, retry_max=retry_max, max_retries=max_retries,
                        retry_backoff=retry_backoff,
                        max_concurrent_requests=max_concurrent_requests,
                        max_queued_requests=max_queued_requests)
        overrides = _endpoint_overrides(issuer, endpoints or {})

        self.issuer = issuer
        self.client = client
        self._clock = clock
        self._overrides = overrides
        self._discovery_params: Dict[str, str] = dict(discovery_params or {})
        self._retry_initial = float(retry_initial)
        self._retry_max = float(retry_max)
        metrics = metrics if metrics is not None else NullMetrics()

        self.metadata: Optional[ProviderMetadata] = None
        if not discovery:
            missing = [name for name in REQUIRED_ENDPOINTS if name not in overrides]
            if missing:
                raise ValueError(f"endpoints: without discovery {', '.join(missing)} must be given")
            self.metadata = ProviderMetadata(issuer=issuer, **overrides)

        self._transport = Transport(
            http, clock, timeout=timeout, max_response_size=max_response_size,
            max_retries=max_retries, retry_backoff=retry_backoff,
            max_concurrent_requests=max_concurrent_requests,
            max_queued_requests=max_queued_requests, metrics=metrics)
        self._keys = SigningKeys(issuer, self._transport, clock, lambda: self.metadata,
                                 ttl=jwks_ttl, min_refresh=jwks_min_refresh, metrics=metrics)
        self._endpoints = Endpoints(self._transport, ClientAuthenticator(client, clock),
                                    lambda: self.metadata)

        self._running = False
        self._loading: Optional[Deferred[None]] = None
        """The background loading (L{start}) until it is done or stopped."""
        self._ready_waiters: List[Deferred[Provider]] = []

    # -- life cycle

    @property
    def ready(self) -> bool:
        """Whether the metadata and the keys are loaded."""
        return self.metadata is not None and self._keys.keys is not None

    def start(self) -> None:
        """
        Load the metadata (unless given) and the keys in the background,
        retrying with exponential backoff until both are loaded. Calling it
        again while running does nothing.
        """
        if self._running:
            return
        self._running = True
        if self.ready:
            self._fire_ready()
            return
        self._loading = Deferred.fromCoroutine(self._keep_loading())

    def stop(self) -> None:
        """
        Stop the background loading and cancel every request in flight
        (their callers get 503 C{stopped}). Cached keys stay usable.
        """
        self._running = False
        loading, self._loading = self._loading, None
        if loading is not None:
            loading.cancel()
        self._transport.stop()

    def when_ready(self) -> Deferred[Provider]:
        """A Deferred that fires with this provider once it is L{ready}."""
        if self.ready:
            return succeed(self)
        d: Deferred[Provider] = Deferred()
        self._ready_waiters.append(d)
        return d

    def _fire_ready(self) -> None:
        waiters, self._ready_waiters = self._ready_waiters, []
        for d in waiters:
            if not d.called:
                d.callback(self)

    async def _keep_loading(self) -> None:
        """
        Load until loaded, waiting C{retry_initial} seconds after a failure,
        then twice as long each time up to C{retry_max}; L{stop} ends it.
        Every failure is logged; none is the caller's.
        """
        delay = self._retry_initial
        while True:
            loaded = await Deferred.fromCoroutine(self._load()).addCallbacks(
                self._loaded, self._not_loaded, errbackArgs=(delay,))
            if loaded or not self._running:
                return
            try:
                await deferLater(self._clock, delay, lambda: None)
            except CancelledError:
                return
            delay = min(delay * 2, self._retry_max)

    def _loaded(self, _: object) -> bool:
        log.info(
            "OpenID provider {issuer} ready: {count} signing key(s)",
            issuer=self.issuer,
            count=len(self._keys.keys.keys) if self._keys.keys is not None else 0,
        )
        self._fire_ready()
        return True

    def _not_loaded(self, failure: Failure, delay: float) -> bool:
        """Log why loading failed (not when stopping), to be tried again in C{delay} seconds."""
        if not self._running or failure.check(CancelledError):
            return False
        if failure.check(ProviderError):
            error = failure.value
            assert isinstance(error, ProviderError)
            log.warn(
                "OpenID provider {issuer} not ready: {reason}: {detail}; retrying in {delay}s",
                issuer=self.issuer,
                reason=error.reason,
                detail=error.detail,
                delay=delay,
            )
        else:
            log.failure(
                "OpenID provider {issuer} not ready: unexpected error; retrying in {delay}s",
                failure,
                issuer=self.issuer,
                delay=delay,
            )
        return False

    async def _load(self) -> None:
        if self.metadata is None:
            self.metadata = await self._discover()
        await self._keys.fetch()

    async def _discover(self) -> ProviderMetadata:
        return await discover(self._transport, self.issuer, self._discovery_params, self._overrides)

    # -- what the guard asks for

    async def keys_for(self, kid: Optional[str]) -> KeySet:
        """
        The provider's signing keys, refetched when old or when no key has
        C{kid} (rate limited, shared): see L{SigningKeys.keys_for}.

        @raise ProviderError: 503 C{not_ready} before the keys first loaded.
        """
        return await self._keys.keys_for(kid)

    async def exchange_code(
        self, code: str, redirect_uri: str, code_verifier: Optional[str]
    ) -> Dict[str, Any]:
        """Exchange an authorization code for tokens: see L{Endpoints.exchange_code}."""
        return await self._endpoints.exchange_code(code, redirect_uri, code_verifier)

    async def refresh(self, refresh_token: str) -> Dict[str, Any]:
        """Use a refresh token: see L{Endpoints.refresh}."""
        return await self._endpoints.refresh(refresh_token)

    async def userinfo(self, access_token: str) -> Dict[str, Any]:
        """The userinfo claims for an access token: see L{Endpoints.userinfo}."""
        return await self._endpoints.userinfo(access_token)

    async def revoke(self, token: str, token_type_hint: Optional[str] = None) -> None:
        """Revoke a token at logout (RFC 7009): see L{Endpoints.revoke}."""
        await self._endpoints.revoke(token, token_type_hint)

    async def introspect(self, token: str) -> Dict[str, Any]:
        """Ask about an access token (RFC 7662): see L{Endpoints.introspect}."""
        return await self._endpoints.introspect(token)

    def end_session_url(
        self,
        id_token_hint: Optional[str],
        post_logout_redirect_uri: Optional[str],
        state: Optional[str] = None,
    ) -> Optional[str]:
        """The RP-initiated logout URL, or None: see L{Endpoints.end_session_url}."""
        return self._endpoints.end_session_url(id_token_hint, post_logout_redirect_uri, state)


def _check_settings(
    issuer: str,
    client: Any,
    *,
    timeout: float,
    jwks_ttl: float,
    jwks_min_refresh: float,
    max_response_size: int,
    retry_initial: float,
    retry_max: float,
    max_retries: int,
    retry_backoff: float,
    max_concurrent_requests: int,
    max_queued_requests: int,
) -> None:
    """@raise ValueError: naming the first bad setting."""
    if not is_http_url(issuer):
        raise ValueError(f"issuer {issuer!r} is not an http(s) URL")
    if not isinstance(client, ClientAuth):
        raise ValueError("client must be a ClientAuth")
    for setting, number in (("timeout", timeout), ("jwks_ttl", jwks_ttl),
                            ("retry_initial", retry_initial), ("retry_max", retry_max)):
        if not number > 0:
            raise ValueError(f"{setting} must be positive")
    if jwks_min_refresh < 0:
        raise ValueError("jwks_min_refresh must not be negative")
    if max_response_size < 1:
        raise ValueError("max_response_size must be positive")
    if retry_max < retry_initial:
        raise ValueError("retry_max must be at least retry_initial")
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise ValueError("max_retries must be a non-negative integer")
    if not retry_backoff >= 0:
        raise ValueError("retry_backoff must not be negative")
    for setting, count, least in (("max_concurrent_requests", max_concurrent_requests, 1),
                                  ("max_queued_requests", max_queued_requests, 0)):
        if isinstance(count, bool) or not isinstance(count, int) or count < least:
            raise ValueError(f"{setting} must be an integer of at least {least}")


def _endpoint_overrides(issuer: str, endpoints: Mapping[str, str]) -> Dict[str, Any]:
    """The configured endpoints, checked, without C{issuer} (which must be the issuer)."""
    overrides: Dict[str, Any] = {}
    for name, value in endpoints.items():
        if name not in URL_FIELDS:
            raise ValueError(f"endpoints: unknown endpoint {name!r}; use one of {', '.join(URL_FIELDS)}")
        if not is_http_url(value):
            raise ValueError(f"endpoints: {name} {value!r} is not an http(s) URL")
        if name == "issuer":
            if value != issuer:
                raise ValueError(f"endpoints: issuer {value!r} is not the issuer {issuer!r}")
            continue
        overrides[name] = value
    return overrides
