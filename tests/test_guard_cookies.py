"""
The proxy's own cookies in the answers it passes on: an upstream (or an
embedded application) cannot set the session cookie, its chunks, a state
cookie or the CSRF cookie in the browser, under any spelling, with any
attributes, in any answer (bodiless ones too); the guard's own cookies still
go out with the same answer, and the first attempt of each route is logged.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from oidcproxy.sessions.cookies import OwnedNames
from oidcproxy.web.server import ProxyRequest

from .adversarial import ROUTES, header_of, parse_response
from .fakes import SESSION_COOKIE, STATE_PREFIX, GuardStack, ProxyStack, make_config

CSRF_COOKIE = "__Host-oidcproxy_csrf"

OWNED = [
    # the session cookie, as the proxy names it and otherwise
    SESSION_COOKIE + "=forged",
    SESSION_COOKIE + "=forged; Path=/; Secure; HttpOnly",
    SESSION_COOKIE + "=forged; Path=/admin; Domain=app.test",
    SESSION_COOKIE + "=forged; Max-Age=0",
    "oidcproxy=forged; Path=/",
    "OIDCPROXY=forged",
    "__host-OidcProxy=forged",
    "__Secure-oidcproxy=forged; Secure",
    "__SECURE-__Host-oidcproxy=forged",
    " oidcproxy =forged",
    "=oidcproxy=forged",
    "oidcproxy",
    # its chunks
    SESSION_COOKIE + "_1=forged",
    "oidcproxy_2=forged; Domain=.app.test",
    "OIDCPROXY_12=forged",
    # state cookies
    STATE_PREFIX + "abc=forged; Path=/oidc",
    "oidcproxy_state_x=forged",
    "OIDCPROXY_STATE_Y=forged",
    # the CSRF cookie
    CSRF_COOKIE + "=forged",
    "oidcproxy_csrf=forged; Path=/",
    "__Secure-OIDCPROXY_CSRF=forged",
]
"""Set-Cookie values that would set (or shadow, or delete) one of the proxy's cookies."""

NOT_OWNED = [
    "app=1; Path=/",
    "oidcproxy2=x",
    "oidcproxy_theme=dark",
    "my_oidcproxy=x",
    "oidcproxy_1x=y",
    "session=oidcproxy",
    "x=oidcproxy=1",
]
"""Set-Cookie values of other cookies, which pass unchanged."""


def config(**changes: Any) -> Any:
    return make_config(routes=ROUTES, csrf={}, **changes)


def answering(set_cookies: Sequence[str], code: int = 200,
              action: Optional[Callable[[Any], None]] = None) -> Callable[[Any], bytes]:
    """An upstream handler answering C{code} with these Set-Cookie headers."""
    def handler(request: Any) -> bytes:
        request.setResponseCode(code)
        for value in set_cookies:
            request.responseHeaders.addRawHeader(b"set-cookie", value.encode("latin-1"))
        if action is not None:
            action(request)
        return b"" if code in (204, 304) else b"body"
    return handler


