"""
Tests for L{oidcproxy.core.cache.BoundedCache}: bounds, least recently used
eviction, idle expiry and deadlines, all on the injected clock.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from oidcproxy.core.cache import BoundedCache


class BoundedCacheTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)

    def test_get_and_default(self):
        """A value put is found; a missing key gives the default (None unless given)."""
        cache: BoundedCache[str, int] = BoundedCache(self.clock, 10)
        cache.put("a", 1)
        self.assertEqual(cache.get("a"), 1)
        self.assertIsNone(cache.get("b"))
        marker = object()
        self.assertIs(cache.get("b", marker), marker)

    def test_none_is_a_value(self):
        """A cached None is told apart from a miss through the default."""
        cache: BoundedCache[str, None] = BoundedCache(self.clock, 10)
        cache.put("a", None)
        marker = object()
        self.assertIsNone(cache.get("a", marker))
        self.assertIs(cache.get("b", marker), marker)

    def test_lru_eviction(self):
        """Beyond max_entries the least recently used entry goes first; a lookup counts as use."""
        cache: BoundedCache[str, int] = BoundedCache(self.clock, 2)
        cache.put("a", 1)
        cache.put("b", 2)
        self.assertEqual(cache.get("a"), 1)
        cache.put("c", 3)
        self.assertIsNone(cache.get("b"))
        self.assertEqual((cache.get("a"), cache.get("c")), (1, 3))
        self.assertEqual(cache.keys(), ["a", "c"])

    def test_peek_does_not_use(self):
        """L{BoundedCache.peek} finds the value but leaves its place: it is still evicted first."""
        cache: BoundedCache[str, int] = BoundedCache(self.clock, 2)
        cache.put("a", 1)
        cache.put("b", 2)
        self.assertEqual(cache.peek("a"), 1)
        cache.put("c", 3)
        self.assertIsNone(cache.get("a"))

    def test_zero_entries_keeps_nothing(self):
        cache: BoundedCache[str, int] = BoundedCache(self.clock, 0)
        cache.put("a", 1)
        self.assertEqual(len(cache), 0)
        self.assertIsNone(cache.get("a"))

    def test_idle_expiry_on_the_clock(self):
        """An entry unused for idle seconds of the clock lapses; each use restarts its idle time."""
        cache: BoundedCache[str, int] = BoundedCache(self.clock, 10, idle=60)
        cache.put("a", 1)
        self.clock.advance(59)
        self.assertEqual(cache.get("a"), 1)
        self.clock.advance(59)
        self.assertEqual(cache.get("a"), 1)
        self.clock.advance(60)
        self.assertIsNone(cache.get("a"))
        self.assertEqual(len(cache), 0)

    def test_peek_does_not_restart_idle_time(self):
        cache: BoundedCache[str, int] = BoundedCache(self.clock, 10, idle=60)
        cache.put("a", 1)
        self.clock.advance(59)
        self.assertEqual(cache.peek("a"), 1)
        self.clock.advance(1)
        self.assertIsNone(cache.peek("a"))

    def test_deadline(self):
        """An entry put with until lapses at that time of the clock, used or not."""
        cache: BoundedCache[str, int] = BoundedCache(self.clock, 10, idle=60)
        cache.put("a", 1, until=1030)
        self.clock.advance(29)
        self.assertEqual(cache.get("a"), 1)
        self.clock.advance(1)
        self.assertIsNone(cache.get("a"))

    def test_put_drops_lapsed(self):
        """A put drops, from the least recently used end, whatever lapsed."""
        cache: BoundedCache[str, int] = BoundedCache(self.clock, 10, idle=60)
        cache.put("old", 1)
        cache.put("older-deadline", 2, until=1010)
        self.clock.advance(61)
        cache.put("new", 3)
        self.assertEqual(cache.keys(), ["new"])

    def test_weight_bound(self):
        """The total weight stays within max_weight, least recently used out first."""
        cache: BoundedCache[str, int] = BoundedCache(self.clock, 100, max_weight=10)
        cache.put("a", 1, weight=4)
        cache.put("b", 2, weight=4)
        cache.get("a")
        cache.put("c", 3, weight=4)
        self.assertEqual(cache.keys(), ["a", "c"])
        cache.put("a", 1, weight=1)  # replaced: its old weight no longer counts
        cache.put("d", 4, weight=5)
        self.assertEqual(cache.keys(), ["c", "a", "d"])
        cache.put("e", 5, weight=11)  # alone beyond the bound: everything goes
        self.assertEqual(cache.keys(), [])

    def test_replace_keeps_place_and_times(self):
        """replace changes the value only: the deadline, the idle time and the place stay."""
        cache: BoundedCache[str, int] = BoundedCache(self.clock, 2)
        cache.put("a", 1, until=1060)
        cache.put("b", 2)
        self.assertTrue(cache.replace("a", 10))
        self.assertFalse(cache.replace("z", 0))
        self.assertEqual(cache.peek("a"), 10)
        cache.put("c", 3)
        self.assertIsNone(cache.peek("a"))  # still the least recently used
        cache.put("a", 1, until=1060)
        self.clock.advance(60)
        self.assertTrue(cache.replace("a", 11))
        self.assertIsNone(cache.peek("a"))

    def test_pop(self):
        cache: BoundedCache[str, int] = BoundedCache(self.clock, 10, max_weight=5)
        cache.put("a", 1, weight=5)
        cache.pop("a")
        cache.pop("a")
        cache.put("b", 2, weight=5)
        self.assertEqual(cache.get("b"), 2)

    def test_bad_settings(self):
        for args, kwargs in [((-1,), {}), ((1.5,), {}), ((True,), {}), ((1,), {"idle": 0}),
                             ((1,), {"max_weight": -1})]:
            self.assertRaises(ValueError, BoundedCache, self.clock, *args, **kwargs)
