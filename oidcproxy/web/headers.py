"""
The identity headers: the claims the wrapped resource receives as request
headers (C{[headers]}, the tokens, the sign-in's C{acr} and C{auth_time} of
C{[step_up]}), and the managed names no client may send under any spelling.
"""

from __future__ import annotations

import base64
import re
import weakref
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

from twisted.logger import Logger
from twisted.web.server import Request

from ..config import Config, OIDCConfig, StepUpConfig
from ..core.assurance import SignIn, sign_in_of
from ..core.context import RequestContext
from ..proxy.headers import canonical_header
from ..sessions.history import claims_sign_ins
from ..sessions.session import Session
from .answers import decided
from .identity import Identity, claim

__all__ = ["ACCESS_TOKEN_HEADER", "ID_TOKEN_HEADER", "HeaderNames", "IdentityPlan", "header_value",
           "managed_headers", "passes_client_authorization", "set_header_values",
           "set_session_identity"]

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


def _sign_in_headers(config: Config) -> Tuple[str, str]:
    """
    The names of the sign-in's headers, as stripped: the configured ones,
    or where one is not sent (C{""}), its default name, which an
    application may read all the same.
    """
    step_up, default = config.step_up, StepUpConfig()
    return (step_up.acr_header or str(default.acr_header),
            step_up.auth_time_header or str(default.auth_time_header))


def managed_headers(config: Config) -> HeaderNames:
    """The identity headers of C{config}, which no client may send."""
    managed = [name for name, _ in config.headers] + [ACCESS_TOKEN_HEADER, ID_TOKEN_HEADER]
    managed += _sign_in_headers(config)
    if _passes_authorization(config):
        managed.append("Authorization")
    return HeaderNames(managed)


HeaderValues = List[Tuple[bytes, List[bytes]]]
"""Identity headers to set on a request: (name, [value]) in order."""

_LOGGED_SESSIONS = 4096
"""The most sessions whose unusable claims an L{IdentityPlan} remembers having logged."""


