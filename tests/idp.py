"""
In-memory helpers for driving an authenticating resource end to end:

  - L{FakeIdP}: an OpenID provider as a twisted.web resource (discovery,
    JWKS, token and userinfo endpoints) that signs real RS256 ID tokens with
    times from a L{twisted.internet.task.Clock};
  - L{Network}: pumps every in-memory connection (treq's
    C{RequestTraversalAgent}s) until nothing moves any more;
  - L{Browser}: a client over a C{RequestTraversalAgent} that keeps its
    cookies itself, so tests can look at every C{Set-Cookie} attribute.

Nothing touches the network and nothing sleeps.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple
from urllib.parse import parse_qs, urlsplit

import attr
import jwt
import treq
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from treq.testing import RequestTraversalAgent
from twisted.internet.defer import Deferred
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from oidcproxy.core.httpclient import BytesProducer

ISSUER = "https://idp.test"
AUTHORIZATION_ENDPOINT = ISSUER + "/authorize"
TOKEN_ENDPOINT = ISSUER + "/token"
JWKS_URI = ISSUER + "/jwks"
USERINFO_ENDPOINT = ISSUER + "/userinfo"

# One fresh key per test process: 2048-bit RSA keys are slow to make (worst
# on PyPy), and the key is never mutated.
SIGNING_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
KEY_ID = "test-key-" + secrets.token_hex(4)


def public_jwk() -> Dict[str, Any]:
    jwk = json.loads(RSAAlgorithm.to_jwk(SIGNING_KEY.public_key()))
    jwk.update({"kid": KEY_ID, "use": "sig", "alg": "RS256"})
    return jwk


def s256(verifier: str) -> str:
    """The PKCE S256 challenge of a code verifier (RFC 7636 4.2)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def at_hash(access_token: str) -> str:
    digest = hashlib.sha256(access_token.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode("ascii")


@attr.s(auto_attribs=True)
class Grant:
    """What the IdP remembers about a code it issued."""

    code: str
    nonce: Optional[str]
    sub: str
    claims: Dict[str, Any]
    challenge: Optional[str]
    with_at_hash: bool
    id_token_changes: Dict[str, Any]
    userinfo: Dict[str, Any]
    used: bool = False


@attr.s(auto_attribs=True)
class TokenRequest:
    """One request the token endpoint received."""

    form: Dict[str, List[str]]
    authorization: Optional[bytes]
    content_type: Optional[bytes]

    def field(self, name: str) -> Optional[str]:
        values = self.form.get(name)
        return values[0] if values else None


class FakeIdP(Resource):
    """
    An OpenID provider at L{ISSUER}.

    @ivar discovery_status: the discovery endpoint's status; anything but
        200 makes the provider unusable.
    @ivar hold_token_requests: keep token requests open (the IdP hangs).
    @ivar token_requests: every request the token endpoint received.
    @ivar iss_parameter_supported: advertise RFC 9207.
    """

    isLeaf = True

    def __init__(
        self,
        clock: Any,
        client_id: str,
        client_secret: Optional[str] = None,
        iss_parameter_supported: bool = False,
        issuer: str = ISSUER,
    ) -> None:
        super().__init__()
        self.issuer = issuer
        self.clock = clock
        self.client_id = client_id
        self.client_secret = client_secret
        self.iss_parameter_supported = iss_parameter_supported
        self.discovery_status = 200
        self.jwks_status = 200
        """The JWKS endpoint's status; anything but 200 leaves the keys unloaded."""
        self.hold_token_requests = False
        self.held: List[Any] = []
        self.grants: Dict[str, Grant] = {}
        self.token_requests: List[TokenRequest] = []
        self.issued: List[Dict[str, Any]] = []
        """Every token response sent, in order."""
        self._userinfo: Dict[str, Dict[str, Any]] = {}
        self.paths: List[bytes] = []
        self.refresh_grants: Dict[str, Grant] = {}
        """Live refresh tokens and the login they belong to (rotated on use)."""
        self.refresh_error: Optional[Tuple[int, str]] = None
        """Answer refresh grants with this (status, OAuth error) instead."""
        self.refresh_sub: Optional[str] = None
        """Put this sub (instead of the login's) in refreshed ID tokens."""
        self.refresh_count = 0
        self.advertise_logout = False
        """Advertise end_session_endpoint and revocation_endpoint."""
        self.revoked: List[Tuple[str, Optional[str]]] = []

    # -- what tests call

    def discovery_document(self) -> Dict[str, Any]:
        document: Dict[str, Any] = {
            "issuer": self.issuer,
            "authorization_endpoint": self.issuer + AUTHORIZATION_ENDPOINT[len(ISSUER):],
            "token_endpoint": self.issuer + TOKEN_ENDPOINT[len(ISSUER):],
            "jwks_uri": self.issuer + JWKS_URI[len(ISSUER):],
            "userinfo_endpoint": self.issuer + USERINFO_ENDPOINT[len(ISSUER):],
            "id_token_signing_alg_values_supported": ["RS256"],
            "code_challenge_methods_supported": ["S256"],
            "response_types_supported": ["code"],
        }
        if self.iss_parameter_supported:
            document["authorization_response_iss_parameter_supported"] = True
        if self.advertise_logout:
            document["end_session_endpoint"] = self.issuer + "/logout?ui=1"
            document["revocation_endpoint"] = self.issuer + "/revoke"
        return document

    def issue_code(
        self,
        nonce: Optional[str],
        sub: str = "user-1",
        claims: Optional[Mapping[str, Any]] = None,
        code_verifier_challenge: Optional[str] = None,
        with_at_hash: bool = True,
        userinfo_claims: Optional[Mapping[str, Any]] = None,
        **id_token_changes: Any,
    ) -> str:
        """
        An authorization code, as if the user had logged in at the authorize
        endpoint.

        @param nonce: the nonce of the authorization request (put in the ID
            token; None leaves it out).
        @param claims: extra ID token claims.
        @param code_verifier_challenge: the S256 challenge the authorization
            request carried; the token request must bring its verifier.
        @param userinfo_claims: claims the userinfo endpoint adds (or
            changes, C{sub} included; None removes one) for this login's
            access token.
        @param id_token_changes: ID token claims to set (None removes one).
        """
        code = "code-" + secrets.token_urlsafe(12)
        self.grants[code] = Grant(
            code=code,
            nonce=nonce,
            sub=sub,
            claims=dict(claims or {}),
            challenge=code_verifier_challenge,
            with_at_hash=with_at_hash,
            id_token_changes=dict(id_token_changes),
            userinfo={k: v for k, v in {"sub": sub, **dict(claims or {}),
                                        **dict(userinfo_claims or {})}.items()
                      if v is not None},
        )
        return code

    def id_token(self, claims: Mapping[str, Any], kid: str = KEY_ID) -> str:
        return jwt.encode(dict(claims), SIGNING_KEY, algorithm="RS256", headers={"kid": kid})

    def release_held(self, code: int = 500) -> None:
        """Answer every held request with an error."""
        held, self.held = self.held, []
        for request in held:
            request.setResponseCode(code)
            request.finish()

    # -- the resource

    def render(self, request: Any) -> Any:
        self.paths.append(request.path)
        if request.path == b"/.well-known/openid-configuration":
            if self.discovery_status != 200:
                request.setResponseCode(self.discovery_status)
                request.setHeader(b"content-type", b"text/plain")
                return b"down for maintenance"
            return self._json(request, 200, self.discovery_document())
        if request.path == b"/jwks":
            if self.jwks_status != 200:
                request.setResponseCode(self.jwks_status)
                return b"down for maintenance"
            return self._json(request, 200, {"keys": [public_jwk()]})
        if request.path == b"/token" and request.method == b"POST":
            return self._token(request)
        if request.path == b"/userinfo":
            return self._userinfo_answer(request)
        if request.path == b"/revoke" and request.method == b"POST":
            form = parse_qs(request.content.read().decode("ascii"))
            self.revoked.append((form["token"][0], (form.get("token_type_hint") or [None])[0]))
            return b""
        request.setResponseCode(404)
        return b"not found"

    @staticmethod
    def _json(request: Any, code: int, document: Any) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(document).encode("utf-8")

    def _oauth_error(self, request: Any, code: int, error: str, description: str) -> bytes:
        return self._json(request, code, {"error": error, "error_description": description})

    def _token(self, request: Any) -> Any:
        body = request.content.read()
        form = {k: list(v) for k, v in parse_qs(body.decode("ascii"), keep_blank_values=True).items()}
        seen = TokenRequest(
            form=form,
            authorization=(request.requestHeaders.getRawHeaders(b"authorization") or [None])[0],
            content_type=(request.requestHeaders.getRawHeaders(b"content-type") or [None])[0],
        )
        self.token_requests.append(seen)
        if self.hold_token_requests:
            request.notifyFinish().addErrback(lambda _: None)
            self.held.append(request)
            return NOT_DONE_YET
        if self.client_secret is not None:
            expected = b"Basic " + base64.b64encode(
                f"{self.client_id}:{self.client_secret}".encode("ascii"))
            if seen.authorization != expected:
                return self._oauth_error(request, 401, "invalid_client", "bad client credentials")
        if seen.field("grant_type") == "refresh_token":
            return self._refresh(request, seen)
        if seen.field("grant_type") != "authorization_code":
            return self._oauth_error(request, 400, "unsupported_grant_type", "only codes here")
        grant = self.grants.get(seen.field("code") or "")
        if grant is None or grant.used:
            if grant is not None:
                grant.used = True
            return self._oauth_error(request, 400, "invalid_grant", "unknown or used code")
        grant.used = True
        if grant.challenge is not None:
            verifier = seen.field("code_verifier")
            if verifier is None or s256(verifier) != grant.challenge:
                return self._oauth_error(request, 400, "invalid_grant", "PKCE verification failed")
        now = int(self.clock.seconds())
        access_token = "at-" + secrets.token_urlsafe(16)
        refresh_token = "rt-" + secrets.token_urlsafe(16)
        claims: Dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.client_id,
            "sub": grant.sub,
            "iat": now,
            "exp": now + 300,
        }
        if grant.nonce is not None:
            claims["nonce"] = grant.nonce
        if grant.with_at_hash:
            claims["at_hash"] = at_hash(access_token)
        claims.update(grant.claims)
        for name, value in grant.id_token_changes.items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        document = {
            "access_token": access_token,
            "token_type": "Bearer",
            "id_token": self.id_token(claims),
            "expires_in": 300,
            "refresh_token": refresh_token,
        }
        self._userinfo[access_token] = dict(grant.userinfo)
        self.refresh_grants[refresh_token] = grant
        self.issued.append(document)
        return self._json(request, 200, document)

    def _refresh(self, request: Any, seen: TokenRequest) -> bytes:
        """The refresh_token grant, with rotation: each refresh token works once."""
        self.refresh_count += 1
        if self.refresh_error is not None:
            status, error = self.refresh_error
            return self._oauth_error(request, status, error, "refresh refused")
        grant = self.refresh_grants.pop(seen.field("refresh_token") or "", None)
        if grant is None:
            return self._oauth_error(request, 400, "invalid_grant", "unknown or used refresh token")
        now = int(self.clock.seconds())
        access_token = "at-" + secrets.token_urlsafe(16)
        refresh_token = "rt-" + secrets.token_urlsafe(16)
        claims = {"iss": self.issuer, "aud": self.client_id, "sub": self.refresh_sub or grant.sub,
                  "iat": now, "exp": now + 300, **grant.claims}
        document = {
            "access_token": access_token,
            "token_type": "Bearer",
            "id_token": self.id_token(claims),
            "expires_in": 300,
            "refresh_token": refresh_token,
        }
        self.refresh_grants[refresh_token] = grant
        self.issued.append(document)
        return self._json(request, 200, document)

    def _userinfo_answer(self, request: Any) -> bytes:
        value = (request.requestHeaders.getRawHeaders(b"authorization") or [b""])[0]
        token = value[len(b"Bearer "):].decode("ascii", "replace") if value.startswith(b"Bearer ") else ""
        info = self._userinfo.get(token)
        if info is None:
            request.setHeader(b"www-authenticate", b'Bearer error="invalid_token"')
            return self._json(request, 401, {"error": "invalid_token"})
        return self._json(request, 200, info)


