"""
Adversarial suite, class 3: path confusion.

Paths generated from a public prefix (C{/public}), dot segments in every
spelling (C{..}, C{%2e%2e}, C{.%2E}, C{..;x}, ...), separators in every
spelling (C{/}, C{%2F}, C{%5C}, C{\\}, C{//}, C{;/}, C{%00}, C{#}, C{%23}, C{?})
and a protected target, sent anonymously as raw bytes (origin form and
absolute form). The invariant: the request is refused with 400, or refused
as unauthenticated (401) with nothing sent upstream, or it reaches the
upstream with a target whose path is already normal and is itself routed to
the public route, so the decision was made on the path that went upstream.
"""

from __future__ import annotations

from typing import List, Tuple

from twisted.trial.unittest import SynchronousTestCase

from oidcproxy.proxy.routes import BadRequestTarget, RouteTable, normalise_path

from .adversarial import Failures, casings, header_of, parse_response
from .fakes import ProxyStack, make_config

DOTS = ["..", "%2e%2e", "%2E%2E", ".%2e", "%2e.", "..;", "..;x=1", ".%2E;", "..%3B", "%2e%2e%3b",
        "..%00", "..%2f", ".", "%2e", "...", "..%5c"]
SEPARATORS = ["/", "%2F", "%2f", "%5C", "%5c", "\\", "//", "/./", ";/", "%00/", "#/", "%23/", "?/",
              "/;/", "/%3B/", "%252F"]
TARGETS = ["admin", "app/x"]
EXTRA = [
    "/public", "/public/", "/publicx", "/public.", "/public..", "/PUBLIC/x", "/public%2fx",
    "/Public/../admin", "//public/../admin", "/./public/../admin", "/public;x/../admin",
    "/;/public/x", "/public//;/../admin", "/public/;/../../admin", "/http://;@evil.test",
    "/public/x/../../admin", "/public/%2e%2e%2fadmin", "/public%2F..%2Fadmin", "/public/..%252fadmin",
    "/admin?/public/x", "/admin?x=/public/../", "/public?/../admin", "/admin#/public",
    "/admin%23/public", "/public/%23/../admin", "/public/..%23/admin", "/%70ublic/x",
    "/%70ublic/../admin", "/public%00/x", "/public/%ff/../admin", "/public/%G0/../admin",
    "/public/\x7f/../admin", "/public/%c0%ae%c0%ae/admin", "/public/\u2025/admin",
]


def paths() -> List[str]:
    out = list(EXTRA)
    for dots in DOTS:
        for target in TARGETS:
            for sep in SEPARATORS:
                out.append("/public" + sep + dots + sep + target)
                out.append("/public/" + dots + sep + target)
                out.append("/public" + sep + dots + "/" + target)
    return sorted(set(out))


PATHS = paths()


def _public(table: RouteTable, target: bytes) -> Tuple[bool, str]:
    path = target.split(b"?", 1)[0]
    try:
        normal = normalise_path(path)
        match = table.match(b"app.test", target)
    except BadRequestTarget as e:
        return False, f"the upstream target is not routable: {e.reason}"
    if normal.encode("ascii") != path:
        return False, f"the upstream target is not normal ({normal!r})"
    if match is None or match.route.path != "/public":
        return False, f"the upstream target routes to {match.route.path if match else None!r}"
    return True, ""


