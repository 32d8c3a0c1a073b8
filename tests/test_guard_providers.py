"""
Tests for sessions belonging to their provider: the provider's name is kept
with a session (and not written for the default provider, so what was
stored before reads the same), a login attempt is bound to the provider that
started it, the stores' lookups by user act on one provider's sessions only,
and the guard refuses a session of a provider it does not serve.
"""

from __future__ import annotations

import copy
import json
from typing import Any, Dict, List, Set

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from oidcproxy.oidc.login import STATE_PURPOSE, LoginAttempt
from oidcproxy.sessions.crypto import Sealer
from oidcproxy.sessions.session import DEFAULT_PROVIDER, Session, new_session_id
from oidcproxy.sessions.stores.cookie import PURPOSE as COOKIE_PURPOSE
from oidcproxy.sessions.stores.cookie import CookieStore
from oidcproxy.sessions.stores.memory import MemoryStore
from oidcproxy.sessions.stores.redis import store as redis_store
from oidcproxy.sessions.stores.redis.store import PURPOSE_PREFIX, RedisStore, hashed

from .fakes import API, SECRET, SESSION_COOKIE, STATE_PREFIX, GuardStack, make_config, open_session

START = 1_700_000_000.0
KEY = SECRET.encode("ascii")

LEGACY = (b'{"id":"%s","sub":"user-1","claims":{"sub":"user-1"},"created":1700000000.0,'
          b'"last_seen":1700000000.0,"expires":1700028800.0,"id_token":null,'
          b'"access_token":null,"access_token_expires":null,"refresh_token":null,"sid":"op-1"}')
"""A session as the proxy wrote it before providers had names (C{%s}: its id)."""


def session(provider: str = DEFAULT_PROVIDER, sub: str = "user-1", sid: str = "op-1") -> Session:
    return Session(id=new_session_id(), sub=sub, claims={"sub": sub}, created=START,
                   last_seen=START, expires=START + 8 * 3600, sid=sid, provider=provider)


class SessionFormatTests(SynchronousTestCase):
    """The provider in a session's serialised form."""

    def test_default_not_written(self) -> None:
        """A default session serialises exactly as before providers had names."""
        s = session()
        self.assertEqual(s.to_bytes(), LEGACY % s.id.encode("ascii"))

    def test_legacy_opens_as_default(self) -> None:
        """A session written before providers had names opens as the default provider's."""
        s = Session.from_bytes(LEGACY % new_session_id().encode("ascii"))
        assert s is not None
        self.assertEqual(s.provider, DEFAULT_PROVIDER)

    def test_named_round_trip(self) -> None:
        """A named provider's session keeps its name."""
        s = session("corp")
        self.assertEqual(json.loads(s.to_bytes())["provider"], "corp")
        self.assertEqual(Session.from_bytes(s.to_bytes()), s)

    def test_provider_not_a_string(self) -> None:
        """A provider that is not a string: a malformed session."""
        data = json.loads(session().to_bytes())
        data["provider"] = 7
        self.assertIsNone(Session.from_bytes(json.dumps(data).encode("ascii")))


class CookieStoreFormatTests(SynchronousTestCase):
    """The provider sealed in the cookie store's values."""

    def setUp(self) -> None:
        self.sealer = Sealer([KEY])
        self.store = CookieStore(self.sealer, Clock())

    def test_legacy_cookie_opens_as_default(self) -> None:
        """A cookie sealed before providers had names opens as the default provider's session."""
        value = self.sealer.seal(LEGACY % new_session_id().encode("ascii"), COOKIE_PURPOSE)
        loaded = self.successResultOf(self.store.load(value))
        assert loaded is not None
        self.assertEqual((loaded.sub, loaded.provider), ("user-1", DEFAULT_PROVIDER))

    def test_default_cookie_same_size(self) -> None:
        """A default session's cookie is as long as it was before providers had names."""
        s = session()
        value = self.successResultOf(self.store.save(s))
        legacy = self.sealer.seal(LEGACY % s.id.encode("ascii"), COOKIE_PURPOSE)
        self.assertEqual(len(value), len(legacy))

    def test_named_provider_sealed(self) -> None:
        """A named provider's session comes back from its cookie with its provider."""
        s = session("corp")
        loaded = self.successResultOf(self.store.load(self.successResultOf(self.store.save(s))))
        self.assertEqual(loaded, s)


