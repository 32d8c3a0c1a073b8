"""
Tests for L{oidcproxy.sessions.stores.memory} and L{oidcproxy.sessions.stores.cookie}: the
shared L{SessionStoreContract} plus what is particular to each store; and what a
request costs the L{oidcproxy.sessions.stores.redis} store.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Tuple

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from oidcproxy.sessions.crypto import Sealer
from oidcproxy.sessions.session import Session, SessionStoreUnavailable, new_session_id
from oidcproxy.sessions.stores.cookie import CookieStore
from oidcproxy.sessions.stores.memory import MemoryStore
from oidcproxy.sessions.stores.redis import RedisStore

from .fakes import API, GuardStack, make_config
from .session_contract import START, SessionStoreContract, make_session

K1 = b"1" * 32
K2 = b"second secret, at least 32 bytes long"


class MemoryStoreTests(SessionStoreContract, SynchronousTestCase):
    """L{MemoryStore} passes the store contract."""

    server_side = True

    def make_store(self) -> MemoryStore:
        return MemoryStore(self.clock)


class MemoryStoreExpiryTests(SynchronousTestCase):
    """L{MemoryStore} drops sessions whose C{expires} has passed."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.store = MemoryStore(self.clock)

    def session(self, lifetime: float) -> Session:
        return Session(
            id=f"id-{lifetime}",
            sub="s",
            claims={},
            created=START,
            last_seen=START,
            expires=START + lifetime,
        )

    def test_value_is_session_id(self) -> None:
        """The cookie value is the session id."""
        session = self.session(60)
        self.assertEqual(self.successResultOf(self.store.save(session)), "id-60")

    def test_loads_before_expiry(self) -> None:
        """A session loads until just before its C{expires}."""
        session = self.session(60)
        self.store.save(session)
        self.clock.advance(59.5)
        self.assertEqual(self.successResultOf(self.store.load(session.id)), session)

    def test_load_drops_expired(self) -> None:
        """Loading a session at its C{expires} gives None and drops it from the store."""
        session = self.session(60)
        self.store.save(session)
        self.clock.advance(60)
        self.assertIsNone(self.successResultOf(self.store.load(session.id)))
        self.assertEqual(len(self.store), 0)

    def test_prune(self) -> None:
        """L{MemoryStore.prune} drops exactly the expired sessions and returns their number."""
        short, medium, long = self.session(10), self.session(20), self.session(30)
        for session in (short, medium, long):
            self.store.save(session)
        self.clock.advance(20)
        self.assertEqual(self.store.prune(), 2)
        self.assertEqual(len(self.store), 1)
        self.assertEqual(self.successResultOf(self.store.load(long.id)), long)

    def test_prune_nothing(self) -> None:
        """Pruning with no expired session drops nothing."""
        self.store.save(self.session(10))
        self.assertEqual(self.store.prune(), 0)
        self.assertEqual(len(self.store), 1)

    def test_load_non_string(self) -> None:
        """A non-string value loads as no session."""
        self.assertIsNone(self.successResultOf(self.store.load(None)))  # type: ignore[arg-type]


class CookieStoreTests(SessionStoreContract, SynchronousTestCase):
    """L{CookieStore} passes the store contract (stateless: delete keeps values valid)."""

    server_side = False

    def make_store(self) -> CookieStore:
        return CookieStore(Sealer([K1]), self.clock)


