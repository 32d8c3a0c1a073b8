"""
The HTTP server side: a L{Site} whose requests refuse an oversized body as
soon as its length shows, and which writes one structured access-log event
per request.
"""

from __future__ import annotations

import io
from typing import Any, Callable, Optional, Set, Tuple

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.http import HTTPChannel
from twisted.web.resource import IResource

from .metrics import NullMetrics
from .pages import error_body

access_log = Logger(namespace="oidcproxy.access")
log = Logger()

BodyLimit = Callable[[Optional[bytes], Optional[bytes]], Tuple[int, Any, Any]]
"""
C{(host header, raw request target) -> (max body bytes, route or None, match)}:
the match is C{(route table, host, target, RouteMatch)} or None, kept on the
request as C{oidcproxy_early_match} for the guard.
"""


class ProxyRequest(server.Request):
    """
    A request that knows when it started and refuses a body over its route's
    limit before reading it: on C{Content-Length}, or as the running count of
    a chunked body passes the limit. The early answer is written straight to
    the connection, which is then closed: the rest of the body is never read.
    """

    started: Optional[float] = None
    _refused = False
    _received = 0
    _limit: Optional[int] = None
    _early: Tuple[Optional[bytes], Optional[bytes], Any] = (None, None, None)
    oidcproxy_early_match: Any = None

    def __init__(self, channel: HTTPChannel, *args: Any, **kwargs: Any) -> None:
        super().__init__(channel, *args, **kwargs)
        site = getattr(channel, "site", None)
        if isinstance(site, ProxySite):
            # From the request line's arrival, as nginx's $request_time.
            self.started = site.clock.seconds()

    def gotLength(self, length: Optional[int]) -> None:
        site = getattr(self.channel, "site", None)
        if isinstance(site, ProxySite):
            # The request line has been parsed but not yet handed to us; the
            # channel keeps it until the body is in. Without it we fall back
            # to the largest limit of any route (the render-time check is
            # authoritative either way).
            target = getattr(self.channel, "_path", None)
            self._limit, route, self.oidcproxy_early_match = site.body_limit(
                self.requestHeaders.getRawHeaders(b"host", [None])[0], target)
            self._early = (getattr(self.channel, "_command", None), target, route)
            if length is not None and length > self._limit:
                self._refuse_too_large()
                return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        if self._limit is not None and self._received > self._limit:
            self._refuse_too_large()
            return
        super().handleContentChunk(data)

    def _refuse_too_large(self) -> None:
        self._refused = True
        # Whatever of the body is already buffered is dropped, not stored.
        self.content = io.BytesIO()
        # No "100 Continue" for a body we will not read.
        self.requestHeaders.removeHeader(b"expect")
        accept = b",".join(self.requestHeaders.getRawHeaders(b"accept", [])).lower()
        content_type, body = error_body(
            413, "body_too_large",
            f"The request body is larger than {self._limit} bytes.",
            b"json" in accept,
        )
        head = (
            b"HTTP/1.1 413 Content Too Large\r\n"
            b"Content-Type: " + content_type + b"\r\n"
            b"Content-Length: " + str(len(body)).encode("ascii") + b"\r\n"
            b"Cache-Control: no-store\r\n"
            b"Connection: close\r\n\r\n"
        )
        site: Any = getattr(self.channel, "site", None)
        if isinstance(site, ProxySite):
            # For the access log: this request never reaches process().
            command, target, route = self._early
            self.method = command or b"-"
            self.path = (target or b"-").split(b"?", 1)[0]
            if route is not None:
                self.oidcproxy_route = route
            self.code = 413
            self.sentLength = len(body)
            site.log_request(self)
            # The guard counts every other request; this one never reaches it.
            site.metrics.request(route.name if route is not None else "-", 413)
        transport: Any = self.channel.transport
        transport.write(head + body)
        transport.loseConnection()

    def process(self) -> None:
        if self._refused:
            return
        super().process()

    def connectionLost(self, reason: Failure) -> None:
        was_finished = self.finished or self._refused
        channel = self.channel
        site = getattr(channel, "site", None)
        if self.path is None:
            # The connection closed before the request was whole (request
            # line, headers or body cut off, or a malformed request line): it
            # never reached process(). It is named by what did arrive.
            command, target, route = self._early
            if command is None:
                command = getattr(channel, "_command", None)
                target = getattr(channel, "_path", None)
            self.method = command or b"-"
            self.path = (target or b"-").split(b"?", 1)[0]
            if route is not None:
                self.oidcproxy_route = route
        super().connectionLost(reason)
        if not was_finished and isinstance(site, ProxySite):
            # 499 when the client left first; the status of the answer the
            # channel gave itself (400, 431, ...) when it closed the connection.
            answered = getattr(channel, "answered", None)
            site.log_request(self, status=answered if answered is not None else 499)


def _client(request: Any) -> str:
    peer = request.getClientAddress()
    return str(getattr(peer, "host", "-"))


