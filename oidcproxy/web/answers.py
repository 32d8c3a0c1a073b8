"""
The answers the guard gives itself (its endpoints' documents, redirects,
error pages, 401/403/503), never cached and never written to a client that
has gone away; and the decision it records for the access log.
"""

from __future__ import annotations

from html import escape
from typing import Callable, Dict, Optional, Sequence

from twisted.logger import Logger
from twisted.web.server import Request

from ..core.context import RequestContext, context, peek
from ..core.pages import render_error

__all__ = ["abort", "add_cookies", "client_gone", "decided", "deny", "finish", "hand_over",
           "insufficient", "redirect", "respond", "show", "store_unavailable"]

log = Logger()

STORE_UNAVAILABLE = "Sessions are temporarily unavailable. Please try again shortly."


def client_gone(request: Request) -> bool:
    """Whether C{request} is answered already or its client went away (nothing more is written)."""
    if request.finished:
        return True
    ctx = peek(request)
    return ctx is not None and ctx.gone


def abort(request: Request) -> None:
    """
    Part of an answer is out: cut the connection rather than let the
    client wait forever or take a truncated body for whole.
    """
    transport = getattr(request, "transport", None)
    if transport is not None and hasattr(transport, "abortConnection"):
        transport.abortConnection()
    else:
        request.loseConnection()


def add_cookies(request: Request, cookies: Sequence[bytes]) -> None:
    """Add C{cookies} to the answer's C{Set-Cookie} header."""
    if cookies:
        existing = request.responseHeaders.getRawHeaders(b"set-cookie", [])
        request.responseHeaders.setRawHeaders(b"set-cookie", [*existing, *cookies])


def _apply_context(request: Request) -> None:
    """What the guard added to the request's context goes with its own answers too."""
    ctx = peek(request)
    if ctx is not None:
        ctx.apply_answer(request)


def respond(request: Request, code: int, content_type: bytes, body: bytes,
            headers: Optional[Dict[bytes, bytes]] = None, cookies: Sequence[bytes] = ()) -> None:
    """Answer a request the guard handles itself: never cached, no body for HEAD."""
    if client_gone(request):
        return
    request.setResponseCode(code)
    out = request.responseHeaders
    out.removeHeader(b"server")
    out.setRawHeaders(b"content-type", [content_type])
    out.setRawHeaders(b"cache-control", [b"no-store"])
    out.setRawHeaders(b"content-length", [str(len(body)).encode("ascii")])
    for name, value in (headers or {}).items():
        out.setRawHeaders(name, [value])
    add_cookies(request, cookies)
    _apply_context(request)
    if request.method != b"HEAD":
        request.write(body)
    request.finish()


def redirect(request: Request, location: str, cookies: Sequence[bytes] = (),
             code: int = 302) -> None:
    """Send the client to C{location} (with a link for those that do not follow)."""
    body = b'<!DOCTYPE html><a href="' + escape(location).encode("ascii") + b'">Continue</a>'
    respond(request, code, b"text/html; charset=utf-8", body,
            {b"location": location.encode("ascii")}, cookies)


def finish(request: Request, code: int, error: str, message: str,
           headers: Optional[Dict[bytes, bytes]] = None, cookies: Sequence[bytes] = (),
           as_json: Optional[bool] = None) -> None:
    """An error answer: a page for browsers, JSON for API clients (or as C{as_json} says)."""
    if client_gone(request):
        return
    body = render_error(request, code, error, message, headers, as_json)
    add_cookies(request, cookies)
    _apply_context(request)
    request.write(body)
    request.finish()


def show(request: Request, page: Callable[[Request], bytes], cookies: Sequence[bytes] = ()) -> None:
    """
    Answer with one of the guard's pages: C{page} sets the status and
    headers and returns the body (see L{oidcproxy.web.pages.Pages}).
    """
    if client_gone(request):
        return
    body = page(request)
    add_cookies(request, cookies)
    _apply_context(request)
    request.write(body)
    request.finish()


def store_unavailable(request: Request, error: BaseException, message: str = STORE_UNAVAILABLE,
                      cookies: Sequence[bytes] = (), as_json: Optional[bool] = None) -> None:
    """
    The session store (or the revocation list) could not answer: one
    warning line (no traceback) and 503 with C{Retry-After} (JSON for API
    clients, a page for browsers); the session and its cookie are left
    alone.
    """
    log.warn("session store unavailable: {error}", error=str(error) or type(error).__name__)
    if client_gone(request):
        return
    if request.startedWriting:
        abort(request)
        return
    finish(request, 503, "session_store_unavailable", message, {b"retry-after": b"5"}, cookies,
           as_json)


def decided(request: Request, decision: str, unless_decided: bool = False) -> None:
    """
    What the guard decided, for the access log's C{auth} field (an audit-mode
    "would deny" is kept over the credential that let the request through).
    """
    ctx = context(request)
    if unless_decided and ctx.decision is not None:
        return
    ctx.decision = ctx.auth = decision


def deny(request: Request, cookies: Sequence[bytes] = (),
         challenge: bytes = b'Bearer realm="oidcproxy"') -> None:
    """401 for a client that is not a browser navigation: always JSON."""
    decided(request, "unauthenticated")
    finish(request, 401, "unauthenticated", "Authentication is required.",
           {b"www-authenticate": challenge}, cookies, as_json=True)


def insufficient(request: Request, challenge: bytes, cookies: Sequence[bytes] = ()) -> None:
    """
    401 for a client whose sign-in is not what the route asks (not a
    browser navigation, or a bearer token): RFC 9470's error and
    C{challenge} (L{oidcproxy.core.assurance.challenge}); always JSON.
    """
    decided(request, "step_up")
    finish(request, 401, "insufficient_user_authentication",
           "A stronger or more recent sign-in is required.",
           {b"www-authenticate": challenge}, cookies, as_json=True)


def hand_over(request: Request, ctx: RequestContext) -> None:
    """
    For a request of another class than L{oidcproxy.web.server.ProxyRequest} (the guard embedded
    in someone else's C{Site}), which does not apply the context to its
    answer: the guard's cookies go into C{request.cookies} now, beside any
    the application adds with C{addCookie} (Twisted writes that list as
    the C{Set-Cookie} header, in place of the header's own values, so an
    application that sets the header itself cannot drop the guard's
    cookies; its header values give way to the list when there is one), and
    the guard's headers into the response headers. An embedded in-process
    application is trusted with its own C{Set-Cookie}: it is not filtered.
    A wrapped resource that applies the context itself before it writes
    (L{RequestContext.apply_answer}) still can: the values handed over are
    merged, not doubled.
    """
    request.cookies.extend(ctx.cookies)
    for name, value in ctx.headers:
        request.responseHeaders.setRawHeaders(name, [value])
