"""
Tests for L{oidcproxy.proxy.upstream.UpstreamProxy}, driven in memory: treq's
C{StubTreq} plays the client, a C{RequestTraversalAgent} carries the proxied
request to a recording upstream resource, and time is a L{Clock}.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from treq.testing import RequestTraversalAgent, StubTreq
from twisted.internet.error import ConnectionDone, ConnectionRefusedError, TimeoutError
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseFailed
from twisted.web.http_headers import Headers
from twisted.web.server import NOT_DONE_YET, Request, Site
from twisted.web.test.requesthelper import DummyChannel

from oidcproxy.config import RouteConfig, UpstreamSettings
from oidcproxy.core.context import RequestContext
from oidcproxy.proxy.headers import canonical_header, drop_connection_named
from oidcproxy.proxy.relay import BodyRelay
from oidcproxy.proxy.routes import RouteTable
from oidcproxy.proxy.upstream import UpstreamClient, UpstreamProxy

from .fakes import FailingAgent, GuardStandIn, HangingAgent, RecordingUpstream

UP = "http://upstream.test:9000"


def route(index=0, path="/", upstream=UP, **kw: Any) -> RouteConfig:
    settings = kw.pop("settings", UpstreamSettings())
    return RouteConfig(index=index, path=path, upstream=upstream, settings=settings, **kw)


class ProxyHarness:
    """A proxy in front of one in-memory upstream or agent."""

    def __init__(self, routes=None, upstream=None, agent=None, trusted=(), metrics=None):
        self.clock = Clock()
        self.upstream = upstream if upstream is not None else RecordingUpstream()
        self.agent = agent if agent is not None else RequestTraversalAgent(self.upstream)
        self.proxy = UpstreamProxy(
            RouteTable(routes or [route()]),
            self.clock,
            [ipaddress.ip_network(t) for t in trusted],
            client_factory=lambda r: UpstreamClient(self.agent, r.settings.max_connections,
                                                    max_queued=r.settings.queue_limit),
            metrics=metrics,
        )
        self.client = StubTreq(self.proxy)

    def flush(self):
        for _ in range(5):
            if isinstance(self.agent, RequestTraversalAgent):
                self.agent.flush()
            self.client.flush()

    def fetch(self, case, method="GET", url="http://proxy.test/", **kw):
        d = self.client.request(method, url, **kw)
        self.flush()
        response = case.successResultOf(d)
        body = self.client.content(response)
        self.flush()
        return response, case.successResultOf(body)


class ForwardingTests(SynchronousTestCase):
    def test_forwards_method_target_body(self):
        """Method, path, query and body reach the upstream; its answer reaches the client."""
        h = ProxyHarness()
        response, body = h.fetch(self, "POST", "http://proxy.test/a/b?x=1&y=%2F", data=b"payload")
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads(body), {"uri": "/a/b?x=1&y=%2F"})
        seen = h.upstream.requests[0]
        self.assertEqual((seen["method"], seen["uri"], seen["body"]),
                         (b"POST", b"/a/b?x=1&y=%2F", b"payload"))
        self.assertEqual(h.upstream.header(b"content-length"), [b"7"])

    def test_normalised_path_goes_upstream(self):
        """The path that was matched is the path that goes upstream."""
        h = ProxyHarness([route(), route(1, "/api", strip_prefix=True)])
        h.fetch(self, url="http://proxy.test/x/../api/%7Euser/./v")
        self.assertEqual(h.upstream.requests[0]["uri"], b"/~user/v")

    def test_upstream_base_path(self):
        """An upstream URL's base path is prepended."""
        h = ProxyHarness([route(upstream=UP + "/base")])
        h.fetch(self, url="http://proxy.test/x")
        self.assertEqual(h.upstream.requests[0]["uri"], b"/base/x")

    def test_response_status_and_headers(self):
        """The upstream's status, reason and headers are relayed; repeats stay repeats."""
        def handler(request):
            request.setResponseCode(201, b"Made")
            request.responseHeaders.setRawHeaders(b"set-cookie", [b"a=1", b"b=2"])
            request.responseHeaders.setRawHeaders(b"x-multi", [b"one", b"two"])
            request.responseHeaders.setRawHeaders(b"content-type", [b"text/plain"])
            return b"made"
        h = ProxyHarness(upstream=RecordingUpstream(handler))
        response, body = h.fetch(self)
        self.assertEqual((response.code, response.phrase, body), (201, b"Made", b"made"))
        self.assertEqual(response.headers.getRawHeaders(b"set-cookie"), [b"a=1", b"b=2"])
        self.assertEqual(response.headers.getRawHeaders(b"x-multi"), [b"one", b"two"])
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"text/plain"])
        self.assertEqual(response.length, 4)  # sent as Content-Length, not chunked

    def test_no_default_content_type_or_server(self):
        """The proxy adds no Content-Type or Server banner the upstream did not send."""
        def handler(request):
            request.defaultContentType = None
            request.responseHeaders.removeHeader(b"server")
            return b"raw"
        h = ProxyHarness(upstream=RecordingUpstream(handler))
        response, body = h.fetch(self)
        self.assertEqual(body, b"raw")
        self.assertIsNone(response.headers.getRawHeaders(b"content-type"))
        self.assertFalse(
            any(b"Twisted" in v for v in response.headers.getRawHeaders(b"server", []))
        )

    def test_repeated_request_headers(self):
        """A header the client sends twice reaches the upstream twice, in order."""
        h = ProxyHarness()
        h.fetch(self, headers=Headers({b"x-multi": [b"1", b"2"]}))
        self.assertEqual(h.upstream.header(b"x-multi"), [b"1", b"2"])

    def test_hop_by_hop_request_headers_removed(self):
        """Hop-by-hop headers and the ones Connection names never reach the upstream."""
        h = ProxyHarness()
        h.fetch(self, headers=Headers({
            b"connection": [b"keep-alive, X-Secret"],
            b"x-secret": [b"1"],
            b"keep-alive": [b"timeout=5"],
            b"te": [b"trailers"],
            b"trailer": [b"x"],
            b"upgrade": [b"websocket"],
            b"proxy-authorization": [b"Basic eA=="],
            b"proxy-connection": [b"keep-alive"],
            b"x-end-to-end": [b"kept"],
        }))
        names = {n for n, _ in h.upstream.requests[0]["headers"]}
        for gone in [b"x-secret", b"keep-alive", b"te", b"trailer", b"upgrade",
                     b"proxy-authorization", b"proxy-connection"]:
            self.assertNotIn(gone, names)
        self.assertEqual(h.upstream.header(b"x-end-to-end"), [b"kept"])

    def test_hop_by_hop_response_headers_removed(self):
        """Hop-by-hop response headers never reach the client."""
        def handler(request):
            request.responseHeaders.setRawHeaders(b"keep-alive", [b"timeout=5"])
            request.responseHeaders.setRawHeaders(b"proxy-authenticate", [b"Basic"])
            request.responseHeaders.setRawHeaders(b"x-kept", [b"1"])
            return b"ok"
        h = ProxyHarness(upstream=RecordingUpstream(handler))
        response, _ = h.fetch(self)
        for gone in [b"keep-alive", b"proxy-authenticate"]:
            self.assertIsNone(response.headers.getRawHeaders(gone), gone)
        self.assertEqual(response.headers.getRawHeaders(b"x-kept"), [b"1"])

    def test_host_header(self):
        """The upstream gets its own host by default and the client's with pass_host_header."""
        h = ProxyHarness([route(), route(1, "/pass", pass_host_header=True)])
        h.fetch(self, url="http://public.example:8080/a")
        h.fetch(self, url="http://public.example:8080/pass")
        self.assertEqual(h.upstream.header(b"host", 0), [b"upstream.test:9000"])
        self.assertEqual(h.upstream.header(b"host", 1), [b"public.example:8080"])

    def test_connect_is_refused(self):
        """CONNECT is answered 405 and never reaches the upstream."""
        h = ProxyHarness()
        response, _ = h.fetch(self, "CONNECT", "http://proxy.test/")
        self.assertEqual(response.code, 405)
        self.assertEqual(h.upstream.requests, [])


