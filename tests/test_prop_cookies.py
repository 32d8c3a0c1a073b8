"""
Properties of the cookie code (L{oidcproxy.sessions.cookies}) on generated values and
Cookie headers: chunking round-trips through a browser and Twisted's Cookie
parser, reassembly refuses every malformed or oversized chunk set, and the
proxy's cookies never reach the upstream.
"""

from __future__ import annotations

import re
from typing import Dict, List, Sequence, Tuple

from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http import Request
from twisted.web.test.requesthelper import DummyChannel

from oidcproxy.sessions.cookies import (
    CHUNK_SIZE,
    CookieSpec,
    CookieTooLarge,
    chunk_names,
    read_cookie,
    set_cookie_headers,
    strip_cookies,
)
from oidcproxy.sessions.crypto import Sealer

from .props import given, scaled

# RFC 6265 cookie-octets: what a cookie value may hold.
COOKIE_OCTETS = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '",;\\')
SEALER = Sealer([b"k" * 32])
PURPOSE = b"session"

SPECS = st.builds(
    CookieSpec,
    name=st.sampled_from(["oidcproxy", "s", "session-x", "a.b"]),
    path=st.sampled_from(["/", "/app"]),
    domain=st.sampled_from([None, "app.test"]),
    secure=st.booleans(),
    max_chunks=st.integers(1, 6),
)


