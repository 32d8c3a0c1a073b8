"""
The demo's application behind the proxy: it shows what it received.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from html import escape
from typing import Any, Dict, List, Optional, Sequence, Tuple

from twisted.web.resource import Resource

from ...core.encoding import b64url_decode_lenient
from .pages import page, send, send_json


def token_lifetime(token: str) -> Optional[str]:
    """
    How long the JWT C{token} is valid, from its own C{iat} and C{exp}
    claims (the signature is not checked: the page only shows it), as
    C{"valid for 5 minutes, until 07:50:00 UTC"}; None when it has not both.
    """
    try:
        claims = json.loads(b64url_decode_lenient(token.split(".")[1]))
    except (IndexError, ValueError, TypeError, RecursionError):
        return None
    if not isinstance(claims, dict):
        return None
    iat, exp = claims.get("iat"), claims.get("exp")
    if not isinstance(iat, int) or not isinstance(exp, int) or isinstance(iat, bool) or \
            isinstance(exp, bool) or exp < iat:
        return None
    try:
        until = datetime.fromtimestamp(exp, timezone.utc).strftime("%H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return None
    return f"valid for {_duration(exp - iat)}, until {until}"


def _duration(seconds: int) -> str:
    for unit, size in (("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'' if count == 1 else 's'}"
    return f"{seconds} second{'' if seconds == 1 else 's'}"


class EchoUpstream(Resource):
    """
    The demo's application: answers every request with what it received, the
    method, path and every header, the identity headers (C{identity_headers})
    highlighted; HTML, or JSON for C{Accept: application/json}.
    """

    isLeaf = True

    def __init__(self, identity_headers: Sequence[str], public_url: str = "",
                 endpoints_prefix: str = "/oidc") -> None:
        super().__init__()
        self._identity = {name.lower() for name in identity_headers}
        self._public_url = public_url
        self._prefix = endpoints_prefix

    def render(self, request: Any) -> bytes:
        headers = [(name.decode("latin-1"), value.decode("latin-1"))
                   for name, values in request.requestHeaders.getAllRawHeaders()
                   for value in values]
        identity = {name: value for name, value in headers if name.lower() in self._identity}
        path = request.path.decode("latin-1")
        method = request.method.decode("latin-1")
        accept = b",".join(request.requestHeaders.getRawHeaders(b"accept", [])).lower()
        if b"application/json" in accept and b"text/html" not in accept:
            return send_json(request, 200, {"method": method, "path": path,
                                            "headers": [list(h) for h in headers],
                                            "identity": identity})
        return send(request, 200, b"text/html; charset=utf-8",
                    self._html(method, path, headers, identity))

    def _html(self, method: str, path: str, headers: List[Tuple[str, str]],
              identity: Dict[str, str]) -> bytes:
        rows = "".join(
            f'<tr{" class=identity" if name.lower() in self._identity else ""}>'
            f"<td>{escape(name)}</td><td>{escape(value)}</td></tr>" for name, value in headers)
        user = identity.get("X-Forwarded-User")
        who = (f"<p>The proxy says this is <b>{escape(user)}</b>: the highlighted headers "
               "below come from the ID token (or the access token on /api/).</p>") if user else \
            "<p>No identity headers: this route is public (or the request was not logged in).</p>"
        p = escape(self._prefix)
        links = (
            '<p><a href="/">/ (login)</a> · <a href="/public/">/public/ (no login)</a> · '
            '<a href="/admin/">/admin/ (admins only)</a> · '
            f'<a href="{p}/userinfo">{p}/userinfo (the session)</a> · '
            f'<a href="{p}/logout?rd=/public/">{p}/logout</a></p>')
        token = identity.get("X-Forwarded-Access-Token")
        api = ""
        if token:
            lifetime = token_lifetime(token)
            expiry = (f"<p>This token is {escape(lifetime)} (its <code>iat</code> and "
                      "<code>exp</code> claims): after that <code>/api/</code> refuses it; "
                      "reload this page for a fresh one (the proxy refreshes the session's "
                      "tokens).</p>") if lifetime else ""
            api = ("<h2>Try the API route</h2><p><code>/api/</code> takes bearer tokens only. "
                   "With the access token the proxy forwarded:</p>"
                   f"<pre>curl -H 'Authorization: Bearer {escape(token)}' "
                   f"{escape(self._public_url)}/api/</pre>{expiry}")
        body = (
            f"<p><b>{escape(method)} {escape(path)}</b> reached the application.</p>{who}{links}"
            f"<h2>Request headers received</h2><table><tr><th>header</th><th>value</th></tr>"
            f"{rows}</table>{api}")
        return page("Echo application", body,
                    banner="oidcproxy demo \N{EM DASH} development identity provider, "
                    "not for production.")
