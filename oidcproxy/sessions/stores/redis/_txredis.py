"""
txredisapi's pool with the changes L{RedisStore} needs.

Importing this module imports txredisapi, which installs the global reactor:
only L{oidcproxy.sessions.stores.redis.pool.build_redis} imports it, when it
is called. Nothing here uses that global reactor: every timer, the
reconnection backoff included, runs on the factory's C{clock}, the reactor
C{build_redis} was given (L{prepare} sets it).

  - A reply overdue by C{command_timeout} aborts its connection (which is
    then replaced). txredisapi's own C{replyTimeout} is defused when the
    caller cancels the command (as L{RedisStore}'s deadline does), so a dead
    connection would stay in the pool. One timer per connection keeps these
    deadlines, and a command costs one Deferred (txredisapi's: three, and a
    timer).
  - The replies that arrive together are all read at once, not one per
    reactor turn.
  - A command goes straight to a free connection, without txredisapi's
    wait for one (a generator and two Deferreds per command), when one is
    free.
  - Failing AUTH or SELECT on a new connection (also a mere timeout, or the
    server restarting meanwhile) does not stop the pool for good: it keeps
    reconnecting with backoff, so it recovers once Redis does.
  - A caller that stops waiting for a free connection (a deadline passed
    while Redis is down) is forgotten at once instead of piling up until
    Redis is back.
  - With Sentinel, the master is asked for before every connection attempt
    (over TLS too), and its role checked before the pool uses it.
"""

from __future__ import annotations

import collections
from typing import Any, Callable, List, Optional, Tuple

import txredisapi
from twisted.application.internet import ClientService
from twisted.internet.defer import CancelledError, Deferred, gatherResults, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ....core.admission import LogThrottle

log = Logger()


