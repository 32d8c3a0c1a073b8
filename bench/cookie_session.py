"""
What the cookie-session path costs the proxy per request, in memory only: a
request's C{Cookie} header parsed by Twisted (C{Request.parseCookies}), the
session cookie's chunk names found (C{CookieRules.present}), its value read
back (C{read_cookie}), and the session looked up in the cookie store's cache
of opened sessions (C{CookieStore.load}); and, apart, what opening a value
the cache does not hold costs (a miss: AES-GCM and JSON).

    python bench/cookie_session.py [--requests 200000] [--rounds 5] [--sessions 500]
                                   [--profile]

Each round runs C{--requests} requests spread round-robin over C{--sessions}
distinct sessions (each about 2.7 KB sealed, as with an OP's tokens kept),
and prints the time per request of each section and of the whole. The first
round warms up (PyPy's JIT) and is not in the median. C{--profile} runs one
more round under cProfile (CPython) and prints the top functions. Run it
with each runtime's Python (CPython, PyPy) from the source tree.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import time
from typing import Any, Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from twisted.internet.task import Clock  # noqa: E402
from twisted.web.http import Request  # noqa: E402

from oidcproxy.sessions.cookies import CookieSpec, chunk_names, read_cookie  # noqa: E402
from oidcproxy.sessions.crypto import Sealer  # noqa: E402
from oidcproxy.sessions.session import Session, new_session_id  # noqa: E402
from oidcproxy.sessions.stores.cookie import CookieStore  # noqa: E402

SPEC = CookieSpec("oidcproxy_session")


def make_session(n: int, now: float) -> Session:
    """A session with an OP's tokens kept: about 2.7 KB sealed."""
    return Session(
        id=new_session_id(), sub=f"user-{n}",
        claims={"sub": f"user-{n}", "email": f"user{n}@example.com", "name": "Ada Lovelace",
                "email_verified": True, "iss": "https://op.example.com/realms/main",
                "aud": "oidcproxy", "sid": secrets.token_hex(16), "exp": now + 300,
                "iat": now, "auth_time": now},
        created=now, last_seen=now, expires=now + 8 * 3600,
        id_token=secrets.token_urlsafe(400), access_token=secrets.token_urlsafe(500),
        access_token_expires=now + 300, refresh_token=secrets.token_urlsafe(300),
        sid=secrets.token_hex(16))


def cookie_header(value: str) -> bytes:
    """The request's Cookie header: the session cookie between two others, as browsers send."""
    return (b"_ga=GA1.2.1234567890.1700000000; " + SPEC.wire_name.encode() + b"=" +
            value.encode() + b"; theme=dark")


class _Channel:
    """What a Request asks of its channel when it is made."""

    transport = None

    def getPeer(self) -> None:
        return None

    def getHost(self) -> None:
        return None


CHANNEL = _Channel()


def fresh_request(header: bytes) -> Request:
    request = Request(CHANNEL)
    request.requestHeaders.setRawHeaders(b"cookie", [header])
    return request


def run_round(headers: List[bytes], store: CookieStore, requests: int) -> Dict[str, float]:
    """Seconds per request of each section (and the whole) over C{requests} requests."""
    spent = {"parse": 0.0, "present": 0.0, "read": 0.0, "lookup": 0.0}
    clock = time.perf_counter
    count = len(headers)
    start = clock()
    for i in range(requests):
        request = fresh_request(headers[i % count])
        t0 = clock()
        request.parseCookies()
        t1 = clock()
        present = chunk_names(SPEC, request.received_cookies)
        t2 = clock()
        value = read_cookie(SPEC, request.received_cookies)
        t3 = clock()
        loaded = store.load(value)  # type: ignore[arg-type]
        t4 = clock()
        if not present or loaded.result is None:  # type: ignore[attr-defined]
            raise SystemExit("the session was not found")
        spent["parse"] += t1 - t0
        spent["present"] += t2 - t1
        spent["read"] += t3 - t2
        spent["lookup"] += t4 - t3
    whole = clock() - start
    result = {name: total / requests for name, total in spent.items()}
    result["sections"] = sum(result.values())
    result["loop"] = whole / requests
    return result


def plain_round(headers: List[bytes], store: CookieStore, requests: int) -> float:
    """Seconds per request of the same work without the section timers."""
    count = len(headers)
    start = time.perf_counter()
    for i in range(requests):
        request = fresh_request(headers[i % count])
        request.parseCookies()
        chunk_names(SPEC, request.received_cookies)
        value = read_cookie(SPEC, request.received_cookies)
        store.load(value)  # type: ignore[arg-type]
    return (time.perf_counter() - start) / requests


def miss_cost(sealer: Sealer, values: List[str], now: float, loops: int) -> float:
    """Seconds per load of a value the cache does not hold (a new store each time)."""
    start = time.perf_counter()
    for i in range(loops):
        store = CookieStore(sealer, Clock())
        store.load(values[i % len(values)])
    return (time.perf_counter() - start) / loops


def us(seconds: float) -> str:
    return f"{seconds * 1e6:7.2f}"


def main(argv: Any = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sessions", type=int, default=500)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)

    sealer = Sealer([secrets.token_bytes(32)])
    clock = Clock()
    clock.advance(1_700_000_000)
    store = CookieStore(sealer, clock)
    sessions = [make_session(n, clock.seconds()) for n in range(args.sessions)]
    values = [sealer.seal(s.to_bytes(), b"session") for s in sessions]
    headers = [cookie_header(v) for v in values]
    print(f"{sys.implementation.name} {sys.version.split()[0]}: {args.sessions} sessions, "
          f"sealed {statistics.mean(map(len, values)):.0f} characters, "
          f"{args.requests} requests a round")

    rows: List[Dict[str, float]] = []
    plain: List[float] = []
    for n in range(args.rounds + 1):
        row = run_round(headers, store, args.requests)
        p = plain_round(headers, store, args.requests)
        label = "warm-up" if n == 0 else f"round {n}"
        print(f"{label:>8}: " + "  ".join(f"{k} {us(v)}" for k, v in row.items()) +
              f"  untimed {us(p)} us")
        if n:
            rows.append(row)
            plain.append(p)
    print("  median: " + "  ".join(
        f"{k} {us(statistics.median(r[k] for r in rows))}" for k in rows[0]) +
        f"  untimed {us(statistics.median(plain))} us")
    miss = [miss_cost(sealer, values, clock.seconds(), max(1000, args.requests // 50))
            for _ in range(3)]
    print(f"    miss: {us(statistics.median(miss))} us a load (unseal + JSON)")

    if args.profile:
        import cProfile
        import pstats
        profiler = cProfile.Profile()
        profiler.runcall(plain_round, headers, store, args.requests)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(18)


if __name__ == "__main__":
    main()
