"""
Integration tests of L{oidcproxy.sessions.stores.redis} against real C{redis-server}
child processes (L{tests.integration.redis_server}): the shared session store
contract, what Redis holds, the indexes and locks, faults made with process
control (SIGSTOP, SIGKILL, restart), authentication, databases and TLS.

Each test starts its own server on a free loopback port and its own pool
(L{build_redis}), closed at cleanup. Waits are bounded polls in the reactor.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import sys
import time
from typing import Any, Awaitable, Callable, Dict, List, Sequence, Tuple

from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from oidcproxy.sessions.crypto import Sealer
from oidcproxy.sessions.session import Session, SessionStoreUnavailable, new_session_id
from oidcproxy.sessions.stores.redis import RedisStore, build_redis, hashed
from tests.integration import procs
from tests.integration.redis_server import (
    RedisServer,
    require_tls_redis,
    start_redis,
    start_sentinel,
)
from tests.session_contract import SessionStoreContract, make_session

SECRET = b"redis store test secret, 32 bytes or more"
PREFIX = "oidcproxy:"
TIMEOUT = 1.0
"""command_timeout of the stores under test."""
SLACK = 1.0
"""How much later than the timeout a fault may be reported."""
RECOVERY = 20.0
"""How long a store may take to work again once Redis is back (reconnect backoff)."""


def pool_for(testcase: TestCase, url: str, **settings: Any) -> Any:
    """A pool from L{build_redis}, closed at cleanup (before the server stops)."""
    settings.setdefault("pool_size", 2)
    settings.setdefault("command_timeout", TIMEOUT)
    settings.setdefault("connect_timeout", TIMEOUT)
    pool = build_redis(reactor, url, **settings)
    testcase.addCleanup(pool.disconnect)
    return pool


def store_for(pool: Any, clock: Any = reactor, **settings: Any) -> RedisStore:
    settings.setdefault("command_timeout", TIMEOUT)
    return RedisStore(pool, Sealer([SECRET]), clock, **settings)


def session_now(**overrides: Any) -> Session:
    """A full session starting now (real time)."""
    return make_session(reactor, **overrides)  # type: ignore[arg-type]


async def fails_unavailable(testcase: TestCase, call: Callable[[], Awaitable[Any]],
                            within: float, what: str) -> float:
    """
    Assert that C{call()} fails with L{SessionStoreUnavailable} within
    C{within} seconds; print and return how long it took.
    """
    started = time.monotonic()
    try:
        result = await call()
    except SessionStoreUnavailable:
        elapsed = time.monotonic() - started
    else:
        raise testcase.failureException(f"{what}: expected SessionStoreUnavailable, got {result!r}")
    print(f"REDIS_FAULT {what}: SessionStoreUnavailable after {elapsed:.3f}s")
    testcase.assertLess(elapsed, within, what)
    return elapsed


async def until_works(call: Callable[[], Awaitable[Any]], timeout: float, what: str) -> Any:
    """Call C{call()} until it stops failing with L{SessionStoreUnavailable}; its result."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await call()
        except SessionStoreUnavailable:
            if time.monotonic() >= deadline:
                raise AssertionError(f"{what}: still unavailable after {timeout:.0f}s") from None
        await procs.sleep(0.1)


def peekers(pool: Any) -> List[Any]:
    """The callers waiting in the pool for a connection (none should be left behind)."""
    return list(pool._factory.connectionQueue.peekers)


def pending_replies(pool: Any) -> int:
    """Replies the pool's connections still wait for (a hung connection must not keep them)."""
    return sum(len(conn._waiting) + len(conn.replyQueue.waiting) for conn in pool._factory.pool)


class RedisStoreContractTests(SessionStoreContract, TestCase):
    """L{RedisStore} passes the store contract, against a real redis-server."""

    server_side = True

    async def setUp(self) -> None:
        self.server = await start_redis(self)
        self.pool = pool_for(self, self.server.url)
        super().setUp()

    def make_store(self) -> RedisStore:
        # The contract's clock gives the sessions' times (and so the TTLs).
        # It also runs the store's deadlines, which therefore never fire here:
        # trial's own timeout would end a test that hangs.
        return RedisStore(self.pool, Sealer([SECRET]), self.clock)


