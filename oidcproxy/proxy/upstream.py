"""
The streaming reverse proxy: forward a request to its route's upstream and
stream the answer back.

Built on L{twisted.web.client.Agent} with a persistent connection pool, not on
C{twisted.web.proxy.ReverseProxyResource} (HTTP/1.0 upstream, a connection per
request, no back-pressure, no cancellation): bodies stream in both directions,
a slow client pauses the upstream connection instead of filling memory, and a
client that goes away cancels its upstream request.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from twisted.internet import error as ierror
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.internet.task import Cooperator
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, ResponseDone
from twisted.web.http import NO_BODY_CODES, PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IAgent, IBodyProducer, IResponse
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from ..config import QUEUE_MULTIPLE, IPNetwork, RouteConfig, UpstreamSettings
from ..core.admission import LogThrottle, QueueFull, SlotQueue
from ..core.httpclient import BytesProducer, QuietPool
from ..core.metrics import NullMetrics
from ..core.pages import render_error
from .connect import CachedEndpoints, describe_failure, origin, tls_policy
from .headers import (
    FORWARDING_HEADERS,
    HOP_BY_HOP,
    UNTRUSTED_OVERRIDES,
    canonical_header,
    connection_tokens,
    drop_connection_named,
    is_trusted,
    is_websocket_upgrade,
    request_authority,
)
from .routes import BadRequestTarget, RouteMatch, RouteTable
from .websocket import SocketRegistry, WebSocketProxy

log = Logger()

# Never copied from the client request: recomputed for the upstream hop.
_REQUEST_RECOMPUTED = frozenset([b"host", b"content-length", b"expect"])

RETRY_AFTER = b"5"
"""Seconds a client refused for want of an upstream slot is told to wait (C{Retry-After})."""

# Bodies up to this size are in memory already; send them in one write.
_SMALL_BODY = 256 * 1024


def _peer_host(request: Request) -> Optional[str]:
    peer = request.getClientAddress()
    return getattr(peer, "host", None)


def _forwarded_node(host: Optional[str]) -> str:
    if host is None:
        return "unknown"
    if ":" in host:
        return f'"[{host}]"'
    return host


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


def _client_key(route: RouteConfig) -> Tuple[Any, ...]:
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
        shared: Dict[Tuple[Any, ...], UpstreamClient] = {}
        for route in routes.routes:
            key = _client_key(route)
            if key not in shared:
                shared[key] = client_factory(route)
            self._clients[route.index] = shared[key]
            self._origins[route.index] = origin(route.upstream).encode("ascii")
        self._cooperator = Cooperator(
            scheduler=lambda work: self._clock.callLater(0.0, work)
        )
        self._in_flight = 0
        self._retired: Optional[Deferred] = None
        self._refusals = LogThrottle(self._clock)

    def close(self) -> Deferred:
        """Close idle upstream connections and open WebSockets (at shutdown)."""
        from twisted.internet.defer import gatherResults

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
            from twisted.internet.defer import gatherResults

            d = gatherResults([c.close() for c in set(self._clients.values())])
            d.addBoth(lambda _: None if retired.called else retired.callback(None))

        self._clock.callLater(0.0, close)

    def _exchange_over(self, _: Any) -> None:
        self._in_flight -= 1
        self._maybe_retire()

    def render(self, request: Request) -> Any:
        match: Optional[RouteMatch] = getattr(request, "oidcproxy_match", None)
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
        setattr(request, "oidcproxy_route", route)  # noqa: B010 - read by the access log
        if request.method == b"CONNECT":
            return render_error(request, 405, "method_not_allowed", "CONNECT is not proxied.")
        if route.settings.websockets and is_websocket_upgrade(request):
            return self._websockets.forward(request, match, self._upstream_headers(request, match))
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
        headers = self._upstream_headers(request, match)
        producer: Optional[IBodyProducer] = None
        if body_size or request.requestHeaders.hasHeader(b"content-length") or \
                request.requestHeaders.hasHeader(b"transfer-encoding"):
            if body_size <= _SMALL_BODY:
                producer = BytesProducer(content.read() if content is not None else b"")
            else:
                producer = FileBodyProducer(content, cooperator=self._cooperator)
        target = self._origins[route.index] + match.upstream_target
        self._in_flight += 1
        request.notifyFinish().addBoth(self._exchange_over)
        _Exchange(self, request, route, self._clients[route.index], target, headers, producer)
        return NOT_DONE_YET

    def _upstream_headers(self, request: Request, match: RouteMatch) -> Headers:
        # The headers the client's Connection named are gone already (see
        # drop_connection_named): what it names now is the proxy's own.
        incoming = request.requestHeaders
        peer = _peer_host(request)
        trusted = is_trusted(peer, self._trusted)
        out = Headers()
        for name, values in incoming.getAllRawHeaders():
            lower = name.lower()
            if lower in HOP_BY_HOP or lower in _REQUEST_RECOMPUTED:
                continue
            canonical = canonical_header(lower)
            if canonical in FORWARDING_HEADERS or canonical in HOP_BY_HOP:
                continue
            if not trusted and canonical in UNTRUSTED_OVERRIDES:
                continue
            out.setRawHeaders(name, values)

        client_host = incoming.getRawHeaders(b"host", [b""])[0]
        proto = b"https" if request.isSecure() else b"http"
        xff = [peer.encode("ascii")] if peer else []
        if trusted:
            previous = incoming.getRawHeaders(b"x-forwarded-for")
            if previous:
                xff = [b", ".join([*previous, *xff])]
            proto = (incoming.getRawHeaders(b"x-forwarded-proto") or [proto])[0]
            client_host = (incoming.getRawHeaders(b"x-forwarded-host") or [client_host])[0]
        if xff:
            out.setRawHeaders(b"x-forwarded-for", [b", ".join(xff)])
        out.setRawHeaders(b"x-forwarded-proto", [proto])
        if client_host:
            out.setRawHeaders(b"x-forwarded-host", [client_host])
        own_node = "for={};proto={}".format(
            _forwarded_node(peer), "https" if request.isSecure() else "http"
        ).encode("ascii")
        host_value = incoming.getRawHeaders(b"host", [b""])[0]
        if host_value and all(0x21 <= c < 0x7F and c != 0x22 for c in host_value):
            own_node += b';host="' + host_value + b'"'
        forwarded = [own_node]
        if trusted:
            forwarded = [*incoming.getRawHeaders(b"forwarded", []), *forwarded]
        out.setRawHeaders(b"forwarded", [b", ".join(forwarded)])
        if match.route.pass_host_header and host_value:
            out.setRawHeaders(b"host", [host_value])
        return out


class _Exchange:
    """
    One request's trip upstream and back. Owns the timeout, the concurrency
    slot (and the wait for one), the cancellation when the client goes away,
    and the mapping of failures to 502/503/504.

    While every slot of the upstream is taken the request waits in a bounded
    line: when the line is full, or the request has waited C{queue_timeout}
    (or its whole C{timeout}, if shorter), it is answered 503 with
    C{Retry-After} without having gone upstream.
    """

    def __init__(
        self,
        proxy: UpstreamProxy,
        request: Request,
        route: RouteConfig,
        upstream: UpstreamClient,
        url: bytes,
        headers: Headers,
        producer: Optional[IBodyProducer],
    ) -> None:
        self._proxy = proxy
        self._request = request
        self._route = route
        self._upstream = upstream
        self._sent_at = 0.0
        self._url = url
        self._headers = headers
        self._producer = producer
        self._client_gone = False
        self._timed_out = False
        self._holding_slot = False
        self._queued_at: Optional[float] = None
        self._queue_expired = False
        self._relay: Optional[_BodyRelay] = None
        self._timer: Optional[IDelayedCall] = None
        settings = route.settings
        pending = upstream.slots.acquire()
        if not pending.called:
            # In line for a slot: the timer bounds the wait first.
            self._queued_at = proxy._clock.seconds()
            self._timer = proxy._clock.callLater(
                min(settings.queue_timeout, settings.timeout), self._timeout)
        self._pending: Optional[Deferred] = pending
        pending.addCallbacks(self._send, self._failed)
        request.notifyFinish().addErrback(self._gone)

    def _send(self, _: Any) -> None:
        self._holding_slot = True
        now = self._sent_at = self._proxy._clock.seconds()
        timeout = self._route.settings.timeout
        if self._queued_at is None:
            self._timer = self._proxy._clock.callLater(timeout, self._timeout)
        else:
            # Out of the line: what is left of the route's timeout applies.
            if self._timer is not None and self._timer.active():
                self._timer.reset(max(0.0, timeout - (now - self._queued_at)))
            self._queued_at = None
        d = self._upstream.agent.request(
            self._request.method, self._url, self._headers, self._producer
        )
        self._pending = d
        d.addCallbacks(self._response, self._failed)

    def _release(self) -> None:
        """Give the concurrency slot back, once, when the exchange is over."""
        if self._holding_slot:
            self._holding_slot = False
            self._upstream.slots.release()

    def _timeout(self) -> None:
        self._timer = None
        if self._queued_at is not None:
            self._queue_expired = True
        else:
            self._timed_out = True
        if self._pending is not None:
            self._pending.cancel()

    def _stop_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _gone(self, reason: Failure) -> None:
        """The client went away: cancel whatever is in flight upstream."""
        self._client_gone = True
        self._stop_timer()
        if self._pending is not None:
            self._pending.cancel()
        if self._relay is not None:
            self._relay.stop()

    def _response(self, response: IResponse) -> None:
        self._pending = None
        self._stop_timer()
        self._proxy._metrics.upstream_latency(
            self._route.name, self._proxy._clock.seconds() - self._sent_at)
        request = self._request
        if self._client_gone:
            response.deliverBody(_Discard())
            self._release()
            return
        request.setResponseCode(response.code, response.phrase)
        out = request.responseHeaders
        # Twisted's defaults: the upstream's answer speaks for itself.
        out.removeHeader(b"server")
        out.removeHeader(b"content-type")
        setattr(request, "defaultContentType", None)  # noqa: B010
        connection_named = connection_tokens(response.headers)
        named = getattr(response, "oidcproxy_connection", None)
        if named:
            connection_named = connection_named | frozenset(
                t.strip().lower() for v in named for t in v.split(b","))
        for name, values in response.headers.getAllRawHeaders():
            lower = name.lower()
            if lower in HOP_BY_HOP or lower in connection_named:
                continue
            out.setRawHeaders(name, values)
        # Agent keeps Content-Length to itself (except for HEAD) and tells the
        # body length instead: pass it on, so the client gets a sized response
        # rather than a chunked one.
        if response.length is not UNKNOWN_LENGTH and response.code not in NO_BODY_CODES \
                and request.method != b"HEAD":
            out.setRawHeaders(b"content-length", [b"%d" % response.length])
        self._relay = _BodyRelay(request, self._route, self._release, self._proxy._clock)
        response.deliverBody(self._relay)

    def _failed(self, failure: Failure) -> None:
        self._pending = None
        self._stop_timer()
        self._release()
        if self._client_gone:
            return
        request = self._request
        route = self._route
        if self._queue_expired or failure.check(QueueFull):
            self._refuse("timeout" if self._queue_expired else "full")
            return
        if self._timed_out or failure.check(ierror.TimeoutError):
            why = "no response within the timeout" if self._timed_out else "connect timeout"
            log.warn(
                "upstream {upstream} of {route} timed out: {why}",
                upstream=route.upstream, route=route.name, why=why,
            )
            body = render_error(request, 504, "upstream_timeout",
                                "The upstream server did not answer in time.")
        else:
            log.warn(
                "upstream {upstream} of {route} failed: {reason}",
                upstream=route.upstream, route=route.name, reason=describe_failure(failure),
            )
            body = render_error(request, 502, "bad_gateway",
                                "The upstream server could not be reached or gave a bad answer.")
        request.write(body)
        request.finish()

    def _refuse(self, reason: str) -> None:
        """503: the line for this upstream's slots was full, or the wait too long."""
        route, proxy = self._route, self._proxy
        proxy._metrics.upstream_queue_rejected(route.name, reason)
        held_back = proxy._refusals.allow((route.name, reason))
        if held_back is not None:
            settings = route.settings
            why = (f"{settings.queue_limit} requests already wait" if reason == "full" else
                   f"no connection free within {min(settings.queue_timeout, settings.timeout):g}s")
            log.warn(
                "upstream {upstream} of {route} is at max_connections ({limit}): 503, {why} "
                "({held_back} more such 503s since the last line)",
                upstream=route.upstream, route=route.name, limit=settings.max_connections,
                why=why, held_back=held_back,
            )
        request = self._request
        body = render_error(request, 503, "upstream_busy",
                            "The upstream server is busy. Please try again shortly.",
                            {b"retry-after": RETRY_AFTER})
        request.write(body)
        request.finish()


