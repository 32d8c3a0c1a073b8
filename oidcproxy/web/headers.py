"""
The identity headers: the claims the wrapped resource receives as request
headers (C{[headers]}, the tokens), and the managed names no client may send
under any spelling.
"""

from __future__ import annotations

import base64
import re
from typing import Any, Dict, Optional, Sequence

from twisted.logger import Logger
from twisted.web.server import Request

from ..config import Config, OIDCConfig
from ..proxy.headers import canonical_header
from .identity import claim

__all__ = ["ACCESS_TOKEN_HEADER", "ID_TOKEN_HEADER", "HeaderNames", "header_value",
           "managed_headers", "pass_session_tokens", "passes_client_authorization",
           "set_identity_headers"]

log = Logger()

ACCESS_TOKEN_HEADER = "X-Forwarded-Access-Token"
ID_TOKEN_HEADER = "X-Forwarded-Id-Token"


def header_value(value: Any) -> Optional[bytes]:
    """
    A claim value as a header value: lists comma-joined, booleans as
    C{true}/C{false}. Values with control characters (CR, LF, NUL, ...) are
    dropped (None). Non-ASCII values, and values that could be mistaken for an
    encoded one, are sent as an RFC 2047 encoded word: C{=?UTF-8?B?<base64 of
    the UTF-8>?=}; so are values containing C{=?} anywhere (an RFC 2047
    decoder would otherwise read part of them as encoded), list items that
    contain a comma, and values and items that start or end with a space
    (HTTP parsers strip those: C{" admin"} would arrive as C{admin}).
    """
    if isinstance(value, bool):
        return b"true" if value else b"false"
    if isinstance(value, (int, float)):
        return str(value).encode("ascii")
    if isinstance(value, str):
        return _encode_text(value, comma=False)
    if isinstance(value, list):
        parts = []
        for item in value:
            if isinstance(item, (str, int, float)) and not isinstance(item, bool):
                encoded = _encode_text(str(item), comma=True)
                if encoded is None:
                    return None
                parts.append(encoded)
        return b",".join(parts) if parts else None
    return None


_CONTROL = re.compile("[\x00-\x1f\x7f]")


def _encode_text(text: str, comma: bool) -> Optional[bytes]:
    if _CONTROL.search(text):
        return None
    if text.isascii() and "=?" not in text and not (comma and "," in text) and \
            text.strip(" ") == text:
        return text.encode("ascii")
    # RFC 2047's B encoding is standard base64 (with padding), not base64url.
    return b"=?UTF-8?B?" + base64.b64encode(text.encode("utf-8", "replace")) + b"?="


class HeaderNames:
    """The spelling-insensitive set of headers the proxy manages."""

    def __init__(self, names: Sequence[str]) -> None:
        self.canonical = frozenset(canonical_header(n.encode("ascii")) for n in names)

    def strip(self, request: Request) -> None:
        """Remove every header of the set from C{request}, under any spelling."""
        headers = request.requestHeaders
        doomed = [name for name, _ in headers.getAllRawHeaders()
                  if canonical_header(name) in self.canonical]
        for name in doomed:
            headers.removeHeader(name)


def _passes_authorization(config: Config) -> bool:
    """Whether a provider ([oidc] or a named one) passes its access tokens as C{Authorization}."""
    return any(oidc is not None and oidc.pass_access_token == "authorization"
               for oidc in (config.oidc, *(table for _, table in config.providers)))


def managed_headers(config: Config) -> HeaderNames:
    """The identity headers of C{config}, which no client may send."""
    managed = [name for name, _ in config.headers] + [ACCESS_TOKEN_HEADER, ID_TOKEN_HEADER]
    if _passes_authorization(config):
        managed.append("Authorization")
    return HeaderNames(managed)


def set_identity_headers(request: Request, config: Config, claims: Dict[str, Any]) -> None:
    """The identity headers of C{claims}: for each of C{[headers]}, the first claim present."""
    headers = request.requestHeaders
    for name, candidates in config.headers:
        for candidate in candidates:
            value = claim(claims, candidate)
            if value is None:
                continue
            encoded = header_value(value)
            if encoded is None:
                log.info("claim {claim} not sent as {header}: unusable value",
                         claim=candidate, header=name)
                continue
            headers.setRawHeaders(name.encode("ascii"), [encoded])
            break


def pass_session_tokens(request: Request, oidc: Optional[OIDCConfig], access_token: Optional[str],
                        id_token: Optional[str]) -> None:
    """A session's tokens, as C{pass_access_token} and C{pass_id_token} of its provider C{oidc} say."""
    if oidc is None:
        return
    headers = request.requestHeaders
    if access_token:
        if oidc.pass_access_token == "authorization":
            headers.setRawHeaders(b"authorization", [b"Bearer " + access_token.encode("ascii")])
        elif oidc.pass_access_token == "header":
            headers.setRawHeaders(ACCESS_TOKEN_HEADER.encode("ascii"),
                                  [access_token.encode("ascii")])
    if oidc.pass_id_token and id_token:
        headers.setRawHeaders(ID_TOKEN_HEADER.encode("ascii"), [id_token.encode("ascii")])


def passes_client_authorization(config: Config) -> bool:
    """
    Whether a bearer-authenticated request's C{Authorization} is put back
    after the managed headers were stripped: it is one of them only so
    that a session's access token replaces whatever a client sent
    (C{pass_access_token = "authorization"} of any provider), unless an identity header
    of C{[headers]} bears the name.
    """
    if not _passes_authorization(config):
        return False
    return all(canonical_header(name.encode("ascii")) != b"authorization"
               for name, _ in config.headers)
