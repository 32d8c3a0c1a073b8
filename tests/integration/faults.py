"""
The pieces the fault-matrix tests (C{test_faults_*}, C{test_nothing_lost})
share: small misbehaving TCP servers, a stack of real processes (the OP,
the upstream app, a redis-server and one or more C{twistd oidcproxy}), many
logins at once, and the check that every session still reaches the
upstream as its own user.

The misbehaving servers run in the test's own reactor on free loopback
ports and are stopped at cleanup:
  - L{Blackhole}: accepts connections and never answers (nor reads);
  - L{Drip}: answers every request with a valid HTTP response, sent one
    byte per C{interval} (all of it, or only the body);
  - L{Resetter}: reads the request and resets the connection (RST).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from typing import Any, Awaitable, Callable, Dict, List, Optional, Sequence, Tuple
from urllib.parse import urljoin

import attr
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, DeferredSemaphore, FirstError, gatherResults
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.trial.unittest import TestCase

from tests.integration import procs
from tests.integration.redis_server import RedisServer, start_redis
from tests.integration.stack import (
    API,
    NAVIGATE,
    PROTECTED,
    OpenIDProvider,
    WebClient,
    browse,
    fill_login,
    header_values,
    location_of,
    parse_forms,
    proxy_config,
    require_op,
    reserve_port,
    session_secrets,
    start_op,
    start_proxy,
)

log = Logger()
reactor: Any = _reactor

COOKIE = "oidcproxy"


def report(module: str, text: str) -> None:
    """A figure for the CI log: one C{FAULTS <module> ...} line on stderr."""
    sys.stderr.write(f"\nFAULTS {module} {text}\n")
    sys.stderr.flush()
    log.info("FAULTS {module} {text}", module=module, text=text)


async def concurrently(calls: Sequence[Awaitable[Any]], limit: Optional[int] = None) -> List[Any]:
    """Run the coroutines C{calls}, at most C{limit} at a time; their results in order."""
    semaphore = DeferredSemaphore(limit or max(1, len(calls)))

    def run(call: Awaitable[Any]) -> Deferred:
        start: Callable[[], Deferred] = lambda: Deferred.fromCoroutine(call)  # type: ignore[arg-type]  # noqa: E731
        return semaphore.run(start)

    try:
        return await gatherResults([run(c) for c in calls], consumeErrors=True)
    except FirstError as e:  # unwrapped: the failure itself, an allowed skip stays a skip
        e.subFailure.raiseException()
        raise


def open_fds(pid: int) -> int:
    """How many file descriptors process C{pid} has open (C{/proc/PID/fd})."""
    return len(os.listdir(f"/proc/{pid}/fd"))


# -- misbehaving servers ---------------------------------------------------------


class _Server:
    """A listening port in this reactor with the connections it accepted."""

    def __init__(self, testcase: TestCase, protocol: type, **settings: Any) -> None:
        self.connections: List[Any] = []
        server = self

        class _Factory(Factory):
            def buildProtocol(self, addr: Any) -> Any:
                p = protocol(**settings)
                p.factory = self
                server.connections.append(p)
                return p

        self.port: Any = reactor.listenTCP(0, _Factory(), interface="127.0.0.1")
        self.number = self.port.getHost().port
        self.url = f"http://127.0.0.1:{self.number}"
        testcase.addCleanup(self.stop)

    @property
    def accepted(self) -> int:
        return len(self.connections)

    async def stop(self) -> None:
        for p in self.connections:
            stop = getattr(p, "stop", None)
            if stop is not None:
                stop()
            if p.transport is not None and p.transport.connected:
                p.transport.abortConnection()
        await self.port.stopListening()


class _Silent(Protocol):
    transport: Any
    def connectionMade(self) -> None:
        # Never read either: what the peer sends stays in its buffers.
        self.transport.pauseProducing()


class Blackhole(_Server):
    """Accepts every connection and never reads from it nor answers."""

    def __init__(self, testcase: TestCase) -> None:
        super().__init__(testcase, _Silent)


class _Dripping(Protocol):
    transport: Any

    def __init__(self, body: bytes, interval: float, head_at_once: bool) -> None:
        self._body = body
        self._interval = interval
        self._head_at_once = head_at_once
        self._loop: Optional[LoopingCall] = None
        self._pending = b""
        self._received = b""

    def dataReceived(self, data: bytes) -> None:
        self._received += data
        if self._loop is not None or b"\r\n\r\n" not in self._received:
            return
        head = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(self._body))
        if self._head_at_once:
            self.transport.write(head)
            self._pending = self._body
        else:
            self._pending = head + self._body
        self._loop = LoopingCall(self._drip)
        self._loop.clock = reactor
        self._loop.start(self._interval, now=not self._head_at_once)

    def _drip(self) -> None:
        if not self._pending:
            self.stop()
            self.transport.loseConnection()
            return
        self.transport.write(self._pending[:1])
        self._pending = self._pending[1:]

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def connectionLost(self, reason: Any = None) -> None:
        self.stop()


class Drip(_Server):
    """
    Answers each request with C{200} and C{body}, one byte every
    C{interval} seconds: the whole response, or only the body when
    C{head_at_once}.
    """

    def __init__(self, testcase: TestCase, body: bytes, interval: float = 1.0,
                 head_at_once: bool = True) -> None:
        super().__init__(testcase, _Dripping, body=body, interval=interval,
                         head_at_once=head_at_once)


class _Resetting(Protocol):
    transport: Any

    def dataReceived(self, data: bytes) -> None:
        # abortConnection closes with SO_LINGER 0: the peer gets an RST.
        self.transport.abortConnection()


class Resetter(_Server):
    """Reads the start of a request and resets the connection."""

    def __init__(self, testcase: TestCase) -> None:
        super().__init__(testcase, _Resetting)


# -- Redis from the test's side ---------------------------------------------------

DURABLE = ["--appendonly", "yes", "--appendfsync", "always"]
"""redis-server options: every acknowledged write survives a SIGKILL and a restart."""


def redis_command(server: RedisServer, *args: bytes) -> bytes:
    """
    One command to C{server} on a short-lived blocking connection (a few
    milliseconds on loopback); its raw reply line(s).
    """
    request = b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)
    with socket.create_connection((server.host, server.port), timeout=5) as s:
        s.sendall(request)
        reply = b""
        while not _whole_reply(reply):
            chunk = s.recv(65536)
            if not chunk:
                break
            reply += chunk
    return reply


def _whole_reply(reply: bytes) -> bool:
    """Whether C{reply} is a whole simple, error, integer or bulk-string reply."""
    first, sep, rest = reply.partition(b"\r\n")
    if not sep:
        return False
    if first.startswith(b"$") and int(first[1:]) >= 0:
        return len(rest) >= int(first[1:]) + 2
    return True


def session_keys(server: RedisServer) -> int:
    """How many session values Redis holds (C{oidcproxy:s:*})."""
    reply = redis_command(server, b"EVAL",
                          b"return #redis.call('KEYS', 'oidcproxy:s:*')", b"0")
    assert reply.startswith(b":"), reply
    return int(reply[1:].strip())


def session_keys_without_expiry(server: RedisServer) -> int:
    """How many session values in Redis have no time to live (would never expire)."""
    reply = redis_command(server, b"EVAL",
                          b"local n = 0 "
                          b"for _, k in ipairs(redis.call('KEYS', 'oidcproxy:s:*')) do "
                          b"if redis.call('TTL', k) < 0 then n = n + 1 end end "
                          b"return n", b"0")
    assert reply.startswith(b":"), reply
    return int(reply[1:].strip())


async def fill_until_oom(server: RedisServer, limit: int = 100_000) -> int:
    """
    Write junk values until Redis (with C{--maxmemory} and C{noeviction})
    refuses even a small write with OOM; how many it took. (Redis counts a
    command's own arguments: a write smaller than the last refused one may
    still fit, so the values get smaller each time one is refused.)
    """
    written = 0
    for size in (100_000, 10_000, 1_000, 100, 10):
        while True:
            if written >= limit:
                raise AssertionError(f"redis-server took {limit} junk values without an OOM")
            reply = redis_command(server, b"SET", b"junk:%d" % written, b"x" * size)
            if reply.startswith(b"-OOM"):
                break
            assert reply.startswith(b"+OK"), reply
            written += 1
    # Right at the limit, a connection that closes frees enough for the
    # next small write: lower the limit under what is used, so every write
    # is refused until L{free_junk}.
    info = redis_command(server, b"INFO", b"memory")
    used = int(info.split(b"used_memory:")[1].split(b"\r\n")[0])
    reply = redis_command(server, b"CONFIG", b"SET", b"maxmemory", b"%d" % (used // 2))
    assert reply.startswith(b"+OK"), reply
    return written


async def free_junk(server: RedisServer, maxmemory: bytes = b"0") -> None:
    """Delete the junk values and set C{maxmemory} (0: none): Redis takes writes again."""
    reply = redis_command(server, b"CONFIG", b"SET", b"maxmemory", maxmemory)
    assert reply.startswith(b"+OK"), reply
    reply = redis_command(server, b"EVAL",
                          b"for _, k in ipairs(redis.call('KEYS', 'junk:*')) do "
                          b"redis.call('DEL', k) end return 1", b"0")
    assert reply.startswith(b":1"), reply


# -- an upstream app that can be killed and started again on its port -------------


class RestartableUpstream:
    """
    The upstream app (L{procs.UPSTREAM_APP}) on a fixed port: L{kill} it
    (SIGKILL) and L{start} it again on the same port.
    """

    def __init__(self, testcase: TestCase) -> None:
        self._testcase = testcase
        self.port = procs.refused_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.child: Optional[procs.Child] = None
        self.starts = 0

    async def start(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", self.port))
            listener.listen(128)
            fd = listener.fileno()
            self.starts += 1
            workdir = os.path.abspath(self._testcase.mktemp())
            child = procs.Child(f"upstream-{self.starts}",
                                [sys.executable, procs.UPSTREAM_APP, "--fd", str(fd)],
                                workdir, pass_fds=(fd,))
        finally:
            listener.close()
        self.child = child
        self._testcase.addCleanup(child.stop)
        await procs.Upstream(child, self.port).wait_ready()

    async def kill(self) -> None:
        if self.child is not None and self.child.process.poll() is None:
            self.child.process.kill()
            await self.child.wait(procs.STOP_GRACE)


# -- the stack ---------------------------------------------------------------------


@attr.s(auto_attribs=True)
class FaultStack:
    """The OP (with its test hooks), the upstream, maybe a redis-server, and the proxies."""

    op: OpenIDProvider
    upstream: procs.Upstream
    redis: Optional[RedisServer]
    proxies: List[procs.Proxy]
    public_url: str

    @property
    def proxy(self) -> procs.Proxy:
        return self.proxies[0]

    def describe(self) -> str:
        children = [self.op.child, self.upstream.child] + [p.child for p in self.proxies]
        if self.redis is not None and self.redis.child is not None:
            children.append(self.redis.child)
        return "\n".join(c.describe() for c in children)

    async def op_hook(self, testcase: TestCase, path: str) -> Dict[str, Any]:
        """Call one of the OP's fault-test hooks (C{"token-stall?seconds=3"})."""
        client = WebClient(testcase)
        response, body = await client.request("GET", f"{self.op.issuer}/__test__/{path}",
                                              keep_cookies=False)
        if response.code != 200:
            raise AssertionError(f"OP hook {path}: {response.code} {body[:200]!r}")
        result: Dict[str, Any] = json.loads(body)
        return result