class RedisStoreTests(TestCase):
    """What Redis holds, the indexes and the locks."""

    async def setUp(self) -> None:
        self.server = await start_redis(self)
        self.pool = pool_for(self, self.server.url)
        self.store = store_for(self.pool)

    async def redis(self, *args: Any) -> Any:
        return await self.pool.execute_command(*args)

    async def everything(self) -> List[str]:
        """Every key, value, member and TTL in the database, as text."""
        seen = []
        for key in await self.redis("KEYS", "*"):
            seen.append(key)
            kind = await self.redis("TYPE", key)
            if kind == "string":
                seen.append(await self.redis("GET", key))
            elif kind == "set":
                seen.extend(await self.redis("SMEMBERS", key))
            else:
                self.fail(f"unexpected {kind} at {key}")
        return seen

    async def test_value_is_id_and_redis_holds_no_plaintext(self) -> None:
        """
        The cookie value is the session id; no key, value or index member in
        Redis contains the id, the subject, the sid, a claim or a token.
        """
        session = session_now()
        value = await self.store.save(session)
        self.assertEqual(value, session.id)
        keys = await self.redis("KEYS", "*")
        self.assertEqual(
            sorted(keys),
            sorted([
                f"{PREFIX}s:{hashed(session.id)}",
                f"{PREFIX}sub:{hashed('user-1234')}",
                f"{PREFIX}sid:{hashed('op-session-1')}",
            ]),
        )
        everything = "\n".join(await self.everything())
        for secret in [session.id, "user-1234", "op-session-1", "ada@example.com", "Lovelace",
                       "access-token-value", "refresh-token-value", session.id_token]:
            self.assertNotIn(secret, everything)
        raw = await self.redis("GET", f"{PREFIX}s:{hashed(session.id)}")
        self.assertRegex(raw, r"\A[A-Za-z0-9_-]+\Z")

    async def test_ttl_is_remaining_lifetime(self) -> None:
        """The key's TTL is the session's remaining lifetime; the indexes live at least as long."""
        now = reactor.seconds()
        session = session_now(created=now - 600, last_seen=now - 60, expires=now + 3000)
        await self.store.save(session)
        ttl = await self.redis("TTL", f"{PREFIX}s:{hashed(session.id)}")
        self.assertTrue(2998 <= ttl <= 3000, ttl)
        for index in (f"{PREFIX}sub:{hashed(session.sub)}", f"{PREFIX}sid:{hashed('op-session-1')}"):
            self.assertTrue(2998 <= await self.redis("TTL", index) <= 3000, index)

    async def test_index_ttl_never_shortened(self) -> None:
        """A shorter session of the same user does not shorten its index's TTL."""
        now = reactor.seconds()
        await self.store.save(session_now(expires=now + 3000))
        await self.store.save(session_now(expires=now + 100))
        ttl = await self.redis("TTL", f"{PREFIX}sub:{hashed('user-1234')}")
        self.assertTrue(2998 <= ttl <= 3000, ttl)

    async def test_ttl_at_least_one_second(self) -> None:
        """A session with less than a second left is kept for a second."""
        session = session_now(expires=reactor.seconds() + 0.2)
        await self.store.save(session)
        pttl = await self.redis("PTTL", f"{PREFIX}s:{hashed(session.id)}")
        self.assertTrue(900 <= pttl <= 1000, pttl)

    async def test_expired_session_not_stored(self) -> None:
        """Saving a session already expired fires with its id and writes nothing."""
        session = session_now(expires=reactor.seconds() - 1)
        self.assertEqual(await self.store.save(session), session.id)
        self.assertEqual(await self.redis("KEYS", "*"), [])
        self.assertIsNone(await self.store.load(session.id))

    async def test_value_of_another_id_refused(self) -> None:
        """A value copied to another session's key (or an unused id's) does not load there."""
        first, second = session_now(), session_now(sub="bob")
        await self.store.save(first)
        await self.store.save(second)
        raw = await self.redis("GET", f"{PREFIX}s:{hashed(first.id)}")
        await self.redis("SET", f"{PREFIX}s:{hashed(second.id)}", raw)
        self.assertIsNone(await self.store.load(second.id))
        unused = new_session_id()
        await self.redis("SET", f"{PREFIX}s:{hashed(unused)}", raw)
        self.assertIsNone(await self.store.load(unused))
        self.assertEqual(await self.store.load(first.id), first)

    async def test_other_secret_refused(self) -> None:
        """A store with another secret loads nothing (a definitive None, not an error)."""
        session = session_now()
        await self.store.save(session)
        other = RedisStore(self.pool, Sealer([b"another secret of at least 32 bytes"]), reactor)
        self.assertIsNone(await other.load(session.id))

    async def test_garbage_value_refused(self) -> None:
        """A key holding something that is no sealed session loads as None."""
        session_id = new_session_id()
        for raw in ["", "garbage", "A" * 200, "\u00e9t\u00e9"]:
            await self.redis("SET", f"{PREFIX}s:{hashed(session_id)}", raw)
            self.assertIsNone(await self.store.load(session_id), raw)

    async def test_key_prefix(self) -> None:
        """Two stores with different prefixes share a database without seeing each other."""
        other = store_for(self.pool, key_prefix="other:")
        session = session_now()
        await other.save(session)
        self.assertIsNone(await self.store.load(session.id))
        self.assertEqual(await other.load(session.id), session)
        self.assertTrue(all(k.startswith("other:") for k in await self.redis("KEYS", "*")))

    async def test_delete_removes_index_entries(self) -> None:
        """Delete removes the session and its members of the sub and sid indexes."""
        kept = session_now(sid="op-session-2")
        gone = session_now()
        await self.store.save(kept)
        await self.store.save(gone)
        await self.store.delete(gone)
        self.assertIsNone(await self.store.load(gone.id))
        self.assertEqual(await self.redis("SMEMBERS", f"{PREFIX}sub:{hashed('user-1234')}"),
                         [hashed(kept.id)])
        self.assertEqual(await self.redis("EXISTS", f"{PREFIX}sid:{hashed('op-session-1')}"), 0)

    async def test_delete_by_sub(self) -> None:
        """delete_by(sub=) ends exactly that user's sessions and says how many."""
        alice = [session_now(sub="alice", sid="a1"), session_now(sub="alice", sid="a2")]
        bob = session_now(sub="bob", sid="a1")
        for session in [*alice, bob]:
            await self.store.save(session)
        self.assertEqual(await self.store.delete_by(sub="alice"), 2)
        for session in alice:
            self.assertIsNone(await self.store.load(session.id))
        self.assertEqual(await self.store.load(bob.id), bob)
        self.assertEqual(await self.redis("EXISTS", f"{PREFIX}sub:{hashed('alice')}"), 0)
        self.assertEqual(await self.store.delete_by(sub="alice"), 0)

    async def test_delete_by_sid(self) -> None:
        """delete_by(sid=) ends exactly the sessions of that OP session."""
        ended = session_now(sub="alice", sid="op-1")
        other_sid = session_now(sub="alice", sid="op-2")
        no_sid = session_now(sub="alice", sid=None)
        for session in [ended, other_sid, no_sid]:
            await self.store.save(session)
        self.assertEqual(await self.store.delete_by(sid="op-1"), 1)
        self.assertIsNone(await self.store.load(ended.id))
        self.assertEqual(await self.store.load(other_sid.id), other_sid)
        self.assertEqual(await self.store.load(no_sid.id), no_sid)

    async def test_delete_by_both(self) -> None:
        """delete_by(sub=, sid=) ends the sessions of either."""
        by_sub = session_now(sub="alice", sid="op-1")
        by_sid = session_now(sub="bob", sid="op-2")
        kept = session_now(sub="carol", sid="op-3")
        for session in [by_sub, by_sid, kept]:
            await self.store.save(session)
        self.assertEqual(await self.store.delete_by(sub="alice", sid="op-2"), 2)
        self.assertEqual(await self.store.load(kept.id), kept)

    async def test_delete_by_counts_existing_sessions(self) -> None:
        """Index members whose session has already gone are not counted."""
        first, second = session_now(), session_now()
        await self.store.save(first)
        await self.store.save(second)
        await self.redis("DEL", f"{PREFIX}s:{hashed(first.id)}")
        self.assertEqual(await self.store.delete_by(sub="user-1234"), 1)

    async def test_delete_by_needs_a_key(self) -> None:
        """delete_by without sub or sid is a programming error."""
        with self.assertRaises(ValueError):
            await self.store.delete_by()

    async def test_sessions_of(self) -> None:
        """sessions_of gives a user's live sessions, oldest first, and drops dangling index members."""
        now = reactor.seconds()
        older = session_now(sub="alice", created=now - 100)
        newer = session_now(sub="alice", created=now - 10)
        gone = session_now(sub="alice", created=now - 50)
        await self.store.save(session_now(sub="bob"))
        for session in [newer, gone, older]:
            await self.store.save(session)
        await self.redis("DEL", f"{PREFIX}s:{hashed(gone.id)}")
        self.assertEqual(await self.store.sessions_of("alice"), [older, newer])
        members = await self.redis("SMEMBERS", f"{PREFIX}sub:{hashed('alice')}")
        self.assertEqual(sorted(members), sorted([hashed(older.id), hashed(newer.id)]))
        self.assertEqual(await self.store.sessions_of("nobody"), [])

    async def test_lock(self) -> None:
        """A held lock is refused to others; a wrong token does not release it; the right one does."""
        token = await self.store.lock("refresh:abc", 10)
        self.assertIsInstance(token, str)
        self.assertIsNone(await self.store.lock("refresh:abc", 10))
        self.assertIsInstance(await self.store.lock("refresh:other", 10), str)
        self.assertFalse(await self.store.unlock("refresh:abc", "not-the-token"))
        self.assertIsNone(await self.store.lock("refresh:abc", 10))
        self.assertTrue(await self.store.unlock("refresh:abc", token))
        again = await self.store.lock("refresh:abc", 10)
        self.assertIsInstance(again, str)
        self.assertNotEqual(again, token)
        self.assertFalse(await self.store.unlock("refresh:abc", token))

    async def test_lock_lease_expires(self) -> None:
        """A lock whose lease has run out can be taken again, and the old token no longer releases it."""
        first = await self.store.lock("refresh:abc", 0.2)
        self.assertIsNotNone(first)
        await procs.sleep(0.4)
        second = await self.store.lock("refresh:abc", 10)
        self.assertIsNotNone(second)
        self.assertFalse(await self.store.unlock("refresh:abc", first))
        self.assertIsNone(await self.store.lock("refresh:abc", 10))

    async def test_lock_name_not_in_redis(self) -> None:
        """Lock names (they may hold a session id) are hashed in Redis."""
        name = "refresh:" + new_session_id()
        await self.store.lock(name, 10)
        self.assertEqual(await self.redis("KEYS", "*"), [f"{PREFIX}lock:{hashed(name)}"])


    async def test_revocation_list(self) -> None:
        """mark_revoked/revoked_at: the latest revocation of a sub or sid, hashed names, a TTL."""
        self.assertIsNone(await self.store.revoked_at(sub="alice", sid="sid-1"))
        await self.store.mark_revoked(sid="sid-1", ttl=60)
        at = await self.store.revoked_at(sub="alice", sid="sid-1")
        self.assertIsInstance(at, float)
        self.assertIsNone(await self.store.revoked_at(sub="alice", sid="sid-2"))
        await self.store.mark_revoked(sub="alice", ttl=60)
        self.assertIsNotNone(await self.store.revoked_at(sub="alice"))
        keys = sorted(await self.redis("KEYS", "*"))
        self.assertEqual(keys, sorted([f"{PREFIX}revoked:sid:{hashed('sid-1')}",
                                       f"{PREFIX}revoked:sub:{hashed('alice')}"]))
        ttl = await self.redis("TTL", keys[0])
        self.assertTrue(0 < int(ttl) <= 60, ttl)

    async def test_revocation_of_one_session(self) -> None:
        """
        mark_revoked(session_id=...) revokes that session only (not the
        user's others), under a hashed name (a session id is a credential),
        for the TTL given; revoked_at asks for the sub, sid and session id in
        one round trip.
        """
        one, two = new_session_id(), new_session_id()
        await self.store.mark_revoked(session_id=one, ttl=120)
        at = await self.store.revoked_at(sub="alice", sid="sid-1", session_id=one)
        self.assertIsInstance(at, float)
        self.assertIsNone(await self.store.revoked_at(sub="alice", sid="sid-1", session_id=two))
        self.assertIsNone(await self.store.revoked_at(sub="alice"))
        keys = await self.redis("KEYS", "*")
        self.assertEqual(keys, [f"{PREFIX}revoked:session:{hashed(one)}"])
        ttl = await self.redis("TTL", keys[0])
        self.assertTrue(60 < int(ttl) <= 120, ttl)


