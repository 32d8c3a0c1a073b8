"""
Tests for the named providers of the configuration: C{[providers.NAME]}
tables read as C{[oidc]} is, each with a callback of its own, and the
routes' C{provider} and C{providers} keys, with the refusals C{--check}
prints for what cannot be served.
"""

from __future__ import annotations

import copy
import io
import resource
from typing import Any, Dict, List

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from oidcproxy import tap
from oidcproxy.config import Config, ConfigError, parse_config

from .fakes import SECRET

OIDC = {"issuer": "https://idp.example.com", "client_id": "proxy", "client_secret": "s3cret"}
CORP = {"issuer": "https://login.corp.example", "client_id": "corp-proxy",
        "client_secret": "c0rp", "scopes": ["openid", "email"]}
PARTNERS = {"issuer": "https://partners.example", "client_id": "p", "client_secret": "p4rt"}


def document(**changes: Any) -> Dict[str, Any]:
    """A valid file with [oidc], two named providers and a route of each."""
    doc: Dict[str, Any] = {
        "public_url": "https://app.example.com",
        "session": {"secrets": [SECRET]},
        "oidc": dict(OIDC),
        "providers": {"corp": dict(CORP), "partners": dict(PARTNERS)},
        "routes": [
            {"path": "/", "upstream": "http://127.0.0.1:9000"},
            {"path": "/staff", "upstream": "http://127.0.0.1:9001", "provider": "corp"},
        ],
    }
    doc.update(changes)
    return doc


class ProvidersCase(SynchronousTestCase):
    def parse(self, doc: Dict[str, Any]) -> Config:
        return parse_config(doc, "test.toml")

    def problems(self, doc: Dict[str, Any]) -> List[str]:
        e = self.assertRaises(ConfigError, parse_config, doc, "test.toml")
        return list(e.problems)


class ProviderTableTests(ProvidersCase):
    """[providers.NAME] tables."""

    def test_read_as_oidc(self) -> None:
        """A provider's table is read by [oidc]'s reader: the same keys and defaults."""
        config = self.parse(document())
        corp = config.provider_config("corp")
        assert corp is not None
        self.assertEqual((corp.issuer, corp.client_id, corp.scopes, corp.pkce),
                         ("https://login.corp.example", "corp-proxy", ("openid", "email"), True))
        self.assertEqual(corp.client_secret.reveal(), "c0rp")  # type: ignore[union-attr]
        self.assertEqual([name for name, _ in config.providers], ["corp", "partners"])

    def test_default_is_oidc(self) -> None:
        """No provider name (None or ""): [oidc]; an unknown name: None."""
        config = self.parse(document())
        self.assertIs(config.provider_config(None), config.oidc)
        self.assertIs(config.provider_config(""), config.oidc)
        self.assertIsNone(config.provider_config("nope"))

    def test_callback_path_from_name(self) -> None:
        """A provider's callback_path defaults to endpoints_prefix + /callback/NAME."""
        config = self.parse(document(endpoints_prefix="/auth"))
        self.assertEqual(config.provider_config("corp").callback_path,  # type: ignore[union-attr]
                         "/auth/callback/corp")
        self.assertEqual(config.callback_path, "/auth/callback")

    def test_callback_path_given(self) -> None:
        doc = document()
        doc["providers"]["corp"]["callback_path"] = "/corp-back"
        self.assertEqual(self.parse(doc).provider_config("corp").callback_path,  # type: ignore[union-attr]
                         "/corp-back")

    def test_problems_under_the_providers_key(self) -> None:
        """A provider's problems name its key path, unknown keys too."""
        doc = document()
        del doc["providers"]["corp"]["client_id"]
        doc["providers"]["corp"]["isuer"] = "x"
        self.assertEqual(self.problems(doc), [
            "providers.corp.isuer: unknown key; did you mean 'issuer'?",
            "providers.corp.client_id: is required",
        ])

    def test_bad_names(self) -> None:
        """A name with other characters than letters, digits, - and _ is refused."""
        for name in ("a b", "ü", "a.b", "x" * 65):
            doc = document()
            doc["providers"][name] = dict(CORP)
            self.assertEqual(self.problems(doc), [
                f"providers.{name}: {name!r} is not a provider name (1 to 64 letters, digits, "
                "- and _)"], name)

    def test_not_a_table(self) -> None:
        doc = document()
        doc["providers"]["corp"] = "https://login.corp.example"
        self.assertIn("providers.corp: expected a table ([providers.corp]), got a string "
                      "('https://login.corp.example')", self.problems(doc))

    def test_guard_wide_keys_refused(self) -> None:
        """logout_path and login_url are [oidc]'s only."""
        doc = document()
        doc["providers"]["corp"].update(logout_path="/corp-out", login_url="/corp-in")
        problems = self.problems(doc)
        self.assertEqual(len(problems), 2, problems)
        self.assertTrue(problems[0].startswith("providers.corp.logout_path: is not set per "
                                               "provider: the logout endpoint is one for every"))
        self.assertTrue(problems[1].startswith("providers.corp.login_url: is not set per provider"))

    def test_only_named_providers(self) -> None:
        """Without [oidc], routes that name a provider are served; one that names none is refused."""
        doc = document()
        del doc["oidc"]
        doc["routes"] = doc["routes"][1:]
        self.assertIsNone(self.parse(doc).oidc)
        doc["routes"].append({"path": "/x", "upstream": "http://127.0.0.1:9"})
        self.assertEqual(self.problems(doc), [
            'routes[1].auth: is "session" (the default), which needs an [oidc] table; set '
            'auth = "none" for a public route'])


