"""
Tests for the twistd plugin's options and service composition.
"""

from __future__ import annotations

import io
import os
import resource
import subprocess
import sys
import tempfile

from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactor, MemoryReactorClock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from oidcproxy import tap
from oidcproxy.config import parse_config
from oidcproxy.service import ListenError, ListenerService, ProxyService

from .fakes import SECRET
from .helpers import use_example_env

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
EXAMPLE = os.path.join(ROOT, "etc", "oidcproxy.toml")
CONFIG = parse_config(
    {"routes": [{"path": "/", "upstream": "http://127.0.0.1:9", "auth": "none"}]}, "t.toml"
)


class OptionsTests(SynchronousTestCase):
    def test_config_required(self):
        """--config is required: a plain refusal with exit status 1, not twistd's usage text."""
        e = self.assertRaises(SystemExit, tap.Options().parseOptions, [])
        self.assertNotIsInstance(e, usage.UsageError)
        self.assertTrue(str(e.code).startswith("oidcproxy: --config FILE is required ("), e.code)

    def test_listen_repeatable(self):
        """--listen may be given several times; parsing has no side effects."""
        o = tap.Options()
        o.parseOptions(["--config", "/nonexistent.toml", "--listen", "tcp:1",
                        "-l", "unix:/tmp/x.sock"])
        self.assertEqual(o["listen"], ["tcp:1", "unix:/tmp/x.sock"])
        self.assertEqual(o["config"], "/nonexistent.toml")
        self.assertFalse(o["check"])

    def test_help_lists_options(self):
        """The plugin's --help lists its options."""
        text = str(tap.Options())
        for flag in ["--config", "--listen", "--check", "--port-file"]:
            self.assertIn(flag, text)

    def test_plugin_is_registered(self):
        """twistd finds the plugin with its one-line description."""
        from twisted.application.service import IServiceMaker
        from twisted.plugin import getPlugins

        makers = {p.tapname: p for p in getPlugins(IServiceMaker)}
        self.assertIn("oidcproxy", makers)
        self.assertEqual(makers["oidcproxy"].description,
                         "OpenID Connect authenticating reverse proxy")
        self.assertIs(makers["oidcproxy"].options, tap.Options)


class CommandLineTests(SynchronousTestCase):
    """The plugin's refusals as a user sees them: the real runners, in a child process."""

    def run_plugin(self, runner, *args):
        """C{runner oidcproxy args}, with this checkout's code; its status, stdout, stderr."""
        script = os.path.join(os.path.dirname(sys.executable), runner)
        if not os.access(script, os.X_OK):
            self.fail(f"no {runner} script beside {sys.executable}")
        env = dict(os.environ, PYTHONPATH=ROOT)
        workdir = self.mktemp()
        os.makedirs(workdir)
        done = subprocess.run([script, *args], cwd=workdir,
                              env=env, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=60, text=True)
        return done.returncode, done.stdout, done.stderr

    def test_twistd_without_config(self):
        """
        twistd oidcproxy without --config prints two plain lines on stderr (the
        refusal and where help is), not the --help text behind twistd's own
        command line, and exits 1 as twistd does for its usage errors.
        """
        status, out, err = self.run_plugin("twistd", "--pidfile=", "oidcproxy")
        self.assertEqual(status, 1)
        self.assertEqual(out, "")
        self.assertEqual(err.splitlines(), [
            "oidcproxy: --config FILE is required (the TOML configuration file; "
            "etc/oidcproxy.toml in the source is an example, and --demo runs without one)",
            "see: twistd oidcproxy --help",
        ])

    def test_twist_without_config(self):
        """Under twist the same refusal points to twist's --help, also with status 1."""
        status, out, err = self.run_plugin("twist", "oidcproxy")
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(err.splitlines()[-1], "see: twist oidcproxy --help")