class ForwardedHeaderTests(SynchronousTestCase):
    def test_set_from_untrusted_peer(self):
        """From an untrusted peer, X-Forwarded-* and Forwarded are the proxy's own."""
        h = ProxyHarness()
        h.fetch(self, url="http://public.example/", headers=Headers({
            b"x-forwarded-for": [b"6.6.6.6"],
            b"x-forwarded-proto": [b"https"],
            b"x-forwarded-host": [b"evil.example"],
            b"forwarded": [b"for=6.6.6.6;proto=https"],
        }))
        self.assertEqual(h.upstream.header(b"x-forwarded-for"), [b"127.0.0.1"])
        self.assertEqual(h.upstream.header(b"x-forwarded-proto"), [b"http"])
        self.assertEqual(h.upstream.header(b"x-forwarded-host"), [b"public.example"])
        self.assertEqual(h.upstream.header(b"forwarded"),
                         [b'for=127.0.0.1;proto=http;host="public.example"'])

    def test_every_spelling_is_dropped(self):
        """Underscore, dot and case variants of the forwarding headers are dropped too."""
        h = ProxyHarness()
        h.fetch(self, headers=Headers({
            b"X_Forwarded_For": [b"6.6.6.6"],
            b"x.forwarded.for": [b"6.6.6.7"],
            b"X-FORWARDED-PROTO": [b"https"],
            b"x_forwarded_host": [b"evil"],
        }))
        names = [n for n, _ in h.upstream.requests[0]["headers"]]
        self.assertNotIn(b"x_forwarded_for", names)
        self.assertNotIn(b"x.forwarded.for", names)
        self.assertNotIn(b"x_forwarded_host", names)
        self.assertEqual(h.upstream.header(b"x-forwarded-for"), [b"127.0.0.1"])
        self.assertEqual(h.upstream.header(b"x-forwarded-proto"), [b"http"])

    def test_url_overrides_dropped_from_untrusted(self):
        """X-Original-URL, X-Rewrite-URL, X-Real-IP and kin never pass from untrusted peers."""
        h = ProxyHarness()
        h.fetch(self, headers=Headers({
            b"x-original-url": [b"/admin"],
            b"X_Rewrite_URL": [b"/admin"],
            b"x-real-ip": [b"6.6.6.6"],
            b"x-forwarded-prefix": [b"/evil"],
        }))
        names = {canonical_header(n) for n, _ in h.upstream.requests[0]["headers"]}
        for gone in [b"x-original-url", b"x-rewrite-url", b"x-real-ip", b"x-forwarded-prefix"]:
            self.assertNotIn(gone, names)

    def test_trusted_peer_values_kept(self):
        """From a trusted peer, the chain is kept and extended."""
        h = ProxyHarness(trusted=["127.0.0.0/8"])
        h.fetch(self, url="http://inner.example/", headers=Headers({
            b"x-forwarded-for": [b"203.0.113.9, 10.0.0.1"],
            b"x-forwarded-proto": [b"https"],
            b"x-forwarded-host": [b"public.example"],
            b"forwarded": [b"for=203.0.113.9;proto=https"],
            b"x-original-url": [b"/kept"],
        }))
        self.assertEqual(h.upstream.header(b"x-forwarded-for"),
                         [b"203.0.113.9, 10.0.0.1, 127.0.0.1"])
        self.assertEqual(h.upstream.header(b"x-forwarded-proto"), [b"https"])
        self.assertEqual(h.upstream.header(b"x-forwarded-host"), [b"public.example"])
        self.assertEqual(h.upstream.header(b"forwarded"),
                         [b'for=203.0.113.9;proto=https, for=127.0.0.1;proto=http;'
                          b'host="inner.example"'])
        self.assertEqual(h.upstream.header(b"x-original-url"), [b"/kept"])


