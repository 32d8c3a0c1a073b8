"""
Tests for L{oidcproxy.sessions.stores.redis.pool}: the Redis connection pool
runs on the reactor it is given (connections, the reply deadline, the
reconnection backoff, Sentinel discovery), and reports what goes wrong.

No Redis here: a L{MemoryReactorClock} records the connection attempts and
a L{StringTransport} stands for a connection (tests.integration.test_redis_store
has the real server).
"""

from __future__ import annotations

from typing import Any, Dict, List

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import Logger, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from oidcproxy.sessions.stores.redis import build_redis, parse_redis_url

URL = "redis://127.0.0.1:6379"


def capture(case: SynchronousTestCase) -> List[Dict[str, Any]]:
    """What the pool's module logs from now on."""
    from oidcproxy.sessions.stores.redis import _txredis

    events: List[Dict[str, Any]] = []
    case.patch(_txredis, "log", Logger(namespace=_txredis.__name__, observer=events.append))
    return events


def texts(events: List[Dict[str, Any]]) -> List[str]:
    return [formatEvent(e) for e in events]


class Pool:
    """A pool from build_redis on a MemoryReactorClock, closed at cleanup."""

    def __init__(self, case: SynchronousTestCase, url: str = URL, **settings: Any) -> None:
        self.reactor = MemoryReactorClock()
        settings.setdefault("pool_size", 1)
        self.handler = build_redis(self.reactor, url, **settings)
        case.addCleanup(self.close)

    def close(self) -> None:
        self.handler.disconnect()
        self.reactor.advance(0)

    def connect(self, index: int = 0) -> StringTransport:
        """Let the connection attempt C{index} succeed; the transport it got."""
        factory = self.reactor.tcpClients[index][2]
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 6379))
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.reactor.advance(0)
        self.protocol = protocol
        return transport

    def refuse(self, index: int = 0) -> None:
        """Let the connection attempt C{index} fail."""
        factory = self.reactor.tcpClients[index][2]
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))


