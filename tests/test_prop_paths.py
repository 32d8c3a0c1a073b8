"""
Properties of the request-target parser and path normalisation
(L{oidcproxy.proxy.routes.normalise_path}, L{oidcproxy.proxy.routes.RouteTable.match}),
on generated targets.
"""

from __future__ import annotations

import re
import string
from typing import List, Optional

from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from oidcproxy.config import RouteConfig
from oidcproxy.proxy.routes import BadRequestTarget, RouteMatch, RouteTable, normalise_path

from .props import given, scaled

# Pieces that make the normaliser work: dot segments spelled every way,
# segment parameters, escapes of unreserved, reserved, slash, backslash,
# NUL and percent, bad escapes, and bytes a target must not hold.
PIECES = [
    "", ".", "..", "...", "%2e", "%2E", "%2e%2e", ".%2E", "%2e.", "a", "b", "admin", "app",
    "x;y", ";", ";x", "..;x", ".;", "..%3b", "%3B", "%3b..", "%2f", "%2F", "%5c", "%5C",
    "%41", "%7e", "%7E", "%5f", "%2d", "%25", "%252e", "%00", "%zz", "%", "%4", "%e2%80%ae",
    "~", "-", "_", "@", ":", "=", "+", ",", "!", "$", "'", "*", "(", ")", "&", "[", "]",
    "\\", "?", "#", " ", "\t", "\x00", "\x7f", "\xe9",
]
SEGMENT = st.lists(st.sampled_from(PIECES), max_size=4).map("".join)
PATH_TEXT = st.lists(SEGMENT, min_size=1, max_size=8).map(lambda s: "/" + "/".join(s))
RAW_PATH = st.one_of(
    PATH_TEXT.map(lambda t: t.encode("utf-8")),
    st.binary(max_size=40),
    st.binary(max_size=40).map(lambda b: b"/" + b),
)
QUERY = st.one_of(st.none(), st.lists(st.sampled_from(["a=1", "b", "%2F", "..", "/", "?", "#",
                                                       "\\", ";", " "]), max_size=4).map("&".join))

_ESCAPE = re.compile(r"%(..)")
_UNRESERVED = set(string.ascii_letters + string.digits + "-._~")
# Route prefixes as config.py accepts them: normalised, plain characters.
PREFIXES = ["/app", "/app/admin", "/api", "/a", "/a/b/c", "/x;y", "/~u", "/app.v2"]


def assertNormal(case: SynchronousTestCase, path: str, allow_encoded_slashes: bool) -> None:
    """C{path} is what normalise_path may return."""
    case.assertTrue(path.startswith("/"), path)
    case.assertTrue(path.isascii(), path)
    case.assertNotIn("//", path)
    for segment in path.split("/")[1:]:
        name = segment.split(";", 1)[0]
        case.assertNotIn(name, (".", ".."), path)
    for hexpair in _ESCAPE.findall(path):
        case.assertEqual(hexpair, hexpair.upper(), path)
        decoded = chr(int(hexpair, 16))
        case.assertNotIn(decoded, _UNRESERVED, path)
        case.assertNotEqual(hexpair, "00", path)
        if not allow_encoded_slashes:
            case.assertNotIn(hexpair, ("2F", "5C"), path)
    case.assertTrue(all(0x21 <= ord(c) < 0x7F and c not in "?#\\" for c in path), path)


def _route(index: int, path: str, upstream: str = "http://up.test", **kwargs: object) -> RouteConfig:
    return RouteConfig(index=index, path=path, upstream=upstream, **kwargs)  # type: ignore[arg-type]


ROUTE_OPTIONS = st.fixed_dictionaries({
    "strip_prefix": st.booleans(),
    "replace_prefix": st.one_of(st.none(), st.sampled_from(["/", "/new", "/n/m/"])),
    "allow_encoded_slashes": st.booleans(),
    "upstream": st.sampled_from(["http://up.test", "http://up.test/base", "https://up.test/b/"]),
})


@st.composite
def tables(draw: st.DrawFn) -> List[RouteConfig]:
    prefixes = draw(st.lists(st.sampled_from(PREFIXES), unique=True, max_size=4))
    routes = [_route(0, "/")]
    for index, prefix in enumerate(prefixes, 1):
        options = draw(ROUTE_OPTIONS)
        if options["strip_prefix"] and options["replace_prefix"] is not None:
            options["replace_prefix"] = None
        routes.append(_route(index, prefix, **options))
    return routes


