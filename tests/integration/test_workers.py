"""
Several worker processes (C{workers = N}), graceful shutdown and start-up
failures, with the proxy as a real C{twistd} process.

The parent binds the listener and starts the workers; the tests see both
workers answer (C{/oidc/health} names the worker), kill one and see it
replaced, send SIGTERM while a request is in flight and see it finish, and
log in through the real OP with two workers serving the session.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from typing import Dict, List, Optional, Set

from treq.client import HTTPClient
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from tests.fakes import SECRET
from tests.integration import procs, stack


def worker_pids(parent: int) -> List[int]:
    """The pids of the worker processes of the proxy C{parent}."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", encoding="ascii", errors="replace") as f:
                stat = f.read()
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        # The command may contain spaces and parentheses: the fields after
        # the last ')' are fixed; the ppid is the second of them.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and b"oidcproxy.workers" in cmdline:
            found.append(int(name))
    return sorted(found)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


STOPPED_BY_SIGTERM = (0, -signal.SIGTERM)
"""twistd ends by re-raising the SIGTERM that stopped it; systemd counts that as a clean stop."""


class WorkersTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        # Every request on a connection of its own: the kernel hands each new
        # connection to whichever worker accepts first.
        self.pool = HTTPConnectionPool(procs.reactor, persistent=False)
        self.addCleanup(self.pool.closeCachedConnections)
        self.http = HTTPClient(Agent(procs.reactor, pool=self.pool, connectTimeout=5))

    async def get(self, url: str) -> Dict:
        response = await self.http.get(url, timeout=10)
        body = await response.content()
        self.assertEqual(response.code, 200, body)
        return json.loads(body)

    async def workers_seen(self, proxy: procs.Proxy, wanted: Set[int],
                           timeout: float = 15.0) -> Set[int]:
        """
        Ask /oidc/health on fresh connections until every worker in C{wanted}
        answered (a worker just started needs a moment to serve).
        """
        seen: Set[int] = set()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen.add((await self.get(proxy.url + "/oidc/health"))["worker"])
            if wanted <= seen:
                break
            await procs.sleep(0.02)
        return seen

    async def start(self, workers: int = 2, **top: object) -> procs.Proxy:
        self.upstream = await procs.start_upstream(self)
        config = procs.config_text(procs.route_config(self.upstream.url), workers=workers, **top)
        proxy = await procs.start_proxy(self, config)
        if workers > 1:
            pids = await procs.poll(lambda: worker_pids(proxy.pid) if len(
                worker_pids(proxy.pid)) == workers else None, 10, what="the workers")
            self.assertEqual(len(pids), workers)
        return proxy

    def test_both_workers_answer_and_a_dead_one_is_replaced(self) -> Deferred:
        async def run() -> None:
            proxy = await self.start(workers=2)
            self.assertEqual(await self.workers_seen(proxy, {1, 2}), {1, 2},
                             proxy.child.describe())
            before = worker_pids(proxy.pid)
            victim = before[0]
            os.kill(victim, signal.SIGKILL)

            def replaced() -> Optional[List[int]]:
                now = worker_pids(proxy.pid)
                return now if len(now) == 2 and victim not in now else None

            after = await procs.poll(replaced, 15, what="a new worker")
            self.assertNotIn(victim, after)
            self.assertIn(before[1], after)
            self.assertEqual(await self.workers_seen(proxy, {1, 2}), {1, 2})
            log = proxy.child.stdout()
            self.assertRegex(log, rf"worker \d \(pid {victim}\) died: killed by SIGKILL; restarting")
            # The parent kept serving throughout: nothing else restarted.
            self.assertIsNone(proxy.child.process.poll())
        return ensureDeferred(run())

    def test_sigterm_finishes_requests_in_flight(self) -> Deferred:
        """
        SIGTERM to the parent while a 2-second request is in flight in a
        worker: the request gets its answer, new connections are refused,
        the parent exits 0 and no worker is left behind.
        """
        async def run() -> None:
            proxy = await self.start(workers=2, drain_timeout="20s")
            pids = worker_pids(proxy.pid)
            slow = ensureDeferred(self.get(proxy.url + "/slow?s=2"))
            await self.upstream_saw("/slow?s=2")
            started = time.monotonic()
            proxy.child.process.send_signal(signal.SIGTERM)
            answer = await slow
            self.assertEqual(answer, {"slept": 2.0})
            code = await proxy.child.wait(15)
            self.assertIn(code, STOPPED_BY_SIGTERM, proxy.child.describe())
            self.assertLess(time.monotonic() - started, 10)
            self.assertEqual([p for p in pids if alive(p)], [])
            log = proxy.child.stdout()
            self.assertIn("stopped: exit status 0", log)
            self.assertNotIn("Traceback", log)
        return ensureDeferred(run())

    def test_sigterm_one_process(self) -> Deferred:
        """Graceful shutdown with one process too."""
        async def run() -> None:
            proxy = await self.start(workers=1, drain_timeout="20s")
            slow = ensureDeferred(self.get(proxy.url + "/slow?s=2"))
            await self.upstream_saw("/slow?s=2")
            proxy.child.process.send_signal(signal.SIGTERM)
            self.assertEqual(await slow, {"slept": 2.0})
            self.assertIn(await proxy.child.wait(15), STOPPED_BY_SIGTERM, proxy.child.describe())
            self.assertIn("draining 1 connection(s)", proxy.child.stdout())
        return ensureDeferred(run())

    def test_drain_timeout_cuts_what_is_left(self) -> Deferred:
        """A request that outlives drain_timeout is cut off; the proxy still exits 0 promptly."""
        async def run() -> None:
            proxy = await self.start(workers=2, drain_timeout="1s")
            hung = self.http.get(proxy.url + "/hang", timeout=30)
            await self.upstream_saw("/hang")
            started = time.monotonic()
            proxy.child.process.send_signal(signal.SIGTERM)
            failure = None
            try:
                await hung
            except Exception as e:  # noqa: BLE001 - the connection is aborted
                failure = e
            self.assertIsNotNone(failure)
            self.assertIn(await proxy.child.wait(15), STOPPED_BY_SIGTERM, proxy.child.describe())
            self.assertLess(time.monotonic() - started, 8)
            self.assertIn("drain timeout: aborting 1 connection(s)", proxy.child.stdout())
        return ensureDeferred(run())

    def test_sighup_reloads_every_worker(self) -> Deferred:
        async def run() -> None:
            proxy = await self.start(workers=2)
            with open(proxy.config_path, "a", encoding="utf-8") as f:
                f.write(procs.route_config(self.upstream.url, "/added", replace_prefix="/echo"))
            proxy.child.process.send_signal(signal.SIGHUP)

            def reloaded() -> Optional[bool]:
                log = proxy.child.stdout()
                return True if all(f"worker {n}] configuration reloaded" in log
                                   for n in (1, 2)) else None

            await procs.poll(reloaded, 10, what="both workers to reload")
            for _ in range(20):
                echo = await self.get(proxy.url + "/added/x")
                self.assertEqual(echo["path"], "/echo/x")
        return ensureDeferred(run())

    def test_metrics_summed_over_workers(self) -> Deferred:
        """The parent's /metrics counts the requests of every worker, once each."""
        async def run() -> None:
            self.upstream = await procs.start_upstream(self)
            config = procs.config_text(procs.route_config(self.upstream.url), workers=2) + \
                '\n[metrics]\nlisten = "tcp:0:interface=127.0.0.1"\n'
            proxy = await procs.start_proxy(self, config)
            port_file = os.path.join(os.path.dirname(proxy.config_path), "proxy.port")
            with open(port_file, encoding="ascii") as f:
                metrics_url = "http://" + f.read().splitlines()[1] + "/metrics"
            self.assertEqual(await self.workers_seen(proxy, {1, 2}), {1, 2})
            response = await self.http.get(metrics_url, timeout=10)
            before = (await response.content()).decode()
            for _ in range(10):
                await self.get(proxy.url + "/echo/x")
            response = await self.http.get(metrics_url, timeout=10)
            text = (await response.content()).decode()

            def value(page: str, series: str) -> float:
                for line in page.splitlines():
                    if line.startswith(series + " "):
                        return float(line.split()[-1])
                return 0.0

            series = 'oidcproxy_requests_total{route="routes[0]",status="200"}'
            self.assertEqual(value(text, series) - value(before, series), 10.0, text)
            self.assertIn("oidcproxy_websockets_open 0.0", text)
            self.assertIn("oidcproxy_worker_restarts_total 0.0", text)
        return ensureDeferred(run())

    def test_workers_exit_when_the_parent_dies(self) -> Deferred:
        """Killed parent (SIGKILL, no chance to stop them): the workers stop on their own."""
        async def run() -> None:
            proxy = await self.start(workers=2)
            pids = worker_pids(proxy.pid)
            proxy.child.process.kill()

            def gone() -> Optional[bool]:
                return True if not any(alive(p) for p in pids) else None

            await procs.poll(gone, 15, what="the workers to exit")
        return ensureDeferred(run())

    async def upstream_saw(self, uri: str) -> None:
        async def arrived() -> Optional[bool]:
            records = await self.get(self.upstream.url + "/events")
            return True if any(r["uri"] == uri for r in records) else None

        await procs.poll_async(arrived, 10, what=f"{uri} to reach the upstream")


