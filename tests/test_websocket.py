"""
Tests for L{oidcproxy.proxy.websocket}: WebSocket upgrades through the guard and
the upstream proxy, driven in memory. The client is a real HTTP channel of a
L{ProxySite} on a string transport; the upstream connection is a string
transport too, handed out by a fake endpoint; time is the harness's Clock.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Dict, List, Optional, Tuple

from treq.testing import RequestTraversalAgent
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from twisted.web.test.requesthelper import DummyChannel

from oidcproxy.config import UpstreamSettings
from oidcproxy.core.context import RequestContext
from oidcproxy.core.metrics import Metrics
from oidcproxy.proxy.headers import is_websocket_upgrade
from oidcproxy.proxy.routes import RouteTable
from oidcproxy.proxy.upstream import UpstreamClient, UpstreamProxy
from oidcproxy.proxy.websocket import MAX_HEAD, SocketRegistry, parse_response_head
from oidcproxy.proxy.websocket.head import ChunkedBody
from oidcproxy.service import body_limit_for
from oidcproxy.web.server import ProxySite

from .fakes import (
    APP,
    SECRET,
    GuardStandIn,
    HangingAgent,
    ProxyStack,
    RecordingUpstream,
    fake_idp,
    make_config,
)
from .test_upstream import ProxyHarness, _real_request, route

SWITCH = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
          b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nKeep-Alive: timeout=5\r\n\r\n")
HOUR = 3600.0


class FakeEndpoint:
    """
    The upstream side: each connect hands the protocol a string transport
    (or fails with C{error}, or never connects when C{hang}).
    """

    def __init__(self) -> None:
        self.connections: List[Tuple[Any, StringTransport]] = []
        self.routes: List[Any] = []
        self.error: Optional[BaseException] = None
        self.hang = False
        self.pending: List[Deferred] = []

    def __call__(self, route: Any) -> FakeEndpoint:
        self.routes.append(route)
        return self

    def connect(self, factory: Any) -> Deferred:
        if self.error is not None:
            return fail(self.error)
        if self.hang:
            d: Deferred = Deferred()
            self.pending.append(d)
            return d
        protocol = factory.buildProtocol(IPv4Address("TCP", "10.0.0.9", 80))
        transport = StringTransport(lenient=True)
        protocol.makeConnection(transport)
        self.connections.append((protocol, transport))
        return succeed(protocol)

    @property
    def protocol(self) -> Any:
        return self.connections[-1][0]

    @property
    def transport(self) -> StringTransport:
        return self.connections[-1][1]


class Client:
    """One client connection to the proxy's site."""

    def __init__(self, site: ProxySite) -> None:
        self.channel = site.buildProtocol(IPv4Address("TCP", "192.0.2.7", 5555))
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 5555),
                                         lenient=True)
        self.channel.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.channel.dataReceived(data)

    def received(self) -> bytes:
        return self.transport.value()

    def status(self) -> int:
        return int(self.received().split(b" ", 2)[1])

    def lose(self) -> None:
        self.channel.connectionLost(Failure(ConnectionDone()))


