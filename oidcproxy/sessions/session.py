"""
The login session: what the proxy knows about a signed-in user, how it is
serialised, and the interface of the stores that keep it.

Stores do not judge expiry: the guard calls L{session_state} on what a store
loads and decides.
"""

from __future__ import annotations

import json
import secrets
from typing import TYPE_CHECKING, Any, Dict, FrozenSet, List, Optional, Tuple

import attr
from twisted.internet.interfaces import IReactorTime
from zope.interface import Interface

from ..core.cache import BoundedCache
from ..core.numbers import finite_number

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from ..config import Config


DEFAULT_PROVIDER = ""
"""
The name under which sessions, login attempts and revocations of the
default provider (the C{[oidc]} table) go: the empty string, which no
C{[providers.NAME]} table can be named. Nothing of it is written out, so
what the proxy stored before it knew of several providers reads as the
default provider's.
"""

LIVE = "live"
EXPIRED = "expired"
IDLE = "idle"


class SessionStoreUnavailable(Exception):
    """
    The session backend cannot answer right now (e.g. Redis is down). Never
    raised for a bad, unknown or tampered cookie value: that is "no session".
    """


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


MAX_SIGN_INS = 8
"""The most earlier sign-ins a session keeps (L{Session.sign_ins})."""
MAX_STEP_UPS = 8
"""The most step-up logins a session remembers (L{Session.step_ups})."""


def _timed(value: Any, limit: int, time_optional: bool) -> Optional[Tuple[Tuple[str, Any], ...]]:
    """
    The C{sign_ins} or C{step_ups} of a serialised session: absent, or a
    list (of at most C{limit}) of C{[text, time]}, the text a string, the
    time a finite number (or C{null}, when C{time_optional}: a sign-in's
    C{auth_time} may be unknown). None: malformed.
    """
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > limit:
        return None
    out = []
    for item in value:
        if not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], str):
            return None
        when = finite_number(item[1])
        if when is None and not (time_optional and item[1] is None):
            return None
        out.append((item[0], when))
    return tuple(out)


_REQUIRED_STRINGS = ("id", "sub")
_REQUIRED_TIMES = ("created", "last_seen", "expires")
_OPTIONAL_STRINGS = ("id_token", "access_token", "refresh_token", "sid")


