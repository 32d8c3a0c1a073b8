"""
The connection-pool side of the reverse proxy: one L{UpstreamClient} per
upstream origin and settings, shared by the routes that agree on both.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

from twisted.internet.defer import Deferred, succeed
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IAgent

from ..config import QUEUE_MULTIPLE, RouteConfig, UpstreamSettings
from ..core.admission import SlotQueue
from ..core.httpclient import QuietPool
from .connect import CachedEndpoints, origin, tls_policy

__all__ = ["UpstreamClient", "client_key"]


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
        agent = Agent.usingEndpointFactory(reactor, endpoints, pool=pool)
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
