"""
The behaviour every L{ISessionStore} must have, as a mixin reused by each
store's tests (the memory and cookie stores here, Redis in
L{tests.integration.test_redis_store}).

Usage::

    class MyStoreTests(SessionStoreContract, SynchronousTestCase):
        server_side = True

        def make_store(self):
            return MyStore(self.clock)

C{setUp} provides C{self.clock} (a L{Clock} at a fixed time) and
C{self.store}; the clock gives the sessions' times, it need not drive the
store.

The contract's tests are coroutines run by L{contract_test}. Mixed into a
L{SynchronousTestCase}, the store's Deferreds must have fired by the time
each call returns (an in-memory store, or an in-memory fake backend); mixed
into an asynchronous L{TestCase} they may fire later (a real server), and
C{setUp} may be overridden as a coroutine that prepares what C{make_store}
needs before calling C{super().setUp()}.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Callable, Coroutine, List, Optional

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from oidcproxy.sessions.session import ISessionStore, Session, new_session_id

if TYPE_CHECKING:
    from twisted.trial.unittest import SynchronousTestCase

    _Base = SynchronousTestCase
else:
    _Base = object

START = 1_700_000_000.0


def contract_test(
    test: Callable[[Any], Coroutine[Any, Any, None]],
) -> Callable[[Any], Optional[Deferred[None]]]:
    """
    Make the coroutine C{test} a test method of either kind of test case: an
    asynchronous L{TestCase} gets its Deferred to wait for; a
    L{SynchronousTestCase} runs it to the end at once and sees its outcome
    (an assertion failure, a skip, an error) raised as usual.
    """

    @functools.wraps(test)
    def run(self: Any) -> Optional[Deferred[None]]:
        d = Deferred.fromCoroutine(test(self))
        if isinstance(self, TestCase):
            return d
        outcome: List[Any] = []
        d.addBoth(outcome.append)
        if not outcome:
            raise self.failureException(
                "the store's Deferreds have not fired: use an asynchronous TestCase for this store"
            )
        if isinstance(outcome[0], Failure):
            outcome[0].raiseException()
        return None

    return run


def make_session(clock: Clock, **overrides: Any) -> Session:
    """A full session (every optional field set) starting at C{clock}'s time."""
    now = clock.seconds()
    fields: dict = dict(
        id=new_session_id(),
        sub="user-1234",
        claims={
            "sub": "user-1234",
            "email": "ada@example.com",
            "name": "Ada Lovelace",
            "email_verified": True,
        },
        created=now,
        last_seen=now,
        expires=now + 8 * 3600,
        id_token="eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1c2VyLTEyMzQifQ.c2lnbmF0dXJl",
        access_token="access-token-value",
        access_token_expires=now + 300,
        refresh_token="refresh-token-value",
        sid="op-session-1",
    )
    fields.update(overrides)
    return Session(**fields)


