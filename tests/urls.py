"""
Where a browser goes for a redirect: the WHATWG URL parser's quirks on top of
RFC 3986 resolution, for the redirect property tests and fuzz target.
"""

from __future__ import annotations

from typing import Tuple
from urllib.parse import urljoin, urlsplit

__all__ = ["browser_resolve", "origin"]

# The C0 controls and space a browser strips from both ends of a URL; it
# removes tab, CR and LF everywhere (WHATWG URL, "basic URL parser").
_C0_SPACE = "".join(chr(c) for c in range(0x21))


def browser_resolve(base: str, reference: str) -> str:
    """
    Where a browser goes for C{reference} (a C{Location} value) on C{base}:
    blanks and controls stripped from the ends, tab, CR and LF removed,
    backslashes read as slashes (as for http and https), then RFC 3986
    resolution.
    """
    reference = reference.strip(_C0_SPACE)
    for c in "\t\n\r":
        reference = reference.replace(c, "")
    return urljoin(base, reference.replace("\\", "/"))


def origin(url: str) -> Tuple[str, str, int]:
    """The scheme, lower-case host and port (the default one when absent) of C{url}."""
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme, 0)
    return parts.scheme.lower(), (parts.hostname or "").lower(), port
