"""
Sessions in Redis, shared by every proxy process (txredisapi).

The browser holds only the session id (256 random bits). Redis holds, under
C{{prefix}s:{H(id)}} (H: URL-safe base64 of SHA-256), the session sealed with
AES-256-GCM for purpose C{b"redis-session:" + H(id)}; so read access to Redis
hands out neither cookies nor claims nor tokens, and a value copied to another
key does not open there. (Bound to H(id), the key's name, rather than to the
id: L{RedisStore.sessions_of} finds sessions through the index, which holds
only H(id), and must open them; L{RedisStore.load} also checks that the id
inside is the cookie's.) Each key lives as long as its session has left.

Two index sets per session, C{{prefix}sub:{H(sub)}} and C{{prefix}sid:{H(sid)}}
(members: H(id)), let back-channel logout and the session admin find the
sessions of a user or of an OP session; they live at least as long as their
longest session, and members whose session has gone are dropped when found.
The indexes and revocations of a named provider's sessions have the
provider in their names (C{{prefix}sub@NAME:{H(sub)}}): one provider's
back-channel logout never reaches another's sessions of the same C{sub}.
Those of the default provider keep the names they always had.

Faults never log anyone out: every operation has a deadline, and a Redis
error, a lost connection or a deadline passed fails the Deferred with
L{SessionStoreUnavailable}; C{None} from L{RedisStore.load} always means
"there is no such session".

The connection pool comes from L{oidcproxy.sessions.stores.redis.pool.build_redis}.
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets
from typing import Any, Callable, Coroutine, Dict, List, Optional, Sequence, Tuple, TypeVar

from twisted.internet.defer import CancelledError, Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from ....core.cache import BoundedCache
from ....core.encoding import b64url_encode
from ....core.metrics import NullMetrics
from ...crypto import Sealer
from ...session import DEFAULT_PROVIDER, ISessionStore, Session, SessionStoreUnavailable

T = TypeVar("T")

_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{43}\Z")
"""What L{oidcproxy.sessions.session.new_session_id} makes; anything else is refused unasked."""

PURPOSE_PREFIX = b"redis-session:"

# The cache of opened sessions: as L{oidcproxy.sessions.session.OpenedSessions}
# (the working set of the last minute, bounded in entries and characters; a
# value over a quarter of the bound is not kept).
_OPENED_ENTRIES = 2048
_OPENED_CHARS = 4_000_000
_OPENED_IDLE = 60.0

# Each script is one round trip and atomic, and needs nothing newer than
# Redis 2.6.12 (EXPIRE's NX/GT options would need 7.0). Some name keys they
# were not passed in KEYS: fine on one server (and with Sentinel), not on a
# Redis Cluster, which txredisapi does not speak anyway.

_SAVE = """
local ttl = tonumber(ARGV[2])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
for i = 2, #KEYS do
  redis.call('SADD', KEYS[i], ARGV[3])
  if redis.call('PTTL', KEYS[i]) < ttl then
    redis.call('PEXPIRE', KEYS[i], ttl)
  end
end
return 1
"""
"""KEYS: session key, index sets. ARGV: sealed value, TTL in ms, H(id)."""

_DELETE = """
redis.call('DEL', KEYS[1])
for i = 2, #KEYS do
  redis.call('SREM', KEYS[i], ARGV[1])
end
return 1
"""
"""KEYS: session key, index sets. ARGV: H(id)."""

_DELETE_BY = """
local members = redis.call('SUNION', unpack(KEYS))
local n = 0
for _, member in ipairs(members) do
  n = n + redis.call('DEL', ARGV[1] .. member)
end
redis.call('DEL', unpack(KEYS))
return n
"""
"""KEYS: index sets. ARGV: the session key prefix. The number of sessions deleted."""

_DROP_DANGLING = """
local n = 0
for i = 2, #ARGV do
  if redis.call('EXISTS', ARGV[1] .. ARGV[i]) == 0 then
    n = n + redis.call('SREM', KEYS[1], ARGV[i])
  end
