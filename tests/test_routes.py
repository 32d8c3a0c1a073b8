"""
Tests for L{oidcproxy.proxy.routes}.
"""

# The project targets Python 3.9 and spells optional types Optional[X] (UP007 is
# ignored in pyproject.toml); newer ruff reports them as UP045 instead.

from __future__ import annotations

from typing import Optional, Sequence

from twisted.trial.unittest import SynchronousTestCase

from oidcproxy.config import RouteConfig
from oidcproxy.proxy.routes import (
    BadRequestTarget,
    RouteMatch,
    RouteTable,
    normalise_path,
    request_host,
)

UPSTREAM = "http://127.0.0.1:9000"


def route(index: int, path: str = "/", **kwargs: object) -> RouteConfig:
    kwargs.setdefault("upstream", UPSTREAM)
    return RouteConfig(index=index, path=path, **kwargs)  # type: ignore[arg-type]


class _Helpers(SynchronousTestCase):
    def assertBad(self, call: object, *args: object) -> BadRequestTarget:
        """C{call(*args)} raises L{BadRequestTarget} with a non-empty reason."""
        try:
            result = call(*args)  # type: ignore[operator]
        except BadRequestTarget as e:
            self.assertIsInstance(e.reason, str, args)
            self.assertTrue(e.reason, args)
            return e
        self.fail(f"{args!r}: expected BadRequestTarget, got {result!r}")

    def matchIndex(
        self, table: RouteTable, target: bytes, host: Optional[bytes] = None
    ) -> Optional[int]:
        found = table.match(host, target)
        return None if found is None else found.route.index


class RequestHostTests(_Helpers):
    """L{request_host}."""

    def test_lowercased(self) -> None:
        """The host name is returned in lower case."""
        self.assertEqual(request_host(b"Example.COM"), "example.com")

    def test_port_removed(self) -> None:
        """A port is removed, also from an IPv6 literal (which keeps its brackets)."""
        cases = [
            (b"example.com:8080", "example.com"),
            (b"EXAMPLE.com:80", "example.com"),
            (b"[::1]:8080", "[::1]"),
            (b"[::1]", "[::1]"),
            (b"127.0.0.1:443", "127.0.0.1"),
            (b"example.com:", "example.com"),
        ]
        for value, expected in cases:
            self.assertEqual(request_host(value), expected, value)

    def test_one_trailing_dot_removed(self) -> None:
        """One trailing dot is removed, before or without a port."""
        self.assertEqual(request_host(b"example.com."), "example.com")
        self.assertEqual(request_host(b"example.com.:8080"), "example.com")

    def test_missing_or_empty(self) -> None:
        """A missing or empty Host gives None."""
        self.assertIsNone(request_host(None))
        self.assertIsNone(request_host(b""))

    def test_invalid_characters(self) -> None:
        """Anything but letters, digits, '-', '.', ':', '[' and ']' is rejected."""
        for value in [
            b"exa mple.com",
            b" example.com",
            b"example.com\t",
            b"user@example.com",
            b"example.com/x",
            b"example_com",
            b"ex\xc3\xa9mple.com",
            b"example.com\x00",
            b"example.com%2F",
        ]:
            self.assertBad(request_host, value)

    def test_malformed(self) -> None:
        """A bad port, unbalanced brackets, empty labels or no name are rejected."""
        for value in [
            b"example.com:80a",
            b"example.com:80:90",
            b"::1",
            b"[::1",
            b"[]",
            b"[::1]x",
            b"[::1]]",
            b"ex[a]mple.com",
            b"example.com]",
            b".",
            b":80",
            b".example.com",
            b"a..example.com",
            b"example.com..",
        ]:
            self.assertBad(request_host, value)


