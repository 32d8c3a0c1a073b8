"""
Properties of the redirect-target checks on generated targets: whatever
L{oidcproxy.oidc.login.safe_return_to} keeps, and wherever the login's and the
logout's C{rd} send a browser, a browser's resolution of it stays on the
public URL's origin.
"""

from __future__ import annotations

from urllib.parse import unquote, urlencode

from hypothesis import example
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from oidcproxy.oidc.login import safe_return_to

from .adversarial import APP, extra_redirects, open_state
from .fakes import STATE_PREFIX, ProxyStack
from .idp import Page
from .props import given, scaled
from .urls import browser_resolve, origin

PUBLIC = APP + "/"

PIECES = ["/", "//", "\\", "/\\", ".", "..", "%2f", "%2F", "%5c", "%252f", "%2e", "%09", "%0a",
          "%00", "%25", "%", "@", ":", "evil.test", "app.test", "http:", "https:", "javascript:",
          "?", "#", "&", "=", "\t", "\n", "\r", " ", "\x00", "\uff0f", "\u3002", "%E3%80%82",
          "a", "x", "~", ";", "rd="]
TARGETS = st.one_of(
    st.lists(st.sampled_from(PIECES), max_size=10).map("".join),
    st.sampled_from([target for _, target in extra_redirects()]),
    st.text(max_size=30),
    st.text(max_size=20).map(lambda t: "/" + t),
)


class SafeReturnToTests(SynchronousTestCase):
    @given(TARGETS)
    @example("/ok?next=%2F%2Fevil.test")
    @example("/%5C%5Cevil.test")
    def test_kept_target_stays_on_origin(self, target: str) -> None:
        """
        safe_return_to keeps a target exactly or refuses it (None); a kept
        one, and what it decodes to once or twice, lands a browser on the
        public URL's origin, appended to the public URL or resolved against it.
        """
        kept = safe_return_to(target)
        if kept is None:
            return
        self.assertEqual(kept, target)
        layers = [kept, unquote(kept), unquote(unquote(kept))]
        for layer in layers:
            self.assertEqual(origin(browser_resolve(PUBLIC, layer)), origin(PUBLIC), layer)
            self.assertEqual(origin(browser_resolve(PUBLIC, APP + layer)), origin(PUBLIC), layer)

    @given(st.one_of(st.none(), st.integers(), st.binary(max_size=10), TARGETS))
    def test_never_raises(self, target: object) -> None:
        """Any value at all: a string or None, never an exception."""
        kept = safe_return_to(target)  # type: ignore[arg-type]
        self.assertTrue(kept is None or kept == target)


class GuardRedirectTests(SynchronousTestCase):
    """The login's and logout's C{rd} through the whole guard."""

    def setUp(self) -> None:
        self.stack = ProxyStack(self)
        self.browser = self.stack.browser()

    @given(TARGETS)
    @scaled(60)
    def test_logout_rd(self, target: str) -> None:
        """POST /oidc/logout with any rd: 303 to a Location on the public origin."""
        page = self.browser.request(
            b"POST", "/oidc/logout?" + urlencode({"rd": target}),
            headers={b"origin": [APP.encode("ascii")]}, body=b"", cookies=False)
        self.assertEqual(page.code, 303, page.body)
        location = page.header(b"location").decode("ascii")
        self.assertEqual(origin(browser_resolve(PUBLIC, location)), origin(PUBLIC), location)

    @given(TARGETS)
    @scaled(60)
    def test_login_rd(self, target: str) -> None:
        """
        GET /oidc/login with any rd: the return-to sealed in the state is a
        target safe_return_to keeps, and the landing after the callback
        (public URL + return-to) is on the public origin.
        """
        page = self.browser.get("/oidc/login?" + urlencode({"rd": target}), cookies=False)
        self.assertEqual(page.code, 302, page.body)
        return_to = _state_of(page).return_to
        self.assertEqual(safe_return_to(return_to), return_to)
        self.assertEqual(origin(browser_resolve(PUBLIC, APP + return_to)), origin(PUBLIC))


def _state_of(page: Page) -> object:
    cookies = [c for c in page.set_cookies if c.name.startswith(STATE_PREFIX) and not c.deletes]
    assert len(cookies) == 1, [c.name for c in cookies]
    return open_state(cookies[0].value)
