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
"""

from __future__ import annotations

import base64
import json
import re
import secrets
from http.cookiejar import Cookie, DefaultCookiePolicy
from typing import Any, Dict, List, Mapping, Optional, Sequence, Set, Tuple, Type, cast
from urllib.parse import quote_plus, unquote_plus, urlencode, urlsplit, urlunsplit

import attr
import jwt
import treq
from cryptography.hazmat.primitives import serialization
from treq.client import HTTPClient
from treq.cookies import IndexableCookieJar
from twisted.internet import error as ierror
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import client as webclient
from twisted.web import error as weberror
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse

from ..config import ENDPOINT_KEYS
from ..core.admission import QueueFull, SlotQueue
from ..core.flight import fire_waiters
from ..core.httpclient import BytesProducer, QuietPool
from ..core.metrics import NullMetrics
from ..core.tls import (
    ClientCertificatePolicy,
    UnverifiedPolicy,
    client_certificate,
    describe_tls_error,
    trust_root,
)
from .jws import KeySet, TokenError

__all__ = [
    "ClientAuth",
    "Provider",
    "ProviderError",
    "ProviderMetadata",
    "make_http_client",
]

log = Logger()

CLIENT_AUTH_METHODS = ("client_secret_basic", "client_secret_post", "private_key_jwt", "none")

# Algorithms a private_key_jwt client assertion may be signed with.
ASSERTION_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)

ASSERTION_LIFETIME = 60
"""Seconds a private_key_jwt client assertion is valid."""

_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

# Metadata fields that hold URLs; the ones `endpoints` may set.
_URL_FIELDS = ("issuer", *ENDPOINT_KEYS)
_REQUIRED_ENDPOINTS = ("authorization_endpoint", "token_endpoint", "jwks_uri")
_OPTIONAL_ENDPOINTS = (
    "userinfo_endpoint",
    "end_session_endpoint",
    "revocation_endpoint",
    "introspection_endpoint",
)

_ACCEPT_JSON = b"application/json"
_ACCEPT_JWKS = b"application/jwk-set+json, application/json"

# What a failed connection, TLS handshake or transfer raises from Twisted's
# Agent (and from the HTTP parser for a garbled answer).
_TRANSPORT_ERRORS: Tuple[Type[BaseException], ...] = (
    ierror.ConnectError,  # refused, connect timeout, DNS lookup, no route...
    ierror.ConnectionLost,
    ierror.ConnectionDone,
    ierror.DNSLookupError,
    webclient.ResponseFailed,
    webclient.ResponseNeverReceived,
    webclient.RequestTransmissionFailed,
    webclient.RequestNotSent,
    webclient.RequestGenerationFailed,
    weberror.SchemeNotSupported,
    OSError,
)

_PRINTABLE = re.compile(r"[^\x20-\x7e]")

_RETRIED_REASONS = frozenset({"unreachable", "timeout"})
"""L{ProviderError} reasons an idempotent request is retried after (with C{max_retries})."""


class ProviderError(Exception):
    """
    Talking to the identity provider failed.

    @ivar status: the HTTP status the proxy should answer with: 502 (a bad
        answer or none), 503 (not ready: discovery or the keys have not
        loaded yet, or the provider was stopped), 504 (timeout), 401 (the
        token endpoint said C{invalid_grant}: the user should log in again).
    @ivar reason: a stable snake_case code for logs and metrics.
    @ivar oauth_error: the OAuth C{error} code of a token or revocation
        endpoint's error answer (e.g. C{invalid_grant}), else None.
    @ivar detail: human text; never a token, code, secret or assertion.
    """

    def __init__(self, status: int, reason: str, detail: str = "", oauth_error: Optional[str] = None) -> None:
        super().__init__(status, reason, detail, oauth_error)
        self.status = status
        self.reason = reason
        self.oauth_error = oauth_error
        self.detail = detail

    def __str__(self) -> str:
        text = f"{self.reason} ({self.status})"
        if self.oauth_error is not None:
            text += f" [{self.oauth_error}]"
        if self.detail:
            text += f": {self.detail}"
        return text


def _is_http_url(value: Any) -> bool:
    """An absolute http(s) URL with a host, no fragment, no whitespace or controls."""
    if not isinstance(value, str) or not value or _PRINTABLE.search(value) or " " in value:
        return False
    try:
        parts = urlsplit(value)
        host = parts.hostname
        _ = parts.port  # raises ValueError for a bad port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(host) and not parts.fragment and "#" not in value


def _strings(value: Any) -> Optional[Tuple[str, ...]]:
    """A JSON list of strings as a tuple, or None if it is anything else."""
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        return None
    return tuple(value)


def _bad_discovery(detail: str) -> ProviderError:
    return ProviderError(502, "bad_discovery", detail)


@attr.s(frozen=True, auto_attribs=True)
class ProviderMetadata:
    """What we use of a provider's discovery document (OpenID Connect Discovery 1.0, 3)."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: Optional[str] = None
    end_session_endpoint: Optional[str] = None
    revocation_endpoint: Optional[str] = None
    introspection_endpoint: Optional[str] = None
    id_token_signing_alg_values_supported: Tuple[str, ...] = ("RS256",)
    code_challenge_methods_supported: Tuple[str, ...] = ()
    authorization_response_iss_parameter_supported: bool = False

    @classmethod
    def from_discovery(cls, document: Any, expected_issuer: str) -> ProviderMetadata:
        """
        Validate a parsed discovery document.

        The C{issuer} must be exactly C{expected_issuer} (not even a trailing
        slash may differ: OpenID Connect Discovery 1.0, 4.3). The authorization,
        token and JWKS endpoints are required; every endpoint present must be
        an absolute http(s) URL (C{null} counts as absent). Unknown members are
        ignored.

        @raise ProviderError: 502 C{issuer_mismatch} or C{bad_discovery}.
        """
        if not isinstance(document, dict):
            raise _bad_discovery("the discovery document is not a JSON object")
        issuer = document.get("issuer")
        if not isinstance(issuer, str):
            raise _bad_discovery("the discovery document has no string 'issuer'")
        if issuer != expected_issuer:
            shown = _PRINTABLE.sub("?", issuer[:200])
            raise ProviderError(
                502,
                "issuer_mismatch",
                f"the discovery document is for issuer {shown!r}, not {expected_issuer!r}",
            )
        values: Dict[str, Any] = {"issuer": issuer}
        for name in _REQUIRED_ENDPOINTS:
            if not _is_http_url(document.get(name)):
                raise _bad_discovery(f"'{name}' is missing or not an http(s) URL")
            values[name] = document[name]
        for name in _OPTIONAL_ENDPOINTS:
            value = document.get(name)
            if value is None:
                continue
            if not _is_http_url(value):
                raise _bad_discovery(f"'{name}' is not an http(s) URL")
            values[name] = value

        name = "id_token_signing_alg_values_supported"
        if document.get(name) is not None:
            algs = _strings(document[name])
            if not algs:
                raise _bad_discovery(f"'{name}' is not a non-empty list of strings")
            values[name] = algs
        name = "code_challenge_methods_supported"
        if document.get(name) is not None:
            methods = _strings(document[name])
            if methods is None:
                raise _bad_discovery(f"'{name}' is not a list of strings")
            values[name] = methods
        name = "authorization_response_iss_parameter_supported"
        if document.get(name) is not None:
            if not isinstance(document[name], bool):
                raise _bad_discovery(f"'{name}' is not a boolean")
            values[name] = document[name]
        return cls(**values)


