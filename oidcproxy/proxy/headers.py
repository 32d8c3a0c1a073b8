"""
The HTTP header rules both the guard and the proxy engine apply: which
headers are hop-by-hop, which the proxy sets itself, the one authority of a
request, and header-name spellings. Light on purpose: the guard imports it
without the proxy engine.
"""

from __future__ import annotations

import ipaddress
from typing import Any, List, Optional, Sequence

from twisted.web.http import HTTPChannel
from twisted.web.http_headers import Headers
from twisted.web.server import Request

from ..config import IPNetwork
from .routes import BadRequestTarget, request_host, split_target

# RFC 9110 7.6.1: never forwarded; plus whatever Connection names.
HOP_BY_HOP = frozenset(
    [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    ]
)

# Connection options still acted on once the client's hop-by-hop headers are
# gone: the connection's persistence and a WebSocket upgrade.
_CONNECTION_KEPT = frozenset([b"close", b"keep-alive", b"upgrade"])

# Never removed because a client's Connection names them: the proxy has used
# them already (Host chose the route; Content-Length and Transfer-Encoding
# framed the body), and Upgrade is how a WebSocket asks to be one. Each is
# recomputed or dropped on the way upstream anyway.
_NOT_CONNECTION_NAMED = frozenset(
    [b"host", b"content-length", b"transfer-encoding", b"upgrade", b"connection"])

# Set by the proxy from what it knows; a client's copy is dropped unless the
# peer is a trusted proxy.
FORWARDING_HEADERS = frozenset(
    [b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded"]
)

# Headers that upstream frameworks (IIS, Symfony, Spring, nginx setups) use to
# override the request URL or the client address. From an untrusted client they
# would let the upstream route differently than we authorised: dropped.
UNTRUSTED_OVERRIDES = frozenset(
    [
        b"x-original-url",
        b"x-rewrite-url",
        b"x-forwarded-prefix",
        b"x-forwarded-port",
        b"x-forwarded-server",
        b"x-forwarded-uri",
        b"x-forwarded-path",
        b"x-forwarded-ssl",
        b"x-forwarded-scheme",
        b"x-original-host",
        b"x-host",
        b"x-real-ip",
        b"x-client-ip",
        b"true-client-ip",
    ]
)

def stored_name(name: bytes) -> bytes:
    """
    C{name} as L{Headers} keeps it (what C{getAllRawHeaders} gives): the
    key L{put_raw} takes.
    """
    return next(Headers({name: [b""]}).getAllRawHeaders())[0]


def put_raw(headers: Headers, name: bytes, values: List[bytes]) -> None:
    """
    C{headers.setRawHeaders(name, values)} for values that came out of
    another L{Headers} (or are made of such values and of ASCII without line
    breaks) under C{name} as L{Headers} keeps it (from C{getAllRawHeaders},
    or L{stored_name}): Twisted would encode the name and clean every value
    again, one call each, for every header the proxy copies. No public API
    sets a header without that, so this writes Twisted's private
    C{_rawHeaders} (the dict C{getAllRawHeaders} iterates); tests pin it, so
    that a Twisted upgrade that changes it fails loudly. C{values} is kept:
    pass a list of its own.
    """
    headers._rawHeaders[name] = values


def canonical_header(name: bytes) -> bytes:
    """
    The spelling-insensitive form of a header name: many servers (CGI, WSGI,
    PHP, some Go and Java stacks) treat C{X_Forwarded_For} and
    C{x.forwarded.for} as C{X-Forwarded-For}, so a header the proxy manages
    must be removed under all of them.
    """
    return name.lower().replace(b"_", b"-").replace(b".", b"-")


def is_trusted(peer: Optional[str], trusted: Sequence[IPNetwork]) -> bool:
    if not peer or not trusted:
        return False
    try:
        ip = ipaddress.ip_address(peer)
    except ValueError:
        return False
    return any(ip in net for net in trusted)


def request_host_header(request: Request) -> Optional[bytes]:
    """
    The request's one C{Host} header. Several are refused (RFC 9112 3.2: a
    front end and a back end could each pick a different one), and so is an
    HTTP/1.1 request without one.

    @raise BadRequestTarget: no or several C{Host} headers.
    """
    hosts = request.requestHeaders.getRawHeaders(b"host")
    if hosts is None:
        if request.clientproto == b"HTTP/1.1":
            raise BadRequestTarget("missing Host header")
        return None
    if len(hosts) != 1:
        raise BadRequestTarget("several Host headers")
    return hosts[0]


def request_authority(request: Request) -> Optional[bytes]:
    """
    The authority a request is for, made its one C{Host} header: with an
    absolute-form target (C{GET http://host/path}) the target's authority,
    which replaces the C{Host} the client sent (RFC 9112 3.2.2: a server
    ignores that Host, and a proxy replaces it); else the C{Host} header.
    Everything after this reads one value: the route, C{X-Forwarded-Host},
    C{Forwarded: host=}, the C{Host} passed with C{pass_host_header}.

    @raise BadRequestTarget: no or several C{Host} headers (see
        L{request_host_header}), a malformed absolute-form authority.
    """
    host = request_host_header(request)
    authority, _ = split_target(request.uri) if request.uri else (None, b"")
    if authority is None:
        return host
    request_host(authority)
    if authority != host:
        request.requestHeaders.setRawHeaders(b"host", [authority])
    return authority


def drop_connection_named(headers: Headers) -> None:
    """
    Remove the headers that the client's C{Connection} header names as
    hop-by-hop (RFC 9110 7.6.1), and keep of C{Connection} only the options
    still acted on (C{close}, C{keep-alive}, C{upgrade}).

    Run on the client's headers before the proxy adds its own (identity,
    forwarding, C{Authorization}): a client naming those in C{Connection}
    removes only its own copies, never the proxy's. Running it again
    changes nothing.
    """
    values = headers.getRawHeaders(b"connection")
    if not values:
        return
    tokens = [t.strip().lower() for v in values for t in v.split(b",")]
    for name in set(tokens) - _CONNECTION_KEPT - _NOT_CONNECTION_NAMED:
        if name:
            headers.removeHeader(name)
    kept = [t for t in dict.fromkeys(tokens) if t in _CONNECTION_KEPT]
    if kept:
        headers.setRawHeaders(b"connection", [b", ".join(kept)])
    else:
        headers.removeHeader(b"connection")


def connection_tokens(headers: Headers) -> frozenset:
    """The header names that a C{Connection} header declares hop-by-hop."""
    values = headers.getRawHeaders(b"connection")
    if not values:
        return frozenset()
    return frozenset(t.strip().lower() for v in values for t in v.split(b","))


def header_tokens(headers: Headers, name: bytes) -> frozenset:
    """The comma-separated tokens of header C{name}, lower case."""
    return frozenset(t.strip().lower() for v in headers.getRawHeaders(name, []) for t in v.split(b","))


def is_websocket_upgrade(request: Any) -> bool:
    """
    Whether C{request} asks for a WebSocket (RFC 6455 4.1): an HTTP/1.1 GET
    with C{Connection: Upgrade} and C{Upgrade: websocket}, on an HTTP/1.1
    channel (HTTP/2 has no C{Upgrade}).
    """
    if request.method != b"GET" or request.clientproto != b"HTTP/1.1":
        return False
    if not isinstance(getattr(request, "channel", None), HTTPChannel):
        return False
    headers = request.requestHeaders
    # Upgrade first: most requests have none, and are done with one lookup.
    return headers.hasHeader(b"upgrade") and \
        b"websocket" in header_tokens(headers, b"upgrade") and \
        b"upgrade" in header_tokens(headers, b"connection")


