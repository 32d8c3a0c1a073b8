"""
Tests for L{oidcproxy.tools.traefik}: Traefik Hub OIDC middleware YAML in, oidcproxy
TOML out, with everything that does not carry over listed, never dropped.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from oidcproxy.config import load_config, parse_config
from oidcproxy.tools.traefik import (
    TraefikImportError,
    convert,
    load_documents,
    main,
    names,
    parse_rule,
    toml_key,
    toml_string,
    toml_value,
)

from .fakes import SECRET

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on PyPy 3.9
    import tomli as tomllib

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data", "traefik")
SEED = os.path.join(DATA, "seed.yaml")
FULL = os.path.join(DATA, "full.yaml")
ROOT = os.path.dirname(HERE)

MW = "Middleware apps/mw: spec.plugin.oidc"
IR = "IngressRoute apps/ir: spec.routes[0]"


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def middleware(oidc: Optional[Dict[str, Any]] = None, name: str = "mw",
               namespace: str = "apps", **extra: Any) -> Dict[str, Any]:
    options = {"issuer": "https://idp.example.com", "clientID": "proxy",
               "clientSecret": "urn:k8s:secret:oidc:secret", "redirectUrl": "/oidc/callback"}
    options.update(oidc or {})
    for key in [k for k, v in options.items() if v is None]:
        del options[key]
    options.update(extra)
    return {"apiVersion": "traefik.io/v1alpha1", "kind": "Middleware",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"plugin": {"oidc": options}}}


def ingress(*routes: Dict[str, Any], name: str = "ir", namespace: str = "apps",
            **spec: Any) -> Dict[str, Any]:
    body = {"routes": list(routes)}
    body.update(spec)
    return {"apiVersion": "traefik.io/v1alpha1", "kind": "IngressRoute",
            "metadata": {"name": name, "namespace": namespace}, "spec": body}


def route(match: str, services: Any = None, middlewares: Any = ("mw",), **extra: Any) -> Dict[str, Any]:
    r = {"match": match, "kind": "Rule",
         "services": [{"name": "app", "port": 80}] if services is None else services,
         "middlewares": [{"name": m} if isinstance(m, str) else m for m in middlewares]}
    r.update(extra)
    return r


def service(name: str = "app", namespace: str = "apps", ports: Any = None, **spec: Any) -> Dict[str, Any]:
    body = {"ports": ports if ports is not None else [{"port": 80, "name": "http"}]}
    body.update(spec)
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": namespace}, "spec": body}


def run(*docs: Dict[str, Any], **options: Any) -> Tuple[Dict[str, Any], List[str], str]:
    """Import the documents: the parsed TOML, the warnings, the TOML text."""
    text = yaml.safe_dump_all(docs)
    result = convert(load_documents(text, "test.yaml"), **options)
    return tomllib.loads(result.toml), list(result.warnings), result.toml


def simple(oidc: Optional[Dict[str, Any]] = None, match: str = "PathPrefix(`/`)",
           **options: Any) -> Tuple[Dict[str, Any], List[str], str]:
    return run(middleware(oidc), ingress(route(match)), service(), **options)


class WarningsMixin:
    def assertWarned(self, warnings: Sequence[str], *fragments: str) -> None:
        """One warning holds every fragment."""
        for w in warnings:
            if all(f in w for f in fragments):
                return
        self.fail(f"no warning with {fragments!r} in:\n" + "\n".join(warnings))  # type: ignore

    def assertNotWarned(self, warnings: Sequence[str], fragment: str) -> None:
        bad = [w for w in warnings if fragment in w]
        self.assertEqual(bad, [])  # type: ignore


SEED_EXPECTED = {
    "public_url": "https://oidcproxy.invalid",
    "oidc": {
        "issuer": "https://idp.invalid",
        "client_id": "my-oauth-client-ID",
        "client_secret": {"credential": "oidc-client-client_secret"},
        "scopes": ["openid"],
        "callback_path": "/oidc/callback",
    },
    "session": {
        "secrets": [{"credential": "session-key"}],
        "lifetime": "7d",
        "idle_timeout": "24h",
        "sliding": True,
    },
    "headers": {},
    "routes": [
        {"path": "/my-app", "upstream": "http://whoami.apps.svc.cluster.local:80", "auth": "session"},
    ],
}


class SeedTests(SynchronousTestCase, WarningsMixin):
    """The example of the page this project started from (SEED.md)."""

    def convert_seed(self, text: Optional[str] = None, **options: Any):
        return convert(load_documents(text if text is not None else _read(SEED), "seed.yaml"), **options)

    def test_output(self):
        """The SEED example becomes exactly this configuration."""
        result = self.convert_seed()
        self.assertEqual(tomllib.loads(result.toml), SEED_EXPECTED)

    def test_fixme_comments(self):
        """Guessed values carry a FIXME comment: the address, the issuer, the public URL."""
        toml = self.convert_seed().toml
        self.assertIn('upstream = "http://whoami.apps.svc.cluster.local:80"  # FIXME: address\n', toml)
        self.assertIn('issuer = "https://idp.invalid"  # FIXME: the IdP\'s issuer URL '
                      "(the middleware said 'MY_ISSUER_URL')\n", toml)
        self.assertIn('public_url = "https://oidcproxy.invalid"  # FIXME:', toml)

    def test_name_with_a_line_break(self):
        """
        A middleware (and namespace) name holding a line break stays inside
        the header comment: the output is still valid TOML.
        """
        text = _read(SEED).replace("name: oidc-login\n", 'name: "oidc\\nlogin"\n', 1)
        self.assertNotEqual(text, _read(SEED))
        result = convert(load_documents(text, "seed.yaml"))
        tomllib.loads(result.toml)
        self.assertIn("Traefik Hub's OIDC middleware apps/oidc login\n", result.toml)

    def test_credentials_comment(self):
        """The secret reference becomes a credential; a comment says how to supply it."""
        result = self.convert_seed()
        self.assertIn("LoadCredential=NAME:/path/to/file", result.toml)
        self.assertIn("#   oidc-client-client_secret  Kubernetes Secret oidc-client, key client_secret",
                      result.toml)
        self.assertEqual(dict(result.credentials)["oidc-client-client_secret"],
                         "Kubernetes Secret oidc-client, key client_secret")
        self.assertIn("session-key", dict(result.credentials))

    def test_secret_value_not_copied(self):
        """The Secret document's client secret appears nowhere in the output."""
        result = self.convert_seed()
        self.assertNotIn("my-oauth-client-secret", result.toml)
        self.assertNotIn("my-oauth-client-secret", "\n".join(result.warnings))

    def test_warnings(self):
        """Everything not carried over exactly is listed, and nothing else."""
        warnings = self.convert_seed().warnings
        self.assertWarned(warnings, "public_url", "no host is known")
        self.assertWarned(warnings, "spec.plugin.oidc.issuer", "'MY_ISSUER_URL' is not an http(s) URL")
        self.assertWarned(warnings, "spec.entryPoints", "websecure")
        self.assertWarned(warnings, "Service apps/whoami has no address outside the cluster",
                          "--upstream whoami=URL")
        self.assertWarned(warnings, "Path(`/my-app`) is an exact match", "/my-app/... is routed too")
        self.assertWarned(warnings, "session.sliding", "no absolute end")
        self.assertEqual(len(warnings), 6, warnings)

    def test_options(self):
        """--public-url and --upstream replace the placeholders, and their warnings go."""
        result = self.convert_seed(public_url="https://app.example.com",
                                   upstreams={"whoami": "http://127.0.0.1:9000"})
        data = tomllib.loads(result.toml)
        self.assertEqual(data["public_url"], "https://app.example.com")
        self.assertEqual(data["routes"][0]["upstream"], "http://127.0.0.1:9000")
        self.assertNotWarned(result.warnings, "public_url")
        self.assertNotWarned(result.warnings, "services[0]")

    def write(self, text: str) -> str:
        path = os.path.join(self.mktemp_dir(), "oidcproxy.toml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def mktemp_dir(self) -> str:
        path = self.mktemp()
        os.makedirs(path)
        return path

    def credentials(self, **values: str) -> None:
        directory = self.mktemp_dir()
        for name, value in values.items():
            with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
                f.write(value + "\n")
        self.patch(os, "environ", dict(os.environ, CREDENTIALS_DIRECTORY=directory))

    def test_loads(self):
        """
        With the issuer placeholder of the page filled in and the credentials
        supplied, the printed configuration is accepted by load_config and
        routes and protects /my-app as Traefik did.
        """
        text = _read(SEED).replace("MY_ISSUER_URL", "https://idp.example.com/realms/apps")
        result = self.convert_seed(text)
        self.credentials(**{"oidc-client-client_secret": "my-oauth-client-secret",
                            "session-key": SECRET})
        config = load_config(self.write(result.toml))
        self.assertEqual(config.public_url, "https://oidcproxy.invalid")
        self.assertEqual(config.oidc.issuer, "https://idp.example.com/realms/apps")
        self.assertEqual(config.oidc.client_id, "my-oauth-client-ID")
        self.assertEqual(config.oidc.client_secret.reveal(), "my-oauth-client-secret")
        self.assertEqual(config.oidc.scopes, ("openid",))
        self.assertEqual(config.callback_path, "/oidc/callback")
        self.assertEqual(config.session.lifetime, 7 * 86400.0)
        self.assertEqual(config.session.idle_timeout, 86400.0)
        self.assertTrue(config.session.sliding)
        self.assertEqual(config.headers, ())
        [r] = config.routes
        self.assertEqual((r.path, r.host, r.upstream, r.auth, r.rule),
                         ("/my-app", None, "http://whoami.apps.svc.cluster.local:80", "session", None))

    def test_check_accepts_the_seed_output(self):
        """
        Printed for the page exactly as it is, with the credentials supplied,
        the configuration passes `twistd oidcproxy --check`.
        """
        from oidcproxy.tap import Options, check

        self.credentials(**{"oidc-client-client_secret": "s", "session-key": SECRET})
        options = Options()
        options.parseOptions(["--config", self.write(self.convert_seed().toml), "--check"])
        out = io.StringIO()
        self.assertEqual(check(options, out, reactor=MemoryReactorClock()), 0, out.getvalue())
        self.assertEqual(out.getvalue(), "config OK\n")


FULL_EXPECTED = {
    "public_url": "https://shop.example.com",
    "username_claim": "preferred_username",
    "oidc": {
        "issuer": "https://idp.example.com/realms/shop",
        "client_id": "shop-client",
        "client_secret": {"credential": "shop-oidc-clientSecret"},
        "scopes": ["openid", "email", "groups"],
        "pkce": True,
        "callback_path": "/auth/callback",
        "discovery_params": {"tenant": "shop"},
        "auth_params": {"prompt": "", "acr_values": "mfa"},
        "disable_login": False,
        "login_url": "/auth/login",
        "logout_path": "/auth/logout",
        "post_login_redirect_url": "/welcome",
        "post_logout_redirect_url": "https://www.example.com/bye",
        "timeout": "10s",
        "max_retries": 2,
        "ca_bundle": "/etc/oidcproxy/idp-tls-ca.pem",
        "client_cert": "/etc/oidcproxy/idp-tls-cert.pem",
        "client_key": "/etc/oidcproxy/idp-tls-key.pem",
        "insecure_skip_verify": False,
    },
    "session": {
        "secrets": [{"credential": "session-key"}],
        "cookie_name": "shop-session",
        "cookie_path": "/",
        "cookie_domain": "example.com",
        "lifetime": "1h",
        "refresh": "on_expiry",
        "same_site": "Strict",
        "cookie_secure": True,
        "store": "redis",
    },
    "state_cookie": {
        "name": "shop-state",
        "path": "/",
        "domain": "shop.example.com",
        "max_age": "5m",
        "same_site": "Lax",
        "secure": True,
        "http_only": True,
    },
    "redis": {
        "url": "rediss://127.0.0.1:6379/2",
        "sentinel": ["redis-0.redis.shop.svc.cluster.local:26379",
                     "redis-1.redis.shop.svc.cluster.local:26379"],
        "master_name": "mymaster",
        "username": "proxy",
        "password": {"credential": "redis-password"},
        "ca_bundle": "/etc/oidcproxy/redis-ca.pem",
    },
    "csrf": {"header_name": "X-Shop-Csrf", "cookie_name": "traefikee-csrf-token", "secure": True},
    "headers": {"X-User": "preferred_username", "X-Groups": "groups"},
    "routes": [
        {"path": "/api", "host": "shop.example.com",
         "upstream": "http://shop-api.shop.svc.cluster.local:8080", "auth": "session",
         "rule": "Contains(`groups`, `staff`) && !Prefix(`email`, `guest`)"},
        {"path": "/app", "host": "shop.example.com",
         "upstream": "http://shop-api.shop.svc.cluster.local:8080", "auth": "session",
         "rule": "Contains(`groups`, `staff`) && !Prefix(`email`, `guest`)"},
        {"path": "/admin", "host": "shop.example.com",
         "upstream": "https://legacy.internal.example.com:443", "auth": "session",
         "rule": "Contains(`groups`, `staff`) && !Prefix(`email`, `guest`)",
         "methods": ["GET", "POST"]},
        {"path": "/static", "host": "shop.example.com",
         "upstream": "http://shop-api.shop.svc.cluster.local:8080", "auth": "none"},
    ],
}


class FullExampleTests(SynchronousTestCase, WarningsMixin):
    """Every option of the middleware (tests/data/traefik/full.yaml)."""

    def setUp(self):
        self.result = convert(load_documents(_read(FULL), "full.yaml"))

    def test_output(self):
        """Every option lands on its oidcproxy key."""
        self.assertEqual(tomllib.loads(self.result.toml), FULL_EXPECTED)

    def test_warnings(self):
        """Each option that does not carry over exactly is named."""
        w = self.result.warnings
        oidc = "Middleware shop/sso: spec.plugin.oidc"
        self.assertWarned(w, f"{oidc}.backchannelLogoutUrl", "/oidc/backchannel-logout")
        self.assertWarned(w, f"{oidc}.backchannelLogoutSessionsRequired", "not needed")
        for option in ("ca", "cert", "key"):
            self.assertWarned(w, f"{oidc}.clientConfig.tls.{option}", f"Kubernetes Secret idp-tls, "
                              f"key {option} to /etc/oidcproxy/idp-tls-{option}.pem")
        redis = f"{oidc}.session.store.redis"
        self.assertWarned(w, f"{redis}.endpoints", "Kubernetes service names")
        self.assertWarned(w, f"{redis}.tls.caBundle", "/etc/oidcproxy/redis-ca.pem")
        self.assertWarned(w, f"{redis}.tls.cert", "client certificate")
        self.assertWarned(w, f"{redis}.tls.key", "client certificate")
        self.assertWarned(w, f"{redis}.sentinel.username", "Sentinels")
        self.assertWarned(w, f"{redis}.sentinel.password", "Sentinels")
        self.assertWarned(w, f"{oidc}.forwardHeaders", "access token", "ID token")
        self.assertWarned(w, "IngressRoute shop/shop: spec.entryPoints", "websecure")
        self.assertWarned(w, "IngressRoute shop/shop: spec.tls", "TLS is not carried over")
        self.assertWarned(w, "spec.routes[0].services[0]", "Service shop/shop-api")
        self.assertWarned(w, "spec.routes[2].services[0]", "Service shop/shop-api")
        self.assertEqual(len(w), 16, "\n".join(w))

    def test_loads(self):
        """
        Once the PEM files and credentials it names exist, the configuration is
        accepted by parse_config with every imported setting.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        for name in ("idp-tls-ca", "idp-tls-cert", "idp-tls-key", "redis-ca"):
            with open(os.path.join(directory, name + ".pem"), "w") as f:
                f.write("PEM\n")
        data = tomllib.loads(self.result.toml.replace("/etc/oidcproxy/", directory + "/"))
        data["session"]["secrets"] = [SECRET]
        data["oidc"]["client_secret"] = "client-secret"
        data["redis"]["password"] = "redis-password"
        config = parse_config(data, "full.toml")
        self.assertEqual(config.oidc.login_url, "/auth/login")
        self.assertEqual(config.oidc.logout_path, "/auth/logout")
        self.assertEqual(config.oidc.max_retries, 2)
        self.assertEqual(config.oidc.timeout, 10.0)
        self.assertEqual(config.session.store, "redis")
        self.assertEqual(config.session.lifetime, 3600.0)
        self.assertFalse(config.session.sliding)
        self.assertEqual(config.redis.master_name, "mymaster")
        self.assertEqual(config.csrf.header_name, "X-Shop-Csrf")
        self.assertEqual(config.username_claim, "preferred_username")
        self.assertEqual([(r.path, r.auth, r.methods) for r in config.routes],
                         [("/api", "session", ()), ("/app", "session", ()),
                          ("/admin", "session", ("GET", "POST")), ("/static", "none", ())])
        self.assertIsNotNone(config.routes[0].policy)

    def test_secret_values_not_copied(self):
        """Only the client id is taken from the Secret; the secret's value is never printed."""
        self.assertIn('client_id = "shop-client"', self.result.toml)
        text = self.result.toml + "\n".join(self.result.warnings)
        self.assertNotIn("secret-value-never-printed", text)
        self.assertNotIn("c2VjcmV0LXZhbHVlLW5ldmVyLXByaW50ZWQ=", text)


class OptionTests(SynchronousTestCase, WarningsMixin):
    """Single options: how each maps, and each warning."""

    def test_option_names_case_insensitive(self):
        """clientId (the SEED page) and clientID (the reference page) are one option."""
        a, _, _ = simple({"clientID": None, "clientId": "x"})
        b, _, _ = simple({"clientID": "x"})
        self.assertEqual(a["oidc"]["client_id"], "x")
        self.assertEqual(a, b)

    def test_option_names_from_the_names_table(self):
        """
        The importer reads each option by the name oidcproxy.tools.traefik.names
        gives it (the table the configuration reference shows): renamed there,
        the option is read under the new name and the old one is unknown.
        """
        renamed = dict(names.HUB_NAMES, **{"oidc.max_retries": "clientConfig.retries",
                                          "state_cookie.max_age": "stateCookie.lifetime"})
        self.patch(names, "HUB_NAMES", renamed)
        data, w, _ = simple({"clientConfig": {"retries": 3, "maxRetries": 1},
                             "stateCookie": {"lifetime": 120}})
        self.assertEqual(data["oidc"]["max_retries"], 3)
        self.assertEqual(data["state_cookie"]["max_age"], "2m")
        self.assertWarned(w, f"{MW}.clientConfig.maxRetries", "not an option")

    def test_unknown_option(self):
        """An option not on the reference page is named, not dropped silently."""
        _, w, _ = simple({"cookieSecret": "x", "session": {"lifetime": 5}})
        self.assertWarned(w, f"{MW}.cookieSecret", "not an option")
        self.assertWarned(w, f"{MW}.session.lifetime", "not an option")

    def test_session_http_only_false(self):
        """httpOnly: false cannot be carried over: our session cookie is always HttpOnly."""
        data, w, _ = simple({"session": {"httpOnly": False}})
        self.assertWarned(w, f"{MW}.session.httpOnly", "always HttpOnly")
        self.assertNotIn("http_only", data["session"])

    def test_session_not_sliding(self):
        """sliding: false: the expiry is the absolute lifetime."""
        data, w, _ = simple({"session": {"sliding": False, "expiry": 7200, "refresh": False}})
        self.assertEqual(data["session"]["lifetime"], "2h")
        self.assertEqual(data["session"]["refresh"], "off")
        self.assertNotIn("sliding", data["session"])
        self.assertNotIn("idle_timeout", data["session"])
        self.assertNotWarned(w, "sliding")

    def test_session_expiry_not_positive(self):
        """A zero expiry (refused by Traefik too) is named; the 24h default is used."""
        data, w, _ = simple({"session": {"expiry": 0, "sliding": False}})
        self.assertWarned(w, f"{MW}.session.expiry", "must be positive")
        self.assertEqual(data["session"]["lifetime"], "24h")

    def test_sliding_longer_than_default_lifetime(self):
        """A sliding window longer than 7 days gets a lifetime as long."""
        data, _, _ = simple({"session": {"expiry": 30 * 86400}})
        self.assertEqual((data["session"]["lifetime"], data["session"]["idle_timeout"]), ("30d", "30d"))

    def test_literal_secret(self):
        """A literal client secret is not copied; it becomes a credential to supply."""
        data, w, toml = simple({"clientSecret": "hunter2-literal"})
        self.assertEqual(data["oidc"]["client_secret"], {"credential": "client-secret"})
        self.assertWarned(w, f"{MW}.clientSecret", "literal secret", "'client-secret'")
        self.assertNotIn("hunter2-literal", toml + "".join(w))

    def test_no_client_secret(self):
        """Without a client secret the client is public (PKCE)."""
        data, _, _ = simple({"clientSecret": None})
        self.assertEqual(data["oidc"]["token_endpoint_auth_method"], "none")
        self.assertNotIn("client_secret", data["oidc"])

    def test_client_id_secret_missing(self):
        """A client id in a Secret that is not in the input: a FIXME and a warning."""
        data, w, toml = simple({"clientID": "urn:k8s:secret:gone:id"})
        self.assertEqual(data["oidc"]["client_id"], "FIXME")
        self.assertIn("# FIXME: Kubernetes Secret gone, key id", toml)
        self.assertWarned(w, f"{MW}.clientId", "Kubernetes Secret gone (key id)")

    def test_missing_required(self):
        """Missing issuer, client id and redirectUrl are named; placeholders are FIXMEs."""
        data, w, _ = simple({"issuer": None, "clientID": None, "redirectUrl": None})
        self.assertWarned(w, f"{MW}.issuer", "required")
        self.assertWarned(w, f"{MW}.clientId", "required")
        self.assertWarned(w, f"{MW}.redirectUrl", "required")
        self.assertEqual(data["oidc"]["client_id"], "FIXME")
        self.assertNotIn("callback_path", data["oidc"])

    def test_scopes_without_openid(self):
        """openid is added to scopes that lack it, and that is said."""
        data, w, _ = simple({"scopes": ["email"]})
        self.assertEqual(data["oidc"]["scopes"], ["openid", "email"])
        self.assertWarned(w, f"{MW}.scopes", "openid")

    def test_reserved_auth_params(self):
        """authParams the proxy sets itself are named and dropped; others stay."""
        data, w, _ = simple({"authParams": {"redirect_uri": "https://evil", "prompt": "login"}})
        self.assertEqual(data["oidc"]["auth_params"], {"prompt": "login"})
        self.assertWarned(w, f"{MW}.authParams.redirect_uri", "set by oidcproxy itself")

    def test_claims_not_readable(self):
        """
        A claims rule our language cannot read is kept as is (so the config is
        refused until fixed: never an open route) and named.
        """
        data, w, toml = simple({"claims": "Regexp(`email`, `.*`)"})
        self.assertEqual(data["routes"][0]["rule"], "Regexp(`email`, `.*`)")
        self.assertIn("# FIXME: not in oidcproxy's rule language", toml)
        self.assertWarned(w, f"{MW}.claims", "cannot read it")

    def test_claims_carried(self):
        """A claims rule goes to every route the middleware protects, unchanged."""
        rule = 'OneOf(`groups`, `a`, `b`) || SplitContains(`scope`, ` `, `write`)'
        data, w, _ = simple({"claims": rule})
        self.assertEqual(data["routes"][0]["rule"], rule)
        self.assertNotWarned(w, "claims")

    def test_client_config(self):
        """maxRetries is capped at 10; insecureSkipVerify drops the CA; a cert needs its key."""
        data, w, _ = simple({"issuer": "https://idp.example.com", "clientConfig": {
            "maxRetries": 50, "timeoutSeconds": 0,
            "tls": {"ca": "PEM", "cert": "urn:k8s:secret:t:cert", "insecureSkipVerify": True}}})
        oidc = data["oidc"]
        self.assertEqual(oidc["max_retries"], 10)
        self.assertTrue(oidc["insecure_skip_verify"])
        for key in ("ca_bundle", "client_cert", "client_key", "timeout"):
            self.assertNotIn(key, oidc)
        self.assertWarned(w, f"{MW}.clientConfig.maxRetries", "at most 10")
        self.assertWarned(w, f"{MW}.clientConfig.timeoutSeconds", "positive")
        self.assertWarned(w, f"{MW}.clientConfig.tls.ca", "insecureSkipVerify")
        self.assertWarned(w, f"{MW}.clientConfig.tls.cert", "needs clientConfig.tls.key")

    def test_inline_pem(self):
        """An inline PEM becomes a file to write, named after what it is."""
        data, w, _ = simple({"clientConfig": {"tls": {"ca": "-----BEGIN CERTIFICATE-----"}}})
        self.assertEqual(data["oidc"]["ca_bundle"], "/etc/oidcproxy/idp-ca.pem")
        self.assertWarned(w, f"{MW}.clientConfig.tls.ca", "the PEM text of this option",
                          "/etc/oidcproxy/idp-ca.pem")

    def test_login_url_with_disable_login(self):
        """loginUrl means nothing with disableLogin: named, only disable_login kept."""
        data, w, _ = simple({"loginUrl": "/login", "disableLogin": True})
        self.assertTrue(data["oidc"]["disable_login"])
        self.assertNotIn("login_url", data["oidc"])
        self.assertWarned(w, f"{MW}.loginUrl", "disableLogin")

    def test_login_url_other_host(self):
        """The host of a loginUrl is dropped (with a warning); its path is kept."""
        data, w, _ = simple({"loginUrl": "other.example.com/start"},
                            public_url="https://app.example.com")
        self.assertEqual(data["oidc"]["login_url"], "/start")
        self.assertWarned(w, f"{MW}.loginUrl", "the origin http://other.example.com is dropped")

    def test_url_forms(self):
        """
        redirectUrl as host/path gives public_url (http: the IngressRoute has no
        TLS); landing pages on it stay paths.
        """
        data, w, _ = simple({"redirectUrl": "app.example.com/cb",
                             "postLogoutRedirectUrl": "app.example.com/bye",
                             "postLoginRedirectUrl": "http://elsewhere.example/hi"})
        self.assertEqual(data["public_url"], "http://app.example.com")
        self.assertEqual(data["oidc"]["callback_path"], "/cb")
        self.assertEqual(data["oidc"]["post_logout_redirect_url"], "/bye")
        self.assertEqual(data["oidc"]["post_login_redirect_url"], "http://elsewhere.example/hi")
        self.assertNotWarned(w, "public_url")

    def test_bad_url(self):
        """A URL of another scheme is named and not carried over."""
        data, w, _ = simple({"logoutUrl": "ftp://x/y"})
        self.assertNotIn("logout_path", data["oidc"])
        self.assertWarned(w, f"{MW}.logoutUrl", "'ftp://x/y'")

    def test_unbalanced_bracket_url(self):
        """A URL whose host has an unbalanced bracket is named, not a traceback."""
        for url in ("https://[::1/cb", "[app.example.com/cb", "https://app]/cb"):
            data, w, _ = simple({"redirectUrl": url, "logoutUrl": url})
            self.assertWarned(w, f"{MW}.redirectUrl", repr(url), "not carried over")
            self.assertWarned(w, f"{MW}.logoutUrl", repr(url), "not carried over")

    def test_state_cookie(self):
        """sameSite strict would break logins: Lax; maxAge 0 is refused; bad names named."""
        data, w, _ = simple({"stateCookie": {"sameSite": "strict", "maxAge": 0, "name": "a b",
                                             "httpOnly": False}})
        self.assertEqual(data["state_cookie"], {"same_site": "Lax", "http_only": False})
        self.assertWarned(w, f"{MW}.stateCookie.sameSite", "every login would fail")
        self.assertWarned(w, f"{MW}.stateCookie.maxAge", "not carried over")
        self.assertWarned(w, f"{MW}.stateCookie.name", "not a valid cookie name")

    def test_same_site_invalid(self):
        """A sameSite value that is none of none, lax, strict is named, not guessed."""
        data, w, _ = simple({"session": {"sameSite": "sometimes"}})
        self.assertNotIn("same_site", data["session"])
        self.assertWarned(w, f"{MW}.session.sameSite", "'sometimes'")

    def test_csrf_defaults(self):
        """csrf: {} turns the table on with Traefik Hub's cookie and header names."""
        data, _, _ = simple({"csrf": {}})
        self.assertEqual(data["csrf"], {"header_name": "TraefikHub-Csrf-Token",
                                        "cookie_name": "traefikee-csrf-token"})

    def test_no_csrf(self):
        """Without csrf there is no [csrf] table (its presence turns the protection on)."""
        data, _, _ = simple()
        self.assertNotIn("csrf", data)

    def test_forward_headers(self):
        """forwardHeaders become [headers]; invalid header names are named."""
        data, w, _ = simple({"forwardHeaders": {"X-Sub": "sub", "Bad Header": "x"}})
        self.assertEqual(data["headers"], {"X-Sub": "sub"})
        self.assertWarned(w, f"{MW}.forwardHeaders.Bad Header", "not a valid header name")

    def test_wrong_types(self):
        """A value of the wrong type is named and not carried over."""
        data, w, _ = simple({"pkce": "maybe", "session": {"expiry": "long"}, "discoveryParams": [1]})
        self.assertNotIn("pkce", data["oidc"])
        self.assertWarned(w, f"{MW}.pkce", "true or false")
        self.assertWarned(w, f"{MW}.session.expiry", "a number")
        self.assertWarned(w, f"{MW}.discoveryParams", "a mapping")

    def test_redis(self):
        """One Redis: the first endpoint; cluster and skip-verify are named."""
        data, w, toml = simple({"session": {"store": {"redis": {
            "endpoints": ["redis:6379", "10.0.0.2:6379"], "database": 3, "cluster": True,
            "password": "plain-pass", "tls": {"insecureSkipVerify": True}}}}})
        self.assertEqual(data["session"]["store"], "redis")
        self.assertEqual(data["redis"]["url"], "rediss://redis:6379/3")
        self.assertEqual(data["redis"]["password"], {"credential": "redis-password"})
        self.assertIn("# FIXME: address (a Kubernetes service name)", toml)
        self.assertNotIn("plain-pass", toml + "".join(w))
        redis = f"{MW}.session.store.redis"
        self.assertWarned(w, f"{redis}.endpoints", "only redis:6379 is used")
        self.assertWarned(w, f"{redis}.cluster", "Redis Cluster is not supported")
        self.assertWarned(w, f"{redis}.tls.insecureSkipVerify", "always verifies")
        self.assertWarned(w, f"{redis}.password", "literal secret")

    def test_redis_sentinel_without_master(self):
        """Sentinel options without masterSet: named, and a plain Redis URL is used."""
        data, w, _ = simple({"session": {"store": {"redis": {
            "endpoints": ["10.0.0.1:26379"], "sentinel": {"username": "u"}}}}})
        self.assertEqual(data["redis"]["url"], "redis://10.0.0.1:26379/0")
        self.assertWarned(w, f"{MW}.session.store.redis.sentinel.masterSet", "required")


class RouteTests(SynchronousTestCase, WarningsMixin):
    """IngressRoute match expressions, services and middlewares."""

    def routes(self, *routes_: Dict[str, Any], docs: Sequence[Dict[str, Any]] = (),
               oidc: Optional[Dict[str, Any]] = None, **options: Any):
        data, w, toml = run(middleware(oidc), ingress(*routes_), service(), *docs, **options)
        return data.get("routes", []), w

    def test_or_and_hosts(self):
        """(A || B) && C expands to one route per alternative; Host(a, b) to one per host."""
        routes, w = self.routes(route("Host(`a.example.com`, `B.example.com:443`) && "
                                      "(PathPrefix(`/x`) || PathPrefix(`/y/`))"))
        self.assertEqual(sorted((r["host"], r["path"]) for r in routes),
                         [("a.example.com", "/x"), ("a.example.com", "/y"),
                          ("b.example.com", "/x"), ("b.example.com", "/y")])

    def test_public_url_from_single_host(self):
        """One Host on an IngressRoute with tls: {} gives an https public_url."""
        data, w, _ = run(middleware(), ingress(route("Host(`app.example.com`)"), tls={}), service())
        self.assertEqual(data["public_url"], "https://app.example.com")
        self.assertEqual(data["routes"][0]["path"], "/")

    def test_several_hosts(self):
        """oidcproxy has one public_url: several hosts are named."""
        data, w, _ = run(middleware(), ingress(route("Host(`a.example.com`) || Host(`b.example.com`)")),
                         service())
        self.assertWarned(w, "public_url", "a.example.com, b.example.com")

    def test_double_quotes_and_v2_path(self):
        """Double-quoted arguments and several paths in one Path (v2 syntax)."""
        routes, w = self.routes(route('Path("/a", "/b\\"c?")'))
        self.assertEqual([r["path"] for r in routes], ["/a"])
        self.assertWarned(w, "path '/b\"c?'", "no route for it")

    def test_exact_path_widened(self):
        """Path(`/x`) becomes the prefix /x, and the widening is named."""
        routes, w = self.routes(route("Path(`/x`)"))
        self.assertEqual(routes[0]["path"], "/x")
        self.assertWarned(w, "Path(`/x`) is an exact match")

    def test_path_intersection(self):
        """PathPrefix(/a) && Path(/a/b): the exact path; disjoint paths: no route."""
        routes, w = self.routes(route("PathPrefix(`/a`) && PathPrefix(`/a/b`)"),
                                route("PathPrefix(`/a`) && PathPrefix(`/c`)"))
        self.assertEqual([r["path"] for r in routes], ["/a/b"])
        self.assertWarned(w, "spec.routes[1].match", "can never all match")

    def test_methods(self):
        """Method() limits the route's methods; unknown methods are named."""
        routes, w = self.routes(route("PathPrefix(`/a`) && Method(`get`, `CONNECT`)"))
        self.assertEqual(routes[0]["methods"], ["GET"])
        self.assertWarned(w, "Method(`get`, `CONNECT`)", "'CONNECT'")

    def test_unsupported_matchers(self):
        """Header, Query, ClientIP, regexps and negations are named: the route is wider."""
        routes, w = self.routes(route("PathPrefix(`/a`) && Header(`X-A`, `1`) && Query(`q`, `1`) "
                                      "&& ClientIP(`10.0.0.0/8`) && !PathPrefix(`/a/private`) "
                                      "&& HostRegexp(`.+`)"))
        self.assertEqual(routes[0]["path"], "/a")
        for shown in ("Header(`X-A`, `1`)", "Query(`q`, `1`)", "ClientIP(`10.0.0.0/8`)",
                      "HostRegexp(`.+`)"):
            self.assertWarned(w, shown, "the route is wider")
        self.assertWarned(w, "!PathPrefix(`/a/private`)", "negated")

    def test_negated_or(self):
        """!(A || B) is !A && !B: both named."""
        routes, w = self.routes(route("PathPrefix(`/a`) && !(Method(`POST`) || Method(`PUT`))"))
        self.assertWarned(w, "!Method(`POST`)")
        self.assertWarned(w, "!Method(`PUT`)")

    def test_bad_rule(self):
        """A rule that cannot be read is named and its route skipped."""
        routes, w = self.routes(route("PathPrefix(`/a`"), route("PathPrefix(`/b`)"))
        self.assertEqual([r["path"] for r in routes], ["/b"])
        self.assertWarned(w, "spec.routes[0].match", "cannot read")

    def test_warning_with_newline_one_line(self):
        """
        Input text with a newline (here a host) is shown escaped: each warning
        stays one line of the listing on stderr.
        """
        routes, w = self.routes(route("Host(`a\nb`) && PathPrefix(`/a`)"), route("PathPrefix(`/b`)"))
        self.assertWarned(w, "Host(`a\\nb`)")
        self.assertTrue(all(len(line.splitlines()) == 1 for line in w), w)

    def test_too_many_alternatives(self):
        """A match expanding to more than 32 routes is skipped and named."""
        many = " && ".join(f"(Path(`/a{i}`) || Path(`/b{i}`))" for i in range(6))
        routes, w = self.routes(route(many), route("PathPrefix(`/ok`)"))
        self.assertEqual([r["path"] for r in routes], ["/ok"])
        self.assertWarned(w, "more than 32 alternatives")

    def test_proxy_paths_and_prefix(self):
        """
        Routes that only let the middleware see its own URLs (the reference
        page's example) are answered by oidcproxy itself; /oidc is its prefix.
        """
        routes, w = self.routes(route("Path(`/myapi`) || Path(`/login`) || Path(`/callback`)"),
                                route("PathPrefix(`/oidc/x`)"),
                                oidc={"redirectUrl": "/callback", "loginUrl": "/login"})
        self.assertEqual([r["path"] for r in routes], ["/myapi"])
        self.assertWarned(w, "/login is answered by oidcproxy itself (loginUrl)")
        self.assertWarned(w, "/callback is answered by oidcproxy itself (redirectUrl)")
        self.assertWarned(w, "/oidc/x is inside oidcproxy's endpoints_prefix")

    def test_duplicate(self):
        """The same host and path twice: the first wins, the second is named."""
        routes, w = self.routes(route("PathPrefix(`/a`)"), route("PathPrefix(`/a`) && Method(`GET`)"))
        self.assertEqual(len(routes), 1)
        self.assertWarned(w, "spec.routes[1]", "already routed by IngressRoute apps/ir: spec.routes[0]")

    def test_route_without_middleware_is_public(self):
        """A route of the same IngressRoute without the middleware was public: auth = "none"."""
        routes, w = self.routes(route("PathPrefix(`/a`)"), route("PathPrefix(`/b`)", middlewares=()))
        self.assertEqual([(r["path"], r["auth"]) for r in routes], [("/a", "session"), ("/b", "none")])

    def test_other_middlewares(self):
        """Other middlewares are named; a route of another OIDC middleware is skipped."""
        other = middleware(name="other")
        routes, w = self.routes(route("PathPrefix(`/a`)", middlewares=("mw", "strip")),
                                route("PathPrefix(`/b`)", middlewares=("other",)),
                                docs=[other], middleware="mw")
        self.assertEqual([r["path"] for r in routes], ["/a"])
        self.assertWarned(w, "spec.routes[0].middlewares", "'strip' is not carried over")
        self.assertWarned(w, "spec.routes[1]", "another OIDC middleware (other)")

    def test_middleware_namespace(self):
        """A reference to a middleware of another namespace is not this middleware."""
        data, w, _ = run(middleware(), ingress(route("PathPrefix(`/a`)", middlewares=(
            {"name": "mw", "namespace": "elsewhere"},))), service())
        self.assertNotIn("routes", data)
        self.assertWarned(w, "Middleware apps/mw", "no IngressRoute in the input uses it")

    def test_route_keys(self):
        """priority and other route keys are named; kinds other than Rule are skipped."""
        routes, w = self.routes(route("PathPrefix(`/a`)", priority=10, observability={}),
                                route("PathPrefix(`/b`)", kind="Other"))
        self.assertEqual([r["path"] for r in routes], ["/a"])
        self.assertWarned(w, "spec.routes[0].priority", "longest matching path prefix")
        self.assertWarned(w, "spec.routes[0].observability", "not carried over")
        self.assertWarned(w, "spec.routes[1]", "kind 'Other'")

    def test_services(self):
        """Several services: the first; a TraefikService: a placeholder; both named."""
        routes, w = self.routes(
            route("PathPrefix(`/a`)", services=[{"name": "app", "port": 80}, {"name": "b", "port": 80}]),
            route("PathPrefix(`/b`)", services=[{"name": "wrr", "kind": "TraefikService"}]),
            route("PathPrefix(`/c`)", services=[]))
        self.assertEqual([r["upstream"] for r in routes],
                         ["http://app.apps.svc.cluster.local:80", "http://127.0.0.1:8000",
                          "http://127.0.0.1:8000"])
        self.assertWarned(w, "spec.routes[0].services", "only the first service")
        self.assertWarned(w, "spec.routes[1].services[0]", "TraefikService")
        self.assertWarned(w, "spec.routes[2].services", "no service")

    def test_service_resolution(self):
        """ExternalName and externalIPs give addresses; named ports resolve; 443 is https."""
        docs = [service("ext", type="ExternalName", externalName="api.example.com",
                        ports=[{"port": 443, "name": "tls"}]),
                service("ip", externalIPs=["2001:db8::1"], ports=[{"port": 8080}])]
        routes, w = self.routes(
            route("PathPrefix(`/a`)", services=[{"name": "ext", "port": "tls"}]),
            route("PathPrefix(`/b`)", services=[{"name": "ip"}]),
            route("PathPrefix(`/c`)", services=[{"name": "gone", "port": 81, "scheme": "h2c"}]),
            route("PathPrefix(`/d`)", services=[{"name": "app", "port": "nope"}]),
            docs=docs, upstreams={"apps/app": "http://10.1.1.1:80"})
        self.assertEqual([r["upstream"] for r in routes],
                         ["https://api.example.com:443", "http://[2001:db8::1]:8080",
                          "http://gone.apps.svc.cluster.local:81", "http://10.1.1.1:80"])
        self.assertWarned(w, "spec.routes[2].services[0]", "Service apps/gone is not in the input")
        self.assertWarned(w, "spec.routes[2].services[0].scheme", "'h2c'")
        self.assertNotWarned(w, "spec.routes[3]")

    def test_named_port_missing(self):
        """A named port the Service does not have is named; the URL gets no port."""
        routes, w = self.routes(route("PathPrefix(`/a`)", services=[{"name": "app", "port": "nope"}]))
        self.assertEqual(routes[0]["upstream"], "http://app.apps.svc.cluster.local")
        self.assertWarned(w, "services[0].port", "'nope' is not in Service apps/app")

    def test_malformed_service(self):
        """A Service whose ports are not a list is read as having none (no traceback)."""
        data, w, _ = run(middleware(), ingress(route("PathPrefix(`/a`)")), service(ports=5))
        self.assertEqual(data["routes"][0]["upstream"], "http://app.apps.svc.cluster.local:80")

    def test_comment_injection(self):
        """
        A match with a newline cannot break out of its comment line (the
        output would not parse otherwise).
        """
        data, w, toml = run(middleware(), ingress(route("PathPrefix(`/a`)\n&& Method(`GET`)")), service())
        self.assertEqual(data["routes"][0]["methods"], ["GET"])


class PickingTests(SynchronousTestCase):
    """Which middleware is imported, and input that cannot be imported at all."""

    def test_no_middleware(self):
        """No OIDC middleware in the input: an error, not an empty configuration."""
        docs = load_documents(yaml.safe_dump_all([service()]), "x.yaml")
        e = self.assertRaises(TraefikImportError, convert, docs)
        self.assertEqual(str(e), "no Middleware with spec.plugin.oidc found in the input")

    def test_several_narrowed(self):
        """--middleware narrows several OIDC middlewares to one, by NAME or NAMESPACE/NAME."""
        docs = load_documents(yaml.safe_dump_all([middleware(name="a"), middleware(name="b")]), "x.yaml")
        only_b = tomllib.loads(convert(docs, middleware="apps/b").toml)
        self.assertNotIn("providers", only_b)
        self.assertIn("OIDC middleware apps/b", convert(docs, middleware="apps/b").toml)
        self.assertIn("OIDC middleware apps/a", convert(docs, middleware="a").toml)
        e = self.assertRaises(TraefikImportError, convert, docs, middleware="c")
        self.assertEqual(str(e), "--middleware: no OIDC Middleware named 'c'; found: apps/a, apps/b")

    def test_same_name_in_two_namespaces(self):
        """A bare NAME that two namespaces have is refused: NAMESPACE/NAME picks one."""
        docs = load_documents(yaml.safe_dump_all([middleware(name="a"),
                                                  middleware(name="a", namespace="other")]), "x.yaml")
        e = self.assertRaises(TraefikImportError, convert, docs, middleware="a")
        self.assertEqual(str(e), "--middleware: 'a' names several OIDC Middlewares (apps/a, "
                                 "other/a); give NAMESPACE/NAME")
        self.assertIn("OIDC middleware other/a", convert(docs, middleware="other/a").toml)

    def test_other_plugins_ignored(self):
        """A Middleware of another plugin is not an OIDC middleware."""
        other = {"kind": "Middleware", "metadata": {"name": "jwt"}, "spec": {"plugin": {"jwt": {}}}}
        docs = load_documents(yaml.safe_dump_all([other, middleware()]), "x.yaml")
        self.assertIn("apps/mw", convert(docs).toml)

    def test_list_kind(self):
        """A kind: List (kubectl get -o yaml) contributes its items."""
        text = yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": [middleware(), service()]})
        docs = load_documents(text, "x.yaml")
        self.assertEqual([d.kind for d in docs], ["Middleware", "Service"])

    def test_invalid_yaml(self):
        """Invalid YAML names the file."""
        e = self.assertRaises(TraefikImportError, load_documents, "a: [", "bad.yaml")
        self.assertTrue(str(e).startswith("bad.yaml: invalid YAML: "), str(e))

    def test_not_a_mapping(self):
        """A document that is not a mapping names the file and the document."""
        e = self.assertRaises(TraefikImportError, load_documents, "---\nkind: A\n---\n- 1\n", "l.yaml")
        self.assertEqual(str(e), "l.yaml#2: expected a Kubernetes object (a mapping), got a list")

    def test_safe_load_only(self):
        """Python tags are refused (safe_load), never run."""
        marker = self.mktemp()
        text = f"!!python/object/apply:os.system [\"touch {marker}\"]\n"
        e = self.assertRaises(TraefikImportError, load_documents, text, "evil.yaml")
        self.assertIn("invalid YAML", str(e))
        self.assertFalse(os.path.exists(marker))


class EmitterTests(SynchronousTestCase):
    """Our small TOML writer."""

    def test_strings_round_trip(self):
        """Quotes, backslashes, control characters, DEL and non-ASCII survive tomllib."""
        for text in ['a"b', "back\\slash", "new\nline\ttab\r\b\f", "\x00\x1f\x7f", "é ü 中", "", "'"]:
            self.assertEqual(tomllib.loads(f"v = {toml_string(text)}")["v"], text, repr(text))

    def test_keys(self):
        """Bare keys when possible, quoted otherwise (dots, spaces, empty)."""
        self.assertEqual(toml_key("X-Forwarded-User"), "X-Forwarded-User")
        for key in ("a.b", "a b", "", 'q"'):
            self.assertEqual(tomllib.loads(f"{toml_key(key)} = 1"), {key: 1})

    def test_values(self):
        """Lists, booleans, integers and inline tables round-trip; floats are not ours to write."""
        value = {"a": [True, 1, "x"], "b.c": {}, "d": {"credential": "n"}}
        self.assertEqual(tomllib.loads(f"v = {toml_value(value)}")["v"], value)
        self.assertRaises(TypeError, toml_value, 1.5)

    def test_parse_rule(self):
        """Traefik rules parse with ! above && above ||; broken ones are refused."""
        self.assertEqual(parse_rule("!A(`x`) || B() && C(\"y\", `z`)"),
                         ("or", ("not", ("call", "A", ("x",))),
                          ("and", ("call", "B", ()), ("call", "C", ("y", "z")))))
        for bad in ("A(", "A(`x`) &&", "A(x)", "(A()", "A() B()", "A(`x`) & B()", "`x`"):
            self.assertRaises(ValueError, parse_rule, bad)


class MainTests(SynchronousTestCase, WarningsMixin):
    """The console script."""

    def main(self, *argv: str, stdin: str = "") -> Tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = main(list(argv), stdout=out, stderr=err, stdin=io.StringIO(stdin))
        return code, out.getvalue(), err.getvalue()

    def write(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def write_bytes(self, data: bytes) -> str:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(data)
        return path

    def test_seed(self):
        """Exit 0, the TOML on stdout, warnings and credentials on stderr."""
        code, out, err = self.main(SEED)
        self.assertEqual(code, 0)
        self.assertEqual(tomllib.loads(out), SEED_EXPECTED)
        self.assertIn("oidcproxy-import-traefik: 6 thing(s) not carried over exactly:\n", err)
        self.assertIn("  - oidc-client-client_secret: Kubernetes Secret oidc-client, key client_secret\n",
                      err)

    def test_several_files_and_stdin(self):
        """Documents may come from several files and stdin."""
        mw = self.write(yaml.safe_dump(middleware()))
        rest = yaml.safe_dump_all([ingress(route("PathPrefix(`/a`)")), service()])
        code, out, err = self.main(mw, "-", "--upstream", "app=http://127.0.0.1:9000/",
                                   "--public-url", "https://app.example.com", stdin=rest)
        self.assertEqual(code, 0, err)
        data = tomllib.loads(out)
        self.assertEqual(data["routes"][0]["upstream"], "http://127.0.0.1:9000")
        self.assertEqual(data["public_url"], "https://app.example.com")

    def test_errors(self):
        """Each input that cannot be imported: exit 1 and one clear line."""
        several = self.write(yaml.safe_dump_all([middleware(name="a"), middleware(name="b")]))
        cases = [
            ([os.path.join(self.mktemp(), "missing.yaml")], "cannot read the file: No such file"),
            ([self.write("a: [")], "invalid YAML"),
            ([self.write(yaml.safe_dump(service()))], "no Middleware with spec.plugin.oidc"),
            ([several, "--middleware", "zzz"], "--middleware: no OIDC Middleware named 'zzz'"),
            ([several, "--default-middleware", "zzz"],
             "--default-middleware: no OIDC Middleware named 'zzz'"),
            ([several, "--middleware", "a", "--default-middleware", "b"],
             "--default-middleware: no OIDC Middleware named 'b'; found: apps/a"),
            ([SEED, "--upstream", "whoami"], "--upstream 'whoami': expected SERVICE=URL"),
            ([SEED, "--upstream", "whoami=ftp://x"], "is not an http(s) URL"),
            ([SEED, "--public-url", "app.example.com"], "--public-url: 'app.example.com'"),
            ([self.write_bytes(b"\xff")], "not UTF-8 text"),
        ]
        for argv, message in cases:
            code, out, err = self.main(*argv)
            self.assertEqual((code, out), (1, ""), argv)
            self.assertTrue(err.startswith("oidcproxy-import-traefik: error: "), err)
            self.assertIn(message, err, argv)
            self.assertEqual(err.count("\n"), 1, err)

    def test_chosen_middleware(self):
        """--middleware NAMESPACE/NAME picks one of several."""
        several = self.write(yaml.safe_dump_all([middleware(name="a"), middleware(name="b")]))
        code, out, err = self.main(several, "--middleware", "apps/a")
        self.assertEqual(code, 0)
        self.assertIn("OIDC middleware apps/a", out)
        self.assertNotIn("providers", tomllib.loads(out))


class ImportTests(SynchronousTestCase):
    def test_yaml_not_loaded(self):
        """The package, tap.py and the twistd plugin never import yaml."""
        code = ("import sys, oidcproxy, oidcproxy.tap, oidcproxy.config\n"
                "import twisted.plugins.oidcproxy_plugin\n"
                "print('yaml' in sys.modules)\n")
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout
        self.assertEqual(out.strip(), "False")