def _with_oidc_settings(config: str, oidc: Dict[str, Any]) -> str:
    """Add C{oidc} keys to the C{[oidc]} table of a L{proxy_config} text."""
    extra = "".join(f"{key} = {procs.toml_value(value)}\n" for key, value in oidc.items())
    marker = "pkce = true\n"
    assert config.count(marker) == 1
    return config.replace(marker, marker + extra)


async def start_fault_stack(testcase: TestCase, *, proxies: int = 1,
                            redis: Optional[Sequence[str]] = None,
                            session: Optional[Dict[str, Any]] = None,
                            oidc: Optional[Dict[str, Any]] = None,
                            redis_table: Optional[Dict[str, Any]] = None,
                            **op_options: Any) -> FaultStack:
    """
    Start the OP with its test hooks (C{op_options} go to L{start_op}), the
    upstream app, a redis-server when C{redis} is given (its extra
    command-line options; sessions then live there) and C{proxies} proxies
    sharing one C{public_url} (the first one's) and the session secrets.
    C{session}, C{oidc}, C{redis_table}: more keys for those tables.
    """
    require_op()
    reserved = [reserve_port() for _ in range(proxies)]
    try:
        ports = [r.getsockname()[1] for r in reserved]
        public_url = f"http://127.0.0.1:{ports[0]}"
        upstream = procs.spawn_upstream(testcase)
        op = await start_op(testcase, [public_url + "/oidc/callback"], [public_url + "/"],
                            test_hooks=True, **op_options)
        server = None
        if redis is not None:
            server = await start_redis(testcase, *redis)
        await upstream.wait_ready()
        secrets = session_secrets()
        session_table = dict(session or {})
        redis_settings = None
        if server is not None:
            session_table.setdefault("store", "redis")
            redis_settings = {"url": server.url + "/0", "command_timeout": "1s",
                              "connect_timeout": "1s", **(redis_table or {})}
        started = []
        for r, port in zip(reserved, ports):
            config = proxy_config(port, op, upstream, public_url=public_url,
                                  shared_secrets=secrets, session=session_table,
                                  redis=redis_settings)
            if oidc:
                config = _with_oidc_settings(config, oidc)
            started.append(start_proxy(testcase, r, config))
        running = await concurrently(started)
    finally:
        for r in reserved:
            r.close()
    return FaultStack(op, upstream, server, running, public_url)


