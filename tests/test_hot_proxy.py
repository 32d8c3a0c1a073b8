"""
Tests for the proxy engine's per-request cost: a free upstream slot is
taken at once (no Deferred), and an exchange watches its request's end
through one C{notifyFinish}; the slot line and the client-gone cancellation
work as before.
"""

from __future__ import annotations

import sys
from typing import Any, List

from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web import http
from twisted.web.client import URI, Agent
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import directlyProvides, implementer

from oidcproxy.config import UpstreamSettings
from oidcproxy.core.admission import QueueFull, SlotQueue
from oidcproxy.proxy import forwarding as forwarding_module
from oidcproxy.proxy import headers as headers_module
from oidcproxy.proxy.client import OriginAgent, UpstreamClient
from oidcproxy.proxy.connect import agent_host
from oidcproxy.proxy.forwarding import upstream_headers
from oidcproxy.proxy.headers import is_websocket_upgrade, put_raw, stored_name
from oidcproxy.proxy.routes import RouteMatch
from oidcproxy.web.channel import ProxyChannel

from .fakes import HangingAgent
from .test_upstream import ProxyHarness, route


class SlotTakeTests(SynchronousTestCase):
    def test_take_free_slot(self):
        """take() takes a free slot at once, and says False when none is free."""
        slots = SlotQueue(2, 1)
        self.assertTrue(slots.take())
        self.assertTrue(slots.take())
        self.assertFalse(slots.take())
        self.assertEqual(slots.free, 0)
        waiting = slots.acquire()
        self.assertNoResult(waiting)
        self.failureResultOf(slots.acquire(), QueueFull)
        slots.release()
        self.successResultOf(waiting)
        slots.release()
        self.assertTrue(slots.take())


class ExchangeCostTests(SynchronousTestCase):
    def count_notify_finish(self) -> List[Any]:
        calls: List[Any] = []
        original = http.Request.notifyFinish

        def counting(request: Any) -> Any:
            calls.append(request)
            return original(request)

        self.patch(http.Request, "notifyFinish", counting)
        return calls

    def test_free_slot_no_deferred(self):
        """With a slot free, the exchange takes it without a Deferred, and its request goes up."""
        h = ProxyHarness()
        client = h.proxy._clients[0]
        acquired: List[Any] = []
        acquire = client.slots.acquire
        self.patch(client.slots, "acquire", lambda: acquired.append(1) or acquire())
        response, _ = h.fetch(self)
        self.assertEqual(response.code, 200)
        self.assertEqual(acquired, [])
        self.assertEqual(client.slots.free, client.slots.slots)

    def test_one_notify_finish(self):
        """An exchange watches the end of its request once (the proxy's count goes with it)."""
        calls = self.count_notify_finish()
        h = ProxyHarness()
        response, _ = h.fetch(self)
        self.assertEqual(response.code, 200)
        self.assertEqual(len(calls), 1)
        self.assertEqual(h.proxy._in_flight, 0)

    def test_client_gone_cancels_and_counts(self):
        """A client that leaves cancels the upstream request and the exchange is over."""
        agent = HangingAgent()
        h = ProxyHarness([route(settings=UpstreamSettings(timeout=30.0))], agent=agent)
        d = h.client.get("http://proxy.test/")
        h.flush()
        self.assertEqual(h.proxy._in_flight, 1)
        d.cancel()
        h.flush()
        self.failureResultOf(d)
        self.assertEqual(agent.cancelled, 1)
        self.assertEqual(h.proxy._in_flight, 0)
        self.assertEqual(h.clock.getDelayedCalls(), [])


class _ForwardedRequest:
    """What L{upstream_headers} reads of a request, and how often it asks C{isSecure}."""

    def __init__(self, host: bytes, secure: bool = False) -> None:
        self.requestHeaders = Headers({b"host": [host], b"accept": [b"*/*"]})
        self.secure = secure
        self.secure_asked = 0

    def getClientAddress(self) -> Any:
        return IPv4Address("TCP", "192.0.2.7", 4321)

    def isSecure(self) -> bool:
        self.secure_asked += 1
        return self.secure


