"""
Tests for observability: the guard's C{/oidc/health} and C{/oidc/ready}
endpoints, the Prometheus metrics of L{oidcproxy.core.metrics} (read back with
C{prometheus_client}'s own parser) and the C{[metrics]} listener.

The guard runs in the in-memory harness of L{tests.test_guard} (the fake IdP
of L{tests.idp}, a L{Clock}), rebuilt around a L{Metrics} of the test's own.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple
from urllib.parse import urlencode

import treq
from prometheus_client.parser import text_string_to_metric_families
from treq.testing import RequestTraversalAgent
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from oidcproxy.config import ConfigError, parse_config
from oidcproxy.core.metrics import Metrics, NullMetrics, metrics_site
from oidcproxy.proxy.routes import RouteTable
from oidcproxy.proxy.upstream import UpstreamClient, UpstreamProxy
from oidcproxy.service import ProxyService, body_limit_for
from oidcproxy.sessions.crypto import Sealer
from oidcproxy.sessions.session import SessionStoreUnavailable
from oidcproxy.sessions.stores.redis import RedisStore
from oidcproxy.web.server import ProxySite

from .fakes import (
    API,
    SECRET,
    USER_CLAIMS,
    GuardStack,
    RecordingUpstream,
    make_config,
    never_answer,
)
from .idp import ISSUER, KEY_ID

Samples = Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]


def samples(metrics: Metrics) -> Samples:
    """Every sample of C{metrics}, parsed from its text exposition: (name, labels) -> value."""
    found: Samples = {}
    for family in text_string_to_metric_families(metrics.render().decode("utf-8")):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(metrics: Metrics, name: str, **labels: str) -> Optional[float]:
    """One sample's value (None when there is no such sample)."""
    return samples(metrics).get((name, tuple(sorted(labels.items()))))


class FlakyStore:
    """A session store stand-in for readiness: only its C{ping} matters."""

    def __init__(self) -> None:
        self.down = True
        self.pings = 0

    def ping(self) -> Deferred:
        self.pings += 1
        if self.down:
            return fail(SessionStoreUnavailable("Redis did not complete a ping within 2 s"))
        return succeed(None)


def metered(case: SynchronousTestCase, config: Any = None, build: Any = None,
            store: Any = None, discovery_status: int = 200) -> Tuple[GuardStack, Metrics]:
    """
    A L{GuardStack} whose guard (and provider) count in a L{Metrics} of
    their own; started, discovery done.

    @param build: makes the guarded resource from the stack and the metrics.
    @param store: the session store (default: the cookie store).
    """
    metrics = Metrics()
    h = GuardStack(case, config, discovery_status=discovery_status, metrics=metrics,
                   build=(lambda h: build(h, metrics)) if build is not None else None,
                   store=(lambda clock: store) if store is not None else None)
    return h, metrics


def redis_config() -> Any:
    return make_config(session={"store": "redis"},
                       redis={"url": "redis://127.0.0.1:1/0", "command_timeout": "100ms"})


# -- health and readiness ---------------------------------------------------------------------


class HealthTests(SynchronousTestCase):
    def test_health(self):
        """/oidc/health: 200 {"status": "ok"}, without a session, never cached."""
        h, _ = metered(self)
        page = h.browser().get("/oidc/health")
        self.assertEqual(page.code, 200, page.body)
        self.assertEqual(page.json(), {"status": "ok"})
        self.assertEqual(page.header(b"content-type"), b"application/json")
        self.assertEqual(page.header(b"cache-control"), b"no-store")
        self.assertEqual(page.set_cookies, [])

    def test_health_while_idp_down(self):
        """Liveness does not depend on the IdP: 200 while discovery fails."""
        h, _ = metered(self, discovery_status=500)
        self.assertFalse(h.provider.ready)
        self.assertEqual(h.browser().get("/oidc/health").code, 200)

    def test_health_methods(self):
        """HEAD works (no body); POST is 405."""
        h, _ = metered(self)
        browser = h.browser()
        page = browser.request(b"HEAD", "/oidc/health")
        self.assertEqual((page.code, page.body), (200, b""))
        page = browser.request(b"POST", "/oidc/health", headers=API)
        self.assertEqual(page.code, 405)
        self.assertEqual(page.header(b"allow"), b"GET, HEAD")


