"""
The request headers that go upstream: the client's end-to-end ones, then
what the proxy says about the hop it received (C{X-Forwarded-*},
C{Forwarded}). Shared by the streaming proxy and the WebSocket upgrade.
"""

from __future__ import annotations

from typing import Optional, Sequence

from twisted.web.http_headers import Headers
from twisted.web.server import Request

from ..config import IPNetwork
from .headers import (
    FORWARDING_HEADERS,
    HOP_BY_HOP,
    UNTRUSTED_OVERRIDES,
    canonical_header,
    is_trusted,
    put_raw,
    stored_name,
)
from .routes import RouteMatch

__all__ = ["upstream_headers"]

# Never copied from the client request: recomputed for the upstream hop.
_REQUEST_RECOMPUTED = frozenset([b"host", b"content-length", b"expect"])

# The names of the headers the proxy sets, as Headers keeps them.
_XFF, _XFP, _XFH, _FORWARDED, _HOST = (stored_name(n) for n in (
    b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded", b"host"))

# The bytes a Host value may have to be quoted in C{Forwarded: host="..."}
# (visible ASCII but the double quote): deleted, nothing may be left.
_QUOTABLE = bytes(c for c in range(0x21, 0x7F) if c != 0x22)


def _peer_host(request: Request) -> Optional[str]:
    peer = request.getClientAddress()
    return getattr(peer, "host", None)


def _forwarded_node(host: Optional[str]) -> str:
    if host is None:
        return "unknown"
    if ":" in host:
        return f'"[{host}]"'
    return host


def upstream_headers(request: Request, match: RouteMatch,
                     trusted_proxies: Sequence[IPNetwork],
                     upstream_host: Optional[bytes] = None) -> Headers:
    """
    The headers C{request} carries to the upstream of C{match}: its own,
    less the hop-by-hop ones and the forwarding ones (believed only from
    C{trusted_proxies}), plus the proxy's C{X-Forwarded-For},
    C{X-Forwarded-Proto}, C{X-Forwarded-Host} and C{Forwarded}; then
    C{Host}: the client's with C{pass_host_header}, else C{upstream_host}
    (None: no C{Host}, left to whoever sends the request).

    The headers the client's C{Connection} named are gone already (see
    L{oidcproxy.proxy.headers.drop_connection_named}): what it names now is
    the proxy's own.
    """
    incoming = request.requestHeaders
    peer = _peer_host(request)
    trusted = is_trusted(peer, trusted_proxies)
    # Asked once: Twisted answers it by adapting the transport to ISSLTransport.
    secure = request.isSecure()
    out = Headers()
    for name, values in incoming.getAllRawHeaders():
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in _REQUEST_RECOMPUTED:
            continue
        # Most names have no "_" or "." to fold: spared the call.
        canonical = canonical_header(lower) if b"_" in lower or b"." in lower else lower
        if canonical in FORWARDING_HEADERS or canonical in HOP_BY_HOP:
            continue
        if not trusted and canonical in UNTRUSTED_OVERRIDES:
            continue
        put_raw(out, name, list(values))

    host_value = incoming.getRawHeaders(b"host", [b""])[0]
    client_host = host_value
    proto = b"https" if secure else b"http"
    xff = [peer.encode("ascii")] if peer else []
    if trusted:
        previous = incoming.getRawHeaders(b"x-forwarded-for")
        if previous:
            xff = [b", ".join([*previous, *xff])]
        proto = (incoming.getRawHeaders(b"x-forwarded-proto") or [proto])[0]
        client_host = (incoming.getRawHeaders(b"x-forwarded-host") or [client_host])[0]
    if xff:
        put_raw(out, _XFF, [b", ".join(xff)])
    put_raw(out, _XFP, [proto])
    if client_host:
        put_raw(out, _XFH, [client_host])
    own_node = "for={};proto={}".format(
        _forwarded_node(peer), "https" if secure else "http"
    ).encode("ascii")
    if host_value and not host_value.translate(None, _QUOTABLE):
        own_node += b';host="' + host_value + b'"'
    forwarded = [own_node]
    if trusted:
        forwarded = [*incoming.getRawHeaders(b"forwarded", []), *forwarded]
    put_raw(out, _FORWARDED, [b", ".join(forwarded)])
    if match.route.pass_host_header and host_value:
        put_raw(out, _HOST, [host_value])
    elif upstream_host is not None:
        put_raw(out, _HOST, [upstream_host])
    return out