class UpstreamHeadersCostTests(SynchronousTestCase):
    def headers(self, request: _ForwardedRequest) -> Headers:
        match = RouteMatch(route=route(pass_host_header=True), host="app.test", path="/",
                           query=None, upstream_target=b"/")
        return upstream_headers(request, match, ())  # type: ignore[arg-type]

    def test_secure_asked_once(self):
        """isSecure (an interface adaptation in Twisted) is asked once per request."""
        request = _ForwardedRequest(b"app.test", secure=True)
        out = self.headers(request)
        self.assertEqual(request.secure_asked, 1)
        self.assertEqual(out.getRawHeaders(b"x-forwarded-proto"), [b"https"])
        self.assertEqual(out.getRawHeaders(b"forwarded"),
                         [b'for=192.0.2.7;proto=https;host="app.test"'])

    def test_headers_byte_identical(self):
        """The upstream request's headers, names and values, as they always were."""
        out = self.headers(_ForwardedRequest(b"app.test:8080"))
        self.assertEqual(sorted(out.getAllRawHeaders()), [
            (b"Accept", [b"*/*"]),
            (b"Forwarded", [b'for=192.0.2.7;proto=http;host="app.test:8080"']),
            (b"Host", [b"app.test:8080"]),
            (b"X-Forwarded-For", [b"192.0.2.7"]),
            (b"X-Forwarded-Host", [b"app.test:8080"]),
            (b"X-Forwarded-Proto", [b"http"]),
        ])

    def test_forwarded_host_only_when_quotable(self):
        """C{host="..."} is in C{Forwarded} exactly when every byte is visible ASCII but C{"}."""
        for byte in range(256):
            value = b"a" + bytes([byte]) + b"b"
            if byte in (0x0A, 0x0D, 0x00):
                continue  # Twisted's Headers refuses these in values
            forwarded = self.headers(_ForwardedRequest(value)).getRawHeaders(b"forwarded")[0]
            quotable = 0x21 <= byte < 0x7F and byte != 0x22
            self.assertEqual(forwarded.endswith(b';host="' + value + b'"'), quotable, byte)


class _HeadersAgent(HangingAgent):
    """A hanging agent that keeps the headers each request was given."""

    def __init__(self) -> None:
        super().__init__()
        self.headers: List[Headers] = []

    def request(self, method, uri, headers=None, bodyProducer=None):  # type: ignore[no-untyped-def]
        self.headers.append(headers)
        return super().request(method, uri, headers, bodyProducer)


class AgentHostTests(SynchronousTestCase):
    URLS = [b"http://up.test", b"http://up.test:80", b"http://up.test:8080",
            b"https://up.test", b"https://up.test:443", b"https://up.test:8443",
            b"http://127.0.0.1:9000", b"http://[::1]:9000", b"https://[2001:db8::1]"]

    def test_same_as_agent(self):
        """
        agent_host is the Host Twisted's Agent adds when the headers have
        none (its private _computeHostValue, pinned here so that a Twisted
        upgrade that changes it fails loudly).
        """
        agent = Agent(Clock())
        for url in self.URLS:
            uri = URI.fromBytes(url)
            self.assertEqual(agent_host(url),
                             agent._computeHostValue(uri.scheme, uri.host, uri.port), url)

    def test_agent_gets_host_last(self):
        """
        The proxy gives the Agent headers that carry Host already, last (as
        the Agent's copy-then-add put it), so the Agent does not copy them.
        """
        agent = _HeadersAgent()
        h = ProxyHarness([route(upstream="http://up.test:8080/base")], agent=agent)
        h.client.get("http://proxy.test/x", headers={b"accept": [b"*/*"]})
        h.flush()
        [sent] = agent.headers
        self.assertTrue(sent.hasHeader(b"host"))
        names = [name.lower() for name, _ in sent.getAllRawHeaders()]
        self.assertEqual(names[-1], b"host")
        self.assertEqual(sent.getRawHeaders(b"host"), [b"up.test:8080"])

    def test_pass_host_header_kept(self):
        """With pass_host_header the client's Host goes up, as before."""
        agent = _HeadersAgent()
        h = ProxyHarness([route(upstream="http://up.test:8080/", pass_host_header=True)],
                         agent=agent)
        h.client.get("http://proxy.test/x")
        h.flush()
        self.assertEqual(agent.headers[0].getRawHeaders(b"host"), [b"proxy.test"])