class CallbackPathTests(ProvidersCase):
    """Each provider's callback is its own path."""

    def test_two_providers_one_path(self) -> None:
        doc = document()
        doc["providers"]["partners"]["callback_path"] = "/oidc/callback/corp"
        self.assertEqual(self.problems(doc), [
            "providers.partners.callback_path: '/oidc/callback/corp' is already the path of "
            "providers.corp.callback_path"])

    def test_provider_on_oidc_callback(self) -> None:
        doc = document()
        doc["providers"]["corp"]["callback_path"] = "/oidc/callback"
        self.assertEqual(self.problems(doc), [
            "providers.corp.callback_path: '/oidc/callback' is already the path of "
            "oidc.callback_path"])

    def test_provider_on_logout_path(self) -> None:
        doc = document()
        doc["providers"]["corp"]["callback_path"] = "/oidc/logout"
        self.assertEqual(self.problems(doc), [
            "providers.corp.callback_path: '/oidc/logout' is already the path of "
            "oidc.logout_path"])

    def test_state_cookie_reaches_every_callback(self) -> None:
        doc = document(state_cookie={"path": "/oidc"})
        doc["providers"]["corp"]["callback_path"] = "/corp/callback"
        self.assertEqual(self.problems(doc), [
            "state_cookie.path: '/oidc' does not cover the callback path '/corp/callback': the "
            "browser would not send the state cookie back"])

    def test_provider_landing_page(self) -> None:
        doc = document()
        doc["providers"]["corp"]["post_login_redirect_url"] = "https://elsewhere.example/"
        self.assertEqual(self.problems(doc), [
            "providers.corp.post_login_redirect_url: 'https://elsewhere.example/' is not on "
            "public_url's origin (https://app.example.com); give a path or a URL on that origin"])


