"""
Overload, end to end through the guard: the IdP client's limits come from
the configuration (C{oidc.max_concurrent_requests},
C{oidc.max_queued_requests}), and a login refused for want of a slot is a
503 with C{Retry-After}, never a pile of requests at the IdP.

(The bounded queues themselves are tested where they live: the upstream's in
tests/test_upstream.py, the IdP client's in tests/test_provider.py; the
configuration keys in tests/test_config.py.)
"""

from __future__ import annotations

from typing import Any, List
from urllib.parse import urlencode

from twisted.trial.unittest import SynchronousTestCase

from oidcproxy.config import ConfigError

from .fakes import GuardStack, make_config


class IdPLimitTests(SynchronousTestCase):
    def callbacks(self, h: GuardStack, count: int) -> List[Any]:
        """C{count} browsers come back from the IdP at once; their pending callbacks."""
        pending = []
        for _ in range(count):
            browser = h.browser()
            params = h.authorize(browser)
            code = h.idp.issue_code(nonce=params["nonce"],
                                    code_verifier_challenge=params["code_challenge"])
            url = "/oidc/callback?" + urlencode({"code": code, "state": params["state"]})
            pending.append(browser.send(b"GET", url, headers={b"accept": [b"text/html"]}))
        h.network.pump()
        return pending

    def assertBusy(self, page: Any) -> None:
        self.assertEqual(page.code, 503, page.body)
        self.assertEqual(page.header(b"retry-after"), b"5")
        self.assertIn(b"The identity provider cannot be reached at the moment.", page.body)
        self.assertEqual([c.name for c in page.set_cookies if c.value
                          and not c.name.startswith("oidcproxy_state")], [])

    def test_login_storm_gets_503_with_retry_after(self):
        """
        With max_concurrent_requests = 1 and max_queued_requests = 2 and an
        IdP whose token endpoint hangs: of four callbacks, one code exchange
        reaches the IdP, two wait and the fourth is answered 503 with
        Retry-After at once (no session). The first waiter gets its turn
        when the first exchange times out (504); the second waiter, which
        waited oidc.timeout, gets 503 with Retry-After.
        """
        h = GuardStack(self, make_config(oidc={
            "timeout": "5s", "max_concurrent_requests": 1, "max_queued_requests": 2}))
        h.idp.hold_token_requests = True
        first, second = self.callbacks(h, 2)
        h.clock.advance(1.0)
        third, fourth = self.callbacks(h, 2)
        self.assertEqual(len(h.idp.held), 1)
        self.assertEqual([p.done for p in (first, second, third, fourth)],
                         [False, False, False, True])
        self.assertBusy(fourth.page())
        h.clock.advance(4.0)
        h.network.pump()
        self.assertEqual(first.page().code, 504)
        self.assertEqual(len(h.idp.token_requests), 2)  # the second's exchange went out
        h.clock.advance(1.0)
        h.network.pump()
        self.assertBusy(third.page())
        self.assertFalse(second.done)
        self.assertEqual(len(h.idp.token_requests), 2)

    def test_limits_validated(self):
        """The limits are integers, at least 1 in flight and at least 0 waiting."""
        for oidc, message in (
            ({"max_concurrent_requests": 0},
             "oidc.max_concurrent_requests: 0 is out of range; expected >= 1"),
            ({"max_queued_requests": -1},
             "oidc.max_queued_requests: -1 is out of range; expected >= 0"),
            ({"max_queued_requests": "10"},
             "oidc.max_queued_requests: expected an integer, got a string ('10')"),
        ):
            e = self.assertRaises(ConfigError, make_config, oidc=oidc)
            self.assertEqual(e.problems, [message])

    def test_defaults(self):
        """64 requests to the IdP at once, 256 waiting."""
        oidc = make_config().oidc
        assert oidc is not None
        self.assertEqual((oidc.max_concurrent_requests, oidc.max_queued_requests), (64, 256))
