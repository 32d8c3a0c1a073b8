"""
The soak: a mixed workload at a fixed rate for a long time, with the fault
matrix's faults on a schedule, and a verdict (see bench/README.rst, "Soak").

    .venv-cpython/bin/python bench/soak.py [--duration 30m] [--rate 40] [--fault-every 60]

Everything listens on 127.0.0.1 on free ports: a redis-server (append-only
file synced on every write, so a killed Redis comes back with its data), the
test OP (tests/integration/op/op.mjs with its fault-test hooks), the
integration tests' upstream app (its /echo answers with the identity headers
it received) and one C{twistd oidcproxy} (the working tree) with Redis
sessions. Every process started here is stopped at the end, on an error and
on Ctrl-C.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import browser
import run as bench

UPSTREAM_APP = os.path.join(bench.ROOT, "tests", "integration", "upstream_app.py")
SAMPLE_EVERY = 10.0
IDP_TIMEOUT = 2
ACCESS_TOKEN_TTL = 120
"""Seconds: the OP's access tokens live this long, so sessions refresh during the soak."""
SESSION_LIFETIME = 3600
LIVE_USERS = 300
"""Logins beyond this many live sessions log the oldest one out first."""
WEIGHTS = (("browse", 55), ("api", 20), ("public", 15), ("login", 7), ("logout", 3))
IDLE = 20.0
"""Seconds without load after the warm-up and at the end, before file descriptors are counted."""
WARMUP = 10.0
FD_SLACK = 2
MAX_IDLE_UPSTREAM = 16
"""
The routes' C{max_idle_connections}: the upstream connections the proxy may
keep open while idle (how many it has pooled depends on the last burst, a
restarted upstream's queued requests for one).
"""
SESSION_COOKIE = "oidcproxy"
KEYS_PER_SESSION = 3
"""Redis keys per live session: the session, its subject's index, its sid's index."""


def say(text: str) -> None:
    sys.stderr.write(time.strftime("%H:%M:%S ") + text + "\n")
    sys.stderr.flush()


def duration(text: str) -> float:
    """C{"30m"}, C{"90s"}, C{"1h"} or plain seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    if text and text[-1] in units:
        return float(text[:-1]) * units[text[-1]]
    return float(text)


# -- processes ---------------------------------------------------------------------


class FdChild(bench.Child):
    """A bench child that inherits a listening socket (the upstream app on a fixed port)."""

    def __init__(self, name: str, args: Sequence[str], workdir: str, fd: int) -> None:
        self.name = name
        self.args = list(args)
        self.log_path = os.path.join(workdir, f"{name}.log")
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(
                self.args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=workdir, env=bench.child_env(source_tree=False), start_new_session=True,
                pass_fds=(fd,))


class Upstream:
    """The upstream app on a fixed port: killed and started again by the fault schedule."""

    def __init__(self, children: bench.Children, workdir: str) -> None:
        self.children = children
        self.workdir = workdir
        self.port = bench.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.child: Optional[bench.Child] = None

    def start(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", self.port))
            listener.listen(512)
            fd = listener.fileno()
            child = FdChild("upstream", [sys.executable, UPSTREAM_APP, "--fd", str(fd)],
                            self.workdir, fd)
        finally:
            listener.close()
        self.children.started.append(child)
        self.child = child
        bench.wait_for(lambda: bench.reachable(self.url + "/echo"), 20, "the upstream app", child)

    def kill(self) -> None:
        if self.child is not None and self.child.process.poll() is None:
            self.child.process.kill()
            self.child.process.wait(5)


class Redis:
    """A redis-server with an append-only file synced on every write."""

    def __init__(self, children: bench.Children, workdir: str) -> None:
        self.children = children
        self.dir = os.path.join(workdir, "redis")
        os.makedirs(self.dir)
        self.port = bench.free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        self.child: Optional[bench.Child] = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        child = self.children.start(f"redis-{self.starts}", [
            shutil.which("redis-server") or "/usr/bin/redis-server", "--port", str(self.port),
            "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes", "--appendfsync", "always",
            "--dir", self.dir])
        bench.wait_for(lambda: "Ready to accept connections" in child.output(), 20,
                       "redis-server", child)
        self.child = child

    def signal(self, sig: int) -> None:
        assert self.child is not None
        os.kill(self.child.pid, sig)

    def kill(self) -> None:
        if self.child is not None and self.child.process.poll() is None:
            self.child.process.kill()
            self.child.process.wait(5)

    def command(self, *args: str) -> str:
        """One command through redis-cli; its output ("" when Redis does not answer in 2 s)."""
        try:
            result = subprocess.run(
                [shutil.which("redis-cli") or "/usr/bin/redis-cli", "-p", str(self.port), *args],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                timeout=2, check=False)
        except subprocess.TimeoutExpired:
            return ""
        return result.stdout.decode("utf-8", "replace").strip()


def start_op(children: bench.Children, redirect_uri: str, client_secret: str) -> str:
    args = [shutil.which("node") or "node", bench.OP_SCRIPT, "--port=0",
            f"--client-id={bench.CLIENT_ID}", f"--client-secret={client_secret}",
            f"--redirect-uri={redirect_uri}", "--test-hooks",
            f"--access-token-ttl={ACCESS_TOKEN_TTL}", f"--session-ttl={SESSION_LIFETIME}"]
    child = children.start("op", args)
    port = bench.wait_for(lambda: bench.port_line(child), 20, "the OP's PORT line", child)
    return f"http://127.0.0.1:{port}"


def proxy_config(port: int, issuer: str, client_secret: str, upstream: str, redis_url: str,
                 jwks_file: str) -> str:
    text = f"""\