class CheckTests(SynchronousTestCase):
    def run_check(self, path, nofile=(1024, 1 << 20)):
        """--check on C{path}, in a process allowed C{nofile} open files (soft, hard)."""
        self.patch(resource, "getrlimit", lambda which: nofile)
        o = tap.Options()
        o.parseOptions(["--config", path, "--check"])
        out, err = io.StringIO(), io.StringIO()
        status = tap.check(o, out, err, reactor=MemoryReactorClock())
        self.warnings = err.getvalue()
        return status, out.getvalue()

    def test_check_ok(self):
        """
        --check on a valid config prints 'config OK' and returns 0; the
        shipped example keeps the default X-Forwarded-User mapping, which
        takes preferred_username first, and gets the one warning about it.
        """
        use_example_env(self)
        status, out = self.run_check(EXAMPLE)
        self.assertEqual((status, out), (0, "config OK\n"))
        warnings = self.warnings.splitlines()
        self.assertEqual(len(warnings), 1, warnings)
        self.assertTrue(warnings[0].startswith(
            "warning: headers.X-Forwarded-User takes preferred_username"), warnings[0])

    def test_check_warns_about_the_open_files_limit(self):
        """
        --check warns on standard error (status still 0) when the connection
        caps need more open files than the process may have (its hard limit:
        the proxy raises its soft limit up to it when it starts).
        """
        use_example_env(self)
        self.assertEqual(self.run_check(EXAMPLE, nofile=(1024, 4096)), (0, "config OK\n"))
        self.assertEqual(self.warnings.splitlines()[1:], [
            "warning: max_client_connections = 10000 and max_websockets = 1000 may need 22256 "
            "open files, but this process may open only 4096 (RLIMIT_NOFILE; under systemd: "
            "LimitNOFILE=): raise the limit or lower max_client_connections",
        ])

    def test_check_reports_each_problem(self):
        """--check on a bad config prints one line per problem and returns 1."""
        with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
            f.write('listen = ["tcp:1"]\nbogus = 1\n[[routes]]\npath = "/"\nauth = "none"\n'
                    'timeout = "x"\n')
        self.addCleanup(os.unlink, f.name)
        status, out = self.run_check(f.name)
        self.assertEqual(status, 1)
        self.assertEqual(
            out.splitlines(),
            [
                f"config: bogus: unknown key (in {f.name})",
                f"config: routes[0].upstream: is required (in {f.name})",
                f"config: routes[0].timeout: 'x' is not a duration; use a number and a unit "
                f'(ms, s, m, h, d), like "30s" (in {f.name})',
            ],
        )

    def test_check_builds_the_parts(self):
        """--check also sets the parts up: a private key that is not a key is reported."""
        use_example_env(self)
        with open(EXAMPLE) as f:
            text = f.read()
        text = text.replace('token_endpoint_auth_method = "client_secret_basic"',
                            'token_endpoint_auth_method = "private_key_jwt"\n'
                            'private_key = "not a PEM key"')
        with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
            f.write(text)
        self.addCleanup(os.unlink, f.name)
        status, out = self.run_check(f.name)
        self.assertEqual(status, 1)
        self.assertEqual(len(out.splitlines()), 1, out)
        self.assertTrue(out.startswith("config: cannot set up the proxy: "), out)
        self.assertTrue(out.rstrip().endswith(f"(in {f.name})"), out)

    def test_make_service_check_exits(self):
        """makeService with --check exits with the check's status, before listening."""
        o = tap.Options()
        o.parseOptions(["--config", "/nonexistent.toml", "--check"])
        saved, sys.stdout = sys.stdout, io.StringIO()
        try:
            e = self.assertRaises(SystemExit, tap.makeService, o)
        finally:
            sys.stdout = saved
        self.assertEqual(e.code, 1)

    def test_make_service_bad_config_exits_1(self):
        """A bad config stops the start with status 1 and the problems on stderr."""
        o = tap.Options()
        o.parseOptions(["--config", "/nonexistent.toml"])
        saved, sys.stderr = sys.stderr, io.StringIO()
        try:
            e = self.assertRaises(SystemExit, tap.makeService, o)
            err = sys.stderr.getvalue()
        finally:
            sys.stderr = saved
        self.assertEqual(e.code, 1)
        self.assertIn("config: cannot read the file", err)