class ReadyTests(SynchronousTestCase):
    def test_not_ready_before_discovery(self):
        """
        /oidc/ready is 503 naming the IdP while discovery fails, and 200 once
        the discovery document and the JWKS are loaded; never cached, no
        session needed.
        """
        h, _ = metered(self, discovery_status=500)
        browser = h.browser()
        page = browser.get("/oidc/ready")
        self.assertEqual(page.code, 503, page.body)
        self.assertEqual(page.header(b"cache-control"), b"no-store")
        body = page.json()
        self.assertEqual(body["status"], "not_ready")
        self.assertEqual(body["not_ready"], ["idp"])
        self.assertNotEqual(body["checks"]["idp"], "ok")
        self.assertNotIn("redis", body["checks"])  # cookie sessions: no Redis to ask

        h.idp.discovery_status = 200
        h.clock.advance(60)
        h.network.pump()
        self.assertTrue(h.provider.ready)
        page = browser.get("/oidc/ready")
        self.assertEqual(page.code, 200, page.body)
        self.assertEqual(page.json(), {"status": "ready", "checks": {"idp": "ok"}})
        self.assertEqual(page.header(b"cache-control"), b"no-store")
        self.assertEqual(page.set_cookies, [])

    def test_redis_ping_fails(self):
        """
        With session.store = "redis", /oidc/ready is 503 naming Redis while
        its PING fails (the IdP being ready), and 200 once it answers.
        """
        store = FlakyStore()
        h, _ = metered(self, config=redis_config(), store=store)
        self.assertTrue(h.provider.ready)
        browser = h.browser()
        page = browser.get("/oidc/ready")
        self.assertEqual(page.code, 503, page.body)
        body = page.json()
        self.assertEqual(body["not_ready"], ["redis"])
        self.assertEqual(body["checks"]["idp"], "ok")
        self.assertNotEqual(body["checks"]["redis"], "ok")
        self.assertEqual(store.pings, 1)

        store.down = False
        page = browser.get("/oidc/ready")
        self.assertEqual(page.code, 200, page.body)
        self.assertEqual(page.json(), {"status": "ready", "checks": {"idp": "ok", "redis": "ok"}})

    def test_both_not_ready(self):
        """Everything not ready is named, in order."""
        h, _ = metered(self, config=redis_config(), store=FlakyStore(), discovery_status=500)
        page = h.browser().get("/oidc/ready")
        self.assertEqual(page.code, 503)
        self.assertEqual(page.json()["not_ready"], ["idp", "redis"])

    def test_ready_method(self):
        """POST is 405."""
        h, _ = metered(self)
        self.assertEqual(h.browser().request(b"POST", "/oidc/ready", headers=API).code, 405)


# -- metrics ---------------------------------------------------------------------------------


def callback(h: GuardStack, browser: Any, params: Dict[str, str], **issue: Any) -> Any:
    issue.setdefault("nonce", params["nonce"])
    code = h.idp.issue_code(claims=USER_CLAIMS, code_verifier_challenge=params["code_challenge"],
                            **issue)
    return browser.navigate("/oidc/callback?" + urlencode({"code": code, "state": params["state"]}))


