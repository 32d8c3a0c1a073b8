"""
Advice on a valid configuration: settings that work but are probably not
what the operator wants, for C{--check} to print as C{warning:} lines (the
configuration is still valid: the exit status stays 0).
"""

from __future__ import annotations

from typing import List, Optional, Tuple

from .config import Config, RouteConfig, Secret
from .config.secrets import weak_secret

MUTABLE_CLAIMS = ("preferred_username",)
"""
Claims that name a user but do not identify one: at many identity providers
(Keycloak, Entra ID, Okta, ...) the user or an administrator can change
them and two accounts may hold the same value over time, unlike C{sub}
(stable and unique per issuer).
"""

_WHY = ("at many identity providers users can change it and it is not unique "
        "(two accounts may carry the same value over time)")


def config_warnings(config: Config) -> List[str]:
    """
    The warnings of C{config}, one line each, without the C{warning:}
    prefix: secrets that look easy to guess (L{secret_warnings}), identity
    headers and route rules keyed on a claim in L{MUTABLE_CLAIMS}.
    """
    lines = secret_warnings(config)
    authenticated = [r for r in config.routes if r.auth != "none"]
    if authenticated:
        for header, candidates in config.headers:
            for claim in candidates:
                if claim in MUTABLE_CLAIMS:
                    tried = ", ".join(candidates)
                    lines.append(
                        f"headers.{header} takes {claim} (of: {tried}): {_WHY}, so an "
                        f"application that takes {header} for who the user is can mistake one "
                        f'user for another; map it to "sub", or to "email" with routes that '
                        f"require Equals(`email_verified`, `true`)")
    for route in config.routes:
        if route.policy is None or route.auth == "none":
            continue
        for token, path in sorted(route.policy.claim_paths()):
            if path[0] in MUTABLE_CLAIMS:
                claim = ".".join(path) if token == "id_token" else f"{token}.{'.'.join(path)}"
                lines.append(
                    f"{_where(route)}: the rule authorizes on {claim}: {_WHY}, so the rule "
                    f"can let one user in as another; key it on sub, or on email together "
                    f"with Equals(`email_verified`, `true`)")
    return lines


def secret_warnings(config: Config) -> List[str]:
    """
    The secrets of C{config} long enough to be accepted that still look easy
    to guess (L{weak_secret}), one line each naming the key and where the
    secret came from, never its value. The proxy logs them when it starts.
    """
    named: List[Tuple[str, Optional[Secret]]] = [
        (f"session.secrets[{i}]", s) for i, s in enumerate(config.session.secrets)]
    named.append(("bearer.hmac_secret", config.bearer.hmac_secret))
    named.append(("admin.token", config.admin.token if config.admin is not None else None))
    lines = []
    for key, secret in named:
        why = weak_secret(secret.reveal()) if secret is not None else None
        if secret is not None and why is not None:
            lines.append(f"{key}: the secret from {secret.origin} {why}")
    return lines


def _where(route: RouteConfig) -> str:
    return f"{route.name} ({route.host or '*'}{route.path})"