class ReactorTests(SynchronousTestCase):
    def test_connects_through_the_given_reactor(self):
        """Each pool connection is made through the given reactor, with connect_timeout."""
        pool = Pool(self, pool_size=2, connect_timeout=2.5)
        self.assertEqual([(host, port, timeout) for host, port, _, timeout, _ in pool.reactor.tcpClients],
                         [("127.0.0.1", 6379, 2.5)] * 2)

    def test_reconnects_on_the_clock(self):
        """A refused connection is tried again after a backoff on the given clock."""
        pool = Pool(self)
        pool.refuse()
        pool.reactor.advance(0.3)  # the endpoint's own attempt timer
        self.assertEqual(len(pool.reactor.tcpClients), 1)
        pool.reactor.advance(5)  # the backoff: 0.5 s, give or take its jitter
        self.assertEqual(len(pool.reactor.tcpClients), 2)

    def test_reply_deadline_on_the_clock(self):
        """A reply overdue by command_timeout (of the given clock) drops its connection."""
        events = capture(self)
        pool = Pool(self, command_timeout=1.5)
        transport = pool.connect()
        d = pool.handler.execute_command("PING")
        self.assertEqual(transport.value(), b"*1\r\n$4\r\nPING\r\n")
        pool.reactor.advance(1.4)
        self.assertFalse(transport.disconnected)
        pool.reactor.advance(0.1)
        self.assertTrue(transport.disconnected)
        self.assertEqual(texts(events),
                         ["Redis did not answer PING within 1.5 s: dropping the connection"])
        d.cancel()
        self.failureResultOf(d)

    def test_answer_in_time_keeps_the_connection(self):
        pool = Pool(self, command_timeout=1.5)
        transport = pool.connect()
        d = pool.handler.execute_command("PING")
        pool.protocol.dataReceived(b"+PONG\r\n")
        self.assertEqual(self.successResultOf(d), "PONG")
        pool.reactor.advance(10)
        self.assertFalse(transport.disconnected)

    def test_one_deadline_timer_per_connection(self):
        """Commands in flight on a connection share one reply-deadline timer, not one each."""
        pool = Pool(self, command_timeout=1.5)
        pool.connect()
        timers = len(pool.reactor.getDelayedCalls())
        sent = [pool.handler.execute_command("GET", f"k{i}") for i in range(50)]
        self.assertEqual(len(pool.reactor.getDelayedCalls()), timers + 1)
        pool.protocol.dataReceived(b"$-1\r\n" * 50)
        self.assertEqual([self.successResultOf(d) for d in sent], [None] * 50)
        self.assertEqual(len(pool.reactor.getDelayedCalls()), timers)

    def test_each_reply_keeps_its_deadline(self):
        """
        Once a reply comes, the next command's own deadline counts: its
        connection is dropped when that reply is overdue, not sooner.
        """
        events = capture(self)
        pool = Pool(self, command_timeout=1.5)
        transport = pool.connect()
        ping = pool.handler.execute_command("PING")
        pool.reactor.advance(1.0)
        get = pool.handler.execute_command("GET", "k")
        pool.reactor.advance(0.2)
        pool.protocol.dataReceived(b"+PONG\r\n")
        self.assertEqual(self.successResultOf(ping), "PONG")
        pool.reactor.advance(1.2)
        self.assertFalse(transport.disconnected)
        pool.reactor.advance(0.1)
        self.assertTrue(transport.disconnected)
        self.assertEqual(texts(events),
                         ["Redis did not answer GET within 1.5 s: dropping the connection"])
        get.cancel()
        self.failureResultOf(get)

    def test_replies_read_together(self):
        """
        Replies that arrive together are all delivered at once, without
        pausing the connection for a reactor turn per reply.
        """
        pool = Pool(self)
        transport = pool.connect()
        sent = [pool.handler.execute_command("GET", k) for k in ("a", "b", "c")]
        pool.protocol.dataReceived(b"$3\r\none\r\n$3\r\ntwo\r\n$-1\r\n")
        self.assertEqual([self.successResultOf(d) for d in sent], ["one", "two", None])
        self.assertEqual(transport.producerState, "producing")

    def test_replies_in_pieces(self):
        """
        Replies of every kind are read whatever pieces they arrive in (each
        byte apart, or any two pieces).
        """
        from txredisapi import ResponseError

        wire = (b"+OK\r\n:42\r\n$5\r\nh\xc3\xa9\r\n\r\n$-1\r\n*3\r\n$1\r\na\r\n*-1\r\n"
                b":7\r\n*0\r\n-ERR wrong\r\n$0\r\n\r\n")
        expected = ["OK", 42, "h\u00e9\r\n", None, ["a", None, 7], [], "wrong", ""]
        cuts = [[wire[i:i + 1] for i in range(len(wire))]]
        cuts += [[wire[:i], wire[i:]] for i in range(1, len(wire))]
        for pieces in cuts:
            pool = Pool(self)
            pool.connect()
            sent = [pool.handler.execute_command("X") for _ in expected]
            for piece in pieces:
                pool.protocol.dataReceived(piece)
            got = [self.successResultOf(d) for d in sent[:6]]
            self.assertEqual(got, expected[:6], pieces)
            self.assertEqual(str(self.failureResultOf(sent[6], ResponseError).value), "ERR wrong")
            self.assertEqual(self.successResultOf(sent[7]), "")

    def test_lost_connection_fails_every_command(self):
        """Every command still waiting for its reply fails when the connection is lost."""
        from txredisapi import ConnectionError

        events = capture(self)
        pool = Pool(self, command_timeout=1.5)
        transport = pool.connect()
        sent = [pool.handler.execute_command("GET", k) for k in ("a", "b")]
        transport.loseConnection()
        pool.protocol.connectionLost(Failure(ConnectionRefusedError()))
        for d in sent:
            self.failureResultOf(d, ConnectionError)
        pool.reactor.advance(2)  # their deadlines went with them
        self.assertFalse([t for t in texts(events) if "did not answer" in t])

    def test_commands_encoded_as_txredisapi_does(self):
        """Text, bytes, numbers and non-ASCII text go out as txredisapi writes them."""
        import txredisapi

        pool = Pool(self)
        transport = pool.connect()
        args = ("EVAL", "return 1", 2, "k\u00e9y", b"\x00raw", 1.5, 1200000)
        pool.handler.execute_command(*args)
        reference = txredisapi.RedisProtocol(charset="utf-8")
        self.assertEqual(transport.value(), reference._build_command(*args))
        d = pool.handler.execute_command("GET", "\udc80")
        self.failureResultOf(d, txredisapi.InvalidData)

    def test_first_connection_refused_is_logged(self):
        """
        When the first connection's AUTH is refused, the reason (which only the
        pool's "ready" Deferred carries) is logged; the pool keeps trying.
        """
        events = capture(self)
        pool = Pool(self, password="wrong")
        transport = pool.connect()
        self.assertIn(b"AUTH", transport.value())
        pool.protocol.dataReceived(b"-WRONGPASS invalid username-password pair\r\n")
        pool.reactor.advance(0)
        logged = "\n".join(texts(events))
        self.assertIn("Redis at 127.0.0.1:6379: the first connection could not be set up", logged)
        self.assertIn("WRONGPASS invalid username-password pair", logged)
        self.assertNotIn("wrong", logged.replace("WRONGPASS", ""))
        self.assertIn("could not be set up (AUTH/SELECT); retrying", logged)


