"""
The middleware's login options: C{public_url} (from C{redirectUrl}, the
routes' hosts or C{--public-url}) and the C{[oidc]} table.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple
from urllib.parse import urlsplit

from ...config import RESERVED_AUTH_PARAMS, http_url, route_prefix
from .documents import Document, Options, secret_urn, secret_value, yaml_type
from .draft import Draft, duration
from .emit import Section, toml_key
from .names import hub_option

PLACEHOLDER_HOST = "oidcproxy.invalid"
"""Host of a public_url that could not be worked out (RFC 2606: never resolves)."""

DEFAULT_CALLBACK = "/oidc/callback"
"""C{[oidc]}'s callback path when it sets none (with the default C{endpoints_prefix})."""

MAX_RETRIES = 10
"""The most retries C{oidc.max_retries} allows."""


def _comment_safe(text: str) -> str:
    """C{text} fit for a TOML comment: one line, printable, not endless."""
    return repr("".join(c if c.isprintable() else "?" for c in text[:200]))


class OIDCImport:
    """
    Writes one provider's table from its middleware's options: C{[oidc]}
    (and C{public_url}) for the first middleware, C{[providers.NAME]} for
    each further one. Every option maps the same way in both; what oidcproxy
    has once for all providers (the login and logout endpoints,
    C{public_url}) is taken from the first.

    @param documents: every object of the input (the client id may be in a C{Secret}).
    @param public_url_option: C{--public-url}, or None.
    @param name: the provider's name; None for C{[oidc]}.
    """

    def __init__(self, draft: Draft, documents: Sequence[Document],
                 public_url_option: Optional[str], name: Optional[str] = None) -> None:
        self.draft = draft
        self.warn = draft.warn
        self.documents = list(documents)
        self.public_url_option = public_url_option
        self.name = name
        self.callback_path: Optional[str] = None
        if name is None:
            self.section = draft.oidc
        else:
            self.section = Section(f"[providers.{toml_key(name)}]")
            draft.providers.append(self.section)
            draft.default_callbacks[f"{DEFAULT_CALLBACK}/{name}"] = name

    def file_name(self, base: str) -> str:
        """A credential or file name of this provider's (C{base}, then its name for a further one)."""
        return base if self.name is None else f"{base}-{self.name}"

    def public(self, opts: Options, hosts: List[str]) -> None:
        option = hub_option("public_url")
        redirect = opts.string(option)
        origin: Optional[str] = None
        path: Optional[str] = None
        if redirect is not None:
            origin, path = self.split_url(opts.path(option), redirect)
        if redirect is None:
            self.warn(opts.path(option), "is required by Traefik Hub and missing; "
                      "oidcproxy's default callback path is used")
        if self.public_url_option is not None:
            url = self.public_url_option.rstrip("/")
            comment = "from --public-url"
            if origin is not None and origin != url:
                self.warn(opts.path(option), f"its origin {origin} differs from --public-url "
                          f"{url}; the callback is public_url + callback_path")
        elif origin is not None:
            url, comment = origin, f"from {option}"
        elif len(hosts) == 1:
            url, comment = f"{self.draft.scheme}://{hosts[0]}", "from the IngressRoute's Host rule"
        else:
            url = f"{self.draft.scheme}://{PLACEHOLDER_HOST}"
            comment = "FIXME: the URL users reach the proxy at"
            why = (f"the IngressRoutes name several hosts ({', '.join(hosts)})" if hosts
                   else "no host is known (redirectUrl is a path and no Host rule)")
            self.warn("public_url", f"{why}; set the external URL users reach oidcproxy at "
                      "(or pass --public-url)")
        if len(hosts) > 1:
            self.warn("public_url", f"oidcproxy has one public_url; the routes of the other hosts "
                      f"({', '.join(h for h in hosts if urlsplit(url).hostname != h)}) share its "
                      "login (set session.cookie_domain to a common parent domain)")
        self.draft.public_url = url
        self.draft.top.set("public_url", url, comment)
        self.callback_path = path

    def further_redirect(self, opts: Options) -> None:
        """
        A further provider's C{redirectUrl}: its path is the provider's
        C{callback_path}; oidcproxy has one C{public_url} (the first
        middleware's), so another origin is dropped.
        """
        option = hub_option("oidc.callback_path")
        redirect = opts.string(option)
        if redirect is None:
            self.warn(opts.path(option), "is required by Traefik Hub and missing; oidcproxy's "
                      f"default callback path for [providers.{self.name}] is used")
            return
        origin, self.callback_path = self.split_url(opts.path(option), redirect)
        if origin is not None and origin != self.draft.public_url:
            self.warn(opts.path(option), f"its origin {origin} differs from public_url "
                      f"{self.draft.public_url} (oidcproxy has one); the callback is public_url + "
                      "callback_path")

    def split_url(self, where: str, value: str) -> Tuple[Optional[str], Optional[str]]:
        """
        Traefik's URL forms: C{/path}, C{host/path} or C{scheme://host/path}:
        the origin (None for a path) and the path (None when unusable).
        """
        text = value.strip()
        if text.startswith("/"):
            return None, text
        try:
            parts = urlsplit(text if "://" in text else "//" + text)
        except ValueError:  # an unbalanced "[" or "]" in the host
            parts = urlsplit("")
        scheme = parts.scheme or self.draft.scheme
        if scheme not in ("http", "https") or not parts.hostname:
            self.warn(where, f"{value!r} is not a path, host/path or http(s) URL; not carried over")
            return None, None
        origin = f"{scheme}://{parts.netloc.lower()}"
        return origin, parts.path or "/"

    def oidc_path(self, key: str, path: str, option: str, where: Optional[str] = None) -> None:
        try:
            path = route_prefix(path)
        except ValueError as e:
            self.warn(option, f"{e}; not carried over")
            return
        taken = self.taken_paths(key)
        if path in taken:
            self.warn(where or option, f"{path} is already oidcproxy's ({taken[path]}); " + (
                "the provider's default callback path is used: register that at its IdP"
                if key == "callback_path" else "not carried over"))
            return
        self.section.set(key, path, f"from {option}")
        self.draft.proxy_paths.setdefault(
            path, option if self.name is None else f"{option} of [providers.{self.name}]")

    def taken_paths(self, key: str) -> Dict[str, str]:
        """
        The paths this provider's C{key} cannot have, and whose they are:
        the paths oidcproxy answers already, and the default callback paths
        of the other providers (C{[oidc]}'s while it has none of its own).
        """
        taken = dict(self.draft.proxy_paths)
        for default, owner in self.draft.default_callbacks.items():
            if owner != self.name:
                taken.setdefault(default, f"[providers.{owner}]'s default callback_path")
        if not self.draft.oidc.has("callback_path") and (self.name, key) != (None, "callback_path"):
            taken.setdefault(DEFAULT_CALLBACK, "[oidc]'s default callback_path")
        return taken

    def oidc_options(self, mw: Document, opts: Options) -> Optional[str]:
        """Fill C{[oidc]} and the top level; the claims rule is returned for the routes."""
        self.issuer(opts)
        self.client_id(mw, opts)
        self.client_secret(opts)
        self.scopes(opts)
        pkce = opts.boolean(hub_option("oidc.pkce"))
        if pkce is not None:
            self.section.set("pkce", pkce)
        if self.callback_path is not None:
            option = hub_option("oidc.callback_path")
            self.oidc_path("callback_path", self.callback_path, option, opts.path(option))
        self.parameters(opts)
        self.login_and_logout(opts)
        client = opts.table("clientConfig")
        if client is not None:
            self.client_config(client)
        if self.name is None:
            username = opts.string(hub_option("username_claim"))
            if username is not None:
                self.draft.top.set("username_claim", username, f"from {hub_option('username_claim')}")
        claims = opts.string(hub_option("routes.rule"))
        return claims

    def issuer(self, opts: Options) -> None:
        o = self.section
        option = hub_option("oidc.issuer")
        issuer = opts.string(option)
        if issuer is None:
            self.warn(opts.path(option), "is required and missing")
            o.set("issuer", "https://idp.example.com", "FIXME: the issuer URL")
            return
        try:
            http_url(issuer)
            o.set("issuer", issuer)
        except ValueError as e:
            # A placeholder (SEED's MY_ISSUER_URL): a valid stand-in, so that
            # --check accepts the output, with the original in the comment.
            self.warn(opts.path(option),
                      f"{e}; written as https://idp.invalid, put the IdP's issuer URL there")
            o.set("issuer", "https://idp.invalid",
                  f"FIXME: the IdP's issuer URL (the middleware said {_comment_safe(issuer)})")

    def client_secret(self, opts: Options) -> None:
        o = self.section
        option = hub_option("oidc.client_secret")
        secret = opts.string(option)
        if secret is not None:
            o.set("client_secret", self.draft.secret(opts.path(option), secret,
                                                    self.file_name("client-secret")),
                  "a systemd credential: see the top of this file")
        else:
            o.set("token_endpoint_auth_method", "none", "no clientSecret: a public client (PKCE)")

    def scopes(self, opts: Options) -> None:
        o = self.section
        option = hub_option("oidc.scopes")
        scopes = opts.get(option)
        if scopes is None:
            o.set("scopes", ["openid"], "Traefik Hub's default")
            return
        if isinstance(scopes, str):
            scopes = scopes.replace(",", " ").split()
        if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
            self.warn(opts.path(option), f"expected a list of strings, got {yaml_type(scopes)}; "
                      "Traefik Hub's default [openid] is used")
            scopes = ["openid"]
        if "openid" not in scopes:
            self.warn(opts.path(option), "does not include openid, which oidcproxy requires; added")
            scopes = ["openid", *scopes]
        o.set("scopes", list(scopes))

    def parameters(self, opts: Options) -> None:
        """C{discoveryParams} and C{authParams}, without the parameters oidcproxy sets."""
        for key in ("discovery_params", "auth_params"):
            option = hub_option(f"oidc.{key}")
            params = opts.string_map(option)
            if params is None:
                continue
            for name in list(params):
                if key == "auth_params" and name in RESERVED_AUTH_PARAMS:
                    self.warn(f"{opts.path(option)}.{name}", "is set by oidcproxy itself; not carried over")
                    del params[name]
            if params:
                self.section.set(key, params)

    def login_and_logout(self, opts: Options) -> None:
        """Where logins start, where logout is, where both land, and back-channel logout."""
        o = self.section
        login_option = hub_option("oidc.login_url")
        disable_option = hub_option("oidc.disable_login")
        login = opts.string(login_option)
        disable = opts.boolean(disable_option)
        if disable is not None:
            o.set("disable_login", disable)
        if login is not None and disable:
            self.warn(opts.path(login_option), f"means nothing with {disable_option}: true (no "
                      "login is ever started); not carried over")
        elif login is not None:
            self.proxy_url("login_url", opts.path(login_option), login, login_option)
        logout_option = hub_option("oidc.logout_path")
        logout = opts.string(logout_option)
        if logout is not None:
            self.proxy_url("logout_path", opts.path(logout_option), logout, logout_option)
        for key in ("post_login_redirect_url", "post_logout_redirect_url"):
            option = hub_option(f"oidc.{key}")
            value = opts.string(option)
            if value is not None:
                url = self.landing_page(opts.path(option), value)
                if url is not None:
                    o.set(key, url, f"from {option}")
        backchannel = opts.string("backchannelLogoutUrl")
        if backchannel is not None:
            # One endpoint for every provider: the logout token's iss says whose it is.
            self.warn(opts.path("backchannelLogoutUrl"), "oidcproxy serves back-channel logout at "
                      "public_url + \"/oidc/backchannel-logout\" for every provider (it needs a "
                      "[redis] table); register that URL at the IdP instead")
        required = opts.boolean("backchannelLogoutSessionsRequired")
        if required:
            self.warn(opts.path("backchannelLogoutSessionsRequired"), "not needed: oidcproxy ends "
                      "the sessions of the logout token's sid, or of its sub when it has none")

    def client_id(self, mw: Document, opts: Options) -> None:
        value = opts.string(hub_option("oidc.client_id"))
        where = opts.path(hub_option("oidc.client_id"))
        if value is None:
            self.warn(where, "is required and missing")
            self.section.set("client_id", "FIXME", "FIXME: the client id registered at the IdP")
            return
        ref = secret_urn(value)
        if ref is None:
            self.section.set("client_id", value)
            return
        stored = secret_value(self.documents, mw.namespace, ref[0], ref[1])
        if stored is not None:
            self.section.set("client_id", stored, f"from Kubernetes Secret {ref[0]}, key {ref[1]}")
        else:
            self.warn(where, f"the client id is in Kubernetes Secret {ref[0]} (key {ref[1]}), which is "
                      "not in the input; oidcproxy's client_id is plain text: write it in")
            self.section.set("client_id", "FIXME", f"FIXME: Kubernetes Secret {ref[0]}, key {ref[1]}")

    def proxy_url(self, key: str, where: str, value: str, option: str) -> None:
        if self.name is not None:
            self.warn(where, f"oidcproxy has one {option} for every provider ([oidc]'s, from the "
                      "first middleware); not carried over")
            return
        origin, path = self.split_url(where, value)
        if path is None:
            return
        if origin is not None and origin != self.draft.public_url:
            self.warn(where, f"oidcproxy serves {option} on every host it routes; the origin "
                      f"{origin} is dropped, only the path {path} is kept")
        self.oidc_path(key, path, option)

    def landing_page(self, where: str, value: str) -> Optional[str]:
        """A path on public_url stays a path; a URL elsewhere becomes absolute."""
        origin, path = self.split_url(where, value)
        if path is None:
            return None
        return path if origin is None or origin == self.draft.public_url else origin + path

    def client_config(self, client: Options) -> None:
        o = self.section
        name = hub_option("oidc.timeout")
        timeout = client.get(name)
        if timeout is None and client.get("timeout") is not None:
            name = "timeout"
        seconds = client.integer(name)
        if seconds is not None:
            if seconds > 0:
                o.set("timeout", duration(seconds), f"from clientConfig.{name}")
            else:
                self.warn(client.path(name), "must be positive; not carried over")
        retries_option = hub_option("oidc.max_retries")
        retries = client.integer(retries_option)
        if retries is not None:
            if retries < 0:
                self.warn(client.path(retries_option), "must not be negative; not carried over")
            elif retries > MAX_RETRIES:
                self.warn(client.path(retries_option), f"oidcproxy retries at most {MAX_RETRIES} "
                          f"times; {MAX_RETRIES} is used")
                o.set("max_retries", MAX_RETRIES)
            else:
                o.set("max_retries", retries)
        tls = client.table("tls")
        if tls is not None:
            self.client_tls(tls)
        client.warn_unused()

    def client_tls(self, tls: Options) -> None:
        """C{clientConfig.tls}: the IdP's CA, a client certificate, or no verification."""
        o = self.section
        skip = tls.boolean(hub_option("oidc.insecure_skip_verify"))
        ca, cert, key = (hub_option(f"oidc.{k}") for k in ("ca_bundle", "client_cert", "client_key"))
        values = {option: tls.string(option) for option in (ca, cert, key)}
        if skip and values[ca]:
            self.warn(tls.path(ca), f"is of no use with {hub_option('oidc.insecure_skip_verify')} "
                      "(nothing is verified); not carried over")
            values[ca] = None
        for one, other in ((cert, key), (key, cert)):
            if values[one] and not values[other]:
                self.warn(tls.path(one), f"needs clientConfig.tls.{other} too (a client "
                          "certificate and its key); not carried over")
                values[one] = None
        for name, what in (("ca_bundle", "idp-ca"), ("client_cert", "idp-client-cert"),
                           ("client_key", "idp-client-key")):
            option = hub_option(f"oidc.{name}")
            value = values[option]
            if value:
                o.set(name, self.draft.pem_file(tls.path(option), value, self.file_name(what)),
                      f"FIXME: write clientConfig.tls.{option} here")
        if skip is not None:
            o.set("insecure_skip_verify", skip, "testing only: the IdP's certificate is not verified"
                  if skip else None)
        tls.warn_unused()
