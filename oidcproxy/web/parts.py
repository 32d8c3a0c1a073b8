"""
What a guard is built from (L{GuardParts}: made once from the configuration
by L{oidcproxy.assemble}) and what its units share while it runs
(L{GuardState}: the parts, and the configuration a reload replaces).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, FrozenSet, List, Optional, Set
from urllib.parse import urlsplit

import attr
from twisted.logger import Logger

from ..config import Config, OIDCConfig
from ..core.metrics import NullMetrics
from ..oidc.login import LoginFlow
from ..oidc.provider import Provider
from ..oidc.refresh import Refresher
from ..proxy.routes import RouteTable
from ..sessions.session import DEFAULT_PROVIDER, ISessionStore
from .cookies import CookieRules
from .headers import HeaderNames, IdentityPlan, managed_headers
from .idtokens import IdTokens
from .pages import Pages

__all__ = ["GuardParts", "GuardState", "ProviderParts"]

log = Logger()


@attr.s(auto_attribs=True, eq=False)
class ProviderParts:
    """
    What one provider logs users in with: its table, its redirect URI, its
    IdP client, login flow (its attempts bound to C{name}), refresher and
    token validators.
    """

    name: str
    oidc: OIDCConfig
    redirect_uri: str
    provider: Provider
    login: LoginFlow
    id_tokens: IdTokens
    refresher: Optional[Refresher] = None


@attr.s(auto_attribs=True, eq=False)
class GuardParts:
    """
    The parts of a guard, built once (see L{oidcproxy.assemble.build_parts}).

    @ivar metrics: where requests, logins, token failures and refreshes are counted.
    @ivar provider: the IdP client (None without C{[oidc]}: nothing needs login).
    @ivar store: the session store.
    @ivar revocations: for a store that cannot delete sessions (the cookie
        store), a revocation list (C{mark_revoked}, C{revoked_at}, C{lock};
        by C{sub}, C{sid} or C{session_id}) that every logout writes and
        every request checks; or None.
    @ivar owns_stores: whether the guard closes the stores at shutdown (it
        does those built for it).
    @ivar login: the login flow (state, nonce, PKCE, state cookies).
    @ivar refresher: renews a session's tokens near their expiry.
    @ivar id_tokens: the ID and logout token validators.
    @ivar external_keys: the key source of another issuer's access tokens
        (C{bearer.issuer}; see L{oidcproxy.web.bearer_auth.external_key_source}),
        or None.
    @ivar external_keys_for: makes it again for a reloaded configuration
        (never while a request waits).
    @ivar provider_names: the providers whose sessions the guard serves
        (L{DEFAULT_PROVIDER} for C{[oidc]}'s); a session of any other is
        refused as an unknown one.
    @ivar named: the parts of each named provider (C{[providers.NAME]}), by
        name; C{[oidc]}'s are the fields above.
    """

    metrics: NullMetrics
    provider: Optional[Provider] = None
    store: Optional[ISessionStore] = None
    revocations: Any = None
    owns_stores: bool = False
    login: Optional[LoginFlow] = None
    refresher: Optional[Refresher] = None
    id_tokens: Optional[IdTokens] = None
    external_keys: Any = None
    external_keys_for: Optional[Callable[[Config], Any]] = None
    provider_names: FrozenSet[str] = frozenset([DEFAULT_PROVIDER])
    named: Dict[str, ProviderParts] = attr.Factory(dict)


class GuardState:
    """
    What the units of one guard share: its parts, the running configuration
    (replaced by a reload, see L{reconfigure}) and what follows from it.
    """

    def __init__(self, config: Config, routes: RouteTable, parts: GuardParts, clock: Any,
                 max_cookie_bytes: int) -> None:
        self.config = config
        self.routes = routes
        self.parts = parts
        self.clock = clock
        self.metrics = parts.metrics
        # The state cookies of every provider's flow share their names: any flow knows them.
        self.cookies = CookieRules(config, parts.login if parts.login is not None else next(
            (bundle.login for bundle in parts.named.values()), None), max_cookie_bytes)
        self.managed: HeaderNames = managed_headers(config)
        self.identity = IdentityPlan(config)
        """The identity headers' plan (which claims feed which header)."""
        self.pages = Pages(config, self._logout_targets)
        """The pages the guard shows people (its requests' contexts carry them)."""
        self._mounts_seen: Set[str] = set()
        self.worker_id: Optional[int] = None
        """The worker number when several processes serve (shown by the health endpoint)."""

    def note_mount(self, mount: str) -> None:
        """
        The guard serves below C{mount}: say once when public_url does not
        name that path (the IdP would send logins back past the guard).
        """
        if mount in self._mounts_seen:
            return
        self._mounts_seen.add(mount)
        if not urlsplit(self.public).path.endswith(mount):
            log.warn("the guard is mounted at {mount}, but public_url {public} does not end "
                     "with it: its redirect_uri and landing pages miss the guard; set "
                     "public_url to the URL of the mount point", mount=mount,
                     public=self.public or "(unset)")

    def bundle(self, name: str) -> Optional[ProviderParts]:
        """
        The parts of the provider C{name} (L{DEFAULT_PROVIDER}: C{[oidc]}'s),
        or None when the guard has none of that name (or C{[oidc]} is not
        complete: nothing logs in there).
        """
        parts = self.parts
        if name != DEFAULT_PROVIDER:
            return parts.named.get(name)
        oidc = self.config.oidc
        if oidc is None or parts.provider is None or parts.login is None or \
                parts.id_tokens is None:
            return None
        return ProviderParts(DEFAULT_PROVIDER, oidc, self.config.redirect_uri or "",
                             parts.provider, parts.login, parts.id_tokens, parts.refresher)

    def bundles(self) -> List[ProviderParts]:
        """The parts of every provider, C{[oidc]}'s first."""
        default = self.bundle(DEFAULT_PROVIDER)
        return ([default] if default is not None else []) + list(self.parts.named.values())

    def _logout_targets(self) -> List[Optional[str]]:
        """
        Where a sign-out form's answer may go (see L{Pages}): each IdP's
        logout endpoint when it is known, each named provider's fixed
        landing page after logout.
        """
        targets: List[Optional[str]] = []
        for bundle in self.bundles():
            metadata = bundle.provider.metadata
            if bundle.oidc.end_session and metadata is not None:
                targets.append(metadata.end_session_endpoint)
            if bundle.name != DEFAULT_PROVIDER:
                targets.append(bundle.oidc.post_logout_redirect_url)
        return targets

    def reconfigure(self, config: Config, routes: RouteTable) -> None:
        """
        Take a reloaded configuration and its routes (the parts stay as they
        were built).

        @raise TemplateProblem: a template of the new C{templates_dir} cannot
            be used (nothing is changed then).
        """
        self.pages = Pages(config, self._logout_targets)
        self.config = config
        self.routes = routes
        self.managed = managed_headers(config)
        self.identity = IdentityPlan(config)
        self.cookies.reconfigure(config)
        for bundle in self.bundles():
            bundle.id_tokens.reconfigure(config)

    @property
    def public(self) -> str:
        """public_url (without its trailing slash), or C{""}."""
        return self.config.public_url or ""

    @property
    def public_origin(self) -> bytes:
        """public_url's scheme and authority, as a browser sends it in C{Origin}."""
        return "/".join(self.public.split("/", 3)[:3]).encode("ascii")

    def absolute(self, target: str) -> str:
        """A path as a URL on public_url (which includes the path a guard is mounted at); a URL as it is."""
        return self.public + target if target.startswith("/") else target
