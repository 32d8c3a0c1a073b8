"""
Tests for L{oidcproxy.config}: the schema, its defaults, and errors that name
the file, the key path and the problem.
"""

from __future__ import annotations

import ipaddress
import os
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from oidcproxy.config import (
    ClientLimits,
    ConfigError,
    Secret,
    UpstreamSettings,
    load_config,
    parse_config,
    parse_duration,
    parse_size,
)

from .fakes import OTHER_SECRET, SECRET
from .helpers import use_example_env

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLE = os.path.join(os.path.dirname(HERE), "etc", "oidcproxy.toml")

MINIMAL = {"routes": [{"path": "/", "upstream": "http://127.0.0.1:9000", "auth": "none"}]}


def _route(**extra):
    r = {"path": "/", "upstream": "http://127.0.0.1:9000", "auth": "none"}
    r.update(extra)
    return r


class ParseHelpersTests(SynchronousTestCase):
    def test_durations(self):
        """Durations are a number and a unit, combinable; seconds come out."""
        cases = {"30s": 30.0, "500ms": 0.5, "5m": 300.0, "8h": 28800.0, "1d": 86400.0,
                 "1h30m": 5400.0, "0s": 0.0, "1.5s": 1.5}
        for text, seconds in cases.items():
            self.assertEqual(parse_duration(text), seconds, text)

    def test_bad_durations(self):
        """Bare numbers, unknown units and junk are refused."""
        for text in ["30", "s", "", "5 m", "1w", "-1s", "1s ", "h1"]:
            self.assertRaises(ValueError, parse_duration, text)

    def test_infinite_duration(self):
        """
        A number too long for a float is refused, not read as an infinite
        duration (a session lifetime of infinity broke every login).
        """
        for text in ["1" * 400 + "s", "9" * 309 + "ms", "2" * 305 + "d"]:
            e = self.assertRaises(ValueError, parse_duration, text)
            self.assertIn("too long a duration", str(e))
        e = self.assertRaises(ConfigError, parse_config,
                              dict(MINIMAL, session={"lifetime": "1" * 400 + "s"}), "x.toml")
        self.assertEqual(len(e.problems), 1)
        self.assertTrue(e.problems[0].startswith("session.lifetime: "), e.problems)

    def test_sizes(self):
        """Sizes: bytes, decimal units, binary units."""
        cases = {"10MB": 10_000_000, "1KB": 1000, "4KiB": 4096, "1GiB": 1 << 30,
                 "123": 123, "7B": 7, 42: 42}
        for text, n in cases.items():
            self.assertEqual(parse_size(text), n, text)

    def test_bad_sizes(self):
        """Unknown units, negative numbers and booleans are refused."""
        for text in ["10TB", "MB", "1.5MB", -1, True, "ten"]:
            self.assertRaises(ValueError, parse_size, text)