class ProxyChannel(HTTPChannel):
    """
    An HTTP/1.1 channel whose header limits the site sets: a chunked session
    cookie must fit in the one C{Cookie} line browsers send. The site keeps
    track of its open channels, so that a shutdown can drain them.
    """

    answered: Optional[int] = None
    """
    The status of the answer the channel gave itself before closing (400 for
    a malformed request, 431 for an over-long line), for the access log.
    """

    def connectionMade(self) -> None:
        super().connectionMade()
        site = getattr(self, "site", None)
        if isinstance(site, ProxySite):
            site.channel_opened(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        try:
            super().connectionLost(reason)
        finally:
            # Whatever a request's clean-up raised: a connection that is
            # gone is never counted (nor waited for by a drain) again.
            site = getattr(self, "site", None)
            if isinstance(site, ProxySite):
                site.channel_closed(self)

    def lineLengthExceeded(self, line: bytes) -> None:
        """
        A request line or header line over the limit (an over-long URL,
        Cookie or Authorization header): Twisted would only drop the
        connection, which a browser shows as a network error. Say why first.
        """
        self.refuse(431, b"Request Header Fields Too Large")

    def _respondToBadRequestAndDisconnect(self) -> None:
        # Twisted's answer to a malformed request (line, header, chunked
        # body), with its length and the close said, and its status noted.
        self.refuse(400, b"Bad Request")

    def refuse(self, code: int, phrase: bytes) -> None:
        """
        Answer C{code} with no body and close the connection: for a request
        the site never sees (malformed, over-long). Once per connection.
        """
        transport: Any = self.transport
        if self.answered is None:
            self.answered = code
            transport.write(b"HTTP/1.1 %d %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            % (code, phrase))
        self.loseConnection()


class ProxySite(server.Site):
    """
    A L{Site} for the proxy: L{ProxyRequest}s, an idle timeout for keep-alive
    connections, and an access log of structured events that never include a
    query string, a cookie or an C{Authorization} value.

    @param body_limit: C{(host header, raw request target) -> max body bytes}.
    @param metrics: counts the requests refused before they reach the
        resource (an L{oidcproxy.metrics.Metrics}; the guard counts the rest).
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
    ) -> None:
        super().__init__(resource, timeout=keepalive_timeout, reactor=reactor)
        self.metrics = metrics if metrics is not None else NullMetrics()
        self.max_header_size = max_header_size
        self.clock = clock
        self.body_limit = body_limit
        self.access_log = access_log
        # Twisted's default version banner is not for strangers.
        self.displayTracebacks = False
        self._channels: Set[HTTPChannel] = set()
        self._drained: Optional[Deferred[int]] = None
        self.draining = False

    # -- graceful shutdown -------------------------------------------------------

    def channel_opened(self, channel: HTTPChannel) -> None:
        if self.draining:
            # Accepted just before the listener closed: nothing to finish.
            channel.transport.loseConnection()  # type: ignore[union-attr]
        self._channels.add(channel)
        self.metrics.client_connections(1)

    def channel_closed(self, channel: HTTPChannel) -> None:
        if channel in self._channels:
            self._channels.remove(channel)
            self.metrics.client_connections(-1)
        if self._drained is not None and not self._channels:
            drained, self._drained = self._drained, None
            drained.callback(0)

    def forget_channel(self, channel: HTTPChannel) -> None:
        """
        C{channel}'s connection was taken over by another protocol (a
        WebSocket splice): a drain no longer waits for it.
        """
        self.channel_closed(channel)

    @property
    def open_connections(self) -> int:
        return len(self._channels)

    def drain(self, timeout: float) -> Deferred[int]:
        """
        Finish the requests in flight, then close their connections; close
        idle keep-alive connections at once. Call it once the listeners have
        stopped accepting.

        @param timeout: seconds to wait for the requests in flight; then their
            connections are aborted.
        @return: a Deferred firing with the number of connections aborted
            when every connection is closed.
        """
        self.draining = True
        aborted = 0
        for channel in list(self._channels):
            if channel.requests:
                # Close the connection once its current response is sent.
                channel.persistent = False
            else:
                channel.loseConnection()
        if not self._channels:
            return succeed(0)
        d: Deferred[int] = Deferred()
        self._drained = d
        log.info("draining {count} connection(s) for up to {timeout}s",
                 count=len(self._channels), timeout=timeout)

        def give_up() -> None:
            nonlocal aborted
            left = list(self._channels)
            aborted = len(left)
            log.warn("drain timeout: aborting {count} connection(s) with requests in flight",
                     count=aborted)
            for channel in left:
                channel.transport.abortConnection()  # type: ignore[union-attr]

        call = self.clock.callLater(timeout, give_up)

        def done(_: object) -> int:
            if call.active():
                call.cancel()
            return aborted

        return d.addCallback(done)

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
        route = getattr(request, "oidcproxy_route", None)
        raw_path = getattr(request, "path", None)
        path = raw_path.decode("ascii", "backslashreplace") if raw_path is not None else "-"
        method = request.method.decode("ascii", "backslashreplace") \
            if raw_path is not None else "-"
        if status is None:
            status = request.code
        who = getattr(request, "oidcproxy_identity", None)
        fields = dict(
            user=getattr(request, "oidcproxy_user", None) or (who.sub if who is not None else "-"),
            auth=getattr(request, "oidcproxy_auth", "-"),
            client=_client(request),
            method=method,
            path=path,
            status=status,
            bytes=request.sentLength,
            duration_ms=duration_ms,
            route=route.name if route is not None else "-",
            upstream=route.upstream if route is not None else "-",
        )
        # The text is made here, once: a format string of a dozen fields
        # costs every text observer a dozen formatting calls per request.
        # The fields stay in the event for JSON observers.
        access_log.info(
            "{access_line}",
            access_line=(
                f'{fields["client"]} "{fields["method"]} {path}" {status} {fields["bytes"]} '
                f"{duration_ms}ms route={fields['route']} upstream={fields['upstream']} "
                f"user={fields['user']} auth={fields['auth']}"),
            **fields,
        )