listen = ["tcp:{port}:interface=127.0.0.1"]
public_url = "http://127.0.0.1:{port}"

[oidc]
issuer = "{issuer}"
client_id = "{bench.CLIENT_ID}"
client_secret = "{client_secret}"
scopes = ["openid", "email", "profile", "groups"]
timeout = "{IDP_TIMEOUT}s"

[session]
store = "redis"
secrets = ["{secrets.token_urlsafe(32)}"]
lifetime = "{SESSION_LIFETIME}s"
refresh_leeway = "{ACCESS_TOKEN_TTL // 2}s"

[redis]
url = "{redis_url}/0"
command_timeout = "1s"
connect_timeout = "1s"

[bearer]
issuer = "{bench.BEARER_ISSUER}"
audiences = ["{bench.BEARER_AUDIENCE}"]
jwks_file = "{jwks_file}"

[headers]
X-Forwarded-User = ["preferred_username", "sub"]
"""
    for path, auth in (("/public", "none"), ("/api", "bearer"), ("/", "session")):
        text += (f'\n[[routes]]\npath = "{path}"\nupstream = "{upstream}"\nauth = "{auth}"\n'
                 f'replace_prefix = "/echo"\ntimeout = "5s"\n'
                 f'max_idle_connections = {MAX_IDLE_UPSTREAM}\n')
    return text


# -- the workload -------------------------------------------------------------------


class Users:
    """The live sessions: user name -> Cookie header value, oldest first."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.live: collections.OrderedDict[str, str] = collections.OrderedDict()
        self.next = 1

    def new_name(self) -> str:
        with self.lock:
            name = f"user{self.next}"
            self.next += 1
            return name

    def add(self, user: str, cookie: str) -> None:
        with self.lock:
            self.live[user] = cookie

    def pick(self) -> Optional[Tuple[str, str]]:
        with self.lock:
            if not self.live:
                return None
            user = random.choice(list(self.live))
            return user, self.live[user]

    def oldest(self) -> Optional[Tuple[str, str]]:
        with self.lock:
            if not self.live:
                return None
            user, cookie = self.live.popitem(last=False)
            return user, cookie

    def count(self) -> int:
        with self.lock:
            return len(self.live)

    def snapshot(self) -> List[Tuple[str, str]]:
        with self.lock:
            return list(self.live.items())