class Protocol(txredisapi.RedisProtocol):
    """
    A Redis connection that drops itself when a reply is overdue, and
    answers its commands with one Deferred each.

    txredisapi's own C{execute_command} makes three Deferreds and (with a
    reply deadline) a timer per command; this one keeps the commands in
    flight, in the order their replies come, with their deadlines, and one
    timer per connection at the oldest deadline: a busy connection moves
    that timer once per C{command_timeout}, not once per command.
    """

    line_mode: int
    bulk_length: int

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._waiting: Any = collections.deque()
        """(Deferred, command, deadline or None) of each command written, oldest first."""
        self._overdue: Any = None
        self._overdue_at = 0.0
        self._buffer = bytearray()

    def callLater(self, *args: Any, **kwargs: Any) -> Any:
        # txredisapi's protocol schedules on the global reactor (a class
        # attribute): this one on the factory's clock.
        return self.factory.clock.callLater(*args, **kwargs)

    def dataReceived(self, data: bytes, unpause: bool = False) -> None:
        # txredisapi's reading copies what is left of the packet at each
        # line and each value, and after each value pauses the connection
        # and leaves the rest to a timer, one reply per reactor turn. Here
        # the packet is read once, by offsets, every reply in it at once;
        # txredisapi's lineReceived and bulkDataReceived still read each
        # reply (its multi-bulk, MULTI and number handling included).
        buffer = self._buffer
        buffer += data
        pos, end = 0, len(buffer)
        while pos < end:
            if self.line_mode:
                eol = buffer.find(b"\r\n", pos)
                if eol < 0:
                    if end - pos > self.MAX_LENGTH:
                        del buffer[:]
                        self.transport.loseConnection()
                        return
                    break
                line = buffer[pos:eol].decode()
                pos = eol + 2
                self.lineReceived(line)  # a "$n" line leaves line mode for n bytes and CRLF
            else:
                size = self.bulk_length
                if end - pos < size:
                    break
                value = bytes(buffer[pos:pos + size - 2])
                pos += size
                self.bulk_length = 0
                self.line_mode = 1
                self.bulkDataReceived(value)
        del buffer[:pos]

    def _build_command(self, *args: Any, **kwargs: Any) -> bytes:
        # txredisapi's, but one join and no per-argument checks for the
        # usual arguments (text and bytes); anything else takes its way.
        parts = [b"*%d\r\n" % len(args)]
        for arg in args:
            if isinstance(arg, str) and self.charset is not None:
                try:
                    data = arg.encode(self.charset, self.errors)
                except UnicodeEncodeError:
                    return bytes(super()._build_command(*args, **kwargs))
            elif isinstance(arg, bytes):
                data = arg
            else:
                return bytes(super()._build_command(*args, **kwargs))
            parts += (b"$%d\r\n" % len(data), data, b"\r\n")
        return b"".join(parts)

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        # As txredisapi's (pipelines, MULTI and post_proc included), but for
        # the replies and deadlines kept here; its replyTimeout is not used
        # (build_redis leaves it out).
        if self.connected == 0:
            raise txredisapi.ConnectionError("Not connected")
        command = self._build_command(*args)
        if self.pipelining:
            self.pipelined_commands.append(command)
        else:
            self.transport.write(command)
        result: Deferred[Any] = Deferred()
        timeout = getattr(self.factory, "command_timeout", None)
        deadline = None
        if timeout and kwargs.get("apply_timeout", True):
            deadline = self.factory.clock.seconds() + timeout
            if self._overdue is None:
                self._arm(deadline)
        self._waiting.append((result, args[0], deadline))
        if self.pipelining:
            self.pipelined_replies.append(result)
        post_proc = kwargs.get("post_proc")
        if self.inMulti:
            self.post_proc.append(post_proc)
        elif callable(post_proc):
            result.addCallback(post_proc)
        return result

    def replyReceived(self, reply: Any) -> None:
        if not self._waiting:  # nothing asked for it (txredisapi's subscribers)
            super().replyReceived(reply)
            return
        result = self._waiting.popleft()[0]
        if not self._waiting and self._overdue is not None:
            self._overdue.cancel()
            self._overdue = None
        if result.called:  # cancelled by its caller
            return
        if isinstance(reply, Exception):
            result.errback(reply)
        else:
            result.callback(reply)

    def _arm(self, deadline: float) -> None:
        self._overdue_at = deadline
        self._overdue = self.callLater(max(0.0, deadline - self.factory.clock.seconds()),
                                       self._check_overdue)

    def _check_overdue(self) -> None:
        """The oldest deadline has come: drop the connection if its reply is still due."""
        self._overdue = None
        # At least the time this timer was set for (the clock's float sums may fall short).
        now = max(self.factory.clock.seconds(), self._overdue_at)
        for _, command, deadline in self._waiting:
            if deadline is None:
                continue
            if deadline > now:
                self._arm(deadline)
                return
            self._reply_overdue(command, self.factory.command_timeout)
            return

    def _reply_overdue(self, command: Any, timeout: float) -> None:
        log.warn(
            "Redis did not answer {command} within {timeout} s: dropping the connection",
            command=command if isinstance(command, str) else repr(command), timeout=timeout,
        )
        self.transport.abortConnection()

    def connectionLost(self, reason: Any) -> None:
        waiting, self._waiting = self._waiting, collections.deque()
        if self._overdue is not None:
            self._overdue.cancel()
            self._overdue = None
        super().connectionLost(reason)
        for result, _, _ in waiting:
            if not result.called:
                result.errback(txredisapi.ConnectionError("Lost connection"))


class SentinelProtocol(Protocol):
    """
    Checks that the server Sentinel named is (still) the master before the
    pool uses the connection. txredisapi's SentinelRedisProtocol does the
    same but sends AUTH without waiting for its reply, whose failure then
    goes unhandled.
    """

    def connectionMade(self) -> Any:
        async def check() -> None:
            try:
                if self.password is not None:
                    await self.auth(self.password, self.username)
                role = await self.role()
            except txredisapi.RedisError as e:  # a refused password, a lost connection, ...
                log.warn("Redis (named by Sentinel): cannot check the role: {error}", error=e)
                self.transport.loseConnection()
                return
            if not role or role[0] != "master":
                log.warn("Redis (named by Sentinel) is not the master (any more); reconnecting")
                self.transport.loseConnection()
                return
            await Protocol.connectionMade(self)

        return Deferred.fromCoroutine(check())