class SessionStoreContract(_Base):
    """
    Tests every session store passes. Not a test case by itself: mix it into
    one and define L{make_store} and L{server_side}.
    """

    server_side: bool = True
    """Whether L{ISessionStore.delete} removes state the store keeps (False for the cookie store)."""

    clock: Clock

    def make_store(self) -> Any:
        """Build the store under test; C{self.clock} is set."""
        raise NotImplementedError(f"{type(self).__name__} must define make_store")

    def setUp(self) -> None:
        super().setUp()
        self.clock = Clock()
        self.clock.advance(START)
        self.store = self.make_store()

    # helpers

    def session(self, **overrides: Any) -> Session:
        return make_session(self.clock, **overrides)

    async def save(self, session: Session) -> str:
        value = await self.store.save(session)
        self.assertIsInstance(value, str)
        return value

    async def load(self, value: str) -> Any:
        return await self.store.load(value)

    # the contract

    @contract_test
    async def test_provides_interface(self) -> None:
        """The store provides L{ISessionStore}."""
        self.assertTrue(verifyObject(ISessionStore, self.store))

    @contract_test
    async def test_round_trip(self) -> None:
        """A saved session loads back equal, every field included."""
        session = self.session()
        self.assertEqual(await self.load(await self.save(session)), session)

    @contract_test
    async def test_session_id_preserved(self) -> None:
        """The loaded session keeps the saved session's id."""
        session = self.session()
        self.assertEqual((await self.load(await self.save(session))).id, session.id)

    @contract_test
    async def test_value_cookie_safe(self) -> None:
        """The value for the browser is non-empty URL-safe base64 text."""
        value = await self.save(self.session())
        self.assertRegex(value, r"\A[A-Za-z0-9_-]+\Z")

    @contract_test
    async def test_minimal_session_round_trip(self) -> None:
        """A session without any optional field and with empty claims round-trips."""
        session = Session(
            id=new_session_id(),
            sub="s",
            claims={},
            created=START,
            last_seen=START,
            expires=START + 60,
        )
        self.assertEqual(await self.load(await self.save(session)), session)

    @contract_test
    async def test_large_claims_round_trip(self) -> None:
        """A session with 200 groups and non-ASCII claims round-trips."""
        groups = [f"group-{i:03d}-engineering-platform" for i in range(200)]
        session = self.session(claims={"sub": "user-1234", "groups": groups, "name": "Zoë Ångström 日本"})
        loaded = await self.load(await self.save(session))
        self.assertEqual(loaded, session)
        self.assertEqual(loaded.claims["groups"], groups)

    @contract_test
    async def test_save_again_updates(self) -> None:
        """Saving a changed copy of a session makes its new value load the change."""
        session = self.session()
        await self.save(session)
        self.clock.advance(120)
        later = session.touched(self.clock.seconds())
        loaded = await self.load(await self.save(later))
        self.assertEqual(loaded.last_seen, START + 120)
        self.assertEqual(loaded, later)

    @contract_test
    async def test_two_sessions_independent(self) -> None:
        """Two saved sessions get two different values, each loading its own session."""
        first = self.session(sub="alice", claims={"sub": "alice"})
        second = self.session(sub="bob", claims={"sub": "bob"})
        first_value = await self.save(first)
        second_value = await self.save(second)
        self.assertNotEqual(first_value, second_value)
        self.assertEqual(await self.load(first_value), first)
        self.assertEqual(await self.load(second_value), second)

    @contract_test
    async def test_load_empty(self) -> None:
        """The empty value loads as no session (not an error)."""
        self.assertIsNone(await self.load(""))

    @contract_test
    async def test_load_garbage(self) -> None:
        """Values that no store could have issued load as no session."""
        for value in ["garbage", "!!!!", "a b c", "=" * 10, "\x00\x01", "é" * 50, "A" * 100_000]:
            self.assertIsNone(await self.load(value), repr(value[:20]))

    @contract_test
    async def test_load_unknown(self) -> None:
        """A well-formed session id that was never saved loads as no session."""
        await self.save(self.session())
        self.assertIsNone(await self.load(new_session_id()))

    @contract_test
    async def test_tampered_flip(self) -> None:
        """A value with one character in the middle changed loads as no session."""
        value = await self.save(self.session())
        middle = len(value) // 2
        flipped = "B" if value[middle] == "A" else "A"
        self.assertIsNone(await self.load(value[:middle] + flipped + value[middle + 1 :]))

    @contract_test
    async def test_tampered_truncated(self) -> None:
        """A value missing its last character loads as no session."""
        value = await self.save(self.session())
        self.assertIsNone(await self.load(value[:-1]))

    @contract_test
    async def test_tampered_appended(self) -> None:
        """A value with characters appended loads as no session."""
        value = await self.save(self.session())
        for suffix in ["A", "AA", "AAAA", "x"]:
            self.assertIsNone(await self.load(value + suffix), suffix)

    @contract_test
    async def test_delete(self) -> None:
        """
        After delete, a server-side store no longer loads the value. A
        stateless store (the cookie store) keeps nothing to delete: the value
        still loads, and logout relies on the browser dropping the cookie and
        on expiry.
        """
        session = self.session()
        value = await self.save(session)
        self.assertIsNone(await self.store.delete(session))
        if self.server_side:
            self.assertIsNone(await self.load(value))
        else:
            self.assertEqual(await self.load(value), session)

    @contract_test
    async def test_delete_leaves_others(self) -> None:
        """Deleting one session leaves another one loadable."""
        gone = self.session(sub="alice")
        kept = self.session(sub="bob")
        await self.save(gone)
        kept_value = await self.save(kept)
        await self.store.delete(gone)
        self.assertEqual(await self.load(kept_value), kept)

    @contract_test
    async def test_delete_unsaved(self) -> None:
        """Deleting a session that was never saved fires with None."""
        self.assertIsNone(await self.store.delete(self.session()))
