"""
The shared parts of the HTTP clients (to upstreams and to the IdP): a
request body already in memory, and a connection pool that drops the
headers a response's C{Connection} header names and does not log every
connection.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IConsumer
from twisted.web import client
from twisted.web._newclient import HTTP11ClientProtocol
from twisted.web.client import HTTPConnectionPool
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer


@implementer(IBodyProducer)
class BytesProducer:
    """A request body that is already in memory, written at once (no reactor needed)."""

    def __init__(self, body: bytes) -> None:
        self._body = body
        self.length = len(body)

    def startProducing(self, consumer: IConsumer) -> Deferred:
        consumer.write(self._body)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class _ClientProtocol(HTTP11ClientProtocol):
    """
    Twisted's response parser keeps the C{Connection} header to itself, so
    the headers an upstream names there as hop-by-hop (RFC 9110 7.6.1: they
    concern this connection only) would reach whoever reads the response:
    this protocol removes them from the response it delivers.
    """

    def request(self, request: Any) -> Deferred:
        d = super().request(request)
        parser = getattr(self, "_parser", None)
        connection = getattr(parser, "connHeaders", None)
        if connection is not None:
            def drop_named(response: Any) -> Any:
                for value in connection.getRawHeaders(b"connection", []):
                    for token in value.split(b","):
                        name = token.strip()
                        if name:
                            response.headers.removeHeader(name)
                return response

            d.addCallback(drop_named)
        return d


class _QuietFactory(client._HTTP11ClientFactory):
    # One "Starting factory"/"Stopping factory" line per upstream connection
    # is noise in the log and costs time on the hot path.
    noisy = False

    def buildProtocol(self, addr: Any) -> _ClientProtocol:
        return _ClientProtocol(self._quiescentCallback)


class QuietPool(HTTPConnectionPool):
    """A connection pool that does not log two lines per new connection."""

    _factory = _QuietFactory