class ErrorTests(SynchronousTestCase):
    def test_no_route_404(self):
        """A request no route matches gets 404 and reaches no upstream."""
        h = ProxyHarness([route(path="/only")])
        response, _ = h.fetch(self, url="http://proxy.test/other")
        self.assertEqual(response.code, 404)
        self.assertEqual(h.upstream.requests, [])

    def test_bad_target_400(self):
        """An ambiguous path gets 400 (JSON for API clients) and reaches no upstream."""
        h = ProxyHarness()
        for target in ["/a%2Fb", "/a/%2e%2e/%2e%2e/etc", "/a%00", "/a%zz"]:
            response, body = h.fetch(self, url="http://proxy.test" + target,
                                     headers={b"accept": [b"application/json"]})
            self.assertEqual(response.code, 400, target)
            self.assertEqual(json.loads(body)["error"], "bad_request", target)
        self.assertEqual(h.upstream.requests, [])

    def test_body_too_large_413(self):
        """A body over the route's max_body_size gets 413 before anything goes upstream."""
        h = ProxyHarness([route(settings=UpstreamSettings(max_body_size=10))])
        response, _ = h.fetch(self, "POST", data=b"x" * 11)
        self.assertEqual(response.code, 413)
        self.assertEqual(h.upstream.requests, [])
        response, _ = h.fetch(self, "POST", data=b"x" * 10)
        self.assertEqual(response.code, 200)

    def test_connect_failure_502(self):
        """A refused connection is 502, an HTML page for browsers."""
        agent = FailingAgent(ConnectionRefusedError())
        h = ProxyHarness(agent=agent)
        response, body = h.fetch(self, headers={b"accept": [b"text/html"]})
        self.assertEqual(response.code, 502)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"),
                         [b"text/html; charset=utf-8"])
        self.assertIn(b"502 Bad Gateway", body)
        self.assertNotIn(b"upstream.test", body)

    def test_failure_502_json(self):
        """An API client gets the 502 as JSON."""
        h = ProxyHarness(agent=FailingAgent(ResponseFailed([Failure(ConnectionDone())])))
        response, body = h.fetch(self, headers={b"accept": [b"application/json"]})
        self.assertEqual(response.code, 502)
        self.assertEqual(json.loads(body)["error"], "bad_gateway")

    def test_connect_timeout_504(self):
        """A connect timeout is 504."""
        h = ProxyHarness(agent=FailingAgent(TimeoutError()))
        response, _ = h.fetch(self)
        self.assertEqual(response.code, 504)

    def test_response_timeout_504(self):
        """No answer within the route's timeout: 504 and the upstream request is cancelled."""
        agent = HangingAgent()
        h = ProxyHarness([route(settings=UpstreamSettings(timeout=3.0))], agent=agent)
        d = h.client.get("http://proxy.test/")
        h.flush()
        h.clock.advance(2.9)
        h.flush()
        self.assertNoResult(d)
        h.clock.advance(0.2)
        h.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 504)
        self.assertEqual(agent.cancelled, 1)
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_timeout_counts_only_to_the_headers(self):
        """Once the response has started, the route's timeout no longer applies."""
        h = ProxyHarness([route(settings=UpstreamSettings(timeout=3.0))])
        response, _ = h.fetch(self)
        self.assertEqual(response.code, 200)
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_failure_is_logged_without_secrets(self):
        """A 502 is logged with the route and the upstream, not the request's secrets."""
        from twisted.logger import globalLogPublisher

        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        h = ProxyHarness(agent=FailingAgent(ConnectionRefusedError()))
        h.fetch(self, url="http://proxy.test/?code=SECRET", headers={
            b"authorization": [b"Bearer TOKEN"], b"cookie": [b"s=COOKIE"]})
        ours = [e for e in events if e.get("route") == "routes[0]"]
        self.assertEqual(len(ours), 1)
        self.assertEqual(ours[0]["reason"], "connection refused")
        self.assertEqual(ours[0]["upstream"], UP)
        text = repr(ours)
        for secret in ["SECRET", "TOKEN", "COOKIE"]:
            self.assertNotIn(secret, text)