def _load_private_key(pem: bytes) -> Any:
    try:
        return serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as e:
        # The message names the problem (not PEM, encrypted...), never the key.
        raise ValueError(
            f"private_key_pem is not an unencrypted PEM private key ({type(e).__name__})"
        ) from None


@attr.s(frozen=True, auto_attribs=True)
class ClientAuth:
    """
    How this client authenticates to the token endpoint (OpenID Connect Core
    1.0, 9). Secrets are left out of C{repr}.

    @raise ValueError: an unknown method, or a method without what it needs.
    """

    client_id: str
    method: str = "client_secret_basic"
    client_secret: Optional[str] = attr.ib(default=None, repr=False)
    private_key_pem: Optional[bytes] = attr.ib(default=None, repr=False)
    private_key_id: Optional[str] = None
    private_key_alg: str = "RS256"

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.client_id, str) or not self.client_id:
            raise ValueError("client_id must be a non-empty string")
        if self.method not in CLIENT_AUTH_METHODS:
            raise ValueError(f"unknown client authentication method {self.method!r}; "
                             f"use one of {', '.join(CLIENT_AUTH_METHODS)}")
        if self.method in ("client_secret_basic", "client_secret_post"):
            if not isinstance(self.client_secret, str) or not self.client_secret:
                raise ValueError(f"{self.method} needs a non-empty client_secret")
        if self.method == "private_key_jwt":
            if not isinstance(self.private_key_pem, bytes) or not self.private_key_pem:
                raise ValueError("private_key_jwt needs private_key_pem (PEM bytes)")
            if self.private_key_alg not in ASSERTION_ALGORITHMS:
                raise ValueError(f"private_key_alg {self.private_key_alg!r} is not one of "
                                 f"{', '.join(sorted(ASSERTION_ALGORITHMS))}")
            if self.private_key_id is not None and (
                not isinstance(self.private_key_id, str) or not self.private_key_id
            ):
                raise ValueError("private_key_id must be a non-empty string or None")
            key = _load_private_key(self.private_key_pem)
            try:
                jwt.encode({"probe": True}, key, algorithm=self.private_key_alg)
            except (jwt.PyJWTError, ValueError, TypeError, AttributeError):
                raise ValueError(
                    f"the private key cannot sign {self.private_key_alg} (wrong key type or curve?)"
                ) from None


# -- the HTTP client ---------------------------------------------------------


class _RefuseAllCookies(DefaultCookiePolicy):
    """A cookie policy that accepts no cookie and sends none."""

    def set_ok(self, cookie: Cookie, request: Any) -> bool:
        return False

    def return_ok(self, cookie: Cookie, request: Any) -> bool:
        return False

    def domain_return_ok(self, domain: str, request: Any) -> bool:
        return False

    def path_return_ok(self, path: str, request: Any) -> bool:
        return False


def _bytes_producer(data: bytes) -> Any:
    if not isinstance(data, bytes):
        raise TypeError("request bodies must be bytes")
    return BytesProducer(data)


def _client_over(agent: Any) -> HTTPClient:
    """A treq client over C{agent} whose cookie jar keeps nothing."""
    return HTTPClient(
        agent,
        cookiejar=IndexableCookieJar(policy=_RefuseAllCookies()),
        data_to_body_producer=_bytes_producer,
    )