class ServiceTests(SynchronousTestCase):
    def setUp(self):
        use_example_env(self)

    def test_listen_override(self):
        """--listen replaces the config's listeners."""
        o = tap.Options()
        o.parseOptions(["--config", EXAMPLE, "--listen", "tcp:0:interface=127.0.0.1",
                        "--listen", "tcp:0:interface=127.0.0.2"])
        service = tap.makeService(o)
        self.assertEqual([ls.description for ls in service.listeners],
                         ["tcp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.2"])

    def test_config_listeners(self):
        """Without --listen the config's listeners are used."""
        o = tap.Options()
        o.parseOptions(["--config", EXAMPLE])
        service = tap.makeService(o)
        self.assertEqual([ls.description for ls in service.listeners],
                         ["tcp:8080:interface=127.0.0.1"])

    def test_port_file(self):
        """Once every listener is up, their addresses are written to the port file."""
        reactor = MemoryReactor()
        port_file = os.path.join(tempfile.mkdtemp(), "ports")
        service = ProxyService(CONFIG, reactor, ["tcp:8081:interface=127.0.0.1",
                                                 "tcp:8082:interface=127.0.0.1"], port_file)
        service.privilegedStartService()
        with open(port_file) as f:
            self.assertEqual(f.read(), "0.0.0.0:8081\n0.0.0.0:8082\n")
        self.assertEqual([p[0] for p in reactor.tcpServers], [8081, 8082])

    def test_start_alone_listens(self):
        """
        twist calls only startService (twistd calls privilegedStartService
        first): the listeners open then; in twistd's order they open once.
        """
        for twistd in (False, True):
            reactor = MemoryReactor()
            service = ProxyService(CONFIG, reactor, ["tcp:8081"])
            if twistd:
                service.privilegedStartService()
            service.startService()
            self.assertEqual([p[0] for p in reactor.tcpServers], [8081])
            self.successResultOf(service.stopService())

    def test_stop_stops_listening(self):
        """Stopping the service stops its listeners."""
        reactor = MemoryReactor()
        service = ProxyService(CONFIG, reactor, ["tcp:8081"])
        service.privilegedStartService()
        service.startService()
        port = service.listeners[0].port
        stopped = []
        port.stopListening = lambda: stopped.append(True)
        self.successResultOf(service.stopService())
        self.assertEqual(stopped, [True])
        self.assertIsNone(service.listeners[0].port)

    def test_listen_failure_is_one_line(self):
        """A listener that cannot open stops the start with one line naming it."""

        class BusyReactor(MemoryReactor):
            def listenTCP(self, port, factory, backlog=50, interface=""):
                raise CannotListenError(interface, port, OSError(98, "Address already in use"))

        service = ProxyService(CONFIG, BusyReactor(), ["tcp:8080:interface=127.0.0.1"])
        saved, sys.stderr = sys.stderr, io.StringIO()
        try:
            e = self.assertRaises(SystemExit, service.privilegedStartService)
            err = sys.stderr.getvalue()
        finally:
            sys.stderr = saved
        self.assertEqual(e.code, 1)
        self.assertEqual(len(err.splitlines()), 1)
        self.assertIn("cannot listen on 'tcp:8080:interface=127.0.0.1'", err)
        self.assertIn("Address already in use", err)

    def test_systemd_endpoint_without_sockets(self):
        """A systemd: endpoint with no inherited socket is a one-line error, not a traceback."""
        service = ListenerService(MemoryReactor(), "systemd:domain=INET:index=0", object())
        e = self.assertRaises(ListenError, service.privilegedStartService)
        self.assertTrue(str(e).startswith("invalid endpoint string 'systemd:domain=INET:index=0'"),
                        str(e))

    def test_bad_endpoint_string(self):
        """A malformed endpoint string is reported the same way."""
        service = ListenerService(MemoryReactor(), "tcpx:80", object())
        e = self.assertRaises(ListenError, service.privilegedStartService)
        self.assertTrue(str(e).startswith("invalid endpoint string 'tcpx:80': "), str(e))


