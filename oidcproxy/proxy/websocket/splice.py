"""
An upgraded connection after the upstream's C{101}: the client's connection
taken over from its HTTP channel and spliced to the upstream's, bytes copied
both ways (never parsed as frames) until either side closes, with the
socket's lifetime and closing timers.

Each side is registered as the producer of the other side's transport, so a
peer that does not read pauses the one that writes (no buffering beyond the
transports' own). Either side closing closes the other.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.server import Request
from zope.interface import implementer

from ...config import RouteConfig
from ...core.context import RequestContext
from ...core.metrics import NullMetrics
from ..headers import HOP_BY_HOP, header_tokens

__all__ = ["CLOSE_GRACE", "ClientSide", "Splice", "SpliceSide", "switching_head"]

log = Logger()

CLOSE_GRACE = 10.0
"""Seconds a closing side gets to flush what it still has to send before it is aborted."""


@implementer(IPushProducer)
class SpliceSide(Protocol):
    """
    One side of a splice, and the producer of the other side's transport:
    when the other side cannot keep up, this side's transport stops reading.
    """

    transport: Any

    def pauseProducing(self) -> None:
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.transport.loseConnection()


class ClientSide(SpliceSide):
    """The client's connection after the 101, fed by its HTTP channel."""

    def __init__(self, splice: Splice) -> None:
        self._splice = splice

    def dataReceived(self, data: bytes) -> None:
        self._splice.from_client(data)


def switching_head(request: Any, guard: RequestContext, reason: bytes,
                   headers: List[Tuple[bytes, bytes]], raw: Headers) -> bytes:
    """
    The C{101} the client gets: the upstream's answer C{headers} (C{raw}
    holds the same) less the hop-by-hop ones and the C{Set-Cookie} values
    the guard refuses (the proxy's own cookie names), with the upgrade;
    then the C{Set-Cookie} and other headers the guard meant to add to this
    request's answer (C{guard}, its context: a refreshed session cookie,
    say), as they would go out with any answer.
    """
    named = header_tokens(raw, b"connection")
    lines = [b"HTTP/1.1 101 " + (reason or b"Switching Protocols")]
    for name, value in headers:
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in named or lower == b"content-length":
            continue
        if lower == b"set-cookie" and guard.refuses_cookie(value):
            continue
        lines.append(name + b": " + value)
    lines.append(b"Upgrade: " + b", ".join(raw.getRawHeaders(b"upgrade", [])))
    lines.append(b"Connection: Upgrade")
    lines.extend(b"Set-Cookie: " + c
                 for c in request.responseHeaders.getRawHeaders(b"set-cookie", []))
    lines.extend(b"Set-Cookie: " + c for c in guard.cookies)
    lines.extend(name + b": " + value for name, value in guard.headers)
    return b"\r\n".join(lines) + b"\r\n\r\n"


