"""
Tests for L{oidcproxy.sessions.session}: serialisation, copies, state and ids.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Dict

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from oidcproxy.sessions.session import OpenedSessions, Session, new_session_id, session_state


def full_session() -> Session:
    return Session(
        id="sid-1",
        sub="user",
        claims={"sub": "user", "groups": ["a", "b"], "name": "Zoë"},
        created=100.0,
        last_seen=150.5,
        expires=1000.0,
        id_token="idt",
        access_token="at",
        access_token_expires=400.0,
        refresh_token="rt",
        sid="op-sid",
    )


def minimal_session() -> Session:
    return Session(id="sid-2", sub="user", claims={}, created=1.0, last_seen=2.0, expires=3.0)


def as_dict(session: Session) -> Dict[str, Any]:
    result: Dict[str, Any] = json.loads(session.to_bytes())
    return result


def encoded(data: Any) -> bytes:
    return json.dumps(data).encode("utf-8")


class SerialisationTests(SynchronousTestCase):
    """L{Session.to_bytes} and L{Session.from_bytes} on good input."""

    def test_exact_bytes(self) -> None:
        """to_bytes is compact JSON of every field in declaration order, non-ASCII escaped."""
        self.assertEqual(
            full_session().to_bytes(),
            b'{"id":"sid-1","sub":"user","claims":{"sub":"user","groups":["a","b"],"name":"Zo\\u00eb"},'
            b'"created":100.0,"last_seen":150.5,"expires":1000.0,"id_token":"idt","access_token":"at",'
            b'"access_token_expires":400.0,"refresh_token":"rt","sid":"op-sid"}',
        )

    def test_round_trip_full(self) -> None:
        """A session with every field set round-trips."""
        session = full_session()
        self.assertEqual(Session.from_bytes(session.to_bytes()), session)

    def test_round_trip_minimal(self) -> None:
        """A session without optional fields round-trips, the optional fields None."""
        session = minimal_session()
        loaded = Session.from_bytes(session.to_bytes())
        self.assertEqual(loaded, session)
        assert loaded is not None
        self.assertIsNone(loaded.refresh_token)

    def test_optional_fields_absent(self) -> None:
        """Optional fields may be missing entirely; they load as None."""
        data = {"id": "i", "sub": "s", "claims": {}, "created": 1.0, "last_seen": 2.0, "expires": 3.0}
        self.assertEqual(Session.from_bytes(encoded(data)), Session("i", "s", {}, 1.0, 2.0, 3.0))

    def test_integer_times(self) -> None:
        """Integer timestamps are accepted and become floats."""
        data = as_dict(minimal_session())
        data.update(created=10, last_seen=20, expires=30, access_token_expires=25)
        loaded = Session.from_bytes(encoded(data))
        assert loaded is not None
        times = (loaded.created, loaded.last_seen, loaded.expires, loaded.access_token_expires)
        self.assertEqual([type(v) for v in times], [float] * 4)
        self.assertEqual(loaded.expires, 30.0)

    def test_unknown_fields_ignored(self) -> None:
        """Fields this version does not know are ignored (forward compatibility)."""
        data = as_dict(full_session())
        data["added_later"] = {"x": 1}
        self.assertEqual(Session.from_bytes(encoded(data)), full_session())

    def test_bytearray_accepted(self) -> None:
        """A bytearray parses like bytes."""
        self.assertEqual(Session.from_bytes(bytearray(full_session().to_bytes())), full_session())


class MalformedTests(SynchronousTestCase):
    """L{Session.from_bytes} returns None for malformed input and never raises."""

    def assertMalformed(self, data: Any) -> None:
        self.assertIsNone(Session.from_bytes(data), repr(data)[:80])

    def test_not_json(self) -> None:
        """Bytes that are not JSON are refused."""
        for data in [b"", b"{", b"not json", b'{"id": }', b"\x00", b"{}garbage"]:
            self.assertMalformed(data)

    def test_not_utf8(self) -> None:
        """Bytes that are not UTF-8 (including UTF-16 JSON) are refused."""
        self.assertMalformed(b'{"id":"\xff"}')
        self.assertMalformed(full_session().to_bytes().decode("ascii").encode("utf-16"))

    def test_not_an_object(self) -> None:
        """JSON that is not an object is refused."""
        for data in [b"[]", b"null", b"1", b'"session"', b"true", b"[{}]"]:
            self.assertMalformed(data)

    def test_missing_required(self) -> None:
        """Removing any one required field makes the data refused."""
        for name in ["id", "sub", "claims", "created", "last_seen", "expires"]:
            data = as_dict(full_session())
            del data[name]
            self.assertMalformed(encoded(data))

    def test_wrong_types(self) -> None:
        """A field of the wrong type is refused."""
        cases = [
            ("id", 1),
            ("id", None),
            ("id", ["sid-1"]),
            ("sub", 5),
            ("sub", None),
            ("claims", []),
            ("claims", "{}"),
            ("claims", None),
            ("created", "100"),
            ("created", None),
            ("created", True),
            ("last_seen", [1]),
            ("expires", {}),
            ("expires", False),
            ("id_token", 1),
            ("access_token", {}),
            ("refresh_token", []),
            ("sid", 7),
            ("access_token_expires", "soon"),
            ("access_token_expires", True),
        ]
        for name, value in cases:
            data = as_dict(full_session())
            data[name] = value
            self.assertMalformed(encoded(data))

    def test_empty_identifiers(self) -> None:
        """An empty C{id} or C{sub} is refused."""
        for name in ["id", "sub"]:
            data = as_dict(full_session())
            data[name] = ""
            self.assertMalformed(encoded(data))

    def test_non_finite_numbers(self) -> None:
        """NaN, Infinity and numbers too large for a float are refused."""
        text = full_session().to_bytes()
        for replacement in [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"9" * 400]:
            self.assertMalformed(text.replace(b'"expires":1000.0', b'"expires":' + replacement))
        self.assertMalformed(text.replace(b'"access_token_expires":400.0', b'"access_token_expires":NaN'))

    def test_deep_nesting(self) -> None:
        """Pathologically nested claims are refused rather than crashing the parser."""
        claims = b"[" * 100_000 + b"]" * 100_000
        self.assertMalformed(b'{"id":"i","sub":"s","claims":' + claims + b"}")

    def test_not_bytes(self) -> None:
        """Non-bytes input (text, None, a dict) is refused."""
        for data in [full_session().to_bytes().decode("ascii"), None, as_dict(full_session())]:
            self.assertMalformed(data)


class CopyTests(SynchronousTestCase):
    """L{Session.without_tokens} and L{Session.touched}."""

    def test_without_tokens(self) -> None:
        """without_tokens clears the four token fields and keeps everything else."""
        session = full_session()
        self.assertEqual(
            session.without_tokens(),
            Session(
                id="sid-1",
                sub="user",
                claims={"sub": "user", "groups": ["a", "b"], "name": "Zoë"},
                created=100.0,
                last_seen=150.5,
                expires=1000.0,
                sid="op-sid",
            ),
        )

    def test_without_tokens_leaves_original(self) -> None:
        """without_tokens returns a copy; the original still has its tokens."""
        session = full_session()
        session.without_tokens()
        self.assertEqual(session.refresh_token, "rt")

    def test_touched(self) -> None:
        """touched returns a copy with only C{last_seen} changed."""
        session = full_session()
        touched = session.touched(500.0)
        self.assertEqual(touched.last_seen, 500.0)
        self.assertEqual(touched, Session(**{**as_dict(session), "last_seen": 500.0}))
        self.assertEqual(session.last_seen, 150.5)


class SessionStateTests(SynchronousTestCase):
    """L{session_state}."""

    def test_table(self) -> None:
        """The state for times around the expiry and idle limits."""
        session = Session("i", "s", {}, created=0.0, last_seen=100.0, expires=1000.0)
        cases = [
            # (now, idle_timeout, expected)
            (100.0, 0, "live"),
            (999.9, 0, "live"),
            (1000.0, 0, "expired"),
            (5000.0, 0, "expired"),
            (399.9, 300, "live"),
            (400.0, 300, "idle"),
            (999.0, 300, "idle"),
            (1000.0, 300, "expired"),  # expiry is reported before idleness
            (900.0, -1, "live"),  # a non-positive idle timeout disables the check
            (50.0, 300, "live"),  # a clock behind last_seen is not idle
        ]
        for now, idle, expected in cases:
            self.assertEqual(session_state(session, now, idle), expected, (now, idle))


class SessionIdTests(SynchronousTestCase):
    """L{new_session_id}."""

    def test_shape(self) -> None:
        """An id is 43 URL-safe base64 characters encoding 32 bytes."""
        sid = new_session_id()
        self.assertRegex(sid, r"\A[A-Za-z0-9_-]{43}\Z")
        self.assertEqual(len(base64.urlsafe_b64decode(sid + "=")), 32)

    def test_unique(self) -> None:
        """1000 ids are all different."""
        self.assertEqual(len({new_session_id() for _ in range(1000)}), 1000)

    def test_entropy(self) -> None:
        """Across 200 ids every one of the 64 alphabet characters occurs (ids are random)."""
        seen = set("".join(new_session_id() for _ in range(200)))
        self.assertEqual(len(seen), 64)


class OpenedSessionsTests(SynchronousTestCase):
    """The bounded cache of sessions opened from sealed values."""

    def session(self, n: int) -> Session:
        return Session(id=f"id-{n}", sub=f"user-{n}", claims={}, created=1.0, last_seen=1.0,
                       expires=2.0)

    def test_hit_and_lru(self):
        cache = OpenedSessions(Clock(), max_entries=2)
        a, b, c = self.session(1), self.session(2), self.session(3)
        cache.put("a", 1, a)
        cache.put("b", 1, b)
        self.assertIs(cache.get("a"), a)  # "a" is now the most recently used
        cache.put("c", 1, c)
        self.assertIsNone(cache.get("b"))
        self.assertIs(cache.get("a"), a)
        self.assertIs(cache.get("c"), c)
        self.assertEqual(len(cache), 2)

    def test_working_set_only(self):
        """An entry unused for the ttl is gone: memory follows the active sessions."""
        clock = Clock()
        clock.advance(100)
        cache = OpenedSessions(clock, ttl=60.0)
        a, b = self.session(1), self.session(2)
        cache.put("a", 1, a)
        clock.advance(59)
        self.assertIs(cache.get("a"), a)  # used: another 60 s from now
        cache.put("b", 1, b)
        clock.advance(59)
        self.assertIs(cache.get("a"), a)
        clock.advance(2)  # "b" unused for 61 s
        self.assertIsNone(cache.get("b"))
        cache.put("c", 1, self.session(3))
        clock.advance(61)
        cache.put("d", 1, self.session(4))  # a put drops what went stale
        self.assertEqual(len(cache), 1)

    def test_bounded_by_size(self):
        cache = OpenedSessions(Clock(), max_entries=100, max_chars=1000)
        for n in range(10):
            cache.put("k" * 200 + str(n), 201, self.session(n))
        self.assertLessEqual(len(cache), 4)
        # One value too large to be worth keeping is not kept at all.
        cache.put("x" * 600, 600, self.session(99))
        self.assertIsNone(cache.get("x" * 600))

    def test_filed_under_a_short_key(self):
        """
        The map hashes and compares a few dozen characters per lookup, not
        the kilobytes of a value: an entry is filed under the value's tail.
        """
        cache = OpenedSessions(Clock())
        value = "v" * 3000 + "0123456789abcdefghijklmnopqrstuvwxyz"
        cache.put(value, len(value), self.session(1))
        self.assertEqual([len(key) for key in cache._cache.keys()], [24])

    def test_equal_value_hits(self):
        """A value equal character for character (another object) finds the session."""
        cache = OpenedSessions(Clock())
        a = self.session(1)
        value = "head-" * 600 + "tail"
        cache.put(value, len(value), a)
        copy = "".join(list(value))
        self.assertIsNot(copy, value)
        self.assertIs(cache.get(copy), a)

    def test_values_ending_alike_never_share(self):
        """
        Two values with the same last characters never find each other's
        session, and a lookup of one does not keep the other in use; the one
        put last takes the place.
        """
        clock = Clock()
        cache = OpenedSessions(clock, ttl=60.0)
        tail = "T" * 40
        mine, theirs = "A" * 500 + tail, "B" * 500 + tail
        a, b = self.session(1), self.session(2)
        cache.put(mine, len(mine), a)
        self.assertIsNone(cache.get(theirs))
        self.assertIsNone(cache.get(mine[:-1] + "U"))
        self.assertIsNone(cache.get(tail))
        self.assertIs(cache.get(mine), a)
        clock.advance(59)
        self.assertIsNone(cache.get(theirs))  # does not mark "mine" as used
        clock.advance(2)
        self.assertIsNone(cache.get(mine))
        cache.put(mine, len(mine), a)
        cache.put(theirs, len(theirs), b)
        self.assertIs(cache.get(theirs), b)
        self.assertIsNone(cache.get(mine))
        self.assertEqual(len(cache), 1)

    def test_cookie_store_opens_once(self):
        """The same cookie value gives the same session without opening it again."""
        from oidcproxy.sessions.crypto import Sealer
        from oidcproxy.sessions.stores.cookie import CookieStore

        sealer = Sealer([b"k" * 32])
        store = CookieStore(sealer, Clock())
        value = self.successResultOf(store.save(self.session(1)))
        opened = []
        unseal = sealer.unseal
        sealer.unseal = lambda v, p: opened.append(v) or unseal(v, p)  # type: ignore[method-assign]
        first = self.successResultOf(store.load(value))
        second = self.successResultOf(store.load(value))
        self.assertEqual(first, self.session(1))
        self.assertIs(second, first)
        self.assertEqual(len(opened), 1)
        # A tampered value is still opened (and refused), never served from the cache.
        self.assertIsNone(self.successResultOf(store.load(value[:-2] + "AA")))

    def test_cookie_store_cache_on_its_clock(self):
        """
        The store's cache of opened values lapses on the clock the store is
        given: a value unused for 60 s of it is opened again.
        """
        from oidcproxy.sessions.crypto import Sealer
        from oidcproxy.sessions.stores.cookie import CookieStore

        sealer = Sealer([b"k" * 32])
        clock = Clock()
        store = CookieStore(sealer, clock)
        value = self.successResultOf(store.save(self.session(1)))
        opened = []
        unseal = sealer.unseal
        sealer.unseal = lambda v, p: opened.append(v) or unseal(v, p)  # type: ignore[method-assign]
        self.successResultOf(store.load(value))
        clock.advance(59)
        self.successResultOf(store.load(value))
        self.assertEqual(len(opened), 1)
        clock.advance(60)
        self.assertEqual(self.successResultOf(store.load(value)), self.session(1))
        self.assertEqual(len(opened), 2)
