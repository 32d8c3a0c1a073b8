"""
Tests for L{oidcproxy.core.settle} and the places that wait on several
Deferreds at once: no error is left unhandled, each is logged.
"""

from __future__ import annotations

from typing import Any, Dict, List

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.testing import MemoryReactor
from twisted.logger import Logger, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from oidcproxy.config import parse_config
from oidcproxy.core.settle import all_settled
from oidcproxy.service import ProxyService

from .test_lifecycle import pool_for

CONFIG = parse_config(
    {"routes": [{"path": "/", "upstream": "http://127.0.0.1:9", "auth": "none"}]}, "t.toml"
)


def capture(case: SynchronousTestCase) -> List[Dict[str, Any]]:
    events: List[Dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    case.addCleanup(globalLogPublisher.removeObserver, events.append)
    return events


class AllSettledTests(SynchronousTestCase):
    def test_fires_once_all_have(self):
        """It fires (with None) only once every Deferred has fired."""
        first: Deferred = Deferred()
        d = all_settled([("a", first), ("b", succeed(1))], Logger(), "testing")
        self.assertNoResult(d)
        first.callback(2)
        self.assertIsNone(self.successResultOf(d))

    def test_failures_logged_not_left_unhandled(self):
        """Each failure is logged with its name; none is left to the garbage collector."""
        events = capture(self)
        d = all_settled([("a", fail(ValueError("boom"))), ("b", succeed(1)),
                         ("c", fail(KeyError("k")))], Logger(), "testing")
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)
        self.assertEqual([(e["what"], e["name"]) for e in events if "log_failure" in e],
                         [("testing", "a"), ("testing", "c")])


class LoggedFailureTests(SynchronousTestCase):
    def test_listener_failure_logged(self):
        """A listener that fails after the start is logged, and the others still announce."""
        events = capture(self)
        service = ProxyService(CONFIG, MemoryReactor(), ["tcp:8081", "tcp:8082"])
        late = service.listeners[1]
        late.privilegedStartService = lambda: None  # type: ignore[method-assign]
        service.privilegedStartService()
        late.listening.errback(Failure(RuntimeError("adopted socket gone")))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        [logged] = [e for e in events if "log_failure" in e]
        self.assertEqual((logged["what"], logged["name"]), ("listening", "tcp:8082"))

    def test_close_failure_logged(self):
        """A part that fails to close at stop is logged; the stop still completes."""
        events = capture(self)
        service = ProxyService(CONFIG, MemoryReactor(), ["tcp:8081"])
        service.privilegedStartService()
        service.startService()
        service.site.guard.close = lambda: fail(RuntimeError("close failed"))  # type: ignore
        self.successResultOf(service.stopService())
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        [logged] = [e for e in events if "log_failure" in e]
        self.assertEqual((logged["what"], logged["name"]), ("closing", "the guard"))

    def test_worker_end_failure_logged(self):
        """A worker whose end fails is logged at stop; the ports are closed all the same."""
        pool, _, spawn, events = pool_for(self)
        pool.startService()
        d = pool.stopService()
        spawn.spawned[0][0].ended.errback(Failure(RuntimeError("lost track")))
        spawn.spawned[1][0].ended.callback(None)
        self.successResultOf(d)
        self.assertEqual(pool.ports, [])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        [logged] = [e for e in events if "log_failure" in e]
        self.assertEqual((logged["what"], logged["name"]), ("stopping", "worker 1"))