class SchemaTests(SynchronousTestCase):
    def test_defaults(self):
        """A config with just one route gets the documented defaults."""
        c = parse_config(MINIMAL, "x.toml")
        self.assertEqual(c.listen, ("tcp:8080:interface=127.0.0.1",))
        self.assertEqual(c.endpoints_prefix, "/oidc")
        self.assertEqual(c.workers, 1)
        self.assertEqual(c.trusted_proxies, ())
        self.assertEqual(c.upstream, UpstreamSettings())
        self.assertEqual(c.routes[0].settings, UpstreamSettings())
        self.assertEqual(c.routes[0].name, "routes[0]")
        self.assertIsNone(c.oidc)

    def test_route_overrides_upstream_defaults(self):
        """[upstream] sets defaults; a route's own keys override them."""
        c = parse_config(
            {
                "upstream": {"timeout": "10s", "max_body_size": "1MB", "max_connections": 4},
                "routes": [_route(timeout="2s"), _route(path="/b")],
            },
            "x.toml",
        )
        self.assertEqual(c.routes[0].settings.timeout, 2.0)
        self.assertEqual(c.routes[0].settings.max_body_size, 1_000_000)
        self.assertEqual(c.routes[0].settings.max_connections, 4)
        self.assertEqual(c.routes[1].settings.timeout, 10.0)

    def test_upstream_queue(self):
        """
        max_queued defaults to 16 x max_connections (of the same table or
        inherited), may be 0; queue_timeout defaults to 5 s; both inherit
        from [upstream] and a route overrides them.
        """
        c = parse_config(MINIMAL, "x.toml")
        self.assertEqual((c.routes[0].settings.queue_limit, c.routes[0].settings.queue_timeout),
                         (4096, 5.0))
        c = parse_config(
            {
                "upstream": {"max_connections": 4, "queue_timeout": "2s"},
                "routes": [_route(), _route(path="/b", max_connections=10),
                           _route(path="/c", max_queued=0, queue_timeout="500ms")],
            },
            "x.toml",
        )
        self.assertEqual([(r.settings.queue_limit, r.settings.queue_timeout) for r in c.routes],
                         [(64, 2.0), (160, 2.0), (0, 0.5)])
        c = parse_config({"upstream": {"max_queued": 100}, "routes": [_route(max_connections=1)]},
                         "x.toml")
        self.assertEqual(c.routes[0].settings.queue_limit, 100)

    def test_route_fields(self):
        """Route keys are parsed: prefix normalised, host lower-cased, upstream slash dropped."""
        c = parse_config(
            {"routes": [_route(path="/api/", host="API.Example.com",
                               upstream="https://up.internal/base/", strip_prefix=True,
                               pass_host_header=True, allow_encoded_slashes=True)]},
            "x.toml",
        )
        r = c.routes[0]
        self.assertEqual(
            (r.path, r.host, r.upstream, r.strip_prefix, r.pass_host_header,
             r.allow_encoded_slashes),
            ("/api", "api.example.com", "https://up.internal/base", True, True, True),
        )

    def test_http2(self):
        """http2 is on unless set to false (then TLS listeners offer only http/1.1)."""
        self.assertTrue(parse_config(MINIMAL, "x.toml").http2)
        self.assertFalse(parse_config(dict(MINIMAL, http2=False), "x.toml").http2)
        e = self.assertRaises(ConfigError, parse_config, dict(MINIMAL, http2="no"), "x.toml")
        self.assertIn("http2", str(e))

    def test_trusted_proxies(self):
        """trusted_proxies takes addresses and networks."""
        c = parse_config(dict(MINIMAL, trusted_proxies=["10.0.0.0/8", "::1"]), "x.toml")
        self.assertEqual(
            c.trusted_proxies,
            (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128")),
        )

    def test_upstream_client_certificate(self):
        """client_cert/client_key: readable files, both or neither, in [upstream] and per route."""
        other = os.path.abspath(__file__)
        c = parse_config(
            {
                "upstream": {"client_cert": EXAMPLE, "client_key": EXAMPLE},
                "routes": [_route(), _route(path="/b", client_cert=other, client_key=other)],
            },
            "x.toml",
        )
        self.assertEqual((c.upstream.client_cert, c.upstream.client_key), (EXAMPLE, EXAMPLE))
        self.assertEqual((c.routes[0].settings.client_cert, c.routes[0].settings.client_key),
                         (EXAMPLE, EXAMPLE))
        self.assertEqual((c.routes[1].settings.client_cert, c.routes[1].settings.client_key),
                         (other, other))
        self.assertEqual((UpstreamSettings().client_cert, UpstreamSettings().client_key),
                         (None, None))
        e = self.assertRaises(ConfigError, parse_config, {
            "upstream": {"client_cert": EXAMPLE},
            "routes": [_route(client_key=EXAMPLE),
                       _route(path="/b", client_cert="/nonexistent/c.pem", client_key=EXAMPLE)],
        }, "x.toml")
        self.assertEqual(e.problems, [
            "upstream.client_key: is required with client_cert (both or neither)",
            "routes[0].client_cert: is required with client_key (both or neither)",
            "routes[1].client_cert: /nonexistent/c.pem is not a readable file",
        ])

    def test_example_config_is_valid(self):
        """etc/oidcproxy.toml loads: / needs login, /public is public, both to 127.0.0.1:9000."""
        use_example_env(self)
        c = load_config(EXAMPLE)
        self.assertEqual([(r.path, r.upstream, r.auth) for r in c.routes],
                         [("/", "http://127.0.0.1:9000", "session"),
                          ("/public", "http://127.0.0.1:9000", "none")])
        self.assertEqual(c.redirect_uri, "http://127.0.0.1:8080/oidc/callback")
        self.assertEqual(c.oidc.client_secret.reveal(), "example-client-secret")

    def test_example_config_commented_sections_are_valid(self):
        """Every commented-out option in the example is valid when uncommented."""
        with open(EXAMPLE, encoding="utf-8") as f:
            lines = f.read().splitlines()
        # Uncomment "# key = value" and "# [table]" lines, not prose.
        out = []
        for line in lines:
            stripped = line.lstrip("# ")
            if line.startswith("# ") and (
                stripped.startswith("[") or (" = " in stripped and stripped.split(" = ")[0]
                                             .replace("_", "").replace("-", "").isalnum())
            ):
                out.append(stripped)
            else:
                out.append(line)
        text = "\n".join(out)
        use_example_env(self)
        for name in ("upstream-ca.pem", "internal-ca.pem", "idp-ca.pem", "client_key.pem",
                     "redis-ca.pem", "upstream-client.pem", "upstream-client-key.pem",
                     "idp-client.pem", "idp-client-key.pem"):
            text = text.replace("/etc/oidcproxy/" + name, EXAMPLE)
        text = text.replace('"/etc/oidcproxy/templates"', repr(os.path.dirname(EXAMPLE)))
        text = text.replace('{ credential = "redis-password" }', '"redis-pw"')
        text = text.replace('{ credential = "admin-token" }', '"admin-token-0123456789"')
        # provider and providers are alternatives (and a choice is not served yet): keep provider.
        text = text.replace("providers = []", "")
        text = text.replace('{ credential = "corp-secret" }', '"corp-secret"')
        # jwks_uri and jwks_file are alternatives: keep the URL.
        text = text.replace('jwks_file = "/etc/oidcproxy/gateway-jwks.json"', "")
        # hmac_secret needs an HS* algorithm; the state cookie's domain, an https public_url.
        text = text.replace('hmac_secret = { file = "/etc/oidcproxy/bearer-hmac-secret" }', "")
        text = text.replace('domain = "example.com"                  #', "#")
        text = text.replace("sentinel = []", 'sentinel = ["10.0.0.1:26379", "10.0.0.2:26379"]')
        text = text.replace('audiences = []', 'audiences = ["orders-api"]')
        # An empty acr_values is refused (leave it out): the example shows the default.
        text = text.replace("acr_values = []", 'acr_values = ["gold"]')
        text = text.replace('store = "cookie"  ', 'store = "redis"  ')
        # ca_bundle is for TLS only: try the rediss:// spelling of the URL.
        text = text.replace('url = "redis://127.0.0.1', 'url = "rediss://127.0.0.1')
        with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
            f.write(text)
        self.addCleanup(os.unlink, f.name)
        c = load_config(f.name)
        self.assertEqual(len(c.routes), 3)
        self.assertEqual(c.routes[2].host, "api.example.com")
        self.assertEqual(c.oidc.issuer, "http://127.0.0.1:8081/realms/demo")
        self.assertEqual(dict(c.oidc.auth_params), {"prompt": "login", "acr_values": "mfa"})
        self.assertEqual(c.oidc.callback_path, "/oidc/callback")
        self.assertEqual(c.oidc.private_key_id, "key-1")
        self.assertEqual(c.session.cookie_domain, "example.com")
        self.assertEqual(c.redis.url, "rediss://127.0.0.1:6379/0")
        self.assertEqual((c.redis.sentinel[0], c.redis.master_name),
                         (("10.0.0.1", 26379), "mymaster"))
        self.assertEqual(c.oidc.post_logout_redirect_uri, "https://app.example.com/bye")
        self.assertEqual(c.admin.listen, "tcp:9091:interface=127.0.0.1")
        self.assertEqual(c.routes[0].provider, "corp")
        self.assertEqual(c.provider_config("corp").callback_path, "/oidc/callback/corp")


class ErrorTests(SynchronousTestCase):
    def problems(self, data):
        e = self.assertRaises(ConfigError, parse_config, data, "/etc/x.toml")
        return e.problems

    def test_error_lines_name_file_and_key(self):
        """Each error line names the key path and the file."""
        e = self.assertRaises(
            ConfigError, parse_config, {"routes": [_route(upstream="htp://x")]}, "/etc/x.toml"
        )
        self.assertEqual(
            e.lines(),
            ["config: routes[0].upstream: 'htp://x' is not an http(s) URL (in /etc/x.toml)"],
        )

    def test_all_problems_reported(self):
        """Every problem is reported, not just the first."""
        problems = self.problems(
            {
                "listen": "tcp:80",
                "workers": 0,
                "routes": [_route(timeout="soon"), {"path": "api", "auth": "none"}],
            }
        )
        self.assertEqual(
            problems,
            [
                "listen: expected a list of strings, got a string ('tcp:80')",
                "workers: 0 is out of range; expected between 1 and 64",
                "routes[0].timeout: 'soon' is not a duration; use a number and a unit "
                '(ms, s, m, h, d), like "30s"',
                "routes[1].path: 'api' must start with '/'",
                "routes[1].upstream: is required",
            ],
        )

    def test_unknown_keys(self):
        """Unknown keys are errors at every level, with a suggestion when close."""
        problems = self.problems(
            {"listn": [], "upstream": {"timout": "1s"}, "routes": [_route(upstreem="x")]}
        )
        self.assertEqual(
            sorted(problems),
            [
                "listn: unknown key; did you mean 'listen'?",
                "routes[0].upstreem: unknown key; did you mean 'upstream'?",
                "upstream.timout: unknown key; did you mean 'timeout'?",
            ],
        )

    def test_invalid_route_path_leaves_other_keys_known(self):
        """
        A route whose path is invalid still reads its other keys: they are
        checked, and none is called unknown.
        """
        problems = self.problems({"routes": [_route(path="api", pass_host_header=True,
                                                    policy_mode="enfoce")]})
        self.assertEqual(
            problems,
            [
                "routes[0].path: 'api' must start with '/'",
                "routes[0].policy_mode: 'enfoce' is not one of 'enforce', 'audit'",
            ],
        )

    def test_key_with_control_characters(self):
        """A quoted key holding a newline is shown escaped: every problem stays one line."""
        problems = self.problems({"a\nb": 1, "upstream": {"x\u2028y": 1},
                                  "headers": {"X-A\rB": "sub"}, "routes": [_route()]})
        self.assertEqual(
            sorted(problems),
            [
                "'a\\nb': unknown key",
                "headers.'X-A\\rB': 'X-A\\rB' is not a valid header name",
                "upstream.'x\\u2028y': unknown key",
            ],
        )
        self.assertTrue(all(len(p.splitlines()) == 1 for p in problems), problems)

    def test_routes_required(self):
        """A config without routes is refused."""
        self.assertEqual(self.problems({}), ["routes: at least one [[routes]] entry is required"])

    def test_wrong_types(self):
        """A value of the wrong type names what was expected and what was found."""
        problems = self.problems({"routes": [_route(strip_prefix="yes", max_connections="4")]})
        self.assertEqual(
            problems,
            [
                "routes[0].strip_prefix: expected true or false, got a string ('yes')",
                "routes[0].max_connections: expected an integer, got a string ('4')",
            ],
        )

    def test_upstream_queue_errors(self):
        """
        max_queued is a non-negative integer; queue_timeout a positive
        duration, at most the timeout of the same table (an inherited one is
        cut to the route's timeout instead).
        """
        problems = self.problems({
            "upstream": {"queue_timeout": "90s"},
            "routes": [_route(max_queued=-1), _route(path="/b", queue_timeout="0s"),
                       _route(path="/c", timeout="10s", queue_timeout="11s"),
                       _route(path="/d", max_queued="many")],
        })
        self.assertEqual(problems, [
            "upstream.queue_timeout: 90s is longer than timeout (60s), which a request's "
            "wait counts against",
            "routes[0].max_queued: -1 is out of range; expected >= 0",
            "routes[1].queue_timeout: '0s' must be longer than zero",
            "routes[2].queue_timeout: 11s is longer than timeout (10s), which a request's "
            "wait counts against",
            "routes[3].max_queued: expected an integer, got a string ('many')",
        ])
        c = parse_config({"upstream": {"queue_timeout": "20s"}, "routes": [_route(timeout="10s")]},
                         "x.toml")
        self.assertEqual(c.routes[0].settings.queue_timeout, 20.0)  # waits at most 10 s

    def test_duplicate_route(self):
        """Two routes with the same host and path are refused."""
        problems = self.problems({"routes": [_route(), _route()]})
        self.assertEqual(
            problems, ["routes[1].path: '/' on every host is already routed by routes[0]"]
        )

    def test_route_inside_endpoints_prefix(self):
        """A route under the proxy's own endpoint prefix is refused."""
        problems = self.problems({"routes": [_route(), _route(path="/oidc/x")]})
        self.assertEqual(problems, ["routes[1].path: '/oidc/x' is inside endpoints_prefix '/oidc'"])

    def test_auth_modes(self):
        """auth defaults to "session", which needs [oidc], public_url and session secrets;
        unknown modes are refused."""
        problems = self.problems(
            {"routes": [{"path": "/", "upstream": "http://h"},
                        _route(path="/s", auth="bearer"), _route(path="/z", auth="bogus")]}
        )
        self.assertEqual(
            problems,
            [
                "routes[2].auth: 'bogus' is not one of 'session', 'bearer', "
                "'session_or_bearer', 'optional', 'none'",
                'routes[0].auth: is "session" (the default), which needs an [oidc] table; '
                'set auth = "none" for a public route',
                'public_url: is required for login (routes[0] has auth = "session")',
                'session.secrets: at least one secret is required for login '
                '(routes[0] has auth = "session")',
            ],
        )

    def test_bad_values(self):
        """Hosts, prefixes, URLs, networks and ranges are validated."""
        problems = self.problems(
            {
                "trusted_proxies": ["10.0.0.300"],
                "endpoints_prefix": "/",
                "routes": [
                    _route(host="exa mple.com", path="/a/../b"),
                    _route(path="/c", upstream="http://user:pw@h", strip_prefix=True,
                           replace_prefix="/d"),
                    _route(path="/e", max_body_size="lots", connect_timeout="0s",
                           ca_bundle="/nonexistent/ca.pem"),
                ],
            }
        )
        self.assertEqual(
            problems,
            [
                "trusted_proxies[0]: '10.0.0.300' is not an IP address or CIDR network",
                "endpoints_prefix: must not be '/': the proxy's endpoints need a prefix of their own",
                "routes[0].path: '/a/../b' must be a normalised path (no '.', '..' or '//' segments)",
                "routes[0].host: 'exa mple.com' is not a host name or a '*.example.com' wildcard",
                "routes[1].upstream: 'http://user:pw@h' must not contain user information",
                "routes[1].replace_prefix: cannot be combined with strip_prefix = true",
                "routes[2].connect_timeout: '0s' must be longer than zero",
                "routes[2].max_body_size: 'lots' is not a size; use bytes or a unit "
                "(KB, MB, GB, KiB, MiB, GiB)",
                "routes[2].ca_bundle: /nonexistent/ca.pem is not a readable file",
            ],
        )

    def test_toml_syntax_error(self):
        """A TOML syntax error names the file."""
        with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
            f.write("listen = [\n")
        self.addCleanup(os.unlink, f.name)
        e = self.assertRaises(ConfigError, load_config, f.name)
        self.assertEqual(len(e.problems), 1)
        self.assertTrue(e.problems[0].startswith("TOML syntax error "), e.problems)
        self.assertIn(f.name, str(e))

    def test_not_utf8(self):
        """A file that is not UTF-8 is a one-line config error, not a traceback."""
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b'workers = 1\n# caf\xe9\n')
        e = self.assertRaises(ConfigError, load_config, path)
        self.assertEqual(e.problems, ["not UTF-8 text: byte 0xe9 at offset 17"])
        self.assertIn(path, str(e))

    def test_missing_file(self):
        """An unreadable file is a config error naming the file."""
        e = self.assertRaises(ConfigError, load_config, "/nonexistent/oidcproxy.toml")
        self.assertEqual(
            e.lines(),
            ["config: cannot read the file: No such file or directory "
             "(in /nonexistent/oidcproxy.toml)"],
        )


