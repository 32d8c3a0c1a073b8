"""
Logout: GET shows a confirmation form (a link alone cannot log anyone out;
it names the account, and with several providers the provider;
with C{[pages] logout_confirm = false} the form posts itself); a
same-origin POST ends the session (store, revocation list, its
WebSockets), revokes its tokens at the IdP, clears the cookies and sends the
browser to the IdP's logout or the landing page: post_logout_redirect_url,
else the C{rd} the logout was given, else the signed-out page (GET with
C{?signed_out=1}).

A logout ends the session of one provider: C{?provider=NAME} (a form field
of the POST too), else the only one whose session cookie the browser holds,
else the default provider's. Another provider's session lives on.
"""

from __future__ import annotations

from typing import Callable, Optional

from twisted.logger import Logger
from twisted.web.server import Request

from ...oidc.provider import ProviderError
from ...sessions.session import Session, SessionStoreUnavailable
from ..answers import finish, redirect, show, store_unavailable
from ..identity import user_name
from ..parts import GuardState
from ..requests import return_to
from ..session_auth import SessionAuth

__all__ = ["LogoutEndpoint", "same_origin"]

log = Logger()


def same_origin(request: Request, public_origin: bytes) -> bool:
    """
    CSRF check for state-changing endpoints: a browser's cross-site POST
    carries an C{Origin} (and C{Sec-Fetch-Site}) that gives it away.
    """
    headers = request.requestHeaders
    origin = headers.getRawHeaders(b"origin")
    if origin is not None and origin[0] != public_origin:
        return False
    site = headers.getRawHeaders(b"sec-fetch-site")
    return not (site is not None and site[0] not in (b"same-origin", b"none"))


class LogoutEndpoint:
    """
    The logout endpoint of one guard.

    @param close_sockets: closes the WebSockets of the sessions a logout
        ends (by C{session_id}, C{sid} or C{sub}).
    """

    def __init__(self, state: GuardState, sessions: SessionAuth,
                 close_sockets: Callable[..., None]) -> None:
        self._state = state
        self._sessions = sessions
        self._close_sockets = close_sockets

    async def render(self, request: Request) -> None:
        state = self._state
        given = b"rd" in request.args
        target = return_to(request)
        if request.method in (b"GET", b"HEAD"):
            if b"signed_out" in request.args:
                show(request, state.pages.signed_out)
                return
            await self._page(request, target if given else None)
            return
        if request.method != b"POST":
            finish(request, 405, "method_not_allowed", "Log out with POST.",
                   {b"allow": b"GET, HEAD, POST"})
            return
        if not same_origin(request, state.public_origin):
            log.info("logout refused: cross-site request")
            finish(request, 403, "cross_site", "Cross-site logout requests are refused.")
            return
        provider = self._provider(request)
        if provider is None:
            return
        loaded = await self._sessions.load_or_503(request, provider)
        if loaded is None:
            return
        session, _ = loaded
        location = self._landing(target if given else None, provider)
        if session is not None:
            try:
                await self._sessions.end(session)
            except SessionStoreUnavailable as e:
                # Nothing is ended and the cookie is kept: the user can log
                # out again, rather than believe a copy of the cookie dead.
                store_unavailable(
                    request, e, "You are not logged out yet: sessions are temporarily "
                                "unavailable. Please try again shortly.")
                return
            log.info("logout of {sub}", sub=session.sub)
            self._close_sockets(session_id=session.id)
            await self._revoke(session)
            idp_logout = self._end_session_url(session, location)
            if idp_logout is not None:
                location = idp_logout
        cookies = state.cookies.clear_session(request, provider)
        csrf = state.cookies.csrf
        if csrf is not None:
            cookies += csrf.clear_headers(request.received_cookies)
        redirect(request, location, cookies, code=303)

    def _provider(self, request: Request) -> Optional[str]:
        """
        The provider whose session the logout ends (see
        L{SessionAuth.chosen}); None once an unknown one is answered (404).
        """
        provider = self._sessions.chosen(request)
        if provider is None:
            finish(request, 404, "unknown_provider", "There is no such provider here.")
        return provider

    def _landing(self, rd: Optional[str], provider: str) -> str:
        """
        The post_logout_redirect_url of the C{provider} whose session ends
        when configured (a path on public_url, or a URL), else rd, else the
        signed-out page.
        """
        state = self._state
        oidc = state.config.provider_config(provider)
        fixed = oidc.post_logout_redirect_url if oidc is not None else None
        return state.absolute(fixed or rd or state.config.logout_path + "?signed_out=1")

    async def _revoke(self, session: Session) -> None:
        """RFC 7009: revoke the session's tokens at its IdP, when it can and we should."""
        bundle = self._state.bundle(session.provider)
        provider = bundle.provider if bundle is not None else None
        if provider is None or provider.metadata is None or \
                not provider.metadata.revocation_endpoint or \
                not self._state.config.session.revoke_on_logout:
            return
        for token, hint in ((session.refresh_token, "refresh_token"),
                            (session.access_token, "access_token")):
            if not token:
                continue
            try:
                await provider.revoke(token, hint)
            except ProviderError as e:
                log.warn("could not revoke the {hint} at logout: {reason}: {detail}",
                         hint=hint, reason=e.reason, detail=e.detail)

    def _end_session_url(self, session: Session, local: str) -> Optional[str]:
        """
        The RP-initiated logout URL of the session's IdP, coming back to
        C{local}; None when off or unknown.
        """
        bundle = self._state.bundle(session.provider)
        if bundle is None or not bundle.oidc.end_session:
            return None
        return bundle.provider.end_session_url(session.id_token, local)

    async def _page(self, request: Request, target: Optional[str]) -> None:
        """The sign-out page (naming the account) with its form posting to this endpoint."""
        user = None
        provider = self._provider(request)
        if provider is None:
            return
        loaded = await self._sessions.load_or_503(request, provider)
        if loaded is None:
            return
        session, _ = loaded
        if session is not None:
            user = user_name(self._state.config.username_claim, session.claims, session.sub)
        pages = self._state.pages
        several = len(self._state.cookies.sessions) > 1
        show(request, lambda r: pages.logout(r, user, target, provider, several))
