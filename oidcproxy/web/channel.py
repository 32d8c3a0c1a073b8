"""
The HTTP/1.1 side of a client connection: L{ProxyChannel}, with header-size
limits, deadlines for the client to send its request, its own answers to
requests the site never sees (400, 408, 413, 431, 503), and the switch to
HTTP/2 when the TLS handshake chose it.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.interfaces import IDelayedCall, IHandshakeListener
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from zope.interface import implementer

from ..core.deadlines import Deadline
from .connections import ABORT_AFTER, ClientConnections

__all__ = ["ProxyChannel"]


@implementer(IHandshakeListener)
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

    Under TLS, a client whose handshake chose C{h2} (ALPN) is served by an
    HTTP/2 connection from its first byte on: see L{handshakeCompleted}.
    """

    command: Optional[bytes] = None
    """The method of the current request, once its request line is in (as C{H2Stream.command})."""
    path: Optional[bytes] = None
    """The raw target of the current request, once its request line is in (as C{H2Stream.path})."""
    version: Optional[bytes] = None
    """The protocol of the current request's line (C{HTTP/1.1}), once it is in."""
    _awaiting_line = True
    oidcproxy_address: Optional[str] = None
    """The client's address, while counted against C{max_client_connections_per_address}."""
    answered: Optional[int] = None
    """
    The status of the answer the channel gave itself before closing (400 for
    a malformed request, 431 for an over-long line, 408 for a client too
    slow, 503 when refused), for the access log.
    """
    phase = "headers"
    _deadline: Optional[Deadline] = None
    _abort_call: Optional[IDelayedCall] = None
    _received = 0
    """Bytes of the current request received (C{headers} phase: whether any came)."""
    _body_received = 0
    _body_started = 0.0

    _secure: Optional[bool] = None

    def isSecure(self) -> bool:
        """
        Twisted's answer (it adapts the transport to C{ISSLTransport}, for
        every request that asks), kept for the connection once it has its
        transport: a connection does not change its transport.
        """
        secure = self._secure
        if secure is None:
            secure = super().isSecure()
            if self.transport is not None:
                self._secure = secure
        return secure

    def connectionMade(self) -> None:
        super().connectionMade()
        site = getattr(self, "site", None)
        if isinstance(site, ClientConnections) and site.channel_opened(self):
            self._arm(site.limits.header_timeout)

    def dataReceived(self, data: bytes) -> None:
        starts = self.phase == "idle"
        if starts:
            # The first byte of the next request on a keep-alive connection.
            self.phase = "headers"
            self._received = 0
        self._received += len(data)
        super().dataReceived(data)
        if starts and self.phase == "headers" and self._deadline is None \
                and self.answered is None and not getattr(self.transport, "disconnecting", False):
            # The header deadline, from this first byte, once the headers
            # are known not to have come whole with it (they mostly do:
            # then there is no deadline to start and stop).
            site = getattr(self, "site", None)
            if isinstance(site, ClientConnections):
                self._arm(site.limits.header_timeout)

    def lineReceived(self, line: bytes) -> None:
        awaiting = self._awaiting_line and line != b""
        if awaiting:
            self._awaiting_line = False
            self.command = self.path = self.version = None
        super().lineReceived(line)
        if awaiting and self.answered is None:
            # Twisted took it as a request line (a malformed one is
            # answered 400): its method and target, for the request to read
            # before the channel hands them over with the whole request.
            parts = line.split()
            if len(parts) == 3:
                self.command, self.path, self.version = parts

    def rawDataReceived(self, data: bytes) -> None:
        if self.phase == "body":
            self._body_received += len(data)
        super().rawDataReceived(data)

    def allHeadersReceived(self) -> None:
        super().allHeadersReceived()
        site = getattr(self, "site", None)
        if self.length != 0 and isinstance(site, ClientConnections):
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
        self._awaiting_line = True
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
        if seconds > 0 and isinstance(site, ClientConnections):
            self._deadline = site.deadlines.add(seconds, self._deadline_passed)

    def _disarm(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def handshakeCompleted(self) -> None:
        """
        The TLS handshake is over: when it chose C{h2}, an HTTP/2 connection
        takes this one over (this channel has read nothing yet).
        """
        site = getattr(self, "site", None)
        if getattr(self.transport, "negotiatedProtocol", None) == b"h2" and self.answered is None \
                and isinstance(site, ClientConnections):
            site.serve_http2(self)

    def drain(self) -> bool:
        """
        At shutdown: True when a request is in flight (the connection closes
        once it is answered); otherwise the connection is closed now.
        """
        if self.phase == "handling":
            self.persistent = False
            return True
        self.close_unfinished()
        return False

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
        if not isinstance(site, ClientConnections) or self.phase not in ("headers", "body"):
            return
        limits = site.limits
        if self.phase == "body" and limits.body_min_rate > 0:
            # mod_reqtimeout's MinRate: each body_min_rate bytes received
            # buy one more second.
            allowed = limits.body_timeout + self._body_received / limits.body_min_rate
            elapsed = site.clock.seconds() - self._body_started
            if elapsed < allowed:
                self._deadline = site.deadlines.add(allowed - elapsed, self._deadline_passed)
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
            if isinstance(site, ClientConnections):
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
        if self._abort_call is None and isinstance(site, ClientConnections):
            transport: Any = self.transport
            self._abort_call = site.clock.callLater(ABORT_AFTER, transport.abortConnection)


