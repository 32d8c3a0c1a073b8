"""
C{/authorize}: the authorization request, checked as a real provider
checks it, and the login form (bound to the browser that asked) that
answers it with a code.
"""

from __future__ import annotations

import re
import secrets
from html import escape
from typing import Any, Dict, List, Optional, Tuple

from twisted.logger import Logger

from .accounts import DemoClient, DemoUser, same
from .pages import BadRequest, page, read_form, read_query, send, with_query
from .records import Code, Ledger, Login

log = Logger(namespace="oidcproxy.tools.demo")

BROWSER_COOKIE = "demo_idp_browser"
"""The provider's cookie binding a login form to the browser that asked for it."""

_PKCE_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")


class Authorization:
    """
    The authorization endpoint: a GET shows the login form (or redirects
    back with an error), a POST of the form redirects back with a code.
    """

    def __init__(self, issuer: str, client: DemoClient, users: Dict[str, DemoUser],
                 ledger: Ledger, origin: bytes) -> None:
        self.issuer = issuer
        self.client = client
        self.users = users
        self.ledger = ledger
        self._origin = origin

    def render(self, request: Any) -> bytes:
        self.ledger.prune()
        if request.method == b"POST":
            return self.login_form_posted(request)
        params = read_query(request)
        if params.get("client_id") != self.client.client_id:
            raise BadRequest("Unknown client_id: this provider knows only the demo proxy.")
        redirect_uri = params.get("redirect_uri", "")
        if redirect_uri not in self.client.redirect_uris:
            raise BadRequest("The redirect_uri is not the one registered for this client.")
        state = params.get("state", "")
        problem = self.authorization_problem(params)
        if problem is not None:
            error, description = problem
            return self.redirect(request, redirect_uri, [
                ("error", error), ("error_description", description), ("state", state)])
        if params.get("prompt") == "none":
            return self.redirect(request, redirect_uri, [
                ("error", "login_required"), ("state", state)])
        browser = request.getCookie(BROWSER_COOKIE.encode("ascii"))
        browser_id = browser.decode("ascii", "replace") if browser else secrets.token_urlsafe(24)
        login = Login(
            id=secrets.token_urlsafe(24), browser=browser_id, redirect_uri=redirect_uri,
            scopes=tuple(params["scope"].split()), state=state, nonce=params["nonce"],
            challenge=params["code_challenge"], created=self.ledger.clock.seconds())
        self.ledger.logins[login.id] = login
        if not browser:
            request.addCookie(BROWSER_COOKIE, browser_id, path="/authorize", httpOnly=True,
                              sameSite="lax")
        return self.login_page(request, login, 200)

    @staticmethod
    def authorization_problem(params: Dict[str, str]) -> Optional[Tuple[str, str]]:
        """The OAuth error of an authorization request whose client is known, or None."""
        if params.get("response_type") != "code":
            return "unsupported_response_type", "only response_type=code is supported"
        if "openid" not in params.get("scope", "").split():
            return "invalid_scope", "the scope must contain openid"
        if not params.get("state"):
            return "invalid_request", "state is required"
        if not params.get("nonce"):
            return "invalid_request", "nonce is required"
        if params.get("code_challenge_method") != "S256" or \
                not _PKCE_CHALLENGE.fullmatch(params.get("code_challenge", "")):
            return "invalid_request", "a PKCE code_challenge with code_challenge_method=S256 is required"
        if params.get("response_mode", "query") != "query":
            return "invalid_request", "only response_mode=query is supported"
        return None

    def redirect(self, request: Any, redirect_uri: str, params: List[Tuple[str, str]],
                 code: int = 302) -> bytes:
        location = with_query(redirect_uri, [*params, ("iss", self.issuer)])
        body = page("Redirecting", f'<p><a href="{escape(location)}">Continue</a></p>')
        return send(request, code, b"text/html; charset=utf-8", body,
                    {b"location": location.encode("ascii")})

    def login_page(self, request: Any, login: Login, status: int, error: str = "") -> bytes:
        users = "".join(
            f"<tr><td>{escape(u.username)}</td><td>{escape(u.password)}</td>"
            f"<td>{escape(u.email)}</td><td>{escape(', '.join(u.groups))}</td></tr>"
            for u in self.users.values())
        shown_error = f'<p class="error" role="alert">{escape(error)}</p>' if error else ""
        body = (
            f"<p>The application <b>{escape(self.client.client_id)}</b> asks who you are "
            f"(scopes: {escape(' '.join(login.scopes))}).</p>{shown_error}"
            '<form method="post" action="/authorize">'
            f'<input type="hidden" name="login" value="{escape(login.id)}">'
            '<p><label>User name<br><input name="username" autocomplete="username" required '
            'autofocus></label></p>'
            '<p><label>Password<br><input name="password" type="password" '
            'autocomplete="current-password" required></label></p>'
            '<button type="submit" name="action" value="login">Log in</button>'
            '<button type="submit" name="action" value="cancel" formnovalidate>Cancel</button>'
            "</form><h2>Demo users</h2>"
            "<table><tr><th>user name</th><th>password</th><th>email</th><th>groups</th></tr>"
            f"{users}</table>")
        return send(request, status, b"text/html; charset=utf-8", page("Log in", body))

    def login_form_posted(self, request: Any) -> bytes:
        origin = request.requestHeaders.getRawHeaders(b"origin")
        site = request.requestHeaders.getRawHeaders(b"sec-fetch-site")
        if (origin is not None and origin[0] != self._origin) or \
                (site is not None and site[0] not in (b"same-origin", b"none")):
            raise BadRequest("Cross-site login forms are refused.", 403)
        form = read_form(request)
        login = self.ledger.logins.get(form.get("login", ""))
        browser = request.getCookie(BROWSER_COOKIE.encode("ascii"))
        if login is None:
            raise BadRequest("This login form has expired or was used already. "
                             "Go back to the application and start again.")
        if browser is None or not same(browser.decode("ascii", "replace"), login.browser):
            raise BadRequest("This login form was not opened in this browser.", 403)
        if form.get("action") == "cancel":
            del self.ledger.logins[login.id]
            return self.redirect(request, login.redirect_uri, [
                ("error", "access_denied"), ("error_description", "the user cancelled the login"),
                ("state", login.state)], code=303)
        user = self.users.get(form.get("username", ""))
        # Compared even for an unknown user, so the time taken tells nothing.
        password_ok = same(form.get("password", ""), user.password if user else secrets.token_hex(8))
        if user is None or not password_ok:
            return self.login_page(request, login, 200, "Wrong user name or password.")
        del self.ledger.logins[login.id]
        code = secrets.token_urlsafe(32)
        now = self.ledger.clock.seconds()
        self.ledger.codes[code] = Code(
            redirect_uri=login.redirect_uri, user=user, scopes=login.scopes, nonce=login.nonce,
            challenge=login.challenge, sid=secrets.token_urlsafe(16), auth_time=int(now),
            created=now)
        log.info("demo identity provider: {user} logged in", user=user.username)
        return self.redirect(request, login.redirect_uri, [("code", code), ("state", login.state)],
                             code=303)