class CookieStoreSpecificTests(SynchronousTestCase):
    """What is particular to L{CookieStore}."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.session = make_session(self.clock)

    def save(self, store: CookieStore, session: Session) -> str:
        return self.successResultOf(store.save(session))

    def load(self, store: CookieStore, value: str) -> object:
        return self.successResultOf(store.load(value))

    def test_value_is_sealed_session(self) -> None:
        """The value is the session's bytes sealed for purpose C{b"session"}."""
        sealer = Sealer([K1])
        value = self.save(CookieStore(sealer, self.clock), self.session)
        self.assertEqual(sealer.unseal(value, b"session"), self.session.to_bytes())

    def test_rotation(self) -> None:
        """A value sealed with [k1] loads in a store configured with [k2, k1]."""
        value = self.save(CookieStore(Sealer([K1]), self.clock), self.session)
        self.assertEqual(self.load(CookieStore(Sealer([K2, K1]), self.clock), value), self.session)

    def test_other_secret(self) -> None:
        """A value sealed with another secret loads as no session."""
        value = self.save(CookieStore(Sealer([K2]), self.clock), self.session)
        self.assertIsNone(self.load(CookieStore(Sealer([K1]), self.clock), value))

    def test_store_tokens_false(self) -> None:
        """With C{store_tokens=False} the saved session has no tokens, the rest intact."""
        store = CookieStore(Sealer([K1]), self.clock, store_tokens=False)
        loaded = self.load(store, self.save(store, self.session))
        self.assertEqual(loaded, self.session.without_tokens())
        self.assertEqual(loaded.sid, "op-session-1")  # type: ignore[attr-defined]

    def test_store_tokens_false_smaller(self) -> None:
        """Without tokens the value does not contain them at all (it is shorter)."""
        sealer = Sealer([K1])
        with_tokens = self.save(CookieStore(sealer, self.clock), self.session)
        without = self.save(CookieStore(sealer, self.clock, store_tokens=False), self.session)
        plaintext = sealer.unseal(without, b"session")
        assert plaintext is not None
        self.assertNotIn(b"refresh-token-value", plaintext)
        self.assertLess(len(without), len(with_tokens))

    def test_state_purpose_refused(self) -> None:
        """A session's bytes sealed for purpose C{b"state"} do not load as a session."""
        sealer = Sealer([K1])
        value = sealer.seal(self.session.to_bytes(), b"state")
        self.assertIsNone(self.load(CookieStore(sealer, self.clock), value))

    def test_sealed_malformed_session(self) -> None:
        """A correctly sealed value whose content is not a session loads as None."""
        sealer = Sealer([K1])
        data = json.loads(self.session.to_bytes())
        del data["sub"]
        value = sealer.seal(json.dumps(data).encode(), b"session")
        self.assertIsNone(self.load(CookieStore(sealer, self.clock), value))

    def test_fresh_value_per_save(self) -> None:
        """Saving the same session twice gives two different values (fresh nonces)."""
        store = CookieStore(Sealer([K1]), self.clock)
        self.assertNotEqual(self.save(store, self.session), self.save(store, self.session))

    def test_unserialisable_claims_fail(self) -> None:
        """A session whose claims are not JSON-able fails the save Deferred instead of raising."""
        store = CookieStore(Sealer([K1]), self.clock)
        bad = Session(
            id="x", sub="s", claims={"when": object()}, created=START, last_seen=START, expires=START + 1
        )
        self.failureResultOf(store.save(bad), TypeError)


# -- the Redis store's request path (a fake Redis; tests.integration.test_redis_store has the real one)


class CountingRedis:
    """
    Enough of txredisapi for RedisStore: keeps values, records every
    command, and answers at once, or (C{hold}) only when told to.
    """

    def __init__(self) -> None:
        self.values: Dict[str, Any] = {}
        self.commands: List[str] = []
        self.hold = False
        self.held: List[Deferred[Any]] = []

    def execute_command(self, *args: Any) -> Deferred[Any]:
        self.commands.append(args[0])
        if self.hold:
            d: Deferred[Any] = Deferred()
            self.held.append(d)
            return d
        if args[0] == "EVAL" and "'SET'" in args[1]:
            self.values[args[3]] = args[3 + args[2]]
            return succeed(1)
        if args[0] == "GET":
            return succeed(self.values.get(args[1]))
        if args[0] == "SET":  # a refresh lock
            return succeed("OK")
        return succeed(1)


