"""
Tests for L{oidcproxy.core.encoding}: unpadded base64url, strictly decoded.
"""

from __future__ import annotations

import base64

from twisted.trial.unittest import SynchronousTestCase

from oidcproxy.core.encoding import b64url_decode, b64url_encode


class EncodeTests(SynchronousTestCase):
    def test_unpadded_url_safe(self):
        """The URL-safe alphabet, no padding."""
        self.assertEqual(b64url_encode(b"\xfb\xff"), "-_8")
        self.assertEqual(b64url_encode(b""), "")
        self.assertEqual(b64url_encode(b"a"), "YQ")

    def test_round_trip(self):
        """Every length of byte string decodes back to itself."""
        data = bytes(range(256))
        for n in range(40):
            self.assertEqual(b64url_decode(b64url_encode(data[:n])), data[:n])


class DecodeTests(SynchronousTestCase):
    def test_decodes(self):
        self.assertEqual(b64url_decode("-_8"), b"\xfb\xff")
        self.assertEqual(b64url_decode(""), b"")

    def test_refuses_padding(self):
        """C{=} is not part of the unpadded spelling."""
        self.assertRaises(ValueError, b64url_decode, "YQ==")
        self.assertRaises(ValueError, b64url_decode, "YQ=")

    def test_refuses_other_alphabets(self):
        """The standard alphabet's C{+} and C{/}, whitespace and non-ASCII are refused."""
        for text in ("+_8", "-/8", "Y Q", "YQ\n", "\u00e9A", "YQ\x00"):
            self.assertRaises(ValueError, b64url_decode, text)

    def test_refuses_impossible_length(self):
        """A text of 4n+1 characters is no byte string's spelling."""
        self.assertRaises(ValueError, b64url_decode, "A")
        self.assertRaises(ValueError, b64url_decode, "AAAAA")

    def test_refuses_non_canonical(self):
        """Low bits set in the last character: a second spelling of the same bytes."""
        self.assertEqual(base64.urlsafe_b64decode("YR=="), b"a")
        self.assertRaises(ValueError, b64url_decode, "YR")
        self.assertRaises(ValueError, b64url_decode, "YWF")

    def test_refuses_non_text(self):
        self.assertRaises(ValueError, b64url_decode, b"YQ")  # type: ignore[arg-type]
        self.assertRaises(ValueError, b64url_decode, None)  # type: ignore[arg-type]


class LenientTests(SynchronousTestCase):
    def test_lenient_takes_what_strict_refuses(self):
        """Padding and stray low bits pass the lenient decoder (a JWT payload's reading)."""
        from oidcproxy.core.encoding import b64url_decode_lenient

        self.assertEqual(b64url_decode_lenient("YQ=="), b"a")
        self.assertEqual(b64url_decode_lenient("YR"), b"a")
        self.assertEqual(b64url_decode_lenient("eyJhIjoxfQ"), b'{"a":1}')
        self.assertRaises(ValueError, b64url_decode_lenient, "a")