class NormalisePathTests(_Helpers):
    """L{normalise_path}."""

    def test_normal_paths_unchanged(self) -> None:
        """An already normal path is returned as it is, as a str."""
        for path in ["/", "/a", "/a/", "/a/b.c/d", "/.well-known/x", "/a..b/c.", "/~u/-_."]:
            result = normalise_path(path.encode("ascii"))
            self.assertEqual(result, path, path)
            self.assertIsInstance(result, str)

    def test_must_start_with_slash(self) -> None:
        """A path that does not start with '/' is rejected."""
        for raw in [b"", b"a/b", b"*", b"%2Fa"]:
            self.assertBad(normalise_path, raw)

    def test_backslash(self) -> None:
        """A raw backslash is rejected anywhere, even when encoded slashes are allowed."""
        for raw in [b"/a\\b", b"\\a", b"/a/\\", b"/..\\x"]:
            self.assertBad(normalise_path, raw)
            self.assertBad(normalise_path, raw, True)

    def test_forbidden_bytes(self) -> None:
        """Controls, space, DEL, non-ASCII bytes, '#' and '?' are rejected."""
        for raw in [
            b"/a b",
            b"/a\tb",
            b"/a\x00b",
            b"/a\rb",
            b"/a\nb",
            b"/a\x7fb",
            b"/caf\xc3\xa9",
            b"/a\x80",
            b"/a#b",
            b"/a?b",
        ]:
            self.assertBad(normalise_path, raw)

    def test_unreserved_decoded(self) -> None:
        """Escapes of unreserved characters are decoded, whatever the hex case."""
        cases = [
            (b"/%61%62c", "/abc"),
            (b"/%41%5a%30%39", "/AZ09"),
            (b"/%2D%2e%5F%7e", "/-._~"),
            (b"/%7E%2Euser", "/~.user"),
        ]
        for raw, expected in cases:
            self.assertEqual(normalise_path(raw), expected, raw)

    def test_other_escapes_uppercased(self) -> None:
        """Other escapes stay encoded, with upper-case hex."""
        cases = [
            (b"/caf%c3%a9", "/caf%C3%A9"),
            (b"/a%20b", "/a%20b"),
            (b"/a%3bb", "/a%3Bb"),
            (b"/a%3fb%23c", "/a%3Fb%23c"),
            (b"/%25", "/%25"),
            (b"/%7f%ff", "/%7F%FF"),
        ]
        for raw, expected in cases:
            self.assertEqual(normalise_path(raw), expected, raw)

    def test_decoded_only_once(self) -> None:
        """
        A double-encoded escape is not decoded twice: C{%25} stays C{%25} and
        the characters after it are plain text, left as they are.
        """
        cases = [
            (b"/%252e%252e/x", "/%252e%252e/x"),
            (b"/%252E%252E/x", "/%252E%252E/x"),
            (b"/a/%252f", "/a/%252f"),
            (b"/%2541", "/%2541"),
            (b"/%25%32%65", "/%252e"),
        ]
        for raw, expected in cases:
            self.assertEqual(normalise_path(raw), expected, raw)

    def test_invalid_percent_encoding(self) -> None:
        """'%' not followed by two hex digits is rejected."""
        for raw in [b"/a%zz", b"/a%2", b"/a%", b"/%g0", b"/a%%41", b"/a%-1"]:
            e = self.assertBad(normalise_path, raw)
            self.assertEqual(e.reason, "invalid percent-encoding in the path", raw)

    def test_encoded_nul(self) -> None:
        """%00 is rejected, even when encoded slashes are allowed."""
        for raw in [b"/a%00b", b"/%00"]:
            for allow in (False, True):
                e = self.assertBad(normalise_path, raw, allow)
                self.assertEqual(e.reason, "encoded NUL in the path", (raw, allow))

    def test_encoded_slash_rejected_by_default(self) -> None:
        """%2F and %5C, in either case, are rejected by default."""
        for raw in [b"/a%2Fb", b"/a%2fb", b"/a%5Cb", b"/a%5cb", b"/a/..%2f.."]:
            e = self.assertBad(normalise_path, raw)
            self.assertEqual(e.reason, "encoded slash or backslash in the path", raw)

    def test_encoded_slash_kept_when_allowed(self) -> None:
        """
        With allow_encoded_slashes, %2F and %5C stay encoded in upper case and
        do not separate segments.
        """
        cases = [
            (b"/a%2fb", "/a%2Fb"),
            (b"/a%5cb/c", "/a%5Cb/c"),
            (b"/g%2Fp/x/../y", "/g%2Fp/y"),
            (b"/a%2Fb/..", "/"),
            (b"/x/a%2F%2Fb", "/x/a%2F%2Fb"),
        ]
        for raw, expected in cases:
            self.assertEqual(normalise_path(raw, True), expected, raw)

    def test_dot_next_to_encoded_slash(self) -> None:
        """
        With allow_encoded_slashes, a '.' or '..' between encoded slashes is
        rejected: an upstream that decodes them would see a dot segment.
        """
        for raw in [
            b"/a/..%2f..",
            b"/public/%2E%2E%2Fadmin",
            b"/a%2F..",
            b"/a%5C.%5Cb",
            b"/a%2F..;x",
            b"/a%2F..%3Bx",
        ]:
            self.assertBad(normalise_path, raw, True)

    def test_dot_segments(self) -> None:
        """'.' and '..' segments are resolved; a trailing one leaves a trailing slash."""
        cases = [
            (b"/public/../admin", "/admin"),
            (b"/a/./b", "/a/b"),
            (b"/a/b/..", "/a/"),
            (b"/a/b/.", "/a/b/"),
            (b"/a/b/../", "/a/"),
            (b"/a/b/../../c", "/c"),
            (b"/a/..", "/"),
            (b"/.", "/"),
            (b"/./", "/"),
            (b"/a/.b/..c/c..", "/a/.b/..c/c.."),
        ]
        for raw, expected in cases:
            self.assertEqual(normalise_path(raw), expected, raw)

    def test_encoded_dot_segments(self) -> None:
        """Encoded dots are decoded first, so they act as dot segments."""
        cases = [
            (b"/public/%2e%2e/admin", "/admin"),
            (b"/public/%2E%2E/admin", "/admin"),
            (b"/public/.%2e/admin", "/admin"),
            (b"/a/%2e/b", "/a/b"),
            (b"/a/b/%2e%2e", "/a/"),
        ]
        for raw, expected in cases:
            self.assertEqual(normalise_path(raw), expected, raw)

    def test_dot_segments_with_parameters(self) -> None:
        """A segment whose part before ';' is '.' or '..' is resolved as a dot segment."""
        cases = [
            (b"/x/..;/admin", "/admin"),
            (b"/x/..;x=1/admin", "/admin"),
            (b"/x/.;y/admin", "/x/admin"),
            (b"/x/%2e%2e;/admin", "/admin"),
            (b"/a/b/..;", "/a/"),
        ]
        for raw, expected in cases:
            self.assertEqual(normalise_path(raw), expected, raw)

    def test_dot_segment_with_encoded_semicolon(self) -> None:
        """
        A segment that is '.' or '..' before an encoded ';' is rejected: an
        upstream that decodes before stripping parameters would see a dot
        segment. Other segments with an encoded ';' are kept.
        """
        for raw in [b"/public/..%3B/admin", b"/a/..%3bx", b"/a/.%3B", b"/a/%2e%2e%3b/b"]:
            e = self.assertBad(normalise_path, raw)
            self.assertEqual(e.reason, "ambiguous dot segment in the path", raw)
        cases = [
            (b"/a/...%3B", "/a/...%3B"),
            (b"/a/.x%3B", "/a/.x%3B"),
            (b"/a/x..%3B", "/a/x..%3B"),
        ]
        for raw, expected in cases:
            self.assertEqual(normalise_path(raw), expected, raw)

    def test_above_root(self) -> None:
        """A '..' that would go above the root is rejected."""
        for raw in [b"/..", b"/../x", b"/%2e%2e/x", b"/a/../..", b"/a/../../b", b"/..;/x", b"//.."]:
            e = self.assertBad(normalise_path, raw)
            self.assertEqual(e.reason, "the path goes above the root", raw)

    def test_slashes_merged(self) -> None:
        """Runs of slashes are merged into one, also a trailing run."""
        cases = [
            (b"//admin", "/admin"),
            (b"//a///b", "/a/b"),
            (b"/a//", "/a/"),
            (b"//", "/"),
            (b"/a/.//b", "/a/b"),
            (b"/a//../b", "/b"),
        ]
        for raw, expected in cases:
            self.assertEqual(normalise_path(raw), expected, raw)

    def test_segment_parameters_kept(self) -> None:
        """Segment parameters are kept in the normalised path."""
        cases = [
            (b"/admin;jsessionid=1/x", "/admin;jsessionid=1/x"),
            (b"/a;b;c/d;", "/a;b;c/d;"),
            (b"/;x/admin", "/;x/admin"),
            (b"/a;%41", "/a;A"),
        ]
        for raw, expected in cases:
            self.assertEqual(normalise_path(raw), expected, raw)


