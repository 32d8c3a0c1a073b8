"""
HTTP/2 for clients whose TLS handshake chose C{h2} (ALPN): Twisted's own
HTTP/2 server (C{twisted.web._http2}, on the C{h2} package) with the parts
of the proxy's client limits that belong to a connection.

Needs Twisted's C{http2} extra (C{pip install oidcproxy[http2]}); the site
imports this module only when Twisted can speak HTTP/2 at all.

The requests are the proxy's own L{oidcproxy.web.server.ProxyRequest}s, one
per stream: the guard, the upstream proxy, the access log and the body-size
limit see them as they see HTTP/1.1 requests. Per connection:

  - it holds the place in the connection counts of the HTTP/1.1 channel it
    took over (L{oidcproxy.web.connections.ClientConnections});
  - its client has C{client_header_timeout} seconds for the headers of its
    first request, and C{keepalive_timeout} is its idle timeout while no
    request is in flight (Twisted's would cut a connection whose requests
    wait quietly on a slow upstream);
  - a stream's body has C{client_body_timeout} and C{client_body_min_rate}
    (kept by its request: the stream is answered 408 and reset);
  - a drain closes it at once when idle, or once its requests in flight
    are answered; streams opened meanwhile are answered 503;
  - a stream whose client opens no flow-control window (it reads nothing)
    waits without costing CPU: Twisted's sending loop would call itself
    again at once for as long as such a stream has data queued (measured:
    a third of a core for one stalled download);
  - an answer cut off (its upstream broke off) resets its stream with
    C{INTERNAL_ERROR}, so the client does not take it for whole; the
    connection goes on;
  - a stream answered before its client sent the whole request (413, 408)
    is reset with C{NO_ERROR} once its answer is out, as RFC 9113 8.1 lets a
    server do, so that the client stops sending its body (Twisted would
    fail on the rest of it).

Twisted's HTTP/2 server has no public hooks for the last three: they
extend its sending loop (C{_sendPrioritisedData}) and C{_requestDone},
which every stream's end goes through; the tests of C{tests/test_http2.py}
pin what they rely on.
"""

from __future__ import annotations

from typing import Any, Optional, Set

import h2.errors
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web._http2 import _END_STREAM_SENTINEL, H2Connection

from .connections import ABORT_AFTER, ClientConnections

__all__ = ["ProxyH2Connection", "switch_to_http2"]


