"""
The streaming reverse proxy: forward a request to its route's upstream and
stream the answer back.

Built on L{twisted.web.client.Agent} with a persistent connection pool, not on
C{twisted.web.proxy.ReverseProxyResource} (HTTP/1.0 upstream, a connection per
request, no back-pressure, no cancellation): bodies stream in both directions,
a slow client pauses the upstream connection instead of filling memory, and a
client that goes away cancels its upstream request.

The parts, in the order a request meets them: L{UpstreamProxy} (this module:
the route, the body, the headers) hands the request to an
L{oidcproxy.proxy.exchange.Exchange} (the slot, the timeout, the answer's
head) on the route's L{oidcproxy.proxy.client.UpstreamClient} (the Agent and
its pool), which streams the body back through a
L{oidcproxy.proxy.relay.BodyRelay}; an upgrade request takes the
L{oidcproxy.proxy.websocket} path instead.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Cooperator
from twisted.logger import Logger
from twisted.web.client import FileBodyProducer
from twisted.web.iweb import IBodyProducer
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from ..config import IPNetwork, RouteConfig
from ..core.admission import LogThrottle
from ..core.context import context, peek
from ..core.deadlines import Deadlines
from ..core.httpclient import BytesProducer
from ..core.metrics import NullMetrics
from ..core.pages import render_error
from .client import UpstreamClient, client_key
from .connect import agent_host, origin
from .exchange import RETRY_AFTER, Exchange
from .forwarding import upstream_headers
from .headers import drop_connection_named, is_websocket_upgrade, request_authority
from .routes import BadRequestTarget, RouteMatch, RouteTable
from .websocket import SocketRegistry, WebSocketProxy

__all__ = ["RETRY_AFTER", "UpstreamClient", "UpstreamProxy"]

log = Logger()

# Bodies up to this size are in memory already; send them in one write.
_SMALL_BODY = 256 * 1024


class UpstreamProxy(Resource):
    """
    An C{IResource} that forwards every request to the upstream of the route it
    matches. Mount it as the root of any L{twisted.web.server.Site}.

    @param routes: the route table.
    @param reactor: used for timeouts and, by default, to build the agents.
    @param trusted_proxies: peers whose C{X-Forwarded-*} headers are believed.
    @param client_factory: builds the L{UpstreamClient} of a route; routes with
        the same origin and settings share one. Tests inject agents here.
    @param metrics: times the upstream answers per route (an
        L{oidcproxy.core.metrics.Metrics}; default: nothing is counted).
    @param sockets: the process's WebSocket registry
        (L{oidcproxy.proxy.websocket.SocketRegistry}), shared by the proxies a
        reload replaces and read by the guard to close a user's sockets at
        logout (default: one of its own).
    @param endpoints: builds the connection of a WebSocket upgrade to a
        route's upstream (default: TCP or TLS per the route's URL; tests
        inject their own).
    """

    isLeaf = True

    def __init__(
        self,
        routes: RouteTable,
        reactor: Any,
        trusted_proxies: Sequence[IPNetwork] = (),
        client_factory: Optional[Callable[[RouteConfig], UpstreamClient]] = None,
        metrics: Optional[NullMetrics] = None,
        sockets: Any = None,
        endpoints: Optional[Callable[[RouteConfig], Any]] = None,
    ) -> None:
        super().__init__()
        self._metrics = metrics if metrics is not None else NullMetrics()
        self.sockets: SocketRegistry = sockets if sockets is not None \
            else SocketRegistry(metrics=self._metrics)
        self._websockets = WebSocketProxy(reactor, self.sockets, endpoints)
        self._routes = routes
        self._clock: IReactorTime = reactor
        self._trusted = tuple(trusted_proxies)
        if client_factory is None:
            def client_factory(route: RouteConfig) -> UpstreamClient:
                return UpstreamClient.build(reactor, route.settings)
        self._clients: Dict[int, UpstreamClient] = {}
        self._origins: Dict[int, bytes] = {}
        # The Host the Agent would add (it copies the headers to add it).
        self._hosts: Dict[int, bytes] = {}
        shared: Dict[Tuple[Any, ...], UpstreamClient] = {}
        for route in routes.routes:
            key = client_key(route)
            if key not in shared:
                shared[key] = client_factory(route)
            self._clients[route.index] = shared[key]
            self._origins[route.index] = origin(route.upstream).encode("ascii")
            self._hosts[route.index] = agent_host(self._origins[route.index])
        self._cooperator = Cooperator(
            scheduler=lambda work: self._clock.callLater(0.0, work)
        )
        self._in_flight = 0
        self._retired: Optional[Deferred] = None
        self._refusals = LogThrottle(self._clock)
        self._deadlines = Deadlines(self._clock)

    def close(self) -> Deferred:
        """Close idle upstream connections and open WebSockets (at shutdown)."""
        self.sockets.close_all()
        self._cooperator.stop()
        return gatherResults([c.close() for c in set(self._clients.values())])

    def retire(self) -> Deferred:
        """
        Close this proxy's pooled connections once its in-flight requests are
        over (a reload replaced it, so it gets no new ones). L{close} right
        away would close only the idle connections: one still carrying a
        request goes back to its pool when done and would stay open until the
        pool's idle timeout. The cooperator is left alone (an upload in flight
        may use it; it holds nothing once they are over).
        """
        if self._retired is None:
            self._retired = Deferred()
            self._maybe_retire()
        return self._retired

    def _maybe_retire(self) -> None:
        retired = self._retired
        if retired is None or retired.called or self._in_flight:
            return

        def close() -> None:
            # A turn later: the last response's connection is back in its
            # pool by then, and is closed with the others.
            d = gatherResults([c.close() for c in set(self._clients.values())])
            d.addBoth(lambda _: None if retired.called else retired.callback(None))

        self._clock.callLater(0.0, close)

    def _exchange_over(self) -> None:
        self._in_flight -= 1
        self._maybe_retire()

    def render(self, request: Request) -> Any:
        found = peek(request)
        match = found.match if found is not None else None
        if match is not None:
            # A guard in front has routed the request already.
            return self.forward(request, match)
        try:
            match = self._routes.match(request_authority(request), request.uri)
        except BadRequestTarget as e:
            log.info("refused request target: {reason}", reason=e.reason)
            return render_error(request, 400, "bad_request", f"Bad request target: {e.reason}.")
        if match is None:
            return render_error(request, 404, "not_found", "No route matches this URL.")
        # Without a guard in front, the hop-by-hop headers a client names go here.
        drop_connection_named(request.requestHeaders)
        return self.forward(request, match)

    def forward(self, request: Request, match: RouteMatch) -> Any:
        """
        Send C{request} to the upstream of C{match} and stream the answer back.
        Used by L{render}, and by a guard that has already matched the route.
        """
        route = match.route
        context(request).route = route
        if request.method == b"CONNECT":
            return render_error(request, 405, "method_not_allowed", "CONNECT is not proxied.")
        if route.settings.websockets and is_websocket_upgrade(request):
            return self._websockets.forward(
                request, match, upstream_headers(request, match, self._trusted))
        content = request.content
        body_size = 0
        if content is not None:
            content.seek(0, 2)
            body_size = content.tell()
            content.seek(0, 0)
        if body_size > route.settings.max_body_size:
            return render_error(
                request, 413, "body_too_large",
                f"The request body is larger than {route.settings.max_body_size} bytes.",
            )
        headers = upstream_headers(request, match, self._trusted, self._hosts[route.index])
        producer: Optional[IBodyProducer] = None
        if body_size or request.requestHeaders.hasHeader(b"content-length") or \
                request.requestHeaders.hasHeader(b"transfer-encoding"):
            if body_size <= _SMALL_BODY:
                producer = BytesProducer(content.read() if content is not None else b"")
            else:
                producer = FileBodyProducer(content, cooperator=self._cooperator)
        target = self._origins[route.index] + match.upstream_target
        self._in_flight += 1
        Exchange(request, route, self._clients[route.index], target, headers, producer,
                 self._clock, self._metrics, self._refusals, self._deadlines,
                 self._exchange_over)
        return NOT_DONE_YET