# -- moving bytes ---------------------------------------------------------------


def _flush(agent: Any) -> bool:
    """
    Flush one C{RequestTraversalAgent} (or anything with C{flush()}) and tell
    whether any byte moved.
    """
    pumps = getattr(agent, "_pumps", None)
    moved = False
    if pumps is not None:
        for pump in list(pumps):
            if pump.flush():
                moved = True
    agent.flush()  # also forgets finished connections
    return moved


class Network:
    """Every in-memory connection of a test, pumped together."""

    MAX_ROUNDS = 100

    def __init__(self) -> None:
        self._agents: List[Any] = []

    def add(self, agent: Any) -> Any:
        """Pump C{agent} too: a C{RequestTraversalAgent} or a C{StubTreq}."""
        self._agents.append(getattr(agent, "_agent", agent))
        return agent

    def pump(self) -> None:
        """Flush every connection until a whole round moves nothing (bounded)."""
        quiet = 0
        for _ in range(self.MAX_ROUNDS):
            moved = False
            for agent in list(self._agents):
                if _flush(agent):
                    moved = True
            quiet = 0 if moved else quiet + 1
            if quiet >= 2:
                return
        raise AssertionError(f"the in-memory network did not settle in {self.MAX_ROUNDS} rounds")


# -- the browser ----------------------------------------------------------------