@implementer(IPushProducer)
class _BodyRelay(Protocol):
    """
    Stream the upstream body to the client. Registered as the request's
    producer, so a slow client pauses the upstream connection (back-pressure)
    instead of the proxy buffering the response.

    A body may take as long as it likes (server-sent events, long polls), but
    not C{stream_idle_timeout} seconds without a byte while the client
    reads: then it is cut. While the client does not read, the timer waits.
    """

    def __init__(self, request: Request, route: RouteConfig, done: Callable[[], None],
                 clock: Optional[IReactorTime] = None) -> None:
        self._request = request
        self._route = route
        self._done = done
        self._stopped = False
        self._clock = clock
        self._idle = route.settings.stream_idle_timeout
        self._idle_timer: Optional[IDelayedCall] = None

    transport: Any

    def connectionMade(self) -> None:
        self._request.registerProducer(self, True)
        self._arm()

    def _arm(self) -> None:
        """(Re)start the idle timer."""
        if self._clock is None or self._idle <= 0 or self._stopped:
            return
        timer = self._idle_timer
        if timer is not None and timer.active():
            timer.reset(self._idle)
        else:
            self._idle_timer = self._clock.callLater(self._idle, self._idle_out)

    def _disarm(self) -> None:
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.cancel()
        self._idle_timer = None

    def _idle_out(self) -> None:
        self._idle_timer = None
        log.warn(
            "upstream {upstream} of {route} sent nothing for {seconds}s: response cut "
            "(stream_idle_timeout)",
            upstream=self._route.upstream, route=self._route.name, seconds=self._idle,
        )
        self.stop()
        # The body is incomplete: abort, so it does not pass for a whole one.
        transport = getattr(self._request, "transport", None)
        if transport is not None and hasattr(transport, "abortConnection"):
            transport.abortConnection()
        elif transport is not None:
            transport.loseConnection()

    # IPushProducer, for the request: relay to the upstream transport.
    def pauseProducing(self) -> None:
        self._disarm()
        if self.transport is not None:
            self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._arm()
        if self.transport is not None:
            self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.stop()

    def stop(self) -> None:
        if not self._stopped and self.transport is not None:
            self._stopped = True
            self.transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        if not self._stopped:
            if self._idle_timer is not None:
                self._arm()
            self._request.write(data)

    def connectionLost(self, reason: Failure = ierror.ConnectionDone) -> None:  # type: ignore[assignment]
        self._disarm()
        self._done()
        request = self._request
        request.unregisterProducer()
        if self._stopped:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            request.finish()
            return
        # The upstream broke off mid-body. Ending the response normally would
        # hand the client a truncated body as if it were whole: abort instead.
        log.warn(
            "upstream {upstream} of {route} broke off the response: {reason}",
            upstream=self._route.upstream, route=self._route.name,
            reason=describe_failure(reason),
        )
        if not getattr(request, "startedWriting", True):
            request.write(render_error(request, 502, "bad_gateway",
                                       "The upstream server broke off its answer."))
            request.finish()
            return
        transport = getattr(request, "transport", None)
        if transport is not None and hasattr(transport, "abortConnection"):
            transport.abortConnection()
        elif transport is not None:
            transport.loseConnection()


class _Discard(Protocol):
    """Receive a body nobody wants: stop it, closing its connection."""

    transport: Any

    def connectionMade(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()
