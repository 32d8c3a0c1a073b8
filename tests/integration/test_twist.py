"""
The proxy under Twisted's other runner, C{twist oidcproxy --config F}: it
starts a service with C{startService} only (twistd calls
C{privilegedStartService} first, which is where the listeners open), so the
proxy must open them then, and serve as it does under C{twistd -n}.

The child runs this checkout's code (its root on C{PYTHONPATH}): what is
tested is the plugin as it is here, found by twist's plugin scan.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Dict, List, Optional, Set

from treq.client import HTTPClient
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from tests.integration import procs

STOPPED_BY_SIGTERM = (0, -signal.SIGTERM)
"""twist, like twistd, ends by re-raising the SIGTERM that stopped it."""


def twist_command() -> List[str]:
    """The C{twist} script installed beside the Python running the tests."""
    script = os.path.join(os.path.dirname(sys.executable), "twist")
    if os.path.isfile(script) and os.access(script, os.X_OK):
        return [script]
    return [sys.executable, "-m", "twisted"]


class TwistTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.pool = HTTPConnectionPool(procs.reactor, persistent=False)
        self.addCleanup(self.pool.closeCachedConnections)
        self.http = HTTPClient(Agent(procs.reactor, pool=self.pool, connectTimeout=5))
        env = procs.child_env()
        env["PYTHONPATH"] = procs.ROOT
        self.patch(procs, "child_env", lambda: dict(env))

    async def start(self, **top: object) -> procs.Proxy:
        """C{twist oidcproxy} on a free loopback port, with one public route."""
        upstream = f"http://127.0.0.1:{procs.refused_port()}"
        text = procs.config_text(procs.route_config(upstream), **top)
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        config_path = os.path.join(workdir, "oidcproxy.toml")
        with open(config_path, "w", encoding="utf-8") as f:
            f.write(text)
        port_file = os.path.join(workdir, "proxy.port")
        child = procs.Child("twist", twist_command() + [
            "--log-format=text", "oidcproxy", "--config", config_path,
            "--port-file", port_file,
        ], workdir)
        self.addCleanup(child.stop)
        return procs.Proxy(child, await procs.listening_port(child, port_file), config_path)

    async def health(self, proxy: procs.Proxy) -> Dict:
        response = await self.http.get(proxy.url + "/oidc/health", timeout=10)
        body = await response.content()
        self.assertEqual(response.code, 200, body)
        return json.loads(body)

    async def stop(self, proxy: procs.Proxy) -> None:
        """SIGTERM: the proxy stops listening and exits as under twistd."""
        proxy.child.process.send_signal(signal.SIGTERM)
        code = await proxy.child.wait(15)
        self.assertIn(code, STOPPED_BY_SIGTERM, proxy.child.describe())
        self.assertNotIn("Traceback", proxy.child.stdout() + proxy.child.stderr(),
                         proxy.child.describe())

    def test_serves_and_stops(self) -> Deferred:
        """twist oidcproxy listens, answers /oidc/health, and stops cleanly on SIGTERM."""
        async def run() -> None:
            proxy = await self.start()
            self.assertEqual(await self.health(proxy), {"status": "ok"})
            await self.stop(proxy)

        return ensureDeferred(run())

    def test_workers(self) -> Deferred:
        """With workers = 2 the parent binds the socket and both workers serve on it."""
        async def run() -> None:
            proxy = await self.start(workers=2)
            seen: Set[int] = set()

            async def both() -> Optional[bool]:
                seen.add((await self.health(proxy))["worker"])
                return seen == {1, 2} or None

            await procs.poll_async(both, 20, interval=0.05, what="both workers")
            await self.stop(proxy)

        return ensureDeferred(run())
