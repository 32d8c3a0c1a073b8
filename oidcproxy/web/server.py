"""
The HTTP server side: a L{Site} whose requests refuse an oversized body as
soon as its length shows, whose clients get deadlines to send their requests
and a cap on their connections, which drains at shutdown, and which writes
one structured access-log event per request.
"""

from __future__ import annotations

import io
from typing import Any, Callable, Dict, Optional, Set, Tuple

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.http import HTTPChannel
from twisted.web.resource import IResource

from ..config import ClientLimits
from ..core.context import context, peek
from ..core.metrics import NullMetrics
from ..core.pages import error_body
from .refusals import RefusalLog

access_log = Logger(namespace="oidcproxy.access")
log = Logger()

ABORT_AFTER = 10.0
"""Seconds a connection the proxy closes gets to take its last answer before it is cut."""

BodyLimit = Callable[[Optional[bytes], Optional[bytes]], Tuple[int, Any, Any]]
"""
C{(host header, raw request target) -> (max body bytes, route or None, match)}:
the match is C{(route table, host, target, RouteMatch)} or None, kept in the
request's context (C{early_match}) for the guard.
"""


class ProxyRequest(server.Request):
    """
    A request that knows when it started and refuses a body over its route's
    limit before reading it: on C{Content-Length}, or as the running count of
    a chunked body passes the limit. The early answer is written by the
    channel, which then closes the connection: the rest of the body is
    never read.

    Before its first bytes go out, the answer gets what the guard added to
    the request's context (cookies, headers, refused C{Set-Cookie} values):
    see L{RequestContext.apply_answer}.
    """

    started: Optional[float] = None
    _refused = False
    _received = 0
    _limit: Optional[int] = None
    _early: Tuple[Optional[bytes], Optional[bytes], Any] = (None, None, None)

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
            self._limit, route, context(self).early_match = site.body_limit(
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
        site: Any = getattr(self.channel, "site", None)
        if isinstance(site, ProxySite):
            # For the access log: this request never reaches process().
            command, target, route = self._early
            self.method = command or b"-"
            self.path = (target or b"-").split(b"?", 1)[0]
            if route is not None:
                context(self).route = route
            self.code = 413
            self.sentLength = len(body)
            site.log_request(self)
            # The guard counts every other request; this one never reaches it.
            site.metrics.request(route.name if route is not None else "-", 413)
        channel: Any = self.channel
        channel.refuse(413, b"Content Too Large",
                       b"Content-Type: " + content_type + b"\r\nCache-Control: no-store\r\n", body)

    def process(self) -> None:
        if self._refused:
            return
        super().process()

    def write(self, data: bytes) -> None:
        if not self.startedWriting:
            ctx = peek(self)
            if ctx is not None:
                ctx.apply_answer(self)
        super().write(data)

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
                context(self).route = route
        super().connectionLost(reason)
        if not was_finished and isinstance(site, ProxySite):
            # 499 when the client left first; the status of the answer the
            # channel gave itself (400, 431, ...) when it closed the connection.
            answered = getattr(channel, "answered", None)
            site.log_request(self, status=answered if answered is not None else 499)


def _peer_host(channel: HTTPChannel) -> Optional[str]:
    """The client's IP address; None for a peer without one (a UNIX socket)."""
    peer = channel.transport.getPeer() if channel.transport is not None else None
    host = getattr(peer, "host", None)
    return host if isinstance(host, str) else None


def _client(request: Any) -> str:
    peer = request.getClientAddress()
    return str(getattr(peer, "host", "-"))


class ProxyChannel(HTTPChannel):
    """
    An HTTP/1.1 channel whose limits the site sets: the header size (a
    chunked session cookie must fit in the one C{Cookie} line browsers
    send), and deadlines for a client to send its request (L{ClientLimits}).
    The site keeps track of its open channels, so that a shutdown can drain
    them.

    A request goes through the phases C{headers} (until its headers are in),
    C{body} (while a body is read) and C{handling} (the site has it, until
    its answer is sent); between requests a keep-alive connection is
    C{idle}, under Twisted's idle timeout (C{keepalive_timeout}). The header
    deadline runs from the connection's opening for its first request and
    from the first byte of each later one.
    """

    oidcproxy_address: Optional[str] = None
    """The client's address, while counted against C{max_client_connections_per_address}."""
    answered: Optional[int] = None
    """
    The status of the answer the channel gave itself before closing (400 for
    a malformed request, 431 for an over-long line, 408 for a client too
    slow, 503 when refused), for the access log.
    """
    phase = "headers"
    _deadline: Optional[IDelayedCall] = None
    _abort_call: Optional[IDelayedCall] = None
    _received = 0
    """Bytes of the current request received (C{headers} phase: whether any came)."""
    _body_received = 0
    _body_started = 0.0

    def connectionMade(self) -> None:
        super().connectionMade()
        site = getattr(self, "site", None)
        if isinstance(site, ProxySite) and site.channel_opened(self):
            self._arm(site.limits.header_timeout)

    def dataReceived(self, data: bytes) -> None:
        if self.phase == "idle":
            # The first byte of the next request on a keep-alive connection.
            self.phase = "headers"
            self._received = 0
            site = getattr(self, "site", None)
            if isinstance(site, ProxySite):
                self._arm(site.limits.header_timeout)
        self._received += len(data)
        super().dataReceived(data)

    def rawDataReceived(self, data: bytes) -> None:
        if self.phase == "body":
            self._body_received += len(data)
        super().rawDataReceived(data)

    def allHeadersReceived(self) -> None:
        super().allHeadersReceived()
        site = getattr(self, "site", None)
        if self.length != 0 and isinstance(site, ProxySite):
            self.phase = "body"
            self._body_received = 0
            self._body_started = site.clock.seconds()
            self._arm(site.limits.body_timeout)
        else:
            self._disarm()

    def allContentReceived(self) -> None:
        # Set first: the request may be answered (and the next one begun)
        # before this returns.
        self.phase = "handling"
        self._disarm()
        super().allContentReceived()

    def requestDone(self, request: Any) -> None:
        if self.persistent:
            # Any pipelined bytes are replayed from here, as new data.
            self.phase = "idle"
        super().requestDone(request)

    def _arm(self, seconds: float) -> None:
        """Start the deadline of the current phase (none when C{seconds} is 0)."""
        self._disarm()
        site = getattr(self, "site", None)
        if seconds > 0 and isinstance(site, ProxySite):
            self._deadline = site.clock.callLater(seconds, self._deadline_passed)

    def _disarm(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def close_unfinished(self) -> None:
        """
        At shutdown, a connection without a request in flight: closed at
        once, with a 503 when part of a request came (it was not served).
        """
        if getattr(self.transport, "disconnecting", False):
            return  # closing already
        if self.phase == "body" or (self.phase == "headers" and self._received):
            self.refuse(503, b"Service Unavailable", b"Retry-After: 5\r\n")
        else:
            self._disarm()
            self.loseConnection()
            self._abort_later()

    def stop_deadlines(self) -> None:
        """The connection is no longer ours (a WebSocket took it over)."""
        self._disarm()
        self.phase = "handling"

    def _deadline_passed(self) -> None:
        self._deadline = None
        site = getattr(self, "site", None)
        if not isinstance(site, ProxySite) or self.phase not in ("headers", "body"):
            return
        limits = site.limits
        if self.phase == "body" and limits.body_min_rate > 0:
            # mod_reqtimeout's MinRate: each body_min_rate bytes received
            # buy one more second.
            allowed = limits.body_timeout + self._body_received / limits.body_min_rate
            elapsed = site.clock.seconds() - self._body_started
            if elapsed < allowed:
                self._deadline = site.clock.callLater(allowed - elapsed, self._deadline_passed)
                return
        site.client_timed_out(self, self.phase)
        if self.phase == "headers" and not self._received:
            # Nothing of a request arrived: there is nothing to answer.
            self.loseConnection()
            self._abort_later()
        else:
            self.refuse(408, b"Request Timeout")

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._disarm()
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
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

    def refuse(self, code: int, phrase: bytes, headers: bytes = b"", body: bytes = b"") -> None:
        """
        Answer C{code} with C{body} (and the raw header lines C{headers},
        each ending in CRLF) and close the connection: for a request the
        site never sees (malformed, over-long, too large, too slow, refused).
        Once per connection.
        """
        self._disarm()
        transport: Any = self.transport
        if self.answered is None:
            self.answered = code
            transport.write(b"HTTP/1.1 %d %s\r\n%sContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                            % (code, phrase, headers, len(body), body))
        self.loseConnection()
        self._abort_later()

    def _abort_later(self) -> None:
        """
        A client that reads nothing could keep a closing connection open
        (its unsent answers filling the buffers): cut it after a while.
        """
        # Twisted's idle timeout has nothing left to do either.
        self.setTimeout(None)
        site = getattr(self, "site", None)
        if self._abort_call is None and isinstance(site, ProxySite):
            transport: Any = self.transport
            self._abort_call = site.clock.callLater(ABORT_AFTER, transport.abortConnection)


class ProxySite(server.Site):
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
        self._channels: Set[ProxyChannel] = set()
        self._per_address: Dict[str, int] = {}
        self._refusals = RefusalLog(clock)
        self._drained: Optional[Deferred[int]] = None
        self._drain_call: Optional[IDelayedCall] = None
        self.draining = False

    # -- client connections ------------------------------------------------------

    def channel_opened(self, channel: ProxyChannel) -> bool:
        """
        Count a new connection. False when it is not to be served: refused
        (over a cap: answered 503 and closed) or accepted during a drain.
        """
        if self.draining:
            # Accepted just before the listener closed: nothing to finish.
            channel.transport.loseConnection()  # type: ignore[union-attr]
            self._add(channel, None)
            return False
        limits = self.limits
        address = _peer_host(channel) if limits.max_per_address else None
        if len(self._channels) >= limits.max_connections:
            self._refuse(channel, "max_client_connections", limits.max_connections)
            return False
        if address is not None and self._per_address.get(address, 0) >= limits.max_per_address:
            self._refuse(channel, "max_client_connections_per_address", limits.max_per_address)
            return False
        self._add(channel, address)
        return True

    def _add(self, channel: ProxyChannel, address: Optional[str]) -> None:
        self._channels.add(channel)
        if address is not None:
            self._per_address[address] = self._per_address.get(address, 0) + 1
            channel.oidcproxy_address = address
        self.metrics.client_connections(1)

    def _refuse(self, channel: ProxyChannel, limit: str, value: int) -> None:
        self.metrics.client_connection_refused(limit)
        self._refusals.add(f"{limit} = {value}")
        channel.refuse(503, b"Service Unavailable", b"Retry-After: 5\r\n")

    def channel_closed(self, channel: Any) -> None:
        if channel in self._channels:
            self._channels.remove(channel)
            address = channel.oidcproxy_address
            if address is not None:
                left = self._per_address.pop(address, 1) - 1
                if left > 0:
                    self._per_address[address] = left
            self.metrics.client_connections(-1)
        if self._drained is not None and not self._channels:
            self._drain_done(0)

    def client_timed_out(self, channel: ProxyChannel, phase: str) -> None:
        """C{channel}'s client did not send its request's C{phase} in time: it is closed."""
        self.metrics.client_timeout(phase)

    def forget_channel(self, channel: Any) -> None:
        """
        C{channel}'s connection was taken over by another protocol (a
        WebSocket splice): no deadline applies to it any more, and a drain
        no longer waits for it.
        """
        stop: Any = getattr(channel, "stop_deadlines", None)
        if stop is not None:
            stop()
        self.channel_closed(channel)

    @property
    def open_connections(self) -> int:
        return len(self._channels)

    # -- graceful shutdown -------------------------------------------------------

    def drain(self, timeout: float) -> Deferred[int]:
        """
        Finish the requests in flight, then close their connections; close
        the others at once: idle keep-alive connections, and those whose
        client has not sent its whole request yet (answered 503 when part of
        one came). Call it once the listeners have stopped accepting.

        @param timeout: seconds to wait for the requests in flight; then their
            connections are aborted and the drain ends, whether or not they
            report closed.
        @return: a Deferred firing with the number of connections aborted,
            when every connection is closed or the timeout has passed.
        """
        self.draining = True
        busy = 0
        for channel in list(self._channels):
            if channel.phase == "handling":
                # Close the connection once its current response is sent.
                channel.persistent = False
                busy += 1
            else:
                channel.close_unfinished()
        if not self._channels:
            return succeed(0)
        d: Deferred[int] = Deferred()
        self._drained = d
        log.info("draining {busy} connection(s) with requests in flight for up to {timeout}s; "
                 "{closed} other connection(s) closed", busy=busy, timeout=timeout,
                 closed=len(self._channels) - busy)

        self._drain_call = self.clock.callLater(timeout, self._cut, "drain timeout")
        return d

    def abort_drain(self) -> None:
        """End a drain in progress at once, aborting what is left (a second SIGTERM)."""
        if self._drain_call is not None and self._drain_call.active():
            self._drain_call.cancel()
            self._cut("drain cut short")

    def _cut(self, why: str) -> None:
        self._drain_call = None
        left = list(self._channels)
        log.warn("{why}: aborting {count} connection(s) with requests in flight",
                 why=why, count=len(left))
        for channel in left:
            channel.transport.abortConnection()  # type: ignore[union-attr]
        # Done now, whether or not the aborted connections report closed.
        self._drain_done(len(left))

    def _drain_done(self, aborted: int) -> None:
        call, self._drain_call = self._drain_call, None
        if call is not None and call.active():
            call.cancel()
        drained, self._drained = self._drained, None
        if drained is not None:
            drained.callback(aborted)

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
        route = ctx.route if ctx is not None else None
        raw_path = getattr(request, "path", None)
        path = raw_path.decode("ascii", "backslashreplace") if raw_path is not None else "-"
        method = request.method.decode("ascii", "backslashreplace") \
            if raw_path is not None else "-"
        if status is None:
            status = request.code
        who = ctx.identity if ctx is not None else None
        fields = dict(
            user=(ctx.user if ctx is not None else None) or (who.sub if who is not None else "-"),
            auth=ctx.auth if ctx is not None else "-",
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
