"""
The upstream's answer body on its way to the client: streamed with
back-pressure (the client's request is the producer's consumer), cut when
the upstream goes quiet too long, aborted when it breaks off.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet import error as ierror
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.server import Request
from zope.interface import implementer

from ..config import RouteConfig
from ..core.deadlines import Deadline, Deadlines
from ..core.pages import render_error
from .connect import describe_failure

__all__ = ["BodyRelay", "Discard"]

log = Logger()


@implementer(IPushProducer)
class BodyRelay(Protocol):
    """
    Stream the upstream body to the client. Registered as the request's
    producer, so a slow client pauses the upstream connection (back-pressure)
    instead of the proxy buffering the response.

    A body may take as long as it likes (server-sent events, long polls), but
    not C{stream_idle_timeout} seconds without a byte while the client
    reads: then it is cut. While the client does not read, the timer waits.
    """

    def __init__(self, request: Request, route: RouteConfig, done: Callable[[], None],
                 deadlines: Optional[Deadlines] = None) -> None:
        self._request = request
        self._route = route
        self._done = done
        self._stopped = False
        self._deadlines = deadlines
        self._idle = route.settings.stream_idle_timeout
        self._idle_timer: Optional[Deadline] = None

    transport: Any

    def connectionMade(self) -> None:
        self._request.registerProducer(self, True)
        self._arm()

    def _arm(self) -> None:
        """(Re)start the idle timer."""
        if self._deadlines is None or self._idle <= 0 or self._stopped:
            return
        timer = self._idle_timer
        if timer is not None and timer.active():
            timer.reset(self._idle)
        else:
            self._idle_timer = self._deadlines.add(self._idle, self._idle_out)

    def _disarm(self) -> None:
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.cancel()
        self._idle_timer = None

    def _idle_out(self) -> None:
        self._idle_timer = None
        log.warn(
            "upstream {upstream} of {route} sent nothing for {seconds}s: response cut "
            "(stream_idle_timeout)",
            upstream=self._route.upstream, route=self._route.name, seconds=self._idle,
        )
        self.stop()
        # The body is incomplete: abort, so it does not pass for a whole one.
        transport = getattr(self._request, "transport", None)
        if transport is not None and hasattr(transport, "abortConnection"):
            transport.abortConnection()
        elif transport is not None:
            transport.loseConnection()

    # IPushProducer, for the request: relay to the upstream transport.
    def pauseProducing(self) -> None:
        self._disarm()
        if self.transport is not None:
            self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._arm()
        if self.transport is not None:
            self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.stop()

    def stop(self) -> None:
        if not self._stopped and self.transport is not None:
            self._stopped = True
            self.transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        if not self._stopped:
            if self._idle_timer is not None:
                self._arm()
            self._request.write(data)

    def connectionLost(self, reason: Failure = ierror.ConnectionDone) -> None:  # type: ignore[assignment]
        self._disarm()
        self._done()
        request = self._request
        request.unregisterProducer()
        if self._stopped:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            request.finish()
            return
        # The upstream broke off mid-body. Ending the response normally would
        # hand the client a truncated body as if it were whole: abort instead.
        log.warn(
            "upstream {upstream} of {route} broke off the response: {reason}",
            upstream=self._route.upstream, route=self._route.name,
            reason=describe_failure(reason),
        )
        if not getattr(request, "startedWriting", True):
            request.write(render_error(request, 502, "bad_gateway",
                                       "The upstream server broke off its answer."))
            request.finish()
            return
        transport = getattr(request, "transport", None)
        if transport is not None and hasattr(transport, "abortConnection"):
            transport.abortConnection()
        elif transport is not None:
            transport.loseConnection()


class Discard(Protocol):
    """Receive a body nobody wants: stop it, closing its connection."""

    transport: Any

    def connectionMade(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()