class Logged:
    """The 'own cookie' warnings logged during a test."""

    def __init__(self, case: SynchronousTestCase) -> None:
        self.events: List[Dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        case.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def routes(self) -> List[str]:
        return [e["route"] for e in self.events if "proxy's own cookie" in e.get("log_format", "")]


class UpstreamSetCookieTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.stack = ProxyStack(self, config=config())
        browser = self.stack.logged_in()
        cookie = browser.cookie_header()
        assert cookie is not None
        self.cookie = cookie

    def fetch(self, target: str = "/app/x", method: bytes = b"GET",
              cookie: bool = True) -> Tuple[int, List[bytes], bytes]:
        head = method + b" " + target.encode() + b" HTTP/1.1\r\nHost: app.test\r\n"
        if cookie:
            head += b"Cookie: " + self.cookie + b"\r\n"
        status, headers, body = parse_response(self.stack.raw(head + b"\r\n"))
        return status, header_of(headers, b"set-cookie"), body

    def test_each_owned_name_dropped(self):
        """Every spelling of every owned name, alone, on a protected and a public route."""
        for target, cookie in (("/app/x", True), ("/public/x", False)):
            for value in OWNED:
                self.stack.upstream.handler = answering([value])
                status, set_cookies, _ = self.fetch(target, cookie=cookie)
                self.assertEqual(status, 200, value)
                self.assertFalse([c for c in set_cookies if b"forged" in c or c == b"oidcproxy"],
                                 f"{target}: {value!r} reached the browser: {set_cookies}")

    def test_others_kept_in_order(self):
        """Several Set-Cookie headers, only some owned: the others pass, in order, unchanged."""
        mixed = [NOT_OWNED[0], OWNED[0], *NOT_OWNED[1:4], OWNED[12], OWNED[15], *NOT_OWNED[4:]]
        self.stack.upstream.handler = answering(mixed)
        _, set_cookies, _ = self.fetch("/public/x", cookie=False)
        self.assertEqual(set_cookies, [v.encode() for v in NOT_OWNED])

    def test_guard_cookies_still_sent(self):
        """
        The guard's CSRF cookie, issued with this very answer, reaches the
        browser; the upstream's forged one of the same name does not.
        """
        self.stack.upstream.handler = answering([CSRF_COOKIE + "=forged", "app=1"])
        _, set_cookies, _ = self.fetch("/app/x")
        csrf = [c for c in set_cookies if c.startswith(CSRF_COOKIE.encode() + b"=")]
        self.assertEqual(len(csrf), 1, set_cookies)
        self.assertNotIn(b"forged", csrf[0])
        self.assertIn(b"app=1", set_cookies)

    def test_bodiless_answers(self):
        """HEAD, 204 and 304 answers are filtered too (their headers go out without a write)."""
        for method, code in ((b"HEAD", 200), (b"GET", 204), (b"GET", 304)):
            self.stack.upstream.handler = answering([OWNED[0], "app=1"], code)
            status, set_cookies, _ = self.fetch("/public/x", method, cookie=False)
            self.assertEqual((status, set_cookies), (code, [b"app=1"]), (method, code))

    def test_logged_once_per_route(self):
        """One warning per route, naming it and the cookie, however many answers try."""
        logged = Logged(self)
        self.stack.upstream.handler = answering(OWNED[:3])
        for _ in range(3):
            self.fetch("/public/x", cookie=False)
        self.fetch("/app/x")
        self.fetch("/app/x")
        self.assertEqual(logged.routes(), ["routes[0]", "routes[6]"])
        event = [e for e in logged.events if "proxy's own cookie" in e.get("log_format", "")][0]
        self.assertEqual(event["name"], SESSION_COOKIE)
        self.assertNotIn("forged", str(event))


class EmbeddedAppTests(SynchronousTestCase):
    def test_add_cookie_and_headers_filtered(self):
        """
        An embedded application's addCookie of the session cookie, and its
        own Set-Cookie header of a state cookie, are dropped; its other
        cookies go out with the guard's.
        """
        h = GuardStack(self, config=make_config(csrf={}))
        browser = h.logged_in()
        # The proxy's request class applies the guard's refusals to the
        # answer (a plain Request trusts the application: see below).
        browser.agent._serverFactory.requestFactory = ProxyRequest

        def action(request: Any) -> None:
            request.addCookie(SESSION_COOKIE, "forged", path="/")
            request.addCookie("app", "1")
            request.responseHeaders.addRawHeader(b"set-cookie", b"oidcproxy_state_x=forged")

        h.app.action = action
        page = browser.get("/x")
        self.assertEqual(page.code, 200)
        values = [f"{c.name}={c.value}" for c in page.set_cookies]
        self.assertNotIn(SESSION_COOKIE + "=forged", values)
        self.assertFalse([v for v in values if "forged" in v], values)
        self.assertIn("app=1", values)
        self.assertTrue([v for v in values if v.startswith(CSRF_COOKIE + "=")], values)
        self.assertEqual(browser.get("/x").code, 200)


class PlainRequestTests(SynchronousTestCase):
    def test_guard_cookies_survive_a_replaced_header(self):
        """
        Embedded in a Site with twisted.web's own Request, the guard's cookies
        (the CSRF cookie here) are in request.cookies before the application
        renders: they go out beside its addCookie ones, even when it
        replaces the Set-Cookie header; its own cookies are not filtered.
        """
        h = GuardStack(self, config=make_config(csrf={}))
        browser = h.logged_in()
        browser.jar.pop(CSRF_COOKIE, None)

        def action(request: Any) -> None:
            request.responseHeaders.setRawHeaders(b"set-cookie", [b"replaced=1"])
            request.addCookie(b"app", b"2")
            request.addCookie(SESSION_COOKIE, b"mine", path=b"/")

        h.app.action = action
        page = browser.get("/x")
        values = [f"{c.name}={c.value}" for c in page.set_cookies]
        self.assertIn("app=2", values)
        self.assertIn(SESSION_COOKIE + "=mine", values)
        self.assertTrue([v for v in values if v.startswith(CSRF_COOKIE + "=")], values)


class OwnedNamesTests(SynchronousTestCase):
    """L{OwnedNames} on its own."""

    def setUp(self) -> None:
        self.owned = OwnedNames(["oidcproxy", "oidcproxy_csrf"], ["oidcproxy_state"])

    def test_claimed(self):
        for value in OWNED:
            self.assertIsNotNone(self.owned.claimed(value.encode("latin-1")), value)
        for value in NOT_OWNED:
            self.assertIsNone(self.owned.claimed(value.encode("latin-1")), value)

    def test_claimed_name_is_the_spelling_used(self):
        self.assertEqual(self.owned.claimed(b"__Host-OIDCPROXY_1=x; Path=/"), b"__Host-OIDCPROXY_1")
        self.assertEqual(self.owned.claimed(b"=oidcproxy=x"), b"oidcproxy")
