"""
The identity provider's tables: C{[oidc]} (this client at the IdP, where
logins start and land) and C{[bearer]} (access tokens of API clients), and
the checks of the login paths that need other tables too.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple
from urllib.parse import urlsplit

import attr
import jwt
from jwt.algorithms import HMACAlgorithm
from twisted.logger import Logger

from ..core.urls import safe_return_to
from .reader import Problems, Table, describe
from .routes import client_certificate
from .schema import (
    CLIENT_AUTH_METHODS,
    ENDPOINT_KEYS,
    ID_TOKEN_ALGORITHMS,
    RESERVED_AUTH_PARAMS,
    BearerConfig,
    OIDCConfig,
    SessionConfig,
    StateCookieConfig,
    UpstreamSettings,
)
from .secrets import MIN_KEY_BYTES, short_secret
from .values import DEFAULT_PROVIDER_NAME, absolute_path, http_url, provider_name, readable_file

# The namespace of the whole configuration layer, as before it had modules.
log = Logger(namespace="oidcproxy.config")


def read_oidc(t: Table) -> OIDCConfig:
    """The C{[oidc]} table: the issuer, this client's credentials and its endpoints."""
    issuer = t.string("issuer", "https://invalid", required=True, check=http_url, doc=(
        "The IdP's issuer URL; it must equal the discovery document's ``issuer`` exactly."))
    scopes: Tuple[str, ...] = t.strings("scopes", ("openid", "email", "profile"), doc=(
        "The scopes requested at login; must include ``openid``."))
    if "openid" not in scopes:
        t.problem("scopes", "must include 'openid'")
    method = t.choice("token_endpoint_auth_method", CLIENT_AUTH_METHODS, "client_secret_basic",
                      doc="How this client authenticates at the token endpoint; ``none``: a "
                      "public client (PKCE required).")
    secret = t.secret("client_secret", doc=(
        "The client secret; required with ``client_secret_basic`` and ``client_secret_post``."))
    private_key = t.secret("private_key", doc=(
        "The PEM private key of ``private_key_jwt`` (a secret)."))
    if method in ("client_secret_basic", "client_secret_post") and not t.has("client_secret"):
        t.problem("client_secret", f"is required with token_endpoint_auth_method = {method!r}")
    if method == "private_key_jwt" and not t.has("private_key"):
        t.problem("private_key", "is required with token_endpoint_auth_method = 'private_key_jwt'")
    pkce = t.boolean("pkce", True, doc="PKCE (S256) on every login; required for a public client.")
    if method == "none" and not pkce:
        t.problem("pkce", "must be true for a public client (token_endpoint_auth_method = 'none')")
    discovery = t.boolean("discovery", True, doc=(
        "Fetch ``{issuer}/.well-known/openid-configuration``; ``false``: the endpoints below "
        "are given by hand."))
    endpoints = []
    for key in ENDPOINT_KEYS:
        url = t.string(key, None, check=http_url, doc=(
            f"The IdP's ``{key}``, over the discovered one; with ``discovery = false`` "
            "``authorization_endpoint``, ``token_endpoint`` and ``jwks_uri`` are required."))
        if url is not None:
            endpoints.append((key, url))
    if not discovery:
        present = {k for k, _ in endpoints}
        for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            if key not in present:
                t.problem(key, "is required when discovery = false")
    algorithms: Tuple[str, ...] = t.strings(
        "id_token_algorithms", (), choices=ID_TOKEN_ALGORITHMS,
        doc="The ID tokens' allowed signature algorithms; ``[]``: the IdP's advertised "
        "asymmetric ones. HS256/384/512 only when listed (they need ``client_secret``).")
    if any(a.startswith("HS") for a in algorithms) and secret is None:
        t.problem("id_token_algorithms", "HS* algorithms need a client_secret")
    extra = _oidc_parity(t, issuer)
    return OIDCConfig(
        issuer=issuer,
        client_id=t.string("client_id", "", required=True, doc=(
            "This client's id at the IdP.")),
        client_secret=secret,
        scopes=scopes,
        pkce=pkce,
        token_endpoint_auth_method=method,
        private_key=private_key,
        private_key_id=t.string("private_key_id", None, doc="The ``kid`` of ``private_key``."),
        private_key_alg=t.choice("private_key_alg", ("RS256", "RS384", "RS512", "PS256",
                                                     "ES256", "ES384", "ES512"), "RS256",
                                 doc="The signature algorithm of ``private_key_jwt``."),
        discovery=discovery,
        discovery_params=_string_table(t, "discovery_params", doc=(
            "Extra query parameters of the discovery request, e.g. ``{ p = \"B2C_1_signin\" }``.")),
        endpoints=tuple(endpoints),
        auth_params=_string_table(t, "auth_params", _not_reserved, doc=(
            "Extra static authorization parameters, e.g. ``{ prompt = \"login\" }``; an empty "
            "value sends none of that name. The ones the proxy sets itself are refused.")),
        id_token_algorithms=algorithms,
        leeway=t.duration("leeway", 60.0, doc="Clock skew allowed on ``exp``, ``iat``, ``nbf``."),
        iat_slack=t.duration("iat_slack", 600.0, positive=True, doc=(
            "An ID token or logout token issued longer ago than this (plus ``leeway``) is "
            "refused, whatever its ``exp``.")),
        userinfo=t.boolean("userinfo", False, doc=(
            "Also fetch the UserInfo endpoint at login (its ``sub`` must match).")),
        timeout=t.duration("timeout", 5.0, positive=True, doc=(
            "Every request to the IdP must be answered within this (504 after).")),
        max_response_size=t.size("max_response_size", 1_000_000, doc=(
            "Larger IdP answers are refused (502).")),
        max_concurrent_requests=t.integer("max_concurrent_requests", 64, minimum=1, doc=(
            "Requests to the IdP in flight at once (token, refresh, userinfo, introspection, "
            "revocation, discovery, JWKS); more wait their turn.")),
        max_queued_requests=t.integer("max_queued_requests", 256, doc=(
            "At most this many wait, each at most ``timeout``; beyond: 503 with "
            "``Retry-After``, the IdP never asked.")),
        jwks_cache_ttl=t.duration("jwks_cache_ttl", 3600.0, positive=True, doc=(
            "Refetch the IdP's keys this often.")),
        jwks_min_refresh_interval=t.duration("jwks_min_refresh_interval", 60.0, doc=(
            "A token with an unknown ``kid`` refetches the keys at most this often.")),
        ca_bundle=t.string("ca_bundle", None, check=readable_file, doc=(
            "CAs for the IdP; unset: the system's.")),
        callback_path=t.string("callback_path", None, check=absolute_path,
                               default_text='endpoints_prefix + "/callback"', doc=(
                                   "Where the IdP sends the browser back; register "
                                   "``public_url`` + this path at the IdP.")),
        pass_access_token=t.choice("pass_access_token", ("none", "authorization", "header"), "none",
                                   doc="Pass the session's access token upstream: "
                                   "``authorization``, as ``Authorization: Bearer``; ``header``, "
                                   "as ``X-Forwarded-Access-Token``."),
        pass_id_token=t.boolean("pass_id_token", False, doc=(
            "Pass the session's ID token upstream as ``X-Forwarded-Id-Token``.")),
        end_session=t.boolean("end_session", True, doc=(
            "Logout also logs out at the IdP (RP-initiated logout with ``id_token_hint``) when "
            "it advertises an ``end_session_endpoint``.")),
        **extra,
    )


