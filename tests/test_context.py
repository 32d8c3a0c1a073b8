"""The per-request context: one component on the request, applied once to the answer."""

from __future__ import annotations

from typing import Any, List

from twisted.python.components import Componentized
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyChannel
from zope.interface import Interface, implementer

from oidcproxy.core.context import ContextAtHand, IRequestContext, RequestContext, context, peek
from oidcproxy.web.server import ProxyRequest


class IOther(Interface):
    """Another component key."""


def _request() -> Request:
    return Request(DummyChannel())


class ContextTests(SynchronousTestCase):
    def test_made_once_and_kept_as_component(self) -> None:
        """context() makes the context the first time and returns the same one after."""
        request = _request()
        self.assertIsNone(peek(request))
        made = context(request)
        self.assertIsInstance(made, RequestContext)
        self.assertIs(context(request), made)
        self.assertIs(peek(request), made)
        self.assertIs(request.getComponent(IRequestContext), made)

    def test_no_attributes_on_the_request(self) -> None:
        """The context is a component: the request gains no attribute of ours."""
        request = _request()
        before = set(vars(request))
        context(request).user = "alice"
        self.assertEqual({n for n in set(vars(request)) - before if "oidcproxy" in n}, set())

    def test_apply_answer_filters_adds_and_sets_once(self) -> None:
        """
        Refused Set-Cookie values are dropped (header and request.cookies),
        the guard's cookies are added without doubles, its headers replace
        the resource's; a second apply changes nothing.
        """
        request = _request()
        request.responseHeaders.setRawHeaders(b"set-cookie", [b"app=1", b"session=evil"])
        request.responseHeaders.setRawHeaders(b"x-auth-session-expires-in", [b"1"])
        ctx = context(request)
        ctx.keep_cookie = lambda value: not value.startswith(b"session=")
        ctx.cookies.extend([b"session=good", b"app=1"])
        ctx.headers.append((b"x-auth-session-expires-in", b"60"))
        ctx.apply_answer(request)
        headers = request.responseHeaders
        self.assertEqual(headers.getRawHeaders(b"set-cookie"), [b"app=1", b"session=good"])
        self.assertEqual(headers.getRawHeaders(b"x-auth-session-expires-in"), [b"60"])
        ctx.cookies.append(b"late=1")
        ctx.apply_answer(request)
        self.assertEqual(headers.getRawHeaders(b"set-cookie"), [b"app=1", b"session=good"])

    def test_apply_answer_nothing_to_do(self) -> None:
        """
        An answer without Set-Cookie, with nothing to add, is left alone
        without reading or editing its headers (most proxied answers).
        """
        request = _request()
        request.responseHeaders.setRawHeaders(b"content-type", [b"text/plain"])
        ctx = context(request)
        ctx.keep_cookie = lambda value: False
        touched: List[Any] = []
        headers = request.responseHeaders
        for name in ("getRawHeaders", "setRawHeaders", "removeHeader"):
            original = getattr(Headers, name)

            def watched(this: Any, *args: Any, name: str = name, original: Any = original) -> Any:
                if this is headers:
                    touched.append(name)
                return original(this, *args)

            self.patch(Headers, name, watched)
        ctx.apply_answer(request)
        self.assertEqual(touched, [])
        self.assertTrue(ctx.answer_applied)
        self.assertEqual(list(request.responseHeaders.getAllRawHeaders()),
                         [(b"Content-Type", [b"text/plain"])])

    def test_apply_answer_takes_add_cookie_values(self) -> None:
        """Cookies set with request.addCookie are filtered too, and written once."""
        request = _request()
        request.addCookie(b"session", b"evil")
        request.addCookie(b"app", b"2")
        ctx = context(request)
        ctx.keep_cookie = lambda value: not value.startswith(b"session=")
        ctx.apply_answer(request)
        self.assertEqual(request.cookies, [])
        self.assertEqual(request.responseHeaders.getRawHeaders(b"set-cookie"), [b"app=2"])

    def test_apply_answer_keeps_header_and_add_cookie_values(self) -> None:
        """
        Twisted writes both the Set-Cookie header and request.cookies: both
        survive (in the header), neither twice.
        """
        request = _request()
        request.responseHeaders.setRawHeaders(b"set-cookie", [b"a=1"])
        request.addCookie(b"b", b"2")
        ctx = context(request)
        ctx.cookies.append(b"c=3")
        ctx.apply_answer(request)
        self.assertEqual(request.cookies, [])
        self.assertEqual(request.responseHeaders.getRawHeaders(b"set-cookie"),
                         [b"a=1", b"b=2", b"c=3"])

    def test_removes_set_cookie_when_all_refused(self) -> None:
        request = _request()
        request.responseHeaders.setRawHeaders(b"set-cookie", [b"session=evil"])
        ctx = context(request)
        ctx.keep_cookie = lambda value: False
        ctx.apply_answer(request)
        self.assertFalse(request.responseHeaders.hasHeader(b"set-cookie"))

    def test_nothing_to_apply_leaves_headers(self) -> None:
        request = _request()
        request.addCookie(b"app", b"3")
        context(request).apply_answer(request)
        self.assertEqual(len(request.cookies), 1)

    def test_kept_cookies(self) -> None:
        ctx = RequestContext()
        self.assertEqual(ctx.kept_cookies([b"a=1"]), [b"a=1"])
        ctx.keep_cookie = lambda value: value != b"a=1"
        self.assertEqual(ctx.kept_cookies([b"a=1", b"b=2"]), [b"b=2"])

    def test_refuses_cookie(self) -> None:
        """Without a C{keep_cookie} nothing is refused; with one, what it says no to."""
        ctx = RequestContext()
        self.assertFalse(ctx.refuses_cookie(b"a=1"))
        ctx.keep_cookie = lambda value: value != b"a=1"
        self.assertTrue(ctx.refuses_cookie(b"a=1"))
        self.assertFalse(ctx.refuses_cookie(b"b=2"))

    def test_handed_over_cookies_not_refused(self):
        """
        The guard's own cookies already in request.cookies (handed over to an
        embedded resource) are merged once and never taken for the wrapped
        resource's refused ones.
        """
        request = _request()
        ctx = context(request)
        seen = []

        def keep(value: bytes) -> bool:
            seen.append(value)
            return not value.startswith(b"session=")

        ctx.keep_cookie = keep
        ctx.cookies.append(b"session=good")
        request.cookies.extend(ctx.cookies)
        request.responseHeaders.setRawHeaders(b"set-cookie", [b"app=1", b"session=evil"])
        ctx.apply_answer(request)
        self.assertEqual(request.responseHeaders.getRawHeaders(b"set-cookie"),
                         [b"app=1", b"session=good"])
        self.assertEqual(seen, [b"app=1", b"session=evil"])


