"""
Prometheus metrics of one proxy.

A L{Metrics} object owns a C{CollectorRegistry} of its own (never the
process-wide default), so two guards or proxies in one process keep their
numbers apart. The parts that count (the guard, the upstream proxy, the IdP
client, the Redis store, the refresher, the site) get it through their
constructors and call its few named methods; without one they get a
L{NullMetrics}, whose methods do nothing.

Label values come from fixed sets chosen by the code (route names, endpoint
names, reason codes), never from what a client sends, so the number of
series stays bounded.

The registry is served on a listener of its own (C{[metrics] listen}) by
L{metrics_site}.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from twisted.web.resource import Resource
from twisted.web.server import Site

__all__ = ["Metrics", "NullMetrics", "metrics_site"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Upstream and IdP requests: milliseconds to the upstream timeout (60 s by default)."""

_REDIS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
"""Redis commands: sub-millisecond on a LAN up to the command timeout (2 s by default)."""


class _Children(Dict[Tuple[Any, ...], Any]):
    """
    The children of a labelled metric, by their label values: made by
    C{labels()} the first time a key is asked for, then looked up. A
    C{labels()} call checks and converts its values and takes a lock; a
    request's counters are worth a dictionary look-up.
    """

    def __init__(self, metric: Any) -> None:
        super().__init__()
        self._metric = metric

    def __missing__(self, key: Tuple[Any, ...]) -> Any:
        child = self[key] = self._metric.labels(*(str(value) for value in key))
        return child


class NullMetrics:
    """
    The interface of L{Metrics}, doing nothing: the default of every part
    that is given no metrics object.
    """

    def request(self, route: str, status: int) -> None:
        """One request answered (or given up by the client: status 499)."""

    def upstream_latency(self, route: str, seconds: float) -> None:
        """The upstream of C{route} sent its response headers C{seconds} after the request went out."""

    def upstream_queue_rejected(self, route: str, reason: str) -> None:
        """
        A request for C{route} got 503 without going upstream: every slot
        (C{max_connections}) was taken and the line of waiting requests was
        C{full}, or it waited longer than C{queue_timeout} (C{timeout}).
        """

    def login_started(self, provider: str = "") -> None:
        """A browser was sent to the authorization endpoint of C{provider}'s IdP (C{""}: C{[oidc]})."""

    def login_completed(self, provider: str = "") -> None:
        """A callback of C{provider} ended in a new session."""

    def login_failed(self, reason: str, provider: str = "") -> None:
        """A login with C{provider} could not start or its callback failed, for C{reason}."""

    def token_invalid(self, token: str, reason: str) -> None:
        """A C{token} (C{id_token}, C{access_token}, C{logout_token}) failed validation."""

    def refresh(self, outcome: str, provider: str = "") -> None:
        """
        A refresh at C{provider}'s IdP ended: C{success}, C{ended},
        C{unavailable} or C{error}.
        """

    def redis_command(self, command: str, seconds: float) -> None:
        """A Redis command answered (or failed) after C{seconds}."""

    def redis_error(self, kind: str) -> None:
        """A Redis operation failed: C{error} (an error answer, a lost connection) or C{timeout}."""

    def idp_request(self, endpoint: str, outcome: str, seconds: float) -> None:
        """A request to the IdP's C{endpoint} ended with C{outcome} after C{seconds}."""

    def jwks_refetch(self, reason: str) -> None:
        """The JWKS is fetched again: C{unknown_kid} or C{expired}."""

    def login_attempts_pending(self, count: int) -> None:
        """C{count} login attempts (state cookies handed out) are waiting for their callback."""

    def websocket_upgrade(self, result: str) -> None:
        """
        An upgrade request ended its handshake: C{upgraded}, C{refused} (the
        upstream answered without 101), C{upstream_failed} (502),
        C{upstream_timeout} (504), C{over_capacity} (503), C{client_gone} or
        C{origin_refused} (403: a session upgrade from a foreign page).
        """

    def websocket_open(self, delta: int) -> None:
        """An upgraded connection opened (+1) or closed (-1)."""

    def websocket_bytes(self, direction: str, count: int) -> None:
        """C{count} bytes relayed C{to_upstream} or C{to_client} over an upgraded connection."""

    def client_connections(self, delta: int) -> None:
        """A client's HTTP connection opened (+1) or closed (-1)."""

    def client_connection_refused(self, limit: str) -> None:
        """
        A new client connection was refused (503) because C{limit} was reached:
        C{max_client_connections} or C{max_client_connections_per_address}.
        """

    def client_timeout(self, phase: str) -> None:
        """A client was closed for not sending its request's C{headers} or C{body} in time."""