class TargetTests(_Helpers):
    """L{RouteTable.match}: parsing the request target."""

    def setUp(self) -> None:
        self.table = RouteTable([route(0, "/"), route(1, "/admin")])

    def test_origin_form(self) -> None:
        """An origin-form target gives its path, query and the Host header's host."""
        found = self.table.match(b"Example.com:8080", b"/admin/x?a=1")
        self.assertEqual(
            found,
            RouteMatch(
                route=route(1, "/admin"),
                host="example.com",
                path="/admin/x",
                query=b"a=1",
                upstream_target=b"/admin/x?a=1",
            ),
        )

    def test_missing_host(self) -> None:
        """Without a Host header the match has no host."""
        found = self.table.match(None, b"/x")
        assert found is not None
        self.assertIsNone(found.host)
        self.assertEqual(found.route.index, 0)

    def test_invalid_host_header(self) -> None:
        """A malformed Host header is a bad request."""
        self.assertBad(self.table.match, b"evil host", b"/x")
        self.assertBad(self.table.match, b"a@b", b"/x")

    def test_forbidden_bytes(self) -> None:
        """Controls, space, DEL, non-ASCII and '#' are rejected in the path and the query."""
        for target in [
            b"/a\tb",
            b"/a b",
            b"/a\x00b",
            b"/a\x7f",
            b"/caf\xc3\xa9",
            b"/a#frag",
            b"/#",
            b"/x?a\tb",
            b"/x?a b",
            b"/x?a\x00",
            b"/x?\xff",
            b"/x?a#b",
            b"/x\r\nX-Evil: 1",
            b"http://example.com/a b",
        ]:
            self.assertBad(self.table.match, None, target)

    def test_other_forms_rejected(self) -> None:
        """Asterisk, authority, relative and non-http(s) absolute forms are rejected."""
        for target in [
            b"",
            b"*",
            b"example.com:443",
            b"admin",
            b"admin/x",
            b"./admin",
            b"?x",
            b"ftp://example.com/admin",
            b"file:///etc/passwd",
            b"http:/admin",
            b"http:admin",
            b"httpx://example.com/",
            b"http://",
            b"http:///admin",
            b"https://?x",
        ]:
            self.assertBad(self.table.match, b"example.com", target)

    def test_absolute_form(self) -> None:
        """An absolute-form target gives the path, and its authority replaces the Host."""
        table = RouteTable([route(0, "/"), route(1, "/admin", host="a.example")])
        found = table.match(b"b.example", b"http://A.Example:8080/admin/x?q")
        self.assertEqual(
            found,
            RouteMatch(
                route=route(1, "/admin", host="a.example"),
                host="a.example",
                path="/admin/x",
                query=b"q",
                upstream_target=b"/admin/x?q",
            ),
        )
        found = table.match(b"a.example", b"http://b.example/admin/x")
        assert found is not None
        self.assertEqual((found.route.index, found.host), (0, "b.example"))

    def test_absolute_form_scheme_case_insensitive(self) -> None:
        """http and https absolute forms are accepted in any case."""
        for target in [
            b"http://h/admin",
            b"HTTP://h/admin",
            b"https://h/admin",
            b"HtTpS://h/admin",
        ]:
            found = self.table.match(None, target)
            assert found is not None, target
            self.assertEqual(
                (found.route.index, found.host, found.path), (1, "h", "/admin"), target
            )

    def test_absolute_form_empty_path(self) -> None:
        """An absolute-form target without a path has the path '/'."""
        cases = [
            (b"http://h", "/", None, b"/"),
            (b"http://h:81", "/", None, b"/"),
            (b"http://h?x=1", "/", b"x=1", b"/?x=1"),
            (b"http://h?", "/", b"", b"/?"),
            (b"http://h?/admin", "/", b"/admin", b"/?/admin"),
        ]
        for target, path, query, upstream in cases:
            found = self.table.match(None, target)
            assert found is not None, target
            self.assertEqual(
                (found.route.index, found.host, found.path, found.query, found.upstream_target),
                (0, "h", path, query, upstream),
                target,
            )

    def test_absolute_form_normalised(self) -> None:
        """An absolute-form path is normalised like an origin-form one."""
        found = self.table.match(None, b"http://h//public/%2e%2e/admin")
        assert found is not None
        self.assertEqual((found.route.index, found.path), (1, "/admin"))
        self.assertBad(self.table.match, None, b"http://h/%2e%2e/admin")

    def test_absolute_form_bad_authority(self) -> None:
        """A malformed authority in an absolute-form target is rejected."""
        for target in [
            b"http://user@h/admin",
            b"http://user:pw@h/admin",
            b"http://h:x/admin",
            b"http://:80/admin",
            b"http://h%2F/admin",
        ]:
            self.assertBad(self.table.match, b"example.com", target)

    def test_query_passed_through(self) -> None:
        """The query is passed through byte for byte, never normalised."""
        cases = [
            (b"/?/../admin", 0, "/", b"/../admin"),
            (b"/x?a=%2F..%2f&b=%zz", 0, "/x", b"a=%2F..%2f&b=%zz"),
            (b"/x?a=1&a=2;c=\\d", 0, "/x", b"a=1&a=2;c=\\d"),
            (b"/admin?q?r", 1, "/admin", b"q?r"),
            (b"/admin/?%00", 1, "/admin/", b"%00"),
        ]
        for target, index, path, query in cases:
            found = self.table.match(None, target)
            assert found is not None, target
            self.assertEqual(
                (found.route.index, found.path, found.query, found.upstream_target),
                (index, path, query, path.encode("ascii") + b"?" + query),
                target,
            )

    def test_empty_query_kept(self) -> None:
        """A '?' with an empty query is kept; no '?' gives no query."""
        found = self.table.match(None, b"/admin?")
        assert found is not None
        self.assertEqual((found.query, found.upstream_target), (b"", b"/admin?"))
        found = self.table.match(None, b"/admin")
        assert found is not None
        self.assertEqual((found.query, found.upstream_target), (None, b"/admin"))

    def test_path_errors(self) -> None:
        """Path problems found by the normalisation are bad requests."""
        for target in [
            b"/a%00b",
            b"/a%zz",
            b"/a%2",
            b"/a\\b",
            b"/a%5Cb",
            b"/a%2Fb",
            b"/%2e%2e/x",
            b"/a/..%2f..",
            b"/public/%2E%2E%2Fadmin",
            b"/..",
        ]:
            self.assertBad(self.table.match, None, target)


