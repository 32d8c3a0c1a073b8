"""
Which Traefik Hub OIDC middleware option each of our keys stands for: the
importer reads the options by these names, and the configuration reference
shows them beside our keys.
"""

from __future__ import annotations

from typing import Dict

HUB_NAMES: Dict[str, str] = {
    "public_url": "redirectUrl",
    "username_claim": "usernameClaim",
    "oidc.issuer": "issuer",
    "oidc.client_id": "clientId",
    "oidc.client_secret": "clientSecret",
    "oidc.scopes": "scopes",
    "oidc.pkce": "pkce",
    "oidc.callback_path": "redirectUrl",
    "oidc.discovery_params": "discoveryParams",
    "oidc.auth_params": "authParams",
    "oidc.login_url": "loginUrl",
    "oidc.disable_login": "disableLogin",
    "oidc.logout_path": "logoutUrl",
    "oidc.post_login_redirect_url": "postLoginRedirectUrl",
    "oidc.post_logout_redirect_url": "postLogoutRedirectUrl",
    "oidc.timeout": "clientConfig.timeoutSeconds",
    "oidc.max_retries": "clientConfig.maxRetries",
    "oidc.ca_bundle": "clientConfig.tls.ca",
    "oidc.client_cert": "clientConfig.tls.cert",
    "oidc.client_key": "clientConfig.tls.key",
    "oidc.insecure_skip_verify": "clientConfig.tls.insecureSkipVerify",
    "session.store": "session.store",
    "session.lifetime": "session.expiry",
    "session.sliding": "session.sliding",
    "session.refresh": "session.refresh",
    "session.cookie_name": "session.name",
    "session.cookie_path": "session.path",
    "session.cookie_domain": "session.domain",
    "session.cookie_secure": "session.secure",
    "session.same_site": "session.sameSite",
    "redis.url": "session.store.redis.endpoints",
    "redis.username": "session.store.redis.username",
    "redis.password": "session.store.redis.password",
    "redis.ca_bundle": "session.store.redis.tls.caBundle",
    "redis.sentinel": "session.store.redis.endpoints",
    "redis.master_name": "session.store.redis.sentinel.masterSet",
    "state_cookie.name": "stateCookie.name",
    "state_cookie.max_age": "stateCookie.maxAge",
    "state_cookie.path": "stateCookie.path",
    "state_cookie.domain": "stateCookie.domain",
    "state_cookie.same_site": "stateCookie.sameSite",
    "state_cookie.secure": "stateCookie.secure",
    "state_cookie.http_only": "stateCookie.httpOnly",
    "csrf": "csrf",
    "csrf.header_name": "csrf.headerName",
    "csrf.secure": "csrf.secure",
    "headers": "forwardHeaders",
    "routes.rule": "claims",
}
"""Our key path: the Traefik Hub option's path in the middleware's C{spec.plugin}."""


def hub_option(key: str) -> str:
    """The name the importer reads for our C{key}: the Hub option's last part."""
    return HUB_NAMES[key].rpartition(".")[2]
