"""
C{twistd -n oidcproxy --demo}: the proxy, a development OpenID Provider and
an echo application, all on loopback, in one process.

B{Not for production.} The identity provider here knows two demo users whose
passwords are printed in the log and on its login page, keeps everything in
memory, and makes a new signing key, client secret and session secret at
every start. It exists so that a newcomer sees the whole login flow in a
browser a minute after C{pip install}, and it refuses to listen anywhere but
on a loopback address.

The parts:

  - L{DevelopmentProvider}: the OpenID Provider as a C{twisted.web} resource
    tree (L{DevelopmentProvider.resource}): discovery, JWKS (an RSA key made
    at start), C{/authorize} with a login form, C{/token} (authorization code
    with PKCE S256 and client authentication; refresh tokens, rotated on
    every use), C{/userinfo}, C{/end_session} and C{/revoke}. ID tokens and
    access tokens are real RS256 JWTs. Time comes from the injected clock.
  - L{EchoUpstream}: the application behind the proxy; it shows every request
    header it received, the identity headers highlighted.
  - L{demo_config}: the proxy's configuration, built in code and validated by
    L{parse_config} like a file.
  - L{make_demo_service}: binds the three loopback sockets first (so every
    URL is known before the configuration is built; the provider and the
    echo application are always on 127.0.0.1), then composes the
    ordinary L{ProxyService} with two more listeners, for the provider and
    the echo application. Its port file lists the proxy, the provider and
    the echo application, one address a line, in that order.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import re
import secrets
import socket
from html import escape
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple
from urllib.parse import parse_qsl, unquote_plus, urlencode, urlsplit

import attr
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from twisted.application.service import Service
from twisted.internet.endpoints import AdoptedStreamServerEndpoint
from twisted.logger import Logger
from twisted.web.resource import IResource, Resource
from twisted.web.server import Site

from ..config import Config, parse_config
from ..service import ListenError, ListenerService, ProxyService

__all__ = [
    "DEFAULT_LISTEN",
    "DEMO_USERS",
    "DemoClient",
    "DemoUser",
    "DevelopmentProvider",
    "EchoUpstream",
    "LoopbackEndpoint",
    "demo_client",
    "demo_config",
    "make_demo_service",
    "parse_loopback_endpoint",
]

log = Logger()

DEFAULT_LISTEN = "tcp:8080:interface=127.0.0.1"
"""Where the demo proxy listens without C{--listen}."""

LOOPBACK_INTERFACES = ("127.0.0.1", "::1", "localhost")

CLIENT_ID = "oidcproxy-demo"
SCOPES = ("openid", "profile", "email", "groups")

CODE_LIFETIME = 60.0
"""Seconds an authorization code may be exchanged (it works once)."""
LOGIN_LIFETIME = 600.0
"""Seconds a login form may be submitted after the authorization request."""
TOKEN_LIFETIME = 300
"""Seconds ID tokens and access tokens are valid: the proxy refreshes near the end."""
REFRESH_LIFETIME = 8 * 3600.0
"""Seconds a refresh token is valid (the proxy's session lifetime)."""
MAX_ENTRIES = 10_000
"""The most pending logins, codes, refresh tokens or revocations kept; the oldest go first."""

BROWSER_COOKIE = "demo_idp_browser"
"""The provider's cookie binding a login form to the browser that asked for it."""

BANNER = "Development identity provider \N{EM DASH} not for production."

_PKCE_VERIFIER = re.compile(r"[A-Za-z0-9\-._~]{43,128}")
_PKCE_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")
_ENDPOINT = re.compile(r"tcp:(?:port=)?([0-9]{1,5}):interface=(.+)")
_FORM = b"application/x-www-form-urlencoded"

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:52em;margin:0 auto;padding:0 1em 2em}"
    ".banner{background:#b00020;color:#fff;font-weight:bold;padding:.6em 1em;margin:0 -1em 1em}"
    "table{border-collapse:collapse;width:100%}td,th{border:1px solid #ccc;padding:.3em .5em;"
    "text-align:left;vertical-align:top;word-break:break-all}"
    "td:first-child,th:first-child{white-space:nowrap;word-break:normal;width:1%}"
    "tr.identity td{background:#fff3b0;font-weight:bold}.error{color:#b00020;font-weight:bold}"
    "input{font:inherit;margin:.2em 0}button{font:inherit;margin:.5em .5em 0 0}"
    "pre{white-space:pre-wrap;word-break:break-all;background:#f4f4f4;padding:.5em}"
)
_SECURITY_HEADERS = {
    b"cache-control": b"no-store",
    b"x-content-type-options": b"nosniff",
    b"x-frame-options": b"DENY",
    # Not no-referrer: Chrome then sends "Origin: null" with the login form.
    b"referrer-policy": b"same-origin",
}
_HTML_HEADERS = {
    **_SECURITY_HEADERS,
    b"content-security-policy":
        b"default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; frame-ancestors 'none'",
}


@attr.s(frozen=True, auto_attribs=True)
class DemoUser:
    """A user of the development provider: public, made-up credentials."""

    username: str
    password: str = attr.ib(repr=False)
    name: str
    email: str
    groups: Tuple[str, ...]

    @property
    def sub(self) -> str:
        return "demo-" + self.username


DEMO_USERS = (
    DemoUser("alice", "wonderland", "Alice Liddell", "alice@example.com", ("admins", "staff")),
    DemoUser("bob", "builder", "Bob Builder", "bob@example.com", ("staff",)),
)
"""alice may see the admins-only page, bob may not."""


