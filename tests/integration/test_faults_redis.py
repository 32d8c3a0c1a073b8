"""
The Redis rows of the fault matrix, against a real C{redis-server}, the
real OP and a real C{twistd oidcproxy} (L{tests.integration.faults}).

Every fault must give 503 for our own dependency (JSON to an API client,
HTML to a browser; never a 500, never a login redirect, the session cookie
left alone), recover without a new login once Redis is back, and delete no
session because of an error.

Already covered elsewhere, not repeated here: Redis hung (SIGSTOP) with a
session, 503 within the command timeout and recovery after SIGCONT on two
proxies, and Redis restarted empty (a login redirect or 401, never a 500):
L{tests.integration.test_sessions_redis}. The store's own reconnects:
L{tests.integration.test_redis_store}.

Redis runs with an append-only file synced on every write
(L{tests.integration.faults.DURABLE}), so a server killed and started again
on its port has every write it acknowledged: what is lost then is lost by
the proxy.
"""

from __future__ import annotations

import json
import time
from typing import List, Optional, Tuple

from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase
from twisted.web.iweb import IResponse

from tests.integration import procs
from tests.integration.faults import (
    COOKIE,
    DURABLE,
    FaultStack,
    LoggedIn,
    WebClient,
    api_get,
    concurrently,
    fill_until_oom,
    free_junk,
    identity_of,
    log_in,
    replay,
    report,
    session_keys,
    session_keys_without_expiry,
    start_fault_stack,
    try_log_in,
    until_callback,
    until_serving,
    user_name,
)
from tests.integration.stack import NAVIGATE, PROTECTED

MODULE = "redis"
COMMAND_TIMEOUT = 1.0
"""The proxies' C{[redis] command_timeout} (L{start_fault_stack})."""
SLACK = 1.0


