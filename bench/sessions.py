"""
Sessions for the benchmark, made by the proxy's own code: run by C{bench/run}
with a proxy's configuration file and the C{Cookie} header a real login gave
that proxy (see bench/README.rst).

    python bench/sessions.py populate --config redis.toml --cookie HEADER --count N
    python bench/sessions.py sizes --config cookie.toml --cookie HEADER

C{populate} opens the login's session with the proxy's L{RedisStore} (the
proxy's session secrets, Redis URL and key prefix, read from its file by
L{load_config}) and saves C{N} more sessions of the same shape through
L{RedisStore.save}, each with a new id, subject and C{sid}: the same value
sizes, keys and index sets as N logins of N users. Many saves are in flight
at once (txredisapi pipelines them on a few connections).

C{sizes} opens the login's cookie-store session with the proxy's
L{CookieStore} and seals it again with C{store_tokens = false}: the size of
the session cookie without the OP's tokens.

Each prints one line, C{RESULT <json>}. Run with the working tree on
C{PYTHONPATH} (C{bench/run} does).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from http.cookies import SimpleCookie
from typing import Any, Dict, List, Optional, Sequence

import attr


def cookie_values(header: str) -> Dict[str, str]:
    """The name=value pairs of a C{Cookie} header."""
    jar: SimpleCookie = SimpleCookie()
    jar.load(header)
    return {name: morsel.value for name, morsel in jar.items()}


def session_value(config: Any, header: str) -> str:
    """The session cookie's value (its chunks joined, as the proxy reads them)."""
    from oidcproxy.sessions.cookies import CookieSpec

    spec = CookieSpec(name=config.session.cookie_name, secure=False)
    cookies = cookie_values(header)
    parts: List[str] = []
    name = spec.wire_name
    index = 0
    while name in cookies:
        parts.append(cookies[name])
        index += 1
        name = f"{spec.wire_name}_{index}"
    if not parts:
        raise SystemExit(f"sessions.py: no {spec.wire_name} cookie in the Cookie header")
    return "".join(parts)


def sealer_of(config: Any) -> Any:
    from oidcproxy.sessions.crypto import Sealer

    return Sealer([secret.reveal().encode("utf-8") for secret in config.session.secrets])


def result(values: Dict[str, Any]) -> None:
    sys.stdout.write("RESULT " + json.dumps(values) + "\n")
    sys.stdout.flush()


def sizes(config: Any, header: str) -> Dict[str, Any]:
    from twisted.internet.defer import Deferred
    from twisted.internet.task import Clock
    from twisted.python.failure import Failure

    from oidcproxy.sessions.cookies import CHUNK_SIZE
    from oidcproxy.sessions.stores.cookie import CookieStore

    value = session_value(config, header)
    sealer = sealer_of(config)

    def now(d: Deferred) -> Any:
        # Both stores answer at once (succeed / maybeDeferred): no reactor needed.
        found: List[Any] = []
        d.addBoth(found.append)
        if not found or found[0] is None or isinstance(found[0], Failure):
            raise SystemExit(f"sessions.py: the cookie store did not open the session: {found!r}")
        return found[0]

    session = now(CookieStore(sealer, Clock()).load(value))
    lean = now(CookieStore(sealer, Clock(), store_tokens=False).save(session))
    return {
        "with_tokens_bytes": len(value),
        "with_tokens_chunks": math.ceil(len(value) / CHUNK_SIZE),
        "without_tokens_bytes": len(lean),
        "without_tokens_chunks": math.ceil(len(lean) / CHUNK_SIZE),
        "session_json_bytes": len(session.to_bytes()),
    }


async def populate(reactor: Any, config: Any, header: str, count: int, concurrency: int,
                   tag: str) -> Dict[str, Any]:
    from oidcproxy.sessions.session import new_session_id
    from oidcproxy.sessions.stores.redis import RedisStore, build_redis

    redis = config.redis
    if redis is None or config.session.store != "redis":
        raise SystemExit("sessions.py: the configuration has no Redis session store")
    pool = build_redis(reactor, redis.url, password=redis.password.reveal() if redis.password else None,
                       username=redis.username, pool_size=4, connect_timeout=redis.connect_timeout,
                       command_timeout=30.0)
    store = RedisStore(pool, sealer_of(config), reactor, key_prefix=redis.key_prefix,
                       command_timeout=30.0)
    try:
        template = await store.load(session_value(config, header))
        if template is None:
            raise SystemExit("sessions.py: the Redis store has no session for the cookie")
        now = reactor.seconds()
        next_index = 0
        started = time.monotonic()

        async def saver() -> None:
            nonlocal next_index
            while next_index < count:
                i = next_index
                next_index += 1
                session = attr.evolve(
                    template, id=new_session_id(), sub=f"{template.sub}.{tag}.{i}",
                    sid=f"{template.sid}.{tag}.{i}" if template.sid else None,
                    created=now, last_seen=now)
                await store.save(session)

        from twisted.internet.defer import Deferred, gatherResults

        await gatherResults([Deferred.fromCoroutine(saver()) for _ in range(concurrency)],
                            consumeErrors=True)
        elapsed = time.monotonic() - started
        return {"saved": count, "seconds": round(elapsed, 2),
                "saves_per_s": round(count / elapsed, 1) if elapsed else None,
                "session_json_bytes": len(template.to_bytes()),
                "index_sets_per_session": 2 if template.sid else 1}
    finally:
        await store.close()


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench/sessions.py")
    parser.add_argument("what", choices=("populate", "sizes"))
    parser.add_argument("--config", required=True, help="the proxy's configuration file")
    parser.add_argument("--cookie", required=True, help="the Cookie header of a real login")
    parser.add_argument("--count", type=int, default=0, help="populate: sessions to add")
    parser.add_argument("--concurrency", type=int, default=256,
                        help="populate: saves in flight at once (256)")
    parser.add_argument("--tag", default="s", help="populate: makes the subjects of this batch unique")
    args = parser.parse_args(argv)

    from oidcproxy.config import load_config

    config = load_config(args.config)
    if args.what == "sizes":
        result(sizes(config, args.cookie))
        return 0

    from twisted.internet import reactor
    from twisted.internet.defer import Deferred
    from twisted.python.failure import Failure

    outcome: List[Any] = []

    def done(value: Any) -> None:
        outcome.append(value)
        reactor.stop()

    reactor.callWhenRunning(
        lambda: Deferred.fromCoroutine(
            populate(reactor, config, args.cookie, args.count, max(1, args.concurrency), args.tag)
        ).addBoth(done))
    reactor.run()
    answer: Optional[Any] = outcome[0] if outcome else None
    if isinstance(answer, Failure):
        if isinstance(answer.value, SystemExit):
            raise answer.value
        sys.stderr.write(f"sessions.py: {answer.getTraceback()}\n")
        return 1
    if answer is None:
        sys.stderr.write("sessions.py: the reactor stopped before the saves were done\n")
        return 1
    result(answer)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
