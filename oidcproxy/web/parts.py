"""
What a guard is built from (L{GuardParts}: made once from the configuration
by L{oidcproxy.assemble}) and what its units share while it runs
(L{GuardState}: the parts, and the configuration a reload replaces).
"""

from __future__ import annotations

from typing import Any, Callable, FrozenSet, Optional, Set
from urllib.parse import urlsplit

import attr
from twisted.logger import Logger

from ..config import Config
from ..core.metrics import NullMetrics
from ..oidc.login import LoginFlow
from ..oidc.provider import Provider
from ..oidc.refresh import Refresher
from ..proxy.routes import RouteTable
from ..sessions.session import DEFAULT_PROVIDER, ISessionStore
from .cookies import CookieRules
from .headers import HeaderNames, managed_headers
from .idtokens import IdTokens
from .pages import Pages

__all__ = ["GuardParts", "GuardState"]

log = Logger()


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
        self.cookies = CookieRules(config, parts.login, max_cookie_bytes)
        self.managed: HeaderNames = managed_headers(config)
        self.pages = Pages(config, self._end_session_origin)
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

    def _end_session_origin(self) -> Optional[str]:
        """The origin of the IdP's logout endpoint, where a sign-out form's answer may go."""
        provider, oidc = self.parts.provider, self.config.oidc
        metadata = provider.metadata if provider is not None else None
        if metadata is None or oidc is None or not oidc.end_session or \
                not metadata.end_session_endpoint:
            return None
        parts = urlsplit(metadata.end_session_endpoint)
        return f"{parts.scheme}://{parts.netloc}"

    def reconfigure(self, config: Config, routes: RouteTable) -> None:
        """
        Take a reloaded configuration and its routes (the parts stay as they
        were built).

        @raise TemplateProblem: a template of the new C{templates_dir} cannot
            be used (nothing is changed then).
        """
        self.pages = Pages(config, self._end_session_origin)
        self.config = config
        self.routes = routes
        self.managed = managed_headers(config)
        self.cookies.reconfigure(config)
        if self.parts.id_tokens is not None:
            self.parts.id_tokens.reconfigure(config)

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
