"""
The configuration's schema: one frozen attrs class per table, with its
defaults, and the names of the allowed values.

Reading a file into these classes is L{oidcproxy.config.parse}'s job; the
rest of the package only reads them.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Optional, Tuple, Union

import attr

from .secrets import Secret

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

AUTH_MODES = ("session", "bearer", "session_or_bearer", "optional", "none")
"""Route auth modes: browser login; access tokens only; either; identity when present; public."""

HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE")

CLIENT_AUTH_METHODS = ("client_secret_basic", "client_secret_post", "private_key_jwt", "none")
ENDPOINT_KEYS = (
    "authorization_endpoint",
    "token_endpoint",
    "jwks_uri",
    "userinfo_endpoint",
    "end_session_endpoint",
    "revocation_endpoint",
    "introspection_endpoint",
)
RESERVED_AUTH_PARAMS = (
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "nonce",
    "code_challenge",
    "code_challenge_method",
    "response_mode",
    "request",
    "request_uri",
)
ID_TOKEN_ALGORITHMS = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
    "ES256", "ES384", "ES512", "EdDSA", "HS256", "HS384", "HS512",
)

MAX_WORKERS = 64


QUEUE_MULTIPLE = 16
"""
The default C{max_queued}, in C{max_connections}: generous, because the time
bound (C{queue_timeout}) is what keeps waits short. A line that refuses at
once while its upstream is merely busy makes clients that retry at once (a
loop, a load balancer) spend the proxy's CPU on refusals: with 4 x,
C{bench/run --overload} saw the requests that got through fall to a fifth of
the upstream's capacity at 10 x the connections, where a line bounded in
time only kept it. A waiting request costs about 11 KB with its connection.
"""


@attr.s(frozen=True, auto_attribs=True)
class UpstreamSettings:
    """
    How the proxy talks to an upstream. The top-level C{[upstream]} table sets
    the defaults; each route may override any of them.
    """

    timeout: float = 60.0
    """Seconds from sending the request until the response headers arrive (504 after)."""
    connect_timeout: float = 5.0
    """Seconds to establish the TCP/TLS connection (504 after)."""
    max_body_size: int = 10_000_000
    """Largest request body accepted, in bytes (413 above)."""
    max_connections: int = 256
    """Concurrent requests in flight to one upstream; more wait their turn (see C{max_queued})."""
    max_queued: Optional[int] = None
    """Requests waiting for one of C{max_connections}; more get 503 at once. None: L{QUEUE_MULTIPLE} x."""
    queue_timeout: float = 5.0
    """Seconds a request may wait for one of C{max_connections} (503 after); at most C{timeout}."""
    max_idle_connections: int = 64
    """Idle keep-alive connections kept per upstream."""
    ca_bundle: Optional[str] = None
    """PEM file of CA certificates trusted for https upstreams (default: the system's)."""
    client_cert: Optional[str] = None
    """PEM file of the client certificate presented to https upstreams that ask for
    one (mutual TLS), optionally followed by its intermediate CAs; with C{client_key}."""
    client_key: Optional[str] = None
    """PEM file of C{client_cert}'s private key (unencrypted); may be the same file."""
    websockets: bool = True
    """Pass WebSocket upgrades through (else the request goes on without its Upgrade headers)."""
    websocket_max_lifetime: Optional[float] = None
    """Seconds an upgraded connection may stay open; None: C{session.lifetime}; 0: no limit."""
    stream_idle_timeout: float = 300.0
    """Seconds without a byte of a response body (once its headers are in) before it is cut; 0: off."""

    @property
    def queue_limit(self) -> int:
        """C{max_queued}, or its default: L{QUEUE_MULTIPLE} times C{max_connections}."""
        if self.max_queued is not None:
            return self.max_queued
        return QUEUE_MULTIPLE * self.max_connections


@attr.s(frozen=True, auto_attribs=True)
class RouteConfig:
    """One C{[[routes]]} entry."""

    index: int
    path: str
    """Normalised path prefix: starts with C{/}, no trailing C{/} unless it is C{/}."""
    upstream: str
    """Upstream base URL, C{http://host:port} or C{https://host/base}."""
    host: Optional[str] = None
    """Lower-case host name, or C{*.example.com}; None matches every host."""
    auth: str = "session"
    strip_prefix: bool = False
    replace_prefix: Optional[str] = None
    pass_host_header: bool = False
    allow_encoded_slashes: bool = False
    settings: UpstreamSettings = UpstreamSettings()
    rule: Optional[str] = None
    allowed_groups: Tuple[str, ...] = ()
    allowed_emails: Tuple[str, ...] = ()
    allowed_email_domains: Tuple[str, ...] = ()
    require_email_verified: bool = True
    policy_mode: str = "enforce"
    """C{enforce}: a denied request gets 403; C{audit}: it is logged ("would deny") and passes."""
    methods: Tuple[str, ...] = ()
    """Allowed methods (empty: all); others get 405."""
    cors_preflight: bool = False
    """Let CORS preflights (OPTIONS with Access-Control-Request-Method) through unauthenticated."""
    session_expiry_headers: bool = False
    case_insensitive: bool = False
    """Match C{path} in any ASCII case (for upstreams that serve paths case-insensitively)."""
    websocket_origins: Optional[Tuple[str, ...]] = None
    """Origins (besides public_url's) whose pages may open WebSockets here with the session
    cookie, normalised by L{origin_of}; None: the top-level C{websocket_origins}."""
    policy: Any = attr.ib(default=None, eq=False, repr=False)
    """The compiled L{oidcproxy.config.policy.Policy} of C{rule} and the allow-lists."""
    provider: Optional[str] = None
    """The named provider (C{[providers.NAME]}) that logs this route's users in; None: C{[oidc]}."""
    providers: Tuple[str, ...] = ()
    """The providers a user may choose from on this route (instead of C{provider})."""
    acr_values: Tuple[str, ...] = ()
    """Step-up: the session's (or token's) C{acr} must be one of these, most preferred first; empty: any."""
    max_auth_age: Optional[float] = None
    """Step-up: seconds since the sign-in (C{auth_time}) at most; None: any age."""
    step_up: bool = False
    """Honour the upstream's RFC 9470 challenge (401 C{insufficient_user_authentication}) for browsers."""
    requirement: Any = attr.ib(default=None, eq=False, repr=False)
    """The L{oidcproxy.core.assurance.Requirement} of C{acr_values} and C{max_auth_age}; None: none."""

    @property
    def name(self) -> str:
        return f"routes[{self.index}]"



@attr.s(frozen=True, auto_attribs=True)
class OIDCConfig:
    """The C{[oidc]} table: the identity provider and this client."""

    issuer: str
    client_id: str
    client_secret: Optional[Secret] = None
    scopes: Tuple[str, ...] = ("openid", "email", "profile")
    pkce: bool = True
    token_endpoint_auth_method: str = "client_secret_basic"
    private_key: Optional[Secret] = None
    private_key_id: Optional[str] = None
    private_key_alg: str = "RS256"
    discovery: bool = True
    discovery_params: Tuple[Tuple[str, str], ...] = ()
    endpoints: Tuple[Tuple[str, str], ...] = ()
    """Manual endpoints (C{ENDPOINT_KEYS}); with discovery they override the discovered ones."""
    auth_params: Tuple[Tuple[str, str], ...] = ()
    id_token_algorithms: Tuple[str, ...] = ()
    """Empty: the IdP's advertised asymmetric algorithms."""
    leeway: float = 60.0
    iat_slack: float = 600.0
    """An ID or logout token issued (C{iat}) longer ago than this, plus the leeway, is refused."""
    userinfo: bool = False
    timeout: float = 5.0
    max_response_size: int = 1_000_000
    max_concurrent_requests: int = 64
    """Requests to the IdP in flight at once; more wait (at most C{timeout}) in a line of
    C{max_queued_requests}, beyond which they fail at once (503)."""
    max_queued_requests: int = 256
    jwks_cache_ttl: float = 3600.0
    jwks_min_refresh_interval: float = 60.0
    ca_bundle: Optional[str] = None
    callback_path: Optional[str] = None
    """None: C{endpoints_prefix + "/callback"}; a named provider's is always set (by default
    C{endpoints_prefix + "/callback/NAME"})."""
    pass_access_token: str = "none"
    pass_id_token: bool = False
    end_session: bool = True
    """Log out at the IdP too (RP-initiated logout) when it advertises end_session_endpoint."""
    post_logout_redirect_url: Optional[str] = None
    """
    The fixed landing page after logout (a path on public_url or an absolute
    URL): where the IdP sends the browser back, or where the logout redirects
    without IdP logout; None: public_url + the logout's rd.
    """
    post_login_redirect_url: Optional[str] = None
    """The fixed landing page after login, over the return-to (a path or a URL on public_url)."""
    login_url: Optional[str] = None
    """The path of the login endpoint; when set, nothing else starts a login (401 instead)."""
    disable_login: bool = False
    """Never start a login: unauthenticated requests get 401."""
    logout_path: Optional[str] = None
    """None: C{endpoints_prefix + "/logout"}."""
    max_retries: int = 0
    """Retries of a failed idempotent request (discovery, JWKS, userinfo); never a token request."""
    client_cert: Optional[str] = None
    """PEM client certificate presented to the IdP (mutual TLS); with C{client_key}."""
    client_key: Optional[str] = None
    insecure_skip_verify: bool = False
    """Do not verify the IdP's TLS certificate (testing only: logged at every start)."""
    step_up_prompt_login: bool = False
    """A step-up login also sends C{prompt=login} (an IdP that re-authenticates on it only)."""
    acr_claim: str = "acr"
    """C{acr}, or C{acrs}: Entra ID's array of authentication contexts (each value counts)."""

    @property
    def post_logout_redirect_uri(self) -> Optional[str]:
        """The former name of L{post_logout_redirect_url}."""
        return self.post_logout_redirect_url


@attr.s(frozen=True, auto_attribs=True)
class SessionConfig:
    store: str = "cookie"
    secrets: Tuple[Secret, ...] = ()
    lifetime: float = 8 * 3600.0
    idle_timeout: float = 0.0
    cookie_name: str = "oidcproxy"
    cookie_path: str = "/"
    cookie_domain: Optional[str] = None
    same_site: str = "Lax"
    store_tokens: bool = True
    max_cookie_chunks: int = 5
    claims: str = "all"
    """C{all}: the session keeps every claim; C{used}: only those the proxy reads (see
    L{oidcproxy.sessions.session.claims_in_use})."""
    refresh: str = "on_expiry"
    """C{off}, C{on_expiry} (within C{refresh_leeway} of the access token's expiry) or C{interval}."""
    refresh_leeway: float = 60.0
    refresh_interval: float = 300.0
    idp_outage_grace: float = 0.0
    """While the token endpoint is unreachable, serve sessions whose access token expired for this long."""
    revoke_on_logout: bool = True
    sliding: bool = False
    """The cookie (and Redis entry) expires C{idle_timeout} after the last request, never
    beyond C{lifetime} from login; without it, C{lifetime} after login."""
    cookie_secure: Optional[bool] = None
    """None: secure when public_url is https."""


@attr.s(frozen=True, auto_attribs=True)
class StateCookieConfig:
    """The C{[state_cookie]} table: the short-lived cookies of login attempts."""

    name: str = "oidcproxy_state"
    max_age: float = 600.0
    max_count: int = 5
    path: str = "/"
    domain: Optional[str] = None
    same_site: str = "Lax"
    secure: Optional[bool] = None
    """None: as the session cookie."""
    http_only: bool = True


@attr.s(frozen=True, auto_attribs=True)
class CSRFConfig:
    """The C{[csrf]} table (its presence turns the protection on)."""

    header_name: str = "X-CSRF-Token"
    cookie_name: str = "oidcproxy_csrf"
    secure: Optional[bool] = None
    """None: as the session cookie."""


@attr.s(frozen=True, auto_attribs=True)
class RedisConfig:
    """The C{[redis]} table: the shared session store."""

    url: str = "redis://127.0.0.1:6379/0"
    username: Optional[str] = None
    password: Optional[Secret] = None
    key_prefix: str = "oidcproxy:"
    pool_size: int = 10
    connect_timeout: float = 2.0
    command_timeout: float = 2.0
    ca_bundle: Optional[str] = None
    sentinel: Tuple[Tuple[str, int], ...] = ()
    master_name: Optional[str] = None


@attr.s(frozen=True, auto_attribs=True)
class BearerConfig:
    """The C{[bearer]} table: access tokens presented by API clients."""

    audiences: Tuple[str, ...] = ()
    """An access token's C{aud} must contain one of these (default: the client id)."""
    introspection: bool = False
    """Validate opaque (non-JWT) tokens at the IdP's introspection endpoint (RFC 7662)."""
    introspection_cache: float = 60.0
    cache_size: int = 10_000
    issuer: Optional[str] = None
    """Access tokens from another issuer than oidc.issuer (an API gateway's, say)."""
    jwks_uri: Optional[str] = None
    """That issuer's keys (default: from its discovery document)."""
    jwks_file: Optional[str] = None
    """That issuer's keys from a file (a JWKS JSON document)."""
    algorithms: Tuple[str, ...] = ()
    """
    The access tokens' allowed algorithms (default: the asymmetric ones, of
    C{oidc.id_token_algorithms} or advertised; all of them for another issuer).
    """
    hmac_secret: Optional[Secret] = None
    """The secret of access tokens signed with HS*, which must be listed in C{algorithms}."""


@attr.s(frozen=True, auto_attribs=True)
class AdminConfig:
    """The C{[admin]} table: the session admin API on a listener of its own."""

    token: Secret
    listen: str = "tcp:9091:interface=127.0.0.1"


@attr.s(frozen=True, auto_attribs=True)
class MetricsConfig:
    """The C{[metrics]} table: Prometheus metrics on a listener of their own."""

    listen: str = "tcp:9102:interface=127.0.0.1"
    """Twisted endpoint string of the metrics listener (C{GET /metrics})."""


@attr.s(frozen=True, auto_attribs=True)
class ClientLimits:
    """
    What one process allows its clients: how long they may take to send a
    request, and how many connections they may hold open. The top-level keys
    C{client_header_timeout}, C{client_body_timeout}, C{client_body_min_rate},
    C{max_client_connections} and C{max_client_connections_per_address}.
    """

    header_timeout: float = 30.0
    """
    Seconds for a request line and its headers, from the connection's
    opening (first request) or the request's first byte (later ones). Like
    nginx's C{client_header_timeout} (60 s) and Apache's C{mod_reqtimeout}
    (20-40 s).
    """
    body_timeout: float = 20.0
    """Seconds for a request body before C{body_min_rate} applies; 0: no deadline for bodies."""
    body_min_rate: int = 500
    """
    Each this many bytes of body received buy one more second (as
    C{mod_reqtimeout}'s C{MinRate}); 0: C{body_timeout} is the whole body's.
    """
    max_connections: int = 10000
    """Client connections open at once (upgraded ones not counted); more are refused with 503."""
    max_per_address: int = 0
    """Client connections open at once from one IP address; 0: no such cap."""


LANGUAGES = ("en", "de")
"""The languages of the built-in texts."""


@attr.s(frozen=True, auto_attribs=True)
class StepUpConfig:
    """The C{[step_up]} table: what routes with C{acr_values}, C{max_auth_age} or C{step_up} share."""

    acr_header: Optional[str] = "X-Forwarded-Acr"
    """The identity header of the sign-in's C{acr} (None: not sent; always stripped)."""
    auth_time_header: Optional[str] = "X-Forwarded-Auth-Time"
    """The identity header of the sign-in's C{auth_time} (None: not sent; always stripped)."""
    max_attempts: int = 3
    """Step-up logins for one URL in one session within C{attempt_window}; more: login failed."""
    attempt_window: float = 600.0
    """Seconds over which C{max_attempts} counts."""


@attr.s(frozen=True, auto_attribs=True)
class PagesConfig:
    """The C{[pages]} table (its defaults when absent)."""

    title: str = ""
    """The browser tab's title after the page's own; C{""}: the organisation."""
    organisation: str = ""
    logo_url: Optional[str] = None
    accent_color: str = "#1d4ed8"
    footer: str = ""
    support_url: Optional[str] = None
    templates_dir: Optional[str] = None
    language: str = "en"
    """A code of L{LANGUAGES}, or C{"auto"}: from each request's C{Accept-Language}."""
    logout_confirm: bool = True
    sign_in_page: bool = False
    switch_account_prompt: str = "login"
    provider_name: str = ""
    """The name on the sign-in button; C{""}: the issuer's host."""


@attr.s(frozen=True, auto_attribs=True)
class Config:
    source: str
    listen: Tuple[str, ...] = ("tcp:8080:interface=127.0.0.1",)
    public_url: Optional[str] = None
    trusted_proxies: Tuple[IPNetwork, ...] = ()
    endpoints_prefix: str = "/oidc"
    workers: int = 1
    """Processes serving requests; above 1 a parent process binds the listeners and supervises them."""
    drain_timeout: float = 30.0
    """On SIGTERM: seconds the requests in flight get to finish before their connections are cut."""
    keepalive_timeout: float = 75.0
    client_limits: ClientLimits = ClientLimits()
    max_websockets: int = 1000
    """Upgraded (WebSocket) connections open at once in one process; more get 503."""
    access_log: bool = True
    http2: bool = True
    """Offer HTTP/2 (C{h2}) on TLS listeners when Twisted's C{http2} extra is installed."""
    http2_max_concurrent_streams: int = 100
    """
    Requests one HTTP/2 connection may have in flight at once
    (C{SETTINGS_MAX_CONCURRENT_STREAMS}): Apache's C{H2MaxSessionStreams}
    and the C{h2} package's default (nginx: 128).
    """
    case_insensitive_routes: bool = False
    """The C{case_insensitive} of routes that do not set it."""
    websocket_origins: Tuple[str, ...] = ()
    """Origins besides public_url's allowed to open session-authenticated WebSockets."""
    upstream: UpstreamSettings = UpstreamSettings()
    routes: Tuple[RouteConfig, ...] = ()
    oidc: Optional[OIDCConfig] = None
    session: SessionConfig = SessionConfig()
    redis: Optional[RedisConfig] = None
    state_cookie: StateCookieConfig = StateCookieConfig()
    csrf: Optional[CSRFConfig] = None
    username_claim: str = "sub"
    """The claim shown as the user in the access log (C{sub} when absent)."""
    admin: Optional[AdminConfig] = None
    metrics: Optional[MetricsConfig] = None
    bearer: BearerConfig = BearerConfig()
    headers: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
        ("X-Forwarded-User", ("preferred_username", "sub")),
        ("X-Forwarded-Email", ("email",)),
        ("X-Forwarded-Groups", ("groups",)),
    )
    """Identity headers: header name and the claims tried in order (first present wins)."""
    pages: PagesConfig = PagesConfig()
    """The C{[pages]} table: the look, language and choice of the proxy's own pages."""
    step_up: StepUpConfig = StepUpConfig()
    """The C{[step_up]} table: the assurance headers and the bound on step-up logins."""
    providers: Tuple[Tuple[str, OIDCConfig], ...] = ()
    """The named providers (C{[providers.NAME]}), by name, as the file lists them."""

    @property
    def logs_in(self) -> bool:
        """Whether users log in here: an C{[oidc]} table or a named provider."""
        return self.oidc is not None or bool(self.providers)

    def check_route_providers(self) -> None:
        """
        @raise ValueError: a route names a provider this configuration does
            not have (a reloaded file's routes with the running providers).
        """
        names = {name for name, _ in self.providers}
        if self.oidc is not None:
            names.add("")
        for route in self.routes:
            key = f"{route.name}.provider" if route.provider is not None else \
                f"{route.name}.providers"
            for name in (route.provider,) if route.provider is not None else route.providers:
                if name not in names:
                    raise ValueError(f"{key}: {name or 'oidc'!r} is not a running provider; a "
                                     "new provider needs a restart")

    def provider_config(self, name: Optional[str]) -> Optional[OIDCConfig]:
        """The provider C{name} (None or C{""}: C{[oidc]}), or None when there is none of that name."""
        if not name:
            return self.oidc
        return dict(self.providers).get(name)

    @property
    def callback_path(self) -> str:
        if self.oidc is not None and self.oidc.callback_path:
            return self.oidc.callback_path
        return self.endpoints_prefix + "/callback"

    @property
    def redirect_uri(self) -> Optional[str]:
        return None if self.public_url is None else self.public_url + self.callback_path

    @property
    def logout_path(self) -> str:
        if self.oidc is not None and self.oidc.logout_path:
            return self.oidc.logout_path
        return self.endpoints_prefix + "/logout"

    @property
    def cookie_secure(self) -> bool:
        """Whether the session cookie is C{Secure} (by default: public_url is https)."""
        if self.session.cookie_secure is not None:
            return self.session.cookie_secure
        return (self.public_url or "").startswith("https://")