class RecordingRedis:
    """A stand-in pool that records commands and never answers."""

    def __init__(self) -> None:
        self.commands: List[Sequence[Any]] = []

    def execute_command(self, *args: Any) -> Any:
        from twisted.internet.defer import Deferred

        self.commands.append(args)
        return Deferred()


class RedisStoreUnitTests(SynchronousTestCase):
    """What needs no server."""

    def setUp(self) -> None:
        from twisted.internet.task import Clock

        self.clock = Clock()
        self.redis = RecordingRedis()
        self.store = RedisStore(self.redis, Sealer([SECRET]), self.clock, command_timeout=2.0)

    def test_malformed_value_not_asked(self) -> None:
        """A cookie value that is not a session id is refused without a Redis call."""
        for value in ["", "x" * 42, "x" * 44, "x" * 42 + "=", "x" * 42 + "\n", "é" * 43, None, 42]:
            self.assertIsNone(self.successResultOf(self.store.load(value)))  # type: ignore[arg-type]
        self.assertEqual(self.redis.commands, [])

    def test_deadline(self) -> None:
        """An operation Redis does not answer fails with SessionStoreUnavailable at the deadline."""
        d = self.store.load(new_session_id())
        self.clock.advance(1.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.failureResultOf(d, SessionStoreUnavailable)

    def test_caller_cancel(self) -> None:
        """A caller's cancel is a cancel, not an outage."""
        from twisted.internet.defer import CancelledError

        d = self.store.load(new_session_id())
        d.cancel()
        self.failureResultOf(d, CancelledError)

    def test_save_refuses_foreign_id(self) -> None:
        """A session whose id is not a session id is refused (it could never load)."""
        session = make_session(self.clock, id="id-60")
        self.failureResultOf(self.store.save(session), ValueError)
        self.assertEqual(self.redis.commands, [])

    def test_build_redis_refuses_bad_settings(self) -> None:
        """build_redis refuses bad URLs and settings before connecting anywhere."""
        bad: List[Any] = [
            ("http://127.0.0.1:1", {}),
            ("redis://", {}),
            ("redis://127.0.0.1:99999", {}),
            ("redis://127.0.0.1:1/zero", {}),
            ("redis://127.0.0.1:1/0?x=1", {}),
            ("redis://127.0.0.1:1", {"ca_bundle": "/etc/ssl/certs/ca-certificates.crt"}),
            ("redis://127.0.0.1:1", {"master_name": "m"}),
            ("redis://127.0.0.1:1", {"sentinel": [("127.0.0.1", 1)]}),
            ("redis://127.0.0.1:1", {"pool_size": 0}),
            ("redis://127.0.0.1:1", {"command_timeout": 0}),
            ("redis://127.0.0.1:1", {"db": -1}),
        ]
        for url, settings in bad:
            with self.assertRaises(ValueError, msg=f"{url} {settings}"):
                build_redis(reactor, url, **settings)

    def test_hashed(self) -> None:
        """Keys name ids by the unpadded URL-safe base64 of their SHA-256."""
        import base64

        expected = base64.urlsafe_b64encode(hashlib.sha256(b"abc").digest()).rstrip(b"=").decode()
        self.assertEqual(hashed("abc"), expected)
        self.assertEqual(len(hashed(new_session_id())), 43)


class ImportTests(TestCase):
    """Importing the store module does not import txredisapi (it installs the global reactor)."""

    async def test_no_txredisapi_at_import(self) -> None:
        code = (
            "import sys\n"
            "import oidcproxy.sessions.stores.redis\n"
            "print('txredisapi' in sys.modules, 'twisted.internet.reactor' in sys.modules)\n"
        )
        env = dict(os.environ)
        env["PYTHONPATH"] = procs.ROOT
        out, err, status = await getProcessOutputAndValue(
            sys.executable, ["-c", code], env=env, path=procs.ROOT
        )
        self.assertEqual(status, 0, err)
        self.assertEqual(out.split(), [b"False", b"False"], err)


class RedisFaultTests(TestCase):
    """Faults made with process control: never a definitive answer, and recovery by itself."""

    async def setUp(self) -> None:
        self.server = await start_redis(self)
        self.pool = pool_for(self, self.server.url)
        self.store = store_for(self.pool)

    async def test_paused_then_resumed(self) -> None:
        """
        A hung (SIGSTOPped) Redis fails loads and saves with
        SessionStoreUnavailable within the timeout; once it resumes the same
        store works again and the earlier session is still there.
        """
        session = session_now()
        await self.store.save(session)
        self.server.pause()
        try:
            await fails_unavailable(self, lambda: self.store.load(session.id), TIMEOUT + SLACK,
                                    "load, Redis paused")
            await fails_unavailable(self, lambda: self.store.save(session_now()), TIMEOUT + SLACK,
                                    "save, Redis paused")
            await fails_unavailable(self, lambda: self.store.lock("x", 5), TIMEOUT + SLACK,
                                    "lock, Redis paused")
            await fails_unavailable(self, lambda: self.store.delete_by(sub="x"), TIMEOUT + SLACK,
                                    "delete_by, Redis paused")
            self.assertEqual(peekers(self.pool), [])
            # The connections that hung are dropped (and replaced): nothing
            # stays waiting for a reply.
            await procs.poll(lambda: pending_replies(self.pool) == 0, TIMEOUT + SLACK,
                             what="hung connections to be dropped")
        finally:
            self.server.resume()
        started = time.monotonic()
        loaded = await until_works(lambda: self.store.load(session.id), RECOVERY, "after SIGCONT")
        print(f"REDIS_FAULT recovered after SIGCONT in {time.monotonic() - started:.3f}s")
        self.assertEqual(loaded, session)
        another = session_now()
        await self.store.save(another)
        self.assertEqual(await self.store.load(another.id), another)

    async def test_ping(self) -> None:
        """
        ping() (readiness) answers while Redis does, fails with
        SessionStoreUnavailable within the timeout while it is hung, and
        works again once it resumes; the metrics count the PINGs and the
        timeout.
        """
        from oidcproxy.core.metrics import Metrics

        metrics = Metrics()
        store = store_for(self.pool, metrics=metrics)
        self.assertIsNone(await store.ping())
        self.server.pause()
        try:
            await fails_unavailable(self, store.ping, TIMEOUT + SLACK, "ping, Redis paused")
        finally:
            self.server.resume()
        await until_works(store.ping, RECOVERY, "ping after SIGCONT")
        from prometheus_client.parser import text_string_to_metric_families

        found = {(s.name, tuple(s.labels.values())): s.value
                 for f in text_string_to_metric_families(metrics.render().decode("ascii"))
                 for s in f.samples}
        self.assertGreaterEqual(found[("oidcproxy_redis_errors_total", ("timeout",))], 1.0)
        self.assertGreaterEqual(found[("oidcproxy_redis_command_seconds_count", ("PING",))], 2.0)

    async def test_killed_then_restarted(self) -> None:
        """
        A killed Redis gives SessionStoreUnavailable; restarted (empty) on the
        same port, the same store reconnects: load says None (definitive) and
        save works again.
        """
        session = session_now()
        await self.store.save(session)
        await self.server.kill()
        await fails_unavailable(self, lambda: self.store.load(session.id), TIMEOUT + SLACK,
                                "load, Redis killed")
        await fails_unavailable(self, lambda: self.store.save(session_now()), TIMEOUT + SLACK,
                                "save, Redis killed")
        self.assertEqual(peekers(self.pool), [])
        await self.server.restart()
        started = time.monotonic()
        self.assertIsNone(await until_works(lambda: self.store.load(session.id), RECOVERY,
                                            "after restart"))
        print(f"REDIS_FAULT reconnected after restart in {time.monotonic() - started:.3f}s")
        again = session_now()
        self.assertEqual(await self.store.save(again), again.id)
        self.assertEqual(await self.store.load(again.id), again)


class RedisFloodTests(TestCase):
    """
    Many operations at once, more than the pool has connections: txredisapi
    pipelines every command on a connection picked at random (none waits for
    a free connection while the pool is connected), so a flood is served at
    Redis's pace while it answers; while it does not, every operation fails
    with SessionStoreUnavailable at its deadline and leaves nothing behind
    (no caller waiting for a connection, no reply awaited), so the number
    waiting is bounded by the operations started within one command_timeout.
    """

    FLOOD = 2000

    async def setUp(self) -> None:
        self.server = await start_redis(self)
        self.pool = pool_for(self, self.server.url)  # 2 connections
        self.store = store_for(self.pool)
        self.session = session_now()
        await self.store.save(self.session)

    async def flood(self) -> Tuple[List[Any], float]:
        """
        C{FLOOD} loads at once; their results (or failures), and how long the
        last took after the last was started (starting them takes a while).
        """
        from twisted.internet.defer import DeferredList

        started = time.monotonic()
        calls = [self.store.load(self.session.id) for _ in range(self.FLOOD)]
        last_started = time.monotonic()
        results = await DeferredList(calls, consumeErrors=True)
        elapsed = time.monotonic() - last_started
        print(f"REDIS_FLOOD starting {self.FLOOD} loads took {last_started - started:.3f}s")
        return [value if ok else value.value for ok, value in results], elapsed

    async def test_flood_served(self) -> None:
        """While Redis answers, a flood of loads on two connections is served in full."""
        results, elapsed = await self.flood()
        print(f"REDIS_FLOOD {self.FLOOD} loads on 2 connections: served {elapsed:.3f}s after the "
              "last was started")
        self.assertEqual(results, [self.session] * self.FLOOD)

    async def test_flood_while_hung(self) -> None:
        """
        Redis hung (SIGSTOP): a flood of loads fails with
        SessionStoreUnavailable within the timeout, every one of them; then
        nothing waits for a connection or a reply, and the store works
        again once Redis does.
        """
        self.server.pause()
        try:
            results, elapsed = await self.flood()
            print(f"REDIS_FLOOD {self.FLOOD} loads, Redis paused: all failed {elapsed:.3f}s after "
                  "the last was started")
            self.assertEqual({type(r) for r in results}, {SessionStoreUnavailable})
            self.assertLess(elapsed, TIMEOUT + SLACK)
            self.assertEqual(peekers(self.pool), [])
            await procs.poll(lambda: pending_replies(self.pool) == 0, TIMEOUT + SLACK,
                             what="hung connections to be dropped")
        finally:
            self.server.resume()
        self.assertEqual(await until_works(lambda: self.store.load(self.session.id), RECOVERY,
                                           "after SIGCONT"), self.session)

    async def test_flood_while_down(self) -> None:
        """
        Redis gone (killed): a flood of loads waits for a connection at most
        the timeout, then fails with SessionStoreUnavailable, leaving no
        caller waiting in the pool.
        """
        await self.server.kill()
        # Once the pool has noticed: the loads wait for a connection.
        await procs.poll(lambda: self.pool._factory.size == 0, TIMEOUT + SLACK,
                         what="the pool to lose its connections")
        results, elapsed = await self.flood()
        print(f"REDIS_FLOOD {self.FLOOD} loads, Redis killed: all failed {elapsed:.3f}s after "
              "the last was started")
        self.assertEqual({type(r) for r in results}, {SessionStoreUnavailable})
        self.assertLess(elapsed, TIMEOUT + SLACK)
        self.assertEqual(peekers(self.pool), [])


class RedisPasswordFaultTests(TestCase):
    """Faults while a new connection authenticates."""

    async def test_paused_during_auth(self) -> None:
        """
        A hung Redis that needs a password: the reconnection's AUTH times out
        too. The pool keeps trying (txredisapi alone would give up for good)
        and works again once Redis resumes.
        """
        server = await start_redis(self, "--requirepass", "pw")
        pool = pool_for(self, server.url, password="pw")
        store = store_for(pool)
        session = session_now()
        await store.save(session)
        events: List[Any] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        server.pause()
        try:
            await fails_unavailable(self, lambda: store.load(session.id), TIMEOUT + SLACK,
                                    "load, Redis with password paused")
            await procs.poll(
                lambda: any("AUTH/SELECT" in (e.get("log_format") or "") for e in events),
                RECOVERY, what="a reconnection's AUTH to time out")
        finally:
            server.resume()
        self.assertEqual(await until_works(lambda: store.load(session.id), RECOVERY, "after SIGCONT"),
                         session)


class RedisDownAtStartTests(TestCase):
    """The lazy pool: the proxy starts with Redis down, and works once it is up."""

    async def test_refused_then_up(self) -> None:
        """
        With nothing listening, operations fail with SessionStoreUnavailable
        at the deadline (no hang, no caller left waiting in the pool); when a
        server comes up on that port, the same store works.
        """
        port = procs.refused_port()
        pool = pool_for(self, f"redis://127.0.0.1:{port}")
        store = store_for(pool)
        session = session_now()
        await fails_unavailable(self, lambda: store.load(session.id), TIMEOUT + SLACK,
                                "load, connection refused")
        await fails_unavailable(self, lambda: store.save(session), TIMEOUT + SLACK,
                                "save, connection refused")
        self.assertEqual(peekers(pool), [])
        server = RedisServer(self, os.path.abspath(self.mktemp()), [])
        os.makedirs(server.workdir)
        server.port = port
        self.addCleanup(server.stop)
        await server.start(same_port=True)
        self.assertEqual(await until_works(lambda: store.save(session), RECOVERY, "Redis up"),
                         session.id)
        self.assertEqual(await store.load(session.id), session)


class BuildRedisTests(TestCase):
    """build_redis: passwords, ACL users, databases, Sentinel."""

    async def test_password(self) -> None:
        """The password, from the argument or the URL, authenticates."""
        server = await start_redis(self, "--requirepass", "s3cret/pw")
        for pool in [pool_for(self, server.url, password="s3cret/pw"),
                     pool_for(self, f"redis://:s3cret%2Fpw@127.0.0.1:{server.port}")]:
            store = store_for(pool)
            session = session_now()
            await store.save(session)
            self.assertEqual(await store.load(session.id), session)

    async def test_wrong_or_no_password(self) -> None:
        """A wrong or missing password gives SessionStoreUnavailable on use, never None."""
        server = await start_redis(self, "--requirepass", "s3cret")
        for what, settings in [("wrong password", {"password": "nope"}), ("no password", {})]:
            store = store_for(pool_for(self, server.url, **settings))
            await fails_unavailable(self, lambda s=store: s.load(new_session_id()), TIMEOUT + SLACK, what)
            await fails_unavailable(self, lambda s=store: s.save(session_now()), TIMEOUT + SLACK, what)

    async def test_wrong_password_fixed(self) -> None:
        """A pool whose password was refused keeps trying: once the server accepts it, it works."""
        server = await start_redis(self, "--requirepass", "old")
        pool = pool_for(self, server.url, password="new")
        store = store_for(pool)
        await fails_unavailable(self, lambda: store.load(new_session_id()), TIMEOUT + SLACK,
                                "password not yet accepted")
        admin = pool_for(self, server.url, password="old")
        await admin.execute_command("CONFIG", "SET", "requirepass", "new")
        session = session_now()
        await until_works(lambda: store.save(session), RECOVERY, "password accepted")
        self.assertEqual(await store.load(session.id), session)

    async def test_acl_user(self) -> None:
        """An ACL user and password from the URL authenticate (AUTH user password)."""
        server = await start_redis(self, "--user", "proxy", "on", ">pw", "~oidcproxy:*", "+@all")
        store = store_for(pool_for(self, f"redis://proxy:pw@127.0.0.1:{server.port}"))
        session = session_now()
        await store.save(session)
        self.assertEqual(await store.load(session.id), session)
        self.assertTrue(await store.unlock("x", "y") is False)

    async def test_db(self) -> None:
        """The database from the URL path or the db argument is the one used."""
        server = await start_redis(self)
        session = session_now()
        await store_for(pool_for(self, server.url + "/3")).save(session)
        other = session_now()
        await store_for(pool_for(self, server.url + "/0", db=5)).save(other)
        db0 = pool_for(self, server.url)
        self.assertEqual(await db0.execute_command("KEYS", "*"), [])
        db3 = pool_for(self, server.url, db=3)
        self.assertEqual(await store_for(db3).load(session.id), session)
        self.assertIsNone(await store_for(db3).load(other.id))
        self.assertEqual(await store_for(pool_for(self, server.url + "/5")).load(other.id), other)

    async def test_sentinel(self) -> None:
        """With Sentinel, the pool connects to the master it names."""
        master = await start_redis(self)
        sentinel = await start_sentinel(self, master, "sessions")
        pool = pool_for(self, "redis://sentinel-decides", sentinel=[("127.0.0.1", sentinel.port)],
                        master_name="sessions")
        store = store_for(pool)
        session = session_now()
        await until_works(lambda: store.save(session), RECOVERY, "master found")
        self.assertEqual(await store.load(session.id), session)
        direct = pool_for(self, master.url)
        self.assertEqual(await direct.execute_command("EXISTS", f"{PREFIX}s:{hashed(session.id)}"), 1)

    async def test_sentinel_wrong_password(self) -> None:
        """A master refusing the password gives SessionStoreUnavailable (and no unhandled error)."""
        master = await start_redis(self, "--requirepass", "pw")
        sentinel = await start_sentinel(self, master, "sessions", password="pw")
        store = store_for(pool_for(self, "redis://x", password="nope", master_name="sessions",
                                   sentinel=[("127.0.0.1", sentinel.port)]))
        await fails_unavailable(self, lambda: store.load(new_session_id()), TIMEOUT + SLACK,
                                "Sentinel, wrong password")

    async def test_sentinel_failover(self) -> None:
        """
        When the master dies and Sentinel promotes its replica, the same store
        follows: the replicated session loads and saves work again.
        """
        password = "pw"
        master = await start_redis(self, "--requirepass", password, "--masterauth", password)
        replica = await start_redis(self, "--requirepass", password, "--masterauth", password,
                                    "--replicaof", master.host, str(master.port))
        replica_admin = pool_for(self, replica.url, password=password)

        async def synced() -> Any:
            info = await replica_admin.execute_command("INFO", "replication")
            return "master_link_status:up" in info or None

        await procs.poll_async(synced, RECOVERY, what="the replica to sync")
        sentinel = await start_sentinel(self, master, "sessions", password=password, ready="+slave ")
        pool = pool_for(self, f"redis://:{password}@x/0", sentinel=[("127.0.0.1", sentinel.port)],
                        master_name="sessions")
        store = store_for(pool)
        session = session_now()
        await until_works(lambda: store.save(session), RECOVERY, "master found")
        master_admin = pool_for(self, master.url, password=password)
        self.assertEqual(await master_admin.execute_command("WAIT", 1, 2000), 1)
        await master.kill()
        started = time.monotonic()
        loaded = await until_works(lambda: store.load(session.id), 3 * RECOVERY, "failover")
        print(f"REDIS_FAULT Sentinel failover followed in {time.monotonic() - started:.3f}s")
        self.assertEqual(loaded, session)
        role = await replica_admin.execute_command("ROLE")
        self.assertEqual(role[0], "master")
        another = session_now()
        await store.save(another)
        self.assertEqual(await store.load(another.id), another)


# -- TLS ------------------------------------------------------------------------------------


def _write_pki(directory: str) -> dict:
    """A throwaway CA, a server certificate for "localhost" it signed, and an unrelated CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def ca(common: str) -> Any:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(common)).issuer_name(name(common))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256())
        )
        return key, cert

    ca_key, ca_cert = ca("oidcproxy test CA")
    _, other_cert = ca("unrelated CA")
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(name("localhost")).issuer_name(ca_cert.subject)
        .public_key(server_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    files = {
        "ca": (ca_cert.public_bytes(serialization.Encoding.PEM)),
        "other_ca": other_cert.public_bytes(serialization.Encoding.PEM),
        "cert": server_cert.public_bytes(serialization.Encoding.PEM),
        "key": server_key.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()),
    }
    paths = {}
    for label, data in files.items():
        paths[label] = os.path.join(directory, f"{label}.pem")
        with open(paths[label], "wb") as f:
            f.write(data)
    return paths


async def start_tls_redis(testcase: TestCase) -> Tuple[RedisServer, Dict[str, str]]:
    """
    A redis-server listening with TLS too (C{tls_port}), its certificate for
    "localhost" from a throwaway CA; and the PEM files (L{_write_pki}).
    The test fails (or skips, see L{tests.helpers.missing}) when this
    redis-server has no TLS.
    """
    require_tls_redis()
    directory = os.path.abspath(testcase.mktemp())
    os.makedirs(directory)
    pki = _write_pki(directory)
    server = await start_redis(testcase, tls_args=[
        "--tls-cert-file", pki["cert"], "--tls-key-file", pki["key"],
        "--tls-ca-cert-file", pki["ca"], "--tls-auth-clients", "no",
    ])
    return server, pki


class RedisTLSTests(TestCase):
    """rediss://: the server's certificate and name are verified."""

    async def setUp(self) -> None:
        self.server, self.pki = await start_tls_redis(self)

    def url(self, host: str) -> str:
        return f"rediss://{host}:{self.server.tls_port}"

    async def assert_nothing_written(self) -> None:
        plain = pool_for(self, self.server.url)
        self.assertEqual(await plain.execute_command("KEYS", "*"), [])

    async def test_trusted_ca(self) -> None:
        """The server's certificate, signed by the given CA for the URL's host, is accepted."""
        store = store_for(pool_for(self, self.url("localhost"), ca_bundle=self.pki["ca"]))
        session = session_now()
        await store.save(session)
        self.assertEqual(await store.load(session.id), session)

    async def test_unknown_ca(self) -> None:
        """A certificate from a CA that is not trusted is refused: SessionStoreUnavailable."""
        store = store_for(pool_for(self, self.url("localhost"), ca_bundle=self.pki["other_ca"]))
        await fails_unavailable(self, lambda: store.save(session_now()), TIMEOUT + SLACK,
                                "TLS, unknown CA")
        await self.assert_nothing_written()

    async def test_platform_trust(self) -> None:
        """Without ca_bundle the platform's CAs are used, which do not know the test CA."""
        store = store_for(pool_for(self, self.url("localhost")))
        await fails_unavailable(self, lambda: store.save(session_now()), TIMEOUT + SLACK,
                                "TLS, platform trust")
        await self.assert_nothing_written()

    async def test_wrong_hostname(self) -> None:
        """A trusted certificate for another name (localhost, reached as 127.0.0.1) is refused."""
        store = store_for(pool_for(self, self.url("127.0.0.1"), ca_bundle=self.pki["ca"]))
        await fails_unavailable(self, lambda: store.save(session_now()), TIMEOUT + SLACK,
                                "TLS, wrong hostname")
        await self.assert_nothing_written()

    async def test_plain_client_to_tls_port(self) -> None:
        """redis:// against the TLS port fails as unavailable (no hang)."""
        store = store_for(pool_for(self, f"redis://127.0.0.1:{self.server.tls_port}"))
        await fails_unavailable(self, lambda: store.load(new_session_id()), TIMEOUT + SLACK,
                                "plain client on TLS port")
