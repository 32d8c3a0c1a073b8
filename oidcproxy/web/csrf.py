"""
CSRF protection for the application behind the proxy: a signed
double-submit cookie.

With C{[csrf]} configured, a request authenticated by its session cookie may
change something (any method but GET, HEAD, OPTIONS and TRACE) only when it
carries, in a header (C{X-CSRF-Token} by default), the token the proxy put
in a cookie its scripts can read. A cross-site page can make the browser send
the session cookie, but it can read neither cookie nor token, so it cannot
fill in the header.

A token is C{<nonce>.<mac>}: 16 random bytes and an HMAC-SHA256, keyed from
the session secrets, over the session id and the nonce. So a token is only
good for the session it was made for (one planted from another session, or
kept from before a new login, is refused) and nobody without the secrets can
make one; the header must also equal the cookie (the double submit). Every
comparison takes constant time. Like the session secrets, the first secret
signs and all of them verify.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import List, Mapping, Optional, Sequence

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..core.encoding import b64url_decode, b64url_encode
from ..sessions.cookies import CookieSpec, clear_cookie_headers, set_cookie_headers

SAFE_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE"})
"""Methods that pass without a token (and get the cookie). Every other one needs it."""

MAX_TOKEN_LENGTH = 128
"""Longer header or cookie values are refused unread."""

_HKDF_INFO = b"oidcproxy csrf v1"
_NONCE_BYTES = 16


def _unb64(text: str) -> Optional[bytes]:
    """The bytes of canonical unpadded base64url C{text}; None for anything else."""
    try:
        return b64url_decode(text)
    except ValueError:
        return None


def _derive(secret: bytes) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO)
    return hkdf.derive(secret)


class CSRFProtection:
    """
    Makes, checks and hands out the CSRF tokens of one guard.

    @param secrets: the session secrets; the first signs, all verify.
    @param cookie: the token cookie (not HttpOnly: the page's scripts read it).
    @param header_name: the request header that must carry the token.
    @raise ValueError: no secret.
    """

    def __init__(self, secrets: Sequence[bytes], cookie: CookieSpec, header_name: str) -> None:
        if not secrets:
            raise ValueError("at least one secret is required")
        self._keys = [_derive(s) for s in secrets]
        self.cookie = cookie
        self.header_name = header_name

    def _mac(self, key: bytes, session_id: str, nonce: bytes) -> bytes:
        message = b"csrf\x00" + session_id.encode("utf-8") + b"\x00" + nonce
        return hmac.new(key, message, hashlib.sha256).digest()

    def token(self, session_id: str) -> str:
        """A fresh token for the session C{session_id}."""
        nonce = secrets.token_bytes(_NONCE_BYTES)
        return b64url_encode(nonce) + "." + b64url_encode(self._mac(self._keys[0], session_id, nonce))

    def valid(self, token: Optional[str], session_id: str) -> bool:
        """Whether C{token} was made (with any configured secret) for C{session_id}."""
        if not token or len(token) > MAX_TOKEN_LENGTH or token.count(".") != 1:
            return False
        nonce_text, mac_text = token.split(".")
        nonce, mac = _unb64(nonce_text), _unb64(mac_text)
        if nonce is None or mac is None or len(nonce) != _NONCE_BYTES:
            return False
        ok = False
        for key in self._keys:
            # Every key is tried, whatever matched: the time does not tell which.
            ok |= hmac.compare_digest(self._mac(key, session_id, nonce), mac)
        return ok

    def _cookie_value(self, cookies: Mapping[bytes, bytes]) -> Optional[str]:
        value = cookies.get(self.cookie.wire_name.encode("ascii"))
        if not value or len(value) > MAX_TOKEN_LENGTH:
            return None
        try:
            return value.decode("ascii")
        except UnicodeDecodeError:
            return None

    def refusal(self, cookies: Mapping[bytes, bytes], header_values: Optional[Sequence[bytes]],
                session_id: str) -> Optional[str]:
        """
        Why an unsafe request of the session C{session_id} must be refused, or
        None when it carries a good token: C{"missing_header"}, C{"repeated_header"},
        C{"missing_cookie"}, C{"token_mismatch"} (header and cookie differ), or
        C{"invalid_token"} (not made by us for this session).
        """
        if not header_values:
            return "missing_header"
        if len(header_values) != 1:
            return "repeated_header"
        cookie = self._cookie_value(cookies)
        if cookie is None:
            return "missing_cookie"
        header = header_values[0].strip()
        if not hmac.compare_digest(header, cookie.encode("ascii")):
            return "token_mismatch"
        if not self.valid(cookie, session_id):
            return "invalid_token"
        return None

    def cookie_headers(self, cookies: Mapping[bytes, bytes], session_id: str,
                       max_age: int) -> List[bytes]:
        """
        The C{Set-Cookie} values that give the browser a token of this
        session when its cookie is missing or belongs to another session;
        nothing when it already holds a good one.
        """
        if self.valid(self._cookie_value(cookies), session_id):
            return []
        return set_cookie_headers(self.cookie, self.token(session_id), max(0, max_age), ())

    def clear_headers(self, cookies: Mapping[bytes, bytes]) -> List[bytes]:
        """The C{Set-Cookie} value deleting the token cookie, when the request has one."""
        if self.cookie.wire_name.encode("ascii") not in cookies:
            return []
        return clear_cookie_headers(self.cookie, ())
