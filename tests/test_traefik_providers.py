"""
C{oidcproxy-import-traefik} with several OIDC middlewares: each becomes a
provider (the first one the IngressRoutes use C{[oidc]}, the others
C{[providers.NAME]}), and each route names the provider of the middleware
it uses.
"""

from __future__ import annotations

import io
import os
from typing import Any, Dict, List, Tuple

import yaml
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from oidcproxy.config import parse_config
from oidcproxy.tools.traefik import convert, load_documents, main

from .fakes import SECRET
from .test_traefik import DATA, ROOT, WarningsMixin, ingress, middleware, route, service, tomllib

SAMPLE = os.path.join(DATA, "providers.yaml")
GUIDE = os.path.join(ROOT, "docs", "howto", "from-traefik-hub.rst")
"""Two middlewares (staff, partners) and three IngressRoutes, as a user would have them."""

STAFF = middleware({"issuer": "https://login.example.com/staff", "clientID": "apps",
                    "clientSecret": "urn:k8s:secret:staff:secret",
                    "redirectUrl": "https://apps.example.com/oidc/callback",
                    "claims": "Contains(`groups`, `staff`)",
                    "usernameClaim": "preferred_username",
                    "logoutUrl": "/logout"}, name="staff")
PARTNERS = middleware({"issuer": "https://partners.example.com/", "clientID": "portal",
                       "clientSecret": "urn:k8s:secret:partners:secret",
                       "redirectUrl": "https://apps.example.com/partners/callback",
                       "scopes": ["openid", "email"], "pkce": True,
                       "authParams": {"acr_values": "mfa"},
                       "clientConfig": {"timeoutSeconds": 10, "maxRetries": 2}},
                      name="partner.portal")
THREE_ROUTES = [
    ingress(route("Host(`apps.example.com`) && PathPrefix(`/`)", middlewares=("staff",)),
            name="staff-apps"),
    ingress(route("Host(`apps.example.com`) && PathPrefix(`/portal`)",
                  middlewares=("partner.portal",)),
            name="portal"),
    ingress(route("Host(`apps.example.com`) && PathPrefix(`/admin`)", middlewares=("staff",)),
            route("Host(`apps.example.com`) && PathPrefix(`/status`)", middlewares=()),
            name="admin"),
]


def run(*docs: Dict[str, Any], **options: Any) -> Tuple[Dict[str, Any], List[str], str]:
    text = yaml.safe_dump_all(docs)
    result = convert(load_documents(text, "providers.yaml"), **options)
    return tomllib.loads(result.toml), list(result.warnings), result.toml


def wiring(data: Dict[str, Any]) -> List[Tuple[str, str, Any, Any]]:
    """(path, auth, provider, rule) of each route."""
    return [(r["path"], r["auth"], r.get("provider"), r.get("rule")) for r in data["routes"]]


