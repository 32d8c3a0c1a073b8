"""
Tests for L{oidcproxy.sessions.cookies}.
"""

from __future__ import annotations

from typing import Dict, List

from twisted.trial.unittest import SynchronousTestCase

from oidcproxy.sessions.cookies import (
    CHUNK_SIZE,
    CookieSpec,
    CookieTooLarge,
    chunk_names,
    clear_cookie_headers,
    read_cookie,
    set_cookie_headers,
    strip_cookies,
)

SPEC = CookieSpec("oidcproxy")
HOST = "__Host-oidcproxy"
ATTRS = b"; Path=/; Secure; HttpOnly; SameSite=Lax"


def browser(headers: List[bytes], jar: Dict[bytes, bytes]) -> Dict[bytes, bytes]:
    """Apply Set-Cookie header values to a cookie jar the way a browser does (name and Max-Age only)."""
    jar = dict(jar)
    for header in headers:
        pair, _, attributes = header.partition(b"; ")
        name, _, value = pair.partition(b"=")
        if b"Max-Age=0" in attributes.split(b"; "):
            jar.pop(name, None)
        else:
            jar[name] = value
    return jar


class WireNameTests(SynchronousTestCase):
    """L{CookieSpec.wire_name}."""

    def test_host_prefix(self) -> None:
        """Secure, no Domain, Path=/: the C{__Host-} prefix."""
        self.assertEqual(CookieSpec("s").wire_name, "__Host-s")

    def test_secure_prefix_with_domain(self) -> None:
        """Secure with a Domain: the C{__Secure-} prefix."""
        self.assertEqual(CookieSpec("s", domain="example.com").wire_name, "__Secure-s")

    def test_secure_prefix_with_path(self) -> None:
        """Secure with a path other than C{/}: the C{__Secure-} prefix."""
        self.assertEqual(CookieSpec("s", path="/app").wire_name, "__Secure-s")

    def test_insecure_plain(self) -> None:
        """Not secure: the bare name, whatever the domain and path."""
        self.assertEqual(CookieSpec("s", secure=False).wire_name, "s")
        self.assertEqual(CookieSpec("s", secure=False, domain="example.com", path="/x").wire_name, "s")

    def test_worked_out_per_spec(self) -> None:
        """
        A spec's names are worked out once, for that spec: one made from it
        with other attributes has its own, and equal specs stay equal.
        """
        import attr

        spec = CookieSpec("s", max_chunks=2)
        self.assertEqual(spec.wire_name, "__Host-s")
        self.assertEqual(read_cookie(spec, {b"__Host-s": b"A", b"__Host-s_1": b"B"}), "AB")
        other = attr.evolve(spec, secure=False, max_chunks=1)
        self.assertEqual(other.wire_name, "s")
        self.assertEqual(read_cookie(other, {b"s": b"A", b"__Host-s": b"B"}), "A")
        self.assertIsNone(read_cookie(other, {b"s": b"A", b"s_1": b"B"}))
        self.assertEqual(spec, CookieSpec("s", max_chunks=2))
        self.assertEqual(hash(spec), hash(CookieSpec("s", max_chunks=2)))