class LoginMetricsTests(SynchronousTestCase):
    def test_login(self):
        """
        A whole login: one login started and completed, the requests by route
        and status, and the IdP requests by endpoint and outcome.
        """
        h, m = metered(self)
        browser = h.browser()
        page = callback(h, browser, h.authorize(browser, "/dash"))
        self.assertEqual(page.code, 302, page.body)
        self.assertEqual(browser.navigate("/dash").code, 200)

        self.assertEqual(value(m, "oidcproxy_logins_started_total", provider=""), 1.0)
        self.assertEqual(value(m, "oidcproxy_logins_completed_total", provider=""), 1.0)
        self.assertEqual(value(m, "oidcproxy_requests_total", route="routes[0]", status="302"), 1.0)
        self.assertEqual(value(m, "oidcproxy_requests_total", route="routes[0]", status="200"), 1.0)
        self.assertEqual(value(m, "oidcproxy_requests_total", route="oidc:callback", status="302"),
                         1.0)
        for endpoint in ("discovery", "jwks", "token"):
            self.assertEqual(value(m, "oidcproxy_idp_request_seconds_count",
                                   endpoint=endpoint, outcome="ok"), 1.0, endpoint)
        # The Clock does not move during a request: every request took 0 s.
        self.assertEqual(value(m, "oidcproxy_idp_request_seconds_bucket",
                               endpoint="token", outcome="ok", le="0.005"), 1.0)
        failed = [k for k in samples(m) if k[0] == "oidcproxy_logins_failed_total"]
        self.assertEqual(failed, [])

    def test_pending_login_attempts(self):
        """
        The gauge of login attempts out: up when a login starts, down when its
        callback comes back, and down when an abandoned one's state cookie
        expires (state_cookie.max_age, 600 s by default).
        """
        h, m = metered(self)
        browser = h.browser()
        first = h.authorize(browser, "/a")
        h.authorize(h.browser(), "/b")  # abandoned
        self.assertEqual(value(m, "oidcproxy_login_attempts_pending"), 2.0)
        self.assertEqual(callback(h, browser, first).code, 302)
        self.assertEqual(value(m, "oidcproxy_login_attempts_pending"), 1.0)
        h.clock.advance(599)
        self.assertEqual(value(m, "oidcproxy_login_attempts_pending"), 1.0)
        h.clock.advance(1)
        self.assertEqual(value(m, "oidcproxy_login_attempts_pending"), 0.0)

    def test_failed_logins(self):
        """
        Failed callbacks are counted by reason: an unknown state, an ID token
        with the wrong nonce (also a token validation failure), and an IdP
        refusal (whose error text never becomes a label).
        """
        h, m = metered(self)
        browser = h.browser()
        page = browser.navigate("/oidc/callback?code=c&state=unknown")
        self.assertEqual(page.code, 401)
        page = callback(h, browser, h.authorize(browser), nonce="another-nonce")
        self.assertEqual(page.code, 401)
        page = browser.navigate("/oidc/callback?error=custom_error_of_the_idp&state=x")
        self.assertEqual(page.code, 403)

        self.assertEqual(value(m, "oidcproxy_logins_failed_total", reason="no_state_cookie",
                               provider=""), 1.0)
        self.assertEqual(value(m, "oidcproxy_logins_failed_total", reason="bad_nonce", provider=""), 1.0)
        self.assertEqual(value(m, "oidcproxy_logins_failed_total", reason="idp_refused", provider=""), 1.0)
        self.assertEqual(value(m, "oidcproxy_token_validation_failures_total",
                               token="id_token", reason="bad_nonce"), 1.0)
        self.assertEqual(value(m, "oidcproxy_logins_started_total", provider=""), 1.0)
        self.assertIsNone(value(m, "oidcproxy_logins_completed_total", provider=""))
        self.assertEqual(value(m, "oidcproxy_requests_total", route="oidc:callback", status="401"),
                         2.0)
        self.assertNotIn("custom_error_of_the_idp", m.render().decode())

    def test_idp_not_ready(self):
        """A login that cannot start because discovery failed counts as failed (idp_not_ready)."""
        h, m = metered(self, discovery_status=500)
        self.assertEqual(h.browser().navigate("/x").code, 503)
        self.assertEqual(value(m, "oidcproxy_logins_failed_total", reason="idp_not_ready", provider=""), 1.0)
        self.assertEqual(value(m, "oidcproxy_idp_request_seconds_count",
                               endpoint="discovery", outcome="http_error"), 1.0)

    def test_idp_timeout(self):
        """A token request the IdP never answers: failed login idp_timeout, IdP outcome timeout."""
        h, m = metered(self)
        h.idp.hold_token_requests = True
        browser = h.browser()
        params = h.authorize(browser)
        code = h.idp.issue_code(nonce=params["nonce"], code_verifier_challenge=params["code_challenge"])
        pending = browser.send(b"GET", "/oidc/callback?" + urlencode(
            {"code": code, "state": params["state"]}), headers=API)
        h.network.pump()
        h.clock.advance(5.0)  # oidc.timeout
        h.network.pump()
        self.assertEqual(pending.page().code, 504)
        self.assertEqual(value(m, "oidcproxy_logins_failed_total", reason="idp_timeout", provider=""), 1.0)
        self.assertEqual(value(m, "oidcproxy_idp_request_seconds_count",
                               endpoint="token", outcome="timeout"), 1.0)
        self.assertEqual(value(m, "oidcproxy_idp_request_seconds_sum",
                               endpoint="token", outcome="timeout"), 5.0)