@attr.s(frozen=True, auto_attribs=True)
class DemoClient:
    """The one client the development provider knows: the demo proxy."""

    client_id: str
    client_secret: str = attr.ib(repr=False)
    redirect_uris: Tuple[str, ...]
    post_logout_redirect_uris: Tuple[str, ...] = ()


# -- the proxy's side --------------------------------------------------------


@attr.s(frozen=True, auto_attribs=True)
class LoopbackEndpoint:
    """A C{tcp:PORT:interface=...} endpoint on a loopback interface."""

    description: str
    port: int
    interface: str
    """C{127.0.0.1}, C{::1} or C{localhost}, as given."""

    @property
    def bind_host(self) -> str:
        return "127.0.0.1" if self.interface == "localhost" else self.interface

    @property
    def family(self) -> int:
        return socket.AF_INET6 if ":" in self.bind_host else socket.AF_INET

    def url(self, port: int) -> str:
        host = f"[{self.interface}]" if ":" in self.interface else self.interface
        return f"http://{host}:{port}"


def parse_loopback_endpoint(description: str) -> LoopbackEndpoint:
    """
    Accept C{tcp:PORT:interface=127.0.0.1} (or C{::1}, written C{\\:\\:1} or
    C{::1}, or C{localhost}) and nothing else: the demo never listens beyond
    this machine.

    @raise ValueError: a one-line message naming C{description}.
    """
    match = _ENDPOINT.fullmatch(description.replace("\\:", ":"))
    if match is None or match.group(2) not in LOOPBACK_INTERFACES or \
            int(match.group(1)) > 65535:
        raise ValueError(
            f"--demo listens on loopback only: {description!r} is not "
            "tcp:PORT:interface=127.0.0.1 (or interface=::1, interface=localhost)")
    return LoopbackEndpoint(description, int(match.group(1)), match.group(2))


def bind_loopback(host: str, port: int, family: int) -> socket.socket:
    """
    A listening TCP socket on a loopback address.

    @raise ValueError: C{host} is not a loopback address.
    @raise OSError: the socket cannot be bound (port in use, say).
    """
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"{host} is not a loopback address")
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def demo_config(public_url: str, issuer: str, echo_url: str, client_secret: str,
                session_secret: str) -> Config:
    """
    The demo proxy's configuration, validated like a file: cookie sessions,
    and four routes to the echo application: C{/} (login), C{/public} (no
    login), C{/api} (bearer tokens only) and C{/admin} (login, members of
    C{admins} only).
    """
    data: Dict[str, Any] = {
        "public_url": public_url,
        "oidc": {
            "issuer": issuer,
            "client_id": CLIENT_ID,
            "client_secret": client_secret,
            "scopes": list(SCOPES),
            # So the echo page can show a token to try the /api route with.
            "pass_access_token": "header",
        },
        "session": {"store": "cookie", "secrets": [session_secret]},
        "headers": {
            "X-Forwarded-User": ["preferred_username", "sub"],
            "X-Forwarded-Email": "email",
            "X-Forwarded-Groups": "groups",
        },
        "routes": [
            {"path": "/", "upstream": echo_url, "auth": "session"},
            {"path": "/public", "upstream": echo_url, "auth": "none"},
            {"path": "/api", "upstream": echo_url, "auth": "bearer"},
            {"path": "/admin", "upstream": echo_url, "auth": "session",
             "rule": "Contains(`groups`, `admins`)"},
        ],
    }
    return parse_config(data, "<--demo>")


def demo_client(config: Config) -> DemoClient:
    """
    The proxy as the development provider's client: its secret, its
    callback, and where it may send the browser after logout (the logout's
    C{rd}: C{/}, or C{/public/} as the echo page's links say).
    """
    assert config.oidc is not None and config.oidc.client_secret is not None
    assert config.redirect_uri is not None and config.public_url is not None
    return DemoClient(config.oidc.client_id, config.oidc.client_secret.reveal(),
                      redirect_uris=(config.redirect_uri,),
                      post_logout_redirect_uris=(config.public_url + "/",
                                                 config.public_url + "/public/"))


class _QuietSite(Site):
    """
    A site without an access log: the provider's query strings hold ID
    tokens (C{id_token_hint}); the proxy logs every request anyway.
    """

    def log(self, request: Any) -> None:
        pass


class _BoundListener(ListenerService):
    """
    A listener on a socket bound beforehand (its port went into the
    configuration), adopted by the reactor at start.
    """

    def __init__(self, reactor: Any, description: str, factory: Any, sock: socket.socket) -> None:
        super().__init__(reactor, description, factory)
        self._socket: Optional[socket.socket] = sock

    def privilegedStartService(self) -> None:
        Service.privilegedStartService(self)
        sock, self._socket = self._socket, None
        assert sock is not None, "started twice"
        family = sock.family
        endpoint = AdoptedStreamServerEndpoint(self._reactor, sock.detach(), family)
        failures: List[Any] = []
        endpoint.listen(self._factory).addCallbacks(self._listened, failures.append)
        if failures:
            raise ListenError(f"cannot listen on {self.description!r}: {failures[0].value}")

    def stopService(self) -> Any:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        return super().stopService()