end
return n
"""
"""KEYS: an index set. ARGV: the session key prefix, members to drop if their session is gone."""

_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
"""KEYS: the lock. ARGV: the token. 1 when released, 0 when not ours (any more)."""


def hashed(text: str) -> str:
    """URL-safe base64 (unpadded) of the SHA-256 of C{text}: how Redis names ids, subs and sids."""
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
    return b64url_encode(digest)


def scoped(kind: str, provider: str) -> str:
    """
    The part of a key's name that says what it indexes: C{kind} (C{sub},
    C{sid}) for the default provider, as before providers had names;
    C{kind@NAME} for the provider C{NAME} (whose names have no C{:}).
    """
    return kind if provider == DEFAULT_PROVIDER else f"{kind}@{provider}"


def positive_seconds(name: str, value: float) -> float:
    """
    C{value} as a float.

    @raise ValueError: naming C{name}, for anything but a positive finite number.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
    return float(value)


@implementer(ISessionStore)
class RedisStore:
    """
    @param redis: a txredisapi connection or pool (L{build_redis} makes one
        with the timeouts and reconnection this store relies on); only its
        C{execute_command} is used.
    @param sealer: seals and opens the values.
    @param clock: the time source for lifetimes and for the deadlines.
    @param key_prefix: put in front of every key (several proxies may share
        one Redis database with different prefixes).
    @param command_timeout: seconds each operation may take, waiting for a
        connection included.
    @param metrics: counts errors and times commands (an
        L{oidcproxy.core.metrics.Metrics}; default: nothing is counted).
    """

    def __init__(
        self,
        redis: Any,
        sealer: Sealer,
        clock: IReactorTime,
        *,
        key_prefix: str = "oidcproxy:",
        command_timeout: float = 2.0,
        metrics: Optional[NullMetrics] = None,
    ) -> None:
        self._redis = redis
        self._sealer = sealer
        self._clock = clock
        self._prefix = key_prefix
        self._timeout = positive_seconds("command_timeout", command_timeout)
        self._metrics = metrics if metrics is not None else NullMetrics()
        self._opened: BoundedCache[str, Tuple[str, Session]] = BoundedCache(
            clock, _OPENED_ENTRIES, idle=_OPENED_IDLE, max_weight=_OPENED_CHARS)
        """The sessions recently opened: H(id) to (the sealed value, the session)."""
        self._in_flight: Dict[Deferred[Any], List[Any]] = {}
        """Each operation in flight: [its deadline, what it is, whether it timed out]."""
        self._sweep: Optional[IDelayedCall] = None
        self._sweep_at = 0.0

    # keys

    def _session_key(self, hashed_id: str) -> str:
        return f"{self._prefix}s:{hashed_id}"

    def _sub_key(self, sub: str, provider: str) -> str:
        return f"{self._prefix}{scoped('sub', provider)}:{hashed(sub)}"

    def _sid_key(self, sid: str, provider: str) -> str:
        return f"{self._prefix}{scoped('sid', provider)}:{hashed(sid)}"

    def _lock_key(self, name: str) -> str:
        # Hashed: a lock name may well contain a session id.
        return f"{self._prefix}lock:{hashed(name)}"

    def _index_keys(self, session: Session) -> List[str]:
        keys = [self._sub_key(session.sub, session.provider)]
        if session.sid:
            keys.append(self._sid_key(session.sid, session.provider))
        return keys

    # plumbing

    def _run(self, what: str, operation: Callable[[], Coroutine[Any, Any, T]]) -> Deferred[T]:
        """L{_deadline} on the coroutine C{operation}."""
        return self._deadline(what, Deferred.fromCoroutine(operation()))

    def _deadline(self, what: str, d: Deferred[T]) -> Deferred[T]:
        """
        Give C{d} the deadline: once C{command_timeout} has passed, it is
        cancelled and fails with L{SessionStoreUnavailable}. A caller's
        cancel stays a L{CancelledError}.

        One timer serves every operation in flight (at the oldest deadline:
        they all have the same timeout), instead of a timer per operation.
        """
        if d.called:
            return d
        deadline = self._clock.seconds() + self._timeout
        entry = [deadline, what, False]
        self._in_flight[d] = entry
        if self._sweep is None:
            self._sweep_at = deadline
            self._sweep = self._clock.callLater(self._timeout, self._expire)
        return d.addBoth(self._settled, d, entry)

    def _settled(self, result: Any, d: Deferred[Any], entry: List[Any]) -> Any:
        in_flight = self._in_flight
        in_flight.pop(d, None)
        if not in_flight and self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        if entry[2] and isinstance(result, Failure) and result.check(CancelledError):
            self._metrics.redis_error("timeout")
            raise SessionStoreUnavailable(
                f"Redis did not complete {entry[1]} within {self._timeout:g} s"
            ) from result.value
        return result

    def _expire(self) -> None:
        """Cancel the operations past their deadline; the timer moves to the next deadline."""
        self._sweep = None
        # At least the time the timer was set for (the clock's float sums may fall short).
        now = max(self._clock.seconds(), self._sweep_at)
        in_flight = self._in_flight
        expired = []
        while in_flight:
            d, entry = next(iter(in_flight.items()))
            if entry[0] > now:
                self._sweep_at = entry[0]
                self._sweep = self._clock.callLater(max(0.0, entry[0] - self._clock.seconds()),
                                                    self._expire)
                break
            del in_flight[d]
            entry[2] = True
            expired.append(d)
        # Cancelled once the timer is set again: their callbacks may start
        # new operations, which then find it set.
        for d in expired:
            d.cancel()

    def _send(self, *args: Any) -> Deferred[Any]:
        """
        One command: its reply, or L{SessionStoreUnavailable} for any
        failure but a cancel (counted and timed in the metrics).
        """
        started = self._clock.seconds()
        d: Deferred[Any] = maybeDeferred(self._redis.execute_command, *args)
        return d.addCallbacks(self._replied, self._failed, callbackArgs=(args[0], started),
                              errbackArgs=(args[0], started))

    def _replied(self, reply: Any, command: str, started: float) -> Any:
        self._metrics.redis_command(command, self._clock.seconds() - started)
        return reply

    def _failed(self, failure: Failure, command: str, started: float) -> Any:
        if failure.check(CancelledError):
            return failure
        # txredisapi's errors, connection errors, WRONGTYPE, ...
        self._metrics.redis_command(command, self._clock.seconds() - started)
        self._metrics.redis_error("error")
        raise SessionStoreUnavailable(f"Redis {command} failed: {failure.value}") from failure.value

    async def _command(self, *args: Any) -> Any:
        return await self._send(*args)

    async def _eval(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return await self._command("EVAL", script, len(keys), *keys, *args)

    def _open(self, hashed_id: str, value: Any) -> Optional[Session]:
        if not isinstance(value, str):
            return None
        # The value is still read from Redis every time (a logout or an admin
        # deletion takes effect at once); only its opening is saved, under
        # H(id) with the value it was opened from. (Keyed by the value itself,
        # as the cookie store's is, each lookup hashed and compared kilobytes
        # several times: a third of a load's cost on PyPy.)
        opened = self._opened.get(hashed_id)
        if opened is not None and opened[0] == value:
            return opened[1]
        plaintext = self._sealer.unseal(value, PURPOSE_PREFIX + hashed_id.encode("ascii"))
        if plaintext is None:
            return None
        session = Session.from_bytes(plaintext)
        size = len(hashed_id) + len(value)
        if session is not None and size <= _OPENED_CHARS // 4:
            self._opened.put(hashed_id, (value, session), weight=size)
        return session

    def close(self) -> Deferred[None]:
        """
        Close the connections to Redis (at shutdown); fires once they are
        closed. The store is not used afterwards.
        """
        disconnect = getattr(self._redis, "disconnect", None)
        if disconnect is None:
            return succeed(None)
        return maybeDeferred(disconnect).addCallback(lambda _: None)

    def ping(self) -> Deferred[None]:
        """
        Ask Redis for a C{PING} (readiness): fires once it answers, fails with
        L{SessionStoreUnavailable} when it does not within C{command_timeout}.
        """

        async def ping() -> None:
            reply = await self._command("PING")
            if reply != "PONG":
                raise SessionStoreUnavailable(f"Redis answered PING with {reply!r}")

        return self._run("a ping", ping)

    # ISessionStore

    def load(self, cookie_value: str) -> Deferred[Optional[Session]]:
        """
        The session whose id is C{cookie_value}. C{None} (without asking
        Redis) for a value that is not a session id; C{None} for an unknown
        id, a value that does not open, or one holding another session.
        """
        if not isinstance(cookie_value, str) or not _SESSION_ID.match(cookie_value):
            return succeed(None)
        # The request path: no coroutine, one Deferred and the callbacks on it.
        hashed_id = hashed(cookie_value)
        d = self._send("GET", self._session_key(hashed_id))
        d.addCallback(self._loaded, hashed_id, cookie_value)
        return self._deadline("a load", d)

    def _loaded(self, value: Any, hashed_id: str, cookie_value: str) -> Optional[Session]:
        session = self._open(hashed_id, value)
        if session is None or session.id != cookie_value:
            return None
        return session

    def save(self, session: Session) -> Deferred[str]:
        """
        Store C{session} until its C{expires} (at least 1 s) and index it;
        fires with its id, the cookie value. A session already expired is not
        written (its id is still the answer).
        """
        if not _SESSION_ID.match(session.id):
            return fail(ValueError("a Redis session's id must come from new_session_id()"))
        try:
            plaintext = session.to_bytes()
        except (TypeError, ValueError):
            return fail()
        remaining = session.expires - self._clock.seconds()
        if remaining <= 0:
            return succeed(session.id)
        ttl_ms = max(1000, math.ceil(remaining * 1000))
        hashed_id = hashed(session.id)
        value = self._sealer.seal(plaintext, PURPOSE_PREFIX + hashed_id.encode("ascii"))
        keys = [self._session_key(hashed_id), *self._index_keys(session)]

        async def save() -> str:
            await self._eval(_SAVE, keys, [value, ttl_ms, hashed_id])
            return session.id

        return self._run("a save", save)

    def delete(self, session: Session) -> Deferred[None]:
        """Remove C{session} and its entries in the indexes."""
        hashed_id = hashed(session.id)
        keys = [self._session_key(hashed_id), *self._index_keys(session)]

        async def delete() -> None:
            await self._eval(_DELETE, keys, [hashed_id])

        return self._run("a delete", delete)

    # the indexes

    def delete_by(self, *, sub: Optional[str] = None, sid: Optional[str] = None,
                  provider: str = DEFAULT_PROVIDER) -> Deferred[int]:
        """
        End every session of the subject C{sub} and every session of the OP
        session C{sid} (both when both are given) at C{provider}, at once.

        @return: a Deferred firing with the number of sessions deleted.
        """
        keys = []
        if sub is not None:
            keys.append(self._sub_key(sub, provider))
        if sid is not None:
            keys.append(self._sid_key(sid, provider))
        if not keys:
            return fail(ValueError("delete_by needs sub or sid"))

        async def delete_by() -> int:
            return int(await self._eval(_DELETE_BY, keys, [self._session_key("")]))

        return self._run("a delete_by", delete_by)

    def sessions_of(self, sub: str, provider: str = DEFAULT_PROVIDER) -> Deferred[List[Session]]:
        """
        The live sessions of the subject C{sub} at C{provider}, oldest
        first. Index members whose session has gone are dropped from the index.
        """
        index = self._sub_key(sub, provider)

        async def sessions_of() -> List[Session]:
            members = await self._command("SMEMBERS", index)
            members = [m for m in members or [] if isinstance(m, str) and _SESSION_ID.match(m)]
            if not members:
                return []
            values = await self._command("MGET", *[self._session_key(m) for m in members])
            now = self._clock.seconds()
            found, gone = [], []
            for member, value in zip(members, values):
                if value is None:
                    gone.append(member)
                    continue
                session = self._open(member, value)
                if session is not None and hashed(session.id) == member and \
                        session.sub == sub and session.provider == provider and \
                        now < session.expires:
                    found.append(session)
            if gone:
                await self._eval(_DROP_DANGLING, [index], [self._session_key(""), *gone])
            found.sort(key=lambda s: (s.created, s.id))
            return found

        return self._run("sessions_of", sessions_of)

    # locks across processes

    def lock(self, name: str, lease: float) -> Deferred[Optional[str]]:
        """
        Take the lock C{name} for at most C{lease} seconds.

        @return: a Deferred firing with a token for L{unlock} when taken, with
            C{None} while someone else holds it.
        """
        try:
            lease_ms = max(1, math.ceil(positive_seconds("lease", lease) * 1000))
        except ValueError:
            return fail()
        key = self._lock_key(name)
        token = secrets.token_urlsafe(16)

        async def lock() -> Optional[str]:
            reply = await self._command("SET", key, token, "NX", "PX", lease_ms)
            return token if reply == "OK" else None

        return self._run("a lock", lock)

    def unlock(self, name: str, token: str) -> Deferred[bool]:
        """
        Release the lock C{name} if C{token} still holds it (a lease that ran
        out may have let someone else take it).

        @return: a Deferred firing with whether it was released.
        """
        key = self._lock_key(name)

        async def unlock() -> bool:
            return int(await self._eval(_UNLOCK, [key], [token])) == 1

        return self._run("an unlock", unlock)


    # a revocation list, for stateless cookie sessions

    def _revoked_keys(self, sub: Optional[str], sid: Optional[str], session_id: Optional[str],
                      provider: str) -> List[str]:
        """The revocation keys of C{sub} and C{sid} at C{provider}, and of the session C{session_id}."""
        prefix = self._prefix + "revoked:"
        return ([f"{prefix}{scoped('sub', provider)}:{hashed(sub)}"] if sub else []) + \
            ([f"{prefix}{scoped('sid', provider)}:{hashed(sid)}"] if sid else []) + \
            ([f"{prefix}session:{hashed(session_id)}"] if session_id else [])

    def mark_revoked(self, *, sub: Optional[str] = None, sid: Optional[str] = None,
                     session_id: Optional[str] = None, ttl: float = 86400.0,
                     provider: str = DEFAULT_PROVIDER) -> Deferred[None]:
        """
        Remember for C{ttl} seconds that every session of C{sub} or of the
        OP session C{sid} at C{provider}, or the session C{session_id}
        itself (ids are unique across providers), created up to now has
        ended: the cookie store cannot delete a session, so the guard checks
        this list instead. (Names are hashed in Redis: a session id is a
        credential.)
        """
        now = self._clock.seconds()
        seconds = max(1, math.ceil(ttl))
        keys = self._revoked_keys(sub, sid, session_id, provider)

        async def mark() -> None:
            for key in keys:
                await self._command("SET", key, repr(now), "EX", seconds)

        return self._run("a revocation", mark)

    def revoked_at(self, *, sub: str, sid: Optional[str] = None,
                   session_id: Optional[str] = None,
                   provider: str = DEFAULT_PROVIDER) -> Deferred[Optional[float]]:
        """
        The latest time sessions of C{sub} or of C{sid} at C{provider}, or
        the session C{session_id}, were revoked, or None (one round trip).
        """
        keys = self._revoked_keys(sub, sid, session_id, provider)

        async def check() -> Optional[float]:
            values = await self._command("MGET", *keys)
            times = []
            for value in values or []:
                try:
                    times.append(float(value))
                except (TypeError, ValueError):
                    continue
            return max(times) if times else None

        return self._run("a revocation check", check)
