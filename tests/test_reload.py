"""
Tests for reloading the configuration (L{ProxyService.reload}, run on SIGHUP).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, List

from treq.testing import RequestTraversalAgent, StubTreq
from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from oidcproxy.config import load_config
from oidcproxy.proxy.upstream import UpstreamClient
from oidcproxy.service import ProxyService, restart_changes

from .fakes import SECRET, RecordingUpstream

HEAD = (
    '[oidc]\nissuer = "https://idp.example"\nclient_id = "CLIENT"\nclient_secret = "s"\n'
    '[session]\nsecrets = ["' + SECRET + '"]\n'
)
PUBLIC = '[[routes]]\npath = "/"\nupstream = "http://app.invalid/root"\nauth = "none"\n'


class ReloadTests(SynchronousTestCase):
    def setUp(self) -> None:
        fd, self.path = tempfile.mkstemp(suffix=".toml")
        os.close(fd)
        self.addCleanup(os.unlink, self.path)
        self.upstream = RecordingUpstream()
        self.agents: List[RequestTraversalAgent] = []
        self.closed: List[UpstreamClient] = []
        self.events: List[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def client_factory(self, route: Any) -> UpstreamClient:
        agent = RequestTraversalAgent(self.upstream)
        self.agents.append(agent)
        client = UpstreamClient(agent, route.settings.max_connections)

        def close() -> Deferred:
            self.closed.append(client)
            return succeed(None)

        client.close = close  # type: ignore[method-assign]
        return client

    def write(self, text: str) -> None:
        with open(self.path, "w", encoding="utf-8") as f:
            f.write(HEAD + text)

    def start(self, text: str) -> ProxyService:
        self.write(text)
        self.reactor = MemoryReactorClock()
        service = ProxyService(load_config(self.path), self.reactor, ["tcp:8080"],
                               config_path=self.path, client_factory=self.client_factory)
        self.stub = StubTreq(service.site.guard)  # type: ignore[attr-defined]
        return service

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        d = getattr(self.stub, method.lower())("http://proxy.example" + path, **kwargs)
        for _ in range(5):
            self.stub.flush()
            for agent in self.agents:
                agent.flush()
            self.reactor.advance(0)
        return self.successResultOf(d)

    def messages(self, level: str) -> List[str]:
        from twisted.logger import formatEvent

        return [formatEvent(e) for e in self.events if e.get("log_level") is not None
                and e["log_level"].name == level]

    def test_new_route(self) -> None:
        """A route added to the file answers after the reload; the old proxy's pools close."""
        service = self.start(PUBLIC.replace('path = "/"', 'path = "/a"'))
        old_proxy = service.site.proxy  # type: ignore[attr-defined]
        self.assertEqual(self.request("GET", "/b/x").code, 404)
        self.write(PUBLIC.replace('path = "/"', 'path = "/a"')
                   + PUBLIC.replace('path = "/"', 'path = "/b"')
                   .replace("/root", "/other"))
        self.assertTrue(service.reload())
        self.assertIsNot(service.site.proxy, old_proxy)  # type: ignore[attr-defined]
        self.assertEqual(self.request("GET", "/b/x").code, 200)
        self.assertEqual(self.upstream.requests[-1]["uri"], b"/other/b/x")
        self.assertEqual(self.request("GET", "/a/y").code, 200)
        self.assertEqual(self.upstream.requests[-1]["uri"], b"/root/a/y")
        self.assertIn("configuration reloaded", self.messages("info"))
        self.assertEqual(self.messages("warn"), [])
        # Nothing was in flight on the old proxy: its pools are closed a turn later.
        self.reactor.advance(0)
        self.assertEqual(len(self.closed), 1)

    def test_in_flight_request_finishes_on_old_proxy(self) -> None:
        """The old proxy's pools are closed only once its in-flight request is over."""
        from .fakes import never_answer

        held: List[Any] = []

        def hold(request: Any) -> Any:
            held.append(request)
            return never_answer(request)

        self.upstream.handler = hold
        service = self.start(PUBLIC)
        d = self.stub.get("http://proxy.example/slow")
        for _ in range(3):
            self.stub.flush()
            for agent in self.agents:
                agent.flush()
        self.assertEqual(len(held), 1)
        self.write(PUBLIC.replace("/root", "/new"))
        self.assertTrue(service.reload())
        self.reactor.advance(0)
        self.assertEqual(self.closed, [])
        held[0].write(b"done")
        held[0].finish()
        for _ in range(3):
            for agent in self.agents:
                agent.flush()
            self.stub.flush()
            self.reactor.advance(0)
        self.assertEqual(self.successResultOf(d).code, 200)
        self.assertEqual(len(self.closed), 1)

    def test_changed_rule(self) -> None:
        """A route's methods and auth mode change with the reload."""
        service = self.start(PUBLIC)
        self.assertEqual(self.request("DELETE", "/x").code, 200)
        self.write(PUBLIC + 'methods = ["GET"]\n')
        self.assertTrue(service.reload())
        self.assertEqual(self.request("DELETE", "/x").code, 405)
        self.assertEqual(self.request("GET", "/x").code, 200)
        self.write(PUBLIC.replace('auth = "none"', 'auth = "bearer"'))
        self.assertTrue(service.reload())
        count = len(self.upstream.requests)
        self.assertNotEqual(self.request("GET", "/x").code, 200)
        self.assertEqual(len(self.upstream.requests), count)

    def test_changed_header_mapping(self) -> None:
        """A header added to [headers] is stripped from client requests after the reload."""
        service = self.start(PUBLIC)
        self.request("GET", "/x", headers={"X-Team": "forged"})
        self.assertEqual(self.upstream.header(b"x-team"), [b"forged"])
        self.write('[headers]\nX-Team = ["team"]\n' + PUBLIC)
        self.assertTrue(service.reload())
        self.request("GET", "/x", headers={"X-Team": "forged"})
        self.assertEqual(self.upstream.header(b"x-team"), [])

    def test_invalid_file_kept(self) -> None:
        """An invalid file changes nothing; every problem is logged."""
        service = self.start(PUBLIC)
        config = service.config
        self.write(PUBLIC.replace('path = "/"', 'path = "/b"') + 'timeout = "x"\nbogus = 1\n')
        self.assertFalse(service.reload())
        self.assertIs(service.config, config)
        self.assertEqual(self.request("GET", "/x").code, 200)
        errors = self.messages("error")
        self.assertTrue(any(e.startswith("config: routes[0].timeout:") for e in errors), errors)
        self.assertTrue(any(e.startswith("config: routes[0].bogus: unknown key") for e in errors),
                        errors)
        self.assertNotIn("configuration reloaded", self.messages("info"))
        self.assertEqual(self.closed, [])

    def test_broken_template_kept(self) -> None:
        """A replacement template that cannot be used keeps the running configuration and pages."""
        service = self.start(PUBLIC)
        config = service.config
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder)
        with open(os.path.join(folder, "error.xhtml"), "w", encoding="utf-8") as f:
            f.write("<html>")
        self.write(PUBLIC + f'[pages]\ntemplates_dir = "{folder}"\n')
        self.assertFalse(service.reload())
        self.assertIs(service.config, config)
        errors = self.messages("error")
        self.assertTrue(any("error.xhtml" in e and "not well-formed" in e for e in errors), errors)

    def test_route_of_a_new_provider_refused(self) -> None:
        """
        A reload whose routes name a provider added in the same file (a new
        provider needs a restart) is refused: the running configuration is kept.
        """
        service = self.start(PUBLIC)
        config = service.config
        with open(self.path, "w", encoding="utf-8") as f:
            f.write('public_url = "https://app.example"\n' + HEAD + PUBLIC +
                    '[[routes]]\npath = "/staff"\nupstream = "http://app.invalid"\n'
                    'provider = "corp"\n[providers.corp]\nissuer = "https://corp.example"\n'
                    'client_id = "c"\nclient_secret = "s"\n')
        self.assertFalse(service.reload())
        self.assertIs(service.config, config)
        self.assertIn("config: cannot set up the proxy: routes[1].provider: 'corp' is not a "
                      f"running provider; a new provider needs a restart (in {self.path})",
                      self.messages("error"))

    def test_restart_keys_not_applied(self) -> None:
        """A changed [oidc] client_id is kept as running, with one warning naming it."""
        service = self.start(PUBLIC)
        with open(self.path, "w", encoding="utf-8") as f:
            f.write(HEAD.replace("CLIENT", "OTHER").replace("[session]\n", '[session]\nlifetime = "1h"\n')
                    + PUBLIC.replace("/root", "/new"))
        self.assertTrue(service.reload())
        self.assertEqual(service.config.oidc.client_id, "CLIENT")  # type: ignore[union-attr]
        self.assertEqual(service.site.guard.config.oidc.client_id,  # type: ignore[attr-defined]
                         "CLIENT")
        self.assertEqual(self.messages("warn"),
                         ["restart to apply: oidc.client_id, session.lifetime"])
        self.request("GET", "/x")
        self.assertEqual(self.upstream.requests[-1]["uri"], b"/new/x")

    def test_client_limits_applied(self) -> None:
        """The limits on clients apply from the reload on, with no restart warning."""
        service = self.start(PUBLIC)
        with open(self.path, "w", encoding="utf-8") as f:
            f.write('client_header_timeout = "5s"\nmax_client_connections = 7\n' + HEAD + PUBLIC)
        self.assertTrue(service.reload())
        self.assertEqual((service.site.limits.header_timeout, service.site.limits.max_connections),
                         (5.0, 7))
        self.assertEqual(self.messages("warn"), [])

    def test_restart_changes(self) -> None:
        """Sections added or removed are named whole."""
        self.write(PUBLIC)
        a = load_config(self.path)
        with open(self.path, "w", encoding="utf-8") as f:
            f.write('listen = ["tcp:1"]\n' + HEAD + '[metrics]\n' + PUBLIC)
        self.assertEqual(restart_changes(a, load_config(self.path)), ["listen", "metrics"])

    def test_no_sighup_handler_unless_own_process(self) -> None:
        """A service not told it runs its own process installs no signal handler."""
        import signal

        before = signal.getsignal(signal.SIGHUP)
        service = self.start(PUBLIC)
        service.startService()
        self.assertIs(signal.getsignal(signal.SIGHUP), before)
        self.successResultOf(service.stopService())
