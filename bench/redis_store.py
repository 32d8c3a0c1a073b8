"""
What one Redis session load costs the proxy: a loop of C{RedisStore.load}
calls against a real local C{redis-server} (started here, on a free port,
without persistence), through the pool C{build_redis} makes.

    python bench/redis_store.py [--loads 20000] [--concurrency 50] [--rounds 5]

Each round runs C{--loads} loads with C{--concurrency} of them in flight (as
requests of that many connections would) and prints the proxy's CPU time and
the wall time per load, and the Redis commands the server counted per load
(C{INFO commandstats}). The first round warms up (PyPy's JIT) and is not in
the median. Run it with each runtime's Python (CPython, PyPy) from the
source tree; it needs C{redis-server} on the PATH.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(workdir: str) -> Tuple[subprocess.Popen[bytes], int]:
    server = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = free_port()
    child = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", workdir, "--protected-mode", "yes"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return child, port
        except OSError:
            time.sleep(0.05)
    child.kill()
    raise SystemExit(f"redis-server did not listen on port {port} within 10 s")


def command(port: int, *args: str) -> bytes:
    """One command, its raw reply (enough for INFO and CONFIG RESETSTAT)."""
    payload = f"*{len(args)}\r\n".encode() + b"".join(
        f"${len(a.encode())}\r\n{a}\r\n".encode() for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(payload)
        data = b""
        s.settimeout(0.5)
        while True:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            data += chunk
            if data.startswith((b"+", b"-")) and data.endswith(b"\r\n"):
                break
            if data.startswith(b"$"):
                header, _, rest = data.partition(b"\r\n")
                if len(rest) >= int(header[1:]) + 2:
                    break
    return data


def commandstats(port: int) -> Dict[str, int]:
    stats = {}
    for line in command(port, "INFO", "commandstats").decode().splitlines():
        if line.startswith("cmdstat_"):
            name, _, fields = line[len("cmdstat_"):].partition(":")
            stats[name] = int(dict(f.split("=") for f in fields.split(","))["calls"])
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loads", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    options = parser.parse_args()

    from twisted.internet import reactor
    from twisted.internet.defer import Deferred, DeferredList

    from oidcproxy.sessions.crypto import Sealer
    from oidcproxy.sessions.session import Session, new_session_id
    from oidcproxy.sessions.stores.redis import RedisStore, build_redis

    workdir = tempfile.mkdtemp(prefix="redis-store-bench-")
    child, port = start_redis(workdir)
    results: List[Any] = []

    async def run() -> None:
        pool = build_redis(reactor, f"redis://127.0.0.1:{port}/0", pool_size=10)
        store = RedisStore(pool, Sealer([b"bench secret of at least thirty-two bytes"]), reactor)
        now = reactor.seconds()
        session = Session(id=new_session_id(), sub="user-1", claims={"sub": "user-1"},
                          created=now, last_seen=now, expires=now + 3600,
                          id_token="x" * 900, access_token="y" * 900,
                          access_token_expires=now + 3000, refresh_token="z" * 300, sid="op-1")
        cookie = await store.save(session)
        assert (await store.load(cookie)) == session

        async def worker(n: int) -> None:
            for _ in range(n):
                await store.load(cookie)

        share = options.loads // options.concurrency
        for round_ in range(options.rounds + 1):
            before = commandstats(port)
            cpu, wall = time.process_time(), time.perf_counter()
            await DeferredList([Deferred.fromCoroutine(worker(share))
                                for _ in range(options.concurrency)], fireOnOneErrback=True)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            after = commandstats(port)
            loads = share * options.concurrency
            calls = {k: (v - before.get(k, 0)) / loads for k, v in after.items()
                     if k != "info" and v != before.get(k, 0)}
            line = (f"round {round_}{' (warm-up)' if round_ == 0 else ''}: "
                    f"{cpu / loads * 1e6:.1f} us CPU, {wall / loads * 1e6:.1f} us wall per load; "
                    f"commands per load: {calls}")
            print(line, flush=True)
            if round_:
                results.append((cpu / loads * 1e6, wall / loads * 1e6))
        await pool.disconnect()

    def done(_: Any) -> None:
        reactor.stop()

    def failed(failure: Any) -> None:
        failure.printTraceback()
        reactor.stop()

    reactor.callWhenRunning(lambda: Deferred.fromCoroutine(run()).addCallbacks(done, failed))
    try:
        reactor.run()
    finally:
        child.kill()
        child.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    if results:
        print(f"{sys.implementation.name} {sys.version.split()[0]}: median of {len(results)} rounds: "
              f"{statistics.median(r[0] for r in results):.1f} us CPU, "
              f"{statistics.median(r[1] for r in results):.1f} us wall per load "
              f"({options.concurrency} in flight)")


if __name__ == "__main__":
    main()