class PutRawTests(SynchronousTestCase):
    def test_same_as_set_raw_headers(self):
        """
        put_raw with a name from getAllRawHeaders (or stored_name) and values
        from another Headers gives what setRawHeaders gives (it writes
        Twisted's private _rawHeaders: this pins it).
        """
        source = Headers()
        source.addRawHeader(b"x-Custom_Name", b"one")
        source.addRawHeader(b"x-Custom_Name", b"two\r\n three")
        source.setRawHeaders(b"content-type", [b"text/plain"])
        source.setRawHeaders(b"WWW-authenticate", [b"Bearer"])
        fast, slow = Headers(), Headers()
        for name, values in source.getAllRawHeaders():
            put_raw(fast, name, list(values))
            slow.setRawHeaders(name, values)
        put_raw(fast, stored_name(b"x-forwarded-for"), [b"192.0.2.1"])
        slow.setRawHeaders(b"x-forwarded-for", [b"192.0.2.1"])
        self.assertEqual(list(fast.getAllRawHeaders()), list(slow.getAllRawHeaders()))
        self.assertEqual(fast, slow)
        self.assertEqual(fast.getRawHeaders(b"x-forwarded-for"), [b"192.0.2.1"])
        self.assertEqual(fast.getRawHeaders(b"X-Custom_Name"), [b"one", b"two  three"])

    def test_stored_name_as_headers_keep_it(self):
        """stored_name is the key setRawHeaders stores a name under."""
        for name in (b"host", b"x-forwarded-for", b"content-length", b"etag", b"te"):
            headers = Headers()
            headers.setRawHeaders(name, [b"v"])
            self.assertEqual([stored_name(name)], [n for n, _ in headers.getAllRawHeaders()])

    def count_set_raw_headers(self) -> List[bytes]:
        """The names setRawHeaders is called with from the proxy engine's modules."""
        calls: List[bytes] = []
        original = Headers.setRawHeaders

        def counting(headers: Headers, name: Any, values: Any) -> None:
            caller = sys._getframe(1).f_code.co_filename
            if caller.endswith(("exchange.py", "forwarding.py")):
                calls.append(name)
            original(headers, name, values)

        self.patch(Headers, "setRawHeaders", counting)
        return calls

    def test_upstream_headers_set_without_cleaning_again(self):
        """The upstream request's headers are put, not set one by one through Twisted."""
        request = _ForwardedRequest(b"app.test")
        calls = self.count_set_raw_headers()
        match = RouteMatch(route=route(), host="app.test", path="/", query=None,
                           upstream_target=b"/")
        out = upstream_headers(request, match, (), b"up.test")  # type: ignore[arg-type]
        self.assertEqual(calls, [])
        self.assertEqual(out.getRawHeaders(b"accept"), [b"*/*"])
        self.assertEqual(out.getRawHeaders(b"host"), [b"up.test"])

    def test_response_headers_put(self):
        """The upstream's answer's headers reach the client without setRawHeaders per header."""
        h = ProxyHarness()
        calls = self.count_set_raw_headers()
        response, _ = h.fetch(self)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"application/json"])
        self.assertEqual(calls, [])


@implementer(IAgentEndpointFactory)
class _Endpoints:
    """Records the parsed URLs it is asked endpoints for."""

    def __init__(self) -> None:
        self.asked: List[Any] = []

    def endpointForURI(self, uri: Any) -> Any:
        self.asked.append((uri.scheme, uri.host, uri.port))
        return ("endpoint", uri.scheme, uri.host, uri.port)


def _uri_fields(uri: Any) -> Any:
    return (uri.scheme, uri.netloc, uri.host, uri.port, uri.path, uri.params, uri.query,
            uri.fragment, uri.originForm, uri.toBytes())


class OriginAgentTests(SynchronousTestCase):
    URLS = [b"http://up.test/", b"http://up.test:8080/a/b?x=1&y=%2F", b"https://up.test/a?",
            b"http://up.test//double//slash", b"http://[::1]:9000/p?q?r", b"https://up.test:443/x",
            b"http://127.0.0.1:9000/a:b/c", b"http://up.test/a;p=1?q", b"http://up.test/a#f",
            b"http://up.test/a%20b", b"ftp://up.test/x"]

    def calls(self, cls: Any, url: bytes) -> Any:
        """What Agent.request hands its private _requestWithEndpoint (pinned here)."""
        endpoints = _Endpoints()
        agent = cls.usingEndpointFactory(MemoryReactor(), endpoints)
        seen: List[Any] = []

        def record(key, endpoint, method, parsed, headers, producer, path):  # type: ignore[no-untyped-def]
            seen.append((key, endpoint, method, _uri_fields(parsed), headers, producer, path))
            return "sent"

        agent._requestWithEndpoint = record
        headers = Headers({b"host": [b"up.test"]})
        result = agent.request(b"GET", url, headers, None)
        if seen:
            self.assertEqual(result, "sent")
            return seen, endpoints.asked
        return self.failureResultOf(result).type, endpoints.asked

    def test_same_as_agent(self):
        """OriginAgent hands on what Agent.request would, for every kind of URL."""
        for url in self.URLS:
            self.assertEqual(self.calls(OriginAgent, url), self.calls(Agent, url), url)

    def test_origin_parsed_once(self):
        """The origin of a URL is parsed once, not per request."""
        agent = OriginAgent.usingEndpointFactory(MemoryReactor(), _Endpoints())
        agent._requestWithEndpoint = lambda *args: None
        parsed: List[bytes] = []
        original = URI.fromBytes.__func__  # type: ignore[attr-defined]
        self.patch(URI, "fromBytes", classmethod(
            lambda cls, uri, defaultPort=None: parsed.append(uri) or original(cls, uri, defaultPort)))
        for path in (b"/a", b"/b?c", b"/d"):
            agent.request(b"GET", b"http://up.test:8080" + path, Headers(), None)
        self.assertEqual(parsed, [b"http://up.test:8080"])

    def test_built_with_it(self):
        """The upstream client's agent is an OriginAgent."""
        client = UpstreamClient.build(MemoryReactor(), UpstreamSettings())
        self.assertIsInstance(client.agent, OriginAgent)