class PathConfusionTests(SynchronousTestCase):
    def run_table(self, stack: ProxyStack, failures: Failures, form: str) -> None:
        table = RouteTable(stack.config.routes)
        for path in PATHS:
            try:
                raw = path.encode("latin-1")
            except UnicodeEncodeError:
                raw = path.encode("utf-8")
            target = raw if form == "origin" else b"http://app.test" + raw
            before = len(stack.upstream.requests)
            out = stack.raw(b"GET " + target + b" HTTP/1.1\r\nHost: app.test\r\n"
                            b"Accept: application/json\r\n\r\n")
            if not out:
                failures.check(False, form, path, "no answer")
                continue
            status, _, _ = parse_response(out)
            reached = stack.upstream.requests[before:]
            if status in (400, 401, 404):
                failures.check(not reached, form, path, f"{status} but the upstream got {reached}")
                continue
            if status != 200 or len(reached) != 1:
                failures.check(False, form, path, f"{status}, {len(reached)} upstream requests")
                continue
            ok, why = _public(table, reached[0]["uri"])
            failures.check(ok, form, path, f"{reached[0]['uri']!r}: {why}")

    def test_origin_form(self):
        """Every generated path, origin form: 400, 401 with nothing upstream, or the public route."""
        stack = ProxyStack(self)
        failures = Failures(self, "path confusion (origin form)")
        self.run_table(stack, failures, "origin")
        failures.done(len(PATHS))
        self.assertGreater(len(PATHS), 1000)

    def test_absolute_form(self):
        """The same paths in absolute-form request targets."""
        stack = ProxyStack(self)
        failures = Failures(self, "path confusion (absolute form)")
        self.run_table(stack, failures, "absolute")
        failures.done(len(PATHS))

    def test_controls(self):
        """The table is not vacuous: plain public paths pass, plain protected ones get 401."""
        stack = ProxyStack(self)
        for path, status, upstream in (("/public/x", 200, b"/public/x"),
                                       ("/public/a/../b", 200, b"/public/b"),
                                       ("/public/%7Euser", 200, b"/public/~user"),
                                       ("/admin", 401, None), ("/public/../admin", 401, None),
                                       ("/publicx", 401, None)):
            before = len(stack.upstream.requests)
            out = stack.raw(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: app.test\r\n"
                            b"Accept: application/json\r\n\r\n")
            self.assertEqual(parse_response(out)[0], status, path)
            reached = stack.upstream.requests[before:]
            self.assertEqual([r["uri"] for r in reached], [upstream] if upstream else [], path)

    def test_empty_segment_with_parameters(self):
        """
        A segment that is empty before its C{;} parameters in a path with a
        doubled slash (C{/http://;@evil.test}, from the open-redirect corpus)
        used to crash the path normaliser (500); it is a plain segment.
        """
        self.assertEqual(normalise_path(b"/http://;@evil.test"), "/http:/;@evil.test")
        self.assertEqual(normalise_path(b"/public//;/../admin"), "/public/admin")
        stack = ProxyStack(self)
        out = stack.raw(b"GET /http://;@evil.test HTTP/1.1\r\nHost: app.test\r\n"
                        b"Accept: application/json\r\n\r\n")
        self.assertEqual(parse_response(out)[0], 401)


CASE_ROUTES = [
    {"path": "/admin", "upstream": "http://up.test", "auth": "session"},
    {"path": "/", "upstream": "http://up.test", "auth": "none"},
]


class CaseTests(SynchronousTestCase):
    """
    An upstream that serves paths case-insensitively (IIS, Spring with
    case-insensitive matching) serves C{/ADMIN/} as C{/admin/}: the protected
    route must be matched in every case too.
    """

    def send(self, stack: ProxyStack, path: str, api: bool) -> Tuple[int, List[bytes], int]:
        before = len(stack.upstream.requests)
        accept = b"application/json" if api else b"text/html"
        out = stack.raw(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: app.test\r\n"
                        b"Accept: " + accept + b"\r\n\r\n")
        status, headers, _ = parse_response(out)
        return status, header_of(headers, b"location"), len(stack.upstream.requests) - before

    def check(self, stack: ProxyStack, failures: Failures, label: str) -> None:
        for word in casings("admin"):
            for path in (f"/{word}/", f"/{word}", f"/{word}/x?y=1", f"/x/../{word};p=1/z"):
                status, _, reached = self.send(stack, path, api=True)
                failures.check((status, reached) == (401, 0), label, path,
                               f"API: {status}, {reached} upstream request(s)")
                status, location, reached = self.send(stack, path, api=False)
                failures.check(status == 302 and reached == 0 and bool(location), label, path,
                               f"browser: {status} {location}, {reached} upstream request(s)")

    def test_route_key_closes_the_bypass(self):
        """With case_insensitive = true on the route, /ADMIN/ (any case) needs the login."""
        routes = [{**CASE_ROUTES[0], "case_insensitive": True}, CASE_ROUTES[1]]
        stack = ProxyStack(self, config=make_config(routes=routes))
        failures = Failures(self, "case-insensitive route")
        self.check(stack, failures, "route key")
        failures.done(60)

    def test_top_level_default_closes_the_bypass(self):
        """case_insensitive_routes = true does the same for every route."""
        stack = ProxyStack(self, config=make_config(routes=CASE_ROUTES, case_insensitive_routes=True))
        failures = Failures(self, "case_insensitive_routes")
        self.check(stack, failures, "top level")
        failures.done(60)
        status, _, reached = self.send(stack, "/Public/x", api=True)
        self.assertEqual((status, reached), (200, 1))
        self.assertEqual(stack.upstream.requests[-1]["uri"], b"/Public/x")

    def test_case_sensitive_default(self):
        """
        Without it, matching is case-sensitive (RFC 3986 paths): /ADMIN/ is
        another path, served by the public route — what the routing documentation warns about.
        """
        stack = ProxyStack(self, config=make_config(routes=CASE_ROUTES))
        self.assertEqual(self.send(stack, "/ADMIN/", api=True)[::2], (200, 1))
        self.assertEqual(self.send(stack, "/admin/", api=True)[::2], (401, 0))
