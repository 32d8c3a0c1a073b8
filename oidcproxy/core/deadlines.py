"""
Many timeouts on one timer: the per-request deadlines of the hot path (a
connection's header deadline, an exchange's upstream timeout, a body's idle
timeout) without a reactor C{callLater} and C{cancel} per request.

Almost every such deadline is cancelled long before it is due (the request
is answered in milliseconds, the timeout is seconds), so a L{Deadlines}
keeps them in a heap of its own and holds one reactor timer, for the
earliest one that may still fire. Cancelling is O(1) (the entry is marked;
the heap drops marked entries when they reach its top, or all at once when
they are more than half of it); moving a deadline later (L{Deadline.reset},
as an idle timer does on every chunk of a body) is O(1) too (the entry is
re-filed when its old time comes). The reactor timer moves only when a
deadline earlier than every other arrives, which a steady stream of
deadlines of the same length never does.

Each deadline fires at its time, exactly as C{callLater} would fire it (no
coarser resolution): the behaviour of every timeout stays as it was.
"""

from __future__ import annotations

import heapq
from typing import Any, Callable, List, Optional, Tuple

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

__all__ = ["Deadline", "Deadlines"]

log = Logger()

_SLACK = 1e-9
"""Seconds by which a deadline counts as due early: the timer's time is computed from
the clock's, and may differ from the deadline's by a rounding."""

_COMPACT_MIN = 64
"""Dead entries tolerated in the heap before it may be rebuilt without them."""


class Deadline:
    """
    One deadline of a L{Deadlines}: the C{active}, C{cancel}, C{reset} and
    C{getTime} of an C{IDelayedCall}.
    """

    __slots__ = ("_callback", "_key", "_owner", "when")

    def __init__(self, owner: Deadlines, when: float, callback: Callable[[], Any]) -> None:
        self._owner = owner
        self.when = when
        self._key = when
        self._callback: Optional[Callable[[], Any]] = callback

    def active(self) -> bool:
        """Whether it has neither fired nor been cancelled."""
        return self._callback is not None

    def getTime(self) -> float:  # noqa: N802 - IDelayedCall's name
        """When it fires (seconds, on the clock of its L{Deadlines})."""
        return self.when

    def cancel(self) -> None:
        """It will not fire (nothing happens if it fired or was cancelled already)."""
        if self._callback is not None:
            self._callback = None
            self._owner._dropped()

    def reset(self, seconds: float) -> None:
        """Fire C{seconds} from now instead."""
        if self._callback is None:
            return
        self._owner._move(self, self._owner.clock.seconds() + seconds)


class Deadlines:
    """
    The deadlines of one part of the proxy (a site's connections, an
    upstream proxy's exchanges), on C{clock}.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self._heap: List[Tuple[float, int, Deadline]] = []
        self._seq = 0
        self._dead = 0
        self._timer: Optional[IDelayedCall] = None
        self._timer_at = 0.0

    def __len__(self) -> int:
        """How many deadlines may still fire."""
        return len(self._heap) - self._dead

    def add(self, seconds: float, callback: Callable[[], Any]) -> Deadline:
        """Call C{callback} C{seconds} from now, unless the returned L{Deadline} is cancelled."""
        when = self.clock.seconds() + seconds
        deadline = Deadline(self, when, callback)
        self._file(deadline, when)
        return deadline

    # -- the heap

    def _file(self, deadline: Deadline, when: float) -> None:
        deadline._key = when
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, deadline))
        if self._timer is None or when < self._timer_at:
            self._schedule(when)

    def _dropped(self) -> None:
        """A deadline was cancelled: its entry is dead."""
        self._dead += 1
        heap = self._heap
        if self._dead == len(heap):
            # None left: no timer either (a quiet proxy holds none).
            del heap[:]
            self._dead = 0
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        elif self._dead > _COMPACT_MIN and self._dead * 2 > len(heap):
            # In place: a sweep under way holds the list.
            heap[:] = [entry for entry in heap
                       if entry[2]._callback is not None and entry[2]._key == entry[0]]
            heapq.heapify(heap)
            self._dead = 0

    def _move(self, deadline: Deadline, when: float) -> None:
        if when >= deadline._key:
            # Later: re-filed when its old time comes.
            deadline.when = when
            return
        # Earlier: filed again now; its old entry is dead.
        deadline.when = when
        self._dead += 1
        self._file(deadline, when)

    def _schedule(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self.clock.callLater(max(0.0, when - self.clock.seconds()), self._sweep)

    def _sweep(self) -> None:
        """Fire every deadline that is due, then wait for the next one."""
        self._timer = None
        heap = self._heap
        due = self.clock.seconds() + _SLACK
        while heap:
            key, _, deadline = heap[0]
            callback = deadline._callback
            if callback is None or deadline._key != key:
                heapq.heappop(heap)
                self._dead -= 1
                continue
            if deadline.when > due:
                if deadline.when == key:
                    break
                # Moved later since it was filed: filed again at its time.
                heapq.heappop(heap)
                self._file(deadline, deadline.when)
                continue
            heapq.heappop(heap)
            deadline._callback = None
            try:
                callback()
            except Exception:  # noqa: BLE001 - as the reactor does with a timed call
                log.failure("a deadline's callback failed")
            due = self.clock.seconds() + _SLACK
        if heap and (self._timer is None or self._timer_at > heap[0][0]):
            self._schedule(heap[0][0])
