"""
The handshake of a WebSocket upgrade: a connection of its own to the route's
upstream, the request head, and the upstream's answer head read with a size
bound. A C{101} hands the two connections to a
L{oidcproxy.proxy.websocket.splice.Splice}; any other answer is relayed as a
normal response; a malformed or oversized head, or a connection refused or
reset before it, is a 502, and no head within the route's C{timeout} a 504.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple
from urllib.parse import urlsplit

from twisted.internet import error as ierror
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import connectProtocol
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.server import NOT_DONE_YET, Request

from ...config import RouteConfig
from ...core.context import RequestContext, peek
from ...core.metrics import NullMetrics
from ...core.pages import render_error
from ..connect import EndpointFactory, UpstreamEndpoints, describe_failure
from ..headers import HOP_BY_HOP, header_tokens
from ..routes import RouteMatch
from .head import MAX_HEAD, ChunkedBody, SizedBody, parse_response_head, request_head
from .registry import SocketRegistry
from .splice import Splice, SpliceSide, switching_head

__all__ = ["WebSocketProxy"]

log = Logger()

class WebSocketProxy:
    """
    The upgrade path of L{oidcproxy.proxy.upstream.UpstreamProxy}.

    @param clock: for the handshake timeout, the lifetime and close timers.
    @param sockets: the process's registry (shared with the guard for logout).
    @param endpoints: the connection to a route's upstream (default:
        L{oidcproxy.proxy.connect.UpstreamEndpoints}).
    """

    def __init__(self, clock: Any, sockets: SocketRegistry,
                 endpoints: Optional[EndpointFactory] = None) -> None:
        self.clock = clock
        self.sockets = sockets
        self.endpoints: EndpointFactory = endpoints if endpoints is not None \
            else UpstreamEndpoints(clock)

    @property
    def metrics(self) -> NullMetrics:
        return self.sockets.metrics

    def forward(self, request: Request, match: RouteMatch, headers: Headers) -> Any:
        """
        Open the upstream connection for the upgrade request C{request} with
        the upstream C{headers} the normal path would send; answer it when
        the upstream does.
        """
        route = match.route
        incoming = request.requestHeaders
        if incoming.hasHeader(b"transfer-encoding") or \
                incoming.getRawHeaders(b"content-length", [b"0"]) != [b"0"]:
            return render_error(request, 400, "bad_request", "An upgrade request has no body.")
        host = urlsplit(route.upstream).netloc.encode("ascii")
        head = request_head(request.method, match.upstream_target, host, headers,
                            b", ".join(incoming.getRawHeaders(b"upgrade", [])))
        guard = peek(request) or RequestContext()
        session, who = guard.session, guard.identity
        upgrade = _Upgrade(self, request, route, head, guard)
        if not self.sockets.add(upgrade, getattr(session, "id", None),
                                getattr(session, "sid", None), getattr(who, "sub", None),
                                guard.provider or ""):
            log.warn("WebSocket refused on {route}: max_websockets ({limit}) are open",
                     route=route.name, limit=self.sockets.limit)
            self.metrics.websocket_upgrade("over_capacity")
            return render_error(request, 503, "too_many_websockets",
                                "Too many WebSocket connections are open. Please try again later.",
                                {b"retry-after": b"5"})
        upgrade.start()
        return NOT_DONE_YET


class _UpstreamSide(SpliceSide):
    """The connection to the upstream: its answer head, then the splice."""

    def __init__(self, upgrade: _Upgrade) -> None:
        self._upgrade = upgrade

    def connectionMade(self) -> None:
        self._upgrade.upstream_connected(self)

    def dataReceived(self, data: bytes) -> None:
        self._upgrade.from_upstream(data)

    def connectionLost(self, reason: Failure = ierror.ConnectionDone) -> None:  # type: ignore[assignment]
        self._upgrade.upstream_lost(reason)


class _Upgrade:
    """
    One upgrade request: its handshake with the upstream and, after a 101,
    the spliced connection until either side closes.
    """

    def __init__(self, owner: WebSocketProxy, request: Request, route: RouteConfig,
                 head: bytes, guard: RequestContext) -> None:
        self._owner = owner
        self._guard = guard
        self._client_went = False
        self._clock = owner.clock
        self._metrics = owner.metrics
        self._request = request
        self._route = route
        self._head = head
        self.state = "connecting"
        """connecting, waiting (for the answer head), answering (a non-101 body), open, closed."""
        self._buffer = b""
        self._connecting: Optional[Deferred] = None
        self._upstream: Optional[_UpstreamSide] = None
        self._splice: Optional[Splice] = None
        self._timer: Optional[IDelayedCall] = None
        self._body: Any = None

    # -- the handshake ------------------------------------------------------------

    def start(self) -> None:
        self._timer = self._clock.callLater(self._route.settings.timeout, self._timed_out)
        self._request.notifyFinish().addErrback(self._client_gone)
        endpoint = self._owner.endpoints(self._route)
        d = connectProtocol(endpoint, _UpstreamSide(self))
        self._connecting = d
        d.addErrback(self._connect_failed)

    def _connect_failed(self, failure: Failure) -> None:
        self._connecting = None
        if self.state != "connecting":
            return
        if failure.check(ierror.TimeoutError):
            self._fail(504, "upstream_timeout", "connect timeout")
        else:

            self._fail(502, "upstream_failed", describe_failure(failure))

    def upstream_connected(self, upstream: _UpstreamSide) -> None:
        self._connecting = None
        self._upstream = upstream
        if self.state != "connecting":
            upstream.transport.abortConnection()
            return
        self.state = "waiting"
        upstream.transport.write(self._head)

    def _timed_out(self) -> None:
        self._timer = None
        if self.state in ("connecting", "waiting"):
            self._fail(504, "upstream_timeout", "no answer within the timeout")

    def _stop_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _client_gone(self, reason: Failure) -> None:
        """The client went away before the 101 (or during a non-101 answer)."""
        self._client_went = True
        if self.state in ("connecting", "waiting"):
            self._metrics.websocket_upgrade("client_gone")
        self._end_handshake()

    def _end_handshake(self) -> None:
        """Drop the upstream side of an upgrade that did not become a socket."""
        self.state = "closed"
        self._stop_timer()
        self._owner.sockets.discard(self)
        if self._connecting is not None:
            self._connecting.cancel()
        if self._upstream is not None and self._upstream.transport is not None:
            self._upstream.transport.abortConnection()

    def _fail(self, code: int, result: str, why: str) -> None:
        """No socket: answer C{code} (502/504) before any 101."""
        route = self._route
        log.warn("WebSocket upgrade to upstream {upstream} of {route} failed: {why}",
                 upstream=route.upstream, route=route.name, why=why)
        self._metrics.websocket_upgrade(result)
        self._end_handshake()
        request = self._request
        if request.finished or self._client_went:
            return
        if code == 504:
            body = render_error(request, 504, "upstream_timeout",
                                "The upstream server did not answer in time.")
        else:
            body = render_error(request, 502, "bad_gateway",
                                "The upstream server could not be reached or gave a bad answer.")
        request.write(body)
        request.finish()

    def from_upstream(self, data: bytes) -> None:
        if self._splice is not None:
            self._splice.from_upstream(data)
        elif self.state == "answering":
            self._answer_body(data)
        elif self.state == "waiting":
            self._read_head(data)

    def _read_head(self, data: bytes) -> None:
        buffer = self._buffer + data
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0 or end > MAX_HEAD:
                self._buffer = buffer
                if len(buffer) > MAX_HEAD:
                    self._fail(502, "upstream_failed", f"answer head larger than {MAX_HEAD} bytes")
                return
            head, buffer = buffer[:end], buffer[end + 4:]
            try:
                code, reason, headers = parse_response_head(head)
            except ValueError as e:
                self._fail(502, "upstream_failed", f"malformed answer head: {e}")
                return
            if code == 101:
                self._switch(reason, headers, buffer)
                return
            if code >= 200:
                self._answer(code, reason, headers, buffer)
                return
            # 100 Continue, 103 Early Hints: informational; the answer follows.

    def upstream_lost(self, reason: Failure) -> None:
        state = self.state
        if state == "waiting":

            self._fail(502, "upstream_failed",
                       "closed before answering (" + describe_failure(reason) + ")")
        elif state == "answering":
            self._answer_lost()
        elif self._splice is not None:
            self._splice.upstream_lost(reason)

    # -- a non-101 answer -------------------------------------------------------------

    def _answer(self, code: int, reason: bytes, headers: List[Tuple[bytes, bytes]],
                rest: bytes) -> None:
        """Relay an answer other than 101 as a normal response, streamed."""
        raw = Headers()
        for name, value in headers:
            raw.addRawHeader(name, value)
        lengths = raw.getRawHeaders(b"content-length", [])
        if raw.hasHeader(b"transfer-encoding"):
            chunked = list(header_tokens(raw, b"transfer-encoding")) == [b"chunked"]
            self._body = ChunkedBody() if chunked else SizedBody(None)
        elif lengths:
            if len(set(lengths)) != 1 or not lengths[0].isdigit():
                self._fail(502, "upstream_failed", "invalid Content-Length")
                return
            self._body = SizedBody(int(lengths[0]))
        else:
            self._body = SizedBody(None)
        if code in (204, 304):
            self._body = SizedBody(0)
        self._stop_timer()
        self._metrics.websocket_upgrade("refused")
        request = self._request
        request.setResponseCode(code, reason)
        out = request.responseHeaders
        out.removeHeader(b"server")
        out.removeHeader(b"content-type")
        request.defaultContentType = None

        named = header_tokens(raw, b"connection")
        for name, value in headers:
            lower = name.lower()
            if lower in HOP_BY_HOP or lower in named:
                continue
            if lower == b"set-cookie" and self._guard.refuses_cookie(value):
                continue
            out.addRawHeader(name, value)
        self.state = "answering"
        assert self._upstream is not None
        request.registerProducer(self._upstream, True)
        if isinstance(self._body, SizedBody) and self._body.complete:
            self._answer_done()
        elif rest:
            self._answer_body(rest)

    def _answer_body(self, data: bytes) -> None:
        try:
            pieces, done = self._body.feed(data)
        except ValueError as e:
            log.warn("upstream {upstream} of {route}: {why}", upstream=self._route.upstream,
                     route=self._route.name, why=str(e))
            self._answer_cut()
            return
        for piece in pieces:
            if piece:
                self._request.write(piece)
        if done:
            self._answer_done()

    def _answer_done(self) -> None:
        self.state = "closed"
        self._owner.sockets.discard(self)
        request = self._request
        request.unregisterProducer()
        if self._upstream is not None:
            # The connection was opened for the upgrade only: not reused.
            self._upstream.transport.loseConnection()
        if not request.finished and not self._client_went:
            request.finish()

    def _answer_lost(self) -> None:
        if isinstance(self._body, SizedBody) and self._body.ends_with_connection:
            self._answer_done()
        else:
            self._answer_cut()

    def _answer_cut(self) -> None:
        """The answer broke off: a truncated body must not pass for a whole one."""
        self.state = "closed"
        self._owner.sockets.discard(self)
        request = self._request
        request.unregisterProducer()
        if self._upstream is not None:
            self._upstream.transport.abortConnection()
        if not self._client_went and not request.finished:
            transport: Any = request.channel.transport if request.channel is not None else None
            if transport is not None:
                transport.abortConnection()

    # -- the splice ---------------------------------------------------------------------

    def _switch(self, reason: bytes, headers: List[Tuple[bytes, bytes]], rest: bytes) -> None:
        """The upstream said 101: relay it and splice the two connections."""

        raw = Headers()
        for name, value in headers:
            raw.addRawHeader(name, value)
        if b"websocket" not in header_tokens(raw, b"upgrade"):
            self._fail(502, "upstream_failed", "101 without Upgrade: websocket")
            return
        request = self._request
        channel = request.channel
        transport: Any = channel.transport if channel is not None else None
        upstream = self._upstream
        assert upstream is not None
        if transport is None:
            self._end_handshake()
            return
        self._stop_timer()
        lifetime = self._route.settings.websocket_max_lifetime
        if lifetime is None:
            lifetime = self._owner.sockets.default_max_lifetime
        self.state = "open"
        splice = Splice(request, upstream, self._route, self._clock, self._metrics,
                        self._spliced_end)
        self._splice = splice
        splice.start(channel, transport,
                     switching_head(request, self._guard, reason, headers, raw),
                     reason, lifetime)
        if rest:
            splice.from_upstream(rest)

    def _spliced_end(self) -> None:
        self.state = "closed"
        self._owner.sockets.discard(self)

    def close(self, why: str) -> None:
        """
        End the socket (C{why}: C{upstream}, C{client}, C{max_lifetime},
        C{logout}, C{shutdown}; see L{Splice.close}). A socket still in its
        handshake is dropped.
        """
        if self.state in ("connecting", "waiting"):
            self._fail(502, "upstream_failed", f"closed during the handshake ({why})")
        elif self._splice is not None:
            self._splice.close(why)