_GUARD_WIDE = {
    "logout_path": "the logout endpoint is one for every provider (it ends the session of "
                   "whichever provider it belongs to): set it in [oidc]",
    "login_url": "the login endpoint starts [oidc]'s logins: set it in [oidc]",
}
"""The C{[oidc]} keys that are the guard's as a whole, refused in C{[providers.NAME]}."""

Providers = Tuple[Tuple[str, OIDCConfig], ...]


def read_providers(top: Table, prefix: str) -> Providers:
    """
    The C{[providers.NAME]} tables, each read as C{[oidc]} is; a provider's
    C{callback_path} defaults to C{prefix + "/callback/NAME"}.
    """
    t = top.table("providers", doc=(
        "Named identity providers: ``[providers.NAME]`` tables (NAME: letters, digits, ``-`` "
        "and ``_``), each with every key of ``[oidc]`` (but ``logout_path`` and ``login_url``, "
        "which are ``[oidc]``'s only); ``callback_path`` defaults to ``endpoints_prefix + "
        "\"/callback/NAME\"``. A route names one with ``provider``; ``[oidc]`` stays the "
        "provider of routes that name none."))
    if t is None:
        return ()
    out: List[Tuple[str, OIDCConfig]] = []
    for name, value in t.items():
        try:
            provider_name(name)
        except ValueError as e:
            t.problem(name, str(e))
            continue
        if name == DEFAULT_PROVIDER_NAME:
            t.problem(name, f"{name!r} is the name a route's providers list gives the [oidc] "
                      "table: choose another name")
            continue
        if not isinstance(value, dict):
            t.problem(name, f"expected a table ([providers.{name}]), got {describe(value)}")
            continue
        table = Table(t.problems, value, t.keypath(name))
        oidc = read_oidc(table)
        for key, why in _GUARD_WIDE.items():
            if table.has(key):
                table.problem(key, f"is not set per provider: {why}")
        table.done()
        if oidc.callback_path is None:
            oidc = attr.evolve(oidc, callback_path=f"{prefix}/callback/{name}")
        out.append((name, oidc))
    return tuple(out)


