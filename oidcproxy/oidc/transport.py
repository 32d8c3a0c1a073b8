"""
One request to the OpenID provider, made the way every request to it is made
(see L{oidcproxy.oidc.provider} for the rules as a whole):

  - a deadline (C{Deferred.addTimeout} on the injected clock) covering the
    whole exchange, body included: 504 C{timeout}, the request cancelled;
  - the body read incrementally, given up beyond C{max_response_size} bytes
    (502 C{response_too_large});
  - no redirect followed;
  - one of C{max_concurrent_requests} slots, waited for in a line of at most
    C{max_queued_requests} for at most C{timeout} (503 C{busy} otherwise);
    a request that had to wait has its whole deadline from when it goes out;
  - for the idempotent GETs, up to C{max_retries} more attempts after a
    transport failure, a timeout or a 5xx/429 answer, with a wait
    (C{deferLater} on the clock) doubling from C{retry_backoff}.

Failures are L{ProviderError}s; their details never hold request data.
"""

from __future__ import annotations

import json
import re
from typing import Any, List, Mapping, Optional, Sequence, Set, Tuple, Type, cast

import attr
import treq
from treq.client import HTTPClient
from twisted.internet import error as ierror
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import client as webclient
from twisted.web import error as weberror
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse

from ..core.admission import QueueFull, SlotQueue
from ..core.metrics import NullMetrics
from ..core.tls import describe_tls_error

__all__ = ["Answer", "ProviderError", "Transport", "oauth_error_of", "parse_json"]

log = Logger()

ACCEPT_JSON = b"application/json"
ACCEPT_JWKS = b"application/jwk-set+json, application/json"

# What a failed connection, TLS handshake or transfer raises from Twisted's
# Agent (and from the HTTP parser for a garbled answer).
_TRANSPORT_ERRORS: Tuple[Type[BaseException], ...] = (
    ierror.ConnectError,  # refused, connect timeout, DNS lookup, no route...
    ierror.ConnectionLost,
    ierror.ConnectionDone,
    ierror.DNSLookupError,
    webclient.ResponseFailed,
    webclient.ResponseNeverReceived,
    webclient.RequestTransmissionFailed,
    webclient.RequestNotSent,
    webclient.RequestGenerationFailed,
    weberror.SchemeNotSupported,
    OSError,
)

PRINTABLE = re.compile(r"[^\x20-\x7e]")
"""What is replaced (by C{?}) in text from the provider before it is logged."""

_RETRIED_REASONS = frozenset({"unreachable", "timeout"})
"""L{ProviderError} reasons an idempotent request is retried after (with C{max_retries})."""


class ProviderError(Exception):
    """
    Talking to the identity provider failed.

    @ivar status: the HTTP status the proxy should answer with: 502 (a bad
        answer or none), 503 (not ready: discovery or the keys have not
        loaded yet, or the provider was stopped), 504 (timeout), 401 (the
        token endpoint said C{invalid_grant}: the user should log in again).
    @ivar reason: a stable snake_case code for logs and metrics.
    @ivar oauth_error: the OAuth C{error} code of a token or revocation
        endpoint's error answer (e.g. C{invalid_grant}), else None.
    @ivar detail: human text; never a token, code, secret or assertion.
    """

    def __init__(self, status: int, reason: str, detail: str = "", oauth_error: Optional[str] = None) -> None:
        super().__init__(status, reason, detail, oauth_error)
        self.status = status
        self.reason = reason
        self.oauth_error = oauth_error
        self.detail = detail

    def __str__(self) -> str:
        text = f"{self.reason} ({self.status})"
        if self.oauth_error is not None:
            text += f" [{self.oauth_error}]"
        if self.detail:
            text += f": {self.detail}"
        return text


@attr.s(auto_attribs=True)
class Answer:
    """A complete answer of the provider."""

    code: int
    headers: Headers
    body: bytes

    def content_type(self) -> str:
        value = self.headers.getRawHeaders(b"content-type", [b""])[0]
        return value.split(b";", 1)[0].strip().lower().decode("latin-1")


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(answer: Answer, what: str) -> Any:
    """The answer's body as JSON (no NaN or Infinity). @raise ProviderError: 502 C{bad_json}."""
    try:
        return json.loads(answer.body.decode("utf-8"), parse_constant=_no_constants)
    except (ValueError, RecursionError):  # includes JSONDecodeError, UnicodeDecodeError
        raise ProviderError(502, "bad_json", f"the {what} answer is not JSON") from None