class RouteProviderTests(ProvidersCase):
    """The routes' provider and providers keys."""

    def route(self, **keys: Any) -> Dict[str, Any]:
        doc = document()
        doc["routes"].append(dict({"path": "/r", "upstream": "http://127.0.0.1:9"}, **keys))
        return doc

    def test_route_provider(self) -> None:
        routes = self.parse(document()).routes
        self.assertEqual([(r.provider, r.providers) for r in routes], [(None, ()), ("corp", ())])

    def test_unknown_provider(self) -> None:
        self.assertEqual(self.problems(self.route(provider="crop")), [
            "routes[2].provider: 'crop' is not a provider (the providers defined: corp, "
            "partners)"])

    def test_unknown_provider_none_defined(self) -> None:
        doc = self.route(provider="corp")
        del doc["providers"]
        doc["routes"] = [doc["routes"][0], doc["routes"][2]]
        self.assertEqual(self.problems(doc), [
            "routes[1].provider: 'corp' is not a provider (there is no [providers.NAME] table)"])

    def test_bad_provider_name(self) -> None:
        self.assertEqual(self.problems(self.route(provider="a b")), [
            "routes[2].provider: 'a b' is not a provider name (1 to 64 letters, digits, - and _)"])

    def test_both_keys(self) -> None:
        self.assertIn("routes[2].providers: cannot be combined with provider: name one provider, "
                      "or list the providers to choose from",
                      self.problems(self.route(provider="corp", providers=["partners"])))

    def test_empty_choice(self) -> None:
        self.assertIn("routes[2].providers: is empty: no provider could serve this route",
                      self.problems(self.route(providers=[])))

    def test_public_route_with_provider(self) -> None:
        self.assertEqual(self.problems(self.route(provider="corp", auth="none")), [
            'routes[2].auth: "none" cannot be combined with provider or providers (nobody '
            "signs in on a public route)"])

    def test_choice(self) -> None:
        """A choice of providers: oidc names [oidc] (kept as ""), the others as they are."""
        route = self.parse(self.route(providers=["corp", "oidc"])).routes[2]
        self.assertEqual((route.provider, route.providers), (None, ("corp", "")))

    def test_choice_unknown_names(self) -> None:
        """Unknown names in a choice are named, each with its index."""
        self.assertEqual(self.problems(self.route(providers=["corp", "nope"])), [
            "routes[2].providers[1]: 'nope' is not a provider (the providers defined: corp, "
            "partners)"])

    def test_choice_twice(self) -> None:
        self.assertEqual(self.problems(self.route(providers=["corp", "corp"])), [
            "routes[2].providers: names a provider twice"])

    def test_choice_oidc_without_table(self) -> None:
        """oidc in a choice without an [oidc] table is refused."""
        doc = self.route(providers=["corp", "oidc"])
        del doc["oidc"]
        doc["routes"] = doc["routes"][2:]
        self.assertEqual(self.problems(doc), [
            "routes[0].providers[1]: 'oidc' names the [oidc] table, which this configuration "
            "does not have"])

    def test_table_named_oidc_refused(self) -> None:
        doc = self.route()
        doc["providers"]["oidc"] = dict(doc["providers"]["corp"])
        self.assertEqual(self.problems(doc), [
            "providers.oidc: 'oidc' is the name a route's providers list gives the [oidc] "
            "table: choose another name"])

    def test_bearer_modes_on_named_routes(self) -> None:
        """A route of a named provider takes every auth mode (its access tokens are its own)."""
        for auth in ("bearer", "session_or_bearer", "optional"):
            route = self.parse(self.route(provider="corp", auth=auth)).routes[2]
            self.assertEqual((route.provider, route.auth), ("corp", auth))

    def test_bearer_modes_on_default_routes(self) -> None:
        """[oidc]'s routes keep every auth mode."""
        for auth in ("bearer", "session_or_bearer", "optional"):
            self.parse(self.route(auth=auth))


class CheckTests(ProvidersCase):
    """What --check prints."""

    def test_check_names_the_key(self) -> None:
        path = self.mktemp() + ".toml"
        with open(path, "w", encoding="utf-8") as f:
            f.write(f'public_url = "https://app.example.com"\n[session]\nsecrets = ["{SECRET}"]\n'
                    '[[routes]]\npath = "/"\nupstream = "http://127.0.0.1:9"\nprovider = "corp"\n'
                    '[providers.crop]\nissuer = "https://login.corp.example"\n'
                    'client_id = "c"\nclient_secret = "s"\n')
        self.patch(resource, "getrlimit", lambda which: (1024, 1 << 20))
        options = tap.Options()
        options.parseOptions(["--config", path, "--check"])
        out, err = io.StringIO(), io.StringIO()
        self.assertEqual(tap.check(options, out, err, reactor=MemoryReactorClock()), 1)
        self.assertEqual(out.getvalue().splitlines(), [
            f"config: routes[0].provider: 'corp' is not a provider (the providers defined: "
            f"crop) (in {path})"])

    def test_document_untouched(self) -> None:
        """Parsing does not change the document it reads (a reload parses it again)."""
        doc = document()
        before = copy.deepcopy(doc)
        self.parse(doc)
        self.assertEqual(doc, before)