class MatchingTests(_Helpers):
    """L{RouteTable.match}: choosing the route."""

    def test_root_matches_everything(self) -> None:
        """A '/' route matches every path."""
        table = RouteTable([route(7, "/")])
        for target in [b"/", b"/x", b"/x/y/", b"/.well-known/a", b"/;x"]:
            self.assertEqual(self.matchIndex(table, target), 7, target)

    def test_segment_boundary(self) -> None:
        """A prefix matches only on a segment boundary."""
        table = RouteTable([route(0, "/api"), route(1, "/api/v1")])
        cases = [
            (b"/api", 0),
            (b"/api/", 0),
            (b"/api/x", 0),
            (b"/api/v1", 1),
            (b"/api/v1/", 1),
            (b"/api/v1/x", 1),
            (b"/api/v10", 0),
            (b"/apix", None),
            (b"/ap", None),
            (b"/API", None),
            (b"/", None),
            (b"/x/api", None),
        ]
        for target, expected in cases:
            self.assertEqual(self.matchIndex(table, target), expected, target)

    def test_no_match(self) -> None:
        """None is returned when no route matches, also for a host mismatch."""
        table = RouteTable([route(0, "/api"), route(1, "/", host="a.example")])
        self.assertIsNone(table.match(None, b"/other"))
        self.assertIsNone(table.match(b"b.example", b"/other"))
        self.assertIsNone(RouteTable([]).match(b"a.example", b"/"))

    def test_longest_prefix(self) -> None:
        """The longest matching prefix wins, whatever the order of the routes."""
        routes = [route(0, "/"), route(1, "/a"), route(2, "/a/b/c"), route(3, "/a/b")]
        cases = [
            (b"/", 0),
            (b"/x", 0),
            (b"/a", 1),
            (b"/a/x", 1),
            (b"/a/b", 3),
            (b"/a/b/x", 3),
            (b"/a/b/c", 2),
            (b"/a/b/c/d/e", 2),
            (b"/a/bc", 1),
        ]
        for order in (routes, list(reversed(routes))):
            table = RouteTable(order)
            for target, expected in cases:
                self.assertEqual(self.matchIndex(table, target), expected, target)

    def test_host_precedence(self) -> None:
        """On the same prefix an exact host beats a wildcard, which beats no host."""
        routes = [
            route(0, "/x"),
            route(1, "/x", host="*.example.com"),
            route(2, "/x", host="api.example.com"),
        ]
        cases = [
            (b"api.example.com", 2),
            (b"API.Example.Com:443", 2),
            (b"api.example.com.", 2),
            (b"www.example.com", 1),
            (b"example.com", 0),
            (b"other.org", 0),
            (None, 0),
        ]
        for order in (routes, list(reversed(routes))):
            table = RouteTable(order)
            for host, expected in cases:
                self.assertEqual(self.matchIndex(table, b"/x/y", host), expected, host)

    def test_longer_prefix_beats_host(self) -> None:
        """A longer prefix wins over a more specific host on a shorter prefix."""
        table = RouteTable([route(0, "/", host="a.example"), route(1, "/api")])
        self.assertEqual(self.matchIndex(table, b"/api/x", b"a.example"), 1)
        self.assertEqual(self.matchIndex(table, b"/other", b"a.example"), 0)

    def test_host_falls_back_to_shorter_prefix(self) -> None:
        """A prefix whose routes are all for other hosts does not stop the search."""
        table = RouteTable([route(0, "/"), route(1, "/api", host="a.example")])
        self.assertEqual(self.matchIndex(table, b"/api/x", b"a.example"), 1)
        self.assertEqual(self.matchIndex(table, b"/api/x", b"b.example"), 0)
        self.assertEqual(self.matchIndex(table, b"/api/x"), 0)

    def test_exact_host(self) -> None:
        """An exact host compares case-insensitively and needs a Host."""
        table = RouteTable([route(0, "/", host="app.example")])
        cases = [
            (b"app.example", 0),
            (b"APP.EXAMPLE", 0),
            (b"app.example:8443", 0),
            (b"x.app.example", None),
            (b"app.example.org", None),
            (b"pp.example", None),
            (None, None),
            (b"", None),
        ]
        for host, expected in cases:
            self.assertEqual(self.matchIndex(table, b"/", host), expected, host)

    def test_wildcard_host(self) -> None:
        """'*.example.com' matches names with at least one more label, not the domain."""
        table = RouteTable([route(0, "/", host="*.example.com")])
        cases = [
            (b"a.example.com", 0),
            (b"A.B.EXAMPLE.COM:80", 0),
            (b"a-b.example.com.", 0),
            (b"example.com", None),
            (b"aexample.com", None),
            (b"example.com.evil", None),
            (b"a.example.org", None),
            (None, None),
        ]
        for host, expected in cases:
            self.assertEqual(self.matchIndex(table, b"/", host), expected, host)

    def test_longest_wildcard(self) -> None:
        """Of two wildcards on the same prefix, the longer suffix wins."""
        table = RouteTable(
            [route(0, "/", host="*.example.com"), route(1, "/", host="*.eu.example.com")]
        )
        self.assertEqual(self.matchIndex(table, b"/", b"x.eu.example.com"), 1)
        self.assertEqual(self.matchIndex(table, b"/", b"eu.example.com"), 0)
        self.assertEqual(self.matchIndex(table, b"/", b"x.us.example.com"), 0)

    def test_duplicate_first_wins(self) -> None:
        """Two routes with the same host and prefix: the first one given wins."""
        table = RouteTable([route(3, "/a"), route(4, "/a"), route(5, "/", host="h"),
                            route(6, "/", host="h")])
        self.assertEqual(self.matchIndex(table, b"/a"), 3)
        self.assertEqual(self.matchIndex(table, b"/", b"h"), 5)

    def test_normalised_path_is_matched(self) -> None:
        """Routing uses the normalised path, so tricks cannot dodge a prefix."""
        table = RouteTable([route(0, "/"), route(1, "/admin"), route(2, "/public")])
        cases = [
            (b"/public/../admin", 1, "/admin"),
            (b"/public/%2e%2e/admin", 1, "/admin"),
            (b"/public/.%2E/admin/x", 1, "/admin/x"),
            (b"/public/./x", 2, "/public/x"),
            (b"//admin", 1, "/admin"),
            (b"///admin//x", 1, "/admin/x"),
            (b"/%61dmin", 1, "/admin"),
            (b"/x/..;/admin", 1, "/admin"),
            (b"/admin/../public", 2, "/public"),
            (b"/admin%2e", 0, "/admin."),
        ]
        for target, index, path in cases:
            found = table.match(None, target)
            assert found is not None, target
            self.assertEqual((found.route.index, found.path), (index, path), target)

    def test_segment_parameters_ignored_for_matching(self) -> None:
        """
        Segment parameters are ignored when matching but kept in the path,
        so C{/admin;x=1/secret} is routed like C{/admin/secret}.
        """
        table = RouteTable([route(0, "/"), route(1, "/admin"), route(2, "/admin/secret")])
        cases = [
            (b"/admin;jsessionid=1/x", 1, "/admin;jsessionid=1/x"),
            (b"/admin;x=1/secret", 2, "/admin;x=1/secret"),
            (b"/admin;", 1, "/admin;"),
            (b"/admin;/secret;a/b", 2, "/admin;/secret;a/b"),
            (b"/;x/admin", 1, "/;x/admin"),
            (b"/admin/;/secret", 2, "/admin/;/secret"),
            (b"/adm;in", 0, "/adm;in"),
            (b"/admin%3bx/secret", 0, "/admin%3Bx/secret"),
        ]
        for target, index, path in cases:
            found = table.match(None, target)
            assert found is not None, target
            self.assertEqual((found.route.index, found.path), (index, path), target)

    def test_encoded_slash_route(self) -> None:
        """
        Encoded slashes are accepted for a route that allows them, and
        rejected when the chosen route does not.
        """
        table = RouteTable([route(0, "/"), route(1, "/files", allow_encoded_slashes=True)])
        found = table.match(None, b"/files/a%2fb?x")
        assert found is not None
        self.assertEqual(
            (found.route.index, found.path, found.upstream_target),
            (1, "/files/a%2Fb", b"/files/a%2Fb?x"),
        )
        found = table.match(None, b"/files/x/y%5Cz")
        assert found is not None
        self.assertEqual((found.route.index, found.path), (1, "/files/x/y%5Cz"))
        # "/files%5Cx" is one segment: it falls to the "/" route, which refuses it.
        self.assertBad(table.match, None, b"/files%5Cx")
        self.assertBad(table.match, None, b"/files%2Fx")
        self.assertBad(table.match, None, b"/other/a%2Fb")
        self.assertBad(table.match, None, b"/files/..%2F..")

    def test_encoded_slash_no_route_allows(self) -> None:
        """Without any route allowing them, encoded slashes are always rejected."""
        table = RouteTable([route(0, "/")])
        self.assertBad(table.match, None, b"/a%2Fb")
        self.assertBad(table.match, None, b"/a%5cb")

    def test_encoded_slash_unmatched(self) -> None:
        """An encoded slash in a path no route matches gives no match, not an error."""
        table = RouteTable([route(0, "/files", allow_encoded_slashes=True)])
        self.assertIsNone(table.match(None, b"/other/a%2Fb"))