class ScriptedRedis:
    """
    Enough of Redis for L{RedisStore}'s index operations: keys, sets, and
    the store's own scripts carried out as they would be.
    """

    def __init__(self) -> None:
        self.values: Dict[str, Any] = {}
        self.sets: Dict[str, Set[str]] = {}

    def execute_command(self, command: str, *args: Any) -> Deferred[Any]:
        return succeed(getattr(self, "_" + command.lower())(*args))

    def _get(self, key: str) -> Any:
        return self.values.get(key)

    def _set(self, key: str, value: Any, *options: Any) -> Any:
        if "NX" in options and key in self.values:
            return None
        self.values[key] = value
        return "OK"

    def _mget(self, *keys: str) -> List[Any]:
        return [self.values.get(k) for k in keys]

    def _smembers(self, key: str) -> List[str]:
        return sorted(self.sets.get(key, ()))

    def _eval(self, script: str, count: int, *rest: Any) -> Any:
        keys, args = list(rest[:count]), list(rest[count:])
        if script == redis_store._SAVE:
            self.values[keys[0]] = args[0]
            for index in keys[1:]:
                self.sets.setdefault(index, set()).add(args[2])
            return 1
        if script == redis_store._DELETE_BY:
            members = set().union(*(self.sets.pop(k, set()) for k in keys))
            return sum(self.values.pop(args[0] + m, None) is not None for m in members)
        if script == redis_store._DROP_DANGLING:
            gone = {m for m in args[1:] if args[0] + m not in self.values}
            self.sets.get(keys[0], set()).difference_update(gone)
            return len(gone)
        raise AssertionError(f"script not expected: {script[:40]!r}")


class ScopedLookupsMixin:
    """
    The lookups that act on a user (C{delete_by}, C{sessions_of},
    C{mark_revoked}, C{revoked_at}) act on one provider's sessions; the same
    for every store that has them.
    """

    clock: Clock
    store: Any

    def make_store(self) -> Any:
        raise NotImplementedError

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.store = self.make_store()
        self.default, self.corp = session(), session("corp")
        for s in (self.default, self.corp):
            self.successResultOf(self.store.save(s))  # type: ignore[attr-defined]

    def ids(self, sessions: List[Session]) -> List[str]:
        return [s.id for s in sessions]

    def test_sessions_of_one_provider(self) -> None:
        """sessions_of finds the sub's sessions of the provider asked (default: the default's)."""
        t: Any = self
        t.assertEqual(self.ids(t.successResultOf(self.store.sessions_of("user-1"))),
                      [self.default.id])
        t.assertEqual(self.ids(t.successResultOf(self.store.sessions_of("user-1", "corp"))),
                      [self.corp.id])

    def test_delete_by_sub_one_provider(self) -> None:
        """delete_by(sub=) of one provider leaves the other provider's session of that sub."""
        t: Any = self
        t.assertEqual(t.successResultOf(self.store.delete_by(sub="user-1", provider="corp")), 1)
        t.assertEqual(self.ids(t.successResultOf(self.store.sessions_of("user-1", "corp"))), [])
        t.assertEqual(self.ids(t.successResultOf(self.store.sessions_of("user-1"))),
                      [self.default.id])

    def test_delete_by_sid_one_provider(self) -> None:
        """delete_by(sid=) of the default provider leaves a named provider's session of that sid."""
        t: Any = self
        t.assertEqual(t.successResultOf(self.store.delete_by(sid="op-1")), 1)
        t.assertEqual(self.ids(t.successResultOf(self.store.sessions_of("user-1"))), [])
        t.assertEqual(self.ids(t.successResultOf(self.store.sessions_of("user-1", "corp"))),
                      [self.corp.id])

    def test_revocations_one_provider(self) -> None:
        """A revocation of a sub or sid at one provider is not one at another."""
        t: Any = self
        store = self.store
        t.successResultOf(store.mark_revoked(sub="user-1", provider="corp"))
        t.successResultOf(store.mark_revoked(sid="op-2"))
        t.assertIsNone(t.successResultOf(store.revoked_at(sub="user-1", sid="op-1")))
        t.assertIsNone(t.successResultOf(store.revoked_at(sub="user-9", sid="op-2",
                                                          provider="corp")))
        t.assertEqual(t.successResultOf(store.revoked_at(sub="user-1", provider="corp")), START)
        t.assertEqual(t.successResultOf(store.revoked_at(sub="user-9", sid="op-2")), START)

    def test_session_id_revocation_any_provider(self) -> None:
        """A session id is revoked whatever provider it is checked with (ids are unique)."""
        t: Any = self
        t.successResultOf(self.store.mark_revoked(session_id=self.corp.id))
        t.assertEqual(t.successResultOf(self.store.revoked_at(
            sub="user-1", session_id=self.corp.id, provider="corp")), START)