async def launch_proxy(testcase: TestCase, reserved: socket.socket, config: str) -> procs.Proxy:
    """
    Start C{twistd -n oidcproxy} on the reserved port and wait until it
    listens only (not for the IdP: L{start_proxy} waits for a login redirect).
    """
    port = reserved.getsockname()[1]
    workdir = os.path.abspath(testcase.mktemp())
    os.makedirs(workdir)
    config_path = os.path.join(workdir, "oidcproxy.toml")
    with open(config_path, "w", encoding="utf-8") as f:
        f.write(config)
    port_file = os.path.join(workdir, "proxy.port")
    reserved.close()
    child = procs.Child("proxy", procs.twistd_command() + [
        "-n", "--pidfile=", "oidcproxy", "--config", config_path, "--port-file", port_file,
    ], workdir)
    testcase.addCleanup(child.stop)

    def listening() -> Optional[bool]:
        if os.path.exists(port_file):
            return True
        if child.process.poll() is not None:
            raise AssertionError(f"the proxy died at start\n{child.describe()}")
        return None

    await procs.poll(listening, procs.START_DEADLINE, what="the proxy's port file")
    return procs.Proxy(child, port, config_path)


# -- users, logins and replays -----------------------------------------------------


def user_name(i: int) -> str:
    return f"user{i + 1}"


