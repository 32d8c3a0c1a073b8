"""
Error answers: a small HTML page for browsers, JSON for API clients.

Nothing user-supplied is reflected unescaped and no traceback ever reaches the
client: callers pass a fixed error code and a fixed, human message. A guard
puts its own pages (L{oidcproxy.web.pages.Pages}: the configured look and
language) into the request's context; this module's plain page is for
answers given before or without a guard.
"""

from __future__ import annotations

import json
from base64 import b64encode
from hashlib import sha256
from html import escape
from typing import Dict, Optional

from twisted.web.iweb import IRequest

from .context import peek

_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Content Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}

_STYLE = "body { font-family: system-ui, sans-serif; max-width: 40em; margin: 4em auto; padding: 0 1em }"

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{code} {title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{style}</style></head>
<body><h1>{code} {title}</h1><p>{message}</p></body></html>
"""


def style_hash(css: str) -> str:
    """The CSP source (C{'sha256-...'}) that lets the inline stylesheet C{css} apply."""
    return "'sha256-" + b64encode(sha256(css.encode("utf-8")).digest()).decode("ascii") + "'"


def page_headers(csp: str) -> Dict[bytes, bytes]:
    """The headers of every HTML page the proxy shows itself, with its C{Content-Security-Policy}."""
    return {
        b"content-security-policy": csp.encode("ascii"),
        b"x-frame-options": b"DENY",
        b"referrer-policy": b"same-origin",
    }


PLAIN_PAGE_HEADERS = page_headers(
    f"default-src 'none'; style-src {style_hash(_STYLE)}; form-action 'none'; "
    "frame-ancestors 'none'; base-uri 'none'")
"""The headers of this module's own plain page: it needs nothing but its stylesheet."""


def wants_json(request: IRequest) -> bool:
    """
    True when the client prefers JSON to HTML: an C{Accept} header that names
    JSON, or names something without naming HTML (API clients, XHR).
    """
    accept = b",".join(request.requestHeaders.getRawHeaders(b"accept", [])).lower()
    if not accept:
        return False
    if b"json" in accept:
        return b"text/html" not in accept or accept.find(b"json") < accept.find(b"text/html")
    return b"text/html" not in accept and b"*/*" not in accept


def error_body(code: int, error: str, message: str, as_json: bool) -> tuple:
    """
    Return C{(content_type, body)} of an error answer.

    @param error: a short machine-readable code, like C{"bad_gateway"}.
    @param message: a fixed human-readable sentence (escaped for HTML here).
    """
    title = _TITLES.get(code, "Error")
    if as_json:
        body = json.dumps({"error": error, "message": message}).encode("utf-8")
        return b"application/json", body
    page = _PAGE.format(code=code, title=escape(title), message=escape(message), style=_STYLE)
    return b"text/html; charset=utf-8", page.encode("utf-8")


def render_error(
    request: IRequest,
    code: int,
    error: str,
    message: str,
    headers: Optional[dict] = None,
    as_json: Optional[bool] = None,
) -> bytes:
    """
    Set the status and headers of C{request} for an error and return the body,
    ready to be returned from C{render} or written. HEAD gets no body.

    @param as_json: force JSON (True) or HTML (False); by default the
        client's C{Accept} decides.
    """
    if as_json is None:
        as_json = wants_json(request)
    ctx = peek(request)
    pages = ctx.pages if ctx is not None else None
    if pages is not None and not as_json:
        return pages.error(request, code, error, message, headers)
    content_type, body = error_body(code, error, message, as_json)
    extra = {} if as_json else dict(PLAIN_PAGE_HEADERS)
    extra.update(headers or {})
    return answer(request, code, content_type, body, extra)


def answer(request: IRequest, code: int, content_type: bytes, body: bytes,
           headers: Optional[Dict[bytes, bytes]] = None) -> bytes:
    """
    Set the status and headers of one of the proxy's own answers (never
    cached, no version banner) and return its body, or nothing for HEAD.
    """
    request.setResponseCode(code)
    request.responseHeaders.setRawHeaders(b"content-type", [content_type])
    request.responseHeaders.setRawHeaders(b"cache-control", [b"no-store"])
    request.responseHeaders.setRawHeaders(b"x-content-type-options", [b"nosniff"])
    # Twisted's version banner is not for strangers.
    request.responseHeaders.removeHeader(b"server")
    for name, value in (headers or {}).items():
        request.responseHeaders.setRawHeaders(name, [value])
    request.responseHeaders.setRawHeaders(b"content-length", [str(len(body)).encode("ascii")])
    if request.method == b"HEAD":
        return b""
    return body
