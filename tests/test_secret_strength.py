"""
How strong a secret is: measured in the bytes its text stands for (hex and
base64 decoded), with a warning for values that look easy to guess; keys
stay derived from the text as written.
"""

from __future__ import annotations

import base64

from twisted.trial.unittest import SynchronousTestCase

from oidcproxy.config import parse_config
from oidcproxy.config.secrets import MAKE_ONE, secret_bytes, short_secret, weak_secret
from oidcproxy.lint import secret_warnings
from oidcproxy.sessions.crypto import Sealer

from .fakes import OTHER_SECRET, SECRET

RANDOM = bytes.fromhex(SECRET)


class MeasureTests(SynchronousTestCase):
    """L{secret_bytes}: the documented forms, and text for anything else."""

    def test_forms(self):
        cases = [
            (RANDOM.hex(), "hex", RANDOM),
            (RANDOM.hex().upper(), "hex", RANDOM),
            (base64.b64encode(RANDOM).decode(), "base64", RANDOM),
            (base64.b64encode(RANDOM).decode().rstrip("="), "base64", RANDOM),
            (base64.urlsafe_b64encode(b"\xfb\xff" * 16).decode(), "base64url", b"\xfb\xff" * 16),
            (base64.urlsafe_b64encode(b"\xfb\xff" * 16).decode().rstrip("="), "base64url",
             b"\xfb\xff" * 16),
            ("a" * 32, "hex", b"\xaa" * 16),
            ("x" * 32, "base64", base64.b64decode("x" * 32)),
        ]
        for text, form, data in cases:
            self.assertEqual(secret_bytes(text), (data, form), text)

    def test_text(self):
        """What is not cleanly hex or base64 counts its UTF-8 bytes."""
        cases = [
            "a" * 33,  # odd number of hex digits, and no base64 length
            "YWJj=",  # padding at a length base64 never has
            "ab+c_d",  # both base64 alphabets at once
            "correct horse battery staple",
            "é" * 20,
            "abcd==ef",
        ]
        for text in cases:
            self.assertEqual(secret_bytes(text), (text.encode("utf-8"), "text"), text)

    def test_short(self):
        """The message says how it was measured and how to make a good one."""
        self.assertIsNone(short_secret(SECRET))
        self.assertIsNone(short_secret(RANDOM.hex()[:32], 16))
        self.assertEqual(
            short_secret(RANDOM.hex()[:32]),
            f"too short: 16 bytes once decoded from hex, at least 32 are needed; make one with: "
            f"{MAKE_ONE}")
        self.assertEqual(
            short_secret("é"), f"too short: 2 bytes of UTF-8 text, at least 32 are needed; "
            f"make one with: {MAKE_ONE}")
        self.assertEqual(
            short_secret("YQ"), f"too short: 1 byte once decoded from base64, at least 32 are "
            f"needed; make one with: {MAKE_ONE}")

    def test_weak(self):
        """
        One character repeated, or under 16 distinct byte values in 32 or
        more bytes, earns a warning; random secrets do not.
        """
        self.assertIsNone(weak_secret(SECRET))
        self.assertIsNone(weak_secret(OTHER_SECRET))
        self.assertIsNone(weak_secret(base64.b64encode(RANDOM).decode()))
        self.assertIsNone(weak_secret(RANDOM.hex()[:32]))  # short: refused, not warned
        self.assertEqual(weak_secret("é" * 40),
                         f"is one character repeated: it looks easy to guess; make a random one "
                         f"with: {MAKE_ONE}")
        self.assertEqual(weak_secret("0123456789" * 7),
                         f"has only 5 distinct byte values in its 35 bytes once decoded from hex: "
                         f"it looks easy to guess; make a random one with: {MAKE_ONE}")
        self.assertEqual(weak_secret("passwordpasswordpassword!password"),
                         f"has only 8 distinct byte values in its 33 bytes of UTF-8 text: it "
                         f"looks easy to guess; make a random one with: {MAKE_ONE}")


class ConfigWarningTests(SynchronousTestCase):
    """L{secret_warnings}: each weak secret of a valid config, by key and origin."""

    def test_names_each_weak_secret(self):
        weak = "ab" * 32  # 32 bytes of hex, one value repeated
        config = parse_config({
            "public_url": "https://app.example",
            "oidc": {"issuer": "https://idp.example", "client_id": "c", "client_secret": "s"},
            "session": {"secrets": [SECRET, weak]},
            "bearer": {"algorithms": ["HS256"], "hmac_secret": "x" * 44},
            "routes": [{"path": "/", "upstream": "http://127.0.0.1:9"}],
        }, "t.toml")
        self.assertEqual(secret_warnings(config), [
            "session.secrets[1]: the secret from the config file has only 1 distinct byte values "
            "in its 32 bytes once decoded from hex: it looks easy to guess; make a random one "
            f"with: {MAKE_ONE}",
            "bearer.hmac_secret: the secret from the config file is one character repeated: it "
            f"looks easy to guess; make a random one with: {MAKE_ONE}",
        ])

    def test_strong_secrets(self):
        config = parse_config({
            "session": {"secrets": [SECRET, OTHER_SECRET]},
            "routes": [{"path": "/", "upstream": "http://127.0.0.1:9", "auth": "none"}],
        }, "t.toml")
        self.assertEqual(secret_warnings(config), [])


class KeysTests(SynchronousTestCase):
    """Only the check changed: keys come from the text as written, as before."""

    def test_keys_from_the_text(self):
        sealed = Sealer([SECRET.encode("utf-8")]).seal(b"session", b"purpose")
        self.assertEqual(Sealer([SECRET.encode("utf-8")]).unseal(sealed, b"purpose"), b"session")
        self.assertIsNone(Sealer([RANDOM]).unseal(sealed, b"purpose"))
        config = parse_config({
            "session": {"secrets": [SECRET]},
            "routes": [{"path": "/", "upstream": "http://127.0.0.1:9", "auth": "none"}],
        }, "t.toml")
        self.assertEqual(config.session.secrets[0].reveal(), SECRET)