class ConcurrencyTests(SynchronousTestCase):
    def test_max_connections_queues(self):
        """With max_connections = 1 the second request waits for the first to finish."""
        agent = HangingAgent()
        settings = UpstreamSettings(max_connections=1, timeout=100.0)
        h = ProxyHarness([route(settings=settings)], agent=agent)
        h.client.get("http://proxy.test/1")
        h.client.get("http://proxy.test/2")
        h.flush()
        self.assertEqual(len(agent.pending), 1)
        agent.pending[0].errback(ConnectionRefusedError())
        h.flush()
        self.assertEqual(len(agent.pending), 2)

    def test_routes_share_a_client_per_origin(self):
        """Routes to the same origin with the same settings share one client and pool."""
        built = []

        def factory(r):
            built.append(r.index)
            return UpstreamClient(HangingAgent(), 1)

        UpstreamProxy(
            RouteTable([route(0, "/a"), route(1, "/b", upstream=UP + "/x"),
                        route(2, "/c", upstream="http://other:1"),
                        route(3, "/d", settings=UpstreamSettings(timeout=1.0)),
                        route(4, "/e", settings=UpstreamSettings(max_connections=3))]),
            Clock(), client_factory=factory,
        )
        self.assertEqual(built, [0, 2, 4])


def _rejected(metrics, reason, name="routes[0]"):
    """The count of C{oidcproxy_upstream_queue_rejected_total} for route C{name} and C{reason}."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(metrics.render().decode("utf-8")):
        for s in family.samples:
            if s.name == "oidcproxy_upstream_queue_rejected_total" and \
                    s.labels == {"route": name, "reason": reason}:
                return s.value
    return 0.0


class QueueTests(SynchronousTestCase):
    """
    Requests beyond max_connections wait in a bounded line, for a bounded
    time; beyond either bound they get 503 with Retry-After at once, without
    going upstream.
    """

    def harness(self, **settings):
        from oidcproxy.core.metrics import Metrics

        self.agent = HangingAgent()
        self.metrics = Metrics()
        settings.setdefault("max_connections", 1)
        h = ProxyHarness([route(settings=UpstreamSettings(**settings))], agent=self.agent,
                         metrics=self.metrics)
        self.slots = h.proxy._clients[0].slots
        return h

    def test_full_line_503_at_once(self):
        """
        With max_connections busy and max_queued waiting, the next request
        gets 503 (JSON for an API client) with Retry-After at once, is counted
        by reason, and never reaches the upstream.
        """
        h = self.harness(max_queued=2, timeout=100.0, queue_timeout=50.0)
        waiting = [h.client.get(f"http://proxy.test/{i}") for i in range(3)]
        h.flush()
        self.assertEqual((len(self.agent.pending), self.slots.waiting), (1, 2))
        refused = h.client.get("http://proxy.test/x", headers={b"accept": [b"application/json"]})
        h.flush()
        response = self.successResultOf(refused)
        self.assertEqual(response.code, 503)
        self.assertEqual(response.headers.getRawHeaders(b"retry-after"), [b"5"])
        body = json.loads(self.successResultOf(h.client.content(response)))
        self.assertEqual(body["error"], "upstream_busy")
        self.assertEqual(_rejected(self.metrics, "full"), 1.0)
        self.assertEqual(len(self.agent.pending), 1)
        for d in waiting:
            self.assertNoResult(d)

    def test_no_line(self):
        """max_queued = 0: a request that finds every slot busy gets 503 at once."""
        h = self.harness(max_queued=0)
        first = h.client.get("http://proxy.test/1")
        second = h.client.get("http://proxy.test/2")
        h.flush()
        self.assertNoResult(first)
        self.assertEqual(self.successResultOf(second).code, 503)

    def test_default_line_is_sixteen_times_max_connections(self):
        """Without max_queued, 16 x max_connections requests wait; the next gets 503."""
        h = self.harness(max_connections=2)
        answers = [h.client.get(f"http://proxy.test/{i}") for i in range(35)]
        h.flush()
        self.assertEqual((len(self.agent.pending), self.slots.waiting), (2, 32))
        self.assertEqual(self.successResultOf(answers[-1]).code, 503)
        for d in answers[:-1]:
            self.assertNoResult(d)

    def test_wait_bounded_by_queue_timeout(self):
        """
        A request that waits queue_timeout for a slot gets 503 with
        Retry-After (counted as a timeout), leaves the line and never goes
        upstream; nothing is left scheduled for it.
        """
        h = self.harness(timeout=60.0, queue_timeout=3.0)
        first = h.client.get("http://proxy.test/1")
        second = h.client.get("http://proxy.test/2")
        h.flush()
        h.clock.advance(2.9)
        h.flush()
        self.assertNoResult(second)
        h.clock.advance(0.2)
        h.flush()
        response = self.successResultOf(second)
        self.assertEqual(response.code, 503)
        self.assertEqual(response.headers.getRawHeaders(b"retry-after"), [b"5"])
        self.assertEqual(_rejected(self.metrics, "timeout"), 1.0)
        self.assertEqual((len(self.agent.pending), self.slots.waiting), (1, 0))
        self.assertNoResult(first)
        self.assertEqual(len(h.clock.getDelayedCalls()), 1)  # the first one's timeout

    def test_wait_bounded_by_timeout(self):
        """A queue_timeout longer than the route's timeout: the timeout bounds the wait (503)."""
        from oidcproxy.core.metrics import Metrics

        agent, metrics = HangingAgent(), Metrics()
        # Two routes sharing the upstream's slots: the first holds the only one.
        h = ProxyHarness([
            route(0, "/", settings=UpstreamSettings(max_connections=1, timeout=100.0)),
            route(1, "/short", settings=UpstreamSettings(max_connections=1, timeout=2.0,
                                                         queue_timeout=5.0)),
        ], agent=agent, metrics=metrics)
        h.client.get("http://proxy.test/1")
        second = h.client.get("http://proxy.test/short/2")
        h.flush()
        h.clock.advance(1.9)
        h.flush()
        self.assertNoResult(second)
        h.clock.advance(0.1)
        h.flush()
        self.assertEqual(self.successResultOf(second).code, 503)
        self.assertEqual(_rejected(metrics, "timeout", "routes[1]"), 1.0)
        self.assertEqual(len(agent.pending), 1)

    def test_waited_time_counts_against_timeout(self):
        """
        A request that got its slot after waiting has what is left of the
        route's timeout for the upstream's answer (504 then), not a new one.
        """
        h = self.harness(timeout=10.0, queue_timeout=5.0)
        h.client.get("http://proxy.test/1")
        second = h.client.get("http://proxy.test/2")
        h.flush()
        h.clock.advance(3.0)
        self.agent.pending[0].errback(ConnectionRefusedError())
        h.flush()
        self.assertEqual(len(self.agent.pending), 2)
        h.clock.advance(6.9)
        h.flush()
        self.assertNoResult(second)
        h.clock.advance(0.2)
        h.flush()
        self.assertEqual(self.successResultOf(second).code, 504)
        self.assertEqual(_rejected(self.metrics, "timeout"), 0.0)

    def test_slot_handed_on_in_order(self):
        """A slot given back goes to the request that has waited longest."""
        h = self.harness(timeout=100.0)
        for i in range(3):
            h.client.get(f"http://proxy.test/{i}")
            h.flush()
        self.agent.pending[0].errback(ConnectionRefusedError())
        h.flush()
        self.assertEqual(len(self.agent.pending), 2)
        self.assertEqual(self.slots.waiting, 1)

    def test_client_gone_while_queued_leaves_the_line(self):
        """
        A client that goes away while its request waits takes it out of the
        line at once: its place and its timer are gone, and the slot goes to
        the next one.
        """
        h = self.harness(max_queued=1, timeout=100.0, queue_timeout=50.0)
        _real_request(h.proxy)
        _, second = _real_request(h.proxy)
        self.assertEqual(self.slots.waiting, 1)
        second.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.slots.waiting, 0)
        self.assertEqual(len(h.clock.getDelayedCalls()), 1)  # the first one's timeout
        _, third = _real_request(h.proxy)
        self.assertEqual(self.slots.waiting, 1)  # the place was free
        self.agent.pending[0].errback(ConnectionRefusedError())
        self.assertEqual(len(self.agent.pending), 2)
        self.assertEqual(self.slots.waiting, 0)
        self.assertEqual(_rejected(self.metrics, "full") + _rejected(self.metrics, "timeout"), 0)

    def test_refusals_logged_once_per_interval(self):
        """
        A flood of refusals writes one warning line per route and reason every
        10 s, which says how many it held back.
        """
        from twisted.logger import globalLogPublisher

        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        h = self.harness(max_queued=0, timeout=100.0)
        h.client.get("http://proxy.test/busy")
        for i in range(50):
            h.client.get(f"http://proxy.test/{i}")
        h.flush()
        lines = [e for e in events if e.get("route") == "routes[0]"]
        self.assertEqual(len(lines), 1)
        self.assertEqual(lines[0]["held_back"], 0)
        self.assertEqual(lines[0]["log_level"].name, "warn")
        h.clock.advance(10.0)
        h.client.get("http://proxy.test/again")
        h.flush()
        lines = [e for e in events if e.get("route") == "routes[0]"]
        self.assertEqual(len(lines), 2)
        self.assertEqual(lines[1]["held_back"], 49)
        self.assertEqual(_rejected(self.metrics, "full"), 51.0)


