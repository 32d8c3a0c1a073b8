"""
Tests for the proxy engine's per-request cost: a free upstream slot is
taken at once (no Deferred), and an exchange watches its request's end
through one C{notifyFinish}; the slot line and the client-gone cancellation
work as before.
"""

from __future__ import annotations

from typing import Any, List

from twisted.trial.unittest import SynchronousTestCase
from twisted.web import http

from oidcproxy.config import UpstreamSettings
from oidcproxy.core.admission import QueueFull, SlotQueue

from .fakes import HangingAgent
from .test_upstream import ProxyHarness, route


class SlotTakeTests(SynchronousTestCase):
    def test_take_free_slot(self):
        """take() takes a free slot at once, and says False when none is free."""
        slots = SlotQueue(2, 1)
        self.assertTrue(slots.take())
        self.assertTrue(slots.take())
        self.assertFalse(slots.take())
        self.assertEqual(slots.free, 0)
        waiting = slots.acquire()
        self.assertNoResult(waiting)
        self.failureResultOf(slots.acquire(), QueueFull)
        slots.release()
        self.successResultOf(waiting)
        slots.release()
        self.assertTrue(slots.take())


class ExchangeCostTests(SynchronousTestCase):
    def count_notify_finish(self) -> List[Any]:
        calls: List[Any] = []
        original = http.Request.notifyFinish

        def counting(request: Any) -> Any:
            calls.append(request)
            return original(request)

        self.patch(http.Request, "notifyFinish", counting)
        return calls

    def test_free_slot_no_deferred(self):
        """With a slot free, the exchange takes it without a Deferred, and its request goes up."""
        h = ProxyHarness()
        client = h.proxy._clients[0]
        acquired: List[Any] = []
        acquire = client.slots.acquire
        self.patch(client.slots, "acquire", lambda: acquired.append(1) or acquire())
        response, _ = h.fetch(self)
        self.assertEqual(response.code, 200)
        self.assertEqual(acquired, [])
        self.assertEqual(client.slots.free, client.slots.slots)

    def test_one_notify_finish(self):
        """An exchange watches the end of its request once (the proxy's count goes with it)."""
        calls = self.count_notify_finish()
        h = ProxyHarness()
        response, _ = h.fetch(self)
        self.assertEqual(response.code, 200)
        self.assertEqual(len(calls), 1)
        self.assertEqual(h.proxy._in_flight, 0)

    def test_client_gone_cancels_and_counts(self):
        """A client that leaves cancels the upstream request and the exchange is over."""
        agent = HangingAgent()
        h = ProxyHarness([route(settings=UpstreamSettings(timeout=30.0))], agent=agent)
        d = h.client.get("http://proxy.test/")
        h.flush()
        self.assertEqual(h.proxy._in_flight, 1)
        d.cancel()
        h.flush()
        self.failureResultOf(d)
        self.assertEqual(agent.cancelled, 1)
        self.assertEqual(h.proxy._in_flight, 0)
        self.assertEqual(h.clock.getDelayedCalls(), [])
