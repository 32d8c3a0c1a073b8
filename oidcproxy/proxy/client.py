"""
The connection-pool side of the reverse proxy: one L{UpstreamClient} per
upstream origin and settings, shared by the routes that agree on both.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

from twisted.internet.defer import Deferred, fail, succeed
from twisted.web.client import URI, Agent, HTTPConnectionPool
from twisted.web.error import SchemeNotSupported
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer

from ..config import QUEUE_MULTIPLE, RouteConfig, UpstreamSettings
from ..core.admission import SlotQueue
from ..core.httpclient import QuietPool
from .connect import CachedEndpoints, origin, tls_policy

__all__ = ["OriginAgent", "UpstreamClient", "client_key"]

# What a request target may hold for OriginAgent to take it as it is:
# visible ASCII (Agent refuses the rest) but ";" and "#" (which URL parsing
# would take apart).
_PLAIN_TARGET = bytes(c for c in range(0x21, 0x7F) if c not in b";#")

_ORIGINS_KEPT = 16
"""The most parsed origins an L{OriginAgent} keeps (one per upstream, in practice)."""


class OriginAgent(Agent):
    """
    An L{Agent} that parses the origin (C{scheme://host:port}) of a request
    URL once: the proxy sends every request of an upstream to the same
    origin, and L{Agent.request} parses the whole URL each time (urllib's
    C{urlparse}, then its reassembly into the request path: some forty
    calls). A URL whose target holds more than visible ASCII, C{;} or C{#}
    goes to L{Agent.request} as it is.

    The rest is L{Agent.request}'s own, through its private
    C{_getEndpoint} and C{_requestWithEndpoint} (no public API takes a
    parsed URL); a test pins both against L{Agent.request}, so that a
    Twisted upgrade that changes them fails loudly.
    """

    _origins: Optional[Dict[bytes, URI]] = None

    def request(self, method: bytes, uri: bytes, headers: Optional[Headers] = None,
                bodyProducer: Optional[IBodyProducer] = None) -> Deferred:
        start = uri.find(b"://")
        slash = uri.find(b"/", start + 3) if start > 0 else -1
        if slash == -1 or uri[slash:].translate(None, _PLAIN_TARGET) \
                or uri[:slash].translate(None, _PLAIN_TARGET):
            return super().request(method, uri, headers, bodyProducer)
        origins = self._origins
        if origins is None:
            origins = self._origins = {}
        key = uri[:slash]
        parsed = origins.get(key)
        if parsed is None:
            parsed = URI.fromBytes(key)
            if parsed.path or parsed.params or parsed.query or parsed.fragment:
                return super().request(method, uri, headers, bodyProducer)
            if len(origins) < _ORIGINS_KEPT:
                origins[key] = parsed
        try:
            endpoint = self._getEndpoint(parsed)
        except SchemeNotSupported:
            return fail()
        path, mark, query = uri[slash:].partition(b"?")
        target = path + b"?" + query if query else path
        full = URI(parsed.scheme, parsed.netloc, parsed.host, parsed.port, path, b"", query, b"")
        return self._requestWithEndpoint(
            (parsed.scheme, parsed.host, parsed.port), endpoint, method, full, headers,
            bodyProducer, target)


class UpstreamClient:
    """
    One upstream origin and its settings: the L{Agent}, its persistent
    connection pool, and the cap on concurrent requests with its bounded
    line of waiting ones (the pool itself only caps idle connections).

    @param max_queued: requests that may wait for one of C{max_connections};
        None: L{QUEUE_MULTIPLE} times C{max_connections}.
    """

    def __init__(self, agent: IAgent, max_connections: int,
                 pool: Optional[HTTPConnectionPool] = None,
                 endpoints: Optional[CachedEndpoints] = None,
                 max_queued: Optional[int] = None) -> None:
        self.agent = agent
        self.pool = pool
        self.endpoints = endpoints
        self.slots = SlotQueue(
            max_connections,
            max_queued if max_queued is not None else QUEUE_MULTIPLE * max_connections)

    @classmethod
    def build(cls, reactor: Any, settings: UpstreamSettings) -> UpstreamClient:
        pool = QuietPool(reactor, persistent=True)
        pool.maxPersistentPerHost = settings.max_idle_connections
        pool.retryAutomatically = True
        endpoints = CachedEndpoints(reactor, tls_policy(settings), settings.connect_timeout)
        agent = OriginAgent.usingEndpointFactory(reactor, endpoints, pool=pool)
        return cls(agent, settings.max_connections, pool, endpoints, settings.queue_limit)

    def close(self) -> Deferred:
        if self.pool is None:
            return succeed(None)
        return self.pool.closeCachedConnections()


def client_key(route: RouteConfig) -> Tuple[Any, ...]:
    """What routes must agree on to share one L{UpstreamClient}."""
    s = route.settings
    return (
        origin(route.upstream),
        s.connect_timeout,
        s.max_connections,
        s.queue_limit,
        s.max_idle_connections,
        s.ca_bundle,
        s.client_cert,
        s.client_key,
    )
