"""
The refresh races of the fault matrix, with the real OP (which counts every
token request and every grant) and real C{twistd oidcproxy} processes.

Already covered in L{tests.integration.test_sessions_redis}: 50 concurrent
requests, half to each of two proxies sharing Redis, with an access token
I{within the refresh leeway but still valid}, give one refresh grant. Here
the access token has I{expired} (nothing can be served without the
refresh), with the cookie store in one process and with Redis across two,
and the token endpoint is slower than the proxies' IdP timeout and the
cross-process lock's lease (C{2 * oidc.timeout + 5 s}).
"""

from __future__ import annotations

import time
from typing import Any, List, Tuple

from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from tests.integration import procs
from tests.integration.faults import (
    FaultStack,
    LoggedIn,
    WebClient,
    api_get,
    concurrently,
    identity_of,
    log_in,
    report,
    start_fault_stack,
)

MODULE = "refresh"
CONCURRENT = 50
ACCESS_TOKEN_TTL = 3
"""The OP's access-token lifetime in the expired-token tests (seconds)."""


class RefreshRaceTests(TestCase):
    timeout = 90

    async def burst(self, stack: FaultStack, s: LoggedIn,
                    count: int = CONCURRENT) -> List[Tuple[int, List[str], float]]:
        """C{count} concurrent API calls with C{s}'s cookie, round robin over the proxies."""
        client = WebClient(self)

        async def one(i: int) -> Tuple[int, List[str], float]:
            started = time.monotonic()
            response, body = await api_get(client, stack.proxies[i % len(stack.proxies)],
                                           s.cookie)
            return response.code, identity_of(body), time.monotonic() - started

        return await concurrently([one(i) for i in range(count)])

    def assertAllServed(self, results: List[Tuple[int, List[str], float]], user: str,
                        context: Any) -> None:
        failed = [(i, code, seen) for i, (code, seen, _) in enumerate(results)
                  if code != 200 or seen != [user]]
        self.assertEqual(failed, [], context)

    async def expired(self, stack: FaultStack, proxies: int) -> None:
        op = stack.op
        alice = await log_in(self, stack, "user1")
        logged_in = time.monotonic()
        await procs.sleep(max(0.0, logged_in + ACCESS_TOKEN_TTL + 0.5 - time.monotonic()))
        results = await self.burst(stack, alice)
        grants = op.events("grant.success", "refresh_token")
        requests = len(op.events("token.request")) - 1  # the login's code exchange
        report(MODULE, f"expired token, {proxies} proxies: {CONCURRENT} requests, "
                       f"{[c for c, _, _ in results].count(200)} x 200 in at most "
                       f"{max(t for _, _, t in results):.2f}s; token requests {requests}, "
                       f"refresh grants {len(grants)}")
        self.assertAllServed(results, "user1", stack.describe())
        self.assertEqual(op.events("grant.error"), [], stack.describe())
        self.assertEqual(len(grants), 1, stack.describe())
        self.assertEqual(requests, 1, stack.describe())

    async def test_expired_token_fifty_requests_one_process(self) -> None:
        """
        The access token has expired (cookie sessions, one proxy): 50
        concurrent requests all get 200 as the user, with one refresh grant.
        """
        stack = await start_fault_stack(self, session={"refresh_leeway": "1s"},
                                        access_token_ttl=ACCESS_TOKEN_TTL,
                                        rotate_refresh_tokens=True)
        await self.expired(stack, 1)

    async def test_expired_token_fifty_requests_two_processes(self) -> None:
        """
        The access token has expired (Redis sessions, two proxies, half the
        requests to each): all 50 get 200 as the user, with one refresh grant
        (rotated refresh tokens: a second grant would have failed).
        """
        stack = await start_fault_stack(self, proxies=2, redis=[],
                                        session={"refresh_leeway": "1s"},
                                        access_token_ttl=ACCESS_TOKEN_TTL,
                                        rotate_refresh_tokens=True)
        await self.expired(stack, 2)

    async def test_token_endpoint_slower_than_the_lease(self) -> None:
        """
        Two proxies sharing Redis, IdP timeout 1 s (so a lock lease of 7 s),
        and a token endpoint that takes 10 s: 50 concurrent requests whose
        session is due for refresh (the access token still valid), and more
        requests after the first grant timed out, are all served with the
        old token, never two token requests at once; once the endpoint is
        fast again, the session is refreshed with one grant and no failed
        one (rotated refresh tokens: a token spent twice would fail).

        The token requests sent within the lease are reported, not asserted
        here: see L{test_no_retry_within_the_lease_after_a_timeout}.
        """
        stack = await start_fault_stack(self, proxies=2, redis=[], oidc={"timeout": "1s"},
                                        session={"refresh_leeway": "28s"},
                                        access_token_ttl=30, rotate_refresh_tokens=True)
        op = stack.op
        alice = await log_in(self, stack, "user1")
        logged_in = time.monotonic()
        base = len(op.events("token.request"))
        await stack.op_hook(self, "token-stall?seconds=10")
        # Due 2 s after the tokens were issued (before the login's last step).
        await procs.sleep(max(0.0, logged_in + 2.2 - time.monotonic()))
        started = time.monotonic()
        first = Deferred.fromCoroutine(self.burst(stack, alice))
        # More requests after the first grant has timed out in its proxy,
        # while the OP may still be working on it.
        later = []
        await procs.sleep(1.5)
        while time.monotonic() - started < 5.5:
            later.append(Deferred.fromCoroutine(self.burst(stack, alice, 4)))
            await procs.sleep(0.5)
        during_lease = len(op.events("token.request")) - base
        await stack.op_hook(self, "token-stall?seconds=0")
        results = await first
        self.assertAllServed(results, "user1", stack.describe())
        for d in later:
            self.assertAllServed(await d, "user1", stack.describe())
        slowest = max(t for _, _, t in results)
        await procs.sleep(max(0.0, started + 7.5 - time.monotonic()))
        self.assertAllServed(await self.burst(stack, alice, 10), "user1", stack.describe())
        grants = op.events("grant.success", "refresh_token")
        report(MODULE, f"token endpoint slower than the lease: {CONCURRENT} requests served "
                       f"in at most {slowest:.2f}s; token requests within the lease "
                       f"{during_lease}; refresh grants after it {len(grants)}")
        self.assertEqual(len(grants), 1, stack.describe())
        self.assertEqual(op.events("grant.error"), [], stack.describe())
        self.assertEqual(op.events("token.abandoned"), [], stack.describe())

    async def test_no_retry_within_the_lease_after_a_timeout(self) -> None:
        """
        A refresh grant that timed out may still be granted by the IdP (with
        rotated refresh tokens, a second grant with the same token would then
        revoke the session at the IdP), so no other grant for that session
        goes out until the lease is over: one proxy, IdP timeout 1 s, a token
        endpoint that takes 10 s, requests every 0.5 s for 4 s, each served
        with the still-valid access token, and one token request in all.
        """
        stack = await start_fault_stack(self, oidc={"timeout": "1s"},
                                        session={"refresh_leeway": "28s"},
                                        access_token_ttl=30)
        op = stack.op
        alice = await log_in(self, stack, "user1")
        logged_in = time.monotonic()
        base = len(op.events("token.request"))
        await stack.op_hook(self, "token-stall?seconds=10")
        await procs.sleep(max(0.0, logged_in + 2.2 - time.monotonic()))
        started = time.monotonic()
        while time.monotonic() - started < 4.0:
            self.assertAllServed(await self.burst(stack, alice, 1), "user1", stack.describe())
            await procs.sleep(0.5)
        requests = len(op.events("token.request")) - base
        report(MODULE, f"token requests within the lease after a timed-out grant: {requests}")
        self.assertEqual(requests, 1, stack.describe())
