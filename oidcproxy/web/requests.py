"""
What a request asks, as the guard reads it: the method it judges, whether it
is a browser's navigation, its parameters, and where the guard is mounted.
"""

from __future__ import annotations

from typing import Dict, List, Optional
from urllib.parse import quote_from_bytes

from twisted.web.server import Request

from ..config import DEFAULT_PROVIDER_NAME
from ..core.context import peek
from ..core.urls import safe_return_to
from ..proxy.headers import header_tokens
from ..proxy.routes import split_target
from ..sessions.session import DEFAULT_PROVIDER

__all__ = ["arg", "is_browser_navigation", "is_navigation", "is_preflight", "judged_method",
           "mount_path", "peer", "referer_below", "return_to", "target_below_mount"]


def judged_method(request: Request) -> bytes:
    """The method to judge: the original request's in forward-auth mode."""
    ctx = peek(request)
    method = ctx.method if ctx is not None else None
    return method or request.method


def is_browser_navigation(request: Request) -> bool:
    """
    Whether an unauthenticated request should be sent to the login page (a
    top-level browser navigation) rather than get a 401 (API calls, XHR,
    fetches, images, anything but GET/HEAD) — like mod_auth_openidc.
    """
    return judged_method(request) in (b"GET", b"HEAD") and is_navigation(request)


def is_navigation(request: Request) -> bool:
    """
    Whether C{request}, whatever its method, is a browser's top-level
    navigation (a link followed, a form submitted) by its headers: not a
    WebSocket, an XHR or a fetch, and it accepts HTML.
    """
    headers = request.requestHeaders
    if b"websocket" in header_tokens(headers, b"upgrade"):
        # A WebSocket cannot follow a redirect to a login page.
        return False
    xrw = headers.getRawHeaders(b"x-requested-with")
    if xrw and xrw[0].lower() == b"xmlhttprequest":
        return False
    mode = headers.getRawHeaders(b"sec-fetch-mode")
    if mode and mode[0].lower() != b"navigate":
        return False
    accept = b",".join(headers.getRawHeaders(b"accept", [])).lower()
    return b"text/html" in accept


def is_preflight(request: Request) -> bool:
    """A CORS preflight: OPTIONS with Access-Control-Request-Method."""
    return judged_method(request) == b"OPTIONS" and \
        request.requestHeaders.hasHeader(b"access-control-request-method")


def return_to(request: Request) -> str:
    """The request's one C{rd} parameter if it is a safe same-origin path, else C{/}."""
    values = request.args.get(b"rd", [])
    if len(values) != 1:
        return "/"
    try:
        return safe_return_to(values[0].decode("ascii")) or "/"
    except UnicodeDecodeError:
        return "/"


def referer_below(request: Request, base: Optional[str]) -> Optional[str]:
    """
    The page the browser came from (its C{Referer}) as a path below C{base}
    (an origin, or a URL with a path), when it is there and a safe
    return-to (L{safe_return_to}); else None.
    """
    if not base:
        return None
    referer = request.requestHeaders.getRawHeaders(b"referer")
    if not referer:
        return None
    page = referer[0].decode("latin-1")
    if not page.startswith(base + "/"):
        return None
    return safe_return_to(page[len(base):])


def arg(args: Dict[bytes, List[bytes]], key: bytes) -> Optional[str]:
    """The first value of parameter C{key} as text; None when absent or not UTF-8."""
    values = args.get(key)
    if not values:
        return None
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        return None


def provider_arg(value: bytes) -> str:
    """
    A provider named by a C{provider} parameter: C{""} (the default) for
    C{[oidc]}, also when it is called C{oidc} as in a route's C{providers};
    other names as they are (bytes that are not UTF-8 make no provider's).
    """
    name = value.decode("utf-8", "replace")
    return DEFAULT_PROVIDER if name == DEFAULT_PROVIDER_NAME else name


def peer(request: Request) -> Optional[str]:
    """The client's address (None for a peer without one)."""
    return getattr(request.getClientAddress(), "host", None)


def mount_path(request: Request) -> str:
    """
    The path the guard is mounted at (C{""} at the root of a site), as
    traversal left it in C{request.prepath}: the guard's own pages link to
    its endpoints under it.
    """
    return "".join("/" + quote_from_bytes(segment, safe="!$&'()*+,;=:@")
                   for segment in request.prepath or ())


def target_below_mount(request: Request) -> bytes:
    """
    The request target as the guard routes it: below the path it is mounted
    at (the segments traversal put in C{request.prepath}); at the root of a
    site, the target itself.
    """
    depth = len(request.prepath or ())
    if not depth:
        return request.uri
    _, target = split_target(request.uri)
    path, sep, query = target.partition(b"?")
    return b"/" + b"/".join(path.split(b"/")[1 + depth:]) + sep + query