@attr.s(frozen=True, auto_attribs=True)
class SetCookie:
    """One parsed C{Set-Cookie} header value."""

    raw: bytes
    name: str
    value: str
    attributes: Dict[str, str]
    """Attribute names lower-cased; flags (C{Secure}, C{HttpOnly}) map to C{""}."""

    @classmethod
    def parse(cls, raw: bytes) -> SetCookie:
        text = raw.decode("latin-1")
        first, *rest = text.split(";")
        name, _, value = first.partition("=")
        attributes: Dict[str, str] = {}
        for part in rest:
            key, _, val = part.strip().partition("=")
            attributes[key.lower()] = val
        return cls(raw, name.strip(), value.strip(), attributes)

    @property
    def deletes(self) -> bool:
        max_age = self.attributes.get("max-age")
        return max_age is not None and int(max_age) <= 0

    def has(self, flag: str) -> bool:
        return flag.lower() in self.attributes


@attr.s(auto_attribs=True)
class Page:
    """A response as the browser got it."""

    code: int
    headers: Headers
    body: bytes
    set_cookies: List[SetCookie]

    def header(self, name: bytes) -> Optional[bytes]:
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None

    @property
    def location(self) -> Optional[str]:
        value = self.header(b"location")
        return value.decode("ascii") if value is not None else None

    def location_query(self) -> Dict[str, List[str]]:
        assert self.location is not None, f"no Location on a {self.code}"
        return parse_qs(urlsplit(self.location).query, keep_blank_values=True)

    def cookie(self, name: str) -> Optional[SetCookie]:
        """The last C{Set-Cookie} for C{name}, if any."""
        found = [c for c in self.set_cookies if c.name == name]
        return found[-1] if found else None

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))