def make_http_client(
    reactor: Any,
    ca_bundle: Optional[str] = None,
    timeout_connect: float = 5.0,
    *,
    client_cert: Optional[str] = None,
    client_key: Optional[str] = None,
    insecure_skip_verify: bool = False,
) -> HTTPClient:
    """
    The HTTP client for talking to the provider: a treq L{HTTPClient} over an
    L{Agent} with a persistent connection pool, https certificates verified
    (against the system's roots, or only the PEM certificates in
    C{ca_bundle}), and a cookie jar that keeps nothing, so no cookie set by
    one answer is ever sent with another request.

    @param client_cert: with C{client_key}, the client certificate presented
        to a provider that asks for one (mutual TLS); see
        L{oidcproxy.core.tls.client_certificate}.
    @param insecure_skip_verify: accept any server certificate (for tests
        against a provider with a self-signed certificate only).
    @raise ValueError: C{ca_bundle} holds no certificate; a bad client
        certificate or key.
    @raise OSError: a file cannot be read.
    """
    pool = QuietPool(reactor, persistent=True)
    trusted = trust_root(ca_bundle) if ca_bundle is not None else None
    certificate: Any = None
    chain: Sequence[Any] = ()
    if client_cert is not None and client_key is not None:
        certificate, chain = client_certificate(client_cert, client_key)
    policy: Any
    if insecure_skip_verify:
        policy = UnverifiedPolicy(certificate, chain)
    elif certificate is not None:
        policy = ClientCertificatePolicy(certificate, chain, trust_root=trusted)
    else:
        policy = webclient.BrowserLikePolicyForHTTPS(trustRoot=trusted)
    agent = webclient.Agent(reactor, contextFactory=policy, connectTimeout=timeout_connect, pool=pool)
    return _client_over(agent)


# -- one request -------------------------------------------------------------


class _TooLarge(Exception):
    pass


class _BodyHandle:
    """
    The parts of a response that L{treq.collect} uses (C{length} and
    C{deliverBody}), remembering the
    protocol the body is delivered to so the transfer can be aborted.
    """

    def __init__(self, response: Any) -> None:
        self._response = response
        self.length = response.length
        self._protocol: Any = None

    def deliverBody(self, protocol: Any) -> None:
        self._protocol = protocol
        self._response.deliverBody(protocol)

    def abort(self) -> None:
        transport = getattr(self._protocol, "transport", None)
        if transport is not None:
            transport.stopProducing()


@attr.s(auto_attribs=True)
class _Answer:
    code: int
    headers: Headers
    body: bytes

    def content_type(self) -> str:
        value = self.headers.getRawHeaders(b"content-type", [b""])[0]
        return value.split(b";", 1)[0].strip().lower().decode("latin-1")


class _PendingCall:
    """One request in flight; remembers why it was cancelled."""

    def __init__(self) -> None:
        self.deferred: Optional[Deferred[_Answer]] = None
        self.cancelled_by: Optional[str] = None
        self.admitted = False
        """Whether it got one of C{max_concurrent_requests} (else it waited, or was turned away)."""
        self.timer: Optional[IDelayedCall] = None
        """Its deadline: first for the wait for a slot, then for the request."""
        self.admitted_at: Optional[float] = None
        """When it got its slot after waiting for one."""

    def cancel(self, why: str) -> None:
        if self.cancelled_by is None and self.deferred is not None and not self.deferred.called:
            self.cancelled_by = why
            self.deferred.cancel()


def _describe_failure(e: BaseException) -> str:
    """A short description of a transport failure (no request data in it)."""
    tls = describe_tls_error(e)
    if tls is not None:
        return tls
    reasons = getattr(e, "reasons", None)
    if reasons:
        first = reasons[0]
        inner = first.value if isinstance(first, Failure) else first
        if isinstance(inner, BaseException):
            return f"{type(e).__name__}: {_describe_failure(inner)}"
    text = str(e)
    text = _PRINTABLE.sub("?", text)[:200]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _was_cancelled(e: BaseException) -> bool:
    """Whether a failure from the Agent is really our own cancellation."""
    if isinstance(e, CancelledError):
        return True
    for reason in getattr(e, "reasons", None) or ():
        if isinstance(reason, Failure) and reason.check(CancelledError):
            return True
    return False


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse_json(answer: _Answer, what: str) -> Any:
    try:
        return json.loads(answer.body.decode("utf-8"), parse_constant=_no_constants)
    except (ValueError, RecursionError):  # includes JSONDecodeError, UnicodeDecodeError
        raise ProviderError(502, "bad_json", f"the {what} answer is not JSON") from None


def _safe_description(value: Any, secrets_sent: Sequence[str]) -> Optional[str]:
    """
    An OAuth C{error_description} fit for logs: printable, short, and dropped
    entirely if it echoes anything secret we sent.
    """
    if not isinstance(value, str) or not value:
        return None
    if any(s and s in value for s in secrets_sent):
        return None
    return _PRINTABLE.sub("?", value)[:200]


def _oauth_error(answer: _Answer, what: str, secrets_sent: Sequence[str]) -> Tuple[Optional[str], str]:
    """
    The OAuth error of a failed answer (RFC 6749, 5.2), read from a 4xx
    answer's JSON C{error} member only, and a detail for a L{ProviderError}.

    @return: C{(error, detail)}; C{error} is None when there is none.
    """
    document: Any = None
    if 400 <= answer.code < 500:
        try:
            document = _parse_json(answer, what)
        except ProviderError:
            document = None
    oauth_error = document.get("error") if isinstance(document, dict) else None
    if not isinstance(oauth_error, str) or not oauth_error:
        return None, f"the {what} answered HTTP {answer.code}"
    oauth_error = _PRINTABLE.sub("?", oauth_error)[:100]
    assert isinstance(document, dict)
    description = _safe_description(document.get("error_description"), secrets_sent)
    detail = f"the {what} answered HTTP {answer.code} {oauth_error}"
    if description:
        detail += f": {description}"
    return oauth_error, detail


def _add_query(url: str, params: Sequence[Tuple[str, str]]) -> str:
    """
    C{url} with C{params} added to its query. What the query already holds is
    kept as it is written, except the parameters named in C{params}, which
    are replaced (a parameter must not appear twice: RFC 6749, 3.1).
    """
    parts = urlsplit(url)
    names = {name for name, _ in params}
    kept = [
        piece
        for piece in parts.query.split("&")
        if piece and unquote_plus(piece.split("=", 1)[0]) not in names
    ]
    return urlunsplit(parts._replace(query="&".join([*kept, urlencode(params)])))