@attr.s(frozen=True, auto_attribs=True)
class Session:
    """
    One login session. Immutable: L{touched} and L{without_tokens} return
    changed copies.

    @ivar id: the session id (L{new_session_id}).
    @ivar sub: the OP's subject identifier.
    @ivar claims: ID token (and userinfo) claims; JSON-able.
    @ivar created: when the session started (epoch seconds, injected clock).
    @ivar last_seen: the last request seen with it.
    @ivar expires: its absolute end.
    @ivar sid: the OP's session id, for back-channel logout.
    @ivar provider: the name of the provider the user signed in with
        (C{[providers.NAME]}), or L{DEFAULT_PROVIDER} (C{""}) for C{[oidc]}'s.
        Serialised only when it is not the default, so a default session's
        value is what it was before providers had names, and such a value
        opens as the default provider's.
    @ivar sign_ins: the user's earlier sign-ins of this session's chain
        (C{(acr, auth_time)}, see L{oidcproxy.core.assurance.SignIn}),
        carried over when a step-up login replaced the session of the same
        user: one per C{acr} with its latest C{auth_time}, the latest first,
        at most L{MAX_SIGN_INS}. The latest sign-in is in the claims.
    @ivar step_ups: the step-up logins that made this session's chain:
        C{(path, time)} of each, the latest first, at most L{MAX_STEP_UPS}
        (those older than C{[step_up].attempt_window} are dropped as a login
        carries them over). Both are serialised only when not empty.
    """

    id: str
    sub: str
    claims: Dict[str, Any]
    created: float
    last_seen: float
    expires: float
    id_token: Optional[str] = None
    access_token: Optional[str] = None
    access_token_expires: Optional[float] = None
    refresh_token: Optional[str] = None
    sid: Optional[str] = None
    provider: str = DEFAULT_PROVIDER
    sign_ins: Tuple[Tuple[str, Optional[float]], ...] = ()
    step_ups: Tuple[Tuple[str, float], ...] = ()

    def to_bytes(self) -> bytes:
        """
        Compact JSON (ASCII, hence UTF-8) of every field, in declaration
        order; C{provider} only when it is not L{DEFAULT_PROVIDER}.

        @raise ValueError: a timestamp is not finite.
        @raise TypeError: the claims are not JSON-able.
        """
        data = {
            "id": self.id,
            "sub": self.sub,
            "claims": self.claims,
            "created": self.created,
            "last_seen": self.last_seen,
            "expires": self.expires,
            "id_token": self.id_token,
            "access_token": self.access_token,
            "access_token_expires": self.access_token_expires,
            "refresh_token": self.refresh_token,
            "sid": self.sid,
        }
        if self.provider != DEFAULT_PROVIDER:
            data["provider"] = self.provider
        if self.sign_ins:
            data["sign_ins"] = [list(s) for s in self.sign_ins]
        if self.step_ups:
            data["step_ups"] = [list(s) for s in self.step_ups]
        return json.dumps(data, separators=(",", ":"), allow_nan=False).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes) -> Optional[Session]:
        """
        Parse L{to_bytes} output.

        Required fields must be present with the right type (C{id} and C{sub}
        non-empty strings, C{claims} an object, timestamps finite numbers);
        optional fields may be absent or C{null} (an absent C{provider} is
        L{DEFAULT_PROVIDER}); unknown fields are ignored (a later version may
        add some).

        @return: the session, or C{None} for anything malformed. Never raises.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            return None
        try:
            obj = json.loads(bytes(data).decode("utf-8"), parse_constant=_reject_constant)
        except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            return None
        if not isinstance(obj, dict):
            return None
        fields: Dict[str, Any] = {}
        for name in _REQUIRED_STRINGS:
            value = obj.get(name)
            if not isinstance(value, str) or not value:
                return None
            fields[name] = value
        claims = obj.get("claims")
        if not isinstance(claims, dict):
            return None
        fields["claims"] = claims
        for name in _REQUIRED_TIMES:
            number = finite_number(obj.get(name))
            if number is None:
                return None
            fields[name] = number
        for name in _OPTIONAL_STRINGS:
            value = obj.get(name)
            if value is not None and not isinstance(value, str):
                return None
            fields[name] = value
        value = obj.get("access_token_expires")
        if value is not None:
            value = finite_number(value)
            if value is None:
                return None
        fields["access_token_expires"] = value
        provider = obj.get("provider")
        if provider is not None and not isinstance(provider, str):
            return None
        fields["provider"] = provider or DEFAULT_PROVIDER
        sign_ins = _timed(obj.get("sign_ins"), MAX_SIGN_INS, time_optional=True)
        step_ups = _timed(obj.get("step_ups"), MAX_STEP_UPS, time_optional=False)
        if sign_ins is None or step_ups is None:
            return None
        fields["sign_ins"], fields["step_ups"] = sign_ins, step_ups
        return cls(**fields)

    def without_tokens(self) -> Session:
        """
        A copy without the OP's tokens (ID, access and refresh token, and the
        access token's expiry). C{sid} and the claims stay.
        """
        return attr.evolve(
            self, id_token=None, access_token=None, access_token_expires=None, refresh_token=None
        )

    def touched(self, now: float) -> Session:
        """A copy last seen at C{now}."""
        return attr.evolve(self, last_seen=now)


_TAIL = 24
"""
Characters at the end of a sealed value that L{OpenedSessions} files it
under: base64 of its last 18 bytes or so, the AES-GCM tag (128 bits,
pseudo-random) and a little ciphertext.
"""


class OpenedSessions:
    """
    The sessions recently opened from sealed values, by value (the cookie
    store's): a browser sends the same cookie with every request, and
    opening it (AES-GCM, then JSON) is a good part of a
    request's own cost. A sealed value always opens to the same session and
    sessions are immutable, so a cached one is as good as a fresh one; the
    expiry, idle and revocation checks still run on every request.

    It holds the working set only: an entry not used for C{ttl} seconds (of
    C{clock}) is dropped, so memory follows the sessions active in the last
    minute, not every session ever seen; and it is bounded in entries and in
    characters of the values kept (the sessions take about as much again),
    least recently used first out. A value larger than a quarter of
    C{max_chars} is not kept at all.

    An entry is filed under the value's last characters (the AES-GCM tag)
    and keeps the whole value: a lookup hashes and compares a few dozen
    characters in the map, then compares the value once, in full, so only
    the very value that was opened finds the session. Keyed by the whole
    value (kilobytes), each lookup compared it at every step of the map
    (find, update, move to the end): most of a cached request's cost on
    PyPy. Two values that end alike (by chance or by design) share one
    place: the later one put replaces the other, and a lookup of one never
    finds the other's session, nor marks it used.
    """

    def __init__(self, clock: IReactorTime, max_entries: int = 2048, max_chars: int = 4_000_000,
                 ttl: float = 60.0) -> None:
        self._max_chars = max_chars
        self._cache: BoundedCache[str, Tuple[str, Session]] = BoundedCache(
            clock, max_entries, idle=ttl, max_weight=max_chars)

    def __len__(self) -> int:
        return len(self._cache)

    def get(self, value: str) -> Optional[Session]:
        """The session opened from C{value} (exactly), which becomes the most recently used."""
        cache, tail = self._cache, value[-_TAIL:]
        entry = cache.peek(tail)
        if entry is None or entry[0] != value:
            return None
        cache.get(tail)
        return entry[1]

    def put(self, value: str, size: int, session: Session) -> None:
        """Keep C{session} as opened from C{value}; C{size}: the characters of C{value}."""
        if size > self._max_chars // 4:
            return
        self._cache.put(value[-_TAIL:], (value, session), weight=size)


PROXY_CLAIMS = ("sub", "iss", "aud", "azp", "sid", "exp", "iat", "auth_time", "acr", "acrs",
                "amr", "email_verified")
"""
The claims a session keeps with C{session.claims = "used"} whatever the
configuration: the subject and issuer (a refreshed ID token must name the
same), the OP session (back-channel logout), the times and the
authentication context (how and when the user signed in: C{acrs} is Entra
ID's), and
C{email_verified} (an e-mail header or allow-list means little without it).
"""


def claims_in_use(config: Config) -> FrozenSet[str]:
    """
    The names of the top-level claims the proxy reads from a session with
    C{config}: L{PROXY_CLAIMS}, every claim C{[headers]} tries, the
    C{username_claim}, and every ID-token claim the routes' rules and
    allow-lists read (C{access_token.*} rules read the access token, which a
    session keeps apart). A dotted name (C{realm_access.roles}) keeps both
    the claim of that very name and the object it reaches into.
    """
    names = set(PROXY_CLAIMS)

    def add(name: str) -> None:
        names.add(name)
        names.add(name.split(".", 1)[0])

    for _, candidates in config.headers:
        for claim in candidates:
            add(claim)
    add(config.username_claim)
    for route in config.routes:
        if route.policy is not None:
            names.update(path[0] for token, path in route.policy.claim_paths()
                         if token == "id_token")
    return frozenset(names)


def kept_claims(claims: Dict[str, Any], names: FrozenSet[str]) -> Dict[str, Any]:
    """C{claims} without the top-level claims not in C{names}."""
    return {name: value for name, value in claims.items() if name in names}


def _json_size(value: Any) -> int:
    """Bytes of C{value} as L{Session.to_bytes} writes it."""
    try:
        return len(json.dumps(value, separators=(",", ":"), allow_nan=False))
    except (TypeError, ValueError):
        return 0


def _shown(name: str) -> str:
    """A claim name fit for a log line: printable and at most 40 characters."""
    name = "".join(c if c.isprintable() else "?" for c in name)
    return name if len(name) <= 40 else name[:39] + "\u2026"


def size_report(session: Session, with_tokens: bool = True) -> Tuple[str, List[str]]:
    """
    What makes C{session} large, without a value in it: its claims' size
    and the largest of them by name, then each token's size (when the store
    keeps the tokens); and the parts by size, largest first (C{"claims"},
    C{"id_token"}, C{"access_token"}, C{"refresh_token"}).
    """
    claims = _json_size(session.claims)
    largest = sorted(((_json_size(v), k) for k, v in session.claims.items()), reverse=True)[:3]
    parts = [(claims, "claims")]
    text = f"claims {claims:,} bytes (largest: " + \
        ", ".join(f"{_shown(k)} {n:,}" for n, k in largest) + ")"
    if with_tokens:
        for name in ("id_token", "access_token", "refresh_token"):
            token = getattr(session, name)
            if token:
                parts.append((len(token), name))
                text += f", {name.replace('_', ' ').replace('id ', 'ID ')} {len(token):,} bytes"
    return text, [name for _, name in sorted(parts, reverse=True)]


def new_session_id() -> str:
    """A fresh session id: 256 random bits, 43 URL-safe base64 characters."""
    return secrets.token_urlsafe(32)


def session_state(session: Session, now: float, idle_timeout: float) -> str:
    """
    Whether C{session} may still be used at C{now}.

    @param idle_timeout: seconds without a request after which the session
        lapses; 0 (or less) disables the idle check.
    @return: C{"expired"} when C{now >= session.expires} (checked first),
        C{"idle"} when C{idle_timeout > 0} and C{now - session.last_seen >=
        idle_timeout}, C{"live"} otherwise.
    """
    if now >= session.expires:
        return EXPIRED
    if idle_timeout > 0 and now - session.last_seen >= idle_timeout:
        return IDLE
    return LIVE


class ISessionStore(Interface):
    """
    Where sessions live. The browser holds only the value L{save} returns.
    """

    def load(cookie_value: str) -> Deferred[Optional[Session]]:
        """
        The session a cookie value stands for.

        @return: a Deferred firing with the L{Session}, or with C{None} when
            the value is unknown, tampered, undecryptable or malformed (a
            definitive "no session"); failing with L{SessionStoreUnavailable}
            when the backend cannot answer, never for bad input.
        """

    def save(session: Session) -> Deferred[str]:
        """
        Store C{session} (replacing a previous save of the same id).

        @return: a Deferred firing with the cookie value for the browser.
        """

    def delete(session: Session) -> Deferred[None]:
        """
        Remove the server-side state of C{session} (a no-op for stores that
        keep everything in the cookie).

        @return: a Deferred firing with C{None}.
        """


NOT_IN_MEMORY = "not in memory"
"""What L{ISessionCache.cached} answers when only L{ISessionStore.load} can tell."""


class ISessionCache(Interface):
    """
    A store that can answer some loads at once, from memory (the cookie
    store always can: the value is the session; a memory store too). The
    guard decides a request synchronously when its session is answered so,
    and awaits L{ISessionStore.load} otherwise.
    """

    def cached(cookie_value: str) -> Any:
        """
        What L{ISessionStore.load} would fire with, if that is known without
        waiting: the L{Session}, or C{None} ("no session": unknown, tampered,
        undecryptable, malformed); else L{NOT_IN_MEMORY}.
        """