class MemoryStoreScopeTests(ScopedLookupsMixin, SynchronousTestCase):
    def make_store(self) -> Any:
        return MemoryStore(self.clock)


class RedisStoreScopeTests(ScopedLookupsMixin, SynchronousTestCase):
    def make_store(self) -> Any:
        self.redis = ScriptedRedis()
        return RedisStore(self.redis, Sealer([KEY]), self.clock)

    def test_default_keys_unchanged(self) -> None:
        """The default provider's index keys are named as before; a named provider's apart."""
        self.assertIn("oidcproxy:sub:" + hashed("user-1"), self.redis.sets)
        self.assertIn("oidcproxy:sid:" + hashed("op-1"), self.redis.sets)
        self.assertIn("oidcproxy:sub@corp:" + hashed("user-1"), self.redis.sets)
        self.assertIn("oidcproxy:sid@corp:" + hashed("op-1"), self.redis.sets)
        self.successResultOf(self.store.mark_revoked(sub="user-1"))
        self.assertIn("oidcproxy:revoked:sub:" + hashed("user-1"), self.redis.values)

    def test_legacy_value_opens_as_default(self) -> None:
        """A value stored before providers had names loads as the default provider's session."""
        sid = new_session_id()
        h = hashed(sid)
        self.redis.values["oidcproxy:s:" + h] = Sealer([KEY]).seal(
            LEGACY % sid.encode("ascii"), PURPOSE_PREFIX + h.encode("ascii"))
        loaded = self.successResultOf(self.store.load(sid))
        assert loaded is not None
        self.assertEqual((loaded.id, loaded.provider), (sid, DEFAULT_PROVIDER))

    def test_default_value_same_size(self) -> None:
        """A default session's value in Redis is as long as before providers had names."""
        h = hashed(self.default.id)
        legacy = Sealer([KEY]).seal(LEGACY % self.default.id.encode("ascii"),
                                    PURPOSE_PREFIX + h.encode("ascii"))
        self.assertEqual(len(self.redis.values["oidcproxy:s:" + h]), len(legacy))


class LoginAttemptTests(SynchronousTestCase):
    """A login attempt is bound to its provider."""

    def test_legacy_attempt_is_default(self) -> None:
        """A state cookie written before providers had names is the default provider's."""
        attempt = LoginAttempt.from_bytes(b'["s","n",null,"/",1700000000.0]')
        assert attempt is not None
        self.assertEqual(attempt.provider, DEFAULT_PROVIDER)
        self.assertEqual(attempt.to_bytes(), b'["s","n",null,"/",1700000000.0]')

    def test_named_round_trip(self) -> None:
        attempt = LoginAttempt("s", "n", "v", "/", START, "corp")
        self.assertEqual(LoginAttempt.from_bytes(attempt.to_bytes()), attempt)

    def test_written_default_or_not_string_refused(self) -> None:
        """A sixth field that is empty (never written) or not a string: no attempt."""
        for data in (b'["s","n",null,"/",1.0,""]', b'["s","n",null,"/",1.0,3]',
                     b'["s","n",null,"/",1.0,"a",1]'):
            self.assertIsNone(LoginAttempt.from_bytes(data), data)