def _oidc_parity(t: Table, issuer: str) -> Dict[str, Any]:
    """
    The C{[oidc]} keys of the landing pages, where logins start, and the
    IdP client's retries and TLS (the names Traefik Hub's importer emits).
    """
    old = t.string("post_logout_redirect_uri", None, check=_landing_page, doc=(
        "The former name of ``post_logout_redirect_url``, still read with a deprecation "
        "warning."))
    new = t.string("post_logout_redirect_url", None, check=_landing_page,
                   default_text="public_url + the logout's rd", doc=(
                       "A fixed landing page after logout (register it at the IdP): the IdP "
                       "sends the browser back there, or the proxy does without IdP logout."))
    if t.has("post_logout_redirect_uri"):
        if t.has("post_logout_redirect_url"):
            t.problem("post_logout_redirect_uri", "is the former name of post_logout_redirect_url; "
                      "set only post_logout_redirect_url")
        else:
            log.warn("config: {key} is deprecated; rename it to post_logout_redirect_url",
                     key=t.keypath("post_logout_redirect_uri"))
    login_url = t.string("login_url", None, check=absolute_path, doc=(
        "Only this path starts a login (``?rd=/path`` to land there); every other "
        "unauthenticated request gets 401."))
    disable_login = t.boolean("disable_login", False, doc=(
        "Never start a login here, answer 401 (another proxy logs users in); not with "
        "``login_url``."))
    if login_url is not None and disable_login:
        t.problem("disable_login", "cannot be combined with login_url (one starts logins at one "
                  "path, the other never starts any)")
    certificate = client_certificate(t, UpstreamSettings())
    insecure = t.boolean("insecure_skip_verify", False, doc=(
        "Do **not** verify the IdP's certificate (tests only; https issuers only; a warning at "
        "every start and reload; not with ``ca_bundle``)."))
    if insecure and not issuer.startswith("https://"):
        t.problem("insecure_skip_verify", "only makes sense with an https issuer "
                  f"({issuer!r} is not TLS)")
    if insecure and t.has("ca_bundle"):
        t.problem("insecure_skip_verify", "cannot be combined with ca_bundle")
    return {
        "post_logout_redirect_url": new if new is not None else old,
        "post_login_redirect_url": t.string("post_login_redirect_url", None, check=_landing_page,
                                            default_text="the page the login started from",
                                            doc="A fixed landing page after login: a path or "
                                            "a URL on public_url's origin."),
        "login_url": login_url,
        "disable_login": disable_login,
        "logout_path": t.string("logout_path", None, check=absolute_path,
                                default_text='endpoints_prefix + "/logout"',
                                doc="The path of the logout endpoint."),
        "max_retries": t.integer("max_retries", 0, minimum=0, maximum=10, doc=(
            "Retries of a failed discovery, JWKS or UserInfo request (transport error, "
            "timeout, 5xx, 429) after 0.5 s, 1 s, 2 s ...; never of a token request.")),
        "insecure_skip_verify": insecure,
        "step_up_prompt_login": t.boolean("step_up_prompt_login", False, doc=(
            "A step-up login (a route's ``acr_values`` or ``max_auth_age``, or the upstream's "
            "RFC 9470 challenge) also sends ``prompt=login``: for an IdP that does not "
            "authenticate again on ``acr_values`` or ``max_age`` alone.")),
        "acr_claim": t.choice("acr_claim", ("acr", "acrs"), "acr", doc=(
            "Where a sign-in's authentication context is: ``acr`` (OpenID Connect), or "
            "``acrs``, the array of Microsoft Entra ID's authentication contexts (each value "
            "counts as the sign-in's; a step-up login asks for them with the ``claims`` "
            "request parameter instead of ``acr_values``).")),
        **certificate,
    }


def _landing_page(text: str) -> str:
    """A path (a safe same-origin return-to) or an absolute http(s) URL."""
    if text.startswith("/"):
        if safe_return_to(text) is None:
            raise ValueError(f"{text!r} is not a plain same-origin path")
        return text
    return http_url(text)


