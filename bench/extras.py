"""
The measurements of bench/run beyond the request rates (see bench/README.rst):

  - the cookie sizes, read off the logins of every run (L{cookie_sizes});
  - C{--scale}: R with 1,000 and with 1,000,000 sessions in Redis (L{scale});
  - C{--memory}: the proxy's RSS while streaming 100 MB bodies, and over a
    run at a fixed rate (L{memory}).

It uses bench/run.py's processes and helpers; bench/run.py imports it when
it needs it.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple
from urllib.parse import urlsplit

import browser
import run as bench

SESSIONS_SCRIPT = os.path.join(bench.HERE, "sessions.py")
UPSTREAM_APP = os.path.join(bench.ROOT, "tests", "integration", "upstream_app.py")
SMALL_SESSIONS = 1_000
SCALE_TARGET = 0.90
STREAM_BYTES = 100 * 1000 * 1000
STREAM_CLIENTS = 20
STREAM_GROWTH_TARGET_MB = 20.0
RATE_GROWTH_TARGET = 0.05
BLOCK = secrets.token_bytes(64 * 1024)


def verdict(met: Optional[bool]) -> str:
    return "-" if met is None else ("met" if met else "NOT MET")


def sessions_script(what: str, config: str, cookie: str, *extra: str,
                    timeout: float = 3600.0) -> Dict[str, Any]:
    """Run bench/sessions.py with the working tree on CPython; its RESULT."""
    result = subprocess.run(
        [bench.RUNTIME_PYTHONS["cpython"], SESSIONS_SCRIPT, what, "--config", config,
         "--cookie", cookie, *extra],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env=bench.child_env(source_tree=True), timeout=timeout, check=False)
    output = result.stdout.decode("utf-8", "replace")
    for line in output.splitlines():
        if line.startswith("RESULT "):
            return dict(json.loads(line[len("RESULT "):]))
    raise bench.BenchError(f"bench/sessions.py {what} failed (exit {result.returncode}): "
                           f"{output[-1500:]}")


# -- cookie sizes ------------------------------------------------------------------------


def _pairs_bytes(pairs: Sequence[Tuple[str, str]]) -> int:
    """Bytes of C{name=value} per cookie, summed: what the browser keeps and sends back."""
    return sum(len(name) + 1 + len(value) for name, value in pairs)


def _header_pairs(header: str) -> List[Tuple[str, str]]:
    pairs = []
    for part in header.split(";"):
        name, _, value = part.strip().partition("=")
        if name:
            pairs.append((name, value))
    return pairs


def cookie_sizes(cookie_proxy: Any, redis_proxy: Any, config_path: str) -> Dict[str, Any]:
    """
    The sizes of the proxy's cookies in bytes (C{name=value}, summed over a
    value's chunks), from the logins the bench did: the session cookie of
    the cookie store (the OP's tokens in it), the same session sealed with
    C{store_tokens = false} (by the proxy's L{CookieStore}, in
    bench/sessions.py), the Redis session cookie and one login attempt's
    state cookie.
    """
    session_pairs = _header_pairs(cookie_proxy.cookie or "")
    state = [(n, v) for n, v in cookie_proxy.set_cookies if n.startswith("oidcproxy_state_") and v]
    lean = sessions_script("sizes", config_path, cookie_proxy.cookie or "", timeout=120)
    name = session_pairs[0][0] if session_pairs else "oidcproxy"
    lean_names = [name] + [f"{name}_{i}" for i in range(1, lean["without_tokens_chunks"])]
    return {
        "session_cookie_store_bytes": _pairs_bytes(session_pairs),
        "session_cookie_store_cookies": len(session_pairs),
        "session_cookie_store_no_tokens_bytes":
            lean["without_tokens_bytes"] + sum(len(n) + 1 for n in lean_names),
        "session_cookie_store_no_tokens_cookies": lean["without_tokens_chunks"],
        "session_redis_bytes": _pairs_bytes(_header_pairs(redis_proxy.cookie or "")),
        "state_cookie_bytes": _pairs_bytes(state[:1]) if state else None,
        "session_json_bytes": lean["session_json_bytes"],
    }


def cookie_line(sizes: Dict[str, Any]) -> str:
    return (f"cookies (name=value bytes): session, cookie store "
            f"{bench.fmt(sizes['session_cookie_store_bytes'])} "
            f"({sizes['session_cookie_store_cookies']} cookie(s)), with store_tokens = false "
            f"{bench.fmt(sizes['session_cookie_store_no_tokens_bytes'])}; Redis session "
            f"{bench.fmt(sizes['session_redis_bytes'])}; state cookie of a login "
            f"{bench.fmt(sizes['state_cookie_bytes'])}")


# -- Redis -----------------------------------------------------------------------------------


def redis_command(url: str, *args: str) -> Any:
    """One command to the bench's redis-server (RESP over a socket); its reply."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), 10) as s:
        request = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
        s.sendall(request.encode("utf-8"))
        reader = s.makefile("rb")
        line = reader.readline().rstrip(b"\r\n")
        kind, rest = line[:1], line[1:].decode("utf-8", "replace")
        if kind == b"$":
            return reader.read(int(rest) + 2)[:-2].decode("utf-8", "replace")
        if kind == b":":
            return int(rest)
        if kind == b"-":
            raise bench.BenchError(f"Redis {args[0]}: {rest}")
        return rest


def redis_memory(url: str) -> Dict[str, Any]:
    """C{DBSIZE} and the main fields of C{INFO memory}."""
    info = {}
    for line in str(redis_command(url, "INFO", "memory")).splitlines():
        key, _, value = line.partition(":")
        if key in ("used_memory", "used_memory_human", "used_memory_rss", "used_memory_rss_human",
                   "mem_fragmentation_ratio"):
            info[key] = value.strip()
    info["keys"] = redis_command(url, "DBSIZE")
    return info


# -- --scale ----------------------------------------------------------------------------------


def populate(url: str, proxy: Any, config_path: str, total: int, processes: int) -> Dict[str, Any]:
    """
    Bring the Redis at C{url} to C{total} keys' worth of sessions: saves
    through the proxy's own L{RedisStore} (bench/sessions.py), in
    C{processes} processes at once, timed.
    """
    present = count_sessions(url)
    missing = max(0, total - present)
    started = time.monotonic()
    batches = [missing // processes + (1 if i < missing % processes else 0) for i in range(processes)]
    outcomes: List[Any] = [None] * processes

    def one(i: int) -> None:
        try:
            outcomes[i] = sessions_script("populate", config_path, proxy.cookie or "",
                                          "--count", str(batches[i]), "--tag", f"p{total}x{i}")
        except bench.BenchError as e:
            outcomes[i] = e

    threads = [threading.Thread(target=one, args=(i,), daemon=True)
               for i in range(processes) if batches[i]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for outcome in outcomes:
        if isinstance(outcome, Exception):
            raise outcome
    elapsed = time.monotonic() - started
    return {"sessions_before": present, "saved": missing, "processes": processes,
            "seconds": round(elapsed, 1),
            "saves_per_s": round(missing / elapsed, 0) if elapsed and missing else None,
            "sessions": count_sessions(url),
            "session_json_bytes": next((o["session_json_bytes"] for o in outcomes if o), None)}


def count_sessions(url: str) -> int:
    """Sessions in the Redis at C{url}: its keys named C{<prefix>s:...}, counted by Lua."""
    script = ("local n = 0 local cursor = '0' repeat "
              "local r = redis.call('SCAN', cursor, 'MATCH', '*:s:*', 'COUNT', 10000) "
              "cursor = r[1] n = n + #r[2] until cursor == '0' return n")
    return int(redis_command(url, "EVAL", script, "0"))


def scale(args: argparse.Namespace, children: Any, workdir: str) -> Dict[str, Any]:
    """
    R with C{SMALL_SESSIONS} and with C{args.scale_sessions} sessions in
    Redis: two redis-servers, one proxy per runtime on each, the small one
    and the large one populated through the real store, then interleaved
    rounds of wrk on both (medians).
    """
    runtimes = bench.preflight(args)
    started = time.monotonic()
    info = bench.machine()
    big = args.scale_sessions
    upstream, _ = bench.start_nginx(children, workdir)
    urls = {"small": bench.start_redis(children, workdir, "redis-small"),
            "large": bench.start_redis(children, workdir, "redis-large")}
    jwks_file, _ = bench.bearer_material(workdir)
    client_secret = secrets.token_urlsafe(24)
    session_secret = secrets.token_urlsafe(32)
    plan = [(f"scale-{size}-{runtime}", runtime, size) for size in urls for runtime in runtimes]
    reserved = {name: bench.reserve_port() for name, _, _ in plan}
    issuer = bench.start_op(children, [f"http://127.0.0.1:{s.getsockname()[1]}/oidc/callback"
                                       for s in reserved.values()], client_secret)
    proxies: Dict[str, Any] = {}
    for name, runtime, size in plan:
        bench.say(f"starting {name}")
        config = bench.proxy_config(reserved[name].getsockname()[1], issuer, client_secret,
                                    session_secret, "redis", upstream, jwks_file, urls[size])
        proxy = bench.start_proxy(children, workdir, name, runtime, reserved.pop(name), config)
        proxy.cookie = browser.session_cookie(proxy.url + "/bench/login")
        proxies[name] = proxy

    fill: Dict[str, Any] = {}
    memory: Dict[str, Any] = {}
    for size, total in (("small", SMALL_SESSIONS), ("large", big)):
        name = f"scale-{size}-{runtimes[0]}"
        bench.say(f"populating redis-{size} to {total:,} sessions through RedisStore.save")
        fill[size] = populate(urls[size], proxies[name], os.path.join(workdir, f"{name}.toml"),
                              total, args.populate_processes if total > 10_000 else 1)
        memory[size] = redis_memory(urls[size])
        bench.say(f"redis-{size}: {fill[size]['sessions']:,} sessions; saved {fill[size]['saved']:,} "
                  f"in {fill[size]['seconds']:.1f}s ({bench.fmt(fill[size]['saves_per_s'])}/s); "
                  f"used_memory {memory[size].get('used_memory_human')}, "
                  f"{memory[size]['keys']:,} keys")

    targets = [bench.Target(f"R{'1k' if size == 'small' else 'big'}", runtime,
                            proxies[name].url + "/app/scale", {"Cookie": proxies[name].cookie or ""},
                            proxies[name])
               for name, runtime, size in plan]
    for target in targets:
        problem = target.probe()
        if problem:
            raise bench.BenchError(f"{target.key}: {problem}")
    script = os.path.join(workdir, "report.lua")
    with open(script, "w", encoding="ascii") as f:
        f.write(bench.WRK_SCRIPT)
    for target in targets:
        bench.warm_up(target, args, script)
    for round_number in range(args.repeats):
        shift = round_number % len(targets)
        for target in targets[shift:] + targets[:shift]:
            result = bench.run_wrk(target, args.duration, script)
            problem = target.probe()
            if problem and problem not in target.problems:
                target.problems.append(problem)
            target.runs.append(result)
            target.measure_rss()
            bench.say(f"round {round_number + 1}/{args.repeats} {target.key}: "
                      f"{result['rps']:,.0f} req/s, p99 {result['p99_ms']:.2f} ms")

    results: Dict[str, Dict[str, Any]] = {}
    for target in targets:
        results.setdefault(target.scenario, {})[target.runtime] = bench.summarise(target)
    ratios: Dict[str, Any] = {}
    lines = [f"scale: R with {SMALL_SESSIONS:,} and with {big:,} sessions in Redis "
             f"(medians of {args.repeats} rounds of {args.duration:g}s, wrk -t{bench.WRK_THREADS} "
             f"-c{bench.WRK_CONNECTIONS})"]
    for runtime in runtimes:
        small_s, large_s = results["R1k"][runtime], results["Rbig"][runtime]
        ratio = large_s["rps"] / small_s["rps"] if small_s.get("rps") else None
        met = ratio is not None and ratio >= SCALE_TARGET
        ratios[runtime] = {"large/small": round(ratio, 3) if ratio else None,
                           "target": f">= {SCALE_TARGET}", "met": met}
        lines.append(
            f"  {runtime:<8} {SMALL_SESSIONS:>9,} sessions: {bench.fmt(small_s['rps'])} req/s "
            f"(p99 {bench.fmt(small_s['p99_ms'], 2)} ms); {big:>9,}: {bench.fmt(large_s['rps'])} "
            f"req/s (p99 {bench.fmt(large_s['p99_ms'], 2)} ms); ratio "
            f"{bench.fmt(ratio, 3)} (target >= {SCALE_TARGET}: {verdict(met)})")
    for size in ("small", "large"):
        m, f = memory[size], fill[size]
        lines.append(
            f"  redis with {f['sessions']:,} sessions: {m['keys']:,} keys, used_memory "
            f"{m.get('used_memory_human')} (rss {m.get('used_memory_rss_human')}); "
            f"{f['saved']:,} saves through RedisStore.save in {f['seconds']:.1f}s "
            f"({bench.fmt(f['saves_per_s'])}/s, {f['processes']} process(es))")
    for key, by_runtime in results.items():
        for runtime, s in by_runtime.items():
            for problem in s.get("problems", []):
                lines.append(f"! {key}/{runtime}: {problem}")
            if s.get("errors"):
                lines.append(f"! {key}/{runtime}: wrk errors {s['errors']}")
    return {
        "machine": info,
        "settings": {"mode": "scale", "duration_s": args.duration, "repeats": args.repeats,
                     "warmup_s": args.warmup, "sessions": [SMALL_SESSIONS, big],
                     "populate_processes": args.populate_processes,
                     "wrk": f"-t{bench.WRK_THREADS} -c{bench.WRK_CONNECTIONS}"},
        "results": results,
        "populate": fill,
        "redis_memory": memory,
        "ratios": ratios,
        "elapsed_s": round(time.monotonic() - started, 1),
        "table": "\n".join(lines),
    }


# -- --memory ----------------------------------------------------------------------------------


class RSSSampler:
    """The largest RSS of a process, sampled every C{interval} seconds in a thread."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid = pid
        self.peak = bench.rss_mb(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(interval,), daemon=True)
        self._thread.start()

    def _loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.peak = max(self.peak, bench.rss_mb(self.pid))

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, bench.rss_mb(self.pid))
        return self.peak


def _connection(url: str, timeout: float = 120.0) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    return http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)


def download(url: str, cookie: str) -> int:
    """GET C{url}, reading the body 64 KiB at a time; the bytes received."""
    connection = _connection(url)
    try:
        connection.request("GET", urlsplit(url).path, headers={"Cookie": cookie})
        response = connection.getresponse()
        if response.status != 200:
            raise bench.BenchError(f"download got {response.status}: {response.read(300)!r}")
        received = 0
        while True:
            chunk = response.read(65536)
            if not chunk:
                return received
            received += len(chunk)
    finally:
        connection.close()


def upload(url: str, cookie: str, size: int) -> int:
    """POST C{size} bytes to C{url} (streamed, C{Content-Length}); the length the upstream saw."""

    def body() -> Any:
        left = size
        while left > 0:
            chunk = BLOCK if left >= len(BLOCK) else BLOCK[:left]
            left -= len(chunk)
            yield chunk

    connection = _connection(url)
    try:
        connection.request("POST", urlsplit(url).path, body=body(),
                           headers={"Cookie": cookie, "Content-Length": str(size),
                                    "Content-Type": "application/octet-stream"})
        response = connection.getresponse()
        answer = response.read()
        if response.status != 200:
            raise bench.BenchError(f"upload got {response.status}: {answer[:300]!r}")
        return int(json.loads(answer)["length"])
    finally:
        connection.close()


def in_parallel(count: int, work: Any) -> Tuple[List[Any], float]:
    """C{work(i)} in C{count} threads at once; the results (or exceptions) and the seconds."""
    results: List[Any] = [None] * count

    def one(i: int) -> None:
        try:
            results[i] = work(i)
        except (OSError, bench.BenchError, http.client.HTTPException, ValueError) as e:
            results[i] = e

    started = time.monotonic()
    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results, time.monotonic() - started


def streaming(proxy: Any, clients: int, size: int) -> Dict[str, Any]:
    """
    The proxy's RSS while C{clients} download C{size} bytes each through it
    (nginx serving a file), then while as many upload as much (to the
    integration tests' upstream app, which reads and counts). The baseline
    is the RSS after a warm-up of one small download and upload.
    """
    pid = proxy.child.pid
    cookie = proxy.cookie or ""
    big_url, upload_url = proxy.url + "/big/body", proxy.url + "/upload"
    # Warm-up: every code path once, so the baseline holds what any
    # request allocates (imports, the JIT's code on PyPy, pooled connections).
    for _ in range(2):
        in_parallel(2, lambda i: download(big_url, cookie))
        in_parallel(2, lambda i: upload(upload_url, cookie, size // 10))
    time.sleep(1.0)
    baseline = bench.rss_mb(pid)
    out: Dict[str, Any] = {"clients": clients, "bytes_each": size, "baseline_mb": round(baseline, 1)}
    for kind, work in (("download", lambda i: download(big_url, cookie)),
                       ("upload", lambda i: upload(upload_url, cookie, size))):
        sampler = RSSSampler(pid)
        results, seconds = in_parallel(clients, work)
        peak = sampler.stop()
        time.sleep(1.0)
        after = bench.rss_mb(pid)
        failures = [r for r in results if not isinstance(r, int) or r != size]
        out[kind] = {
            "peak_mb": round(peak, 1), "after_mb": round(after, 1),
            "growth_mb": round(peak - baseline, 1), "seconds": round(seconds, 1),
            "mb_per_s": round(clients * size / 1e6 / seconds, 1),
            "failures": len(failures),
            "failure_example": str(failures[0])[:300] if failures else None,
        }
        out[kind]["met"] = peak - baseline <= STREAM_GROWTH_TARGET_MB and not failures
    return out


class PacedLoad:
    """
    Requests at a fixed rate (not as fast as the server answers, as wrk
    does): request k is due at start + k/rate, whoever of C{threads}
    keep-alive clients is free sends it. The requests go round the public
    route, the cookie session and the bearer route; every C{login_every}
    seconds one complete login runs beside them.
    """

    def __init__(self, proxy: Any, rate: float, token: str, threads: int = 8,
                 login_every: float = 10.0) -> None:
        self.proxy = proxy
        self.interval = 1.0 / rate
        self.requests = [("/public/m", {}), ("/app/m", {"Cookie": proxy.cookie or ""}),
                         ("/api/m", {"Authorization": f"Bearer {token}"})]
        self.threads = threads
        self.login_every = login_every
        self.sent = 0
        self.late = 0
        self.statuses: Dict[str, int] = {}
        self.logins = 0
        self.login_failures = 0
        self.login_failure: Optional[str] = None
        self._next = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers: List[threading.Thread] = []

    def start(self) -> None:
        self._start = time.monotonic()
        self._workers = [threading.Thread(target=self._client, daemon=True)
                         for _ in range(self.threads)]
        self._workers.append(threading.Thread(target=self._logins, daemon=True))
        for worker in self._workers:
            worker.start()

    def stop(self) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join()

    def _client(self) -> None:
        connection: Optional[http.client.HTTPConnection] = None
        while not self._stop.is_set():
            with self._lock:
                k = self._next
                self._next += 1
            due = self._start + k * self.interval
            wait = due - time.monotonic()
            if wait > 0:
                if self._stop.wait(wait):
                    break
            elif wait < -1.0:
                with self._lock:
                    self.late += 1
            path, headers = self.requests[k % len(self.requests)]
            try:
                if connection is None:
                    connection = _connection(self.proxy.url, timeout=10.0)
                connection.request("GET", path, headers=headers)
                response = connection.getresponse()
                response.read()
                status = str(response.status)
                if response.will_close:
                    connection.close()
                    connection = None
            except (OSError, http.client.HTTPException) as e:
                status = type(e).__name__
                if connection is not None:
                    connection.close()
                connection = None
            with self._lock:
                self.sent += 1
                self.statuses[status] = self.statuses.get(status, 0) + 1
        if connection is not None:
            connection.close()

    def _logins(self) -> None:
        while not self._stop.wait(self.login_every):
            try:
                browser.timed_login(self.proxy.url + "/bench/login")
                self.logins += 1
            except (OSError, browser.LoginFailed) as e:
                self.login_failures += 1
                self.login_failure = self.login_failure or str(e)[:300]


def fixed_rate(proxies: Sequence[Any], token: str, rate: float, minutes: float,
               sample_every: float = 5.0) -> Dict[str, Dict[str, Any]]:
    """
    Every proxy of C{proxies} at C{rate} requests/s at once for C{minutes};
    their RSS every C{sample_every} seconds; growth from minute 1 (after the
    warm-up) to the end.
    """
    loads = [PacedLoad(proxy, rate, token) for proxy in proxies]
    samples: Dict[str, List[Tuple[float, float]]] = {p.name: [] for p in proxies}
    started = time.monotonic()
    for load in loads:
        load.start()
    end = started + minutes * 60.0
    try:
        while True:
            now = time.monotonic()
            for proxy in proxies:
                samples[proxy.name].append((round(now - started, 1), round(bench.rss_mb(proxy.child.pid), 1)))
            if now >= end:
                break
            time.sleep(min(sample_every, max(0.0, end - now)))
    finally:
        for load in loads:
            load.stop()
    out = {}
    for proxy, load in zip(proxies, loads):
        series = samples[proxy.name]
        at_one = next((rss for t, rss in series if t >= 60.0), series[0][1])
        final = series[-1][1]
        growth = (final - at_one) / at_one if at_one else None
        elapsed = series[-1][0]
        out[proxy.runtime] = {
            "rate_target": rate, "rate_sent": round(load.sent / elapsed, 1) if elapsed else None,
            "requests": load.sent, "statuses": load.statuses, "late_by_1s": load.late,
            "logins": load.logins, "login_failures": load.login_failures,
            "login_failure": load.login_failure,
            "rss_minute_1_mb": at_one, "rss_end_mb": final,
            "rss_max_mb": max(rss for _, rss in series),
            "growth": round(growth, 4) if growth is not None else None,
            "met": growth is not None and growth <= RATE_GROWTH_TARGET,
            "samples": series,
        }
    return out


def memory(args: argparse.Namespace, children: Any, workdir: str) -> Dict[str, Any]:
    """
    Per runtime, one cookie-session proxy with two more routes (C{/big} to
    nginx serving a 100 MB file, C{/upload} to the integration tests'
    upstream app) and C{max_body_size} raised: L{streaming}, one runtime
    after the other; then L{fixed_rate} on every runtime at once.
    """
    # Apart from the work directory (0700, with the secrets): nginx's worker
    # (nobody, when the bench runs as root) must read the body.
    big_dir = tempfile.mkdtemp(prefix="oidcproxy-bench-body-")
    try:
        return _memory(args, children, workdir, big_dir)
    finally:
        shutil.rmtree(big_dir, ignore_errors=True)


def _memory(args: argparse.Namespace, children: Any, workdir: str, big_dir: str) -> Dict[str, Any]:
    runtimes = bench.preflight(args)
    started = time.monotonic()
    info = bench.machine()
    size = args.memory_bytes
    os.chmod(big_dir, 0o755)
    with open(os.path.join(big_dir, "body"), "wb") as f:
        for _ in range(size // len(BLOCK)):
            f.write(BLOCK)
        f.write(BLOCK[:size % len(BLOCK)])
    os.chmod(os.path.join(big_dir, "body"), 0o644)
    locations = (f"        location /big/ {{\n            alias {big_dir}/;\n"
                 f"            default_type application/octet-stream;\n        }}\n")
    upstream, _ = bench.start_nginx(children, workdir, locations)
    app = children.start("upstream-app", [bench.RUNTIME_PYTHONS["cpython"], UPSTREAM_APP],
                         env=bench.child_env(source_tree=False))
    app_port = bench.wait_for(lambda: bench.port_line(app), bench.START_TIMEOUT,
                              "the upstream app's PORT line", app)
    app_url = f"http://127.0.0.1:{app_port}"
    jwks_file, token = bench.bearer_material(workdir)
    client_secret = secrets.token_urlsafe(24)
    session_secret = secrets.token_urlsafe(32)
    reserved = {runtime: bench.reserve_port() for runtime in runtimes}
    issuer = bench.start_op(children, [f"http://127.0.0.1:{s.getsockname()[1]}/oidc/callback"
                                       for s in reserved.values()], client_secret)
    limit = f"{2 * size}"
    proxies = []
    for runtime in runtimes:
        name = f"memory-{runtime}"
        config = bench.proxy_config(reserved[runtime].getsockname()[1], issuer, client_secret,
                                    session_secret, "cookie", upstream, jwks_file)
        config += (f'\n[[routes]]\npath = "/big"\nupstream = "{upstream}"\nauth = "session"\n'
                   f'\n[[routes]]\npath = "/upload"\nupstream = "{app_url}"\nauth = "session"\n'
                   f'max_body_size = {limit}\ntimeout = "600s"\n')
        bench.say(f"starting {name}")
        proxy = bench.start_proxy(children, workdir, name, runtime, reserved.pop(runtime), config)
        proxy.cookie = browser.session_cookie(proxy.url + "/bench/login")
        proxies.append(proxy)

    stream: Dict[str, Any] = {}
    for proxy in proxies:
        bench.say(f"{proxy.name}: {STREAM_CLIENTS} clients x {size / 1e6:g} MB down, then up")
        stream[proxy.runtime] = streaming(proxy, STREAM_CLIENTS, size)
        s = stream[proxy.runtime]
        bench.say(f"{proxy.name}: baseline {s['baseline_mb']} MB; download peak "
                  f"{s['download']['peak_mb']} MB, upload peak {s['upload']['peak_mb']} MB")
    bench.say(f"fixed rate: {args.memory_rate:g} req/s per proxy for {args.memory_minutes:g} min "
              f"on {', '.join(runtimes)} at once")
    paced = fixed_rate(proxies, token, args.memory_rate, args.memory_minutes)

    lines = [f"memory: {STREAM_CLIENTS} clients streaming {size / 1e6:g} MB each through the proxy "
             f"(target: growth <= {STREAM_GROWTH_TARGET_MB:g} MB over the baseline after a warm-up)"]
    for runtime in runtimes:
        s = stream[runtime]
        for kind in ("download", "upload"):
            k = s[kind]
            lines.append(
                f"  {runtime:<8} {kind:<8}: RSS {s['baseline_mb']} -> peak {k['peak_mb']} MB "
                f"(+{k['growth_mb']} MB: {verdict(k['met'])}), {k['after_mb']} MB after; "
                f"{k['mb_per_s']} MB/s in all, {k['failures']} failed"
                + (f" ({k['failure_example']})" if k["failure_example"] else ""))
    lines.append(f"memory: fixed rate {args.memory_rate:g} req/s for {args.memory_minutes:g} min "
                 f"(public, cookie session, bearer in turn; a login every 10 s; target: RSS growth "
                 f"from minute 1 to the end <= {RATE_GROWTH_TARGET:.0%})")
    for runtime in runtimes:
        p = paced[runtime]
        lines.append(
            f"  {runtime:<8} RSS {p['rss_minute_1_mb']} MB at minute 1 -> {p['rss_end_mb']} MB at "
            f"the end ({bench.fmt(100 * p['growth'] if p['growth'] is not None else None, 1)} %: "
            f"{verdict(p['met'])}), max {p['rss_max_mb']} MB; {bench.fmt(p['rate_sent'], 1)} req/s "
            f"sent, statuses {p['statuses']}, {p['logins']} logins ({p['login_failures']} failed)"
            + (f"; a failed login: {p['login_failure']}" if p["login_failure"] else ""))
    return {
        "machine": info,
        "settings": {"mode": "memory", "clients": STREAM_CLIENTS, "bytes_each": size,
                     "rate": args.memory_rate, "minutes": args.memory_minutes,
                     "pypy_gc_max": bench.child_env(False).get("PYPY_GC_MAX")},
        "streaming": stream,
        "fixed_rate": paced,
        "elapsed_s": round(time.monotonic() - started, 1),
        "table": "\n".join(lines),
    }