def _safe_description(value: Any, secrets_sent: Sequence[str]) -> Optional[str]:
    """
    An OAuth C{error_description} fit for logs: printable, short, and dropped
    entirely if it echoes anything secret we sent.
    """
    if not isinstance(value, str) or not value:
        return None
    if any(s and s in value for s in secrets_sent):
        return None
    return PRINTABLE.sub("?", value)[:200]


def oauth_error_of(answer: Answer, what: str, secrets_sent: Sequence[str]) -> Tuple[Optional[str], str]:
    """
    The OAuth error of a failed answer (RFC 6749, 5.2), read from a 4xx
    answer's JSON C{error} member only, and a detail for a L{ProviderError}.

    @return: C{(error, detail)}; C{error} is None when there is none.
    """
    document: Any = None
    if 400 <= answer.code < 500:
        try:
            document = parse_json(answer, what)
        except ProviderError:
            document = None
    error = document.get("error") if isinstance(document, dict) else None
    if not isinstance(error, str) or not error:
        return None, f"the {what} answered HTTP {answer.code}"
    error = PRINTABLE.sub("?", error)[:100]
    assert isinstance(document, dict)
    description = _safe_description(document.get("error_description"), secrets_sent)
    detail = f"the {what} answered HTTP {answer.code} {error}"
    if description:
        detail += f": {description}"
    return error, detail


def describe_failure(e: BaseException) -> str:
    """A short description of a transport failure (no request data in it)."""
    tls = describe_tls_error(e)
    if tls is not None:
        return tls
    reasons = getattr(e, "reasons", None)
    if reasons:
        first = reasons[0]
        inner = first.value if isinstance(first, Failure) else first
        if isinstance(inner, BaseException):
            return f"{type(e).__name__}: {describe_failure(inner)}"
    text = str(e)
    text = PRINTABLE.sub("?", text)[:200]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _was_cancelled(e: BaseException) -> bool:
    """Whether a failure from the Agent is really our own cancellation."""
    if isinstance(e, CancelledError):
        return True
    for reason in getattr(e, "reasons", None) or ():
        if isinstance(reason, Failure) and reason.check(CancelledError):
            return True
    return False


class _TooLarge(Exception):
    pass


class _BodyHandle:
    """
    The parts of a response that L{treq.collect} uses (C{length} and
    C{deliverBody}), remembering the protocol the body is delivered to so
    the transfer can be aborted.
    """

    def __init__(self, response: Any) -> None:
        self._response = response
        self.length = response.length
        self._protocol: Any = None

    def deliverBody(self, protocol: Any) -> None:
        self._protocol = protocol
        self._response.deliverBody(protocol)

    def abort(self) -> None:
        transport = getattr(self._protocol, "transport", None)
        if transport is not None:
            transport.stopProducing()


def _unread(failure: Failure, what: str) -> None:
    """
    The end of a body dropped unread (too large): aborting it fails its
    reading, which is expected and only noted; anything else is a bug.
    """
    if failure.check(_TooLarge, CancelledError, *_TRANSPORT_ERRORS):
        log.debug("the {what} answer was dropped unread: {error}", what=what,
                  error=describe_failure(cast(BaseException, failure.value)))
    else:
        log.failure("reading the {what} answer failed after it was dropped", failure, what=what)


class _PendingCall:
    """One request (or one wait between attempts) in flight, which L{Transport.stop} cancels."""

    def __init__(self) -> None:
        self.deferred: Optional[Deferred[Any]] = None
        self.stopped = False
        self.admitted = False
        """Whether it got one of C{max_concurrent_requests} (else it waited, or was turned away)."""
        self.admitted_at: Optional[float] = None
        """When it got its slot after waiting for one."""
        self.timed_out = False
        """Whether its deadline passed after it went out."""

    def stop(self) -> None:
        if not self.stopped and self.deferred is not None and not self.deferred.called:
            self.stopped = True
            self.deferred.cancel()