class _Banner(Service):
    """Logs what to open and how to log in, once everything listens."""

    def __init__(self, public_url: str, issuer: str, echo_url: str,
                 users: Sequence[DemoUser]) -> None:
        self.public_url = public_url
        self.issuer = issuer
        self.echo_url = echo_url
        self.users = users

    def text(self) -> str:
        rule = "=" * 72
        lines = [
            rule,
            "oidcproxy DEMO: a development identity provider, NOT FOR PRODUCTION",
            f"Open {self.public_url}/ in a browser (this exact host name) and log in as:",
        ]
        for user in self.users:
            credentials = f"{user.username} / {user.password}"
            lines.append(f"    {credentials:<24}(groups: {', '.join(user.groups)})")
        lines += [
            "Pages: / (login), /public/ (no login), /admin/ (group admins: alice only),",
            "       /api/ (bearer tokens only), /oidc/userinfo, /oidc/logout",
            f"Identity provider: {self.issuer}/   echo application: {self.echo_url}/",
            "Every secret and key is new at each start; nothing is kept.",
            rule,
        ]
        return "\n".join(lines)

    def startService(self) -> None:
        super().startService()
        # The demo passwords are public by design: they are on the login page too.
        log.warn("{banner}", banner=self.text(), url=self.public_url + "/")


def make_demo_service(reactor: Any, listen: Optional[str] = None,
                      port_file: Optional[str] = None,
                      signing_key: Optional[rsa.RSAPrivateKey] = None) -> ProxyService:
    """
    Bind the proxy's socket (C{listen}, default L{DEFAULT_LISTEN}) and two
    more on ephemeral ports of 127.0.0.1, for the
    development provider and the echo application; build the configuration
    from their URLs; return the L{ProxyService} listening on all three.

    @param port_file: written once all three listen: the proxy's, the
        provider's and the echo application's address, one a line.
    @param signing_key: the provider's RSA key (default: a new one).
    @raise ValueError: C{listen} is not a loopback TCP endpoint.
    @raise OSError: a socket cannot be bound.
    """
    endpoint = parse_loopback_endpoint(listen or DEFAULT_LISTEN)
    # The provider and the echo application are on 127.0.0.1 whatever the
    # proxy's interface: treq cannot request a URL with an IPv6 literal
    # (hyperlink IDNA-encodes "::1"), and the proxy reaches the provider with treq.
    places = [(endpoint.bind_host, endpoint.port, endpoint.family),
              ("127.0.0.1", 0, socket.AF_INET), ("127.0.0.1", 0, socket.AF_INET)]
    sockets: List[socket.socket] = []
    try:
        for host, port, family in places:
            sockets.append(bind_loopback(host, port, family))
    except OSError as e:
        for sock in sockets:
            sock.close()
        where = endpoint.description if not sockets else "127.0.0.1 (an ephemeral port)"
        raise OSError(e.errno, f"cannot listen on {where}: {e.strerror or e}") from None
    proxy_url = endpoint.url(sockets[0].getsockname()[1])
    issuer, echo_url = (f"http://127.0.0.1:{s.getsockname()[1]}" for s in sockets[1:])
    config = demo_config(proxy_url, issuer, echo_url, client_secret=secrets.token_urlsafe(32),
                         session_secret=secrets.token_urlsafe(32))
    client = demo_client(config)
    provider = DevelopmentProvider(issuer, client, reactor, signing_key=signing_key)
    echo = EchoUpstream([name for name, _ in config.headers] + ["X-Forwarded-Access-Token"],
                        public_url=proxy_url, endpoints_prefix=config.endpoints_prefix)

    service = ProxyService(config, reactor, [], port_file=port_file)
    factories = (service.site, _QuietSite(provider.resource(), reactor=reactor),
                 _QuietSite(echo, reactor=reactor))
    for sock, factory in zip(sockets, factories):
        host, port = sock.getsockname()[:2]
        interface = host.replace(":", "\\:")  # endpoint-string escaping of IPv6 colons
        description = f"tcp:{port}:interface={interface}"
        listener = _BoundListener(reactor, description, factory, sock)
        service.listeners.append(listener)
        listener.setServiceParent(service)
    _Banner(proxy_url, issuer, echo_url, DEMO_USERS).setServiceParent(service)
    return service


# -- the development OpenID Provider -------------------------------------------


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _s256(verifier: str) -> str:
    return _b64(hashlib.sha256(verifier.encode("ascii")).digest())


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


@attr.s(auto_attribs=True)
class _Login:
    """An authorization request waiting for its login form."""

    id: str
    browser: str
    redirect_uri: str
    scopes: Tuple[str, ...]
    state: str
    nonce: str
    challenge: str
    created: float


@attr.s(auto_attribs=True)
class _Code:
    """An authorization code, until it is used or expires."""

    redirect_uri: str
    user: DemoUser
    scopes: Tuple[str, ...]
    nonce: str
    challenge: str
    sid: str
    auth_time: int
    created: float
    used: bool = False


@attr.s(auto_attribs=True)
class _Grant:
    """A refresh token and the login (C{sid}) it continues."""

    user: DemoUser
    scopes: Tuple[str, ...]
    sid: str
    auth_time: int
    expires: float
    used: bool = False


class _OAuthError(Exception):
    """An error answer of the token endpoint (RFC 6749, 5.2)."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(error, description)
        self.error = error
        self.description = description
        self.status = status


class _BadRequest(Exception):
    """A request the provider answers with an error page (never a redirect)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def _page(title: str, body: str, banner: str = BANNER) -> bytes:
    """An HTML page with the red banner; C{body} is HTML, already escaped."""
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<style>{_STYLE}</style></head><body>"
        f'<div class="banner" role="alert">{escape(banner)}</div>'
        f"<h1>{escape(title)}</h1>{body}</body></html>"
    ).encode()


def _send(request: Any, code: int, content_type: bytes, body: bytes,
          headers: Optional[Dict[bytes, bytes]] = None) -> bytes:
    request.setResponseCode(code)
    out = request.responseHeaders
    out.removeHeader(b"server")
    out.setRawHeaders(b"content-type", [content_type])
    for name, value in {**(_HTML_HEADERS if content_type.startswith(b"text/html")
                           else _SECURITY_HEADERS), **(headers or {})}.items():
        out.setRawHeaders(name, [value])
    out.setRawHeaders(b"content-length", [str(len(body)).encode("ascii")])
    return b"" if request.method == b"HEAD" else body