class _AtHand(ContextAtHand, Request):
    pass


@implementer(IRequestContext)
class _Provider:
    """Something else that provides the context's interface."""


class ContextAtHandTests(SynchronousTestCase):
    def request(self) -> _AtHand:
        return _AtHand(DummyChannel())

    def count_lookups(self) -> List[Any]:
        calls: List[Any] = []
        original = Componentized.getComponent

        def counting(self: Any, interface: Any, default: Any = None) -> Any:
            calls.append(interface)
            return original(self, interface, default)

        self.patch(Componentized, "getComponent", counting)
        return calls

    def test_kept_after_first(self):
        """Once made, the context is answered without Componentized's lookup."""
        request = self.request()
        made = context(request)
        calls = self.count_lookups()
        for _ in range(3):
            self.assertIs(peek(request), made)
            self.assertIs(context(request), made)
        self.assertEqual(calls, [])

    def test_other_interfaces_as_before(self):
        """Another interface goes to Componentized."""
        request = self.request()
        calls = self.count_lookups()
        self.assertIsNone(request.getComponent(IOther))
        self.assertEqual(request.getComponent(IOther, "x"), "x")
        self.assertEqual(calls, [IOther, IOther])

    def test_none_before_made(self):
        """peek is None before a context is made, and its default comes back."""
        request = self.request()
        self.assertIsNone(peek(request))
        self.assertEqual(request.getComponent(IRequestContext, "d"), "d")
        self.assertIsNone(peek(request))

    def test_changes_seen(self):
        """setComponent, unsetComponent, addComponent and removeComponent are seen at once."""
        request = self.request()
        first = context(request)
        second = RequestContext()
        request.setComponent(IRequestContext, second)
        self.assertIs(peek(request), second)
        request.unsetComponent(IRequestContext)
        self.assertIsNone(peek(request))
        fourth = context(request)
        self.assertIs(peek(request), fourth)
        third = _Provider()
        request.addComponent(third, ignoreClass=1)
        self.assertIs(peek(request), third)
        request.removeComponent(third)
        self.assertIsNone(peek(request))
        self.assertIsNot(context(request), first)

    def test_proxy_requests_keep_it(self):
        """The proxy's requests keep their context at hand."""
        self.assertTrue(issubclass(ProxyRequest, ContextAtHand))

    def test_made_context_at_hand(self):
        """A context just made is at hand: no second lookup through Componentized."""
        request = self.request()
        calls = self.count_lookups()
        made = context(request)
        self.assertIs(peek(request), made)
        self.assertIs(context(request), made)
        self.assertEqual(calls, [IRequestContext])
