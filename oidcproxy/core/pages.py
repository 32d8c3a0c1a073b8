"""
Error answers: a small HTML page for browsers, JSON for API clients.

Nothing user-supplied is reflected unescaped and no traceback ever reaches the
client: callers pass a fixed error code and a fixed, human message.
"""

from __future__ import annotations

import json
from html import escape
from typing import Optional

from twisted.web.iweb import IRequest

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

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{code} {title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="font-family: system-ui, sans-serif; max-width: 40em; margin: 4em auto; padding: 0 1em">
<h1>{code} {title}</h1><p>{message}</p></body></html>
"""


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
    page = _PAGE.format(code=code, title=escape(title), message=escape(message))
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
    content_type, body = error_body(code, error, message, as_json)
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