class Tally:
    """Status codes and findings, per sampling interval and in total."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.interval: Dict[str, int] = collections.Counter()
        self.total: Dict[str, int] = collections.Counter()
        self.lost: List[str] = []
        self.mixed: List[str] = []
        self.errors: List[str] = []

    def count(self, kind: str, status: Any) -> None:
        key = f"{kind}:{status}"
        with self.lock:
            self.interval[key] += 1
            self.total[key] += 1

    def take_interval(self) -> Dict[str, int]:
        with self.lock:
            taken = dict(self.interval)
            self.interval = collections.Counter()
            return taken

    def finding(self, which: List[str], text: str) -> None:
        with self.lock:
            if len(which) < 50:
                which.append(text)
            else:
                which[-1] = f"(and more) {text}"


def identity(body: bytes) -> List[str]:
    try:
        echo = json.loads(body)
    except ValueError:
        return []
    return [v for n, v in echo.get("headers", []) if n.lower() == "x-forwarded-user"]


class Workload:
    def __init__(self, proxy_url: str, bearer: str, users: Users, tally: Tally) -> None:
        self.proxy = proxy_url
        self.bearer = bearer
        self.users = users
        self.tally = tally

    def browse(self) -> None:
        picked = self.users.pick()
        if picked is None:
            return self.login()
        user, cookie = picked
        status, _, body = bench.http_get(self.proxy + f"/app/{user}",
                                         {"Accept": "application/json", "Cookie": cookie})
        self.tally.count("browse", status)
        if status == 200:
            seen = identity(body)
            if seen != [user]:
                self.tally.finding(self.tally.mixed, f"{user} saw {seen}")
        elif status in (302, 401) and user in dict(self.users.snapshot()):
            self.tally.finding(self.tally.lost, f"{user}: {status}")
        elif status == 500:
            self.tally.finding(self.tally.errors, f"browse {user}: 500 {body[:200]!r}")
        return None

    def api(self) -> None:
        status, _, body = bench.http_get(self.proxy + "/api/x",
                                         {"Authorization": f"Bearer {self.bearer}"})
        self.tally.count("api", status)
        if status == 200 and identity(body) != ["bench-client"]:
            self.tally.finding(self.tally.mixed, f"bearer saw {identity(body)}")

    def public(self) -> None:
        status, _, _ = bench.http_get(self.proxy + "/public/x")
        self.tally.count("public", status)

    def login(self) -> None:
        if self.users.count() >= LIVE_USERS:
            self.logout()
        user = self.users.new_name()
        b = browser.Browser()
        try:
            b.login(self.proxy + f"/app/{user}", user)
            self.tally.count("login", 200)
        except browser.LoginFailed as e:
            text = str(e)
            self.tally.count("login", text.split(" ended with ")[-1][:3]
                             if " ended with " in text else "failed")
        finally:
            b.close()
        # A login whose last page failed (a 502 while the upstream is away)
        # may still have been committed: the browser holds a session then.
        if any(name == SESSION_COOKIE for name, _ in b.cookies.get(self.proxy, {})):
            self.users.add(user, b.cookie_header(self.proxy + "/") or "")

    def logout(self) -> None:
        picked = self.users.oldest()
        if picked is None:
            return
        user, cookie = picked
        import http.client

        connection = http.client.HTTPConnection("127.0.0.1", int(self.proxy.rsplit(":", 1)[1]),
                                                timeout=5)
        try:
            connection.request("POST", "/oidc/logout", body=b"",
                               headers={"Cookie": cookie, "Origin": self.proxy,
                                        "Content-Type": "application/x-www-form-urlencoded"})
            status = connection.getresponse().status
        finally:
            connection.close()
        self.tally.count("logout", status)
        if status not in (302, 303):
            self.users.add(user, cookie)  # still live: try again later

    def run_one(self, kind: str) -> None:
        try:
            getattr(self, kind)()
        except (OSError, browser.LoginFailed) as e:
            self.tally.count(kind, type(e).__name__)


# -- faults --------------------------------------------------------------------------


class Faults:
    """The schedule: one fault every C{every} seconds, in turn."""

    def __init__(self, redis: Redis, upstream: Upstream, issuer: str) -> None:
        self.redis = redis
        self.upstream = upstream
        self.issuer = issuer
        self.log: List[Tuple[float, str]] = []

    def op_hook(self, path: str) -> None:
        bench.http_get(f"{self.issuer}/__test__/{path}")

    def schedule(self) -> List[Tuple[str, Callable[[], None]]]:
        return [
            ("redis SIGSTOP 3s", self.redis_hung),
            ("upstream SIGKILL + restart", self.upstream_killed),
            ("OP token endpoint stalls 5s", self.token_stall),
            ("redis SIGKILL + restart", self.redis_killed),
        ]

    def redis_hung(self) -> None:
        self.redis.signal(signal.SIGSTOP)
        time.sleep(3)
        self.redis.signal(signal.SIGCONT)

    def redis_killed(self) -> None:
        self.redis.kill()
        time.sleep(1)
        self.redis.start()

    def upstream_killed(self) -> None:
        self.upstream.kill()
        time.sleep(1)
        self.upstream.start()

    def token_stall(self) -> None:
        self.op_hook("token-stall?seconds=5")
        time.sleep(5)
        self.op_hook("token-stall?seconds=0")


# -- sampling ------------------------------------------------------------------------


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def fd_kinds(pid: int) -> Dict[str, int]:
    """Open file descriptors by kind (socket, pipe, anon_inode, file)."""
    kinds: Dict[str, int] = collections.Counter()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            kinds[target.split(":")[0] if ":" in target else "file"] += 1
    except OSError:
        pass
    return dict(kinds)


TCP_STATES = {"01": "ESTABLISHED", "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT",
              "04": "FIN_WAIT1", "05": "FIN_WAIT2", "09": "LAST_ACK", "0A": "LISTEN"}


def socket_peers(pid: int, names: Dict[int, str]) -> Dict[str, int]:
    """
    The TCP sockets of C{pid} by what they are connected to (C{names}: port
    -> name, remote ports first, then local: a listening or accepted socket).
    """
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        return {}
    peers: Dict[str, int] = collections.Counter()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[9] not in inodes:
                continue
            local = int(fields[1].rsplit(":", 1)[1], 16)
            remote = int(fields[2].rsplit(":", 1)[1], 16)
            name = names.get(remote) or (names.get(local, "?") + "<-") if remote else "listening"
            state = TCP_STATES.get(fields[3], fields[3])
            peers[name if state == "ESTABLISHED" or not remote else f"{name} {state}"] += 1
    return dict(peers)


def health_latency(url: str, probes: int = 3) -> float:
    """The slowest of a few /oidc/health requests, in ms (the reactor's lag, roughly)."""
    worst = 0.0
    for _ in range(probes):
        started = time.perf_counter()
        try:
            bench.http_get(url + "/oidc/health", timeout=5)
        except OSError:
            return 5000.0
        worst = max(worst, (time.perf_counter() - started) * 1000)
    return worst


def redis_keys(redis: Redis) -> Tuple[Optional[int], Optional[int]]:
    """DBSIZE and the number of session values; None when Redis does not answer."""
    size = redis.command("DBSIZE")
    sessions = redis.command("EVAL", "return #redis.call('KEYS', ARGV[1])", "0", "oidcproxy:s:*")
    return (int(size) if size.isdigit() else None,
            int(sessions) if sessions.isdigit() else None)


def keys_without_ttl(redis: Redis) -> Optional[int]:
    """How many keys would never expire (none should: everything has the session's TTL)."""
    found = redis.command("EVAL", "local n = 0 for _, k in ipairs(redis.call('KEYS', '*')) do "
                          "if redis.call('PTTL', k) < 0 then n = n + 1 end end return n", "0")
    return int(found) if found.isdigit() else None


def soak(args: argparse.Namespace, children: bench.Children, workdir: str) -> int:
    secret = secrets.token_urlsafe(24)
    redis = Redis(children, workdir)
    redis.start()
    upstream = Upstream(children, workdir)
    upstream.start()
    reserved = bench.reserve_port()
    port = int(reserved.getsockname()[1])
    proxy_url = f"http://127.0.0.1:{port}"
    issuer = start_op(children, proxy_url + "/oidc/callback", secret)
    jwks_file, bearer = bench.bearer_material(workdir)
    proxy = bench.start_proxy(children, workdir, "proxy", args.runtime, reserved,
                              proxy_config(port, issuer, secret, upstream.url, redis.url,
                                           jwks_file))
    pid = proxy.child.pid
    users, tally = Users(), Tally()
    work = Workload(proxy_url, bearer, users, tally)
    faults = Faults(redis, upstream, issuer)
    say(f"soak: proxy {proxy_url} (pid {pid}, {args.runtime}), OP {issuer}, redis {redis.url}, "
        f"upstream {upstream.url}; {args.rate:g} req/s for {args.duration:.0f}s, a fault "
        f"every {args.fault_every:.0f}s; work directory {workdir}")

    for _ in range(20):  # some sessions before the clock starts
        work.login()
    kinds = [k for k, w in WEIGHTS for _ in range(w)]
    pool = ThreadPoolExecutor(max_workers=args.threads)
    # The idle baseline of file descriptors: after a warm-up at the full
    # rate (the upstream and Redis pools fill), once the load has stopped.
    warm_until = time.monotonic() + WARMUP
    while time.monotonic() < warm_until:
        pool.submit(work.run_one, random.choice(kinds))
        time.sleep(1.0 / args.rate)
    time.sleep(IDLE)
    op_port = int(issuer.rsplit(":", 1)[1])
    names = {redis.port: "redis", upstream.port: "upstream", op_port: "op", port: "client"}
    fds_idle = open_fds(pid)
    fd_kinds_idle = fd_kinds(pid)
    peers_idle = socket_peers(pid, names)
    tally.take_interval()
    stop = threading.Event()
    samples: List[Dict[str, Any]] = []
    started = time.monotonic()
    baseline_at = min(300.0, args.duration / 3)

    def drive() -> None:
        interval = 1.0 / args.rate
        due = time.monotonic()
        while not stop.is_set():
            pool.submit(work.run_one, random.choice(kinds))
            due += interval
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    def inject() -> None:
        schedule = faults.schedule()
        i = 0
        while not stop.wait(args.fault_every):
            name, fault = schedule[i % len(schedule)]
            i += 1
            say(f"fault: {name}")
            faults.log.append((time.monotonic() - started, name))
            try:
                fault()
            except Exception as e:  # noqa: BLE001 - a failed fault is reported, the soak goes on
                tally.finding(tally.errors, f"fault {name} failed: {e!r}")

    threads = [threading.Thread(target=drive, daemon=True),
               threading.Thread(target=inject, daemon=True)]
    for t in threads:
        t.start()
    try:
        while time.monotonic() - started < args.duration:
            time.sleep(max(0.0, SAMPLE_EVERY - (time.monotonic() - started) % SAMPLE_EVERY))
            size, sessions = redis_keys(redis)
            sample = {
                "t": round(time.monotonic() - started),
                "rss_mb": round(bench.rss_mb(pid), 1),
                "fds": open_fds(pid),
                "redis_keys": size,
                "redis_sessions": sessions,
                "live_sessions": users.count(),
                "health_ms": round(health_latency(proxy_url), 1),
                "statuses": tally.take_interval(),
            }
            samples.append(sample)
            say(f"t={sample['t']:>5}s rss={sample['rss_mb']}MB fds={sample['fds']} "
                f"redis={size}/{sessions} live={sample['live_sessions']} "
                f"health={sample['health_ms']}ms {sample['statuses']}")
            if proxy.child.process.poll() is not None:
                tally.finding(tally.errors, "the proxy died")
                break
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        pool.shutdown(wait=True)

    # Idle: connections close, file descriptors come back.
    time.sleep(IDLE)
    fds_end = open_fds(pid)
    fd_kinds_end = fd_kinds(pid)
    peers_end = socket_peers(pid, names)
    # Every live cookie once more, as its user.
    replayed = collections.Counter()
    for user, cookie in users.snapshot():
        status, _, body = bench.http_get(proxy_url + f"/app/{user}",
                                         {"Accept": "application/json", "Cookie": cookie})
        replayed[status] += 1
        if status in (302, 401):
            tally.finding(tally.lost, f"replay {user}: {status}")
        elif status == 200 and identity(body) != [user]:
            tally.finding(tally.mixed, f"replay {user} saw {identity(body)}")
    size, sessions = redis_keys(redis)
    immortal = keys_without_ttl(redis)

    rss_base = next((s["rss_mb"] for s in samples if s["t"] >= baseline_at), None)
    rss_end = samples[-1]["rss_mb"] if samples else None
    growth = (100.0 * (rss_end - rss_base) / rss_base) if rss_base and rss_end else None
    live = users.count()
    # A login whose session write timed out (Redis stopped, killed) got a
    # 503 and no cookie, but Redis may still have done the write: a session
    # nobody holds, gone at the end of its lifetime.
    unanswered = sum(n for k, n in tally.total.items()
                     if k.startswith("login:") and k != "login:200")
    key_limit = KEYS_PER_SESSION * (live + unanswered) + 10
    fds_pooled = peers_end.get("upstream", 0)
    fds_other_end = fds_end - fds_pooled
    fds_other_idle = fds_idle - peers_idle.get("upstream", 0)
    totals = dict(sorted(tally.total.items()))
    verdict = [
        (f"RSS growth from t={baseline_at:.0f}s to the end < 5%",
         growth is not None and growth < 5.0,
         f"{rss_base} MB -> {rss_end} MB ({growth:+.1f}%)" if growth is not None else "n/a"),
        (f"file descriptors back to the idle baseline (+{FD_SLACK}), pooled upstream "
         f"connections at most max_idle_connections ({MAX_IDLE_UPSTREAM})",
         0 <= fds_other_end <= fds_other_idle + FD_SLACK and fds_pooled <= MAX_IDLE_UPSTREAM,
         f"idle after the warm-up {fds_idle} {fd_kinds_idle} {peers_idle}, idle after the "
         f"load {fds_end} {fd_kinds_end} {peers_end}"),
        ("Redis keys bounded by live sessions, every key with a TTL",
         size is not None and size <= key_limit and sessions is not None
         and sessions <= live + unanswered and immortal == 0,
         f"{size} keys, {sessions} session values, {live} live sessions, {unanswered} "
         f"logins without an answer (limit {key_limit} keys), {immortal} keys without TTL"),
        ("0 lost", not tally.lost, f"{len(tally.lost)} {tally.lost[:5]}"),
        ("0 mixed", not tally.mixed, f"{len(tally.mixed)} {tally.mixed[:5]}"),
        ("no 500, no other error", not tally.errors
         and not any(k.endswith(":500") for k in totals),
         f"{tally.errors[:5]}"),
    ]
    print(f"\nsoak: {args.duration:.0f}s at {args.rate:g} req/s on {args.runtime}; "
          f"faults {[name for _, name in faults.log]}")
    print(f"requests by kind:status: {totals}")
    print(f"final replay of {live} live sessions: {dict(replayed)}")
    print("health latency (ms) max per sample: "
          + " ".join(str(s["health_ms"]) for s in samples))
    print("RSS (MB) per sample: " + " ".join(str(s["rss_mb"]) for s in samples))
    print("FDs per sample: " + " ".join(str(s["fds"]) for s in samples))
    for name, ok, detail in verdict:
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"samples": samples, "faults": faults.log, "totals": totals,
                       "verdict": [(n, ok, d) for n, ok, d in verdict]}, f, indent=2)
            f.write("\n")
    return 0 if all(ok for _, ok, _ in verdict) else 1


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=duration, default=1800.0,
                        help="how long the load runs: 30m (default), 180s, 1h")
    parser.add_argument("--rate", type=float, default=40.0, help="requests per second (40)")
    parser.add_argument("--fault-every", type=duration, default=60.0,
                        help="seconds between faults (60)")
    parser.add_argument("--threads", type=int, default=16, help="client threads (16)")
    parser.add_argument("--runtime", choices=sorted(bench.RUNTIME_PYTHONS), default="cpython")
    parser.add_argument("--json", help="write the samples and the verdict there")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    workdir = tempfile.mkdtemp(prefix="oidcproxy-soak-")
    children = bench.Children(workdir)
    status = 1

    def terminated(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminated)
    try:
        status = soak(args, children, workdir)
    except bench.BenchError as e:
        say(f"soak: {e}")
    except KeyboardInterrupt:
        say("soak: interrupted")
        status = 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        children.stop_all()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if args.keep or status != 0:
            say(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