class RequestMetricsTests(SynchronousTestCase):
    def test_proxied_request(self):
        """
        In front of L{UpstreamProxy}: the proxied request is counted by route
        and status and its upstream latency observed (the Clock's 0 s); an
        unauthenticated API call is a 401 that never reaches the upstream.
        """
        upstream = RecordingUpstream()

        def build(h: GuardStack, metrics: Metrics) -> UpstreamProxy:
            def client_factory(route: Any) -> UpstreamClient:
                agent = h.network.add(RequestTraversalAgent(upstream))
                return UpstreamClient(agent, route.settings.max_connections)

            return UpstreamProxy(RouteTable(h.config.routes), h.clock,
                                 client_factory=client_factory, metrics=metrics)

        h, m = metered(self, build=build)
        self.assertEqual(h.browser().get("/api/items", headers=API).code, 401)
        self.assertEqual(value(m, "oidcproxy_upstream_latency_seconds_count", route="routes[0]"),
                         None)
        browser = h.logged_in(claims=USER_CLAIMS)
        page = browser.navigate("/api/items?x=1")
        self.assertEqual(page.code, 200, page.body)
        self.assertEqual(len(upstream.requests), 1)
        page = browser.navigate("/public/p")
        self.assertEqual(page.code, 200, page.body)

        self.assertEqual(value(m, "oidcproxy_requests_total", route="routes[0]", status="200"), 1.0)
        self.assertEqual(value(m, "oidcproxy_requests_total", route="routes[0]", status="401"), 1.0)
        self.assertEqual(value(m, "oidcproxy_requests_total", route="routes[1]", status="200"), 1.0)
        self.assertEqual(value(m, "oidcproxy_upstream_latency_seconds_count", route="routes[0]"),
                         1.0)
        self.assertEqual(value(m, "oidcproxy_upstream_latency_seconds_count", route="routes[1]"),
                         1.0)
        self.assertEqual(value(m, "oidcproxy_upstream_latency_seconds_sum", route="routes[0]"), 0.0)
        self.assertEqual(value(m, "oidcproxy_upstream_latency_seconds_bucket", route="routes[0]",
                               le="0.005"), 1.0)

    def test_unknown_endpoint_label(self):
        """Endpoints are labelled by name; unknown names under the prefix share one label."""
        h, m = metered(self)
        browser = h.browser()
        self.assertEqual(browser.get("/oidc/nope-1").code, 404)
        self.assertEqual(browser.get("/oidc/nope-2").code, 404)
        browser.get("/oidc/health")
        self.assertEqual(value(m, "oidcproxy_requests_total", route="oidc:unknown", status="404"),
                         2.0)
        self.assertEqual(value(m, "oidcproxy_requests_total", route="oidc:health", status="200"),
                         1.0)
        self.assertNotIn("nope", m.render().decode())

    def test_client_gone_and_early_413(self):
        """
        Behind the proxy's site: a client that leaves before the answer is
        counted as 499, a body refused before it is read as 413, each under
        its route.
        """
        app = RecordingUpstream(never_answer)
        h, m = metered(self, build=lambda h, metrics: app)
        routes = RouteTable(h.config.routes)
        site = ProxySite(h.guard, clock=h.clock, body_limit=body_limit_for(routes, 10),
                         reactor=h.clock, metrics=m)
        for data in (b"GET /public/x HTTP/1.1\r\nHost: app.test\r\n\r\n",
                     b"POST /public/x HTTP/1.1\r\nHost: app.test\r\nContent-Length: 99999999\r\n\r\n"):
            channel = site.buildProtocol(IPv4Address("TCP", "192.0.2.7", 5555))
            transport = StringTransport()
            channel.makeConnection(transport)
            channel.dataReceived(data)
            channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(len(app.requests), 1)
        self.assertEqual(value(m, "oidcproxy_requests_total", route="routes[1]", status="499"), 1.0)
        self.assertEqual(value(m, "oidcproxy_requests_total", route="routes[1]", status="413"), 1.0)