def _real_request(proxy, path=b"/", method=b"GET"):
    """A real twisted.web Request on a dummy channel, rendering C{proxy}."""
    channel = DummyChannel()
    channel.site = Site(proxy)
    request = Request(channel, False)
    request.gotLength(0)
    request.requestHeaders.setRawHeaders(b"host", [b"proxy.test"])
    request.requestReceived(method, path, b"HTTP/1.1")
    return channel, request


class DisconnectTests(SynchronousTestCase):
    def test_client_gone_before_answer_cancels(self):
        """A client that disconnects while the upstream thinks cancels the upstream request."""
        agent = HangingAgent()
        h = ProxyHarness(agent=agent)
        channel, request = _real_request(h.proxy)
        self.assertEqual(len(agent.pending), 1)
        request.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(agent.cancelled, 1)
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_client_gone_while_queued_frees_nothing_it_did_not_take(self):
        """A queued request whose client leaves never reaches the upstream."""
        agent = HangingAgent()
        h = ProxyHarness([route(settings=UpstreamSettings(max_connections=1))], agent=agent)
        _real_request(h.proxy)
        _, second = _real_request(h.proxy)
        second.connectionLost(Failure(ConnectionDone()))
        agent.pending[0].errback(ConnectionRefusedError())
        _real_request(h.proxy)
        self.assertEqual(len(agent.pending), 2)


