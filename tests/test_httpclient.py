"""
Tests for L{oidcproxy.core.httpclient}: the connection pool shared by the
upstream and IdP clients, driven through an L{Agent} on a memory reactor.
"""

from __future__ import annotations

from typing import Any, Tuple

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import Agent

from oidcproxy.core.httpclient import QuietPool


def answered(case: SynchronousTestCase, answer: bytes) -> Tuple[Any, StringTransport]:
    """The response of a GET through a L{QuietPool} whose server sends C{answer}."""
    reactor = MemoryReactorClock()
    agent = Agent(reactor, pool=QuietPool(reactor, persistent=False))
    d = agent.request(b"GET", b"http://upstream.test/")
    factory = reactor.tcpClients[0][2]
    protocol = factory.buildProtocol(IPv4Address("TCP", "10.0.0.1", 80))
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(answer)
    return case.successResultOf(d), transport


class ConnectionNamedTests(SynchronousTestCase):
    def test_headers_named_by_connection_removed(self):
        """
        The headers a response's Connection header names (any case, any
        spacing) concern that connection only: the response delivered has
        lost them, and keeps the others.
        """
        response, _ = answered(self, b"HTTP/1.1 200 OK\r\n"
                                     b"Connection: X-Hop ,  x-other\r\n"
                                     b"Connection: keep-alive\r\n"
                                     b"X-Hop: 1\r\nX-Other: 2\r\nX-Kept: 3\r\n"
                                     b"Content-Length: 0\r\n\r\n")
        self.assertEqual(response.code, 200)
        self.assertIsNone(response.headers.getRawHeaders(b"x-hop"))
        self.assertIsNone(response.headers.getRawHeaders(b"x-other"))
        self.assertEqual(response.headers.getRawHeaders(b"x-kept"), [b"3"])

    def test_nothing_named(self):
        """Without a Connection header every header is delivered."""
        response, _ = answered(self, b"HTTP/1.1 200 OK\r\nX-Hop: 1\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(response.headers.getRawHeaders(b"x-hop"), [b"1"])

    def test_no_attribute_added(self):
        """The response is Twisted's own, with no attribute of ours set on it."""
        response, _ = answered(self, b"HTTP/1.1 200 OK\r\nConnection: X-Hop\r\n"
                                     b"Content-Length: 0\r\n\r\n")
        self.assertFalse([name for name in vars(response) if name.startswith("oidcproxy")])