@st.composite
def targets(draw: st.DrawFn) -> bytes:
    """Origin-form targets built around the route prefixes, or absolute-form ones."""
    head = draw(st.sampled_from(["", "/app", "/app/admin", "/api", "/a/b", "/x;y", "/APP"]))
    path = head + draw(PATH_TEXT)
    query = draw(QUERY)
    target = path if query is None else path + "?" + query
    form = draw(st.sampled_from(["origin", "origin", "http", "https"]))
    if form != "origin":
        target = f"{form}://{draw(st.sampled_from(['up.test', 'App.Test:80', '']))}{target}"
    return target.encode("utf-8")


class NormalisePathTests(SynchronousTestCase):
    @given(RAW_PATH, st.booleans())
    def test_result_is_normal(self, raw: bytes, allow: bool) -> None:
        """
        normalise_path answers a path without dot segments, doubled slashes,
        decodable unreserved escapes or unsafe bytes, or raises
        BadRequestTarget with a reason; nothing else.
        """
        try:
            path = normalise_path(raw, allow)
        except BadRequestTarget as e:
            self.assertTrue(e.reason)
            self.assertTrue(e.reason.isascii() and e.reason.isprintable(), e.reason)
            return
        assertNormal(self, path, allow)

    @given(RAW_PATH, st.booleans())
    def test_idempotent(self, raw: bytes, allow: bool) -> None:
        """Normalising a normalised path changes nothing."""
        try:
            path = normalise_path(raw, allow)
        except BadRequestTarget:
            return
        self.assertEqual(normalise_path(path.encode("ascii"), allow), path)

    @given(PATH_TEXT)
    def test_encoded_slashes_only_widen(self, text: str) -> None:
        """
        Allowing encoded slashes never changes the result of a path that is
        accepted without them.
        """
        raw = text.encode("utf-8")
        try:
            strict = normalise_path(raw, False)
        except BadRequestTarget:
            return
        self.assertEqual(normalise_path(raw, True), strict)


class MatchTests(SynchronousTestCase):
    @given(tables(), st.one_of(st.none(), st.sampled_from([b"up.test", b"UP.test.:8080", b"x"])),
           st.one_of(targets(), st.binary(max_size=60)))
    def test_match_or_bad_request(self, routes: List[RouteConfig], host: Optional[bytes],
                                  target: bytes) -> None:
        """
        With a root route, match answers a RouteMatch or raises
        BadRequestTarget, whatever the target and Host.
        """
        try:
            found = RouteTable(routes).match(host, target)
        except BadRequestTarget as e:
            self.assertTrue(e.reason)
            return
        self.assertIsInstance(found, RouteMatch)

    @given(tables(), targets())
    @scaled(300)
    def test_stays_under_prefix(self, routes: List[RouteConfig], target: bytes) -> None:
        """
        The chosen route's prefix holds the normalised path (parameters
        dropped), no longer prefix would have held it, and the path is the
        target's path normalised.
        """
        try:
            found = RouteTable(routes).match(None, target)
        except BadRequestTarget:
            return
        assert found is not None
        names = [s.split(";", 1)[0] for s in found.path.split("/")]
        plain = "/" + "/".join(n for n in names if n)
        prefix = found.route.path
        if prefix != "/":
            self.assertTrue(plain == prefix or plain.startswith(prefix + "/"), (plain, prefix))
        for other in routes:
            if len(other.path) > len(prefix) and other.path != "/":
                self.assertFalse(plain == other.path or plain.startswith(other.path + "/"),
                                 (plain, other.path, prefix))
        if target.startswith(b"/"):
            raw_path = target.split(b"?", 1)[0]
            self.assertEqual(found.path, normalise_path(raw_path, True))

    @given(tables(), targets())
    @scaled(300)
    def test_upstream_target_origin_form(self, routes: List[RouteConfig], target: bytes) -> None:
        """
        The upstream target is ASCII origin-form: it starts with one C{/},
        holds no blank, control, C{#} or backslash, and its path is already
        normal, so the upstream reads the path the decision was made on.
        """
        try:
            found = RouteTable(routes).match(None, target)
        except BadRequestTarget:
            return
        assert found is not None
        upstream = found.upstream_target
        self.assertTrue(upstream.startswith(b"/"), upstream)
        self.assertFalse(upstream.startswith(b"//"), upstream)
        self.assertTrue(all(0x21 <= b < 0x7F for b in upstream), upstream)
        self.assertNotIn(b"#", upstream)
        path = upstream.split(b"?", 1)[0]
        self.assertNotIn(b"\\", path)
        text = path.decode("ascii")
        assertNormal(self, text, found.route.allow_encoded_slashes)
        self.assertEqual(normalise_path(path, found.route.allow_encoded_slashes), text)
        if found.query is not None:
            self.assertTrue(upstream.endswith(b"?" + found.query), upstream)