class SecretTests(SynchronousTestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp()
        self.addCleanup(lambda: [os.unlink(os.path.join(self.dir, n))
                                 for n in os.listdir(self.dir)] and os.rmdir(self.dir))

    def config(self, secret, env=None):
        data = dict(MINIMAL, oidc={"issuer": "https://idp.example", "client_id": "c",
                                   "client_secret": secret})
        saved = dict(os.environ)
        self.addCleanup(lambda: (os.environ.clear(), os.environ.update(saved)))
        for k, v in (env or {}).items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        return parse_config(data, "x.toml")

    def write(self, name, text):
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_literal(self):
        """A literal string is the secret, and its repr does not show it."""
        s = self.config("hunter2").oidc.client_secret
        self.assertEqual(s.reveal(), "hunter2")
        self.assertNotIn("hunter2", repr(s))

    def test_env(self):
        """{ env = NAME } reads the environment."""
        s = self.config({"env": "OIDCPROXY_T"}, {"OIDCPROXY_T": "from-env"}).oidc.client_secret
        self.assertEqual(s, Secret("from-env", ""))

    def test_file_strips_one_newline(self):
        """{ file = PATH } reads the file, dropping one trailing newline."""
        path = self.write("s", "from-file\n")
        self.assertEqual(self.config({"file": path}).oidc.client_secret.reveal(), "from-file")

    def test_credential(self):
        """{ credential = NAME } reads $CREDENTIALS_DIRECTORY/NAME."""
        self.write("client", "from-cred")
        s = self.config({"credential": "client"}, {"CREDENTIALS_DIRECTORY": self.dir})
        self.assertEqual(s.oidc.client_secret.reveal(), "from-cred")

    def test_missing_sources_are_errors(self):
        """A missing variable, file or credential directory is an error naming it."""
        cases = [
            ({"env": "OIDCPROXY_NOPE"}, {"OIDCPROXY_NOPE": None},
             "oidc.client_secret: environment variable OIDCPROXY_NOPE is not set"),
            ({"file": "/nonexistent/s"}, {},
             "oidc.client_secret: cannot read secret file /nonexistent/s: No such file or directory"),
            ({"credential": "c"}, {"CREDENTIALS_DIRECTORY": None},
             "oidc.client_secret: credential 'c' needs $CREDENTIALS_DIRECTORY "
             "(set by systemd's LoadCredential=)"),
            ({"credential": "../etc/passwd"}, {"CREDENTIALS_DIRECTORY": "/tmp"},
             "oidc.client_secret: credential name '../etc/passwd' must not contain '/'"),
            ({"vault": "x"}, {},
             "oidc.client_secret: unknown secret reference 'vault'; use env, file or "
             "credential with a string"),
            ({"env": "A", "file": "B"}, {},
             'oidc.client_secret: expected a string or one of { env = "NAME" }, '
             '{ file = "/path" }, { credential = "name" }'),
        ]
        for ref, env, expected in cases:
            e = self.assertRaises(ConfigError, self.config, ref, env)
            self.assertEqual(e.problems, [expected], ref)

    def test_control_characters_in_references(self):
        """
        A variable, file or credential name with a control character (a NUL,
        a newline) is a one-line error, not a traceback from open() or a
        message split over lines.
        """
        cases = [
            ({"file": "/tmp/a\x00b"}, {},
             "oidc.client_secret: file name '/tmp/a\\x00b' holds a control character"),
            ({"credential": "k\x00"}, {"CREDENTIALS_DIRECTORY": "/tmp"},
             "oidc.client_secret: credential name 'k\\x00' holds a control character"),
            ({"env": "A\nB"}, {}, "oidc.client_secret: env name 'A\\nB' holds a control character"),
            ({"file": "/tmp/x\ny"}, {},
             "oidc.client_secret: file name '/tmp/x\\ny' holds a control character"),
        ]
        for ref, env, expected in cases:
            e = self.assertRaises(ConfigError, self.config, ref, env)
            self.assertEqual(e.problems, [expected], ref)
            self.assertEqual(len(str(e).splitlines()), 1, ref)

    def test_empty_secrets_are_errors(self):
        """An empty literal, variable or file is never an empty secret."""
        empty = self.write("empty", "\n")
        cases = [
            ("", {}, "oidc.client_secret: is empty"),
            ({"env": "OIDCPROXY_EMPTY"}, {"OIDCPROXY_EMPTY": ""},
             "oidc.client_secret: environment variable OIDCPROXY_EMPTY is empty"),
            ({"file": empty}, {}, f"oidc.client_secret: file {empty} is empty"),
        ]
        for ref, env, expected in cases:
            e = self.assertRaises(ConfigError, self.config, ref, env)
            self.assertEqual(e.problems, [expected], ref)

    def test_session_secrets_length(self):
        """Session secrets shorter than 32 bytes are refused, naming their source."""
        e = self.assertRaises(
            ConfigError, parse_config, dict(MINIMAL, session={"secrets": ["short"]}), "x.toml"
        )
        self.assertEqual(
            e.problems, ["session.secrets[0]: the secret from the config file is too short: 5 "
                         "bytes of UTF-8 text, at least 32 are needed; make one with: python3 -c "
                         "'import secrets; print(secrets.token_hex(32))'"]
        )

    def test_session_secrets_decoded_length(self):
        """
        32 characters are not 32 bytes when they are hex or base64: the
        secrets are measured once decoded, and 32 decoded bytes pass.
        """
        sixteen = "3f" * 8 + "a1b2c3d4e5f60718"  # 16 bytes, 32 hex digits
        cases = [
            (sixteen + "09192a3b4c5d6e7f", "24 bytes once decoded from hex"),
            ("a" * 32, "16 bytes once decoded from hex"),
            ("x" * 32, "24 bytes once decoded from base64"),
            ("yMnKy8zNzs_Q0dLT1NXW19jZ2tvc3d7f4OHi4-Tl5g==", "31 bytes once decoded from base64url"),
            ("yMnKy8zNzs_Q0dLT1NXW19jZ2tvc3d7f4OHi4-Tl5g", "31 bytes once decoded from base64url"),
            ("ZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXp7fH1+f4CBgoM=", None),  # 32 bytes in base64
            ("ZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXp7fH1-f4CBgoM", None),  # and unpadded base64url
            ("correct horse battery staple, 35 B", None),  # UTF-8 text
        ]
        for secret, measured in cases:
            data = dict(MINIMAL, session={"secrets": [SECRET, secret]})
            if measured is None:
                self.assertEqual(parse_config(data, "x.toml").session.secrets[1].reveal(), secret)
                continue
            e = self.assertRaises(ConfigError, parse_config, data, "x.toml")
            self.assertEqual(e.problems, [
                f"session.secrets[1]: the secret from the config file is too short: {measured}, "
                "at least 32 are needed; make one with: python3 -c 'import secrets; "
                "print(secrets.token_hex(32))'"])

    def test_redis_store_needs_redis(self):
        """session.store = "redis" without a [redis] table is refused."""
        e = self.assertRaises(
            ConfigError, parse_config, dict(MINIMAL, session={"store": "redis"}), "x.toml"
        )
        self.assertEqual(e.problems, ['session.store: "redis" needs a [redis] table with url'])


LOGIN = {
    "public_url": "https://app.example.com/",
    "oidc": {"issuer": "https://idp.example.com", "client_id": "proxy", "client_secret": "s"},
    "session": {"secrets": [SECRET]},
    "routes": [{"path": "/", "upstream": "http://127.0.0.1:9000"}],
}


def _login(**oidc):
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in LOGIN.items()}
    data["oidc"].update(oidc)
    return data