class Pending:
    """A request sent; its page once the network has delivered it."""

    def __init__(self, browser: Browser, d: Deferred) -> None:
        self._browser = browser
        self._result: List[Any] = []
        self._body: List[Any] = []
        d.addBoth(self._got_response)

    def _got_response(self, result: Any) -> None:
        self._result.append(result)
        if isinstance(result, BaseException) or hasattr(result, "getErrorMessage"):
            return
        treq.content(result).addBoth(self._body.append)

    @property
    def done(self) -> bool:
        return bool(self._body) or (bool(self._result) and hasattr(self._result[0], "getErrorMessage"))

    def page(self) -> Page:
        if not self._result:
            raise AssertionError("no response (yet)")
        response = self._result[0]
        if hasattr(response, "raiseException"):
            response.raiseException()
        if not self._body:
            raise AssertionError("the response body has not arrived (yet)")
        body = self._body[0]
        if hasattr(body, "raiseException"):
            body.raiseException()
        cookies = [SetCookie.parse(v) for v in response.headers.getRawHeaders(b"set-cookie", [])]
        self._browser._store(cookies)
        return Page(response.code, response.headers, body, cookies)


NAVIGATE_HEADERS: Dict[bytes, Sequence[bytes]] = {
    b"accept": [b"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"],
    b"sec-fetch-mode": [b"navigate"],
    b"sec-fetch-dest": [b"document"],
}


