"""
Properties of the identity-header encoding (L{oidcproxy.web.guard.header_value})
on generated claim values: a value is safe on the wire (ASCII, no control
byte) and the upstream reads back exactly the claim, list items included.
"""

from __future__ import annotations

import base64
import re
from typing import Any, List, Optional

from hypothesis import example
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from oidcproxy.web.headers import header_value

from .props import given

_WORD = re.compile(rb"=\?UTF-8\?B\?([A-Za-z0-9+/=]*)\?=\Z")
# What an HTTP parser strips around a field value, and a list parser around
# each element (RFC 9110 5.5 and 5.6.1: OWS is spaces and tabs).
_OWS = b" \t"

TEXT = st.one_of(
    st.text(max_size=30),
    st.text(alphabet=" ,=?\t\r\n\x00\x7fabcé\u2028\u0085", max_size=12),
    st.sampled_from(["admin", " admin", "admin ", "=?UTF-8?B?YWRtaW4=?=", "a,b", "", " ", "é",
                     "\ud800", "x" * 10_000]),
)
SCALARS = st.one_of(st.booleans(), st.integers(), st.floats(), TEXT)
VALUES = st.one_of(SCALARS, st.lists(st.one_of(SCALARS, st.none(), st.just({"a": 1})), max_size=5),
                   st.none(), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


def decode_word(item: bytes) -> str:
    """One item as a reader decodes it: an RFC 2047 B-encoded UTF-8 word, or ASCII text."""
    found = _WORD.match(item)
    if found is None:
        return item.decode("ascii")
    return base64.b64decode(found.group(1)).decode("utf-8")


def shown(value: Any) -> Optional[str]:
    """What the header says for one scalar claim value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    return None


class HeaderValueTests(SynchronousTestCase):
    @given(VALUES)
    def test_safe_on_the_wire(self, value: Any) -> None:
        """A header value is None or ASCII without CR, LF, NUL or any other control byte."""
        encoded = header_value(value)
        if encoded is None:
            return
        self.assertIsInstance(encoded, bytes)
        self.assertTrue(all(0x20 <= b < 0x7F for b in encoded), encoded)

    @given(SCALARS)
    @example(" admin")
    @example("admin\x20")
    def test_scalar_round_trip(self, value: Any) -> None:
        """
        A scalar claim without control characters reads back exactly, after
        the upstream's HTTP parser strips blanks around the field value.
        """
        encoded = header_value(value)
        if encoded is None:
            self.assertIsInstance(value, str)
            self.assertTrue(re.search("[\x00-\x1f\x7f]", value), value)
            return
        self.assertEqual(decode_word(encoded.strip(_OWS)), shown(value))

    @given(st.lists(st.one_of(st.integers(), st.floats(), TEXT), min_size=1, max_size=5))
    @example(["users", " admins"])
    def test_list_round_trip(self, items: List[Any]) -> None:
        """
        A list of strings and numbers reads back item for item when the
        upstream splits the value on commas and strips blanks around each
        item (items with commas or non-ASCII are encoded words).
        """
        encoded = header_value(items)
        if encoded is None:
            self.assertTrue(any(isinstance(i, str) and re.search("[\x00-\x1f\x7f]", i)
                                for i in items), items)
            return
        parts = [decode_word(part.strip(_OWS)) for part in encoded.strip(_OWS).split(b",")]
        self.assertEqual(parts, [shown(i) for i in items])
