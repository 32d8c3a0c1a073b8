"""
WebSockets behind the login: the HTTP/1.1 C{Upgrade} path of the proxy.

L{twisted.web.client.Agent} cannot hand over a connection after a
C{101 Switching Protocols}, so an upgrade request that the guard has let
through (authenticated and authorized like any other) takes this path
instead of the Agent's:

  1. a connection of its own to the route's upstream (TCP, or TLS verified
     with the route's C{ca_bundle} and client certificate, like its https
     requests);
  2. the request head, with the headers the normal path would send (hop-by-hop
     ones removed, identity and C{X-Forwarded-*} set) plus C{Connection:
     Upgrade} and the client's C{Upgrade};
  3. the upstream's answer head, read with a size bound: a C{101} is relayed
     and the two connections are spliced; any other answer is relayed as a
     normal response; a malformed or oversized head, or a connection refused
     or reset before it, is a 502, and no head within the route's C{timeout}
     a 504.

The splice is transport-level: bytes are copied both ways and never parsed as
frames. Each side is registered as the producer of the other side's transport,
so a peer that does not read pauses the one that writes (no buffering beyond
the transports' own). Either side closing closes the other.

The client's connection is taken over the way Twisted's own WebSocket server
(C{twisted.web.websocket.WebSocketResource}) does it: the HTTP channel stays
the transport's protocol, and its C{dataReceived} and C{connectionLost} are
pointed at the splice. Autobahn's C{WebSocketResource} rebinds the transport's
protocol instead; this way works the same for TCP and TLS listeners and on
every Twisted the project supports. When the socket ends, the request is
finished: one access-log event (status 101, its duration and the bytes sent to
the client), and the request counted like any other.

Every open socket is in the process's L{SocketRegistry}: it caps their number
(C{max_websockets}, 503 above) and closes those of a session at logout, and of
a user or IdP session at back-channel logout.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Dict, List, Optional, Tuple
from urllib.parse import urlsplit

from twisted.internet import error as ierror
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from ..config import RouteConfig, UpstreamSettings
from ..core.metrics import NullMetrics
from ..core.pages import render_error
from .connect import describe_failure, tls_policy
from .headers import HOP_BY_HOP, header_tokens, is_websocket_upgrade
from .routes import RouteMatch

log = Logger()

MAX_HEAD = 64 * 1024
"""The largest answer head read from an upstream (502 above)."""

CLOSE_GRACE = 10.0
"""Seconds a closing side gets to flush what it still has to send before it is aborted."""

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-5][0-9][0-9])(?: ([\t\x20-\x7e\x80-\xff]*))?")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")

EndpointFactory = Callable[[RouteConfig], IStreamClientEndpoint]
"""Builds the connection to a route's upstream (tests inject their own)."""


def parse_response_head(head: bytes) -> Tuple[int, bytes, List[Tuple[bytes, bytes]]]:
    """
    The status, reason and headers of an answer head (without its final
    empty line).

    @raise ValueError: a malformed status line or header line (obsolete line
        folding included: a proxy must not guess what it meant).
    """
    lines = head.split(b"\r\n")
    status = _STATUS_LINE.fullmatch(lines[0])
    if status is None:
        raise ValueError("malformed status line")
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            raise ValueError("malformed header line")
        value = value.strip(b" \t")
        if _BAD_VALUE.search(value):
            raise ValueError("control character in a header value")
        headers.append((name, value))
    return int(status.group(1)), status.group(2) or b"", headers


def request_head(method: bytes, target: bytes, host: bytes, headers: Headers,
                 upgrade: bytes) -> bytes:
    """The upgrade request as sent upstream: C{headers} plus the upgrade itself."""
    lines = [method + b" " + target + b" HTTP/1.1"]
    lines.extend(b"Host: " + v for v in headers.getRawHeaders(b"host", [host])[:1])
    for name, values in headers.getAllRawHeaders():
        if name.lower() != b"host":
            lines.extend(name + b": " + v for v in values)
    lines.append(b"Connection: Upgrade")
    lines.append(b"Upgrade: " + upgrade)
    return b"\r\n".join(lines) + b"\r\n\r\n"