def _string_table(t: Table, key: str, check_key: Optional[Callable[[str], Any]] = None, *,
                  doc: str) -> Tuple[Tuple[str, str], ...]:
    """A table of string values, like C{auth_params = { prompt = "login" }}."""
    table = t.table(key, doc=doc)
    if table is None:
        return ()
    out = []
    for name, value in table.items():
        if not isinstance(value, str):
            t.problem(f"{key}.{name}", f"expected a string, got {describe(value)}")
            continue
        if check_key is not None:
            try:
                check_key(name)
            except ValueError as e:
                t.problem(f"{key}.{name}", str(e))
                continue
        out.append((name, value))
    return tuple(out)


def _not_reserved(name: str) -> str:
    if name in RESERVED_AUTH_PARAMS:
        raise ValueError("is set by the proxy itself and cannot be configured")
    return name


def read_bearer(t: Table, oidc: Optional[OIDCConfig]) -> BearerConfig:
    """The C{[bearer]} table; C{oidc} is None without an C{[oidc]} table."""
    bearer = BearerConfig(
        audiences=t.strings("audiences", (), doc=(
            "A token's ``aud`` must contain one of these; ``[]``: the client id, and then the "
            "token must also show it is an access token (``typ`` ``at+jwt``, ``scope``/``scp``, "
            "``client_id``/``cid``).")),
        introspection=t.boolean("introspection", False, doc=(
            "Check opaque tokens by RFC 7662 introspection at the IdP.")),
        introspection_cache=t.duration("introspection_cache", 60.0, doc=(
            "An introspection answer is kept this long at most (never past the token's "
            "``exp``).")),
        cache_size=t.integer("cache_size", 10_000, minimum=1, doc=(
            "Verified tokens kept (up to their ``exp``).")),
        issuer=t.string("issuer", None, check=http_url, default_text="oidc.issuer", doc=(
            "Accept the tokens of this issuer instead of ``oidc.issuer``'s (``audiences`` is "
            "then required).")),
        jwks_uri=t.string("jwks_uri", None, check=http_url, doc=(
            "That issuer's keys; unset: from its discovery document.")),
        jwks_file=t.string("jwks_file", None, check=readable_file, doc=(
            "That issuer's keys from a JWKS file (not with ``jwks_uri``).")),
        algorithms=t.strings("algorithms", (), choices=ID_TOKEN_ALGORITHMS, doc=(
            "The allowed algorithms; ``[]``: the asymmetric ones of "
            "``oidc.id_token_algorithms`` or the IdP's advertised ones (another issuer's: every "
            "asymmetric one). HS* only with ``hmac_secret``.")),
        hmac_secret=t.secret("hmac_secret", doc=(
            "The shared secret of HS* access tokens (at least 32 bytes, never the client "
            "secret).")),
    )
    _bearer_hmac(t, bearer, oidc)
    if bearer.issuer is not None and bearer.issuer != (oidc.issuer if oidc else None):
        if not bearer.audiences:
            t.problem("audiences", "is required with another issuer: a token "
                      "for another resource server must be refused")
        if bearer.introspection:
            t.problem("introspection", "works only with the oidc.issuer's tokens")
    elif bearer.jwks_uri or bearer.jwks_file:
        t.problem("issuer", "is required with jwks_uri or jwks_file")
    if bearer.jwks_uri and bearer.jwks_file:
        t.problem("jwks_file", "cannot be combined with jwks_uri")
    return bearer


MIN_HMAC_SECRET_BYTES = MIN_KEY_BYTES
"""RFC 7518, 3.2: an HS256 key has at least 256 bits."""


def _bearer_hmac(t: Table, bearer: BearerConfig, oidc: Optional[OIDCConfig]) -> None:
    """
    Access tokens are signed with the issuer's asymmetric keys; HS* only when
    C{bearer.algorithms} lists it and C{bearer.hmac_secret} holds its own
    secret (never the client secret, which every holder of it could sign with).
    """
    hmac_listed = any(a.startswith("HS") for a in bearer.algorithms)
    secret = bearer.hmac_secret
    if hmac_listed and secret is None and not t.has("hmac_secret"):
        t.problem("algorithms", "HS* algorithms need bearer.hmac_secret (access tokens are never "
                  "checked with the client secret)")
    if secret is None:
        return
    if not hmac_listed:
        t.problem("hmac_secret", "is used only with an HS* algorithm in bearer.algorithms")
        return
    value = secret.reveal()
    short = short_secret(value, MIN_HMAC_SECRET_BYTES)
    if oidc is not None and oidc.client_secret is not None and \
            value == oidc.client_secret.reveal():
        t.problem("hmac_secret", "must not be the client secret: whoever holds it (the IdP, every "
                  "instance of this client) could sign access tokens for any user")
    elif short is not None:
        t.problem("hmac_secret", f"the secret from {secret.origin} is {short}")
    elif value.lstrip().startswith("{") or not _usable_hmac_key(value):
        t.problem("hmac_secret", f"looks like a key (PEM, SSH or JWK), not a shared secret "
                  f"(from {secret.origin})")


