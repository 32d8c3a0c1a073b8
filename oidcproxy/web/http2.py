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
    wait quietly on a slow upstream), counted from the end of its last
    request: frames other than requests (PING) do not keep it open;
  - at most C{http2_max_concurrent_streams} requests in flight; a header
    list over the proxy's header limit is answered 431 on its stream;
    stream resets are a token bucket (rapid reset); a header block kept
    open with CONTINUATION frames is cut off past twice the header limit;
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
from h2.settings import SettingCodes, Settings
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web._http2 import _END_STREAM_SENTINEL, H2Connection

from .connections import ABORT_AFTER, ClientConnections

RESET_RATE = 33.0
"""Stream resets by a client per second, past its burst (as Twisted 26's own bucket)."""

HEADER_FIELD_OVERHEAD = 32
"""What RFC 9113 (6.5.2) counts for each header field besides its name and value."""

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
    max_header_list = 65536
    """Header-list size (RFC 9113's count) above which a request is answered 431."""

    def __init__(self, reactor: Any = None) -> None:
        super().__init__(reactor=reactor)
        self._parked: Set[int] = set()
        self._reset_burst = self._reset_tokens = 200.0
        self._reset_time = self._reactor.seconds()

    def set_limits(self, max_streams: int, max_header_list: int) -> None:
        """
        Before the connection starts: at most C{max_streams} requests in
        flight, advertised with a header list of at most C{max_header_list}
        (a larger one is answered 431 on its stream; one over twice that
        closes the connection, as does a header block still growing past
        it). Stream resets by the client: a burst of twice C{max_streams},
        then Twisted's 33 a second.
        """
        self.max_header_list = max_header_list
        self.conn.local_settings = Settings(client=False, initial_values={
            SettingCodes.MAX_CONCURRENT_STREAMS: max_streams,
            SettingCodes.MAX_HEADER_LIST_SIZE: max_header_list,
        })
        # HPACK's decoder refuses (and h2 closes the connection) past this;
        # it must decode a block to keep the connection's compression state,
        # so a request between the two gets its 431 on its own stream.
        self.conn.decoder.max_header_list_size = 2 * max_header_list
        self._reset_burst = self._reset_tokens = 2.0 * max_streams

    def connectionMade(self) -> None:
        super().connectionMade()
        site = self.site
        if isinstance(site, ClientConnections) and site.limits.header_timeout > 0:
            self._deadline = site.clock.callLater(site.limits.header_timeout, self._deadline_passed)

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        pending = getattr(self.conn.incoming_buffer, "_headers_buffer", None)
        if pending and sum(len(frame.data) for frame in pending) > 2 * self.max_header_list:
            # A header block still open (CONTINUATION frames) that has grown
            # past what its decoding would accept: h2 alone would buffer 64
            # frames (a MiB) before giving up.
            self._close(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
            return
        if self._deadline is not None and self.conn.highest_inbound_stream_id > 0:
            # The first request's headers are in.
            self.stop_deadlines()
        if self._parked:
            self._unpark()

    def _closing(self) -> bool:
        transport: Any = self.transport
        return not self._stillProducing or transport is None or transport.disconnecting

    def _requestReceived(self, event: Any) -> None:
        if self._closing():
            # Closed (a flood cut off) while the rest of what the client sent
            # is read: Twisted would start the requests of the streams that
            # follow, and never tell them their connection is gone.
            return
        super()._requestReceived(event)
        size = sum(len(name) + len(value) + HEADER_FIELD_OVERHEAD for name, value in event.headers)
        if size > self.max_header_list:
            request = getattr(self.streams[event.stream_id], "_request", None)
            refuse = getattr(request, "refuse_headers", None)
            if refuse is not None:
                refuse(self.max_header_list)

    def _requestDataReceived(self, event: Any) -> None:
        if event.stream_id in self.streams:
            super()._requestDataReceived(event)

    def _requestEnded(self, event: Any) -> None:
        if event.stream_id in self.streams:
            super()._requestEnded(event)

    def _requestAborted(self, event: Any) -> None:
        if event.stream_id not in self.streams:
            return
        super()._requestAborted(event)
        # Rapid reset (CVE-2023-44487): a token bucket of stream resets.
        # Twisted 26 has one too (a burst of 1,000), Twisted 25 none.
        now = self._reactor.seconds()
        self._reset_tokens = min(self._reset_burst,
                                 self._reset_tokens + max(0.0, now - self._reset_time) * RESET_RATE)
        self._reset_time = now
        if self._reset_tokens < 1:
            self._close(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
        else:
            self._reset_tokens -= 1

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

    def resetTimeout(self) -> None:
        # Twisted restarts the idle timeout on any frame; without a request in
        # flight only a request does (PING, SETTINGS and WINDOW_UPDATE frames
        # do not keep an idle connection open): see _requestDone.
        if self.streams:
            super().resetTimeout()

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
        elif not self.streams and not self._closing():
            # Idle from now on.
            self.setTimeout(self.timeOut)

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
    connection.set_limits(getattr(site, "http2_max_streams", 100),
                          getattr(site, "max_header_size", ProxyH2Connection.max_header_list))
    channel.stop_deadlines()
    channel.setTimeout(None)
    transport.unregisterProducer()
    transport.wrappedProtocol = connection
    if isinstance(site, ClientConnections):
        site.channel_switched(channel, connection)
    connection.makeConnection(transport)
    transport.registerProducer(connection, True)
    return connection