class AdminListenerTests(SynchronousTestCase):
    def test_admin_listener(self):
        """With [admin], the service listens on the admin endpoint too, with its own site."""
        from oidcproxy.admin import AdminResource

        config = parse_config({
            "public_url": "https://app.example",
            "oidc": {"issuer": "https://idp.example", "client_id": "c", "client_secret": "s"},
            "session": {"store": "redis", "secrets": [SECRET]},
            "redis": {"url": "redis://127.0.0.1:1/0", "command_timeout": "100ms"},
            "admin": {"token": SECRET, "listen": "tcp:9099:interface=127.0.0.1"},
            "routes": [{"path": "/", "upstream": "http://127.0.0.1:9"}],
        }, "t.toml")
        reactor = MemoryReactorClock()  # the Redis pool's timers run on it
        service = ProxyService(config, reactor, ["tcp:8081:interface=127.0.0.1"])
        self.assertEqual([ls.description for ls in service.listeners],
                         ["tcp:8081:interface=127.0.0.1", "tcp:9099:interface=127.0.0.1"])
        admin_site = service.listeners[1]._factory
        self.assertIsInstance(admin_site.resource, AdminResource)
        self.assertIsNot(admin_site, service.site)


class CheckClaimsTests(SynchronousTestCase):
    def config_file(self) -> str:
        text = (
            'public_url = "https://app.example"\n'
            '[oidc]\nissuer = "https://idp.example"\nclient_id = "c"\nclient_secret = "s"\n'
            '[session]\nsecrets = ["' + SECRET + '"]\n'
            '[[routes]]\npath = "/admin"\nupstream = "http://127.0.0.1:9"\n'
            'rule = "Contains(`groups`, `admins`) && Equals(`access_token.scope`, `write`)"\n'
            '[[routes]]\npath = "/"\nupstream = "http://127.0.0.1:9"\n'
            '[[routes]]\npath = "/public"\nupstream = "http://127.0.0.1:9"\nauth = "none"\n'
        )
        return self.write(text, ".toml")

    def write(self, text: str, suffix: str) -> str:
        with tempfile.NamedTemporaryFile("w", suffix=suffix, delete=False) as f:
            f.write(text)
        self.addCleanup(os.unlink, f.name)
        return f.name

    def run_check(self, *args: str):
        o = tap.Options()
        o.parseOptions(["--config", self.config_file(), "--check", *args])
        out = io.StringIO()
        return tap.check(o, out, reactor=MemoryReactorClock()), out.getvalue()

    def test_every_route(self):
        """--check --claims prints each route's verdict and the trace of its rule."""
        claims = self.write('{"id_token": {"sub": "a", "groups": ["admins"]},'
                            ' "access_token": {"scope": "read"}}', ".json")
        status, out = self.run_check("--claims", claims)
        lines = [line for line in out.splitlines() if not line.startswith("warning: ")]
        self.assertEqual(status, 0)
        self.assertEqual(lines[0], "config OK")
        self.assertTrue(lines[1].startswith("routes[0] (*/admin, auth = session): denied: "),
                        lines[1])
        self.assertIn("access_token.scope", lines[1])
        self.assertTrue(all(line.startswith("    ") for line in lines[2:-2]), lines)
        self.assertEqual(lines[-2:], [
            "routes[1] (*/, auth = session): allowed (any authenticated user)",
            "routes[2] (*/public, auth = none): public, no claims needed",
        ])

    def test_path_exit_status(self):
        """With --path only that route is judged; exit status 2 when denied, 0 when allowed."""
        denied = self.write('{"groups": ["staff"]}', ".json")
        status, out = self.run_check("--claims", denied, "--path", "/admin/x")
        self.assertEqual(status, 2)
        self.assertEqual(len([x for x in out.splitlines() if x.startswith("routes[")]), 1)
        allowed = self.write('{"id_token": {"groups": ["admins"]}, '
                             '"access_token": {"scope": "write"}}', ".json")
        self.assertEqual(self.run_check("--claims", allowed, "--path", "/admin/x")[0], 0)

    def test_bad_claims_file(self):
        """An unreadable or non-object claims file: a clear line and status 1."""
        status, out = self.run_check("--claims", self.write("[1, 2]", ".json"))
        self.assertEqual(status, 1)
        self.assertIn("must hold a JSON object", out)

    def test_claims_needs_check(self):
        """--claims and --path only go with --check."""
        o = tap.Options()
        self.assertRaises(usage.UsageError, o.parseOptions,
                          ["--config", "x.toml", "--claims", "c.json"])
        self.assertRaises(usage.UsageError, tap.Options().parseOptions,
                          ["--config", "x.toml", "--check", "--path", "/x"])

    def test_rule_syntax_error(self):
        """A rule with a syntax error fails --check with the route, the rule and the position."""
        path = self.write(
            'routes = [{ path = "/", upstream = "http://h", auth = "session", '
            'rule = "Contains(`groups` `admins`)" }]\n', ".toml")
        o = tap.Options()
        o.parseOptions(["--config", path, "--check"])
        out = io.StringIO()
        self.assertEqual(tap.check(o, out, reactor=MemoryReactorClock()), 1)
        self.assertIn("routes[0].rule: expected", out.getvalue())
        self.assertIn("at position 18:\n    Contains(`groups` `admins`)\n", out.getvalue())

    def test_rule_syntax_error_caret(self):
        """
        The caret stands under the offending character of the rule as
        --check prints it, whatever the key's name put before the message.
        """
        path = self.write(
            'routes = [{ path = "/", upstream = "http://h", auth = "session", '
            'rule = "Equals(`groups`, `a`) && Foo(`x`)" }]\n', ".toml")
        o = tap.Options()
        o.parseOptions(["--config", path, "--check"])
        out = io.StringIO()
        self.assertEqual(tap.check(o, out, reactor=MemoryReactorClock()), 1)
        lines = out.getvalue().splitlines()
        shown = next(i for i, line in enumerate(lines) if "Equals(`groups`" in line)
        self.assertEqual(lines[shown + 1].index("^"), lines[shown].index("Foo"))


