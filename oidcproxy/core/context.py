"""
One request's state while the proxy handles it, carried by the request as a
component: twisted.web's L{Request} is L{Componentized}, so the parts that
handle a request (the site, the guard, the upstream, the WebSocket splice,
the access log, an embedding application) share one L{RequestContext}
through L{context} / L{peek} instead of attributes set on the request.

The context is filled top to bottom: the site matches the route early (to
bound the body), the guard records its decision, the identity and the
session, and what the answer must carry (cookies, headers, which of the
wrapped resource's own C{Set-Cookie} values are refused); the upstream
records the route it served; the access log reads it all at the end.

This module is in the bottom layer, so the values it holds whose types are
defined above it (a route, an identity, a session) are typed C{Any} here and
documented with their real types.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple

import attr
from zope.interface import Interface

from .assurance import Requirement

__all__ = ["ContextAtHand", "IRequestContext", "RequestContext", "context", "peek"]


class IRequestContext(Interface):
    """The component key under which a request carries its L{RequestContext}."""


@attr.s(auto_attribs=True, slots=True)
class RequestContext:
    """
    @ivar early_match: the L{oidcproxy.proxy.routes.RouteMatch} the site
        found before the body arrived (to apply the route's body limit), or
        None; the guard uses it instead of matching again.
    @ivar match: the L{oidcproxy.proxy.routes.RouteMatch} the guard decided
        on: a reverse proxy behind the guard forwards to it without matching.
    @ivar route: the L{oidcproxy.config.RouteConfig} that served the request
        (for the access log and the metrics).
    @ivar decision: what the guard decided (C{"session"}, C{"bearer"},
        C{"anonymous"}, C{"public"}, ...), or None before it decided.
    @ivar identity: the authenticated L{oidcproxy.Identity}, or None.
    @ivar session: the L{oidcproxy.sessions.Session} the request came with.
    @ivar user: the user name for the access log, or None.
    @ivar provider: the named provider (C{[providers.NAME]}) whose user the
        request is, for the access log; None: C{[oidc]}'s, or nobody's.
    @ivar auth: how the request was authenticated, for the access log.
    @ivar endpoint: the name of the guard's own endpoint that answers (login,
        callback, ...), or None when the wrapped resource answers.
    @ivar cookies: C{Set-Cookie} values the answer carries besides the
        wrapped resource's own.
    @ivar headers: other (name, value) headers the answer carries, replacing
        the wrapped resource's of the same name.
    @ivar keep_cookie: refuses (returns False for) a C{Set-Cookie} value of
        the wrapped resource's answer that must not reach the client (one
        that sets a cookie of the proxy's own), or None: all are kept.
    @ivar answer_applied: whether L{apply_answer} ran.
    @ivar forward_auth: for a forward-auth check, whether a browser without
        a session is sent to log in (C{?redirect=1}); None: not one.
    @ivar method: the method the guard judges when it is not the request's
        own (a forward-auth check judges the original request's), or None.
    @ivar wrapped: the resource the guard hands the request to: the one of
        the route table the request was matched in, even if a reload swaps
        both while the request waits.
    @ivar gone: the client went away before the answer was complete: nothing
        more is written.
    @ivar pages: the L{oidcproxy.web.pages.Pages} of the guard that handles
        the request (its look and language), for every page answered to
        it; None: the plain built-in page.
    @ivar step_up: for a browser's navigation that a session admitted on a
        route with C{step_up = true}, what answers it instead of the
        upstream when the upstream asks for a stronger or more recent
        sign-in (an RFC 9470 challenge): called with the request and the
        L{Requirement} asked. None: the upstream's answer is passed on,
        whatever it is.
    @ivar sign_in: on a route with a step-up requirement, the session's
        sign-in (C{(acr, auth_time)}) that met it, which the identity
        headers tell of; None: the route has none.
    """

    early_match: Any = None
    match: Any = None
    route: Any = None
    decision: Optional[str] = None
    identity: Any = None
    session: Any = None
    user: Optional[str] = None
    provider: Optional[str] = None
    auth: str = "-"
    endpoint: Optional[str] = None
    cookies: List[bytes] = attr.Factory(list)
    headers: List[Tuple[bytes, bytes]] = attr.Factory(list)
    keep_cookie: Optional[Callable[[bytes], bool]] = None
    answer_applied: bool = False
    forward_auth: Optional[bool] = None
    method: Optional[bytes] = None
    wrapped: Any = None
    gone: bool = False
    pages: Any = None
    step_up: Optional[Callable[[Any, Requirement], None]] = None
    sign_in: Optional[Tuple[str, Optional[float]]] = None

    def apply_answer(self, request: Any) -> None:
        """
        Put what the guard adds to the answer into C{request}'s response
        headers, once, just before they are written: the C{Set-Cookie}
        values L{keep_cookie} refuses are dropped (from the header and from
        C{request.cookies}, which Twisted writes as the C{Set-Cookie} header
        in place of the header's own values when it is not empty: both are
        merged into the header), then L{cookies} are added and L{headers} set.
        """
        if self.answer_applied:
            return
        self.answer_applied = True
        if not self.cookies and not self.headers and self.keep_cookie is None:
            return
        out = request.responseHeaders
        if not self.cookies and not self.headers and not request.cookies \
                and not out.hasHeader(b"set-cookie"):
            # Nothing to refuse and nothing to add (most proxied answers).
            return
        sent: List[bytes] = out.getRawHeaders(b"set-cookie", []) + list(request.cookies)
        keep = self.keep_cookie
        if keep is not None:
            # The guard's own values may be there already (handed over in
            # request.cookies): they are not the wrapped resource's to refuse.
            sent = [c for c in sent if c in self.cookies or keep(c)]
        sent.extend(c for c in self.cookies if c not in sent)
        # All in the header: Twisted leaves it alone when request.cookies is empty.
        del request.cookies[:]
        if sent:
            out.setRawHeaders(b"set-cookie", sent)
        else:
            out.removeHeader(b"set-cookie")
        for name, value in self.headers:
            out.setRawHeaders(name, [value])

    def refuses_cookie(self, value: bytes) -> bool:
        """Whether L{keep_cookie} refuses the C{Set-Cookie} value C{value}."""
        keep = self.keep_cookie
        return keep is not None and not keep(value)

    def kept_cookies(self, values: List[bytes]) -> List[bytes]:
        """The C{Set-Cookie} values of C{values} that L{keep_cookie} lets through."""
        return [v for v in values if not self.refuses_cookie(v)]


class ContextAtHand:
    """
    A mixin for a L{Componentized} request (before it in the bases) that
    answers C{getComponent(IRequestContext)} from an attribute of its own:
    the context is asked for some ten times per request, and
    L{Componentized.getComponent} makes the interface's qualified name each
    time. Every other interface, and every change of the components, goes
    to L{Componentized} as before; a change forgets the kept context, but
    for setting the context itself.
    """

    _request_context: Optional[RequestContext] = None

    def getComponent(self, interface: Any, default: Any = None) -> Any:
        if interface is IRequestContext:
            found = self._request_context
            if found is None:
                found = super().getComponent(interface, default)  # type: ignore[misc]
                if isinstance(found, RequestContext):
                    self._request_context = found
            return found
        return super().getComponent(interface, default)  # type: ignore[misc]

    def setComponent(self, interfaceClass: Any, component: Any) -> None:
        super().setComponent(interfaceClass, component)  # type: ignore[misc]
        # The context just set is the one at hand (context() sets it once).
        self._request_context = component if interfaceClass is IRequestContext and \
            isinstance(component, RequestContext) else None

    def unsetComponent(self, interfaceClass: Any) -> None:
        self._request_context = None
        super().unsetComponent(interfaceClass)  # type: ignore[misc]

    def addComponent(self, component: Any, ignoreClass: int = 0) -> None:
        self._request_context = None
        super().addComponent(component, ignoreClass)  # type: ignore[misc]

    def removeComponent(self, component: Any) -> List[Any]:
        self._request_context = None
        removed: List[Any] = super().removeComponent(component)  # type: ignore[misc]
        return removed


def context(request: Any) -> RequestContext:
    """C{request}'s L{RequestContext}, made and set on it the first time."""
    found: Optional[RequestContext] = request.getComponent(IRequestContext)
    if found is None:
        found = RequestContext()
        request.setComponent(IRequestContext, found)
    return found


def peek(request: Any) -> Optional[RequestContext]:
    """C{request}'s L{RequestContext}, or None when nothing has made one."""
    getter = getattr(request, "getComponent", None)
    return None if getter is None else getter(IRequestContext)