class FakeRequest:
    """Just what L{BodyRelay} uses of a request."""

    def __init__(self):
        self.producer = None
        self.written = []
        self.finished = False
        self.startedWriting = True
        self.transport = self
        self.aborted = False

    def registerProducer(self, producer, streaming):
        self.producer = (producer, streaming)

    def unregisterProducer(self):
        self.producer = None

    def write(self, data):
        self.written.append(data)

    def finish(self):
        self.finished = True

    def abortConnection(self):
        self.aborted = True


class FakeProducerTransport:
    def __init__(self):
        self.calls = []

    def pauseProducing(self):
        self.calls.append("pause")

    def resumeProducing(self):
        self.calls.append("resume")

    def stopProducing(self):
        self.calls.append("stop")


class BodyRelayTests(SynchronousTestCase):
    def relay(self):
        request = FakeRequest()
        done = []
        relay = BodyRelay(request, route(), lambda: done.append(True))
        transport = FakeProducerTransport()
        relay.makeConnection(transport)
        return request, relay, transport, done

    def test_registers_streaming_producer(self):
        """The relay registers itself as a streaming producer of the client request."""
        request, relay, _, _ = self.relay()
        self.assertEqual(request.producer, (relay, True))

    def test_back_pressure_reaches_upstream(self):
        """A client that cannot keep up pauses the upstream connection, then resumes it."""
        request, relay, transport, _ = self.relay()
        relay.pauseProducing()
        relay.resumeProducing()
        self.assertEqual(transport.calls, ["pause", "resume"])

    def test_complete_body_finishes(self):
        """A complete body is written and the response finished; the slot is released."""
        from twisted.web.client import ResponseDone

        request, relay, _, done = self.relay()
        relay.dataReceived(b"abc")
        relay.connectionLost(Failure(ResponseDone()))
        self.assertEqual((request.written, request.finished, request.aborted, done),
                         ([b"abc"], True, False, [True]))
        self.assertIsNone(request.producer)

    def test_broken_body_aborts_client(self):
        """An upstream that breaks off mid-body aborts the client connection, not a clean end."""
        request, relay, _, done = self.relay()
        relay.dataReceived(b"abc")
        relay.connectionLost(Failure(ResponseFailed([Failure(ConnectionDone())])))
        self.assertEqual((request.finished, request.aborted, done), (False, True, [True]))

    def test_stop_stops_upstream(self):
        """Stopping the relay (client gone) stops the upstream transport and writes nothing more."""
        request, relay, transport, _ = self.relay()
        relay.stopProducing()
        relay.dataReceived(b"late")
        self.assertEqual(transport.calls, ["stop"])
        self.assertEqual(request.written, [])


class StreamingThroughRealRequestTests(SynchronousTestCase):
    def test_streamed_response_reaches_client_in_pieces(self):
        """Upstream body chunks are written to the client as they arrive."""
        def handler(request):
            request.write(b"first")
            handler.request = request
            return NOT_DONE_YET
        upstream = RecordingUpstream(handler)
        agent = RequestTraversalAgent(upstream)
        h = ProxyHarness(upstream=upstream, agent=agent)
        channel, request = _real_request(h.proxy)
        agent.flush()
        self.assertIn(b"first", channel.transport.written.getvalue())
        self.assertFalse(request.finished)
        handler.request.write(b"second")
        handler.request.finish()
        agent.flush()
        self.assertIn(b"second", channel.transport.written.getvalue())
        self.assertTrue(request.finished)


class UpstreamClientTests(SynchronousTestCase):
    def test_pool_is_quiet_and_persistent(self):
        """The real client keeps connections alive and logs nothing per connection."""
        from twisted.internet.testing import MemoryReactorClock

        reactor = MemoryReactorClock()
        c = UpstreamClient.build(reactor, UpstreamSettings(max_idle_connections=7,
                                                           connect_timeout=3.0))
        c.agent.request(b"GET", b"http://127.0.0.1:9/")
        host, port, factory, timeout, _ = reactor.tcpClients[0]
        self.assertEqual((host, port, timeout), ("127.0.0.1", 9, 3.0))
        from twisted.logger import globalLogPublisher

        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        factory.doStart()
        factory.doStop()
        self.assertEqual([e for e in events if "factory" in e.get("log_format", "")], [])
        self.assertTrue(c.pool.persistent)
        self.assertEqual(c.pool.maxPersistentPerHost, 7)

    def test_ca_bundle_without_certificates(self):
        """A CA bundle with no certificate in it is refused."""
        import tempfile

        with tempfile.NamedTemporaryFile("w", suffix=".pem", delete=False) as f:
            f.write("not a certificate\n")
        self.assertRaises(ValueError, UpstreamClient.build, Clock(),
                          UpstreamSettings(ca_bundle=f.name))


