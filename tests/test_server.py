"""
Tests for L{oidcproxy.web.server}: the early 413 and the access log, driven
through a real HTTP channel on a string transport.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import Logger, LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from oidcproxy.config import ClientLimits, RouteConfig, UpstreamSettings
from oidcproxy.core.context import context
from oidcproxy.core.metrics import Metrics
from oidcproxy.proxy.routes import RouteTable
from oidcproxy.service import body_limit_for
from oidcproxy.web.identity import Identity
from oidcproxy.web.server import ProxySite


class Recorder(Resource):
    isLeaf = True

    def __init__(self, hang=False):
        super().__init__()
        self.bodies = []
        self.requests = []
        self.hang = hang

    def render(self, request):
        self.requests.append(request)
        self.bodies.append(request.content.read())
        ctx = context(request)
        ctx.route = RouteConfig(index=3, path="/", upstream="http://up:1")
        if request.path == b"/who":
            ctx.identity = Identity(sub="alice", claims={})
            ctx.auth = "session"
        if self.hang:
            return NOT_DONE_YET
        return b"ok"


def limits():
    return body_limit_for(
        RouteTable([
            RouteConfig(index=0, path="/", upstream="http://up:1",
                        settings=UpstreamSettings(max_body_size=100)),
            RouteConfig(index=1, path="/big", upstream="http://up:1",
                        settings=UpstreamSettings(max_body_size=1000)),
        ]),
        default=50,
    )


class SiteHarness:
    def __init__(self, case, resource=None, access_log=True, body_limit=None, metrics=None,
                 **site_options):
        self.clock = Clock()
        self.resource = resource or Recorder()
        self.site = ProxySite(self.resource, clock=self.clock,
                              body_limit=body_limit if body_limit is not None else limits(),
                              access_log=access_log, reactor=self.clock, metrics=metrics,
                              **site_options)
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        case.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.channel = self.site.buildProtocol(IPv4Address("TCP", "192.0.2.7", 5555))
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 5555))
        self.channel.makeConnection(self.transport)

    def send(self, data):
        self.channel.dataReceived(data)
        return self.transport.value()

    def access(self):
        return [e for e in self.events if e.get("log_namespace") == "oidcproxy.access"]

    def errors(self):
        """Events logged at error level or above, or with a traceback."""
        return [e for e in self.events
                if e.get("log_failure") is not None or
                e.get("log_level") in (LogLevel.error, LogLevel.critical)]

    def connect(self, address=("192.0.2.7", 5555)):
        """Open another connection to the site; its channel and transport."""
        peer = IPv4Address("TCP", *address)
        channel = self.site.buildProtocol(peer)
        transport = StringTransport(peerAddress=peer)
        channel.makeConnection(transport)
        return channel, transport


def large_limit(host, target):
    """Every body up to 200 MB is accepted early (the route decides later)."""
    return 200_000_000, None, None


def gauge(metrics, name, labels=None):
    """The value of metric C{name} in C{metrics}' registry (0 when absent)."""
    value = metrics.registry.get_sample_value(name, labels or {})
    return 0 if value is None else value