class SeveralMiddlewaresTests(SynchronousTestCase, WarningsMixin):
    """Two middlewares, three IngressRoutes."""

    def credentials(self, *names: str) -> str:
        """Supply the credentials C{names} (default: the tests' two) and C{session-key}; their directory."""
        directory = self.mktemp()
        os.makedirs(directory)
        for name in (*(names or ("staff-secret", "partners-secret")), "session-key"):
            with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
                f.write(SECRET + "\n")
        self.patch(os, "environ", dict(os.environ, CREDENTIALS_DIRECTORY=directory))
        return directory

    def test_each_middleware_a_provider(self):
        """
        The first middleware used is [oidc], the other [providers.NAME] with
        every option mapped as [oidc]'s would be; the routes name the
        provider of their middleware (none for [oidc]) and carry its rule.
        """
        data, warnings, _ = run(PARTNERS, STAFF, *THREE_ROUTES, service())
        self.assertEqual(data["oidc"]["issuer"], "https://login.example.com/staff")
        self.assertEqual(data["oidc"]["callback_path"], "/oidc/callback")
        self.assertEqual(data["oidc"]["logout_path"], "/logout")
        self.assertEqual(list(data["providers"]), ["partner-portal"])
        self.assertEqual(data["providers"]["partner-portal"], {
            "issuer": "https://partners.example.com/",
            "client_id": "portal",
            "client_secret": {"credential": "partners-secret"},
            "scopes": ["openid", "email"],
            "pkce": True,
            "callback_path": "/partners/callback",
            "auth_params": {"acr_values": "mfa"},
            "timeout": "10s",
            "max_retries": 2,
        })
        self.assertEqual(data["username_claim"], "preferred_username")
        staff_rule = "Contains(`groups`, `staff`)"
        self.assertEqual(wiring(data), [
            ("/", "session", None, staff_rule),
            ("/portal", "session", "partner-portal", None),
            ("/admin", "session", None, staff_rule),
            ("/status", "none", None, None),
        ])
        self.assertNotWarned(warnings, "several")

    def test_config_parser_accepts_it(self):
        """The output, credentials supplied, is a configuration the real parser accepts."""
        self.credentials()
        _, _, text = run(PARTNERS, STAFF, *THREE_ROUTES, service())
        config = parse_config(tomllib.loads(text), "imported.toml")
        self.assertEqual([name for name, _ in config.providers], ["partner-portal"])
        [(_, partners)] = config.providers
        self.assertEqual(partners.issuer, "https://partners.example.com/")
        self.assertEqual(partners.callback_path, "/partners/callback")
        self.assertEqual([(r.path, r.provider) for r in config.routes],
                         [("/", None), ("/portal", "partner-portal"), ("/admin", None),
                          ("/status", None)])

    def test_sample_file_checks(self):
        """
        The sample file (two middlewares, three IngressRoutes) through the
        console script: `twistd oidcproxy --check` accepts the output, and
        its routes name the right providers.
        """
        from oidcproxy.tap import Options, check

        directory = self.credentials("staff-oidc-clientSecret", "partners-oidc-clientSecret")
        out, err = io.StringIO(), io.StringIO()
        self.assertEqual(main([SAMPLE], stdout=out, stderr=err), 0, err.getvalue())
        data = tomllib.loads(out.getvalue())
        self.assertEqual([(r["path"], r["auth"], r.get("provider")) for r in data["routes"]], [
            ("/", "session", None), ("/portal", "session", "partners-oidc"),
            ("/admin", "session", None), ("/status", "none", None)])
        self.assertEqual(data["oidc"]["client_id"], "apps")
        self.assertEqual(data["providers"]["partners-oidc"]["client_id"], "partner-portal")
        path = os.path.join(directory, "oidcproxy.toml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(out.getvalue())
        options = Options()
        options.parseOptions(["--config", path, "--check"])
        report = io.StringIO()
        self.assertEqual(check(options, report, reactor=MemoryReactorClock()), 0,
                         report.getvalue())
        self.assertEqual(report.getvalue(), "config OK\n")

    def test_guide_shows_the_output(self):
        """Each line the guide's "Several middlewares" example shows is the importer's, as printed."""
        with open(GUIDE, encoding="utf-8") as f:
            guide = f.read()
        section = guide[guide.index("Several middlewares\n"):guide.index("Supply the secrets\n")]
        block = section[section.index(".. code-block:: toml\n"):section.index("\n- ``NAME``")]
        shown = [line[4:] for line in block.splitlines()[1:] if line.strip()]
        self.assertGreater(len(shown), 20)
        out = io.StringIO()
        main([SAMPLE, "--upstream", "portal=http://127.0.0.1:9100"], stdout=out,
             stderr=io.StringIO())
        printed = out.getvalue().splitlines()
        self.assertEqual([line for line in shown if line not in printed], [])

    def main(self, *documents: str, args: Tuple[str, ...] = ()) -> Tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = main([*args, "-"], stdout=out, stderr=err,
                    stdin=io.StringIO("---\n".join(documents)))
        return code, out.getvalue(), err.getvalue()

    def test_default_middleware(self):
        """--default-middleware makes another middleware [oidc]; the first used becomes a provider."""
        data, _, _ = run(PARTNERS, STAFF, *THREE_ROUTES, service(),
                         default_middleware="apps/partner.portal")
        self.assertEqual(data["oidc"]["issuer"], "https://partners.example.com/")
        self.assertEqual(list(data["providers"]), ["staff"])
        self.assertEqual(data["providers"]["staff"]["issuer"], "https://login.example.com/staff")
        self.assertEqual([(r["path"], r.get("provider")) for r in data["routes"]],
                         [("/", "staff"), ("/portal", None), ("/admin", "staff"),
                          ("/status", None)])

    def test_default_middleware_option(self):
        """The console script's --default-middleware."""
        code, out, err = self.main(*(yaml.safe_dump(d) for d in (PARTNERS, STAFF, *THREE_ROUTES)),
                                   args=("--default-middleware", "partner.portal"))
        self.assertEqual(code, 0, err)
        self.assertEqual(list(tomllib.loads(out)["providers"]), ["staff"])

    def test_middleware_narrows(self):
        """--middleware imports one: no provider table, the other's routes left out."""
        data, warnings, _ = run(PARTNERS, STAFF, *THREE_ROUTES, service(), middleware="staff")
        self.assertNotIn("providers", data)
        self.assertEqual([r["path"] for r in data["routes"]], ["/", "/admin", "/status"])

    def test_what_is_once_for_all(self):
        """
        What oidcproxy has once (login and logout endpoints, [session],
        username_claim) comes from [oidc]'s middleware: a further one's
        differing options are reported, not carried over.
        """
        other = middleware({"loginUrl": "/partners/login", "logoutUrl": "/partners/logout",
                            "usernameClaim": "email", "session": {"name": "partners"},
                            "backchannelLogoutUrl": "/partners/bcl"}, name="b")
        data, warnings, _ = run(middleware(), other,
                                ingress(route("PathPrefix(`/a`)"),
                                        route("PathPrefix(`/b`)", middlewares=("b",))),
                                service())
        self.assertEqual(sorted(data["providers"]["b"]), [
            "client_id", "client_secret", "issuer", "scopes"])
        self.assertNotIn("username_claim", data)
        b = "Middleware apps/b: spec.plugin.oidc"
        self.assertWarned(warnings, f"{b}.loginUrl", "one loginUrl for every provider")
        self.assertWarned(warnings, f"{b}.logoutUrl", "one logoutUrl for every provider")
        self.assertWarned(warnings, f"{b}.usernameClaim", "one username_claim",
                          "Middleware apps/mw's is used")
        self.assertWarned(warnings, f"{b}.session", "one [session] for every provider")
        self.assertWarned(warnings, f"{b}.backchannelLogoutUrl", "/oidc/backchannel-logout\" for "
                          "every provider", "register that URL at the IdP")

    def test_same_callback(self):
        """
        Two middlewares with the same redirectUrl path: the second provider
        gets its default callback (one per provider), and is told so.
        """
        data, warnings, _ = run(middleware(), middleware(name="b"),
                                ingress(route("PathPrefix(`/a`)"),
                                        route("PathPrefix(`/b`)", middlewares=("b",))),
                                service())
        self.assertEqual(data["oidc"]["callback_path"], "/oidc/callback")
        self.assertNotIn("callback_path", data["providers"]["b"])
        self.assertWarned(warnings, "Middleware apps/b: spec.plugin.oidc.redirectUrl",
                          "/oidc/callback is already oidcproxy's (redirectUrl)",
                          "default callback path")

    def test_default_callback_taken(self):
        """
        [oidc]'s middleware has no redirectUrl: its callback is oidcproxy's
        default /oidc/callback, which a further provider cannot have too.
        """
        self.credentials("oidc-secret")
        data, warnings, text = run(middleware({"redirectUrl": None}), middleware(name="b"),
                                   ingress(route("PathPrefix(`/a`)"),
                                           route("PathPrefix(`/b`)", middlewares=("b",))))
        self.assertNotIn("callback_path", data["oidc"])
        self.assertNotIn("callback_path", data["providers"]["b"])
        self.assertWarned(warnings, "Middleware apps/b: spec.plugin.oidc.redirectUrl",
                          "/oidc/callback is already oidcproxy's ([oidc]'s default callback_path)")
        config = parse_config(tomllib.loads(text), "x.toml")
        self.assertEqual(config.providers[0][1].callback_path, "/oidc/callback/b")

    def test_one_path_twice(self):
        """
        A login or logout path that a callback already has is not carried
        over (one middleware alone, or a further one's callback on [oidc]'s
        logout path: the provider's default callback), so --check accepts it.
        """
        self.credentials("oidc-secret")
        data, warnings, text = run(middleware({"redirectUrl": "/logout", "logoutUrl": "/logout",
                                               "loginUrl": "/oidc/callback/b"}),
                                   middleware({"redirectUrl": "/logout"}, name="b"),
                                   ingress(route("PathPrefix(`/a`)"),
                                           route("PathPrefix(`/b`)", middlewares=("b",))))
        self.assertEqual(data["oidc"]["callback_path"], "/logout")
        self.assertNotIn("logout_path", data["oidc"])
        self.assertWarned(warnings, "logoutUrl", "/logout is already oidcproxy's (redirectUrl); "
                          "not carried over")
        self.assertNotIn("callback_path", data["providers"]["b"])
        self.assertNotIn("login_url", data["oidc"])
        self.assertWarned(warnings, "loginUrl", "/oidc/callback/b is already oidcproxy's "
                          "([providers.b]'s default callback_path); not carried over")
        parse_config(tomllib.loads(text), "x.toml")

    def test_other_origin(self):
        """A further middleware's redirectUrl on another origin: the path is kept, the origin named."""
        data, warnings, _ = run(
            middleware({"redirectUrl": "https://a.example.com/cb"}),
            middleware({"redirectUrl": "https://b.example.com/cb-b"}, name="b"),
            ingress(route("PathPrefix(`/a`)"), route("PathPrefix(`/b`)", middlewares=("b",))))
        self.assertEqual(data["public_url"], "https://a.example.com")
        self.assertEqual(data["providers"]["b"]["callback_path"], "/cb-b")
        self.assertWarned(warnings, "apps/b: spec.plugin.oidc.redirectUrl",
                          "origin https://b.example.com differs from public_url")

    def test_route_with_two_oidc_middlewares(self):
        """
        A route using two OIDC middlewares asks for a login at each in
        Traefik: not the meaning of C{providers = [...]} (a session of any
        one), so it is reported and left out, not widened.
        """
        data, warnings, _ = run(middleware(), middleware(name="b"),
                                ingress(route("PathPrefix(`/a`)"),
                                        route("PathPrefix(`/both`)", middlewares=("mw", "b"))),
                                service())
        self.assertEqual([r["path"] for r in data["routes"]], ["/a"])
        self.assertWarned(warnings, "IngressRoute apps/ir: spec.routes[1]",
                          "several OIDC middlewares (apps/mw, apps/b)", "a login at each",
                          "providers = [...] takes any one of them", "skipped")
        self.assertNotIn("providers", data["routes"][0])

    def test_unused_middleware(self):
        """A middleware no route uses is still a provider, last, and reported."""
        data, warnings, _ = run(middleware(name="unused"), middleware(),
                                ingress(route("PathPrefix(`/a`)")), service())
        self.assertEqual(data["oidc"]["client_id"], "proxy")
        self.assertEqual(list(data["providers"]), ["unused"])
        self.assertWarned(warnings, "Middleware apps/unused", "no IngressRoute in the input uses it")

    def test_names_sanitised_and_unique(self):
        """
        Provider names keep letters, digits, - and _ of the middleware's
        name (the rest become -) and are unique; the header names each
        middleware on comment lines whatever its name holds.
        """
        docs = [middleware(name="first"), middleware(name="a.b", namespace="one"),
                middleware(name="a_b", namespace="two"), middleware(name="a.b", namespace="three"),
                middleware(name="x\ny = 1 #"), middleware(name="a.b")]
        data, _, text = run(*docs, ingress(route("PathPrefix(`/a`)", middlewares=("first",))))
        self.assertEqual(list(data["providers"]), ["a-b", "a_b", "a-b-2", "x-y---1--", "a-b-3"])
        self.assertIn("#   three/a.b (providers.yaml#4)\n", text)
        self.assertIn("#   apps/x y = 1 # (providers.yaml#5)\n", text)
        self.assertNotIn("y", data)
        # Each provider table parses as [oidc] does.
        self.credentials()
        parse_config(tomllib.loads(text.replace('"oidc-secret"', '"staff-secret"')), "x.toml")

    def test_names_the_config_refuses_avoided(self):
        """
        A further middleware named C{oidc} (the name C{providers} lists give
        C{[oidc]}) or ending in C{_} and digits (a session cookie chunk's
        name) gets a provider name C{--check} accepts.
        """
        docs = [middleware(name="first"), middleware(name="oidc"), middleware(name="a_1"),
                middleware(name="a.1")]
        data, _, text = run(*docs, ingress(route("PathPrefix(`/a`)", middlewares=("first",)),
                                           route("PathPrefix(`/o`)", middlewares=("oidc",))))
        self.assertEqual(list(data["providers"]), ["oidc-2", "a-1", "a-1-2"])
        self.assertEqual(data["routes"][1]["provider"], "oidc-2")
        self.credentials()
        parse_config(tomllib.loads(text.replace('"oidc-secret"', '"staff-secret"')), "x.toml")

    def test_literal_secrets_apart(self):
        """Literal client secrets of two providers go to two credentials."""
        data, _, _ = run(middleware({"clientSecret": "one"}),
                         middleware({"clientSecret": "two"}, name="b"),
                         ingress(route("PathPrefix(`/a`)"),
                                 route("PathPrefix(`/b`)", middlewares=("b",))))
        self.assertEqual(data["oidc"]["client_secret"], {"credential": "client-secret"})
        self.assertEqual(data["providers"]["b"]["client_secret"], {"credential": "client-secret-b"})
