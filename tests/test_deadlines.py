"""
Tests for L{Deadlines}: many deadlines on one reactor timer, each firing at
its own time as C{callLater} would, cancelled and moved later in O(1).
"""

from __future__ import annotations

from typing import List

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from oidcproxy.config import UpstreamSettings
from oidcproxy.core.deadlines import Deadlines

from .fakes import HangingAgent
from .test_upstream import ProxyHarness, route


class DeadlinesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.deadlines = Deadlines(self.clock)
        self.fired: List[str] = []

    def add(self, seconds: float, name: str):  # type: ignore[no-untyped-def]
        return self.deadlines.add(seconds, lambda: self.fired.append(name))

    def test_fires_at_its_time(self):
        """A deadline fires at its time exactly, not before."""
        self.add(30, "a")
        self.clock.advance(29.999)
        self.assertEqual(self.fired, [])
        self.clock.advance(0.001)
        self.assertEqual(self.fired, ["a"])

    def test_fractional_times(self):
        """Times the clock reaches by fractions fire exactly then (no rounding left over)."""
        self.clock.advance(1.1)
        self.add(0.2, "a")
        self.clock.advance(0.2)
        self.assertEqual(self.fired, ["a"])

    def test_one_timer(self):
        """A thousand deadlines hold one reactor timer; each fires in order of its time."""
        for i in range(1000):
            self.add(30 + i / 1000, str(i))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(30.5)
        self.assertEqual(self.fired, [str(i) for i in range(501)])
        self.clock.advance(1)
        self.assertEqual(len(self.fired), 1000)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_same_time_in_order_added(self):
        """Deadlines of the same time fire in the order they were added."""
        for name in "abc":
            self.add(5, name)
        self.clock.advance(5)
        self.assertEqual(self.fired, ["a", "b", "c"])

    def test_earlier_deadline_moves_the_timer(self):
        """A deadline earlier than all others fires at its time."""
        self.add(30, "late")
        self.add(10, "early")
        self.clock.advance(10)
        self.assertEqual(self.fired, ["early"])
        self.clock.advance(20)
        self.assertEqual(self.fired, ["early", "late"])

    def test_cancel(self):
        """A cancelled deadline never fires; cancelling twice, or after it fired, does nothing."""
        a = self.add(5, "a")
        b = self.add(6, "b")
        a.cancel()
        a.cancel()
        self.assertFalse(a.active())
        self.clock.advance(6)
        self.assertEqual(self.fired, ["b"])
        self.assertFalse(b.active())
        b.cancel()
        self.assertEqual(len(self.deadlines), 0)

    def test_no_timer_when_none_left(self):
        """Once every deadline is cancelled, no reactor timer is left."""
        handles = [self.add(30, str(i)) for i in range(10)]
        for handle in handles:
            handle.cancel()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.add(1, "x")
        self.clock.advance(1)
        self.assertEqual(self.fired, ["x"])

    def test_many_cancelled_are_dropped(self):
        """Cancelled deadlines do not pile up: the heap is rebuilt without them."""
        keep = self.add(60, "keep")
        for i in range(10_000):
            self.add(30 + i / 10_000, str(i)).cancel()
        self.assertLess(len(self.deadlines._heap), 200)
        self.assertEqual(len(self.deadlines), 1)
        self.clock.advance(60)
        self.assertEqual(self.fired, ["keep"])
        self.assertFalse(keep.active())

    def test_reset_later(self):
        """A deadline moved later fires at its new time, not its old one."""
        a = self.add(10, "a")
        self.clock.advance(8)
        a.reset(10)
        self.assertEqual(a.getTime(), 18)
        self.clock.advance(2)
        self.assertEqual(self.fired, [])
        self.clock.advance(8)
        self.assertEqual(self.fired, ["a"])

    def test_reset_earlier(self):
        """A deadline moved earlier fires at its new time, once."""
        a = self.add(10, "a")
        self.add(20, "b")
        a.reset(2)
        self.clock.advance(2)
        self.assertEqual(self.fired, ["a"])
        self.clock.advance(20)
        self.assertEqual(self.fired, ["a", "b"])

    def test_callback_adds_and_cancels(self):
        """A callback may add a deadline (due now: it fires in the same sweep) or cancel others."""
        later = self.add(5, "later")

        def first() -> None:
            self.fired.append("first")
            later.cancel()
            self.add(0, "now")

        self.deadlines.add(1, first)
        self.clock.advance(1)
        self.assertEqual(self.fired, ["first", "now"])
        self.clock.advance(10)
        self.assertEqual(self.fired, ["first", "now"])

    def test_failing_callback(self):
        """A callback that fails is logged; the other deadlines still fire."""
        def broken() -> None:
            raise RuntimeError("bug")

        self.deadlines.add(1, broken)
        self.add(1, "after")
        self.add(2, "later")
        self.clock.advance(2)
        self.assertEqual(self.fired, ["after", "later"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class SharedTimerTests(SynchronousTestCase):
    def test_exchanges_share_one_timer(self):
        """
        Twenty exchanges waiting on their upstream hold one timer of the
        proxy's deadlines, not a callLater each; each still times out (504).
        """
        agent = HangingAgent()
        h = ProxyHarness([route(settings=UpstreamSettings(timeout=3.0, max_connections=100))],
                         agent=agent)
        pending = [h.client.get(f"http://proxy.test/r{i}") for i in range(20)]
        h.flush()
        self.assertEqual(len(h.clock.getDelayedCalls()), 1)
        h.clock.advance(3)
        h.flush()
        self.assertEqual([self.successResultOf(d).code for d in pending], [504] * 20)
        self.assertEqual(agent.cancelled, 20)
        self.assertEqual(h.clock.getDelayedCalls(), [])
