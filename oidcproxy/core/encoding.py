"""
Base64url without padding (RFC 4648, 5), the spelling of JWTs (RFC 7515, 2),
PKCE challenges (RFC 7636, 4.2), sealed cookie values and Redis key names.

L{b64url_decode} is strict: one byte string has exactly one accepted text, so
a value cannot be re-spelled (padding, another alphabet, stray low bits in the
last character) to slip past a comparison or a cache made on its text.
"""

from __future__ import annotations

import base64
import binascii
import re

__all__ = ["b64url_decode", "b64url_decode_lenient", "b64url_encode"]

_ALPHABET = re.compile(r"[A-Za-z0-9_-]*")


def b64url_encode(data: bytes) -> str:
    """C{data} as unpadded base64url text (C{[A-Za-z0-9_-]*})."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """
    Decode unpadded base64url text strictly: only the URL-safe alphabet, no
    C{=}, no length that no byte string has, and only the canonical
    spelling (the unused low bits of the last character are zero). The
    empty text is the empty byte string.

    @raise ValueError: for anything else, without the text in the message.
    """
    if not isinstance(text, str) or _ALPHABET.fullmatch(text) is None or len(text) % 4 == 1:
        raise ValueError("not unpadded base64url")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error:  # pragma: no cover - the checks above leave nothing it refuses
        raise ValueError("not unpadded base64url") from None
    if b64url_encode(data) != text:
        raise ValueError("not canonical base64url")
    return data


def b64url_decode_lenient(text: str) -> bytes:
    """
    Decode base64url text as a JWT library reads a payload: padding
    optional, characters outside the alphabet skipped, stray low bits
    ignored. Only for data whose integrity is vouched for otherwise (a token
    straight from the token endpoint), never for a comparison.

    @raise ValueError: the text cannot be decoded at all.
    """
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, TypeError):
        raise ValueError("not base64url") from None
