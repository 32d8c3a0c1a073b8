"""
The HTTP server side: a L{Site} whose requests refuse an oversized body as
soon as its length shows, whose clients get deadlines to send their requests
and a cap on their connections, which drains at shutdown, and which writes
one structured access-log event per request.

A client connection starts as an HTTP/1.1 L{ProxyChannel}; on a TLS listener
whose handshake chose C{h2} (ALPN), an HTTP/2 connection takes it over
(L{oidcproxy.web.http2}, when Twisted's C{http2} extra is installed). The
requests are L{ProxyRequest}s either way: what they need of their request
line they read from their channel's public C{command} and C{path} (an
HTTP/2 stream's own, or what L{ProxyChannel} keeps of the request line).
"""

from __future__ import annotations

import io
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.http import H2_ENABLED
from twisted.web.resource import IResource

from ..config import ClientLimits
from ..core.context import ContextAtHand, context, peek
from ..core.metrics import NullMetrics
from ..core.pages import PLAIN_PAGE_HEADERS, error_body
from .channel import ProxyChannel
from .connections import ClientConnections

if H2_ENABLED:
    from .http2 import switch_to_http2

access_log = Logger(namespace="oidcproxy.access")

BodyLimit = Callable[[Optional[bytes], Optional[bytes]], Tuple[int, Any, Any]]
"""
C{(host header, raw request target) -> (max body bytes, route or None, match)}:
the match is C{(route table, host, target, RouteMatch)} or None, kept in the
request's context (C{early_match}) for the guard.
"""