class IdentityPlan:
    """
    The identity headers of one configuration, planned once (at start and
    on reload: L{oidcproxy.web.parts.GuardState}): each header's encoded
    name and the claims that feed it, and where a session's tokens go.

    A session is immutable, so the values of its headers are computed on
    its first request and kept, keyed by the session object, as long as
    that object lives (the cookie store keeps the sessions it opened for a
    while): its next requests set them as they are. An unusable claim
    value is logged once per session.
    """

    def __init__(self, config: Config) -> None:
        self._headers = tuple((name, name.encode("ascii"), tuple(candidates))
                              for name, candidates in config.headers)
        # Per provider (C{""}: C{[oidc]}), where a session's tokens go: the
        # access token's header (None: not passed) and whether the ID token is.
        self._tokens: Dict[str, Tuple[Optional[bytes], bool]] = {
            name: _token_plan(oidc)
            for name, oidc in (("", config.oidc), *config.providers) if oidc is not None}
        self._sessions: Dict[int, Tuple[Any, HeaderValues]] = {}
        self._logged: Set[str] = set()
        step_up = config.step_up
        self._acr_claims = {name: oidc.acr_claim for name, oidc in
                            (("", config.oidc), *config.providers) if oidc is not None}
        self._acr = step_up.acr_header.encode("ascii") if step_up.acr_header else None
        self._auth_time = step_up.auth_time_header.encode("ascii") \
            if step_up.auth_time_header else None

    def sign_in_values(self, sign_in: SignIn) -> HeaderValues:
        """
        The headers of a sign-in: its C{acr} and its C{auth_time} (whole
        seconds since the epoch), each when the sign-in has one and its
        header is sent.
        """
        out: HeaderValues = []
        acr, auth_time = sign_in
        if self._acr is not None and acr:
            value = header_value(acr)
            if value is not None:
                out.append((self._acr, [value]))
        if self._auth_time is not None and auth_time is not None:
            out.append((self._auth_time, [str(int(auth_time)).encode("ascii")]))
        return out

    def latest(self, claims: Dict[str, Any], provider: str) -> SignIn:
        """
        The sign-in C{claims} tell of, as the headers show it: with the
        provider's C{acr_claim = "acrs"}, every value of C{acrs}, comma-separated.
        """
        if self._acr_claims.get(provider, "acr") != "acrs":
            return sign_in_of(claims)
        sign_ins = claims_sign_ins(claims, "acrs")
        return ",".join(acr for acr, _ in sign_ins if acr), sign_ins[0][1]

    def set_sign_in(self, request: Request, sign_in: SignIn) -> None:
        """
        Put C{sign_in}'s headers in place of those of the session's latest
        sign-in (on a route with a requirement: the sign-in that met it).
        """
        headers = request.requestHeaders
        for name in (self._acr, self._auth_time):
            if name is not None:
                headers.removeHeader(name)
        set_header_values(request, self.sign_in_values(sign_in))

    def claim_values(self, claims: Dict[str, Any],
                     unusable: Optional[Callable[[str, str], None]] = None) -> HeaderValues:
        """For each identity header, the first of its claims present with a usable value."""
        out: HeaderValues = []
        for name, raw, candidates in self._headers:
            for candidate in candidates:
                value = claim(claims, candidate)
                if value is None:
                    continue
                encoded = header_value(value)
                if encoded is None:
                    (unusable or _log_unusable)(candidate, name)
                    continue
                out.append((raw, [encoded]))
                break
        return out

    def session_values(self, session: Session) -> HeaderValues:
        """The identity headers of C{session}'s claims and its tokens (computed once per session)."""
        key = id(session)
        entry = self._sessions.get(key)
        if entry is not None and entry[0]() is session:
            values: HeaderValues = entry[1]
            return values
        values = self.claim_values(session.claims, lambda c, n: self._unusable(session, c, n))
        access, id_token = session.access_token, session.id_token
        # The session's own provider says where its tokens go.
        access_header, pass_id_token = self._tokens.get(session.provider, (None, False))
        if access and access_header is not None:
            token = access.encode("ascii")
            values.append((access_header, [b"Bearer " + token if access_header == b"authorization"
                                           else token]))
        if pass_id_token and id_token:
            values.append((ID_TOKEN_HEADER.encode("ascii"), [id_token.encode("ascii")]))
        values += self.sign_in_values(self.latest(session.claims, session.provider))
        sessions = self._sessions

        def gone(ref: Any) -> None:
            if sessions.get(key, (None,))[0] is ref:
                del sessions[key]

        sessions[key] = (weakref.ref(session, gone), values)
        return values

    def _unusable(self, session: Session, candidate: str, name: str) -> None:
        """Log an unusable claim value once per session (by its id)."""
        key = f"{session.id}:{candidate}:{name}"
        if key in self._logged:
            return
        if len(self._logged) >= _LOGGED_SESSIONS:
            self._logged.clear()
        self._logged.add(key)
        _log_unusable(candidate, name)


def _token_plan(oidc: OIDCConfig) -> Tuple[Optional[bytes], bool]:
    """Where a provider's session tokens go: the access token's header (or None), the ID token's or not."""
    access = {"authorization": b"authorization",
              "header": ACCESS_TOKEN_HEADER.encode("ascii")}.get(oidc.pass_access_token)
    return access, bool(oidc.pass_id_token)


def _log_unusable(candidate: str, name: str) -> None:
    log.info("claim {claim} not sent as {header}: unusable value", claim=candidate, header=name)


def set_header_values(request: Request, values: HeaderValues) -> None:
    """Set planned identity headers on C{request}."""
    headers = request.requestHeaders
    for name, value in values:
        headers.setRawHeaders(name, value)


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


def set_session_identity(request: Request, ctx: RequestContext, plan: IdentityPlan,
                         session: Session, sign_in: Optional[SignIn] = None) -> None:
    """
    The identity of an admitted session: for the application and the
    upstream. (The access log's user was named when the session's checks
    began: L{oidcproxy.web.session_auth.SessionAuth}.) C{sign_in}: the one
    that met the route's requirement, on a route with one.
    """
    # For a WebSocket, which logout of this session closes.
    ctx.session = session
    ctx.identity = Identity(
        sub=session.sub, claims=session.claims, access_token=session.access_token,
        id_token=session.id_token, expires=session.expires)
    decided(request, "session", unless_decided=True)
    set_header_values(request, plan.session_values(session))
    if sign_in is not None:
        plan.set_sign_in(request, sign_in)