@attr.s(auto_attribs=True)
class LoggedIn:
    user: str
    cookie: str


async def log_in(testcase: TestCase, stack: FaultStack, user: str,
                 proxy: Optional[procs.Proxy] = None) -> LoggedIn:
    """Log C{user} in through C{proxy} (default: the first) and the OP's forms."""
    proxy = proxy or stack.proxy
    client = WebClient(testcase)
    response, body, final_url, _ = await browse(client, proxy.url + PROTECTED, fill_login(user))
    if response.code != 200:
        raise AssertionError(f"login of {user}: {response.code} {body[:300]!r}\n{client.history}")
    echo = json.loads(body)
    seen = header_values(echo, "x-forwarded-user")
    if seen != [user]:
        raise AssertionError(f"login of {user}: the upstream saw {seen}")
    cookie = client.jar.value(proxy.url, COOKIE)
    if cookie is None:
        raise AssertionError(f"login of {user}: no session cookie\n{client.history}")
    return LoggedIn(user, cookie)


async def try_log_in(testcase: TestCase, stack: FaultStack, user: str,
                     proxy: Optional[procs.Proxy] = None) -> Tuple[Optional[LoggedIn], int]:
    """
    Log C{user} in while something may be failing: the session (when the
    proxy set its cookie: the login was committed) and the final status.
    """
    proxy = proxy or stack.proxy
    client = WebClient(testcase)
    response, _, _, _ = await browse(client, proxy.url + PROTECTED, fill_login(user))
    cookie = client.jar.value(proxy.url, COOKIE)
    return (LoggedIn(user, cookie) if cookie is not None else None), response.code


