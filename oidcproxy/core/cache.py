"""
One bounded in-memory cache for the per-process caches (opened sessions,
validated bearer tokens, recent refreshes): a map bounded in entries and,
optionally, in a total weight (e.g. characters kept), least recently used
out first, whose entries also lapse after C{idle} seconds without use or at
a deadline of their own. Time comes from the injected clock
(C{clock.seconds()}), so tests drive it with a L{twisted.internet.task.Clock}.

Nothing runs in the background: a lapsed entry is dropped when a lookup finds
it, and L{BoundedCache.put} drops, from the least recently used end, every
entry that lapsed or that the bounds leave no room for. The memory a cache
holds therefore follows the entries in use, not every entry ever seen.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Generic, Hashable, List, Optional, Tuple, TypeVar, Union, overload

from twisted.internet.interfaces import IReactorTime

__all__ = ["BoundedCache"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
D = TypeVar("D")

# An entry: the value, its deadline (None: none), when it was last used, its weight.
_Entry = Tuple[Any, Optional[float], float, int]


class BoundedCache(Generic[K, V]):
    """
    @param clock: the time source of C{idle} and of the deadlines.
    @param max_entries: the most entries kept; 0 keeps none.
    @param idle: an entry not used (looked up with L{get}, or put) for this
        many seconds lapses; None: entries do not lapse for lack of use.
    @param max_weight: the most total weight kept (each entry's is given to
        L{put}); None: no bound but the number of entries.
    """

    def __init__(
        self,
        clock: IReactorTime,
        max_entries: int,
        *,
        idle: Optional[float] = None,
        max_weight: Optional[int] = None,
    ) -> None:
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 0:
            raise ValueError(f"max_entries must be an integer, at least 0, not {max_entries!r}")
        if idle is not None and not idle > 0:
            raise ValueError(f"idle must be a positive number of seconds, not {idle!r}")
        if max_weight is not None and max_weight < 0:
            raise ValueError(f"max_weight must not be negative, not {max_weight!r}")
        self._clock = clock
        self._max_entries = max_entries
        self._idle = idle
        self._max_weight = max_weight
        self._entries: OrderedDict[K, _Entry] = OrderedDict()
        self._weight = 0

    def __len__(self) -> int:
        """How many entries are held (lapsed ones included until they are dropped)."""
        return len(self._entries)

    def keys(self) -> List[K]:
        """The keys held, least recently used first."""
        return list(self._entries)

    def _lapsed(self, entry: _Entry, now: float) -> bool:
        _, until, used, _ = entry
        if until is not None and now >= until:
            return True
        return self._idle is not None and now - used >= self._idle

    @overload
    def get(self, key: K) -> Optional[V]: ...

    @overload
    def get(self, key: K, default: D) -> Union[V, D]: ...

    def get(self, key: K, default: Any = None) -> Any:
        """
        The value of C{key}, which becomes the most recently used; C{default}
        when there is none or it lapsed (it is dropped then).
        """
        entry = self._entries.get(key)
        if entry is None:
            return default
        now = self._clock.seconds()
        if self._lapsed(entry, now):
            self._drop(key)
            return default
        self._entries[key] = (entry[0], entry[1], now, entry[3])
        self._entries.move_to_end(key)
        return entry[0]

    @overload
    def peek(self, key: K) -> Optional[V]: ...

    @overload
    def peek(self, key: K, default: D) -> Union[V, D]: ...

    def peek(self, key: K, default: Any = None) -> Any:
        """Like L{get}, but the entry is not marked as used (its place and idle time stay)."""
        entry = self._entries.get(key)
        if entry is None:
            return default
        if self._lapsed(entry, self._clock.seconds()):
            self._drop(key)
            return default
        return entry[0]

    def put(self, key: K, value: V, *, until: Optional[float] = None, weight: int = 0) -> None:
        """
        Keep C{value} under C{key} (replacing what was there) as the most
        recently used entry, until C{until} at the latest (a time of the
        clock; None: no deadline), then drop whatever lapsed or is beyond
        the bounds, least recently used first (the new entry too, when it
        alone is beyond them).
        """
        now = self._clock.seconds()
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (value, until, now, weight)
        self._weight += weight
        self.prune()

    def replace(self, key: K, value: V) -> bool:
        """
        Give the entry of C{key} a new value, keeping its place, deadline,
        weight and idle time. Nothing happens when there is no entry.

        @return: whether there was one.
        """
        entry = self._entries.get(key)
        if entry is None:
            return False
        self._entries[key] = (value, entry[1], entry[2], entry[3])
        return True

    def pop(self, key: K) -> None:
        """Forget C{key}, if held."""
        if key in self._entries:
            self._drop(key)

    def prune(self) -> None:
        """Drop lapsed entries and those beyond the bounds, from the least recently used."""
        entries = self._entries
        now = self._clock.seconds()
        while entries:
            oldest_key, oldest = next(iter(entries.items()))
            if (
                len(entries) <= self._max_entries
                and (self._max_weight is None or self._weight <= self._max_weight)
                and not self._lapsed(oldest, now)
            ):
                break
            self._drop(oldest_key)

    def _drop(self, key: K) -> None:
        entry = self._entries.pop(key)
        self._weight -= entry[3]
