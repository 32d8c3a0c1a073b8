"""
The guard mounted below the root of an existing site (C{putChild(b"app",
guard)}), as C{HTTPAuthSessionWrapper} can be: its routes and endpoints are
relative to where it is mounted, its absolute URLs are public_url's (which
names the mount path), the wrapped resource is walked from there with
prepath as traversal left it, and the site's other resources are untouched.
"""

from __future__ import annotations

from typing import Any, List
from urllib.parse import urlencode

from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from oidcproxy import identity

from .fakes import API, SESSION_COOKIE, GuardStack, make_config
from .idp import AUTHORIZATION_ENDPOINT, Browser, authorize_params, split_location

SITE = "https://app.test"
PUBLIC_URL = SITE + "/app"


class Sibling(Resource):
    """An unprotected resource of the same site."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: List[Any] = []

    def render_GET(self, request: Any) -> bytes:
        self.seen.append(identity(request))
        return b"open to all"


class MountedTests(SynchronousTestCase):
    def setUp(self) -> None:
        config = make_config(public_url=PUBLIC_URL, routes=[
            {"path": "/", "auth": "session", "upstream": "http://up.test"},
            {"path": "/admin", "auth": "session", "rule": "Contains(`groups`, `admins`)",
             "upstream": "http://up.test"},
            {"path": "/public", "auth": "none", "upstream": "http://up.test"},
        ])
        self.h = GuardStack(self, config)
        self.walked: List[Any] = []
        self.h.app.action = lambda request: self.walked.append(
            (list(request.prepath), list(request.postpath), identity(request)))
        self.sibling = Sibling()
        root = Resource()
        root.putChild(b"app", self.h.guard)
        root.putChild(b"open", self.sibling)
        self.browser = Browser(self.h.network, root, SITE)

    def log_in(self) -> Any:
        """A whole login started at /app/x; the callback's answer."""
        page = self.browser.navigate("/app/x?y=1")
        self.assertEqual(page.code, 302, page.body)
        base, _ = split_location(page)
        self.assertEqual(base, AUTHORIZATION_ENDPOINT)
        params = authorize_params(page)
        self.assertEqual(params["redirect_uri"], PUBLIC_URL + "/oidc/callback")
        code = self.h.idp.issue_code(nonce=params["nonce"],
                                     code_verifier_challenge=params["code_challenge"])
        return self.browser.navigate(
            "/app/oidc/callback?" + urlencode({"code": code, "state": params["state"]}))

    def test_login_under_the_mount(self):
        """The login starts below /app/, comes back to /app/oidc/callback and lands on /app/x."""
        page = self.log_in()
        self.assertEqual(page.code, 302, page.body)
        self.assertEqual(page.location, PUBLIC_URL + "/x?y=1")
        self.assertIn(SESSION_COOKIE, self.browser.jar)

    def test_protected_page_walked_from_the_mount(self):
        """
        A protected page reaches the wrapped resource with prepath as
        traversal left it and the rest of the path in postpath, with the
        identity.
        """
        self.log_in()
        page = self.browser.get("/app/x/y", headers=API)
        self.assertEqual(page.code, 200, page.body)
        prepath, postpath, who = self.walked[-1]
        self.assertEqual((prepath, postpath), ([b"app"], [b"x", b"y"]))
        self.assertEqual(who.sub, "user-1")

    def test_unauthenticated(self):
        """Without a session: 401 for an API client, never the wrapped resource."""
        self.assertEqual(self.browser.get("/app/x", headers=API).code, 401)
        self.assertEqual(self.walked, [])

    def test_public_route_relative_to_the_mount(self):
        """/app/public/ is the route "/public": no login."""
        page = self.browser.get("/app/public/z", headers=API)
        self.assertEqual(page.code, 200, page.body)
        self.assertEqual(self.walked[-1][:2], ([b"app"], [b"public", b"z"]))
        self.assertIsNone(self.walked[-1][2])

    def test_dot_segments_walk_the_decided_path(self):
        """/app/admin/../public is decided as /public and walked as /public, not into admin."""
        page = self.browser.get("/app/admin/%2e%2e/public/z", headers=API)
        self.assertEqual(page.code, 200, page.body)
        self.assertEqual(self.walked[-1][1], [b"public", b"z"])

    def test_sibling_untouched(self):
        """The site's other resources are not behind the guard."""
        page = self.browser.get("/open/z", headers=API)
        self.assertEqual((page.code, page.body), (200, b"open to all"))
        self.assertEqual(self.sibling.seen, [None])
        self.assertEqual(self.walked, [])

    def test_endpoints_under_the_mount(self):
        """The guard's endpoints are below /app/; at the site's root they are not its."""
        self.assertEqual(self.browser.get("/app/oidc/health").code, 200)
        self.assertEqual(self.browser.get("/oidc/health").code, 404)

    def test_logout_under_the_mount(self):
        """
        The logout form posts to /app/oidc/logout; the session ends; on to the
        signed-out page below the mount.
        """
        self.log_in()
        page = self.browser.get("/app/oidc/logout")
        self.assertEqual(page.code, 200)
        self.assertIn(b'action="/app/oidc/logout"', page.body)
        page = self.browser.request(
            b"POST", "/app/oidc/logout", headers={b"origin": [SITE.encode()]})
        self.assertEqual(page.code, 303, page.body)
        self.assertEqual(page.location, PUBLIC_URL + "/oidc/logout?signed_out=1")
        self.assertNotIn(SESSION_COOKIE, self.browser.jar)
        self.assertEqual(self.browser.get("/app/x", headers=API).code, 401)


class RootTests(SynchronousTestCase):
    def test_root_mounted_walks_from_the_root(self):
        """At a site's root the wrapped resource gets the whole path, as before."""
        h = GuardStack(self)
        walked: List[Any] = []
        h.app.action = lambda request: walked.append((list(request.prepath),
                                                      list(request.postpath)))
        page = h.browser().get("/public/a/b", headers=API)
        self.assertEqual(page.code, 200)
        self.assertEqual(walked, [([], [b"public", b"a", b"b"])])

    def test_public_url_without_the_mount_warned_once(self):
        """Mounted at /app while public_url is the bare origin: one warning naming both."""
        events: List[Any] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        h = GuardStack(self)
        root = Resource()
        root.putChild(b"app", h.guard)
        browser = Browser(h.network, root, SITE)
        browser.get("/app/public/x", headers=API)
        browser.get("/app/public/y", headers=API)
        warned = [e for e in events if "is mounted at" in e.get("log_format", "")]
        self.assertEqual(len(warned), 1)
        self.assertEqual((warned[0]["mount"], warned[0]["public"]), ("/app", SITE))

    def test_mounted_as_named_not_warned(self):
        events: List[Any] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        h = GuardStack(self, make_config(public_url=PUBLIC_URL))
        root = Resource()
        root.putChild(b"app", h.guard)
        Browser(h.network, root, SITE).get("/app/public/x", headers=API)
        self.assertEqual([e for e in events if "is mounted at" in e.get("log_format", "")], [])

