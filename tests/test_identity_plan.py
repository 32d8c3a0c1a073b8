"""
Tests for the identity headers' plan: made once per configuration (at start
and on reload), a session's header values computed once and kept while the
session object lives, and an unusable claim value logged once per session.
"""

from __future__ import annotations

import gc
from typing import Any, Dict, List

import attr
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from oidcproxy.proxy.routes import RouteTable
from oidcproxy.sessions.session import Session
from oidcproxy.web.headers import IdentityPlan

from .fakes import API, GuardStack, make_config


def session(**claims: Any) -> Session:
    return Session(id="s" * 43, sub="user-1", claims={"sub": "user-1", **claims}, created=10.0,
                   last_seen=10.0, expires=1e10, id_token="id.tok.en", access_token="at")


def unusable_lines(case: SynchronousTestCase) -> List[Dict[str, Any]]:
    """The log events of unusable claim values, from now on."""
    events: List[Dict[str, Any]] = []

    def observe(event: Dict[str, Any]) -> None:
        if "unusable value" in event.get("log_format", ""):
            events.append(event)

    globalLogPublisher.addObserver(observe)
    case.addCleanup(globalLogPublisher.removeObserver, observe)
    return events


class IdentityPlanTests(SynchronousTestCase):
    def plan(self, **changes: Any) -> IdentityPlan:
        return IdentityPlan(make_config(**changes))

    def test_values(self):
        """The first usable claim of each header, then the tokens as configured."""
        plan = self.plan(oidc={"pass_access_token": "authorization", "pass_id_token": True})
        values = plan.session_values(session(preferred_username="alice", groups=["a", "b"]))
        self.assertEqual(values, [(b"X-Forwarded-User", [b"alice"]),
                                  (b"X-Forwarded-Groups", [b"a,b"]),
                                  (b"authorization", [b"Bearer at"]),
                                  (b"X-Forwarded-Id-Token", [b"id.tok.en"])])

    def test_access_token_header(self):
        """pass_access_token = "header": the token in X-Forwarded-Access-Token."""
        plan = self.plan(oidc={"pass_access_token": "header"})
        self.assertIn((b"X-Forwarded-Access-Token", [b"at"]), plan.session_values(session()))

    def test_computed_once_per_session(self):
        """A session's values are computed on its first request and kept: the same list after."""
        plan = self.plan()
        s = session(email="a@example.com")
        first = plan.session_values(s)
        self.assertIs(plan.session_values(s), first)
        other = attr.evolve(s, claims={"sub": "user-1", "email": "b@example.com"})
        self.assertIn((b"X-Forwarded-Email", [b"b@example.com"]), plan.session_values(other))

    def test_dropped_with_the_session(self):
        """Nothing is kept for a session object that is gone."""
        plan = self.plan()
        s = session(email="a@example.com")
        plan.session_values(s)
        del s
        gc.collect()
        self.assertEqual(plan._sessions, {})

    def test_unusable_logged_once_per_session(self):
        """An unusable claim value is logged once per session, even over copies of it."""
        events = unusable_lines(self)
        plan = self.plan()
        s = session(email="bad\r\nvalue")
        for copy in (s, s, attr.evolve(s), attr.evolve(s, last_seen=20.0)):
            self.assertNotIn(b"X-Forwarded-Email", [n for n, _ in plan.session_values(copy)])
        self.assertEqual(len(events), 1)
        plan.session_values(attr.evolve(s, id="t" * 43))
        self.assertEqual(len(events), 2)


class GuardPlanTests(SynchronousTestCase):
    def test_unusable_claim_logged_once(self):
        """Three requests of a session with an unusable claim value: one log line."""
        h = GuardStack(self)
        browser = h.logged_in(claims={"email": "bad\nvalue"})
        events = unusable_lines(self)
        for _ in range(3):
            self.assertEqual(browser.get("/x", headers=API).code, 200)
            self.assertEqual(h.app.header(b"x-forwarded-email"), [])
        self.assertEqual(len(events), 1)

    def test_reload_replans(self):
        """A reload's [headers] apply to the next request of a running session."""
        h = GuardStack(self)
        browser = h.logged_in(claims={"email": "a@example.com"})
        self.assertEqual(browser.get("/x", headers=API).code, 200)
        self.assertEqual(h.app.header(b"x-forwarded-email"), [b"a@example.com"])
        config = make_config(headers={"X-Mail": "email"})
        h.guard.reconfigure(config, RouteTable(config.routes), h.app)
        self.assertEqual(browser.get("/x", headers=API).code, 200)
        self.assertEqual(h.app.header(b"x-mail"), [b"a@example.com"])
        self.assertEqual(h.app.header(b"x-forwarded-email"), [])

