"""
Tests for L{oidcproxy.sessions.crypto.Sealer}.
"""

from __future__ import annotations

import base64
import hashlib

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from twisted.trial.unittest import SynchronousTestCase

from oidcproxy.sessions.crypto import MAX_TOKEN_LENGTH, Sealer

K1 = bytes(range(32))
K2 = b"another secret that is long enough!"
PURPOSE = b"session"


def decode(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


def encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def expected_key_id(secret: bytes) -> bytes:
    """The key id as the format defines it, computed independently of the module."""
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"oidcproxy aead v1").derive(secret)
    return hashlib.sha256(b"oidcproxy key id" + key).digest()[:4]


def flip(raw: bytes, index: int) -> bytes:
    """C{raw} with the lowest bit of byte C{index} inverted."""
    return raw[:index] + bytes([raw[index] ^ 0x01]) + raw[index + 1 :]


class SealerConstructionTests(SynchronousTestCase):
    """L{Sealer} refuses unusable secrets."""

    def test_short_secret_refused(self) -> None:
        """A 31-byte secret raises ValueError."""
        self.assertRaises(ValueError, Sealer, [b"x" * 31])

    def test_short_later_secret_refused(self) -> None:
        """A short secret is refused in any position, not only the first."""
        self.assertRaises(ValueError, Sealer, [K1, b"short"])

    def test_minimum_length_accepted(self) -> None:
        """A secret of exactly 32 bytes is accepted and works."""
        sealer = Sealer([b"x" * 32])
        self.assertEqual(sealer.unseal(sealer.seal(b"ok", PURPOSE), PURPOSE), b"ok")

    def test_no_secret_refused(self) -> None:
        """An empty list of secrets raises ValueError."""
        self.assertRaises(ValueError, Sealer, [])

    def test_text_secret_refused(self) -> None:
        """A C{str} secret raises TypeError (secrets are bytes)."""
        self.assertRaises(TypeError, Sealer, ["x" * 40])


class SealTests(SynchronousTestCase):
    """L{Sealer.seal} and L{Sealer.unseal}."""

    def setUp(self) -> None:
        self.sealer = Sealer([K1])

    def test_round_trip(self) -> None:
        """A sealed value unseals to the same bytes."""
        plaintext = b'{"sub":"user"}\x00\xff binary too'
        self.assertEqual(self.sealer.unseal(self.sealer.seal(plaintext, PURPOSE), PURPOSE), plaintext)

    def test_empty_round_trip(self) -> None:
        """The empty plaintext round-trips."""
        self.assertEqual(self.sealer.unseal(self.sealer.seal(b"", PURPOSE), PURPOSE), b"")

    def test_other_instance(self) -> None:
        """Another L{Sealer} with the same secret opens the value (no per-instance state)."""
        token = self.sealer.seal(b"data", PURPOSE)
        self.assertEqual(Sealer([K1]).unseal(token, PURPOSE), b"data")

    def test_format(self) -> None:
        """
        The value is unpadded URL-safe base64 of version 0x01, the documented
        key id, a 12-byte nonce and the ciphertext with its 16-byte tag.
        """
        plaintext = b"x" * 10
        token = self.sealer.seal(plaintext, PURPOSE)
        self.assertRegex(token, r"\A[A-Za-z0-9_-]+\Z")
        raw = decode(token)
        self.assertEqual(len(raw), 1 + 4 + 12 + 10 + 16)
        self.assertEqual(raw[:1], b"\x01")
        self.assertEqual(raw[1:5], expected_key_id(K1))

    def test_key_ids_differ(self) -> None:
        """Different secrets give different key ids."""
        self.assertNotEqual(expected_key_id(K1), expected_key_id(K2))
        self.assertEqual(decode(Sealer([K2]).seal(b"", PURPOSE))[1:5], expected_key_id(K2))

    def test_nonce_differs(self) -> None:
        """Two seals of the same plaintext use different nonces and give different values."""
        first = decode(self.sealer.seal(b"same", PURPOSE))
        second = decode(self.sealer.seal(b"same", PURPOSE))
        self.assertNotEqual(first[5:17], second[5:17])
        self.assertNotEqual(first, second)

    def test_wrong_purpose(self) -> None:
        """A value sealed for one purpose does not open for another."""
        token = self.sealer.seal(b"data", b"state")
        self.assertIsNone(self.sealer.unseal(token, b"session"))

    def test_purpose_not_prefix_confused(self) -> None:
        """A purpose that extends the sealing purpose does not open it either."""
        token = self.sealer.seal(b"data", b"session")
        self.assertIsNone(self.sealer.unseal(token, b"session2"))


class RotationTests(SynchronousTestCase):
    """Several secrets: the first seals, all open."""

    def test_old_key_opens(self) -> None:
        """A value sealed with [k1] opens with [k2, k1]."""
        token = Sealer([K1]).seal(b"data", PURPOSE)
        self.assertEqual(Sealer([K2, K1]).unseal(token, PURPOSE), b"data")

    def test_first_key_seals(self) -> None:
        """[k2, k1] seals with k2: the key id is k2's and [k1] alone cannot open it."""
        token = Sealer([K2, K1]).seal(b"data", PURPOSE)
        self.assertEqual(decode(token)[1:5], expected_key_id(K2))
        self.assertIsNone(Sealer([K1]).unseal(token, PURPOSE))
        self.assertEqual(Sealer([K2]).unseal(token, PURPOSE), b"data")

    def test_removed_key(self) -> None:
        """Once a secret is removed, its values no longer open."""
        token = Sealer([K1]).seal(b"data", PURPOSE)
        self.assertIsNone(Sealer([K2]).unseal(token, PURPOSE))

    def test_duplicate_secret(self) -> None:
        """A secret listed twice works as once."""
        sealer = Sealer([K1, K1])
        self.assertEqual(sealer.unseal(sealer.seal(b"d", PURPOSE), PURPOSE), b"d")