class LoginConfigTests(SynchronousTestCase):
    def problems(self, data):
        return self.assertRaises(ConfigError, parse_config, data, "x.toml").problems

    def test_names_ending_in_a_line_feed(self):
        """
        Header names, cookie names, route hosts and the cookie domain are
        checked whole: a trailing newline (which a C{$}-anchored pattern lets
        through) is refused, one problem each.
        """
        data = _login()
        data["headers"] = {"X-User\n": "sub"}
        data["session"] = dict(data["session"], cookie_name="sid\n", cookie_domain="example.com\n")
        data["routes"] = [{"path": "/", "upstream": "http://127.0.0.1:9000",
                           "host": "app.example.com\n"}]
        problems = self.problems(data)
        self.assertEqual(len(problems), 4, problems)
        for key in ("headers", "session.cookie_name", "session.cookie_domain", "routes[0].host"):
            self.assertTrue(any(p.startswith(key) for p in problems), (key, problems))

    def test_login_defaults(self):
        """A minimal login config gets the documented defaults."""
        c = parse_config(_login(), "x.toml")
        o = c.oidc
        self.assertEqual(c.public_url, "https://app.example.com")
        self.assertEqual(c.redirect_uri, "https://app.example.com/oidc/callback")
        self.assertEqual(c.routes[0].auth, "session")
        self.assertEqual(
            (o.scopes, o.pkce, o.token_endpoint_auth_method, o.discovery, o.leeway, o.timeout,
             o.userinfo, o.pass_access_token, o.pass_id_token, o.id_token_algorithms),
            (("openid", "email", "profile"), True, "client_secret_basic", True, 60.0, 5.0,
             False, "none", False, ()),
        )
        self.assertEqual((c.state_cookie.name, c.state_cookie.max_age, c.state_cookie.max_count),
                         ("oidcproxy_state", 600.0, 5))
        self.assertEqual(c.headers[0], ("X-Forwarded-User", ("preferred_username", "sub")))

    def test_callback_path(self):
        """callback_path moves the callback (and the redirect_uri)."""
        c = parse_config(_login(callback_path="/auth/cb"), "x.toml")
        self.assertEqual((c.callback_path, c.redirect_uri),
                         ("/auth/cb", "https://app.example.com/auth/cb"))

    def test_client_auth_requirements(self):
        """Each client authentication method needs its credential; public clients need PKCE."""
        data = _login(token_endpoint_auth_method="private_key_jwt")
        self.assertEqual(self.problems(data), [
            "oidc.private_key: is required with token_endpoint_auth_method = 'private_key_jwt'"])
        data = _login(token_endpoint_auth_method="client_secret_post")
        del data["oidc"]["client_secret"]
        self.assertEqual(self.problems(data), [
            "oidc.client_secret: is required with token_endpoint_auth_method = "
            "'client_secret_post'"])
        self.assertEqual(self.problems(_login(token_endpoint_auth_method="none", pkce=False)), [
            "oidc.pkce: must be true for a public client (token_endpoint_auth_method = 'none')"])

    def test_manual_endpoints(self):
        """Without discovery the three core endpoints are required."""
        self.assertEqual(self.problems(_login(discovery=False, jwks_uri="https://idp/jwks")), [
            "oidc.authorization_endpoint: is required when discovery = false",
            "oidc.token_endpoint: is required when discovery = false",
        ])
        c = parse_config(_login(discovery=False, jwks_uri="https://i/j",
                                authorization_endpoint="https://i/a",
                                token_endpoint="https://i/t"), "x.toml")
        self.assertEqual(dict(c.oidc.endpoints), {"authorization_endpoint": "https://i/a",
                                                  "token_endpoint": "https://i/t",
                                                  "jwks_uri": "https://i/j"})

    def test_auth_params(self):
        """Extra authorization parameters are strings and may not override the proxy's own."""
        c = parse_config(_login(auth_params={"prompt": "login", "acr_values": "mfa"}), "x.toml")
        self.assertEqual(c.oidc.auth_params, (("prompt", "login"), ("acr_values", "mfa")))
        self.assertEqual(
            self.problems(_login(auth_params={"redirect_uri": "https://evil", "max_age": 5})),
            ["oidc.auth_params.redirect_uri: is set by the proxy itself and cannot be configured",
             "oidc.auth_params.max_age: expected a string, got a number (5)"],
        )

    def test_algorithms(self):
        """ID token algorithms come from a fixed list; 'none' is not in it; HS* need the secret."""
        self.assertEqual(self.problems(_login(id_token_algorithms=["none"])), [
            "oidc.id_token_algorithms[0]: 'none' is not one of RS256, RS384, RS512, PS256, "
            "PS384, PS512, ES256, ES384, ES512, EdDSA, HS256, HS384, HS512"])
        data = _login(id_token_algorithms=["HS256"], token_endpoint_auth_method="none")
        del data["oidc"]["client_secret"]
        self.assertEqual(self.problems(data),
                         ["oidc.id_token_algorithms: HS* algorithms need a client_secret"])

    def test_login_needs_public_url_and_secrets(self):
        """Login routes need public_url and session secrets."""
        data = _login()
        del data["public_url"]
        data["session"] = {}
        self.assertEqual(self.problems(data), [
            'public_url: is required for login (routes[0] has auth = "session")',
            'session.secrets: at least one secret is required for login '
            '(routes[0] has auth = "session")',
        ])

    def test_headers_table(self):
        """[headers] maps a header to a claim or a list of claims; names are checked."""
        data = _login()
        data["headers"] = {"X-User": ["preferred_username", "sub"], "X-Email": "email"}
        c = parse_config(data, "x.toml")
        self.assertEqual(c.headers, (("X-User", ("preferred_username", "sub")),
                                     ("X-Email", ("email",))))
        data["headers"] = {"X User": "sub", "X-A": [], "x-email": "e", "X-EMAIL": "f"}
        self.assertEqual(self.problems(data), [
            "headers.X User: 'X User' is not a valid header name",
            "headers.X-A: expected a claim name or a list of them, got a list",
            "headers.X-EMAIL: is set twice (header names are case-insensitive)",
        ])

    def test_session_and_state_cookie_keys(self):
        """Session cookie attributes and the state cookie table are validated."""
        data = _login()
        data["session"] = {"secrets": [SECRET], "same_site": "Strict", "cookie_domain":
                           "example.com", "store_tokens": False, "max_cookie_chunks": 3}
        data["state_cookie"] = {"name": "st", "max_age": "5m", "max_count": 2}
        c = parse_config(data, "x.toml")
        s = c.session
        self.assertEqual((s.same_site, s.cookie_domain, s.store_tokens, s.max_cookie_chunks),
                         ("Strict", "example.com", False, 3))
        self.assertEqual((c.state_cookie.name, c.state_cookie.max_age, c.state_cookie.max_count),
                         ("st", 300.0, 2))
        data["session"] = {"secrets": [SECRET], "same_site": "lax", "cookie_domain": ".x.com",
                           "max_cookie_chunks": 0}
        data["state_cookie"] = {"name": "a b", "max_count": 50}
        self.assertEqual(self.problems(data), [
            "session.cookie_domain: '.x.com' is not a cookie domain (a host name without a "
            "leading dot)",
            "session.same_site: 'lax' is not one of 'Lax', 'Strict', 'None'",
            "session.max_cookie_chunks: 0 is out of range; expected between 1 and 20",
            "state_cookie.name: 'a b' is not a valid cookie name",
            "state_cookie.max_count: 50 is out of range; expected between 1 and 20",
        ])


    def test_session_claims(self):
        """session.claims: "all" (the default) or "used"; anything else names the key."""
        data = _login()
        self.assertEqual(parse_config(data, "x.toml").session.claims, "all")
        data["session"] = {"secrets": [SECRET], "claims": "used"}
        self.assertEqual(parse_config(data, "x.toml").session.claims, "used")
        data["session"] = {"secrets": [SECRET], "claims": "some"}
        self.assertEqual(self.problems(data),
                         ["session.claims: 'some' is not one of 'all', 'used'"])