class Splice:
    """
    The two connections of one upgraded request, from the 101 until either
    side closes.

    The client's connection is taken over the way Twisted's own WebSocket
    server (C{twisted.web.websocket.WebSocketResource}) does it: the HTTP
    channel stays the transport's protocol, and its C{dataReceived} and
    C{connectionLost} are pointed at the splice. Autobahn's
    C{WebSocketResource} rebinds the transport's protocol instead; this way
    works the same for TCP and TLS listeners and on every Twisted the
    project supports. When the socket ends, the request is finished: one
    access-log event (status 101, its duration and the bytes sent to the
    client), and the request counted like any other.

    @param upstream: the upstream's connection, its answer head read.
    @param ended: called once when the socket ends (to leave the registry).
    """

    def __init__(self, request: Request, upstream: SpliceSide, route: RouteConfig,
                 clock: IReactorTime, metrics: NullMetrics, ended: Callable[[], None]) -> None:
        self._request = request
        self._upstream = upstream
        self._route = route
        self._clock = clock
        self._metrics = metrics
        self._ended = ended
        self._client: Optional[ClientSide] = None
        self._channel: Any = None
        self._lifetime: Optional[IDelayedCall] = None
        self._grace: Dict[Any, IDelayedCall] = {}
        self.open = False
        self.to_client = 0
        self.to_upstream = 0
        self.closed_by: Optional[str] = None

    def start(self, channel: Any, transport: Any, head: bytes, reason: bytes,
              lifetime: float) -> None:
        """
        Take the client's connection (C{transport}, of HTTP C{channel}) over,
        send it the 101 C{head}, and splice; the socket is closed after
        C{lifetime} seconds (0: never).
        """
        request = self._request
        upstream = self._upstream
        # From here on the channel parses no more HTTP: what the client sends
        # goes to the upstream, and the end of its connection ends the socket.
        client = ClientSide(self)
        self._client = client
        self._channel = channel
        # The channel stays the transport's protocol (under TLS and behind
        # Twisted's protocol-negotiating wrapper too); these instance
        # attributes shadow its methods until the socket ends. The same two
        # assignments as Twisted's own WebSocket server makes, in
        # HTTPChannel._protocolUpgradeForWebsockets (private, so not called).
        channel.dataReceived = client.dataReceived
        channel.connectionLost = self._client_lost
        transport.unregisterProducer()
        forget = getattr(getattr(channel, "site", None), "forget_channel", None)
        if forget is not None:
            # A drain at shutdown does not wait for a socket to end.
            forget(channel)
        client.makeConnection(transport)
        transport.registerProducer(upstream, True)
        upstream.transport.registerProducer(client, True)
        # The channel may have paused reading while the request was served.
        transport.resumeProducing()
        request.setResponseCode(101, reason or b"Switching Protocols")
        # The head goes out here, not through request.write (which would add
        # Transfer-Encoding); finish() at the end must not write one either.
        request.startedWriting = 1
        transport.write(head)
        self.open = True
        self._metrics.websocket_upgrade("upgraded")
        self._metrics.websocket_open(1)
        if lifetime > 0:
            self._lifetime = self._clock.callLater(lifetime, self.close, "max_lifetime")
        log.info("WebSocket open on {route} to {upstream}", route=self._route.name,
                 upstream=self._route.upstream)

    def from_upstream(self, data: bytes) -> None:
        if not self.open:
            return
        self.to_client += len(data)
        self._metrics.websocket_bytes("to_client", len(data))
        assert self._client is not None
        self._client.transport.write(data)

    def from_client(self, data: bytes) -> None:
        if not self.open:
            return
        self.to_upstream += len(data)
        self._metrics.websocket_bytes("to_upstream", len(data))
        self._upstream.transport.write(data)

    def upstream_lost(self, reason: Failure) -> None:
        if self.open:
            self.close("upstream")
        self._stop_grace(self._upstream)

    def close(self, why: str) -> None:
        """
        End the socket (C{why}: C{upstream}, C{client}, C{max_lifetime},
        C{logout}, C{shutdown}): each side flushes what it has and is closed,
        or aborted after L{CLOSE_GRACE} seconds.
        """
        if not self.open:
            return
        self.open = False
        self.closed_by = why
        self._ended()
        self._metrics.websocket_open(-1)
        if self._lifetime is not None and self._lifetime.active():
            self._lifetime.cancel()
        self._lifetime = None
        if why not in ("upstream", "client"):
            log.info("WebSocket on {route} closed: {why}", route=self._route.name, why=why)
        for side, gone in ((self._upstream, "upstream"), (self._client, "client")):
            transport = side.transport if side is not None else None
            if transport is None or why == gone:
                continue
            transport.loseConnection()
            self._grace[side] = self._clock.callLater(CLOSE_GRACE, transport.abortConnection)

    def _stop_grace(self, side: Any) -> None:
        call = self._grace.pop(side, None)
        if call is not None and call.active():
            call.cancel()

    def _client_lost(self, reason: Failure) -> None:
        """The client's connection is gone: the socket ends, and so does its request."""
        channel = self._channel
        # The channel's own methods again, for its clean-up below.
        del channel.dataReceived
        del channel.connectionLost
        self.close("client")
        self._stop_grace(self._client)
        request = self._request
        request.sentLength = self.to_client
        # Logs the socket's end (status 101, duration, bytes to the client)
        # and fires notifyFinish; then the channel's own clean-up.
        request.finish()
        channel.connectionLost(reason)