def _send_json(request: Any, code: int, document: Any,
               headers: Optional[Dict[bytes, bytes]] = None) -> bytes:
    return _send(request, code, b"application/json",
                 json.dumps(document, indent=1).encode("utf-8"), headers)


def _params(pairs: Sequence[Tuple[str, str]]) -> Dict[str, str]:
    """Parameters that each appear at most once (RFC 6749, 3.1)."""
    seen: Dict[str, str] = {}
    for name, value in pairs:
        if name in seen:
            raise _BadRequest(f"The parameter {name} is repeated.")
        seen[name] = value
    return seen


def _query(request: Any) -> Dict[str, str]:
    try:
        query = request.uri.split(b"?", 1)[1].decode("utf-8") if b"?" in request.uri else ""
        return _params(parse_qsl(query, keep_blank_values=True, errors="strict"))
    except UnicodeDecodeError:
        raise _BadRequest("The query is not valid UTF-8.") from None


def _form(request: Any) -> Dict[str, str]:
    """The form-encoded body of a POST (never the query string)."""
    content_type = (request.requestHeaders.getRawHeaders(b"content-type") or [b""])[0]
    if content_type.split(b";")[0].strip().lower() != _FORM:
        raise _BadRequest("The body must be application/x-www-form-urlencoded.")
    request.content.seek(0)
    try:
        return _params(parse_qsl(request.content.read().decode("utf-8"), keep_blank_values=True,
                                 errors="strict"))
    except UnicodeDecodeError:
        raise _BadRequest("The body is not valid UTF-8.") from None


def _with_query(url: str, params: Sequence[Tuple[str, str]]) -> str:
    return url + ("&" if "?" in url else "?") + urlencode(params)


class _Endpoint(Resource):
    """One endpoint of the provider: a leaf that calls C{handler} for its methods."""

    isLeaf = True

    def __init__(self, handler: Callable[[Any], bytes], methods: Sequence[bytes]) -> None:
        super().__init__()
        self._handler = handler
        self._methods = tuple(methods)

    def render(self, request: Any) -> bytes:
        if request.postpath not in ([], [b""]):
            return _send(request, 404, b"text/html; charset=utf-8",
                         _page("Not found", "<p>No such page.</p>"))
        if request.method not in self._methods and not (
                request.method == b"HEAD" and b"GET" in self._methods):
            allow = b", ".join(self._methods)
            return _send(request, 405, b"text/html; charset=utf-8",
                         _page("Method not allowed", "<p>Not with this method.</p>"),
                         {b"allow": allow})
        try:
            return self._handler(request)
        except _BadRequest as e:
            return _send(request, e.status, b"text/html; charset=utf-8",
                         _page("Bad request", f'<p class="error">{escape(e.message)}</p>'))


class _NotFound(Resource):
    isLeaf = True

    def render(self, request: Any) -> bytes:
        return _send(request, 404, b"text/html; charset=utf-8",
                     _page("Not found", "<p>No such page.</p>"))


class _Root(Resource):
    """The provider's root: unknown paths get the provider's own 404 page."""

    def getChild(self, path: bytes, request: Any) -> Resource:
        return _NotFound()


