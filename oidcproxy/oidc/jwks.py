"""
The provider's signing keys (its JWKS), cached: loaded once at start-up,
refetched when they are old or a token names a key we do not know, but no
more often than C{jwks_min_refresh} allows whoever asks, and one fetch at a
time however many ask.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..core.flight import fire_waiters
from ..core.metrics import NullMetrics
from .discovery import ProviderMetadata
from .jws import KeySet, TokenError
from .transport import ACCEPT_JWKS, ProviderError, Transport, parse_json

__all__ = ["SigningKeys"]

log = Logger()


class SigningKeys:
    """
    The signing keys of one issuer.

    @param metadata: the provider's metadata as known now (None before
        discovery), for its C{jwks_uri}.
    @param ttl: keys older than this are refetched when asked for.
    @param min_refresh: the least time between two refetches.
    @param metrics: counts the refetches by cause.

    @ivar keys: the keys, once loaded.
    """

    def __init__(
        self,
        issuer: str,
        transport: Transport,
        clock: IReactorTime,
        metadata: Callable[[], Optional[ProviderMetadata]],
        *,
        ttl: float,
        min_refresh: float,
        metrics: NullMetrics,
    ) -> None:
        self._issuer = issuer
        self._transport = transport
        self._clock = clock
        self._metadata = metadata
        self._ttl = float(ttl)
        self._min_refresh = float(min_refresh)
        self._metrics = metrics
        self.keys: Optional[KeySet] = None
        self._loaded_at = 0.0
        self._refetched_at: Optional[float] = None
        """When L{keys_for} last started a refetch (the start-up load does not count)."""
        self._waiters: Optional[List[Deferred[KeySet]]] = None

    def fetch(self) -> Deferred[KeySet]:
        """
        Join the JWKS fetch in flight, or start one. Every caller gets its
        own Deferred: cancelling it does not cancel the fetch for the others.
        """
        waiter: Deferred[KeySet] = Deferred()
        if self._waiters is not None:
            self._waiters.append(waiter)
            return waiter
        self._waiters = [waiter]
        Deferred.fromCoroutine(self._fetch()).addBoth(self._fetched)
        return waiter

    def _fetched(self, result: Any) -> None:
        waiters, self._waiters = self._waiters or [], None
        if isinstance(result, Failure) and self.keys is not None:
            # A refetch: the callers keep the cached keys. (A failed first
            # load is reported by the provider's start-up loop instead.)
            error = result.value
            if not isinstance(error, ProviderError):
                log.failure("JWKS refetch from {issuer} failed, still using the cached keys",
                            result, issuer=self._issuer)
            elif error.reason != "stopped":  # stopping is not worth a warning
                log.warn(
                    "JWKS refetch from {issuer} failed, still using the cached keys: {reason}: {detail}",
                    issuer=self._issuer,
                    reason=error.reason,
                    detail=error.detail,
                )
        fire_waiters(waiters, result)

    async def _fetch(self) -> KeySet:
        metadata = self._metadata()
        if metadata is None:
            raise ProviderError(503, "not_ready", "the provider metadata is not loaded yet")
        answer = await self._transport.idempotent("JWKS", metadata.jwks_uri, accept=ACCEPT_JWKS)
        if answer.code != 200:
            raise ProviderError(502, "bad_status", f"the JWKS request answered HTTP {answer.code}")
        try:
            keys = KeySet.from_jwks(parse_json(answer, "JWKS"))
        except TokenError as e:
            raise ProviderError(502, "bad_jwks", e.detail) from None
        if not keys.keys:
            raise ProviderError(502, "bad_jwks", "the JWKS holds no usable signing key")
        self.keys = keys
        self._loaded_at = self._clock.seconds()
        return keys

    async def keys_for(self, kid: Optional[str]) -> KeySet:
        """
        The signing keys.

        They are refetched when older than C{ttl}, or when C{kid} is given
        and no key has it, but no more often than once per C{min_refresh}
        seconds, whoever asks; callers arriving while a fetch is in flight
        share it. When a refetch fails the cached keys are returned (and the
        failure logged).

        @raise ProviderError: 503 C{not_ready} before the keys first loaded.
        """
        keys = self.keys
        if keys is None:
            raise ProviderError(503, "not_ready", "the provider's signing keys are not loaded yet")
        now = self._clock.seconds()
        stale = now - self._loaded_at >= self._ttl
        unknown = kid is not None and not keys.has_kid(kid)
        if not (stale or unknown):
            return keys
        if self._waiters is None:
            # Refetches are limited, not the load they follow: keys rotated
            # just after the start-up load (or a scheduled reload) are found
            # at once, and a flood of unknown kids still costs at most one
            # fetch per min_refresh.
            last = self._refetched_at
            if last is not None and now - last < self._min_refresh:
                return keys
            self._refetched_at = now
            self._metrics.jwks_refetch("unknown_kid" if unknown else "expired")
        try:
            return await self.fetch()
        except ProviderError:
            # Logged once by _fetched.
            return self.keys if self.keys is not None else keys
