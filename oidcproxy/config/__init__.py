"""
Load and validate the TOML configuration.

Every problem is collected, not just the first, and each one names the file,
the key path (C{routes[2].upstream}) and what is wrong, so an operator fixes a
broken file in one pass. Unknown keys are errors: a typo in a security setting
must not be silently ignored.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar, Union
from urllib.parse import urlsplit

import attr
from twisted.logger import Logger

from ..core.urls import safe_return_to
from .policy import Policy, RuleSyntaxError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on PyPy 3.9
    import tomli as tomllib

T = TypeVar("T")

log = Logger()

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


class ConfigError(Exception):
    """
    The configuration is invalid.

    @ivar source: the file that was read.
    @ivar problems: one message per problem, each starting with its key path.
    """

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        super().__init__(source, problems)
        self.source = source
        self.problems = list(problems)

    def lines(self) -> List[str]:
        return [f"config: {p} (in {self.source})" for p in self.problems]

    def __str__(self) -> str:
        return "\n".join(self.lines())


class Secret:
    """
    A resolved secret value that does not show itself in reprs or logs.
    """

    __slots__ = ("_value", "origin")

    def __init__(self, value: str, origin: str) -> None:
        self._value = value
        self.origin = origin

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"<Secret from {self.origin}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


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
    """None: C{endpoints_prefix + "/callback"}."""
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


# -- value parsers -------------------------------------------------------------

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_SIZE = re.compile(r"(\d+)\s*(B|KB|MB|GB|KiB|MiB|GiB)?")
_SIZE_UNITS = {
    None: 1,
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
}
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def parse_duration(text: str) -> float:
    """
    Parse C{"30s"}, C{"500ms"}, C{"1h30m"}, C{"0s"} into seconds.

    @raise ValueError: not a duration.
    """
    if not isinstance(text, str) or not text:
        raise ValueError("expected a duration string like \"30s\", \"5m\" or \"8h\"")
    pos = 0
    total = 0.0
    for m in _DURATION_PART.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text):
        raise ValueError(
            f"{text!r} is not a duration; use a number and a unit (ms, s, m, h, d), like \"30s\""
        )
    if not math.isfinite(total):
        # A number too long for a float: infinite, which no timer or cookie can take.
        raise ValueError(f"{text!r} is too long a duration")
    return total


def parse_size(text: Union[str, int]) -> int:
    """
    Parse C{"10MB"} (decimal), C{"4KiB"} (binary) or a plain byte count.

    @raise ValueError: not a size.
    """
    if isinstance(text, bool):
        raise ValueError("expected a size like \"10MB\"")
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"{text} is negative")
        return text
    m = _SIZE.fullmatch(text.strip()) if isinstance(text, str) else None
    if m is None:
        raise ValueError(f"{text!r} is not a size; use bytes or a unit (KB, MB, GB, KiB, MiB, GiB)")
    return int(m.group(1)) * _SIZE_UNITS[m.group(2)]


def _http_url(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{text!r} is not an http(s) URL")
    if parts.username or parts.password:
        raise ValueError(f"{text!r} must not contain user information")
    if parts.query or parts.fragment:
        raise ValueError(f"{text!r} must not have a query or fragment")
    try:
        _ = parts.port
    except ValueError:
        raise ValueError(f"{text!r} has an invalid port") from None
    return text


def _route_prefix(text: str) -> str:
    if not text.startswith("/"):
        raise ValueError(f"{text!r} must start with '/'")
    if any(c in text for c in "?#\\%") or any(ord(c) < 0x21 or ord(c) > 0x7E for c in text):
        raise ValueError(
            f"{text!r} may only hold plain path characters (no '?', '#', '\\', '%', spaces)"
        )
    segments = text.split("/")
    if any(s in (".", "..") for s in segments) or "//" in text:
        raise ValueError(f"{text!r} must be a normalised path (no '.', '..' or '//' segments)")
    return text.rstrip("/") or "/"


_HOST_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")


def _route_host(text: str) -> str:
    host = text.lower()
    labels = host[2:].split(".") if host.startswith("*.") else host.split(".")
    if not host or not all(_HOST_LABEL.match(label) for label in labels):
        raise ValueError(f"{text!r} is not a host name or a '*.example.com' wildcard")
    return host


def origin_of(text: str) -> str:
    """
    A browser origin as browsers serialise it in C{Origin}: C{scheme://host}
    with C{:port} unless it is the scheme's default, in lower case.

    @raise ValueError: not an http(s) origin (a path, user information, a
        query, no host, a bad port, C{null}).
    """
    parts = urlsplit(text)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{text!r} is not an http(s) origin (scheme://host[:port])")
    if parts.username is not None or parts.password is not None or parts.path \
            or parts.query or parts.fragment or "?" in text or "#" in text:
        raise ValueError(f"{text!r} is not an origin: scheme://host[:port] without a path")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{text!r} has an invalid port") from None
    scheme = parts.scheme.lower()
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    if port is not None and port != {"http": 80, "https": 443}[scheme]:
        return f"{scheme}://{host}:{port}"
    return f"{scheme}://{host}"


def _network(text: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address or CIDR network") from None


# -- the reader ----------------------------------------------------------------


class _Problems:
    def __init__(self) -> None:
        self.items: List[str] = []

    def add(self, keypath: str, message: str) -> None:
        self.items.append(f"{keypath}: {message}" if keypath else message)


_MISSING: Any = object()


class _Table:
    """
    A TOML table being read: typed getters that record problems under their key
    path and return a fallback, so validation goes on and reports everything.
    """

    def __init__(self, problems: _Problems, data: Dict[str, Any], path: str) -> None:
        self._problems = problems
        self._data = data
        self._path = path
        self._known: List[str] = []

    def keypath(self, key: str) -> str:
        if not key.isprintable():
            # A quoted TOML key may hold a newline: the message stays one line.
            key = repr(key)
        return f"{self._path}.{key}" if self._path else key

    def has(self, key: str) -> bool:
        return key in self._data

    def problem(self, key: str, message: str) -> None:
        self._problems.add(self.keypath(key), message)

    def _raw(self, key: str, kinds: Tuple[type, ...], what: str, default: Any) -> Any:
        self._known.append(key)
        if key not in self._data:
            return _MISSING if default is _MISSING else default
        value = self._data[key]
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            self.problem(key, f"expected {what}, got {_describe(value)}")
            return _MISSING if default is _MISSING else default
        return value

    def _parsed(self, key: str, kinds: Tuple[type, ...], what: str, default: T,
                parse: Callable[[Any], T], required: bool = False) -> T:
        value = self._raw(key, kinds, what, _MISSING)
        if value is _MISSING:
            if required and key not in self._data:
                self.problem(key, "is required")
            return default
        try:
            return parse(value)
        except ValueError as e:
            self.problem(key, str(e))
            return default

    def string(self, key: str, default: Any = None, required: bool = False,
               check: Callable[[str], Any] = str) -> Any:
        return self._parsed(key, (str,), "a string", default, check, required)

    def boolean(self, key: str, default: bool) -> bool:
        return self._parsed(key, (bool,), "true or false", default, bool)

    def integer(self, key: str, default: int, minimum: int = 0, maximum: Optional[int] = None) -> int:
        def check(v: int) -> int:
            if v < minimum or (maximum is not None and v > maximum):
                bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
                raise ValueError(f"{v} is out of range; expected {bound}")
            return v
        return self._parsed(key, (int,), "an integer", default, check)

    def duration(self, key: str, default: float, positive: bool = False) -> float:
        def check(v: str) -> float:
            seconds = parse_duration(v)
            if positive and seconds <= 0:
                raise ValueError(f"{v!r} must be longer than zero")
            return seconds
        return self._parsed(key, (str,), 'a duration string like "30s"', default, check)

    def size(self, key: str, default: int) -> int:
        return self._parsed(key, (str, int), 'a size like "10MB"', default, parse_size)

    def choice(self, key: str, choices: Sequence[str], default: str) -> str:
        def check(v: str) -> str:
            if v not in choices:
                raise ValueError(f"{v!r} is not one of {', '.join(map(repr, choices))}")
            return v
        return self._parsed(key, (str,), "a string", default, check)

    def strings(self, key: str, default: Tuple[str, ...],
                check: Callable[[str], T] = str) -> Tuple[T, ...]:  # type: ignore[assignment]
        values = self._raw(key, (list,), "a list of strings", _MISSING)
        if values is _MISSING:
            return default  # type: ignore[return-value]
        out = []
        for i, v in enumerate(values):
            where = f"{key}[{i}]"
            if not isinstance(v, str):
                self.problem(where, f"expected a string, got {_describe(v)}")
                continue
            try:
                out.append(check(v))
            except ValueError as e:
                self.problem(where, str(e))
        return tuple(out)

    def secret(self, key: str, required: bool = False) -> Optional[Secret]:
        self._known.append(key)
        if key not in self._data:
            if required:
                self.problem(key, "is required")
            return None
        return _resolve_secret(self._problems, self.keypath(key), self._data[key])

    def secrets(self, key: str) -> Tuple[Secret, ...]:
        values = self._raw(key, (list,), "a list of secrets", _MISSING)
        if values is _MISSING:
            return ()
        out = []
        for i, v in enumerate(values):
            s = _resolve_secret(self._problems, f"{self.keypath(key)}[{i}]", v)
            if s is not None:
                out.append(s)
        return tuple(out)

    def table(self, key: str) -> Optional[_Table]:
        value = self._raw(key, (dict,), "a table", _MISSING)
        if value is _MISSING:
            return None
        return _Table(self._problems, value, self.keypath(key))

    def tables(self, key: str) -> List[_Table]:
        values = self._raw(key, (list,), f"an array of tables ([[{key}]])", _MISSING)
        if values is _MISSING:
            return []
        out = []
        for i, v in enumerate(values):
            where = f"{self.keypath(key)}[{i}]"
            if not isinstance(v, dict):
                self._problems.add(where, f"expected a table, got {_describe(v)}")
                continue
            out.append(_Table(self._problems, v, where))
        return out

    def items(self) -> List[Tuple[str, Any]]:
        """All entries, for free-form tables like C{[headers]}."""
        self._known.extend(self._data)
        return list(self._data.items())

    def done(self) -> None:
        """Report every key that no getter asked for."""
        for key in self._data:
            if key not in self._known:
                hint = difflib.get_close_matches(key, self._known, n=1)
                extra = f"; did you mean {hint[0]!r}?" if hint else ""
                self.problem(key, f"unknown key{extra}")


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    if isinstance(value, str):
        return f"a string ({value!r})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


def _resolve_secret(problems: _Problems, keypath: str, value: Any) -> Optional[Secret]:
    """
    A secret is a literal string or exactly one of C{{ env = "NAME" }},
    C{{ file = "/path" }}, C{{ credential = "name" }}. Missing sources and empty
    values are errors: never an empty secret.
    """
    if isinstance(value, str):
        if not value:
            problems.add(keypath, "is empty")
            return None
        return Secret(value, "the config file")
    if not isinstance(value, dict) or len(value) != 1:
        problems.add(
            keypath,
            'expected a string or one of { env = "NAME" }, { file = "/path" }, '
            '{ credential = "name" }',
        )
        return None
    (kind, ref), = value.items()
    if kind not in ("env", "file", "credential") or not isinstance(ref, str) or not ref:
        problems.add(
            keypath,
            f"unknown secret reference {kind!r}; use env, file or credential with a string",
        )
        return None
    if any(c < " " or c == "\x7f" for c in ref):
        # No file or variable is named so; open() would raise on a NUL, and a
        # newline would split the error message over lines.
        problems.add(keypath, f"{kind} name {ref!r} holds a control character")
        return None
    if kind == "env":
        env = os.environ.get(ref)
        if env is None:
            problems.add(keypath, f"environment variable {ref} is not set")
            return None
        text, origin = env, f"environment variable {ref}"
    else:
        if kind == "credential":
            directory = os.environ.get("CREDENTIALS_DIRECTORY")
            if not directory:
                problems.add(
                    keypath,
                    f"credential {ref!r} needs $CREDENTIALS_DIRECTORY "
                    "(set by systemd's LoadCredential=)",
                )
                return None
            if "/" in ref or ref in (".", ".."):
                problems.add(keypath, f"credential name {ref!r} must not contain '/'")
                return None
            path = os.path.join(directory, ref)
        else:
            path = ref
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            problems.add(keypath, f"cannot read secret file {path}: {e.strerror or e}")
            return None
        except UnicodeDecodeError:
            problems.add(keypath, f"secret file {path} is not UTF-8 text")
            return None
        if text.endswith("\n"):
            text = text[:-1]
            if text.endswith("\r"):
                text = text[:-1]
        origin = f"file {path}"
    if not text:
        problems.add(keypath, f"{origin} is empty")
        return None
    return Secret(text, origin)


# -- sections ------------------------------------------------------------------


def _upstream_settings(t: _Table, base: UpstreamSettings) -> UpstreamSettings:
    timeout = t.duration("timeout", base.timeout, positive=True)
    queue_timeout = t.duration("queue_timeout", -1.0, positive=True)  # -1: not set, or refused
    if queue_timeout < 0:
        queue_timeout = base.queue_timeout
    elif queue_timeout > timeout:
        t.problem("queue_timeout", f"{queue_timeout:g}s is longer than timeout ({timeout:g}s), "
                  "which a request's wait counts against")
    return UpstreamSettings(
        timeout=timeout,
        connect_timeout=t.duration("connect_timeout", base.connect_timeout, positive=True),
        max_body_size=t.size("max_body_size", base.max_body_size),
        max_connections=t.integer("max_connections", base.max_connections, minimum=1),
        max_queued=t.integer("max_queued", 0) if t.has("max_queued") else base.max_queued,
        queue_timeout=queue_timeout,
        max_idle_connections=t.integer("max_idle_connections", base.max_idle_connections),
        ca_bundle=t.string("ca_bundle", base.ca_bundle, check=_readable_file),
        **_client_certificate(t, base),
        websockets=t.boolean("websockets", base.websockets),
        websocket_max_lifetime=t.duration("websocket_max_lifetime", 0.0)
        if t.has("websocket_max_lifetime") else base.websocket_max_lifetime,
        stream_idle_timeout=t.duration("stream_idle_timeout", base.stream_idle_timeout),
    )


def _client_certificate(t: _Table, base: UpstreamSettings) -> Dict[str, Optional[str]]:
    """C{client_cert} and C{client_key}: a table that sets one sets both."""
    cert = t.string("client_cert", base.client_cert, check=_readable_file)
    key = t.string("client_key", base.client_key, check=_readable_file)
    for given, missing in (("client_cert", "client_key"), ("client_key", "client_cert")):
        if t.has(given) and not t.has(missing):
            t.problem(missing, f"is required with {given} (both or neither)")
            return {"client_cert": base.client_cert, "client_key": base.client_key}
    return {"client_cert": cert, "client_key": key}


_UPSTREAM_KEYS = (
    "timeout",
    "connect_timeout",
    "max_body_size",
    "max_connections",
    "max_queued",
    "queue_timeout",
    "max_idle_connections",
    "ca_bundle",
    "client_cert",
    "client_key",
    "websockets",
    "websocket_max_lifetime",
    "stream_idle_timeout",
)


def _readable_file(path: str) -> str:
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
        raise ValueError(f"{path} is not a readable file")
    return path


def _route(t: _Table, index: int, defaults: UpstreamSettings,
           case_insensitive: bool = False) -> Optional[RouteConfig]:
    """The route, or None when its path is invalid (so no other check trips on it)."""
    path = t.string("path", None, required=True, check=_route_prefix)
    host = t.string("host", None, check=_route_host)
    upstream = t.string("upstream", "http://invalid", required=True, check=_http_url)
    auth = t.choice("auth", AUTH_MODES, "session")
    rule = t.string("rule", None)
    groups: Tuple[str, ...] = t.strings("allowed_groups", ())
    emails: Tuple[str, ...] = t.strings("allowed_emails", ())
    domains: Tuple[str, ...] = t.strings("allowed_email_domains", (), check=_email_domain)
    verified = t.boolean("require_email_verified", True)
    policy = None
    if rule is not None or groups or emails or domains:
        if auth == "none":
            t.problem("auth", '"none" cannot be combined with rule or allowed_* (nobody is known)')
        try:
            policy = Policy.parse(rule, allowed_groups=groups, allowed_emails=emails,
                                  allowed_email_domains=domains, require_email_verified=verified)
        except RuleSyntaxError as e:
            t.problem("rule", str(e))
    methods: Tuple[str, ...] = t.strings("methods", (), check=_method)
    strip = t.boolean("strip_prefix", False)
    replace = t.string("replace_prefix", None, check=_replacement_prefix)
    if strip and replace is not None:
        t.problem("replace_prefix", "cannot be combined with strip_prefix = true")
    # Route-level upstream settings override the [upstream] defaults.
    settings = _upstream_settings(t, defaults)
    if path is None:
        return None
    return RouteConfig(
        index=index,
        path=path,
        host=host,
        upstream=upstream.rstrip("/"),
        auth=auth,
        strip_prefix=strip,
        replace_prefix=replace,
        pass_host_header=t.boolean("pass_host_header", False),
        allow_encoded_slashes=t.boolean("allow_encoded_slashes", False),
        settings=settings,
        rule=rule,
        allowed_groups=groups,
        allowed_emails=emails,
        allowed_email_domains=domains,
        require_email_verified=verified,
        policy_mode=t.choice("policy_mode", ("enforce", "audit"), "enforce"),
        methods=methods,
        cors_preflight=t.boolean("cors_preflight", False),
        session_expiry_headers=t.boolean("session_expiry_headers", False),
        case_insensitive=t.boolean("case_insensitive", case_insensitive),
        websocket_origins=t.strings("websocket_origins", (), check=origin_of)
        if t.has("websocket_origins") else None,
        policy=policy,
    )


def _method(text: str) -> str:
    if text not in HTTP_METHODS:
        raise ValueError(f"{text!r} is not one of {', '.join(HTTP_METHODS)}")
    return text


def _email_domain(text: str) -> str:
    domain = text.lower().rstrip(".")
    if not domain or "@" in domain or not all(_HOST_LABEL.match(x) for x in domain.split(".")):
        raise ValueError(f"{text!r} is not a domain name")
    return domain


def _replacement_prefix(text: str) -> str:
    if text == "":
        return text
    return _route_prefix(text)


def _string_table(t: _Table, key: str, check_key: Optional[Callable[[str], Any]] = None
                  ) -> Tuple[Tuple[str, str], ...]:
    """A table of string values, like C{auth_params = { prompt = "login" }}."""
    table = t.table(key)
    if table is None:
        return ()
    out = []
    for name, value in table.items():
        if not isinstance(value, str):
            t.problem(f"{key}.{name}", f"expected a string, got {_describe(value)}")
            continue
        if check_key is not None:
            try:
                check_key(name)
            except ValueError as e:
                t.problem(f"{key}.{name}", str(e))
                continue
        out.append((name, value))
    return tuple(out)


def _not_reserved(name: str) -> str:
    if name in RESERVED_AUTH_PARAMS:
        raise ValueError("is set by the proxy itself and cannot be configured")
    return name


def _absolute_path(text: str) -> str:
    return _route_prefix(text)


def _oidc(t: _Table) -> OIDCConfig:
    issuer = t.string("issuer", "https://invalid", required=True, check=_http_url)
    scopes: Tuple[str, ...] = t.strings("scopes", ("openid", "email", "profile"))
    if "openid" not in scopes:
        t.problem("scopes", "must include 'openid'")
    method = t.choice("token_endpoint_auth_method", CLIENT_AUTH_METHODS, "client_secret_basic")
    secret = t.secret("client_secret")
    private_key = t.secret("private_key")
    if method in ("client_secret_basic", "client_secret_post") and not t.has("client_secret"):
        t.problem("client_secret", f"is required with token_endpoint_auth_method = {method!r}")
    if method == "private_key_jwt" and not t.has("private_key"):
        t.problem("private_key", "is required with token_endpoint_auth_method = 'private_key_jwt'")
    pkce = t.boolean("pkce", True)
    if method == "none" and not pkce:
        t.problem("pkce", "must be true for a public client (token_endpoint_auth_method = 'none')")
    discovery = t.boolean("discovery", True)
    endpoints = []
    for key in ENDPOINT_KEYS:
        url = t.string(key, None, check=_http_url)
        if url is not None:
            endpoints.append((key, url))
    if not discovery:
        present = {k for k, _ in endpoints}
        for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            if key not in present:
                t.problem(key, "is required when discovery = false")
    algorithms: Tuple[str, ...] = t.strings(
        "id_token_algorithms", (), check=lambda a: _one_of(a, ID_TOKEN_ALGORITHMS)
    )
    if any(a.startswith("HS") for a in algorithms) and secret is None:
        t.problem("id_token_algorithms", "HS* algorithms need a client_secret")
    extra = _oidc_parity(t, issuer)
    return OIDCConfig(
        issuer=issuer,
        client_id=t.string("client_id", "", required=True),
        client_secret=secret,
        scopes=scopes,
        pkce=pkce,
        token_endpoint_auth_method=method,
        private_key=private_key,
        private_key_id=t.string("private_key_id", None),
        private_key_alg=t.choice("private_key_alg", ("RS256", "RS384", "RS512", "PS256",
                                                     "ES256", "ES384", "ES512"), "RS256"),
        discovery=discovery,
        discovery_params=_string_table(t, "discovery_params"),
        endpoints=tuple(endpoints),
        auth_params=_string_table(t, "auth_params", _not_reserved),
        id_token_algorithms=algorithms,
        leeway=t.duration("leeway", 60.0),
        iat_slack=t.duration("iat_slack", 600.0, positive=True),
        userinfo=t.boolean("userinfo", False),
        timeout=t.duration("timeout", 5.0, positive=True),
        max_response_size=t.size("max_response_size", 1_000_000),
        max_concurrent_requests=t.integer("max_concurrent_requests", 64, minimum=1),
        max_queued_requests=t.integer("max_queued_requests", 256),
        jwks_cache_ttl=t.duration("jwks_cache_ttl", 3600.0, positive=True),
        jwks_min_refresh_interval=t.duration("jwks_min_refresh_interval", 60.0),
        ca_bundle=t.string("ca_bundle", None, check=_readable_file),
        callback_path=t.string("callback_path", None, check=_absolute_path),
        pass_access_token=t.choice("pass_access_token", ("none", "authorization", "header"), "none"),
        pass_id_token=t.boolean("pass_id_token", False),
        end_session=t.boolean("end_session", True),
        **extra,
    )


MIN_HMAC_SECRET_BYTES = 32
"""RFC 7518, 3.2: an HS256 key has at least 256 bits."""


def _bearer_hmac(t: _Table, bearer: BearerConfig, oidc: Optional[OIDCConfig]) -> None:
    """
    Access tokens are signed with the issuer's asymmetric keys; HS* only when
    C{bearer.algorithms} lists it and C{bearer.hmac_secret} holds its own
    secret (never the client secret, which every holder of it could sign with).
    """
    hmac_listed = any(a.startswith("HS") for a in bearer.algorithms)
    secret = bearer.hmac_secret
    if hmac_listed and secret is None and not t.has("hmac_secret"):
        t.problem("algorithms", "HS* algorithms need bearer.hmac_secret (access tokens are never "
                  "checked with the client secret)")
    if secret is None:
        return
    if not hmac_listed:
        t.problem("hmac_secret", "is used only with an HS* algorithm in bearer.algorithms")
        return
    value = secret.reveal()
    if oidc is not None and oidc.client_secret is not None and \
            value == oidc.client_secret.reveal():
        t.problem("hmac_secret", "must not be the client secret: whoever holds it (the IdP, every "
                  "instance of this client) could sign access tokens for any user")
    elif len(value.encode("utf-8")) < MIN_HMAC_SECRET_BYTES:
        t.problem("hmac_secret", f"is shorter than {MIN_HMAC_SECRET_BYTES} bytes (from {secret.origin})")
    elif value.lstrip().startswith("{") or not _usable_hmac_key(value):
        t.problem("hmac_secret", f"looks like a key (PEM, SSH or JWK), not a shared secret "
                  f"(from {secret.origin})")


def _usable_hmac_key(value: str) -> bool:
    """Whether pyjwt takes C{value} as an HMAC key (it refuses PEM and SSH keys)."""
    import jwt
    from jwt.algorithms import HMACAlgorithm

    try:
        HMACAlgorithm(HMACAlgorithm.SHA256).prepare_key(value.encode("utf-8"))
    except jwt.InvalidKeyError:
        return False
    return True


def _landing_page(text: str) -> str:
    """A path (a safe same-origin return-to) or an absolute http(s) URL."""
    if text.startswith("/"):
        if safe_return_to(text) is None:
            raise ValueError(f"{text!r} is not a plain same-origin path")
        return text
    return _http_url(text)


def _oidc_parity(t: _Table, issuer: str) -> Dict[str, Any]:
    """
    The C{[oidc]} keys of the landing pages, where logins start, and the
    IdP client's retries and TLS (the names Traefik Hub's importer emits).
    """
    old = t.string("post_logout_redirect_uri", None, check=_landing_page)
    new = t.string("post_logout_redirect_url", None, check=_landing_page)
    if t.has("post_logout_redirect_uri"):
        if t.has("post_logout_redirect_url"):
            t.problem("post_logout_redirect_uri", "is the former name of post_logout_redirect_url; "
                      "set only post_logout_redirect_url")
        else:
            log.warn("config: {key} is deprecated; rename it to post_logout_redirect_url",
                     key=t.keypath("post_logout_redirect_uri"))
    login_url = t.string("login_url", None, check=_absolute_path)
    disable_login = t.boolean("disable_login", False)
    if login_url is not None and disable_login:
        t.problem("disable_login", "cannot be combined with login_url (one starts logins at one "
                  "path, the other never starts any)")
    certificate = _client_certificate(t, UpstreamSettings())
    insecure = t.boolean("insecure_skip_verify", False)
    if insecure and not issuer.startswith("https://"):
        t.problem("insecure_skip_verify", "only makes sense with an https issuer "
                  f"({issuer!r} is not TLS)")
    if insecure and t.has("ca_bundle"):
        t.problem("insecure_skip_verify", "cannot be combined with ca_bundle")
    return {
        "post_logout_redirect_url": new if new is not None else old,
        "post_login_redirect_url": t.string("post_login_redirect_url", None, check=_landing_page),
        "login_url": login_url,
        "disable_login": disable_login,
        "logout_path": t.string("logout_path", None, check=_absolute_path),
        "max_retries": t.integer("max_retries", 0, minimum=0, maximum=10),
        "insecure_skip_verify": insecure,
        **certificate,
    }


def _one_of(value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
    return value


def _cookie_name(text: str) -> str:
    if not _TOKEN.match(text):
        raise ValueError(f"{text!r} is not a valid cookie name")
    return text


def _cookie_domain(text: str) -> str:
    if not text or any(c in text for c in ";, \t") or text.startswith("."):
        raise ValueError(f"{text!r} is not a cookie domain (a host name without a leading dot)")
    return text


def _session(t: _Table) -> SessionConfig:
    secrets = t.secrets("secrets")
    for i, s in enumerate(secrets):
        if len(s.reveal().encode("utf-8")) < 32:
            t.problem(f"secrets[{i}]", f"the secret from {s.origin} is shorter than 32 bytes")
    return SessionConfig(
        store=t.choice("store", ("cookie", "redis"), "cookie"),
        secrets=secrets,
        lifetime=t.duration("lifetime", 8 * 3600.0, positive=True),
        idle_timeout=t.duration("idle_timeout", 0.0),
        cookie_name=t.string("cookie_name", "oidcproxy", check=_cookie_name),
        cookie_path=t.string("cookie_path", "/", check=_absolute_path),
        cookie_domain=t.string("cookie_domain", None, check=_cookie_domain),
        same_site=t.choice("same_site", ("Lax", "Strict", "None"), "Lax"),
        store_tokens=t.boolean("store_tokens", True),
        max_cookie_chunks=t.integer("max_cookie_chunks", 5, minimum=1, maximum=20),
        claims=t.choice("claims", ("all", "used"), "all"),
        refresh=t.choice("refresh", ("off", "on_expiry", "interval"), "on_expiry"),
        refresh_leeway=t.duration("refresh_leeway", 60.0),
        refresh_interval=t.duration("refresh_interval", 300.0, positive=True),
        idp_outage_grace=t.duration("idp_outage_grace", 0.0),
        revoke_on_logout=t.boolean("revoke_on_logout", True),
        **_sliding(t),
    )


def _sliding(t: _Table) -> Dict[str, Any]:
    """C{session.sliding}, which needs the window C{idle_timeout} gives it, and C{cookie_secure}."""
    sliding = t.boolean("sliding", False)
    try:
        idle = parse_duration(t._data.get("idle_timeout", "0s"))
    except ValueError:  # reported as idle_timeout's own problem
        idle = 0.0
    if sliding and idle <= 0:
        t.problem("sliding", "needs idle_timeout > 0: each request moves the expiry to "
                  "idle_timeout from now (never beyond lifetime from login)")
    secure = t.boolean("cookie_secure", False) if t.has("cookie_secure") else \
        _optional(t, "cookie_secure")
    return {"sliding": sliding, "cookie_secure": secure}


def _state_cookie(t: _Table) -> StateCookieConfig:
    same_site = t.choice("same_site", ("Lax", "Strict", "None"), "Lax")
    if same_site == "Strict":
        t.problem("same_site", '"Strict" would break every login: the IdP\'s redirect back to '
                  "the callback is a cross-site navigation, which does not carry Strict cookies; "
                  'use "Lax" (or "None")')
    return StateCookieConfig(
        name=t.string("name", "oidcproxy_state", check=_cookie_name),
        max_age=t.duration("max_age", 600.0, positive=True),
        max_count=t.integer("max_count", 5, minimum=1, maximum=20),
        path=t.string("path", "/", check=_absolute_path),
        domain=t.string("domain", None, check=_cookie_domain),
        same_site=same_site,
        secure=t.boolean("secure", False) if t.has("secure") else _optional(t, "secure"),
        http_only=t.boolean("http_only", True),
    )


def _optional(t: _Table, key: str) -> Optional[bool]:
    """Mark an absent optional key as known: None (its default depends on other keys)."""
    t._known.append(key)
    return None


def _csrf(t: _Table) -> CSRFConfig:
    return CSRFConfig(
        header_name=t.string("header_name", "X-CSRF-Token", check=_header_name),
        cookie_name=t.string("cookie_name", "oidcproxy_csrf", check=_cookie_name),
        secure=t.boolean("secure", False) if t.has("secure") else _optional(t, "secure"),
    )


def _redis(t: _Table) -> RedisConfig:
    def check(url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss") or not parts.hostname:
            raise ValueError(f"{url!r} is not a redis:// or rediss:// URL")
        if parts.password:
            raise ValueError("must not hold a password; use redis.password (a secret reference)")
        try:
            _ = parts.port
        except ValueError:
            raise ValueError(f"{url!r} has an invalid port") from None
        path = parts.path.strip("/")
        if path and not path.isdigit():
            raise ValueError(f"{url!r}: the path must be a database number")
        return url

    def address(text: str) -> Tuple[str, int]:
        host, sep, port = text.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{text!r} is not a host:port address")
        return host.strip("[]"), int(port)

    sentinel: Tuple[Tuple[str, int], ...] = t.strings("sentinel", (), check=address)
    master_name = t.string("master_name", None)
    if sentinel and not master_name:
        t.problem("master_name", "is required with sentinel")
    if master_name and not sentinel:
        t.problem("master_name", "only makes sense with sentinel")
    url = t.string("url", "redis://127.0.0.1:6379/0", check=check)
    ca_bundle = t.string("ca_bundle", None, check=_readable_file)
    if ca_bundle and not url.startswith("rediss://"):
        t.problem("ca_bundle", "only makes sense with a rediss:// url (TLS)")
    return RedisConfig(
        url=url,
        username=t.string("username", None),
        password=t.secret("password"),
        key_prefix=t.string("key_prefix", "oidcproxy:"),
        pool_size=t.integer("pool_size", 10, minimum=1, maximum=1000),
        connect_timeout=t.duration("connect_timeout", 2.0, positive=True),
        command_timeout=t.duration("command_timeout", 2.0, positive=True),
        ca_bundle=ca_bundle,
        sentinel=sentinel,
        master_name=master_name,
    )


def _header_name(text: str) -> str:
    if not _TOKEN.match(text):
        raise ValueError(f"{text!r} is not a valid header name")
    return text


def _headers(t: _Table) -> Tuple[Tuple[str, Tuple[str, ...]], ...]:
    out = []
    seen = set()
    for name, claims in t.items():
        where = t.keypath(name)
        try:
            _header_name(name)
        except ValueError as e:
            t._problems.add(where, str(e))
            continue
        if name.lower() in seen:
            t._problems.add(where, "is set twice (header names are case-insensitive)")
            continue
        seen.add(name.lower())
        if isinstance(claims, str):
            claims = [claims]
        if not isinstance(claims, list) or not claims or \
                not all(isinstance(c, str) and c for c in claims):
            t._problems.add(where, f"expected a claim name or a list of them, got {_describe(claims)}")
            continue
        out.append((name, tuple(claims)))
    return tuple(out)


def _endpoint_string(text: str) -> str:
    """A Twisted server endpoint string: C{type:args}, checked for its shape only."""
    kind = text.split(":", 1)[0]
    if not text.strip() or not kind or not kind.replace("-", "").isalnum():
        raise ValueError(f"{text!r} is not a Twisted endpoint string like \"tcp:9102:interface=127.0.0.1\"")
    return text


def _endpoint_prefix(text: str) -> str:
    prefix = _route_prefix(text)
    if prefix == "/":
        raise ValueError("must not be '/': the proxy's endpoints need a prefix of their own")
    return prefix


def _path_matches(cookie_path: str, path: str) -> bool:
    """RFC 6265 5.1.4: whether a cookie of C{cookie_path} is sent to C{path}."""
    return path == cookie_path or path.startswith(cookie_path.rstrip("/") + "/")


def _check_login_paths(problems: _Problems, oidc: OIDCConfig, public_url: Optional[str],
                       prefix: str, state: StateCookieConfig, session: SessionConfig) -> None:
    """The checks of C{[oidc]} and C{[state_cookie]} that need the other tables too."""
    callback = oidc.callback_path or prefix + "/callback"
    logout = oidc.logout_path or prefix + "/logout"
    paths = [("oidc.callback_path", callback), ("oidc.logout_path", logout)]
    if oidc.login_url is not None:
        paths.append(("oidc.login_url", oidc.login_url))
    for i, (key, path) in enumerate(paths):
        for other, other_path in paths[:i]:
            if path == other_path:
                problems.add(key, f"{path!r} is already the path of {other}")
    origin = None
    host = None
    if public_url is not None:
        parts = urlsplit(public_url)
        origin = f"{parts.scheme}://{parts.netloc}".lower()
        host = (parts.hostname or "").lower()
    landing = oidc.post_login_redirect_url
    if landing is not None and not landing.startswith("/"):
        parts = urlsplit(landing)
        if origin is None or f"{parts.scheme}://{parts.netloc}".lower() != origin:
            problems.add("oidc.post_login_redirect_url",
                         f"{landing!r} is not on public_url's origin ({origin or 'unset'}); "
                         "give a path or a URL on that origin")
    if not _path_matches(state.path, callback):
        problems.add("state_cookie.path", f"{state.path!r} does not cover the callback path "
                     f"{callback!r}: the browser would not send the state cookie back")
    if state.domain is not None and host is not None:
        domain = state.domain.lower()
        if host != domain and not host.endswith("." + domain):
            problems.add("state_cookie.domain", f"{state.domain!r} does not cover public_url's "
                         f"host {host!r}: browsers would refuse the cookie")
    secure = session.cookie_secure if session.cookie_secure is not None else \
        (public_url or "").startswith("https://")
    if session.cookie_secure is False and session.same_site == "None":
        problems.add("session.cookie_secure", 'false cannot be combined with same_site = "None" '
                     "(browsers refuse SameSite=None cookies that are not Secure)")
    state_secure = state.secure if state.secure is not None else secure
    if state.same_site == "None" and not state_secure:
        problems.add("state_cookie.same_site", '"None" needs a secure cookie (browsers refuse '
                     "SameSite=None without Secure): set secure = true and an https public_url")


def _client_limits(top: _Table) -> ClientLimits:
    """The top-level keys that bound what a client may hold and how slowly it may send."""
    d = ClientLimits()
    limits = ClientLimits(
        header_timeout=top.duration("client_header_timeout", d.header_timeout, positive=True),
        body_timeout=top.duration("client_body_timeout", d.body_timeout),
        body_min_rate=top.size("client_body_min_rate", d.body_min_rate),
        max_connections=top.integer("max_client_connections", d.max_connections, minimum=1),
        max_per_address=top.integer("max_client_connections_per_address", d.max_per_address),
    )
    if limits.max_per_address > limits.max_connections:
        top.problem("max_client_connections_per_address",
                    f"{limits.max_per_address} is above max_client_connections "
                    f"({limits.max_connections})")
    return limits


def parse_config(data: Dict[str, Any], source: str) -> Config:
    """
    Validate a parsed TOML document.

    @raise ConfigError: with every problem found.
    """
    problems = _Problems()
    top = _Table(problems, data, "")
    defaults = Config(source=source)
    listen: Tuple[str, ...] = top.strings("listen", defaults.listen)
    if top.has("listen") and not listen:
        top.problem("listen", "needs at least one endpoint (or use --listen)")
    public_url = top.string("public_url", None, check=_http_url)
    trusted = top.strings("trusted_proxies", (), check=_network)
    prefix = top.string("endpoints_prefix", defaults.endpoints_prefix, check=_endpoint_prefix)
    workers = top.integer("workers", 1, minimum=1, maximum=MAX_WORKERS)
    drain_timeout = top.duration("drain_timeout", defaults.drain_timeout)
    keepalive = top.duration("keepalive_timeout", defaults.keepalive_timeout, positive=True)
    client_limits = _client_limits(top)
    max_websockets = top.integer("max_websockets", defaults.max_websockets, minimum=1)
    access_log = top.boolean("access_log", True)
    username_claim = top.string("username_claim", "sub")
    case_insensitive = top.boolean("case_insensitive_routes", False)
    websocket_origins = top.strings("websocket_origins", (), check=origin_of)

    upstream_table = top.table("upstream")
    upstream = UpstreamSettings()
    if upstream_table is not None:
        upstream = _upstream_settings(upstream_table, upstream)
        upstream_table.done()

    routes = []
    for i, rt in enumerate(top.tables("routes")):
        route = _route(rt, i, upstream, case_insensitive)
        rt.done()
        if route is not None:
            routes.append(route)
    if not top.has("routes"):
        top.problem("routes", "at least one [[routes]] entry is required")
    seen: Dict[Tuple[Optional[str], str], int] = {}
    folded: Dict[Tuple[Optional[str], str], RouteConfig] = {}
    for r in routes:
        key = (r.host, r.path)
        where = f"on {'host ' + r.host if r.host else 'every host'}"
        if key in seen:
            problems.add(f"{r.name}.path", f"{r.path!r} {where} is already routed by "
                         f"routes[{seen[key]}]")
        seen[key] = r.index
        other = folded.setdefault((r.host, r.path.lower()), r)
        if other.path != r.path and (other.case_insensitive or r.case_insensitive):
            problems.add(f"{r.name}.path", f"{r.path!r} {where} differs only in case from "
                         f"routes[{other.index}]'s {other.path!r}, and one of them is "
                         "case_insensitive: spell both the same or merge them")
        # A case-insensitive route would take the endpoints' paths in another case.
        path, inside = (r.path.lower(), prefix.lower()) if r.case_insensitive else (r.path, prefix)
        if prefix and (path == inside or path.startswith(inside + "/")):
            problems.add(f"{r.name}.path", f"{r.path!r} is inside endpoints_prefix {prefix!r}")

    oidc = None
    oidc_table = top.table("oidc")
    if oidc_table is not None:
        oidc = _oidc(oidc_table)
        oidc_table.done()
    session = SessionConfig()
    session_table = top.table("session")
    if session_table is not None:
        session = _session(session_table)
        session_table.done()
    redis = None
    redis_table = top.table("redis")
    if redis_table is not None:
        redis = _redis(redis_table)
        redis_table.done()
    if session.store == "redis" and redis is None:
        problems.add("session.store", '"redis" needs a [redis] table with url')
    bearer = BearerConfig()
    bearer_table = top.table("bearer")
    if bearer_table is not None:
        bearer = BearerConfig(
            audiences=bearer_table.strings("audiences", ()),
            introspection=bearer_table.boolean("introspection", False),
            introspection_cache=bearer_table.duration("introspection_cache", 60.0),
            cache_size=bearer_table.integer("cache_size", 10_000, minimum=1),
            issuer=bearer_table.string("issuer", None, check=_http_url),
            jwks_uri=bearer_table.string("jwks_uri", None, check=_http_url),
            jwks_file=bearer_table.string("jwks_file", None, check=_readable_file),
            algorithms=bearer_table.strings(
                "algorithms", (), check=lambda a: _one_of(a, ID_TOKEN_ALGORITHMS)),
            hmac_secret=bearer_table.secret("hmac_secret"),
        )
        _bearer_hmac(bearer_table, bearer, oidc)
        if bearer.issuer is not None and bearer.issuer != (oidc.issuer if oidc else None):
            if not bearer.audiences:
                bearer_table.problem("audiences", "is required with another issuer: a token "
                                     "for another resource server must be refused")
            if bearer.introspection:
                bearer_table.problem("introspection", "works only with the oidc.issuer's tokens")
        elif bearer.jwks_uri or bearer.jwks_file:
            bearer_table.problem("issuer", "is required with jwks_uri or jwks_file")
        if bearer.jwks_uri and bearer.jwks_file:
            bearer_table.problem("jwks_file", "cannot be combined with jwks_uri")
        bearer_table.done()
    admin = None
    admin_table = top.table("admin")
    if admin_table is not None:
        token = admin_table.secret("token", required=True)
        listen_admin = admin_table.string("listen", "tcp:9091:interface=127.0.0.1")
        admin_table.done()
        if session.store != "redis":
            problems.add("admin", 'the session admin API needs session.store = "redis"')
        if token is not None:
            if len(token.reveal()) < 16:
                problems.add("admin.token", f"the token from {token.origin} is shorter than 16 characters")
            admin = AdminConfig(token=token, listen=listen_admin)
    metrics = None
    metrics_table = top.table("metrics")
    if metrics_table is not None:
        metrics = MetricsConfig(
            listen=metrics_table.string("listen", "tcp:9102:interface=127.0.0.1",
                                       check=_endpoint_string))
        metrics_table.done()
    state_cookie = StateCookieConfig()
    state_table = top.table("state_cookie")
    if state_table is not None:
        state_cookie = _state_cookie(state_table)
        state_table.done()
    csrf = None
    csrf_table = top.table("csrf")
    if csrf_table is not None:
        csrf = _csrf(csrf_table)
        csrf_table.done()
        if oidc_table is None:
            problems.add("csrf", "protects session logins, which need an [oidc] table")
    headers = defaults.headers
    headers_table = top.table("headers")
    if headers_table is not None:
        headers = _headers(headers_table)
    top.done()

    login_routes = [r for r in routes if r.auth in ("session", "session_or_bearer", "optional")]
    for r in routes:
        if r.auth != "none" and oidc_table is None:
            what = '"session" (the default)' if r.auth == "session" else repr(r.auth)
            problems.add(f"{r.name}.auth", f"is {what}, which needs an [oidc] table; "
                         'set auth = "none" for a public route')
            break
    if login_routes:
        needs = f'{login_routes[0].name} has auth = "{login_routes[0].auth}"'
        if public_url is None and not top.has("public_url"):
            problems.add("public_url", f"is required for login ({needs})")
        if not session.secrets and (session_table is None or not session_table.has("secrets")):
            problems.add("session.secrets", f"at least one secret is required for login ({needs})")

    if oidc is not None:
        _check_login_paths(problems, oidc, public_url, prefix, state_cookie, session)

    if problems.items:
        raise ConfigError(source, problems.items)
    return Config(
        source=source,
        listen=listen,
        public_url=public_url.rstrip("/") if public_url else None,
        trusted_proxies=trusted,
        endpoints_prefix=prefix,
        workers=workers,
        drain_timeout=drain_timeout,
        keepalive_timeout=keepalive,
        client_limits=client_limits,
        max_websockets=max_websockets,
        access_log=access_log,
        case_insensitive_routes=case_insensitive,
        websocket_origins=websocket_origins,
        upstream=upstream,
        routes=tuple(routes),
        oidc=oidc,
        session=session,
        redis=redis,
        state_cookie=state_cookie,
        csrf=csrf,
        username_claim=username_claim,
        admin=admin,
        metrics=metrics,
        bearer=bearer,
        headers=headers,
    )


def load_config(path: str) -> Config:
    """
    Read and validate the TOML file at C{path}.

    @raise ConfigError: unreadable file, TOML syntax error, or invalid values.
    """
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(path, [f"cannot read the file: {e.strerror or e}"]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, [f"TOML syntax error: {e}"]) from None
    except UnicodeDecodeError as e:
        raise ConfigError(path, [f"not UTF-8 text: byte 0x{e.object[e.start]:02x} at offset {e.start}"]) \
            from None
    return parse_config(data, path)