class _Sentinel:
    """A Sentinel's pool as the endpoint sees it: sentinel_masters() answers what it is told."""

    def __init__(self, where: str, answer: Any) -> None:
        self._factory = type("F", (), {"uuid": where})()
        self.answer = answer
        self.asked: List[Deferred[Any]] = []

    def sentinel_masters(self) -> Deferred[Any]:
        if isinstance(self.answer, BaseException):
            return fail(self.answer)
        d: Deferred[Any] = Deferred()
        self.asked.append(d)
        if self.answer is not None:
            d.callback(self.answer)
        return d


class _Manager:
    discovery_timeout = 3.0

    def __init__(self, *sentinels: _Sentinel) -> None:
        self.sentinels = list(sentinels)

    def check_master_state(self, state: Dict[str, Any]) -> bool:
        return bool(state.get("is_master"))


class SentinelTests(SynchronousTestCase):
    def endpoint(self, *sentinels: _Sentinel) -> Any:
        from oidcproxy.sessions.stores.redis._txredis import SentinelEndpoint

        self.clock = Clock()
        factory = type("F", (), {"sentinel_manager": _Manager(*sentinels),
                                 "service_name": "main", "pool": []})()
        return SentinelEndpoint(factory, lambda host, port: None, self.clock)

    def test_discovery_deadline_on_the_clock(self):
        """Sentinels that do not answer: the discovery fails after discovery_timeout of the clock."""
        from txredisapi import MasterNotFoundError

        silent = _Sentinel("s1:26379", None)
        endpoint = self.endpoint(silent)
        d = endpoint._discover()
        self.clock.advance(2.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.failureResultOf(d, MasterNotFoundError)
        self.assertTrue(silent.asked[0].called)  # the question was cancelled
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_failed_sentinel_is_logged(self):
        """
        A Sentinel that fails to answer is named in the log (at most once
        every 10 s), while another's answer is used.
        """
        from txredisapi import ConnectionError

        events = capture(self)
        broken = _Sentinel("s1:26379", ConnectionError("Not connected"))
        good = _Sentinel("s2:26379", {"main": {"ip": "10.0.0.5", "port": "6380", "is_master": True}})
        endpoint = self.endpoint(broken, good)
        self.assertEqual(self.successResultOf(endpoint._discover()), ("10.0.0.5", 6380))
        self.assertEqual(texts(events), ["Redis Sentinel s1:26379 did not answer: Not connected"])
        self.successResultOf(endpoint._discover())
        self.assertEqual(len(events), 1)
        self.clock.advance(10)
        self.successResultOf(endpoint._discover())
        self.assertEqual(texts(events)[1],
                         "Redis Sentinel s1:26379 did not answer: Not connected "
                         "(1 more like it held back)")

    def test_unusable_answer_is_logged(self):
        """An answer that cannot be read (no address) is logged, not lost."""
        events = capture(self)
        odd = _Sentinel("s1:26379", {"main": {"is_master": True}})
        endpoint = self.endpoint(odd)
        d = endpoint._discover()
        self.assertEqual(len(events), 1)
        self.assertIn("Redis Sentinel s1:26379 did not answer: ", texts(events)[0])
        self.clock.advance(3)
        self.failureResultOf(d)


class ParseURLTests(SynchronousTestCase):
    def test_fields(self):
        url = parse_redis_url("rediss://user:p%40ss@cache.internal:6380/2")
        self.assertEqual((url.tls, url.host, url.port, url.username, url.password, url.db),
                         (True, "cache.internal", 6380, "user", "p@ss", 2))
        self.assertNotIn("p@ss", repr(url))

    def test_defaults(self):
        url = parse_redis_url("redis://127.0.0.1")
        self.assertEqual((url.tls, url.port, url.username, url.password, url.db),
                         (False, 6379, None, None, None))

    def test_refused(self):
        for url in ("http://h", "redis://", "redis://h:99999", "redis://h/zero", "redis://h/0?x=1",
                    "redis://h/0#f"):
            self.assertRaises(ValueError, parse_redis_url, url)