class HostHeaderTests(SynchronousTestCase):
    def test_several_host_headers_400(self):
        """Two Host headers are refused with 400."""
        h = ProxyHarness()
        channel = DummyChannel()
        channel.site = Site(h.proxy)
        request = Request(channel, False)
        request.gotLength(0)
        request.requestHeaders.setRawHeaders(b"host", [b"a.example", b"b.example"])
        request.requestReceived(b"GET", b"/", b"HTTP/1.1")
        self.assertEqual(request.code, 400)
        self.assertEqual(h.upstream.requests, [])

    def test_missing_host_http11_400(self):
        """An HTTP/1.1 request without Host is refused with 400; HTTP/1.0 may omit it."""
        h = ProxyHarness()
        for version, code in [(b"HTTP/1.1", 400), (b"HTTP/1.0", 200)]:
            channel = DummyChannel()
            channel.site = Site(h.proxy)
            request = Request(channel, False)
            request.gotLength(0)
            request.requestReceived(b"GET", b"/", version)
            h.agent.flush()
            self.assertEqual(request.code, code, version)


class CachedEndpointsTests(SynchronousTestCase):
    """The Agent's endpoints are made once per origin, not per request."""

    def endpoints(self):
        from twisted.internet.testing import MemoryReactorClock
        from twisted.web.client import BrowserLikePolicyForHTTPS

        from oidcproxy.proxy.connect import CachedEndpoints

        return CachedEndpoints(MemoryReactorClock(), BrowserLikePolicyForHTTPS(), 3.0)

    def test_one_per_origin(self):
        from twisted.web.client import URI

        e = self.endpoints()
        a = e.endpointForURI(URI.fromBytes(b"http://app.internal:8080/x"))
        self.assertIs(e.endpointForURI(URI.fromBytes(b"http://app.internal:8080/y?z")), a)
        self.assertIsNot(e.endpointForURI(URI.fromBytes(b"http://app.internal:8081/x")), a)
        self.assertIsNot(e.endpointForURI(URI.fromBytes(b"https://app.internal:8080/x")), a)

    def test_kinds(self):
        from twisted.internet.endpoints import (
            HostnameEndpoint,
            TCP4ClientEndpoint,
            TCP6ClientEndpoint,
        )
        from twisted.web.client import URI

        e = self.endpoints()
        self.assertIsInstance(e.endpointForURI(URI.fromBytes(b"http://app.internal/")),
                              HostnameEndpoint)
        self.assertIsInstance(e.endpointForURI(URI.fromBytes(b"http://127.0.0.1:9/")),
                              TCP4ClientEndpoint)
        # An IPv6 literal needs no IDNA (which refuses it) and no resolver.
        self.assertIsInstance(e.endpointForURI(URI.fromBytes(b"http://[::1]:9/")),
                              TCP6ClientEndpoint)
        tls = e.endpointForURI(URI.fromBytes(b"https://app.internal/"))
        self.assertNotIsInstance(tls, HostnameEndpoint)

    def test_other_scheme_refused(self):
        from twisted.web.client import URI
        from twisted.web.error import SchemeNotSupported

        self.assertRaises(SchemeNotSupported, self.endpoints().endpointForURI,
                          URI.fromBytes(b"ftp://app.internal/"))


class AbsoluteFormTests(SynchronousTestCase):
    """
    The proxy used alone (no guard in front): an absolute-form target's
    authority is the request's one host (RFC 9112 3.2.2), for the route and
    for every header that names the host upstream.
    """

    def send(self, h: ProxyHarness, target: bytes, host: bytes) -> Request:
        channel = DummyChannel()
        channel.site = Site(h.proxy)
        request = Request(channel, False)
        request.gotLength(0)
        request.requestHeaders.setRawHeaders(b"host", [host])
        request.requestReceived(b"GET", target, b"HTTP/1.1")
        h.flush()
        return request

    def test_authority_routes_and_is_forwarded(self):
        """Host: admin with http://www/x: www's route, and www in Host, X-Forwarded-Host, Forwarded."""
        h = ProxyHarness([route(0, "/", host="admin.example", pass_host_header=True),
                          route(1, "/", upstream=UP + "/www", pass_host_header=True)])
        self.send(h, b"http://www.example:8080/x", b"admin.example")
        seen = h.upstream.requests[0]
        self.assertEqual(seen["uri"], b"/www/x")
        self.assertEqual(h.upstream.header(b"host"), [b"www.example:8080"])
        self.assertEqual(h.upstream.header(b"x-forwarded-host"), [b"www.example:8080"])
        self.assertEqual(h.upstream.header(b"forwarded"),
                         [b'for=192.168.1.1;proto=http;host="www.example:8080"'])

    def test_default_host_header_unchanged(self):
        """Without pass_host_header the upstream still gets its own Host."""
        h = ProxyHarness()
        self.send(h, b"http://www.example/x", b"admin.example")
        self.assertEqual(h.upstream.header(b"host"), [b"upstream.test:9000"])
        self.assertEqual(h.upstream.header(b"x-forwarded-host"), [b"www.example"])

    def test_bad_authority_400(self):
        """A malformed absolute-form authority is refused before the Host is touched."""
        h = ProxyHarness()
        request = self.send(h, b"http://a@www.example/x", b"admin.example")
        self.assertEqual(request.code, 400)
        self.assertEqual(request.requestHeaders.getRawHeaders(b"host"), [b"admin.example"])
        self.assertEqual(h.upstream.requests, [])


