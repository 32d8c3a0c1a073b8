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

The provider's modules: L{accounts} (users and the client), L{records}
(what it remembers), L{login} (C{/authorize}), L{tokens} (signing,
C{/token}, C{/revoke}), L{pages} (HTTP plumbing) and L{provider}, which
puts them behind one resource tree; L{echo} is the application. The
runner, here, binds the sockets and composes the service.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
import socket
from typing import Any, Dict, List, Optional, Sequence

import attr
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.application.service import Service
from twisted.internet.endpoints import AdoptedStreamServerEndpoint
from twisted.logger import Logger
from twisted.web.server import Site

from ...config import Config, parse_config
from ...service import ListenError, ListenerService, ProxyService
from .accounts import CLIENT_ID, DEMO_USERS, SCOPES, DemoClient, DemoUser
from .echo import EchoUpstream
from .login import BROWSER_COOKIE
from .pages import BANNER
from .provider import DevelopmentProvider
from .records import CODE_LIFETIME, LOGIN_LIFETIME, MAX_ENTRIES, REFRESH_LIFETIME, TOKEN_LIFETIME

__all__ = [
    "BANNER",
    "BROWSER_COOKIE",
    "CLIENT_ID",
    "CODE_LIFETIME",
    "DEFAULT_LISTEN",
    "DEMO_USERS",
    "LOGIN_LIFETIME",
    "LOOPBACK_INTERFACES",
    "MAX_ENTRIES",
    "REFRESH_LIFETIME",
    "SCOPES",
    "TOKEN_LIFETIME",
    "DemoClient",
    "DemoUser",
    "DevelopmentProvider",
    "EchoUpstream",
    "LoopbackEndpoint",
    "bind_loopback",
    "demo_client",
    "demo_config",
    "make_demo_service",
    "parse_loopback_endpoint",
]

log = Logger()

DEFAULT_LISTEN = "tcp:8080:interface=127.0.0.1"
"""Where the demo proxy listens without C{--listen}."""

LOOPBACK_INTERFACES = ("127.0.0.1", "::1", "localhost")

_ENDPOINT = re.compile(r"tcp:(?:port=)?([0-9]{1,5}):interface=(.+)")


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
                      signing_key: Optional[rsa.RSAPrivateKey] = None,
                      own_process: bool = False) -> ProxyService:
    """
    Bind the proxy's socket (C{listen}, default L{DEFAULT_LISTEN}) and two
    more on ephemeral ports of 127.0.0.1, for the
    development provider and the echo application; build the configuration
    from their URLs; return the L{ProxyService} listening on all three.

    @param port_file: written once all three listen: the proxy's, the
        provider's and the echo application's address, one a line.
    @param signing_key: the provider's RSA key (default: a new one).
    @param own_process: the service runs the process it is in (under twistd;
        see L{ProxyService}).
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

    service = ProxyService(config, reactor, [], port_file=port_file, own_process=own_process)
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