class SpecValidationTests(SynchronousTestCase):
    """L{CookieSpec} refuses attributes that would break or inject into headers."""

    def test_bad_same_site(self) -> None:
        """An unknown SameSite value is refused (case matters)."""
        for value in ["lax", "Loose", ""]:
            self.assertRaises(ValueError, CookieSpec, "s", same_site=value)

    def test_same_site_none_needs_secure(self) -> None:
        """SameSite=None without Secure is refused; with Secure it is accepted."""
        self.assertRaises(ValueError, CookieSpec, "s", secure=False, same_site="None")
        self.assertEqual(CookieSpec("s", same_site="None").same_site, "None")

    def test_bad_name(self) -> None:
        """Names that are not tokens are refused."""
        for name in ["", "a b", "a;b", "a=b", "é", "a\r\nb"]:
            self.assertRaises(ValueError, CookieSpec, name)

    def test_bad_path(self) -> None:
        """A path not starting with C{/} or containing C{;} or blanks is refused."""
        for path in ["", "app", "/a;b", "/a b", "/a\nb"]:
            self.assertRaises(ValueError, CookieSpec, "s", path=path)

    def test_bad_domain(self) -> None:
        """A domain containing C{;} or blanks is refused."""
        for domain in ["", "a;b", "a b", "example.com\r\n"]:
            self.assertRaises(ValueError, CookieSpec, "s", domain=domain)

    def test_bad_max_chunks(self) -> None:
        """max_chunks below 1 is refused."""
        self.assertRaises(ValueError, CookieSpec, "s", max_chunks=0)


class SetCookieHeaderTests(SynchronousTestCase):
    """L{set_cookie_headers}: header bytes and chunking."""

    def test_small_value_one_cookie(self) -> None:
        """A small value is one cookie under the plain wire name, with the default attributes."""
        self.assertEqual(
            set_cookie_headers(SPEC, "abc", 3600, []),
            [b"__Host-oidcproxy=abc; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=3600"],
        )

    def test_session_cookie(self) -> None:
        """max_age None: no Max-Age attribute (a browser-session cookie)."""
        self.assertEqual(
            set_cookie_headers(SPEC, "abc", None, []),
            [b"__Host-oidcproxy=abc; Path=/; Secure; HttpOnly; SameSite=Lax"],
        )

    def test_all_attributes(self) -> None:
        """Path, Domain, Strict SameSite: the exact header with every attribute."""
        spec = CookieSpec("sess", path="/app", domain="example.com", same_site="Strict")
        self.assertEqual(
            set_cookie_headers(spec, "v", 60, []),
            [
                b"__Secure-sess=v; Path=/app; Domain=example.com; Secure; HttpOnly; SameSite=Strict;"
                b" Max-Age=60"
            ],
        )

    def test_insecure_script_visible(self) -> None:
        """secure and http_only off: neither attribute appears."""
        spec = CookieSpec("sess", secure=False, http_only=False)
        self.assertEqual(
            set_cookie_headers(spec, "v", 0, []),
            [b"sess=v; Path=/; SameSite=Lax; Max-Age=0"],
        )

    def test_same_site_none(self) -> None:
        """SameSite=None is written as such."""
        spec = CookieSpec("sess", same_site="None")
        self.assertEqual(
            set_cookie_headers(spec, "v", None, []),
            [b"__Host-sess=v; Path=/; Secure; HttpOnly; SameSite=None"],
        )

    def test_exactly_one_chunk(self) -> None:
        """A value of exactly CHUNK_SIZE bytes is one cookie."""
        value = "a" * CHUNK_SIZE
        self.assertEqual(
            set_cookie_headers(SPEC, value, None, []),
            [b"__Host-oidcproxy=" + value.encode() + ATTRS],
        )

    def test_several_chunks(self) -> None:
        """A larger value is split in CHUNK_SIZE pieces named NAME, NAME_1, NAME_2, in order."""
        value = "a" * CHUNK_SIZE + "b" * CHUNK_SIZE + "c" * 10
        self.assertEqual(
            set_cookie_headers(SPEC, value, 60, []),
            [
                b"__Host-oidcproxy=" + b"a" * CHUNK_SIZE + ATTRS + b"; Max-Age=60",
                b"__Host-oidcproxy_1=" + b"b" * CHUNK_SIZE + ATTRS + b"; Max-Age=60",
                b"__Host-oidcproxy_2=" + b"c" * 10 + ATTRS + b"; Max-Age=60",
            ],
        )

    def test_max_chunks_fits(self) -> None:
        """A value filling exactly max_chunks cookies is accepted."""
        spec = CookieSpec("s", max_chunks=3)
        self.assertEqual(len(set_cookie_headers(spec, "x" * (3 * CHUNK_SIZE), None, [])), 3)

    def test_too_large(self) -> None:
        """One byte more than max_chunks cookies hold raises CookieTooLarge."""
        spec = CookieSpec("s", max_chunks=3)
        self.assertRaises(CookieTooLarge, set_cookie_headers, spec, "x" * (3 * CHUNK_SIZE + 1), None, [])

    def test_leftover_chunks_deleted(self) -> None:
        """Chunks the browser has but the new value does not need get Max-Age=0, in index order."""
        present = [HOST, HOST + "_3", HOST + "_1", HOST + "_2"]
        self.assertEqual(
            set_cookie_headers(SPEC, "small", 60, present),
            [
                b"__Host-oidcproxy=small" + ATTRS + b"; Max-Age=60",
                b"__Host-oidcproxy_1=" + ATTRS + b"; Max-Age=0",
                b"__Host-oidcproxy_2=" + ATTRS + b"; Max-Age=0",
                b"__Host-oidcproxy_3=" + ATTRS + b"; Max-Age=0",
            ],
        )

    def test_needed_chunks_not_deleted(self) -> None:
        """Chunks the new value rewrites get no deletion header."""
        value = "a" * CHUNK_SIZE + "b"
        headers = set_cookie_headers(SPEC, value, None, [HOST, HOST + "_1"])
        self.assertEqual(
            headers, [b"__Host-oidcproxy=" + b"a" * CHUNK_SIZE + ATTRS, b"__Host-oidcproxy_1=b" + ATTRS]
        )

    def test_foreign_names_not_deleted(self) -> None:
        """Names in C{present} that are not our chunks get no deletion header."""
        present = ["other", "__Host-oidcproxyx", HOST + "_x", HOST + "_01", HOST + "_", "oidcproxy_1"]
        self.assertEqual(set_cookie_headers(SPEC, "v", None, present), [b"__Host-oidcproxy=v" + ATTRS])

    def test_deletion_attributes_match(self) -> None:
        """Deletion headers carry the same Path, Domain, Secure and SameSite as the cookie."""
        spec = CookieSpec("s", path="/app", domain="example.com", same_site="Strict", http_only=False)
        self.assertEqual(
            set_cookie_headers(spec, "v", None, ["__Secure-s_1"])[1],
            b"__Secure-s_1=; Path=/app; Domain=example.com; Secure; SameSite=Strict; Max-Age=0",
        )

    def test_unsafe_value_refused(self) -> None:
        """Values with characters that could end or split the header are refused with ValueError."""
        for value in ["a;b", "a b", "a,b", 'a"b', "a\\b", "a\r\nSet-Cookie: x=y", "é", "a\x00", ""]:
            self.assertRaises(ValueError, set_cookie_headers, SPEC, value, None, [])

    def test_negative_max_age_refused(self) -> None:
        """A negative max_age is refused with ValueError."""
        self.assertRaises(ValueError, set_cookie_headers, SPEC, "v", -1, [])