class TamperTests(SynchronousTestCase):
    """Any change to any part of a sealed value makes it unopenable."""

    def setUp(self) -> None:
        self.sealer = Sealer([K1])
        self.raw = decode(self.sealer.seal(b"some plaintext", PURPOSE))

    def assertRefused(self, raw: bytes) -> None:
        self.assertNotEqual(raw, self.raw)
        self.assertIsNone(self.sealer.unseal(encode(raw), PURPOSE))

    def test_untampered_opens(self) -> None:
        """The re-encoded original opens (so the refusals below are due to the change)."""
        self.assertEqual(self.sealer.unseal(encode(self.raw), PURPOSE), b"some plaintext")

    def test_version(self) -> None:
        """A changed version byte is refused."""
        self.assertRefused(b"\x02" + self.raw[1:])

    def test_key_id(self) -> None:
        """A changed key id is refused."""
        self.assertRefused(flip(self.raw, 3))

    def test_nonce(self) -> None:
        """A changed nonce is refused."""
        self.assertRefused(flip(self.raw, 10))

    def test_ciphertext(self) -> None:
        """A changed ciphertext byte is refused."""
        self.assertRefused(flip(self.raw, 17))

    def test_tag(self) -> None:
        """A changed tag byte is refused."""
        self.assertRefused(flip(self.raw, len(self.raw) - 1))

    def test_truncated(self) -> None:
        """A value missing its last byte is refused."""
        self.assertRefused(self.raw[:-1])

    def test_extended(self) -> None:
        """A value with a byte appended is refused."""
        self.assertRefused(self.raw + b"\x00")

    def test_too_short(self) -> None:
        """A value shorter than header plus tag is refused."""
        self.assertRefused(self.raw[:32])


class MalformedInputTests(SynchronousTestCase):
    """L{Sealer.unseal} returns None for malformed input and never raises."""

    def setUp(self) -> None:
        self.sealer = Sealer([K1])
        self.token = self.sealer.seal(b"payload", PURPOSE)

    def test_not_base64(self) -> None:
        """Text with characters outside URL-safe base64 is refused."""
        for token in ["!!!!", "a b", "abc$", "é", "\x00", "ab\ncd", "+/+/"]:
            self.assertIsNone(self.sealer.unseal(token, PURPOSE), repr(token))

    def test_embedded_junk(self) -> None:
        """A valid value with a foreign character inserted is refused (no lenient decoding)."""
        for junk in [" ", "\n", ".", "=", "+"]:
            token = self.token[:10] + junk + self.token[10:]
            self.assertIsNone(self.sealer.unseal(token, PURPOSE), repr(junk))

    def test_padding_refused(self) -> None:
        """Padded base64 is refused: the format has no padding."""
        token = self.sealer.seal(b"x", PURPOSE)  # 34 bytes: 46 characters, 2 of padding
        self.assertEqual(len(token) % 4, 2)
        self.assertIsNone(self.sealer.unseal(token + "==", PURPOSE))

    def test_non_canonical_refused(self) -> None:
        """A last character differing only in unused bits is refused: one spelling per value."""
        token = self.sealer.seal(b"x", PURPOSE)  # 46 characters: the last carries 4 unused bits
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        variant = token[:-1] + alphabet[alphabet.index(token[-1]) ^ 1]
        self.assertNotEqual(variant, token)
        self.assertEqual(decode(variant), decode(token))
        self.assertIsNone(self.sealer.unseal(variant, PURPOSE))

    def test_impossible_length(self) -> None:
        """A base64 text whose length leaves one character over is refused."""
        token = self.token + "A" * ((1 - len(self.token)) % 4 or 4)
        self.assertEqual(len(token) % 4, 1)
        self.assertIsNone(self.sealer.unseal(token, PURPOSE))

    def test_empty(self) -> None:
        """The empty string is refused."""
        self.assertIsNone(self.sealer.unseal("", PURPOSE))

    def test_not_a_string(self) -> None:
        """Non-string input (bytes, None) is refused."""
        self.assertIsNone(self.sealer.unseal(self.token.encode("ascii"), PURPOSE))  # type: ignore[arg-type]
        self.assertIsNone(self.sealer.unseal(None, PURPOSE))  # type: ignore[arg-type]

    def test_oversized(self) -> None:
        """A genuine value longer than L{MAX_TOKEN_LENGTH} characters is refused."""
        token = self.sealer.seal(b"x" * (MAX_TOKEN_LENGTH * 3 // 4), PURPOSE)
        self.assertGreater(len(token), MAX_TOKEN_LENGTH)
        self.assertIsNone(self.sealer.unseal(token, PURPOSE))

    def test_largest_accepted(self) -> None:
        """A genuine value of exactly L{MAX_TOKEN_LENGTH} characters opens."""
        # 64 KiB characters of base64 are 49152 bytes: 33 of overhead.
        plaintext = b"y" * (MAX_TOKEN_LENGTH * 3 // 4 - 33)
        token = self.sealer.seal(plaintext, PURPOSE)
        self.assertEqual(len(token), MAX_TOKEN_LENGTH)
        self.assertEqual(self.sealer.unseal(token, PURPOSE), plaintext)