class RedisFaultTests(TestCase):
    timeout = 90

    def assertStoreUnavailable(self, response: IResponse, body: bytes, navigate: bool,
                               what: str) -> None:
        """A 503 naming the session store, no Location, the session cookie untouched."""
        self.assertEqual(response.code, 503, f"{what}: {body[:300]!r}")
        self.assertIsNone(response.headers.getRawHeaders(b"location"), what)
        for value in response.headers.getRawHeaders(b"set-cookie", []):
            self.assertFalse(value.startswith(COOKIE.encode("ascii") + b"="), f"{what}: {value!r}")
        content_type = b"".join(response.headers.getRawHeaders(b"content-type", []))
        if navigate:
            self.assertIn(b"text/html", content_type, what)
        else:
            self.assertIn(b"json", content_type, what)
            self.assertEqual(json.loads(body)["error"], "session_store_unavailable", what)

    async def assertServes(self, client: WebClient, stack: FaultStack, s: LoggedIn,
                           what: str) -> None:
        response, body = await api_get(client, stack.proxy, s.cookie)
        self.assertEqual(response.code, 200, f"{what}: {body[:300]!r}")
        self.assertEqual(identity_of(body), [s.user], what)

    async def start(self, *redis_args: str) -> Tuple[FaultStack, WebClient, LoggedIn]:
        stack = await start_fault_stack(self, redis=DURABLE + list(redis_args))
        client = WebClient(self)
        alice = await log_in(self, stack, user_name(0))
        await self.assertServes(client, stack, alice, "before the fault")
        return stack, client, alice

    async def test_refused_then_back_without_login(self) -> None:
        """
        Redis killed (its port refuses connections): an API call and a
        navigation with a valid session get 503 at once (within the command
        timeout); once Redis is back on its port, the same cookie works again
        without a new login, and Redis still holds the session.
        """
        stack, client, alice = await self.start()
        assert stack.redis is not None
        self.assertEqual(session_keys(stack.redis), 1)
        await stack.redis.kill()
        timings = {}
        for navigate in (False, True, False):
            started = time.monotonic()
            response, body = await api_get(client, stack.proxy, alice.cookie, navigate=navigate,
                                           path=PROTECTED if navigate else "/some/api")
            elapsed = timings["navigation" if navigate else "api"] = time.monotonic() - started
            self.assertStoreUnavailable(response, body, navigate, "redis refused")
            self.assertLessEqual(elapsed, COMMAND_TIMEOUT + SLACK)
        await stack.redis.restart()
        recovered = await until_serving(client, stack.proxy, alice.cookie)
        await self.assertServes(client, stack, alice, "after the restart")
        self.assertEqual(session_keys(stack.redis), 1)
        report(MODULE, f"refused: 503 after {timings}; served again {recovered:.2f}s "
                       "after the restart")

    async def test_hung_during_login_callback(self) -> None:
        """
        Redis stopped (SIGSTOP) when the browser comes back to the callback:
        503 within the command timeout, no session cookie, no 500; after
        SIGCONT a new navigation logs the user in (single sign-on at the OP).
        """
        stack = await start_fault_stack(self, redis=DURABLE)
        assert stack.redis is not None
        client = WebClient(self)
        callback = await until_callback(client, stack.proxy.url + PROTECTED, "user7")
        stack.redis.pause()
        try:
            started = time.monotonic()
            response, body = await client.request("GET", callback, headers=NAVIGATE)
            elapsed = time.monotonic() - started
        finally:
            stack.redis.resume()
        self.assertStoreUnavailable(response, body, True, "callback with redis hung")
        self.assertLessEqual(elapsed, COMMAND_TIMEOUT + SLACK)
        self.assertIsNone(client.jar.value(stack.proxy.url, COOKIE))
        await procs.sleep(0.5)
        s = await log_in(self, stack, "user7")
        await self.assertServes(client, stack, s, "after SIGCONT")
        report(MODULE, f"callback with redis hung: 503 after {elapsed:.2f}s")

    async def test_killed_mid_write(self) -> None:
        """
        Redis killed while 30 logins are in flight, then started again: every
        login whose session cookie the browser got is served as its own user
        after recovery (none lost, none mixed); the others ended with a 503,
        never a 500; Redis holds the committed sessions, plus at most one
        orphan per unanswered login (a write applied whose answer the kill
        cut off), each with a time to live.
        """
        stack, client, alice = await self.start()
        assert stack.redis is not None
        redis = stack.redis
        logins = Deferred.fromCoroutine(concurrently(
            [try_log_in(self, stack, user_name(i)) for i in range(1, 31)], limit=10))
        # Killed once a few logins have been written, with more in flight.
        await procs.poll(lambda: session_keys(redis) >= 4, 20, interval=0.02,
                         what="a few logins to be written")
        await redis.kill()
        results: List[Tuple[Optional[LoggedIn], int]] = await logins
        await redis.restart()
        await until_serving(client, stack.proxy, alice.cookie)
        committed = [s for s, _ in results if s is not None]
        statuses = sorted(code for _, code in results)
        report(MODULE, f"killed mid-write: {len(committed)} of 30 logins committed; "
                       f"final statuses {statuses}")
        self.assertNotIn(500, statuses)
        self.assertEqual([c for s, c in results if s is None and c != 503], [])
        self.assertGreater(len(results) - len(committed), 0, "the kill hit no login")
        after = await replay(self, [stack.proxy], committed + [alice])
        self.assertEqual((after.lost, after.mixed, after.other), ([], [], []), after.summary())
        # A write Redis applied just before the kill, whose answer the kill
        # cut off, ended in a 503 for its browser: that value is held by no
        # cookie and expires with its time to live. No more such values than
        # logins left unanswered, and none without a time to live.
        held = session_keys(redis)
        self.assertGreaterEqual(held, len(committed) + 1)
        self.assertLessEqual(held, len(committed) + 1 + (len(results) - len(committed)))
        self.assertEqual(session_keys_without_expiry(redis), 0)

    async def test_out_of_memory_for_writes(self) -> None:
        """
        Redis out of memory for writes (C{--maxmemory}, C{noeviction}): a
        session is still served (reads work), a login's callback gets 503
        (not a 500), the session is not deleted; once memory is freed the
        login works.
        """
        stack, client, alice = await self.start("--maxmemory", "4mb",
                                                 "--maxmemory-policy", "noeviction")
        assert stack.redis is not None
        junk = await fill_until_oom(stack.redis)
        await self.assertServes(client, stack, alice, "reads with redis out of memory")
        bob, code = await try_log_in(self, stack, "user2")
        self.assertIsNone(bob)
        self.assertEqual(code, 503)
        self.assertEqual(session_keys(stack.redis), 1)
        await self.assertServes(client, stack, alice, "after a refused write")
        await free_junk(stack.redis)
        bob = await log_in(self, stack, "user2")
        await self.assertServes(client, stack, bob, "a login once memory is freed")
        await self.assertServes(client, stack, alice, "the first session at the end")
        report(MODULE, f"out of memory after {junk} junk values: reads 200, login 503, "
                       "then login 200")

    def assertRetryAfter(self, response: IResponse, what: str) -> None:
        self.assertEqual(response.headers.getRawHeaders(b"retry-after"), [b"5"], what)

    async def test_idle_renewal_with_redis_refusing_writes(self) -> None:
        """
        With idle_timeout, a request due to move the idle clock while Redis
        refuses writes (out of memory, reads still work): 503 with
        Retry-After for an API call and for a navigation (it was a 500 with
        a traceback), no traceback in the proxy's log; once Redis takes
        writes again the same cookie is served and renewed.
        """
        stack = await start_fault_stack(
            self, redis=DURABLE + ["--maxmemory", "4mb", "--maxmemory-policy", "noeviction"],
            session={"idle_timeout": "20s"})
        assert stack.redis is not None
        client = WebClient(self)
        alice = await log_in(self, stack, user_name(0))
        # A renewal is due min(60 s, idle_timeout / 4) after the last one.
        await procs.sleep(5.2)
        await fill_until_oom(stack.redis)
        for navigate in (False, True):
            response, body = await api_get(client, stack.proxy, alice.cookie, navigate=navigate,
                                           path=PROTECTED if navigate else "/some/api")
            self.assertStoreUnavailable(response, body, navigate, "renewal refused by redis")
            self.assertRetryAfter(response, "renewal refused by redis")
        log = stack.proxy.log()
        self.assertIn("session store unavailable", log)
        self.assertNotIn("Traceback", log)
        self.assertNotIn("unexpected error", log)
        await free_junk(stack.redis)
        response, body = await api_get(client, stack.proxy, alice.cookie)
        self.assertEqual(response.code, 200, body[:300])
        self.assertEqual(identity_of(body), [alice.user])
        renewed = [v for v in response.headers.getRawHeaders(b"set-cookie", [])
                   if v.startswith(COOKIE.encode("ascii") + b"=")]
        self.assertEqual(len(renewed), 1, response.headers.getRawHeaders(b"set-cookie"))
        report(MODULE, "idle renewal with redis refusing writes: 503, then 200 once freed")

    async def refresh_due(self, stack: FaultStack) -> Tuple[LoggedIn, Deferred]:
        """
        Log in (the OP's access tokens live 30 s, the proxy refreshes 28 s
        before expiry), stall the token endpoint for 2 s and send a request
        once a refresh is due: that request, whose grant is in flight 0.7 s
        later.
        """
        client = WebClient(self)
        alice = await log_in(self, stack, user_name(0))
        logged_in = time.monotonic()
        await stack.op_hook(self, "token-stall?seconds=2")
        # Due 2 s after the tokens were issued (before the login's last step).
        await procs.sleep(max(0.0, logged_in + 2.2 - time.monotonic()))
        pending = Deferred.fromCoroutine(api_get(client, stack.proxy, alice.cookie))
        # The proxy has loaded the session, locked and sent the grant by now.
        await procs.sleep(0.7)
        return alice, pending

    def assertNoTraceback(self, stack: FaultStack) -> None:
        log = stack.proxy.log()
        self.assertNotIn("Traceback", log)
        self.assertNotIn("unexpected error", log)

    async def test_refresh_answer_with_redis_killed(self) -> None:
        """
        Redis killed while the token endpoint answers a refresh: the
        refreshed session cannot be saved, so the request gets 503 with
        Retry-After (not a 500, and not served on tokens Redis does not
        hold). Once Redis is back (with the old session), the next request
        saves the refreshed session and is served, with one refresh grant
        in all and none refused (rotated refresh tokens: a token spent
        twice would be refused and end the session).
        """
        stack = await start_fault_stack(self, redis=DURABLE, session={"refresh_leeway": "28s"},
                                        access_token_ttl=30, rotate_refresh_tokens=True)
        assert stack.redis is not None
        op = stack.op
        alice, pending = await self.refresh_due(stack)
        await stack.redis.kill()
        response, body = await pending
        self.assertStoreUnavailable(response, body, False, "refresh answer with redis killed")
        self.assertRetryAfter(response, "refresh answer with redis killed")
        await stack.op_hook(self, "token-stall?seconds=0")
        await stack.redis.restart()
        client = WebClient(self)
        recovered = await until_serving(client, stack.proxy, alice.cookie)
        self.assertIn("refreshed session of user1 stored", stack.proxy.log())
        self.assertEqual(len(op.events("grant.success", "refresh_token")), 1, stack.describe())
        self.assertEqual(op.events("grant.error"), [], stack.describe())
        self.assertNoTraceback(stack)
        report(MODULE, f"refresh answer with redis killed: 503, served again {recovered:.2f}s "
                       "after the restart with the refreshed session, one grant")

    async def test_refresh_answer_with_redis_hung(self) -> None:
        """
        Redis stopped (SIGSTOP) while the token endpoint answers a refresh:
        503 with Retry-After once the save's command timeout has passed (not
        a 500); after SIGCONT the session is served again, and no grant was
        refused by the OP (the rotated refresh token was never spent twice).
        """
        stack = await start_fault_stack(self, redis=DURABLE, session={"refresh_leeway": "28s"},
                                        access_token_ttl=30, rotate_refresh_tokens=True)
        assert stack.redis is not None
        alice, pending = await self.refresh_due(stack)
        stack.redis.pause()
        try:
            response, body = await pending
        finally:
            stack.redis.resume()
        self.assertStoreUnavailable(response, body, False, "refresh answer with redis hung")
        self.assertRetryAfter(response, "refresh answer with redis hung")
        await stack.op_hook(self, "token-stall?seconds=0")
        recovered = await until_serving(WebClient(self), stack.proxy, alice.cookie)
        self.assertEqual(stack.op.events("grant.error"), [], stack.describe())
        self.assertNoTraceback(stack)
        report(MODULE, f"refresh answer with redis hung: 503, served again {recovered:.2f}s "
                       "after SIGCONT")