class ProxyH2Connection(H2Connection):
    """An HTTP/2 client connection of the proxy's site (see the module's docstring)."""

    requestFactory: Any = None
    oidcproxy_address: Optional[str] = None
    """The client's address, while counted against C{max_client_connections_per_address}."""
    draining = False
    """A drain is waiting for this connection's requests in flight."""
    _deadline: Optional[IDelayedCall] = None
    _abort_call: Optional[IDelayedCall] = None

    def __init__(self, reactor: Any = None) -> None:
        super().__init__(reactor=reactor)
        self._parked: Set[int] = set()

    def connectionMade(self) -> None:
        super().connectionMade()
        site = self.site
        if isinstance(site, ClientConnections) and site.limits.header_timeout > 0:
            self._deadline = site.clock.callLater(site.limits.header_timeout, self._deadline_passed)

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        if self._deadline is not None and self.conn.highest_inbound_stream_id > 0:
            # The first request's headers are in.
            self.stop_deadlines()
        if self._parked:
            self._unpark()

    def _sendPrioritisedData(self, *args: Any) -> None:
        # Park the streams with data queued but no window to send it in, so
        # that the loop waits (for a stream to send, or a window) instead of
        # calling itself again at once.
        for streamID, queue in self._outboundStreamQueues.items():
            if queue and queue[0] is not _END_STREAM_SENTINEL and streamID not in self._parked \
                    and self.conn.local_flow_control_window(streamID) <= 0:
                self._parked.add(streamID)
                self.priority.block(streamID)
        super()._sendPrioritisedData(*args)

    def _unpark(self) -> None:
        """After what the client sent (WINDOW_UPDATE, SETTINGS): wake the streams that may send again."""
        woken = False
        for streamID in list(self._parked):
            if streamID not in self.streams:
                self._parked.discard(streamID)
            elif self.conn.local_flow_control_window(streamID) > 0:
                self._parked.discard(streamID)
                self.priority.unblock(streamID)
                woken = True
        waiting = self._sendingDeferred
        if woken and waiting is not None:
            self._sendingDeferred = None
            waiting.callback(None)

    def stop_deadlines(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def _deadline_passed(self) -> None:
        self._deadline = None
        site = self.site
        if isinstance(site, ClientConnections):
            site.client_timed_out(self, "headers")
        self._close(h2.errors.ErrorCodes.NO_ERROR)

    def timeoutConnection(self) -> None:
        if self.streams:
            # Requests in flight: the connection is not idle. (A stream
            # whose body is late has its request's own deadline.)
            self.setTimeout(self.timeOut)
            return
        super().timeoutConnection()

    def drain(self) -> bool:
        """
        At shutdown: True when requests are in flight (the connection
        closes once they are answered); otherwise it is closed now.
        """
        if self.streams:
            self.draining = True
            return True
        self._close(h2.errors.ErrorCodes.NO_ERROR)
        return False

    def abortRequest(self, streamID: int) -> None:
        """
        Cut a stream whose answer broke off (C{H2Stream.abortConnection}):
        C{INTERNAL_ERROR}, so the client does not take what it got for whole.
        """
        self.conn.reset_stream(streamID, h2.errors.ErrorCodes.INTERNAL_ERROR)
        if self._tryToWriteControlData():
            self._requestDone(streamID)

    def _requestDone(self, streamID: int) -> None:
        super()._requestDone(streamID)
        stream = self.conn.streams.get(streamID)
        if stream is not None and not stream.closed and self._stillProducing:
            # Answered (or given up) before the client sent all of its
            # request: it need not send the rest.
            self.conn.reset_stream(streamID, h2.errors.ErrorCodes.NO_ERROR)
            self._tryToWriteControlData()
        if self.draining and not self.streams and self._stillProducing:
            self._close(h2.errors.ErrorCodes.NO_ERROR)

    def _close(self, code: int) -> None:
        """GOAWAY, then close; cut after L{ABORT_AFTER} seconds if the client reads nothing."""
        self.stop_deadlines()
        self.setTimeout(None)
        transport: Any = self.transport
        if transport is None or transport.disconnecting:
            return
        self.conn.close_connection(error_code=code)
        transport.write(self.conn.data_to_send())
        transport.loseConnection()
        if self._abort_call is None:
            self._abort_call = self.callLater(ABORT_AFTER, transport.abortConnection)

    def connectionLost(self, reason: Failure = connectionDone, _cancelTimeouts: bool = True) -> None:
        self.stop_deadlines()
        if _cancelTimeouts and self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
        try:
            super().connectionLost(reason, _cancelTimeouts)
        finally:
            site = self.site
            if isinstance(site, ClientConnections):
                site.channel_closed(self)


def switch_to_http2(channel: Any) -> ProxyH2Connection:
    """
    Serve the connection of the HTTP/1.1 C{channel}, whose TLS handshake
    chose C{h2}, with a L{ProxyH2Connection} from now on. C{channel} has
    read nothing yet; its transport is the TLS layer (a C{ProtocolWrapper}),
    which hands what it decrypts to its C{wrappedProtocol}.
    """
    transport = channel.transport
    site = channel.site
    connection = ProxyH2Connection(reactor=site.clock)
    connection.requestFactory = channel.requestFactory
    connection.site = site
    connection.factory = channel.factory
    connection.timeOut = channel.timeOut
    connection.callLater = channel.callLater  # type: ignore[method-assign]
    channel.stop_deadlines()
    channel.setTimeout(None)
    transport.unregisterProducer()
    transport.wrappedProtocol = connection
    if isinstance(site, ClientConnections):
        site.channel_switched(channel, connection)
    connection.makeConnection(transport)
    transport.registerProducer(connection, True)
    return connection
