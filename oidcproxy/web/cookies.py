"""
The proxy's own cookies: the session cookies (one per provider, each with
its chunks), the login state cookies and the CSRF cookie. They are stripped from every request
before it goes on, the wrapped resource may not set them, and the session
cookie is handed out here (within the size a browser and a site accept).
"""

from __future__ import annotations

import json
from typing import Dict, List, Optional, Sequence, Set

from twisted.logger import Logger
from twisted.web.server import Request

from ..config import Config, RouteConfig, provider_cookie_name
from ..core.context import RequestContext
from ..oidc.login import LoginFlow
from ..sessions.cookies import (
    CHUNK_SIZE,
    CookieSpec,
    CookieTooLarge,
    OwnedNames,
    chunk_names,
    clear_cookie_headers,
    set_cookie_headers,
    strip_cookies,
)
from ..sessions.session import DEFAULT_PROVIDER, Session, claims_in_use, kept_claims, size_report
from .csrf import CSRFProtection

__all__ = ["CookieRules", "session_cookie_spec", "state_cookie_spec"]

log = Logger()


def _same_site(wanted: str, secure: bool) -> str:
    """C{SameSite=None} needs C{Secure}: without it, Lax."""
    return wanted if (wanted != "None" or secure) else "Lax"


def session_cookie_spec(config: Config, provider: str = DEFAULT_PROVIDER) -> CookieSpec:
    """
    The session cookie of C{config} for the sessions of C{provider}:
    HttpOnly, Secure with an https public_url; C{cookie_name} for the
    default provider's, C{cookie_name-NAME} for a named one's (the same
    attributes).
    """
    s, secure = config.session, config.cookie_secure
    return CookieSpec(name=provider_cookie_name(s.cookie_name, provider), path=s.cookie_path,
                      domain=s.cookie_domain,
                      secure=secure, http_only=True, same_site=_same_site(s.same_site, secure),
                      max_chunks=s.max_cookie_chunks)


def state_cookie_spec(config: Config) -> CookieSpec:
    """The login state cookies of C{config}."""
    state = config.state_cookie
    secure = state.secure if state.secure is not None else config.cookie_secure
    return CookieSpec(name=state.name, path=state.path, domain=state.domain, secure=secure,
                      http_only=state.http_only, same_site=_same_site(state.same_site, secure))


def csrf_protection(config: Config, session_cookie: CookieSpec) -> Optional[CSRFProtection]:
    """The CSRF tokens of C{config.csrf}: a cookie beside the session cookie, not HttpOnly."""
    c, s = config.csrf, config.session
    if c is None or not s.secrets:
        return None
    secure = c.secure if c.secure is not None else config.cookie_secure
    cookie = CookieSpec(
        name=c.cookie_name, path=s.cookie_path, domain=s.cookie_domain, secure=secure,
        http_only=False, same_site=_same_site(session_cookie.same_site, secure))
    return CSRFProtection([x.reveal().encode("utf-8") for x in s.secrets], cookie, c.header_name)


class _OwnCookies:
    """Names of the proxy's cookies, for L{strip_cookies}."""

    def __init__(self, names: Sequence[bytes], login: Optional[LoginFlow]) -> None:
        self._names = frozenset(names)
        self._login = login

    def __contains__(self, name: object) -> bool:
        if name in self._names:
            return True
        return self._login is not None and name in self._login.names


