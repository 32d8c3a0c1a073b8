"""
The identity provider's tables: C{[oidc]} (this client at the IdP, where
logins start and land) and C{[bearer]} (access tokens of API clients), and
the checks of the login paths that need other tables too.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple
from urllib.parse import urlsplit

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
from .values import absolute_path, http_url, one_of, readable_file

# The namespace of the whole configuration layer, as before it had modules.
log = Logger(namespace="oidcproxy.config")


def read_oidc(t: Table) -> OIDCConfig:
    """The C{[oidc]} table: the issuer, this client's credentials and its endpoints."""
    issuer = t.string("issuer", "https://invalid", required=True, check=http_url)
    scopes: Tuple[str, ...] = t.strings("scopes", ("openid", "email", "profile"))
    if "openid" not in scopes:
        t.problem("scopes", "must include 'openid'")
    method = t.choice("token_endpoint_auth_method", CLIENT_AUTH_METHODS, "client_secret_basic")
    secret = t.secret("client_secret")
    private_key = t.secret("private_key")
    if method in ("client_secret_basic", "client_secret_post") and not t.has("client_secret"):
        t.problem("client_secret", f"is required with token_endpoint_auth_method = {method!r}")
    if method == "private_key_jwt" and not t.has("private_key"):
        t.problem("private_key", "is required with token_endpoint_auth_method = 'private_key_jwt'")
    pkce = t.boolean("pkce", True)
    if method == "none" and not pkce:
        t.problem("pkce", "must be true for a public client (token_endpoint_auth_method = 'none')")
    discovery = t.boolean("discovery", True)
    endpoints = []
    for key in ENDPOINT_KEYS:
        url = t.string(key, None, check=http_url)
        if url is not None:
            endpoints.append((key, url))
    if not discovery:
        present = {k for k, _ in endpoints}
        for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            if key not in present:
                t.problem(key, "is required when discovery = false")
    algorithms: Tuple[str, ...] = t.strings(
        "id_token_algorithms", (), check=lambda a: one_of(a, ID_TOKEN_ALGORITHMS)
    )
    if any(a.startswith("HS") for a in algorithms) and secret is None:
        t.problem("id_token_algorithms", "HS* algorithms need a client_secret")
    extra = _oidc_parity(t, issuer)
    return OIDCConfig(
        issuer=issuer,
        client_id=t.string("client_id", "", required=True),
        client_secret=secret,
        scopes=scopes,
        pkce=pkce,
        token_endpoint_auth_method=method,
        private_key=private_key,
        private_key_id=t.string("private_key_id", None),
        private_key_alg=t.choice("private_key_alg", ("RS256", "RS384", "RS512", "PS256",
                                                     "ES256", "ES384", "ES512"), "RS256"),
        discovery=discovery,
        discovery_params=_string_table(t, "discovery_params"),
        endpoints=tuple(endpoints),
        auth_params=_string_table(t, "auth_params", _not_reserved),
        id_token_algorithms=algorithms,
        leeway=t.duration("leeway", 60.0),
        iat_slack=t.duration("iat_slack", 600.0, positive=True),
        userinfo=t.boolean("userinfo", False),
        timeout=t.duration("timeout", 5.0, positive=True),
        max_response_size=t.size("max_response_size", 1_000_000),
        max_concurrent_requests=t.integer("max_concurrent_requests", 64, minimum=1),
        max_queued_requests=t.integer("max_queued_requests", 256),
        jwks_cache_ttl=t.duration("jwks_cache_ttl", 3600.0, positive=True),
        jwks_min_refresh_interval=t.duration("jwks_min_refresh_interval", 60.0),
        ca_bundle=t.string("ca_bundle", None, check=readable_file),
        callback_path=t.string("callback_path", None, check=absolute_path),
        pass_access_token=t.choice("pass_access_token", ("none", "authorization", "header"), "none"),
        pass_id_token=t.boolean("pass_id_token", False),
        end_session=t.boolean("end_session", True),
        **extra,
    )