class CheckWarningsTests(SynchronousTestCase):
    """
    --check warns (C{warning:} lines on standard error after C{config OK},
    exit status still 0) when authorization or the identity headers are keyed on a claim users
    can change, like preferred_username.
    """

    BASE = (
        'public_url = "https://app.example"\n'
        '[oidc]\nissuer = "https://idp.example"\nclient_id = "c"\nclient_secret = "s"\n'
        '[session]\nsecrets = ["' + SECRET + '"]\n'
    )

    def run_check(self, text: str, *args: str):
        with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
            f.write(text)
        self.addCleanup(os.unlink, f.name)
        o = tap.Options()
        o.parseOptions(["--config", f.name, "--check", *args])
        # Plenty of open files: no warning about the limit. The verdict
        # (standard output) and the warnings (standard error) in one stream.
        self.patch(resource, "getrlimit", lambda which: (1 << 20, 1 << 20))
        out = io.StringIO()
        return tap.check(o, out, out, reactor=MemoryReactorClock()), out.getvalue().splitlines()

    def route(self, rule: str = "", auth: str = "session", path: str = "/") -> str:
        text = f'[[routes]]\npath = "{path}"\nupstream = "http://127.0.0.1:9"\nauth = "{auth}"\n'
        return text + (f"rule = {rule!r}\n" if rule else "")

    def test_default_headers(self):
        """Without [headers], X-Forwarded-User takes preferred_username first: one warning
        naming the header, saying why and suggesting sub or a verified email."""
        status, lines = self.run_check(self.BASE + self.route())
        self.assertEqual(status, 0)
        self.assertEqual(lines[0], "config OK")
        self.assertEqual(len(lines), 2, lines)
        warning = lines[1]
        self.assertTrue(warning.startswith(
            "warning: headers.X-Forwarded-User takes preferred_username "
            "(of: preferred_username, sub): "), warning)
        self.assertIn("can change it and it is not unique", warning)
        self.assertIn('map it to "sub"', warning)
        self.assertIn("email_verified", warning)

    def test_rule_keyed_on_preferred_username(self):
        """A route rule reading preferred_username (ID or access token) is named, with why
        and what to key it on instead."""
        headers = '[headers]\nX-Forwarded-User = "sub"\n'
        status, lines = self.run_check(
            self.BASE + headers
            + self.route("OneOf(`preferred_username`, `alice`, `bob`)", path="/admin")
            + self.route("Equals(`access_token.preferred_username`, `svc`)", auth="bearer",
                         path="/api")
            + self.route())
        self.assertEqual(status, 0)
        self.assertEqual(lines[0], "config OK")
        self.assertEqual(len(lines), 3, lines)
        self.assertTrue(lines[1].startswith(
            "warning: routes[0] (*/admin): the rule authorizes on preferred_username: "),
            lines[1])
        self.assertTrue(lines[2].startswith(
            "warning: routes[1] (*/api): the rule authorizes on "
            "access_token.preferred_username: "), lines[2])
        for line in lines[1:]:
            self.assertIn("key it on sub, or on email together with "
                          "Equals(`email_verified`, `true`)", line)

    def test_weak_secret(self):
        """A secret long enough but easy to guess: a warning naming the key, not its value."""
        headers = '[headers]\nX-Forwarded-User = "sub"\n'
        weak = "0123456789abcdef" * 4  # 32 bytes of hex with 8 distinct values
        base = self.BASE.replace(f'secrets = ["{SECRET}"]', f'secrets = ["{SECRET}", "{weak}"]')
        status, lines = self.run_check(base + headers + self.route())
        self.assertEqual(status, 0)
        self.assertEqual(lines, [
            "config OK",
            "warning: session.secrets[1]: the secret from the config file has only 8 distinct "
            "byte values in its 32 bytes once decoded from hex: it looks easy to guess; make a "
            "random one with: python3 -c 'import secrets; print(secrets.token_hex(32))'"])

    def test_explicit_header_mapping(self):
        """A [headers] mapping that tries preferred_username for any header is named."""
        headers = '[headers]\nX-Forwarded-User = "sub"\nX-Login = ["email", "preferred_username"]\n'
        status, lines = self.run_check(self.BASE + headers + self.route())
        self.assertEqual(status, 0)
        self.assertEqual(len(lines), 2, lines)
        self.assertTrue(lines[1].startswith(
            "warning: headers.X-Login takes preferred_username (of: email, preferred_username)"),
            lines[1])

    def test_nothing_keyed_on_it(self):
        """Headers and rules on sub, email and groups: no warning, exactly 'config OK'."""
        headers = ('[headers]\nX-Forwarded-User = "sub"\nX-Forwarded-Email = "email"\n'
                   'X-Forwarded-Groups = "groups"\n')
        status, lines = self.run_check(
            self.BASE + headers
            + self.route("Contains(`groups`, `admins`) && Equals(`email_verified`, `true`)")
            + self.route(path="/public", auth="none"))
        self.assertEqual((status, lines), (0, ["config OK"]))

    def test_public_routes_only(self):
        """Identity headers never sent (every route public): no warning about them."""
        status, lines = self.run_check(self.BASE + self.route(auth="none"))
        self.assertEqual((status, lines), (0, ["config OK"]))

    def test_warnings_with_claims(self):
        """With --claims the warnings come after 'config OK', before the verdicts; status 0."""
        claims = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
        claims.write('{"sub": "a", "preferred_username": "alice"}')
        claims.close()
        self.addCleanup(os.unlink, claims.name)
        status, lines = self.run_check(
            self.BASE + self.route("Equals(`preferred_username`, `alice`)"),
            "--claims", claims.name)
        self.assertEqual(status, 0)
        self.assertEqual(lines[0], "config OK")
        self.assertTrue(all(line.startswith("warning: ") for line in lines[1:3]), lines)
        self.assertTrue(lines[3].startswith("routes[0] (*/, auth = session): allowed"), lines)

    def test_makeService_check_exit_status(self):
        """twistd oidcproxy --check with only warnings exits 0 (SystemExit(0))."""
        with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
            f.write(self.BASE + self.route("Equals(`preferred_username`, `alice`)"))
        self.addCleanup(os.unlink, f.name)
        o = tap.Options()
        o.parseOptions(["--config", f.name, "--check"])
        import contextlib

        with contextlib.redirect_stdout(io.StringIO()) as out, \
                contextlib.redirect_stderr(io.StringIO()) as err:
            with self.assertRaises(SystemExit) as exited:
                tap.makeService(o)
        self.assertEqual(exited.exception.code, 0)
        self.assertEqual(out.getvalue(), "config OK\n")
        self.assertIn("warning: routes[0]", err.getvalue())