def _usable_hmac_key(value: str) -> bool:
    """Whether pyjwt takes C{value} as an HMAC key (it refuses PEM and SSH keys)."""
    try:
        HMACAlgorithm(HMACAlgorithm.SHA256).prepare_key(value.encode("utf-8"))
    except jwt.InvalidKeyError:
        return False
    return True


def _path_matches(cookie_path: str, path: str) -> bool:
    """RFC 6265 5.1.4: whether a cookie of C{cookie_path} is sent to C{path}."""
    return path == cookie_path or path.startswith(cookie_path.rstrip("/") + "/")


def check_login_paths(problems: Problems, oidc: Optional[OIDCConfig], providers: Providers,
                      public_url: Optional[str], prefix: str, state: StateCookieConfig,
                      session: SessionConfig) -> None:
    """
    The checks of C{[oidc]}, C{[providers.NAME]} and C{[state_cookie]} that
    need the other tables too: every endpoint path is its own (each
    provider's callback too), the fixed landing pages are on public_url's
    origin, the state cookie reaches every callback.
    """
    named: List[Tuple[str, OIDCConfig]] = [("oidc", oidc)] if oidc is not None else []
    named += [(f"providers.{name}", p) for name, p in providers]
    callbacks = [(f"{key}.callback_path", p.callback_path or prefix + "/callback")
                 for key, p in named]
    # [oidc]'s own paths first, then the named providers' callbacks.
    own = 1 if oidc is not None else 0
    paths = callbacks[:own] + [
        ("oidc.logout_path", (oidc.logout_path if oidc else None) or prefix + "/logout")]
    if oidc is not None and oidc.login_url is not None:
        paths.append(("oidc.login_url", oidc.login_url))
    paths += callbacks[own:]
    for i, (key, path) in enumerate(paths):
        for other, other_path in paths[:i]:
            if path == other_path:
                problems.add(key, f"{path!r} is already the path of {other}")
    origin = None
    host = None
    if public_url is not None:
        parts = urlsplit(public_url)
        origin = f"{parts.scheme}://{parts.netloc}".lower()
        host = (parts.hostname or "").lower()
    for (key, provider), (_, callback) in zip(named, callbacks):
        _check_landing_and_state(problems, key, provider, callback, origin, state)
    _check_cookies(problems, public_url, host, state, session)


def _check_landing_and_state(problems: Problems, key: str, oidc: OIDCConfig, callback: str,
                             origin: Optional[str], state: StateCookieConfig) -> None:
    """A provider's fixed landing page is on public_url's origin; the state cookie reaches its callback."""
    landing = oidc.post_login_redirect_url
    if landing is not None and not landing.startswith("/"):
        parts = urlsplit(landing)
        if origin is None or f"{parts.scheme}://{parts.netloc}".lower() != origin:
            problems.add(f"{key}.post_login_redirect_url",
                         f"{landing!r} is not on public_url's origin ({origin or 'unset'}); "
                         "give a path or a URL on that origin")
    if not _path_matches(state.path, callback):
        problems.add("state_cookie.path", f"{state.path!r} does not cover the callback path "
                     f"{callback!r}: the browser would not send the state cookie back")


def _check_cookies(problems: Problems, public_url: Optional[str], host: Optional[str],
                   state: StateCookieConfig, session: SessionConfig) -> None:
    """The cookies' attributes against public_url and each other."""
    if state.domain is not None and host is not None:
        domain = state.domain.lower()
        if host != domain and not host.endswith("." + domain):
            problems.add("state_cookie.domain", f"{state.domain!r} does not cover public_url's "
                         f"host {host!r}: browsers would refuse the cookie")
    secure = session.cookie_secure if session.cookie_secure is not None else \
        (public_url or "").startswith("https://")
    if session.cookie_secure is False and session.same_site == "None":
        problems.add("session.cookie_secure", 'false cannot be combined with same_site = "None" '
                     "(browsers refuse SameSite=None cookies that are not Secure)")
    state_secure = state.secure if state.secure is not None else secure
    if state.same_site == "None" and not state_secure:
        problems.add("state_cookie.same_site", '"None" needs a secure cookie (browsers refuse '
                     "SameSite=None without Secure): set secure = true and an https public_url")
