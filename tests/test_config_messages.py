"""
Tests for how configuration problems read to someone writing their first
file: causes before their consequences, TOML syntax errors in plain words
with a line, and the C{http://} a URL written as C{host:port} lacks.

They go through L{oidcproxy.tap.check}, what C{twistd oidcproxy --check}
and a start print, or through L{oidcproxy.config.load_config} beneath it.
"""

from __future__ import annotations

import io
import os
import resource

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from oidcproxy import tap
from oidcproxy.config import ConfigError, load_config, parse_config
from oidcproxy.config.parse import toml_problem

from .fakes import SECRET

OIDC = (
    '[oidc]\nissuer = "https://idp.example.com"\nclient_id = "proxy"\n'
    'client_secret = "a-client-secret"\n'
)


class CheckCase(SynchronousTestCase):
    def write(self, text: str) -> str:
        path = os.path.abspath(self.mktemp()) + ".toml"
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def check(self, text: str) -> list:
        """The lines C{--check} prints for a file holding C{text}; it must fail."""
        path = self.write(text)
        self.patch(resource, "getrlimit", lambda which: (1024, 1 << 20))
        options = tap.Options()
        options.parseOptions(["--config", path, "--check"])
        out, err = io.StringIO(), io.StringIO()
        self.assertEqual(tap.check(options, out, err, reactor=MemoryReactorClock()), 1)
        self.path = path
        return out.getvalue().splitlines()


class ProblemOrderTests(CheckCase):
    def test_unknown_key_before_the_required_one(self):
        """A misspelt route key is reported before the key it leaves missing."""
        lines = self.check('[[routes]]\npath = "/"\nauth = "none"\nupstrem = "http://127.0.0.1:9"\n')
        self.assertEqual(lines, [
            f"config: routes[0].upstrem: unknown key; did you mean 'upstream'? (in {self.path})",
            f"config: routes[0].upstream: is required (in {self.path})",
        ])

    def test_unknown_keys_of_every_table_come_first(self):
        """
        The unknown keys of all tables come before every other problem, even
        one found in an earlier table: a misspelt C{[odic]} explains why the
        routes have no C{[oidc]} table.
        """
        lines = self.check(
            'public_url = "https://proxy.example.com"\n'
            '[[routes]]\npath = "/"\nupstream = "http://127.0.0.1:9"\ntimeout = "x"\n'
            + OIDC.replace("[oidc]", "[odic]")
            + f'[session]\nsecrets = ["{SECRET}"]\nlifetim = "8h"\n'
        )
        self.assertEqual([line.split(":")[1].strip() for line in lines], [
            "session.lifetim", "odic", "routes[0].timeout", "routes[0].auth",
        ])
        self.assertIn("did you mean 'lifetime'?", lines[0])

    def test_order_within_each_group_kept(self):
        """Unknown keys keep their order among themselves, and the other problems theirs."""
        with self.assertRaises(ConfigError) as caught:
            parse_config({
                "zzz": 1,
                "workers": 0,
                "routes": [{"path": "x", "upstream": "http://a", "auth": "none", "aaa": 1}],
            }, "t.toml")
        self.assertEqual(caught.exception.problems, [
            "routes[0].aaa: unknown key",
            "zzz: unknown key",
            "workers: 0 is out of range; expected between 1 and 64",
            "routes[0].path: 'x' must start with '/'",
        ])


class TOMLSyntaxTests(CheckCase):
    def test_unterminated_basic_string(self):
        """A string whose closing quote is missing is called that, with its line."""
        lines = self.check('workers = 1\n\nname = "abc\n[[routes]]\n')
        self.assertEqual(lines, [
            f'config: TOML syntax error on line 3: unterminated string: a closing " is missing '
            f"(in {self.path})",
        ])

    def test_unterminated_literal_string(self):
        """The same for a literal ('...') string."""
        path = self.write("a = 'abc\nb = 'x'\n")
        e = self.assertRaises(ConfigError, load_config, path)
        self.assertEqual(e.problems, [
            "TOML syntax error on line 1: unterminated string: a closing ' is missing"])

    def test_unterminated_at_the_end_of_the_file(self):
        """A string the file ends in is unterminated at the end of the file."""
        path = self.write('workers = 1\nname = "abc')
        e = self.assertRaises(ConfigError, load_config, path)
        self.assertEqual(e.problems, [
            'TOML syntax error at the end of the file: unterminated string: a closing " is missing'])

    def test_other_errors_keep_their_words_and_gain_a_line(self):
        """Another syntax error keeps the parser's message, after its line and column."""
        path = self.write('workers = 1\n[routes\n')
        e = self.assertRaises(ConfigError, load_config, path)
        self.assertEqual(e.problems, [
            "TOML syntax error on line 2, column 8: Expected ']' at the end of a table declaration"])
        self.assertIn(path, str(e))

    def test_unknown_shape_kept_whole(self):
        """A message without a place (another parser version) is kept as it is."""
        self.assertEqual(toml_problem("Something odd"), "TOML syntax error: Something odd")


class HostPortTests(CheckCase):
    def route(self, upstream: str) -> dict:
        return {"routes": [{"path": "/", "upstream": upstream, "auth": "none"}]}

    def test_upstream_suggests_http(self):
        """An upstream written as host:port gets 'did you mean http://...?'."""
        for value in ("127.0.0.1:9000", "localhost:8080", "backend:80", "[::1]:8080",
                      "backend:80/api"):
            e = self.assertRaises(ConfigError, parse_config, self.route(value), "t.toml")
            self.assertEqual(e.problems, [
                f"routes[0].upstream: {value!r} is not an http(s) URL; "
                f"did you mean 'http://{value}'?"])

    def test_through_check(self):
        """--check prints the suggestion."""
        lines = self.check('[[routes]]\npath = "/"\nauth = "none"\nupstream = "backend:80"\n')
        self.assertEqual(lines, [
            "config: routes[0].upstream: 'backend:80' is not an http(s) URL; "
            f"did you mean 'http://backend:80'? (in {self.path})"])

    def test_other_urls_suggest_http(self):
        """The issuer, public_url and the logout redirect get the same suggestion."""
        data = {
            "public_url": "proxy.example.com:8443",
            "routes": [{"path": "/", "upstream": "http://127.0.0.1:9"}],
            "oidc": {"issuer": "idp:8080", "client_id": "c", "client_secret": "s",
                     "post_logout_redirect_url": "localhost:3000/bye"},
            "session": {"secrets": [SECRET]},
        }
        e = self.assertRaises(ConfigError, parse_config, data, "t.toml")
        hinted = [p for p in e.problems if "did you mean 'http://" in p]
        self.assertEqual([p.split(":")[0] for p in hinted],
                         ["public_url", "oidc.issuer", "oidc.post_logout_redirect_url"], e.problems)

    def test_websocket_origin_suggests_http(self):
        """An origin written as host:port gets the suggestion too."""
        e = self.assertRaises(ConfigError, parse_config,
                              {**self.route("http://a"), "websocket_origins": ["localhost:3000"]},
                              "t.toml")
        self.assertEqual(len(e.problems), 1)
        self.assertIn("did you mean 'http://localhost:3000'?", e.problems[0])

    def test_no_suggestion_for_other_values(self):
        """A value that is not host:port (another scheme, no port, a space) gets none."""
        for value in ("ftp://backend:21", "backend", "http//backend:80", "backend:80 x", "backend:port"):
            e = self.assertRaises(ConfigError, parse_config, self.route(value), "t.toml")
            self.assertEqual(e.problems, [f"routes[0].upstream: {value!r} is not an http(s) URL"])