class DevelopmentProvider:
    """
    An OpenID Provider for trying the proxy out; B{not for production}.

    It knows one client and a few users (L{DEMO_USERS}), keeps pending
    logins, codes and refresh tokens in memory, and has no single sign-on
    session of its own: every login shows the form. It checks what a real
    provider checks: the client id and the exact redirect URI (else an error
    page, never a redirect), C{response_type=code}, the C{openid} scope,
    C{state}, C{nonce} and a PKCE S256 challenge (else an error redirect);
    the client's secret (Basic or in the body), the code's redirect URI and
    PKCE verifier at the token endpoint. A code works once, within
    L{CODE_LIFETIME} seconds; a second use revokes what the first one got.
    Refresh tokens are rotated on every use; using a rotated one again
    revokes the whole login's tokens.

    @param issuer: the provider's URL (C{http://127.0.0.1:PORT}).
    @param clock: an C{IReactorTime}; every time here comes from it.
    @param signing_key: the RSA key that signs tokens (default: a new one).
    """

    def __init__(self, issuer: str, client: DemoClient, clock: Any,
                 users: Sequence[DemoUser] = DEMO_USERS,
                 signing_key: Optional[rsa.RSAPrivateKey] = None) -> None:
        self.issuer = issuer.rstrip("/")
        self.client = client
        self.clock = clock
        self.users = {user.username: user for user in users}
        self._key = signing_key if signing_key is not None else \
            rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.key_id = "demo-" + secrets.token_hex(4)
        parts = urlsplit(self.issuer)
        self._origin = f"{parts.scheme}://{parts.netloc}".encode("ascii")
        self._logins: Dict[str, _Login] = {}
        self._codes: Dict[str, _Code] = {}
        self._grants: Dict[str, _Grant] = {}
        self._revoked_sids: Dict[str, float] = {}
        self._revoked_jtis: Dict[str, float] = {}

    def resource(self) -> IResource:
        """The provider as a resource tree, to be served at the issuer URL."""
        root = _Root()
        root.putChild(b"", _Endpoint(self._home, (b"GET",)))
        well_known = Resource()
        well_known.putChild(b"openid-configuration", _Endpoint(self._discovery, (b"GET",)))
        root.putChild(b".well-known", well_known)
        root.putChild(b"jwks", _Endpoint(self._jwks, (b"GET",)))
        root.putChild(b"authorize", _Endpoint(self._authorize, (b"GET", b"POST")))
        root.putChild(b"token", _Endpoint(self._token, (b"POST",)))
        root.putChild(b"userinfo", _Endpoint(self._userinfo, (b"GET", b"POST")))
        root.putChild(b"end_session", _Endpoint(self._end_session, (b"GET",)))
        root.putChild(b"revoke", _Endpoint(self._revoke, (b"POST",)))
        return root

    # -- metadata

    def discovery_document(self) -> Dict[str, Any]:
        base = self.issuer
        return {
            "issuer": base,
            "authorization_endpoint": base + "/authorize",
            "token_endpoint": base + "/token",
            "jwks_uri": base + "/jwks",
            "userinfo_endpoint": base + "/userinfo",
            "end_session_endpoint": base + "/end_session",
            "revocation_endpoint": base + "/revoke",
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "revocation_endpoint_auth_methods_supported": ["client_secret_basic",
                                                           "client_secret_post"],
            "scopes_supported": list(SCOPES),
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "auth_time", "nonce",
                                 "at_hash", "sid", "name", "preferred_username", "email",
                                 "email_verified", "groups"],
            "authorization_response_iss_parameter_supported": True,
        }

    def public_jwk(self) -> Dict[str, Any]:
        jwk: Dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(self._key.public_key()))
        jwk.update({"kid": self.key_id, "use": "sig", "alg": "RS256"})
        return jwk

    def _home(self, request: Any) -> bytes:
        rows = "".join(
            f"<tr><td>{escape(name)}</td><td>{escape(url)}</td></tr>"
            for name, url in self.discovery_document().items() if name.endswith("endpoint")
            or name in ("issuer", "jwks_uri"))
        return _send(request, 200, b"text/html; charset=utf-8", _page(
            "oidcproxy demo identity provider",
            "<p>This provider exists to try oidcproxy out. It knows two users, whose "
            "passwords are public, and forgets everything when it stops.</p>"
            f"<table>{rows}</table>"))

    def _discovery(self, request: Any) -> bytes:
        return _send_json(request, 200, self.discovery_document())

    def _jwks(self, request: Any) -> bytes:
        return _send_json(request, 200, {"keys": [self.public_jwk()]})

    # -- housekeeping

    def _prune(self) -> None:
        """Forget what has expired, and the oldest entries beyond L{MAX_ENTRIES}."""
        now = self.clock.seconds()
        tables: List[Tuple[Dict[str, Any], Callable[[Any], bool]]] = [
            (self._logins, lambda v: now - v.created < LOGIN_LIFETIME),
            (self._codes, lambda v: now - v.created < CODE_LIFETIME),
            (self._grants, lambda v: now < v.expires),
            (self._revoked_sids, lambda v: now < v),
            (self._revoked_jtis, lambda v: now < v),
        ]
        for table, alive in tables:
            for key in [k for k, v in table.items() if not alive(v)]:
                del table[key]
            while len(table) > MAX_ENTRIES:
                del table[next(iter(table))]

    def _revoke_login(self, sid: str) -> None:
        """End every token of one login: its refresh tokens and (by sid) its access tokens."""
        self._revoked_sids[sid] = self.clock.seconds() + REFRESH_LIFETIME
        for token in [t for t, g in self._grants.items() if g.sid == sid]:
            del self._grants[token]

    # -- /authorize

    def _authorize(self, request: Any) -> bytes:
        self._prune()
        if request.method == b"POST":
            return self._login_form_posted(request)
        params = _query(request)
        if params.get("client_id") != self.client.client_id:
            raise _BadRequest("Unknown client_id: this provider knows only the demo proxy.")
        redirect_uri = params.get("redirect_uri", "")
        if redirect_uri not in self.client.redirect_uris:
            raise _BadRequest("The redirect_uri is not the one registered for this client.")
        state = params.get("state", "")
        problem = self._authorization_problem(params)
        if problem is not None:
            error, description = problem
            return self._redirect(request, redirect_uri, [
                ("error", error), ("error_description", description), ("state", state)])
        if params.get("prompt") == "none":
            return self._redirect(request, redirect_uri, [
                ("error", "login_required"), ("state", state)])
        browser = request.getCookie(BROWSER_COOKIE.encode("ascii"))
        browser_id = browser.decode("ascii", "replace") if browser else secrets.token_urlsafe(24)
        login = _Login(
            id=secrets.token_urlsafe(24), browser=browser_id, redirect_uri=redirect_uri,
            scopes=tuple(params["scope"].split()), state=state, nonce=params["nonce"],
            challenge=params["code_challenge"], created=self.clock.seconds())
        self._logins[login.id] = login
        if not browser:
            request.addCookie(BROWSER_COOKIE, browser_id, path="/authorize", httpOnly=True,
                              sameSite="lax")
        return self._login_page(request, login, 200)

    @staticmethod
    def _authorization_problem(params: Dict[str, str]) -> Optional[Tuple[str, str]]:
        """The OAuth error of an authorization request whose client is known, or None."""
        if params.get("response_type") != "code":
            return "unsupported_response_type", "only response_type=code is supported"
        if "openid" not in params.get("scope", "").split():
            return "invalid_scope", "the scope must contain openid"
        if not params.get("state"):
            return "invalid_request", "state is required"
        if not params.get("nonce"):
            return "invalid_request", "nonce is required"
        if params.get("code_challenge_method") != "S256" or \
                not _PKCE_CHALLENGE.fullmatch(params.get("code_challenge", "")):
            return "invalid_request", "a PKCE code_challenge with code_challenge_method=S256 is required"
        if params.get("response_mode", "query") != "query":
            return "invalid_request", "only response_mode=query is supported"
        return None

    def _redirect(self, request: Any, redirect_uri: str, params: List[Tuple[str, str]],
                  code: int = 302) -> bytes:
        location = _with_query(redirect_uri, [*params, ("iss", self.issuer)])
        body = _page("Redirecting", f'<p><a href="{escape(location)}">Continue</a></p>')
        return _send(request, code, b"text/html; charset=utf-8", body,
                     {b"location": location.encode("ascii")})

    def _login_page(self, request: Any, login: _Login, status: int, error: str = "") -> bytes:
        users = "".join(
            f"<tr><td>{escape(u.username)}</td><td>{escape(u.password)}</td>"
            f"<td>{escape(u.email)}</td><td>{escape(', '.join(u.groups))}</td></tr>"
            for u in self.users.values())
        shown_error = f'<p class="error" role="alert">{escape(error)}</p>' if error else ""
        body = (
            f"<p>The application <b>{escape(self.client.client_id)}</b> asks who you are "
            f"(scopes: {escape(' '.join(login.scopes))}).</p>{shown_error}"
            '<form method="post" action="/authorize">'
            f'<input type="hidden" name="login" value="{escape(login.id)}">'
            '<p><label>User name<br><input name="username" autocomplete="username" required '
            'autofocus></label></p>'
            '<p><label>Password<br><input name="password" type="password" '
            'autocomplete="current-password" required></label></p>'
            '<button type="submit" name="action" value="login">Log in</button>'
            '<button type="submit" name="action" value="cancel" formnovalidate>Cancel</button>'
            "</form><h2>Demo users</h2>"
            "<table><tr><th>user name</th><th>password</th><th>email</th><th>groups</th></tr>"
            f"{users}</table>")
        return _send(request, status, b"text/html; charset=utf-8", _page("Log in", body))

    def _login_form_posted(self, request: Any) -> bytes:
        origin = request.requestHeaders.getRawHeaders(b"origin")
        site = request.requestHeaders.getRawHeaders(b"sec-fetch-site")
        if (origin is not None and origin[0] != self._origin) or \
                (site is not None and site[0] not in (b"same-origin", b"none")):
            raise _BadRequest("Cross-site login forms are refused.", 403)
        form = _form(request)
        login = self._logins.get(form.get("login", ""))
        browser = request.getCookie(BROWSER_COOKIE.encode("ascii"))
        if login is None:
            raise _BadRequest("This login form has expired or was used already. "
                              "Go back to the application and start again.")
        if browser is None or not _same(browser.decode("ascii", "replace"), login.browser):
            raise _BadRequest("This login form was not opened in this browser.", 403)
        if form.get("action") == "cancel":
            del self._logins[login.id]
            return self._redirect(request, login.redirect_uri, [
                ("error", "access_denied"), ("error_description", "the user cancelled the login"),
                ("state", login.state)], code=303)
        user = self.users.get(form.get("username", ""))
        # Compared even for an unknown user, so the time taken tells nothing.
        password_ok = _same(form.get("password", ""), user.password if user else secrets.token_hex(8))
        if user is None or not password_ok:
            return self._login_page(request, login, 200, "Wrong user name or password.")
        del self._logins[login.id]
        code = secrets.token_urlsafe(32)
        now = self.clock.seconds()
        self._codes[code] = _Code(
            redirect_uri=login.redirect_uri, user=user, scopes=login.scopes, nonce=login.nonce,
            challenge=login.challenge, sid=secrets.token_urlsafe(16), auth_time=int(now),
            created=now)
        log.info("demo identity provider: {user} logged in", user=user.username)
        return self._redirect(request, login.redirect_uri, [("code", code), ("state", login.state)],
                              code=303)

    # -- /token

    def _authenticate_client(self, request: Any, form: Dict[str, str]) -> None:
        """client_secret_basic or client_secret_post (not both)."""
        header = request.requestHeaders.getRawHeaders(b"authorization")
        if header is not None and "client_secret" in form:
            raise _OAuthError("invalid_request", "use one client authentication method")
        if header is not None:
            scheme, _, value = header[0].partition(b" ")
            try:
                if scheme.lower() != b"basic":
                    raise ValueError("not Basic")
                client_id, sep, secret = base64.b64decode(value, validate=True).decode(
                    "utf-8").partition(":")
                if not sep:
                    raise ValueError("no colon")
            except (ValueError, UnicodeDecodeError):
                raise _OAuthError("invalid_client", "bad client credentials", 401) from None
            client_id, secret = unquote_plus(client_id), unquote_plus(secret)
        else:
            client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
        if not (_same(client_id, self.client.client_id) and _same(secret, self.client.client_secret)):
            raise _OAuthError("invalid_client", "bad client credentials", 401)
        if "client_id" in form and form["client_id"] != self.client.client_id:
            raise _OAuthError("invalid_client", "bad client credentials", 401)

    def _client_form(self, request: Any) -> Dict[str, str]:
        """
        The form of a client's back-channel request (token, revocation), the
        client authenticated.

        @raise _OAuthError: an unreadable form, or a client that is not ours.
        """
        try:
            form = _form(request)
        except _BadRequest as e:
            raise _OAuthError("invalid_request", e.message) from None
        self._authenticate_client(request, form)
        return form

    def _token(self, request: Any) -> bytes:
        self._prune()
        try:
            form = self._client_form(request)
            grant_type = form.get("grant_type")
            if grant_type == "authorization_code":
                document = self._code_grant(form)
            elif grant_type == "refresh_token":
                document = self._refresh_grant(form)
            else:
                raise _OAuthError("unsupported_grant_type",
                                  "only authorization_code and refresh_token")
        except _OAuthError as e:
            headers = {b"pragma": b"no-cache"}
            if e.status == 401:
                headers[b"www-authenticate"] = b'Basic realm="oidcproxy demo"'
            return _send_json(request, e.status,
                              {"error": e.error, "error_description": e.description}, headers)
        return _send_json(request, 200, document, {b"pragma": b"no-cache"})

    def _code_grant(self, form: Dict[str, str]) -> Dict[str, Any]:
        code = self._codes.get(form.get("code", ""))
        if code is None:
            raise _OAuthError("invalid_grant", "unknown or expired code")
        if code.used:
            # RFC 6749, 4.1.2: a code used twice revokes what it gave.
            self._revoke_login(code.sid)
            raise _OAuthError("invalid_grant", "the code was used already")
        code.used = True
        if form.get("redirect_uri") != code.redirect_uri:
            raise _OAuthError("invalid_grant", "redirect_uri is not the authorization request's")
        verifier = form.get("code_verifier", "")
        if not _PKCE_VERIFIER.fullmatch(verifier) or not _same(_s256(verifier), code.challenge):
            raise _OAuthError("invalid_grant", "PKCE verification failed")
        return self._issue(code.user, code.scopes, code.sid, code.auth_time, code.nonce)

    def _refresh_grant(self, form: Dict[str, str]) -> Dict[str, Any]:
        token = form.get("refresh_token", "")
        grant = self._grants.get(token)
        if grant is None or grant.sid in self._revoked_sids:
            raise _OAuthError("invalid_grant", "unknown, expired or revoked refresh token")
        if grant.used:
            # A rotated token used again: someone has a copy. End the login.
            self._revoke_login(grant.sid)
            raise _OAuthError("invalid_grant", "the refresh token was used already")
        grant.used = True
        scopes = grant.scopes
        if form.get("scope"):
            asked = tuple(form["scope"].split())
            if not set(asked) <= set(scopes):
                raise _OAuthError("invalid_scope", "more scope than the login granted")
            scopes = asked
        return self._issue(grant.user, scopes, grant.sid, grant.auth_time, None)

    def _issue(self, user: DemoUser, scopes: Tuple[str, ...], sid: str, auth_time: int,
               nonce: Optional[str]) -> Dict[str, Any]:
        """A token response: a new access token, ID token and refresh token."""
        now = int(self.clock.seconds())
        profile = self._claims(user, scopes)
        access_token = self._sign({
            "iss": self.issuer, "sub": user.sub, "aud": self.client.client_id,
            "client_id": self.client.client_id, "iat": now, "exp": now + TOKEN_LIFETIME,
            "jti": secrets.token_urlsafe(16), "scope": " ".join(scopes), "sid": sid, **profile,
        }, "at+jwt")
        digest = hashlib.sha256(access_token.encode("ascii")).digest()
        id_claims: Dict[str, Any] = {
            "iss": self.issuer, "sub": user.sub, "aud": self.client.client_id,
            "iat": now, "exp": now + TOKEN_LIFETIME, "auth_time": auth_time, "sid": sid,
            "at_hash": _b64(digest[:16]), **profile,
        }
        if nonce is not None:
            id_claims["nonce"] = nonce
        refresh_token = secrets.token_urlsafe(32)
        self._grants[refresh_token] = _Grant(user, scopes, sid, auth_time,
                                             self.clock.seconds() + REFRESH_LIFETIME)
        return {
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": TOKEN_LIFETIME,
            "refresh_token": refresh_token,
            "id_token": self._sign(id_claims, "JWT"),
            "scope": " ".join(scopes),
        }

    @staticmethod
    def _claims(user: DemoUser, scopes: Sequence[str]) -> Dict[str, Any]:
        claims: Dict[str, Any] = {}
        if "profile" in scopes:
            claims.update(name=user.name, preferred_username=user.username)
        if "email" in scopes:
            claims.update(email=user.email, email_verified=True)
        if "groups" in scopes:
            claims["groups"] = list(user.groups)
        return claims

    def _sign(self, claims: Dict[str, Any], typ: str) -> str:
        return jwt.encode(claims, self._key, algorithm="RS256",
                          headers={"kid": self.key_id, "typ": typ})

    def _verify(self, token: str, typ: str, check_exp: bool) -> Optional[Dict[str, Any]]:
        """The claims of a token this provider signed, for this client; None if it is not."""
        try:
            header = jwt.get_unverified_header(token)
            # Times are checked below, against the injected clock.
            claims = jwt.decode(token, self._key.public_key(), algorithms=["RS256"],
                                options={"verify_exp": False, "verify_iat": False,
                                         "verify_nbf": False, "verify_aud": False})
        except jwt.PyJWTError:
            return None
        exp = claims.get("exp")
        if header.get("typ") != typ or claims.get("iss") != self.issuer or \
                claims.get("aud") != self.client.client_id or not isinstance(exp, int) or \
                (check_exp and self.clock.seconds() >= exp):
            return None
        return claims

    # -- /userinfo, /revoke, /end_session

    def _userinfo(self, request: Any) -> bytes:
        header = (request.requestHeaders.getRawHeaders(b"authorization") or [b""])[0]
        scheme, _, token = header.partition(b" ")
        claims = None
        if scheme.lower() == b"bearer" and token:
            claims = self._verify(token.decode("ascii", "replace"), "at+jwt", check_exp=True)
        if claims is None or claims.get("sid") in self._revoked_sids or \
                claims.get("jti") in self._revoked_jtis:
            return _send_json(request, 401, {"error": "invalid_token"}, {
                b"www-authenticate": b'Bearer realm="oidcproxy demo", error="invalid_token"'})
        user = next((u for u in self.users.values() if u.sub == claims["sub"]), None)
        if user is None:
            return _send_json(request, 401, {"error": "invalid_token"})
        return _send_json(request, 200, {"sub": user.sub,
                                         **self._claims(user, str(claims.get("scope")).split())})

    def _revoke(self, request: Any) -> bytes:
        """RFC 7009: revoke a refresh token (and its login) or an access token."""
        try:
            form = self._client_form(request)
        except _OAuthError as e:
            return _send_json(request, e.status, {"error": e.error,
                                                  "error_description": e.description})
        token = form.get("token", "")
        grant = self._grants.get(token)
        if grant is not None:
            self._revoke_login(grant.sid)
        else:
            claims = self._verify(token, "at+jwt", check_exp=True)
            if claims is not None:
                self._revoked_jtis[str(claims.get("jti"))] = float(claims["exp"])
        # An unknown token is no error (RFC 7009, 2.2).
        return _send(request, 200, b"application/json", b"{}")

    def _end_session(self, request: Any) -> bytes:
        """
        RP-initiated logout: revoke the login of C{id_token_hint} (expired
        hints are fine) and go back to a registered C{post_logout_redirect_uri}.
        """
        params = _query(request)
        hint = params.get("id_token_hint")
        claims = self._verify(hint, "JWT", check_exp=False) if hint else None
        if hint and claims is None:
            raise _BadRequest("The id_token_hint is not an ID token of this provider.")
        if "client_id" in params and params["client_id"] != self.client.client_id:
            raise _BadRequest("Unknown client_id.")
        back = params.get("post_logout_redirect_uri")
        if back is not None:
            if claims is None and "client_id" not in params:
                raise _BadRequest("post_logout_redirect_uri needs id_token_hint or client_id.")
            if back not in self.client.post_logout_redirect_uris:
                raise _BadRequest("The post_logout_redirect_uri is not registered for this client.")
        if claims is not None and isinstance(claims.get("sid"), str):
            self._revoke_login(claims["sid"])
            log.info("demo identity provider: logout of {sub}", sub=claims.get("sub"))
        if back is not None:
            state = params.get("state")
            location = _with_query(back, [("state", state)]) if state else back
            return _send(request, 302, b"text/html; charset=utf-8",
                         _page("Logged out", f'<p><a href="{escape(location)}">Continue</a></p>'),
                         {b"location": location.encode("ascii")})
        return _send(request, 200, b"text/html; charset=utf-8",
                     _page("Logged out", "<p>You are logged out of the demo identity provider.</p>"))


