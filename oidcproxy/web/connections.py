"""
The client connections of the proxy's site, whatever protocol they speak
(an HTTP/1.1 L{oidcproxy.web.channel.ProxyChannel} or an HTTP/2
L{oidcproxy.web.http2.ProxyH2Connection}): counted against the caps of
L{ClientLimits}, and drained at shutdown.

A connection the site counts offers C{transport}, C{oidcproxy_address}
(the address it is counted against, or None), C{refuse(code, phrase,
headers)} (answer and close: only called before any request, on the
HTTP/1.1 channel every connection starts with), C{drain()} and
C{stop_deadlines()}.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Set

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from ..config import ClientLimits
from ..core.deadlines import Deadlines
from ..core.metrics import NullMetrics
from .refusals import RefusalLog

__all__ = ["ABORT_AFTER", "ClientConnections", "peer_host"]

log = Logger(namespace="oidcproxy.web.server")

ABORT_AFTER = 10.0
"""Seconds a connection the proxy closes gets to take its last answer before it is cut."""


def peer_host(connection: Any) -> Optional[str]:
    """The client's IP address; None for a peer without one (a UNIX socket)."""
    transport = connection.transport
    peer = transport.getPeer() if transport is not None else None
    host = getattr(peer, "host", None)
    return host if isinstance(host, str) else None


class ClientConnections:
    """
    The part of L{oidcproxy.web.server.ProxySite} that keeps track of its
    client connections: caps (C{limits}), the gauge and counters of
    C{metrics}, and the drain at shutdown. Its subclass sets C{clock},
    C{limits} and C{metrics} and calls L{_init_connections}.

    @ivar deadlines: the connections' header and body deadlines, on C{clock}.
    """

    clock: IReactorTime
    limits: ClientLimits
    metrics: NullMetrics
    draining = False
    deadlines: Deadlines

    def _init_connections(self) -> None:
        self.deadlines = Deadlines(self.clock)
        self._channels: Set[Any] = set()
        self._per_address: Dict[str, int] = {}
        self._refusals = RefusalLog(self.clock)
        self._drained: Optional[Deferred[int]] = None
        self._drain_call: Optional[IDelayedCall] = None

    def channel_opened(self, channel: Any) -> bool:
        """
        Count a new connection. False when it is not to be served: refused
        (over a cap: answered 503 and closed) or accepted during a drain.
        """
        if self.draining:
            # Accepted just before the listener closed: nothing to finish.
            channel.transport.loseConnection()
            self._add(channel, None)
            return False
        limits = self.limits
        address = peer_host(channel) if limits.max_per_address else None
        if len(self._channels) >= limits.max_connections:
            self._refuse(channel, "max_client_connections", limits.max_connections)
            return False
        if address is not None and self._per_address.get(address, 0) >= limits.max_per_address:
            self._refuse(channel, "max_client_connections_per_address", limits.max_per_address)
            return False
        self._add(channel, address)
        return True

    def _add(self, channel: Any, address: Optional[str]) -> None:
        self._channels.add(channel)
        if address is not None:
            self._per_address[address] = self._per_address.get(address, 0) + 1
            channel.oidcproxy_address = address
        self.metrics.client_connections(1)

    def _refuse(self, channel: Any, limit: str, value: int) -> None:
        self.metrics.client_connection_refused(limit)
        self._refusals.add(f"{limit} = {value}")
        channel.refuse(503, b"Service Unavailable", b"Retry-After: 5\r\n")

    def channel_switched(self, old: Any, new: Any) -> None:
        """
        The connection of C{old} is served by C{new} from now on (HTTP/2
        chosen in the TLS handshake): C{new} holds its place in the counts.
        """
        if old in self._channels:
            self._channels.remove(old)
            self._channels.add(new)
            new.oidcproxy_address = old.oidcproxy_address
            old.oidcproxy_address = None

    def serve_http2(self, channel: Any) -> None:
        """Serve the connection of C{channel}, whose TLS handshake chose C{h2}, with HTTP/2."""
        raise NotImplementedError

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

    def client_timed_out(self, channel: Any, phase: str) -> None:
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
            # Each connection closes itself once its requests in flight are answered.
            if channel.drain():
                busy += 1
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
            channel.transport.abortConnection()
        # Done now, whether or not the aborted connections report closed.
        self._drain_done(len(left))

    def _drain_done(self, aborted: int) -> None:
        call, self._drain_call = self._drain_call, None
        if call is not None and call.active():
            call.cancel()
        drained, self._drained = self._drained, None
        if drained is not None:
            drained.callback(aborted)
