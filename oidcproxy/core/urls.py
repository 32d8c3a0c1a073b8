"""
Return-to targets: which post-login and post-logout destinations are safe.

Here, at the bottom, because both the configuration (fixed landing pages)
and the login flow (the C{rd} of each request) check the same rule.
"""

from __future__ import annotations

import re
from typing import Optional
from urllib.parse import unquote_to_bytes

MAX_RETURN_TO = 2048
"""Longer return-to targets are refused (not truncated)."""

_UNSAFE_CHARS = frozenset('\\"<>`')
# Two slashes, with nothing or one or two dots between them, anywhere: a
# scheme-relative URL ("//evil"), one hidden behind a prefix
# ("/http://evil", "/?next=//evil") for an application that redirects again,
# or a dot segment ("/x/../..") that walks somewhere unexpected.
_SLASHES = re.compile(r"/\.{0,2}/")


def _plain_path_ok(text: str) -> bool:
    """
    One layer of a return-to target: a same-origin absolute path of printable
    ASCII without backslashes, quotes or angle brackets, and without two
    slashes (or slash-dot-slash) anywhere.
    """
    if not text.startswith("/") or _SLASHES.search(text):
        return False
    for c in text:
        o = ord(c)
        if o <= 0x20 or o >= 0x7F or c in _UNSAFE_CHARS:
            return False
    return True


def safe_return_to(value: Optional[str]) -> Optional[str]:
    """
    C{value} if it is a safe post-login (or post-logout) target, else None.

    Only same-origin paths are accepted: they start with exactly one C{/};
    hold only printable ASCII (no spaces, tabs, CR, LF or other controls, no
    backslash, no non-ASCII look-alikes); and stay so once percent-decoded,
    twice, because applications and browsers that decode again must not find a
    C{//evil}, a C{/\\evil} or a control character either. Targets longer
    than L{MAX_RETURN_TO} are refused, not truncated. Absolute URLs are
    refused, even to our own origin.
    """
    if not isinstance(value, str) or not value or len(value) > MAX_RETURN_TO:
        return None
    layer = value
    for _ in range(3):
        if not _plain_path_ok(layer):
            return None
        try:
            decoded = unquote_to_bytes(layer).decode("ascii")
        except UnicodeDecodeError:
            return None
        if decoded == layer:
            return value
        layer = decoded
    return None
