"""
Authenticated encryption of values handed to the browser (session cookies,
login state): AES-256-GCM with key rotation.

A sealed value is the unpadded URL-safe base64 of::

    version (1 byte, 0x01) | key id (4) | nonce (12) | ciphertext + tag (16)

The additional authenticated data is C{version + key id + purpose}, so a value
sealed for one purpose (C{b"session"}, C{b"state"}, ...) never opens as
another, and neither the version nor the key id can be altered.

Several secrets may be configured: the first one seals, all of them open, so a
new secret is rolled out by putting it first and the old one is removed once
every value sealed with it has expired.
"""

from __future__ import annotations

import hashlib
import os
from typing import Dict, List, Optional, Sequence, Tuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..core.encoding import b64url_decode, b64url_encode

VERSION = b"\x01"
MIN_SECRET_LENGTH = 32
KEY_ID_LENGTH = 4
NONCE_LENGTH = 12
TAG_LENGTH = 16
MAX_TOKEN_LENGTH = 64 * 1024
"""Longer sealed values are refused unread (characters of the base64 text)."""

_HKDF_INFO = b"oidcproxy aead v1"
_KEY_ID_PREFIX = b"oidcproxy key id"
_HEADER_LENGTH = len(VERSION) + KEY_ID_LENGTH + NONCE_LENGTH
_MIN_RAW_LENGTH = _HEADER_LENGTH + TAG_LENGTH


def derive_key(secret: bytes) -> bytes:
    """The 32-byte AES-256 key for one configured secret (HKDF-SHA256)."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO)
    return hkdf.derive(secret)


def key_id(key: bytes) -> bytes:
    """The 4-byte identifier of a derived key, written in front of each sealed value."""
    return hashlib.sha256(_KEY_ID_PREFIX + key).digest()[:KEY_ID_LENGTH]


class Sealer:
    """
    AES-256-GCM authenticated encryption with key rotation.

    @param secrets: at least one secret of at least 32 bytes; the first one
        seals, every one opens.
    @raise ValueError: no secret, or one shorter than 32 bytes.
    @raise TypeError: a secret that is not C{bytes}.
    """

    def __init__(self, secrets: Sequence[bytes]) -> None:
        secrets = list(secrets)
        if not secrets:
            raise ValueError("at least one secret is required")
        keys: Dict[bytes, List[AESGCM]] = {}
        seen = set()
        sealing: Optional[Tuple[bytes, AESGCM]] = None
        for index, secret in enumerate(secrets):
            if not isinstance(secret, bytes):
                raise TypeError(f"secret {index} is {type(secret).__name__}, not bytes")
            if len(secret) < MIN_SECRET_LENGTH:
                raise ValueError(
                    f"secret {index} is {len(secret)} bytes; at least {MIN_SECRET_LENGTH} are required"
                )
            key = derive_key(secret)
            if key in seen:
                continue
            seen.add(key)
            kid = key_id(key)
            aead = AESGCM(key)
            if sealing is None:
                sealing = (kid, aead)
            # Two different keys sharing a 4-byte id (one chance in 2**32) both
            # stay usable: unseal tries every key under the id.
            keys.setdefault(kid, []).append(aead)
        assert sealing is not None
        self._seal_key_id, self._seal_aead = sealing
        self._keys: Dict[bytes, Tuple[AESGCM, ...]] = {k: tuple(v) for k, v in keys.items()}

    def seal(self, plaintext: bytes, purpose: bytes) -> str:
        """
        Encrypt and authenticate C{plaintext} for C{purpose} with the first
        secret's key and a fresh random nonce.

        @return: cookie- and URL-safe text (C{[A-Za-z0-9_-]}).
        """
        header = VERSION + self._seal_key_id
        nonce = os.urandom(NONCE_LENGTH)
        sealed = self._seal_aead.encrypt(nonce, plaintext, header + purpose)
        return b64url_encode(header + nonce + sealed)

    def unseal(self, token: str, purpose: bytes) -> Optional[bytes]:
        """
        The plaintext of a value sealed by L{seal} for the same C{purpose}
        with any configured secret.

        @return: C{None} for anything wrong: not a string, too long, not
            strict base64, too short, unknown version or key id, a failed
            tag (tampering, another secret, another purpose). Never raises for
            a bad C{token}.
        """
        if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
            return None
        try:
            # Strict: one sealed value has exactly one accepted spelling.
            raw = b64url_decode(token)
        except ValueError:
            return None
        if len(raw) < _MIN_RAW_LENGTH or raw[:1] != VERSION:
            return None
        kid = raw[1 : 1 + KEY_ID_LENGTH]
        candidates = self._keys.get(kid)
        if candidates is None:
            return None
        aad = raw[: 1 + KEY_ID_LENGTH] + purpose
        nonce = raw[1 + KEY_ID_LENGTH : _HEADER_LENGTH]
        sealed = raw[_HEADER_LENGTH:]
        for aead in candidates:
            try:
                return aead.decrypt(nonce, sealed, aad)
            except InvalidTag:
                continue
        return None