class Metrics(NullMetrics):
    """
    The metrics of one proxy, in a registry of their own.

    @ivar registry: the C{CollectorRegistry} to expose (L{metrics_site}).
    """

    def __init__(self, registry: Optional[CollectorRegistry] = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self._requests = Counter(
            "oidcproxy_requests", "Requests answered, by route and HTTP status "
            "(499: the client went away first).", ["route", "status"], registry=r)
        self._upstream = Histogram(
            "oidcproxy_upstream_latency_seconds", "Time from sending a request upstream to "
            "its response headers, by route.", ["route"], registry=r, buckets=_LATENCY_BUCKETS)
        self._upstream_rejected = Counter(
            "oidcproxy_upstream_queue_rejected", "Requests answered 503 without going upstream "
            "because every connection to it was busy, by route and reason (full: the line of "
            "waiting requests was full; timeout: waited queue_timeout).", ["route", "reason"],
            registry=r)
        # provider: a [providers.NAME]'s name; "" for [oidc] (a series
        # Prometheus stores as it did before the label was there).
        self._logins_started = Counter(
            "oidcproxy_logins_started", "Browsers sent to the IdP to log in, by provider.",
            ["provider"], registry=r)
        self._logins_completed = Counter(
            "oidcproxy_logins_completed", "Logins that ended in a new session, by provider.",
            ["provider"], registry=r)
        self._logins_failed = Counter(
            "oidcproxy_logins_failed", "Logins that could not start or whose callback failed, "
            "by reason and provider.", ["reason", "provider"], registry=r)
        self._tokens_invalid = Counter(
            "oidcproxy_token_validation_failures", "Tokens that failed validation, by token "
            "kind and reason.", ["token", "reason"], registry=r)
        self._refreshes = Counter(
            "oidcproxy_refreshes", "Token refreshes (one per session at a time), by outcome "
            "and provider.", ["outcome", "provider"], registry=r)
        self._redis_latency = Histogram(
            "oidcproxy_redis_command_seconds", "Redis command latency, by command.",
            ["command"], registry=r, buckets=_REDIS_BUCKETS)
        self._redis_errors = Counter(
            "oidcproxy_redis_errors", "Failed Redis operations, by kind (error or timeout).",
            ["kind"], registry=r)
        self._idp = Histogram(
            "oidcproxy_idp_request_seconds", "Requests to the identity provider, by endpoint "
            "and outcome.", ["endpoint", "outcome"], registry=r, buckets=_LATENCY_BUCKETS)
        self._jwks = Counter(
            "oidcproxy_jwks_refetches", "JWKS fetches after the first load, by reason.",
            ["reason"], registry=r)
        self._ws_upgrades = Counter(
            "oidcproxy_websocket_upgrades", "WebSocket upgrade requests, by result.",
            ["result"], registry=r)
        self._logins_pending = Gauge(
            "oidcproxy_login_attempts_pending", "Login attempts whose state cookie is out and "
            "has not come back to the callback, within the state cookie's max_age.", registry=r,
            multiprocess_mode="livesum")
        self._ws_open = Gauge(
            "oidcproxy_websockets_open", "Upgraded (WebSocket) connections open now.", registry=r,
            # With workers = N: the sum over the live workers.
            multiprocess_mode="livesum")
        self._client_connections = Gauge(
            "oidcproxy_client_connections_open", "Client HTTP connections open now, "
            "idle or not (an upgraded one counts in oidcproxy_websockets_open instead).",
            registry=r, multiprocess_mode="livesum")
        self._client_refused = Counter(
            "oidcproxy_client_connections_refused", "Client connections refused with 503 at "
            "once, by the limit reached (max_client_connections, "
            "max_client_connections_per_address).", ["limit"], registry=r)
        self._client_timeouts = Counter(
            "oidcproxy_client_timeouts", "Clients closed for not sending their request in time, "
            "by phase (headers: client_header_timeout; body: client_body_timeout and "
            "client_body_min_rate).", ["phase"], registry=r)
        self._ws_bytes = Counter(
            "oidcproxy_websocket_bytes", "Bytes relayed over upgraded connections, by direction "
            "(to_upstream, to_client).", ["direction"], registry=r)
        # The metrics counted per request (or per Redis command), bound once
        # per label values.
        self._requests_by = _Children(self._requests)
        self._upstream_by = _Children(self._upstream)
        self._redis_latency_by = _Children(self._redis_latency)
        self._logins_started_by = _Children(self._logins_started)
        self._logins_completed_by = _Children(self._logins_completed)
        self._logins_failed_by = _Children(self._logins_failed)
        self._refreshes_by = _Children(self._refreshes)

    def request(self, route: str, status: int) -> None:
        self._requests_by[route, status].inc()

    def upstream_latency(self, route: str, seconds: float) -> None:
        self._upstream_by[route,].observe(max(0.0, seconds))

    def upstream_queue_rejected(self, route: str, reason: str) -> None:
        self._upstream_rejected.labels(route, reason).inc()

    def login_started(self, provider: str = "") -> None:
        self._logins_started_by[provider,].inc()

    def login_completed(self, provider: str = "") -> None:
        self._logins_completed_by[provider,].inc()

    def login_failed(self, reason: str, provider: str = "") -> None:
        self._logins_failed_by[reason, provider].inc()

    def token_invalid(self, token: str, reason: str) -> None:
        self._tokens_invalid.labels(token, reason).inc()

    def refresh(self, outcome: str, provider: str = "") -> None:
        self._refreshes_by[outcome, provider].inc()

    def redis_command(self, command: str, seconds: float) -> None:
        self._redis_latency_by[command,].observe(max(0.0, seconds))

    def redis_error(self, kind: str) -> None:
        self._redis_errors.labels(kind).inc()

    def idp_request(self, endpoint: str, outcome: str, seconds: float) -> None:
        self._idp.labels(endpoint, outcome).observe(max(0.0, seconds))

    def jwks_refetch(self, reason: str) -> None:
        self._jwks.labels(reason).inc()

    def login_attempts_pending(self, count: int) -> None:
        self._logins_pending.set(count)

    def websocket_upgrade(self, result: str) -> None:
        self._ws_upgrades.labels(result).inc()

    def websocket_open(self, delta: int) -> None:
        self._ws_open.inc(delta)

    def websocket_bytes(self, direction: str, count: int) -> None:
        self._ws_bytes.labels(direction).inc(count)

    def client_connections(self, delta: int) -> None:
        self._client_connections.inc(delta)

    def client_connection_refused(self, limit: str) -> None:
        self._client_refused.labels(limit).inc()

    def client_timeout(self, phase: str) -> None:
        self._client_timeouts.labels(phase).inc()

    def render(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)


class MetricsSite(Site):
    """A site that writes no access-log line per scrape."""

    noisy = False

    def log(self, request: Any) -> None:
        pass


def metrics_site(metrics: Metrics, reactor: Any = None) -> Site:
    """
    The site of the metrics listener: C{GET /metrics} answers the registry
    of C{metrics} (Prometheus text format, or OpenMetrics when asked for),
    through C{prometheus_client.twisted.MetricsResource}.
    """
    # Imported here: it installs the global reactor (and renders in its
    # thread pool).
    from prometheus_client.twisted import MetricsResource

    root = Resource()
    root.putChild(b"metrics", MetricsResource(metrics.registry))
    return MetricsSite(root, reactor=reactor)