class RewriteTests(_Helpers):
    """L{RouteTable.match}: the upstream target."""

    def assertTargets(
        self, routes: Sequence[RouteConfig], cases: Sequence[tuple[bytes, bytes]]
    ) -> None:
        table = RouteTable(routes)
        for target, expected in cases:
            found = table.match(None, target)
            assert found is not None, target
            self.assertEqual(found.upstream_target, expected, target)
            self.assertIsInstance(found.upstream_target, bytes)

    def test_no_rewrite(self) -> None:
        """By default the normalised path goes upstream unchanged."""
        self.assertTargets(
            [route(0, "/api")],
            [
                (b"/api", b"/api"),
                (b"/api/", b"/api/"),
                (b"/api/x/../y?z", b"/api/y?z"),
                (b"//api//x", b"/api/x"),
                (b"/api/caf%c3%a9", b"/api/caf%C3%A9"),
            ],
        )

    def test_strip_prefix(self) -> None:
        """strip_prefix removes the prefix, leaving at least '/'."""
        self.assertTargets(
            [route(0, "/api", strip_prefix=True), route(1, "/a/b", strip_prefix=True)],
            [
                (b"/api", b"/"),
                (b"/api/", b"/"),
                (b"/api/x", b"/x"),
                (b"/api/x/", b"/x/"),
                (b"/api/x/y?q=/api", b"/x/y?q=/api"),
                (b"/api?", b"/?"),
                (b"/a/b", b"/"),
                (b"/a/b/c", b"/c"),
                (b"/a/b/a/b", b"/a/b"),
            ],
        )

    def test_replace_prefix(self) -> None:
        """replace_prefix replaces the prefix."""
        self.assertTargets(
            [route(0, "/api", replace_prefix="/v2"), route(1, "/a/b", replace_prefix="/c/d")],
            [
                (b"/api", b"/v2"),
                (b"/api/", b"/v2/"),
                (b"/api/x", b"/v2/x"),
                (b"/api/x?y", b"/v2/x?y"),
                (b"/a/b/e", b"/c/d/e"),
            ],
        )

    def test_replace_prefix_empty_or_root(self) -> None:
        """replace_prefix '' (or '/') behaves as strip_prefix."""
        for replacement in ("", "/"):
            self.assertTargets(
                [route(0, "/api", replace_prefix=replacement)],
                [(b"/api", b"/"), (b"/api/", b"/"), (b"/api/x", b"/x")],
            )

    def test_root_prefix(self) -> None:
        """With the '/' prefix strip does nothing and replace prepends."""
        self.assertTargets(
            [route(0, "/", strip_prefix=True)],
            [(b"/", b"/"), (b"/x", b"/x"), (b"/x/", b"/x/")],
        )
        self.assertTargets(
            [route(0, "/", replace_prefix="/v2")],
            [(b"/", b"/v2/"), (b"/x", b"/v2/x"), (b"/x/y?q", b"/v2/x/y?q")],
        )

    def test_upstream_base_path(self) -> None:
        """The upstream URL's base path is prepended, after the prefix rewrite."""
        self.assertTargets(
            [
                route(0, "/", upstream="https://api.internal/base"),
                route(1, "/api", upstream="http://h:1/base", strip_prefix=True),
                route(2, "/v", upstream="http://h:1/b/c", replace_prefix="/v2"),
                route(3, "/keep", upstream="http://h:1/base"),
            ],
            [
                (b"/", b"/base/"),
                (b"/x?q", b"/base/x?q"),
                (b"/api", b"/base/"),
                (b"/api/x", b"/base/x"),
                (b"/v/x", b"/b/c/v2/x"),
                (b"/v", b"/b/c/v2"),
                (b"/keep/x", b"/base/keep/x"),
            ],
        )

    def test_rewrite_with_segment_parameters(self) -> None:
        """The prefix is rewritten on the segments it matched, parameters and all."""
        self.assertTargets(
            [route(0, "/admin", strip_prefix=True), route(1, "/a/b", replace_prefix="/z")],
            [
                (b"/admin;x=1/secret", b"/secret"),
                (b"/admin;x=1", b"/"),
                (b"/admin;x/", b"/"),
                (b"/;y/admin/s;p/", b"/s;p/"),
                (b"/a;1/;2/b;3/c", b"/z/c"),
                (b"/a/b;3", b"/z"),
            ],
        )

    def test_match_fields(self) -> None:
        """The match reports the route, host, path and query it was made on."""
        config = route(0, "/api", host="*.example", upstream="http://h/base", strip_prefix=True)
        found = RouteTable([config]).match(b"X.Example:80", b"//api/./x%41?%2e=/..")
        self.assertEqual(
            found,
            RouteMatch(
                route=config,
                host="x.example",
                path="/api/xA",
                query=b"%2e=/..",
                upstream_target=b"/base/xA?%2e=/..",
            ),
        )