class RedisConfigTests(SynchronousTestCase):
    def test_defaults_and_keys(self):
        """[redis] keys: URL, credentials as secrets, prefix, pool, timeouts, sentinel."""
        c = parse_config(dict(MINIMAL, redis={
            "url": "rediss://cache.internal:6380/2", "username": "proxy", "password": "pw",
            "key_prefix": "app1:", "pool_size": 20, "command_timeout": "500ms",
            "sentinel": ["10.0.0.1:26379", "[::1]:26380"], "master_name": "main"}), "x.toml")
        r = c.redis
        self.assertEqual(
            (r.url, r.username, r.password.reveal(), r.key_prefix, r.pool_size,
             r.connect_timeout, r.command_timeout, r.sentinel, r.master_name),
            ("rediss://cache.internal:6380/2", "proxy", "pw", "app1:", 20, 2.0, 0.5,
             (("10.0.0.1", 26379), ("::1", 26380)), "main"),
        )

    def test_bad_values(self):
        """A password in the URL, a non-numeric database, bad sentinels are refused."""
        e = self.assertRaises(ConfigError, parse_config, dict(MINIMAL, redis={
            "url": "redis://:secret@h/x", "sentinel": ["nohost"]}), "x.toml")
        self.assertEqual(e.problems, [
            "redis.sentinel[0]: 'nohost' is not a host:port address",
            "redis.url: must not hold a password; use redis.password (a secret reference)",
        ])
        e = self.assertRaises(ConfigError, parse_config, dict(MINIMAL, redis={
            "url": "redis://h/x", "sentinel": ["h:1"]}), "x.toml")
        self.assertEqual(e.problems, [
            "redis.master_name: is required with sentinel",
            "redis.url: 'redis://h/x': the path must be a database number",
        ])
        e = self.assertRaises(ConfigError, parse_config, dict(MINIMAL, redis={
            "url": "redis://h/0", "master_name": "m", "ca_bundle": EXAMPLE}), "x.toml")
        self.assertEqual(e.problems, [
            "redis.master_name: only makes sense with sentinel",
            "redis.ca_bundle: only makes sense with a rediss:// url (TLS)",
        ])

    def test_session_refresh_keys(self):
        """Refresh mode, leeway, interval, outage grace and revocation are read."""
        c = parse_config(dict(MINIMAL, session={
            "refresh": "interval", "refresh_interval": "10m", "refresh_leeway": "30s",
            "idp_outage_grace": "15m", "revoke_on_logout": False}), "x.toml")
        s = c.session
        self.assertEqual((s.refresh, s.refresh_interval, s.refresh_leeway, s.idp_outage_grace,
                          s.revoke_on_logout), ("interval", 600.0, 30.0, 900.0, False))