class GuardProviderTests(SynchronousTestCase):
    """The guard stamps, checks and scopes the provider of its sessions."""

    def stack(self, **kwargs: Any) -> GuardStack:
        return GuardStack(self, make_config(), **kwargs)

    def plant(self, h: GuardStack, s: Session) -> Any:
        """A browser holding the cookie of C{s}, saved in the stack's (memory) store."""
        browser = h.browser()
        browser.jar[SESSION_COOKIE] = self.successResultOf(h.guard.parts.store.save(s))
        return browser

    def test_login_stamps_its_provider(self) -> None:
        """The session of a login carries the provider of its login flow (the default here)."""
        h = self.stack()
        browser = h.logged_in()
        self.assertEqual(open_session(browser.jar[SESSION_COOKIE]).provider, DEFAULT_PROVIDER)

    def test_unknown_provider_refused(self) -> None:
        """A session of a provider the guard does not serve: no session, its cookie cleared."""
        h = self.stack(memory_store=True)
        browser = self.plant(h, session("gone"))
        self.assertEqual(browser.get("/x", headers=API).code, 401)
        self.assertNotIn(SESSION_COOKIE, browser.jar)
        self.assertEqual(len(h.app.requests), 0)

    def test_default_refused_by_named_only_guard(self) -> None:
        """The other way: a default session where the guard serves only a named provider."""
        h = self.stack(memory_store=True)
        h.guard.parts.provider_names = frozenset(["corp"])
        browser = self.plant(h, session())
        self.assertEqual(browser.get("/x", headers=API).code, 401)
        self.assertNotIn(SESSION_COOKIE, browser.jar)

    def test_unknown_provider_refused_cookie_store(self) -> None:
        """
        The same with cookie sessions, which the guard decides without
        waiting when it can: the provider check holds there too.
        """
        h = self.stack()
        browser = self.plant(h, session("gone"))
        self.assertEqual(browser.get("/x", headers=API).code, 401)
        self.assertNotIn(SESSION_COOKIE, browser.jar)
        self.assertEqual(len(h.app.requests), 0)

    def test_default_refused_by_named_only_guard_cookie_store(self) -> None:
        """The other way, with cookie sessions."""
        h = self.stack()
        h.guard.parts.provider_names = frozenset(["corp"])
        browser = self.plant(h, session())
        self.assertEqual(browser.get("/x", headers=API).code, 401)
        self.assertNotIn(SESSION_COOKIE, browser.jar)

    def test_known_provider_served(self) -> None:
        """A session of a provider the guard serves is served (on that provider's routes)."""
        h = self.stack(memory_store=True)
        self.assertEqual(self.plant(h, session()).get("/x", headers=API).code, 200)

    def test_revocation_checked_at_the_sessions_provider(self) -> None:
        """
        Cookie sessions with a revocation list: a revocation of the sub at
        another provider leaves the session; one at its own provider ends it.
        """
        h = self.stack()
        revocations = h.guard.parts.revocations = MemoryStore(h.clock)
        browser = h.logged_in()
        self.successResultOf(revocations.mark_revoked(sub="user-1", provider="corp"))
        h.clock.advance(1)
        self.assertEqual(browser.get("/x", headers=API).code, 200)
        self.successResultOf(revocations.mark_revoked(sub="user-1"))
        self.assertEqual(browser.get("/y", headers=API).code, 401)
        self.assertNotIn(SESSION_COOKIE, browser.jar)


class CallbackProviderTests(SynchronousTestCase):
    """A callback refuses the state of a login that went to another provider."""

    def test_state_of_other_provider_refused(self) -> None:
        """
        The state cookie of an attempt started by another provider's flow:
        refused as a bad state (401, the cookie cleared, no session), counted
        as state_other_provider.
        """
        h = GuardStack(self, make_config())
        other = copy.copy(h.guard.parts.login)
        assert other is not None
        other.provider = "corp"
        browser = h.browser()
        url, cookies = other.start({}, "/", "https://idp.test/authorize")
        name, value = cookies[0].split(b";")[0].decode("ascii").split("=", 1)
        browser.jar[name] = value
        state = name[len(STATE_PREFIX):]
        code = h.idp.issue_code(nonce="n", sub="user-1")
        page = browser.navigate(f"/oidc/callback?code={code}&state={state}")
        self.assertEqual(page.code, 401)
        self.assertNotIn(name, browser.jar)
        self.assertNotIn(SESSION_COOKIE, browser.jar)
        self.assertEqual(h.metrics.registry.get_sample_value(  # type: ignore[attr-defined]
            "oidcproxy_logins_failed_total", {"reason": "state_other_provider", "provider": ""}), 1.0)

    def test_state_sealed_for_provider(self) -> None:
        """A named attempt's provider is inside the sealed state cookie, not beside it."""
        h = GuardStack(self, make_config())
        other = copy.copy(h.guard.parts.login)
        assert other is not None
        other.provider = "corp"
        _, cookies = other.start({}, "/", "https://idp.test/authorize")
        value = cookies[0].split(b";")[0].split(b"=", 1)[1].decode("ascii")
        plain = Sealer([KEY]).unseal(value, STATE_PURPOSE)
        assert plain is not None
        attempt = LoginAttempt.from_bytes(plain)
        assert attempt is not None
        self.assertEqual(attempt.provider, "corp")