class FewerLookupsTests(SynchronousTestCase):
    def test_channel_secure_asked_once(self):
        """A connection asks Twisted whether it is secure once (an adaptation each time)."""
        asked: List[Any] = []
        original = http.HTTPChannel.isSecure
        self.patch(http.HTTPChannel, "isSecure", lambda channel: asked.append(channel) or
                   original(channel))
        channel = ProxyChannel()
        self.assertFalse(channel.isSecure())
        channel.makeConnection(StringTransport())
        self.assertFalse(channel.isSecure())
        self.assertFalse(channel.isSecure())
        self.assertEqual(len(asked), 2)

    def test_channel_secure_over_tls(self):
        """Over TLS the kept answer is True."""
        transport = StringTransport()
        directlyProvides(transport, ISSLTransport)
        channel = ProxyChannel()
        channel.transport = transport
        self.assertTrue(channel.isSecure())
        self.assertTrue(channel.isSecure())

    def upgrade(self, headers: Any) -> bool:
        channel = http.HTTPChannel()
        channel.makeConnection(StringTransport())
        request = http.Request(channel)
        request.method, request.clientproto = b"GET", b"HTTP/1.1"
        for name, value in headers.items():
            request.requestHeaders.setRawHeaders(name, [value])
        return is_websocket_upgrade(request)

    def test_websocket_upgrade(self):
        """Both Connection: Upgrade and Upgrade: websocket make a WebSocket request, as before."""
        self.assertTrue(self.upgrade({b"connection": b"keep-alive, Upgrade",
                                      b"upgrade": b"WebSocket"}))
        self.assertFalse(self.upgrade({b"upgrade": b"websocket"}))
        self.assertFalse(self.upgrade({b"connection": b"upgrade"}))
        self.assertFalse(self.upgrade({b"connection": b"upgrade", b"upgrade": b"h2c"}))

    def test_no_upgrade_one_lookup(self):
        """A request without Upgrade is told apart without reading its Connection tokens."""
        read: List[bytes] = []
        original = headers_module.header_tokens
        self.patch(headers_module, "header_tokens",
                   lambda headers, name: read.append(name) or original(headers, name))
        self.assertFalse(self.upgrade({b"connection": b"keep-alive"}))
        self.assertEqual(read, [])

    def test_plain_names_not_folded(self):
        """Names without "_" or "." are not folded again; the others still are."""
        folded: List[bytes] = []
        original = forwarding_module.canonical_header
        self.patch(forwarding_module, "canonical_header",
                   lambda name: folded.append(name) or original(name))
        request = _ForwardedRequest(b"app.test")
        request.requestHeaders.setRawHeaders(b"x_forwarded_host", [b"evil.test"])
        request.requestHeaders.setRawHeaders(b"x-real.ip", [b"192.0.2.9"])
        match = RouteMatch(route=route(), host="app.test", path="/", query=None,
                           upstream_target=b"/")
        out = upstream_headers(request, match, (), b"up.test")  # type: ignore[arg-type]
        self.assertEqual(sorted(folded), [b"x-real.ip", b"x_forwarded_host"])
        self.assertEqual(out.getRawHeaders(b"x-forwarded-host"), [b"app.test"])
        self.assertFalse(out.hasHeader(b"x_forwarded_host"))
        self.assertFalse(out.hasHeader(b"x-real.ip"))

    def test_one_timer_per_request(self):
        """
        A request answered on its own sets the deadlines' timer once: the
        exchange's deadline is stopped after the body's idle deadline is
        set, so the timer is not cancelled and set again between them.
        """
        h = ProxyHarness([route(settings=UpstreamSettings(timeout=30.0,
                                                          stream_idle_timeout=60.0))])
        timers: List[Any] = []
        call_later = h.clock.callLater

        def counting(delay: float, f: Any, *args: Any, **kw: Any) -> Any:
            if getattr(f, "__name__", "") == "_sweep":
                timers.append(delay)
            return call_later(delay, f, *args, **kw)

        self.patch(h.clock, "callLater", counting)
        response, _ = h.fetch(self)
        self.assertEqual(response.code, 200)
        self.assertEqual(timers, [30.0])
        self.assertEqual(h.clock.getDelayedCalls(), [])