class RedisStoreRequestPathTests(SynchronousTestCase):
    """What a request with a Redis session costs: Redis commands and timers."""

    def guard(self, redis: CountingRedis, **session: Any) -> GuardStack:
        config = make_config(session=dict(session, store="redis"),
                             redis={"url": "redis://127.0.0.1:6379/0"})
        return GuardStack(self, config, store=lambda clock: RedisStore(redis, Sealer([K1]), clock))

    def test_one_command_per_request(self) -> None:
        """A request with a Redis session sends Redis one command: the session's GET."""
        redis = CountingRedis()
        h = self.guard(redis)
        browser = h.logged_in()
        redis.commands.clear()
        for _ in range(20):
            h.clock.advance(1)
            self.assertEqual(browser.get("/x", headers=API).code, 200)
        self.assertEqual(redis.commands, ["GET"] * 20)

    def test_idle_renewal_once_a_minute(self) -> None:
        """
        With idle_timeout, the session (whose idle clock is inside the
        sealed value) is saved again at most once a minute: one request in
        that minute sends a second command, the others one.
        """
        redis = CountingRedis()
        h = self.guard(redis, idle_timeout="30m")
        browser = h.logged_in()
        redis.commands.clear()
        for _ in range(20):
            h.clock.advance(6)
            self.assertEqual(browser.get("/x", headers=API).code, 200)
        self.assertEqual(redis.commands.count("GET"), 20)
        self.assertEqual(redis.commands.count("EVAL"), 2)
        self.assertEqual(len(redis.commands), 22)

    def store(self, timeout: float = 1.0) -> Tuple[RedisStore, CountingRedis, Clock]:
        clock = Clock()
        redis = CountingRedis()
        redis.hold = True
        return RedisStore(redis, Sealer([K1]), clock, command_timeout=timeout), redis, clock

    def test_one_timer_for_many_loads(self) -> None:
        """Loads in flight share one deadline timer; none is left once they are answered."""
        store, redis, clock = self.store()
        loads = [store.load(new_session_id()) for _ in range(100)]
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        for d in redis.held:
            d.callback(None)
        self.assertEqual([self.successResultOf(d) for d in loads], [None] * 100)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_each_load_keeps_its_deadline(self) -> None:
        """
        Each load fails with SessionStoreUnavailable when its own
        command_timeout has passed, not sooner, not later.
        """
        store, redis, clock = self.store(timeout=1.0)
        first = store.load(new_session_id())
        clock.advance(0.5)
        second = store.load(new_session_id())
        clock.advance(0.4)
        redis.held[0].callback(None)  # the first is answered in time
        third = store.load(new_session_id())
        clock.advance(0.5999)
        self.assertNoResult(second)
        clock.advance(0.0001)
        self.failureResultOf(second, SessionStoreUnavailable)
        self.assertIsNone(self.successResultOf(first))
        self.assertNoResult(third)
        clock.advance(0.4)
        self.failureResultOf(third, SessionStoreUnavailable)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_caller_cancel_is_not_a_timeout(self) -> None:
        """A load its caller cancels fails with CancelledError, not as Redis unavailable."""
        store, _, clock = self.store()
        d = store.load(new_session_id())
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_opened_once_per_value(self) -> None:
        """
        A session is unsealed once while Redis holds the same value; a new
        value under its id (a save, or anything written there) is opened
        afresh, and one that does not open is no session, whatever was
        opened before.
        """
        redis = CountingRedis()
        clock = Clock()
        sealer = Sealer([K1])
        store = RedisStore(redis, sealer, clock)
        opened = []
        unseal = sealer.unseal
        self.patch(sealer, "unseal", lambda *a: opened.append(1) or unseal(*a))
        session = make_session(clock)
        self.successResultOf(store.save(session))
        for _ in range(3):
            self.assertEqual(self.successResultOf(store.load(session.id)), session)
        self.assertEqual(len(opened), 1)
        touched = session.touched(clock.seconds() + 5)
        self.successResultOf(store.save(touched))
        self.assertEqual(self.successResultOf(store.load(session.id)), touched)
        self.assertEqual(len(opened), 2)
        key, value = next(iter(redis.values.items()))
        redis.values[key] = value[:-1] + ("A" if value[-1] != "A" else "B")
        self.assertIsNone(self.successResultOf(store.load(session.id)))
