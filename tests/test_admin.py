"""
Tests for the session admin API (L{oidcproxy.admin}).
"""

from __future__ import annotations

import json

from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from oidcproxy.admin import AdminResource, handle
from oidcproxy.config import ConfigError, parse_config
from oidcproxy.sessions.session import Session, SessionStoreUnavailable
from oidcproxy.sessions.stores.memory import MemoryStore

TOKEN = "admin-token-0123456789"
AUTH = {b"authorization": [b"Bearer " + TOKEN.encode()]}


def session(i: int, sub: str) -> Session:
    return Session(id=f"{'s' * 40}{i:03d}", sub=sub, claims={}, created=10.0 + i,
                   last_seen=20.0 + i, expires=1000.0, sid=f"sid-{i}")


class AdminTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.store = MemoryStore(self.clock)
        for i, sub in enumerate(["alice", "alice", "bob"]):
            self.store.save(session(i, sub))
        self.client = StubTreq(AdminResource(self.store, TOKEN))

    def call(self, method, url, headers=AUTH):
        response = self.successResultOf(self.client.request(method, url, headers=headers))
        body = self.successResultOf(self.client.content(response))
        return response.code, json.loads(body) if body else None

    def test_list(self):
        """GET /sessions?sub= lists the user's live sessions by handle, never by id."""
        code, body = self.call("GET", "http://admin/sessions?sub=alice")
        self.assertEqual(code, 200)
        self.assertEqual(body, {"sub": "alice", "sessions": [
            {"handle": handle(session(0, "alice")), "created": 10, "last_seen": 20,
             "expires": 1000, "sid": "sid-0"},
            {"handle": handle(session(1, "alice")), "created": 11, "last_seen": 21,
             "expires": 1000, "sid": "sid-1"},
        ]})
        self.assertNotIn(session(0, "alice").id, json.dumps(body))

    def test_delete_one(self):
        """DELETE /sessions/<handle>?sub= ends that session only."""
        target = handle(session(1, "alice"))
        self.assertEqual(self.call("DELETE", f"http://admin/sessions/{target}?sub=alice"),
                         (200, {"deleted": 1}))
        self.assertEqual([s.id for s in self.successResultOf(self.store.sessions_of("alice"))],
                         [session(0, "alice").id])
        self.assertEqual(self.call("DELETE", f"http://admin/sessions/{target}?sub=alice")[0], 404)

    def test_delete_all(self):
        """DELETE /sessions?sub= ends every session of the user, nobody else's."""
        self.assertEqual(self.call("DELETE", "http://admin/sessions?sub=alice"),
                         (200, {"deleted": 2}))
        self.assertEqual(len(self.store), 1)

    def test_authentication(self):
        """Without the right bearer token: 401, and nothing is listed or deleted."""
        for headers in [{}, {b"authorization": [b"Bearer wrong"]},
                        {b"authorization": [b"Basic " + TOKEN.encode()]}]:
            code, body = self.call("DELETE", "http://admin/sessions?sub=alice", headers)
            self.assertEqual((code, body), (401, {"error": "unauthenticated"}))
        self.assertEqual(len(self.store), 3)

    def test_bad_requests(self):
        """No sub: 400; unknown path: 404; another method: 405."""
        self.assertEqual(self.call("GET", "http://admin/sessions")[0], 400)
        self.assertEqual(self.call("GET", "http://admin/sessions?sub=a&sub=b")[0], 400)
        self.assertEqual(self.call("GET", "http://admin/other?sub=a")[0], 404)
        self.assertEqual(self.call("POST", "http://admin/sessions?sub=a")[0], 405)

    def test_store_down(self):
        """A store that cannot answer: 503."""
        self.store.sessions_of = lambda sub: defer.fail(SessionStoreUnavailable("down"))
        self.assertEqual(self.call("GET", "http://admin/sessions?sub=alice"),
                         (503, {"error": "session_store_unavailable"}))


class AdminConfigTests(SynchronousTestCase):
    BASE = {"routes": [{"path": "/", "upstream": "http://h", "auth": "none"}],
            "session": {"store": "redis"}, "redis": {"url": "redis://127.0.0.1:1/0"}}

    def test_admin_table(self):
        """[admin] takes a token (a secret) and a listener, loopback by default."""
        c = parse_config(dict(self.BASE, admin={"token": TOKEN}), "x.toml")
        self.assertEqual((c.admin.listen, c.admin.token.reveal()),
                         ("tcp:9091:interface=127.0.0.1", TOKEN))

    def test_admin_needs_redis_and_a_token(self):
        """The admin API needs the Redis store, and a token of 16+ bytes."""
        data = dict(self.BASE, admin={"token": "short"}, session={})
        e = self.assertRaises(ConfigError, parse_config, data, "x.toml")
        self.assertEqual(e.problems, [
            'admin: the session admin API needs session.store = "redis"',
            "admin.token: the token from the config file is too short: 5 bytes of UTF-8 text, "
            "at least 16 are needed; make one with: python3 -c 'import secrets; "
            "print(secrets.token_hex(32))'",
        ])
        e = self.assertRaises(ConfigError, parse_config, dict(self.BASE, admin={}), "x.toml")
        self.assertEqual(e.problems, ["admin.token: is required"])

    def test_token_measured_decoded(self):
        """16 hex digits are 8 bytes, not 16 characters: refused; 16 decoded bytes pass."""
        e = self.assertRaises(ConfigError, parse_config,
                              dict(self.BASE, admin={"token": "9f" * 8}), "x.toml")
        self.assertEqual(e.problems, [
            "admin.token: the token from the config file is too short: 8 bytes once decoded "
            "from hex, at least 16 are needed; make one with: python3 -c 'import secrets; "
            "print(secrets.token_hex(32))'"])
        c = parse_config(dict(self.BASE, admin={"token": "9f0e" * 8}), "x.toml")
        self.assertEqual(c.admin.token.reveal(), "9f0e" * 8)