class TokenMetricsTests(SynchronousTestCase):
    def test_bearer_failure(self):
        """An access token for another audience: a validation failure of access_token, bad_aud."""
        config = make_config(routes=[{"path": "/", "upstream": "http://up.test", "auth": "bearer"}])
        h, m = metered(self, config=config)
        now = int(h.clock.seconds())
        token = h.idp.id_token({"iss": ISSUER, "aud": "another-api", "sub": "svc", "iat": now,
                                "exp": now + 300})
        page = h.browser().get("/x", headers={b"authorization": [b"Bearer " + token.encode()]})
        self.assertEqual(page.code, 401)
        self.assertEqual(value(m, "oidcproxy_token_validation_failures_total",
                               token="access_token", reason="bad_aud"), 1.0)
        self.assertEqual(value(m, "oidcproxy_requests_total", route="routes[0]", status="401"), 1.0)

    def test_jwks_refetch(self):
        """A token naming an unknown key refetches the JWKS once: counted by reason."""
        h, m = metered(self)
        h.clock.advance(61)  # past jwks_min_refresh_interval
        d = Deferred.fromCoroutine(h.provider.keys_for("not-" + KEY_ID))
        h.network.pump()
        self.successResultOf(d)
        self.assertEqual(value(m, "oidcproxy_jwks_refetches_total", reason="unknown_kid"), 1.0)
        self.assertEqual(value(m, "oidcproxy_idp_request_seconds_count",
                               endpoint="jwks", outcome="ok"), 2.0)
        # Within the minimum interval no second refetch is made, nor counted.
        d = Deferred.fromCoroutine(h.provider.keys_for("not-" + KEY_ID))
        h.network.pump()
        self.successResultOf(d)
        self.assertEqual(value(m, "oidcproxy_jwks_refetches_total", reason="unknown_kid"), 1.0)


class RefreshMetricsTests(SynchronousTestCase):
    def test_refresh_outcomes(self):
        """A refresh near expiry counts as success; a refused one (invalid_grant) as ended."""
        h, m = metered(self)
        browser = h.logged_in(claims=USER_CLAIMS)
        h.clock.advance(300)
        self.assertEqual(browser.navigate("/x").code, 200)
        self.assertEqual(value(m, "oidcproxy_refreshes_total", outcome="success", provider=""), 1.0)
        self.assertEqual(h.idp.refresh_count, 1)

        h.clock.advance(300)
        h.idp.refresh_error = (400, "invalid_grant")
        self.assertEqual(browser.get("/x", headers=API).code, 401)
        self.assertEqual(value(m, "oidcproxy_refreshes_total", outcome="ended", provider=""), 1.0)

    def test_refreshed_id_token_invalid(self):
        """A refreshed ID token for another subject ends the session: outcome ended."""
        h, m = metered(self)
        browser = h.logged_in()
        h.clock.advance(300)
        h.idp.refresh_sub = "someone-else"
        self.assertEqual(browser.get("/x", headers=API).code, 401)
        self.assertEqual(value(m, "oidcproxy_refreshes_total", outcome="ended", provider=""), 1.0)


class FakeRedis:
    """C{execute_command} answering from a table; a missing reply fails, C{None} hangs."""

    def __init__(self, clock: Clock, replies: Dict[str, Any]) -> None:
        self.clock = clock
        self.replies = replies

    def execute_command(self, *args: Any) -> Deferred:
        reply = self.replies.get(args[0], KeyError)
        if reply is KeyError:
            return fail(ConnectionError("connection lost"))
        if reply is None:
            return Deferred()
        self.clock.advance(0.003)
        return succeed(reply)


class RedisMetricsTests(SynchronousTestCase):
    def store(self, replies: Dict[str, Any]) -> Tuple[RedisStore, Metrics, Clock]:
        clock = Clock()
        metrics = Metrics()
        store = RedisStore(FakeRedis(clock, replies), Sealer([b"k" * 32]), clock,
                           command_timeout=1.0, metrics=metrics)
        return store, metrics, clock

    def test_commands_and_errors(self):
        """Each command's latency by command; errors and timeouts by kind."""
        store, m, clock = self.store({"GET": None, "PING": "PONG"})
        self.assertIsNone(self.successResultOf(store.ping()))
        self.assertEqual(value(m, "oidcproxy_redis_command_seconds_count", command="PING"), 1.0)
        self.assertAlmostEqual(value(m, "oidcproxy_redis_command_seconds_sum", command="PING"),
                               0.003)
        self.assertEqual(value(m, "oidcproxy_redis_command_seconds_bucket", command="PING",
                               le="0.005"), 1.0)

        d = store.load("a" * 43)  # GET hangs
        clock.advance(1.0)
        self.failureResultOf(d, SessionStoreUnavailable)
        self.assertEqual(value(m, "oidcproxy_redis_errors_total", kind="timeout"), 1.0)

        self.failureResultOf(store.lock("x", 5.0), SessionStoreUnavailable)  # SET fails
        self.assertEqual(value(m, "oidcproxy_redis_errors_total", kind="error"), 1.0)
        self.assertEqual(value(m, "oidcproxy_redis_command_seconds_count", command="SET"), 1.0)

    def test_ping(self):
        """ping() fails with SessionStoreUnavailable on an error, a timeout or a wrong answer."""
        store, _, clock = self.store({"PING": "PONG"})
        self.successResultOf(store.ping())
        store, _, clock = self.store({})
        self.failureResultOf(store.ping(), SessionStoreUnavailable)
        store, _, clock = self.store({"PING": None})
        d = store.ping()
        self.assertNoResult(d)
        clock.advance(1.0)
        self.failureResultOf(d, SessionStoreUnavailable)
        store, _, clock = self.store({"PING": "LOADING"})
        self.failureResultOf(store.ping(), SessionStoreUnavailable)