class CaseInsensitiveTests(_Helpers):
    """Routes with C{case_insensitive}: their prefix matches in any ASCII case."""

    def test_matches_any_case(self) -> None:
        """/ADMIN, /Admin/x and /admin;x=1/y reach the case-insensitive /admin route."""
        table = RouteTable([route(0, "/"), route(1, "/admin", case_insensitive=True)])
        for target in (b"/admin", b"/ADMIN", b"/Admin/x", b"/aDmIn/", b"/ADMIN;x=1/y",
                       b"/%41dmin/x", b"http://h/ADMIN/x"):
            self.assertEqual(self.matchIndex(table, target, b"h"), 1, target)
        for target in (b"/ADMINx", b"/adminx", b"/x/ADMIN"):
            self.assertEqual(self.matchIndex(table, target, b"h"), 0, target)

    def test_case_sensitive_by_default(self) -> None:
        """Without it, another case is another path: /ADMIN goes to the / route."""
        table = RouteTable([route(0, "/"), route(1, "/admin")])
        self.assertEqual(self.matchIndex(table, b"/ADMIN/x"), 0)
        self.assertEqual(self.matchIndex(table, b"/admin/x"), 1)

    def test_upstream_gets_the_clients_path(self) -> None:
        """The path goes upstream as the client spelled it (normalised)."""
        table = RouteTable([route(0, "/ADMIN", case_insensitive=True)])
        found = table.match(None, b"/aDmin/./X%7e?q=1")
        assert found is not None
        self.assertEqual((found.path, found.upstream_target), ("/aDmin/X~", b"/aDmin/X~?q=1"))

    def test_prefix_stripped_whatever_its_case(self) -> None:
        """strip_prefix and replace_prefix remove the prefix in the case the client used."""
        table = RouteTable([
            route(0, "/api", case_insensitive=True, strip_prefix=True),
            route(1, "/Old/Path", case_insensitive=True, replace_prefix="/new"),
        ])
        for target, expected in ((b"/API/v1", b"/v1"), (b"/Api", b"/"), (b"/aPI;x/v1", b"/v1"),
                                 (b"/old/PATH/x", b"/new/x"), (b"/OLD/path", b"/new")):
            found = table.match(None, target)
            assert found is not None
            self.assertEqual(found.upstream_target, expected, target)

    def test_longest_prefix_with_mixed_routes(self) -> None:
        """
        Case-sensitive and case-insensitive routes together: the longest
        prefix still wins, whichever kind it is.
        """
        table = RouteTable([
            route(0, "/"),
            route(1, "/app", case_insensitive=True),
            route(2, "/app/Public"),
            route(3, "/app/public/deep", case_insensitive=True),
        ])
        for target, index in ((b"/APP/x", 1), (b"/app/Public/x", 2), (b"/APP/Public/x", 1),
                              (b"/app/PUBLIC/x", 1), (b"/App/PUBLIC/DEEP/x", 3),
                              (b"/app/Public/deep", 3), (b"/other", 0)):
            self.assertEqual(self.matchIndex(table, target), index, target)

    def test_host_rank_before_spelling(self) -> None:
        """
        At one prefix, the host decides first (exact, wildcard, any), then
        an exactly spelled route beats a case-insensitive one.
        """
        table = RouteTable([
            route(0, "/"),
            route(1, "/Admin"),
            route(2, "/admin", host="a.example", case_insensitive=True),
            route(3, "/admin", host="*.example", case_insensitive=True),
            route(4, "/ADMIN", host="b.example"),
        ])
        for host, target, index in ((b"a.example", b"/Admin", 2), (b"c.example", b"/Admin", 3),
                                    (b"other", b"/Admin", 1), (b"other", b"/ADMIN", 0),
                                    (b"b.example", b"/ADMIN", 4), (b"b.example", b"/admin", 3)):
            self.assertEqual(self.matchIndex(table, target, host), index, (host, target))

    def test_prefix_without_letters(self) -> None:
        """A prefix without letters matches the same either way."""
        table = RouteTable([route(0, "/"), route(1, "/v1-2", case_insensitive=True),
                            route(2, "/_9")])
        self.assertEqual(self.matchIndex(table, b"/v1-2/x"), 1)
        self.assertEqual(self.matchIndex(table, b"/V1-2/x"), 1)
        self.assertEqual(self.matchIndex(table, b"/_9/x"), 2)

    def test_config_keys(self) -> None:
        """
        case_insensitive_routes sets the default, a route's case_insensitive
        overrides it; routes differing only in case are refused when one is
        case-insensitive, and so is one that would take endpoints_prefix's
        paths in another case.
        """
        from oidcproxy.config import ConfigError, parse_config

        def parse(top: dict, *routes: dict) -> object:
            return parse_config({**top, "routes": [{"upstream": UPSTREAM, "auth": "none", **r}
                                                   for r in routes]}, "t.toml")

        config = parse({"case_insensitive_routes": True}, {"path": "/a"},
                       {"path": "/b", "case_insensitive": False})
        self.assertEqual([r.case_insensitive for r in config.routes], [True, False])  # type: ignore[attr-defined]
        self.assertTrue(config.case_insensitive_routes)  # type: ignore[attr-defined]
        config = parse({}, {"path": "/a"}, {"path": "/b", "case_insensitive": True})
        self.assertEqual([r.case_insensitive for r in config.routes], [False, True])  # type: ignore[attr-defined]
        self.assertEqual(str(parse({}, {"path": "/Admin"}, {"path": "/admin"}).routes[0].path),  # type: ignore[attr-defined]
                         "/Admin")
        for top, routes, key in (
                ({}, ({"path": "/admin", "case_insensitive": True}, {"path": "/Admin"}),
                 "routes[1].path"),
                ({"case_insensitive_routes": True}, ({"path": "/Admin"}, {"path": "/admin"}),
                 "routes[1].path"),
                ({}, ({"path": "/OIDC", "case_insensitive": True},), "routes[0].path"),
                ({"case_insensitive_routes": "yes"}, ({"path": "/"},), "case_insensitive_routes"),
                ({}, ({"path": "/", "case_insensitive": 1},), "routes[0].case_insensitive")):
            with self.assertRaises(ConfigError) as caught:
                parse(top, *routes)
            self.assertIn(key + ":", str(caught.exception), (top, routes))
        # Another host, or both case-sensitive: no conflict.
        parse({}, {"path": "/admin", "case_insensitive": True},
              {"path": "/Admin", "host": "other.example"})
