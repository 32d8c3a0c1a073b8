"""
The log lines about client connections refused at a cap: not one per
refusal (a flood would flood the log too), but the first at once, then at
most one per L{REFUSAL_LOG_INTERVAL} seconds, counting those in between.
"""

from __future__ import annotations

from typing import Dict, Optional

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

__all__ = ["REFUSAL_LOG_INTERVAL", "RefusalLog"]

log = Logger(namespace="oidcproxy.web.server")

REFUSAL_LOG_INTERVAL = 10.0
"""At most one log line per this many seconds about refused connections."""


class RefusalLog:
    """
    The log lines about refused connections: the first at once, then at
    most one per L{REFUSAL_LOG_INTERVAL} seconds, each counting the refusals
    since the previous one, by limit.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._pending: Dict[str, int] = {}
        self._last: Optional[float] = None
        self._flush: Optional[IDelayedCall] = None

    def add(self, limit: str) -> None:
        self._pending[limit] = self._pending.get(limit, 0) + 1
        now = self._clock.seconds()
        if self._last is None or now - self._last >= REFUSAL_LOG_INTERVAL:
            self._write()
        elif self._flush is None:
            self._flush = self._clock.callLater(self._last + REFUSAL_LOG_INTERVAL - now,
                                                self._write)

    def _write(self) -> None:
        if self._flush is not None and self._flush.active():
            self._flush.cancel()
        self._flush = None
        self._last = self._clock.seconds()
        pending, self._pending = self._pending, {}
        log.warn("refused {count} client connection(s) with 503: {limits} reached",
                 count=sum(pending.values()),
                 limits="; ".join(f"{limit} ({n})" for limit, n in sorted(pending.items())))