class RegistryTests(SynchronousTestCase):
    def test_registries_apart(self):
        """Two guards in one process count apart, each in a registry of its own."""
        a, ma = metered(self)
        b, mb = metered(self)
        self.assertIsNot(ma.registry, mb.registry)
        a.browser().get("/oidc/health")
        self.assertEqual(value(ma, "oidcproxy_requests_total", route="oidc:health", status="200"),
                         1.0)
        self.assertIsNone(value(mb, "oidcproxy_requests_total", route="oidc:health", status="200"))

    def test_default_metrics(self):
        """A guard given none makes its own; the parts default to a no-op."""
        h = GuardStack(self)
        self.assertIsInstance(h.guard.metrics, Metrics)
        h.browser().get("/oidc/health")
        metrics = h.guard.metrics
        assert isinstance(metrics, Metrics)
        self.assertEqual(value(metrics, "oidcproxy_requests_total", route="oidc:health",
                               status="200"), 1.0)
        null = NullMetrics()
        null.request("r", 200)
        null.login_failed("x")
        null.upstream_latency("r", 1.0)


class PerRequestCostTests(SynchronousTestCase):
    """
    The metrics counted per request cost a look-up once their labels were
    seen: C{labels()} (checks, conversions, a lock) runs once per label values.
    """

    def counting(self, metric: Any) -> Dict[Tuple[str, ...], int]:
        calls: Dict[Tuple[str, ...], int] = {}
        labels = metric.labels

        def counted(*values: str) -> Any:
            calls[values] = calls.get(values, 0) + 1
            return labels(*values)

        self.patch(metric, "labels", counted)
        return calls

    def test_requests_bound_once(self):
        """Requests through the guard count right, with one labels() call per route and status."""
        h, m = metered(self)
        calls = self.counting(m._requests)
        browser = h.browser()
        for _ in range(3):
            browser.get("/oidc/health")
        browser.get("/oidc/nothing-here")
        self.assertEqual(value(m, "oidcproxy_requests_total", route="oidc:health", status="200"),
                         3.0)
        self.assertEqual(value(m, "oidcproxy_requests_total", route="oidc:unknown", status="404"),
                         1.0)
        self.assertEqual(calls, {("oidc:health", "200"): 1, ("oidc:unknown", "404"): 1})

    def test_histograms_bound_once(self):
        """Upstream and Redis latencies: one labels() call per route and per command."""
        m = Metrics()
        upstream = self.counting(m._upstream)
        redis = self.counting(m._redis_latency)
        for seconds in (0.003, 0.02, -1.0):
            m.upstream_latency("routes[0]", seconds)
            m.redis_command("GET", seconds / 10)
        m.upstream_latency("routes[1]", 0.5)
        self.assertEqual(upstream, {("routes[0]",): 1, ("routes[1]",): 1})
        self.assertEqual(redis, {("GET",): 1})
        self.assertEqual(value(m, "oidcproxy_upstream_latency_seconds_count", route="routes[0]"), 3.0)
        self.assertEqual(value(m, "oidcproxy_upstream_latency_seconds_bucket", route="routes[0]",
                               le="0.005"), 2.0)
        self.assertEqual(value(m, "oidcproxy_redis_command_seconds_count", command="GET"), 3.0)

    def test_status_as_text(self):
        """A status given as text counts in the same series as the number."""
        m = Metrics()
        m.request("r", 200)
        m.request("r", "200")  # type: ignore[arg-type]
        self.assertEqual(value(m, "oidcproxy_requests_total", route="r", status="200"), 2.0)


