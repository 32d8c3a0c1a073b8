"""
Forward auth: the authentication server of another proxy (nginx
auth_request, Traefik forwardAuth, Caddy forward_auth, HAProxy). The
original request it describes is judged as if it had come here; the answer
is 2xx with the identity headers to copy, or 401/403 (or, with
C{?redirect=1}, the login redirect itself).
"""

from __future__ import annotations

from typing import Awaitable, Callable, Optional, Sequence, Set, Tuple

from twisted.logger import Logger
from twisted.web.server import Request

from ...core.context import context
from ...proxy.headers import canonical_header, is_trusted, request_host_header
from ...proxy.routes import BadRequestTarget, RouteMatch, request_host, split_target
from ..answers import finish, respond
from ..parts import GuardState
from ..requests import peer

__all__ = ["ForwardAuthEndpoint"]

log = Logger()

RouteRequest = Callable[[Request, RouteMatch, Optional[Sequence[bytes]]], Awaitable[None]]


class ForwardAuthEndpoint:
    """
    The forward-auth endpoint of one guard.

    @param route_request: judges a request for a route as the guard does any
        other (the answer ends in L{allowed} when it may go on).
    """

    def __init__(self, state: GuardState, route_request: RouteRequest) -> None:
        self._state = state
        self._route_request = route_request

    async def render(self, request: Request, authorization: Optional[Sequence[bytes]]) -> None:
        """
        Judge the original request described in X-Forwarded-Method/-Host/-Uri
        (or X-Original-Method/-URI/-URL), with the credentials it carries.
        """
        state = self._state
        headers = request.requestHeaders
        if not is_trusted(peer(request), state.config.trusted_proxies):
            log.warn("forward-auth request from an untrusted peer refused")
            finish(request, 403, "untrusted_peer",
                   "Forward-auth requests must come from trusted_proxies.", as_json=True)
            return

        def described(*names: bytes) -> Tuple[bool, Optional[bytes]]:
            """The one value these headers agree on; (False, None) when they disagree."""
            found: Set[bytes] = set()
            for name in names:
                found.update(headers.getRawHeaders(name, []))
            if len(found) > 1:
                return False, None
            return True, next(iter(found), None)

        ok_method, method = described(b"x-forwarded-method", b"x-original-method")
        # The original URI in origin form (its path and query), and the host
        # it was for: X-Forwarded-Host, or the authority of an absolute URI
        # (X-Original-URL is nginx's $scheme://$host$request_uri). Every
        # spelling given must agree: one authority decides the route.
        targets: Set[bytes] = set()
        hosts: Set[str] = set()
        try:
            for name in (b"x-forwarded-uri", b"x-original-uri", b"x-original-url"):
                for value in headers.getRawHeaders(name, []):
                    if not value and name == b"x-original-url":
                        continue
                    authority, target = split_target(value)
                    if authority is not None:
                        hosts.add(request_host(authority) or "")
                    targets.add(target)
            for value in headers.getRawHeaders(b"x-forwarded-host", []):
                named = request_host(value)
                if named is not None:
                    hosts.add(named)
        except BadRequestTarget as e:
            finish(request, 400, "bad_request", f"Bad original URL: {e.reason}.", as_json=True)
            return
        if not ok_method or len(targets) > 1 or len(hosts) > 1:
            log.warn("forward-auth request refused: conflicting descriptions of the original request")
            finish(request, 400, "bad_request",
                   "The headers describing the original request disagree.", as_json=True)
            return
        if not targets:
            finish(request, 400, "bad_request",
                   "X-Forwarded-Uri (or X-Original-URL) is required.", as_json=True)
            return
        uri = targets.pop()
        host = hosts.pop().encode("ascii") if hosts else request_host_header(request)
        try:
            match = state.routes.match(host, uri)
        except BadRequestTarget as e:
            finish(request, 400, "bad_request", f"Bad original URL: {e.reason}.", as_json=True)
            return
        if match is None:
            finish(request, 403, "no_route", "No route matches the original URL.", as_json=True)
            return
        ctx = context(request)
        ctx.forward_auth = request.args.get(b"redirect", [b""])[0] in (b"1", b"true")
        # Judged as the original method; the answer itself is to this request
        # (a HEAD original must not make our own answer bodiless).
        ctx.method = method or b"GET"
        await self._route_request(request, match, authorization)

    def allowed(self, request: Request) -> None:
        """The original request may go on: 200 with the identity headers to copy."""
        out = request.responseHeaders
        managed = self._state.managed.canonical
        for name, values in request.requestHeaders.getAllRawHeaders():
            if canonical_header(name) in managed:
                out.setRawHeaders(name, values)
        respond(request, 200, b"text/plain; charset=utf-8", b"")