class ProxyRequest(ContextAtHand, server.Request):
    """
    A request that knows when it started and refuses a body over its route's
    limit before reading it: on C{Content-Length}, or as the running count of
    a chunked body passes the limit. Over HTTP/1.1 the early answer is
    written by the channel, which then closes the connection: the rest of
    the body is never read. Over HTTP/2 it is this request's answer, and the
    stream is reset once it is out (the connection stays).

    Before its first bytes go out, the answer gets what the guard added to
    the request's context (cookies, headers, refused C{Set-Cookie} values):
    see L{RequestContext.apply_answer}.

    Over HTTP/2 the request keeps its body's deadline (C{client_body_timeout}
    and C{client_body_min_rate}, as L{ProxyChannel} does for HTTP/1.1): a
    late body is answered 408 on its stream. Its C{transport} is its stream
    (Twisted leaves it None): cutting a broken answer off resets that
    stream, not the client's connection.
    """

    started: Optional[float] = None
    stream_id: Optional[int] = None
    """The HTTP/2 stream of the request; None over HTTP/1.1."""
    _refused = False
    _received = 0
    _limit: Optional[int] = None
    _early: Tuple[Optional[bytes], Optional[bytes], Any] = (None, None, None)
    _body_deadline: Optional[IDelayedCall] = None
    _body_started = 0.0

    def __init__(self, channel: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(channel, *args, **kwargs)
        self.stream_id = getattr(channel, "streamID", None)
        if self.stream_id is not None and self.transport is None:
            self.transport = channel
        site = getattr(channel, "site", None)
        if isinstance(site, ProxySite):
            # From the request line's arrival, as nginx's $request_time.
            self.started = site.clock.seconds()

    def _request_line(self) -> Tuple[Optional[bytes], Optional[bytes]]:
        """
        The method and raw target, before the channel hands them over with
        the whole request (None until they arrived).
        """
        return getattr(self.channel, "command", None), getattr(self.channel, "path", None)

    def gotLength(self, length: Optional[int]) -> None:
        site = getattr(self.channel, "site", None)
        if isinstance(site, ProxySite):
            # Without a target we fall back to the largest limit of any
            # route (the render-time check is authoritative either way).
            command, target = self._request_line()
            self._limit, route, context(self).early_match = site.body_limit(
                self.requestHeaders.getRawHeaders(b"host", [None])[0], target)
            self._early = (command, target, route)
            if length is not None and length > self._limit:
                self._refuse_too_large()
                return
            if self.stream_id is not None and length != 0 and site.limits.body_timeout > 0:
                # Over HTTP/1.1 the channel keeps this deadline.
                self._body_started = site.clock.seconds()
                self._body_deadline = site.clock.callLater(site.limits.body_timeout,
                                                           self._body_deadline_passed)
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        if self._limit is not None and self._received > self._limit:
            self._refuse_too_large()
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        self._stop_body_deadline()
        super().requestReceived(command, path, version)

    def _stop_body_deadline(self) -> None:
        if self._body_deadline is not None:
            if self._body_deadline.active():
                self._body_deadline.cancel()
            self._body_deadline = None

    def _body_deadline_passed(self) -> None:
        """The body of an HTTP/2 stream is late (as L{ProxyChannel}'s body deadline)."""
        self._body_deadline = None
        site = getattr(self.channel, "site", None)
        if not isinstance(site, ProxySite) or self._refused or self.finished or self.channel is None:
            return
        limits = site.limits
        if limits.body_min_rate > 0:
            allowed = limits.body_timeout + self._received / limits.body_min_rate
            elapsed = site.clock.seconds() - self._body_started
            if elapsed < allowed:
                self._body_deadline = site.clock.callLater(allowed - elapsed,
                                                           self._body_deadline_passed)
                return
        site.client_timed_out(self.channel, "body")
        self._stop_reading(408)
        self._answer_on_stream(408, "request_timeout", "The request body did not arrive in time.")

    def _stop_reading(self, code: int) -> Any:
        """
        The request is answered C{code} before it is whole: the rest of its
        body is not read, and it never reaches process(). Named for the
        access log and counted; the site (or None).
        """
        self._refused = True
        self._stop_body_deadline()
        # Whatever of the body is already buffered is dropped, not stored.
        self.content = io.BytesIO()
        # No "100 Continue" for a body we will not read.
        self.requestHeaders.removeHeader(b"expect")
        site: Any = getattr(self.channel, "site", None)
        if not isinstance(site, ProxySite):
            return None
        command, target, route = self._early
        self.method = command or b"-"
        self.path = (target or b"-").split(b"?", 1)[0]
        if route is not None:
            context(self).route = route
        # The guard counts every other request; this one never reaches it.
        site.metrics.request(route.name if route is not None else "-", code)
        return site

    def _refuse_too_large(self) -> None:
        site = self._stop_reading(413)
        detail = f"The request body is larger than {self._limit} bytes."
        if self.stream_id is not None:
            # An HTTP/2 stream may still be being set up (headers are read
            # one by one): answer once the stream is whole.
            if site is not None:
                site.clock.callLater(0, self._answer_on_stream, 413, "body_too_large", detail)
            return
        content_type, body = self._error_body(413, "body_too_large", detail)
        if site is not None:
            self.code = 413
            self.sentLength = len(body)
            site.log_request(self)
        channel: Any = self.channel
        extra = b"".join(name + b": " + value + b"\r\n"
                         for name, value in self._page_headers(content_type).items())
        channel.refuse(413, b"Content Too Large",
                       b"Content-Type: " + content_type + b"\r\nCache-Control: no-store\r\n" + extra,
                       body)

    def refuse_headers(self, limit: int) -> None:
        """
        An HTTP/2 request whose header list is over C{limit} bytes: 431 on
        its stream (over HTTP/1.1 the channel answers an over-long line).
        """
        if self._refused:
            return
        site = self._stop_reading(431)
        if site is not None:
            site.clock.callLater(0, self._answer_on_stream, 431, "headers_too_large",
                                 f"The request headers are larger than {limit} bytes.")

    def _error_body(self, code: int, error: str, detail: str) -> Tuple[bytes, bytes]:
        accept = b",".join(self.requestHeaders.getRawHeaders(b"accept", [])).lower()
        return error_body(code, error, detail, b"json" in accept)

    @staticmethod
    def _page_headers(content_type: bytes) -> Dict[bytes, bytes]:
        """An HTML answer's page headers (CSP, framing); none for JSON."""
        return PLAIN_PAGE_HEADERS if content_type.startswith(b"text/html") else {}

    def _answer_on_stream(self, code: int, error: str, detail: str) -> None:
        """
        The answer of an HTTP/2 stream not read to its end: this request's
        own, logged as it finishes; the stream is reset once it is out.
        """
        # Twisted's Request lets go of its channel when the client goes away.
        if self.finished or self.channel is None:
            return
        content_type, body = self._error_body(code, error, detail)
        self.setResponseCode(code)
        self.setHeader(b"content-type", content_type)
        self.setHeader(b"cache-control", b"no-store")
        for name, value in self._page_headers(content_type).items():
            self.setHeader(name, value)
        self.setHeader(b"content-length", b"%d" % len(body))
        self.write(body)
        self.finish()

    def process(self) -> None:
        if self._refused:
            return
        site = getattr(self.channel, "site", None)
        if self.stream_id is not None and isinstance(site, ProxySite) and site.draining:
            # A new stream on an HTTP/2 connection that waits to close: not
            # served (over HTTP/1.1 the channel reads no further request).
            self.site = site
            self.setResponseCode(503)
            self.setHeader(b"retry-after", b"5")
            self.setHeader(b"content-length", b"0")
            self.finish()
            return
        super().process()

    def write(self, data: bytes) -> None:
        if not self.startedWriting:
            ctx = peek(self)
            if ctx is not None:
                ctx.apply_answer(self)
        super().write(data)

    def connectionLost(self, reason: Failure) -> None:
        self._stop_body_deadline()
        was_finished = self.finished or (self._refused and self.stream_id is None)
        channel = self.channel
        site = getattr(channel, "site", None)
        if self.path is None:
            # The connection closed before the request was whole (request
            # line, headers or body cut off, or a malformed request line): it
            # never reached process(). It is named by what did arrive.
            command, target, route = self._early
            if command is None:
                command, target = self._request_line()
            self.method = command or b"-"
            self.path = (target or b"-").split(b"?", 1)[0]
            if route is not None:
                context(self).route = route
        super().connectionLost(reason)
        if not was_finished and isinstance(site, ProxySite):
            # 499 when the client left first; the status of the answer the
            # channel gave itself (400, 431, ...) when it closed the connection.
            answered = getattr(channel, "answered", None)
            site.log_request(self, status=answered if answered is not None else 499)


_PROTOS = {b"HTTP/1.1": "HTTP/1.1", b"HTTP/1.0": "HTTP/1.0"}
"""The common request-line versions, decoded once."""


def _proto(request: Any) -> str:
    """The protocol a request came in (C{HTTP/1.1}, C{HTTP/2}); C{-} before a valid request line."""
    if getattr(request, "stream_id", None) is not None:
        return "HTTP/2"
    proto = getattr(request, "clientproto", None)
    known = _PROTOS.get(proto)  # type: ignore[arg-type]
    if known is not None:
        return known
    if not (isinstance(proto, bytes) and proto.startswith(b"HTTP/")):
        proto = getattr(request.channel, "version", None)
    if isinstance(proto, bytes) and proto.startswith(b"HTTP/") and len(proto) <= 16:
        return proto.decode("ascii", "backslashreplace")
    return "-"


def _client(request: Any) -> str:
    peer = request.getClientAddress()
    return str(getattr(peer, "host", "-"))


class ProxySite(ClientConnections, server.Site):
    """
    A L{Site} for the proxy: L{ProxyRequest}s, an idle timeout for keep-alive
    connections, deadlines and connection caps for clients (L{ClientLimits}),
    and an access log of structured events that never include a query
    string, a cookie or an C{Authorization} value.

    @param body_limit: C{(host header, raw request target) -> max body bytes}.
    @param metrics: counts the requests refused before they reach the
        resource (an L{oidcproxy.core.metrics.Metrics}; the guard counts the rest),
        the open client connections, the refused ones and the timeouts.
    @param limits: what clients may hold and how slowly they may send;
        replaced on reload (for the connections and deadlines to come).
    @param http2: offer HTTP/2 (C{h2}) in the TLS handshake (ALPN), when
        Twisted can speak it (its C{http2} extra is installed); otherwise
        only C{http/1.1} is offered.
    @param http2_max_streams: the requests one HTTP/2 connection may have in
        flight at once (C{SETTINGS_MAX_CONCURRENT_STREAMS}).
    """

    requestFactory = ProxyRequest
    protocol = ProxyChannel  # type: ignore[assignment]

    def __init__(
        self,
        resource: IResource,
        clock: IReactorTime,
        body_limit: BodyLimit,
        keepalive_timeout: float = 75.0,
        access_log: bool = True,
        reactor: Any = None,
        max_header_size: int = 16384,
        metrics: Optional[NullMetrics] = None,
        limits: Optional[ClientLimits] = None,
        http2: bool = True,
        http2_max_streams: int = 100,
    ) -> None:
        super().__init__(resource, timeout=keepalive_timeout, reactor=reactor)
        self.metrics = metrics if metrics is not None else NullMetrics()
        self.max_header_size = max_header_size
        self.clock = clock
        self.body_limit = body_limit
        self.access_log = access_log
        self.limits = limits if limits is not None else ClientLimits()
        # Twisted's default version banner is not for strangers.
        self.displayTracebacks = False
        self.http2 = http2 and H2_ENABLED
        self.http2_max_streams = http2_max_streams
        self.draining = False
        self._init_connections()

    def acceptableProtocols(self) -> List[bytes]:
        """What this site offers in a TLS handshake (ALPN), preferred first."""
        return [b"h2", b"http/1.1"] if self.http2 else [b"http/1.1"]

    def serve_http2(self, channel: Any) -> None:
        if not self.http2:
            # Not offered, so not chosen: a client that claims it anyway is cut.
            channel.transport.abortConnection()
            return
        switch_to_http2(channel)

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        # One header line (the Cookie line) and all headers together.
        channel.MAX_LENGTH = self.max_header_size
        channel.totalHeadersSize = self.max_header_size
        return channel

    def log(self, request: Any) -> None:
        self.log_request(request)

    def log_request(self, request: Any, status: Optional[int] = None) -> None:
        """
        One access-log event for C{request}, with C{status} (default: the
        code it was answered with). A request that never got its method and
        path logs C{-} for them.
        """
        if not self.access_log:
            return
        started = getattr(request, "started", None)
        duration_ms = round((self.clock.seconds() - started) * 1000, 1) if started is not None else 0.0
        ctx = peek(request)
        if ctx is not None:
            route = ctx.route
            who = ctx.identity
            user = ctx.user or (who.sub if who is not None else "-")
            auth = ctx.auth
            provider = ctx.provider
        else:
            route = None
            user = auth = "-"
            provider = None
        raw_path = getattr(request, "path", None)
        if raw_path is not None:
            path = raw_path.decode("ascii", "backslashreplace")
            method = request.method.decode("ascii", "backslashreplace")
        else:
            path = method = "-"
        if status is None:
            status = request.code
        client = _client(request)
        sent = request.sentLength
        route_name, upstream = (route.name, route.upstream) if route is not None else ("-", "-")
        proto = _proto(request)
        # One event, made here as Logger.info would make it (its level check
        # and keyword copies are a good part of the cost of a line). The
        # text is made once: a format string of a dozen fields costs every
        # text observer a dozen formatting calls per request. The fields
        # stay in the event for JSON observers.
        line = (f'{client} "{method} {path}" {status} {sent} {duration_ms}ms '
                f"route={route_name} upstream={upstream} user={user} auth={auth} proto={proto}")
        if provider is not None:
            # Last, and only for a named provider's user: the lines that
            # parsers read before stay as they were.
            line += f" provider={provider}"
        access_log.observer({
            "access_line": line,
            "user": user,
            "auth": auth,
            "client": client,
            "method": method,
            "path": path,
            "status": status,
            "bytes": sent,
            "duration_ms": duration_ms,
            "route": route_name,
            "upstream": upstream,
            "proto": proto,
            "provider": provider or "-",
            "log_logger": access_log,
            "log_level": LogLevel.info,
            "log_namespace": access_log.namespace,
            "log_source": access_log.source,
            "log_format": "{access_line}",
            "log_time": time.time(),
        })