# -- the [metrics] listener ---------------------------------------------------------------------


SERVICE_CONFIG = {
    "public_url": "https://app.example",
    "oidc": {"issuer": "https://idp.example", "client_id": "c", "client_secret": "s"},
    "session": {"secrets": [SECRET]},
    "routes": [{"path": "/", "upstream": "http://127.0.0.1:9"}],
}


class MetricsConfigTests(SynchronousTestCase):
    def test_default_listen(self):
        """[metrics] without listen: 127.0.0.1:9102. Without the table: no metrics listener."""
        config = parse_config({**SERVICE_CONFIG, "metrics": {}}, "t.toml")
        assert config.metrics is not None
        self.assertEqual(config.metrics.listen, "tcp:9102:interface=127.0.0.1")
        self.assertIsNone(parse_config(SERVICE_CONFIG, "t.toml").metrics)

    def test_bad_values(self):
        """Unknown keys and wrong types are errors naming the key."""
        with self.assertRaises(ConfigError) as e:
            parse_config({**SERVICE_CONFIG, "metrics": {"listen": 9102, "lisen": "x"}}, "t.toml")
        text = str(e.exception)
        self.assertIn("metrics.listen: expected a string", text)
        self.assertIn("metrics.lisen: unknown key", text)
        with self.assertRaises(ConfigError) as e:
            parse_config({**SERVICE_CONFIG, "metrics": {"listen": ""}}, "t.toml")
        self.assertIn("metrics.listen:", str(e.exception))
        with self.assertRaises(ConfigError) as e:
            parse_config({**SERVICE_CONFIG, "metrics": "tcp:9102"}, "t.toml")
        self.assertIn("metrics: expected a table", str(e.exception))


class MetricsListenerTests(SynchronousTestCase):
    def test_metrics_listener(self):
        """With [metrics], the service listens on its endpoint too, with its own site at /metrics."""
        config = parse_config({**SERVICE_CONFIG,
                               "metrics": {"listen": "tcp:9199:interface=127.0.0.1"}}, "t.toml")
        service = ProxyService(config, MemoryReactor(), ["tcp:8081:interface=127.0.0.1"])
        self.assertEqual([ls.description for ls in service.listeners],
                         ["tcp:8081:interface=127.0.0.1", "tcp:9199:interface=127.0.0.1"])
        site = service.listeners[1]._factory
        self.assertIsNot(site, service.site)
        self.assertIn(b"metrics", site.resource.children)
        # The proxy's parts count into the registry that listener serves.
        self.assertIs(service.site.guard.metrics, service.metrics)
        self.assertIs(service.site.metrics, service.metrics)

    def test_no_metrics_listener(self):
        """Without [metrics], no extra listener."""
        config = parse_config(SERVICE_CONFIG, "t.toml")
        service = ProxyService(config, MemoryReactor(), ["tcp:8081:interface=127.0.0.1"])
        self.assertEqual(len(service.listeners), 1)


class MetricsSiteTests(TestCase):
    async def test_scrape(self):
        """The metrics site answers GET /metrics with the registry, in the text format; 404 elsewhere."""
        metrics = Metrics()
        metrics.request("routes[0]", 200)
        metrics.login_failed("bad_nonce")
        port = reactor.listenTCP(0, metrics_site(metrics), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        base = f"http://127.0.0.1:{port.getHost().port}"
        response = await treq.get(base + "/metrics", persistent=False)
        body = (await response.content()).decode("utf-8")
        self.assertEqual(response.code, 200)
        self.assertTrue(response.headers.getRawHeaders(b"content-type")[0].startswith(b"text/plain"))
        found = {(s.name, tuple(sorted(s.labels.items()))): s.value
                 for f in text_string_to_metric_families(body) for s in f.samples}
        self.assertEqual(found[("oidcproxy_requests_total",
                                (("route", "routes[0]"), ("status", "200")))], 1.0)
        self.assertEqual(found[("oidcproxy_logins_failed_total",
                                (("provider", ""), ("reason", "bad_nonce")))], 1.0)
        response = await treq.get(base + "/other", persistent=False)
        await response.content()
        self.assertEqual(response.code, 404)