class ClearCookieHeaderTests(SynchronousTestCase):
    """L{clear_cookie_headers}."""

    def test_base_only(self) -> None:
        """With nothing present, the base name is still deleted."""
        self.assertEqual(clear_cookie_headers(SPEC, []), [b"__Host-oidcproxy=" + ATTRS + b"; Max-Age=0"])

    def test_chunks_present(self) -> None:
        """The base name and every chunk present are deleted, base first, then by index."""
        self.assertEqual(
            clear_cookie_headers(SPEC, [HOST + "_2", HOST, "other", HOST + "_1"]),
            [
                b"__Host-oidcproxy=" + ATTRS + b"; Max-Age=0",
                b"__Host-oidcproxy_1=" + ATTRS + b"; Max-Age=0",
                b"__Host-oidcproxy_2=" + ATTRS + b"; Max-Age=0",
            ],
        )


class ReadCookieTests(SynchronousTestCase):
    """L{read_cookie} and L{chunk_names}."""

    def test_single(self) -> None:
        """A one-cookie value is read as is."""
        self.assertEqual(read_cookie(SPEC, {b"__Host-oidcproxy": b"abc", b"other": b"x"}), "abc")

    def test_missing(self) -> None:
        """No base cookie: None, even when chunks are present."""
        self.assertIsNone(read_cookie(SPEC, {b"__Host-oidcproxy_1": b"abc", b"oidcproxy": b"x"}))

    def test_empty(self) -> None:
        """An empty base cookie: None."""
        self.assertIsNone(read_cookie(SPEC, {b"__Host-oidcproxy": b""}))

    def test_joins_in_order(self) -> None:
        """Chunks are joined by index, whatever the mapping's order."""
        cookies = {b"__Host-oidcproxy_2": b"C", b"__Host-oidcproxy": b"A", b"__Host-oidcproxy_1": b"B"}
        self.assertEqual(read_cookie(SPEC, cookies), "ABC")

    def test_stops_at_gap(self) -> None:
        """Reading stops at the first missing index; later chunks are ignored."""
        cookies = {b"__Host-oidcproxy": b"A", b"__Host-oidcproxy_1": b"B", b"__Host-oidcproxy_3": b"D"}
        self.assertEqual(read_cookie(SPEC, cookies), "AB")

    def test_empty_chunk_joined(self) -> None:
        """A chunk present but empty is joined (as nothing), and the next ones still are."""
        cookies = {b"__Host-oidcproxy": b"A", b"__Host-oidcproxy_1": b"", b"__Host-oidcproxy_2": b"C"}
        self.assertEqual(read_cookie(SPEC, cookies), "AC")

    def test_max_chunks_accepted(self) -> None:
        """Exactly max_chunks chunks are read."""
        spec = CookieSpec("s", max_chunks=3)
        cookies = {b"__Host-s": b"A", b"__Host-s_1": b"B", b"__Host-s_2": b"C"}
        self.assertEqual(read_cookie(spec, cookies), "ABC")

    def test_too_many_chunks(self) -> None:
        """More than max_chunks consecutive chunks: None."""
        spec = CookieSpec("s", max_chunks=3)
        cookies = {b"__Host-s": b"A", b"__Host-s_1": b"B", b"__Host-s_2": b"C", b"__Host-s_3": b"D"}
        self.assertIsNone(read_cookie(spec, cookies))

    def test_non_ascii(self) -> None:
        """A non-ASCII byte in any chunk: None."""
        self.assertIsNone(read_cookie(SPEC, {b"__Host-oidcproxy": b"ab\xc3\xa9"}))
        self.assertIsNone(read_cookie(SPEC, {b"__Host-oidcproxy": b"ab", b"__Host-oidcproxy_1": b"\xff"}))

    def test_other_prefix_ignored(self) -> None:
        """Cookies under the bare or C{__Secure-} name are not ours when the wire name is C{__Host-}."""
        self.assertIsNone(read_cookie(SPEC, {b"oidcproxy": b"a", b"__Secure-oidcproxy": b"b"}))

    def test_round_trip_through_browser(self) -> None:
        """A value written in chunks, then replaced by a smaller one, reads back exactly each time."""
        big = "".join(chr(ord("a") + i % 26) for i in range(3 * CHUNK_SIZE + 7))
        jar = browser(set_cookie_headers(SPEC, big, None, []), {b"other": b"1"})
        self.assertEqual(read_cookie(SPEC, jar), big)
        jar = browser(set_cookie_headers(SPEC, "small", None, chunk_names(SPEC, jar)), jar)
        self.assertEqual(read_cookie(SPEC, jar), "small")
        self.assertEqual(sorted(jar), [b"__Host-oidcproxy", b"other"])

    def test_chunk_names(self) -> None:
        """chunk_names lists the base and chunk names present, gaps included, in index order."""
        cookies = {
            b"__Host-oidcproxy_7": b"x",
            b"other": b"x",
            b"__Host-oidcproxy": b"x",
            b"__Host-oidcproxy_1": b"x",
            b"__Host-oidcproxy_01": b"x",
            b"oidcproxy_2": b"x",
        }
        self.assertEqual(chunk_names(SPEC, cookies), [HOST, HOST + "_1", HOST + "_7"])

    def test_chunk_names_beyond_max_chunks(self) -> None:
        """chunk_names finds chunks past max_chunks (left by a larger configuration) up to 50."""
        spec = CookieSpec("s", max_chunks=2)
        cookies = {b"__Host-s_9": b"x", b"__Host-s_50": b"x", b"__Host-s_51": b"x"}
        self.assertEqual(chunk_names(spec, cookies), ["__Host-s_9", "__Host-s_50"])