class CookieRules:
    """
    The proxy's cookies for one configuration (see L{reconfigure}).

    @param login: the login flow whose state cookies are the proxy's too.
    @param max_cookie_bytes: the largest session cookie (all chunks) handed out.
    """

    def __init__(self, config: Config, login: Optional[LoginFlow], max_cookie_bytes: int) -> None:
        self.session = session_cookie_spec(config)
        self.sessions: Dict[str, CookieSpec] = {DEFAULT_PROVIDER: self.session}
        """Each provider's session cookie, by provider name (the default's is L{session})."""
        for name, _ in config.providers:
            self.sessions[name] = session_cookie_spec(config, name)
        self.login = login
        self.max_cookie_bytes = max_cookie_bytes
        self.config = config
        self.csrf = csrf_protection(config, self.session)
        self._own = self._own_cookies()
        self._claim_names = claims_in_use(config)
        self._owned: Optional[OwnedNames] = None
        self._owned_logged: Set[str] = set()
        """Routes whose answer tried to set one of them (logged once each)."""

    def reconfigure(self, config: Config) -> None:
        """Take a reloaded configuration's C{[csrf]} (the session cookies stay as built)."""
        if config.csrf != self.config.csrf:
            self.csrf = csrf_protection(config, self.session)
            self._own = self._own_cookies()
        self.config = config
        self._claim_names = claims_in_use(config)
        self._owned = None
        self._owned_logged.clear()

    # -- the request ------------------------------------------------------------

    def _own_cookies(self) -> _OwnCookies:
        names = [spec.wire_name.encode("ascii") for spec in self.sessions.values()]
        if self.csrf is not None:
            names.append(self.csrf.cookie.wire_name.encode("ascii"))
        return _OwnCookies(names, self.login)

    def strip_own(self, request: Request) -> None:
        """Remove the proxy's cookies from C{request}'s C{Cookie} header."""
        values = request.requestHeaders.getRawHeaders(b"cookie")
        if not values:
            return
        kept = strip_cookies(values, self._own)
        if kept:
            request.requestHeaders.setRawHeaders(b"cookie", kept)
        else:
            request.requestHeaders.removeHeader(b"cookie")

    # -- the wrapped resource's answer -------------------------------------------

    def owned(self) -> OwnedNames:
        """The names of the session cookies (and chunks), the state cookies and the CSRF cookie."""
        if self._owned is None:
            names = [spec.name for spec in self.sessions.values()]
            if self.csrf is not None:
                names.append(self.csrf.cookie.name)
            prefixes = [self.config.state_cookie.name] if self.login is not None else []
            self._owned = OwnedNames(names, prefixes)
        return self._owned

    def refuse_owned(self, ctx: RequestContext, route: RouteConfig) -> None:
        """
        From here on the wrapped resource answers: none of its C{Set-Cookie}
        may set one of the proxy's cookies (an upstream replacing the
        session cookie would log the browser in as someone else, or pin a
        session on it). Each is dropped; the first of each route is logged.
        """
        owned = self.owned()
        logged = self._owned_logged

        def keep(value: bytes) -> bool:
            name = owned.claimed(value)
            if name is None:
                return True
            if route.name not in logged:
                logged.add(route.name)
                shown = "".join(chr(c) if 0x21 <= c < 0x7F else "?" for c in name[:64])
                log.warn("{route} answered a Set-Cookie for the proxy's own cookie {name}: "
                         "dropped (this and any later ones of this route; logged once)",
                         route=route.name, name=shown)
            return False

        ctx.keep_cookie = keep

    # -- the session cookie ---------------------------------------------------------

    def present(self, request: Request, provider: str = DEFAULT_PROVIDER) -> List[str]:
        """The names of the chunks of C{provider}'s session cookie C{request} carries."""
        return chunk_names(self.sessions[provider], request.received_cookies)

    def held(self, request: Request) -> List[str]:
        """The providers whose session cookie C{request} carries, the default's first."""
        cookies = request.received_cookies
        return [name for name, spec in self.sessions.items() if chunk_names(spec, cookies)]

    def clear_session(self, request: Request, provider: str = DEFAULT_PROVIDER) -> List[bytes]:
        """
        The Set-Cookie values that delete the chunks of C{provider}'s session
        cookie C{request} carries.
        """
        present = self.present(request, provider)
        return clear_cookie_headers(self.sessions[provider], present) if present else []

    def session_headers(self, request: Request, session: Session, value: str,
                        now: float) -> List[bytes]:
        """
        The Set-Cookie values of a session's cookie, its provider's
        (replacing the chunks the request carried).

        @raise CookieTooLarge: the value needs more than max_cookie_chunks
            cookies, or more than max_cookie_bytes in all.
        """
        if len(value) > self.max_cookie_bytes:
            raise CookieTooLarge(f"{len(value)} bytes; at most {self.max_cookie_bytes}")
        provider = session.provider
        return set_cookie_headers(self.sessions[provider], value, int(session.expires - now),
                                  self.present(request, provider))

    def too_large(self, session: Session, value: str, what: str) -> None:
        """
        Log why a session does not fit in the session cookie: its size and
        the limit, what in it is large, and what would make it fit.
        """
        s = self.config.session
        limit = min(s.max_cookie_chunks * CHUNK_SIZE, self.max_cookie_bytes)
        with_tokens = s.store_tokens
        report, largest = size_report(session, with_tokens)
        fixes = ['session.store = "redis" (the cookie then holds only a session id)']
        if s.claims == "all":
            kept = kept_claims(session.claims, self._claim_names)
            fixes.append(
                f'session.claims = "used" (the claims would take '
                f'{len(json.dumps(kept, separators=(",", ":"))):,} bytes: only those the '
                "[headers], the routes' rules and allow-lists and username_claim read)")
        if with_tokens and session.id_token:
            fixes.append("session.store_tokens = false (the tokens stay out of the cookie: "
                         f"the ID token alone is {len(session.id_token):,} bytes; no token "
                         "forwarding, refresh or id_token_hint then)")
        if s.max_cookie_chunks * CHUNK_SIZE <= self.max_cookie_bytes:
            fixes.append(f"raise session.max_cookie_chunks (now {s.max_cookie_chunks}, of "
                         f"{CHUNK_SIZE} bytes each; at most 20) as far as the browsers', load "
                         "balancers' and upstream's limits on the Cookie header allow")
        else:
            fixes.append("pass a larger max_cookie_bytes to the guard, with a Site that accepts "
                         "request headers that large")
        log.warn(
            "{what}: the session of {sub} does not fit in the session cookie: {size:,} bytes "
            "sealed, at most {limit:,}; the largest part: {largest}; it holds {report}. "
            "What helps: {fixes}",
            what=what, sub=session.sub, size=len(value), limit=limit,
            largest=largest[0].replace("_", " ") if largest else "-", report=report,
            fixes="; or ".join(fixes))