def upgrade_request(path: str = "/ws", cookie: Optional[bytes] = None,
                    extra: Tuple[bytes, ...] = ()) -> bytes:
    lines = [f"GET {path} HTTP/1.1".encode(), b"Host: app.test", b"Connection: keep-alive, Upgrade",
             b"Upgrade: websocket", b"Sec-WebSocket-Version: 13",
             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", *extra]
    if cookie is not None:
        lines.append(b"Cookie: " + cookie)
    return b"\r\n".join(lines) + b"\r\n\r\n"


class WSHarness:
    """The guard and the upstream proxy behind a L{ProxySite}, with a fake upstream endpoint."""

    def __init__(self, case: SynchronousTestCase, limit: int = 1000,
                 lifetime: float = 8 * HOUR, memory_store: bool = False, **config: Any) -> None:
        self.endpoint = FakeEndpoint()
        self.metrics = Metrics()
        self.sockets = SocketRegistry(limit, lifetime, self.metrics)
        self.agent = HangingAgent()
        self.h = ProxyStack(case, make_config(**config), idp=fake_idp, agent=self.agent,
                            metrics=self.metrics, memory_store=memory_store,
                            proxy_kwargs={"sockets": self.sockets, "endpoints": self.endpoint},
                            body_limit=10_000, access_log=True)
        self.clock = self.h.clock
        self.site = self.h.site
        self.events: List[Dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        case.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def login(self, **claims: Any) -> Any:
        return self.h.logged_in(claims={"preferred_username": "alice", "sid": "idp-1", **claims})

    def client(self) -> Client:
        return Client(self.site)

    def upgrade(self, browser: Any = None, path: str = "/ws",
                extra: Tuple[bytes, ...] = ()) -> Client:
        client = self.client()
        cookie = browser.cookie_header() if browser is not None else None
        client.send(upgrade_request(path, cookie, extra))
        return client

    def open_socket(self, browser: Any = None) -> Client:
        """An upgraded, spliced connection (the upstream has said 101)."""
        client = self.upgrade(browser if browser is not None else self.login())
        self.endpoint.protocol.dataReceived(SWITCH)
        return client

    def access(self) -> List[Dict[str, Any]]:
        return [e for e in self.events if e.get("log_namespace") == "oidcproxy.access"]

    def sample(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


def head_lines(data: bytes) -> List[bytes]:
    return data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")


def header(data: bytes, name: bytes) -> List[bytes]:
    return [line.split(b":", 1)[1].strip() for line in head_lines(data)[1:]
            if line.split(b":", 1)[0].lower() == name.lower()]


class HandshakeTests(SynchronousTestCase):
    def test_head_written_upstream(self):
        """The upstream gets the request head: the path, its own Host, the upgrade
        headers kept, the identity and X-Forwarded-* headers set, no proxy cookie."""
        w = WSHarness(self)
        w.upgrade(w.login())
        sent = w.endpoint.transport.value()
        self.assertEqual(head_lines(sent)[0], b"GET /ws HTTP/1.1")
        self.assertEqual(header(sent, b"host"), [b"up.test"])
        self.assertEqual(header(sent, b"upgrade"), [b"websocket"])
        self.assertEqual(header(sent, b"connection"), [b"Upgrade"])
        self.assertEqual(header(sent, b"sec-websocket-key"), [b"dGhlIHNhbXBsZSBub25jZQ=="])
        self.assertEqual(header(sent, b"sec-websocket-version"), [b"13"])
        self.assertEqual(header(sent, b"x-forwarded-user"), [b"alice"])
        self.assertEqual(header(sent, b"x-forwarded-for"), [b"192.0.2.7"])
        self.assertEqual(header(sent, b"cookie"), [])
        self.assertTrue(sent.endswith(b"\r\n\r\n"))

    def test_spoofed_identity_header_replaced(self):
        """A client's own X-Forwarded-User (any spelling) never reaches the upstream."""
        w = WSHarness(self)
        w.upgrade(w.login(), extra=(b"X-Forwarded-User: root", b"X_Forwarded_User: root"))
        sent = w.endpoint.transport.value()
        self.assertEqual(header(sent, b"x-forwarded-user"), [b"alice"])
        self.assertNotIn(b"root", sent)

    def test_unauthenticated_upgrade_401(self):
        """An upgrade without a session gets 401, never a login redirect, even with
        navigation-looking headers; nothing is sent upstream."""
        w = WSHarness(self)
        client = w.upgrade(extra=(b"Accept: text/html", b"Sec-Fetch-Mode: navigate"))
        self.assertEqual(client.status(), 401)
        self.assertEqual(header(client.received(), b"location"), [])
        self.assertEqual(w.endpoint.routes, [])

    def test_claim_rule_403(self):
        """A route's claim rule applies to upgrades: a user it denies gets 403."""
        w = WSHarness(self, routes=[{"path": "/", "upstream": "http://up.test",
                                     "rule": "Contains(`groups`, `admins`)"}])
        client = w.upgrade(w.login(groups=["staff"]))
        self.assertEqual(client.status(), 403)
        self.assertEqual(w.endpoint.routes, [])

    def test_101_relayed_and_spliced(self):
        """The upstream's 101 goes to the client (its hop-by-hop headers dropped, the
        upgrade kept); then bytes pass both ways unchanged, text and binary frames alike."""
        w = WSHarness(self)
        client = w.open_socket()
        head = client.received()
        self.assertEqual(head_lines(head)[0], b"HTTP/1.1 101 Switching Protocols")
        self.assertEqual(header(head, b"sec-websocket-accept"), [b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="])
        self.assertEqual(header(head, b"upgrade"), [b"websocket"])
        self.assertEqual(header(head, b"connection"), [b"Upgrade"])
        self.assertEqual(header(head, b"keep-alive"), [])
        self.assertEqual(header(head, b"transfer-encoding"), [])
        client.transport.clear()
        w.endpoint.transport.clear()
        client.send(b"\x81\x85abcd\x00\x01\x02\x03\x04")
        self.assertEqual(w.endpoint.transport.value(), b"\x81\x85abcd\x00\x01\x02\x03\x04")
        w.endpoint.protocol.dataReceived(b"\x82\x03\x00\xff\x10")
        self.assertEqual(client.received(), b"\x82\x03\x00\xff\x10")
        self.assertEqual(w.sample("oidcproxy_websockets_open"), 1.0)
        self.assertEqual(w.sample("oidcproxy_websocket_upgrades_total", result="upgraded"), 1.0)
        self.assertEqual(w.sample("oidcproxy_websocket_bytes_total", direction="to_upstream"), 11.0)
        self.assertEqual(w.sample("oidcproxy_websocket_bytes_total", direction="to_client"), 5.0)

    def test_bytes_after_101_in_same_read(self):
        """Frames the upstream sends right behind its 101 head are relayed too."""
        w = WSHarness(self)
        client = w.upgrade(w.login())
        w.endpoint.protocol.dataReceived(SWITCH + b"\x81\x02hi")
        self.assertTrue(client.received().endswith(b"\r\n\r\n\x81\x02hi"))

    def test_non_101_relayed_as_response(self):
        """An upstream that answers the upgrade with something else: that answer,
        as a normal response, and no socket."""
        w = WSHarness(self)
        client = w.upgrade(w.login())
        w.endpoint.protocol.dataReceived(
            b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nnope!")
        data = client.received()
        self.assertEqual(head_lines(data)[0], b"HTTP/1.1 403 Forbidden")
        self.assertEqual(header(data, b"content-length"), [b"5"])
        self.assertTrue(data.endswith(b"\r\n\r\nnope!"))
        self.assertTrue(w.endpoint.transport.disconnecting)
        self.assertEqual(len(w.sockets), 0)
        self.assertEqual(w.sample("oidcproxy_websocket_upgrades_total", result="refused"), 1.0)

    def test_non_101_chunked(self):
        """A chunked non-101 answer is decoded and relayed whole."""
        w = WSHarness(self)
        client = w.upgrade(w.login())
        w.endpoint.protocol.dataReceived(
            b"HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        w.endpoint.protocol.dataReceived(b"2;x=y\r\nde\r\n0\r\n\r\n")
        data = client.received()
        self.assertEqual(client.status(), 400)
        self.assertIn(b"3\r\nabc\r\n", data)
        self.assertIn(b"2\r\nde\r\n", data)
        self.assertTrue(data.endswith(b"0\r\n\r\n"))

    def test_informational_answer_skipped(self):
        """A 100 Continue before the 101 is not the answer."""
        w = WSHarness(self)
        client = w.upgrade(w.login())
        w.endpoint.protocol.dataReceived(b"HTTP/1.1 100 Continue\r\n\r\n" + SWITCH)
        self.assertEqual(client.status(), 101)


class FailureTests(SynchronousTestCase):
    def test_refused_502(self):
        """An upstream refusing the connection: 502, nothing open."""
        w = WSHarness(self)
        w.endpoint.error = ConnectionRefusedError()
        client = w.upgrade(w.login())
        self.assertEqual(client.status(), 502)
        self.assertEqual(len(w.sockets), 0)
        self.assertEqual(w.sample("oidcproxy_websocket_upgrades_total",
                                  result="upstream_failed"), 1.0)

    def test_reset_before_101_502(self):
        """An upstream closing or resetting before its answer head: 502."""
        w = WSHarness(self)
        client = w.upgrade(w.login())
        w.endpoint.protocol.dataReceived(b"HTTP/1.1 101 Swi")
        w.endpoint.protocol.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(client.status(), 502)
        self.assertEqual(len(w.sockets), 0)

    def test_malformed_head_502(self):
        """A malformed answer head: 502, the upstream connection dropped."""
        for head in (b"HTTP/1.1 1O1 Switching\r\n\r\n", b"ICY 200 OK\r\n\r\n",
                     b"HTTP/1.1 101 OK\r\nUpgrade websocket\r\n\r\n",
                     b"HTTP/1.1 101 OK\r\nUpgrade: websocket\r\n folded\r\n\r\n",
                     b"HTTP/1.1 101 OK\r\nConnection: Upgrade\r\n\r\n"):
            w = WSHarness(self)
            client = w.upgrade(w.login())
            w.endpoint.protocol.dataReceived(head)
            self.assertEqual(client.status(), 502, head)
            self.assertTrue(w.endpoint.transport.disconnecting)

    def test_oversized_head_502(self):
        """An answer head over the size bound: 502."""
        w = WSHarness(self)
        client = w.upgrade(w.login())
        w.endpoint.protocol.dataReceived(b"HTTP/1.1 101 OK\r\nX-Big: " + b"a" * MAX_HEAD)
        self.assertEqual(client.status(), 502)

    def test_no_answer_504(self):
        """No answer head within the route's timeout: 504."""
        w = WSHarness(self)
        client = w.upgrade(w.login())
        w.clock.advance(59)
        self.assertEqual(client.received(), b"")
        w.clock.advance(1)
        self.assertEqual(client.status(), 504)

    def test_over_cap_503(self):
        """Past max_websockets (those still in their handshake count), 503."""
        w = WSHarness(self, limit=1)
        browser = w.login()
        w.upgrade(browser)
        client = w.upgrade(browser)
        self.assertEqual(client.status(), 503)
        self.assertEqual(header(client.received(), b"retry-after"), [b"5"])
        self.assertEqual(len(w.endpoint.connections), 1)
        self.assertEqual(w.sample("oidcproxy_websocket_upgrades_total", result="over_capacity"), 1.0)

    def test_client_gone_during_handshake(self):
        """A client that leaves before the 101 takes the upstream connection with it."""
        w = WSHarness(self)
        client = w.upgrade(w.login())
        client.lose()
        self.assertTrue(w.endpoint.transport.disconnecting)
        self.assertEqual(len(w.sockets), 0)

    def test_client_gone_while_connecting(self):
        """A client that leaves while the upstream connection is being made cancels it."""
        w = WSHarness(self)
        w.endpoint.hang = True
        client = w.upgrade(w.login())
        client.lose()
        self.assertTrue(w.endpoint.pending[0].called)


class SpliceTests(SynchronousTestCase):
    def test_back_pressure_both_ways(self):
        """Each side is the producer of the other side's transport: a full buffer on
        one side pauses reading on the other, and resumes it."""
        w = WSHarness(self)
        client = w.open_socket()
        upstream = w.endpoint.transport
        self.assertIsNotNone(upstream.producer)
        self.assertIsNotNone(client.transport.producer)
        self.assertTrue(upstream.streaming and client.transport.streaming)
        upstream.producer.pauseProducing()
        self.assertEqual(client.transport.producerState, "paused")
        upstream.producer.resumeProducing()
        self.assertEqual(client.transport.producerState, "producing")
        client.transport.producer.pauseProducing()
        self.assertEqual(upstream.producerState, "paused")
        client.transport.producer.resumeProducing()
        self.assertEqual(upstream.producerState, "producing")

    def test_upstream_close_closes_client(self):
        """The upstream closing after the 101 closes the client's connection cleanly;
        its end is logged once with status 101, and the socket leaves the count."""
        w = WSHarness(self)
        client = w.open_socket()
        w.endpoint.protocol.dataReceived(b"\x88\x02\x03\xe8")
        w.endpoint.protocol.connectionLost(Failure(ConnectionLost()))
        self.assertTrue(client.transport.disconnecting)
        self.assertFalse(getattr(client.transport, "disconnected", False))
        self.assertTrue(client.received().endswith(b"\x88\x02\x03\xe8"))
        self.assertEqual(w.sample("oidcproxy_websockets_open"), 0.0)
        client.lose()
        [event] = [e for e in w.access() if e["status"] == 101]
        self.assertEqual(event["bytes"], 4)
        counted = w.h.guard.metrics.registry.get_sample_value(  # type: ignore[attr-defined]
            "oidcproxy_requests_total", {"route": "routes[0]", "status": "101"})
        self.assertEqual(counted, 1.0)

    def test_client_close_closes_upstream(self):
        """The client vanishing closes the upstream connection at once."""
        w = WSHarness(self)
        client = w.open_socket()
        w.clock.advance(30)
        client.lose()
        self.assertTrue(w.endpoint.transport.disconnecting)
        self.assertEqual(len(w.sockets), 0)
        [event] = [e for e in w.access() if e["status"] == 101]
        self.assertEqual(event["duration_ms"], 30000.0)

    def test_close_grace_aborts(self):
        """A side that does not finish closing within the grace period is aborted."""
        w = WSHarness(self)
        client = w.open_socket()
        client.lose()
        self.assertFalse(getattr(w.endpoint.transport, "disconnected", False))
        w.clock.advance(10)
        self.assertTrue(w.endpoint.transport.disconnected)

    def test_max_lifetime(self):
        """websocket_max_lifetime closes the socket when reached."""
        w = WSHarness(self, upstream={"websocket_max_lifetime": "30m"})
        client = w.open_socket()
        w.clock.advance(30 * 60 - 1)
        self.assertFalse(client.transport.disconnecting)
        w.clock.advance(1)
        self.assertTrue(client.transport.disconnecting)
        self.assertTrue(w.endpoint.transport.disconnecting)

    def test_default_lifetime_is_session_lifetime(self):
        """Without websocket_max_lifetime, the registry's default (session.lifetime) applies."""
        w = WSHarness(self, lifetime=HOUR)
        client = w.open_socket()
        w.clock.advance(HOUR - 1)
        self.assertFalse(client.transport.disconnecting)
        w.clock.advance(1)
        self.assertTrue(client.transport.disconnecting)

    def test_session_expiry_does_not_cut(self):
        """The session's idle timeout passing does not close an open socket (and no
        lifetime limit with websocket_max_lifetime = 0s)."""
        w = WSHarness(self, session={"idle_timeout": "5m"},
                      upstream={"websocket_max_lifetime": "0s"})
        client = w.open_socket()
        w.clock.advance(10 * HOUR)
        self.assertFalse(client.transport.disconnecting)
        self.assertEqual(len(w.sockets), 1)


class LogoutTests(SynchronousTestCase):
    def test_logout_closes_sockets_of_session(self):
        """Logout closes the sockets opened with that session, not another user's."""
        w = WSHarness(self)
        alice = w.login()
        mine = w.open_socket(alice)
        other = w.open_socket(w.h.logged_in(sub="bob", claims={"preferred_username": "bob"}))
        page = alice.request(b"POST", "/oidc/logout", headers={b"origin": [APP.encode()]})
        self.assertEqual(page.code, 303)
        self.assertTrue(mine.transport.disconnecting)
        self.assertFalse(other.transport.disconnecting)
        self.assertEqual(len(w.sockets), 1)

    def test_backchannel_logout_closes_sockets(self):
        """Back-channel logout by sid closes the sockets of that IdP session."""
        from urllib.parse import urlencode

        from .fakes import CLIENT_ID
        from .idp import ISSUER

        w = WSHarness(self, memory_store=True)
        client = w.open_socket()
        other = w.open_socket(w.login(sid="idp-2"))
        now = int(w.clock.seconds())
        token = w.h.idp.id_token({
            "iss": ISSUER, "aud": CLIENT_ID, "iat": now, "jti": "j1", "sid": "idp-1",
            "sub": "user-1",
            "events": {"http://schemas.openid.net/event/backchannel-logout": {}}})
        page = w.h.browser().request(
            b"POST", "/oidc/backchannel-logout",
            headers={b"content-type": [b"application/x-www-form-urlencoded"]},
            body=urlencode({"logout_token": token}).encode())
        self.assertEqual(page.code, 200)
        self.assertTrue(client.transport.disconnecting)
        self.assertFalse(other.transport.disconnecting)


class DisabledTests(SynchronousTestCase):
    def test_websockets_false_plain_request(self):
        """On a route with websockets = false an upgrade goes on as a plain request,
        its Upgrade and Connection headers removed."""
        w = WSHarness(self, upstream={"websockets": False})
        sent = []
        hanging = w.agent.request
        w.agent.request = lambda method, uri, headers=None, body=None: (  # type: ignore[method-assign]
            sent.append(headers), hanging(method, uri, headers, body))[1]
        w.upgrade(w.login())
        self.assertEqual(w.endpoint.routes, [])
        [headers] = sent
        self.assertFalse(headers.hasHeader(b"upgrade"))
        self.assertFalse(headers.hasHeader(b"connection"))
        self.assertEqual(headers.getRawHeaders(b"sec-websocket-key"), [b"dGhlIHNhbXBsZSBub25jZQ=="])


class UnitTests(SynchronousTestCase):
    def test_detection(self):
        """Only an HTTP/1.1 GET on an HTTP/1.1 channel with Connection: upgrade and
        Upgrade: websocket is one (any case, in token lists)."""
        def request(method=b"GET", proto=b"HTTP/1.1", connection=b"keep-alive, Upgrade",
                    upgrade=b"WebSocket", channel=None):
            if channel is None:
                channel = HTTPChannel()
                channel.site = Site(Resource())
                channel.makeConnection(StringTransport())
            r = Request(channel, False)
            r.method, r.clientproto = method, proto
            r.requestHeaders.setRawHeaders(b"connection", [connection])
            r.requestHeaders.setRawHeaders(b"upgrade", [upgrade])
            return r

        self.assertTrue(is_websocket_upgrade(request()))
        self.assertFalse(is_websocket_upgrade(request(method=b"POST")))
        self.assertFalse(is_websocket_upgrade(request(proto=b"HTTP/1.0")))
        self.assertFalse(is_websocket_upgrade(request(connection=b"keep-alive")))
        self.assertFalse(is_websocket_upgrade(request(upgrade=b"h2c")))
        self.assertFalse(is_websocket_upgrade(request(channel=DummyChannel())))

    def test_parse_head(self):
        """Status, reason and headers in order, values trimmed."""
        self.assertEqual(
            parse_response_head(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade:  websocket \r\n"
                                b"X-A: 1\r\nX-A: 2"),
            (101, b"Switching Protocols", [(b"Upgrade", b"websocket"), (b"X-A", b"1"),
                                           (b"X-A", b"2")]))
        self.assertRaises(ValueError, parse_response_head, b"HTTP/1.1 101 OK\r\nX: a\x00b")

    def test_parse_head_no_line_feed_in_names(self):
        """
        A bare LF at the end of a header name or of the status line is
        refused: it would be written into the client's answer head.
        """
        for head in (b"HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nX-Evil\n: v",
                     b"HTTP/1.1 101 OK\n\r\nUpgrade: websocket"):
            self.assertRaises(ValueError, parse_response_head, head)

    def test_chunked_decoder(self):
        """Chunks split anywhere decode to the body; malformed sizes are errors."""
        body = b"4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\nTrailer: x\r\n\r\n"
        decoder = ChunkedBody()
        out: List[bytes] = []
        done = False
        for i in range(len(body)):
            pieces, done = decoder.feed(body[i:i + 1])
            out.extend(pieces)
        self.assertEqual((b"".join(out), done), (b"Wikipedia", True))
        self.assertRaises(ValueError, ChunkedBody().feed, b"zz\r\n")


class StreamTests(SynchronousTestCase):
    """Server-sent events and long polls through the normal (Agent) path."""

    def stream(self, **settings: Any) -> Tuple[Any, Any, Any, Any]:
        def handler(request):
            request.setHeader(b"content-type", b"text/event-stream")
            request.write(b"data: 1\n\n")
            handler.request = request
            return NOT_DONE_YET

        upstream = RecordingUpstream(handler)
        agent = RequestTraversalAgent(upstream)
        h = ProxyHarness(routes=[route(settings=UpstreamSettings(**settings))],
                         upstream=upstream, agent=agent)
        channel, request = _real_request(h.proxy)
        agent.flush()
        return h, channel, request, handler

    def test_stream_outlives_timeout(self):
        """Once the headers are in, `timeout` no longer applies: an event stream goes on
        past it, every event reaching the client as it comes."""
        h, channel, request, handler = self.stream(timeout=5.0, stream_idle_timeout=30.0)
        for i in range(2, 6):
            h.clock.advance(20)
            handler.request.write(b"data: %d\n\n" % i)
            h.agent.flush()
        written = channel.transport.written.getvalue()
        self.assertIn(b"data: 5\n\n", written)
        self.assertFalse(request.finished)
        self.assertFalse(channel.transport.disconnected)

    def test_idle_stream_cut(self):
        """stream_idle_timeout without a byte cuts the response (the connection is
        aborted, not ended as if the body were whole)."""
        h, channel, request, handler = self.stream(stream_idle_timeout=30.0)
        h.clock.advance(29)
        self.assertFalse(channel.transport.disconnected)
        h.clock.advance(1)
        self.assertTrue(channel.transport.disconnected)
        self.assertFalse(request.finished)

    def test_idle_timer_waits_while_client_paused(self):
        """While the client does not read (paused), the idle timer does not run."""
        h, channel, request, handler = self.stream(stream_idle_timeout=30.0)
        request.producer.pauseProducing()
        h.clock.advance(100)
        self.assertFalse(channel.transport.disconnected)
        request.producer.resumeProducing()
        h.clock.advance(30)
        self.assertTrue(channel.transport.disconnected)

    def test_idle_off(self):
        """stream_idle_timeout = 0 turns the cut off."""
        h, channel, request, handler = self.stream(stream_idle_timeout=0.0)
        h.clock.advance(10 * HOUR)
        self.assertFalse(channel.transport.disconnected)


class ConfigAndWiringTests(SynchronousTestCase):
    def test_config_keys(self):
        """The new keys: defaults, [upstream] defaults inherited by routes, overrides."""
        default = make_config()
        self.assertEqual(default.max_websockets, 1000)
        s = default.routes[0].settings
        self.assertEqual((s.websockets, s.websocket_max_lifetime, s.stream_idle_timeout),
                         (True, None, 300.0))
        c = make_config(max_websockets=5,
                        upstream={"websockets": False, "stream_idle_timeout": "0s"},
                        routes=[{"path": "/", "upstream": "http://up.test",
                                 "websockets": True, "websocket_max_lifetime": "2h"},
                                {"path": "/b", "upstream": "http://up.test"}])
        first, second = c.routes
        self.assertEqual(c.max_websockets, 5)
        self.assertEqual((first.settings.websockets, first.settings.websocket_max_lifetime,
                          first.settings.stream_idle_timeout), (True, 7200.0, 0.0))
        self.assertEqual((second.settings.websockets, second.settings.websocket_max_lifetime),
                         (False, None))

    def test_config_errors(self):
        """Bad values name their key."""
        from oidcproxy.config import ConfigError

        with self.assertRaises(ConfigError) as caught:
            make_config(max_websockets=0, upstream={"websocket_max_lifetime": "soon"})
        text = str(caught.exception)
        self.assertIn("max_websockets", text)
        self.assertIn("upstream.websocket_max_lifetime", text)

    def test_site_and_reload_share_registry(self):
        """The site's registry has max_websockets and session.lifetime; a reload's new
        proxy keeps the same registry (open sockets stay counted and closable) with the
        new cap."""
        import os
        import tempfile

        from twisted.internet.testing import MemoryReactorClock

        from oidcproxy.config import load_config
        from oidcproxy.service import ProxyService

        fd, path = tempfile.mkstemp(suffix=".toml")
        os.close(fd)
        self.addCleanup(os.unlink, path)
        base = ('[oidc]\nissuer = "https://idp.example"\nclient_id = "C"\nclient_secret = "s"\n'
                '[session]\nsecrets = ["' + SECRET + '"]\nlifetime = "2h"\n'
                '[[routes]]\npath = "/"\nupstream = "http://app.invalid"\nauth = "none"\n')
        with open(path, "w", encoding="utf-8") as f:
            f.write("max_websockets = 7\n" + base)
        service = ProxyService(load_config(path), MemoryReactorClock(), ["tcp:8080"],
                               config_path=path)
        sockets = service.site.proxy.sockets  # type: ignore[attr-defined]
        self.assertEqual((sockets.limit, sockets.default_max_lifetime), (7, 7200.0))
        with open(path, "w", encoding="utf-8") as f:
            f.write("max_websockets = 9\n" + base)
        self.assertTrue(service.reload())
        self.assertIs(service.site.proxy.sockets, sockets)  # type: ignore[attr-defined]
        self.assertEqual(sockets.limit, 9)


def raw_upgrade(target: str, host: bytes, cookie: Optional[bytes] = None,
                extra: Tuple[bytes, ...] = ()) -> bytes:
    """L{upgrade_request} with another Host (and target)."""
    return upgrade_request(target, cookie, extra).replace(b"Host: app.test", b"Host: " + host, 1)


class AbsoluteFormTests(SynchronousTestCase):
    def test_upgrade_follows_the_target_authority(self):
        """
        An upgrade with an absolute-form target is routed by the target's
        host, and that host (not the client's Host) is the upstream's Host
        with pass_host_header, X-Forwarded-Host and Forwarded host=.
        """
        w = WSHarness(self, routes=[
            {"host": "admin.example.test", "path": "/", "upstream": "http://up.test"},
            {"path": "/", "upstream": "http://up.test", "auth": "none", "pass_host_header": True}])
        w.client().send(raw_upgrade("http://www.example.test/ws", b"admin.example.test"))
        sent = w.endpoint.transport.value()
        self.assertEqual(head_lines(sent)[0], b"GET /ws HTTP/1.1")
        self.assertEqual(header(sent, b"host"), [b"www.example.test"])
        self.assertEqual(header(sent, b"x-forwarded-host"), [b"www.example.test"])
        self.assertEqual(header(sent, b"forwarded"),
                         [b'for=192.0.2.7;proto=http;host="www.example.test"'])
        self.assertNotIn(b"admin.example.test", sent)

    def test_upgrade_to_the_protected_authority(self):
        """The absolute-form target naming the session host: 401, whatever Host says."""
        w = WSHarness(self, routes=[
            {"host": "admin.example.test", "path": "/", "upstream": "http://up.test"},
            {"path": "/", "upstream": "http://up.test", "auth": "none"}])
        client = w.client()
        client.send(raw_upgrade("http://admin.example.test/ws", b"www.example.test"))
        self.assertEqual(client.status(), 401)
        self.assertEqual(w.endpoint.routes, [])


class ConnectionHeaderTests(SynchronousTestCase):
    def test_identity_named_in_connection_still_sent(self):
        """
        Connection: Upgrade, X-Forwarded-User: the upgrade still happens and
        the upstream still gets the proxy's identity header; a header of the
        client's that Connection names does not go upstream.
        """
        w = WSHarness(self)
        client = w.upgrade(w.login(), extra=(
            b"Connection: X-Forwarded-User, X-Forwarded-For, x-private", b"X-Private: 1"))
        sent = w.endpoint.transport.value()
        self.assertEqual(header(sent, b"x-forwarded-user"), [b"alice"])
        self.assertEqual(header(sent, b"x-forwarded-for"), [b"192.0.2.7"])
        self.assertEqual(header(sent, b"x-private"), [])
        self.assertEqual(header(sent, b"connection"), [b"Upgrade"])
        w.endpoint.protocol.dataReceived(SWITCH)
        self.assertEqual(client.status(), 101)


OWNED_SET_COOKIES = (b"__Host-oidcproxy=forged; Path=/; Secure", b"OIDCPROXY_1=x",
                     b"__host-oidcproxy_state_abc=x")


class OwnCookieTests(SynchronousTestCase):
    def test_101_cannot_set_the_proxys_cookies(self):
        """
        An upstream's 101 carrying Set-Cookie for the session cookie (any
        case, a chunk, a state cookie) reaches the browser without them;
        its other cookies pass.
        """
        w = WSHarness(self)
        client = w.upgrade(w.login())
        w.endpoint.protocol.dataReceived(SWITCH.replace(b"\r\n\r\n", b"".join(
            b"\r\nSet-Cookie: " + c for c in (*OWNED_SET_COOKIES, b"app=1; Path=/")) + b"\r\n\r\n"))
        head = client.received()
        self.assertEqual(client.status(), 101)
        self.assertEqual(header(head, b"set-cookie"), [b"app=1; Path=/"])
        logged = [e for e in w.events if "own cookie" in e.get("log_format", "")]
        self.assertEqual(len(logged), 1)

    def test_non_101_cannot_set_the_proxys_cookies(self):
        """The same for an upstream that answers the upgrade with something else."""
        w = WSHarness(self)
        client = w.upgrade(w.login())
        w.endpoint.protocol.dataReceived(
            b"HTTP/1.1 403 Forbidden\r\nSet-Cookie: __Host-oidcproxy=forged\r\n"
            b"Set-Cookie: app=1\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(client.status(), 403)
        self.assertEqual(header(client.received(), b"set-cookie"), [b"app=1"])


class ContextTests(SynchronousTestCase):
    """The upgrade path reads what the guard decided from the request's context."""

    def harness(self, fill: Any) -> Tuple[FakeEndpoint, SocketRegistry, ProxySite]:
        clock = Clock()
        endpoint = FakeEndpoint()
        sockets = SocketRegistry(10, HOUR)
        routes = RouteTable([route(upstream="http://up.test")])
        proxy = UpstreamProxy(routes, clock, sockets=sockets, endpoints=endpoint,
                              client_factory=lambda r: UpstreamClient(HangingAgent(), 10))
        site = ProxySite(GuardStandIn(proxy, fill), clock=clock,
                         body_limit=body_limit_for(routes, 10_000), reactor=clock)
        return endpoint, sockets, site

    def test_socket_registered_under_the_contexts_session(self):
        """The socket is kept under the context's session id, IdP session and user."""
        def fill(found: RequestContext) -> None:
            found.session = SimpleNamespace(id="session-1", sid="idp-1")
            found.identity = SimpleNamespace(sub="alice")

        endpoint, sockets, site = self.harness(fill)
        clients = []
        for _ in range(3):
            clients.append(Client(site))
            clients[-1].send(upgrade_request())
            endpoint.protocol.dataReceived(SWITCH)
        self.assertEqual([c.status() for c in clients], [101, 101, 101])
        self.assertEqual(sockets.close(session_id="session-2", sid="idp-2", sub="bob"), 0)
        self.assertEqual(sockets.close(session_id="session-1"), 3)
        self.assertTrue(all(c.transport.disconnecting for c in clients))

    def test_socket_registered_under_the_contexts_provider(self):
        """
        The socket of a named provider's user is kept under that provider: a
        back-channel logout of another provider's user of the same sub or
        sid leaves it open.
        """
        def fill(found: RequestContext) -> None:
            found.session = SimpleNamespace(id="session-1", sid="idp-1")
            found.identity = SimpleNamespace(sub="alice")
            found.provider = "corp"

        endpoint, sockets, site = self.harness(fill)
        client = Client(site)
        client.send(upgrade_request())
        endpoint.protocol.dataReceived(SWITCH)
        self.assertEqual(client.status(), 101)
        self.assertEqual(sockets.close(sid="idp-1", sub="alice", provider=""), 0)
        self.assertFalse(client.transport.disconnecting)
        self.assertEqual(sockets.close(sub="alice", provider="corp"), 1)
        self.assertTrue(client.transport.disconnecting)

    def test_101_carries_the_contexts_answer(self):
        """
        The 101 drops the upstream's Set-Cookie values the context refuses
        and carries the context's own cookies and headers.
        """
        def fill(found: RequestContext) -> None:
            found.keep_cookie = lambda value: not value.startswith(b"oidcproxy=")
            found.cookies.append(b"oidcproxy=refreshed; Path=/")
            found.headers.append((b"X-Guard", b"1"))

        endpoint, _, site = self.harness(fill)
        client = Client(site)
        client.send(upgrade_request())
        endpoint.protocol.dataReceived(SWITCH.replace(
            b"\r\n\r\n", b"\r\nSet-Cookie: oidcproxy=forged\r\nSet-Cookie: app=1\r\n\r\n"))
        head = client.received()
        self.assertEqual(client.status(), 101)
        self.assertEqual(header(head, b"set-cookie"), [b"app=1", b"oidcproxy=refreshed; Path=/"])
        self.assertEqual(header(head, b"x-guard"), [b"1"])

    def test_non_101_drops_refused_cookies(self):
        """
        An answer other than 101 drops the Set-Cookie values the context
        refuses, even on a site whose requests do not apply the context.
        """
        def fill(found: RequestContext) -> None:
            found.keep_cookie = lambda value: not value.startswith(b"oidcproxy=")

        endpoint, _, site = self.harness(fill)
        client = Client(site)
        client.send(upgrade_request())
        endpoint.protocol.dataReceived(
            b"HTTP/1.1 403 Forbidden\r\nSet-Cookie: oidcproxy=forged\r\n"
            b"Set-Cookie: app=1\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(client.status(), 403)
        self.assertEqual(header(client.received(), b"set-cookie"), [b"app=1"])


def bearer_token(w: WSHarness) -> bytes:
    from .fakes import CLIENT_ID
    from .idp import ISSUER

    now = int(w.clock.seconds())
    # An access token shows it is one (scope): under the default audience a
    # JWT without such a mark is taken for an ID token and refused.
    return w.h.idp.id_token({"iss": ISSUER, "aud": CLIENT_ID, "sub": "svc", "iat": now,
                             "exp": now + 300, "scope": "openid"}).encode("ascii")


class OriginTests(SynchronousTestCase):
    """
    Cross-site WebSocket hijacking: a cookie-authenticated upgrade must come
    from public_url's origin or one of websocket_origins.
    """

    def refused(self, w: WSHarness, client: Client) -> None:
        self.assertEqual(client.status(), 403)
        body = client.received().split(b"\r\n\r\n", 1)[1]
        self.assertIn(b'"websocket_origin_refused"', body)
        self.assertEqual(w.endpoint.routes, [])
        self.assertEqual(len(w.sockets), 0)

    def test_own_origin_passes(self):
        """public_url's origin, as browsers send it (and in other cases, with the default port)."""
        for origin in (b"https://app.test", b"HTTPS://App.Test:443"):
            w = WSHarness(self)
            client = w.upgrade(w.login(), extra=(b"Origin: " + origin,))
            w.endpoint.protocol.dataReceived(SWITCH)
            self.assertEqual(client.status(), 101, origin)

    def test_foreign_origin_refused(self):
        """
        Another site's page, a look-alike, another scheme or port, C{null},
        a malformed or doubled Origin: 403 JSON, nothing upstream, one log
        line naming the route and the origin, counted as origin_refused.
        """
        for lines in ((b"Origin: https://evil.test",), (b"Origin: https://app.test.evil.test",),
                      (b"Origin: http://app.test",), (b"Origin: https://app.test:8443",),
                      (b"Origin: null",), (b"Origin: https://app.test/x",),
                      (b"Origin: https://app.test", b"Origin: https://evil.test"),
                      (b"Origin: \xffhttps://app.test",)):
            w = WSHarness(self)
            client = w.upgrade(w.login(), extra=lines)
            self.refused(w, client)
            logged = [e for e in w.events if "WebSocket upgrade on" in e.get("log_format", "")]
            self.assertEqual(len(logged), 1, lines)
            self.assertEqual(logged[0]["route"], "routes[0]")
            counted = w.h.guard.metrics.registry.get_sample_value(  # type: ignore[attr-defined]
                "oidcproxy_websocket_upgrades_total", {"result": "origin_refused"})
            self.assertEqual(counted, 1.0)

    def test_missing_origin_passes(self):
        """No Origin (not a browser, which always sends one): the session is enough."""
        w = WSHarness(self)
        client = w.upgrade(w.login())
        w.endpoint.protocol.dataReceived(SWITCH)
        self.assertEqual(client.status(), 101)

    def test_configured_origins(self):
        """
        Top-level websocket_origins are allowed besides public_url's; a
        route's own list replaces them there.
        """
        w = WSHarness(self, websocket_origins=["https://other.test:8443"], routes=[
            {"path": "/r", "upstream": "http://up.test", "websocket_origins": ["https://r.test"]},
            {"path": "/", "upstream": "http://up.test"}])
        browser = w.login()
        for path, origin, allowed in (("/ws", b"https://other.test:8443", True),
                                      ("/ws", b"https://r.test", False),
                                      ("/r/ws", b"https://r.test", True),
                                      ("/r/ws", b"https://app.test", True),
                                      ("/r/ws", b"https://other.test:8443", False)):
            before = len(w.endpoint.routes)
            client = w.upgrade(browser, path=path, extra=(b"Origin: " + origin,))
            if allowed:
                self.assertEqual(len(w.endpoint.routes), before + 1, (path, origin))
            else:
                self.assertEqual(client.status(), 403, (path, origin))
                self.assertEqual(len(w.endpoint.routes), before, (path, origin))

    def test_bearer_and_public_upgrades_not_checked(self):
        """No cookie, no hijacking: bearer-authenticated and public upgrades pass any Origin."""
        w = WSHarness(self, routes=[
            {"path": "/api", "upstream": "http://up.test", "auth": "bearer"},
            {"path": "/open", "upstream": "http://up.test", "auth": "none"},
            {"path": "/", "upstream": "http://up.test"}])
        evil = b"Origin: https://evil.test"
        w.upgrade(path="/api/ws", extra=(evil, b"Authorization: Bearer " + bearer_token(w)))
        w.upgrade(path="/open/ws", extra=(evil,))
        self.assertEqual(len(w.endpoint.routes), 2)

    def test_session_or_optional_with_cookie_checked(self):
        """On optional and session_or_bearer routes a cookie-authenticated upgrade is checked."""
        for auth in ("optional", "session_or_bearer"):
            w = WSHarness(self, routes=[{"path": "/x", "upstream": "http://up.test", "auth": auth},
                                        {"path": "/", "upstream": "http://up.test"}])
            client = w.upgrade(w.login(), path="/x/ws", extra=(b"Origin: https://evil.test",))
            self.refused(w, client)


class OriginConfigTests(SynchronousTestCase):
    def test_keys(self):
        """
        websocket_origins at the top level and on a route, normalised the
        way browsers send Origin (lower case, no default port); a route
        without the key has None (the top level's apply).
        """
        c = make_config(websocket_origins=["HTTPS://Other.Example:443", "http://[::1]:8080"],
                        routes=[{"path": "/r", "upstream": "http://up.test",
                                 "websocket_origins": []},
                                {"path": "/", "upstream": "http://up.test"}])
        self.assertEqual(c.websocket_origins, ("https://other.example", "http://[::1]:8080"))
        self.assertEqual([r.websocket_origins for r in c.routes], [(), None])
        self.assertEqual(make_config().websocket_origins, ())

    def test_errors(self):
        """Anything but an http(s) origin is refused, naming the key and the entry."""
        from oidcproxy.config import ConfigError

        for value in ("https://other.example/", "https://other.example/app", "other.example",
                      "ftp://other.example", "null", "https://u@other.example",
                      "https://other.example:x", "https://other.example?x"):
            with self.assertRaises(ConfigError) as caught:
                make_config(websocket_origins=[value])
            self.assertIn("websocket_origins[0]:", str(caught.exception), value)
            with self.assertRaises(ConfigError) as caught:
                make_config(routes=[{"path": "/", "upstream": "http://up.test",
                                     "websocket_origins": ["https://ok.example", value]}])
            self.assertIn("routes[0].websocket_origins[1]:", str(caught.exception), value)
        with self.assertRaises(ConfigError) as caught:
            make_config(websocket_origins="https://other.example")
        self.assertIn("websocket_origins:", str(caught.exception))