class _ChunkedBody:
    """A chunked body's decoder (RFC 9112 7.1); trailers are read and dropped."""

    _MAX_LINE = 4096

    def __init__(self) -> None:
        self._buffer = b""
        self._left = 0
        self._state = "size"

    def feed(self, data: bytes) -> Tuple[List[bytes], bool]:
        """
        The body bytes in C{data}, and whether the body is complete.

        @raise ValueError: a malformed chunk.
        """
        buffer = self._buffer + data
        out: List[bytes] = []
        while True:
            if self._state == "data":
                piece = buffer[:self._left]
                if piece:
                    out.append(piece)
                    buffer = buffer[len(piece):]
                    self._left -= len(piece)
                if self._left:
                    break
                self._state = "crlf"
            elif self._state == "crlf":
                if len(buffer) < 2:
                    break
                if buffer[:2] != b"\r\n":
                    raise ValueError("malformed chunk end")
                buffer = buffer[2:]
                self._state = "size"
            else:
                end = buffer.find(b"\r\n")
                if end < 0:
                    if len(buffer) > self._MAX_LINE:
                        raise ValueError("chunk line too long")
                    break
                line, buffer = buffer[:end], buffer[end + 2:]
                if self._state == "trailer":
                    if not line:
                        self._buffer = b""
                        return out, True
                    continue
                size = line.split(b";", 1)[0].strip()
                if not size or any(c not in b"0123456789abcdefABCDEF" for c in size):
                    raise ValueError("malformed chunk size")
                self._left = int(size, 16)
                self._state = "data" if self._left else "trailer"
        self._buffer = buffer
        return out, False


class _SizedBody:
    """A body of C{Content-Length} bytes, or (None) one that ends with the connection."""

    def __init__(self, length: Optional[int]) -> None:
        self._left = length

    def feed(self, data: bytes) -> Tuple[List[bytes], bool]:
        if self._left is None:
            return [data], False
        piece = data[:self._left]
        self._left -= len(piece)
        return [piece], self._left == 0

    @property
    def complete(self) -> bool:
        return self._left == 0

    @property
    def ends_with_connection(self) -> bool:
        return self._left is None


class UpstreamEndpoints:
    """
    The default L{EndpointFactory}: a C{HostnameEndpoint} to the route's
    upstream with its C{connect_timeout}, wrapped in TLS for https upstreams
    with the same trust settings (C{ca_bundle}, client certificate) as the
    route's Agent. The TLS policy is built once per set of settings.
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._policies: Dict[Tuple[Optional[str], ...], Any] = {}

    def _policy(self, settings: UpstreamSettings) -> Any:

        key = (settings.ca_bundle, settings.client_cert, settings.client_key)
        if key not in self._policies:
            self._policies[key] = tls_policy(settings)
        return self._policies[key]

    def __call__(self, route: RouteConfig) -> IStreamClientEndpoint:
        parts = urlsplit(route.upstream)
        host = parts.hostname or ""
        https = parts.scheme == "https"
        port = parts.port or (443 if https else 80)
        endpoint: IStreamClientEndpoint = HostnameEndpoint(
            self._reactor, host, port, timeout=route.settings.connect_timeout)
        if https:
            creator = self._policy(route.settings).creatorForNetloc(host.encode("idna"), port)
            endpoint = wrapClientTLS(creator, endpoint)
        return endpoint


class SocketRegistry:
    """
    The upgraded connections of one proxy process (those still in their
    handshake too), by session id, IdP session id (C{sid}) and user (C{sub}).

    @ivar limit: how many may be open at once (C{max_websockets}).
    @ivar default_max_lifetime: the C{websocket_max_lifetime} of routes that
        set none (C{session.lifetime}); 0: no limit.
    """

    def __init__(self, limit: int = 1000, default_max_lifetime: float = 8 * 3600.0,
                 metrics: Optional[NullMetrics] = None) -> None:
        self.limit = limit
        self.default_max_lifetime = default_max_lifetime
        self.metrics = metrics if metrics is not None else NullMetrics()
        self._sockets: Dict[Any, Tuple[Optional[str], Optional[str], Optional[str]]] = {}

    def __len__(self) -> int:
        return len(self._sockets)

    def add(self, socket: Any, session_id: Optional[str], sid: Optional[str],
            sub: Optional[str]) -> bool:
        """Take C{socket} in; False (and nothing kept) when the registry is full."""
        if len(self._sockets) >= self.limit:
            return False
        self._sockets[socket] = (session_id, sid, sub)
        return True

    def discard(self, socket: Any) -> None:
        self._sockets.pop(socket, None)

    def close(self, session_id: Optional[str] = None, sid: Optional[str] = None,
              sub: Optional[str] = None, why: str = "logout") -> int:
        """
        Close the sockets opened with session C{session_id}, or in IdP
        session C{sid}, or by user C{sub} (whichever are given).

        @return: how many.
        """
        doomed = [
            socket for socket, (i, d, u) in self._sockets.items()
            if (session_id is not None and i == session_id)
            or (sid is not None and d == sid)
            or (sub is not None and u == sub)
        ]
        for socket in doomed:
            socket.close(why)
        return len(doomed)

    def close_all(self, why: str = "shutdown") -> int:
        doomed = list(self._sockets)
        for socket in doomed:
            socket.close(why)
        return len(doomed)


class WebSocketProxy:
    """
    The upgrade path of L{oidcproxy.proxy.upstream.UpstreamProxy}.

    @param clock: for the handshake timeout, the lifetime and close timers.
    @param sockets: the process's registry (shared with the guard for logout).
    @param endpoints: the connection to a route's upstream (default:
        L{UpstreamEndpoints}).
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
        session = getattr(request, "oidcproxy_session", None)
        who = getattr(request, "oidcproxy_identity", None)
        upgrade = _Upgrade(self, request, route, head)
        if not self.sockets.add(upgrade, getattr(session, "id", None),
                                getattr(session, "sid", None), getattr(who, "sub", None)):
            log.warn("WebSocket refused on {route}: max_websockets ({limit}) are open",
                     route=route.name, limit=self.sockets.limit)
            self.metrics.websocket_upgrade("over_capacity")
            return render_error(request, 503, "too_many_websockets",
                                "Too many WebSocket connections are open. Please try again later.",
                                {b"retry-after": b"5"})
        upgrade.start()
        return NOT_DONE_YET