class StartupFailureTests(TestCase):
    timeout = 60

    def start_failing(self, config: str, extra: Optional[List[str]] = None) -> procs.Child:
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        path = os.path.join(workdir, "oidcproxy.toml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(config)
        child = procs.Child("proxy", procs.twistd_command() + [
            "-n", "--pidfile=", "oidcproxy", "--config", path] + (extra or []), workdir)
        self.addCleanup(child.stop)
        return child

    def redis_config(self, port: int, workers: int) -> str:
        return procs.config_text(procs.route_config("http://127.0.0.1:9"), workers=workers) + f"""
[oidc]
issuer = "https://idp.invalid"
client_id = "proxy"
client_secret = "s"

[session]
store = "redis"
secrets = ["{SECRET}"]

[redis]
url = "redis://127.0.0.1:{port}/0"
connect_timeout = "1s"
"""

    def test_unreachable_redis_at_start(self) -> Deferred:
        """One line naming Redis and its address, exit status 1: one process and workers."""
        async def run() -> None:
            port = procs.refused_port()
            for workers in (1, 2):
                child = self.start_failing(self.redis_config(port, workers))
                code = await child.wait(20)
                self.assertEqual(code, 1, child.describe())
                lines = [line for line in child.stderr().splitlines() if line.strip()]
                self.assertEqual(lines, [f"oidcproxy: cannot reach Redis at 127.0.0.1:{port}: "
                                         "Connection refused"], child.describe())
                self.assertEqual(worker_pids(child.pid), [])
        return ensureDeferred(run())

    def test_port_in_use_with_workers(self) -> Deferred:
        async def run() -> None:
            taken = stack.reserve_port()
            taken.listen(1)
            self.addCleanup(taken.close)
            port = taken.getsockname()[1]
            config = procs.config_text(procs.route_config("http://127.0.0.1:9"), workers=2)
            child = self.start_failing(config, ["--listen", f"tcp:{port}:interface=127.0.0.1"])
            self.assertEqual(await child.wait(20), 1, child.describe())
            self.assertIn(f"oidcproxy: cannot listen on 'tcp:{port}:interface=127.0.0.1'",
                          child.stderr())
            self.assertNotIn("Traceback", child.stderr() + child.stdout())
        return ensureDeferred(run())


class SessionsAcrossWorkersTests(TestCase):
    timeout = 120

    def test_login_then_both_workers_serve_the_session(self) -> Deferred:
        """
        A login through the real OP with two workers: the callback and the
        requests after it land on either worker, and every one is served
        with the user's identity (cookie sessions carry themselves).
        """
        async def run() -> None:
            stack.require_op()
            reserved = stack.reserve_port()
            port = reserved.getsockname()[1]
            op = await stack.start_op(self, [f"http://127.0.0.1:{port}/oidc/callback"],
                                      [f"http://127.0.0.1:{port}/"])
            upstream = await procs.start_upstream(self)
            config = "workers = 2\n" + stack.proxy_config(port, op, upstream)
            proxy = await stack.start_proxy(self, reserved, config)
            client = stack.WebClient(self)
            response, body, _, _ = await stack.browse(client, proxy.url + "/some/page",
                                                      stack.fill_login("alice"))
            self.assertEqual(response.code, 200, body)
            users = set()
            for _ in range(30):
                response, body = await client.request("GET", proxy.url + "/some/page")
                self.assertEqual(response.code, 200, body)
                users.update(stack.header_values(json.loads(body), "X-Forwarded-User"))
            self.assertEqual(users, {"alice"})
            self.assertEqual(len(worker_pids(proxy.pid)), 2)
            served = {n for n in (1, 2) if re.search(
                rf"access#info worker {n}\] [^\n]*\"GET /some/page\" 200",
                proxy.child.stdout())}
            self.assertEqual(served, {1, 2}, proxy.child.stdout()[-3000:])
        return ensureDeferred(run())