class Transport:
    """
    The requests to one provider, over one treq client, on one clock.

    @param http: see L{oidcproxy.oidc.http_client.make_http_client}.
    @param metrics: times each request by endpoint and outcome.
    """

    def __init__(
        self,
        http: HTTPClient,
        clock: IReactorTime,
        *,
        timeout: float,
        max_response_size: int,
        max_retries: int,
        retry_backoff: float,
        max_concurrent_requests: int,
        max_queued_requests: int,
        metrics: NullMetrics,
    ) -> None:
        self._http = http
        self._clock = clock
        self._timeout = float(timeout)
        self._max_size = int(max_response_size)
        self._max_retries = max_retries
        self._retry_backoff = float(retry_backoff)
        self._metrics = metrics
        self.slots = SlotQueue(max_concurrent_requests, max_queued_requests)
        self._calls: Set[_PendingCall] = set()

    def stop(self) -> None:
        """Cancel every request and every wait between attempts (503 C{stopped})."""
        for call in list(self._calls):
            call.stop()

    async def idempotent(
        self,
        what: str,
        url: str,
        *,
        accept: bytes,
        headers: Optional[Headers] = None,
        params: Optional[Mapping[str, str]] = None,
    ) -> Answer:
        """
        A GET that may be made again (up to C{max_retries} more times) when
        it fails in transit, times out, or gets a 5xx or 429 answer. The last
        attempt's failure or answer is the caller's.
        """
        delay = self._retry_backoff
        for attempt in range(self._max_retries + 1):
            last = attempt == self._max_retries
            try:
                answer = await self.request(what, "GET", url, accept=accept, headers=headers,
                                            params=params)
            except ProviderError as e:
                if last or e.reason not in _RETRIED_REASONS:
                    raise
                outcome = e.reason
            else:
                if last or not (answer.code >= 500 or answer.code == 429):
                    return answer
                outcome = f"HTTP {answer.code}"
            log.info("the {what} request failed ({outcome}); retry {n} of {max} in {delay}s",
                     what=what, outcome=outcome, n=attempt + 1, max=self._max_retries,
                     delay=delay)
            await self._pause(what, delay)
            delay *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    async def _pause(self, what: str, seconds: float) -> None:
        """Wait on the clock between attempts; L{stop} cuts the wait short (503 C{stopped})."""
        call = _PendingCall()
        call.deferred = deferLater(self._clock, seconds, lambda: None)
        self._calls.add(call)
        try:
            await call.deferred
        except CancelledError:
            raise ProviderError(
                503, "stopped", f"the {what} request was cancelled: shutting down") from None
        finally:
            self._calls.discard(call)

    async def request(
        self,
        what: str,
        method: str,
        url: str,
        *,
        accept: bytes,
        headers: Optional[Headers] = None,
        body: Optional[bytes] = None,
        params: Optional[Mapping[str, str]] = None,
    ) -> Answer:
        """
        One request, made once, with the deadline and the size cap.

        @param what: names the request in errors and logs.
        """
        headers = headers.copy() if headers is not None else Headers()
        headers.setRawHeaders(b"accept", [accept])
        call = _PendingCall()
        started = self._clock.seconds()
        d = Deferred.fromCoroutine(self._admitted(call, what, method, url, headers, body, params))
        call.deferred = d
        self._calls.add(call)
        answer: Optional[Answer] = None
        try:
            answer = await d
            return answer
        except (CancelledError, ProviderError):
            if call.stopped:
                raise ProviderError(
                    503, "stopped", f"the {what} request was cancelled: shutting down"
                ) from None
            raise
        finally:
            self._calls.discard(call)
            self._count(what, call, answer, started if call.admitted_at is None else call.admitted_at)

    def _count(self, what: str, call: _PendingCall, answer: Optional[Answer], started: float) -> None:
        """Time one request for the metrics, by endpoint and outcome (not when stopping)."""
        if call.stopped:
            return
        if answer is not None:
            outcome = "ok" if 200 <= answer.code < 300 else "http_error"
        elif not call.admitted:
            outcome = "busy"
        else:
            outcome = "timeout" if call.timed_out else "error"
        endpoint = what.split()[0].lower()  # discovery, jwks, token, userinfo, ...
        self._metrics.idp_request(endpoint, outcome, self._clock.seconds() - started)

    async def _admitted(
        self,
        call: _PendingCall,
        what: str,
        method: str,
        url: str,
        headers: Headers,
        body: Optional[bytes],
        params: Optional[Mapping[str, str]],
    ) -> Answer:
        """
        L{_transfer} once one of the C{max_concurrent_requests} slots is free,
        within the deadline. A request that had to wait for one gets its
        whole deadline from then on: one sent with little time left would be
        cut off while the provider still works on it, which under load would
        waste the provider's capacity on answers nobody waits for.
        """
        slot = self.slots.acquire()
        waited = not slot.called
        if waited:
            slot.addTimeout(self._timeout, self._clock, onTimeoutCancel=self._waited_too_long(what))
        try:
            await slot
        except QueueFull:
            raise ProviderError(
                503, "busy", f"the {what} request was not made: {self.slots.slots} requests to "
                f"the provider are in flight and {self.slots.max_waiting} wait "
                "(max_concurrent_requests, max_queued_requests)") from None
        call.admitted = True
        if waited:
            call.admitted_at = self._clock.seconds()
        try:
            transfer = Deferred.fromCoroutine(self._transfer(what, method, url, headers, body, params))
            transfer.addTimeout(self._timeout, self._clock, onTimeoutCancel=self._no_answer(call, what))
            return await transfer
        finally:
            self.slots.release()

    def _waited_too_long(self, what: str) -> Any:
        """What a wait for a slot that passed the deadline ends with: 503 C{busy}."""

        def busy(result: Any, timeout: float) -> Any:
            if not isinstance(result, Failure):
                return result
            raise ProviderError(
                503, "busy", f"the {what} request waited {timeout}s for one of the "
                f"{self.slots.slots} requests to the provider in flight "
                "(max_concurrent_requests) and was not made")

        return busy

    def _no_answer(self, call: _PendingCall, what: str) -> Any:
        """What a request that passed its deadline ends with: 504 C{timeout}."""

        def timed_out(result: Any, timeout: float) -> Any:
            if not isinstance(result, Failure):
                return result
            call.timed_out = True
            raise ProviderError(504, "timeout", f"no complete answer from the {what} within {timeout}s")

        return timed_out

    async def _transfer(
        self,
        what: str,
        method: str,
        url: str,
        headers: Headers,
        body: Optional[bytes],
        params: Optional[Mapping[str, str]],
    ) -> Answer:
        try:
            response = await self._http.request(
                method,
                url,
                headers=headers,
                data=body,
                params=dict(params) if params else None,
                allow_redirects=False,
                unbuffered=True,
            )
        except _TRANSPORT_ERRORS as e:
            if _was_cancelled(e):
                raise CancelledError() from None
            detail = describe_failure(e)
            raise ProviderError(502, "unreachable", f"the {what} request failed: {detail}") from None
        return Answer(response.code, response.headers, await self._read_body(response, what))

    async def _read_body(self, response: Any, what: str) -> bytes:
        limit = self._max_size
        chunks: List[bytes] = []
        received = 0

        def collect(data: bytes) -> None:
            nonlocal received
            received += len(data)
            if received > limit:
                raise _TooLarge()
            chunks.append(data)

        too_large = ProviderError(
            502, "response_too_large", f"the {what} answer is larger than {limit} bytes"
        )
        handle = _BodyHandle(response)
        d = treq.collect(cast(IResponse, handle), collect)
        if response.length is not UNKNOWN_LENGTH and response.length > limit:
            d.addErrback(_unread, what)
            handle.abort()
            raise too_large
        try:
            await d
        except _TooLarge:
            raise too_large from None
        except CancelledError:
            handle.abort()
            raise
        except _TRANSPORT_ERRORS as e:
            if _was_cancelled(e):
                raise CancelledError() from None
            detail = describe_failure(e)
            raise ProviderError(502, "unreachable", f"the {what} answer was cut short: {detail}") from None
        return b"".join(chunks)