class Browser:
    """
    A client of C{resource} at C{origin} with a cookie jar of its own: every
    C{Set-Cookie} is parsed (C{Max-Age=0} deletes) and the jar is sent back
    in one C{Cookie} header.
    """

    def __init__(self, network: Network, resource: Any, origin: str = "https://app.test") -> None:
        self.network = network
        self.agent = network.add(RequestTraversalAgent(resource))
        self.origin = origin
        self.jar: Dict[str, str] = {}

    def _store(self, cookies: Sequence[SetCookie]) -> None:
        for cookie in cookies:
            if cookie.deletes:
                self.jar.pop(cookie.name, None)
            else:
                self.jar[cookie.name] = cookie.value

    def cookie_header(self) -> Optional[bytes]:
        if not self.jar:
            return None
        return "; ".join(f"{k}={v}" for k, v in self.jar.items()).encode("ascii")

    def send(
        self,
        method: bytes,
        target: str,
        headers: Optional[Mapping[bytes, Sequence[bytes]]] = None,
        body: Optional[bytes] = None,
        cookies: bool = True,
    ) -> Pending:
        url = target if target.startswith(("http://", "https://")) else self.origin + target
        out = Headers()
        for name, values in (headers or {}).items():
            out.setRawHeaders(name, list(values))
        jar = self.cookie_header() if cookies else None
        if jar is not None and not out.hasHeader(b"cookie"):
            out.setRawHeaders(b"cookie", [jar])
        producer = BytesProducer(body) if body is not None else None
        return Pending(self, self.agent.request(method, url.encode("ascii"), out, producer))

    def request(self, method: bytes, target: str, **kwargs: Any) -> Page:
        pending = self.send(method, target, **kwargs)
        self.network.pump()
        return pending.page()

    def get(self, target: str, headers: Optional[Mapping[bytes, Sequence[bytes]]] = None,
            **kwargs: Any) -> Page:
        return self.request(b"GET", target, headers=headers, **kwargs)

    def navigate(self, target: str, headers: Optional[Mapping[bytes, Sequence[bytes]]] = None,
                 **kwargs: Any) -> Page:
        """A top-level navigation, as a browser sends it."""
        merged = dict(NAVIGATE_HEADERS)
        merged.update(headers or {})
        return self.request(b"GET", target, headers=merged, **kwargs)


def authorize_params(page: Page) -> Dict[str, str]:
    """The single-valued query parameters of a redirect to the authorize endpoint."""
    query = page.location_query()
    for name, values in query.items():
        assert len(values) == 1, f"{name} is repeated in {page.location}"
    return {name: values[0] for name, values in query.items()}


def split_location(page: Page) -> Tuple[str, str]:
    """C{(URL without the query, query)} of a redirect."""
    assert page.location is not None
    base, _, query = page.location.partition("?")
    return base, query