class Queue(txredisapi.PeekableQueue):
    """The pool's free connections; a waiter that is cancelled leaves the line at once."""

    def peek(self) -> Any:
        if self.pending:
            return super().peek()
        d: Deferred[Any] = Deferred(self._forget)
        self.peekers.append(d)
        return d

    def _forget(self, d: Any) -> None:
        if d in self.peekers:
            self.peekers.remove(d)


def _not_connected(failure: Failure, where: str) -> None:
    """
    A lazy pool's "ready" Deferred has no other listener: its failure (the
    first connection refused AUTH or SELECT) is logged here; the pool keeps
    reconnecting.
    """
    log.warn("Redis at {where}: the first connection could not be set up: {error}",
             where=where, error=failure.getErrorMessage())


def prepare(factory: Any, clock: IReactorTime, command_timeout: float,
            extra_on_disconnect: Optional[Callable[[], Any]] = None) -> None:
    """Give a new factory its clock, its reply deadline and its queue, before it connects."""
    factory.clock = clock
    factory.command_timeout = command_timeout
    factory.extra_on_disconnect = extra_on_disconnect
    factory.connectionQueue = Queue()
    factory.deferred.addErrback(_not_connected, factory.uuid or "the master named by Sentinel")


class _Slot(txredisapi._PoolSlot):
    """One connection of the pool, (re)connected and backed off on the factory's clock."""

    def __init__(self, factory: Any, endpoint: Any, reconnect: bool = True) -> None:
        # txredisapi's own __init__, but for the service's clock (it would
        # make one on the global reactor).
        self.factory = factory
        self.reconnect = reconnect
        self.protocol = None
        self.rejected = 0
        self.service = ClientService(
            endpoint, txredisapi._SlotFactory(factory, self), retryPolicy=self._retryDelay,
            clock=factory.clock, prepareConnection=self._prepareConnection)

    def stopTrying(self) -> Any:
        self.reconnect = False
        if self.protocol is not None:
            return succeed(None)
        # As txredisapi: let a connection being made finish first.
        return deferLater(self.factory.clock, 0, self._stopIfIdle)

    def _connectionFailed(self, failure: Failure) -> None:
        if failure.check(CancelledError):
            return None
        # As txredisapi: not from within ClientService's state transition.
        self.factory.clock.callLater(0, self._reportConnectionFailure, failure)
        return None


class _OnClock:
    """What both pool factories change: slots on the clock, and no giving up."""

    maxDelay = 5.0
    clock: IReactorTime

    def startConnecting(self, endpoint: Any) -> None:
        for _ in range(self.poolsize):  # type: ignore[attr-defined]
            slot = _Slot(self, endpoint, self.reconnect)  # type: ignore[attr-defined]
            self.slots.append(slot)  # type: ignore[attr-defined]
            slot.start()

    def _connectionReady(self, conn: Any) -> None:
        # As txredisapi: hand the connection over once the reactor turn is done.
        self.clock.callLater(0, self.addConnection, conn)  # type: ignore[attr-defined]

    def stopTrying(self) -> Any:
        # txredisapi calls this when AUTH or SELECT fails on a new connection,
        # which it closes; the slot reconnects later (with backoff) instead
        # of giving up for good.
        log.warn("Redis: the new connection could not be set up (AUTH/SELECT); retrying")
        return succeed(None)


class Factory(_OnClock, txredisapi.RedisFactory):
    protocol = Protocol
    initialDelay = 0.5


class SentinelFactory(_OnClock, txredisapi.SentinelConnectionFactory):
    protocol = SentinelProtocol