# -- the provider ------------------------------------------------------------


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
        if not _is_http_url(issuer):
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

        overrides: Dict[str, Any] = {}
        for name, value in (endpoints or {}).items():
            if name not in _URL_FIELDS:
                raise ValueError(f"endpoints: unknown endpoint {name!r}; use one of {', '.join(_URL_FIELDS)}")
            if not _is_http_url(value):
                raise ValueError(f"endpoints: {name} {value!r} is not an http(s) URL")
            if name == "issuer":
                if value != issuer:
                    raise ValueError(f"endpoints: issuer {value!r} is not the issuer {issuer!r}")
                continue
            overrides[name] = value

        self.issuer = issuer
        self.client = client
        self._http = http
        self._clock = clock
        self._overrides = overrides
        self._discovery_params: Dict[str, str] = dict(discovery_params or {})
        self._timeout = float(timeout)
        self._max_size = int(max_response_size)
        self._jwks_ttl = float(jwks_ttl)
        self._jwks_min_refresh = float(jwks_min_refresh)
        self._retry_initial = float(retry_initial)
        self._retry_max = float(retry_max)
        self._max_retries = max_retries
        self._retry_backoff = float(retry_backoff)
        self._private_key: Any = None
        if client.method == "private_key_jwt" and client.private_key_pem is not None:
            self._private_key = _load_private_key(client.private_key_pem)

        self.metadata: Optional[ProviderMetadata] = None
        if not discovery:
            missing = [name for name in _REQUIRED_ENDPOINTS if name not in overrides]
            if missing:
                raise ValueError(f"endpoints: without discovery {', '.join(missing)} must be given")
            self.metadata = ProviderMetadata(issuer=issuer, **overrides)

        self._keys: Optional[KeySet] = None
        self._keys_loaded_at = 0.0
        self._jwks_attempted_at: Optional[float] = None
        self._jwks_refetched_at: Optional[float] = None
        """When keys_for last started a refetch (the start-up load does not count)."""
        self._jwks_waiters: Optional[List[Deferred[KeySet]]] = None

        self._running = False
        self._loading: Optional[Deferred[None]] = None
        self._retry_call: Optional[IDelayedCall] = None
        self._retry_delay = self._retry_initial
        self._ready_waiters: List[Deferred[Provider]] = []
        self._calls: Set[_PendingCall] = set()
        self._metrics = metrics if metrics is not None else NullMetrics()
        self._slots = SlotQueue(max_concurrent_requests, max_queued_requests)

    # -- life cycle

    @property
    def ready(self) -> bool:
        """Whether the metadata and the keys are loaded."""
        return self.metadata is not None and self._keys is not None

    def start(self) -> None:
        """
        Load the metadata (unless given) and the keys in the background,
        retrying with exponential backoff until both are loaded. Calling it
        again while running does nothing.
        """
        if self._running:
            return
        self._running = True
        self._retry_delay = self._retry_initial
        if self.ready:
            self._fire_ready()
            return
        self._attempt()

    def stop(self) -> None:
        """
        Stop the background loading and cancel every request in flight
        (their callers get 503 C{stopped}). Cached keys stay usable.
        """
        self._running = False
        if self._retry_call is not None and self._retry_call.active():
            self._retry_call.cancel()
        self._retry_call = None
        for call in list(self._calls):
            call.cancel("stop")

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

    def _attempt(self) -> None:
        self._retry_call = None
        if not self._running or self._loading is not None:
            return
        d = Deferred.fromCoroutine(self._load())
        self._loading = d
        d.addCallbacks(self._loaded, self._load_failed)

    async def _load(self) -> None:
        if self.metadata is None:
            self.metadata = await self._discover()
        await self._shared_jwks_fetch()

    def _loaded(self, _: object) -> None:
        self._loading = None
        self._retry_delay = self._retry_initial
        log.info(
            "OpenID provider {issuer} ready: {count} signing key(s)",
            issuer=self.issuer,
            count=len(self._keys.keys) if self._keys is not None else 0,
        )
        self._fire_ready()

    def _load_failed(self, failure: Failure) -> None:
        self._loading = None
        if not self._running:
            return
        delay = self._retry_delay
        self._retry_delay = min(delay * 2, self._retry_max)
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
        self._retry_call = self._clock.callLater(delay, self._attempt)

    # -- discovery and keys

    def _discovery_url(self) -> str:
        base = self.issuer[:-1] if self.issuer.endswith("/") else self.issuer
        return base + "/.well-known/openid-configuration"

    async def _discover(self) -> ProviderMetadata:
        answer = await self._idempotent(
            "discovery", self._discovery_url(), accept=_ACCEPT_JSON, params=self._discovery_params
        )
        if answer.code != 200:
            raise ProviderError(502, "bad_status", f"the discovery request answered HTTP {answer.code}")
        metadata = ProviderMetadata.from_discovery(_parse_json(answer, "discovery"), self.issuer)
        if self._overrides:
            metadata = attr.evolve(metadata, **self._overrides)
        return metadata

    def _shared_jwks_fetch(self) -> Deferred[KeySet]:
        """
        Join the JWKS fetch in flight, or start one. Every caller gets its
        own Deferred: cancelling it does not cancel the fetch for the others.
        """
        waiter: Deferred[KeySet] = Deferred()
        if self._jwks_waiters is not None:
            self._jwks_waiters.append(waiter)
            return waiter
        self._jwks_waiters = [waiter]
        Deferred.fromCoroutine(self._fetch_jwks()).addBoth(self._jwks_fetched)
        return waiter

    def _jwks_fetched(self, result: Any) -> None:
        waiters, self._jwks_waiters = self._jwks_waiters or [], None
        if isinstance(result, Failure) and self._keys is not None:
            # A refetch: the callers keep the cached keys. (A failed first
            # load is reported by the background loop instead.)
            error = result.value
            if not isinstance(error, ProviderError):
                log.failure("JWKS refetch from {issuer} failed, still using the cached keys",
                            result, issuer=self.issuer)
            elif error.reason != "stopped":  # stopping is not worth a warning
                log.warn(
                    "JWKS refetch from {issuer} failed, still using the cached keys: {reason}: {detail}",
                    issuer=self.issuer,
                    reason=error.reason,
                    detail=error.detail,
                )
        fire_waiters(waiters, result)

    async def _fetch_jwks(self) -> KeySet:
        metadata = self.metadata
        if metadata is None:
            raise ProviderError(503, "not_ready", "the provider metadata is not loaded yet")
        self._jwks_attempted_at = self._clock.seconds()
        answer = await self._idempotent("JWKS", metadata.jwks_uri, accept=_ACCEPT_JWKS)
        if answer.code != 200:
            raise ProviderError(502, "bad_status", f"the JWKS request answered HTTP {answer.code}")
        try:
            keys = KeySet.from_jwks(_parse_json(answer, "JWKS"))
        except TokenError as e:
            raise ProviderError(502, "bad_jwks", e.detail) from None
        if not keys.keys:
            raise ProviderError(502, "bad_jwks", "the JWKS holds no usable signing key")
        self._keys = keys
        self._keys_loaded_at = self._clock.seconds()
        return keys

    async def keys_for(self, kid: Optional[str]) -> KeySet:
        """
        The provider's signing keys.

        They are refetched when older than C{jwks_ttl}, or when C{kid} is
        given and no key has it, but no more often than once per
        C{jwks_min_refresh} seconds, whoever asks; callers arriving while a
        fetch is in flight share it. When a refetch fails the cached keys are
        returned (and the failure logged).

        @raise ProviderError: 503 C{not_ready} before the keys first loaded.
        """
        keys = self._keys
        if keys is None:
            raise ProviderError(503, "not_ready", "the provider's signing keys are not loaded yet")
        now = self._clock.seconds()
        stale = now - self._keys_loaded_at >= self._jwks_ttl
        unknown = kid is not None and not keys.has_kid(kid)
        if not (stale or unknown):
            return keys
        if self._jwks_waiters is None:
            # Refetches are limited, not the load they follow: keys rotated
            # just after the start-up load (or a scheduled reload) are found
            # at once, and a flood of unknown kids still costs at most one
            # fetch per jwks_min_refresh.
            last = self._jwks_refetched_at
            if last is not None and now - last < self._jwks_min_refresh:
                return keys
            self._jwks_refetched_at = now
            self._metrics.jwks_refetch("unknown_kid" if unknown else "expired")
        try:
            return await self._shared_jwks_fetch()
        except ProviderError:
            # Logged once by _jwks_fetched.
            return self._keys if self._keys is not None else keys

    # -- token endpoint

    def _require_metadata(self) -> ProviderMetadata:
        if self.metadata is None:
            raise ProviderError(503, "not_ready", "the provider metadata is not loaded yet")
        return self.metadata

    def _client_assertion(self, audience: str) -> str:
        now = int(self._clock.seconds())
        claims = {
            "iss": self.client.client_id,
            "sub": self.client.client_id,
            "aud": audience,
            "jti": secrets.token_urlsafe(24),
            "iat": now,
            "exp": now + ASSERTION_LIFETIME,
        }
        headers = {"kid": self.client.private_key_id} if self.client.private_key_id else None
        return jwt.encode(claims, self._private_key, algorithm=self.client.private_key_alg, headers=headers)

    def _authenticate(
        self, token_endpoint: str, fields: List[Tuple[str, str]], headers: Headers
    ) -> List[str]:
        """
        Add the client authentication to a token request.

        @return: the secret values added, to keep them out of logs.
        """
        client = self.client
        if client.method == "client_secret_basic":
            assert client.client_secret is not None
            # RFC 6749, 2.3.1: both form-urlencoded before the Basic encoding.
            userpass = quote_plus(client.client_id, safe="") + ":" + quote_plus(client.client_secret, safe="")
            headers.setRawHeaders(
                b"authorization", [b"Basic " + base64.b64encode(userpass.encode("ascii"))]
            )
            return [client.client_secret]
        if client.method == "client_secret_post":
            assert client.client_secret is not None
            fields.append(("client_id", client.client_id))
            fields.append(("client_secret", client.client_secret))
            return [client.client_secret]
        if client.method == "private_key_jwt":
            assertion = self._client_assertion(token_endpoint)
            fields.append(("client_id", client.client_id))
            fields.append(("client_assertion_type", _ASSERTION_TYPE))
            fields.append(("client_assertion", assertion))
            return [assertion]
        fields.append(("client_id", client.client_id))
        return []

    async def _token_request(
        self, grant: str, fields: List[Tuple[str, str]], secrets_sent: List[str], require_id_token: bool
    ) -> Dict[str, Any]:
        metadata = self._require_metadata()
        headers = Headers({b"content-type": [b"application/x-www-form-urlencoded"]})
        secrets_sent = secrets_sent + self._authenticate(metadata.token_endpoint, fields, headers)
        body = urlencode(fields).encode("ascii")
        answer = await self._request(
            "token endpoint", "POST", metadata.token_endpoint, accept=_ACCEPT_JSON, headers=headers, body=body
        )
        if answer.code != 200:
            raise self._token_error(grant, answer, secrets_sent)
        document = _parse_json(answer, "token endpoint")
        return self._check_tokens(document, require_id_token)

    def _token_error(self, grant: str, answer: _Answer, secrets_sent: List[str]) -> ProviderError:
        oauth_error, detail = _oauth_error(answer, "token endpoint", secrets_sent)
        if oauth_error is None:
            return ProviderError(502, "bad_token_response", detail)
        status = 401 if oauth_error == "invalid_grant" else 502
        return ProviderError(status, "token_error", detail, oauth_error=oauth_error)

    @staticmethod
    def _check_tokens(document: Any, require_id_token: bool) -> Dict[str, Any]:
        def bad(detail: str) -> ProviderError:
            return ProviderError(502, "bad_token_response", detail)

        if not isinstance(document, dict):
            raise bad("the token response is not a JSON object")
        access_token = document.get("access_token")
        if not isinstance(access_token, str) or not access_token:
            raise bad("the token response has no access_token")
        token_type = document.get("token_type")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise bad("the token_type is not Bearer")
        id_token = document.get("id_token")
        if (require_id_token or id_token is not None) and (not isinstance(id_token, str) or not id_token):
            raise bad("the token response has no id_token")
        if "expires_in" in document and document["expires_in"] is not None:
            expires_in = document["expires_in"]
            if isinstance(expires_in, bool) or not isinstance(expires_in, int) or expires_in < 0:
                raise bad("expires_in is not a non-negative integer")
        if "refresh_token" in document and document["refresh_token"] is not None:
            refresh_token = document["refresh_token"]
            if not isinstance(refresh_token, str) or not refresh_token:
                raise bad("refresh_token is not a non-empty string")
        return dict(document)

    async def exchange_code(
        self, code: str, redirect_uri: str, code_verifier: Optional[str]
    ) -> Dict[str, Any]:
        """
        Exchange an authorization code for tokens (never retried: a code
        works once).

        @return: the token response: C{access_token}, C{token_type} (Bearer)
            and C{id_token} present; C{expires_in} (int) and
            C{refresh_token} (str) checked when present; other members as the
            provider sent them.
        @raise ProviderError: 401 C{token_error} for C{invalid_grant}; 502
            C{token_error} for another OAuth error; 502
            C{bad_token_response}, C{bad_json}, C{unreachable},
            C{response_too_large}; 504 C{timeout}; 503 C{not_ready}.
        """
        fields = [("grant_type", "authorization_code"), ("code", code), ("redirect_uri", redirect_uri)]
        sent = [code]
        if code_verifier is not None:
            fields.append(("code_verifier", code_verifier))
            sent.append(code_verifier)
        return await self._token_request("authorization_code", fields, sent, require_id_token=True)

    async def refresh(self, refresh_token: str) -> Dict[str, Any]:
        """
        Use a refresh token (RFC 6749, 6; never retried). Like
        L{exchange_code}, but the C{id_token} is optional.

        @return: the token response: the new C{access_token} and
            C{token_type} (Bearer); C{expires_in} (int), C{refresh_token}
            (str: the provider rotated it; absent or None: keep using the
            old one) and C{id_token} (str: to be validated without a nonce,
            and for the same C{sub}) checked when present and not null;
            other members as the provider sent them.
        @raise ProviderError: 401 C{token_error} with C{oauth_error}
            C{invalid_grant} when the refresh token is expired or revoked
            (the session is over); otherwise as L{exchange_code}.
        """
        fields = [("grant_type", "refresh_token"), ("refresh_token", refresh_token)]
        return await self._token_request("refresh_token", fields, [refresh_token], require_id_token=False)

    # -- logout

    async def revoke(self, token: str, token_type_hint: Optional[str] = None) -> None:
        """
        Revoke a token at the revocation endpoint (RFC 7009; never retried).

        The request is a form POST of C{token} and, when given,
        C{token_type_hint} (C{access_token} or C{refresh_token}), with the
        client authentication of the token endpoint (a C{private_key_jwt}
        assertion has the token endpoint as its audience, as for the token
        endpoint: it names the authorization server). Only a 200 answer is a
        success; its body is ignored.

        @raise ProviderError: 502 C{no_revocation_endpoint}; 502
            C{revocation_failed} for any other status, with the
            C{oauth_error} of a 4xx JSON error answer (e.g.
            C{unsupported_token_type}), else None; 502 C{unreachable},
            C{response_too_large}; 504 C{timeout}; 503 C{not_ready} or
            C{stopped}.
        """
        metadata = self._require_metadata()
        endpoint = metadata.revocation_endpoint
        if endpoint is None:
            raise ProviderError(502, "no_revocation_endpoint", "the provider has no revocation endpoint")
        fields = [("token", token)]
        if token_type_hint:
            fields.append(("token_type_hint", token_type_hint))
        headers = Headers({b"content-type": [b"application/x-www-form-urlencoded"]})
        secrets_sent = [token, *self._authenticate(metadata.token_endpoint, fields, headers)]
        body = urlencode(fields).encode("ascii")
        answer = await self._request(
            "revocation endpoint", "POST", endpoint, accept=_ACCEPT_JSON, headers=headers, body=body
        )
        if answer.code == 200:
            return
        oauth_error, detail = _oauth_error(answer, "revocation endpoint", secrets_sent)
        raise ProviderError(502, "revocation_failed", detail, oauth_error=oauth_error)

    # -- introspection

    async def introspect(self, token: str) -> Dict[str, Any]:
        """
        Ask the introspection endpoint about an access token (RFC 7662;
        never retried).

        The request is a form POST of C{token} and C{token_type_hint=
        access_token}, with the client authentication of the token endpoint
        (a C{private_key_jwt} assertion has the token endpoint as its
        audience, as for revocation).

        @return: the answer, a JSON object whose C{active} is a boolean, as
            the provider sent it: C{"active": false} is an answer, not an
            error. Nothing else in it is checked here.
        @raise ProviderError: 502 C{no_introspection_endpoint}; 502
            C{introspection_failed} for any status but 200, with the
            C{oauth_error} of a 4xx JSON error answer (e.g.
            C{invalid_client}), else None; 502 C{bad_json}; 502
            C{bad_introspection} (not an object, or no boolean C{active});
            502 C{unreachable}, C{response_too_large}; 504 C{timeout}; 503
            C{not_ready} or C{stopped}.
        """
        metadata = self._require_metadata()
        endpoint = metadata.introspection_endpoint
        if endpoint is None:
            raise ProviderError(
                502, "no_introspection_endpoint", "the provider has no introspection endpoint"
            )
        fields = [("token", token), ("token_type_hint", "access_token")]
        headers = Headers({b"content-type": [b"application/x-www-form-urlencoded"]})
        secrets_sent = [token, *self._authenticate(metadata.token_endpoint, fields, headers)]
        body = urlencode(fields).encode("ascii")
        answer = await self._request(
            "introspection endpoint", "POST", endpoint, accept=_ACCEPT_JSON, headers=headers, body=body
        )
        if answer.code != 200:
            oauth_error, detail = _oauth_error(answer, "introspection endpoint", secrets_sent)
            raise ProviderError(502, "introspection_failed", detail, oauth_error=oauth_error)
        document = _parse_json(answer, "introspection endpoint")
        if not isinstance(document, dict):
            raise ProviderError(502, "bad_introspection", "the introspection answer is not a JSON object")
        if not isinstance(document.get("active"), bool):
            raise ProviderError(502, "bad_introspection", "the introspection answer has no boolean 'active'")
        return document

    def end_session_url(
        self,
        id_token_hint: Optional[str],
        post_logout_redirect_uri: Optional[str],
        state: Optional[str] = None,
    ) -> Optional[str]:
        """
        The URL to send the browser to for RP-initiated logout (OpenID
        Connect RP-Initiated Logout 1.0, 2): the C{end_session_endpoint} with
        C{id_token_hint}, C{client_id}, C{post_logout_redirect_uri} and
        C{state} added to its query, in that order. C{client_id} is always
        there; the others only when given (neither None nor empty). A query
        the endpoint URL already holds is kept, less any parameter of the
        same name as one added here.

        @return: the URL, or None when the metadata is not loaded or the
            provider has no C{end_session_endpoint}.
        """
        metadata = self.metadata
        if metadata is None or not metadata.end_session_endpoint:
            return None
        params: List[Tuple[str, str]] = []
        if id_token_hint:
            params.append(("id_token_hint", id_token_hint))
        params.append(("client_id", self.client.client_id))
        if post_logout_redirect_uri:
            params.append(("post_logout_redirect_uri", post_logout_redirect_uri))
        if state:
            params.append(("state", state))
        return _add_query(metadata.end_session_endpoint, params)

    # -- userinfo

    async def userinfo(self, access_token: str) -> Dict[str, Any]:
        """
        The userinfo claims for an access token.

        Signed or encrypted userinfo answers (C{application/jwt}) are not
        supported: 502 C{unsupported_userinfo}. Whose claims they are (the
        C{sub}, missing or not) is for the caller to judge against the ID
        token: a wrong or missing subject is a refused login, not a bad
        answer from the IdP.

        @raise ProviderError: 502 C{no_userinfo_endpoint}, C{bad_status},
            C{bad_userinfo} (not a JSON object), C{unsupported_userinfo},
            C{bad_json}...
        """
        metadata = self._require_metadata()
        if metadata.userinfo_endpoint is None:
            raise ProviderError(502, "no_userinfo_endpoint", "the provider has no userinfo endpoint")
        headers = Headers({b"authorization": [b"Bearer " + access_token.encode("utf-8")]})
        answer = await self._idempotent(
            "userinfo endpoint", metadata.userinfo_endpoint, accept=_ACCEPT_JSON, headers=headers
        )
        if answer.code != 200:
            raise ProviderError(502, "bad_status", f"the userinfo endpoint answered HTTP {answer.code}")
        if answer.content_type() == "application/jwt":
            raise ProviderError(502, "unsupported_userinfo", "signed or encrypted userinfo is not supported")
        document = _parse_json(answer, "userinfo endpoint")
        if not isinstance(document, dict):
            raise ProviderError(502, "bad_userinfo", "the userinfo answer is not a JSON object")
        return document

    # -- HTTP

    async def _idempotent(
        self,
        what: str,
        url: str,
        *,
        accept: bytes,
        headers: Optional[Headers] = None,
        params: Optional[Mapping[str, str]] = None,
    ) -> _Answer:
        """
        A GET that may be made again (up to C{max_retries} more times) when
        it fails in transit, times out, or gets a 5xx or 429 answer. The last
        attempt's failure or answer is the caller's.
        """
        delay = self._retry_backoff
        for attempt in range(self._max_retries + 1):
            last = attempt == self._max_retries
            try:
                answer = await self._request(what, "GET", url, accept=accept, headers=headers,
                                             params=params)
            except ProviderError as e:
                if last or e.reason not in _RETRIED_REASONS:
                    raise
                outcome = e.reason
            else:
                if last or not (answer.code >= 500 or answer.code == 429):
                    return answer
                outcome = f"HTTP {answer.code}"
            log.info("the {what} request failed ({outcome}); retry {n} of {max} in {delay}s",
                     what=what, outcome=outcome, n=attempt + 1, max=self._max_retries,
                     delay=delay)
            await self._pause(what, delay)
            delay *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    async def _pause(self, what: str, seconds: float) -> None:
        """Wait on the clock between attempts; L{stop} cuts the wait short (503 C{stopped})."""
        call = _PendingCall()
        waiting: Deferred[None] = Deferred()

        def wake() -> None:
            if not waiting.called:
                waiting.callback(None)

        timer = self._clock.callLater(seconds, wake)
        call.deferred = waiting  # type: ignore[assignment]
        self._calls.add(call)
        try:
            await waiting
        except CancelledError:
            raise ProviderError(
                503, "stopped", f"the {what} request was cancelled: shutting down") from None
        finally:
            self._calls.discard(call)
            if timer.active():
                timer.cancel()

    async def _request(
        self,
        what: str,
        method: str,
        url: str,
        *,
        accept: bytes,
        headers: Optional[Headers] = None,
        body: Optional[bytes] = None,
        params: Optional[Mapping[str, str]] = None,
    ) -> _Answer:
        """
        One request, made once, with the deadline and the size cap.

        @param what: names the request in errors and logs.
        """
        headers = headers.copy() if headers is not None else Headers()
        headers.setRawHeaders(b"accept", [accept])
        call = _PendingCall()
        started = self._clock.seconds()
        d = Deferred.fromCoroutine(self._admitted(call, what, method, url, headers, body, params))
        call.deferred = d
        self._calls.add(call)
        timer = call.timer = self._clock.callLater(self._timeout, call.cancel, "timeout")
        answer: Optional[_Answer] = None
        try:
            answer = await d
            return answer
        except (CancelledError, ProviderError):
            if call.cancelled_by == "timeout" and not call.admitted:
                raise ProviderError(
                    503, "busy", f"the {what} request waited {self._timeout}s for one of the "
                    f"{self._slots.slots} requests to the provider in flight "
                    "(max_concurrent_requests) and was not made") from None
            if call.cancelled_by == "timeout":
                raise ProviderError(
                    504, "timeout", f"no complete answer from the {what} within {self._timeout}s"
                ) from None
            if call.cancelled_by == "stop":
                raise ProviderError(
                    503, "stopped", f"the {what} request was cancelled: shutting down"
                ) from None
            raise
        finally:
            self._calls.discard(call)
            if timer.active():
                timer.cancel()
            self._count_request(what, call, answer,
                                started if call.admitted_at is None else call.admitted_at)

    def _count_request(self, what: str, call: _PendingCall, answer: Optional[_Answer],
                       started: float) -> None:
        """Time one request for the metrics, by endpoint and outcome (not when stopping)."""
        if call.cancelled_by == "stop":
            return
        if answer is not None:
            outcome = "ok" if 200 <= answer.code < 300 else "http_error"
        elif not call.admitted:
            outcome = "busy"
        else:
            outcome = "timeout" if call.cancelled_by == "timeout" else "error"
        endpoint = what.split()[0].lower()  # discovery, jwks, token, userinfo, ...
        self._metrics.idp_request(endpoint, outcome, self._clock.seconds() - started)

    async def _admitted(
        self,
        call: _PendingCall,
        what: str,
        method: str,
        url: str,
        headers: Headers,
        body: Optional[bytes],
        params: Optional[Mapping[str, str]],
    ) -> _Answer:
        """
        L{_transfer} once one of the C{max_concurrent_requests} slots is free.
        A request that had to wait for one gets its whole deadline from then
        on: one sent with little time left would be cut off while the
        provider still works on it, which under load would waste the
        provider's capacity on answers nobody waits for.
        """
        slot = self._slots.acquire()
        waited = not slot.called
        try:
            await slot
        except QueueFull:
            raise ProviderError(
                503, "busy", f"the {what} request was not made: {self._slots.slots} requests to "
                f"the provider are in flight and {self._slots.max_waiting} wait "
                "(max_concurrent_requests, max_queued_requests)") from None
        call.admitted = True
        if waited and call.timer is not None and call.timer.active():
            call.admitted_at = self._clock.seconds()
            call.timer.reset(self._timeout)
        try:
            return await self._transfer(what, method, url, headers, body, params)
        finally:
            self._slots.release()

    async def _transfer(
        self,
        what: str,
        method: str,
        url: str,
        headers: Headers,
        body: Optional[bytes],
        params: Optional[Mapping[str, str]],
    ) -> _Answer:
        try:
            response = await self._http.request(
                method,
                url,
                headers=headers,
                data=body,
                params=dict(params) if params else None,
                allow_redirects=False,
                unbuffered=True,
            )
        except _TRANSPORT_ERRORS as e:
            if _was_cancelled(e):
                raise CancelledError() from None
            detail = _describe_failure(e)
            raise ProviderError(502, "unreachable", f"the {what} request failed: {detail}") from None
        return _Answer(response.code, response.headers, await self._read_body(response, what))

    async def _read_body(self, response: Any, what: str) -> bytes:
        limit = self._max_size
        chunks: List[bytes] = []
        received = 0

        def collect(data: bytes) -> None:
            nonlocal received
            received += len(data)
            if received > limit:
                raise _TooLarge()
            chunks.append(data)

        too_large = ProviderError(
            502, "response_too_large", f"the {what} answer is larger than {limit} bytes"
        )
        handle = _BodyHandle(response)
        d = treq.collect(cast(IResponse, handle), collect)
        if response.length is not UNKNOWN_LENGTH and response.length > limit:
            d.addErrback(lambda _: None)
            handle.abort()
            raise too_large
        try:
            await d
        except _TooLarge:
            raise too_large from None
        except CancelledError:
            handle.abort()
            raise
        except _TRANSPORT_ERRORS as e:
            if _was_cancelled(e):
                raise CancelledError() from None
            detail = _describe_failure(e)
            raise ProviderError(502, "unreachable", f"the {what} answer was cut short: {detail}") from None
        return b"".join(chunks)