class EarlyBodyLimitTests(SynchronousTestCase):
    def test_content_length_over_limit(self):
        """A Content-Length over the route's limit is refused at once, body unread, connection closed."""
        h = SiteHarness(self)
        out = h.send(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 101\r\n\r\n")
        self.assertTrue(out.startswith(b"HTTP/1.1 413 Content Too Large\r\n"), out)
        self.assertIn(b"Connection: close\r\n", out)
        self.assertTrue(h.transport.disconnecting)
        h.send(b"x" * 101)
        self.assertEqual(h.resource.bodies, [])

    def test_refusal_page_headers(self):
        """The early 413's page carries the pages' headers (CSP, no framing); its JSON none."""
        out = SiteHarness(self).send(
            b"POST /x HTTP/1.1\r\nHost: a\r\nAccept: text/html\r\nContent-Length: 101\r\n\r\n")
        head = out.split(b"\r\n\r\n", 1)[0].lower()
        self.assertIn(b"\r\ncontent-security-policy: default-src 'none'", head)
        self.assertIn(b"\r\nx-frame-options: deny", head)
        out = SiteHarness(self).send(
            b"POST /x HTTP/1.1\r\nHost: a\r\nAccept: application/json\r\n"
            b"Content-Length: 101\r\n\r\n")
        self.assertTrue(out.startswith(b"HTTP/1.1 413 "), out)
        self.assertNotIn(b"content-security-policy", out.lower())

    def test_limit_is_the_routes(self):
        """The early limit is the matched route's: /big takes 1000 bytes, / only 100."""
        h = SiteHarness(self)
        out = h.send(b"POST /big/x HTTP/1.1\r\nHost: a\r\nContent-Length: 500\r\n\r\n" + b"y" * 500)
        self.assertTrue(out.startswith(b"HTTP/1.1 200 "), out)
        self.assertEqual(h.resource.bodies, [b"y" * 500])

    def test_no_100_continue_for_refused_body(self):
        """Expect: 100-continue gets the 413, never a 100 Continue first."""
        h = SiteHarness(self)
        out = h.send(b"POST /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n"
                     b"Content-Length: 5000\r\n\r\n")
        self.assertNotIn(b"100 Continue", out)
        self.assertTrue(out.startswith(b"HTTP/1.1 413 "), out)

    def test_100_continue_for_accepted_body(self):
        """Expect: 100-continue within the limit still gets its 100 Continue."""
        h = SiteHarness(self)
        out = h.send(b"POST /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n"
                     b"Content-Length: 5\r\n\r\n")
        self.assertEqual(out, b"HTTP/1.1 100 Continue\r\n\r\n")

    def test_chunked_running_count(self):
        """A chunked body is refused as soon as its running count passes the limit."""
        h = SiteHarness(self)
        h.send(b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        self.assertEqual(h.transport.value(), b"")
        out = h.send(b"40\r\n" + b"z" * 64 + b"\r\n")
        self.assertEqual(out, b"")
        out = h.send(b"40\r\n" + b"z" * 64 + b"\r\n")
        self.assertTrue(out.startswith(b"HTTP/1.1 413 "), out)
        h.send(b"0\r\n\r\n")
        self.assertEqual(h.resource.bodies, [])

    def test_json_for_api_clients(self):
        """The early 413 is JSON when the client asked for JSON."""
        h = SiteHarness(self)
        out = h.send(b"POST /x HTTP/1.1\r\nHost: a\r\nAccept: application/json\r\n"
                     b"Content-Length: 101\r\n\r\n")
        self.assertIn(b"Content-Type: application/json\r\n", out)
        self.assertIn(b'"error": "body_too_large"', out)

    def test_unknown_route_uses_largest_limit(self):
        """When the route cannot be known yet, the early check uses the largest limit."""
        limit = limits()
        self.assertEqual(limit(b"a", None), (1000, None, None))
        self.assertEqual(limit(b"a", b"/a%2Fb"), (1000, None, None))
        self.assertEqual(limit(b"a", b"/x")[0], 100)
        self.assertEqual(limit(b"a", b"/big")[0], 1000)
        self.assertEqual(limit(b"a", b"/big")[1].index, 1)
        # The match is handed on with its table, host and target, for the guard.
        table, host, target, match = limit(b"a", b"/big/x")[2]
        self.assertEqual((host, target, match.route.index, match.path), (b"a", b"/big/x", 1, "/big/x"))


class HeaderLimitTests(SynchronousTestCase):
    def test_large_cookie_line_accepted(self):
        """The proxy's site takes a Cookie line as long as its configured header limit."""
        h = SiteHarness(self)
        h.site.max_header_size = 40000
        h.channel = h.site.buildProtocol(IPv4Address("TCP", "192.0.2.7", 5556))
        h.transport = StringTransport()
        h.channel.makeConnection(h.transport)
        out = h.send(b"GET / HTTP/1.1\r\nHost: a\r\nCookie: s=" + b"c" * 30000 + b"\r\n\r\n")
        self.assertTrue(out.startswith(b"HTTP/1.1 200 "), out[:100])

    def test_default_limit_refuses(self):
        """With Twisted's 16 KiB limit the same request is refused."""
        h = SiteHarness(self)
        out = h.send(b"GET / HTTP/1.1\r\nHost: a\r\nCookie: s=" + b"c" * 30000 + b"\r\n\r\n")
        self.assertFalse(out.startswith(b"HTTP/1.1 200 "), out[:100])
        self.assertEqual(h.resource.bodies, [])


class AccessLogTests(SynchronousTestCase):
    def test_one_event_per_request(self):
        """Each request logs client, method, path, status, bytes, duration, route, upstream."""
        h = SiteHarness(self)
        h.send(b"GET /some/path?code=SECRET HTTP/1.1\r\nHost: a\r\n"
               b"Authorization: Bearer TOKEN\r\nCookie: s=COOKIE\r\n\r\n")
        events = h.access()
        self.assertEqual(len(events), 1)
        e = events[0]
        self.assertEqual(
            {k: e[k] for k in ("client", "method", "path", "status", "bytes", "route", "upstream")},
            {"client": "192.0.2.7", "method": "GET", "path": "/some/path", "status": 200,
             "bytes": 2, "route": "routes[3]", "upstream": "http://up:1"},
        )
        self.assertEqual(e["duration_ms"], 0.0)
        text = repr(e)
        for secret in ["SECRET", "TOKEN", "COOKIE"]:
            self.assertNotIn(secret, text)

    def test_user_and_auth_decision(self):
        """The access log names the user (sub) and what the guard decided; '-' without."""
        h = SiteHarness(self)
        h.send(b"GET /who HTTP/1.1\r\nHost: a\r\n\r\nGET /anon HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual([(e["path"], e["user"], e["auth"]) for e in h.access()],
                         [("/who", "alice", "session"), ("/anon", "-", "-")])

    def test_protocol(self):
        """
        The access log says the protocol of the request line (in text and as
        the proto field); '-' before a valid request line.
        """
        h = SiteHarness(self)
        h.send(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n")
        ten = SiteHarness(self)
        ten.send(b"GET /ten HTTP/1.0\r\nHost: a\r\n\r\n")
        big = SiteHarness(self)
        big.send(b"POST /big/x HTTP/1.1\r\nHost: a\r\nContent-Length: 1001\r\n\r\n")
        bad = SiteHarness(self)
        bad.send(b"GET /bad\r\n\r\n")
        bad.channel.connectionLost(Failure(ConnectionDone()))
        events = h.access()  # h's observer saw every connection
        self.assertEqual([(e["path"], e["status"], e["proto"]) for e in events],
                         [("/one", 200, "HTTP/1.1"), ("/ten", 200, "HTTP/1.0"),
                          ("/big/x", 413, "HTTP/1.1"), ("-", 400, "-")])
        self.assertTrue(events[0]["access_line"].endswith(" proto=HTTP/1.1"), events[0]["access_line"])

    def test_event_as_logger_info_makes_it(self):
        """
        The access event is the one C{Logger.info} makes (same keys, in the
        same order, same values but the time): JSON observers write the same
        line.
        """
        h = SiteHarness(self)
        h.send(b"GET /who HTTP/1.1\r\nHost: a\r\n\r\n")
        [event] = h.access()
        made: list = []
        # Observers may add to an event (trial's legacy one adds "message",
        # "time", ...): the access log's own keys come first.
        names = ["access_line", "user", "auth", "client", "method", "path", "status", "bytes",
                 "duration_ms", "route", "upstream", "proto", "provider", "log_logger", "log_level",
                 "log_namespace", "log_source", "log_format", "log_time"]
        self.assertEqual(list(event)[:len(names)], names)
        event = {k: event[k] for k in names}
        fields = {k: v for k, v in event.items() if not k.startswith("log_")}
        Logger(namespace="oidcproxy.access", observer=made.append).info("{access_line}", **fields)
        [expected] = made
        self.assertEqual(list(event), list(expected))
        self.assertIsInstance(event["log_logger"], Logger)
        self.assertEqual(event["log_logger"].namespace, "oidcproxy.access")
        self.assertLess(abs(event["log_time"] - expected["log_time"]), 60)
        self.assertEqual(
            {k: v for k, v in event.items() if k not in ("log_time", "log_logger")},
            {k: v for k, v in expected.items() if k not in ("log_time", "log_logger")})
        self.assertEqual(formatEvent(event), formatEvent(expected))

    def test_json_log_observer(self):
        """--logger=oidcproxy.logs.json writes each event as one JSON line with its fields."""
        import io
        import json
        import sys

        from twisted.logger import Logger

        from oidcproxy import logs

        out = io.StringIO()
        self.patch(sys, "stdout", out)
        observer = logs.json()
        Logger(namespace="oidcproxy.access", observer=observer).info(
            '{client} "{method} {path}" {status}', client="192.0.2.1", method="GET",
            path="/x", status=200, user="alice")
        lines = out.getvalue().splitlines()
        self.assertEqual(len(lines), 1)
        event = json.loads(lines[0])
        self.assertEqual((event["path"], event["status"], event["user"],
                          event["log_namespace"]), ("/x", 200, "alice", "oidcproxy.access"))

    def test_text_log_observer_one_field_formats(self):
        """
        Events whose format is one field (as the access log's) give the lines
        of twistd's text observer whatever that field holds: text, a number,
        nothing, an attribute, a conversion, with a traceback.
        """

        class Thing:
            name = "thing"

            def __str__(self):
                return "a thing"

        try:
            raise ZeroDivisionError("division by zero")
        except ZeroDivisionError:
            failure = Failure()
        base = {"log_time": 1795900000.25, "log_namespace": "oidcproxy.access",
                "log_level": LogLevel.info}
        events = [
            {"log_format": "{access_line}", "access_line": 'a "GET /x" 200\nnext'},
            {"log_format": "{access_line}", "access_line": ""},
            {"log_format": "{access_line}", "access_line": 200},
            {"log_format": "{access_line}", "access_line": Thing()},
            {"log_format": "{access_line}"},
            {"log_format": "{access_line.name}", "access_line": Thing()},
            {"log_format": "{access_line!r}", "access_line": "x"},
            {"log_format": "{access_line:>4}", "access_line": "x"},
            {"log_format": "{0}", "0": "x"},
            {"log_format": "{a}{b}", "a": "x", "b": "y", "a}{b": "z"},
            {"log_format": "{{a}}", "a": "x", "{a}": "z"},
            {"log_format": b"{access_line}", "access_line": "bytes format"},
            {"log_format": "{access_line}", "access_line": "failed", "log_failure": failure},
            {"log_format": "{access_line}", "access_line": "flat",
             "log_flattened": {"access_line!:": "flattened", "access_line!s:": "flattened"}},
        ]
        events = [{**base, **event} for event in events]
        ours, expected = ours_and_twistds(events)
        self.assertEqual(ours, expected)
        self.assertIn("flattened", expected)
        self.assertIn("Unable to format event", expected)

    def test_text_log_observer_is_twistds_format(self):
        """
        --logger=oidcproxy.logs.text writes exactly the lines of twistd's own
        text observer (time, system, text; tracebacks indented), the
        timestamp formatted once per second.
        """
        from twisted.logger import LogLevel
        from twisted.python.failure import Failure

        try:
            raise ZeroDivisionError("division by zero")
        except ZeroDivisionError:
            failure = Failure()
        events = [
            {"log_format": '{access_line}', "access_line": 'a "GET /x" 200', "log_time": 1795900000.25,
             "log_namespace": "oidcproxy.access", "log_level": LogLevel.info},
            {"log_format": "worker {n}", "n": 2, "log_time": 1795900000.75,
             "log_system": "oidcproxy.access#info worker 2", "log_level": LogLevel.info},
            {"log_format": "boom", "log_time": 1795900001.5, "log_namespace": "x",
             "log_level": LogLevel.critical, "log_failure": failure},
            {"log_format": "", "log_time": 1795900002.0, "log_namespace": "x",
             "log_level": LogLevel.info},
        ]
        ours, expected = ours_and_twistds(events)
        self.assertEqual(ours, expected)
        self.assertIn("\tTraceback", ours)

    def test_duration_from_clock(self):
        """The duration is measured on the injected clock."""
        resource = Recorder(hang=True)
        h = SiteHarness(self, resource)
        h.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        h.clock.advance(0.25)
        request = resource.requests[0]
        request.write(b"done")
        request.finish()
        self.assertEqual(h.access()[0]["duration_ms"], 250.0)

    def test_client_closed_is_499(self):
        """A client that leaves before the answer is logged as 499."""
        h = SiteHarness(self, Recorder(hang=True))
        h.send(b"GET /gone HTTP/1.1\r\nHost: a\r\n\r\n")
        h.channel.connectionLost(Failure(ConnectionDone()))
        events = h.access()
        self.assertEqual([(e["path"], e["status"]) for e in events], [("/gone", 499)])

    def test_early_413_is_logged(self):
        """A body refused early is logged like any request: method, path, 413, route."""
        h = SiteHarness(self)
        h.send(b"POST /big/x?q=SECRET HTTP/1.1\r\nHost: a\r\nContent-Length: 1001\r\n\r\n")
        h2 = SiteHarness(self)
        h2.send(b"PUT /y HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"80\r\n" + b"z" * 128 + b"\r\n")
        events = h.access()  # h's observer saw both connections
        self.assertEqual(
            [(e["method"], e["path"], e["status"], e["route"]) for e in events],
            [("POST", "/big/x", 413, "routes[1]"), ("PUT", "/y", 413, "routes[0]")],
        )

    def test_access_log_off(self):
        """access_log = false logs no access events."""
        h = SiteHarness(self, access_log=False)
        h.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(h.access(), [])


class AbortedRequestTests(SynchronousTestCase):
    """
    A connection that closes before its request is whole is forgotten by the
    site, logged once without a traceback, and never blocks a drain: the
    three ways in are a body cut short, a malformed request line and headers
    cut off.
    """

    def abort(self, data, reason=ConnectionLost):
        metrics = Metrics()
        h = SiteHarness(self, body_limit=large_limit, metrics=metrics)
        self.assertEqual(gauge(metrics, "oidcproxy_client_connections_open"), 1)
        h.send(data)
        h.channel.connectionLost(Failure(reason()))
        self.assertEqual(h.site.open_connections, 0)
        self.assertEqual(gauge(metrics, "oidcproxy_client_connections_open"), 0)
        self.assertEqual(h.errors(), [])
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(h.resource.requests, [])
        return h

    def logged(self, h):
        return [(e["method"], e["path"], e["status"], e["route"]) for e in h.access()]

    def test_body_cut_short(self):
        """A POST promising 100,000 bytes that sends 8 KB and closes: 499, method and path named."""
        h = self.abort(b"POST /public/?q=SECRET HTTP/1.1\r\nHost: a\r\n"
                       b"Content-Length: 100000\r\n\r\n" + b"x" * 8192)
        self.assertEqual(self.logged(h), [("POST", "/public/", 499, "-")])
        self.assertNotIn("SECRET", repr(h.access()))

    def test_body_cut_short_names_the_route(self):
        """The early match names the route of a body cut short."""
        h = SiteHarness(self)
        h.send(b"POST /big/x HTTP/1.1\r\nHost: a\r\nContent-Length: 900\r\n\r\n" + b"x" * 10)
        h.channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.logged(h), [("POST", "/big/x", 499, "routes[1]")])
        self.assertEqual(h.site.open_connections, 0)

    def test_malformed_request_line(self):
        """A malformed request line is answered 400 and closed; logged as 400 with '-' fields."""
        h = self.abort(b"GARBAGE\r\n")
        self.assertTrue(h.transport.value().startswith(b"HTTP/1.1 400 Bad Request\r\n"))
        self.assertIn(b"Connection: close\r\n", h.transport.value())
        self.assertEqual(self.logged(h), [("-", "-", 400, "-")])

    def test_malformed_header(self):
        """A header line without a colon is answered 400; the request line names it in the log."""
        h = self.abort(b"GET /x HTTP/1.1\r\nHost: a\r\nno colon here\r\n\r\n")
        self.assertTrue(h.transport.value().startswith(b"HTTP/1.1 400 "))
        self.assertEqual(self.logged(h), [("GET", "/x", 400, "-")])

    def test_headers_cut_off(self):
        """Headers cut off mid-line, then the close: 499 with the request line's method and path."""
        h = self.abort(b"GET /partial?x=1 HTTP/1.1\r\nHost: a\r\nX-Half: va")
        self.assertEqual(self.logged(h), [("GET", "/partial", 499, "-")])
        self.assertEqual(h.transport.value(), b"")

    def test_request_line_cut_off(self):
        """A connection closed inside its request line has no request: nothing to log."""
        h = self.abort(b"GET /no-end-of-li")
        self.assertEqual(h.access(), [])

    def test_over_long_header_line(self):
        """An over-long header line: 431, closed, logged as 431."""
        h = SiteHarness(self)
        h.send(b"GET /long HTTP/1.1\r\nHost: a\r\nX-Big: " + b"b" * 20000)
        self.assertTrue(h.transport.value().startswith(b"HTTP/1.1 431 "))
        h.channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.logged(h), [("GET", "/long", 431, "-")])
        self.assertEqual(h.site.open_connections, 0)

    def test_many_aborted_connections_leave_nothing(self):
        """A thousand aborted connections of the three kinds leave no channel behind."""
        h = SiteHarness(self, body_limit=large_limit)
        kinds = [
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n" + b"x" * 8192,
            b"\x16\x03\x01 not http\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Cut: ",
        ]
        for i in range(1000):
            channel, _ = h.connect(("192.0.2.9", 1000 + i))
            channel.dataReceived(kinds[i % 3])
            channel.connectionLost(Failure(ConnectionLost()))
        h.channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(h.site.open_connections, 0)
        self.assertEqual(len(h.access()), 1000)
        self.assertEqual(h.errors(), [])
        self.assertEqual(self.successResultOf(h.site.drain(30)), 0)

    def test_drain_not_blocked(self):
        """After such connections closed, a drain finishes at once."""
        h = self.abort(b"GET / HTTP/1.1\r\nHost: a\r\nX-Cut: ")
        self.assertEqual(self.successResultOf(h.site.drain(30)), 0)

    def test_channel_forgotten_whatever_its_requests_raise(self):
        """
        Even if a request's clean-up raised, the channel is forgotten: a
        drain never waits for a connection that is gone.
        """
        h = SiteHarness(self, Recorder(hang=True))
        h.send(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")

        def broken(*args, **kwargs):
            raise RuntimeError("logging broke")

        h.site.log_request = broken
        self.assertRaises(RuntimeError, h.channel.connectionLost, Failure(ConnectionDone()))
        self.assertEqual(h.site.open_connections, 0)
        self.assertEqual(self.successResultOf(h.site.drain(30)), 0)


def sample(metrics, name, **labels):
    """The value of a labelled counter/gauge sample in C{metrics} (0 when absent)."""
    return gauge(metrics, name, labels)


class ClientDeadlineTests(SynchronousTestCase):
    """
    Deadlines for a client to send its request: the request line and headers
    (client_header_timeout), the body (client_body_timeout, then
    client_body_min_rate), on the site's clock.
    """

    def harness(self, resource=None, **limits):
        self.metrics = Metrics()
        return SiteHarness(self, resource, body_limit=large_limit, metrics=self.metrics,
                           limits=ClientLimits(**limits))

    def timeouts(self, phase):
        return sample(self.metrics, "oidcproxy_client_timeouts_total", phase=phase)

    def assertTimedOut(self, h, phase):
        out = h.transport.value()
        self.assertTrue(out.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), out)
        self.assertIn(b"Connection: close\r\n", out)
        self.assertTrue(h.transport.disconnecting)
        self.assertEqual(self.timeouts(phase), 1)
        h.channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(h.site.open_connections, 0)
        self.assertEqual(h.errors(), [])

    def test_headers_deadline(self):
        """Headers not in within client_header_timeout: 408, closed, counted, logged as 408."""
        h = self.harness(header_timeout=30)
        h.send(b"GET /slow?q=1 HTTP/1.1\r\nHost: a\r\n")
        h.clock.advance(29.9)
        self.assertEqual(h.transport.value(), b"")
        self.assertFalse(h.transport.disconnecting)
        h.clock.advance(0.2)
        self.assertTimedOut(h, "headers")
        self.assertEqual([(e["method"], e["path"], e["status"]) for e in h.access()],
                         [("GET", "/slow", 408)])
        self.assertEqual(h.resource.requests, [])

    def test_headers_deadline_is_not_reset_by_trickling(self):
        """A header line every few seconds does not keep the connection open (slowloris)."""
        h = self.harness(header_timeout=30)
        h.send(b"GET / HTTP/1.1\r\n")
        for i in range(10):
            h.clock.advance(2.9)
            h.send(b"X-Drip-%d: x\r\n" % i)
        self.assertFalse(h.transport.disconnecting)
        h.clock.advance(1.1)
        self.assertTimedOut(h, "headers")

    def test_silent_connection(self):
        """A connection that sends nothing is closed at the header deadline, with no answer."""
        h = self.harness(header_timeout=30)
        h.clock.advance(30)
        self.assertEqual(h.transport.value(), b"")
        self.assertTrue(h.transport.disconnecting)
        self.assertEqual(self.timeouts("headers"), 1)
        h.channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(h.access(), [])

    def test_keepalive_headers_deadline(self):
        """The next request's headers on a kept-alive connection have their deadline too."""
        h = self.harness(header_timeout=30)
        h.send(b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(len(h.resource.requests), 1)
        h.transport.clear()
        h.clock.advance(10)
        h.send(b"GET /second HTTP/1.1\r\nHost: a\r\n")
        h.clock.advance(29.9)
        self.assertFalse(h.transport.disconnecting)
        h.clock.advance(0.2)
        self.assertTimedOut(h, "headers")

    def test_whole_headers_start_no_deadline(self):
        """
        A kept-alive connection's next request whose headers come whole in
        one read starts no deadline (nothing to start and stop per request).
        """
        h = self.harness(header_timeout=30)
        h.send(b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n")
        added = []
        add = h.site.deadlines.add
        self.patch(h.site.deadlines, "add", lambda *a: added.append(a) or add(*a))
        for _ in range(3):
            h.send(b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(len(h.resource.requests), 4)
        self.assertEqual(added, [])
        self.assertEqual([c for c in h.clock.getDelayedCalls() if "_sweep" in repr(c)], [])

    def test_headers_in_time(self):
        """Headers sent within the deadline: served, and nothing fires afterwards."""
        h = self.harness(Recorder(hang=True), header_timeout=30)
        h.clock.advance(29)
        h.send(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(len(h.resource.requests), 1)
        # The site has the request: no client deadline while it is answered.
        h.clock.advance(300)
        self.assertFalse(h.transport.disconnecting)
        self.assertEqual(self.timeouts("headers"), 0)

    def test_keepalive_request_deadline_from_its_first_byte(self):
        """
        Between requests the keep-alive idle timeout rules; the next
        request's header deadline starts with its first byte.
        """
        h = self.harness(header_timeout=30)
        h.send(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertTrue(h.transport.value().startswith(b"HTTP/1.1 200 "))
        h.transport.clear()
        h.clock.advance(60)  # idle, under keepalive_timeout (75 s)
        self.assertFalse(h.transport.disconnecting)
        h.send(b"GET /2 HTTP/1.1\r\n")
        h.clock.advance(29.9)
        self.assertFalse(h.transport.disconnecting)
        h.clock.advance(0.2)
        self.assertTimedOut(h, "headers")

    def test_keepalive_idle_timeout_unchanged(self):
        """An idle keep-alive connection is closed at keepalive_timeout, without an answer."""
        h = self.harness(header_timeout=30)
        h.send(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n")
        h.transport.clear()
        h.clock.advance(74.9)
        self.assertFalse(h.transport.disconnecting)
        h.clock.advance(0.2)
        self.assertTrue(h.transport.disconnecting)
        self.assertEqual(h.transport.value(), b"")
        self.assertEqual(self.timeouts("headers"), 0)

    def test_pipelined_request_after_an_answer(self):
        """A request pipelined behind a slow one gets its header deadline once it is read."""
        resource = Recorder(hang=True)
        h = self.harness(resource, header_timeout=30)
        h.send(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost")
        h.clock.advance(100)
        self.assertFalse(h.transport.disconnecting)
        resource.requests[0].finish()
        h.clock.advance(29.9)
        self.assertFalse(h.transport.disconnecting)
        h.clock.advance(0.2)
        self.assertTrue(h.transport.disconnecting)
        self.assertEqual(self.timeouts("headers"), 1)

    def test_websocket_handshake_headers(self):
        """An upgrade request is an ordinary request until then: the same header deadline."""
        h = self.harness(header_timeout=30)
        h.send(b"GET /socket HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n")
        h.clock.advance(30)
        self.assertTimedOut(h, "headers")

    def test_body_min_rate(self):
        """
        After client_body_timeout, each client_body_min_rate bytes buy one
        second: 1,000 bytes at 500 B/s after a 20 s grace run out at 22 s.
        """
        h = self.harness(body_timeout=20, body_min_rate=500)
        h.send(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
        h.clock.advance(21.9)
        self.assertEqual(h.transport.value(), b"")
        h.clock.advance(0.2)
        self.assertTimedOut(h, "body")
        self.assertEqual([(e["method"], e["path"], e["status"]) for e in h.access()],
                         [("POST", "/up", 408)])
        self.assertEqual(h.resource.requests, [])

    def test_body_at_the_rate_is_read(self):
        """A body that keeps coming at more than the minimum rate is read whole, however long."""
        h = self.harness(body_timeout=20, body_min_rate=500)
        h.send(b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(120):
            h.clock.advance(1)
            h.send(b"258\r\n" + b"y" * 600 + b"\r\n")
        h.send(b"0\r\n\r\n")
        self.assertTrue(h.transport.value().startswith(b"HTTP/1.1 200 "), h.transport.value()[:80])
        self.assertEqual(len(h.resource.bodies[0]), 72000)
        self.assertEqual(self.timeouts("body"), 0)

    def test_body_timeout_alone_is_a_total(self):
        """client_body_min_rate = 0: client_body_timeout is the whole body's deadline."""
        h = self.harness(body_timeout=20, body_min_rate=0)
        h.send(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n")
        for _ in range(19):
            h.clock.advance(1)
            h.send(b"z" * 4000)
        self.assertFalse(h.transport.disconnecting)
        h.clock.advance(1)
        self.assertTimedOut(h, "body")

    def test_body_deadline_off(self):
        """client_body_timeout = 0: a body may trickle (only the idle timeout applies)."""
        h = self.harness(body_timeout=0)
        h.send(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n")
        for _ in range(60):
            h.clock.advance(60)
            h.send(b"a")
        self.assertFalse(h.transport.disconnecting)
        self.assertEqual(self.timeouts("body"), 0)

    def test_no_408_after_an_early_413(self):
        """A body refused early (413) gets no 408 later, whatever the client does."""
        h = SiteHarness(self, limits=ClientLimits(body_timeout=5, body_min_rate=0))
        h.send(b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"80\r\n" + b"z" * 128 + b"\r\n")
        h.clock.advance(60)
        out = h.transport.value()
        self.assertTrue(out.startswith(b"HTTP/1.1 413 "), out)
        self.assertNotIn(b"408", out)

    def test_closing_connection_is_cut_after_a_while(self):
        """A timed-out client that reads nothing is cut ten seconds later."""
        h = self.harness(header_timeout=30)
        h.send(b"GET / HTTP/1.1\r\n")
        h.clock.advance(30)
        self.assertTrue(h.transport.disconnecting)
        self.assertFalse(h.transport.disconnected)
        h.clock.advance(10)
        self.assertTrue(h.transport.disconnected)


class ConnectionLimitTests(SynchronousTestCase):
    """max_client_connections and max_client_connections_per_address."""

    def harness(self, **limits):
        self.metrics = Metrics()
        return SiteHarness(self, metrics=self.metrics, limits=ClientLimits(**limits))

    def refused(self, limit):
        return sample(self.metrics, "oidcproxy_client_connections_refused_total", limit=limit)

    def warnings(self, h):
        return [e for e in h.events if e.get("log_level") == LogLevel.warn]

    def assertRefused(self, transport):
        out = transport.value()
        self.assertTrue(out.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), out)
        self.assertIn(b"Retry-After: 5\r\n", out)
        self.assertIn(b"Connection: close\r\n", out)
        self.assertTrue(transport.disconnecting)

    def test_max_client_connections(self):
        """Above max_client_connections a new connection gets 503 at once; counted and logged."""
        h = self.harness(max_connections=2)
        second, _ = h.connect(("192.0.2.8", 1))
        third, transport = h.connect(("192.0.2.9", 1))
        self.assertRefused(transport)
        self.assertEqual(h.site.open_connections, 2)
        self.assertEqual(gauge(self.metrics, "oidcproxy_client_connections_open"), 2)
        self.assertEqual(self.refused("max_client_connections"), 1)
        [warning] = self.warnings(h)
        self.assertEqual(warning["count"], 1)
        self.assertIn("max_client_connections = 2", warning["limits"])
        # The refused connection's close changes no count; a slot freed is taken again.
        third.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(h.site.open_connections, 2)
        second.connectionLost(Failure(ConnectionDone()))
        fourth, transport = h.connect(("192.0.2.10", 1))
        self.assertFalse(transport.disconnecting)
        fourth.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 "))

    def test_refused_connection_has_no_deadline(self):
        """A refused connection is not timed: only its close is waited for (and then cut)."""
        h = self.harness(max_connections=1)
        _, transport = h.connect(("192.0.2.9", 1))
        h.clock.advance(100)
        # Only the connection that was served timed out.
        self.assertEqual(sample(self.metrics, "oidcproxy_client_timeouts_total", phase="headers"), 1)
        self.assertTrue(transport.disconnected)

    def test_per_address(self):
        """max_client_connections_per_address caps one IP address; others are served."""
        h = self.harness(max_connections=100, max_per_address=2)  # h's own: 192.0.2.7
        h.connect(("192.0.2.7", 2))
        third, transport = h.connect(("192.0.2.7", 3))
        self.assertRefused(transport)
        self.assertEqual(self.refused("max_client_connections_per_address"), 1)
        _, other = h.connect(("192.0.2.99", 1))
        self.assertFalse(other.disconnecting)
        h.channel.connectionLost(Failure(ConnectionDone()))
        _, again = h.connect(("192.0.2.7", 4))
        self.assertFalse(again.disconnecting)

    def test_per_address_ignores_unix_peers(self):
        """Peers without an IP address (a UNIX socket) are not capped per address."""
        from twisted.internet.address import UNIXAddress

        h = self.harness(max_connections=100, max_per_address=1)
        for _ in range(3):
            channel = h.site.buildProtocol(UNIXAddress(None))
            transport = StringTransport(peerAddress=UNIXAddress(None))
            channel.makeConnection(transport)
            self.assertFalse(transport.disconnecting)
        self.assertEqual(h.site.open_connections, 4)

    def test_refusals_logged_at_most_every_ten_seconds(self):
        """The first refusal is logged at once; the next ones in one line ten seconds later."""
        h = self.harness(max_connections=1)
        for i in range(5):
            h.connect(("192.0.2.9", i))
            h.clock.advance(1)
        self.assertEqual([w["count"] for w in self.warnings(h)], [1])
        h.clock.advance(5)
        self.assertEqual([w["count"] for w in self.warnings(h)], [1, 4])
        h.clock.advance(60)
        self.assertEqual(len(self.warnings(h)), 2)
        self.assertEqual(self.refused("max_client_connections"), 5)


class AnswerContextTests(SynchronousTestCase):
    """ProxyRequest applies what the guard put in the request context, before its first write."""

    def request(self) -> Any:
        from twisted.web.test.requesthelper import DummyChannel

        from oidcproxy.web.server import ProxyRequest

        request = ProxyRequest(DummyChannel(), False)
        request.method, request.uri, request.clientproto = b"GET", b"/", b"HTTP/1.1"
        return request

    def test_applied_before_the_first_write(self):
        """Refused Set-Cookie values dropped, the guard's cookies and headers added."""
        request = self.request()
        ctx = context(request)
        ctx.keep_cookie = lambda value: not value.startswith(b"session=")
        ctx.cookies.append(b"session=good")
        ctx.headers.append((b"x-auth-session-expires-in", b"60"))
        request.responseHeaders.setRawHeaders(b"set-cookie", [b"session=evil", b"app=1"])
        request.write(b"x")
        self.assertEqual(request.responseHeaders.getRawHeaders(b"set-cookie"),
                         [b"app=1", b"session=good"])
        self.assertEqual(request.responseHeaders.getRawHeaders(b"x-auth-session-expires-in"),
                         [b"60"])
        self.assertTrue(ctx.answer_applied)

    def test_without_a_context(self):
        """A request the guard never saw is written as it is."""
        request = self.request()
        request.responseHeaders.setRawHeaders(b"set-cookie", [b"session=x"])
        request.write(b"x")
        self.assertEqual(request.responseHeaders.getRawHeaders(b"set-cookie"), [b"session=x"])


def ours_and_twistds(events: List[Dict[str, Any]]) -> Tuple[str, str]:
    """
    The text C{oidcproxy.logs}' L{TextLogObserver} writes for C{events}, and
    the text twistd's classic observer would write for them.
    """
    import io

    from twisted.logger import formatEventAsClassicLogText, formatTime

    from oidcproxy.logs import TextLogObserver

    out = io.StringIO()
    observer = TextLogObserver(out)
    for event in events:
        observer(dict(event))
    expected = "".join(formatEventAsClassicLogText(
        dict(e), formatTime=lambda when: formatTime(when, "%Y-%m-%dT%H:%M:%S%z")) or ""
        for e in events)
    return out.getvalue(), expected