HMAC_SECRET = OTHER_SECRET


class TokenConfigTests(SynchronousTestCase):
    """oidc.iat_slack, and bearer.algorithms with bearer.hmac_secret."""

    def problems(self, data):
        return self.assertRaises(ConfigError, parse_config, data, "x.toml").problems

    def bearer(self, **bearer):
        return dict(_login(), bearer=bearer)

    def test_iat_slack(self):
        """oidc.iat_slack: 10 minutes by default, a positive duration."""
        self.assertEqual(parse_config(_login(), "x.toml").oidc.iat_slack, 600.0)
        self.assertEqual(parse_config(_login(iat_slack="2m"), "x.toml").oidc.iat_slack, 120.0)
        self.assertEqual(self.problems(_login(iat_slack="0s")),
                         ["oidc.iat_slack: '0s' must be longer than zero"])
        self.assertEqual(self.problems(_login(iat_slack=600)),
                         ['oidc.iat_slack: expected a duration string like "30s", got a number (600)'])

    def test_bearer_hmac(self):
        """HS* in bearer.algorithms with bearer.hmac_secret, a secret reference."""
        path = os.path.join(tempfile.mkdtemp(), "bearer-hmac")
        self.addCleanup(os.rmdir, os.path.dirname(path))
        with open(path, "w") as f:
            f.write(HMAC_SECRET + "\n")
        self.addCleanup(os.unlink, path)
        b = parse_config(self.bearer(algorithms=["HS256", "RS256"], hmac_secret={"file": path}),
                         "x.toml").bearer
        self.assertEqual((b.algorithms, b.hmac_secret.reveal()), (("HS256", "RS256"), HMAC_SECRET))
        self.assertNotIn(HMAC_SECRET, repr(b))
        b = parse_config(self.bearer(algorithms=["ES256", "EdDSA"]), "x.toml").bearer
        self.assertEqual((b.algorithms, b.hmac_secret), (("ES256", "EdDSA"), None))

    def test_bearer_hmac_problems(self):
        """Each half without the other, the client secret, a short or key-like secret: refused."""
        pem = "-----BEGIN PUBLIC KEY-----\n" + "A" * 40 + "\n-----END PUBLIC KEY-----"
        cases = [
            (dict(algorithms=["HS256"]),
             "bearer.algorithms: HS* algorithms need bearer.hmac_secret (access tokens are never "
             "checked with the client secret)"),
            (dict(algorithms=["RS256"], hmac_secret=HMAC_SECRET),
             "bearer.hmac_secret: is used only with an HS* algorithm in bearer.algorithms"),
            (dict(hmac_secret=HMAC_SECRET),
             "bearer.hmac_secret: is used only with an HS* algorithm in bearer.algorithms"),
            (dict(algorithms=["HS256"], hmac_secret="s"),
             "bearer.hmac_secret: must not be the client secret: whoever holds it (the IdP, every "
             "instance of this client) could sign access tokens for any user"),
            (dict(algorithms=["HS512"], hmac_secret="short"),
             "bearer.hmac_secret: the secret from the config file is too short: 5 bytes of UTF-8 "
             "text, at least 32 are needed; make one with: python3 -c 'import secrets; "
             "print(secrets.token_hex(32))'"),
            (dict(algorithms=["HS512"], hmac_secret=SECRET[:62]),
             "bearer.hmac_secret: the secret from the config file is too short: 31 bytes once "
             "decoded from hex, at least 32 are needed; make one with: python3 -c 'import "
             "secrets; print(secrets.token_hex(32))'"),
            (dict(algorithms=["HS256"], hmac_secret=pem),
             "bearer.hmac_secret: looks like a key (PEM, SSH or JWK), not a shared secret "
             "(from the config file)"),
            (dict(algorithms=["HS256"], hmac_secret="ssh-rsa " + "A" * 40),
             "bearer.hmac_secret: looks like a key (PEM, SSH or JWK), not a shared secret "
             "(from the config file)"),
            (dict(algorithms=["HS256"], hmac_secret='{"kty": "oct", "k": "' + "A" * 40 + '"}'),
             "bearer.hmac_secret: looks like a key (PEM, SSH or JWK), not a shared secret "
             "(from the config file)"),
            (dict(algorithms=["HS256"], hmac_secret={"env": "OIDCPROXY_NO_SUCH_VARIABLE"}),
             "bearer.hmac_secret: environment variable OIDCPROXY_NO_SUCH_VARIABLE is not set"),
            (dict(algorithms=["none"]),
             "bearer.algorithms[0]: 'none' is not one of RS256, RS384, RS512, PS256, PS384, "
             "PS512, ES256, ES384, ES512, EdDSA, HS256, HS384, HS512"),
        ]
        for bearer, expected in cases:
            self.assertEqual(self.problems(self.bearer(**bearer)), [expected], bearer)