class CheckStepUpTests(SynchronousTestCase):
    """
    --check --claims shows, for each route with acr_values or max_auth_age,
    whether the sign-in the claims tell of meets them at the reactor's time,
    and what a browser and an API client get when it does not.
    """

    NOW = 1_700_000_000.0

    def run_check(self, claims: str, *args: str, oidc: str = ""):
        text = (
            'public_url = "https://app.example"\n'
            '[oidc]\nissuer = "https://idp.example"\nclient_id = "c"\nclient_secret = "s"\n'
            + oidc +
            '[session]\nsecrets = ["' + SECRET + '"]\n'
            '[[routes]]\npath = "/admin"\nupstream = "http://127.0.0.1:9"\n'
            'acr_values = ["gold", "platinum"]\nmax_auth_age = "15m"\n'
            '[[routes]]\npath = "/pay"\nupstream = "http://127.0.0.1:9"\nauth = "bearer"\n'
            'acr_values = ["gold"]\nrule = "NotOlderThan(`auth_time`, `1h`)"\n'
            '[[routes]]\npath = "/"\nupstream = "http://127.0.0.1:9"\n'
        )
        files = []
        for content, suffix in ((text, ".toml"), (claims, ".json")):
            with tempfile.NamedTemporaryFile("w", suffix=suffix, delete=False) as f:
                f.write(content)
            self.addCleanup(os.unlink, f.name)
            files.append(f.name)
        o = tap.Options()
        o.parseOptions(["--config", files[0], "--check", "--claims", files[1], *args])
        out = io.StringIO()
        reactor = MemoryReactorClock()
        reactor.advance(self.NOW)
        status = tap.check(o, out, io.StringIO(), reactor=reactor)
        return status, [line for line in out.getvalue().splitlines() if line != "config OK"]

    def test_met(self):
        """A sign-in at a listed acr, recent enough: met, naming the acr and its age."""
        status, lines = self.run_check(f'{{"acr": "gold", "auth_time": {self.NOW - 120:.0f}}}')
        self.assertEqual(status, 0)
        self.assertEqual(lines, [
            "routes[0] (*/admin, auth = session): allowed (any authenticated user)",
            "    step-up: met by acr 'gold' signed in 120s ago",
            "routes[1] (*/pay, auth = bearer): allowed: allowed",
            "    NotOlderThan(`auth_time`, `1h`): true (auth_time is 120s ago, at most 1h)",
            "    step-up: met by acr 'gold' signed in 120s ago",
            "routes[2] (*/, auth = session): allowed (any authenticated user)",
        ])

    def test_acrs_provider(self):
        """With [oidc] acr_claim = "acrs" (Entra ID), a value of the acrs claim meets a route."""
        claims = f'{{"acrs": ["c1", "gold"], "auth_time": {self.NOW - 120:.0f}}}'
        status, lines = self.run_check(claims, "--path", "/admin", oidc='acr_claim = "acrs"\n')
        self.assertEqual(status, 0)
        self.assertIn("    step-up: met by acr 'gold' signed in 120s ago", lines)

    def test_unmet(self):
        """
        A sign-in too old or at another acr: why, and what a browser (a
        sign-in asking the route's acr_values and max_age) and an API client
        (401 insufficient_user_authentication) get; a bearer route has no
        browser sign-in. The rules are measured at the same time.
        """
        status, lines = self.run_check(
            f'{{"acr": "silver", "auth_time": {self.NOW - 1200:.0f}}}', "--path", "/admin/x")
        self.assertEqual(status, 0)
        self.assertEqual(lines, [
            "routes[0] (*/admin, auth = session): allowed (any authenticated user)",
            "    step-up: acr gold or platinum and a sign-in at most 900s old required; the"
            " sign-in has acr 'silver', signed in 1200s ago: a browser signs in again with"
            " acr_values=gold platinum max_age=900; an API client gets 401"
            " insufficient_user_authentication",
        ])
        status, lines = self.run_check(f'{{"acr": "gold", "auth_time": {self.NOW - 4000:.0f}}}',
                                       "--path", "/pay")
        self.assertEqual(status, 2)
        self.assertEqual(lines, [
            "routes[1] (*/pay, auth = bearer): denied: NotOlderThan(`auth_time`, `1h`) is false:"
            " auth_time is 4000s ago, more than 1h",
            "    NotOlderThan(`auth_time`, `1h`): false (auth_time is 4000s ago, more than 1h)",
            "    step-up: met by acr 'gold' signed in 4000s ago",
        ])
        status, lines = self.run_check('{"sub": "a"}', "--path", "/pay")
        self.assertEqual(lines[-1], "    step-up: acr gold required; the sign-in has no acr,"
                                    " no auth_time: an API client gets 401"
                                    " insufficient_user_authentication")

    def test_decision_words(self):
        """
        The step-up line names the sign-in that meets a route (an acr asked
        for alone needs no auth_time; an age alone needs no acr), and a
        session_or_bearer route says what both a browser and an API client get.
        """
        config = parse_config({
            "public_url": "https://app.example",
            "oidc": {"issuer": "https://idp.example", "client_id": "c", "client_secret": "s"},
            "session": {"secrets": [SECRET]},
            "routes": [
                {"path": "/acr", "upstream": "http://127.0.0.1:9", "acr_values": ["gold"]},
                {"path": "/age", "upstream": "http://127.0.0.1:9", "max_auth_age": "1h",
                 "auth": "session_or_bearer"},
            ],
        }, "t.toml")
        acr, age = config.routes
        now = self.NOW
        self.assertEqual(tap.step_up_decision(acr, {"acr": "gold"}, now),
                         "met by acr 'gold' at an unknown time")
        self.assertEqual(tap.step_up_decision(age, {"auth_time": now - 60}, now),
                         "met by a sign-in without acr signed in 60s ago")
        # With the provider's acr_claim = "acrs" (Entra ID), any value of acrs counts.
        self.assertEqual(tap.step_up_decision(acr, {"acrs": ["c1", "gold"]}, now, "acrs"),
                         "met by acr 'gold' at an unknown time")
        self.assertTrue(tap.step_up_decision(acr, {"acrs": ["c1", "gold"]}, now).startswith(
            "acr gold required"))
        self.assertEqual(tap.step_up_decision(age, {"acr": "gold", "auth_time": "x"}, now),
                         "a sign-in at most 3600s old required; the sign-in has acr 'gold', no"
                         " auth_time: a browser signs in again with max_age=3600; an API client"
                         " gets 401 insufficient_user_authentication")
