"""
One request's trip to its upstream and back: the wait for a connection
slot, the request through the route's L{Agent}, the answer's head copied to
the client and its body handed to a L{BodyRelay}; the timeout, the
cancellation when the client goes away, and the 502/503/504 answers; and
the upstream's RFC 9470 challenge handed to the request's step-up (a route
with C{step_up = true}) instead of being passed on.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

from twisted.internet import error as ierror
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import NO_BODY_CODES
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer, IResponse
from twisted.web.server import Request

from ..config import RouteConfig
from ..core.admission import LogThrottle, QueueFull
from ..core.assurance import parse_challenge
from ..core.context import peek
from ..core.deadlines import Deadline, Deadlines
from ..core.metrics import NullMetrics
from ..core.pages import render_error
from .client import UpstreamClient
from .connect import describe_failure
from .headers import HOP_BY_HOP, connection_tokens, put_raw, stored_name
from .relay import BodyRelay, Discard

__all__ = ["RETRY_AFTER", "Exchange"]

log = Logger()

_CONTENT_LENGTH = stored_name(b"content-length")

RETRY_AFTER = b"5"
"""Seconds a client refused for want of an upstream slot is told to wait (C{Retry-After})."""


class Exchange:
    """
    One request's trip upstream and back. Owns the timeout, the concurrency
    slot (and the wait for one), the cancellation when the client goes away,
    and the mapping of failures to 502/503/504.

    While every slot of the upstream is taken the request waits in a bounded
    line: when the line is full, or the request has waited C{queue_timeout}
    (or its whole C{timeout}, if shorter), it is answered 503 with
    C{Retry-After} without having gone upstream.
    """

    def __init__(
        self,
        request: Request,
        route: RouteConfig,
        upstream: UpstreamClient,
        url: bytes,
        headers: Headers,
        producer: Optional[IBodyProducer],
        clock: IReactorTime,
        metrics: NullMetrics,
        refusals: LogThrottle,
        deadlines: Deadlines,
        over: Callable[[], None],
    ) -> None:
        self._clock = clock
        self._deadlines = deadlines
        self._metrics = metrics
        self._refusals = refusals
        self._request = request
        self._route = route
        self._upstream = upstream
        self._sent_at = 0.0
        self._url = url
        self._headers = headers
        self._producer = producer
        self._client_gone = False
        self._timed_out = False
        self._holding_slot = False
        self._queued_at: Optional[float] = None
        self._queue_expired = False
        self._relay: Optional[BodyRelay] = None
        # The wait for a slot (rare) on a timer of its own; the timeout of
        # the exchange itself (every request) on the shared deadlines.
        self._timer: Optional[Union[IDelayedCall, Deadline]] = None
        self._over = over
        self._pending: Optional[Deferred] = None
        request.notifyFinish().addBoth(self._finished)
        if upstream.slots.take():
            self._send(None)
            return
        settings = route.settings
        pending = upstream.slots.acquire()
        if not pending.called:
            # In line for a slot: the timer bounds the wait first.
            self._queued_at = clock.seconds()
            self._timer = clock.callLater(
                min(settings.queue_timeout, settings.timeout), self._timeout)
        self._pending = pending
        pending.addCallbacks(self._send, self._failed)

    def _finished(self, result: Any) -> None:
        """The answer is complete (C{over}), or the client went away first (L{_gone})."""
        self._over()
        if isinstance(result, Failure):
            self._gone(result)

    def _send(self, _: Any) -> None:
        self._holding_slot = True
        now = self._sent_at = self._clock.seconds()
        timeout = self._route.settings.timeout
        if self._queued_at is None:
            self._timer = self._deadlines.add(timeout, self._timeout)
        else:
            # Out of the line: what is left of the route's timeout applies.
            if self._timer is not None and self._timer.active():
                self._timer.reset(max(0.0, timeout - (now - self._queued_at)))
            self._queued_at = None
        d = self._upstream.agent.request(
            self._request.method, self._url, self._headers, self._producer
        )
        self._pending = d
        d.addCallbacks(self._response, self._failed)

    def _release(self) -> None:
        """Give the concurrency slot back, once, when the exchange is over."""
        if self._holding_slot:
            self._holding_slot = False
            self._upstream.slots.release()

    def _timeout(self) -> None:
        self._timer = None
        if self._queued_at is not None:
            self._queue_expired = True
        else:
            self._timed_out = True
        if self._pending is not None:
            self._pending.cancel()

    def _stop_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _gone(self, reason: Failure) -> None:
        """The client went away: cancel whatever is in flight upstream."""
        self._client_gone = True
        self._stop_timer()
        if self._pending is not None:
            self._pending.cancel()
        if self._relay is not None:
            self._relay.stop()

    def _response(self, response: IResponse) -> None:
        self._pending = None
        self._metrics.upstream_latency(
            self._route.name, self._clock.seconds() - self._sent_at)
        request = self._request
        if self._client_gone:
            self._drop(response)
            return
        if response.code == 401 and self._stepped_up(response):
            return
        request.setResponseCode(response.code, response.phrase)
        out = request.responseHeaders
        # Twisted's defaults: the upstream's answer speaks for itself.
        out.removeHeader(b"server")
        out.removeHeader(b"content-type")
        request.defaultContentType = None
        # The pool's protocol has removed what the upstream's Connection
        # named already (Twisted keeps that header to itself); a response
        # from elsewhere may still carry it.
        connection_named = connection_tokens(response.headers)
        # The guard refuses the upstream's Set-Cookie values for the proxy's
        # own cookies; dropped here too, for a site whose requests do not
        # apply the context's answer.
        found = peek(request)
        for name, values in response.headers.getAllRawHeaders():
            lower = name.lower()
            if lower in HOP_BY_HOP or lower in connection_named:
                continue
            if lower == b"set-cookie" and found is not None:
                values = found.kept_cookies(values)
                if not values:
                    continue
            # As they came (Twisted's parser has cleaned them): not again.
            put_raw(out, name, list(values))
        # Agent keeps Content-Length to itself (except for HEAD) and tells the
        # body length instead: pass it on, so the client gets a sized response
        # rather than a chunked one.
        if response.length is not UNKNOWN_LENGTH and response.code not in NO_BODY_CODES \
                and request.method != b"HEAD":
            put_raw(out, _CONTENT_LENGTH, [b"%d" % response.length])
        self._relay = BodyRelay(request, self._route, self._release, self._deadlines)
        response.deliverBody(self._relay)
        # Stopped once the body's idle deadline is set: the shared timer of
        # the deadlines stays (it is cancelled when none is left, and set
        # again for the next).
        self._stop_timer()

    def _drop(self, response: IResponse) -> None:
        """Nobody gets C{response}: its body is discarded and the connection's slot given back."""
        self._stop_timer()
        response.deliverBody(Discard())
        self._release()

    def _stepped_up(self, response: IResponse) -> bool:
        """
        Whether the upstream's 401 C{response} is a step-up the request's
        context answers (L{oidcproxy.core.context.RequestContext.step_up}: a
        browser's navigation on a session, on a route with C{step_up =
        true}): then its answer is dropped and the step-up answers instead.
        """
        found = peek(self._request)
        step_up = found.step_up if found is not None else None
        if step_up is None or not self._route.step_up:
            return False
        requirement = parse_challenge(response.headers.getRawHeaders(b"www-authenticate"))
        if requirement is None:
            return False
        self._drop(response)
        step_up(self._request, requirement)
        return True

    def _failed(self, failure: Failure) -> None:
        self._pending = None
        self._stop_timer()
        self._release()
        if self._client_gone:
            return
        request = self._request
        route = self._route
        if self._queue_expired or failure.check(QueueFull):
            self._refuse("timeout" if self._queue_expired else "full")
            return
        if self._timed_out or failure.check(ierror.TimeoutError):
            why = "no response within the timeout" if self._timed_out else "connect timeout"
            log.warn(
                "upstream {upstream} of {route} timed out: {why}",
                upstream=route.upstream, route=route.name, why=why,
            )
            body = render_error(request, 504, "upstream_timeout",
                                "The upstream server did not answer in time.")
        else:
            log.warn(
                "upstream {upstream} of {route} failed: {reason}",
                upstream=route.upstream, route=route.name, reason=describe_failure(failure),
            )
            body = render_error(request, 502, "bad_gateway",
                                "The upstream server could not be reached or gave a bad answer.")
        request.write(body)
        request.finish()

    def _refuse(self, reason: str) -> None:
        """503: the line for this upstream's slots was full, or the wait too long."""
        route = self._route
        self._metrics.upstream_queue_rejected(route.name, reason)
        held_back = self._refusals.allow((route.name, reason))
        if held_back is not None:
            settings = route.settings
            why = (f"{settings.queue_limit} requests already wait" if reason == "full" else
                   f"no connection free within {min(settings.queue_timeout, settings.timeout):g}s")
            log.warn(
                "upstream {upstream} of {route} is at max_connections ({limit}): 503, {why} "
                "({held_back} more such 503s since the last line)",
                upstream=route.upstream, route=route.name, limit=settings.max_connections,
                why=why, held_back=held_back,
            )
        request = self._request
        body = render_error(request, 503, "upstream_busy",
                            "The upstream server is busy. Please try again shortly.",
                            {b"retry-after": RETRY_AFTER})
        request.write(body)
        request.finish()
