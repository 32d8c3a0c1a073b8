"""
Tests for HTTP/2 on the proxy's site (L{oidcproxy.web.http2}): a client
whose TLS handshake chose C{h2}, driven in memory with the C{h2} package's
client side, the way Twisted's own HTTP/2 tests build their frames. The TLS
layer is stood in for by a string transport that says C{h2} was negotiated
and, like Twisted's TLS protocol, hands what it receives to its
C{wrappedProtocol}.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import h2.config
import h2.connection
import h2.errors
import h2.events
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from oidcproxy.config import ClientLimits, parse_config
from oidcproxy.core.metrics import Metrics
from oidcproxy.service import build_site
from oidcproxy.web import server as server_module
from oidcproxy.web.channel import ProxyChannel
from oidcproxy.web.http2 import ProxyH2Connection
from oidcproxy.web.server import ProxySite
from tests.test_server import gauge, large_limit, limits, sample


class StepClock(Clock):
    """
    A clock whose L{step} runs the calls due now once each: Twisted's HTTP/2
    sending loop calls itself again at once while a stream waits for a flow
    control window, which C{advance(0)} would follow for ever.
    """

    def step(self) -> None:
        now = self.seconds()
        due = [call for call in self.calls if call.getTime() <= now]
        for call in due:
            if call in self.calls:
                self.calls.remove(call)
                call.called = 1
                call.func(*call.args, **call.kw)


class TLSTransport(StringTransport):
    """A string transport standing in for Twisted's TLS layer after a handshake that chose C{negotiated}."""

    def __init__(self, negotiated: Optional[bytes] = b"h2", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.negotiatedProtocol = negotiated
        self.wrappedProtocol: Any = None


class Streamer(Resource):
    """C{/down?n=N}: N bytes; C{/hang}: no answer until the test gives one; anything else: the body's size."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.waiting: List[Any] = []
        self.gone: List[Any] = []
        self.bodies: List[bytes] = []

    def render(self, request: Any) -> Any:
        if request.path == b"/down":
            return b"d" * int(request.args[b"n"][0])
        if request.path == b"/hang":
            self.waiting.append(request)
            request.notifyFinish().addErrback(self.gone.append)
            return NOT_DONE_YET
        body = request.content.read()
        self.bodies.append(body)
        return b"%d" % len(body)


class Answer:
    """What the client received on one stream."""

    def __init__(self) -> None:
        self.headers: Dict[bytes, bytes] = {}
        self.body = b""
        self.ended = False
        self.reset: Optional[int] = None

    @property
    def status(self) -> int:
        return int(self.headers[b":status"])


class H2Harness:
    """A L{ProxySite}, one client connection that negotiated C{h2}, and an h2 client on it."""

    def __init__(self, case: SynchronousTestCase, resource: Any = None, metrics: Any = None,
                 body_limit: Any = None, **site_options: Any) -> None:
        self.clock = StepClock()
        self.resource = resource if resource is not None else Streamer()
        self.metrics = metrics if metrics is not None else Metrics()
        self.site = ProxySite(self.resource, clock=self.clock,
                              body_limit=body_limit if body_limit is not None else large_limit,
                              reactor=self.clock, metrics=self.metrics, **site_options)
        self.events: List[Dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        case.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.transport, self.channel = self.connect()
        self.client = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.client.initiate_connection()
        self.answers: Dict[int, Answer] = {}
        self.goaway: Optional[int] = None
        self.reading = True
        """Whether the client opens flow-control windows for what it receives."""
        self.pump()

    def connect(self, address: Tuple[str, int] = ("192.0.2.7", 5555)) -> Tuple[TLSTransport, Any]:
        """A connection whose handshake chose h2: its transport and the h2 connection serving it."""
        peer = IPv4Address("TCP", *address)
        channel = self.site.buildProtocol(peer)
        transport = TLSTransport(peerAddress=peer)
        transport.wrappedProtocol = channel
        channel.makeConnection(transport)
        channel.handshakeCompleted()
        return transport, transport.wrappedProtocol

    @property
    def server(self) -> Any:
        return self.transport.wrappedProtocol

    def pump(self) -> None:
        """Move bytes both ways (and run the server's sending loop) until nothing moves."""
        for _ in range(10000):
            moved = False
            out = self.client.data_to_send()
            if out and not self.transport.disconnected:
                self.server.dataReceived(out)
                moved = True
            self.clock.step()
            received = self.transport.value()
            if received:
                self.transport.clear()
                self.receive(received)
                moved = True
            if not moved:
                return
        raise AssertionError("the connection never settled")

    def receive(self, data: bytes) -> None:
        for event in self.client.receive_data(data):
            stream = getattr(event, "stream_id", None)
            answer = self.answers.setdefault(stream, Answer()) if stream else None
            if isinstance(event, h2.events.ResponseReceived):
                answer.headers = dict(event.headers)
            elif isinstance(event, h2.events.DataReceived):
                answer.body += event.data
                if self.reading:
                    self.client.acknowledge_received_data(event.flow_controlled_length, stream)
            elif isinstance(event, h2.events.StreamEnded):
                answer.ended = True
            elif isinstance(event, h2.events.StreamReset):
                answer.reset = event.error_code
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.goaway = event.error_code

    def request(self, method: bytes, path: bytes, body: Optional[bytes] = None,
                headers: Tuple[Tuple[bytes, bytes], ...] = (), end: bool = True) -> int:
        """Send a request (its body as flow control allows); its stream id."""
        stream = self.client.get_next_available_stream_id()
        fields = [(b":method", method), (b":path", path), (b":authority", b"app.test"),
                  (b":scheme", b"https"), *headers]
        self.client.send_headers(stream, fields, end_stream=body is None and end)
        self.pump()
        if body is not None:
            self.send_body(stream, body, end)
        return stream

    def send_body(self, stream: int, body: bytes, end: bool = True) -> None:
        while body:
            window = min(self.client.local_flow_control_window(stream),
                         self.client.max_outbound_frame_size)
            if window <= 0:
                raise AssertionError("the server opened no window for the rest of the body")
            chunk, body = body[:window], body[window:]
            self.client.send_data(stream, chunk, end_stream=end and not body)
            self.pump()

    def access(self) -> List[Dict[str, Any]]:
        return [e for e in self.events if e.get("log_namespace") == "oidcproxy.access"]

    def errors(self) -> List[Dict[str, Any]]:
        return [e for e in self.events
                if e.get("log_failure") is not None or
                e.get("log_level") in (LogLevel.error, LogLevel.critical)]

    def lose(self) -> None:
        self.server.connectionLost(Failure(ConnectionDone()))


class NegotiationTests(SynchronousTestCase):
    """What the site offers in the TLS handshake, and who serves what was chosen."""

    def site(self, **options: Any) -> ProxySite:
        return ProxySite(Streamer(), clock=Clock(), body_limit=large_limit, reactor=Clock(),
                         **options)

    def test_alpn_offers_h2_first(self) -> None:
        """With Twisted's http2 extra installed, h2 is offered first, then http/1.1."""
        self.assertEqual(self.site().acceptableProtocols(), [b"h2", b"http/1.1"])

    def test_without_twisted_http2(self) -> None:
        """A Twisted that cannot speak HTTP/2 (no h2 installed): only http/1.1 is offered."""
        self.patch(server_module, "H2_ENABLED", False)
        self.assertEqual(self.site().acceptableProtocols(), [b"http/1.1"])

    def test_http2_off(self) -> None:
        """http2 = false: only http/1.1 is offered."""
        self.assertEqual(self.site(http2=False).acceptableProtocols(), [b"http/1.1"])

    def test_config_reaches_the_site(self) -> None:
        """The proxy's site offers what the http2 key says."""
        for http2, offered in ((True, [b"h2", b"http/1.1"]), (False, [b"http/1.1"])):
            config = parse_config({"http2": http2, "routes": [
                {"path": "/", "auth": "none", "upstream": "http://up.test"}]}, "t.toml")
            site = build_site(config, MemoryReactorClock())
            self.assertEqual(site.acceptableProtocols(), offered)

    def test_h2_handshake_switches(self) -> None:
        """A handshake that chose h2 hands the connection to an HTTP/2 connection of the site."""
        h = H2Harness(self)
        self.assertIsInstance(h.server, ProxyH2Connection)
        self.assertIs(h.server.site, h.site)

    def test_http11_handshake_stays(self) -> None:
        """A handshake that chose http/1.1 (or nothing) keeps the HTTP/1.1 channel."""
        site = self.site()
        for negotiated in (b"http/1.1", None):
            channel = site.buildProtocol(IPv4Address("TCP", "192.0.2.7", 1))
            transport = TLSTransport(negotiated)
            transport.wrappedProtocol = channel
            channel.makeConnection(transport)
            channel.handshakeCompleted()
            self.assertIs(transport.wrappedProtocol, channel)
            channel.dataReceived(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
            self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 OK\r\n"))

    def test_h2_claimed_but_not_offered(self) -> None:
        """With http2 off a handshake cannot choose h2; a connection claiming it anyway is cut."""
        site = self.site(http2=False)
        channel = site.buildProtocol(IPv4Address("TCP", "192.0.2.7", 1))
        transport = TLSTransport(b"h2")
        transport.wrappedProtocol = channel
        channel.makeConnection(transport)
        channel.handshakeCompleted()
        self.assertIsInstance(transport.wrappedProtocol, ProxyChannel)
        self.assertTrue(transport.disconnecting)


class RequestTests(SynchronousTestCase):
    """Requests over HTTP/2 are the site's ProxyRequests: answered, logged, limited."""

    def test_get(self) -> None:
        """A GET is answered, and logged once with its method, path and status."""
        h = H2Harness(self)
        stream = h.request(b"GET", b"/down?n=5&secret=1")
        answer = h.answers[stream]
        self.assertEqual((answer.status, answer.body, answer.ended), (200, b"ddddd", True))
        [event] = h.access()
        self.assertEqual((event["method"], event["path"], event["status"], event["client"]),
                         ("GET", "/down", 200, "192.0.2.7"))
        self.assertEqual(h.errors(), [])

    def test_access_log_says_http2(self) -> None:
        """The access log's proto is HTTP/2, in the text line too."""
        h = H2Harness(self)
        h.request(b"GET", b"/down?n=1")
        [event] = h.access()
        self.assertEqual(event["proto"], "HTTP/2")
        self.assertTrue(event["access_line"].endswith(" proto=HTTP/2"), event["access_line"])

    def test_many_streams_on_one_connection(self) -> None:
        """Several requests in flight at once on one connection, each answered on its stream."""
        h = H2Harness(self)
        streams = [h.request(b"GET", b"/down?n=%d" % n) for n in (1, 2, 3)]
        self.assertEqual([h.answers[s].body for s in streams], [b"d", b"dd", b"ddd"])
        self.assertEqual(len(h.access()), 3)

    def test_upload_with_flow_control(self) -> None:
        """A body of several windows reaches the resource whole (the server opens the windows)."""
        h = H2Harness(self)
        body = bytes(range(256)) * 12000  # 3 MB
        stream = h.request(b"POST", b"/up", body)
        self.assertEqual(h.answers[stream].body, b"%d" % len(body))
        self.assertEqual(h.resource.bodies, [body])

    def test_download_with_flow_control(self) -> None:
        """An answer of several windows arrives whole as the client opens them."""
        h = H2Harness(self)
        stream = h.request(b"GET", b"/down?n=3000000")
        self.assertEqual(len(h.answers[stream].body), 3000000)
        self.assertTrue(h.answers[stream].ended)

    def test_stalled_download_waits_quietly(self) -> None:
        """
        A client that opens no window: the server waits with nothing due
        (Twisted's loop alone would run again at once, for ever), and sends
        the rest once the client reads again.
        """
        h = H2Harness(self)
        h.reading = False
        stream = h.request(b"GET", b"/down?n=300000")
        received = len(h.answers[stream].body)
        self.assertLess(received, 300000)
        self.assertEqual([c for c in h.clock.getDelayedCalls() if c.getTime() <= h.clock.seconds()], [])
        h.reading = True
        h.client.acknowledge_received_data(received, stream)
        h.pump()
        self.assertEqual(len(h.answers[stream].body), 300000)
        self.assertTrue(h.answers[stream].ended)

    def test_too_large_by_length(self) -> None:
        """
        A Content-Length over the route's limit: 413 on the stream, the stream
        reset with NO_ERROR (send no more), the connection still serving;
        logged and counted once.
        """
        h = H2Harness(self, body_limit=limits())
        stream = h.request(b"POST", b"/x?q=1", headers=((b"content-length", b"101"),
                                                        (b"accept", b"application/json")), end=False)
        answer = h.answers[stream]
        self.assertEqual(answer.status, 413)
        self.assertIn(b"body_too_large", answer.body)
        self.assertEqual(answer.headers[b"content-type"], b"application/json")
        self.assertEqual(answer.reset, h2.errors.ErrorCodes.NO_ERROR)
        self.assertEqual(h.resource.bodies, [])
        again = h.request(b"GET", b"/down?n=2")
        self.assertEqual(h.answers[again].body, b"dd")
        self.assertEqual([(e["method"], e["path"], e["status"], e["route"]) for e in h.access()],
                         [("POST", "/x", 413, "routes[0]"), ("GET", "/down", 200, "-")])
        self.assertEqual(
            sample(h.metrics, "oidcproxy_requests_total", route="routes[0]", status="413"), 1)
        self.assertEqual(h.errors(), [])

    def test_too_large_as_it_comes(self) -> None:
        """A body without Content-Length passing the limit as it comes: 413, the rest not read."""
        h = H2Harness(self, body_limit=limits())
        stream = h.request(b"POST", b"/x", b"y" * 150)
        self.assertEqual(h.answers[stream].status, 413)
        self.assertEqual(h.resource.bodies, [])
        self.assertEqual(h.errors(), [])

    def test_body_still_coming_after_the_answer(self) -> None:
        """
        A stream answered before its client sent all of its body: the stream
        is reset with NO_ERROR once the answer is out, and the DATA the
        client sent meanwhile harms nothing (Twisted alone fails on it).
        """
        h = H2Harness(self, body_limit=limits())
        stream = h.client.get_next_available_stream_id()
        h.client.send_headers(stream, [(b":method", b"POST"), (b":path", b"/x"),
                                       (b":authority", b"a"), (b":scheme", b"https"),
                                       (b"content-length", b"300")])
        h.client.send_data(stream, b"y" * 100)
        h.server.dataReceived(h.client.data_to_send())
        for _ in range(5):
            h.clock.step()
        answered = h.transport.value()
        h.transport.clear()
        # More of the body, sent before the client saw the answer.
        h.client.send_data(stream, b"y" * 100)
        h.server.dataReceived(h.client.data_to_send())
        h.receive(answered)
        h.pump()
        self.assertEqual(h.answers[stream].status, 413)
        self.assertEqual(h.answers[stream].reset, h2.errors.ErrorCodes.NO_ERROR)
        again = h.request(b"GET", b"/down?n=1")
        self.assertEqual(h.answers[again].body, b"d")
        self.assertEqual(h.errors(), [])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_client_reset_cancels_the_work(self) -> None:
        """
        An RST_STREAM while the request waits: the request learns its client
        went (499), as when an HTTP/1.1 client closes; the connection stays.
        """
        h = H2Harness(self)
        stream = h.request(b"GET", b"/hang")
        [request] = h.resource.waiting
        h.client.reset_stream(stream, h2.errors.ErrorCodes.CANCEL)
        h.pump()
        self.assertEqual(len(h.resource.gone), 1)
        self.assertEqual([(e["path"], e["status"]) for e in h.access()], [("/hang", 499)])
        again = h.request(b"GET", b"/down?n=1")
        self.assertEqual(h.answers[again].body, b"d")
        self.assertEqual(h.errors(), [])

    def test_abort_resets_only_the_stream(self) -> None:
        """Cutting a broken answer off (the request's transport) resets its stream, not the connection."""
        h = H2Harness(self)
        stream = h.request(b"GET", b"/hang")
        [request] = h.resource.waiting
        request.write(b"partial")
        request.transport.abortConnection()
        h.pump()
        self.assertEqual(h.answers[stream].reset, h2.errors.ErrorCodes.INTERNAL_ERROR)
        self.assertFalse(h.transport.disconnecting)
        again = h.request(b"GET", b"/down?n=1")
        self.assertEqual(h.answers[again].body, b"d")

    def test_secure_and_client_address(self) -> None:
        """The request reads the connection's address and security through its stream."""
        h = H2Harness(self)
        h.request(b"GET", b"/hang")
        [request] = h.resource.waiting
        self.assertEqual(request.getClientAddress().host, "192.0.2.7")
        self.assertEqual(request.stream_id, 1)
        self.assertEqual(request.clientproto, b"HTTP/2")


class ConnectionTests(SynchronousTestCase):
    """The connection's part: counts and caps, deadlines, idle timeout, drain."""

    def test_counted_once(self) -> None:
        """The switch keeps the connection's one place in the counts; its close frees it."""
        metrics = Metrics()
        h = H2Harness(self, metrics=metrics, limits=ClientLimits(max_per_address=1))
        self.assertEqual(h.site.open_connections, 1)
        self.assertEqual(gauge(metrics, "oidcproxy_client_connections_open"), 1)
        self.assertEqual(h.server.oidcproxy_address, "192.0.2.7")
        transport, channel = h.connect()
        self.assertIsInstance(channel, ProxyChannel)  # refused before the switch
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 503 "))
        channel.connectionLost(Failure(ConnectionDone()))
        h.lose()
        self.assertEqual(h.site.open_connections, 0)
        self.assertEqual(gauge(metrics, "oidcproxy_client_connections_open"), 0)
        h.connect()
        self.assertEqual(h.site.open_connections, 1)

    def test_lost_with_requests_in_flight(self) -> None:
        """A connection lost with requests waiting: each is told, logged 499, the connection forgotten."""
        h = H2Harness(self)
        h.request(b"GET", b"/hang")
        h.request(b"GET", b"/hang")
        h.server.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(len(h.resource.gone), 2)
        self.assertEqual([e["status"] for e in h.access()], [499, 499])
        self.assertEqual(h.site.open_connections, 0)
        self.assertEqual(h.errors(), [])

    def test_header_deadline(self) -> None:
        """No request within client_header_timeout of the opening: GOAWAY, closed, counted."""
        h = H2Harness(self, limits=ClientLimits(header_timeout=30))
        h.clock.advance(29)
        self.assertFalse(h.transport.disconnecting)
        h.clock.advance(1.5)
        h.pump()
        self.assertTrue(h.transport.disconnecting)
        self.assertEqual(h.goaway, h2.errors.ErrorCodes.NO_ERROR)
        self.assertEqual(sample(h.metrics, "oidcproxy_client_timeouts_total", phase="headers"), 1)
        h.clock.advance(10)
        self.assertTrue(h.transport.disconnected)  # cut: the client read nothing

    def test_header_deadline_met(self) -> None:
        """A request within client_header_timeout stops that deadline."""
        h = H2Harness(self, limits=ClientLimits(header_timeout=30))
        h.request(b"GET", b"/down?n=1")
        h.clock.advance(40)
        self.assertFalse(h.transport.disconnecting)

    def test_idle_timeout(self) -> None:
        """keepalive_timeout closes an idle connection."""
        h = H2Harness(self, keepalive_timeout=75)
        h.request(b"GET", b"/down?n=1")
        h.clock.advance(76)
        h.pump()
        self.assertTrue(h.transport.disconnecting)

    def test_pings_do_not_keep_it_open(self) -> None:
        """Without a request in flight, PING frames do not restart the idle timeout."""
        h = H2Harness(self, keepalive_timeout=75)
        h.request(b"GET", b"/down?n=1")
        for _ in range(3):
            h.clock.advance(25)
            h.client.ping(b"12345678")
            h.pump()
        h.clock.advance(1)
        h.pump()
        self.assertTrue(h.transport.disconnecting)

    def test_idle_from_the_last_request(self) -> None:
        """The idle timeout runs from the end of the last request."""
        h = H2Harness(self, keepalive_timeout=75)
        h.request(b"GET", b"/down?n=1")
        h.clock.advance(70)
        h.request(b"GET", b"/down?n=1")
        h.clock.advance(70)
        h.pump()
        self.assertFalse(h.transport.disconnecting)
        h.clock.advance(6)
        h.pump()
        self.assertTrue(h.transport.disconnecting)

    def test_not_idle_with_a_request_in_flight(self) -> None:
        """A request waiting quietly on a slow answer keeps its connection past keepalive_timeout."""
        h = H2Harness(self, keepalive_timeout=75)
        h.request(b"GET", b"/hang")
        h.clock.advance(200)
        self.assertFalse(h.transport.disconnecting)
        [request] = h.resource.waiting
        request.write(b"late")
        request.finish()
        h.pump()
        self.assertEqual(h.answers[1].body, b"late")
        h.clock.advance(76)
        h.pump()
        self.assertTrue(h.transport.disconnecting)

    def test_drain_idle(self) -> None:
        """A drain closes an idle HTTP/2 connection at once, with GOAWAY."""
        h = H2Harness(self)
        h.request(b"GET", b"/down?n=1")
        d = h.site.drain(30)
        h.pump()
        self.assertTrue(h.transport.disconnecting)
        self.assertEqual(h.goaway, h2.errors.ErrorCodes.NO_ERROR)
        h.lose()
        self.assertEqual(self.successResultOf(d), 0)

    def test_drain_waits_for_requests_in_flight(self) -> None:
        """
        A drain lets the requests in flight finish, answers a new stream 503,
        then closes the connection.
        """
        h = H2Harness(self)
        first = h.request(b"GET", b"/hang")
        d = h.site.drain(30)
        self.assertNoResult(d)
        self.assertFalse(h.transport.disconnecting)
        late = h.request(b"GET", b"/down?n=1")
        self.assertEqual(h.answers[late].status, 503)
        self.assertEqual(h.answers[late].headers[b"retry-after"], b"5")
        [request] = h.resource.waiting
        request.write(b"done")
        request.finish()
        h.pump()
        self.assertEqual(h.answers[first].body, b"done")
        self.assertTrue(h.transport.disconnecting)
        h.lose()
        self.assertEqual(self.successResultOf(d), 0)

    def test_drain_timeout_aborts(self) -> None:
        """A request still in flight at the drain's timeout: its connection is aborted."""
        h = H2Harness(self)
        h.request(b"GET", b"/hang")
        d = h.site.drain(30)
        h.clock.advance(30)
        self.assertEqual(self.successResultOf(d), 1)
        self.assertTrue(h.transport.disconnected)


class BodyDeadlineTests(SynchronousTestCase):
    """client_body_timeout and client_body_min_rate for the body of an HTTP/2 stream."""

    def start(self, h: H2Harness, length: int = 1000) -> int:
        return h.request(b"POST", b"/up?q=1", headers=((b"content-length", b"%d" % length),),
                         end=False)

    def test_late_body(self) -> None:
        """
        A body not in within client_body_timeout: 408 on its stream, the
        stream reset, counted and logged; the connection goes on serving.
        """
        h = H2Harness(self, limits=ClientLimits(body_timeout=20, body_min_rate=0))
        stream = self.start(h)
        h.clock.advance(19)
        h.pump()
        self.assertNotIn(b":status", h.answers.get(stream, Answer()).headers)
        h.clock.advance(1.5)
        h.pump()
        answer = h.answers[stream]
        self.assertEqual(answer.status, 408)
        self.assertEqual(answer.reset, h2.errors.ErrorCodes.NO_ERROR)
        self.assertEqual(sample(h.metrics, "oidcproxy_client_timeouts_total", phase="body"), 1)
        self.assertEqual([(e["method"], e["path"], e["status"]) for e in h.access()],
                         [("POST", "/up", 408)])
        self.assertEqual(h.resource.bodies, [])
        again = h.request(b"GET", b"/down?n=1")
        self.assertEqual(h.answers[again].body, b"d")
        self.assertEqual(h.errors(), [])

    def test_body_at_the_min_rate(self) -> None:
        """Each client_body_min_rate bytes received buy one more second."""
        h = H2Harness(self, limits=ClientLimits(body_timeout=20, body_min_rate=100))
        stream = self.start(h, 3000)
        for _ in range(29):
            h.clock.advance(1)
            h.send_body(stream, b"x" * 100, end=False)
        h.send_body(stream, b"x" * 100)
        h.pump()
        self.assertEqual(h.answers[stream].status, 200)
        self.assertEqual(h.resource.bodies, [b"x" * 3000])

    def test_whole_body_stops_the_deadline(self) -> None:
        """Once the body is in, the request may take as long as its answer takes."""
        h = H2Harness(self, limits=ClientLimits(body_timeout=20))
        stream = h.request(b"POST", b"/hang", b"x" * 10)
        h.clock.advance(100)
        h.pump()
        self.assertNotIn(stream, h.answers)
        self.assertEqual(len(h.resource.waiting), 1)

    def test_no_deadline_for_bodiless_requests(self) -> None:
        """A GET has no body to wait for."""
        h = H2Harness(self, limits=ClientLimits(body_timeout=20))
        h.request(b"GET", b"/hang")
        h.clock.advance(100)
        h.pump()
        self.assertEqual(sample(h.metrics, "oidcproxy_client_timeouts_total", phase="body"), 0)
