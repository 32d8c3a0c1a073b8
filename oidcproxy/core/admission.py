"""
Admission under load: a cap on concurrent work with a bounded line of waiters.

Used where a request waits for something scarce (a connection to an
upstream, a request to the IdP): at most C{slots} run at once, at most
C{max_waiting} more wait in order, and whoever comes beyond that is refused
at once (L{QueueFull}) rather than joining a line that grows without bound.
The time a waiter waits is bounded by its owner, which cancels the waiting
L{Deferred} (that removes it from the line).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Dict, Hashable, Optional, Tuple

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime

__all__ = ["LogThrottle", "QueueFull", "SlotQueue"]


class QueueFull(Exception):
    """Every slot is taken and the line of waiters is full."""


class SlotQueue:
    """
    At most C{slots} holders at once; up to C{max_waiting} callers wait for
    a slot, first come first served.

    @ivar free: slots not taken now.
    """

    def __init__(self, slots: int, max_waiting: int) -> None:
        if slots < 1:
            raise ValueError("slots must be at least 1")
        if max_waiting < 0:
            raise ValueError("max_waiting must not be negative")
        self.slots = slots
        self.max_waiting = max_waiting
        self.free = slots
        self._waiting: OrderedDict[Deferred[None], None] = OrderedDict()

    @property
    def waiting(self) -> int:
        """How many callers wait for a slot now."""
        return len(self._waiting)

    def acquire(self) -> Deferred[None]:
        """
        Take a slot: fires (at once, or when one is released) once it is the
        caller's, who must L{release} it later. Fails at once with
        L{QueueFull} when the line is full. Cancelling the L{Deferred} while
        it waits leaves the line (nothing to release then).
        """
        if self.free > 0:
            self.free -= 1
            return succeed(None)
        if len(self._waiting) >= self.max_waiting:
            return fail(QueueFull(f"{self.slots} busy and {len(self._waiting)} waiting"))
        d: Deferred[None] = Deferred(self._leave)
        self._waiting[d] = None
        return d

    def take(self) -> bool:
        """Take a free slot at once if there is one (no L{Deferred}): then L{release} it later."""
        if self.free > 0:
            self.free -= 1
            return True
        return False

    def _leave(self, d: Deferred[None]) -> None:
        self._waiting.pop(d, None)

    def release(self) -> None:
        """Give a slot back: the first waiter gets it, if any."""
        if self._waiting:
            d, _ = self._waiting.popitem(last=False)
            d.callback(None)
        elif self.free < self.slots:
            self.free += 1


class LogThrottle:
    """
    At most one log line per key every C{interval} seconds, saying how many
    like it were held back meanwhile: a flood of refusals must not become a
    flood of log lines (which would cost the CPU the refusals save).
    """

    def __init__(self, clock: IReactorTime, interval: float = 10.0) -> None:
        self._clock = clock
        self._interval = interval
        self._seen: Dict[Hashable, Tuple[float, int]] = {}

    def allow(self, key: Hashable) -> Optional[int]:
        """
        None while the line for C{key} is held back (it is counted); else
        how many were held back since the last one (log it now).
        """
        now = self._clock.seconds()
        last = self._seen.get(key)
        if last is not None and now - last[0] < self._interval:
            self._seen[key] = (last[0], last[1] + 1)
            return None
        self._seen[key] = (now, 0)
        return last[1] if last is not None else 0