class Handler(txredisapi.ConnectionHandler):
    """
    The pool as its users see it; C{disconnect} closes the Sentinels' pools
    too.

    A command goes straight to a free connection when there is one (the
    first: several commands written in one reactor turn then leave in one
    packet); only without one does it take txredisapi's way, which waits
    for a connection (and drops dead ones).
    """

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        free = self._factory.connectionQueue.pending
        if free and free[0].connected:
            return maybeDeferred(free[0].execute_command, *args, **kwargs)
        return self.__getattr__("execute_command")(*args, **kwargs)

    def disconnect(self) -> Any:
        extra = self._factory.extra_on_disconnect
        done = [self._factory.disconnect()]
        if extra is not None:
            done.append(extra())
        return gatherResults(done, consumeErrors=True)


@implementer(IStreamClientEndpoint)
class SentinelEndpoint:
    """
    Asks the Sentinels for the master before every connection attempt, and
    drops the pool's connections when it has moved. txredisapi's own
    endpoint does the same but cannot do TLS, uses its maximal retry delay
    as the connect timeout, and leaves its discovery timer behind when the
    attempt is cancelled.

    @param endpoint: makes the endpoint of an address (TLS or not).
    """

    def __init__(self, factory: Any, endpoint: Callable[[str, int], Any], clock: IReactorTime) -> None:
        self._factory = factory
        self._endpoint = endpoint
        self._clock = clock
        self._master: Optional[Tuple[str, int]] = None
        self._throttle = LogThrottle(clock, interval=10.0)

    def _unanswered(self, failure: Failure, sentinel: Any) -> None:
        """
        One Sentinel did not answer, or its answer was unusable (the others
        may do better): say so, at most every 10 s for each Sentinel.
        """
        if failure.check(CancelledError):  # the discovery was over before it answered
            return
        where = getattr(getattr(sentinel, "_factory", None), "uuid", None) or "?"
        held = self._throttle.allow(where)
        if held is None:
            return
        log.warn("Redis Sentinel {where} did not answer: {error}{held}", where=where,
                 error=failure.getErrorMessage(),
                 held=f" ({held} more like it held back)" if held else "")

    def _discover(self) -> Deferred[Tuple[str, int]]:
        """
        The master's address, from the first Sentinel that names a healthy
        one; the others' questions are then withdrawn. Fails with
        L{txredisapi.MasterNotFoundError} when none did within the
        manager's C{discovery_timeout} (of the clock).
        """
        manager = self._factory.sentinel_manager
        name = self._factory.service_name
        asked: List[Deferred[Any]] = []

        def withdraw(_: Any = None) -> None:
            for d in asked:
                d.cancel()

        result: Deferred[Tuple[str, int]] = Deferred(withdraw)

        def answered(masters: Any) -> None:
            state = masters.get(name) if isinstance(masters, dict) else None
            if result.called or not state or not manager.check_master_state(state):
                return
            # Read before anything is withdrawn: an answer without a usable
            # address fails here (logged by _unanswered), and the others,
            # or the deadline, still decide.
            address = (state["ip"], int(state["port"]))
            withdraw()
            result.callback(address)

        def no_master(outcome: Any, timeout: float) -> Any:
            if not isinstance(outcome, Failure):
                return outcome
            raise txredisapi.MasterNotFoundError(
                f"no Sentinel named a healthy master {name!r} in time")

        result.addTimeout(manager.discovery_timeout, self._clock, onTimeoutCancel=no_master)
        for sentinel in manager.sentinels:
            if result.called:
                break
            asked.append(sentinel.sentinel_masters().addCallback(answered)
                         .addErrback(self._unanswered, sentinel))
        return result

    def connect(self, protocolFactory: Any) -> Any:
        def found(address: Tuple[str, int]) -> Any:
            if self._master is not None and self._master != address:
                log.info("Redis master moved to {host}:{port}", host=address[0], port=address[1])
                for conn in list(self._factory.pool):
                    conn.transport.loseConnection()
            self._master = address
            return self._endpoint(address[0], address[1]).connect(protocolFactory)

        def failed(failure: Any) -> Any:
            if not failure.check(CancelledError):
                log.warn("Redis Sentinel: {error}", error=failure.getErrorMessage())
            return failure

        return self._discover().addCallbacks(found, failed)
