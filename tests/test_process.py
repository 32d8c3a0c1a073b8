"""
What the running process does, and only when it runs a process of its own
(C{own_process}): the start-up checks and the signal handlers; and that
no test double is part of the package.
"""

from __future__ import annotations

import ast
import io
import os
import signal
from typing import Any, List

from twisted.internet.testing import MemoryReactor, MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from oidcproxy import service as service_module
from oidcproxy import tap
from oidcproxy.config import parse_config
from oidcproxy.service import ProxyService
from oidcproxy.workers import WorkerPool

from .fakes import SECRET
from .test_tap import EXAMPLE, use_example_env

CONFIG = parse_config(
    {"routes": [{"path": "/", "upstream": "http://127.0.0.1:9", "auth": "none"}]}, "t.toml"
)
PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "oidcproxy")


def keep_signals(case: SynchronousTestCase) -> None:
    """Put this process's handlers of the proxy's signals back after the test."""
    for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        case.addCleanup(signal.signal, signum, signal.getsignal(signum))


class OwnProcessTests(SynchronousTestCase):
    def setUp(self) -> None:
        keep_signals(self)
        self.checked: List[Any] = []
        self.patch(service_module, "raise_descriptor_limit",
                   lambda config: self.checked.append(config))

    def test_embedded_service_leaves_the_process_alone(self):
        """
        By default (a service that is part of a program) the start makes no
        start-up checks and installs no signal handler, whatever the reactor.
        """
        before = signal.getsignal(signal.SIGHUP)
        service = ProxyService(CONFIG, MemoryReactor(), ["tcp:8081"])
        service.privilegedStartService()
        service.startService()
        self.assertIs(signal.getsignal(signal.SIGHUP), before)
        self.successResultOf(service.stopService())
        self.assertEqual(self.checked, [])

    def test_own_process_checks_and_handles_signals(self):
        """
        A service that runs its own process makes the start-up checks before
        listening and handles SIGHUP while it runs, on any reactor it is given;
        the previous handler is back once it has stopped.
        """
        before = signal.getsignal(signal.SIGHUP)
        service = ProxyService(CONFIG, MemoryReactor(), ["tcp:8081"], own_process=True)
        service.privilegedStartService()
        self.assertEqual(self.checked, [CONFIG])
        service.startService()
        self.assertIsNot(signal.getsignal(signal.SIGHUP), before)
        self.successResultOf(service.stopService())
        self.assertIs(signal.getsignal(signal.SIGHUP), before)

    def test_worker_leaves_checks_to_its_parent(self):
        """A worker's service handles signals but leaves the start-up checks to its parent."""
        service = ProxyService(CONFIG, MemoryReactor(), [], worker_id=1, own_process=True)
        service.privilegedStartService()
        self.assertEqual(self.checked, [])

    def test_worker_pool_checks_in_own_process(self):
        """The workers' parent makes the start-up checks only in a process of its own."""
        for own_process, expected in ((False, 0), (True, 1)):
            pool = WorkerPool(CONFIG, MemoryReactorClock(), [], config_path="/etc/c.toml",
                              own_process=own_process)
            pool.privilegedStartService()
            self.assertEqual(len(self.checked), expected)

    def test_plugin_services_own_the_process(self):
        """What the twistd plugin builds runs its own process; one or several workers."""
        use_example_env(self)
        for extra, kind in (([], ProxyService), (["--workers", "2"], WorkerPool)):
            options = tap.Options()
            options.parseOptions(["--config", EXAMPLE, *extra])
            built = tap.makeService(options)
            self.assertIsInstance(built, kind)
            self.assertTrue(built.own_process)


    def test_demo_owns_the_process(self):
        """twistd oidcproxy --demo builds its service to run its own process."""
        from oidcproxy.tools import demo

        calls: List[Any] = []
        self.patch(demo, "make_demo_service", lambda *a, **kw: calls.append(kw))
        options = tap.Options()
        options.parseOptions(["--demo"])
        tap.makeService(options)
        self.assertTrue(calls[0]["own_process"])


class CheckReactorTests(SynchronousTestCase):
    def test_check_builds_on_the_reactor_given(self):
        """
        --check builds the service on the reactor it is given (which it never
        runs): a configured Redis is connected on that reactor, not another.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('public_url = "https://app.example"\n'
                    '[oidc]\nissuer = "https://idp.example"\nclient_id = "c"\n'
                    'client_secret = "s"\n'
                    '[session]\nstore = "redis"\nsecrets = ["' + SECRET + '"]\n'
                    '[redis]\nurl = "redis://127.0.0.1:1/0"\n'
                    '[[routes]]\npath = "/"\nupstream = "http://127.0.0.1:9"\n')
        options = tap.Options()
        options.parseOptions(["--config", path, "--check"])
        reactor = MemoryReactorClock()
        out = io.StringIO()
        self.assertEqual(tap.check(options, out, io.StringIO(), reactor=reactor), 0)
        self.assertEqual(out.getvalue(), "config OK\n")
        self.assertEqual({(host, port) for host, port, *_ in reactor.tcpClients},
                         {("127.0.0.1", 1)})

    def test_no_test_double_in_the_package(self):
        """No module of the package imports Twisted's test doubles or checks for them."""
        found = []
        for folder, _, files in os.walk(PACKAGE):
            for name in files:
                if not name.endswith(".py"):
                    continue
                path = os.path.join(folder, name)
                with open(path, encoding="utf-8") as f:
                    tree = ast.parse(f.read(), path)
                for node in ast.walk(tree):
                    if isinstance(node, ast.ImportFrom) and node.module in (
                            "twisted.internet.testing", "twisted.test.proto_helpers",
                            "twisted.internet.base"):
                        found.append(f"{path}:{node.lineno} imports {node.module}")
                    elif isinstance(node, ast.Name) and node.id in (
                            "MemoryReactor", "MemoryReactorClock", "ReactorBase"):
                        found.append(f"{path}:{node.lineno} uses {node.id}")
        self.assertEqual(found, [])