# -- the echo application --------------------------------------------------------


class EchoUpstream(Resource):
    """
    The demo's application: answers every request with what it received, the
    method, path and every header, the identity headers (C{identity_headers})
    highlighted; HTML, or JSON for C{Accept: application/json}.
    """

    isLeaf = True

    def __init__(self, identity_headers: Sequence[str], public_url: str = "",
                 endpoints_prefix: str = "/oidc") -> None:
        super().__init__()
        self._identity = {name.lower() for name in identity_headers}
        self._public_url = public_url
        self._prefix = endpoints_prefix

    def render(self, request: Any) -> bytes:
        headers = [(name.decode("latin-1"), value.decode("latin-1"))
                   for name, values in request.requestHeaders.getAllRawHeaders()
                   for value in values]
        identity = {name: value for name, value in headers if name.lower() in self._identity}
        path = request.path.decode("latin-1")
        method = request.method.decode("latin-1")
        accept = b",".join(request.requestHeaders.getRawHeaders(b"accept", [])).lower()
        if b"application/json" in accept and b"text/html" not in accept:
            return _send_json(request, 200, {"method": method, "path": path,
                                             "headers": [list(h) for h in headers],
                                             "identity": identity})
        return _send(request, 200, b"text/html; charset=utf-8",
                     self._html(method, path, headers, identity))

    def _html(self, method: str, path: str, headers: List[Tuple[str, str]],
              identity: Dict[str, str]) -> bytes:
        rows = "".join(
            f'<tr{" class=identity" if name.lower() in self._identity else ""}>'
            f"<td>{escape(name)}</td><td>{escape(value)}</td></tr>" for name, value in headers)
        user = identity.get("X-Forwarded-User")
        who = (f"<p>The proxy says this is <b>{escape(user)}</b>: the highlighted headers "
               "below come from the ID token (or the access token on /api/).</p>") if user else \
            "<p>No identity headers: this route is public (or the request was not logged in).</p>"
        p = escape(self._prefix)
        links = (
            '<p><a href="/">/ (login)</a> · <a href="/public/">/public/ (no login)</a> · '
            '<a href="/admin/">/admin/ (admins only)</a> · '
            f'<a href="{p}/userinfo">{p}/userinfo (the session)</a> · '
            f'<a href="{p}/logout?rd=/public/">{p}/logout</a></p>')
        token = identity.get("X-Forwarded-Access-Token")
        api = ""
        if token:
            api = ("<h2>Try the API route</h2><p><code>/api/</code> takes bearer tokens only. "
                   "With the access token the proxy forwarded:</p>"
                   f"<pre>curl -H 'Authorization: Bearer {escape(token)}' "
                   f"{escape(self._public_url)}/api/</pre>")
        body = (
            f"<p><b>{escape(method)} {escape(path)}</b> reached the application.</p>{who}{links}"
            f"<h2>Request headers received</h2><table><tr><th>header</th><th>value</th></tr>"
            f"{rows}</table>{api}")
        return _page("Echo application", body,
                     banner="oidcproxy demo \N{EM DASH} development identity provider, "
                            "not for production.")