@implementer(IPushProducer)
class _SpliceSide(Protocol):
    """
    One side of a splice, and the producer of the other side's transport:
    when the other side cannot keep up, this side's transport stops reading.
    """

    transport: Any

    def __init__(self, upgrade: _Upgrade) -> None:
        self._upgrade = upgrade

    def pauseProducing(self) -> None:
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.transport.loseConnection()


class _UpstreamSide(_SpliceSide):
    """The connection to the upstream: its answer head, then the splice."""

    def connectionMade(self) -> None:
        self._upgrade.upstream_connected(self)

    def dataReceived(self, data: bytes) -> None:
        self._upgrade.from_upstream(data)

    def connectionLost(self, reason: Failure = ierror.ConnectionDone) -> None:  # type: ignore[assignment]
        self._upgrade.upstream_lost(reason)


class _ClientSide(_SpliceSide):
    """The client's connection after the 101, fed by its HTTP channel."""

    def dataReceived(self, data: bytes) -> None:
        self._upgrade.from_client(data)


class _Upgrade:
    """
    One upgrade request: its handshake with the upstream and, after a 101,
    the spliced connection until either side closes.
    """

    def __init__(self, owner: WebSocketProxy, request: Request, route: RouteConfig,
                 head: bytes) -> None:
        self._owner = owner
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
        self._client: Optional[_ClientSide] = None
        self._channel: Any = None
        self._timer: Optional[IDelayedCall] = None
        self._lifetime: Optional[IDelayedCall] = None
        self._grace: Dict[Any, IDelayedCall] = {}
        self._body: Any = None
        self._opened = 0.0
        self.to_client = 0
        self.to_upstream = 0
        self.closed_by: Optional[str] = None

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
        if request.finished or getattr(request, "_disconnected", False):
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
        if self.state == "open":
            self.to_client += len(data)
            self._metrics.websocket_bytes("to_client", len(data))
            assert self._client is not None
            self._client.transport.write(data)
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
        elif state == "open":
            self.close("upstream")
        self._stop_grace(self._upstream)

    def _stop_grace(self, side: Any) -> None:
        call = self._grace.pop(side, None)
        if call is not None and call.active():
            call.cancel()

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
            self._body = _ChunkedBody() if chunked else _SizedBody(None)
        elif lengths:
            if len(set(lengths)) != 1 or not lengths[0].isdigit():
                self._fail(502, "upstream_failed", "invalid Content-Length")
                return
            self._body = _SizedBody(int(lengths[0]))
        else:
            self._body = _SizedBody(None)
        if code in (204, 304):
            self._body = _SizedBody(0)
        self._stop_timer()
        self._metrics.websocket_upgrade("refused")
        request = self._request
        request.setResponseCode(code, reason)
        out = request.responseHeaders
        out.removeHeader(b"server")
        out.removeHeader(b"content-type")
        setattr(request, "defaultContentType", None)  # noqa: B010

        named = header_tokens(raw, b"connection")
        for name, value in headers:
            lower = name.lower()
            if lower in HOP_BY_HOP or lower in named:
                continue
            out.addRawHeader(name, value)
        self.state = "answering"
        assert self._upstream is not None
        request.registerProducer(self._upstream, True)
        if isinstance(self._body, _SizedBody) and self._body.complete:
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
        if not request.finished and not getattr(request, "_disconnected", False):
            request.finish()

    def _answer_lost(self) -> None:
        if isinstance(self._body, _SizedBody) and self._body.ends_with_connection:
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
        if not getattr(request, "_disconnected", False) and not request.finished:
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
        named = header_tokens(raw, b"connection")
        # The guard's filter of the answer's Set-Cookie (the proxy's own
        # cookie names), which request.write would apply to any other answer.
        keep = getattr(getattr(request, "oidcproxy_pending_headers", None), "keep", None)
        lines = [b"HTTP/1.1 101 " + (reason or b"Switching Protocols")]
        for name, value in headers:
            lower = name.lower()
            if lower in HOP_BY_HOP or lower in named or lower == b"content-length":
                continue
            if lower == b"set-cookie" and keep is not None and not keep(value):
                continue
            lines.append(name + b": " + value)
        lines.append(b"Upgrade: " + b", ".join(raw.getRawHeaders(b"upgrade", [])))
        lines.append(b"Connection: Upgrade")
        lines.extend(_guard_headers(request))
        # From here on the channel parses no more HTTP: what the client sends
        # goes to the upstream, and the end of its connection ends the socket.
        client = _ClientSide(self)
        self._client = client
        self._channel = channel
        setattr(channel, "dataReceived", client.dataReceived)  # noqa: B010
        setattr(channel, "connectionLost", self._client_lost)  # noqa: B010
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
        transport.write(b"\r\n".join(lines) + b"\r\n\r\n")
        self.state = "open"
        self._opened = self._clock.seconds()
        self._metrics.websocket_upgrade("upgraded")
        self._metrics.websocket_open(1)
        lifetime = self._route.settings.websocket_max_lifetime
        if lifetime is None:
            lifetime = self._owner.sockets.default_max_lifetime
        if lifetime > 0:
            self._lifetime = self._clock.callLater(lifetime, self.close, "max_lifetime")
        log.info("WebSocket open on {route} to {upstream}", route=self._route.name,
                 upstream=self._route.upstream)
        if rest:
            self.from_upstream(rest)

    def from_client(self, data: bytes) -> None:
        if self.state != "open" or self._upstream is None:
            return
        self.to_upstream += len(data)
        self._metrics.websocket_bytes("to_upstream", len(data))
        self._upstream.transport.write(data)

    def close(self, why: str) -> None:
        """
        End the socket (C{why}: C{upstream}, C{client}, C{max_lifetime},
        C{logout}, C{shutdown}): each side flushes what it has and is closed,
        or aborted after L{CLOSE_GRACE} seconds. A socket still in its
        handshake is dropped.
        """
        if self.state in ("connecting", "waiting"):
            self._fail(502, "upstream_failed", f"closed during the handshake ({why})")
            return
        if self.state != "open":
            return
        self.state = "closed"
        self.closed_by = why
        self._owner.sockets.discard(self)
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

    def _client_lost(self, reason: Failure) -> None:
        """The client's connection is gone: the socket ends, and so does its request."""
        channel = self._channel
        delattr(channel, "dataReceived")
        delattr(channel, "connectionLost")
        self.close("client")
        self._stop_grace(self._client)
        request = self._request
        request.sentLength = self.to_client
        # Logs the socket's end (status 101, duration, bytes to the client)
        # and fires notifyFinish; then the channel's own clean-up.
        request.finish()
        channel.connectionLost(reason)


def _guard_headers(request: Any) -> List[bytes]:
    """
    The C{Set-Cookie} and other headers the guard meant to add to this
    request's answer (a refreshed session cookie, say): they go out with the
    101 as they would with any answer.
    """
    lines = [b"Set-Cookie: " + c for c in request.responseHeaders.getRawHeaders(b"set-cookie", [])]
    pending = getattr(request, "oidcproxy_pending_headers", None)
    if pending is not None:
        lines.extend(b"Set-Cookie: " + c for c in pending.cookies)
        lines.extend(name + b": " + value.encode("ascii") for name, value in pending.headers)
    return lines


__all__ = ["SocketRegistry", "UpstreamEndpoints", "WebSocketProxy", "is_websocket_upgrade",
           "parse_response_head"]