class StripCookiesTests(SynchronousTestCase):
    """L{strip_cookies}."""

    NAMES = frozenset([b"__Host-oidcproxy"])

    def test_keeps_others_byte_for_byte(self) -> None:
        """Other cookies keep their exact bytes (odd spacing and values included) and order."""
        header = b'a=1; __Host-oidcproxy=secret;b="q x";  c=%20;d'
        self.assertEqual(strip_cookies([header], self.NAMES), [b'a=1;b="q x";  c=%20;d'])

    def test_first_removed(self) -> None:
        """Removing the first cookie leaves no leading separator or blank."""
        self.assertEqual(strip_cookies([b"__Host-oidcproxy=s; a=1; b=2"], self.NAMES), [b"a=1; b=2"])

    def test_last_removed(self) -> None:
        """Removing the last cookie leaves no trailing separator."""
        self.assertEqual(strip_cookies([b"a=1; __Host-oidcproxy=s"], self.NAMES), [b"a=1"])

    def test_chunks_removed(self) -> None:
        """Chunk cookies (name, C{_}, digits) are removed too."""
        header = b"__Host-oidcproxy_1=x; a=1; __Host-oidcproxy_12=y; __Host-oidcproxy_01=z"
        self.assertEqual(strip_cookies([header], self.NAMES), [b"a=1"])

    def test_similar_names_kept(self) -> None:
        """Names that only look like ours are kept."""
        header = (
            b"__Host-oidcproxyx=1; __Host-oidcproxy_=2; __Host-oidcproxy_a=3; oidcproxy=4;"
            b" __host-oidcproxy=5; x__Host-oidcproxy=6"
        )
        self.assertEqual(strip_cookies([header], self.NAMES), [header])

    def test_blank_around_name(self) -> None:
        """A name with blanks around it is still recognised and removed."""
        self.assertEqual(strip_cookies([b"a=1;  __Host-oidcproxy \t=s"], self.NAMES), [b"a=1"])

    def test_empty_header_dropped(self) -> None:
        """A header value with only our cookies disappears; the others stay in order."""
        headers = [b"a=1", b"__Host-oidcproxy=s; __Host-oidcproxy_1=t", b"b=2"]
        self.assertEqual(strip_cookies(headers, self.NAMES), [b"a=1", b"b=2"])

    def test_untouched_header_identical(self) -> None:
        """A header value without our cookies is passed on exactly, even with odd separators."""
        header = b" a=1;;b=2 ; "
        self.assertEqual(strip_cookies([header], self.NAMES), [header])

    def test_several_names(self) -> None:
        """Every name in C{names} is removed (e.g. the session and the login state cookies)."""
        names = {b"__Host-oidcproxy", b"__Host-oidcproxy-state"}
        header = b"__Host-oidcproxy-state=x; keep=1; __Host-oidcproxy=y"
        self.assertEqual(strip_cookies([header], names), [b"keep=1"])

    def test_nothing(self) -> None:
        """No header values in, none out."""
        self.assertEqual(strip_cookies([], self.NAMES), [])
