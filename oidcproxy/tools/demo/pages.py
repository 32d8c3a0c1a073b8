"""
The provider's HTTP plumbing: its pages (with the red banner), answers with
security headers, query and form parameters read strictly, and the leaf
resource of each endpoint.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any, Callable, Dict, Optional, Sequence, Tuple
from urllib.parse import parse_qsl, urlencode

from twisted.web.resource import Resource

BANNER = "Development identity provider \N{EM DASH} not for production."

_FORM = b"application/x-www-form-urlencoded"

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:52em;margin:0 auto;padding:0 1em 2em}"
    ".banner{background:#b00020;color:#fff;font-weight:bold;padding:.6em 1em;margin:0 -1em 1em}"
    "table{border-collapse:collapse;width:100%}td,th{border:1px solid #ccc;padding:.3em .5em;"
    "text-align:left;vertical-align:top;word-break:break-all}"
    "td:first-child,th:first-child{white-space:nowrap;word-break:normal;width:1%}"
    "tr.identity td{background:#fff3b0;font-weight:bold}.error{color:#b00020;font-weight:bold}"
    "input{font:inherit;margin:.2em 0}button{font:inherit;margin:.5em .5em 0 0}"
    "pre{white-space:pre-wrap;word-break:break-all;background:#f4f4f4;padding:.5em}"
)
_SECURITY_HEADERS = {
    b"cache-control": b"no-store",
    b"x-content-type-options": b"nosniff",
    b"x-frame-options": b"DENY",
    # Not no-referrer: Chrome then sends "Origin: null" with the login form.
    b"referrer-policy": b"same-origin",
}
_HTML_HEADERS = {
    **_SECURITY_HEADERS,
    b"content-security-policy":
        b"default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; frame-ancestors 'none'",
}


class BadRequest(Exception):
    """A request the provider answers with an error page (never a redirect)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def page(title: str, body: str, banner: str = BANNER) -> bytes:
    """An HTML page with the red banner; C{body} is HTML, already escaped."""
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<style>{_STYLE}</style></head><body>"
        f'<div class="banner" role="alert">{escape(banner)}</div>'
        f"<h1>{escape(title)}</h1>{body}</body></html>"
    ).encode()


def send(request: Any, code: int, content_type: bytes, body: bytes,
         headers: Optional[Dict[bytes, bytes]] = None) -> bytes:
    request.setResponseCode(code)
    out = request.responseHeaders
    out.removeHeader(b"server")
    out.setRawHeaders(b"content-type", [content_type])
    for name, value in {**(_HTML_HEADERS if content_type.startswith(b"text/html")
                           else _SECURITY_HEADERS), **(headers or {})}.items():
        out.setRawHeaders(name, [value])
    out.setRawHeaders(b"content-length", [str(len(body)).encode("ascii")])
    return b"" if request.method == b"HEAD" else body


def send_json(request: Any, code: int, document: Any,
              headers: Optional[Dict[bytes, bytes]] = None) -> bytes:
    return send(request, code, b"application/json",
                json.dumps(document, indent=1).encode("utf-8"), headers)


def _params(pairs: Sequence[Tuple[str, str]]) -> Dict[str, str]:
    """Parameters that each appear at most once (RFC 6749, 3.1)."""
    seen: Dict[str, str] = {}
    for name, value in pairs:
        if name in seen:
            raise BadRequest(f"The parameter {name} is repeated.")
        seen[name] = value
    return seen


def read_query(request: Any) -> Dict[str, str]:
    try:
        query = request.uri.split(b"?", 1)[1].decode("utf-8") if b"?" in request.uri else ""
        return _params(parse_qsl(query, keep_blank_values=True, errors="strict"))
    except UnicodeDecodeError:
        raise BadRequest("The query is not valid UTF-8.") from None


def read_form(request: Any) -> Dict[str, str]:
    """The form-encoded body of a POST (never the query string)."""
    content_type = (request.requestHeaders.getRawHeaders(b"content-type") or [b""])[0]
    if content_type.split(b";")[0].strip().lower() != _FORM:
        raise BadRequest("The body must be application/x-www-form-urlencoded.")
    request.content.seek(0)
    try:
        return _params(parse_qsl(request.content.read().decode("utf-8"), keep_blank_values=True,
                                 errors="strict"))
    except UnicodeDecodeError:
        raise BadRequest("The body is not valid UTF-8.") from None


def with_query(url: str, params: Sequence[Tuple[str, str]]) -> str:
    return url + ("&" if "?" in url else "?") + urlencode(params)


class Endpoint(Resource):
    """One endpoint of the provider: a leaf that calls C{handler} for its methods."""

    isLeaf = True

    def __init__(self, handler: Callable[[Any], bytes], methods: Sequence[bytes]) -> None:
        super().__init__()
        self._handler = handler
        self._methods = tuple(methods)

    def render(self, request: Any) -> bytes:
        if request.postpath not in ([], [b""]):
            return send(request, 404, b"text/html; charset=utf-8",
                        page("Not found", "<p>No such page.</p>"))
        if request.method not in self._methods and not (
                request.method == b"HEAD" and b"GET" in self._methods):
            allow = b", ".join(self._methods)
            return send(request, 405, b"text/html; charset=utf-8",
                        page("Method not allowed", "<p>Not with this method.</p>"),
                        {b"allow": allow})
        try:
            return self._handler(request)
        except BadRequest as e:
            return send(request, e.status, b"text/html; charset=utf-8",
                        page("Bad request", f'<p class="error">{escape(e.message)}</p>'))


class _NotFound(Resource):
    isLeaf = True

    def render(self, request: Any) -> bytes:
        return send(request, 404, b"text/html; charset=utf-8",
                    page("Not found", "<p>No such page.</p>"))


class Root(Resource):
    """The provider's root: unknown paths get the provider's own 404 page."""

    def getChild(self, path: bytes, request: Any) -> Resource:
        return _NotFound()