async def until_callback(client: WebClient, url: str, user: str, max_steps: int = 20) -> str:
    """
    Walk a login like L{browse} up to the redirect to the proxy's callback;
    the callback URL (not requested).
    """
    fill = fill_login(user)
    method, data = "GET", None
    for _ in range(max_steps):
        response, body = await client.request(method, url, headers=NAVIGATE, data=data)
        if response.code in (301, 302, 303, 307, 308):
            url = location_of(response, url)
            method, data = "GET", None
            if "/oidc/callback?" in url:
                return url
            continue
        forms = parse_forms(body) if response.code == 200 else []
        if not forms:
            raise AssertionError(f"no callback: {response.code} {body[:300]!r}\n{client.history}")
        url = urljoin(url, forms[0].action)
        method, data = forms[0].method, fill(forms[0])
    raise AssertionError(f"no callback after {max_steps} steps: {client.history}")


async def log_in_many(testcase: TestCase, stack: FaultStack, count: int,
                      parallel: int = 8) -> List[LoggedIn]:
    """Log in C{user1} .. C{user<count>}, C{parallel} at a time."""
    return await concurrently([log_in(testcase, stack, user_name(i)) for i in range(count)],
                              limit=parallel)


async def api_get(client: WebClient, proxy: procs.Proxy, cookie: str, path: str = "/some/api",
                  navigate: bool = False) -> Tuple[Any, bytes]:
    """A GET with the session cookie only: an API call, or a navigation."""
    headers = dict(NAVIGATE if navigate else API)
    headers["Cookie"] = f"{COOKIE}={cookie}"
    return await client.request("GET", proxy.url + path, headers=headers, keep_cookies=False)


def identity_of(body: bytes) -> List[str]:
    """The X-Forwarded-User values the upstream's echo received."""
    try:
        echo = json.loads(body)
    except ValueError:
        return []
    return header_values(echo, "x-forwarded-user")


@attr.s(auto_attribs=True)
class Replay:
    """What a replay of every cookie found."""

    served: int = 0
    lost: List[Tuple[str, int]] = attr.Factory(list)
    """(user, status): a login redirect or a 401: the session is gone."""
    mixed: List[Tuple[str, List[str]]] = attr.Factory(list)
    """(user, identity seen): another user's identity."""
    other: List[Tuple[str, int]] = attr.Factory(list)
    """(user, status): anything else (a 503 while a dependency is down, ...)."""
    statuses: Dict[int, int] = attr.Factory(dict)

    def summary(self) -> str:
        return (f"served {self.served}, lost {len(self.lost)}, mixed {len(self.mixed)}, "
                f"other {len(self.other)}, statuses {dict(sorted(self.statuses.items()))}")


async def replay(testcase: TestCase, proxies: Sequence[procs.Proxy], sessions: Sequence[LoggedIn],
                 parallel: int = 20, navigate: bool = False) -> Replay:
    """
    Send every session's cookie (round robin over C{proxies}) and compare the
    identity the upstream receives with the session's user.
    """
    client = WebClient(testcase)
    result = Replay()

    async def one(i: int, s: LoggedIn) -> None:
        proxy = proxies[i % len(proxies)]
        response, body = await api_get(client, proxy, s.cookie, navigate=navigate,
                                       path=f"/some/api?u={s.user}")
        result.statuses[response.code] = result.statuses.get(response.code, 0) + 1
        if response.code == 200:
            seen = identity_of(body)
            if seen == [s.user]:
                result.served += 1
            else:
                result.mixed.append((s.user, seen))
        elif response.code in (302, 401):
            result.lost.append((s.user, response.code))
        else:
            result.other.append((s.user, response.code))

    await concurrently([one(i, s) for i, s in enumerate(sessions)], limit=parallel)
    return result


async def until_serving(client: WebClient, proxy: procs.Proxy, cookie: str,
                        timeout: float = 15.0) -> float:
    """Poll with C{cookie} until the proxy answers 200; the seconds it took."""
    started = time.monotonic()

    async def ok() -> Optional[bool]:
        response, _ = await api_get(client, proxy, cookie)
        return True if response.code == 200 else None

    await procs.poll_async(ok, timeout, interval=0.2, what="the proxy to serve the session again")
    return time.monotonic() - started
