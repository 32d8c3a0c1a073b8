"""
The "nothing lost" checker: 200 users log in through the real login path
(the OP's forms, the proxy's callback), two proxies share one redis-server,
a Redis fault is run while the users keep coming, and then every cookie is
replayed (round robin over both proxies) and the identity the upstream
receives is compared with the cookie's user.

Lost: a session committed before the fault (its login finished) answered
with a login redirect or a 401 after recovery. Mixed: another user's
identity. Both must be 0 after every fault. Redis restarted I{empty} is left
out on purpose: it loses every session by definition
(L{tests.integration.test_sessions_redis} pins what the proxy does then).

Redis runs with an append-only file synced on every write, so a killed and
restarted server has every write it acknowledged.
"""

from __future__ import annotations

import time
from typing import List, Tuple

from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from tests.integration import procs
from tests.integration.faults import (
    DURABLE,
    FaultStack,
    LoggedIn,
    Replay,
    WebClient,
    concurrently,
    fill_until_oom,
    free_junk,
    log_in_many,
    replay,
    report,
    start_fault_stack,
    try_log_in,
    until_serving,
    user_name,
)

USERS = 200
MODULE = "nothing_lost"


class NothingLostTests(TestCase):
    """200 sessions, a Redis fault, every cookie replayed: 0 lost, 0 mixed."""

    timeout = 180

    async def prepare(self, *redis_args: str) -> Tuple[FaultStack, List[LoggedIn]]:
        self.newcomers: List[LoggedIn] = []
        stack = await start_fault_stack(self, proxies=2, redis=DURABLE + list(redis_args))
        started = time.monotonic()
        sessions = await log_in_many(self, stack, USERS)
        report(MODULE, f"{USERS} logins in {time.monotonic() - started:.1f}s")
        before = await replay(self, stack.proxies, sessions)
        self.assertEqual((before.served, before.lost, before.mixed, before.other),
                         (USERS, [], [], []), before.summary())
        return stack, sessions

    async def assertNothingLost(self, stack: FaultStack, sessions: List[LoggedIn],
                                what: str) -> None:
        """Every session (the 200 and those committed during the fault) served as its user."""
        everyone = list(sessions) + self.newcomers
        after = await replay(self, stack.proxies, everyone)
        report(MODULE, f"{what}: {after.summary()}")
        self.assertEqual(after.lost, [], f"{what}: {after.summary()}")
        self.assertEqual(after.mixed, [], f"{what}: {after.summary()}")
        self.assertEqual(after.other, [], f"{what}: {after.summary()}")
        self.assertEqual(after.served, len(everyone), f"{what}: {after.summary()}")

    async def during(self, stack: FaultStack, sessions: List[LoggedIn]) -> Replay:
        """
        While the fault lasts: a replay of every cookie and 20 new logins at
        the same time. No 500, no lost session, no mixing; a login either
        ends with a 503 or is committed (it joins C{sessions}).
        """
        first = len(sessions) + len(self.newcomers)
        replayed, logins = await concurrently([
            replay(self, stack.proxies, sessions, parallel=50),
            concurrently([try_log_in(self, stack, user_name(first + i)) for i in range(20)],
                         limit=5),
        ])
        committed = [s for s, _ in logins if s is not None]
        self.newcomers.extend(committed)
        statuses = sorted(code for _, code in logins)
        report(MODULE, f"during the fault: {replayed.summary()}; logins: {len(committed)} of 20 "
                       f"committed, final statuses {statuses}")
        self.assertEqual(replayed.mixed, [], replayed.summary())
        self.assertEqual(replayed.lost, [], replayed.summary())
        self.assertEqual([s for _, s in replayed.other if s != 503], [], replayed.summary())
        self.assertEqual([c for s, c in logins if s is None and c != 503], [], statuses)
        return replayed

    async def recover(self, stack: FaultStack, sessions: List[LoggedIn]) -> None:
        client = WebClient(self)
        for proxy in stack.proxies:
            await until_serving(client, proxy, sessions[0].cookie)

    async def test_redis_hung(self) -> None:
        """Redis stopped (SIGSTOP) while the 200 users come, then resumed: nothing lost."""
        stack, sessions = await self.prepare()
        assert stack.redis is not None
        stack.redis.pause()
        try:
            during = Deferred.fromCoroutine(self.during(stack, sessions))
            await procs.sleep(2.0)
        finally:
            stack.redis.resume()
        await during
        await self.recover(stack, sessions)
        await self.assertNothingLost(stack, sessions, "redis hung")

    async def test_redis_killed_and_restarted(self) -> None:
        """Redis killed (SIGKILL) while the 200 users come, started again: nothing lost."""
        stack, sessions = await self.prepare()
        assert stack.redis is not None
        during = Deferred.fromCoroutine(self.during(stack, sessions))
        await procs.sleep(0.2)
        await stack.redis.kill()
        await during
        await self.during(stack, sessions)
        await stack.redis.restart()
        await self.recover(stack, sessions)
        await self.assertNothingLost(stack, sessions, "redis killed and restarted")

    async def test_redis_out_of_memory(self) -> None:
        """Redis out of memory for writes (noeviction) while the 200 users come: nothing lost."""
        stack, sessions = await self.prepare("--maxmemory", "8mb",
                                             "--maxmemory-policy", "noeviction")
        assert stack.redis is not None
        await fill_until_oom(stack.redis)
        await self.during(stack, sessions)
        await self.assertNothingLost(stack, sessions, "redis out of memory")
        await free_junk(stack.redis)
        await self.assertNothingLost(stack, sessions, "redis out of memory, then freed")
