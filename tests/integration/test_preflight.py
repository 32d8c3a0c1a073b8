"""
The start-up check of Redis (L{oidcproxy.preflight.check_redis}) against a
real redis-server: it passes when Redis answers, and otherwise names the
cause and the address in one line — refused, wrong or missing password, a
hung server, an untrusted or misnamed TLS certificate, a Sentinel that does
not know the master.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import TestCase

from oidcproxy.config import RedisConfig, Secret
from oidcproxy.preflight import check_redis
from tests.integration import procs
from tests.integration.redis_server import start_redis, start_sentinel
from tests.integration.test_redis_store import start_tls_redis


def redis(url: str, **settings: Any) -> RedisConfig:
    password = settings.pop("password", None)
    return RedisConfig(url=url, password=Secret(password, "test") if password else None,
                       connect_timeout=2.0, command_timeout=settings.pop("command_timeout", 2.0),
                       **settings)


class RedisPreflightTests(TestCase):
    timeout = 60

    async def test_answers(self) -> None:
        server = await start_redis(self)
        self.assertIsNone(check_redis(redis(server.url + "/0")))

    async def test_refused(self) -> None:
        port = procs.refused_port()
        self.assertEqual(check_redis(redis(f"redis://127.0.0.1:{port}")),
                         f"cannot reach Redis at 127.0.0.1:{port}: Connection refused")

    async def test_password(self) -> None:
        server = await start_redis(self, "--requirepass", "right-password")
        where = f"127.0.0.1:{server.port}"
        self.assertIsNone(check_redis(redis(server.url, password="right-password")))
        self.assertIsNone(check_redis(redis(f"redis://:right-password@{where}")))
        wrong = check_redis(redis(server.url, password="wrong-password"))
        assert wrong is not None
        self.assertTrue(wrong.startswith(f"Redis at {where} refused the credentials: WRONGPASS"),
                        wrong)
        self.assertNotIn("wrong-password", wrong)
        self.assertEqual(
            check_redis(redis(server.url)),
            f"Redis at {where} refused PING: NOAUTH Authentication required. "
            "(it needs a password: set redis.password)")

    async def test_acl_user(self) -> None:
        server = await start_redis(self)
        # An ACL user of its own, with the password given in the config.
        import socket

        with socket.create_connection(("127.0.0.1", server.port)) as s:
            s.sendall(b"ACL SETUSER proxy on >user-pass ~* +@all\r\n")
            self.assertEqual(s.recv(100), b"+OK\r\n")
        self.assertIsNone(check_redis(redis(server.url, username="proxy", password="user-pass")))
        refused = check_redis(redis(server.url, username="proxy", password="nope"))
        assert refused is not None
        self.assertIn("refused the credentials", refused)

    async def test_hung_server(self) -> None:
        """A stopped (SIGSTOP) server accepts the connection but never answers PING."""
        server = await start_redis(self)
        server.pause()
        self.addCleanup(server.resume)
        self.assertEqual(check_redis(redis(server.url, command_timeout=0.3)),
                         f"Redis at 127.0.0.1:{server.port} did not answer within 0.3 s")

    async def test_sentinel(self) -> None:
        master = await start_redis(self)
        sentinel = await start_sentinel(self, master, "main")
        found = redis("redis://ignored:1", sentinel=((sentinel.host, sentinel.port),),
                      master_name="main")
        self.assertIsNone(check_redis(found))
        unknown = redis("redis://ignored:1", sentinel=((sentinel.host, sentinel.port),),
                        master_name="other")
        self.assertEqual(check_redis(unknown),
                         f"no Redis Sentinel named the master: 127.0.0.1:{sentinel.port}: "
                         "does not know a master named 'other'")
        port = procs.refused_port()
        nobody = redis("redis://ignored:1", sentinel=(("127.0.0.1", port),), master_name="main")
        self.assertEqual(check_redis(nobody),
                         f"no Redis Sentinel named the master: 127.0.0.1:{port}: "
                         "Connection refused")


class RedisTLSPreflightTests(TestCase):
    timeout = 60

    async def setUp(self) -> None:
        self.server, self.pki = await start_tls_redis(self)

    def url(self, host: str) -> str:
        return f"rediss://{host}:{self.server.tls_port}"

    def test_trusted(self) -> None:
        self.assertIsNone(check_redis(redis(self.url("localhost"), ca_bundle=self.pki["ca"])))

    def test_unknown_ca(self) -> None:
        problem = check_redis(redis(self.url("localhost"), ca_bundle=self.pki["other_ca"]))
        assert problem is not None
        self.assertTrue(problem.startswith(
            f"cannot reach Redis at localhost:{self.server.tls_port}: its TLS certificate is "
            "not trusted ("), problem)

    def test_wrong_name(self) -> None:
        problem = check_redis(redis(self.url("127.0.0.1"), ca_bundle=self.pki["ca"]))
        assert problem is not None
        self.assertIn("its TLS certificate is not trusted (IP address mismatch", problem)
