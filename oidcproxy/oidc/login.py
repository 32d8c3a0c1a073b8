"""
The login: the authorization request (state, nonce, PKCE), the state cookie
that carries a login attempt through the IdP, and return-to validation.

Each attempt has its own cookie, named after its C{state}, so logins started
in parallel tabs never clobber each other; at most C{max_attempts} live at
once (the oldest are dropped). The cookie is sealed (encrypted and
authenticated) for the purpose C{b"state"} and binds the state, the nonce,
the PKCE verifier, the return-to path, the time the attempt started and
the provider it went to: a callback of one provider finds the state cookies
of every provider's attempts (they share the name), and refuses another's
(C{state_other_provider}). A step-up login's attempt also holds what it
asked of the sign-in (C{acr_values}, C{max_age}), which the callback checks
the ID token against.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple
from urllib.parse import urlencode, urlsplit

import attr

from ..core.encoding import b64url_encode

# The return-to rule lives in core (the configuration checks landing pages
# with it too); it stays importable from here.
from ..core.urls import MAX_RETURN_TO as MAX_RETURN_TO
from ..core.urls import safe_return_to as safe_return_to
from ..sessions.cookies import CookieSpec, clear_cookie_headers, set_cookie_headers
from ..sessions.crypto import Sealer
from ..sessions.session import DEFAULT_PROVIDER

STATE_PURPOSE = b"state"


def pkce_challenge(verifier: str) -> str:
    """The S256 code challenge of a PKCE code verifier (RFC 7636 4.2)."""
    return b64url_encode(hashlib.sha256(verifier.encode("ascii")).digest())


@attr.s(frozen=True, auto_attribs=True)
class LoginAttempt:
    """
    What the state cookie of one login attempt holds.

    @ivar provider: the name of the provider the attempt went to
        (L{DEFAULT_PROVIDER} for C{[oidc]}: not written, so the cookie of a
        default attempt is as it was before providers had names).
    @ivar acr_values: the C{acr_values} the login asked for (empty: none);
        the ID token's C{acr} must be one of them.
    @ivar max_age: the C{max_age} the login asked for (None: none); the ID
        token must have an C{auth_time} at most that old.
    @ivar step_up: a step-up login (a route's requirement the session did
        not meet): it lands on C{return_to} whatever the provider's
        post_login_redirect_url, and counts in the new session's step-ups.

    What a login asks of the sign-in is written as a seventh field only when
    it asks something, so the cookie of any other attempt is as it was
    before, and the cookies of attempts started before step-up (five or six
    fields) still open.
    """

    state: str
    nonce: str
    code_verifier: Optional[str]
    return_to: str
    created: float
    provider: str = DEFAULT_PROVIDER
    acr_values: Tuple[str, ...] = ()
    max_age: Optional[int] = None
    step_up: bool = False

    @property
    def asks(self) -> bool:
        """Whether the login asked something of the sign-in (acr values, a max_age, a step-up)."""
        return bool(self.acr_values) or self.max_age is not None or self.step_up

    def to_bytes(self) -> bytes:
        fields: List[Any] = [self.state, self.nonce, self.code_verifier, self.return_to,
                             self.created]
        if self.asks:
            asked: Dict[str, Any] = {}
            if self.acr_values:
                asked["acr"] = list(self.acr_values)
            if self.max_age is not None:
                asked["max_age"] = self.max_age
            if self.step_up:
                asked["step_up"] = True
            fields += [self.provider, asked]
        elif self.provider != DEFAULT_PROVIDER:
            fields.append(self.provider)
        return json.dumps(fields, separators=(",", ":")).encode("ascii")

    @classmethod
    def from_bytes(cls, data: bytes) -> Optional[LoginAttempt]:
        try:
            fields = json.loads(data)
        except (ValueError, TypeError, RecursionError):
            return None
        if not isinstance(fields, list) or len(fields) not in (5, 6, 7):
            return None
        state, nonce, verifier, return_to, created = fields[:5]
        provider = fields[5] if len(fields) >= 6 else DEFAULT_PROVIDER
        if not (
            isinstance(provider, str)
            and (len(fields) != 6 or provider != DEFAULT_PROVIDER)
            and isinstance(state, str)
            and isinstance(nonce, str)
            and (verifier is None or isinstance(verifier, str))
            and isinstance(return_to, str)
            and isinstance(created, (int, float))
            and not isinstance(created, bool)
        ):
            return None
        attempt = cls(state, nonce, verifier, return_to, float(created), provider)
        if len(fields) == 7:
            asked = _asked(fields[6])
            if asked is None:
                return None
            attempt = attr.evolve(attempt, acr_values=asked[0], max_age=asked[1],
                                  step_up=asked[2])
        return attempt


def _asked(value: Any) -> Optional[Tuple[Tuple[str, ...], Optional[int], bool]]:
    """
    The seventh field of a state cookie (what the login asked of the
    sign-in), or None when it is malformed or asks nothing (then it would
    not have been written).
    """
    if not isinstance(value, dict) or not set(value) <= {"acr", "max_age", "step_up"}:
        return None
    acr = value.get("acr", [])
    max_age = value.get("max_age")
    step_up = value.get("step_up", False)
    if not isinstance(acr, list) or not all(isinstance(a, str) and a for a in acr):
        return None
    if max_age is not None and (isinstance(max_age, bool) or not isinstance(max_age, int)
                                or max_age < 0):
        return None
    if not isinstance(step_up, bool) or not (acr or max_age is not None or step_up):
        return None
    return tuple(acr), max_age, step_up


class StateNames:
    """
    A container of the state cookies' names, for
    L{oidcproxy.sessions.cookies.strip_cookies}: every name made of the state cookie's
    wire name, C{_} and a suffix.
    """

    def __init__(self, wire_name: str) -> None:
        self._prefix = (wire_name + "_").encode("ascii")

    def __contains__(self, name: object) -> bool:
        return isinstance(name, bytes) and name.startswith(self._prefix)


class LoginFlow:
    """
    Starts login attempts and consumes them at the callback.

    @param sealer: seals the state cookies (purpose C{b"state"}).
    @param cookie: the state cookie's attributes; each attempt's cookie is
        named C{<wire name>_<state>}.
    @param max_age: seconds an attempt stays valid.
    @param max_attempts: state cookies kept at once; the oldest are dropped.
    @param provider: the name of the provider this flow logs in with
        (L{DEFAULT_PROVIDER}: C{[oidc]}'s); its attempts are bound to it.
    @param acr_claim: the provider's C{acr_claim}: with C{"acrs"} (Entra
        ID's authentication contexts) a login asks for its acr values with
        the C{claims} request parameter instead of C{acr_values}.
    """

    def __init__(
        self,
        *,
        sealer: Sealer,
        cookie: CookieSpec,
        max_age: float,
        max_attempts: int,
        client_id: str,
        redirect_uri: str,
        scopes: Sequence[str],
        pkce: bool,
        auth_params: Mapping[str, str],
        clock: Any,
        provider: str = DEFAULT_PROVIDER,
        acr_claim: str = "acr",
    ) -> None:
        self.provider = provider
        self._acr_claim = acr_claim
        self._sealer = sealer
        self._cookie = cookie
        self._prefix = cookie.wire_name + "_"
        self.names = StateNames(cookie.wire_name)
        self._max_age = max_age
        self._max_attempts = max_attempts
        self._client_id = client_id
        self._redirect_uri = redirect_uri
        self._scope = " ".join(scopes)
        self._pkce = pkce
        self._auth_params = dict(auth_params)
        self._clock = clock

    def _attempt_cookies(self, cookies: Mapping[bytes, bytes]) -> List[Tuple[str, bytes]]:
        prefix = self._prefix.encode("ascii")
        return [
            (name.decode("ascii", "replace"), value)
            for name, value in cookies.items()
            if name.startswith(prefix)
        ]

    def _cookie_for(self, name: str) -> CookieSpec:
        # CookieSpec puts the security prefix in front of its name: give it the
        # bare name of this attempt's cookie.
        bare = self._cookie.name + name[len(self._cookie.wire_name):]
        return attr.evolve(self._cookie, name=bare)

    def start(
        self, cookies: Mapping[bytes, bytes], return_to: str, authorization_endpoint: str,
        prompt: Optional[str] = None, acr_values: Sequence[str] = (),
        max_age: Optional[int] = None, step_up: bool = False,
    ) -> Tuple[str, List[bytes]]:
        """
        Begin a login attempt.

        @param cookies: the request's cookies (to find older attempts).
        @param return_to: where to land after login; must already be safe.
        @param prompt: the C{prompt} of this login (C{"login"} to sign in
            again, as someone else), over the configured one.
        @param acr_values: the authentication context classes to ask for
            (most preferred first; sent space-separated, over any
            configured C{acr_values} auth parameter), which the callback
            holds the ID token's C{acr} to.
        @param max_age: the most seconds since the user's sign-in (sent as
            C{max_age}); the callback requires the ID token's C{auth_time}
            to be that recent.
        @param step_up: a step-up login (see L{LoginAttempt.step_up}).
        @return: the authorization URL to redirect to, and the C{Set-Cookie}
            header values: this attempt's cookie, and deletions for the
            oldest attempts beyond C{max_attempts} and for unreadable ones.
        """
        now = self._clock.seconds()
        state = secrets.token_urlsafe(16)
        nonce = secrets.token_urlsafe(16)
        verifier = secrets.token_urlsafe(48) if self._pkce else None
        attempt = LoginAttempt(state, nonce, verifier, return_to, now, self.provider,
                               tuple(acr_values), max_age, step_up)

        headers: List[bytes] = []
        live: List[Tuple[float, str]] = []
        for name, value in self._attempt_cookies(cookies):
            old = self._open(value)
            if old is None or now - old.created >= self._max_age or \
                    name != self._prefix + old.state:
                headers += clear_cookie_headers(self._cookie_for(name), [name])
            else:
                live.append((old.created, name))
        live.sort()
        while len(live) >= self._max_attempts:
            _, name = live.pop(0)
            headers += clear_cookie_headers(self._cookie_for(name), [name])

        sealed = self._sealer.seal(attempt.to_bytes(), STATE_PURPOSE)
        spec = self._cookie_for(self._prefix + state)
        headers = set_cookie_headers(spec, sealed, int(self._max_age), ()) + headers

        params: Dict[str, str] = {
            "response_type": "code",
            "client_id": self._client_id,
            "redirect_uri": self._redirect_uri,
            "scope": self._scope,
            "state": state,
            "nonce": nonce,
        }
        if verifier is not None:
            params["code_challenge"] = pkce_challenge(verifier)
            params["code_challenge_method"] = "S256"
        for key, extra in self._auth_params.items():
            if extra == "":
                params.pop(key, None)
            else:
                params[key] = extra
        if prompt is not None:
            params["prompt"] = prompt
        if acr_values and self._acr_claim == "acrs":
            # Entra ID asks for authentication contexts as an essential
            # acrs claim of the ID token (OpenID Connect Core 5.5.1.1):
            # one context as "value", as Microsoft's documentation shows it,
            # several as "values".
            wanted: Dict[str, Any] = {"essential": True}
            if len(acr_values) == 1:
                wanted["value"] = acr_values[0]
            else:
                wanted["values"] = list(acr_values)
            params["claims"] = json.dumps({"id_token": {"acrs": wanted}},
                                          separators=(",", ":"))
        elif acr_values:
            params["acr_values"] = " ".join(acr_values)
        if max_age is not None:
            params["max_age"] = str(max_age)
        separator = "&" if urlsplit(authorization_endpoint).query else "?"
        return authorization_endpoint + separator + urlencode(params), headers

    def _open(self, value: bytes) -> Optional[LoginAttempt]:
        try:
            text = value.decode("ascii")
        except UnicodeDecodeError:
            return None
        plain = self._sealer.unseal(text, STATE_PURPOSE)
        return None if plain is None else LoginAttempt.from_bytes(plain)

    def consume(
        self, cookies: Mapping[bytes, bytes], state: str
    ) -> Tuple[Optional[LoginAttempt], str, List[bytes]]:
        """
        Find and consume the attempt of C{state}.

        @return: the attempt (None if there is no valid one), a reason code
            for the log when there is none (C{"no_state_cookie"},
            C{"bad_state_cookie"}, C{"state_mismatch"}, C{"state_expired"},
            C{"state_other_provider"}: the attempt went to another provider,
            whose answer this is not),
            and the C{Set-Cookie} values that delete the attempt's cookie —
            send them whatever happens next, so the attempt cannot be used
            again from this browser.
        """
        if not state or len(state) > 128 or not all(c.isalnum() or c in "-_" for c in state):
            return None, "bad_state", []
        name = self._prefix + state
        value = cookies.get(name.encode("ascii"))
        if value is None:
            return None, "no_state_cookie", []
        clear = clear_cookie_headers(self._cookie_for(name), [name])
        attempt = self._open(value)
        if attempt is None:
            return None, "bad_state_cookie", clear
        if not hmac.compare_digest(attempt.state, state):
            return None, "state_mismatch", clear
        if self._clock.seconds() - attempt.created >= self._max_age:
            return None, "state_expired", clear
        if attempt.provider != self.provider:
            return None, "state_other_provider", clear
        return attempt, "", clear