class ConnectionHeaderTests(SynchronousTestCase):
    """The proxy used alone: what a client's Connection names, and what it cannot name away."""

    def test_forwarding_headers_named_in_connection(self):
        """X-Forwarded-* and Forwarded named in Connection are still the proxy's own."""
        h = ProxyHarness()
        h.fetch(self, url="http://public.example/", headers=Headers({
            b"connection": [b"X-Forwarded-For, x-forwarded-proto", b"X-FORWARDED-HOST, Forwarded"],
            b"x-forwarded-for": [b"6.6.6.6"],
        }))
        self.assertEqual(h.upstream.header(b"x-forwarded-for"), [b"127.0.0.1"])
        self.assertEqual(h.upstream.header(b"x-forwarded-proto"), [b"http"])
        self.assertEqual(h.upstream.header(b"x-forwarded-host"), [b"public.example"])
        self.assertEqual(h.upstream.header(b"forwarded"),
                         [b'for=127.0.0.1;proto=http;host="public.example"'])

    def test_host_named_in_connection(self):
        """Connection: Host removes nothing: the request is routed, and pass_host_header works."""
        h = ProxyHarness([route(pass_host_header=True)])
        response, _ = h.fetch(self, url="http://public.example/",
                              headers=Headers({b"connection": [b"Host, Content-Length"]}))
        self.assertEqual(response.code, 200)
        self.assertEqual(h.upstream.header(b"host"), [b"public.example"])


class RequestContextTests(SynchronousTestCase):
    """What the proxy reads from and writes to the request's context."""

    def guarded(self, fill: Any, routes: Any = None, upstream: Any = None):
        h = ProxyHarness(routes, upstream=upstream)
        stand_in = GuardStandIn(h.proxy, fill)
        h.client = StubTreq(stand_in)
        return h, stand_in

    def test_forwards_to_the_guards_match(self):
        """The route a guard in front matched (the context's match) is the one served."""
        routes = [route(), route(1, "/api", strip_prefix=True)]
        decided = RouteTable(routes).match(b"proxy.test", b"/api/v1")

        def fill(found: RequestContext) -> None:
            found.match = decided

        h, _ = self.guarded(fill, routes)
        h.fetch(self, url="http://proxy.test/elsewhere")
        self.assertEqual(h.upstream.requests[0]["uri"], b"/v1")

    def test_records_the_route_served(self):
        """The route that served the request is in its context (for the access log)."""
        routes = [route(), route(1, "/api")]
        h, stand_in = self.guarded(lambda found: None, routes)
        h.fetch(self, url="http://proxy.test/api/x")
        self.assertIs(stand_in.contexts[0].route, routes[1])

    def test_refused_set_cookie_values_dropped(self):
        """
        The upstream's Set-Cookie values the context's keep_cookie refuses
        (cookies of the proxy's own) do not reach the client; the others do.
        """
        def handler(request: Request) -> bytes:
            request.responseHeaders.setRawHeaders(
                b"set-cookie", [b"oidcproxy=forged", b"app=1", b"oidcproxy_state=x"])
            return b"ok"

        def fill(found: RequestContext) -> None:
            found.keep_cookie = lambda value: not value.startswith(b"oidcproxy")

        h, _ = self.guarded(fill, upstream=RecordingUpstream(handler))
        response, body = h.fetch(self)
        self.assertEqual(body, b"ok")
        self.assertEqual(response.headers.getRawHeaders(b"set-cookie"), [b"app=1"])

    def test_all_set_cookie_values_refused(self):
        """When every Set-Cookie value is refused, the header is not sent at all."""
        def handler(request: Request) -> bytes:
            request.responseHeaders.setRawHeaders(b"set-cookie", [b"oidcproxy=forged"])
            return b"ok"

        def fill(found: RequestContext) -> None:
            found.keep_cookie = lambda value: False

        h, _ = self.guarded(fill, upstream=RecordingUpstream(handler))
        response, _ = h.fetch(self)
        self.assertIsNone(response.headers.getRawHeaders(b"set-cookie"))


class DropConnectionNamedTests(SynchronousTestCase):
    """L{drop_connection_named} on its own."""

    def test_removes_named_keeps_options(self):
        """Named headers go (any case); Connection keeps close, keep-alive and upgrade."""
        headers = Headers({b"connection": [b"Keep-Alive, X-A", b"x-b , Upgrade,close,,"],
                           b"x-a": [b"1"], b"X-B": [b"2"], b"upgrade": [b"websocket"],
                           b"keep-alive": [b"timeout=5"], b"x-c": [b"3"]})
        drop_connection_named(headers)
        self.assertFalse(headers.hasHeader(b"x-a"))
        self.assertFalse(headers.hasHeader(b"x-b"))
        self.assertEqual(headers.getRawHeaders(b"x-c"), [b"3"])
        self.assertEqual(headers.getRawHeaders(b"upgrade"), [b"websocket"])
        self.assertEqual(headers.getRawHeaders(b"connection"), [b"keep-alive, upgrade, close"])
        before = list(headers.getAllRawHeaders())
        drop_connection_named(headers)
        self.assertEqual(list(headers.getAllRawHeaders()), before)

    def test_nothing_left(self):
        """A Connection naming only headers is removed itself."""
        headers = Headers({b"connection": [b"x-a"], b"x-a": [b"1"]})
        drop_connection_named(headers)
        self.assertEqual(list(headers.getAllRawHeaders()), [])