class ClientLimitsConfigTests(SynchronousTestCase):
    """The top-level keys bounding what clients may hold and how slowly they may send."""

    def problems(self, **keys):
        e = self.assertRaises(ConfigError, parse_config, dict(MINIMAL, **keys), "/etc/x.toml")
        return e.problems

    def test_defaults(self):
        """Header deadline 30 s; body: 20 s, then 500 bytes a second; 10,000 connections."""
        self.assertEqual(parse_config(MINIMAL, "x.toml").client_limits, ClientLimits(
            header_timeout=30.0, body_timeout=20.0, body_min_rate=500, max_connections=10000,
            max_per_address=0))

    def test_values(self):
        c = parse_config(dict(MINIMAL, client_header_timeout="10s", client_body_timeout="0s",
                              client_body_min_rate="1KB", max_client_connections=500,
                              max_client_connections_per_address=20), "x.toml")
        self.assertEqual(c.client_limits, ClientLimits(
            header_timeout=10.0, body_timeout=0.0, body_min_rate=1000, max_connections=500,
            max_per_address=20))

    def test_header_timeout_errors(self):
        self.assertEqual(self.problems(client_header_timeout="0s"),
                         ["client_header_timeout: '0s' must be longer than zero"])
        self.assertEqual(self.problems(client_header_timeout=30),
                         ['client_header_timeout: expected a duration string like "30s", '
                          "got a number (30)"])

    def test_body_errors(self):
        self.assertEqual(self.problems(client_body_timeout="soon", client_body_min_rate="fast"), [
            "client_body_timeout: 'soon' is not a duration; use a number and a unit "
            '(ms, s, m, h, d), like "30s"',
            "client_body_min_rate: 'fast' is not a size; use bytes or a unit "
            "(KB, MB, GB, KiB, MiB, GiB)",
        ])

    def test_connection_cap_errors(self):
        self.assertEqual(self.problems(max_client_connections=0),
                         ["max_client_connections: 0 is out of range; expected >= 1"])
        self.assertEqual(self.problems(max_client_connections_per_address=-1),
                         ["max_client_connections_per_address: -1 is out of range; expected >= 0"])
        self.assertEqual(
            self.problems(max_client_connections=100, max_client_connections_per_address=101),
            ["max_client_connections_per_address: 101 is above max_client_connections (100)"])

    def test_example_file_has_the_defaults(self):
        """etc/oidcproxy.toml documents the defaults."""
        use_example_env(self)
        self.assertEqual(load_config(EXAMPLE).client_limits, ClientLimits())