@st.composite
def values(draw: st.DrawFn, spec: CookieSpec) -> str:
    """A cookie-safe value of any length up to what C{spec} can hold (and a bit more)."""
    size = draw(st.one_of(st.integers(1, 64), st.integers(1, (spec.max_chunks + 1) * CHUNK_SIZE),
                          st.sampled_from([CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1,
                                           spec.max_chunks * CHUNK_SIZE])))
    pattern = draw(st.text(alphabet=COOKIE_OCTETS, min_size=1, max_size=50))
    return (pattern * (size // len(pattern) + 1))[:size]


def twisted_cookies(header_values: Sequence[bytes]) -> Dict[bytes, bytes]:
    """What Twisted's request parses out of these Cookie header values."""
    request = Request(DummyChannel())
    request.requestHeaders.setRawHeaders(b"cookie", list(header_values))
    request.parseCookies()
    return request.received_cookies


def apply(jar: Dict[bytes, bytes], set_cookies: Sequence[bytes]) -> Dict[bytes, bytes]:
    """A browser's jar after these Set-Cookie values (name, value and Max-Age=0 only)."""
    jar = dict(jar)
    for header in set_cookies:
        pair, _, attributes = header.partition(b"; ")
        name, _, value = pair.partition(b"=")
        if b"Max-Age=0" in attributes.split(b"; "):
            jar.pop(name, None)
        else:
            jar[name] = value
    return jar


OTHERS = st.dictionaries(st.sampled_from([b"other", b"theme", b"_ga", b"oidcproxyX", b"s_x"]),
                         st.text(alphabet=COOKIE_OCTETS, max_size=20).map(str.encode), max_size=3)


def header(jar: Dict[bytes, bytes], order: Sequence[int], split: int) -> List[bytes]:
    """The jar as a browser sends it: pairs in C{order}, over one or two Cookie headers."""
    pairs = list(jar.items())
    pairs = [pairs[i] for i in order if i < len(pairs)] + \
        [p for i, p in enumerate(pairs) if i not in order]
    text = [name + b"=" + value for name, value in pairs]
    if 0 < split < len(text):
        return [b"; ".join(text[:split]), b"; ".join(text[split:])]
    return [b"; ".join(text)]


class RoundTripTests(SynchronousTestCase):
    @given(st.data())
    @scaled(100)
    def test_value_round_trips(self, data: st.DataObject) -> None:
        """
        A value → its Set-Cookie chunks → a browser's Cookie header (with other
        cookies, in any order) → Twisted's parser → read_cookie gives the same
        value; or set_cookie_headers refuses it as too large for max_chunks.
        """
        spec = data.draw(SPECS)
        value = data.draw(values(spec))
        old = data.draw(st.sampled_from([None, "old", "o" * (3 * CHUNK_SIZE)]))
        jar = data.draw(OTHERS)
        if old is not None:
            jar = apply(jar, set_cookie_headers(CookieSpec(spec.name, spec.path, spec.domain,
                                                           spec.secure, max_chunks=6), old, 60, []))
        try:
            set_cookies = set_cookie_headers(spec, value, 60, chunk_names(spec, jar))
        except CookieTooLarge:
            self.assertGreater(len(value), spec.max_chunks * CHUNK_SIZE)
            return
        self.assertLessEqual(len(value), spec.max_chunks * CHUNK_SIZE)
        jar = apply(jar, set_cookies)
        order = data.draw(st.permutations(range(len(jar))))
        split = data.draw(st.integers(0, len(jar)))
        received = twisted_cookies(header(jar, order, split))
        self.assertEqual(read_cookie(spec, received), value)
        wire = spec.wire_name.encode("ascii")
        ours = sorted(name for name in jar if name == wire or
                      re.fullmatch(re.escape(wire) + rb"_[1-9][0-9]*", name))
        self.assertEqual(sorted(n.encode("ascii") for n in chunk_names(spec, received)), ours)

    @given(st.data())
    def test_strip_keeps_exactly_the_others(self, data: st.DataObject) -> None:
        """
        strip_cookies drops every cookie of ours (base, chunks, blanks around
        the name) and keeps every other pair byte for byte and in order.
        """
        names = [b"s", b"st"]
        spelled = st.sampled_from([b"s", b"s_1", b"s_12", b" s", b"s\t", b"st", b"st_3",
                                   b"s_", b"s_x", b"sx", b"S", b"other", b"", b"s=1"])
        pairs = data.draw(st.lists(st.tuples(spelled, st.sampled_from([b"=", b"", b"=="]),
                                             st.sampled_from([b"", b"v", b"a=b", b" x "])),
                                   max_size=8))
        raw = [name + eq + value for name, eq, value in pairs]
        separator = data.draw(st.sampled_from([b";", b"; ", b" ;"]))
        value = separator.join(raw)
        kept = strip_cookies([value], names)
        expected = [p for p in raw if p.split(b"=", 1)[0].strip(b" \t") not in
                    (b"s", b"s_1", b"s_12", b"st", b"st_3")]
        if len(expected) == len(raw):
            self.assertEqual(kept, [value])
            return
        rest = [p for p in expected if p.strip(b" \t")]
        if not rest:
            self.assertEqual(kept, [])
            return
        self.assertEqual(len(kept), 1)
        self.assertEqual([p.strip(b" \t") for p in kept[0].split(b";")],
                         [p.strip(b" \t") for p in rest])
        for pair in kept[0].split(b";"):
            name = pair.split(b"=", 1)[0].strip(b" \t")
            self.assertNotIn(name, (b"s", b"s_1", b"s_12", b"st", b"st_3"))


MUTATIONS = ["drop", "extra", "swap", "duplicate", "flood", "oversize", "truncate", "flip",
             "gap", "empty", "non-ascii", "rename"]


def mutate(data: st.DataObject, chunks: List[Tuple[bytes, bytes]], wire: bytes,
           how: str) -> Dict[bytes, bytes]:
    """The cookies of a chunk set spoiled in one way."""
    jar = dict(chunks)
    names = [name for name, _ in chunks]
    pick = data.draw(st.integers(0, len(names) - 1))
    if how == "drop":
        del jar[names[pick]]
    elif how == "extra":
        jar[wire + b"_%d" % (len(names),)] = data.draw(st.sampled_from([b"x", b"A" * 100]))
    elif how == "swap" and len(names) > 1:
        other = data.draw(st.integers(0, len(names) - 1).filter(lambda i: i != pick))
        jar[names[pick]], jar[names[other]] = jar[names[other]], jar[names[pick]]
    elif how == "duplicate" and len(names) > 1:
        other = data.draw(st.integers(0, len(names) - 1).filter(lambda i: i != pick))
        jar[names[other]] = jar[names[pick]]
    elif how == "flood":
        for i in range(len(names), len(names) + data.draw(st.integers(1, 60))):
            jar[wire + b"_%d" % (i,)] = b"x"
    elif how == "oversize":
        jar[names[pick]] = jar[names[pick]] * data.draw(st.integers(2, 5))
    elif how == "truncate":
        jar[names[pick]] = jar[names[pick]][: data.draw(st.integers(0, len(jar[names[pick]]) - 1))]
    elif how == "flip":
        value = bytearray(jar[names[pick]])
        at = data.draw(st.integers(0, len(value) - 1))
        value[at] = data.draw(st.sampled_from(b"AZaz09-_").filter(lambda b: b != value[at]))
        jar[names[pick]] = bytes(value)
    elif how == "gap":
        jar[wire + b"_%d" % (len(names) + 1,)] = jar[names[-1]]
        del jar[names[pick]]
    elif how == "empty":
        jar[names[pick]] = b""
    elif how == "non-ascii":
        jar[names[pick]] = jar[names[pick]] + "\u00e9".encode("utf-8")
    elif how == "rename":
        jar[names[pick] + b"x"] = jar.pop(names[pick])
    else:
        jar[names[pick]] += b"x"
    return jar


class ReassemblyTests(SynchronousTestCase):
    @given(st.data(), st.sampled_from(MUTATIONS))
    @scaled(200)
    def test_spoiled_set_refused(self, data: st.DataObject, how: str) -> None:
        """
        A sealed session value's chunk set spoiled in any way (a chunk
        missing, extra, swapped, duplicated, too many, oversized, truncated,
        altered, empty, non-ASCII, renamed) never gives back a session:
        read_cookie returns None or a value the sealer refuses, and never
        raises.
        """
        spec = data.draw(SPECS)
        plain = data.draw(st.binary(min_size=0, max_size=(spec.max_chunks * CHUNK_SIZE * 3) // 4 - 60))
        sealed = SEALER.seal(plain, PURPOSE)
        try:
            set_cookies = set_cookie_headers(spec, sealed, 60, [])
        except CookieTooLarge:
            return
        chunks = list(apply({}, set_cookies).items())
        jar = mutate(data, chunks, spec.wire_name.encode("ascii"), how)
        value = read_cookie(spec, jar)
        if value is None:
            return
        self.assertIsInstance(value, str)
        opened = SEALER.unseal(value, PURPOSE)
        if value == sealed:
            # Mutations that change nothing read back the value exactly.
            self.assertEqual(opened, plain)
        else:
            self.assertIsNone(opened, how)

    @given(SPECS, st.dictionaries(st.binary(max_size=30), st.binary(max_size=50), max_size=12),
           st.integers(0, 70))
    def test_any_cookies(self, spec: CookieSpec, cookies: Dict[bytes, bytes], chunks: int) -> None:
        """
        Whatever cookies a request has, read_cookie answers None or an ASCII
        value, and None once more than max_chunks chunks are present.
        """
        wire = spec.wire_name.encode("ascii")
        for i in range(chunks):
            cookies[wire if i == 0 else wire + b"_%d" % (i,)] = b"c"
        value = read_cookie(spec, cookies)
        names = chunk_names(spec, cookies)
        if chunks > spec.max_chunks:
            self.assertIsNone(value)
        if value is not None:
            self.assertTrue(value.isascii())
            self.assertTrue(value)
            self.assertIn(spec.wire_name, names)
        self.assertEqual(names, sorted(set(names), key=names.index))