def _oidc_parity(t: Table, issuer: str) -> Dict[str, Any]:
    """
    The C{[oidc]} keys of the landing pages, where logins start, and the
    IdP client's retries and TLS (the names Traefik Hub's importer emits).
    """
    old = t.string("post_logout_redirect_uri", None, check=_landing_page)
    new = t.string("post_logout_redirect_url", None, check=_landing_page)
    if t.has("post_logout_redirect_uri"):
        if t.has("post_logout_redirect_url"):
            t.problem("post_logout_redirect_uri", "is the former name of post_logout_redirect_url; "
                      "set only post_logout_redirect_url")
        else:
            log.warn("config: {key} is deprecated; rename it to post_logout_redirect_url",
                     key=t.keypath("post_logout_redirect_uri"))
    login_url = t.string("login_url", None, check=absolute_path)
    disable_login = t.boolean("disable_login", False)
    if login_url is not None and disable_login:
        t.problem("disable_login", "cannot be combined with login_url (one starts logins at one "
                  "path, the other never starts any)")
    certificate = client_certificate(t, UpstreamSettings())
    insecure = t.boolean("insecure_skip_verify", False)
    if insecure and not issuer.startswith("https://"):
        t.problem("insecure_skip_verify", "only makes sense with an https issuer "
                  f"({issuer!r} is not TLS)")
    if insecure and t.has("ca_bundle"):
        t.problem("insecure_skip_verify", "cannot be combined with ca_bundle")
    return {
        "post_logout_redirect_url": new if new is not None else old,
        "post_login_redirect_url": t.string("post_login_redirect_url", None, check=_landing_page),
        "login_url": login_url,
        "disable_login": disable_login,
        "logout_path": t.string("logout_path", None, check=absolute_path),
        "max_retries": t.integer("max_retries", 0, minimum=0, maximum=10),
        "insecure_skip_verify": insecure,
        **certificate,
    }


def _landing_page(text: str) -> str:
    """A path (a safe same-origin return-to) or an absolute http(s) URL."""
    if text.startswith("/"):
        if safe_return_to(text) is None:
            raise ValueError(f"{text!r} is not a plain same-origin path")
        return text
    return http_url(text)


def _string_table(t: Table, key: str, check_key: Optional[Callable[[str], Any]] = None
                  ) -> Tuple[Tuple[str, str], ...]:
    """A table of string values, like C{auth_params = { prompt = "login" }}."""
    table = t.table(key)
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
        audiences=t.strings("audiences", ()),
        introspection=t.boolean("introspection", False),
        introspection_cache=t.duration("introspection_cache", 60.0),
        cache_size=t.integer("cache_size", 10_000, minimum=1),
        issuer=t.string("issuer", None, check=http_url),
        jwks_uri=t.string("jwks_uri", None, check=http_url),
        jwks_file=t.string("jwks_file", None, check=readable_file),
        algorithms=t.strings("algorithms", (), check=lambda a: one_of(a, ID_TOKEN_ALGORITHMS)),
        hmac_secret=t.secret("hmac_secret"),
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


def check_login_paths(problems: Problems, oidc: OIDCConfig, public_url: Optional[str],
                      prefix: str, state: StateCookieConfig, session: SessionConfig) -> None:
    """The checks of C{[oidc]} and C{[state_cookie]} that need the other tables too."""
    callback = oidc.callback_path or prefix + "/callback"
    logout = oidc.logout_path or prefix + "/logout"
    paths = [("oidc.callback_path", callback), ("oidc.logout_path", logout)]
    if oidc.login_url is not None:
        paths.append(("oidc.login_url", oidc.login_url))
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
    landing = oidc.post_login_redirect_url
    if landing is not None and not landing.startswith("/"):
        parts = urlsplit(landing)
        if origin is None or f"{parts.scheme}://{parts.netloc}".lower() != origin:
            problems.add("oidc.post_login_redirect_url",
                         f"{landing!r} is not on public_url's origin ({origin or 'unset'}); "
                         "give a path or a URL on that origin")
    if not _path_matches(state.path, callback):
        problems.add("state_cookie.path", f"{state.path!r} does not cover the callback path "
                     f"{callback!r}: the browser would not send the state cookie back")
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
